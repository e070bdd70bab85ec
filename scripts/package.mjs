// Builds the Debian package etd_<version>_amd64.deb from a built checkout (npm run package): layout, maintainer scripts, man page, dpkg-deb.
//
// usage: node scripts/package.mjs [--out DIR]        (npm run package builds first)
//
// What goes where (docs/packaging.md explains each choice and the lintian warnings left):
//   /usr/lib/etd/            package.json, the compiled CLI tree, the dashboard (dist/ui), production node_modules, the addon
//   /usr/bin/etd             a wrapper that runs the system node on the CLI
//   /lib/systemd/system/etd.service   systemd/etd.service with the package's paths
//   /etc/etd/etd.yaml        config/etd.example.yaml, a conffile (an upgrade never overwrites an edit)
//   /usr/lib/sysctl.d/90-etd.conf     systemd/90-etd.conf (an admin overrides it in /etc/sysctl.d)
//   /usr/share/man/man8/etd.8.gz      rendered from src/cliSpec.ts (the source of --help and the README table)
//   /usr/share/doc/etd/      copyright, changelog, README.md, docs/*.md, the example config,
//                            examples/keepalived/ (the HA pair: configs, track script; docs/ha.md)
// Version: package.json's, plus "+git<hash>" when the git tree has uncommitted changes.
// Needs: dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip. Runs as any user: ownership
// is set by dpkg-deb --root-owner-group.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PREFIX = '/usr/lib/etd';
const MAINTAINER = 'etd developers <etd@users.noreply.github.com>';
// Runtime needs beyond the shared libraries dpkg-shlibdeps finds in the native modules.
// passwd: useradd/userdel in the maintainer scripts.
// nodejs (<< next major): better-sqlite3 is compiled against this Node.js major's V8 ABI
// (NODE_MODULE_VERSION); etd's own addon uses Node-API and would not mind.
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const DEPENDS = [
  'nodejs (>= 20)',
  ...(NODE_MAJOR > 20 ? [`nodejs (>= ${NODE_MAJOR})`] : []),
  `nodejs (<< ${NODE_MAJOR + 1})`,
  'libnftables1',
  'nftables',
  'iproute2',
  'libsystemd0',
  'passwd',
];
// Needed only to compile the addon (headers), not at run time.
const BUILD_ONLY_MODULES = new Set(['node_modules/node-addon-api']);
// Inside the production modules: sources, build leftovers, other platforms' binaries, docs.
const PRUNE = [
  /^node_modules\/better-sqlite3\/(deps|src|binding\.gyp)$/,
  /^node_modules\/better-sqlite3\/build\/(?!Release(\/|$))/,
  /^node_modules\/better-sqlite3\/build\/Release\/(?!better_sqlite3\.node$)/,
  /^node_modules\/koffi\/(vendor|doc|cnoke\.cjs)$/,
  /^node_modules\/koffi\/.*(\.(cc|hh|h|c|S|asm|def)|CMakeLists\.txt)$/,
  /^node_modules\/@koromix\/koffi-linux-x64\/musl_x64$/,
  /(^|\/)(README|CHANGELOG|HISTORY|CONTRIBUTING)(\.[a-z]+)?$/i,
  /\.(md|markdown|d\.ts|d\.mts|d\.cts|map|ts|tsbuildinfo)$/,
  /(^|\/)\.(npmignore|eslintrc(\.[a-z]+)?|editorconfig|travis\.yml|github|prettierrc(\.[a-z]+)?|nycrc|taprc)$/,
  /(^|\/)(test|tests|__tests__|benchmark|benchmarks|example|examples|docs|\.github|\.husky)$/,
  /(^|\/)\.git(attributes|ignore)$/,
  /^node_modules\/fastify\/(scripts|integration|types)$/,
  /^node_modules\/pino\/(index\.html|inc-version\.sh|favicon[^/]*|pretty-demo\.png)$/,
];

const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });

function fail(msg, hint) {
  console.error(`[etd package] FAILED: ${msg}`);
  if (hint) console.error(`[etd package] hint: ${hint}`);
  process.exit(1);
}

/** package.json's version, with +git<hash> when the working tree is dirty (not a git checkout: as is). */
export function packageVersion(root = ROOT) {
  const { version } = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  let dirty = '';
  let hash = '';
  try {
    dirty = sh('git', ['-C', root, 'status', '--porcelain']).trim();
    hash = sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']).trim();
  } catch {
    return version;
  }
  return dirty ? `${version}+git${hash}` : version;
}

/** The unit as the package installs it: systemd/etd.service with the package's paths instead of /opt/etd's. */
export function packagedUnit(text) {
  return text
    .replace(
      /^# Installed by scripts\/install\.sh to \/etc\/systemd\/system\/etd\.service; the files it points at are\n# \/opt\/etd \(the program\) and/m,
      '# Installed by the Debian package to /lib/systemd/system/etd.service (or by scripts/install.sh, from\n# a checkout, to /etc/systemd/system); the files it points at are /usr/bin/etd (the program) and',
    )
    .replaceAll('Documentation=file:/opt/etd/docs/operations.md', 'Documentation=man:etd(8) file:/usr/share/doc/etd/operations.md')
    .replaceAll(/\/opt\/etd\/dist\/(src\/)?cli\.js/g, '/usr/bin/etd');
}

