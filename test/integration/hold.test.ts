// 5,000 connections held at once: one shared window, each passed or dropped correctly (bounded).

import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';

let backend: net.Server;
let etd: TestEtd;
let backendConnections = 0;

beforeAll(async () => {
  // A minimal SMTP backend that greets and answers QUIT: cheap enough for thousands of sessions.
  backend = net.createServer((c) => {
    backendConnections++;
    c.on('error', () => undefined);
    c.write('220 bulk.test ESMTP\r\n');
    c.on('data', (d) => {
      if (d.toString().startsWith('QUIT')) c.end('221 2.0.0 bye\r\n');
    });
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', 4096, r));
  const port = (backend.address() as net.AddressInfo).port;
  etd = await startEtdForTest({ detection: { window: '3s' }, upstream: { servers: [{ name: 'bulk', address: '127.0.0.1', port }] } });
});

afterAll(async () => {
  await etd?.stop(1000);
  backend?.close();
});

it('holds 5,000 silent and talking connections at once and gives each the right verdict', async () => {
  const n = 5000;
  let peakHeld = 0;
  const sampler = setInterval(() => (peakHeld = Math.max(peakHeld, etd.app.stats.held)), 20);
  const child = spawn(process.execPath, [path.join(__dirname, '../helpers/loadClient.mjs'), String(etd.port), String(n), '3000', '40000'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  await new Promise((r) => child.on('exit', r));
  clearInterval(sampler);
  const result = JSON.parse(out.trim());
  expect(result.failures).toEqual([]);
  expect(result.silentPassed).toBe(n / 2);
  expect(result.talkerDropped).toBe(n / 2);
  // All held together: the peak of the held gauge shows they overlapped.
  expect(peakHeld).toBeGreaterThan(n * 0.6);
  const sums = await etd.waitForSummaries(n, 20_000);
  expect(sums.filter((s) => s.verdict === 'passed')).toHaveLength(n / 2);
  expect(sums.filter((s) => s.verdict === 'early_talker')).toHaveLength(n / 2);
  expect(backendConnections).toBe(n / 2);
  expect(etd.app.engineCounts()?.connections).toBe(0);
  expect(etd.app.stats.held).toBe(0);
  expect(etd.app.stats.relaying).toBe(0);
}, 90_000);
