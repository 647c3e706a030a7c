// openapi.test.mjs -- openapi.yaml lints clean, and every live response of the
// server (successes, each error case, every streamed chunk) validates against it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import http from 'node:http';
import { startServer, parseSSE } from './lib/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const spec = YAML.parse(readFileSync(path.join(root, 'openapi.yaml'), 'utf8'));
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(spec, 'openapi');

function deref(obj) {
  while (obj && obj.$ref) {
    const parts = obj.$ref.replace(/^#\//, '').split('/');
    obj = parts.reduce((o, k) => o[k.replace(/~1/g, '/').replace(/~0/g, '~')], spec);
  }
  return obj;
}

function responseSpec(method, route, status) {
  // Wrong methods and unknown paths are described once, in components/responses.
  if (status === 405) return deref(spec.components.responses.MethodNotAllowed);
  const op = spec.paths[route]?.[method.toLowerCase()];
  assert.ok(op, `openapi.yaml has no ${method} ${route}`);
  const r = op.responses[String(status)];
  assert.ok(r, `openapi.yaml has no ${status} response for ${method} ${route}`);
  return deref(r);
}

function validate(schema, value, what) {
  const ok = ajv.validate(schema, value);
  assert.ok(ok, `${what} does not match openapi.yaml: ${ajv.errorsText(ajv.errors)}\n${JSON.stringify(value).slice(0, 400)}`);
}

function schemaRef(s) {
  // Schemas are validated through the spec document so nested $refs resolve.
  if (s.$ref) return { $ref: 'openapi' + s.$ref };
  return { ...s, $id: undefined };
}

let srv;

before(async () => { srv = await startServer(['--parallel', '4', '--queue', '16']); });
after(async () => { if (srv) assert.equal(await srv.stop(), 0, srv.stderr.slice(-3000)); });

async function check(method, route, { body, raw, headers = {}, status, urlPath = route } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
  if (raw !== undefined) { init.body = raw; init.headers['Content-Type'] ??= 'application/json'; }
  const res = await fetch(srv.url + urlPath, init);
  const text = await res.text();
  assert.equal(res.status, status, `${method} ${urlPath}: expected ${status}, got ${res.status}: ${text.slice(0, 300)}`);
  const rs = responseSpec(method, route, status);
  if (!rs.content) return { res, text };
  const ctype = (res.headers.get('content-type') || '').split(';')[0].trim();
  const media = rs.content[ctype];
  assert.ok(media, `${method} ${route} ${status}: content type ${ctype} is not in openapi.yaml`);
  if (ctype === 'application/json') {
    validate(schemaRef(media.schema), JSON.parse(text), `${method} ${route} ${status}`);
  } else if (ctype === 'text/event-stream') {
    const events = parseSSE(text);
    assert.equal(events.at(-1), '[DONE]');
    for (const e of events.slice(0, -1)) validate(schemaRef(media['x-sse-event-schema']), e, `${route} stream chunk`);
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
  }
  return { res, text };
}

test('openapi.yaml lints clean (redocly, recommended rules)', async () => {
  const run = promisify(execFile);
  const { stdout, stderr } = await run(path.join(here, 'node_modules/.bin/redocly'),
    ['lint', '--config', path.join(root, 'redocly.yaml'), path.join(root, 'openapi.yaml')]);
  assert.match(stdout + stderr, /Your API description is valid/);
  assert.doesNotMatch(stdout + stderr, /warning/i);
});

test('completions: plain, logprobs, echo scoring, n, stop, streams', async () => {
  await check('POST', '/v1/completions', { body: { prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }, status: 200 });
  await check('POST', '/v1/completions', { body: { prompt: 'Once upon a time', max_tokens: 4, logprobs: 3, temperature: 0 }, status: 200 });
  await check('POST', '/v1/completions', { body: { prompt: 'Once upon a time', max_tokens: 0, echo: true, logprobs: 1 }, status: 200 });
  await check('POST', '/v1/completions', { body: { prompt: [1, 403, 407], max_tokens: 4, n: 3, seed: 5 }, status: 200 });
  await check('POST', '/v1/completions', { body: { prompt: 'Once upon a time', max_tokens: 30, stop: ['.', 'Lily'], temperature: 0 }, status: 200 });
  await check('POST', '/v1/completions', { body: { prompt: 'Once upon a time', max_tokens: 8, stream: true, logprobs: 2 }, status: 200 });
  await check('POST', '/v1/completions', {
    body: { prompt: 'Once upon a time', max_tokens: 8, stream: true, n: 2, stream_options: { include_usage: true } }, status: 200,
  });
});

test('chat completions, streamed and not', async () => {
  const messages = [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'A story about a dog.' }];
  await check('POST', '/v1/chat/completions', { body: { messages, max_tokens: 8, temperature: 0 }, status: 200 });
  await check('POST', '/v1/chat/completions', { body: { messages, max_tokens: 8, stream: true, stream_options: { include_usage: true } }, status: 200 });
  await check('POST', '/v1/chat/completions', { body: { messages, max_tokens: 4, logprobs: true, top_logprobs: 2 }, status: 200 });
});

