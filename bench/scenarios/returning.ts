// Scenario 4, returning sender: connect-to-greeting time for a first visit and for a cached (passed) client, against a direct connection.
//
// Direct: the client connects to a backend itself (routed through the gateway, no proxy), one
// connection after the other — the baseline. Through a proxy: every visitor address makes its
// first visit (all at once; each waits out the window), then the same addresses come back one
// connection after the other. etd runs with its pass cache on, so the returning visits skip
// the window; HAProxy has no cache, so its returning visits wait like first ones (measured
// within a small time budget). Added latency = median(returning) − median(direct).

import { type BenchContext, ensureTime } from '../context.js';
import { runBannerClient } from '../load.js';
import { type Distribution, distribution } from '../procfs.js';
import { type ProxyKind, startProxy } from '../proxy.js';
import { probe } from './sessions.js';

export interface LatencyFigures {
  firstVisit: Distribution;
  returning: Distribution;
  /** median(returning) − median(direct), ms. */
  addedMs: number;
  errors: string[];
}

export interface DirectFigures {
  direct: Distribution;
  errors: string[];
}

export async function runDirect(ctx: BenchContext): Promise<DirectFigures> {
  ensureTime(ctx, 'returning: direct baseline', 5000);
  const bl = ctx.bl;
  const sources = bl.visitorAddresses.length ? [...bl.visitorAddresses] : [bl.lab.v4.client];
  const r = await runBannerClient(
    bl,
    {
      host: bl.backends[0],
      port: 25,
      sources,
      rounds: Math.ceil(ctx.opts.returning.samples / sources.length),
      parallel: false,
      timeoutMs: 5000,
    },
    60_000,
  );
  if (r.samples.length === 0) throw new Error(`direct connections to the backend failed: ${r.errors.join('; ')}`);
  return { direct: distribution(r.samples), errors: r.errors };
}

export async function runReturning(ctx: BenchContext, kind: ProxyKind, direct: DirectFigures): Promise<LatencyFigures> {
  const bl = ctx.bl;
  const o = ctx.opts.returning;
  const windowMs = ctx.opts.windowMs;
  const sources = bl.visitorAddresses.length ? [...bl.visitorAddresses] : [bl.lab.v4.client];
  // Returning visits that wait out the window (no cache) get this much time at most.
  const slowBudgetMs = Math.max(3 * windowMs, Math.min(5000, 30 * windowMs));
  ensureTime(ctx, `returning ${kind}`, 10_000 + windowMs + slowBudgetMs);
  const proxy = await startProxy(kind, ctx, { windowMs, cache: true, tag: 'returning' });
  try {
    await probe(ctx.bl, proxy);
    const first = await runBannerClient(
      bl,
      { host: proxy.address, port: proxy.port, sources, rounds: 1, parallel: true, timeoutMs: windowMs + 10_000 },
      windowMs + 20_000,
    );
    if (first.samples.length === 0) throw new Error(`no first visit through ${kind} got a greeting: ${first.errors.join('; ')}`);
    const again = await runBannerClient(
      bl,
      {
        host: proxy.address,
        port: proxy.port,
        sources,
        rounds: Math.ceil(o.samples / sources.length),
        parallel: false,
        timeoutMs: windowMs + 10_000,
        maxMs: slowBudgetMs,
      },
      slowBudgetMs + windowMs + 20_000,
    );
    if (again.samples.length === 0) throw new Error(`no returning visit through ${kind} got a greeting: ${again.errors.join('; ')}`);
    const returning = distribution(again.samples);
    return {
      firstVisit: distribution(first.samples),
      returning,
      addedMs: returning.median - direct.direct.median,
      errors: [...first.errors, ...again.errors].slice(0, 10),
    };
  } finally {
    await proxy.stop();
  }
}
