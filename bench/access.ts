// Benchmark: 100,000 runtime access entries synced from a real redis-server into a running App (API latency meanwhile), and the per-connection match cost at 100,000 entries vs none.
//
// Run: npm run bench:access   (or: node dist/bench/access.js [N])
// cluster.redis.commandTimeout stays at its default (500ms): the sync reads the hash with HSCAN, a few
// thousand fields per command.
// Starts its own redis-server on a free loopback port in a temp dir (no persistence) and ends it by PID.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import pino from 'pino';
import { freePort, startRedis } from '../lab/redis.js';
import { startApi } from '../src/api/server.js';
import { App } from '../src/app.js';
import { type Address, parseAddress } from '../src/config/cidr.js';
import { validateConfig } from '../src/config/load.js';
import { AccessLists } from '../src/policy/access.js';

const N = Number(process.argv[2] ?? 100_000);

/** Entry i, in the canonical spelling peers write (a non-canonical field flaps: see the report): a mix of IPv4 /32, /24 and IPv6 /48, /64 prefixes (what an operator's block list holds). */
function entry(i: number): string {
  switch (i % 4) {
    case 0:
      return `10.${(i >>> 16) & 0xff}.${(i >>> 8) & 0xff}.${i & 0xff}/32`;
    case 1:
      return `${100 + ((i >>> 16) & 0x3f)}.${(i >>> 8) & 0xff}.${i & 0xff}.0/24`;
    case 2:
      return `2001:db8:${((i >>> 2) + 1).toString(16)}::/48`;
    default:
      return `2001:db9:${((i >>> 16) & 0xffff).toString(16)}:${(i & 0xffff).toString(16)}::/64`;
  }
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

async function syncBench(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-access-'));
  const port = await freePort();
  const redis = await startRedis('127.0.0.1', port);
  const peer = new Redis({ host: '127.0.0.1', port });
  const config = validateConfig({
    workers: 1,
    listeners: [{ name: 'bench', address: '127.0.0.1', port: 0 }],
    upstream: { servers: [{ name: 'b', address: '127.0.0.1', port: 9 }], health: { enabled: false } },
    state: { path: path.join(dir, 'state.db') },
    api: { enabled: false },
    cluster: { redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: 'bench:' }, syncInterval: '250ms' },
  });
  const app = new App(config, pino({ level: 'warn' }));
  await app.start();
  const api = await startApi(
    { enabled: true, address: '127.0.0.1', port: 0, token: undefined },
    { app, version: 'bench', log: pino({ level: 'silent' }), reload: async () => undefined, options: { processMetrics: false } },
  );
  try {
    while (!app.cluster?.up) await new Promise((r) => setTimeout(r, 20));
    // Setup (not measured): the entries written to the shared hash, 10,000 per HSET, in one MULTI.
    const multi = peer.multi();
    for (let i = 0; i < N; i += 10_000) {
      const fields: string[] = [];
      for (let j = i; j < Math.min(N, i + 10_000); j++) fields.push(entry(j), 'deny');
      multi.hset('bench:access:runtime', ...fields);
    }
    await multi.exec();
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    // The API answers throughout: one request after another, each timed.
    const lat: number[] = [];
    let done = false;
    const poller = (async () => {
      while (!done) {
        const s = performance.now();
        const r = await fetch(`${api.url}/v1/clients/10.0.0.1`);
        await r.arrayBuffer();
        lat.push(performance.now() - s);
      }
    })();
    while (app.access.runtimeSize < N) {
      if (performance.now() - t0 > 60_000) {
        done = true;
        throw new Error(`only ${app.access.runtimeSize} of ${N} entries after 60 s; cluster: ${JSON.stringify(app.cluster?.status())}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    done = true;
    await poller;
    console.log(
      `sync of ${N} entries from redis-server: applied ${ms.toFixed(0)} ms after the HSET (includes up to 250 ms until the next syncInterval read)`,
    );
    // CPU of this process meanwhile (the sync, the API and its client): what the wall time is made of on a loaded machine.
    console.log(
      `CPU used meanwhile: ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms; load average ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')} on ${os.availableParallelism()} CPUs`,
    );
    console.log(
      `API during the sync: ${lat.length} requests, p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms`,
    );
    // Then syncs with nothing changed (what every syncInterval costs at this size): the longest
    // event-loop stall over the next two, and the read (HSCAN round trips) of the last.
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    for (let k = 0; k < 2; k++) {
      const last: string | null | undefined = app.cluster?.status().lastSyncAt;
      while (app.cluster?.status().lastSyncAt === last) await new Promise((r) => setTimeout(r, 10));
    }
    h.disable();
    console.log(
      `steady syncs (${N} entries, nothing changed): read ${app.cluster?.status().lagMs} ms, longest event-loop stall ${(h.max / 1e6).toFixed(0)} ms`,
    );
    const t1 = performance.now();
    const local = app.access.list().length;
    console.log(`GET /v1/access listing ${local} entries: ${(performance.now() - t1).toFixed(0)} ms to sort (first call after a change)`);
  } finally {
    await api.close();
    await app.stop(200);
    peer.disconnect();
    await redis.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function matchBench(): void {
  const clients: string[] = [];
  for (let i = 0; i < 100_000; i++) {
    const r = (i * 2654435761) >>> 0;
    clients.push(
      i % 2
        ? `${(r >>> 24) & 0xff}.${(r >>> 16) & 0xff}.${(r >>> 8) & 0xff}.${r & 0xff}`
        : `2001:db8:${(r & 0xffff).toString(16)}::${(r >>> 16).toString(16)}`,
    );
  }
  const empty = new AccessLists({ allow: [], deny: [] });
  const full = new AccessLists({ allow: [], deny: [], maxEntries: N });
  let t = performance.now();
  full.applyBatch(Array.from({ length: N }, (_, i) => ({ cidr: entry(i), list: 'deny' as const })));
  console.log(`applyBatch of ${N} entries into AccessLists: ${(performance.now() - t).toFixed(0)} ms`);
  const run = (a: AccessLists): number => {
    let hits = 0;
    const t0 = performance.now();
    for (let k = 0; k < 3; k++) {
      for (const c of clients) {
        // What admission does per connection: parse once, then match.
        const p = parseAddress(c);
        if (typeof p !== 'string' && a.match(p as Address)) hits++;
      }
    }
    void hits;
    return ((performance.now() - t0) * 1000) / (clients.length * 3);
  };
  run(empty);
  run(full); // warm-up
  const e = run(empty);
  const f = run(full);
  console.log(
    `per-connection parse + match: empty list ${e.toFixed(2)} µs, ${N} entries ${f.toFixed(2)} µs (difference ${(f - e).toFixed(2)} µs)`,
  );
  // For comparison: net.BlockList with the same entries (no most-specific-wins semantics).
  const bl = new net.BlockList();
  t = performance.now();
  for (let i = 0; i < Math.min(N, 10_000); i++) {
    const [a, p] = entry(i).split('/');
    const fam = a!.includes(':') ? 'ipv6' : 'ipv4';
    if (p === undefined) bl.addAddress(a!, fam);
    else bl.addSubnet(a!, Number(p), fam);
  }
  const t0 = performance.now();
  const m = 2000;
  for (let i = 0; i < m; i++) {
    const c = clients[i]!;
    bl.check(c, c.includes(':') ? 'ipv6' : 'ipv4');
  }
  console.log(
    `net.BlockList at ${Math.min(N, 10_000)} entries: check ${(((performance.now() - t0) * 1000) / m).toFixed(1)} µs per address (grows with the list: a scan)`,
  );
}

if (!process.env.SKIP_MATCH) matchBench();
await syncBench();
