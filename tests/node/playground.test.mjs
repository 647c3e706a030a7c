// playground.test.mjs -- the web playground (web/static, compiled into the binary) driven in
// Debian's headless Chromium through playwright-core, against the real server:
//   lmserve serve --model $LMSERVE_MODELS/stories260K.gguf --port 0
// Environment: LMSERVE_BIN (the binary), LMSERVE_MODELS (weights folder), LMSERVE_BUILD (where
// screenshots/*.png are written: the playground, narrow and dark, and the pipeline view wide,
// narrow, side by side and its panel alone), CHROMIUM (default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.LMSERVE_BIN || path.join(ROOT, 'build/release/lmserve');
const MODELS = process.env.LMSERVE_MODELS || path.join(ROOT, 'tests/data/models');
const BUILD = process.env.LMSERVE_BUILD || path.dirname(BIN);
const MODEL = path.join(MODELS, 'stories260K.gguf');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SLOW = !!process.env.SANITIZE; // sanitizer builds: allow more time

const PROMPT = 'Once upon a time';
// stories260K's greedy continuation of PROMPT with max_tokens 16 (issue 4's acceptance text).
const GREEDY_16 = ', there was a little girl named Lily. She loved to play';
const T_RUN = SLOW ? 60000 : 20000;
const LONG_RUN = 200000;


let server = null;   // { proc, base, log }
let context = null;  // playwright persistent context (fresh --user-data-dir)
let page = null;
let userDataDir = null;
const pageErrors = []; // uncaught script errors on the page, from every test

/* Start the real server on a free port; resolve once it prints its listening line. */
function startServer(extraArgs = []) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.LMSERVE_API_KEY; // the server's default key: these tests choose their own
    const proc = spawn(BIN, ['serve', '--model', MODEL, '--host', '127.0.0.1', '--port', '0', ...extraArgs],
      { stdio: ['ignore', 'ignore', 'pipe'], env });
    let log = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server did not report its address in time; stderr:\n${log}`));
    }, SLOW ? 60000 : 20000);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /lmserve: listening on (http:\/\/[^\s]+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, base: m[1].replace(/\/$/, ''), get log() { return log; } });
      }
    });
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    proc.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (${code ?? sig}); stderr:\n${log}`));
    });
  });
}

/* SIGTERM, then wait; resolves to the exit code (or the signal's name). */
async function stopServer(s) {
  if (!s) return null;
  if (s.proc.exitCode !== null || s.proc.signalCode !== null) return s.proc.exitCode ?? s.proc.signalCode;
  const done = new Promise((r) => s.proc.once('exit', (code, sig) => r(code ?? sig)));
  s.proc.kill('SIGTERM');
  const t = setTimeout(() => s.proc.kill('SIGKILL'), SLOW ? 30000 : 10000);
  const rc = await done;
  clearTimeout(t);
  return rc;
}

