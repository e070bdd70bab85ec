// One formatter for TypeBox validation errors: the path an operator reads, the value quoted back, and the sentence for each kind of error (config file and API requests alike).

import { type ValueError, ValueErrorType } from '@sinclair/typebox/errors';

/**
 * A JSON pointer (`/listeners/0/port`) as a path an operator reads: `listeners[0].port`, or
 * `body.listeners[0].port` under `root`. The empty pointer is `root` itself ('' for the top level).
 */
export function pointerToPath(pointer: string, root = ''): string {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : acc ? `${acc}.${seg}` : seg), root);
}

/** Longest value quoted in a message: a 5 MB scalar must not come back as a 5 MB error. */
export const SHOW_MAX = 80;

/** A value quoted back in a message, bounded; never throws (too deep, a BigInt, a cycle: says what it is instead). */
export function showValue(value: unknown, max = SHOW_MAX): string {
  if (value === undefined) return 'nothing';
  let s: string | undefined;
  try {
    s = JSON.stringify(value);
  } catch {
    s = undefined;
  }
  if (s === undefined) s = Array.isArray(value) ? 'a list' : typeof value === 'object' && value !== null ? 'a mapping' : typeof value;
  return s.length > max ? `${s.slice(0, max - 3)}... (${s.length} characters)` : s;
}

/** The keys an object schema allows (for "unknown key" messages: TypeBox points at the key, `schema` is the enclosing object's). */
export function knownKeys(e: ValueError): string[] {
  return Object.keys(((e.schema as Record<string, unknown>).properties ?? {}) as object);
}

/**
 * The sentence for the errors whose wording is the same wherever the value came from; undefined
 * for those each caller words itself (unknown keys, objects, patterns). `show` quotes the value.
 */
export function commonMessage(e: ValueError, show: (v: unknown) => string = showValue): string | undefined {
  const schema = e.schema as Record<string, unknown>;
  switch (e.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return 'is required';
    case ValueErrorType.Union: {
      const options = ((schema.anyOf ?? []) as Array<Record<string, unknown>>).map((s) => s.const).filter((c) => c !== undefined);
      return options.length
        ? `must be one of ${options.map((o) => JSON.stringify(o)).join(', ')} (got ${show(e.value)})`
        : `has the wrong type (got ${show(e.value)})`;
    }
    case ValueErrorType.Integer:
      return `must be a whole number (got ${show(e.value)})`;
    case ValueErrorType.Number:
      return `must be a number (got ${show(e.value)})`;
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMinimum:
    case ValueErrorType.NumberMaximum:
      return `must be from ${schema.minimum ?? '-∞'} to ${schema.maximum ?? '∞'} (got ${show(e.value)})`;
    case ValueErrorType.String:
      return `must be a string (got ${show(e.value)})`;
    case ValueErrorType.StringMinLength:
      // The value is not echoed: it may be a secret (api.token).
      return schema.minLength === 1
        ? 'must not be empty'
        : `must be at least ${schema.minLength} characters (got ${String(e.value).length})`;
    case ValueErrorType.StringMaxLength:
      return `must be at most ${schema.maxLength} characters (got ${String(e.value).length})`;
    case ValueErrorType.Boolean:
      return `must be true or false (got ${show(e.value)})`;
    case ValueErrorType.Array:
      return `must be a list (got ${show(e.value)})`;
    case ValueErrorType.ArrayMinItems:
      return `must have at least ${schema.minItems} entr${schema.minItems === 1 ? 'y' : 'ies'}`;
    case ValueErrorType.Literal:
      return `must be ${JSON.stringify(schema.const)} (got ${show(e.value)})`;
    default:
      return undefined;
  }
}

/** commonMessage, or TypeBox's own text with the value: every error gets a sentence. */
export function fallbackMessage(e: ValueError, show: (v: unknown) => string = showValue): string {
  return commonMessage(e, show) ?? `${e.message} (got ${show(e.value)})`;
}
