// The native session engine (docs/engine.md) over real loopback sockets: events, hold, early talk, upstream, relay, guards, deadlines, leaks.
//
// The engine is one per thread: it is started once for this file and every test routes its
// events through `events` (everything since the test began) and `onAccept` (which must decide
// in the same callback, as the spec demands). After each test the engine must own nothing but
// the two listeners and the process must have the fds it had before.

import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadEngine } from '../../src/native/engine.js';
import { loadedAddonPath, loadTransparent, TransparentSyscallError } from '../../src/native/transparent.js';
import {
  type EngineConnect,
  type EngineEvent,
  EV_ACCEPT,
  EV_END,
  EV_ERROR,
  EV_EXPIRED,
  EV_GONE,
  EV_GREETING,
  EV_TALK,
  EV_UPSTREAM_FAILED,
} from '../../src/proxy/protocol.js';
import { TEST_PROFILE } from '../helpers/engineProfile.js';
import { skipUnlessRoot } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const engine = loadEngine();
const sockets = loadTransparent();
type AcceptEvent = Extract<EngineEvent, [typeof EV_ACCEPT, ...unknown[]]>;

const BASE = TEST_PROFILE;
const P_DROP = 0;
const P_REJECT = 1;
const P_STRIP = 2;
const P_GREETING_TIMEOUT = 3;
const P_CLIENT_IDLE = 4;
const P_SERVER_IDLE = 5;
const P_LOG = 6;
const P_LOG_SMALL = 7;
const P_TEASER = 8;
const P_DECISION = 9;
const P_LONG_IDLE = 10;
const TEASER = '220-mx.test ESMTP wait\r\n';
const REJECT = '554 5.7.1 early talk\r\n';

const LID4 = 1;
const LID6 = 2;
let port4 = 0;
let port6 = 0;

const events: EngineEvent[] = [];
const waiters = new Set<() => void>();
let onAccept: (ev: AcceptEvent) => void = (ev) => engine.drop(ev[1]);
let batches = 0;

function onEvents(batch: EngineEvent[]): void {
  batches++;
  for (const ev of batch) {
    events.push(ev);
    if (ev[0] === EV_ACCEPT) onAccept(ev);
  }
  for (const w of [...waiters]) w();
}

const openFds = (): number => readdirSync('/proc/self/fd').length;
const show = (evs: EngineEvent[]): string =>
  JSON.stringify(evs.slice(-20).map((e) => e.map((x) => (Buffer.isBuffer(x) ? x.toString('latin1') : x))));

/** The first event (since the test began) matching `pred`, waiting up to `ms` for it. */
function waitEvent<E extends EngineEvent = EngineEvent>(pred: (ev: EngineEvent) => boolean, ms = 5000): Promise<E> {
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const check = (): boolean => {
      const found = events.find(pred);
      if (!found) return false;
      if (timer) clearTimeout(timer);
      waiters.delete(check);
      resolve(found as E);
      return true;
    };
    if (check()) return;
    timer = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`no matching engine event within ${ms} ms; last events: ${show(events)}`));
    }, ms);
    waiters.add(check);
  });
}

const evFor =
  <T extends number>(type: T, id: number) =>
  (ev: EngineEvent): boolean =>
    ev[0] === type && ev[1] === id;
const eventsOf = (id: number): EngineEvent[] => events.filter((e) => e[0] !== EV_ERROR && e[1] === id);

// ----- test peers ----------------------------------------------------------------------------

interface TestClient {
  sock: net.Socket;
  data(): Buffer;
  text(): string;
  waitData(pred: string | ((b: Buffer) => boolean), ms?: number): Promise<void>;
  /** Resolves when the socket closed: whether it saw EOF, and the error code if it failed. */
  closed: Promise<{ end: boolean; code: string | undefined }>;
}

const clients = new Set<net.Socket>();

function wrapClient(sock: net.Socket): TestClient {
  clients.add(sock);
  const chunks: Buffer[] = [];
  let size = 0;
  let end = false;
  let code: string | undefined;
  const notify = new Set<() => void>();
  sock.on('data', (d: Buffer) => {
    chunks.push(d);
    size += d.length;
    for (const n of [...notify]) n();
  });
  sock.on('end', () => {
    end = true;
    for (const n of [...notify]) n();
  });
  sock.on('error', (e: NodeJS.ErrnoException) => (code ??= e.code));
  const closed = new Promise<{ end: boolean; code: string | undefined }>((r) =>
    sock.on('close', () => {
      clients.delete(sock);
      r({ end, code });
    }),
  );
  const data = (): Buffer => {
    if (chunks.length > 1) chunks.splice(0, chunks.length, Buffer.concat(chunks, size));
    return chunks[0] ?? Buffer.alloc(0);
  };
  return {
    sock,
    data,
    text: () => data().toString('latin1'),
    closed,
    waitData: (pred, ms = 5000) =>
      new Promise<void>((resolve, reject) => {
        const test = typeof pred === 'string' ? (b: Buffer) => b.toString('latin1').includes(pred) : pred;
        const check = (): void => {
          if (!test(data())) return;
          clearTimeout(t);
          notify.delete(check);
          resolve();
        };
        const t = setTimeout(() => {
          notify.delete(check);
          reject(
            new Error(`client did not receive ${String(pred)} in ${ms} ms; got ${JSON.stringify(data().toString('latin1').slice(-300))}`),
          );
        }, ms);
        notify.add(check);
        check();
      }),
  };
}

function connectClient(
  port: number,
  host = '127.0.0.1',
  opts: { allowHalfOpen?: boolean } = {},
): TestClient & { connected: Promise<void> } {
  const sock = net.connect({ port, host, allowHalfOpen: opts.allowHalfOpen ?? false });
  const c = wrapClient(sock);
  // A connection the engine resets at once may fail before 'connect': `closed` tells.
  const connected = new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve());
    sock.once('error', reject);
  });
  connected.catch(() => undefined);
  return { ...c, connected };
}

/**
 * Resolves once the engine thread has run every command queued before this call: commands run in
 * order, so when a later client's drop has taken effect, so have they (the file runs one thread).
 */
async function applied(): Promise<void> {
  const { c } = await accepted((e) => engine.drop(e[1]));
  await c.closed;
}

/** The next client's ACCEPT is answered by `decide` in the engine's callback (one connection at a time). */
async function accepted(
  decide: (ev: AcceptEvent) => void,
  opts: { host?: string; port?: number; allowHalfOpen?: boolean } = {},
): Promise<{ id: number; ev: AcceptEvent; c: ReturnType<typeof connectClient> }> {
  let got: AcceptEvent | undefined;
  onAccept = (ev) => {
    onAccept = (e) => engine.drop(e[1]);
    got = ev;
    decide(ev);
  };
  const c = connectClient(opts.port ?? port4, opts.host ?? '127.0.0.1', opts);
  const ev = await waitEvent<AcceptEvent>((e) => e === got);
  return { id: ev[1], ev, c };
}

interface Backend {
  port: number;
  conns: net.Socket[];
  connected: Promise<net.Socket>;
  close(): Promise<void>;
}

const backends = new Set<Backend>();

