// One invoke: the context object the handler receives, and calling the handler in whichever style it is
// written: async (returns a promise), callback(err, result), or context.succeed/fail/done.

import { RuntimeFault } from './errors.mjs';

function header(headers, name) {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function parseJsonHeader(value, name) {
  if (!value) return undefined;
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new RuntimeFault('Runtime.LambdaContextUnmarshalError', `Unable to parse ${name} JSON: ${err.message}`);
  }
}

/**
 * The context of one invoke, from the `/next` headers (lower-case names, as node:http gives them) and the
 * environment. `succeed`, `fail` and `done` are bound to the invoke by `runHandler`.
 * @throws {RuntimeFault} Runtime.LambdaContextUnmarshalError when client context or identity is not JSON
 */
export function buildContext(headers, env = process.env) {
  const deadlineMs = Number.parseInt(header(headers, 'lambda-runtime-deadline-ms') ?? '', 10);
  const context = {
    awsRequestId: header(headers, 'lambda-runtime-aws-request-id'),
    invokedFunctionArn: header(headers, 'lambda-runtime-invoked-function-arn'),
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: parseJsonHeader(header(headers, 'lambda-runtime-client-context'), 'client context'),
    identity: parseJsonHeader(header(headers, 'lambda-runtime-cognito-identity'), 'Cognito identity'),
    xRayTraceId: header(headers, 'lambda-runtime-trace-id'),
    tenantId: header(headers, 'lambda-runtime-aws-tenant-id'),
    // Kept for compatibility; with several invokes sharing one event loop it cannot mean anything per invoke.
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis() {
      return Number.isFinite(deadlineMs) ? Math.max(deadlineMs - Date.now(), 0) : 0;
    },
  };
  return context;
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';
}

/** Why an invoke failed: what the handler threw, rejected with, or passed as an error. */
export class HandlerFailure {
  constructor(error) {
    this.error = error;
  }
}

/**
 * Calls the handler and settles with its result, whichever way the handler delivers it; the first delivery
 * wins. A handler that returns neither a value nor a promise and never calls back ends at its timeout
 * (the agent's): an empty event loop cannot be told apart per invoke when invokes share one thread.
 *
 * @returns {Promise<unknown>} resolves with the result, rejects with a HandlerFailure
 */
export function runHandler(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const succeed = (result) => {
      if (settled) return;
      settled = true;
      resolve(result);
    };
    const fail = (error) => {
      if (settled) return;
      settled = true;
      reject(new HandlerFailure(error));
    };
    const callback = (err, result) => (err !== null && err !== undefined ? fail(err) : succeed(result));
    context.succeed = (result) => succeed(result);
    context.fail = (error) => fail(error ?? new Error('context.fail() was called without an error'));
    context.done = callback;

    let returned;
    try {
      returned = handler(event, context, callback);
    } catch (err) {
      fail(err);
      return;
    }
    if (isThenable(returned)) {
      Promise.resolve(returned).then(succeed, (err) =>
        fail(err ?? new Error('the handler rejected without a reason')),
      );
    } else if (returned !== undefined && handler.length < 3) {
      succeed(returned); // a synchronous handler that returned its result
    }
  });
}
