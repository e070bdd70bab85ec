// Bad input: config fuzz (mutated valid configs → a Config or a clean ETD_ERR_CONFIG_* error, never a stack; also
// through `etd check`) and API fuzz (random methods, paths, headers and bodies over real HTTP → never a 5xx or a crash).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { type Sink, sendMail, startSink } from '../../bench/smtpPeers.js';
import { type ApiHandle, startApi } from '../../src/api/server.js';
import { loadConfig, parseConfig, validateConfig } from '../../src/config/load.js';
import { isEtdError } from '../../src/errors.js';
import { assertBuilt, CLI } from '../helpers/cli.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-fuzz-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const STACK = /\n\s+at /;
/** Longest error message allowed: an operator reads it in a terminal or a log line. */
const MAX_MESSAGE = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Config fuzz

const EXAMPLE = fs.readFileSync(path.join(__dirname, '../../config/etd.example.yaml'), 'utf8');

const PLAIN = YAML.stringify({
  listeners: [
    { name: 'a', address: '127.0.0.1', port: 2525, mode: 'plain' },
    { name: 'b', address: '::1', port: 2526, mode: 'plain', backlog: 128 },
  ],
  detection: { window: '3s', action: 'reject', teaser: '220-mx.example ESMTP', stress: { above: 10, below: 5, window: '1s' } },
  upstream: {
    source: 'proxy-v2',
    balance: 'leastconn',
    retries: 1,
    servers: [
      { name: 's1', address: '127.0.0.1', port: 25, weight: 3 },
      { name: 's2', address: '::1', port: 25, backup: true, check: false },
    ],
    health: { enabled: true, interval: '2s', timeout: '1s', command: 'EHLO' },
  },
  access: { allow: ['10.0.0.0/8', '2001:db8::/32'], deny: ['192.0.2.1'], denyAction: 'drop' },
  cache: { enabled: true, ttl: '12h', denyTtl: '30m', scope: 'net' },
  limits: { maxConnections: 100, maxHeld: 50, perClient: 5 },
  api: { enabled: true, address: '127.0.0.1', port: 8025, token: 'a-long-enough-token-0123' },
  timeouts: { client: '2m', server: '2m', shutdownGrace: '5s' },
  state: { path: ':memory:' },
  log: { level: 'warn' },
});

const INTERCEPT = YAML.stringify({
  listeners: [{ name: 'mx', address: '0.0.0.0', port: 25, mode: 'intercept', destinations: ['192.0.2.0/24', '2001:db8::/64'] }],
  upstream: { source: 'clientip' },
  netfilter: { manage: true, mark: 2, table: 200, rulePriority: 50, tproxyPort: 10026, tableName: 'etd_x' },
});

const BASES = [EXAMPLE, PLAIN, INTERCEPT];

/** A config outcome is fine when it is a Config, or an EtdError ETD_ERR_CONFIG_* with a short message and no stack. */
function expectClean(run: () => unknown, what: () => string): void {
  let result: unknown;
  try {
    result = run();
  } catch (e) {
    const label = `${what()}\n→ ${e instanceof Error ? `${e.name}: ${e.message.slice(0, 2000)}` : String(e)}`;
    expect(isEtdError(e), `not an EtdError: ${label}`).toBe(true);
    const err = e as Error & { code: string };
    expect(err.code, label).toMatch(/^ETD_ERR_CONFIG_(READ|PARSE|INVALID)$/);
    expect(STACK.test(err.message), `stack trace in the message: ${label}`).toBe(false);
    expect(err.message.length, `message of ${err.message.length} characters: ${label.slice(0, 500)}`).toBeLessThan(MAX_MESSAGE);
    return;
  }
  expect(result, what()).toBeTypeOf('object');
  expect(Object.isFrozen(result)).toBe(true);
}

function nest(depth: number, leaf: unknown = 1): unknown {
  let v: unknown = leaf;
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { k: v };
  return v;
}

/**
 * Big values are generated as small markers and expanded when applied, so a failing case prints
 * as "<300000 x>" rather than the value itself.
 */