async function startBackend(onConn: (s: net.Socket) => void, opts: { allowHalfOpen?: boolean; host?: string } = {}): Promise<Backend> {
  const conns: net.Socket[] = [];
  let first: (s: net.Socket) => void = () => undefined;
  const connected = new Promise<net.Socket>((r) => (first = r));
  const server = net.createServer({ allowHalfOpen: opts.allowHalfOpen ?? false }, (s) => {
    conns.push(s);
    s.on('error', () => undefined);
    first(s);
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, opts.host ?? '127.0.0.1', r));
  const b: Backend = {
    port: (server.address() as net.AddressInfo).port,
    conns,
    connected,
    close: async () => {
      backends.delete(b);
      for (const s of conns) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  backends.add(b);
  return b;
}

/** Collects what a backend connection receives. */
function collect(s: net.Socket): { text(): string; buf(): Buffer; ended: Promise<void> } {
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  const ended = new Promise<void>((r) => {
    s.on('end', () => r());
    s.on('close', () => r());
  });
  return { text: () => Buffer.concat(chunks).toString('latin1'), buf: () => Buffer.concat(chunks), ended };
}

/** connect() options for a loopback backend: no spoofed source, a 3 s connect timeout, no preamble, unless given. */
const upstream = (port: number, profile: number, opts: Partial<EngineConnect> = {}): EngineConnect => ({
  profile,
  family: 4,
  sourceAddress: '',
  synCount: 0,
  address: '127.0.0.1',
  port,
  timeoutMs: 3000,
  preamble: Buffer.alloc(0),
  ...opts,
});

const connectTo =
  (port: number, profile: number, opts: Partial<EngineConnect> = {}) =>
  (ev: AcceptEvent): void => {
    engine.connect(ev[1], upstream(port, profile, opts));
  };

/** A loopback listener whose accept queue is full: it drops SYNs, so a connect to it stays in flight. */
async function blackHole(): Promise<{ port: number; close(): void }> {
  const lfd = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 1, v6only: false });
  const port = sockets.sockName(lfd)[1];
  const fillers: TestClient[] = [];
  for (let i = 0; i < 2; i++) {
    const f = connectClient(port);
    await f.connected;
    fillers.push(f);
  }
  return {
    port,
    close: () => {
      for (const f of fillers) f.sock.destroy();
      sockets.closeFd(lfd);
    },
  };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// ----- lifecycle -----------------------------------------------------------------------------

let fdsBefore = 0;

beforeAll(() => {
  engine.defineProfile(P_DROP, BASE);
  engine.defineProfile(P_REJECT, { ...BASE, action: 'reject', rejectReply: REJECT });
  engine.defineProfile(P_STRIP, { ...BASE, clientIdleMs: 10_000, serverIdleMs: 10_000, stripPipeconnect: true });
  engine.defineProfile(P_GREETING_TIMEOUT, { ...BASE, clientIdleMs: 10_000, serverIdleMs: 10_000, greetingTimeoutMs: 300 });
  engine.defineProfile(P_CLIENT_IDLE, { ...BASE, clientIdleMs: 300, serverIdleMs: 10_000 });
  engine.defineProfile(P_SERVER_IDLE, { ...BASE, clientIdleMs: 10_000, serverIdleMs: 300 });
  engine.defineProfile(P_LOG, { ...BASE, action: 'log' });
  engine.defineProfile(P_LOG_SMALL, { ...BASE, action: 'log', earlyBufferBytes: 16, evidenceBytes: 8 });
  engine.defineProfile(P_TEASER, { ...BASE, teaser: TEASER, deferredReplyMs: 400 });
  engine.defineProfile(P_DECISION, { ...BASE, decisionMs: 200 });
  engine.defineProfile(P_LONG_IDLE, {
    ...BASE,
    clientIdleMs: 300_000,
    serverIdleMs: 300_000,
    greetingTimeoutMs: 300_000,
    stripPipeconnect: true,
  });
  startEngine();
});

/** Starts the file's engine with its two listeners (ETD_ENGINE_FAULTS as given, read at start). */
function startEngine(faults?: string): void {
  if (faults === undefined) delete process.env.ETD_ENGINE_FAULTS;
  else process.env.ETD_ENGINE_FAULTS = faults;
  try {
    engine.start(onEvents);
  } finally {
    delete process.env.ETD_ENGINE_FAULTS;
  }
  const fd4 = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 4096, v6only: false });
  engine.listen(fd4, LID4);
  port4 = sockets.sockName(fd4)[1];
  const fd6 = sockets.plainListener({ family: 6, address: '::1', port: 0, backlog: 128, v6only: true });
  engine.listen(fd6, LID6);
  port6 = sockets.sockName(fd6)[1];
}

afterAll(() => {
  engine.stop();
});

beforeEach(() => {
  events.length = 0;
  onAccept = (ev) => engine.drop(ev[1]);
  fdsBefore = openFds();
});

afterEach(async () => {
  for (const s of clients) s.destroy();
  for (const b of [...backends]) await b.close();
  // Nothing left behind: the engine owns only its two listeners, the process has its fds back.
  await waitFor(() => engine.counts().connections === 0, {
    what: () => `the engine to let go (counts ${JSON.stringify(engine.counts())})`,
    timeout: 7000,
  });
  expect(engine.counts()).toMatchObject({ connections: 0, held: 0, relaying: 0, listeners: 2, fds: 2, bufferedBytes: 0, deadlines: 0 });
  await waitFor(() => openFds() <= fdsBefore, { what: () => `fds back to ${fdsBefore} (now ${openFds()})`, timeout: 5000 });
});

// ----- accept --------------------------------------------------------------------------------

describe('accept', () => {
  it('reports family, peer and local address of an IPv4 client', async () => {
    const { id, ev, c } = await accepted((e) => engine.reply(e[1], { text: '554 no\r\n', profile: P_DROP }));
    await c.waitData('554 no\r\n');
    expect(ev).toEqual([EV_ACCEPT, id, LID4, 4, '127.0.0.1', c.sock.localPort, '127.0.0.1', port4]);
    expect(Number.isInteger(id) && id > 0).toBe(true);
    expect(await c.closed).toEqual({ end: true, code: undefined });
  });

  it('drop resets the client', async () => {
    const { id, c } = await accepted((e) => engine.drop(e[1]));
    expect(await c.closed).toMatchObject({ code: 'ECONNRESET' });
    expect(engine.drop(id)).toBe(true); // queued for the running thread, which finds it gone: a no-op
    await applied();
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT]);
  });

  it('reports an IPv6 client on ::1', async () => {
    const { id, ev, c } = await accepted((e) => engine.reply(e[1], { text: '554 no\r\n', profile: P_DROP }), { host: '::1', port: port6 });
    await c.waitData('554 no\r\n');
    expect(ev).toEqual([EV_ACCEPT, id, LID6, 6, '::1', c.sock.localPort, '::1', port6]);
    await c.closed;
  });

  it('shows an IPv4 peer of a dual-stack listener as family 4 with plain addresses', async () => {
    const fd = sockets.plainListener({ family: 6, address: '::', port: 0, backlog: 16, v6only: false });
    engine.listen(fd, 99);
    const port = sockets.sockName(fd)[1];
    try {
      const { id, ev, c } = await accepted((e) => engine.reply(e[1], { text: '554 no\r\n', profile: P_DROP }), { port });
      await c.waitData('554 no\r\n');
      expect(ev).toEqual([EV_ACCEPT, id, 99, 4, '127.0.0.1', c.sock.localPort, '127.0.0.1', port]);
      await c.closed;
    } finally {
      engine.unlisten(99);
    }
    expect(engine.counts().listeners).toBe(2);
  });

  it('a wildcard listener reports the address each client reached; a one-address listener its own', async () => {
    // The engine learns a one-address listener's local end once (no getsockname per accept); a
    // wildcard listener's accepted sockets differ in their local address (here 127.0.0.2 of lo's /8).
    const fd = sockets.plainListener({ family: 4, address: '0.0.0.0', port: 0, backlog: 16, v6only: false });
    engine.listen(fd, 98);
    const port = sockets.sockName(fd)[1];
    try {
      for (const host of ['127.0.0.2', '127.0.0.1']) {
        const { id, ev, c } = await accepted((e) => engine.reply(e[1], { text: '554 no\r\n', profile: P_DROP }), { host, port });
        await c.waitData('554 no\r\n');
        expect(ev).toEqual([EV_ACCEPT, id, 98, 4, '127.0.0.1', c.sock.localPort, host, port]);
        await c.closed;
      }
    } finally {
      engine.unlisten(98);
    }
  });

  it('ids increase and ids that never existed are no-ops', async () => {
    const a = await accepted((e) => engine.drop(e[1]));
    const b = await accepted((e) => engine.drop(e[1]));
    expect(b.id).toBeGreaterThan(a.id);
    const never = b.id + 1_000_000; // the same thread (its index is in the low 6 bits)
    // Queued commands say only that a thread of the id runs; the thread finds no such connection.
    expect(engine.hold(never, { windowMs: 100, profile: P_DROP })).toBe(true);
    expect(engine.connect(never, upstream(1, P_DROP, { timeoutMs: 100 }))).toBe(true);
    expect(engine.reply(never, { text: 'x\r\n', profile: P_DROP })).toBe(-1);
    expect(engine.reply(never, { greeting: true })).toBe(-1);
    expect(engine.drop(never)).toBe(true);
    expect(engine.close(never, 'x')).toBe(true);
    expect(engine.inspect(never)).toBeNull();
    await Promise.all([a.c.closed, b.c.closed]);
    await applied();
    expect(eventsOf(never)).toEqual([]);
    expect(engine.counts()).toMatchObject({ connections: 0, held: 0 });
  });

  it('a connection left undecided by the ACCEPT callback is reset and reported GONE undecided', async () => {
    const { id, c } = await accepted(() => undefined);
    const gone = await waitEvent(evFor(EV_GONE, id));
    expect(gone).toEqual([EV_GONE, id, 'undecided']);
    expect((await c.closed).code).toBe('ECONNRESET');
  });

  it('reply in state new needs a profile (its linger times) and says so; inspect shows state and bytes', async () => {
    let err: unknown;
    let written = 0;
    const { id, c } = await accepted((e) => {
      expect(engine.inspect(e[1])).toEqual({ state: 'new', bytesFromClient: 0, bytesToClient: 0 });
      try {
        engine.reply(e[1], { text: '554 no\r\n' });
      } catch (x) {
        err = x;
      }
      written = engine.reply(e[1], { text: '554 no\r\n', profile: P_DROP });
      expect(engine.inspect(e[1])).toEqual({ state: 'closing', bytesFromClient: 0, bytesToClient: 8 });
    });
    expect(err).toBeInstanceOf(TypeError);
    expect((err as Error).message).toMatch(/has no profile yet: give reply\(id, \{ \.\.\., profile \}\)/);
    expect(written).toBe(8);
    await c.waitData('554 no\r\n');
    c.sock.end();
    await c.closed;
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT]);
  });
});

// ----- hold ----------------------------------------------------------------------------------