async function runningRequests() {
  const res = await fetch(server.base + '/metrics');
  assert.equal(res.status, 200);
  const text = await res.text();
  const m = /^lmserve_requests_running(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$/m.exec(text);
  assert.ok(m, 'lmserve_requests_running missing from /metrics:\n' + text.slice(0, 2000));
  return Number(m[1]);
}

async function waitFor(fn, what, timeout = T_RUN) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/* Wait until column i has finished; fail with the page's own error text if it failed. */
async function waitColumnDone(i, states = ['done']) {
  const sel = `#col-${i}`;
  await page.waitForFunction((s) => {
    const st = document.querySelector(s)?.dataset.state;
    return st === 'done' || st === 'error' || st === 'stopped';
  }, sel, { timeout: T_RUN });
  const st = await page.$eval(sel, (e) => e.dataset.state);
  if (!states.includes(st)) {
    const err = await page.$eval(`#error-${i}`, (e) => e.textContent);
    const stats = await page.$eval(`#stats-${i}`, (e) => e.textContent);
    assert.fail(`column ${i} ended in state ${st}: ${err} [${stats}]`);
  }
  return st;
}

async function freshPage() {
  await page.goto(server.base + '/', { waitUntil: 'load' });
  await page.waitForSelector('#col-0');
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `no server binary at ${BIN} (make test-build builds it, or set LMSERVE_BIN)`);
  assert.ok(fs.existsSync(MODEL), `no model at ${MODEL} (tests/data comes with the repository; or set LMSERVE_MODELS)`);
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium; make test installs it)`);
  server = await startServer(['--max-tokens-limit', String(LONG_RUN)]);
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmserve-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
  });
  page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(T_RUN);
  // Any script error on the page fails the run (checked by the last test).
  page.on('pageerror', (e) => { pageErrors.push(String(e)); });
});

after(async () => {
  if (context) await context.close().catch(() => {});
  await stopServer(keyed);
  await stopServer(server);
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
});

test('serves the page and its files from the binary, with types and ETags', async () => {
  const files = [['/', 'index.html', 'text/html'], ['/app.js', 'app.js', 'javascript'],
    ['/pipeline.js', 'pipeline.js', 'javascript'], ['/style.css', 'style.css', 'text/css']];
  for (const [url, file, type] of files) {
    const res = await fetch(server.base + url);
    assert.equal(res.status, 200, url);
    assert.match(res.headers.get('content-type') || '', new RegExp(type), url);
    const etag = res.headers.get('etag');
    assert.match(etag || '', /^"[^"]+"$/, `${url}: strong ETag`);
    const body = Buffer.from(await res.arrayBuffer());
    assert.ok(body.equals(fs.readFileSync(path.join(ROOT, 'web/static', file))), `${url} equals web/static/${file}`);
    const again = await fetch(server.base + url, { headers: { 'If-None-Match': etag } });
    assert.equal(again.status, 304, `${url} revalidates with If-None-Match`);
  }
});

test('greedy generation streams the exact stories260K continuation', async () => {
  await freshPage();
  // Every control has an accessible name (a <label> or aria-label).
  const unnamed = await page.$$eval('input, select, textarea, button', (els) => els
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
  assert.equal(await page.getAttribute('#output-0', 'aria-live'), 'polite');
  await page.fill('#prompt', PROMPT);
  await page.selectOption('#preset-0', 'greedy');
  assert.equal(await page.inputValue('#temperature-0'), '0');
  await page.fill('#max-tokens', '16');
  await page.click('#generate');
  await waitColumnDone(0);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
  // The output shows the prompt (muted) followed by the continuation.
  assert.equal(await page.textContent('#output-0'), PROMPT + GREEDY_16);
  const stats = await page.textContent('#stats-0');
  assert.match(stats, /first token \d+ ms/);
  assert.match(stats, /[\d.]+ tokens\/s/);
  assert.match(stats, /\b16 tokens\b/);
  assert.match(stats, /finish: length/);
  assert.equal(await page.isDisabled('#generate'), false);
  assert.equal(await page.isDisabled('#stop'), true);
  assert.deepEqual(pageErrors, []);
});

test('a prompt longer than the window is cropped, not refused: the playground shows what the API answers', async () => {
  // The server's default, slide: the model sees the prompt's last --ctx tokens.  A
  // 64-token window keeps each token past it cheap (one pass over the window each).
  const small = await startServer(['--ctx', '64']);
  try {
    let long = PROMPT;
    for (;;) {
      const t = await (await fetch(small.base + '/tokenize', { method: 'POST', body: JSON.stringify({ content: long }) })).json();
      if (t.tokens.length > 64 + 16) break;
      long += ' Lily and Ben went to the park to play on the swings.';
    }
    const api = await (await fetch(small.base + '/v1/completions', {
      method: 'POST', body: JSON.stringify({ prompt: long, max_tokens: 12, temperature: 0 }),
    })).json();
    assert.ok(api.usage.prompt_tokens_dropped > 16, JSON.stringify(api.usage));
    await page.goto(small.base + '/', { waitUntil: 'load' });
    await page.waitForSelector('#col-0');
    await page.fill('#prompt', long);
    await page.selectOption('#preset-0', 'greedy');
    await page.fill('#max-tokens', '12');
    let sent = null;
    const grab = (req) => { if (req.method() === 'POST') sent = req.postDataJSON(); };
    page.on('request', grab);
    await page.click('#generate');
    await waitColumnDone(0);
    page.off('request', grab);
    assert.equal(sent.context_overflow, undefined, 'the playground leaves the crop to the server (slide)');
    assert.equal(await page.textContent('#completion-0'), api.choices[0].text);
    assert.match(await page.textContent('#stats-0'), /finish: length/);
  } finally {
    assert.equal(await stopServer(small), 0);
  }
});

test('token view colours tokens by probability and lists the alternatives', async () => {
  await freshPage();
  assert.equal(await page.isChecked('#token-view'), true);
  await page.fill('#prompt', PROMPT);
  await page.selectOption('#preset-0', 'greedy');
  await page.fill('#max-tokens', '16');
  // From the keyboard this time: Ctrl+Enter in the prompt generates.
  await page.focus('#prompt');
  await page.keyboard.press('Control+Enter');
  await waitColumnDone(0);
  const toks = await page.$$eval('#completion-0 .tok', (ss) => ss.map((s) => ({
    text: s.textContent, title: s.title, cls: s.className, tab: s.tabIndex,
  })));
  assert.equal(toks.length, 16, 'one span per generated token');
  assert.equal(toks.map((t) => t.text).join(''), GREEDY_16);
  for (const t of toks) {
    assert.match(t.title, /^\d+(\.\d+)?%/, `token ${JSON.stringify(t.text)} has its probability`);
    assert.match(t.cls, /\bp[0-5]\b/, 'coloured by a probability class');
    const p = parseFloat(t.title);
    assert.ok(p > 0 && p <= 100);
  }
  assert.deepEqual(toks.map((t) => t.tab).filter((x) => x === 0).length, 1, 'one tab stop for the token list');

  // Keyboard: Tab to the first token, then ArrowRight to the second; the panel follows focus.
  await page.focus('#completion-0 .tok[tabindex="0"]');
  await page.keyboard.press('ArrowRight');
  const focused = await page.evaluate(() => document.activeElement?.dataset.i);
  assert.equal(focused, '1');
  await page.waitForSelector('#detail-0:not([hidden])');
  const rows = await page.$$eval('#detail-0 table tr', (trs) => trs.slice(1).map((tr) => ({
    tok: tr.cells[0].textContent, p: Number(tr.dataset.p), shown: tr.cells[1].textContent, chosen: tr.classList.contains('chosen'),
  })));
  assert.equal(rows.length, 5, 'logprobs: 5 gives five alternatives');
  // Greedy picks the model's most likely token: it heads the list, and the list is sorted.
  assert.equal(rows[0].chosen, true);
  assert.equal(rows[0].tok, toks[1].text.replace(/ /g, '␣'));
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].p >= rows[i].p, 'sorted by probability');
  for (const r of rows) assert.match(r.shown, /^[\d.e-]+%$/, 'each alternative shows a percentage');
  assert.ok(rows[0].p > 0.1 && rows[0].p <= 1, `greedy token probability ${rows[0].p}`);
  assert.equal(toks[1].title.split(' ')[0], rows[0].shown, 'tooltip and panel agree');
});

test('side by side: three settings columns stream at once and all complete', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.click('#compare');
  assert.equal(await page.$$eval('#columns > .column', (c) => c.length), 3);
  assert.deepEqual(
    [await page.inputValue('#preset-0'), await page.inputValue('#preset-1'), await page.inputValue('#preset-2')],
    ['greedy', 'top_p', 'top_k']);
  assert.equal(await page.inputValue('#top_p-1'), '0.9');
  assert.equal(await page.inputValue('#top_k-2'), '40');
  await page.fill('#max-tokens', '16');
  await page.fill('#seed', '1234');
  await page.click('#generate');
  for (let i = 0; i < 3; i++) await waitColumnDone(i);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
  for (let i = 1; i < 3; i++) {
    const text = await page.textContent(`#completion-${i}`);
    assert.ok(text.length > 0, `column ${i} produced text`);
    assert.match(await page.textContent(`#stats-${i}`), /\b16 tokens\b.*finish: length/);
  }
  // The same seed again gives the same sampled text (columns 1 and 2 are not greedy).
  const first = [await page.textContent('#completion-1'), await page.textContent('#completion-2')];
  await page.click('#generate');
  for (let i = 0; i < 3; i++) await waitColumnDone(i);
  assert.deepEqual([await page.textContent('#completion-1'), await page.textContent('#completion-2')], first);

  // Focus a token in column 2 so the screenshot shows the alternatives panel.
  await page.focus('#completion-2 .tok[tabindex="0"]');
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('ArrowRight');
  const dir = path.join(BUILD, 'screenshots');
  fs.mkdirSync(dir, { recursive: true });
  const shot = path.join(dir, 'playground.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(fs.statSync(shot).size > 10000, 'screenshot written');
  // And the narrow-screen layout (a phone-sized viewport): nothing may overflow sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px on a narrow screen`);
  await page.screenshot({ path: path.join(dir, 'playground-narrow.png'), fullPage: true });
  // Dark scheme (prefers-color-scheme): the page switches its palette.
  await page.emulateMedia({ colorScheme: 'dark' });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(bg, 'rgb(246, 247, 249)', 'dark background');
  await page.screenshot({ path: path.join(dir, 'playground-dark.png'), fullPage: true });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 900 });
});

