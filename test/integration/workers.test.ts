// Engine threads (config workers: 2) with real sockets and real SMTP software: connections spread, a thread killed under load, limits and balancing across threads (exact: one JS thread decides), reload, stop.
//
// Every etd here runs two engine threads whatever ETD_TEST_WORKERS says. Figures the tests
// measure are printed (console.log); nothing asserts on speed.

import net from 'node:net';
import { Writable } from 'node:stream';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type StatusBody, type WorkerStatusBody, workerRows } from '../../src/api/routes/status.js';
import { startApi } from '../../src/api/server.js';
import { App } from '../../src/app.js';
import { statusCommand } from '../../src/commands/status.js';
import { validateConfig } from '../../src/config/load.js';
import { engineDriver } from '../../src/proxy/engineDriver.js';
import type { SessionSummary } from '../../src/proxy/session.js';
import { rawClient } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';

type Doc = Record<string, unknown>;
type LogLine = Record<string, unknown> & { level: number; msg: string };

/** The engine threads of the App under test, as the API shows them; `kill` makes a thread's next epoll_wait fail (fault injection), which ends it as any loop error would. */
interface ThreadGroup {
  readonly size: number;
  status(): WorkerStatusBody[];
  kill(thread: number): string;
  readonly lost: number;
  readonly restarts: number;
}

function groupOf(app: App): ThreadGroup {
  return {
    get size() {
      return app.threads().rows.length;
    },
    status: () => workerRows(app),
    kill: (thread) => {
      engineDriver().engine.fault(thread, 'epoll_wait:1:EBADF');
      return 'EBADF';
    },
    get lost() {
      return app.threads().lost;
    },
    get restarts() {
      return app.threads().restarts;
    },
  };
}

interface WorkersEtd {
  readonly app: App;
  readonly group: ThreadGroup;
  readonly port: number;
  readonly summaries: SessionSummary[];
  readonly logs: LogLine[];
  stop(graceMs?: number): Promise<void>;
}

let a: TestBackend;
let b: TestBackend;
let running: WorkersEtd | undefined;
const opened: net.Socket[] = [];

beforeAll(async () => {
  a = await startBackend({ name: 'a.test' });
  b = await startBackend({ name: 'b.test' });
});
afterAll(async () => {
  await a.close();
  await b.close();
});
afterEach(async () => {
  for (const s of opened.splice(0)) s.destroy();
  await running?.stop(200);
  running = undefined;
  for (const be of [a, b]) {
    be.connections.length = 0;
    be.messages.length = 0;
  }
});

const serverA = () => ({ name: 'a', address: '127.0.0.1', port: a.port });
const serverB = () => ({ name: 'b', address: '127.0.0.1', port: b.port });

function configOf(doc: Doc) {
  return validateConfig({
    listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
    state: { path: ':memory:' },
    api: { enabled: false },
    cache: { enabled: false },
    limits: { perClient: 0 },
    upstream: { servers: [serverA()], health: { enabled: false } },
    ...doc,
    log: { level: 'info' },
    workers: 2,
  });
}

/** An etd with two engine threads whose log lines (JSON) are kept in `logs`. */
async function startWorkers(doc: Doc): Promise<WorkersEtd> {
  const logs: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
      cb();
    },
  });
  const app = new App(configOf(doc), pino({ level: 'info' }, sink));
  const summaries: SessionSummary[] = [];
  app.observe({ sessionEnded: (s) => summaries.push(s) });
  await app.start();
  const group = groupOf(app);
  expect(group.size).toBe(2);
  const port = app.listenerList()[0]!.addresses()[0]!.port;
  let stopped = false;
  running = {
    app,
    group,
    port,
    summaries,
    logs,
    stop: async (graceMs = 1000) => {
      if (stopped) return;
      stopped = true;
      await app.stop(graceMs);
    },
  };
  return running;
}

