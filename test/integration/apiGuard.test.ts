// The API next to a browser, over real HTTP: a rebinding Host is refused, a cross-site write is refused, the CLI's requests pass; and the API's connection cap and timeouts.

import http from 'node:http';
import net from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHost, checkOrigin } from '../../src/api/browserGuard.js';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';

let backend: TestBackend;
let etd: TestEtd;
let api: ApiHandle;
let port: number;

/** A raw request with exactly the headers given (fetch would not let a test set Host). */
function request(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; body: { error?: string } & Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, setHost: headers.host === undefined }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as { error?: string }) : {} });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const json = { 'content-type': 'application/json' };
const allowAll = JSON.stringify({ cidr: '0.0.0.0/0', list: 'allow' });

describe('the API next to a browser', () => {
  beforeAll(async () => {
    backend = await startBackend({ name: 'guard.test' });
    etd = await startEtdForTest({
      detection: { window: '200ms', action: 'drop' },
      upstream: { health: { enabled: false }, servers: [{ name: 's1', address: '127.0.0.1', port: backend.port }] },
    });
    api = await startApi(
      {
        enabled: true,
        address: '127.0.0.1',
        port: 0,
        token: undefined,
        allowedHosts: ['etd.example.org', 'proxy.example.org:8443'],
        maxConnections: 3,
      },
      {
        app: etd.app,
        version: 'test',
        log: pino({ level: 'silent' }),
        reload: async () => undefined,
        options: {
          processMetrics: false,
          headersTimeoutMs: 300,
          requestTimeoutMs: 600,
          keepAliveTimeoutMs: 300,
          idleTimeoutMs: 800,
          timeoutCheckMs: 100,
        },
      },
    );
    port = Number(new URL(api.url).port);
  });

  afterAll(async () => {
    await api?.close();
    await etd?.stop(500);
    await backend?.close();
  });

  const accessAll = () => etd.app.access.match('203.0.113.9') !== undefined;

  it('a rebinding Host (attacker.example) is refused with 421 and a reason, for reads and writes; nothing changes', async () => {
    const w = await request('POST', '/v1/access', { ...json, host: 'attacker.example' }, allowAll);
    expect(w.status).toBe(421);
    expect(w.body.error).toMatch(/Host header "attacker\.example" does not name this API .*api\.allowedHosts/);
    expect(accessAll()).toBe(false);
    expect((await request('GET', '/v1/status', { host: `attacker.example:${port}` })).status).toBe(421);
    expect((await request('GET', '/v1/status', { host: `localhost.attacker.example:${port}` })).status).toBe(421);
  });

  it('address literals and localhost pass on any port (tunnels), allowed hosts too; no Host (HTTP/1.0 probes) too', async () => {
    // Any port: an SSH tunnel or port forward changes it, and rebinding cannot forge an address.
    for (const host of [
      `127.0.0.1:${port}`,
      `127.0.0.1:${port + 1}`,
      `localhost:9000`,
      '10.0.0.1:8026',
      '[2001:db8::1]',
      `localhost:${port}`,
      `LOCALHOST:${port}`,
      `[::1]:${port}`,
      'etd.example.org',
      'etd.example.org:1234',
      'proxy.example.org:8443',
    ]) {
      expect((await request('GET', '/v1/status', { host })).status, host).toBe(200);
    }
    expect((await request('GET', '/v1/status', { host: 'proxy.example.org:9000' })).status).toBe(421);
    const raw = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.end('GET /healthz HTTP/1.0\r\n\r\n'));
      let out = '';
      s.on('data', (d) => (out += d.toString()));
      s.on('close', () => resolve(out));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 200/);
  });

  it('a write from another origin (or Sec-Fetch-Site cross-site/same-site) is refused with 403; without Origin (CLI, curl) or from its own origin it passes', async () => {
    const own = { ...json, host: `127.0.0.1:${port}` };
    for (const origin of [
      `http://127.0.0.1:${port + 1}`,
      'http://attacker.example',
      'null',
      `https://127.0.0.1:${port}`,
      'http://proxy.example.org:9000',
    ]) {
      const r = await request('POST', '/v1/access', { ...own, origin }, allowAll);
      expect(r.status, origin).toBe(403);
      expect(r.body.error).toMatch(/refused: only the API's own origin/);
    }
    for (const site of ['cross-site', 'same-site']) {
      const r = await request('POST', '/v1/reload', { ...own, 'sec-fetch-site': site }, '{}');
      expect(r.status, site).toBe(403);
      expect(r.body.error).toMatch(/Sec-Fetch-Site/);
    }
    expect((await request('POST', '/v1/doctor', { ...own, origin: 'http://attacker.example' }, '{"returnPath":false}')).status).toBe(403);
    expect(accessAll()).toBe(false);
    // A cross-site GET changes nothing and stays allowed (the browser keeps the answer from the page).
    expect((await request('GET', '/v1/status', { ...own, origin: 'http://attacker.example', 'sec-fetch-site': 'cross-site' })).status).toBe(
      200,
    );

    const cidr = '198.51.100.0/24';
    const body = JSON.stringify({ cidr, list: 'deny' });
    expect((await request('POST', '/v1/access', own, body)).status).toBe(201);
    expect(etd.app.access.match('198.51.100.7')?.list).toBe('deny');
    expect(
      (
        await request('DELETE', `/v1/access/${encodeURIComponent(cidr)}`, {
          host: own.host,
          origin: `http://localhost:${port}`,
          'sec-fetch-site': 'same-origin',
        })
      ).status,
    ).toBe(204);
    expect((await request('POST', '/v1/access', { ...own, origin: `http://127.0.0.1:${port}` }, body)).status).toBe(201);
    expect(
      (await request('DELETE', `/v1/access/${encodeURIComponent(cidr)}`, { host: 'etd.example.org', origin: 'https://etd.example.org' }))
        .status,
    ).toBe(204);
  });

  it('caps connections at api.maxConnections: one more is closed at once', async () => {
    const open: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = net.connect(port, '127.0.0.1');
        await new Promise((r) => s.once('connect', r));
        open.push(s);
      }
      // Each of the three is accepted and served.
      const first = open[0]!;
      const answer = new Promise<string>((resolve) => first.once('data', (d) => resolve(d.toString())));
      first.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`);
      expect(await answer).toMatch(/^HTTP\/1\.1 200/);
      const extra = net.connect(port, '127.0.0.1');
      const got = await new Promise<string>((resolve) => {
        let out = '';
        extra.on('connect', () => extra.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`));
        extra.on('data', (d) => (out += d.toString()));
        extra.on('error', () => undefined);
        extra.on('close', () => resolve(out));
      });
      expect(got).toBe('');
    } finally {
      for (const s of open) s.destroy();
    }
    // Freed slots serve again.
    await new Promise((r) => setTimeout(r, 50));
    expect((await request('GET', '/healthz', {})).status).toBe(200);
  });

  /** Opens a connection, writes `text`, resolves with what came back once the server closes it. */
  const closedAfter = (text: string) =>
    new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(text));
      let out = '';
      s.on('data', (d) => (out += d.toString()));
      s.on('error', () => undefined);
      s.on('close', () => resolve(out));
    });

  it('closes a connection whose headers never end (headersTimeout), whose body never comes (requestTimeout), and an idle one', async () => {
    expect(await closedAfter(`GET /v1/status HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n`)).toMatch(/^(HTTP\/1\.1 408|$)/);
    expect(
      await closedAfter(
        `POST /v1/access HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{`,
      ),
    ).toMatch(/^(HTTP\/1\.1 408|$)/);
    expect(await closedAfter('')).toMatch(/^(HTTP\/1\.1 408|$)/);
    // Keep-alive: after one answer the idle connection is closed.
    const ka = await closedAfter(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`);
    expect(ka).toMatch(/^HTTP\/1\.1 200/);
    expect(accessAll()).toBe(false);
  });

  it('pure checks: unix sockets need no Host; an Origin there must be an allowed host', () => {
    const unix = { address: undefined, port: undefined };
    expect(checkHost('attacker.example', unix, [])).toEqual({ ok: true });
    expect(checkOrigin('POST', undefined, 'http://attacker.example', undefined, unix, []).ok).toBe(false);
    expect(checkOrigin('POST', undefined, 'https://etd.example.org', undefined, unix, ['etd.example.org']).ok).toBe(true);
    expect(checkOrigin('POST', undefined, undefined, undefined, unix, []).ok).toBe(true);
    const wild = { address: '::ffff:10.1.2.3', port: 8025 };
    expect(checkHost('10.1.2.3:8025', wild, []).ok).toBe(true);
    expect(checkHost('10.1.2.4', wild, []).ok).toBe(true);
    expect(checkHost('mail.example.org:8025', wild, []).ok).toBe(false);
    // Through a port forward (browser at localhost:9000): the page of that origin may write, another port may not.
    expect(checkOrigin('POST', 'localhost:9000', 'http://localhost:9000', undefined, { address: '127.0.0.1', port: 8025 }, []).ok).toBe(
      true,
    );
    expect(checkOrigin('POST', 'localhost:9000', 'http://localhost:9001', undefined, { address: '127.0.0.1', port: 8025 }, []).ok).toBe(
      false,
    );
    expect(checkOrigin('POST', undefined, 'http://127.0.0.1:8025', undefined, { address: '127.0.0.1', port: 8025 }, []).ok).toBe(true);
    expect(checkOrigin('POST', undefined, 'http://127.0.0.1:8026', undefined, { address: '127.0.0.1', port: 8025 }, []).ok).toBe(false);
    expect(checkHost('bad host\u001b[2J', wild, [])).toMatchObject({ ok: false, status: 421, reason: expect.stringContaining('\\x1b') });
  });
});
