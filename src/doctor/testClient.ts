// Pure: the address the return-path test spoofs for each family, standing in for a real client (used by gather before the probes).

import { cidrContains } from '../config/cidr.js';
import { cidrsOverlap, networkOf, spareHost } from '../config/cidrMath.js';
import type { Config } from '../config/schema.js';
import type { Family } from '../netfilter/routing.js';
import { interceptListeners, interceptRules } from '../netfilter/ruleset.js';
import { type DefaultRoute, familyOf, type IfAddr, type TestClient, transparentListeners } from './facts.js';

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
      return {
        family,
        reason: `--client ${explicit} is one of etd's own addresses; it must be an address of a client network (not configured on this host)`,
        invalid: true,
      };
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
