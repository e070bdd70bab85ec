// The management API over real HTTP against an in-process etd and real SMTP backends: every endpoint, auth, validation, reload, drain, metrics, unix socket.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { BackendListBody } from '../../src/api/routes/backends.js';
import { EventsBody } from '../../src/api/routes/events.js';
import { SessionsBody } from '../../src/api/routes/sessions.js';
import { StatsBody } from '../../src/api/routes/stats.js';
import { StatusBody } from '../../src/api/routes/status.js';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { statusCommand } from '../../src/commands/status.js';
import { loadConfig } from '../../src/config/load.js';
import { ConfigSchema } from '../../src/config/schema.js';
import { isEtdError } from '../../src/errors.js';
import { rawClient, startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { sleep, waitFor } from '../helpers/wait.js';

const TOKEN = 'test-token-0123456789abcdef';
const silent = pino({ level: 'silent' });

let b1: TestBackend;
let b2: TestBackend;
let tmp: string;

beforeAll(async () => {
  b1 = await startBackend({ name: 'one.test' });
  b2 = await startBackend({ name: 'two.test' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-api-'));
});
afterAll(async () => {
  await b1.close();
  await b2.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

type Doc = Record<string, unknown>;

function baseDoc(over: { window?: string; action?: string } = {}): Doc {
  return {
    listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
    log: { level: 'silent' },
    detection: { window: over.window ?? '300ms', action: over.action ?? 'drop' },
    upstream: {
      balance: 'first',
      // Health probes would add backend connections; the backend test turns them on where it looks at them.
      health: { enabled: false },
      servers: [
        { name: 's1', address: '127.0.0.1', port: b1.port },
        { name: 's2', address: '127.0.0.1', port: b2.port },
      ],
    },
    api: { address: '127.0.0.1', port: 0, token: TOKEN },
    // The client cache remembers 127.0.0.1 between sessions (pass: skip the window; deny: refuse);
    // these tests count single sessions, so it is off, and nothing is written under /var/lib.
    ...('cache' in ConfigSchema.properties ? { cache: { enabled: false } } : {}),
    ...('state' in ConfigSchema.properties ? { state: { path: ':memory:' } } : {}),
  };
}

interface Stack {
  etd: TestEtd;
  api: ApiHandle;
  file: string;
  write(doc: Doc | string): void;
}

let stack: Stack | undefined;
let fileNo = 0;

async function startStack(doc: Doc = baseDoc()): Promise<Stack> {
  const file = path.join(tmp, `etd-${++fileNo}.yaml`);
  const write = (d: Doc | string) => fs.writeFileSync(file, typeof d === 'string' ? d : YAML.stringify(d));
  write(doc);
  const etd = await startEtdForTest(doc);
  const app = etd.app;
  const api = await startApi(
    { enabled: true, address: '127.0.0.1', port: 0, token: TOKEN },
    { app, version: 'test-1.2.3', log: silent, reload: async () => app.reload(loadConfig(file)), options: { processMetrics: false } },
  );
  stack = { etd, api, file, write };
  return stack;
}

afterEach(async () => {
  if (stack) {
    await stack.api.close();
    await stack.etd.stop(500);
    stack = undefined;
  }
  for (const b of [b1, b2]) {
    b.connections.length = 0;
    b.messages.length = 0;
  }
});

interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
}

async function call(
  method: string,
  url: string,
  opts: { body?: unknown; raw?: string; token?: string | null; contentType?: string } = {},
): Promise<Res> {
  const headers: Record<string, string> = {};
  const token = opts.token === undefined ? TOKEN : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (opts.body !== undefined || opts.raw !== undefined) {
    body = opts.raw ?? JSON.stringify(opts.body);
    headers['content-type'] = opts.contentType ?? 'application/json';
  }
  const res = await fetch(`${stack!.api.url}${url}`, { method, headers, body, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

async function getJson<T = Record<string, unknown>>(url: string): Promise<T> {
  const r = await call('GET', url);
  expect(r.status, `${url}: ${r.text}`).toBe(200);
  return r.json as T;
}

/** Asserts the response matches the schema the route documents (so the OpenAPI document is true). */
function conforms(schema: TSchema, value: unknown): void {
  const errors = [...Value.Errors(schema, value)].map((e) => `${e.path}: ${e.message}`);
  expect(errors).toEqual([]);
}

/** A scripted SMTP client: one command at a time, each resolving with the complete reply. */
async function smtpClient(
  port: number,
): Promise<{ banner: string; cmd(line: string): Promise<string>; raw(data: string): Promise<string>; close(): void }> {
  const s = net.connect({ port, host: '127.0.0.1' });
  let buf = '';
  let waiting: { resolve: (r: string) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  const take = () => {
    const m = /^(?:\d{3}-[^\n]*\n)*\d{3} [^\n]*\n/.exec(buf);
    if (m && waiting) {
      buf = buf.slice(m[0].length);
      clearTimeout(waiting.timer);
      const w = waiting;
      waiting = undefined;
      w.resolve(m[0]);
    }
  };
  s.on('data', (c: Buffer) => {
    buf += c.toString('latin1');
    take();
  });
  s.on('error', (e) => waiting?.reject(e));
  const next = () =>
    new Promise<string>((resolve, reject) => {
      waiting = { resolve, reject, timer: setTimeout(() => reject(new Error(`no SMTP reply; have ${JSON.stringify(buf)}`)), 10_000) };
      take();
    });
  const banner = await next();
  return {
    banner,
    cmd: (line) => {
      s.write(`${line}\r\n`);
      return next();
    },
    raw: (data) => {
      s.write(data);
      return next();
    },
    close: () => s.destroy(),
  };
}

async function sendMail(port: number, subject: string): Promise<void> {
  const t = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
  });
  const info = await t.sendMail({ from: 'a@example.org', to: 'b@example.net', subject, text: `hello ${subject}` });
  expect(info.accepted).toEqual(['b@example.net']);
}

describe('auth', () => {
  it('401 with WWW-Authenticate without a token or with a wrong one; probes and the OpenAPI document are open', async () => {
    await startStack();
    const none = await call('GET', '/v1/status', { token: null });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="etd"');
    expect((none.json as { error: string }).error).toMatch(/needs a bearer token/);

    const wrong = await call('GET', '/v1/stats', { token: 'x'.repeat(TOKEN.length) });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Bearer realm="etd", error="invalid_token"/);
    expect((wrong.json as { error: string }).error).toMatch(/token is wrong/);
    // A prefix of the right token, and a different length, are wrong too.
    expect((await call('GET', '/v1/stats', { token: TOKEN.slice(0, -1) })).status).toBe(401);
    expect((await call('PATCH', '/v1/backends/s1', { token: null, body: { state: 'drain' } })).status).toBe(401);
    expect(stack!.etd.app.pool.get('s1')!.state).toBe('up');
    expect((await call('GET', '/metrics', { token: null })).status).toBe(401);
    // Unknown paths do not tell an unauthenticated caller what exists.
    expect((await call('GET', '/v1/nothing', { token: null })).status).toBe(401);

    expect((await call('GET', '/v1/status')).status).toBe(200);
    expect((await call('GET', '/healthz', { token: null })).status).toBe(200);
    expect((await call('GET', '/readyz', { token: null })).status).toBe(200);
    expect((await call('GET', '/openapi.json', { token: null })).status).toBe(200);

    const missing = await call('GET', '/v1/nothing');
    expect(missing.status).toBe(404);
    expect((missing.json as { error: string }).error).toMatch(/no such endpoint: GET \/v1\/nothing/);
  });

  it('refuses to start on a non-loopback address without a token, and names a busy port', async () => {
    const etd = await startEtdForTest(baseDoc());
    try {
      const deps = { app: etd.app, version: 't', log: silent, reload: async () => undefined, options: { processMetrics: false } };
      const err = await startApi({ enabled: true, address: '0.0.0.0', port: 0, token: undefined }, deps).catch((e: unknown) => e);
      expect(isEtdError(err, 'ETD_ERR_API')).toBe(true);
      expect(String(err)).toMatch(/not loopback.*api\.token/s);

      const first = await startApi({ enabled: true, address: '127.0.0.1', port: 0, token: undefined }, deps);
      try {
        const port = Number(new URL(first.url).port);
        const busy = await startApi({ enabled: true, address: '127.0.0.1', port, token: undefined }, deps).catch((e: unknown) => e);
        expect(isEtdError(busy, 'ETD_ERR_API')).toBe(true);
        expect(String(busy)).toMatch(/EADDRINUSE.*another process holds/s);
      } finally {
        await first.close();
      }
    } finally {
      await etd.stop(200);
    }
  });
});

describe('status, sessions and stats', () => {
  it('shows held, then relayed sessions; pages through /v1/sessions; rejects bad queries with the field named', async () => {
    const doc = baseDoc({ window: '1500ms' });
    (doc.detection as Doc).stress = { above: 2, below: 1, window: '1s' };
    const startedAt = performance.now();
    const { etd } = await startStack(doc);
    const clients = [0, 1, 2].map(() => net.connect({ port: etd.port, host: '127.0.0.1' }));
    for (const c of clients) c.on('error', () => undefined);
    try {
      await waitFor(() => etd.app.stats.held === 3, { what: '3 held' });
      const status = await getJson<StatusBody>('/v1/status');
      conforms(StatusBody, status);
      expect(status.version).toBe('test-1.2.3');
      expect(status.listeners).toEqual([{ name: 'test', mode: 'plain', state: 'listening', addresses: [`127.0.0.1:${etd.port}`] }]);
      expect(status.connections).toEqual({ held: 3, relaying: 0, total: 3 });
      // The engine owns the three held clients and the listener's fd, one per engine worker (and, in this process, nothing else of its own).
      const workers = etd.app.currentConfig.workers;
      expect(status.engine).toMatchObject({ connections: 3, fds: 3 + workers, handlerErrors: 0 });
      expect(status.workers).toHaveLength(workers);
      expect(status.workers.map((w) => [w.index, w.state, w.restarts])).toEqual(
        Array.from({ length: workers }, (_, i) => [i, 'running', 0]),
      );
      expect(status.workers.reduce((n, w) => n + w.held, 0)).toBe(3);
      expect(status.workers.reduce((n, w) => n + w.sessions, 0)).toBe(3);
      expect(status.workers.reduce((n, w) => n + w.accepted, 0)).toBe(3);
      expect(status.workers.every((w) => w.cpuMs >= 0 && w.cpuPercent >= 0 && w.threadId !== null)).toBe(true);
      expect(status.workers.every((w) => w.threadId !== null && w.threadId > 0)).toBe(true); // the engine threads' kernel ids
      expect(status.lostSessions).toBe(0);
      expect(status.workerRestarts).toBe(0);
      // Each held client has its hold deadline queued (one entry per live connection at least).
      expect(status.engine!.deadlines).toBeGreaterThanOrEqual(3);
      expect(status.backends).toEqual({ up: 2, total: 2 });
      // Three held is above detection.stress.above (2): connections arriving from now on get the 1 s window.
      expect(status.stress).toEqual({ active: true, windowMs: 1000, enterAbove: 2, leaveBelow: 1, changes: 1 });
      expect(status.uptimeSeconds).toBeGreaterThanOrEqual(0);
      // Not more than the time since this test started etd (to the 0.1 s it is rounded to).
      expect(status.uptimeSeconds).toBeLessThanOrEqual(Math.ceil((performance.now() - startedAt) / 100) / 10);

      const p1 = await getJson<SessionsBody>('/v1/sessions?limit=2');
      conforms(SessionsBody, p1);
      expect(p1.total).toBe(3);
      expect(p1.sessions).toHaveLength(2);
      expect(p1.sessions.every((s) => s.state === 'held' && s.server === null && s.listener === 'test')).toBe(true);
      expect(p1.sessions[0]!.client).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(p1.next).toBe(p1.sessions[1]!.id);
      const p2 = await getJson<SessionsBody>(`/v1/sessions?limit=2&after=${p1.next}`);
      expect(p2.sessions).toHaveLength(1);
      expect(p2.sessions[0]!.id).toBeGreaterThan(p1.sessions[1]!.id);
      expect(p2.next).toBeNull();
      expect((await getJson<SessionsBody>('/v1/sessions?state=relaying')).total).toBe(0);

      for (const [q, msg] of [
        ['limit=0', /query\.limit: must be from 1 to 1000 \(got 0\)/],
        ['limit=abc', /query\.limit: must be a whole number/],
        ['after=-1', /query\.after: must be from 0/],
        ['state=sleeping', /query\.state: must be one of "held", "connecting"/],
        ['colour=blue', /query\.colour: unknown field; allowed: limit, after, listener, state/],
      ] as const) {
        const r = await call('GET', `/v1/sessions?${q}`);
        expect(r.status, q).toBe(400);
        expect((r.json as { error: string }).error, q).toMatch(msg);
      }

      await waitFor(() => etd.app.stats.relaying === 3, { what: '3 relaying' });
      const relaying = await getJson<StatusBody>('/v1/status');
      expect(relaying.connections).toEqual({ held: 0, relaying: 3, total: 3 });
      expect(relaying.stress).toMatchObject({ active: false, windowMs: 1500, changes: 2 });
      const live = await getJson<SessionsBody>('/v1/sessions');
      expect(live.sessions.map((s) => [s.state, s.server])).toEqual([
        ['relaying', 's1'],
        ['relaying', 's1'],
        ['relaying', 's1'],
      ]);
      expect(live.sessions[0]!.bytesToClient).toBeGreaterThan(0); // the banner
      expect(live.sessions[0]!.ageMs).toBeGreaterThanOrEqual(1400);
      expect(live.sessions[2]!.ageMs).toBeGreaterThanOrEqual(950);
    } finally {
      for (const c of clients) c.destroy();
    }
    await etd.waitForSummaries(3);
    const stats = await getJson<StatsBody>('/v1/stats');
    conforms(StatsBody, stats);
    expect(stats.accepted).toBe(3);
    expect(stats.passed).toBe(3);
    expect(stats.relayed).toBe(3);
    expect(stats.now).toEqual({ held: 0, relaying: 0 });
  });
});

/** Reads an SSE response until `match` finds something in the text so far. */
async function readSse(res: Response, match: (text: string) => RegExpExecArray | null, timeoutMs = 10_000): Promise<RegExpExecArray> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const m = match(text);
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no match in the event stream; got ${JSON.stringify(text)}`);
      const chunk = await Promise.race([
        reader.read(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`event stream silent; got ${JSON.stringify(text)}`)), left)),
      ]);
      if (chunk.done) throw new Error(`event stream ended; got ${JSON.stringify(text)}`);
      text += decoder.decode(chunk.value, { stream: true });
    }
  } finally {
    reader.releaseLock();
  }
}

const SESSION_EVENT = /id: (\d+)\nevent: session\ndata: (.*)\n\n/;

describe('events', () => {
  it('lists recent verdicts and streams them live (SSE), resuming after Last-Event-ID', async () => {
    const { api, etd } = await startStack();
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 20_000);
    try {
      const res = await fetch(`${api.url}/v1/events/stream`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ctl.signal });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      await readSse(res, (t) => /: etd events/.exec(t)); // subscribed

      const early = await rawClient(etd.port, (s) => s.write('EHLO early.test\r\n'), 3000);
      expect(early.closedBy).toBe('reset');
      const m = await readSse(res, (t) => SESSION_EVENT.exec(t));
      const event = JSON.parse(m[2]!) as { seq: number; verdict: string; action: string; earlyBytes: string; listener: string };
      expect(Number(m[1])).toBe(event.seq);
      expect(event).toMatchObject({ verdict: 'early_talker', action: 'drop', earlyBytes: 'EHLO early.test\\r\\n', listener: 'test' });

      // A reconnecting client names the last event it saw and gets what came after, from the ring.
      await sendMail(etd.port, 'after-the-stream-event');
      await etd.waitForSummaries(2);
      const again = await fetch(`${api.url}/v1/events`, {
        headers: { authorization: `Bearer ${TOKEN}`, accept: 'text/event-stream', 'last-event-id': String(event.seq) },
        signal: ctl.signal,
      });
      expect(again.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const replay = await readSse(again, (t) => SESSION_EVENT.exec(t));
      expect(JSON.parse(replay[2]!)).toMatchObject({ seq: event.seq + 1, verdict: 'passed', server: 's1' });

      const list = await getJson<EventsBody>('/v1/events');
      conforms(EventsBody, list);
      expect(list.lastSeq).toBe(2);
      expect(list.events.map((e) => e.verdict)).toEqual(['early_talker', 'passed']);
      expect((await getJson<EventsBody>('/v1/events?verdict=early_talker')).events).toHaveLength(1);
      expect((await getJson<EventsBody>('/v1/events?limit=1')).events[0]!.verdict).toBe('passed');
      expect((await getJson<EventsBody>('/v1/events?since=2')).events).toEqual([]);
      const bad = await call('GET', '/v1/events?verdict=maybe');
      expect(bad.status).toBe(400);
      expect((bad.json as { error: string }).error).toMatch(/query\.verdict: must be one of "passed", "early_talker"/);
      const badId = await fetch(`${api.url}/v1/events/stream`, {
        headers: { authorization: `Bearer ${TOKEN}`, 'last-event-id': 'yesterday' },
        signal: ctl.signal,
      });
      expect(badId.status).toBe(400);
      expect(((await badId.json()) as { error: string }).error).toMatch(/Last-Event-ID: must be an event seq number/);
      // Shutting the API down ends open streams instead of waiting for their clients.
      const open = await fetch(`${api.url}/v1/events/stream`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ctl.signal });
      await readSse(open, (t) => /: etd events/.exec(t));
      const started = Date.now();
      await api.close();
      expect(Date.now() - started).toBeLessThan(2000);
      await expect(readSse(open, () => null, 3000)).rejects.toThrow(/ended|terminated/);
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  });
});

describe('backends', () => {
  it('lists backends with their health checks; PATCH validates its body (400 naming the field), 404 for an unknown name', async () => {
    const doc = baseDoc();
    (doc.upstream as Doc).health = { enabled: true, interval: '200ms', timeout: '150ms' };
    await startStack(doc);
    const list = await getJson<BackendListBody>('/v1/backends');
    conforms(BackendListBody, list);
    expect(list.backends.map((b) => [b.name, b.state, b.admin, b.active])).toEqual([
      ['s1', 'up', null, 0],
      ['s2', 'up', null, 0],
    ]);
    await waitFor(async () => ((await getJson<BackendListBody>('/v1/backends')).backends[0]!.check?.checks ?? 0) >= 1, {
      what: 'a health check of s1',
    });
    const checked = await getJson<BackendListBody>('/v1/backends');
    conforms(BackendListBody, checked);
    expect(checked.backends[0]!.check).toMatchObject({ checked: true, failStreak: 0, last: { ok: true } });
    expect(await getJson('/v1/backends/s2')).toMatchObject({ name: 's2', port: b2.port, state: 'up' });

    const cases: Array<[string, { body?: unknown; raw?: string; contentType?: string }, number, RegExp]> = [
      ['empty object', { body: {} }, 400, /body\.state: is required/],
      ['unknown state', { body: { state: 'down' } }, 400, /body\.state: must be one of "up", "drain", "maint" \(got "down"\)/],
      ['number state', { body: { state: 5 } }, 400, /body\.state: must be one of/],
      ['extra field', { body: { state: 'drain', until: 'tomorrow' } }, 400, /body\.until: unknown field; allowed: state, reason/],
      ['empty reason', { body: { state: 'drain', reason: '' } }, 400, /body\.reason: must not be empty/],
      ['array body', { body: ['drain'] }, 400, /body: must be a JSON object/],
      ['broken JSON', { raw: '{"state": "drain"' }, 400, /JSON/],
      ['no body', {}, 400, /body: must be a JSON object \(got nothing\)/],
      ['text body', { raw: 'state=drain', contentType: 'text/plain' }, 415, /Unsupported Media Type/i],
    ];
    for (const [what, opts, status, msg] of cases) {
      const r = await call('PATCH', '/v1/backends/s1', opts);
      expect(r.status, what).toBe(status);
      expect((r.json as { error: string }).error, what).toMatch(msg);
    }
    expect(stack!.etd.app.pool.get('s1')!.state).toBe('up');

    const unknown = await call('PATCH', '/v1/backends/nope', { body: { state: 'drain' } });
    expect(unknown.status).toBe(404);
    expect((unknown.json as { error: string }).error).toBe('no backend named "nope"; known: s1, s2');
    expect((await call('GET', '/v1/backends/nope')).status).toBe(404);
    const badName = await call('PATCH', '/v1/backends/a%20b', { body: { state: 'drain' } });
    expect(badName.status).toBe(400);
    expect((badName.json as { error: string }).error).toMatch(/path\.name: has characters that are not allowed/);
  });

  it('a drained server gets no new sessions while its open session completes; drain survives a reload; up returns it', async () => {
    const { etd } = await startStack(baseDoc({ window: '200ms' }));
    // Counted from here: a late connection from an earlier test's teardown must not count.
    await sleep(200);
    b1.connections.length = 0;
    b2.connections.length = 0;
    b1.messages.length = 0;
    b2.messages.length = 0;
    // Session A on s1 (balance: first), mid-transaction.
    const a = await smtpClient(etd.port);
    expect(a.banner).toMatch(/^220 one\.test/);
    expect(await a.cmd('EHLO a.test')).toMatch(/^250/);
    expect(await a.cmd('MAIL FROM:<a@example.org>')).toMatch(/^250/);

    const drained = await call('PATCH', '/v1/backends/s1', { body: { state: 'drain', reason: 'kernel update' } });
    expect(drained.status).toBe(200);
    expect(drained.json).toMatchObject({ name: 's1', state: 'drain', admin: 'drain', healthy: true, active: 1 });

    // New sessions go to s2 only.
    await sendMail(etd.port, 'while-draining-1');
    await sendMail(etd.port, 'while-draining-2');
    expect(b1.connections).toHaveLength(1);
    expect(b2.connections).toHaveLength(2);
    expect(b2.messages).toHaveLength(2);

    // The open session on s1 completes its message.
    expect(await a.cmd('RCPT TO:<b@example.net>')).toMatch(/^250/);
    expect(await a.cmd('DATA')).toMatch(/^354/);
    expect(await a.raw('Subject: during drain\r\n\r\nstill delivered\r\n.\r\n')).toMatch(/^250/);
    expect(await a.cmd('QUIT')).toMatch(/^221/);
    a.close();
    await waitFor(() => b1.messages.length === 1, { what: 'b1 message' });
    expect(b1.messages[0]!.to).toEqual(['b@example.net']);
    await waitFor(() => etd.app.pool.get('s1')!.active === 0, { what: 's1 idle' });

    // Drain survives a reload of the (unchanged) file.
    const reload = await call('POST', '/v1/reload');
    expect(reload.status, reload.text).toBe(200);
    expect((await getJson('/v1/backends/s1')).state).toBe('drain');
    await sendMail(etd.port, 'after-reload');
    expect(b1.connections).toHaveLength(1);

    // maint behaves the same for new sessions; up clears the override.
    expect((await call('PATCH', '/v1/backends/s1', { body: { state: 'maint' } })).json).toMatchObject({ state: 'maint', admin: 'maint' });
    const up = await call('PATCH', '/v1/backends/s1', { body: { state: 'up' } });
    expect(up.json).toMatchObject({ state: 'up', admin: null });
    await sendMail(etd.port, 'back-up');
    expect(b1.connections).toHaveLength(2);
    expect(b1.messages).toHaveLength(2);
  });
});

describe('reload and config', () => {
  it('a bad config is refused with 400 and the reasons, and the old config still runs; a good one takes effect', async () => {
    const { etd, write, file } = await startStack(baseDoc({ action: 'drop' }));
    const dropped = async () => {
      const r = await rawClient(etd.port, (s) => s.write('EHLO early.test\r\n'), 3000);
      return r.closedBy === 'reset' && r.data.length === 0;
    };
    expect(await dropped()).toBe(true);

    // Invalid values: both problems named, nothing applied.
    const bad = baseDoc({ action: 'reject' });
    (bad.detection as Doc).window = 'forever';
    (bad.upstream as { servers: Doc[] }).servers[1]!.port = 70000;
    write(bad);
    const r1 = await call('POST', '/v1/reload');
    expect(r1.status).toBe(400);
    const body1 = r1.json as { error: string; code: string; problems: Array<{ path: string; message: string }> };
    expect(body1.code).toBe('ETD_ERR_CONFIG_INVALID');
    expect(body1.error).toContain(file);
    expect(body1.problems.map((p) => p.path)).toEqual(expect.arrayContaining(['detection.window', 'upstream.servers[1].port']));
    expect(await dropped()).toBe(true); // still drop, not reject
    expect(((await getJson('/v1/config')).detection as Doc).action).toBe('drop');

    // Not YAML at all, and a missing file.
    write('listeners: [\n  - name: x\n bad: : :\n');
    const r2 = await call('POST', '/v1/reload');
    expect(r2.status).toBe(400);
    expect((r2.json as { code: string }).code).toBe('ETD_ERR_CONFIG_PARSE');
    fs.unlinkSync(file);
    const r3 = await call('POST', '/v1/reload');
    expect(r3.status).toBe(400);
    expect(r3.json).toMatchObject({ code: 'ETD_ERR_CONFIG_READ' });
    expect(await dropped()).toBe(true);

    // A good one: reject with the 554 reply from now on.
    write(baseDoc({ action: 'reject' }));
    const ok = await call('POST', '/v1/reload');
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json).toEqual({ reloaded: true, listeners: ['test'], servers: ['s1', 's2'], restartNeeded: [] });
    const rejected = await rawClient(etd.port, (s) => s.write('EHLO early.test\r\n'), 3000);
    expect(rejected.data.toString('latin1')).toMatch(/^554 5\.5\.1 /);
    expect(((await getJson('/v1/config')).detection as Doc).action).toBe('reject');

    // A change the running process cannot apply is reported.
    const moved = baseDoc({ action: 'reject' });
    (moved.api as Doc).port = 18025;
    write(moved);
    expect((await call('POST', '/v1/reload')).json).toMatchObject({ reloaded: true, restartNeeded: ['api'] });
  });

  it('GET /v1/config is the effective config with the token redacted', async () => {
    await startStack();
    const r = await call('GET', '/v1/config');
    expect(r.status).toBe(200);
    expect(r.text).not.toContain(TOKEN);
    const doc = r.json as { api: Doc; detection: Doc; upstream: { servers: Doc[] } };
    expect(doc.api.token).toBe('<redacted>');
    expect(doc.detection).toMatchObject({ window: '300ms', action: 'drop' });
    expect(doc.upstream.servers.map((s) => s.name)).toEqual(['s1', 's2']);
  });
});

/** A strict reader of the Prometheus text format: every sample must belong to a declared family. */
function parseProm(text: string): Map<string, number> {
  const types = new Map<string, string>();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        expect(['counter', 'gauge', 'histogram', 'summary', 'untyped']).toContain(meta[3]);
        types.set(meta[2]!, meta[3]!);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    expect(m, `not a Prometheus sample line: ${line}`).not.toBeNull();
    const name = m![1]!;
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    expect(types.has(family), `sample ${name} has no # TYPE`).toBe(true);
    // Labels in a canonical order, so lookups do not depend on the exporter's order.
    const labels = [...(m![2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1]}="${l[2]}"`).sort();
    samples.set(`${name}{${labels.join(',')}}`, Number(m![3]));
  }
  return samples;
}

function sum(samples: Map<string, number>, name: string, label?: string): number {
  let total = 0;
  for (const [k, v] of samples) if (k.startsWith(`${name}{`) && (label === undefined || k.includes(label))) total += v;
  return total;
}

describe('metrics and health', () => {
  it('/metrics parses as Prometheus text and agrees with /v1/stats', async () => {
    const { etd } = await startStack(baseDoc({ window: '200ms' }));
    await sendMail(etd.port, 'metrics-1');
    await sendMail(etd.port, 'metrics-2');
    await rawClient(etd.port, (s) => s.write('EHLO early.test\r\n'), 2000);
    await rawClient(etd.port, (s) => setTimeout(() => s.end(), 50), 2000); // hangs up in the window
    await etd.waitForSummaries(4);
    // One held connection at scrape time, too.
    const held = net.connect({ port: etd.port, host: '127.0.0.1' });
    held.on('error', () => undefined);
    try {
      await waitFor(() => etd.app.stats.held === 1, { what: 'held' });
      const r = await call('GET', '/metrics');
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      const m = parseProm(r.text);
      const stats = await getJson<StatsBody>('/v1/stats');

      expect(m.get('etd_accepted_total{}')).toBe(stats.accepted);
      expect(stats.accepted).toBe(5);
      expect(m.get('etd_relayed_total{}')).toBe(stats.relayed);
      for (const [verdict, n] of Object.entries(stats.verdicts)) {
        expect(sum(m, 'etd_connections_total', `verdict="${verdict}"`), verdict).toBe(n);
      }
      expect(stats.passed).toBe(2);
      expect(stats.clientGone).toBe(1);
      expect(m.get('etd_connections_total{listener="test",verdict="passed"}')).toBe(2);
      for (const action of ['drop', 'reject', 'log'] as const) {
        expect(sum(m, 'etd_early_talkers_total', `action="${action}"`), action).toBe(stats.earlyTalkers[action]);
      }
      expect(stats.earlyTalkers.drop).toBe(1);
      expect(m.get('etd_early_talk_delay_seconds_count{listener="test"}')).toBe(stats.earlyTalkers.total);
      expect(m.get('etd_early_talk_delay_seconds_bucket{le="+Inf",listener="test"}')).toBe(stats.earlyTalkers.total);
      expect(m.get('etd_bytes_total{direction="from_client"}')).toBe(stats.bytes.fromClient);
      expect(m.get('etd_bytes_total{direction="to_client"}')).toBe(stats.bytes.toClient);
      expect(stats.bytes.fromClient).toBeGreaterThan(100);
      expect(m.get('etd_held_connections{}')).toBe(stats.now.held);
      expect(m.get('etd_held_connections{}')).toBe(1);
      // The held client and the listener (one per engine worker) are the native engine's fds.
      const workers = etd.app.currentConfig.workers;
      expect(m.get('etd_engine_fds{}')).toBe(1 + workers);
      expect(sum(m, 'etd_worker_sessions')).toBe(1);
      for (let i = 0; i < workers; i++) {
        // The one session is on one worker: each worker's gauge is 0 or 1 (their sum, 1, is checked above).
        expect([0, 1], `worker ${i}`).toContain(m.get(`etd_worker_sessions{worker="${i}"}`));
        // Every worker thread has run (it accepted or polled): its CPU time is above zero.
        expect(m.get(`etd_worker_cpu_seconds_total{worker="${i}"}`), `worker ${i}`).toBeGreaterThan(0);
      }
      expect(m.get('etd_worker_restarts_total{}')).toBe(0);
      expect(m.get('etd_sessions_lost_total{}')).toBe(0);
      expect(m.get('etd_sessions_active{}')).toBe(stats.now.relaying);
      expect(m.get('etd_upstream_connect_seconds_count{server="s1"}')).toBe(2);
      expect(m.get('etd_backend_up{server="s1"}')).toBe(1);
      expect(m.get('etd_build_info{version="test-1.2.3"}')).toBe(1);

      // Buckets are cumulative.
      const buckets = [...m]
        .filter(([k]) => k.startsWith('etd_upstream_connect_seconds_bucket{') && k.includes('server="s1"'))
        .map(([, v]) => v);
      expect(buckets.length).toBeGreaterThan(5);
      expect(buckets.every((v, i) => i === 0 || v >= buckets[i - 1]!)).toBe(true);

      await call('PATCH', '/v1/backends/s1', { body: { state: 'drain' } });
      const after = parseProm((await call('GET', '/metrics')).text);
      expect(after.get('etd_backend_up{server="s1"}')).toBe(0);
      expect(after.get('etd_backend_transitions_total{server="s1",to="drain"}')).toBe(1);
    } finally {
      held.destroy();
    }
  });

  it('/healthz answers; /readyz is 503 with the reason while no backend is up', async () => {
    await startStack();
    expect((await call('GET', '/healthz', { token: null })).json).toEqual({ status: 'ok' });
    expect((await call('GET', '/readyz', { token: null })).json).toEqual({ ready: true, reasons: [] });
    await call('PATCH', '/v1/backends/s1', { body: { state: 'maint' } });
    await call('PATCH', '/v1/backends/s2', { body: { state: 'drain' } });
    const r = await call('GET', '/readyz', { token: null });
    expect(r.status).toBe(503);
    expect(r.json).toEqual({ ready: false, reasons: ['no backend server is up (s1 maint, s2 drain)'] });
  });
});

describe('OpenAPI and etd status', () => {
  it('serves an OpenAPI 3.1 document listing every endpoint with its schemas', async () => {
    await startStack();
    const doc = (await call('GET', '/openapi.json', { token: null })).json as {
      openapi: string;
      paths: Record<
        string,
        Record<
          string,
          {
            requestBody?: { content: Record<string, { schema: { properties: Record<string, { anyOf?: Array<{ const: string }> }> } }> };
            parameters: Array<{ name: string; in: string }>;
            security?: unknown[];
          }
        >
      >;
      components: { securitySchemes?: unknown };
    };
    expect(doc.openapi).toBe('3.1.0');
    const ops = Object.entries(doc.paths).flatMap(([p, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${p}`));
    expect(ops.sort()).toEqual(
      [
        'GET /v1/status',
        'GET /v1/stats',
        'GET /v1/backends',
        'GET /v1/backends/{name}',
        'PATCH /v1/backends/{name}',
        'GET /v1/sessions',
        'GET /v1/events',
        'GET /v1/events/stream',
        'GET /v1/cache',
        'GET /v1/cache/{ip}',
        'DELETE /v1/cache/{ip}',
        'GET /v1/access',
        'POST /v1/access',
        'DELETE /v1/access/{cidr}',
        'GET /v1/history',
        'GET /v1/clients/{address}',
        'GET /v1/reputation/{address}',
        'POST /v1/doctor',
        'GET /ui/',
        'POST /v1/reload',
        'GET /v1/config',
        'GET /metrics',
        'GET /healthz',
        'GET /readyz',
      ].sort(),
    );
    const patch = doc.paths['/v1/backends/{name}']!.patch!;
    const state = patch.requestBody!.content['application/json']!.schema.properties.state!;
    expect(state.anyOf!.map((s) => s.const)).toEqual(['up', 'drain', 'maint']);
    expect(patch.parameters).toEqual([expect.objectContaining({ name: 'name', in: 'path' })]);
    expect(doc.paths['/v1/sessions']!.get!.parameters.map((p) => p.name)).toEqual(['limit', 'after', 'listener', 'state']);
    expect(doc.components.securitySchemes).toBeDefined();
    expect(doc.paths['/healthz']!.get!.security).toEqual([]);
  });

  it('etd status prints a readable summary, or the raw JSON; says what to check when the API is unreachable', async () => {
    const { etd, api } = await startStack();
    await sendMail(etd.port, 'for-status');
    await etd.waitForSummaries(1);
    const lines: string[] = [];
    expect(await statusCommand({ url: api.url, token: TOKEN, json: false }, (s) => lines.push(s))).toBe(0);
    const text = lines.join('\n');
    expect(text).toMatch(/^etd test-1\.2\.3, up /);
    expect(text).toMatch(/test\s+plain\s+127\.0\.0\.1:\d+/);
    expect(text).toMatch(/engine\s+\d+ connections, \d+ fds, \d+ bytes buffered/);
    expect(text).toMatch(/s1\s+up\s+127\.0\.0\.1:\d+\s+0 active/);
    expect(text).toMatch(/passed\s+1 /);
    expect(text).toMatch(/early talkers\s+0\s+\(drop 0, reject 0, log 0\)/);
    expect(text).toMatch(/stress\s+off \(window 0\.3s; stress above 9,000 held\)/);
    // One line per engine worker: connections, held, relaying, accepted, CPU time and share.
    const workers = etd.app.currentConfig.workers;
    expect(text).toMatch(new RegExp(`^workers\\s+${workers}$`, 'm'));
    for (let i = 0; i < workers; i++) {
      expect(text).toMatch(
        new RegExp(`^  #${i}\\s+\\d+ connections \\(\\d+ held, \\d+ relaying\\), \\d+ accepted, CPU [\\d,]+ ms \\(\\d+\\.\\d%\\)$`, 'm'),
      );
    }

    const json: string[] = [];
    expect(await statusCommand({ url: api.url, token: TOKEN, json: true }, (s) => json.push(s))).toBe(0);
    const raw = JSON.parse(json.join('')) as { status: StatusBody; stats: StatsBody; backends: unknown[] };
    expect(raw.status.version).toBe('test-1.2.3');
    expect(raw.status.workers).toHaveLength(workers);
    expect(raw.status.workers.reduce((n, w) => n + w.accepted, 0)).toBe(1);
    expect(raw.stats.passed).toBe(1);
    expect(raw.backends).toHaveLength(2);

    const errs: string[] = [];
    expect(
      await statusCommand(
        { url: api.url, json: false },
        () => undefined,
        (s) => errs.push(s),
      ),
    ).toBe(1);
    expect(errs[0]).toMatch(/wants a bearer token/);

    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const errs2: string[] = [];
    expect(
      await statusCommand(
        { url: `http://127.0.0.1:${port}`, json: false },
        () => undefined,
        (s) => errs2.push(s),
      ),
    ).toBe(1);
    expect(errs2[0]).toMatch(
      /cannot reach the etd API at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED — is etd running\? is api\.address\/port right\?/,
    );
  });
});

/** GET over a unix socket. */
function unixGet(socketPath: string, p: string): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: p, timeout: 5000 }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as unknown }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

