// Peer data is untrusted: the one decoder of what Redis holds, the clamps of a peer's lifetimes, the per-kind reject gate, and SharedState's handlers under fuzzed input.

import fc from 'fast-check';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import {
  canonicalPrefix,
  clampAnswerTtl,
  clampExpiry,
  decodeAccessFields,
  decodeAccessHash,
  decodeDnsblKey,
  decodeDnsblValue,
  decodeEventText,
  decodePrefix,
  decodeVerdictValue,
  MAX_EVENT_CHARS,
  RejectGate,
} from '../../src/cluster/decode.js';
import { type AccessChange, type AccessListName, encodeEvent } from '../../src/cluster/keys.js';
import { guardedLocal, type LocalState, SharedState } from '../../src/cluster/shared.js';
import type { ClusterConfig, ReputationConfig } from '../../src/config/schema.js';
import { ClientCache } from '../../src/policy/clientCache.js';
import { Reputation } from '../../src/reputation/lookup.js';
import { openStore } from '../../src/state/store.js';

const quiet = { warn: () => undefined, info: () => undefined, debug: () => undefined };

describe('the decoder: events', () => {
  it('a valid event comes out as it was written (etd writes canonical prefixes)', () => {
    expect(decodeEventText(encodeEvent({ from: 'gw', kind: 'access', cidr: '2001:db8::/32', list: 'deny' }))).toEqual({
      ok: true,
      value: { from: 'gw', kind: 'access', cidr: '2001:db8::/32', list: 'deny' },
    });
  });

  it.each([
    ['a zone id (the message that killed etd)', '{"from":"x","kind":"access","cidr":"fe80::%x/64","list":"deny"}'],
    ['not JSON', '{"from":'],
    ['binary', '\u0000\uffff\ud800'],
    ['an array', '[1,2]'],
    ['null', 'null'],
    ['a number', '42'],
    ['another kind', '{"from":"x","kind":"cache","cidr":"10.0.0.0/8"}'],
    ['no from', '{"kind":"access","cidr":"10.0.0.0/8"}'],
    ['host bits set', '{"from":"x","kind":"access","cidr":"10.0.0.1/8"}'],
    ['not the canonical spelling', '{"from":"x","kind":"access","cidr":"2001:DB8::/32"}'],
    ['a list that is none', '{"from":"x","kind":"access","cidr":"10.0.0.0/8","list":"maybe"}'],
    ['oversized', JSON.stringify({ from: 'x'.repeat(MAX_EVENT_CHARS), kind: 'access', cidr: '10.0.0.0/8' })],
  ])('%s is refused with a reason', (_what, text) => {
    const d = decodeEventText(text);
    expect(d.ok).toBe(false);
    if (!d.ok) expect(d.reason.length).toBeGreaterThan(0);
  });

  it('only the canonical spelling etd writes is a prefix; other spellings, zone ids, spaces and long text are refused', () => {
    expect(canonicalPrefix('192.0.2.0/24')).toBe('192.0.2.0/24');
    expect(canonicalPrefix('2001:db8::/32')).toBe('2001:db8::/32');
    expect(decodePrefix('192.0.2.7/32')).toMatchObject({ family: 4, prefix: 32 });
    for (const t of [
      'fe80::%x/64',
      'fe80::%eth0',
      ' 10.0.0.0/8',
      '1'.repeat(100),
      '',
      42,
      // Not how etd writes them: refused as malformed, not normalised.
      '10.0.0.1/24',
      '::ffff:10.0.0.0/120',
      '192.0.2.7',
      '2001:DB8::/32',
      '2001:db8:0::/32',
      '192.0.2.0/024',
    ])
      expect(canonicalPrefix(t)).toBeUndefined();
  });
});

