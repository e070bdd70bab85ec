// The dashboard in Debian's headless Chromium against etd running in vip mode in the netns lab:
// live verdicts, drain, cache delete, the token prompt on a non-loopback API, and the README's screenshot of a bot wave.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Forward, forwardIntoNamespace } from '../../lab/forward.js';
import { createLab, type JsonLineProcess, type Lab } from '../../lab/netns.js';
import { botWave } from '../../lab/wave.js';
import {
  type Browser,
  fitsWidth,
  launchBrowser,
  overflowingTables,
  screenshot,
  skipWithoutChromium,
  type TrackedPage,
} from '../helpers/browser.js';
import { type RunningEtd, startEtdInNetns } from '../helpers/cli.js';
import { bannerTime, earlyTalker, swaks } from '../helpers/nsClient.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { waitFor } from '../helpers/wait.js';

const skip = skipPrivileged('dashboard in the lab') || skipWithoutChromium('dashboard in the lab');
/** The README's picture is refreshed only on request (ETD_UPDATE_SCREENSHOTS=1): a test run leaves the tree clean. */
const README_SHOT = process.env.ETD_UPDATE_SCREENSHOTS === '1' ? path.join(__dirname, '../../docs/img/dashboard.png') : undefined;
const TOKEN = 'dashboard-test-token-5f1c2a9e';
const WINDOW_MS = 2000;

let lab: Lab;
let recorder: JsonLineProcess;
let browser: Browser;
let dir: string;
const running: RunningEtd[] = [];
const forwards: Forward[] = [];
let api: Forward;
let tab: TrackedPage;

