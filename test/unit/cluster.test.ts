// The cluster's pure parts: Redis options from the config, the key layout and message codec, the access reconcile, the link's warnings, and a peer's verdict on a held session.

import { describe, expect, it } from 'vitest';
import { decideShared, localState } from '../../src/cluster/attach.js';
import {
  decodeEvent,
  decodeVerdict,
  encodeEvent,
  encodeVerdict,
  eventChannel,
  reconcileAccess,
  sharedKey,
} from '../../src/cluster/keys.js';
import { type LinkEvent, type LinkState, linkStep } from '../../src/cluster/link.js';
import { parseEndpoint, reconnectDelay, redisOptions, redisWhere } from '../../src/cluster/options.js';
import { verdictLine } from '../../src/commands/doctor.js';
import type { ClusterConfig } from '../../src/config/schema.js';
import { redisFindings } from '../../src/doctor/checks.js';
import { AccessLists } from '../../src/policy/access.js';
import { ClientCache } from '../../src/policy/clientCache.js';
import { openStore } from '../../src/state/store.js';

const cluster = (redis: Partial<ClusterConfig['redis']>): ClusterConfig => ({
  redis: {
    url: undefined,
    sentinels: undefined,
    name: undefined,
    caFile: undefined,
    ca: undefined,
    keyPrefix: 'etd:',
    connectTimeoutMs: 2000,
    commandTimeoutMs: 500,
    ...redis,
  },
  syncIntervalMs: 5000,
});

describe('redis options', () => {
  it.each([
    ['redis://10.0.0.5', { host: '10.0.0.5', port: 6379, tls: false }],
    ['redis://:s%40cret@10.0.0.5:6380/2', { host: '10.0.0.5', port: 6380, tls: false, password: 's@cret', db: 2 }],
    ['rediss://etd:pw@redis.example:6390', { host: 'redis.example', port: 6390, tls: true, username: 'etd', password: 'pw' }],
    ['redis://[2001:db8::5]:6379', { host: '2001:db8::5', port: 6379, tls: false }],
  ])('%s', (url, want) => expect(parseEndpoint(url, 6379, false)).toEqual(want));

  it.each([
    ['10.0.0.5:26379', { host: '10.0.0.5', port: 26379, tls: false }],
    ['[2001:db8::7]:26380', { host: '2001:db8::7', port: 26380, tls: false }],
    ['sentinel.example', { host: 'sentinel.example', port: 26379, tls: false }],
  ])('sentinel %s', (text, want) => expect(parseEndpoint(text, 26379, true)).toEqual(want));

  it('a URL: auth, TLS, db, prefix and timeouts; never queued while down; reconnects for ever', () => {
    const o = redisOptions(cluster({ url: 'rediss://etd:pw@10.0.0.5:6390/1', keyPrefix: 'mx:' }));
    expect(o).toMatchObject({
      host: '10.0.0.5',
      port: 6390,
      username: 'etd',
      password: 'pw',
      db: 1,
      tls: {},
      keyPrefix: 'mx:',
      connectTimeout: 2000,
      commandTimeout: 500,
      enableOfflineQueue: false,
    });
    expect(o.sentinels).toBeUndefined();
    expect(o.retryStrategy?.(1000)).toBe(5000);
  });

  it('sentinels: the master name, the sentinel password and TLS from their URLs, the master auth from url', () => {
    const o = redisOptions(
      cluster({ sentinels: ['rediss://:spw@10.0.0.7:26379', '10.0.0.8'], name: 'mymaster', url: 'rediss://:mpw@mymaster' }),
    );
    expect(o).toMatchObject({
      sentinels: [
        { host: '10.0.0.7', port: 26379 },
        { host: '10.0.0.8', port: 26379 },
      ],
      name: 'mymaster',
      sentinelPassword: 'spw',
      sentinelTLS: {},
      password: 'mpw',
      tls: {},
      enableTLSForSentinelMode: true,
    });
    expect(o.host).toBeUndefined();
  });

  it('backoff: 100 ms doubling to 5 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 50].map(reconnectDelay)).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000]);
  });

  it('where: never the password', () => {
    expect(redisWhere(cluster({ url: 'redis://:secret@10.0.0.5:6379' }))).toBe('redis://10.0.0.5:6379');
    expect(redisWhere(cluster({ sentinels: ['redis://:secret@10.0.0.7:26379'], name: 'm' }))).toBe('sentinel m via redis://10.0.0.7:26379');
    // Through urlWithoutCredentials: the user name goes too, and a raw "@" in the password leaves nothing of it.
    expect(redisWhere(cluster({ url: 'rediss://etd:s%40cret@redis.example:6380/2' }))).toBe('rediss://redis.example:6380/2');
    expect(redisWhere(cluster({ url: 'redis://etd:p@ss@10.0.0.5:6379' }))).toBe('redis://10.0.0.5:6379');
    expect(redisWhere(cluster({ sentinels: ['10.0.0.8:26379', 'redis://u:pw@10.0.0.9:26379'], name: 'm' }))).toBe(
      'sentinel m via 10.0.0.8:26379, redis://10.0.0.9:26379',
    );
  });
});