const BIG = Symbol('big');
interface Big {
  [BIG]: { kind: 'string' | 'nest' | 'array'; n: number };
}
function big(kind: Big[typeof BIG]['kind'], n: number): Big {
  return { [BIG]: { kind, n }, [fc.toStringMethod]: () => `<${kind} ${n}>` } as Big;
}
function expand(v: unknown): unknown {
  if (typeof v !== 'object' || v === null || !(BIG in v)) return v;
  const { kind, n } = (v as Big)[BIG];
  if (kind === 'string') return 'x'.repeat(n);
  if (kind === 'nest') return nest(n);
  return Array.from({ length: n }, (_, i) => i);
}

const scalar = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constantFrom(
    '6s',
    '0ms',
    '0.5ms',
    '99999999999999999999d',
    '1e3s',
    '-1s',
    ' 6s ',
    '0x19',
    '65536',
    '::1',
    '0.0.0.0',
    '10.0.0.0/33',
    'fe80::1%eth0',
    '/tmp/etd.sock',
    'vip',
    'plain',
    'intercept',
    'clientip',
    'proxy-v1',
    '__proto__',
    '554 ok',
    '421 x',
    '\u0000',
    '\r\n',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: hostile input is the point
    '${HOME}',
  ),
  fc.constantFrom(1e308, -1, 0, -0, 65535, 65536, 2 ** 31, 2 ** 53 + 1, Number.MAX_VALUE, 0.5),
);

const value: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: scalar },
  { weight: 2, arbitrary: fc.anything({ maxDepth: 3, maxKeys: 4 }) },
  { weight: 1, arbitrary: fc.integer({ min: 50, max: 1000 }).map((d) => big('nest', d)) },
  { weight: 1, arbitrary: fc.integer({ min: 1000, max: 200_000 }).map((n) => big('string', n)) },
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 3000 }).map((n) => big('array', n)) },
);

const key = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.constantFrom(
    '__proto__',
    'constructor',
    'prototype',
    'toString',
    '<<',
    'listeners',
    'upstream',
    'window',
    'port',
    'mode',
    'servers',
    'health',
    'token',
    'tokenFile',
    'path',
  ),
);

interface Mutation {
  op: 'delete' | 'set' | 'rename' | 'add';
  pick: number;
  value: unknown;
  key: string;
}
const mutation: fc.Arbitrary<Mutation> = fc.record({ op: fc.constantFrom('delete', 'set', 'rename', 'add'), pick: fc.nat(), value, key });

type Node = Record<string, unknown> | unknown[];
const isNode = (v: unknown): v is Node => typeof v === 'object' && v !== null;

/** Every (parent, key) in the document, depth first. */
function slots(doc: unknown): Array<[Node, string | number]> {
  const out: Array<[Node, string | number]> = [];
  const walk = (v: unknown): void => {
    if (!isNode(v)) return;
    const entries: Array<[string | number, unknown]> = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
    for (const [k, child] of entries) {
      out.push([v, k]);
      walk(child);
    }
  };
  walk(doc);
  return out;
}

function mutate(doc: unknown, mutation: Mutation): unknown {
  const m = { ...mutation, value: expand(mutation.value) };
  const all = slots(doc);
  if (all.length === 0) return m.value;
  const [parent, k] = all[m.pick % all.length]!;
  const p = parent as Record<string | number, unknown>;
  switch (m.op) {
    case 'delete':
      if (Array.isArray(parent)) parent.splice(k as number, 1);
      else delete p[k];
      break;
    case 'set':
      p[k] = m.value;
      break;
    case 'rename':
      if (!Array.isArray(parent)) {
        const v = p[k];
        delete p[k];
        // defineProperty: a key named __proto__ becomes a key, as a YAML parser makes it.
        Object.defineProperty(p, m.key, { value: v, enumerable: true, writable: true, configurable: true });
      }
      break;
    case 'add': {
      const target = isNode(p[k]) ? (p[k] as Node) : parent;
      if (Array.isArray(target)) target.push(m.value);
      else Object.defineProperty(target, m.key, { value: m.value, enumerable: true, writable: true, configurable: true });
      break;
    }
  }
  return doc;
}

