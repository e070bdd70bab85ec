// The pass cache and deny cache: clients that waited skip the window next time; early talkers are turned away at once.
//
// Entries recorded while running live in a Map (key → expiry in ms, negative for deny), so a
// lookup on accept costs one hash probe; the entries loaded at start live in sorted arrays found by
// binary search (a microsecond), because building a Map of a million entries alone took longer
// than the one-second start budget. The state store keeps them across restarts. Keys are the
// address (scope: ip) or its /24 (IPv4) or /64 (IPv6) network (scope: net), like postscreen's
// cache keyed per client.

import { clampExpiry } from '../cluster/decode.js';
import { addressToBigInt, formatAddress, normalizeAddress } from '../config/cidr.js';
import type { CacheKind, StateStore } from '../state/store.js';

export interface CacheConfig {
  readonly enabled: boolean;
  readonly ttlMs: number;
  readonly denyTtlMs: number;
  readonly scope: 'ip' | 'net';
}

/** Pure: the cache key for an address under a scope. */
export function cacheKey(address: string, scope: 'ip' | 'net'): string {
  const a = normalizeAddress(address);
  if (scope === 'ip') return a;
  const p = addressToBigInt(a);
  if (!p) return a;
  if (p.family === 4) return `${formatAddress(4, p.value & ~0xffn)}/24`;
  return `${formatAddress(6, p.value & ~((1n << 64n) - 1n))}/64`;
}

export interface RecordedEntry {
  readonly key: string;
  /** ms since epoch */
  readonly expires: number;
}

export interface CacheEntryView {
  readonly key: string;
  readonly kind: CacheKind;
  readonly expires: string;
}

export class ClientCache {
  /** Entries recorded since start (including loaded ones recorded again): key → expiry in ms, negative for deny. */
  private readonly map = new Map<string, number>();
  /**
   * The entries loaded at start, sorted by key (bench/cacheLoad.ts measures why). A value of 0
   * marks one that was deleted, expired, or superseded by an entry in `map`: a key is live in at
   * most one of the two.
   */
  private baseKeys: string[] = [];
  private baseVals: number[] = [];
  private baseLive = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Told of every entry recorded, adopted or deleted (not of expiry). */
  onChange: ((key: string, kind: CacheKind | undefined, expires: number) => void) | undefined;

  constructor(
    private config: CacheConfig,
    private readonly store: StateStore,
    private readonly now: () => number = Date.now,
  ) {}

  /** Loads the persisted entries (call once, before the first lookup); returns how many. */
  load(): number {
    const keys: string[] = [];
    const vals: number[] = [];
    let sorted = true;
    let prev = '';
    this.store.loadCache(this.now(), (key, expires, kind) => {
      if (keys.length > 0 && key <= prev) sorted = false;
      keys.push(key);
      vals.push(kind === 'deny' ? -expires : expires);
      prev = key;
    });
    if (!sorted) {
      // The store promises key order; a store that breaks it costs a sort, not wrong lookups.
      const order = keys.map((_, i) => i).sort((a, b) => (keys[a]! < keys[b]! ? -1 : keys[a]! > keys[b]! ? 1 : 0));
      this.baseKeys = order.map((i) => keys[i]!);
      this.baseVals = order.map((i) => vals[i]!);
    } else {
      this.baseKeys = keys;
      this.baseVals = vals;
    }
    this.baseLive = keys.length;
    for (const key of this.map.keys()) this.dropBase(key);
    return this.size;
  }

  startSweeping(everyMs = 60_000): void {
    this.sweepTimer = setInterval(() => this.sweep(), everyMs);
    this.sweepTimer.unref();
  }

  stop(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.store.flush();
  }

  update(config: CacheConfig): void {
    this.config = config;
  }

  get size(): number {
    return this.map.size + this.baseLive;
  }

  lookup(address: string): CacheKind | undefined {
    if (!this.config.enabled) return undefined;
    const key = cacheKey(address, this.config.scope);
    const v = this.value(key);
    if (v === undefined) return undefined;
    if (Math.abs(v) <= this.now()) {
      this.forget(key);
      return undefined;
    }
    return v < 0 ? 'deny' : 'pass';
  }

  /** Records a client that waited; returns the entry written (for the cluster), undefined when the cache is off. */
  recordPass(address: string): RecordedEntry | undefined {
    return this.record(address, 'pass', this.config.ttlMs);
  }

  recordDeny(address: string): RecordedEntry | undefined {
    return this.record(address, 'deny', this.config.denyTtlMs);
  }

  private record(address: string, kind: CacheKind, ttlMs: number): RecordedEntry | undefined {
    if (!this.config.enabled || ttlMs <= 0) return undefined;
    const key = cacheKey(address, this.config.scope);
    const expires = this.now() + ttlMs;
    this.put(key, kind, expires);
    return { key, expires };
  }

