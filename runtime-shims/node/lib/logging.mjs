// JSON log lines: every console call, and every line user code writes to process.stdout/stderr, becomes one
// object `{timestamp, level, requestId, message}` on one line (LMI supports the JSON log format only).
// requestId follows the invoke through its asynchronous continuations (AsyncLocalStorage), so concurrent
// invokes of one worker each log under their own id.

import { AsyncLocalStorage } from 'node:async_hooks';
import { format, types } from 'node:util';

/** The invoke a piece of code runs for: `{requestId}` inside an invoke, undefined outside. */
export const invokeScope = new AsyncLocalStorage();

/** Levels in order; AWS_LAMBDA_LOG_LEVEL sets the lowest one written. */
export const LEVELS = { TRACE: 1, DEBUG: 2, INFO: 3, WARN: 4, ERROR: 5, FATAL: 6 };

/** The minimum level from AWS_LAMBDA_LOG_LEVEL (unknown or unset: TRACE, everything, as the official client). */
export function minLevel(value) {
  const name = String(value || '').trim().toUpperCase();
  return LEVELS[name] ?? LEVELS.TRACE;
}

function isError(value) {
  return value instanceof Error || types.isNativeError(value);
}

function stackLines(err) {
  return typeof err.stack === 'string' ? err.stack.split('\n') : [];
}

/** An Error as JSON fields (own enumerable properties kept). */
function errorJson(err) {
  return Object.assign(
    { errorType: err.name ?? err.constructor?.name ?? 'Error', errorMessage: err.message, stackTrace: stackLines(err) },
    err,
  );
}

/**
 * One log record as a JSON text of one line. With a single argument the message keeps its JSON shape (an object
 * stays an object, an Error becomes errorType/errorMessage/stackTrace); with several, they are formatted as
 * console.log would, and the first Error among them adds its fields.
 */
export function formatRecord(level, args, requestId, now = new Date()) {
  const record = { timestamp: now.toISOString(), level, requestId };
  const [message, ...params] = args;
  if (params.length === 0) {
    record.message = message;
    try {
      return JSON.stringify(record, (_key, value) => (isError(value) ? errorJson(value) : value));
    } catch {
      record.message = format(message); // circular structures, BigInt, throwing toJSON…
      return JSON.stringify(record);
    }
  }
  record.message = format(message, ...params);
  const err = params.find(isError);
  if (err) {
    record.errorType = err.name ?? 'Error';
    record.errorMessage = err.message;
    record.stackTrace = stackLines(err);
  }
  return JSON.stringify(record);
}

/** Logs records of this thread into a LogSink. */
export class Logger {
  /**
   * @param {import('./log-sink.mjs').LogSink} sink
   * @param {number} level minimum level written
   */
  constructor(sink, level = LEVELS.TRACE) {
    this.sink = sink;
    this.level = level;
  }

  enabled(level) {
    return LEVELS[level] >= this.level;
  }

  /** A record of user code (console, stdout/stderr lines, invoke errors). */
  log(level, args, stream = 1) {
    if (!this.enabled(level)) return;
    this.sink.writeLine(formatRecord(level, args, invokeScope.getStore()?.requestId), stream);
  }

  /** A record for an error the runtime reports (`errorBody` as sent to the Runtime API), on stdout. */
  logError(message, errorBody) {
    if (!this.enabled('ERROR')) return;
    const record = { timestamp: new Date().toISOString(), level: 'ERROR', requestId: invokeScope.getStore()?.requestId, message, ...errorBody };
    let line;
    try {
      line = JSON.stringify(record);
    } catch {
      line = formatRecord('ERROR', [message], record.requestId);
    }
    this.sink.writeLine(line, 1);
  }

  /** Patches console.* and process.stdout/stderr of this thread to write JSON records. */
  patchConsole() {
    const make = (level) => (...args) => this.log(level, args);
    console.trace = make('TRACE');
    console.debug = make('DEBUG');
    console.info = make('INFO');
    console.log = console.info;
    console.warn = make('WARN');
    console.error = make('ERROR');
    console.fatal = make('FATAL');
    patchStream(process.stdout, (line) => this.log('INFO', [line], 1));
    patchStream(process.stderr, (line) => this.log('ERROR', [line], 2));
  }
}

const MAX_PENDING = 256 * 1024;

/** Replaces `stream.write` with a line splitter: each complete line goes to `emit`. */
function patchStream(stream, emit) {
  let pending = '';
  stream.write = (chunk, encoding, callback) => {
    if (typeof encoding === 'function') {
      callback = encoding;
      encoding = undefined;
    }
    pending += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(encoding || 'utf8');
    let newline;
    while ((newline = pending.indexOf('\n')) !== -1) {
      emit(pending.slice(0, newline));
      pending = pending.slice(newline + 1);
    }
    if (pending.length > MAX_PENDING) {
      emit(pending);
      pending = '';
    }
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
}

/**
 * The runtime's own diagnostics: a JSON line on stderr with `"logger": "lmi-runtime"` (never through the
 * function's log socket, so that the agent sees them even when that socket is the problem).
 */
export function diag(sink, level, message, fields = {}) {
  const record = { timestamp: new Date().toISOString(), level, logger: 'lmi-runtime', message, ...fields };
  const requestId = invokeScope.getStore()?.requestId;
  if (requestId) record.requestId = requestId;
  let line;
  try {
    line = JSON.stringify(record);
  } catch {
    line = JSON.stringify({ timestamp: record.timestamp, level, logger: 'lmi-runtime', message: String(message) });
  }
  sink.writeStd(Buffer.from(line + '\n', 'utf8'), 2);
}
