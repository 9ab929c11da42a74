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
 * Both are linear in their input and allocate only their results.
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

static PyMethodDef methods[] = {
    {"find_urls", find_urls, METH_O, "URLs in text, as message._URL_TEXT_RE.findall(text)."},
    {"header_fields", header_fields, METH_O,
     "(fields, end of block) of a plain header block as message._single_part reads it, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stronghold._mimecore",
    "Native scans of stronghold.message: URLs in text, the header block.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mimecore(void) {
    return PyModule_Create(&module);
}
