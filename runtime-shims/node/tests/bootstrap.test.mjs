// The real bootstrap.mjs, as a child process, against a stub Runtime API on 127.0.0.1.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, test } from 'node:test';

import { records, startShim } from './shim-process.mjs';
import { StubRuntimeApi } from './stub-runtime-api.mjs';

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function setUp(handler, env = {}) {
  const api = new StubRuntimeApi();
  const address = await api.start();
  cleanups.push(() => api.stop());
  const shim = startShim(address, handler, env);
  cleanups.push(() => shim.stop());
  return { api, shim };
}

function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmi-node-shim-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Resolves once `cond()` holds (bounded: a failure, not a hang). */
async function until(cond, what) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > 20_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('success, function errors and bad events each answer their own invoke', async () => {
  const { api } = await setUp('actions.handler');
  const [ok, err, rejected, unparsable] = await Promise.all([
    api.invoke('ok-1', { action: 'echo', n: [1, { x: 'y' }] }, { 'Lambda-Runtime-Client-Context': '{"custom":{"a":1}}' }),
    api.invoke('err-1', { action: 'raise', message: 'bad input: 42' }),
    api.invoke('rej-1', { action: 'reject_string', message: 'just a string' }),
    api.invokeRaw('raw-1', Buffer.from('{not json')),
  ]);
  assert.equal(ok.kind, 'response');
  assert.deepEqual(JSON.parse(ok.body).event, { action: 'echo', n: [1, { x: 'y' }] });
  assert.equal(JSON.parse(ok.body).requestId, 'ok-1');

  assert.equal(err.kind, 'error');
  assert.equal(err.headers['lambda-runtime-function-error-type'], 'TypeError');
  const body = JSON.parse(err.body);
  assert.equal(body.errorType, 'TypeError');
  assert.equal(body.errorMessage, 'bad input: 42');
  assert.ok(body.stackTrace.some((l) => l.includes('actions.mjs')), body.stackTrace.join('\n'));
  assert.ok(!body.stackTrace.some((l) => l.includes('runtime-shims')), 'the shim hides its own frames');

  assert.deepEqual(JSON.parse(rejected.body), { errorType: 'string', errorMessage: 'just a string', stackTrace: [] });
  assert.equal(JSON.parse(unparsable.body).errorType, 'Runtime.UnmarshalError');
});

test('one worker keeps several invokes in flight and re-polls while they run', async () => {
  const dir = tempDir();
  const { api } = await setUp('actions.handler', { AWS_LAMBDA_NODEJS_WORKER_COUNT: '1' });
  const ids = ['g-1', 'g-2', 'g-3', 'g-4'];
  // Each handler returns only once all four have announced themselves: possible only if the single worker
  // took all four from /next while the earlier ones were still waiting.
  const results = await Promise.all(ids.map((id) => api.invoke(id, { action: 'gate', dir, count: 4, max_s: 15 })));
  const threads = new Set();
  for (const r of results) {
    assert.equal(r.kind, 'response', r.body);
    const v = JSON.parse(r.body);
    assert.deepEqual(v.seen, ids);
    threads.add(v.thread);
  }
  assert.equal(threads.size, 1, 'all on the one worker thread');
});

