/* chat_template.c -- a model's chat template (Jinja) rendered by a small Jinja evaluator.
 *
 * Why an evaluator and not recognition.  A chat template is a program, and the same
 * family varies between models in ways that change the text: SmolLM2 inserts a default
 * system turn when there is none, Qwen2.5 another ("You are Qwen, ..."), Llama 2 folds the
 * system message into the first [INST], Gemma refuses a system turn, Llama 3 trims every
 * message, Phi-3 variants differ in whether the prompt starts with BOS.  Recognising the
 * family by its markers and re-implementing it in C would render some of these wrongly
 * without noticing; evaluating the template the model ships renders what its authors
 * wrote, and a template that uses something this evaluator lacks fails loudly (a
 * start-up warning, /v1/models says so) instead of rendering wrongly.  Markers are still
 * used, but only to name the family in logs and /v1/models (model_chat_template_family).
 *
 * The subset is what chat templates on Hugging Face use, rendered the way transformers'
 * apply_chat_template renders them (jinja2 with trim_blocks and lstrip_blocks):
 *   - text, {{ expr }}, {% stmt %}, {# comment #}, whitespace control "-" (and "+");
 *   - if / elif / else, for (one or two targets, "if" filter, else, loop.index, index0,
 *     revindex, revindex0, first, last, length, previtem, nextitem), break / continue,
 *     set (name, namespace attribute, block form), generation blocks (rendered as is);
 *   - literals (strings with escapes, numbers, true/false/none in both cases, lists,
 *     dicts), attribute and item access, slices with steps, calls with keyword arguments,
 *     filters, "is" tests, not / and / or, in / not in, comparisons, + - * / // % ** ~,
 *     the conditional expression;
 *   - globals raise_exception, namespace, range, strftime_now, dict; the filters, tests
 *     and string/dict methods listed in the tables below.
 * Not supported (MODEL_ECHAT_UNSUPPORTED, with the construct's name): macros, call /
 * filter blocks, include / import / extends, raw blocks.  Values follow Python's rules
 * (truthiness, ==, str() of None/True/lists, repr quoting); an undefined name renders as
 * "", is false and iterates as empty; an attribute of an undefined value is undefined.
 *
 * Memory: a compiled template lives in one arena; each render has its own arena for
 * values, freed at the end, so a render may run on any thread.  Errors (syntax, type,
 * limits, out of memory) unwind with longjmp to the entry point, which frees the render's
 * memory: nothing else is held between the jump and its target.  Limits: 8 MiB of output,
 * 64 MiB of working memory, 1,000,000 loop iterations, expression nesting 200.
 */
#include "model/model.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CT_MAX_OUTPUT (8u << 20)
#define CT_MAX_STEPS  1000000L
#define CT_MAX_DEPTH  200
#define CT_MAX_MEMORY (64u << 20) /* working memory of one compile or render */

/* ---- Arena ------------------------------------------------------------------------- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
} arena_block;

typedef struct {
    arena_block *head;
    size_t total; /* bytes taken from malloc */
    int over;     /* the last NULL was the budget, not malloc */
} arena;

static void arena_free(arena *a)
{
    arena_block *b = a->head;
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* NULL when memory runs out or the budget (CT_MAX_MEMORY) would be passed (callers unwind). */
static void *arena_alloc(arena *a, size_t n)
{
    if (n > CT_MAX_MEMORY) {
        a->over = 1;
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 60000 ? n : 60000;
        if (a->total + cap > CT_MAX_MEMORY) {
            a->over = 1;
            return NULL;
        }
        arena_block *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        a->total += cap;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        a->head = nb;
        b = nb;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    return p;
}

/* ---- Errors ------------------------------------------------------------------------- */

typedef struct {
    jmp_buf jb;
    arena *mem; /* where nodes (compile) or values (render) go */
    char *err;
    size_t errlen;
    int code;
} failer;

__attribute__((noreturn, format(printf, 4, 5))) static void fail(failer *f, int code, int line, const char *fmt, ...)
{
    if (f->err && f->errlen) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (line > 0 && code != MODEL_ECHAT_RAISE)
            snprintf(f->err, f->errlen, "chat template line %d: %s", line, msg);
        else
            snprintf(f->err, f->errlen, "%s", msg);
    }
    f->code = code;
    longjmp(f->jb, 1);
}

static void *xalloc(failer *f, size_t n)
{
    void *p = arena_alloc(f->mem, n ? n : 1);
    if (!p && f->mem->over)
        fail(f, MODEL_ECHAT_EVAL, 0, "the template needs more than %u MiB of memory", CT_MAX_MEMORY >> 20);
    if (!p) fail(f, MODEL_ENOMEM, 0, "out of memory");
    return p;
}

/* ---- Values -------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    size_t n;
} str_t;

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC, V_METHOD };

typedef struct value value;
typedef struct vlist vlist;
typedef struct vdict vdict;

struct value {
    int k;
    union {
        int b;
        long long i;
        double f;
        str_t s;
        vlist *l;
        vdict *d;
        int fn; /* V_FUNC: global function id */
        struct {
            int id;
            value *self;
        } m; /* V_METHOD: method id, receiver */
    } u;
};

struct vlist {
    value *v;
    size_t n, cap;
};

struct vdict {
    str_t *key;
    value *v;
    size_t n, cap;
    int ns; /* a namespace(): its attributes may be set */
};

static const value UNDEF = { V_UNDEF, { 0 } };
static const value NONE = { V_NONE, { 0 } };

static value vbool(int b)
{
    value v = { V_BOOL, { 0 } };
    v.u.b = !!b;
    return v;
}
static value vint(long long i)
{
    value v = { V_INT, { 0 } };
    v.u.i = i;
    return v;
}
static value vfloat(double f)
{
    value v = { V_FLOAT, { 0 } };
    v.u.f = f;
    return v;
}
static value vstr(const char *s, size_t n)
{
    value v = { V_STR, { 0 } };
    v.u.s.s = s;
    v.u.s.n = n;
    return v;
}

static int str_eq(str_t a, const char *b)
{
    size_t n = strlen(b);
    return a.n == n && memcmp(a.s, b, n) == 0;
}

static int str_same(str_t a, str_t b) { return a.n == b.n && (a.n == 0 || memcmp(a.s, b.s, a.n) == 0); }

static vlist *list_new(failer *f, size_t cap)
{
    vlist *l = xalloc(f, sizeof *l);
    l->n = 0;
    l->cap = cap ? cap : 4;
    l->v = xalloc(f, l->cap * sizeof *l->v);
    return l;
}

