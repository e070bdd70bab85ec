// The session's decisions against a recording fake of the engine: window, retries, refusals, verdicts, summaries, server counts, rollback.

import { describe, expect, it, vi } from 'vitest';
import type { Pool } from '../../src/backend/pool.js';
import { validateConfig } from '../../src/config/load.js';
import type { Engine } from '../../src/native/engine.js';
import { EngineDriver } from '../../src/proxy/engineDriver.js';
import type { EngineInspect } from '../../src/proxy/protocol.js';
import { Session } from '../../src/proxy/session.js';
import { upstreamFailureCause } from '../../src/proxy/verdict.js';
import { testSessionContext } from '../helpers/sessionContext.js';

type Call = [string, ...unknown[]];

interface FakeOptions {
  /** connect throws this for `address:port`. */
  connectThrows?: (target: string) => Error | undefined;
  holdThrows?: Error;
  holdReturns?: boolean;
  inspect?: EngineInspect | null;
}

/** Records every command (with its options object); hold/connect can be told to throw or refuse. */
function fakeEngine(calls: Call[], o: FakeOptions = {}): Engine {
  const rec =
    (name: string, ret: unknown = true) =>
    (...args: unknown[]) => {
      calls.push([name, ...args]);
      return ret;
    };
  return {
    start: rec('start', undefined),
    stop: rec('stop', undefined),
    defineProfile: rec('profile', undefined),
    listen: rec('listen', undefined),
    unlisten: rec('unlisten', undefined),
    hold: (id: number, h: unknown) => {
      calls.push(['hold', id, h]);
      if (o.holdThrows) throw o.holdThrows;
      return o.holdReturns ?? true;
    },
    connect: (id: number, c: { address: string; port: number }) => {
      calls.push(['connect', id, c]);
      const e = o.connectThrows?.(`${c.address}:${c.port}`);
      if (e) throw e;
      return true;
    },
    reply: (id: number, r: { text?: string; first?: string }) => {
      calls.push(['reply', id, r]);
      return Buffer.byteLength((r.first ?? '') + (r.text ?? ''));
    },
    drop: rec('drop'),
    close: rec('close'),
    inspect: () => o.inspect ?? null,
    counts: () => ({ connections: 0, held: 0, relaying: 0, listeners: 0, fds: 0, bufferedBytes: 0, deadlines: 0, callbackErrors: 0 }),
  } as unknown as Engine;
}

function setup(doc: Record<string, unknown> = {}, fake: FakeOptions = {}) {
  const config = validateConfig({
    listeners: [{ name: 'l', address: '127.0.0.1', port: 0 }],
    log: { level: 'silent' },
    state: { path: ':memory:' },
    detection: { window: '100ms' },
    upstream: {
      servers: [
        { name: 'a', address: '10.0.0.1' },
        { name: 'b', address: '10.0.0.2' },
      ],
      health: { enabled: false },
    },
    ...doc,
  });
  const calls: Call[] = [];
  const driver = new EngineDriver(fakeEngine(calls, fake));
  const events: string[] = [];
  const { ctx, pool, summaries } = testSessionContext(config, events);
  const conn = { eid: 7, family: 4 as const, peerAddress: '192.0.2.9', peerPort: 40000, localAddress: '127.0.0.1', localPort: 25 };
  return { calls, driver, pool, ctx, conn, summaries, events };
}

const server = (pool: Pool, name: string) => pool.list().find((s) => s.name === name)!;

