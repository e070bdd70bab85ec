// A real DNS server for the lab: Debian's unbound, started in a namespace, serving DNSBL/DNSWL test zones (tests, demo, bench).
//
// Zones are unbound `local-zone`/`local-data` records. A `dead` zone is a stub zone whose server
// is a UDP socket that reads and never answers, so unbound's queries for it get no reply in
// time. Started with `-d` (no daemon, no chroot, no user switch): the lab kills it by its pid.

import { type ChildProcess, spawn as spawnChild } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { queryName } from '../src/reputation/query.js';
import { type ExecOptions, type ExecResult, type LabProcesses, run } from './netns.js';

export interface TestZone {
  /** The zone, e.g. bl3.test. */
  readonly zone: string;
  /** Client address → the A record the zone answers for it. */
  readonly listed?: Readonly<Record<string, string>>;
  /** Answer this address for every name in the zone (e.g. 127.255.255.254: a refused query). */
  readonly everyName?: string;
  /** The zone's server never answers. */
  readonly dead?: boolean;
}

/** Where unbound and its helpers run: a lab namespace, or this host (unprivileged, on loopback). */
export interface Runner {
  spawn(cmd: string, args: readonly string[]): ChildProcess;
  exec(cmd: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
}

export function inNamespace(lab: LabProcesses, ns: string): Runner {
  return { spawn: (cmd, args) => lab.spawn(ns, cmd, args), exec: (cmd, args, o) => lab.exec(ns, cmd, args, o) };
}

/** On this host: the caller stops what it started (stop() does, by pid). */
export const onHost: Runner = {
  spawn: (cmd, args) => spawnChild(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
  exec: (cmd, args, o) => run(cmd, args, o),
};

export interface RunningUnbound {
  /** Where it answers. */
  readonly address: string;
  readonly port: number;
  /** `address` or `address:port`, as reputation.resolvers takes it. */
  readonly server: string;
  readonly conf: string;
  /** Ends unbound and the dead zone's socket (by pid), removes the files. */
  stop(): Promise<void>;
}

/** The silent server of dead zones: a UDP socket that never answers. */
const SILENT = `const u=require('dgram').createSocket('udp4').on('message',()=>{});u.bind(0,'127.0.0.1',()=>console.log(JSON.stringify({event:'ready',port:u.address().port})))`;

export function unboundConf(dir: string, addresses: readonly string[], zones: readonly TestZone[], silentPort: number, port = 53): string {
  const lines = [
    'server:',
    ...addresses.map((a) => `  interface: ${a}`),
    `  port: ${port}`,
    '  access-control: 0.0.0.0/0 allow',
    '  access-control: ::/0 allow',
    '  chroot: ""',
    '  username: ""',
    `  directory: "${dir}"`,
    `  pidfile: "${path.join(dir, 'unbound.pid')}"`,
    '  do-daemonize: no',
    '  use-syslog: no',
    '  logfile: ""',
    '  verbosity: 0',
    '  do-ip4: yes',
    '  do-ip6: yes',
    '  module-config: "iterator"',
    '  do-not-query-localhost: no',
    '  num-threads: 1',
    // Lookups must reach unbound every time (the tests count etd's own cache, not unbound's).
    '  msg-cache-size: 1m',
    '  rrset-cache-size: 1m',
  ];
  const stubs: string[] = [];
  for (const z of zones) {
    if (z.dead) {
      // unbound serves test. (RFC 6761) as a static local zone by default: that would answer NXDOMAIN before the stub.
      if (z.zone.endsWith('.test')) lines.push('  local-zone: "test." nodefault');
      stubs.push('stub-zone:', `  name: "${z.zone}."`, `  stub-addr: 127.0.0.1@${silentPort}`, '  stub-first: no');
      continue;
    }
    if (z.everyName) {
      lines.push(`  local-zone: "${z.zone}." redirect`, `  local-data: "${z.zone}. 300 IN A ${z.everyName}"`);
      continue;
    }
    lines.push(`  local-zone: "${z.zone}." static`);
    for (const [client, answer] of Object.entries(z.listed ?? {}))
      lines.push(`  local-data: "${queryName(client, z.zone)}. 300 IN A ${answer}"`);
  }
  return `${[...lines, ...stubs].join('\n')}\n`;
}

/**
 * Starts unbound on `address`:`port` (default 53; 0 = a free port, tried again if another
 * process takes it first) with the zones; resolves once it answers.
 */
export async function startUnbound(
  runner: Runner,
  address: string,
  zones: readonly TestZone[],
  opts: { port?: number; timeoutMs?: number } = {},
): Promise<RunningUnbound> {
  for (let attempt = 1; ; attempt++) {
    const port = opts.port === 0 ? 20_000 + Math.floor(Math.random() * 30_000) : (opts.port ?? 53);
    try {
      return await startOnce(runner, address, zones, port, opts.timeoutMs ?? 10_000);
    } catch (e) {
      if (opts.port !== 0 || attempt >= 5 || !/Address already in use/.test(String(e))) throw e;
    }
  }
}

async function startOnce(
  runner: Runner,
  address: string,
  zones: readonly TestZone[],
  port: number,
  timeoutMs: number,
): Promise<RunningUnbound> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-unbound-'));
  const conf = path.join(dir, 'unbound.conf');
  const silent = zones.some((z) => z.dead) ? runner.spawn(process.execPath, ['-e', SILENT]) : undefined;
  let silentPort = 0;
  if (silent) {
    silentPort = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("the dead zone's silent socket did not start")), timeoutMs);
      silent.stdout?.once('data', (d: Buffer) => {
        clearTimeout(t);
        resolve((JSON.parse(d.toString()) as { port: number }).port);
      });
    });
  }
  fs.writeFileSync(conf, unboundConf(dir, [address], zones, silentPort, port));
  const child = runner.spawn('unbound', ['-d', '-c', conf]);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const stop = async (): Promise<void> => {
    for (const p of [child, silent]) {
      if (p && p.exitCode === null && p.signalCode === null) {
        const exited = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
        if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const server = port === 53 ? address : address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
  // Ready when it answers a name of its own zones (any answer, NXDOMAIN included, means it is up).
  const probe = `const r=new (require('dns').promises.Resolver)({timeout:300,tries:1}); r.setServers([process.argv[1]]);
r.resolve4('probe.invalid').then(()=>process.exit(0),(e)=>process.exit(e.code==='ECONNREFUSED'||e.code==='ETIMEOUT'?1:0))`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`unbound exited with ${child.exitCode}: ${output.trim()}`);
    }
    const r = await runner.exec(process.execPath, ['-e', probe, server], { allowFailure: true, timeoutMs: 3000 });
    if (r.code === 0) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`unbound did not answer on ${server} within ${timeoutMs} ms: ${output.trim()}`);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  return { address, port, server, conf, stop };
}
