// Privileged end-to-end tests of the etd_transparent addon in a netns lab: spoofed upstream connects, transparent listeners, error shapes.
//
// The divert/intercept recipe of DESIGN §3 is set up by hand here (table inet etdtest, nft CLI,
// ip rule/route), independent of src/netfilter, so these tests pin what the addon needs from
// the kernel. The addon runs in a plain-JS child (transparent-child.mjs) inside the gateway
// namespace, loading native/build/Release/etd_transparent.node directly.

import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, type JsonEvent, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import { skipPrivileged } from '../helpers/privileged.js';

const CHILD = fileURLToPath(new URL('./transparent-child.mjs', import.meta.url));
const ADDON = fileURLToPath(new URL('../../native/build/Release/etd_transparent.node', import.meta.url));

const DIVERT_MARK = '0x1';
const SOCKET_MARK = 2; // SO_MARK on the v4 upstream socket, counted by the output chain; must differ from the divert mark
const INTERCEPT_DPORT = 2526; // intercepted by TPROXY; port 25 stays for the recorder
const TPROXY_PORT = 10026;

const DIVERT_RULE = `meta l4proto tcp socket transparent 1 meta mark set ${DIVERT_MARK} accept`;

function ruleset(): string {
  return `
table inet etdtest {
  chain divert {
    type filter hook prerouting priority mangle; policy accept;
    ${DIVERT_RULE}
  }
  chain intercept {
    type filter hook prerouting priority mangle + 1; policy accept;
    fib daddr type local return
    tcp dport ${INTERCEPT_DPORT} tproxy ip to 127.0.0.1:${TPROXY_PORT} meta mark set ${DIVERT_MARK} accept
    tcp dport ${INTERCEPT_DPORT} tproxy ip6 to [::1]:${TPROXY_PORT} meta mark set ${DIVERT_MARK} accept
  }
  chain out {
    type filter hook output priority filter; policy accept;
    meta mark ${SOCKET_MARK} tcp dport 25 counter
  }
}
`;
}

type ChildCommand =
  | { mode: 'call'; fn: 'transparentSocket' | 'transparentListener' | 'closeFd'; args: unknown[] }
  | {
      mode: 'connect';
      family: 4 | 6;
      local: string;
      host: string;
      port: number;
      mark?: number;
      synCount?: number;
      smtp?: boolean;
      deferMs?: number;
      timeoutMs?: number;
    }
  | { mode: 'listen'; family: 4 | 6; address: string; port: number; backlog?: number }
  | { mode: 'dial'; host: string; port: number }
  | { mode: 'leak'; fn: 'transparentSocket' | 'transparentListener'; args: unknown[]; times: number }
  | { mode: 'close'; family: 4 | 6; local: string };

interface ErrorShape {
  name?: string;
  message?: string;
  code?: string;
  errno?: number;
  syscall?: string;
  address?: string;
  port?: number;
}

function str(e: JsonEvent, key: string): string {
  const v = e[key];
  if (typeof v !== 'string') throw new Error(`event ${JSON.stringify(e)} has no string ${key}`);
  return v;
}

function num(e: JsonEvent, key: string): number {
  const v = e[key];
  if (typeof v !== 'number') throw new Error(`event ${JSON.stringify(e)} has no number ${key}`);
  return v;
}

function errorOf(e: JsonEvent): ErrorShape {
  if (e.event !== 'error') throw new Error(`expected an error event, got ${JSON.stringify(e)}`);
  return e.error as ErrorShape;
}

