// README.md's Development tree stays true: every directory and src/ file it names exists, and every src/ directory is in it (derived from the real tree).

import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';

const root = path.join(__dirname, '../..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');

/** The fenced block under "## Development". */
function developmentTree(): string[] {
  const section = readme.slice(readme.indexOf('\n## Development'));
  const m = /```\n([\s\S]*?)\n```/.exec(section);
  if (!m) throw new Error('README.md has no fenced tree under "## Development"');
  return m[1]!.split('\n');
}

/**
 * The paths the tree names: a line's first word when it starts the line (a top-level directory,
 * `native/src/`) or is indented two spaces under `src/` (`  config/`, `  cli.ts`); always followed
 * by two spaces or more, which tells a name from a continued description.
 */
function namedPaths(lines: readonly string[]): string[] {
  const out: string[] = [];
  let inSrc = false;
  for (const line of lines) {
    const top = /^([\w./-]+\/)\s{2,}/.exec(line);
    if (top) {
      inSrc = top[1] === 'src/';
      out.push(top[1]!);
      continue;
    }
    const entry = /^ {2}([\w.-]+\/?)\s{2,}/.exec(line);
    if (entry && inSrc) out.push(`src/${entry[1]}`);
  }
  return out;
}

const named = namedPaths(developmentTree());

it('finds the tree and its src/ entries', () => {
  expect(named).toContain('src/');
  expect(named.filter((p) => p.startsWith('src/') && p !== 'src/').length).toBeGreaterThan(10);
});

it('names only directories and files that exist', () => {
  for (const p of named) expect(fs.existsSync(path.join(root, p)), `README's Development tree names ${p}, which does not exist`).toBe(true);
});

it('names every directory of src/', () => {
  const dirs = fs
    .readdirSync(path.join(root, 'src'), { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => `src/${d.name}/`);
  for (const d of dirs) expect(named, `README's Development tree lacks ${d}`).toContain(d);
});

it('does not place a top-level src/ file inside a directory it is not in', () => {
  // e.g. "api/ … metrics.ts, stats.ts" while they live in src/: a file named in a directory's line must be there.
  const lines = developmentTree();
  let dir: string | undefined;
  for (const line of lines) {
    const entry = /^ {2}([\w-]+\/)\s{2,}/.exec(line);
    if (entry) dir = entry[1];
    else if (/^ {0,2}\S/.test(line)) dir = undefined;
    if (!dir) continue;
    for (const m of line.matchAll(/(?<![\w/])([\w/]+\.ts)\b/g)) {
      const file = m[1]!;
      expect(fs.existsSync(path.join(root, 'src', dir, file)), `README places ${file} under src/${dir}, where it is not`).toBe(true);
    }
  }
});
