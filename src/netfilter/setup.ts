// Apply / verify / remove etd's netfilter table and policy routing: idempotent, symmetric, and blind to everything not etd's.
//
// apply: routing first (nothing is marked yet, so a half-done routing setup routes nothing), then
//        the nft batch, which atomically replaces whatever a crashed run left in etd's table.
// remove: the reverse — the nft table (stops marking), then the rules and routes.
// verify: reads the live state back into a list of checks (for `etd rules show` and `etd doctor`).
// Nothing here flushes the ruleset, touches another table, or deletes a rule or route that does
// not match etd's exact (fwmark, table, priority) / (local default dev lo, table).

import { addressToBigInt, type Cidr } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import { isNoSuchObject, run, runJson } from '../native/nftables.js';
import { applyRouting, FAMILIES, type IpRunner, readRouting, removeRouting, runIp } from './routing.js';
import {
  type ChainSpec,
  desiredChains,
  type InterceptRule,
  interceptListeners,
  interceptRules,
  removeBatch,
  rulesetBatch,
  TPROXY_ADDRESS,
} from './ruleset.js';

/** The part of a pino logger this module uses. */
export interface NetfilterLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** True when some listener is transparent (vip or intercept), i.e. etd needs its rules at all. */
export function netfilterRequired(config: Config): boolean {
  return config.listeners.some((l) => l.mode !== 'plain');
}

// ---- nft state as JSON (only the fields we read) ---------------------------------------------

type Json = null | boolean | number | string | readonly Json[] | { readonly [k: string]: Json };
type JsonObject = { readonly [k: string]: Json };

const isObj = (v: Json | undefined): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);
const field = (v: Json | undefined, ...path: string[]): Json | undefined => {
  let cur = v;
  for (const k of path) cur = isObj(cur) ? cur[k] : undefined;
  return cur;
};

interface LiveChain {
  readonly name: string;
  readonly type?: string;
  readonly hook?: string;
  readonly prio?: number;
}

interface LiveRule {
  readonly chain: string;
  readonly expr: readonly Json[];
}

interface LiveTable {
  readonly chains: readonly LiveChain[];
  readonly rules: readonly LiveRule[];
}

/** Reads etd's table; undefined when it does not exist. */
export function readTable(tableName: string): LiveTable | undefined {
  let doc: unknown;
  try {
    doc = runJson(`list table inet ${tableName}`);
  } catch (e) {
    if (isNoSuchObject(e)) return undefined;
    throw e;
  }
  return parseTable(doc as Json);
}

/** Pure: the chains and rules of an `nft -j list table` document. */
export function parseTable(doc: Json): LiveTable {
  const items = field(doc, 'nftables');
  const chains: LiveChain[] = [];
  const rules: LiveRule[] = [];
  for (const item of Array.isArray(items) ? (items as readonly Json[]) : []) {
    const c = field(item, 'chain');
    if (isObj(c) && typeof c.name === 'string') {
      chains.push({
        name: c.name,
        ...(typeof c.type === 'string' ? { type: c.type } : {}),
        ...(typeof c.hook === 'string' ? { hook: c.hook } : {}),
        ...(typeof c.prio === 'number' ? { prio: c.prio } : {}),
      });
    }
    const r = field(item, 'rule');
    if (isObj(r) && typeof r.chain === 'string' && Array.isArray(r.expr)) rules.push({ chain: r.chain, expr: r.expr as readonly Json[] });
  }
  return { chains, rules };
}

const chainMatches = (live: LiveChain, want: ChainSpec) => live.type === want.type && live.hook === want.hook && live.prio === want.prio;

/** Pure: chains of the live table the new batch must delete (not wanted, or wanted with another hook/priority). */
export function staleChains(live: LiveTable | undefined, config: Config): string[] {
  if (!live) return [];
  const want = desiredChains(config);
  return live.chains
    .filter((c) => {
      const w = want.find((x) => x.name === c.name);
      return !w || !chainMatches(c, w);
    })
    .map((c) => c.name);
}

// ---- rule recognisers (pure) -----------------------------------------------------------------