static void list_push(failer *f, vlist *l, value v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap * 2;
        value *nv = xalloc(f, cap * sizeof *nv);
        memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

static vdict *dict_new(failer *f, size_t cap)
{
    vdict *d = xalloc(f, sizeof *d);
    d->n = 0;
    d->ns = 0;
    d->cap = cap ? cap : 4;
    d->key = xalloc(f, d->cap * sizeof *d->key);
    d->v = xalloc(f, d->cap * sizeof *d->v);
    return d;
}

static value *dict_find(const vdict *d, str_t k)
{
    for (size_t i = 0; i < d->n; i++)
        if (str_same(d->key[i], k)) return &d->v[i];
    return NULL;
}

static void dict_set(failer *f, vdict *d, str_t k, value v)
{
    value *p = dict_find(d, k);
    if (p) {
        *p = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        str_t *nk = xalloc(f, cap * sizeof *nk);
        value *nv = xalloc(f, cap * sizeof *nv);
        memcpy(nk, d->key, d->n * sizeof *nk);
        memcpy(nv, d->v, d->n * sizeof *nv);
        d->key = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->key[d->n] = k;
    d->v[d->n++] = v;
}

static value vlistv(vlist *l)
{
    value v = { V_LIST, { 0 } };
    v.u.l = l;
    return v;
}
static value vdictv(vdict *d)
{
    value v = { V_DICT, { 0 } };
    v.u.d = d;
    return v;
}

/* ---- Growing byte buffers (render output, string building) ---------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void buf_put(failer *f, buf_t *b, const void *s, size_t n)
{
    if (n == 0) return;
    if (b->n + n > CT_MAX_OUTPUT) fail(f, MODEL_ECHAT_EVAL, 0, "the rendered text exceeds %u bytes", CT_MAX_OUTPUT);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = xalloc(f, cap); /* arena: the old copy stays until the render ends */
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_puts(failer *f, buf_t *b, const char *s) { buf_put(f, b, s, strlen(s)); }

static void buf_printf(failer *f, buf_t *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void buf_printf(failer *f, buf_t *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_put(f, b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static str_t buf_str(buf_t *b) { return (str_t){ b->p ? b->p : "", b->n }; }

/* ---- Template lexing: text and tags ---------------------------------------------------- */

enum { SEG_TEXT, SEG_EXPR, SEG_STMT };

typedef struct {
    int kind;
    str_t s; /* text, or the tag's inside without the whitespace-control marks */
    int line;
} segment;

static int line_of(const char *src, const char *p)
{
    int line = 1;
    for (const char *q = src; q < p; q++) line += *q == '\n';
    return line;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* End of the tag that opens at p (p[0..1] = "{{" / "{%" / "{#"): the position of its closing
 * pair, skipping quoted strings inside expressions; NULL if unterminated. */
static const char *tag_end(const char *p, const char *end)
{
    char open = p[1], close = open == '{' ? '}' : open;
    const char *q = p + 2;
    while (q + 1 < end) {
        if (open != '#' && (*q == '\'' || *q == '"')) {
            char quote = *q++;
            while (q < end && *q != quote) q += *q == '\\' && q + 1 < end ? 2 : 1;
            if (q < end) q++;
            continue;
        }
        if (q[0] == close && q[1] == '}') return q;
        q++;
    }
    return NULL;
}

/* Split src into segments, applying "-" whitespace control, trim_blocks (the first newline
 * after a block or comment tag goes) and lstrip_blocks (spaces and tabs from the start of
 * a line up to a block or comment tag go, unless the tag opens with "+"). */
static segment *lex_template(failer *f, const char *src, size_t len, size_t *n_out)
{
    const char *end = src + len;
    size_t cap = 64, n = 0;
    segment *seg = xalloc(f, cap * sizeof *seg);
    const char *pos = src;
    int strip_next = 0, trim_nl = 0;
    while (pos <= end) {
        const char *j = pos;
        while (j + 1 < end && !(j[0] == '{' && (j[1] == '{' || j[1] == '%' || j[1] == '#'))) j++;
        if (j + 1 >= end) j = end;
        const char *ts = pos, *te = j;
        if (strip_next)
            while (ts < te && is_ws(*ts)) ts++;
        else if (trim_nl) {
            if (ts < te && *ts == '\n')
                ts++;
            else if (te - ts >= 2 && ts[0] == '\r' && ts[1] == '\n')
                ts += 2;
        }
        int kind = j < end ? j[1] : 0;
        if (j < end) {
            char mark = j + 2 < end ? j[2] : 0;
            if (mark == '-') {
                while (te > ts && is_ws(te[-1])) te--;
            } else if ((kind == '%' || kind == '#') && mark != '+') {
                const char *q = te;
                while (q > ts && (q[-1] == ' ' || q[-1] == '\t')) q--;
                /* only when the tag starts its line (what precedes is a newline or the start) */
                if (q == src || q[-1] == '\n') te = q;
            }
        }
        if (te > ts) {
            if (n == cap) {
                segment *ns = xalloc(f, 2 * cap * sizeof *ns);
                memcpy(ns, seg, n * sizeof *ns);
                seg = ns;
                cap *= 2;
            }
            seg[n++] = (segment){ SEG_TEXT, { ts, (size_t)(te - ts) }, line_of(src, ts) };
        }
        if (j >= end) break;
        const char *close = tag_end(j, end);
        if (!close) fail(f, MODEL_EFORMAT, line_of(src, j), "unterminated tag '%.2s'", j);
        const char *is = j + 2, *ie = close;
        if (is < ie && (*is == '-' || *is == '+')) is++;
        int end_minus = ie > is && ie[-1] == '-';
        if (end_minus || (ie > is && ie[-1] == '+')) ie--;
        if (kind != '#') {
            if (n == cap) {
                segment *ns = xalloc(f, 2 * cap * sizeof *ns);
                memcpy(ns, seg, n * sizeof *ns);
                seg = ns;
                cap *= 2;
            }
            seg[n++] = (segment){ kind == '{' ? SEG_EXPR : SEG_STMT, { is, (size_t)(ie - is) }, line_of(src, j) };
        }
        pos = close + 2;
        strip_next = end_minus;
        trim_nl = kind != '{' && !end_minus;
    }
    *n_out = n;
    return seg;
}

/* ---- Expression tokens ---------------------------------------------------------------------- */

enum { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP };

typedef struct {
    int k;
    str_t s; /* name, operator spelling, or the decoded string */
    long long i;
    double f;
} token;

typedef struct {
    failer *f;
    token *t;
    size_t n, pos;
    int line;
    int depth;
} parser;

static str_t unescape(failer *f, const char *s, size_t n, int line)
{
    char *o = xalloc(f, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char c = s[++i];
        switch (c) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '0': o[k++] = '\0'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case '\n': break; /* a backslash-newline continues the line */
        case 'x':
        case 'u':
        case 'U': {
            int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            unsigned long cp = 0;
            if (i + (size_t)digits > n - 1) fail(f, MODEL_EFORMAT, line, "bad escape \\%c", c);
            for (int d = 0; d < digits; d++) {
                char h = s[++i];
                int v = h >= '0' && h <= '9'   ? h - '0'
                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                               : -1;
                if (v < 0) fail(f, MODEL_EFORMAT, line, "bad escape \\%c", c);
                cp = cp * 16 + (unsigned long)v;
            }
            if (cp < 0x80)
                o[k++] = (char)cp;
            else if (cp < 0x800) {
                o[k++] = (char)(0xC0 | cp >> 6);
                o[k++] = (char)(0x80 | (cp & 63));
            } else if (cp < 0x10000) {
                o[k++] = (char)(0xE0 | cp >> 12);
                o[k++] = (char)(0x80 | (cp >> 6 & 63));
                o[k++] = (char)(0x80 | (cp & 63));
            } else if (cp < 0x110000) {
                o[k++] = (char)(0xF0 | cp >> 18);
                o[k++] = (char)(0x80 | (cp >> 12 & 63));
                o[k++] = (char)(0x80 | (cp >> 6 & 63));
                o[k++] = (char)(0x80 | (cp & 63));
            } else
                fail(f, MODEL_EFORMAT, line, "bad code point in escape");
            break;
        }
        default:
            o[k++] = '\\';
            o[k++] = c;
            break; /* Python keeps unknown escapes */
        }
    }
    o[k] = '\0';
    return (str_t){ o, k };
}

static void tokenize_expr(parser *p, str_t src)
{
    failer *f = p->f;
    size_t cap = 32, n = 0;
    token *t = xalloc(f, cap * sizeof *t);
    const char *s = src.s, *e = src.s + src.n;
    while (1) {
        while (s < e && is_ws(*s)) s++;
        if (n + 1 >= cap) {
            token *nt = xalloc(f, 2 * cap * sizeof *nt);
            memcpy(nt, t, n * sizeof *nt);
            t = nt;
            cap *= 2;
        }
        if (s >= e) break;
        token *k = &t[n];
        memset(k, 0, sizeof *k);
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_') {
            const char *b = s;
            while (s < e &&
                   ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' || (*s >= '0' && *s <= '9')))
                s++;
            k->k = T_NAME;
            k->s = (str_t){ b, (size_t)(s - b) };
        } else if (*s >= '0' && *s <= '9') {
            const char *b = s;
            int is_float = 0;
            while (s < e && ((*s >= '0' && *s <= '9') || *s == '_')) s++;
            if (s + 1 < e && *s == '.' && s[1] >= '0' && s[1] <= '9') {
                is_float = 1;
                s++;
                while (s < e && *s >= '0' && *s <= '9') s++;
            }
            if (s < e && (*s == 'e' || *s == 'E')) {
                is_float = 1;
                s++;
                if (s < e && (*s == '+' || *s == '-')) s++;
                while (s < e && *s >= '0' && *s <= '9') s++;
            }
            char num[64];
            size_t m = 0;
            for (const char *q = b; q < s && m + 1 < sizeof num; q++)
                if (*q != '_') num[m++] = *q;
            num[m] = '\0';
            if (is_float) {
                k->k = T_FLOAT;
                k->f = strtod(num, NULL);
            } else {
                k->k = T_INT;
                k->i = strtoll(num, NULL, 10);
            }
        } else if (*s == '\'' || *s == '"') {
            char q = *s++;
            const char *b = s;
            while (s < e && *s != q) s += *s == '\\' && s + 1 < e ? 2 : 1;
            if (s >= e) fail(f, MODEL_EFORMAT, p->line, "unterminated string");
            k->k = T_STR;
            k->s = unescape(f, b, (size_t)(s - b), p->line);
            s++;
        } else {
            static const char *const ops2[] = { "==", "!=", "<=", ">=", "//", "**" };
            k->k = T_OP;
            k->s = (str_t){ s, 1 };
            for (size_t i = 0; i < sizeof ops2 / sizeof ops2[0]; i++)
                if (e - s >= 2 && s[0] == ops2[i][0] && s[1] == ops2[i][1]) k->s.n = 2;
            if (!strchr("+-*/%~=<>!()[]{}.,:|", *s)) fail(f, MODEL_EFORMAT, p->line, "unexpected character '%c'", *s);
            s += k->s.n;
        }
        n++;
    }
    t[n].k = T_END;
    t[n].s = (str_t){ "", 0 };
    p->t = t;
    p->n = n;
    p->pos = 0;
}

static token *peek(parser *p) { return &p->t[p->pos]; }
static token *peek2(parser *p) { return &p->t[p->pos + 1 <= p->n ? p->pos + 1 : p->n]; }
static token *next(parser *p)
{
    token *t = &p->t[p->pos];
    if (p->pos < p->n) p->pos++;
    return t;
}
static int is_op(const token *t, const char *op) { return t->k == T_OP && str_eq(t->s, op); }
static int is_name(const token *t, const char *name) { return t->k == T_NAME && str_eq(t->s, name); }
static int accept_op(parser *p, const char *op)
{
    if (is_op(peek(p), op)) {
        next(p);
        return 1;
    }
    return 0;
}
static int accept_name(parser *p, const char *nm)
{
    if (is_name(peek(p), nm)) {
        next(p);
        return 1;
    }
    return 0;
}

static void expect_op(parser *p, const char *op)
{
    if (!accept_op(p, op))
        fail(p->f, MODEL_EFORMAT, p->line, "expected '%s', found '%.*s'", op, (int)peek(p)->s.n, peek(p)->s.s);
}

static str_t expect_name(parser *p)
{
    token *t = peek(p);
    if (t->k != T_NAME) fail(p->f, MODEL_EFORMAT, p->line, "expected a name, found '%.*s'", (int)t->s.n, t->s.s);
    next(p);
    return t->s;
}

/* ---- Expression trees ------------------------------------------------------------------------ */

enum {
    E_LIT,
    E_NAME,
    E_ATTR,
    E_INDEX,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_NOT,
    E_NEG,
    E_POS,
    E_BIN,
    E_AND,
    E_OR,
    E_COND,
    E_LIST,
    E_DICT,
};

typedef struct node node;
struct node {
    int k, line;
    value lit;       /* E_LIT */
    str_t name;      /* E_NAME, E_ATTR (attribute), E_FILTER / E_TEST (name), E_BIN (operator) */
    node *a, *b, *c; /* operands; E_SLICE: object, start, stop (d: step) */
    node *d;
    node **args; /* E_CALL / E_FILTER / E_TEST arguments; E_LIST items; E_DICT keys,values */
    str_t *kw;   /* keyword names (NULL name: positional) */
    int nargs;
    int negate; /* E_TEST: "is not" */
};

static node *mk(parser *p, int k)
{
    node *n = xalloc(p->f, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = p->line;
    return n;
}

static node *parse_expr(parser *p, int with_cond);

static int starts_primary(const token *t)
{
    if (t->k == T_STR || t->k == T_INT || t->k == T_FLOAT) return 1;
    if (t->k == T_NAME)
        return !(str_eq(t->s, "and") || str_eq(t->s, "or") || str_eq(t->s, "not") || str_eq(t->s, "in") ||
                 str_eq(t->s, "is") || str_eq(t->s, "if") || str_eq(t->s, "else"));
    return is_op(t, "(") || is_op(t, "[") || is_op(t, "{");
}

/* "(" already consumed: arguments up to ")" */
static void parse_args(parser *p, node *n)
{
    size_t cap = 4;
    n->args = xalloc(p->f, cap * sizeof *n->args);
    n->kw = xalloc(p->f, cap * sizeof *n->kw);
    while (!accept_op(p, ")")) {
        if (n->nargs) expect_op(p, ",");
        if (accept_op(p, ")")) break;
        if ((size_t)n->nargs == cap) {
            node **na = xalloc(p->f, 2 * cap * sizeof *na);
            str_t *nk = xalloc(p->f, 2 * cap * sizeof *nk);
            memcpy(na, n->args, cap * sizeof *na);
            memcpy(nk, n->kw, cap * sizeof *nk);
            n->args = na;
            n->kw = nk;
            cap *= 2;
        }
        str_t kw = { NULL, 0 };
        if (peek(p)->k == T_NAME && is_op(peek2(p), "=")) {
            kw = next(p)->s;
            next(p);
        }
        n->kw[n->nargs] = kw;
        n->args[n->nargs++] = parse_expr(p, 1);
    }
}

static node *parse_primary(parser *p)
{
    token *t = peek(p);
    node *n;
    if (t->k == T_STR) {
        next(p);
        str_t s = t->s;
        while (peek(p)->k == T_STR) { /* adjacent literals concatenate */
            str_t more = next(p)->s;
            char *c = xalloc(p->f, s.n + more.n + 1);
            memcpy(c, s.s, s.n);
            memcpy(c + s.n, more.s, more.n);
            c[s.n + more.n] = '\0';
            s = (str_t){ c, s.n + more.n };
        }
        n = mk(p, E_LIT);
        n->lit = vstr(s.s, s.n);
        return n;
    }
    if (t->k == T_INT || t->k == T_FLOAT) {
        next(p);
        n = mk(p, E_LIT);
        n->lit = t->k == T_INT ? vint(t->i) : vfloat(t->f);
        return n;
    }
    if (t->k == T_NAME) {
        next(p);
        n = mk(p, E_LIT);
        if (str_eq(t->s, "true") || str_eq(t->s, "True"))
            n->lit = vbool(1);
        else if (str_eq(t->s, "false") || str_eq(t->s, "False"))
            n->lit = vbool(0);
        else if (str_eq(t->s, "none") || str_eq(t->s, "None"))
            n->lit = NONE;
        else {
            n->k = E_NAME;
            n->name = t->s;
        }
        return n;
    }
    if (accept_op(p, "(")) {
        if (accept_op(p, ")")) { /* empty tuple */
            n = mk(p, E_LIST);
            return n;
        }
        node *e = parse_expr(p, 1);
        if (is_op(peek(p), ",")) { /* a tuple: a list here */
            n = mk(p, E_LIST);
            size_t cap = 4;
            n->args = xalloc(p->f, cap * sizeof *n->args);
            n->args[n->nargs++] = e;
            while (accept_op(p, ",")) {
                if (is_op(peek(p), ")")) break;
                if ((size_t)n->nargs == cap) {
                    node **na = xalloc(p->f, 2 * cap * sizeof *na);
                    memcpy(na, n->args, cap * sizeof *na);
                    n->args = na;
                    cap *= 2;
                }
                n->args[n->nargs++] = parse_expr(p, 1);
            }
            expect_op(p, ")");
            return n;
        }
        expect_op(p, ")");
        return e;
    }
    if (accept_op(p, "[") || is_op(peek(p), "{")) {
        int dict = accept_op(p, "{");
        n = mk(p, dict ? E_DICT : E_LIST);
        const char *close = dict ? "}" : "]";
        size_t cap = 8;
        n->args = xalloc(p->f, cap * sizeof *n->args);
        while (!accept_op(p, close)) {
            if (n->nargs) {
                expect_op(p, ",");
                if (accept_op(p, close)) break;
            }
            if ((size_t)n->nargs + 2 > cap) {
                node **na = xalloc(p->f, 2 * cap * sizeof *na);
                memcpy(na, n->args, cap * sizeof *na);
                n->args = na;
                cap *= 2;
            }
            n->args[n->nargs++] = parse_expr(p, 1);
            if (dict) {
                expect_op(p, ":");
                n->args[n->nargs++] = parse_expr(p, 1);
            }
        }
        return n;
    }
    fail(p->f, MODEL_EFORMAT, p->line, "unexpected '%.*s' in an expression", (int)t->s.n, t->s.s);
}

static node *parse_postfix(parser *p, node *n)
{
    for (;;) {
        if (accept_op(p, ".")) {
            node *a = mk(p, E_ATTR);
            a->a = n;
            token *t = next(p);
            if (t->k == T_NAME)
                a->name = t->s;
            else if (t->k == T_INT) { /* x.0 is x[0] */
                a->k = E_INDEX;
                a->b = mk(p, E_LIT);
                a->b->lit = vint(t->i);
            } else
                fail(p->f, MODEL_EFORMAT, p->line, "expected an attribute name after '.'");
            n = a;
        } else if (accept_op(p, "[")) {
            node *start = NULL, *stop = NULL, *step = NULL;
            int slice = 0;
            if (!is_op(peek(p), ":")) start = parse_expr(p, 1);
            if (accept_op(p, ":")) {
                slice = 1;
                if (!is_op(peek(p), ":") && !is_op(peek(p), "]")) stop = parse_expr(p, 1);
                if (accept_op(p, ":") && !is_op(peek(p), "]")) step = parse_expr(p, 1);
            }
            expect_op(p, "]");
            node *x = mk(p, slice ? E_SLICE : E_INDEX);
            x->a = n;
            x->b = start;
            x->c = stop;
            x->d = step;
            if (!slice && !start) fail(p->f, MODEL_EFORMAT, p->line, "empty subscript");
            n = x;
        } else if (accept_op(p, "(")) {
            node *c = mk(p, E_CALL);
            c->a = n;
            parse_args(p, c);
            n = c;
        } else {
            return n;
        }
    }
}

static node *parse_filters_tests(parser *p, node *n)
{
    for (;;) {
        if (accept_op(p, "|")) {
            node *fl = mk(p, E_FILTER);
            fl->a = n;
            fl->name = expect_name(p);
            if (accept_op(p, "(")) parse_args(p, fl);
            n = fl;
        } else if (accept_name(p, "is")) {
            node *t = mk(p, E_TEST);
            t->a = n;
            t->negate = accept_name(p, "not");
            token *nm = next(p);
            if (nm->k == T_NAME)
                t->name = nm->s;
            else if (is_op(nm, "=="))
                t->name = (str_t){ "eq", 2 };
            else if (is_op(nm, "!="))
                t->name = (str_t){ "ne", 2 };
            else
                fail(p->f, MODEL_EFORMAT, p->line, "expected a test name after 'is'");
            if (str_eq(t->name, "none") || str_eq(t->name, "true") || str_eq(t->name, "false") ||
                str_eq(t->name, "defined") || str_eq(t->name, "undefined")) {
                /* no argument */
            } else if (accept_op(p, "(")) {
                parse_args(p, t);
            } else if (starts_primary(peek(p))) { /* "is divisibleby 3", "is sameas none" */
                t->args = xalloc(p->f, sizeof *t->args);
                t->kw = xalloc(p->f, sizeof *t->kw);
                t->kw[0] = (str_t){ NULL, 0 };
                t->args[0] = parse_postfix(p, parse_primary(p));
                t->nargs = 1;
            }
            n = t;
        } else {
            return n;
        }
    }
}

static node *parse_unary(parser *p)
{
    if (++p->depth > CT_MAX_DEPTH) fail(p->f, MODEL_ECHAT_EVAL, p->line, "expression nested too deeply");
    node *n;
    if (accept_op(p, "-")) {
        n = mk(p, E_NEG);
        n->a = parse_unary(p);
    } else if (accept_op(p, "+")) {
        n = mk(p, E_POS);
        n->a = parse_unary(p);
    } else {
        n = parse_postfix(p, parse_primary(p));
    }
    p->depth--;
    return parse_filters_tests(p, n);
}

static node *bin(parser *p, const char *op, node *a, node *b)
{
    node *n = mk(p, E_BIN);
    n->name = (str_t){ op, strlen(op) };
    n->a = a;
    n->b = b;
    return n;
}

/* The operator of the NULL-terminated list ops that is the next token, consumed; NULL
 * (nothing consumed) when the next token is none of them. */
static const char *accept_any_op(parser *p, const char *const *ops)
{
    for (; *ops; ops++)
        if (accept_op(p, *ops)) return *ops;
    return NULL;
}

/* One left-associative level of binary operators: operand (op operand)*. */
static node *parse_binary(parser *p, node *(*operand)(parser *), const char *const *ops)
{
    node *n = operand(p);
    const char *op;
    while ((op = accept_any_op(p, ops))) n = bin(p, op, n, operand(p));
    return n;
}

static node *parse_pow(parser *p) { return parse_binary(p, parse_unary, (const char *const[]){ "**", NULL }); }
static node *parse_mul(parser *p)
{
    return parse_binary(p, parse_pow, (const char *const[]){ "*", "//", "/", "%", NULL });
}
static node *parse_concat(parser *p) { return parse_binary(p, parse_mul, (const char *const[]){ "~", NULL }); }
static node *parse_add(parser *p) { return parse_binary(p, parse_concat, (const char *const[]){ "+", "-", NULL }); }

static node *parse_compare(parser *p)
{
    static const char *const ops[] = { "==", "!=", "<=", ">=", "<", ">", NULL };
    node *n = parse_add(p);
    for (;;) {
        const char *op = accept_any_op(p, ops);
        if (op)
            n = bin(p, op, n, parse_add(p));
        else if (accept_name(p, "in"))
            n = bin(p, "in", n, parse_add(p));
        else if (is_name(peek(p), "not") && is_name(peek2(p), "in")) {
            next(p);
            next(p);
            n = bin(p, "not in", n, parse_add(p));
        } else {
            return n;
        }
    }
}

static node *parse_not(parser *p)
{
    if (accept_name(p, "not")) {
        node *n = mk(p, E_NOT);
        n->a = parse_not(p);
        return n;
    }
    return parse_compare(p);
}

/* A left-associative chain of `word` (and, or) as nodes of `kind`. */
static node *parse_logic(parser *p, node *(*operand)(parser *), const char *word, int kind)
{
    node *n = operand(p);
    while (accept_name(p, word)) {
        node *x = mk(p, kind);
        x->a = n;
        x->b = operand(p);
        n = x;
    }
    return n;
}

static node *parse_and(parser *p) { return parse_logic(p, parse_not, "and", E_AND); }
static node *parse_or(parser *p) { return parse_logic(p, parse_and, "or", E_OR); }

static node *parse_expr(parser *p, int with_cond)
{
    if (++p->depth > CT_MAX_DEPTH) fail(p->f, MODEL_ECHAT_EVAL, p->line, "expression nested too deeply");
    node *n = parse_or(p);
    if (with_cond && accept_name(p, "if")) {
        node *c = mk(p, E_COND);
        c->b = n;
        c->a = parse_or(p);
        c->c = accept_name(p, "else") ? parse_expr(p, 1) : NULL;
        n = c;
    }
    p->depth--;
    return n;
}

/* ---- Statements ------------------------------------------------------------------------------- */

enum { S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_BREAK, S_CONTINUE, S_BLOCK };

typedef struct stmt stmt;
typedef struct {
    stmt **v;
    size_t n;
} stmt_list;

struct stmt {
    int k, line;
    str_t text;        /* S_TEXT */
    node *expr;        /* S_OUT, S_SET value, S_FOR iterable */
    node *cond;        /* S_FOR filter */
    node **conds;      /* S_IF: one per branch */
    stmt_list *bodies; /* S_IF: one per branch */
    int n_branches;
    stmt_list body, orelse; /* S_FOR body / else, S_IF else, S_SETBLOCK / S_BLOCK body */
    str_t target[2];        /* S_FOR: loop variables; S_SET: name (and attribute) */
    int n_targets;
};

typedef struct {
    parser p;
    segment *seg;
    size_t n_seg, pos;
    int loop_depth;
} tparser;

/* The first word of a statement segment, and a parser positioned after it. */
static str_t stmt_word(tparser *tp, segment *s)
{
    tp->p.line = s->line;
    tp->p.depth = 0;
    tokenize_expr(&tp->p, s->s);
    if (peek(&tp->p)->k != T_NAME) fail(tp->p.f, MODEL_EFORMAT, s->line, "a statement must start with a keyword");
    return next(&tp->p)->s;
}

static void expect_end(tparser *tp)
{
    token *t = peek(&tp->p);
    if (t->k != T_END)
        fail(tp->p.f, MODEL_EFORMAT, tp->p.line, "unexpected '%.*s' at the end of the tag", (int)t->s.n, t->s.s);
}

static stmt *mk_stmt(tparser *tp, int k, int line)
{
    stmt *s = xalloc(tp->p.f, sizeof *s);
    memset(s, 0, sizeof *s);
    s->k = k;
    s->line = line;
    return s;
}

static void push_stmt(failer *f, stmt_list *l, size_t *cap, stmt *s)
{
    if (l->n == *cap) {
        size_t nc = *cap ? 2 * *cap : 8;
        stmt **nv = xalloc(f, nc * sizeof *nv);
        if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        *cap = nc;
    }
    l->v[l->n++] = s;
}

/* Parse statements until one of the end words (NULL-terminated list); the word found is
 * returned (its segment consumed and tp->p left after it), or "" at the end of input when
 * ends is NULL. */
static str_t parse_body(tparser *tp, stmt_list *out, const char *const *ends)
{
    failer *f = tp->p.f;
    size_t cap = 0;
    out->v = NULL;
    out->n = 0;
    while (tp->pos < tp->n_seg) {
        segment *sg = &tp->seg[tp->pos++];
        if (sg->kind == SEG_TEXT) {
            stmt *s = mk_stmt(tp, S_TEXT, sg->line);
            s->text = sg->s;
            push_stmt(f, out, &cap, s);
            continue;
        }
        if (sg->kind == SEG_EXPR) {
            tp->p.line = sg->line;
            tp->p.depth = 0;
            tokenize_expr(&tp->p, sg->s);
            stmt *s = mk_stmt(tp, S_OUT, sg->line);
            s->expr = parse_expr(&tp->p, 1);
            expect_end(tp);
            push_stmt(f, out, &cap, s);
            continue;
        }
        str_t w = stmt_word(tp, sg);
        for (int i = 0; ends && ends[i]; i++)
            if (str_eq(w, ends[i])) return w;
        stmt *s;
        if (str_eq(w, "if")) {
            s = mk_stmt(tp, S_IF, sg->line);
            size_t bcap = 4;
            s->conds = xalloc(f, bcap * sizeof *s->conds);
            s->bodies = xalloc(f, bcap * sizeof *s->bodies);
            node *cond = parse_expr(&tp->p, 1);
            expect_end(tp);
            static const char *const if_ends[] = { "elif", "else", "endif", NULL };
            for (;;) {
                if ((size_t)s->n_branches == bcap) {
                    node **nc = xalloc(f, 2 * bcap * sizeof *nc);
                    stmt_list *nb = xalloc(f, 2 * bcap * sizeof *nb);
                    memcpy(nc, s->conds, bcap * sizeof *nc);
                    memcpy(nb, s->bodies, bcap * sizeof *nb);
                    s->conds = nc;
                    s->bodies = nb;
                    bcap *= 2;
                }
                s->conds[s->n_branches] = cond;
                str_t e = parse_body(tp, &s->bodies[s->n_branches++], if_ends);
                if (str_eq(e, "elif")) {
                    cond = parse_expr(&tp->p, 1);
                    expect_end(tp);
                    continue;
                }
                if (str_eq(e, "else")) {
                    expect_end(tp);
                    static const char *const else_ends[] = { "endif", NULL };
                    if (!parse_body(tp, &s->orelse, else_ends).s)
                        fail(f, MODEL_EFORMAT, s->line, "'if' without 'endif'");
                }
                if (!e.s) fail(f, MODEL_EFORMAT, s->line, "'if' without 'endif'");
                expect_end(tp);
                break;
            }
        } else if (str_eq(w, "for")) {
            s = mk_stmt(tp, S_FOR, sg->line);
            s->target[s->n_targets++] = expect_name(&tp->p);
            if (accept_op(&tp->p, ",")) s->target[s->n_targets++] = expect_name(&tp->p);
            if (!accept_name(&tp->p, "in")) fail(f, MODEL_EFORMAT, sg->line, "expected 'in' in 'for'");
            s->expr = parse_expr(&tp->p, 0);
            if (accept_name(&tp->p, "if")) s->cond = parse_expr(&tp->p, 0);
            if (accept_name(&tp->p, "recursive"))
                fail(f, MODEL_ECHAT_UNSUPPORTED, sg->line, "recursive loops are not supported");
            expect_end(tp);
            static const char *const for_ends[] = { "else", "endfor", NULL };
            tp->loop_depth++;
            str_t e = parse_body(tp, &s->body, for_ends);
            tp->loop_depth--;
            if (str_eq(e, "else")) {
                expect_end(tp);
                static const char *const else_ends[] = { "endfor", NULL };
                e = parse_body(tp, &s->orelse, else_ends);
            }
            if (!e.s) fail(f, MODEL_EFORMAT, s->line, "'for' without 'endfor'");
            expect_end(tp);
        } else if (str_eq(w, "set")) {
            s = mk_stmt(tp, S_SET, sg->line);
            s->target[s->n_targets++] = expect_name(&tp->p);
            if (accept_op(&tp->p, ".")) s->target[s->n_targets++] = expect_name(&tp->p);
            if (accept_op(&tp->p, "=")) {
                s->expr = parse_expr(&tp->p, 1);
                expect_end(tp);
            } else {
                expect_end(tp);
                if (s->n_targets != 1) fail(f, MODEL_EFORMAT, sg->line, "a block 'set' takes one name");
                s->k = S_SETBLOCK;
                static const char *const set_ends[] = { "endset", NULL };
                if (!parse_body(tp, &s->body, set_ends).s) fail(f, MODEL_EFORMAT, s->line, "'set' without 'endset'");
                expect_end(tp);
            }
        } else if (str_eq(w, "break") || str_eq(w, "continue")) {
            if (!tp->loop_depth) fail(f, MODEL_EFORMAT, sg->line, "'%.*s' outside a loop", (int)w.n, w.s);
            s = mk_stmt(tp, str_eq(w, "break") ? S_BREAK : S_CONTINUE, sg->line);
            expect_end(tp);
        } else if (str_eq(w, "generation")) {
            /* transformers' marker of the assistant's text (for training masks): render as is */
            s = mk_stmt(tp, S_BLOCK, sg->line);
            expect_end(tp);
            static const char *const gen_ends[] = { "endgeneration", NULL };
            if (!parse_body(tp, &s->body, gen_ends).s)
                fail(f, MODEL_EFORMAT, s->line, "'generation' without 'endgeneration'");
            expect_end(tp);
        } else if (str_eq(w, "macro") || str_eq(w, "call") || str_eq(w, "filter") || str_eq(w, "include") ||
                   str_eq(w, "import") || str_eq(w, "from") || str_eq(w, "extends") || str_eq(w, "block") ||
                   str_eq(w, "raw") || str_eq(w, "with") || str_eq(w, "autoescape") || str_eq(w, "do")) {
            fail(f, MODEL_ECHAT_UNSUPPORTED, sg->line, "'%.*s' blocks are not supported", (int)w.n, w.s);
        } else {
            fail(f, MODEL_EFORMAT, sg->line, "unexpected '%.*s'", (int)w.n, w.s);
        }
        push_stmt(f, out, &cap, s);
    }
    if (ends) {
        int last = 0;
        while (ends[last + 1]) last++;
        fail(f, MODEL_EFORMAT, 0, "missing '%s' at the end of the template", ends[last]);
    }
    return (str_t){ NULL, 0 };
}

/* ---- The compiled template -------------------------------------------------------------------- */

struct model_chat_template {
    arena mem;
    stmt_list body;
};

int model_chat_template_new(model_chat_template **out, const char *source, size_t len, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    *out = NULL;
    if (!source) return MODEL_EINVAL;
    model_chat_template *t = calloc(1, sizeof *t);
    if (!t) return MODEL_ENOMEM;
    failer *f = calloc(1, sizeof *f);
    tparser *tp = calloc(1, sizeof *tp);
    if (!f || !tp) {
        free(f);
        free(tp);
        free(t);
        return MODEL_ENOMEM;
    }
    f->mem = &t->mem;
    f->err = err;
    f->errlen = errlen;
    if (setjmp(f->jb)) {
        int code = f->code;
        arena_free(&t->mem);
        free(t);
        free(f);
        free(tp);
        return code;
    }
    /* the source is copied: nodes and text segments point into the copy */
    char *src = xalloc(f, len + 1);
    memcpy(src, source, len);
    src[len] = '\0';
    if (memchr(src, 0, len)) fail(f, MODEL_EFORMAT, 0, "the template contains a NUL byte");
    tp->p.f = f;
    tp->seg = lex_template(f, src, len, &tp->n_seg);
    parse_body(tp, &t->body, NULL);
    free(f);
    free(tp);
    *out = t;
    return MODEL_OK;
}

void model_chat_template_free(model_chat_template *t)
{
    if (!t) return;
    arena_free(&t->mem);
    free(t);
}

/* ---- Rendering: scopes -------------------------------------------------------------------------- */

typedef struct frame {
    struct frame *up;
    vdict *vars;
} frame;

typedef struct {
    failer f;
    buf_t *out;
    long steps;
    int depth;
    int brk, cont; /* a break / continue is unwinding to its loop */
    frame *globals;
} rctx;

static value lookup(rctx *c, frame *fr, str_t name)
{
    for (frame *x = fr; x; x = x->up) {
        value *v = dict_find(x->vars, name);
        if (v) return *v;
    }
    return UNDEF;
}

/* ---- Rendering: conversions ---------------------------------------------------------------------- */

static int truthy(value v)
{
    switch (v.k) {
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0;
    case V_STR: return v.u.s.n > 0;
    case V_LIST: return v.u.l->n > 0;
    case V_DICT: return v.u.d->n > 0;
    case V_FUNC:
    case V_METHOD: return 1;
    default: return 0;
    }
}

static const char *kind_name(value v)
{
    static const char *const names[] = { "undefined", "none", "boolean", "integer",  "float",
                                         "string",    "list", "dict",    "function", "method" };
    return names[v.k];
}

/* Python's repr of a float: the shortest decimal that reads back exactly, with ".0" when
 * it would look like an integer. */
static void put_float(failer *f, buf_t *b, double d)
{
    if (isnan(d)) {
        buf_puts(f, b, "nan");
        return;
    }
    if (isinf(d)) {
        buf_puts(f, b, d > 0 ? "inf" : "-inf");
        return;
    }
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    buf_puts(f, b, tmp);
    if (!strpbrk(tmp, ".e")) buf_puts(f, b, ".0");
}

static void put_repr(rctx *c, buf_t *b, value v);

static void put_str(rctx *c, buf_t *b, value v) /* str(v) */
{
    failer *f = &c->f;
    switch (v.k) {
    case V_UNDEF: return;
    case V_NONE: buf_puts(f, b, "None"); return;
    case V_BOOL: buf_puts(f, b, v.u.b ? "True" : "False"); return;
    case V_INT: buf_printf(f, b, "%lld", v.u.i); return;
    case V_FLOAT: put_float(f, b, v.u.f); return;
    case V_STR: buf_put(f, b, v.u.s.s, v.u.s.n); return;
    default: put_repr(c, b, v); return;
    }
}

static void put_repr(rctx *c, buf_t *b, value v)
{
    failer *f = &c->f;
    if (++c->depth > CT_MAX_DEPTH) fail(f, MODEL_ECHAT_EVAL, 0, "value nested too deeply");
    switch (v.k) {
    case V_STR: {
        int dq = memchr(v.u.s.s, '\'', v.u.s.n) && !memchr(v.u.s.s, '"', v.u.s.n);
        char q = dq ? '"' : '\'';
        buf_put(f, b, &q, 1);
        for (size_t i = 0; i < v.u.s.n; i++) {
            unsigned char ch = (unsigned char)v.u.s.s[i];
            if (ch == '\\' || ch == (unsigned char)q) {
                buf_put(f, b, "\\", 1);
                buf_put(f, b, &v.u.s.s[i], 1);
            } else if (ch == '\n')
                buf_puts(f, b, "\\n");
            else if (ch == '\t')
                buf_puts(f, b, "\\t");
            else if (ch == '\r')
                buf_puts(f, b, "\\r");
            else if (ch < 0x20 || ch == 0x7f)
                buf_printf(f, b, "\\x%02x", ch);
            else
                buf_put(f, b, &v.u.s.s[i], 1);
        }
        buf_put(f, b, &q, 1);
        break;
    }
    case V_LIST:
        buf_puts(f, b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) buf_puts(f, b, ", ");
            put_repr(c, b, v.u.l->v[i]);
        }
        buf_puts(f, b, "]");
        break;
    case V_DICT:
        buf_puts(f, b, v.u.d->ns ? "<Namespace {" : "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) buf_puts(f, b, ", ");
            put_repr(c, b, vstr(v.u.d->key[i].s, v.u.d->key[i].n));
            buf_puts(f, b, ": ");
            put_repr(c, b, v.u.d->v[i]);
        }
        buf_puts(f, b, v.u.d->ns ? "}>" : "}");
        break;
    case V_FUNC:
    case V_METHOD: buf_puts(f, b, "<function>"); break;
    default: put_str(c, b, v); break;
    }
    c->depth--;
}

static str_t to_str(rctx *c, value v)
{
    if (v.k == V_STR) return v.u.s;
    buf_t b = { 0 };
    put_str(c, &b, v);
    return buf_str(&b);
}

/* JSON as Python's json.dumps writes it (transformers' tojson: ensure_ascii off): ", " and
 * ": " separators, or "," plus newlines and indent spaces when indent >= 0. */
static void put_json(rctx *c, buf_t *b, value v, int indent, int level, int sort_keys)
{
    failer *f = &c->f;
    if (++c->depth > CT_MAX_DEPTH) fail(f, MODEL_ECHAT_EVAL, 0, "value nested too deeply");
    switch (v.k) {
    case V_NONE: buf_puts(f, b, "null"); break;
    case V_BOOL: buf_puts(f, b, v.u.b ? "true" : "false"); break;
    case V_INT: buf_printf(f, b, "%lld", v.u.i); break;
    case V_FLOAT:
        if (isnan(v.u.f) || isinf(v.u.f))
            buf_puts(f, b, isnan(v.u.f) ? "NaN" : v.u.f > 0 ? "Infinity" : "-Infinity");
        else
            put_float(f, b, v.u.f);
        break;
    case V_STR:
        buf_puts(f, b, "\"");
        for (size_t i = 0; i < v.u.s.n; i++) {
            unsigned char ch = (unsigned char)v.u.s.s[i];
            switch (ch) {
            case '"': buf_puts(f, b, "\\\""); break;
            case '\\': buf_puts(f, b, "\\\\"); break;
            case '\n': buf_puts(f, b, "\\n"); break;
            case '\r': buf_puts(f, b, "\\r"); break;
            case '\t': buf_puts(f, b, "\\t"); break;
            case '\b': buf_puts(f, b, "\\b"); break;
            case '\f': buf_puts(f, b, "\\f"); break;
            default:
                if (ch < 0x20 || ch == 0x7f)
                    buf_printf(f, b, "\\u%04x", ch);
                else
                    buf_put(f, b, &v.u.s.s[i], 1);
            }
        }
        buf_puts(f, b, "\"");
        break;
    case V_LIST:
    case V_DICT: {
        int is_list = v.k == V_LIST;
        size_t n = is_list ? v.u.l->n : v.u.d->n;
        buf_puts(f, b, is_list ? "[" : "{");
        size_t *order = NULL;
        if (!is_list && n) {
            order = xalloc(f, n * sizeof *order);
            for (size_t i = 0; i < n; i++) order[i] = i;
            if (sort_keys) /* insertion sort by key bytes: dicts here are small */
                for (size_t i = 1; i < n; i++)
                    for (size_t j = i; j > 0; j--) {
                        str_t a = v.u.d->key[order[j - 1]], bk = v.u.d->key[order[j]];
                        size_t m = a.n < bk.n ? a.n : bk.n;
                        int cmp = memcmp(a.s, bk.s, m);
                        if (cmp < 0 || (cmp == 0 && a.n <= bk.n)) break;
                        size_t t = order[j];
                        order[j] = order[j - 1];
                        order[j - 1] = t;
                    }
        }
        for (size_t i = 0; i < n; i++) {
            if (i) buf_puts(f, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                buf_puts(f, b, "\n");
                for (int s = 0; s < indent * (level + 1); s++) buf_puts(f, b, " ");
            }
            if (is_list) {
                put_json(c, b, v.u.l->v[i], indent, level + 1, sort_keys);
            } else {
                str_t k = v.u.d->key[order[i]];
                put_json(c, b, vstr(k.s, k.n), indent, level + 1, sort_keys);
                buf_puts(f, b, ": ");
                put_json(c, b, v.u.d->v[order[i]], indent, level + 1, sort_keys);
            }
        }
        if (indent >= 0 && n) {
            buf_puts(f, b, "\n");
            for (int s = 0; s < indent * level; s++) buf_puts(f, b, " ");
        }
        buf_puts(f, b, is_list ? "]" : "}");
        break;
    }
    default: fail(f, MODEL_ECHAT_EVAL, 0, "tojson: cannot serialise a value of type %s", kind_name(v));
    }
    c->depth--;
}

/* From jansson: strings, numbers, booleans, null, arrays, objects; a message's "content"
 * given as parts becomes the joined text of its parts (what the server renders). */
static value from_json(rctx *c, const json_t *j, int depth)
{
    failer *f = &c->f;
    if (depth > CT_MAX_DEPTH) fail(f, MODEL_ECHAT_EVAL, 0, "messages nested too deeply");
    switch (json_typeof(j)) {
    case JSON_STRING: return vstr(json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return vint(json_integer_value(j));
    case JSON_REAL: return vfloat(json_real_value(j));
    case JSON_TRUE: return vbool(1);
    case JSON_FALSE: return vbool(0);
    case JSON_NULL: return NONE;
    case JSON_ARRAY: {
        vlist *l = list_new(f, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++) list_push(f, l, from_json(c, json_array_get(j, i), depth + 1));
        return vlistv(l);
    }
    case JSON_OBJECT: {
        vdict *d = dict_new(f, json_object_size(j));
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)j, key, val)
            dict_set(f, d, (str_t){ key, strlen(key) }, from_json(c, val, depth + 1));
        return vdictv(d);
    }
    }
    return NONE;
}

static value message_from_json(rctx *c, const json_t *m)
{
    value v = from_json(c, m, 1);
    if (v.k != V_DICT) return v;
    const json_t *content = json_object_get(m, "content");
    if (json_is_array(content)) {
        buf_t b = { 0 };
        size_t i;
        json_t *part;
        json_array_foreach((json_t *)content, i, part)
        {
            const json_t *t = json_object_get(part, "text");
            if (json_is_string(t)) buf_put(&c->f, &b, json_string_value(t), json_string_length(t));
        }
        str_t s = buf_str(&b);
        dict_set(&c->f, v.u.d, (str_t){ "content", 7 }, vstr(s.s, s.n));
    }
    return v;
}

/* ---- Rendering: comparison and arithmetic --------------------------------------------------------- */

static int is_num(value v) { return v.k == V_INT || v.k == V_FLOAT || v.k == V_BOOL; }
static double num(value v) { return v.k == V_FLOAT ? v.u.f : v.k == V_INT ? (double)v.u.i : v.u.b; }
/* An integer of a number value; a float truncated toward zero, saturated at the long long
 * range (NaN is 0): converting one outside the range would be undefined. */
static long long inum(value v)
{
    if (v.k == V_INT) return v.u.i;
    if (v.k == V_BOOL) return v.u.b;
    double f = v.u.f;
    if (!(f == f)) return 0;
    if (f >= 0x1p63) return LLONG_MAX;
    if (f < -0x1p63) return LLONG_MIN;
    return (long long)f;
}

static int equal(rctx *c, value a, value b)
{
    if (is_num(a) && is_num(b)) return num(a) == num(b);
    if (a.k != b.k) return 0;
    switch (a.k) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return str_same(a.u.s, b.u.s);
    case V_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!equal(c, a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d == b.u.d) return 1;
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            value *o = dict_find(b.u.d, a.u.d->key[i]);
            if (!o || !equal(c, a.u.d->v[i], *o)) return 0;
        }
        return 1;
    default: return 0;
    }
}

static int compare(rctx *c, value a, value b, int line) /* <0, 0, >0 */
{
    if (is_num(a) && is_num(b)) return num(a) < num(b) ? -1 : num(a) > num(b);
    if (a.k == V_STR && b.k == V_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int r = memcmp(a.u.s.s, b.u.s.s, m);
        return r ? r : (a.u.s.n > b.u.s.n) - (a.u.s.n < b.u.s.n);
    }
    fail(&c->f, MODEL_ECHAT_EVAL, line, "cannot order %s and %s", kind_name(a), kind_name(b));
}

static int contains(rctx *c, value hay, value needle, int line)
{
    switch (hay.k) {
    case V_STR: {
        if (needle.k != V_STR) fail(&c->f, MODEL_ECHAT_EVAL, line, "'in <string>' needs a string on the left");
        if (needle.u.s.n == 0) return 1;
        for (size_t i = 0; i + needle.u.s.n <= hay.u.s.n; i++)
            if (memcmp(hay.u.s.s + i, needle.u.s.s, needle.u.s.n) == 0) return 1;
        return 0;
    }
    case V_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (equal(c, hay.u.l->v[i], needle)) return 1;
        return 0;
    case V_DICT: return needle.k == V_STR && dict_find(hay.u.d, needle.u.s) != NULL;
    case V_UNDEF: return 0;
    default: fail(&c->f, MODEL_ECHAT_EVAL, line, "'in' needs a string, list or dict, not %s", kind_name(hay));
    }
}

static str_t concat(rctx *c, str_t a, str_t b)
{
    char *s = xalloc(&c->f, a.n + b.n + 1);
    if (a.n) memcpy(s, a.s, a.n);
    if (b.n) memcpy(s + a.n, b.s, b.n);
    s[a.n + b.n] = '\0';
    return (str_t){ s, a.n + b.n };
}

static value binop(rctx *c, const char *op, value a, value b, int line)
{
    failer *f = &c->f;
    if (!strcmp(op, "==")) return vbool(equal(c, a, b));
    if (!strcmp(op, "!=")) return vbool(!equal(c, a, b));
    if (!strcmp(op, "<")) return vbool(compare(c, a, b, line) < 0);
    if (!strcmp(op, ">")) return vbool(compare(c, a, b, line) > 0);
    if (!strcmp(op, "<=")) return vbool(compare(c, a, b, line) <= 0);
    if (!strcmp(op, ">=")) return vbool(compare(c, a, b, line) >= 0);
    if (!strcmp(op, "in")) return vbool(contains(c, b, a, line));
    if (!strcmp(op, "not in")) return vbool(!contains(c, b, a, line));
    if (!strcmp(op, "~")) {
        str_t s = concat(c, to_str(c, a), to_str(c, b));
        return vstr(s.s, s.n);
    }
    if (!strcmp(op, "+")) {
        if (a.k == V_STR && b.k == V_STR) {
            str_t s = concat(c, a.u.s, b.u.s);
            return vstr(s.s, s.n);
        }
        if (a.k == V_LIST && b.k == V_LIST) {
            vlist *l = list_new(f, a.u.l->n + b.u.l->n);
            for (size_t i = 0; i < a.u.l->n; i++) list_push(f, l, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++) list_push(f, l, b.u.l->v[i]);
            return vlistv(l);
        }
    }
    if (!strcmp(op, "*") && ((a.k == V_STR && b.k == V_INT) || (a.k == V_INT && b.k == V_STR))) {
        value s = a.k == V_STR ? a : b;
        long long times = a.k == V_INT ? a.u.i : b.u.i;
        buf_t out = { 0 };
        for (long long i = 0; i < times; i++) buf_put(f, &out, s.u.s.s, s.u.s.n);
        str_t r = buf_str(&out);
        return vstr(r.s, r.n);
    }
    if (!is_num(a) || !is_num(b))
        fail(f, MODEL_ECHAT_EVAL, line, "unsupported operand types for %s: %s and %s", op, kind_name(a), kind_name(b));
    int ints = a.k != V_FLOAT && b.k != V_FLOAT;
    if (!strcmp(op, "+")) return ints ? vint(inum(a) + inum(b)) : vfloat(num(a) + num(b));
    if (!strcmp(op, "-")) return ints ? vint(inum(a) - inum(b)) : vfloat(num(a) - num(b));
    if (!strcmp(op, "*")) return ints ? vint(inum(a) * inum(b)) : vfloat(num(a) * num(b));
    if (!strcmp(op, "/")) {
        if (num(b) == 0) fail(f, MODEL_ECHAT_EVAL, line, "division by zero");
        return vfloat(num(a) / num(b));
    }
    if (!strcmp(op, "//") || !strcmp(op, "%")) {
        if (num(b) == 0) fail(f, MODEL_ECHAT_EVAL, line, "division by zero");
        if (ints) { /* Python floors */
            long long x = inum(a), y = inum(b), q = x / y, r = x % y;
            if (r && ((r < 0) != (y < 0))) {
                q--;
                r += y;
            }
            return !strcmp(op, "//") ? vint(q) : vint(r);
        }
        double q = floor(num(a) / num(b));
        return !strcmp(op, "//") ? vfloat(q) : vfloat(num(a) - q * num(b));
    }
    if (!strcmp(op, "**"))
        return ints && inum(b) >= 0 ? vint((long long)llround(pow(num(a), num(b)))) : vfloat(pow(num(a), num(b)));
    fail(f, MODEL_ECHAT_EVAL, line, "unknown operator %s", op);
}

/* ---- Rendering: strings by code point ------------------------------------------------------------- */

/* Byte offsets of each code point of s (n_cp + 1 entries, the last = s.n). */
static size_t *cp_offsets(rctx *c, str_t s, size_t *n_cp)
{
    size_t *off = xalloc(&c->f, (s.n + 1) * sizeof *off);
    size_t k = 0;
    for (size_t i = 0; i < s.n; i++)
        if (((unsigned char)s.s[i] & 0xC0) != 0x80) off[k++] = i;
    off[k] = s.n;
    *n_cp = k;
    return off;
}

static int is_space_byte(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* strip / lstrip / rstrip: whitespace, or any of the bytes of chars (ASCII sets in practice) */
static str_t strip(str_t s, int left, int right, const str_t *chars)
{
    size_t a = 0, b = s.n;
#define STRIPPABLE(ch) (chars ? memchr(chars->s, (ch), chars->n) != NULL : is_space_byte(ch))
    if (left)
        while (a < b && STRIPPABLE(s.s[a])) a++;
    if (right)
        while (b > a && STRIPPABLE(s.s[b - 1])) b--;
#undef STRIPPABLE
    return (str_t){ s.s + a, b - a };
}

static str_t map_case(rctx *c, str_t s, int mode) /* 0 lower, 1 upper, 2 title, 3 capitalize */
{
    char *o = xalloc(&c->f, s.n + 1);
    int start = 1;
    for (size_t i = 0; i < s.n; i++) {
        char ch = s.s[i];
        int up = mode == 1 || ((mode == 2 || mode == 3) && start);
        if (mode == 3 && !start) up = 0;
        if (up && ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 32);
        else if (!up && ch >= 'A' && ch <= 'Z')
            ch = (char)(ch + 32);
        o[i] = ch;
        if (mode == 2)
            start = !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (unsigned char)ch >= 0x80 ||
                      (ch >= '0' && ch <= '9'));
        else if (mode == 3)
            start = 0;
    }
    o[s.n] = '\0';
    return (str_t){ o, s.n };
}

static str_t replace_str(rctx *c, str_t s, str_t from, str_t to, long long count)
{
    buf_t b = { 0 };
    size_t i = 0;
    long long done = 0;
    if (from.n == 0) {
        buf_put(&c->f, &b, s.s, s.n);
        return buf_str(&b);
    }
    while (i < s.n) {
        if ((count < 0 || done < count) && i + from.n <= s.n && memcmp(s.s + i, from.s, from.n) == 0) {
            buf_put(&c->f, &b, to.s, to.n);
            i += from.n;
            done++;
        } else {
            buf_put(&c->f, &b, s.s + i, 1);
            i++;
        }
    }
    return buf_str(&b);
}

static value split_str(rctx *c, str_t s, const str_t *sep, long long maxsplit)
{
    failer *f = &c->f;
    vlist *l = list_new(f, 4);
    size_t i = 0;
    long long splits = 0;
    if (!sep) { /* runs of whitespace, none at the ends */
        while (i < s.n) {
            while (i < s.n && is_space_byte(s.s[i])) i++;
            if (i >= s.n) break;
            size_t b = i;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t e = s.n;
                while (e > b && is_space_byte(s.s[e - 1])) e--;
                list_push(f, l, vstr(s.s + b, e - b));
                break;
            }
            while (i < s.n && !is_space_byte(s.s[i])) i++;
            list_push(f, l, vstr(s.s + b, i - b));
            splits++;
        }
        return vlistv(l);
    }
    if (sep->n == 0) fail(f, MODEL_ECHAT_EVAL, 0, "split: empty separator");
    size_t b = 0;
    while (i + sep->n <= s.n) {
        if ((maxsplit < 0 || splits < maxsplit) && memcmp(s.s + i, sep->s, sep->n) == 0) {
            list_push(f, l, vstr(s.s + b, i - b));
            i += sep->n;
            b = i;
            splits++;
        } else {
            i++;
        }
    }
    list_push(f, l, vstr(s.s + b, s.n - b));
    return vlistv(l);
}

/* ---- Rendering: builtins --------------------------------------------------------------------------- */

/* Evaluated arguments of a call, filter or test. */
typedef struct {
    value *v;
    str_t *kw;
    int n;
} argv_t;

static value arg(rctx *c, const argv_t *a, int pos, const char *name, value dflt)
{
    for (int i = 0; i < a->n; i++)
        if (a->kw[i].s && str_eq(a->kw[i], name)) return a->v[i];
    int k = 0;
    for (int i = 0; i < a->n; i++)
        if (!a->kw[i].s && k++ == pos) return a->v[i];
    return dflt;
}

static str_t need_str(rctx *c, value v, const char *what, int line)
{
    if (v.k != V_STR) fail(&c->f, MODEL_ECHAT_EVAL, line, "%s needs a string, not %s", what, kind_name(v));
    return v.u.s;
}

enum { FN_RAISE, FN_NAMESPACE, FN_RANGE, FN_STRFTIME, FN_DICT };
static const char *const global_fns[] = { "raise_exception", "namespace", "range", "strftime_now", "dict", NULL };

enum {
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_STARTSWITH,
    M_ENDSWITH,
    M_SPLIT,
    M_UPPER,
    M_LOWER,
    M_TITLE,
    M_CAPITALIZE,
    M_REPLACE,
    M_FIND,
    M_COUNT,
    M_JOIN,
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_GET,
};
static const char *const str_methods[] = { "strip",   "lstrip", "rstrip", "startswith", "endswith",
                                           "split",   "upper",  "lower",  "title",      "capitalize",
                                           "replace", "find",   "count",  "join",       NULL };
static const char *const dict_methods[] = { "items", "keys", "values", "get", NULL };

static int find_name(const char *const *names, str_t s)
{
    for (int i = 0; names[i]; i++)
        if (str_eq(s, names[i])) return i;
    return -1;
}

static value call_method(rctx *c, int id, value self, const argv_t *a, int line)
{
    failer *f = &c->f;
    if (self.k == V_DICT) {
        vdict *d = self.u.d;
        switch (id) {
        case M_ITEMS: {
            vlist *l = list_new(f, d->n);
            for (size_t i = 0; i < d->n; i++) {
                vlist *pair = list_new(f, 2);
                list_push(f, pair, vstr(d->key[i].s, d->key[i].n));
                list_push(f, pair, d->v[i]);
                list_push(f, l, vlistv(pair));
            }
            return vlistv(l);
        }
        case M_KEYS:
        case M_VALUES: {
            vlist *l = list_new(f, d->n);
            for (size_t i = 0; i < d->n; i++) list_push(f, l, id == M_KEYS ? vstr(d->key[i].s, d->key[i].n) : d->v[i]);
            return vlistv(l);
        }
        case M_GET: {
            value k = arg(c, a, 0, "key", UNDEF);
            value *v = k.k == V_STR ? dict_find(d, k.u.s) : NULL;
            return v ? *v : arg(c, a, 1, "default", NONE);
        }
        }
    }
    str_t s = need_str(c, self, "a string method", line);
    switch (id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        value ch = arg(c, a, 0, "chars", NONE);
        str_t chars = ch.k == V_STR ? ch.u.s : (str_t){ NULL, 0 };
        str_t r = strip(s, id != M_RSTRIP, id != M_LSTRIP, ch.k == V_STR ? &chars : NULL);
        return vstr(r.s, r.n);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        value p = arg(c, a, 0, "prefix", UNDEF);
        vlist one = { &p, 1, 1 };
        vlist *cands = p.k == V_LIST ? p.u.l : &one;
        for (size_t i = 0; i < cands->n; i++) {
            str_t x = need_str(c, cands->v[i], id == M_STARTSWITH ? "startswith" : "endswith", line);
            if (x.n <= s.n && memcmp(id == M_STARTSWITH ? s.s : s.s + s.n - x.n, x.s, x.n) == 0) return vbool(1);
        }
        return vbool(0);
    }
    case M_SPLIT: {
        value sep = arg(c, a, 0, "sep", NONE);
        value mx = arg(c, a, 1, "maxsplit", vint(-1));
        str_t sp = sep.k == V_STR ? sep.u.s : (str_t){ NULL, 0 };
        return split_str(c, s, sep.k == V_STR ? &sp : NULL, inum(mx));
    }
    case M_UPPER:
    case M_LOWER:
    case M_TITLE:
    case M_CAPITALIZE: {
        str_t r = map_case(c, s, id == M_LOWER ? 0 : id == M_UPPER ? 1 : id == M_TITLE ? 2 : 3);
        return vstr(r.s, r.n);
    }
    case M_REPLACE: {
        str_t r = replace_str(c, s, need_str(c, arg(c, a, 0, "old", UNDEF), "replace", line),
                              need_str(c, arg(c, a, 1, "new", UNDEF), "replace", line),
                              inum(arg(c, a, 2, "count", vint(-1))));
        return vstr(r.s, r.n);
    }
    case M_FIND:
    case M_COUNT: {
        str_t x = need_str(c, arg(c, a, 0, "sub", UNDEF), id == M_FIND ? "find" : "count", line);
        long long count = 0;
        size_t n_cp = 0;
        size_t *off = cp_offsets(c, s, &n_cp);
        for (size_t i = 0, k = 0; i + x.n <= s.n; i++) {
            while (k < n_cp && off[k] < i) k++;
            if (memcmp(s.s + i, x.s, x.n) == 0) {
                if (id == M_FIND) return vint((long long)k);
                count++;
                if (x.n) i += x.n - 1;
            }
        }
        return id == M_FIND ? vint(-1) : vint(count);
    }
    case M_JOIN: {
        value items = arg(c, a, 0, "iterable", UNDEF);
        if (items.k != V_LIST) fail(f, MODEL_ECHAT_EVAL, line, "join needs a list");
        buf_t b = { 0 };
        for (size_t i = 0; i < items.u.l->n; i++) {
            if (i) buf_put(f, &b, s.s, s.n);
            str_t x = need_str(c, items.u.l->v[i], "join", line);
            buf_put(f, &b, x.s, x.n);
        }
        str_t r = buf_str(&b);
        return vstr(r.s, r.n);
    }
    }
    fail(f, MODEL_ECHAT_EVAL, line, "unknown method");
}

