/* scorecore: the per-message part of stronghold.classifier.Model.score, in C.
 *
 * Mirrors, bit for bit, the Python reference Model._score_py:
 *   token_indices     MurmurHash3 x86_32 (seed 0) of each token's UTF-8 bytes, as a signed
 *                     32-bit number, absolute value, & mask (as mmh3.hash and FeatureHasher);
 *   the table lookup  float32 log-odds of each bucket, replaced by a personal layer's value
 *                     where the layer (sorted int64 buckets, float32 values) has the bucket,
 *                     as personal.Layer.adjust does with searchsorted;
 *   the vote order    voting (non-zero) tokens by bucket, ties by the token (code points);
 *   families          tokens.prefix_family of the text before the first ':' (looked up through
 *                     a dict the caller owns, filled by calling the Python function: the family
 *                     tables exist once, in tokens.py), one vote per family, its strongest clue,
 *                     the first on a tie, families after the content votes in order of first vote;
 *   chisquare         chi_square_logodds: numpy's logaddexp and pairwise sum, log_chi2_tails
 *                     (the large-m branch and math.lgamma are called back in Python: numpy's
 *                     vectorised exp/log and CPython's lgamma are not libm's);
 *   the clues         the n_reasons strongest votes (stable: first on a tie, NaN last) with
 *                     sigmoid of their value.
 * The Python code stays the reference; tests/unit/test_native_score.py compares the two.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FAMILY_CACHE_MAX 10000 /* as tokens._family_cache: entries kept in the caller's dict */
#define TOPK_INSERTION_MAX 64  /* at most this many clues: insertion; more: a full sort */
#define PREFIX_PROBES 32       /* places of the prefix table tried before asking Python's dicts */

/* One token (after read_tokens: one voting token): where it came from, its bucket, its UTF-8 text
 * (owned by the token, which the tuple or list score holds keeps alive) and its value. */
typedef struct {
    Py_ssize_t pos;
    int64_t bucket;
    const char *utf8;
    Py_ssize_t len;
    double value;
} Vote;

/* The module's constants (set once at import, never changed). */
typedef struct {
    PyObject *round_name; /* "__round__" */
    PyObject *four;       /* 4: the digits of a clue */
    PyObject *token_name; /* "token": Clue's fields */
    PyObject *prob_name;  /* "spam_prob" */
} State;

/* Things the chi-square needs from Python: math.lgamma and chisquare.log_chi2_tails_large. */
typedef struct {
    PyObject *lgamma;
    PyObject *large_tails;
} Tails;

/* ---- MurmurHash3 x86_32 (Austin Appleby's public-domain algorithm), as mmh3.hash ---- */

static uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static uint32_t murmur3_32(const char *data, Py_ssize_t len)
{
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = 0; /* seed 0 */
    Py_ssize_t nblocks = len / 4, i;
    for (i = 0; i < nblocks; i++) {
        uint32_t k;
        memcpy(&k, data + 4 * i, 4); /* native order, as mmh3 reads its blocks */
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    const unsigned char *tail = (const unsigned char *)data + 4 * nblocks;
    uint32_t k = 0;
    switch (len & 3) {
    case 3: k ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: k ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1:
        k ^= tail[0];
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
    }
    h ^= (uint32_t)len;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* The bucket of a hash: signed 32-bit, absolute value in 64 bits, & mask. */
static int64_t bucket_of(uint32_t h, int64_t mask)
{
    int64_t s = (int64_t)(int32_t)h;
    return (s < 0 ? -s : s) & mask;
}

/* ---- the personal layer ---- */

#define LAYER_LANES 16 /* tokens searched in the layer side by side */

/* Replace the value (a float in Vote.value) of each of the n votes whose bucket the layer has by the
 * layer's: numpy's searchsorted (left) on the sorted buckets, then an equality test, as
 * personal.Layer.adjust. Branchless binary searches, LAYER_LANES of them in step (every search of
 * one layer takes the same steps), so that their memory reads overlap. */
static void apply_layer(const int64_t *buckets, const float *values, Py_ssize_t n_layer, Vote *votes,
                        Py_ssize_t n)
{
    for (Py_ssize_t start = 0; start < n; start += LAYER_LANES) {
        int lanes = n - start < LAYER_LANES ? (int)(n - start) : LAYER_LANES;
        const int64_t *base[LAYER_LANES];
        int64_t key[LAYER_LANES];
        for (int j = 0; j < lanes; j++) {
            base[j] = buckets;
            key[j] = votes[start + j].bucket;
        }
        for (Py_ssize_t len = n_layer; len > 1;) { /* each first bucket >= key is in [base, base + len] */
            Py_ssize_t half = len / 2;
            for (int j = 0; j < lanes; j++) /* base += half if base[half - 1] < key, without a branch */
                base[j] += half & -(Py_ssize_t)(base[j][half - 1] < key[j]);
            len -= half;
        }
        for (int j = 0; j < lanes; j++) {
            Py_ssize_t pos = (base[j] - buckets) + (*base[j] < key[j]);
            if (pos >= n_layer)
                pos = 0;
            if (buckets[pos] == key[j])
                votes[start + j].value = values[pos];
        }
    }
}

/* ---- ordering ---- */

/* By bucket, then by the token (UTF-8 byte order is code point order), then where it came from. */
static int vote_cmp(const void *pa, const void *pb)
{
    const Vote *a = pa, *b = pb;
    if (a->bucket != b->bucket)
        return a->bucket < b->bucket ? -1 : 1;
    Py_ssize_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->utf8, b->utf8, (size_t)n) : 0;
    if (c)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}

/* Sort n keys ascending (merge sort into tmp and back; insertion sort for short runs). */
static void sort_keys(uint64_t *a, uint64_t *tmp, Py_ssize_t n)
{
    if (n <= 16) {
        for (Py_ssize_t i = 1; i < n; i++) {
            uint64_t x = a[i];
            Py_ssize_t j = i;
            for (; j > 0 && a[j - 1] > x; j--)
                a[j] = a[j - 1];
            a[j] = x;
        }
        return;
    }
    Py_ssize_t half = n / 2, i = 0, j = half, o = 0;
    sort_keys(a, tmp, half);
    sort_keys(a + half, tmp, n - half);
    while (i < half && j < n) { /* keys are distinct; no branch on which half gives the next */
        int second = a[j] < a[i];
        tmp[o++] = second ? a[j] : a[i];
        j += second;
        i += !second;
    }
    while (i < half)
        tmp[o++] = a[i++];
    memcpy(a, tmp, (size_t)o * sizeof *a); /* what is left of the second half is in place */
}

/* Put the votes in vote_cmp's order: keys (bucket << 32 | index) sorted as numbers, then each run
 * of one bucket (two tokens of the message sharing it: rare) sorted by vote_cmp. -1: MemoryError. */
static int order_votes(Vote *votes, Py_ssize_t n)
{
    if ((uint64_t)n >= ((uint64_t)1 << 32)) { /* the index would not fit in the key */
        qsort(votes, (size_t)n, sizeof *votes, vote_cmp);
        return 0;
    }
    uint64_t *keys = PyMem_New(uint64_t, 2 * n + 1);
    Vote *sorted = PyMem_New(Vote, n + 1);
    if (!keys || !sorted) {
        PyMem_Free(keys);
        PyMem_Free(sorted);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        keys[i] = (uint64_t)votes[i].bucket << 32 | (uint64_t)i; /* a bucket is below 2**32 */
    sort_keys(keys, keys + n, n);
    for (Py_ssize_t i = 0; i < n; i++)
        sorted[i] = votes[keys[i] & 0xffffffffu];
    memcpy(votes, sorted, (size_t)n * sizeof *votes);
    for (Py_ssize_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && votes[j].bucket == votes[i].bucket; j++)
            ;
        if (j - i > 1)
            qsort(votes + i, (size_t)(j - i), sizeof *votes, vote_cmp);
    }
    PyMem_Free(keys);
    PyMem_Free(sorted);
    return 0;
}

/* ---- numpy's float64 logaddexp and pairwise sum ---- */

/* np.logaddexp(x, y) as numpy computes it (npy_logaddexp). */
static double np_logaddexp(double x, double y)
{
    if (x == y)
        return x + 0.693147180559945309417232121458176568; /* NPY_LOGE2 */
    double tmp = x - y;
    if (tmp > 0)
        return x + log1p(exp(-tmp));
    if (tmp <= 0)
        return y + log1p(exp(tmp));
    return tmp; /* NaN */
}

/* numpy's pairwise summation of a contiguous float64 array (the inner loop of add.reduce). */
static double pairwise_sum(const double *a, Py_ssize_t n)
{
    if (n < 8) {
        double res = 0.0;
        for (Py_ssize_t i = 0; i < n; i++)
            res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++)
                r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* float(np.asarray(a).sum()): the identity 0.0 plus one pairwise sum of the whole contiguous array. */
static double np_sum(const double *a, Py_ssize_t n) { return 0.0 + pairwise_sum(a, n); }

/* ---- chisquare.log_chi2_tails ---- */

/* Python's max(a, b) and min(a, b) of two floats (the first unless the second compares beyond). */
static double py_max(double a, double b) { return b > a ? b : a; }
static double py_min(double a, double b) { return b < a ? b : a; }

/* math.lgamma(x), through Python (CPython's own, not libm's). -1 with an exception on failure. */
static int call_lgamma(const Tails *t, double x, double *out)
{
    PyObject *arg = PyFloat_FromDouble(x);
    if (!arg)
        return -1;
    PyObject *res = PyObject_CallOneArg(t->lgamma, arg);
    Py_DECREF(arg);
    if (!res)
        return -1;
    *out = PyFloat_AsDouble(res);
    Py_DECREF(res);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The (log Q, log P) pair of large_tails(m, n), called in Python. */
static int call_large_tails(const Tails *t, double m, Py_ssize_t n, double *log_q, double *log_p)
{
    PyObject *res = PyObject_CallFunction(t->large_tails, "dn", m, n);
    if (!res)
        return -1;
    int ok = PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2;
    if (ok) {
        *log_q = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 0));
        *log_p = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 1));
        ok = !PyErr_Occurred();
    } else {
        PyErr_SetString(PyExc_TypeError, "large tails must return a pair of floats");
    }
    Py_DECREF(res);
    return ok ? 0 : -1;
}

