"""gbnf_check -- an independent reading of GBNF for the tests: parse the subset lmserve
documents (sampler/grammar.c) and decide, with an Earley recognizer over code points,
whether a text is a whole string of the language or a prefix of one.

Written apart from the C implementation (a different algorithm: Earley items instead of
a hash-consed pushdown automaton), so agreement between the two is evidence, not an
echo.  Standard library only.

    g = Grammar(gbnf_text)
    g.match("some text")   # -> "full", "prefix" or "none"
"""

_ESC = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "[": "[", "]": "]",
        "-": "-", "^": "^", "/": "/"}
_MAX = 0x10FFFF


class GrammarError(Exception):
    pass


class Grammar:
    def __init__(self, text):
        self.s = text
        self.i = 0
        self.rules = {}      # name -> list of alternatives (lists of symbols)
        self.n_made = 0
        self._parse()
        if "root" not in self.rules:
            raise GrammarError("no root")
        self._nullable()

    # ---- parsing -------------------------------------------------------------------
    def _peek(self, k=0):
        return self.s[self.i + k] if self.i + k < len(self.s) else ""

    def _skip(self, newlines):
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] not in "\r\n":
                    self.i += 1
            elif newlines and c in "\r\n":
                self.i += 1
            else:
                break

    def _name(self):
        j = self.i
        while self.i < len(self.s) and (self.s[self.i].isalnum() and self.s[self.i].isascii()
                                        or self.s[self.i] in "-_"):
            self.i += 1
        return self.s[j:self.i]

    def _made(self, alts):
        self.n_made += 1
        name = " made%d" % self.n_made      # a space: never a name in the text
        self.rules[name] = alts
        return name

    def _parse(self):
        self._skip(True)
        while self.i < len(self.s):
            name = self._name()
            if not name:
                raise GrammarError("rule name expected at %d" % self.i)
            self._skip(False)
            if self.s[self.i:self.i + 3] != "::=":
                raise GrammarError("::= expected at %d" % self.i)
            self.i += 3
            self._skip(True)
            if name in self.rules:
                raise GrammarError("rule defined twice: " + name)
            self.rules[name] = self._alternatives(False)
            self._skip(True)

    def _alternatives(self, nested):
        alts = [self._sequence(nested)]
        self._skip(nested)
        while self._peek() == "|":
            self.i += 1
            self._skip(True)
            alts.append(self._sequence(nested))
            self._skip(nested)
        return alts

    def _sequence(self, nested):
        seq = []
        while True:
            self._skip(nested)
            c = self._peek()
            if c in ("", "|", ")", "\n", "\r"):
                return seq
            item = self._primary()
            while True:
                self._skip(nested)
                c = self._peek()
                if c in "*+?" and c:
                    self.i += 1
                    lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                    item = self._repeat(item, lo, hi)
                elif c == "{":
                    j = self.s.index("}", self.i)
                    body = self.s[self.i + 1:j].replace(" ", "")
                    self.i = j + 1
                    if "," in body:
                        a, b = body.split(",")
                        lo, hi = int(a or 0), (int(b) if b else None)
                    else:
                        lo = hi = int(body)
                    item = self._repeat(item, lo, hi)
                else:
                    break
            seq.extend(item)

    def _repeat(self, item, lo, hi):
        """x{lo,hi} as a list of symbols, built from new rules."""
        if not item:
            return []
        x = item[0] if len(item) == 1 else self._made([item])
        out = [x] * lo
        if hi is None:
            star = self._made([])
            self.rules[star].extend([[x, star], []])
            out.append(star)
        elif hi > lo:
            prev = None
            for _ in range(hi - lo):
                prev = self._made([[x] + ([prev] if prev else []), []])
            out.append(prev)
        return out

    def _char(self):
        c = self._peek()
        if c != "\\":
            self.i += 1
            return ord(c)
        e = self._peek(1)
        self.i += 2
        if e in _ESC:
            return ord(_ESC[e])
        n = {"x": 2, "u": 4, "U": 8}[e]
        v = int(self.s[self.i:self.i + n], 16)
        self.i += n
        return v

    def _primary(self):
        c = self._peek()
        if c == '"':
            self.i += 1
            out = []
            while self._peek() != '"':
                cp = self._char()
                out.append(("set", ((cp, cp),), False))
            self.i += 1
            return out
        if c == "[":
            self.i += 1
            neg = self._peek() == "^"
            if neg:
                self.i += 1
            ranges = []
            while self._peek() != "]":
                lo = self._char()
                hi = lo
                if self._peek() == "-" and self._peek(1) != "]":
                    self.i += 1
                    hi = self._char()
                ranges.append((lo, hi))
            self.i += 1
            return [("set", tuple(ranges), neg)]
        if c == ".":
            self.i += 1
            return [("set", (), True)]
        if c == "(":
            self.i += 1
            self._skip(True)
            alts = self._alternatives(True)
            self._skip(True)
            if self._peek() != ")":
                raise GrammarError(") expected at %d" % self.i)
            self.i += 1
            return [self._made(alts)]
        name = self._name()
        if not name:
            raise GrammarError("unexpected %r at %d" % (c, self.i))
        return [name]

    # ---- analysis ----------------------------------------------------------------------
    def _nullable(self):
        for name, alts in self.rules.items():
            for alt in alts:
                for sym in alt:
                    if isinstance(sym, str) and sym not in self.rules:
                        raise GrammarError("undefined rule " + sym)
        self.null = set()
        changed = True
        while changed:
            changed = False
            for name, alts in self.rules.items():
                if name not in self.null and any(all(isinstance(s, str) and s in self.null for s in alt)
                                                 for alt in alts):
                    self.null.add(name)
                    changed = True

    @staticmethod
    def _accepts(term, cp):
        _, ranges, neg = term
        if 0xD800 <= cp <= 0xDFFF or cp > _MAX:
            return False
        inside = any(lo <= cp <= hi for lo, hi in ranges)
        return inside != neg

    # ---- Earley --------------------------------------------------------------------------
    def match(self, text):
        """'full' if text is a whole string of the language, 'prefix' if it is only a
        prefix of one, else 'none'."""
        # an item: (rule, alternative index, dot, origin)
        sets = [set()]
        start = [("root", a, 0, 0) for a in range(len(self.rules["root"]))]
        self._close(sets, 0, start)
        for k, ch in enumerate(text):
            cp = ord(ch)
            nxt = []
            for (r, a, d, o) in sets[k]:
                alt = self.rules[r][a]
                if d < len(alt) and not isinstance(alt[d], str) and self._accepts(alt[d], cp):
                    nxt.append((r, a, d + 1, o))
            sets.append(set())
            if not nxt:
                return "none"
            self._close(sets, k + 1, nxt)
        n = len(text)
        for (r, a, d, o) in sets[n]:
            if r == "root" and o == 0 and d == len(self.rules[r][a]):
                return "full"
        return "prefix"

    def _close(self, sets, k, items):
        cur = sets[k]
        work = list(items)
        while work:
            it = work.pop()
            if it in cur:
                continue
            cur.add(it)
            r, a, d, o = it
            alt = self.rules[r][a]
            if d == len(alt):        # complete: advance the items waiting for r at o
                for (r2, a2, d2, o2) in list(sets[o]):
                    alt2 = self.rules[r2][a2]
                    if d2 < len(alt2) and alt2[d2] == r:
                        work.append((r2, a2, d2 + 1, o2))
                continue
            sym = alt[d]
            if isinstance(sym, str):  # predict, and step over a nullable rule at once
                for a3 in range(len(self.rules[sym])):
                    work.append((sym, a3, 0, k))
                if sym in self.null:
                    work.append((r, a, d + 1, o))
