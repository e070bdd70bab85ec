// Keeps etd's netfilter setup in place while it runs: if something removed it (e.g. a restart of
// nftables.service, whose /etc/nftables.conf starts with `flush ruleset`), it is re-applied.

import type { Config } from '../config/schema.js';
import { describeError } from '../errors.js';
import { applyNetfilter, type NetfilterLog, verifyNetfilter } from './setup.js';

/** Starts the periodic check; returns the function that stops it. */
export function watchNetfilter(config: Config, log: NetfilterLog & { error(obj: object, msg: string): void }, everyMs: number): () => void {
  let running = false;
  const check = async () => {
    if (running) return;
    running = true;
    try {
      const state = await verifyNetfilter(config);
      if (!state.ok) {
        const missing = state.items.filter((i) => i.status !== 'ok' && i.status !== 'unsupported').map((i) => `${i.id}: ${i.status}`);
        log.warn({ missing }, "etd's netfilter setup was changed from outside (nftables restarted? flush ruleset?); re-applying it");
        await applyNetfilter(config, log);
      }
    } catch (e) {
      log.error({ err: describeError(e) }, 'netfilter check failed; transparent sessions may fail until it is fixed');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void check(), everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
