// Pure: the facts `etd doctor` and the start preflight gathered about this host → findings (OK/WARN/FAIL, each with its fix).
//
// Nothing here does I/O: src/doctor/gather.ts collects the facts, this file decides. The facts
// carry "could not be gathered" as { error } instead of throwing, so one unreadable value never
// hides the other findings.
//
// `critical` marks the checks `etd run` enforces at start (commands/doctor.ts preflight()): a
// critical FAIL means etd refuses to start. They are the ones whose failure makes transparency
// silently impossible: capabilities, the native addon, kernel support, src_valid_mark. Strict
// rp_filter is a doctor FAIL but only a warning at start: on a symmetric path it works (measured),
// and refusing to start a working gateway would be worse. Rules, forwarding and the return-path test are never critical: at start the rules
// were just applied (or, with netfilter.manage false, may be installed by the operator after
// start), and backends may be down.
//
// Kernel facts these checks rely on (measured on Linux 6.x in the netns lab):
// - src_valid_mark=1 makes the kernel's source validation of a marked packet look up the source
//   in etd's table, which holds only `local default dev lo`: the packet counts as a martian and is
//   dropped silently. Because etd's fwmark rule and local route are "custom" FIB entries, that full
//   validation runs even with rp_filter=0. Effective value: conf/all OR conf/<iface>.
// - rp_filter=1 (strict) drops a diverted packet when it arrives on another interface than the
//   route back to its source uses (asymmetric paths: multi-homed gateways, PBR routers). On a
//   symmetric path it passes, so it is not critical at start; the doctor still FAILs it because the
//   drop is silent and intermittent, and loose mode (2) keeps the anti-spoofing check. Effective value: max(all, iface).

import type { Config } from '../config/schema.js';
import { addressToBigInt, cidrContains } from '../config/cidr.js';
import { cidrsOverlap, networkOf, spareHost } from '../config/cidrMath.js';
import type { CheckItem, NetfilterState } from '../netfilter/setup.js';
import { interceptListeners, interceptRules } from '../netfilter/ruleset.js';
import { formatStep, routeArgs, ruleArgs, type Family } from '../netfilter/routing.js';
import { bindAddresses } from '../proxy/listener.js';
import type { RedisProbe } from '../cluster/probe.js';
import { interceptForwardsOriginal, returnPathServers, returnTargets, type ReturnTarget } from './targets.js';

import { dnsblFindings, type ZoneProbe } from '../reputation/doctorFindings.js';
export { returnPathServers } from './targets.js';

// ---- findings --------------------------------------------------------------------------------

export type Status = 'OK' | 'WARN' | 'FAIL';

export interface Finding {
  /** Stable identifier (for tests, scripts and the JSON output), e.g. `sysctl.rp_filter`, `ip.rule.v4`, `return.b1`. */
  readonly id: string;
  readonly status: Status;
  /** What was checked, in a few words. */
  readonly what: string;
  /** What was found, and why it matters. */
  readonly detail: string;
  /** The exact command that fixes it (FAIL and WARN only, when there is one). */
  readonly fix?: string;
  /** `etd run` refuses to start when a critical check FAILs. */
  readonly critical: boolean;
}

// ---- facts -----------------------------------------------------------------------------------

/** A fact that could not be gathered, and why. */
export interface Problem {
  readonly error: string;
}

export const CAP_NET_BIND_SERVICE = 10;
export const CAP_NET_ADMIN = 12;
export const CAP_NET_RAW = 13;

/** The effective capability set of the process (CapEff of /proc/self/status). */
export type Capabilities = { readonly effective: bigint } | Problem;

export type KernelFeature = 'socket' | 'tproxy4' | 'tproxy6' | 'fib';

/** One nft rule using a feature, added to and deleted from a scratch table in one transaction. */
export interface FeatureProbe {
  readonly feature: KernelFeature;
  readonly ok: boolean;
  /** libnftables' error text when !ok. */
  readonly error?: string;
}

export type KernelFacts =
  | { readonly probes: readonly FeatureProbe[] }
  /** No probe could run: libnftables cannot be loaded, or no privilege to talk to nf_tables. */
  | (Problem & { readonly cause: 'nft_load' | 'privilege' | 'other' });

export type AddonFacts = { readonly path: string } | Problem;

/** Global sysctls (undefined: the file does not exist or could not be read). */
export interface Sysctls {
  readonly ipForward?: number;
  readonly ipv6Forwarding?: number;
  readonly unprivilegedPortStart?: number;
  readonly rpFilter: { readonly all?: number; readonly default?: number };
  readonly srcValidMark: { readonly all?: number; readonly default?: number };
}

/** An interface that carries etd's traffic, why we think so, and its own (not effective) sysctl values. */
export interface PathInterface {
  readonly name: string;
  readonly why: readonly string[];
  readonly rpFilter?: number;
  readonly srcValidMark?: number;
}

/** `ip route get <server>` as seen by etd. */
export interface ServerRoute {
  readonly server: string;
  readonly address: string;
  readonly port: number;
  readonly family: Family;
  readonly dev?: string;
  /** etd's source address toward the server: the next hop the backends (or their router) must use for client-bound traffic. */
  readonly prefsrc?: string;
  readonly gateway?: string;
  /** `ip route get` failed (e.g. "Network is unreachable"). */
  readonly error?: string;
}

/** An address of etd's (`ip -j addr`). */
export interface IfAddr {
  readonly ifname: string;
  readonly family: Family;
  readonly local: string;
  readonly prefixlen: number;
  readonly scope: string;
}

