// Every line etd writes is a strict JSON object: no key twice (strict log pipelines reject such lines), one summary per session.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { type Sink, sendMail, startSink } from '../../bench/smtpPeers.js';
import { parseStrictJson } from '../../src/util/strictJson.js';
import { type RunningEtd, runEtd } from '../helpers/cli.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-lines-'));
let sink: Sink;
let etd: RunningEtd | undefined;

beforeAll(async () => {
  sink = await startSink({ name: 'lines.sink' });
});
afterAll(async () => {
  if (etd && etd.child.exitCode === null) etd.child.kill('SIGKILL');
  await sink?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('parseStrictJson', () => {
  it('refuses a repeated key at any depth, and accepts the same key in different objects', () => {
    expect(() => parseStrictJson('{"listener":"smtp","id":1,"listener":"smtp"}')).toThrow(/duplicate key "listener"/);
    expect(() => parseStrictJson('{"a":{"b":1,"b":2}}')).toThrow(/duplicate key "b"/);
    expect(() => parseStrictJson('{"a\\"x":1,"a\\"x":2}')).toThrow(/duplicate key/);
    expect(parseStrictJson('{"a":{"b":1},"c":{"b":2},"d":[{"b":1},{"b":2}],"e":"{\\"b\\":1,\\"b\\":2}"}')).toMatchObject({ c: { b: 2 } });
    expect(() => parseStrictJson('{"a":1')).toThrow(SyntaxError);
  });
});

describe('etd log lines', () => {
  it('start, listening, sessions of every verdict, a reload, a refused reload and the stop: every line strict JSON, listener once', async () => {
    const file = path.join(tmp, 'etd.yaml');
    const doc = (servers: unknown[]) => ({
      listeners: [{ name: 'smtp', address: '127.0.0.1', port: 0, mode: 'plain' }],
      detection: { window: '200ms', action: 'drop' },
      upstream: { source: 'self', retries: 0, health: { enabled: false }, servers },
      limits: { perClient: 0 },
      access: { deny: ['127.0.0.9/32'] },
      api: { enabled: true, address: '127.0.0.1', port: 0 },
      state: { path: ':memory:' },
      cache: { enabled: false },
      log: { level: 'info' },
    });
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const deadPort = (dead.address() as net.AddressInfo).port;
    dead.close();
    fs.writeFileSync(file, YAML.stringify(doc([{ name: 'sink', address: '127.0.0.1', port: sink.port }])));
    etd = runEtd(file);
    const listening = await etd.waitFor((l) => l.msg === 'listening', 15_000);
    const port = Number(
      String((listening.addresses as string[])[0])
        .split(':')
        .pop(),
    );
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);

    expect((await sendMail({ port, tag: 'polite@lines.test', timeoutMs: 10_000 })).delivered).toBe(true); // passed
    await new Promise<void>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' }, () => s.write('EHLO bot\r\n')); // early_talker
      s.on('error', () => undefined);
      s.on('close', () => resolve());
    });
    await new Promise<void>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.9' }); // denied
      s.on('error', () => undefined);
      s.on('close', () => resolve());
      s.resume();
    });
    fs.writeFileSync(file, YAML.stringify(doc([{ name: 'dead', address: '127.0.0.1', port: deadPort }])));
    etd.child.kill('SIGHUP');
    await etd.waitFor((l) => l.msg === 'configuration reloaded', 10_000);
    await new Promise<void>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' }); // no_server
      s.on('error', () => undefined);
      s.on('close', () => resolve());
      s.resume();
    });
    fs.writeFileSync(file, 'listeners: [');
    etd.child.kill('SIGHUP');
    await etd.waitFor((l) => String(l.msg).includes('reload refused'), 10_000);
    await etd.waitFor(() => etd!.lines.filter((l) => l.msg === 'session').length >= 4, 10_000);
    etd.child.kill('SIGTERM');
    expect(await etd.exited).toBe(0);

    expect(etd.badLines).toEqual([]);
    const sessions = etd.lines.filter((l) => l.msg === 'session');
    expect(sessions.map((l) => l.verdict).sort()).toEqual(['denied', 'early_talker', 'no_server', 'passed']);
    for (const l of sessions) expect(l.listener).toBe('smtp');
    expect(etd.lines.filter((l) => l.msg === 'management API listening')).toHaveLength(1);
    // etd's 421 to the client is counted in its summary.
    expect(sessions.find((l) => l.verdict === 'no_server')!.bytesToClient).toBe(
      '421 4.3.2 Service not available, try again later\r\n'.length,
    );
    expect(sessions.find((l) => l.verdict === 'denied')!.bytesToClient).toBeGreaterThan(0);
  }, 60_000);
});
