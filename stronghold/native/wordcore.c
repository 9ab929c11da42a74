/* wordcore.c: the per-word and per-header tokenizing of stronghold/tokens.py, in C.
 *
 * Each function mirrors, token for token, a Python reference function of tokens.py
 * (the fallback when this module is not built, and what the tests compare it with):
 *
 *   word_tokens(text, prefix, out)           _word_tokens_py
 *   header_words(value, prefix, limit, out)  _header_words_py
 *   address_header(name, value, out)         _address_header_py
 *   received(value, out)                     _received_py
 *   domain_tokens(host, prefix, out)         _domain_tokens_py
 *   headers(msg, out)                        _headers_py (all of the above for msg.headers)
 *   url_tokens(urls, out)                    _url_tokens_py (message.url_host included)
 *   structure(msg, out)                      _structure_py
 *   eight_bit(msg, out)                      _eight_bit_py
 *   joined(tokens)                           messagelog._joined_py (the text of a token blob)
 *
 * Each adds str tokens to the set `out` and returns None.  The regular expressions of
 * tokens.py are matched by hand, with the results re.findall gives them (greedy, with
 * backtracking, non-overlapping): see the comment above each scanner.  Character classes
 * are sre's for str patterns: \w is Py_UNICODE_ISALNUM or '_', \d Py_UNICODE_ISDECIMAL.
 * str.split() splits on Py_UNICODE_ISSPACE; lengths count code points; lower-casing is
 * done here for ASCII only, by calling str.lower() otherwise (full case mapping, final
 * sigma).  Every scan is linear in its input, whatever the input holds.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_TEXT 200000 /* tokens.MAX_TEXT: body text read up to here */
#define MIN_WORD 3      /* tokens.MIN_WORD */
#define MAX_WORD 12     /* tokens.MAX_WORD: longer words are skip: tokens (or emails) */
#define EMAIL_USER 20   /* user part of an email in a body word, in code points */
#define ADDR_USER 30    /* user part of an address in an address header */
#define MAX_ADDRS 10    /* addresses tokenized per address header */
#define MAX_HOSTS 10    /* host names per Received header */
#define MAX_IPS 5       /* IP addresses per Received header */
#define MAX_RECEIVED 4  /* tokens.MAX_RECEIVED: the oldest Received headers read */
#define MAX_URLS 100    /* tokens.MAX_URLS: URLs tokenized per message */
#define URL_PIECES 20   /* pieces of a URL's path looked at */
#define MAX_PARTS 50    /* content types and attachments tokenized per message */
#define EXT_LEN 10      /* an attachment's file name extension, in code points */
#define TAG_LEN 20      /* an HTML tag name, in code points */
#define TAG_MANY 10     /* a tag seen more often than this is "many" */
#define MAX_SIZE_BITS 24
#define EIGHT_BIT_HEAD 20000  /* tokens.EIGHT_BIT_HEAD: the body's characters counted for 8bit% */

/* ------------------------------------------------------------------ constants */

/* Words looked for in a lower-cased Received header (tokens._received). */
static const char *const RECEIVED_WORDS[] = {
    "esmtp", "smtp", "imap", "localhost", "unknown", "qmail", "postfix", "sendmail",
    "exim", "microsoft", "authenticated", "[127.0.0.1]", "helo",
};
#define N_RECEIVED_WORDS (sizeof(RECEIVED_WORDS) / sizeof(RECEIVED_WORDS[0]))

/* tokens._SKIP_HEADERS, _ADDRESS_HEADERS, _LISTED_HEADERS (the tests compare them). */
static const char *const SKIP_HEADERS[] = {
    "date", "delivery-date", "x-original-date", "resent-date", "x-originalarrivaltime",
    "delivered-to", "x-spam-status", "x-spam-flag", "x-spam-score", "x-spam-level",
    "x-spam-checker-version", "x-spam-report", "x-spam-prev-subject", "x-stronghold-queue-id", NULL,
};
static const char *const ADDRESS_HEADERS[] = {
    "from", "to", "cc", "reply-to", "sender", "return-path", "errors-to", NULL,
};
static const char *const LISTED_HEADERS[] = {
    "x-mailer", "user-agent", "x-mimeole", "x-msmail-priority", "importance", "x-priority",
    "content-type", "mime-version", "precedence", "list-id", NULL,
};

/* Interned strings and frozensets, made once when the module is first loaded, never
 * changed after. */
static struct {
    PyObject *lower;                               /* "lower" (method name) */
    PyObject *headers;                             /* "headers" (attribute name) */
    PyObject *empty;                               /* "" */
    PyObject *received;                            /* "received:" */
    PyObject *subject;                             /* "subject:" */
    PyObject *received_words[N_RECEIVED_WORDS];    /* "esmtp", ... */
    PyObject *received_tokens[N_RECEIVED_WORDS];   /* "received:esmtp", ... */
    PyObject *skip_headers, *address_headers, *listed_headers;  /* frozensets of the above */
} K;

/* Interned names of ParsedMessage and Attachment attributes, prefixes and whole tokens of
 * url_tokens, structure and eight_bit; made with the other constants. */
static struct {
    PyObject *urls, *content_types, *charsets, *encodings, *attachments, *defects, *html_tags,
        *html_features, *text, *html_text, *size, *content_type, *filename;
    PyObject *proto_https, *proto_http, *url, *url_userinfo, *url_escaped, *urlpath, *part,
        *charset, *cte, *att_type, *att_ext, *defect, *tag, *html, *html_only;
    PyObject *tag_many;  /* the int TAG_MANY */
    PyObject *size_n[MAX_SIZE_BITS + 1];  /* "size:0" ... "size:24" */
    PyObject *urls_n[6];                  /* "urls:0" ... "urls:5" */
    PyObject *eight_bit_n[11];            /* "8bit%:0" ... "8bit%:10" */
} S;

/* The numbered tokens of S: name, array, how many. */
#define N_NUMBERED 3
static const struct {
    const char *format;
    PyObject **tokens;
    int count;
} S_NUMBERED[N_NUMBERED] = {
    {"size:%d", S.size_n, MAX_SIZE_BITS + 1},
    {"urls:%d", S.urls_n, 6},
    {"8bit%%:%d", S.eight_bit_n, 11},
};

static const struct {
    PyObject **slot;
    const char *text;
} S_TABLE[] = {
    {&S.urls, "urls"}, {&S.content_types, "content_types"}, {&S.charsets, "charsets"},
    {&S.encodings, "encodings"}, {&S.attachments, "attachments"}, {&S.defects, "defects"},
    {&S.html_tags, "html_tags"}, {&S.html_features, "html_features"}, {&S.text, "text"},
    {&S.html_text, "html_text"}, {&S.size, "size"}, {&S.content_type, "content_type"},
    {&S.filename, "filename"},
    {&S.proto_https, "proto:https"}, {&S.proto_http, "proto:http"}, {&S.url, "url:"},
    {&S.url_userinfo, "url:userinfo"}, {&S.url_escaped, "url:escaped"}, {&S.urlpath, "urlpath:"},
    {&S.part, "part:"}, {&S.charset, "charset:"}, {&S.cte, "cte:"}, {&S.att_type, "att:type:"},
    {&S.att_ext, "att:ext:"}, {&S.defect, "defect:"}, {&S.tag, "tag:"}, {&S.html, "html:"},
    {&S.html_only, "html:only"},
};
#define N_S_TABLE (sizeof(S_TABLE) / sizeof(S_TABLE[0]))

static void
clear_strings(void)
{
    for (size_t i = 0; i < N_S_TABLE; i++)
        Py_CLEAR(*S_TABLE[i].slot);
    Py_CLEAR(S.tag_many);
    for (int i = 0; i < N_NUMBERED; i++)
        for (int n = 0; n < S_NUMBERED[i].count; n++)
            Py_CLEAR(S_NUMBERED[i].tokens[n]);
}

static int
make_strings(void)
{
    for (size_t i = 0; i < N_S_TABLE; i++) {
        if ((*S_TABLE[i].slot = PyUnicode_InternFromString(S_TABLE[i].text)) == NULL) {
            clear_strings();
            return -1;
        }
    }
    if ((S.tag_many = PyLong_FromLong(TAG_MANY)) == NULL) {
        clear_strings();
        return -1;
    }
    for (int i = 0; i < N_NUMBERED; i++) {
        for (int n = 0; n < S_NUMBERED[i].count; n++) {
            PyObject *token = PyUnicode_FromFormat(S_NUMBERED[i].format, n);
            if (token == NULL) {
                clear_strings();
                return -1;
            }
            PyUnicode_InternInPlace(&token);
            S_NUMBERED[i].tokens[n] = token;
        }
    }
    return 0;
}