/** The default route of a family (first one), if any. */
export interface DefaultRoute {
  readonly family: Family;
  readonly dev?: string;
  readonly gateway?: string;
}

/** The address the return-path test spoofs for one family, or why there is none. */
export type TestClient =
  | { readonly family: Family; readonly address: string; readonly how: string; readonly explicit: boolean }
  | { readonly family: Family; readonly address?: undefined; readonly reason: string; readonly invalid?: boolean };

export type ProbeOutcome = 'connected' | 'refused' | 'timeout' | 'unreachable' | 'error';

/** One spoofed test connect (or why it was not made). */
export type ReturnProbe =
  | {
      readonly server: string;
      readonly address: string;
      readonly port: number;
      readonly family: Family;
      readonly source: string;
      readonly outcome: ProbeOutcome;
      readonly ms: number;
      /** errno name or message for 'unreachable' and 'error'. */
      readonly error?: string;
      /** The server's first line, when it sent one within a second of the connect. */
      readonly greeting?: string;
      /** Named with --probe. */
      readonly probe?: boolean;
    }
  | { readonly server: string; readonly address: string; readonly port: number; readonly family: Family; readonly skipped: string; readonly probe?: boolean };

export interface DoctorFacts {
  readonly config: Config;
  /** For the fix commands (`etd rules apply -c FILE`). */
  readonly configFile: string;
  readonly capabilities: Capabilities;
  /** undefined: not checked. */
  readonly addon?: AddonFacts;
  readonly kernel?: KernelFacts;
  /** undefined: not checked (the preflight right after etd applied its own rules). */
  readonly netfilter?: NetfilterState | Problem;
  readonly sysctls: Sysctls;
  readonly interfaces: readonly PathInterface[];
  readonly routes: readonly ServerRoute[];
  readonly testClients: readonly TestClient[];
  /** undefined: not run (the preflight). */
  readonly returnPath?: readonly ReturnProbe[];
  /** Mail servers named with `etd doctor --probe`, tested like configured servers. */
  readonly probes?: readonly ReturnTarget[];
  /** Each DNSBL zone's answer for the test entry 127.0.0.2; undefined: not checked (the preflight). */
  readonly dnsbl?: readonly ZoneProbe[];
  /** cluster.redis reachable and its key prefix writable; undefined: not checked (no cluster, or the preflight). */
  readonly redis?: RedisProbe;
}

// ---- helpers ---------------------------------------------------------------------------------

const isProblem = (x: object): x is Problem => 'error' in x && typeof (x as Problem).error === 'string';

export function familyOf(address: string): Family | undefined {
  return addressToBigInt(address)?.family;
}

const hasCap = (caps: Capabilities, bit: number): boolean | undefined =>
  isProblem(caps) ? undefined : ((caps.effective >> BigInt(bit)) & 1n) === 1n;

/** Parses the hex CapEff value of /proc/PID/status. */
export function parseCapEff(status: string): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  return m && m[1] !== undefined ? BigInt(`0x${m[1]}`) : undefined;
}

/** A sysctl key as `sysctl -w` takes it: slash-separated when the interface name has a dot (VLANs: eth0.100). */
export function sysctlKey(family: 'ipv4' | 'ipv6', iface: string, key: string): string {
  return iface.includes('.') ? `net/${family}/conf/${iface}/${key}` : `net.${family}.conf.${iface}.${key}`;
}

export const transparentListeners = (config: Config) => config.listeners.filter((l) => l.mode !== 'plain');

/** Address families etd's transparent traffic uses: servers, specific listener addresses, intercept rules. */
export function familiesInUse(config: Config): Family[] {
  const out = new Set<Family>();
  for (const s of config.upstream.servers) {
    const f = familyOf(s.address);
    if (f) out.add(f);
  }
  for (const l of transparentListeners(config)) {
    if (l.mode === 'intercept') for (const r of interceptRules(l)) out.add(r.family);
    else {
      const f = familyOf(l.address);
      if (f) out.add(f);
    }
  }
  return [...out].sort();
}


// ---- test client choice (pure, used by gather before the probes) ----------------------------

/**
 * An unused address of the prefix that `addr` sits in, counting down from the last-but-one
 * host (the top of a subnet is rarely a real host); undefined when the prefix is too small or
 * every candidate is taken. `taken`: etd's own addresses, gateways, servers.
 */
export function spareAddress(addr: IfAddr, taken: ReadonlySet<string>): string | undefined {
  const net = networkOf(addr.local, addr.prefixlen);
  return net && spareHost(net, taken);
}

const prefixText = (a: IfAddr) => networkOf(a.local, a.prefixlen)?.text ?? `${a.local}/${a.prefixlen}`;

/**
 * Chooses the source address the return-path test spoofs for one family. It must stand in for a
 * real client: an address the backends answer through their default route (picture 1) or their
 * router's PBR (picture 2), never one of etd's own, and not on a backend's own network (replies
 * would go straight to it). A documentation address (192.0.2.0/24…) is not used: routers and
 * backends commonly filter such bogons, so the test would fail where real clients work.
 *
 * Order: `--client` when it is of this family; else an unused address of a transparent
 * listener's network; else an unused address of the network behind etd's default route; else,
 * in intercept mode, an unused address of a connected network outside the intercepted
 * destinations (an intercepting gateway without a default route sits between client networks and
 * mail networks: the connected networks that are not intercepted are the client side).
 * `mailServers`: the --probe addresses, servers too (their networks are not the client side).
 */
