// One worker thread: its own log connection, its own copy of the handler (its own init), and a loop that polls
// `/next` again as soon as an invoke arrives, so that several invokes of one worker are in flight together
// while their handlers wait on I/O. The agent caps how many invokes the runtime holds; this loop does not.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, threadId, workerData } from 'node:worker_threads';

import { formatError, RuntimeFault, withoutRuntimeFrames } from './errors.mjs';
import { loadHandler } from './handler-loader.mjs';
import { buildContext, HandlerFailure, runHandler } from './invoke.mjs';
import { connectLogSocket, LineLock, LogSink } from './log-sink.mjs';
import { diag, invokeScope, Logger, minLevel } from './logging.mjs';
import { RuntimeApiClient, RuntimeApiError } from './runtime-api-client.mjs';
import { installGlobal, ResponseStream, STREAMING } from './streaming.mjs';

const RUNTIME_DIR = path.dirname(fileURLToPath(import.meta.url));

/** The error body for the Runtime API: the runtime's own frames are not the function's stack. */
function errorFor(err) {
  const error = formatError(err);
  error.stackTrace = withoutRuntimeFrames(error.stackTrace, RUNTIME_DIR);
  return error;
}

/** Exit status of a worker that cannot go on; the main thread then stops the whole runtime. */
const EXIT_FAILURE = 1;

function parseEvent(body, contentType) {
  const type = String(contentType || 'application/json').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') return body; // a non-JSON payload reaches the handler as a Buffer
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new RuntimeFault('Runtime.UnmarshalError', `Unable to parse the event as JSON: ${err.message}`);
  }
}

function marshal(result) {
  let text;
  try {
    text = JSON.stringify(result === undefined ? null : result);
  } catch (err) {
    throw new RuntimeFault('Runtime.JSONStringifyError', `Unable to stringify response body: ${err.message}`);
  }
  return Buffer.from(text ?? 'null', 'utf8'); // JSON.stringify of a function or symbol is undefined
}

/** A worker's state: where it logs, the Runtime API, the handler. */
class Worker {
  constructor(env, sink, logger) {
    this.env = env;
    this.sink = sink;
    this.logger = logger;
    this.client = new RuntimeApiClient(env.AWS_LAMBDA_RUNTIME_API);
    this.handler = null;
  }

  diag(level, message, fields) {
    diag(this.sink, level, message, { thread: threadId, ...fields });
  }

  fatal(message, fields) {
    this.diag('ERROR', message, fields);
    process.exit(EXIT_FAILURE);
  }

  /** Loads the handler; on failure reports `/init/error` (first report wins, 403 for the others) and exits. */
  async init() {
    installGlobal();
    try {
      this.handler = await loadHandler(this.env.LAMBDA_TASK_ROOT || process.cwd(), this.env._HANDLER);
    } catch (err) {
      const error = errorFor(err);
      this.logger.logError('Init Error', error);
      try {
        const status = await this.client.postInitError(error);
        if (status !== 202 && status !== 403) this.diag('WARN', `POST /runtime/init/error answered ${status}`);
      } catch (postErr) {
        this.diag('ERROR', postErr.message);
      }
      process.exit(EXIT_FAILURE);
    }
  }

  async pollForever() {
    for (;;) {
      let next;
      try {
        next = await this.client.next();
      } catch (err) {
        this.fatal(`runtime API unavailable: ${err.message}`);
        return;
      }
      if (next.status !== 200) {
        // 500: the environment is going away; anything else: the runtime cannot go on either.
        this.fatal(`GET /runtime/invocation/next answered ${next.status}; exiting`, { status: next.status });
        return;
      }
      // Run it on the next turn of the event loop and poll again right away.
      setImmediate(() => {
        this.handle(next).catch((err) => this.fatal(`invoke failed in the runtime: ${err && err.message}`));
      });
    }
  }