static value call_global(rctx *c, int fn, const argv_t *a, int line)
{
    failer *f = &c->f;
    switch (fn) {
    case FN_RAISE: {
        str_t msg = to_str(c, arg(c, a, 0, "message", vstr("error", 5)));
        fail(f, MODEL_ECHAT_RAISE, line, "%.*s", (int)(msg.n > 300 ? 300 : msg.n), msg.s);
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        vdict *d = dict_new(f, (size_t)a->n);
        d->ns = fn == FN_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (!a->kw[i].s) {
                if (a->v[i].k == V_DICT) /* namespace(other_dict) copies it */
                    for (size_t k = 0; k < a->v[i].u.d->n; k++) dict_set(f, d, a->v[i].u.d->key[k], a->v[i].u.d->v[k]);
                else
                    fail(f, MODEL_ECHAT_EVAL, line, "namespace/dict take keyword arguments");
                continue;
            }
            dict_set(f, d, a->kw[i], a->v[i]);
        }
        return vdictv(d);
    }
    case FN_RANGE: {
        long long start = 0, stop, step = 1;
        if (a->n == 1)
            stop = inum(a->v[0]);
        else if (a->n >= 2) {
            start = inum(a->v[0]);
            stop = inum(a->v[1]);
            if (a->n >= 3) step = inum(a->v[2]);
        } else
            fail(f, MODEL_ECHAT_EVAL, line, "range needs an argument");
        if (step == 0) fail(f, MODEL_ECHAT_EVAL, line, "range step must not be zero");
        vlist *l = list_new(f, 8);
        for (long long i = start; step > 0 ? i < stop : i > stop; i += step) {
            if (++c->steps > CT_MAX_STEPS) fail(f, MODEL_ECHAT_EVAL, line, "more than %ld loop steps", CT_MAX_STEPS);
            list_push(f, l, vint(i));
        }
        return vlistv(l);
    }
    case FN_STRFTIME: {
        str_t fmt = need_str(c, arg(c, a, 0, "format", UNDEF), "strftime_now", line);
        char fz[128], out[256];
        snprintf(fz, sizeof fz, "%.*s", (int)fmt.n, fmt.s);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t n = strftime(out, sizeof out, fz, &tmv);
        char *s = xalloc(f, n + 1);
        memcpy(s, out, n);
        s[n] = '\0';
        return vstr(s, n);
    }
    }
    fail(f, MODEL_ECHAT_EVAL, line, "unknown function");
}

