/*
 * stronghold._mimecore: two scans of stronghold/message.py done on the bytes and code points.
 *
 * find_urls(text) is _URL_TEXT_RE.findall(text) for the pattern
 *     (?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{1,400}
 * under Python's str (Unicode) rules: \b and \w as sre has them (Py_UNICODE_ISALNUM or '_'),
 * \s as Py_UNICODE_ISSPACE, and the ignore-case letters as sre matches them (h, t, p, w in
 * either case; s in either case or U+017F LONG S, which sre folds onto s).
 *
 * header_fields(raw) is the header reading of message._single_part: the header block as
 * message._HEAD matches it (each line a "From " line, a "name:" field or a continuation, up
 * to and with the empty line), then, line by line, what email.policy.compat32's
 * header_source_parse makes of each field, as (name, value) strs decoded ASCII with
 * surrogateescape.  None when _single_part gives up (no such block, a "From " line, an
 * empty name, a continuation first); else (fields, end of the block).
 *
 * read_head(raw, start, end) and split_multipart(raw, start, end, sep) read a MIME tree as
 * email.feedparser.FeedParser does, a part at a time (message._read_part builds the Message
 * objects from them and asks the stdlib's own methods for content types and boundaries):
 * the header block of a part, and how a multipart's body is cut at its boundary lines.
 * Each gives None where the feed parser would record a defect these do not reproduce, and
 * the caller then runs the stdlib parser.
 *
 * plain_fields(items, limit) reads header values as message.decode_header_value reads the
 * plain ones: an ASCII value whose first `limit` characters hold no "=?" becomes those
 * characters with whitespace runs (str.split()'s ASCII whitespace) made one space and the
 * ends trimmed; each (name, value) pair so read is returned (the same tuple when nothing
 * changes), any other item as None (message.py reads those).
 *
 * All are linear in their input and allocate only their results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define URL_MAX_TAIL 400

/* sre's word character for str patterns */
static inline int is_word(Py_UCS4 ch) {
    return ch == '_' || Py_UNICODE_ISALNUM(ch);
}

/* a character the URL's tail may hold: not \s, not one of <>"'()[]{} */
static inline int is_url_char(Py_UCS4 ch) {
    switch (ch) {
    case '<': case '>': case '"': case '\'': case '(': case ')':
    case '[': case ']': case '{': case '}':
        return 0;
    default:
        return !Py_UNICODE_ISSPACE(ch);
    }
}

/* ignore-case letters of the pattern, as sre matches them */
static inline int is_ci(Py_UCS4 ch, char lower) {
    if (lower == 's' && ch == 0x017F) /* LATIN SMALL LETTER LONG S */
        return 1;
    return ch == (Py_UCS4)lower || ch == (Py_UCS4)(lower - 'a' + 'A');
}

/* Length of the scheme or "www." matched at pos (0 if none): "https://", "http://", "www." */
static Py_ssize_t url_head(int kind, const void *data, Py_ssize_t pos, Py_ssize_t n) {
    Py_UCS4 first = PyUnicode_READ(kind, data, pos);
    if (is_ci(first, 'h')) {
        if (pos + 7 > n || !is_ci(PyUnicode_READ(kind, data, pos + 1), 't')
            || !is_ci(PyUnicode_READ(kind, data, pos + 2), 't')
            || !is_ci(PyUnicode_READ(kind, data, pos + 3), 'p'))
            return 0;
        Py_ssize_t at = pos + 4;
        if (is_ci(PyUnicode_READ(kind, data, at), 's'))
            at++;  /* "s?" greedy; without it the next character would have to be ':' */
        if (at + 3 > n || PyUnicode_READ(kind, data, at) != ':'
            || PyUnicode_READ(kind, data, at + 1) != '/' || PyUnicode_READ(kind, data, at + 2) != '/')
            return 0;
        return at + 3 - pos;
    }
    if (is_ci(first, 'w')) {
        if (pos + 4 > n || !is_ci(PyUnicode_READ(kind, data, pos + 1), 'w')
            || !is_ci(PyUnicode_READ(kind, data, pos + 2), 'w')
            || PyUnicode_READ(kind, data, pos + 3) != '.')
            return 0;
        return 4;
    }
    return 0;
}

