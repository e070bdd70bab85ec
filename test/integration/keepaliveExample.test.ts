// examples/keepalived: the track script passes shellcheck and answers right against a real HTTP
// server on loopback TCP and on a unix socket, without curl (bash's /dev/tcp; node) and, where
// curl is installed (CI installs it; in CI a missing curl fails), with curl; the configs of A and B differ only where
// they must. test/netns/ha.test.ts runs them in keepalived.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { skipWithout } from '../helpers/privileged.js';

const EXAMPLES = path.join(__dirname, '../../examples/keepalived');
const SCRIPT = path.join(EXAMPLES, 'etd-health.sh');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-kaex-'));
const sock = path.join(dir, 'api.sock');
const servers: http.Server[] = [];
let port = 0;
let stalled = 0;

function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  if (req.url === '/healthz') res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
  else if (req.url === '/readyz')
    res.writeHead(503, { 'content-type': 'application/json' }).end('{"ready":false,"reasons":["no backend server is up"]}');
  else res.writeHead(404).end();
}

function runScript(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile('/bin/bash', [SCRIPT, ...args], { env, timeout: 10_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stderr });
    });
  });
}

/** PATH with node but no curl: the script must fall back to /dev/tcp (TCP) and node (unix socket). */
const nodeOnly = path.join(dir, 'node-only');
const noCurl = { ...process.env, PATH: nodeOnly };
/** PATH with neither. */
const nothing = { ...process.env, PATH: path.join(dir, 'empty') };
// Outside CI a missing curl skips its cases (printed); in CI it fails: .ci/run installs curl.
const curl = !skipWithout('curl', 'curl', 'the curl cases of etd-health.sh');

beforeAll(async () => {
  fs.mkdirSync(nodeOnly);
  fs.mkdirSync(path.join(dir, 'empty'));
  fs.symlinkSync(process.execPath, path.join(nodeOnly, 'node'));
  for (const listen of [{ port: 0, host: '127.0.0.1' }, { path: sock }]) {
    const s = http.createServer(handler);
    servers.push(s);
    await new Promise<void>((r) => s.listen(listen, r));
  }
  port = (servers[0]!.address() as AddressInfo).port;
  // A server that accepts and never answers: a stuck etd.
  const stuck = http.createServer(() => undefined);
  servers.push(stuck);
  await new Promise<void>((r) => stuck.listen({ port: 0, host: '127.0.0.1' }, r));
  stalled = (stuck.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(skipWithout('shellcheck', 'shellcheck', 'shellcheck of examples/keepalived'))('examples/keepalived scripts', () => {
  it('pass shellcheck', async () => {
    const scripts = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith('.sh'));
    expect(scripts).toContain('etd-health.sh');
    const r = await new Promise<{ code: number; out: string }>((resolve) =>
      execFile(
        'shellcheck',
        scripts.map((f) => path.join(EXAMPLES, f)),
        (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr }),
      ),
    );
    expect(r.code, r.out).toBe(0);
  });
});

describe('etd-health.sh', () => {
  it('is executable', () => {
    expect(fs.statSync(SCRIPT).mode & 0o111).toBe(0o111);
  });

  for (const [how, env, skip] of [
    ['curl', process.env, !curl],
    ['/dev/tcp', noCurl, false],
  ] as const) {
    it.skipIf(skip)(`over TCP with ${how}: 0 for a 200, non-zero for a 503, a refused connect or a stuck server`, async () => {
      expect((await runScript([`127.0.0.1:${port}`], env)).code).toBe(0);
      expect((await runScript([`127.0.0.1:${port}`, '/healthz'], env)).code).toBe(0);
      expect((await runScript([`127.0.0.1:${port}`, '/readyz'], env)).code).not.toBe(0);
      // Port 1 on loopback: nothing listens there.
      expect((await runScript(['127.0.0.1:1'], env)).code).not.toBe(0);
      const t0 = Date.now();
      expect((await runScript([`127.0.0.1:${stalled}`], { ...env, ETD_HEALTH_TIMEOUT: '1' })).code).not.toBe(0);
      expect(Date.now() - t0).toBeLessThan(3000);
    });
  }

  for (const [how, env, skip] of [
    ['curl', process.env, !curl],
    ['node', noCurl, false],
  ] as const) {
    it.skipIf(skip)(`over a unix socket with ${how}: 0 for a 200, non-zero for a 503 or no socket`, async () => {
      expect((await runScript([sock, '/healthz'], env)).code).toBe(0);
      expect((await runScript([sock, '/readyz'], env)).code).not.toBe(0);
      expect((await runScript([path.join(dir, 'no.sock')], env)).code).not.toBe(0);
    });
  }

  it('over a unix socket with neither curl nor node it says what it needs', async () => {
    const r = await runScript([sock], nothing);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/needs curl or node/);
  });

  it('refuses an endpoint other than /healthz and /readyz', async () => {
    const r = await runScript([`127.0.0.1:${port}`, '/v1/status']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/ENDPOINT must be/);
  });
});

it('keepalived-a.conf and keepalived-b.conf differ only in the header, router_id and priority (A preferred)', () => {
  const a = fs.readFileSync(path.join(EXAMPLES, 'keepalived-a.conf'), 'utf8').split('\n');
  const b = fs.readFileSync(path.join(EXAMPLES, 'keepalived-b.conf'), 'utf8').split('\n');
  expect(a.length).toBe(b.length);
  const differing = a.map((line, i) => [line, b[i]!] as const).filter(([x, y]) => x !== y);
  expect(differing.map(([x]) => x.trim().split(/\s+/).slice(0, 2).join(' '))).toEqual([
    '# keepalived.conf',
    '# Gateway',
    'router_id etd-gw-a',
    'priority 150',
  ]);
  expect(b.find((l) => l.trim().startsWith('priority'))?.trim()).toBe('priority 100');
  for (const text of [a, b]) {
    expect(text.some((l) => l.trim() === 'nopreempt')).toBe(true);
    expect(text.some((l) => l.trim() === 'state BACKUP')).toBe(true);
  }
});
