"""tests/data, the test data that comes with the repository: every file is listed in
SHA256SUMS and SOURCES.md and matches its checksum, nothing listed is missing, and nothing
in the tests, scripts, CI or Makefile reads data from outside the repository (../shared)."""
import hashlib
import os
import re
import subprocess
import unittest

from lmserve_testlib import REPO

DATA = os.path.join(REPO, "tests", "data")


def data_files():
    out = []
    for root, _, files in os.walk(DATA):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), DATA)
            if rel not in ("SOURCES.md", "SHA256SUMS"):
                out.append(rel)
    return sorted(out)


class TestData(unittest.TestCase):
    def test_checksums(self):
        sums = {}
        with open(os.path.join(DATA, "SHA256SUMS")) as f:
            for line in f:
                digest, rel = line.split(maxsplit=1)
                sums[rel.strip()] = digest
        self.assertEqual(sorted(sums), data_files(), "SHA256SUMS and the files in tests/data differ")
        for rel, digest in sums.items():
            h = hashlib.sha256()
            with open(os.path.join(DATA, rel), "rb") as f:
                h.update(f.read())
            self.assertEqual(h.hexdigest(), digest, rel)

    def test_sources_lists_every_file_with_its_checksum(self):
        with open(os.path.join(DATA, "SOURCES.md"), encoding="utf-8") as f:
            sources = f.read()
        rows = dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|$", sources, re.M))
        self.assertEqual(sorted(rows), data_files(), "the tables of SOURCES.md and the files differ")
        for rel, digest in rows.items():
            with open(os.path.join(DATA, rel), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest, rel)

    def test_nothing_reads_data_from_beside_the_repository(self):
        out = subprocess.run(["git", "grep", "-n", "-I", "-e", "\\.\\./shared", "--", "tests", "scripts",
                              ".ci", "Makefile", "fuzz"],
                             cwd=REPO, capture_output=True, text=True)
        self.assertIn(out.returncode, (0, 1), out.stderr)  # 1: no match
        hits = [l for l in out.stdout.splitlines() if not l.startswith("tests/integration/test_data.py:")]
        self.assertEqual(hits, [], "paths outside the repository")


if __name__ == "__main__":
    unittest.main()
