// bpe_crosscheck.test.mjs -- lmserve's GPT-2 byte-level BPE (C, via the bench/bpe_encode
// tool) against an independent implementation from npm (gpt-3-encoder, a JavaScript
// port of OpenAI's encoder) on a seeded, varied corpus: token ids must be identical.
//
// Needs LMSERVE_BUILD (the build directory holding bench/bpe_encode) and LMSERVE_FIXTURES.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { requireFile } from './lib/server.mjs';

const require = createRequire(import.meta.url);
const gpt3 = require('gpt-3-encoder');

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const build = process.env.LMSERVE_BUILD || path.join(root, 'build', 'release');
const fixtures = process.env.LMSERVE_FIXTURES || path.join(root, 'tests', 'data', 'fixtures');
const tool = path.join(build, 'bench', 'bpe_encode');

// A small seeded generator (mulberry32) so the corpus is the same on every run.
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pieces = [
  // words, capitals, contractions in every spelling the pattern treats differently
  'hello', 'World', 'THE', 'tokenizer', ' quick', ' brown', 'fox', "don't", "I'm", "we'll", "they've",
  "you're", "she'd", "it's", "'S", "'LL", "O'Neil", "rock'n'roll", "''", "'", 'ain\u2019t',
  // digits and numbers
  '0', '7', '42', '2024', '3.14159', '1,000,000', '-12', '1e10', '\u0661\u0662\u0663', '\u00bd', '\u00b2',
  '\u216b', '\uff11\uff12',
  // whitespace runs
  ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', ' \t ', '\t\t\n', '      ', '\u00a0', '\u3000', '\u2003',
  // punctuation and symbols
  '.', ',', '!?', '...', '---', '===', '()', '[]{}', '<|>', '@#$%^&*', '"quoted"', '`code`', '~/path/to',
  '\u00a9', '\u20ac', '\u2014', '\u00ab\u00bb',
  // other scripts
  'caf\u00e9', 'na\u00efve', 'Stra\u00dfe', '\u00fcber', '\u0391\u03b8\u03ae\u03bd\u03b1', '\u041c\u043e\u0441\u043a\u0432\u0430',
  '\u65e5\u672c\u8a9e', '\u4e2d\u6587\u5b57', '\ud55c\uad6d\uc5b4', '\u0627\u0644\u0639\u0631\u0628\u064a\u0629',
  '\u0939\u093f\u0928\u094d\u0926\u0940', '\u0e44\u0e17\u0e22', '\u05e2\u05d1\u05e8\u05d9\u05ea',
  'e\u0301', 'a\u0308o\u0308',
  // emoji: plain, skin tone, ZWJ family, flag, keycap
  '\ud83d\ude00', '\ud83e\udd99', '\ud83d\udc4d\ud83c\udffd', '\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67',
  '\ud83c\uddef\ud83c\uddf5', '1\ufe0f\u20e3', '\u2764\ufe0f',
];

function corpus(n, seed) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const k = 1 + Math.floor(r() * 14);
    let s = '';
    for (let j = 0; j < k; j++) {
      s += pieces[Math.floor(r() * pieces.length)];
      if (r() < 0.5) s += ' ';
    }
    out.push(s);
  }
  return out;
}

function runTool(strings) {
  const input = strings.map((s) => JSON.stringify(s)).join('\n') + '\n';
  const res = spawnSync(tool, [path.join(fixtures, 'tokenizers/gpt2/encoder.json'),
    path.join(fixtures, 'tokenizers/gpt2/vocab.bpe')], { input, maxBuffer: 64 << 20 });
  assert.equal(res.status, 0, `bpe_encode failed: ${res.stderr}`);
  return res.stdout.toString().trim().split('\n').map((l) => JSON.parse(l));
}

test('byte-level BPE ids equal gpt-3-encoder on a varied corpus', () => {
  requireFile(tool, '`make test-build` builds it');
  requireFile(path.join(fixtures, 'tokenizers/gpt2/encoder.json'), 'tests/data comes with the repository; or set LMSERVE_FIXTURES');
  const texts = corpus(1500, 20240601);
  // Long runs and edge shapes as well.
  texts.push(' '.repeat(300) + 'x', '\n'.repeat(50), '9'.repeat(200), 'a'.repeat(500), '', ' ', "'s's's",
    'Hello\u00a0\u00a0world', 'end with spaces   ', '\ud83d\ude00'.repeat(20));
  const ours = runTool(texts);
  assert.equal(ours.length, texts.length);
  let tokens = 0;
  for (let i = 0; i < texts.length; i++) {
    const theirs = gpt3.encode(texts[i]);
    tokens += theirs.length;
    assert.deepEqual(ours[i], theirs, `text ${i} ${JSON.stringify(texts[i])}`);
  }
  assert.ok(tokens > 20000, `corpus too small: ${tokens} tokens`);
});
