/* htmlcore.c: the C version of stronghold.htmltext.html_to_text.
 *
 * It mirrors htmltext._html_to_text_py, the reference, and gives the same 4-tuple (visible
 * text, tag counts in the same insertion order, urls, features) for every str:
 *
 *   - _MARKUP  <(?:!--|(/?)([a-zA-Z][^\t\n\r\f />\x00<]*+)([^<>]*+)>|[!?][^<>]*+>)
 *     is read by match_at() at each '<' (possessive: no backtracking, a failed try
 *     costs at most the text up to the next '<');
 *   - _ATTR    ([^\s/>=]{1,64}+)\s*+=\s*+("[^"]*+"|'[^']*+'|[^\s"'>]++)
 *     findall() is attr_features() (\s is Py_UNICODE_ISSPACE, as in str patterns);
 *   - the raw-text search on markup.lower() is raw_end().
 *
 * str.lower() maps a character to ASCII only for A-Z, U+0130 ('i' + U+0307, the one
 * character whose lowercase is longer) and U+212A KELVIN SIGN ('k').  So ASCII names,
 * keys and values are lowered here; anything else goes through Python's str.lower().
 * Where the Python code compares lowered text with ASCII patterns none of which holds
 * 'k' or an 'i' that is followed by U+0307 or ends the pattern, non-ASCII characters
 * can match nothing and are compared as such.
 *
 *   - htmltext.unescape (html.unescape, except that a number too long for int() is read
 *     as the out-of-range number it is), called where the Python code calls it and would
 *     change something ('&' present), is done here with the html module's own tables.
 *
 * Work is linear in the input whatever it holds; the only state is module state holding
 * the html module's tables and interned constants.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* ---- module state ---------------------------------------------------------------- */

typedef struct {
    PyObject *html5;                          /* html._html5: entity name -> text */
    PyObject *invalid_charrefs;               /* html._invalid_charrefs: number -> text */
    PyObject *invalid_codepoints;             /* html._invalid_codepoints: numbers read as '' */
    struct Entity *entities;                  /* html5 as an open-addressing table (see below) */
    size_t entities_mask;
    PyObject *lower;                          /* "lower" (method name) */
    PyObject *comment_end;                    /* "-->" */
    PyObject *end_script, *end_style;         /* "</script", "</style" */
    PyObject *comment, *mailto, *img_remote, *img_local, *hidden_style, *tiny_font;
    PyObject *font_color, *font_size;         /* "font-color:", "font-size:" */
} State;

static State *
get_state(PyObject *module)
{
    return (State *)PyModule_GetState(module);
}

/* ---- names the Python code compares with ------------------------------------------ */

typedef struct {
    const char *text;
    size_t len;
} Name;
#define NAME(text) {text, sizeof(text) - 1}

enum { T_OTHER, T_SCRIPT, T_STYLE, T_HEAD, T_TITLE, T_IMG, T_FONT };
static const Name TAG_NAMES[] = {{NULL, 0}, NAME("script"), NAME("style"), NAME("head"), NAME("title"),
                                 NAME("img"), NAME("font"), {NULL, 0}};

enum { K_OTHER, K_HREF, K_SRC, K_ACTION, K_BACKGROUND, K_STYLE, K_COLOR, K_SIZE };
static const Name KEY_NAMES[] = {{NULL, 0}, NAME("href"), NAME("src"), NAME("action"), NAME("background"),
                                 NAME("style"), NAME("color"), NAME("size"), {NULL, 0}};

#define LONGEST_NAME 10  /* strlen("background"): longer names are none of the above */

#define IS_HIDDEN(code) ((code) >= T_SCRIPT && (code) <= T_TITLE)  /* _HIDDEN */
#define IS_RAW(code) ((code) == T_SCRIPT || (code) == T_STYLE)      /* _RAW_TEXT */
#define IS_URL_KEY(code) ((code) >= K_HREF && (code) <= K_BACKGROUND)  /* _URL_ATTRS */

