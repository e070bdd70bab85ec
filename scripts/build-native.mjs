// Builds native/build/Release/etd_transparent.node with node-gyp, offline, against the Node headers on this machine.
//
// Run by `npm install` / `npm ci` (the package's "install" script) and by hand:
//   node scripts/build-native.mjs
// It never downloads anything: node-gyp gets --nodedir pointing at installed headers
// (include/node/node_api.h + common.gypi). Environment overrides:
//   ETD_NODEDIR / npm_config_nodedir   where Node's headers live (a dir holding include/node)
//   ETD_NODE_GYP / npm_config_node_gyp path to node-gyp's bin/node-gyp.js
// On any failure it exits non-zero with the compiler output and what to install.
// Sanitizers: node-gyp takes CXXFLAGS/LDFLAGS from the environment. AddressSanitizer (the load
// check below and the tests then need the runtime preloaded):
//   export LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0
//   CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS=-fsanitize=address node scripts/build-native.mjs
//   npx vitest run test/integration/engine.test.ts test/integration/guard.test.ts
// and a plain `node scripts/build-native.mjs` (without LD_PRELOAD) afterwards.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const output = path.join(nativeDir, 'build', 'Release', 'etd_transparent.node');
const HINT = 'install a C++ toolchain and Python (Debian: apt-get install g++ make python3), then run: npm run install';

const say = (msg) => console.log(`[etd build-native] ${msg}`);
const HEADERS_HINT =
  'install the Node.js headers matching this node (the nodejs packages put them in <prefix>/include/node), or set ETD_NODEDIR';
function fail(msg, detail, hint = HINT) {
  console.error(`[etd build-native] FAILED: ${msg}`);
  if (detail) console.error(detail);
  console.error(`[etd build-native] hint: ${hint}`);
  process.exit(1);
}

if (process.platform !== 'linux') {
  // etd is Linux-only (IP_TRANSPARENT, TPROXY). Let installs on other systems succeed so plain
  // mode and unit tests can be developed there; loading the addon will then say it is missing.
  say(`skipped: the addon is Linux-only (this is ${process.platform}); transparent modes will not be available`);
  process.exit(0);
}

/** The first candidate that exists, with the reason it was chosen; null when none does. */
function firstExisting(candidates) {
  for (const [why, p] of candidates) if (p && existsSync(p)) return { why, path: p };
  return null;
}

