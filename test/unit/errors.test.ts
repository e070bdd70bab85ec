// The error registry and docs/errors.md list the same codes, in both directions.

import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { describeError, ERROR_CODES, EtdError } from '../../src/errors.js';

const doc = fs.readFileSync(path.join(__dirname, '../../docs/errors.md'), 'utf8');
const documented = new Set([...doc.matchAll(/`(ETD_ERR_[A-Z_]+)`/g)].map((m) => m[1]));

it('every registered code is documented', () => {
  for (const code of Object.keys(ERROR_CODES)) expect(documented, code).toContain(code);
});

it('every documented code is registered', () => {
  for (const code of documented) expect(Object.keys(ERROR_CODES), code).toContain(code);
});

it('no source file invents a code outside the registry', () => {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.name.endsWith('.ts')) files.push(path.join(d, e.name));
    }
  };
  walk(path.join(__dirname, '../../src'));
  for (const f of files) {
    for (const m of fs.readFileSync(f, 'utf8').matchAll(/'(ETD_ERR_[A-Z_]+)'/g)) {
      expect(Object.keys(ERROR_CODES), `${f} uses ${m[1]}`).toContain(m[1]);
    }
  }
});

it('EtdError carries code, hint and a message with the fix', () => {
  const e = new EtdError('ETD_ERR_LISTEN', 'cannot listen on 0.0.0.0:25', { hint: 'stop the other process' });
  expect(e.code).toBe('ETD_ERR_LISTEN');
  expect(e.message).toBe('cannot listen on 0.0.0.0:25 — stop the other process');
  expect(describeError(e)).toBe('ETD_ERR_LISTEN: cannot listen on 0.0.0.0:25 — stop the other process');
});
