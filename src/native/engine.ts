// The native session engine as ONE typed object (Engine) over the addon's raw exports; nothing else.
//
// INTERIM adapter over the previous raw surface, until the engine's new surface lands
// (issue 13): same Engine interface, some fields degraded (no teaser/log, inspect state).

import { EtdError } from '../errors.js';
import type {
  EngineConnect,
  EngineCounts,
  EngineEvent,
  EngineHold,
  EngineInspect,
  EngineProfile,
  EngineReply,
} from '../proxy/protocol.js';
import { loadAddonModule, loadedAddonPath, wrapSyscallErrors } from './transparent.js';

export interface Engine {
  start(onEvents: (batch: EngineEvent[]) => void): void;
  stop(): void;
  defineProfile(idx: number, p: EngineProfile): void;
  listen(fd: number, listenerId: number): void;
  unlisten(listenerId: number): void;
  hold(id: number, h: EngineHold): boolean;
  connect(id: number, c: EngineConnect): boolean;
  reply(id: number, r: EngineReply): number;
  drop(id: number): boolean;
  close(id: number, cause: string): boolean;
  inspect(id: number): EngineInspect | null;
  counts(): EngineCounts;
  sockName(fd: number): [string, number];
  plainListener(family: 4 | 6, address: string, port: number, backlog: number, v6only: boolean): number;
}

type Raw = Record<string, (...args: unknown[]) => unknown>;
let cached: Engine | undefined;

export function loadEngine(): Engine {
  if (cached) return cached;
  const raw = loadAddonModule() as Raw;
  if (typeof raw.engineStart !== 'function') {
    throw new EtdError('ETD_ERR_NATIVE_LOAD', `the native addon ${loadedAddonPath() ?? ''} has no session engine; it was built from older sources`, {
      hint: 'rebuild it: npm run install (needs g++, make, python3)',
    });
  }
  const f = (name: string) => wrapSyscallErrors((...args: unknown[]) => raw[name]!.apply(raw, args));
  const e = {
    start: f('engineStart'),
    stop: f('engineStop'),
    profile: f('engineProfile'),
    listen: f('engineListen'),
    unlisten: f('engineUnlisten'),
    hold: f('engineHold'),
    connect: f('engineConnect'),
    reply: f('engineReply'),
    replyGreeting: f('engineReplyGreeting'),
    drop: f('engineDrop'),
    close: f('engineClose'),
    counts: f('engineCounts'),
    bytes: f('engineBytes'),
    sockName: f('sockName'),
    plainListener: f('plainListener'),
  };
  cached = Object.freeze({
    start: (cb) => void e.start((batch: EngineEvent[]) => cb(batch.map((ev) => (ev[0] === 2 ? ([...ev, 'held'] as unknown as EngineEvent) : ev)))),
    stop: () => void e.stop(),
    defineProfile: (idx, p) =>
      void e.profile(idx, p.action === 'reject' ? 1 : 0, p.rejectReply, p.clientIdleMs, p.serverIdleMs, p.stripPipeconnect ? 1 : 0),
    listen: (fd, id) => void e.listen(fd, id),
    unlisten: (id) => void e.unlisten(id),
    hold: (id, h) => e.hold(id, h.windowMs, h.profile) as boolean,
    connect: (id, c) => e.connect(id, c.profile, c.family, c.sourceAddress, c.synCount, c.address, c.port, c.timeoutMs, c.preamble) as boolean,
    reply: (id, r) => {
      const ok = r.greeting ? e.replyGreeting(id) : e.reply(id, r.text ?? '');
      return ok ? Buffer.byteLength(r.text ?? '') : -1;
    },
    drop: (id) => e.drop(id) as boolean,
    close: (id, cause) => e.close(id, cause) as boolean,
    inspect: (id) => {
      const b = e.bytes(id) as [number, number] | null;
      return b ? { state: 'held', bytesFromClient: b[0], bytesToClient: b[1] } : null;
    },
    counts: () => ({ bufferedBytes: 0, deadlines: 0, callbackErrors: 0, ...(e.counts() as Omit<EngineCounts, 'bufferedBytes' | 'deadlines' | 'callbackErrors'>) }),
    sockName: (fd) => e.sockName(fd) as [string, number],
    plainListener: (family, address, port, backlog, v6only) => e.plainListener(family, address, port, backlog, v6only) as number,
  } satisfies Engine);
  return cached;
}
