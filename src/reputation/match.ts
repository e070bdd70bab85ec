// Pure: the answer patterns of a DNSBL/DNSWL entry (`match:`) — parsed once, matched per answer.
//
// Spellings (postscreen's and a CIDR): an address `127.0.0.2`, a range `127.0.0.2-127.0.0.11`,
// per-octet ranges `127.0.[0..255].[2..3]`, a CIDR `127.0.0.0/8`. DNSBL answers are A records,
// so patterns are IPv4 only.

import net from 'node:net';

/** One parsed pattern: an inclusive range of IPv4 addresses, or a range per octet. */
export type AnswerPattern =
  | { readonly kind: 'range'; readonly lo: number; readonly hi: number }
  | { readonly kind: 'octets'; readonly octets: readonly (readonly [number, number])[] };

/**
 * Without `match:` an entry counts any answer in 127.0.0.0/8 except 127.255.255.0/24, which
 * Spamhaus (and others) answer for refused queries (a public resolver, no access).
 */
export const DEFAULT_MATCH = ['127.0.0.0-127.255.254.255'] as const;

/** 127.255.255.0/24: a refused query, never a listing, whatever `match:` says. */
export function isRefusedAnswer(answer: string): boolean {
  return answer.startsWith('127.255.255.');
}

export function ipv4ToInt(address: string): number | undefined {
  if (!net.isIPv4(address)) return undefined;
  return address.split('.').reduce((acc, p) => acc * 256 + Number(p), 0);
}

const OCTET = /^(?:(\d{1,3})|\[(\d{1,3})\.\.(\d{1,3})\])$/;

/** Parses one pattern; a string is the problem and its fix (for the config error). */
export function parsePattern(text: string): AnswerPattern | string {
  const t = text.trim();
  const example = 'e.g. 127.0.0.2, 127.0.0.2-127.0.0.11, 127.0.[0..255].[2..3] or 127.0.0.0/24';
  if (t.includes('/')) {
    const [addr, len, extra] = t.split('/');
    const base = ipv4ToInt(addr ?? '');
    const prefix = Number(len);
    if (extra !== undefined || base === undefined || !/^\d+$/.test(len ?? '') || prefix > 32)
      return `"${text}" is not an IPv4 CIDR (${example})`;
    const size = 2 ** (32 - prefix);
    if (base % size !== 0)
      return `"${text}" has host bits set; write the network address, e.g. ${intToIpv4(base - (base % size))}/${prefix}`;
    return { kind: 'range', lo: base, hi: base + size - 1 };
  }
  if (t.includes('-')) {
    const [a, b, extra] = t.split('-');
    const lo = ipv4ToInt(a ?? '');
    const hi = ipv4ToInt(b ?? '');
    if (extra !== undefined || lo === undefined || hi === undefined) return `"${text}" is not a range of two IPv4 addresses (${example})`;
    if (lo > hi) return `"${text}" runs backwards; write the lower address first (${b}-${a})`;
    return { kind: 'range', lo, hi };
  }
  const parts = t.split(/\.(?![^[]*\])/);
  if (parts.length !== 4) return `"${text}" is not an IPv4 answer pattern (${example})`;
  const octets: Array<[number, number]> = [];
  for (const p of parts) {
    const m = OCTET.exec(p);
    if (!m) return `"${text}": "${p}" is not an octet or an octet range [lo..hi] (${example})`;
    const lo = Number(m[1] ?? m[2]);
    const hi = Number(m[1] ?? m[3]);
    if (lo > 255 || hi > 255) return `"${text}": octets go from 0 to 255`;
    if (lo > hi) return `"${text}": [${lo}..${hi}] runs backwards; write [${hi}..${lo}]`;
    octets.push([lo, hi]);
  }
  if (octets.every(([lo, hi]) => lo === hi)) {
    const v = octets.reduce((acc, [lo]) => acc * 256 + lo, 0);
    return { kind: 'range', lo: v, hi: v };
  }
  return { kind: 'octets', octets };
}

export function intToIpv4(v: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(v / 2 ** s) % 256).join('.');
}

/** Parses a whole `match:` list (already validated by the config loader: errors throw). */
export function compilePatterns(texts: readonly string[]): readonly AnswerPattern[] {
  return texts.map((t) => {
    const p = parsePattern(t);
    if (typeof p === 'string') throw new Error(p);
    return p;
  });
}

/** Whether an answer (an A record) matches one of the patterns. */
export function matchesAny(patterns: readonly AnswerPattern[], answer: string): boolean {
  const v = ipv4ToInt(answer);
  if (v === undefined) return false;
  for (const p of patterns) {
    if (p.kind === 'range') {
      if (v >= p.lo && v <= p.hi) return true;
      continue;
    }
    let ok = true;
    for (let i = 0; i < 4 && ok; i++) {
      const o = Math.floor(v / 2 ** (24 - 8 * i)) % 256;
      const r = p.octets[i]!;
      ok = o >= r[0] && o <= r[1];
    }
    if (ok) return true;
  }
  return false;
}
