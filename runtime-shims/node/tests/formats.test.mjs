import assert from 'node:assert/strict';
import { test } from 'node:test';

import { errorTypeHeader, formatError, withoutRuntimeFrames } from '../lib/errors.mjs';
import { buildContext, runHandler } from '../lib/invoke.mjs';
import { formatRecord, LEVELS, minLevel } from '../lib/logging.mjs';
import { errorBody, parseAddress } from '../lib/runtime-api-client.mjs';

const NOW = new Date('2026-01-02T03:04:05.678Z');

test('a log record is one JSON line with timestamp, level, requestId and message', () => {
  const line = formatRecord('INFO', ['hello %s', 'world'], 'req-1', NOW);
  assert.deepEqual(JSON.parse(line), {
    timestamp: '2026-01-02T03:04:05.678Z',
    level: 'INFO',
    requestId: 'req-1',
    message: 'hello world',
  });
  const multiline = formatRecord('INFO', ['a\nb\r\nc'], 'req-1', NOW);
  assert.ok(!multiline.includes('\n'), 'newlines inside a message stay escaped: one record, one line');
  assert.equal(JSON.parse(multiline).message, 'a\nb\r\nc');
});

test('outside an invoke there is no requestId', () => {
  assert.equal('requestId' in JSON.parse(formatRecord('WARN', ['x'], undefined, NOW)), false);
});

test('a single object keeps its JSON shape; an Error becomes its fields', () => {
  assert.deepEqual(JSON.parse(formatRecord('INFO', [{ a: [1, 2] }], 'r', NOW)).message, { a: [1, 2] });
  const err = JSON.parse(formatRecord('ERROR', [new RangeError('too far')], 'r', NOW)).message;
  assert.equal(err.errorType, 'RangeError');
  assert.equal(err.errorMessage, 'too far');
  assert.ok(Array.isArray(err.stackTrace) && err.stackTrace[0] === 'RangeError: too far');
});

test('several arguments are formatted like console.log, the first Error adds its fields', () => {
  const rec = JSON.parse(formatRecord('ERROR', ['failed:', new TypeError('nope'), 42], 'r', NOW));
  assert.match(rec.message, /^failed: TypeError: nope/);
  assert.equal(rec.errorType, 'TypeError');
  assert.equal(rec.errorMessage, 'nope');
});

test('values JSON cannot hold still give one line', () => {
  const circular = { name: 'loop' };
  circular.self = circular;
  for (const value of [circular, 10n]) {
    const rec = JSON.parse(formatRecord('INFO', [value], 'r', NOW));
    assert.equal(typeof rec.message, 'string');
  }
});

test('AWS_LAMBDA_LOG_LEVEL picks the lowest level written', () => {
  assert.equal(minLevel('warn'), LEVELS.WARN);
  assert.equal(minLevel(undefined), LEVELS.TRACE);
  assert.equal(minLevel('chatty'), LEVELS.TRACE);
});

test('errors for the Runtime API: Errors by name, other values by typeof', () => {
  const e = formatError(new SyntaxError('bad'));
  assert.equal(e.errorType, 'SyntaxError');
  assert.equal(e.errorMessage, 'bad');
  assert.equal(e.stackTrace[0], 'SyntaxError: bad');
  assert.deepEqual(formatError('plain'), { errorType: 'string', errorMessage: 'plain', stackTrace: [] });
  assert.deepEqual(formatError({ code: 7 }), { errorType: 'object', errorMessage: '{"code":7}', stackTrace: [] });
  assert.deepEqual(formatError(undefined), { errorType: 'undefined', errorMessage: 'undefined', stackTrace: [] });
  const hostile = new Error('x');
  Object.defineProperty(hostile, 'name', { get() { throw new Error('no'); } });
  assert.equal(formatError(hostile).errorType, 'Runtime.UnknownError');
});