test('Stop aborts a long generation and the server stops running it', async () => {
  await freshPage();
  assert.equal(await runningRequests(), 0);
  await page.fill('#prompt', PROMPT);
  // Far more tokens than stories260K could produce before Stop (the server slides its
  // context window, and this test's server accepts up to LONG_RUN tokens).
  await page.fill('#max-tokens', String(LONG_RUN));
  await page.click('#generate');
  // Running: tokens are arriving and the server counts one running request.
  await page.waitForFunction(() => document.querySelectorAll('#completion-0 span').length >= 3);
  await waitFor(async () => (await runningRequests()) === 1, 'one running request');
  assert.equal(await page.isDisabled('#stop'), false);
  await page.click('#stop');
  assert.equal(await waitColumnDone(0, ['stopped']), 'stopped');
  assert.match(await page.textContent('#stats-0'), /^Stopped/);
  await waitFor(async () => (await runningRequests()) === 0, 'the running count to drop to 0', SLOW ? 20000 : 5000);
  assert.equal(await page.isDisabled('#generate'), false);
});

test('stop strings and the penalty fields reach the server', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.selectOption('#preset-0', 'greedy');
  await page.fill('#max-tokens', '16');
  await page.fill('#stop-strings', 'Lily\nnever appears');
  let sent = null;
  const grab = (req) => { if (req.method() === 'POST') sent = req.postDataJSON(); };
  page.on('request', grab);
  await page.click('#generate');
  await waitColumnDone(0);
  page.off('request', grab);
  // OpenAI semantics: the text ends before the stop string.
  assert.equal(await page.textContent('#completion-0'), ', there was a little girl named ');
  assert.match(await page.textContent('#stats-0'), /finish: stop/);
  assert.deepEqual(sent.stop, ['Lily', 'never appears']);
  assert.equal(sent.temperature, 0);
  assert.equal(sent.repetition_penalty, 1);
  assert.equal(sent.penalty_last_n, 0);
  assert.equal(sent.stream, true);
  assert.equal(sent.logprobs, 5);

  // A repetition penalty changes the greedy text (the server applies it and its window).
  await page.fill('#stop-strings', '');
  await page.fill('#repetition_penalty-0', '2');
  await page.fill('#penalty_last_n-0', '64');
  assert.equal(await page.inputValue('#preset-0'), 'custom', 'editing a field leaves the preset');
  await page.click('#generate');
  await waitColumnDone(0);
  const penalised = await page.textContent('#completion-0');
  assert.ok(penalised.length > 0);
  assert.notEqual(penalised, GREEDY_16);
});

