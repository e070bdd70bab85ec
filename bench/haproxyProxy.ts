// Runs HAProxy for the benchmark: the original early-talker recipe as a config, and the process in the gateway namespace.

import fs from 'node:fs';
import path from 'node:path';
import { type BenchLab, stopChild, tail, waitListening } from './benchLab.js';
import type { ProxySpec, RunningProxy } from './proxy.js';

export const HAPROXY = 'haproxy';

/**
 * The recipe (tcp-request inspect-delay; acl content_present req_len gt 0; tcp-request content
 * reject if content_present; source 0.0.0.0 usesrc clientip; balance roundrobin; option smtpchk
 * HELO; inter 3s rise 2 fall 3) with what the recipe leaves to the operator set like etd's:
 * 5 s connect timeout, 5 min client/server timeouts, a tcplog line per session (to stdout,
 * as etd logs to stdout).
 *
 * maxconn: HAProxy sizes its fd needs as about 2 × maxconn and, by default, refuses to start
 * when it cannot raise RLIMIT_NOFILE that far. Where the fd limit is fixed (20,000 here),
 * `no strict-limits` lets it start anyway with the same limit as etd; a held connection uses
 * one fd in either proxy, so both can hold the same number.
 */
export function haproxyConfig(bl: BenchLab, spec: ProxySpec, port: number, threads: number | undefined): string {
  return `global
    maxconn 19500
    no strict-limits
${threads === undefined ? '' : `    nbthread ${threads}\n`}    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 5m
    timeout server 5m

frontend ft_smtp
    bind ${bl.proxyAddress}:${port}
    maxconn 19500
    tcp-request inspect-delay ${spec.windowMs}ms
    acl content_present req_len gt 0
    tcp-request content reject if content_present
    default_backend bk_smtp

backend bk_smtp
    balance roundrobin
    source 0.0.0.0 usesrc clientip
    option smtpchk HELO
    default-server inter 3s rise 2 fall 3
    server smtp1 ${bl.backends[0]}:25 check
    server smtp2 ${bl.backends[1]}:25 check
`;
}

export async function startHaproxyProxy(bl: BenchLab, spec: ProxySpec, port: number, threads: number | undefined): Promise<RunningProxy> {
  const kind = threads === 1 ? 'haproxy' : 'haproxy-mt';
  const cfg = path.join(bl.dir, `${kind}-${spec.tag}.cfg`);
  const logFile = path.join(bl.dir, `${kind}-${spec.tag}.log`);
  fs.writeFileSync(cfg, haproxyConfig(bl, spec, port, threads));
  await bl.lab.exec(bl.lab.ns.gateway, HAPROXY, ['-c', '-q', '-f', cfg]);
  // -db: foreground, one process (no master-worker), so child.pid is the process measured.
  const child = bl.spawnLogged(bl.lab.ns.gateway, HAPROXY, ['-db', '-f', cfg], logFile, spec.cwd ? { cwd: spec.cwd } : {});
  const pid = child.pid;
  const stop = (graceMs = 3000): Promise<void> => stopChild(child, graceMs);
  try {
    if (pid === undefined) throw new Error('haproxy did not start (no pid)');
    await waitListening(bl.lab, bl.lab.ns.gateway, bl.proxyAddress, port, 10_000, child);
  } catch (e) {
    await stop(1000);
    throw new Error(`${e instanceof Error ? e.message : String(e)}\nhaproxy log:\n${tail(logFile)}`);
  }
  return { kind, pid, address: bl.proxyAddress, port, logFile, child, stop };
}
