// The one declaration of the native addon's surface: every raw export of etd_transparent.node, its types, and the names list both loaders check.
//
// The binary's exports must equal ADDON_FUNCTIONS exactly (test/unit/native.test.ts checks both
// directions); transparent.ts loads the binary and wraps the socket helpers, engine.ts wraps the
// engine. Nothing else touches these raw functions. Argument errors throw TypeError/RangeError;
// failed syscalls throw a Node-shaped error that the wrappers turn into TransparentSyscallError.

import type {
  EngineConnect,
  EngineEvent,
  EngineHold,
  EngineInspect,
  EngineProfile,
  EngineReply,
  EngineThreadCounts,
} from '../proxy/protocol.js';

export interface PlainListenerOptions {
  readonly family: 4 | 6;
  readonly address: string;
  readonly port: number;
  readonly backlog: number;
  /** false = dual-stack for v6 (IPv4 peers arrive v4-mapped; the engine shows them as v4). */
  readonly v6only: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND: bind an address not (yet) on this host, e.g. a VIP the peer holds. Default false. */
  readonly freebind?: boolean;
  /**
   * SO_REUSEPORT before bind: several sockets (one per engine thread) on the same address
   * and port, each with the flag; the kernel spreads new connections over them. Default false.
   */
  readonly reusePort?: boolean;
}

/** The optional last argument of transparentListener. */
export interface TransparentListenerOptions {
  /** SO_REUSEPORT before bind, as PlainListenerOptions.reusePort. Default false. */
  readonly reusePort?: boolean;
}

export interface NativeAddon {
  // ----- socket helpers (native/src/transparent.cc, common.cc)
  /** socket + IP(V6)_TRANSPARENT + IP_BIND_ADDRESS_NO_PORT + SO_MARK (mark > 0) + TCP_SYNCNT (synCount > 0) + bind(address, 0); the caller owns the fd. */
  transparentSocket(family: 4 | 6, address: string, mark: number, synCount: number): number;
  /** socket, SO_REUSEADDR, SO_REUSEPORT when options.reusePort, IP(V6)_TRANSPARENT, IPV6_V6ONLY=1 for v6, bind, listen; the caller owns the fd. */
  transparentListener(family: 4 | 6, address: string, port: number, backlog: number, options?: TransparentListenerOptions): number;
  /** socket (non-blocking, cloexec), SO_REUSEADDR, SO_REUSEPORT when reusePort, IP(V6)_FREEBIND when freebind, IPV6_V6ONLY = v6only for v6, bind, listen; the caller owns the fd. */
  plainListener(options: PlainListenerOptions): number;
  /** getsockname of any fd; IPv4-mapped addresses come back as plain IPv4. */
  sockName(fd: number): [string, number];
  /** close(2) for an fd that was never handed to Node. */
  closeFd(fd: number): void;

  // ----- the session engine (native/src/binding.cc; docs/engine.md)
  engineStart(onEvents: (batch: EngineEvent[]) => void, threads: number): void;
  engineStop(): void;
  engineThreadStart(thread: number): void;
  engineFault(thread: number, rule: string): void;
  engineProfile(idx: number, profile: EngineProfile): void;
  engineListen(fd: number, listenerId: number, thread: number): void;
  engineUnlisten(listenerId: number): void;
  engineHold(id: number, hold: EngineHold): boolean;
  engineConnect(id: number, connect: EngineConnect): boolean;
  engineReply(id: number, reply: EngineReply): number;
  engineDrop(id: number): boolean;
  engineClose(id: number, cause: string): boolean;
  engineInspect(id: number): EngineInspect | null;
  engineCounts(): EngineThreadCounts[];
  engineCallbackErrors(): number;
}

/** Every export of the binary, sorted. */
export const ADDON_FUNCTIONS = [
  'closeFd',
  'engineCallbackErrors',
  'engineClose',
  'engineConnect',
  'engineCounts',
  'engineDrop',
  'engineFault',
  'engineHold',
  'engineInspect',
  'engineListen',
  'engineProfile',
  'engineReply',
  'engineStart',
  'engineStop',
  'engineThreadStart',
  'engineUnlisten',
  'plainListener',
  'sockName',
  'transparentListener',
  'transparentSocket',
] as const satisfies readonly (keyof NativeAddon)[];

// The list names every function of the interface (a missing one is a compile error here).
type Unlisted = Exclude<keyof NativeAddon, (typeof ADDON_FUNCTIONS)[number]>;
export const ADDON_FUNCTIONS_COMPLETE: [Unlisted] extends [never] ? true : Unlisted = true;