/* A frozenset of the strings of a NULL-terminated array. */
static PyObject *
frozenset_of(const char *const *names)
{
    PyObject *set = PyFrozenSet_New(NULL);
    for (; set != NULL && *names != NULL; names++) {
        PyObject *name = PyUnicode_InternFromString(*names);
        if (name == NULL || PySet_Add(set, name) < 0)
            Py_CLEAR(set);
        Py_XDECREF(name);
    }
    return set;
}

static int
make_constants(void)
{
    if (K.lower != NULL)
        return 0;  /* made by an earlier load of the module */
    if (make_strings() < 0)
        return -1;
    PyObject *lower = PyUnicode_InternFromString("lower");
    PyObject *received = PyUnicode_InternFromString("received:");
    PyObject *empty = PyUnicode_InternFromString("");
    PyObject *headers = PyUnicode_InternFromString("headers");
    PyObject *subject = PyUnicode_InternFromString("subject:");
    PyObject *skip = frozenset_of(SKIP_HEADERS);
    PyObject *address = frozenset_of(ADDRESS_HEADERS);
    PyObject *listed = frozenset_of(LISTED_HEADERS);
    if (lower == NULL || received == NULL || empty == NULL || headers == NULL || subject == NULL
        || skip == NULL || address == NULL || listed == NULL)
        goto fail;
    for (size_t i = 0; i < N_RECEIVED_WORDS; i++) {
        PyObject *word = PyUnicode_InternFromString(RECEIVED_WORDS[i]);
        PyObject *token = word ? PyUnicode_Concat(received, word) : NULL;
        if (token == NULL) {
            Py_XDECREF(word);
            for (size_t j = 0; j < i; j++) {
                Py_CLEAR(K.received_words[j]);
                Py_CLEAR(K.received_tokens[j]);
            }
            goto fail;
        }
        PyUnicode_InternInPlace(&token);
        K.received_words[i] = word;
        K.received_tokens[i] = token;
    }
    K.received = received;
    K.empty = empty;
    K.headers = headers;
    K.subject = subject;
    K.skip_headers = skip;
    K.address_headers = address;
    K.listed_headers = listed;
    K.lower = lower;  /* last: marks the constants made */
    return 0;
fail:
    clear_strings();
    Py_XDECREF(lower);
    Py_XDECREF(received);
    Py_XDECREF(empty);
    Py_XDECREF(headers);
    Py_XDECREF(subject);
    Py_XDECREF(skip);
    Py_XDECREF(address);
    Py_XDECREF(listed);
    return -1;
}

/* ------------------------------------------------------------------ text access */

/* A str read in place. */
typedef struct {
    PyObject *obj;
    int kind;
    const void *data;
    Py_ssize_t len;
    int ascii;  /* every character < 128 */
} Text;

#define AT(t, i) PyUnicode_READ((t)->kind, (t)->data, (i))

static int
text_of(PyObject *s, Text *t)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "expected str, not %.100s", Py_TYPE(s)->tp_name);
        return -1;
    }
    if (PyUnicode_READY(s) < 0)
        return -1;
    t->obj = s;
    t->kind = PyUnicode_KIND(s);
    t->data = PyUnicode_DATA(s);
    t->len = PyUnicode_GET_LENGTH(s);
    t->ascii = PyUnicode_IS_ASCII(s);
    return 0;
}

/* Both are str, else TypeError. */
static int
check_str_pair(PyObject *a, PyObject *b)
{
    PyObject *bad = !PyUnicode_Check(a) ? a : !PyUnicode_Check(b) ? b : NULL;
    if (bad == NULL)
        return 0;
    PyErr_Format(PyExc_TypeError, "expected str, not %.100s", Py_TYPE(bad)->tp_name);
    return -1;
}

static int
range_is_ascii(const Text *t, Py_ssize_t start, Py_ssize_t end)
{
    if (t->ascii)
        return 1;
    for (Py_ssize_t i = start; i < end; i++)
        if (AT(t, i) >= 128)
            return 0;
    return 1;
}

/* First index of ch in t[start:end], or -1. */
static Py_ssize_t
find_char(const Text *t, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t i = start; i < end; i++)
        if (AT(t, i) == ch)
            return i;
    return -1;
}

/* ------------------------------------------------------------------ character classes */

/* sre's \w for str patterns. */
static inline int
is_word(Py_UCS4 ch)
{
    if (ch < 128)
        return Py_ISALNUM(ch) || ch == '_';
    return Py_UNICODE_ISALNUM(ch);
}

/* sre's \d for str patterns. */
static inline int
is_decimal(Py_UCS4 ch)
{
    if (ch < 128)
        return ch >= '0' && ch <= '9';
    return Py_UNICODE_ISDECIMAL(ch);
}

/* tokens._STRIP */
static inline int
is_strip(Py_UCS4 ch)
{
    switch (ch) {
    case '"': case '\'': case '(': case ')': case '[': case ']': case '{': case '}':
    case '<': case '>': case '.': case ',': case ';': case ':': case '!': case '?':
    case '*': case '-': case '_': case '=': case '+': case '|': case '\\': case '/':
    case '`': case '~': case '^':
        return 1;
    default:
        return 0;
    }
}

/* tokens._HEADER_WORD's class [\w$%&@.!'+-] */
static inline int
is_header_char(Py_UCS4 ch)
{
    switch (ch) {
    case '$': case '%': case '&': case '@': case '.': case '!': case '\'': case '+': case '-':
        return 1;
    default:
        return is_word(ch);
    }
}

/* _ADDR_RE's user class [\w.+-] */
static inline int
is_user_char(Py_UCS4 ch)
{
    return ch == '.' || ch == '+' || ch == '-' || is_word(ch);
}

/* _ADDR_RE's domain label class [\w-] */
static inline int
is_label_char(Py_UCS4 ch)
{
    return ch == '-' || is_word(ch);
}

/* _HOSTNAME_RE's label class [a-z0-9-] */
static inline int
is_host_char(Py_UCS4 ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

/* str.isupper() of t[start:end] (at least 2 characters): it has cased characters and
 * none of them is lower or title case (CPython's unicode_isupper). */
static int
range_isupper(const Text *t, Py_ssize_t start, Py_ssize_t end)
{
    int cased = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 ch = AT(t, i);
        if (Py_UNICODE_ISLOWER(ch) || Py_UNICODE_ISTITLE(ch))
            return 0;
        if (!cased && Py_UNICODE_ISUPPER(ch))
            cased = 1;
    }
    return cased;
}

/* str.isalpha() of t[start:end] (not empty). */
static int
range_isalpha(const Text *t, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t i = start; i < end; i++)
        if (!Py_UNICODE_ISALPHA(AT(t, i)))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ building tokens */

/* Adds the token to the set and drops the reference; NULL (an error) passes through. */
static int
add(PyObject *out, PyObject *token)
{
    if (token == NULL)
        return -1;
    int r = PySet_Add(out, token);
    Py_DECREF(token);
    return r;
}

/* t[start:end].lower() by str.lower() (any text). */
static PyObject *
python_lower(const Text *t, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *sub = PyUnicode_Substring(t->obj, start, end);
    if (sub == NULL)
        return NULL;
    PyObject *low = PyObject_CallMethodNoArgs(sub, K.lower);
    Py_DECREF(sub);
    return low;
}

/* prefix + t[start:end], the latter lower-cased when `lower`: built in one piece when both
 * are ASCII, else by str.lower() and concatenation. */
static PyObject *
prefixed(PyObject *prefix, const Text *t, Py_ssize_t start, Py_ssize_t end, int lower)
{
    Py_ssize_t plen = PyUnicode_GET_LENGTH(prefix);
    if (PyUnicode_IS_ASCII(prefix) && range_is_ascii(t, start, end)) {
        PyObject *r = PyUnicode_New(plen + end - start, 127);
        if (r == NULL)
            return NULL;
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(r);
        memcpy(d, PyUnicode_1BYTE_DATA(prefix), (size_t)plen);
        d += plen;
        for (Py_ssize_t i = start; i < end; i++) {
            Py_UCS4 ch = AT(t, i);
            *d++ = (Py_UCS1)(lower ? Py_TOLOWER(ch) : ch);
        }
        return r;
    }
    PyObject *piece = lower ? python_lower(t, start, end) : PyUnicode_Substring(t->obj, start, end);
    if (piece == NULL || plen == 0)
        return piece;
    PyObject *r = PyUnicode_Concat(prefix, piece);
    Py_DECREF(piece);
    return r;
}

