// The connection-rate limiter (limits.rate): GCRA bursts and refill, refusals not counted, /64 grouping, the LRU bound, reloads.

import { describe, expect, it } from 'vitest';
import { type Address, parseAddress } from '../../src/config/cidr.js';
import { ConnRate, connRateFor, type RateSettings, rateKey } from '../../src/policy/connRate.js';

const key = (text: string) => rateKey(parseAddress(text) as Address);

/** A limiter on a clock the test moves. */
function limiter(settings: RateSettings, maxClients?: number) {
  const clock = { ms: 1_000_000 };
  const rate = new ConnRate(settings, () => clock.ms, maxClients);
  return { rate, clock };
}

/** Admits `n` connections of `client` at the current instant; the answers. */
const burst = (rate: ConnRate, client: string, n: number) => Array.from({ length: n }, () => rate.admit(key(client)));

describe('ConnRate', () => {
  it.each([
    // perClient, interval, burst size → admitted
    [1, 1000, 5, 1],
    [3, 1000, 10, 3],
    [3, 1000, 3, 3],
    [7, 60_000, 20, 7],
    [10, 1, 11, 10],
    [10_000, 1000, 10_001, 10_000],
  ])('perClient %i per %i ms: a burst of %i at one instant admits exactly %i', (perClient, intervalMs, size, admitted) => {
    const { rate } = limiter({ perClient, intervalMs });
    const answers = burst(rate, '192.0.2.1', size);
    expect(answers.filter(Boolean).length).toBe(admitted);
    // The admitted ones come first: a refusal never precedes an admission.
    expect(answers.indexOf(false) === -1 || answers.slice(answers.indexOf(false)).every((a) => !a)).toBe(true);
  });

  it('after a burst, one more connection every interval / perClient; a whole interval refills the burst', () => {
    const { rate, clock } = limiter({ perClient: 3, intervalMs: 900 });
    expect(burst(rate, '192.0.2.1', 4)).toEqual([true, true, true, false]);
    clock.ms += 299;
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    clock.ms += 1; // 300 ms = 900 / 3
    expect(burst(rate, '192.0.2.1', 2)).toEqual([true, false]);
    clock.ms += 900;
    expect(burst(rate, '192.0.2.1', 4)).toEqual([true, true, true, false]);
  });

  it('refused connections are not counted: a client hammering every 10 ms gets exactly the rate through', () => {
    const { rate, clock } = limiter({ perClient: 5, intervalMs: 1000 });
    let admitted = 0;
    for (let t = 0; t < 10_000; t += 10) {
      if (rate.admit(key('192.0.2.1'))) admitted++;
      clock.ms += 10;
    }
    // The burst of 5, then one every 200 ms for 10 s (the last at 9,800 ms).
    expect(admitted).toBe(5 + 49);
  });

  it('the interval need not divide by perClient: no rounding refuses the last of a burst or admits one too many', () => {
    const { rate, clock } = limiter({ perClient: 3, intervalMs: 1000 });
    expect(burst(rate, '192.0.2.1', 4)).toEqual([true, true, true, false]);
    clock.ms += 333;
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    clock.ms += 1; // 334 ms ≥ 333.3 ms
    expect(rate.admit(key('192.0.2.1'))).toBe(true);
  });

  it('clients are counted apart; IPv6 by /64; IPv4-mapped as IPv4; an IPv4 number never meets an IPv6 prefix', () => {
    const { rate } = limiter({ perClient: 2, intervalMs: 1000 });
    expect(burst(rate, '192.0.2.1', 3)).toEqual([true, true, false]);
    expect(burst(rate, '192.0.2.2', 2)).toEqual([true, true]);
    expect(rate.admit(key('::ffff:192.0.2.1'))).toBe(false);
    expect(burst(rate, '2001:db8:1:2::1', 1)).toEqual([true]);
    expect(burst(rate, '2001:db8:1:2:ffff::9', 2)).toEqual([true, false]);
    expect(burst(rate, '2001:db8:1:3::1', 2)).toEqual([true, true]);
    // 0.0.0.5 is the number 5; ::5 is in the /64 whose key is 0n, and 0:0:0:5:: has key 5n.
    expect(burst(rate, '0.0.0.5', 2)).toEqual([true, true]);
    expect(burst(rate, '0:0:0:5::1', 2)).toEqual([true, true]);
    expect(key('0.0.0.5')).not.toBe(key('0:0:0:5::1'));
  });

  it('remembers at most maxClients, forgetting the least recently seen (a refused connection counts as seen)', () => {
    const { rate } = limiter({ perClient: 1, intervalMs: 60_000 }, 3);
    for (const c of ['192.0.2.1', '192.0.2.2', '192.0.2.3']) expect(rate.admit(key(c))).toBe(true);
    expect(rate.admit(key('192.0.2.1'))).toBe(false); // .1 is now the most recent
    expect(rate.admit(key('192.0.2.4'))).toBe(true); // evicts .2
    expect(rate.size).toBe(3);
    expect(rate.admit(key('192.0.2.2'))).toBe(true); // forgotten: a fresh burst (evicts .3)
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    expect(rate.admit(key('192.0.2.4'))).toBe(false);
    expect(rate.size).toBe(3);
  });

  it('stays within maxClients under a flood of distinct clients', () => {
    const { rate, clock } = limiter({ perClient: 10, intervalMs: 1000 }, 1000);
    for (let i = 0; i < 50_000; i++) {
      rate.admit(i);
      if (i % 100 === 0) clock.ms++;
    }
    expect(rate.size).toBe(1000);
  });

  it('agrees with a plain model (a Map in recency order, a full scan to evict) on 20,000 random connections', () => {
    const settings = { perClient: 3, intervalMs: 1000 };
    const { rate, clock } = limiter(settings, 8);
    const model = new Map<number, number>(); // client → TAT, least recently seen first
    let seed = 7;
    let admitted = 0;
    const random = (n: number) => {
      // xorshift32: deterministic, so a failure names the same connection every run.
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    for (let i = 0; i < 20_000; i++) {
      clock.ms += random(60);
      const client = random(12);
      // In thirds of a millisecond: one connection costs 1000 ms / 3, the bucket holds 1000 ms.
      const now = clock.ms * 3;
      const prev = model.get(client);
      model.delete(client);
      if (prev === undefined && model.size >= 8) model.delete(model.keys().next().value as number);
      const tat = Math.max(prev ?? now, now);
      const ok = tat + 1000 - now <= 3000;
      model.set(client, ok ? tat + 1000 : (prev as number));
      expect(rate.admit(client), `connection ${i} of client ${client}`).toBe(ok);
      if (ok) admitted++;
    }
    expect(rate.size).toBe(8);
    // Both answers occur often: the walk exercised refusals, refills and evictions.
    expect(admitted).toBeGreaterThan(5000);
    expect(admitted).toBeLessThan(19_000);
  });

  it('update: the same settings keep everything; new ones keep what each client owes, capped at one new interval', () => {
    const { rate, clock } = limiter({ perClient: 4, intervalMs: 1000 });
    expect(burst(rate, '192.0.2.1', 4)).toEqual([true, true, true, true]); // owes 1000 ms
    expect(burst(rate, '192.0.2.2', 2)).toEqual([true, true]); // owes 500 ms
    rate.update({ perClient: 4, intervalMs: 1000 });
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    // Twice the rate (8 per second): .1 owes 1000 ms, a whole new bucket; .2 owes 500 ms of it, so 4 more fit.
    rate.update({ perClient: 8, intervalMs: 1000 });
    expect(rate.current).toEqual({ perClient: 8, intervalMs: 1000 });
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    expect(burst(rate, '192.0.2.2', 5)).toEqual([true, true, true, true, false]);
    // A shorter interval caps what is owed: after 100 ms one of 2 per 100 ms fits again.
    rate.update({ perClient: 2, intervalMs: 100 });
    clock.ms += 50;
    expect(rate.admit(key('192.0.2.1'))).toBe(true);
    expect(rate.admit(key('192.0.2.1'))).toBe(false);
    // Clients that owe nothing keep nothing: a whole new burst.
    clock.ms += 10_000;
    rate.update({ perClient: 3, intervalMs: 100 });
    expect(burst(rate, '192.0.2.1', 4)).toEqual([true, true, true, false]);
  });

  it('connRateFor: off without settings, a new limiter when turned on, the same one (counts kept) on a reload', () => {
    expect(connRateFor(undefined, undefined)).toBeUndefined();
    const a = connRateFor(undefined, { perClient: 1, intervalMs: 60_000 })!;
    expect(a.admit(key('192.0.2.1'))).toBe(true);
    const b = connRateFor(a, { perClient: 1, intervalMs: 60_000 });
    expect(b).toBe(a);
    expect(b!.admit(key('192.0.2.1'))).toBe(false);
    expect(connRateFor(a, undefined)).toBeUndefined();
  });
});
