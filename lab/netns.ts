// The privileged netns test lab (DESIGN §6): client, gateway and backend namespaces, their processes, and teardown.
//
//   client ns  10.x.1.2/24  fd00:x:1::2/64  ── veth ──  gateway ns 10.x.1.1 | 10.x.2.1 (+ fd00:x:1::1 | fd00:x:2::1)
//   backend ns 10.x.2.10, 10.x.2.11, fd00:x:2::10, fd00:x:2::11  ── veth ── gateway
//
// Names carry this process's pid and a random suffix, so parallel runs never collide; the
// subnet index x is random too (each lab's addresses live only inside its own namespaces, so
// it is for readability of traces, not isolation). Every process spawned through the lab is
// tracked and killed by pid on destroy(), which then deletes the namespaces (veths go with
// them). destroy() is idempotent and also runs on process exit and SIGTERM/SIGINT/SIGHUP. Labs
// left behind by a run that was SIGKILLed are deleted, with the processes still running inside
// them, when the next lab is created (the pid in their name is no longer alive).
//
// Preconditions: root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), iproute2, sysctl. Tests gate on
// skipPrivileged() from test/helpers/privileged.ts; `npm run demo` checks for root itself.
// It lives in src/ because the demo ships with etd; the tests use the same lab.

import { type ChildProcess, execFile, execFileSync, type SpawnOptions, spawn as spawnChild } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { PACKAGE_ROOT } from '../src/paths.js';
import { hostPort } from '../src/util/address.js';
import { parseStrictJson } from '../src/util/strictJson.js';

export type NsRole = 'client' | 'gateway' | 'backend';

export interface LabOptions {
  /** Give the backend a default route via the gateway (default true). False leaves routing to the test (PBR). */
  backendDefaultRoute?: boolean;
  /** Give the client a default route via the gateway (default true). */
  clientDefaultRoute?: boolean;
  /**
   * Add a second gateway namespace (`ns.peer`, 10.x.3.2 | fd00:x:3::2) linked to the gateway
   * (10.x.3.1), which routes between it and the client and backend nets: a second etd there sees
   * the same client addresses and reaches the same backends (cluster tests). Default false.
   */
  peerGateway?: boolean;
}

export interface ExecOptions {
  /** Kill the command after this long (default 15 s). */
  timeoutMs?: number;
  /** Written to the command's stdin. */
  input?: string;
  /** Resolve with a non-zero exit code instead of rejecting. */
  allowFailure?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** Exit code; null when killed by a signal (e.g. the timeout). */
  code: number | null;
}

/** One event printed as a JSON line by a lab process (the recorder, test children). */
export type JsonEvent = Record<string, unknown> & { event?: unknown };

/** A spawned process whose stdout is JSON lines, collected as they arrive. */
export interface JsonLineProcess {
  readonly child: ChildProcess;
  /** Every event seen so far, in order. */
  readonly events: JsonEvent[];
  /** Lines on stdout that were not JSON, and all of stderr: for failure messages. */
  readonly noise: string[];
  /** The first event (already seen or future) matching `predicate`; rejects after `timeoutMs` or when the process exits first. */
  waitFor(predicate: (e: JsonEvent) => boolean, timeoutMs: number): Promise<JsonEvent>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
}

export interface Listen {
  address: string;
  port: number;
}