static int run_test(rctx *c, str_t name, value v, const argv_t *a, int line)
{
    value x = a->n > 0 ? a->v[0] : UNDEF;
    if (str_eq(name, "defined")) return v.k != V_UNDEF;
    if (str_eq(name, "undefined")) return v.k == V_UNDEF;
    if (str_eq(name, "none")) return v.k == V_NONE;
    if (str_eq(name, "boolean")) return v.k == V_BOOL;
    if (str_eq(name, "true")) return v.k == V_BOOL && v.u.b;
    if (str_eq(name, "false")) return v.k == V_BOOL && !v.u.b;
    if (str_eq(name, "number")) return v.k == V_INT || v.k == V_FLOAT;
    if (str_eq(name, "integer")) return v.k == V_INT;
    if (str_eq(name, "float")) return v.k == V_FLOAT;
    if (str_eq(name, "string")) return v.k == V_STR;
    if (str_eq(name, "mapping")) return v.k == V_DICT;
    if (str_eq(name, "sequence")) return v.k == V_LIST || v.k == V_STR || v.k == V_DICT;
    if (str_eq(name, "iterable")) return v.k == V_LIST || v.k == V_STR || v.k == V_DICT;
    if (str_eq(name, "callable")) return v.k == V_FUNC || v.k == V_METHOD;
    if (str_eq(name, "equalto") || str_eq(name, "eq") || str_eq(name, "sameas")) return equal(c, v, x);
    if (str_eq(name, "ne")) return !equal(c, v, x);
    if (str_eq(name, "lt")) return compare(c, v, x, line) < 0;
    if (str_eq(name, "le")) return compare(c, v, x, line) <= 0;
    if (str_eq(name, "gt")) return compare(c, v, x, line) > 0;
    if (str_eq(name, "ge")) return compare(c, v, x, line) >= 0;
    if (str_eq(name, "in")) return contains(c, x, v, line);
    if (str_eq(name, "odd") || str_eq(name, "even") || str_eq(name, "divisibleby")) {
        if (v.k != V_INT) fail(&c->f, MODEL_ECHAT_EVAL, line, "'%.*s' needs an integer", (int)name.n, name.s);
        long long d = str_eq(name, "divisibleby") ? inum(x) : 2;
        if (d == 0) fail(&c->f, MODEL_ECHAT_EVAL, line, "division by zero");
        int rem = v.u.i % d != 0;
        return str_eq(name, "odd") ? rem : !rem;
    }
    if (str_eq(name, "lower") || str_eq(name, "upper")) {
        if (v.k != V_STR) return 0;
        for (size_t i = 0; i < v.u.s.n; i++) {
            char ch = v.u.s.s[i];
            if (str_eq(name, "lower") ? (ch >= 'A' && ch <= 'Z') : (ch >= 'a' && ch <= 'z')) return 0;
        }
        return 1;
    }
    fail(&c->f, MODEL_ECHAT_UNSUPPORTED, line, "the test '%.*s' is not supported", (int)name.n, name.s);
}

