"""Past the window, lmserve runs the course's decode loop exactly (context_overflow "slide",
the default): every new token comes from the last W tokens of the sequence, at positions
0..W-1.  Checked token for token against an independent implementation of that loop
written here: float64 numpy forward passes with no cache, recomputing full[-W:] from
scratch at every step, and the project's sampler (xoshiro256** seeded by splitmix64,
temperature -> top-k -> top-p -> softmax -> one inverse-CDF draw in token-id order)
rewritten from its definition.

Models: stories260K (llama, RoPE; the llama2.c checkpoint, read here with numpy) served
with --ctx 32, and a GPT-2 course artifact (learned positions) whose own window is 24,
written by tests/tools/write_course_pt.py (its parameters are captured as it writes them).
Every continuation runs at least three windows past the end.  Also: n = 2, streaming and
not, beside 15 other streams; prompts longer than the window; echo + logprobs over a long
prompt; `lmserve generate`; and the other policies, stop and shift.

Tolerance: tokens must be equal; each token's log-probability within 2e-4 of the float64
one (the server computes in float32).
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import shutil
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import REPO, Server, binary, require_model, slow  # noqa: E402

try:
    import numpy as np
except ImportError:  # a missing dependency fails the suite, it is not skipped
    raise AssertionError("python3-numpy is missing: run `make deps-test` (scripts/deps.sh installs it)")

LP_TOL = 2e-4

# ---- the sampler, from its definition (sampler/sampler.h, choose.c, rng.c) ---------------

M64 = (1 << 64) - 1


class Rng:
    """xoshiro256** with its state filled by splitmix64 from the seed."""

    def __init__(self, seed):
        x = seed & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64  # noqa: E731
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.next() >> 40) / float(1 << 24)


def choose(logits, temperature, top_k, top_p, rng, banned=()):
    """One step of the warpers and the draw.  Greedy takes the lowest id among maxima and
    draws nothing."""
    x = logits.copy()
    for b in banned:
        x[b] = -np.inf
    if temperature == 0:
        return int(np.argmax(x))
    x = x / temperature
    V = len(x)
    if 0 < top_k < V:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x >= kth, x, -np.inf)  # ties with the k-th survive
    if 0 < top_p < 1:
        w = np.exp(x - x.max())
        target = top_p * w.sum()
        keep = np.zeros(V, bool)
        acc = 0.0
        for i in sorted(range(V), key=lambda i: (-x[i], i)):  # the crossing token included
            keep[i] = True
            acc += w[i]
            if acc >= target:
                break
        x = np.where(keep, x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    coin = rng.uniform()
    cdf, last = 0.0, -1
    for i in range(V):  # survivors in id order
        if p[i] > 0:
            cdf += p[i]
            last = i
            if coin < cdf:
                return i
    return last


def log_softmax(z):
    m = z.max()
    return z - (m + math.log(np.exp(z - m).sum()))


# ---- the course's loop ----------------------------------------------------------------------

def course_loop(forward, prompt, W, n_new, temperature=0.0, top_k=0, top_p=1.0, seed=0, banned=(),
                stop_ids=(), policy="slide"):
    """Generated ids and the log-probability of each.  slide: ctx = full[-W:] every step.
    shift: the window keeps its last W // 2 when it overflows.  stop: end at len(full) == W."""
    rng = Rng(seed)
    full, ids, lps, start = list(prompt), [], [], 0
    for _ in range(n_new):
        n = len(full)
        if policy == "slide":
            start = max(0, n - W)
        elif policy == "shift":
            if n - start > W:
                start = n - max(W // 2, 1)
        elif n >= W:
            break
        logits = forward(full[start:])
        t = choose(logits, temperature, top_k, top_p, rng, banned)
        ids.append(t)
        lps.append(float(log_softmax(logits)[t]))
        full.append(t)
        if t in stop_ids:
            break
    return ids, lps


# ---- llama: a llama2.c checkpoint, read here ------------------------------------------------

def rmsnorm(x, g, eps=1e-5):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * g


def causal_attention(q, k, v, n_heads, n_kv):
    n, qd = q.shape
    hd = qd // n_heads
    out = np.zeros_like(q)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for h in range(n_heads):
        kh = h // (n_heads // n_kv)
        s = q[:, h * hd:(h + 1) * hd] @ k[:, kh * hd:(kh + 1) * hd].T / math.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        out[:, h * hd:(h + 1) * hd] = s @ v[:, kh * hd:(kh + 1) * hd]
    return out


class Llama2c:
    """stories260K.bin: 7 int32 (dim, hidden, layers, heads, kv heads, vocab, seq_len; vocab < 0 =
    separate classifier), then float32 arrays in llama2.c's order, matrices (out, in)."""

    def __init__(self, path):
        raw = open(path, "rb").read()
        self.dim, self.hidden, self.L, self.nh, self.nkv, vocab, self.seq = struct.unpack("<7i", raw[:28])
        shared, self.V = vocab > 0, abs(vocab)
        f = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
        self.hd = self.dim // self.nh
        kvd = self.nkv * self.hd
        pos = [0]

        def take(*shape):
            n = int(np.prod(shape))
            a = f[pos[0]:pos[0] + n].reshape(shape)
            pos[0] += n
            return a

        D, H, L = self.dim, self.hidden, self.L
        self.emb = take(self.V, D)
        self.rms_att, self.wq, self.wk = take(L, D), take(L, D, D), take(L, kvd, D)
        self.wv, self.wo, self.rms_ffn = take(L, kvd, D), take(L, D, D), take(L, D)
        self.w1, self.w2, self.w3 = take(L, H, D), take(L, D, H), take(L, H, D)
        self.rms_final = take(D)
        take(self.seq, self.hd)  # freq_cis real and imaginary halves: unused (RoPE computed here)
        self.wcls = self.emb if shared else take(self.V, D)

    def rope(self, x):
        n, d = x.shape
        i = np.arange(0, d, 2)
        freq = 10000.0 ** (-(i % self.hd) / self.hd)
        ang = np.arange(n)[:, None] * freq[None, :]
        c, s = np.cos(ang), np.sin(ang)
        x0, x1 = x[:, 0::2].copy(), x[:, 1::2].copy()
        x[:, 0::2] = x0 * c - x1 * s
        x[:, 1::2] = x0 * s + x1 * c
        return x

    def __call__(self, toks):
        """Logits of the last position of toks, at positions 0..len-1, no cache."""
        x = self.emb[toks].copy()
        for l in range(self.L):
            h = rmsnorm(x, self.rms_att[l])
            q, k, v = self.rope(h @ self.wq[l].T), self.rope(h @ self.wk[l].T), h @ self.wv[l].T
            x = x + causal_attention(q, k, v, self.nh, self.nkv) @ self.wo[l].T
            h = rmsnorm(x, self.rms_ffn[l])
            g = h @ self.w1[l].T
            x = x + (g / (1 + np.exp(-g)) * (h @ self.w3[l].T)) @ self.w2[l].T
        return rmsnorm(x[-1], self.rms_final) @ self.wcls.T


# ---- GPT-2: a course artifact, its parameters captured as they are written ----------------

def layernorm(x, g, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps) * g + b


class CourseGpt2:
    def __init__(self, root, name, **shape):
        sys.path.insert(0, os.path.join(REPO, "tests", "tools"))
        import write_course_pt as w
        captured = {}
        original = w.write_torch_zip

        def capture(path, obj, **kw):
            captured.update(obj)
            return original(path, obj, **kw)

        w.write_torch_zip = capture
        try:
            w.write_course(root, name, shape["seed"], shape["dim"], shape["layers"], shape["heads"],
                           shape["ctx"], shape["hidden"])
        finally:
            w.write_torch_zip = original
        # stored as float32: the values the server reads
        t = [np.array(p.values, dtype=np.float32).astype(np.float64).reshape(p.shape) for p in captured["params"]]
        self.V, self.nh, self.W = captured["vocab_size"], shape["heads"], shape["ctx"]
        self.tok, self.pos = t[0], t[1]
        self.layers, k = [], 2
        for _ in range(shape["layers"]):
            self.layers.append(t[k:k + 16])
            k += 16
        self.lnf_g, self.lnf_b, self.out_b = t[k], t[k + 1], t[k + 2]
        self.erf = np.vectorize(math.erf)

    def __call__(self, toks):
        n = len(toks)
        x = self.tok[toks] + self.pos[:n]
        for (g1, b1, wq, bq, wk, bk, wv, bv, wo, bo, g2, b2, w1, c1, w2, c2) in self.layers:
            h = layernorm(x, g1, b1)
            q, k, v = h @ wq + bq, h @ wk + bk, h @ wv + bv  # weights stored (in, out)
            x = x + causal_attention(q, k, v, self.nh, self.nh) @ wo + bo
            h = layernorm(x, g2, b2) @ w1 + c1
            x = x + (0.5 * h * (1 + self.erf(h / math.sqrt(2)))) @ w2 + c2
        return layernorm(x[-1], self.lnf_g, self.lnf_b) @ self.tok.T + self.out_b


# ---- talking to the server ------------------------------------------------------------------

def tokenize(srv, text):
    st, r = srv.post_json("/tokenize", {"content": text})
    assert st == 200, r
    return r["tokens"]


class Vocab:
    """Each id's text as the server prints it alone (cached /detokenize calls)."""

    def __init__(self, srv):
        self.srv, self.cache = srv, {}

    def __call__(self, ids):
        st, r = self.srv.post_json("/detokenize", {"tokens": list(ids)})
        assert st == 200, r
        return r["content"]

    def piece(self, i):
        if i not in self.cache:
            self.cache[i] = self([i])
        return self.cache[i]


def run_threads(fns):
    out = [None] * len(fns)

    def wrap(i, f):
        out[i] = f()

    ts = [threading.Thread(target=wrap, args=(i, f)) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300 * slow)
    return out


def completion(srv, body):
    """Per choice: (text, logprobs tokens, token_logprobs, finish_reason), and usage."""
    if body.get("stream"):
        st, _, ev = srv.stream("/v1/completions", body)
        assert st == 200, ev
        assert ev[-1] == "[DONE]", ev[-3:]
        n = body.get("n", 1)
        ch = [["", [], [], None] for _ in range(n)]
        usage = None
        for e in ev[:-1]:
            if e.get("usage"):
                usage = e["usage"]
            for c in e["choices"]:
                d = ch[c["index"]]
                d[0] += c["text"]
                if c["logprobs"]:
                    d[1] += c["logprobs"]["tokens"]
                    d[2] += c["logprobs"]["token_logprobs"]
                if c["finish_reason"]:
                    d[3] = c["finish_reason"]
        return [tuple(d) for d in ch], usage
    st, r = srv.post_json("/v1/completions", body, timeout=300)
    assert st == 200, r
    out = [(c["text"], c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"], c["finish_reason"])
           for c in sorted(r["choices"], key=lambda c: c["index"])]
    return out, r["usage"]


class Base(unittest.TestCase):
    def expect(self, vocab, prompt_ids, got, ref_ids, ref_lps, what):
        text, toks, lps, _ = got
        self.assertEqual(len(toks), len(ref_ids), "%s: %d tokens, the course's loop %d" % (what, len(toks), len(ref_ids)))
        for i, (t, r) in enumerate(zip(toks, ref_ids)):
            self.assertEqual(t, vocab.piece(r), "%s: token %d is %r, the course's loop has %r (%d)"
                             % (what, i, t, vocab.piece(r), r))
        for i, (a, b) in enumerate(zip(lps, ref_lps)):
            self.assertLessEqual(abs(a - b), LP_TOL, "%s: logprob of token %d: %r vs %r" % (what, i, a, b))
        whole, head = vocab(prompt_ids + ref_ids), vocab(prompt_ids)
        self.assertTrue(whole.startswith(head))
        self.assertEqual(text, whole[len(head):], what)


# ---- llama ----------------------------------------------------------------------------------

W_LLAMA = 32
N_NEW = 3 * W_LLAMA + 34  # past the window's end by more than 3 windows
BAN = [1, 2]  # BOS ends a llama2.c story and EOS ends the text: banned, so every run is long


class SlideLlama(Base):
    @classmethod
    def setUpClass(cls):
        cls.bin, cls.tok = require_model("stories260K.bin"), require_model("tok512.bin")
        cls.ref = Llama2c(cls.bin)
        cls.srv = Server(["--ctx", str(W_LLAMA), "--tokenizer", cls.tok, "--parallel", "20", "--queue", "64",
                          "--max-choices", "8", "--no-log"], model=cls.bin)
        cls.vocab = Vocab(cls.srv)
        cls.prompt = tokenize(cls.srv, "Once upon a time")
        bias = {str(b): -100 for b in BAN}
        cls.greedy = {"prompt": cls.prompt, "max_tokens": N_NEW, "temperature": 0, "logprobs": 0, "n": 2,
                      "logit_bias": bias}
        cls.seeded = {"prompt": cls.prompt, "max_tokens": N_NEW, "temperature": 0.8, "top_k": 40, "top_p": 0.9,
                      "seed": 1234, "logprobs": 0, "n": 2, "logit_bias": bias}
        cls.want = {
            "greedy": [course_loop(cls.ref, cls.prompt, W_LLAMA, N_NEW, banned=BAN)] * 2,
            "seeded": [course_loop(cls.ref, cls.prompt, W_LLAMA, N_NEW, 0.8, 40, 0.9, 1234 + i, BAN)
                       for i in range(2)],
        }

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        assert rc == 0, cls.srv.stderr

    def check(self, name, stream, results=None):
        body = dict(getattr(self, name), stream=stream)
        got, usage = results or completion(self.srv, body)
        for i in range(2):
            self.expect(self.vocab, self.prompt, got[i], *self.want[name][i], "%s choice %d%s" % (
                name, i, " streamed" if stream else ""))
            self.assertEqual(got[i][3], "length")
        return got

    def test_greedy_and_seeded_n2_streaming_and_not(self):
        for name in ("greedy", "seeded"):
            for stream in (False, True):
                self.check(name, stream)

    def test_identical_beside_15_other_streams(self):
        alone = {(n, s): completion(self.srv, dict(getattr(self, n), stream=s))
                 for n in ("greedy", "seeded") for s in (False, True)}

        def other(i):
            return lambda: completion(self.srv, {
                "prompt": tokenize(self.srv, "The dog %s" % ("ran " * i)), "max_tokens": 20 + 9 * i,
                "temperature": 1.0, "seed": i, "stream": True})

        targets = [(n, s) for n in ("greedy", "seeded") for s in (False, True)]
        fns = [other(i) for i in range(15)]
        fns += [lambda n=n, s=s: completion(self.srv, dict(getattr(self, n), stream=s)) for n, s in targets]
        res = run_threads(fns)
        for (n, s), r in zip(targets, res[15:]):
            self.assertEqual(r[0], alone[(n, s)][0], "%s stream=%s differs under load" % (n, s))
            self.check(n, s, r)

    def test_prompt_longer_than_the_window(self):
        long_prompt = tokenize(self.srv, "Once upon a time, there was a little dog named Max. Max liked to run "
                                         "in the big green park with his friend, a small cat. One day")
        self.assertGreater(len(long_prompt), W_LLAMA + 10)
        body = {"prompt": long_prompt, "max_tokens": N_NEW, "temperature": 0.8, "seed": 7, "logprobs": 0,
                "logit_bias": {str(b): -100 for b in BAN}}
        got, usage = completion(self.srv, body)
        ids, lps = course_loop(self.ref, long_prompt, W_LLAMA, N_NEW, 0.8, 0, 1.0, 7, BAN)
        self.expect(self.vocab, long_prompt, got[0], ids, lps, "long prompt")
        self.assertEqual(usage["prompt_tokens"], len(long_prompt))
        self.assertEqual(usage["prompt_tokens_dropped"], len(long_prompt) - W_LLAMA)

    def test_echo_logprobs_scores_each_position_from_its_own_window(self):
        long_prompt = tokenize(self.srv, "Lily and Ben went to the park to play. They saw a big tree and a red "
                                         "ball. Ben kicked the ball high and Lily laughed.")
        self.assertGreater(len(long_prompt), W_LLAMA + 5)
        got, _ = completion(self.srv, {"prompt": long_prompt, "max_tokens": 0, "echo": True, "logprobs": 1})
        _, toks, lps, _ = got[0]
        # a prompt of token ids is echoed whole, BOS included (which has no logprob)
        self.assertEqual(len(lps), len(long_prompt))
        self.assertIsNone(lps[0])
        for t in range(1, len(long_prompt)):
            want = log_softmax(self.ref(long_prompt[max(0, t - W_LLAMA):t]))[long_prompt[t]]
            self.assertLessEqual(abs(lps[t] - want), LP_TOL, "prompt position %d" % t)

    def test_stop_and_shift(self):
        body = dict(self.seeded, n=1, context_overflow="stop")
        got, usage = completion(self.srv, body)
        ids, lps = course_loop(self.ref, self.prompt, W_LLAMA, N_NEW, 0.8, 40, 0.9, 1234, BAN, policy="stop")
        self.assertEqual(len(ids), W_LLAMA - len(self.prompt))
        self.expect(self.vocab, self.prompt, got[0], ids, lps, "stop")
        self.assertEqual(got[0][3], "length")
        self.assertEqual(usage["completion_tokens"] + usage["prompt_tokens"], W_LLAMA)
        for stream in (False, True):
            got, _ = completion(self.srv, dict(self.seeded, context_overflow="shift", stream=stream))
            for i in range(2):
                ids, lps = course_loop(self.ref, self.prompt, W_LLAMA, N_NEW, 0.8, 40, 0.9, 1234 + i, BAN,
                                       policy="shift")
                self.expect(self.vocab, self.prompt, got[i], ids, lps, "shift choice %d" % i)

    def test_metrics_count_window_moves(self):
        before = self.srv.metrics()
        got, _ = completion(self.srv, dict(self.greedy, n=1))
        after = self.srv.metrics()
        moves = after["lmserve_context_window_moves_total"] - before.get("lmserve_context_window_moves_total", 0)
        recomputed = (after["lmserve_context_recomputed_tokens_total"] -
                      before.get("lmserve_context_recomputed_tokens_total", 0))
        # a move for every token appended past the window, but the last one
        self.assertEqual(moves, len(self.prompt) + N_NEW - 1 - W_LLAMA)
        self.assertLessEqual(recomputed, moves * (W_LLAMA - 1))
        self.assertGreater(recomputed, moves * (W_LLAMA - 1) // 2)

    def test_generate_cli(self):
        # generate has no logit_bias: it stops at a generated BOS or EOS, and so does this reference
        for policy in ("slide", "shift"):
            cmd = [binary(), "generate", "--model", self.bin, "--tokenizer", self.tok, "--ctx", str(W_LLAMA),
                   "--prompt", "Once upon a time", "--max-tokens", str(N_NEW), "--temperature", "0",
                   "--context-overflow", policy]
            out = subprocess.run(cmd, capture_output=True, timeout=120 * slow)
            self.assertEqual(out.returncode, 0, out.stderr)
            ref_ids, _ = course_loop(self.ref, self.prompt, W_LLAMA, N_NEW, stop_ids=BAN, policy=policy)
            self.assertGreaterEqual(len(ref_ids), 3 * W_LLAMA, "the reference ended early: %d tokens" % len(ref_ids))
            shown = [t for t in ref_ids if t not in BAN]
            self.assertEqual(out.stdout.decode().rstrip("\n"), self.vocab(self.prompt + shown), policy)
        # seeded, through the same loop (sampler_generate)
        cmd = [binary(), "generate", "--model", self.bin, "--tokenizer", self.tok, "--ctx", str(W_LLAMA),
               "--prompt", "Once upon a time", "--max-tokens", str(N_NEW), "--temperature", "0.8",
               "--top-k", "40", "--top-p", "0.9", "--seed", "1234"]
        out = subprocess.run(cmd, capture_output=True, timeout=120 * slow)
        self.assertEqual(out.returncode, 0, out.stderr)
        ref_ids, _ = course_loop(self.ref, self.prompt, W_LLAMA, N_NEW, 0.8, 40, 0.9, 1234, stop_ids=BAN)
        shown = [t for t in ref_ids if t not in BAN]
        self.assertEqual(out.stdout.decode().rstrip("\n"), self.vocab(self.prompt + shown))


# ---- GPT-2 ----------------------------------------------------------------------------------

class SlideGpt2(Base):
    """A course artifact with its own 24-token window (the case the issue was found with:
    prompt of 3 tokens, greedy), here run 4 windows past the end."""

    W = 24

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="lmserve-slide-")
        cls.ref = CourseGpt2(cls.root, "tiny", seed=5, dim=16, layers=2, heads=4, ctx=cls.W, hidden=48)
        cls.mdir = os.path.join(cls.root, "models", "tiny")
        cls.srv = Server(["--parallel", "20", "--max-choices", "8", "--no-log"], model=cls.mdir)
        cls.vocab = Vocab(cls.srv)
        cls.prompt = tokenize(cls.srv, "To be, or")
        cls.ban = [256, 257]  # <|endoftext|> (EOS) and <|pad|>

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        shutil.rmtree(cls.root, ignore_errors=True)
        assert rc == 0, cls.srv.stderr

    def test_greedy_and_seeded_n2_streaming_not_and_under_load(self):
        n_new = 4 * self.W
        bias = {str(b): -100 for b in self.ban}
        bodies = {
            "greedy": {"prompt": self.prompt, "max_tokens": n_new, "temperature": 0, "logprobs": 0, "n": 2,
                       "logit_bias": bias},
            "seeded": {"prompt": self.prompt, "max_tokens": n_new, "temperature": 1.0, "top_k": 30,
                       "seed": 77, "logprobs": 0, "n": 2, "logit_bias": bias},
        }
        want = {"greedy": [course_loop(self.ref, self.prompt, self.W, n_new, banned=self.ban)] * 2,
                "seeded": [course_loop(self.ref, self.prompt, self.W, n_new, 1.0, 30, 1.0, 77 + i, self.ban)
                           for i in range(2)]}
        targets = [(n, s) for n in bodies for s in (False, True)]
        alone = {t: completion(self.srv, dict(bodies[t[0]], stream=t[1])) for t in targets}
        for (n, s), (got, _) in alone.items():
            for i in range(2):
                self.expect(self.vocab, self.prompt, got[i], *want[n][i], "gpt2 %s choice %d stream=%s" % (n, i, s))

        def other(i):
            return lambda: completion(self.srv, {"prompt": tokenize(self.srv, "the " * (i + 1)),
                                                 "max_tokens": 10 + 7 * i, "seed": i, "stream": True})

        res = run_threads([other(i) for i in range(15)] +
                          [lambda t=t: completion(self.srv, dict(bodies[t[0]], stream=t[1])) for t in targets])
        for t, r in zip(targets, res[15:]):
            self.assertEqual(r[0], alone[t][0], "gpt2 %s stream=%s differs beside 15 other streams" % t)

    def test_prompt_longer_than_the_window_and_stop(self):
        long_prompt = tokenize(self.srv, "To be, or not to be, that is the question: whether 'tis nobler in the mind")
        self.assertGreater(len(long_prompt), self.W)
        bias = {str(b): -100 for b in self.ban}
        got, usage = completion(self.srv, {"prompt": long_prompt, "max_tokens": 3 * self.W, "temperature": 0,
                                           "logprobs": 0, "logit_bias": bias})
        ids, lps = course_loop(self.ref, long_prompt, self.W, 3 * self.W, banned=self.ban)
        self.expect(self.vocab, long_prompt, got[0], ids, lps, "gpt2 long prompt")
        self.assertEqual(usage["prompt_tokens_dropped"], len(long_prompt) - self.W)
        got, usage = completion(self.srv, {"prompt": self.prompt, "max_tokens": 3 * self.W, "temperature": 0,
                                           "logprobs": 0, "logit_bias": bias, "context_overflow": "stop"})
        ids, lps = course_loop(self.ref, self.prompt, self.W, 3 * self.W, banned=self.ban, policy="stop")
        self.expect(self.vocab, self.prompt, got[0], ids, lps, "gpt2 stop")
        self.assertEqual(got[0][3], "length")

    def test_generate_cli(self):
        n_new = 4 * self.W
        cmd = [binary(), "generate", "--model", self.mdir, "--prompt", "To be, or", "--max-tokens", str(n_new),
               "--temperature", "0"]
        out = subprocess.run(cmd, capture_output=True, timeout=120 * slow)
        self.assertEqual(out.returncode, 0, out.stderr)
        ids, _ = course_loop(self.ref, self.prompt, self.W, n_new, stop_ids=[256])
        shown = [t for t in ids if t != 256]
        self.assertEqual(out.stdout.decode("utf-8", "replace").rstrip("\n"), self.vocab(self.prompt + shown))


if __name__ == "__main__":
    unittest.main()