/** What every lab offers for running things in its namespaces (this lab and the PBR lab). */
export interface LabProcesses {
  /** Runs `ip netns exec <ns> cmd args...`; rejects on non-zero exit unless allowFailure. */
  exec(ns: string, cmd: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Spawns `ip netns exec <ns> cmd args...` (ip execs in place, so child.pid is the command's pid); tracked and killed on destroy. */
  spawn(ns: string, cmd: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Spawns a process printing JSON lines on stdout and collects them. */
  spawnJson(ns: string, cmd: string, args: readonly string[], opts?: SpawnOptions): JsonLineProcess;
  /** Starts scripts/lab-recorder.mjs in `ns` on the given addresses; resolves once it is ready. */
  startRecorder(
    ns: string,
    listens: readonly Listen[],
    opts?: { plain?: boolean; banner?: string; timeoutMs?: number },
  ): Promise<JsonLineProcess>;
  /** Kills tracked processes by pid, deletes the namespaces. Idempotent. */
  destroy(): Promise<void>;
}

export interface Lab extends LabProcesses {
  readonly id: string;
  /** Subnet index: 10.x.1.0/24, 10.x.2.0/24, fd00:x:1::/64, fd00:x:2::/64. */
  readonly x: number;
  readonly ns: Readonly<Record<NsRole, string>>;
  readonly v4: {
    readonly client: string;
    readonly gatewayClientSide: string;
    readonly gatewayBackendSide: string;
    readonly backends: readonly [string, string];
  };
  readonly v6: {
    readonly client: string;
    readonly gatewayClientSide: string;
    readonly gatewayBackendSide: string;
    readonly backends: readonly [string, string];
  };
  /** With `peerGateway`: the second gateway's namespace and addresses (undefined otherwise). */
  readonly peer?: {
    readonly ns: string;
    readonly v4: string;
    readonly v6: string;
    readonly gatewaySideV4: string;
    readonly gatewaySideV6: string;
  };
  /** Interface names inside each namespace. */
  readonly ifaces: {
    readonly client: string;
    readonly gatewayToClient: string;
    readonly gatewayToBackend: string;
    readonly backend: string;
  };
}

const RECORDER = path.join(PACKAGE_ROOT, 'scripts/lab-recorder.mjs');
const NS_NAME = /^etd[cgbp]([0-9a-z]+)-([0-9a-z]+)$/;

export { hostPort };

export function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, env: opts.env ?? process.env, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        if (err && !opts.allowFailure) {
          const why = err.killed ? `killed after ${timeoutMs}ms timeout` : `exit ${String(err.code ?? err.signal)}`;
          reject(new Error(`${cmd} ${args.join(' ')}: ${why}\nstdout: ${stdout}\nstderr: ${stderr}`));
          return;
        }
        resolve({ stdout, stderr, code });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes namespaces of earlier labs whose process is gone (a SIGKILLed run cannot clean up). */
async function removeStaleLabs(): Promise<void> {
  const { stdout } = await run('ip', ['netns', 'list'], { allowFailure: true });
  const stale = stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((name) => {
      const m = NS_NAME.exec(name);
      return m !== null && m[1] !== undefined && !pidAlive(parseInt(m[1], 36));
    });
  for (const name of stale) {
    // Processes a dead lab spawned outlive it and keep its namespace alive: end them first.
    const { stdout: pids } = await run('ip', ['netns', 'pids', name], { allowFailure: true });
    for (const pid of pids
      .split('\n')
      .map(Number)
      .filter((p) => Number.isInteger(p) && p > 1)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await run('ip', ['netns', 'del', name], { allowFailure: true });
  }
}

function killPid(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, signal);
  } catch {
    // already gone
  }
}

function waitExit(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function collectJson(child: ChildProcess, label: string): JsonLineProcess {
  const events: JsonEvent[] = [];
  const noise: string[] = [];
  const listeners = new Set<() => void>();
  let exited = false;
  let partial = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl).trim();
      partial = partial.slice(nl + 1);
      if (!line) continue;
      try {
        const parsed: unknown = parseStrictJson(line);
        if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) events.push(parsed as JsonEvent);
        else noise.push(line);
      } catch {
        noise.push(line);
      }
    }
    for (const l of [...listeners]) l();
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => noise.push(`stderr: ${chunk.trimEnd()}`));
  child.once('exit', (code, signal) => {
    exited = true;
    noise.push(`exited: ${code ?? signal}`);
    for (const l of [...listeners]) l();
  });

  const describe = (): string =>
    `${label}\n  events: ${events.map((e) => JSON.stringify(e)).join('\n          ') || '(none)'}\n  other output: ${noise.join('\n    ') || '(none)'}`;

  return {
    child,
    events,
    noise,
    waitFor(predicate, timeoutMs) {
      return new Promise((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        const check = (): void => {
          const hit = events.find(predicate);
          if (hit) {
            done();
            resolve(hit);
          } else if (exited) {
            done();
            reject(new Error(`process exited before the awaited event: ${describe()}`));
          }
        };
        const done = (): void => {
          if (timer) clearTimeout(timer);
          listeners.delete(check);
        };
        timer = setTimeout(() => {
          done();
          reject(new Error(`timed out after ${timeoutMs}ms waiting for an event: ${describe()}`));
        }, timeoutMs);
        listeners.add(check);
        check();
      });
    },
    async stop(graceMs = 2000) {
      killPid(child, 'SIGTERM');
      await waitExit(child, graceMs);
      killPid(child, 'SIGKILL');
      await waitExit(child, 1000);
    },
  };
}

