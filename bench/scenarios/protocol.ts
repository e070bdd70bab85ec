// Scenario protocol: etd with every protocol test at reject (issue 24) against etd with them off, on the sessions load and on the relay load.
//
// Sessions: the sessions scenario's smtp-source load (new connections, one message each; its
// clients speak good SMTP, so nothing is caught and the cost measured is the inspection's),
// sessions per second and etd CPU per session. Relay: big messages over kept connections, MB/s.
// The two settings run alternately, three times each for sessions, so a slow moment of a shared
// machine does not land on one side only; each side's figure is the median of its runs. Targets: sessions
// ≥ 0.97×, relay ≥ 0.98× (issue 24).

import { type BenchContext, ensureTime } from '../context.js';
import { runSmtpSource } from '../load.js';
import { sessionEndings } from '../logSummary.js';
import { cpuMs } from '../procfs.js';
import { startProxy } from '../proxy.js';
import { probe } from './sessions.js';

/** `detection:` entries of the measured side: every test at reject. */
export const ALL_REJECT =
  'protocol: { pipelining: { action: reject }, nonSmtpCommand: { action: reject }, bareNewline: { action: reject } }';

export interface ProtocolRun {
  sessionsPerS: number;
  cpuMsPerSession: number;
  /** etd's verdict/cause counts (nothing may be `protocol`: the load is good SMTP). */
  endings: Record<string, number>;
  problemCount: number;
}

export interface ProtocolRelayRun {
  mbPerS: number;
  cpuMsPerMb: number;
  endings: Record<string, number>;
  problemCount: number;
}

export interface ProtocolFigures {
  sessions: number;
  parallel: number;
  off: ProtocolRun[];
  reject: ProtocolRun[];
  /** Median sessions/s with every test at reject ÷ median with them off (target ≥ 0.97). */
  ratio: number;
  /** Median CPU per session at reject ÷ off (lower is better). */
  cpuRatio: number;
  relay?: { off: ProtocolRelayRun; reject: ProtocolRelayRun; ratio: number };
}

/** One etd (protocol tests per `detection`) under one smtp-source load: the run, the proxy's CPU, its log file. */
async function measuredRun(
  ctx: BenchContext,
  tag: string,
  detection: string | undefined,
  load: { parallel: number; messages: number; size: number; keepConnections: boolean },
): Promise<{ r: Awaited<ReturnType<typeof runSmtpSource>>; cpu: number; logFile: string }> {
  const proxy = await startProxy('etd', ctx, { windowMs: ctx.opts.windowMs, tag, ...(detection ? { detection } : {}) });
  try {
    await probe(ctx.bl, proxy);
    const c0 = cpuMs(proxy.pid);
    const r = await runSmtpSource(ctx.bl, { host: proxy.address, port: proxy.port, ...load }, Math.max(10_000, ctx.left() - 5000));
    const cpu = cpuMs(proxy.pid) - c0;
    if (r.timedOut) throw new Error(`smtp-source through etd (${tag}) did not finish in time`);
    return { r, cpu, logFile: proxy.logFile };
  } finally {
    await proxy.stop();
  }
}

async function sessionsRun(ctx: BenchContext, tag: string, detection: string | undefined): Promise<ProtocolRun> {
  const s = ctx.opts.sessions;
  const { r, cpu, logFile } = await measuredRun(ctx, tag, detection, {
    parallel: s.parallel,
    messages: s.messages,
    size: s.size,
    keepConnections: false,
  });
  return {
    sessionsPerS: s.messages / (r.wallMs / 1000),
    cpuMsPerSession: cpu / s.messages,
    endings: sessionEndings('etd', logFile),
    problemCount: r.problemCount,
  };
}

async function relayRun(ctx: BenchContext, tag: string, detection: string | undefined): Promise<ProtocolRelayRun> {
  const s = ctx.opts.relay;
  const { r, cpu, logFile } = await measuredRun(ctx, tag, detection, {
    parallel: s.parallel,
    messages: s.messages,
    size: s.size,
    keepConnections: true,
  });
  const mb = (s.messages * s.size) / 1e6;
  return {
    mbPerS: mb / (r.wallMs / 1000),
    cpuMsPerMb: cpu / mb,
    endings: sessionEndings('etd', logFile),
    problemCount: r.problemCount,
  };
}

export async function runProtocol(ctx: BenchContext): Promise<ProtocolFigures> {
  const s = ctx.opts.sessions;
  ensureTime(ctx, 'protocol', 20_000 + 6 * (s.messages / 300) * 1000);
  const off: ProtocolRun[] = [];
  const reject: ProtocolRun[] = [];
  for (let round = 1; round <= 3; round++) {
    off.push(await sessionsRun(ctx, `protocol-off-${round}`, undefined));
    reject.push(await sessionsRun(ctx, `protocol-reject-${round}`, ALL_REJECT));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const midRate = (runs: ProtocolRun[]) => median(runs.map((r) => r.sessionsPerS));
  const midCpu = (runs: ProtocolRun[]) => median(runs.map((r) => r.cpuMsPerSession));
  const out: ProtocolFigures = {
    sessions: s.messages,
    parallel: s.parallel,
    off,
    reject,
    ratio: midRate(reject) / midRate(off),
    cpuRatio: midCpu(reject) / midCpu(off),
  };
  const r = ctx.opts.relay;
  if (ctx.left() > 20_000 + 2 * ((r.messages * r.size) / 1e6 / 40) * 1000) {
    const relayOff = await relayRun(ctx, 'protocol-relay-off', undefined);
    const relayReject = await relayRun(ctx, 'protocol-relay-reject', ALL_REJECT);
    out.relay = { off: relayOff, reject: relayReject, ratio: relayReject.mbPerS / relayOff.mbPerS };
  } else ctx.say(`protocol: relay pair skipped (${Math.round(ctx.left() / 1000)} s left)`);
  return out;
}
