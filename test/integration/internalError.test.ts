// A JavaScript exception in one session's decision ends that session (verdict error, cause internal_error), never the process or the other sessions.

import net from 'node:net';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { Session } from '../../src/proxy/session.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';

let backend: TestBackend;
let etd: TestEtd;

beforeAll(async () => {
  backend = await startBackend({ name: 'mx.test' });
  etd = await startEtdForTest({
    detection: { window: '50ms' },
    upstream: { servers: [{ name: 'a', address: '127.0.0.1', port: backend.port }] },
  });
});
afterAll(async () => {
  await etd.stop(200);
  await backend.close();
});

/** A client that waits for the greeting, says QUIT, and reports what it got and how it ended. */
function client(port: number): Promise<{ localPort: number; data: string; ended: 'end' | 'error' }> {
  return new Promise((resolve) => {
    let data = '';
    let localPort = 0;
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      localPort = s.localPort!;
    });
    s.on('data', (c: Buffer) => {
      data += c.toString('latin1');
      if (/^220 /m.test(data)) s.write('QUIT\r\n');
    });
    s.on('error', () => resolve({ localPort, data, ended: 'error' }));
    s.on('close', () => resolve({ localPort, data, ended: 'end' }));
  });
}

it('a decision that throws ends only its own session, with a summary; the others pass and etd keeps serving', async () => {
  // The bug: the greeting handler throws for one client (its port chosen after it connects).
  let victim = -1;
  const greeted = Session.prototype.greeted;
  const spy = vi.spyOn(Session.prototype, 'greeted').mockImplementation(function (this: Session, ...args) {
    if (this.clientPort === victim) throw new Error('a bug in a decision');
    return greeted.apply(this, args);
  });
  try {
    const others = [client(etd.port), client(etd.port)];
    const bad = net.connect({ port: etd.port, host: '127.0.0.1' });
    await new Promise((r) => bad.once('connect', r));
    victim = bad.localPort!;
    const badEnd = new Promise<string>((r) => {
      bad.on('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
      bad.on('close', () => r('closed'));
    });
    const more = [client(etd.port), client(etd.port)];
    const results = await Promise.all([...others, ...more]);
    expect(await badEnd).toMatch(/ECONNRESET|closed/);
    await etd.waitForSummaries(5);
    const mine = etd.summaries.find((s) => s.client.endsWith(`:${victim}`));
    expect(mine).toMatchObject({ verdict: 'error', cause: 'internal_error' });
    const rest = etd.summaries.filter((s) => s !== mine);
    expect(rest.map((s) => s.verdict)).toEqual(['passed', 'passed', 'passed', 'passed']);
    expect(results.every((r) => /^220 /m.test(r.data) && /^221 /m.test(r.data))).toBe(true);
    expect(etd.app.engineCounts()!.handlerErrors).toBeGreaterThanOrEqual(1);
    expect(etd.app.sessions.size).toBe(0);
  } finally {
    spy.mockRestore();
  }
  // And afterwards: a new session passes.
  const after = await client(etd.port);
  expect(after.data).toMatch(/^221 /m);
});