export function chooseTestClient(
  family: Family,
  config: Config,
  addrs: readonly IfAddr[],
  defaults: readonly DefaultRoute[],
  explicit?: string,
  mailServers: readonly string[] = [],
): TestClient {
  const local = new Set(addrs.map((a) => a.local));
  if (explicit !== undefined && familyOf(explicit) === undefined) {
    return { family, reason: `--client ${explicit} is not an IPv4 or IPv6 address`, invalid: true };
  }
  if (explicit !== undefined && familyOf(explicit) === family) {
    if (local.has(explicit)) {
      return { family, reason: `--client ${explicit} is one of etd's own addresses; it must be an address of a client network (not configured on this host)`, invalid: true };
    }
    return { family, address: explicit, how: `${explicit} (given with --client)`, explicit: true };
  }
  const servers = [...config.upstream.servers.map((s) => s.address), ...mailServers].filter((a) => familyOf(a) === family);
  const taken = new Set<string>([...local, ...servers, ...defaults.map((d) => d.gateway ?? '').filter(Boolean)]);
  const usable = (a: IfAddr | undefined): a is IfAddr => {
    if (!a || a.family !== family || a.scope !== 'global') return false;
    const net = networkOf(a.local, a.prefixlen);
    return net !== undefined && !servers.some((s) => cidrContains(net, s));
  };
  const notes: string[] = [];
  for (const l of transparentListeners(config)) {
    if (familyOf(l.address) !== family) continue;
    const a = addrs.find((x) => x.local === l.address);
    if (!a) continue;
    if (!usable(a)) {
      notes.push(`listener ${l.name}'s network ${prefixText(a)} also holds a backend (its replies would not pass etd)`);
      continue;
    }
    const spare = spareAddress(a, taken);
    if (spare) {
      return {
        family,
        address: spare,
        how: `${spare}, an unused address of listener ${l.name}'s network ${prefixText(a)} (${a.ifname}), standing in for a client`,
        explicit: false,
      };
    }
  }
  const def = defaults.find((d) => d.family === family && d.dev !== undefined);
  if (def) {
    const a = addrs.find((x) => x.ifname === def.dev && x.family === family && x.scope === 'global');
    if (a && usable(a)) {
      const spare = spareAddress(a, taken);
      if (spare) {
        return {
          family,
          address: spare,
          how: `${spare}, an unused address of ${prefixText(a)} on ${a.ifname}, the interface of etd's default route, standing in for a client`,
          explicit: false,
        };
      }
    } else if (a) notes.push(`the default route's network ${prefixText(a)} also holds a backend`);
  }
  const intercepted = interceptListeners(config)
    .flatMap(interceptRules)
    .filter((r) => r.family === family);
  if (intercepted.length) {
    // A rule without destinations intercepts every destination, yet its clients still sit on some
    // connected network: only the networks holding a server are ruled out then.
    const destinations = intercepted.every((r) => r.destinations.length) ? intercepted.flatMap((r) => r.destinations) : [];
    for (const a of addrs) {
      if (a.family !== family || a.scope !== 'global') continue;
      if (!usable(a)) continue;
      const net = networkOf(a.local, a.prefixlen);
      if (net && destinations.some((d) => cidrsOverlap(d, net))) {
        notes.push(`the connected network ${prefixText(a)} is inside the intercepted destinations`);
        continue;
      }
      const spare = spareAddress(a, taken);
      if (spare) {
        return {
          family,
          address: spare,
          how: `${spare}, an unused address of ${prefixText(a)} (${a.ifname}), a connected network outside the intercepted destinations, standing in for a client`,
          explicit: false,
        };
      }
    }
  }
  const why = notes.length ? ` (${notes.join('; ')})` : '';
  return {
    family,
    reason: `no IPv${family} client-side network found: no transparent listener address, default route${intercepted.length ? ' or connected network outside the intercepted destinations' : ''} of this family gives one${why}`,
  };
}

// ---- return-path plan (pure, used by gather) --------------------------------------------------

/** Per server: the source to spoof, or why the test is skipped. */
export function planReturnPath(
  facts: Pick<DoctorFacts, 'config' | 'capabilities' | 'addon' | 'netfilter' | 'testClients' | 'routes' | 'probes'>,
): Array<ReturnTarget & { source?: string; skipped?: string }> {
  const out: Array<ReturnTarget & { source?: string; skipped?: string }> = [];
  const capOk = hasCap(facts.capabilities, CAP_NET_ADMIN) !== false || hasCap(facts.capabilities, CAP_NET_RAW) === true;
  for (const base of returnTargets(facts.config, facts.probes)) {
    const { family } = base;
    const client = facts.testClients.find((c) => c.family === family);
    const route = facts.routes.find((r) => r.server === base.server);
    let skipped: string | undefined;
    if (!capOk) skipped = 'this process lacks CAP_NET_ADMIN and CAP_NET_RAW, needed for the spoofed socket';
    else if (facts.addon && isProblem(facts.addon)) skipped = 'the native addon is not loaded';
    else if (!client || client.address === undefined) skipped = `no IPv${family} test client address (${client && client.address === undefined ? client.reason : 'none'})`;
    else if (route?.error !== undefined) skipped = `etd has no route to ${base.address}`;
    else if (facts.netfilter && !isProblem(facts.netfilter) && facts.netfilter.clean) skipped = "etd's divert rule and policy routing are not installed";
    out.push(skipped !== undefined || !client || client.address === undefined ? { ...base, skipped: skipped ?? 'no test client' } : { ...base, source: client.address });
  }
  return out;
}

