// Test helper: a full Config for netfilter tests, built from the real schema defaults with chosen listeners and netfilter settings.
//
// Starts from validateConfig() of a minimal document, so fields the schema gains later get their
// defaults here too; listeners are then set directly, bypassing cross-field rules that do not
// matter to the netfilter code (e.g. which upstream.forward a mode needs).

import { validateConfig } from '../../src/config/load.js';
import type { Config, ListenerConfig } from '../../src/config/schema.js';

const BASE = validateConfig({
  listeners: [{ name: 'base', mode: 'vip' }],
  upstream: { source: 'clientip', servers: [{ name: 's1', address: '192.0.2.10' }] },
});

export type ListenerInput = Partial<ListenerConfig> & Pick<ListenerConfig, 'mode'>;

/** Listeners are named l0, l1, … unless given a name; port 25 and no destinations by default. */
export function netfilterConfig(listeners: readonly ListenerInput[], netfilter: Partial<Config['netfilter']> = {}): Config {
  const l0 = BASE.listeners[0];
  if (!l0) throw new Error('unreachable: the base config has a listener');
  return {
    ...BASE,
    listeners: listeners.map((l, i) => ({ ...l0, name: `l${i}`, port: 25, destinations: [], ...l })),
    netfilter: { ...BASE.netfilter, ...netfilter },
  };
}
