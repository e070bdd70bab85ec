// NativeSession's decisions against a recording fake of the engine: window, retries, refusals, verdicts, summaries, server counts.

import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { Pool } from '../../src/backend/pool.js';
import { policyOf } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import type { EngineAddon } from '../../src/native/engine.js';
import { EngineDriver } from '../../src/proxy/engineDriver.js';
import { NativeSession, upstreamFailureCause } from '../../src/proxy/nativeSession.js';
import type { LiveSession, SessionContext, SessionSummary } from '../../src/proxy/session.js';
import { TimerHoldQueue } from '../../src/proxy/holdQueue.js';
import { createSource } from '../../src/proxy/upstream.js';

type Call = [string, ...unknown[]];

/** Records every command; engineConnect can be told to throw. */
function fakeAddon(calls: Call[], connectThrows: (target: string) => Error | undefined = () => undefined): EngineAddon {
  const rec =
    (name: string, ret: unknown = true) =>
    (...args: unknown[]) => {
      calls.push([name, ...args]);
      return ret;
    };
  return {
    engineStart: rec('start', undefined),
    engineStop: rec('stop', undefined),
    engineProfile: rec('profile', undefined),
    engineListen: rec('listen', undefined),
    engineUnlisten: rec('unlisten', undefined),
    engineHold: rec('hold'),
    engineConnect: (...args: unknown[]) => {
      calls.push(['connect', ...args]);
      const e = connectThrows(`${String(args[5])}:${String(args[6])}`);
      if (e) throw e;
      return true;
    },
    engineReply: rec('reply'),
    engineReplyGreeting: rec('replyGreeting'),
    engineDrop: rec('drop'),
    engineRelease: rec('release', -1),
    engineClose: rec('close'),
    engineCounts: () => ({ connections: 0, held: 0, relaying: 0, listeners: 0, fds: 0 }),
    engineBytes: () => null,
    sockName: () => ['127.0.0.1', 0],
    plainListener: () => -1,
  } as EngineAddon;
}

function setup(doc: Record<string, unknown> = {}, connectThrows?: (t: string) => Error | undefined) {
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
  const driver = new EngineDriver(fakeAddon(calls, connectThrows));
  const pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: 0 });
  const summaries: SessionSummary[] = [];
  const events: string[] = [];
  const ctx: SessionContext = {
    listener: 'l',
    mode: 'plain',
    log: pino({ level: 'silent' }),
    pool,
    hold: new TimerHoldQueue(),
    source: createSource(config.upstream.source),
    policy: policyOf(config),
    sessionStarted: (s: LiveSession) => events.push(`started ${s.id}`),
    sessionRelaying: (s: LiveSession) => events.push(`relaying ${s.id}`),
    sessionEnded: (_s: LiveSession, summary: SessionSummary) => summaries.push(summary),
  };
  const conn = { eid: 7, family: 4 as const, peerAddress: '192.0.2.9', peerPort: 40000, localAddress: '127.0.0.1', localPort: 25 };
  return { calls, driver, pool, ctx, conn, summaries, events };
}

const server = (pool: Pool, name: string) => pool.list().find((s) => s.name === name)!;

