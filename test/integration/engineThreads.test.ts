// Engines in several worker threads at once (issue 18): SO_REUSEPORT listeners made in the main thread, one engine per worker on its own fd of the same port, and what a dying worker leaves behind.
//
// Threads share the process's fd table, so the main thread binds every socket of the port
// (plainListener with reusePort) and passes the fd numbers; each worker (test/helpers/
// engineWorker.mjs, running the built dist/) starts its own engine and `listen`s on its fd.
// When a worker ends without engineStop — terminate(), or an uncaught exception — the engine's
// env-cleanup hook must close every fd that engine owned: the listener (so the kernel stops
// routing new connections to it) and every connection (the clients see the close). Checked
// against /proc/self/fd: by count, and by the socket inodes the dead engine held.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { loadTransparent, TransparentSyscallError } from '../../src/native/transparent.js';
import type { EngineCounts, EngineProfile } from '../../src/proxy/protocol.js';
import { TEST_PROFILE } from '../helpers/engineProfile.js';

const sockets = loadTransparent();
const WORKER = path.join(__dirname, '../helpers/engineWorker.mjs');
const DIST_ENGINE = path.join(__dirname, '../../dist/src/native/engine.js');

const PROFILE: EngineProfile = { ...TEST_PROFILE, serverGoneLingerMs: 1000 };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: () => string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what()}`);
    await sleep(5);
  }
}

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** The socket inodes of this process's open fds. */
function socketInodes(): Set<string> {
  const out = new Set<string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the directory's own fd, gone by now
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) out.add(m[1]!);
  }
  return out;
}

/** The inode of the server side of each loopback connection to `port` from one of `clientPorts` (/proc/net/tcp). */
function serverInodes(port: number, clientPorts: readonly number[]): string[] {
  const hex = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');
  const wanted = new Set(clientPorts.map(hex));
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [, local, remote] = f;
    if (local!.endsWith(`:${hex(port)}`) && wanted.has(remote!.split(':')[1]!) && f[9] !== '0') out.push(f[9]!);
  }
  return out;
}

interface Client {
  sock: net.Socket;
  data: () => string;
  localPort: () => number;
  closed: Promise<{ end: boolean; code: string | undefined }>;
}

function connect(port: number): Client {
  const sock = net.connect(port, '127.0.0.1');
  let data = '';
  let end = false;
  let code: string | undefined;
  sock.setEncoding('latin1');
  sock.on('data', (d: string) => (data += d));
  sock.on('end', () => {
    end = true;
    sock.end();
  });
  sock.on('error', (e: NodeJS.ErrnoException) => (code = e.code));
  const closed = new Promise<{ end: boolean; code: string | undefined }>((r) => sock.on('close', () => r({ end, code })));
  let lport = 0;
  sock.on('connect', () => (lport = sock.localPort ?? 0));
  return { sock, data: () => data, localPort: () => lport, closed };
}

interface EngineWorker {
  name: string;
  worker: Worker;
  accepted: () => number;
  counts: () => Promise<EngineCounts>;
  exited: Promise<number>;
  errors: Error[];
}

function startWorker(name: string, fd: number): EngineWorker {
  const worker = new Worker(WORKER, { workerData: { fd, name, profile: { ...PROFILE, teaser: `220-${name}\r\n` } } });
  let accepted = 0;
  const pendingCounts: Array<(c: EngineCounts) => void> = [];
  const errors: Error[] = [];
  let ready = false;
  worker.on('message', (m: { ready?: boolean; accepted?: number; counts?: EngineCounts }) => {
    if (m.ready) ready = true;
    if (m.accepted !== undefined) accepted = m.accepted;
    if (m.counts) pendingCounts.shift()?.(m.counts);
  });
  worker.on('error', (e) => errors.push(e));
  const exited = new Promise<number>((r) => worker.on('exit', r));
  const w: EngineWorker = {
    name,
    worker,
    accepted: () => accepted,
    counts: () =>
      new Promise((r) => {
        pendingCounts.push(r);
        worker.postMessage({ counts: true });
      }),
    exited,
    errors,
  };
  (w as EngineWorker & { ready: () => boolean }).ready = () => ready;
  return w;
}

async function ready(...ws: EngineWorker[]): Promise<void> {
  await waitUntil(
    () => 'workers ready',
    () => ws.every((w) => (w as EngineWorker & { ready: () => boolean }).ready()),
  );
}

/** `n` clients in reply mode: which worker answered each. */
async function answers(port: number, n: number): Promise<string[]> {
  const cs = Array.from({ length: n }, () => connect(port));
  await Promise.all(cs.map((c) => c.closed));
  return cs.map((c) => c.data().replace(/^250 /, '').trim());
}

const tally = (xs: string[]): Record<string, number> => {
  const t: Record<string, number> = {};
  for (const x of xs) t[x] = (t[x] ?? 0) + 1;
  return t;
};

describe('SO_REUSEPORT listeners', () => {
  it('two sockets bind one 127.0.0.1 port only with reusePort on both', () => {
    const a = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 8, v6only: false, reusePort: true });
    const port = sockets.sockName(a)[1];
    try {
      const b = sockets.plainListener({ family: 4, address: '127.0.0.1', port, backlog: 8, v6only: false, reusePort: true });
      expect(sockets.sockName(b)).toEqual(['127.0.0.1', port]);
      sockets.closeFd(b);
      let thrown: unknown;
      try {
        sockets.closeFd(sockets.plainListener({ family: 4, address: '127.0.0.1', port, backlog: 8, v6only: false }));
      } catch (e) {
        thrown = e;
      }
      expect(thrown).toBeInstanceOf(TransparentSyscallError);
      expect((thrown as TransparentSyscallError).sysCode).toBe('EADDRINUSE');
      expect((thrown as TransparentSyscallError).syscall).toBe('bind');
    } finally {
      sockets.closeFd(a);
    }
    // Without the flag on the first socket, the second fails even with it.
    const plain = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 8, v6only: false });
    try {
      const p = sockets.sockName(plain)[1];
      expect(() => sockets.plainListener({ family: 4, address: '127.0.0.1', port: p, backlog: 8, v6only: false, reusePort: true })).toThrow(
        /EADDRINUSE/,
      );
    } finally {
      sockets.closeFd(plain);
    }
  });

  it('transparentListener takes { reusePort } as a 5th argument (root: IP_TRANSPARENT)', (ctx) => {
    if (process.getuid?.() !== 0) ctx.skip();
    const a = sockets.transparentListener(4, '127.0.0.1', 0, 8, { reusePort: true });
    const port = sockets.sockName(a)[1];
    try {
      const b = sockets.transparentListener(4, '127.0.0.1', port, 8, { reusePort: true });
      sockets.closeFd(b);
      expect(() => sockets.closeFd(sockets.transparentListener(4, '127.0.0.1', port, 8))).toThrow(/EADDRINUSE/);
      expect(() => sockets.closeFd(sockets.transparentListener(4, '127.0.0.1', port, 8, {}))).toThrow(/EADDRINUSE/);
    } finally {
      sockets.closeFd(a);
    }
  });
});

describe('engines in two worker threads on one port', () => {
  it.each(['terminate', 'uncaught exception'] as const)(
    'spread connections over both; a worker ended by %s closes its listener and connections',
    async (how) => {
      if (!fs.existsSync(DIST_ENGINE)) throw new Error(`${DIST_ENGINE} is missing: run "npm run build" first`);
      const baseline = fdCount();
      const fdA = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 128, v6only: false, reusePort: true });
      const port = sockets.sockName(fdA)[1];
      const fdB = sockets.plainListener({ family: 4, address: '127.0.0.1', port, backlog: 128, v6only: false, reusePort: true });
      const a = startWorker('A', fdA);
      const b = startWorker('B', fdB);
      try {
        await ready(a, b);

        // reply: the kernel spreads new connections over both engines.
        const spread = tally(await answers(port, 40));
        expect(Object.keys(spread).sort()).toEqual(['A', 'B']);
        expect(spread.A! + spread.B!).toBe(40);
        expect(a.accepted()).toBe(spread.A);
        expect(b.accepted()).toBe(spread.B);

        // hold: the teaser says which engine holds each client.
        a.worker.postMessage({ mode: 'hold' });
        b.worker.postMessage({ mode: 'hold' });
        await sleep(20);
        const held = Array.from({ length: 30 }, () => connect(port));
        await waitUntil(
          () => held.map((c) => c.data()).join('|'),
          () => held.every((c) => /^220-[AB]\r\n$/.test(c.data())),
        );
        const heldBy = (n: string): Client[] => held.filter((c) => c.data() === `220-${n}\r\n`);
        const heldA = heldBy('A');
        const heldB = heldBy('B');
        expect(heldA.length + heldB.length).toBe(30);
        expect((await a.counts()).held).toBe(heldA.length);
        expect((await b.counts()).held).toBe(heldB.length);

        // What A's engine owns, by socket inode: its listener and its held connections.
        const listenerInodeA = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fdA}`))![1]!;
        const connInodesA = serverInodes(
          port,
          heldA.map((c) => c.localPort()),
        );
        expect(connInodesA).toHaveLength(heldA.length);
        const ownedA = [listenerInodeA, ...connInodesA];
        expect(ownedA.every((i) => socketInodes().has(i))).toBe(true);

        // A ends without engineStop.
        if (how === 'terminate') {
          await a.worker.terminate();
        } else {
          a.worker.postMessage({ throw: 'worker A failed' });
          expect(await a.exited).toBe(1);
          expect(a.errors.map((e) => e.message)).toEqual(['worker A failed']);
        }
        await a.exited;
        // Every client A held sees the close (a plain close: FIN).
        for (const c of heldA) expect(await c.closed).toEqual({ end: true, code: undefined });
        // No fd of the process refers to anything A's engine owned.
        const left = socketInodes();
        expect(ownedA.filter((i) => left.has(i))).toEqual([]);
        // B's clients are untouched.
        expect((await b.counts()).held).toBe(heldB.length);

        // The kernel routes every new connection to the survivor.
        b.worker.postMessage({ mode: 'reply' });
        await sleep(20);
        expect(tally(await answers(port, 40))).toEqual({ B: 40 });
        // drop: the survivor resets what it does not want.
        b.worker.postMessage({ mode: 'drop' });
        await sleep(20);
        const dropped = connect(port);
        expect((await dropped.closed).code).toBe('ECONNRESET');
      } finally {
        await a.worker.terminate();
        await b.worker.terminate();
      }
      await a.exited;
      await b.exited;
      // B's engine closed its listener and held clients on the way out too: back to the start.
      await waitUntil(
        () => `fds ${fdCount()} vs ${baseline} at the start`,
        () => fdCount() === baseline,
        5000,
      );
    },
  );
});
