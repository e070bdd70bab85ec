// The Debian package, for real: built by scripts/package.mjs, checked by lintian, installed with dpkg into a throwaway copy of this machine, run, upgraded, removed and purged without a trace.
//
// The throwaway root: an overlayfs over / (upper and work dirs on a tmpfs) in a private mount
// namespace, kept alive by one holder process; every command of the package runs there through
// `nsenter -m` + `chroot`, and its files are read through /proc/<holder>/root. dpkg, adduser and
// deb-systemd-helper write only to the tmpfs, which goes with the holder: the host never gets the
// package, its user or its files (the last test checks). Same network namespace, so the installed
// `etd run` is reached on loopback as before.
//
// Root only (mounts, chroot, dpkg): outside CI a non-root run skips it and says so; in CI it fails
// instead. It refuses to start when anything it would create already exists on the host (the
// package, /usr/bin/etd, the user etd, /etc/etd, /var/lib/etd, /usr/lib/etd): the copy would start
// with them, and the test's "before" would not be clean.

import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error: a plain ES module without type declarations
import { packagedUnit, packageVersion } from '../../scripts/package.mjs';
import { renderUsage } from '../../src/cliSpec.js';
import { assertBuilt } from '../helpers/cli.js';
import { skipUnlessRoot, skipWithout } from '../helpers/privileged.js';
import { waitFor } from '../helpers/wait.js';

const execP = promisify(execFile);
const ROOT = path.join(__dirname, '../..');
const SCRIPT = path.join(ROOT, 'scripts/package.mjs');
const skip =
  skipUnlessRoot('Debian package install test') ||
  skipWithout('dpkg-deb', 'dpkg', 'Debian package build') ||
  skipWithout('dpkg-shlibdeps', 'dpkg-dev', 'Debian package build') ||
  skipWithout('lintian', 'lintian', 'lintian of the package') ||
  skipWithout('systemd-analyze', 'systemd', 'systemd-analyze verify of the installed unit') ||
  skipWithout('man', 'man-db', 'the installed man page') ||
  skipWithout('unshare', 'util-linux', 'the throwaway root of the package test') ||
  skipWithout('nsenter', 'util-linux', 'the throwaway root of the package test');

/** Everything the package creates or its scripts touch; each must be absent before the test. */
const OURS = [
  '/usr/bin/etd',
  '/usr/lib/etd',
  '/etc/etd',
  '/var/lib/etd',
  '/lib/systemd/system/etd.service',
  '/usr/lib/sysctl.d/90-etd.conf',
  '/usr/share/doc/etd',
];
/** Trees compared before and after (dpkg's and apt's own databases change by design). */
const SNAPSHOT_ROOTS = ['/usr', '/etc', '/var/lib', '/opt'];
const SNAPSHOT_SKIP = ['/var/lib/dpkg', '/var/lib/apt'];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The throwaway root: its holder process (in the private mount namespace) and the merged dir. */
let holder: ChildProcess | undefined;
let merged = '';

/** `cmd args` run inside the throwaway root. */
const inRoot = (cmd: string, args: readonly string[]): [string, string[]] => [
  'nsenter',
  ['-t', String(holder!.pid), '-m', '--', 'chroot', merged, cmd, ...args],
];
/** Where path `p` of the throwaway root is, seen from this process. */
const rootPath = (p: string): string => `/proc/${holder!.pid}/root${merged}${p}`;

/** Like run, inside the throwaway root. */
const runIn = (cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> =>
  run(...inRoot(cmd, args), opts);
const execIn = (cmd: string, args: readonly string[]): string => {
  const [c, a] = inRoot(cmd, args);
  return execFileSync(c, a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 256 * 1024 * 1024 });
};

/**
 * Starts the holder: unshare a private mount namespace, mount a tmpfs on `dir`, an overlayfs of /
 * on dir/merged with its upper and work dirs on that tmpfs, and proc, sys and dev inside it; then it
 * sleeps until killed. Resolves when the mounts are up.
 */
