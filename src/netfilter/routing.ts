// Policy routing for marked packets (iproute2): plan the `ip rule` / `ip route` commands (pure), run them, read them back.
//
// Packets carrying etd's mark must be delivered locally — replies to etd's spoofed upstream
// connects and TPROXY'd connections — so etd installs, per address family:
//   ip rule add fwmark <mark> lookup <table> priority <rulePriority>
//   ip route replace local 0.0.0.0/0 dev lo table <table>        (::/0 for -6)
// Only these objects are ever touched: a rule is identified by (fwmark, table, priority), a route
// by (local default, dev lo, table). Other rules and other routes in the table are left alone.

import { execFile } from 'node:child_process';
import type { Config } from '../config/schema.js';
import { EtdError } from '../errors.js';
import { hex } from './ruleset.js';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];

type Netfilter = Config['netfilter'];

/**
 * One iproute2 invocation. `absentOk`: the kernel saying the object does not exist is success
 * (removal of something already gone). `untilAbsent`: repeat until the object is gone, so every
 * copy a crashed run or an operator left behind is removed.
 */
export interface RoutingStep {
  readonly argv: readonly string[];
  readonly mode: 'once' | 'absentOk' | 'untilAbsent';
}

export function ruleArgs(family: Family, nf: Netfilter, verb: 'add' | 'del'): string[] {
  return [`-${family}`, 'rule', verb, 'fwmark', hex(nf.mark), 'lookup', String(nf.table), 'priority', String(nf.rulePriority)];
}

export function routeArgs(family: Family, nf: Netfilter, verb: 'replace' | 'del'): string[] {
  return [`-${family}`, 'route', verb, 'local', family === 4 ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', String(nf.table)];
}

/** Apply for one family: drop every existing copy of the rule, add exactly one, ensure the route. */
export function planApplyRouting(nf: Netfilter, family: Family): readonly RoutingStep[] {
  return [
    { argv: ruleArgs(family, nf, 'del'), mode: 'untilAbsent' },
    { argv: ruleArgs(family, nf, 'add'), mode: 'once' },
    // replace, not add: idempotent, and it takes over a route left by a crashed run.
    { argv: routeArgs(family, nf, 'replace'), mode: 'once' },
  ];
}

/** Remove for one family, in reverse order of apply: the rule first, so nothing routes into a table being emptied. */
export function planRemoveRouting(nf: Netfilter, family: Family): readonly RoutingStep[] {
  return [
    { argv: ruleArgs(family, nf, 'del'), mode: 'untilAbsent' },
    { argv: routeArgs(family, nf, 'del'), mode: 'absentOk' },
  ];
}

/** The commands as an operator would type them (for `etd rules show`). */
export function formatStep(step: RoutingStep): string {
  return ['ip', ...step.argv].join(' ');
}

// ---- execution -------------------------------------------------------------------------------

export interface IpResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `ip` with these arguments. Injectable for tests; the default uses execFile (no shell). */
export type IpRunner = (argv: readonly string[]) => Promise<IpResult>;

const IP_TIMEOUT_MS = 10_000;

export const runIp: IpRunner = (argv) =>
  new Promise((resolve, reject) => {
    execFile('ip', [...argv], { timeout: IP_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: string | number; killed?: boolean };
      if (e.code === 'ENOENT') {
        return reject(
          new EtdError('ETD_ERR_ROUTING', 'cannot run `ip`: not found on PATH', {
            hint: 'install iproute2 (Debian/Ubuntu: apt-get install iproute2)',
            cause: err,
          }),
        );
      }
      if (e.killed) {
        return reject(
          new EtdError('ETD_ERR_ROUTING', `\`ip ${argv.join(' ')}\` did not finish within ${IP_TIMEOUT_MS} ms`, { cause: err }),
        );
      }
      resolve({ code: typeof e.code === 'number' ? e.code : 1, stdout, stderr });
    });
  });

// What the kernel says when the object to delete is not there: ENOENT for rules and IPv6 routes,
// ESRCH for IPv4 routes; "FIB table does not exist" when listing a table that was never created.
const ABSENT = /No such file or directory|No such process|FIB table does not exist/;
const NO_FAMILY = /Address family not supported/;

function routingError(argv: readonly string[], r: IpResult): EtdError {
  const cmd = ['ip', ...argv].join(' ');
  const stderr = r.stderr.trim() || `exit code ${r.code}`;
  const hint = /Operation not permitted/.test(stderr)
    ? 'etd needs CAP_NET_ADMIN to change policy routing: run it as root or grant the capability'
    : /device is not up|Device for nexthop is not up/i.test(stderr)
      ? 'the loopback interface is down: ip link set lo up'
      : NO_FAMILY.test(stderr)
        ? 'this address family is disabled in the kernel (ipv6.disable=1?)'
        : undefined;
  return new EtdError('ETD_ERR_ROUTING', `\`${cmd}\` failed: ${stderr}`, hint === undefined ? {} : { hint });
}

/** True when an ETD_ERR_ROUTING says the address family is unavailable (IPv6 disabled at boot). */
export function isFamilyUnsupported(e: unknown): boolean {
  return e instanceof EtdError && e.code === 'ETD_ERR_ROUTING' && NO_FAMILY.test(e.message);
}