// ---- evaluation ------------------------------------------------------------------------------

function ok(id: string, what: string, detail: string, critical: boolean): Finding {
  return { id, status: 'OK', what, detail, critical };
}
function warn(id: string, what: string, detail: string, critical: boolean, fix?: string): Finding {
  return fix === undefined ? { id, status: 'WARN', what, detail, critical } : { id, status: 'WARN', what, detail, fix, critical };
}
function fail(id: string, what: string, detail: string, critical: boolean, fix?: string): Finding {
  return fix === undefined ? { id, status: 'FAIL', what, detail, critical } : { id, status: 'FAIL', what, detail, fix, critical };
}

const CAP_FIX =
  'run etd as root, or grant the capabilities in its unit: systemctl edit etd → [Service] AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE';

function capabilityFindings(f: DoctorFacts): Finding[] {
  const cfg = f.config;
  const transparent = transparentListeners(cfg).length > 0;
  const out: Finding[] = [];
  const admin = hasCap(f.capabilities, CAP_NET_ADMIN);
  const raw = hasCap(f.capabilities, CAP_NET_RAW);
  const bind = hasCap(f.capabilities, CAP_NET_BIND_SERVICE);
  const unknown = isProblem(f.capabilities) ? f.capabilities.error : undefined;
  if (transparent) {
    const what = 'CAP_NET_ADMIN (nftables, policy routing, IP_TRANSPARENT)';
    const needAdmin = cfg.netfilter.manage;
    if (unknown !== undefined) out.push(warn('cap.net_admin', what, `cannot read this process's capabilities: ${unknown}`, true));
    else if (admin) out.push(ok('cap.net_admin', what, 'present in this process\'s effective set (run the doctor with the same privileges as the service)', true));
    else if (!needAdmin && raw) {
      out.push(ok('cap.net_admin', what, 'absent, but not needed: netfilter.manage is false (you install the rules) and CAP_NET_RAW allows IP_TRANSPARENT', true));
    } else {
      const why = needAdmin
        ? 'etd installs its nftables table and policy routing (netfilter.manage: true), which needs CAP_NET_ADMIN'
        : 'the spoofed upstream sockets need IP_TRANSPARENT, which needs CAP_NET_ADMIN or CAP_NET_RAW';
      out.push(fail('cap.net_admin', what, `missing from this process's effective set: ${why}`, true, CAP_FIX));
    }
  }
  // Ports below net.ipv4.ip_unprivileged_port_start (1024 unless lowered) need CAP_NET_BIND_SERVICE.
  const start = f.sysctls.unprivilegedPortStart ?? 1024;
  const low = cfg.listeners.flatMap((l) => bindAddresses(l, cfg.netfilter.tproxyPort).map((b) => ({ l: l.name, port: b.port }))).filter((b) => b.port > 0 && b.port < start);
  if (low.length) {
    const ports = [...new Set(low.map((b) => b.port))].join(', ');
    const what = 'CAP_NET_BIND_SERVICE (listening on ports below 1024)';
    if (unknown !== undefined) out.push(warn('cap.net_bind_service', what, `cannot read this process's capabilities: ${unknown}`, true));
    else if (bind) out.push(ok('cap.net_bind_service', what, `present; listeners use port ${ports}`, true));
    else {
      out.push(
        fail('cap.net_bind_service', what, `missing: listeners use port ${ports}, below net.ipv4.ip_unprivileged_port_start=${start}`, true, CAP_FIX),
      );
    }
  }
  return out;
}

function addonFindings(f: DoctorFacts): Finding[] {
  if (!f.addon) return [];
  const what = 'native addon etd_transparent.node (transparent sockets)';
  return isProblem(f.addon)
    ? [fail('native.addon', what, `cannot be loaded: ${f.addon.error}`, true, 'npm run install   (in etd\'s install directory; needs g++, make, python3)')]
    : [ok('native.addon', what, `loaded from ${f.addon.path}`, true)];
}

const FEATURE: Record<KernelFeature, { id: string; what: string; module: string; why: string }> = {
  socket: { id: 'kernel.nft_socket', what: 'nftables socket expression (divert rule)', module: 'nft_socket', why: 'the divert rule (socket transparent 1) marks replies to etd\'s spoofed connects' },
  tproxy4: { id: 'kernel.nft_tproxy.v4', what: 'nftables tproxy expression, IPv4 (intercept)', module: 'nft_tproxy', why: 'intercept mode hands port-25 flows to etd with tproxy' },
  tproxy6: { id: 'kernel.nft_tproxy.v6', what: 'nftables tproxy expression, IPv6 (intercept)', module: 'nft_tproxy', why: 'intercept mode hands port-25 flows to etd with tproxy' },
  fib: { id: 'kernel.nft_fib', what: 'nftables fib expression (intercept)', module: 'nft_fib_inet', why: 'intercept mode leaves traffic to etd\'s own addresses alone with fib daddr type local' },
};

/** The kernel features this config needs, in check order. */
export function neededFeatures(config: Config): KernelFeature[] {
  if (transparentListeners(config).length === 0) return [];
  const out: KernelFeature[] = ['socket'];
  const rules = interceptListeners(config).flatMap(interceptRules);
  if (rules.some((r) => r.family === 4)) out.push('tproxy4');
  if (rules.some((r) => r.family === 6)) out.push('tproxy6');
  if (rules.length) out.push('fib');
  return out;
}

