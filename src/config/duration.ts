// Parsing and printing of human durations ("6s", "500ms", "2m", "1d") used throughout the config.

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export const DURATION_PATTERN = '^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)$';
const RE = new RegExp(DURATION_PATTERN);

/** Milliseconds for a duration string, or undefined if it is not one. */
export function parseDuration(text: string): number | undefined {
  const m = RE.exec(text.trim());
  if (!m) return undefined;
  const unit = m[2] as string;
  const value = Number.parseFloat(text.trim().slice(0, -unit.length));
  return Math.round(value * (UNITS[unit] as number));
}

/** The shortest exact string for a number of milliseconds (6000 → "6s"). */
export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    const size = UNITS[unit] as number;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
