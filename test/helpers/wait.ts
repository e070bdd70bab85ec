// The one way a test waits: for a state (waitFor), never for a guessed time; sleep is for tests whose subject is time passing.

export interface WaitOptions {
  /** Give up after this long, in ms (default 10 s). */
  timeout?: number;
  /** Poll every this many ms (default 20). */
  interval?: number;
  /** What is awaited, for the failure message: "3 held connections"; a function is called on failure (to show a count). */
  what?: string | (() => string);
  /** Extra detail appended to the failure message, computed only on failure (the log so far, a status). */
  detail?: () => string;
}

/** A value that means "not yet". */
type NotYet = undefined | null | false;

/**
 * Polls `cond` until it returns a value other than undefined, null or false, and resolves with that
 * value (so `await waitFor(() => lines.find(...))` hands back the line). Throws after `timeout` ms
 * with a message naming `what` it waited for; an exception from `cond` fails at once.
 */
export async function waitFor<T>(cond: () => T | NotYet | Promise<T | NotYet>, opts: WaitOptions = {}): Promise<T> {
  const { timeout = 10_000, interval = 20, what = 'a condition', detail } = opts;
  const deadline = performance.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v !== undefined && v !== null && v !== false) return v;
    if (performance.now() > deadline) {
      const more = detail?.();
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}${more ? `\n${more}` : ''}`);
    }
    await sleep(interval);
  }
}

/**
 * Lets `ms` pass. Only for a test whose subject is time (a window that must not have ended yet,
 * "nothing happens for a while"); to wait for a state, use waitFor.
 */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
