// Pure: how shared state is laid out in Redis (one namespace per kind under cluster.redis.keyPrefix), the pub/sub message codec, and the access-list reconcile.
//
// Layout (after keyPrefix, which ioredis adds to every key):
//   cache:<cache key>        "pass:<expiry ms>" | "deny:<expiry ms>", with the same PX expiry (the same keys as
//                            the local cache: ip or net scope; the expiry in the value saves a PTTL per lookup)
//   access:runtime           hash  cidr → "allow" | "deny" (runtime access entries made through any gateway's API)
//   meta:epoch               a random id set once per Redis data set: a gateway that sees it change
//                            knows Redis lost its data (restart without persistence) and writes back
// Channel (pub/sub channels are not keys, so the prefix is added here): <keyPrefix>events
//
// Another kind gets its own namespace: `dnsbl:<zone>/<address>` holds DNSBL answers (src/reputation/lookup.ts,
// AnswerExchange), shared through SharedState.put/get (a value with a PX expiry, batched like the cache).

import type { Cidr } from '../config/cidr.js';
import { decodeEventText, decodeVerdictValue } from './decode.js';

export type SharedKind = 'cache' | 'access' | 'meta' | 'dnsbl';
/** The kinds stored as one value per key with an expiry. */
export type ValueKind = 'cache' | 'dnsbl';
export type CacheVerdict = 'pass' | 'deny';
export type AccessListName = 'allow' | 'deny';

export function sharedKey(kind: SharedKind, key: string): string {
  return `${kind}:${key}`;
}

export const ACCESS_HASH = sharedKey('access', 'runtime');
export const EPOCH_KEY = sharedKey('meta', 'epoch');

export function eventChannel(keyPrefix: string): string {
  return `${keyPrefix}events`;
}

/** A change one gateway announces to the others. */
export interface AccessEvent {
  readonly from: string;
  readonly kind: 'access';
  readonly cidr: string;
  /** undefined: the entry was deleted. */
  readonly list: AccessListName | undefined;
}

export function encodeEvent(e: AccessEvent): string {
  return JSON.stringify({ from: e.from, kind: e.kind, cidr: e.cidr, ...(e.list !== undefined ? { list: e.list } : {}) });
}

/** Parses a message from the channel; undefined for anything malformed (another version, a stray PUBLISH). See decode.ts. */
export function decodeEvent(text: string): AccessEvent | undefined {
  const d = decodeEventText(text);
  return d.ok ? d.value : undefined;
}

export function encodeVerdict(kind: CacheVerdict, expires: number): string {
  return `${kind}:${expires}`;
}

/** A cached verdict read back from Redis with its expiry (ms since epoch); undefined when absent, lapsed or not etd's. See decode.ts. */
export function decodeVerdict(v: unknown, now: number): { kind: CacheVerdict; expires: number } | undefined {
  const d = decodeVerdictValue(v);
  return d?.ok && d.value.expires > now ? d.value : undefined;
}

export interface AccessChange {
  readonly cidr: string;
  readonly list: AccessListName | undefined;
  /** The prefix already parsed at the border (decode.ts), `cidr` being its canonical text: not parsed again. */
  readonly parsed?: Cidr;
}

/** One entry of the shared hash as the decoder hands it over. */
export interface SharedAccessEntry {
  readonly list: AccessListName;
  readonly parsed?: Cidr;
}

/**
 * The additions and changes that part of the shared hash (one HSCAN page) asks of the local
 * runtime entries, leaving out the prefixes in `skip` (changed locally since the read started:
 * the local change is newer).
 */
export function accessUpdates(
  local: ReadonlyMap<string, AccessListName>,
  shared: ReadonlyMap<string, SharedAccessEntry>,
  skip: ReadonlySet<string> = new Set(),
): AccessChange[] {
  const out: AccessChange[] = [];
  for (const [cidr, e] of shared) {
    if (skip.has(cidr) || local.get(cidr) === e.list) continue;
    out.push(e.parsed === undefined ? { cidr, list: e.list } : { cidr, list: e.list, parsed: e.parsed });
  }
  return out;
}

/** The deletions once the whole hash is read: local runtime prefixes it does not hold (`skip` excepted). */
export function accessDeletions(
  local: ReadonlyMap<string, AccessListName>,
  shared: { has(cidr: string): boolean },
  skip: ReadonlySet<string> = new Set(),
): AccessChange[] {
  const out: AccessChange[] = [];
  for (const cidr of local.keys()) if (!skip.has(cidr) && !shared.has(cidr)) out.push({ cidr, list: undefined });
  return out;
}

/** The changes that make the local runtime entries equal to the shared ones (the two above, for a hash read whole). */
export function reconcileAccess(
  local: ReadonlyMap<string, AccessListName>,
  shared: ReadonlyMap<string, SharedAccessEntry>,
  skip: ReadonlySet<string> = new Set(),
): AccessChange[] {
  return [...accessUpdates(local, shared, skip), ...accessDeletions(local, shared, skip)];
}