/** The wrapper /usr/bin/etd: the system node runs the installed CLI. */
export function wrapper(cliPath) {
  return `#!/bin/sh
# etd: runs etd's command line with the system Node.js (installed by the etd Debian package).
exec /usr/bin/node ${PREFIX}/${cliPath} "$@"
`;
}

function copyTree(from, to, skip = () => false) {
  fs.cpSync(from, to, { recursive: true, dereference: true, filter: (src) => !skip(path.relative(ROOT, src)) });
}

/** The lock file's production packages present on disk (optional ones for other platforms are absent). */
function productionModules() {
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8'));
  return Object.entries(lock.packages)
    .filter(([p, meta]) => p.startsWith('node_modules/') && !meta.dev && !BUILD_ONLY_MODULES.has(p))
    .map(([p]) => p)
    .filter((p) => fs.existsSync(path.join(ROOT, p)));
}

/** Every regular file under dir, relative to it. */
function filesUnder(dir) {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath ?? e.path, e.name)));
}

function shlibsDepends(binaries) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-shlibs-'));
  try {
    fs.mkdirSync(path.join(tmp, 'debian'));
    fs.writeFileSync(path.join(tmp, 'debian', 'control'), 'Source: etd\n\nPackage: etd\nArchitecture: amd64\n');
    const out = sh('dpkg-shlibdeps', ['-O', ...binaries.map((b) => `-e${b}`)], { cwd: tmp });
    const m = /^shlibs:Depends=(.*)$/m.exec(out);
    return m
      ? m[1]
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : [];
  } catch (e) {
    fail(`dpkg-shlibdeps: ${e.stderr || e.message}`, 'apt-get install dpkg-dev');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function write(file, content, mode = 0o644) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  fs.chmodSync(file, mode);
}

function gzipTo(file, content) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  // -n: no name/timestamp, so the same input gives the same bytes (lintian: reproducible).
  fs.writeFileSync(file, execFileSync('gzip', ['-9n'], { input: content }));
  fs.chmodSync(file, 0o644);
}

function rfc2822(date) {
  return date.toUTCString().replace(/GMT$/, '+0000');
}