/* log Q and log P of a chi-square with 2n degrees of freedom at 2m, as chisquare.log_chi2_tails. */
static int log_chi2_tails(const Tails *t, double m, Py_ssize_t n, double *log_q, double *log_p)
{
    if (m <= 0) {
        *log_q = 0.0;
        *log_p = -INFINITY;
        return 0;
    }
    if (m > 500)
        return call_large_tails(t, m, n, log_q, log_p);
    double term = 1.0, total = 1.0;
    for (Py_ssize_t i = 1; i < n; i++) {
        term *= m / (double)i;
        total += term;
    }
    *log_q = log(total) - m;
    if (*log_q < -0.7) {
        *log_p = log1p(-exp(*log_q));
        return 0;
    }
    double lg;
    if (call_lgamma(t, (double)(n + 1), &lg) < 0)
        return -1;
    term = exp((double)n * log(m) - lg - m); /* the first term of P */
    total = 0.0;
    Py_ssize_t i = n;
    while (term > total * 1e-17) {
        total += term;
        i += 1;
        term *= m / (double)i;
    }
    *log_p = total > 0 ? log(total) : -INFINITY;
    return 0;
}

/* chisquare._logaddexp. */
static double tail_logaddexp(double a, double b)
{
    double top = py_max(a, b);
    if (top == -INFINITY)
        return -INFINITY;
    return top + log1p(exp(py_min(a, b) - top));
}

