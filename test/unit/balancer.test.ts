// Balancers: weighted round-robin within ±1 of the weights, leastconn, first, backups.

import { describe, expect, it } from 'vitest';
import { type Candidate, First, LeastConn, RoundRobin } from '../../src/backend/balancer.js';

const c = (name: string, weight = 1, active = 0, backup = false): Candidate => ({ name, weight, active, backup });

describe('RoundRobin', () => {
  it('is within ±1 of the weights over 1,000 picks, and interleaves', () => {
    const rr = new RoundRobin();
    const list = [c('a', 5), c('b', 3), c('c', 2)];
    const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
    const seq: string[] = [];
    for (let i = 0; i < 1000; i++) {
      const p = rr.pick(list)!.name;
      counts[p]!++;
      seq.push(p);
    }
    expect(Math.abs(counts.a! - 500)).toBeLessThanOrEqual(1);
    expect(Math.abs(counts.b! - 300)).toBeLessThanOrEqual(1);
    expect(Math.abs(counts.c! - 200)).toBeLessThanOrEqual(1);
    expect(seq.slice(0, 10).join('')).not.toMatch(/aaaaa/);
  });

  it('alternates equal servers', () => {
    const rr = new RoundRobin();
    const list = [c('a'), c('b')];
    expect([1, 2, 3, 4].map(() => rr.pick(list)!.name)).toEqual(['a', 'b', 'a', 'b']);
  });

  it('uses backups only when no primary is usable', () => {
    const rr = new RoundRobin();
    expect(rr.pick([c('a'), c('bk', 1, 0, true)])!.name).toBe('a');
    expect(rr.pick([c('bk', 1, 0, true)])!.name).toBe('bk');
    expect(rr.pick([])).toBeUndefined();
  });
});

describe('LeastConn', () => {
  it('picks the least-loaded server relative to weight', () => {
    const lc = new LeastConn();
    expect(lc.pick([c('a', 1, 5), c('b', 1, 2), c('c', 1, 3)])!.name).toBe('b');
    expect(lc.pick([c('a', 4, 4), c('b', 1, 2)])!.name).toBe('a');
  });
  it('shares ties', () => {
    const lc = new LeastConn();
    const picks = new Set([1, 2, 3, 4].map(() => lc.pick([c('a'), c('b')])!.name));
    expect(picks).toEqual(new Set(['a', 'b']));
  });
});

describe('First', () => {
  it('takes the first usable server in order, backups last', () => {
    const f = new First();
    expect(f.pick([c('bk', 1, 0, true), c('a'), c('b')])!.name).toBe('a');
  });
});
