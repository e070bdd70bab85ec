#!/bin/bash
# etd-health.sh: keepalived track_script for an etd gateway. Exit 0 while etd answers its health
# endpoint with 200 within the timeout, non-zero otherwise (docs/ha.md, "The track script").
#
#   etd-health.sh [API [ENDPOINT]]
#     API       etd's api.address: a unix socket path (/run/etd/api.sock) or HOST:PORT
#               (default 127.0.0.1:8025, etd's default; IPv6 as [::1]:8025)
#     ENDPOINT  /healthz (default: the process and its event loop answer) or /readyz (also: every
#               listener bound and a backend up); both are served without the API token
#   ETD_HEALTH_TIMEOUT  seconds to wait for the answer (default 1); keep it below the
#                       vrrp_script's timeout
#
# It asks the API rather than checking the process: a process that is alive but stuck (a stalled
# event loop) must fail too. curl is used when installed. Without curl, over TCP bash's /dev/tcp
# sends one HTTP/1.0 request, and over a unix socket node (which etd runs on) asks.

set -u

api=${1:-127.0.0.1:8025}
endpoint=${2:-/healthz}
timeout_s=${ETD_HEALTH_TIMEOUT:-1}

case $endpoint in
  /healthz | /readyz) ;;
  *)
    echo "etd-health.sh: ENDPOINT must be /healthz or /readyz, got '$endpoint'" >&2
    exit 2
    ;;
esac

if command -v curl >/dev/null 2>&1; then
  if [[ $api == /* ]]; then
    exec curl --silent --fail --output /dev/null --max-time "$timeout_s" --unix-socket "$api" "http://etd$endpoint"
  fi
  exec curl --silent --fail --output /dev/null --max-time "$timeout_s" "http://$api$endpoint"
fi

if [[ $api == /* ]]; then
  if ! command -v node >/dev/null 2>&1; then
    echo "etd-health.sh: asking etd over the unix socket $api needs curl or node (apt-get install curl)" >&2
    exit 2
  fi
  exec node -e '
    const [socketPath, path, seconds] = process.argv.slice(1);
    const req = require("http").get({ socketPath, path, timeout: seconds * 1000 }, (res) => process.exit(res.statusCode === 200 ? 0 : 1));
    req.on("timeout", () => process.exit(1));
    req.on("error", () => process.exit(1));
  ' "$api" "$endpoint" "$timeout_s"
fi

host=${api%:*}
port=${api##*:}
host=${host#[}
host=${host%]}
if [[ -z $host || -z $port || $host == "$api" ]]; then
  echo "etd-health.sh: API must be a socket path or HOST:PORT, got '$api'" >&2
  exit 2
fi

# A refused connect fails at once; the read is bounded by the timeout.
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$endpoint" "$api" >&3
read -r -t "$timeout_s" _ status _ <&3 || exit 1
[[ $status == 200 ]]
