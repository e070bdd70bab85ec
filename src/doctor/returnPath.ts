// Pure: the return-path test's plan (per target: the source to spoof, or why it is skipped; used by gather) and the findings of its outcome.

import type { Family } from '../netfilter/routing.js';
import { CAP_NET_ADMIN, CAP_NET_RAW, type DoctorFacts, hasCap, isProblem } from './facts.js';
import { type Finding, fail, ok, warn } from './finding.js';
import { interceptForwardsOriginal, type ReturnTarget, returnPathServers, returnTargets } from './targets.js';

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
    if (!capOk) skipped = 'this process lacks CAP_NET_ADMIN (or CAP_NET_RAW), needed for the spoofed socket: run the doctor as root';
    else if (facts.addon && isProblem(facts.addon)) skipped = 'the native addon is not loaded';
    else if (!client || client.address === undefined)
      skipped = `no IPv${family} test client address (${client && client.address === undefined ? client.reason : 'none'})`;
    else if (route?.error !== undefined) skipped = `etd has no route to ${base.address}`;
    else if (facts.netfilter && !isProblem(facts.netfilter) && facts.netfilter.clean)
      skipped = "etd's divert rule and policy routing are not installed";
    out.push(
      skipped !== undefined || !client || client.address === undefined
        ? { ...base, skipped: skipped ?? 'no test client' }
        : { ...base, source: client.address },
    );
  }
  return out;
}

export function testClientFindings(f: DoctorFacts): Finding[] {
  // Only meaningful next to the test it is for (not in the start preflight).
  if (!f.returnPath) return [];
  const wanted = new Set(returnTargets(f.config, f.probes).map((t) => t.family));
  const out: Finding[] = [];
  for (const c of f.testClients) {
    if (!wanted.has(c.family)) continue;
    const id = `client.v${c.family}`;
    const what = `IPv${c.family} address the return-path test spoofs`;
    if (c.address !== undefined) {
      const extra = c.explicit
        ? ''
        : ' (for clients behind a router, also test an address of their network with --client: that exercises the router too)';
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
  p.probe
    ? `return path from mail server ${p.address}:${p.port} (--probe) comes back through etd`
    : `return path from server ${p.server} (${p.address}:${p.port}) comes back through etd`;

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
    return [
      warn(
        'return',
        'return path from the servers comes back through etd',
        'not tested: upstream.servers is empty; name the mail servers with --probe',
        false,
        fix,
      ),
    ];
  }
  return [];
}

export function returnFindings(f: DoctorFacts, previous: readonly Finding[]): Finding[] {
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
          out.push(
            fail(
              id,
              what,
              `${test} ${outcome}; the FAILs above explain it: ${causes.join(', ')}`,
              false,
              `fix ${causes.join(', ')} first (see ${causes.length > 1 ? 'their fixes' : 'its fix'} above), then re-run the doctor`,
            ),
          );
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
