#!/usr/bin/python3
"""write_course_pt.py -- write torch.save-style zip files with the standard library only.

Used by the C tests (tests/model/formats/test_torchzip.c, test_gpt2.c) to make:
  * a course artifact folder (the layout of issue 10): ROOT/models/NAME/{model.pt,
    config.json, manifest.json} and ROOT/tokenizers/NAME-bpe/tokenizer.json ("g2c.bpe");
  * hostile files that a reader must reject.

The pickle is emitted opcode by opcode (protocol 2, the opcodes torch.save uses, as
pickletools shows for real files); the zip is written with zipfile (STORED) and a
padding extra field that aligns each record's data to 64 bytes, as torch does.

  write_course_pt.py course ROOT NAME --seed S --dim D --layers L --heads H --ctx T [--hidden F]
  write_course_pt.py hostile DIR
"""
import argparse
import json
import os
import random
import struct
import zipfile


class Tensor:
    def __init__(self, shape, values, dtype="f32", stride=None, offset=0, numel=None):
        self.shape = tuple(shape)
        self.values = list(values)
        self.dtype = dtype
        self.stride = stride
        self.offset = offset
        self.numel = numel  # storage numel override (hostile files)


class Raw:
    """Opcodes emitted as given after pushing None (hostile files)."""

    def __init__(self, ops):
        self.ops = ops


class Forbidden:
    """A call of an arbitrary global: what a malicious pickle would contain."""

    def __init__(self, module, name):
        self.module, self.name = module, name


STORAGE = {"f32": ("FloatStorage", "<f", 4), "f64": ("DoubleStorage", "<d", 8),
           "i64": ("LongStorage", "<q", 8)}


