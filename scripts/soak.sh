#!/usr/bin/env bash
# Soak test: etd (the built CLI) on loopback against two SMTP sinks, under a mix of polite senders, early talkers,
# connect-and-RST bursts, slowloris clients, backend restarts and SIGHUP reloads (bench/soak.ts).
# Prints one line a minute: messages sent vs received by the backends (must be equal), etd RSS/heap/fds, errors.
#
#   scripts/soak.sh                 30 minutes
#   scripts/soak.sh --short         2 minutes
#   scripts/soak.sh --minutes N     N minutes
#   options: --polite N (concurrent polite senders, default 12), --keep (keep etd's log and state),
#            --no-build (use dist/ as it is), --out FILE (also write the report to FILE)
# Exit status: 0 when the run passed (see the last line), 1 when it found a problem, 2 on a usage or setup error.
# Network traffic stays on 127.0.0.0/8. Needs Node 20+ and `npm ci` done; no root.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
out=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --short | --keep)
      args+=("$1")
      shift
      ;;
    --minutes | --polite)
      [[ $# -ge 2 ]] || { echo "soak.sh: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$2")
      shift 2
      ;;
    --no-build)
      build=0
      shift
      ;;
    --out)
      [[ $# -ge 2 ]] || { echo "soak.sh: --out needs a file" >&2; exit 2; }
      out="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "soak.sh: unknown option $1 (try --help)" >&2
      exit 2
      ;;
  esac
done

if [[ $build -eq 1 ]]; then
  npm run build --silent
fi
[[ -f dist/bench/soak.js ]] || { echo "soak.sh: dist/bench/soak.js is missing; run npm run build" >&2; exit 2; }

# The driver opens a few thousand sockets at a time.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -n "$out" ]]; then
  node dist/bench/soak.js "${args[@]}" | tee "$out"
  exit "${PIPESTATUS[0]}"
fi
exec node dist/bench/soak.js "${args[@]}"