test('invalid settings are flagged on the page; server errors are shown', async () => {
  await freshPage();
  let posts = 0;
  const count = (req) => { if (req.method() === 'POST') posts++; };
  page.on('request', count);
  await page.fill('#top_p-0', '0');
  await page.click('#generate');
  assert.equal(await page.getAttribute('#top_p-0', 'aria-invalid'), 'true');
  assert.match(await page.textContent('#top_p-0-err'), /Top-p must be above 0/);
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'top_p-0', 'focus moves to the bad field');
  assert.equal(posts, 0, 'nothing sent');
  page.off('request', count);

  // A request only the server can refuse: an empty prompt has no tokens (issue 4: 400
  // naming the parameter).  The page shows the status and the server's message.
  await page.fill('#top_p-0', '1');
  await page.fill('#prompt', '');
  await page.click('#generate');
  await waitColumnDone(0, ['error']);
  const msg = await page.textContent('#error-0');
  assert.match(msg, /^HTTP 400\b/, 'the HTTP status is shown');
  assert.match(msg, /parameter: prompt/, 'the parameter the server named is shown');
  assert.equal(await page.isVisible('#error-0'), true);
  assert.equal(await page.getAttribute('#error-0', 'role'), 'alert');
});

/* ---- The pipeline view and the course's exercises (issue 23) ---------------------------- */

/* The last POST /v1/completions the page sends while fn runs. */
async function capturePost(fn) {
  let sent = null;
  const grab = (req) => { if (req.method() === 'POST' && req.url().endsWith('/v1/completions')) sent = req.postDataJSON(); };
  page.on('request', grab);
  try { await fn(); } finally { page.off('request', grab); }
  assert.ok(sent, 'the page sent a completion request');
  return sent;
}

