// openai.test.mjs -- drive lmserve with the official `openai` npm client and with curl -N.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { startServer } from './lib/server.mjs';

const GREEDY16 = ', there was a little girl named Lily. She loved to play';
let srv;
let client;

before(async () => {
  srv = await startServer(['--parallel', '4', '--api-key', 'test-key']);
  client = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'test-key', maxRetries: 0 });
});
after(async () => {
  if (srv) assert.equal(await srv.stop(), 0, srv.stderr.slice(-3000)); // before() may have failed
});

test('completions.create, greedy', async () => {
  const r = await client.completions.create({
    model: 'stories260K', prompt: 'Once upon a time', max_tokens: 16, temperature: 0,
  });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, GREEDY16);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 16);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 16);
});

test('completions.create, streamed, equals the non-streamed text', async () => {
  const stream = await client.completions.create({
    prompt: 'Once upon a time', max_tokens: 16, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, GREEDY16);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 16);
});

test('sampler extras pass through the client and seeds reproduce', async () => {
  const req = {
    prompt: 'Once upon a time', max_tokens: 24, temperature: 0.9, top_p: 0.9,
    top_k: 40, repetition_penalty: 1.1, min_p: 0.01, seed: 1234,
  };
  const a = await client.completions.create(req);
  const b = await client.completions.create(req);
  assert.equal(a.choices[0].text, b.choices[0].text);
  const c = await client.completions.create({ ...req, seed: 99 });
  assert.notEqual(a.choices[0].text, c.choices[0].text);
});

test('a bad parameter surfaces as a 400 BadRequestError naming it', async () => {
  await assert.rejects(
    client.completions.create({ prompt: 'x', max_tokens: 4, top_p: 1.5 }),
    (err) => {
      assert.equal(err.status, 400);
      assert.equal(err.error?.param ?? err.param, 'top_p');
      return true;
    },
  );
});

test('a wrong API key is a 401 AuthenticationError', async () => {
  const bad = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(bad.models.list(), (err) => err.status === 401);
});

test('models.list reports the served model', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.deepEqual(ids, ['stories260K']);
});

test('chat.completions.create, streamed and not', async () => {
  const messages = [{ role: 'user', content: 'Tell me a story about a cat.' }];
  const r = await client.chat.completions.create({ messages, max_tokens: 20, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.choices[0].message.content.length > 0);
  const stream = await client.chat.completions.create({ messages, max_tokens: 20, temperature: 0, stream: true });
  let text = '';
  let role = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    const d = chunk.choices[0]?.delta;
    if (d?.role) role = d.role;
    if (d?.content) text += d.content;
  }
  assert.equal(role, 'assistant');
  assert.equal(text, r.choices[0].message.content);
});

test('curl -N streams the same text', async () => {
  const run = promisify(execFile);
  const { stdout } = await run('curl', ['-sN', srv.url + '/v1/completions',
    '-H', 'Authorization: Bearer test-key', '-H', 'Content-Type: application/json',
    '-d', JSON.stringify({ prompt: 'Once upon a time', max_tokens: 16, temperature: 0, stream: true })]);
  const events = stdout.split('\n\n').filter((b) => b.startsWith('data: '));
  assert.equal(events.at(-1), 'data: [DONE]');
  const text = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)).choices[0].text).join('');
  assert.equal(text, GREEDY16);
});

test("response_format in OpenAI's shapes: json_schema (strict, named, described) and json_object", async () => {
  const schema = {
    type: 'object',
    properties: {
      name: { type: 'string', description: 'first name', maxLength: 10 },
      age: { type: 'integer', minimum: 0, maximum: 120 },
      pet: { type: 'string', enum: ['cat', 'dog'] },
    },
    required: ['name', 'age', 'pet'],
    additionalProperties: false,
  };
  const messages = [{ role: 'user', content: 'Describe a child and her pet.' }];
  const rf = { type: 'json_schema', json_schema: { name: 'child', description: 'a child', schema, strict: true } };
  const r = await client.chat.completions.create({ messages, max_tokens: 200, n: 4, seed: 8, temperature: 1,
    response_format: rf });
  let whole = 0;
  for (const c of r.choices) {
    if (c.finish_reason !== 'stop') continue;
    whole++;
    const v = JSON.parse(c.message.content);
    assert.deepEqual(Object.keys(v), ['name', 'age', 'pet'], c.message.content);
    assert.ok(typeof v.name === 'string' && [...v.name].length <= 10, c.message.content);
    assert.ok(Number.isInteger(v.age) && v.age >= 0 && v.age <= 120, c.message.content);
    assert.ok(v.pet === 'cat' || v.pet === 'dog', c.message.content);
  }
  assert.ok(whole >= 1, 'no choice finished its object in 200 tokens');
  // streamed, the same text
  const one = { messages, max_tokens: 200, seed: 8, temperature: 1, response_format: rf };
  const a = await client.chat.completions.create(one);
  let text = '';
  for await (const chunk of await client.chat.completions.create({ ...one, stream: true })) {
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(text, a.choices[0].message.content);
  // json_object, on completions too
  const o = await client.completions.create({ prompt: 'A person:', max_tokens: 200, n: 4, seed: 2,
    response_format: { type: 'json_object' } });
  for (const c of o.choices) {
    if (c.finish_reason === 'stop') {
      const v = JSON.parse(c.text);
      assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), c.text);
    } else {
      assert.equal(c.finish_reason, 'length');
    }
  }
  // a keyword outside the subset: a BadRequestError whose param is its path
  await assert.rejects(
    client.chat.completions.create({ messages, max_tokens: 4, response_format: { type: 'json_schema',
      json_schema: { name: 'x', schema: { type: 'string', format: 'email' }, strict: true } } }),
    (err) => {
      assert.equal(err.status, 400);
      assert.equal(err.error?.param ?? err.param, 'response_format.json_schema.schema.format');
      return true;
    },
  );
});
