/* constrain.c -- the grammar's pushdown automaton, run lazily, and the token masks.
 *
 * Configurations.  The automaton is the classic stack machine over the compiled
 * grammar (grammar_internal.h): a stack is a position whose element is a terminal
 * (what the next byte must match) over a chain of return positions.  Because the
 * grammar may be ambiguous, a configuration is a SET of such stacks plus an
 * "accepting" flag (some alternative chain has finished with nothing left).
 * Reading a byte keeps the stacks whose terminal holds it, steps past that
 * terminal, and closes over the result: references push a return position (none
 * for a reference in tail position, so x* never grows the stack) and expand every
 * alternative; the end of an alternative pops.  The grammar's checks guarantee a
 * closure ends, and that every stack can still be completed.
 *
 * Hash-consing makes configurations cheap to compare and to cache.  Stack nodes
 * (position, parent node) are interned, so equal stacks are one node id and
 * share their tails; a configuration is the sorted set of its top node ids, also
 * interned, so equal configurations are one state id.  That turns the pushdown
 * automaton into a deterministic one built on demand: next[state][byte class] is
 * computed once and then read from a table (a lazily determinized automaton, as
 * regex engines build DFAs lazily).  Byte classes (grammar.c) keep rows short.
 *
 * Masks.  The tokens allowed in a state are found by walking the vocabulary trie
 * (constrain_vocab.c) in preorder from that state: each trie edge is one table
 * read, and an edge into a dead state skips its whole subtree -- so a state that
 * admits a few bytes costs a few nodes, and one that admits almost anything (inside
 * a JSON string) costs one pass over the trie, once.  Each state's mask is a
 * bitset over the vocabulary, cached; generation is full of repeated states (every
 * character of a string returns to the same one), so after the first visits a step
 * is a table lookup plus one pass over the logits.  Whether any text token is
 * allowed is recorded with the mask, which gives the status (may the text end here,
 * must it, or is it stuck).
 *
 * Sharing and memory.  The tables belong to a cache made for one grammar and
 * vocabulary, and every constraint made from the cache (the n choices of a
 * request, later requests with the same grammar) works in them under their
 * mutex, so a state's walk is paid once for all of them.  Tables only grow; past
 * CACHE_LIMIT bytes the cache starts new ones for the constraints made after that
 * (the old ones are freed with their last constraint), and a constraint whose
 * tables pass twice that moves, before its next new mask, to private tables
 * holding only its current state (read out as stacks of positions and interned
 * anew) -- correctness never depends on what is cached.  A single closure or walk
 * may not push tables past HARD_LIMIT: that fails the step with SAMPLER_ENOMEM (a
 * pathological grammar), never a wrong mask.  (The mutexes are POSIX's, in glibc's
 * libc itself; C11's mtx_t would do, but thread sanitizers do not see it.)
 *
 * Why not llama.cpp's way: it keeps the stacks as vectors and, every step,
 * advances every candidate token's bytes through them (with a partial-UTF-8
 * state); its cost per step is the vocabulary's size times the stacks' work, and
 * nothing is reused between steps.  Here a step costs a cache hit almost always.
 */
#include "sampler/grammar_internal.h"
#include "sampler/sampler_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define DEAD        (-1)
#define UNKNOWN     (-2)
#define CACHE_LIMIT ((size_t)8 << 20)   /* bytes of shared tables before new ones are started */
#define HARD_LIMIT  ((size_t)256 << 20) /* bytes one step may reach */

/* ---- The lazy automaton ------------------------------------------------------------- */

typedef struct {
    const sampler_grammar *g;
    int nc; /* byte classes */
    /* stack nodes: (pos, parent), parent -1 = bottom */
    int32_t *npos, *npar;
    int n_nodes, cap_nodes;
    int32_t *nht; /* open addressing: node id + 1 */
    int nht_cap;
    /* states */
    int32_t *soff, *slen; /* (cap_states) their node ids: pool[soff .. soff + slen) */
    uint8_t *sacc;        /* (cap_states) accepting */
    int32_t *smask;       /* (cap_states) mask index, -1 = none yet */
    int n_states, cap_states;
    int32_t *pool;
    int n_pool, cap_pool;
    int32_t *sht; /* open addressing: state id + 1 */
    int sht_cap;
    int32_t *next; /* (cap_states * nc) UNKNOWN, DEAD or a state */
    /* closure scratch */
    int32_t *wk; /* work stack of (pos, parent) pairs */
    int n_wk, cap_wk;
    int32_t *vp, *vq; /* visited (pos, parent) pairs of this closure */
    uint32_t *vgen, gen;
    int v_cap, v_used;
    int32_t *res;
    int n_res, cap_res;
} gauto;

