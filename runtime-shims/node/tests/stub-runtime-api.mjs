// A stub of the Lambda Runtime API on 127.0.0.1 for the shim's own tests: it hands out queued events to
// `/next` polls (parking polls while the queue is empty) and records what the runtime posts back.

import http from 'node:http';

export class StubRuntimeApi {
  constructor() {
    this.queue = [];
    this.parked = [];
    this.pending = new Map();
    this.initErrors = [];
    this.initErrorWaiters = [];
    this.polls = 0;
    // requestId -> the text of its answer received so far (a streamed answer grows chunk by chunk).
    this.partial = new Map();
    // requestId -> how every answer posted for it is refused: 400/410/413 after its body is read (the agent's
    // way), 'close' (413 and Connection: close at once, the body unread) or 'drop' (closed without an answer).
    this.refuse = new Map();
    this.refused = new Map(); // requestId -> answers refused so far
    this.server = http.createServer((req, res) => this.route(req, res));
  }

  /** Starts listening; resolves to `host:port`. */
  start() {
    return new Promise((resolve) => {
      this.server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${this.server.address().port}`));
    });
  }

  /** Stops: parked polls get 500 (the environment is going away), then the server closes. */
  async stop() {
    for (const res of this.parked.splice(0)) res.writeHead(500).end('{"errorType":"Stopping"}');
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /**
   * Queues an invoke; resolves with what the runtime posted: {kind: 'response'|'error', headers, body}.
   * @param {string} requestId
   * @param {unknown} event JSON-serialisable
   * @param {Record<string, string>} [headers] extra /next headers
   */
  invoke(requestId, event, headers = {}) {
    return this.invokeRaw(requestId, Buffer.from(JSON.stringify(event)), headers);
  }

  /** Like invoke, with the event body as bytes. */
  invokeRaw(requestId, body, headers = {}) {
    return new Promise((resolve) => {
      this.pending.set(requestId, resolve);
      const item = {
        body,
        headers: {
          'Content-Type': 'application/json',
          'Lambda-Runtime-Aws-Request-Id': requestId,
          'Lambda-Runtime-Deadline-Ms': String(Date.now() + 60_000),
          'Lambda-Runtime-Invoked-Function-Arn': 'arn:aws:lambda:us-east-1:000000000000:function:stub',
          ...headers,
        },
      };
      const res = this.parked.shift();
      if (res) this.deliver(res, item);
      else this.queue.push(item);
    });
  }

  /** Resolves with the first init error the runtime posts. */
  nextInitError() {
    if (this.initErrors.length) return Promise.resolve(this.initErrors[0]);
    return new Promise((resolve) => this.initErrorWaiters.push(resolve));
  }

  deliver(res, item) {
    res.writeHead(200, item.headers).end(item.body);
  }

  route(req, res) {
    const answer = /^\/2018-06-01\/runtime\/invocation\/([^/]+)\/(response|error)$/.exec(req.url || '');
    const how = answer && this.refuse.get(decodeURIComponent(answer[1]));
    if (how !== undefined && how !== null) {
      const id = decodeURIComponent(answer[1]);
      this.refused.set(id, (this.refused.get(id) ?? 0) + 1);
      if (how === 'close' || how === 'drop') {
        if (how === 'drop') req.socket.destroy();
        else res.writeHead(413, { Connection: 'close' }).end('{}', () => req.socket.destroy());
        return;
      }
      req.resume();
      req.on('end', () => res.writeHead(how).end('{"errorType":"Refused"}'));
      return;
    }
    const chunks = [];
    const streaming = answer && answer[2] === 'response' ? decodeURIComponent(answer[1]) : null;
    req.on('data', (c) => {
      chunks.push(c);
      if (streaming) this.partial.set(streaming, (this.partial.get(streaming) ?? '') + c.toString('utf8'));
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const url = req.url || '';
      if (req.method === 'GET' && url === '/2018-06-01/runtime/invocation/next') {
        this.polls += 1;
        const item = this.queue.shift();
        if (item) this.deliver(res, item);
        else {
          this.parked.push(res);
          // A poll whose connection is gone is no poller.
          res.on('close', () => {
            const i = this.parked.indexOf(res);
            if (i !== -1) this.parked.splice(i, 1);
          });
        }
        return;
      }
      const m = /^\/2018-06-01\/runtime\/invocation\/([^/]+)\/(response|error)$/.exec(url);
      if (req.method === 'POST' && m) {
        const id = decodeURIComponent(m[1]);
        const resolve = this.pending.get(id);
        if (!resolve) {
          res.writeHead(400).end('{"errorType":"InvalidRequestID"}');
          return;
        }
        this.pending.delete(id);
        res.writeHead(202).end('{"status":"OK"}');
        resolve({ kind: m[2], headers: req.headers, body: body.toString('utf8'), trailers: req.trailers, raw: body });
        return;
      }
      if (req.method === 'POST' && url === '/2018-06-01/runtime/init/error') {
        const first = this.initErrors.length === 0;
        this.initErrors.push({ headers: req.headers, body: body.toString('utf8') });
        res.writeHead(first ? 202 : 403).end();
        if (first) for (const w of this.initErrorWaiters.splice(0)) w(this.initErrors[0]);
        return;
      }
      res.writeHead(404).end();
    });
  }
}