function kernelFindings(f: DoctorFacts): Finding[] {
  if (!f.kernel) return [];
  const k = f.kernel;
  if (isProblem(k)) {
    if (k.cause === 'nft_load') {
      const critical = f.config.netfilter.manage;
      const detail = `libnftables cannot be loaded: ${k.error}${critical ? '' : ' (netfilter.manage is false, so etd itself does not need it; kernel support was not checked)'}`;
      return [critical ? fail('kernel.nftables', 'libnftables', detail, true, 'apt-get install libnftables1') : warn('kernel.nftables', 'libnftables', detail, false, 'apt-get install libnftables1')];
    }
    return [warn('kernel.nftables', 'kernel support for nftables tproxy/socket', `not checked: ${k.error}`, true)];
  }
  const out: Finding[] = [];
  for (const feature of neededFeatures(f.config)) {
    const spec = FEATURE[feature];
    const p = k.probes.find((x) => x.feature === feature);
    if (!p) continue;
    if (p.ok) out.push(ok(spec.id, spec.what, `supported: a rule using it was accepted by the kernel (in a scratch table, removed in the same transaction)`, true));
    else {
      out.push(
        fail(spec.id, spec.what, `the kernel rejected a rule using it: ${p.error ?? 'unknown error'} — ${spec.why}; the module may be missing or the kernel built without it`, true, `modprobe ${spec.module}`),
      );
    }
  }
  return out;
}

/** The exact iproute2 command that installs one routing item (ip.rule.vN / ip.route.vN), or undefined. */
function routingFix(id: string, nf: Config['netfilter']): string | undefined {
  const m = /^ip\.(rule|route)\.v([46])$/.exec(id);
  if (!m) return undefined;
  const family: Family = m[2] === '4' ? 4 : 6;
  return m[1] === 'rule'
    ? formatStep({ argv: ruleArgs(family, nf, 'add'), mode: 'once' })
    : formatStep({ argv: routeArgs(family, nf, 'replace'), mode: 'once' });
}

function rulesFindings(f: DoctorFacts): Finding[] {
  if (!f.netfilter || transparentListeners(f.config).length === 0) return [];
  const apply = `etd rules apply -c ${f.configFile}`;
  const nf = f.netfilter;
  if (isProblem(nf)) return [warn('rules', "etd's nftables table and policy routing", `cannot be read: ${nf.error}`, false)];
  const manage = f.config.netfilter.manage;
  if (nf.clean && manage) {
    return [
      warn(
        'rules',
        "etd's nftables table and policy routing",
        "nothing of it is installed: etd is probably not running (it installs them at start, netfilter.manage: true). The return-path test needs them: apply them, re-run the doctor, then remove them with `etd rules remove -c FILE` (or start etd)",
        false,
        apply,
      ),
    ];
  }
  const families = familiesInUse(f.config);
  const out: Finding[] = [];
  for (const item of nf.items) out.push(ruleItemFinding(item, f, families, apply));
  return out;
}

function ruleItemFinding(item: CheckItem, f: DoctorFacts, families: readonly Family[], apply: string): Finding {
  const detail = item.detail ? ` (${item.detail})` : '';
  const who = f.config.netfilter.manage ? 'etd installs it at start; it was removed since' : 'netfilter.manage is false: you install it';
  switch (item.status) {
    case 'ok':
      return ok(item.id, item.what, 'present', false);
    case 'missing': {
      const why = item.id.startsWith('ip.')
        ? 'without it, packets etd marked are not delivered locally: replies to its spoofed connects are routed on towards the client instead'
        : item.id.startsWith('nft.rule.divert') || item.id === 'nft.table' || item.id === 'nft.chain.divert'
          ? 'without it, replies to etd\'s spoofed connects are not marked and never reach etd: upstream connects time out'
          : 'without it, port-25 traffic is not intercepted';
      return fail(item.id, item.what, `missing — ${why} (${who})${detail}`, false, routingFix(item.id, f.config.netfilter) ?? apply);
    }
    case 'mismatch':
      return fail(item.id, item.what, `present but different from this config${detail}`, false, apply);
    case 'duplicate':
      return warn(item.id, item.what, `installed more than once${detail}; harmless, but a removal leaves copies behind`, false, apply);
    case 'unexpected':
      return warn(item.id, item.what, `left over from another config${detail}`, false, apply);
    case 'unsupported': {
      const v6 = /\.v6$/.test(item.id);
      const needed = v6 && families.includes(6);
      return needed
        ? warn(item.id, item.what, `IPv6 is unavailable in this kernel but the config uses IPv6${detail}`, false)
        : ok(item.id, item.what, `not applicable: the address family is unavailable and unused${detail}`, false);
    }
  }
}