/* The same request from here, not streamed: the trace the page was sent. */
async function apiTwin(sent) {
  const body = { ...sent, stream: false };
  delete body.stream_options;
  const res = await fetch(server.base + '/v1/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  return (await res.json()).choices[0];
}

/* What column i's pipeline shows, read from the page. */
function readPipeline(i) {
  return page.$eval(`#pipeline-${i}`, (box) => ({
    hidden: box.hidden,
    step: box.dataset.step,
    head: box.querySelector('.pipe-head')?.textContent || '',
    stages: Array.from(box.querySelectorAll('.stage')).map((p) => ({
      name: p.dataset.stage,
      survivors: Number(p.querySelector('.survivors').dataset.survivors),
      rows: Array.from(p.querySelectorAll('.bar-row')).map((r) => ({
        id: Number(r.dataset.id), val: r.querySelector('.val').textContent,
        dropped: r.classList.contains('dropped'), chosen: r.classList.contains('chosen'),
        argmax: r.classList.contains('argmax'),
      })),
    })),
    draw: box.querySelector('.draw')?.textContent || '',
    coin: !!box.querySelector('.draw .coin'),
    skipped: box.querySelector('.skipped')?.textContent || '',
  }));
}

/* The page's pipeline of a step against the API's trace of it. */
function assertPipelineShows(view, st, k) {
  assert.equal(view.hidden, false, 'the pipeline is shown');
  assert.equal(view.step, String(k));
  const ran = st.stages.filter((s) => !s.skipped);
  assert.deepEqual(view.stages.map((s) => s.name), ran.map((s) => s.name), 'one panel per stage that ran, in order');
  ran.forEach((s, j) => {
    const p = view.stages[j];
    assert.equal(p.survivors, s.survivors, `${s.name}: survivors`);
    assert.equal(p.rows.length, st.candidates.length, `${s.name}: a bar per candidate`);
    const chosen = p.rows.filter((r) => r.chosen);
    assert.deepEqual(chosen.map((r) => r.id), [st.draw.token], `${s.name}: the chosen token marked`);
    const dead = s.values.filter((v) => v === null || (s.name === 'softmax' && v === 0)).length;
    assert.equal(p.rows.filter((r) => r.dropped).length, dead, `${s.name}: dropped tokens greyed`);
    for (const r of p.rows.filter((x) => x.dropped && s.name !== 'softmax')) assert.equal(r.val, '−∞');
    let best = -1;
    s.values.forEach((v, c) => { if (v !== null && (best < 0 || v > s.values[best])) best = c; });
    assert.deepEqual(p.rows.filter((r) => r.argmax).map((r) => r.id), [st.candidates[best].id], `${s.name}: argmax`);
  });
  for (const s of st.stages.filter((x) => x.skipped && x.name !== 'temperature')) {
    const label = { constraint: 'Format', logit_bias: 'Logit bias', repetition_penalty: 'Repetition penalty', presence_frequency: 'Presence',
      top_k: 'Top-k', top_p: 'Top-p', min_p: 'Min-p', softmax: 'Softmax' }[s.name];
    assert.match(view.skipped, new RegExp(label), `skipped ${s.name} is listed as skipped`);
  }
  if (st.draw.method === 'sample') {
    assert.ok(view.coin, 'the coin is drawn on the line');
    assert.match(view.draw, new RegExp('Coin ' + st.draw.coin.toFixed(4)));
  } else {
    assert.match(view.draw, /Greedy/);
  }
}

test('pipeline view: a token\'s stages with their survivors, stepping by keyboard, the same step side by side', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.fill('#max-tokens', '16');
  await page.fill('#seed', '99');
  await page.fill('#temperature-0', '0.8');
  await page.fill('#top_k-0', '20');
  await page.fill('#top_p-0', '0.9');
  await page.fill('#min_p-0', '0.02');
  await page.fill('#repetition_penalty-0', '1.2');
  assert.equal(await page.inputValue('#trace-n'), '8');
  const sent = await capturePost(async () => { await page.click('#generate'); await waitColumnDone(0); });
  assert.equal(sent.sampler_trace, 8);
  const api = await apiTwin(sent);
  assert.equal(await page.textContent('#completion-0'), api.text);
  const steps = api.sampler_trace;
  assert.equal(steps.length, 16);

  // Click a token: its step's pipeline.
  await page.click('#completion-0 .tok[data-i="0"]');
  await page.waitForSelector('#pipeline-0:not([hidden])');
  assertPipelineShows(await readPipeline(0), steps[0], 0);
  assert.match((await readPipeline(0)).head, /^Step 1 of 16/);
  // The keyboard steps through the generation: ArrowRight, then End.
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.i), '1');
  assertPipelineShows(await readPipeline(0), steps[1], 1);
  await page.keyboard.press('ArrowRight');
  assertPipelineShows(await readPipeline(0), steps[2], 2);
  await page.keyboard.press('End');
  assertPipelineShows(await readPipeline(0), steps[15], 15);
  await page.keyboard.press('Home');
  assertPipelineShows(await readPipeline(0), steps[0], 0);
  assert.deepEqual(pageErrors, []);

  const dir = path.join(BUILD, 'screenshots');
  fs.mkdirSync(dir, { recursive: true });
  // The screenshots show the step whose draw had the most tokens to choose from.
  const survivors = (st) => st.stages.find((s) => s.name === 'softmax').survivors;
  const wide = steps.reduce((best, st, k) => (survivors(st) > survivors(steps[best]) ? k : best), 0);
  await page.click(`#completion-0 .tok[data-i="${wide}"]`);
  assertPipelineShows(await readPipeline(0), steps[wide], wide);
  await page.screenshot({ path: path.join(dir, 'playground-pipeline.png'), fullPage: true });
  await page.locator('#pipeline-0').screenshot({ path: path.join(dir, 'pipeline-panel.png') });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the pipeline view scrolls sideways by ${overflow}px on a narrow screen`);
  await page.screenshot({ path: path.join(dir, 'playground-pipeline-narrow.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  // Side by side: a second, greedy column; selecting step 3 in one shows step 3 in both.
  await page.selectOption('#columns-count', '2');
  await page.selectOption('#preset-1', 'greedy');
  const sent2 = await capturePost(async () => {
    await page.click('#generate');
    await waitColumnDone(0);
    await waitColumnDone(1);
  });
  assert.equal(sent2.temperature, 0);
  const greedy = await apiTwin(sent2);
  assert.equal(await page.textContent('#completion-1'), GREEDY_16);
  await page.click('#completion-0 .tok[data-i="3"]');
  assertPipelineShows(await readPipeline(0), steps[3], 3);
  assertPipelineShows(await readPipeline(1), greedy.sampler_trace[3], 3);
  assert.equal(await page.$eval('#completion-1 .tok.peer', (s) => s.dataset.i), '3', 'the other column marks its token');
  assert.match(await page.textContent('#detail-1'), new RegExp(`^"${greedy.logprobs.tokens[3].replace(/ /g, '␣')}"`),
    'and shows its detail');
  await page.focus('#completion-1 .tok.peer');
  await page.keyboard.press('ArrowRight');
  assertPipelineShows(await readPipeline(1), greedy.sampler_trace[4], 4);
  assertPipelineShows(await readPipeline(0), steps[4], 4);
  await page.screenshot({ path: path.join(dir, 'playground-pipeline-side-by-side.png'), fullPage: true });
  assert.deepEqual(pageErrors, []);
});

test('forbid a token from the token view: logit_bias −100 in that column, shown, removable; it regenerates without it', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.selectOption('#preset-0', 'greedy');
  await page.fill('#max-tokens', '16');
  await page.click('#generate');
  await waitColumnDone(0);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
  await page.focus('#completion-0 .tok[data-i="0"]');
  const forbid = page.locator('#detail-0 tr.chosen button[data-action="forbid"]');
  const id = Number(await forbid.getAttribute('data-id'));
  const sent = await capturePost(async () => { await forbid.click(); await waitColumnDone(0); });
  assert.deepEqual(sent.logit_bias, { [id]: -100 });
  assert.equal(await page.isVisible('#bias-0'), true);
  assert.match(await page.textContent('#bias-0'), new RegExp(`"," \\(id ${id}\\) −100`));
  const text = await page.textContent('#completion-0');
  assert.notEqual(text, GREEDY_16);
  assert.ok(!text.startsWith(','), text);
  const api = await apiTwin(sent);
  assert.equal(api.text, text);
  for (const st of api.sampler_trace) assert.notEqual(st.draw.token, id, 'the forbidden token is never chosen');
  // Its pipeline shows the bias stage dropping it.
  await page.click('#completion-0 .tok[data-i="0"]');
  const view = await readPipeline(0);
  assertPipelineShows(view, api.sampler_trace[0], 0);
  const biasPanel = view.stages.find((s) => s.name === 'logit_bias');
  assert.ok(biasPanel, 'a logit-bias panel');
  assert.deepEqual(biasPanel.rows.filter((r) => r.id === id).map((r) => [r.dropped, r.val]), [[true, '−∞']]);
  // Removable: the chip goes, the next run sends no bias and gives the greedy text back.
  await page.click(`#bias-0 .chip[data-id="${id}"] .chip-x`);
  assert.equal(await page.isHidden('#bias-0'), true);
  const again = await capturePost(async () => { await page.click('#generate'); await waitColumnDone(0); });
  assert.equal(again.logit_bias, undefined);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
});

