// GET /v1/config: the effective (running) config as a YAML-shaped document, secrets redacted.

import { Type } from '@sinclair/typebox';
import { configToDocument } from '../../config/load.js';
import { ConfigSchema } from '../../config/schema.js';
import type { RoutePlugin } from '../context.js';

// Documented as the config file's own schema: what GET returns is what a file would say.
const ConfigBody = Type.Unsafe<unknown>({
  ...ConfigSchema,
  description: 'the running config in the file format; api.token reads "<redacted>"',
});

export const configRoutes: RoutePlugin = async (api, deps) => {
  api.get(
    '/v1/config',
    { schema: { summary: 'the effective config, secrets redacted', tags: ['config'], response: { 200: ConfigBody } } },
    async () => configToDocument(deps.app.currentConfig, true),
  );
};
