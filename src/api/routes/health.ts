// GET /healthz (the process answers) and GET /readyz (listeners bound and a backend up): probes, served without the token.

import { type Static, Type } from '@sinclair/typebox';
import type { App } from '../../app.js';
import type { RoutePlugin } from '../context.js';

export const ReadyBody = Type.Object({
  ready: Type.Boolean(),
  reasons: Type.Array(Type.String(), { description: 'why not ready; empty when ready' }),
});
export type ReadyBody = Static<typeof ReadyBody>;

/** Not ready while a configured listener is not bound, or while no backend could take a session. */
export function notReadyReasons(app: App): string[] {
  const reasons: string[] = [];
  const bound = new Map(app.listenerList().map((l) => [l.config.name, l.addresses().length > 0]));
  for (const l of app.currentConfig.listeners) {
    if (!bound.get(l.name)) reasons.push(`listener ${l.name} is not listening`);
  }
  if (app.currentConfig.upstream.forward === 'pool' && !app.pool.list().some((s) => s.state === 'up')) {
    const states = app.pool.list().map((s) => `${s.name} ${s.state}`);
    reasons.push(`no backend server is up (${states.join(', ') || 'none configured'})`);
  }
  return reasons;
}

export const healthRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/healthz',
    {
      schema: {
        summary: 'liveness: the process answers',
        tags: ['health'],
        public: true,
        response: { 200: Type.Object({ status: Type.Literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  api.get(
    '/readyz',
    {
      schema: {
        summary: 'readiness: every listener bound and at least one backend up (503 with reasons otherwise)',
        tags: ['health'],
        public: true,
        response: { 200: ReadyBody, 503: ReadyBody },
      },
    },
    async (_req, reply) => {
      const reasons = notReadyReasons(deps.app);
      return reply.code(reasons.length ? 503 : 200).send({ ready: reasons.length === 0, reasons });
    },
  );
};