describe('the decoder: access hash, cache and DNSBL values', () => {
  it('the access hash: valid fields by canonical prefix, the others with their reasons', () => {
    const d = decodeAccessHash({
      'fe80::%x/64': 'deny',
      '192.0.2.0/24': 'deny',
      '2001:db8::/32': 'allow',
      '2001:DB8::/32': 'allow',
      '10.0.0.1/24': 'deny',
      '198.51.100.0/24': 'bogus',
      ['9'.repeat(5000)]: 'deny',
    });
    expect([...d.entries].map(([k, v]) => [k, v.list])).toEqual([
      ['192.0.2.0/24', 'deny'],
      ['2001:db8::/32', 'allow'],
    ]);
    expect(d.entries.get('192.0.2.0/24')?.parsed).toMatchObject({ family: 4, prefix: 24 });
    expect(d.rejected).toHaveLength(5);
  });

  it('HSCAN replies: field, value pairs; a field twice keeps the later value; a reply that is not a list is one reason', () => {
    const into = new Map();
    const rejected: string[] = [];
    decodeAccessFields(['192.0.2.0/24', 'deny', '10.0.0.1/8', 'deny', '192.0.2.0/24', 'allow', 'odd'], into, rejected);
    decodeAccessFields('not a list', into, rejected);
    expect([...into.keys()]).toEqual(['192.0.2.0/24']);
    expect(into.get('192.0.2.0/24').list).toBe('allow');
    expect(rejected).toHaveLength(3);
  });

  it('cached verdicts: absent, malformed and valid (lapsed or not: the caller decides)', () => {
    expect(decodeVerdictValue(null)).toBeUndefined();
    expect(decodeVerdictValue('deny:999999999999999')).toEqual({ ok: true, value: { kind: 'deny', expires: 999999999999999 } });
    for (const v of ['maybe:1', 'pass:', 'pass:1e9', `pass:${'9'.repeat(40)}`, 42, Buffer.from('x')])
      expect(decodeVerdictValue(v)?.ok).toBe(false);
  });

  it('DNSBL values: only answer/none with IPv4 addresses and a finite expiry, only the known fields', () => {
    expect(decodeDnsblValue('{"answer":{"status":"answer","addresses":["127.0.0.2"],"x":1},"expires":5,"y":2}')).toEqual({
      ok: true,
      value: { answer: { status: 'answer', addresses: ['127.0.0.2'] }, expires: 5 },
    });
    expect(decodeDnsblValue('{"answer":{"status":"none"},"expires":8.64e15}')).toEqual({
      ok: true,
      value: { answer: { status: 'none' }, expires: 8.64e15 },
    });
    for (const v of [
      'x',
      '{"answer":{"status":"timeout"},"expires":5}',
      '{"answer":{"status":"answer","addresses":[]},"expires":5}',
      '{"answer":{"status":"answer","addresses":["not an ip"]},"expires":5}',
      '{"answer":{"status":"answer","addresses":[1]},"expires":5}',
      '{"answer":{"status":"none"},"expires":"5"}',
      '{"answer":{"status":"none"},"expires":-1}',
      '{"answer":{"status":"none"},"expires":1e400}',
      '{"answer":{"status":"none"}}',
      JSON.stringify({ answer: { status: 'answer', addresses: Array(100).fill('127.0.0.2') }, expires: 5 }),
    ])
      expect(decodeDnsblValue(v).ok).toBe(false);
  });

  it('DNSBL keys: <zone>/<address>', () => {
    expect(decodeDnsblKey('bl.test/2001:db8::1')).toEqual({ ok: true, value: { zone: 'bl.test', address: '2001:db8::1' } });
    for (const k of ['bl.test', '/1.2.3.4', 'bl test/1.2.3.4', 'bl.test/x', 'bl.test/fe80::1%x']) expect(decodeDnsblKey(k).ok).toBe(false);
  });
});