static PyObject *find_urls(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "find_urls() takes a str");
        return NULL;
    }
    if (PyUnicode_READY(arg) < 0)
        return NULL;
    int kind = PyUnicode_KIND(arg);
    const void *data = PyUnicode_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    while (pos < n) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, pos);
        /* a match starts at a word character (h or w) with no word character before it */
        if (!(is_ci(ch, 'h') || is_ci(ch, 'w')) || (pos > 0 && is_word(PyUnicode_READ(kind, data, pos - 1)))) {
            pos++;
            continue;
        }
        Py_ssize_t head = url_head(kind, data, pos, n);
        Py_ssize_t end = pos + head, limit;
        if (head == 0 || end >= n) {
            pos++;
            continue;
        }
        limit = end + URL_MAX_TAIL < n ? end + URL_MAX_TAIL : n;
        Py_ssize_t tail = end;
        while (tail < limit && is_url_char(PyUnicode_READ(kind, data, tail)))
            tail++;
        if (tail == end) {  /* {1,400}: at least one character */
            pos++;
            continue;
        }
        PyObject *url = PyUnicode_Substring(arg, pos, tail);  /* the match: head and tail */
        if (url == NULL || PyList_Append(out, url) < 0) {
            Py_XDECREF(url);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(url);
        pos = tail;  /* findall: the next match starts after this one */
    }
    return out;
}

/* ---- header_fields ---------------------------------------------------------------------- */

/* Length of the line end at pos (\r\n, \r or \n), 0 if none */
static inline Py_ssize_t line_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
    if (pos >= n)
        return 0;
    if (s[pos] == '\r')
        return (pos + 1 < n && s[pos + 1] == '\n') ? 2 : 1;
    return s[pos] == '\n' ? 1 : 0;
}

/* Whether the line at pos opens as one of message._HEAD's line kinds */
static int head_line_opens(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
    if (n - pos >= 5 && memcmp(s + pos, "From ", 5) == 0)
        return 1;
    Py_ssize_t i = pos;
    while (i < n && s[i] >= 0x21 && s[i] <= 0x7E && s[i] != ':')  /* [\041-\071\073-\176]*+ */
        i++;
    if (i < n && s[i] == ':')
        return 1;
    return s[pos] == ' ' || s[pos] == '\t';
}

/* One field: name = the first line up to ':', value = the rest of the block from after it,
 * spaces and tabs after the colon dropped, trailing \r and \n dropped (header_source_parse). */