describe('Session', () => {
  it('holds for the window, connects after it, relays after a 220 and summarises the relay end', () => {
    const { calls, driver, pool, ctx, conn, summaries, events } = setup();
    const s = new Session(driver, conn, ctx);
    s.begin();
    expect(calls.find((c) => c[0] === 'hold')).toEqual(['hold', 7, { windowMs: 100, profile: 0 }]);
    expect(s.phase).toBe('held');
    s.expired(101.2);
    const connect = calls.find((c) => c[0] === 'connect')!;
    expect(connect[1]).toBe(7);
    expect(connect[2]).toMatchObject({
      profile: 0,
      family: 4,
      sourceAddress: '',
      synCount: 0,
      address: '10.0.0.1',
      port: 25,
      timeoutMs: 5000,
    });
    expect(server(pool, 'a').active).toBe(1);
    s.greeted('220', 1.234, true);
    expect(s.phase).toBe('relaying');
    expect(events).toEqual([`started ${s.id}`, `relaying ${s.id}`]);
    s.ended('server_closed', 120, 340);
    expect(server(pool, 'a').active).toBe(0);
    expect(summaries).toHaveLength(1);
    expect(summaries[0]).toMatchObject({
      verdict: 'passed',
      cause: 'server_closed',
      server: 'a',
      serverAddress: '10.0.0.1:25',
      greeting: '220',
      connectMs: 1.23,
      attempts: 1,
      heldMs: 101,
      bytesFromClient: 120,
      bytesToClient: 340,
      client: '192.0.2.9:40000',
    });
  });

  it('an early talker is summarised with its evidence and frees its server when it talked while connecting', () => {
    const { driver, pool, ctx, conn, summaries } = setup({ detection: { window: '100ms', action: 'reject' } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    expect(server(pool, 'a').active).toBe(1);
    s.talkedEarly(130.456, Buffer.from('EHLO x\r\n'), 8, 'connecting', 0);
    expect(server(pool, 'a').active).toBe(0);
    expect(summaries[0]).toMatchObject({
      verdict: 'early_talker',
      cause: 'rejected',
      action: 'reject',
      talkedAfterMs: 130.46,
      talkedDuring: 'connecting',
      earlyBytes: 'EHLO x\\r\\n',
      bytesFromClient: 8,
    });
    // Later events for the same id change nothing.
    s.gone('client_closed');
    expect(summaries).toHaveLength(1);
  });

  it('a refused greeting tries the other server; when every server refused, the client gets the last refusal', () => {
    const { calls, driver, pool, ctx, conn, summaries } = setup();
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.greeted('421', 1, false);
    const connects = calls.filter((c) => c[0] === 'connect').map((c) => (c[2] as { address: string }).address);
    expect(connects).toEqual(['10.0.0.1', '10.0.0.2']);
    s.greeted('554', 1, false);
    expect(calls.at(-1)).toEqual(['reply', 7, { greeting: true, profile: 0 }]);
    expect(summaries[0]).toMatchObject({ verdict: 'passed', cause: 'server_greeting_554', attempts: 2 });
    expect(server(pool, 'a').active + server(pool, 'b').active).toBe(0);
  });

  it('connect failures (async and synchronous) retry, then 421 with the last failure as cause', () => {
    const refused = Object.assign(new Error('connect: ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const { calls, driver, ctx, conn, summaries } = setup({}, { connectThrows: (t) => (t === '10.0.0.2:25' ? refused : undefined) });
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.upstreamFailed('connect', 'ETIMEDOUT');
    // The second server threw synchronously; no server is left.
    expect(calls.at(-1)).toEqual(['reply', 7, { text: '421 4.3.2 Service not available, try again later\r\n', profile: 0 }]);
    expect(summaries[0]).toMatchObject({ verdict: 'no_server', cause: 'connect_refused', attempts: 2 });
  });

  it('an allow-listed client connects at once without a hold', () => {
    const { calls, driver, ctx, conn, summaries } = setup();
    const s = new Session(driver, conn, ctx, 'allowlist');
    s.begin();
    expect(calls.some((c) => c[0] === 'hold')).toBe(false);
    expect(calls.some((c) => c[0] === 'connect')).toBe(true);
    s.greeted('220', 0.5, true);
    s.ended('client_closed', 1, 2);
    expect(summaries[0]).toMatchObject({ skipped: 'allowlist', heldMs: 0, verdict: 'passed' });
  });

  it('shutdown answers a held client with 421; abort ends a relayed one', () => {
    const a = setup();
    const held = new Session(a.driver, a.conn, a.ctx);
    held.begin();
    held.shutdown();
    expect(a.calls.at(-1)).toEqual(['reply', 7, { text: '421 4.3.2 Service shutting down, try again later\r\n', profile: 0 }]);
    expect(a.summaries[0]).toMatchObject({ verdict: 'shutdown', cause: 'shutdown' });
    const b = setup();
    const relayed = new Session(b.driver, b.conn, b.ctx);
    relayed.begin();
    relayed.expired(100);
    relayed.greeted('220', 1, true);
    relayed.shutdown();
    expect(b.summaries).toHaveLength(0);
    relayed.abort('shutdown');
    expect(b.calls.at(-1)).toEqual(['close', 7, 'shutdown']);
    expect(b.summaries[0]).toMatchObject({ verdict: 'passed', cause: 'shutdown' });
    expect(server(b.pool, 'a').active).toBe(0);
  });

  it('maps the engine failure codes to the summary words', () => {
    expect(upstreamFailureCause('connect', 'ECONNREFUSED')).toBe('refused');
    expect(upstreamFailureCause('connect', 'ETIMEDOUT')).toBe('timeout');
    expect(upstreamFailureCause('connect', 'EHOSTUNREACH')).toBe('unreachable');
    expect(upstreamFailureCause('connect', 'EPROTO')).toBe('eproto');
    expect(upstreamFailureCause('greeting', 'EOF')).toBe('server_closed_before_greeting');
    expect(upstreamFailureCause('greeting', 'ETIMEDOUT')).toBe('server_greeting_timeout');
    expect(upstreamFailureCause('greeting', 'ECONNRESET')).toBe('server_reset_before_greeting');
  });

  it('action log: early talk is recorded, the session goes on and is relayed; no pass is earned', () => {
    const { calls, driver, ctx, conn, summaries, events } = setup({ detection: { window: '100ms', action: 'log' } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.talkedEarly(10, Buffer.from('EHLO x\r\n'), 8, 'held', 0);
    expect(summaries).toHaveLength(0);
    expect(s.talked).toBe(true);
    s.expired(100);
    expect(calls.some((c) => c[0] === 'connect')).toBe(true);
    s.greeted('220', 1, true);
    s.ended('client_closed', 50, 60);
    expect(events).toEqual([`started ${s.id}`, `relaying ${s.id}`]);
    expect(summaries[0]).toMatchObject({
      verdict: 'passed',
      action: 'log',
      talkedAfterMs: 10,
      talkedDuring: 'held',
      earlyBytes: 'EHLO x\\r\\n',
      cause: 'client_closed',
    });
  });

  it('talk while the greeting is read credits the connect to the server (passive health)', () => {
    const { driver, pool, ctx, conn } = setup({
      upstream: { servers: [{ name: 'a', address: '10.0.0.1' }], health: { enabled: false }, passiveFall: 2 },
    });
    const a = server(pool, 'a');
    pool.connectFailed(a, 'timeout');
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.talkedEarly(150, Buffer.from('Q'), 1, 'greeting', 0);
    // One failure then a success: the failure streak is reset, so one more failure does not take it down.
    pool.connectFailed(a, 'timeout');
    expect(a.state).toBe('up');
  });

  it('after a teaser a refusal is deferred: 220 completes the greeting first', () => {
    const { calls, driver, ctx, conn, summaries } = setup({ detection: { window: '100ms', teaser: '220-mx.example ESMTP' } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.greeted('421', 1, false);
    s.greeted('421', 1, false);
    expect(calls.at(-1)).toEqual(['reply', 7, { greeting: true, profile: 0, first: '220 mx.example ESMTP\r\n' }]);
    expect(summaries[0]).toMatchObject({ verdict: 'passed', cause: 'server_greeting_421' });
  });

  it('admission rolls back when the engine refuses the hold (ENOSPC from epoll_ctl): no ghost keeps a slot', () => {
    const enospc = Object.assign(new Error('epoll_ctl: ENOSPC'), { sysCode: 'ENOSPC' });
    const { calls, driver, ctx, conn, summaries, events } = setup({}, { holdThrows: enospc });
    const s = new Session(driver, conn, ctx);
    s.begin();
    expect(events).toEqual([`started ${s.id}`]);
    expect(summaries).toHaveLength(1);
    expect(summaries[0]).toMatchObject({ verdict: 'client_gone', cause: 'engine_enospc' });
    expect(calls.at(-1)).toEqual(['drop', 7]);
    expect(driver.liveSessions).toBe(0);
  });

  it('a command the engine no longer takes (false) waits for the event that explains it, and ends the session anyway if none comes', () => {
    vi.useFakeTimers();
    try {
      // The engine thread ended the connection an instant before: its event arrives and decides.
      const a = setup({}, { holdReturns: false });
      const s = new Session(a.driver, a.conn, a.ctx);
      s.begin();
      expect(a.summaries).toEqual([]);
      s.talkedEarly(5, Buffer.from('EHLO x\r\n'), 8, 'held', 0);
      expect(a.summaries[0]).toMatchObject({ verdict: 'early_talker' });
      // No event ever comes: the slot is freed after the grace time.
      const b = setup({}, { holdReturns: false });
      const t = new Session(b.driver, b.conn, b.ctx);
      t.begin();
      vi.advanceTimersByTime(999);
      expect(b.summaries).toEqual([]);
      vi.advanceTimersByTime(1);
      expect(b.summaries[0]).toMatchObject({ verdict: 'client_gone', cause: 'engine_lost' });
      expect(b.driver.liveSessions).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });

  it('a decision made outside the engine events (a DNSBL answer, a cluster verdict) that throws ends only that session: error, internal_error', () => {
    const { driver, ctx, conn, summaries } = setup({});
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.guarded(() => {
      throw new Error('a bug in a lookup callback');
    });
    expect(summaries[0]).toMatchObject({ verdict: 'error', cause: 'internal_error' });
    expect(driver.liveSessions).toBe(0);
    s.guarded(() => s.release('dnswl')); // a done session ignores later decisions
    expect(summaries).toHaveLength(1);
  });

  it('counts the bytes of a final reply in the summary (421 when no server is left)', () => {
    const { driver, ctx, conn, summaries } = setup({}, { inspect: { state: 'closing', bytesFromClient: 0, bytesToClient: 52 } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.upstreamFailed('connect', 'ECONNREFUSED');
    s.upstreamFailed('connect', 'ECONNREFUSED');
    expect(summaries[0]).toMatchObject({ verdict: 'no_server', bytesToClient: 52 });
  });

  it('shows the greeting phase while the engine reads the greeting', () => {
    const { driver, ctx, conn } = setup({}, { inspect: { state: 'greeting', bytesFromClient: 0, bytesToClient: 0 } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    expect(s.phase).toBe('held');
    s.expired(100);
    expect(s.phase).toBe('greeting');
  });

  it('release ends the window early: connects at once, summarises `released` and the real heldMs; no-op once connecting', () => {
    const { calls, driver, ctx, conn, summaries } = setup({ detection: { window: '6s' } });
    const s = new Session(driver, conn, ctx);
    s.begin();
    expect(s.holding).toBe(true);
    s.release('dnswl');
    expect(calls.filter((c) => c[0] === 'connect')).toHaveLength(1);
    expect(s.phase).toBe('connecting');
    s.release('again');
    s.refuse('denied', 'late', { drop: true });
    expect(calls.filter((c) => c[0] === 'connect')).toHaveLength(1);
    expect(calls.some((c) => c[0] === 'drop')).toBe(false);
    s.greeted('220', 1, true);
    s.ended('client_closed', 10, 20);
    expect(summaries[0]).toMatchObject({ verdict: 'passed', released: 'dnswl', attempts: 1 });
    expect(summaries[0]!.heldMs).toBeLessThan(1000);
  });

  it('refuse turns a held client away with a reply or a drop, never connecting; an early talker stays an early talker', () => {
    const a = setup({ detection: { window: '6s' } });
    const s1 = new Session(a.driver, a.conn, a.ctx);
    s1.begin();
    s1.refuse('denied', 'cluster_deny', { reply: '554 5.7.1 no' });
    expect(a.calls.find((c) => c[0] === 'reply')).toEqual(['reply', 7, { text: '554 5.7.1 no\r\n', profile: 0 }]);
    expect(a.summaries[0]).toMatchObject({ verdict: 'denied', cause: 'cluster_deny', bytesToClient: 14, attempts: 0 });
    const b = setup({ detection: { window: '6s' } });
    const s2 = new Session(b.driver, b.conn, b.ctx);
    s2.begin();
    s2.refuse('denied', 'cluster_deny', { drop: true });
    expect(b.calls.some((c) => c[0] === 'drop')).toBe(true);
    expect(b.calls.some((c) => c[0] === 'connect')).toBe(false);
    const c = setup({ detection: { window: '6s', action: 'log' } });
    const s3 = new Session(c.driver, c.conn, c.ctx);
    s3.begin();
    s3.talkedEarly(5, Buffer.from('x'), 1, 'held', 0);
    s3.release('dnswl');
    s3.refuse('denied', 'x', { drop: true });
    expect(c.calls.some((x) => x[0] === 'connect' || x[0] === 'drop')).toBe(false);
  });

  it('begin(holdMs) holds a client that skips the window for that long (its lookups), and release connects it', () => {
    const { calls, driver, ctx, conn, summaries } = setup({ detection: { window: '6s' } });
    const s = new Session(driver, conn, ctx, 'pass_cache');
    s.begin(2000);
    expect(calls.find((c) => c[0] === 'hold')).toEqual(['hold', 7, { windowMs: 2000, profile: 0 }]);
    s.release('lookups_done');
    s.greeted('220', 1, true);
    s.ended('client_closed', 1, 1);
    expect(summaries[0]).toMatchObject({ skipped: 'pass_cache', released: 'lookups_done' });
  });
});
