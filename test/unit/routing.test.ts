// Unit tests for src/netfilter/routing.ts: the planned iproute2 commands, the delete-until-absent loop, parsing of `ip -j` output.

import { describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { isEtdError } from '../../src/errors.js';
import {
  applyRouting,
  countRules,
  formatStep,
  hasLocalRoute,
  type IpResult,
  type IpRunner,
  planApplyRouting,
  planRemoveRouting,
  readRouting,
  removeRouting,
} from '../../src/netfilter/routing.js';

const NF: Config['netfilter'] = { manage: true, mark: 1, table: 100, rulePriority: 100, tproxyPort: 10025, tableName: 'etd' };

/** A fake `ip` that answers from a script of (argv prefix → result) and records every call. */
function fakeIp(answer: (argv: string) => IpResult): IpRunner & { calls: string[] } {
  const calls: string[] = [];
  const fn = async (argv: readonly string[]) => {
    calls.push(argv.join(' '));
    return answer(argv.join(' '));
  };
  return Object.assign(fn, { calls });
}
const okR: IpResult = { code: 0, stdout: '', stderr: '' };
const fail = (stderr: string): IpResult => ({ code: 2, stdout: '', stderr });

describe('plans', () => {
  it('apply: delete every copy of the rule, add one, replace the local route', () => {
    expect(planApplyRouting(NF, 4).map(formatStep)).toEqual([
      'ip -4 rule del fwmark 0x1 lookup 100 priority 100',
      'ip -4 rule add fwmark 0x1 lookup 100 priority 100',
      'ip -4 route replace local 0.0.0.0/0 dev lo table 100',
    ]);
    expect(planApplyRouting({ ...NF, mark: 0xbeef, table: 205, rulePriority: 42 }, 6).map(formatStep)).toEqual([
      'ip -6 rule del fwmark 0xbeef lookup 205 priority 42',
      'ip -6 rule add fwmark 0xbeef lookup 205 priority 42',
      'ip -6 route replace local ::/0 dev lo table 205',
    ]);
  });

  it("remove: only etd's rule and its local default route, never a table flush", () => {
    expect(planRemoveRouting(NF, 6).map(formatStep)).toEqual([
      'ip -6 rule del fwmark 0x1 lookup 100 priority 100',
      'ip -6 route del local ::/0 dev lo table 100',
    ]);
    expect(planRemoveRouting(NF, 4).map((s) => s.mode)).toEqual(['untilAbsent', 'absentOk']);
  });
});

describe('execution', () => {
  it('apply deletes stale copies until the kernel says none is left, then adds exactly one', async () => {
    let copies = 3;
    const ip = fakeIp((a) => {
      if (a.startsWith('-4 rule del')) return copies-- > 0 ? okR : fail('RTNETLINK answers: No such file or directory');
      if (a.startsWith('-6 rule del')) return fail('RTNETLINK answers: No such file or directory');
      return okR;
    });
    await applyRouting(NF, ip);
    expect(ip.calls.filter((c) => c.startsWith('-4 rule del'))).toHaveLength(4);
    expect(ip.calls.filter((c) => c.includes('rule add'))).toEqual([
      '-4 rule add fwmark 0x1 lookup 100 priority 100',
      '-6 rule add fwmark 0x1 lookup 100 priority 100',
    ]);
  });

  it('a failing command becomes ETD_ERR_ROUTING naming the command, stderr and a hint', async () => {
    const ip = fakeIp((a) =>
      a.includes('route replace')
        ? fail('Error: Nexthop device is not up.')
        : a.includes('rule del')
          ? fail('RTNETLINK answers: No such file or directory')
          : okR,
    );
    const err = await applyRouting(NF, ip).catch((e: unknown) => e);
    expect(isEtdError(err, 'ETD_ERR_ROUTING')).toBe(true);
    expect((err as Error).message).toContain(
      '`ip -4 route replace local 0.0.0.0/0 dev lo table 100` failed: Error: Nexthop device is not up.',
    );
    expect((err as Error).message).toContain('ip link set lo up');
  });

  it('EPERM gets the CAP_NET_ADMIN hint', async () => {
    const err = await applyRouting(
      NF,
      fakeIp(() => fail('RTNETLINK answers: Operation not permitted')),
    ).catch((e: unknown) => e);
    expect(isEtdError(err, 'ETD_ERR_ROUTING') && err.hint).toContain('CAP_NET_ADMIN');
  });

  it('IPv6 disabled in the kernel: apply skips the family and says so; remove ignores it', async () => {
    const ip = fakeIp((a) =>
      a.startsWith('-6')
        ? fail('RTNETLINK answers: Address family not supported by protocol')
        : a.includes('rule del')
          ? fail('RTNETLINK answers: No such file or directory')
          : okR,
    );
    const r = await applyRouting(NF, ip);
    expect(r.skipped.map((s) => s.family)).toEqual([6]);
    // The IPv4 route del succeeds in this fake (1 object removed); the IPv6 failures are ignored.
    await expect(removeRouting(NF, ip)).resolves.toBe(1);
  });

  it('remove tolerates absent rules and routes (ESRCH for IPv4 routes, ENOENT otherwise)', async () => {
    const ip = fakeIp((a) =>
      a.includes('-4 route del') ? fail('RTNETLINK answers: No such process') : fail('RTNETLINK answers: No such file or directory'),
    );
    await expect(removeRouting(NF, ip)).resolves.toBe(0);
  });

  it('a rule that keeps coming back is reported instead of looping forever', async () => {
    const err = await removeRouting(
      NF,
      fakeIp(() => okR),
    ).catch((e: unknown) => e);
    expect(isEtdError(err, 'ETD_ERR_ROUTING')).toBe(true);
    expect((err as Error).message).toContain('still finds a copy');
  });
});

describe('reading back', () => {
  it("counts only rules with etd's exact fwmark (full mask), table and priority", () => {
    const rules = [
      { priority: 0, src: 'all', table: '255' },
      { priority: 100, src: 'all', fwmark: '0x1', table: '100' },
      { priority: 100, src: 'all', fwmark: '0x1', table: '100' },
      { priority: 100, src: 'all', fwmark: '0x1', fwmask: '0xff', table: '100' },
      { priority: 100, src: 'all', fwmark: '0x1', table: '101' },
      { priority: 101, src: 'all', fwmark: '0x1', table: '100' },
      { priority: 100, src: 'all', fwmark: '0x2', table: '100' },
      { priority: 100, src: 'all', not: null, fwmark: '0x1', table: '100' },
    ];
    expect(countRules(rules, NF)).toBe(2);
  });

  it('recognises the local default route to lo', () => {
    expect(hasLocalRoute([{ type: 'local', dst: 'default', dev: 'lo' }])).toBe(true);
    expect(
      hasLocalRoute([
        { dst: 'default', dev: 'lo' },
        { type: 'local', dst: '10.0.0.0/8', dev: 'lo' },
      ]),
    ).toBe(false);
  });

  it('a table that was never created reads as "no route", not an error', async () => {
    const ip = fakeIp((a) =>
      a.includes('rule show')
        ? { code: 0, stdout: '[{"priority":100,"src":"all","fwmark":"0x1","table":"100"}]', stderr: '' }
        : fail('Error: ipv4: FIB table does not exist.\nDump terminated'),
    );
    await expect(readRouting(NF, 4, ip)).resolves.toEqual({ family: 4, rules: 1, route: false });
    expect(ip.calls[0]).toBe('-4 -N -j rule show');
  });
});