const isMatch = (e: Json, left: (l: Json | undefined) => boolean, right: (r: Json | undefined) => boolean) =>
  field(e, 'match', 'op') === '==' && left(field(e, 'match', 'left')) && right(field(e, 'match', 'right'));
const setsMark = (e: Json, mark: number) => field(e, 'mangle', 'key', 'meta', 'key') === 'mark' && field(e, 'mangle', 'value') === mark;
const isVerdict = (e: Json, v: 'accept' | 'return') => isObj(e) && v in e;

export function isDivertRule(expr: readonly Json[], mark: number): boolean {
  return (
    expr.some((e) =>
      isMatch(
        e,
        (l) => field(l, 'meta', 'key') === 'l4proto',
        (r) => r === 'tcp',
      ),
    ) &&
    expr.some((e) =>
      isMatch(
        e,
        (l) => field(l, 'socket', 'key') === 'transparent',
        (r) => r === 1,
      ),
    ) &&
    expr.some((e) => setsMark(e, mark)) &&
    expr.some((e) => isVerdict(e, 'accept'))
  );
}

export function isLocalReturnRule(expr: readonly Json[]): boolean {
  return (
    expr.some((e) =>
      isMatch(
        e,
        (l) => field(l, 'fib', 'result') === 'type' && JSON.stringify(field(l, 'fib', 'flags')) === '["daddr"]',
        (r) => r === 'local',
      ),
    ) && expr.some((e) => isVerdict(e, 'return'))
  );
}

type Interval = readonly [bigint, bigint];

/** Pure: merged, sorted intervals covering the given ranges. */
function merge(ranges: readonly Interval[]): Interval[] {
  const sorted = [...ranges].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const [s, e] of sorted) {
    const last = out[out.length - 1];
    // biome-ignore lint/complexity/useMathMinMax: bigint (Math.max takes numbers)
    if (last && s <= last[1] + 1n) last[1] = e > last[1] ? e : last[1];
    else out.push([s, e]);
  }
  return out;
}

function cidrInterval(c: Cidr): Interval {
  const bits = BigInt(c.family === 4 ? 32 : 128);
  return [c.network, c.network + (1n << (bits - BigInt(c.prefix))) - 1n];
}

/** Intervals of an nft JSON address expression (address, prefix, range, or a set of those); undefined if unrecognised. */
function addressIntervals(v: Json | undefined, family: 4 | 6): Interval[] | undefined {
  const one = (x: Json | undefined): Interval | undefined => {
    if (typeof x === 'string') {
      const a = addressToBigInt(x);
      return a && a.family === family ? [a.value, a.value] : undefined;
    }
    const p = field(x, 'prefix');
    if (isObj(p) && typeof p.addr === 'string' && typeof p.len === 'number') {
      const a = addressToBigInt(p.addr);
      if (!a || a.family !== family) return undefined;
      return cidrInterval({ family, network: a.value, prefix: p.len, text: '' });
    }
    const r = field(x, 'range');
    if (Array.isArray(r) && r.length === 2 && typeof r[0] === 'string' && typeof r[1] === 'string') {
      const a = addressToBigInt(r[0]);
      const b = addressToBigInt(r[1]);
      return a && b && a.family === family && b.family === family ? [a.value, b.value] : undefined;
    }
    return undefined;
  };
  const set = field(v, 'set');
  const elems: readonly (Json | undefined)[] = Array.isArray(set) ? (set as readonly Json[]) : [v];
  const out: Interval[] = [];
  for (const e of elems) {
    const i = one(e);
    if (!i) return undefined;
    out.push(i);
  }
  return merge(out);
}

/**
 * Whether a live rule is this TPROXY rule. Destinations are compared as address ranges, because
 * nft merges an anonymous set's overlapping or adjacent prefixes (10.0.0.0/8 + 11.0.0.0/8 reads
 * back as 10.0.0.0/7).
 */
