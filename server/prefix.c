/* prefix.c -- the prefix cache: never compute the same prefix twice.
 *
 * What is reusable.  A model_seq's entry at position p is what a forward pass over
 * its tokens 0..p from position 0 gives, whatever chunks computed it (model.h), and
 * the engine only ever computes windows from position 0 (a slide or a shift
 * recomputes the window; nothing is moved in place).  So any sequence's first k
 * positions can stand in for the first k positions of any window that starts with
 * the same k tokens, bit for bit: model_seq_copy copies them, the rest is computed
 * as usual.  Scoring (echo + logprobs) needs every position's log-probabilities,
 * so for it a position is reusable only together with its score; scores are kept
 * beside the entries (seq_kv.scores) when a scoring request computed them.
 *
 * Bookkeeping: whole sequences, matched by longest common prefix.  The store holds
 * retained sequences (the model_seq of a finished request, handed over without a
 * copy) in a list ordered by last use; a lookup compares the window with every
 * retained sequence and every running one (the engine's slots) and copies from
 * the longest match -- or, when the match is a retained sequence all of whose tokens
 * start the window and the new sequence has no memory yet, takes that sequence
 * whole (no copy, no fresh pages to fault in; see takes_whole).  Chosen over
 * fixed-size token blocks keyed by a prefix hash or a radix tree because the model keeps each sequence's K/V contiguous per (layer,
 * head) -- attention reads them as one run -- so entries cannot be shared by
 * reference without changing every kernel; they are copied, a prefix of one
 * sequence at a time, which a per-sequence list serves directly.  The costs: a
 * lookup is linear in the number of retained sequences times the length they have
 * in common with the window (it stops at the first differing token), a few
 * hundred at most within the budget, against a forward pass per prefilled chunk;
 * and a copy is a memcpy of the prefix (for the 110M shape ~74 KB per position),
 * against the matmuls that computing it takes.
 *
 * Memory: retained sequences count their allocated bytes (K, V, token ids,
 * scores) against the budget; running sequences are not counted (they exist with
 * or without the cache).  Past the budget the least recently used are freed (the
 * first one's memory goes to the slot that just handed its own sequence over).  A
 * finished sequence whose tokens and scores another retained one already holds
 * is not kept; retained ones it makes redundant are dropped.
 *
 * A request cancelled midway leaves the positions it completed: each is exact
 * (model_forward appends whole chunks or nothing), so they are retained like any
 * other.
 */
#include "server/server_internal.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

typedef struct kv_entry {
    struct kv_entry *prev, *next; /* by last use: head = most recent */
    seq_kv kv;                    /* the retained sequence and its scores */
    size_t bytes;
} kv_entry;

struct kv_store {
    size_t budget, bytes;
    int n_entries;
    unsigned long long evictions, taken;
    kv_entry *head, *tail;
    seq_kv **slots; /* (cap_slots) attached sequences */
    int n_slots, cap_slots;
};

/* ---- the store ------------------------------------------------------------------------ */

int kv_store_new(kv_store **out, size_t budget, int slots)
{
    *out = NULL;
    kv_store *st = calloc(1, sizeof *st);
    if (!st) return -1;
    st->slots = calloc(slots > 0 ? (size_t)slots : 1, sizeof *st->slots);
    if (!st->slots) {
        free(st);
        return -1;
    }
    st->budget = budget;
    st->cap_slots = slots;
    *out = st;
    return 0;
}

static void entry_unlink(kv_store *st, kv_entry *en)
{
    if (en->prev)
        en->prev->next = en->next;
    else
        st->head = en->next;
    if (en->next)
        en->next->prev = en->prev;
    else
        st->tail = en->prev;
    en->prev = en->next = NULL;
}

static void entry_push_front(kv_store *st, kv_entry *en)
{
    en->prev = NULL;
    en->next = st->head;
    if (st->head)
        st->head->prev = en;
    else
        st->tail = en;
    st->head = en;
}

static void entry_drop(kv_store *st, kv_entry *en)
{
    entry_unlink(st, en);
    st->bytes -= en->bytes;
    st->n_entries--;
    seq_kv_close(&en->kv);
    free(en);
}

void kv_store_free(kv_store *st)
{
    if (!st) return;
    while (st->head) entry_drop(st, st->head);
    free(st->slots);
    free(st);
}

void kv_store_attach(kv_store *st, seq_kv *kv)
{
    kv->store = st;
    if (st && st->n_slots < st->cap_slots) st->slots[st->n_slots++] = kv;
}

