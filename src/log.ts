// The pino root logger: JSON lines on stdout through LineWriter (asynchronous, one UTF-8 encode and one write per batch), flushed on exit.

import fs from 'node:fs';
import pino, { type Logger } from 'pino';

export type { Logger };

const EAGAIN_RETRY_MS = 10;
/** How long a line may wait for others to share its write: each fs.write wakes a libuv pool thread (~5 µs of the decision thread). */
const LINGER_MS = 5;
/** flushSync gives up on a destination that stays full this long (the process is exiting). */
const FLUSH_SYNC_GIVE_UP_MS = 2000;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Log lines to a file descriptor, in order, without blocking the thread: the lines logged within
 * LINGER_MS of the first (and those logged while a write is in flight) are joined, encoded to
 * UTF-8 once and written with one fs.write. pino's own SonicBoom destination encoded each line three times
 * in async mode (a byteLength per line, fs.write's copy, a Buffer.from to release what was
 * written): 24 % of the decision thread's profile under the sessions load (docs/performance.md).
 * EAGAIN (a full pipe) is retried; any other error (stdout gone) drops what is queued, never throws.
 */
export class LineWriter {
  private lines: string[] = [];
  private writing = false;
  private scheduled = false;
  private waiting: Array<() => void> = [];

  constructor(private readonly fd: number) {}

  write(line: string): void {
    this.lines.push(line);
    if (this.writing || this.scheduled) return;
    this.scheduled = true;
    setTimeout(this.next, LINGER_MS).unref(); // exiting meanwhile: flushSync writes them
  }

  /** Calls `cb` once everything logged so far is written (or dropped). */
  flush(cb: (err?: Error) => void = () => undefined): void {
    this.waiting.push(() => cb());
    if (!this.writing && !this.scheduled) this.next();
  }

  /** On exit: writes what is queued synchronously (a write already in flight finishes on its own). */
  flushSync(): void {
    if (this.lines.length === 0) return;
    const buf = this.take();
    let off = 0;
    const giveUp = Date.now() + FLUSH_SYNC_GIVE_UP_MS;
    while (off < buf.length) {
      try {
        off += fs.writeSync(this.fd, buf, off, buf.length - off);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN' || Date.now() > giveUp) return;
        sleepSync(EAGAIN_RETRY_MS);
      }
    }
  }

  private take(): Buffer {
    const text = this.lines.length === 1 ? (this.lines[0] as string) : this.lines.join('');
    this.lines = [];
    return Buffer.from(text, 'utf8');
  }

  private readonly next = (): void => {
    this.scheduled = false;
    if (this.writing) return;
    if (this.lines.length === 0) {
      this.settle();
      return;
    }
    this.writing = true;
    this.send(this.take(), 0);
  };

  private send(buf: Buffer, off: number): void {
    fs.write(this.fd, buf, off, buf.length - off, null, (err, n) => {
      if (err) {
        if (err.code === 'EAGAIN') {
          setTimeout(() => this.send(buf, off), EAGAIN_RETRY_MS);
          return;
        }
        this.lines = []; // nowhere to write to: drop, never throw
      } else if (off + n < buf.length) {
        this.send(buf, off + n);
        return;
      }
      this.writing = false;
      this.next();
    });
  }

  private settle(): void {
    const done = this.waiting;
    this.waiting = [];
    for (const cb of done) cb();
  }
}

export function createLogger(level: string, fd = 1): Logger {
  const stream = new LineWriter(fd);
  const log = pino(
    {
      level,
      base: { svc: 'etd' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
  const flush = () => {
    try {
      stream.flushSync();
    } catch {
      /* stdout already gone */
    }
  };
  process.once('exit', flush);
  return log;
}