const textMutation = fc.record({
  op: fc.constantFrom('flip', 'insert', 'truncate', 'duplicate', 'indent', 'bytes'),
  at: fc.nat(),
  bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  text: fc.oneof(
    fc.string({ maxLength: 20 }),
    fc.constantFrom(
      '\t',
      ': ',
      '- ',
      '&a ',
      '*a',
      '!!binary ',
      '!!set ',
      '? ',
      '|',
      '>',
      '{',
      '[',
      '"',
      "'",
      '%YAML 1.1\n',
      '---\n',
      '...\n',
      '\ufeff',
      '#',
    ),
  ),
});

function mutateText(src: Buffer, m: { op: string; at: number; bytes: Uint8Array; text: string }): Buffer {
  const at = src.length ? m.at % src.length : 0;
  switch (m.op) {
    case 'flip': {
      const out = Buffer.from(src);
      if (out.length) out[at] = (out[at]! ^ (m.bytes[0]! || 1)) & 0xff;
      return out;
    }
    case 'truncate':
      return src.subarray(0, at);
    case 'duplicate': {
      const lines = src.toString('latin1').split('\n');
      const i = m.at % lines.length;
      lines.splice(i, 0, lines[i]!);
      return Buffer.from(lines.join('\n'), 'latin1');
    }
    case 'indent': {
      const lines = src.toString('latin1').split('\n');
      const i = m.at % lines.length;
      lines[i] = `${m.text.includes('\t') ? '\t' : ' '}${lines[i]}`;
      return Buffer.from(lines.join('\n'), 'latin1');
    }
    case 'bytes':
      return Buffer.concat([src.subarray(0, at), Buffer.from(m.bytes), src.subarray(at)]);
    default:
      return Buffer.concat([src.subarray(0, at), Buffer.from(m.text, 'utf8'), src.subarray(at)]);
  }
}

/** Hand-made nasties: each is also run through the real CLI. */
function nasties(): Array<[string, Buffer]> {
  const bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  for (const [prev, cur] of [...'abcdefgh'].map((c, i, all) => [c, all[i + 1] ?? 'i'] as const))
    bomb.push(`${cur}: &${cur} [${Array(9).fill(`*${prev}`).join(',')}]`);
  bomb.push('listeners: *i');
  const manyKeys = Array.from({ length: 20_000 }, (_, i) => `k${i}: ${i}`).join('\n');
  return [
    ['alias bomb (billion laughs)', Buffer.from(bomb.join('\n'))],
    ['10,000 nested flow sequences', Buffer.from(`listeners: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`)],
    ['2,000 nested block mappings', Buffer.from(`${Array.from({ length: 2000 }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n')} 1\n`)],
    [
      'invalid UTF-8',
      Buffer.concat([
        Buffer.from('listeners:\n  - name: '),
        Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1]),
        Buffer.from('\n    address: 0.0.0.0\n'),
      ]),
    ],
    ['UTF-16 with a BOM', Buffer.from(`\ufeff${EXAMPLE}`, 'utf16le')],
    ['20,000 unknown top-level keys', Buffer.from(`${EXAMPLE}\n${manyKeys}\n`)],
    ['a 5 MB scalar', Buffer.from(`${EXAMPLE.replace('action: drop', `action: ${'x'.repeat(5 * 1024 * 1024)}`)}`)],
    [
      'YAML tags',
      Buffer.from(`listeners: !!set { a, b }\nupstream: !!binary aGVsbG8=\ndetection: !!omap [ {a: 1} ]\nlog: !custom { level: info }\n`),
    ],
    ['__proto__ keys', Buffer.from(`__proto__: { polluted: yes }\nconstructor: { prototype: { polluted: yes } }\n${EXAMPLE}`)],
    ['two documents', Buffer.from(`${EXAMPLE}\n---\n${EXAMPLE}`)],
    ['a NUL byte', Buffer.from(EXAMPLE.replace('action: drop', 'action: dr\u0000op'))],
    ['empty', Buffer.alloc(0)],
    ['only a comment', Buffer.from('# nothing here\n')],
    ['a list at the top', Buffer.from('- 1\n- 2\n')],
    ['a number at the top', Buffer.from('42\n')],
    ['duplicate keys', Buffer.from(`${EXAMPLE}\nlog: { level: info }\n`)],
    ['a 1 MB key', Buffer.from(`${EXAMPLE}\n${'k'.repeat(1024 * 1024)}: 1\n`)],
    [
      'a recursive alias',
      Buffer.from(`listeners: &l [ { name: a, address: 0.0.0.0, port: 25, extra: *l } ]\nupstream: &u { servers: [ *u ] }\n`),
    ],
    ['huge numbers', Buffer.from(EXAMPLE.replace('port: 25', 'port: 1e400').replace('retries: 2', `retries: ${'9'.repeat(500)}`))],
  ];
}

