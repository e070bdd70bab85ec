// Unit tests for src/config/schemaErrors.ts: paths, quoted values and sentences shared by the config loader and the API.

import { Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import { problems } from '../../src/api/validation.js';
import { validateConfig } from '../../src/config/load.js';
import { commonMessage, fallbackMessage, pointerToPath, showValue } from '../../src/config/schemaErrors.js';

describe('pointerToPath', () => {
  it('writes list indexes in brackets and keys with dots, decoding ~1 and ~0', () => {
    expect(pointerToPath('/listeners/0/port')).toBe('listeners[0].port');
    expect(pointerToPath('/a~1b/c~0d')).toBe('a/b.c~d');
    expect(pointerToPath('')).toBe('');
  });
  it('starts from a root when given one (the request part)', () => {
    expect(pointerToPath('/servers/1/name', 'body')).toBe('body.servers[1].name');
    expect(pointerToPath('', 'query')).toBe('query');
  });
});

describe('showValue', () => {
  it('quotes JSON, bounded, naming the full length when cut', () => {
    expect(showValue('x')).toBe('"x"');
    expect(showValue(undefined)).toBe('nothing');
    const long = showValue('y'.repeat(500));
    expect(long.startsWith(`"${'y'.repeat(76)}...`)).toBe(true);
    expect(long).toContain('(502 characters)');
    expect(showValue('y'.repeat(100), 60)).toMatch(/^"y{56}\.\.\. \(102 characters\)$/);
  });
  it('never throws on what JSON cannot write', () => {
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect(showValue(cycle)).toBe('a mapping');
    expect(showValue(10n)).toBe('bigint');
  });
});

describe('one wording for config and API', () => {
  const schema = Type.Object({ port: Type.Integer({ minimum: 1, maximum: 65535 }), on: Type.Boolean() }, { additionalProperties: false });
  const errs = (v: unknown) => [...Value.Errors(schema, v)];

  it('the same error reads the same in both', () => {
    const e = errs({ port: 0, on: true })[0]!;
    expect(commonMessage(e)).toBe('must be from 1 to 65535 (got 0)');
    expect(problems(schema, 'body', { port: 0, on: true })).toEqual(['body.port: must be from 1 to 65535 (got 0)']);
    expect(() =>
      validateConfig({ listeners: [{ name: 'a', port: 70000 }], upstream: { servers: [{ name: 's', address: '127.0.0.1' }] } }),
    ).toThrow(/listeners\[0\]\.port: must be from 0 to 65535 \(got 70000\)/);
  });

  it('every error gets a sentence', () => {
    for (const e of errs({ port: 'x', on: 1, extra: 2 })) expect(fallbackMessage(e)).toMatch(/\S/);
  });
});