test('forced first token: chosen from the alternatives, and the column continues from it', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.selectOption('#preset-0', 'greedy');
  await page.fill('#max-tokens', '16');
  await page.click('#generate');
  await waitColumnDone(0);
  await page.focus('#completion-0 .tok[data-i="1"]');
  assert.equal(await page.locator('#detail-0 button[data-action="force"]').count(), 0, 'only the first token can be forced');
  await page.focus('#completion-0 .tok[data-i="0"]');
  const start = page.locator('#detail-0 tr:not(.chosen) button[data-action="force"]').first();
  const id = Number(await start.getAttribute('data-id'));
  const tokText = await page.locator('#detail-0 tr:not(.chosen) td.mono').first().textContent();
  const sent = await capturePost(async () => { await start.click(); await waitColumnDone(0); });
  const tk = await (await fetch(server.base + '/tokenize', { method: 'POST', body: JSON.stringify({ content: PROMPT }) })).json();
  assert.deepEqual(sent.prompt, [...tk.tokens, id], 'the prompt goes as ids, the chosen token last');
  assert.equal(await page.textContent('#output-0 .forced-tok'), tokText.replace(/␣/g, ' '));
  assert.match(await page.textContent('#forced-0'), new RegExp(`\\(id ${id}\\)`));
  const api = await apiTwin(sent);
  assert.equal(await page.textContent('#completion-0'), api.text);
  assert.ok(!GREEDY_16.startsWith(api.text.slice(0, 5)), 'a different continuation');
  await page.click(`#forced-0 .chip[data-id="${id}"] .chip-x`);
  const again = await capturePost(async () => { await page.click('#generate'); await waitColumnDone(0); });
  assert.equal(again.prompt, PROMPT);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
});

