// The backend servers: their administrative and health state, active session counts, and selection.

import net from 'node:net';
import type { ServerConfig } from '../config/schema.js';
import { type Balancer, createBalancer } from './balancer.js';

/** up/down come from health checks; drain and maint are set by the operator and survive reloads. */
export type ServerState = 'up' | 'down' | 'drain' | 'maint';

export interface StateChange {
  readonly server: string;
  readonly from: ServerState;
  readonly to: ServerState;
  readonly reason: string;
}

export class Server {
  /** Health as last measured (or assumed up until a check says otherwise). */
  healthy = true;
  /** Operator's override: drain or maint, or undefined. */
  admin: 'drain' | 'maint' | undefined;
  private ownActive = 0;
  private ownTotal = 0;
  consecutiveConnectFailures = 0;
  lastReason = 'initial';
  readonly family: 4 | 6;

  constructor(public config: ServerConfig) {
    this.family = net.isIPv6(config.address) ? 6 : 4;
  }

  /** Sessions connected to it now (every engine thread's: one thread decides and counts). */
  get active(): number {
    return this.ownActive;
  }
  /** Sessions it has taken since start. */
  get total(): number {
    return this.ownTotal;
  }

  /** A session chose this server. */
  took(): void {
    this.ownActive++;
    this.ownTotal++;
  }

  /** That session is done with it. */
  released(): void {
    this.ownActive--;
  }

  get name(): string {
    return this.config.name;
  }
  get weight(): number {
    return this.config.weight;
  }
  get backup(): boolean {
    return this.config.backup;
  }
  get state(): ServerState {
    return this.admin ?? (this.healthy ? 'up' : 'down');
  }
}

export type PoolListener = (change: StateChange) => void;

export interface PoolOptions {
  /** Consecutive connect failures that mark a server down before its next health check (0 = never). */
  readonly passiveFall: number;
}

export class Pool {
  private servers: Server[] = [];
  private balancer: Balancer;
  private balanceKind: string;
  private readonly listeners: PoolListener[] = [];

  constructor(
    configs: readonly ServerConfig[],
    balance: 'roundrobin' | 'leastconn' | 'first',
    private readonly options: PoolOptions = { passiveFall: 3 },
  ) {
    this.balanceKind = balance;
    this.balancer = createBalancer(balance);
    this.update(configs, balance);
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  onChange(fn: PoolListener): () => void {
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  list(): readonly Server[] {
    return this.servers;
  }

  get(name: string): Server | undefined {
    return this.servers.find((s) => s.name === name);
  }

  /**
   * Replaces the server list (reload). Servers that keep their name keep their state, counters
   * and operator override; removed servers finish their sessions but get no new ones.
   */
  update(configs: readonly ServerConfig[], balance: 'roundrobin' | 'leastconn' | 'first'): void {
    const old = new Map(this.servers.map((s) => [s.name, s]));
    this.servers = configs.map((c) => {
      const prev = old.get(c.name);
      if (!prev) return new Server(c);
      const addressChanged = prev.config.address !== c.address || prev.config.port !== c.port;
      prev.config = c;
      if (addressChanged) {
        prev.healthy = true;
        prev.consecutiveConnectFailures = 0;
      }
      return prev;
    });
    if (this.balanceKind !== balance) {
      this.balancer = createBalancer(balance);
      this.balanceKind = balance;
    }
  }

  /** Picks a server that is up (of `family`, when given), skipping `exclude` (already tried). */
  pick(family: 4 | 6 | undefined, exclude?: ReadonlySet<Server>): Server | undefined {
    const usable = this.servers.filter((s) => s.state === 'up' && (family === undefined || s.family === family) && !exclude?.has(s));
    return this.balancer.pick(usable) as Server | undefined;
  }

  /** Whether a server that is up (of `family`, when given) remains outside `exclude`. */
  hasCandidate(family: 4 | 6 | undefined, exclude?: ReadonlySet<Server>): boolean {
    return this.servers.some((s) => s.state === 'up' && (family === undefined || s.family === family) && !exclude?.has(s));
  }

  /** True when some server of this family exists at all (to tell "none configured" from "none up"). */
  hasFamily(family: 4 | 6): boolean {
    return this.servers.some((s) => s.family === family);
  }

  setAdmin(server: Server, admin: 'drain' | 'maint' | undefined, reason: string): void {
    const from = server.state;
    server.admin = admin;
    this.emit(server, from, reason);
  }

  setHealth(server: Server, healthy: boolean, reason: string): void {
    const from = server.state;
    server.healthy = healthy;
    server.lastReason = reason;
    if (healthy) server.consecutiveConnectFailures = 0;
    this.emit(server, from, reason);
  }

  /** Passive detection: consecutive failed connects mark the server down before its next check. */
  connectFailed(server: Server, reason: string): void {
    server.consecutiveConnectFailures++;
    if (this.options.passiveFall > 0 && server.healthy && server.consecutiveConnectFailures >= this.options.passiveFall) {
      this.setHealth(server, false, `${server.consecutiveConnectFailures} consecutive connect failures (last: ${reason})`);
    }
  }

  connectSucceeded(server: Server): void {
    server.consecutiveConnectFailures = 0;
  }

  private emit(server: Server, from: ServerState, reason: string): void {
    const to = server.state;
    if (from === to) return;
    for (const fn of this.listeners) fn({ server: server.name, from, to, reason });
  }
}
