/*
 * stronghold._miltercore: the milter protocol (version 6) spoken in C, one Session per
 * connection from the MTA.
 *
 * libmilter with pymilter calls into Python for every command Postfix sends (~30 a message:
 * connect, HELO, MAIL, each header, the body, end of message...), each time taking the GIL
 * from a connection thread, and reads every packet with a poll and two reads.  A Session
 * reads what the socket holds in one read, answers what needs no decision itself
 * (negotiation, macros, connect, HELO, MAIL, DATA, headers and body chunks) and collects the
 * message; Python is asked only where a decision is due:
 *
 *     (EV_RCPT, new_message, mail_args, rcpt_args)   a recipient: the reply is due
 *     (EV_DATA, headers, data)                       a batch of headers and message bytes,
 *                                                    before the memory bound is passed
 *     (EV_EOM, headers, data, size, oversize, mail)  end of message: the reply is due
 *     (EV_ABORT,)                                    the MTA dropped the message (or the
 *                                                    connection's state, QUIT_NC)
 *     (EV_CLOSE, why)                                QUIT, end of file, a timeout or a
 *                                                    protocol error: the session is over
 *
 * headers is a list of (name, value, start, end): name a str decoded from UTF-8 with
 * surrogateescape (pymilter's decoding, so encoding it back gives Postfix's bytes), value
 * the raw bytes, start:end where the header's line lies in the message bytes (before the
 * max_bytes cut).
 * data is the message as the product spools it: each header as "name: value\r\n" (a '?' for
 * each character of the name outside ASCII, as StrongholdMilter writes them), "\r\n", then the body
 * chunks; at most max_bytes of it are kept (size counts all, oversize says bytes were cut),
 * the rules of StrongholdMilter._write.
 *
 * Session.next(reply) writes reply (packets the caller built: the answer to EV_RCPT or
 * EV_EOM, header edits...) and reads on; the GIL is released for all of the I/O and the
 * parsing.  A Session holds no Python object while the GIL is released: it keeps raw bytes
 * (PyMem_Raw*) and builds the event's objects after taking the GIL back.  Each packet is
 * bounded (MAX_PACKET), and everything a Session keeps between events is bounded by
 * memory_limit (an EV_DATA hands it over) and by MAX_BATCH headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define VERSION 6
#define MAX_PACKET (8u * 1024u * 1024u) /* a header of Postfix's header_size_limit fits */
#define MAX_BATCH 1024                  /* headers handed over in one event at most */
#define READ_SIZE 65536
#define KEEP_AT_MOST (256u * 1024u) /* a buffer grown past this is given back once emptied */

enum { EV_NONE = 0, EV_RCPT, EV_DATA, EV_EOM, EV_ABORT, EV_CLOSE };

/* protocol flags of version 6 (what a milter asks the MTA to skip, or not to wait for) */
#define P_NOCONNECT 0x1u
#define P_NOHELO 0x2u
#define P_NOMAIL 0x4u
#define P_NORCPT 0x8u
#define P_NOBODY 0x10u
#define P_NOHDRS 0x20u
#define P_NOEOH 0x40u
#define P_NR_HDR 0x80u
#define P_NOUNKNOWN 0x100u
#define P_NODATA 0x200u
#define P_NR_CONN 0x1000u
#define P_NR_HELO 0x2000u
#define P_NR_MAIL 0x4000u
#define P_NR_RCPT 0x8000u
#define P_NR_DATA 0x10000u
#define P_NR_UNKN 0x20000u
#define P_NR_EOH 0x40000u
#define P_NR_BODY 0x80000u

/* Asked of the MTA: no end-of-headers and unknown-command events, no reply awaited after
 * connect, HELO, MAIL, each header and each body chunk.  DATA stays answered unless the
 * caller says otherwise (a unix socket): over TCP an unanswered DATA macro packet waits for
 * a delayed ACK (see StrongholdMilter.data). */
#define WANTED (P_NOEOH | P_NOUNKNOWN | P_NR_CONN | P_NR_HELO | P_NR_MAIL | P_NR_HDR | P_NR_BODY)