export async function build(outDir) {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const cliPath = pkg.bin.etd.replace(/^\.\//, '');
  const cliTree = path.dirname(cliPath); // dist/src: the agent (bench/ and lab/ are built beside it, not shipped)
  const addon = 'native/build/Release/etd_transparent.node';
  for (const need of [cliPath, addon, 'dist/ui/index.html', 'node_modules']) {
    if (!fs.existsSync(path.join(ROOT, need)))
      fail(`${need} is missing: this is not a built checkout`, 'npm ci && npm run build (npm run package does both)');
  }
  const version = packageVersion();
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-deb-'));
  try {
    const lib = path.join(stage, PREFIX.slice(1));
    // The program.
    write(
      path.join(lib, 'package.json'),
      `${JSON.stringify({ name: pkg.name, version, type: pkg.type, bin: pkg.bin, dependencies: pkg.dependencies }, null, 2)}\n`,
    );
    copyTree(path.join(ROOT, cliTree), path.join(lib, cliTree), (rel) => /\.(d\.ts|map)$/.test(rel));
    copyTree(path.join(ROOT, addon), path.join(lib, addon));
    // The dashboard (GET /ui/): its files are built by npm run build; uPlot is bundled into them.
    copyTree(path.join(ROOT, 'dist/ui'), path.join(lib, 'dist/ui'));
    for (const mod of productionModules()) {
      copyTree(
        path.join(ROOT, mod),
        path.join(lib, mod),
        (rel) =>
          rel !== mod && (rel.startsWith(`${mod}/node_modules/`) || rel === `${mod}/node_modules` || PRUNE.some((re) => re.test(rel))),
      );
    }
    // Scripts with a shebang 0755 (the CLI among them), everything else 0644 (node loads the .node
    // modules, it does not execute them); ELF modules stripped.
    for (const rel of filesUnder(lib)) {
      const file = path.join(lib, rel);
      const head = fs.readFileSync(file).subarray(0, 4);
      const elf = head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
      fs.chmodSync(file, head.subarray(0, 2).toString() === '#!' ? 0o755 : 0o644);
      if (elf) sh('strip', ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', file]);
    }
    // Pruning can leave directories empty.
    sh('find', [lib, '-mindepth', '1', '-type', 'd', '-empty', '-delete']);
    const binaries = filesUnder(lib)
      .filter((rel) => rel.endsWith('.node'))
      .map((rel) => path.join(lib, rel));

    write(path.join(stage, 'usr/bin/etd'), wrapper(cliPath), 0o755);
    write(
      path.join(stage, 'lib/systemd/system/etd.service'),
      packagedUnit(fs.readFileSync(path.join(ROOT, 'systemd/etd.service'), 'utf8')),
    );
    write(path.join(stage, 'etc/etd/etd.yaml'), fs.readFileSync(path.join(ROOT, 'config/etd.example.yaml')));
    write(path.join(stage, 'usr/lib/sysctl.d/90-etd.conf'), fs.readFileSync(path.join(ROOT, 'systemd/90-etd.conf')));

    // The man page, from the same description as --help and the README's CLI table.
    const spec = path.join(ROOT, cliTree, 'cliSpec.js');
    const date = new Date(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000) * 1000);
    const { renderMan } = /** @type {{ renderMan(v: string, d: string): string }} */ (await import(pathToFileURL(spec).href));
    gzipTo(path.join(stage, 'usr/share/man/man8/etd.8.gz'), renderMan(version, date.toISOString().slice(0, 10)));

    // Documentation.
    const doc = path.join(stage, 'usr/share/doc/etd');
    write(path.join(doc, 'copyright'), copyright(pkg));
    gzipTo(
      path.join(doc, 'changelog.gz'),
      `etd (${version}) unstable; urgency=medium\n\n  * Built by npm run package${gitHash() ? ` from git ${gitHash()}` : ''}; see the project's git history.\n\n -- ${MAINTAINER}  ${rfc2822(date)}\n`,
    );
    write(path.join(doc, 'README.md'), fs.readFileSync(path.join(ROOT, 'README.md')));
    for (const f of fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')))
      write(path.join(doc, f), fs.readFileSync(path.join(ROOT, 'docs', f)));
    write(path.join(doc, 'etd.example.yaml'), fs.readFileSync(path.join(ROOT, 'config/etd.example.yaml')));
    // The HA pair's example: nothing is configured, the operator copies it (docs/ha.md). Scripts
    // keep their executable bit, which lintian accepts under examples/.
    const kaSrc = path.join(ROOT, 'examples/keepalived');
    for (const f of fs.readdirSync(kaSrc)) {
      const text = fs.readFileSync(path.join(kaSrc, f));
      write(path.join(doc, 'examples/keepalived', f), text, text.subarray(0, 2).toString() === '#!' ? 0o755 : 0o644);
    }

    // Control area.
    const control = path.join(stage, 'DEBIAN');
    const depends = [...shlibsDepends(binaries), ...DEPENDS];
    const sizeKiB = Number(sh('du', ['-sk', '--exclude=DEBIAN', stage]).split(/\s/)[0]);
    write(
      path.join(control, 'control'),
      [
        'Package: etd',
        `Version: ${version}`,
        'Architecture: amd64',
        `Maintainer: ${MAINTAINER}`,
        `Installed-Size: ${sizeKiB}`,
        `Depends: ${depends.join(', ')}`,
        // An HA pair (docs/ha.md): keepalived runs the VRRP, its track script asks etd's API with curl.
        'Suggests: keepalived, curl',
        'Section: net',
        'Priority: optional',
        'Description: SMTP early-talker detection: a transparent proxy in front of mail servers',
        ' etd holds every new port-25 connection silently for a few seconds. A client',
        " that talks before the server's greeting is a spam bot (RFC 5321 4.3.1) and is",
        ' dropped; a client that waits is connected to a backend SMTP server from its',
        ' own IP address (IP_TRANSPARENT, nftables TPROXY, policy routing), and etd',
        ' relays the session. Managed over a local REST API; etd doctor checks the host.',
        '',
      ].join('\n'),
    );
    write(path.join(control, 'conffiles'), '/etc/etd/etd.yaml\n');
    for (const script of ['postinst', 'prerm', 'postrm'])
      write(path.join(control, script), fs.readFileSync(path.join(ROOT, 'packaging', script)), 0o755);
    const sums = filesUnder(stage)
      .filter((rel) => !rel.startsWith('DEBIAN/'))
      .sort()
      .map((rel) => `${sh('md5sum', [path.join(stage, rel)]).split(' ')[0]}  ${rel}`);
    write(path.join(control, 'md5sums'), `${sums.join('\n')}\n`);

    fs.mkdirSync(outDir, { recursive: true });
    const deb = path.join(outDir, `etd_${version}_amd64.deb`);
    sh('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', stage, deb]);
    return deb;
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

function gitHash() {
  try {
    return sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']).trim();
  } catch {
    return '';
  }
}

function copyright(pkg) {
  return `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: etd
Comment: The bundled Node.js modules in ${PREFIX}/node_modules keep their own license
 files next to their code; each module's package.json names its license.

Files: *
Copyright: 2025-2026 etd developers
License: ${pkg.license}

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.
`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const i = process.argv.indexOf('--out');
  const out = i > 0 ? path.resolve(process.argv[i + 1] ?? '.') : ROOT;
  if (process.argv.includes('-h') || process.argv.includes('--help')) {
    console.log('usage: node scripts/package.mjs [--out DIR]   (npm run package: build, then this)');
    process.exit(0);
  }
  const deb = await build(out);
  console.log(deb);
}
