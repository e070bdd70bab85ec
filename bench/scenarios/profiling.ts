// The profile pass (etd only, after the measured runs): a CPU profile of the sessions load and heap snapshots around held connections.
//
// CPU: etd runs with --cpu-prof while smtp-source drives sessions through it; the profile is
// written when etd exits on SIGTERM and summarised as self time by function and by module.
// Heap: etd runs with --heapsnapshot-signal=SIGUSR2; one snapshot with nothing held, one with
// H connections held (H = min(N, 5000), opened like scenario 1); the difference of the two
// censuses, divided by H, is what one held connection keeps alive on the JS heap. (RSS also
// holds what lives outside the JS heap: libuv handles, Node's C++ stream wrappers, malloc.)
// These runs are not measured: profiling slows etd down.

import fs from 'node:fs';
import path from 'node:path';
import { type BenchContext, ensureTime } from '../context.js';
import { runSmtpSource } from '../load.js';
import { sleep } from '../procfs.js';
import {
  type CpuProfile,
  type CpuSummary,
  type HeapCensus,
  type HeapSnapshot,
  heapCensus,
  type PerConnection,
  perConnection,
  summariseCpuProfile,
} from '../profile.js';
import { startProxy } from '../proxy.js';
import { heldSpec, holdConnections } from './held.js';
import { probe } from './sessions.js';

export interface CpuProfileFigures extends CpuSummary {
  sessions: number;
  file: string | undefined;
}

export interface HeapFigures {
  connections: number;
  /** JS heap bytes per held connection (snapshot difference). */
  heapBytesPerConn: number;
  items: PerConnection[];
  files: string[] | undefined;
}

function newFiles(dir: string, suffix: string, before: ReadonlySet<string>): string[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith(suffix) && !before.has(f));
}

/** Waits until a new file with `suffix` appears in `dir` and stops growing; its path. */
async function awaitFile(dir: string, suffix: string, before: ReadonlySet<string>, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = -1;
  for (;;) {
    const f = newFiles(dir, suffix, before)[0];
    if (f) {
      const size = fs.statSync(path.join(dir, f)).size;
      if (size > 0 && size === last) return path.join(dir, f);
      last = size;
    }
    if (Date.now() > deadline) throw new Error(`no complete *${suffix} in ${dir} after ${timeoutMs} ms`);
    await sleep(400);
  }
}

async function snapshot(pid: number, dir: string, timeoutMs: number): Promise<{ file: string; census: HeapCensus }> {
  const before = new Set(fs.readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  const file = await awaitFile(dir, '.heapsnapshot', before, timeoutMs);
  for (let attempt = 0; ; attempt++) {
    try {
      return { file, census: heapCensus(JSON.parse(fs.readFileSync(file, 'utf8')) as HeapSnapshot) };
    } catch (e) {
      // Still being written after a pause longer than the poll interval: wait and retry.
      if (attempt >= 10) throw e;
      await sleep(500);
    }
  }
}

export async function runCpuProfile(ctx: BenchContext, dir: string): Promise<CpuProfileFigures> {
  const sessions = Math.min(ctx.opts.sessions.messages, 10_000);
  ensureTime(ctx, 'profile: CPU', 15_000 + (sessions / 200) * 1000);
  const before = new Set(fs.readdirSync(dir));
  const proxy = await startProxy('etd', ctx, {
    windowMs: ctx.opts.windowMs,
    tag: 'cpuprof',
    nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir],
  });
  try {
    await probe(ctx.bl, proxy);
    const r = await runSmtpSource(
      ctx.bl,
      {
        host: proxy.address,
        port: proxy.port,
        parallel: ctx.opts.sessions.parallel,
        messages: sessions,
        size: ctx.opts.sessions.size,
        keepConnections: false,
      },
      Math.max(10_000, ctx.left() - 10_000),
    );
    if (r.timedOut) throw new Error('smtp-source did not finish in time under the profiler');
  } finally {
    // The profile is written at exit: a clean SIGTERM exit, with time to write it.
    await proxy.stop(15_000);
  }
  const file = await awaitFile(dir, '.cpuprofile', before, 10_000);
  const summary = summariseCpuProfile(JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile);
  return { ...summary, sessions, file: ctx.opts.keepProfiles ? file : undefined };
}

export async function runHeapProfile(ctx: BenchContext, dir: string): Promise<HeapFigures> {
  const n = Math.min(ctx.opts.held, 5000);
  ensureTime(ctx, 'profile: heap', 30_000 + n * 2);
  const proxy = await startProxy('etd', ctx, { ...heldSpec('heap'), nodeArgs: ['--heapsnapshot-signal=SIGUSR2'], cwd: dir });
  try {
    await sleep(500);
    const a = await snapshot(proxy.pid, dir, 60_000);
    let held = 0;
    const { clients } = await holdConnections(ctx, proxy, n, async (connections) => {
      held = connections;
    });
    try {
      await sleep(700);
      const b = await snapshot(proxy.pid, dir, 120_000);
      const diff = perConnection(a.census, b.census, held);
      return {
        connections: held,
        heapBytesPerConn: diff.totalBytes,
        items: diff.items,
        files: ctx.opts.keepProfiles ? [a.file, b.file] : undefined,
      };
    } finally {
      await Promise.all(clients.map((c) => c.stop()));
    }
  } finally {
    await proxy.stop();
  }
}