/* macro stages, in the order a transaction reaches them */
static const char STAGES[] = "CHMRTLNBE";
#define N_STAGES 9

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

typedef struct {
    size_t name_off, name_len, value_off, value_len; /* in the header arena */
    unsigned long long start, end;                   /* the spooled line, in message bytes */
} HeaderRef;

typedef struct {
    PyObject_HEAD
    int fd;
    uint32_t actions;  /* what the caller may do at end of message (ADDHDRS, CHGHDRS, ...) */
    uint32_t protocol; /* as agreed with the MTA */
    uint32_t wanted;   /* the protocol steps asked for: WANTED, maybe with P_NR_DATA */
    size_t memory_limit, max_bytes;
    int busy;          /* a thread is inside next() */
    int closed;
    /* input */
    Buf in;
    size_t in_pos;
    Buf out; /* answers of our own, written before the next read */
    /* connection */
    Buf macros[N_STAGES];
    Buf client, helo;
    /* message */
    Buf mail, rcpt;
    Buf data, arena;
    HeaderRef *refs;
    size_t nrefs, caprefs;
    unsigned long long size, stored;
    int oversize, in_body, in_mail, new_message;
    /* the event being handed over, and why a session closed */
    const char *why;
    int oom;
} Session;

/* -- buffers (raw allocator: used without the GIL) ------------------------------------ */