test("the runtime's frames and Node's internals are cut from stacks", () => {
  const lines = [
    'Error: x',
    '    at handler (file:///var/task/index.mjs:3:9)',
    '    at node:internal/process/task_queues:95:5',
    '    at runHandler (file:///opt/shim/lib/invoke.mjs:86:18)',
    '    at Worker.handle (file:///opt/shim/lib/worker.mjs:100:23)',
  ];
  assert.deepEqual(withoutRuntimeFrames(lines, '/opt/shim/lib'), lines.slice(0, 2));
});

test('error type headers are visible ASCII', () => {
  assert.equal(errorTypeHeader('Runtime.HandlerNotFound'), 'Runtime.HandlerNotFound');
  assert.equal(errorTypeHeader('Bad Type\n'), 'Bad_Type_');
  assert.equal(errorTypeHeader(''), 'Unknown');
});

test('an error body over 1 MiB is cut down', () => {
  const body = errorBody({ errorType: 'E', errorMessage: 'x'.repeat(2 * 1024 * 1024), stackTrace: ['a'] });
  assert.ok(body.length < 1024 * 1024);
  assert.deepEqual(JSON.parse(body).stackTrace, []);
});

test('AWS_LAMBDA_RUNTIME_API must be host:port', () => {
  assert.deepEqual(parseAddress('127.0.0.1:9001'), { host: '127.0.0.1', port: 9001 });
  assert.deepEqual(parseAddress('[::1]:80'), { host: '::1', port: 80 });
  for (const bad of ['', 'localhost', 'h:0', 'h:70000', 'h:p']) assert.throws(() => parseAddress(bad), /host:port/);
});

const HEADERS = {
  'lambda-runtime-aws-request-id': 'id-1',
  'lambda-runtime-deadline-ms': String(Date.now() + 5000),
  'lambda-runtime-invoked-function-arn': 'arn:aws:lambda:us-east-1:1:function:f',
  'lambda-runtime-client-context': '{"custom":{"k":"v"}}',
  'lambda-runtime-cognito-identity': '{"cognitoIdentityId":"cid"}',
};

test('the context carries the headers and the environment', () => {
  const ctx = buildContext(HEADERS, {
    AWS_LAMBDA_FUNCTION_NAME: 'f',
    AWS_LAMBDA_FUNCTION_VERSION: '3',
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: '2048',
    AWS_LAMBDA_LOG_GROUP_NAME: '/aws/lambda/f',
    AWS_LAMBDA_LOG_STREAM_NAME: 's',
  });
  assert.equal(ctx.awsRequestId, 'id-1');
  assert.equal(ctx.functionVersion, '3');
  assert.equal(ctx.memoryLimitInMB, '2048');
  assert.deepEqual(ctx.clientContext, { custom: { k: 'v' } });
  assert.equal(ctx.identity.cognitoIdentityId, 'cid');
  const left = ctx.getRemainingTimeInMillis();
  assert.ok(left > 0 && left <= 5000, String(left));
  assert.throws(() => buildContext({ ...HEADERS, 'lambda-runtime-client-context': '{nope' }), {
    name: 'Runtime.LambdaContextUnmarshalError',
  });
});

test('every handler style settles once, with the first answer', async () => {
  const ctx = () => buildContext(HEADERS, {});
  assert.equal(await runHandler(async (e) => e + 1, 1, ctx()), 2);
  assert.equal(await runHandler((e, c, cb) => cb(null, e * 2), 4, ctx()), 8);
  assert.equal(await runHandler((e, c) => { c.succeed('s'); c.fail(new Error('late')); }, 0, ctx()), 's');
  const legacy = (e, c) => {
    setImmediate(() => c.done(null, 'd')); // returns nothing: the answer comes through the context
  };
  assert.equal(await runHandler(legacy, 0, ctx()), 'd');
  assert.equal(await runHandler((e) => e, 'sync', ctx()), 'sync', 'a synchronous result counts');
  await assert.rejects(runHandler((e, c, cb) => cb('str'), 0, ctx()), (f) => f.error === 'str');
  await assert.rejects(runHandler(() => { throw new TypeError('t'); }, 0, ctx()), (f) => f.error instanceof TypeError);
  await assert.rejects(runHandler(async () => Promise.reject(undefined), 0, ctx()), (f) => f.error instanceof Error);
});
