// Pure: Config → the nft batch etd applies (its own table only) and the batch that removes it.
//
// The batch is one libnftables transaction: `add table` + `flush table` make it idempotent and
// replace whatever a crashed run left in etd's table without a moment of no rules, and nothing
// outside `table inet <tableName>` is ever named. See DESIGN.md §3 for the rules themselves.

import { type Cidr, formatAddress, parseCidr } from '../config/cidr.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import { hostPort } from '../util/address.js';

/** A base chain etd owns, as nft reports it back (JSON `prio` is numeric: mangle = -150). */
export interface ChainSpec {
  readonly name: 'divert' | 'intercept';
  readonly type: 'filter';
  readonly hook: 'prerouting';
  readonly prio: number;
  /** The priority as written in the batch. */
  readonly prioText: string;
}

export const DIVERT_CHAIN: ChainSpec = { name: 'divert', type: 'filter', hook: 'prerouting', prio: -150, prioText: 'mangle' };
// mangle + 1: runs after divert, so etd's own return traffic is marked before interception is considered.
export const INTERCEPT_CHAIN: ChainSpec = { name: 'intercept', type: 'filter', hook: 'prerouting', prio: -149, prioText: 'mangle + 1' };

/** Where TPROXY hands intercepted connections: etd's intercept listener on loopback. */
export const TPROXY_ADDRESS = { 4: '127.0.0.1', 6: '::1' } as const;

/** One TPROXY rule: intercept tcp dport `port` (to `destinations` of one family, or all) for family. */
export interface InterceptRule {
  readonly listener: string;
  readonly family: 4 | 6;
  readonly port: number;
  /** Empty = every destination of this family. */
  readonly destinations: readonly Cidr[];
}

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** The listeners that need the intercept chain. */
export function interceptListeners(config: Config): readonly ListenerConfig[] {
  return config.listeners.filter((l) => l.mode === 'intercept');
}

/** The chains the batch creates for this config, in batch order. */
export function desiredChains(config: Config): readonly ChainSpec[] {
  return interceptListeners(config).length ? [DIVERT_CHAIN, INTERCEPT_CHAIN] : [DIVERT_CHAIN];
}

/**
 * The TPROXY rules for one intercept listener: a v4 rule when it has v4 destinations or none at
 * all, likewise v6. Destinations are validated by the config loader; an unparsable one is skipped
 * here rather than widening the rule.
 */
export function interceptRules(listener: ListenerConfig): readonly InterceptRule[] {
  const cidrs = listener.destinations.map(parseCidr).filter((c): c is Cidr => typeof c !== 'string');
  const all = listener.destinations.length === 0;
  const out: InterceptRule[] = [];
  for (const family of [4, 6] as const) {
    const destinations = cidrs.filter((c) => c.family === family);
    if (all || destinations.length) out.push({ listener: listener.name, family, port: listener.port, destinations });
  }
  return out;
}

/** A CIDR as nft writes it: a host prefix as the bare address, IPv4-mapped IPv6 as IPv4. */
export function cidrText(c: Cidr): string {
  const bits = c.family === 4 ? 32 : 128;
  const addr = formatAddress(c.family, c.network);
  return c.prefix === bits ? addr : `${addr}/${c.prefix}`;
}

function interceptRuleText(r: InterceptRule, nf: Config['netfilter']): string {
  const ipx = r.family === 4 ? 'ip' : 'ip6';
  const match = r.destinations.length ? ` ${ipx} daddr { ${r.destinations.map(cidrText).join(', ')} }` : '';
  const to = hostPort(TPROXY_ADDRESS[r.family], nf.tproxyPort);
  return `tcp dport ${r.port}${match} tproxy ${ipx} to ${to} meta mark set ${hex(nf.mark)} accept`;
}

export interface BatchOptions {
  /**
   * Chains of etd's table to delete inside the same transaction (after the flush, so they are
   * empty): stale chains from an older config or version, or chains whose hook/priority changed
   * (nft cannot change a base chain's priority in place). setup.ts computes them from live state.
   */
  readonly dropChains?: readonly string[];
}

/** The nft batch (one command per line) that installs etd's table for this config. */
export function rulesetBatch(config: Config, opts: BatchOptions = {}): string {
  const nf = config.netfilter;
  const t = `inet ${nf.tableName}`;
  const chain = (c: ChainSpec) => `add chain ${t} ${c.name} { type ${c.type} hook ${c.hook} priority ${c.prioText}; policy accept; }`;
  const lines = [`add table ${t}`, `flush table ${t}`];
  for (const name of opts.dropChains ?? []) lines.push(`delete chain ${t} ${name}`);
  // divert: packets of connections that belong to a transparent socket of etd (the replies to its
  // spoofed upstream connects, and intercepted flows) get the mark that routes them to local delivery.
  lines.push(chain(DIVERT_CHAIN), `add rule ${t} divert meta l4proto tcp socket transparent 1 meta mark set ${hex(nf.mark)} accept`);
  const intercept = interceptListeners(config);
  if (intercept.length) {
    lines.push(chain(INTERCEPT_CHAIN), `add rule ${t} intercept fib daddr type local return`);
    const seen = new Set<string>();
    for (const rule of intercept.flatMap(interceptRules)) {
      const text = `add rule ${t} intercept ${interceptRuleText(rule, nf)}`;
      // Two listeners with the same port and destinations would produce the same rule twice.
      if (!seen.has(text)) lines.push(text);
      seen.add(text);
    }
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The nft batch that removes etd's table. `add` first makes it succeed when the table is absent
 * (the batch is one transaction, so there is no moment where a half-removed table exists).
 */
export function removeBatch(config: Config): string {
  const t = `inet ${config.netfilter.tableName}`;
  return `add table ${t}\ndelete table ${t}\n`;
}
