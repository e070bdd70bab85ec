// The reputation decision, pure: answer patterns, query names, the score and what it earns (table-tested).

import { describe, expect, it } from 'vitest';
import { isResolverAddress, isZoneName } from '../../src/reputation/configCheck.js';
import { dnsblFindings, type ZoneProbe } from '../../src/reputation/doctorFindings.js';
import { compilePatterns, DEFAULT_MATCH, isRefusedAnswer, matchesAny, parsePattern } from '../../src/reputation/match.js';
import { queryName } from '../../src/reputation/query.js';
import { decide, type ReputationList, replyText, scoreOf, settledDecision, type ZoneAnswer } from '../../src/reputation/score.js';

describe('answer patterns', () => {
  const cases: Array<[string, string, boolean]> = [
    ['127.0.0.2', '127.0.0.2', true],
    ['127.0.0.2', '127.0.0.3', false],
    ['127.0.0.2-127.0.0.11', '127.0.0.11', true],
    ['127.0.0.2-127.0.0.11', '127.0.0.12', false],
    ['127.0.0.2-127.0.0.11', '127.0.0.1', false],
    ['127.0.[0..255].[2..3]', '127.0.200.3', true],
    ['127.0.[0..255].[2..3]', '127.0.200.4', false],
    ['127.0.[0..255].[1..3]', '127.1.0.1', false],
    ['127.0.0.0/24', '127.0.0.255', true],
    ['127.0.0.0/24', '127.0.1.0', false],
    ['127.0.0.0/8', '10.0.0.2', false],
  ];
  it.each(cases)('%s matches %s: %s', (pattern, answer, want) => {
    expect(matchesAny(compilePatterns([pattern]), answer)).toBe(want);
  });

  it('the default is 127.0.0.0/8 without 127.255.255.0/24', () => {
    const d = compilePatterns(DEFAULT_MATCH);
    expect(matchesAny(d, '127.0.0.2')).toBe(true);
    expect(matchesAny(d, '127.255.254.255')).toBe(true);
    expect(matchesAny(d, '127.255.255.254')).toBe(false);
    expect(matchesAny(d, '128.0.0.1')).toBe(false);
    expect(isRefusedAnswer('127.255.255.252')).toBe(true);
    expect(isRefusedAnswer('127.0.0.2')).toBe(false);
  });

  const bad: Array<[string, RegExp]> = [
    ['127.0.0', /not an IPv4 answer pattern/],
    ['127.0.0.11-127.0.0.2', /runs backwards; write the lower address first/],
    ['127.0.[3..1].0', /runs backwards; write \[1\.\.3\]/],
    ['127.0.[0..256].0', /octets go from 0 to 255/],
    ['127.0.0.1/24', /host bits set; write the network address, e\.g\. 127\.0\.0\.0\/24/],
    ['127.0.0.0/33', /not an IPv4 CIDR/],
    ['2001:db8::/32', /not an IPv4 CIDR/],
    ['127.0.x.1', /"x" is not an octet/],
  ];
  it.each(bad)('%s is refused with its fix', (text, want) => {
    expect(parsePattern(text)).toMatch(want);
  });
});

describe('query names', () => {
  it.each([
    ['192.0.2.1', 'zen.example', '1.2.0.192.zen.example'],
    ['::ffff:192.0.2.1', 'zen.example.', '1.2.0.192.zen.example'],
    ['2001:db8::1', 'zen.example', '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example'],
    ['2001:DB8:1:2:3:4:5:6', 'bl.test', '6.0.0.0.5.0.0.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test'],
  ])('%s in %s → %s', (address, zone, want) => {
    expect(queryName(address, zone)).toBe(want);
  });
  it('nothing for a non-address', () => expect(queryName('mail.example', 'zen.example')).toBeUndefined());
});

