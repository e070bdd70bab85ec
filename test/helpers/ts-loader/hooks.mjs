// Node module hooks that transpile .ts files on load (typescript's transpileModule) and map `./x.js` imports to `./x.ts`.
//
// Transpile only: no type checking (tsc does that) and no bundling, so every file keeps its own
// path and `import.meta.url`, which the native addon loader and koffi rely on to find files.
// Preconditions, as in the rest of the repo: ESM sources, type-only exports written `export type`.
// Output is cached in node_modules/.cache/etd-ts-loader keyed by source, path and TypeScript
// version: loading `typescript` itself costs ~0.5 s per process, so a warm cache never loads it.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const CACHE_VERSION = '1';
const tsPackage = require.resolve('typescript/package.json');
const tsVersion = JSON.parse(readFileSync(tsPackage, 'utf8')).version;
// node_modules/typescript/package.json → node_modules/.cache/etd-ts-loader
const cacheDir = path.resolve(path.dirname(tsPackage), '..', '.cache', 'etd-ts-loader');

let ts;
function transpile(source, fileName) {
  ts ??= require('typescript');
  const compilerOptions = {
    module: ts.ModuleKind.ESNext,
    target: ts.ScriptTarget.ES2022,
    inlineSourceMap: true,
    inlineSources: true,
    esModuleInterop: true,
  };
  return ts.transpileModule(source, { compilerOptions, fileName, reportDiagnostics: false }).outputText;
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (err) {
    // NodeNext sources import './x.js' for a file that exists as './x.ts'.
    const relative = specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('file:');
    if (err?.code === 'ERR_MODULE_NOT_FOUND' && relative && specifier.endsWith('.js')) {
      return nextResolve(`${specifier.slice(0, -3)}.ts`, context);
    }
    throw err;
  }
}

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !(url.endsWith('.ts') || url.endsWith('.mts'))) return nextLoad(url, context);
  const fileName = fileURLToPath(url);
  const source = await readFile(fileName, 'utf8');
  const key = createHash('sha256').update(`${CACHE_VERSION}\0${tsVersion}\0${fileName}\0${source}`).digest('hex');
  const cached = path.join(cacheDir, `${key}.mjs`);
  let output;
  try {
    output = readFileSync(cached, 'utf8');
  } catch {
    output = transpile(source, fileName);
    try {
      // Write-then-rename: parallel children never read a half-written file.
      mkdirSync(cacheDir, { recursive: true });
      const tmp = `${cached}.${process.pid}.tmp`;
      writeFileSync(tmp, output);
      renameSync(tmp, cached);
    } catch {
      // A read-only checkout still works, just without the cache.
    }
  }
  return { format: 'module', source: output, shortCircuit: true };
}
