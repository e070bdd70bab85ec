// `npm run bench:cluster` (root): the cost of shared state over Redis — sessions/s with the cluster on against off in the same run, and a returning sender's banner on the other gateway.
//
// Lab: lab/netns.ts with its peer gateway. Gateway A (10.x.1.1) and gateway B (10.x.3.2) run
// etd in plain mode; smtp-sink (Postfix) is the backend and redis-server runs in the backend
// namespace. Client addresses: a /20 routed to the client namespace, so every session can be a
// first visit (no cache knows it: a local miss, so with the cluster on a Redis lookup runs beside
// the window and the pass is written to Redis).
//
// 1. sessions: etd A with the cluster off, then on, then off and on again (two rounds, so a
//    drifting machine shows up), each a fresh process and fresh addresses; sessions/s and CPU
//    ms per session; ratio on/off (target ≥ 0.95).
// 2. returning sender on the other gateway: addresses pass through A (first visit, the window),
//    then connect to B one after the other: connect-to-greeting time (target < 5 ms), next to
//    the backend's own banner (direct) and B's local pass-cache hit.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLab, type Lab } from '../lab/netns.js';
import { startRedis } from '../lab/redis.js';
import { CLI_PATH } from '../src/paths.js';
import { exited } from './benchLab.js';
import { cpuMs, type Distribution, distribution, sleep } from './procfs.js';

const HERE = path.dirname(new URL(import.meta.url).pathname);
const MAIL_LOAD = path.join(HERE, 'clients', 'mailLoad.js');
const BANNER = path.join(HERE, 'clients', 'bannerClient.js');
const WINDOW_MS = 100;
const PORT = 2525;
const SESSIONS = Number(process.env.ETD_BENCH_CLUSTER_SESSIONS ?? 2000);
const PARALLEL = 100;
const RETURNING = 50;

const say = (s: string) => process.stderr.write(`${s}\n`);

function config(dir: string, name: string, listen: string, lab: Lab, cluster: string | undefined): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(
    file,
    `listeners:
  - { name: smtp, address: ${listen}, port: ${PORT}, mode: plain, backlog: 4096 }
detection: { window: ${WINDOW_MS}ms, action: drop }
upstream:
  connectTimeout: 5s
  health: { enabled: false }
  servers:
    - { name: sink, address: ${lab.v4.backends[0]}, port: 25 }
limits: { maxConnections: 1000000, maxHeld: 1000000, perClient: 0 }
cache: { enabled: true, ttl: 1h }
api: { enabled: false }
state: { path: ":memory:" }
log: { level: info }
${cluster === undefined ? '' : `cluster:\n  redis: { url: "redis://${lab.v4.backends[1]}:6379", keyPrefix: "${cluster}" }\n`}`,
  );
  return file;
}

interface Etd {
  pid: number;
  stop(): Promise<void>;
}

