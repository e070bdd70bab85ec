// Pure server selection: the Balancer interface and its implementations (roundrobin, leastconn, first).

export interface Candidate {
  readonly name: string;
  readonly weight: number;
  readonly backup: boolean;
  /** Sessions currently relayed to this server. */
  readonly active: number;
}

/** Chooses one server among the usable candidates (already filtered for state and family). */
export interface Balancer {
  pick(candidates: readonly Candidate[]): Candidate | undefined;
}

/** Backups are used only when no primary is usable (HAProxy's rule). Weight 0 servers only take traffic when nothing else can. */
function eligible(candidates: readonly Candidate[]): readonly Candidate[] {
  const primaries = candidates.filter((c) => !c.backup && c.weight > 0);
  if (primaries.length) return primaries;
  const backups = candidates.filter((c) => c.backup && c.weight > 0);
  return backups.length ? backups : candidates;
}

/**
 * Smooth weighted round-robin (as in nginx): each pick adds every weight to its server's
 * current score, takes the highest, and subtracts the total from it. Over any run of
 * sum(weights) picks each server is chosen exactly `weight` times, evenly interleaved.
 */
export class RoundRobin implements Balancer {
  private readonly current = new Map<string, number>();
  pick(candidates: readonly Candidate[]): Candidate | undefined {
    const list = eligible(candidates);
    if (list.length === 0) return undefined;
    let total = 0;
    let best: Candidate | undefined;
    let bestScore = -Infinity;
    for (const c of list) {
      const w = Math.max(c.weight, 1);
      total += w;
      const score = (this.current.get(c.name) ?? 0) + w;
      this.current.set(c.name, score);
      if (score > bestScore) {
        best = c;
        bestScore = score;
      }
    }
    this.current.set(best!.name, bestScore - total);
    return best;
  }
}

/** Fewest active sessions relative to weight; ties go round-robin so equal servers share load. */
export class LeastConn implements Balancer {
  private turn = 0;
  pick(candidates: readonly Candidate[]): Candidate | undefined {
    const list = eligible(candidates);
    if (list.length === 0) return undefined;
    let bestLoad = Infinity;
    const ties: Candidate[] = [];
    for (const c of list) {
      const load = c.active / Math.max(c.weight, 1);
      if (load < bestLoad) {
        bestLoad = load;
        ties.length = 0;
        ties.push(c);
      } else if (load === bestLoad) ties.push(c);
    }
    return ties[this.turn++ % ties.length];
  }
}

/** The first usable server in configuration order (backups come last by the eligible rule). */
export class First implements Balancer {
  pick(candidates: readonly Candidate[]): Candidate | undefined {
    return eligible(candidates)[0];
  }
}

export function createBalancer(kind: 'roundrobin' | 'leastconn' | 'first'): Balancer {
  switch (kind) {
    case 'roundrobin':
      return new RoundRobin();
    case 'leastconn':
      return new LeastConn();
    case 'first':
      return new First();
  }
}
