// One SMTP health probe of one backend: connect, expect 220, HELO/EHLO, expect 250, QUIT — and the pure reply reader it uses.

import net from 'node:net';
import { connectFailure } from '../util/errno.js';
import { escapeBytes } from '../util/escapeBytes.js';

export interface CheckTarget {
  readonly address: string;
  readonly port: number;
}

export interface CheckOptions {
  /** One deadline for the whole check: connect, banner, HELO/EHLO reply. */
  readonly timeoutMs: number;
  readonly helo: string;
  readonly command: 'HELO' | 'EHLO';
  /** Cancels the check (etd stops, the server was removed): resolves with reason `aborted`. */
  readonly signal?: AbortSignal;
}

/**
 * Why a check failed, in the words logs and the API use:
 * refused / unreachable / reset / timeout — the transport failed (timeout: at any step);
 * closed — the server closed the connection before the check was done;
 * bad_banner — a well-formed greeting that is not 220 (e.g. `421 Try again later`);
 * garbage — bytes that are not an SMTP reply (another protocol, a malformed line);
 * no_250 — a well-formed reply to HELO/EHLO that is not 250;
 * aborted — cancelled by etd; error — any other socket error (detail has its code).
 */
export type CheckFailure =
  | 'refused'
  | 'unreachable'
  | 'reset'
  | 'timeout'
  | 'closed'
  | 'bad_banner'
  | 'garbage'
  | 'no_250'
  | 'aborted'
  | 'error';

export type CheckResult =
  | { readonly ok: true; readonly ms: number }
  | { readonly ok: false; readonly reason: CheckFailure; readonly detail: string; readonly ms: number };

/** The health probe interface: smtpCheck is the implementation; tests may wrap it. */
export type Probe = (target: CheckTarget, opts: CheckOptions) => Promise<CheckResult>;

/** Longest reply line accepted. RFC 5321 §4.5.3.1.5 says 512 octets; real servers exceed it a little. */
const MAX_LINE = 4096;
const MAX_DETAIL = 100;

export type ReplyOutcome =
  | { readonly kind: 'more' }
  /** A complete reply; `rest` holds bytes that came after its final line. */
  | { readonly kind: 'reply'; readonly code: number; readonly lines: readonly string[]; readonly rest: Buffer }
  /** Not an SMTP reply: `line` is the offending (possibly partial) line. */
  | { readonly kind: 'garbage'; readonly line: string };

/**
 * Reads one SMTP reply (RFC 5321 §4.2) from chunks cut anywhere: lines "250-…" continue,
 * "250 …" or a bare "250" ends it; every line carries the same code. A line is judged as soon as
 * its first four bytes are in, so another protocol (SSH, TLS, HTTP) is recognised without waiting
 * for a newline or the timeout.
 */
export class ReplyReader {
  private carry = '';
  private readonly lines: string[] = [];
  private code: string | undefined;
  private finished = false;

  feed(chunk: Buffer): ReplyOutcome {
    if (this.finished) throw new Error('ReplyReader: reply already complete');
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] !== 0x0a) continue;
      let line = this.carry + chunk.toString('latin1', start, i);
      this.carry = '';
      start = i + 1;
      if (line.endsWith('\r')) line = line.slice(0, -1);
      const verdict = this.takeLine(line);
      if (verdict === 'garbage') return this.garbage(line);
      if (verdict === 'final') {
        this.finished = true;
        return { kind: 'reply', code: Number(this.code), lines: this.lines, rest: chunk.subarray(start) };
      }
    }
    this.carry += chunk.toString('latin1', start);
    if (this.carry.length > MAX_LINE || !plausiblePrefix(this.carry, this.code)) return this.garbage(this.carry);
    return { kind: 'more' };
  }

  private takeLine(line: string): 'more' | 'final' | 'garbage' {
    const m = /^(\d{3})(?:([ -]).*)?$/s.exec(line);
    if (!m) return 'garbage';
    if (this.code !== undefined && m[1] !== this.code) return 'garbage';
    this.code = m[1];
    this.lines.push(line);
    return m[2] === '-' ? 'more' : 'final';
  }

  private garbage(line: string): ReplyOutcome {
    this.finished = true;
    return { kind: 'garbage', line };
  }
}