describe('key layout and messages', () => {
  it('one namespace per kind; the channel carries the prefix itself', () => {
    expect(sharedKey('cache', '192.0.2.1')).toBe('cache:192.0.2.1');
    expect(eventChannel('etd:')).toBe('etd:events');
  });

  it('round-trips an access event; refuses what is not one', () => {
    const e = { from: 'gw1', kind: 'access' as const, cidr: '192.0.2.0/24', list: 'deny' as const };
    expect(decodeEvent(encodeEvent(e))).toEqual(e);
    expect(decodeEvent(encodeEvent({ ...e, list: undefined }))).toEqual({ ...e, list: undefined });
    for (const bad of [
      '',
      'x',
      '{}',
      '{"from":"a","kind":"access","cidr":"1.2.3.4/32","list":"maybe"}',
      '{"from":"a","kind":"dnsbl","cidr":"1"}',
      'null',
    ]) {
      expect(decodeEvent(bad)).toBeUndefined();
    }
  });
});

describe('cached verdicts carry their expiry', () => {
  it.each([
    [encodeVerdict('pass', 2000), 1000, { kind: 'pass', expires: 2000 }],
    [encodeVerdict('deny', 2000), 1000, { kind: 'deny', expires: 2000 }],
    [encodeVerdict('pass', 2000), 2000, undefined],
    ['pass', 1000, undefined],
    ['maybe:5000', 1000, undefined],
    [null, 1000, undefined],
    [42, 1000, undefined],
  ])('%s at %s', (value, now, want) => expect(decodeVerdict(value, now)).toEqual(want));
});

describe('reconcileAccess', () => {
  const lists = (o: Record<string, 'allow' | 'deny'>) => new Map(Object.entries(o).map(([k, list]) => [k, { list }]));
  const local = new Map([
    ['192.0.2.0/24', 'deny' as const],
    ['198.51.100.7/32', 'allow' as const],
    ['203.0.113.0/24', 'deny' as const],
  ]);
  it('adds, changes and removes to match the shared hash', () => {
    const shared = lists({ '192.0.2.0/24': 'deny', '198.51.100.7/32': 'deny', '10.9.0.0/16': 'allow' });
    expect(reconcileAccess(local, shared)).toEqual([
      { cidr: '198.51.100.7/32', list: 'deny' },
      { cidr: '10.9.0.0/16', list: 'allow' },
      { cidr: '203.0.113.0/24', list: undefined },
    ]);
  });
  it('leaves prefixes changed here since the read alone', () => {
    const shared = lists({ '192.0.2.0/24': 'allow', '198.51.100.7/32': 'allow' });
    expect(reconcileAccess(local, shared, new Set(['192.0.2.0/24', '203.0.113.0/24']))).toEqual([]);
  });
});