test('log lines are JSON, one per line, each with the requestId of the invoke that wrote it', async () => {
  const { api, shim } = await setUp('actions.handler', { AWS_LAMBDA_NODEJS_WORKER_COUNT: '1' });
  const ids = ['log-a', 'log-b', 'log-c'];
  await Promise.all(ids.map((id) => api.invoke(id, { action: 'log', lines: 3 })));
  await until(() => records(shim.stdout).filter((r) => r.level === 'WARN').length === 9, 'nine WARN records');
  const recs = records(shim.stdout);
  for (const id of ids) {
    const mine = recs.filter((r) => r.requestId === id);
    assert.deepEqual(
      mine.filter((r) => r.level === 'INFO').map((r) => r.message),
      [0, 1, 2].map((i) => `line ${i} of ${id}`),
    );
    assert.deepEqual(mine.filter((r) => r.level === 'WARN').map((r) => r.message), [0, 1, 2].map((i) => ({ i, requestId: id })));
    for (const r of mine) assert.match(r.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  }
  records(shim.stderr); // the runtime's own diagnostics are JSON lines too
});

test('with a log socket, each worker connects once and its lines go there instead of stdout', async () => {
  const dir = tempDir();
  const socketPath = path.join(dir, 'logs.sock');
  const connections = [];
  const server = net.createServer((conn) => {
    const entry = { data: '' };
    connections.push(entry);
    conn.setEncoding('utf8');
    conn.on('data', (d) => (entry.data += d));
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  const { api, shim } = await setUp('actions.handler', {
    AWS_LAMBDA_NODEJS_WORKER_COUNT: '2',
    _LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET: socketPath,
  });
  await Promise.all(['s-1', 's-2'].map((id) => api.invoke(id, { action: 'log', lines: 2 })));
  const lines = () => connections.flatMap((c) => c.data.split('\n').filter(Boolean));
  await until(() => lines().length >= 8, 'eight records on the socket');
  await until(() => connections.length >= 2, 'both workers to connect');
  assert.equal(connections.length, 2, 'one connection per worker');
  for (const id of ['s-1', 's-2']) {
    assert.equal(records(lines()).filter((r) => r.requestId === id).length, 4);
  }
  assert.equal(shim.stdout.filter((l) => l.includes('line 0 of')).length, 0, 'nothing of the function on stdout');
});

test('a log socket that is not there costs a warning, not the invoke', async () => {
  const { api, shim } = await setUp('actions.handler', {
    AWS_LAMBDA_NODEJS_WORKER_COUNT: '1',
    _LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET: path.join(os.tmpdir(), 'lmi-no-such-dir', 'logs.sock'),
  });
  const r = await api.invoke('nosock-1', { action: 'log', lines: 1 });
  assert.equal(r.kind, 'response');
  await until(() => shim.stdout.some((l) => l.includes('line 0 of nosock-1')), 'the log line on stdout');
  assert.ok(records(shim.stderr).some((d) => d.level === 'WARN' && /cannot connect/.test(d.message)));
});

test('an init error is reported once per worker, and the process exits non-zero', async () => {
  const { api, shim } = await setUp('init_throws.handler', { AWS_LAMBDA_MAX_CONCURRENCY: '3' });
  const first = await api.nextInitError();
  assert.equal(first.headers['lambda-runtime-function-error-type'], 'Error');
  assert.equal(JSON.parse(first.body).errorMessage, 'boom at init');
  const { code } = await shim.exited;
  assert.notEqual(code, 0);
  assert.equal(api.polls, 0, 'a worker that failed its init never polls');
});

test('a worker that dies takes the process down with a non-zero status', async () => {
  const { api, shim } = await setUp('actions.handler', { AWS_LAMBDA_NODEJS_WORKER_COUNT: '2' });
  api.invoke('crash-1', { action: 'crash' });
  const { code } = await shim.exited;
  assert.notEqual(code, 0);
  const diags = records(shim.stderr);
  assert.ok(diags.some((d) => /uncaught in a timer/.test(d.message)), JSON.stringify(diags));
  assert.ok(diags.some((d) => /exited with code 1; stopping the runtime/.test(d.message)));
});

test('a 500 from /next ends the runtime', async () => {
  const { api, shim } = await setUp('actions.handler', { AWS_LAMBDA_NODEJS_WORKER_COUNT: '1' });
  await until(() => api.parked.length === 1, 'the worker to poll');
  await api.stop();
  const { code } = await shim.exited;
  assert.notEqual(code, 0);
});

for (const refusal of [400, 410, 413, 'close', 'drop']) {
  test(`a refused answer (${refusal}) is logged and every worker goes on polling`, async () => {
    const { api, shim } = await setUp('oversize.handler', { AWS_LAMBDA_NODEJS_WORKER_COUNT: '4' });
    await until(() => api.parked.length === 4, 'four parked polls');
    // Big enough not to fit in the socket buffers: a stub that closes at once makes the writer see EPIPE.
    const ids = ['big-1', 'big-2', 'big-3', 'raise-1'];
    for (const id of ids) api.refuse.set(id, refusal);
    for (const id of ids.slice(0, 3)) api.invoke(id, { action: 'big', bytes: 8 * 1024 * 1024 });
    api.invoke('raise-1', { action: 'raise', message: 'refused too' });
    await until(() => ids.every((id) => (api.refused.get(id) ?? 0) >= 1), 'every answer refused');
    // Each worker holds one /next at a time, and a poll whose connection closed is dropped from `parked`:
    // four live parked polls are four live workers.
    await until(() => api.parked.length === 4, 'all four workers polling again');
    assert.equal(shim.child.exitCode, null, 'the runtime is still running');
    const ok = await api.invoke('after', { action: 'echo' });
    assert.equal(ok.kind, 'response');
    await until(
      () => records(shim.stderr).some((r) => r.level === 'WARN' && /answered|not delivered/.test(r.message)),
      'the refusal logged',
    );
    await until(() => api.parked.length === 4, 'all four workers polling after the echo');
    assert.equal(shim.child.exitCode, null);
  });
}
