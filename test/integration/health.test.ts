// Health checks against scripted servers (healthy, 421 banner, garbage, silent, refused, flapping) and the pool's behaviour through a real in-process etd.

import net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthChecker } from '../../src/backend/health.js';
import { Pool, type StateChange } from '../../src/backend/pool.js';
import { type CheckFailure, type CheckOptions, type CheckResult, type CheckTarget, smtpCheck } from '../../src/backend/smtpCheck.js';
import { validateConfig } from '../../src/config/load.js';
import type { HealthConfig, ServerConfig } from '../../src/config/schema.js';
import { startEtdForTest, type TestEtd } from '../helpers/etd.js';
import { type Behaviour, closedPort, type ScriptedServer, startScripted } from '../helpers/scriptedSmtp.js';
import { startBackend, type TestBackend } from '../helpers/smtpBackend.js';
import { sleep, waitFor } from '../helpers/wait.js';

const INTERVAL = 100;
const TIMEOUT = 80;
const RISE = 2;
const FALL = 3;
const HEALTH: HealthConfig = {
  enabled: true,
  intervalMs: INTERVAL,
  rise: RISE,
  fall: FALL,
  timeoutMs: TIMEOUT,
  helo: 'etd.test',
  command: 'HELO',
};
/** The same, as the YAML document says it. */
const HEALTH_DOC = { interval: `${INTERVAL}ms`, timeout: `${TIMEOUT}ms`, rise: RISE, fall: FALL, helo: 'etd.test' };
const silentLog = pino({ level: process.env.ETD_TEST_LOG ?? 'silent' });

// Everything a test starts is registered here and torn down after it, also when it fails.
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function scripted(name: string, behaviour: ScriptedServer['behaviour'] = 'healthy'): Promise<ScriptedServer> {
  const s = await startScripted(name, behaviour);
  cleanups.push(() => s.kill());
  return s;
}
async function etdWith(doc: Record<string, unknown>): Promise<TestEtd> {
  const etd = await startEtdForTest(doc);
  cleanups.push(() => etd.stop(300));
  return etd;
}
async function realBackend(name: string): Promise<TestBackend> {
  const b = await startBackend({ name });
  cleanups.push(() => b.close());
  return b;
}

const serverConfig = (name: string, port: number, extra: Partial<ServerConfig> = {}): ServerConfig => ({
  name,
  address: '127.0.0.1',
  port,
  weight: 1,
  backup: false,
  check: true,
  ...extra,
});

// ---------------------------------------------------------------------------------------------
// One probe

