// README.md stays true: every config key of the schema is in its reference table, and every key there exists.

import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { ConfigSchema } from '../../src/config/schema.js';

const readme = fs.readFileSync(path.join(__dirname, '../../README.md'), 'utf8');

/** Dotted key paths of the schema's leaves ("listeners[].port", "upstream.health.rise"). */
function leaves(schema: Record<string, unknown>, prefix = ''): string[] {
  if (schema.type === 'object' && schema.properties) {
    return Object.entries(schema.properties as Record<string, Record<string, unknown>>).flatMap(([k, v]) =>
      leaves(v, prefix ? `${prefix}.${k}` : k),
    );
  }
  if (schema.type === 'array' && (schema.items as Record<string, unknown>)?.type === 'object')
    return leaves(schema.items as Record<string, unknown>, `${prefix}[]`);
  return [prefix];
}

const documented = new Set([...readme.matchAll(/^\| `([a-zA-Z.[\]]+)` \|/gm)].map((m) => m[1]!));
const keys = leaves(ConfigSchema as unknown as Record<string, unknown>);

it('documents every config key', () => {
  for (const k of keys) expect(documented, `README lacks ${k}`).toContain(k);
});

it('documents no key the schema does not have', () => {
  const configKeys = [...documented].filter((k) => /^[a-z]+[.[]/.test(k) && !k.startsWith('/'));
  for (const k of configKeys) expect(keys, `README documents unknown key ${k}`).toContain(k);
});

it('names the test command that .ci/run runs', () => {
  expect(readme).toMatch(/npm test/);
  expect(fs.readFileSync(path.join(__dirname, '../../.ci/run'), 'utf8')).toMatch(/^npm test$/m);
});
