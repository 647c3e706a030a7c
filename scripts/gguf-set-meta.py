#!/usr/bin/env python3
"""gguf-set-meta.py FILE.gguf KEY=VALUE... -- set string metadata of a GGUF file in place.

Each KEY gets the string VALUE (replaced where the key exists, appended otherwise); every
other key, the tensor infos and the tensor data are copied unchanged (only the padding
before the data is recomputed).  The script checks that the tensor data is byte for byte
what it was and prints the file's new sha256.  The GGUF layout is read and written by
scripts/fix-train-vocab.py's parse() and build(), the one GGUF reader the scripts share.

Used by `make default-model` to name the default model and give the playground its first
prompt (general.name, lmserve.sample_prompt)."""
import hashlib
import importlib.util
import os
import sys

STR = 8


def layout():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("fix_train_vocab", os.path.join(here, "fix-train-vocab.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def set_meta(b, pairs):
    """GGUF bytes with the string keys of pairs [(key, value)] set -> new bytes."""
    g = layout()
    version, n_t, kvs, infos, align, data_start = g.parse(b)
    for key, value in pairs:
        k, v = key.encode(), value.encode()
        for item in kvs:
            if item[0] == k:
                item[1], item[2] = STR, v
                break
        else:
            kvs.append([k, STR, v])
    data = b[data_start:]
    out = g.build(version, n_t, kvs, infos, align, data)
    _, _, _, infos2, _, start2 = g.parse(out)
    if infos2 != infos or out[start2:] != data:
        raise ValueError("tensor infos or data changed")  # build() copies them; checked anyway
    return out


def main(argv):
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        sys.exit(__doc__.strip().splitlines()[0])
    path = argv[1]
    pairs = [tuple(a.split("=", 1)) for a in argv[2:]]
    b = open(path, "rb").read()
    try:
        out = set_meta(b, pairs)
    except (ValueError, IndexError) as e:
        sys.exit(f"{path}: {e}")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, path)
    print(f"{path}: {', '.join(k for k, _ in pairs)} set; {len(out)} bytes, sha256 {hashlib.sha256(out).hexdigest()}")


if __name__ == "__main__":
    main(sys.argv)