async function until<T>(what: string, f: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The threads' rows. */
async function rows(group: ThreadGroup) {
  return group.status();
}

/** One message through nodemailer on its own connection; `port` of the client side is recorded as soon as it connects. */
interface Attempt {
  from: string;
  localPort: number | undefined;
  startedAt: number;
  endedAt: number;
  ok: boolean;
  error?: string;
}

async function send(port: number, from: string, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<Attempt> {
  const attempt: Attempt = { from, localPort: undefined, startedAt: performance.now(), endedAt: 0, ok: false };
  const timeout = opts.timeoutMs ?? 10_000;
  const t = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: timeout,
    greetingTimeout: timeout,
    socketTimeout: timeout,
    getSocket: (_o: unknown, cb: (err: Error | null, info?: { connection: net.Socket }) => void) => {
      const s = net.connect({ port, host: '127.0.0.1', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
      let connected = false;
      s.once('connect', () => {
        connected = true;
        attempt.localPort = s.localPort;
        cb(null, { connection: s });
      });
      // Before the connect the error is the attempt's; after it, nodemailer has its own listener,
      // and a write to a connection whose thread was killed (EPIPE) must not escape the test.
      s.on('error', (e) => {
        if (!connected) cb(e);
      });
    },
  } as Parameters<typeof nodemailer.createTransport>[0]);
  try {
    const info = await t.sendMail({ from, to: 'rcpt@example.net', subject: from, text: `hello from ${from}` });
    attempt.ok = info.accepted.length === 1;
  } catch (e) {
    attempt.error = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  }
  attempt.endedAt = performance.now();
  t.close();
  return attempt;
}

/** Sends `n` messages, `concurrency` at a time. */
async function sendMany(port: number, n: number, concurrency: number, tag: string): Promise<Attempt[]> {
  const out: Attempt[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        out.push(await send(port, `${tag}-${i}@example.org`));
      }
    }),
  );
  return out;
}

/** A connection that stays silent (held), kept open until the test ends. */
function silent(port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) }, () => resolve(s));
    s.on('error', reject);
    opened.push(s);
  });
}

