// src/cliSpec.ts is the one source of the command line: the README's CLI table is its rendering, --help and the man page come from it, and every option it lists parses.

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { expect, it } from 'vitest';
import { COMMANDS, OPTIONS, parseArgsOptions, renderMan, renderReadmeTable, renderUsage } from '../../src/cliSpec.js';

const readme = fs.readFileSync(path.join(__dirname, '../../README.md'), 'utf8');

it("README.md's CLI block is exactly renderReadmeTable()", () => {
  const m = /<!-- cli:[^\n]*-->\n([\s\S]*?)\n<!-- \/cli -->/.exec(readme);
  expect(m, 'README.md lacks the <!-- cli: ... --> ... <!-- /cli --> block').not.toBeNull();
  expect(m![1]!.trim(), 'README.md: replace the CLI block with the output of renderReadmeTable() (src/cliSpec.ts)').toBe(
    renderReadmeTable(),
  );
});

it('--help, the README table and the man page name every command and option', () => {
  const usage = renderUsage();
  const man = renderMan('1.2.3', '2026-01-01').replace(/\\-/g, '-').replace(/\\e/g, '\\');
  for (const c of COMMANDS) {
    expect(usage).toContain(`  ${c.name}`);
    expect(renderReadmeTable()).toContain(`\`etd ${c.name}`);
    expect(man).toContain(`.B "etd ${c.name}"`);
  }
  for (const o of OPTIONS) {
    for (const text of [usage, renderReadmeTable(), man]) expect(text).toContain(`--${o.long}`);
  }
  expect(man).toMatch(/^\.TH ETD 8 "2026-01-01" "etd 1\.2\.3"/);
});

it('the parser accepts every option the spec lists, --probe repeatedly', () => {
  const { values } = parseArgs({
    args: ['doctor', '-c', 'f.yaml', '--json', '--client', '10.0.0.9', '--probe', '10.0.2.10', '--probe', '[fd00::10]:25'],
    allowPositionals: true,
    options: parseArgsOptions(),
  });
  expect(values).toMatchObject({ config: 'f.yaml', json: true, client: '10.0.0.9', probe: ['10.0.2.10', '[fd00::10]:25'] });
  expect(parseArgs({ args: [], options: parseArgsOptions() }).values.config).toBe('/etc/etd/etd.yaml');
});

it('the man page escapes roff: no line starts with a stray dot or quote, hyphens in options are \\-', () => {
  const man = renderMan('0.1.0+gitabc1234', '2026-01-01');
  for (const line of man.split('\n')) {
    if (line.startsWith('.') || line === '') continue;
    expect(line).not.toMatch(/^['.]/);
  }
  expect(man).toContain('\\-\\-probe ADDRESS[:PORT]');
});