test('greedy two ways: temperature 0 and top-k 1 give the same text, and the pipelines show why', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.fill('#max-tokens', '16');
  await page.click('#greedy-two-ways');
  assert.equal(await page.$$eval('#columns > .column', (c) => c.length), 2);
  assert.deepEqual([await page.inputValue('#preset-0'), await page.inputValue('#preset-1')], ['greedy', 'top_k1']);
  assert.equal(await page.inputValue('#temperature-0'), '0');
  assert.equal(await page.inputValue('#top_k-1'), '1');
  assert.equal(await page.inputValue('#temperature-1'), '1');
  await page.click('#generate');
  await waitColumnDone(0);
  await waitColumnDone(1);
  assert.equal(await page.textContent('#completion-0'), GREEDY_16);
  assert.equal(await page.textContent('#completion-1'), GREEDY_16);
  await page.click('#completion-1 .tok[data-i="2"]');
  const topk = await readPipeline(1);
  assert.deepEqual(topk.stages.map((s) => [s.name, s.survivors]), [['logits', 512], ['top_k', 1], ['softmax', 1]]);
  assert.deepEqual(topk.stages[2].rows.filter((r) => r.chosen).map((r) => r.val), ['100.0%']);
  assert.match(topk.draw, /Coin/);
  const greedy = await readPipeline(0);
  assert.equal(greedy.step, '2');
  assert.deepEqual(greedy.stages.map((s) => s.name), ['logits']);
  assert.match(greedy.draw, /Greedy/);
  assert.deepEqual(pageErrors, []);
});

