// Scenarios 2 and 3, sessions and relay: Postfix smtp-source through the proxy into smtp-sink — rate and proxy CPU.
//
// Sessions: one message per connection (smtp-source -s P -m M -l 2000), each waiting out the
// short window: sessions per second and CPU ms per session of the proxy process.
// Relay: large messages over kept connections (smtp-source -d), so the window is paid once
// per connection and the figure is the byte throughput: MB/s (10^6 bytes of payload) and CPU
// ms per MB. Before the timed run one probe connection must get a greeting through the proxy.

import os from 'node:os';
import type { BenchLab } from '../benchLab.js';
import { type BenchContext, ensureTime } from '../context.js';
import { runBannerClient, runSmtpSource, type SmtpSourceResult } from '../load.js';
import { sessionEndings } from '../logSummary.js';
import { cpuMs, cpuSplitMs, machineCpuMs, mainThreadCpuMs, reapedChildrenCpuMs } from '../procfs.js';
import { type ProxyKind, type RunningProxy, startProxy } from '../proxy.js';

export interface SessionsFigures {
  sessions: number;
  parallel: number;
  wallMs: number;
  sessionsPerS: number;
  cpuMs: number;
  cpuMsPerSession: number;
  /** CPU of the proxy's main thread per session, in µs: for etd, the one JS thread that decides for every engine thread. */
  mainThreadUsPerSession: number;
  /** Share of the proxy's CPU time spent in the kernel (system time / user + system, from /proc/PID/stat). */
  kernelShare: number;
  /** Where the machine's CPU went during the run (see MachineShare). */
  machine: MachineShare;
  /** How the proxy logged the sessions ending (includes the probe): etd verdict/cause, HAProxy termination state. */
  endings: Record<string, number>;
  /** smtp-source's warnings/errors (should be none) and exit. */
  problems: string[];
  problemCount: number;
  exit: number | string;
}

/**
 * The machine's CPU during a timed run: the proxy, the load generators (smtp-source, which ends
 * with the run, and the two smtp-sink backends) and everything (busy time of all CPUs, any
 * process: the rest is other work on the machine), in ms and as shares of the CPU capacity
 * (wall time × CPUs). On a small machine the generators compete with the proxy for the cores.
 */
export interface MachineShare {
  cpus: number;
  capacityMs: number;
  proxyMs: number;
  loadGeneratorsMs: number;
  busyMs: number;
  proxyShare: number;
  loadGeneratorsShare: number;
  busyShare: number;
}

export interface RelayFigures {
  messages: number;
  messageBytes: number;
  parallel: number;
  wallMs: number;
  mbPerS: number;
  cpuMs: number;
  cpuMsPerMb: number;
  kernelShare: number;
  machine: MachineShare;
  endings: Record<string, number>;
  problems: string[];
  problemCount: number;
  exit: number | string;
}

/** One connection through the proxy must get its greeting (backends up, rules in place). */
export async function probe(bl: BenchLab, proxy: RunningProxy): Promise<void> {
  const r = await runBannerClient(
    bl,
    { host: proxy.address, port: proxy.port, sources: [bl.lab.v4.client], rounds: 1, parallel: false, timeoutMs: 10_000 },
    15_000,
  );
  if (r.samples.length !== 1) throw new Error(`probe through ${proxy.kind} got no greeting: ${r.errors.join('; ')}`);
}

