// The lookup module (src/reputation/lookup.ts) against a real unbound on loopback: answers, IPv6
// names, the cache and its clamped TTL, single flight, the in-flight bound, refused answers, timeouts.

import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onHost, type RunningUnbound, startUnbound } from '../../lab/unbound.js';
import type { ReputationConfig } from '../../src/config/schema.js';
import { Reputation } from '../../src/reputation/lookup.js';
import { skipWithout } from '../helpers/privileged.js';

const skip = skipWithout('unbound', 'unbound', 'DNSBL lookups against unbound');
let unbound: RunningUnbound;
const LISTED4 = '192.0.2.7';
const LISTED6 = '2001:db8:1::7';
const ALLOWED = '192.0.2.8';

function config(over: Partial<ReputationConfig> = {}): ReputationConfig {
  return {
    dnsbl: [
      { zone: 'bl3.test', weight: 3, match: undefined, name: undefined },
      { zone: 'one.test', weight: 1, match: ['127.0.0.2'], name: 'one' },
      { zone: 'wl.test', weight: -2, match: ['127.0.[0..255].[1..3]'], name: 'allowlist' },
    ],
    threshold: 3,
    allowThreshold: -1,
    action: 'reject',
    reply: '554 5.7.1 blocked using {name}',
    timeoutMs: 1000,
    resolvers: [unbound.server],
    minTtlMs: 10_000,
    maxTtlMs: 120_000,
    maxInFlight: 100,
    ...over,
  };
}