size_t kv_store_default_budget(const struct model *m, int ctx)
{
    const model_info *mi = model_get_info(m);
    if (ctx <= 0 || ctx > mi->ctx_len) ctx = mi->ctx_len;
    size_t four = 4 * (size_t)ctx * model_seq_position_bytes(m), floor = (size_t)64 << 20;
    return four > floor ? four : floor;
}

void kv_store_get_stats(const kv_store *st, kv_store_stats *out)
{
    *out = (kv_store_stats){ 0 };
    if (!st) return;
    out->bytes = st->bytes;
    out->entries = st->n_entries;
    out->evictions = st->evictions;
    out->taken = st->taken;
}

/* ---- matching ------------------------------------------------------------------------- */

static int lcp(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Positions [0, k) a window w[0..n) may take from a source holding tokens src[0..n_src)
 * with the scores of its tokens [1, n_scores): never the window's last token.  When
 * scoring, the request also needs the scores of tokens 1..k (token k's comes from
 * position k-1's logits, which are not kept), so token k must be a common one with
 * its score held: k <= L - 1 and k <= n_scores - 1. */
static int usable(const int32_t *w, int n, const int32_t *src, int n_src, int scoring, int n_scores)
{
    int L = lcp(w, n, src, n_src);
    if (!scoring) return L < n - 1 ? L : n - 1;
    int k = L - 1; /* token k must be one of the common ones */
    if (k > n_scores - 1) k = n_scores - 1;
    return k > 0 ? k : 0;
}

int seq_kv_reuse_len(const int32_t *w, int n, const int32_t *src, int n_src, int scoring)
{
    return usable(w, n, src, n_src, scoring, n_src);
}

/* The scores of kv's tokens that a request asking for n_top alternatives can use. */
static int scores_for(const seq_kv *kv, int n_top)
{
    return n_top >= 0 && kv->scores && kv->score_top == n_top ? kv->n_scores : 0;
}

/* Make room for n scores.  0 or -1 (nothing changed). */
static int scores_reserve(seq_kv *kv, int n)
{
    if (n <= kv->cap_scores) return 0;
    int cap = model_seq_capacity(kv->seq);
    if (cap < n) cap = n;
    sampler_choice *p = malloc(sizeof *p * (size_t)cap);
    if (!p) return -1;
    if (kv->scores && kv->n_scores > 0) memcpy(p, kv->scores, sizeof *p * (size_t)kv->n_scores);
    free(kv->scores);
    kv->scores = p;
    kv->cap_scores = cap;
    return 0;
}

/* Whether kv may take the retained entry en whole instead of copying from it: kv has
 * no memory of its own yet (a new request after its slot's sequence was retained),
 * and every token en holds starts the window, so the request -- whose window never
 * moves (the caller's may_take) -- computes again, and retains when it ends, all
 * that en holds past what it takes: nothing is lost.
 * Taking saves the copy and, above all, the fresh memory: a new model_seq's pages
 * fault in on first touch (about 3.5 MB for a 240-token prompt on the 15M shape),
 * while the entry's are already in place and warm in the caches. */
static int takes_whole(const seq_kv *kv, const int32_t *w, int n, const kv_entry *en)
{
    int len = model_seq_len(en->kv.seq);
    return model_seq_bytes(kv->seq) == 0 && lcp(w, n, model_seq_tokens(en->kv.seq), len) == len;
}

/* kv takes en's sequence and scores, keeping their first k positions; en, left with
 * kv's empty sequence (and score buffer, if any), is freed. */
static void entry_take(kv_store *st, kv_entry *en, seq_kv *kv, int k)
{
    seq_kv mine = *kv;
    kv->seq = en->kv.seq;
    kv->scores = en->kv.scores;
    kv->n_scores = en->kv.n_scores;
    kv->cap_scores = en->kv.cap_scores;
    kv->score_top = en->kv.score_top;
    en->kv.seq = mine.seq;
    en->kv.scores = mine.scores;
    en->kv.cap_scores = mine.cap_scores;
    en->kv.n_scores = 0;
    model_seq_truncate(kv->seq, k); /* positions [k, len) are the window's, computed again */
    if (kv->n_scores > k) kv->n_scores = k;
    entry_drop(st, en);
    st->taken++;
}

int seq_kv_reuse(seq_kv *kv, const int32_t *w, int n, int n_top, sampler_choice *plp, int may_take)
{
    kv_store *st = kv->store;
    if (!st || !kv->seq || n < 2) return 0;
    int scoring = n_top >= 0;
    int held = model_seq_len(kv->seq);
    int best = held;
    const seq_kv *src = NULL;
    kv_entry *from = NULL;
    for (int i = 0; i < st->n_slots; i++) {
        const seq_kv *o = st->slots[i];
        if (o == kv || !o->seq) continue;
        int k = usable(w, n, model_seq_tokens(o->seq), model_seq_len(o->seq), scoring, scores_for(o, n_top));
        if (k > best) best = k, src = o, from = NULL;
    }
    for (kv_entry *en = st->head; en; en = en->next) {
        int k =
            usable(w, n, model_seq_tokens(en->kv.seq), model_seq_len(en->kv.seq), scoring, scores_for(&en->kv, n_top));
        if (k > best) best = k, src = &en->kv, from = en;
    }
    if (!src) return 0;
    if (from && may_take && takes_whole(kv, w, n, from)) {
        if (scoring) memcpy(plp + 1, src->scores + 1, sizeof *plp * (size_t)best);
        entry_take(st, from, kv, best);
        return best - held;
    }
    if (scoring && scores_reserve(kv, best) < 0) return 0;
    if (model_seq_copy(kv->seq, src->seq, best) != 0) return 0;
    if (scoring) {
        /* the request gets the scores of tokens 1..best (token best is the first it
         * feeds); the entries keep those of the tokens they hold, 1..best-1 */
        memcpy(plp + 1, src->scores + 1, sizeof *plp * (size_t)best);
        memcpy(kv->scores + 1, src->scores + 1, sizeof *kv->scores * (size_t)(best - 1));
        kv->n_scores = best;
        kv->score_top = n_top;
    }
    if (from) { /* most recently used */
        entry_unlink(st, from);
        entry_push_front(st, from);
    }
    return best - held;
}

void seq_kv_scored(seq_kv *kv, const sampler_choice *plp, int to, int n_top)
{
    if (!kv->store || !kv->seq) return;
    if (to > model_seq_len(kv->seq)) to = model_seq_len(kv->seq);
    /* token 0 has no score; scores with another number of alternatives are replaced */
    int from = kv->scores && kv->score_top == n_top && kv->n_scores > 1 ? kv->n_scores : 1;
    if (to <= from || scores_reserve(kv, to) < 0) return;
    memcpy(kv->scores + from, plp + from, sizeof *plp * (size_t)(to - from));
    kv->n_scores = to;
    kv->score_top = n_top;
}

/* a holds everything b does: b's tokens are a prefix of a's, and b's scores (if it
 * has any) are among a's. */
static int covers(const seq_kv *a, const seq_kv *b)
{
    int na = model_seq_len(a->seq), nb = model_seq_len(b->seq);
    if (nb > na || lcp(model_seq_tokens(a->seq), na, model_seq_tokens(b->seq), nb) < nb) return 0;
    int sb = b->scores ? b->n_scores : 0;
    return sb <= 1 || (a->scores && a->score_top == b->score_top && a->n_scores >= sb);
}

static size_t kv_bytes(const seq_kv *kv)
{
    return model_seq_bytes(kv->seq) + sizeof *kv->scores * (size_t)kv->cap_scores;
}

void seq_kv_retain(seq_kv *kv)
{
    kv_store *st = kv->store;
    if (!st || !kv->seq || model_seq_len(kv->seq) == 0) return;
    for (kv_entry *en = st->head, *next; en; en = next) {
        next = en->next;
        if (covers(&en->kv, kv)) { /* nothing new: keep the slot's memory for its next request */
            entry_unlink(st, en);
            entry_push_front(st, en);
            seq_kv_sync(kv, NULL, 0, 0);
            return;
        }
        if (covers(kv, &en->kv)) entry_drop(st, en);
    }
    size_t bytes = kv_bytes(kv);
    if (bytes > st->budget) { /* would evict everything and still not fit */
        seq_kv_sync(kv, NULL, 0, 0);
        return;
    }
    kv_entry *en = calloc(1, sizeof *en);
    if (!en) { /* not retained: the slot keeps it, cleared */
        seq_kv_sync(kv, NULL, 0, 0);
        return;
    }
    en->kv = *kv;
    en->kv.store = NULL; /* retained entries are sources, never retain again */
    en->bytes = bytes;
    kv->seq = NULL;
    kv->scores = NULL;
    kv->n_scores = kv->cap_scores = 0;
    entry_push_front(st, en);
    st->bytes += bytes;
    st->n_entries++;
    while (st->bytes > st->budget && st->tail != en) {
        kv_entry *old = st->tail;
        if (!kv->seq) { /* the slot's next request gets its memory (no new allocation to fault in) */
            kv->seq = old->kv.seq;
            old->kv.seq = NULL;
            model_seq_truncate(kv->seq, 0);
        }
        entry_drop(st, old);
        st->evictions++;
    }
}
