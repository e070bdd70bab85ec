// The facts `etd doctor` and the start preflight gather about this host (types only, plus the small pure readings of them every check shares).
//
// Facts carry "could not be gathered" as { error } instead of throwing, so one unreadable value never
// hides the other findings.

import type { RedisProbe } from '../cluster/probe.js';
import { addressToBigInt } from '../config/cidr.js';
import type { Config } from '../config/schema.js';
import type { Family } from '../netfilter/routing.js';
import { interceptRules } from '../netfilter/ruleset.js';
import type { NetfilterState } from '../netfilter/setup.js';
import type { ZoneProbe } from '../reputation/doctorFindings.js';
import type { ReturnTarget } from './targets.js';

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
  | {
      readonly server: string;
      readonly address: string;
      readonly port: number;
      readonly family: Family;
      readonly skipped: string;
      readonly probe?: boolean;
    };

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

export const isProblem = (x: object): x is Problem => 'error' in x && typeof (x as Problem).error === 'string';

export function familyOf(address: string): Family | undefined {
  return addressToBigInt(address)?.family;
}

export const hasCap = (caps: Capabilities, bit: number): boolean | undefined =>
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
