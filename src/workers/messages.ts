// What the main thread and the engine workers say to each other (MessagePort; every message is batched or rare, never one round trip per connection on the accept path).

import type { Config } from '../config/schema.js';
import type { BoundFd } from '../proxy/listener.js';
import type { EngineCounts, LiveSessionView, SessionSummary } from '../proxy/protocol.js';
import type { CacheKind } from '../state/store.js';
import type { RepCountersData } from './repCounters.js';

/** A server's state as the main thread's pool has it (health checks and operator overrides). */
export interface ServerStateMsg {
  readonly name: string;
  readonly healthy: boolean;
  readonly admin: 'drain' | 'maint' | undefined;
  readonly reason: string;
}

/** workerData of an engine worker. */
export interface WorkerInit {
  readonly index: number;
  readonly workers: number;
  readonly board: SharedArrayBuffer;
  /** The once-per-period warnings every worker shares (warnGate.ts). */
  readonly warnings: SharedArrayBuffer;
  readonly config: Config;
  /** The board's slot of each server name. */
  readonly slots: ReadonlyArray<readonly [string, number]>;
  /** Listening sockets bound for this worker, by listener name. */
  readonly fds: Readonly<Record<string, readonly BoundFd[]>>;
  readonly cache: ReadonlyArray<readonly [string, CacheKind, number]>;
  readonly access: ReadonlyArray<{ readonly cidr: string; readonly list: 'allow' | 'deny' }>;
  readonly servers: readonly ServerStateMsg[];
  /** The main thread has a cluster (Redis): shared lookups go through it. */
  readonly cluster: boolean;
}

/** Counters of one worker that the main thread sums (the rest comes from the summaries). */
export interface WorkerCounters {
  readonly accepted: number;
  readonly relayed: number;
  readonly limits: { readonly max_connections: number; readonly max_held: number; readonly per_client: number };
  readonly engine: (EngineCounts & { handlerErrors: number }) | null;
  /** This thread's CPU time since it started (ms). */
  readonly cpuMs: number;
  /** Its DNSBL counters, when lists are configured. */
  readonly reputation: RepCountersData | undefined;
}

export type ToWorker =
  | {
      readonly t: 'reload';
      readonly id: number;
      readonly config: Config;
      readonly fds: Readonly<Record<string, readonly BoundFd[]>>;
      readonly slots: ReadonlyArray<readonly [string, number]>;
    }
  | { readonly t: 'cache'; readonly changes: ReadonlyArray<readonly [string, CacheKind | null, number]> }
  | { readonly t: 'access'; readonly entries: ReadonlyArray<{ readonly cidr: string; readonly list: 'allow' | 'deny' }> }
  | { readonly t: 'server'; readonly state: ServerStateMsg }
  | { readonly t: 'answer'; readonly id: number; readonly value: string | null }
  /** DNSBL answers another worker (or the main thread) got: [exchange key, value]. */
  | { readonly t: 'dnsbl'; readonly answers: ReadonlyArray<readonly [string, string]> }
  | { readonly t: 'sessions'; readonly id: number }
  | { readonly t: 'counters'; readonly id: number }
  | { readonly t: 'stop'; readonly graceMs: number };

export type FromWorker =
  | { readonly t: 'ready' }
  | { readonly t: 'failed'; readonly message: string; readonly code: string | undefined; readonly hint: string | undefined }
  | {
      readonly t: 'batch';
      readonly summaries: readonly SessionSummary[];
      /** [kind, client address]: a verdict this worker recorded in its cache copy; the main thread records it for all. */
      readonly learnt: ReadonlyArray<readonly [CacheKind, string]>;
      readonly counters: WorkerCounters;
      /** DNSBL queries answered since the last batch: [zone, seconds, status] (the main thread's latency histogram). */
      readonly queries: ReadonlyArray<readonly [string, number, string]>;
    }
  | { readonly t: 'log'; readonly level: number; readonly obj: Record<string, unknown>; readonly msg: string }
  | { readonly t: 'health'; readonly name: string; readonly healthy: boolean; readonly reason: string }
  | { readonly t: 'lookup'; readonly id: number; readonly key: string }
  | { readonly t: 'dnsbl-get'; readonly id: number; readonly key: string }
  | { readonly t: 'dnsbl-put'; readonly key: string; readonly value: string; readonly expires: number }
  | { readonly t: 'reloaded'; readonly id: number; readonly error: string | undefined }
  | { readonly t: 'sessions'; readonly id: number; readonly list: readonly LiveSessionView[] }
  | { readonly t: 'counters'; readonly id: number; readonly counters: WorkerCounters }
  | { readonly t: 'stopped' };
