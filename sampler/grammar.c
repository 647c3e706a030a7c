/* grammar.c -- GBNF text -> the compiled grammar of grammar_internal.h.
 *
 * The accepted language is a documented subset of llama.cpp's GBNF:
 *
 *   rule        name ::= alternatives          "root" is the start rule
 *   alternatives  sequence ("|" sequence)*     an empty sequence matches ""
 *   sequence    item*
 *   item        primary postfix*
 *   primary     name | "literal" | [class] | [^class] | . | ( alternatives )
 *   postfix     *  +  ?  {m}  {m,}  {m,n}  {,n}     (m, n <= 100000)
 *   comment     # to the end of the line
 *
 * Names are letters, digits, '-' and '_'.  A rule ends at the end of its line,
 * except inside parentheses and right after "::=" or "|" -- so a long rule
 * continues with "a |" at the end of a line, as in llama.cpp.  Literals and
 * classes are UTF-8 text with the escapes \n \r \t \\ \" \' \[ \] \- \^ \/ and
 * \xHH \uHHHH \UHHHHHHHH, which name code points (so "\xe9" is U+00E9, two bytes
 * in UTF-8).  A class is a set of Unicode scalar values; [^...] is its complement
 * in U+0000..U+10FFFF (surrogates excluded) and `.` is any one scalar value,
 * newline included.  So every string of a grammar is valid UTF-8.
 * Not supported, and refused with an error naming the construct: token
 * references (<...>), rules defined twice, undefined rules, a missing root,
 * classes that match nothing, left recursion (a rule that can reach itself
 * before reading a byte: write the repetition with * or + instead), and rules
 * that can never finish (every alternative needs the rule again).
 *
 * Compilation (one pass, no syntax tree): each rule's alternatives are written as
 * element sequences straight from the text; groups, repetitions and non-ASCII
 * classes become rules of their own ("made" rules, named after the rule whose
 * text made them in messages).  x* is R ::= x R | "" (R is a tail call, so the
 * matcher's stack does not grow), x+ is x x*, x? is R ::= x | "", and x{m,n} is
 * m copies of x then a chain R_k ::= x R_{k-1} | "" of length n - m.  A class
 * becomes one terminal for its ASCII part plus one byte-range sequence per
 * UTF-8 block of its other code points (the standard split of a code point range
 * into ranges of UTF-8 byte sequences, as regex engines do).
 * Then the checks the matcher relies on (grammar_internal.h): every reachable
 * rule is productive (a worklist fixpoint), and no cycle of "left corner"
 * references (references preceded only by nullable elements) contains a non-tail
 * reference (Tarjan's strongly connected components).  Finally the bytes are
 * partitioned into classes that no terminal tells apart.
 */
#include "sampler/grammar_internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define G_MAX_ELEMS  (1 << 21) /* elements after expansion */
#define G_MAX_RULES  (1 << 20)
#define G_MAX_DEPTH  200    /* nested parentheses */
#define G_MAX_REPEAT 100000 /* m and n of {m,n} */

/* ---- Growing arrays (the out-of-memory policy: the capacity changes only after
 * a successful allocation, and the old block is kept on failure) ---------------- */

