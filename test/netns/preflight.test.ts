// `etd run` in the netns lab refuses to start on a critical preflight FAIL (src_valid_mark=1), says why and how to fix it, and leaves no rules behind; corrected, it starts and its preflight passes within a second.
//
// Apart from doctor.test.ts because it times the preflight: it runs in the serial group (test/schedule.ts).

import { beforeAll, describe, expect, it } from 'vitest';
import type { Lab } from '../../lab/netns.js';
import { CLI } from '../helpers/cli.js';
import { firstBackends, type LabSuite, labSuite, labVipConfig } from '../helpers/labSuite.js';
import { skipPrivileged } from '../helpers/privileged.js';

const skip = skipPrivileged('etd run preflight in the lab');
let suite: LabSuite;
let lab: Lab;
let file: string;

const gw = (cmd: string, ...args: string[]) => lab.exec(lab.ns.gateway, cmd, args);
const sysctl = (...kv: string[]) => gw('sysctl', '-q', '-w', ...kv);

describe.skipIf(skip)('etd run preflight in the lab', () => {
  suite = labSuite({
    name: 'preflight',
    recorder: firstBackends,
  });

  beforeAll(async () => {
    ({ lab } = suite);
    // Every session must meet the window (no pass/deny cache), and nothing is written outside the lab.
    file = suite.writeConfig(labVipConfig(lab, { extra: 'cache: { enabled: false }' }));
    // etd's rules are in place, as an operator's `etd rules apply` leaves them: the refused start must remove them.
    const applied = await lab.exec(lab.ns.gateway, process.execPath, [CLI, 'rules', 'apply', '-c', file], { allowFailure: true });
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
  }, 60_000);

  it('etd run refuses to start on a critical FAIL, says why and how to fix it, and leaves no rules behind', async () => {
    await sysctl('net.ipv4.conf.all.src_valid_mark=1');
    try {
      const etd = suite.spawn(file);
      const code = await Promise.race([etd.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
      if (code === 'hung') etd.child.kill('SIGKILL');
      expect(code).toBe(1);
      expect(etd.stderr).toContain('ETD_ERR_PREFLIGHT');
      expect(etd.stderr).toContain('sysctl.src_valid_mark');
      expect(etd.stderr).toContain('sysctl -w net.ipv4.conf.all.src_valid_mark=0');
      expect(etd.lines.some((l) => l.msg.startsWith('preflight FAIL') && l.check === 'sysctl.src_valid_mark')).toBe(true);
      const nft = await gw('nft', 'list', 'tables');
      expect(nft.stdout).not.toMatch(/table inet etd\b/);
      expect((await gw('ip', 'rule', 'show')).stdout).not.toMatch(/fwmark 0x1 lookup 100/);
    } finally {
      await sysctl('net.ipv4.conf.all.src_valid_mark=0');
    }
    // Correct again: etd starts and its preflight passes.
    const etd = suite.spawn(file);
    try {
      const passed = await etd.waitFor((l) => l.msg === 'preflight passed', 15_000);
      expect(Number(passed.ms)).toBeLessThan(1000);
      await etd.waitFor((l) => l.msg === 'etd started', 15_000);
    } finally {
      etd.child.kill('SIGTERM');
      await Promise.race([etd.exited, new Promise((r) => setTimeout(r, 10_000))]);
      etd.child.kill('SIGKILL');
    }
  }, 90_000);
});
