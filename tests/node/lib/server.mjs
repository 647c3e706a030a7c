// server.mjs -- start the real lmserve binary for a node test and stop it again.
//
//   const srv = await startServer(['--parallel', '4']);   // model: stories260K.gguf
//   ... fetch(srv.url + '/health') ...
//   const code = await srv.stop();                        // SIGTERM, resolves to the exit code
//
// LMSERVE_BIN names the binary (set by `make test`), LMSERVE_MODELS the model folder.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// The repository's root (this file is tests/node/lib/server.mjs).
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const MODELS = process.env.LMSERVE_MODELS || path.join(ROOT, 'tests/data/models');
export const FIXTURES = process.env.LMSERVE_FIXTURES || path.join(ROOT, 'tests/data/fixtures');
export const BIN = process.env.LMSERVE_BIN || path.join(ROOT, 'build/release/lmserve');

// Fail (never skip) when a file a test needs is missing, saying how to get it.
export function requireFile(file, how) {
  if (!fs.existsSync(file)) throw new Error(`missing ${file} (${how})`);
  return file;
}

export function startServer(extraArgs = [], { model = path.join(MODELS, 'stories260K.gguf'), timeoutMs = 30000 } = {}) {
  requireFile(BIN, '`make test-build` builds it, or set LMSERVE_BIN');
  requireFile(model, 'tests/data comes with the repository; or set LMSERVE_MODELS');
  const args = ['serve', '--model', model, '--host', '127.0.0.1', '--port', '0', ...extraArgs];
  const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); });
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`lmserve did not start within ${timeoutMs} ms:\n${stderr}`));
    }, timeoutMs);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      const m = /lmserve: listening on (http:\/\/[^\s]+)/.exec(stderr);
      if (m && timer) {
        clearTimeout(timer);
        resolve({
          url: m[1].replace(/\/$/, ''),
          child,
          get stderr() { return stderr; },
          async stop(signal = 'SIGTERM') {
            if (!exited) child.kill(signal);
            const r = await exitPromise;
            return r.code;
          },
        });
      }
    });
    child.on('exit', () => {
      clearTimeout(timer);
      reject(new Error(`lmserve exited before listening:\n${stderr}`));
    });
  });
}

// Parse a text/event-stream body into the JSON payloads of its `data:` lines
// (the final `[DONE]` is returned as the string '[DONE]').
export function parseSSE(body) {
  const events = [];
  for (const block of body.split('\n\n')) {
    const lines = block.split('\n').filter((l) => l.startsWith('data:'));
    if (!lines.length) continue;
    const data = lines.map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    events.push(data === '[DONE]' ? data : JSON.parse(data));
  }
  return events;
}
