// The one configuration schema (TypeBox → JSON Schema) with its defaults, and the resolved Config type.
//
// The YAML file is validated against `ConfigSchema`; durations are strings ("6s") in the file and
// milliseconds in `Config`. The management API reuses these schemas for its request bodies.

import { type Static, Type } from '@sinclair/typebox';
import { RATE_MAX_PER_CLIENT, type RateSettings } from '../policy/connRate.js';
import { DURATION_PATTERN } from './duration.js';
import { type ProtocolAction, ProtocolSchema } from './protocolSchema.js';

const Duration = (def: string, description: string) =>
  Type.String({ pattern: DURATION_PATTERN, default: def, description: `${description} (e.g. 500ms, 6s, 5m)` });

/** The user `etd run` drops to by default (created by the Debian package and scripts/install.sh). */
export const DEFAULT_USER = 'etd';

export const Address = Type.String({ minLength: 1, description: 'an IPv4 or IPv6 address' });
export const Port = Type.Integer({ minimum: 1, maximum: 65535 });

export const ListenerSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, pattern: '^[A-Za-z0-9_.-]+$' }),
    address: Type.String({ default: '0.0.0.0' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 25 }),
    mode: Type.Union([Type.Literal('plain'), Type.Literal('vip'), Type.Literal('intercept')], { default: 'plain' }),
    backlog: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      default: 65535,
      description: 'accept backlog; the kernel caps it at net.core.somaxconn',
    }),
    destinations: Type.Array(Type.String(), {
      default: [],
      description: 'intercept mode: only these destination prefixes (CIDR); empty = all',
    }),
    freebind: Type.Boolean({
      default: false,
      description:
        'plain/vip mode: listen on the address even while this host does not hold it (IP_FREEBIND), e.g. a keepalived VIP on the peer',
    }),
  },
  { additionalProperties: false },
);

export const ServerSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, pattern: '^[A-Za-z0-9_.-]+$' }),
    address: Address,
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 25 }),
    weight: Type.Integer({ minimum: 0, maximum: 256, default: 1 }),
    backup: Type.Boolean({ default: false }),
    check: Type.Boolean({ default: true }),
  },
  { additionalProperties: false },
);

