// Builds the dashboard (ui/) into dist/ui: one script and one stylesheet bundled by esbuild (uPlot included), and the page. Run by `npm run build`.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'ui');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });

await build({
  entryPoints: { app: path.join(root, 'ui/src/main.ts') },
  bundle: true,
  outdir: out,
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  logLevel: 'warning',
});
fs.copyFileSync(path.join(root, 'ui/index.html'), path.join(out, 'index.html'));
const files = fs.readdirSync(out).map((f) => `${f} ${fs.statSync(path.join(out, f)).size} B`);
process.stdout.write(`dashboard built into dist/ui: ${files.join(', ')}\n`);
