// Pure CIDR parsing and matching for IPv4 and IPv6 (access lists, intercept destinations).

import net from 'node:net';

export interface Cidr {
  readonly family: 4 | 6;
  /** Network address as a bigint (IPv4 in 32 bits, IPv6 in 128 bits). */
  readonly network: bigint;
  readonly prefix: number;
  readonly text: string;
}

/** Strips the IPv4-mapped IPv6 prefix so "::ffff:10.0.0.1" compares as "10.0.0.1". */
export function normalizeAddress(address: string): string {
  const lower = address.toLowerCase();
  if (lower.startsWith('::ffff:') && net.isIPv4(lower.slice(7))) return lower.slice(7);
  return address;
}

export function addressToBigInt(address: string): { family: 4 | 6; value: bigint } | undefined {
  const a = normalizeAddress(address);
  if (net.isIPv4(a)) {
    const parts = a.split('.').map(Number);
    return { family: 4, value: parts.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n) };
  }
  if (!net.isIPv6(a)) return undefined;
  let text = a;
  // An embedded dotted quad ("::1.2.3.4") becomes two hex groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const v4 = addressToBigInt(dotted[1] as string)!.value;
    text = text.slice(0, -(dotted[1] as string).length) + `${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return { family: 6, value: groups.reduce((acc, g) => (acc << 16n) | BigInt(Number.parseInt(g || '0', 16)), 0n) };
}

/** Parses "10.0.0.0/8" or "2001:db8::/32"; a bare address is a host prefix. Returns an error string on failure. */
export function parseCidr(text: string): Cidr | string {
  const [addr, len, extra] = text.split('/');
  if (extra !== undefined || !addr) return `"${text}" is not a CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/32)`;
  const parsed = addressToBigInt(addr);
  if (!parsed) return `"${addr}" is not an IPv4 or IPv6 address`;
  const bits = parsed.family === 4 ? 32 : 128;
  const prefix = len === undefined ? bits : Number(len);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits || (len !== undefined && !/^\d+$/.test(len))) {
    return `prefix length "${len}" in "${text}" must be a whole number from 0 to ${bits}`;
  }
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((parsed.value & hostMask) !== 0n) {
    const network = parsed.value & ~hostMask;
    return `"${text}" has host bits set; did you mean ${formatAddress(parsed.family, network)}/${prefix}?`;
  }
  return { family: parsed.family, network: parsed.value, prefix, text };
}

export function formatAddress(family: 4 | 6, value: bigint): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((value >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 prescribes.
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

export function cidrContains(cidr: Cidr, address: string): boolean {
  const parsed = addressToBigInt(address);
  if (!parsed || parsed.family !== cidr.family) return false;
  const bits = cidr.family === 4 ? 32 : 128;
  return parsed.value >> BigInt(bits - cidr.prefix) === cidr.network >> BigInt(bits - cidr.prefix);
}
