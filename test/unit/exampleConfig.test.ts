// The shipped example config (config/etd.example.yaml) is valid and documents every default.

import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';

it('config/etd.example.yaml validates', () => {
  const text = fs.readFileSync(path.join(__dirname, '../../config/etd.example.yaml'), 'utf8');
  const c = parseConfig(text, 'etd.example.yaml');
  expect(c.listeners[0]!.mode).toBe('vip');
  expect(c.upstream.source).toBe('clientip');
  expect(c.netfilter.mark).toBe(1);
});

it("config/etd.example.yaml's commented limits.rate line validates once uncommented", () => {
  const text = fs.readFileSync(path.join(__dirname, '../../config/etd.example.yaml'), 'utf8');
  expect(text).toMatch(/^ {2}# rate: \{/m);
  const c = parseConfig(text.replace(/^ {2}# rate: /m, '  rate: '), 'etd.example.yaml');
  expect(c.limits.rate).toEqual({ perClient: 30, intervalMs: 60_000 });
});
