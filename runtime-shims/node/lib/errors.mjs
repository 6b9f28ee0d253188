// Errors as the Runtime API wants them: `{errorType, errorMessage, stackTrace}`, and the Runtime.* faults of
// the runtime itself.

import { types } from 'node:util';

/** A fault of the runtime (not of the function's code), reported with a `Runtime.*` type. */
export class RuntimeFault extends Error {
  /**
   * @param {string} type e.g. `Runtime.ImportModuleError`
   * @param {string} message
   * @param {unknown} [cause] the error behind it; its stack is reported
   */
  constructor(type, message, cause) {
    super(message);
    this.name = type;
    if (cause && typeof cause.stack === 'string') this.stack = cause.stack;
  }
}

function isErrorLike(value) {
  return value instanceof Error || types.isNativeError(value);
}

function safeString(value) {
  try {
    if (value !== null && typeof value === 'object') return JSON.stringify(value) ?? String(value);
    return String(value);
  } catch {
    try {
      return String(value);
    } catch {
      return '<unprintable value>';
    }
  }
}

/**
 * The error body for `/error` and `/init/error`. An Error gives its `name`, `message` and `stack` lines (as the
 * official client does); anything else thrown or passed to a callback gives its `typeof` and its text.
 */
export function formatError(err) {
  try {
    if (isErrorLike(err)) {
      return {
        errorType: String(err.name ?? 'Error'),
        errorMessage: String(err.message ?? ''),
        stackTrace: typeof err.stack === 'string' ? err.stack.split('\n') : [],
      };
    }
    return { errorType: typeof err, errorMessage: safeString(err), stackTrace: [] };
  } catch {
    return {
      errorType: 'Runtime.UnknownError',
      errorMessage: 'the error could not be read (its name, message or stack threw)',
      stackTrace: [],
    };
  }
}

/**
 * A stack without the runtime's own frames: lines from the first frame inside `runtimeDir` on are dropped (the
 * runtime called the handler there; what is below it is the runtime), and so are Node's internal frames.
 * @param {string[]} lines `stackTrace` of formatError
 * @param {string} runtimeDir absolute directory of the runtime's modules
 */
export function withoutRuntimeFrames(lines, runtimeDir) {
  const marks = [runtimeDir + '/', 'file://' + runtimeDir + '/'];
  const isFrame = (line) => /^\s+at /.test(line);
  const cut = lines.findIndex((line) => isFrame(line) && marks.some((m) => line.includes(m)));
  const kept = cut === -1 ? lines : lines.slice(0, cut);
  return kept.filter((line) => !(isFrame(line) && /\(?node:internal\//.test(line)));
}

/** `errorType` as an HTTP header value: visible ASCII only. */
export function errorTypeHeader(errorType) {
  const v = String(errorType).replace(/[^\x21-\x7e]/g, '_').slice(0, 256);
  return v || 'Unknown';
}