test('sampler_trace: traced completions and chats, streamed and not, validate; values line up', async () => {
  const every = { temperature: 0.9, top_k: 40, top_p: 0.9, min_p: 0.02, repetition_penalty: 1.2,
    presence_penalty: 0.3, frequency_penalty: 0.2, logit_bias: { 261: 1.5, 383: -100 }, seed: 3 };
  const messages = [{ role: 'user', content: 'A story about a dog.' }];
  const cases = [
    ['/v1/completions', { prompt: 'Once upon a time', max_tokens: 6, temperature: 0, sampler_trace: 4 }],
    ['/v1/completions', { prompt: 'Once upon a time', max_tokens: 6, sampler_trace: 20, logprobs: 2, ...every }],
    ['/v1/completions', { prompt: 'Once upon a time', max_tokens: 6, sampler_trace: 3, stream: true, n: 2, ...every }],
    ['/v1/completions', { prompt: 'Once upon a time', max_tokens: 6, sampler_trace: 1, logit_bias: { 2: 100 }, stream: true }],
    ['/v1/chat/completions', { messages, max_tokens: 6, sampler_trace: 5, ...every }],
    ['/v1/chat/completions', { messages, max_tokens: 6, sampler_trace: 5, temperature: 0, stream: true }],
  ];
  for (const [route, body] of cases) {
    const { text } = await check('POST', route, { body, status: 200 });
    const docs = body.stream ? parseSSE(text).slice(0, -1) : [JSON.parse(text)];
    let steps = 0;
    for (const d of docs) {
      for (const ch of d.choices) {
        for (const st of ch.sampler_trace || []) {
          steps++;
          const n = st.candidates.length;
          for (const s of st.stages) if (!s.skipped) assert.equal(s.values.length, n, `${route} ${s.name}`);
          assert.equal(st.draw.cdf_before.length, n);
          assert.ok(st.candidates.some((c) => c.id === st.draw.token), 'the drawn token is a candidate');
        }
      }
    }
    assert.ok(steps > 0, `${route} ${JSON.stringify(body)}: no trace steps`);
  }
});

test('models, health, metrics, tokenize, detokenize, playground', async () => {
  await check('GET', '/v1/models', { status: 200 });
  await check('GET', '/health', { status: 200 });
  await check('GET', '/metrics', { status: 200 });
  const { text } = await check('POST', '/tokenize', { body: { content: 'Once upon a time', with_pieces: true }, status: 200 });
  const { tokens: ids, pieces } = JSON.parse(text);
  assert.deepEqual(pieces, ['<s>', '\u2581Once', '\u2581upon', '\u2581a', '\u2581time']);
  assert.equal(ids.length, pieces.length);
  const d = await check('POST', '/detokenize', { body: { tokens: ids }, status: 200 });
  assert.equal(JSON.parse(d.text).content, 'Once upon a time');
  assert.equal(JSON.parse(d.text).prompt, 'Once upon a time');
  // vLLM's shapes, as lm-evaluation-harness's remote tokenizer sends them
  const info = JSON.parse((await check('GET', '/tokenizer_info', { status: 200 })).text);
  assert.equal(info.eos_token, '</s>');
  const v = await check('POST', '/tokenize', { body: { prompt: info.eos_token, add_special_tokens: false }, status: 200 });
  assert.deepEqual(JSON.parse(v.text).tokens, [2]);
  await check('GET', '/', { status: 200 });
});

