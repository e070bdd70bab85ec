// Pure summarisers for V8 profiles: a .cpuprofile (self time by function and by module) and heap snapshots (objects by constructor, diffed per connection).

export interface CpuProfile {
  nodes: Array<{
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    hitCount?: number;
    children?: number[];
  }>;
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface SelfTime {
  name: string;
  ms: number;
  pct: number;
}

export interface CpuSummary {
  /** Sampled time, ms (includes idle). */
  totalMs: number;
  /** Sampled time minus (idle), ms. */
  busyMs: number;
  /** Top functions by self time (percent of busy time). */
  functions: SelfTime[];
  /** Self time grouped by module: etd files, node core modules, packages, GC, (program). */
  modules: SelfTime[];
  /** Time spent in (and under) the entry points of a proxy's work; they nest, so they overlap. */
  phases: SelfTime[];
}

/** Where a proxied session's work starts: a function (and a piece of its script URL) and what it stands for. */
const PHASES: ReadonlyArray<{ name: string; fn: string; url: string }> = [
  // The engine: one batch of events per wakeup, handled by the driver.
  { name: 'engine event batches (accept, expiry, greeting, end → decisions)', fn: 'dispatch', url: 'engineDriver' },
  { name: 'admission (limits, access lists, caches) → session', fn: 'accept', url: 'app' },
  { name: 'window expiry → server choice → connect command', fn: 'connectNext', url: 'proxy/session' },
  { name: 'session end → summary, stats, caches', fn: 'finish', url: 'proxy/session' },
  { name: 'session log line (pino)', fn: 'LOG', url: 'pino' },
  { name: 'health checks', fn: 'run', url: 'backend/health' },
  { name: 'garbage collection', fn: '(garbage collector)', url: '' },
];

/** Where a function lives, in a form an operator can read. */
export function moduleOf(url: string, functionName: string): string {
  if (!url) {
    if (functionName === '(garbage collector)') return 'GC';
    if (functionName.startsWith('(')) return functionName;
    return 'native / builtin';
  }
  if (url.startsWith('node:')) {
    const rest = url.slice(5).replace(/^internal\//, '');
    return `node:${rest.split('/')[0] ?? rest}`;
  }
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return `npm:${pkg[1]}`;
  const dist = /\/dist\/(?:src\/)?(.+)$/.exec(url);
  if (dist) return `etd:${dist[1]}`;
  return url.slice(url.lastIndexOf('/') + 1);
}

function shortUrl(url: string): string {
  const dist = /\/dist\/(?:src\/)?(.+)$/.exec(url);
  if (dist) return dist[1] as string;
  const pkg = /\/node_modules\/(.+)$/.exec(url);
  if (pkg) return pkg[1] as string;
  return url;
}

function top(map: Map<string, number>, busy: number, n: number): SelfTime[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, us]) => ({ name, ms: Math.round(us / 100) / 10, pct: Math.round((us / busy) * 1000) / 10 }));
}

export function summariseCpuProfile(p: CpuProfile, topN = 20): CpuSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  if (samples.length && deltas.length === samples.length) {
    // timeDeltas[i] is the time between sample i-1 and sample i: charge it to sample i's node.
    for (let i = 0; i < samples.length; i++)
      selfUs.set(samples[i] as number, (selfUs.get(samples[i] as number) ?? 0) + Math.max(0, deltas[i] as number));
  } else {
    const interval = samples.length ? (p.endTime - p.startTime) / samples.length : 1000;
    for (const n of p.nodes) if (n.hitCount) selfUs.set(n.id, n.hitCount * interval);
  }
  const fn = new Map<string, number>();
  const mod = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    total += us;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    const name = url ? `${functionName || '(anonymous)'} ${shortUrl(url)}:${lineNumber + 1}` : functionName || '(anonymous native)';
    fn.set(name, (fn.get(name) ?? 0) + us);
    const m = moduleOf(url, functionName);
    mod.set(m, (mod.get(m) ?? 0) + us);
  }
  const busy = Math.max(1, total - idle);
  return {
    totalMs: Math.round(total / 1000),
    busyMs: Math.round(busy / 1000),
    functions: top(fn, busy, topN),
    modules: top(mod, busy, topN),
    phases: phaseTimes(p, selfUs, busy),
  };
}

