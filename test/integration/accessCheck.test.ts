// `etd check` on an access list with a zone ID or another malformed prefix: the key path and the fix, no raw exception.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt, CLI } from '../helpers/cli.js';

const exec = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-access-check-'));

beforeAll(() => assertBuilt());
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('etd check: access lists', () => {
  it('names the key and the fix for a zone ID and for a malformed prefix', async () => {
    const f = path.join(dir, 'zone.yaml');
    fs.writeFileSync(
      f,
      `
listeners: [{ name: smtp, address: 127.0.0.1, port: 0 }]
upstream: { servers: [{ name: b, address: 127.0.0.1, port: 2525 }] }
api: { enabled: false }
state: { path: ":memory:" }
access: { deny: ["::%a/128", "192.0.2.0/24"], allow: ["fe80::1%eth0", "1.2.3"] }
`,
    );
    const err = await exec(process.execPath, [CLI, 'check', '-c', f]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toMatch(/access\.deny\[0\]: "::%a" has a zone ID \("%a"\); etd matches addresses without one: write ::/);
    expect(err?.stderr).toMatch(/access\.allow\[0\]: "fe80::1%eth0" has a zone ID .* write fe80::1/);
    expect(err?.stderr).toMatch(/access\.allow\[1\]: "1\.2\.3" is not an IPv4 or IPv6 address/);
    expect(err?.stderr).not.toMatch(/RangeError|\n\s+at /);
  });
});