describe("a peer's lifetimes are clamped to ours", () => {
  it('caches: min(theirs, now + ttl)', () => {
    expect(clampExpiry(999999999999999, 1000, 600_000)).toBe(601_000);
    expect(clampExpiry(5000, 1000, 600_000)).toBe(5000);
  });
  it('DNSBL answers: [minTtl, maxTtl] of what is left; lapsed: none', () => {
    expect(clampAnswerTtl(8.64e15, 1000, 60_000, 3_600_000)).toBe(3_600_000);
    expect(clampAnswerTtl(2000, 1000, 60_000, 3_600_000)).toBe(60_000);
    expect(clampAnswerTtl(1000 + 120_000, 1000, 60_000, 3_600_000)).toBe(120_000);
    expect(clampAnswerTtl(1000, 1000, 60_000, 3_600_000)).toBeUndefined();
    expect(clampAnswerTtl(Number.NaN, 1000, 60_000, 3_600_000)).toBeUndefined();
  });

  it('ClientCache.adopt: a deny until the year 33658 lasts denyTtl', () => {
    let t = 1_000_000;
    const cache = new ClientCache(
      { enabled: true, ttlMs: 3_600_000, denyTtlMs: 600_000, scope: 'ip' },
      openStore(':memory:', quiet),
      () => t,
    );
    cache.adopt('127.0.0.6', 'deny', 999999999999999);
    cache.adopt('127.0.0.7', 'pass', 999999999999999);
    expect(Date.parse(cache.get('127.0.0.6')!.expires)).toBe(t + 600_000);
    expect(Date.parse(cache.get('127.0.0.7')!.expires)).toBe(t + 3_600_000);
    t += 600_001;
    expect(cache.lookup('127.0.0.6')).toBeUndefined();
  });

  it('Reputation: a shared answer with expires 8.64e15 is kept maxTtl, not for ever', () => {
    let t = 1_000_000;
    const config: ReputationConfig = {
      dnsbl: [{ zone: 'bl.test', weight: 3, match: undefined, name: undefined }],
      threshold: 3,
      allowThreshold: -1,
      action: 'reject',
      reply: '554 5.7.1 blocked using {name}',
      timeoutMs: 1000,
      resolvers: ['127.0.0.1:9'],
      minTtlMs: 60_000,
      maxTtlMs: 3_600_000,
      maxInFlight: 10,
    };
    const rep = new Reputation(config, pino({ level: 'silent' }), () => t);
    // A peer's answer reaches this gateway through the exchange when it is about to query.
    rep.share({
      get: (key, done) => {
        if (key === 'bl.test/192.0.2.9') done(JSON.stringify({ answer: { status: 'answer', addresses: ['127.0.0.2'] }, expires: 8.64e15 }));
      },
      put: () => undefined,
    });
    void rep.lookup('192.0.2.9');
    expect(rep.cached('192.0.2.9')?.score).toBe(3);
    t += 3_600_001;
    expect(rep.cached('192.0.2.9')).toBeUndefined();
    rep.stop();
  });
});

describe('the reject gate: counted per kind, warned once per period', () => {
  it('one warning per kind per period, with the count since the last', () => {
    const g = new RejectGate(60_000);
    expect(g.note('event', 0)).toBe(1);
    expect(g.note('event', 10)).toBeUndefined();
    expect(g.note('event', 20)).toBeUndefined();
    expect(g.note('access', 30)).toBe(1);
    expect(g.note('event', 60_001)).toBe(3);
    expect(g.counts).toEqual({ event: 4, access: 1, cache: 0, dnsbl: 0 });
  });
});

// ---- SharedState's handlers, driven directly (no Redis): fuzzed input never throws, and only valid entries change state.

const clusterConfig: ClusterConfig = {
  redis: {
    url: 'redis://127.0.0.1:1',
    sentinels: undefined,
    name: undefined,
    caFile: undefined,
    ca: undefined,
    keyPrefix: 'etd:',
    connectTimeoutMs: 100,
    commandTimeoutMs: 100,
  },
  syncIntervalMs: 5000,
};

function recorder(opts: { throwing?: boolean; cap?: number } = {}) {
  const applied: AccessChange[] = [];
  const batches: Array<{ size: number; end: boolean }> = [];
  const runtime = new Map<string, AccessListName>();
  const local: LocalState = {
    adoptCache: () => undefined,
    cacheEntries: () => [],
    runtimeAccess: () => runtime,
    applyAccess(change) {
      if (opts.throwing) throw new RangeError('Cannot convert NaN to a BigInt');
      applied.push(change);
    },
    applyAccessBatch(changes, end = true) {
      batches.push({ size: changes.length, end });
      if (opts.throwing && changes.length > 0) throw new RangeError('Cannot convert NaN to a BigInt');
      for (const c of changes) {
        // access.maxEntries: beyond it, additions are refused.
        if (c.list !== undefined && !runtime.has(c.cidr) && runtime.size >= (opts.cap ?? Infinity)) continue;
        applied.push({ cidr: c.cidr, list: c.list });
        if (c.list === undefined) runtime.delete(c.cidr);
        else runtime.set(c.cidr, c.list);
      }
    },
  };
  return { local, applied, batches };
}

