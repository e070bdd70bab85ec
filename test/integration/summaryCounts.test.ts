// Summary lines of connections etd ends itself: a unique session id each (also when answered at accept), and every byte sent to the client counted (the teaser too).

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import type { LogLine } from '../helpers/cli.js';
import { type RunningEtd, runEtd } from '../helpers/cli.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-summary-'));
let etd: RunningEtd | undefined;

afterAll(() => {
  if (etd && etd.child.exitCode === null) etd.child.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

const TEASER = '220-summary.test ESMTP';

/** Connects from `from`; with `talk`, waits for the teaser and then talks before the greeting. Resolves at close. */
function client(port: number, from: string, talk: boolean): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const s = net.connect({ port, host: '127.0.0.1', localAddress: from });
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (talk && got.includes('\r\n')) s.write('EHLO bot\r\n');
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve(got));
  });
}

let sessions: LogLine[] = [];

describe('summary lines', () => {
  beforeAll(async () => {
    const file = path.join(tmp, 'etd.yaml');
    fs.writeFileSync(
      file,
      YAML.stringify({
        listeners: [{ name: 'smtp', address: '127.0.0.1', port: 0, mode: 'plain' }],
        // A long window: the client talks only after the teaser arrived, well inside it.
        detection: { window: '30s', action: 'drop', teaser: TEASER },
        upstream: { source: 'self', retries: 0, health: { enabled: false }, servers: [{ name: 'none', address: '127.0.0.1', port: 9 }] },
        limits: { perClient: 0 },
        access: { deny: ['127.0.0.9/32'] },
        api: { enabled: false },
        state: { path: ':memory:' },
        cache: { enabled: true, scope: 'ip' },
        log: { level: 'info' },
      }),
    );
    etd = runEtd(file);
    const listening = await etd.waitFor((l) => l.msg === 'listening', 15_000);
    const port = Number(
      String((listening.addresses as string[])[0])
        .split(':')
        .pop(),
    );
    await etd.waitFor((l) => l.msg === 'etd started', 15_000);

    // The early talker: sent the teaser, then talks; its address lands in the deny cache.
    expect(await client(port, '127.0.0.5', true)).toBe(`${TEASER}\r\n`);
    await etd.waitFor((l) => l.msg === 'session' && l.verdict === 'early_talker');
    // Turned away at accept: twice by the deny cache, twice by access.deny.
    await client(port, '127.0.0.5', false);
    await client(port, '127.0.0.5', false);
    await client(port, '127.0.0.9', false);
    await client(port, '127.0.0.9', false);
    await etd.waitFor(() => etd!.lines.filter((l) => l.msg === 'session').length >= 5);
    etd.child.kill('SIGTERM');
    expect(await etd.exited).toBe(0);

    sessions = etd.lines.filter((l) => l.msg === 'session');
  }, 60_000);

  it('connections answered at accept (access deny, deny cache) get unique ids', () => {
    expect(sessions.map((l) => l.verdict)).toEqual(['early_talker', 'denied', 'denied', 'denied', 'denied']);
    const ids = sessions.map((l) => l.id as number);
    expect(ids.every((id) => Number.isInteger(id) && id > 0)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('an early talker that was sent the teaser counts its bytes in bytesToClient', () => {
    expect(sessions[0]).toMatchObject({ verdict: 'early_talker', bytesToClient: TEASER.length + 2 });
  });
});
