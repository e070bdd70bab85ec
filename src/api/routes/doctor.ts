// POST /v1/doctor: `etd doctor` on demand against the running config — every check with OK/WARN/FAIL, what was found and the command that fixes it.

import { type Static, Type } from '@sinclair/typebox';
import { verdictLine } from '../../commands/doctor.js';
import { addressToBigInt } from '../../config/cidr.js';
import { evaluate, type Finding, summarize } from '../../doctor/checks.js';
import { gatherFacts } from '../../doctor/gather.js';
import { parseProbe } from '../../doctor/targets.js';
import { EtdError } from '../../errors.js';
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

/**
 * The doctor opens connections (one spoofed connect per backend), so it is a POST: a GET could be
 * set off by any page's <img>, and a POST from a foreign page is refused by the browser guard.
 */
export const DoctorRequest = Type.Object(
  {
    returnPath: Type.Boolean({
      default: true,
      description: 'make the spoofed test connect to each backend (one short connection from a client address per server); false skips it',
    }),
    client: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 64,
        description: 'the client address to spoof in the return-path test (as etd doctor --client)',
      }),
    ),
    probe: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: 64 }), {
        maxItems: 16,
        description:
          'also test the return path from these mail servers, ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6), as etd doctor --probe',
      }),
    ),
  },
  { additionalProperties: false },
);

export const doctorRoutes: RoutePlugin = async (api, deps) => {
  // One run at a time: a second request while the checks run gets the same answer.
  let running: { key: string; result: Promise<DoctorBody> } | undefined;

  const run = async (returnPath: boolean, client: string | undefined, probe: readonly string[]): Promise<DoctorBody> => {
    const started = Date.now();
    deps.log.info({ returnPath, client, probe }, 'doctor run requested through the API');
    const facts = await gatherFacts(deps.app.currentConfig, {
      configFile: deps.configFile,
      returnPath,
      probes: probe.map(parseProbe),
      netfilter: true,
      redis: true,
      ...(client === undefined ? {} : { client }),
    });
    const findings: Finding[] = evaluate(facts);
    const summary = summarize(findings);
    return { ok: summary.FAIL === 0, verdict: verdictLine(findings), summary, findings, ms: Date.now() - started };
  };

  api.post(
    '/v1/doctor',
    {
      schema: {
        summary: 'run the doctor checks now (as etd doctor): capabilities, kernel, sysctls, routes, etd rules, the return path',
        description:
          'Takes up to a few seconds with the return-path test. Concurrent requests share one run. A POST because the return-path test opens connections; the body may be empty ({}).',
        tags: ['doctor'],
        body: DoctorRequest,
        response: { 200: DoctorBody, 400: ErrorBody },
      },
      // `curl -X POST …/v1/doctor` without a body means all defaults.
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) req.body = {} as typeof req.body;
      },
    },
    async (req): Promise<DoctorBody> => {
      const { returnPath, client, probe = [] } = req.body;
      if (client !== undefined && !addressToBigInt(client))
        throw new ApiError(400, `body.client: "${client}" is not an IPv4 or IPv6 address`);
      for (const p of probe) {
        try {
          parseProbe(p);
        } catch (e) {
          throw new ApiError(
            400,
            `body.probe: ${e instanceof EtdError ? e.message.replace(/^--probe /, '') : String(e)}; write ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6)`,
          );
        }
      }
      const key = JSON.stringify([returnPath, client, probe]);
      if (running?.key !== key) {
        const result = run(returnPath, client, probe).finally(() => {
          if (running?.result === result) running = undefined;
        });
        running = { key, result };
      }
      return running.result;
    },
  );

  // The old GET: a pointer to POST instead of a 404 (and never a run: an <img> must not start one).
  api.get('/v1/doctor', { schema: { hide: true } }, async (_req, reply) =>
    reply.code(405).header('allow', 'POST').send({
      error:
        'the doctor opens connections, so it runs on POST /v1/doctor (body: {"returnPath": true, "client": "ADDRESS", "probe": ["ADDRESS:PORT"]}, all optional)',
    }),
  );
};