test('every error case validates and names its parameter', async () => {
  const bad = [
    [{ prompt: 'x', temperature: -1 }, 'temperature'],
    [{ prompt: 'x', top_p: 0 }, 'top_p'],
    [{ prompt: 'x', top_p: 1.01 }, 'top_p'],
    [{ prompt: 'x', top_k: -1 }, 'top_k'],
    [{ prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty'],
    [{ prompt: 'x', max_tokens: -5 }, 'max_tokens'],
    [{ prompt: 'x', max_tokens: 'ten' }, 'max_tokens'],
    [{ prompt: 'x', n: 0 }, 'n'],
    [{ prompt: 'x', logprobs: 6 }, 'logprobs'],
    [{ prompt: 'x', logit_bias: { 999999: 1 } }, 'logit_bias'],
    [{ prompt: 'x', stop: '' }, 'stop'],
    [{ prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
    [{ prompt: 'x', stream_options: { include_usage: true } }, 'stream_options'],
    [{ prompt: '' }, 'prompt'],
    [{ prompt: [] }, 'prompt'],
    [{ max_tokens: 3 }, 'prompt'],
    [{ prompt: 'x', presence_penalty: 3 }, 'presence_penalty'],
    [{ prompt: 'x', sampler_trace: 21 }, 'sampler_trace'],
    [{ prompt: 'x', sampler_trace: -1 }, 'sampler_trace'],
    [{ prompt: 'x', sampler_trace: 'all' }, 'sampler_trace'],
  ];
  for (const [body, param] of bad) {
    const { text } = await check('POST', '/v1/completions', { body, status: 400 });
    assert.equal(JSON.parse(text).error.param, param, JSON.stringify(body));
  }
  await check('POST', '/v1/completions', { raw: '{"prompt": "x",', status: 400 });
  await check('POST', '/v1/chat/completions', { body: { messages: [] }, status: 400 });
  await check('POST', '/v1/completions', { body: { prompt: 'x', model: 'gpt-4' }, status: 404 });
  for (const [method, route, allow] of [['GET', '/v1/completions', 'POST'], ['POST', '/v1/models', 'GET'],
    ['DELETE', '/health', 'GET'], ['GET', '/tokenize', 'POST']]) {
    const { res } = await check(method, route, { status: 405 });
    assert.match(res.headers.get('allow') || '', new RegExp(allow));
  }
  // An oversized body, sent the way careful clients do (Expect: 100-continue): the
  // server answers 413 from the Content-Length alone, before any body byte is sent.
  const big = Buffer.from(JSON.stringify({ prompt: 'x'.repeat(3 << 20) }));
  const tooLarge = await new Promise((resolve, reject) => {
    const req = http.request(srv.url + '/v1/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Content-Length': big.length, Expect: '100-continue' },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('continue', () => req.end(big));
    req.on('error', reject);
  });
  assert.equal(tooLarge.status, 413);
  validate(schemaRef(spec.components.responses.TooLarge.content['application/json'].schema), JSON.parse(tooLarge.body), '413');
  await check('POST', '/tokenize', { body: { content: 5 }, status: 400 });
  await check('POST', '/detokenize', { body: { tokens: [1e9] }, status: 400 });
  const nf = await fetch(srv.url + '/no/such/route');
  assert.equal(nf.status, 404);
  validate(schemaRef(spec.components.responses.NotFound.content['application/json'].schema), await nf.json(), '404');
});
