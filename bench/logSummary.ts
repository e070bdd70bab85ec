// Sanity check of a measured run from the proxy's own session log: how the sessions ended (etd verdict/cause, HAProxy termination state).

import fs from 'node:fs';
import { isEtd, type ProxyKind } from './proxy.js';

/** HAProxy tcplog: "... Tw/Tc/Tt bytes TS actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue". */
const TCPLOG_END = / \d+ (\S\S) \d+\/\d+\/\d+\/\d+\/\+?\d+ \d+\/\d+\s*$/;

/**
 * Counts session endings in a proxy log: for etd "verdict/cause" of each summary line, for
 * HAProxy the two-letter termination state of each tcplog line ("--" is a normal end).
 */
export function sessionEndings(kind: ProxyKind, logFile: string): Record<string, number> {
  const counts: Record<string, number> = {};
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return counts;
  }
  for (const line of text.split('\n')) {
    let key: string | undefined;
    if (isEtd(kind)) {
      if (!line.includes('"msg":"session"')) continue;
      try {
        const o = JSON.parse(line) as { verdict?: unknown; cause?: unknown };
        key = `${String(o.verdict)}/${String(o.cause)}`;
      } catch {
        continue;
      }
    } else {
      key = TCPLOG_END.exec(line)?.[1];
    }
    if (key !== undefined) counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}
