// awslambda.streamifyResponse and HttpResponseStream.from in the real bootstrap.mjs, against the stub
// Runtime API: chunks leave as they are written, errors after the first byte go in the trailers.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, test } from 'node:test';

import { startShim } from './shim-process.mjs';
import { StubRuntimeApi } from './stub-runtime-api.mjs';

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function setUp() {
  const api = new StubRuntimeApi();
  const address = await api.start();
  cleanups.push(() => api.stop());
  const shim = startShim(address, 'streaming.handler');
  cleanups.push(() => shim.stop());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmi-node-stream-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { api, dir };
}

/** Resolves once `cond()` holds (bounded: a failure, not a hang). */
async function until(cond, what) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > 20_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test('each chunk reaches the Runtime API before the next is written', async () => {
  const { api, dir } = await setUp();
  const answer = api.invoke('s-1', { chunks: 3, dir });
  for (let i = 1; i <= 3; i++) {
    const want = Array.from({ length: i }, (_, k) => `chunk-${k + 1}\n`).join('');
    // chunk i arrived while the handler waits for go-i: it was sent as written.
    await until(() => api.partial.get('s-1') === want, `chunk ${i}`);
    fs.writeFileSync(path.join(dir, `go-${i}`), '');
  }
  const r = await answer;
  assert.equal(r.kind, 'response');
  assert.equal(r.headers['lambda-runtime-function-response-mode'], 'streaming');
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.headers['content-type'], 'text/plain');
  assert.equal(r.body, 'chunk-1\nchunk-2\nchunk-3\n');
  assert.equal(r.trailers['lambda-runtime-function-error-type'], undefined);
});

test('an error after the first byte travels in the trailers', async () => {
  const { api, dir } = await setUp();
  const answer = api.invoke('s-2', { chunks: 3, dir, fail_after: 1 });
  const r = await answer;
  assert.equal(r.kind, 'response');
  assert.equal(r.body, 'chunk-1\n');
  assert.equal(r.trailers['lambda-runtime-function-error-type'], 'Error');
  const error = JSON.parse(Buffer.from(r.trailers['lambda-runtime-function-error-body'], 'base64').toString('utf8'));
  assert.equal(error.errorType, 'Error');
  assert.equal(error.errorMessage, 'broke after chunk 1');
});

test('an error before the first byte is an ordinary /error', async () => {
  const { api } = await setUp();
  const r = await api.invoke('s-3', { fail_first: true });
  assert.equal(r.kind, 'error');
  assert.equal(JSON.parse(r.body).errorType, 'TypeError');
});

test('HttpResponseStream.from starts the answer with the metadata prelude', async () => {
  const { api } = await setUp();
  const r = await api.invoke('s-4', { http: true });
  assert.equal(r.headers['content-type'], 'application/vnd.awslambda.http-integration-response');
  const split = r.raw.indexOf(Buffer.alloc(8));
  assert.ok(split > 0, 'eight NULs end the prelude');
  assert.deepEqual(JSON.parse(r.raw.subarray(0, split).toString('utf8')), {
    statusCode: 201,
    headers: { 'x-made-by': 'streaming.mjs' },
  });
  assert.equal(r.raw.subarray(split + 8).toString('utf8'), 'body');
});
