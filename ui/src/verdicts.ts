// Verdict words as the page shows them: a symbol and a label with each colour, so colour is never the only signal.

export interface VerdictView {
  readonly id: string;
  readonly label: string;
  readonly symbol: string;
}

export const VERDICTS: readonly VerdictView[] = [
  { id: 'passed', label: 'passed', symbol: '✓' },
  { id: 'early_talker', label: 'early talker', symbol: '✗' },
  { id: 'denied', label: 'denied', symbol: '⊘' },
  { id: 'limit', label: 'limit', symbol: '‖' },
  { id: 'no_server', label: 'no server', symbol: '⚠' },
  { id: 'client_gone', label: 'client gone', symbol: '…' },
  { id: 'shutdown', label: 'shutdown', symbol: '■' },
];

export const VERDICT_COLOURS: Record<string, string> = {
  passed: '#1a7f37',
  early_talker: '#c62828',
  denied: '#8a3ab9',
  limit: '#b35900',
  no_server: '#9a6700',
  client_gone: '#57606a',
  shutdown: '#24292f',
};

export function verdictView(id: string): VerdictView {
  return VERDICTS.find((v) => v.id === id) ?? { id, label: id, symbol: '?' };
}
