// The DNSBL/DNSWL metrics on /metrics: counters read from Reputation at scrape time, the query latency as a histogram.

import { Counter, Histogram, type Registry } from 'prom-client';
import type { Reputation } from './lookup.js';

/** DNS over a LAN answers in a ms; a public list through a resolver in tens of ms; the timeout is ~2 s. */
const QUERY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5];

/** Registers the reputation metrics; returns the function that stops feeding the histogram. */
export function registerReputationMetrics(registry: Registry, rep: Reputation): () => void {
  const registers = [registry];
  // Read at each scrape (one set of counters: one thread decides).
  const counters = () => rep.counters;
  const perKey = (name: string, help: string, label: 'zone' | 'list', read: () => Map<string, number>) =>
    new Counter({
      name,
      help,
      labelNames: [label],
      registers,
      collect() {
        this.reset();
        for (const [k, n] of read()) this.inc({ [label]: k }, n);
      },
    });
  perKey('etd_dnsbl_queries_total', 'DNSBL/DNSWL queries sent, by zone', 'zone', () => counters().queries);
  perKey('etd_dnsbl_hits_total', 'connections whose client a list matched, by list name', 'list', () => counters().hits);
  perKey(
    'etd_dnsbl_timeouts_total',
    'DNSBL queries not answered within reputation.timeout (counted 0), by zone',
    'zone',
    () => counters().timeouts,
  );
  perKey(
    'etd_dnsbl_errors_total',
    'DNSBL queries that failed (SERVFAIL, REFUSED, network error; counted 0), by zone',
    'zone',
    () => counters().errors,
  );
  perKey(
    'etd_dnsbl_refused_answers_total',
    'answers in 127.255.255.0/24 (the list refused the query: public resolver or no access; counted 0), by zone',
    'zone',
    () => counters().refused,
  );
  new Counter({
    name: 'etd_dnsbl_overflow_total',
    help: 'DNSBL queries not sent because reputation.maxInFlight were out (counted 0)',
    registers,
    collect() {
      this.reset();
      this.inc(counters().overflow);
    },
  });
  new Counter({
    name: 'etd_dnsbl_allowlisted_total',
    help: 'connections whose score was at or under reputation.allowThreshold (connected without the window)',
    registers,
    collect() {
      this.reset();
      this.inc(counters().allowlistedClients);
    },
  });
  new Counter({
    name: 'etd_dnsbl_peer_answers_total',
    help: "zone answers taken from other gateways (cluster.redis) before this gateway's own query answered",
    registers,
    collect() {
      this.reset();
      this.inc(counters().fromPeers);
    },
  });
  const latency = new Histogram({
    name: 'etd_dnsbl_query_seconds',
    help: 'time a DNSBL query took (to its answer, error or timeout), by zone',
    labelNames: ['zone'],
    buckets: QUERY_BUCKETS,
    registers,
  });
  return rep.onQuery((zone, seconds) => latency.observe({ zone }, seconds));
}