export const ConfigSchema = Type.Object(
  {
    listeners: Type.Array(ListenerSchema, { minItems: 1 }),
    user: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 32,
        pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*[$]?$',
        description:
          'the user `etd run` switches to when started as root outside systemd, keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (default etd; root = stay root)',
      }),
    ),
    workers: Type.Union([Type.Integer({ minimum: 1, maximum: 16 }), Type.Literal('auto')], {
      default: 'auto',
      description:
        'native engine threads, each with its own epoll loop and SO_REUSEPORT listening socket; decisions stay on the one JS thread (auto = the cores this process may use, at most 16; 1 = one thread)',
    }),
    detection: Type.Object(
      {
        window: Duration('6s', 'silent observation period'),
        action: Type.Union([Type.Literal('drop'), Type.Literal('reject'), Type.Literal('log')], { default: 'drop' }),
        rejectReply: Type.String({ default: '554 5.5.1 Protocol error: talking before the greeting', pattern: '^5[0-9][0-9] ' }),
        teaser: Type.Optional(
          Type.String({
            pattern: '^220-[ -~]+$',
            maxLength: 200,
            description: 'first line of a multi-line greeting sent before the window, e.g. "220-mx.example.com ESMTP"',
          }),
        ),
        stress: Type.Object(
          {
            above: Type.Optional(
              Type.Integer({
                minimum: 1,
                description: 'held connections above which the stress window applies (default 90% of limits.maxHeld)',
              }),
            ),
            below: Type.Optional(
              Type.Integer({
                minimum: 0,
                description: 'held connections below which the normal window returns (default 70% of limits.maxHeld)',
              }),
            ),
            window: Type.Optional(
              Type.String({
                pattern: DURATION_PATTERN,
                description: 'window while under stress (default 2s, or detection.window if shorter)',
              }),
            ),
          },
          { additionalProperties: false, default: {} },
        ),
        stripPipeconnect: Type.Boolean({
          default: true,
          description: 'remove PIPECONNECT from EHLO replies so Exim clients never talk early',
        }),
        protocol: ProtocolSchema,
      },
      { additionalProperties: false, default: {} },
    ),
    upstream: Type.Object(
      {
        source: Type.Union([Type.Literal('self'), Type.Literal('clientip'), Type.Literal('proxy-v1'), Type.Literal('proxy-v2')], {
          default: 'self',
        }),
        balance: Type.Union([Type.Literal('roundrobin'), Type.Literal('leastconn'), Type.Literal('first')], { default: 'roundrobin' }),
        forward: Type.Optional(Type.Union([Type.Literal('pool'), Type.Literal('original')])),
        connectTimeout: Duration('5s', 'time allowed for one upstream connect'),
        retries: Type.Integer({ minimum: 0, maximum: 16, default: 2 }),
        noServerReply: Type.String({ default: '421 4.3.2 Service not available, try again later', pattern: '^4[0-9][0-9] ' }),
        servers: Type.Array(ServerSchema, { default: [] }),
        passiveFall: Type.Integer({
          minimum: 0,
          maximum: 100,
          default: 3,
          description: 'consecutive connect failures that mark a server down before its next check (0 = off)',
        }),
        health: Type.Object(
          {
            enabled: Type.Boolean({ default: true }),
            interval: Duration('3s', 'time between two checks of one server'),
            rise: Type.Integer({ minimum: 1, maximum: 100, default: 2 }),
            fall: Type.Integer({ minimum: 1, maximum: 100, default: 3 }),
            timeout: Duration('2s', 'time allowed for one whole check'),
            helo: Type.String({ minLength: 1, pattern: '^[A-Za-z0-9.-]+$', default: 'etd.localdomain' }),
            command: Type.Union([Type.Literal('HELO'), Type.Literal('EHLO')], { default: 'HELO' }),
          },
          { additionalProperties: false, default: {} },
        ),
      },
      { additionalProperties: false },
    ),
    api: Type.Object(
      {
        enabled: Type.Boolean({ default: true }),
        address: Type.String({ default: '127.0.0.1', description: 'IP address, or a unix socket path starting with /' }),
        port: Type.Integer({ minimum: 0, maximum: 65535, default: 8025 }),
        token: Type.Optional(Type.String({ minLength: 16, description: 'bearer token; required when address is not loopback' })),
        tokenFile: Type.Optional(Type.String({ minLength: 1 })),
        allowedHosts: Type.Array(
          Type.String({
            pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$',
            maxLength: 255,
            description:
              "more names the Host header may carry (name, or name:port), e.g. a reverse proxy's public name; the listen address and localhost always pass",
          }),
          { default: [], maxItems: 64 },
        ),
        maxConnections: Type.Integer({
          minimum: 1,
          maximum: 10000,
          default: 64,
          description: 'API connections at once (event streams included); more are closed at once',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    timeouts: Type.Object(
      {
        client: Duration('5m', 'idle time allowed on the client side of a relayed session'),
        server: Duration('5m', 'idle time allowed on the server side of a relayed session'),
        shutdownGrace: Duration('30s', 'on SIGTERM, how long relayed sessions may take to finish'),
      },
      { additionalProperties: false, default: {} },
    ),
    limits: Type.Object(
      {
        maxConnections: Type.Integer({ minimum: 1, default: 15000, description: 'connections held or relayed at once; over it: 421' }),
        maxHeld: Type.Integer({ minimum: 1, default: 10000, description: 'connections in the window at once; over it: 421' }),
        perClient: Type.Integer({
          minimum: 0,
          default: 50,
          description: 'connections at once from one client address (0 = no limit); over it: 421 4.7.0',
        }),
        rate: Type.Optional(
          Type.Object(
            {
              perClient: Type.Integer({
                minimum: 1,
                maximum: RATE_MAX_PER_CLIENT,
                description: 'connections one client (an IPv4 address, an IPv6 /64) may open per interval; over it: 421 4.7.0',
              }),
              interval: Type.String({ pattern: DURATION_PATTERN, description: 'the interval perClient counts over (e.g. 1m)' }),
            },
            { additionalProperties: false, description: 'per-client connection rate (absent = off)' },
          ),
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    netfilter: Type.Object(
      {
        manage: Type.Boolean({ default: true }),
        mark: Type.Integer({ minimum: 1, maximum: 0xffffffff, default: 1 }),
        table: Type.Integer({ minimum: 1, maximum: 0xfffffffe, default: 100 }),
        rulePriority: Type.Integer({ minimum: 1, maximum: 32765, default: 100 }),
        tproxyPort: Type.Integer({ minimum: 1, maximum: 65535, default: 10025 }),
        tableName: Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_]{0,31}$', default: 'etd' }),
        watch: Duration('30s', 'how often etd checks that its rules are still in place and re-applies them (0ms = never)'),
      },
      { additionalProperties: false, default: {} },
    ),
    cache: Type.Object(
      {
        enabled: Type.Boolean({ default: true }),
        ttl: Duration('1d', 'how long a client that waited skips the window'),
        denyTtl: Duration('1h', 'how long an early talker is turned away at once'),
        scope: Type.Union([Type.Literal('ip'), Type.Literal('net')], { default: 'ip', description: 'net: IPv4 per /24, IPv6 per /64' }),
      },
      { additionalProperties: false, default: {} },
    ),
    access: Type.Object(
      {
        allow: Type.Array(Type.String(), { default: [], description: 'CIDRs that skip the window' }),
        deny: Type.Array(Type.String(), { default: [], description: 'CIDRs that are refused at once' }),
        denyAction: Type.Union([Type.Literal('reject'), Type.Literal('drop')], { default: 'reject' }),
        denyReply: Type.String({ default: '554 5.7.1 Service unavailable; client host blocked', pattern: '^5[0-9][0-9] ' }),
        maxEntries: Type.Integer({
          minimum: 0,
          maximum: 10_000_000,
          default: 100_000,
          description: 'runtime entries (API, cluster) kept at most; more are refused',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    reputation: Type.Object(
      {
        dnsbl: Type.Array(
          Type.Object(
            {
              zone: Type.String({ minLength: 1, maxLength: 200, description: 'the DNS zone queried, e.g. zen.spamhaus.org' }),
              weight: Type.Integer({
                minimum: -100,
                maximum: 100,
                description: 'added to the score when the list matches; negative = an allowlist (DNSWL)',
              }),
              match: Type.Optional(
                Type.Array(Type.String(), {
                  minItems: 1,
                  description:
                    'answers that count, e.g. 127.0.0.2-127.0.0.11, 127.0.[0..255].[2..3], 127.0.0.0/24 (default 127.0.0.0/8 minus 127.255.255.0/24)',
                }),
              ),
              name: Type.Optional(
                Type.String({
                  minLength: 1,
                  maxLength: 100,
                  description:
                    'what logs and the reply call the list (default: the zone); hides the zone as postscreen_dnsbl_reply_map does',
                }),
              ),
            },
            { additionalProperties: false },
          ),
          { default: [], description: 'DNSBL/DNSWL zones queried during the window (empty = no lookups)' },
        ),
        threshold: Type.Integer({
          minimum: -1000,
          maximum: 1000,
          default: 3,
          description: 'score at or above which the client is refused',
        }),
        allowThreshold: Type.Integer({
          minimum: -1000,
          maximum: 1000,
          default: -1,
          description: 'score at or below which the client skips the window',
        }),
        action: Type.Union([Type.Literal('reject'), Type.Literal('drop')], { default: 'reject' }),
        reply: Type.String({ default: '554 5.7.1 Service unavailable; client [{client}] blocked using {name}', pattern: '^5[0-9][0-9] ' }),
        timeout: Duration('2s', 'how long one lookup may take; later answers count 0'),
        resolvers: Type.Array(Type.String(), {
          default: [],
          description: 'DNS servers (address or address:port); empty = the system resolver (/etc/resolv.conf)',
        }),
        minTtl: Duration('60s', 'an answer is cached at least this long (and a negative answer exactly this long)'),
        maxTtl: Duration('1h', 'an answer is cached at most this long'),
        maxInFlight: Type.Integer({
          minimum: 1,
          maximum: 100_000,
          default: 1000,
          description: 'DNS queries in flight at once; over it a lookup counts 0',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    state: Type.Object(
      {
        path: Type.String({
          minLength: 1,
          default: '/var/lib/etd/state.db',
          description: 'SQLite file for the caches and runtime access entries (":memory:" = no persistence)',
        }),
      },
      { additionalProperties: false, default: {} },
    ),
    cluster: Type.Optional(
      Type.Object(
        {
          redis: Type.Object(
            {
              url: Type.Optional(
                Type.String({
                  minLength: 1,
                  description:
                    'redis://[user:password@]host[:port][/db], or rediss:// for TLS; with sentinels: only its credentials, TLS and db are used',
                }),
              ),
              sentinels: Type.Optional(
                Type.Array(Type.String({ minLength: 1 }), {
                  minItems: 1,
                  description: 'Sentinel addresses, "host:port" or redis[s]://[:password@]host:port',
                }),
              ),
              name: Type.Optional(Type.String({ minLength: 1, description: 'the master name the sentinels monitor' })),
              caFile: Type.Optional(
                Type.String({
                  minLength: 1,
                  description:
                    'PEM file of the CA that signed the Redis (and Sentinel) TLS certificates, when it is not in the system store',
                }),
              ),
              keyPrefix: Type.String({
                default: 'etd:',
                pattern: '^[!-~]{1,64}$',
                description: 'prefix of every key and channel etd uses, so gateways of one cluster share it and others do not',
              }),
              connectTimeout: Duration('2s', 'time allowed to connect to Redis'),
              commandTimeout: Duration('500ms', 'time allowed for one Redis command; a slower answer counts as an error'),
            },
            { additionalProperties: false },
          ),
          syncInterval: Duration(
            '5s',
            'how often the runtime access entries are read back whole from Redis (pub/sub carries each change at once)',
          ),
        },
        { additionalProperties: false },
      ),
    ),
    log: Type.Object(
      {
        level: Type.Union(
          ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
          { default: 'info' },
        ),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
);

/** The config as written in YAML, after defaults. */
export type RawConfig = Static<typeof ConfigSchema>;

export type Mode = 'plain' | 'vip' | 'intercept';
export type Action = 'drop' | 'reject' | 'log';
export type SourceMode = 'self' | 'clientip' | 'proxy-v1' | 'proxy-v2';

export interface ListenerConfig {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly mode: Mode;
  readonly backlog: number;
  readonly destinations: readonly string[];
  readonly freebind: boolean;
}

export interface ServerConfig {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly weight: number;
  readonly backup: boolean;
  readonly check: boolean;
}

export interface HealthConfig {
  readonly enabled: boolean;
  readonly intervalMs: number;
  readonly rise: number;
  readonly fall: number;
  readonly timeoutMs: number;
  readonly helo: string;
  readonly command: 'HELO' | 'EHLO';
}

export interface ApiConfig {
  readonly enabled: boolean;
  /** An IP address, or a unix socket path (starts with "/"). */
  readonly address: string;
  readonly port: number;
  /** The bearer token (read from tokenFile when that is set); undefined = no token. */
  readonly token: string | undefined;
  /** More names the Host header may carry (name or name:port); absent = none. */
  readonly allowedHosts?: readonly string[];
  /** Connections at once (default 64). */
  readonly maxConnections?: number;
}

export interface DnsblConfig {
  readonly zone: string;
  readonly weight: number;
  /** Undefined = the default (127.0.0.0/8 minus 127.255.255.0/24). */
  readonly match: readonly string[] | undefined;
  /** Undefined = the zone. */
  readonly name: string | undefined;
}

export interface ReputationConfig {
  readonly dnsbl: readonly DnsblConfig[];
  readonly threshold: number;
  readonly allowThreshold: number;
  readonly action: 'reject' | 'drop';
  readonly reply: string;
  readonly timeoutMs: number;
  readonly resolvers: readonly string[];
  readonly minTtlMs: number;
  readonly maxTtlMs: number;
  readonly maxInFlight: number;
}

/** The resolved, frozen config that the rest of etd uses: durations are milliseconds. */
export interface Config {
  readonly listeners: readonly ListenerConfig[];
  /** Native engine threads (`auto` resolved at load). */
  readonly workers: number;
  /** `workers` as written: a number or 'auto'. */
  readonly workersSetting: number | 'auto';
  /** The user `etd run` drops to when started as root outside systemd (src/privilege/); default `etd`. */
  readonly user: string;
  /** True when `user` was written in the file (a missing explicit user is an error, a missing default one a warning). */
  readonly userExplicit: boolean;
  readonly detection: {
    readonly windowMs: number;
    readonly action: Action;
    readonly rejectReply: string;
    readonly stripPipeconnect: boolean;
    readonly teaser: string | undefined;
    readonly stress: { readonly above: number; readonly below: number; readonly windowMs: number };
    /** The inline protocol tests on the relay's first commands (detection.protocol). */
    readonly protocol: {
      readonly pipelining: { readonly action: ProtocolAction };
      readonly nonSmtpCommand: { readonly action: ProtocolAction; readonly commands: readonly string[] };
      readonly bareNewline: { readonly action: ProtocolAction };
    };
  };
  readonly upstream: {
    readonly source: SourceMode;
    readonly balance: 'roundrobin' | 'leastconn' | 'first';
    readonly forward: 'pool' | 'original';
    readonly connectTimeoutMs: number;
    readonly retries: number;
    readonly noServerReply: string;
    readonly servers: readonly ServerConfig[];
    readonly passiveFall: number;
    readonly health: HealthConfig;
  };
  readonly api: ApiConfig;
  readonly timeouts: { readonly clientMs: number; readonly serverMs: number; readonly shutdownGraceMs: number };
  readonly limits: {
    readonly maxConnections: number;
    readonly maxHeld: number;
    readonly perClient: number;
    /** The per-client connection rate (src/policy/connRate.ts); undefined = off. */
    readonly rate: RateSettings | undefined;
  };
  readonly netfilter: {
    readonly manage: boolean;
    readonly mark: number;
    readonly table: number;
    readonly rulePriority: number;
    readonly tproxyPort: number;
    readonly tableName: string;
    readonly watchMs: number;
  };
  readonly cache: { readonly enabled: boolean; readonly ttlMs: number; readonly denyTtlMs: number; readonly scope: 'ip' | 'net' };
  readonly access: {
    readonly allow: readonly string[];
    readonly deny: readonly string[];
    readonly denyAction: 'reject' | 'drop';
    readonly denyReply: string;
    readonly maxEntries: number;
  };
  readonly reputation: ReputationConfig;
  readonly state: { readonly path: string };
  /** Shared state over Redis (src/cluster/); undefined = this gateway keeps its state to itself. */
  readonly cluster: ClusterConfig | undefined;
  readonly log: { readonly level: string };
}

export interface ClusterConfig {
  readonly redis: {
    readonly url: string | undefined;
    readonly sentinels: readonly string[] | undefined;
    readonly name: string | undefined;
    /** The caFile path as written, and its PEM text (read once, at load). */
    readonly caFile: string | undefined;
    readonly ca: string | undefined;
    readonly keyPrefix: string;
    readonly connectTimeoutMs: number;
    readonly commandTimeoutMs: number;
  };
  readonly syncIntervalMs: number;
}
