// The etd command line as users run it: check (good and bad files), run, SIGHUP reload, SIGTERM with grace.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt, CLI, runEtd } from '../helpers/cli.js';
import { rawClient } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { waitFor } from '../helpers/wait.js';

const exec = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-cli-'));
let backend: TestBackend;

beforeAll(async () => {
  assertBuilt();
  backend = await startBackend({ name: 'cli.test' });
});
afterAll(async () => {
  await backend.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function writeConfig(name: string, body: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, body);
  return f;
}

const config = (window: string, action: string, port = 0) => `
listeners: [{ name: smtp, address: 127.0.0.1, port: ${port} }]
detection: { window: ${window}, action: ${action} }
upstream: { servers: [{ name: b, address: 127.0.0.1, port: ${backend.port} }] }
timeouts: { shutdownGrace: 5s }
api: { enabled: false }
state: { path: ":memory:" }
cache: { enabled: false }
log: { level: info }
`;

describe('etd check', () => {
  it('prints the effective config and exits 0', async () => {
    const f = writeConfig('good.yaml', config('2s', 'drop'));
    const { stdout } = await exec(process.execPath, [CLI, 'check', '-c', f]);
    expect(stdout).toContain('OK — effective configuration');
    expect(stdout).toMatch(/window: 2s/);
    expect(stdout).toMatch(/connectTimeout: 5s/);
  });

  it('exits 1 with the key path and no stack trace on a bad file', async () => {
    const f = writeConfig('bad.yaml', config('2 seconds', 'drop'));
    const err = await exec(process.execPath, [CLI, 'check', '-c', f]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toMatch(/ETD_ERR_CONFIG_INVALID: .*bad\.yaml: 1 problem:\n\s+detection\.window: must be a duration/);
    expect(err?.stderr).not.toMatch(/\n\s+at /);
  });

  it('exits 1 for a missing file with the fix', async () => {
    const err = await exec(process.execPath, [CLI, 'check', '-c', path.join(dir, 'nope.yaml')]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toMatch(
      /ETD_ERR_CONFIG_READ: cannot read config .*ENOENT — pass the path of an existing file/,
    );
  });
});

describe('etd run', () => {
  it('serves, refuses a bad SIGHUP reload, applies a good one, and drains on SIGTERM', async () => {
    const f = writeConfig('run.yaml', config('300ms', 'drop'));
    const etd = runEtd(f);
    try {
      const listening = await etd.waitFor((l) => l.msg === 'listening');
      const port = Number(
        String((listening.addresses as string[])[0])
          .split(':')
          .pop(),
      );
      // An early talker is dropped: nothing comes back.
      const early = await rawClient(port, (s) => s.write('EHLO x\r\n'), 2000);
      expect(early.data.length).toBe(0);
      await etd.waitFor((l) => l.msg === 'session' && l.verdict === 'early_talker');

      // A bad config on SIGHUP is refused; the old behaviour (drop) stays.
      fs.writeFileSync(f, config('300ms', 'explode'));
      etd.child.kill('SIGHUP');
      const refused = await etd.waitFor((l) => l.msg.startsWith('reload refused'));
      expect(String(refused.err)).toMatch(/detection\.action: must be one of/);
      const stillDropped = await rawClient(port, (s) => s.write('EHLO x\r\n'), 2000);
      expect(stillDropped.data.length).toBe(0);

      // A good config on SIGHUP: action reject now answers 554.
      fs.writeFileSync(f, config('300ms', 'reject'));
      etd.child.kill('SIGHUP');
      await etd.waitFor((l) => l.msg === 'configuration reloaded');
      const rejected = await rawClient(port, (s) => s.write('EHLO x\r\n'), 2000);
      expect(rejected.data.toString()).toMatch(/^554 5\.5\.1/);

      // SIGTERM while a session is being relayed: it may finish within the grace time.
      const relayed = rawClient(
        port,
        (s) => {
          s.once('data', () => {
            etd.child.kill('SIGTERM');
            setTimeout(() => s.write('QUIT\r\n'), 300);
          });
        },
        5000,
      );
      const r = await relayed;
      expect(r.data.toString()).toMatch(/^220 cli\.test[\s\S]*221 /);
      expect(await etd.exited).toBe(0);
      const summaries = etd.lines.filter((l) => l.msg === 'session');
      const last = summaries.at(-1)!;
      expect(last.verdict).toBe('passed');
      expect(last.cause).toBe('server_closed');
    } finally {
      etd.child.kill('SIGKILL');
    }
  });

  it('refuses to start with a clear error when the port is taken', async () => {
    const net = await import('node:net');
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as import('node:net').AddressInfo).port;
    const f = writeConfig('busy.yaml', config('1s', 'drop', port));
    const err = await exec(process.execPath, [CLI, 'run', '-c', f]).catch((e: { code: number; stderr: string }) => e);
    blocker.close();
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toMatch(
      /ETD_ERR_LISTEN: listener smtp: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE — another process holds/,
    );
  });
});

describe('etd run as a service', () => {
  it('tells systemd READY=1 through NOTIFY_SOCKET, serves the API, and etd status reads it', async () => {
    // A stand-in for systemd's notify socket: a unix datagram socket (python3: Node has no AF_UNIX datagrams).
    const sock = path.join(dir, 'notify.sock');
    const { spawn } = await import('node:child_process');
    const listener = spawn(
      'python3',
      [
        '-c',
        `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
s.settimeout(20)
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`,
        sock,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let got = '';
    listener.stdout.on('data', (c) => (got += c));
    const until = (pred: () => boolean) => waitFor(pred, { detail: () => `notify socket got: ${got}` });
    await until(() => got.includes('bound'));
    const f = writeConfig('svc.yaml', config('1s', 'drop').replace('api: { enabled: false }', 'api: { address: 127.0.0.1, port: 0 }'));
    process.env.NOTIFY_SOCKET = sock;
    const etd = runEtd(f);
    delete process.env.NOTIFY_SOCKET;
    try {
      const apiLine = await etd.waitFor((l) => l.msg === 'management API listening');
      await until(() => got.includes('READY=1'));
      expect(got).toMatch(/READY=1\|STATUS=serving\|MAINPID=\d+/);
      const { stdout } = await exec(process.execPath, [CLI, 'status', '--url', String(apiLine.url)]);
      expect(stdout).toMatch(/smtp/);
      const json = JSON.parse((await exec(process.execPath, [CLI, 'status', '--json', '--url', String(apiLine.url)])).stdout);
      expect(json.status.version).toMatch(/^\d+\.\d+\.\d+/);
      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
      await until(() => got.includes('STOPPING=1'));
    } finally {
      etd.child.kill('SIGKILL');
      listener.kill('SIGKILL');
    }
  });
});
