// I/O: the doctor's query of each configured zone for the test entry 127.0.0.2, through the configured resolvers.

import { Resolver } from 'node:dns/promises';
import type { ReputationConfig } from '../config/schema.js';
import { TEST_ENTRY, type ZoneProbe } from './doctorFindings.js';
import { queryName } from './query.js';

export async function probeZones(c: ReputationConfig): Promise<ZoneProbe[]> {
  const r = new Resolver({ timeout: c.timeoutMs, tries: 2 });
  if (c.resolvers.length) r.setServers([...c.resolvers]);
  const zones = [...new Set(c.dnsbl.map((d) => d.zone))];
  return Promise.all(
    zones.map(async (zone): Promise<ZoneProbe> => {
      try {
        return { zone, answers: await r.resolve4(queryName(TEST_ENTRY, zone)!) };
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? String(e);
        return code === 'ENOTFOUND' || code === 'ENODATA' ? { zone, none: true } : { zone, error: code };
      }
    }),
  );
}
