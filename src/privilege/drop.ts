// `etd run` started as root outside systemd: re-execute as the configured user with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only (the I/O edge of plan.ts).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../config/schema.js';
import { EtdError } from '../errors.js';
import type { Logger } from '../log.js';
import { describeCaps, parseCapMask } from './caps.js';
import { execve } from './exec.js';
import { type Account, DROPPED_ENV, type PrivilegePlan, planPrivileges, reexecArgv, setprivOptions } from './plan.js';
import { lookupUser } from './user.js';

const NO_SETPRIV_HINT = 'install util-linux (it provides setpriv), or write user: root in the config to keep root';

function findSetpriv(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter((d) => d.startsWith('/')), '/usr/bin', '/bin'];
  for (const d of dirs) {
    const p = path.join(d, 'setpriv');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Runs `test FLAG FILE` as the target user: the kernel's own permission check, groups included. */
function asUser(setpriv: string, opts: readonly string[], args: readonly string[]): { ok: boolean; stderr: string } {
  const r = spawnSync(setpriv, [...opts, '--', ...args], { encoding: 'utf8' });
  return { ok: !r.error && r.status === 0, stderr: (r.stderr ?? String(r.error ?? '')).trim() };
}

/**
 * What the dropped process must still reach, checked before the exec so that a failure names the
 * file and the fix instead of a Node start error: the program, the config (also re-read on SIGHUP),
 * the Redis CA file and the API's unix socket directory. The state directory is created for the
 * user when missing (what the unit's StateDirectory= does); an existing one it cannot write makes
 * the state store warn and run from memory, as under the unit.
 */
function prepareFor(config: Config, file: string, account: Account, setpriv: string, opts: readonly string[]): void {
  const probe = asUser(setpriv, opts, ['true']);
  if (!probe.ok) {
    throw new EtdError('ETD_ERR_PRIVILEGE_DROP', `setpriv cannot switch to user ${account.name}: ${probe.stderr.slice(0, 300)}`, {
      hint: NO_SETPRIV_HINT,
    });
  }
  const readable = [process.argv[1], file, config.cluster?.redis.caFile].filter((p): p is string => p !== undefined);
  const checks: Array<[string, string]> = [['-x', process.execPath], ...readable.map((p): [string, string] => ['-r', p])];
  if (config.api.enabled && config.api.address.startsWith('/')) checks.push(['-w', path.dirname(config.api.address)]);
  for (const [flag, p] of checks) {
    if (!asUser(setpriv, opts, ['test', flag, p]).ok) {
      const what = flag === '-x' ? 'execute' : flag === '-r' ? 'read' : 'write to';
      throw new EtdError('ETD_ERR_PRIVILEGE_DROP', `user ${account.name} (uid ${account.uid}) cannot ${what} ${p}`, {
        hint: `etd drops from root to user ${account.name} at start: give that user access (e.g. chgrp ${account.name} and chmod g+r for the config, every directory on the path searchable), or write user: root to keep root`,
      });
    }
  }
  if (config.state.path !== ':memory:') {
    const dir = path.dirname(path.resolve(config.state.path));
    if (!fs.existsSync(dir)) {
      // Missing parents stay root's but searchable; the directory itself is the user's alone.
      fs.mkdirSync(path.dirname(dir), { recursive: true, mode: 0o755 });
      fs.mkdirSync(dir, { mode: 0o750 });
      fs.chownSync(dir, account.uid, account.gid);
    }
  }
}

/**
 * Root outside systemd with a user to drop to: re-executes this process through setpriv (same PID,
 * never returns). Otherwise returns the plan, whose warning the caller logs.
 * Throws ETD_ERR_USER (explicit user missing) or ETD_ERR_PRIVILEGE_DROP.
 */
export function dropPrivileges(config: Config, file: string): PrivilegePlan {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const plan = planPrivileges(
    config,
    { uid: process.getuid?.() ?? -1, ppid: process.ppid, env: process.env, permitted: parseCapMask(status, 'CapPrm') ?? 0n },
    lookupUser,
  );
  if (plan.action === 'stay') return plan;
  const setpriv = findSetpriv();
  if (!setpriv)
    throw new EtdError('ETD_ERR_PRIVILEGE_DROP', `setpriv not found, so etd cannot drop root for user ${config.user}`, {
      hint: NO_SETPRIV_HINT,
    });
  const opts = setprivOptions(plan.account, plan.caps);
  prepareFor(config, file, plan.account, setpriv, opts);
  const argv = reexecArgv(setpriv, plan.account, plan.caps, process.execPath, [...process.execArgv, ...process.argv.slice(1)]);
  return execve(setpriv, argv, { ...process.env, [DROPPED_ENV]: plan.account.name });
}

/** The one start line naming the user and capabilities etd runs with, and the plan's warning. */
export function logPrivileges(log: Logger, plan: PrivilegePlan): void {
  if (plan.action === 'stay' && plan.warning) log.warn({}, plan.warning);
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const caps = describeCaps(parseCapMask(status, 'CapEff') ?? 0n);
  const uid = process.getuid?.() ?? -1;
  let user = String(uid);
  try {
    user = os.userInfo().username;
  } catch {
    /* a uid without a passwd entry */
  }
  const dropped = process.env[DROPPED_ENV];
  log.info(
    { user, uid, gid: process.getgid?.() ?? -1, capabilities: caps, ...(dropped ? { droppedFromRoot: true } : {}) },
    `running as user ${user} (uid ${uid}) with capabilities ${caps}${dropped ? ' (dropped from root at start)' : ''}`,
  );
}
