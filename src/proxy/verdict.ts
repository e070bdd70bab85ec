// Pure decisions about a connection: what to do with an early talker, and how the session is summarised.

import type { Action } from '../config/schema.js';

/** Every verdict word, for counters and metrics that need the list at run time. */
export const VERDICTS = ['passed', 'early_talker', 'no_server', 'limit', 'denied', 'client_gone', 'shutdown'] as const;

/** The verdict words of the session summary line (the operator's tcplog). */
export type Verdict =
  | 'passed' // waited for the greeting and was relayed
  | 'early_talker' // spoke before the complete greeting
  | 'no_server' // no backend could be reached: 421 sent
  | 'limit' // a connection limit was hit: 421 sent
  | 'denied' // access list deny or deny cache: 554 5.7.1 sent, or dropped
  | 'client_gone' // hung up during the window, before any verdict
  | 'shutdown'; // etd stopped while the connection was held

/** What happens to a client that talked early. */
export type EarlyAction = 'drop' | 'reject' | 'pass';

export function earlyTalkAction(action: Action): EarlyAction {
  switch (action) {
    case 'drop':
      return 'drop';
    case 'reject':
      return 'reject';
    case 'log':
      return 'pass';
  }
}

/**
 * Escapes bytes for a log line the way postscreen does (`EHLO x\r\n`): printable ASCII as is,
 * CR/LF/TAB as \r \n \t, backslash doubled, anything else as \xHH. At most `max` input bytes.
 */
export function escapeBytes(buf: Uint8Array, max = 100): string {
  let out = '';
  const n = Math.min(buf.length, max);
  for (let i = 0; i < n; i++) {
    const b = buf[i] as number;
    if (b === 0x0d) out += '\\r';
    else if (b === 0x0a) out += '\\n';
    else if (b === 0x09) out += '\\t';
    else if (b === 0x5c) out += '\\\\';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/**
 * Scans a server's greeting for its end. An SMTP reply is complete at the first line whose
 * fourth character is a space (or that is just a code), terminated by LF (RFC 5321 §4.2).
 * `carry` is the unterminated tail of the previous chunk. Returns the offset just past the
 * final line in `chunk`, or -1 with the new carry.
 */
export function findGreetingEnd(carry: string, chunk: Buffer): { end: number; carry: string } {
  let lineStart = 0;
  let prefix = carry;
  for (let i = 0; i < chunk.length; i++) {
    if (chunk[i] !== 0x0a) continue;
    const line = prefix + chunk.toString('latin1', lineStart, i);
    prefix = '';
    lineStart = i + 1;
    const c = line.charCodeAt(3);
    // "220-..." continues; "220 ...", "220\r" or a non-conforming line ends the greeting.
    if (line.length < 4 || c !== 0x2d /* - */) return { end: i + 1, carry: '' };
  }
  const tail = prefix + chunk.toString('latin1', lineStart);
  // Bound the carry: a greeting line longer than 4 KiB is garbage; treat it as the end.
  if (tail.length > 4096) return { end: chunk.length, carry: '' };
  return { end: -1, carry: tail };
}

/** The reply code of a complete greeting ("220"), or undefined when it does not start with 3 digits. */
export function replyCode(greeting: string): string | undefined {
  const m = /^(\d{3})/.exec(greeting);
  return m ? m[1] : undefined;
}
