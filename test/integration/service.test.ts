// The service packaging: systemd/etd.service passes systemd-analyze verify, scripts/*.sh pass shellcheck, install.sh --dry-run shows every step and changes nothing.
//
// The checkers are Debian packages (systemd-analyze from "systemd", "shellcheck"). Like the
// privileged tests (helpers/privileged.ts), a missing checker skips the suite outside CI and
// says why, while in CI (CI=true) it fails, so the packaging is never silently unchecked there.

import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { assertBuilt, CLI } from '../helpers/cli.js';
import { isRoot, skipWithout } from '../helpers/privileged.js';

const exec = promisify(execFile);
const ROOT = path.join(__dirname, '../..');
const UNIT = path.join(ROOT, 'systemd/etd.service');
const INSTALL = path.join(ROOT, 'scripts/install.sh');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-service-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await exec(cmd, args, { cwd: opts.cwd ?? ROOT, maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e; // the command could not be started at all
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** The unit's directives as key → values (a key may repeat, e.g. After=). Comments and sections dropped. */
function directives(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';') || line.startsWith('[')) continue;
    const i = line.indexOf('=');
    const key = line.slice(0, i);
    m.set(key, [...(m.get(key) ?? []), line.slice(i + 1)]);
  }
  return m;
}

const one = (d: Map<string, string[]>, key: string): string | undefined => d.get(key)?.at(-1);

const skipVerify = skipWithout('systemd-analyze', 'systemd', 'systemd-analyze verify of systemd/etd.service');
const skipShellcheck = skipWithout('shellcheck', 'shellcheck', 'shellcheck of scripts/*.sh');

