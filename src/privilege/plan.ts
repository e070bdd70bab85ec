// Whether `etd run` started as root drops to its user, and the setpriv command that does it (pure decisions).
//
// Capabilities are per thread in Linux and Node runs several threads (libuv pool, V8 platform,
// engine threads), so a setuid + capset from JavaScript after start would not reliably cover them
// all. The drop therefore happens once, at start, before any thread matters: etd re-executes
// itself (same PID) through `setpriv`, which sets uid, gid, groups and the capability sets before
// Node starts again. CAP_NET_BIND_SERVICE stays ambient, so nothing has to be bound before the drop.

import { EtdError } from '../errors.js';
import { keptIn } from './caps.js';

/** ETD_DROP_PRIVILEGES: `auto` (default) drops when root and not under systemd; `yes` also under systemd; `no` never. */
export type DropSetting = 'auto' | 'yes' | 'no';

export const DROP_ENV = 'ETD_DROP_PRIVILEGES';
/** Set by etd on the re-executed process: the user it dropped to (for the start line). */
export const DROPPED_ENV = 'ETD_DROPPED_FROM_ROOT';

export interface Account {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

export interface PrivilegeFacts {
  readonly uid: number;
  readonly ppid: number;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** CapPrm of the process: only capabilities it holds can be kept. */
  readonly permitted: bigint;
}

export type PrivilegePlan =
  | { readonly action: 'stay'; readonly warning?: string }
  | { readonly action: 'drop'; readonly account: Account; readonly caps: readonly string[] };

export function dropSetting(env: PrivilegeFacts['env']): DropSetting {
  const v = env[DROP_ENV];
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'yes' || v === 'no') return v;
  throw new EtdError('ETD_ERR_PRIVILEGE_DROP', `${DROP_ENV}=${JSON.stringify(v.slice(0, 40))} is not valid`, {
    hint: `use auto (the default), yes or no`,
  });
}

/**
 * Started by systemd as a service: systemd sets INVOCATION_ID for every service process, and the
 * main process of a system service is a child of PID 1. Both must hold: a shell or a CI runner
 * started by a service inherits INVOCATION_ID, but etd is then not PID 1's child.
 */
export function underSystemd(facts: Pick<PrivilegeFacts, 'env' | 'ppid'>): boolean {
  return (facts.env.INVOCATION_ID ?? '') !== '' && facts.ppid === 1;
}

const STAY_ROOT = 'etd keeps every privilege of root (it can change any file, process or firewall rule of the host)';

/**
 * The decision. `lookup` resolves a user name (undefined = no such user); it is only called when
 * a drop is considered. Throws ETD_ERR_USER when an explicitly configured user does not exist.
 */
export function planPrivileges(
  config: { readonly user: string; readonly userExplicit: boolean },
  facts: PrivilegeFacts,
  lookup: (name: string) => Account | undefined,
): PrivilegePlan {
  const setting = dropSetting(facts.env);
  if (facts.uid !== 0) return { action: 'stay' };
  if (setting === 'no') return { action: 'stay', warning: `running as root (${DROP_ENV}=no): ${STAY_ROOT}` };
  if (setting === 'auto' && underSystemd(facts)) {
    return {
      action: 'stay',
      warning: `running as root under systemd: the unit's User= decides, not user: (${config.user}); ${STAY_ROOT} — use the shipped unit (User=etd with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE)`,
    };
  }
  if (config.user === 'root') return { action: 'stay', warning: `running as root (user: root): ${STAY_ROOT}` };
  const account = lookup(config.user);
  if (!account) {
    if (config.userExplicit) {
      throw new EtdError('ETD_ERR_USER', `user: no user ${JSON.stringify(config.user)} on this host`, {
        hint: `create it (useradd --system --user-group --shell /usr/sbin/nologin ${config.user}), name an existing user, or write user: root to keep root`,
      });
    }
    return {
      action: 'stay',
      warning: `the user ${config.user} does not exist, so etd stays root: ${STAY_ROOT} — create it (useradd --system --user-group --home-dir /var/lib/etd --shell /usr/sbin/nologin ${config.user}; the Debian package and scripts/install.sh do), or write user: root in the config to silence this warning`,
    };
  }
  if (account.uid === 0) return { action: 'stay', warning: `running as root (user: ${config.user} has uid 0): ${STAY_ROOT}` };
  return { action: 'drop', account, caps: keptIn(facts.permitted) };
}

/** setpriv's options for a drop: the systemd unit's User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=. */
export function setprivOptions(account: Account, caps: readonly string[]): string[] {
  const set = ['-all', ...caps.map((c) => `+${c}`)].join(',');
  return [
    `--reuid=${account.uid}`,
    `--regid=${account.gid}`,
    '--init-groups',
    `--inh-caps=${set}`,
    `--ambient-caps=${set}`,
    `--bounding-set=${set}`,
    '--no-new-privs',
  ];
}

/** The full command line that re-executes etd: setpriv OPTIONS -- node [node options] script args. */
export function reexecArgv(
  setpriv: string,
  account: Account,
  caps: readonly string[],
  node: string,
  nodeArgs: readonly string[],
): string[] {
  return [setpriv, ...setprivOptions(account, caps), '--', node, ...nodeArgs];
}
