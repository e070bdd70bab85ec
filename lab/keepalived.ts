// keepalived in a lab namespace: Debian's keepalived started in the foreground with its own config and pid files (never the system service), its log followed, stopped by PID.
//
// Facts this relies on (keepalived 2.2.7, Debian 12): `-n` keeps the parent in the foreground,
// `-l -G` log to the console and not to syslog, `-P` runs only the VRRP child; `-p/-r/-c` move
// the pid files (the defaults in /run would collide with another instance). The VRRP child is a
// process of its own: it exits with the parent on SIGTERM (and on the parent's death), and
// stop() also signals it by the pid from its pid file, so nothing of ours outlives the test.
// State changes are logged as "(INSTANCE) Entering MASTER|BACKUP|FAULT STATE".

import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LabProcesses } from './netns.js';

export type VrrpState = 'MASTER' | 'BACKUP' | 'FAULT' | 'INIT';

export interface Keepalived {
  readonly child: ChildProcess;
  /** The private directory (keepalived.conf, pid files). */
  readonly dir: string;
  /** Every log line so far. */
  readonly lines: string[];
  /** The last state the instance logged entering (INIT before the first). */
  state(): VrrpState;
  /** Resolves when the instance has entered `state` after `since` (a this.lines index); rejects after timeoutMs or when keepalived exits. */
  waitForState(state: VrrpState, timeoutMs: number, since?: number): Promise<void>;
  /** Resolves when a log line matches `re`; rejects after timeoutMs or when keepalived exits. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<void>;
  /** SIGTERM (SIGKILL after a grace) to the parent and the VRRP child, removes the directory. Idempotent. */
  stop(): Promise<void>;
}

const ENTERING = /\((\S+)\) Entering (MASTER|BACKUP|FAULT) STATE/;

/** True when keepalived is installed. */
export function keepalivedPath(): string | undefined {
  return ['/usr/sbin/keepalived', '/sbin/keepalived'].find((p) => fs.existsSync(p));
}

function exited(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

function pidFromFile(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function signal(pid: number | undefined, sig: NodeJS.Signals | 0): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Checks `config` with `keepalived --config-test` in `ns` (interfaces named in it must exist there); throws with keepalived's complaint. */
export async function checkKeepalivedConfig(procs: LabProcesses, ns: string, config: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-keepalived-'));
  try {
    const file = path.join(dir, 'keepalived.conf');
    fs.writeFileSync(file, config, { mode: 0o644 });
    const r = await procs.exec(ns, keepalivedPath() ?? 'keepalived', ['--config-test', '-f', file], {
      allowFailure: true,
      timeoutMs: 10_000,
    });
    const out = `${r.stdout}${r.stderr}`.trim();
    if (r.code !== 0 || out !== '') throw new Error(`keepalived --config-test (exit ${r.code}) complained about\n${config}\n---\n${out}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Starts keepalived (VRRP only) in namespace `ns` with configuration text `config`. Resolves once
 * it logged its startup. `env` is keepalived's environment, which its scripts inherit (PATH
 * decides, e.g., whether a track script finds curl).
 */
export async function startKeepalived(
  procs: LabProcesses,
  ns: string,
  config: string,
  opts: { env?: NodeJS.ProcessEnv } = {},
): Promise<Keepalived> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-keepalived-'));
  const file = path.join(dir, 'keepalived.conf');
  fs.writeFileSync(file, config, { mode: 0o644 });
  const pidFile = path.join(dir, 'keepalived.pid');
  const vrrpPidFile = path.join(dir, 'vrrp.pid');
  const child = procs.spawn(
    ns,
    keepalivedPath() ?? 'keepalived',
    ['-n', '-l', '-G', '-D', '-P', '-f', file, '-p', pidFile, '-r', vrrpPidFile, '-c', path.join(dir, 'checkers.pid')],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(opts.env ? { env: opts.env } : {}),
    },
  );
  const lines: string[] = [];
  const listeners = new Set<() => void>();
  let partial = '';
  const onData = (chunk: string): void => {
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      lines.push(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
    for (const l of [...listeners]) l();
  };
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  child.once('exit', () => {
    for (const l of [...listeners]) l();
  });

  const stateAfter = (since: number): VrrpState | undefined => {
    let s: VrrpState | undefined;
    for (const line of lines.slice(since)) {
      const m = ENTERING.exec(line);
      if (m) s = m[2] as VrrpState;
    }
    return s;
  };
  const describe = (): string => `keepalived in ${ns}:\n${lines.join('\n')}`;

  const waitFor = (pred: () => boolean, what: string, timeoutMs: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${describe()}`));
      }, timeoutMs);
      function check(): void {
        if (pred()) {
          clearTimeout(timer);
          listeners.delete(check);
          resolve();
        } else if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(timer);
          listeners.delete(check);
          reject(new Error(`keepalived exited (${child.exitCode ?? child.signalCode}) before ${what}; ${describe()}`));
        }
      }
      listeners.add(check);
      check();
    });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      const vrrpPid = pidFromFile(vrrpPidFile);
      signal(child.pid, 'SIGTERM');
      await exited(child, 5000);
      signal(child.pid, 'SIGKILL');
      await exited(child, 2000);
      // The VRRP child leaves with its parent; if it has not (the parent was SIGKILLed), end it.
      for (let i = 0; i < 20 && signal(vrrpPid, 0); i++) {
        signal(vrrpPid, i < 10 ? 'SIGTERM' : 'SIGKILL');
        await new Promise((r) => setTimeout(r, 100));
      }
      fs.rmSync(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    await waitFor(
      () =>
        fs.existsSync(vrrpPidFile) &&
        lines.some((l) => /Starting VRRP child process|VRRP_Instance|Entering BACKUP STATE|Entering FAULT STATE/.test(l)),
      'the VRRP child to start',
      10_000,
    );
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    child,
    dir,
    lines,
    state: () => stateAfter(0) ?? 'INIT',
    waitForState: (state, timeoutMs, since = 0) => waitFor(() => stateAfter(since) === state, `state ${state}`, timeoutMs),
    waitForLine: (re, timeoutMs) => waitFor(() => lines.some((l) => re.test(l)), `a line matching ${re}`, timeoutMs),
    stop,
  };
}
