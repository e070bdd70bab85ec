// Pure: the findings about this host itself: capabilities, the native addon, kernel support, etd's rules and routing, forwarding and the sysctls of the path.
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
import { type Family, formatStep, routeArgs, ruleArgs } from '../netfilter/routing.js';
import { interceptListeners, interceptRules } from '../netfilter/ruleset.js';
import type { CheckItem } from '../netfilter/setup.js';
import { bindAddresses } from '../proxy/listener.js';
import {
  CAP_NET_ADMIN,
  CAP_NET_BIND_SERVICE,
  CAP_NET_RAW,
  type DoctorFacts,
  familiesInUse,
  hasCap,
  isProblem,
  type KernelFeature,
  type PathInterface,
  sysctlKey,
  transparentListeners,
} from './facts.js';
import { type Finding, fail, ok, warn } from './finding.js';

// The unit's set (systemd/etd.service): not CAP_NET_RAW, which would add raw sockets (forging, sniffing) for nothing.
const CAP_FIX =
  'run etd under its systemd unit, which grants AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE (restore a drop-in that removed them: systemctl edit etd), or start it as root: it keeps these two when it drops to its user';

export function capabilityFindings(f: DoctorFacts): Finding[] {
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
    else if (admin)
      out.push(
        ok('cap.net_admin', what, "present in this process's effective set (run the doctor with the same privileges as the service)", true),
      );
    else if (!needAdmin && raw) {
      out.push(
        ok(
          'cap.net_admin',
          what,
          'absent, but not needed: netfilter.manage is false (you install the rules) and CAP_NET_RAW allows IP_TRANSPARENT',
          true,
        ),
      );
    } else {
      const why = needAdmin
        ? 'etd installs its nftables table and policy routing (netfilter.manage: true), which needs CAP_NET_ADMIN'
        : 'the spoofed upstream sockets need IP_TRANSPARENT, which needs CAP_NET_ADMIN or CAP_NET_RAW (grant CAP_NET_ADMIN: CAP_NET_RAW would also allow raw sockets)';
      out.push(fail('cap.net_admin', what, `missing from this process's effective set: ${why}`, true, CAP_FIX));
    }
  }
  // Ports below net.ipv4.ip_unprivileged_port_start (1024 unless lowered) need CAP_NET_BIND_SERVICE.
  const start = f.sysctls.unprivilegedPortStart ?? 1024;
  const low = cfg.listeners
    .flatMap((l) => bindAddresses(l, cfg.netfilter.tproxyPort).map((b) => ({ l: l.name, port: b.port })))
    .filter((b) => b.port > 0 && b.port < start);
  if (low.length) {
    const ports = [...new Set(low.map((b) => b.port))].join(', ');
    const what = 'CAP_NET_BIND_SERVICE (listening on ports below 1024)';
    if (unknown !== undefined) out.push(warn('cap.net_bind_service', what, `cannot read this process's capabilities: ${unknown}`, true));
    else if (bind) out.push(ok('cap.net_bind_service', what, `present; listeners use port ${ports}`, true));
    else {
      out.push(
        fail(
          'cap.net_bind_service',
          what,
          `missing: listeners use port ${ports}, below net.ipv4.ip_unprivileged_port_start=${start}`,
          true,
          CAP_FIX,
        ),
      );
    }
  }
  return out;
}

export function addonFindings(f: DoctorFacts): Finding[] {
  if (!f.addon) return [];
  const what = 'native addon etd_transparent.node (transparent sockets)';
  return isProblem(f.addon)
    ? [
        fail(
          'native.addon',
          what,
          `cannot be loaded: ${f.addon.error}`,
          true,
          "npm run install   (in etd's install directory; needs g++, make, python3)",
        ),
      ]
    : [ok('native.addon', what, `loaded from ${f.addon.path}`, true)];
}