/* prefix + a C literal. */
static PyObject *
with_literal(PyObject *prefix, const char *literal)
{
    return PyUnicode_FromFormat("%U%s", prefix, literal);
}

/* s.lower() (a new reference; s itself when it is ASCII without capitals). */
static PyObject *
lower_str(const Text *t)
{
    if (!t->ascii)
        return PyObject_CallMethodNoArgs(t->obj, K.lower);
    Py_ssize_t i = 0;
    while (i < t->len && !Py_ISUPPER(AT(t, i)))
        i++;
    if (i == t->len) {
        Py_INCREF(t->obj);
        return t->obj;
    }
    PyObject *r = PyUnicode_New(t->len, 127);
    if (r == NULL)
        return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(r);
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(t->obj);
    for (i = 0; i < t->len; i++)
        d[i] = (Py_UCS1)Py_TOLOWER(s[i]);
    return r;
}

/* ------------------------------------------------------------------ domains */

/* _IP_RE.fullmatch(host): four runs of 1 to 3 decimal digits joined by dots.  Sets
 * *third_dot to the index of the third dot. */
static int
is_ip(const Text *t, Py_ssize_t *third_dot)
{
    Py_ssize_t i = 0;
    for (int group = 0; group < 4; group++) {
        Py_ssize_t start = i;
        while (i < t->len && i - start < 4 && is_decimal(AT(t, i)))
            i++;
        if (i == start || i - start > 3)
            return 0;
        if (group < 3) {
            if (i >= t->len || AT(t, i) != '.')
                return 0;
            if (group == 2)
                *third_dot = i;
            i++;
        }
    }
    return i == t->len;
}

/* tokens._domain_tokens: ``a.b.example.com`` -> the host and its parent domains, at most 3
 * (parts[i:] for i in range(max(0, len(parts) - 4), len(parts) - 1)); an IP address ->
 * ``ip`` and its first three numbers. */