test('Format: JSON Schema, choice list and grammar constrain their columns; refusals show the parameter', async () => {
  await freshPage();
  await page.fill('#prompt', PROMPT);
  await page.fill('#max-tokens', '150');
  await page.fill('#seed', '3');
  await page.selectOption('#columns-count', '3');
  await page.selectOption('#format-0', 'json_schema');
  await page.selectOption('#format-1', 'choice');
  await page.selectOption('#format-2', 'grammar');
  assert.equal(await page.isVisible('#format-spec-0'), true, 'the schema editor appears');
  assert.match(await page.inputValue('#format-spec-0'), /"required"/);
  assert.equal(await page.textContent('label[for="format-spec-1"]'), 'Choices');
  await page.fill('#format-spec-1', ' yes\n no\nmaybe');
  const sent = [];
  const grab = (req) => { if (req.method() === 'POST') sent.push(req.postDataJSON()); };
  page.on('request', grab);
  await page.click('#generate');
  for (let i = 0; i < 3; i++) await waitColumnDone(i);
  page.off('request', grab);
  assert.equal(sent.length, 3);
  const byFormat = (k) => sent.find((b) => k in b);
  const rf = byFormat('response_format').response_format;
  assert.equal(rf.type, 'json_schema');
  assert.deepEqual(rf.json_schema.schema.required, ['name', 'age', 'mood']);
  assert.deepEqual(byFormat('choice').choice, [' yes', ' no', 'maybe']);
  assert.match(byFormat('grammar').grammar, /^root ::= /);
  // the choice column says exactly one of the choices, and ends with stop
  assert.ok([' yes', ' no', 'maybe'].includes(await page.textContent('#completion-1')));
  assert.match(await page.textContent('#stats-1'), /finish: stop/);
  // the schema column: valid JSON for the schema when it finished, else a prefix of it
  const json = await page.textContent('#completion-0');
  if (/finish: stop/.test(await page.textContent('#stats-0'))) {
    const v = JSON.parse(json);
    assert.equal(typeof v.name, 'string');
    assert.ok(Number.isInteger(v.age) && v.age >= 0 && v.age <= 120);
    assert.ok(['happy', 'sad', 'curious'].includes(v.mood));
  } else {
    assert.match(json, /^\s*\{/);
  }
  assert.match(await page.textContent('#completion-2'), /^[A-Z][a-z]/);

  // switching formats keeps each one's text
  await page.selectOption('#format-0', 'text');
  assert.equal(await page.isVisible('#format-spec-0'), false);
  await page.selectOption('#format-0', 'json_schema');
  assert.match(await page.inputValue('#format-spec-0'), /"mood"/);

  // checked on the page: a schema that is not JSON, stop strings beside a format
  await page.selectOption('#columns-count', '1');
  let posts = 0;
  const count = (req) => { if (req.method() === 'POST') posts++; };
  page.on('request', count);
  await page.fill('#format-spec-0', '{"type": ');
  await page.click('#generate');
  assert.equal(await page.getAttribute('#format-spec-0', 'aria-invalid'), 'true');
  assert.match(await page.textContent('#format-err-0'), /not JSON/);
  await page.fill('#format-spec-0', '{"type": "string"}');
  await page.fill('#stop-strings', 'x');
  await page.click('#generate');
  assert.match(await page.textContent('#stop-err'), /cannot be combined/);
  assert.equal(posts, 0, 'nothing sent');
  page.off('request', count);
  await page.fill('#stop-strings', '');

  // refused by the server: the parameter is the path to the keyword
  await page.fill('#format-spec-0', '{"type": "object", "properties": {"a": {"type": "string", "format": "date"}}}');
  await page.click('#generate');
  await waitColumnDone(0, ['error']);
  const msg = await page.textContent('#error-0');
  assert.match(msg, /^HTTP 400\b/);
  assert.match(msg, /parameter: response_format\.json_schema\.schema\.properties\.a\.format/);
});

let keyed = null; // a second server, started with --api-key
const API_KEY = 'playground-test-key';
const STATIC_PATHS = ['/', '/index.html', '/app.js', '/pipeline.js', '/style.css'];

test('with --api-key the page itself loads without a key (openapi.yaml: / is exempt)', async () => {
  keyed = await startServer(['--api-key', API_KEY]);
  const statuses = [];
  for (const p of STATIC_PATHS) statuses.push((await fetch(keyed.base + p)).status);
  assert.deepEqual(statuses, STATIC_PATHS.map(() => 200));
  assert.equal((await fetch(keyed.base + '/v1/models')).status, 401, 'the API still needs the key');
});

test('API key field: requests fail with 401 until the key is entered', async () => {
  assert.ok(keyed, 'keyed server started by the previous test');
  try {
    // If the server wants the key for the page's own files, give it for those only:
    // everything the page's script sends must still come from the key field.
    await page.route((url) => url.origin === keyed.base && STATIC_PATHS.includes(url.pathname), (route) =>
      route.continue({ headers: { ...route.request().headers(), authorization: 'Bearer ' + API_KEY } }));
    await page.goto(keyed.base + '/', { waitUntil: 'load' });
    await page.waitForFunction(() => /API key is required/.test(document.querySelector('#server-status')?.textContent || ''));
    await page.fill('#prompt', PROMPT);
    await page.selectOption('#preset-0', 'greedy');
    await page.fill('#max-tokens', '16');
    await page.click('#generate');
    await waitColumnDone(0, ['error']);
    assert.match(await page.textContent('#error-0'), /^HTTP 401\b/);
    assert.equal(await page.getAttribute('#api-key', 'type'), 'password');
    await page.fill('#api-key', API_KEY);
    await page.click('#generate');
    await waitColumnDone(0);
    assert.equal(await page.textContent('#completion-0'), GREEDY_16);
    assert.equal(await page.isHidden('#error-0'), true, 'the old error is cleared');
  } finally {
    await page.unrouteAll();
    const rc = await stopServer(keyed);
    assert.equal(rc, 0, keyed.log.slice(-2000));
    keyed = null;
  }
});

test('the server ends cleanly after the browser session (exit 0, no sanitizer report)', async () => {
  assert.deepEqual(pageErrors, [], 'script errors on the page');
  await context.close();
  context = null;
  const rc = await stopServer(server);
  assert.equal(rc, 0, 'exit status after SIGTERM; stderr:\n' + server.log.slice(-3000));
  assert.doesNotMatch(server.log, /ERROR: (Address|Leak)Sanitizer|runtime error:/, server.log.slice(-3000));
});
