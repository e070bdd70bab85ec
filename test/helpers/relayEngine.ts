// An engine for relay tests: every client it accepts is connected at once to a loopback backend, with a preamble that names the session for the backend.

import type net from 'node:net';
import { loadEngine } from '../../src/native/engine.js';
import { loadTransparent } from '../../src/native/transparent.js';
import { type EngineEvent, EV_ACCEPT } from '../../src/proxy/protocol.js';

type AcceptEvent = Extract<EngineEvent, [typeof EV_ACCEPT, ...unknown[]]>;

export interface RelayEngine {
  /** The loopback port clients connect to. */
  readonly port: number;
  stop(): void;
}

/**
 * Starts the engine (call `defineProfile` first) with one loopback listener; each ACCEPT is
 * connected to 127.0.0.1:`backendPort` with the profile and preamble `connect` chooses (the
 * preamble's first line names the session: the backend's key). `onEvent` sees every event.
 */
export function startRelayEngine(
  backendPort: number,
  connect: (ev: AcceptEvent) => { profile: number; preamble: string },
  onEvent?: (ev: EngineEvent) => void,
): RelayEngine {
  const engine = loadEngine();
  const sockets = loadTransparent();
  engine.start((batch: EngineEvent[]) => {
    for (const ev of batch) {
      onEvent?.(ev);
      if (ev[0] !== EV_ACCEPT) continue;
      const how = connect(ev);
      engine.connect(ev[1], {
        profile: how.profile,
        family: 4,
        sourceAddress: '',
        synCount: 0,
        address: '127.0.0.1',
        port: backendPort,
        timeoutMs: 3000,
        preamble: Buffer.from(how.preamble),
      });
    }
  });
  const fd = sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 1024, v6only: false });
  engine.listen(fd, 1);
  return { port: sockets.sockName(fd)[1], stop: () => engine.stop() };
}

/** Closes a test backend server. */
export function closeServer(server: net.Server): Promise<void> {
  return new Promise<void>((r) => server.close(() => r()));
}
