// Agent faults: a SIGHUP storm (100 reloads in 10 s) under load drops no session; a full disk under state.path is a
// logged warning and etd keeps proxying (tmpfs, root only). The SIGKILL restart is in test/netns/agentFaults.test.ts.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { type MailResult, type Sink, sendMail, startSink } from '../../bench/smtpPeers.js';
import { App } from '../../src/app.js';
import { validateConfig } from '../../src/config/load.js';
import { type RunningEtd, runEtd } from '../helpers/cli.js';
import { testWorkers } from '../helpers/etd.js';
import { fdCount, MB, rssBytes } from '../helpers/leak.js';
import { skipPrivileged } from '../helpers/privileged.js';
import { sleep, waitFor } from '../helpers/wait.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-agent-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('SIGHUP storm under load', () => {
  let a: Sink;
  let b: Sink;
  let etd: RunningEtd | undefined;

  beforeAll(async () => {
    a = await startSink({ name: 'a.sink' });
    b = await startSink({ name: 'b.sink' });
  });
  afterAll(async () => {
    if (etd && etd.child.exitCode === null) {
      etd.child.kill('SIGKILL');
      await etd.exited;
    }
    await a?.close();
    await b?.close();
  });

  /** Two configs that differ in the window, the balancer and the server list; the listener stays the same. */
  function doc(i: number): Record<string, unknown> {
    const servers = [
      { name: 'a', address: '127.0.0.1', port: a.port },
      ...(i % 2 ? [] : [{ name: 'b', address: '127.0.0.1', port: b.port }]),
    ];
    return {
      listeners: [{ name: 'smtp', address: '127.0.0.1', port: 0, mode: 'plain' }],
      detection: { window: i % 2 ? '200ms' : '250ms', action: 'drop' },
      upstream: { source: 'self', balance: i % 3 ? 'roundrobin' : 'leastconn', retries: 1, health: { enabled: false }, servers },
      limits: { perClient: 0 },
      api: { enabled: false },
      state: { path: ':memory:' },
      cache: { enabled: false },
      log: { level: 'info' },
    };
  }

  it('100 reloads in 10 s while 20 clients send mail: every message accepted is at a backend, no session fails, no reload refused', async () => {
    const file = path.join(tmp, 'storm.yaml');
    // Written by rename, so etd never reads a half-written file.
    const write = (i: number): void => {
      fs.writeFileSync(`${file}.new`, YAML.stringify(doc(i)));
      fs.renameSync(`${file}.new`, file);
    };
    write(0);
    etd = runEtd(file);
    const listening = await etd.waitFor((l) => l.msg === 'listening', 15_000);
    const port = Number(
      String((listening.addresses as string[])[0])
        .split(':')
        .pop(),
    );
    await etd.waitFor((l) => l.msg === 'etd started');
    const pid = etd.child.pid!;
    const fds0 = fdCount(pid);
    const rss0 = rssBytes(pid);

    let storming = true;
    const results: MailResult[] = [];
    const tags: string[] = [];
    let n = 0;
    const clients = Array.from({ length: 20 }, async (_, c) => {
      while (storming) {
        const tag = `storm-${c}-${++n}@client.test`;
        const r = await sendMail({ port, tag, localAddress: `127.0.80.${c + 1}`, timeoutMs: 15_000 });
        results.push(r);
        if (r.delivered) tags.push(tag);
      }
    });
    const t0 = Date.now();
    for (let i = 1; i <= 100; i++) {
      write(i);
      etd.child.kill('SIGHUP');
      await sleep(100);
    }
    const stormMs = Date.now() - t0;
    await waitFor(() => etd!.lines.filter((l) => l.msg === 'configuration reloaded').length >= 100, {
      what: () => `100 reloads (${etd!.lines.filter((l) => l.msg === 'configuration reloaded').length})`,
      timeout: 20_000,
    }).catch(() => undefined);
    storming = false;
    await Promise.all(clients);

    const reloaded = etd.lines.filter((l) => l.msg === 'configuration reloaded').length;
    const refused = etd.lines.filter((l) => /reload refused/.test(l.msg));
    const failed = results.filter((r) => !r.delivered);
    const received = new Set([...a.messages, ...b.messages]);
    console.log(
      `SIGHUP storm: ${reloaded} reloads in ${stormMs} ms, ${results.length} sessions, ${failed.length} failed, ` +
        `a=${a.messages.length} b=${b.messages.length}; etd fds ${fds0} → ${fdCount(pid)}, rss ${(rss0 / MB).toFixed(0)} → ${(rssBytes(pid) / MB).toFixed(0)} MB`,
    );
    expect(refused, JSON.stringify(refused)).toEqual([]);
    // Signals sent faster than the handler runs may merge; nearly all must have been applied.
    expect(reloaded).toBeGreaterThanOrEqual(95);
    expect(stormMs).toBeLessThan(15_000);
    expect(results.length).toBeGreaterThan(200);
    expect(failed, JSON.stringify(failed.slice(0, 3))).toEqual([]);
    expect(tags.filter((t) => !received.has(t))).toEqual([]);
    expect(received.size).toBe(tags.length);
    const sessions = etd.lines.filter((l) => l.msg === 'session');
    await waitFor(() => etd!.lines.filter((l) => l.msg === 'session').length >= results.length, { what: 'every session summary' });
    expect(sessions.filter((s) => s.verdict !== 'passed')).toEqual([]);

    etd.child.kill('SIGTERM');
    expect(await etd.exited).toBe(0);
  }, 90_000);
});

const skipDisk = skipPrivileged('full disk under state.path (tmpfs mount)');