describe('localState: a sync applied in parts', () => {
  const quiet = { warn: () => undefined, info: () => undefined, debug: () => undefined };
  it('the lists at once, the store by its end as the lists then hold it, the workers and the log once', () => {
    const store = openStore(':memory:', quiet);
    const access = new AccessLists({ allow: [], deny: [] });
    const cache = new ClientCache({ enabled: true, ttlMs: 1000, denyTtlMs: 1000, scope: 'ip' }, store);
    const infos: string[] = [];
    const local = localState(cache, access, store, { ...quiet, info: (_o, m) => void infos.push(m) });
    let changes = 0;
    access.onChange = () => changes++;
    local.applyAccessBatch(
      [
        { cidr: '192.0.2.0/24', list: 'deny' },
        { cidr: '198.51.100.0/24', list: 'deny' },
      ],
      false,
    );
    expect(access.match('192.0.2.1')?.list).toBe('deny');
    expect(changes).toBe(0);
    // An operator's change meanwhile (the API writes the lists and the store at once).
    access.add('192.0.2.0/24', 'allow');
    store.putAccess('192.0.2.0/24', 'allow');
    changes = 0;
    local.applyAccessBatch([{ cidr: '203.0.113.0/24', list: 'deny' }], true);
    expect(changes).toBe(1);
    expect(infos.filter((m) => /synced from the cluster/.test(m))).toEqual(['access entries synced from the cluster: 3 added, 0 deleted']);
    // The sync's older value of 192.0.2.0/24 never reaches the store.
    expect(store.loadAccess().sort((a, b) => (a.cidr < b.cidr ? -1 : 1))).toEqual([
      { cidr: '192.0.2.0/24', list: 'allow' },
      { cidr: '198.51.100.0/24', list: 'deny' },
      { cidr: '203.0.113.0/24', list: 'deny' },
    ]);
    store.close();
  });
});

describe('link state: one warning each way', () => {
  const table: Array<[LinkState, LinkEvent, boolean, ReturnType<typeof linkStep>]> = [
    ['connecting', 'ready', false, { state: 'up', info: 'connected' }],
    ['connecting', 'failed', false, { state: 'down', warn: 'unreachable' }],
    ['down', 'failed', false, { state: 'down' }],
    ['down', 'ready', false, { state: 'up', info: 'connected' }],
    ['up', 'lost', true, { state: 'down', warn: 'down' }],
    ['down', 'failed', true, { state: 'down' }],
    ['down', 'lost', true, { state: 'down' }],
    ['down', 'ready', true, { state: 'up', warn: 'up' }],
    ['up', 'ready', true, { state: 'up' }],
  ];
  it.each(table)('%s + %s (ever up: %s)', (state, event, everUp, want) => expect(linkStep(state, event, everUp)).toEqual(want));
});

describe("a peer's verdict on a held session", () => {
  const access = { allow: [], deny: [], denyAction: 'reject' as const, denyReply: '554 5.7.1 blocked' };
  it.each([
    ['pass', true, 'reject', { release: 'cluster_pass' }],
    ['deny', true, 'reject', { refuse: 'cluster_deny', how: { reply: '554 5.7.1 blocked' } }],
    ['deny', true, 'drop', { refuse: 'cluster_deny', how: { drop: true } }],
    ['pass', false, 'reject', undefined],
    ['deny', false, 'drop', undefined],
  ] as const)('%s while holding=%s (denyAction %s)', (kind, holding, denyAction, want) => {
    expect(decideShared(kind, holding, { ...access, denyAction })).toEqual(want);
  });
});

describe('doctor: cluster.redis', () => {
  it('OK, connect FAIL, write FAIL; never critical', () => {
    expect(redisFindings({})).toEqual([]);
    const okF = redisFindings({ redis: { where: 'redis://r:6379', keyPrefix: 'etd:', ms: 1.2 } });
    expect(okF).toMatchObject([{ id: 'cluster.redis', status: 'OK', critical: false }]);
    const down = redisFindings({ redis: { where: 'redis://r:6379', keyPrefix: 'etd:', stage: 'connect', error: 'connect ECONNREFUSED' } });
    expect(down).toMatchObject([{ status: 'FAIL', critical: false }]);
    expect(down[0]!.detail).toMatch(/ECONNREFUSED/);
    const ro = redisFindings({
      redis: { where: 'redis://r:6379', keyPrefix: 'etd:', stage: 'write', error: "READONLY You can't write against a read only replica." },
    });
    expect(ro[0]!.fix).toMatch(/ACL SETUSER/);
    expect(verdictLine(down)).toMatch(/would start and serve from its local state, but would not share it/);
  });
});