static value get_attr(rctx *c, value obj, str_t name);

static value apply_filter(rctx *c, str_t name, value v, const argv_t *a, int line)
{
    failer *f = &c->f;
    if (str_eq(name, "trim")) {
        value ch = arg(c, a, 0, "chars", NONE);
        str_t chars = ch.k == V_STR ? ch.u.s : (str_t){ NULL, 0 };
        str_t r = strip(to_str(c, v), 1, 1, ch.k == V_STR ? &chars : NULL);
        return vstr(r.s, r.n);
    }
    if (str_eq(name, "length") || str_eq(name, "count")) {
        if (v.k == V_STR) {
            size_t n_cp;
            cp_offsets(c, v.u.s, &n_cp);
            return vint((long long)n_cp);
        }
        if (v.k == V_LIST) return vint((long long)v.u.l->n);
        if (v.k == V_DICT) return vint((long long)v.u.d->n);
        if (v.k == V_UNDEF) return vint(0);
        fail(f, MODEL_ECHAT_EVAL, line, "length of %s", kind_name(v));
    }
    if (str_eq(name, "upper") || str_eq(name, "lower") || str_eq(name, "title") || str_eq(name, "capitalize")) {
        str_t r = map_case(c, to_str(c, v),
                           str_eq(name, "lower")   ? 0
                           : str_eq(name, "upper") ? 1
                           : str_eq(name, "title") ? 2
                                                   : 3);
        return vstr(r.s, r.n);
    }
    if (str_eq(name, "string")) {
        str_t s = to_str(c, v);
        return vstr(s.s, s.n);
    }
    if (str_eq(name, "safe") || str_eq(name, "e") || str_eq(name, "escape")) {
        if (str_eq(name, "safe")) return v;
        fail(f, MODEL_ECHAT_UNSUPPORTED, line, "the filter '%.*s' is not supported", (int)name.n, name.s);
    }
    if (str_eq(name, "tojson")) {
        value ind = arg(c, a, 0, "indent", NONE);
        buf_t b = { 0 };
        put_json(c, &b, v, ind.k == V_INT ? (int)ind.u.i : -1, 0, truthy(arg(c, a, 99, "sort_keys", vbool(0))));
        str_t s = buf_str(&b);
        return vstr(s.s, s.n);
    }
    if (str_eq(name, "default") || str_eq(name, "d")) {
        value dflt = arg(c, a, 0, "default_value", vstr("", 0));
        int boolean = truthy(arg(c, a, 1, "boolean", vbool(0)));
        return v.k == V_UNDEF || (boolean && !truthy(v)) ? dflt : v;
    }
    if (str_eq(name, "first") || str_eq(name, "last")) {
        int first = str_eq(name, "first");
        if (v.k == V_LIST) return v.u.l->n ? v.u.l->v[first ? 0 : v.u.l->n - 1] : UNDEF;
        if (v.k == V_STR) {
            size_t n_cp;
            size_t *off = cp_offsets(c, v.u.s, &n_cp);
            if (!n_cp) return UNDEF;
            size_t k = first ? 0 : n_cp - 1;
            return vstr(v.u.s.s + off[k], off[k + 1] - off[k]);
        }
        fail(f, MODEL_ECHAT_EVAL, line, "'%.*s' of %s", (int)name.n, name.s, kind_name(v));
    }
    if (str_eq(name, "join")) {
        str_t sep = to_str(c, arg(c, a, 0, "d", vstr("", 0)));
        value attr = arg(c, a, 1, "attribute", UNDEF);
        if (v.k != V_LIST) fail(f, MODEL_ECHAT_EVAL, line, "join needs a list");
        buf_t b = { 0 };
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) buf_put(f, &b, sep.s, sep.n);
            value x = attr.k == V_STR ? get_attr(c, v.u.l->v[i], attr.u.s) : v.u.l->v[i];
            str_t s = to_str(c, x);
            buf_put(f, &b, s.s, s.n);
        }
        str_t r = buf_str(&b);
        return vstr(r.s, r.n);
    }
    if (str_eq(name, "replace")) {
        str_t r = replace_str(c, to_str(c, v), to_str(c, arg(c, a, 0, "old", vstr("", 0))),
                              to_str(c, arg(c, a, 1, "new", vstr("", 0))), inum(arg(c, a, 2, "count", vint(-1))));
        return vstr(r.s, r.n);
    }
    if (str_eq(name, "list")) {
        if (v.k == V_LIST) return v;
        vlist *l = list_new(f, 8);
        if (v.k == V_DICT)
            for (size_t i = 0; i < v.u.d->n; i++) list_push(f, l, vstr(v.u.d->key[i].s, v.u.d->key[i].n));
        else if (v.k == V_STR) {
            size_t n_cp;
            size_t *off = cp_offsets(c, v.u.s, &n_cp);
            for (size_t i = 0; i < n_cp; i++) list_push(f, l, vstr(v.u.s.s + off[i], off[i + 1] - off[i]));
        } else if (v.k != V_UNDEF)
            fail(f, MODEL_ECHAT_EVAL, line, "list of %s", kind_name(v));
        return vlistv(l);
    }
    if (str_eq(name, "reverse")) {
        if (v.k == V_STR) {
            size_t n_cp;
            size_t *off = cp_offsets(c, v.u.s, &n_cp);
            buf_t b = { 0 };
            for (size_t i = n_cp; i > 0; i--) buf_put(f, &b, v.u.s.s + off[i - 1], off[i] - off[i - 1]);
            str_t r = buf_str(&b);
            return vstr(r.s, r.n);
        }
        if (v.k != V_LIST) fail(f, MODEL_ECHAT_EVAL, line, "reverse of %s", kind_name(v));
        vlist *l = list_new(f, v.u.l->n);
        for (size_t i = v.u.l->n; i > 0; i--) list_push(f, l, v.u.l->v[i - 1]);
        return vlistv(l);
    }
    if (str_eq(name, "items")) {
        if (v.k != V_DICT) fail(f, MODEL_ECHAT_EVAL, line, "items of %s", kind_name(v));
        return call_method(c, M_ITEMS, v, a, line);
    }
    if (str_eq(name, "int")) {
        if (v.k == V_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.s);
            return vint(strtoll(tmp, NULL, 10));
        }
        return is_num(v) ? vint(inum(v)) : arg(c, a, 0, "default", vint(0));
    }
    if (str_eq(name, "float")) {
        if (v.k == V_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.s);
            return vfloat(strtod(tmp, NULL));
        }
        return is_num(v) ? vfloat(num(v)) : arg(c, a, 0, "default", vfloat(0));
    }
    if (str_eq(name, "abs")) {
        if (v.k == V_INT) return vint(v.u.i < 0 ? -v.u.i : v.u.i);
        if (v.k == V_FLOAT) return vfloat(fabs(v.u.f));
        fail(f, MODEL_ECHAT_EVAL, line, "abs of %s", kind_name(v));
    }
    if (str_eq(name, "selectattr") || str_eq(name, "rejectattr") || str_eq(name, "select") || str_eq(name, "reject")) {
        int by_attr = name.s[6] == 'a', keep = name.s[0] == 's';
        if (v.k == V_UNDEF) return vlistv(list_new(f, 1));
        if (v.k != V_LIST) fail(f, MODEL_ECHAT_EVAL, line, "%.*s needs a list", (int)name.n, name.s);
        value attr = by_attr ? arg(c, a, 0, "attribute", UNDEF) : UNDEF;
        value test = arg(c, a, by_attr ? 1 : 0, "test", UNDEF);
        if (by_attr && attr.k != V_STR)
            fail(f, MODEL_ECHAT_EVAL, line, "%.*s needs an attribute name", (int)name.n, name.s);
        argv_t rest = { a->v + (by_attr ? 2 : 1), a->kw + (by_attr ? 2 : 1), a->n - (by_attr ? 2 : 1) };
        if (rest.n < 0) rest.n = 0;
        vlist *l = list_new(f, v.u.l->n);
        for (size_t i = 0; i < v.u.l->n; i++) {
            value x = by_attr ? get_attr(c, v.u.l->v[i], attr.u.s) : v.u.l->v[i];
            int ok = test.k == V_STR ? run_test(c, test.u.s, x, &rest, line) : truthy(x);
            if (ok == keep) list_push(f, l, v.u.l->v[i]);
        }
        return vlistv(l);
    }
    if (str_eq(name, "map")) {
        if (v.k != V_LIST) fail(f, MODEL_ECHAT_EVAL, line, "map needs a list");
        value attr = arg(c, a, 99, "attribute", UNDEF);
        value fname = arg(c, a, 0, "filter", UNDEF);
        vlist *l = list_new(f, v.u.l->n);
        argv_t rest = { a->v + 1, a->kw + 1, a->n > 0 ? a->n - 1 : 0 };
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (attr.k == V_STR)
                list_push(f, l, get_attr(c, v.u.l->v[i], attr.u.s));
            else if (fname.k == V_STR)
                list_push(f, l, apply_filter(c, fname.u.s, v.u.l->v[i], &rest, line));
            else
                fail(f, MODEL_ECHAT_EVAL, line, "map needs attribute= or a filter name");
        }
        return vlistv(l);
    }
    fail(f, MODEL_ECHAT_UNSUPPORTED, line, "the filter '%.*s' is not supported", (int)name.n, name.s);
}