describe.skipIf(skipDisk)('a full disk under state.path', () => {
  const dir = path.join(tmp, 'state');
  let mounted = false;
  let sink: Sink;
  const apps: App[] = [];
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });

  beforeAll(async () => {
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', dir]);
    mounted = true;
    sink = await startSink({ name: 'disk.sink' });
  });

  afterAll(async () => {
    for (const app of apps) await app.stop(200).catch(() => undefined);
    await sink?.close();
    if (mounted) {
      try {
        execFileSync('umount', [dir]);
      } catch {
        execFileSync('umount', ['-l', dir]);
      }
    }
  });

  async function start(statePath: string): Promise<{ app: App; port: number }> {
    const config = validateConfig({
      workers: testWorkers(),
      listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
      detection: { window: '200ms', action: 'drop' },
      upstream: { retries: 0, health: { enabled: false }, servers: [{ name: 'sink', address: '127.0.0.1', port: sink.port }] },
      limits: { perClient: 0 },
      api: { enabled: false },
      cache: { enabled: true },
      state: { path: statePath },
      log: { level: 'info' },
    });
    const app = new App(config, log);
    apps.push(app);
    await app.start();
    return { app, port: app.listenerList()[0]!.addresses()[0]!.port };
  }

  function earlyTalker(port: number, localAddress: string): Promise<number> {
    return new Promise((resolve) => {
      let got = 0;
      const s = net.connect({ port, host: '127.0.0.1', localAddress }, () => s.write('EHLO bot.example\r\n'));
      s.on('data', (d: Buffer) => (got += d.length));
      s.on('error', () => undefined);
      s.on('close', () => resolve(got));
    });
  }

  /** Files under `prefix` this process holds open. */
  function openFilesUnder(prefix: string): string[] {
    return fs
      .readdirSync('/proc/self/fd')
      .map((f) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${f}`);
        } catch {
          return '';
        }
      })
      .filter((l) => l.startsWith(prefix));
  }

  /** Fills the filesystem; returns the filler's path. Bounded: the tmpfs is 256 KiB. */
  function fill(): string {
    const filler = path.join(dir, 'filler');
    const fd = fs.openSync(filler, 'w');
    const chunk = Buffer.alloc(4096, 0x55);
    try {
      for (let i = 0; i < 1000; i++) fs.writeSync(fd, chunk);
      throw new Error('the tmpfs did not fill up');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
    } finally {
      fs.closeSync(fd);
    }
    return filler;
  }

  it('writes that fail are one logged warning; sessions pass, the cache works from memory, and writes resume when space returns', async () => {
    const { app, port } = await start(path.join(dir, 'state.db'));
    for (let i = 1; i <= 5; i++)
      expect((await sendMail({ port, tag: `before-${i}@disk.test`, localAddress: `127.0.90.${i}` })).delivered).toBe(true);
    await waitFor(
      () => {
        app.store.flush();
        return app.cache.size === 5;
      },
      { what: 'the first cache writes' },
    );
    expect(app.store.healthy).toBe(true);

    const filler = fill();
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => sendMail({ port, tag: `full-${i}@disk.test`, localAddress: `127.0.91.${i + 1}` })),
    );
    expect(
      results.filter((r) => !r.delivered),
      'sessions while the disk is full',
    ).toEqual([]);
    const early = await Promise.all(Array.from({ length: 5 }, (_, i) => earlyTalker(port, `127.0.92.${i + 1}`)));
    expect(early).toEqual([0, 0, 0, 0, 0]);
    await waitFor(() => lines.some((l) => /state store .* failed; etd keeps proxying from memory/.test(String(l.msg))), {
      what: 'the write-failure warning',
      timeout: 5000,
    });
    expect(app.store.healthy).toBe(false);
    const warnings = lines.filter((l) => /state store .* failed/.test(String(l.msg)));
    expect(warnings.length, 'rate-limited: one warning, not one per write').toBe(1);
    expect(String(warnings[0]!.err)).toMatch(/SQLITE_FULL|full|ENOSPC/i);
    expect(warnings.every((w) => !String(w.err).includes('\n    at '))).toBe(true);
    // The cache still works from memory: a client that passed skips the window, an early talker is refused.
    expect(app.cache.lookup('127.0.91.1')).toBe('pass');
    expect(app.cache.lookup('127.0.92.1')).toBe('deny');
    const again = await sendMail({ port, tag: 'again@disk.test', localAddress: '127.0.91.1' });
    expect(again.delivered).toBe(true);
    expect(sink.messages.filter((m) => m.endsWith('@disk.test'))).toHaveLength(36);

    fs.rmSync(filler);
    expect((await sendMail({ port, tag: 'after@disk.test', localAddress: '127.0.93.1' })).delivered).toBe(true);
    await waitFor(
      () => {
        app.store.flush();
        return app.store.healthy;
      },
      { what: 'writes to work again' },
    );
    expect(lines.some((l) => l.msg === 'state store writes work again')).toBe(true);
  }, 60_000);

  it('starting with the disk already full: a warning, memory-only state, and etd serves', async () => {
    const filler = fill();
    try {
      const { app, port } = await start(path.join(dir, 'fresh', 'state.db'));
      expect(app.store.healthy).toBe(false);
      expect(lines.some((l) => /state store unavailable/.test(String(l.msg)) || /failed; etd keeps proxying/.test(String(l.msg)))).toBe(
        true,
      );
      expect((await sendMail({ port, tag: 'fresh@disk.test', localAddress: '127.0.94.1' })).delivered).toBe(true);
      // Regression: the half-created database (its CREATE failed) kept its file open, and the mount busy.
      expect(openFilesUnder(path.join(dir, 'fresh'))).toEqual([]);
    } finally {
      fs.rmSync(filler, { force: true });
    }
  }, 30_000);
});