describe('systemd/etd.service', () => {
  const text = fs.readFileSync(UNIT, 'utf8');
  const d = directives(text);

  /**
   * verify checks that every Exec* command exists and is executable, and /opt/etd/dist/src/cli.js
   * exists only on an installed gateway. So it checks a copy in a temp dir whose commands point
   * at this checkout's built dist/src/cli.js instead (same file, same directives otherwise).
   */
  function verifiableCopy(body: string): string {
    assertBuilt();
    const dir = fs.mkdtempSync(path.join(tmp, 'unit-'));
    const file = path.join(dir, 'etd.service'); // the unit name comes from the file name
    fs.writeFileSync(file, body.replaceAll('/opt/etd/dist/src/cli.js', CLI));
    return file;
  }

  it.skipIf(skipVerify)('passes systemd-analyze verify without a single warning about it', async () => {
    const file = verifiableCopy(text);
    expect(fs.readFileSync(file, 'utf8')).toContain(`ExecStart=${CLI} run -c /etc/etd/etd.yaml`);
    const r = await run('systemd-analyze', ['verify', file]);
    // verify exits 0 even for unknown keys and unparsable values (it only warns and ignores
    // them), so its output is checked too. Lines about other units on this host do not count.
    const ours = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('etd.service') || l.includes(path.dirname(file)));
    expect({ code: r.code, ours }, `systemd-analyze verify said:\n${r.stdout}${r.stderr}`).toEqual({ code: 0, ours: [] });
  });

  it.skipIf(skipVerify)('(the verify check above does catch mistakes: a misspelt key and a bad value)', async () => {
    const file = verifiableCopy(text.replace('KillMode=mixed', 'KillMode=mixed\nKilMode=mixed\nTimeoutStopSec=soon'));
    const r = await run('systemd-analyze', ['verify', file]);
    const out = `${r.stdout}${r.stderr}`;
    expect(out).toMatch(/Unknown key .*KilMode/);
    expect(out).toMatch(/Failed to parse.*soon|soon.*ignoring/);
  });

  it('has the directives issue 6 asks for', () => {
    expect(one(d, 'Type')).toBe('notify');
    expect(one(d, 'User')).toBe('etd');
    // Not CAP_NET_RAW: test/netns/privilege.test.ts shows etd working without it.
    const caps = ['CAP_NET_ADMIN', 'CAP_NET_BIND_SERVICE'];
    expect(one(d, 'AmbientCapabilities')?.split(/\s+/).sort()).toEqual([...caps].sort());
    expect(one(d, 'CapabilityBoundingSet')?.split(/\s+/).sort()).toEqual([...caps].sort());
    expect(one(d, 'NoNewPrivileges')).toBe('yes');
    expect(one(d, 'ProtectSystem')).toBe('strict');
    expect(one(d, 'StateDirectory')).toBe('etd');
    expect(one(d, 'ConfigurationDirectory')).toBe('etd');
    expect(Number(one(d, 'LimitNOFILE'))).toBeGreaterThanOrEqual(65536);
    expect(one(d, 'Restart')).toBe('on-failure');
    expect(one(d, 'ExecStart')).toBe('/opt/etd/dist/src/cli.js run -c /etc/etd/etd.yaml');
    expect(one(d, 'ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one(d, 'ExecStopPost')).toMatch(/^-?\/opt\/etd\/dist\/src\/cli\.js rules remove -c \/etc\/etd\/etd\.yaml$/);
    expect(one(d, 'KillMode')).toBe('mixed');
  });

  it('waits longer for a stop than the shutdown grace of the example config', () => {
    const seconds = (v: string) => {
      const m = /^(\d+)(s|min)?$/.exec(v);
      if (!m) throw new Error(`unexpected duration ${v}`);
      return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
    };
    const grace = /shutdownGrace:\s*(\d+)s/.exec(fs.readFileSync(path.join(ROOT, 'config/etd.example.yaml'), 'utf8'));
    expect(grace).not.toBeNull();
    expect(seconds(one(d, 'TimeoutStopSec') ?? '0')).toBeGreaterThan(Number(grace![1]));
  });

  it('keeps what netfilter and Node need out of the sandbox', () => {
    // nft and ip talk netlink; sd_notify and the API's unix socket need AF_UNIX.
    expect(one(d, 'RestrictAddressFamilies')?.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX']);
    // V8's JIT needs W+X memory; capabilities in a user namespace do not reach the host's netfilter;
    // ProcSubset=pid would hide /proc/sys, which the preflight reads.
    expect(one(d, 'MemoryDenyWriteExecute') ?? 'no').toBe('no');
    expect(one(d, 'PrivateUsers') ?? 'no').toBe('no');
    expect(one(d, 'PrivateNetwork') ?? 'no').toBe('no');
    expect(one(d, 'ProcSubset') ?? 'all').toBe('all');
  });
});

describe.skipIf(skipShellcheck)('scripts', () => {
  it('pass shellcheck', async () => {
    const scripts = fs
      .readdirSync(path.join(ROOT, 'scripts'))
      .filter((f) => f.endsWith('.sh'))
      .map((f) => path.join('scripts', f));
    expect(scripts).toContain('scripts/install.sh');
    const r = await run('shellcheck', scripts);
    expect(r.code, `shellcheck said:\n${r.stdout}${r.stderr}`).toBe(0);
  });
});

describe('scripts/install.sh --dry-run', () => {
  // Everything install.sh would create or change; a dry run must leave all of it as it was.
  const TARGETS = [
    '/opt/etd',
    '/opt/.etd.new',
    '/opt/.etd.old',
    '/etc/etd',
    '/etc/sysctl.d/90-etd.conf',
    '/usr/local/bin/etd',
    '/etc/systemd/system/etd.service',
    '/etc/systemd/system/multi-user.target.wants/etd.service',
    '/run/etd-install.lock',
  ];
  function snapshot(): string {
    const lines = TARGETS.map((p) => {
      try {
        const s = fs.lstatSync(p);
        return `${p} ${s.mode} ${s.uid}:${s.gid} ${s.mtimeMs} ${s.isDirectory() ? fs.readdirSync(p).join(',') : s.size}`;
      } catch {
        return `${p} absent`;
      }
    });
    let user = 'no user etd';
    try {
      user = execFileSync('getent', ['passwd', 'etd'], { encoding: 'utf8' });
    } catch {
      /* absent */
    }
    return [...lines, user].join('\n');
  }

  /**
   * Unprivileged: as root, the dry run runs first as nobody (setpriv from util-linux). nobody may
   * not be able to read this checkout (CI may keep it under /root), so that run uses a copy of
   * the files install.sh looks at, in a world-readable temp dir.
   */
  function unprivilegedCopy(): string {
    const dir = fs.mkdtempSync(path.join(tmp, 'checkout-'));
    for (const f of [
      'scripts/install.sh',
      'package.json',
      'package-lock.json',
      'config/etd.example.yaml',
      'systemd/etd.service',
      'systemd/90-etd.conf',
      'native/build/Release/etd_transparent.node',
    ]) {
      fs.mkdirSync(path.join(dir, path.dirname(f)), { recursive: true });
      fs.copyFileSync(path.join(ROOT, f), path.join(dir, f));
    }
    fs.cpSync(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'docs'), path.join(dir, 'docs'), { recursive: true });
    execFileSync('chmod', ['-R', 'a+rX', tmp]);
    return dir;
  }

  /**
   * The dry run as this user; as root, first as nobody (it must work unprivileged) and then as
   * root too (where nothing would stop a stray write, so the snapshot check really means something).
   */
  async function dryRuns(args: string[] = []): Promise<Array<Run & { as: string }>> {
    const runs: Array<Run & { as: string }> = [];
    const check = async (as: string, cmd: string, argv: string[], cwd?: string) => {
      const before = snapshot();
      const r = { ...(await run(cmd, argv, cwd ? { cwd } : {})), as };
      expect(snapshot(), `install.sh --dry-run changed the system (ran as ${as})`).toBe(before);
      runs.push(r);
    };
    if (isRoot) {
      const checkout = unprivilegedCopy();
      const argv = [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        'env',
        'HOME=/nonexistent',
        'bash',
        path.join(checkout, 'scripts/install.sh'),
        '--dry-run',
        ...args,
      ];
      await check('nobody (setpriv)', 'setpriv', argv, checkout);
    }
    await check(os.userInfo().username, 'bash', [INSTALL, '--dry-run', ...args]);
    return runs;
  }

  it('prints every step of an install, unprivileged, and changes nothing', async () => {
    assertBuilt();
    for (const r of await dryRuns()) checkInstallOutput(r);
  });

  function checkInstallOutput(r: Run & { as: string }): void {
    const out = r.stdout;
    expect(r.code, `install.sh --dry-run as ${r.as} exited ${r.code}:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(out).toContain('DRY RUN: nothing is changed');
    const steps = [...out.matchAll(/^==> \d+\. (.*)$/gm)].map((m) => m[1]!);
    expect(steps.map((s) => s.split(/[ :]/)[0])).toEqual([
      'checks',
      'system',
      'system',
      'program',
      'configuration',
      'command',
      'kernel',
      'systemd',
      'done',
    ]);

    // Packages: each one is named, and either installed already or installed by apt-get.
    for (const p of ['nftables', 'libnftables1', 'iproute2', 'libsystemd0', 'g++', 'make', 'python3']) expect(steps[1]).toContain(p);
    expect(out).toMatch(/Node\.js >= 20/);
    expect(out).toMatch(/all installed|\+ env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends/);
    // The user.
    expect(out).toMatch(
      /\+ useradd --system --user-group --home-dir \/var\/lib\/etd .*--shell \/usr\/sbin\/nologin .* etd$|user etd exists/m,
    );
    // /opt/etd: the built package, production node_modules, swapped in.
    expect(out).toMatch(/\+ cp -R \S+\/dist \S+\/scripts \S+\/package\.json \S+\/package-lock\.json \/opt\/\.etd\.new\//);
    expect(out).toContain('native/build/Release/etd_transparent.node /opt/.etd.new/native/build/Release/');
    expect(out).toContain('+ (cd /opt/.etd.new && npm ci --omit=dev --ignore-scripts');
    expect(out).toContain('+ (cd /opt/.etd.new && npm rebuild better-sqlite3)');
    expect(out).toMatch(/\+ mv \/opt\/\.etd\.new \/opt\/etd$/m);
    // /etc/etd: the example always, etd.yaml only when it does not exist yet.
    expect(out).toContain('+ install -d -m 0750 -o root -g etd /etc/etd');
    expect(out).toMatch(/\+ install -m 0644 -o root -g root \S+\/config\/etd\.example\.yaml \/etc\/etd\/etd\.example\.yaml/);
    expect(out).toMatch(
      /\+ install -m 0640 -o root -g etd \S+\/config\/etd\.example\.yaml \/etc\/etd\/etd\.yaml|\/etc\/etd\/etd\.yaml exists: kept/,
    );
    // The command.
    expect(out).toMatch(/\+ ln -sfn \/opt\/etd\/dist\/src\/cli\.js \/usr\/local\/bin\/etd|\/usr\/local\/bin\/etd is up to date/);
    // The sysctl drop-in (systemd/90-etd.conf, shared with the Debian package), every value commented.
    expect(out).toMatch(
      /would write \/etc\/sysctl\.d\/90-etd\.conf .*from systemd\/90-etd\.conf|\/etc\/sysctl\.d\/90-etd\.conf is up to date/,
    );
    const sysctl = fs.readFileSync(
      out.includes('/etc/sysctl.d/90-etd.conf is up to date') ? '/etc/sysctl.d/90-etd.conf' : path.join(ROOT, 'systemd/90-etd.conf'),
      'utf8',
    );
    const want = {
      'net.ipv4.ip_forward': '1',
      'net.ipv6.conf.all.forwarding': '1',
      'net.ipv4.conf.all.rp_filter': '2',
      'net.ipv4.conf.all.src_valid_mark': '0',
      'net.core.somaxconn': '65535',
      'net.ipv4.tcp_max_syn_backlog': '65535',
    };
    const lines = sysctl.split('\n');
    for (const [key, value] of Object.entries(want)) {
      const i = lines.findIndex((l) => l.replace(/\s/g, '') === `${key}=${value}`);
      expect(i, `${key} = ${value} in the sysctl drop-in:\n${sysctl}`).toBeGreaterThan(0);
      expect(lines[i - 1], `a comment says why ${key} = ${value}`).toMatch(/^#/);
    }
    expect(out).toContain('+ sysctl -p /etc/sysctl.d/90-etd.conf');
    // The unit, enabled.
    expect(out).toMatch(
      /would write \/etc\/systemd\/system\/etd\.service .*from systemd\/etd\.service|\/etc\/systemd\/system\/etd\.service is up to date/,
    );
    expect(out).toContain('+ systemctl enable etd.service');
  }

  it('prints every step of an uninstall, and changes nothing', async () => {
    for (const r of await dryRuns(['--uninstall', '--purge'])) {
      expect(r.code, `as ${r.as}: ${r.stdout}\n${r.stderr}`).toBe(0);
      const steps = [...r.stdout.matchAll(/^==> \d+\. (.*)$/gm)].map((m) => m[1]!);
      expect(steps).toEqual([
        expect.stringMatching(/^checks/),
        'stop and disable etd',
        "remove etd's nftables table and ip rules (idempotent)",
        'remove the unit /etc/systemd/system/etd.service',
        'remove the command /usr/local/bin/etd',
        'remove the program files /opt/etd',
        'remove the kernel settings /etc/sysctl.d/90-etd.conf',
        'configuration, state and user',
      ]);
      expect(r.stdout).toContain('+ rm -rf /etc/etd /var/lib/etd');
    }
  });

  it('refuses unknown options', async () => {
    const r = await run('bash', [INSTALL, '--dry-rnu']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown option: --dry-rnu');
  });
});
