// Request validation for the API with TypeBox (the config's schema library): compiled checks, field-naming 400 messages, and the matching fastify type provider.

import type { FastifySchemaCompiler, FastifyTypeProvider } from 'fastify';
import { KindGuard, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors';
import { Value } from '@sinclair/typebox/value';
import { formatAddress, parseAddress } from '../config/cidr.js';
import { ApiError } from './context.js';

/** Lets route handlers see `request.body` etc. as the TypeBox schema's static type. */
export interface TypeBoxProvider extends FastifyTypeProvider {
  readonly validator: this['schema'] extends TSchema ? Static<this['schema']> : unknown;
  readonly serializer: this['schema'] extends TSchema ? Static<this['schema']> : unknown;
}

/** How each request part is named in messages, so an operator knows where to look. */
const PART_NAMES: Record<string, string> = { body: 'body', querystring: 'query', params: 'path', headers: 'header' };

function show(value: unknown): string {
  if (value === undefined || value === null) return 'nothing';
  const s = JSON.stringify(value);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function fieldPath(part: string, pointer: string): string {
  const segs = pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  return segs.reduce((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : `${acc}.${seg}`), part);
}

/** One operator-facing sentence for one TypeBox error. */
function describe(part: string, e: ValueError): string {
  const path = fieldPath(part, e.path);
  const schema = e.schema as Record<string, unknown>;
  switch (e.type) {
    case ValueErrorType.ObjectAdditionalProperties: {
      // TypeBox points at the unexpected key; `schema` is the enclosing object's.
      const known = Object.keys((schema.properties ?? {}) as object);
      return `${path}: unknown field; allowed: ${known.join(', ') || 'none'}`;
    }
    case ValueErrorType.ObjectRequiredProperty:
      return `${path}: is required`;
    case ValueErrorType.Object:
      return `${path}: must be a JSON object (got ${show(e.value)})`;
    case ValueErrorType.Union: {
      const options = ((schema.anyOf ?? []) as Array<Record<string, unknown>>).map((s) => s.const).filter((c) => c !== undefined);
      return options.length
        ? `${path}: must be one of ${options.map((o) => JSON.stringify(o)).join(', ')} (got ${show(e.value)})`
        : `${path}: has the wrong type (got ${show(e.value)})`;
    }
    case ValueErrorType.Integer:
      return `${path}: must be a whole number (got ${show(e.value)})`;
    case ValueErrorType.Number:
      return `${path}: must be a number (got ${show(e.value)})`;
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMinimum:
    case ValueErrorType.NumberMaximum:
      return `${path}: must be from ${schema.minimum ?? '-∞'} to ${schema.maximum ?? '∞'} (got ${show(e.value)})`;
    case ValueErrorType.String:
      return `${path}: must be a string (got ${show(e.value)})`;
    case ValueErrorType.StringMinLength:
      return `${path}: must not be empty`;
    case ValueErrorType.StringMaxLength:
      return `${path}: must be at most ${schema.maxLength} characters`;
    case ValueErrorType.StringPattern:
      return `${path}: has characters that are not allowed (got ${show(e.value)}; allowed: ${schema.pattern})`;
    case ValueErrorType.Boolean:
      return `${path}: must be true or false (got ${show(e.value)})`;
    case ValueErrorType.Literal:
      return `${path}: must be ${JSON.stringify(schema.const)} (got ${show(e.value)})`;
    default:
      return `${path}: ${e.message} (got ${show(e.value)})`;
  }
}

/** Every distinct problem of `value`, at most `max`, one sentence each. */
export function problems(schema: TSchema, part: string, value: unknown, max = 5): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const e of Value.Errors(schema, value)) {
    if (seen.has(e.path)) continue;
    seen.add(e.path);
    out.push(describe(part, e));
    if (out.length >= max) break;
  }
  return out;
}

type CheckResult = { value: unknown } | { error: Error };

/**
 * fastify validator compiler. Bodies are checked as sent (JSON has types: "5" is not 5);
 * query strings and path parameters are text, so they are converted to the schema's types first.
 * Defaults from the schema are filled in either way.
 */
export const typeboxValidatorCompiler: FastifySchemaCompiler<unknown> = (def) => {
  const schema = def.schema;
  if (!KindGuard.IsSchema(schema)) {
    // A programming error: every API schema is written with TypeBox.
    throw new Error(`${def.method} ${def.url}: the ${def.httpPart ?? 'request'} schema is not a TypeBox schema`);
  }
  const part = PART_NAMES[def.httpPart ?? ''] ?? def.httpPart ?? 'request';
  const check = TypeCompiler.Compile(schema);
  const convert = def.httpPart === 'querystring' || def.httpPart === 'params' || def.httpPart === 'headers';
  return (data: unknown): CheckResult => {
    let value = data === null || data === undefined ? data : Value.Clone(data);
    if (value !== null && value !== undefined) value = Value.Default(schema, value);
    else if (part !== 'body') value = Value.Default(schema, {});
    if (convert) value = Value.Convert(schema, value);
    if (check.Check(value)) return { value };
    const list = problems(schema, part, value);
    return { error: new ApiError(400, list.length ? list.join('; ') : `${part}: is not valid`) };
  };
};

/** A client address given in a request (`where`: e.g. `path.address`), in its canonical spelling; a 400 naming it when it is not one. */
export function clientAddressParam(where: string, text: string): string {
  const a = parseAddress(text);
  if (typeof a === 'string') throw new ApiError(400, `${where}: ${a}`);
  return formatAddress(a.family, a.value);
}
