// The config contract: defaults, duration parsing, and a table of malformed files with their exact errors.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { configToYaml, loadConfig, parseConfig } from '../../src/config/load.js';
import { isEtdError } from '../../src/errors.js';

const GOOD = `
listeners:
  - name: smtp
    address: 0.0.0.0
    port: 25
    mode: plain
detection:
  window: 6s
  action: drop
upstream:
  source: self
  balance: roundrobin
  connectTimeout: 5s
  retries: 2
  servers:
    - { name: smtp1, address: 10.0.2.10, port: 25 }
timeouts: { client: 5m, server: 5m }
limits: { maxConnections: 15000 }
log: { level: info }
`;

describe('valid config', () => {
  it('parses the contract keys and resolves durations to milliseconds', () => {
    const c = parseConfig(GOOD);
    expect(c.listeners[0]).toMatchObject({ name: 'smtp', address: '0.0.0.0', port: 25, mode: 'plain', backlog: 65535 });
    expect(c.detection).toMatchObject({ windowMs: 6000, action: 'drop' });
    expect(c.upstream).toMatchObject({ source: 'self', balance: 'roundrobin', connectTimeoutMs: 5000, retries: 2, forward: 'pool' });
    expect(c.timeouts).toMatchObject({ clientMs: 300_000, serverMs: 300_000 });
    expect(c.limits.maxConnections).toBe(15000);
    expect(Object.isFrozen(c.upstream.servers[0])).toBe(true);
  });

  it('fills defaults for everything but listeners and servers', () => {
    const c = parseConfig('listeners: [{ name: a }]\nupstream: { servers: [{ name: s, address: "::1" }] }\n');
    expect(c.detection.windowMs).toBe(6000);
    expect(c.detection.action).toBe('drop');
    expect(c.listeners[0]!.port).toBe(25);
    expect(c.upstream.servers[0]!.port).toBe(25);
    expect(c.netfilter).toMatchObject({ manage: true, mark: 1, table: 100, tproxyPort: 10025 });
  });

  it('accepts 500ms, 2m, 1.5s durations', () => {
    expect(parseConfig(GOOD.replace('window: 6s', 'window: 500ms')).detection.windowMs).toBe(500);
    expect(parseConfig(GOOD.replace('window: 6s', 'window: 2m')).detection.windowMs).toBe(120_000);
    expect(parseConfig(GOOD.replace('window: 6s', 'window: 1.5s')).detection.windowMs).toBe(1500);
  });

  it('round-trips through etd check output', () => {
    const c = parseConfig(GOOD);
    expect(parseConfig(configToYaml(c))).toEqual(c);
  });

  it('limits.rate: off when absent; perClient and interval (in ms) when set; round-trips', () => {
    expect(parseConfig(GOOD).limits.rate).toBeUndefined();
    const c = parseConfig(GOOD.replace('maxConnections: 15000', 'maxConnections: 15000, rate: { perClient: 30, interval: 1m }'));
    expect(c.limits.rate).toEqual({ perClient: 30, intervalMs: 60_000 });
    expect(configToYaml(c)).toMatch(/rate:\n\s+perClient: 30\n\s+interval: 1m/);
    expect(parseConfig(configToYaml(c))).toEqual(c);
  });
});

