"""store -- an append-only JSONL results file that survives being killed.

Each record is written as one line with a single write(2) of the whole line
(newline included) followed by fsync(2), so after a crash the file holds every
line that was reported written, plus at most one torn line at the end (a prefix
of a line: it cannot end in a newline, since the newline is the line's last
byte).  Opening the store repairs that: the torn tail is cut off (and reported),
and the ids of the complete lines are returned so a rerun skips them.

An exclusive flock(2) on the file keeps two runs from writing the same file.
"""

import errno
import fcntl
import json
import os


class StoreError(Exception):
    pass


class JsonlStore:
    def __init__(self, path, key="id"):
        self.path = path
        self.key = key
        self.records = []     # complete records already in the file, in file order
        self.torn_bytes = 0   # size of the torn tail that was cut off on open
        self._fd = None
        self._open()

    def _open(self):
        new = not os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"{self.path} is being written by another lmserve-eval") from None
            raise StoreError(f"cannot lock {self.path}: {e.strerror}") from None
        self._fd = fd
        if new:
            _fsync_dir(self.path)
        data = _read_all(fd)
        good = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
        if good < len(data):
            self.torn_bytes = len(data) - good
            os.ftruncate(fd, good)
            os.fsync(fd)
        seen = set()
        for lineno, line in enumerate(data[:good].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError:
                self.close()
                raise StoreError(f"{self.path}:{lineno}: not a JSON line; fix or remove it "
                                 "(lmserve-eval only ever cuts a torn last line)") from None
            if not isinstance(rec, dict) or self.key not in rec:
                self.close()
                raise StoreError(f"{self.path}:{lineno}: a result line without \"{self.key}\"")
            k = rec[self.key]
            if k in seen:
                self.close()
                raise StoreError(f"{self.path}:{lineno}: id {k!r} appears twice")
            seen.add(k)
            self.records.append(rec)

    def done_ids(self):
        return {r[self.key] for r in self.records}

    def append(self, record):
        if self._fd is None:
            raise StoreError(f"{self.path} is closed")
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # write(2) to a regular file is whole in practice; loop to be sure
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.records.append(record)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def _fsync_dir(path):
    d = os.path.dirname(os.path.abspath(path))
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_jsonl(path, what="input"):
    """Read a JSONL input file: a list of (line number, object).  Blank lines and
    lines starting with '#' are skipped.  Raises StoreError naming the bad line."""
    out = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise StoreError(f"cannot read {what} {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                obj = json.loads(s)
            except ValueError as e:
                raise StoreError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise StoreError(f"{path}:{lineno}: expected a JSON object")
            out.append((lineno, obj))
    return out
