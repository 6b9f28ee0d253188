// Response streaming, as Lambda's Node.js runtime offers it: `awslambda.streamifyResponse(handler)` marks a
// handler `(event, responseStream, context)` whose answer goes to the Runtime API as it is written
// (`Lambda-Runtime-Function-Response-Mode: streaming`, chunked), and `awslambda.HttpResponseStream.from(stream,
// metadata)` starts such an answer with the HTTP metadata prelude (status, headers, cookies) that function URLs
// read. An error after the first byte travels in the trailers (Lambda-Runtime-Function-Error-Type/-Body).

import { Writable } from 'node:stream';

/** Marks a handler made by streamifyResponse. */
export const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');

/** The content type of an answer that starts with the HTTP metadata prelude. */
export const HTTP_INTEGRATION_CONTENT_TYPE = 'application/vnd.awslambda.http-integration-response';

/** What separates the metadata prelude from the body: eight NUL bytes. */
const PRELUDE_DELIMITER = Buffer.alloc(8);

const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

/** `awslambda.streamifyResponse`: the handler, marked to be run with a response stream. */
export function streamifyResponse(handler, options) {
  if (typeof handler !== 'function') throw new TypeError('streamifyResponse takes the handler function');
  const streaming = (event, responseStream, context) => handler(event, responseStream, context);
  streaming[STREAMING] = true;
  streaming.options = options;
  return streaming;
}

export class HttpResponseStream {
  /** Starts `stream`'s answer with the metadata prelude (`{statusCode, headers, cookies}` as JSON, 8 NULs). */
  static from(stream, metadata) {
    stream.setContentType(HTTP_INTEGRATION_CONTENT_TYPE);
    stream.write(Buffer.from(JSON.stringify(metadata ?? {}), 'utf8'));
    stream.write(PRELUDE_DELIMITER);
    return stream;
  }
}

/** Installs `globalThis.awslambda` (before the handler's module is loaded: it calls it at load time). */
export function installGlobal() {
  globalThis.awslambda = { streamifyResponse, HttpResponseStream };
}

/**
 * The response stream of one invoke: a Writable whose bytes go to `open(contentType)`'s request, opened at
 * the first write (or at the end) so that `setContentType` can come first. The request's write callbacks pace
 * the handler: a caller that reads slowly makes `write()` return false.
 */
export class ResponseStream extends Writable {
  /** @param {(contentType: string) => import('node:http').ClientRequest} open */
  constructor(open) {
    super({ highWaterMark: 64 * 1024 });
    this.open = open;
    this.contentType = DEFAULT_CONTENT_TYPE;
    this.request = null;
    this.bytes = 0;
  }

  setContentType(contentType) {
    if (this.request) throw new Error('setContentType after the first write');
    this.contentType = String(contentType);
  }

  get started() {
    return this.request !== null;
  }

  ensureOpen() {
    if (!this.request) this.request = this.open(this.contentType);
    return this.request;
  }

  _write(chunk, encoding, callback) {
    this.bytes += chunk.length;
    this.ensureOpen().write(chunk, callback);
  }

  _final(callback) {
    this.ensureOpen().end(callback);
  }

  /** Ends the answer with an error in the trailers (the bytes already written stay the caller's). */
  failWith(error) {
    const request = this.ensureOpen();
    if (request.writableEnded) return; // the handler ended the answer before it failed: nothing to add
    request.addTrailers({
      'Lambda-Runtime-Function-Error-Type': String(error.errorType || 'Function.Unknown'),
      'Lambda-Runtime-Function-Error-Body': Buffer.from(JSON.stringify(error), 'utf8').toString('base64'),
    });
    request.end();
  }
}
