// The engine driver routes events to sessions; a handler that throws is counted, logged once per cause, its session ends (internal_error), and the batch goes on.

import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { Engine } from '../../src/native/engine.js';
import { EngineDriver, type EngineSession } from '../../src/proxy/engineDriver.js';
import { type EngineEvent, EV_ACCEPT, EV_EXPIRED, EV_GONE } from '../../src/proxy/protocol.js';

function fakeEngine(calls: string[]): { engine: Engine; fire: (batch: EngineEvent[]) => void } {
  let cb: ((b: EngineEvent[]) => void) | undefined;
  const engine = {
    start: (f: (b: EngineEvent[]) => void) => void (cb = f),
    stop: () => undefined,
    listen: () => undefined,
    unlisten: () => undefined,
    drop: (id: number) => {
      calls.push(`drop ${id}`);
      return true;
    },
  } as unknown as Engine;
  return { engine, fire: (b) => cb!(b) };
}

function session(onExpired: () => void, log: string[], id: number): EngineSession {
  return {
    talkedEarly: () => undefined,
    gone: (cause) => log.push(`gone ${id} ${cause}`),
    expired: onExpired,
    upstreamFailed: () => undefined,
    greeted: () => undefined,
    ended: () => undefined,
    failed: (err) => log.push(`failed ${id} ${(err as Error).message}`),
  };
}

describe('EngineDriver', () => {
  it('a throwing handler is counted and logged once per cause; its session is ended as failed; the rest of the batch is handled', () => {
    const calls: string[] = [];
    const lines: Array<{ msg: string }> = [];
    const sink = new Writable({
      write: (c, _e, done) => {
        lines.push(JSON.parse(String(c)) as { msg: string });
        done();
      },
    });
    const { engine, fire } = fakeEngine(calls);
    const driver = new EngineDriver(engine);
    driver.acquire(pino(sink));
    const seen: string[] = [];
    driver.attach(
      1,
      session(
        () => {
          throw new Error('boom');
        },
        seen,
        1,
      ),
    );
    driver.attach(
      2,
      session(
        () => {
          throw new Error('boom');
        },
        seen,
        2,
      ),
    );
    driver.attach(
      3,
      session(
        () => {
          throw new TypeError('other');
        },
        seen,
        3,
      ),
    );
    driver.attach(
      4,
      session(() => seen.push('expired 4'), seen, 4),
    );
    fire([
      [EV_EXPIRED, 1, 100],
      [EV_EXPIRED, 2, 100],
      [EV_EXPIRED, 3, 100],
      [EV_EXPIRED, 4, 100],
      [EV_GONE, 1, 'undecided'],
    ]);
    expect(driver.handlerErrors).toBe(3);
    // Each session whose decision threw is told (a real Session ends with verdict error, cause internal_error, and ignores later events).
    expect(seen).toEqual(['failed 1 boom', 'failed 2 boom', 'failed 3 other', 'expired 4', 'gone 1 undecided']);
    const logged = lines.filter((l) => l.msg.startsWith('native engine event handler failed'));
    expect(logged.map((l) => l.msg)).toEqual([
      'native engine event handler failed (logged once per cause): boom',
      'native engine event handler failed (logged once per cause): other',
    ]);
    driver.release();
  });

  it('an accepted connection whose handler threw is dropped, never held', () => {
    const calls: string[] = [];
    const { engine, fire } = fakeEngine(calls);
    const driver = new EngineDriver(engine);
    driver.acquire(pino({ level: 'silent' }));
    driver.listen(5, {
      accepted: () => {
        throw new Error('admission bug');
      },
      failed: () => undefined,
    });
    fire([[EV_ACCEPT, 9, 1, 4, '192.0.2.1', 4000, '127.0.0.1', 25]]);
    expect(calls).toEqual(['drop 9']);
    expect(driver.handlerErrors).toBe(1);
    driver.release();
  });
});
