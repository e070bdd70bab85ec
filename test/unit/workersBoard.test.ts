// The engine workers' shared board and warning gate: counts across threads, a dead worker's row cleared, one id sequence, one warning per period.

import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { addressBucket, Board, PER_CLIENT_BUCKETS } from '../../src/workers/board.js';
import { warnGate, warnGateBuffer } from '../../src/workers/warnGate.js';

const DIST = path.join(__dirname, '../../dist/src/workers');

/** Runs `code` (an ES module body with `board`/`gate` in scope) in `n` worker threads at once; resolves with their results. */
function inThreads<T>(n: number, code: string, data: Record<string, unknown>): Promise<T[]> {
  const src = `
    import { workerData, parentPort } from 'node:worker_threads';
    const { Board } = await import(${JSON.stringify(pathToFileURL(path.join(DIST, 'board.js')).href)});
    const { warnGate } = await import(${JSON.stringify(pathToFileURL(path.join(DIST, 'warnGate.js')).href)});
    const board = workerData.board ? Board.attach(workerData.board, workerData.workers) : undefined;
    const gate = workerData.warnings ? warnGate(workerData.warnings) : undefined;
    const index = workerData.index;
    const result = await (async () => { ${code} })();
    parentPort.postMessage(result);
  `;
  return Promise.all(
    Array.from(
      { length: n },
      (_, index) =>
        new Promise<T>((resolve, reject) => {
          const w = new Worker(new URL(`data:text/javascript,${encodeURIComponent(src)}`), { workerData: { ...data, index } });
          w.once('message', (m: T) => {
            resolve(m);
            void w.terminate();
          });
          w.once('error', reject);
        }),
    ),
  );
}

describe('the shared board', () => {
  it('counts sessions, held, relaying and per-client connections over all workers', () => {
    const b = Board.create(2);
    b.started(0, '192.0.2.1');
    b.started(1, '192.0.2.1');
    b.started(1, '192.0.2.2');
    expect([b.sessions, b.held, b.relaying]).toEqual([3, 3, 0]);
    expect(b.perClient('192.0.2.1')).toBe(2);
    expect(b.perClient('192.0.2.2')).toBe(1);
    b.relayingNow(1);
    expect([b.sessions, b.held, b.relaying]).toEqual([3, 2, 1]);
    b.ended(1, '192.0.2.1', true);
    b.ended(0, '192.0.2.1', false);
    expect([b.sessions, b.held, b.relaying]).toEqual([1, 1, 0]);
    expect(b.perClient('192.0.2.1')).toBe(0);
    expect(b.row(1)).toMatchObject({ sessions: 1, held: 1, relaying: 0 });
  });

  it("a dead worker's row leaves the totals, its per-client and server counts too", () => {
    const b = Board.create(3);
    for (let i = 0; i < 5; i++) b.started(2, '198.51.100.7');
    b.relayingNow(2);
    b.serverActive(2, 4, 1);
    b.started(0, '198.51.100.7');
    b.serverActive(0, 4, 1);
    expect(b.server(4)).toEqual({ active: 2, total: 2 });
    const had = b.clearWorker(2);
    expect(had).toMatchObject({ sessions: 5, held: 4, relaying: 1 });
    expect([b.sessions, b.held, b.relaying]).toEqual([1, 1, 0]);
    expect(b.perClient('198.51.100.7')).toBe(1);
    expect(b.server(4)).toEqual({ active: 1, total: 2 });
  });

  it('stress switches once: of two callers only one is told it changed it', () => {
    const b = Board.create(2);
    expect(b.setStressed(true)).toBe(true);
    expect(b.setStressed(true)).toBe(false);
    expect(b.stressed).toBe(true);
    expect(b.setStressed(false)).toBe(true);
    expect(b.stressChanges).toBe(2);
  });

  it('buckets spread addresses (the per-client hash)', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 10_000; i++) seen.add(addressBucket(`10.${i >> 8}.${i & 255}.1`));
    // 10,000 addresses in 131,072 buckets: a few hundred share one, not thousands.
    expect(seen.size).toBeGreaterThan(9_500);
    for (const s of seen) expect(s).toBeLessThan(PER_CLIENT_BUCKETS);
  });

  it('two threads counting at once: exact totals, and one id sequence without a duplicate', async () => {
    const b = Board.create(2);
    const N = 20_000;
    const ids = await inThreads<number[]>(
      2,
      `const out = [];
       for (let i = 0; i < ${N}; i++) { board.started(index, '203.0.113.' + (i % 50)); out.push(board.nextId()); if (i % 2) board.ended(index, '203.0.113.' + (i % 50), false); }
       return out;`,
      { board: b.buffer, workers: 2 },
    );
    expect(b.sessions).toBe(N); // each thread ended half of its N
    expect(b.held).toBe(N);
    expect(b.row(0).sessions + b.row(1).sessions).toBe(N);
    let perClient = 0;
    for (let i = 0; i < 50; i++) perClient += b.perClient(`203.0.113.${i}`);
    expect(perClient).toBe(N);
    const all = [...ids[0]!, ...ids[1]!];
    expect(new Set(all).size).toBe(2 * N);
    expect(Math.max(...all)).toBe(2 * N);
  });
});

describe('the warning gate', () => {
  it('lets one warning per key and period through, across threads', async () => {
    const warnings = warnGateBuffer();
    const now = Date.now();
    const passed = await inThreads<number>(
      4,
      `let n = 0; for (let i = 0; i < 1000; i++) if (gate('refused:bl.test', 3_600_000, ${now})) n++; return n;`,
      { warnings },
    );
    expect(passed.reduce((a, b) => a + b, 0)).toBe(1);
    const gate = warnGate(warnings);
    expect(gate('refused:bl.test', 3_600_000, now + 1000)).toBe(false);
    expect(gate('refused:other.test', 3_600_000, now + 1000)).toBe(true);
    expect(gate('refused:bl.test', 3_600_000, now + 3_600_001)).toBe(true);
  });
});
