// Starts an in-process etd App on loopback for integration tests and collects its session summaries.

import net from 'node:net';
import pino from 'pino';
import { App } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import type { SessionSummary } from '../../src/proxy/session.js';
import { waitFor } from './wait.js';

export interface TestEtd {
  readonly app: App;
  readonly port: number;
  readonly summaries: SessionSummary[];
  waitForSummaries(n: number, timeoutMs?: number): Promise<SessionSummary[]>;
  stop(graceMs?: number): Promise<void>;
}

type Doc = Record<string, unknown>;

/**
 * Health checks connect to the backends on their own schedule, and tests that count backend
 * connections would see them: they are off unless the test's `upstream` sets `health`.
 */
function withoutHealthChecks(doc: Doc): Doc {
  const upstream = doc.upstream as Doc | undefined;
  if (!upstream || 'health' in upstream) return doc;
  return { ...doc, upstream: { ...upstream, health: { enabled: false } } };
}

/**
 * Engine threads of the etd a test starts: ETD_TEST_WORKERS (1 when unset). `npm test` runs the
 * proxy scenarios a second time with 2 (vitest.workers.config.ts); a test that sets `workers` wins.
 */
export function testWorkers(): number {
  const n = Number(process.env.ETD_TEST_WORKERS ?? 1);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new Error(`ETD_TEST_WORKERS must be 1..16, not ${process.env.ETD_TEST_WORKERS}`);
  return n;
}

/** `doc` is a YAML-shaped config document; the listener defaults to 127.0.0.1:0 in plain mode. */
export async function startEtdForTest(doc: Doc): Promise<TestEtd> {
  // No state file unless a test asks for one (tests must not write /var/lib/etd). Every test client
  // is 127.0.0.1, so the caches and the per-client limit are off unless a test turns them on.
  const config = validateConfig({
    listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
    log: { level: 'silent' },
    state: { path: ':memory:' },
    api: { enabled: false },
    cache: { enabled: false },
    limits: { perClient: 0 },
    workers: testWorkers(),
    ...withoutHealthChecks(doc),
  });
  const app = new App(config, pino({ level: process.env.ETD_TEST_LOG ?? 'silent' }));
  const summaries: SessionSummary[] = [];
  app.observe({ sessionEnded: (s) => summaries.push(s) });
  await app.start();
  const port = app.listenerList()[0]!.addresses()[0]!.port;
  return {
    app,
    port,
    summaries,
    async waitForSummaries(n, timeoutMs = 15_000) {
      await waitFor(() => summaries.length >= n, {
        timeout: timeoutMs,
        what: () => `${n} session summaries, got ${summaries.length}: ${JSON.stringify(summaries)}`,
      });
      return summaries;
    },
    stop: (graceMs = 1000) => app.stop(graceMs),
  };
}

export interface RawResult {
  data: Buffer;
  /** How the connection ended: 'end' (FIN), 'reset' (RST), or 'open' if the script closed it. */
  closedBy: 'end' | 'reset' | 'open';
  firstByteAfterMs: number | undefined;
}

/**
 * A scripted raw TCP client: runs `script` once connected, collects everything received until
 * the server closes or `timeoutMs` passes.
 */
export function rawClient(port: number, script: (s: net.Socket) => void, timeoutMs = 5000, host = '127.0.0.1'): Promise<RawResult> {
  return new Promise((resolve) => {
    const start = performance.now();
    const chunks: Buffer[] = [];
    let first: number | undefined;
    let done = false;
    const s = net.connect({ port, host, allowHalfOpen: false });
    const finish = (closedBy: RawResult['closedBy']) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ data: Buffer.concat(chunks), closedBy, firstByteAfterMs: first });
    };
    const timer = setTimeout(() => finish('open'), timeoutMs);
    s.on('connect', () => script(s));
    s.on('data', (c) => {
      first ??= performance.now() - start;
      chunks.push(c);
    });
    s.on('end', () => finish('end'));
    s.on('error', (e: NodeJS.ErrnoException) => finish(e.code === 'ECONNRESET' ? 'reset' : 'end'));
    s.on('close', () => finish('end'));
  });
}