static int buf_reserve(Buf *b, size_t more) {
    if (more > SIZE_MAX - b->len)
        return -1;
    size_t need = b->len + more;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = PyMem_RawRealloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(Buf *b, const char *src, size_t n) {
    if (n == 0)
        return 0;
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static int buf_set(Buf *b, const char *src, size_t n) {
    b->len = 0;
    return buf_add(b, src, n);
}

static void buf_free(Buf *b) {
    PyMem_RawFree(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* emptied: keep the memory for the next message, unless a big one grew it */
static void buf_clear(Buf *b) {
    if (b->cap > KEEP_AT_MOST)
        buf_free(b);
    b->len = 0;
}

static uint32_t get32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

static void put32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* queue a packet of our own (command byte and body) for the MTA */
static int answer(Session *s, char cmd, const char *body, size_t n) {
    char head[5];
    put32(head, (uint32_t)(n + 1));
    head[4] = cmd;
    if (buf_add(&s->out, head, 5) < 0 || buf_add(&s->out, body, n) < 0)
        return -1;
    return 0;
}

/* "continue", unless the MTA agreed not to wait for this command's reply */
static int answer_continue(Session *s, uint32_t no_reply_flag) {
    if (s->protocol & no_reply_flag)
        return 0;
    return answer(s, 'c', NULL, 0);
}

/* -- the message as the product spools it ---------------------------------------------- */

/* Keep n bytes of the message: StrongholdMilter._write's rule (size counts all; past
 * max_bytes the rest is cut and oversize set). */
static int keep(Session *s, const char *p, size_t n) {
    s->size += n;
    unsigned long long room = s->stored < s->max_bytes ? s->max_bytes - s->stored : 0;
    if (room == 0 || n > room) {
        s->oversize = 1;
        n = (size_t)room;
    }
    if (n == 0)
        return 0;
    s->stored += n;
    return buf_add(&s->data, p, n);
}

static void reset_message(Session *s) {
    buf_clear(&s->mail);
    buf_clear(&s->rcpt);
    buf_clear(&s->data);
    buf_clear(&s->arena);
    s->nrefs = 0;
    s->size = s->stored = 0;
    s->oversize = s->in_body = s->in_mail = s->new_message = 0;
}

/* the blank line between the headers and the body, spooled once */
static int end_headers(Session *s) {
    if (s->in_body)
        return 0;
    s->in_body = 1;
    return keep(s, "\r\n", 2);
}

/* -- commands ---------------------------------------------------------------------------- */

static int stage_index(char stage) {
    const char *at = memchr(STAGES, stage, N_STAGES);
    return at ? (int)(at - STAGES) : -1;
}

/* Length of the well-formed UTF-8 character at p (at most n bytes), 0 if there is none:
 * the sequences Python's UTF-8 decoder accepts (no overlongs, no surrogates, <= U+10FFFF). */
static size_t utf8_char(const unsigned char *p, size_t n) {
    unsigned char c = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return len;
}

/* Spool a header name as StrongholdMilter writes it, name.encode("ascii", "replace") of the
 * name pymilter decoded from UTF-8 (with surrogateescape): a '?' for each character outside
 * ASCII, and one for each byte that is no part of a well-formed character. */
static int keep_name(Session *s, const char *name, size_t n) {
    const unsigned char *u = (const unsigned char *)name;
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && u[run] < 0x80)
            run++;
        if (keep(s, name + i, run - i) < 0)
            return -1;
        i = run;
        if (i < n) {
            size_t len = utf8_char(u + i, n - i);
            if (keep(s, "?", 1) < 0)
                return -1;
            i += len ? len : 1;
        }
    }
    return 0;
}

/* One header: remembered for the caller and spooled as "name: value\r\n". */
static int on_header(Session *s, const char *body, size_t n) {
    const char *nul = memchr(body, 0, n);
    if (nul == NULL) {
        s->why = "header without a name";
        return -1;
    }
    size_t name_len = (size_t)(nul - body);
    const char *value = nul + 1;
    size_t rest = n - name_len - 1;
    size_t value_len = rest && value[rest - 1] == 0 ? rest - 1 : rest;
    if (s->nrefs == s->caprefs) {
        size_t cap = s->caprefs ? s->caprefs * 2 : 64;
        HeaderRef *refs = PyMem_RawRealloc(s->refs, cap * sizeof(HeaderRef));
        if (refs == NULL)
            return -2;
        s->refs = refs;
        s->caprefs = cap;
    }
    HeaderRef *ref = &s->refs[s->nrefs];
    ref->name_off = s->arena.len;
    ref->name_len = name_len;
    ref->value_off = s->arena.len + name_len;
    ref->value_len = value_len;
    if (buf_add(&s->arena, body, name_len) < 0 || buf_add(&s->arena, value, value_len) < 0)
        return -2;
    ref->start = s->size;
    s->nrefs++;
    /* the spooled line: name (a '?' for each character outside ASCII), ": ", value, CRLF */
    if (keep_name(s, body, name_len) < 0)
        return -2;
    if (keep(s, ": ", 2) < 0 || keep(s, value, value_len) < 0 || keep(s, "\r\n", 2) < 0)
        return -2;
    ref->end = s->size;
    return 0;
}

/* The connect packet: hostname NUL, family, then for inet a port and the address NUL.
 * Kept raw; Session.client_address reads it. */
static int on_connect(Session *s, const char *body, size_t n) {
    return buf_set(&s->client, body, n) < 0 ? -2 : 0;
}

/* A command of a stage: the macros of the stages after it belong to an earlier message
 * (libmilter clears them the same way), so they go. */
static void forget_later_macros(Session *s, char cmd) {
    int at = stage_index(cmd);
    if (at < 0)
        return;
    for (int i = at + 1; i < N_STAGES; i++)
        s->macros[i].len = 0;
}

/* What to do with one packet: an event for the caller, 0 to read on, -1 to close the
 * session (s->why says why), -2 out of memory. */
static int handle(Session *s, char cmd, const char *body, size_t n) {
    if (cmd != 'D')
        forget_later_macros(s, cmd);
    switch (cmd) {
    case 'O': { /* negotiation: version, actions, protocol steps */
        if (n < 12) {
            s->why = "short negotiation";
            return -1;
        }
        uint32_t version = get32(body), actions = get32(body + 4), offered = get32(body + 8);
        if (version < 2) {
            s->why = "MTA speaks a milter protocol older than version 2";
            return -1;
        }
        if (s->actions & ~actions) {
            s->why = "MTA does not allow the header and recipient changes this milter makes";
            return -1;
        }
        s->protocol = offered & s->wanted;
        char reply[12];
        put32(reply, version < VERSION ? version : VERSION);
        put32(reply + 4, s->actions);
        put32(reply + 8, s->protocol);
        return answer(s, 'O', reply, 12) < 0 ? -2 : 0;
    }
    case 'D': { /* macros of a stage, sent before the stage's command */
        if (n < 1)
            return 0;
        int at = stage_index(body[0]);
        if (at >= 0 && buf_set(&s->macros[at], body + 1, n - 1) < 0)
            return -2;
        return 0;
    }
    case 'C':
        if (on_connect(s, body, n) < 0)
            return -2;
        return answer_continue(s, P_NR_CONN) < 0 ? -2 : 0;
    case 'H':
        if (buf_set(&s->helo, body, n) < 0)
            return -2;
        return answer_continue(s, P_NR_HELO) < 0 ? -2 : 0;
    case 'M':
        reset_message(s);
        s->in_mail = s->new_message = 1;
        if (buf_set(&s->mail, body, n) < 0)
            return -2;
        return answer_continue(s, P_NR_MAIL) < 0 ? -2 : 0;
    case 'R':
        if (buf_set(&s->rcpt, body, n) < 0)
            return -2;
        return EV_RCPT;
    case 'T':
        return answer_continue(s, P_NR_DATA) < 0 ? -2 : 0;
    case 'L': {
        int rc = on_header(s, body, n);
        if (rc < 0)
            return rc;
        if (answer_continue(s, P_NR_HDR) < 0)
            return -2;
        break; /* maybe a batch is due */
    }
    case 'N':
        return answer_continue(s, P_NR_EOH) < 0 ? -2 : 0;
    case 'B':
        if (end_headers(s) < 0 || keep(s, body, n) < 0)
            return -2;
        if (answer_continue(s, P_NR_BODY) < 0)
            return -2;
        break;
    case 'E': /* a last body chunk may come with it (libmilter hands it to the body callback) */
        if (end_headers(s) < 0 || (n > 0 && keep(s, body, n) < 0))
            return -2;
        return EV_EOM;
    case 'A':
        reset_message(s);
        return EV_ABORT;
    case 'K': /* QUIT_NC: a new connection's commands follow on this socket */
        reset_message(s);
        for (int i = 0; i < N_STAGES; i++)
            s->macros[i].len = 0;
        s->client.len = s->helo.len = 0;
        return EV_ABORT;
    case 'Q':
        s->why = "quit";
        return -1;
    case 'U':
        return answer_continue(s, P_NR_UNKN) < 0 ? -2 : 0;
    default:
        s->why = "unknown milter command";
        return -1;
    }
    if (s->nrefs >= MAX_BATCH || s->data.len >= s->memory_limit || s->arena.len >= s->memory_limit)
        return EV_DATA;
    return 0;
}

/* -- I/O (no GIL) ------------------------------------------------------------------------ */

static int write_all(Session *s, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(s->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            s->why = errno == EAGAIN || errno == EWOULDBLOCK ? "timeout writing to the MTA"
                                                              : "error writing to the MTA";
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int flush(Session *s) {
    if (s->out.len == 0)
        return 0;
    int rc = write_all(s, s->out.p, s->out.len);
    s->out.len = 0;
    return rc;
}

/* Read more input: 1 read, 0 end of file, -1 error (s->why), -2 out of memory. */
static int fill(Session *s) {
    if (s->in_pos > 0) { /* move the unread bytes to the front */
        memmove(s->in.p, s->in.p + s->in_pos, s->in.len - s->in_pos);
        s->in.len -= s->in_pos;
        s->in_pos = 0;
    }
    if (s->in.len == 0)
        buf_clear(&s->in); /* after a big packet */
    if (buf_reserve(&s->in, READ_SIZE) < 0)
        return -2;
    for (;;) {
        ssize_t r = read(s->fd, s->in.p + s->in.len, s->in.cap - s->in.len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            s->why = errno == EAGAIN || errno == EWOULDBLOCK ? "timeout reading from the MTA"
                                                              : "error reading from the MTA";
            return -1;
        }
        if (r == 0) {
            s->why = "connection closed by the MTA";
            return 0;
        }
        s->in.len += (size_t)r;
        return 1;
    }
}

/* Run packets until one needs the caller: the event, or EV_CLOSE. */
static int run(Session *s) {
    for (;;) {
        size_t avail = s->in.len - s->in_pos;
        if (avail >= 4) {
            const char *at = s->in.p + s->in_pos;
            uint32_t len = get32(at);
            if (len == 0 || len > MAX_PACKET) {
                s->why = "bad packet length";
                return EV_CLOSE;
            }
            if (avail >= 4 + (size_t)len) {
                s->in_pos += 4 + (size_t)len;
                int rc = handle(s, at[4], at + 5, len - 1);
                if (rc == -2) {
                    s->oom = 1;
                    s->why = "out of memory";
                    return EV_CLOSE;
                }
                if (rc < 0)
                    return EV_CLOSE;
                if (rc > 0)
                    return flush(s) < 0 ? EV_CLOSE : rc;
                continue;
            }
        }
        if (flush(s) < 0)
            return EV_CLOSE;
        int got = fill(s);
        if (got == -2) {
            s->oom = 1;
            s->why = "out of memory";
        }
        if (got <= 0)
            return EV_CLOSE;
    }
}

/* -- building the events (GIL held) ---------------------------------------------------- */

static PyObject *text(const char *p, size_t n) {
    return PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "surrogateescape");
}

/* "a\0b\0" -> ("a", "b"): the NUL-separated arguments of MAIL and RCPT */
static PyObject *arguments(const Buf *b) {
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    size_t pos = 0;
    while (pos < b->len) {
        const char *nul = memchr(b->p + pos, 0, b->len - pos);
        size_t end = nul ? (size_t)(nul - b->p) : b->len;
        PyObject *item = text(b->p + pos, end - pos);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
        pos = end + 1;
    }
    PyObject *tuple = PyList_AsTuple(list);
    Py_DECREF(list);
    return tuple;
}

/* the headers collected since the last event, as [(name, value)]; the batch is emptied */
static PyObject *take_headers(Session *s) {
    PyObject *list = PyList_New((Py_ssize_t)s->nrefs);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < s->nrefs; i++) {
        HeaderRef *ref = &s->refs[i];
        PyObject *pair = Py_BuildValue("(Ny#KK)", text(s->arena.p + ref->name_off, ref->name_len),
                                       s->arena.p + ref->value_off, (Py_ssize_t)ref->value_len,
                                       ref->start, ref->end);
        if (pair == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
    }
    s->nrefs = 0;
    buf_clear(&s->arena);
    return list;
}

static PyObject *take_data(Session *s) {
    PyObject *data = PyBytes_FromStringAndSize(s->data.p ? s->data.p : "", (Py_ssize_t)s->data.len);
    if (data != NULL)
        buf_clear(&s->data);
    return data;
}

static PyObject *event(Session *s, int ev) {
    switch (ev) {
    case EV_RCPT: {
        int fresh = s->new_message;
        s->new_message = 0;
        PyObject *mail = arguments(&s->mail);
        if (mail == NULL)
            return NULL;
        return Py_BuildValue("(iONN)", EV_RCPT, fresh ? Py_True : Py_False, mail, arguments(&s->rcpt));
    }
    case EV_DATA: {
        PyObject *headers = take_headers(s);
        if (headers == NULL)
            return NULL;
        return Py_BuildValue("(iNN)", EV_DATA, headers, take_data(s));
    }
    case EV_EOM: {
        PyObject *headers = take_headers(s);
        if (headers == NULL)
            return NULL;
        return Py_BuildValue("(iNNKOO)", EV_EOM, headers, take_data(s), s->size,
                             s->oversize ? Py_True : Py_False, s->in_mail ? Py_True : Py_False);
    }
    case EV_ABORT:
        return Py_BuildValue("(i)", EV_ABORT);
    default:
        s->closed = 1;
        return Py_BuildValue("(is)", EV_CLOSE, s->why ? s->why : "closed");
    }
}

/* -- the Session type ------------------------------------------------------------------- */

/* the getters and macro() read buffers next() may be growing without the GIL */
static int in_use(Session *s) {
    if (!s->busy)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "session in use by another thread");
    return 1;
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (s != NULL)
        s->fd = -1; /* no socket until __init__ */
    return (PyObject *)s;
}

static int Session_init(Session *s, PyObject *args, PyObject *kwds) {
    static char *names[] = {"fd", "actions", "memory_limit", "max_bytes", "data_reply", NULL};
    int fd, data_reply = 1;
    unsigned int actions;
    Py_ssize_t memory_limit, max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iInn|p", names, &fd, &actions, &memory_limit, &max_bytes,
                                     &data_reply))
        return -1;
    if (fd < 0 || memory_limit < 1 || max_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "fd, memory_limit and max_bytes must be positive");
        return -1;
    }
    if (s->fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "session already set up");
        return -1;
    }
    s->fd = fd;
    s->actions = actions;
    s->wanted = data_reply ? WANTED : WANTED | P_NR_DATA;
    s->memory_limit = (size_t)memory_limit;
    s->max_bytes = (size_t)max_bytes;
    return 0;
}