// More copies than this means something re-adds the rule as fast as we delete it.
const MAX_DELETES = 64;

/** Runs the steps in order. Returns how many objects untilAbsent/absentOk steps removed. */
export async function runSteps(steps: readonly RoutingStep[], ip: IpRunner = runIp): Promise<number> {
  let removed = 0;
  for (const step of steps) {
    if (step.mode === 'once') {
      const r = await ip(step.argv);
      if (r.code !== 0) throw routingError(step.argv, r);
      continue;
    }
    for (let i = 0; ; i++) {
      if (i >= MAX_DELETES) {
        throw new EtdError('ETD_ERR_ROUTING', `\`ip ${step.argv.join(' ')}\` still finds a copy after ${MAX_DELETES} deletions`, {
          hint: 'another program keeps re-adding this rule; stop it or give etd another netfilter.rulePriority',
        });
      }
      const r = await ip(step.argv);
      if (r.code !== 0) {
        if (ABSENT.test(r.stderr)) break;
        throw routingError(step.argv, r);
      }
      removed++;
      if (step.mode === 'absentOk') break;
    }
  }
  return removed;
}

// ---- reading back ----------------------------------------------------------------------------

export interface RoutingState {
  readonly family: Family;
  /** Copies of etd's fwmark rule (exactly 1 when healthy). */
  readonly rules: number;
  /** Whether the local default route to lo is in etd's table. */
  readonly route: boolean;
  /** Set when the family is unavailable in this kernel (the counts are then 0/false). */
  readonly unsupported?: string;
}

interface IpRuleJson {
  readonly priority?: number;
  readonly fwmark?: string;
  readonly fwmask?: string;
  readonly table?: string;
  readonly not?: unknown;
}

interface IpRouteJson {
  readonly type?: string;
  readonly dst?: string;
  readonly dev?: string;
}

function parseJsonArray<T>(argv: readonly string[], text: string): readonly T[] {
  try {
    const v: unknown = JSON.parse(text.trim() || '[]');
    if (Array.isArray(v)) return v as T[];
  } catch {
    // fall through
  }
  throw new EtdError('ETD_ERR_ROUTING', `\`ip ${argv.join(' ')}\` did not print a JSON array: ${text.slice(0, 200)}`);
}

/** Pure: copies of etd's rule in `ip -N -j rule show` output. A missing fwmask means the full mask. */
export function countRules(rules: readonly IpRuleJson[], nf: Netfilter): number {
  return rules.filter(
    (r) =>
      r.not === undefined &&
      r.priority === nf.rulePriority &&
      r.fwmark !== undefined &&
      Number(r.fwmark) === nf.mark &&
      (r.fwmask === undefined || Number(r.fwmask) === 0xffffffff) &&
      r.table === String(nf.table),
  ).length;
}

/** Pure: whether `ip -j route show table T` output holds the local default route to lo. */
export function hasLocalRoute(routes: readonly IpRouteJson[]): boolean {
  return routes.some((r) => r.type === 'local' && r.dst === 'default' && r.dev === 'lo');
}

/** Reads the live rule and route of one family. */
export async function readRouting(nf: Netfilter, family: Family, ip: IpRunner = runIp): Promise<RoutingState> {
  // -N: numeric table ids even when /etc/iproute2/rt_tables names the table.
  const ruleArgv = [`-${family}`, '-N', '-j', 'rule', 'show'];
  const rr = await ip(ruleArgv);
  if (rr.code !== 0) {
    if (NO_FAMILY.test(rr.stderr)) return { family, rules: 0, route: false, unsupported: rr.stderr.trim() };
    throw routingError(ruleArgv, rr);
  }
  const routeArgv = [`-${family}`, '-j', 'route', 'show', 'table', String(nf.table)];
  const ro = await ip(routeArgv);
  let route = false;
  if (ro.code === 0) route = hasLocalRoute(parseJsonArray<IpRouteJson>(routeArgv, ro.stdout));
  else if (!ABSENT.test(ro.stderr)) throw routingError(routeArgv, ro);
  return { family, rules: countRules(parseJsonArray<IpRuleJson>(ruleArgv, rr.stdout), nf), route };
}

/**
 * Installs the rule and route for every family. A family the kernel does not support (IPv6
 * disabled at boot) is skipped and reported, since IPv4-only gateways are common.
 */
export async function applyRouting(
  nf: Netfilter,
  ip: IpRunner = runIp,
): Promise<{ readonly skipped: readonly { family: Family; reason: string }[] }> {
  const skipped: { family: Family; reason: string }[] = [];
  for (const family of FAMILIES) {
    try {
      await runSteps(planApplyRouting(nf, family), ip);
    } catch (e) {
      if (family === 6 && isFamilyUnsupported(e)) skipped.push({ family, reason: (e as Error).message });
      else throw e;
    }
  }
  return { skipped };
}

/** Removes etd's rules and routes for every family; absent ones are fine. Returns objects removed. */
export async function removeRouting(nf: Netfilter, ip: IpRunner = runIp): Promise<number> {
  let removed = 0;
  for (const family of FAMILIES) {
    try {
      removed += await runSteps(planRemoveRouting(nf, family), ip);
    } catch (e) {
      if (!(family === 6 && isFamilyUnsupported(e))) throw e;
    }
  }
  return removed;
}