describe.skipIf(skipPrivileged('netns transparent sockets'))('etd_transparent addon in a netns lab', () => {
  let lab: Lab | undefined;
  let recorder: JsonLineProcess;

  const L = (): Lab => {
    if (!lab) throw new Error('lab not created (see beforeAll failure)');
    return lab;
  };

  /** Runs transparent-child.mjs in `ns` and returns its last JSON event. */
  async function child(ns: string, command: ChildCommand, opts: { asNobody?: boolean; timeoutMs?: number } = {}): Promise<JsonEvent> {
    const argv = [CHILD, JSON.stringify(command)];
    const timeoutMs = opts.timeoutMs ?? 25_000;
    const res = opts.asNobody
      ? await L().exec(ns, 'setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, ...argv], {
          timeoutMs,
          allowFailure: true,
        })
      : await L().exec(ns, process.execPath, argv, { timeoutMs, allowFailure: true });
    const events = res.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as JsonEvent);
    const last = events.at(-1);
    if (!last || last.event === 'fatal') {
      throw new Error(`child ${JSON.stringify(command)} gave no result (exit ${res.code})\nstdout: ${res.stdout}\nstderr: ${res.stderr}`);
    }
    return last;
  }

  async function outCounter(): Promise<number> {
    const { stdout } = await L().exec(L().ns.gateway, 'nft', ['list', 'chain', 'inet', 'etdtest', 'out']);
    const m = /counter packets (\d+)/.exec(stdout);
    if (!m?.[1]) throw new Error(`no counter in:\n${stdout}`);
    return Number(m[1]);
  }

  beforeAll(async () => {
    if (!existsSync(ADDON)) throw new Error(`${ADDON} is missing: build it with node scripts/build-native.mjs`);
    lab = await createLab();
    const gw = lab.ns.gateway;
    await lab.exec(gw, 'nft', ['-f', '-'], { input: ruleset() });
    await lab.exec(gw, 'ip', ['rule', 'add', 'fwmark', DIVERT_MARK, 'lookup', '100']);
    await lab.exec(gw, 'ip', ['route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '100']);
    await lab.exec(gw, 'ip', ['-6', 'rule', 'add', 'fwmark', DIVERT_MARK, 'lookup', '100']);
    await lab.exec(gw, 'ip', ['-6', 'route', 'add', 'local', '::/0', 'dev', 'lo', 'table', '100']);
    recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v6.backends[0], port: 25 },
    ]);
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it.each([4, 6] as const)('IPv%i: connects from the client address; the backend records it as the peer', async (family) => {
    const lab = L();
    const net = family === 4 ? lab.v4 : lab.v6;
    const mark = family === 4 ? SOCKET_MARK : 0;
    const before = await outCounter();
    const res = await child(lab.ns.gateway, {
      mode: 'connect',
      family,
      local: net.client,
      host: net.backends[0],
      port: 25,
      mark,
      synCount: 2,
      smtp: true,
    });
    expect(res.event, JSON.stringify(res)).toBe('done');
    expect(str(res, 'localAddress')).toBe(net.client);
    const localPort = num(res, 'localPort');
    expect(localPort).toBeGreaterThan(0);
    expect(str(res, 'banner')).toMatch(/^220 /);
    expect(res.early).toEqual([]);

    const connect = await recorder.waitFor((e) => e.event === 'connect' && e.remotePort === localPort, 5000);
    expect(connect).toMatchObject({ remoteAddress: net.client, localAddress: net.backends[0], localPort: 25 });
    const sent = res.message as { size: number; sha256: string };
    const message = await recorder.waitFor(
      (e) => e.event === 'message' && e.sha256 === sent.sha256 && e.remoteAddress === net.client,
      5000,
    );
    expect(message).toMatchObject({
      size: sent.size,
      from: 'sender@lab.example.test',
      to: ['rcpt@lab.example.test'],
      localAddress: net.backends[0],
    });
    // SO_MARK: only the v4 socket carries the mark, and the output chain counts its packets.
    const after = await outCounter();
    if (mark) expect(after).toBeGreaterThan(before);
    else expect(after).toBe(before);
  });

  it('the documented pitfall: connect() deferred past an event-loop turn loses the fd and silently connects from the gateway', async () => {
    // Pins the Node behaviour that makes the same-turn rule in src/native/transparent.ts necessary.
    const lab = L();
    const res = await child(lab.ns.gateway, {
      mode: 'connect',
      family: 4,
      local: lab.v4.client,
      host: lab.v4.backends[0],
      port: 25,
      synCount: 2,
      deferMs: 50,
    });
    expect(res.early).toEqual([expect.objectContaining({ code: 'ENOTCONN', syscall: 'read' })]);
    expect(res.event, JSON.stringify(res)).toBe('done');
    expect(str(res, 'localAddress')).toBe(lab.v4.gatewayBackendSide);
  });

  it('without the divert rule a spoofed connect fails with ETIMEDOUT, bounded by TCP_SYNCNT', async () => {
    const lab = L();
    const gw = lab.ns.gateway;
    await lab.exec(gw, 'nft', ['flush', 'chain', 'inet', 'etdtest', 'divert']);
    try {
      const started = Date.now();
      // synCount 1: SYN + one retry, ETIMEDOUT after ~3 s (1 s + 2 s). The kernel default (6) would take ~127 s.
      const res = await child(gw, {
        mode: 'connect',
        family: 4,
        local: lab.v4.client,
        host: lab.v4.backends[0],
        port: 25,
        synCount: 1,
        timeoutMs: 15_000,
      });
      const elapsed = Date.now() - started;
      expect(errorOf(res)).toMatchObject({ code: 'ETIMEDOUT', syscall: 'connect' });
      expect(num(res, 'elapsedMs')).toBeGreaterThanOrEqual(2000);
      expect(num(res, 'elapsedMs')).toBeLessThan(8000);
      expect(elapsed).toBeLessThan(12_000);
    } finally {
      await lab.exec(gw, 'nft', ['add', 'rule', 'inet', 'etdtest', 'divert', ...DIVERT_RULE.split(' ')]);
    }
  });

  it.each([4, 6] as const)(
    'IPv%i: a transparent listener accepts a TPROXY-intercepted connection and sees the original destination',
    async (family) => {
      const lab = L();
      const net = family === 4 ? lab.v4 : lab.v6;
      const listener = lab.spawnJson(lab.ns.gateway, process.execPath, [
        CHILD,
        JSON.stringify({ mode: 'listen', family, address: family === 4 ? '127.0.0.1' : '::1', port: TPROXY_PORT, backlog: 8 }),
      ]);
      try {
        await listener.waitFor((e) => e.event === 'ready', 10_000);
        // The client dials the backend's address on a port nobody listens on there; the gateway intercepts it.
        const res = await child(lab.ns.client, { mode: 'dial', host: net.backends[1], port: INTERCEPT_DPORT });
        expect(res.event, JSON.stringify(res)).toBe('done');
        expect(str(res, 'banner')).toBe(`220 etd-lab-listener ${net.backends[1]} ${net.client}\r\n`);
        const accepted = await listener.waitFor((e) => e.event === 'accepted', 5000);
        expect(accepted).toMatchObject({
          localAddress: net.backends[1],
          localPort: INTERCEPT_DPORT,
          remoteAddress: net.client,
          remotePort: num(res, 'localPort'),
        });

        // The same address and port again: EADDRINUSE naming them.
        const dup = errorOf(
          await child(lab.ns.gateway, {
            mode: 'call',
            fn: 'transparentListener',
            args: [family, family === 4 ? '127.0.0.1' : '::1', TPROXY_PORT, 8],
          }),
        );
        const where = family === 4 ? `127.0.0.1:${TPROXY_PORT}` : `[::1]:${TPROXY_PORT}`;
        expect(dup).toMatchObject({ code: 'EADDRINUSE', errno: -98, syscall: 'bind', port: TPROXY_PORT });
        expect(dup.message).toContain(`${where} is already in use`);
        expect(dup.message).toContain('another process holds it');
      } finally {
        await listener.stop();
      }
    },
  );

  it.each([
    ['transparentSocket', 4, 'IP_TRANSPARENT'],
    ['transparentSocket', 6, 'IPV6_TRANSPARENT'],
    ['transparentListener', 4, 'IP_TRANSPARENT'],
  ] as const)('%s(v%i) as an unprivileged user: EPERM from setsockopt(%s) saying which capability', async (fn, family, opt) => {
    const lab = L();
    const address = family === 4 ? lab.v4.client : lab.v6.client;
    const args = fn === 'transparentSocket' ? [family, address, 0, 0] : [family, address, 2525, 8];
    const e = errorOf(await child(lab.ns.gateway, { mode: 'call', fn, args }, { asNobody: true }));
    expect(e).toMatchObject({ name: 'Error', code: 'EPERM', errno: -1, syscall: `setsockopt(${opt})` });
    expect(e.message).toBe(`setsockopt(${opt}): EPERM — etd needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant the capabilities)`);
  });

  it.each([
    [4, '10.1.2.300'],
    [4, 'fd00::1'],
    [6, '10.1.2.3'],
    [6, 'fe80::1%eth0'],
    [4, ''],
  ] as const)('transparentSocket(v%i, %j): EINVAL naming the address, no fd leaked', async (family, address) => {
    const lab = L();
    const e = errorOf(await child(lab.ns.gateway, { mode: 'call', fn: 'transparentSocket', args: [family, address, 0, 0] }));
    expect(e).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'inet_pton', address });
    expect(e.message).toContain(`"${address}" is not a valid IPv${family} address`);
  });

  it('closeFd closes a never-connected socket once; a second close is EBADF', async () => {
    const lab = L();
    const res = await child(lab.ns.gateway, { mode: 'close', family: 4, local: lab.v4.client });
    expect(res.event, JSON.stringify(res)).toBe('done');
    expect(num(res, 'open')).toBe(num(res, 'before') + 1);
    expect(num(res, 'closed')).toBe(num(res, 'before'));
    expect(res.again).toMatchObject({ code: 'EBADF', errno: -9, syscall: 'close' });
    expect((res.again as ErrorShape).message).toBe(
      `close fd ${num(res, 'fd')}: EBADF — the fd is not open (was it already closed or handed to Node?)`,
    );
  });

  it('error paths after socket() close their fd: EADDRINUSE (root) and EPERM (nobody) leak nothing', async () => {
    const lab = L();
    const gw = lab.ns.gateway;
    const holder = lab.spawnJson(gw, process.execPath, [
      CHILD,
      JSON.stringify({ mode: 'listen', family: 4, address: lab.v4.gatewayClientSide, port: 2599 }),
    ]);
    try {
      await holder.waitFor((e) => e.event === 'ready', 10_000);
      const inUse = await child(gw, { mode: 'leak', fn: 'transparentListener', args: [4, lab.v4.gatewayClientSide, 2599, 8], times: 200 });
      expect(inUse).toMatchObject({ event: 'done', codes: ['EADDRINUSE'], returned: 0 });
      expect(num(inUse, 'after')).toBe(num(inUse, 'before'));
    } finally {
      await holder.stop();
    }
    const denied = await child(
      gw,
      { mode: 'leak', fn: 'transparentSocket', args: [6, lab.v6.client, 0, 0], times: 200 },
      { asNobody: true },
    );
    expect(denied).toMatchObject({ event: 'done', codes: ['EPERM'], returned: 0 });
    expect(num(denied, 'after')).toBe(num(denied, 'before'));
  });
});