/* ---- Rendering: expressions ------------------------------------------------------------------------- */

static value get_attr(rctx *c, value obj, str_t name)
{
    if (obj.k == V_DICT) {
        int m = obj.u.d->ns ? -1 : find_name(dict_methods, name);
        if (m >= 0) {
            value v = { V_METHOD, { 0 } };
            v.u.m.id = M_ITEMS + m;
            v.u.m.self = xalloc(&c->f, sizeof *v.u.m.self);
            *v.u.m.self = obj;
            return v;
        }
        value *v = dict_find(obj.u.d, name);
        return v ? *v : UNDEF;
    }
    if (obj.k == V_STR) {
        int m = find_name(str_methods, name);
        if (m >= 0) {
            value v = { V_METHOD, { 0 } };
            v.u.m.id = m;
            v.u.m.self = xalloc(&c->f, sizeof *v.u.m.self);
            *v.u.m.self = obj;
            return v;
        }
    }
    return UNDEF;
}

static value get_item(rctx *c, value obj, value key, int line)
{
    if (obj.k == V_DICT) {
        if (key.k != V_STR) return UNDEF;
        value *v = dict_find(obj.u.d, key.u.s);
        return v ? *v : get_attr(c, obj, key.u.s);
    }
    if (obj.k == V_LIST || obj.k == V_STR) {
        if (key.k == V_STR) return get_attr(c, obj, key.u.s);
        if (key.k != V_INT && key.k != V_BOOL) fail(&c->f, MODEL_ECHAT_EVAL, line, "index must be an integer");
        long long i = inum(key);
        if (obj.k == V_LIST) {
            long long n = (long long)obj.u.l->n;
            if (i < 0) i += n;
            return i >= 0 && i < n ? obj.u.l->v[i] : UNDEF;
        }
        size_t n_cp;
        size_t *off = cp_offsets(c, obj.u.s, &n_cp);
        if (i < 0) i += (long long)n_cp;
        if (i < 0 || i >= (long long)n_cp) return UNDEF;
        return vstr(obj.u.s.s + off[i], off[i + 1] - off[i]);
    }
    return UNDEF;
}

