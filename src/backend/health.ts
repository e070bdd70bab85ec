// Health check scheduling for the pool's servers and the pure rise/fall decision that turns check results into up/down.

import type { Logger } from 'pino';
import type { HealthConfig } from '../config/schema.js';
import type { Pool, Server } from './pool.js';
import { type CheckFailure, type CheckResult, type Probe, smtpCheck } from './smtpCheck.js';

/** What the rise/fall decision needs to know about one server. */
export interface HealthState {
  readonly healthy: boolean;
  /** Consecutive successful checks (0 after a failure). */
  readonly okStreak: number;
  /** Consecutive failed checks (0 after a success). */
  readonly failStreak: number;
}

export function initialHealth(healthy = true): HealthState {
  return { healthy, okStreak: 0, failStreak: 0 };
}

/**
 * The rise/fall decision. An up server goes down on its `fall`-th consecutive failed check; a
 * down server comes up on its `rise`-th consecutive successful check. Strict streaks: any result
 * of the other kind resets the count. (HAProxy keeps one counter that a success only moves back
 * by one, so there a failure run interrupted by a single success still counts partly; etd's
 * rule is the one its configuration documents: "consecutive".)
 */
export function nextHealth(state: HealthState, ok: boolean, rise: number, fall: number): HealthState {
  if (ok) {
    const okStreak = state.okStreak + 1;
    return { healthy: state.healthy || okStreak >= rise, okStreak, failStreak: 0 };
  }
  const failStreak = state.failStreak + 1;
  return { healthy: state.healthy && failStreak < fall, okStreak: 0, failStreak };
}

/** The last check of a server as the API and logs show it. */
export interface LastCheck {
  readonly ok: boolean;
  readonly reason?: CheckFailure;
  readonly detail?: string;
  readonly ms: number;
  /** Wall-clock time the result came in (ms since the epoch). */
  readonly at: number;
}

export interface ServerHealthStatus {
  /** False when the server is not actively checked (`check: false`, or health checks disabled). */
  readonly checked: boolean;
  readonly healthy: boolean;
  readonly okStreak: number;
  readonly failStreak: number;
  readonly checks: number;
  readonly last: LastCheck | undefined;
  readonly lastFailure: LastCheck | undefined;
}

export interface HealthCheckerOptions {
  /** The probe (smtpCheck by default). */
  readonly probe?: Probe;
  /** Jitter source for the first check of each server, in [0, 1). */
  readonly random?: () => number;
}

interface Entry {
  readonly server: Server;
  /** address:port the state was measured at; a change starts the measurement over. */
  target: string;
  checked: boolean;
  /** The checker's view; re-synced whenever someone else (passive detection, a reload) changed server.healthy. */
  state: HealthState;
  /** Bumped on every outside change, so the result of a check that straddles it is discarded. */
  epoch: number;
  timer: NodeJS.Timeout | undefined;
  inflight: AbortController | undefined;
  checks: number;
  last: LastCheck | undefined;
  lastFailure: LastCheck | undefined;
}

const targetKey = (s: Server) => `${s.config.address}:${s.config.port}`;

/**
 * Checks every server of a pool on its own timer and sets its health through the pool.
 *
 * Semantics (documented for operators in the health section of the docs):
 * - A server starts up (HAProxy's `init-state fully-up`): at start, after a reload and for a new
 *   server, etd assumes up and needs `fall` consecutive failed checks to take it down. HAProxy's
 *   own default (`up`) drops a server on its very first failed check; etd prefers not to flap a
 *   whole pool on a restart, and passive detection plus the session's retry cover a server that
 *   really is dead meanwhile.
 * - Checks run every `interval`, start to start; each server's first one at a random point of
 *   the first interval so a pool's checks do not all fire together.
 * - drain and maint servers keep being checked: their health is current when the operator lifts
 *   the override (the pool reports no state change while an override hides it).
 * - A server marked down by someone else (passive detection) starts a fresh streak: it needs
 *   `rise` checks begun after it went down. A check in flight at that moment does not count.
 * - A server that is not checked (`check: false`, or `health.enabled: false`) is up unless the
 *   operator or passive detection says otherwise; passive detection's "down" then lasts about
 *   `rise × interval` (a hold-off), after which the server gets sessions again — without a check
 *   nothing else could ever bring it back.
 */
export class HealthChecker {
  private readonly entries = new Map<Server, Entry>();
  private running = false;
  private readonly probe: Probe;
  private readonly random: () => number;
  private readonly log: Logger;

  constructor(
    private readonly pool: Pool,
    private config: HealthConfig,
    log: Logger,
    options: HealthCheckerOptions = {},
  ) {
    this.log = log.child({ component: 'health' });
    this.probe = options.probe ?? smtpCheck;
    this.random = options.random ?? Math.random;
    this.sync();
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    for (const e of this.entries.values()) this.scheduleFirst(e);
  }

  stop(): void {
    this.running = false;
    for (const e of this.entries.values()) this.idle(e);
  }

  /** After a reload (the pool was updated first): new servers get checked, removed ones stop. */
  update(config: HealthConfig): void {
    const intervalChanged = config.intervalMs !== this.config.intervalMs;
    this.config = config;
    this.sync();
    if (intervalChanged && this.running) {
      // A pending timer still runs on the old interval; re-spread. A check in flight reschedules itself.
      for (const e of this.entries.values()) if (e.timer) this.scheduleFirst(e);
    }
  }

  status(name: string): ServerHealthStatus | undefined {
    const server = this.pool.get(name);
    const e = server && this.entries.get(server);
    if (!e) return undefined;
    return {
      checked: e.checked,
      healthy: e.server.healthy,
      okStreak: e.state.okStreak,
      failStreak: e.state.failStreak,
      checks: e.checks,
      last: e.last,
      lastFailure: e.lastFailure,
    };
  }