/* chisquare.chi_square_logodds of n votes. -1 with an exception on failure. */
static int chi_square(const Tails *t, const double *votes, Py_ssize_t n, double *out)
{
    if (n == 0) {
        *out = 0.0;
        return 0;
    }
    double *terms = PyMem_New(double, n);
    if (!terms) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        terms[i] = np_logaddexp(0.0, votes[i]);
    double m_spam = np_sum(terms, n);
    for (Py_ssize_t i = 0; i < n; i++)
        terms[i] = np_logaddexp(0.0, -votes[i]);
    double m_ham = np_sum(terms, n);
    PyMem_Free(terms);
    double log_qs, log_ps, log_qh, log_ph;
    if (log_chi2_tails(t, m_spam, n, &log_qs, &log_ps) < 0 ||
        log_chi2_tails(t, m_ham, n, &log_qh, &log_ph) < 0)
        return -1;
    *out = tail_logaddexp(log_ps, log_qh) - tail_logaddexp(log_qs, log_ph);
    return 0;
}

/* ---- families ---- */

/* The family of a prefix (a new reference; None for content), through the caller's cache dict. */
static PyObject *prefix_family_of(const char *utf8, Py_ssize_t len, PyObject *cache, PyObject *prefix_family)
{
    PyObject *prefix = PyUnicode_DecodeUTF8(utf8, len, "strict");
    if (!prefix)
        return NULL;
    PyObject *fam = PyDict_GetItemWithError(cache, prefix); /* borrowed */
    if (fam) {
        Py_INCREF(fam);
    } else if (!PyErr_Occurred()) {
        fam = PyObject_CallOneArg(prefix_family, prefix);
        if (fam && PyDict_GET_SIZE(cache) < FAMILY_CACHE_MAX && PyDict_SetItem(cache, prefix, fam) < 0)
            Py_CLEAR(fam);
    }
    Py_DECREF(prefix);
    return fam;
}

/* A prefix seen in this message and the family it stands for (an index in Ballot's families). */
typedef struct {
    const char *key; /* NULL: an empty place */
    Py_ssize_t len;
    uint32_t hash;
    Py_ssize_t family; /* -1: content */
} Prefix;

/* The votes of one message: content votes in order, then one per family in order of first vote. */
typedef struct {
    double *votes;       /* room for every voting token and every family */
    Py_ssize_t n_content;
    double *strongest;   /* per family: its strongest clue so far */
    char *voted;         /* per family: whether it has voted */
    Py_ssize_t *order;   /* the families in order of their first vote */
    Py_ssize_t n_voted;
    PyObject *ids;       /* family -> its index (families compared as Python objects, as dict keys) */
    Prefix *prefixes;    /* open addressing, a power of two places, at most half of them full */
    size_t mask;
} Ballot;