function forwardingFindings(f: DoctorFacts): Finding[] {
  const out: Finding[] = [];
  const families = familiesInUse(f.config);
  const intercept = interceptListeners(f.config).length > 0;
  const why = intercept
    ? 'intercept mode puts etd on the path: everything but the intercepted port-25 flows must be forwarded'
    : "etd's own sessions do not need it, but as the backends' default gateway (or PBR next hop) etd must forward their other traffic (DNS, outbound mail) and replies to clients that reach a backend directly";
  const one = (family: Family, id: string, key: string, value: number | undefined) => {
    if (!families.includes(family)) return;
    const what = `${key} (forwarding)`;
    if (value === undefined) out.push(warn(id, what, 'cannot be read', false));
    else if (value === 1) out.push(ok(id, what, '1', false));
    else {
      const fix = `sysctl -w ${key}=1`;
      const detail = `${value}: ${why}. To persist: ${key} = 1 in /etc/sysctl.d/90-etd.conf`;
      out.push(intercept ? fail(id, what, detail, false, fix) : warn(id, what, detail, false, fix));
    }
  };
  one(4, 'sysctl.ip_forward', 'net.ipv4.ip_forward', f.sysctls.ipForward);
  one(6, 'sysctl.ipv6_forwarding', 'net.ipv6.conf.all.forwarding', f.sysctls.ipv6Forwarding);
  return out;
}

const ifaceList = (ifs: readonly PathInterface[]) => ifs.map((i) => `${i.name} (${i.why.join('; ')})`).join(', ');

/** Effective rp_filter of an interface: the kernel uses max(conf/all, conf/<iface>). */
export const effectiveRpFilter = (all: number | undefined, iface: number | undefined) => Math.max(all ?? 0, iface ?? 0);
/** Effective src_valid_mark: conf/all OR conf/<iface>. */
export const effectiveSrcValidMark = (all: number | undefined, iface: number | undefined) => ((all ?? 0) !== 0 || (iface ?? 0) !== 0 ? 1 : 0);

function rpFilterFindings(f: DoctorFacts): Finding[] {
  if (!familiesInUse(f.config).includes(4)) return [];
  const { all, default: def } = f.sysctls.rpFilter;
  const what = 'net.ipv4.conf.*.rp_filter not strict on the interfaces etd\'s traffic uses';
  const out: Finding[] = [];
  const strict = f.interfaces.filter((i) => effectiveRpFilter(all, i.rpFilter) === 1);
  const unknownAll = all === undefined;
  if (strict.length || (f.interfaces.length === 0 && all === 1)) {
    const keys = [...(all === 1 ? ['net.ipv4.conf.all.rp_filter=2'] : []), ...strict.filter((i) => i.rpFilter === 1).map((i) => `${sysctlKey('ipv4', i.name, 'rp_filter')}=2`)];
    const where = strict.length ? `on ${ifaceList(strict)}` : 'on every interface (conf/all=1)';
    out.push(
      fail(
        'sysctl.rp_filter',
        what,
        `strict (1) ${where}${all === 1 ? ', from conf/all=1' : ''}. Strict reverse-path filtering silently drops etd's diverted packets (replies to its spoofed connects, intercepted SYNs) whenever they arrive on another interface than the route back to their source — asymmetric routing, multi-homed gateways, PBR. Loose mode (2) keeps the anti-spoofing check. To persist, put the same keys in /etc/sysctl.d/90-etd.conf`,
        false,
        `sysctl -w ${keys.join(' ')}`,
      ),
    );
  } else if (unknownAll) {
    out.push(warn('sysctl.rp_filter', what, 'net.ipv4.conf.all.rp_filter cannot be read', false));
  } else {
    const values = f.interfaces.map((i) => `${i.name}=${effectiveRpFilter(all, i.rpFilter)}`).join(', ');
    out.push(ok('sysctl.rp_filter', what, `all=${all}${values ? `; effective ${values}` : ''} (0 off, 2 loose)`, false));
  }
  if (def === 1) {
    out.push(
      warn(
        'sysctl.rp_filter.default',
        'net.ipv4.conf.default.rp_filter (interfaces created later)',
        'strict (1): an interface added later (VLAN, bond, tunnel) starts strict and may silently drop etd\'s diverted packets',
        false,
        'sysctl -w net.ipv4.conf.default.rp_filter=2',
      ),
    );
  }
  return out;
}

function srcValidMarkFindings(f: DoctorFacts): Finding[] {
  if (!familiesInUse(f.config).includes(4)) return [];
  const { all, default: def } = f.sysctls.srcValidMark;
  const what = 'net.ipv4.conf.*.src_valid_mark = 0 on the interfaces etd\'s traffic uses';
  const out: Finding[] = [];
  const bad = f.interfaces.filter((i) => effectiveSrcValidMark(all, i.srcValidMark) === 1);
  if (bad.length || all === 1) {
    const keys = [...(all === 1 ? ['net.ipv4.conf.all.src_valid_mark=0'] : []), ...bad.filter((i) => i.srcValidMark === 1).map((i) => `${sysctlKey('ipv4', i.name, 'src_valid_mark')}=0`)];
    const where = bad.length ? `on ${ifaceList(bad)}` : 'on every interface';
    out.push(
      fail(
        'sysctl.src_valid_mark',
        what,
        `1 ${where}${all === 1 ? ' (conf/all=1 applies to every interface)' : ''}. With it, the kernel validates a marked packet's source in etd's routing table ${f.config.netfilter.table}, which routes everything locally: every reply to etd's spoofed connects (and every intercepted SYN) is dropped as a martian, silently. To persist, put the same keys in /etc/sysctl.d/90-etd.conf`,
        true,
        `sysctl -w ${keys.join(' ')}`,
      ),
    );
  } else if (all === undefined) {
    out.push(warn('sysctl.src_valid_mark', what, 'net.ipv4.conf.all.src_valid_mark cannot be read', true));
  } else {
    out.push(ok('sysctl.src_valid_mark', what, `0 (all${f.interfaces.length ? `, ${f.interfaces.map((i) => i.name).join(', ')}` : ''})`, true));
  }
  if (def === 1) {
    out.push(
      warn(
        'sysctl.src_valid_mark.default',
        'net.ipv4.conf.default.src_valid_mark (interfaces created later)',
        '1: an interface added later starts with src_valid_mark=1 and would drop etd\'s marked packets',
        false,
        'sysctl -w net.ipv4.conf.default.src_valid_mark=0',
      ),
    );
  }
  return out;
}

