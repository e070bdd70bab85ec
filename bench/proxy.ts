// The proxies under test: one interface for starting etd or HAProxy in the lab's gateway namespace, and which one to start.

import type { ChildProcess } from 'node:child_process';
import type { BenchContext } from './context.js';
import { startEtdProxy } from './etdProxy.js';
import { startHaproxyProxy } from './haproxyProxy.js';

/**
 * Two pairs: etd with one engine worker against HAProxy nbthread 1, and etd with `workers: auto`
 * (one engine thread per CPU) against HAProxy with its default nbthread (one thread per CPU).
 */
export type ProxyKind = 'etd' | 'haproxy' | 'etd-mt' | 'haproxy-mt';

export const PROXY_LABEL: Record<ProxyKind, string> = {
  etd: 'etd workers 1',
  haproxy: 'HAProxy nbthread 1',
  'etd-mt': 'etd workers auto',
  'haproxy-mt': 'HAProxy nbthread auto',
};

export const isEtd = (k: ProxyKind): k is 'etd' | 'etd-mt' => k === 'etd' || k === 'etd-mt';

export interface ProxySpec {
  /** Observation window (etd detection.window; HAProxy tcp-request inspect-delay). */
  readonly windowMs: number;
  /** etd only: the pass cache (off unless the scenario is about it). */
  readonly cache?: boolean;
  /** etd only: extra node flags (--cpu-prof, --heapsnapshot-signal). */
  readonly nodeArgs?: readonly string[];
  /** etd only: serve the management API on this unix socket (reachable from the host namespace); off when absent. */
  readonly apiSocket?: string;
  /** Working directory of the process (where heap snapshots land). */
  readonly cwd?: string;
  /** Distinguishes the config and log files of several runs. */
  readonly tag: string;
  /** etd only: flow-map entries added to its `detection:` (the protocol scenario's `protocol: {…}`). */
  readonly detection?: string;
  /** etd only: YAML appended to its config (the dnsbl scenario's reputation: section). */
  readonly extraConfig?: string;
  /** etd only: the top-level `workers` key (engine worker threads); absent = not written (builds without the key). */
  readonly workers?: number | 'auto';
}

export interface RunningProxy {
  readonly kind: ProxyKind;
  readonly pid: number;
  readonly address: string;
  readonly port: number;
  readonly logFile: string;
  readonly child: ChildProcess;
  /** SIGTERM, SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/** Ports: each proxy its own, so client TIME_WAIT entries of one never collide with the next. */
export const PROXY_PORT: Record<ProxyKind, number> = { etd: 25, haproxy: 2525, 'etd-mt': 26, 'haproxy-mt': 2526 };

/**
 * Starts one contender. etd gets `workers: 1` and etd-mt `workers: auto` when the build knows the
 * key (ctx.etdWorkers; run.ts asks `etd check`); a build without it runs etd as it is and
 * cannot run etd-mt.
 */
export function startProxy(kind: ProxyKind, ctx: BenchContext, spec: ProxySpec): Promise<RunningProxy> {
  const bl = ctx.bl;
  if (kind === 'etd-mt' && !ctx.etdWorkers)
    return Promise.reject(new Error('this etd build has no `workers` config key (issue 18): etd-mt cannot run'));
  if (isEtd(kind)) {
    const workers = spec.workers ?? (ctx.etdWorkers ? (kind === 'etd' ? 1 : 'auto') : undefined);
    return startEtdProxy(bl, { ...spec, ...(workers === undefined ? {} : { workers }) }, PROXY_PORT[kind], ctx.opts.etdCli, kind);
  }
  return startHaproxyProxy(bl, spec, PROXY_PORT[kind], kind === 'haproxy' ? 1 : undefined);
}