/* Room for a message of n voting tokens (-1 with MemoryError). */
static int ballot_init(Ballot *b, Py_ssize_t n)
{
    size_t places = 2;
    while (places < 2 * (size_t)n + 2)
        places *= 2;
    *b = (Ballot){PyMem_New(double, n + 1), 0, PyMem_New(double, n + 1), PyMem_Calloc(n + 1, 1),
                  PyMem_New(Py_ssize_t, n + 1), 0, PyDict_New(), PyMem_Calloc(places, sizeof(Prefix)),
                  places - 1};
    if (!b->ids)
        return -1;
    if (!b->votes || !b->strongest || !b->voted || !b->order || !b->prefixes) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void ballot_free(Ballot *b)
{
    PyMem_Free(b->votes);
    PyMem_Free(b->strongest);
    PyMem_Free(b->voted);
    PyMem_Free(b->order);
    PyMem_Free(b->prefixes);
    Py_XDECREF(b->ids);
}

/* The index of a family object among this message's families (a new one the first time). */
static Py_ssize_t family_id(Ballot *b, PyObject *fam)
{
    PyObject *id = PyDict_GetItemWithError(b->ids, fam); /* borrowed */
    if (id)
        return PyLong_AsSsize_t(id);
    if (PyErr_Occurred())
        return -2;
    Py_ssize_t next = PyDict_GET_SIZE(b->ids);
    id = PyLong_FromSsize_t(next);
    if (!id || PyDict_SetItem(b->ids, fam, id) < 0)
        next = -2;
    Py_XDECREF(id);
    return next;
}

/* The family index of a token's prefix (-1: content; -2: an exception), asking Python once per
 * distinct prefix of the message. MurmurHash3 with a known seed can be made to collide: after
 * PREFIX_PROBES places the prefix is looked up in Python (dicts hash str with a secret key), so
 * the work stays linear in the message whatever its header names. */
static Py_ssize_t prefix_slot(Ballot *b, const char *utf8, Py_ssize_t len, PyObject *cache,
                              PyObject *prefix_family)
{
    uint32_t hash = murmur3_32(utf8, len);
    size_t at = hash & b->mask;
    int probes = 0;
    for (; b->prefixes[at].key && probes < PREFIX_PROBES; probes++) {
        Prefix *p = &b->prefixes[at];
        if (p->hash == hash && p->len == len && memcmp(p->key, utf8, (size_t)len) == 0)
            return p->family;
        at = (at + 1) & b->mask;
    }
    PyObject *fam = prefix_family_of(utf8, len, cache, prefix_family);
    if (!fam)
        return -2;
    Py_ssize_t family = fam == Py_None ? -1 : family_id(b, fam);
    Py_DECREF(fam);
    if (family != -2 && !b->prefixes[at].key)
        b->prefixes[at] = (Prefix){utf8, len, hash, family};
    return family;
}

/* Count the vote of one token: its own if content, else as its family's if the strongest so far. */
static int cast_vote(Ballot *b, const Vote *v, PyObject *cache, PyObject *prefix_family)
{
    const char *colon = memchr(v->utf8, ':', (size_t)v->len);
    Py_ssize_t f = colon ? prefix_slot(b, v->utf8, colon - v->utf8, cache, prefix_family) : -1;
    if (f == -2)
        return -1;
    if (f == -1) {
        b->votes[b->n_content++] = v->value;
    } else if (!b->voted[f]) {
        if (fabs(v->value) > 0.0) { /* abs(value) > abs(families.get(fam, 0.0)): not NaN */
            b->voted[f] = 1;
            b->strongest[f] = v->value;
            b->order[b->n_voted++] = f;
        }
    } else if (fabs(v->value) > fabs(b->strongest[f])) {
        b->strongest[f] = v->value;
    }
    return 0;
}

/* All the votes: content votes, then each family's (in order of first vote); their number. */
static Py_ssize_t ballot_votes(Ballot *b)
{
    for (Py_ssize_t j = 0; j < b->n_voted; j++)
        b->votes[b->n_content + j] = b->strongest[b->order[j]];
    return b->n_content + b->n_voted;
}

/* ---- the clues ---- */

/* A vote's rank for the clues: |value|, NaN below every number (numpy sorts NaN last). */
typedef struct {
    double strength;
    Py_ssize_t pos;
} Rank;

static double strength_of(double value) { return isnan(value) ? -1.0 : fabs(value); }

/* Strongest first, then first in vote order: a stable argsort of -|value|. */
static int rank_cmp(const void *pa, const void *pb)
{
    const Rank *a = pa, *b = pb;
    if (a->strength != b->strength)
        return a->strength > b->strength ? -1 : 1;
    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}

/* The k strongest of n votes, strongest first, into top (room for k): insertion for a few, else a sort. */
static int top_clues(const Vote *votes, Py_ssize_t n, Py_ssize_t k, Rank *top)
{
    if (k > TOPK_INSERTION_MAX) {
        Rank *all = PyMem_New(Rank, n);
        if (!all) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++)
            all[i] = (Rank){strength_of(votes[i].value), i};
        qsort(all, (size_t)n, sizeof *all, rank_cmp);
        memcpy(top, all, (size_t)k * sizeof *top);
        PyMem_Free(all);
        return 0;
    }
    Py_ssize_t have = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Rank r = {strength_of(votes[i].value), i};
        Py_ssize_t at = have; /* after every kept vote at least as strong: they came first */
        while (at > 0 && r.strength > top[at - 1].strength)
            at--;
        if (at >= k)
            continue;
        Py_ssize_t keep = have < k ? have : k - 1; /* the kept votes that stay */
        memmove(top + at + 1, top + at, (size_t)(keep - at) * sizeof *top);
        top[at] = r;
        have = keep + 1;
    }
    return 0;
}