function routeFindings(f: DoctorFacts): Finding[] {
  return f.routes
    .filter((r) => r.error !== undefined)
    .map((r) =>
      fail(
        `route.${r.server}`,
        `a route from etd to server ${r.server} (${r.address})`,
        `ip route get ${r.address} fails: ${r.error}; etd cannot reach this backend at all`,
        false,
        `ip route add ${r.address}${r.family === 4 ? '/32' : '/128'} via GATEWAY   (a router that reaches ${r.address})`,
      ),
    );
}

function testClientFindings(f: DoctorFacts): Finding[] {
  // Only meaningful next to the test it is for (not in the start preflight).
  if (!f.returnPath) return [];
  const wanted = new Set(returnTargets(f.config, f.probes).map((t) => t.family));
  const out: Finding[] = [];
  for (const c of f.testClients) {
    if (!wanted.has(c.family)) continue;
    const id = `client.v${c.family}`;
    const what = `IPv${c.family} address the return-path test spoofs`;
    if (c.address !== undefined) {
      const extra = c.explicit ? '' : ' (for clients behind a router, also test an address of their network with --client: that exercises the router too)';
      out.push(ok(id, what, `${c.how}${extra}`, false));
    } else {
      const fix = `etd doctor -c ${f.configFile} --client ADDRESS   (an unused address of a client network, routed to etd)`;
      out.push(c.invalid ? fail(id, what, c.reason, false, fix) : warn(id, what, c.reason, false, fix));
    }
  }
  return out;
}

/** Local findings that explain a failed return path, by id. */
function localCauses(previous: readonly Finding[], family: Family): string[] {
  return previous
    .filter((x) => x.status === 'FAIL')
    .filter(
      (x) =>
        x.id.startsWith('nft.') ||
        x.id === `ip.rule.v${family}` ||
        x.id === `ip.route.v${family}` ||
        x.id.startsWith('kernel.') ||
        x.id.startsWith('cap.') ||
        (family === 4 && (x.id === 'sysctl.src_valid_mark' || x.id === 'sysctl.rp_filter')),
    )
    .map((x) => x.id);
}

/** The router-side fixes for a server whose replies pass a router: the Linux, nftables-mark and FRRouting recipes of docs/routing.md. */
export function routerPbrFix(server: string, router: string, family: Family, host: string, etd: string, port: number): string {
  return (
    `not on ${server} (its replies pass the router ${router}, so a default route via etd cannot work there): on that router, send what ${host} sends from port ${port} to etd ${etd} — ` +
    `Linux: scripts/pbr-linux.sh apply --etd ${etd} --from ${host} --iif IFACE; ` +
    `nftables mark: the same with --mark 0x25; ` +
    `FRRouting: pbr-map etd seq 10, match src-ip ${host}, match mark 37 (0x25, set by the nftables rule: FRR 8.4 installs no port match), set nexthop ${etd}; pbr-policy etd on the interface facing ${server} ` +
    `(docs/routing.md${family === 6 ? ', IPv6 the same with ip6 addresses' : ''})`
  );
}

const targetWhat = (p: ReturnTarget) =>
  p.probe ? `return path from mail server ${p.address}:${p.port} (--probe) comes back through etd` : `return path from server ${p.server} (${p.address}:${p.port}) comes back through etd`;

function untestedFindings(f: DoctorFacts): Finding[] {
  if (f.config.upstream.source !== 'clientip' || (f.probes ?? []).length > 0) return [];
  const fix = `etd doctor -c ${f.configFile} --probe ADDRESS[:PORT]   (repeatable: each mail server whose port-25 traffic etd intercepts)`;
  if (interceptForwardsOriginal(f.config)) {
    return [
      warn(
        'return',
        'return path from the mail servers comes back through etd',
        `not tested${returnPathServers(f.config).length ? ' for the intercepted destinations (the servers listed are tested, but forward: original connects to each original destination)' : ''}: intercept mode with forward: original connects to each client's original destination, which the config does not name; test them with --probe. Meanwhile the summary line of a relayed session names a connect timeout and its likely cause`,
        false,
        fix,
      ),
    ];
  }
  if (returnPathServers(f.config).length === 0) {
    return [warn('return', 'return path from the servers comes back through etd', 'not tested: upstream.servers is empty; name the mail servers with --probe', false, fix)];
  }
  return [];
}