static value eval(rctx *c, frame *fr, const node *n);

static void eval_args(rctx *c, frame *fr, const node *n, argv_t *a, int extra_first, value first)
{
    int total = n->nargs + (extra_first ? 1 : 0);
    a->v = xalloc(&c->f, (size_t)(total ? total : 1) * sizeof *a->v);
    a->kw = xalloc(&c->f, (size_t)(total ? total : 1) * sizeof *a->kw);
    a->n = 0;
    (void)first;
    for (int i = 0; i < n->nargs; i++) {
        a->kw[a->n] = n->kw[i];
        a->v[a->n++] = eval(c, fr, n->args[i]);
    }
}

/* A slice bound as Python computes it: absent -> dflt; a negative one counts from the end;
 * then clamped to [0, n] for a positive step, [-1, n - 1] for a negative one. */
static long long slice_bound(value b, long long n, long long st, long long dflt)
{
    if (b.k == V_NONE || b.k == V_UNDEF) return dflt;
    long long x = inum(b);
    if (x < 0) x += n;
    if (st > 0) return x < 0 ? 0 : x > n ? n : x;
    return x < -1 ? -1 : x > n - 1 ? n - 1 : x;
}

static value slice(rctx *c, value obj, value start, value stop, value step, int line)
{
    failer *f = &c->f;
    long long st = step.k == V_NONE || step.k == V_UNDEF ? 1 : inum(step);
    if (st == 0) fail(f, MODEL_ECHAT_EVAL, line, "slice step must not be zero");
    size_t n_cp = 0;
    size_t *off = NULL;
    long long n;
    if (obj.k == V_LIST)
        n = (long long)obj.u.l->n;
    else if (obj.k == V_STR) {
        off = cp_offsets(c, obj.u.s, &n_cp);
        n = (long long)n_cp;
    } else if (obj.k == V_UNDEF)
        return UNDEF;
    else
        fail(f, MODEL_ECHAT_EVAL, line, "cannot slice %s", kind_name(obj));
    /* Python's rules for missing and negative bounds */
    long long lo = slice_bound(start, n, st, st > 0 ? 0 : n - 1);
    long long hi = slice_bound(stop, n, st, st > 0 ? n : -1);
    if (obj.k == V_LIST) {
        vlist *l = list_new(f, 8);
        for (long long i = lo; st > 0 ? i < hi : i > hi; i += st) list_push(f, l, obj.u.l->v[i]);
        return vlistv(l);
    }
    buf_t b = { 0 };
    for (long long i = lo; st > 0 ? i < hi : i > hi; i += st) buf_put(f, &b, obj.u.s.s + off[i], off[i + 1] - off[i]);
    str_t r = buf_str(&b);
    return vstr(r.s, r.n);
}

static value eval(rctx *c, frame *fr, const node *n)
{
    failer *f = &c->f;
    if (++c->depth > CT_MAX_DEPTH) fail(f, MODEL_ECHAT_EVAL, n->line, "expression nested too deeply");
    value r = UNDEF;
    switch (n->k) {
    case E_LIT: r = n->lit; break;
    case E_NAME: {
        r = lookup(c, fr, n->name);
        if (r.k == V_UNDEF) {
            int fn = find_name(global_fns, n->name);
            if (fn >= 0) {
                r.k = V_FUNC;
                r.u.fn = fn;
            }
        }
        break;
    }
    case E_ATTR: r = get_attr(c, eval(c, fr, n->a), n->name); break;
    case E_INDEX: {
        value obj = eval(c, fr, n->a);
        r = get_item(c, obj, eval(c, fr, n->b), n->line);
        break;
    }
    case E_SLICE: {
        value obj = eval(c, fr, n->a);
        r = slice(c, obj, n->b ? eval(c, fr, n->b) : NONE, n->c ? eval(c, fr, n->c) : NONE,
                  n->d ? eval(c, fr, n->d) : NONE, n->line);
        break;
    }
    case E_CALL: {
        value callee = eval(c, fr, n->a);
        argv_t a;
        eval_args(c, fr, n, &a, 0, UNDEF);
        if (callee.k == V_FUNC)
            r = call_global(c, callee.u.fn, &a, n->line);
        else if (callee.k == V_METHOD)
            r = call_method(c, callee.u.m.id, *callee.u.m.self, &a, n->line);
        else if (n->a->k == E_ATTR || n->a->k == E_NAME)
            fail(f, callee.k == V_UNDEF ? MODEL_ECHAT_UNSUPPORTED : MODEL_ECHAT_EVAL, n->line,
                 "'%.*s' is not a function this evaluator knows", (int)n->a->name.n, n->a->name.s);
        else
            fail(f, MODEL_ECHAT_EVAL, n->line, "calling a value that is not a function");
        break;
    }
    case E_FILTER: {
        value v = eval(c, fr, n->a);
        argv_t a;
        eval_args(c, fr, n, &a, 0, UNDEF);
        r = apply_filter(c, n->name, v, &a, n->line);
        break;
    }
    case E_TEST: {
        value v = eval(c, fr, n->a);
        argv_t a;
        eval_args(c, fr, n, &a, 0, UNDEF);
        int t = run_test(c, n->name, v, &a, n->line);
        r = vbool(n->negate ? !t : t);
        break;
    }
    case E_NOT: r = vbool(!truthy(eval(c, fr, n->a))); break;
    case E_NEG:
    case E_POS: {
        value v = eval(c, fr, n->a);
        if (v.k == V_INT)
            r = vint(n->k == E_NEG ? -v.u.i : v.u.i);
        else if (v.k == V_FLOAT)
            r = vfloat(n->k == E_NEG ? -v.u.f : v.u.f);
        else
            fail(f, MODEL_ECHAT_EVAL, n->line, "bad operand for unary %c: %s", n->k == E_NEG ? '-' : '+', kind_name(v));
        break;
    }
    case E_BIN: {
        value a = eval(c, fr, n->a), b = eval(c, fr, n->b);
        r = binop(c, n->name.s, a, b, n->line);
        break;
    }
    case E_AND: {
        value a = eval(c, fr, n->a);
        r = truthy(a) ? eval(c, fr, n->b) : a;
        break;
    }
    case E_OR: {
        value a = eval(c, fr, n->a);
        r = truthy(a) ? a : eval(c, fr, n->b);
        break;
    }
    case E_COND: r = truthy(eval(c, fr, n->a)) ? eval(c, fr, n->b) : n->c ? eval(c, fr, n->c) : UNDEF; break;
    case E_LIST: {
        vlist *l = list_new(f, (size_t)n->nargs);
        for (int i = 0; i < n->nargs; i++) list_push(f, l, eval(c, fr, n->args[i]));
        r = vlistv(l);
        break;
    }
    case E_DICT: {
        vdict *d = dict_new(f, (size_t)n->nargs / 2 + 1);
        for (int i = 0; i + 1 < n->nargs; i += 2) {
            value k = eval(c, fr, n->args[i]);
            if (k.k != V_STR)
                fail(f, MODEL_ECHAT_UNSUPPORTED, n->line, "dict keys other than strings are not supported");
            dict_set(f, d, k.u.s, eval(c, fr, n->args[i + 1]));
        }
        r = vdictv(d);
        break;
    }
    }
    c->depth--;
    return r;
}