describe('hold', () => {
  it('expires after the window, then engineReply sends the text and closes', async () => {
    const t0 = performance.now();
    const { id, c } = await accepted((e) => expect(engine.hold(e[1], { windowMs: 300, profile: P_DROP })).toBe(true));
    await waitFor(() => engine.inspect(id)?.state === 'held', { what: 'the hold applied by the engine thread' });
    expect(engine.counts().held).toBe(1);
    engine.hold(id, { windowMs: 10_000, profile: P_DROP }); // not `new` any more: ignored (the window stays 300 ms)
    const ev = await waitEvent(evFor(EV_EXPIRED, id));
    expect(engine.inspect(id)?.state).toBe('waiting');
    const heldMs = ev[2] as number;
    expect(heldMs).toBeGreaterThanOrEqual(299);
    expect(heldMs).toBeLessThan(1000);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(299);
    expect(engine.counts().held).toBe(0);
    expect(engine.reply(id, { greeting: true })).toBe(-1); // no refused greeting to send
    expect(engine.reply(id, { text: '421 4.3.2 try later\r\n' })).toBe(21);
    expect(engine.reply(id, { text: 'again\r\n' })).toBe(-1);
    await c.waitData('421 4.3.2 try later\r\n');
    c.sock.end();
    expect(await c.closed).toEqual({ end: true, code: undefined });
    expect(c.text()).toBe('421 4.3.2 try later\r\n');
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT, EV_EXPIRED]);
  });

  it('early talk with action drop: TALK with the exact partial line, then RST', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_DROP }));
    await sleep(50);
    c.sock.write('EHLO x');
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect(talk[2]).toBeGreaterThanOrEqual(40);
    expect(talk[2]).toBeLessThan(2000);
    expect((talk[3] as Buffer).toString('latin1')).toBe('EHLO x');
    expect(talk[4]).toBe(6);
    expect((await c.closed).code).toBe('ECONNRESET');
    engine.drop(id); // gone: the thread ignores it
    await applied();
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT, EV_TALK]);
  });

  it('early talk with action reject: the reply, then EOF', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_REJECT }));
    c.sock.write('EHLO reject.test\r\n');
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect((talk[3] as Buffer).toString()).toBe('EHLO reject.test\r\n');
    await c.waitData(REJECT);
    c.sock.end();
    expect(await c.closed).toEqual({ end: true, code: undefined });
    expect(c.text()).toBe(REJECT);
  });

  it('a client that hangs up during the hold is GONE client_closed', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_DROP }));
    c.sock.end();
    expect(await waitEvent(evFor(EV_GONE, id))).toEqual([EV_GONE, id, 'client_closed']);
    await c.closed;
  });

  it('a client that resets during the hold is GONE client_reset', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_DROP }));
    c.sock.resetAndDestroy();
    expect(await waitEvent(evFor(EV_GONE, id))).toEqual([EV_GONE, id, 'client_reset']);
  });

  it('a 1 MB flood during the hold is read at most one read buffer (64 KiB) and dropped', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_DROP }));
    const flood = randomBytes(1024 * 1024);
    c.sock.write(flood);
    const talk = await waitEvent(evFor(EV_TALK, id));
    const bytes = talk[4] as number;
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThanOrEqual(65536);
    expect((talk[3] as Buffer).equals(flood.subarray(0, Math.min(100, bytes)))).toBe(true);
    expect(['ECONNRESET', 'EPIPE']).toContain((await c.closed).code);
  });

  it('2,000 connections held at once all expire', async () => {
    const n = 2000;
    const ids = new Set<number>();
    onAccept = (e) => {
      ids.add(e[1]);
      engine.hold(e[1], { windowMs: 2500, profile: P_DROP });
    };
    const cs: TestClient[] = [];
    for (let i = 0; i < n; i += 200) {
      const batch = Array.from({ length: Math.min(200, n - i) }, () => connectClient(port4));
      await Promise.all(batch.map((c) => c.connected));
      cs.push(...batch);
    }
    await waitFor(() => ids.size === n, { what: () => `${n} accepted (${ids.size})` });
    await waitFor(() => engine.counts().held === n, { what: () => `${n} held (${engine.counts().held})` });
    expect(engine.counts()).toMatchObject({ connections: n, held: n, fds: n + 2 });
    await waitFor(() => events.filter((e) => e[0] === EV_EXPIRED).length === n, {
      what: () => `${n} EXPIRED (${events.filter((e) => e[0] === EV_EXPIRED).length})`,
      timeout: 10_000,
    });
    const expired = events.filter((e) => e[0] === EV_EXPIRED);
    expect(new Set(expired.map((e) => e[1]))).toEqual(ids);
    for (const e of expired) {
      expect(e[2]).toBeGreaterThanOrEqual(2499);
      expect(e[2]).toBeLessThan(4000);
    }
    expect(engine.counts()).toMatchObject({ connections: n, held: 0 });
    for (const id of ids) expect(engine.drop(id)).toBe(true);
    const results = await Promise.all(cs.map((c) => c.closed));
    expect(results.every((r) => r.code === 'ECONNRESET')).toBe(true);
  }, 60_000);

  it('a reply lingers at most replyLingerMs for a client that never closes', async () => {
    const { id, c } = await accepted((e) => engine.reply(e[1], { text: '421 busy\r\n', profile: P_DROP }), { allowHalfOpen: true });
    await c.waitData('421 busy\r\n');
    await new Promise<void>((r) => c.sock.once('end', () => r())); // the reply is followed by FIN
    const t0 = performance.now();
    expect(engine.counts().connections).toBe(1); // waiting for the client's EOF
    // The client never ends its side: the engine lets go after replyLingerMs (1 s) anyway.
    await waitFor(() => engine.counts().connections === 0, { what: () => 'the engine to close the lingering reply', timeout: 5000 });
    expect(performance.now() - t0).toBeGreaterThan(800);
    c.sock.end();
    await c.closed;
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT]);
  }, 15_000);
});

// ----- profile behaviours: teaser, action log, deferred reply, talk stages, decision bound ----