/** Inclusive time under each phase's entry function (counted once per stack even if it recurs). */
function phaseTimes(p: CpuProfile, selfUs: ReadonlyMap<number, number>, busy: number): SelfTime[] {
  const children = new Map(p.nodes.map((n) => [n.id, n.children ?? []]));
  const frame = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
  const inclusive = new Map<string, number>();
  const root = p.nodes[0];
  if (!root) return [];
  // Depth-first with the set of phases already open on the path, so nesting is not counted twice.
  const stack: Array<{ id: number; open: ReadonlySet<string> }> = [{ id: root.id, open: new Set() }];
  while (stack.length) {
    const { id, open } = stack.pop() as { id: number; open: ReadonlySet<string> };
    const cf = frame.get(id);
    let here = open;
    if (cf) {
      const phase = PHASES.find((ph) => ph.fn === cf.functionName && (ph.url === '' ? cf.url === '' : cf.url.includes(ph.url)));
      if (phase && !open.has(phase.name)) here = new Set([...open, phase.name]);
    }
    const us = selfUs.get(id) ?? 0;
    if (us) for (const name of here) inclusive.set(name, (inclusive.get(name) ?? 0) + us);
    for (const c of children.get(id) ?? []) stack.push({ id: c, open: here });
  }
  return PHASES.map((ph) => ph.name)
    .filter((name) => inclusive.has(name))
    .map((name) => {
      const us = inclusive.get(name) as number;
      return { name, ms: Math.round(us / 100) / 10, pct: Math.round((us / busy) * 1000) / 10 };
    });
}

export interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: unknown[] } };
  nodes: number[];
  strings: string[];
}

/** Object count and self size per kind ("Socket", "closure onClientData", "(string)", ...). */
export type HeapCensus = Map<string, { count: number; bytes: number }>;

/** Types whose node name is the constructor or function name; for the rest the name is content (strings) or noise. */
const NAMED_TYPES = new Set(['object', 'closure', 'native', 'hidden', 'array', 'synthetic', 'object shape']);

export function heapCensus(s: HeapSnapshot): HeapCensus {
  const fields = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0] as string[];
  const step = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  const census: HeapCensus = new Map();
  for (let i = 0; i < s.nodes.length; i += step) {
    const type = types[s.nodes[i + iType] as number] ?? 'unknown';
    const size = s.nodes[i + iSize] as number;
    const key = NAMED_TYPES.has(type)
      ? type === 'object'
        ? (s.strings[s.nodes[i + iName] as number] ?? '?')
        : `${type} ${s.strings[s.nodes[i + iName] as number] ?? '?'}`
      : `(${type})`;
    const e = census.get(key);
    if (e) {
      e.count++;
      e.bytes += size;
    } else census.set(key, { count: 1, bytes: size });
  }
  return census;
}

export interface PerConnection {
  name: string;
  /** Objects per connection. */
  count: number;
  /** Self bytes per connection. */
  bytes: number;
}

/** What grew between two censuses, per connection (`n` connections apart), largest first. */
export function perConnection(before: HeapCensus, after: HeapCensus, n: number, topN = 25): { totalBytes: number; items: PerConnection[] } {
  const items: PerConnection[] = [];
  let total = 0;
  for (const [name, a] of after) {
    const b = before.get(name) ?? { count: 0, bytes: 0 };
    const bytes = (a.bytes - b.bytes) / n;
    total += bytes;
    items.push({ name, count: Math.round(((a.count - b.count) / n) * 100) / 100, bytes: Math.round(bytes) });
  }
  for (const [name, b] of before) if (!after.has(name)) total -= b.bytes / n;
  items.sort((x, y) => y.bytes - x.bytes);
  return { totalBytes: Math.round(total), items: items.slice(0, topN) };
}
