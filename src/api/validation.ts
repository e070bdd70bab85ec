// Request validation for the API with TypeBox (the config's schema library): compiled checks, field-naming 400 messages, and the matching fastify type provider.

import { KindGuard, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { type ValueError, ValueErrorType } from '@sinclair/typebox/errors';
import { Value } from '@sinclair/typebox/value';
import type { FastifySchemaCompiler, FastifyTypeProvider } from 'fastify';
import { formatAddress, parseAddress } from '../config/cidr.js';
import { fallbackMessage, knownKeys, pointerToPath, showValue } from '../config/schemaErrors.js';
import { ApiError } from './context.js';

/** Lets route handlers see `request.body` etc. as the TypeBox schema's static type. */
export interface TypeBoxProvider extends FastifyTypeProvider {
  readonly validator: this['schema'] extends TSchema ? Static<this['schema']> : unknown;
  readonly serializer: this['schema'] extends TSchema ? Static<this['schema']> : unknown;
}

/** How each request part is named in messages, so an operator knows where to look. */
const PART_NAMES: Record<string, string> = { body: 'body', querystring: 'query', params: 'path', headers: 'header' };

/** Request values are quoted shorter than config values (the message goes back in one JSON line); fastify hands a missing body over as null. */
const show = (value: unknown) => (value === null ? 'nothing' : showValue(value, 60));

/** One operator-facing sentence for one TypeBox error. */
function describe(part: string, e: ValueError): string {
  const path = pointerToPath(e.path, part);
  const schema = e.schema as Record<string, unknown>;
  switch (e.type) {
    case ValueErrorType.ObjectAdditionalProperties:
      return `${path}: unknown field; allowed: ${knownKeys(e).join(', ') || 'none'}`;
    case ValueErrorType.Object:
      return `${path}: must be a JSON object (got ${show(e.value)})`;
    case ValueErrorType.StringPattern:
      return `${path}: has characters that are not allowed (got ${show(e.value)}; allowed: ${schema.pattern})`;
    default:
      return `${path}: ${fallbackMessage(e, show)}`;
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