static inline Py_UCS4
ascii_lower(Py_UCS4 c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* ---- reading a str ------------------------------------------------------------------ */

/* A range [start, end) of the characters of a str (obj, borrowed). */
typedef struct {
    PyObject *obj;
    int kind;
    const void *data;
    Py_ssize_t start, end;
} View;

static void
view_init(View *v, PyObject *obj, Py_ssize_t start, Py_ssize_t end)
{
    v->obj = obj;
    v->kind = PyUnicode_KIND(obj);
    v->data = PyUnicode_DATA(obj);
    v->start = start;
    v->end = end;
}

#define VCH(v, i) PyUnicode_READ((v)->kind, (v)->data, (i))

/* A loop over characters, compiled once per kind (the kind is a constant in each copy). */
#define BY_KIND(v, call)                                         \
    ((v)->kind == PyUnicode_1BYTE_KIND ? call(PyUnicode_1BYTE_KIND) \
     : (v)->kind == PyUnicode_2BYTE_KIND ? call(PyUnicode_2BYTE_KIND) : call(PyUnicode_4BYTE_KIND))

/* Index of the first ch in [from, end) of v's string, or -1. */
static Py_ssize_t
find_char(const View *v, Py_UCS4 ch, Py_ssize_t from, Py_ssize_t end)
{
    if (from >= end)
        return -1;
    if (v->kind == PyUnicode_1BYTE_KIND) {
        if (ch > 0xff)
            return -1;
        const Py_UCS1 *d = (const Py_UCS1 *)v->data;
        const Py_UCS1 *hit = memchr(d + from, (int)ch, (size_t)(end - from));
        return hit ? hit - d : -1;
    }
    Py_ssize_t at = PyUnicode_FindChar(v->obj, ch, from, end, 1);
    return at < 0 ? -1 : at;
}

/* 1 if all characters of [s, e) are ASCII. */
static int
all_ascii(const View *v, Py_ssize_t s, Py_ssize_t e)
{
    if (PyUnicode_IS_ASCII(v->obj))
        return 1;
    for (Py_ssize_t i = s; i < e; i++)
        if (VCH(v, i) >= 128)
            return 0;
    return 1;
}

/* The code (index in names) of the characters [s, e) ASCII-lowered, or 0 (none of them;
 * a non-ASCII character matches no name). */
static int
ascii_code(const View *v, Py_ssize_t s, Py_ssize_t e, const Name *names)
{
    Py_ssize_t len = e - s;
    if (len > LONGEST_NAME || len < 3)
        return 0;
    Py_UCS4 first = ascii_lower(VCH(v, s));
    for (int code = 1; names[code].text; code++) {
        const Name *name = &names[code];
        if (name->len != (size_t)len || (unsigned char)name->text[0] != first)
            continue;
        Py_ssize_t i = 1;
        while (i < len && ascii_lower(VCH(v, s + i)) == (unsigned char)name->text[i])
            i++;
        if (i == len)
            return code;
    }
    return 0;
}

/* The code of an already lowered str (0: none of names). */
static int
str_code(PyObject *s, const Name *names)
{
    if (!PyUnicode_IS_ASCII(s))
        return 0;  /* no non-ASCII str equals an ASCII name */
    View v;
    view_init(&v, s, 0, PyUnicode_GET_LENGTH(s));
    return ascii_code(&v, 0, v.end, names);
}

/* str.lower() of the characters [s, e): in C when they are ASCII, else by Python. */
static PyObject *
lowered(State *st, const View *v, Py_ssize_t s, Py_ssize_t e)
{
    if (all_ascii(v, s, e)) {
        PyObject *out = PyUnicode_New(e - s, 127);
        if (!out)
            return NULL;
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(out);
        for (Py_ssize_t i = s; i < e; i++)
            d[i - s] = (Py_UCS1)ascii_lower(VCH(v, i));
        return out;
    }
    PyObject *sub = PyUnicode_Substring(v->obj, s, e);
    if (!sub)
        return NULL;
    PyObject *out = PyObject_CallMethodNoArgs(sub, st->lower);
    Py_DECREF(sub);
    return out;
}

/* The code of (characters [s, e)).lower(); -1 on error.  str.lower() never shortens and
 * gives all-ASCII text only from ASCII and U+212A (one for one), so names of another
 * length than 3 to LONGEST_NAME are none; non-ASCII ones are lowered by Python. */
static int
lowered_code(State *st, const View *v, Py_ssize_t s, Py_ssize_t e, const Name *names)
{
    if (e - s > LONGEST_NAME || e - s < 3)
        return 0;
    if (all_ascii(v, s, e))
        return ascii_code(v, s, e, names);
    PyObject *low = lowered(st, v, s, e);  /* e.g. U+212A KELVIN SIGN lowers to 'k' */
    if (!low)
        return -1;
    int code = str_code(low, names);
    Py_DECREF(low);
    return code;
}

/* 1 if the view, ASCII-lowered, starts with lit (str.lower().startswith(lit), see top). */
static int
starts_with_lower(const View *v, const char *lit)
{
    size_t len = strlen(lit);
    if ((size_t)(v->end - v->start) < len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        Py_UCS4 c = VCH(v, v->start + (Py_ssize_t)i);
        if (c >= 128 || ascii_lower(c) != (Py_UCS4)(unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* 1 if lit occurs in the view (exact characters). */
static int
contains(const View *v, const char *lit)
{
    Py_ssize_t len = (Py_ssize_t)strlen(lit);
    for (Py_ssize_t at = find_char(v, (unsigned char)lit[0], v->start, v->end);
         at >= 0 && at + len <= v->end;
         at = find_char(v, (unsigned char)lit[0], at + 1, v->end)) {
        Py_ssize_t i = 1;
        while (i < len && VCH(v, at + i) == (Py_UCS4)(unsigned char)lit[i])
            i++;
        if (i == len)
            return 1;
    }
    return 0;
}

/* str.strip(): narrow the view past whitespace at both ends. */
static void
strip(View *v)
{
    while (v->start < v->end && Py_UNICODE_ISSPACE(VCH(v, v->start)))
        v->start++;
    while (v->end > v->start && Py_UNICODE_ISSPACE(VCH(v, v->end - 1)))
        v->end--;
}

/* 1 if needle (ASCII) occurs in hay[0:len). */
static int
bytes_contain(const unsigned char *hay, size_t len, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= len; i++)
        if (hay[i] == (unsigned char)needle[0] && memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

/* ---- html.unescape ---------------------------------------------------------------------
 *
 * _charref.sub(_replace_charref, s) of the html module, with its own tables (html5,
 * _invalid_charrefs, _invalid_codepoints):
 *     &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
 * a number becomes its character (or the table's text, U+FFFD, or nothing); a name its
 * text, else its longest known prefix's text and the rest, else stays.  A number too long
 * for 64 bits is U+FFFD (htmltext.unescape: html.unescape would raise past 4300 digits).
 */

#define ENTITY_LONGEST 32  /* the {1,32} of _charref */

/* Where the unescaped text goes: first counted (out NULL: its length and the widest
 * character), then written into a str made to that measure.  Every non-ASCII character
 * of the input stays (references are ASCII, names too), so the input's kind is a floor. */
typedef struct {
    PyObject *out;
    Py_ssize_t len;
    Py_UCS4 maxchar;
} Sink;

/* The characters [s, e) of v. */
static int
sink_chars(Sink *k, const View *v, Py_ssize_t s, Py_ssize_t e)
{
    if (e <= s)
        return 0;
    if (k->out && PyUnicode_CopyCharacters(k->out, k->len, v->obj, s, e - s) < 0)
        return -1;
    k->len += e - s;
    return 0;
}

static int
sink_str(Sink *k, PyObject *str)
{
    if (!k->out) {
        Py_UCS4 widest = PyUnicode_MAX_CHAR_VALUE(str);  /* a str holds a character of its kind */
        if (widest > k->maxchar)
            k->maxchar = widest;
    }
    View v;
    view_init(&v, str, 0, PyUnicode_GET_LENGTH(str));
    return sink_chars(k, &v, 0, v.end);
}

static int
sink_char(Sink *k, Py_UCS4 c)
{
    if (k->out) {
        if (k->len >= PyUnicode_GET_LENGTH(k->out) || c > PyUnicode_MAX_CHAR_VALUE(k->out)) {
            PyErr_SetString(PyExc_SystemError, "unescape: the second pass outgrew the first");
            return -1;
        }
        PyUnicode_WRITE(PyUnicode_KIND(k->out), PyUnicode_DATA(k->out), k->len, c);
    }
    else if (c > k->maxchar)
        k->maxchar = c;
    k->len++;
    return 0;
}

/* A character reference _charref matched. */
enum { REF_DECIMAL, REF_HEX, REF_NAME };
typedef struct {
    int what;
    Py_ssize_t start, end;      /* the match: '&' ... (';') */
    Py_ssize_t body, body_e;    /* the digits, or the name with its ';' if any */
} Ref;

static inline int
is_digit(Py_UCS4 c)
{
    return c >= '0' && c <= '9';
}

static inline int
hex_value(Py_UCS4 c)  /* -1: not [0-9a-fA-F] */
{
    if (is_digit(c))
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}

static inline int
name_char(Py_UCS4 c)  /* [^\t\n\f <&#;] */
{
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';');
}

/* Does _charref match at the '&' at i?  1 and *r, or 0. */
static int
parse_ref(const View *v, Py_ssize_t i, Ref *r)
{
    Py_ssize_t j = i + 1, n = v->end, k;
    if (j >= n)
        return 0;
    r->start = i;
    if (VCH(v, j) == '#') {
        if (j + 1 < n && is_digit(VCH(v, j + 1))) {
            r->what = REF_DECIMAL;
            r->body = j + 1;
        }
        else if (j + 2 < n && (VCH(v, j + 1) == 'x' || VCH(v, j + 1) == 'X') && hex_value(VCH(v, j + 2)) >= 0) {
            r->what = REF_HEX;
            r->body = j + 2;
        }
        else
            return 0;  /* '#' ends a name: nothing else matches */
        for (k = r->body; k < n && (r->what == REF_DECIMAL ? is_digit(VCH(v, k)) : hex_value(VCH(v, k)) >= 0);)
            k++;
        r->body_e = k;
        r->end = (k < n && VCH(v, k) == ';') ? k + 1 : k;
        return 1;
    }
    for (k = j; k < n && k - j < 32 && name_char(VCH(v, k));)
        k++;
    if (k == j)
        return 0;
    r->what = REF_NAME;
    r->body = j;
    r->end = r->body_e = (k < n && VCH(v, k) == ';') ? k + 1 : k;
    return 1;
}

/* html5 as a table: its names are ASCII and at most 32 long (checked when the module
 * loads), so a name is looked up from its characters without making a str.  The table
 * is fixed: what the input holds changes no probe sequence. */
struct Entity {
    PyObject *key;      /* a name of html5 (a reference held) */
    const char *name;   /* its characters */
    Py_ssize_t len;
    PyObject *text;     /* html5[key] (a reference held) */
};

static size_t
entity_hash(const unsigned char *name, Py_ssize_t len)
{
    size_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < len; i++)
        h = (h ^ name[i]) * 16777619u;
    return h;
}

/* html5[characters [s, e)] (borrowed), or NULL when it is not there. */
static PyObject *
entity(State *st, const View *v, Py_ssize_t s, Py_ssize_t e)
{
    unsigned char name[ENTITY_LONGEST];
    Py_ssize_t len = e - s;
    if (len > ENTITY_LONGEST)
        return NULL;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = VCH(v, s + i);
        if (c >= 128)
            return NULL;  /* no name is */
        name[i] = (unsigned char)c;
    }
    for (size_t slot = entity_hash(name, len) & st->entities_mask;; slot = (slot + 1) & st->entities_mask) {
        const struct Entity *known = &st->entities[slot];
        if (!known->name)
            return NULL;
        if (known->len == len && memcmp(known->name, name, (size_t)len) == 0)
            return known->text;
    }
}

/* Build the table of html5 (at least twice as many slots as names); -1 with ImportError
 * when a name is not what the table assumes. */
static int
entities_load(State *st)
{
    size_t slots = 64;
    while (slots < 2 * (size_t)PyDict_GET_SIZE(st->html5))
        slots *= 2;
    st->entities = PyMem_Calloc(slots, sizeof(struct Entity));
    if (!st->entities) {
        PyErr_NoMemory();
        return -1;
    }
    st->entities_mask = slots - 1;
    Py_ssize_t at = 0;
    PyObject *key, *text;
    while (PyDict_Next(st->html5, &at, &key, &text)) {
        if (!PyUnicode_Check(key) || !PyUnicode_IS_ASCII(key) || PyUnicode_GET_LENGTH(key) > ENTITY_LONGEST
            || PyUnicode_GET_LENGTH(key) == 0 || !PyUnicode_Check(text)) {
            PyErr_SetString(PyExc_ImportError, "html5 holds a name htmlcore cannot table");
            return -1;
        }
        const char *name = (const char *)PyUnicode_1BYTE_DATA(key);
        Py_ssize_t len = PyUnicode_GET_LENGTH(key);
        size_t slot = entity_hash((const unsigned char *)name, len) & st->entities_mask;
        while (st->entities[slot].name)
            slot = (slot + 1) & st->entities_mask;
        st->entities[slot] = (struct Entity){Py_NewRef(key), name, len, Py_NewRef(text)};
    }
    return 0;
}

/* Write what _replace_charref returns for a name. */
static int
put_name(State *st, Sink *out, const View *v, const Ref *r)
{
    PyObject *text = entity(st, v, r->body, r->body_e);
    if (text)
        return sink_str(out, text);
    for (Py_ssize_t x = r->body_e - r->body - 1; x > 1; x--)  /* the longest known prefix */
        if ((text = entity(st, v, r->body, r->body + x)))
            return sink_str(out, text) < 0 ? -1 : sink_chars(out, v, r->body + x, r->body_e);
    return sink_chars(out, v, r->start, r->end);
}

/* Write what _replace_charref returns for a number.  One too long for 64 bits (after its
 * leading zeros) is past U+10FFFF, so U+FFFD, as htmltext.unescape reads it (html.unescape
 * itself raises past 4300 decimal digits, where int() stops). */
static int
put_number(State *st, Sink *out, const View *v, const Ref *r)
{
    int hex = r->what == REF_HEX;
    Py_ssize_t first = r->body;
    while (first < r->body_e - 1 && VCH(v, first) == '0')
        first++;
    if (r->body_e - first > (hex ? 15 : 18))
        return sink_char(out, 0xFFFD);
    long long num = 0;
    for (Py_ssize_t k = first; k < r->body_e; k++)
        num = num * (hex ? 16 : 10) + hex_value(VCH(v, k));
    PyObject *key = PyLong_FromLongLong(num);
    if (!key)
        return -1;
    int rc;
    PyObject *text = PyDict_GetItemWithError(st->invalid_charrefs, key);
    if (text)
        rc = sink_str(out, text);
    else if (PyErr_Occurred())
        rc = -1;
    else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
        rc = sink_char(out, 0xFFFD);
    else if ((rc = PySet_Contains(st->invalid_codepoints, key)) == 0)
        rc = sink_char(out, (Py_UCS4)num);
    else if (rc == 1)
        rc = 0;  /* read as nothing */
    Py_DECREF(key);
    return rc;
}

/* One pass of unescape over v into the sink. */
static int
unescape_into(State *st, const View *v, Sink *out)
{
    Py_ssize_t copied = 0;
    for (Py_ssize_t at = find_char(v, '&', 0, v->end); at >= 0; at = find_char(v, '&', at, v->end)) {
        Ref r;
        if (!parse_ref(v, at, &r)) {
            at++;
            continue;
        }
        int rc = sink_chars(out, v, copied, at);
        if (rc == 0)
            rc = r.what == REF_NAME ? put_name(st, out, v, &r) : put_number(st, out, v, &r);
        if (rc < 0)
            return rc;
        copied = at = r.end;
    }
    return sink_chars(out, v, copied, v->end);
}

/* html.unescape(str): a new reference, or NULL on error. */
static PyObject *
unescape(State *st, PyObject *str)
{
    View v;
    view_init(&v, str, 0, PyUnicode_GET_LENGTH(str));
    if (find_char(&v, '&', 0, v.end) < 0)
        return Py_NewRef(str);
    Sink out = {NULL, 0, PyUnicode_MAX_CHAR_VALUE(str)};
    if (unescape_into(st, &v, &out) < 0)
        return NULL;
    Py_ssize_t len = out.len;
    if (!(out.out = PyUnicode_New(len, out.maxchar)))
        return NULL;
    out.len = 0;
    if (unescape_into(st, &v, &out) < 0) {
        Py_DECREF(out.out);
        return NULL;
    }
    assert(out.len == len);  /* the same reading twice (tables and input do not change) */
    return out.out;
}

/* ---- tag counts --------------------------------------------------------------------- */

/* The counts stay in C until the end; a small cache finds the entry of a name seen
 * before without making its str, the index dict (key -> entry) any other, so a name costs
 * its length and O(1) whatever the names are. */
#define TAG_CACHE 256

typedef struct {
    PyObject *key;       /* name.lower() */
    Py_ssize_t count;
    int code;            /* T_* of key */
} TagEntry;

typedef struct {
    TagEntry *entries;   /* in first-seen order: the dict's insertion order */
    Py_ssize_t n, cap;
    PyObject *index;     /* key -> entry number */
    Py_ssize_t cache[TAG_CACHE];  /* hash of a lowered ASCII name -> entry number + 1 (0: none) */
} Tags;

static void
tags_free(Tags *t)
{
    for (Py_ssize_t i = 0; i < t->n; i++)
        Py_DECREF(t->entries[i].key);
    PyMem_Free(t->entries);
    Py_XDECREF(t->index);
}

/* A new entry for key (a new reference, stolen): its number, or -1 on error. */
static Py_ssize_t
tags_add(Tags *t, PyObject *key)
{
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 32;
        TagEntry *grown = (size_t)cap > PY_SSIZE_T_MAX / sizeof(TagEntry) ? NULL
                          : PyMem_Realloc(t->entries, (size_t)cap * sizeof(TagEntry));
        if (!grown) {
            Py_DECREF(key);
            PyErr_NoMemory();
            return -1;
        }
        t->entries = grown;
        t->cap = cap;
    }
    PyObject *number = PyLong_FromSsize_t(t->n);
    if (!number || PyDict_SetItem(t->index, key, number) < 0) {
        Py_XDECREF(number);
        Py_DECREF(key);
        return -1;
    }
    Py_DECREF(number);
    t->entries[t->n] = (TagEntry){key, 0, str_code(key, TAG_NAMES)};
    return t->n++;
}

/* 1 if key (ASCII) is the characters [s, e) of v ASCII-lowered. */
static int
key_is(PyObject *key, const View *v, Py_ssize_t s, Py_ssize_t e)
{
    if (PyUnicode_GET_LENGTH(key) != e - s)
        return 0;
    const Py_UCS1 *k = PyUnicode_1BYTE_DATA(key);
    for (Py_ssize_t i = s; i < e; i++)
        if (k[i - s] != ascii_lower(VCH(v, i)))
            return 0;
    return 1;
}

/* The entry of the tag named by [s, e) (tags[name.lower()]), or NULL on error. */
static TagEntry *
tags_entry(Tags *t, State *st, const View *v, Py_ssize_t s, Py_ssize_t e)
{
    int ascii = all_ascii(v, s, e);
    size_t h = 0;
    if (ascii) {
        for (Py_ssize_t i = s; i < e; i++)
            h = h * 31 + ascii_lower(VCH(v, i));
        h = (h ^ (h >> 8)) % TAG_CACHE;
        Py_ssize_t seen = t->cache[h];
        if (seen && key_is(t->entries[seen - 1].key, v, s, e))
            return &t->entries[seen - 1];
    }
    PyObject *key = lowered(st, v, s, e);
    if (!key)
        return NULL;
    Py_ssize_t number;
    PyObject *known = PyDict_GetItemWithError(t->index, key);
    if (known) {
        Py_DECREF(key);
        number = PyLong_AsSsize_t(known);
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    else if ((number = tags_add(t, key)) < 0)
        return NULL;
    if (ascii)
        t->cache[h] = number + 1;
    return &t->entries[number];
}

/* The tag counts as a dict, in first-seen order. */
static PyObject *
tags_dict(const Tags *t)
{
    PyObject *out = PyDict_New();
    for (Py_ssize_t i = 0; out && i < t->n; i++) {
        PyObject *count = PyLong_FromSsize_t(t->entries[i].count);
        if (!count || PyDict_SetItem(out, t->entries[i].key, count) < 0)
            Py_CLEAR(out);
        Py_XDECREF(count);
    }
    return out;
}

/* ---- one scan ---------------------------------------------------------------------- */

typedef struct {
    State *st;
    View m;                 /* the whole markup */
    Tags tags;
    PyObject *urls, *features;
    Py_ssize_t *segs;       /* visible text: pairs (start, end) of markup */
    Py_ssize_t nsegs, capsegs;
    int dotted;             /* markup holds U+0130: -1 not known yet, 0 no, 1 yes */
    PyObject *markup_lower; /* markup.lower(), made only when dotted */
} Scan;

/* Append a new reference (stolen; NULL means an error already set). */
static int
append_new(PyObject *list, PyObject *item)
{
    if (!item)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* text.append(markup[a:b]) */
static int
add_segment(Scan *s, Py_ssize_t a, Py_ssize_t b)
{
    if (s->nsegs == s->capsegs) {
        Py_ssize_t cap = s->capsegs ? s->capsegs * 2 : 64;
        if ((size_t)cap > PY_SSIZE_T_MAX / (2 * sizeof(Py_ssize_t))) {
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t *grown = PyMem_Realloc(s->segs, (size_t)cap * 2 * sizeof(Py_ssize_t));
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        s->segs = grown;
        s->capsegs = cap;
    }
    s->segs[2 * s->nsegs] = a;
    s->segs[2 * s->nsegs + 1] = b;
    s->nsegs++;
    return 0;
}

/* What _MARKUP matched. */
enum { M_COMMENT, M_DECLARATION, M_START, M_END };
typedef struct {
    int what;
    Py_ssize_t start, end;            /* m.start(), m.end() */
    Py_ssize_t name_s, name_e;        /* group 2 */
    Py_ssize_t attrs_s, attrs_e;      /* group 3 */
} Match;

static inline int
name_stop(Py_UCS4 c)  /* not in [^\t\n\r\f />\x00<] */
{
    return c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == ' ' || c == '/' || c == '>'
           || c == '\0' || c == '<';
}

/* Skip [^<>]*+ from i; the index of the '<' or '>' (or end) it stops at. */
static inline Py_ssize_t
skip_to_angle_of(int kind, const void *data, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '<' || c == '>')
            break;
        i++;
    }
    return i;
}

static Py_ssize_t
skip_to_angle(const View *v, Py_ssize_t i)
{
    if (v->kind == PyUnicode_1BYTE_KIND && i < v->end) {
        /* the first '>' before the next '<': both searches end at that '<', where the
         * next try of _MARKUP starts, so they read each character once */
        const Py_UCS1 *d = (const Py_UCS1 *)v->data;
        const Py_UCS1 *lt = memchr(d + i, '<', (size_t)(v->end - i));
        Py_ssize_t limit = lt ? lt - d : v->end;
        const Py_UCS1 *gt = memchr(d + i, '>', (size_t)(limit - i));
        return gt ? gt - d : limit;
    }
#define SKIP_TO_ANGLE(kind) skip_to_angle_of(kind, v->data, i, v->end)
    return BY_KIND(v, SKIP_TO_ANGLE);
#undef SKIP_TO_ANGLE
}

/* Skip [^\t\n\r\f />\x00<]*+ from i. */
static inline Py_ssize_t
skip_name_of(int kind, const void *data, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n && !name_stop(PyUnicode_READ(kind, data, i)))
        i++;
    return i;
}

static Py_ssize_t
skip_name(const View *v, Py_ssize_t i)
{
#define SKIP_NAME(kind) skip_name_of(kind, v->data, i, v->end)
    return BY_KIND(v, SKIP_NAME);
#undef SKIP_NAME
}

/* Does _MARKUP match at the '<' at index i?  Fills *m when it does. */
static int
match_at(const View *v, Py_ssize_t i, Match *m)
{
    Py_ssize_t n = v->end;
    if (i + 1 >= n)
        return 0;
    Py_UCS4 c = VCH(v, i + 1);
    m->start = i;
    if (c == '!' && i + 3 < n && VCH(v, i + 2) == '-' && VCH(v, i + 3) == '-') {
        m->what = M_COMMENT;
        m->end = i + 4;
        return 1;
    }
    if (c == '!' || c == '?') {
        Py_ssize_t k = skip_to_angle(v, i + 2);
        if (k >= n || VCH(v, k) != '>')
            return 0;
        m->what = M_DECLARATION;
        m->end = k + 1;
        return 1;
    }
    Py_ssize_t j = (c == '/') ? i + 2 : i + 1;
    if (j >= n)
        return 0;
    Py_UCS4 first = VCH(v, j);
    if (!((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z')))
        return 0;
    Py_ssize_t k = skip_name(v, j + 1);
    Py_ssize_t attrs_e = skip_to_angle(v, k);
    if (attrs_e >= n || VCH(v, attrs_e) != '>')
        return 0;
    m->what = (c == '/') ? M_END : M_START;
    m->name_s = j;
    m->name_e = k;
    m->attrs_s = k;
    m->attrs_e = attrs_e;
    m->end = attrs_e + 1;
    return 1;
}

/* _MARKUP.search(markup, pos): 1 and *m, or 0 when there is no match. */
static int
next_markup(const View *v, Py_ssize_t pos, Match *m)
{
    for (Py_ssize_t i = find_char(v, '<', pos, v->end); i >= 0; i = find_char(v, '<', i + 1, v->end))
        if (match_at(v, i, m))
            return 1;
    return 0;
}

/* lowered.find("</" + tag, pos) for script/style, positions as the Python code uses them;
 * -1 when not found, -2 on error.  Only U+0130 makes markup.lower() longer than markup:
 * without it, positions agree and the ASCII pattern matches exactly the characters that
 * ASCII-lowercase to it; with it, Python's own lower() and find() run. */
static Py_ssize_t
raw_end(Scan *s, int tag, Py_ssize_t pos)
{
    const View *v = &s->m;
    if (s->dotted < 0)
        s->dotted = v->kind != PyUnicode_1BYTE_KIND && find_char(v, 0x130, 0, v->end) >= 0;
    if (s->dotted) {
        if (!s->markup_lower && !(s->markup_lower = PyObject_CallMethodNoArgs(v->obj, s->st->lower)))
            return -2;
        PyObject *pattern = tag == T_SCRIPT ? s->st->end_script : s->st->end_style;
        return PyUnicode_Find(s->markup_lower, pattern, pos, PY_SSIZE_T_MAX, 1);
    }
    const char *pattern = tag == T_SCRIPT ? "</script" : "</style";
    Py_ssize_t len = (Py_ssize_t)strlen(pattern);
    for (Py_ssize_t at = find_char(v, '<', pos, v->end); at >= 0 && at + len <= v->end;
         at = find_char(v, '<', at + 1, v->end)) {
        Py_ssize_t i = 1;
        while (i < len && VCH(v, at + i) < 128 && ascii_lower(VCH(v, at + i)) == (Py_UCS4)pattern[i])
            i++;
        if (i == len)
            return at;
    }
    return -1;
}

/* ---- attribute features (_attribute_features) ----------------------------------------- */

static int
url_features(Scan *s, int tag, int key, View *v)
{
    strip(v);
    if (starts_with_lower(v, "http://") || starts_with_lower(v, "https://") || starts_with_lower(v, "www.")) {
        if (append_new(s->urls, PyUnicode_Substring(v->obj, v->start, v->end)) < 0)
            return -1;
    }
    else if (starts_with_lower(v, "mailto:")) {
        if (PyList_Append(s->features, s->st->mailto) < 0)
            return -1;
    }
    if (key == K_SRC && tag == T_IMG)
        return PyList_Append(s->features, contains(v, "://") ? s->st->img_remote : s->st->img_local);
    return 0;
}

/* value.lower().replace(" ", ""): ASCII lowered, non-ASCII as 0x80 (it matches nothing). */
static int
style_features(Scan *s, const View *v)
{
    size_t len = (size_t)(v->end - v->start), k = 0;
    unsigned char *low = PyMem_Malloc(len ? len : 1);
    if (!low) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = v->start; i < v->end; i++) {
        Py_UCS4 c = VCH(v, i);
        if (c != ' ')
            low[k++] = c < 128 ? (unsigned char)ascii_lower(c) : 0x80;
    }
    int hidden = bytes_contain(low, k, "display:none") || bytes_contain(low, k, "visibility:hidden");
    int tiny = bytes_contain(low, k, "font-size:0") || bytes_contain(low, k, "font-size:1px");
    PyMem_Free(low);
    if (hidden && PyList_Append(s->features, s->st->hidden_style) < 0)
        return -1;
    if (tiny && PyList_Append(s->features, s->st->tiny_font) < 0)
        return -1;
    return 0;
}

/* f"font-color:{value.lower()[:10]}" (lowercasing is per character: the first ten ASCII
 * characters lower alike in any company). */
static int
font_color(Scan *s, const View *v)
{
    Py_ssize_t take = v->end - v->start < 10 ? v->end - v->start : 10;
    PyObject *part;
    if (all_ascii(v, v->start, v->start + take))
        part = lowered(s->st, v, v->start, v->start + take);
    else {
        PyObject *low = lowered(s->st, v, v->start, v->end);
        if (!low)
            return -1;
        part = PyUnicode_Substring(low, 0, 10);
        Py_DECREF(low);
    }
    if (!part)
        return -1;
    PyObject *feature = PyUnicode_Concat(s->st->font_color, part);
    Py_DECREF(part);
    return append_new(s->features, feature);
}

/* f"font-size:{value.strip()[:4]}" */
static int
font_size(Scan *s, View *v)
{
    strip(v);
    Py_ssize_t end = v->end - v->start < 4 ? v->end : v->start + 4;
    PyObject *part = PyUnicode_Substring(v->obj, v->start, end);
    if (!part)
        return -1;
    PyObject *feature = PyUnicode_Concat(s->st->font_size, part);
    Py_DECREF(part);
    return append_new(s->features, feature);
}

/* The features of one key=value pair; the value is markup[vs:ve] before unescaping. */
static int
value_features(Scan *s, int tag, int key, Py_ssize_t vs, Py_ssize_t ve)
{
    if (!(IS_URL_KEY(key) || key == K_STYLE || ((key == K_COLOR || key == K_SIZE) && tag == T_FONT)))
        return 0;  /* the value is not looked at (unescaping it changes nothing) */
    View v = s->m;
    v.start = vs;
    v.end = ve;
    PyObject *unescaped = NULL;
    if (find_char(&v, '&', vs, ve) >= 0) {
        PyObject *raw = PyUnicode_Substring(s->m.obj, vs, ve);
        if (!raw)
            return -1;
        unescaped = unescape(s->st, raw);
        Py_DECREF(raw);
        if (!unescaped)
            return -1;
        view_init(&v, unescaped, 0, PyUnicode_GET_LENGTH(unescaped));
    }
    int rc;
    if (IS_URL_KEY(key))
        rc = url_features(s, tag, key, &v);
    else if (key == K_STYLE)
        rc = style_features(s, &v);
    else if (key == K_COLOR)
        rc = font_color(s, &v);
    else
        rc = font_size(s, &v);
    Py_XDECREF(unescaped);
    return rc;
}

/* Character classes of _ATTR: \s (Py_UNICODE_ISSPACE), and what ends a name or a value. */
enum { C_SPACE = 1, C_NAME_END = 2, C_VALUE_END = 4 };
#define C_WS (C_SPACE | C_NAME_END | C_VALUE_END)
static const unsigned char ASCII_CLASS[128] = {
    ['\t'] = C_WS, ['\n'] = C_WS, [0x0b] = C_WS, ['\f'] = C_WS, ['\r'] = C_WS,
    [0x1c] = C_WS, [0x1d] = C_WS, [0x1e] = C_WS, [0x1f] = C_WS, [' '] = C_WS,
    ['/'] = C_NAME_END, ['='] = C_NAME_END, ['>'] = C_NAME_END | C_VALUE_END,
    ['"'] = C_VALUE_END, ['\''] = C_VALUE_END,
};

static inline int
char_class(Py_UCS4 c)
{
    if (c < 128)
        return ASCII_CLASS[c];
    return Py_UNICODE_ISSPACE(c) ? C_WS : 0;  /* the other ends are ASCII */
}

/* The first index in [i, b) whose class has (want_set) or lacks (!want_set) a bit of mask. */
static inline Py_ssize_t
skip_class_of(int kind, const void *data, Py_ssize_t i, Py_ssize_t b, int mask, int want_set)
{
    while (i < b && ((char_class(PyUnicode_READ(kind, data, i)) & mask) != 0) != want_set)
        i++;
    return i;
}

/* Skip the characters of class mask (up to one without it). */
static Py_ssize_t
skip_class(const View *v, Py_ssize_t i, Py_ssize_t b, int mask)
{
#define SKIP_CLASS(kind) skip_class_of(kind, v->data, i, b, mask, 0)
    return BY_KIND(v, SKIP_CLASS);
#undef SKIP_CLASS
}

/* Skip the characters without class mask (up to one with it). */
static Py_ssize_t
skip_to_class(const View *v, Py_ssize_t i, Py_ssize_t b, int mask)
{
#define SKIP_TO_CLASS(kind) skip_class_of(kind, v->data, i, b, mask, 1)
    return BY_KIND(v, SKIP_TO_CLASS);
#undef SKIP_TO_CLASS
}

/* _ATTR.findall(markup[a:b]) and the features of each pair.  A try at a name character
 * reads the run of name characters [p, e): the name is its last 64 (a possessive {1,64}+
 * fails at every earlier start), and every start inside the run fails or matches alike,
 * so a failed run moves the scan to its end. */
static int
attr_features(Scan *s, int tag, Py_ssize_t a, Py_ssize_t b)
{
    const View *v = &s->m;
    Py_ssize_t p = a;
    while (p < b) {
        p = skip_class(v, p, b, C_NAME_END);  /* to a start of [^\s/>=] */
        if (p >= b)
            break;
        Py_ssize_t e = skip_to_class(v, p + 1, b, C_NAME_END);
        Py_ssize_t key_s = e - p > 64 ? e - 64 : p;
        p = e;  /* where the scan goes on if this pair does not match */
        Py_ssize_t w = skip_class(v, e, b, C_SPACE);
        if (w >= b || VCH(v, w) != '=')
            continue;
        w = skip_class(v, w + 1, b, C_SPACE);
        if (w >= b)
            continue;
        Py_UCS4 q = VCH(v, w);
        Py_ssize_t vs, ve, next;
        if (q == '"' || q == '\'') {
            Py_ssize_t close = find_char(v, q, w + 1, b);
            if (close < 0)
                continue;
            vs = w + 1;
            ve = close;
            next = close + 1;
        }
        else if (!(char_class(q) & C_VALUE_END)) {
            ve = skip_to_class(v, w + 1, b, C_VALUE_END);
            vs = w;
            next = ve;
        }
        else
            continue;
        int key = lowered_code(s->st, v, key_s, e, KEY_NAMES);
        if (key < 0 || value_features(s, tag, key, vs, ve) < 0)
            return -1;
        p = next;
    }
    return 0;
}

/* ---- the document ---------------------------------------------------------------------- */

/* A start tag: count it, read its attributes; the new scan position, -1 on error. */
static Py_ssize_t
start_tag(Scan *s, const Match *m, Py_ssize_t *hidden)
{
    const View *v = &s->m;
    TagEntry *tag = tags_entry(&s->tags, s->st, v, m->name_s, m->name_e);
    if (!tag)
        return -1;
    tag->count++;
    int code = tag->code;
    if (find_char(v, '=', m->attrs_s, m->attrs_e) >= 0 && attr_features(s, code, m->attrs_s, m->attrs_e) < 0)
        return -1;
    Py_ssize_t pos = m->end;
    if (m->attrs_e > m->attrs_s && VCH(v, m->attrs_e - 1) == '/')
        return pos;  /* self-closing */
    if (IS_RAW(code)) {
        Py_ssize_t end = raw_end(s, code, pos);
        if (end == -2)
            return -1;
        pos = end < 0 ? v->end : end;
    }
    if (IS_HIDDEN(code))
        (*hidden)++;
    return pos;
}

/* " ".join(segments), unescaped when it holds '&'. */
static PyObject *
join_text(Scan *s)
{
    const View *v = &s->m;
    if (s->nsegs == 0)
        return PyUnicode_New(0, 0);
    Py_ssize_t total = s->nsegs - 1;
    Py_UCS4 maxchar = ' ';
    int amp = 0;
    for (Py_ssize_t k = 0; k < s->nsegs; k++) {
        Py_ssize_t a = s->segs[2 * k], b = s->segs[2 * k + 1];
        total += b - a;
        if (!amp && find_char(v, '&', a, b) >= 0)
            amp = 1;
        if (PyUnicode_IS_ASCII(v->obj))
            continue;
        for (Py_ssize_t i = a; i < b; i++) {
            Py_UCS4 c = VCH(v, i);
            if (c > maxchar)
                maxchar = c;
        }
    }
    PyObject *out = PyUnicode_New(total, maxchar);
    if (!out)
        return NULL;
    int kind = PyUnicode_KIND(out);
    void *data = PyUnicode_DATA(out);
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; k < s->nsegs; k++) {
        Py_ssize_t a = s->segs[2 * k], b = s->segs[2 * k + 1];
        if (k)
            PyUnicode_WRITE(kind, data, at++, ' ');
        if (kind == v->kind)
            memcpy((char *)data + at * kind, (const char *)v->data + a * kind, (size_t)((b - a) * kind));
        else if (PyUnicode_CopyCharacters(out, at, v->obj, a, b - a) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        at += b - a;
    }
    if (!amp)
        return out;
    PyObject *text = unescape(s->st, out);
    Py_DECREF(out);
    return text;
}

/* The scan of _html_to_text_py's loop; 0, or -1 on error. */
static int
scan(Scan *s)
{
    const View *v = &s->m;
    Py_ssize_t n = v->end, pos = 0, hidden = 0;
    Match m;
    for (;;) {
        if (pos >= n || !next_markup(v, pos, &m)) {
            if (!hidden && pos < n)
                return add_segment(s, pos, n);
            return 0;
        }
        if (!hidden && m.start > pos && add_segment(s, pos, m.start) < 0)
            return -1;
        if (m.what == M_COMMENT) {
            if (PyList_Append(s->features, s->st->comment) < 0)
                return -1;
            Py_ssize_t end = PyUnicode_Find(v->obj, s->st->comment_end, m.start + 4, n, 1);
            if (end == -2)
                return -1;
            pos = end < 0 ? n : end + 3;
        }
        else if (m.what == M_DECLARATION)
            pos = m.end;
        else if (m.what == M_END) {
            pos = m.end;
            if (hidden) {  /* else the name changes nothing (and lowering it has no effect) */
                int code = lowered_code(s->st, v, m.name_s, m.name_e, TAG_NAMES);
                if (code < 0)
                    return -1;
                if (IS_HIDDEN(code))
                    hidden--;
            }
        }
        else if ((pos = start_tag(s, &m, &hidden)) < 0)
            return -1;
    }
}

PyDoc_STRVAR(html_to_text_doc,
"html_to_text(markup, /)\n--\n\n"
"(visible text, tag counts, urls, markup features) of an HTML document: the C version of\n"
"stronghold.htmltext._html_to_text_py, with the same result for every str.");

static PyObject *
html_to_text(PyObject *module, PyObject *markup)
{
    if (!PyUnicode_Check(markup)) {
        PyErr_Format(PyExc_TypeError, "html_to_text() argument must be str, not %.100s",
                     Py_TYPE(markup)->tp_name);
        return NULL;
    }
    if (PyUnicode_READY(markup) < 0)
        return NULL;
    Scan s = {.st = get_state(module), .dotted = -1};
    view_init(&s.m, markup, 0, PyUnicode_GET_LENGTH(markup));
    PyObject *result = NULL, *text = NULL, *tags = NULL;
    s.tags.index = PyDict_New();
    s.urls = PyList_New(0);
    s.features = PyList_New(0);
    if (s.tags.index && s.urls && s.features && scan(&s) == 0 && (text = join_text(&s))
        && (tags = tags_dict(&s.tags)))
        result = PyTuple_Pack(4, text, tags, s.urls, s.features);
    Py_XDECREF(text);
    Py_XDECREF(tags);
    tags_free(&s.tags);
    Py_XDECREF(s.urls);
    Py_XDECREF(s.features);
    Py_XDECREF(s.markup_lower);
    PyMem_Free(s.segs);
    return result;
}

/* ---- the module ------------------------------------------------------------------------ */

PyDoc_STRVAR(unescape_doc,
"unescape(s, /)\n--\n\n"
"html.unescape(s), in C with the html module's tables (what html_to_text uses).");

static PyObject *
unescape_function(PyObject *module, PyObject *str)
{
    if (!PyUnicode_Check(str)) {
        PyErr_Format(PyExc_TypeError, "unescape() argument must be str, not %.100s", Py_TYPE(str)->tp_name);
        return NULL;
    }
    return unescape(get_state(module), str);
}

static PyMethodDef methods[] = {
    {"html_to_text", html_to_text, METH_O, html_to_text_doc},
    {"unescape", unescape_function, METH_O, unescape_doc},
    {NULL, NULL, 0, NULL},
};

static int
state_traverse(PyObject *module, visitproc visit, void *arg)
{
    State *st = get_state(module);
    Py_VISIT(st->html5);
    Py_VISIT(st->invalid_charrefs);
    Py_VISIT(st->invalid_codepoints);
    return 0;
}

static int
state_clear(PyObject *module)
{
    State *st = get_state(module);
    Py_CLEAR(st->html5);
    Py_CLEAR(st->invalid_charrefs);
    Py_CLEAR(st->invalid_codepoints);
    for (size_t slot = 0; st->entities && slot <= st->entities_mask; slot++) {
        Py_XDECREF(st->entities[slot].key);
        Py_XDECREF(st->entities[slot].text);
    }
    PyMem_Free(st->entities);
    st->entities = NULL;
    Py_CLEAR(st->lower);
    Py_CLEAR(st->comment_end);
    Py_CLEAR(st->end_script);
    Py_CLEAR(st->end_style);
    Py_CLEAR(st->comment);
    Py_CLEAR(st->mailto);
    Py_CLEAR(st->img_remote);
    Py_CLEAR(st->img_local);
    Py_CLEAR(st->hidden_style);
    Py_CLEAR(st->tiny_font);
    Py_CLEAR(st->font_color);
    Py_CLEAR(st->font_size);
    return 0;
}

static void
state_free(void *module)
{
    state_clear((PyObject *)module);
}

static int
exec_module(PyObject *module)
{
    State *st = get_state(module);
    PyObject *html = PyImport_ImportModule("html");
    if (!html)
        return -1;
    int ok = (st->html5 = PyObject_GetAttrString(html, "_html5"))
             && (st->invalid_charrefs = PyObject_GetAttrString(html, "_invalid_charrefs"))
             && (st->invalid_codepoints = PyObject_GetAttrString(html, "_invalid_codepoints"));
    Py_DECREF(html);
    if (!ok)
        return -1;
    if (!PyDict_Check(st->html5) || !PyDict_Check(st->invalid_charrefs) || !PyAnySet_Check(st->invalid_codepoints)) {
        PyErr_SetString(PyExc_ImportError, "the html module's entity tables are not the ones htmlcore reads");
        return -1;
    }
    if (entities_load(st) < 0)
        return -1;
    struct { PyObject **slot; const char *text; } constants[] = {
        {&st->lower, "lower"}, {&st->comment_end, "-->"}, {&st->end_script, "</script"},
        {&st->end_style, "</style"}, {&st->comment, "comment"}, {&st->mailto, "mailto"},
        {&st->img_remote, "img-remote"}, {&st->img_local, "img-local"},
        {&st->hidden_style, "hidden-style"}, {&st->tiny_font, "tiny-font"},
        {&st->font_color, "font-color:"}, {&st->font_size, "font-size:"},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (!(*constants[i].slot = PyUnicode_InternFromString(constants[i].text)))
            return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stronghold._htmlcore",
    .m_doc = "C version of stronghold.htmltext.html_to_text (see stronghold/native/htmlcore.c).",
    .m_size = sizeof(State),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = state_traverse,
    .m_clear = state_clear,
    .m_free = state_free,
};

PyMODINIT_FUNC
PyInit__htmlcore(void)
{
    return PyModuleDef_Init(&module_def);
}
