// GET /ui/: the operator's dashboard — the static page, script and styles built into dist/ui by `npm run build`, served without the token (they hold no data).

import fs from 'node:fs';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { PACKAGE_ROOT } from '../../paths.js';
import { ApiError, ErrorBody, type RoutePlugin } from '../context.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/**
 * Everything the page loads comes from here: no inline script, no other origin. The data comes
 * from the same API with the token in an Authorization header (never in a URL).
 */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Where `npm run build` puts the dashboard (scripts/build-ui.mjs). */
export const UI_DIRECTORY = path.join(PACKAGE_ROOT, 'dist', 'ui');

interface Asset {
  readonly body: Buffer;
  readonly type: string;
}

/** The built files, read once: the set is fixed at build time and small (≈ 100 kB). */
function loadAssets(dir: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  if (!fs.existsSync(dir)) return assets;
  for (const name of fs.readdirSync(dir)) {
    const type = TYPES[path.extname(name)];
    if (type) assets.set(name, { body: fs.readFileSync(path.join(dir, name)), type });
  }
  return assets;
}

const FileParams = Type.Object({ file: Type.String({ maxLength: 100 }) }, { additionalProperties: false });

export const uiRoutes: RoutePlugin = async (api) => {
  const assets = loadAssets(UI_DIRECTORY);

  const send = (name: string) => {
    const asset = assets.get(name);
    if (!asset) {
      if (assets.size === 0) throw new ApiError(503, 'the dashboard was not built (dist/ui is missing): run npm run build');
      throw new ApiError(404, `no such dashboard file: ${name}`);
    }
    return asset;
  };
  const headers = {
    'cache-control': 'no-cache',
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
  };

  api.get('/ui', { schema: { hide: true, public: true } }, async (_req, reply) => reply.redirect('/ui/'));
  api.get(
    '/ui/',
    {
      schema: {
        summary: 'the dashboard (HTML); it asks for the token where the API needs one',
        tags: ['dashboard'],
        public: true,
        produces: 'text/html',
        response: { 200: Type.String(), 503: ErrorBody },
      },
    },
    async (_req, reply) => {
      const a = send('index.html');
      return reply.headers(headers).type(a.type).send(a.body.toString('utf8'));
    },
  );
  api.get('/ui/:file', { schema: { hide: true, public: true, params: FileParams } }, async (req, reply) => {
    const a = send(req.params.file);
    return reply.headers(headers).type(a.type).send(a.body);
  });
};