describe('smtpCheck: one probe', () => {
  const opts: CheckOptions = { timeoutMs: TIMEOUT, helo: 'etd.test', command: 'HELO' };
  const probe = (port: number, o: Partial<CheckOptions> = {}) => smtpCheck({ address: '127.0.0.1', port }, { ...opts, ...o });

  it('passes a healthy server: HELO, then QUIT', async () => {
    const s = await scripted('healthy.test');
    const r = await probe(s.port);
    expect(r.ok).toBe(true);
    await waitFor(() => s.open.size === 0, { what: 'the check connection to close', timeout: 1000 });
    expect(s.connections.map((c) => c.lines)).toEqual([['HELO etd.test', 'QUIT']]);
  });

  it('passes EHLO with multi-line banner and reply cut into 1–3 byte segments', async () => {
    const s = await scripted('split.test', 'split');
    const r = await probe(s.port, { command: 'EHLO', timeoutMs: 1000 });
    expect(r).toMatchObject({ ok: true });
    await waitFor(() => s.open.size === 0, { what: 'the check connection to close', timeout: 1000 });
    expect(s.connections[0]!.lines).toEqual(['EHLO etd.test', 'QUIT']);
  });

  it('passes real SMTP software (the smtp-server package) with HELO and with EHLO', async () => {
    const b = await realBackend('real.test');
    // smtp-server greets after ~100 ms here, so this probe gets a production-like timeout.
    expect(await probe(b.port, { timeoutMs: 2000 })).toMatchObject({ ok: true });
    expect(await probe(b.port, { timeoutMs: 2000, command: 'EHLO' })).toMatchObject({ ok: true });
    expect(b.connections).toHaveLength(2);
  });

  const failures: Array<[string, Behaviour | 'refused', CheckFailure, string | RegExp]> = [
    ['a 421 banner', 'banner421', 'bad_banner', '421 Try again later'],
    ['non-SMTP garbage', 'garbage', 'garbage', 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3'],
    ['a server that accepts and stays silent', 'silent', 'timeout', `no 220 banner within ${TIMEOUT}ms`],
    ['a refused connection', 'refused', 'refused', /^ECONNREFUSED: /],
    ['a 550 reply to HELO', 'no250', 'no_250', '550 5.7.1 Go away'],
    ['a server that hangs up at once', 'hangup', 'closed', /.*/],
  ];
  for (const [what, behaviour, reason, detail] of failures) {
    it(`classifies ${what} as ${reason}`, async () => {
      const port = behaviour === 'refused' ? await closedPort() : (await scripted(`${behaviour}.test`, behaviour)).port;
      const r = await probe(port);
      expect(r.ok).toBe(false);
      if (r.ok) return;
      // A hang-up may reach us as FIN or as RST, depending on timing.
      if (behaviour === 'hangup') expect(['closed', 'reset']).toContain(r.reason);
      else expect(r.reason).toBe(reason);
      if (typeof detail === 'string') expect(r.detail).toBe(detail);
      else expect(r.detail).toMatch(detail);
      expect(r.detail.length).toBeLessThanOrEqual(100);
      if (reason === 'timeout') expect(r.ms).toBeGreaterThanOrEqual(TIMEOUT - 2);
      else expect(r.ms).toBeLessThan(TIMEOUT);
    });
  }

  it('times out a server that sends half a banner, saying how much came', async () => {
    const half = net.createServer((c) => c.write('220-almost\r\n220 the'));
    await new Promise<void>((r) => half.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => half.close(() => r())));
    const r = await probe((half.address() as net.AddressInfo).port);
    expect(r).toMatchObject({ ok: false, reason: 'timeout' });
    if (!r.ok) expect(r.detail).toMatch(/220 banner within 80ms \(\d+ bytes of a partial reply\)/);
  });

  it('is cancelled by its abort signal', async () => {
    const s = await scripted('silent.test', 'silent');
    const ac = new AbortController();
    const pending = probe(s.port, { timeoutMs: 5000, signal: ac.signal });
    await sleep(30);
    ac.abort();
    const r = await pending;
    expect(r).toMatchObject({ ok: false, reason: 'aborted' });
    expect(r.ms).toBeLessThan(1000);
  });

  it('leaves no socket or timer behind, whatever the outcome', async () => {
    const kinds: Behaviour[] = ['healthy', 'split', 'banner421', 'garbage', 'silent', 'no250', 'hangup'];
    const servers = await Promise.all(kinds.map((k) => scripted(`${k}.test`, k)));
    const refused = await closedPort();
    const count = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length;
    const before = count();
    for (let round = 0; round < 3; round++) {
      await Promise.all([...servers.map((s) => probe(s.port, { command: round % 2 ? 'EHLO' : 'HELO' })), probe(refused)]);
    }
    // The QUIT linger ends when the server closes, and at the latest at the check's deadline.
    await waitFor(() => count() <= before && servers.every((s) => s.open.size === 0), {
      what: 'sockets and timers to be released',
      timeout: TIMEOUT + 1000,
    });
  });
});

// ---------------------------------------------------------------------------------------------
// The checker on its own: exact transition sequences

interface Watched {
  pool: Pool;
  checker: HealthChecker;
  results: CheckResult[];
  /** Pool state changes, each with the number of check results in at that moment. */
  events: Array<StateChange & { atCheck: number; at: number }>;
}

function watch(
  servers: ServerConfig[],
  opts: { health?: Partial<HealthConfig>; passiveFall?: number; beforeResult?: (n: number) => void } = {},
): Watched {
  const pool = new Pool(servers, 'roundrobin', { passiveFall: opts.passiveFall ?? 3 });
  const results: CheckResult[] = [];
  const events: Watched['events'] = [];
  pool.onChange((c) => events.push({ ...c, atCheck: results.length, at: performance.now() }));
  const probe = async (t: CheckTarget, o: CheckOptions): Promise<CheckResult> => {
    const r = await smtpCheck(t, o);
    opts.beforeResult?.(results.length + 1);
    results.push(r);
    return r;
  };
  // random: 0 → the first check runs at once; the sequence is then one check per interval.
  const checker = new HealthChecker(pool, { ...HEALTH, ...opts.health }, silentLog, { probe, random: () => 0 });
  cleanups.push(() => checker.stop());
  checker.start();
  return { pool, checker, results, events };
}

const brief = (w: Watched) => w.events.map((e) => ({ server: e.server, from: e.from, to: e.to, atCheck: e.atCheck }));

