// The proxies under test: one interface for starting etd or HAProxy in the lab's gateway namespace, and which one to start.

import type { ChildProcess } from 'node:child_process';
import type { BenchContext } from './context.js';
import { startEtdProxy } from './etdProxy.js';
import { startHaproxyProxy } from './haproxyProxy.js';

/** etd; HAProxy with nbthread 1 (like single-threaded etd); HAProxy with its default nbthread (one per CPU). */
export type ProxyKind = 'etd' | 'haproxy' | 'haproxy-mt';

export const PROXY_LABEL: Record<ProxyKind, string> = {
  etd: 'etd',
  haproxy: 'HAProxy nbthread 1',
  'haproxy-mt': 'HAProxy nbthread auto',
};

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
  /** etd only: YAML appended to its config (the dnsbl scenario's reputation: section). */
  readonly extraConfig?: string;
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
export const PROXY_PORT: Record<ProxyKind, number> = { etd: 25, haproxy: 2525, 'haproxy-mt': 2526 };

export function startProxy(kind: ProxyKind, ctx: BenchContext, spec: ProxySpec): Promise<RunningProxy> {
  const bl = ctx.bl;
  return kind === 'etd' ? startEtdProxy(bl, spec, PROXY_PORT.etd, ctx.opts.etdCli) : startHaproxyProxy(bl, spec, PROXY_PORT[kind], kind === 'haproxy' ? 1 : undefined);
}
