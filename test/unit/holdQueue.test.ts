// The hold queue: one timer, FIFO per window, O(1) cancel, expiry order and timing.

import { describe, expect, it } from 'vitest';
import { TimerHoldQueue, type Holdable } from '../../src/proxy/holdQueue.js';

class Item implements Holdable {
  expiredAt: number | undefined;
  constructor(readonly id: number, private readonly log: number[]) {}
  onHoldExpired(): void {
    this.expiredAt = performance.now();
    this.log.push(this.id);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('TimerHoldQueue', () => {
  it('expires items in arrival order after their window, not before', async () => {
    const q = new TimerHoldQueue<Item>();
    const log: number[] = [];
    const start = performance.now();
    const items = [1, 2, 3].map((i) => new Item(i, log));
    for (const it of items) q.add(it, 100);
    expect(q.size).toBe(3);
    await sleep(60);
    expect(log).toEqual([]);
    await sleep(100);
    expect(log).toEqual([1, 2, 3]);
    expect(items[0]!.expiredAt! - start).toBeGreaterThanOrEqual(99);
    expect(q.size).toBe(0);
  });

  it('never calls a cancelled item, and cancel is idempotent', async () => {
    const q = new TimerHoldQueue<Item>();
    const log: number[] = [];
    const a = q.add(new Item(1, log), 50);
    q.add(new Item(2, log), 50);
    q.cancel(a);
    q.cancel(a);
    expect(q.size).toBe(1);
    await sleep(100);
    expect(log).toEqual([2]);
  });

  it('keeps separate windows in deadline order (a shorter window added later expires first)', async () => {
    const q = new TimerHoldQueue<Item>();
    const log: number[] = [];
    q.add(new Item(1, log), 150);
    q.add(new Item(2, log), 30);
    await sleep(80);
    expect(log).toEqual([2]);
    await sleep(120);
    expect(log).toEqual([2, 1]);
  });

  it('uses one timer however many items are held', () => {
    let now = 0;
    const q = new TimerHoldQueue<Item>(() => now);
    const before = (process as unknown as { getActiveResourcesInfo(): string[] }).getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    for (let i = 0; i < 10_000; i++) q.add(new Item(i, []), 1000);
    const after = (process as unknown as { getActiveResourcesInfo(): string[] }).getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    expect(after - before).toBe(1);
    expect(q.close()).toHaveLength(10_000);
    now = 1;
  });

  it('lets a callback add and cancel entries', async () => {
    const q = new TimerHoldQueue<Holdable>();
    const log: string[] = [];
    q.add({ onHoldExpired: () => { log.push('a'); q.add({ onHoldExpired: () => log.push('c') }, 10); } }, 10);
    await sleep(60);
    expect(log).toEqual(['a', 'c']);
  });
});
