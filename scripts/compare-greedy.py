#!/usr/bin/env python3
"""compare-greedy.py LMSERVE_URL LLAMA_SERVER_URL [N_TOKENS] [PROMPT_SET]

Greedy completions of the same prompts from lmserve (/v1/completions) and llama.cpp's
llama-server (/completion), compared as text; prints each difference (first differing
character and both texts) and "K/N identical, logprobs within D; first token: J/N within
1e-4, largest F".  D is the largest
difference between the two servers' log-probabilities of the chosen tokens (lmserve's
logprobs, llama-server's n_probs), over the tokens both chose alike (up to the first
difference); J counts the prompts whose first generated token has logprobs within 1e-4
and F is the largest difference there (the first token has seen only the prompt; later
tokens also carry every earlier difference, and with quantized activations a last-bit
difference upstream can flip a rounding: then a logprob moves by ~1e-2).
PROMPT_SET: stories (default) or kjv.
Used by scripts/side-by-side.sh; start llama-server with -ctk f32 -ctv f32 -fa off for
the same arithmetic as lmserve's F32 KV cache (its flash-attention path rounds through F16).
"""
import json
import sys
import urllib.request

PROMPTS = {
    "stories": ["Once upon a time", "The little dog", "Lily and Tom went to the park.", "One day, a big bird",
                "Sam was sad because", "The sun was shining and", "There was a girl named Sue. She",
                "Ben liked to play with his toy car", "Mom said, \"", "In a small house, there lived",
                "The cat and the mouse", "It was a cold winter day.", "Tim found a shiny stone",
                "The tree was very tall", "Anna wanted to bake a cake", "Once", "Hello", "The end.",
                "Why is the sky blue?", "Max the dog ran to"],
    "kjv": ["In the beginning", "And God said", "The LORD is my shepherd", "Blessed are the",
            "And it came to pass", "Thou shalt not", "For God so loved", "Then Jesus said unto them,",
            "And the earth was", "Praise ye the LORD"],
}


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main():
    lm, lc = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    prompts = PROMPTS[sys.argv[4] if len(sys.argv) > 4 else "stories"]
    same = 0
    worst = 0.0
    first = 0.0
    first_ok = 0
    for p in prompts:
        ra = post(lm + "/v1/completions", {"prompt": p, "max_tokens": n, "temperature": 0, "logprobs": 1})
        rb = post(lc + "/completion", {"prompt": p, "n_predict": n, "temperature": 0, "n_probs": 1,
                                       "cache_prompt": False})
        a, b = ra["choices"][0]["text"], rb["content"]
        la = ra["choices"][0]["logprobs"]
        ta, lpa = la["tokens"], la["token_logprobs"]
        tb = [t["token"] for t in rb.get("completion_probabilities", [])]
        lpb = [t["logprob"] for t in rb.get("completion_probabilities", [])]
        for i in range(min(len(ta), len(tb))):
            if ta[i] != tb[i]:
                break
            worst = max(worst, abs(lpa[i] - lpb[i]))
            if i == 0:
                first = max(first, abs(lpa[0] - lpb[0]))
                first_ok += abs(lpa[0] - lpb[0]) <= 1e-4
        if a == b:
            same += 1
            continue
        k = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        print(f"   differs: {p!r} at character {k}\n     lmserve: {a!r}\n     llama:   {b!r}")
    print(f"{same}/{len(prompts)} identical, logprobs within {worst:.2g}; "
          f"first token: {first_ok}/{len(prompts)} within 1e-4, largest {first:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