async function startEtd(lab: Lab, ns: string, file: string, log: string, waitCluster: boolean): Promise<Etd> {
  const fd = fs.openSync(log, 'a');
  // ETD_BENCH_CLUSTER_PROFILE=DIR: a V8 CPU profile of each etd run lands there (where the time goes).
  const prof = process.env.ETD_BENCH_CLUSTER_PROFILE;
  const child = lab.spawn(ns, process.execPath, [...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []), CLI_PATH, 'run', '-c', file], {
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  const deadline = Date.now() + 20_000;
  const want = waitCluster ? 'cluster: connected to Redis' : '"msg":"etd started"';
  while (
    !(fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes(want) && fs.readFileSync(log, 'utf8').includes('"msg":"etd started"'))
  ) {
    if (child.exitCode !== null) throw new Error(`etd exited: ${fs.readFileSync(log, 'utf8').slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`etd not ready in 20 s: ${fs.readFileSync(log, 'utf8').slice(-2000)}`);
    await sleep(50);
  }
  return {
    pid: child.pid!,
    async stop() {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited(child);
      clearTimeout(t);
    },
  };
}

async function runJson<T>(lab: Lab, script: string, spec: unknown, timeoutMs: number): Promise<T> {
  const p = lab.spawnJson(lab.ns.client, process.execPath, [script, JSON.stringify(spec)]);
  try {
    return (await p.waitFor(() => true, timeoutMs)) as T;
  } finally {
    await p.stop(1000);
  }
}

interface SessionsRun {
  cluster: boolean;
  sessionsPerS: number;
  cpuMsPerSession: number;
  delivered: number;
  errors: string[];
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    say('bench:cluster needs root (network namespaces)');
    return 2;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-cluster-'));
  fs.chmodSync(dir, 0o777);
  const lab = await createLab({ peerGateway: true });
  const hard = setTimeout(() => {
    say('bench:cluster: 8-minute limit reached; stopping');
    void lab.destroy().finally(() => process.exit(3));
  }, 8 * 60_000);
  try {
    const peer = lab.peer!;
    // A /20 of client addresses (4,094) on the client, routed by the gateway.
    const net20 = `10.${lab.x}.16`;
    const addrs: string[] = [];
    for (let i = 0; i < 4094; i++) addrs.push(`10.${lab.x}.${16 + (((i + 1) >> 8) & 15)}.${(i + 1) & 255}`);
    await lab.exec(lab.ns.client, 'ip', ['-batch', '-'], {
      input: `${addrs.map((a) => `addr add ${a}/32 dev ${lab.ifaces.client}`).join('\n')}\n`,
      timeoutMs: 60_000,
    });
    await lab.exec(lab.ns.gateway, 'ip', ['route', 'add', `${net20}.0/20`, 'via', lab.v4.client]);
    for (const ns of [lab.ns.client, lab.ns.gateway, peer.ns]) {
      await lab.exec(ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=10000 65000', 'net.core.somaxconn=65535'], {
        allowFailure: true,
      });
    }
    lab.spawn(lab.ns.backend, 'smtp-sink', ['-u', 'nobody', '-m', '8192', `${lab.v4.backends[0]}:25`, '8192']);
    await startRedis(lab.v4.backends[1], 6379, (cmd, args) => lab.spawn(lab.ns.backend, cmd, args));
    say(
      `lab ${lab.id}: ${addrs.length} client addresses → gateway A ${lab.v4.gatewayClientSide} / gateway B ${peer.v4} → smtp-sink ${lab.v4.backends[0]}, redis ${lab.v4.backends[1]}`,
    );

    // ---- 1. sessions/s, cluster off and on, two rounds ------------------------------------------
    const per = Math.min(SESSIONS, Math.floor(addrs.length / 4));
    const runs: SessionsRun[] = [];
    let slice = 0;
    for (const cluster of [false, true, false, true]) {
      const tag = `s${slice}`;
      const sources = addrs.slice(slice * per, (slice + 1) * per);
      slice++;
      const etd = await startEtd(
        lab,
        lab.ns.gateway,
        config(dir, tag, lab.v4.gatewayClientSide, lab, cluster ? `bench${tag}:` : undefined),
        path.join(dir, `${tag}.log`),
        cluster,
      );
      try {
        const c0 = cpuMs(etd.pid);
        const r = await runJson<{ sessions: number; delivered: number; wallMs: number; errors: string[] }>(
          lab,
          MAIL_LOAD,
          { host: lab.v4.gatewayClientSide, port: PORT, sources, parallel: PARALLEL, timeoutMs: 15_000 },
          120_000,
        );
        const cpu = cpuMs(etd.pid) - c0;
        runs.push({
          cluster,
          sessionsPerS: r.sessions / (r.wallMs / 1000),
          cpuMsPerSession: cpu / r.sessions,
          delivered: r.delivered,
          errors: r.errors,
        });
        say(
          `sessions, cluster ${cluster ? 'on ' : 'off'}: ${r.sessions} first visits, ${PARALLEL} parallel, window ${WINDOW_MS} ms: ${(r.sessions / (r.wallMs / 1000)).toFixed(0)} sessions/s, etd CPU ${(cpu / r.sessions).toFixed(3)} ms/session, ${r.delivered} delivered${r.errors.length ? `; errors: ${r.errors.join('; ')}` : ''}`,
        );
      } finally {
        await etd.stop();
      }
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const on = runs.filter((r) => r.cluster);
    const off = runs.filter((r) => !r.cluster);
    const ratio = mean(on.map((r) => r.sessionsPerS)) / mean(off.map((r) => r.sessionsPerS));
    const cpuRatio = mean(on.map((r) => r.cpuMsPerSession)) / mean(off.map((r) => r.cpuMsPerSession));

    // ---- 2. returning sender on the other gateway ---------------------------------------------
    const prefix = 'benchret:';
    const a = await startEtd(
      lab,
      lab.ns.gateway,
      config(dir, 'ret-a', lab.v4.gatewayClientSide, lab, prefix),
      path.join(dir, 'ret-a.log'),
      true,
    );
    const b = await startEtd(lab, peer.ns, config(dir, 'ret-b', peer.v4, lab, prefix), path.join(dir, 'ret-b.log'), true);
    let otherGateway: Distribution;
    let localHit: Distribution;
    let direct: Distribution;
    try {
      const sources = addrs.slice(-RETURNING);
      const spec = (host: string, port: number, parallel: boolean) => ({ host, port, sources, rounds: 1, parallel, timeoutMs: 10_000 });
      type Samples = { samples: number[]; errors: string[] };
      const first = await runJson<Samples>(lab, BANNER, spec(lab.v4.gatewayClientSide, PORT, true), 30_000);
      if (first.samples.length !== RETURNING) throw new Error(`first visits through A: ${first.errors.join('; ')}`);
      await sleep(200); // the passes are written to Redis within a few ms (batched)
      const viaB = await runJson<Samples>(lab, BANNER, spec(peer.v4, PORT, false), 60_000);
      const again = await runJson<Samples>(lab, BANNER, spec(peer.v4, PORT, false), 60_000);
      const backend = await runJson<Samples>(lab, BANNER, spec(lab.v4.backends[0], 25, false), 60_000);
      // The first sample of each client process pays for a cold process: left out.
      otherGateway = distribution(viaB.samples.slice(1));
      localHit = distribution(again.samples.slice(1));
      direct = distribution(backend.samples.slice(1));
      const released = fs
        .readFileSync(path.join(dir, 'ret-b.log'), 'utf8')
        .split('\n')
        .filter((l) => l.includes('"released":"cluster_pass"')).length;
      say(`returning sender on B after a pass on A: ${released} of ${RETURNING} released by the cluster`);
    } finally {
      await b.stop();
      await a.stop();
    }

    const f = (d: Distribution) => `median ${d.median.toFixed(2)} ms, p90 ${d.p90.toFixed(2)} ms, max ${d.max.toFixed(2)} ms (n ${d.n})`;
    process.stdout.write(
      [
        '',
        `etd cluster benchmark (${new Date().toISOString()}, ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(2)})`,
        `sessions/s, cluster on:  ${on.map((r) => r.sessionsPerS.toFixed(0)).join(', ')} (CPU ${on.map((r) => r.cpuMsPerSession.toFixed(3)).join(', ')} ms/session)`,
        `sessions/s, cluster off: ${off.map((r) => r.sessionsPerS.toFixed(0)).join(', ')} (CPU ${off.map((r) => r.cpuMsPerSession.toFixed(3)).join(', ')} ms/session)`,
        `ratio on/off: ${ratio.toFixed(3)} sessions/s (target ≥ 0.95), ${cpuRatio.toFixed(3)} CPU per session`,
        `returning sender, banner through the other gateway: ${f(otherGateway)} (target < 5 ms)`,
        `  the same through its local pass cache:               ${f(localHit)}`,
        `  the backend's own banner, direct:                    ${f(direct)}`,
        '',
      ].join('\n'),
    );
    return ratio >= 0.95 && otherGateway.median < 5 ? 0 : 1;
  } finally {
    clearTimeout(hard);
    await lab.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    say(`bench:cluster failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exit(1);
  },
);
