// listeners[].freebind: a listener binds an address this host does not hold (IP_FREEBIND), as the
// standby of an HA pair does with the VIP; without it the bind fails with EADDRNOTAVAIL and a hint.
// The addon's helper directly, then `etd run` with the config key.
//
// 192.0.2.0/24 and 2001:db8::/32 are documentation prefixes no host here holds; nothing is sent.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadTransparent, TransparentSyscallError } from '../../src/native/transparent.js';
import { CLI, runEtd } from '../helpers/cli.js';

const sockets = loadTransparent();

it('binds a non-local IPv4 and IPv6 address only with freebind', () => {
  for (const [family, address] of [
    [4, '192.0.2.77'],
    [6, '2001:db8::77'],
  ] as const) {
    let thrown: unknown;
    try {
      sockets.closeFd(sockets.plainListener({ family, address, port: 0, backlog: 1, v6only: true }));
    } catch (e) {
      thrown = e;
    }
    expect(thrown, address).toBeInstanceOf(TransparentSyscallError);
    expect((thrown as TransparentSyscallError).message, address).toMatch(/EADDRNOTAVAIL/);

    const fd = sockets.plainListener({ family, address, port: 0, backlog: 1, v6only: true, freebind: true });
    try {
      const [bound, port] = sockets.sockName(fd);
      expect(bound).toBe(address);
      expect(port).toBeGreaterThan(0);
    } finally {
      sockets.closeFd(fd);
    }
  }
});

it('rejects a freebind that is not a boolean', () => {
  expect(() =>
    sockets.plainListener({ family: 4, address: '127.0.0.1', port: 0, backlog: 1, v6only: false, freebind: 'yes' as unknown as boolean }),
  ).toThrow(TypeError);
});

describe('etd run with a listener on an address this host does not hold', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-freebind-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const configFile = (freebind: boolean): string => {
    const file = path.join(dir, `freebind-${freebind}.yaml`);
    fs.writeFileSync(
      file,
      `listeners:
  - { name: vip, address: 192.0.2.77, port: 0, mode: plain, freebind: ${freebind} }
upstream:
  source: self
  health: { enabled: false }
  servers:
    - { name: s, address: 127.0.0.1, port: 2 }
api: { enabled: false }
state: { path: ":memory:" }
`,
    );
    return file;
  };

  it('without freebind: ETD_ERR_LISTEN with EADDRNOTAVAIL, and the hint names freebind', async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(process.execPath, [CLI, 'run', '-c', configFile(false)], { timeout: 20_000 }, (err, _o, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stderr }),
      ),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ETD_ERR_LISTEN: listener vip: cannot listen on 192\.0\.2\.77:0: EADDRNOTAVAIL/);
    expect(r.stderr).toMatch(/listeners\[\]\.freebind: true/);
  });

  it('a reload that turns freebind off rebinds the listener, so it is refused and the running listener stays', async () => {
    const file = path.join(dir, 'reload.yaml');
    fs.copyFileSync(configFile(true), file);
    const etd = runEtd(file);
    try {
      await etd.waitFor((l) => l.msg === 'etd started', 15_000);
      fs.writeFileSync(file, fs.readFileSync(configFile(false), 'utf8'));
      etd.child.kill('SIGHUP');
      const refused = await etd.waitFor((l) => l.msg === 'reload refused; the running configuration stays', 15_000);
      expect(JSON.stringify(refused)).toMatch(/EADDRNOTAVAIL/);
      // One engine thread: stopped, then restored after the failed rebind (2 lines). Several workers:
      // the main thread binds the new sockets before it touches the running ones (1 line).
      expect(etd.lines.filter((l) => l.msg === 'listening').length).toBeGreaterThanOrEqual(1);
      expect(etd.lines.some((l) => l.msg === 'configuration reloaded')).toBe(false);
      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
    } finally {
      etd.child.kill('SIGKILL');
    }
  });

  it('with freebind: etd starts, listening on it, and stops cleanly', async () => {
    const etd = runEtd(configFile(true));
    try {
      const listening = await etd.waitFor((l) => l.msg === 'listening', 15_000);
      expect(String((listening.addresses as string[])[0])).toMatch(/^192\.0\.2\.77:\d+$/);
      await etd.waitFor((l) => l.msg === 'etd started', 15_000);
      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
    } finally {
      etd.child.kill('SIGKILL');
    }
  });
});
