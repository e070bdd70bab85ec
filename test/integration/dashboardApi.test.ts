// The API the dashboard added, over real HTTP against an in-process etd: /v1/history, /v1/clients/{address}, POST /v1/doctor,
// the /ui/ assets (public, strict CSP) behind a token-protected API, and their place in the OpenAPI document and the README.

import fs from 'node:fs';
import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientBody } from '../../src/api/routes/clients.js';
import { DoctorBody } from '../../src/api/routes/doctor.js';
import { HistoryBody } from '../../src/api/routes/history.js';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { rawClient, startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { sleep } from '../helpers/wait.js';

const TOKEN = 'dashboard-api-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };

let backend: TestBackend;
let etd: TestEtd;
let api: ApiHandle;

async function json<T>(url: string, status = 200): Promise<T> {
  const res = await fetch(`${api.url}${url}`, { headers: auth });
  const body = (await res.json()) as T;
  expect(res.status, `${url}: ${JSON.stringify(body)}`).toBe(status);
  return body;
}

describe('the dashboard API', () => {
  beforeAll(async () => {
    backend = await startBackend({ name: 'dash.test' });
    etd = await startEtdForTest({
      detection: { window: '200ms', action: 'drop' },
      upstream: { health: { enabled: false }, servers: [{ name: 's1', address: '127.0.0.1', port: backend.port }] },
      cache: { enabled: true },
      access: { allow: ['192.0.2.0/24'] },
    });
    api = await startApi(
      { enabled: true, address: '127.0.0.1', port: 0, token: TOKEN },
      {
        app: etd.app,
        version: 'test',
        log: pino({ level: 'silent' }),
        reload: async () => undefined,
        configFile: '/etc/etd/test.yaml',
        options: { processMetrics: false },
      },
    );
  });

  afterAll(async () => {
    await api?.close();
    await etd?.stop(500);
    await backend?.close();
  });

  it('GET /v1/history: one column entry per second since start, sessions by verdict, held sampled', async () => {
    // Polite first: the early talker after it puts 127.0.0.1 in the deny cache.
    const polite = await rawClient(etd.port, () => undefined, 1500);
    expect(polite.data.toString()).toMatch(/^220 /);
    await rawClient(etd.port, (s) => s.write('EHLO early\r\n'), 2000);
    // The seconds they ended in must be complete before they are history.
    await sleep(1100);
    const h = await json<HistoryBody>('/v1/history');
    expect(Value.Check(HistoryBody, h)).toBe(true);
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    expect(sum(h.verdicts.early_talker)).toBe(1);
    expect(sum(h.earlyTalkers)).toBe(1);
    expect(h.t.length).toBeGreaterThan(0);
    // Seconds before etd started are not history.
    expect(h.t[0]).toBeGreaterThanOrEqual(Math.floor(etd.app.stats.startedAt / 1000));
    expect(h.t.at(-1)).toBe(h.now - 1);
    expect(h.held.some((x) => x !== null)).toBe(true);
    const later = await json<HistoryBody>(`/v1/history?since=${h.now - 1}`);
    expect(later.t.every((t) => t > h.now - 1)).toBe(true);
    const bad = await fetch(`${api.url}/v1/history?seconds=0`, { headers: auth });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/query\.seconds/);
  });

  it('GET /v1/clients/{address}: access match, cache entry and the decision; 400 for a non-address', async () => {
    // 127.0.0.1 talked early last, above: a deny entry.
    const local = await json<ClientBody>('/v1/clients/127.0.0.1');
    expect(Value.Check(ClientBody, local)).toBe(true);
    expect(local).toMatchObject({ address: '127.0.0.1', access: null, cache: { kind: 'deny', key: '127.0.0.1' }, decision: 'deny' });
    expect(local.reason).toMatch(/^deny cache entry 127\.0\.0\.1 until /);
    const listed = await json<ClientBody>('/v1/clients/192.0.2.77');
    expect(listed).toMatchObject({ access: { cidr: '192.0.2.0/24', list: 'allow', source: 'config' }, cache: null, decision: 'skip' });
    const unknown = await json<ClientBody>('/v1/clients/2001:DB8::0001');
    expect(unknown).toMatchObject({ address: '2001:db8::1', decision: 'window', cache: null, access: null });
    const bad = await json<{ error: string }>('/v1/clients/not-an-ip', 400);
    expect(bad.error).toMatch(/path\.address: "not-an-ip" is not an IPv4 or IPv6 address/);
  });

  it('GET /v1/reputation/{address}: no lists configured → enabled false, score 0; 400 with the reason for a non-address', async () => {
    const r = await json<{ enabled: boolean; score: number; address: string; lists: unknown[] }>('/v1/reputation/2001:DB8::0001');
    expect(r).toMatchObject({ address: '2001:db8::1', enabled: false, score: 0, lists: [] });
    const bad = await json<{ error: string }>('/v1/reputation/not-an-ip', 400);
    expect(bad.error).toMatch(/path\.address: "not-an-ip" is not an IPv4 or IPv6 address/);
  });

  it('POST /v1/doctor: the findings with OK/WARN/FAIL, the verdict sentence; 400 for a bad client or probe; GET is 405', async () => {
    const post = async <T>(body: unknown, status = 200): Promise<T> => {
      const res = await fetch(`${api.url}/v1/doctor`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const out = (await res.json()) as T;
      expect(res.status, JSON.stringify(out)).toBe(status);
      return out;
    };
    const d = await post<DoctorBody>({ returnPath: false });
    expect(Value.Check(DoctorBody, d)).toBe(true);
    expect(d.verdict).toMatch(/^\d+ FAIL, \d+ WARN, \d+ OK/);
    expect(d.findings.map((f) => f.id)).toContain('mode.plain');
    expect(d.ok).toBe(true);
    expect((await post<{ error: string }>({ client: 'nope' }, 400)).error).toMatch(/body\.client/);
    expect((await post<{ error: string }>({ returnPath: 'maybe' }, 400)).error).toMatch(/body\.returnPath/);
    expect((await post<{ error: string }>({ probe: ['mail.example'] }, 400)).error).toMatch(
      /body\.probe: mail\.example: not an IPv4 or IPv6 address/,
    );
    // No body at all: every default.
    const bare = await fetch(`${api.url}/v1/doctor`, { method: 'POST', headers: auth });
    expect(bare.status).toBe(200);
    const get = await fetch(`${api.url}/v1/doctor?returnPath=false`, { headers: auth });
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect(((await get.json()) as { error: string }).error).toMatch(/POST \/v1\/doctor/);
  });

  it('/ui/ is served without the token, with a strict CSP; the data behind it is not', async () => {
    const page = await fetch(`${api.url}/ui/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'none'; script-src 'self'/);
    const html = await page.text();
    expect(html).toMatch(/<script src="app\.js" defer><\/script>/);
    expect(html).not.toMatch(/https?:\/\//); // nothing from another origin: the appliance is offline
    const js = await fetch(`${api.url}/ui/app.js`);
    expect(js.headers.get('content-type')).toMatch(/text\/javascript/);
    expect((await js.text()).length).toBeGreaterThan(10_000); // uPlot is bundled in
    expect((await fetch(`${api.url}/ui/app.css`)).status).toBe(200);
    expect((await fetch(`${api.url}/ui/..%2Fpackage.json`)).status).toBe(404);
    expect((await fetch(`${api.url}/ui/nope.js`)).status).toBe(404);
    const redirect = await fetch(`${api.url}/ui`, { redirect: 'manual' });
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get('location')).toBe('/ui/');
    expect((await fetch(`${api.url}/v1/history`)).status).toBe(401);
    expect((await fetch(`${api.url}/v1/clients/127.0.0.1`)).status).toBe(401);
    expect((await fetch(`${api.url}/v1/doctor`, { method: 'POST' })).status).toBe(401);
  });

  it('the new endpoints are in the OpenAPI document and in the README API table', async () => {
    const doc = await json<{ paths: Record<string, Record<string, unknown>> }>('/openapi.json');
    const readme = fs.readFileSync(path.join(__dirname, '../../README.md'), 'utf8');
    for (const [p, method] of [
      ['/v1/history', 'get'],
      ['/v1/clients/{address}', 'get'],
      ['/v1/reputation/{address}', 'get'],
      ['/v1/doctor', 'post'],
      ['/ui/', 'get'],
    ] as const) {
      expect(doc.paths[p]?.[method], p).toBeDefined();
      expect(readme, p).toContain(`\`${method.toUpperCase()} ${p}`);
    }
  });
});