static int grow(void *pp, int *cap, int need, size_t elem)
{
    void **p = pp;
    if (need <= *cap) return 0;
    int nc = *cap > 0 ? *cap : 8;
    while (nc < need) {
        if (nc > INT_MAX / 2) return -1;
        nc *= 2;
    }
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

typedef struct {
    gelem *v;
    int n, cap;
} evec;

typedef struct {
    uint32_t lo, hi;
} cprange;

typedef struct {
    cprange *v;
    int n, cap;
} rvec;

typedef struct {
    const char *name; /* NULL for a rule the compiler made */
    int name_len;
    int defined;
    size_t off; /* named: definition, or first reference while undefined; made: its text */
    int owner;  /* made: the named rule whose text made it; named: itself */
    evec body;  /* alternatives, each closed by GE_END */
} brule;

typedef struct {
    uint32_t hash;
    int rule;
    cprange *ranges;
    int n;
} class_entry;

typedef struct {
    const char *s;
    size_t n, i;
    sampler_grammar_error *err;
    int rc; /* first failure: SAMPLER_EINVAL or SAMPLER_ENOMEM */
    brule *rules;
    int n_rules, cap_rules;
    int32_t *names; /* open addressing: named rule index + 1, 0 = empty */
    int names_cap, n_named;
    uint64_t (*sets)[4];
    int n_sets, cap_sets;
    int32_t *set_ht; /* open addressing: set index + 1 */
    int set_ht_cap;
    class_entry *classes; /* made rules of non-ASCII classes, by content */
    int n_classes, cap_classes;
    long n_elems;
    int depth;
    int cur; /* the named rule being parsed */
} gparser;

/* ---- Errors --------------------------------------------------------------------- */

static int fail(gparser *p, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(gparser *p, size_t at, const char *fmt, ...)
{
    if (p->rc) return p->rc;
    p->rc = SAMPLER_EINVAL;
    if (p->err) {
        if (at > p->n) at = p->n;
        int line = 1, col = 1;
        for (size_t k = 0; k < at; k++) {
            if (p->s[k] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        p->err->offset = at;
        p->err->line = line;
        p->err->column = col;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err->message, sizeof p->err->message, fmt, ap);
        va_end(ap);
    }
    return p->rc;
}

static int oom(gparser *p)
{
    if (!p->rc) {
        p->rc = SAMPLER_ENOMEM;
        if (p->err) {
            p->err->offset = p->i;
            p->err->line = p->err->column = 0;
            snprintf(p->err->message, sizeof p->err->message, "out of memory");
        }
    }
    return p->rc;
}

/* A printable rendering of the byte at s[at] for messages. */
static const char *show_char(const gparser *p, size_t at, char buf[8])
{
    if (at >= p->n) return "end of text";
    unsigned char c = (unsigned char)p->s[at];
    if (c >= 0x21 && c < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "0x%02X", c);
    return buf;
}

/* ---- Elements, rules, sets -------------------------------------------------------- */

static int epush(gparser *p, evec *v, int kind, int arg)
{
    if (++p->n_elems > G_MAX_ELEMS)
        return fail(p, p->i, "grammar too large (more than %d elements once repetitions are expanded)", G_MAX_ELEMS);
    if (grow(&v->v, &v->cap, v->n + 1, sizeof *v->v)) return oom(p);
    v->v[v->n++] = (gelem){ kind, arg };
    return 0;
}

static int eappend(gparser *p, evec *dst, const evec *src)
{
    if (grow(&dst->v, &dst->cap, dst->n + src->n, sizeof *dst->v)) return oom(p);
    if (src->n) memcpy(dst->v + dst->n, src->v, (size_t)src->n * sizeof *src->v);
    dst->n += src->n;
    return 0;
}

/* Push onto rule r's body (the rules array may move under a new_rule call, so
 * bodies are always reached through the index). */
static int rpush(gparser *p, int r, int kind, int arg) { return epush(p, &p->rules[r].body, kind, arg); }

static int new_rule(gparser *p, const char *name, int name_len, size_t off)
{
    if (p->n_rules >= G_MAX_RULES)
        return fail(p, off, "grammar too large (more than %d rules once expanded)", G_MAX_RULES);
    if (grow(&p->rules, &p->cap_rules, p->n_rules + 1, sizeof *p->rules)) return oom(p);
    int r = p->n_rules++;
    p->rules[r] = (brule){ .name = name, .name_len = name_len, .off = off, .owner = name ? r : p->cur };
    return r;
}

static uint32_t hash_bytes(const void *data, size_t n)
{
    const unsigned char *b = data;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t k = 0; k < n; k++) h = (h ^ b[k]) * 16777619u;
    return h;
}

static int names_rehash(gparser *p, int cap)
{
    int32_t *t = calloc((size_t)cap, sizeof *t);
    if (!t) return oom(p);
    for (int r = 0; r < p->n_rules; r++) {
        if (!p->rules[r].name) continue;
        uint32_t h = hash_bytes(p->rules[r].name, (size_t)p->rules[r].name_len) & (uint32_t)(cap - 1);
        while (t[h]) h = (h + 1) & (uint32_t)(cap - 1);
        t[h] = r + 1;
    }
    free(p->names);
    p->names = t;
    p->names_cap = cap;
    return 0;
}

/* The named rule `name`, created (undefined, first seen at off) if new.
 * Returns its index or a negative error. */
static int rule_named(gparser *p, const char *name, int len, size_t off)
{
    if (p->names_cap == 0 && names_rehash(p, 64)) return p->rc;
    uint32_t mask = (uint32_t)(p->names_cap - 1);
    uint32_t h = hash_bytes(name, (size_t)len) & mask;
    while (p->names[h]) {
        const brule *b = &p->rules[p->names[h] - 1];
        if (b->name_len == len && memcmp(b->name, name, (size_t)len) == 0) return p->names[h] - 1;
        h = (h + 1) & mask;
    }
    int r = new_rule(p, name, len, off);
    if (r < 0) return r;
    p->names[h] = r + 1;
    /* keep the table at most half full */
    if (2 * ++p->n_named >= p->names_cap && names_rehash(p, p->names_cap * 2)) return p->rc;
    return r;
}

static int set_rehash(gparser *p, int cap)
{
    int32_t *t = calloc((size_t)cap, sizeof *t);
    if (!t) return oom(p);
    for (int k = 0; k < p->n_sets; k++) {
        uint32_t h = hash_bytes(p->sets[k], 32) & (uint32_t)(cap - 1);
        while (t[h]) h = (h + 1) & (uint32_t)(cap - 1);
        t[h] = k + 1;
    }
    free(p->set_ht);
    p->set_ht = t;
    p->set_ht_cap = cap;
    return 0;
}

/* Index of the byte set (deduplicated), or a negative error. */
static int set_id(gparser *p, const uint64_t set[4])
{
    if (2 * (p->n_sets + 1) > p->set_ht_cap && set_rehash(p, p->set_ht_cap ? p->set_ht_cap * 2 : 256)) return p->rc;
    uint32_t mask = (uint32_t)(p->set_ht_cap - 1);
    uint32_t h = hash_bytes(set, 32) & mask;
    while (p->set_ht[h]) {
        if (memcmp(p->sets[p->set_ht[h] - 1], set, 32) == 0) return p->set_ht[h] - 1;
        h = (h + 1) & mask;
    }
    if (grow(&p->sets, &p->cap_sets, p->n_sets + 1, sizeof *p->sets)) return oom(p);
    memcpy(p->sets[p->n_sets], set, 32);
    p->set_ht[h] = p->n_sets + 1;
    return p->n_sets++;
}

static int push_byte_range(gparser *p, evec *v, unsigned lo, unsigned hi)
{
    uint64_t set[4] = { 0 };
    for (unsigned b = lo; b <= hi; b++) set[b >> 6] |= 1ull << (b & 63);
    int id = set_id(p, set);
    return id < 0 ? id : epush(p, v, GE_TERM, id);
}

/* ---- Lexical helpers -------------------------------------------------------------- */

static int is_name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static int at(const gparser *p, size_t k) { return k < p->n ? (unsigned char)p->s[k] : -1; }

/* Skip blanks and comments; newlines too when nl. */
static void skip(gparser *p, int nl)
{
    while (p->i < p->n) {
        int c = at(p, p->i);
        if (c == ' ' || c == '\t') {
            p->i++;
        } else if (c == '#') {
            while (p->i < p->n && p->s[p->i] != '\n' && p->s[p->i] != '\r') p->i++;
        } else if (nl && (c == '\n' || c == '\r')) {
            p->i++;
        } else {
            break;
        }
    }
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one UTF-8 character at p->i (strict: no overlongs, surrogates or values
 * past U+10FFFF).  Returns the code point or -1 (no error set). */
static long utf8_decode_at(gparser *p)
{
    int c0 = at(p, p->i);
    int need;
    long cp;
    if (c0 < 0x80) return p->i++, c0;
    if (c0 >= 0xC2 && c0 <= 0xDF)
        need = 1, cp = c0 & 0x1F;
    else if (c0 >= 0xE0 && c0 <= 0xEF)
        need = 2, cp = c0 & 0x0F;
    else if (c0 >= 0xF0 && c0 <= 0xF4)
        need = 3, cp = c0 & 0x07;
    else
        return -1;
    for (int k = 1; k <= need; k++) {
        int c = at(p, p->i + (size_t)k);
        if (c < 0 || (c & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (c & 0x3F);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    p->i += (size_t)need + 1;
    return cp;
}

/* One character of a literal or class: an escape or a UTF-8 character.
 * Returns the code point, or a negative error (set). */
static long parse_char(gparser *p)
{
    size_t start = p->i;
    int c = at(p, p->i);
    if (c != '\\') {
        long cp = utf8_decode_at(p);
        if (cp < 0) return fail(p, start, "invalid UTF-8 in the grammar text");
        return cp;
    }
    int e = at(p, p->i + 1);
    p->i += 2;
    int digits = 0;
    switch (e) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case '\\':
    case '"':
    case '\'':
    case '[':
    case ']':
    case '-':
    case '^':
    case '/': return e;
    case 'x': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    default:
        if (e < 0) return fail(p, start, "unfinished escape at the end of the text");
        {
            char b[8];
            return fail(p, start, "unknown escape '\\' followed by %s", show_char(p, start + 1, b));
        }
    }
    unsigned long v = 0;
    for (int k = 0; k < digits; k++) {
        int h = hexval(at(p, p->i));
        if (h < 0) return fail(p, start, "escape '\\%c' needs %d hex digits", e, digits);
        v = v * 16 + (unsigned long)h;
        p->i++;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return fail(p, start, "escape names U+%04lX, which is not a Unicode scalar value", v);
    return (long)v;
}

static int utf8_encode(uint32_t cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- Character classes ------------------------------------------------------------- */

static int cmp_range(const void *a, const void *b)
{
    const cprange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort and merge; then the complement if neg; surrogates removed. */
static int normalize(gparser *p, rvec *r, int neg)
{
    if (r->n > 1) qsort(r->v, (size_t)r->n, sizeof *r->v, cmp_range);
    int m = 0;
    for (int k = 0; k < r->n; k++) {
        if (m > 0 && r->v[k].lo <= r->v[m - 1].hi + 1) {
            if (r->v[k].hi > r->v[m - 1].hi) r->v[m - 1].hi = r->v[k].hi;
        } else {
            r->v[m++] = r->v[k];
        }
    }
    r->n = m;
    if (neg) {
        rvec c = { 0 };
        uint32_t next = 0;
        for (int k = 0; k <= r->n; k++) {
            uint32_t lo = k < r->n ? r->v[k].lo : 0x110000;
            if (lo > next) {
                if (grow(&c.v, &c.cap, c.n + 1, sizeof *c.v)) {
                    free(c.v);
                    return oom(p);
                }
                c.v[c.n++] = (cprange){ next, lo - 1 };
            }
            if (k < r->n) next = r->v[k].hi + 1;
        }
        free(r->v);
        *r = c;
    }
    /* cut out U+D800..U+DFFF */
    rvec o = { 0 };
    for (int k = 0; k < r->n; k++) {
        cprange a = r->v[k];
        cprange parts[2];
        int np = 0;
        if (a.hi < 0xD800 || a.lo > 0xDFFF) {
            parts[np++] = a;
        } else {
            if (a.lo < 0xD800) parts[np++] = (cprange){ a.lo, 0xD7FF };
            if (a.hi > 0xDFFF) parts[np++] = (cprange){ 0xE000, a.hi };
        }
        for (int q = 0; q < np; q++) {
            if (grow(&o.v, &o.cap, o.n + 1, sizeof *o.v)) {
                free(o.v);
                return oom(p);
            }
            o.v[o.n++] = parts[q];
        }
    }
    free(r->v);
    *r = o;
    return 0;
}

/* Append to rule `rule` one alternative per UTF-8 byte-range sequence of the code
 * points lo..hi (lo >= 0x80, no surrogates inside). */
static int utf8_split(gparser *p, int rule, uint32_t lo, uint32_t hi)
{
    static const uint32_t limits[3] = { 0x7F, 0x7FF, 0xFFFF };
    if (lo > hi) return 0;
    for (int k = 0; k < 3; k++) {
        if (lo <= limits[k] && limits[k] < hi) {
            int rc = utf8_split(p, rule, lo, limits[k]);
            return rc ? rc : utf8_split(p, rule, limits[k] + 1, hi);
        }
    }
    for (int k = 1; k < 4; k++) {
        uint32_t m = (1u << (6 * k)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                int rc = utf8_split(p, rule, lo, lo | m);
                return rc ? rc : utf8_split(p, rule, (lo | m) + 1, hi);
            }
            if ((hi & m) != m) {
                int rc = utf8_split(p, rule, lo, (hi & ~m) - 1);
                return rc ? rc : utf8_split(p, rule, hi & ~m, hi);
            }
        }
    }
    unsigned char a[4], b[4];
    int n = utf8_encode(lo, a);
    utf8_encode(hi, b);
    for (int k = 0; k < n; k++) {
        int rc = push_byte_range(p, &p->rules[rule].body, a[k], b[k]);
        if (rc) return rc;
    }
    return rpush(p, rule, GE_END, 0);
}

/* Emit the class given by normalized ranges into v: one terminal if it is all
 * ASCII, else a reference to a made rule (shared by equal classes). */
static int emit_class(gparser *p, evec *v, const rvec *r, size_t off)
{
    uint64_t ascii[4] = { 0 };
    int multi = 0;
    for (int k = 0; k < r->n; k++) {
        for (uint32_t c = r->v[k].lo; c <= r->v[k].hi && c < 0x80; c++) ascii[c >> 6] |= 1ull << (c & 63);
        multi |= r->v[k].hi >= 0x80;
    }
    if (!multi) {
        int id = set_id(p, ascii);
        return id < 0 ? id : epush(p, v, GE_TERM, id);
    }
    uint32_t h = hash_bytes(r->v, (size_t)r->n * sizeof *r->v);
    for (int k = 0; k < p->n_classes; k++) {
        const class_entry *ce = &p->classes[k];
        if (ce->hash == h && ce->n == r->n && !memcmp(ce->ranges, r->v, (size_t)r->n * sizeof *r->v))
            return epush(p, v, GE_REF, ce->rule);
    }
    int rule = new_rule(p, NULL, 0, off);
    if (rule < 0) return rule;
    int rc = 0;
    if (ascii[0] | ascii[1]) {
        int id = set_id(p, ascii);
        if (id < 0) return id;
        rc = rpush(p, rule, GE_TERM, id);
        rc = rc ? rc : rpush(p, rule, GE_END, 0);
    }
    for (int k = 0; !rc && k < r->n; k++) {
        uint32_t lo = r->v[k].lo < 0x80 ? 0x80 : r->v[k].lo;
        if (r->v[k].hi >= 0x80) rc = utf8_split(p, rule, lo, r->v[k].hi);
    }
    if (rc) return rc;
    if (grow(&p->classes, &p->cap_classes, p->n_classes + 1, sizeof *p->classes)) return oom(p);
    cprange *copy = malloc((size_t)r->n * sizeof *copy);
    if (!copy) return oom(p);
    memcpy(copy, r->v, (size_t)r->n * sizeof *copy);
    p->classes[p->n_classes++] = (class_entry){ h, rule, copy, r->n };
    return epush(p, v, GE_REF, rule);
}

static int parse_class(gparser *p, evec *v)
{
    size_t start = p->i;
    p->i++; /* '[' */
    int neg = 0;
    if (at(p, p->i) == '^') {
        neg = 1;
        p->i++;
    }
    rvec r = { 0 };
    int rc = 0;
    while (!rc && p->i < p->n && p->s[p->i] != ']') {
        long lo = parse_char(p), hi = lo;
        if (lo < 0) {
            rc = (int)lo;
            break;
        }
        if (at(p, p->i) == '-' && at(p, p->i + 1) != ']' && p->i + 1 < p->n) {
            size_t dash = p->i;
            p->i++;
            hi = parse_char(p);
            if (hi < 0) {
                rc = (int)hi;
                break;
            }
            if (hi < lo) {
                rc = fail(p, dash, "character range is reversed (U+%04lX after U+%04lX)", hi, lo);
                break;
            }
        }
        if (grow(&r.v, &r.cap, r.n + 1, sizeof *r.v)) {
            rc = oom(p);
            break;
        }
        r.v[r.n++] = (cprange){ (uint32_t)lo, (uint32_t)hi };
    }
    if (!rc && p->i >= p->n) rc = fail(p, start, "unterminated character class");
    if (!rc) {
        p->i++; /* ']' */
        rc = normalize(p, &r, neg);
    }
    if (!rc && r.n == 0) rc = fail(p, start, "character class matches nothing");
    if (!rc) rc = emit_class(p, v, &r, start);
    free(r.v);
    return rc;
}

static int emit_any(gparser *p, evec *v, size_t off)
{
    rvec r = { 0 };
    int rc = normalize(p, &r, 1); /* complement of nothing */
    if (!rc) rc = emit_class(p, v, &r, off);
    free(r.v);
    return rc;
}

static int parse_literal(gparser *p, evec *v)
{
    size_t start = p->i;
    p->i++; /* '"' */
    while (p->i < p->n && p->s[p->i] != '"') {
        long cp = parse_char(p);
        if (cp < 0) return (int)cp;
        unsigned char b[4];
        int nb = utf8_encode((uint32_t)cp, b);
        for (int k = 0; k < nb; k++) {
            int rc = push_byte_range(p, v, b[k], b[k]);
            if (rc) return rc;
        }
    }
    if (p->i >= p->n) return fail(p, start, "unterminated string literal");
    p->i++;
    return 0;
}

/* ---- Repetitions ---------------------------------------------------------------------- */

/* The item's elements as one element: itself, or a made rule holding the sequence. */
static int single(gparser *p, evec *it, size_t off, gelem *out)
{
    if (it->n == 1) {
        *out = it->v[0];
        return 0;
    }
    int r = new_rule(p, NULL, 0, off);
    if (r < 0) return r;
    int rc = eappend(p, &p->rules[r].body, it);
    rc = rc ? rc : rpush(p, r, GE_END, 0);
    *out = (gelem){ GE_REF, r };
    return rc;
}

/* R ::= e R | ""  (tail call)  -> the rule index */
static int make_star(gparser *p, gelem e, size_t off)
{
    int r = new_rule(p, NULL, 0, off);
    if (r < 0) return r;
    int rc = rpush(p, r, e.kind, e.arg);
    rc = rc ? rc : rpush(p, r, GE_REF, r);
    rc = rc ? rc : rpush(p, r, GE_END, 0);
    rc = rc ? rc : rpush(p, r, GE_END, 0);
    return rc ? rc : r;
}

/* Replace the item's elements by x{m,n} (n < 0: no upper bound). */
static int repeat(gparser *p, evec *it, long m, long n, size_t off)
{
    if (it->n == 0) return 0; /* "" repeated is "" */
    long extra = n < 0 ? 1 : n - m;
    if ((long)m + 5 * extra > G_MAX_ELEMS)
        return fail(p, off, "repetition {%ld,%ld} makes the grammar too large", m, n);
    gelem e;
    int rc = single(p, it, off, &e);
    if (rc) return rc;
    it->n = 0;
    for (long k = 0; k < m; k++)
        if ((rc = epush(p, it, e.kind, e.arg))) return rc;
    if (n < 0) {
        int r = make_star(p, e, off);
        return r < 0 ? r : epush(p, it, GE_REF, r);
    }
    int prev = -1; /* O_j ::= e O_{j-1} | "" */
    for (long k = 0; k < n - m; k++) {
        int r = new_rule(p, NULL, 0, off);
        if (r < 0) return r;
        rc = rpush(p, r, e.kind, e.arg);
        if (!rc && prev >= 0) rc = rpush(p, r, GE_REF, prev);
        rc = rc ? rc : rpush(p, r, GE_END, 0);
        rc = rc ? rc : rpush(p, r, GE_END, 0);
        if (rc) return rc;
        prev = r;
    }
    return prev >= 0 ? epush(p, it, GE_REF, prev) : 0;
}

static long parse_count(gparser *p)
{
    size_t start = p->i;
    long v = 0;
    if (at(p, p->i) < '0' || at(p, p->i) > '9') return -1;
    while (at(p, p->i) >= '0' && at(p, p->i) <= '9') {
        v = v * 10 + (at(p, p->i) - '0');
        if (v > G_MAX_REPEAT) return fail(p, start, "repetition count over %d", G_MAX_REPEAT), -2;
        p->i++;
    }
    return v;
}

/* {m} {m,} {m,n} {,n} at p->i */
static int parse_braces(gparser *p, evec *it)
{
    size_t start = p->i;
    p->i++;
    skip(p, 0);
    long m = parse_count(p), n;
    if (m == -2) return p->rc;
    skip(p, 0);
    if (at(p, p->i) == ',') {
        p->i++;
        skip(p, 0);
        n = parse_count(p);
        if (n == -2) return p->rc;
        if (m < 0 && n < 0) return fail(p, start, "repetition needs a count: {m}, {m,}, {m,n} or {,n}");
        if (m < 0) m = 0;
    } else {
        if (m < 0) return fail(p, start, "repetition needs a count: {m}, {m,}, {m,n} or {,n}");
        n = m;
    }
    skip(p, 0);
    if (at(p, p->i) != '}') return fail(p, start, "repetition is missing its closing '}'");
    p->i++;
    if (n >= 0 && n < m) return fail(p, start, "repetition {%ld,%ld} has its maximum below its minimum", m, n);
    return repeat(p, it, m, n, start);
}

/* ---- Rules, alternatives, sequences ------------------------------------------------------ */

static int parse_alternatives(gparser *p, int rule, int nested);

static int parse_primary(gparser *p, evec *it)
{
    int c = at(p, p->i);
    size_t start = p->i;
    char b[8];
    if (c == '"') return parse_literal(p, it);
    if (c == '[') return parse_class(p, it);
    if (c == '.') {
        p->i++;
        return emit_any(p, it, start);
    }
    if (c == '(') {
        if (p->depth >= G_MAX_DEPTH) return fail(p, start, "parentheses nested more than %d deep", G_MAX_DEPTH);
        p->i++;
        int r = new_rule(p, NULL, 0, start);
        if (r < 0) return r;
        p->depth++;
        skip(p, 1);
        int rc = parse_alternatives(p, r, 1);
        p->depth--;
        if (rc) return rc;
        skip(p, 1);
        if (at(p, p->i) != ')')
            return fail(p, p->i, "expected ')' to close the group opened at offset %zu, found %s", start,
                        show_char(p, p->i, b));
        p->i++;
        return epush(p, it, GE_REF, r);
    }
    if (is_name_char(c)) {
        while (p->i < p->n && is_name_char(at(p, p->i))) p->i++;
        int r = rule_named(p, p->s + start, (int)(p->i - start), start);
        return r < 0 ? r : epush(p, it, GE_REF, r);
    }
    if (c == '<') return fail(p, start, "token references (<...>) are not supported");
    return fail(p, start, "unexpected %s", show_char(p, start, b));
}

static int parse_sequence(gparser *p, evec *seq, int nested)
{
    for (;;) {
        skip(p, nested);
        int c = at(p, p->i);
        if (c < 0 || c == '|' || c == ')' || c == '\n' || c == '\r') return 0;
        evec it = { 0 };
        int rc = parse_primary(p, &it);
        while (!rc) {
            skip(p, nested);
            c = at(p, p->i);
            if (c == '*' || c == '+' || c == '?') {
                size_t off = p->i++;
                rc = repeat(p, &it, c == '+' ? 1 : 0, c == '?' ? 1 : -1, off);
            } else if (c == '{') {
                rc = parse_braces(p, &it);
            } else {
                break;
            }
        }
        if (!rc) rc = eappend(p, seq, &it);
        free(it.v);
        if (rc) return rc;
    }
}

static int parse_alternatives(gparser *p, int rule, int nested)
{
    for (;;) {
        evec seq = { 0 };
        int rc = parse_sequence(p, &seq, nested);
        if (!rc) rc = eappend(p, &p->rules[rule].body, &seq);
        free(seq.v);
        rc = rc ? rc : rpush(p, rule, GE_END, 0);
        if (rc) return rc;
        skip(p, nested);
        if (at(p, p->i) != '|') return 0;
        p->i++;
        skip(p, 1);
    }
}

static int parse_rules(gparser *p)
{
    char b[8];
    skip(p, 1);
    while (p->i < p->n) {
        size_t start = p->i;
        while (p->i < p->n && is_name_char(at(p, p->i))) p->i++;
        if (p->i == start) return fail(p, start, "expected a rule name, found %s", show_char(p, start, b));
        const char *name = p->s + start;
        int len = (int)(p->i - start);
        skip(p, 0);
        if (p->n - p->i < 3 || memcmp(p->s + p->i, "::=", 3) != 0)
            return fail(p, p->i, "expected '::=' after the rule name '%.*s'", len > 40 ? 40 : len, name);
        p->i += 3;
        int r = rule_named(p, name, len, start);
        if (r < 0) return r;
        if (p->rules[r].defined) return fail(p, start, "rule '%.*s' is defined twice", len > 40 ? 40 : len, name);
        p->rules[r].defined = 1;
        p->rules[r].off = start;
        p->cur = r;
        skip(p, 1);
        int rc = parse_alternatives(p, r, 0);
        if (rc) return rc;
        skip(p, 0);
        if (p->i < p->n && at(p, p->i) != '\n' && at(p, p->i) != '\r')
            return fail(p, p->i, "unexpected %s", show_char(p, p->i, b));
        skip(p, 1);
    }
    return 0;
}

/* ---- Checks on the flattened grammar --------------------------------------------------- */

/* A rule's name for messages: its own, or "a group/repetition in rule 'x'". */
static void rule_desc(const gparser *p, int r, char *buf, size_t n)
{
    const brule *b = &p->rules[r];
    const brule *o = &p->rules[b->owner];
    if (b->name)
        snprintf(buf, n, "rule '%.*s'", b->name_len > 40 ? 40 : b->name_len, b->name);
    else
        snprintf(buf, n, "a group or repetition in rule '%.*s'", o->name_len > 40 ? 40 : o->name_len,
                 o->name ? o->name : "?");
}

/* Rules that derive a finite string (productive) or the empty string (nullable):
 * the standard worklist fixpoint over per-alternative counters. */
static int derive(const sampler_grammar *g, const int32_t *alt_rule, const int32_t *occ_start, const int32_t *occ_alt,
                  int nullable, uint8_t *mark)
{
    int32_t *cnt = malloc((size_t)g->n_alts * sizeof *cnt);
    int32_t *work = malloc((size_t)(g->n_rules + 1) * sizeof *work);
    if (!cnt || !work) {
        free(cnt);
        free(work);
        return -1;
    }
    int nw = 0;
    memset(mark, 0, (size_t)g->n_rules);
    for (int a = 0; a < g->n_alts; a++) {
        int c = 0, blocked = 0;
        for (int q = g->alt_start[a]; g->elem[q].kind != GE_END; q++) {
            if (g->elem[q].kind == GE_REF)
                c++;
            else if (nullable)
                blocked = 1; /* a terminal is never empty */
        }
        cnt[a] = blocked ? INT32_MAX : c;
        if (c == 0 && !blocked && !mark[alt_rule[a]]) {
            mark[alt_rule[a]] = 1;
            work[nw++] = alt_rule[a];
        }
    }
    while (nw > 0) {
        int s = work[--nw];
        for (int k = occ_start[s]; k < occ_start[s + 1]; k++) {
            int a = occ_alt[k];
            if (cnt[a] == INT32_MAX) continue;
            if (--cnt[a] == 0 && !mark[alt_rule[a]]) {
                mark[alt_rule[a]] = 1;
                work[nw++] = alt_rule[a];
            }
        }
    }
    free(cnt);
    free(work);
    return 0;
}

typedef struct {
    int32_t from, to;
    int tail;
} lc_edge;

/* Tarjan's strongly connected components, iteratively (grammars may have
 * 10^5 rules in a chain).  comp[r] = component id; -1 for rules not visited. */
static int scc(int n, const int32_t *edge_start, const lc_edge *edges, const uint8_t *reach, int32_t *comp)
{
    int32_t *index = malloc((size_t)n * sizeof *index), *low = malloc((size_t)n * sizeof *low);
    int32_t *stack = malloc((size_t)n * sizeof *stack), *cs_node = malloc((size_t)n * sizeof *cs_node);
    int32_t *cs_edge = malloc((size_t)n * sizeof *cs_edge);
    uint8_t *on = calloc((size_t)n, 1);
    if (!index || !low || !stack || !cs_node || !cs_edge || !on) {
        free(index), free(low), free(stack), free(cs_node), free(cs_edge), free(on);
        return -1;
    }
    for (int v = 0; v < n; v++) index[v] = -1, comp[v] = -1;
    int counter = 0, sp = 0, ncomp = 0;
    for (int root = 0; root < n; root++) {
        if (!reach[root] || index[root] >= 0) continue;
        int cd = 0;
        cs_node[cd] = root;
        cs_edge[cd] = edge_start[root];
        cd++;
        index[root] = low[root] = counter++;
        stack[sp++] = root;
        on[root] = 1;
        while (cd > 0) {
            int v = cs_node[cd - 1];
            if (cs_edge[cd - 1] < edge_start[v + 1]) {
                int w = edges[cs_edge[cd - 1]++].to;
                if (index[w] < 0) {
                    index[w] = low[w] = counter++;
                    stack[sp++] = w;
                    on[w] = 1;
                    cs_node[cd] = w;
                    cs_edge[cd] = edge_start[w];
                    cd++;
                } else if (on[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            if (low[v] == index[v]) {
                int w;
                do {
                    w = stack[--sp];
                    on[w] = 0;
                    comp[w] = ncomp;
                } while (w != v);
                ncomp++;
            }
            cd--;
            if (cd > 0) {
                int u = cs_node[cd - 1];
                if (low[v] < low[u]) low[u] = low[v];
            }
        }
    }
    free(index), free(low), free(stack), free(cs_node), free(cs_edge), free(on);
    return 0;
}

static int check(gparser *p, sampler_grammar *g)
{
    int R = g->n_rules, rc = 0;
    int32_t *alt_rule = malloc((size_t)(g->n_alts + 1) * sizeof *alt_rule);
    int32_t *occ_start = calloc((size_t)R + 1, sizeof *occ_start);
    uint8_t *nullable = malloc((size_t)R + 1), *productive = malloc((size_t)R + 1);
    uint8_t *reach = calloc((size_t)R + 1, 1);
    int32_t *occ_alt = NULL, *work = NULL, *edge_start = NULL, *comp = NULL;
    lc_edge *edges = NULL;
    if (!alt_rule || !occ_start || !nullable || !productive || !reach) goto nomem;
    for (int r = 0; r < R; r++)
        for (int a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++) alt_rule[a] = r;
    /* occurrences of each rule, by alternative (CSR) */
    int n_occ = 0;
    for (int q = 0; q < g->n_elems; q++)
        if (g->elem[q].kind == GE_REF) {
            occ_start[g->elem[q].arg + 1]++;
            n_occ++;
        }
    for (int r = 0; r < R; r++) occ_start[r + 1] += occ_start[r];
    occ_alt = malloc((size_t)(n_occ + 1) * sizeof *occ_alt);
    work = malloc((size_t)(R + 1) * sizeof *work);
    if (!occ_alt || !work) goto nomem;
    {
        int32_t *fill = work; /* reused as a cursor per rule */
        memcpy(fill, occ_start, (size_t)R * sizeof *fill);
        for (int a = 0; a < g->n_alts; a++)
            for (int q = g->alt_start[a]; g->elem[q].kind != GE_END; q++)
                if (g->elem[q].kind == GE_REF) occ_alt[fill[g->elem[q].arg]++] = a;
    }
    if (derive(g, alt_rule, occ_start, occ_alt, 1, nullable) || derive(g, alt_rule, occ_start, occ_alt, 0, productive))
        goto nomem;
    /* reachable from the root */
    int nw = 0;
    reach[g->root] = 1;
    work[nw++] = g->root;
    while (nw > 0) {
        int r = work[--nw];
        for (int a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++)
            for (int q = g->alt_start[a]; g->elem[q].kind != GE_END; q++)
                if (g->elem[q].kind == GE_REF && !reach[g->elem[q].arg]) {
                    reach[g->elem[q].arg] = 1;
                    work[nw++] = g->elem[q].arg;
                }
    }
    /* An unproductive rule: name one whose every alternative refers to itself if
     * there is one (that is where the recursion lacks its way out). */
    int bad = -1, self_bad = -1;
    for (int r = 0; r < R && self_bad < 0; r++) {
        if (!reach[r] || productive[r]) continue;
        if (bad < 0) bad = r;
        int all_self = 1;
        for (int a = g->rule_alt[r]; a < g->rule_alt[r + 1] && all_self; a++) {
            int self = 0;
            for (int q = g->alt_start[a]; g->elem[q].kind != GE_END; q++)
                self |= g->elem[q].kind == GE_REF && g->elem[q].arg == r;
            all_self = self;
        }
        if (all_self) self_bad = r;
    }
    if (bad >= 0) {
        char d[120];
        int r = self_bad >= 0 ? self_bad : bad;
        rule_desc(p, r, d, sizeof d);
        rc = fail(p, p->rules[r].off, "%s can never finish: %s", d,
                  self_bad >= 0 ? "each of its alternatives needs it again"
                                : "each of its alternatives needs a rule that can never finish");
        goto out;
    }
    /* left-corner edges: references preceded only by nullable elements */
    edge_start = calloc((size_t)R + 1, sizeof *edge_start);
    if (!edge_start) goto nomem;
    int n_edges = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < R; r++) {
            if (!reach[r]) continue;
            for (int a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++) {
                for (int q = g->alt_start[a]; g->elem[q].kind == GE_REF; q++) {
                    int s = g->elem[q].arg;
                    if (pass == 0)
                        edge_start[r + 1]++;
                    else
                        edges[work[r]++] = (lc_edge){ r, s, g->elem[q + 1].kind == GE_END };
                    if (!nullable[s]) break;
                }
            }
        }
        if (pass == 0) {
            for (int r = 0; r < R; r++) edge_start[r + 1] += edge_start[r];
            n_edges = edge_start[R];
            edges = malloc((size_t)(n_edges + 1) * sizeof *edges);
            if (!edges) goto nomem;
            memcpy(work, edge_start, (size_t)R * sizeof *work);
        }
    }
    comp = malloc((size_t)(R + 1) * sizeof *comp);
    if (!comp || scc(R, edge_start, edges, reach, comp)) goto nomem;
    for (int k = 0; k < n_edges; k++) {
        if (!edges[k].tail && comp[edges[k].from] == comp[edges[k].to]) {
            char d[120];
            int r = edges[k].from;
            rule_desc(p, r, d, sizeof d);
            rc = fail(p, p->rules[r].off,
                      "%s is left-recursive (it can reach itself before reading anything); "
                      "write the repetition with * or + instead",
                      d);
            goto out;
        }
    }
    goto out;
nomem:
    rc = oom(p);
out:
    free(alt_rule), free(occ_start), free(nullable), free(productive), free(reach);
    free(occ_alt), free(work), free(edge_start), free(edges), free(comp);
    return rc;
}

/* Partition the bytes into classes no terminal set tells apart. */
static void byte_classes(sampler_grammar *g)
{
    uint8_t cls[256] = { 0 };
    int n = 1;
    memset(g->used_bytes, 0, sizeof g->used_bytes);
    for (int s = 0; s < g->n_sets && n < 256; s++) {
        int16_t map[256][2];
        for (int c = 0; c < n; c++) map[c][0] = map[c][1] = -1;
        int nn = 0;
        for (int b = 0; b < 256; b++) {
            int in = gset_has(g->sets[s], (unsigned)b);
            int16_t *slot = &map[cls[b]][in];
            if (*slot < 0) *slot = (int16_t)nn++;
            cls[b] = (uint8_t)*slot;
        }
        n = nn;
    }
    for (int s = 0; s < g->n_sets; s++)
        for (int w = 0; w < 4; w++) g->used_bytes[w] |= g->sets[s][w];
    g->n_classes = n;
    memcpy(g->byte_class, cls, sizeof cls);
    for (int b = 255; b >= 0; b--) g->class_rep[cls[b]] = (uint8_t)b;
}

/* ---- Entry points ------------------------------------------------------------------------ */

static void parser_release(gparser *p)
{
    for (int r = 0; r < p->n_rules; r++) free(p->rules[r].body.v);
    free(p->rules);
    free(p->names);
    free(p->sets);
    free(p->set_ht);
    for (int k = 0; k < p->n_classes; k++) free(p->classes[k].ranges);
    free(p->classes);
}

void sampler_grammar_free(sampler_grammar *g)
{
    if (!g) return;
    free(g->rule_alt);
    free(g->alt_start);
    free(g->elem);
    free(g->sets);
    free(g);
}

static int flatten(gparser *p, sampler_grammar *g)
{
    long n_elems = 0, n_alts = 0;
    for (int r = 0; r < p->n_rules; r++) {
        n_elems += p->rules[r].body.n;
        for (int q = 0; q < p->rules[r].body.n; q++) n_alts += p->rules[r].body.v[q].kind == GE_END;
    }
    g->n_rules = p->n_rules;
    g->n_elems = (int)n_elems;
    g->n_alts = (int)n_alts;
    g->rule_alt = malloc(((size_t)p->n_rules + 1) * sizeof *g->rule_alt);
    g->alt_start = malloc(((size_t)n_alts + 1) * sizeof *g->alt_start);
    g->elem = malloc(((size_t)n_elems + 1) * sizeof *g->elem);
    g->sets = malloc(((size_t)p->n_sets + 1) * sizeof *g->sets);
    if (!g->rule_alt || !g->alt_start || !g->elem || !g->sets) return oom(p);
    int e = 0, a = 0;
    for (int r = 0; r < p->n_rules; r++) {
        g->rule_alt[r] = a;
        const evec *b = &p->rules[r].body;
        int new_alt = 1;
        for (int q = 0; q < b->n; q++) {
            if (new_alt) g->alt_start[a++] = e;
            g->elem[e++] = b->v[q];
            new_alt = b->v[q].kind == GE_END;
        }
    }
    g->rule_alt[p->n_rules] = a;
    g->n_sets = p->n_sets;
    if (p->n_sets) memcpy(g->sets, p->sets, (size_t)p->n_sets * sizeof *g->sets);
    return 0;
}

int sampler_grammar_parse(sampler_grammar **out, const char *text, size_t len, sampler_grammar_error *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!out || (!text && len > 0)) return SAMPLER_EINVAL;
    *out = NULL;
    gparser p = { .s = text ? text : "", .n = len, .err = err, .cur = 0 };
    int rc = parse_rules(&p);
    int root = -1;
    if (!rc) {
        for (int r = 0; r < p.n_rules && !rc; r++) {
            const brule *b = &p.rules[r];
            if (b->name && !b->defined)
                rc = fail(&p, b->off, "undefined rule '%.*s'", b->name_len > 40 ? 40 : b->name_len, b->name);
            if (b->name && b->name_len == 4 && !memcmp(b->name, "root", 4)) root = r;
        }
        if (!rc && root < 0) rc = fail(&p, 0, "no rule named 'root' (the start rule)");
    }
    sampler_grammar *g = NULL;
    if (!rc) {
        g = calloc(1, sizeof *g);
        if (!g) rc = oom(&p);
    }
    if (!rc) {
        g->root = root;
        rc = flatten(&p, g);
    }
    if (!rc) rc = check(&p, g);
    if (!rc) byte_classes(g);
    parser_release(&p);
    if (rc) {
        sampler_grammar_free(g);
        return rc;
    }
    *out = g;
    return SAMPLER_OK;
}

int sampler_grammar_uses_byte(const sampler_grammar *g, unsigned char b) { return g ? gset_has(g->used_bytes, b) : 0; }