async function measured(
  ctx: BenchContext,
  kind: ProxyKind,
  tag: string,
  run: (proxy: RunningProxy) => Promise<SmtpSourceResult>,
): Promise<{
  r: SmtpSourceResult;
  cpu: number;
  mainMs: number;
  kernelShare: number;
  machine: MachineShare;
  endings: Record<string, number>;
}> {
  const proxy = await startProxy(kind, ctx, { windowMs: ctx.opts.windowMs, tag });
  let stopped = false;
  const generators = (): number => reapedChildrenCpuMs() + ctx.bl.sinkPids.reduce((a, pid) => a + cpuMs(pid), 0);
  try {
    await probe(ctx.bl, proxy);
    const s0 = cpuSplitMs(proxy.pid);
    const c0 = cpuMs(proxy.pid);
    const t0 = mainThreadCpuMs(proxy.pid);
    const g0 = generators();
    const m0 = machineCpuMs();
    const r = await run(proxy);
    const cpu = cpuMs(proxy.pid) - c0;
    const mainMs = mainThreadCpuMs(proxy.pid) - t0;
    const s1 = cpuSplitMs(proxy.pid);
    const m1 = machineCpuMs();
    const gen = generators() - g0;
    if (r.timedOut) throw new Error(`smtp-source through ${kind} did not finish in time (${r.problems.join('; ')})`);
    const user = s1.user - s0.user;
    const system = s1.system - s0.system;
    await proxy.stop();
    stopped = true;
    const cpus = os.availableParallelism();
    const capacityMs = r.wallMs * cpus;
    const busyMs = m1.busy - m0.busy;
    const machine: MachineShare = {
      cpus,
      capacityMs,
      proxyMs: cpu,
      loadGeneratorsMs: gen,
      busyMs,
      proxyShare: cpu / capacityMs,
      loadGeneratorsShare: gen / capacityMs,
      busyShare: busyMs / capacityMs,
    };
    return {
      r,
      cpu,
      mainMs,
      kernelShare: user + system > 0 ? system / (user + system) : 0,
      machine,
      endings: sessionEndings(kind, proxy.logFile),
    };
  } finally {
    if (!stopped) await proxy.stop();
  }
}

export async function runSessions(ctx: BenchContext, kind: ProxyKind): Promise<SessionsFigures> {
  const s = ctx.opts.sessions;
  // A generous guess (300 sessions/s on a slow loaded machine) decides whether it still fits.
  const expectMs = 8000 + (s.messages / 300) * 1000;
  ensureTime(ctx, `sessions ${kind}`, expectMs);
  const { r, cpu, mainMs, kernelShare, machine, endings } = await measured(ctx, kind, 'sessions', (proxy) =>
    runSmtpSource(
      ctx.bl,
      { host: proxy.address, port: proxy.port, parallel: s.parallel, messages: s.messages, size: s.size, keepConnections: false },
      Math.max(10_000, ctx.left() - 5000),
    ),
  );
  return {
    sessions: s.messages,
    parallel: s.parallel,
    wallMs: r.wallMs,
    sessionsPerS: s.messages / (r.wallMs / 1000),
    cpuMs: cpu,
    cpuMsPerSession: cpu / s.messages,
    mainThreadUsPerSession: (mainMs * 1000) / s.messages,
    kernelShare,
    machine,
    endings,
    problems: r.problems,
    problemCount: r.problemCount,
    exit: r.exit,
  };
}

export async function runRelay(ctx: BenchContext, kind: ProxyKind): Promise<RelayFigures> {
  const s = ctx.opts.relay;
  const mb = (s.messages * s.size) / 1e6;
  // Guess: at least 40 MB/s.
  ensureTime(ctx, `relay ${kind}`, 8000 + (mb / 40) * 1000);
  const { r, cpu, kernelShare, machine, endings } = await measured(ctx, kind, 'relay', (proxy) =>
    runSmtpSource(
      ctx.bl,
      { host: proxy.address, port: proxy.port, parallel: s.parallel, messages: s.messages, size: s.size, keepConnections: true },
      Math.max(10_000, ctx.left() - 5000),
    ),
  );
  return {
    messages: s.messages,
    messageBytes: s.size,
    parallel: s.parallel,
    wallMs: r.wallMs,
    mbPerS: mb / (r.wallMs / 1000),
    cpuMs: cpu,
    cpuMsPerMb: cpu / mb,
    kernelShare,
    machine,
    endings,
    problems: r.problems,
    problemCount: r.problemCount,
    exit: r.exit,
  };
}