/** Whether an unterminated line can still become a reply line (of `code`, once one is known). */
function plausiblePrefix(s: string, code: string | undefined): boolean {
  const n = Math.min(s.length, 4);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (i < 3) {
      if (c < 0x30 || c > 0x39) return false;
      if (code !== undefined && c !== code.charCodeAt(i)) return false;
    } else if (c !== 0x20 && c !== 0x2d && c !== 0x0d) return false;
  }
  return true;
}

/** A line for a log or the API: escaped (\r, \xHH), at most 100 characters. */
export function detailOf(line: string): string {
  const out = escapeBytes(Buffer.from(line, 'latin1'), MAX_DETAIL);
  return out.length <= MAX_DETAIL ? out : `${out.slice(0, MAX_DETAIL - 3)}...`;
}

function transportFailure(err: NodeJS.ErrnoException): CheckFailure {
  const c = connectFailure(err);
  return c === 'no_privilege' ? 'error' : c;
}

type Phase = 'connect' | 'banner' | 'helo' | 'quit';

/**
 * Runs one check from etd's own address (a plain connect: the check is about the server, not
 * about the transparent path). Never rejects. Resolves as soon as the verdict is known; after a
 * 250 the QUIT is sent and the socket lingers until the server closes it, at the latest until the
 * check's deadline — so no socket or timer outlives `timeoutMs` (or the abort signal).
 */
export function smtpCheck(target: CheckTarget, opts: CheckOptions): Promise<CheckResult> {
  const started = performance.now();
  const elapsed = () => Math.round((performance.now() - started) * 100) / 100;
  if (opts.signal?.aborted) return Promise.resolve({ ok: false, reason: 'aborted', detail: 'check cancelled', ms: 0 });

  return new Promise((resolve) => {
    let phase: Phase = 'connect';
    let settled = false;
    let reader = new ReplyReader();
    let bytes = 0;
    const socket = net.connect({ host: target.address, port: target.port, noDelay: true });

    const cleanup = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
    };
    const fail = (reason: CheckFailure, detail: string) => {
      if (!settled) {
        settled = true;
        resolve({ ok: false, reason, detail, ms: elapsed() });
      }
      cleanup();
    };
    const waitingFor = () =>
      phase === 'connect' ? 'the connection' : phase === 'banner' ? 'the 220 banner' : `the reply to ${opts.command}`;

    const onTimeout = () => {
      if (settled)
        cleanup(); // lingering after QUIT: the deadline ends it
      else
        fail(
          'timeout',
          `no ${waitingFor().replace(/^the /, '')} within ${opts.timeoutMs}ms${bytes ? ` (${bytes} bytes of a partial reply)` : ''}`,
        );
    };
    const timer = setTimeout(onTimeout, opts.timeoutMs);
    const onAbort = () => fail('aborted', 'check cancelled');
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    socket.on('connect', () => {
      phase = 'banner';
    });
    socket.on('data', (chunk: Buffer) => {
      if (settled) return; // the 221 to our QUIT, or anything else: not part of the verdict
      bytes += chunk.length;
      const out = reader.feed(chunk);
      if (out.kind === 'more') return;
      if (out.kind === 'garbage') {
        fail('garbage', detailOf(out.line));
        return;
      }
      const first = out.lines[0] ?? '';
      if (phase === 'banner') {
        if (out.code !== 220) return fail('bad_banner', detailOf(first));
        // The server spoke again before our HELO: it does not speak SMTP as it should.
        if (out.rest.length > 0) return fail('garbage', detailOf(out.rest.toString('latin1')));
        phase = 'helo';
        reader = new ReplyReader();
        bytes = 0;
        socket.write(`${opts.command} ${opts.helo}\r\n`);
        return;
      }
      if (out.code !== 250) return fail('no_250', detailOf(first));
      settled = true;
      phase = 'quit';
      resolve({ ok: true, ms: elapsed() });
      socket.end('QUIT\r\n');
    });
    socket.on('end', () => {
      if (settled) cleanup();
      else
        fail(
          'closed',
          `the server closed the connection while etd waited for ${waitingFor()}${bytes ? ` (${bytes} bytes of a partial reply)` : ''}`,
        );
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (settled) cleanup();
      else fail(transportFailure(err), detailOf(`${err.code ?? 'error'}: ${err.message}`));
    });
    socket.on('close', () => {
      // Whatever ended the socket, nothing of this check stays behind.
      if (!settled) fail('closed', `the connection closed while etd waited for ${waitingFor()}`);
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    });
  });
}
