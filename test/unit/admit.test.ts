// Admission is a pure table: limits first, then the access lists, then the caches; each question asked only when the rules before it did not decide.

import { describe, expect, it } from 'vitest';
import { ADMIT, type AdmissionFacts, admit } from '../../src/proxy/admission.js';

const limits = { maxConnections: 10, maxHeld: 5, perClient: 2 };

function facts(
  f: Partial<{ sessions: number; held: number; perClient: number; listed: 'allow' | 'deny'; overRate: boolean; cached: 'pass' | 'deny' }>,
) {
  const asked: string[] = [];
  const out: AdmissionFacts = {
    sessions: f.sessions ?? 0,
    held: f.held ?? 0,
    perClient: () => {
      asked.push('perClient');
      return f.perClient ?? 0;
    },
    listed: () => {
      asked.push('listed');
      return f.listed;
    },
    withinRate: () => {
      asked.push('rate');
      return !f.overRate;
    },
    cached: () => {
      asked.push('cached');
      return f.cached;
    },
  };
  return { out, asked };
}

describe('admit', () => {
  const rows: Array<[string, Parameters<typeof facts>[0], object, string[], typeof limits?]> = [
    ['a new client waits the window', {}, ADMIT.window, ['perClient', 'listed', 'rate', 'cached']],
    ['maxConnections reached: 421, nothing else asked', { sessions: 10, listed: 'allow' }, ADMIT.maxConnections, []],
    ['maxHeld reached: 421', { sessions: 5, held: 5 }, ADMIT.maxHeld, []],
    ['perClient reached: 421 from your address', { perClient: 2, listed: 'allow' }, ADMIT.perClient, ['perClient']],
    ['perClient 0 is off', { perClient: 99 }, ADMIT.window, ['listed', 'rate', 'cached'], { ...limits, perClient: 0 }],
    ['access deny beats the pass cache', { listed: 'deny', cached: 'pass' }, ADMIT.accessDeny, ['perClient', 'listed']],
    [
      'access allow skips the window, even when the deny cache has it',
      { listed: 'allow', cached: 'deny' },
      ADMIT.allowlist,
      ['perClient', 'listed'],
    ],
    ['deny cache refuses', { cached: 'deny' }, ADMIT.denyCache, ['perClient', 'listed', 'rate', 'cached']],
    ['pass cache skips the window', { cached: 'pass' }, ADMIT.passCache, ['perClient', 'listed', 'rate', 'cached']],
    [
      'over limits.rate: 421 slow down, the caches not asked',
      { overRate: true, cached: 'pass' },
      ADMIT.perClientRate,
      ['perClient', 'listed', 'rate'],
    ],
    ['access allow bypasses the rate', { overRate: true, listed: 'allow' }, ADMIT.allowlist, ['perClient', 'listed']],
    [
      'access deny is refused without counting against the rate',
      { overRate: true, listed: 'deny' },
      ADMIT.accessDeny,
      ['perClient', 'listed'],
    ],
    ['limits come before the lists: a denied client over maxHeld is a limit', { held: 5, listed: 'deny' }, ADMIT.maxHeld, []],
  ];
  for (const [name, f, want, asked, l] of rows) {
    it(name, () => {
      const { out, asked: got } = facts(f);
      expect(admit(l ?? limits, out)).toBe(want);
      expect(got).toEqual(asked);
    });
  }
});
