// The I/O of `etd doctor` and the start preflight: reads capabilities, sysctls, routes, etd's rules; probes the kernel; makes the spoofed test connects.
//
// What it changes on the system: nothing, except a scratch nft table (`inet etd_probe_<pid>`)
// that is added and deleted in the same atomic transaction — so it never exists for anyone else
// to see and cannot be left behind — to learn whether the kernel accepts the socket/tproxy/fib
// expressions. What it sends: with `returnPath`, one TCP connection per backend server, from a
// spoofed client address (see chooseTestClient in testClient.ts), closed as soon as it is
// established; the server logs a short connection from that address.
//
// Every fact that cannot be read becomes { error } in the facts, never an exception: the doctor
// must report as much as it can on a half-broken host.

import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/schema.js';
import { describeError, isEtdError } from '../errors.js';
import { run as nftRun } from '../native/nftables.js';
import { loadedAddonPath, loadTransparent } from '../native/transparent.js';
import { type Family, type IpRunner, runIp } from '../netfilter/routing.js';
import { verifyNetfilter } from '../netfilter/setup.js';
import { probeZones } from '../reputation/probe.js';
import { connectFailure } from '../util/errno.js';
import {
  type AddonFacts,
  type Capabilities,
  type DefaultRoute,
  type DoctorFacts,
  type FeatureProbe,
  familiesInUse,
  familyOf,
  type IfAddr,
  type KernelFacts,
  type KernelFeature,
  type PathInterface,
  type ProbeOutcome,
  parseCapEff,
  type ReturnProbe,
  type ServerRoute,
  type Sysctls,
  type TestClient,
  transparentListeners,
} from './facts.js';
import { neededFeatures } from './hostFindings.js';
import { planReturnPath } from './returnPath.js';
import { type ReturnTarget, returnTargets } from './targets.js';
import { chooseTestClient } from './testClient.js';

export interface GatherOptions {
  /** Shown in fix commands (`etd rules apply -c FILE`). */
  readonly configFile: string;
  /** `--client ADDRESS`: the address to spoof for its family (the other family is derived). */
  readonly client?: string;
  /** Make the spoofed test connects (the doctor; not the start preflight). */
  readonly returnPath: boolean;
  /** Read etd's nft table and policy routing back (verifyNetfilter). */
  readonly netfilter: boolean;
  /** Upper bound of one test connect (default: min(upstream.connectTimeout, 3 s)). */
  readonly probeTimeoutMs?: number;
  /** `--probe` targets: mail servers to test besides the configured ones. */
  readonly probes?: readonly ReturnTarget[];
  /** Injectable `ip` runner (tests). */
  readonly ip?: IpRunner;
  /** Connect to cluster.redis and write a key (the doctor; not the start preflight, which never waits on Redis). */
  readonly redis?: boolean;
}

// ---- small readers ---------------------------------------------------------------------------

