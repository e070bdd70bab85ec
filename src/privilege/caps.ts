// Capability numbers and the /proc status masks etd reads and logs (pure).

/** What etd keeps after dropping root, as setpriv names them, with their numbers from linux/capability.h. */
export const KEPT_CAPS: Readonly<Record<string, number>> = { net_admin: 12, net_bind_service: 10 };

/** A capability mask line (`CapEff:`, `CapPrm:`...) of /proc/PID/status, or undefined. */
export function parseCapMask(status: string, key: 'CapEff' | 'CapPrm' | 'CapAmb' | 'CapInh' | 'CapBnd'): bigint | undefined {
  const m = new RegExp(`^${key}:\\s*([0-9a-fA-F]+)\\s*$`, 'm').exec(status);
  return m ? BigInt(`0x${m[1]}`) : undefined;
}

/** The kept capabilities present in `mask`, in setpriv's spelling (`net_admin`). */
export function keptIn(mask: bigint): string[] {
  return Object.entries(KEPT_CAPS)
    .filter(([, bit]) => (mask >> BigInt(bit)) & 1n)
    .map(([name]) => name);
}

/** `CAP_NET_ADMIN CAP_NET_BIND_SERVICE`, `none`, or the kept ones plus how many others (root has all). */
export function describeCaps(mask: bigint): string {
  if (mask === 0n) return 'none';
  const names = keptIn(mask).map((n) => `CAP_${n.toUpperCase()}`);
  let others = 0;
  const kept = new Set(Object.values(KEPT_CAPS));
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n && !kept.has(bit)) others++;
  if (others > 0) names.push(`and ${others} more`);
  return names.join(' ');
}
