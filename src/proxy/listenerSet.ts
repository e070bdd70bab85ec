// The configured listeners as one set: started together, changed by a reload all or nothing, stopped together.

import type { Logger } from 'pino';
import type { Config, ListenerConfig } from '../config/schema.js';
import { describeError } from '../errors.js';
import type { Listener } from './listener.js';

function listenerKey(l: ListenerConfig): string {
  return JSON.stringify([l.name, l.address, l.port, l.mode, l.backlog, l.destinations, l.freebind]);
}

export class ListenerSet {
  private readonly listeners = new Map<string, Listener>();

  constructor(
    /** Builds (not starts) a listener with the session context of `config`. */
    private readonly make: (l: ListenerConfig, config: Config) => Listener,
    private readonly log: Logger,
  ) {}

  list(): Listener[] {
    return [...this.listeners.values()];
  }

  async start(config: Config): Promise<void> {
    for (const l of config.listeners) await this.add(l, config);
  }

  private async add(l: ListenerConfig, config: Config): Promise<Listener> {
    const listener = this.make(l, config);
    await listener.start();
    this.listeners.set(l.name, listener);
    return listener;
  }

  /**
   * New, removed and changed listeners are started, stopped or rebound. Binding is the only step
   * of a reload that can fail: if a bind fails, what was stopped is started again and nothing
   * else changes, so a reload is all or nothing.
   */
  async reload(next: Config, prev: Config): Promise<void> {
    const wanted = new Map(next.listeners.map((l) => [l.name, l]));
    const stopped: Listener[] = [];
    const started: Listener[] = [];
    try {
      for (const [name, listener] of [...this.listeners]) {
        const want = wanted.get(name);
        if (!want || listenerKey(want) !== listenerKey(listener.config)) {
          await listener.stop();
          this.listeners.delete(name);
          stopped.push(listener);
        }
      }
      for (const l of next.listeners) if (!this.listeners.has(l.name)) started.push(await this.add(l, next));
    } catch (e) {
      for (const l of started) {
        await l.stop();
        this.listeners.delete(l.config.name);
      }
      for (const l of stopped)
        await this.add(l.config, prev).catch((err: unknown) =>
          this.log.error({ err: describeError(err), listener: l.config.name }, 'could not restore a listener after a failed reload'),
        );
      throw e;
    }
  }

  /** Stops accepting; existing connections are not touched. */
  async stop(): Promise<void> {
    await Promise.all(this.list().map((l) => l.stop()));
    this.listeners.clear();
  }
}
