"""scoring -- the model's log-probability of a continuation, through echo.

The request: {"prompt": prompt + continuation, "echo": true, "max_tokens": 0,
"logprobs": 0}.  The server tokenizes the whole text and answers, for every
prompt token, its log-probability given all tokens before it (the first token
has none: null), with `text_offset` = where the token's text starts in the
echoed text (OpenAI: character offsets).

Which tokens belong to the continuation: the text is tokenized as a whole, so
a token may straddle the join.  A token counts as a continuation token when its
text ends after the end of the prompt (its end is the next token's offset, or
the end of the echoed text for the last one).  When the continuation starts at
a token boundary -- e.g. it begins with a space under a SentencePiece
vocabulary -- these are exactly the tokens from the join onwards.  Tokens
whose log-probability is null (the first token, BOS) are skipped.

"Mean log-prob of a continuation" = mean of those tokens' log-probabilities:
the per-token log-likelihood of the continuation given the prompt; perplexity
is exp(-mean).

A generated continuation is scored as text, tokenized afresh with its prompt:
if the sampler happened to produce a non-canonical token sequence for that
text, the score is that of the tokenizer's own segmentation (and the scored
token count can differ from the server's completion_tokens).
"""

import hashlib


def echo_request(prompt, continuation, model=None):
    body = {"prompt": prompt + continuation, "echo": True, "max_tokens": 0, "logprobs": 0,
            "temperature": 0}
    if model:
        body["model"] = model
    return body


def score_id(prompt, continuation):
    """A stable id for one (prompt, continuation) pair, so identical texts are scored once."""
    h = hashlib.sha1()
    h.update(prompt.encode("utf-8"))
    h.update(b"\x00")
    h.update(continuation.encode("utf-8"))
    return h.hexdigest()[:20]


class ScoringError(Exception):
    pass


def continuation_logprobs(response, prompt, continuation):
    """From an echo answer, the list of log-probabilities of the continuation tokens
    (and their token strings).  Raises ScoringError if the answer lacks them."""
    try:
        choice = response["choices"][0]
        lp = choice["logprobs"]
        tokens = lp["tokens"]
        token_lps = lp["token_logprobs"]
        offsets = lp["text_offset"]
    except (KeyError, IndexError, TypeError):
        raise ScoringError("the echo answer has no choices[0].logprobs with tokens, "
                           "token_logprobs and text_offset") from None
    if not (len(tokens) == len(token_lps) == len(offsets)):
        raise ScoringError("tokens, token_logprobs and text_offset differ in length")
    text = choice.get("text")
    full = prompt + continuation
    if isinstance(text, str) and text.endswith(full):
        base = len(text) - len(full)
        end_of_text = len(text)
    elif isinstance(text, str) and continuation and text.endswith(continuation):
        # The server normalised the prompt (e.g. a dropped leading space): measure from the end.
        base = len(text) - len(full)
        end_of_text = len(text)
    else:
        base = 0
        end_of_text = len(full)
    boundary = base + len(prompt)
    out_lps, out_tokens = [], []
    for i, (tok, l, off) in enumerate(zip(tokens, token_lps, offsets)):
        end = offsets[i + 1] if i + 1 < len(offsets) else end_of_text
        if end > boundary and l is not None:
            out_lps.append(float(l))
            out_tokens.append(tok)
    return out_lps, out_tokens