describe('profiles', () => {
  /** A backend that greets `220 mx\r\n` and records what it receives. */
  async function recordingBackend(): Promise<{ b: Backend; seen: () => string }> {
    let got = '';
    const b = await startBackend((s) => {
      s.write('220 mx\r\n');
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    });
    return { b, seen: () => got };
  }

  it('hold writes the profile teaser at once; the backend greeting completes it', async () => {
    const { b } = await recordingBackend();
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 100, profile: P_TEASER }));
    await c.waitData(TEASER);
    expect(engine.inspect(id)).toEqual({ state: 'held', bytesFromClient: 0, bytesToClient: TEASER.length });
    await waitEvent(evFor(EV_EXPIRED, id));
    engine.connect(id, upstream(b.port, P_TEASER));
    await c.waitData('220 mx\r\n');
    expect(c.text()).toBe(`${TEASER}220 mx\r\n`);
    c.sock.end();
    (await b.connected).end();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end[4]).toBe(TEASER.length + 8);
  });

  it('TALK carries the bytes sent to the client so far: the teaser of a client that talks after it', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 10_000, profile: P_TEASER }));
    await c.waitData(TEASER);
    c.sock.write('EHLO x\r\n');
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect(talk[6]).toBe(TEASER.length);
    await c.closed;
  });

  it('action log: TALK (stage held), the hold goes on, and the early bytes reach the backend first after the 220', async () => {
    const { b, seen } = await recordingBackend();
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 300, profile: P_LOG }));
    c.sock.write('EHLO early\r\n');
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect(talk).toEqual([EV_TALK, id, talk[2], Buffer.from('EHLO early\r\n'), 12, 'held', 0]);
    c.sock.write('MAIL FROM:<a@b>\r\n'); // more early bytes: buffered, no second TALK
    await waitEvent(evFor(EV_EXPIRED, id));
    expect(engine.inspect(id)).toEqual({ state: 'waiting', bytesFromClient: 29, bytesToClient: 0 });
    engine.connect(id, upstream(b.port, P_LOG));
    expect((await waitEvent(evFor(EV_GREETING, id)))[4]).toBe(1);
    await c.waitData('220 mx\r\n');
    await waitFor(() => seen() === 'EHLO early\r\nMAIL FROM:<a@b>\r\n', { what: () => `backend got ${JSON.stringify(seen())}` });
    c.sock.write('QUIT\r\n');
    await waitFor(() => seen().endsWith('QUIT\r\n'), { what: () => `backend got ${JSON.stringify(seen())}` });
    c.sock.end();
    (await b.connected).end();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end[3]).toBe(35);
    expect(eventsOf(id).filter((e) => e[0] === EV_TALK)).toHaveLength(1);
  });

  it('action log: past earlyBufferBytes the client is not read until the relay (no drop), then everything arrives in order', async () => {
    const { b, seen } = await recordingBackend();
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 300, profile: P_LOG_SMALL }));
    const early = `${'x'.repeat(100)}\r\n`;
    c.sock.write(early);
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect(talk[3]).toEqual(Buffer.from('x'.repeat(8))); // evidenceBytes
    expect(talk[4]).toBe(16);
    await waitEvent(evFor(EV_EXPIRED, id));
    expect(engine.inspect(id)?.bytesFromClient).toBe(16);
    engine.connect(id, upstream(b.port, P_LOG_SMALL));
    await waitFor(() => seen() === early, { what: () => `backend got ${seen().length} bytes` });
    c.sock.end();
    (await b.connected).end();
    expect((await waitEvent(evFor(EV_END, id)))[3]).toBe(102);
  });

  it('action log: a client that hangs up after talking is GONE client_closed', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_LOG }));
    c.sock.write('EHLO x\r\n');
    await waitEvent(evFor(EV_TALK, id));
    c.sock.end();
    expect(await waitEvent(evFor(EV_GONE, id))).toEqual([EV_GONE, id, 'client_closed']);
  });

  it('TALK says the stage: greeting (connected, no greeting yet) and connecting (connect in flight)', async () => {
    const silent = await startBackend(() => undefined);
    const g = await accepted((e) => engine.connect(e[1], upstream(silent.port, P_DROP)));
    await silent.connected;
    await waitFor(() => engine.inspect(g.id)?.state === 'greeting', { what: () => 'state greeting' });
    g.c.sock.write('EHLO x\r\n');
    expect((await waitEvent(evFor(EV_TALK, g.id)))[5]).toBe('greeting');
    await g.c.closed;

    const hole = await blackHole();
    try {
      const k = await accepted((e) => engine.connect(e[1], upstream(hole.port, P_DROP, { timeoutMs: 5000 })));
      await waitFor(() => engine.inspect(k.id)?.state === 'connecting', { what: 'the connect applied' });
      k.c.sock.write('EHLO y\r\n');
      const talk = await waitEvent(evFor(EV_TALK, k.id));
      expect(talk[5]).toBe('connecting');
      expect(talk[4]).toBe(8);
      await k.c.closed;
    } finally {
      hole.close();
    }
  });

  it('redefining a profile applies to new uses only: a held connection keeps the reply it was given', async () => {
    const P_REDEFINED = 20;
    engine.defineProfile(P_REDEFINED, { ...BASE, action: 'reject', rejectReply: '554 old\r\n' });
    const first = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_REDEFINED }));
    engine.defineProfile(P_REDEFINED, { ...BASE, action: 'reject', rejectReply: '554 new\r\n' });
    const second = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_REDEFINED }));
    first.c.sock.write('EHLO a\r\n');
    second.c.sock.write('EHLO b\r\n');
    await first.c.waitData('554 old\r\n');
    await second.c.waitData('554 new\r\n');
    first.c.sock.end();
    second.c.sock.end();
    await Promise.all([first.c.closed, second.c.closed]);
  });

  it("deferred reply: `first` at once, the reply after the client's first line, then EOF", async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 50, profile: P_TEASER }), { allowHalfOpen: true });
    await waitEvent(evFor(EV_EXPIRED, id));
    expect(engine.reply(id, { first: '220 mx.test ESMTP\r\n', text: '550 5.7.1 go away\r\n' })).toBe(19);
    await c.waitData(`${TEASER}220 mx.test ESMTP\r\n`);
    await sleep(100);
    expect(c.text()).toBe(`${TEASER}220 mx.test ESMTP\r\n`); // nothing more before the client's line
    expect(engine.inspect(id)?.state).toBe('closing');
    c.sock.write('EHLO x');
    await sleep(50);
    c.sock.write('\r\n');
    await c.waitData('550 5.7.1 go away\r\n');
    await new Promise<void>((r) => c.sock.once('end', () => r()));
    c.sock.end();
    await c.closed;
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT, EV_EXPIRED]);
  });

  it('deferred reply: a silent client gets the reply after deferredReplyMs anyway', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 50, profile: P_TEASER }));
    await waitEvent(evFor(EV_EXPIRED, id));
    const t0 = performance.now();
    engine.reply(id, { first: '220 mx\r\n', text: '421 4.3.2 later\r\n' });
    await c.waitData('421 4.3.2 later\r\n');
    expect(performance.now() - t0).toBeGreaterThan(350);
    await c.closed;
  });

  it('waiting is bounded: no command within decisionMs is GONE undecided (reset)', async () => {
    const { id, c } = await accepted((e) => engine.hold(e[1], { windowMs: 50, profile: P_DECISION }));
    const expired = await waitEvent(evFor(EV_EXPIRED, id));
    const gone = await waitEvent(evFor(EV_GONE, id), 2000);
    expect(gone).toEqual([EV_GONE, id, 'undecided']);
    expect(events.indexOf(gone)).toBeGreaterThan(events.indexOf(expired));
    expect((await c.closed).code).toBe('ECONNRESET');
  });

  it('an exception escaping the event callback is caught and counted; the engine keeps serving', async () => {
    const before = engine.counts().callbackErrors;
    const { id, c } = await accepted(() => {
      throw new Error('handler failed on purpose');
    });
    expect(await waitEvent(evFor(EV_GONE, id))).toEqual([EV_GONE, id, 'undecided']);
    await c.closed;
    expect(engine.counts().callbackErrors).toBe(before + 1);
    const next = await accepted((e) => engine.reply(e[1], { text: '220 still here\r\n', profile: P_DROP }));
    await next.c.waitData('220 still here\r\n');
    await next.c.closed;
  });
});

// ----- upstream ------------------------------------------------------------------------------