async function startThrowawayRoot(dir: string): Promise<void> {
  merged = path.join(dir, 'merged');
  const script = [
    'set -e',
    `mount -t tmpfs -o mode=0755 etd-deb-test "${dir}"`,
    `mkdir "${dir}/upper" "${dir}/work" "${merged}"`,
    `mount -t overlay overlay -o "lowerdir=/,upperdir=${dir}/upper,workdir=${dir}/work" "${merged}"`,
    `mount -t proc proc "${merged}/proc"`,
    `mount --rbind /sys "${merged}/sys"`,
    `mount --rbind /dev "${merged}/dev"`,
    `mount -t tmpfs tmpfs "${merged}/run"`,
    'echo ready',
    'exec sleep infinity',
  ].join('\n');
  holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  holder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  holder.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(() => out.includes('ready') || holder!.exitCode !== null, {
    timeout: 15_000,
    what: 'the throwaway root (overlayfs over /)',
  });
  if (!out.includes('ready')) throw new Error(`the throwaway root could not be set up (unshare + mount -t overlay): ${out}`);
}

async function run(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  try {
    const r = await execP(cmd, args, {
      maxBuffer: 64 * 1024 * 1024,
      timeout: opts.timeoutMs ?? 120_000,
      env: { ...process.env, ...opts.env },
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** dpkg with no terminal: a conffile prompt would fail instead of waiting. */
const dpkg = (...args: string[]) => runIn('dpkg', args, { env: { DEBIAN_FRONTEND: 'noninteractive' } });

/** Whether user (or group) `name` exists in the throwaway root, or with `host`, on this machine. */
const userExists = (name: string, db: 'passwd' | 'group' = 'passwd', host = false) => {
  try {
    if (host) execFileSync('getent', [db, name], { stdio: 'ignore' });
    else execIn('getent', [db, name]);
    return true;
  } catch {
    return false;
  }
};

const packageStatus = (host = false): string => {
  try {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a template
    const args = ['-W', '-f=${db:Status-Abbrev}', 'etd'];
    return (
      host ? execFileSync('dpkg-query', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }) : execIn('dpkg-query', args)
    ).trim();
  } catch {
    return '';
  }
};

function snapshot(): string[] {
  const args = [
    ...SNAPSHOT_ROOTS,
    '-xdev',
    '(',
    ...SNAPSHOT_SKIP.flatMap((p, i) => [...(i ? ['-o'] : []), '-path', p]),
    ')',
    '-prune',
    '-o',
    '-printf',
    '%p %M %u:%g\n',
  ];
  return execIn('find', args).split('\n').filter(Boolean).sort();
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-deb-test-'));
/** The throwaway root's tmpfs (mounted only inside its mount namespace). */
const rootDir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-deb-root-'));
/** A directory inside the throwaway root for the package and the test's configs. */
const WORK = '/root/etd-deb-test';
let deb: string;
let version: string;
let before: string[] = [];
/** The install reached the throwaway root (so the host check at the end means something). */
let installedInRoot = false;
/** lintian's run, started once the package is built. */
let lintian: Promise<Run> | undefined;

describe.skipIf(skip)('the Debian package (npm run package), installed into a throwaway copy of this machine', () => {
  beforeAll(async () => {
    assertBuilt();
    const status = packageStatus(true);
    if (status && !status.startsWith('un') && status !== 'pn') {
      throw new Error(
        `the package etd is already on this machine (dpkg status "${status}"): this test installs and purges it in a copy of this machine, which would start with it. Remove it first: dpkg --purge etd`,
      );
    }
    for (const p of OURS) {
      if (fs.existsSync(p))
        throw new Error(
          `${p} already exists (another etd install, e.g. scripts/install.sh?): this test would replace it and its purge would delete it. Move it away first`,
        );
    }
    for (const db of ['passwd', 'group'] as const) {
      if (userExists('etd', db, true))
        throw new Error(
          `${db === 'passwd' ? 'the user' : 'the group'} etd already exists: the package's purge would delete it. Remove it first (userdel etd) if it is a leftover`,
        );
    }
    const built = await run(process.execPath, [SCRIPT, '--out', tmp], { timeoutMs: 300_000 });
    expect(built.code, built.stdout + built.stderr).toBe(0);
    deb = built.stdout.trim().split('\n').at(-1)!;
    // The version the script gave the package (packageVersion() now could differ: a file edited
    // while it built adds +git<hash>); the first test checks its shape against package.json.
    version = /^etd_(.+)_amd64\.deb$/.exec(path.basename(deb))?.[1] ?? packageVersion();
    // lintian reads only the .deb: it runs beside the install tests, its test awaits the result.
    lintian = run('lintian', ['--tag-display-limit', '0', deb], { timeoutMs: 180_000 });
    await startThrowawayRoot(rootDir);
    fs.mkdirSync(rootPath(WORK), { recursive: true });
    fs.copyFileSync(deb, rootPath(`${WORK}/${path.basename(deb)}`));
    before = snapshot();
  }, 360_000);

  afterAll(async () => {
    // lintian reads the package in `tmp`: it ends before `tmp` goes.
    await lintian?.catch(() => undefined);
    // The throwaway root goes with its holder: its mount namespace, overlay and tmpfs.
    if (holder?.pid !== undefined && holder.exitCode === null) {
      const gone = new Promise((r) => holder!.once('exit', r));
      process.kill(holder.pid, 'SIGKILL');
      await gone;
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(rootDir, { recursive: true, force: true });
  }, 120_000);

  it('is named etd_<version>_amd64.deb, with the layout, dependencies and maintainer scripts the issue asks for', async () => {
    expect(path.basename(deb)).toBe(`etd_${version}_amd64.deb`);
    const pkgVersion = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(version).toMatch(new RegExp(`^${pkgVersion.replaceAll('.', '\\.')}(\\+git[0-9a-f]{7,})?$`));
    const info = await run('dpkg-deb', ['-f', deb]);
    expect(info.stdout).toContain(`Version: ${version}`);
    const depends = /^Depends: (.*)$/m.exec(info.stdout)?.[1] ?? '';
    for (const d of ['nodejs (>= 20)', 'libnftables1', 'nftables', 'iproute2', 'libsystemd0']) expect(depends.split(', ')).toContain(d);
    expect(depends).toMatch(/libc6 \(>= /); // from dpkg-shlibdeps on the native modules
    const files = (await run('dpkg-deb', ['-c', deb])).stdout.split('\n').map((l) => l.split(/\s+/).at(-1)?.replace(/^\./, '') ?? '');
    for (const f of [
      '/usr/bin/etd',
      '/usr/lib/etd/package.json',
      '/usr/lib/etd/native/build/Release/etd_transparent.node',
      '/usr/lib/etd/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
      '/usr/lib/etd/node_modules/fastify/package.json',
      '/usr/lib/etd/dist/ui/index.html',
      '/usr/lib/etd/dist/ui/app.js',
      '/lib/systemd/system/etd.service',
      '/etc/etd/etd.yaml',
      '/usr/lib/sysctl.d/90-etd.conf',
      '/usr/share/man/man8/etd.8.gz',
      '/usr/share/doc/etd/copyright',
      '/usr/share/doc/etd/routing.md',
    ]) {
      expect(files, f).toContain(f);
    }
    // Production modules only.
    for (const dev of ['vitest', 'typescript', 'nodemailer', 'smtp-server', 'esbuild', 'playwright-core', 'uplot'])
      expect(
        files.some((f) => f.startsWith(`/usr/lib/etd/node_modules/${dev}/`)),
        dev,
      ).toBe(false);
    expect((await run('dpkg-deb', ['-f', deb, 'Package'])).stdout.trim()).toBe('etd');
    const conffiles = execFileSync('dpkg-deb', ['--info', deb, 'conffiles'], { encoding: 'utf8' });
    expect(conffiles.trim()).toBe('/etc/etd/etd.yaml');
  });

  it('installs with dpkg -i: user etd, /var/lib/etd, the unit enabled but not started; etd version and etd check run from /usr/bin/etd', async () => {
    const r = await dpkg('-i', `${WORK}/${path.basename(deb)}`);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('installed and enabled, not started');
    expect(packageStatus()).toBe('ii');
    installedInRoot = fs.existsSync(rootPath('/usr/bin/etd')) && fs.existsSync(rootPath('/etc/etd/etd.yaml'));

    const pw = execIn('getent', ['passwd', 'etd']).trim().split(':');
    expect(Number(pw[2])).toBeLessThan(1000); // a system user
    expect(pw[5]).toBe('/var/lib/etd');
    expect(pw[6]).toBe('/usr/sbin/nologin');
    const stat = (p: string) => execIn('stat', ['-c', '%a %U:%G', p]).trim();
    expect(stat('/var/lib/etd')).toBe('750 etd:etd');
    expect(stat('/etc/etd/etd.yaml')).toBe('640 root:etd');
    // Enabled (the symlink deb-systemd-helper makes, with or without a running systemd), not started.
    expect(fs.readlinkSync(rootPath('/etc/systemd/system/multi-user.target.wants/etd.service'))).toBe('/lib/systemd/system/etd.service');
    expect((await runIn('pgrep', ['-u', 'etd'])).stdout.trim()).toBe('');

    const v = await runIn('/usr/bin/etd', ['version']);
    expect(v).toMatchObject({ code: 0 });
    expect(v.stdout.trim()).toBe(version);
    // As root and as the service's user (the unit runs etd as etd: it must be able to read its config).
    for (const argv of [['/usr/bin/etd'], ['runuser', '-u', 'etd', '--', '/usr/bin/etd']]) {
      const c = await runIn(argv[0]!, [...argv.slice(1), 'check', '-c', '/etc/etd/etd.yaml']);
      expect(c.code, `${argv.join(' ')} check: ${c.stdout}${c.stderr}`).toBe(0);
    }
    // The installed CLI uses the installed addon and node_modules, not this checkout's.
    const help = await runIn('/usr/bin/etd', ['--help']);
    expect(help.stdout).toBe(renderUsage());
  }, 120_000);

  it('the installed etd really runs: plain mode on loopback with the addon, SQLite state in /var/lib/etd and the API; libnftables answers etd rules show', async () => {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const apiPort = port + 1;
    const file = `${WORK}/run.yaml`;
    fs.writeFileSync(
      rootPath(file),
      `listeners:\n  - { name: p, address: 127.0.0.1, port: ${port}, mode: plain }\nupstream:\n  health: { enabled: false }\n  servers:\n    - { name: s, address: 127.0.0.1, port: ${port + 2} }\napi: { address: 127.0.0.1, port: ${apiPort} }\nstate: { path: /var/lib/etd/state.db }\n`,
    );
    // nsenter and chroot exec: the child's pid is etd's.
    const child = spawn(...inRoot('/usr/bin/etd', ['run', '-c', file]), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await waitFor(() => out.includes('"msg":"etd started"') || child.exitCode !== null, {
        timeout: 20_000,
        what: 'etd started',
        detail: () => out,
      });
      expect(out).toContain('"msg":"etd started"');
      const status = (await (await fetch(`http://127.0.0.1:${apiPort}/v1/status`)).json()) as {
        version: string;
        listeners: Array<{ name: string }>;
      };
      expect(status.version).toBe(version);
      expect(status.listeners.map((l) => l.name)).toEqual(['p']);
      // The dashboard ships in the package (no CDN, no build on the appliance).
      const ui = await fetch(`http://127.0.0.1:${apiPort}/ui/app.js`);
      expect(ui.status).toBe(200);
      expect((await ui.text()).length).toBeGreaterThan(10_000);
      expect(fs.existsSync(rootPath('/var/lib/etd/state.db'))).toBe(true);
    } finally {
      if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGTERM');
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
      if (code === 'hung' && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      expect(code, out).toBe(0);
    }
    // libnftables through koffi, read-only: etd's table is not installed on this host.
    const vip = `${WORK}/vip.yaml`;
    fs.writeFileSync(
      rootPath(vip),
      'listeners:\n  - { name: v, address: 127.0.0.1, port: 25, mode: vip }\nupstream:\n  source: clientip\n  servers:\n    - { name: s, address: 127.0.0.2 }\n',
    );
    const show = await runIn('/usr/bin/etd', ['rules', 'show', '-c', vip]);
    expect(`${show.stdout}${show.stderr}`).not.toMatch(/ETD_ERR_NFT_LOAD|ETD_ERR_NATIVE_LOAD/);
    expect(show.stdout).toMatch(/table inet etd/);
    // The live state was read through libnftables (without it the command prints "unavailable").
    expect(show.stdout).toMatch(/^# (nothing of etd is installed|all present|incomplete)/m);
  }, 60_000);

  it('the installed unit is systemd/etd.service with the package paths, and passes systemd-analyze verify', async () => {
    const unit = '/lib/systemd/system/etd.service';
    const text = fs.readFileSync(rootPath(unit), 'utf8');
    expect(text).toBe(packagedUnit(fs.readFileSync(path.join(ROOT, 'systemd/etd.service'), 'utf8')));
    expect(text).toMatch(/^ExecStart=\/usr\/bin\/etd run -c \/etc\/etd\/etd\.yaml$/m);
    expect(text).not.toContain('/opt/etd');
    const r = await runIn('systemd-analyze', ['verify', unit]);
    const ours = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('etd.service') || l.includes('/usr/bin/etd'));
    expect({ code: r.code, ours }, `systemd-analyze verify said:\n${r.stdout}${r.stderr}`).toEqual({ code: 0, ours: [] });
  });

  it('the man page etd(8) renders without warnings and documents every command and --probe', async () => {
    const r = await runIn('man', ['--warnings', '-l', '/usr/share/man/man8/etd.8.gz'], {
      env: { MANWIDTH: '100', MAN_KEEP_FORMATTING: '', PAGER: 'cat', MANPAGER: 'cat' },
    });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const text = r.stdout.replace(/.\x08/g, '');
    for (const word of [
      'etd run',
      'etd check',
      'etd rules',
      'etd doctor',
      'etd status',
      'etd version',
      '--probe ADDRESS[:PORT]',
      '/etc/etd/etd.yaml',
    ])
      expect(text).toContain(word);
  });

  it('an upgrade from the same version keeps an edited conffile (no prompt)', async () => {
    const edit = '\n# edited by the operator (deb test)\n';
    fs.appendFileSync(rootPath('/etc/etd/etd.yaml'), edit);
    const r = await dpkg('-i', `${WORK}/${path.basename(deb)}`);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(fs.readFileSync(rootPath('/etc/etd/etd.yaml'), 'utf8').endsWith(edit)).toBe(true);
    expect(fs.existsSync(rootPath('/etc/etd/etd.yaml.dpkg-new'))).toBe(false);
    expect((await runIn('/usr/bin/etd', ['check', '-c', '/etc/etd/etd.yaml'])).code).toBe(0);
    expect(fs.readlinkSync(rootPath('/etc/systemd/system/multi-user.target.wants/etd.service'))).toBe('/lib/systemd/system/etd.service');
  }, 120_000);

  it('dpkg -r removes the program and keeps config, state and user; dpkg --purge then leaves no file and no user behind', async () => {
    const removed = await dpkg('-r', 'etd');
    expect(removed.code, removed.stdout + removed.stderr).toBe(0);
    expect(packageStatus()).toBe('rc');
    for (const gone of ['/usr/bin/etd', '/usr/lib/etd', '/lib/systemd/system/etd.service', '/usr/share/man/man8/etd.8.gz'])
      expect(fs.existsSync(rootPath(gone)), gone).toBe(false);
    expect(fs.existsSync(rootPath('/etc/etd/etd.yaml'))).toBe(true);
    expect(fs.existsSync(rootPath('/var/lib/etd'))).toBe(true);
    expect(userExists('etd')).toBe(true);

    const purged = await dpkg('--purge', 'etd');
    expect(purged.code, purged.stdout + purged.stderr).toBe(0);
    expect(['', 'pn']).toContain(packageStatus());
    expect(userExists('etd')).toBe(false);
    expect(userExists('etd', 'group')).toBe(false);
    const after = snapshot();
    const [was, is] = [new Set(before), new Set(after)];
    const added = after.filter((l) => !was.has(l));
    const lost = before.filter((l) => !is.has(l));
    expect({ added, lost }).toEqual({ added: [], lost: [] });
  }, 120_000);

  it('lintian reports no errors, and every warning left is listed with its reason in docs/packaging.md', async () => {
    const r = await lintian!;
    const lines = `${r.stdout}\n${r.stderr}`.split('\n');
    expect(lines.filter((l) => /^E: /.test(l))).toEqual([]);
    const doc = fs.readFileSync(path.join(ROOT, 'docs/packaging.md'), 'utf8');
    const warnings = [...new Set(lines.map((l) => /^W: etd: ([a-z0-9-]+)/.exec(l)?.[1]).filter((t): t is string => t !== undefined))];
    for (const tag of warnings) expect(doc, `lintian warning ${tag} is not explained in docs/packaging.md`).toContain(`\`${tag}\``);
  }, 200_000);

  it('the host itself never had the package: no etd package, no /etc/etd or other file of it, no user or group etd', async () => {
    // The throwaway root had them (the tests above); the host must not.
    expect(installedInRoot).toBe(true);
    expect((await run('dpkg', ['-s', 'etd'])).code).not.toBe(0);
    expect(['', 'pn', 'un']).toContain(packageStatus(true));
    for (const p of OURS) expect(fs.existsSync(p), p).toBe(false);
    expect(userExists('etd', 'passwd', true)).toBe(false);
    expect(userExists('etd', 'group', true)).toBe(false);
  });
});