  async handle({ headers, body }) {
    const requestId = headers['lambda-runtime-aws-request-id'];
    if (!requestId) {
      this.diag('ERROR', 'invoke without Lambda-Runtime-Aws-Request-Id; dropped');
      return;
    }
    if (this.handler[STREAMING]) {
      await invokeScope.run({ requestId }, () => this.handleStreaming(requestId, headers, body));
      return;
    }
    await invokeScope.run({ requestId }, async () => {
      let payload;
      let error;
      try {
        const context = buildContext(headers, this.env);
        const event = parseEvent(body, headers['content-type']);
        payload = marshal(await runHandler(this.handler, event, context));
      } catch (err) {
        error = errorFor(err instanceof HandlerFailure ? err.error : err);
        this.logger.logError('Invoke Error', error);
      }
      const what = error === undefined ? 'response' : 'error';
      let status;
      try {
        status =
          error === undefined
            ? await this.client.postResponse(requestId, payload)
            : await this.client.postError(requestId, error);
      } catch (err) {
        if (!(err instanceof RuntimeApiError)) throw err;
        // The answer could not be delivered (the connection broke while it was posted): the invoke is the
        // Runtime API's to end; this worker goes on polling. If the Runtime API itself is gone, /next says so.
        this.diag('WARN', `answer not delivered: ${err.message}`, { requestId });
        return;
      }
      if (status >= 500) throw new RuntimeApiError(`POST ${what} for ${requestId} answered ${status}`);
      if (status !== 202) {
        // 400 unknown or already answered, 410 timed out, 413 too large: that invoke is over; go on.
        this.diag('WARN', `POST ${what} for ${requestId} answered ${status}`, { status });
      }
    });
  }
}

/**
 * One invoke of a streamifyResponse handler: its bytes go to the Runtime API as it writes them; an error
 * before the first byte is an ordinary `/error`, one after it goes in the answer's trailers.
 */
Worker.prototype.handleStreaming = async function handleStreaming(requestId, headers, body) {
  let opened = null;
  const stream = new ResponseStream((contentType) => {
    opened = this.client.openStreamingResponse(requestId, contentType);
    return opened.request;
  });
  // A broken connection fails the writes; the status promise below says so once.
  stream.on('error', () => {});
  let error;
  try {
    const context = buildContext(headers, this.env);
    const event = parseEvent(body, headers['content-type']);
    await runHandler(async (ev, ctx) => this.handler(ev, stream, ctx), event, context);
    if (!stream.writableEnded) {
      await new Promise((resolve) => stream.end(resolve));
    }
  } catch (err) {
    error = errorFor(err instanceof HandlerFailure ? err.error : err);
    this.logger.logError('Invoke Error', error);
  }
  let status;
  try {
    if (error !== undefined && !stream.started) {
      status = await this.client.postError(requestId, error);
    } else {
      if (error !== undefined) stream.failWith(error);
      status = await opened.status;
    }
  } catch (err) {
    // The connection broke (the caller went away and the agent stopped reading): that invoke is over.
    this.diag('WARN', `streamed answer not delivered: ${err.message}`, { requestId });
    return;
  }
  if (status >= 500) throw new RuntimeApiError(`POST streamed response for ${requestId} answered ${status}`);
  if (status !== 202) this.diag('WARN', `POST streamed response for ${requestId} answered ${status}`, { status });
};

/** Runs a worker thread until the process ends. */
export async function runWorker({ env = process.env, stdLock } = {}) {
  const lock = new LineLock(stdLock);
  const sink = new LogSink({ lock });
  const logger = new Logger(sink, minLevel(env.AWS_LAMBDA_LOG_LEVEL));
  sink.onSocketLost = (message) => diag(sink, 'WARN', message, { thread: threadId });
  const socketPath = env._LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET;
  if (socketPath) {
    const { fd, reason } = await connectLogSocket(socketPath);
    if (fd !== null) sink.socketFd = fd;
    else diag(sink, 'WARN', `${reason}; logging to stdout`, { thread: threadId });
  }
  logger.patchConsole();
  const worker = new Worker(env, sink, logger);
  await worker.init();
  await worker.pollForever();
}

if (!isMainThread && workerData && workerData.lmiWorker) {
  runWorker({ stdLock: workerData.stdLock }).catch((err) => {
    diag(new LogSink({ lock: new LineLock(workerData.stdLock) }), 'ERROR', `worker failed: ${err && err.message}`, {
      thread: threadId,
      stackTrace: String(err && err.stack).split('\n'),
    });
    process.exit(EXIT_FAILURE);
  });
}
