// POST /v1/reload: re-read, validate and apply the config file; a bad file is refused with the reasons and nothing changes.

import { type Static, Type } from '@sinclair/typebox';
import type { Config } from '../../config/schema.js';
import { describeError, type ErrorCode, EtdError } from '../../errors.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

export const ReloadBody = Type.Object({
  reloaded: Type.Literal(true),
  listeners: Type.Array(Type.String(), { description: 'listener names now configured' }),
  servers: Type.Array(Type.String(), { description: 'backend server names now configured' }),
  restartNeeded: Type.Array(Type.String(), {
    description: 'config sections that changed but only take effect when etd restarts (api, netfilter, log)',
  }),
});
export type ReloadBody = Static<typeof ReloadBody>;

/** A reload refused for one of these is the file's fault (400); anything else is etd's (500). */
const CONFIG_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['ETD_ERR_CONFIG_READ', 'ETD_ERR_CONFIG_PARSE', 'ETD_ERR_CONFIG_INVALID']);

/** Sections the running process cannot re-apply: the API's own socket, the kernel setup, the logger. */
const RESTART_SECTIONS = ['api', 'netfilter', 'log'] as const;

function restartNeeded(prev: Config, next: Config): string[] {
  return RESTART_SECTIONS.filter((k) => JSON.stringify(prev[k]) !== JSON.stringify(next[k]));
}

export const reloadRoutes: RoutePlugin = async (api, deps) => {
  // One reload at a time: two overlapping reloads could interleave listener changes.
  let queue: Promise<unknown> = Promise.resolve();

  api.post(
    '/v1/reload',
    {
      schema: {
        summary: 'validate the config file and apply it',
        description:
          'Held and relayed sessions keep the policy they started with; new connections get the new one. ' +
          'On a bad file: 400 with the reasons, and the running config stays. Operator drain/maint states survive.',
        tags: ['config'],
        response: { 200: ReloadBody, 400: ErrorBody, 500: ErrorBody },
      },
    },
    async (): Promise<ReloadBody> => {
      const run = queue.then(async () => {
        const prev = deps.app.currentConfig;
        try {
          await deps.reload();
        } catch (e) {
          if (e instanceof EtdError && CONFIG_ERRORS.has(e.code)) {
            const problems = (e as EtdError & { problems?: ReadonlyArray<{ path: string; message: string }> }).problems;
            deps.log.warn({ err: e.message, code: e.code }, 'reload refused through the API; the running configuration stays');
            throw new ApiError(400, e.message, { code: e.code, ...(problems ? { problems: problems.map((p) => ({ ...p })) } : {}) });
          }
          deps.log.error({ err: describeError(e) }, 'reload through the API failed');
          throw new ApiError(500, `reload failed: ${describeError(e)}`, e instanceof EtdError ? { code: e.code } : {});
        }
        const next = deps.app.currentConfig;
        deps.log.info({ via: 'api' }, 'configuration reloaded');
        return {
          reloaded: true as const,
          listeners: next.listeners.map((l) => l.name),
          servers: next.upstream.servers.map((s) => s.name),
          restartNeeded: restartNeeded(prev, next),
        };
      });
      queue = run.catch(() => undefined);
      return run;
    },
  );
};
