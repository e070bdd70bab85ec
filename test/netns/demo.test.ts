// `npm run demo` as root: the network-namespace lab in vip mode, as the README promises.

import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { assertBuilt } from '../helpers/cli.js';
import { skipPrivileged } from '../helpers/privileged.js';

const exec = promisify(execFile);
const DEMO = path.join(__dirname, '../../dist/lab/demo.js');

describe.skipIf(skipPrivileged('npm run demo (netns lab)'))('the lab demo', () => {
  it('shows the backend seeing the client address, the bot dropped, and the rules removed', async () => {
    assertBuilt();
    const env = { ...process.env };
    delete env.ETD_DEMO_LOOPBACK;
    const { stdout } = await exec(process.execPath, [DEMO], { env, timeout: 90_000 });
    expect(stdout).toMatch(/network-namespace lab, vip mode/);
    expect(stdout.match(/swaks: message accepted/g)).toHaveLength(2);
    expect(stdout).toMatch(/bot: connection (reset|closed), received 0 bytes/);
    expect(stdout).toMatch(/→ 2 connections from the client's real addresses; none from the bot's early talk/);
    // DNSBL: the listed client is refused with the reply, the allowlisted one gets the banner far sooner than the 2 s window.
    expect(stdout).toMatch(/got after \d+ ms: 554 5\.7\.1 Service unavailable; client \[10\.\d+\.1\.3\] blocked using bl\.demo\.test/);
    const fast = /banner after (\d+) ms \(the window is 2s\): 220 /.exec(stdout);
    expect(fast, stdout).not.toBeNull();
    expect(Number(fast![1])).toBeLessThan(1000);
    expect(stdout).toMatch(
      /10\.\d+\.1\.3:\d+ +dnsbl +DNSBL score 3 \(bl\.demo\.test 127\.0\.0\.2\) → dnsbl_reject, never connected upstream/,
    );
    expect(stdout).toMatch(/10\.\d+\.1\.4:\d+ +passed .*allowlisted \(score -2: wl\.demo\.test 127\.0\.10\.2\)/);
    expect(stdout).toMatch(/no etd table left/);
    expect(stdout).toMatch(/lab torn down/);
  }, 120_000);
});
