// The HA-pair lab (docs/ha.md): two etd gateways behind one VIP, on two shared bridges.
//
//   client ns   10.x.1.2/24                 default via the client-side VIP 10.x.1.100
//   switch ns   bridges br-c (client side) and br-b (backend side); no addresses, no forwarding
//   gateway A   10.x.1.3 | 10.x.2.3         ip_forward=1; runs etd and keepalived
//   gateway B   10.x.1.4 | 10.x.2.4         ip_forward=1; runs etd and keepalived
//   backend ns  10.x.2.10, 10.x.2.11        default via the backend-side VIP 10.x.2.100
//
// The VIPs belong to no namespace until keepalived adds them on the master; the backends'
// replies to the client addresses etd spoofs follow the backend-side VIP to whichever gateway
// holds it. Built on createLab() like the PBR lab: its gateway namespace becomes the switch
// (its routed addresses removed), its processes and namespaces are torn down by its destroy();
// the two gateway namespaces are named like the lab's own (etdg<pid36>-<id>a|b, matching
// netns.ts's stale-lab pattern) and deleted by destroy() and on process exit too.

import { execFileSync } from 'node:child_process';
import { createLab, type ExecResult, type Lab, type LabProcesses, registerSyncCleanup, run } from './netns.js';

export type HaGateway = 'a' | 'b';

export interface HaLab extends LabProcesses {
  /** The underlying lab: its client and backend namespaces are this lab's; its gateway is the switch. */
  readonly lab: Lab;
  readonly id: string;
  readonly x: number;
  readonly ns: { readonly client: string; readonly backend: string; readonly switch: string; readonly a: string; readonly b: string };
  readonly v4: {
    readonly client: string;
    readonly backends: readonly [string, string];
    /** The address clients dial (client side) and the backends' default gateway (backend side). */
    readonly vipClient: string;
    readonly vipBackend: string;
    readonly a: { readonly clientSide: string; readonly backendSide: string };
    readonly b: { readonly clientSide: string; readonly backendSide: string };
    /** Prefix length of both subnets. */
    readonly prefix: 24;
  };
  /** Interface names inside each gateway namespace (the same in A and B). */
  readonly ifaces: { readonly clientSide: string; readonly backendSide: string };
}

export async function createHaLab(): Promise<HaLab> {
  const lab = await createLab({ backendDefaultRoute: false, clientDefaultRoute: false });
  const { x } = lab;
  const sw = lab.ns.gateway;
  const gw = { a: `etdg${lab.id}a`, b: `etdg${lab.id}b` } as const;
  const ifaces = { clientSide: 'eth-c', backendSide: 'eth-b' } as const;
  const v4 = {
    client: lab.v4.client,
    backends: lab.v4.backends,
    vipClient: `10.${x}.1.100`,
    vipBackend: `10.${x}.2.100`,
    a: { clientSide: `10.${x}.1.3`, backendSide: `10.${x}.2.3` },
    b: { clientSide: `10.${x}.1.4`, backendSide: `10.${x}.2.4` },
    prefix: 24,
  } as const;

  const created: string[] = [];
  let destroyed = false;
  registerSyncCleanup(() => {
    if (destroyed) return;
    for (const name of created) {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore', timeout: 5000 });
      } catch {
        // already deleted
      }
    }
  });
  let destroying: Promise<void> | undefined;
  const destroy = (): Promise<void> => {
    destroying ??= (async () => {
      // The lab kills every process it spawned (also those in A and B) before deleting namespaces.
      await lab.destroy();
      for (const name of created.splice(0)) await run('ip', ['netns', 'del', name], { allowFailure: true });
      destroyed = true;
    })();
    return destroying;
  };

  const batch = (name: string, lines: string[]): Promise<ExecResult> =>
    run('ip', ['-n', name, '-batch', '-'], { input: `${lines.join('\n')}\n` });

  try {
    // The lab's gateway becomes a plain switch: no routed addresses, no forwarding, two bridges.
    await lab.exec(sw, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0']);
    await batch(sw, [
      `addr flush dev ${lab.ifaces.gatewayToClient}`,
      `addr flush dev ${lab.ifaces.gatewayToBackend}`,
      'link add br-c type bridge',
      'link add br-b type bridge',
      `link set ${lab.ifaces.gatewayToClient} master br-c`,
      `link set ${lab.ifaces.gatewayToBackend} master br-b`,
      'link set br-c up',
      'link set br-b up',
    ]);
    await batch(lab.ns.client, [`route add default via ${v4.vipClient}`]);
    await batch(lab.ns.backend, [`route add default via ${v4.vipBackend}`]);

    for (const side of ['a', 'b'] as const) {
      const name = gw[side];
      await run('ip', ['netns', 'add', name]);
      created.push(name);
      await lab.exec(name, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
      await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
      await run('ip', ['link', 'add', `c-${side}`, 'netns', sw, 'type', 'veth', 'peer', 'name', ifaces.clientSide, 'netns', name]);
      await run('ip', ['link', 'add', `b-${side}`, 'netns', sw, 'type', 'veth', 'peer', 'name', ifaces.backendSide, 'netns', name]);
      await batch(sw, [
        `link set c-${side} master br-c`,
        `link set b-${side} master br-b`,
        `link set c-${side} up`,
        `link set b-${side} up`,
      ]);
      // A gateway forwards (like the single gateway of netns.ts) with reverse-path filtering off:
      // etd's spoofed SYNs leave with client source addresses that route via the other interface.
      await lab.exec(name, 'sysctl', [
        '-q',
        '-w',
        'net.ipv4.ip_forward=1',
        'net.ipv4.conf.all.rp_filter=0',
        'net.ipv4.conf.default.rp_filter=0',
      ]);
      await batch(name, [
        `addr add ${v4[side].clientSide}/${v4.prefix} dev ${ifaces.clientSide}`,
        `addr add ${v4[side].backendSide}/${v4.prefix} dev ${ifaces.backendSide}`,
        `link set ${ifaces.clientSide} up`,
        `link set ${ifaces.backendSide} up`,
      ]);
    }
  } catch (e) {
    await destroy();
    throw e;
  }

  return {
    lab,
    id: lab.id,
    x,
    ns: { client: lab.ns.client, backend: lab.ns.backend, switch: sw, a: gw.a, b: gw.b },
    v4,
    ifaces,
    exec: (ns, cmd, args, opts) => lab.exec(ns, cmd, args, opts),
    spawn: (ns, cmd, args, opts) => lab.spawn(ns, cmd, args, opts),
    spawnJson: (ns, cmd, args, opts) => lab.spawnJson(ns, cmd, args, opts),
    startRecorder: (ns, listens, opts) => lab.startRecorder(ns, listens, opts),
    destroy,
  };
}