const list = (zone: string, weight: number, match: readonly string[] = DEFAULT_MATCH, name = zone): ReputationList => ({
  zone,
  name,
  weight,
  patterns: compilePatterns(match),
});
const LISTS = [
  list('bl3.test', 3),
  list('one.test', 1),
  list('two.test', 1),
  list('wl.test', -2, ['127.0.[0..255].[1..3]'], 'allowlist'),
  list('refused.test', 3),
];
const A = (...addresses: string[]): ZoneAnswer => ({ status: 'answer', addresses });
const NONE: ZoneAnswer = { status: 'none' };
const TIMEOUT: ZoneAnswer = { status: 'timeout' };

describe('score and decision (threshold 3, allowThreshold -1)', () => {
  const rows: Array<[string, Record<string, ZoneAnswer>, number, string, string[]]> = [
    ['nothing listed', { 'bl3.test': NONE, 'one.test': NONE, 'two.test': NONE, 'wl.test': NONE, 'refused.test': NONE }, 0, 'window', []],
    ['one weight-3 list', { 'bl3.test': A('127.0.0.2') }, 3, 'refuse', ['bl3.test']],
    ['two weight-1 lists', { 'one.test': A('127.0.0.2'), 'two.test': A('127.0.0.10') }, 2, 'window', ['one.test', 'two.test']],
    ['allowlisted', { 'wl.test': A('127.0.10.2') }, -2, 'allow', ['allowlist']],
    ['allowlist answer outside its match', { 'wl.test': A('127.0.10.4') }, 0, 'window', []],
    ['listed and allowlisted', { 'bl3.test': A('127.0.0.2'), 'wl.test': A('127.0.0.2') }, 1, 'window', ['bl3.test', 'allowlist']],
    ['a refused query counts nothing', { 'refused.test': A('127.255.255.254') }, 0, 'window', []],
    [
      'a timeout counts nothing',
      { 'bl3.test': TIMEOUT, 'one.test': { status: 'overflow' }, 'two.test': { status: 'error' } },
      0,
      'window',
      [],
    ],
    ['several answers: the list counts once', { 'bl3.test': A('127.0.0.2', '127.0.0.4', '127.0.0.10') }, 3, 'refuse', ['bl3.test']],
    ['a refused answer beside a listing', { 'bl3.test': A('127.255.255.254', '127.0.0.3') }, 3, 'refuse', ['bl3.test']],
  ];
  it.each(rows)('%s', (_, answers, score, decision, names) => {
    const s = scoreOf(LISTS, new Map(Object.entries(answers)));
    expect(s.score).toBe(score);
    expect(s.hits.map((h) => h.name)).toEqual(names);
    expect(decide(s.score, 3, -1)).toBe(decision);
  });

  it('names refused answers and unanswered zones', () => {
    const s = scoreOf(
      LISTS,
      new Map([
        ['refused.test', A('127.255.255.254')],
        ['bl3.test', TIMEOUT],
      ]),
    );
    expect(s.refused).toEqual([{ zone: 'refused.test', answer: '127.255.255.254' }]);
    expect(s.unanswered).toEqual(['bl3.test', 'one.test', 'two.test', 'wl.test']);
  });

  it.each([
    [3, 'refuse'],
    [2, 'window'],
    [0, 'window'],
    [-1, 'allow'],
    [-5, 'allow'],
  ] as const)('score %i → %s', (score, want) => expect(decide(score, 3, -1)).toBe(want));

  it('the reply names the heaviest list and the client; the name can hide the zone', () => {
    const hits = [
      { name: 'one.test', answer: '127.0.0.2', weight: 1 },
      { name: 'a blocklist', answer: '127.0.0.2', weight: 3 },
    ];
    expect(replyText('554 5.7.1 Service unavailable; client [{client}] blocked using {name}', '192.0.2.1', hits)).toBe(
      '554 5.7.1 Service unavailable; client [192.0.2.1] blocked using a blocklist',
    );
  });
});