describe('upstream', () => {
  it('GREETING 220 starts the relay: SMTP both ways, 5 MB each way byte-identical, half-close, END counts', async () => {
    const MB5 = 5 * 1024 * 1024;
    const up = randomBytes(MB5);
    const down = randomBytes(MB5);
    let backendGot: Buffer | undefined;
    let backendDone: () => void = () => undefined;
    const backendFinished = new Promise<void>((r) => (backendDone = r));
    const b = await startBackend(
      (s) => {
        const chunks: Buffer[] = [];
        let phase: 'ehlo' | 'payload' = 'ehlo';
        s.write('220 ok\r\n');
        s.on('data', (d: Buffer) => {
          chunks.push(d);
          if (phase === 'ehlo' && Buffer.concat(chunks).toString('latin1').includes('\r\n')) {
            const all = Buffer.concat(chunks);
            chunks.length = 0;
            if (all.length > 8) chunks.push(all.subarray(8));
            phase = 'payload';
            expect(all.subarray(0, 8).toString()).toBe('EHLO t\r\n');
            s.write('250 hi\r\n');
            s.end(down); // the server's half: 5 MB, then FIN
          }
        });
        s.on('end', () => {
          backendGot = Buffer.concat(chunks);
          backendDone();
        });
      },
      { allowHalfOpen: true },
    );
    const backendPort = b.port;
    const { id, c } = await accepted(connectTo(backendPort, P_STRIP), { allowHalfOpen: true });
    const greeting = await waitEvent(evFor(EV_GREETING, id));
    expect(greeting[2]).toBe('220');
    expect(greeting[3]).toBeGreaterThanOrEqual(0);
    expect(greeting[4]).toBe(1);
    expect(engine.counts().relaying).toBe(1);
    await c.waitData('220 ok\r\n');
    expect(engine.reply(id, { text: 'no\r\n', profile: P_DROP })).toBe(-1); // relaying: too late for a reply
    expect(engine.inspect(id)?.state).toBe('relaying');
    engine.connect(id, upstream(backendPort, P_DROP, { timeoutMs: 100 })); // relaying: the thread ignores it
    c.sock.write('EHLO t\r\n');
    await c.waitData('220 ok\r\n250 hi\r\n');
    c.sock.end(up);
    await backendFinished;
    expect(b.conns).toHaveLength(1); // the ignored connect made no second connection
    const r = await c.closed;
    expect(r).toEqual({ end: true, code: undefined });
    const got = c.data();
    expect(got.subarray(0, 16).toString()).toBe('220 ok\r\n250 hi\r\n');
    expect(sha(got.subarray(16))).toBe(sha(down));
    expect(sha(backendGot!)).toBe(sha(up));
    const end = await waitEvent(evFor(EV_END, id));
    expect(['client_closed', 'server_closed']).toContain(end[2]);
    expect(end[3]).toBe(8 + MB5); // what the client sent
    expect(end[4]).toBe(got.length); // what the client received
    expect(eventsOf(id).map((e) => e[0])).toEqual([EV_ACCEPT, EV_GREETING, EV_END]);
  }, 60_000);

  it('the preamble reaches the backend before anything else; a multi-line greeting split in writes is relayed whole', async () => {
    const b = await startBackend((s) => {
      s.write('220-first line\r\n');
      setTimeout(() => s.write('220 second'), 30);
      setTimeout(() => s.write(' line\r\n'), 60);
    });
    const preamble = Buffer.from('PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\r\n');
    const { id, c } = await accepted(connectTo(b.port, P_DROP, { preamble }));
    const s = await b.connected;
    const seen = collect(s);
    const greeting = await waitEvent(evFor(EV_GREETING, id));
    expect(greeting).toEqual([EV_GREETING, id, '220', greeting[3], 1]);
    await c.waitData('220 second line\r\n');
    expect(c.text()).toBe('220-first line\r\n220 second line\r\n');
    c.sock.write('QUIT\r\n');
    await waitFor(() => seen.text().includes('QUIT\r\n'), { what: () => `backend got ${JSON.stringify(seen.text())}` });
    expect(seen.text()).toBe(`${preamble.toString()}QUIT\r\n`);
    s.end('221 bye\r\n');
    await c.waitData('221 bye\r\n');
    c.sock.end();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end).toEqual([EV_END, id, 'server_closed', 6, c.data().length]);
  });

  it('GREETING 421: QUIT to the backend, the client waits; engineReplyGreeting sends the 421', async () => {
    let seen: ReturnType<typeof collect> | undefined;
    const b = await startBackend((s) => {
      seen = collect(s);
      s.write('421 busy\r\n');
    });
    const { id, c } = await accepted(connectTo(b.port, P_DROP));
    const greeting = await waitEvent(evFor(EV_GREETING, id));
    expect(greeting[2]).toBe('421');
    expect(greeting[4]).toBe(0);
    await seen!.ended;
    expect(seen!.text()).toBe('QUIT\r\n');
    expect(c.text()).toBe('');
    expect(engine.counts()).toMatchObject({ connections: 1, relaying: 0, fds: 3 });
    expect(engine.reply(id, { greeting: true })).toBe(10);
    await c.waitData('421 busy\r\n');
    c.sock.end();
    expect(await c.closed).toEqual({ end: true, code: undefined });
    expect(c.text()).toBe('421 busy\r\n');
  });

  it('a garbage greeting is GREETING garbage; the client can be connected again', async () => {
    const bad = await startBackend((s) => s.write('HTTP/1.1 400 Bad\r\n'));
    const good = await startBackend((s) => s.write('220 good\r\n'));
    const { id, c } = await accepted(connectTo(bad.port, P_DROP));
    expect((await waitEvent(evFor(EV_GREETING, id)))[2]).toBe('garbage');
    expect(engine.connect(id, upstream(good.port, P_DROP))).toBe(true);
    await waitEvent((e) => e[0] === EV_GREETING && e[1] === id && e[2] === '220');
    await c.waitData('220 good\r\n');
    expect(c.text()).toBe('220 good\r\n');
    c.sock.end();
    (await good.connected).end();
    await waitEvent(evFor(EV_END, id));
  });

  it.skipIf(skipUnlessRoot('engine: connect from a sourceAddress'))(
    'with a sourceAddress (root) the backend sees that address as the peer',
    async () => {
      // 127.0.0.2 is local through the 127/8 route, so no TPROXY rule is needed for the replies.
      let peer: string | undefined;
      const b = await startBackend((s) => {
        peer = s.remoteAddress;
        s.write('220 spoofed\r\n');
      });
      const { id, c } = await accepted((e) => engine.connect(e[1], upstream(b.port, P_DROP, { sourceAddress: '127.0.0.2', synCount: 2 })));
      expect((await waitEvent(evFor(EV_GREETING, id)))[4]).toBe(1);
      expect(peer).toBe('127.0.0.2');
      await c.waitData('220 spoofed\r\n');
      c.sock.end();
      (await b.connected).end();
      await waitEvent(evFor(EV_END, id));
    },
  );

  it('a refused connect (made on the engine thread) is UPSTREAM_FAILED connect ECONNREFUSED; the client stays', async () => {
    const closed = await startBackend(() => undefined);
    const port = closed.port;
    await closed.close();
    const { id, c } = await accepted((e) => expect(engine.connect(e[1], upstream(port, P_DROP))).toBe(true));
    const failed = await waitEvent(evFor(EV_UPSTREAM_FAILED, id));
    expect(failed.slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, id, 'connect', 'ECONNREFUSED']);
    expect(failed[4]).toBeLessThan(1000);
    expect(engine.inspect(id)?.state).toBe('waiting'); // it can be connected again or answered
    expect(engine.counts()).toMatchObject({ connections: 1, fds: 3 });
    expect(engine.reply(id, { text: '421 no server\r\n', profile: P_DROP })).toBe(15);
    await c.waitData('421 no server\r\n');
    c.sock.end();
    await c.closed;
  });

  it('a connect that gets no answer times out: UPSTREAM_FAILED connect ETIMEDOUT', async () => {
    const hole = await blackHole(); // the connect hangs like one to a dead host
    try {
      const { id, c } = await accepted(connectTo(hole.port, P_DROP, { timeoutMs: 300 }));
      const failed = await waitEvent(evFor(EV_UPSTREAM_FAILED, id));
      expect(failed.slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, id, 'connect', 'ETIMEDOUT']);
      expect(failed[4]).toBeGreaterThanOrEqual(299);
      expect(failed[4]).toBeLessThan(1500);
      expect(engine.drop(id)).toBe(true);
      await c.closed;
    } finally {
      hole.close();
    }
  });

  it('a backend that never greets: UPSTREAM_FAILED greeting ETIMEDOUT after greetingTimeoutMs', async () => {
    const b = await startBackend(() => undefined);
    const { id, c } = await accepted(connectTo(b.port, P_GREETING_TIMEOUT));
    const failed = await waitEvent(evFor(EV_UPSTREAM_FAILED, id));
    expect(failed.slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, id, 'greeting', 'ETIMEDOUT']);
    expect(failed[4]).toBeGreaterThanOrEqual(299);
    expect(failed[4]).toBeLessThan(1500);
    const s = await b.connected;
    await new Promise((r) => (s.destroyed ? r(undefined) : s.once('close', r))); // the engine closed it
    expect(engine.counts()).toMatchObject({ connections: 1, fds: 3 });
    engine.drop(id);
    await c.closed;
  });

  it('a backend that closes before (or in the middle of) its greeting: UPSTREAM_FAILED greeting EOF', async () => {
    for (const half of ['', '220 half a gree']) {
      const b = await startBackend((s) => s.end(half));
      const { id, c } = await accepted(connectTo(b.port, P_DROP));
      const failed = await waitEvent(evFor(EV_UPSTREAM_FAILED, id));
      expect(failed.slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, id, 'greeting', 'EOF']);
      expect(c.text()).toBe('');
      engine.drop(id);
      await c.closed;
      await b.close();
    }
  });

  it('early talk while connecting or waiting for the greeting closes the upstream too', async () => {
    const b = await startBackend(() => undefined); // never greets
    const { id, c } = await accepted(connectTo(b.port, P_REJECT));
    const s = await b.connected;
    const seen = collect(s);
    c.sock.write('HELO early\r\n');
    const talk = await waitEvent(evFor(EV_TALK, id));
    expect((talk[3] as Buffer).toString()).toBe('HELO early\r\n');
    await seen.ended;
    expect(seen.text()).toBe('');
    await c.waitData(REJECT);
    c.sock.end();
    await c.closed;
  });
});

// ----- relay ---------------------------------------------------------------------------------