const FEATURE: Record<KernelFeature, { id: string; what: string; module: string; why: string }> = {
  socket: {
    id: 'kernel.nft_socket',
    what: 'nftables socket expression (divert rule)',
    module: 'nft_socket',
    why: "the divert rule (socket transparent 1) marks replies to etd's spoofed connects",
  },
  tproxy4: {
    id: 'kernel.nft_tproxy.v4',
    what: 'nftables tproxy expression, IPv4 (intercept)',
    module: 'nft_tproxy',
    why: 'intercept mode hands port-25 flows to etd with tproxy',
  },
  tproxy6: {
    id: 'kernel.nft_tproxy.v6',
    what: 'nftables tproxy expression, IPv6 (intercept)',
    module: 'nft_tproxy',
    why: 'intercept mode hands port-25 flows to etd with tproxy',
  },
  fib: {
    id: 'kernel.nft_fib',
    what: 'nftables fib expression (intercept)',
    module: 'nft_fib_inet',
    why: "intercept mode leaves traffic to etd's own addresses alone with fib daddr type local",
  },
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

export function kernelFindings(f: DoctorFacts): Finding[] {
  if (!f.kernel) return [];
  const k = f.kernel;
  if (isProblem(k)) {
    if (k.cause === 'nft_load') {
      const critical = f.config.netfilter.manage;
      const detail = `libnftables cannot be loaded: ${k.error}${critical ? '' : ' (netfilter.manage is false, so etd itself does not need it; kernel support was not checked)'}`;
      return [
        critical
          ? fail('kernel.nftables', 'libnftables', detail, true, 'apt-get install libnftables1')
          : warn('kernel.nftables', 'libnftables', detail, false, 'apt-get install libnftables1'),
      ];
    }
    return [warn('kernel.nftables', 'kernel support for nftables tproxy/socket', `not checked: ${k.error}`, true)];
  }
  const out: Finding[] = [];
  for (const feature of neededFeatures(f.config)) {
    const spec = FEATURE[feature];
    const p = k.probes.find((x) => x.feature === feature);
    if (!p) continue;
    if (p.ok)
      out.push(
        ok(
          spec.id,
          spec.what,
          `supported: a rule using it was accepted by the kernel (in a scratch table, removed in the same transaction)`,
          true,
        ),
      );
    else {
      out.push(
        fail(
          spec.id,
          spec.what,
          `the kernel rejected a rule using it: ${p.error ?? 'unknown error'} — ${spec.why}; the module may be missing or the kernel built without it`,
          true,
          `modprobe ${spec.module}`,
        ),
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

export function rulesFindings(f: DoctorFacts): Finding[] {
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
        'nothing of it is installed: etd is probably not running (it installs them at start, netfilter.manage: true). The return-path test needs them: apply them, re-run the doctor, then remove them with `etd rules remove -c FILE` (or start etd)',
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
          ? "without it, replies to etd's spoofed connects are not marked and never reach etd: upstream connects time out"
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

export function forwardingFindings(f: DoctorFacts): Finding[] {
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
export const effectiveSrcValidMark = (all: number | undefined, iface: number | undefined) =>
  (all ?? 0) !== 0 || (iface ?? 0) !== 0 ? 1 : 0;

export function rpFilterFindings(f: DoctorFacts): Finding[] {
  if (!familiesInUse(f.config).includes(4)) return [];
  const { all, default: def } = f.sysctls.rpFilter;
  const what = "net.ipv4.conf.*.rp_filter not strict on the interfaces etd's traffic uses";
  const out: Finding[] = [];
  const strict = f.interfaces.filter((i) => effectiveRpFilter(all, i.rpFilter) === 1);
  const unknownAll = all === undefined;
  if (strict.length || (f.interfaces.length === 0 && all === 1)) {
    const keys = [
      ...(all === 1 ? ['net.ipv4.conf.all.rp_filter=2'] : []),
      ...strict.filter((i) => i.rpFilter === 1).map((i) => `${sysctlKey('ipv4', i.name, 'rp_filter')}=2`),
    ];
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
        "strict (1): an interface added later (VLAN, bond, tunnel) starts strict and may silently drop etd's diverted packets",
        false,
        'sysctl -w net.ipv4.conf.default.rp_filter=2',
      ),
    );
  }
  return out;
}

export function srcValidMarkFindings(f: DoctorFacts): Finding[] {
  if (!familiesInUse(f.config).includes(4)) return [];
  const { all, default: def } = f.sysctls.srcValidMark;
  const what = "net.ipv4.conf.*.src_valid_mark = 0 on the interfaces etd's traffic uses";
  const out: Finding[] = [];
  const bad = f.interfaces.filter((i) => effectiveSrcValidMark(all, i.srcValidMark) === 1);
  if (bad.length || all === 1) {
    const keys = [
      ...(all === 1 ? ['net.ipv4.conf.all.src_valid_mark=0'] : []),
      ...bad.filter((i) => i.srcValidMark === 1).map((i) => `${sysctlKey('ipv4', i.name, 'src_valid_mark')}=0`),
    ];
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
    out.push(
      ok('sysctl.src_valid_mark', what, `0 (all${f.interfaces.length ? `, ${f.interfaces.map((i) => i.name).join(', ')}` : ''})`, true),
    );
  }
  if (def === 1) {
    out.push(
      warn(
        'sysctl.src_valid_mark.default',
        'net.ipv4.conf.default.src_valid_mark (interfaces created later)',
        "1: an interface added later starts with src_valid_mark=1 and would drop etd's marked packets",
        false,
        'sysctl -w net.ipv4.conf.default.src_valid_mark=0',
      ),
    );
  }
  return out;
}

export function routeFindings(f: DoctorFacts): Finding[] {
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