describe('config helpers', () => {
  it.each([
    ['zen.spamhaus.org', true],
    ['list.dnswl.org.', true],
    ['bad..zone', false],
    ['-bad.example', false],
    ['has space.example', false],
  ])('zone %s: %s', (z, want) => expect(isZoneName(z)).toBe(want));
  it.each([
    ['192.0.2.53', true],
    ['192.0.2.53:5353', true],
    ['2001:db8::53', true],
    ['[2001:db8::53]:5353', true],
    ['dns.example', false],
    ['192.0.2.53:0', false],
  ])('resolver %s: %s', (r, want) => expect(isResolverAddress(r)).toBe(want));
});

describe('a decision that pending zones cannot change is final', () => {
  const lists = [list('bl3.test', 3), list('dead.test', 3), list('wl.test', -2), list('one.test', 1)];
  const rows: Array<[string, Record<string, ZoneAnswer>, string | undefined]> = [
    ['listed, only blocklists pending', { 'bl3.test': A('127.0.0.2'), 'wl.test': NONE }, 'refuse'],
    ['listed, an allowlist pending', { 'bl3.test': A('127.0.0.2') }, undefined],
    ['allowlisted, blocklists pending', { 'wl.test': A('127.0.0.2') }, undefined],
    ['allowlisted, nothing pending', { 'bl3.test': NONE, 'dead.test': NONE, 'wl.test': A('127.0.0.2'), 'one.test': NONE }, 'allow'],
    ['clean, all answered', { 'bl3.test': NONE, 'dead.test': NONE, 'wl.test': NONE, 'one.test': NONE }, 'window'],
    ['clean, one pending', { 'bl3.test': NONE, 'wl.test': NONE, 'one.test': NONE }, undefined],
  ];
  it.each(rows)('%s → %s', (_, answers, want) => {
    const s = scoreOf(lists, new Map(Object.entries(answers)));
    expect(settledDecision(lists, s, 3, -1)).toBe(want);
  });
});

describe('doctor findings per zone (test entry 127.0.0.2)', () => {
  const c = {
    dnsbl: [
      { zone: 'zen.example', weight: 3, match: undefined, name: undefined },
      { zone: 'wl.example', weight: -2, match: ['127.0.[0..255].[1..3]'], name: 'allowlist' },
    ],
    threshold: 3,
    allowThreshold: -1,
    action: 'reject' as const,
    reply: '554 x',
    timeoutMs: 1000,
    resolvers: ['192.0.2.53'],
    minTtlMs: 1,
    maxTtlMs: 2,
    maxInFlight: 1,
  };
  const rows: Array<[string, ZoneProbe, string, RegExp]> = [
    ['listed as it should be', { zone: 'zen.example', answers: ['127.0.0.2'] }, 'OK', /answered 127\.0\.0\.2 through 192\.0\.2\.53/],
    ['refused (public resolver)', { zone: 'zen.example', answers: ['127.255.255.254'] }, 'FAIL', /refused the query/],
    ['no such name', { zone: 'zen.example', none: true }, 'WARN', /does not exist: the zone name may be wrong/],
    [
      'unreachable',
      { zone: 'zen.example', error: 'ETIMEOUT' },
      'FAIL',
      /no answer for 2\.0\.0\.127\.zen\.example through 192\.0\.2\.53 \(ETIMEOUT\)/,
    ],
    ['an answer outside match', { zone: 'wl.example', answers: ['127.0.0.9'] }, 'WARN', /does not count/],
  ];
  it.each(rows)('%s', (_, probe, status, detail) => {
    const f = dnsblFindings(c, [probe]).find((x) => x.id === `dnsbl.${probe.zone}`)!;
    expect(f.status).toBe(status);
    expect(f.detail).toMatch(detail);
    if (status !== 'OK') expect(f.fix).toBeTruthy();
    if (/refused/.test(_)) expect(f.fix).toMatch(/use your own resolver, not a public one/);
  });
});
