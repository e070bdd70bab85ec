// GET /v1/doctor: `etd doctor` on demand against the running config — every check with OK/WARN/FAIL, what was found and the command that fixes it.

import { Type, type Static } from '@sinclair/typebox';
import { addressToBigInt } from '../../config/cidr.js';
import { evaluate, summarize, type Finding } from '../../doctor/checks.js';
import { gatherFacts } from '../../doctor/gather.js';
import { verdictLine } from '../../commands/doctor.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

const StatusSchema = Type.Union([Type.Literal('OK'), Type.Literal('WARN'), Type.Literal('FAIL')]);

export const DoctorBody = Type.Object({
  ok: Type.Boolean({ description: 'no FAIL' }),
  verdict: Type.String({ description: 'one sentence on the whole, as `etd doctor` ends' }),
  summary: Type.Object({ OK: Type.Integer(), WARN: Type.Integer(), FAIL: Type.Integer() }),
  findings: Type.Array(
    Type.Object({
      id: Type.String({ description: 'stable check id, e.g. sysctl.rp_filter, return.b1' }),
      status: StatusSchema,
      what: Type.String(),
      detail: Type.String(),
      fix: Type.Optional(Type.String({ description: 'the command that fixes it (WARN and FAIL)' })),
      critical: Type.Boolean({ description: 'etd run refuses to start when this FAILs' }),
    }),
  ),
  ms: Type.Integer({ description: 'how long the checks took' }),
});
export type DoctorBody = Static<typeof DoctorBody>;

export const DoctorQuery = Type.Object(
  {
    returnPath: Type.Boolean({
      default: true,
      description: 'make the spoofed test connect to each backend (one short connection from a client address per server); false skips it',
    }),
    client: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'the client address to spoof in the return-path test (as etd doctor --client)' })),
  },
  { additionalProperties: false },
);

export const doctorRoutes: RoutePlugin = async (api, deps) => {
  // One run at a time: a second request while the checks run gets the same answer.
  let running: { key: string; result: Promise<DoctorBody> } | undefined;

  const run = async (returnPath: boolean, client: string | undefined): Promise<DoctorBody> => {
    const started = Date.now();
    const facts = await gatherFacts(deps.app.currentConfig, {
      configFile: deps.configFile,
      returnPath,
      netfilter: true,
      redis: true,
      ...(client === undefined ? {} : { client }),
    });
    const findings: Finding[] = evaluate(facts);
    const summary = summarize(findings);
    return { ok: summary.FAIL === 0, verdict: verdictLine(findings), summary, findings, ms: Date.now() - started };
  };

  api.get(
    '/v1/doctor',
    {
      schema: {
        summary: 'run the doctor checks now (as etd doctor): capabilities, kernel, sysctls, routes, etd rules, the return path',
        description: 'Takes up to a few seconds with the return-path test. Concurrent requests share one run.',
        tags: ['doctor'],
        querystring: DoctorQuery,
        response: { 200: DoctorBody, 400: ErrorBody },
      },
    },
    async (req): Promise<DoctorBody> => {
      const { returnPath, client } = req.query;
      if (client !== undefined && !addressToBigInt(client)) throw new ApiError(400, `query.client: "${client}" is not an IPv4 or IPv6 address`);
      const key = JSON.stringify([returnPath, client]);
      if (running?.key !== key) {
        const result = run(returnPath, client).finally(() => {
          if (running?.result === result) running = undefined;
        });
        running = { key, result };
      }
      return running.result;
    },
  );
};
