// Registers the TypeScript loader hooks (hooks.mjs) so plain `node` can run etd's .ts sources.
//
// Use: node --enable-source-maps --import ./test/helpers/ts-loader/register.mjs some/entry.ts
// Node 20 has no --experimental-strip-types and the repo has no tsx; vite 8 no longer brings
// esbuild, so this uses the `typescript` devDependency, which every `npm ci` installs.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