interface Internals {
  onMessage(text: string): void;
  sync(skipIfBusy?: boolean): Promise<void>;
  client: unknown;
  state: string;
}

function sharedWith(
  local: LocalState,
  hash: () => Record<string, string> = () => ({}),
): { s: SharedState; warns: Array<Record<string, unknown>> } {
  const warns: Array<Record<string, unknown>> = [];
  const s = new SharedState(clusterConfig, local, { ...quiet, warn: (o) => void warns.push(o as Record<string, unknown>) });
  const i = s as unknown as Internals;
  // HSCAN in pages of 3 fields (the real one: SCAN_COUNT), so a sync reads in several steps here too.
  i.client = {
    hscan: async (_key: string, cursor: string) => {
      const flat = Object.entries(hash()).flat();
      const at = Number(cursor);
      const next = at + 6 >= flat.length ? '0' : String(at + 6);
      return [next, flat.slice(at, at + 6)];
    },
  };
  i.state = 'up';
  return { s, warns };
}

const anyText = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1')),
  fc
    .record({
      from: fc.string(),
      kind: fc.constantFrom('access', 'cache', 'x'),
      cidr: fc.oneof(
        fc.string(),
        fc.ipV6().map((a) => `${a}%x/64`),
        fc.ipV4(),
      ),
      list: fc.constantFrom('allow', 'deny', 'x', undefined),
    })
    .map((o) => JSON.stringify(o)),
);

