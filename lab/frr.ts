// FRRouting in a lab namespace: Debian's zebra + pbrd started with their own config, socket and pid directory (never the system service), driven with vtysh, stopped by PID.
//
// Facts this relies on (FRR 8.4.4, Debian 12): the daemons start as root and drop to the user
// `frr` (group `frrvty` for the vty sockets), so their directory belongs to frr; `--vty_socket DIR`
// puts both vty sockets there and `vtysh --vty_socket DIR` finds them; `-z` moves zebra's API
// socket (pbrd gets the same path). Each daemon makes /var/tmp/frr/<daemon>.<pid> for crash
// logs and leaves it behind even on a clean SIGTERM: stop() deletes exactly those directories
// (and /var/tmp/frr when this module created it).

import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LabProcesses } from './netns.js';

const FRR_LIB = '/usr/lib/frr';
const CRASH_DIR = '/var/tmp/frr';

export interface FrrRouter {
  /** The daemons' private directory (configs, pid files, sockets, logs). */
  readonly dir: string;
  /** Runs vtysh commands against these daemons (`conf t` etc. as separate commands); throws on failure. */
  vtysh(...commands: string[]): Promise<string>;
  /** Both logs, for failure messages. */
  logs(): string;
  /** SIGTERM pbrd then zebra (SIGKILL after a grace), removes their crash-log directories and the private directory. Idempotent. */
  stop(): Promise<void>;
}

/** True when Debian's frr package (zebra, pbrd, vtysh) is installed. */
export function frrInstalled(): boolean {
  return ['zebra', 'pbrd'].every((d) => fs.existsSync(path.join(FRR_LIB, d))) && fs.existsSync('/usr/bin/vtysh');
}

async function waitForFile(file: string, child: ChildProcess, what: string, log: () => string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before creating ${file}:\n${log()}`);
    if (Date.now() > until) throw new Error(`${what} did not create ${file} within ${timeoutMs} ms:\n${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
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

/**
 * Starts zebra, then pbrd with `pbrdConfig` (FRR configuration text: pbr-maps and the
 * interfaces' pbr-policy), in namespace `ns`. Resolves once pbrd's vty socket exists.
 */
export async function startFrr(procs: LabProcesses, ns: string, pbrdConfig: string): Promise<FrrRouter> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-frr-'));
  const uid = Number(execFileSync('id', ['-u', 'frr'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'frr'], { encoding: 'utf8' }).trim());
  fs.chownSync(dir, uid, gid);
  fs.chmodSync(dir, 0o755);
  const crashDirExisted = fs.existsSync(CRASH_DIR);
  fs.writeFileSync(path.join(dir, 'zebra.conf'), 'hostname etd-lab-router\n', { mode: 0o644 });
  fs.writeFileSync(path.join(dir, 'pbrd.conf'), pbrdConfig, { mode: 0o644 });
  const zserv = path.join(dir, 'zserv.api');
  const daemon = (name: 'zebra' | 'pbrd'): ChildProcess =>
    procs.spawn(
      ns,
      path.join(FRR_LIB, name),
      [
        '-f',
        path.join(dir, `${name}.conf`),
        '-i',
        path.join(dir, `${name}.pid`),
        '-z',
        zserv,
        '--vty_socket',
        dir,
        '--log',
        `file:${path.join(dir, `${name}.log`)}`,
      ],
      {
        stdio: ['ignore', 'ignore', 'ignore'],
      },
    );
  const readLog = (name: string) => {
    try {
      return fs.readFileSync(path.join(dir, `${name}.log`), 'utf8');
    } catch {
      return `(no ${name}.log)`;
    }
  };
  const logs = () => `--- zebra.log\n${readLog('zebra')}--- pbrd.log\n${readLog('pbrd')}`;

  const started: ChildProcess[] = [];
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      for (const child of [...started].reverse()) {
        if (child.pid === undefined) continue;
        try {
          process.kill(child.pid, 'SIGTERM');
        } catch {
          // already gone
        }
        await exited(child, 5000);
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // exited
        }
        await exited(child, 2000);
      }
      for (const child of started) {
        for (const name of ['zebra', 'pbrd']) fs.rmSync(path.join(CRASH_DIR, `${name}.${child.pid}`), { recursive: true, force: true });
      }
      if (!crashDirExisted) {
        try {
          fs.rmdirSync(CRASH_DIR);
        } catch {
          // absent, or another FRR instance uses it
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    const zebra = daemon('zebra');
    started.push(zebra);
    await waitForFile(zserv, zebra, 'zebra', logs);
    const pbrd = daemon('pbrd');
    started.push(pbrd);
    await waitForFile(path.join(dir, 'pbrd.vty'), pbrd, 'pbrd', logs);
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    dir,
    async vtysh(...commands: string[]) {
      const r = await procs.exec(ns, 'vtysh', ['--vty_socket', dir, ...commands.flatMap((c) => ['-c', c])], {
        timeoutMs: 15_000,
        allowFailure: true,
      });
      const out = r.stdout + r.stderr;
      if (r.code !== 0 || /^% /m.test(out)) throw new Error(`vtysh ${commands.join(' ; ')} failed (exit ${r.code}):\n${out}`);
      return out;
    },
    logs,
    stop,
  };
}