// Sync cleanups of labs not yet destroyed, run on process exit and on the signals that end a
// test worker (vitest stops its fork workers with SIGTERM, then SIGKILL 500 ms later; 'exit'
// does not fire on a signal). Installed once per process.
const syncCleanups = new Set<() => void>();
let handlersInstalled = false;

function runSyncCleanups(): void {
  for (const f of [...syncCleanups]) {
    syncCleanups.delete(f);
    f();
  }
}

export function registerSyncCleanup(f: () => void): void {
  syncCleanups.add(f);
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', runSyncCleanups);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      runSyncCleanups();
      process.removeListener(sig, onSignal);
      // Nobody else handles it: re-raise so the default action (termination) still happens.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

export async function createLab(opts: LabOptions = {}): Promise<Lab> {
  const id = `${process.pid.toString(36)}-${randomBytes(2).toString('hex')}`;
  const x = 1 + (randomBytes(1).readUInt8(0) % 250);
  const ns = { client: `etdc${id}`, gateway: `etdg${id}`, backend: `etdb${id}` } as const;
  // veth ends are created directly inside their namespaces, so these short names never meet another lab's.
  const ifaces = { client: 'veth-c', gatewayToClient: 'veth-gc', gatewayToBackend: 'veth-gb', backend: 'veth-b' } as const;
  const v4 = {
    client: `10.${x}.1.2`,
    gatewayClientSide: `10.${x}.1.1`,
    gatewayBackendSide: `10.${x}.2.1`,
    backends: [`10.${x}.2.10`, `10.${x}.2.11`] as const,
  };
  const v6 = {
    client: `fd00:${x}:1::2`,
    gatewayClientSide: `fd00:${x}:1::1`,
    gatewayBackendSide: `fd00:${x}:2::1`,
    backends: [`fd00:${x}:2::10`, `fd00:${x}:2::11`] as const,
  };

  const peer = opts.peerGateway
    ? { ns: `etdp${id}`, v4: `10.${x}.3.2`, v6: `fd00:${x}:3::2`, gatewaySideV4: `10.${x}.3.1`, gatewaySideV6: `fd00:${x}:3::1` }
    : undefined;
  const children = new Set<ChildProcess>();
  const created: string[] = [];
  let destroying: Promise<void> | undefined;

  // Last resort when the test process ends without afterAll (synchronous APIs only).
  const syncCleanup = (): void => {
    for (const c of children) killPid(c, 'SIGKILL');
    for (const name of created) {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore', timeout: 5000 });
      } catch {
        // already deleted
      }
    }
  };
  registerSyncCleanup(syncCleanup);

  const destroy = (): Promise<void> => {
    destroying ??= (async () => {
      const live = [...children];
      for (const c of live) killPid(c, 'SIGTERM');
      await Promise.all(live.map((c) => waitExit(c, 1500)));
      for (const c of live) killPid(c, 'SIGKILL');
      await Promise.all(live.map((c) => waitExit(c, 1500)));
      children.clear();
      for (const name of created.splice(0)) await run('ip', ['netns', 'del', name], { allowFailure: true });
      syncCleanups.delete(syncCleanup);
    })();
    return destroying;
  };

  const exec = (name: string, cmd: string, args: readonly string[], o?: ExecOptions): Promise<ExecResult> =>
    run('ip', ['netns', 'exec', name, cmd, ...args], o);

  const spawn = (name: string, cmd: string, args: readonly string[], o: SpawnOptions = {}): ChildProcess => {
    if (destroying) throw new Error(`lab ${id} is destroyed; cannot spawn ${cmd}`);
    const child = spawnChild('ip', ['netns', 'exec', name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...o });
    children.add(child);
    child.once('exit', () => children.delete(child));
    child.once('error', () => children.delete(child));
    return child;
  };

  const spawnJson = (name: string, cmd: string, args: readonly string[], o?: SpawnOptions): JsonLineProcess =>
    collectJson(spawn(name, cmd, args, o), `${cmd} ${args.join(' ')} in ${name}`);

  const lab: Lab = {
    id,
    x,
    ns,
    v4,
    v6,
    ...(peer ? { peer } : {}),
    ifaces,
    exec,
    spawn,
    spawnJson,
    async startRecorder(name, listens, o = {}) {
      const args = [RECORDER, ...(o.plain ? ['--plain'] : []), ...(o.banner ? [`--banner=${o.banner}`] : [])];
      const p = spawnJson(name, process.execPath, [...args, ...listens.map((l) => hostPort(l.address, l.port))]);
      try {
        await p.waitFor((e) => e.event === 'ready', o.timeoutMs ?? 10_000);
      } catch (e) {
        await p.stop(500);
        throw e;
      }
      return p;
    },
    destroy,
  };

  try {
    await removeStaleLabs();
    for (const name of [ns.client, ns.gateway, ns.backend, ...(peer ? [peer.ns] : [])]) {
      await run('ip', ['netns', 'add', name]);
      created.push(name);
      // Before any interface exists, so new interfaces inherit it: addresses usable at once, no DAD wait.
      await exec(name, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
      await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    }
    await run('ip', [
      'link',
      'add',
      ifaces.client,
      'netns',
      ns.client,
      'type',
      'veth',
      'peer',
      'name',
      ifaces.gatewayToClient,
      'netns',
      ns.gateway,
    ]);
    await run('ip', [
      'link',
      'add',
      ifaces.backend,
      'netns',
      ns.backend,
      'type',
      'veth',
      'peer',
      'name',
      ifaces.gatewayToBackend,
      'netns',
      ns.gateway,
    ]);

    await exec(ns.gateway, 'sysctl', [
      '-q',
      '-w',
      'net.ipv4.ip_forward=1',
      'net.ipv6.conf.all.forwarding=1',
      'net.ipv4.conf.all.rp_filter=0',
      'net.ipv4.conf.default.rp_filter=0',
      `net.ipv4.conf.${ifaces.gatewayToClient}.rp_filter=0`,
      `net.ipv4.conf.${ifaces.gatewayToBackend}.rp_filter=0`,
    ]);

    // ip -batch lines take no options such as -6: the family follows from the addresses.
    const batch = (name: string, lines: string[]): Promise<ExecResult> =>
      run('ip', ['-n', name, '-batch', '-'], { input: `${lines.join('\n')}\n` });

    await batch(ns.client, [
      `addr add ${v4.client}/24 dev ${ifaces.client}`,
      `addr add ${v6.client}/64 dev ${ifaces.client} nodad`,
      `link set ${ifaces.client} up`,
      ...(opts.clientDefaultRoute === false
        ? []
        : [`route add default via ${v4.gatewayClientSide}`, `route add ::/0 via ${v6.gatewayClientSide}`]),
    ]);
    await batch(ns.gateway, [
      `addr add ${v4.gatewayClientSide}/24 dev ${ifaces.gatewayToClient}`,
      `addr add ${v4.gatewayBackendSide}/24 dev ${ifaces.gatewayToBackend}`,
      `addr add ${v6.gatewayClientSide}/64 dev ${ifaces.gatewayToClient} nodad`,
      `addr add ${v6.gatewayBackendSide}/64 dev ${ifaces.gatewayToBackend} nodad`,
      `link set ${ifaces.gatewayToClient} up`,
      `link set ${ifaces.gatewayToBackend} up`,
    ]);
    await batch(ns.backend, [
      `addr add ${v4.backends[0]}/24 dev ${ifaces.backend}`,
      `addr add ${v4.backends[1]}/24 dev ${ifaces.backend}`,
      `addr add ${v6.backends[0]}/64 dev ${ifaces.backend} nodad`,
      `addr add ${v6.backends[1]}/64 dev ${ifaces.backend} nodad`,
      `link set ${ifaces.backend} up`,
      ...(opts.backendDefaultRoute === false
        ? []
        : [`route add default via ${v4.gatewayBackendSide}`, `route add ::/0 via ${v6.gatewayBackendSide}`]),
    ]);
    if (peer) {
      await run('ip', ['link', 'add', 'veth-gp', 'netns', ns.gateway, 'type', 'veth', 'peer', 'name', 'veth-pg', 'netns', peer.ns]);
      await exec(peer.ns, 'sysctl', ['-q', '-w', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
      await exec(ns.gateway, 'sysctl', ['-q', '-w', 'net.ipv4.conf.veth-gp.rp_filter=0']);
      await batch(ns.gateway, [
        `addr add ${peer.gatewaySideV4}/24 dev veth-gp`,
        `addr add ${peer.gatewaySideV6}/64 dev veth-gp nodad`,
        'link set veth-gp up',
      ]);
      await batch(peer.ns, [
        `addr add ${peer.v4}/24 dev veth-pg`,
        `addr add ${peer.v6}/64 dev veth-pg nodad`,
        'link set veth-pg up',
        `route add default via ${peer.gatewaySideV4}`,
        `route add ::/0 via ${peer.gatewaySideV6}`,
      ]);
    }
  } catch (e) {
    await destroy();
    throw e;
  }
  return lab;
}
