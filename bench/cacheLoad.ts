// Benchmark: how long etd's start takes to load a pass/deny cache of N entries (default 1,000,000) from the SQLite store.
//
// Run: npm run bench:cache [-- N]   (or: node dist/bench/cacheLoad.js [N])
// The store is filled directly through SQL in one transaction (that is setup, not what is measured);
// then the timed part is exactly what App.start does: open the store and ClientCache.load().

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ClientCache } from '../src/policy/clientCache.js';
import { openStore } from '../src/state/store.js';

const quiet = { warn: (o: object, m: string) => console.error(m, o), info: () => undefined };

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** Fills `file` with n entries: every 10th a deny, the rest pass; half IPv4 addresses, half IPv6 /64 keys. */
function fill(file: string, n: number, now: number): void {
  // openStore creates the schema, so the benchmark loads the same table layout etd writes.
  openStore(file, quiet).close();
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  const put = db.prepare('INSERT INTO cache (key, kind, expires) VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const key =
        i % 2 === 0
          ? `${10 + ((i >>> 24) & 0x7f)}.${(i >>> 16) & 0xff}.${(i >>> 8) & 0xff}.${i & 0xff}`
          : `2001:db8:${((i >>> 16) & 0xffff).toString(16)}:${(i & 0xffff).toString(16)}::/64`;
      put.run(key, i % 10 === 0 ? 1 : 0, now + 3_600_000 + (i % 86_400) * 1000);
    }
  })();
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
}

function main(): void {
  const n = Number(process.argv[2] ?? 1_000_000);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`usage: node dist/bench/cacheLoad.js [N]  (N a positive whole number, got ${JSON.stringify(process.argv[2])})`);
    process.exit(2);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-bench-cache-'));
  try {
    const file = path.join(dir, 'state.db');
    const now = Date.now();
    const t0 = performance.now();
    fill(file, n, now);
    const fillMs = performance.now() - t0;
    const size = fs.statSync(file).size;

    global.gc?.();
    const rss0 = process.memoryUsage().rss;
    const heap0 = process.memoryUsage().heapUsed;
    const t1 = performance.now();
    const store = openStore(file, quiet);
    const cache = new ClientCache({ enabled: true, ttlMs: 86_400_000, denyTtlMs: 3_600_000, scope: 'ip' }, store);
    const loaded = cache.load();
    const loadMs = performance.now() - t1;
    const rss1 = process.memoryUsage().rss;
    const heap1 = process.memoryUsage().heapUsed;

    // A sanity check that what was loaded answers lookups the way accept() asks.
    const probe = cache.lookup('10.0.0.0');
    store.close();

    if (loaded !== n || probe !== 'deny') {
      console.error(`FAIL: loaded ${loaded} of ${n} entries; lookup(10.0.0.0) = ${probe} (want deny)`);
      process.exitCode = 1;
    }
    const out = {
      entries: loaded,
      fileSize: mb(size),
      fillMs: Math.round(fillMs),
      loadMs: Math.round(loadMs),
      perEntryNs: Math.round((loadMs * 1e6) / n),
      rssDelta: mb(rss1 - rss0),
      heapDelta: mb(heap1 - heap0),
      node: process.version,
    };
    console.log(
      `cache load: ${loaded} entries in ${out.loadMs} ms (${out.perEntryNs} ns/entry), RSS +${out.rssDelta}, heap +${out.heapDelta}; file ${out.fileSize} filled in ${out.fillMs} ms`,
    );
    console.log(JSON.stringify(out));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