/* chisquare.sigmoid. */
static double sigmoid(double x)
{
    if (x >= 0)
        return 1.0 / (1.0 + exp(-x));
    double z = exp(x);
    return z / (1.0 + z);
}

/* Python's round(x, 4) (float.__round__: correctly rounded, as the reference rounds a clue). */
static PyObject *round4(const State *st, double x)
{
    PyObject *f = PyFloat_FromDouble(x);
    if (!f)
        return NULL;
    PyObject *args[2] = {f, st->four};
    PyObject *res = PyObject_VectorcallMethod(st->round_name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(f);
    return res;
}

/* A Clue(token, spam_prob) made as its frozen dataclass __init__ does: object.__setattr__ of each
 * field, in order (without the cost of calling the generated __init__ in Python). */
static PyObject *make_clue(const State *st, PyTypeObject *clue_type, PyObject *token, double prob)
{
    PyObject *clue = clue_type->tp_alloc(clue_type, 0), *p = round4(st, prob);
    if (!clue || !p || PyObject_GenericSetAttr(clue, st->token_name, token) < 0 ||
        PyObject_GenericSetAttr(clue, st->prob_name, p) < 0)
        Py_CLEAR(clue);
    Py_XDECREF(p);
    return clue;
}

/* The clues, a tuple of clue_type (classifier.Clue) instances, strongest first. */
static PyObject *clue_tuple(const State *st, PyTypeObject *clue_type, PyObject *tokens, const Vote *votes,
                            const Rank *top, Py_ssize_t k)
{
    PyObject *out = PyTuple_New(k);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        const Vote *v = &votes[top[i].pos];
        PyObject *token = PySequence_Fast_GET_ITEM(tokens, v->pos);
        PyObject *clue = make_clue(st, clue_type, token, sigmoid(v->value));
        if (!clue) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, clue);
    }
    return out;
}

/* ---- arguments ---- */

/* A read-only view of a contiguous 1-d buffer whose items are of size itemsize and one of the
 * struct formats fmts (e.g. "f", or "ql": int64 is 'l' or 'q'), for a message naming it what. */
static int get_array(PyObject *obj, const char *what, const char *fmts, Py_ssize_t itemsize, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_ND | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@')
        f++;
    if (view->ndim != 1 || view->itemsize != itemsize || strlen(f) != 1 || !strchr(fmts, f[0])) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-d contiguous array of format %s (got %s, %d dims)",
                     what, fmts, view->format ? view->format : "B", view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* How many clues Python's [:n_reasons] keeps of n. */
static Py_ssize_t slice_len(Py_ssize_t n_reasons, Py_ssize_t n)
{
    if (n_reasons >= 0)
        return n_reasons < n ? n_reasons : n;
    return n + n_reasons > 0 ? n + n_reasons : 0;
}

/* Read every token: hash it (prefetching its table entry), then look up the values (with the
 * layer) and keep the voting tokens in votes (room for every token), n_votes of them. */
static int read_tokens(PyObject *tokens, const float *table, int64_t mask, const Py_buffer *lb,
                       const Py_buffer *lv, Vote *votes, Py_ssize_t *n_votes)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(tokens), nv = 0;
    Py_ssize_t n_layer = lb ? lb->shape[0] : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *tok = PySequence_Fast_GET_ITEM(tokens, i);
        if (!PyUnicode_Check(tok)) {
            PyErr_Format(PyExc_TypeError, "tokens must be str, not %.100s", Py_TYPE(tok)->tp_name);
            return -1;
        }
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(tok, &len); /* UnicodeEncodeError for surrogates */
        if (!utf8)
            return -1;
        int64_t bucket = bucket_of(murmur3_32(utf8, len), mask);
        __builtin_prefetch(table + bucket);
        votes[i] = (Vote){i, bucket, utf8, len, 0.0};
    }
    for (Py_ssize_t i = 0; i < n; i++)
        votes[i].value = table[votes[i].bucket];
    if (n_layer)
        apply_layer(lb->buf, lv->buf, n_layer, votes, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (votes[i].value != 0.0) /* np.flatnonzero: NaN votes too */
            votes[nv++] = votes[i];
    }
    *n_votes = nv;
    return 0;
}

