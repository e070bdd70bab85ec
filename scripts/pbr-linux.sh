#!/usr/bin/env bash
# Applies, removes or shows the Linux router's policy route that sends the backends' SMTP replies (source port 25) to etd.
#
# Deployment picture 2 of docs/routing.md: the backends' default route points at a router, not at
# etd. Their replies to etd's spoofed connects (addressed to the real client) must still reach
# etd, so this router diverts TCP traffic FROM the backends' port 25 to etd; everything else of
# the backends keeps its normal route. Two methods, same result:
#   ip rule (default):   ip rule add priority P from BACKENDS [iif IFACE] ipproto tcp sport 25 lookup T
#   nftables mark:       nft: [iifname IFACE] ip saddr BACKENDS tcp sport 25 meta mark set M
#                        ip rule add priority P fwmark M lookup T
#   both:                ip route replace default via ETD table T
# Idempotent: apply removes every copy of exactly these rules first; remove deletes only exactly
# these rules, this route and this script's nft table, and succeeds when they are already gone.
# Run remove with the same arguments as apply.

set -euo pipefail

usage() {
  cat <<'EOF'
usage: pbr-linux.sh apply|remove|show --etd ADDRESS [--etd ADDRESS] (--from CIDR... | --iif IFACE) [options]

  --etd ADDRESS     etd's address as this router reaches it (the next hop); give one per
                    address family (e.g. --etd 192.0.2.5 --etd 2001:db8::5)
  --from CIDR       the backends' addresses or subnet (repeatable; IPv4 and IPv6)
  --iif IFACE       the interface the backends' traffic arrives on (alone, or to narrow --from)
  --port N          the backends' SMTP port (default 25)
  --table N         routing table that holds the route to etd (default 125)
  --priority N      priority of the ip rule(s) (default 1000)
  --mark M          nftables-mark method: mark the packets with M (e.g. 0x25) in nft table
                    inet NFT_TABLE and select them with `ip rule fwmark M` (default: ip rule sport)
  --nft-table NAME  nft table of the mark method (default etd_pbr)
  --dry-run         print the commands instead of running them
  -h, --help        this text

examples:
  pbr-linux.sh apply --etd 10.0.3.2 --from 10.0.2.0/24 --iif eth1
  pbr-linux.sh apply --etd 10.0.3.2 --from 10.0.2.0/24 --mark 0x25
  pbr-linux.sh remove --etd 10.0.3.2 --from 10.0.2.0/24 --iif eth1
EOF
}

die() {
  echo "pbr-linux.sh: $*" >&2
  exit 2
}

action=""
etd4=""
etd6=""
from4=()
from6=()
iif=""
port=25
table=125
priority=1000
mark=""
nft_table="etd_pbr"
dry_run=0

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
case "$1" in
  apply | remove | show) action="$1"; shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "expected apply, remove or show (got '$1')" ;;
esac

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --etd)
      need_value "$@"
      if [[ "$2" == *:* ]]; then etd6="$2"; else etd4="$2"; fi
      shift 2 ;;
    --from)
      need_value "$@"
      if [[ "$2" == *:* ]]; then from6+=("$2"); else from4+=("$2"); fi
      shift 2 ;;
    --iif) need_value "$@"; iif="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --table) need_value "$@"; table="$2"; shift 2 ;;
    --priority) need_value "$@"; priority="$2"; shift 2 ;;
    --mark) need_value "$@"; mark="$2"; shift 2 ;;
    --nft-table) need_value "$@"; nft_table="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ---- validation --------------------------------------------------------------------------------

