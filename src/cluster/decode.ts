// Pure: the one validating decoder of everything read back from Redis (events, access hash fields, cached verdicts, DNSBL answers), and the clamps of a peer's lifetimes to ours.
//
// Whatever shares the Redis (a peer of another version, a stray redis-cli, an attacker with the
// ACL) writes there: every value is bounded in size, parsed here once, and either comes out as a
// well-formed entry or as a reason to skip it. Nothing here throws, whatever the input.

import net from 'node:net';
import { type Cidr, canonicalCidr, parseCidr } from '../config/cidr.js';
import type { ZoneAnswer } from '../reputation/score.js';
import type { AccessEvent, AccessListName, CacheVerdict } from './keys.js';

/** The kinds of peer data counted when skipped (etd_cluster_rejected_total{kind}). */
export const REJECT_KINDS = ['event', 'access', 'cache', 'dnsbl'] as const;
export type RejectKind = (typeof REJECT_KINDS)[number];

/** An event is ~100 bytes; anything far longer is not one of ours. */
export const MAX_EVENT_CHARS = 1024;
/** The longest canonical prefix text is an IPv6 address with /128 (43 characters). */
export const MAX_CIDR_CHARS = 64;
/** A node id is hostname-pid-hex. */
export const MAX_NODE_CHARS = 300;
/** "deny:" and 15 digits. */
export const MAX_VERDICT_CHARS = 32;
/** A DNSBL answer: a few A records and an expiry. */
export const MAX_DNSBL_CHARS = 2048;
export const MAX_DNSBL_ADDRESSES = 16;

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string };

const bad = (reason: string): { ok: false; reason: string } => ({ ok: false, reason });

/** A short, printable sample of a bad value for a warning (never the whole of a huge one). */
export function sample(v: unknown): string {
  const s = typeof v === 'string' ? v : String(v);
  const cut = s.length > 80 ? `${s.slice(0, 80)}…(${s.length} chars)` : s;
  return JSON.stringify(cut);
}

/**
 * A peer's prefix, parsed, when its text is the canonical spelling etd writes (192.0.2.0/24,
 * 2001:db8::/32); undefined for anything else. Every etd writes canonical prefixes (the API
 * formats them), so another spelling — host bits set (10.0.0.1/24), upper case, a bare address,
 * an IPv4-mapped prefix — is not one of ours: refused as malformed, not normalised. (A normalised
 * field would also never go away: deleting the canonical prefix leaves the other spelling in the
 * hash, and the next sync would add it back.)
 */
export function decodePrefix(text: unknown): Cidr | undefined {
  // Only the characters of an address and a length: zone ids (fe80::%x), spaces and the rest are
  // refused before the parser sees them, whatever the parser does with them.
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_CIDR_CHARS || !/^[0-9a-f:./]+$/.test(text)) return undefined;
  try {
    const c = parseCidr(text);
    return typeof c !== 'string' && canonicalCidr(c) === text ? c : undefined;
  } catch {
    return undefined;
  }
}

/** Why a peer's text is not a canonical prefix, for the warning (only for text decodePrefix refused). */
export function prefixProblem(text: unknown): string {
  if (typeof text !== 'string') return 'not text';
  if (text.length > MAX_CIDR_CHARS) return `${text.length} characters, over ${MAX_CIDR_CHARS}`;
  // The parser's reason (it never throws on a string) names a zone ID, host bits, a bad length.
  const c = parseCidr(text);
  return typeof c === 'string' ? c : `not the canonical spelling etd writes (${canonicalCidr(c)})`;
}

/** The text of a peer's prefix when it is canonical (see decodePrefix); undefined otherwise. */
export function canonicalPrefix(text: unknown): string | undefined {
  return decodePrefix(text) === undefined ? undefined : (text as string);
}

