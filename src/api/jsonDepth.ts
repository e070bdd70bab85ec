// Pure: how deeply a JSON text nests, found in one pass without parsing it.
//
// Why: validating a body nested thousands of levels deep overflows the validator's stack
// (a 500, found by the API fuzz). No etd request body nests more than a few levels, so the
// parser refuses deep ones with a 400 before anything recursive sees them.

/** The deepest nesting of objects and arrays in `text` (strings are skipped; stops counting past `limit`). */
export function jsonNesting(text: string, limit = Infinity): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return max;
}
