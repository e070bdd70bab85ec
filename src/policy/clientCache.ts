// The pass cache and deny cache: clients that waited skip the window next time; early talkers are turned away at once.
//
// Entries live in a Map (key → expiry in ms, negative for deny) so a lookup on accept costs one
// hash probe; the state store keeps them across restarts. Keys are the address (scope: ip) or
// its /24 (IPv4) or /64 (IPv6) network (scope: net), like postscreen's cache keyed per client.

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

export interface CacheEntryView {
  readonly key: string;
  readonly kind: CacheKind;
  readonly expires: string;
}

export class ClientCache {
  private readonly map = new Map<string, number>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    private config: CacheConfig,
    private readonly store: StateStore,
    private readonly now: () => number = Date.now,
  ) {}

  /** Loads the persisted entries; returns how many. */
  load(): number {
    this.store.loadCache(this.now(), (key, expires, kind) => this.map.set(key, kind === 'deny' ? -expires : expires));
    return this.map.size;
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
    return this.map.size;
  }

  lookup(address: string): CacheKind | undefined {
    if (!this.config.enabled) return undefined;
    const key = cacheKey(address, this.config.scope);
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    if (Math.abs(v) <= this.now()) {
      this.map.delete(key);
      return undefined;
    }
    return v < 0 ? 'deny' : 'pass';
  }

  recordPass(address: string): void {
    this.record(address, 'pass', this.config.ttlMs);
  }

  recordDeny(address: string): void {
    this.record(address, 'deny', this.config.denyTtlMs);
  }

  private record(address: string, kind: CacheKind, ttlMs: number): void {
    if (!this.config.enabled || ttlMs <= 0) return;
    const key = cacheKey(address, this.config.scope);
    const expires = this.now() + ttlMs;
    this.map.set(key, kind === 'deny' ? -expires : expires);
    this.store.putCache(key, kind, expires);
  }

  /** Looks up by address or by key; undefined when absent or expired. */
  get(addressOrKey: string): CacheEntryView | undefined {
    const key = this.map.has(addressOrKey) ? addressOrKey : cacheKey(addressOrKey, this.config.scope);
    const v = this.map.get(key);
    if (v === undefined || Math.abs(v) <= this.now()) return undefined;
    return { key, kind: v < 0 ? 'deny' : 'pass', expires: new Date(Math.abs(v)).toISOString() };
  }

  delete(addressOrKey: string): boolean {
    const key = this.map.has(addressOrKey) ? addressOrKey : cacheKey(addressOrKey, this.config.scope);
    if (!this.map.delete(key)) return false;
    this.store.deleteCache(key);
    return true;
  }

  /** A page of live entries, in insertion order. */
  list(offset: number, limit: number, kind?: CacheKind): { total: number; entries: CacheEntryView[] } {
    const now = this.now();
    const entries: CacheEntryView[] = [];
    let i = 0;
    let total = 0;
    for (const [key, v] of this.map) {
      if (Math.abs(v) <= now) continue;
      const k: CacheKind = v < 0 ? 'deny' : 'pass';
      if (kind && k !== kind) continue;
      total++;
      if (i++ < offset || entries.length >= limit) continue;
      entries.push({ key, kind: k, expires: new Date(Math.abs(v)).toISOString() });
    }
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
    this.store.sweep(now);
    return n;
  }
}
