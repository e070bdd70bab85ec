// etd's version, read once from package.json (dist/ and src/ are both one level below it).

import { createRequire } from 'node:module';

export const VERSION: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;