/** A message from the events channel. */
export function decodeEventText(text: unknown): Decoded<AccessEvent> {
  if (typeof text !== 'string') return bad('not a string');
  if (text.length > MAX_EVENT_CHARS) return bad(`${text.length} characters, over ${MAX_EVENT_CHARS}`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return bad(`not JSON: ${sample(text)}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad(`not an object: ${sample(text)}`);
  const o = v as Record<string, unknown>;
  if (o.kind !== 'access') return bad(`kind is not "access": ${sample(text)}`);
  if (typeof o.from !== 'string' || o.from.length === 0 || o.from.length > MAX_NODE_CHARS)
    return bad(`"from" is not a node id: ${sample(text)}`);
  const cidr = canonicalPrefix(o.cidr);
  if (cidr === undefined) return bad(`"cidr" ${sample(o.cidr)} is not a canonical prefix: ${prefixProblem(o.cidr)}`);
  if (o.list !== undefined && o.list !== 'allow' && o.list !== 'deny') return bad(`"list" is not allow or deny: ${sample(o.list)}`);
  return { ok: true, value: { from: o.from, kind: 'access', cidr, list: o.list as AccessListName | undefined } };
}

/** One valid field of the shared access hash: the prefix (canonical text, parsed) and its list. */
export interface AccessField {
  readonly cidr: string;
  readonly list: AccessListName;
  /** Parsed here once: the access lists take it as it is (not parsed again). */
  readonly parsed: Cidr;
}

/**
 * One field of the shared access hash: canonical prefix → list. `known`: prefixes this decoder
 * accepted before (the previous sync), by their text: the same text is the same prefix, so it is
 * not parsed again (a sync every few seconds re-reads every field).
 */
export function decodeAccessField(field: unknown, value: unknown, known?: ReadonlyMap<string, Cidr>): Decoded<AccessField> {
  const parsed = (typeof field === 'string' ? known?.get(field) : undefined) ?? decodePrefix(field);
  if (parsed === undefined) return bad(`field ${sample(field)} is not a canonical prefix: ${prefixProblem(field)}`);
  const cidr = field as string;
  if (value !== 'allow' && value !== 'deny') return bad(`value of ${cidr} is not allow or deny: ${sample(value)}`);
  return { ok: true, value: { cidr, list: value, parsed } };
}

/**
 * Part of the hash as HSCAN returns it (field, value, field, value, …), decoded into `into`
 * (by prefix) and `rejected` (the reasons of the fields skipped). HSCAN may return a field twice:
 * the later value wins. `known`: see decodeAccessField.
 */
export function decodeAccessFields(
  flat: unknown,
  into: Map<string, AccessField>,
  rejected: string[],
  known?: ReadonlyMap<string, Cidr>,
): void {
  if (!Array.isArray(flat)) {
    rejected.push(`not a list of fields: ${sample(flat)}`);
    return;
  }
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const d = decodeAccessField(flat[i], flat[i + 1], known);
    if (d.ok) into.set(d.value.cidr, d.value);
    else rejected.push(d.reason);
  }
  if (flat.length % 2 !== 0) rejected.push(`a field without a value: ${sample(flat[flat.length - 1])}`);
}

/** The whole access hash as an object (HGETALL): its valid fields by prefix, and the reasons of those skipped. */
export function decodeAccessHash(hash: unknown): { entries: Map<string, AccessField>; rejected: string[] } {
  const entries = new Map<string, AccessField>();
  const rejected: string[] = [];
  if (typeof hash !== 'object' || hash === null) return { entries, rejected };
  decodeAccessFields(Object.entries(hash as Record<string, unknown>).flat(), entries, rejected);
  return { entries, rejected };
}

/** A cached verdict: undefined when absent (no key), else the verdict with its expiry (ms since epoch), lapsed or not. */
export function decodeVerdictValue(v: unknown): Decoded<{ kind: CacheVerdict; expires: number }> | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v !== 'string') return bad('not a string');
  if (v.length > MAX_VERDICT_CHARS) return bad(`${v.length} characters, over ${MAX_VERDICT_CHARS}`);
  const m = /^(pass|deny):(\d{1,15})$/.exec(v);
  if (!m) return bad(`not pass:<ms> or deny:<ms>: ${sample(v)}`);
  return { ok: true, value: { kind: m[1] as CacheVerdict, expires: Number(m[2]) } };
}

/** A shared DNSBL answer as `put` wrote it: {answer, expires}. Only the known fields come out. */
export function decodeDnsblValue(v: unknown): Decoded<{ answer: ZoneAnswer; expires: number }> {
  if (typeof v !== 'string') return bad('not a string');
  if (v.length > MAX_DNSBL_CHARS) return bad(`${v.length} characters, over ${MAX_DNSBL_CHARS}`);
  let o: unknown;
  try {
    o = JSON.parse(v);
  } catch {
    return bad(`not JSON: ${sample(v)}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return bad(`not an object: ${sample(v)}`);
  const { answer, expires } = o as { answer?: unknown; expires?: unknown };
  if (typeof expires !== 'number' || !Number.isFinite(expires) || expires <= 0) return bad(`"expires" is not a time: ${sample(v)}`);
  if (typeof answer !== 'object' || answer === null) return bad(`"answer" is missing: ${sample(v)}`);
  const a = answer as { status?: unknown; addresses?: unknown };
  if (a.status === 'none') return { ok: true, value: { answer: { status: 'none' }, expires } };
  if (a.status !== 'answer') return bad(`"answer.status" is not answer or none: ${sample(v)}`);
  const addrs = a.addresses;
  if (
    !Array.isArray(addrs) ||
    addrs.length === 0 ||
    addrs.length > MAX_DNSBL_ADDRESSES ||
    !addrs.every((x) => typeof x === 'string' && net.isIPv4(x))
  ) {
    return bad(`"answer.addresses" is not 1 to ${MAX_DNSBL_ADDRESSES} IPv4 addresses: ${sample(v)}`);
  }
  return { ok: true, value: { answer: { status: 'answer', addresses: [...(addrs as string[])] }, expires } };
}

/** A shared DNSBL key `<zone>/<address>`. */
export function decodeDnsblKey(key: unknown): Decoded<{ zone: string; address: string }> {
  if (typeof key !== 'string' || key.length > 300) return bad('not a short string');
  const slash = key.lastIndexOf('/');
  const zone = key.slice(0, slash);
  const address = key.slice(slash + 1);
  if (slash <= 0 || !/^[A-Za-z0-9._-]+$/.test(zone) || !/^[0-9a-fA-F:.]+$/.test(address) || net.isIP(address) === 0)
    return bad(`not <zone>/<address>: ${sample(key)}`);
  return { ok: true, value: { zone, address } };
}

/** A peer's expiry, never later than ours would be: min(theirs, now + our TTL). */
export function clampExpiry(theirs: number, now: number, ttlMs: number): number {
  return Math.min(theirs, now + ttlMs);
}

/** A peer's DNSBL answer lifetime from its expiry, clamped to [minTtl, maxTtl]; undefined when it has lapsed. */
export function clampAnswerTtl(expires: number, now: number, minTtlMs: number, maxTtlMs: number): number | undefined {
  const left = expires - now;
  if (!(left > 0)) return undefined;
  return Math.min(maxTtlMs, Math.max(minTtlMs, left));
}

/**
 * Counts skipped peer data per kind and says when a warning is due: at most one per kind per
 * `periodMs` (a flood of garbage is one line a minute, not one per entry), with the count since.
 */
export class RejectGate {
  readonly counts: Record<RejectKind, number> = { event: 0, access: 0, cache: 0, dnsbl: 0 };
  private readonly last: Partial<Record<RejectKind, number>> = {};
  private readonly since: Record<RejectKind, number> = { event: 0, access: 0, cache: 0, dnsbl: 0 };

  constructor(private readonly periodMs = 60_000) {}

  /** Counts one; returns the number skipped since the last warning when one is due now, else undefined. */
  note(kind: RejectKind, now: number): number | undefined {
    this.counts[kind]++;
    this.since[kind]++;
    const last = this.last[kind];
    if (last !== undefined && now - last < this.periodMs) return undefined;
    this.last[kind] = now;
    const n = this.since[kind];
    this.since[kind] = 0;
    return n;
  }
}