function returnFindings(f: DoctorFacts, previous: readonly Finding[]): Finding[] {
  if (!f.returnPath) return [];
  const out: Finding[] = untestedFindings(f);
  for (const p of f.returnPath) {
    const id = `return.${p.server}`;
    const what = targetWhat(p);
    if ('skipped' in p) {
      out.push(warn(id, what, `not tested: ${p.skipped}`, false));
      continue;
    }
    const route = f.routes.find((r) => r.server === p.server);
    const via = route?.prefsrc;
    const test = `a connect from ${p.source} (spoofed, like a relayed client) to ${p.address}:${p.port}`;
    switch (p.outcome) {
      case 'connected':
        out.push(
          ok(
            id,
            what,
            `${test} completed in ${p.ms} ms${p.greeting ? ` and the server greeted "${p.greeting}"` : ''}: the server's replies to client addresses reach etd`,
            false,
          ),
        );
        break;
      case 'refused':
        out.push(
          warn(
            id,
            what,
            `${test} was refused: the server's reset came back through etd, so the return path works, but nothing accepts connections on ${p.address}:${p.port}`,
            false,
          ),
        );
        break;
      case 'timeout':
      case 'unreachable':
      case 'error': {
        const outcome =
          p.outcome === 'timeout'
            ? `got no answer within ${p.ms} ms`
            : p.outcome === 'unreachable'
              ? `failed: ${p.error ?? 'unreachable'}`
              : `failed: ${p.error ?? 'error'}`;
        const causes = localCauses(previous, p.family);
        if (causes.length) {
          out.push(fail(id, what, `${test} ${outcome}; the FAILs above explain it: ${causes.join(', ')}`, false, `fix ${causes.join(', ')} first (see ${causes.length > 1 ? 'their fixes' : 'its fix'} above), then re-run the doctor`));
          break;
        }
        const gw = via ?? 'ETD_ADDRESS';
        const ipf = p.family === 4 ? 'ip' : 'ip -6';
        const host = p.family === 4 ? `${p.address}/32` : `${p.address}/128`;
        const name = p.probe ? p.address : p.server;
        if (route?.gateway !== undefined) {
          // Routed: the server is not on a subnet of etd's; its default route points at its own router.
          out.push(
            fail(
              id,
              what,
              `${test} ${outcome}: the server's replies to client addresses do not come back through etd. etd reaches ${p.address} through the router ${route.gateway}, so the server is not on a subnet of etd's: its replies go to its own router, which must send those from source port ${p.port} to etd${via ? ` (${via})` : ''} with a policy route (picture 2, docs/routing.md); less likely, the server is down or a firewall drops the connection`,
              false,
              routerPbrFix(name, route.gateway, p.family, host, gw, p.port),
            ),
          );
          break;
        }
        out.push(
          fail(
            id,
            what,
            `${test} ${outcome}: the server's replies to client addresses do not come back through etd${via ? ` (${via}, etd's address toward it)` : ''}. Either the server's default route points elsewhere (picture 1: etd is the backends' default gateway) or its router lacks the policy route for source port ${p.port} (picture 2, docs/routing.md); less likely, the server is down or a firewall drops the connection`,
            false,
            `on ${name}: ${ipf} route replace default via ${gw}   — or, with a PBR router, on the router: scripts/pbr-linux.sh apply --etd ${gw} --from ${host}`,
          ),
        );
        break;
      }
    }
  }
  return out;
}

/**
 * All findings for these facts, in a stable order: capabilities, addon, kernel, rules, sysctls,
 * routes, test client, return path. Facts left undefined produce no findings (not checked).
 */
export function evaluate(f: DoctorFacts): Finding[] {
  const dnsbl = f.dnsbl ? dnsblFindings(f.config.reputation, f.dnsbl) : [];
  if (transparentListeners(f.config).length === 0) {
    return [
      ok('mode.plain', 'listener modes', 'every listener is mode: plain: no transparency, so no netfilter, sysctl or return-path requirements', false),
      ...capabilityFindings(f),
      ...redisFindings(f),
      ...dnsbl,
    ];
  }
  const out: Finding[] = [
    ...capabilityFindings(f),
    ...addonFindings(f),
    ...kernelFindings(f),
    ...rulesFindings(f),
    ...forwardingFindings(f),
    ...rpFilterFindings(f),
    ...srcValidMarkFindings(f),
    ...routeFindings(f),
    ...testClientFindings(f),
  ];
  return [...out, ...returnFindings(f, out), ...redisFindings(f), ...dnsbl];
}

/** cluster.redis: never critical (etd serves from local state without Redis), but a FAIL: the gateways do not share. */
export function redisFindings(f: Pick<DoctorFacts, 'redis'>): Finding[] {
  const r = f.redis;
  if (r === undefined) return [];
  const what = 'shared state over Redis (cluster.redis)';
  if ('ms' in r) return [ok('cluster.redis', what, `${r.where} answers; wrote, read back and deleted a key under "${r.keyPrefix}" in ${r.ms} ms`, false)];
  if (r.stage === 'connect') {
    return [
      fail('cluster.redis', what, `cannot connect to ${r.where}: ${r.error}; gateways do not share state until it answers`, false,
        'check that redis-server runs and listens on that address (redis-cli -u URL ping), the firewall, and the password and TLS (rediss://) in cluster.redis.url'),
    ];
  }
  return [
    fail('cluster.redis', what, `${r.where} answers, but writing under "${r.keyPrefix}" failed: ${r.error}`, false,
      'grant the Redis user etd logs in as read/write on the prefix: ACL SETUSER <user> ~<keyPrefix>* &<keyPrefix>* +@read +@write +@pubsub +ping; a replica is read-only: point etd at the master (or use sentinels)'),
  ];
}

/** The critical FAILs: what makes `etd run` refuse to start. */
export function criticalFailures(findings: readonly Finding[]): Finding[] {
  return findings.filter((x) => x.critical && x.status === 'FAIL');
}

/** Counts per status. */
export function summarize(findings: readonly Finding[]): Record<Status, number> {
  const out: Record<Status, number> = { OK: 0, WARN: 0, FAIL: 0 };
  for (const x of findings) out[x.status]++;
  return out;
}
