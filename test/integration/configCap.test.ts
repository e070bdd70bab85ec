// Bounded config and argv secrets through the real CLI: a config over 1 MiB is refused by etd check and by a SIGHUP reload (the running config stays); `etd status --token` is refused with the reason.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { assertBuilt, CLI, type RunningEtd, runEtd } from '../helpers/cli.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-cap-'));
let etd: RunningEtd | undefined;
afterAll(() => {
  if (etd && etd.child.exitCode === null) etd.child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  assertBuilt();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

const doc = {
  listeners: [{ name: 'smtp', address: '127.0.0.1', port: 0, mode: 'plain' }],
  upstream: { source: 'self', health: { enabled: false }, servers: [{ name: 'mx', address: '127.0.0.1', port: 25 }] },
  api: { enabled: true, address: '127.0.0.1', port: 0 },
  state: { path: ':memory:' },
  log: { level: 'info' },
};
// Valid YAML padded past the cap with comments: what is refused is the size, not the content.
const padded = (d: unknown) =>
  `${YAML.stringify(d)}${'# padding padding padding padding padding padding padding padding\n'.repeat(17_000)}`;

describe('config size cap and argv secrets', () => {
  it('etd check refuses a config over 1 MiB with the reason; the same content under the cap passes', async () => {
    const big = path.join(tmp, 'big.yaml');
    fs.writeFileSync(big, padded(doc));
    expect(fs.statSync(big).size).toBeGreaterThan(1024 * 1024);
    const r = await cli(['check', '-c', big]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/larger than 1 MiB/);
    const small = path.join(tmp, 'small.yaml');
    fs.writeFileSync(small, YAML.stringify(doc));
    expect((await cli(['check', '-c', small])).code).toBe(0);
  });

  it('a SIGHUP reload of a config over 1 MiB is refused and the running config stays', async () => {
    const file = path.join(tmp, 'etd.yaml');
    fs.writeFileSync(file, YAML.stringify(doc));
    etd = runEtd(file);
    const api = await etd.waitFor((l) => l.msg === 'management API listening', 15_000);
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);
    fs.writeFileSync(file, padded({ ...doc, detection: { window: '1s' } }));
    etd.child.kill('SIGHUP');
    const refused = await etd.waitFor((l) => String(l.msg).includes('reload refused'), 10_000);
    expect(String(refused.err)).toMatch(/larger than 1 MiB/);
    const config = (await (await fetch(`${String(api.url)}/v1/config`)).json()) as { detection: { window: string } };
    expect(config.detection.window).not.toBe('1s');
    etd.child.kill('SIGTERM');
    expect(await etd.exited).toBe(0);
  }, 40_000);

  it('etd status --token is refused (ps shows argv); --token-file and ETD_TOKEN are the ways', async () => {
    for (const args of [
      ['status', '--token', 'secret-secret-secret'],
      ['status', '--token=secret-secret-secret'],
    ]) {
      const r = await cli(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--token was removed: a token on the command line shows in ps; use --token-file FILE or the ETD_TOKEN/);
    }
    const r = await cli([
      'status',
      '-c',
      path.join(tmp, 'none.yaml'),
      '--url',
      'http://127.0.0.1:1',
      '--token-file',
      path.join(tmp, 'missing'),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read the token file .*missing: ENOENT/);
  });
});