describe('HealthChecker: rise and fall, exactly', () => {
  it('a healthy server stays up and is checked once per interval', async () => {
    const s = await scripted('healthy.test');
    const started = performance.now();
    const w = watch([serverConfig('s', s.port)]);
    await waitFor(() => w.results.length >= 6, { what: '6 checks', timeout: 2000, interval: 5 }); // polled finely: the elapsed time is checked
    const elapsed = performance.now() - started;
    expect(w.results.every((r) => r.ok)).toBe(true);
    expect(w.events).toEqual([]);
    expect(w.pool.get('s')!.state).toBe('up');
    // 6 checks, the first at once: 5 intervals (start to start), give or take the timers.
    expect(elapsed).toBeGreaterThanOrEqual(5 * INTERVAL - 5);
    expect(elapsed).toBeLessThan(5 * INTERVAL + 250);
    expect(w.checker.status('s')).toMatchObject({
      checked: true,
      healthy: true,
      okStreak: 6,
      failStreak: 0,
      checks: 6,
      lastFailure: undefined,
    });
  });

  const bad: Array<[string, Behaviour | 'refused', CheckFailure, string]> = [
    ['a 421 Try again later banner', 'banner421', 'bad_banner', '421 Try again later'],
    ['non-SMTP garbage', 'garbage', 'garbage', 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3'],
    ['a server that accepts and stays silent', 'silent', 'timeout', `no 220 banner within ${TIMEOUT}ms`],
    ['a refused connection', 'refused', 'refused', 'ECONNREFUSED'],
  ];
  for (const [what, behaviour, reason, detail] of bad) {
    it(`${what}: down on exactly the ${FALL}rd failed check, reason ${reason}, and stays down`, async () => {
      const port = behaviour === 'refused' ? await closedPort() : (await scripted(`${behaviour}.test`, behaviour)).port;
      const w = watch([serverConfig('s', port)]);
      await waitFor(() => w.results.length >= FALL + 3, { what: `${FALL + 3} checks`, timeout: 3000 });
      expect(w.results.every((r) => !r.ok && r.reason === reason)).toBe(true);
      expect(brief(w)).toEqual([{ server: 's', from: 'up', to: 'down', atCheck: FALL }]);
      const server = w.pool.get('s')!;
      const esc = detail.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      expect(w.events[0]!.reason).toMatch(new RegExp(`^${reason}: .*${esc}.* \\(${FALL} consecutive failed checks\\)$`));
      expect(server.lastReason).toBe(w.events[0]!.reason);
      expect(server.state).toBe('down');
      expect(w.checker.status('s')!.lastFailure).toMatchObject({ ok: false, reason });
      expect(w.pool.pick(undefined)).toBeUndefined();
    });
  }

  it('a flapping server: transitions follow rise and fall exactly', async () => {
    // Per check: o = healthy, x = 421 banner. Up → down on check 7 (3rd x in a row), up on check 9 (2nd o in a row).
    const pattern = 'oxxoxxxooxoo';
    const s = await scripted('flap.test', (i) => (pattern[i] === 'x' ? 'banner421' : 'healthy'));
    const w = watch([serverConfig('s', s.port)]);
    await waitFor(() => w.results.length >= pattern.length + 2, { what: 'the pattern', timeout: 4000 });
    expect(
      w.results
        .slice(0, pattern.length)
        .map((r) => (r.ok ? 'o' : 'x'))
        .join(''),
    ).toBe(pattern);
    expect(brief(w)).toEqual([
      { server: 's', from: 'up', to: 'down', atCheck: 7 },
      { server: 's', from: 'down', to: 'up', atCheck: 9 },
    ]);
    expect(w.events[0]!.reason).toMatch(/^bad_banner: 421 Try again later \(3 consecutive failed checks\)$/);
    expect(w.events[1]!.reason).toBe('2 consecutive successful checks');
    // The transitions happened at the checks' pace: 2 intervals apart.
    expect(w.events[1]!.at - w.events[0]!.at).toBeGreaterThanOrEqual(2 * INTERVAL - 10);
  });

  it('a server alternating healthy/unhealthy on every connection never crosses rise 2 / fall 2', async () => {
    const s = await scripted('alt.test', (i) => (i % 2 ? 'garbage' : 'healthy'));
    const w = watch([serverConfig('s', s.port)], { health: { fall: 2 } });
    await waitFor(() => w.results.length >= 10, { what: '10 checks', timeout: 3000 });
    expect(
      w.results
        .slice(0, 10)
        .map((r) => (r.ok ? 'o' : 'x'))
        .join(''),
    ).toBe('oxoxoxoxox');
    expect(w.events).toEqual([]);
  });

  it('a server marked down passively comes back only through rise checks begun after that', async () => {
    const s = await scripted('passive.test');
    const w = watch([serverConfig('s', s.port)]);
    const server = w.pool.get('s')!;
    await waitFor(() => w.results.length >= 2, { what: '2 checks', timeout: 1000 });
    // Between two checks: three failed session connects (passiveFall 3) take it down.
    for (let i = 0; i < 3; i++) w.pool.connectFailed(server, 'refused');
    const downAt = w.results.length;
    expect(brief(w)).toEqual([{ server: 's', from: 'up', to: 'down', atCheck: downAt }]);
    expect(w.events[0]!.reason).toBe('3 consecutive connect failures (last: refused)');
    await waitFor(() => w.events.length >= 2, { what: 'the server to come back', timeout: 2000 });
    expect(brief(w)[1]).toEqual({ server: 's', from: 'down', to: 'up', atCheck: downAt + RISE });
    expect(server.consecutiveConnectFailures).toBe(0);
  });

  it('a check in flight when passive detection marks the server down does not count towards rise', async () => {
    const s = await scripted('passive2.test');
    let pool: Pool | undefined;
    // Passive detection strikes while check 3 runs: its (successful) result is discarded.
    const w = watch([serverConfig('s', s.port)], {
      beforeResult: (n) => {
        if (n === 3) for (let i = 0; i < 3; i++) pool!.connectFailed(pool!.get('s')!, 'timeout');
      },
    });
    pool = w.pool;
    await waitFor(() => w.events.length >= 2, { what: 'down and up again', timeout: 3000 });
    expect(brief(w)).toEqual([
      { server: 's', from: 'up', to: 'down', atCheck: 2 },
      { server: 's', from: 'down', to: 'up', atCheck: 5 },
    ]);
  });

  it('check: false servers are never probed; a passive down lifts after about rise × interval', async () => {
    const s = await scripted('unchecked.test');
    const w = watch([serverConfig('s', s.port, { check: false })]);
    await sleep(3 * INTERVAL);
    expect(w.results).toEqual([]);
    expect(s.connections).toEqual([]);
    expect(w.checker.status('s')).toMatchObject({ checked: false, healthy: true });
    for (let i = 0; i < 3; i++) w.pool.connectFailed(w.pool.get('s')!, 'refused');
    expect(w.pool.get('s')!.state).toBe('down');
    const downAt = performance.now();
    await waitFor(() => w.events.length >= 2, { what: 'the hold-off to end', timeout: 2000 });
    const heldMs = w.events[1]!.at - downAt;
    expect(w.events[1]).toMatchObject({ from: 'down', to: 'up' });
    expect(w.events[1]!.reason).toMatch(/^not health-checked: passive hold-off/);
    expect(heldMs).toBeGreaterThanOrEqual(RISE * INTERVAL - 10);
    expect(heldMs).toBeLessThan((RISE + 1) * INTERVAL + 100);
    expect(s.connections).toEqual([]);
  });

  it('health.enabled: false probes nothing', async () => {
    const s = await scripted('disabled.test');
    const w = watch([serverConfig('s', s.port)], { health: { enabled: false } });
    await sleep(3 * INTERVAL);
    expect(w.results).toEqual([]);
    expect(s.connections).toEqual([]);
    expect(w.pool.get('s')!.state).toBe('up');
  });

  it('update(): new servers get checked, removed ones stop, check: false brings a checked-down server up', async () => {
    const a = await scripted('a.test');
    const b = await scripted('b.test', 'banner421');
    const c = await scripted('c.test');
    const w = watch([serverConfig('a', a.port), serverConfig('b', b.port)]);
    await waitFor(() => w.pool.get('b')!.state === 'down', { what: 'b down', timeout: 2000 });
    // Reload: a removed, c added, b no longer checked.
    w.pool.update([serverConfig('b', b.port, { check: false }), serverConfig('c', c.port)], 'roundrobin');
    w.checker.update(HEALTH);
    expect(w.pool.get('b')!.state).toBe('up');
    expect(w.events.at(-1)).toMatchObject({ server: 'b', from: 'down', to: 'up', reason: 'health checks disabled: considered up' });
    // A check already in flight at the update is aborted, but its connect may still reach the
    // server a moment later (CI flake: a.connections grew by one). Count after those land.
    await sleep(INTERVAL / 4);
    const aChecks = a.connections.length;
    const bChecks = b.connections.length;
    await waitFor(() => c.connections.length >= 3, { what: 'c to be checked', timeout: 2000 });
    await sleep(INTERVAL);
    expect(a.connections.length).toBe(aChecks);
    expect(b.connections.length).toBe(bChecks);
    expect(w.checker.status('a')).toBeUndefined();
    expect(w.checker.status('c')).toMatchObject({ checked: true, healthy: true });
  });

  it('stop() ends all checks, including one in flight', async () => {
    const s = await scripted('silent.test', 'silent');
    const w = watch([serverConfig('s', s.port)], { health: { timeoutMs: 5000, intervalMs: 6000 } });
    await waitFor(() => s.open.size === 1, { what: 'the check to connect', timeout: 1000 });
    w.checker.stop();
    await waitFor(() => s.open.size === 0, { what: 'the check connection to be closed', timeout: 1000 });
    const n = s.connections.length;
    await sleep(200);
    expect(s.connections.length).toBe(n);
  });
});

// ---------------------------------------------------------------------------------------------
// Through a real etd: where sessions go

interface SessionResult {
  readonly start: number;
  readonly banner: string;
  readonly localPort: number;
  readonly ok: boolean;
}

interface HeldSession {
  readonly banner: string;
  readonly localPort: number;
  readonly socket: net.Socket;
  /** Everything received after the banner, once the connection closed. */
  readonly closed: Promise<string>;
}

const openSockets = new Set<net.Socket>();
afterEach(() => {
  for (const s of openSockets) s.destroy();
  openSockets.clear();
});

/** Connects through etd and waits for the complete greeting (or the close); bounded. */
function openSession(port: number, timeoutMs = 3000): Promise<HeldSession> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    openSockets.add(socket);
    let text = '';
    let greeted = false;
    let after = '';
    let localPort = 0;
    let onClosed: (s: string) => void = () => undefined;
    const closed = new Promise<string>((r) => (onClosed = r));
    const greet = () => {
      greeted = true;
      clearTimeout(timer);
      resolve({ banner: text.split(/\r?\n/)[0] ?? '', localPort, socket, closed });
    };
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on('connect', () => (localPort = socket.localPort ?? 0));
    socket.on('data', (c: Buffer) => {
      if (greeted) {
        after += c.toString('latin1');
        return;
      }
      text += c.toString('latin1');
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\n/.exec(text);
      if (m) {
        after = text.slice(m[0].length);
        greet();
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      openSockets.delete(socket);
      if (!greeted) greet();
      onClosed(after);
    });
  });
}

