// The README's quick start: `npm run demo` without root runs the loopback demo and shows etd's main job.

import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import { assertBuilt } from '../helpers/cli.js';

const exec = promisify(execFile);
const DEMO = path.join(__dirname, '../../dist/lab/demo.js');

it('the loopback demo relays a polite client and drops an early talker', async () => {
  assertBuilt();
  const { stdout } = await exec(process.execPath, [DEMO], { env: { ...process.env, ETD_DEMO_LOOPBACK: '1' }, timeout: 60_000 });
  expect(stdout).toMatch(/embedded loopback lab, plain mode/);
  expect(stdout).toMatch(/swaks: message accepted/);
  expect(stdout).toMatch(/bot: connection (reset|closed), received 0 bytes/);
  expect(stdout).toMatch(/message +from 127\.0\.0\.1/);
  expect(stdout).toMatch(/passed +server backend/);
  expect(stdout).toMatch(/early_talker +talked after [\d.]+ ms: "EHLO bot\.example\\r\\n" → dropped/);
}, 90_000);