describe('NativeSession', () => {
  it('holds for the window, connects after it, relays after a 220 and summarises the relay end', () => {
    const { calls, driver, pool, ctx, conn, summaries, events } = setup();
    const s = new NativeSession(driver, conn, ctx);
    s.begin();
    expect(calls.find((c) => c[0] === 'hold')).toEqual(['hold', 7, 100, 0]);
    expect(s.phase).toBe('held');
    s.expired(101.2);
    const connect = calls.find((c) => c[0] === 'connect')!;
    expect(connect.slice(1, 9)).toEqual([7, 0, 4, '', 0, '10.0.0.1', 25, 5000]);
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
    const s = new NativeSession(driver, conn, ctx);
    s.begin();
    s.expired(100);
    expect(server(pool, 'a').active).toBe(1);
    s.talkedEarly(130.456, Buffer.from('EHLO x\r\n'), 8);
    expect(server(pool, 'a').active).toBe(0);
    expect(summaries[0]).toMatchObject({ verdict: 'early_talker', cause: 'rejected', action: 'reject', talkedAfterMs: 130.46, earlyBytes: 'EHLO x\\r\\n', bytesFromClient: 8 });
    // Later events for the same id change nothing.
    s.gone('client_closed');
    expect(summaries).toHaveLength(1);
  });

  it('a refused greeting tries the other server; when every server refused, the client gets the last refusal', () => {
    const { calls, driver, pool, ctx, conn, summaries } = setup();
    const s = new NativeSession(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.greeted('421', 1, false);
    const connects = calls.filter((c) => c[0] === 'connect').map((c) => c[6]);
    expect(connects).toEqual(['10.0.0.1', '10.0.0.2']);
    s.greeted('554', 1, false);
    expect(calls.at(-1)).toEqual(['replyGreeting', 7]);
    expect(summaries[0]).toMatchObject({ verdict: 'passed', cause: 'server_greeting_554', attempts: 2 });
    expect(server(pool, 'a').active + server(pool, 'b').active).toBe(0);
  });

  it('connect failures (async and synchronous) retry, then 421 with the last failure as cause', () => {
    const refused = Object.assign(new Error('connect: ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const { calls, driver, ctx, conn, summaries } = setup({}, (t) => (t === '10.0.0.2:25' ? refused : undefined));
    const s = new NativeSession(driver, conn, ctx);
    s.begin();
    s.expired(100);
    s.upstreamFailed('connect', 'ETIMEDOUT');
    // The second server threw synchronously; no server is left.
    expect(calls.at(-1)).toEqual(['reply', 7, '421 4.3.2 Service not available, try again later\r\n']);
    expect(summaries[0]).toMatchObject({ verdict: 'no_server', cause: 'connect_refused', attempts: 2 });
  });

  it('an allow-listed client connects at once without a hold', () => {
    const { calls, driver, ctx, conn, summaries } = setup();
    const s = new NativeSession(driver, conn, ctx, 'allowlist');
    s.begin();
    expect(calls.some((c) => c[0] === 'hold')).toBe(false);
    expect(calls.some((c) => c[0] === 'connect')).toBe(true);
    s.greeted('220', 0.5, true);
    s.ended('client_closed', 1, 2);
    expect(summaries[0]).toMatchObject({ skipped: 'allowlist', heldMs: 0, verdict: 'passed' });
  });

  it('shutdown answers a held client with 421; abort ends a relayed one', () => {
    const a = setup();
    const held = new NativeSession(a.driver, a.conn, a.ctx);
    held.begin();
    held.shutdown();
    expect(a.calls.at(-1)).toEqual(['reply', 7, '421 4.3.2 Service shutting down, try again later\r\n']);
    expect(a.summaries[0]).toMatchObject({ verdict: 'shutdown', cause: 'shutdown' });
    const b = setup();
    const relayed = new NativeSession(b.driver, b.conn, b.ctx);
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

  it('maps the engine failure codes to the Node engine summary words', () => {
    expect(upstreamFailureCause('connect', 'ECONNREFUSED')).toBe('refused');
    expect(upstreamFailureCause('connect', 'ETIMEDOUT')).toBe('timeout');
    expect(upstreamFailureCause('connect', 'EHOSTUNREACH')).toBe('unreachable');
    expect(upstreamFailureCause('connect', 'EPROTO')).toBe('eproto');
    expect(upstreamFailureCause('greeting', 'EOF')).toBe('server_closed_before_greeting');
    expect(upstreamFailureCause('greeting', 'ETIMEDOUT')).toBe('server_greeting_timeout');
    expect(upstreamFailureCause('greeting', 'ECONNRESET')).toBe('server_reset_before_greeting');
  });
});
