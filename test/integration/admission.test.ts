// Admission rolls back on every failure path: when the engine fails a command (ETD_ENGINE_FAULTS), no ghost session keeps a slot.

import { afterEach, describe, expect, it } from 'vitest';
import { rawClient, startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { waitFor } from '../helpers/wait.js';

let etd: TestEtd | undefined;
let backend: TestBackend | undefined;

afterEach(async () => {
  await etd?.stop(200);
  etd = undefined;
  await backend?.close();
  backend = undefined;
});

/** Starts etd with the engine's fault injection set for this start only (the engine reads it when it starts). */
async function startWithFaults(faults: string, doc: Record<string, unknown>): Promise<TestEtd> {
  process.env.ETD_ENGINE_FAULTS = faults;
  try {
    // ETD_ENGINE_FAULTS numbers each engine's own calls ("connect call 2"): these scenarios need
    // one engine, so they run with one worker whatever ETD_TEST_WORKERS says.
    return await startEtdForTest({ workers: 1, ...doc });
  } finally {
    delete process.env.ETD_ENGINE_FAULTS;
  }
}

/** Nothing of the session is left: not in the App, not in the limits, not in the engine driver or the engine. */
function expectNoSlotKept(t: TestEtd): void {
  const app = t.app;
  expect(app.sessions.size).toBe(0);
  expect(app.stats.held).toBe(0);
  expect(app.stats.relaying).toBe(0);
  expect((app as unknown as { book: { counts: { sessions: number; held: number } } }).book.counts.sessions).toBe(0);
  // One thread: its engine driver routes to no session (several workers: their engines' counts below).
  const driver = (app as unknown as { engine: { liveSessions: number } | undefined }).engine;
  if (driver) expect(driver.liveSessions).toBe(0);
  expect(app.engineCounts()?.connections).toBe(0);
}

describe('admission rollback', () => {
  it('epoll_ctl fails with ENOSPC when the hold starts (a flood): the session ends at once, its slot is free, the next client is served', async () => {
    backend = await startBackend({ name: 'b.test' });
    // epoll_ctl call 1 is the listener; call 2 is the first hold.
    etd = await startWithFaults('epoll_ctl:2:ENOSPC', {
      detection: { window: '100ms' },
      limits: { perClient: 1, maxHeld: 1 },
      upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backend.port }] },
    });
    const first = await rawClient(etd.port, () => undefined, 2000);
    expect(first.data.length).toBe(0);
    const [s] = await etd.waitForSummaries(1);
    expect(s).toMatchObject({ verdict: 'client_gone', cause: 'engine_enospc' });
    await waitFor(() => etd!.app.sessions.size === 0 && etd!.app.stats.held === 0 && (etd!.app.engineCounts()?.connections ?? 0) === 0, {
      what: 'the session and its engine connection to be released',
    });
    expectNoSlotKept(etd);
    // perClient 1 and maxHeld 1: a ghost would make this client a 421.
    const second = await rawClient(etd.port, () => undefined, 1500);
    expect(second.data.toString('latin1')).toMatch(/^220 b\.test/);
    const sums = await etd.waitForSummaries(2);
    expect(sums[1]).toMatchObject({ verdict: 'passed', server: 'b' });
    expectNoSlotKept(etd);
  });

  it('connect fails with ENOMEM: a failed attempt like any other (the next server, else 421), the slot is freed', async () => {
    backend = await startBackend({ name: 'b.test' });
    etd = await startWithFaults('connect:1:ENOMEM,connect:2:ENOMEM', {
      detection: { window: '50ms' },
      limits: { perClient: 1 },
      upstream: {
        retries: 1,
        servers: [
          { name: 'b', address: '127.0.0.1', port: backend.port },
          { name: 'c', address: '127.0.0.1', port: backend.port },
        ],
      },
    });
    const r = await rawClient(etd.port, () => undefined, 2000);
    expect(r.data.toString('latin1')).toBe('421 4.3.2 Service not available, try again later\r\n');
    const [s] = await etd.waitForSummaries(1);
    expect(s).toMatchObject({ verdict: 'no_server', cause: 'connect_enomem', attempts: 2 });
    await waitFor(() => etd!.app.sessions.size === 0 && etd!.app.stats.held === 0 && (etd!.app.engineCounts()?.connections ?? 0) === 0, {
      what: 'the session and its engine connection to be released',
    });
    expectNoSlotKept(etd);
    expect(etd.app.pool.get('b')?.active).toBe(0);
    expect(etd.app.pool.get('c')?.active).toBe(0);
    // The third connect is a real one.
    const ok = await rawClient(etd.port, () => undefined, 1500);
    expect(ok.data.toString('latin1')).toMatch(/^220 b\.test/);
  });

  it('stop does not wait for ghosts: with every hold failing, stop returns before the grace time', async () => {
    backend = await startBackend({ name: 'b.test' });
    etd = await startWithFaults('epoll_ctl:2:ENOSPC,epoll_ctl:3:ENOSPC,epoll_ctl:4:ENOSPC', {
      detection: { window: '5s' },
      upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: backend.port }] },
    });
    await Promise.all([0, 1, 2].map(() => rawClient(etd!.port, () => undefined, 1000)));
    await etd.waitForSummaries(3);
    expectNoSlotKept(etd);
    const t = etd;
    etd = undefined;
    // Nothing is left to wait for: stop's wait loop ends on its first check.
    let stopped = false;
    const stopping = t.stop(60_000).then(() => (stopped = true));
    await Promise.race([stopping, new Promise((r) => setTimeout(r, 30_000))]);
    expect(stopped).toBe(true);
  });
});
