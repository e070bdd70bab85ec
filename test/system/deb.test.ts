// The Debian package, for real: built by scripts/package.mjs, checked by lintian, installed into this machine with dpkg, run, upgraded, removed and purged without a trace.
//
// Root only (it installs into the real system): outside CI a non-root run skips it and says so; in
// CI it fails instead. It refuses to start when anything it would create already exists (the
// package, /usr/bin/etd, the user etd, /etc/etd, /var/lib/etd, /usr/lib/etd): those belong to
// someone else, and a purge would delete them. Whatever happens, afterAll purges the package and
// removes the user it created.

import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderUsage } from '../../src/cliSpec.js';
import { assertBuilt } from '../helpers/cli.js';
import { skipUnlessRoot, skipWithout } from '../helpers/privileged.js';
// @ts-expect-error: a plain ES module without type declarations
import { packagedUnit, packageVersion } from '../../scripts/package.mjs';

const execP = promisify(execFile);
const ROOT = path.join(__dirname, '../..');
const SCRIPT = path.join(ROOT, 'scripts/package.mjs');
const skip =
  skipUnlessRoot('Debian package install test') ||
  skipWithout('dpkg-deb', 'dpkg', 'Debian package build') ||
  skipWithout('dpkg-shlibdeps', 'dpkg-dev', 'Debian package build') ||
  skipWithout('lintian', 'lintian', 'lintian of the package') ||
  skipWithout('systemd-analyze', 'systemd', 'systemd-analyze verify of the installed unit') ||
  skipWithout('man', 'man-db', 'the installed man page');

