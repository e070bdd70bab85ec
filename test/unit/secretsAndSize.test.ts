// Secrets in URLs are hidden by parsing them (a raw "@" in a Redis password is refused with the fix), `etd status` takes its token without argv, and config files over 1 MiB are refused before parsing.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { statusToken } from '../../src/commands/status.js';
import { configToYaml, loadConfig, MAX_CONFIG_BYTES, validateConfig } from '../../src/config/load.js';
import { isEtdError } from '../../src/errors.js';
import { rawAtInUserinfo, redactUrl, urlWithoutCredentials } from '../../src/util/redact.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'etd-secrets-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const base = {
  listeners: [{ name: 'smtp', address: '127.0.0.1', port: 2525, mode: 'plain' }],
  upstream: { servers: [{ name: 'mx', address: '127.0.0.1', port: 25 }] },
};

function problemsOf(doc: unknown): string {
  try {
    validateConfig(doc);
  } catch (e) {
    if (!isEtdError(e)) throw e;
    return `${e.message} ${JSON.stringify((e as { problems?: unknown }).problems ?? '')} ${e.hint ?? ''}`;
  }
  return '';
}

describe('URL secrets', () => {
  it('a raw "@" in the Redis password is refused, naming %40, without printing any part of the password', () => {
    const text = problemsOf({ ...base, cluster: { redis: { url: 'redis://etd:p@ss@127.0.0.1:6379' } } });
    expect(text).toMatch(/cluster\.redis\.url/);
    expect(text).toMatch(/percent-encode it as %40/);
    expect(text).not.toMatch(/ss@|p@ss|p%40ss/);
    const sentinel = problemsOf({ ...base, cluster: { redis: { sentinels: ['redis://:a@b@10.0.0.1:26379'], name: 'm' } } });
    expect(sentinel).toMatch(/cluster\.redis\.sentinels\[0\].*%40/);
    expect(sentinel).not.toMatch(/a@b|b@10/);
  });

  it('a percent-encoded password parses, and etd check shows none of it', () => {
    const c = validateConfig({ ...base, cluster: { redis: { url: 'redis://etd:p%40ss@127.0.0.1:6379/2' } } });
    const yaml = configToYaml(c);
    expect(yaml).toContain('redis://etd:<redacted>@127.0.0.1:6379/2');
    expect(yaml).not.toMatch(/p%40ss|ss@/);
    expect((YAML.parse(configToYaml(c, false)) as { cluster: { redis: { url: string } } }).cluster.redis.url).toBe(
      'redis://etd:p%40ss@127.0.0.1:6379/2',
    );
  });

  it('redactUrl parses the URL: the whole password goes, whatever it holds', () => {
    expect(redactUrl('redis://etd:p@ss@host:6379')).toBe('redis://etd:<redacted>@host:6379');
    expect(redactUrl('rediss://:s3cr%2Fet@[::1]:6380/1')).toBe('rediss://:<redacted>@[::1]:6380/1');
    expect(redactUrl('redis://host:6379')).toBe('redis://host:6379');
    expect(redactUrl('redis://u:x@y@bad host')).toBe('redis://<credentials>@bad host');
    expect(urlWithoutCredentials('redis://etd:p@ss@host:6379/0')).toBe('redis://host:6379/0');
    expect(rawAtInUserinfo('redis://etd:p@ss@host')).toBe(true);
    expect(rawAtInUserinfo('redis://etd:p%40ss@host/a@b')).toBe(false);
  });
});

describe('etd status token', () => {
  it('--token-file, else ETD_TOKEN, else the config; an unreadable file is an error', () => {
    const f = path.join(dir, 'token');
    fs.writeFileSync(f, 'from-the-file-0123456789\n');
    expect(statusToken(f, 'from-env', 'from-config')).toBe('from-the-file-0123456789');
    expect(statusToken(undefined, 'from-env', 'from-config')).toBe('from-env');
    expect(statusToken(undefined, undefined, 'from-config')).toBe('from-config');
    expect(statusToken(path.join(dir, 'missing'), undefined, undefined)).toEqual({
      error: expect.stringMatching(/cannot read the token file .*ENOENT/),
    });
  });
});

describe('config size cap', () => {
  it('a file over 1 MiB is refused with ETD_ERR_CONFIG_READ before it is parsed; one under it loads', () => {
    const big = path.join(dir, 'big.yaml');
    const listeners = Array.from(
      { length: 30_000 },
      (_, i) => `  - { name: l${i}, address: 127.0.0.1, port: ${1024 + (i % 60000)}, mode: plain }`,
    );
    fs.writeFileSync(big, `listeners:\n${listeners.join('\n')}\nupstream: { servers: [{ name: mx, address: 127.0.0.1, port: 25 }] }\n`);
    expect(fs.statSync(big).size).toBeGreaterThan(MAX_CONFIG_BYTES);
    let err: unknown;
    try {
      loadConfig(big);
    } catch (e) {
      err = e;
    }
    expect(isEtdError(err) && err.code).toBe('ETD_ERR_CONFIG_READ');
    expect((err as Error).message).toMatch(/larger than 1 MiB/);
    const small = path.join(dir, 'small.yaml');
    fs.writeFileSync(small, YAML.stringify(base));
    expect(loadConfig(small).listeners).toHaveLength(1);
  });
});
