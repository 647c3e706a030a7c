"""chat_model -- write a tiny llama GGUF with a real chat vocabulary, for the chat-template tests.

The SmolLM-135M tokenizer (tests/data/fixtures/tokenizers/smollm-135m-derived/tokenizer.json:
49,152 byte-level BPE tokens, <|im_start|> = 1 and <|im_end|> = 2 among its special tokens) as a
GGUF "gpt2" vocabulary, random weights of a very small llama shape (dim 16, one layer), and a
tokenizer.chat_template given by the caller -- the way a converted SmolLM-Instruct GGUF carries
its template.  EOS is <|endoftext|> (0), as in SmolLM's base tokenizer, so a chat that stops at
<|im_end|> stops because of the template, not because <|im_end|> is EOS.  The file is written by
scripts/fix-train-vocab.py's build(), the GGUF writer the scripts share.

    from chat_model import write_chat_model
    path = write_chat_model(tmpdir, template="{% for m in messages %}...")
"""
import importlib.util
import json
import os
import random
import struct
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TOKENIZER = os.path.join(REPO, "tests", "data", "fixtures", "tokenizers", "smollm-135m-derived", "tokenizer.json")

STR, ARR, U32, F32, BOOL = 8, 9, 4, 6, 7
I32 = 5
GGML_F32 = 0
# GGUF token types
NORMAL, CONTROL = 1, 3


def _layout():
    spec = importlib.util.spec_from_file_location("fix_train_vocab", os.path.join(REPO, "scripts", "fix-train-vocab.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _byte_level_vocab(path):
    """tokens (list of str in id order), merges, special ids of a HF byte-level BPE tokenizer.json."""
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    added = {t["id"]: t for t in j.get("added_tokens", [])}
    n = max(max(vocab.values()), max(added) if added else 0) + 1
    tokens = [None] * n
    for s, i in vocab.items():
        tokens[i] = s
    for i, t in added.items():
        tokens[i] = t["content"]
    for i in range(n):
        if tokens[i] is None:
            tokens[i] = "[UNUSED_%d]" % i
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    special = {i for i, t in added.items() if t.get("special")}
    return tokens, merges, special


def write_chat_model(dirpath, template, name="tiny-chatml", dim=16, hidden=32, layers=1, heads=2, ctx=256, seed=7):
    g = _layout()
    tokens, merges, special = _byte_level_vocab(TOKENIZER)
    vocab = len(tokens)
    kvs = [
        [b"general.architecture", STR, b"llama"],
        [b"general.name", STR, name.encode()],
        [b"llama.context_length", U32, ctx],
        [b"llama.embedding_length", U32, dim],
        [b"llama.block_count", U32, layers],
        [b"llama.feed_forward_length", U32, hidden],
        [b"llama.attention.head_count", U32, heads],
        [b"llama.attention.head_count_kv", U32, heads],
        [b"llama.rope.dimension_count", U32, dim // heads],
        [b"llama.attention.layer_norm_rms_epsilon", F32, 1e-5],
        [b"llama.vocab_size", U32, vocab],
        [b"tokenizer.ggml.model", STR, b"gpt2"],
        [b"tokenizer.ggml.tokens", ARR, (STR, [t.encode("utf-8") for t in tokens])],
        [b"tokenizer.ggml.token_type", ARR, (I32, [CONTROL if i in special else NORMAL for i in range(vocab)])],
        [b"tokenizer.ggml.merges", ARR, (STR, [m.encode("utf-8") for m in merges])],
        [b"tokenizer.ggml.bos_token_id", U32, 0],
        [b"tokenizer.ggml.eos_token_id", U32, 0],
        [b"tokenizer.ggml.add_bos_token", BOOL, False],
        [b"tokenizer.chat_template", STR, template.encode("utf-8")],
    ]
    rng = random.Random(seed)
    tensors = [("token_embd.weight", [dim, vocab]), ("output_norm.weight", [dim])]
    for l in range(layers):
        p = "blk.%d." % l
        tensors += [(p + "attn_norm.weight", [dim]), (p + "attn_q.weight", [dim, dim]), (p + "attn_k.weight", [dim, dim]),
                    (p + "attn_v.weight", [dim, dim]), (p + "attn_output.weight", [dim, dim]),
                    (p + "ffn_norm.weight", [dim]), (p + "ffn_gate.weight", [dim, hidden]),
                    (p + "ffn_down.weight", [hidden, dim]), (p + "ffn_up.weight", [dim, hidden])]
    infos = bytearray()
    data = bytearray()
    for tname, dims in tensors:
        count = 1
        for d in dims:
            count *= d
        if tname.endswith("norm.weight"):
            values = array("f", [1.0] * count)
        else:
            values = array("f", (rng.uniform(-0.5, 0.5) for _ in range(count)))
        data += b"\0" * ((-len(data)) % 32)
        infos += struct.pack("<Q", len(tname)) + tname.encode() + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", GGML_F32, len(data))
        data += values.tobytes()
    out = g.build(3, len(tensors), kvs, bytes(infos), 32, bytes(data))
    path = os.path.join(dirpath, name + ".gguf")
    with open(path, "wb") as f:
        f.write(out)
    return path
