// PIPECONNECT guard: strips PIPECONNECT / X_PIPE_CONNECT from the backend's EHLO reply until the
// client's first DATA, BDAT or STARTTLS, so clients never learn to talk before the greeting.
//
// Why: an Exim client that once saw PIPECONNECT advertised sends EHLO before the banner on its
// next visit (its "pipelined connect"), which etd would rightly take for early talk. If clients
// never see the keyword through etd, they never pipeline the connect.
//
// The filter works on lines, however the reply is split into TCP segments. When the stripped
// keyword was the last line of a multi-line 250 reply, the line before it becomes the last
// one ("250-SIZE" → "250 SIZE"), so the reply stays well-formed. It stops at the first DATA,
// BDAT or STARTTLS command from the client: after that the bytes are message data or TLS and
// are never touched.

import { Transform, type TransformCallback } from 'node:stream';

const KEYWORD = /^250[- ](?:PIPECONNECT|X_PIPE_CONNECT)(?:[ \t\r\n]|$)/i;
const STOP_COMMAND = /^(?:DATA|BDAT|STARTTLS)[ \t\r\n]/i;
/** A line longer than this is not SMTP reply text: give up on it rather than buffer without bound. */
const MAX_LINE = 4096;

/** Server → client: drops the keyword lines while active. */
export class PipeconnectStripper extends Transform {
  private active = true;
  private carry: Buffer | undefined;
  /** The previous "250-" line, held until we know whether the next line ends the reply. */
  private held: Buffer | undefined;
  /** How many keyword lines were removed (for the session summary). */
  stripped = 0;
  /** Output of the chunk being transformed, pushed as one buffer: one socket write per chunk, not per reply line. */
  private out: Buffer[] | undefined;

  /** Stops filtering: what is held goes out as it is and the rest passes through untouched. */
  stop(): void {
    if (!this.active) return;
    this.active = false;
    if (this.held) this.push(this.held);
    if (this.carry) this.push(this.carry);
    this.held = undefined;
    this.carry = undefined;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (!this.active) {
      done(null, chunk);
      return;
    }
    let data = this.carry ? Buffer.concat([this.carry, chunk]) : chunk;
    this.carry = undefined;
    this.out = [];
    let start = 0;
    for (let nl = data.indexOf(0x0a, start); nl >= 0; nl = data.indexOf(0x0a, start)) {
      this.line(data.subarray(start, nl + 1));
      start = nl + 1;
    }
    if (start < data.length) {
      data = data.subarray(start);
      if (data.length > MAX_LINE) {
        this.flushHeld();
        this.send(data);
      } else this.carry = Buffer.from(data);
    }
    const out = this.out;
    this.out = undefined;
    if (out.length === 1) this.push(out[0]);
    else if (out.length > 1) this.push(Buffer.concat(out));
    done();
  }

  /** Emits `b`: collected while a chunk is transformed, pushed at once otherwise. */
  private send(b: Buffer): void {
    if (this.out) this.out.push(b);
    else this.push(b);
  }

  override _flush(done: TransformCallback): void {
    this.flushHeld();
    if (this.carry) this.push(this.carry);
    this.carry = undefined;
    done();
  }

  private flushHeld(): void {
    if (this.held) this.send(this.held);
    this.held = undefined;
  }

  private line(line: Buffer): void {
    const head = line.toString('latin1', 0, Math.min(line.length, 24));
    if (KEYWORD.test(head)) {
      this.stripped++;
      if (head[3] === ' ' && this.held) {
        // The keyword ended the reply: the held line becomes the last line.
        const last = Buffer.from(this.held);
        last[3] = 0x20;
        this.held = undefined;
        this.send(last);
      } else if (head[3] === ' ') {
        // A one-line "250 PIPECONNECT" is no EHLO reply (its first line is the domain): keep it.
        this.stripped--;
        this.send(line);
      }
      return;
    }
    this.flushHeld();
    if (head.startsWith('250-')) this.held = Buffer.from(line);
    else this.send(line);
  }
}

/** Client → server: passes everything through and calls `onStop` at the first DATA, BDAT or STARTTLS. */
export class CommandWatcher extends Transform {
  private watching = true;
  private atLineStart = true;
  private carry = '';

  constructor(private readonly onStop: () => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.watching) this.scan(chunk);
    done(null, chunk);
  }

  private scan(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length && this.watching) {
      const nl = chunk.indexOf(0x0a, i);
      const end = nl < 0 ? chunk.length : nl + 1;
      if (this.atLineStart || this.carry) {
        // Only a line's first bytes matter; keep at most a few across segments.
        this.carry = (this.carry + chunk.toString('latin1', i, Math.min(end, i + 16))).slice(0, 16);
        if (STOP_COMMAND.test(this.carry)) {
          this.watching = false;
          this.onStop();
          return;
        }
        if (nl >= 0 || this.carry.length >= 16) {
          this.carry = '';
        }
      }
      this.atLineStart = nl >= 0;
      i = end;
    }
  }
}
