// Issue 22 part 3: a large shared hash (20,000 fields, real redis-server) is read with HSCAN and applied in parts: applied completely, while timers and the API keep being served.

import type { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { App } from '../../src/app.js';
import { skipWithout } from '../helpers/privileged.js';
import { type RedisRig, startRedisRig } from '../helpers/redisRig.js';
import { waitFor } from '../helpers/wait.js';

const skip = skipWithout('redis-server', 'redis-server', 'access list sync over Redis (loopback)');
const PREFIX = 'as:';
const N = 20_000;

let rig: RedisRig;
let app: App;
let api: RedisRig['api'];
let peer: Redis;
/** Set when the suite ends: watchers of a failed test stop asking. */
let closing = false;

/** While `busy` holds: a timer re-armed each turn and one API request after another, each noting the runtime entries when it was served. */
function watch(busy: () => boolean): { timers: number[]; requests: number[]; done: Promise<void> } {
  const timers: number[] = [];
  const requests: number[] = [];
  const tick = (): void => {
    timers.push(app.access.runtimeSize);
    if (busy() && !closing) setTimeout(tick, 0);
  };
  setTimeout(tick, 0);
  const done = (async () => {
    while (busy() && !closing) {
      const r = await fetch(`${api.url}/v1/clients/10.0.0.1`);
      await r.arrayBuffer();
      expect(r.status).toBe(200);
      requests.push(app.access.runtimeSize);
    }
  })();
  return { timers, requests, done };
}

describe.skipIf(skip)('a large access hash synced from Redis (real redis-server)', () => {
  beforeAll(async () => {
    // The default command timeout: no single command of the sync comes near it (HSCAN).
    rig = await startRedisRig(PREFIX, pino({ level: 'warn' }));
    ({ app, api, peer } = rig);
  }, 30_000);

  afterAll(async () => {
    closing = true;
    await rig?.close();
  });

  it(`${N} fields are applied completely, and timers and the API are served while the sync is in progress`, async () => {
    let changes = 0;
    const before = app.access.onChange;
    app.access.onChange = () => {
      changes++;
      before?.();
    };
    const fields: string[] = [];
    for (let i = 0; i < N; i++)
      fields.push(i % 2 ? `10.${(i >> 8) & 0xff}.${i & 0xff}.0/24` : `2001:db8:${(i + 1).toString(16)}::/48`, 'deny');
    // Written first, then watched: nothing is applied until the next sync reads it.
    await peer.hset(`${PREFIX}access:runtime`, ...fields);
    const w = watch(() => app.access.runtimeSize < N);
    await waitFor(() => app.access.runtimeSize === N, { what: 'all entries', timeout: 30_000, interval: 5 }).catch((e: unknown) => {
      throw new Error(`${String(e)}: ${app.access.runtimeSize} applied; ${JSON.stringify(app.cluster!.status())}`);
    });
    await w.done;
    expect(app.access.match('10.78.31.200')?.list).toBe('deny');
    expect(app.access.match('2001:db8:4e1f::1')?.list).toBe('deny');
    // Served between two parts of the sync: some entries applied, not all yet.
    const during = (xs: number[]) => xs.filter((n) => n > 0 && n < N);
    expect(during(w.timers).length, `runtime entries seen by the timers: ${w.timers.join(',')}`).toBeGreaterThan(0);
    expect(during(w.requests).length, `runtime entries seen by the API: ${w.requests.join(',')}`).toBeGreaterThan(0);
    // Applied in parts, but the workers hear of each sync once. HSCAN is no snapshot: a sync that
    // was reading when the hash changed sees part of the change, and the next one the rest.
    expect(changes).toBeGreaterThanOrEqual(1);
    expect(changes).toBeLessThanOrEqual(2);
    expect(app.cluster!.status().errors.sync).toBe(0);
    // The store has them all too (written a few thousand per transaction, in key order).
    expect(app.store.loadAccess()).toHaveLength(N);

    // Deleted from the hash: the deletions go in parts too, and all of them arrive.
    changes = 0;
    await peer.del(`${PREFIX}access:runtime`);
    const gone = watch(() => app.access.runtimeSize > 0);
    await waitFor(() => app.access.runtimeSize === 0, { what: 'all gone', timeout: 30_000, interval: 5 });
    await gone.done;
    expect(during(gone.timers).length, `runtime entries seen by the timers: ${gone.timers.join(',')}`).toBeGreaterThan(0);
    expect(changes).toBeGreaterThanOrEqual(1);
    expect(changes).toBeLessThanOrEqual(2);
    expect(app.store.loadAccess()).toEqual([]);
    app.access.onChange = before;
  }, 60_000);
});
