/* grammar_internal.h -- the compiled grammar, shared by grammar.c (which builds it)
 * and constrain.c (which runs it); never included outside sampler/.
 *
 * A grammar is a set of rules; a rule is a list of alternatives; an alternative
 * is a sequence of elements, each a terminal (one byte out of a set of bytes) or
 * a reference to a rule.  Everything is laid out in one array of elements, as
 * llama.cpp does: each alternative's elements followed by an END element, so a
 * "position" is one index into elem[] and the position after an element is the
 * next index.  Character classes over code points and string literals were
 * turned into byte sequences (UTF-8) by the compiler, so the automaton reads
 * bytes only.
 *
 * Guarantees the compiler establishes (constrain.c relies on them):
 *   - every rule reachable from the root can derive at least one finite string
 *     (so every live state of the matcher can still be completed);
 *   - no rule reaches itself through a non-tail reference without consuming a
 *     byte first (so a closure never grows the stack without bound); tail
 *     references are followed once per (position, parent) and may cycle;
 *   - every terminal's byte set is non-empty.
 */
#ifndef LMSERVE_SAMPLER_GRAMMAR_INTERNAL_H
#define LMSERVE_SAMPLER_GRAMMAR_INTERNAL_H

#include "sampler/sampler.h"

#include <stdint.h>

enum { GE_END = 0, GE_TERM = 1, GE_REF = 2 };

typedef struct {
    int32_t kind; /* GE_* */
    int32_t arg;  /* GE_TERM: byte-set index; GE_REF: rule index */
} gelem;

struct sampler_grammar {
    int n_rules;
    int root;           /* rule index of "root" */
    int32_t *rule_alt;  /* (n_rules + 1) rule r's alternatives are alt_start[rule_alt[r] .. rule_alt[r+1]) */
    int32_t *alt_start; /* (n_alts) position of each alternative's first element */
    int n_alts;
    int n_elems;
    gelem *elem; /* (n_elems) */
    int n_sets;
    uint64_t (*sets)[4]; /* (n_sets) 256-bit byte sets of the terminals */
    /* Bytes that belong to exactly the same sets behave the same everywhere, so the
     * matcher's transition tables are indexed by class, not by byte. */
    int n_classes;
    uint8_t byte_class[256];
    uint8_t class_rep[256]; /* (n_classes) one byte of each class */
    uint64_t used_bytes[4]; /* union of all sets: every byte a string of the grammar may hold */
};

/* The vocabulary as a byte trie (constrain_vocab.c).  Nodes are stored in
 * preorder without the root, so a subtree is a contiguous run [k, node_end[k])
 * and a walk that rejects node k skips straight to node_end[k]. */
enum { TK_NEVER = 0, TK_TEXT = 1, TK_END = 2 };

typedef struct {
    int32_t end;    /* one past the node's subtree */
    int32_t tok;    /* a token spelled by the node, or -1 */
    uint16_t depth; /* 1 for a child of the root */
    uint8_t byte;   /* the byte on the edge into the node */
    uint8_t more;   /* other tokens spell the same bytes: see extra */
} vnode;

struct sampler_vocab {
    int n_vocab;
    int n_nodes;
    vnode *node;       /* (n_nodes) one array, read front to back by a walk */
    int32_t *extra_at; /* (n_nodes) for nodes with `more`: start of their other tokens in extra */
    int32_t *extra;    /* the other tokens, each node's run ended by -1 */
    int max_depth;     /* longest token in bytes */
    int64_t *tok_off;  /* (n_vocab + 1) token i's bytes: bytes[tok_off[i] .. tok_off[i+1]) */
    char *bytes;
    uint8_t *tok_kind; /* (n_vocab) TK_* */
    int32_t *end_ids;  /* (n_end) */
    int n_end;
    uint64_t single[4]; /* bytes that have a one-byte token */
};

static inline int gset_has(const uint64_t set[4], unsigned b) { return (int)((set[b >> 6] >> (b & 63)) & 1u); }

#endif /* LMSERVE_SAMPLER_GRAMMAR_INTERNAL_H */