describe('relay', () => {
  /** A client relayed to a backend that greets `220 mx\r\n` and runs `script` per received line. */
  async function relayed(
    profile: number,
    script: (line: string, s: net.Socket) => void = () => undefined,
    opts: { allowHalfOpen?: boolean } = {},
  ): Promise<{ id: number; c: TestClient; s: net.Socket; b: Backend }> {
    const b = await startBackend((s) => {
      s.write('220 mx\r\n');
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl + 1);
          buf = buf.slice(nl + 1);
          script(line, s);
        }
      });
    });
    const { id, c } = await accepted(connectTo(b.port, profile), opts);
    await waitEvent(evFor(EV_GREETING, id));
    await c.waitData('220 mx\r\n');
    return { id, c, s: await b.connected, b };
  }

  it('strips PIPECONNECT from an EHLO reply split across writes, until DATA', async () => {
    const { id, c, s } = await relayed(P_STRIP, (line, sock) => {
      if (line === 'EHLO one\r\n') {
        sock.write('250-mx\r\n250-PIPECONNECT\r\n');
        setTimeout(() => sock.write('250 SIZE 10\r\n'), 30);
      } else if (line === 'EHLO two\r\n') {
        sock.write('250-mx\r\n250-SIZE 10\r\n');
        setTimeout(() => sock.write('250 X_PIPE_CONNECT\r\n'), 30);
      } else if (line === 'EHLO three\r\n') {
        sock.write('250-mx\r\n250-pipeconnect\r\n250-PIPECONNECTION\r\n250 8BITMIME\r\n');
      } else if (line === 'NOOP\r\n') {
        sock.write('250 PIPECONNECT\r\n'); // one-line: kept
      } else if (line === 'DATA\r\n') {
        sock.write('354 go\r\n');
      } else if (line === '.\r\n') {
        sock.write('250-mx\r\n250 PIPECONNECT\r\n');
      }
    });
    let at = c.data().length;
    const next = async (cmd: string, expectText: string): Promise<void> => {
      c.sock.write(cmd);
      await c.waitData((b) => b.length >= at + expectText.length);
      await sleep(60); // nothing more may arrive
      expect(c.data().subarray(at).toString('latin1')).toBe(expectText);
      at = c.data().length;
    };
    await next('EHLO one\r\n', '250-mx\r\n250 SIZE 10\r\n');
    await next('EHLO two\r\n', '250-mx\r\n250 SIZE 10\r\n');
    await next('EHLO three\r\n', '250-mx\r\n250-PIPECONNECTION\r\n250 8BITMIME\r\n');
    await next('NOOP\r\n', '250 PIPECONNECT\r\n');
    await next('DA', '');
    await next('TA\r\n', '354 go\r\n');
    await next('Subject: x\r\n\r\nbody\r\n.\r\n', '250-mx\r\n250 PIPECONNECT\r\n');
    s.end();
    c.sock.end();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end[3]).toBe(c.sock.bytesWritten);
    expect(end[4]).toBe(c.data().length);
  });

  it('without the guard PIPECONNECT passes untouched', async () => {
    const { id, c, s } = await relayed(P_DROP, (line, sock) => {
      if (line.startsWith('EHLO')) sock.write('250-mx\r\n250 PIPECONNECT\r\n');
    });
    c.sock.write('EHLO x\r\n');
    await c.waitData('250 PIPECONNECT\r\n');
    expect(c.text()).toBe('220 mx\r\n250-mx\r\n250 PIPECONNECT\r\n');
    s.end();
    c.sock.end();
    await waitEvent(evFor(EV_END, id));
  });

  it('client idle: END client_timeout after clientIdleMs without client activity (activity pushes it back)', async () => {
    const { id, c } = await relayed(P_CLIENT_IDLE, (_line, sock) => sock.write('250 ok\r\n'));
    const t0 = performance.now();
    for (let i = 0; i < 6; i++) {
      await sleep(100);
      c.sock.write('NOOP\r\n');
    }
    const activeUntil = performance.now();
    const end = await waitEvent(evFor(EV_END, id), 3000);
    expect(end[2]).toBe('client_timeout');
    const at = performance.now();
    expect(at - t0).toBeGreaterThan(800);
    expect(at - activeUntil).toBeGreaterThan(200);
    expect(at - activeUntil).toBeLessThan(1500);
    await c.closed;
  });

  it('server idle: END server_timeout after serverIdleMs without server activity', async () => {
    const { id, c } = await relayed(P_SERVER_IDLE);
    const t0 = performance.now();
    const end = await waitEvent(evFor(EV_END, id), 3000);
    expect(end[2]).toBe('server_timeout');
    expect(performance.now() - t0).toBeGreaterThan(250);
    expect(performance.now() - t0).toBeLessThan(1500);
    await c.closed;
  });

  it('a server reset: the client gets what was sent, a clean EOF, and END server_reset after its own EOF', async () => {
    const { id, c } = await relayed(
      P_DROP,
      (line, sock) => {
        if (line === 'EHLO x\r\n') {
          sock.write('250 last words\r\n', () => setTimeout(() => sock.resetAndDestroy(), 20));
        }
      },
      { allowHalfOpen: true },
    );
    c.sock.write('EHLO x\r\n');
    await c.waitData('250 last words\r\n');
    await new Promise<void>((r) => c.sock.once('end', () => r()));
    expect(eventsOf(id).some((e) => e[0] === EV_END)).toBe(false); // waits for the client's EOF
    c.sock.end();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end).toEqual([EV_END, id, 'server_reset', 8, c.data().length]);
    expect((await c.closed).code).toBeUndefined();
  });

  it('a client reset closes the backend at once: END client_reset', async () => {
    const { id, c, s } = await relayed(P_DROP);
    const seen = collect(s);
    c.sock.write('MAIL FROM:<a@b>\r\n');
    await waitFor(() => seen.text().includes('MAIL'), { what: () => 'backend to get MAIL' });
    c.sock.resetAndDestroy();
    const end = await waitEvent(evFor(EV_END, id));
    expect(end[2]).toBe('client_reset');
    await seen.ended;
  });

  it('a server close and a client reset seen in one wakeup: END server_closed, both fds closed', async () => {
    // Like smtp-source after QUIT: the server's 221 and FIN, then the client's RST, all before the
    // engine's next epoll_wait. The server's EOF comes first in the batch; the relay ends at once
    // (no half-close of, and no read from, the reset client) and the first cause stands.
    const { id, c, s } = await relayed(P_DROP);
    s.write('221 bye\r\n');
    await c.waitData('221 bye');
    s.destroy(); // FIN from the server now
    c.sock.resetAndDestroy(); // RST from the client, in the same JS turn
    const end = await waitEvent(evFor(EV_END, id));
    expect(end).toEqual([EV_END, id, 'server_closed', 0, c.data().length]);
    expect(engine.counts()).toMatchObject({ connections: 0, relaying: 0 });
  });

  it('engineClose ends a relay with its cause; held connections close without events', async () => {
    const { id, c, s } = await relayed(P_DROP);
    const seen = collect(s);
    const held = await accepted((e) => engine.hold(e[1], { windowMs: 10_000, profile: P_DROP }));
    expect(engine.close(id, 'shutdown')).toBe(true);
    expect(engine.close(held.id, 'shutdown')).toBe(true);
    engine.close(id, 'again'); // runs after the first, which ended it: ignored
    const end = await waitEvent(evFor(EV_END, id));
    expect(end).toEqual([EV_END, id, 'shutdown', 0, 8]);
    expect((await c.closed).end).toBe(true);
    expect((await held.c.closed).end).toBe(true);
    await seen.ended;
    await applied();
    expect(eventsOf(id).filter((e) => e[0] === EV_END)).toHaveLength(1);
    expect(eventsOf(held.id).map((e) => e[0])).toEqual([EV_ACCEPT]);
  });

  it('END from engineClose outside a callback arrives without other I/O', async () => {
    const { id } = await relayed(P_DROP);
    const before = batches;
    await sleep(20);
    engine.close(id, 'operator');
    await waitEvent(evFor(EV_END, id), 500);
    expect(batches).toBe(before + 1);
  });
});

// ----- resources: deadlines, buffers, a backend's last words ---------------------------------

describe('resources', () => {
  it('deadlines do not outlive their connections: 300 short relayed sessions with 5-minute idle limits leave none', async () => {
    const b = await startBackend((s) => {
      s.write('220 mx\r\n');
      s.on('data', (d: Buffer) => {
        if (d.toString('latin1').includes('QUIT')) s.end('221 bye\r\n');
      });
    });
    onAccept = (e) => {
      engine.connect(e[1], upstream(b.port, P_LONG_IDLE));
    };
    let maxRatio = 0;
    const one = async (): Promise<void> => {
      const c = connectClient(port4);
      await c.waitData('220 mx\r\n');
      const k = engine.counts();
      maxRatio = Math.max(maxRatio, k.deadlines / Math.max(1, k.connections));
      c.sock.write('QUIT\r\n');
      await c.waitData('221 bye\r\n');
      c.sock.end();
      await c.closed;
    };
    for (let i = 0; i < 300; i += 20) await Promise.all(Array.from({ length: 20 }, one));
    await waitFor(() => events.filter((e) => e[0] === EV_END).length === 300, {
      what: () => `300 END (${events.filter((e) => e[0] === EV_END).length})`,
    });
    expect(maxRatio).toBeLessThanOrEqual(3); // at most state + two idle deadlines per connection
    expect(engine.counts()).toMatchObject({ connections: 0, deadlines: 0 });
  }, 60_000);

  it('a slow reader (1 byte/s) pins at most one read buffer per direction while the server sends 16 MB; drained, nothing is held', async () => {
    // 16 MB, not 1: on loopback the kernel's socket buffers (64 KiB MSS, autotuned) absorb several MB
    // before the engine has to keep anything.
    const MB = 16 * 1024 * 1024;
    let serverSock: net.Socket | undefined;
    const b = await startBackend((s) => {
      serverSock = s;
      s.write('220 mx\r\n');
      s.write(randomBytes(MB));
    });
    let id = 0;
    onAccept = (e) => {
      id = e[1];
      engine.connect(e[1], upstream(b.port, P_DROP));
    };
    const sock = net.connect({ port: port4, host: '127.0.0.1' });
    clients.add(sock);
    sock.on('error', () => undefined);
    sock.pause();
    await new Promise<void>((r) => sock.once('connect', () => r()));
    let got = 0;
    let maxBuffered = 0;
    const BOUND = 65536 + 2 * 4096 + 16; // docs/engine.md: one read buffer per direction (+ the guard's lines)
    for (let i = 0; i < 4; i++) {
      await sleep(i === 0 ? 300 : 1000);
      const chunk = sock.read(1) as Buffer | null;
      got += chunk?.length ?? 0;
      const k = engine.counts();
      maxBuffered = Math.max(maxBuffered, k.bufferedBytes);
      expect(k.bufferedBytes).toBeLessThanOrEqual(2 * BOUND);
    }
    console.info(`[engine test] slow reader: got ${got}, maxBuffered ${maxBuffered}, server still holds ${serverSock!.writableLength}`);
    expect(got).toBeGreaterThan(0);
    expect(maxBuffered).toBeGreaterThan(0); // the engine did hold bytes for this reader...
    expect(maxBuffered).toBeLessThanOrEqual(BOUND); // ...and no more than the bound
    expect(serverSock!.writableLength).toBeGreaterThan(0); // the backpressure reached the server
    expect(engine.inspect(id)?.state).toBe('relaying');
    // Now read everything: the pending bytes drain and their memory is released.
    sock.resume();
    await waitFor(() => engine.counts().bufferedBytes === 0 && serverSock!.writableLength === 0, {
      what: () => `bufferedBytes 0 (${engine.counts().bufferedBytes})`,
      timeout: 10_000,
    });
    sock.destroy();
    await waitEvent(evFor(EV_END, id));
  }, 20_000);

  it("a backend's last reply is not lost when a send to it fails: 554 before a reset reaches the client", async () => {
    const b = await startBackend((s) => {
      s.write('220 mx\r\n');
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got > 8) {
          // Stop reading (the windows fill up, the engine keeps bytes for the backend), then refuse and reset.
          s.pause();
          // The reply and the reset (close with unread bytes) arrive together: the engine sees the
          // failed send to the backend before it reads the reply.
          setTimeout(() => {
            s.write('554 5.3.4 Message too big\r\n');
            s.destroy();
          }, 300);
        }
      });
    });
    const { id, c } = await accepted(connectTo(b.port, P_DROP), { allowHalfOpen: true });
    await c.waitData('220 mx\r\n');
    c.sock.write('DATA\r\n');
    const body = randomBytes(64 * 1024);
    let writing = true;
    const pump = (): void => {
      while (writing && c.sock.write(body));
    };
    c.sock.on('drain', pump);
    pump();
    await c.waitData('554 5.3.4 Message too big\r\n', 5000);
    writing = false;
    c.sock.destroy();
    const end = await waitEvent(evFor(EV_END, id));
    expect(['server_reset', 'server_error', 'client_reset']).toContain(end[2]);
  });
});

