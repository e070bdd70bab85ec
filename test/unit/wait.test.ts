// The wait helper: resolves with the first value that is not "not yet", names what it waited for when it gives up.
import { describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/wait.js';

describe('waitFor', () => {
  it('resolves with the first value other than undefined, null or false (0 and "" count as values)', async () => {
    let n = 0;
    const seq: unknown[] = [undefined, null, false, 0];
    expect(await waitFor(() => seq[n++], { interval: 1 })).toBe(0);
    expect(n).toBe(4);
    expect(await waitFor(async () => 'line', { interval: 1 })).toBe('line');
  });

  it('gives up after the timeout with what it waited for and the detail', async () => {
    let calls = 0;
    const err = await waitFor(
      () => {
        calls++;
        return false;
      },
      {
        timeout: 30,
        interval: 5,
        what: () => `3 held (now ${calls > 0 ? 1 : 0})`,
        detail: () => 'the log so far',
      },
    ).catch((e: unknown) => e);
    expect(String(err)).toMatch(/^Error: timed out after 30 ms waiting for 3 held \(now 1\)\nthe log so far$/);
    expect(calls).toBeGreaterThan(1);
  });

  it('fails at once when the condition throws', async () => {
    let calls = 0;
    const err = await waitFor(() => {
      calls++;
      throw new Error('broken probe');
    }).catch((e: unknown) => e);
    expect(String(err)).toBe('Error: broken probe');
    expect(calls).toBe(1);
  });
});
