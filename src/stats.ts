// Counters since start and live gauges, fed by session events; read by the API, metrics and logs.

import type { ProtocolTest, SessionSummary } from './proxy/protocol.js';
import type { Verdict } from './proxy/verdict.js';

export class Stats {
  readonly startedAt = Date.now();
  accepted = 0;
  held = 0;
  relaying = 0;
  relayed = 0;
  readonly verdicts: Record<Verdict, number> = {
    passed: 0,
    early_talker: 0,
    protocol: 0,
    no_server: 0,
    limit: 0,
    denied: 0,
    client_gone: 0,
    shutdown: 0,
    dnsbl: 0,
    error: 0,
  };
  readonly earlyTalkers = { drop: 0, reject: 0, log: 0 };
  /** Sessions a protocol test caught (whatever its action: log, reject or drop), by test. */
  readonly protocolTests: Record<ProtocolTest, number> = { pipelining: 0, non_smtp_command: 0, bare_newline: 0 };
  /** Connections refused by a limit, by limit. */
  readonly limits = { max_connections: 0, max_held: 0, per_client: 0, per_client_rate: 0 };
  bytesFromClient = 0;
  bytesToClient = 0;

  ended(s: SessionSummary): void {
    this.verdicts[s.verdict]++;
    if (s.verdict === 'early_talker' || s.action) {
      const action = (s.action ?? 'drop') as keyof Stats['earlyTalkers'];
      if (s.talkedAfterMs !== undefined) this.earlyTalkers[action]++;
    }
    if (s.protocolTest !== undefined) this.protocolTests[s.protocolTest]++;
    this.bytesFromClient += s.bytesFromClient;
    this.bytesToClient += s.bytesToClient;
  }

  snapshot() {
    return {
      startedAt: new Date(this.startedAt).toISOString(),
      accepted: this.accepted,
      held: this.held,
      relaying: this.relaying,
      relayed: this.relayed,
      verdicts: { ...this.verdicts },
      earlyTalkers: { ...this.earlyTalkers },
      protocolTests: { ...this.protocolTests },
      limits: { ...this.limits },
      bytes: { fromClient: this.bytesFromClient, toClient: this.bytesToClient },
    };
  }
}