/** Sends QUIT on a held session and waits for the close; bounded. */
async function quit(h: HeldSession, timeoutMs = 2000): Promise<string> {
  h.socket.write('QUIT\r\n');
  const timer = setTimeout(() => h.socket.destroy(), timeoutMs);
  const rest = await h.closed;
  clearTimeout(timer);
  return rest;
}

/** One whole client session: greeting, QUIT. ok = a 220 greeting and a 221 to QUIT. */
async function session(port: number): Promise<SessionResult> {
  const start = performance.now();
  const h = await openSession(port);
  if (!h.banner.startsWith('220')) {
    await h.closed;
    return { start, banner: h.banner, localPort: h.localPort, ok: false };
  }
  const rest = await quit(h);
  return { start, banner: h.banner, localPort: h.localPort, ok: rest.startsWith('221') };
}

function recordChanges(etd: TestEtd): Array<StateChange & { at: number }> {
  const out: Array<StateChange & { at: number }> = [];
  etd.app.pool.onChange((c) => out.push({ ...c, at: performance.now() }));
  return out;
}

describe('through etd: sessions never go to a server that is down', () => {
  type Fault = 'refused' | 'banner421' | 'garbage' | 'silent' | 'killed';
  const faults: Array<[Fault, CheckFailure]> = [
    ['refused', 'refused'],
    ['banner421', 'bad_banner'],
    ['garbage', 'garbage'],
    ['silent', 'timeout'],
    ['killed', 'refused'],
  ];
  // The check that takes a server down is at most `fall` intervals after the fault, plus its own duration.
  const DETECT_MS = FALL * INTERVAL + TIMEOUT + 60;

  for (const [fault, reason] of faults) {
    it(`${fault}: down within fall × interval (${reason}); afterwards every session goes to the healthy server`, async () => {
      // A scripted backend: smtp-server takes ~100 ms to greet (longer than these tests' 80 ms check timeout).
      const good = await scripted('good.test');
      const badScripted = fault === 'refused' ? undefined : await scripted('bad.test', fault === 'killed' ? 'healthy' : fault);
      const badPort = badScripted?.port ?? (await closedPort());
      const etd = await etdWith({
        detection: { window: '0ms' },
        // Passive detection off: the health checks alone must take the server out.
        upstream: {
          balance: 'roundrobin',
          passiveFall: 0,
          servers: [
            { name: 'good', address: '127.0.0.1', port: good.port },
            { name: 'bad', address: '127.0.0.1', port: badPort },
          ],
          health: HEALTH_DOC,
        },
        // A silent backend costs a session this long before it is retried elsewhere.
        timeouts: { server: '300ms' },
      });
      const changes = recordChanges(etd);
      let faultAt = performance.now();
      const results: SessionResult[] = [];
      // Bounded in time; stops once enough sessions started after the server went down
      // (counted, not timed: a loaded CI machine makes each session slower).
      const hardStop = performance.now() + 10_000;
      for (let i = 0; performance.now() < hardStop; i++) {
        if (fault === 'killed' && i === 20) {
          await badScripted!.kill();
          faultAt = performance.now();
        }
        results.push(await session(etd.port));
        const down = changes.find((c) => c.server === 'bad');
        const after = down ? results.filter((r) => r.start > down.at).length : 0;
        if (down && after >= 8 && (fault !== 'killed' || i > 20)) break;
      }
      const sums = await etd.waitForSummaries(results.length);
      const byPort = new Map(sums.map((s) => [s.client, s]));

      // Exactly one change: bad went down, for the check's reason.
      expect(changes.map((c) => ({ server: c.server, from: c.from, to: c.to }))).toEqual([{ server: 'bad', from: 'up', to: 'down' }]);
      const down = changes[0]!;
      expect(down.reason).toMatch(new RegExp(`^${reason}: .*\\(${FALL} consecutive failed checks\\)$`));
      expect(down.at - faultAt).toBeLessThanOrEqual(DETECT_MS);

      for (const r of results) {
        const sum = byPort.get(`127.0.0.1:${r.localPort}`);
        expect(sum, `summary for client port ${r.localPort}`).toBeDefined();
        if (r.start > down.at) {
          // Not even tried: one attempt, on the healthy server.
          expect(r.banner).toMatch(/^220 good\.test/);
          expect(r.ok).toBe(true);
          expect(sum).toMatchObject({ server: 'good', attempts: 1 });
        }
        if (fault === 'refused' || fault === 'killed' || fault === 'silent') {
          // Before the server was down, the session's retry hid it: no client ever saw a failure.
          expect(r.ok, JSON.stringify({ r, sum })).toBe(true);
          if (r.start >= faultAt) expect(r.banner).toMatch(/^220 good\.test/);
        } else if (!r.ok) {
          // A 421 or garbage greeting is relayed as it comes (the session has no way to take it back):
          // only possible while the server was not yet known to be down.
          expect(r.start).toBeLessThan(down.at);
          expect(sum!.server).toBe('bad');
        }
      }
      expect(results.filter((r) => r.start > down.at).length).toBeGreaterThan(5);
      if (fault === 'killed') expect(results.filter((r) => r.start < faultAt && /bad\.test/.test(r.banner)).length).toBeGreaterThan(5);
    });
  }
});