function findNodeGyp() {
  const candidates = [
    ['$ETD_NODE_GYP', process.env.ETD_NODE_GYP],
    ['$npm_config_node_gyp (set by npm)', process.env.npm_config_node_gyp],
  ];
  try {
    candidates.push(['node-gyp in node_modules', createRequire(path.join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js')]);
  } catch {
    // not installed locally; npm's bundled copy below is the usual one
  }
  if (process.env.npm_execpath) {
    candidates.push([
      "npm's bundled node-gyp (via $npm_execpath)",
      path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    ]);
  }
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  candidates.push([
    "npm's bundled node-gyp (next to this node)",
    path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ]);
  if (process.env.ETD_NODE_GYP && !existsSync(process.env.ETD_NODE_GYP)) {
    fail(`ETD_NODE_GYP=${process.env.ETD_NODE_GYP} does not exist`);
  }
  const found = firstExisting(candidates);
  if (!found) {
    fail(
      'node-gyp not found',
      `looked at:\n${candidates.map(([why, p]) => `  ${p ?? '(unset)'}  [${why}]`).join('\n')}\n` +
        'set ETD_NODE_GYP=/path/to/node-gyp/bin/node-gyp.js, or install npm (it bundles node-gyp)',
    );
  }
  return found;
}

/** Major.minor.patch of the headers under dir/include/node, or null. */
function headerVersion(dir) {
  try {
    const h = readFileSync(path.join(dir, 'include', 'node', 'node_version.h'), 'utf8');
    const n = (k) => h.match(new RegExp(`#define ${k} (\\d+)`))?.[1];
    const [a, b, c] = [n('NODE_MAJOR_VERSION'), n('NODE_MINOR_VERSION'), n('NODE_PATCH_VERSION')];
    return a && b && c ? `${a}.${b}.${c}` : null;
  } catch {
    return null;
  }
}

function findNodeDir() {
  const candidates = [
    ['$ETD_NODEDIR', process.env.ETD_NODEDIR],
    ['$npm_config_nodedir (npm config nodedir)', process.env.npm_config_nodedir],
    ['the prefix of this node binary', path.resolve(path.dirname(process.execPath), '..')],
    ['/usr', '/usr'],
    ['/usr/local', '/usr/local'],
  ];
  const tried = [];
  for (const [why, dir] of candidates) {
    if (!dir) continue;
    const usable = ['common.gypi', 'node_api.h', 'node_version.h'].every((f) => existsSync(path.join(dir, 'include', 'node', f)));
    // An explicit override that does not work is a mistake to report, not to step around.
    if (!usable && why === '$ETD_NODEDIR') {
      fail(`ETD_NODEDIR=${dir} has no include/node/{common.gypi,node_api.h,node_version.h}`, '', HEADERS_HINT);
    }
    tried.push(`  ${dir}/include/node  [${why}]${usable ? '' : ' — missing common.gypi/node_api.h/node_version.h'}`);
    if (usable) return { why, path: dir, version: headerVersion(dir), tried };
  }
  fail(
    'no Node.js headers found on this machine (the build does not download them)',
    `looked at:\n${tried.join('\n')}\nthe build never downloads headers; see the hint`,
    HEADERS_HINT,
  );
  return null;
}

const quiet = (text) =>
  text
    .split('\n')
    .filter((l) => !l.startsWith('gyp info'))
    .join('\n');

const gyp = findNodeGyp();
const nodedir = findNodeDir();
const running = process.versions.node;
say(`node ${running} at ${process.execPath}`);
say(`node-gyp: ${gyp.path}  [${gyp.why}]`);
say(`headers:  ${nodedir.path}/include/node (version ${nodedir.version ?? 'unknown'})  [${nodedir.why}]`);
if (nodedir.version && nodedir.version.split('.')[0] !== running.split('.')[0]) {
  // Node-API is ABI-stable, so other headers still build a working addon; say so anyway.
  say(`note: headers are for node ${nodedir.version}, running node ${running}; Node-API keeps the addon compatible`);
}

const args = [gyp.path, 'rebuild', `--directory=${nativeDir}`, `--nodedir=${nodedir.path}`, '--jobs=max'];
say(`running: ${process.execPath} ${args.join(' ')}`);
// Keep npm's own config (e.g. npm_config_dist_url) from making node-gyp reach for the network.
const env = { ...process.env, npm_config_nodedir: nodedir.path };
const res = spawnSync(process.execPath, args, { cwd: nativeDir, env, encoding: 'utf8' });
if (res.error) fail(`could not run node-gyp: ${res.error.message}`);
if (res.status !== 0) {
  fail(
    `node-gyp exited with ${res.status ?? `signal ${res.signal}`}`,
    // node-gyp's "gyp info" lines are progress chatter; the compiler's output is what matters.
    `--- node-gyp stdout ---\n${res.stdout}\n--- node-gyp stderr ---\n${quiet(res.stderr)}`,
  );
}
if (!existsSync(output)) {
  fail(`node-gyp succeeded but ${output} is missing`, `${res.stdout}\n${res.stderr}`);
}

// Prove the result loads in this node before declaring success.
try {
  const addon = createRequire(import.meta.url)(output);
  const names = Object.keys(addon).sort().join(', ');
  say(`built ${path.relative(root, output)} (exports: ${names})`);
} catch (e) {
  fail(`built ${output} but it does not load: ${e instanceof Error ? e.message : String(e)}`);
}