/** Everything a connection receives until it closes. */
function received(s: net.Socket, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve) => {
    let data = '';
    const timer = setTimeout(() => resolve(data), timeoutMs);
    s.on('data', (c: Buffer) => (data += c.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

/** The client's port of a summary (`client` is address:port). */
const portOf = (s: SessionSummary) => Number(s.client.slice(s.client.lastIndexOf(':') + 1));

describe('engine threads (workers: 2)', () => {
  it('spreads connections over both threads; every session has one summary line, with a unique id', async () => {
    const etd = await startWorkers({ detection: { window: '0ms' } });
    const n = 200;
    const t0 = performance.now();
    const attempts = await sendMany(etd.port, n, 20, 'spread');
    const ms = performance.now() - t0;
    expect(attempts.filter((x) => !x.ok)).toEqual([]);
    await until('200 summaries', () => etd.summaries.length >= n);
    await sleep(200); // a duplicate would arrive meanwhile
    expect(etd.summaries).toHaveLength(n);
    const ids = etd.summaries.map((s) => s.id);
    expect(new Set(ids).size).toBe(n);
    expect(etd.summaries.every((s) => s.verdict === 'passed')).toBe(true);
    // One summary per client connection: the client ports match one to one.
    expect(new Set(etd.summaries.map((s) => portOf(s)))).toEqual(new Set(attempts.map((x) => x.localPort)));
    // The summary lines are the main thread's log lines: one per session.
    expect(etd.logs.filter((l) => l.msg === 'session')).toHaveLength(n);
    expect(a.messages).toHaveLength(n);

    const st = await rows(etd.group);
    console.log(
      `spread: ${n} messages in ${Math.round(ms)} ms; accepted per thread ${st.map((w) => w.accepted).join(' / ')}, CPU ms ${st.map((w) => w.cpuMs).join(' / ')}`,
    );
    expect(st.map((w) => w.state)).toEqual(['running', 'running']);
    for (const w of st) expect(w.accepted, `worker ${w.index}`).toBeGreaterThan(0);
    expect(st[0]!.accepted + st[1]!.accepted).toBe(n);
    expect(etd.app.stats.accepted).toBe(n);
    expect(st.every((w) => w.sessions === 0 && w.threadId !== null && w.threadId > 0)).toBe(true);
  });

  it('a thread killed under load: its connections end with a summary (error, engine_thread_died) and are counted, it restarts with fresh sockets, the other keeps serving, every later session is delivered', async () => {
    const etd = await startWorkers({ detection: { window: '50ms' } });
    const group = etd.group;
    const attempts: Attempt[] = [];
    let stopLoad = false;
    const clients = 20;
    const perClientCap = 200;
    const load = Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let i = 0; i < perClientCap && !stopLoad; i++)
          attempts.push(await send(etd.port, `k${c}-${i}@example.org`, { timeoutMs: 5000 }));
      }),
    );
    try {
      await until('load running on both threads', async () => (await rows(group)).every((w) => w.accepted >= 20));
      const before = await rows(group);
      const oldThread = before[0]!.threadId;
      const killedAt = performance.now();
      const code = group.kill(0);
      const died = await until('the death line', () => etd.logs.find((l) => l.level === 50 && /^engine thread 0 died/.test(l.msg)));
      const restartedAt = await until('thread 0 running again', () => {
        const w = group.status()[0]!;
        return w.state === 'running' && w.restarts === 1 ? performance.now() : undefined;
      });
      // The other thread served meanwhile: messages completed between the kill and the restart.
      const duringRestart = attempts.filter((x) => x.ok && x.endedAt > killedAt && x.endedAt < restartedAt).length;
      const afterRestart = await rows(group);
      await sleep(1500); // load on the restarted thread too
      stopLoad = true;
      await load;
      const end = await rows(group);

      expect(died.thread).toBe(0);
      expect(died.code).toBe(code);
      expect(died.msg).toMatch(/connections? lost .*restarting it, the other threads keep serving/);
      expect(group.lost).toBe(died.lost);
      expect(group.restarts).toBe(1);
      expect(afterRestart[0]!.threadId).not.toBe(oldThread);
      expect(end.map((w) => [w.state, w.restarts])).toEqual([
        ['running', 1],
        ['running', 0],
      ]);

      // No session left behind by the dead thread: one thread counts them all.
      await until('no sessions', () => etd.app.sessions.size === 0);
      expect(etd.app.stats.held).toBe(0);
      expect(etd.app.stats.relaying).toBe(0);

      // Each connection the dead thread had has its summary: verdict error, cause engine_thread_died.
      const lostLines = etd.summaries.filter((x) => x.cause === 'engine_thread_died');
      expect(lostLines.length).toBe(group.lost);
      expect(lostLines.every((x) => x.verdict === 'error')).toBe(true);
      // Clients whose connection failed started before the restart (connections still in the dead
      // socket's accept queue are reset by the kernel and have no summary).
      const failed = attempts.filter((x) => !x.ok);
      expect(
        failed.every((x) => x.startedAt < restartedAt),
        `failures after the restart: ${JSON.stringify(failed.filter((x) => x.startedAt >= restartedAt))}`,
      ).toBe(true);

      // Every message whose client saw 250 reached the backend; all those begun after the restart did.
      const delivered = new Set(a.messages.map((m) => m.from));
      const ok = attempts.filter((x) => x.ok);
      expect(ok.filter((x) => !delivered.has(x.from)).map((x) => x.from)).toEqual([]);
      const later = attempts.filter((x) => x.startedAt > restartedAt);
      expect(later.length).toBeGreaterThan(20);
      expect(later.every((x) => x.ok)).toBe(true);
      // ... on both threads.
      expect(end[0]!.accepted).toBeGreaterThan(0);
      expect(end[1]!.accepted).toBeGreaterThan(afterRestart[1]!.accepted);
      // Thread 1 took connections while thread 0 was down.
      expect(afterRestart[1]!.accepted).toBeGreaterThan(before[1]!.accepted);

      // Unique ids.
      const ids = etd.summaries.map((s) => s.id);
      const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
      console.log(
        `kill: epoll_wait ${code} on thread 0; it had ${before[0]!.sessions} connections before the kill, lost ${group.lost} ` +
          `(log: ${died.held} held, ${died.relaying} relaying), ${lostLines.length} summaries with engine_thread_died; ${failed.length} clients saw their connection fail (${[...new Set(failed.map((x) => x.error))].join(', ')}); ` +
          `restart took ${Math.round(restartedAt - killedAt)} ms, ${duringRestart} messages completed meanwhile; ` +
          `${attempts.length} messages tried, ${ok.length} delivered, ${later.length} begun after the restart (all delivered); accepted per thread now ${end.map((w) => w.accepted).join(' / ')}; duplicate ids ${dup.length}`,
      );
      expect(dup).toEqual([]);

      // The API, /metrics and etd status say the same.
      const api = await startApi(
        { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
        { app: etd.app, version: 'w', log: pino({ level: 'silent' }), reload: async () => undefined, options: { processMetrics: false } },
      );
      try {
        const status = (await (await fetch(`${api.url}/v1/status`)).json()) as StatusBody;
        expect(status.lostSessions).toBe(group.lost);
        expect(status.workerRestarts).toBe(1);
        expect(status.workers.map((w) => [w.index, w.state, w.restarts])).toEqual([
          [0, 'running', 1],
          [1, 'running', 0],
        ]);
        const metrics = await (await fetch(`${api.url}/metrics`)).text();
        expect(metrics).toMatch(new RegExp(`^etd_sessions_lost_total ${group.lost}$`, 'm'));
        expect(metrics).toMatch(/^etd_worker_restarts_total 1$/m);
        expect(metrics).toMatch(/^etd_worker_sessions\{worker="1"\} \d+$/m);
        const out: string[] = [];
        expect(await statusCommand({ url: api.url, json: false }, (t) => out.push(t))).toBe(0);
        const text = out.join('\n');
        console.log(
          text
            .split('\n')
            .filter((l) => /^workers|^ {2}#/.test(l))
            .join('\n'),
        );
        expect(text).toMatch(new RegExp(`^workers\\s+2; 1 restart, ${group.lost} connections? lost$`, 'm'));
        expect(text).toMatch(/^ {2}#0 .*restarted 1×$/m);
      } finally {
        await api.close();
      }
    } finally {
      stopLoad = true;
      await load;
    }
  });

  describe('limits count across threads', () => {
    /** Opens `n` held connections, again until both threads hold some (SO_REUSEPORT picks by hash); the closed tries end as client_gone. */
    async function heldOnBoth(etd: WorkersEtd, n: number, localAddress?: string): Promise<net.Socket[]> {
      for (let tries = 0; tries < 20; tries++) {
        const socks: net.Socket[] = [];
        for (let i = 0; i < n; i++) socks.push(await silent(etd.port, localAddress));
        await until(`${n} held`, () => etd.app.stats.held === n);
        const st = etd.group.status();
        if (st.every((w) => w.held > 0)) return socks;
        for (const s of socks) s.destroy();
        await until('none held', () => etd.app.stats.held === 0);
      }
      throw new Error(`${n} connections never spread over both threads`);
    }

    it('maxConnections: 4 held over both threads, every further connection gets 421 whichever thread takes it', async () => {
      const etd = await startWorkers({ detection: { window: '20s' }, limits: { maxConnections: 4, perClient: 0 } });
      await heldOnBoth(etd, 4);
      const before = await rows(etd.group);
      const extra = await Promise.all(Array.from({ length: 12 }, () => rawClient(etd.port, () => undefined, 3000)));
      expect(extra.map((r) => r.data.toString())).toEqual(Array(12).fill('421 4.7.0 Too many connections, try again later\r\n'));
      await until('12 limit summaries', () => etd.summaries.filter((s) => s.verdict === 'limit').length === 12);
      const after = await rows(etd.group);
      const took = after.map((w, i) => w.accepted - before[i]!.accepted);
      console.log(`maxConnections: held per thread ${before.map((w) => w.held).join(' / ')}; the 12 refused went ${took.join(' / ')}`);
      expect(etd.app.stats.limits.max_connections).toBe(12);
      expect(took[0]! + took[1]!).toBe(12);
      expect(took.every((t) => t > 0)).toBe(true);
      expect(etd.summaries.filter((s) => s.verdict === 'limit').every((s) => s.cause === 'max_connections')).toBe(true);
      expect(etd.app.stats.held).toBe(4);
    });

    it('maxHeld: 3 held over both threads, the next gets 421', async () => {
      const etd = await startWorkers({ detection: { window: '20s' }, limits: { maxHeld: 3, perClient: 0 } });
      await heldOnBoth(etd, 3);
      const extra = await Promise.all(Array.from({ length: 8 }, () => rawClient(etd.port, () => undefined, 3000)));
      expect(extra.every((r) => /^421 4\.7\.0 /.test(r.data.toString()))).toBe(true);
      await until('8 limit summaries', () => etd.summaries.filter((s) => s.verdict === 'limit').length === 8);
      expect(etd.app.stats.limits.max_held).toBe(8);
    });

    it('perClient: 2 from one address over both threads, its next gets 421; another address is still let in', async () => {
      const etd = await startWorkers({ detection: { window: '20s' }, limits: { perClient: 2 } });
      await heldOnBoth(etd, 2);
      const extra = await Promise.all(Array.from({ length: 8 }, () => rawClient(etd.port, () => undefined, 3000)));
      expect(extra.map((r) => r.data.toString())).toEqual(Array(8).fill('421 4.7.0 Too many connections from your address\r\n'));
      await until('8 limit summaries', () => etd.summaries.filter((s) => s.verdict === 'limit').length === 8);
      expect(etd.app.stats.limits.per_client).toBe(8);
      // 127.0.0.2 is another client: held like anyone else.
      await silent(etd.port, '127.0.0.2');
      await silent(etd.port, '127.0.0.2');
      await until('4 held', () => etd.app.stats.held === 4);
      expect(etd.summaries.filter((s) => s.verdict === 'limit')).toHaveLength(8);
    });
  });

  it('the stress window follows the held count of both threads together', async () => {
    const etd = await startWorkers({ detection: { window: '20s', stress: { above: 3, below: 1, window: '200ms' } } });
    // 4 held (above 3): 2 on each thread would not be above it on either alone.
    let held: net.Socket[] = [];
    for (let tries = 0; tries < 20; tries++) {
      held = [];
      for (let i = 0; i < 4; i++) held.push(await silent(etd.port));
      await until('4 held', () => etd.app.stats.held === 4);
      if (etd.group.status().every((w) => w.held > 0)) break;
      for (const h of held) h.destroy();
      await until('none held', () => etd.app.stats.held === 0);
    }
    const st = etd.group.status();
    expect(st.every((w) => w.held > 0)).toBe(true);
    await until('stress', () => etd.app.stressed);
    const acceptedBefore = etd.group.status().map((w) => w.accepted);
    const attempts = await sendMany(etd.port, 20, 5, 'stress');
    expect(attempts.every((x) => x.ok)).toBe(true);
    await until('20 passed', () => etd.summaries.filter((s) => s.verdict === 'passed').length === 20);
    const passed = etd.summaries.filter((s) => s.verdict === 'passed');
    // The threads' accept counts say which took a session.
    const took = etd.group.status().map((w, i) => w.accepted - acceptedBefore[i]!);
    console.log(
      `stress: held per thread ${st.map((w) => w.held).join(' / ')}; sessions during stress per thread ${took.join(' / ')}, held ${Math.min(...passed.map((s) => s.heldMs))}..${Math.max(...passed.map((s) => s.heldMs))} ms`,
    );
    expect(took.every((n) => n > 0)).toBe(true);
    expect(passed.every((s) => s.heldMs >= 190 && s.heldMs < 5000)).toBe(true);
    // One line per change (a try that did not spread entered and left stress too).
    const lines = (what: string) => etd.logs.filter((l) => l.msg.startsWith(what)).length;
    expect(lines('entering stress')).toBe(lines('leaving stress') + 1);
    for (const h of held) h.destroy();
    await until('stress ends', () => !etd.app.stressed);
    await until('the leaving line', () => lines('leaving stress') === lines('entering stress'));
    expect(etd.app.stressChanges).toBe(lines('entering stress') * 2);
  });

  it('roundrobin stays fair across threads: 200 sessions over 2 servers, 100 ± 2 each', async () => {
    const etd = await startWorkers({
      detection: { window: '0ms' },
      upstream: { balance: 'roundrobin', servers: [serverA(), serverB()], health: { enabled: false } },
    });
    const attempts = await sendMany(etd.port, 200, 10, 'rr');
    expect(attempts.every((x) => x.ok)).toBe(true);
    const st = await rows(etd.group);
    console.log(`roundrobin: a ${a.messages.length}, b ${b.messages.length}; accepted per thread ${st.map((w) => w.accepted).join(' / ')}`);
    expect(a.messages.length + b.messages.length).toBe(200);
    expect(Math.abs(a.messages.length - 100)).toBeLessThanOrEqual(2);
    expect(st.every((w) => w.accepted > 0)).toBe(true);
    // One pool counts every thread's sessions.
    expect(etd.app.pool.get('a')!.total + etd.app.pool.get('b')!.total).toBe(200);
  });

  it('leastconn weighs the sessions of both threads', async () => {
    const etd = await startWorkers({
      detection: { window: '0ms' },
      upstream: { balance: 'leastconn', servers: [serverA(), serverB()], health: { enabled: false } },
    });
    const pool = etd.app.pool;
    /** A relayed session that stays open; resolves with the server whose banner it got. */
    const open = async (): Promise<string> => {
      const s = await silent(etd.port);
      let data = '';
      await until('a banner', () => {
        const c = s.read() as Buffer | null;
        if (c) data += c.toString('latin1');
        return /^220 /.test(data);
      });
      return /^220 (\w)\.test/.exec(data)?.[1] ?? data;
    };
    // Four sessions on a, over both threads (b out of the way meanwhile).
    pool.setAdmin(pool.get('b')!, 'maint', 'test');
    const onA: string[] = [];
    for (let i = 0; i < 4; i++) onA.push(await open());
    expect(onA).toEqual(['a', 'a', 'a', 'a']);
    await until('4 relaying', () => etd.app.stats.relaying === 4);
    const st = etd.group.status();
    pool.setAdmin(pool.get('b')!, undefined, 'test');
    // a has 4, b 0: the next four go to b whichever thread takes them (one pool counts them all).
    const next: string[] = [];
    for (let i = 0; i < 4; i++) next.push(await open());
    const after = await rows(etd.group);
    console.log(
      `leastconn: a's sessions per thread ${st.map((w) => w.relaying).join(' / ')}; the next four went to ${next.join(', ')}; accepted per thread ${after.map((w) => w.accepted).join(' / ')}`,
    );
    expect(next).toEqual(['b', 'b', 'b', 'b']);
    expect([pool.get('a')!.active, pool.get('b')!.active]).toEqual([4, 4]);
  });

  describe('reload', () => {
    it('a new window and a new server list apply in both threads', async () => {
      const etd = await startWorkers({ detection: { window: '3s' } });
      await etd.app.reload(configOf({ detection: { window: '100ms' }, upstream: { servers: [serverB()], health: { enabled: false } } }));
      const acceptedBefore = etd.group.status().map((w) => w.accepted);
      const attempts = await sendMany(etd.port, 40, 10, 'reload');
      expect(attempts.every((x) => x.ok)).toBe(true);
      await until('40 summaries', () => etd.summaries.length === 40);
      const took = etd.group.status().map((w, i) => w.accepted - acceptedBefore[i]!);
      const held = etd.summaries.map((s) => s.heldMs);
      console.log(`reload: sessions per thread ${took.join(' / ')}, held ${Math.min(...held)}..${Math.max(...held)} ms`);
      expect(took.every((n) => n > 0)).toBe(true);
      // The 100 ms window, not 3 s.
      expect(etd.summaries.every((s) => s.heldMs >= 90 && s.heldMs < 2000)).toBe(true);
      expect(etd.summaries.every((s) => s.server === 'b')).toBe(true);
      expect(a.messages).toHaveLength(0);
      expect(b.messages).toHaveLength(40);
    });

    it('a reload whose new listener cannot bind is refused; both threads keep serving with the old config', async () => {
      const etd = await startWorkers({ detection: { window: '100ms' } });
      const taken = net.createServer();
      await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
      const takenPort = (taken.address() as net.AddressInfo).port;
      try {
        const next = configOf({
          detection: { window: '3s' },
          listeners: [
            { name: 'test', address: '127.0.0.1', port: 0 }, // unchanged: kept as it is
            { name: 'extra', address: '127.0.0.1', port: takenPort },
          ],
          upstream: { servers: [serverB()], health: { enabled: false } },
        });
        const err = await etd.app.reload(next).then(
          () => undefined,
          (e: unknown) => e as Error,
        );
        expect(err).toBeInstanceOf(Error);
        console.log(`reload refused: ${err!.message}`);
        expect(err!.message).toMatch(/EADDRINUSE|in use/i);
        expect(etd.app.currentConfig.detection.windowMs).toBe(100);
        expect(etd.app.listenerList().map((l) => l.config.name)).toEqual(['test']);

        const before = await rows(etd.group);
        const attempts = await sendMany(etd.port, 40, 10, 'kept');
        expect(attempts.every((x) => x.ok)).toBe(true);
        await until('40 summaries', () => etd.summaries.length === 40);
        const after = await rows(etd.group);
        expect(after.map((w, i) => w.accepted - before[i]!.accepted).every((n) => n > 0)).toBe(true);
        expect(etd.summaries.every((s) => s.server === 'a' && s.heldMs < 2000)).toBe(true);
        expect(a.messages).toHaveLength(40);
        expect(b.messages).toHaveLength(0);
      } finally {
        await new Promise<void>((r) => taken.close(() => r()));
      }
    });
  });

  it('stop drains both threads: held clients get 421 4.3.2, relayed sessions finish within the grace time', async () => {
    const etd = await startWorkers({ detection: { window: '20s' }, access: { allow: ['127.0.0.2/32'] } });
    // Held: from 127.0.0.1, until both threads hold some.
    let held: net.Socket[] = [];
    for (let tries = 0; tries < 20 && !(held.length > 0 && etd.group.status().every((w) => w.held > 0)); tries++) {
      held.push(await silent(etd.port));
      await until('held', () => etd.app.stats.held === held.length);
    }
    expect(etd.group.status().every((w) => w.held > 0)).toBe(true);
    const heldReplies = held.map((s) => received(s));

    // Relayed: 127.0.0.2 is allowlisted (no window); each is mid-session when stop begins.
    const relayed = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const s = await silent(etd.port, '127.0.0.2');
        let buf = '';
        const waiters: Array<() => void> = [];
        s.on('data', (c: Buffer) => {
          buf += c.toString('latin1');
          for (const w of waiters.splice(0)) w();
        });
        const reply = async (code: string) => {
          await until(`reply ${code} on relayed ${i}`, () => new RegExp(`^${code} .*\\r\\n`, 'm').test(buf), 5000);
          buf = '';
        };
        await reply('220');
        s.write('EHLO relayed.test\r\n');
        await reply('250');
        return { s, reply, from: `drain-${i}@example.org` };
      }),
    );
    await until('6 relaying', () => etd.app.stats.relaying === 6);
    const st = etd.group.status();
    console.log(`stop: held per thread ${st.map((w) => w.held).join(' / ')}, relaying per thread ${st.map((w) => w.relaying).join(' / ')}`);

    const t0 = performance.now();
    const stopped = etd.stop(3000);
    // The relayed clients finish their mail while etd drains.
    await Promise.all(
      relayed.map(async (r) => {
        r.s.write(`MAIL FROM:<${r.from}>\r\n`);
        await r.reply('250');
        r.s.write('RCPT TO:<rcpt@example.net>\r\n');
        await r.reply('250');
        r.s.write('DATA\r\n');
        await r.reply('354');
        r.s.write(`Subject: drain\r\n\r\nhello\r\n.\r\n`);
        await r.reply('250');
        r.s.write('QUIT\r\n');
        await r.reply('221');
      }),
    );
    await stopped;
    const ms = performance.now() - t0;
    const replies = await Promise.all(heldReplies);
    console.log(`stop: ${held.length} held clients answered, ${relayed.length} relayed sessions finished; stop took ${Math.round(ms)} ms`);
    expect(replies.every((r) => r.startsWith('421 4.3.2 '))).toBe(true);
    expect(a.messages.map((m) => m.from).sort()).toEqual(relayed.map((r) => r.from).sort());
    expect(ms).toBeLessThan(3000 + 5000);
    const verdicts = etd.summaries.map((s) => s.verdict);
    expect(verdicts.filter((v) => v === 'shutdown')).toHaveLength(held.length);
    expect(verdicts.filter((v) => v === 'passed')).toHaveLength(relayed.length);
    held = [];
  });
});