// ----- commands and errors -------------------------------------------------------------------

describe('commands', () => {
  const thrown = (fn: () => unknown): unknown => {
    try {
      fn();
    } catch (e) {
      return e;
    }
    throw new Error('expected a throw');
  };

  it('argument errors are TypeError / RangeError; failed syscalls TransparentSyscallError', async () => {
    const raw = { ...engine, ...sockets } as unknown as Record<string, (...a: unknown[]) => unknown>;
    const conn = {
      profile: 0,
      family: 4,
      sourceAddress: '',
      synCount: 0,
      address: '127.0.0.1',
      port: 25,
      timeoutMs: 100,
      preamble: Buffer.alloc(0),
    };
    expect(thrown(() => raw.hold!('1', { windowMs: 10, profile: 0 }))).toBeInstanceOf(TypeError);
    expect(thrown(() => raw.hold!(1, 10, 0))).toBeInstanceOf(TypeError);
    expect((thrown(() => raw.hold!(1, { windowMs: -1, profile: 0 })) as Error).message).toBe(
      'engineHold(id, { windowMs, profile }): windowMs must be an integer from 0 to 2147483647, got -1',
    );
    expect((thrown(() => raw.hold!(1, { windowMs: 10, profile: 999 })) as Error).message).toMatch(/profile 999 is not defined/);
    expect(thrown(() => raw.defineProfile!(65536, BASE))).toBeInstanceOf(RangeError);
    expect((thrown(() => raw.defineProfile!(0, { ...BASE, action: 'bounce' })) as Error).message).toBe(
      "engineProfile(idx, profile): action must be 'drop', 'reject' or 'log', got 'bounce'",
    );
    expect((thrown(() => raw.defineProfile!(0, { ...BASE, decisionMs: 0 })) as Error).message).toMatch(
      /decisionMs must be an integer from 1 to/,
    );
    expect((thrown(() => raw.defineProfile!(0, { ...BASE, teaser: undefined })) as Error).message).toMatch(
      /teaser must be a string, got undefined/,
    );
    expect((thrown(() => raw.connect!(1, { ...conn, preamble: 'PROXY' })) as Error).message).toMatch(
      /preamble must be a Buffer, got string$/,
    );
    expect(thrown(() => raw.connect!(1, { ...conn, port: 0 }))).toBeInstanceOf(RangeError);
    expect(thrown(() => raw.reply!(1, {}))).toBeInstanceOf(TypeError);
    expect(thrown(() => raw.reply!(1, { text: 'x', greeting: true }))).toBeInstanceOf(TypeError);
    expect(thrown(() => raw.plainListener!({ family: 4, address: '127.0.0.1', port: 0, backlog: 1, v6only: 'no' }))).toBeInstanceOf(
      TypeError,
    );
    expect(thrown(() => raw.plainListener!(4, '127.0.0.1', 0, 1, false))).toBeInstanceOf(TypeError);
    expect(thrown(() => raw.start!(() => undefined))).toMatchObject({ message: expect.stringMatching(/already started/) });

    // A connection in `new` to try engineConnect errors on: it stays untouched.
    let errs: unknown[] = [];
    const { id, c } = await accepted((e) => {
      errs = [
        thrown(() => engine.connect(e[1], upstream(25, P_DROP, { address: '::1', timeoutMs: 100 }))),
        thrown(() => engine.connect(e[1], upstream(25, P_DROP, { family: 6, sourceAddress: '127.0.0.1', address: '::1', timeoutMs: 100 }))),
      ];
      engine.hold(e[1], { windowMs: 10_000, profile: P_DROP });
    });
    for (const e of errs) {
      expect(e).toBeInstanceOf(TransparentSyscallError);
      expect((e as TransparentSyscallError).sysCode).toBe('EINVAL');
      expect((e as TransparentSyscallError).syscall).toBe('inet_pton');
    }
    await waitFor(() => engine.counts().held === 1, { what: 'the hold applied' });
    engine.drop(id);
    await c.closed;

    const badFd = thrown(() => sockets.sockName(100_000)) as TransparentSyscallError;
    expect(badFd).toBeInstanceOf(TransparentSyscallError);
    expect(badFd.sysCode).toBe('EBADF');
    expect(badFd.syscall).toBe('getsockname');

    const inUse = thrown(() =>
      sockets.plainListener({ family: 4, address: '127.0.0.1', port: port4, backlog: 1, v6only: false }),
    ) as TransparentSyscallError;
    expect(inUse.sysCode).toBe('EADDRINUSE');
    expect(inUse.syscall).toBe('bind');

    // engineListen takes only listening sockets; the fd stays the caller's on failure.
    const other = await accepted((e) => engine.hold(e[1], { windowMs: 10_000, profile: P_DROP }));
    await other.c.connected;
    const clientFd = (other.c.sock as unknown as { _handle: { fd: number } })._handle.fd;
    const notListening = thrown(() => engine.listen(clientFd, 50)) as TransparentSyscallError;
    expect(notListening).toBeInstanceOf(TransparentSyscallError);
    expect(notListening.sysCode).toBe('EINVAL');
    expect(notListening.syscall).toBe('getsockopt(SO_ACCEPTCONN)');
    const closedFd = thrown(() => engine.listen(100_000, 50)) as TransparentSyscallError;
    expect(closedFd.sysCode).toBe('EBADF');
    engine.drop(other.id);
    await other.c.closed;
  });

  it('sockName shows addresses of both families', () => {
    const fd = sockets.plainListener({ family: 6, address: '::1', port: 0, backlog: 1, v6only: true });
    try {
      expect(sockets.sockName(fd)).toEqual(['::1', expect.any(Number)]);
    } finally {
      loadTransparent().closeFd(fd);
    }
  });

  it('accept failing with EMFILE reports ERROR and pauses the listener, then goes on', async () => {
    // The engine's own fault injection fails one accept4 with EMFILE (no fd limit is lowered for
    // the process, so nothing else in this worker is disturbed): one ERROR, a pause, then every
    // client is accepted — waiting for conditions, not for a fixed time.
    engine.stop();
    startEngine('accept4:1:EMFILE');
    try {
      const lfd = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 64, v6only: false });
      engine.listen(lfd, 77);
      const lport = sockets.sockName(lfd)[1];
      const ids: number[] = [];
      onAccept = (e) => {
        ids.push(e[1]);
        engine.reply(e[1], { text: '220 late\r\n', profile: P_DROP });
      };
      const clients = [0, 1, 2].map(
        () =>
          new Promise<string>((resolve) => {
            const s = net.connect(lport, '127.0.0.1');
            let d = '';
            s.on('data', (x) => (d += x));
            s.on('error', () => undefined);
            s.on('end', () => s.end());
            s.on('close', () => resolve(d));
          }),
      );
      const err = await waitEvent((e) => e[0] === EV_ERROR && e[1] === 77, 10_000);
      expect(err).toEqual([EV_ERROR, 77, 'accept', 'EMFILE']);
      expect(await Promise.all(clients)).toEqual(['220 late\r\n', '220 late\r\n', '220 late\r\n']);
      expect(ids).toHaveLength(3);
      expect(events.filter((e) => e[0] === EV_ERROR)).toHaveLength(1);
      engine.unlisten(77);
    } finally {
      engine.stop();
      startEngine();
    }
  });
});

// ----- environments --------------------------------------------------------------------------

