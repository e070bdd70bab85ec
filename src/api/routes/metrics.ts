// GET /metrics: Prometheus text exposition from etd's own prom-client registry.

import { Type } from '@sinclair/typebox';
import type { RoutePlugin } from '../context.js';

export const metricsRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text format 0.0.4)',
        tags: ['metrics'],
        produces: 'text/plain',
        response: { 200: Type.String({ description: 'Prometheus text exposition' }) },
      },
    },
    async (_req, reply) => {
      const text = await deps.metrics.text();
      return reply.type(deps.metrics.contentType).send(text);
    },
  );
};
