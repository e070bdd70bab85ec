// The schema of detection.protocol: the inline protocol tests' actions and the non-SMTP first words (README, "Protocol tests").

import { Type } from '@sinclair/typebox';

export type ProtocolAction = 'ignore' | 'log' | 'reject' | 'drop';

/**
 * postscreen's forbidden commands (CONNECT GET POST) and the other HTTP methods, plus HTTP/2's
 * preface (PRI): no SMTP command shares a first word with them (README, "Protocol tests").
 */
export const NON_SMTP_COMMANDS = ['CONNECT', 'GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'TRACE', 'PATCH', 'PRI'] as const;

/** What an inline protocol test does: off by default, as postscreen's deep tests are (README, "Protocol tests"). */
function ProtocolActionSchema(what: string) {
  return Type.Union([Type.Literal('ignore'), Type.Literal('log'), Type.Literal('reject'), Type.Literal('drop')], {
    default: 'ignore',
    description: `${what}: ignore (off), log (mark the session, go on), reject (550, close both sides), drop (reset)`,
  });
}

export const ProtocolSchema = Type.Object(
  {
    pipelining: Type.Object(
      {
        action: ProtocolActionSchema(
          'a command sent before the reply to the one before, where the backend did not offer PIPELINING (RFC 2920)',
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    nonSmtpCommand: Type.Object(
      {
        action: ProtocolActionSchema('a command whose first word is in commands (an HTTP request, an open-proxy probe)'),
        commands: Type.Array(Type.String({ pattern: '^[!-~]{1,32}$' }), {
          default: [...NON_SMTP_COMMANDS],
          maxItems: 64,
          description:
            "first words that are no SMTP, matched ignoring case (default: postscreen's CONNECT GET POST and the other HTTP methods)",
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    bareNewline: Type.Object(
      { action: ProtocolActionSchema('a command line that ends in LF without CR') },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false, default: {} },
);
