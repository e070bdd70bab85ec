// scripts/install.sh --keepalived (docs/ha.md): installs keepalived, curl, the track script and
// the example configs, never keepalived.conf; without the flag nothing of keepalived is touched.
// Dry runs only: they print every command and change nothing (test/integration/service.test.ts
// checks that for the plain install; here /etc/keepalived is compared before and after).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';

const ROOT = path.join(__dirname, '../..');
const INSTALL = path.join(ROOT, 'scripts/install.sh');
const KA = '/etc/keepalived';

function dryRun(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', [INSTALL, '--dry-run', ...args], { timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }),
    );
  });
}

function listing(): string {
  try {
    return fs
      .readdirSync(KA)
      .map((f) => {
        const s = fs.statSync(path.join(KA, f));
        return `${f} ${s.mode} ${s.size} ${s.mtimeMs}`;
      })
      .join('\n');
  } catch {
    return 'absent';
  }
}

it('--keepalived adds keepalived and curl, the track script and the example configs, never keepalived.conf', async () => {
  const before = listing();
  const r = await dryRun(['--keepalived']);
  expect(listing(), 'the dry run changed /etc/keepalived').toBe(before);
  // The build may be missing in a bare checkout: a dry run then reports it and still shows every step.
  expect(r.stdout).toMatch(/==> \d+\. system packages: .*\bkeepalived curl\b/);
  const step = r.stdout.slice(r.stdout.indexOf('HA pair (--keepalived)'));
  expect(step).not.toBe('');
  expect(step).toMatch(/\+ install -d -m 0755 \/etc\/keepalived/);
  expect(step).toMatch(
    /\/etc\/keepalived\/etd-health\.sh (is up to date|\(mode 0755, root:root\) from examples\/keepalived\/etd-health\.sh)/,
  );
  for (const gw of ['a', 'b'])
    expect(step).toMatch(new RegExp(`/etc/keepalived/etd-keepalived-${gw}\\.conf\\.example .*(0644|up to date)`));
  expect(r.stdout).not.toMatch(/write \/etc\/keepalived\/keepalived\.conf/);
  // Examples travel with the program files, with or without the flag.
  expect(r.stdout).toMatch(/\+ cp -R \S+\/examples \/opt\/\.etd\.new\//);
});

it('without --keepalived nothing of keepalived is installed or mentioned', async () => {
  const r = await dryRun([]);
  expect(r.stdout).not.toMatch(/keepalived/i);
});

it('--keepalived does not go with --uninstall', async () => {
  const r = await dryRun(['--uninstall', '--keepalived']);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/--keepalived goes with an install/);
});
