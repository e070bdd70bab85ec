// ClientCache over a real (in-memory) SQLite store: loaded entries (sorted arrays) and newer ones (Map) behave as one cache.

import { describe, expect, it } from 'vitest';
import { type CacheConfig, ClientCache, cacheKey } from '../../src/policy/clientCache.js';
import { type CacheKind, openStore, type StateStore } from '../../src/state/store.js';

const quiet = { warn: () => undefined, info: () => undefined };
const config: CacheConfig = { enabled: true, ttlMs: 10_000, denyTtlMs: 5_000, scope: 'ip' };

function clock(start = 1_000_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

/** A cache with `fn` recorded, persisted, and loaded again into a fresh cache on the same store. */
function reloaded(store: StateStore, now: () => number, fn: (c: ClientCache) => void): ClientCache {
  const first = new ClientCache(config, store, now);
  fn(first);
  store.flush();
  const second = new ClientCache(config, store, now);
  second.load();
  return second;
}

describe('cacheKey', () => {
  it('is the address for scope ip, its /24 or /64 for scope net', () => {
    expect(cacheKey('::ffff:192.0.2.7', 'ip')).toBe('192.0.2.7');
    expect(cacheKey('192.0.2.7', 'net')).toBe('192.0.2.0/24');
    expect(cacheKey('2001:db8:1:2:3:4:5:6', 'net')).toBe('2001:db8:1:2::/64');
  });
});

describe('ClientCache', () => {
  it('loads persisted entries and answers lookups, gets and lists from them', () => {
    const store = openStore(':memory:', quiet);
    const c = clock();
    const cache = reloaded(store, c.now, (x) => {
      x.recordPass('192.0.2.1');
      x.recordDeny('192.0.2.2');
      x.recordPass('2001:db8::1');
    });
    expect(cache.size).toBe(3);
    expect(cache.lookup('192.0.2.1')).toBe('pass');
    expect(cache.lookup('::ffff:192.0.2.2')).toBe('deny');
    expect(cache.lookup('2001:db8::1')).toBe('pass');
    expect(cache.lookup('192.0.2.3')).toBeUndefined();
    expect(cache.get('192.0.2.2')).toEqual({ key: '192.0.2.2', kind: 'deny', expires: new Date(c.t + 5_000).toISOString() });
    expect(cache.list(0, 10).entries.map((e) => e.key)).toEqual(['192.0.2.1', '192.0.2.2', '2001:db8::1']);
  });

  it('a loaded key recorded again lives once, with the new kind, in memory and in the store', () => {
    const store = openStore(':memory:', quiet);
    const c = clock();
    const cache = reloaded(store, c.now, (x) => {
      x.recordPass('192.0.2.1');
      x.recordPass('192.0.2.9');
    });
    cache.recordDeny('192.0.2.1');
    cache.recordPass('192.0.2.5');
    expect(cache.size).toBe(3);
    expect(cache.lookup('192.0.2.1')).toBe('deny');
    // Loaded ones in key order, then newer ones in insertion order.
    expect(cache.list(0, 10)).toEqual({
      total: 3,
      entries: [
        expect.objectContaining({ key: '192.0.2.9', kind: 'pass' }),
        expect.objectContaining({ key: '192.0.2.1', kind: 'deny' }),
        expect.objectContaining({ key: '192.0.2.5', kind: 'pass' }),
      ],
    });
    expect(cache.list(1, 1, 'pass')).toEqual({ total: 2, entries: [expect.objectContaining({ key: '192.0.2.5' })] });
    store.flush();
    const again = new ClientCache(config, store, c.now);
    expect(again.load()).toBe(3);
    expect(again.lookup('192.0.2.1')).toBe('deny');
  });

  it('deletes loaded and new entries, by address or by key, in the store too', () => {
    const store = openStore(':memory:', quiet);
    const c = clock();
    const cache = reloaded(store, c.now, (x) => x.recordPass('192.0.2.1'));
    cache.recordPass('192.0.2.2');
    expect(cache.delete('192.0.2.1')).toBe(true);
    expect(cache.delete('192.0.2.1')).toBe(false);
    expect(cache.delete('::ffff:192.0.2.2')).toBe(true);
    expect(cache.size).toBe(0);
    expect(cache.lookup('192.0.2.1')).toBeUndefined();
    store.flush();
    expect(new ClientCache(config, store, c.now).load()).toBe(0);
  });

  it('lapsed entries are gone from lookups, and sweep() removes them and compacts the loaded arrays', () => {
    const store = openStore(':memory:', quiet);
    const c = clock();
    const cache = reloaded(store, c.now, (x) => {
      for (let i = 0; i < 3000; i++) x.recordDeny(`10.0.${i >> 8}.${i & 255}`); // 5 s
      x.recordPass('192.0.2.1'); // 10 s
    });
    expect(cache.size).toBe(3001);
    c.t += 6_000;
    expect(cache.lookup('10.0.0.1')).toBeUndefined();
    expect(cache.get('10.0.0.2')).toBeUndefined();
    expect(cache.sweep()).toBe(2999);
    expect(cache.size).toBe(1);
    expect(cache.lookup('192.0.2.1')).toBe('pass');
    expect(cache.list(0, 10).entries.map((e) => e.key)).toEqual(['192.0.2.1']);
    c.t += 5_000;
    expect(cache.sweep()).toBe(1);
    expect(cache.size).toBe(0);
  });

  it('loads more entries than one load chunk, all of them', () => {
    const store = openStore(':memory:', quiet);
    const c = clock();
    const n = 120_001;
    const address = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    const cache = reloaded(store, c.now, (x) => {
      for (let i = 0; i < n; i++) (i % 7 === 0 ? x.recordDeny : x.recordPass).call(x, address(i));
    });
    expect(cache.size).toBe(n);
    for (const i of [0, 1, 49_999, 50_000, 50_001, 99_999, 100_000, 119_999, 120_000]) {
      expect(cache.lookup(address(i)), address(i)).toBe(i % 7 === 0 ? 'deny' : 'pass');
    }
    expect(cache.lookup(address(n))).toBeUndefined();
  });

  it('a store that does not return key order still gives correct lookups', () => {
    const rows: Array<[string, number, CacheKind]> = [
      ['192.0.2.9', 9e12, 'pass'],
      ['10.0.0.1', 9e12, 'deny'],
      ['2001:db8::1', 9e12, 'pass'],
      ['172.16.0.1', 9e12, 'pass'],
    ];
    const store: StateStore = {
      putCache: () => undefined,
      deleteCache: () => undefined,
      sweep: () => 0,
      loadAccess: () => [],
      putAccess: () => undefined,
      deleteAccess: () => undefined,
      applyAccessBatch: () => undefined,
      flush: () => undefined,
      close: () => undefined,
      healthy: true,
      loadCache: (_now, fn) => {
        for (const [k, e, kind] of rows) fn(k, e, kind);
      },
      location: 'fake',
    };
    const cache = new ClientCache(config, store);
    expect(cache.load()).toBe(4);
    for (const [k, , kind] of rows) expect(cache.lookup(k)).toBe(kind);
    expect(cache.lookup('10.0.0.2')).toBeUndefined();
  });

  it('disabled: no lookups, no records', () => {
    const store = openStore(':memory:', quiet);
    const cache = new ClientCache({ ...config, enabled: false }, store);
    cache.recordPass('192.0.2.1');
    expect(cache.size).toBe(0);
    expect(cache.lookup('192.0.2.1')).toBeUndefined();
  });
});