function logger(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

describe.skipIf(skip)('reputation lookups against a real unbound on loopback', () => {
  beforeAll(async () => {
    unbound = await startUnbound(
      onHost,
      '127.0.0.1',
      [
        { zone: 'bl3.test', listed: { [LISTED4]: '127.0.0.2', [LISTED6]: '127.0.0.3' } },
        { zone: 'one.test', listed: { [LISTED4]: '127.0.0.2', [LISTED6]: '127.0.0.9' } },
        { zone: 'wl.test', listed: { [ALLOWED]: '127.0.5.2' } },
        { zone: 'refused.test', everyName: '127.255.255.254' },
        { zone: 'dead.test', dead: true },
      ],
      { port: 0 },
    );
  }, 30_000);
  afterAll(async () => {
    await unbound?.stop();
  });

  it('scores IPv4 and IPv6 clients from the answers; an unlisted client scores 0', async () => {
    const rep = new Reputation(config(), logger().log);
    const v4 = await rep.lookup(LISTED4);
    expect(v4.score).toBe(4);
    expect(v4.hits).toEqual([
      { name: 'bl3.test', answer: '127.0.0.2', weight: 3 },
      { name: 'one', answer: '127.0.0.2', weight: 1 },
    ]);
    // one.test answers 127.0.0.9 for the IPv6 client: outside its match, so it counts nothing.
    const v6 = await rep.lookup(LISTED6);
    expect(v6).toMatchObject({ score: 3, hits: [{ name: 'bl3.test', answer: '127.0.0.3' }] });
    expect((await rep.lookup(ALLOWED)).score).toBe(-2);
    expect((await rep.lookup('198.51.100.1')).score).toBe(0);
    rep.stop();
  });

  it('concurrent lookups of one client share one query per zone; the answer is cached for its TTL clamped to [minTtl, maxTtl]', async () => {
    let now = 1_000_000;
    const rep = new Reputation(config({ minTtlMs: 10_000, maxTtlMs: 120_000 }), logger().log, () => now);
    const scores = await Promise.all(Array.from({ length: 5 }, () => rep.lookup(LISTED4)));
    expect(scores.map((s) => s.score)).toEqual([4, 4, 4, 4, 4]);
    expect(rep.counters.queries.get('bl3.test')).toBe(1);
    expect(rep.counters.queries.get('wl.test')).toBe(1);
    // Cached: no new query, and the score is known at once.
    expect(rep.cached(LISTED4)?.score).toBe(4);
    await rep.lookup(LISTED4);
    expect(rep.counters.queries.get('bl3.test')).toBe(1);
    // unbound's TTL is 300 s, clamped to maxTtl 120 s: gone after it. wl.test (NXDOMAIN) lasts minTtl 10 s.
    now += 11_000;
    // wl.test's NXDOMAIN is gone (minTtl); the allowlist could bring 4 down to 2 < 3, so nothing is final.
    expect(rep.cached(LISTED4)).toBeUndefined();
    await rep.lookup(LISTED4);
    expect(rep.counters.queries.get('wl.test')).toBe(2);
    expect(rep.counters.queries.get('bl3.test')).toBe(1);
    // With only blocklists missing it would be final; past maxTtl (120 s, not unbound's 300 s) everything is asked again.
    now += 110_000;
    expect(rep.cached(LISTED4)).toBeUndefined();
    await rep.lookup(LISTED4);
    expect(rep.counters.queries.get('bl3.test')).toBe(2);
    rep.stop();
  });

  it('a cached refusal with only blocklists pending is final (refused at accept next time)', async () => {
    const rep = new Reputation(
      config({
        dnsbl: [
          { zone: 'bl3.test', weight: 3, match: undefined, name: undefined },
          { zone: 'dead.test', weight: 3, match: undefined, name: undefined },
        ],
        timeoutMs: 300,
      }),
      logger().log,
    );
    await rep.lookup(LISTED4);
    expect(rep.cached(LISTED4)?.score).toBe(3);
    rep.stop();
  });

  it('over maxInFlight a zone counts 0 and the overflow is counted', async () => {
    const rep = new Reputation(config({ maxInFlight: 1 }), logger().log);
    const s = await rep.lookup(LISTED4);
    expect(rep.counters.overflow).toBe(2);
    expect(s.unanswered).toHaveLength(2);
    expect(s.score).toBe(3);
    rep.stop();
  });

  it('a refused answer (127.255.255.254) counts 0, is counted per query and warned once per zone per hour', async () => {
    const { log, lines } = logger();
    const rep = new Reputation(config({ dnsbl: [{ zone: 'refused.test', weight: 3, match: undefined, name: undefined }] }), log);
    for (const c of ['198.51.100.1', '198.51.100.2', '198.51.100.3']) expect((await rep.lookup(c)).score).toBe(0);
    expect(rep.counters.refused.get('refused.test')).toBe(3);
    const warned = lines.filter((l) => /refused\.test answered 127\.255\.255\.254/.test(String(l.msg)));
    expect(warned).toHaveLength(1);
    expect(warned[0]!.msg).toMatch(/use your own resolver, not a public one/);
    rep.stop();
  });

  it('a zone that never answers times out after reputation.timeout, counts 0 and is logged', async () => {
    const { log, lines } = logger();
    const rep = new Reputation(
      config({
        dnsbl: [
          { zone: 'dead.test', weight: 3, match: undefined, name: undefined },
          { zone: 'bl3.test', weight: 3, match: undefined, name: undefined },
        ],
        timeoutMs: 400,
      }),
      log,
    );
    const t0 = performance.now();
    const s = await rep.lookup(LISTED4);
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(350);
    expect(took).toBeLessThan(1500);
    expect(s).toMatchObject({ score: 3, unanswered: ['dead.test'] });
    expect(rep.counters.timeouts.get('dead.test')).toBe(1);
    expect(lines.some((l) => /DNSBL zone dead\.test did not answer within 400 ms/.test(String(l.msg)))).toBe(true);
    rep.stop();
  });

  it('a reload (update) applies the new lists to the next lookups', async () => {
    const rep = new Reputation(config(), logger().log);
    expect((await rep.lookup(LISTED4)).score).toBe(4);
    rep.update(config({ dnsbl: [{ zone: 'one.test', weight: 5, match: undefined, name: undefined }] }));
    expect((await rep.lookup(LISTED4)).score).toBe(5);
    rep.stop();
  });
});