static PyObject *field_pair(const unsigned char *s, Py_ssize_t start, Py_ssize_t colon, Py_ssize_t end) {
    Py_ssize_t v = colon + 1;
    while (v < end && (s[v] == ' ' || s[v] == '\t'))
        v++;
    while (end > v && (s[end - 1] == '\r' || s[end - 1] == '\n'))
        end--;
    PyObject *name = PyUnicode_DecodeASCII((const char *)s + start, colon - start, "surrogateescape");
    if (name == NULL)
        return NULL;
    PyObject *value = PyUnicode_DecodeASCII((const char *)s + v, end - v, "surrogateescape");
    if (value == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(name);
    Py_DECREF(value);
    return pair;
}

static PyObject *header_fields(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *s = view.buf;
    Py_ssize_t n = view.len, pos = 0, head_end = -1;
    /* the block: lines that open as _HEAD's kinds, each with its line end, then an empty line */
    while (pos < n) {
        Py_ssize_t blank = line_end(s, pos, n);
        if (blank) {
            head_end = pos + blank;
            break;
        }
        if (!head_line_opens(s, pos, n))
            break;
        const unsigned char *nl = NULL;
        for (Py_ssize_t i = pos; i < n; i++)
            if (s[i] == '\r' || s[i] == '\n') {
                nl = s + i;
                break;
            }
        if (nl == NULL)
            break;
        pos = (nl - s) + line_end(s, nl - s, n);
    }
    if (head_end < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    PyObject *fields = PyList_New(0);
    if (fields == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t field_start = -1, colon = -1;
    pos = 0;
    for (;;) {
        Py_ssize_t blank = line_end(s, pos, n);
        Py_ssize_t lend = pos;
        if (!blank) {
            while (s[lend] != '\r' && s[lend] != '\n')
                lend++;
        }
        int last = blank != 0;  /* the empty line ends the block */
        int continuation = !last && (s[pos] == ' ' || s[pos] == '\t');
        if (!continuation && field_start >= 0) {  /* the field before is complete */
            PyObject *pair = field_pair(s, field_start, colon, pos);
            if (pair == NULL || PyList_Append(fields, pair) < 0) {
                Py_XDECREF(pair);
                goto fail;
            }
            Py_DECREF(pair);
            field_start = -1;
        }
        if (last)
            break;
        if (continuation) {
            if (field_start < 0)
                goto give_up;
        } else {
            if (lend - pos >= 5 && memcmp(s + pos, "From ", 5) == 0)
                goto give_up;
            const unsigned char *c = memchr(s + pos, ':', lend - pos);
            if (c == NULL || c == s + pos)
                goto give_up;
            field_start = pos;
            colon = c - s;
        }
        pos = lend + line_end(s, lend, n);
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", fields, head_end);
give_up:
    Py_DECREF(fields);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    Py_DECREF(fields);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- read_head and split_multipart: a MIME tree as email.feedparser reads it ------------- */

/* The lines of raw[pos:end] as the stdlib splits them (ended by \r\n, \r or \n, the last one
 * maybe by end).  The next \r and the next \n are found by memchr and remembered until the
 * scan passes them, so a scan is one pass over the bytes whatever the line ends are. */
typedef struct {
    const unsigned char *s;
    Py_ssize_t end;
    Py_ssize_t cr, lf;  /* the next \r and \n at or after the last line asked for (end if none) */
} Lines;

static Py_ssize_t find_byte(const unsigned char *s, Py_ssize_t pos, Py_ssize_t end, int c) {
    const void *p = memchr(s + pos, c, (size_t)(end - pos));
    return p ? (Py_ssize_t)((const unsigned char *)p - s) : end;
}

/* End of the text of the line at pos (where its line end starts, or end) */
static Py_ssize_t text_end(Lines *ln, Py_ssize_t pos) {
    if (ln->cr < pos)
        ln->cr = find_byte(ln->s, pos, ln->end, '\r');
    if (ln->lf < pos)
        ln->lf = find_byte(ln->s, pos, ln->end, '\n');
    return ln->cr < ln->lf ? ln->cr : ln->lf;
}

/* Start of the line after the one whose text ends at tend */
static inline Py_ssize_t after_line(Lines *ln, Py_ssize_t tend) {
    return tend + line_end(ln->s, tend, ln->end);
}

/* raw[start:end] as a str, decoded ASCII with surrogateescape as the stdlib parser reads bytes */
static PyObject *decode_span(const unsigned char *s, Py_ssize_t start, Py_ssize_t end) {
    return PyUnicode_DecodeASCII((const char *)s + start, end - start, "surrogateescape");
}

/* The buffer and the span [*start, *end) of the arguments, checked */
static int span_args(PyObject *args, const char *format, Py_buffer *view, Py_ssize_t *start,
                     Py_ssize_t *end, Py_buffer *sep) {
    int ok = sep ? PyArg_ParseTuple(args, format, view, start, end, sep)
                 : PyArg_ParseTuple(args, format, view, start, end);
    if (!ok)
        return -1;
    if (*start < 0 || *start > *end || *end > view->len) {
        PyErr_SetString(PyExc_ValueError, "span out of the buffer");
        PyBuffer_Release(view);
        if (sep)
            PyBuffer_Release(sep);
        return -1;
    }
    return 0;
}

/* Append the field whose lines are s[start:end] (its name ends at colon) to fields */
static int add_field(PyObject *fields, const unsigned char *s, Py_ssize_t start, Py_ssize_t colon,
                     Py_ssize_t end) {
    PyObject *pair = field_pair(s, start, colon, end);
    if (pair == NULL)
        return -1;
    int rc = PyList_Append(fields, pair);
    Py_DECREF(pair);
    return rc;
}

/*
 * read_head(raw, start, end): the header block of the part raw[start:end] as the feed parser
 * reads it (FeedParser._parsegen's header loop and _parse_headers): lines while they are
 * header lines, up to and with an empty line, or to the end of the part, or to a line that
 * is neither (the body starts there: MissingHeaderBodySeparatorDefect).  A "From " first
 * line is the unixfrom (its text), each field is header_source_parse of its lines.  None
 * where the feed parser records another defect or pushes a line back (a continuation first
 * or after the "From " line, a "From " line further down, an empty name); else (unixfrom or
 * None, fields, start of the body, whether the block ended without that defect).
 */
static PyObject *read_head(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start, end;
    if (span_args(args, "y*nn:read_head", &view, &start, &end, NULL) < 0)
        return NULL;
    const unsigned char *s = view.buf;
    Lines ln = {s, end, -1, -1};
    PyObject *fields = PyList_New(0), *unixfrom = NULL, *result = NULL;
    if (fields == NULL)
        goto done;
    Py_ssize_t pos = start, field_start = -1, colon = -1, body = end;
    int separated = 1;
    while (pos < end) {
        Py_ssize_t blank = line_end(s, pos, end);
        if (blank) {  /* the empty line ends the block and is not part of the body */
            body = pos + blank;
            break;
        }
        Py_ssize_t tend = text_end(&ln, pos);
        if (s[pos] == ' ' || s[pos] == '\t') {  /* a continuation of the open field */
            if (field_start < 0)
                goto give_up;
            pos = after_line(&ln, tend);
            continue;
        }
        if (field_start >= 0) {  /* the field before is complete */
            if (add_field(fields, s, field_start, colon, pos) < 0)
                goto done;
            field_start = -1;
        }
        if (tend - pos >= 5 && memcmp(s + pos, "From ", 5) == 0) {
            if (pos != start)
                goto give_up;
            unixfrom = decode_span(s, pos, tend);
            if (unixfrom == NULL)
                goto done;
        } else {
            Py_ssize_t i = pos;  /* headerRE's field name: [\041-\071\073-\176]*: */
            while (i < tend && s[i] >= 0x21 && s[i] <= 0x7E && s[i] != ':')
                i++;
            if (i == tend || s[i] != ':') {  /* not a header line: the body starts here */
                body = pos;
                separated = 0;
                break;
            }
            if (i == pos)
                goto give_up;
            field_start = pos;
            colon = i;
        }
        pos = after_line(&ln, tend);
    }
    if (field_start >= 0 && add_field(fields, s, field_start, colon, pos) < 0)
        goto done;
    result = Py_BuildValue("(OOnO)", unixfrom ? unixfrom : Py_None, fields, body,
                           separated ? Py_True : Py_False);
    goto done;
give_up:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(fields);
    Py_XDECREF(unixfrom);
    PyBuffer_Release(&view);
    return result;
}

/* How the line s[pos:tend] matches the feed parser's boundaryre for sep ("--" + boundary):
 * sep, an optional "--", spaces and tabs.  0: no match, 1: a separator, 2: the close. */
static int boundary_kind(const unsigned char *s, Py_ssize_t pos, Py_ssize_t tend, const Py_buffer *sep) {
    if (tend - pos < sep->len || memcmp(s + pos, sep->buf, (size_t)sep->len) != 0)
        return 0;
    Py_ssize_t i = pos + sep->len;
    int kind = 1;
    if (tend - i >= 2 && s[i] == '-' && s[i + 1] == '-') {
        kind = 2;
        i += 2;
    }
    while (i < tend && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i == tend ? kind : 0;
}

/* Kind of the line at pos (see boundary_kind); *next gets the start of the line after it */
static int line_kind(Lines *ln, Py_ssize_t pos, const Py_buffer *sep, Py_ssize_t *next) {
    Py_ssize_t tend = text_end(ln, pos);
    *next = after_line(ln, tend);
    return boundary_kind(ln->s, pos, tend, sep);
}

/* Append the span (start, end) to spans */
static int add_span(PyObject *spans, Py_ssize_t start, Py_ssize_t end) {
    PyObject *span = Py_BuildValue("(nn)", start, end);
    if (span == NULL)
        return -1;
    int rc = PyList_Append(spans, span);
    Py_DECREF(span);
    return rc;
}

/*
 * split_multipart(raw, start, end, sep): the body raw[start:end] of a multipart as the feed
 * parser's multipart loop cuts it, for a span that holds no line of an enclosing boundary.
 * Parts run from after a separator line (and the boundary lines right after it, which the
 * parser skips) to the next boundary line; the line end before that line is left in the
 * span (the caller takes it off the last message the part made).  None where the parser
 * finds no start boundary (a close line or the end first); else (end of the preamble, or -1
 * when there is no preamble line, [(start, end) of each part], start of the epilogue, or -1
 * when no close line came: CloseBoundaryNotFoundDefect).
 */
static PyObject *split_multipart(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view, sep;
    Py_ssize_t start, end;
    if (span_args(args, "y*nny*:split_multipart", &view, &start, &end, &sep) < 0)
        return NULL;
    const unsigned char *s = view.buf;
    Lines ln = {s, end, -1, -1};
    PyObject *spans = NULL, *result = NULL;
    Py_ssize_t pos = start, next = start;
    int kind = 0;
    while (pos < end && (kind = line_kind(&ln, pos, &sep, &next)) == 0)  /* the preamble */
        pos = next;
    if (kind != 1) {  /* a close line first, or no boundary: StartBoundaryNotFoundDefect */
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t preamble_end = -1;
    if (pos > start)  /* the line end before the boundary belongs to it */
        preamble_end = pos - ((pos - start >= 2 && s[pos - 2] == '\r' && s[pos - 1] == '\n') ? 2 : 1);
    spans = PyList_New(0);
    if (spans == NULL)
        goto done;
    Py_ssize_t epilogue = -1;
    while (kind == 1) {
        pos = next;  /* past the separator and any boundary lines right after it */
        while (pos < end && line_kind(&ln, pos, &sep, &next) != 0)
            pos = next;
        Py_ssize_t part = pos;
        kind = 0;
        while (pos < end && (kind = line_kind(&ln, pos, &sep, &next)) == 0)
            pos = next;
        if (add_span(spans, part, pos) < 0)
            goto done;
        if (kind == 2)
            epilogue = next;
    }
    result = Py_BuildValue("(nOn)", preamble_end, spans, epilogue);
done:
    Py_XDECREF(spans);
    PyBuffer_Release(&view);
    PyBuffer_Release(&sep);
    return result;
}

/* ---- plain_fields ----------------------------------------------------------------------- */

/* ASCII whitespace as str.split() has it: \t \n \v \f \r, the separators \x1c-\x1f, space */
static inline int ascii_space(Py_UCS1 ch) {
    return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1C && ch <= 0x1F);
}

/* The collapsed text of an ASCII value's first `limit` characters when they hold no "=?"
 * (" ".join(value[:limit].split())), a new reference; NULL without an error when the value
 * needs message.py's own reading (not ASCII, or an encoded word may be in it). */
static PyObject *plain_text(PyObject *value, Py_ssize_t limit, int *failed) {
    if (PyUnicode_READY(value) < 0) {
        *failed = 1;
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(value))
        return NULL;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    if (n > limit)
        n = limit;
    int changed = n < PyUnicode_GET_LENGTH(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '=' && i + 1 < n && s[i + 1] == '?')
            return NULL;
        if (ascii_space(s[i]) && (s[i] != ' ' || i == 0 || i + 1 == n || ascii_space(s[i + 1])))
            changed = 1;  /* a run to collapse, a space at an end, or another whitespace character */
    }
    if (!changed)
        return Py_NewRef(value);
    PyObject *out = PyUnicode_New(n, 127);
    if (out == NULL) {
        *failed = 1;
        return NULL;
    }
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(out);
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < n;) {
        while (i < n && ascii_space(s[i]))
            i++;
        if (i == n)
            break;
        if (len)
            d[len++] = ' ';
        while (i < n && !ascii_space(s[i]))
            d[len++] = s[i++];
    }
    if (len == n)
        return out;
    PyObject *shorter = PyUnicode_Substring(out, 0, len);
    Py_DECREF(out);
    if (shorter == NULL)
        *failed = 1;
    return shorter;
}

static PyObject *plain_fields(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *items;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!n:plain_fields", &PyList_Type, &items, &limit))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *pair = NULL;
        int failed = 0;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2
            && PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 1))) {
            PyObject *value = PyTuple_GET_ITEM(item, 1);
            PyObject *text = plain_text(value, limit, &failed);
            if (failed) {
                Py_DECREF(out);
                return NULL;
            }
            if (text == value) {
                Py_DECREF(text);
                pair = Py_NewRef(item);
            } else if (text != NULL) {
                pair = PyTuple_Pack(2, PyTuple_GET_ITEM(item, 0), text);
                Py_DECREF(text);
                if (pair == NULL) {
                    Py_DECREF(out);
                    return NULL;
                }
            }
        }
        PyList_SET_ITEM(out, i, pair != NULL ? pair : Py_NewRef(Py_None));
    }
    return out;
}

static PyMethodDef methods[] = {
    {"find_urls", find_urls, METH_O, "URLs in text, as message._URL_TEXT_RE.findall(text)."},
    {"header_fields", header_fields, METH_O,
     "(fields, end of block) of a plain header block as message._single_part reads it, or None."},
    {"read_head", read_head, METH_VARARGS,
     "(unixfrom, fields, body start, separated) of the part raw[start:end] as the feed parser reads it, or None."},
    {"plain_fields", plain_fields, METH_VARARGS,
     "Each (name, value) with its value read as message.parse reads a plain one, or None where it is not plain."},
    {"split_multipart", split_multipart, METH_VARARGS,
     "(preamble end, part spans, epilogue start) of a multipart body raw[start:end], or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stronghold._mimecore",
    "Native scans of stronghold.message: URLs in text, header blocks, multipart bodies.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mimecore(void) {
    return PyModule_Create(&module);
}
