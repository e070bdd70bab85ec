// The benchmark's lab: netns lab + namespace-local sysctls, smtp-sink backends, the shared divert rules, and process helpers.
//
// Both proxies run in the gateway namespace against the same two smtp-sink backends, with the
// same netfilter state: etd's divert rule and fwmark routing are applied once with
// `etd rules apply` (etd itself runs with netfilter.manage: false), so HAProxy's
// `usesrc clientip` sockets get their return traffic exactly like etd's. Every process is
// spawned through the lab, which tracks it and kills it by pid on destroy.

import { type ChildProcess, execFileSync, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLab, hostPort, type Lab } from '../lab/netns.js';
import { CLI_PATH, PACKAGE_ROOT } from '../src/paths.js';
import { sleep } from './procfs.js';

export const ROOT = PACKAGE_ROOT;
export const CLI = CLI_PATH;
export const SMTP_SINK = '/usr/sbin/smtp-sink';
export const SMTP_SOURCE = '/usr/sbin/smtp-source';

export interface BenchLab {
  readonly lab: Lab;
  /** Scratch directory for configs, logs and profiles. */
  readonly dir: string;
  /** Where clients reach the proxies (the gateway's client-side address). */
  readonly proxyAddress: string;
  readonly backends: readonly [string, string];
  /** Extra client addresses, each used for one first visit in the returning-sender scenario. */
  readonly visitorAddresses: readonly string[];
  /** What the lab set up (sysctls that took, conntrack state), for the report. */
  readonly notes: string[];
  /** The smtp-sink backends' pids (load generators: their CPU is counted beside smtp-source's). */
  readonly sinkPids: readonly number[];
  /** Spawns in a namespace with stdout+stderr appended to `logFile`; tracked by the lab. */
  spawnLogged(ns: string, cmd: string, args: readonly string[], logFile: string, opts?: SpawnOptions): ChildProcess;
  destroy(): Promise<void>;
}

/** Namespace-local sysctls: wide ephemeral ranges, deep accept queues. Never touches the host. */
const SYSCTLS: Record<'client' | 'gateway' | 'backend', string[]> = {
  client: ['net.ipv4.ip_local_port_range=10000 65000', 'net.ipv4.tcp_tw_reuse=1'],
  gateway: ['net.ipv4.ip_local_port_range=10000 65000', 'net.core.somaxconn=65535', 'net.ipv4.tcp_max_syn_backlog=65535'],
  backend: ['net.ipv4.ip_local_port_range=10000 65000', 'net.core.somaxconn=65535', 'net.ipv4.tcp_max_syn_backlog=65535'],
};

/** The config `etd rules apply` reads: only the listener mode and the netfilter section matter to it. */
function rulesConfig(proxyAddress: string, backend: string): string {
  return `listeners:
  - { name: smtp, address: ${proxyAddress}, port: 25, mode: vip }
upstream:
  source: clientip
  servers: [{ name: smtp1, address: ${backend}, port: 25 }]
api: { enabled: false }
state: { path: ":memory:" }
`;
}

/** What keeps the benchmark from running here (not root, a tool or the build missing); empty when nothing. HAProxy only when it is measured. */
export function missingPrerequisites(etdCli: string, want: { haproxy: boolean }): string[] {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push('not running as root: the benchmark builds network namespaces and runs transparent proxies');
  const need: Array<[string, string[], string]> = [
    ['ip', ['-V'], 'iproute2'],
    ['nft', ['--version'], 'nftables'],
    ['ss', ['-V'], 'iproute2'],
    ...(want.haproxy ? [['haproxy', ['-v'], 'haproxy'] as [string, string[], string]] : []),
    [SMTP_SOURCE, [], 'postfix'],
    [SMTP_SINK, [], 'postfix'],
    ['sysctl', ['-V'], 'procps'],
  ];
  for (const [file, args, pkg] of need) {
    try {
      execFileSync(file, args, { stdio: 'ignore', timeout: 5000 });
    } catch (e) {
      // smtp-source/smtp-sink print their usage and exit non-zero: only "not found" counts.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') problems.push(`${file} not found (Debian package ${pkg})`);
    }
  }
  for (const file of new Set([CLI, etdCli])) if (!fs.existsSync(file)) problems.push(`${file} is missing: run npm run build`);
  return problems;
}

