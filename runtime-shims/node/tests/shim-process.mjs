// Runs the real bootstrap.mjs as a child process against a stub Runtime API, and collects its output lines.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BOOTSTRAP = path.join(here, '..', 'bootstrap.mjs');
export const FIXTURES = path.resolve(here, '..', '..', '..', 'tests', 'fixtures', 'node');
/** The interpreter under test: SHIM_NODE (e.g. node22), else the one running the tests. */
export const NODE = process.env.SHIM_NODE || process.execPath;

function collect(stream) {
  const lines = [];
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    pending += chunk;
    let i;
    while ((i = pending.indexOf('\n')) !== -1) {
      lines.push(pending.slice(0, i));
      pending = pending.slice(i + 1);
    }
  });
  return lines;
}

/**
 * Starts the shim.
 * @param {string} runtimeApi host:port of the stub
 * @param {string} handler _HANDLER
 * @param {Record<string, string>} [env] more variables
 */
export function startShim(runtimeApi, handler, env = {}) {
  const child = spawn(NODE, [BOOTSTRAP], {
    cwd: FIXTURES,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: process.env.PATH,
      AWS_LAMBDA_RUNTIME_API: runtimeApi,
      _HANDLER: handler,
      LAMBDA_TASK_ROOT: FIXTURES,
      AWS_LAMBDA_FUNCTION_NAME: 'stubbed',
      AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE: '2048',
      AWS_LAMBDA_LOG_GROUP_NAME: '/aws/lambda/stubbed',
      AWS_LAMBDA_LOG_STREAM_NAME: '2026/01/01/[$LATEST]stub',
      AWS_LAMBDA_MAX_CONCURRENCY: '4',
      AWS_LAMBDA_LOG_FORMAT: 'JSON',
      ...env,
    },
  });
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    stdout,
    stderr,
    exited,
    /** Stops the shim (SIGKILL if SIGTERM is not enough) and waits for it. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      return exited;
    },
  };
}

/** Parses JSON lines (throws naming the first line that is not one JSON object). */
export function records(lines) {
  return lines.map((line) => {
    let value;
    try {
      value = JSON.parse(line);
    } catch {
      throw new Error(`not a JSON line: ${JSON.stringify(line)}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Error(`not a JSON object: ${JSON.stringify(line)}`);
    }
    return value;
  });
}
