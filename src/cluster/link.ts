// Pure: the cluster link's up/down state and what each change says — one warning when Redis goes down, one when it comes back.

export type LinkState = 'connecting' | 'up' | 'down';

export type LinkEvent = 'ready' | 'lost' | 'failed';

export interface LinkStep {
  readonly state: LinkState;
  /** What to log at warn level, once per change; undefined: nothing to say. */
  readonly warn?: 'down' | 'up' | 'unreachable';
  /** Whether to log at info (the first connect is news, not a warning). */
  readonly info?: 'connected';
}

/**
 * `ready`: Redis answers; `lost`: an established connection closed; `failed`: a connect attempt
 * failed. A link that never came up says "unreachable" once, then stays quiet while retrying.
 */
export function linkStep(state: LinkState, event: LinkEvent, everUp: boolean): LinkStep {
  switch (event) {
    case 'ready':
      if (state === 'up') return { state };
      return everUp ? { state: 'up', warn: 'up' } : { state: 'up', info: 'connected' };
    case 'lost':
    case 'failed':
      if (state === 'up') return { state: 'down', warn: 'down' };
      if (state === 'connecting') return { state: 'down', warn: 'unreachable' };
      return { state };
  }
}
