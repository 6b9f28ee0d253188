// Where a worker's log lines go: the agent's log socket (one connection per worker) or, without one, the
// process's stdout/stderr. Every line is written with synchronous write(2) calls, so a line is never held in
// memory behind a slow reader and never lost when the thread dies right after logging.

import fs from 'node:fs';
import net from 'node:net';

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the calling thread for `ms` milliseconds (used only while the reader of a full pipe catches up). */
function pause(ms) {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/**
 * A cross-thread mutex over a SharedArrayBuffer of 4 bytes, so that lines written to the shared fds 1 and 2 by
 * several worker threads never interleave, even when one line needs several write(2) calls.
 */
export class LineLock {
  /** @param {SharedArrayBuffer | undefined} buffer shared by every thread of the process (none: no locking) */
  constructor(buffer) {
    this.cell = buffer ? new Int32Array(buffer) : null;
  }

  withLock(fn) {
    const cell = this.cell;
    if (!cell) return fn();
    while (Atomics.compareExchange(cell, 0, 0, 1) !== 0) Atomics.wait(cell, 0, 1, 50);
    try {
      return fn();
    } finally {
      Atomics.store(cell, 0, 0);
      Atomics.notify(cell, 0, 1);
    }
  }
}

/**
 * Writes all of `buf` to `fd`. A non-blocking fd (libuv makes pipes and sockets non-blocking) answers EAGAIN
 * when full: wait a millisecond and retry, so memory stays bounded and nothing is dropped.
 */
export function writeFully(fd, buf) {
  let offset = 0;
  while (offset < buf.length) {
    try {
      offset += fs.writeSync(fd, buf, offset, buf.length - offset);
    } catch (err) {
      if (err && err.code === 'EAGAIN') {
        pause(1);
        continue;
      }
      throw err;
    }
  }
}

/** A destination for complete log lines. */
export class LogSink {
  /**
   * @param {object} options
   * @param {LineLock} options.lock serialises writes to the shared fds 1 and 2
   * @param {number | null} [options.socketFd] fd of this worker's log socket connection, if any
   * @param {(message: string) => void} [options.onSocketLost] told once when the socket stops taking lines
   */
  constructor({ lock, socketFd = null, onSocketLost = () => {} }) {
    this.lock = lock;
    this.socketFd = socketFd;
    this.onSocketLost = onSocketLost;
  }

  /** Writes one line (the newline is added here). `stream` is 1 or 2 when there is no socket. */
  writeLine(line, stream = 1) {
    const buf = Buffer.from(line + '\n', 'utf8');
    if (this.socketFd !== null) {
      try {
        writeFully(this.socketFd, buf);
        return;
      } catch (err) {
        // The agent closed its end (EPIPE) or the fd went bad: keep logging, on stdout/stderr from now on.
        const fd = this.socketFd;
        this.socketFd = null;
        this.onSocketLost(`log socket (fd ${fd}) failed: ${err && err.message}; logging to stdout`);
      }
    }
    this.writeStd(buf, stream);
  }

  /** Writes bytes to fd 1 or 2 under the cross-thread lock; an fd that is gone drops the line. */
  writeStd(buf, stream) {
    try {
      this.lock.withLock(() => writeFully(stream === 2 ? 2 : 1, buf));
    } catch {
      // Nobody reads our output any more (EPIPE): an invoke must not fail because of a log line.
    }
  }
}

// Sockets stay referenced here for the life of the thread: their fds are written directly.
const heldSockets = [];

/**
 * Connects to the agent's log socket (a Unix stream socket) and returns the connection's fd, or null with a
 * reason when it cannot (unset path, absent socket, refused). Reading is stopped at once: the agent never sends
 * anything, and a read that saw EOF or an error would let Node close the fd while we still write to its number.
 *
 * @param {string | undefined} path `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`
 * @param {number} [timeoutMs]
 * @returns {Promise<{fd: number | null, reason?: string}>}
 */
export function connectLogSocket(path, timeoutMs = 5000) {
  if (!path) return Promise.resolve({ fd: null, reason: 'no log socket configured' });
  return new Promise((resolve) => {
    let settled = false;
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    const socket = net.createConnection({ path });
    const timer = setTimeout(() => {
      socket.destroy();
      finish({ fd: null, reason: `connecting to ${path} timed out after ${timeoutMs} ms` });
    }, timeoutMs);
    socket.on('error', (err) => finish({ fd: null, reason: `cannot connect to ${path}: ${err.message}` }));
    socket.once('connect', () => {
      socket.pause();
      const handle = socket._handle;
      if (handle && typeof handle.readStop === 'function') handle.readStop();
      socket.unref();
      const fd = handle && typeof handle.fd === 'number' && handle.fd >= 0 ? handle.fd : null;
      if (fd === null) {
        socket.destroy();
        finish({ fd: null, reason: `the connection to ${path} exposes no file descriptor` });
        return;
      }
      heldSockets.push(socket);
      finish({ fd });
    });
  });
}
