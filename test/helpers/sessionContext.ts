// The SessionContext unit tests give a Session: its listener 'l' in plain mode, a silent logger, the config's pool, source and policy, and its summaries collected.

import pino from 'pino';
import { Pool } from '../../src/backend/pool.js';
import type { Config } from '../../src/config/schema.js';
import { policyOf } from '../../src/proxy/policy.js';
import type { LiveSession, SessionContext, SessionSummary } from '../../src/proxy/protocol.js';
import { createSource } from '../../src/proxy/upstream.js';

/** `events` gets "started N" and "relaying N" as the session reports them. */
export function testSessionContext(config: Config, events?: string[]): { ctx: SessionContext; pool: Pool; summaries: SessionSummary[] } {
  const pool = new Pool(config.upstream.servers, config.upstream.balance, { passiveFall: 0 });
  const summaries: SessionSummary[] = [];
  const ctx: SessionContext = {
    listener: 'l',
    mode: 'plain',
    log: pino({ level: 'silent' }),
    pool,
    source: createSource(config.upstream.source),
    policy: policyOf(config),
    sessionStarted: (s: LiveSession) => events?.push(`started ${s.id}`),
    sessionRelaying: (s: LiveSession) => events?.push(`relaying ${s.id}`),
    sessionEnded: (_s: LiveSession, summary: SessionSummary) => summaries.push(summary),
  };
  return { ctx, pool, summaries };
}