export function isInterceptRule(expr: readonly Json[], want: InterceptRule, nf: Config['netfilter']): boolean {
  const ipx = want.family === 4 ? 'ip' : 'ip6';
  const dport = expr.some((e) =>
    isMatch(
      e,
      (l) => field(l, 'payload', 'protocol') === 'tcp' && field(l, 'payload', 'field') === 'dport',
      (r) => r === want.port,
    ),
  );
  const tproxy = expr.some(
    (e) =>
      field(e, 'tproxy', 'family') === ipx &&
      field(e, 'tproxy', 'addr') === TPROXY_ADDRESS[want.family] &&
      field(e, 'tproxy', 'port') === nf.tproxyPort,
  );
  if (!dport || !tproxy || !expr.some((e) => setsMark(e, nf.mark)) || !expr.some((e) => isVerdict(e, 'accept'))) return false;
  const daddr = expr.find((e) =>
    isMatch(
      e,
      (l) => field(l, 'payload', 'protocol') === ipx && field(l, 'payload', 'field') === 'daddr',
      () => true,
    ),
  );
  if (want.destinations.length === 0) return daddr === undefined;
  if (daddr === undefined) return false;
  const live = addressIntervals(field(daddr, 'match', 'right'), want.family);
  return live !== undefined && JSON.stringify(live.map(String)) === JSON.stringify(merge(want.destinations.map(cidrInterval)).map(String));
}

// ---- verify ----------------------------------------------------------------------------------

export type CheckStatus = 'ok' | 'missing' | 'duplicate' | 'mismatch' | 'unexpected' | 'unsupported';

/** One thing etd installs, and whether it is there. `id` is stable (for doctor and tests). */
export interface CheckItem {
  readonly id: string;
  readonly what: string;
  readonly status: CheckStatus;
  /** Something of this is installed (ok, duplicate, mismatch or unexpected). */
  readonly present: boolean;
  readonly detail?: string;
}

export interface NetfilterState {
  /** Every expected item is there exactly once, with nothing stale (an unsupported family is not a failure). */
  readonly ok: boolean;
  /** Nothing etd installs is present (what remove must achieve). */
  readonly clean: boolean;
  readonly items: readonly CheckItem[];
}

function item(id: string, what: string, status: CheckStatus, detail?: string): CheckItem {
  const present = status === 'ok' || status === 'duplicate' || status === 'mismatch' || status === 'unexpected';
  return detail === undefined ? { id, what, status, present } : { id, what, status, present, detail };
}

const countStatus = (n: number): CheckStatus => (n === 0 ? 'missing' : n === 1 ? 'ok' : 'duplicate');
const copies = (n: number) => (n > 1 ? `${n} copies (expected 1)` : undefined);