/* Order, count and combine the votes; the clues. Returns (raw log-odds, clues) or NULL. */
static PyObject *decide(const State *st, PyTypeObject *clue_type, PyObject *tokens, Vote *votes,
                        Py_ssize_t nv, Py_ssize_t n_reasons, PyObject *cache, PyObject *prefix_family,
                        const Tails *tails)
{
    Ballot b;
    Py_ssize_t k = slice_len(n_reasons, nv);
    Rank *top = PyMem_New(Rank, k + 1);
    PyObject *result = NULL;
    if (ballot_init(&b, nv) < 0 || order_votes(votes, nv) < 0)
        goto done;
    if (!top) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nv; i++)
        if (cast_vote(&b, &votes[i], cache, prefix_family) < 0)
            goto done;
    double raw;
    if (chi_square(tails, b.votes, ballot_votes(&b), &raw) < 0 || top_clues(votes, nv, k, top) < 0)
        goto done;
    PyObject *clues = clue_tuple(st, clue_type, tokens, votes, top, k);
    if (clues)
        result = Py_BuildValue("(dN)", raw, clues);
done:
    ballot_free(&b);
    PyMem_Free(top);
    return result;
}

PyDoc_STRVAR(score_doc,
"score(table, tokens, n_reasons, layer_buckets, layer_values, family_cache, prefix_family,\n"
"      lgamma, large_tails, clue_type) -> (raw_logodds, clues)\n\n"
"Model.score's per-token work: table is the float32 log-odds table (its length a power of two);\n"
"layer_buckets/layer_values a personal layer's sorted int64 buckets and float32 values, or None;\n"
"family_cache a dict prefix -> family that prefix_family (tokens.prefix_family) fills; lgamma is\n"
"math.lgamma and large_tails chisquare.log_chi2_tails_large. raw_logodds is chi_square_logodds\n"
"of the votes (before compress); clues a tuple of clue_type(token, round(sigmoid(value), 4)),\n"
"strongest first, made as a frozen dataclass's __init__ makes them.");

