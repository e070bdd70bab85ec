// `npm run lint` (and `npm run format` with --write): Biome for the TypeScript/JavaScript/JSON/CSS tree, clang-format for native/.
//
// Biome lints and formats in one pass (the rules and style live in biome.json); clang-format
// checks native/src against native/.clang-format. Both must pass in CI (.ci/run runs this).
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const write = process.argv.includes('--write');
const run = (cmd, args) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });

let failed = false;
const biome = run(path.join(root, 'node_modules', '.bin', 'biome'), ['check', ...(write ? ['--write'] : []), '.']);
if (biome.status !== 0) failed = true;

const nativeDir = path.join(root, 'native', 'src');
const sources = readdirSync(nativeDir)
  .filter((f) => /\.(cc|h)$/.test(f))
  .map((f) => path.join('native', 'src', f));
const clang = run('clang-format', write ? ['-i', ...sources] : ['--dry-run', '--Werror', ...sources]);
if (clang.error) {
  console.error('clang-format is not installed: apt-get install clang-format (it checks native/src against native/.clang-format)');
  failed = true;
} else if (clang.status !== 0) {
  console.error('native/src is not clang-formatted: run npm run format');
  failed = true;
}
process.exit(failed ? 1 : 0);
