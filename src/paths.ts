// Where etd's package root is: found once by walking up from this file to etd's package.json, whatever the layout (src/, dist/src/).

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      try {
        if ((JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string }).name === 'etd') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`etd: no package.json of etd above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** The directory holding etd's package.json (the checkout, /opt/etd or /usr/lib/etd). */
export const PACKAGE_ROOT: string = findRoot();

/** The built CLI (`etd`), for harnesses that start etd as a child process. */
export const CLI_PATH: string = path.join(PACKAGE_ROOT, 'dist', 'src', 'cli.js');