static int
domain_tokens(PyObject *host, PyObject *prefix, PyObject *out)
{
    Text t;
    if (text_of(host, &t) < 0)
        return -1;
    Py_ssize_t third_dot = 0;
    if (is_ip(&t, &third_dot)) {
        if (add(out, with_literal(prefix, "ip")) < 0)
            return -1;
        return add(out, prefixed(prefix, &t, 0, third_dot, 0));
    }
    Py_ssize_t dots[4];  /* the last (up to) four dots, from the end */
    int ndots = 0;
    for (Py_ssize_t i = t.len - 1; i >= 0 && ndots < 4; i--)
        if (AT(&t, i) == '.')
            dots[ndots++] = i;
    /* The suffix after the k-th dot from the end, for k = 2..4; the whole host when the host
     * has exactly k - 1 dots (ndots is the whole count when it is below 4). */
    for (int k = 2; k <= 4; k++) {
        Py_ssize_t start;
        if (ndots >= k)
            start = dots[k - 1] + 1;
        else if (ndots == k - 1)
            start = 0;
        else
            continue;
        if (add(out, prefixed(prefix, &t, start, t.len, 0)) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ _ADDR_RE */

/* One match of _ADDR_RE ``([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)``: user t[user:at], domain
 * t[at + 1:end]. */
typedef struct {
    Py_ssize_t user, at, end;
} Addr;

/* The next _ADDR_RE match in t[*pos:limit] as findall finds it, advancing *pos past it;
 * 0 when there is none.  The user part is greedy and '@' is not in its class, so a match
 * is an '@' with the whole run of user characters before it (from *pos on, not empty)
 * and, after it, a label followed by one or more dot-labels, each run taken whole. */
static int
next_addr(const Text *t, Py_ssize_t *pos, Py_ssize_t limit, Addr *m)
{
    for (Py_ssize_t at = *pos; at < limit; at++) {
        if (AT(t, at) != '@')
            continue;
        Py_ssize_t user = at;
        while (user > *pos && is_user_char(AT(t, user - 1)))
            user--;
        if (user == at)
            continue;
        Py_ssize_t end = at + 1;
        while (end < limit && is_label_char(AT(t, end)))
            end++;
        if (end == at + 1)
            continue;
        int labels = 0;
        while (end + 1 < limit && AT(t, end) == '.' && is_label_char(AT(t, end + 1))) {
            end += 2;
            while (end < limit && is_label_char(AT(t, end)))
                end++;
            labels++;
        }
        if (labels == 0)
            continue;
        m->user = user;
        m->at = at;
        m->end = end;
        *pos = end;
        return 1;
    }
    *pos = limit;
    return 0;
}

/* ------------------------------------------------------------------ _HEADER_WORD */

/* prefix + each of the first `limit` matches of _HEADER_WORD ``[\w$%&@.!'+-]{2,40}`` in
 * t[start:end], each lower-cased when `lower`.  findall
 * cuts a run of the class into pieces of 40, and the rest when it has 2 or more. */
static int
header_word_tokens(const Text *t, Py_ssize_t start, Py_ssize_t end, PyObject *prefix,
                   PyObject *out, Py_ssize_t limit, int lower)
{
    Py_ssize_t i = start, found = 0;
    while (i < end && found < limit) {
        if (!is_header_char(AT(t, i))) {
            i++;
            continue;
        }
        Py_ssize_t run = i;
        while (i < end && is_header_char(AT(t, i)))
            i++;
        while (i - run >= 2 && found < limit) {
            Py_ssize_t piece = i - run < 40 ? i - run : 40;
            if (add(out, prefixed(prefix, t, run, run + piece, lower)) < 0)
                return -1;
            found++;
            run += piece;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ word_tokens */

/* Whether the lower-cased word t[start:end] (longer than MAX_WORD) starts with "http" or
 * "www.".  No character beyond ASCII lower-cases to a string starting with h, t, p, w or
 * '.' (the tests check this on the running Python's Unicode tables), so the word must
 * start with four ASCII characters that lower-case to one of them. */
static int
is_url_word(const Text *t, Py_ssize_t start)
{
    char head[5];
    for (int i = 0; i < 4; i++) {
        Py_UCS4 ch = AT(t, start + i);
        if (ch >= 128)
            return 0;
        head[i] = (char)Py_TOLOWER(ch);
    }
    head[4] = '\0';
    return strcmp(head, "http") == 0 || strcmp(head, "www.") == 0;
}

/* The tokens of one email address m in a body word: email-user: and email-domain:. */
static int
email_address(const Text *t, const Addr *m, PyObject *user_prefix, PyObject *domain_prefix,
              PyObject *out)
{
    PyObject *user = python_lower(t, m->user, m->at);  /* user.lower()[:EMAIL_USER] */
    if (user != NULL && PyUnicode_GET_LENGTH(user) > EMAIL_USER)
        Py_SETREF(user, PyUnicode_Substring(user, 0, EMAIL_USER));
    if (user == NULL)
        return -1;
    PyObject *token = PyUnicode_Concat(user_prefix, user);
    Py_DECREF(user);
    if (add(out, token) < 0)
        return -1;
    PyObject *domain = prefixed(K.empty, t, m->at + 1, m->end, 1);
    if (domain == NULL)
        return -1;
    int r = domain_tokens(domain, domain_prefix, out);
    Py_DECREF(domain);
    return r;
}

/* The email branch of _word_tokens for the word t[start:end]: the tokens of each _ADDR_RE
 * match; 0 when there is none, 1 when there are, -1 on error. */
static int
email_tokens(const Text *t, Py_ssize_t start, Py_ssize_t end, PyObject *prefix, PyObject *out)
{
    Py_ssize_t pos = start;
    Addr m;
    if (!next_addr(t, &pos, end, &m))
        return 0;
    PyObject *user_prefix = with_literal(prefix, "email-user:");
    PyObject *domain_prefix = user_prefix ? with_literal(prefix, "email-domain:") : NULL;
    int r = 1;
    if (domain_prefix == NULL)
        r = -1;
    else {
        do {
            if (email_address(t, &m, user_prefix, domain_prefix, out) < 0) {
                r = -1;
                break;
            }
        } while (next_addr(t, &pos, end, &m));
    }
    Py_XDECREF(user_prefix);
    Py_XDECREF(domain_prefix);
    return r;
}

/* _word_tokens for the word t[start:end] (stripped, at least MIN_WORD long). */
static int
word_token(const Text *t, Py_ssize_t start, Py_ssize_t end, PyObject *prefix, PyObject *out)
{
    Py_ssize_t n = end - start;
    if (n <= MAX_WORD) {
        if (add(out, prefixed(prefix, t, start, end, 1)) < 0)
            return -1;
        if (n > 3 && range_isupper(t, start, end) && range_isalpha(t, start, end))
            return add(out, with_literal(prefix, "UPPER"));
        return 0;
    }
    if (find_char(t, '@', start, end) >= 0) {
        int r = email_tokens(t, start, end, prefix, out);
        if (r != 0)
            return r < 0 ? -1 : 0;
    }
    if (is_url_word(t, start))
        return 0;  /* URLs are tokenized from msg.urls */
    PyObject *first = prefixed(K.empty, t, start, start + 1, 1);  /* word[0].lower() */
    if (first == NULL)
        return -1;
    PyObject *token = PyUnicode_FromFormat("%Uskip:%U %zd", prefix, first, n / 10 * 10);
    Py_DECREF(first);
    return add(out, token);
}

/* ------------------------------------------------------------------ _HOSTNAME_RE, _IP_RE */

/* Where _HOSTNAME_RE's final ``[a-z]{2,}\b`` ends when it starts at i, or -1: a run of
 * 2 or more [a-z] taken whole (a shorter one is followed by a letter, no boundary), then
 * the end or a character that is not \w. */
static Py_ssize_t
host_tail(const Text *t, Py_ssize_t i)
{
    Py_ssize_t j = i;
    while (j < t->len && AT(t, j) >= 'a' && AT(t, j) <= 'z')
        j++;
    if (j - i < 2 || (j < t->len && is_word(AT(t, j))))
        return -1;
    return j;
}

/* prefix-less: the first MAX_HOSTS matches of _HOSTNAME_RE
 * ``\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b`` in t, as received: domain tokens.
 *
 * From a start at a word boundary the labels ``[a-z0-9-]+\.`` are a chain fixed by the
 * text (a label runs to its dot); the regex takes as many as it can, then gives them back
 * one by one until the tail ``[a-z]{2,}\b`` matches after the last one kept: the match
 * ends after the last dot of the chain with a good tail.  Any later start inside the chain
 * has the same dots after it, so when no dot has a good tail the scan moves past the
 * chain's last dot: the text is read at most twice. */
static int
received_hosts(const Text *t, PyObject *out)
{
    Py_ssize_t p = 0;
    int found = 0;
    while (p < t->len && found < MAX_HOSTS) {
        Py_UCS4 ch = AT(t, p);
        if (!is_host_char(ch)) {
            p++;
            continue;
        }
        int before = p > 0 && is_word(AT(t, p - 1));
        if (before == (ch != '-')) {  /* no word boundary at p ('-' is not \w) */
            p++;
            continue;
        }
        Py_ssize_t label = p, last_dot = -1, match_end = -1, r;
        for (;;) {
            r = label;
            while (r < t->len && is_host_char(AT(t, r)))
                r++;
            if (r == label || r >= t->len || AT(t, r) != '.')
                break;
            last_dot = r;
            Py_ssize_t tail = host_tail(t, r + 1);
            if (tail >= 0)
                match_end = tail;
            label = r + 1;
        }
        if (match_end >= 0) {
            PyObject *host = PyUnicode_Substring(t->obj, p, match_end);
            int failed = host == NULL || domain_tokens(host, K.received, out) < 0;
            Py_XDECREF(host);
            if (failed)
                return -1;
            found++;
            p = match_end;
        } else {
            p = last_dot >= 0 ? last_dot + 1 : r;
        }
    }
    return 0;
}

/* Where an _IP_RE match ``\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b`` starting at p
 * ends, or -1; sets *third_dot.  Each group is a whole run of decimals (a shorter one is
 * followed by a digit, not a dot or a boundary). */
static Py_ssize_t
ip_at(const Text *t, Py_ssize_t p, Py_ssize_t *third_dot)
{
    if (p > 0 && is_word(AT(t, p - 1)))
        return -1;
    Py_ssize_t i = p;
    for (int group = 0; group < 4; group++) {
        Py_ssize_t start = i;
        while (i < t->len && i - start < 4 && is_decimal(AT(t, i)))
            i++;
        if (i == start || i - start > 3)
            return -1;
        if (group < 3) {
            if (i >= t->len || AT(t, i) != '.')
                return -1;
            if (group == 2)
                *third_dot = i;
            i++;
        }
    }
    if (i < t->len && is_word(AT(t, i)))
        return -1;
    return i;
}

/* received:ip: tokens of the first MAX_IPS _IP_RE matches in t. */
static int
received_ips(const Text *t, PyObject *out)
{
    Py_ssize_t p = 0;
    int found = 0;
    PyObject *prefix = NULL;
    while (p < t->len && found < MAX_IPS) {
        Py_ssize_t third_dot = 0, end;
        if (!is_decimal(AT(t, p)) || (end = ip_at(t, p, &third_dot)) < 0) {
            p++;
            continue;
        }
        if (prefix == NULL && (prefix = PyUnicode_FromString("received:ip:")) == NULL)
            return -1;
        if (add(out, prefixed(prefix, t, p, third_dot, 0)) < 0) {
            Py_DECREF(prefix);
            return -1;
        }
        found++;
        p = end;
    }
    Py_XDECREF(prefix);
    return 0;
}

/* ------------------------------------------------------------------ the tokenizers */

/* tokens._word_tokens: each word of text[:MAX_TEXT] (split on whitespace, stripped). */
static int
words_of(PyObject *text, PyObject *prefix, PyObject *out)
{
    Text t;
    if (text_of(text, &t) < 0)
        return -1;
    Py_ssize_t n = t.len < MAX_TEXT ? t.len : MAX_TEXT, i = 0;
    while (i < n) {
        while (i < n && Py_UNICODE_ISSPACE(AT(&t, i)))
            i++;
        Py_ssize_t start = i;
        while (i < n && !Py_UNICODE_ISSPACE(AT(&t, i)))
            i++;
        Py_ssize_t end = i;
        while (start < end && is_strip(AT(&t, start)))
            start++;
        while (end > start && is_strip(AT(&t, end - 1)))
            end--;
        if (end - start >= MIN_WORD && word_token(&t, start, end, prefix, out) < 0)
            return -1;
    }
    return 0;
}

/* tokens._header_words: prefix + each of the first `limit` _HEADER_WORD matches of
 * value.lower().  Lower-casing ASCII keeps lengths and classes, so an ASCII value is
 * scanned as it is and each word lower-cased; any other is lower-cased first. */
static int
header_words_of(PyObject *value, PyObject *prefix, Py_ssize_t limit, PyObject *out)
{
    Text t;
    if (text_of(value, &t) < 0)
        return -1;
    if (t.ascii)
        return header_word_tokens(&t, 0, t.len, prefix, out, limit, 1);
    PyObject *low = PyObject_CallMethodNoArgs(value, K.lower);
    Text lt;
    int r = low == NULL || text_of(low, &lt) < 0
            ? -1 : header_word_tokens(&lt, 0, lt.len, prefix, out, limit, 0);
    Py_XDECREF(low);
    return r;
}

/* The tokens of one address: name:addr:user[:30]@domain and the domain's. */
static int
address_tokens(const Text *low, const Addr *m, PyObject *addr_prefix, PyObject *domain_prefix,
               PyObject *out)
{
    PyObject *token;
    if (m->at - m->user <= ADDR_USER) {
        token = prefixed(addr_prefix, low, m->user, m->end, 0);
    } else {
        PyObject *user = prefixed(addr_prefix, low, m->user, m->user + ADDR_USER, 0);
        token = user ? prefixed(user, low, m->at, m->end, 0) : NULL;
        Py_XDECREF(user);
    }
    if (add(out, token) < 0)
        return -1;
    PyObject *domain = PyUnicode_Substring(low->obj, m->at + 1, m->end);
    if (domain == NULL)
        return -1;
    int r = domain_tokens(domain, domain_prefix, out);
    Py_DECREF(domain);
    return r;
}

/* tokens._address_header: the first MAX_ADDRS addresses of the lower-cased value, the
 * words of the display name (before the first '<'), the address count. */
static int
address_header_of(PyObject *name, PyObject *value, PyObject *out)
{
    Text t, low;
    if (text_of(value, &t) < 0)
        return -1;
    PyObject *lowered = lower_str(&t);
    if (lowered == NULL)
        return -1;
    PyObject *addr_prefix = NULL, *domain_prefix = NULL, *name_prefix = NULL;
    int failed = 1, count = 0;
    if (text_of(lowered, &low) < 0
        || (addr_prefix = with_literal(name, ":addr:")) == NULL
        || (domain_prefix = with_literal(name, ":domain:")) == NULL
        || (name_prefix = with_literal(name, ":name:")) == NULL)
        goto done;
    Py_ssize_t pos = 0;
    Addr m;
    while (count < MAX_ADDRS && next_addr(&low, &pos, low.len, &m)) {
        if (address_tokens(&low, &m, addr_prefix, domain_prefix, out) < 0)
            goto done;
        count++;
    }
    if (count == 0 && add(out, with_literal(name, ":no-address")) < 0)
        goto done;
    Py_ssize_t lt = find_char(&t, '<', 0, t.len);
    if (lt > 0 && header_word_tokens(&t, 0, lt, name_prefix, out, PY_SSIZE_T_MAX, 1) < 0)
        goto done;
    if (count > 1 && add(out, PyUnicode_FromFormat("%U:count:%d", name, count / 3)) < 0)
        goto done;
    failed = 0;
done:
    Py_DECREF(lowered);
    Py_XDECREF(addr_prefix);
    Py_XDECREF(domain_prefix);
    Py_XDECREF(name_prefix);
    return failed ? -1 : 0;
}

/* tokens._received: host names and IP networks of the lower-cased value, and the words
 * of RECEIVED_WORDS it holds. */
static int
received_of(PyObject *value, PyObject *out)
{
    Text t, low;
    if (text_of(value, &t) < 0)
        return -1;
    PyObject *lowered = lower_str(&t);
    if (lowered == NULL)
        return -1;
    int failed = text_of(lowered, &low) < 0 || received_hosts(&low, out) < 0
                 || received_ips(&low, out) < 0;
    for (size_t i = 0; !failed && i < N_RECEIVED_WORDS; i++) {
        int has = PyUnicode_Contains(lowered, K.received_words[i]);
        if (has < 0 || (has && PySet_Add(out, K.received_tokens[i]) < 0))
            failed = 1;
    }
    Py_DECREF(lowered);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ headers */

/* The key of a header name: name.lower().strip()[:40].  Sets *lname to what name.lower()
 * is among "message-id" (1) and "date" (2), else 0 (ParsedMessage.header compares that). */
static PyObject *
header_key(PyObject *name, int *lname)
{
    Text t, low;
    if (text_of(name, &t) < 0)
        return NULL;
    PyObject *lowered = lower_str(&t);
    if (lowered == NULL || text_of(lowered, &low) < 0) {
        Py_XDECREF(lowered);
        return NULL;
    }
    *lname = PyUnicode_CompareWithASCIIString(lowered, "message-id") == 0 ? 1
             : PyUnicode_CompareWithASCIIString(lowered, "date") == 0 ? 2 : 0;
    Py_ssize_t start = 0, end = low.len;
    while (start < end && Py_UNICODE_ISSPACE(AT(&low, start)))
        start++;
    while (end > start && Py_UNICODE_ISSPACE(AT(&low, end - 1)))
        end--;
    if (end - start > 40)
        end = start + 40;
    if (start == 0 && end == low.len)
        return lowered;
    PyObject *key = PyUnicode_Substring(lowered, start, end);
    Py_DECREF(lowered);
    return key;
}

/* The subject's words, its runs of [!$%*?] (subject:punct:, 3 at most) and ALLCAPS. */
static int
subject_tokens(PyObject *value, PyObject *out)
{
    Text t;
    if (words_of(value, K.subject, out) < 0 || text_of(value, &t) < 0)
        return -1;
    Py_ssize_t i = 0;
    while (i < t.len) {
        Py_UCS4 ch = AT(&t, i);
        if (ch != '!' && ch != '$' && ch != '%' && ch != '*' && ch != '?') {
            i++;
            continue;
        }
        Py_ssize_t run = i;
        while (i < t.len && (ch = AT(&t, i), ch == '!' || ch == '$' || ch == '%' || ch == '*' || ch == '?'))
            i++;
        PyObject *prefix = PyUnicode_FromString("subject:punct:");
        int failed = prefix == NULL || add(out, prefixed(prefix, &t, run, i - run > 3 ? run + 3 : i, 0)) < 0;
        Py_XDECREF(prefix);
        if (failed)
            return -1;
    }
    if (t.len > 5 && range_isupper(&t, 0, t.len))
        return add(out, PyUnicode_FromString("subject:ALLCAPS"));
    return 0;
}

/* message-id:@ and the lower-cased text after the first '@' that has some, up to '>' or
 * whitespace (re.search(r"@([^>\s]+)")), 40 characters at most; else message-id:@none. */
static int
message_id_token(PyObject *value, PyObject *out)
{
    Text t;
    if (text_of(value, &t) < 0)
        return -1;
    for (Py_ssize_t at = 0; at + 1 < t.len; at++) {
        if (AT(&t, at) != '@')
            continue;
        Py_ssize_t end = at + 1;
        while (end < t.len && AT(&t, end) != '>' && !Py_UNICODE_ISSPACE(AT(&t, end)))
            end++;
        if (end == at + 1)
            continue;
        PyObject *host = python_lower(&t, at + 1, end);
        if (host != NULL && PyUnicode_GET_LENGTH(host) > 40)
            Py_SETREF(host, PyUnicode_Substring(host, 0, 40));
        PyObject *token = host ? PyUnicode_FromFormat("message-id:@%U", host) : NULL;
        Py_XDECREF(host);
        return add(out, token);
    }
    return add(out, PyUnicode_FromString("message-id:@none"));
}

/* ' '.join(value.lower().split())[:60] */
static PyObject *
squeezed(PyObject *value)
{
    Text t, low;
    if (text_of(value, &t) < 0)
        return NULL;
    PyObject *lowered = lower_str(&t);
    if (lowered == NULL || text_of(lowered, &low) < 0) {
        Py_XDECREF(lowered);
        return NULL;
    }
    Py_UCS4 buf[60];  /* never more than 60 characters written */
    int n = 0, words = 0;
    Py_ssize_t i = 0;
    while (i < low.len && n < 60) {
        while (i < low.len && Py_UNICODE_ISSPACE(AT(&low, i)))
            i++;
        if (i == low.len)
            break;
        if (words++ > 0)
            buf[n++] = ' ';
        while (i < low.len && n < 60 && !Py_UNICODE_ISSPACE(AT(&low, i)))
            buf[n++] = AT(&low, i++);
    }
    Py_DECREF(lowered);
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, buf, n);
}

/* The tokens of a header other than Received, by its key (tokens._headers' branches). */
static int
header_tokens(PyObject *key, PyObject *value, PyObject *out)
{
    if (PyUnicode_CompareWithASCIIString(key, "subject") == 0)
        return subject_tokens(value, out);
    int found = PySet_Contains(K.address_headers, key);
    if (found != 0)
        return found < 0 ? -1 : address_header_of(key, value, out);
    if (PyUnicode_CompareWithASCIIString(key, "received") == 0)
        return 0;  /* the oldest, apart */
    if (PyUnicode_CompareWithASCIIString(key, "message-id") == 0)
        return message_id_token(value, out);
    if ((found = PySet_Contains(K.listed_headers, key)) < 0)
        return -1;
    if (found) {
        PyObject *words = squeezed(value);
        PyObject *token = words ? PyUnicode_FromFormat("%U:%U", key, words) : NULL;
        Py_XDECREF(words);
        if (add(out, token) < 0)
            return -1;
    }
    PyObject *prefix = with_literal(key, ":w:");
    if (prefix == NULL)
        return -1;
    int r = header_words_of(value, prefix, 20, out);
    Py_DECREF(prefix);
    return r;
}

/* header:KEY:N for each key (N its count, 5 at most). */
static int
count_tokens(PyObject *counts, PyObject *out)
{
    Py_ssize_t pos = 0;
    PyObject *key, *count;
    while (PyDict_Next(counts, &pos, &key, &count)) {
        Py_ssize_t n = PyLong_AsSsize_t(count);
        if (n == -1 && PyErr_Occurred())
            return -1;
        if (add(out, PyUnicode_FromFormat("header:%U:%zd", key, n < 5 ? n : 5)) < 0)
            return -1;
    }
    return 0;
}

/* Adds 1 to counts[key]. */
static int
count(PyObject *counts, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(counts, key);  /* borrowed */
    if (old == NULL && PyErr_Occurred())
        return -1;
    PyObject *n = PyLong_FromSsize_t(old ? PyLong_AsSsize_t(old) + 1 : 1);
    if (n == NULL)
        return -1;
    int r = PyDict_SetItem(counts, key, n);
    Py_DECREF(n);
    return r;
}

/* One (name, value) header of msg.headers: borrowed references to its str parts. */
static int
header_pair(PyObject *item, PyObject **name, PyObject **value)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "a header must be a (name, value) tuple");
        return -1;
    }
    *name = PyTuple_GET_ITEM(item, 0);
    *value = PyTuple_GET_ITEM(item, 1);
    return check_str_pair(*name, *value);
}

/* tokens._headers: the oldest MAX_RECEIVED Received headers, every other header by its
 * key, the header counts, and whether the first Message-ID and Date (ParsedMessage.header)
 * are missing or empty. */
static int
headers_of(PyObject *msg, PyObject *out)
{
    PyObject *list = PyObject_GetAttr(msg, K.headers);
    PyObject *seq = list ? PySequence_Fast(list, "msg.headers must be a sequence") : NULL;
    Py_XDECREF(list);
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *keys = PyList_New(n), *counts = PyDict_New();
    Py_ssize_t received[MAX_RECEIVED];  /* the last MAX_RECEIVED Received headers, a ring */
    Py_ssize_t nreceived = 0;
    int message_id = -1, date = -1;  /* the first one's value is not empty (-1: none) */
    int failed = 1;
    if (keys == NULL || counts == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *value, *key;
        int lname;
        if (header_pair(items[i], &name, &value) < 0 || (key = header_key(name, &lname)) == NULL)
            goto done;
        PyList_SET_ITEM(keys, i, key);
        if (lname == 1 && message_id < 0)
            message_id = PyUnicode_GET_LENGTH(value) > 0;
        if (lname == 2 && date < 0)
            date = PyUnicode_GET_LENGTH(value) > 0;
        if (PyUnicode_CompareWithASCIIString(key, "received") == 0)
            received[nreceived++ % MAX_RECEIVED] = i;
    }
    for (Py_ssize_t r = nreceived > MAX_RECEIVED ? nreceived - MAX_RECEIVED : 0; r < nreceived; r++)
        if (received_of(PyTuple_GET_ITEM(items[received[r % MAX_RECEIVED]], 1), out) < 0)
            goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (count(counts, key) < 0)
            goto done;
        int skip = PySet_Contains(K.skip_headers, key);
        if (skip < 0 || (!skip && header_tokens(key, PyTuple_GET_ITEM(items[i], 1), out) < 0))
            goto done;
    }
    if (count_tokens(counts, out) < 0
        || (message_id <= 0 && add(out, PyUnicode_FromString("header:no-message-id")) < 0)
        || (date <= 0 && add(out, PyUnicode_FromString("header:no-date")) < 0))
        goto done;
    failed = 0;
done:
    Py_DECREF(seq);
    Py_XDECREF(keys);
    Py_XDECREF(counts);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ URLs */

/* The length of the run from t[i] of _HOST_RE's class ``[^/:?#\s]`` (``[^/:?#@\s]`` when
 * `no_at`).  sre's \s is Py_UNICODE_ISSPACE; no character beyond ASCII is one of the others
 * to (?i) (the tests check it). */
static Py_ssize_t
host_run(const Text *t, Py_ssize_t i, int no_at)
{
    Py_ssize_t j = i;
    for (; j < t->len; j++) {
        Py_UCS4 ch = AT(t, j);
        if (ch == '/' || ch == ':' || ch == '?' || ch == '#' || (no_at && ch == '@')
            || Py_UNICODE_ISSPACE(ch))
            break;
    }
    return j - i;
}

/* The length of _HOST_RE's ``(?i)(?:https?://)?`` at t[i] when it takes the scheme: the
 * optional 's' is taken when there (to (?i) U+017F, long s, is an 's' too). */
static Py_ssize_t
scheme_len(const Text *t, Py_ssize_t i)
{
    static const char http[] = "http";
    Py_ssize_t j = i;
    for (int k = 0; k < 4; k++, j++) {
        Py_UCS4 ch = j < t->len ? AT(t, j) : 0;
        if (ch >= 128 || Py_TOLOWER(ch) != http[k])
            return 0;
    }
    if (j < t->len && (AT(t, j) == 's' || AT(t, j) == 'S' || AT(t, j) == 0x17f))
        j++;
    for (int k = 0; k < 3; k++, j++)
        if (j >= t->len || AT(t, j) != (Py_UCS4)":/"[k > 0])
            return 0;
    return j - i;
}

/* Where _HOST_RE's ``([^/:?#@\s]+@)?([^/:?#\s]+)`` puts group 2 when matched from t[i]:
 * sets *start and returns its length, 0 when the groups do not match there.  The user part
 * is a whole run (its class has no '@'), taken when an '@' and a host follow it; else the
 * host is the run from i. */
static Py_ssize_t
host_at(const Text *t, Py_ssize_t i, Py_ssize_t *start)
{
    Py_ssize_t user = host_run(t, i, 1);
    if (user > 0 && i + user < t->len && AT(t, i + user) == '@') {
        Py_ssize_t n = host_run(t, i + user + 1, 0);
        if (n > 0) {
            *start = i + user + 1;
            return n;
        }
    }
    *start = i;
    return host_run(t, i, 0);
}

/* message.url_host(low) for a lower-cased URL: its host, t[*start:*end] (empty when none).
 * The match starts after the leading whitespace (url.strip()); the scheme is given back
 * when no host follows it.  group(2).lower() is group(2) itself: lower() keeps the output
 * of lower() (the tests check it on every character); then rstrip("."). */
static void
url_host_of(const Text *t, Py_ssize_t *start, Py_ssize_t *end)
{
    Py_ssize_t i = 0, n = 0;
    while (i < t->len && Py_UNICODE_ISSPACE(AT(t, i)))
        i++;
    Py_ssize_t scheme = scheme_len(t, i);
    if (scheme > 0)
        n = host_at(t, i + scheme, start);
    if (n == 0)
        n = host_at(t, i, start);
    while (n > 0 && AT(t, *start + n - 1) == '.')
        n--;
    *end = *start + n;
}

/* _URL_PIECES' class [/?=&._~%:#+-] */
static inline int
is_url_sep(Py_UCS4 ch)
{
    switch (ch) {
    case '/': case '?': case '=': case '&': case '.': case '_': case '~': case '%': case ':':
    case '#': case '+': case '-':
        return 1;
    default:
        return 0;
    }
}

/* url:userinfo when low.split("/", 3)[2] (the text between the second and the third '/',
 * when there are two) holds an '@'. */
static int
has_userinfo(const Text *t)
{
    Py_ssize_t first = find_char(t, '/', 0, t->len);
    Py_ssize_t second = first < 0 ? -1 : find_char(t, '/', first + 1, t->len);
    if (second < 0)
        return 0;
    for (Py_ssize_t i = second + 1; i < t->len && AT(t, i) != '/'; i++)
        if (AT(t, i) == '@')
            return 1;
    return 0;
}

/* urlpath: tokens of the first URL_PIECES pieces of _URL_PIECES.split(t[start:]) that are
 * longer than 2 and at most MAX_WORD (split's pieces: between runs of the class, the empty
 * ones at either end included). */
static int
path_tokens(const Text *t, Py_ssize_t start, PyObject *out)
{
    Py_ssize_t i = start;
    for (int pieces = 0; pieces < URL_PIECES; pieces++) {
        Py_ssize_t piece = i;
        while (i < t->len && !is_url_sep(AT(t, i)))
            i++;
        if (i - piece > 2 && i - piece <= MAX_WORD && add(out, prefixed(S.urlpath, t, piece, i, 0)) < 0)
            return -1;
        if (i >= t->len)
            break;
        while (i < t->len && is_url_sep(AT(t, i)))
            i++;
    }
    return 0;
}

/* The tokens of the lower-cased URL t: proto:, its host's (url:), url:userinfo,
 * url:escaped, and the pieces of what follows the first occurrence of the host
 * (low.split(host, 1)[-1]; all of it when there is no host). */
static int
lowered_url_tokens(const Text *t, PyObject *out)
{
    Py_ssize_t i = 0;  /* low.startswith("https") */
    static const char scheme[] = "https";
    while (i < 5 && i < t->len && AT(t, i) == (Py_UCS4)scheme[i])
        i++;
    if (PySet_Add(out, i == 5 ? S.proto_https : S.proto_http) < 0)
        return -1;
    Py_ssize_t start, end, path = 0;
    url_host_of(t, &start, &end);
    if (end > start) {
        PyObject *host = PyUnicode_Substring(t->obj, start, end);
        if (host == NULL)
            return -1;
        Py_ssize_t at = PyUnicode_Find(t->obj, host, 0, t->len, 1);
        int failed = at == -2 || domain_tokens(host, S.url, out) < 0;
        Py_DECREF(host);
        if (failed)
            return -1;
        path = at >= 0 ? at + end - start : 0;
    }
    if (has_userinfo(t) && PySet_Add(out, S.url_userinfo) < 0)
        return -1;
    if (find_char(t, '%', 0, t->len) >= 0 && PySet_Add(out, S.url_escaped) < 0)
        return -1;
    return path_tokens(t, path, out);
}

/* tokens._url_tokens: the tokens of each of the first MAX_URLS URLs, lower-cased. */
static int
urls_of(PyObject *urls, PyObject *out)
{
    if (!PyList_Check(urls) && !PyTuple_Check(urls)) {
        PyErr_Format(PyExc_TypeError, "urls must be a list, not %.100s", Py_TYPE(urls)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Fast(urls, "urls must be a list");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && i < MAX_URLS && !failed; i++) {
        Text t, low;
        PyObject *lowered;
        if (text_of(PySequence_Fast_GET_ITEM(seq, i), &t) < 0 || (lowered = lower_str(&t)) == NULL) {
            failed = 1;
            break;
        }
        failed = text_of(lowered, &low) < 0 || lowered_url_tokens(&low, out) < 0;
        Py_DECREF(lowered);
    }
    Py_DECREF(seq);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ structure */

/* The list attribute `name` of msg as a fast sequence (a new reference), else NULL. */
static PyObject *
list_attr(PyObject *msg, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(msg, name);
    if (value == NULL)
        return NULL;
    if (!PyList_Check(value) && !PyTuple_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%U must be a list, not %.100s", name, Py_TYPE(value)->tp_name);
        Py_DECREF(value);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(value, "a list");
    Py_DECREF(value);
    return seq;
}

/* prefix + each of the first `limit` str items of the list attribute `name` of msg,
 * lower-cased when `lower`. */
static int
prefixed_items(PyObject *msg, PyObject *name, PyObject *prefix, Py_ssize_t limit, int lower,
               PyObject *out)
{
    PyObject *seq = list_attr(msg, name);
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && i < limit && !failed; i++) {
        Text t;
        failed = text_of(PySequence_Fast_GET_ITEM(seq, i), &t) < 0
                 || add(out, prefixed(prefix, &t, 0, t.len, lower)) < 0;
    }
    Py_DECREF(seq);
    return failed ? -1 : 0;
}

/* prefix + t[start:end].lower()[:limit] */
static PyObject *
prefixed_lower_cut(PyObject *prefix, const Text *t, Py_ssize_t start, Py_ssize_t end, Py_ssize_t limit)
{
    if (range_is_ascii(t, start, end))  /* lower-casing ASCII keeps the length: cut first */
        return prefixed(prefix, t, start, end - start > limit ? start + limit : end, 1);
    PyObject *low = python_lower(t, start, end);
    if (low != NULL && PyUnicode_GET_LENGTH(low) > limit)
        Py_SETREF(low, PyUnicode_Substring(low, 0, limit));
    if (low == NULL)
        return NULL;
    PyObject *r = PyUnicode_Concat(prefix, low);
    Py_DECREF(low);
    return r;
}

/* att:type: and att:ext: (the file name's text after its last '.', lower-cased, EXT_LEN
 * at most) of one attachment. */
static int
attachment_tokens(PyObject *att, PyObject *out)
{
    PyObject *ctype = PyObject_GetAttr(att, S.content_type);
    if (ctype == NULL)
        return -1;
    Text c;
    int failed = text_of(ctype, &c) < 0 || add(out, prefixed(S.att_type, &c, 0, c.len, 0)) < 0;
    Py_DECREF(ctype);
    PyObject *filename = failed ? NULL : PyObject_GetAttr(att, S.filename);
    if (filename == NULL)
        return -1;
    Text f;
    if (text_of(filename, &f) < 0)
        failed = 1;
    else {
        Py_ssize_t dot = f.len - 1;
        while (dot >= 0 && AT(&f, dot) != '.')
            dot--;
        if (dot >= 0)
            failed = add(out, prefixed_lower_cut(S.att_ext, &f, dot + 1, f.len, EXT_LEN)) < 0;
    }
    Py_DECREF(filename);
    return failed ? -1 : 0;
}

/* att: tokens of the first MAX_PARTS attachments. */
static int
attachments_of(PyObject *msg, PyObject *out)
{
    PyObject *seq = list_attr(msg, S.attachments);
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && i < MAX_PARTS && !failed; i++)
        failed = attachment_tokens(PySequence_Fast_GET_ITEM(seq, i), out) < 0;
    Py_DECREF(seq);
    return failed ? -1 : 0;
}

/* tag:NAME (the name's first TAG_LEN characters) for each HTML tag, tag:NAME:many when
 * seen more than TAG_MANY times; sets *any when there is a tag. */
static int
tags_of(PyObject *msg, PyObject *out, int *any)
{
    PyObject *tags = PyObject_GetAttr(msg, S.html_tags);
    if (tags == NULL)
        return -1;
    int failed = 0;
    if (!PyDict_Check(tags)) {
        PyErr_Format(PyExc_TypeError, "html_tags must be a dict, not %.100s", Py_TYPE(tags)->tp_name);
        failed = 1;
    }
    *any = !failed && PyDict_GET_SIZE(tags) > 0;
    Py_ssize_t pos = 0;
    PyObject *tag, *count;
    while (!failed && PyDict_Next(tags, &pos, &tag, &count)) {
        Text t;
        if (text_of(tag, &t) < 0) {
            failed = 1;
            break;
        }
        PyObject *name = PyUnicode_Substring(tag, 0, t.len < TAG_LEN ? t.len : TAG_LEN);
        Py_INCREF(count);  /* its comparison may run Python code that changes the dict */
        int many = name == NULL ? -1 : PyObject_RichCompareBool(count, S.tag_many, Py_GT);
        Py_DECREF(count);
        failed = many < 0 || add(out, PyUnicode_Concat(S.tag, name)) < 0
                 || (many && add(out, PyUnicode_FromFormat("tag:%U:many", name)) < 0);
        Py_XDECREF(name);
    }
    Py_DECREF(tags);
    return failed ? -1 : 0;
}

/* A str attribute of msg as a new reference, else NULL (TypeError). */
static PyObject *
str_attr(PyObject *msg, PyObject *name, Text *t)
{
    PyObject *value = PyObject_GetAttr(msg, name);
    if (value != NULL && text_of(value, t) < 0)
        Py_CLEAR(value);
    return value;
}

/* html:only: the message has HTML tags and its text is empty or whitespace. */
static int
html_only(PyObject *msg, PyObject *out)
{
    Text t;
    PyObject *text = str_attr(msg, S.text, &t);
    if (text == NULL)
        return -1;
    Py_ssize_t i = 0;
    while (i < t.len && Py_UNICODE_ISSPACE(AT(&t, i)))
        i++;
    Py_DECREF(text);
    return i < t.len ? 0 : PySet_Add(out, S.html_only);
}

/* size:N (N the bit length of msg.size, MAX_SIZE_BITS at most) and urls:N (N the URL count,
 * 20 at most, over 4). */
static int
size_tokens(PyObject *msg, PyObject *out)
{
    PyObject *size = PyObject_GetAttr(msg, S.size);
    if (size == NULL)
        return -1;
    if (!PyLong_Check(size)) {
        PyErr_Format(PyExc_TypeError, "size must be an int, not %.100s", Py_TYPE(size)->tp_name);
        Py_DECREF(size);
        return -1;
    }
    size_t bits = _PyLong_NumBits(size);  /* (size_t)-1: too many to count, more than 24 */
    Py_DECREF(size);
    if (bits == (size_t)-1 && PyErr_Occurred())
        PyErr_Clear();
    if (bits > MAX_SIZE_BITS)
        bits = MAX_SIZE_BITS;
    if (PySet_Add(out, S.size_n[bits]) < 0)
        return -1;
    PyObject *urls = PyObject_GetAttr(msg, S.urls);
    Py_ssize_t n = urls == NULL ? -1 : PyObject_Size(urls);
    Py_XDECREF(urls);
    if (n < 0)
        return -1;
    return PySet_Add(out, S.urls_n[(n < 20 ? n : 20) / 4]);
}

/* tokens._structure: MIME parts, charsets, transfer encodings, attachments, defects, HTML
 * tags and features, size and URL count. */
static int
structure_of(PyObject *msg, PyObject *out)
{
    int any_tag = 0;
    if (prefixed_items(msg, S.content_types, S.part, MAX_PARTS, 0, out) < 0
        || prefixed_items(msg, S.charsets, S.charset, PY_SSIZE_T_MAX, 1, out) < 0
        || prefixed_items(msg, S.encodings, S.cte, PY_SSIZE_T_MAX, 0, out) < 0
        || attachments_of(msg, out) < 0
        || prefixed_items(msg, S.defects, S.defect, PY_SSIZE_T_MAX, 0, out) < 0
        || tags_of(msg, out, &any_tag) < 0
        || prefixed_items(msg, S.html_features, S.html, PY_SSIZE_T_MAX, 0, out) < 0
        || (any_tag && html_only(msg, out) < 0))
        return -1;
    return size_tokens(msg, out);
}

/* ------------------------------------------------------------------ 8bit% */

/* The characters of t[0:limit] that are not ASCII. */
static Py_ssize_t
count_non_ascii(const Text *t, Py_ssize_t limit)
{
    Py_ssize_t n = t->len < limit ? t->len : limit, count = 0;
    if (t->ascii)
        return 0;
    if (t->kind == PyUnicode_1BYTE_KIND) {  /* the common case, in a loop the compiler can widen */
        const Py_UCS1 *d = t->data;
        for (Py_ssize_t i = 0; i < n; i++)
            count += d[i] >> 7;
        return count;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        count += AT(t, i) >= 128;
    return count;
}

/* tokens._eight_bit: 8bit:N, N the tenth of the percentage of non-ASCII characters in
 * (msg.text + msg.html_text)[:EIGHT_BIT_HEAD], when that is not empty. */
static int
eight_bit_of(PyObject *msg, PyObject *out)
{
    Text t, h;
    PyObject *text = str_attr(msg, S.text, &t);
    PyObject *html = text ? str_attr(msg, S.html_text, &h) : NULL;
    int failed = html == NULL;
    if (!failed) {
        Py_ssize_t head = t.len + h.len < EIGHT_BIT_HEAD ? t.len + h.len : EIGHT_BIT_HEAD;
        if (head > 0) {
            Py_ssize_t n = count_non_ascii(&t, head);
            if (t.len < head)
                n += count_non_ascii(&h, head - t.len);
            failed = PySet_Add(out, S.eight_bit_n[n * 100 / head / 10]) < 0;  /* n <= head */
        }
    }
    Py_XDECREF(text);
    Py_XDECREF(html);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ module functions */

static int
check_args(const char *name, Py_ssize_t nargs, Py_ssize_t expected, PyObject *const *args)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
        return -1;
    }
    if (!PySet_Check(args[nargs - 1])) {
        PyErr_Format(PyExc_TypeError, "%s(): out must be a set", name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(word_tokens_doc,
"word_tokens(text, prefix, out)\n--\n\n"
"The words of text[:MAX_TEXT] as tokens (tokens._word_tokens_py).");

static PyObject *
word_tokens(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("word_tokens", nargs, 3, args) < 0 || check_str_pair(args[0], args[1]) < 0
        || words_of(args[0], args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(header_words_doc,
"header_words(value, prefix, limit, out)\n--\n\n"
"prefix + each of the first limit _HEADER_WORD matches of value.lower() "
"(tokens._header_words_py).");

static PyObject *
header_words(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("header_words", nargs, 4, args) < 0 || check_str_pair(args[0], args[1]) < 0)
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if ((limit == -1 && PyErr_Occurred()) || header_words_of(args[0], args[1], limit, args[3]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(address_header_doc,
"address_header(name, value, out)\n--\n\n"
"The tokens of an address header (tokens._address_header_py).");

static PyObject *
address_header(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("address_header", nargs, 3, args) < 0 || check_str_pair(args[0], args[1]) < 0
        || address_header_of(args[0], args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(received_doc,
"received(value, out)\n--\n\n"
"The tokens of a Received header (tokens._received_py).");

static PyObject *
received(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("received", nargs, 2, args) < 0 || received_of(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(domain_tokens_doc,
"domain_tokens(host, prefix, out)\n--\n\n"
"The host and its parent domains as tokens (tokens._domain_tokens_py).");

static PyObject *
py_domain_tokens(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("domain_tokens", nargs, 3, args) < 0 || check_str_pair(args[0], args[1]) < 0
        || domain_tokens(args[0], args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(headers_doc,
"headers(msg, out)\n--\n\n"
"The tokens of the headers of a ParsedMessage (tokens._headers_py).");

static PyObject *
headers(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("headers", nargs, 2, args) < 0 || headers_of(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(url_tokens_doc,
"url_tokens(urls, out)\n--\n\n"
"The tokens of the first 100 URLs of a list (tokens._url_tokens_py).");

static PyObject *
url_tokens(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("url_tokens", nargs, 2, args) < 0 || urls_of(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(structure_doc,
"structure(msg, out)\n--\n\n"
"The MIME, attachment, HTML, size and URL count tokens of a ParsedMessage "
"(tokens._structure_py).");

static PyObject *
structure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("structure", nargs, 2, args) < 0 || structure_of(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(eight_bit_doc,
"eight_bit(msg, out)\n--\n\n"
"The share of non-ASCII characters in the body's head as a token (tokens._eight_bit_py).");

static PyObject *
eight_bit(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("eight_bit", nargs, 2, args) < 0 || eight_bit_of(args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ joined */

PyDoc_STRVAR(joined_doc,
"joined(tokens) -> bytes | None\n\n"
"'\\0' + '\\0'.join(tokens), UTF-8 encoded, in the tokens' iteration order; None when a token\n"
"holds a NUL or there is none (messagelog._joined_py).");

static PyObject *
joined(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "joined() takes one argument");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "joined() takes an iterable of str");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), total = n;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = NULL;
    if (n == 0) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {  /* a NUL anywhere first: JSON then, whatever else */
        if (!PyUnicode_Check(items[i])) {
            PyErr_SetString(PyExc_TypeError, "joined() takes str tokens");
            goto done;
        }
        Py_ssize_t found = PyUnicode_FindChar(items[i], 0, 0, PyUnicode_GET_LENGTH(items[i]), 1);
        if (found == -2)
            goto done;
        if (found >= 0) {
            out = Py_NewRef(Py_None);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        if (PyUnicode_AsUTF8AndSize(items[i], &len) == NULL)
            goto done;  /* a lone surrogate: UnicodeEncodeError, as str.encode() raises */
        total += len;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    char *d = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(items[i], &len);
        *d++ = '\0';
        memcpy(d, utf8, (size_t)len);
        d += len;
    }
done:
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"word_tokens", (PyCFunction)(void (*)(void))word_tokens, METH_FASTCALL, word_tokens_doc},
    {"header_words", (PyCFunction)(void (*)(void))header_words, METH_FASTCALL, header_words_doc},
    {"address_header", (PyCFunction)(void (*)(void))address_header, METH_FASTCALL, address_header_doc},
    {"received", (PyCFunction)(void (*)(void))received, METH_FASTCALL, received_doc},
    {"domain_tokens", (PyCFunction)(void (*)(void))py_domain_tokens, METH_FASTCALL, domain_tokens_doc},
    {"headers", (PyCFunction)(void (*)(void))headers, METH_FASTCALL, headers_doc},
    {"url_tokens", (PyCFunction)(void (*)(void))url_tokens, METH_FASTCALL, url_tokens_doc},
    {"structure", (PyCFunction)(void (*)(void))structure, METH_FASTCALL, structure_doc},
    {"eight_bit", (PyCFunction)(void (*)(void))eight_bit, METH_FASTCALL, eight_bit_doc},
    {"joined", (PyCFunction)(void (*)(void))joined, METH_FASTCALL, joined_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    if (make_constants() < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "MAX_TEXT", MAX_TEXT) < 0
        || PyModule_AddIntConstant(module, "MIN_WORD", MIN_WORD) < 0
        || PyModule_AddIntConstant(module, "MAX_WORD", MAX_WORD) < 0
        || PyModule_AddIntConstant(module, "MAX_RECEIVED", MAX_RECEIVED) < 0
        || PyModule_AddIntConstant(module, "MAX_URLS", MAX_URLS) < 0
        || PyModule_AddIntConstant(module, "EIGHT_BIT_HEAD", EIGHT_BIT_HEAD) < 0
        || PyModule_AddObjectRef(module, "SKIP_HEADERS", K.skip_headers) < 0
        || PyModule_AddObjectRef(module, "ADDRESS_HEADERS", K.address_headers) < 0
        || PyModule_AddObjectRef(module, "LISTED_HEADERS", K.listed_headers) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stronghold._wordcore",
    .m_doc = "The per-word and per-header tokenizing of stronghold.tokens, in C.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__wordcore(void)
{
    return PyModuleDef_Init(&module_def);
}