  private isChecked(server: Server): boolean {
    return this.config.enabled && server.config.check;
  }

  /** Brings the entries in line with the pool's servers and the config. */
  private sync(): void {
    const current = new Set(this.pool.list());
    for (const [server, e] of this.entries) {
      if (!current.has(server)) {
        this.idle(e);
        this.entries.delete(server);
      }
    }
    for (const server of current) {
      const e = this.entries.get(server);
      if (!e) {
        const fresh: Entry = {
          server,
          target: targetKey(server),
          checked: this.isChecked(server),
          state: initialHealth(server.healthy),
          epoch: 0,
          timer: undefined,
          inflight: undefined,
          checks: 0,
          last: undefined,
          lastFailure: undefined,
        };
        this.entries.set(server, fresh);
        if (this.running) this.scheduleFirst(fresh);
        continue;
      }
      const checked = this.isChecked(server);
      if (targetKey(server) !== e.target || checked !== e.checked) {
        // Another address, or checks switched on or off: what was measured no longer applies.
        e.target = targetKey(server);
        e.epoch++;
        e.inflight?.abort();
        if (e.checked && !checked && !server.healthy) {
          // HAProxy's "disable health": the last result is ignored and the server is considered up.
          this.pool.setHealth(server, true, 'health checks disabled: considered up');
        }
        e.checked = checked;
        e.state = initialHealth(server.healthy);
      }
    }
  }

  private scheduleFirst(e: Entry): void {
    this.schedule(e, Math.floor(this.random() * this.config.intervalMs));
  }

  private schedule(e: Entry, delayMs: number): void {
    if (e.timer) clearTimeout(e.timer);
    e.timer = setTimeout(() => void this.run(e), delayMs);
    // The listeners keep etd alive; a pending check alone should not.
    e.timer.unref();
  }

  private idle(e: Entry): void {
    if (e.timer) clearTimeout(e.timer);
    e.timer = undefined;
    e.inflight?.abort();
    e.inflight = undefined;
  }

  private isLive(e: Entry): boolean {
    return this.running && this.entries.get(e.server) === e;
  }

  /**
   * Adopts a health change made by someone else (passive detection, pool reload): a fresh streak.
   * Returns true when there was one.
   */
  private resync(e: Entry): boolean {
    if (e.state.healthy === e.server.healthy) return false;
    this.log.debug({ server: e.server.name, healthy: e.server.healthy }, 'health changed outside the checker; streaks restart');
    e.state = initialHealth(e.server.healthy);
    e.epoch++;
    return true;
  }

  private async run(e: Entry): Promise<void> {
    e.timer = undefined;
    if (!this.isLive(e)) return;
    const started = performance.now();
    const changed = this.resync(e);
    const epoch = e.epoch;
    if (!e.checked) {
      // Not checked: each tick after a passive "down" counts as a success, so it lifts after
      // `rise` full intervals (the tick that first sees the change does not count).
      if (!e.state.healthy && !changed) this.apply(e, { ok: true, ms: 0 }, true);
      this.schedule(e, this.config.intervalMs);
      return;
    }
    const ac = new AbortController();
    e.inflight = ac;
    const { timeoutMs, helo, command } = this.config;
    const result = await this.probe(
      { address: e.server.config.address, port: e.server.config.port },
      { timeoutMs, helo, command, signal: ac.signal },
    );
    if (e.inflight === ac) e.inflight = undefined;
    // Stopped or removed meanwhile: this entry's loop ends here.
    if (!this.isLive(e)) return;
    this.resync(e);
    if (ac.signal.aborted || e.epoch !== epoch) {
      this.log.debug({ server: e.server.name }, 'check result discarded: the server changed state while it ran');
    } else {
      this.apply(e, result, false);
    }
    this.schedule(e, Math.max(0, this.config.intervalMs - (performance.now() - started)));
  }

  private apply(e: Entry, result: CheckResult, assumed: boolean): void {
    const { rise, fall } = this.config;
    const prev = e.state;
    const next = nextHealth(prev, result.ok, rise, fall);
    e.state = next;
    const server = e.server;
    if (!assumed) {
      e.checks++;
      e.last = result.ok
        ? { ok: true, ms: result.ms, at: Date.now() }
        : { ok: false, reason: result.reason, detail: result.detail, ms: result.ms, at: Date.now() };
      if (!result.ok) e.lastFailure = e.last;
      const fields = {
        server: server.name,
        ok: result.ok,
        ms: result.ms,
        okStreak: next.okStreak,
        failStreak: next.failStreak,
        healthy: next.healthy,
      };
      if (!result.ok) {
        // The first failure of a run is news; the following ones show in the transition line (or at debug).
        const level = prev.failStreak === 0 ? 'info' : 'debug';
        this.log[level]({ ...fields, reason: result.reason, detail: result.detail }, `check of ${server.name} failed: ${result.reason}`);
      } else if (prev.failStreak > 0 || !prev.healthy) {
        this.log.info(fields, `check of ${server.name} passed`);
      } else {
        this.log.trace(fields, `check of ${server.name} passed`);
      }
    }
    if (next.healthy === prev.healthy) return;
    let reason: string;
    if (!result.ok) reason = `${result.reason}: ${result.detail} (${next.failStreak} consecutive failed checks)`;
    else if (assumed) reason = `not health-checked: passive hold-off of ${next.okStreak} intervals is over`;
    else reason = `${next.okStreak} consecutive successful checks`;
    this.pool.setHealth(server, next.healthy, reason);
  }
}
