#!/usr/bin/env python3
"""fix-train-vocab.py IN.gguf OUT.gguf -- rename the space token of a GGUF written by an
older `lmserve train` (before 2026-11-27) from "<0x20>" (a byte token) to U+2581 (a normal
piece), as `lmserve train` now writes it (train/ckpt.c, put_vocab).

Why: a "llama" (SentencePiece) tokenizer replaces every space by U+2581 before it looks
pieces up, so with "<0x20>" llama.cpp encodes a space as the three byte tokens of U+2581 --
ids the model never saw in training -- while lmserve (which guesses the space convention
from the vocabulary) used the byte token.  After the rename both encode a space as the id
the model was trained on.  Everything else (other metadata, tensor infos, tensor data) is
copied unchanged; only the padding before the tensor data is recomputed.
GGUF layout (v2/v3, little-endian): magic, version u32, tensor count u64, KV count u64,
KVs (key string, type u32, value), tensor infos, padding to general.alignment, data.
"""
import struct
import sys

STR, ARR = 8, 9
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, b):
        self.b, self.pos = b, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.b, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take("Q")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, t):
        if t in SCALAR:
            return self.take(SCALAR[t])
        if t == STR:
            return self.string()
        if t == ARR:
            et, n = self.take("I"), self.take("Q")
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError(f"unknown GGUF value type {t}")


def put_value(out, t, v):
    if t in SCALAR:
        out += struct.pack("<" + SCALAR[t], v)
    elif t == STR:
        out += struct.pack("<Q", len(v)) + v
    else:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for x in items:
            put_value(out, et, x)


def parse(b):
    """GGUF bytes -> (version, tensor count, [key, type, value] list, tensor-info bytes,
    alignment, offset of the tensor data)."""
    r = Reader(b)
    if r.take("4s") != b"GGUF":
        raise ValueError("not a GGUF file")
    version, n_t, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs = []
    for _ in range(n_kv):
        k = r.string()
        t = r.take("I")
        kvs.append([k, t, r.value(t)])
    align = next((v for k, _, v in kvs if k == b"general.alignment"), 32)
    infos_start = r.pos
    for _ in range(n_t):  # name, n_dims, dims, type, offset
        r.string()
        nd = r.take("I")
        r.pos += 8 * nd + 4 + 8
    return version, n_t, kvs, b[infos_start:r.pos], align, (r.pos + align - 1) // align * align


def build(version, n_t, kvs, infos, align, data):
    """The inverse of parse: header, KVs, tensor infos, padding to align, tensor data."""
    out = bytearray(b"GGUF") + struct.pack("<IQQ", version, n_t, len(kvs))
    for k, t, v in kvs:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t)
        put_value(out, t, v)
    out += infos
    out += b"\0" * ((-len(out)) % align)
    return out + data


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[0])
    b = open(sys.argv[1], "rb").read()
    try:
        version, n_t, kvs, infos, align, data_start = parse(b)
    except (ValueError, struct.error) as e:
        sys.exit(f"{sys.argv[1]}: {e}")
    kv = {k: v for k, _, v in kvs}
    toks = kv.get(b"tokenizer.ggml.tokens")
    types = kv.get(b"tokenizer.ggml.token_type")
    if not toks or len(toks[1]) != 259:
        sys.exit("not a vocabulary written by lmserve train (259 tokens expected)")
    space = 3 + 0x20
    if toks[1][space] == "\u2581".encode():
        sys.exit("already fixed: token %d is U+2581" % space)
    if toks[1][space] != b"<0x20>":
        sys.exit("token %d is %r, not <0x20>" % (space, toks[1][space]))
    toks[1][space] = "\u2581".encode()
    if types:
        types[1][space] = 1  # NORMAL
    open(sys.argv[2], "wb").write(build(version, n_t, kvs, infos, align, b[data_start:]))
    print(f"{sys.argv[2]}: token {space} renamed <0x20> -> U+2581 (normal); {n_t} tensors copied")


if __name__ == "__main__":
    main()