describe('config fuzz', () => {
  it('the bases are valid', () => {
    for (const b of BASES) expect(parseConfig(b)).toBeTypeOf('object');
  });

  it('random mutations of valid documents: a Config or a clean ETD_ERR_CONFIG_* error, every time', () => {
    const docs = BASES.map((b) => YAML.parse(b) as unknown);
    fc.assert(
      fc.property(fc.nat({ max: docs.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.boolean(), (i, ms, viaYaml) => {
        let doc = structuredClone(docs[i]);
        for (const m of ms) doc = mutate(doc, m);
        if (viaYaml) {
          let text: string;
          try {
            text = YAML.stringify(doc, { aliasDuplicateObjects: false });
          } catch {
            return; // not expressible as YAML (e.g. a BigInt): the object path below covers it
          }
          expectClean(
            () => parseConfig(text),
            () => `base ${i}, ${JSON.stringify(ms).slice(0, 600)}`,
          );
        } else {
          expectClean(
            () => validateConfig(doc),
            () => `base ${i} (object), ${JSON.stringify(ms).slice(0, 600)}`,
          );
        }
      }),
      { numRuns: 300 },
    );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  }, 60_000);

  it('random byte-level mutations of the files (invalid UTF-8, tabs, tags, truncation) through loadConfig', () => {
    const files = BASES.map((b) => Buffer.from(b, 'utf8'));
    const file = path.join(tmp, 'mutated.yaml');
    fc.assert(
      fc.property(fc.nat({ max: files.length - 1 }), fc.array(textMutation, { minLength: 1, maxLength: 5 }), (i, ms) => {
        let buf: Buffer = files[i]!;
        for (const m of ms) buf = mutateText(buf, m);
        fs.writeFileSync(file, buf);
        expectClean(
          () => loadConfig(file),
          () => `base ${i}, ${JSON.stringify(ms)}`,
        );
      }),
      { numRuns: 400 },
    );
  }, 60_000);

  it('hand-made nasties (alias bomb, deep nesting, invalid UTF-8, huge values, tags, __proto__) give clean errors, in-process and through `etd check`', async () => {
    assertBuilt();
    const cases = nasties();
    for (const [name, buf] of cases) {
      const file = path.join(tmp, `nasty-${name.replace(/\W+/g, '-')}.yaml`);
      fs.writeFileSync(file, buf);
      const t0 = performance.now();
      expectClean(
        () => loadConfig(file),
        () => name,
      );
      expect(performance.now() - t0, `${name}: took too long`).toBeLessThan(5000);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();

    const run = (file: string): Promise<{ code: number | null; stderr: string; stdout: string }> =>
      new Promise((resolve) => {
        execFile(process.execPath, [CLI, 'check', '-c', file], { timeout: 20_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
        });
      });
    const results = await Promise.all(
      cases.map(([name]) => run(path.join(tmp, `nasty-${name.replace(/\W+/g, '-')}.yaml`)).then((r) => [name, r] as const)),
    );
    for (const [name, r] of results) {
      expect(r.code, `${name}: ${r.stderr.slice(0, 500)}`).toBe(1);
      expect(r.stderr, name).toMatch(/^etd: ETD_ERR_CONFIG_(READ|PARSE|INVALID): /);
      expect(STACK.test(r.stderr), `${name}: stack trace on stderr: ${r.stderr.slice(0, 1000)}`).toBe(false);
      expect(r.stderr).not.toMatch(/node:internal|RangeError|TypeError/);
    }
  }, 90_000);
});

// ---------------------------------------------------------------------------------------------
// API fuzz

const TOKEN = 'fuzz-token-0123456789abcdef';

describe('API fuzz over real HTTP', () => {
  let sink: Sink;
  let etd: TestEtd;
  let api: ApiHandle;
  let port = 0;
  const errors: Array<Record<string, unknown>> = [];

  beforeAll(async () => {
    sink = await startSink({ name: 'api.sink' });
    const doc = {
      detection: { window: '100ms' },
      upstream: {
        servers: [
          { name: 's1', address: '127.0.0.1', port: sink.port },
          { name: 's2', address: '127.0.0.1', port: sink.port },
        ],
      },
    };
    const file = path.join(tmp, 'api.yaml');
    fs.writeFileSync(
      file,
      YAML.stringify({
        ...doc,
        listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
        log: { level: 'silent' },
        state: { path: ':memory:' },
        cache: { enabled: false },
        api: { enabled: false },
      }),
    );
    etd = await startEtdForTest(doc);
    const log = pino({ level: 'error' }, { write: (s: string) => void errors.push(JSON.parse(s) as Record<string, unknown>) });
    api = await startApi(
      { enabled: true, address: '127.0.0.1', port: 0, token: TOKEN },
      {
        app: etd.app,
        version: 'fuzz',
        log,
        reload: async () => etd.app.reload(loadConfig(file)),
        options: { processMetrics: false, sseHeartbeatMs: 60_000 },
      },
    );
    port = Number(new URL(api.url).port);
  });

  afterAll(async () => {
    await api?.close();
    await etd?.stop(200);
    await sink?.close();
  });

  /** Sends raw bytes, returns the status code of the response (0 when the server closed without one). */
  function raw(request: Buffer): Promise<number> {
    return new Promise((resolve) => {
      let head = '';
      let done = false;
      const s = net.connect({ port, host: '127.0.0.1' });
      const finish = (status: number): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        s.destroy();
        resolve(status);
      };
      const timer = setTimeout(() => finish(-1), 5000);
      // Half-closed only if no answer came within 1 s (an incomplete request): Node's HTTP server
      // drops a request in flight when its client half-closes, which an async route (e.g.
      // /v1/sessions asking the engine workers) would otherwise see as a fuzz failure.
      const half = setTimeout(() => s.end(), 1000);
      s.on('close', () => clearTimeout(half));
      s.on('connect', () => s.write(request));
      s.on('data', (d: Buffer) => {
        head += d.toString('latin1');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
        if (m) finish(Number(m[1]));
      });
      s.on('error', () => finish(0));
      s.on('close', () => finish(0));
    });
  }

  const KNOWN = [
    '/v1/backends/s2',
    '/healthz',
    '/readyz',
    '/metrics',
    '/openapi.json',
    '/v1/status',
    '/v1/stats',
    '/v1/config',
    '/v1/backends',
    '/v1/backends/s1',
    '/v1/sessions',
    '/v1/events',
    '/v1/events/stream',
    '/v1/reload',
    '/v1/cache',
    '/v1/access',
  ];
  const seg = fc.oneof(
    fc.constantFrom(
      'v1',
      'backends',
      's1',
      's2',
      'events',
      'stream',
      'sessions',
      '..',
      '.',
      '',
      '%2e%2e',
      '%00',
      '%zz',
      '%',
      '%ff%fe',
      '%E2%80%AE',
      '~',
      '*',
      ';',
      ':name',
      'long-segment-'.repeat(250),
    ),
    fc.string({ maxLength: 12 }).map((s) => encodeURIComponent(s)),
  );
  const query = fc.oneof(
    fc.constant(''),
    fc
      .dictionary(
        fc.constantFrom('limit', 'since', 'verdict', 'listener', 'offset', 'kind', 'x', '__proto__', 'limit[]'),
        fc.oneof(
          fc.string({ maxLength: 10 }),
          fc.integer().map(String),
          fc.constantFrom('-1', '1e9', 'NaN', '', '0x10', '1001', 'passed', '%00'),
        ),
      )
      .map(
        (q) =>
          `?${Object.entries(q)
            .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
            .join('&')}`,
      ),
    fc.constantFrom('?', '?&&', '?limit', '?limit=1&limit=2', '?a[b][c]=1', '?%', `?${'a=1&'.repeat(2000)}`),
  );
  const pathArb = fc.oneof(
    { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...KNOWN), query).map(([p, q]) => p + q) },
    {
      weight: 2,
      arbitrary: fc.tuple(fc.constantFrom(...KNOWN), fc.array(seg, { maxLength: 3 }), query).map(([p, s, q]) => [p, ...s].join('/') + q),
    },
    { weight: 2, arbitrary: fc.tuple(fc.array(seg, { minLength: 1, maxLength: 6 }), query).map(([s, q]) => `/${s.join('/')}${q}`) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '*',
        '//',
        '/\\',
        'http://evil.example/nowhere',
        '/v1/backends/%',
        `/v1/backends/a-very-long-name-${'0123456789'.repeat(7000)}`,
      ),
    },
  );
  /** A big body, built when sent; printed by its label. */
  interface Lazy {
    label: string;
    make(): string;
  }
  const lazy = (label: string, make: () => string): Lazy => ({ label, make, [fc.toStringMethod]: () => `<${label}>` }) as Lazy;
  const text = (b: string | Lazy | undefined): string | undefined => (b === undefined || typeof b === 'string' ? b : b.make());
  const body = fc.oneof<fc.Arbitrary<string | Lazy | undefined>[]>(
    fc.constant(undefined),
    fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
    fc.constantFrom(
      '{"state":"drain"}',
      '{"state":"maint","reason":"fuzz"}',
      '{"state":"up"}',
      '{"state":"up","reason":""}',
      '{"state":"drain","extra":1}',
      '{"__proto__":{"polluted":1}}',
      '{"constructor":{"prototype":{"polluted":1}}}',
      '{',
      '[]',
      'null',
      '"x"',
      '{"state":',
    ),
    fc.string({ maxLength: 200 }),
    fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1')),
    fc.integer({ min: 1000, max: 40_000 }).map((d) => lazy(`[ × ${d}`, () => '['.repeat(d) + ']'.repeat(d))),
    fc.integer({ min: 1000, max: 20_000 }).map((d) => lazy(`{"a": × ${d}`, () => `${'{"a":'.repeat(d)}1${'}'.repeat(d)}`)),
    fc
      .integer({ min: 65_000, max: 200_000 })
      .map((n) => lazy(`reason of ${n}`, () => JSON.stringify({ state: 'drain', reason: 'x'.repeat(n) }))),
  );
  const request = fc.record({
    method: fc.constantFrom('GET', 'GET', 'POST', 'PATCH', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'FOO', 'get'),
    path: pathArb,
    auth: fc.oneof(
      { weight: 6, arbitrary: fc.constant(`Bearer ${TOKEN}`) },
      { weight: 1, arbitrary: fc.constantFrom('', 'Bearer', 'Bearer x', `bearer  ${TOKEN}  `, `Basic ${TOKEN}`, `Bearer ${TOKEN}\u00ff`) },
    ),
    contentType: fc.constantFrom(
      undefined,
      'application/json',
      'application/json; charset=utf-8',
      'application/json; charset=utf-16',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/octet-stream',
      ';;;',
      'application/json\u00e9',
    ),
    body,
    chunked: fc.boolean(),
  });

  function build(r: {
    method: string;
    path: string;
    auth: string;
    contentType: string | undefined;
    body: string | Lazy | undefined;
    chunked: boolean;
  }): Buffer {
    const body = text(r.body);
    const head = [`${r.method} ${r.path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: close'];
    if (r.auth) head.push(`Authorization: ${r.auth}`);
    if (r.contentType !== undefined) head.push(`Content-Type: ${r.contentType}`);
    let payload = Buffer.alloc(0);
    if (body !== undefined) {
      const b = Buffer.from(body, 'latin1');
      if (r.chunked) {
        head.push('Transfer-Encoding: chunked');
        payload = Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n0\r\n\r\n')]);
      } else {
        head.push(`Content-Length: ${b.length}`);
        payload = b;
      }
    }
    return Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), payload]);
  }

  it('random methods, paths, queries, auth headers, content types and bodies: never a 5xx, never a hang, never a crash', async () => {
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const status = await raw(build(r));
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        const what = `${r.method} ${r.path.slice(0, 200)} auth=${JSON.stringify(r.auth)} ct=${r.contentType} body=${typeof r.body === 'object' ? r.body.label : JSON.stringify(r.body?.slice(0, 200))}`;
        expect(status, `no response: ${what}`).toBeGreaterThanOrEqual(100);
        expect(status, what).toBeLessThan(500);
        // A known GET with the token is fine (2xx); everything unknown or malformed is a 4xx.
        if (!KNOWN.some((k) => r.path === k || r.path.startsWith(`${k}?`))) expect(status, what).toBeGreaterThanOrEqual(300);
      }),
      { numRuns: 500 },
    );
    console.log(`API fuzz statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
    expect(
      errors.filter((e) => e.msg === 'API request failed'),
      JSON.stringify(errors.slice(0, 3)),
    ).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  }, 120_000);

  it('a JSON body nested 3,500 levels deep is a 400, not a 500 (found by the fuzz: the validator overflowed its stack)', async () => {
    for (const chunked of [false, true]) {
      const body = `${'{"a": '.repeat(3500)}1${'}'.repeat(3500)}`;
      const status = await raw(
        build({
          method: 'POST',
          path: '/v1/access',
          auth: `Bearer ${TOKEN}`,
          contentType: 'application/json; charset=utf-8',
          body,
          chunked,
        }),
      );
      expect(status).toBe(400);
    }
    expect(errors.filter((e) => e.msg === 'API request failed')).toEqual([]);
  });

  it('HEAD on the event streams answers at once and holds no stream slot (found by the fuzz: it never answered)', async () => {
    const head = (p: string, accept = ''): Promise<number> =>
      raw(Buffer.from(`HEAD ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\n${accept}Connection: close\r\n\r\n`));
    const statuses = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? head('/v1/events/stream') : head('/v1/events', 'Accept: text/event-stream\r\n'))),
    );
    expect(new Set(statuses)).toEqual(new Set([200]));
    // 32 slots (sseMaxClients): had the HEADs kept theirs, this would be a 429.
    const res = await fetch(`${api.url}/v1/events/stream`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.status).toBe(200);
    await res.body?.cancel();
  });

  it('raw protocol garbage on the API port: a 4xx or a closed connection, and the API and the proxy still answer', async () => {
    const garbage = [
      Buffer.from('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03'), // a TLS ClientHello
      Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello'),
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nzz\r\n'),
      Buffer.from(`GET /v1/status HTTP/1.1\r\nHost: x\r\n${'X-A: b\r\n'.repeat(5000)}\r\n`),
      Buffer.from('GET /v1/status HTTP/9.9\r\n\r\n'),
      Buffer.from('\r\n\r\n\r\n'),
      Buffer.from('EHLO api.example\r\n'),
      Buffer.alloc(70_000, 0x41),
    ];
    for (const g of garbage) {
      const status = await raw(g);
      expect(status === 0 || (status >= 400 && status < 500), `${JSON.stringify(g.subarray(0, 40).toString('latin1'))} → ${status}`).toBe(
        true,
      );
    }
    const health = await fetch(`${api.url}/healthz`);
    expect(health.status).toBe(200);
    for (const name of ['s1', 's2']) {
      await fetch(`${api.url}/v1/backends/${name}`, {
        method: 'PATCH',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: '{"state":"up"}',
      });
    }
    const mail = await sendMail({ port: etd.port, tag: 'after-api-fuzz@fuzz.test' });
    expect(mail.delivered).toBe(true);
    expect(errors.filter((e) => e.msg === 'API request failed')).toEqual([]);
  }, 30_000);
});