class Pickler:
    def __init__(self):
        self.out = bytearray()
        self.storages = []  # (key, bytes)

    def op(self, b):
        self.out += b

    def global_(self, module, name):
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def dump(self, obj):
        if obj is None:
            self.op(b"N")
        elif obj is True:
            self.op(b"\x88")
        elif obj is False:
            self.op(b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                self.op(b"K" + bytes([obj]))
            elif 0 <= obj < 65536:
                self.op(b"M" + struct.pack("<H", obj))
            elif -2**31 <= obj < 2**31:
                self.op(b"J" + struct.pack("<i", obj))
            else:
                self.op(b"\x8a\x08" + struct.pack("<q", obj))
        elif isinstance(obj, float):
            self.op(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            b = obj.encode()
            self.op(b"X" + struct.pack("<I", len(b)) + b)
        elif isinstance(obj, tuple):
            self.op(b"(")
            for x in obj:
                self.dump(x)
            self.op(b"t")
        elif isinstance(obj, list):
            self.op(b"]")
            if obj:
                self.op(b"(")
                for x in obj:
                    self.dump(x)
                self.op(b"e")
        elif isinstance(obj, dict):
            self.op(b"}")
            if obj:
                self.op(b"(")
                for k, v in obj.items():
                    self.dump(k)
                    self.dump(v)
                self.op(b"u")
        elif isinstance(obj, Tensor):
            self.tensor(obj)
        elif isinstance(obj, Raw):
            self.op(b"N" + obj.ops)
        elif isinstance(obj, Forbidden):
            self.global_(obj.module, obj.name)
            self.op(b"(")
            self.dump("echo pwned")
            self.op(b"tR")
        else:
            raise TypeError(type(obj))

    def tensor(self, t):
        name, fmt, size = STORAGE[t.dtype]
        key = str(len(self.storages))
        self.storages.append((key, b"".join(struct.pack(fmt, v) for v in t.values)))
        numel = t.numel if t.numel is not None else len(t.values)
        stride = t.stride
        if stride is None:
            stride, acc = [], 1
            for n in reversed(t.shape):
                stride.insert(0, acc)
                acc *= n
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"(")
        self.op(b"(")
        self.dump("storage")
        self.global_("torch", name)
        self.dump(key)
        self.dump("cpu")
        self.dump(numel)
        self.op(b"tQ")
        self.dump(t.offset)
        self.dump(tuple(t.shape))
        self.dump(tuple(stride))
        self.op(b"\x89")
        self.global_("collections", "OrderedDict")
        self.op(b")R")
        self.op(b"tR")


def write_torch_zip(path, obj, prefix="archive", compress_key=None):
    p = Pickler()
    p.op(b"\x80\x02")
    p.dump(obj)
    p.op(b".")
    records = [("data.pkl", bytes(p.out))] + [("data/" + k, b) for k, b in p.storages]
    records.append(("version", b"3\n"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            info = zipfile.ZipInfo(prefix + "/" + name, date_time=(1980, 1, 1, 0, 0, 0))
            if compress_key is not None and name == "data/" + compress_key:
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
                continue
            # Pad the local header so the data starts at a multiple of 64.
            here = z.fp.tell() + 30 + len(info.filename.encode())
            pad = (-(here + 4)) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            z.writestr(info, data)


# ---- Course artifact ---------------------------------------------------------------

CORPUS = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
          "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
          "Once upon a time there was a little dog. The dog liked to play in the sun. "
          "Ünïcödé ümlauts and 日本語 text, too. ")


def train_g2c(text, n_merges, specials):
    ids = list(text.encode())
    merges, next_id = [], 256 + len(specials)
    for _ in range(n_merges):
        counts = {}
        for a, b in zip(ids, ids[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        pair = max(counts, key=lambda k: (counts[k], -k[0], -k[1]))
        if counts[pair] < 2:
            break
        merges.append([pair[0], pair[1], next_id])
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(next_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids, next_id = out, next_id + 1
    return merges


def write_course(root, name, seed, dim, layers, heads, ctx, hidden):
    rng = random.Random(seed)
    specials = ["<|endoftext|>", "<|pad|>"]
    merges = train_g2c(CORPUS, 60, specials)
    vocab = 256 + len(specials) + len(merges)
    tok_name = name + "-bpe"
    tdir = os.path.join(root, "tokenizers", tok_name)
    mdir = os.path.join(root, "models", name)
    os.makedirs(tdir, exist_ok=True)
    os.makedirs(mdir, exist_ok=True)
    with open(os.path.join(tdir, "tokenizer.json"), "w") as f:
        json.dump({"format": "g2c.bpe", "version": 2, "special_tokens": specials,
                   "merges": merges}, f)

    def t(*shape, scale=0.3, base=0.0):
        n = 1
        for s in shape:
            n *= s
        return Tensor(shape, [base + rng.gauss(0.0, scale) for _ in range(n)])

    params = [t(vocab, dim, scale=0.5), t(ctx, dim, scale=0.2)]
    for _ in range(layers):
        params += [t(dim, base=1.0, scale=0.1), t(dim, scale=0.1)]
        for _ in range(4):  # q, k, v, out: W (in, out), b
            params += [t(dim, dim, scale=0.4), t(dim, scale=0.1)]
        params += [t(dim, base=1.0, scale=0.1), t(dim, scale=0.1)]
        params += [t(dim, hidden, scale=0.3), t(hidden, scale=0.1),
                   t(hidden, dim, scale=0.3), t(dim, scale=0.1)]
    params += [t(dim, base=1.0, scale=0.1), t(dim, scale=0.1), t(vocab, scale=0.2)]
    model_config = {"embedding_dim": dim, "num_layers": layers, "num_heads": heads,
                    "max_seq_len": ctx, "hidden_dim": hidden, "dropout": 0.0}
    write_torch_zip(os.path.join(mdir, "model.pt"),
                    {"vocab_size": vocab, "model_config": model_config, "params": params},
                    prefix="model")
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(model_config, f)
    with open(os.path.join(mdir, "manifest.json"), "w") as f:
        json.dump({"name": name, "kind": "model", "tokenizer_artifact": tok_name}, f)


# ---- Hostile and edge-case files ------------------------------------------------------

def write_hostile(d):
    os.makedirs(d, exist_ok=True)
    ok = Tensor((2, 3), [1, 2, 3, 4, 5, 6])
    write_torch_zip(os.path.join(d, "list_of_tensors.pt"),
                    {"vocab_size": 7, "params": [ok, Tensor((3,), [0.5, -1.0, 2.0])]})
    write_torch_zip(os.path.join(d, "forbidden_global.pt"), {"x": Forbidden("os", "system")})
    write_torch_zip(os.path.join(d, "forbidden_builtin.pt"), [Forbidden("builtins", "eval")])
    # A tensor whose extent runs past its storage.
    write_torch_zip(os.path.join(d, "tensor_past_storage.pt"),
                    {"t": Tensor((4, 4), [1.0] * 6, numel=6)})
    # A storage that claims more elements than its record holds.
    write_torch_zip(os.path.join(d, "storage_past_record.pt"),
                    {"t": Tensor((2, 2), [1.0] * 4, numel=1 << 30)})
    write_torch_zip(os.path.join(d, "absurd_shape.pt"),
                    {"t": Tensor((1 << 45, 1 << 45), [1.0] * 4, stride=(0, 0))})
    write_torch_zip(os.path.join(d, "compressed.pt"), {"t": ok}, compress_key="0")
    # A memo index far beyond the pickle's size (would ask for a huge memo table).
    write_torch_zip(os.path.join(d, "huge_memo.pt"), {"x": Raw(b"r\xff\xff\xff\x00")})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("course")
    c.add_argument("root")
    c.add_argument("name")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--dim", type=int, default=16)
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--heads", type=int, default=2)
    c.add_argument("--ctx", type=int, default=32)
    c.add_argument("--hidden", type=int, default=0)
    h = sub.add_parser("hostile")
    h.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "course":
        write_course(a.root, a.name, a.seed, a.dim, a.layers, a.heads, a.ctx,
                     a.hidden or 4 * a.dim)
    else:
        write_hostile(a.dir)


if __name__ == "__main__":
    main()
