// Verdict words as the page shows them: a symbol and a label with each colour, so colour is never the only signal.

import type { Verdict } from '../../src/proxy/verdict.js';

export interface VerdictView {
  readonly id: Verdict;
  readonly label: string;
  readonly symbol: string;
  readonly colour: string;
}

// A Record over the server's Verdict type: a verdict added there is a type error here until it has its view.
const VIEWS: Record<Verdict, Omit<VerdictView, 'id'>> = {
  passed: { label: 'passed', symbol: '✓', colour: '#1a7f37' },
  early_talker: { label: 'early talker', symbol: '✗', colour: '#c62828' },
  protocol: { label: 'protocol', symbol: '⨯', colour: '#b3261e' },
  denied: { label: 'denied', symbol: '⊘', colour: '#8a3ab9' },
  dnsbl: { label: 'DNSBL', symbol: '⛔', colour: '#6e2b8a' },
  limit: { label: 'limit', symbol: '‖', colour: '#b35900' },
  no_server: { label: 'no server', symbol: '⚠', colour: '#9a6700' },
  client_gone: { label: 'client gone', symbol: '…', colour: '#57606a' },
  shutdown: { label: 'shutdown', symbol: '■', colour: '#24292f' },
  error: { label: 'etd error', symbol: '!', colour: '#cf222e' },
};

export const VERDICTS: readonly VerdictView[] = (Object.keys(VIEWS) as Verdict[]).map((id) => ({ id, ...VIEWS[id] }));

export function verdictView(id: string): { label: string; symbol: string } {
  return VIEWS[id as Verdict] ?? { label: id, symbol: '?' };
}