/** Polls until `ss` shows a TCP listener on address:port in `ns`. */
export async function waitListening(
  lab: Lab,
  ns: string,
  address: string,
  port: number,
  timeoutMs: number,
  child?: ChildProcess,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const want = hostPort(address, port);
  for (;;) {
    const { stdout } = await lab.exec(ns, 'ss', ['-Hltn'], { allowFailure: true });
    if (stdout.split('\n').some((l) => l.split(/\s+/).includes(want))) return;
    if (child && (child.exitCode !== null || child.signalCode !== null))
      throw new Error(`process exited (${child.exitCode ?? child.signalCode}) before listening on ${want}`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${want} in ${ns} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Resolves when the process exits (at once if it already has); the exit code or signal. */
export function exited(child: ChildProcess): Promise<number | string> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  if (child.signalCode !== null) return Promise.resolve(child.signalCode);
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
}

/** SIGTERM, then SIGKILL after `graceMs`; by pid only. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  const send = (sig: NodeJS.Signals): void => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(child.pid, sig);
    } catch {
      // already gone
    }
  };
  send('SIGTERM');
  const done = exited(child);
  if ((await Promise.race([done, sleep(graceMs).then(() => 'timeout' as const)])) === 'timeout') {
    send('SIGKILL');
    await Promise.race([done, sleep(2000)]);
  }
}

/** The last `n` lines of a file, for error messages. */
export function tail(file: string, n = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no log)';
  }
}

export async function createBenchLab(visitors: number, say: (s: string) => void): Promise<BenchLab> {
  const lab = await createLab();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-'));
  const notes: string[] = [];
  const sinkPids: number[] = [];
  const proxyAddress = lab.v4.gatewayClientSide;
  const backends = lab.v4.backends;
  const visitorAddresses = Array.from({ length: Math.min(visitors, 100) }, (_, i) => `10.${lab.x}.1.${100 + i}`);

  const spawnLogged = (ns: string, cmd: string, args: readonly string[], logFile: string, opts: SpawnOptions = {}): ChildProcess => {
    const fd = fs.openSync(logFile, 'a');
    try {
      return lab.spawn(ns, cmd, args, { ...opts, stdio: ['ignore', fd, fd] });
    } finally {
      fs.closeSync(fd);
    }
  };

  let rulesFile: string | undefined;
  const destroy = async (): Promise<void> => {
    if (rulesFile)
      await lab
        .exec(lab.ns.gateway, process.execPath, [CLI, 'rules', 'remove', '-c', rulesFile], { allowFailure: true, timeoutMs: 20_000 })
        .catch(() => undefined);
    await lab.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    for (const role of ['client', 'gateway', 'backend'] as const) {
      for (const setting of SYSCTLS[role]) {
        const r = await lab.exec(lab.ns[role], 'sysctl', ['-q', '-w', setting], { allowFailure: true });
        if (r.code !== 0) notes.push(`${role}: sysctl ${setting} failed: ${r.stderr.trim()}`);
      }
    }
    // Conntrack only tracks in a namespace whose rules need it; etd's do not. Report what is there.
    const ct = await lab.exec(lab.ns.gateway, 'sysctl', ['-n', 'net.netfilter.nf_conntrack_max'], { allowFailure: true });
    notes.push(
      ct.code === 0
        ? `conntrack is loaded (gateway nf_conntrack_max ${ct.stdout.trim()}) but no rule in the lab uses it, so it tracks nothing: nothing to widen`
        : 'conntrack is not loaded: nothing to widen',
    );

    if (visitorAddresses.length) {
      const lines = visitorAddresses.map((a) => `addr add ${a}/24 dev ${lab.ifaces.client}`);
      await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], { input: `${lines.join('\n')}\n` });
    }

    rulesFile = path.join(dir, 'rules.yaml');
    fs.writeFileSync(rulesFile, rulesConfig(proxyAddress, backends[0]));
    await lab.exec(lab.ns.gateway, process.execPath, [CLI, 'rules', 'apply', '-c', rulesFile], { timeoutMs: 30_000 });

    for (const [i, address] of backends.entries()) {
      const sink = spawnLogged(
        lab.ns.backend,
        SMTP_SINK,
        ['-u', 'nobody', '-m', '8192', `${address}:25`, '8192'],
        path.join(dir, `smtp-sink-${i}.log`),
      );
      await waitListening(lab, lab.ns.backend, address, 25, 10_000, sink);
      if (sink.pid !== undefined) sinkPids.push(sink.pid);
    }
    say(
      `lab ${lab.id}: client ${lab.v4.client} (+${visitorAddresses.length} visitor addresses) → gateway ${proxyAddress} → smtp-sink ${backends.join(', ')}`,
    );
  } catch (e) {
    await destroy();
    throw e;
  }
  return { lab, dir, proxyAddress, backends, visitorAddresses, notes, sinkPids, spawnLogged, destroy };
}
