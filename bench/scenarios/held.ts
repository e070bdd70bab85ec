// Scenario 1, held connections: N silent clients held by the proxy — RSS per connection (slope), accept rate, CPU.
//
// Method, identical for both proxies. The window is far longer than the measurement, so every
// connection stays held. N is opened in four equal stages by several client processes (each
// below the fd limit). For each stage the proxy is paused (SIGSTOP), the clients open the stage's
// connections (the kernel completes the handshakes into the accept queue), then the proxy is
// resumed (SIGCONT) and the time until its fd count has grown by the stage's connections is the
// time it took to accept them: accept rate = N / the sum of those times, and CPU per accepted
// connection = its CPU time over those intervals / N. This measures the proxy's accept path,
// not how fast the client processes can dial. RSS is sampled after each stage (and at 0) once
// the proxy settled, and the least-squares slope of RSS over connections is the memory per
// held connection.

import { type BenchContext, ensureTime } from '../context.js';
import { HeldClient, type HeldCounts } from '../load.js';
import { cpuMs, fdCount, linearFit, rssBytes, sleep } from '../procfs.js';
import { type ProxyKind, type ProxySpec, type RunningProxy, startProxy } from '../proxy.js';

export interface HeldFigures {
  n: number;
  /** Connections the proxy held at the end (its fd growth). */
  held: number;
  /** Connections per second accepted out of a full accept queue. */
  acceptPerS: number;
  /** Least-squares slope of RSS over held connections, bytes. */
  rssPerConnBytes: number;
  r2: number;
  samples: Array<{ connections: number; rssBytes: number }>;
  /** Proxy CPU per accepted connection, microseconds. */
  cpuUsPerConn: number;
  /** Proxy CPU while holding N and nothing happens, ms per second. */
  idleCpuMsPerS: number;
  stageAcceptMs: number[];
  clients: { failed: number; closedByPeer: number; gotData: number; errors: Record<string, number> };
}

const STAGES = 4;
const SETTLE_MS = 700;
/** Longer than any held measurement, so no connection leaves the window while measured. */
export const HOLD_WINDOW_MS = 180_000;

export function heldSpec(tag: string): ProxySpec {
  return { windowMs: HOLD_WINDOW_MS, tag };
}

/** How the N connections split across client processes (each at most `perProcess`). */
export function splitAcross(n: number, perProcess: number): number[] {
  const k = Math.max(1, Math.ceil(n / perProcess));
  return Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0));
}

/** Polls the proxy's fd count (cheap on Linux ≥ 6.2) until it reaches `target`; the time it took. */
async function waitFds(pid: number, target: number, timeoutMs: number, t0: number): Promise<number> {
  const deadline = t0 + timeoutMs;
  for (;;) {
    if (fdCount(pid) >= target) return performance.now() - t0;
    if (performance.now() > deadline) throw new Error(`the proxy has ${fdCount(pid)} fds after ${timeoutMs} ms, expected ${target}`);
    await sleep(1);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  process.kill(pid, sig);
}

/**
 * Opens `n` held connections to a running proxy in stages, as described above; `onStage` is
 * called after each stage (connections held so far). Leaves the connections open; the returned
 * clients must be stopped by the caller.
 */
export async function holdConnections(
  ctx: BenchContext,
  proxy: RunningProxy,
  n: number,
  onStage: (connections: number, acceptMs: number, cpuMsUsed: number) => Promise<void>,
): Promise<{ clients: HeldClient[]; fd0: number; last: HeldCounts[] }> {
  const shares = splitAcross(n, ctx.opts.heldPerProcess);
  const clients: HeldClient[] = [];
  try {
    for (const _ of shares) clients.push(await HeldClient.start(ctx.bl, proxy.address, proxy.port));
  } catch (e) {
    await Promise.all(clients.map((c) => c.stop()));
    throw e;
  }
  await sleep(1000);
  const fd0 = fdCount(proxy.pid);
  let last: HeldCounts[] = [];
  let opened = shares.map(() => 0);
  try {
    for (let stage = 1; stage <= STAGES; stage++) {
      const want = shares.map((c) => Math.round((c * stage) / STAGES));
      const total = want.reduce((a, b) => a + b, 0);
      signal(proxy.pid, 'SIGSTOP');
      try {
        for (const [i, c] of clients.entries()) c.open((want[i] as number) - (opened[i] as number));
        opened = want;
        last = await Promise.all(clients.map((c) => c.settled(Math.min(60_000, ctx.left()))));
      } catch (e) {
        signal(proxy.pid, 'SIGCONT');
        throw e;
      }
      const cpu0 = cpuMs(proxy.pid);
      const t0 = performance.now();
      signal(proxy.pid, 'SIGCONT');
      const failed = last.reduce((a, c) => a + c.failed, 0);
      const ms = await waitFds(proxy.pid, fd0 + total - failed, Math.min(60_000, ctx.left()), t0);
      await onStage(total - failed, ms, cpuMs(proxy.pid) - cpu0);
    }
  } catch (e) {
    await Promise.all(clients.map((c) => c.stop()));
    throw e;
  }
  return { clients, fd0, last };
}

export async function runHeld(ctx: BenchContext, kind: ProxyKind): Promise<HeldFigures> {
  const n = ctx.opts.held;
  ensureTime(ctx, `held ${kind}`, 15_000 + n * 1.5);
  const proxy = await startProxy(kind, ctx, heldSpec('held'));
  try {
    await sleep(500);
    const samples = [{ connections: 0, rssBytes: rssBytes(proxy.pid) }];
    const stageAcceptMs: number[] = [];
    let acceptCpuMs = 0;
    let accepted = 0;
    const { clients, fd0, last } = await holdConnections(ctx, proxy, n, async (connections, ms, cpu) => {
      stageAcceptMs.push(ms);
      acceptCpuMs += cpu;
      accepted = connections;
      await sleep(SETTLE_MS);
      samples.push({ connections, rssBytes: rssBytes(proxy.pid) });
      ctx.say(
        `  ${kind}: ${connections} held, RSS ${(samples[samples.length - 1]!.rssBytes / 1048576).toFixed(1)} MiB, stage accepted in ${ms.toFixed(0)} ms`,
      );
    });
    try {
      const c0 = cpuMs(proxy.pid);
      await sleep(2000);
      const idleCpuMsPerS = (cpuMs(proxy.pid) - c0) / 2;
      const held = fdCount(proxy.pid) - fd0;
      const fit = linearFit(
        samples.map((s) => s.connections),
        samples.map((s) => s.rssBytes),
      );
      const acceptMs = stageAcceptMs.reduce((a, b) => a + b, 0);
      const errors: Record<string, number> = {};
      for (const c of last) for (const [k, v] of Object.entries(c.errors)) errors[k] = (errors[k] ?? 0) + v;
      return {
        n,
        held,
        acceptPerS: accepted / (acceptMs / 1000),
        rssPerConnBytes: fit.slope,
        r2: fit.r2,
        samples,
        cpuUsPerConn: (acceptCpuMs * 1000) / Math.max(1, accepted),
        idleCpuMsPerS,
        stageAcceptMs,
        clients: {
          failed: last.reduce((a, c) => a + c.failed, 0),
          closedByPeer: last.reduce((a, c) => a + c.closedByPeer, 0),
          gotData: last.reduce((a, c) => a + c.gotData, 0),
          errors,
        },
      };
    } finally {
      await Promise.all(clients.map((c) => c.stop()));
    }
  } finally {
    await proxy.stop();
  }
}
