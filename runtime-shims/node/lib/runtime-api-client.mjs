// The Lambda Runtime API (2018-06-01) from the runtime's side: node:http over keep-alive connections. The
// long-polling `/next` holds one connection while responses of earlier invokes go out on others.

import http from 'node:http';

import { errorTypeHeader } from './errors.mjs';

const PREFIX = '/2018-06-01';
const ERROR_CONTENT_TYPE = 'application/vnd.aws.lambda.error+json';
const MAX_ERROR_BODY = 1024 * 1024;
const ATTEMPTS = 4;
const RETRIABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED']);

/** The Runtime API could not be reached (after retries) or answered in a way the runtime cannot go on from. */
export class RuntimeApiError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RuntimeApiError';
  }
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Parses `host:port` of AWS_LAMBDA_RUNTIME_API (`[v6]:port` too). */
export function parseAddress(address) {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address || '');
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new RuntimeApiError(`AWS_LAMBDA_RUNTIME_API is not host:port: ${JSON.stringify(address)}`);
  }
  return { host: m[1] ?? m[2], port };
}

/** An error body, cut down to the 1 MiB the Runtime API accepts. */
export function errorBody(error) {
  let body = Buffer.from(JSON.stringify(error), 'utf8');
  if (body.length > MAX_ERROR_BODY) {
    const short = { ...error, errorMessage: String(error.errorMessage).slice(0, 65536), stackTrace: [] };
    body = Buffer.from(JSON.stringify(short), 'utf8');
  }
  return body;
}

export class RuntimeApiClient {
  /** @param {string} address AWS_LAMBDA_RUNTIME_API */
  constructor(address) {
    const { host, port } = parseAddress(address);
    this.host = host;
    this.port = port;
    this.agent = new http.Agent({ keepAlive: true });
  }

  /** One request; connection failures are retried with back-off, HTTP answers are returned as they are. */
  async request(method, path, body, headers = {}) {
    let last;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (attempt > 0) await delay(50 * 2 ** attempt);
      try {
        return await this.once(method, path, body, headers);
      } catch (err) {
        last = err;
        if (!RETRIABLE.has(err.code) && !/socket hang up/.test(err.message)) break;
      }
    }
    throw new RuntimeApiError(`${method} ${path} failed: ${last && last.message}`);
  }

  once(method, path, body, headers) {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: this.host,
          port: this.port,
          method,
          path: PREFIX + path,
          agent: this.agent,
          headers: body ? { ...headers, 'Content-Length': body.length } : headers,
        },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  /** `GET /runtime/invocation/next`: waits for the next invoke. */
  next() {
    return this.request('GET', '/runtime/invocation/next');
  }

  /** `POST /runtime/invocation/{id}/response`; returns the status. */
  async postResponse(requestId, body, contentType = 'application/json') {
    const path = `/runtime/invocation/${encodeURIComponent(requestId)}/response`;
    return (await this.request('POST', path, body, { 'Content-Type': contentType })).status;
  }

  /**
   * `POST /runtime/invocation/{id}/response` streamed (chunked, `Lambda-Runtime-Function-Response-Mode:
   * streaming`, errors in the trailers): the request to write the answer to, and a promise of the status
   * (rejected when the connection breaks). Not retried: a half-written answer cannot be sent again.
   */
  openStreamingResponse(requestId, contentType) {
    let request;
    const status = new Promise((resolve, reject) => {
      request = http.request(
        {
          host: this.host,
          port: this.port,
          method: 'POST',
          path: `${PREFIX}/runtime/invocation/${encodeURIComponent(requestId)}/response`,
          agent: this.agent,
          headers: {
            'Content-Type': contentType,
            'Lambda-Runtime-Function-Response-Mode': 'streaming',
            'Transfer-Encoding': 'chunked',
            Trailer: 'Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body',
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
          res.on('error', reject);
        },
      );
      request.on('error', reject);
    });
    return { request, status };
  }

  /** `POST /runtime/invocation/{id}/error`; returns the status. */
  async postError(requestId, error) {
    return this.postErrorTo(`/runtime/invocation/${encodeURIComponent(requestId)}/error`, error);
  }

  /** `POST /runtime/init/error`; returns the status (403 when another worker reported first). */
  async postInitError(error) {
    return this.postErrorTo('/runtime/init/error', error);
  }

  async postErrorTo(path, error) {
    const headers = {
      'Content-Type': ERROR_CONTENT_TYPE,
      'Lambda-Runtime-Function-Error-Type': errorTypeHeader(error.errorType),
    };
    return (await this.request('POST', path, errorBody(error), headers)).status;
  }
}