static void Session_dealloc(Session *s) {
    buf_free(&s->in);
    buf_free(&s->out);
    for (int i = 0; i < N_STAGES; i++)
        buf_free(&s->macros[i]);
    buf_free(&s->client);
    buf_free(&s->helo);
    buf_free(&s->mail);
    buf_free(&s->rcpt);
    buf_free(&s->data);
    buf_free(&s->arena);
    PyMem_RawFree(s->refs);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

PyDoc_STRVAR(next_doc,
"next(reply=b'') -> event tuple\n\n"
"Write reply (whole packets), then read and answer the MTA's commands until one needs the\n"
"caller; the GIL is released meanwhile.  After EV_CLOSE the session is over.");

static PyObject *Session_next(Session *s, PyObject *args) {
    Py_buffer reply = {0};
    if (!PyArg_ParseTuple(args, "|y*:next", &reply))
        return NULL;
    if (s->busy || s->closed || s->fd < 0) {
        PyBuffer_Release(&reply);
        PyErr_SetString(PyExc_RuntimeError, s->closed ? "session closed"
                        : s->fd < 0 ? "session not set up" : "session in use by another thread");
        return NULL;
    }
    s->busy = 1;
    int ev;
    Py_BEGIN_ALLOW_THREADS
    ev = (reply.len > 0 && write_all(s, reply.buf, (size_t)reply.len) < 0) ? EV_CLOSE : run(s);
    Py_END_ALLOW_THREADS
    s->busy = 0;
    PyBuffer_Release(&reply);
    if (s->oom) {
        s->closed = 1;
        return PyErr_NoMemory();
    }
    return event(s, ev);
}

PyDoc_STRVAR(macro_doc,
"macro(name) -> str or None\n\n"
"The value of an MTA macro (\"i\" or \"{i}\" alike), from the latest stage that sent it.");

static PyObject *Session_macro(Session *s, PyObject *arg) {
    if (in_use(s))
        return NULL;
    Py_ssize_t n;
    const char *name = PyUnicode_AsUTF8AndSize(arg, &n);
    if (name == NULL)
        return NULL;
    /* the bare name: "{i}" and "i" are the same macro */
    if (n >= 2 && name[0] == '{' && name[n - 1] == '}') {
        name++;
        n -= 2;
    }
    for (int stage = N_STAGES - 1; stage >= 0; stage--) {
        const Buf *b = &s->macros[stage];
        size_t pos = 0;
        while (pos < b->len) {
            const char *key = b->p + pos;
            const char *nul = memchr(key, 0, b->len - pos);
            if (nul == NULL)
                break;
            size_t klen = (size_t)(nul - key);
            const char *value = nul + 1;
            size_t vpos = pos + klen + 1;
            const char *vnul = vpos < b->len ? memchr(value, 0, b->len - vpos) : NULL;
            size_t vlen = vnul ? (size_t)(vnul - value) : b->len - vpos;
            int same = (klen == (size_t)n && memcmp(key, name, klen) == 0)
                       || (klen == (size_t)n + 2 && key[0] == '{' && key[klen - 1] == '}'
                           && memcmp(key + 1, name, (size_t)n) == 0);
            if (same)
                return text(value, vlen);
            pos = vpos + vlen + 1;
        }
    }
    Py_RETURN_NONE;
}

/* connect packet: hostname NUL family [port(2) address NUL] */
static PyObject *Session_client(Session *s, void *closure) {
    (void)closure;
    if (in_use(s))
        return NULL;
    const Buf *b = &s->client;
    const char *nul = b->len ? memchr(b->p, 0, b->len) : NULL;
    if (nul == NULL)
        return Py_BuildValue("(sss)", "", "", "");
    size_t host_len = (size_t)(nul - b->p);
    size_t rest = b->len - host_len - 1;
    const char *family = nul + 1;
    if (rest < 1)
        return Py_BuildValue("(Nss)", text(b->p, host_len), "", "");
    const char *addr = family + 1;
    size_t addr_len = rest - 1;
    PyObject *kind = PyUnicode_DecodeLatin1(family, 1, NULL); /* any byte: never a decoding error */
    if (*family != 'U') { /* a port comes first (libmilter reads one for every known family) */
        if (addr_len < 2)
            return Py_BuildValue("(NNs)", text(b->p, host_len), kind, "");
        addr += 2;
        addr_len -= 2;
    }
    const char *end = memchr(addr, 0, addr_len);
    if (end != NULL)
        addr_len = (size_t)(end - addr);
    return Py_BuildValue("(NNN)", text(b->p, host_len), kind, text(addr, addr_len));
}

static PyObject *Session_helo(Session *s, void *closure) {
    (void)closure;
    if (in_use(s))
        return NULL;
    size_t n = s->helo.len;
    const char *nul = n ? memchr(s->helo.p, 0, n) : NULL;
    if (nul != NULL)
        n = (size_t)(nul - s->helo.p);
    return text(s->helo.p ? s->helo.p : "", n);
}

static PyObject *Session_protocol(Session *s, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(s->protocol);
}

static PyMethodDef Session_methods[] = {
    {"next", (PyCFunction)Session_next, METH_VARARGS, next_doc},
    {"macro", (PyCFunction)Session_macro, METH_O, macro_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"client", (getter)Session_client, NULL, "(hostname, family, address) from the connect command", NULL},
    {"helo", (getter)Session_helo, NULL, "the HELO/EHLO name", NULL},
    {"protocol", (getter)Session_protocol, NULL, "the protocol flags agreed with the MTA", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stronghold._miltercore.Session",
    .tp_doc = PyDoc_STR("Session(fd, actions, memory_limit, max_bytes, data_reply=True): one MTA connection; "
                        "data_reply=False asks the MTA not to wait for a reply to DATA"),
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Session_new,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_miltercore",
    "The milter protocol read in C (see stronghold/nativemilter.py).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__miltercore(void) {
    if (PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0
        || PyModule_AddIntConstant(m, "EV_RCPT", EV_RCPT) < 0
        || PyModule_AddIntConstant(m, "EV_DATA", EV_DATA) < 0
        || PyModule_AddIntConstant(m, "EV_EOM", EV_EOM) < 0
        || PyModule_AddIntConstant(m, "EV_ABORT", EV_ABORT) < 0
        || PyModule_AddIntConstant(m, "EV_CLOSE", EV_CLOSE) < 0
        || PyModule_AddIntConstant(m, "WANTED", WANTED) < 0
        || PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0
        || PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(&SessionType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