/** Sessions by the server that greeted them ("220 <name>.test …"). */
function tally(results: readonly SessionResult[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of results) {
    const name = /^220 (\S+)\.test/.exec(r.banner)?.[1] ?? `failed:${r.banner}`;
    out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}

async function sessions(port: number, n: number, concurrency = 1): Promise<SessionResult[]> {
  const out: SessionResult[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        next++;
        out.push(await session(port));
      }
    }),
  );
  return out;
}

describe('through etd: drain and maint', () => {
  it('drain and maint servers get no new sessions; a drained server finishes its current session', async () => {
    const a = await scripted('a.test');
    const b = await scripted('b.test');
    const etd = await etdWith({
      detection: { window: '0ms' },
      upstream: {
        balance: 'roundrobin',
        servers: [
          { name: 'a', address: '127.0.0.1', port: a.port },
          { name: 'b', address: '127.0.0.1', port: b.port },
        ],
        health: HEALTH_DOC,
      },
    });
    const changes = recordChanges(etd);
    const pool = etd.app.pool;
    const sa = pool.get('a')!;

    // A session in progress on a.
    let held: HeldSession | undefined;
    for (let i = 0; i < 4 && !held; i++) {
      const h = await openSession(etd.port);
      if (h.banner.startsWith('220 a.test')) held = h;
      else await quit(h);
    }
    expect(held).toBeDefined();
    expect(sa.active).toBe(1);

    pool.setAdmin(sa, 'drain', 'operator: drain a');
    expect(tally(await sessions(etd.port, 10))).toEqual({ b: 10 });
    // The drained server's session carries on and ends normally.
    held!.socket.write('HELO client.test\r\n');
    await waitFor(() => a.connections.some((c) => c.lines.includes('HELO client.test')), { what: 'a to see the HELO', timeout: 1000 });
    const rest = await quit(held!);
    expect(rest).toMatch(/^250 a\.test\r\n221 /);
    await waitFor(() => sa.active === 0, { what: 'a to have no session', timeout: 1000 });
    await waitFor(() => etd.summaries.some((s) => s.client === `127.0.0.1:${held!.localPort}`), {
      what: 'the held session summary',
      timeout: 1000,
    });
    expect(etd.summaries.find((s) => s.client === `127.0.0.1:${held!.localPort}`)).toMatchObject({ server: 'a', verdict: 'passed' });

    pool.setAdmin(sa, 'maint', 'operator: maint a');
    const checksBefore = etd.app.health.status('a')!.checks;
    expect(tally(await sessions(etd.port, 10))).toEqual({ b: 10 });
    // Still checked while in maint, so its health is current when the override goes.
    await waitFor(() => etd.app.health.status('a')!.checks >= checksBefore + 2, { what: 'checks during maint', timeout: 1000 });

    pool.setAdmin(sa, undefined, 'operator: ready');
    const back = tally(await sessions(etd.port, 10));
    // One round-robin turn for every engine thread (the decision thread counts it): exact.
    expect(back).toEqual({ a: 5, b: 5 });
    expect(changes.map((c) => `${c.server}:${c.from}->${c.to}`)).toEqual(['a:up->drain', 'a:drain->maint', 'a:maint->up']);
  });

  it('a server that died while in maint shows down when the override is lifted, and still gets nothing', async () => {
    const a = await scripted('a.test');
    const b = await scripted('b.test');
    const etd = await etdWith({
      detection: { window: '0ms' },
      upstream: {
        balance: 'roundrobin',
        servers: [
          { name: 'a', address: '127.0.0.1', port: a.port },
          { name: 'b', address: '127.0.0.1', port: b.port },
        ],
        health: HEALTH_DOC,
      },
    });
    const changes = recordChanges(etd);
    const sa = etd.app.pool.get('a')!;
    etd.app.pool.setAdmin(sa, 'maint', 'operator');
    await a.kill();
    await waitFor(() => !sa.healthy, { what: 'a to fail its checks', timeout: FALL * INTERVAL + TIMEOUT + 2000 });
    etd.app.pool.setAdmin(sa, undefined, 'operator');
    expect(changes.map((c) => `${c.from}->${c.to}`)).toEqual(['up->maint', 'maint->down']);
    expect(tally(await sessions(etd.port, 6))).toEqual({ b: 6 });
    expect(etd.summaries.every((s) => s.attempts === 1)).toBe(true);
  });
});