  /**
   * An entry a cluster peer recorded (its key already scoped), kept until `expires` like one of
   * ours, but never longer than ours would live (cache.ttl / cache.denyTtl from now): a peer's
   * lifetime is data from outside.
   */
  adopt(key: string, kind: CacheKind, expires: number): void {
    const now = this.now();
    if (!this.config.enabled || !(expires > now)) return;
    this.put(key, kind, clampExpiry(expires, now, kind === 'deny' ? this.config.denyTtlMs : this.config.ttlMs));
  }

  private put(key: string, kind: CacheKind, expires: number): void {
    this.dropBase(key);
    this.map.set(key, kind === 'deny' ? -expires : expires);
    this.store.putCache(key, kind, expires);
    this.onChange?.(key, kind, expires);
  }

  /** Every live entry (loaded ones, then newer ones), for the cluster's write-back. */
  *entries(): Generator<{ key: string; kind: CacheKind; expires: number }> {
    const now = this.now();
    for (let i = 0; i < this.baseKeys.length; i++) {
      const v = this.baseVals[i]!;
      if (v !== 0 && Math.abs(v) > now) yield { key: this.baseKeys[i]!, kind: v < 0 ? 'deny' : 'pass', expires: Math.abs(v) };
    }
    for (const [key, v] of this.map) if (Math.abs(v) > now) yield { key, kind: v < 0 ? 'deny' : 'pass', expires: Math.abs(v) };
  }

  /** Looks up by address or by key; undefined when absent or expired. */
  get(addressOrKey: string): CacheEntryView | undefined {
    const key = this.value(addressOrKey) !== undefined ? addressOrKey : cacheKey(addressOrKey, this.config.scope);
    const v = this.value(key);
    if (v === undefined || Math.abs(v) <= this.now()) return undefined;
    return { key, kind: v < 0 ? 'deny' : 'pass', expires: new Date(Math.abs(v)).toISOString() };
  }

  delete(addressOrKey: string): boolean {
    const key = this.value(addressOrKey) !== undefined ? addressOrKey : cacheKey(addressOrKey, this.config.scope);
    if (!this.forget(key)) return false;
    this.store.deleteCache(key);
    this.onChange?.(key, undefined, 0);
    return true;
  }

  /** A page of live entries: the loaded ones in key order, then the newer ones in insertion order. */
  list(offset: number, limit: number, kind?: CacheKind): { total: number; entries: CacheEntryView[] } {
    const now = this.now();
    const entries: CacheEntryView[] = [];
    let total = 0;
    const visit = (key: string, v: number): void => {
      if (v === 0 || Math.abs(v) <= now) return;
      const k: CacheKind = v < 0 ? 'deny' : 'pass';
      if (kind && k !== kind) return;
      if (total++ < offset || entries.length >= limit) return;
      entries.push({ key, kind: k, expires: new Date(Math.abs(v)).toISOString() });
    };
    for (let i = 0; i < this.baseKeys.length; i++) visit(this.baseKeys[i]!, this.baseVals[i]!);
    for (const [key, v] of this.map) visit(key, v);
    return { total, entries };
  }

  sweep(): number {
    const now = this.now();
    let n = 0;
    for (const [key, v] of this.map) {
      if (Math.abs(v) <= now) {
        this.map.delete(key);
        n++;
      }
    }
    const vals = this.baseVals;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i]!;
      if (v !== 0 && Math.abs(v) <= now) {
        vals[i] = 0;
        this.baseLive--;
        n++;
      }
    }
    // Once most loaded entries are gone, the arrays are rebuilt so they stop holding memory.
    const dead = this.baseKeys.length - this.baseLive;
    if (dead > 1024 && dead > this.baseLive) {
      const keys: string[] = [];
      const live: number[] = [];
      for (let i = 0; i < vals.length; i++) {
        if (vals[i] !== 0) {
          keys.push(this.baseKeys[i]!);
          live.push(vals[i]!);
        }
      }
      this.baseKeys = keys;
      this.baseVals = live;
    }
    this.store.sweep(now);
    return n;
  }

  /** The stored value for a key (±expiry), expired or not; undefined when absent. */
  private value(key: string): number | undefined {
    const v = this.map.get(key);
    if (v !== undefined) return v;
    const i = this.baseIndex(key);
    return i < 0 ? undefined : this.baseVals[i];
  }

  /** Removes a key from memory (not from the store); false when it was not there. */
  private forget(key: string): boolean {
    return this.map.delete(key) || this.dropBase(key);
  }

  private dropBase(key: string): boolean {
    const i = this.baseIndex(key);
    if (i < 0) return false;
    this.baseVals[i] = 0;
    this.baseLive--;
    return true;
  }

  /** Binary search of the loaded entries; -1 when absent or already dropped. */
  private baseIndex(key: string): number {
    const keys = this.baseKeys;
    let lo = 0;
    let hi = keys.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const k = keys[mid]!;
      if (k < key) lo = mid + 1;
      else if (k > key) hi = mid - 1;
      else return this.baseVals[mid] === 0 ? -1 : mid;
    }
    return -1;
  }
}
