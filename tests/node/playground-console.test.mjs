// playground-console.test.mjs -- the playground loads and runs with ZERO console errors and no
// failed request (a missing favicon is a console error in Chromium), and opens on the served
// model's own sample prompt (GGUF lmserve.sample_prompt, shown by /v1/models), with
// "Once upon a time" only for a model that names none.
//   lmserve serve --model models/default/model.gguf   (sample prompt "In the beginning")
//   lmserve serve --model $LMSERVE_MODELS/stories260K.gguf   (none: the fallback)
// Environment: LMSERVE_BIN, LMSERVE_MODELS, CHROMIUM (default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, MODELS, BIN } from './lib/server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DEFAULT_MODEL = path.join(ROOT, 'models/default/model.gguf');
const STORIES = path.join(MODELS, 'stories260K.gguf');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const T = process.env.SANITIZE ? 60000 : 20000;

let context = null;
let userDataDir = null;

before(async () => {
  assert.ok(fs.existsSync(BIN), `no server binary at ${BIN} (set LMSERVE_BIN)`);
  assert.ok(fs.existsSync(STORIES), `no model at ${STORIES} (set LMSERVE_MODELS)`);
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmserve-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (context) await context.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
});

/* Open the playground of a server on a new page, recording every console error, page error,
 * failed request and HTTP error answer; generate once; return what was recorded. */
async function visit(srv) {
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  const requested = [];
  page.on('request', (r) => requested.push(new URL(r.url()).pathname));
  await page.goto(srv.url + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('#server-status')?.dataset.ok === 'true');
  const prompt = await page.inputValue('#prompt');
  await page.fill('#max-tokens', '8');
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error', 'stopped'].includes(document.querySelector('#col-0')?.dataset.state));
  const state = await page.$eval('#col-0', (e) => e.dataset.state);
  // Let late requests (the favicon is fetched after load) finish before counting.
  await page.waitForLoadState('networkidle');
  await page.close();
  return { problems, prompt, state, requested };
}

test('default model: no console error, the favicon is served, the prompt is the model\'s own', async () => {
  const srv = await startServer([], { model: DEFAULT_MODEL });
  try {
    const card = await (await fetch(srv.url + '/v1/models')).json();
    assert.equal(card.data[0].sample_prompt, 'In the beginning');
    const r = await visit(srv);
    assert.deepEqual(r.problems, []);
    assert.equal(r.state, 'done');
    assert.equal(r.prompt, 'In the beginning');
    assert.ok(r.requested.includes('/favicon.svg'), 'the page asked for its declared icon: ' + r.requested.join(' '));
    const icon = await fetch(srv.url + '/favicon.svg');
    assert.equal(icon.status, 200);
    assert.match(icon.headers.get('content-type'), /^image\/svg\+xml/);
    assert.match(await icon.text(), /^<svg /);
  } finally {
    assert.equal(await srv.stop(), 0);
  }
});

test('a model without a sample prompt keeps the fallback, still with no console error', async () => {
  const srv = await startServer([], { model: STORIES });
  try {
    const card = await (await fetch(srv.url + '/v1/models')).json();
    assert.equal(card.data[0].sample_prompt, undefined);
    const r = await visit(srv);
    assert.deepEqual(r.problems, []);
    assert.equal(r.state, 'done');
    assert.equal(r.prompt, 'Once upon a time');
  } finally {
    assert.equal(await srv.stop(), 0);
  }
});