describe('through etd: no server up', () => {
  it('answers 421 4.3.2 at once and closes, without holding the socket', async () => {
    const bad = await scripted('bad.test', 'banner421');
    const etd = await etdWith({
      detection: { window: '0ms' },
      upstream: { servers: [{ name: 'bad', address: '127.0.0.1', port: bad.port }], health: HEALTH_DOC },
    });
    await waitFor(() => etd.app.pool.get('bad')!.state === 'down', { what: 'bad down', timeout: FALL * INTERVAL + TIMEOUT + 2000 });
    const connectionsBefore = bad.connections.length;
    const t0 = performance.now();
    const h = await openSession(etd.port);
    const rest = await h.closed;
    expect(h.banner).toBe('421 4.3.2 Service not available, try again later');
    expect(rest).toBe('');
    expect(performance.now() - t0).toBeLessThan(500);
    const [sum] = await etd.waitForSummaries(1);
    expect(sum).toMatchObject({ verdict: 'no_server', cause: 'no_server_up', attempts: 0 });
    // Only health checks reached the server: no session was sent there.
    expect(bad.connections.length - connectionsBefore).toBeLessThanOrEqual(2);
  });
});

describe('through etd: balancing', () => {
  it('weighted roundrobin is within ±1 of the weights over 1,000 sessions', async () => {
    const weights: Record<string, number> = { w1: 1, w2: 2, w4: 4 };
    const servers = await Promise.all(Object.keys(weights).map((n) => scripted(`${n}.test`)));
    const etd = await etdWith({
      detection: { window: '0ms' },
      upstream: {
        balance: 'roundrobin',
        servers: servers.map((s, i) => ({
          name: Object.keys(weights)[i]!,
          address: '127.0.0.1',
          port: s.port,
          weight: Object.values(weights)[i]!,
        })),
        health: HEALTH_DOC,
      },
    });
    const n = 1000;
    const results = await sessions(etd.port, n, 20);
    expect(results.every((r) => r.ok)).toBe(true);
    const counts = tally(results);
    const total = Object.values(weights).reduce((a, b) => a + b, 0);
    for (const [name, w] of Object.entries(weights)) {
      // One turn for every engine thread: off by less than one session (n × w / total need not be whole).
      expect(Math.abs((counts[name] ?? 0) - (n * w) / total), `${name}: ${counts[name]}`).toBeLessThan(1);
    }
    const sums = await etd.waitForSummaries(n);
    expect(sums.every((s) => s.attempts === 1)).toBe(true);
    // Health checks kept running beside the traffic.
    expect(etd.app.health.status('w1')!.checks).toBeGreaterThan(0);
  });

  it('leastconn picks the least-loaded server', async () => {
    const names = ['a', 'b', 'c'];
    const servers = await Promise.all(names.map((n) => scripted(`${n}.test`)));
    const etd = await etdWith({
      detection: { window: '0ms' },
      upstream: {
        balance: 'leastconn',
        servers: servers.map((s, i) => ({ name: names[i]!, address: '127.0.0.1', port: s.port })),
        health: HEALTH_DOC,
      },
    });
    const pool = etd.app.pool;
    const name = (h: HeldSession) => /^220 (\w)\.test/.exec(h.banner)?.[1];
    // Load a with three open sessions (b and c out of the way meanwhile).
    pool.setAdmin(pool.get('b')!, 'maint', 'test');
    pool.setAdmin(pool.get('c')!, 'maint', 'test');
    const onA: HeldSession[] = [];
    for (let i = 0; i < 3; i++) onA.push(await openSession(etd.port));
    expect(onA.map(name)).toEqual(['a', 'a', 'a']);
    pool.setAdmin(pool.get('b')!, undefined, 'test');
    pool.setAdmin(pool.get('c')!, undefined, 'test');

    // a 3, b 0, c 0: the next six open sessions fill b and c up to a's load, none goes to a.
    const more: HeldSession[] = [];
    for (let i = 0; i < 6; i++) more.push(await openSession(etd.port));
    const picked = more.map(name);
    expect(picked.filter((p) => p === 'a')).toEqual([]);
    expect(picked.filter((p) => p === 'b')).toHaveLength(3);
    expect(picked.filter((p) => p === 'c')).toHaveLength(3);
    expect(names.map((n) => pool.get(n)!.active)).toEqual([3, 3, 3]);

    // Two of a's sessions end: a is now the least loaded and takes the next two.
    await quit(onA[0]!);
    await quit(onA[1]!);
    await waitFor(() => pool.get('a')!.active === 1, { what: 'a to drop to 1 session', timeout: 1000 });
    const next = [await openSession(etd.port), await openSession(etd.port)];
    expect(next.map(name)).toEqual(['a', 'a']);
    for (const h of [onA[2]!, ...more, ...next]) await quit(h);
  });
});

describe('through etd: reload', () => {
  it('a server added by a reload gets checked, a removed one no longer', async () => {
    const a = await scripted('a.test');
    const b = await scripted('b.test');
    const doc = (servers: Array<{ name: string; port: number }>) => ({
      listeners: [{ name: 'test', address: '127.0.0.1', port: 0 }],
      log: { level: 'silent' },
      detection: { window: '0ms' },
      upstream: { servers: servers.map((s) => ({ name: s.name, address: '127.0.0.1', port: s.port })), health: HEALTH_DOC },
    });
    const etd = await etdWith(doc([{ name: 'a', port: a.port }]));
    await waitFor(() => a.connections.length >= 2, { what: 'a to be checked', timeout: 1000 });
    await etd.app.reload(validateConfig(doc([{ name: 'b', port: b.port }])));
    const aCount = a.connections.length;
    const done = () => b.connections.filter((c) => c.lines.includes('QUIT'));
    await waitFor(() => done().length >= 3, { what: 'b to be checked', timeout: 1000 });
    expect(done().every((c) => c.lines[0] === 'HELO etd.test')).toBe(true);
    await sleep(INTERVAL);
    expect(a.connections.length).toBe(aCount);
    expect(etd.app.health.status('a')).toBeUndefined();
  });
});
