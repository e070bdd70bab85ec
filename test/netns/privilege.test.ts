// etd under exactly the systemd unit's capabilities (read from systemd/etd.service), as a non-root
// user, in vip and intercept mode in the netns lab: transparent relaying, early-talker drops, the
// rules watch, a reload and a clean stop all work without CAP_NET_RAW or any other capability.
// And `etd run` started as root outside systemd drops to `user:` with the same set by itself.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JsonLineProcess, Lab } from '../../lab/netns.js';
import type { RunningEtd } from '../helpers/cli.js';
import { firstBackends, type LabSuite, labSuite, labVipConfig, vipConfig } from '../helpers/labSuite.js';
import { earlyTalker, swaks } from '../helpers/nsClient.js';
import { skipPrivileged, skipWithout } from '../helpers/privileged.js';

const UNIT = path.join(__dirname, '../../systemd/etd.service');

// Capability numbers from linux/capability.h, for the names a unit may grant etd.
const CAP_NUMBERS: Record<string, number> = { CAP_NET_BIND_SERVICE: 10, CAP_NET_BROADCAST: 11, CAP_NET_ADMIN: 12, CAP_NET_RAW: 13 };

/** The names listed by `key=` in the unit (one line; the test fails if the key is absent). */
function unitCaps(key: string): string[] {
  const line = fs
    .readFileSync(UNIT, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${key}=`));
  if (!line) throw new Error(`${UNIT} has no ${key}= line`);
  return line
    .slice(key.length + 1)
    .trim()
    .split(/\s+/)
    .sort();
}

const ambient = unitCaps('AmbientCapabilities');
const bounding = unitCaps('CapabilityBoundingSet');

/** The /proc status mask ("0000000000001400") of a set of capability names. */
function mask(names: readonly string[]): string {
  let m = 0n;
  for (const n of names) {
    const bit = CAP_NUMBERS[n];
    if (bit === undefined) throw new Error(`unknown capability ${n} in ${UNIT}: add its number to CAP_NUMBERS`);
    m |= 1n << BigInt(bit);
  }
  return m.toString(16).padStart(16, '0');
}

/** setpriv arguments giving the process what the unit gives etd: User=, Ambient/Bounding, NoNewPrivileges. */
function asTheUnit(): string[] {
  const list = (names: readonly string[]) => ['-all', ...names.map((n) => `+${n.slice(4).toLowerCase()}`)].join(',');
  return [
    'setpriv',
    '--reuid=nobody',
    '--regid=nogroup',
    '--clear-groups',
    `--inh-caps=${list(ambient)}`,
    `--ambient-caps=${list(ambient)}`,
    `--bounding-set=${list(bounding)}`,
    '--no-new-privs',
  ];
}

/** Uid and the capability sets of every thread of `pid`. */
function credentials(pid: number): Array<Record<string, string>> {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const field = (k: string) => (status.match(new RegExp(`^${k}:\\s*(.*)$`, 'm'))?.[1] ?? '').trim();
    return {
      tid,
      Uid: field('Uid'),
      Gid: field('Gid'),
      CapInh: field('CapInh'),
      CapPrm: field('CapPrm'),
      CapEff: field('CapEff'),
      CapAmb: field('CapAmb'),
      CapBnd: field('CapBnd'),
      NoNewPrivs: field('NoNewPrivs'),
    };
  });
}

const skip =
  skipPrivileged('etd under the unit capabilities') ||
  skipWithout('setpriv', 'util-linux', 'etd under the unit capabilities') ||
  skipWithout('swaks', 'swaks', 'etd under the unit capabilities');
let suite: LabSuite;
let lab: Lab;
let recorder: JsonLineProcess;

/** A config file the non-root etd can read (its directory is made searchable in beforeAll). */
function writeConfig(text: string): string {
  const file = suite.writeConfig(text);
  fs.chmodSync(file, 0o644);
  return file;
}

async function startAsUnit(file: string): Promise<RunningEtd> {
  return suite.start(file, 20_000, asTheUnit());
}

/** Every thread of `etd` runs as uid/gid `ids` (real, effective, saved, fs) with exactly the unit's capabilities and no_new_privs; returns the threads. */
function expectCredentials(etd: RunningEtd, uid: number, gid: number): Array<Record<string, string>> {
  const threads = credentials(etd.child.pid!);
  for (const t of threads) {
    expect(t, `thread ${t.tid}`).toEqual({
      tid: t.tid,
      Uid: `${uid}\t${uid}\t${uid}\t${uid}`,
      Gid: `${gid}\t${gid}\t${gid}\t${gid}`,
      CapInh: mask(ambient),
      CapPrm: mask(ambient),
      CapEff: mask(ambient),
      CapAmb: mask(ambient),
      CapBnd: mask(bounding),
      NoNewPrivs: '1',
    });
  }
  return threads;
}

/** As the unit runs etd: the user nobody (65534). */
const expectUnitCredentials = (etd: RunningEtd) => expectCredentials(etd, 65534, 65534);

const connectsFrom = (addr: string) => recorder.events.filter((e) => e.event === 'connect' && e.remoteAddress === addr).length;

/** An early talker from the client to `host`:25 gets nothing, etd logs it (v4 first, then v6), and the backend never sees it. */
async function expectEarlyTalkerDropped(etd: RunningEtd, family: 'v4' | 'v6', client: string, host: string): Promise<void> {
  const before = connectsFrom(client);
  const early = await earlyTalker(lab, host);
  expect(early.data, family).toBe('');
  await etd.waitFor(
    () => etd.lines.filter((l) => l.msg === 'session' && l.verdict === 'early_talker').length >= (family === 'v4' ? 1 : 2),
    5000,
  );
  expect(connectsFrom(client), `${family}: the early talker reached the backend`).toBe(before);
}

/** Renames the listener smtp4 in `file` and reloads (SIGHUP): the new listener binds port 25 again, and a v4 client's mail arrives through it. */
async function reloadRenamedAndDeliver(etd: RunningEtd, file: string): Promise<void> {
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('name: smtp4', 'name: smtp4b'));
  etd.child.kill('SIGHUP');
  await etd.waitFor((l) => l.msg === 'configuration reloaded', 10_000);
  const before = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client).length;
  expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
  await recorder.waitFor(
    () => recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === lab.v4.client).length > before,
    5000,
  );
}

/** Starts etd as root without the test suite's ETD_DROP_PRIVILEGES=no (vitest.config.ts), so the default `auto` applies. */
function startAsRoot(file: string): RunningEtd {
  return suite.spawn(file, ['env', '-u', 'ETD_DROP_PRIVILEGES']);
}

// A system user of this test alone, removed afterwards.
const TEST_USER = `etdt${process.pid}`;
const hasEtdUser = spawnSync('getent', ['passwd', 'etd']).status === 0;

// One lab for the whole file: both describes run in it, one etd at a time.
describe.skipIf(skip)('etd without root', () => {
  suite = labSuite({
    name: 'priv',
    recorder: firstBackends,
  });
  beforeAll(() => {
    ({ lab, recorder } = suite);
    // The non-root etd reads its configs from here.
    fs.chmodSync(suite.dir, 0o755);
  });

  describe('etd with exactly the unit capabilities', () => {
    it('the unit grants CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only, as ambient and bounding set alike', () => {
      expect(ambient).toEqual(['CAP_NET_ADMIN', 'CAP_NET_BIND_SERVICE']);
      expect(bounding).toEqual(ambient);
    });

    it('vip mode: relays from the client address, drops an early talker, re-applies flushed rules, reloads on SIGHUP, and removes its rules on stop', async () => {
      // No deny cache: the v4 client talks early, then must pass again after the reload.
      const file = writeConfig(labVipConfig(lab, { extra: 'netfilter: { watch: 500ms }\ncache: { enabled: false }' }));
      const etd = await startAsUnit(file);
      expectUnitCredentials(etd);

      for (const [family, client, gw] of [
        ['v4', lab.v4.client, lab.v4.gatewayClientSide],
        ['v6', lab.v6.client, lab.v6.gatewayClientSide],
      ] as const) {
        expect(await swaks(lab, gw), family).toMatch(/<- +250 Queued/);
        const msg = await recorder.waitFor((e) => e.event === 'message' && e.remoteAddress === client, 5000);
        expect(msg.remoteAddress, family).toBe(client);
        await expectEarlyTalkerDropped(etd, family, client, gw);
      }

      // The watch re-applies the nftables table and ip rule (CAP_NET_ADMIN through netlink and the ambient set of `ip`).
      await lab.exec(lab.ns.gateway, 'nft', ['delete', 'table', 'inet', 'etd']);
      await lab.exec(lab.ns.gateway, 'ip', ['rule', 'del', 'fwmark', '0x1', 'lookup', '100']);
      await etd.waitFor((l) => String(l.msg).includes('re-applying'), 10_000);
      // The warning comes before the re-apply: poll until both are back (the test's timeout bounds it).
      for (;;) {
        const nft = await lab.exec(lab.ns.gateway, 'nft', ['list', 'table', 'inet', 'etd'], { allowFailure: true });
        const rules = await lab.exec(lab.ns.gateway, 'ip', ['rule', 'show']);
        if (/socket transparent 1/.test(nft.stdout) && /fwmark 0x1 lookup 100/.test(rules.stdout)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(etd.lines.filter((l) => l.level === 'error' || l.level === 50)).toEqual([]);

      // A reload that starts a listener anew (renamed) binds port 25 again: CAP_NET_BIND_SERVICE after start.
      await reloadRenamedAndDeliver(etd, file);
      expectUnitCredentials(etd);

      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
      expect((await lab.exec(lab.ns.gateway, 'nft', ['list', 'ruleset'])).stdout).not.toMatch(/table inet etd/);
      expect((await lab.exec(lab.ns.gateway, 'ip', ['rule', 'show'])).stdout).not.toMatch(/fwmark 0x1/);
    }, 120_000);

    it('intercept mode: relays to the original destination from the client address and drops an early talker', async () => {
      const file = writeConfig(
        `
listeners:
  - { name: icpt, mode: intercept, port: 25, destinations: [${lab.v4.backends[0]}/32, "${lab.v6.backends[0]}/128"] }
detection: { window: 500ms, action: drop }
upstream: { source: clientip, connectTimeout: 3s, health: { enabled: false } }
api: { enabled: false }
state: { path: ":memory:" }
log: { level: info }
`,
      );
      const etd = await startAsUnit(file);
      expectUnitCredentials(etd);
      for (const [family, client, backend] of [
        ['v4', lab.v4.client, lab.v4.backends[0]],
        ['v6', lab.v6.client, lab.v6.backends[0]],
      ] as const) {
        const sessions = etd.lines.filter((l) => l.msg === 'session').length;
        const messages = recorder.events.filter((e) => e.event === 'message' && e.remoteAddress === client).length;
        expect(await swaks(lab, backend), family).toMatch(/<- +250 Queued/);
        const msg = await recorder.waitFor(
          (e) =>
            e.event === 'message' &&
            e.remoteAddress === client &&
            recorder.events.filter((x) => x.event === 'message' && x.remoteAddress === client).length > messages,
          5000,
        );
        expect(msg.localAddress, family).toBe(backend);
        // etd was on the path: it logged the session (the backend alone would not).
        await etd.waitFor(() => etd.lines.filter((l) => l.msg === 'session').length > sessions, 5000);

        await expectEarlyTalkerDropped(etd, family, client, backend);
      }
      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
    }, 90_000);
  });

  describe('etd run started as root drops to its user', () => {
    let uid = 0;
    let gid = 0;

    beforeAll(() => {
      // A system user from a range of its own: the .deb test (test/system/deb.test.ts), which may run at the same
      // time, creates its etd user with the next free uid of the usual system range, and checks that no process has it.
      const range = ['-K', 'SYS_UID_MIN=61000', '-K', 'SYS_UID_MAX=61999', '-K', 'SYS_GID_MIN=61000', '-K', 'SYS_GID_MAX=61999'];
      execFileSync('useradd', ['--system', ...range, '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', TEST_USER]);
      uid = Number(execFileSync('id', ['-u', TEST_USER], { encoding: 'utf8' }).trim());
      gid = Number(execFileSync('id', ['-g', TEST_USER], { encoding: 'utf8' }).trim());
    });

    afterAll(() => {
      spawnSync('userdel', [TEST_USER]);
    });

    it('vip mode: every thread runs as the user with CAP_NET_ADMIN CAP_NET_BIND_SERVICE only; relays, drops, reloads and stops cleanly', async () => {
      // Two levels missing: the parent is created root's and searchable, the directory the user's.
      const stateDir = path.join(suite.dir, 'state-drop', 'etd');
      const file = writeConfig(
        vipConfig({
          top: `user: ${TEST_USER}`,
          listeners: { smtp4: lab.v4.gatewayClientSide },
          servers: { b4: lab.v4.backends[0] },
          statePath: `${stateDir}/state.db`,
          extra: 'cache: { enabled: false }',
        }),
      );
      const etd = startAsRoot(file);
      await etd.waitFor((l) => l.msg === 'etd started', 20_000);
      const identity = etd.lines.find((l) => String(l.msg).startsWith('running as user'));
      expect(identity).toMatchObject({ user: TEST_USER, uid, capabilities: 'CAP_NET_ADMIN CAP_NET_BIND_SERVICE', droppedFromRoot: true });
      // The same process (execve keeps the PID), every thread of it.
      const threads = expectCredentials(etd, uid, gid);
      expect(threads.length).toBeGreaterThan(1);
      // The state directory was created for the user (what the unit's StateDirectory= does).
      expect(fs.statSync(stateDir).uid).toBe(uid);
      expect(fs.existsSync(path.join(stateDir, 'state.db'))).toBe(true);

      expect(await swaks(lab, lab.v4.gatewayClientSide)).toMatch(/<- +250 Queued/);
      const msg = await recorder.waitFor((e) => e.event === 'message' && e.remoteAddress === lab.v4.client, 5000);
      expect(msg.remoteAddress).toBe(lab.v4.client);
      const before = connectsFrom(lab.v4.client);
      expect((await earlyTalker(lab, lab.v4.gatewayClientSide)).data).toBe('');
      await etd.waitFor((l) => l.msg === 'session' && l.verdict === 'early_talker', 5000);
      expect(connectsFrom(lab.v4.client)).toBe(before);

      // A config the user cannot read: the reload is refused with the reason, the running config stays.
      fs.chmodSync(file, 0o600);
      etd.child.kill('SIGHUP');
      const refused = await etd.waitFor((l) => String(l.msg).startsWith('reload refused'), 10_000);
      expect(String(refused.err)).toMatch(/EACCES/);
      fs.chmodSync(file, 0o644);
      // A readable one reloads, and a renamed listener binds port 25 again as the user.
      await reloadRenamedAndDeliver(etd, file);
      expect(etd.lines.filter((l) => l.level === 'error' && !String(l.msg).startsWith('reload refused'))).toEqual([]);

      etd.child.kill('SIGTERM');
      expect(await etd.exited).toBe(0);
      expect((await lab.exec(lab.ns.gateway, 'nft', ['list', 'ruleset'])).stdout).not.toMatch(/table inet etd/);
      expect((await lab.exec(lab.ns.gateway, 'ip', ['rule', 'show'])).stdout).not.toMatch(/fwmark 0x1/);
    }, 120_000);

    it.skipIf(hasEtdUser)(
      'without a user key and no etd user on the host: stays root with a warning naming the fix',
      async () => {
        const file = writeConfig(
          `
listeners: [{ name: p, address: 127.0.0.1, port: 2525 }]
upstream: { servers: [{ name: b, address: 127.0.0.1, port: 2526 }], health: { enabled: false } }
api: { enabled: false }
state: { path: ":memory:" }
`,
        );
        const etd = startAsRoot(file);
        await etd.waitFor((l) => l.msg === 'etd started', 20_000);
        const warning = etd.lines.find((l) => l.level === 'warn' && /user etd does not exist/.test(String(l.msg)));
        expect(String(warning?.msg)).toMatch(/etd stays root.*useradd .*etd.*user: root/);
        expect(etd.lines.find((l) => String(l.msg).startsWith('running as user'))).toMatchObject({ user: 'root', uid: 0 });
        expect(credentials(etd.child.pid!)[0]!.Uid).toBe('0\t0\t0\t0');
        etd.child.kill('SIGTERM');
        expect(await etd.exited).toBe(0);
      },
      60_000,
    );

    it('a config the user cannot read is refused before the drop, naming the file and the fix', async () => {
      const file = writeConfig(
        `
user: ${TEST_USER}
listeners: [{ name: p, address: 127.0.0.1, port: 2525 }]
upstream: { servers: [{ name: b, address: 127.0.0.1, port: 2526 }], health: { enabled: false } }
api: { enabled: false }
state: { path: ":memory:" }
`,
      );
      fs.chmodSync(file, 0o600);
      const etd = startAsRoot(file);
      expect(await etd.exited).toBe(1);
      expect(etd.stderr).toContain(`ETD_ERR_PRIVILEGE_DROP: user ${TEST_USER} (uid ${uid}) cannot read ${file} — `);
      expect(etd.stderr).toMatch(/chgrp .*user: root/);
    }, 60_000);

    it('a user: that does not exist is ETD_ERR_USER, exit code 1', async () => {
      const file = writeConfig(
        `
user: ${TEST_USER}x
listeners: [{ name: p, address: 127.0.0.1, port: 2525 }]
upstream: { servers: [{ name: b, address: 127.0.0.1, port: 2526 }], health: { enabled: false } }
api: { enabled: false }
state: { path: ":memory:" }
`,
      );
      const etd = startAsRoot(file);
      expect(await etd.exited).toBe(1);
      expect(etd.stderr).toMatch(new RegExp(`ETD_ERR_USER: user: no user "${TEST_USER}x" on this host — create it`));
    }, 60_000);
  });
});
