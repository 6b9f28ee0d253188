#!/usr/bin/env node
// Node.js runtime shim of lmi-agent (Lambda Runtime API 2018-06-01, LMI concurrency model). Built-in modules
// only; Node.js 20 or later.
//
// The main thread starts worker threads (lib/worker-count.mjs says how many). Each worker loads the handler
// itself, polls /next and keeps several invokes in flight. If any worker ends, for whatever reason, the whole
// process exits non-zero: the agent treats the runtime exiting as fatal to the environment, which is what must
// happen when a poller is lost (and after an init error).

import { Worker } from 'node:worker_threads';

import { LineLock, LogSink } from './lib/log-sink.mjs';
import { diag } from './lib/logging.mjs';
import { availableCpus, workerCount } from './lib/worker-count.mjs';

// Per-process V8 flags a worker thread refuses (ERR_WORKER_INVALID_EXEC_ARGV).
const PROCESS_ONLY_FLAGS = ['--expose-gc', '--max-semi-space-size', '--max-old-space-size'];

function main() {
  const stdLock = new SharedArrayBuffer(4);
  const sink = new LogSink({ lock: new LineLock(stdLock) });
  const env = process.env;
  if (!env.AWS_LAMBDA_RUNTIME_API) {
    diag(sink, 'ERROR', 'AWS_LAMBDA_RUNTIME_API is not set');
    process.exit(1);
  }
  let stopping = false;
  const stop = () => {
    stopping = true;
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const cpus = availableCpus();
  const count = workerCount(env, cpus);
  const execArgv = process.execArgv.filter((arg) => !PROCESS_ONLY_FLAGS.some((flag) => arg.startsWith(flag)));
  const url = new URL('./lib/worker.mjs', import.meta.url);
  for (let i = 0; i < count; i++) {
    const worker = new Worker(url, { workerData: { lmiWorker: true, id: i, stdLock }, execArgv });
    worker.on('error', (err) => {
      diag(sink, 'ERROR', `worker ${i} failed: ${err && err.message}`, {
        errorType: err && err.name,
        stackTrace: typeof err?.stack === 'string' ? err.stack.split('\n') : [],
      });
    });
    worker.on('exit', (code) => {
      if (stopping) return;
      const status = code === 0 ? 1 : code;
      diag(sink, 'ERROR', `worker ${i} exited with code ${code}; stopping the runtime`, {
        exitCode: status,
      });
      process.exit(status);
    });
  }
  diag(sink, 'INFO', `started ${count} worker thread(s)`, { workers: count, cpus });
}

main();
