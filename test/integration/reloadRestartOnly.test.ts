// A reload that changes a setting applied only at start (state.path) applies the rest and says in its log that the change waits for a restart.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { type RunningEtd, runEtd } from '../helpers/cli.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-reload-'));
let etd: RunningEtd | undefined;

afterAll(() => {
  if (etd && etd.child.exitCode === null) etd.child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('reload of state.path', () => {
  it('logs that state.path waits for a restart, keeps the open store, and reloads the rest', async () => {
    const file = path.join(tmp, 'etd.yaml');
    const first = path.join(tmp, 'first.db');
    const second = path.join(tmp, 'second.db');
    const doc = (statePath: string, window: string) => ({
      listeners: [{ name: 'smtp', address: '127.0.0.1', port: 0, mode: 'plain' }],
      detection: { window },
      upstream: { source: 'self', health: { enabled: false }, servers: [{ name: 'none', address: '127.0.0.1', port: 9 }] },
      api: { enabled: false },
      state: { path: statePath },
      log: { level: 'info' },
    });
    fs.writeFileSync(file, YAML.stringify(doc(first, '2s')));
    etd = runEtd(file);
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);
    fs.writeFileSync(file, YAML.stringify(doc(second, '3s')));
    etd.child.kill('SIGHUP');
    await etd.waitFor((l) => l.msg === 'configuration reloaded', 10_000);
    const warning = etd.lines.find((l) => l.msg === 'state.path changes take effect at the next restart');
    expect(warning).toMatchObject({ level: 'warn', from: first, to: second });
    expect(fs.existsSync(second)).toBe(false);
    etd.child.kill('SIGTERM');
    expect(await etd.exited).toBe(0);
  }, 40_000);
});
