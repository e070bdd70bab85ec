#!/bin/bash
# Syscalls per session of an etd process (docs/history/performance-notebook.md, "Syscalls per session"): etd in plain mode on loopback, smtp-sink behind it, smtp-source in front; strace -c attached to every thread of etd only while the load runs.
#
# usage: bench/syscalls.sh [SESSIONS] [PARALLEL] [ETD_CLI]    (default 2000 50 dist/src/cli.js; needs strace, Postfix's smtp-source/smtp-sink)
#        TRACE=none bench/syscalls.sh ...   etd's CPU per session and sessions/s instead (no strace)
# Loopback only; every process it starts is stopped by its pid on exit.
set -euo pipefail
SESSIONS=${1:-2000}
PARALLEL=${2:-50}
CLI=${3:-$(dirname "$0")/../dist/src/cli.js}
DIR=$(mktemp -d /tmp/etd-syscalls.XXXXXX)
pick() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(pick); ETD_PORT=$(pick)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then SINK_USER=(-u nobody); else SINK_USER=(); fi
smtp-sink "${SINK_USER[@]}" -c 127.0.0.1:"$SINK_PORT" 1000 >/dev/null 2>&1 & pids+=($!)
cat >"$DIR/etd.yaml" <<YAML
listeners:
  - { name: smtp, address: 127.0.0.1, port: $ETD_PORT, mode: plain }
detection: { window: 10ms, action: drop }
upstream:
  source: self
  balance: roundrobin
  connectTimeout: 5s
  health: { enabled: false }
  servers:
    - { name: sink, address: 127.0.0.1, port: $SINK_PORT }
timeouts: { client: 5m, server: 5m, shutdownGrace: 2s }
limits: { maxConnections: 1000000, maxHeld: 1000000, perClient: 0 }
cache: { enabled: false }
netfilter: { manage: false }
api: { enabled: false }
state: { path: ":memory:" }
log: { level: info }
${ETD_EXTRA_CONFIG:-}
YAML
node "$CLI" run -c "$DIR/etd.yaml" >"$DIR/etd.log" 2>&1 & ETD=$!; pids+=($ETD)
for _ in $(seq 100); do grep -q '"msg":"etd started"' "$DIR/etd.log" && break; sleep 0.1; done
grep -q '"msg":"etd started"' "$DIR/etd.log" || { cat "$DIR/etd.log"; exit 1; }
# warm-up (JIT, first allocations), not counted
smtp-source -s 10 -m 200 -l 2000 127.0.0.1:"$ETD_PORT" >/dev/null 2>&1
if [ "${TRACE:-strace}" = none ]; then
  # CPU per session instead (no tracer to slow etd down): utime + stime of every etd thread, in clock ticks.
  cpu() { awk '{print $14 + $15}' /proc/"$ETD"/stat; }
  t0=$(cpu); s0=$(date +%s.%N)
  smtp-source -s "$PARALLEL" -m "$SESSIONS" -l 2000 127.0.0.1:"$ETD_PORT" >/dev/null 2>&1
  t1=$(cpu); s1=$(date +%s.%N)
  python3 -c "import os; hz=os.sysconf('SC_CLK_TCK'); n=$SESSIONS; cpu=($t1-$t0)/hz; wall=$s1-$s0; print(f'sessions {n}: {n/wall:.0f}/s, etd CPU {cpu*1000/n:.3f} ms/session ({cpu:.2f} s CPU over {wall:.2f} s)')"
  exit 0
fi
# -f with -p attaches every thread of the process
strace -f ${STRACE_OPTS:--c} -o "$DIR/strace.txt" -p "$ETD" 2>"$DIR/strace.err" & ST=$!; pids+=($ST)
sleep 1
smtp-source -s "$PARALLEL" -m "$SESSIONS" -l 2000 127.0.0.1:"$ETD_PORT" >/dev/null 2>&1
sleep 0.5
kill -INT "$ST"; wait "$ST" 2>/dev/null || true
python3 - "$DIR/strace.txt" "$SESSIONS" <<'PY'
import sys
rows, n = [], int(sys.argv[2])
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 5 or not f[0][0].isdigit() or f[-1] == 'total':
        continue
    calls = int(f[3]); errors = int(f[4]) if len(f) == 6 else 0
    rows.append((calls, f[-1], errors))
total = sum(r[0] for r in rows)
print(f"sessions {n}: etd made {total} syscalls, {total / n:.1f} per session")
for calls, name, errors in sorted(rows, reverse=True):
    print(f"  {name:<16} {calls / n:7.2f}/session  ({calls} calls{f', {errors} failed' if errors else ''})")
PY
echo "raw: $DIR/strace.txt"