const BAD: Array<[string, string, RegExp]> = [
  ['window without a unit', GOOD.replace('window: 6s', 'window: 6'), /detection\.window: must be a duration such as 500ms, 6s/],
  ['window with a bad unit', GOOD.replace('window: 6s', 'window: 6 seconds'), /detection\.window: must be a duration/],
  [
    'unknown action',
    GOOD.replace('action: drop', 'action: block'),
    /detection\.action: must be one of "drop", "reject", "log" \(got "block"\)/,
  ],
  [
    'port out of range',
    GOOD.replace('port: 25\n    mode', 'port: 70000\n    mode'),
    /listeners\[0\]\.port: must be from 0 to 65535 \(got 70000\)/,
  ],
  [
    'unknown key (typo)',
    GOOD.replace('retries: 2', 'retires: 2'),
    /upstream\.retires: unknown key; did you mean "retries"\? remove it or use one of: /,
  ],
  ['no listeners', GOOD.replace(/listeners:[\s\S]*?mode: plain\n/, 'listeners: []\n'), /listeners: must have at least 1 entry/],
  ['missing listeners', GOOD.replace(/listeners:[\s\S]*?mode: plain\n/, ''), /listeners: is required/],
  [
    'bad server address',
    GOOD.replace('address: 10.0.2.10', 'address: mail.example.com'),
    /upstream\.servers\[0\]\.address: "mail\.example\.com" is not an IPv4 or IPv6 address/,
  ],
  ['no servers', GOOD.replace(/servers:\n.*\n/, 'servers: []\n'), /upstream\.servers: is empty; list at least one server/],
  [
    'duplicate listener names',
    GOOD.replace('listeners:\n', 'listeners:\n  - { name: smtp, port: 2525 }\n'),
    /listeners\[1\]\.name: "smtp" is used by two listeners/,
  ],
  [
    'vip without clientip',
    GOOD.replace('mode: plain', 'mode: vip'),
    /listeners\[0\]\.mode: mode vip is transparent and needs upstream\.source: clientip/,
  ],
  ['bad mode', GOOD.replace('mode: plain', 'mode: transparent'), /listeners\[0\]\.mode: must be one of "plain", "vip", "intercept"/],
  ['negative retries', GOOD.replace('retries: 2', 'retries: -1'), /upstream\.retries: must be from 0 to 16 \(got -1\)/],
  [
    'string where a number belongs',
    GOOD.replace('maxConnections: 15000', 'maxConnections: lots'),
    /limits\.maxConnections: must be a whole number \(got "lots"\)/,
  ],
  [
    'reject reply that is not 5xx',
    GOOD.replace('action: drop', 'action: reject\n  rejectReply: "250 ok"'),
    /detection\.rejectReply: must be an SMTP reply starting with a 5xx code/,
  ],
  [
    'limits.rate.perClient of 0',
    GOOD.replace('maxConnections: 15000', 'rate: { perClient: 0, interval: 1m }'),
    /limits\.rate\.perClient: must be from 1 to 10000 \(got 0\)/,
  ],
  [
    'limits.rate.interval of 0',
    GOOD.replace('maxConnections: 15000', 'rate: { perClient: 5, interval: 0s }'),
    /limits\.rate\.interval: must be more than 0 \(got 0s\)/,
  ],
  ['limits.rate without interval', GOOD.replace('maxConnections: 15000', 'rate: { perClient: 5 }'), /limits\.rate\.interval: /],
  [
    'limits.rate.interval not a duration',
    GOOD.replace('maxConnections: 15000', 'rate: { perClient: 5, interval: 60 }'),
    /limits\.rate\.interval: /,
  ],
  [
    'a timer longer than Node allows',
    GOOD.replace('client: 5m', 'client: 30d'),
    /timeouts\.client: 30d is too long for a timer; use at most 24d/,
  ],
  ['not a mapping', '- just\n- a list\n', /\(top level\): must be a mapping/],
  ['empty file', '', /\(top level\): must be a mapping .*got an empty file/],
  [
    'intercept destination with host bits',
    GOOD.replace('mode: plain', 'mode: intercept\n    destinations: [10.0.2.10/24]').replace('source: self', 'source: clientip'),
    /listeners\[0\]\.destinations\[0\]: "10\.0\.2\.10\/24" has host bits set; did you mean 10\.0\.2\.0\/24\?/,
  ],
  // Every kind of schema constraint says what it wants, in words (and never echoes a secret).
  [
    'an api.token shorter than 16 characters',
    `${GOOD}api: { token: s3cret-t0ken }\n`,
    /api\.token: must be at least 16 characters \(got 12\)$/m,
  ],
  ['an empty listener name', GOOD.replace('name: smtp\n', 'name: ""\n'), /listeners\[0\]\.name: must not be empty/],
  [
    'a listener name with a space',
    GOOD.replace('name: smtp\n', 'name: "my smtp"\n'),
    /listeners\[0\]\.name: may only contain letters, digits, "_", "\." and "-" \(got "my smtp"\)/,
  ],
  [
    'a teaser that is not a 220- line',
    GOOD.replace('action: drop', 'action: drop\n  teaser: "220 mx"'),
    /detection\.teaser: must be the first line of a multi-line greeting: "220-" then printable ASCII/,
  ],
  [
    'a teaser longer than 200 characters',
    GOOD.replace('action: drop', `action: drop\n  teaser: "220-${'x'.repeat(250)}"`),
    /detection\.teaser: must be at most 200 characters \(got 254\)/,
  ],
  [
    'a health HELO name with a space',
    GOOD.replace('retries: 2', 'retries: 2\n  health: { helo: "my host" }'),
    /upstream\.health\.helo: must be a host name: letters, digits, "\." and "-" \(got "my host"\)/,
  ],
  [
    'a table name starting with a digit',
    `${GOOD}netfilter: { tableName: 1etd }\n`,
    /netfilter\.tableName: must start with a letter, then at most 31 letters, digits or "_" \(got "1etd"\)/,
  ],
  [
    'a DNSBL zone that is not a DNS name',
    `${GOOD}reputation: { dnsbl: [{ zone: "zen..example", weight: 3 }] }\n`,
    /reputation\.dnsbl\[0\]\.zone: "zen\.\.example" is not a DNS zone name; write it like zen\.spamhaus\.org/,
  ],
  [
    'a DNSBL entry without a weight',
    `${GOOD}reputation: { dnsbl: [{ zone: zen.example }] }\n`,
    /reputation\.dnsbl\[0\]\.weight: is required/,
  ],
  [
    'a DNSBL weight of 0',
    `${GOOD}reputation: { dnsbl: [{ zone: zen.example, weight: 0 }] }\n`,
    /reputation\.dnsbl\[0\]\.weight: is 0, so the list never changes the score; give it a weight/,
  ],
  [
    'a DNSBL match range that runs backwards',
    `${GOOD}reputation: { dnsbl: [{ zone: zen.example, weight: 3, match: ["127.0.0.11-127.0.0.2"] }] }\n`,
    /reputation\.dnsbl\[0\]\.match\[0\]: "127\.0\.0\.11-127\.0\.0\.2" runs backwards; write the lower address first/,
  ],
  [
    'a DNSBL match octet out of range',
    `${GOOD}reputation: { dnsbl: [{ zone: zen.example, weight: 3, match: ["127.0.[0..300].2"] }] }\n`,
    /reputation\.dnsbl\[0\]\.match\[0\]: "127\.0\.\[0\.\.300\]\.2": octets go from 0 to 255/,
  ],
  [
    'an allowThreshold not under the threshold',
    `${GOOD}reputation: { threshold: 3, allowThreshold: 3 }\n`,
    /reputation\.allowThreshold: must be lower than reputation\.threshold \(3 ≥ 3\)/,
  ],
  [
    'a DNSBL reply that is not 5xx',
    `${GOOD}reputation: { reply: "450 try later" }\n`,
    /reputation\.reply: must be an SMTP reply starting with a 5xx code/,
  ],
  [
    'an unknown placeholder in the DNSBL reply',
    `${GOOD}reputation: { reply: "554 blocked by {zone}" }\n`,
    /reputation\.reply: \{zone\} is not a placeholder; use \{client\}/,
  ],
  [
    'a DNSBL resolver given by name',
    `${GOOD}reputation: { resolvers: [dns.example] }\n`,
    /reputation\.resolvers\[0\]: "dns\.example" is not a DNS server address; write an IP address/,
  ],
  [
    'a DNSBL minTtl over maxTtl',
    `${GOOD}reputation: { minTtl: 2h, maxTtl: 1h }\n`,
    /reputation\.minTtl: 2h is longer than reputation\.maxTtl 1h; make it shorter/,
  ],
  [
    'an unknown DNSBL action',
    `${GOOD}reputation: { action: ignore }\n`,
    /reputation\.action: must be one of "reject", "drop" \(got "ignore"\)/,
  ],
  ['a DNSBL timeout without a unit', `${GOOD}reputation: { timeout: 2 }\n`, /reputation\.timeout: must be a duration/],
  [
    'a backlog of 0',
    GOOD.replace('mode: plain', 'mode: plain\n    backlog: 0'),
    /listeners\[0\]\.backlog: must be from 1 to 1000000 \(got 0\)/,
  ],
  [
    'a cluster without url or sentinels',
    `${GOOD}cluster: { redis: { keyPrefix: "etd:" } }\n`,
    /cluster\.redis\.url: set url \(redis:\/\/\[:password@\]host:6379\) or sentinels plus name/,
  ],
  [
    'a cluster url that is not redis',
    `${GOOD}cluster: { redis: { url: "http://10.0.0.5:6379" } }\n`,
    /cluster\.redis\.url: scheme "http:" is not redis: or rediss: \(TLS\)/,
  ],
  [
    'a cluster url without a scheme',
    `${GOOD}cluster: { redis: { url: "10.0.0.5:6379" } }\n`,
    /cluster\.redis\.url: "10\.0\.0\.5:6379" is not a URL; write redis:\/\/host:6379/,
  ],
  [
    'sentinels without the master name',
    `${GOOD}cluster: { redis: { sentinels: ["10.0.0.5:26379"] } }\n`,
    /cluster\.redis\.name: sentinels need the master name they monitor/,
  ],
  [
    'a sentinel that is not host:port',
    `${GOOD}cluster: { redis: { sentinels: ["10.0.0.5:port"], name: mymaster } }\n`,
    /cluster\.redis\.sentinels\[0\]: "10\.0\.0\.5:port" is not host:port/,
  ],
  [
    'a master name without sentinels',
    `${GOOD}cluster: { redis: { url: "redis://10.0.0.5", name: mymaster } }\n`,
    /cluster\.redis\.name: name is the Sentinel master name: add sentinels/,
  ],
  [
    'a key prefix with a space',
    `${GOOD}cluster: { redis: { url: "redis://10.0.0.5", keyPrefix: "etd prod:" } }\n`,
    /cluster\.redis\.keyPrefix: must be 1 to 64 printable ASCII characters without spaces/,
  ],
  [
    'a cluster command timeout of 0',
    `${GOOD}cluster: { redis: { url: "redis://10.0.0.5", commandTimeout: 0ms } }\n`,
    /cluster\.redis\.commandTimeout: must be at least 1ms/,
  ],
  [
    'a cluster CA without TLS',
    `${GOOD}cluster: { redis: { url: "redis://10.0.0.5", caFile: /etc/hostname } }\n`,
    /cluster\.redis\.caFile: a CA is only used over TLS: write rediss:\/\/ in url/,
  ],
  [
    'a cluster CA file that does not exist',
    `${GOOD}cluster: { redis: { url: "rediss://10.0.0.5", caFile: /nonexistent/ca.pem } }\n`,
    /cluster\.redis\.caFile: cannot read \/nonexistent\/ca\.pem: ENOENT/,
  ],
  [
    'an unknown cluster key',
    `${GOOD}cluster: { redis: { url: "redis://10.0.0.5" }, sync: 1s }\n`,
    /cluster\.sync: unknown key; .*syncInterval/,
  ],
];

