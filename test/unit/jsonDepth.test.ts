// jsonNesting: the depth of objects and arrays, ignoring brackets inside strings.

import { describe, expect, it } from 'vitest';
import { jsonNesting } from '../../src/api/jsonDepth.js';

describe('jsonNesting', () => {
  it('counts objects and arrays, not brackets inside strings or escaped quotes', () => {
    expect(jsonNesting('1')).toBe(0);
    expect(jsonNesting('{"a":1}')).toBe(1);
    expect(jsonNesting('{"a":[{"b":[]}]}')).toBe(4);
    expect(jsonNesting('{"a":"{{{[[[","b":"\\"{{{"}')).toBe(1);
    expect(jsonNesting('[[],[],[[]]]')).toBe(3);
  });

  it('agrees with JSON.parse on generated documents', () => {
    const nest = (d: number): unknown => (d === 0 ? 'x{[' : d % 2 ? { k: nest(d - 1), s: '}]"' } : [nest(d - 1), '\\']);
    for (const d of [0, 1, 2, 7, 40]) expect(jsonNesting(JSON.stringify(nest(d)))).toBe(d);
  });

  it('stops at the limit on a huge input', () => {
    const deep = `${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}`;
    expect(jsonNesting(deep, 32)).toBe(33);
    expect(jsonNesting(deep)).toBe(100_000);
  });
});