function write(name: string, text: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

const startEtd = (file: string): Promise<RunningEtd> => startEtdInNetns(lab.ns.gateway, file, running);

async function getJson<T>(url: string, token?: string): Promise<T> {
  const res = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

type Backends = { backends: Array<{ name: string; state: string }> };

describe.skipIf(skip)('the dashboard against etd in the lab', () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-dash-'));
    lab = await createLab();
    recorder = await lab.startRecorder(lab.ns.backend, [
      { address: lab.v4.backends[0], port: 25 },
      { address: lab.v4.backends[1], port: 25 },
    ]);
    const file = write(
      'etd.yaml',
      `
listeners:
  - { name: smtp4, address: ${lab.v4.gatewayClientSide}, port: 25, mode: vip }
  - { name: smtp6, address: "${lab.v6.gatewayClientSide}", port: 25, mode: vip }
detection: { window: ${WINDOW_MS}ms, action: drop }
upstream:
  source: clientip
  balance: roundrobin
  connectTimeout: 3s
  retries: 0
  health: { interval: 1s, timeout: 800ms, rise: 1, fall: 2 }
  servers:
    - { name: b1, address: ${lab.v4.backends[0]}, port: 25 }
    - { name: b2, address: ${lab.v4.backends[1]}, port: 25 }
api: { address: 127.0.0.1, port: 8025 }
state: { path: ":memory:" }
log: { level: info }
`,
    );
    await startEtd(file); // the API on loopback (no token), reached through `api`
    api = await forwardIntoNamespace(lab, lab.ns.gateway, '127.0.0.1', 8025);
    forwards.push(api);
    await waitFor(
      async () => {
        const b = await getJson<Backends>(`${api.url}/v1/backends`);
        return b.backends.every((s) => s.state === 'up') ? true : undefined;
      },
      { what: 'both backends up', timeout: 15_000 },
    );
    browser = await launchBrowser();
    tab = await browser.page();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    for (const f of forwards) await f.close().catch(() => undefined);
    for (const e of running) {
      if (e.child.exitCode === null && e.child.signalCode === null) {
        e.child.kill('SIGTERM');
        await Promise.race([e.exited, new Promise((r) => setTimeout(r, 10_000))]);
        e.child.kill('SIGKILL');
      }
    }
    await lab?.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('loads with no console errors and shows the listeners, the backends and the live stream', async () => {
    const { page, errors } = tab;
    await page.goto(`${api.url}/ui/`);
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    expect(await page.isVisible('#login')).toBe(false);
    await page.waitForSelector('#backends tbody tr[data-server="b2"] [data-state="up"]', { timeout: 10_000 });
    expect(await page.textContent('#listeners')).toMatch(/listening smtp4 \(vip\)/);
    // The charts have history already: the ring filled while the page was not open.
    expect(await page.locator('.chart canvas').count()).toBe(3);
    await page.waitForTimeout(1500);
    expect(errors).toEqual([]);
  }, 60_000);

  it('a polite client appears as passed', async () => {
    expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
    const row = tab.page.locator(`#stream tbody tr[data-verdict="passed"]`, { hasText: lab.v4.client });
    await row.first().waitFor({ timeout: 5000 });
    expect(await row.first().textContent()).toMatch(/✓ passed/);
  }, 60_000);

  it('an early talker appears in the verdict stream within 2 s, with its early bytes; a click shows the whole line', async () => {
    const t0 = Date.now();
    const early = earlyTalker(lab, lab.v6.gatewayClientSide);
    const row = tab.page.locator('#stream tbody tr[data-verdict="early_talker"]', { hasText: lab.v6.client });
    await row.first().waitFor({ timeout: 2000 });
    const seen = Date.now() - t0;
    expect(seen).toBeLessThan(2000);
    expect((await early).data).toBe('');
    expect(await row.first().textContent()).toMatch(/✗ early talker.*dropped.*EHLO bot\.example/);
    await row.first().click();
    await tab.page.waitForSelector('#line-dialog[open]');
    const line = JSON.parse((await tab.page.textContent('#line-json')) ?? '{}') as Record<string, unknown>;
    expect(line).toMatchObject({ verdict: 'early_talker', clientAddress: lab.v6.client, listener: 'smtp6', cause: 'dropped' });
    await tab.page.click('#line-dialog button');
  }, 30_000);

  it('filters by verdict, client and listener; pause holds the table and says what arrived meanwhile', async () => {
    const { page } = tab;
    const verdicts = () => page.$$eval('#stream tbody tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.verdict));
    await page.selectOption('#f-verdict', 'early_talker');
    await page.waitForFunction(() =>
      [...document.querySelectorAll('#stream tbody tr')].every((r) => (r as HTMLElement).dataset.verdict === 'early_talker'),
    );
    expect(await verdicts()).toContain('early_talker');
    await page.selectOption('#f-verdict', '');
    await page.selectOption('#f-listener', 'smtp6');
    await page.waitForFunction(() => document.querySelectorAll('#stream tbody tr').length === 1);
    await page.selectOption('#f-listener', '');
    await page.fill('#f-client', lab.v4.client);
    await page.waitForFunction(() => [...document.querySelectorAll('#stream tbody tr')].every((r) => r.textContent?.includes('passed')));
    await page.fill('#f-client', '');

    await page.click('#pause');
    expect(await page.getAttribute('#pause', 'aria-pressed')).toBe('true');
    const rows = await page.locator('#stream tbody tr').count();
    await earlyTalker(lab, lab.v6.gatewayClientSide); // denied now (deny cache): a new line all the same
    await page.waitForFunction(() => /paused: 1 arrived since/.test(document.querySelector('#stream-info')?.textContent ?? ''), undefined, {
      timeout: 3000,
    });
    expect(await page.locator('#stream tbody tr').count()).toBe(rows);
    await page.click('#pause');
    await page.waitForFunction((n) => document.querySelectorAll('#stream tbody tr').length === n + 1, rows, { timeout: 3000 });
  }, 30_000);

  it('clicking drain makes GET /v1/backends report drain, and new sessions avoid that server', async () => {
    await tab.page.click('#backends tbody tr[data-server="b1"] button[data-action="drain"]');
    await waitFor(
      async () => {
        const b = await getJson<Backends>(`${api.url}/v1/backends`);
        return b.backends.find((s) => s.name === 'b1')?.state === 'drain' ? true : undefined;
      },
      { what: 'b1 drained', timeout: 5000 },
    );
    await tab.page.waitForSelector('#backends tbody tr[data-server="b1"] [data-state="drain"]', { timeout: 5000 });
    const at = (addr: string) =>
      recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client && e.localAddress === addr).length;
    const before = [at(lab.v4.backends[0]), at(lab.v4.backends[1])];
    for (let i = 0; i < 4; i++) expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
    expect(at(lab.v4.backends[0])).toBe(before[0]);
    expect(at(lab.v4.backends[1])).toBe(before[1]! + 4);
    await tab.page.click('#backends tbody tr[data-server="b1"] button[data-action="up"]');
    await waitFor(
      async () => {
        const b = await getJson<Backends>(`${api.url}/v1/backends`);
        return b.backends.find((s) => s.name === 'b1')?.state === 'up' ? true : undefined;
      },
      { what: 'b1 up again', timeout: 5000 },
    );
  }, 90_000);

  it('deleting a pass-cache entry in the UI makes the next visit wait the window', async () => {
    const fast = await bannerTime(lab, lab.v4.gatewayClientSide);
    expect(fast.data).toMatch(/^220 /);
    expect(fast.bannerMs!).toBeLessThan(WINDOW_MS / 2);
    const { page } = tab;
    await page.fill('#lookup-address', lab.v4.client);
    await page.click('#lookup button[type="submit"]');
    await page.waitForSelector('#lookup-result:not([hidden])');
    expect(await page.textContent('#lookup-cache')).toMatch(/^pass entry/);
    expect(await page.textContent('#lookup-decision')).toMatch(/skips the window/);
    expect(await page.textContent('#lookup-dnsbl')).toMatch(/^no lists configured/);
    await page.click('#lookup-delete');
    await page.waitForFunction(() => document.querySelector('#lookup-cache')?.textContent?.startsWith('no entry'), undefined, {
      timeout: 5000,
    });
    expect(await page.textContent('#lookup-decision')).toMatch(/waits the window/);
    const res = await fetch(`${api.url}/v1/cache/${lab.v4.client}`);
    expect(res.status).toBe(404);
    const slow = await bannerTime(lab, lab.v4.gatewayClientSide);
    expect(slow.data).toMatch(/^220 /);
    expect(slow.bannerMs!).toBeGreaterThanOrEqual(WINDOW_MS - 50);
  }, 60_000);

  it('access lists: a bad CIDR shows the API 400 inline; a good one is added and removed', async () => {
    const { page, errors } = tab;
    const before = errors.length;
    await page.fill('#access-cidr', '192.0.2.1/24');
    await page.click('#access-add button[type="submit"]');
    await page.waitForSelector('#access-error:not([hidden])');
    expect(await page.textContent('#access-error')).toMatch(/body\.cidr: .*host bits/);
    await page.fill('#access-cidr', '198.51.100.0/24');
    await page.click('#access-add button[type="submit"]');
    const entry = page.locator('#access tbody tr', { hasText: '198.51.100.0/24' });
    await entry.waitFor({ timeout: 5000 });
    expect(await entry.textContent()).toMatch(/⊘ deny.*runtime/);
    await entry.locator('button').click();
    await entry.waitFor({ state: 'detached', timeout: 5000 });
    // Chromium notes every non-2xx fetch on the console: the refused CIDR is the one.
    expect(errors.slice(before)).toEqual([expect.stringMatching(/status of 400/)]);
    errors.splice(before);
  }, 30_000);

  it('runs the doctor and shows the effective config with the findings', async () => {
    const { page } = tab;
    await page.uncheck('#doctor-return');
    await page.click('#doctor-run');
    await page.waitForSelector('#doctor tbody tr', { timeout: 20_000 });
    expect(await page.textContent('#doctor-verdict')).toMatch(/\d+ FAIL, \d+ WARN, \d+ OK/);
    expect(await page.locator('#doctor tbody tr[data-status="OK"]').count()).toBeGreaterThan(3);
    await page.click('#config-show');
    await page.waitForSelector('#config:not([hidden])');
    expect(await page.textContent('#config')).toMatch(/"mode": "vip"/);
  }, 60_000);

  it('stays usable during a bot wave at 1280×800 and phone width; the README screenshot shows it', async () => {
    // A fresh tab, as an operator opening the dashboard during the wave would see it.
    const { page, errors } = await browser.page();
    await page.goto(`${api.url}/ui/`);
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    const wave = botWave(lab, lab.v4.gatewayClientSide, { bots: 40, connections: 600, spreadMs: 6000 });
    // Polite clients among the bots, from the client's own address (a pass-cache hit by now, or a wait).
    const polite = (async () => {
      for (let i = 0; i < 3; i++) await swaks(lab, lab.v4.gatewayClientSide);
    })();
    // Each bot's first connection is an early talker (later ones meet the deny cache).
    await page.waitForFunction(() => document.querySelectorAll('#stream tbody tr[data-verdict="early_talker"]').length > 30, undefined, {
      timeout: 15_000,
    });
    await page.waitForTimeout(2500);
    await screenshot(page, 'wave-1280');
    await screenshot(page, 'readme', README_SHOT);
    expect(await fitsWidth(page)).toBe(true);
    // The verdict and backend tables (and the others) fit their panels at 1280 px: nothing cut off at the right.
    expect(await overflowingTables(page)).toEqual([]);
    const r = await wave;
    await polite;
    // Every bot connection was answered by etd (dropped, or turned away), none hung.
    expect(r.timedOut ?? 0).toBe(0);
    expect(r.errors).toBe(0);
    expect(r.closedWithoutData + r.gotData).toBe(600);
    expect(Number(await page.textContent('#now-backends').then((t) => t?.split('/')[0]))).toBe(2);
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(500);
    expect(await fitsWidth(page)).toBe(true);
    // On a phone the verdict and a backend's buttons are on screen without scrolling sideways.
    for (const sel of ['#stream tbody tr:first-child .badge', '#backends tbody tr[data-server="b1"] button[data-action="maint"]']) {
      const box = await page.locator(sel).boundingBox();
      expect(box, sel).not.toBeNull();
      expect(box!.x + box!.width, sel).toBeLessThanOrEqual(390);
    }
    await screenshot(page, 'wave-phone');
    expect(errors).toEqual([]);
    await page.close();
  }, 90_000);

  it('on a non-loopback API address: the token prompt and no data without a token; a wrong token is refused; the right one is kept for the session, never in a URL', async () => {
    // A second etd in the same namespace: plain mode on loopback (no netfilter of its own), its API on the gateway's client-side address.
    const file = write(
      'etd-token.yaml',
      `
listeners: [{ name: plain, address: 127.0.0.1, port: 2525, mode: plain }]
upstream: { health: { enabled: false }, servers: [{ name: b1, address: ${lab.v4.backends[0]}, port: 25 }] }
api: { address: ${lab.v4.gatewayClientSide}, port: 8026, token: ${TOKEN} }
state: { path: ":memory:" }
log: { level: info }
`,
    );
    await startEtd(file);
    const remote = await forwardIntoNamespace(lab, lab.ns.gateway, lab.v4.gatewayClientSide, 8026);
    forwards.push(remote);
    const t = await browser.page();
    const { page } = t;
    const data: string[] = [];
    page.on('response', (res) => {
      if (res.url().includes('/v1/') && res.ok()) data.push(res.url());
    });
    await page.goto(`${remote.url}/ui/`);
    await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
    expect(await page.isVisible('#dash')).toBe(false);
    expect(await page.locator('#stream tbody tr, #backends tbody tr').count()).toBe(0);
    expect(data).toEqual([]);
    await screenshot(page, 'token-prompt');

    await page.fill('#token', 'not-the-token-at-all-0000');
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector('#login-error:not([hidden])', { timeout: 5000 });
    expect(await page.textContent('#login-error')).toMatch(/refused this token/);
    expect(await page.isVisible('#dash')).toBe(false);
    expect(data).toEqual([]);
    expect(await page.evaluate(() => sessionStorage.getItem('etd.token'))).toBe(null);

    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    expect(await page.isVisible('#login')).toBe(false);
    await page.waitForSelector('#backends tbody tr[data-server="b1"]', { timeout: 5000 });
    expect(await page.evaluate(() => sessionStorage.getItem('etd.token'))).toBe(TOKEN);
    // A reload keeps the session's token: straight to the data.
    await page.reload();
    await page.waitForSelector('#conn.ok', { timeout: 10_000 });
    expect(t.urls.filter((u) => u.includes(TOKEN))).toEqual([]);
    // The only console errors are the browser's notes on the refused (401) requests.
    expect(t.errors.filter((e) => !/status of 401/.test(e))).toEqual([]);
    await page.close();
  }, 60_000);
});
