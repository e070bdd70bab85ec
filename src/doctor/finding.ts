// A finding of the doctor (OK/WARN/FAIL, what, why, the fix) and the small vocabulary every evaluator builds them with.

export type Status = 'OK' | 'WARN' | 'FAIL';

export interface Finding {
  /** Stable identifier (for tests, scripts and the JSON output), e.g. `sysctl.rp_filter`, `ip.rule.v4`, `return.b1`. */
  readonly id: string;
  readonly status: Status;
  /** What was checked, in a few words. */
  readonly what: string;
  /** What was found, and why it matters. */
  readonly detail: string;
  /** The exact command that fixes it (FAIL and WARN only, when there is one). */
  readonly fix?: string;
  /** `etd run` refuses to start when a critical check FAILs. */
  readonly critical: boolean;
}

export function ok(id: string, what: string, detail: string, critical: boolean): Finding {
  return { id, status: 'OK', what, detail, critical };
}
export function warn(id: string, what: string, detail: string, critical: boolean, fix?: string): Finding {
  return fix === undefined ? { id, status: 'WARN', what, detail, critical } : { id, status: 'WARN', what, detail, fix, critical };
}
export function fail(id: string, what: string, detail: string, critical: boolean, fix?: string): Finding {
  return fix === undefined ? { id, status: 'FAIL', what, detail, critical } : { id, status: 'FAIL', what, detail, fix, critical };
}

/** The critical FAILs: what makes `etd run` refuse to start. */
export function criticalFailures(findings: readonly Finding[]): Finding[] {
  return findings.filter((x) => x.critical && x.status === 'FAIL');
}

/** Counts per status. */
export function summarize(findings: readonly Finding[]): Record<Status, number> {
  const out: Record<Status, number> = { OK: 0, WARN: 0, FAIL: 0 };
  for (const x of findings) out[x.status]++;
  return out;
}