/** Everything the package creates or its scripts touch; each must be absent before the test. */
const OURS = ['/usr/bin/etd', '/usr/lib/etd', '/etc/etd', '/var/lib/etd', '/lib/systemd/system/etd.service', '/usr/lib/sysctl.d/90-etd.conf', '/usr/share/doc/etd'];
/** Trees compared before and after (dpkg's and apt's own databases change by design). */
const SNAPSHOT_ROOTS = ['/usr', '/etc', '/var/lib', '/opt'];
const SNAPSHOT_SKIP = ['/var/lib/dpkg', '/var/lib/apt'];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  try {
    const r = await execP(cmd, args, { maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 120_000, env: { ...process.env, ...opts.env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** dpkg with no terminal: a conffile prompt would fail instead of waiting. */
const dpkg = (...args: string[]) => run('dpkg', args, { env: { DEBIAN_FRONTEND: 'noninteractive' } });

const userExists = (name: string, db: 'passwd' | 'group' = 'passwd') => {
  try {
    execFileSync('getent', [db, name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

const packageStatus = (): string => {
  try {
    return execFileSync('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', 'etd'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
};

function snapshot(): string[] {
  const args = [...SNAPSHOT_ROOTS, '-xdev', '(', ...SNAPSHOT_SKIP.flatMap((p, i) => [...(i ? ['-o'] : []), '-path', p]), ')', '-prune', '-o', '-printf', '%p %M %u:%g\n'];
  return execFileSync('find', args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 }).split('\n').filter(Boolean).sort();
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-deb-test-'));
let deb: string;
let version: string;
let before: string[] = [];
let touched = false;

describe.skipIf(skip)('the Debian package (npm run package), installed on this machine', () => {
  beforeAll(async () => {
    assertBuilt();
    const status = packageStatus();
    if (status && !status.startsWith('un') && status !== 'pn') {
      throw new Error(`the package etd is already on this machine (dpkg status "${status}"): this test installs and purges it, so it will not touch an install that is not its own. Remove it first: dpkg --purge etd`);
    }
    for (const p of OURS) {
      if (fs.existsSync(p)) throw new Error(`${p} already exists (another etd install, e.g. scripts/install.sh?): this test would replace it and its purge would delete it. Move it away first`);
    }
    for (const db of ['passwd', 'group'] as const) {
      if (userExists('etd', db)) throw new Error(`${db === 'passwd' ? 'the user' : 'the group'} etd already exists: the package's purge would delete it. Remove it first (userdel etd) if it is a leftover`);
    }
    const built = await run(process.execPath, [SCRIPT, '--out', tmp], { timeoutMs: 300_000 });
    expect(built.code, built.stdout + built.stderr).toBe(0);
    deb = built.stdout.trim().split('\n').at(-1)!;
    version = packageVersion();
    before = snapshot();
  }, 360_000);

  afterAll(async () => {
    if (touched) {
      const purge = await dpkg('--purge', 'etd');
      if (purge.code !== 0) console.error(`cleanup: dpkg --purge etd failed:\n${purge.stdout}${purge.stderr}`);
      // It did not exist before (checked): a failed purge must not leave it.
      if (userExists('etd')) await run('userdel', ['etd']);
      if (userExists('etd', 'group')) await run('groupdel', ['etd']);
    }
    fs.rmSync(tmp, { recursive: true, force: true });
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
    for (const dev of ['vitest', 'typescript', 'nodemailer', 'smtp-server', 'esbuild', 'playwright-core', 'uplot']) expect(files.some((f) => f.startsWith(`/usr/lib/etd/node_modules/${dev}/`)), dev).toBe(false);
    expect((await run('dpkg-deb', ['-f', deb, 'Package'])).stdout.trim()).toBe('etd');
    const conffiles = execFileSync('dpkg-deb', ['--info', deb, 'conffiles'], { encoding: 'utf8' });
    expect(conffiles.trim()).toBe('/etc/etd/etd.yaml');
  });

  it('lintian reports no errors, and every warning left is listed with its reason in docs/packaging.md', async () => {
    const r = await run('lintian', ['--tag-display-limit', '0', deb], { timeoutMs: 180_000 });
    const lines = `${r.stdout}\n${r.stderr}`.split('\n');
    expect(lines.filter((l) => /^E: /.test(l))).toEqual([]);
    const doc = fs.readFileSync(path.join(ROOT, 'docs/packaging.md'), 'utf8');
    const warnings = [...new Set(lines.map((l) => /^W: etd: ([a-z0-9-]+)/.exec(l)?.[1]).filter((t): t is string => t !== undefined))];
    for (const tag of warnings) expect(doc, `lintian warning ${tag} is not explained in docs/packaging.md`).toContain(`\`${tag}\``);
  }, 200_000);

  it('installs with dpkg -i: user etd, /var/lib/etd, the unit enabled but not started; etd version and etd check run from /usr/bin/etd', async () => {
    touched = true;
    const r = await dpkg('-i', deb);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('installed and enabled, not started');
    expect(packageStatus()).toBe('ii');

    const pw = execFileSync('getent', ['passwd', 'etd'], { encoding: 'utf8' }).trim().split(':');
    expect(Number(pw[2])).toBeLessThan(1000); // a system user
    expect(pw[5]).toBe('/var/lib/etd');
    expect(pw[6]).toBe('/usr/sbin/nologin');
    const stat = (p: string) => execFileSync('stat', ['-c', '%a %U:%G', p], { encoding: 'utf8' }).trim();
    expect(stat('/var/lib/etd')).toBe('750 etd:etd');
    expect(stat('/etc/etd/etd.yaml')).toBe('640 root:etd');
    // Enabled (the symlink deb-systemd-helper makes, with or without a running systemd), not started.
    expect(fs.readlinkSync('/etc/systemd/system/multi-user.target.wants/etd.service')).toBe('/lib/systemd/system/etd.service');
    expect((await run('pgrep', ['-u', 'etd'])).stdout.trim()).toBe('');

    const v = await run('/usr/bin/etd', ['version']);
    expect(v).toMatchObject({ code: 0 });
    expect(v.stdout.trim()).toBe(version);
    // As root and as the service's user (the unit runs etd as etd: it must be able to read its config).
    for (const argv of [['/usr/bin/etd'], ['runuser', '-u', 'etd', '--', '/usr/bin/etd']]) {
      const c = await run(argv[0]!, [...argv.slice(1), 'check', '-c', '/etc/etd/etd.yaml']);
      expect(c.code, `${argv.join(' ')} check: ${c.stdout}${c.stderr}`).toBe(0);
    }
    // The installed CLI uses the installed addon and node_modules, not this checkout's.
    const help = await run('/usr/bin/etd', ['--help']);
    expect(help.stdout).toBe(renderUsage());
  }, 120_000);

  it('the installed etd really runs: plain mode on loopback with the addon, SQLite state in /var/lib/etd and the API; libnftables answers etd rules show', async () => {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const apiPort = port + 1;
    const file = path.join(tmp, 'run.yaml');
    fs.writeFileSync(
      file,
      `listeners:\n  - { name: p, address: 127.0.0.1, port: ${port}, mode: plain }\nupstream:\n  health: { enabled: false }\n  servers:\n    - { name: s, address: 127.0.0.1, port: ${port + 2} }\napi: { address: 127.0.0.1, port: ${apiPort} }\nstate: { path: /var/lib/etd/state.db }\n`,
    );
    const child = spawn('/usr/bin/etd', ['run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const until = Date.now() + 20_000;
      while (!out.includes('"msg":"etd started"') && Date.now() < until && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
      expect(out).toContain('"msg":"etd started"');
      const status = (await (await fetch(`http://127.0.0.1:${apiPort}/v1/status`)).json()) as { version: string; listeners: Array<{ name: string }> };
      expect(status.version).toBe(version);
      expect(status.listeners.map((l) => l.name)).toEqual(['p']);
      // The dashboard ships in the package (no CDN, no build on the appliance).
      const ui = await fetch(`http://127.0.0.1:${apiPort}/ui/app.js`);
      expect(ui.status).toBe(200);
      expect((await ui.text()).length).toBeGreaterThan(10_000);
      expect(fs.existsSync('/var/lib/etd/state.db')).toBe(true);
    } finally {
      if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGTERM');
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
      if (code === 'hung' && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      expect(code, out).toBe(0);
    }
    // libnftables through koffi, read-only: etd's table is not installed on this host.
    const vip = path.join(tmp, 'vip.yaml');
    fs.writeFileSync(vip, 'listeners:\n  - { name: v, address: 127.0.0.1, port: 25, mode: vip }\nupstream:\n  source: clientip\n  servers:\n    - { name: s, address: 127.0.0.2 }\n');
    const show = await run('/usr/bin/etd', ['rules', 'show', '-c', vip]);
    expect(`${show.stdout}${show.stderr}`).not.toMatch(/ETD_ERR_NFT_LOAD|ETD_ERR_NATIVE_LOAD/);
    expect(show.stdout).toMatch(/table inet etd/);
    // The live state was read through libnftables (without it the command prints "unavailable").
    expect(show.stdout).toMatch(/^# (nothing of etd is installed|all present|incomplete)/m);
  }, 60_000);

  it('the installed unit is systemd/etd.service with the package paths, and passes systemd-analyze verify', async () => {
    const unit = '/lib/systemd/system/etd.service';
    const text = fs.readFileSync(unit, 'utf8');
    expect(text).toBe(packagedUnit(fs.readFileSync(path.join(ROOT, 'systemd/etd.service'), 'utf8')));
    expect(text).toMatch(/^ExecStart=\/usr\/bin\/etd run -c \/etc\/etd\/etd\.yaml$/m);
    expect(text).not.toContain('/opt/etd');
    const r = await run('systemd-analyze', ['verify', unit]);
    const ours = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('etd.service') || l.includes('/usr/bin/etd'));
    expect({ code: r.code, ours }, `systemd-analyze verify said:\n${r.stdout}${r.stderr}`).toEqual({ code: 0, ours: [] });
  });

  it('the man page etd(8) renders without warnings and documents every command and --probe', async () => {
    const r = await run('man', ['--warnings', '-l', '/usr/share/man/man8/etd.8.gz'], { env: { MANWIDTH: '100', MAN_KEEP_FORMATTING: '', PAGER: 'cat', MANPAGER: 'cat' } });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const text = r.stdout.replace(/.\x08/g, '');
    for (const word of ['etd run', 'etd check', 'etd rules', 'etd doctor', 'etd status', 'etd version', '--probe ADDRESS[:PORT]', '/etc/etd/etd.yaml']) expect(text).toContain(word);
  });

  it('an upgrade from the same version keeps an edited conffile (no prompt)', async () => {
    const edit = '\n# edited by the operator (deb test)\n';
    fs.appendFileSync('/etc/etd/etd.yaml', edit);
    const r = await dpkg('-i', deb);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(fs.readFileSync('/etc/etd/etd.yaml', 'utf8').endsWith(edit)).toBe(true);
    expect(fs.existsSync('/etc/etd/etd.yaml.dpkg-new')).toBe(false);
    expect((await run('/usr/bin/etd', ['check', '-c', '/etc/etd/etd.yaml'])).code).toBe(0);
    expect(fs.readlinkSync('/etc/systemd/system/multi-user.target.wants/etd.service')).toBe('/lib/systemd/system/etd.service');
  }, 120_000);

  it('dpkg -r removes the program and keeps config, state and user; dpkg --purge then leaves no file and no user behind', async () => {
    const removed = await dpkg('-r', 'etd');
    expect(removed.code, removed.stdout + removed.stderr).toBe(0);
    expect(packageStatus()).toBe('rc');
    for (const gone of ['/usr/bin/etd', '/usr/lib/etd', '/lib/systemd/system/etd.service', '/usr/share/man/man8/etd.8.gz']) expect(fs.existsSync(gone), gone).toBe(false);
    expect(fs.existsSync('/etc/etd/etd.yaml')).toBe(true);
    expect(fs.existsSync('/var/lib/etd')).toBe(true);
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
});
