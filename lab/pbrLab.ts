// The PBR lab (deployment picture 2 of docs/routing.md): client ── router ── backends, etd on its own link off the router.
//
//   client ns   10.x.1.2/24   fd00:x:1::2/64     default via the router
//   router ns   10.x.1.1 | 10.x.2.1 | 10.x.3.1   (+ fd00:x:N::1)  ip_forward=1; applies the PBR recipe
//   backend ns  10.x.2.10, 10.x.2.11 (+ fd00:x:2::10/11)          default via the ROUTER, not etd
//   etd ns      10.x.3.2/24   fd00:x:3::2/64     default via the router; runs etd
//
// Without the router's policy route the backends answer etd's spoofed connects (addressed to the
// client) through the router straight to the client, and the sessions hang; with it (source port
// 25 from the backends → etd) they work. That is what this lab proves.
//
// Built on createLab() from netns.ts: its gateway namespace is the router, its processes and
// namespaces are torn down by its destroy(). The etd namespace is added here, named like the
// lab's own (etdg<pid36>-<id>e, matching netns.ts's stale-lab pattern) so a lab left behind by a
// SIGKILLed run is deleted by the next createLab() together with its siblings, and it is deleted
// by destroy() and on process exit like them.

import { execFileSync } from 'node:child_process';
import { createLab, type ExecResult, type Lab, type LabProcesses, registerSyncCleanup, run } from './netns.js';

/** The PBR lab: the shared process API plus its own topology; destroy() covers all four namespaces. */
export interface PbrLab extends LabProcesses {
  /** The underlying three-namespace lab; its gateway is the router. */
  readonly lab: Lab;
  readonly id: string;
  readonly x: number;
  readonly ns: { readonly client: string; readonly router: string; readonly backend: string; readonly etd: string };
  readonly v4: PbrAddresses;
  readonly v6: PbrAddresses;
  readonly ifaces: {
    readonly client: string;
    readonly routerToClient: string;
    readonly routerToBackend: string;
    readonly routerToEtd: string;
    readonly etd: string;
    readonly backend: string;
  };
}

export interface PbrAddresses {
  readonly client: string;
  readonly routerClientSide: string;
  readonly routerBackendSide: string;
  readonly routerEtdSide: string;
  readonly etd: string;
  readonly backends: readonly [string, string];
  /** The backends' subnet (what the router's policy route selects). */
  readonly backendNet: string;
}

export async function createPbrLab(): Promise<PbrLab> {
  const lab = await createLab();
  const { x } = lab;
  const etdNs = `etdg${lab.id}e`;
  const ifaces = {
    client: lab.ifaces.client,
    routerToClient: lab.ifaces.gatewayToClient,
    routerToBackend: lab.ifaces.gatewayToBackend,
    routerToEtd: 'veth-ge',
    etd: 'veth-e',
    backend: lab.ifaces.backend,
  } as const;
  const v4: PbrAddresses = {
    client: lab.v4.client,
    routerClientSide: lab.v4.gatewayClientSide,
    routerBackendSide: lab.v4.gatewayBackendSide,
    routerEtdSide: `10.${x}.3.1`,
    etd: `10.${x}.3.2`,
    backends: lab.v4.backends,
    backendNet: `10.${x}.2.0/24`,
  };
  const v6: PbrAddresses = {
    client: lab.v6.client,
    routerClientSide: lab.v6.gatewayClientSide,
    routerBackendSide: lab.v6.gatewayBackendSide,
    routerEtdSide: `fd00:${x}:3::1`,
    etd: `fd00:${x}:3::2`,
    backends: lab.v6.backends,
    backendNet: `fd00:${x}:2::/64`,
  };
  const router = lab.ns.gateway;

  let created = false;
  let destroyed = false;
  registerSyncCleanup(() => {
    if (!created || destroyed) return;
    try {
      execFileSync('ip', ['netns', 'del', etdNs], { stdio: 'ignore', timeout: 5000 });
    } catch {
      // already deleted
    }
  });
  let destroying: Promise<void> | undefined;
  const destroy = (): Promise<void> => {
    destroying ??= (async () => {
      // The lab kills every process it spawned (also those in the etd namespace) before deleting namespaces.
      await lab.destroy();
      if (created) await run('ip', ['netns', 'del', etdNs], { allowFailure: true });
      destroyed = true;
    })();
    return destroying;
  };

  try {
    await run('ip', ['netns', 'add', etdNs]);
    created = true;
    await lab.exec(etdNs, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
    await run('ip', ['-n', etdNs, 'link', 'set', 'lo', 'up']);
    await run('ip', ['link', 'add', ifaces.etd, 'netns', etdNs, 'type', 'veth', 'peer', 'name', ifaces.routerToEtd, 'netns', router]);
    // etd forwards like a real deployment would (replies of sessions that bypass it), and uses
    // loose reverse-path filtering, the mode docs/routing.md recommends.
    await lab.exec(etdNs, 'sysctl', [
      '-q',
      '-w',
      'net.ipv4.ip_forward=1',
      'net.ipv6.conf.all.forwarding=1',
      'net.ipv4.conf.all.rp_filter=2',
      'net.ipv4.conf.default.rp_filter=2',
    ]);
    const batch = (name: string, lines: string[]): Promise<ExecResult> =>
      run('ip', ['-n', name, '-batch', '-'], { input: `${lines.join('\n')}\n` });
    await batch(etdNs, [
      `addr add ${v4.etd}/24 dev ${ifaces.etd}`,
      `addr add ${v6.etd}/64 dev ${ifaces.etd} nodad`,
      `link set ${ifaces.etd} up`,
      `route add default via ${v4.routerEtdSide}`,
      `route add ::/0 via ${v6.routerEtdSide}`,
    ]);
    await batch(router, [
      `addr add ${v4.routerEtdSide}/24 dev ${ifaces.routerToEtd}`,
      `addr add ${v6.routerEtdSide}/64 dev ${ifaces.routerToEtd} nodad`,
      `link set ${ifaces.routerToEtd} up`,
    ]);
    // etd's spoofed SYNs arrive on this link with client source addresses whose route is another
    // interface: strict rp_filter would drop them; loose (2) is the documented setting.
    await lab.exec(router, 'sysctl', ['-q', '-w', `net.ipv4.conf.${ifaces.routerToEtd}.rp_filter=2`]);
  } catch (e) {
    await destroy();
    throw e;
  }

  return {
    lab,
    id: lab.id,
    x,
    ns: { client: lab.ns.client, router, backend: lab.ns.backend, etd: etdNs },
    v4,
    v6,
    ifaces,
    exec: (ns, cmd, args, opts) => lab.exec(ns, cmd, args, opts),
    spawn: (ns, cmd, args, opts) => lab.spawn(ns, cmd, args, opts),
    spawnJson: (ns, cmd, args, opts) => lab.spawnJson(ns, cmd, args, opts),
    startRecorder: (ns, listens, opts) => lab.startRecorder(ns, listens, opts),
    destroy,
  };
}
