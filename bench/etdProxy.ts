// Runs etd for the benchmark: its config (vip mode, clientip source, limits out of the way) and the process in the gateway namespace.

import fs from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../src/paths.js';
import { type BenchLab, CLI, stopChild, tail, waitListening } from './benchLab.js';
import { sleep } from './procfs.js';
import type { ProxySpec, RunningProxy } from './proxy.js';

/**
 * The benchmark's etd config. Same as the HAProxy recipe where they overlap: drop early
 * talkers, roundrobin over the two backends, SMTP health checks every 3 s (rise 2, fall 3),
 * 5 s connect timeout, 5 min idle timeouts, one log line per session. Limits are raised so
 * they never interfere; the caches are off except where the scenario is about them.
 * netfilter.manage is false because the lab applied the same rules once for both proxies.
 * The management API is off unless the spec names a unix socket for it (the endurance run).
 * `workers` (engine worker threads, issue 18) is written when the spec gives it.
 */
export function etdConfig(bl: BenchLab, spec: ProxySpec, port: number): string {
  return `listeners:
  - { name: smtp, address: ${bl.proxyAddress}, port: ${port}, mode: vip }
detection: { window: ${spec.windowMs}ms, action: drop${spec.detection ? `, ${spec.detection}` : ''} }
upstream:
  source: clientip
  balance: roundrobin
  connectTimeout: 5s
  health: { enabled: true, interval: 3s, rise: 2, fall: 3, command: HELO }
  servers:
    - { name: smtp1, address: ${bl.backends[0]}, port: 25 }
    - { name: smtp2, address: ${bl.backends[1]}, port: 25 }
timeouts: { client: 5m, server: 5m, shutdownGrace: 2s }
limits: { maxConnections: 1000000, maxHeld: 1000000, perClient: 0 }
cache: { enabled: ${spec.cache === true} }
netfilter: { manage: false }
api: ${spec.apiSocket ? `{ enabled: true, address: ${JSON.stringify(spec.apiSocket)} }` : '{ enabled: false }'}
state: { path: ":memory:" }
log: { level: info }
${spec.workers === undefined ? '' : `workers: ${spec.workers}\n`}${spec.extraConfig ?? ''}`;
}

/** The environment the packaged systemd unit gives etd (its Environment= lines): the bench runs etd as the unit does. */
export function unitEnvironment(unitFile = path.join(PACKAGE_ROOT, 'systemd', 'etd.service')): Record<string, string> {
  const env: Record<string, string> = {};
  for (const m of fs.readFileSync(unitFile, 'utf8').matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=(\S*)$/gm)) env[m[1]!] = m[2]!;
  return env;
}

export async function startEtdProxy(
  bl: BenchLab,
  spec: ProxySpec,
  port: number,
  cli = CLI,
  kind: 'etd' | 'etd-mt' = 'etd',
): Promise<RunningProxy> {
  const cfg = path.join(bl.dir, `${kind}-${spec.tag}.yaml`);
  const logFile = path.join(bl.dir, `${kind}-${spec.tag}.log`);
  fs.writeFileSync(cfg, etdConfig(bl, spec, port));
  const child = bl.spawnLogged(bl.lab.ns.gateway, process.execPath, [...(spec.nodeArgs ?? []), cli, 'run', '-c', cfg], logFile, {
    env: { ...process.env, ...unitEnvironment() },
    ...(spec.cwd ? { cwd: spec.cwd } : {}),
  });
  const pid = child.pid;
  const stop = (graceMs = 5000): Promise<void> => stopChild(child, graceMs);
  try {
    if (pid === undefined) throw new Error('etd did not start (no pid)');
    const deadline = Date.now() + 20_000;
    while (!fs.readFileSync(logFile, 'utf8').includes('"msg":"etd started"')) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`etd exited (${child.exitCode ?? child.signalCode})`);
      if (Date.now() > deadline) throw new Error('etd did not log "etd started" within 20 s');
      await sleep(50);
    }
    await waitListening(bl.lab, bl.lab.ns.gateway, bl.proxyAddress, port, 5000, child);
  } catch (e) {
    await stop(1000);
    throw new Error(`${e instanceof Error ? e.message : String(e)}\netd log:\n${tail(logFile)}`);
  }
  return { kind, pid, address: bl.proxyAddress, port, logFile, child, stop };
}