describe('SharedState: nothing from a peer throws out of a handler', () => {
  it('the event that killed etd (zone id) is counted, not applied, and warned once', () => {
    const { local, applied } = recorder();
    const { s, warns } = sharedWith(local);
    const i = s as unknown as Internals;
    for (let n = 0; n < 5; n++) i.onMessage('{"from":"x","kind":"access","cidr":"fe80::%x/64","list":"deny"}');
    expect(applied).toEqual([]);
    expect(s.status().rejected.event).toBe(5);
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ kind: 'event', skipped: 1 });
  });

  it('an apply that throws is counted, once per batch, and later syncs still run', async () => {
    const { local, batches } = recorder({ throwing: true });
    const { s } = sharedWith(local, () => ({ '192.0.2.0/24': 'deny', '198.51.100.0/24': 'allow' }));
    const i = s as unknown as Internals;
    expect(() => i.onMessage(encodeEvent({ from: 'peer', kind: 'access', cidr: '192.0.2.0/24', list: 'deny' }))).not.toThrow();
    await expect(i.sync()).resolves.toBeUndefined();
    // One from the event, one for the sync's batch (a sync's changes are applied as one batch: its
    // failure is one failure, counted once).
    expect(s.status().rejected.access).toBe(2);
    // The part, then the end of the sync (the workers and the log hear of it even so).
    const oneSync = [
      { size: 2, end: false },
      { size: 0, end: true },
    ];
    expect(batches).toEqual(oneSync);
    await expect(i.sync()).resolves.toBeUndefined();
    expect(s.status().rejected.access).toBe(3);
    expect(batches).toEqual([...oneSync, ...oneSync]);
  });

  it("a sync asked for while one runs waits for it (never two at once), then runs once more; the interval's is skipped", async () => {
    const { local, batches } = recorder();
    const { s } = sharedWith(local, () => ({
      '192.0.2.0/24': 'deny',
      '198.51.100.0/24': 'allow',
      '203.0.113.0/24': 'deny',
      '10.0.0.0/8': 'deny',
    }));
    const i = s as unknown as Internals & { client: { hscan: (k: string, c: string) => Promise<[string, string[]]> } };
    const scan = i.client.hscan;
    let reading = 0;
    let most = 0;
    let started = 0;
    i.client.hscan = async (k, c) => {
      if (c === '0') started++;
      reading++;
      most = Math.max(most, reading);
      await new Promise((r) => setImmediate(r));
      reading--;
      return scan(k, c);
    };
    await Promise.all([i.sync(), i.sync(), i.sync()]);
    expect(most).toBe(1);
    // The first, and one more for the two asked for meanwhile.
    expect(started).toBe(2);
    expect(batches.filter((b) => b.end)).toHaveLength(1);
    // The interval's while one runs: skipped.
    await Promise.all([i.sync(), i.sync(true), i.sync(true)]);
    expect(started).toBe(3);
  });

  it('a hash with more fields than the lists take: only the local ones are remembered, and the next sync deletes nothing', async () => {
    const { local, applied, batches } = recorder({ cap: 2 });
    const hash = Object.fromEntries(Array.from({ length: 7 }, (_, n) => [`192.0.2.${n * 8}/29`, 'deny']));
    const { s } = sharedWith(local, () => hash);
    const i = s as unknown as Internals & { knownPrefixes: ReadonlyMap<string, unknown> };
    await i.sync();
    expect(applied).toHaveLength(2);
    expect([...i.knownPrefixes.keys()]).toEqual(applied.map((a) => a.cidr));
    const before = batches.length;
    await i.sync();
    // The refused ones are offered again (and refused again); nothing local is deleted.
    expect(applied).toHaveLength(2);
    expect(batches.slice(before).every((b) => b.size <= 5)).toBe(true);
  });

  it("a peer's event that arrives while a sync reads the hash is not undone by that sync", async () => {
    const { local, applied } = recorder();
    const { s } = sharedWith(local, () => ({
      '192.0.2.0/24': 'deny',
      '198.51.100.0/24': 'allow',
      '203.0.113.0/24': 'deny',
      '10.0.0.0/8': 'deny',
    }));
    const i = s as unknown as Internals & { client: { hscan: (k: string, c: string) => Promise<[string, string[]]> } };
    const scan = i.client.hscan;
    let pages = 0;
    i.client.hscan = async (k, c) => {
      // Between two pages: a peer deletes 10.0.0.0/8 (the hash read so far still has it).
      if (pages++ === 1) i.onMessage(encodeEvent({ from: 'peer', kind: 'access', cidr: '10.0.0.0/8', list: undefined }));
      return scan(k, c);
    };
    await i.sync();
    expect(pages).toBeGreaterThan(1);
    expect(applied).toContainEqual({ cidr: '10.0.0.0/8', list: undefined });
    expect(applied.filter((a) => a.cidr === '10.0.0.0/8')).toEqual([{ cidr: '10.0.0.0/8', list: undefined }]);
  });

  it('guardedLocal guards apply*/adopt* methods, including ones LocalState gains later', () => {
    const failed: string[] = [];
    const base = {
      ...recorder({ throwing: true }).local,
      applyAccessBatch: () => {
        throw new Error('x');
      },
    };
    const g = guardedLocal(base, (m) => failed.push(m)) as typeof base;
    g.applyAccess({ cidr: '10.0.0.0/8', list: 'deny' });
    g.applyAccessBatch();
    expect(failed).toEqual(['applyAccess', 'applyAccessBatch']);
    expect(g.runtimeAccess()).toBeInstanceOf(Map);
  });

  it('fuzz: any text on the channel never throws and applies only valid events, canonical', () => {
    fc.assert(
      fc.property(fc.array(anyText, { maxLength: 20 }), (texts) => {
        const { local, applied } = recorder();
        const { s } = sharedWith(local);
        const i = s as unknown as Internals;
        let valid = 0;
        for (const t of texts) {
          expect(() => i.onMessage(t)).not.toThrow();
          const d = decodeEventText(t);
          if (d.ok) {
            valid++;
            expect(applied.at(-1)).toEqual({ cidr: d.value.cidr, list: d.value.list });
          }
        }
        expect(applied).toHaveLength(valid);
        expect(s.status().rejected.event).toBe(texts.length - valid);
        for (const c of applied) expect(canonicalPrefix(c.cidr)).toBe(c.cidr);
      }),
      { numRuns: 300 },
    );
  });

  it('fuzz: any hash fields never throw out of a sync and apply only valid entries', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(
          fc.oneof(
            fc.string({ maxLength: 80 }),
            fc.ipV6().map((a) => `${a}%x/64`),
            fc.ipV4().map((a) => `${a}/32`),
          ),
          fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('allow', 'deny')),
        ),
        async (hash) => {
          const { local, applied } = recorder();
          const { s } = sharedWith(local, () => hash);
          await (s as unknown as Internals).sync();
          const { entries, rejected } = decodeAccessHash(hash);
          expect(applied).toEqual([...entries].map(([cidr, e]) => ({ cidr, list: e.list })));
          expect(s.status().rejected.access).toBe(rejected.length);
        },
      ),
      { numRuns: 200 },
    );
  });
});
