// Scenario dnsbl: etd with three DNSBL/DNSWL lists served by a real unbound in the lab, against etd without lists (issue 14).
//
// Sessions: the sessions scenario's smtp-source load, once without lists and once with three
// lists whose answers are never reused (minTtl = maxTtl = 1ms), so sessions keep querying
// unbound: sessions per second and CPU per session, and their ratio (target ≥ 0.9×).
// Returning sender: with the lists and the pass cache on, visitor addresses make their first
// visit, then come back one connection after the other; their answers are cached, so they are
// connected at once: connect→greeting against a direct connection (target < 1 ms added).

import http from 'node:http';
import path from 'node:path';
import { inNamespace, type RunningUnbound, startUnbound } from '../../lab/unbound.js';
import { type BenchContext, ensureTime } from '../context.js';
import { runBannerClient, runSmtpSource } from '../load.js';
import { cpuMs, type Distribution, distribution } from '../procfs.js';
import { startProxy } from '../proxy.js';
import type { DirectFigures } from './returning.js';
import { probe } from './sessions.js';

export interface DnsblRun {
  sessionsPerS: number;
  cpuMsPerSession: number;
  /** DNS queries etd sent during the run, per session (from /v1/stats); 0 without lists. */
  queriesPerSession: number;
  endings: Record<string, number>;
  problemCount: number;
}

export interface DnsblFigures {
  sessions: number;
  parallel: number;
  without: DnsblRun;
  withLists: DnsblRun;
  /** sessions/s with lists ÷ without (target ≥ 0.9). */
  ratio: number;
  returning?: { firstVisit: Distribution; returning: Distribution; addedMs: number; errors: string[] };
}

function reputationYaml(server: string, minTtl: string): string {
  return `reputation:
  resolvers: [${server}]
  minTtl: ${minTtl}
  maxTtl: ${minTtl === '1ms' ? '1ms' : '1h'}
  dnsbl:
    - { zone: zen.bench.test, weight: 3 }
    - { zone: bl.bench.test, weight: 1 }
    - { zone: wl.bench.test, weight: -2, match: ["127.0.[0..255].[1..3]"] }
`;
}

function stats(socket: string): Promise<{ reputation: { queries: Record<string, number> }; verdicts: Record<string, number> }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: socket, path: '/v1/stats' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(JSON.parse(body) as never));
      })
      .on('error', reject);
  });
}

async function sessionsRun(ctx: BenchContext, tag: string, extra: string): Promise<DnsblRun> {
  const s = ctx.opts.sessions;
  const socket = path.join(ctx.bl.dir, `api-${tag}.sock`);
  // ETD_BENCH_DNSBL_PROF=DIR: a CPU profile of each run (development aid; the figures are measured without it too).
  const prof = process.env.ETD_BENCH_DNSBL_PROF;
  const proxy = await startProxy('etd', ctx, {
    windowMs: ctx.opts.windowMs,
    tag,
    apiSocket: socket,
    extraConfig: extra,
    ...(prof ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', path.join(prof, tag)] } : {}),
  });
  try {
    await probe(ctx.bl, proxy);
    const q0 = Object.values((await stats(socket)).reputation.queries).reduce((a, b) => a + b, 0);
    const c0 = cpuMs(proxy.pid);
    const r = await runSmtpSource(
      ctx.bl,
      { host: proxy.address, port: proxy.port, parallel: s.parallel, messages: s.messages, size: s.size, keepConnections: false },
      Math.max(10_000, ctx.left() - 5000),
    );
    const cpu = cpuMs(proxy.pid) - c0;
    if (r.timedOut) throw new Error(`smtp-source through etd (${tag}) did not finish in time`);
    const st = await stats(socket);
    const q1 = Object.values(st.reputation.queries).reduce((a, b) => a + b, 0);
    return {
      sessionsPerS: s.messages / (r.wallMs / 1000),
      cpuMsPerSession: cpu / s.messages,
      queriesPerSession: (q1 - q0) / s.messages,
      endings: st.verdicts,
      problemCount: r.problemCount,
    };
  } finally {
    await proxy.stop();
  }
}

export async function runDnsbl(ctx: BenchContext, direct: DirectFigures | undefined): Promise<DnsblFigures> {
  const s = ctx.opts.sessions;
  ensureTime(ctx, 'dnsbl', 20_000 + 2 * (s.messages / 300) * 1000);
  const bl = ctx.bl;
  let unbound: RunningUnbound | undefined;
  try {
    // Nothing is listed: the load's clients must pass (the cost measured is the lookups').
    unbound = await startUnbound(inNamespace(bl.lab, bl.lab.ns.backend), bl.backends[0], [
      { zone: 'zen.bench.test', listed: { '127.0.0.2': '127.0.0.2' } },
      { zone: 'bl.bench.test', listed: { '127.0.0.2': '127.0.0.2' } },
      { zone: 'wl.bench.test', listed: { '127.0.0.2': '127.0.10.2' } },
    ]);
    ctx.say(`dnsbl: unbound on ${unbound.address}:53 serves zen.bench.test, bl.bench.test, wl.bench.test`);
    const without = await sessionsRun(ctx, 'dnsbl-none', '');
    const withLists = await sessionsRun(ctx, 'dnsbl-three', reputationYaml(unbound.address, '1ms'));
    const out: DnsblFigures = {
      sessions: s.messages,
      parallel: s.parallel,
      without,
      withLists,
      ratio: withLists.sessionsPerS / without.sessionsPerS,
    };
    if (direct && bl.visitorAddresses.length) {
      const windowMs = ctx.opts.windowMs;
      const sources = [...bl.visitorAddresses];
      const proxy = await startProxy('etd', ctx, {
        windowMs,
        cache: true,
        tag: 'dnsbl-returning',
        extraConfig: reputationYaml(unbound.address, '60s'),
      });
      try {
        await probe(bl, proxy);
        const first = await runBannerClient(
          bl,
          { host: proxy.address, port: proxy.port, sources, rounds: 1, parallel: true, timeoutMs: windowMs + 10_000 },
          windowMs + 20_000,
        );
        const again = await runBannerClient(
          bl,
          {
            host: proxy.address,
            port: proxy.port,
            sources,
            rounds: Math.ceil(ctx.opts.returning.samples / sources.length),
            parallel: false,
            timeoutMs: windowMs + 10_000,
          },
          windowMs + 60_000,
        );
        if (first.samples.length && again.samples.length) {
          const returning = distribution(again.samples);
          out.returning = {
            firstVisit: distribution(first.samples),
            returning,
            addedMs: returning.median - direct.direct.median,
            errors: [...first.errors, ...again.errors].slice(0, 10),
          };
        }
      } finally {
        await proxy.stop();
      }
    }
    return out;
  } finally {
    await unbound?.stop();
  }
}