/* ---- Rendering: statements --------------------------------------------------------------------------- */

static void exec_list(rctx *c, frame *fr, const stmt_list *l);

static frame *frame_new(rctx *c, frame *up)
{
    frame *x = xalloc(&c->f, sizeof *x);
    x->up = up;
    x->vars = dict_new(&c->f, 4);
    return x;
}

static void exec_for(rctx *c, frame *fr, const stmt *s)
{
    failer *f = &c->f;
    value it = eval(c, fr, s->expr);
    vlist *items;
    if (it.k == V_LIST)
        items = it.u.l;
    else if (it.k == V_DICT) { /* iterating a dict gives its keys */
        items = list_new(f, it.u.d->n);
        for (size_t i = 0; i < it.u.d->n; i++) list_push(f, items, vstr(it.u.d->key[i].s, it.u.d->key[i].n));
    } else if (it.k == V_STR) {
        argv_t none = { NULL, NULL, 0 };
        items = apply_filter(c, (str_t){ "list", 4 }, it, &none, s->line).u.l;
    } else if (it.k == V_UNDEF)
        items = list_new(f, 1);
    else
        fail(f, MODEL_ECHAT_EVAL, s->line, "cannot loop over %s", kind_name(it));

    /* the "if" filter runs before loop.length and friends are known */
    if (s->cond) {
        vlist *kept = list_new(f, items->n);
        for (size_t i = 0; i < items->n; i++) {
            frame *tmp = frame_new(c, fr);
            if (s->n_targets == 2) {
                value x = items->v[i];
                if (x.k != V_LIST || x.u.l->n != 2) fail(f, MODEL_ECHAT_EVAL, s->line, "cannot unpack into two names");
                dict_set(f, tmp->vars, s->target[0], x.u.l->v[0]);
                dict_set(f, tmp->vars, s->target[1], x.u.l->v[1]);
            } else {
                dict_set(f, tmp->vars, s->target[0], items->v[i]);
            }
            if (truthy(eval(c, tmp, s->cond))) list_push(f, kept, items->v[i]);
        }
        items = kept;
    }
    if (items->n == 0) {
        exec_list(c, fr, &s->orelse);
        return;
    }
    size_t n = items->n;
    for (size_t i = 0; i < n; i++) {
        if (++c->steps > CT_MAX_STEPS) fail(f, MODEL_ECHAT_EVAL, s->line, "more than %ld loop steps", CT_MAX_STEPS);
        frame *it_fr = frame_new(c, fr);
        vdict *loop = dict_new(f, 10);
        dict_set(f, loop, (str_t){ "index", 5 }, vint((long long)i + 1));
        dict_set(f, loop, (str_t){ "index0", 6 }, vint((long long)i));
        dict_set(f, loop, (str_t){ "revindex", 8 }, vint((long long)(n - i)));
        dict_set(f, loop, (str_t){ "revindex0", 9 }, vint((long long)(n - i - 1)));
        dict_set(f, loop, (str_t){ "first", 5 }, vbool(i == 0));
        dict_set(f, loop, (str_t){ "last", 4 }, vbool(i + 1 == n));
        dict_set(f, loop, (str_t){ "length", 6 }, vint((long long)n));
        dict_set(f, loop, (str_t){ "previtem", 8 }, i ? items->v[i - 1] : UNDEF);
        dict_set(f, loop, (str_t){ "nextitem", 8 }, i + 1 < n ? items->v[i + 1] : UNDEF);
        dict_set(f, it_fr->vars, (str_t){ "loop", 4 }, vdictv(loop));
        value x = items->v[i];
        if (s->n_targets == 2) {
            if (x.k != V_LIST || x.u.l->n != 2) fail(f, MODEL_ECHAT_EVAL, s->line, "cannot unpack into two names");
            dict_set(f, it_fr->vars, s->target[0], x.u.l->v[0]);
            dict_set(f, it_fr->vars, s->target[1], x.u.l->v[1]);
        } else {
            dict_set(f, it_fr->vars, s->target[0], x);
        }
        exec_list(c, it_fr, &s->body);
        if (c->brk) {
            c->brk = 0;
            break;
        }
        c->cont = 0;
    }
}

static void exec_list(rctx *c, frame *fr, const stmt_list *l)
{
    failer *f = &c->f;
    for (size_t i = 0; i < l->n && !c->brk && !c->cont; i++) {
        const stmt *s = l->v[i];
        switch (s->k) {
        case S_TEXT: buf_put(f, c->out, s->text.s, s->text.n); break;
        case S_OUT: put_str(c, c->out, eval(c, fr, s->expr)); break;
        case S_IF: {
            int done = 0;
            for (int b = 0; b < s->n_branches && !done; b++)
                if (truthy(eval(c, fr, s->conds[b]))) {
                    exec_list(c, fr, &s->bodies[b]);
                    done = 1;
                }
            if (!done) exec_list(c, fr, &s->orelse);
            break;
        }
        case S_FOR: exec_for(c, fr, s); break;
        case S_SET:
        case S_SETBLOCK: {
            value v;
            if (s->k == S_SET) {
                v = eval(c, fr, s->expr);
            } else {
                buf_t b = { 0 }, *saved = c->out;
                c->out = &b;
                exec_list(c, fr, &s->body);
                c->out = saved;
                str_t r = buf_str(&b);
                v = vstr(r.s, r.n);
            }
            if (s->n_targets == 2) {
                value ns = lookup(c, fr, s->target[0]);
                if (ns.k != V_DICT || !ns.u.d->ns)
                    fail(f, MODEL_ECHAT_EVAL, s->line, "'%.*s' is not a namespace", (int)s->target[0].n,
                         s->target[0].s);
                dict_set(f, ns.u.d, s->target[1], v);
            } else {
                dict_set(f, fr->vars, s->target[0], v);
            }
            break;
        }
        case S_BREAK: c->brk = 1; break;
        case S_CONTINUE: c->cont = 1; break;
        case S_BLOCK: exec_list(c, fr, &s->body); break;
        }
    }
}

int model_chat_template_render(const model_chat_template *t, const model_chat_input *in, char **out, size_t *len,
                               char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!t || !in || !out || (in->messages && !json_is_array(in->messages))) return MODEL_EINVAL;
    *out = NULL;
    if (len) *len = 0;
    arena mem = { 0 };
    rctx *c = calloc(1, sizeof *c);
    buf_t *o = calloc(1, sizeof *o);
    if (!c || !o) {
        free(c);
        free(o);
        return MODEL_ENOMEM;
    }
    c->f.mem = &mem;
    c->f.err = err;
    c->f.errlen = errlen;
    c->out = o;
    if (setjmp(c->f.jb)) {
        int code = c->f.code;
        arena_free(&mem);
        free(c);
        free(o);
        return code;
    }
    frame *g = frame_new(c, NULL);
    c->globals = g;
    vlist *msgs = list_new(&c->f, in->messages ? json_array_size(in->messages) : 1);
    for (size_t i = 0; in->messages && i < json_array_size(in->messages); i++)
        list_push(&c->f, msgs, message_from_json(c, json_array_get(in->messages, i)));
    const char *bos = in->bos_token ? in->bos_token : "", *eos = in->eos_token ? in->eos_token : "";
    dict_set(&c->f, g->vars, (str_t){ "messages", 8 }, vlistv(msgs));
    dict_set(&c->f, g->vars, (str_t){ "add_generation_prompt", 21 }, vbool(in->add_generation_prompt));
    dict_set(&c->f, g->vars, (str_t){ "bos_token", 9 }, vstr(bos, strlen(bos)));
    dict_set(&c->f, g->vars, (str_t){ "eos_token", 9 }, vstr(eos, strlen(eos)));
    exec_list(c, g, &t->body);
    char *res = malloc(o->n + 1);
    if (!res) {
        arena_free(&mem);
        free(c);
        free(o);
        return MODEL_ENOMEM;
    }
    if (o->n) memcpy(res, o->p, o->n);
    res[o->n] = '\0';
    *out = res;
    if (len) *len = o->n;
    arena_free(&mem);
    free(c);
    free(o);
    return MODEL_OK;
}

/* ---- Built-in templates ------------------------------------------------------------------------------- *
 * Written here for `--chat-template NAME`, for models whose files carry no template (or a
 * wrong one).  Each renders its family's published turn format; where a family's own
 * templates differ between models (Gemma's refusal of a system turn, Phi-3's BOS), the
 * choice made is said in a comment. */

static const char tpl_chatml[] = "{%- for m in messages -%}\n"
                                 "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}\n"
                                 "{%- endfor -%}\n"
                                 "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n";

/* Llama 2 chat: the system text folded into the first [INST], every user turn opened by
 * BOS, every answer closed by EOS. */
static const char tpl_llama2[] =
    "{%- set ns = namespace(sys=none, rest=messages) -%}\n"
    "{%- if messages and messages[0].role == 'system' -%}\n"
    "{%- set ns.sys = messages[0].content | trim -%}{%- set ns.rest = messages[1:] -%}\n"
    "{%- endif -%}\n"
    "{%- for m in ns.rest -%}\n"
    "{%- if m.role == 'user' -%}\n"
    "{%- set text = m.content | trim -%}\n"
    "{%- if loop.first and ns.sys is not none -%}{%- set text = '<<SYS>>\\n' + ns.sys + '\\n<</SYS>>\\n\\n' + text "
    "-%}{%- endif -%}\n"
    "{{- bos_token + '[INST] ' + text + ' [/INST]' -}}\n"
    "{%- elif m.role == 'assistant' -%}\n"
    "{{- ' ' + (m.content | trim) + ' ' + eos_token -}}\n"
    "{%- else -%}\n"
    "{{- raise_exception('llama2 chat has user and assistant turns after an optional first system message') -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n";

static const char tpl_llama3[] =
    "{{- bos_token -}}\n"
    "{%- for m in messages -%}\n"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}\n";

static const char tpl_zephyr[] = "{%- for m in messages -%}\n"
                                 "{{- '<|' + m.role + '|>\\n' + m.content + eos_token + '\\n' -}}\n"
                                 "{%- endfor -%}\n"
                                 "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n";

/* Gemma has no system turn: this one puts a system message's text at the head of the
 * first user turn (as Gemma 3's own template does) rather than refusing it (Gemma 1/2). */
static const char tpl_gemma[] =
    "{{- bos_token -}}\n"
    "{%- set ns = namespace(prefix='', rest=messages) -%}\n"
    "{%- if messages and messages[0].role == 'system' -%}\n"
    "{%- set ns.prefix = (messages[0].content | trim) + '\\n\\n' -%}{%- set ns.rest = messages[1:] -%}\n"
    "{%- endif -%}\n"
    "{%- for m in ns.rest -%}\n"
    "{%- set role = 'model' if m.role == 'assistant' else m.role -%}\n"
    "{%- set text = (ns.prefix if loop.first else '') + (m.content | trim) -%}\n"
    "{{- '<start_of_turn>' + role + '\\n' + text + '<end_of_turn>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}\n";

/* Phi-3: no BOS (Phi-3-mini's current template has none; the tokenizer adds none either). */
static const char tpl_phi3[] =
    "{%- for m in messages -%}\n"
    "{{- '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}\n";

const char *const model_chat_template_names[] = { "chatml", "llama2", "llama3", "zephyr", "gemma", "phi3", NULL };
static const char *const builtin_src[] = { tpl_chatml, tpl_llama2, tpl_llama3, tpl_zephyr, tpl_gemma, tpl_phi3 };

const char *model_chat_template_builtin(const char *name)
{
    for (int i = 0; name && model_chat_template_names[i]; i++)
        if (!strcmp(name, model_chat_template_names[i])) return builtin_src[i];
    return NULL;
}

const char *model_chat_template_family(const char *source)
{
    if (!source) return "custom";
    if (strstr(source, "<|im_start|>")) return "chatml";
    if (strstr(source, "<|start_header_id|>")) return "llama3";
    if (strstr(source, "<start_of_turn>")) return "gemma";
    if (strstr(source, "<|end|>") &&
        (strstr(source, "<|user|>") || strstr(source, "<|assistant|>") || strstr(source, "'<|' + message['role']")))
        return "phi3";
    if (strstr(source, "<|user|>") || strstr(source, "<|assistant|>")) return "zephyr";
    if (strstr(source, "[INST]")) return "llama2";
    return "custom";
}