static PyObject *score(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "score takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyType_Check(args[9]) || !PyType_HasFeature((PyTypeObject *)args[9], Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "clue_type must be a class (classifier.Clue)");
        return NULL;
    }
    PyObject *cache = args[5], *prefix_family = args[6];
    Tails tails = {args[7], args[8]};
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "family_cache must be a dict");
        return NULL;
    }
    Py_ssize_t n_reasons = PyNumber_AsSsize_t(args[2], NULL); /* clamped, as a slice bound */
    if (n_reasons == -1 && PyErr_Occurred())
        return NULL;
    if ((args[3] == Py_None) != (args[4] == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "layer_buckets and layer_values go together");
        return NULL;
    }
    Py_buffer table, lb = {0}, lv = {0};
    int with_layer = args[3] != Py_None;
    if (get_array(args[0], "table", "f", 4, &table) < 0)
        return NULL;
    PyObject *result = NULL, *tokens = NULL;
    Vote *votes = NULL;
    Py_ssize_t size = table.shape[0];
    if (size < 1 || (size & (size - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "table length %zd is not a power of two", size);
        goto done_table;
    }
    if (with_layer) {
        if (get_array(args[3], "layer_buckets", "ql", 8, &lb) < 0)
            goto done_table;
        if (get_array(args[4], "layer_values", "f", 4, &lv) < 0)
            goto done_lb;
        if (lb.shape[0] != lv.shape[0]) {
            PyErr_SetString(PyExc_ValueError, "layer_buckets and layer_values differ in length");
            goto done_lv;
        }
    }
    /* a list is copied: Python code called back (prefix_family) must not free tokens in use */
    tokens = PyList_Check(args[1]) ? PySequence_Tuple(args[1])
                                   : PySequence_Fast(args[1], "tokens must be iterable");
    if (!tokens)
        goto done_lv;
    votes = PyMem_New(Vote, PySequence_Fast_GET_SIZE(tokens) + 1);
    if (!votes) {
        PyErr_NoMemory();
        goto done_lv;
    }
    Py_ssize_t nv;
    if (read_tokens(tokens, table.buf, (int64_t)size - 1, with_layer ? &lb : NULL, with_layer ? &lv : NULL,
                    votes, &nv) == 0)
        result = decide(PyModule_GetState(self), (PyTypeObject *)args[9], tokens, votes, nv, n_reasons, cache,
                        prefix_family, &tails);
done_lv:
    if (with_layer && lv.obj)
        PyBuffer_Release(&lv);
done_lb:
    if (with_layer && lb.obj)
        PyBuffer_Release(&lb);
done_table:
    PyBuffer_Release(&table);
    PyMem_Free(votes);
    Py_XDECREF(tokens);
    return result;
}

PyDoc_STRVAR(chi_square_doc,
"chi_square_logodds(votes, lgamma, large_tails) -> float\n\n"
"chisquare.chi_square_logodds of a sequence of floats, in C (for tests and callers with votes).");

static PyObject *chi_square_logodds(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "chi_square_logodds takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Tails tails = {args[1], args[2]};
    PyObject *seq = PyList_Check(args[0]) ? PySequence_Tuple(args[0])  /* __float__ may change a list */
                                          : PySequence_Fast(args[0], "votes must be a sequence of floats");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    double *v = PyMem_New(double, n + 1), raw;
    PyObject *result = NULL;
    if (!v) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        v[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v[i] == -1.0 && PyErr_Occurred())
            goto done;
    }
    if (chi_square(&tails, v, n, &raw) == 0)
        result = PyFloat_FromDouble(raw);
done:
    PyMem_Free(v);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"score", (PyCFunction)(void (*)(void))score, METH_FASTCALL, score_doc},
    {"chi_square_logodds", (PyCFunction)(void (*)(void))chi_square_logodds, METH_FASTCALL, chi_square_doc},
    {NULL, NULL, 0, NULL},
};

static int state_traverse(PyObject *m, visitproc visit, void *arg)
{
    State *st = PyModule_GetState(m);
    Py_VISIT(st->round_name);
    Py_VISIT(st->four);
    Py_VISIT(st->token_name);
    Py_VISIT(st->prob_name);
    return 0;
}

static int state_clear(PyObject *m)
{
    State *st = PyModule_GetState(m);
    Py_CLEAR(st->round_name);
    Py_CLEAR(st->four);
    Py_CLEAR(st->token_name);
    Py_CLEAR(st->prob_name);
    return 0;
}

static void state_free(void *m) { state_clear(m); }

static int state_init(PyObject *m)
{
    State *st = PyModule_GetState(m);
    st->round_name = PyUnicode_InternFromString("__round__");
    st->four = PyLong_FromLong(4);
    st->token_name = PyUnicode_InternFromString("token");
    st->prob_name = PyUnicode_InternFromString("spam_prob");
    return st->round_name && st->four && st->token_name && st->prob_name ? 0 : -1;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, state_init},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stronghold._scorecore",
    "The per-message part of classifier.Model.score in C (see stronghold/native/scorecore.c).",
    sizeof(State), methods, slots, state_traverse, state_clear, state_free,
};

PyMODINIT_FUNC PyInit__scorecore(void) { return PyModuleDef_Init(&module); }
