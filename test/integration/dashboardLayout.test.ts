// The dashboard's tables fit their panels in headless Chromium: at 1280 px (the README's screenshot width) and wider, no table
// is cut off at the right, with real rows in them (early talkers with their bytes, passed sessions, rate refusals, a failing backend).

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Browser,
  fitsWidth,
  launchBrowser,
  overflowingTables,
  screenshot,
  skipWithoutChromium,
  tableFits,
} from '../helpers/browser.js';
import { type RunningEtd, runEtd, stopEtd } from '../helpers/cli.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { waitFor } from '../helpers/wait.js';

const skip = skipWithoutChromium('dashboard layout');

let dir: string;
let etd: RunningEtd;
let backend: TestBackend;
let browser: Browser;
let apiUrl: string;
let smtpPort: number;

/** One client connection: sends `early` at once (an early talker), or waits for the greeting and quits. */
function client(early: string | undefined, from = '127.0.0.1'): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ port: smtpPort, host: '127.0.0.1', localAddress: from });
    s.on('connect', () => {
      if (early !== undefined) s.write(early);
    });
    s.on('data', (d) => {
      if (d.toString().startsWith('220 ')) s.write('QUIT\r\n');
    });
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    setTimeout(() => s.destroy(), 5000);
  });
}

describe.skipIf(skip)('the dashboard tables fit their panels', () => {
  beforeAll(async () => {
    backend = await startBackend({ name: 'mx-primary.example.net' });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-layout-'));
    const file = path.join(dir, 'etd.yaml');
    // A second server nobody listens on: its last failure is the longest text the backends table shows.
    fs.writeFileSync(
      file,
      `
listeners: [{ name: smtp-inbound, address: 127.0.0.1, port: 0, mode: plain }]
detection: { window: 300ms, action: drop }
upstream:
  health: { interval: 1s, timeout: 500ms }
  servers:
    - { name: mx-primary-backend, address: 127.0.0.1, port: ${backend.port} }
    - { name: mx-secondary-backend, address: 127.0.0.1, port: 9, backup: true }
cache: { enabled: false }
limits: { perClient: 0, rate: { perClient: 3, interval: 1m } }
api: { address: 127.0.0.1, port: 0 }
state: { path: ":memory:" }
log: { level: info }
`,
    );
    etd = runEtd(file);
    await etd.waitFor((l) => l.msg === 'etd started', 20_000);
    apiUrl = String((await etd.waitFor((l) => l.msg === 'management API listening')).url);
    const status = (await (await fetch(`${apiUrl}/v1/status`)).json()) as { listeners: Array<{ addresses: string[] }> };
    smtpPort = Number(status.listeners[0]!.addresses[0]!.split(':').pop());
    browser = await launchBrowser();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await stopEtd(etd);
    await backend?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('at 1024, 1280, 1440 and 1920 px no table overflows its panel; the page does not scroll sideways', async () => {
    const { page, errors } = await browser.page({ width: 1280, height: 800 });
    await page.goto(`${apiUrl}/ui/`);
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    // Rows of every kind, from clients of their own (127.0.0.x): passed, early talkers with bytes, rate refusals.
    await Promise.all([
      ...Array.from({ length: 3 }, (_, i) => client(undefined, `127.0.0.${10 + i}`)),
      ...Array.from({ length: 3 }, (_, i) =>
        client('EHLO a-rather-long-bot-name.example.com\r\nMAIL FROM:<x@example.com>\r\n', `127.0.0.${20 + i}`),
      ),
      ...Array.from({ length: 6 }, () => client('EHLO burst\r\n', '127.0.0.30')),
    ]);
    await page.waitForFunction(() => document.querySelectorAll('#stream tbody tr').length >= 12, undefined, { timeout: 15_000 });
    await page.waitForFunction(() => /✗/.test(document.querySelector('#backends tbody')?.textContent ?? ''), undefined, {
      timeout: 15_000,
    });
    // The doctor's findings (long free text) in the half-width health panel; an access entry in the clients panel.
    await page.uncheck('#doctor-return');
    await page.click('#doctor-run');
    await page.waitForSelector('#doctor tbody tr', { timeout: 20_000 });
    await page.fill('#access-cidr', '2001:db8:1234:5678::/64');
    await page.click('#access-add button[type="submit"]');
    await page.waitForSelector('#access tbody tr', { timeout: 10_000 });
    for (const width of [1024, 1280, 1440, 1920]) {
      await page.setViewportSize({ width, height: 800 });
      await waitFor(async () => (await tableFits(page)).length === 4, { what: 'the four tables laid out' });
      const tables = await tableFits(page);
      if (width === 1280) await screenshot(page, 'layout-1280');
      expect(await overflowingTables(page), `${width} px: ${JSON.stringify(tables)}`).toEqual([]);
      expect(tables.find((t) => t.id === 'stream')!.rows).toBeGreaterThanOrEqual(12);
      expect(tables.find((t) => t.id === 'backends')!.rows).toBe(2);
      expect(tables.find((t) => t.id === 'doctor')!.rows).toBeGreaterThan(0);
      expect(await fitsWidth(page)).toBe(true);
    }
    expect(errors).toEqual([]);
    await page.close();
  }, 60_000);
});