/** Pure: the nft checks for a live table (undefined = table absent). */
export function checkTable(live: LiveTable | undefined, config: Config): CheckItem[] {
  const nf = config.netfilter;
  const t = `inet ${nf.tableName}`;
  const out: CheckItem[] = [item('nft.table', `nft table ${t}`, live ? 'ok' : 'missing')];
  const rulesIn = (chain: string) => (live?.rules ?? []).filter((r) => r.chain === chain);
  for (const want of desiredChains(config)) {
    const c = live?.chains.find((x) => x.name === want.name);
    const what = `chain ${want.name} (${want.type} hook ${want.hook} priority ${want.prioText})`;
    out.push(
      !c
        ? item(`nft.chain.${want.name}`, what, 'missing')
        : chainMatches(c, want)
          ? item(`nft.chain.${want.name}`, what, 'ok')
          : item(`nft.chain.${want.name}`, what, 'mismatch', `live: type ${c.type} hook ${c.hook} priority ${c.prio}`),
    );
  }
  const divert = rulesIn('divert').filter((r) => isDivertRule(r.expr, nf.mark)).length;
  out.push(
    item(
      'nft.rule.divert',
      `divert rule: meta l4proto tcp socket transparent 1 meta mark set 0x${nf.mark.toString(16)} accept`,
      countStatus(divert),
      copies(divert),
    ),
  );
  const intercept = interceptListeners(config);
  if (intercept.length) {
    const ret = rulesIn('intercept').filter((r) => isLocalReturnRule(r.expr)).length;
    out.push(item('nft.rule.intercept.local', 'intercept rule: fib daddr type local return', countStatus(ret), copies(ret)));
    const seen = new Set<string>();
    for (const want of intercept.flatMap(interceptRules)) {
      const id = `nft.rule.intercept.${want.listener}.v${want.family}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const n = rulesIn('intercept').filter((r) => isInterceptRule(r.expr, want, nf)).length;
      const dest = want.destinations.length ? ` to ${want.destinations.map((d) => d.text).join(', ')}` : '';
      out.push(
        item(
          id,
          `intercept rule (listener ${want.listener}): tcp dport ${want.port}${dest} → tproxy ip${want.family === 4 ? '' : '6'} port ${nf.tproxyPort}`,
          countStatus(n),
          copies(n),
        ),
      );
    }
  }
  for (const name of staleChains(live, config)) {
    if (desiredChains(config).some((w) => w.name === name)) continue; // reported above as mismatch
    out.push(item(`nft.chain.${name}`, `chain ${name} (not part of this config)`, 'unexpected', 'the next apply deletes it'));
  }
  return out;
}

/** Reads the live nft table and routing state and reports each expected item. */
export async function verifyNetfilter(config: Config, ip: IpRunner = runIp): Promise<NetfilterState> {
  const nf = config.netfilter;
  const items = checkTable(readTable(nf.tableName), config);
  for (const family of FAMILIES) {
    const s = await readRouting(nf, family, ip);
    const ruleWhat = `ip -${family} rule: fwmark 0x${nf.mark.toString(16)} lookup ${nf.table} priority ${nf.rulePriority}`;
    const routeWhat = `ip -${family} route: local ${family === 4 ? '0.0.0.0/0' : '::/0'} dev lo table ${nf.table}`;
    if (s.unsupported !== undefined) {
      items.push(
        item(`ip.rule.v${family}`, ruleWhat, 'unsupported', s.unsupported),
        item(`ip.route.v${family}`, routeWhat, 'unsupported', s.unsupported),
      );
      continue;
    }
    items.push(item(`ip.rule.v${family}`, ruleWhat, countStatus(s.rules), copies(s.rules)));
    items.push(item(`ip.route.v${family}`, routeWhat, s.route ? 'ok' : 'missing'));
  }
  return {
    ok: items.every((i) => i.status === 'ok' || i.status === 'unsupported'),
    clean: items.every((i) => !i.present),
    items,
  };
}

// ---- apply / remove --------------------------------------------------------------------------

export interface ApplyResult {
  /** The batch that was applied. */
  readonly batch: string;
  /** Chains of a previous run that the batch deleted. */
  readonly droppedChains: readonly string[];
}

/**
 * Installs etd's routing and nft table for this config, replacing any stale state of a previous
 * (possibly crashed) run. Idempotent: applying twice leaves exactly one copy of everything.
 * Callers decide whether to call it (netfilter.manage, netfilterRequired()).
 */
export async function applyNetfilter(config: Config, log: NetfilterLog, ip: IpRunner = runIp): Promise<ApplyResult> {
  const nf = config.netfilter;
  const { skipped } = await applyRouting(nf, ip);
  for (const s of skipped)
    log.warn({ family: s.family, reason: s.reason }, `IPv${s.family} policy routing skipped: the kernel does not support the family`);
  log.info({ fwmark: nf.mark, table: nf.table, priority: nf.rulePriority }, 'policy routing for marked packets installed');
  const droppedChains = staleChains(readTable(nf.tableName), config);
  if (droppedChains.length) log.warn({ table: nf.tableName, chains: droppedChains }, 'deleting stale chains left by a previous run');
  const batch = rulesetBatch(config, { dropChains: droppedChains });
  run(batch);
  log.info({ table: `inet ${nf.tableName}`, chains: desiredChains(config).map((c) => c.name) }, 'nftables rules installed');
  return { batch, droppedChains };
}

/** Removes etd's nft table, then its rules and routes. Idempotent: absent state is not an error. */
export async function removeNetfilter(config: Config, log: NetfilterLog, ip: IpRunner = runIp): Promise<void> {
  const nf = config.netfilter;
  run(removeBatch(config));
  log.info({ table: `inet ${nf.tableName}` }, 'nftables table removed');
  const removed = await removeRouting(nf, ip);
  log.info({ fwmark: nf.mark, table: nf.table, priority: nf.rulePriority, removed }, 'policy routing removed');
}