describe('unix socket', () => {
  it('listens on a socket path with mode 0660, replaces a stale socket, refuses a live one or a plain file', async () => {
    const etd = await startEtdForTest(baseDoc());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-sock-'));
    const sock = path.join(dir, 'api.sock');
    const deps = { app: etd.app, version: 'sock-1', log: silent, reload: async () => undefined, options: { processMetrics: false } };
    try {
      // A stale socket: its process died without removing it.
      const child = spawn(process.execPath, [
        '-e',
        `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`,
      ]);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('child did not exit')), 10_000);
        child.on('exit', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      expect(fs.lstatSync(sock).isSocket()).toBe(true);

      const api = await startApi({ enabled: true, address: sock, port: 0, token: undefined }, deps);
      try {
        expect(api.url).toBe(`unix:${sock}`);
        expect(fs.statSync(sock).mode & 0o777).toBe(0o660);
        const r = await unixGet(sock, '/v1/status');
        expect(r.status).toBe(200);
        expect(r.json).toMatchObject({ version: 'sock-1', listeners: [{ name: 'test', mode: 'plain' }] });
        const out: string[] = [];
        expect(await statusCommand({ socket: sock, json: false }, (s) => out.push(s))).toBe(0);
        expect(out.join('\n')).toMatch(/^etd sock-1, up /);

        const second = await startApi({ enabled: true, address: sock, port: 0, token: undefined }, deps).catch((e: unknown) => e);
        expect(isEtdError(second, 'ETD_ERR_API')).toBe(true);
        expect(String(second)).toMatch(/another process is listening on it/);
        expect((await unixGet(sock, '/healthz')).status).toBe(200); // the first one is untouched
      } finally {
        await api.close();
      }
      expect(fs.existsSync(sock)).toBe(false);

      fs.writeFileSync(sock, 'not a socket');
      const file = await startApi({ enabled: true, address: sock, port: 0, token: undefined }, deps).catch((e: unknown) => e);
      expect(isEtdError(file, 'ETD_ERR_API')).toBe(true);
      expect(String(file)).toMatch(/exists and is not a socket/);
      expect(fs.readFileSync(sock, 'utf8')).toBe('not a socket');
    } finally {
      await etd.stop(200);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