[[ -n "$etd4$etd6" ]] || die "--etd ADDRESS is required"
[[ -z "$etd4" || "$etd4" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--etd $etd4 is not an IPv4 address"
[[ -z "$etd6" || "$etd6" =~ ^[0-9A-Fa-f:.]+$ ]] || die "--etd $etd6 is not an IPv6 address"
for c in "${from4[@]}"; do
  [[ "$c" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$ ]] || die "--from $c is not an IPv4 address or CIDR"
done
for c in "${from6[@]}"; do
  [[ "$c" =~ ^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$ ]] || die "--from $c is not an IPv6 address or CIDR"
done
[[ -z "$iif" || "$iif" =~ ^[A-Za-z0-9_.@-]{1,15}$ ]] || die "--iif $iif is not an interface name"
# in_range NAME VALUE MIN MAX: VALUE is a decimal number from MIN to MAX.
in_range() {
  if ! [[ "$2" =~ ^[0-9]{1,10}$ ]] || (($2 < $3 || $2 > $4)); then die "--$1 must be a number from $3 to $4 (got '$2')"; fi
}
in_range port "$port" 1 65535
in_range table "$table" 1 4294967294
((table < 253 || table > 255)) || die "--table $table is one of the kernel's own tables (default, main, local)"
in_range priority "$priority" 1 32765 # the main table's rule is 32766
[[ -z "$mark" || "$mark" =~ ^(0x[0-9A-Fa-f]{1,8}|[0-9]+)$ ]] || die "--mark must be a number (e.g. 0x25)"
[[ "$nft_table" =~ ^[A-Za-z][A-Za-z0-9_]{0,31}$ ]] || die "--nft-table must be a plain name"

families=()
[[ -n "$etd4" ]] && families+=(4)
[[ -n "$etd6" ]] && families+=(6)
for f in "${families[@]}"; do
  if [[ $f == 4 ]]; then n=${#from4[@]}; else n=${#from6[@]}; fi
  ((n > 0)) || [[ -n "$iif" ]] || die "IPv$f: give --from with an IPv$f subnet of the backends, or --iif"
done

# ---- execution ---------------------------------------------------------------------------------

# Runs a command, or prints it with --dry-run (quoted so it can be pasted into a shell).
run() {
  if ((dry_run)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# Deletes every copy of a rule (the kernel deletes one per call; "No such file" ends the loop).
del_all() {
  if ((dry_run)); then
    printf 'while %s; do :; done 2>/dev/null\n' "$(printf '%q ' "$@" | sed 's/ $//')"
    return 0
  fi
  local i
  for ((i = 0; i < 64; i++)); do
    "$@" 2>/dev/null || return 0
  done
  die "still finding copies after 64 deletions of: $*"
}

# Runs a removal that may find nothing to remove.
absent_ok() {
  if ((dry_run)); then
    printf '%s 2>/dev/null || true\n' "$(printf '%q ' "$@" | sed 's/ $//')"
    return 0
  fi
  "$@" 2>/dev/null || true
}

# The selectors (as ip rule arguments, one rule per line) for family $1 of the sport method.
selectors() {
  local f=$1 c
  local -a list
  if [[ $f == 4 ]]; then list=("${from4[@]}"); else list=("${from6[@]}"); fi
  local in=""
  [[ -n "$iif" ]] && in="iif $iif"
  if ((${#list[@]} == 0)); then
    echo "$in"
  else
    for c in "${list[@]}"; do echo "from $c${in:+ $in}"; done
  fi
}

etd_of() { if [[ $1 == 4 ]]; then echo "$etd4"; else echo "$etd6"; fi; }

rule_args() { # family verb selector...
  local f=$1 verb=$2
  shift 2
  if [[ -n "$mark" ]]; then
    echo "-$f rule $verb priority $priority fwmark $mark lookup $table"
  else
    echo "-$f rule $verb priority $priority $* ipproto tcp sport $port lookup $table"
  fi
}

# The nft batch of the mark method: its own table, replaced atomically (add + flush).
nft_batch() {
  local t="inet $nft_table" c in=""
  [[ -n "$iif" ]] && in="iifname \"$iif\" "
  echo "add table $t"
  echo "flush table $t"
  echo "add chain $t prerouting { type filter hook prerouting priority mangle; policy accept; }"
  if [[ -n "$etd4" ]]; then
    if ((${#from4[@]} == 0)); then echo "add rule $t prerouting ${in}meta nfproto ipv4 tcp sport $port meta mark set $mark"; fi
    for c in "${from4[@]}"; do echo "add rule $t prerouting ${in}ip saddr $c tcp sport $port meta mark set $mark"; done
  fi
  if [[ -n "$etd6" ]]; then
    if ((${#from6[@]} == 0)); then echo "add rule $t prerouting ${in}meta nfproto ipv6 tcp sport $port meta mark set $mark"; fi
    for c in "${from6[@]}"; do echo "add rule $t prerouting ${in}ip6 saddr $c tcp sport $port meta mark set $mark"; done
  fi
}

run_nft() { # batch text on stdin
  local batch
  batch=$(cat)
  if ((dry_run)); then
    echo "nft -f - <<'NFT'"
    echo "$batch"
    echo "NFT"
  else
    nft -f - <<<"$batch"
  fi
}

# Warns about router settings that silently break the path through etd.
check_router() {
  local f=$1 etd dev v all
  etd=$(etd_of "$f")
  if [[ $f == 4 ]]; then
    v=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo "?")
    [[ $v == 1 ]] || echo "warning: net.ipv4.ip_forward=$v: this router does not forward (sysctl -w net.ipv4.ip_forward=1)" >&2
    dev=$(ip -4 route get "$etd" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1)
    if [[ -n "$dev" ]]; then
      all=$(cat /proc/sys/net/ipv4/conf/all/rp_filter 2>/dev/null || echo 0)
      v=$(cat "/proc/sys/net/ipv4/conf/$dev/rp_filter" 2>/dev/null || echo 0)
      if [[ $all == 1 || $v == 1 ]]; then
        echo "warning: rp_filter is strict on $dev (toward etd): etd's connects to the backends come from client addresses on that link and are dropped; use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.$dev.rp_filter=2" >&2
      fi
    else
      echo "warning: no route to etd's address $etd" >&2
    fi
  else
    v=$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo "?")
    [[ $v == 1 ]] || echo "warning: net.ipv6.conf.all.forwarding=$v: this router does not forward IPv6 (sysctl -w net.ipv6.conf.all.forwarding=1)" >&2
  fi
}

apply() {
  local f sel
  if [[ -n "$mark" ]]; then nft_batch | run_nft; fi
  for f in "${families[@]}"; do
    # The route first: a rule that matches before its table has a route would blackhole.
    # shellcheck disable=SC2046 # the route words are meant to split
    run ip -"$f" route replace default via "$(etd_of "$f")" table "$table"
    if [[ -n "$mark" ]]; then
      # shellcheck disable=SC2046
      del_all ip $(rule_args "$f" del)
      # shellcheck disable=SC2046
      run ip $(rule_args "$f" add)
    else
      while IFS= read -r sel; do
        # shellcheck disable=SC2046,SC2086 # selector words are meant to split
        del_all ip $(rule_args "$f" del $sel)
        # shellcheck disable=SC2046,SC2086
        run ip $(rule_args "$f" add $sel)
      done < <(selectors "$f")
    fi
    ((dry_run)) || check_router "$f"
  done
}

remove() {
  local f sel
  for f in "${families[@]}"; do
    # The rules first, so nothing is sent into a table that is being emptied.
    if [[ -n "$mark" ]]; then
      # shellcheck disable=SC2046
      del_all ip $(rule_args "$f" del)
    else
      while IFS= read -r sel; do
        # shellcheck disable=SC2046,SC2086
        del_all ip $(rule_args "$f" del $sel)
      done < <(selectors "$f")
    fi
    absent_ok ip -"$f" route del default via "$(etd_of "$f")" table "$table"
  done
  if [[ -n "$mark" ]]; then printf 'add table inet %s\ndelete table inet %s\n' "$nft_table" "$nft_table" | run_nft; fi
}

show() {
  local f
  for f in "${families[@]}"; do
    echo "# ip -$f rule (priority $priority)"
    ip -"$f" rule show | grep -E "^$priority:" || echo "(none)"
    echo "# ip -$f route show table $table"
    ip -"$f" route show table "$table" 2>/dev/null || true
    check_router "$f"
  done
  if [[ -n "$mark" ]]; then
    echo "# nft list table inet $nft_table"
    nft list table inet "$nft_table" 2>/dev/null || echo "(none)"
  fi
}

case "$action" in
  apply) apply ;;
  remove) remove ;;
  show) show ;;
esac
