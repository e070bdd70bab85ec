// The per-second ring behind GET /v1/history: aggregation, gaps, laps, since/seconds windows.

import { describe, expect, it } from 'vitest';
import { SecondRing } from '../../src/api/history.js';

const T0 = 1_800_000_000_000; // a whole second, in ms

describe('SecondRing', () => {
  it('adds sessions up per second by verdict, counts early talkers, averages connect times', () => {
    const r = new SecondRing(60);
    r.record(T0 + 10, { verdict: 'early_talker', talkedAfterMs: 3 });
    r.record(T0 + 500, { verdict: 'early_talker', talkedAfterMs: 9 });
    r.record(T0 + 900, { verdict: 'passed', connectMs: 2 });
    r.record(T0 + 999, { verdict: 'passed', connectMs: 4 });
    r.sample(T0 + 990, 7, 2);
    r.record(T0 + 1000, { verdict: 'no_server' });
    const c = r.columns(T0 + 2000);
    expect(c.t.slice(-2)).toEqual([T0 / 1000, T0 / 1000 + 1]);
    expect(c.verdicts.early_talker.slice(-2)).toEqual([2, 0]);
    expect(c.verdicts.passed.slice(-2)).toEqual([2, 0]);
    expect(c.verdicts.no_server.slice(-2)).toEqual([0, 1]);
    expect(c.earlyTalkers.slice(-2)).toEqual([2, 0]);
    expect(c.held.slice(-2)).toEqual([7, null]);
    expect(c.relaying.slice(-2)).toEqual([2, null]);
    expect(c.connectMsAvg.slice(-2)).toEqual([3, null]);
    expect(c.connectMsMax.slice(-2)).toEqual([4, null]);
  });

  it('leaves the current, unfinished second out and spans at most capacity - 1 seconds', () => {
    const r = new SecondRing(10);
    r.record(T0 + 5000, { verdict: 'passed' });
    const c = r.columns(T0 + 5100);
    expect(c.t).toHaveLength(9);
    expect(c.t.at(-1)).toBe(T0 / 1000 + 4);
    expect(c.verdicts.passed.every((n) => n === 0)).toBe(true);
  });

  it('a slot a lap old reads as empty, not as the old second', () => {
    const r = new SecondRing(10);
    r.record(T0, { verdict: 'passed' });
    r.sample(T0, 3, 1);
    // Ten seconds later the same slot holds another second; one recorded in it resets it.
    r.record(T0 + 10_000, { verdict: 'early_talker', talkedAfterMs: 1 });
    const c = r.columns(T0 + 11_000);
    expect(c.t.at(-1)).toBe(T0 / 1000 + 10);
    expect(c.verdicts.passed.at(-1)).toBe(0);
    expect(c.verdicts.early_talker.at(-1)).toBe(1);
    expect(c.held.at(-1)).toBe(null);
    // A second of the old lap that nobody wrote over is past the window: not returned at all.
    expect(c.t).not.toContain(T0 / 1000);
  });

  it('since and seconds narrow the window (polling for what is new)', () => {
    const r = new SecondRing(100);
    for (let i = 0; i < 20; i++) r.record(T0 + i * 1000, { verdict: 'passed' });
    const now = T0 + 20_000;
    expect(r.columns(now, { seconds: 5 }).t).toEqual([15, 16, 17, 18, 19].map((i) => T0 / 1000 + i));
    expect(r.columns(now, { since: T0 / 1000 + 17 }).t).toEqual([18, 19].map((i) => T0 / 1000 + i));
    expect(r.columns(now, { since: T0 / 1000 + 19 }).t).toEqual([]);
    expect(r.columns(now, { since: 0, seconds: 3 }).t).toHaveLength(3);
  });

  it('refuses a capacity it cannot work with', () => {
    expect(() => new SecondRing(1)).toThrow(RangeError);
    expect(() => new SecondRing(2.5)).toThrow(RangeError);
  });
});