function readNumber(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

const conf = (family: 'ipv4' | 'ipv6', iface: string, key: string) => readNumber(`/proc/sys/net/${family}/conf/${iface}/${key}`);

export function readCapabilities(): Capabilities {
  try {
    const eff = parseCapEff(fs.readFileSync('/proc/self/status', 'utf8'));
    return eff === undefined ? { error: 'no CapEff line in /proc/self/status' } : { effective: eff };
  } catch (e) {
    return { error: describeError(e) };
  }
}

export function readSysctls(): Sysctls {
  return {
    ...optional('ipForward', readNumber('/proc/sys/net/ipv4/ip_forward')),
    ...optional('ipv6Forwarding', conf('ipv6', 'all', 'forwarding')),
    ...optional('unprivilegedPortStart', readNumber('/proc/sys/net/ipv4/ip_unprivileged_port_start')),
    rpFilter: { ...optional('all', conf('ipv4', 'all', 'rp_filter')), ...optional('default', conf('ipv4', 'default', 'rp_filter')) },
    srcValidMark: {
      ...optional('all', conf('ipv4', 'all', 'src_valid_mark')),
      ...optional('default', conf('ipv4', 'default', 'src_valid_mark')),
    },
  };
}

/** `{ [key]: value }` when value is defined, `{}` otherwise (exactOptionalPropertyTypes-friendly). */
function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

function readAddon(): AddonFacts {
  try {
    loadTransparent();
    return { path: loadedAddonPath() ?? '(unknown path)' };
  } catch (e) {
    return { error: describeError(e) };
  }
}

// ---- kernel support --------------------------------------------------------------------------

const FEATURE_RULE: Record<KernelFeature, string> = {
  socket: 'meta l4proto tcp socket transparent 1 meta mark set 0x1 accept',
  tproxy4: 'meta l4proto tcp tproxy ip to 127.0.0.1:10025 meta mark set 0x1 accept',
  tproxy6: 'meta l4proto tcp tproxy ip6 to [::1]:10025 meta mark set 0x1 accept',
  fib: 'fib daddr type local return',
};

/** One atomic batch: scratch table, a prerouting chain (tproxy needs it), the rules, delete table. */
function probeBatch(features: readonly KernelFeature[]): string {
  const t = `inet etd_probe_${process.pid}`;
  return `${[
    `add table ${t}`,
    `add chain ${t} probe { type filter hook prerouting priority mangle; policy accept; }`,
    ...features.map((f) => `add rule ${t} probe ${FEATURE_RULE[f]}`),
    `delete table ${t}`,
  ].join('\n')}\n`;
}

/** Probes the features the config needs: all in one batch, then one by one only if that fails. */
export function probeKernel(features: readonly KernelFeature[]): KernelFacts | undefined {
  if (features.length === 0) return undefined;
  const attempt = (list: readonly KernelFeature[]): string | undefined => {
    try {
      nftRun(probeBatch(list));
      return undefined;
    } catch (e) {
      if (isEtdError(e, 'ETD_ERR_NFT_LOAD')) throw e;
      return describeError(e);
    }
  };
  try {
    const all = attempt(features);
    if (all === undefined) return { probes: features.map((feature) => ({ feature, ok: true })) };
    if (/Operation not permitted/.test(all)) return { error: all, cause: 'privilege' };
    const probes: FeatureProbe[] = features.map((feature) => {
      const error = attempt([feature]);
      return error === undefined ? { feature, ok: true } : { feature, ok: false, error };
    });
    return { probes };
  } catch (e) {
    return { error: describeError(e), cause: 'nft_load' };
  }
}

// ---- routes and addresses (iproute2 JSON) ----------------------------------------------------

type JsonObj = Record<string, unknown>;
const str = (o: JsonObj, k: string): string | undefined => (typeof o[k] === 'string' ? (o[k] as string) : undefined);

async function ipJson(ip: IpRunner, argv: readonly string[]): Promise<JsonObj[] | { error: string }> {
  let r: Awaited<ReturnType<IpRunner>>;
  try {
    r = await ip(argv);
  } catch (e) {
    return { error: describeError(e) };
  }
  if (r.code !== 0) return { error: r.stderr.trim() || `exit code ${r.code}` };
  try {
    const v: unknown = JSON.parse(r.stdout.trim() || '[]');
    return Array.isArray(v) ? v.filter((x): x is JsonObj => typeof x === 'object' && x !== null) : { error: 'not a JSON array' };
  } catch {
    return { error: `not JSON: ${r.stdout.slice(0, 120)}` };
  }
}

export async function readAddrs(ip: IpRunner): Promise<IfAddr[]> {
  const links = await ipJson(ip, ['-j', 'addr', 'show']);
  if (!Array.isArray(links)) return [];
  const out: IfAddr[] = [];
  for (const link of links) {
    const ifname = str(link, 'ifname');
    const infos = Array.isArray(link.addr_info) ? (link.addr_info as unknown[]) : [];
    for (const raw of infos) {
      if (typeof raw !== 'object' || raw === null || ifname === undefined) continue;
      const a = raw as JsonObj;
      const local = str(a, 'local');
      const fam = str(a, 'family');
      if (local === undefined || typeof a.prefixlen !== 'number' || (fam !== 'inet' && fam !== 'inet6')) continue;
      out.push({ ifname, family: fam === 'inet' ? 4 : 6, local, prefixlen: a.prefixlen, scope: str(a, 'scope') ?? 'global' });
    }
  }
  return out;
}

async function readDefaults(ip: IpRunner): Promise<DefaultRoute[]> {
  const out: DefaultRoute[] = [];
  for (const family of [4, 6] as const) {
    const routes = await ipJson(ip, [`-${family}`, '-j', 'route', 'show', 'default']);
    const first = Array.isArray(routes) ? routes[0] : undefined;
    if (!first) continue;
    const dev = str(first, 'dev');
    const gateway = str(first, 'gateway');
    out.push({ family, ...(dev === undefined ? {} : { dev }), ...(gateway === undefined ? {} : { gateway }) });
  }
  return out;
}

async function routeGet(ip: IpRunner, address: string): Promise<{ dev?: string; prefsrc?: string; gateway?: string; error?: string }> {
  const r = await ipJson(ip, ['-j', 'route', 'get', address]);
  if (!Array.isArray(r)) return { error: r.error };
  const first = r[0];
  if (!first) return { error: 'no route' };
  const dev = str(first, 'dev');
  const prefsrc = str(first, 'prefsrc');
  const gateway = str(first, 'gateway');
  return {
    ...(dev === undefined ? {} : { dev }),
    ...(prefsrc === undefined ? {} : { prefsrc }),
    ...(gateway === undefined ? {} : { gateway }),
  };
}

async function serverRoutes(config: Config, probes: readonly ReturnTarget[], ip: IpRunner): Promise<ServerRoute[]> {
  const targets = [
    ...config.upstream.servers.flatMap((s) => {
      const family = familyOf(s.address);
      return family ? [{ server: s.name, address: s.address, port: s.port, family }] : [];
    }),
    ...returnTargets(config, probes).filter((t) => t.probe),
  ];
  return Promise.all(
    targets.map(
      async (t): Promise<ServerRoute> => ({
        server: t.server,
        address: t.address,
        port: t.port,
        family: t.family,
        ...(await routeGet(ip, t.address)),
      }),
    ),
  );
}

/** Interfaces that carry etd's traffic: toward each server, toward the test clients, and those holding a listener's address. */
async function pathInterfaces(
  config: Config,
  routes: readonly ServerRoute[],
  clients: readonly TestClient[],
  addrs: readonly IfAddr[],
  ip: IpRunner,
): Promise<PathInterface[]> {
  const why = new Map<string, string[]>();
  const add = (dev: string | undefined, reason: string) => {
    if (!dev || dev === 'lo') return;
    why.set(dev, [...(why.get(dev) ?? []), reason]);
  };
  for (const r of routes) add(r.dev, `route to server ${r.server}`);
  for (const c of clients) {
    if (c.address === undefined) continue;
    add((await routeGet(ip, c.address)).dev, `route to the test client ${c.address}`);
  }
  for (const l of transparentListeners(config)) add(addrs.find((a) => a.local === l.address)?.ifname, `listener ${l.name}`);
  // Intercepted flows may arrive on any interface etd routes between: all with a global address.
  if (config.listeners.some((l) => l.mode === 'intercept')) {
    for (const name of new Set(addrs.filter((a) => a.scope === 'global').map((a) => a.ifname))) add(name, 'intercept');
  }
  return [...why].map(([name, reasons]) => ({
    name,
    why: reasons,
    ...optional('rpFilter', conf('ipv4', name, 'rp_filter')),
    ...optional('srcValidMark', conf('ipv4', name, 'src_valid_mark')),
  }));
}

// ---- the spoofed test connect ----------------------------------------------------------------

function classify(code: string | undefined): ProbeOutcome {
  const c = connectFailure({ code });
  return c === 'refused' || c === 'timeout' || c === 'unreachable' ? c : 'error';
}

/**
 * One connect from `source` (not an address of etd's) to the server, exactly as ClientIpSource
 * makes it: transparent socket bound to (source, port 0), no SO_MARK, connect() in the same
 * synchronous turn as new net.Socket({fd}) (see src/native/transparent.ts). TCP_SYNCNT=1 and
 * the timer bound the wait. Once established it waits up to GREETING_MS for the server's first
 * line (proof that data flows back too, and the server logs a normal short session instead of a
 * lost connection), answers QUIT and closes.
 */
export function spoofedConnect(
  family: Family,
  source: string,
  address: string,
  port: number,
  timeoutMs: number,
): Promise<{ outcome: ProbeOutcome; ms: number; error?: string; greeting?: string }> {
  const started = Date.now();
  return new Promise((resolve) => {
    let fd: number;
    try {
      fd = loadTransparent().transparentSocket(family, source, 0, 1);
    } catch (e) {
      const sys = (e as { sysCode?: string }).sysCode;
      resolve({ outcome: 'error', ms: 0, error: sys ? `${sys}: ${describeError(e)}` : describeError(e) });
      return;
    }
    const socket = new net.Socket({ fd, readable: true, writable: true });
    socket.connect({ host: address, port });
    let settled = false;
    let connectedMs = 0;
    const done = (outcome: ProbeOutcome, extra: { error?: string; greeting?: string } = {}) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ outcome, ms: outcome === 'connected' ? connectedMs : Date.now() - started, ...extra });
    };
    const timer = setTimeout(() => {
      socket.destroy();
      done('timeout');
    }, timeoutMs);
    socket.on('error', (e: NodeJS.ErrnoException) => {
      socket.destroy();
      done(connectedMs ? 'connected' : classify(e.code), connectedMs ? {} : { error: e.code ?? e.message });
    });
    socket.once('connect', () => {
      connectedMs = Date.now() - started;
      clearTimeout(timer);
      let buffered = '';
      let finished = false;
      const finish = (greeting?: string) => {
        if (finished) return;
        finished = true;
        clearTimeout(greetTimer);
        socket.removeAllListeners('data');
        if (!socket.destroyed) {
          if (greeting?.startsWith('220')) socket.end('QUIT\r\n');
          else socket.end();
        }
        setTimeout(() => socket.destroy(), 500).unref();
        socket.resume();
        done('connected', greeting === undefined ? {} : { greeting });
      };
      const greetTimer = setTimeout(() => finish(), GREETING_MS);
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => {
        buffered += chunk;
        const nl = buffered.indexOf('\n');
        if (nl >= 0 || buffered.length > 512)
          finish(
            buffered
              .slice(0, nl >= 0 ? nl : 512)
              .trim()
              .slice(0, 120),
          );
      });
      socket.once('end', () => finish(buffered ? buffered.trim().slice(0, 120) : undefined));
    });
  });
}

