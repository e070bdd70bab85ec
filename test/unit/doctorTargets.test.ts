// Unit tests for src/doctor/targets.ts: parsing `--probe ADDRESS[:PORT]` and the return-path test's target list.

import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/load.js';
import { interceptForwardsOriginal, parseProbe, returnTargets } from '../../src/doctor/targets.js';
import { isEtdError } from '../../src/errors.js';

describe('parseProbe', () => {
  it.each([
    ['10.0.2.10', '10.0.2.10', 25, 4, 'probe:10.0.2.10:25'],
    ['10.0.2.10:2525', '10.0.2.10', 2525, 4, 'probe:10.0.2.10:2525'],
    ['fd00::10', 'fd00::10', 25, 6, 'probe:[fd00::10]:25'],
    ['[fd00::10]', 'fd00::10', 25, 6, 'probe:[fd00::10]:25'],
    ['[fd00::10]:587', 'fd00::10', 587, 6, 'probe:[fd00::10]:587'],
  ])('%s', (text, address, port, family, server) => {
    expect(parseProbe(text)).toEqual({ server, address, port, family, probe: true });
  });

  it.each([
    ['mx.example.com', /not an IPv4 or IPv6 address/],
    ['10.0.2.10:0', /port "0"/],
    ['10.0.2.10:70000', /port "70000"/],
    ['10.0.2.10:smtp', /port "smtp"/],
    ['[fd00::10]:', /port ""/],
    ['', /not an IPv4/],
  ])('%s is refused with ETD_ERR_USAGE naming the value and the forms', (text, why) => {
    let err: unknown;
    try {
      parseProbe(text);
    } catch (e) {
      err = e;
    }
    expect(isEtdError(err, 'ETD_ERR_USAGE')).toBe(true);
    expect((err as Error).message).toContain(`--probe ${text}`);
    expect((err as Error).message).toMatch(why);
    expect((err as Error).message).toContain('[ADDRESS]:PORT');
  });
});

describe('returnTargets', () => {
  const vip = validateConfig({
    listeners: [{ name: 'smtp', address: '10.0.1.1', port: 25, mode: 'vip' }],
    upstream: { source: 'clientip', servers: [{ name: 'b1', address: '10.0.2.10' }] },
  });
  const intercept = validateConfig({ listeners: [{ name: 'mx', mode: 'intercept' }], upstream: { source: 'clientip' } });
  const plain = validateConfig({
    listeners: [{ name: 'p', address: '127.0.0.1', port: 2525 }],
    upstream: { servers: [{ name: 's', address: '127.0.0.1' }] },
  });

  it('configured clientip servers first, then probes; a probe equal to a server is not tested twice', () => {
    expect(returnTargets(vip, [parseProbe('10.0.2.10'), parseProbe('10.0.5.1:2525')])).toEqual([
      { server: 'b1', address: '10.0.2.10', port: 25, family: 4 },
      { server: 'probe:10.0.5.1:2525', address: '10.0.5.1', port: 2525, family: 4, probe: true },
    ]);
  });

  it('intercept with forward: original has no configured target; plain mode tests nothing', () => {
    expect(interceptForwardsOriginal(intercept)).toBe(true);
    expect(interceptForwardsOriginal(vip)).toBe(false);
    expect(returnTargets(intercept)).toEqual([]);
    expect(returnTargets(intercept, [parseProbe('10.0.2.10')])).toHaveLength(1);
    expect(returnTargets(plain, [parseProbe('10.0.2.10')])).toEqual([]);
  });
});