describe('environments', () => {
  it('runs inside a worker thread, survives a throwing callback, and is torn down with the worker', async () => {
    const addonPath = loadedAddonPath();
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const a = require(workerData.addon);
      process.on('uncaughtException', (e) => parentPort.postMessage({ uncaught: e.message }));
      a.engineProfile(0, workerData.profile);
      let first = true;
      a.engineStart((batch) => {
        for (const ev of batch) {
          parentPort.postMessage({ ev: ev.map((x) => (Buffer.isBuffer(x) ? x.toString() : x)) });
          if (ev[0] === 1) {
            if (first) { first = false; throw new Error('handler failed'); }
            a.engineHold(ev[1], { windowMs: 60000, profile: 0 });
            // The hold is queued: report once the engine thread has applied it.
            const report = () => {
              const k = a.engineCounts()[0];
              if (k.held === 1) parentPort.postMessage({ counts: { ...k, callbackErrors: a.engineCallbackErrors() } });
              else setTimeout(report, 5);
            };
            report();
          }
        }
      }, 1);
      const fd = a.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 16, v6only: false });
      a.engineListen(fd, 7, 0);
      parentPort.postMessage({ port: a.sockName(fd)[1] });
      `,
      { eval: true, workerData: { addon: addonPath, profile: BASE } },
    );
    const messages: Array<Record<string, unknown>> = [];
    worker.on('message', (m: Record<string, unknown>) => messages.push(m));
    const errors: unknown[] = [];
    worker.on('error', (e) => errors.push(e));
    await waitFor(() => messages.some((m) => 'port' in m), { what: () => 'the worker listener' });
    const port = messages.find((m) => 'port' in m)!.port as number;

    const first = connectClient(port);
    expect((await first.closed).code).toBe('ECONNRESET'); // undecided: reset
    await waitFor(() => messages.some((m) => (m.ev as unknown[] | undefined)?.[2] === 'undecided'), {
      what: () => JSON.stringify(messages),
    });
    // The engine caught the handler's exception and counted it: nothing reached the process.
    expect(messages.find((m) => 'uncaught' in m)).toBeUndefined();

    const second = connectClient(port);
    await waitFor(() => messages.some((m) => 'counts' in m), { what: () => JSON.stringify(messages) });
    expect(messages.find((m) => 'counts' in m)!.counts).toMatchObject({ connections: 1, held: 1, listeners: 1, fds: 2, callbackErrors: 1 });
    // The main thread's engine is a different one.
    expect(engine.counts().connections).toBe(0);

    // No engineStop: terminating the worker must close its fds (the cleanup hook) without a crash.
    await worker.terminate();
    expect((await second.closed).end).toBe(true);
    expect(errors).toEqual([]);
  });

  it('engineStop and engineStart from inside the callback; process.exit in a worker with the engine running', async () => {
    const worker = new Worker(
      `
      const { parentPort, workerData } = require('node:worker_threads');
      const a = require(workerData.addon);
      a.engineProfile(0, workerData.profile);
      const listen = () => {
        const fd = a.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 16, v6only: false });
        a.engineListen(fd, 1, 0);
        parentPort.postMessage({ port: a.sockName(fd)[1] });
      };
      let accepts = 0;
      const onEvents = (batch) => {
        for (const ev of batch) {
          if (ev[0] !== 1) continue;
          a.engineHold(ev[1], { windowMs: 60000, profile: 0 });
          if (++accepts === 1) {
            a.engineStop(); // closes the connection just held and the listener
            parentPort.postMessage({ afterStop: a.engineCounts() });
            a.engineStart(onEvents, 1);
            listen();
          } else {
            const report = () => {
              const k = a.engineCounts()[0];
              if (k.held !== 1) return setTimeout(report, 5); // the hold is queued: wait until applied
              parentPort.postMessage({ held: k });
              setTimeout(() => process.exit(0), 20); // the engine is still running
            };
            report();
          }
        }
      };
      a.engineStart(onEvents, 1);
      listen();
      `,
      { eval: true, workerData: { addon: loadedAddonPath(), profile: BASE } },
    );
    const messages: Array<Record<string, unknown>> = [];
    worker.on('message', (m: Record<string, unknown>) => messages.push(m));
    const exited = new Promise<number>((r) => worker.on('exit', r));
    const ports = (): number[] => messages.filter((m) => 'port' in m).map((m) => m.port as number);
    await waitFor(() => ports().length === 1, { what: () => 'the first port' });
    const first = connectClient(ports()[0]!);
    expect((await first.closed).end).toBe(true);
    await waitFor(() => ports().length === 2, { what: () => 'the second port' });
    // Stopped: no thread left, so no rows.
    expect(messages.find((m) => 'afterStop' in m)!.afterStop).toEqual([]);
    const second = connectClient(ports()[1]!);
    expect(await exited).toBe(0);
    expect(messages.find((m) => 'held' in m)!.held).toMatchObject({ connections: 1, held: 1, listeners: 1 });
    expect((await second.closed).end).toBe(true);
  });
});

// ----- stop (last: it restarts the engine) ---------------------------------------------------

describe('engineStop', () => {
  it('closes every connection and listener, is idempotent, and the engine can start again', async () => {
    const b = await startBackend((s) => s.write('220 mx\r\n'));
    const relay = await accepted(connectTo(b.port, P_DROP));
    await waitEvent(evFor(EV_GREETING, relay.id));
    const holds = [];
    for (let i = 0; i < 5; i++) holds.push(await accepted((e) => engine.hold(e[1], { windowMs: 60_000, profile: P_DROP })));
    await waitFor(() => engine.counts().held === 5, { what: 'the holds applied' });
    expect(engine.counts()).toMatchObject({ connections: 6, held: 5, relaying: 1, listeners: 2, fds: 2 + 5 + 2 });
    const before = events.length;
    engine.stop();
    engine.stop();
    expect(engine.counts()).toMatchObject({ connections: 0, held: 0, relaying: 0, listeners: 0, fds: 0, deadlines: 0 });
    for (const h of holds) expect((await h.c.closed).end).toBe(true);
    expect((await relay.c.closed).end).toBe(true);
    await sleep(50);
    expect(events.length).toBe(before); // no events after stop
    expect(engine.hold(relay.id, { windowMs: 1, profile: P_DROP })).toBe(false);
    expect(thrown(() => engine.listen(0, 1))).toMatchObject({ message: expect.stringMatching(/not started/) });
    const refused = await connectClient(port4).connected.then(
      () => 'connected',
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(refused).toBe('ECONNREFUSED');

    // Start again for the rest of the file's hooks.
    startEngine();
    const again = await accepted((e) => engine.reply(e[1], { text: '220 again\r\n', profile: P_DROP }));
    await again.c.waitData('220 again\r\n');
    again.c.sock.end();
    await again.c.closed;
  });

  it('ETD_ENGINE_FAULTS fails the n-th syscall on the engine thread: a hold whose epoll_ctl fails is GONE engine_<errno>; socket(2) and connect(2) failures are UPSTREAM_FAILED connect; an epoll failure later is GONE engine_<errno>', async () => {
    engine.stop();
    expect((thrown(() => startEngine('epoll_ctl:x:ENOSPC')) as Error).message).toMatch(
      /^engineStart\(onEvents\): ETD_ENGINE_FAULTS must be <syscall>:<n>:<ERRNO>\[,\.\.\.\] .* \(got "epoll_ctl:x:ENOSPC"\) \(unset it, or fix it\)$/,
    );
    expect(engine.counts().listeners).toBe(0); // not started

    // Calls 1 and 2 of epoll_ctl are the two listeners; the first hold is call 3. Commands are
    // queued: they return true (a thread runs) and their failures come back as events.
    startEngine('epoll_ctl:3:ENOSPC,socket:1:EMFILE,connect:1:ENOMEM');
    const a = await accepted((e) => expect(engine.hold(e[1], { windowMs: 1000, profile: P_DROP })).toBe(true));
    expect(await waitEvent(evFor(EV_GONE, a.id))).toEqual([EV_GONE, a.id, 'engine_enospc']);
    await a.c.closed;

    const b = await accepted((e) => expect(engine.connect(e[1], upstream(9, P_DROP, { timeoutMs: 100 }))).toBe(true));
    const noSocket = await waitEvent(evFor(EV_UPSTREAM_FAILED, b.id));
    expect(noSocket.slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, b.id, 'connect', 'EMFILE']);
    expect(engine.inspect(b.id)?.state).toBe('waiting');
    engine.connect(b.id, upstream(9, P_DROP, { timeoutMs: 100 }));
    await waitFor(() => eventsOf(b.id).filter((e) => e[0] === EV_UPSTREAM_FAILED).length === 2, { what: 'the second UPSTREAM_FAILED' });
    expect(eventsOf(b.id)[2].slice(0, 4)).toEqual([EV_UPSTREAM_FAILED, b.id, 'connect', 'ENOMEM']);
    expect(engine.inspect(b.id)?.state).toBe('waiting');
    engine.reply(b.id, { text: '421 4.3.2 engine trouble\r\n', profile: P_DROP });
    await b.c.waitData('421 4.3.2 engine trouble\r\n');
    b.c.sock.end();
    await b.c.closed;
    await waitFor(() => engine.counts().connections === 0, { what: () => 'the reply to end' });

    // Call 4: the early buffer of action log is full, the client leaves epoll (DEL) — and that fails.
    engine.stop();
    startEngine('epoll_ctl:4:ENOMEM');
    events.length = 0; // ids start again at 1 with a new engine
    const d = await accepted((e) => engine.hold(e[1], { windowMs: 5000, profile: P_LOG_SMALL }));
    d.c.sock.write('x'.repeat(100));
    expect(await waitEvent(evFor(EV_GONE, d.id))).toEqual([EV_GONE, d.id, 'engine_enomem']);
    expect(eventsOf(d.id).map((e) => e[0])).toEqual([EV_ACCEPT, EV_TALK, EV_GONE]);
    await d.c.closed;

    engine.stop();
    startEngine();
  });

  function thrown(fn: () => unknown): unknown {
    try {
      fn();
    } catch (e) {
      return e;
    }
    throw new Error('expected a throw');
  }
});
