// Headless Chromium against the API next to a foreign page: a page of another origin (another loopback port) tries fetch POSTs (cors and no-cors), a form post and an <img> of the doctor; nothing changes, with and without a token. The dashboard's own page still writes and runs the doctor.

import http from 'node:http';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { type Browser, launchBrowser, skipWithoutChromium } from '../helpers/browser.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';

const skip = skipWithoutChromium('the API next to a foreign page');
const TOKEN = 'foreign-page-token-0123456789abcdef';

let backend: TestBackend;
let etd: TestEtd;
let browser: Browser;

/** The attacker's page: every write a page of another origin can make without the token. */
function attackPage(api: string): string {
  const access = JSON.stringify({ cidr: '0.0.0.0/0', list: 'allow' });
  return `<!doctype html><html><body>
<img id="img" src="${api}/v1/doctor">
<form id="form" method="POST" action="${api}/v1/reload" enctype="text/plain"><input name="x" value="y"></form>
<script>
(async () => {
  const out = [];
  const note = (what, p) => p.then((r) => out.push(what + ':' + r.type + ':' + r.status)).catch((e) => out.push(what + ':error'));
  await note('access-nocors', fetch('${api}/v1/access', { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '${access}' }));
  await note('access-cors', fetch('${api}/v1/access', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '${access}' }));
  await note('reload-nocors', fetch('${api}/v1/reload', { method: 'POST', mode: 'no-cors' }));
  await note('doctor-nocors', fetch('${api}/v1/doctor', { method: 'POST', mode: 'no-cors' }));
  await note('doctor-get', fetch('${api}/v1/doctor', { mode: 'no-cors' }));
  await new Promise((r) => { const i = document.getElementById('img'); if (i.complete) r(); else { i.onload = r; i.onerror = r; } });
  window.results = out;
  document.title = 'attacked';
})();
</script></body></html>`;
}

describe.skipIf(skip)('the API next to a foreign page (Chromium)', () => {
  beforeAll(async () => {
    backend = await startBackend({ name: 'foreign.test' });
    etd = await startEtdForTest({
      detection: { window: '200ms', action: 'drop' },
      upstream: { health: { enabled: false }, servers: [{ name: 's1', address: '127.0.0.1', port: backend.port }] },
    });
    browser = await launchBrowser();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await etd?.stop(500);
    await backend?.close();
  });

  for (const token of [undefined, TOKEN]) {
    it(`${token ? 'with' : 'without'} a token: the foreign page changes nothing, starts no doctor; the dashboard still works`, async () => {
      let reloads = 0;
      const logLines: string[] = [];
      const log = pino({ level: 'info' }, { write: (s: string) => void logLines.push(s) });
      const api: ApiHandle = await startApi(
        { enabled: true, address: '127.0.0.1', port: 0, token },
        { app: etd.app, version: 'test', log, reload: async () => void reloads++, options: { processMetrics: false } },
      );
      const foreign = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(attackPage(api.url)));
      await new Promise<void>((r) => foreign.listen(0, '127.0.0.1', r));
      const { page } = await browser.page();
      const seen: string[] = [];
      page.on('response', (r) => {
        if (r.url().startsWith(api.url)) seen.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
      });
      const doctorRuns = () => logLines.filter((l) => l.includes('doctor run requested')).length;
      try {
        await page.goto(`http://127.0.0.1:${(foreign.address() as { port: number }).port}/`);
        await page.waitForFunction(() => document.title === 'attacked', undefined, { timeout: 20_000 });
        const results = (await page.evaluate(() => (window as unknown as { results: string[] }).results)).join(' ');
        // The CORS fetch is stopped by the browser (no CORS grant); the others reach the API and are refused.
        expect(results).toContain('access-cors:error');
        await page.evaluate(() => (document.getElementById('form') as HTMLFormElement).submit());
        await page.waitForLoadState('load');
        expect(await page.textContent('body')).toMatch(/refused/);

        expect(etd.app.access.match('203.0.113.9') !== undefined).toBe(false);
        expect(reloads).toBe(0);
        expect(doctorRuns()).toBe(0);
        // Each attempt reached the API and got its refusal: 403 for the writes, 405 for the GET doctor (401 first with a token).
        const refused = token ? /^(POST|GET) \S+ (401|403|405)$/ : /^(POST \S+ 403|GET \/v1\/doctor 405)$/;
        expect(seen.length).toBeGreaterThanOrEqual(5);
        for (const s of seen) expect(s).toMatch(refused);
        if (!token)
          expect(seen).toEqual(
            expect.arrayContaining(['POST /v1/reload 403', 'POST /v1/access 403', 'POST /v1/doctor 403', 'GET /v1/doctor 405']),
          );

        // The dashboard, on the API's own origin, still adds and deletes an entry and runs the doctor.
        await page.goto(`${api.url}/ui/`);
        if (token) {
          await page.fill('#token', token);
          await page.click('#login button[type="submit"], form:has(#token) button[type="submit"]');
        }
        await page.fill('#access-cidr', '198.51.100.0/24');
        await page.click('#access-add button[type="submit"]');
        const entry = page.locator('#access tbody tr', { hasText: '198.51.100.0/24' });
        await entry.waitFor({ timeout: 10_000 });
        expect(etd.app.access.match('198.51.100.7')?.list === 'deny').toBe(true);
        await entry.locator('button').click();
        await entry.waitFor({ state: 'detached', timeout: 10_000 });
        expect(etd.app.access.match('198.51.100.7')?.list === 'deny').toBe(false);
        await page.uncheck('#doctor-return');
        await page.click('#doctor-run');
        await page.waitForSelector('#doctor tbody tr', { timeout: 20_000 });
        expect(await page.textContent('#doctor-verdict')).toMatch(/\d+ FAIL, \d+ WARN, \d+ OK/);
        expect(doctorRuns()).toBe(1);
      } finally {
        await page.close();
        foreign.closeAllConnections();
        await new Promise<void>((r) => foreign.close(() => r()));
        await api.close();
      }
    }, 90_000);
  }
});