describe('malformed configs give an error naming the key path, the problem and the fix', () => {
  for (const [name, text, expected] of BAD) {
    it(name, () => {
      let err: unknown;
      try {
        parseConfig(text, 'etd.yaml');
      } catch (e) {
        err = e;
      }
      expect(isEtdError(err, 'ETD_ERR_CONFIG_INVALID')).toBe(true);
      expect((err as Error).message).toMatch(expected);
      expect((err as Error).message.startsWith('etd.yaml: ')).toBe(true);
    });
  }

  it('invalid YAML is ETD_ERR_CONFIG_PARSE with the line', () => {
    let err: unknown;
    try {
      parseConfig('listeners:\n  - name: a\n   port: 25\n', 'x.yaml');
    } catch (e) {
      err = e;
    }
    expect(isEtdError(err, 'ETD_ERR_CONFIG_PARSE')).toBe(true);
    expect((err as Error).message).toMatch(/x\.yaml: not valid YAML: .*line 3/);
  });

  it('duplicate YAML keys are refused', () => {
    expect(() => parseConfig(GOOD.replace('action: drop', 'action: drop\n  action: log'))).toThrow(
      /not valid YAML.*[Dd]uplicate|Map keys must be unique/,
    );
  });

  it('a missing file is ETD_ERR_CONFIG_READ with a hint', () => {
    const missing = path.join(os.tmpdir(), `etd-missing-${process.pid}.yaml`);
    expect(() => loadConfig(missing)).toThrow(/cannot read config .*ENOENT — pass the path of an existing file/);
  });

  it('reads a real file', () => {
    const f = path.join(os.tmpdir(), `etd-good-${process.pid}.yaml`);
    fs.writeFileSync(f, GOOD);
    try {
      expect(loadConfig(f).upstream.servers).toHaveLength(1);
    } finally {
      fs.unlinkSync(f);
    }
  });
});
