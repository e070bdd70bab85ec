// The reputation decision applied to a held session (src/reputation/gate.ts), against a recording fake of the engine.

import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import type { Engine } from '../../src/native/engine.js';
import { EngineDriver } from '../../src/proxy/engineDriver.js';
import { Session } from '../../src/proxy/session.js';
import { applyScore, vouching } from '../../src/reputation/gate.js';
import { Reputation } from '../../src/reputation/lookup.js';
import type { Score } from '../../src/reputation/score.js';
import { parseStrictJson } from '../../src/util/strictJson.js';
import { testSessionContext } from '../helpers/sessionContext.js';

type Call = [string, ...unknown[]];

function setup(reputation: Record<string, unknown> = {}) {
  const config = validateConfig({
    listeners: [{ name: 'l', address: '127.0.0.1', port: 0 }],
    log: { level: 'silent' },
    state: { path: ':memory:' },
    detection: { window: '6s' },
    upstream: { servers: [{ name: 'a', address: '10.0.0.1' }], health: { enabled: false } },
    reputation: {
      dnsbl: [
        { zone: 'bl.test', weight: 3 },
        { zone: 'wl.test', weight: -2 },
      ],
      ...reputation,
    },
  });
  const calls: Call[] = [];
  const rec =
    (name: string, ret: unknown = true) =>
    (...args: unknown[]) => {
      calls.push([name, ...args]);
      return ret;
    };
  const engine = {
    defineProfile: rec('profile', undefined),
    hold: rec('hold'),
    connect: rec('connect'),
    reply: (id: number, r: { text?: string }) => {
      calls.push(['reply', id, r]);
      return Buffer.byteLength(r.text ?? '');
    },
    drop: rec('drop'),
    close: rec('close'),
    inspect: () => null,
  } as unknown as Engine;
  const driver = new EngineDriver(engine);
  const { ctx, summaries } = testSessionContext(config);
  const rep = new Reputation(config.reputation, pino({ level: 'silent' }));
  const conn = { eid: 7, family: 4 as const, peerAddress: '192.0.2.9', peerPort: 40000, localAddress: '127.0.0.1', localPort: 25 };
  return { calls, driver, ctx, rep, conn, summaries };
}

const score = (n: number, hits: Array<[string, string, number]>): Score => ({
  score: n,
  hits: hits.map(([name, answer, weight]) => ({ name, answer, weight })),
  refused: [],
  unanswered: [],
});

describe('a score applied to a held session', () => {
  it('≥ threshold: refused with the reply naming the list, verdict dnsbl, score and lists in the summary, never connected', () => {
    const t = setup();
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    applyScore(s, t.rep, score(3, [['bl.test', '127.0.0.2', 3]]));
    expect(t.calls.some((c) => c[0] === 'connect')).toBe(false);
    expect(t.calls.find((c) => c[0] === 'reply')?.[2]).toMatchObject({
      text: '554 5.7.1 Service unavailable; client [192.0.2.9] blocked using bl.test\r\n',
    });
    expect(t.summaries[0]).toMatchObject({
      verdict: 'dnsbl',
      cause: 'dnsbl_reject',
      score: 3,
      lists: [{ name: 'bl.test', answer: '127.0.0.2' }],
    });
    // One summary line, strict JSON (no key twice).
    expect(() => parseStrictJson(JSON.stringify(t.summaries[0]))).not.toThrow();
    expect(t.rep.counters.refusedClients).toBe(1);
    expect(t.rep.counters.hits.get('bl.test')).toBe(1);
  });

  it('action drop: the connection is reset, cause dnsbl_drop', () => {
    const t = setup({ action: 'drop' });
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    applyScore(s, t.rep, score(3, [['bl.test', '127.0.0.2', 3]]));
    expect(t.calls.some((c) => c[0] === 'drop')).toBe(true);
    expect(t.summaries[0]).toMatchObject({ verdict: 'dnsbl', cause: 'dnsbl_drop' });
  });

  it('≤ allowThreshold: the window ends, connected at once; the summary says allowlisted and released dnswl', () => {
    const t = setup();
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    applyScore(s, t.rep, score(-2, [['wl.test', '127.0.10.2', -2]]));
    expect(t.calls.filter((c) => c[0] === 'connect')).toHaveLength(1);
    expect(s.released).toBe('dnswl');
    s.greeted('220', 1, true);
    s.ended('client_closed', 1, 1);
    expect(t.summaries[0]).toMatchObject({ verdict: 'passed', released: 'dnswl', allowlisted: true, score: -2 });
  });

  it('between the thresholds: the window goes on; a pass-cache hit held for its lookups is released', () => {
    const t = setup();
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    applyScore(s, t.rep, score(1, [['x', '127.0.0.2', 1]]));
    expect(s.holding).toBe(true);
    expect(t.calls.some((c) => c[0] === 'connect')).toBe(false);
    const u = setup();
    const r = new Session(u.driver, u.conn, u.ctx, 'pass_cache');
    r.begin(2000);
    applyScore(r, u.rep, score(0, []));
    expect(r.released).toBe('reputation');
    expect(u.calls.filter((c) => c[0] === 'connect')).toHaveLength(1);
  });

  it('early talk wins: a session that talked is not touched by a later score', () => {
    const t = setup();
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    s.talkedEarly(3, Buffer.from('EHLO x\r\n'), 8, 'held', 0);
    applyScore(s, t.rep, score(-2, [['wl.test', '127.0.10.2', -2]]));
    expect(t.calls.some((c) => c[0] === 'connect')).toBe(false);
    expect(t.summaries).toHaveLength(1);
    expect(t.summaries[0]).toMatchObject({ verdict: 'early_talker' });
    expect(t.summaries[0]).not.toHaveProperty('allowlisted');
  });

  it("a cluster peer's pass waits for the lookups: released when they settle short of a refusal, refused when listed", () => {
    const t = setup();
    const s = new Session(t.driver, t.conn, t.ctx);
    s.begin();
    vouching(s).release('cluster_pass');
    expect(s.holding).toBe(true);
    expect(t.calls.some((c) => c[0] === 'connect')).toBe(false);
    applyScore(s, t.rep, score(1, [['x', '127.0.0.2', 1]]));
    expect(s.released).toBe('cluster_pass');
    expect(t.calls.filter((c) => c[0] === 'connect')).toHaveLength(1);

    const u = setup();
    const listed = new Session(u.driver, u.conn, u.ctx);
    listed.begin();
    vouching(listed).release('cluster_pass');
    applyScore(listed, u.rep, score(3, [['bl.test', '127.0.0.2', 3]]));
    expect(u.calls.some((c) => c[0] === 'connect')).toBe(false);
    expect(u.summaries[0]).toMatchObject({ verdict: 'dnsbl', cause: 'dnsbl_reject' });

    // Once the score is known, a peer's pass ends the window at once; a peer's deny always acts at once.
    const v = setup();
    const known = new Session(v.driver, v.conn, v.ctx);
    known.begin();
    applyScore(known, v.rep, score(0, []));
    vouching(known).release('cluster_pass');
    expect(known.released).toBe('cluster_pass');
    const w = setup();
    const denied = new Session(w.driver, w.conn, w.ctx);
    denied.begin();
    vouching(denied).refuse('denied', 'cluster_deny', { drop: true });
    expect(w.summaries[0]).toMatchObject({ verdict: 'denied', cause: 'cluster_deny' });
  });
});
