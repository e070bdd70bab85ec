// The one address and CIDR parser (IPv4, IPv6) at every border — config, API, Redis, CLI — and CIDR matching.
//
// Why not ipaddr.js (2.5.0): it accepts forms no operator means and no socket reports —
// "0x7f.0.0.1", "010.0.0.1" (octal), "1.2.3" (= 1.2.0.3) — and reads "::1.2.3.4" as
// ::ffff:1.2.3.4; it also keeps zone IDs. Node's own validator (net.isIPv4/isIPv6, the
// rules its sockets use: strict dotted quad, no leading zeros) is the syntax gate here; zone
// IDs, which it lets through ("::%a"), are refused explicitly, and the text is length-bounded.
// Only text that passed the gate is converted, so the conversion cannot meet a NaN; and the
// exported parsers never throw on any string (test/unit/cidr.test.ts fuzzes them).

import net from 'node:net';

export interface Cidr {
  readonly family: 4 | 6;
  /** Network address as a bigint (IPv4 in 32 bits, IPv6 in 128 bits). */
  readonly network: bigint;
  readonly prefix: number;
  readonly text: string;
}

/** An address parsed once (e.g. per connection) and matched many times. */
export interface Address {
  readonly family: 4 | 6;
  readonly value: bigint;
}

/** The longest address text accepted (a full IPv6 with an embedded dotted quad is 45 characters). */
const MAX_ADDRESS = 45;

/** Strips the IPv4-mapped IPv6 prefix so "::ffff:10.0.0.1" compares as "10.0.0.1". */
export function normalizeAddress(address: string): string {
  const lower = address.toLowerCase();
  if (lower.startsWith('::ffff:') && net.isIPv4(lower.slice(7))) return lower.slice(7);
  return address;
}

function show(text: string): string {
  return JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}…` : text);
}

function v4Value(text: string): bigint {
  let v = 0;
  for (const p of text.split('.')) v = v * 256 + Number(p);
  return BigInt(v);
}

/** Precondition: net.isIPv6(text) and no zone. */
function v6Value(text: string): bigint {
  let t = text;
  // An embedded dotted quad ("::1.2.3.4") becomes two hex groups.
  const dot = t.lastIndexOf(':');
  const tail = t.slice(dot + 1);
  if (tail.includes('.')) {
    const v4 = v4Value(tail);
    t = `${t.slice(0, dot + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const i = t.indexOf('::');
  const head = i < 0 ? t : t.slice(0, i);
  const rest = i < 0 ? '' : t.slice(i + 2);
  const h = head ? head.split(':') : [];
  const r = rest ? rest.split(':') : [];
  const groups = i < 0 ? h : [...h, ...Array<string>(8 - h.length - r.length).fill('0'), ...r];
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(Number.parseInt(g, 16));
  return v;
}

/** The address without IPv4-mapping applied; an error string naming the problem and the fix. */
function parseRaw(text: unknown): Address | string {
  if (typeof text !== 'string') return 'an address must be text';
  if (text.length === 0) return 'the address is empty';
  if (text.length > MAX_ADDRESS) return `${show(text)} is too long for an IPv4 or IPv6 address`;
  const zone = text.indexOf('%');
  if (zone >= 0) {
    const bare = text.slice(0, zone);
    if (net.isIPv6(bare))
      return `${show(text)} has a zone ID (${show(text.slice(zone))}); etd matches addresses without one: write ${bare}`;
    return `${show(text)} is not an IPv4 or IPv6 address`;
  }
  if (net.isIPv4(text)) return { family: 4, value: v4Value(text) };
  if (net.isIPv6(text)) return { family: 6, value: v6Value(text) };
  return `${show(text)} is not an IPv4 or IPv6 address (expected e.g. 192.0.2.1 or 2001:db8::1)`;
}

const MAPPED = 0xffffn;

/**
 * Parses one address; an IPv4-mapped IPv6 address ("::ffff:10.0.0.1", as dual-stack sockets
 * report IPv4 clients) is the IPv4 address. Returns an error string (never throws).
 */
export function parseAddress(text: string): Address | string {
  const a = parseRaw(text);
  if (typeof a === 'string') return a;
  if (a.family === 6 && a.value >> 32n === MAPPED) return { family: 4, value: a.value & 0xffffffffn };
  return a;
}

/** parseAddress without the reason: undefined for anything that is not an address. */
export function addressToBigInt(address: string): { family: 4 | 6; value: bigint } | undefined {
  const a = parseAddress(address);
  return typeof a === 'string' ? undefined : a;
}

/** Parses "10.0.0.0/8" or "2001:db8::/32"; a bare address is a host prefix. Returns an error string on failure (never throws). */
export function parseCidr(text: string): Cidr | string {
  if (typeof text !== 'string') return 'a CIDR must be text';
  if (text.length > MAX_ADDRESS + 4) return `${show(text)} is too long for a CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/32)`;
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const len = slash < 0 ? undefined : text.slice(slash + 1);
  if (!addr || len?.includes('/')) return `${show(text)} is not a CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/32)`;
  const raw = parseRaw(addr);
  if (typeof raw === 'string') return raw;
  let family = raw.family;
  let value = raw.value;
  let bits = family === 4 ? 32 : 128;
  if (len !== undefined && !/^\d{1,3}$/.test(len))
    return `prefix length ${show(len)} in ${show(text)} must be a whole number from 0 to ${bits}`;
  let prefix = len === undefined ? bits : Number(len);
  if (prefix > bits) return `prefix length "${len}" in ${show(text)} must be a whole number from 0 to ${bits}`;
  // IPv4-mapped: the IPv4 prefix it stands for (clients are matched as IPv4, see parseAddress).
  if (family === 6 && value >> 32n === MAPPED) {
    if (prefix < 96)
      return `${show(text)} is an IPv4-mapped address with a prefix shorter than /96; write the IPv4 prefix (e.g. 192.0.2.0/24) or an IPv6 one`;
    family = 4;
    value &= 0xffffffffn;
    prefix -= 96;
    bits = 32;
  }
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((value & hostMask) !== 0n) {
    const network = value & ~hostMask;
    return `${show(text)} has host bits set; did you mean ${formatAddress(family, network)}/${prefix}?`;
  }
  return { family, network: value, prefix, text };
}

export function formatAddress(family: 4 | 6, value: bigint): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((value >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 prescribes.
  let best = -1,
    bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** The canonical spelling of a prefix ("192.0.2.0/24", "2001:db8::/32"): what the API, the store and Redis use. */
export function canonicalCidr(c: Cidr): string {
  return `${formatAddress(c.family, c.network)}/${c.prefix}`;
}

export function cidrContains(cidr: Cidr, address: string | Address): boolean {
  const parsed = typeof address === 'string' ? addressToBigInt(address) : address;
  if (!parsed || parsed.family !== cidr.family) return false;
  const bits = cidr.family === 4 ? 32 : 128;
  return parsed.value >> BigInt(bits - cidr.prefix) === cidr.network >> BigInt(bits - cidr.prefix);
}
