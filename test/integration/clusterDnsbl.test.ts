// DNSBL answers shared between gateways over a real Redis: a client listed by A's lookups (real
// unbound on loopback) is refused on B from A's answers, although B's own resolver never answers.

import dgram from 'node:dgram';
import net from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startRedis, type TestRedis } from '../../lab/redis.js';
import { onHost, type RunningUnbound, startUnbound } from '../../lab/unbound.js';
import { App } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import type { SessionSummary } from '../../src/proxy/protocol.js';
import { rawClient, testWorkers } from '../helpers/etd.js';
import { skipWithout } from '../helpers/privileged.js';
import { waitFor } from '../helpers/wait.js';

const skip =
  skipWithout('redis-server', 'redis-server', 'DNSBL answers shared over Redis') ||
  skipWithout('unbound', 'unbound', 'DNSBL answers shared over Redis');
const WINDOW_MS = 3000;

describe.skipIf(skip)('DNSBL answers shared over a real Redis', () => {
  let redis: TestRedis;
  let unbound: RunningUnbound;
  let silent: dgram.Socket;
  let backend: net.Server;
  const apps: App[] = [];

  beforeAll(async () => {
    redis = await startRedis('127.0.0.1', await freePort());
    // Loopback clients come from 127.0.0.1: the zone lists it.
    unbound = await startUnbound(onHost, '127.0.0.1', [{ zone: 'bl.test', listed: { '127.0.0.1': '127.0.0.2' } }], { port: 0 });
    // B's resolver: a UDP socket that never answers (a dead resolver), so only a peer can answer B.
    silent = dgram.createSocket('udp4').on('message', () => undefined);
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
    backend = net.createServer((s) => s.end('220 backend ESMTP\r\n'));
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  }, 30_000);

  afterAll(async () => {
    for (const a of apps) await a.stop(200);
    await redis?.kill('SIGKILL');
    await unbound?.stop();
    silent?.close();
    await new Promise((r) => backend?.close(r));
  });

  async function gateway(resolver: string): Promise<{ app: App; port: number; summaries: SessionSummary[] }> {
    const config = validateConfig({
      workers: testWorkers(),
      listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
      detection: { window: `${WINDOW_MS}ms` },
      upstream: {
        servers: [{ name: 'b', address: '127.0.0.1', port: (backend.address() as net.AddressInfo).port }],
        health: { enabled: false },
      },
      state: { path: ':memory:' },
      api: { enabled: false },
      log: { level: 'silent' },
      reputation: { dnsbl: [{ zone: 'bl.test', weight: 3 }], resolvers: [resolver], timeout: '2500ms' },
      cluster: { redis: { url: `redis://127.0.0.1:${redis.port}`, keyPrefix: 'dnsbl-share:', commandTimeout: '300ms' } },
    });
    const app = new App(config, pino({ level: 'silent' }));
    const summaries: SessionSummary[] = [];
    app.observe({ sessionEnded: (s) => summaries.push(s) });
    await app.start();
    apps.push(app);
    return { app, port: app.listenerList()[0]!.addresses()[0]!.port, summaries };
  }

  it("B refuses a client listed by A's lookups, from A's answer, long before its own resolver could (it never answers)", async () => {
    const a = await gateway(unbound.server);
    const b = await gateway(`127.0.0.1:${(silent.address() as net.AddressInfo).port}`);
    await waitFor(() => a.app.cluster!.up && b.app.cluster!.up, { what: 'both connected to Redis' });

    const onA = await rawClient(a.port, () => undefined, WINDOW_MS + 3000);
    expect(onA.data.toString()).toMatch(/^554 /);
    await waitFor(() => a.summaries.length > 0, { what: "A's summary line" });
    expect(a.summaries[0]).toMatchObject({ verdict: 'dnsbl', cause: 'dnsbl_reject', score: 3 });
    await waitFor(() => a.app.cluster!.status().pendingWrites === 0, { what: "A's answer written to Redis" });

    const t0 = performance.now();
    const onB = await rawClient(b.port, () => undefined, WINDOW_MS + 3000);
    const ms = performance.now() - t0;
    console.log(`B refused the client from A's shared answer after ${ms.toFixed(1)} ms (window ${WINDOW_MS} ms, B's own resolver silent)`);
    expect(onB.data.toString()).toMatch(/^554 /);
    await waitFor(() => b.summaries.length > 0, { what: "B's summary line" });
    expect(b.summaries[0]).toMatchObject({
      verdict: 'dnsbl',
      cause: 'dnsbl_reject',
      score: 3,
      lists: [{ name: 'bl.test', answer: '127.0.0.2' }],
    });
    expect(b.app.reputation.counters.fromPeers).toBeGreaterThanOrEqual(1);
    // Decided from the peer's answer, not at the end of B's window or of its query's timeout.
    expect(b.summaries[0]!.heldMs).toBeLessThan(1000);
  }, 30_000);
});