static size_t ga_bytes(const gauto *a)
{
    return (size_t)a->cap_nodes * 8 + (size_t)a->nht_cap * 4 + (size_t)a->cap_states * (13 + 4 * (size_t)a->nc) +
           (size_t)a->cap_pool * 4 + (size_t)a->sht_cap * 4 + (size_t)a->v_cap * 12;
}

/* Grow a to hold need elements of size elem (capacity changes only on success). */
static int grow(void *pp, int *cap, int need, size_t elem)
{
    void **p = pp;
    if (need <= *cap) return 0;
    int nc = *cap > 0 ? *cap : 16;
    while (nc < need) {
        if (nc > (1 << 29)) return SAMPLER_ENOMEM;
        nc *= 2;
    }
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return SAMPLER_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static uint32_t mix(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static uint32_t pair_hash(int32_t p, int32_t q)
{
    return mix((uint32_t)p * 0x9e3779b1u ^ mix((uint32_t)q + 0x632be5abu));
}

static void ga_release(gauto *a)
{
    free(a->npos), free(a->npar), free(a->nht);
    free(a->soff), free(a->slen), free(a->sacc), free(a->smask);
    free(a->pool), free(a->sht), free(a->next);
    free(a->wk), free(a->vp), free(a->vq), free(a->vgen), free(a->res);
    const sampler_grammar *g = a->g;
    memset(a, 0, sizeof *a);
    a->g = g;
    a->nc = g ? g->n_classes : 0;
}

static void ga_init(gauto *a, const sampler_grammar *g)
{
    memset(a, 0, sizeof *a);
    a->g = g;
    a->nc = g->n_classes;
}

static int table_rehash(int32_t **tab, int *cap, int new_cap, int n, uint32_t (*h)(const gauto *, int), const gauto *a)
{
    int32_t *t = calloc((size_t)new_cap, sizeof *t);
    if (!t) return SAMPLER_ENOMEM;
    for (int id = 0; id < n; id++) {
        uint32_t k = h(a, id) & (uint32_t)(new_cap - 1);
        while (t[k]) k = (k + 1) & (uint32_t)(new_cap - 1);
        t[k] = id + 1;
    }
    free(*tab);
    *tab = t;
    *cap = new_cap;
    return 0;
}

static uint32_t node_hash(const gauto *a, int id) { return pair_hash(a->npos[id], a->npar[id]); }

/* The node (pos, par), created if new: its id, or a negative error. */
static int node_intern(gauto *a, int32_t pos, int32_t par)
{
    if (2 * (a->n_nodes + 1) > a->nht_cap) {
        int rc = table_rehash(&a->nht, &a->nht_cap, a->nht_cap ? 2 * a->nht_cap : 1024, a->n_nodes, node_hash, a);
        if (rc) return rc;
    }
    uint32_t mask = (uint32_t)(a->nht_cap - 1);
    uint32_t k = pair_hash(pos, par) & mask;
    while (a->nht[k]) {
        int id = a->nht[k] - 1;
        if (a->npos[id] == pos && a->npar[id] == par) return id;
        k = (k + 1) & mask;
    }
    if (a->n_nodes == a->cap_nodes) { /* both arrays, the capacity set once both grew */
        int nc = a->cap_nodes ? 2 * a->cap_nodes : 256;
        if (nc > (1 << 28) || ga_bytes(a) > HARD_LIMIT) return SAMPLER_ENOMEM;
        int32_t *np = realloc(a->npos, (size_t)nc * sizeof *np);
        if (!np) return SAMPLER_ENOMEM;
        a->npos = np;
        np = realloc(a->npar, (size_t)nc * sizeof *np);
        if (!np) return SAMPLER_ENOMEM;
        a->npar = np;
        a->cap_nodes = nc;
    }
    int id = a->n_nodes++;
    a->npos[id] = pos;
    a->npar[id] = par;
    a->nht[k] = id + 1;
    return id;
}

static uint32_t ids_hash(int acc, const int32_t *ids, int n)
{
    uint32_t h = mix((uint32_t)acc + 0x51ed27u * (uint32_t)n);
    for (int k = 0; k < n; k++) h = mix(h ^ (uint32_t)ids[k]) + 0x9e3779b9u;
    return h;
}

static uint32_t state_hash(const gauto *a, int id) { return ids_hash(a->sacc[id], a->pool + a->soff[id], a->slen[id]); }

/* Make room for one more state (all per-state arrays together). */
static int state_room(gauto *a)
{
    if (a->n_states < a->cap_states) return 0;
    int nc = a->cap_states ? 2 * a->cap_states : 64;
    if (nc > (1 << 24)) return SAMPLER_ENOMEM;
    int32_t *soff = malloc((size_t)nc * sizeof *soff), *slen = malloc((size_t)nc * sizeof *slen);
    uint8_t *sacc = malloc((size_t)nc);
    int32_t *smask = malloc((size_t)nc * sizeof *smask);
    int32_t *next = malloc((size_t)nc * (size_t)a->nc * sizeof *next);
    if (!soff || !slen || !sacc || !smask || !next) {
        free(soff), free(slen), free(sacc), free(smask), free(next);
        return SAMPLER_ENOMEM;
    }
    size_t n = (size_t)a->n_states;
    if (n) {
        memcpy(soff, a->soff, n * sizeof *soff);
        memcpy(slen, a->slen, n * sizeof *slen);
        memcpy(sacc, a->sacc, n);
        memcpy(smask, a->smask, n * sizeof *smask);
        memcpy(next, a->next, n * (size_t)a->nc * sizeof *next);
    }
    for (size_t k = n * (size_t)a->nc; k < (size_t)nc * (size_t)a->nc; k++) next[k] = UNKNOWN;
    free(a->soff), free(a->slen), free(a->sacc), free(a->smask), free(a->next);
    a->soff = soff, a->slen = slen, a->sacc = sacc, a->smask = smask, a->next = next;
    a->cap_states = nc;
    return 0;
}

/* The state (acc, ids[0..n)) with ids sorted and distinct: its id, or DEAD for the
 * empty non-accepting set, or a negative error. */
static int state_intern(gauto *a, int acc, const int32_t *ids, int n)
{
    if (n == 0 && !acc) return DEAD;
    if (2 * (a->n_states + 1) > a->sht_cap) {
        int rc = table_rehash(&a->sht, &a->sht_cap, a->sht_cap ? 2 * a->sht_cap : 256, a->n_states, state_hash, a);
        if (rc) return rc;
    }
    uint32_t mask = (uint32_t)(a->sht_cap - 1);
    uint32_t k = ids_hash(acc, ids, n) & mask;
    while (a->sht[k]) {
        int id = a->sht[k] - 1;
        if (a->sacc[id] == acc && a->slen[id] == n &&
            (n == 0 || !memcmp(a->pool + a->soff[id], ids, (size_t)n * sizeof *ids)))
            return id;
        k = (k + 1) & mask;
    }
    if (state_room(a) || grow(&a->pool, &a->cap_pool, a->n_pool + n, sizeof *a->pool)) return SAMPLER_ENOMEM;
    if (ga_bytes(a) > HARD_LIMIT) return SAMPLER_ENOMEM;
    int id = a->n_states++;
    a->soff[id] = a->n_pool;
    a->slen[id] = n;
    a->sacc[id] = (uint8_t)acc;
    a->smask[id] = -1;
    if (n) memcpy(a->pool + a->n_pool, ids, (size_t)n * sizeof *ids);
    a->n_pool += n;
    a->sht[k] = id + 1;
    return id;
}

/* ---- Closure --------------------------------------------------------------------- */

static void visited_clear(gauto *a)
{
    if (++a->gen == 0) { /* wrapped: really clear */
        if (a->vgen) memset(a->vgen, 0, (size_t)a->v_cap * sizeof *a->vgen);
        a->gen = 1;
    }
    a->v_used = 0;
}

/* 1 if (p, q) was already visited in this closure, else mark it and return 0;
 * negative on error. */
static int visit(gauto *a, int32_t p, int32_t q)
{
    if (2 * (a->v_used + 1) > a->v_cap) { /* grow, keeping this closure's marks */
        int nc = a->v_cap ? 2 * a->v_cap : 256;
        int32_t *vp = malloc((size_t)nc * sizeof *vp), *vq = malloc((size_t)nc * sizeof *vq);
        uint32_t *vg = calloc((size_t)nc, sizeof *vg);
        if (!vp || !vq || !vg) {
            free(vp), free(vq), free(vg);
            return SAMPLER_ENOMEM;
        }
        for (int k = 0; k < a->v_cap; k++) {
            if (a->vgen[k] != a->gen) continue;
            uint32_t h = pair_hash(a->vp[k], a->vq[k]) & (uint32_t)(nc - 1);
            while (vg[h] == a->gen) h = (h + 1) & (uint32_t)(nc - 1);
            vp[h] = a->vp[k], vq[h] = a->vq[k], vg[h] = a->gen;
        }
        free(a->vp), free(a->vq), free(a->vgen);
        a->vp = vp, a->vq = vq, a->vgen = vg, a->v_cap = nc;
    }
    uint32_t mask = (uint32_t)(a->v_cap - 1);
    uint32_t h = pair_hash(p, q) & mask;
    while (a->vgen[h] == a->gen) {
        if (a->vp[h] == p && a->vq[h] == q) return 1;
        h = (h + 1) & mask;
    }
    a->vp[h] = p, a->vq[h] = q, a->vgen[h] = a->gen;
    a->v_used++;
    return 0;
}

static int work_push(gauto *a, int32_t p, int32_t q)
{
    if (grow(&a->wk, &a->cap_wk, 2 * (a->n_wk + 1), sizeof *a->wk)) return SAMPLER_ENOMEM;
    a->wk[2 * a->n_wk] = p;
    a->wk[2 * a->n_wk + 1] = q;
    a->n_wk++;
    return 0;
}

static int cmp_i32(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return a < b ? -1 : a > b;
}

/* Run the closure of the pairs on the work stack and intern the result. */
static int closure(gauto *a)
{
    const gelem *el = a->g->elem;
    int acc = 0;
    a->n_res = 0;
    while (a->n_wk > 0) {
        a->n_wk--;
        int32_t p = a->wk[2 * a->n_wk], q = a->wk[2 * a->n_wk + 1];
        int v = visit(a, p, q);
        if (v < 0) return v;
        if (v) continue;
        switch (el[p].kind) {
        case GE_END:
            if (q < 0)
                acc = 1;
            else if (work_push(a, a->npos[q], a->npar[q]))
                return SAMPLER_ENOMEM;
            break;
        case GE_TERM: {
            int id = node_intern(a, p, q);
            if (id < 0) return id;
            if (grow(&a->res, &a->cap_res, a->n_res + 1, sizeof *a->res)) return SAMPLER_ENOMEM;
            a->res[a->n_res++] = id;
            break;
        }
        default: { /* GE_REF */
            int32_t cont = q;
            if (el[p + 1].kind != GE_END) { /* not a tail call: remember where to return */
                cont = node_intern(a, p + 1, q);
                if (cont < 0) return cont;
            }
            const sampler_grammar *g = a->g;
            int r = el[p].arg;
            for (int alt = g->rule_alt[r + 1] - 1; alt >= g->rule_alt[r]; alt--)
                if (work_push(a, g->alt_start[alt], cont)) return SAMPLER_ENOMEM;
            break;
        }
        }
    }
    if (a->n_res > 1) {
        qsort(a->res, (size_t)a->n_res, sizeof *a->res, cmp_i32);
        int m = 1;
        for (int k = 1; k < a->n_res; k++)
            if (a->res[k] != a->res[m - 1]) a->res[m++] = a->res[k];
        a->n_res = m;
    }
    return state_intern(a, acc, a->res, a->n_res);
}

static int ga_start(gauto *a)
{
    const sampler_grammar *g = a->g;
    visited_clear(a);
    a->n_wk = 0;
    for (int alt = g->rule_alt[g->root + 1] - 1; alt >= g->rule_alt[g->root]; alt--)
        if (work_push(a, g->alt_start[alt], -1)) return SAMPLER_ENOMEM;
    return closure(a);
}

/* The state after reading a byte of class cls in state s (computed and stored in
 * the table if new): a state, DEAD, or a negative error. */
static int ga_next(gauto *a, int s, int cls)
{
    int32_t t = a->next[(size_t)s * (size_t)a->nc + (size_t)cls];
    if (t != UNKNOWN) return t;
    const sampler_grammar *g = a->g;
    unsigned b = g->class_rep[cls];
    visited_clear(a);
    a->n_wk = 0;
    int off = a->soff[s], n = a->slen[s];
    for (int k = n - 1; k >= 0; k--) {
        int32_t node = a->pool[off + k];
        int32_t p = a->npos[node];
        if (gset_has(g->sets[g->elem[p].arg], b) && work_push(a, p + 1, a->npar[node])) return SAMPLER_ENOMEM;
    }
    int r = closure(a);
    if (r < DEAD) return r;
    a->next[(size_t)s * (size_t)a->nc + (size_t)cls] = r;
    return r;
}

int sampler_grammar_match(const sampler_grammar *g, const char *s, size_t n)
{
    if (!g || (!s && n > 0)) return SAMPLER_EINVAL;
    gauto a;
    ga_init(&a, g);
    int st = ga_start(&a);
    for (size_t k = 0; k < n && st >= 0; k++) st = ga_next(&a, st, g->byte_class[(unsigned char)s[k]]);
    int rc = st < DEAD ? st : st == DEAD ? SAMPLER_MATCH_NONE : a.sacc[st] ? SAMPLER_MATCH_FULL : SAMPLER_MATCH_PREFIX;
    ga_release(&a);
    return rc;
}

/* ---- Tables, caches and constraints ------------------------------------------------
 * One `tables` is a lazy automaton with its masks.  A cache hands its current tables
 * to every constraint made from it, so sequences (and requests) with the same grammar
 * share what any of them computed; each use of the tables holds their mutex.  When
 * the current tables pass the cache's limit, the next constraint starts new ones; the
 * old ones live on for the constraints that use them.  A constraint whose tables pass
 * its own limit moves to private, empty tables before its next new mask (its state is
 * read out of the old tables as stacks of positions and interned anew). */

typedef struct {
    pthread_mutex_t mu;
    atomic_int refs;
    const sampler_grammar *g;
    const sampler_vocab *v;
    gauto a;
    int start;         /* the start state */
    int words;         /* 32-bit words per mask */
    uint32_t *masks;   /* (cap_masks * words) */
    uint8_t *mask_any; /* (cap_masks) a text token is allowed */
    int n_masks, cap_masks;
    int32_t *walk; /* (max_depth + 1) states along the trie path */
} tables;

struct sampler_constraint_cache {
    sampler_grammar *g;
    int owns_g;
    const sampler_vocab *v;
    pthread_mutex_t mu; /* guards cur */
    atomic_int refs;    /* the creator's, the holders', one per constraint */
    tables *cur;        /* where new constraints start */
    size_t limit;       /* bytes; past it, new constraints get new tables */
};

struct sampler_constraint {
    sampler_constraint_cache *cache;
    tables *t;
    int cur;           /* current state in t (never DEAD) */
    int ended;         /* an end token was accepted */
    int32_t end_extra; /* one more end token of this constraint's own, or -1 */
    size_t limit;      /* bytes of t past which this constraint moves to private tables */
};

static size_t tables_bytes(const tables *t)
{
    return ga_bytes(&t->a) + (size_t)t->cap_masks * ((size_t)t->words * 4 + 1);
}

static void tables_unref(tables *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1) return;
    ga_release(&t->a);
    free(t->masks);
    free(t->mask_any);
    free(t->walk);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* New tables, their start state interned unless empty (rebase interns its own). */
static tables *tables_new(const sampler_grammar *g, const sampler_vocab *v, int with_start)
{
    tables *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    if (pthread_mutex_init(&t->mu, NULL)) {
        free(t);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->g = g;
    t->v = v;
    ga_init(&t->a, g);
    t->words = (v->n_vocab + 31) / 32;
    t->walk = malloc(((size_t)v->max_depth + 1) * sizeof *t->walk);
    t->start = -1;
    if (!t->walk || (with_start && (t->start = ga_start(&t->a)) < 0)) {
        tables_unref(t); /* the start state is never DEAD: root has an alternative */
        return NULL;
    }
    return t;
}

static sampler_constraint_cache *cache_new(sampler_grammar *g, int owns_g, const sampler_vocab *v)
{
    sampler_constraint_cache *cc = calloc(1, sizeof *cc);
    if (!cc) goto fail;
    if (pthread_mutex_init(&cc->mu, NULL)) {
        free(cc);
        goto fail;
    }
    cc->g = g;
    cc->owns_g = owns_g;
    cc->v = v;
    cc->limit = CACHE_LIMIT;
    atomic_init(&cc->refs, 1);
    cc->cur = tables_new(g, v, 1);
    if (!cc->cur) {
        sampler_constraint_cache_free(cc);
        return NULL;
    }
    return cc;
fail:
    if (owns_g) sampler_grammar_free(g);
    return NULL;
}

sampler_constraint_cache *sampler_constraint_cache_new(sampler_grammar *g, const sampler_vocab *v)
{
    if (!g || !v) {
        sampler_grammar_free(g);
        return NULL;
    }
    return cache_new(g, 1, v);
}

sampler_constraint_cache *sampler_constraint_cache_ref(sampler_constraint_cache *cc)
{
    if (cc) atomic_fetch_add(&cc->refs, 1);
    return cc;
}

void sampler_constraint_cache_free(sampler_constraint_cache *cc)
{
    if (!cc || atomic_fetch_sub(&cc->refs, 1) != 1) return;
    tables_unref(cc->cur);
    if (cc->owns_g) sampler_grammar_free(cc->g);
    pthread_mutex_destroy(&cc->mu);
    free(cc);
}

const sampler_grammar *sampler_constraint_cache_grammar(const sampler_constraint_cache *cc)
{
    return cc ? cc->g : NULL;
}

sampler_constraint *sampler_constraint_new_shared(sampler_constraint_cache *cc)
{
    if (!cc) return NULL;
    sampler_constraint *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_lock(&cc->mu); /* lock order: the cache's, then a tables' */
    tables *t = cc->cur;
    pthread_mutex_lock(&t->mu);
    size_t size = tables_bytes(t);
    pthread_mutex_unlock(&t->mu);
    if (size > cc->limit) {
        tables *fresh = tables_new(cc->g, cc->v, 1);
        if (fresh) {
            cc->cur = fresh;
            tables_unref(t);
            t = fresh;
        }
    }
    atomic_fetch_add(&t->refs, 1);
    pthread_mutex_unlock(&cc->mu);
    c->cache = sampler_constraint_cache_ref(cc);
    c->t = t;
    c->cur = t->start;
    c->end_extra = -1;
    c->limit = 2 * CACHE_LIMIT;
    return c;
}

sampler_constraint *sampler_constraint_new(const sampler_grammar *g, const sampler_vocab *v)
{
    if (!g || !v) return NULL;
    sampler_constraint_cache *cc = cache_new((sampler_grammar *)g, 0, v);
    if (!cc) return NULL;
    sampler_constraint *c = sampler_constraint_new_shared(cc);
    sampler_constraint_cache_free(cc); /* the constraint holds it now */
    return c;
}

int sampler_constraint_add_end(sampler_constraint *c, int32_t token)
{
    if (!c || token < 0 || token >= c->cache->v->n_vocab || c->end_extra >= 0) return SAMPLER_EINVAL;
    c->end_extra = token;
    return SAMPLER_OK;
}

void sampler_constraint_free(sampler_constraint *c)
{
    if (!c) return;
    tables_unref(c->t);
    sampler_constraint_cache_free(c->cache);
    free(c);
}

/* Move c to private, empty tables holding only its current state.  Called with
 * c->t->mu held; returns with the new tables' mutex held instead. */
static int rebase(sampler_constraint *c)
{
    tables *old = c->t;
    gauto *a = &old->a;
    int s = c->cur, acc = a->sacc[s], n = a->slen[s];
    int total = 0;
    for (int k = 0; k < n; k++)
        for (int32_t q = a->pool[a->soff[s] + k]; q >= 0; q = a->npar[q]) total++;
    int32_t *buf = malloc(((size_t)total + (size_t)n + 1) * sizeof *buf);
    int32_t *tops = malloc(((size_t)n + 1) * sizeof *tops);
    tables *t = tables_new(old->g, old->v, 0);
    if (!buf || !tops || !t) {
        free(buf), free(tops), tables_unref(t);
        return SAMPLER_ENOMEM;
    }
    int m = 0;
    for (int k = 0; k < n; k++) { /* each stack: its depth, then positions top to bottom */
        int start = m++, d = 0;
        for (int32_t q = a->pool[a->soff[s] + k]; q >= 0; q = a->npar[q]) buf[m++] = a->npos[q], d++;
        buf[start] = d;
    }
    int rc = 0;
    for (int k = 0, i = 0; !rc && k < n; k++) {
        int d = buf[i++];
        int32_t par = -1;
        for (int j = d - 1; j >= 0 && par >= -1; j--) par = node_intern(&t->a, buf[i + j], par);
        i += d;
        if (par < -1)
            rc = par;
        else
            tops[k] = par;
    }
    int st = -1;
    if (!rc) {
        qsort(tops, (size_t)n, sizeof *tops, cmp_i32); /* node ids are new: sort again */
        st = state_intern(&t->a, acc, tops, n);
        if (st < 0) rc = st < DEAD ? st : SAMPLER_EINVAL;
    }
    free(tops);
    free(buf);
    if (rc) {
        tables_unref(t);
        return rc;
    }
    t->start = -1; /* private: never handed to a new constraint */
    pthread_mutex_lock(&t->mu);
    pthread_mutex_unlock(&old->mu);
    tables_unref(old);
    c->t = t;
    c->cur = st;
    return 0;
}

/* The mask of state s (computed by a trie walk if new): its index, or an error.
 * With t->mu held. */
static int mask_of(tables *tb, int s)
{
    gauto *a = &tb->a;
    if (a->smask[s] >= 0) return a->smask[s];
    const sampler_vocab *v = tb->v;
    if (tb->n_masks == tb->cap_masks) {
        int nc = tb->cap_masks ? 2 * tb->cap_masks : 16;
        uint32_t *m = realloc(tb->masks, (size_t)nc * (size_t)tb->words * sizeof *m);
        if (!m) return SAMPLER_ENOMEM;
        tb->masks = m;
        uint8_t *any = realloc(tb->mask_any, (size_t)nc);
        if (!any) return SAMPLER_ENOMEM;
        tb->mask_any = any;
        tb->cap_masks = nc;
    }
    int idx = tb->n_masks;
    uint32_t *mask = tb->masks + (size_t)idx * (size_t)tb->words;
    memset(mask, 0, (size_t)tb->words * sizeof *mask);
    const uint8_t *cls = tb->g->byte_class;
    const size_t nc = (size_t)a->nc;
    int any = 0;
    int32_t *walk = tb->walk;
    walk[0] = s;
    const vnode *node = v->node;
    for (int k = 0; k < v->n_nodes;) {
        const vnode *nd = &node[k];
        int ps = walk[nd->depth - 1];
        int cl = cls[nd->byte];
        int t = a->next[(size_t)ps * nc + (size_t)cl];
        if (t == UNKNOWN) {
            t = ga_next(a, ps, cl);
            if (t < DEAD) return t;
        }
        if (t == DEAD) {
            k = nd->end;
            continue;
        }
        walk[nd->depth] = t;
        /* most nodes spell one token or none: set its bit without a branch (a
         * node without one sets bit 0 of word 0 to itself) */
        int32_t id = nd->tok, has = id >= 0;
        int32_t at = id & -has;
        mask[at >> 5] |= (uint32_t)has << (at & 31);
        any |= has;
        if (nd->more)
            for (const int32_t *e = v->extra + v->extra_at[k]; *e >= 0; e++) mask[*e >> 5] |= 1u << (*e & 31);
        k++;
    }
    if (a->sacc[s])
        for (int j = 0; j < v->n_end; j++) mask[v->end_ids[j] >> 5] |= 1u << (v->end_ids[j] & 31);
    tb->mask_any[idx] = (uint8_t)any;
    a->smask[s] = idx;
    tb->n_masks++;
    return idx;
}

/* Lock c's tables and find the current state's mask, moving to private tables
 * first if they grew past c's limit.  Returns the mask index with c->t->mu held,
 * or an error with nothing held. */
static int lock_mask(sampler_constraint *c)
{
    pthread_mutex_lock(&c->t->mu);
    if (c->t->a.smask[c->cur] < 0 && tables_bytes(c->t) > c->limit) {
        int rc = rebase(c);
        if (rc) {
            pthread_mutex_unlock(&c->t->mu);
            return rc;
        }
    }
    int idx = mask_of(c->t, c->cur);
    if (idx < 0) pthread_mutex_unlock(&c->t->mu);
    return idx;
}

int sampler__constraint_vocab(const sampler_constraint *c) { return c ? c->cache->v->n_vocab : 0; }

void sampler__constraint_set_cache_limit(sampler_constraint *c, size_t bytes) { c->limit = bytes; }

void sampler__constraint_cache_set_limit(sampler_constraint_cache *cc, size_t bytes) { cc->limit = bytes; }

int sampler__constraint_cached_states(const sampler_constraint *c)
{
    pthread_mutex_lock(&c->t->mu);
    int n = c->t->a.n_states;
    pthread_mutex_unlock(&c->t->mu);
    return n;
}

int sampler_constraint_apply(sampler_constraint *c, const float *logits, float *out, int vocab)
{
    if (!c || !logits || !out || vocab != c->cache->v->n_vocab || c->ended) return SAMPLER_EINVAL;
    int idx = lock_mask(c);
    if (idx < 0) return idx;
    const uint32_t *mask = c->t->masks + (size_t)idx * (size_t)c->t->words;
    int i = 0;
    for (int w = 0; i + 32 <= vocab; w++, i += 32) {
        uint32_t m = mask[w];
        if (m == 0) {
            for (int j = 0; j < 32; j++) out[i + j] = -INFINITY;
        } else if (m == 0xffffffffu) {
            if (out != logits) memcpy(out + i, logits + i, 32 * sizeof *out);
        } else {
            for (int j = 0; j < 32; j++) out[i + j] = (m >> j) & 1u ? logits[i + j] : -INFINITY;
        }
    }
    for (; i < vocab; i++) out[i] = (mask[i >> 5] >> (i & 31)) & 1u ? logits[i] : -INFINITY;
    /* the constraint's own end token, whatever the shared mask says of its bytes:
     * allowed exactly where the vocabulary's end tokens are */
    if (c->end_extra >= 0) out[c->end_extra] = c->t->a.sacc[c->cur] ? logits[c->end_extra] : -INFINITY;
    pthread_mutex_unlock(&c->t->mu);
    return SAMPLER_OK;
}

int sampler_constraint_accept(sampler_constraint *c, int32_t token)
{
    if (!c || token < 0 || token >= c->cache->v->n_vocab || c->ended) return SAMPLER_EINVAL;
    const sampler_vocab *v = c->cache->v;
    int is_end = v->tok_kind[token] == TK_END || token == c->end_extra;
    if (v->tok_kind[token] != TK_TEXT && !is_end) return SAMPLER_EINVAL;
    pthread_mutex_lock(&c->t->mu);
    gauto *a = &c->t->a;
    int rc = SAMPLER_OK;
    if (is_end) {
        if (a->sacc[c->cur])
            c->ended = 1;
        else
            rc = SAMPLER_EINVAL;
    } else {
        int s = c->cur;
        for (int64_t k = v->tok_off[token]; k < v->tok_off[token + 1] && s >= 0; k++)
            s = ga_next(a, s, c->t->g->byte_class[(unsigned char)v->bytes[k]]);
        if (s >= 0)
            c->cur = s;
        else
            rc = s == DEAD ? SAMPLER_EINVAL : s;
    }
    pthread_mutex_unlock(&c->t->mu);
    return rc;
}

int sampler_constraint_status(sampler_constraint *c)
{
    if (!c) return SAMPLER_EINVAL;
    if (c->ended) return SAMPLER_CONSTRAINT_COMPLETE;
    int idx = lock_mask(c);
    if (idx < 0) return idx;
    int any = c->t->mask_any[idx], acc = c->t->a.sacc[c->cur];
    pthread_mutex_unlock(&c->t->mu);
    if (acc) return any ? SAMPLER_CONSTRAINT_MAY_END : SAMPLER_CONSTRAINT_COMPLETE;
    return any ? SAMPLER_CONSTRAINT_OPEN : SAMPLER_CONSTRAINT_STUCK;
}