const GREETING_MS = 1000;

// ---- all facts -------------------------------------------------------------------------------

export async function gatherFacts(config: Config, opts: GatherOptions): Promise<DoctorFacts> {
  const redis = opts.redis && config.cluster ? await (await import('../cluster/probe.js')).probeRedis(config.cluster) : undefined;
  const facts = await gatherHostFacts(config, opts);
  return redis === undefined ? facts : { ...facts, redis };
}

async function gatherHostFacts(config: Config, opts: GatherOptions): Promise<DoctorFacts> {
  const ip = opts.ip ?? runIp;
  const transparent = transparentListeners(config).length > 0;
  const capabilities = readCapabilities();
  const sysctls = readSysctls();
  // The zones are queried by the doctor, not by the start preflight (a slow resolver must not delay a start).
  const dnsbl = opts.returnPath && config.reputation.dnsbl.length ? { dnsbl: await probeZones(config.reputation) } : {};
  if (!transparent) {
    return { config, configFile: opts.configFile, capabilities, sysctls, interfaces: [], routes: [], testClients: [], ...dnsbl };
  }
  const addon = readAddon();
  const kernel = probeKernel(neededFeatures(config));
  let netfilter: DoctorFacts['netfilter'];
  if (opts.netfilter) {
    try {
      netfilter = await verifyNetfilter(config, ip);
    } catch (e) {
      netfilter = { error: describeError(e) };
    }
  }
  const probes = opts.probes ?? [];
  const [addrs, defaults, routes] = await Promise.all([readAddrs(ip), readDefaults(ip), serverRoutes(config, probes, ip)]);
  const families = [...new Set([...familiesInUse(config), ...probes.map((p) => p.family)])].sort();
  const mailServers = probes.map((p) => p.address);
  const testClients = families.map((family) => chooseTestClient(family, config, addrs, defaults, opts.client, mailServers));
  const interfaces = await pathInterfaces(config, routes, testClients, addrs, ip);
  const base = {
    config,
    configFile: opts.configFile,
    capabilities,
    addon,
    ...(kernel === undefined ? {} : { kernel }),
    ...(netfilter === undefined ? {} : { netfilter }),
    sysctls,
    interfaces,
    routes,
    testClients,
    ...(probes.length ? { probes } : {}),
    ...dnsbl,
  };
  if (!opts.returnPath) return base;
  const timeoutMs = opts.probeTimeoutMs ?? Math.min(config.upstream.connectTimeoutMs, 3000);
  const returnPath: ReturnProbe[] = await Promise.all(
    planReturnPath(base).map(async (p): Promise<ReturnProbe> => {
      const target = { server: p.server, address: p.address, port: p.port, family: p.family, ...(p.probe ? { probe: true } : {}) };
      if (p.source === undefined) return { ...target, skipped: p.skipped ?? 'not tested' };
      const r = await spoofedConnect(p.family, p.source, p.address, p.port, timeoutMs);
      return { ...target, source: p.source, ...r };
    }),
  );
  return { ...base, returnPath };
}
