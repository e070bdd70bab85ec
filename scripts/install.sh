#!/usr/bin/env bash
# Installs etd on a Debian or Ubuntu gateway (packages, user, /opt/etd, /etc/etd, sysctl drop-in, systemd unit), or removes it.
#
# usage: scripts/install.sh [--dry-run] [--copy-node-modules] [--start] [--keepalived]
#        scripts/install.sh --uninstall [--purge] [--dry-run]
#
# Run it as root from a built checkout (npm ci && npm run build). Running it again is safe: it
# refreshes /opt/etd and the unit and keeps /etc/etd/etd.yaml, the state and the user.
# --dry-run prints every step with the commands a real run would execute and changes nothing;
# it needs no root. docs/operations.md describes what is installed and why.

set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/etd
STAGE=/opt/.etd.new        # the new /opt/etd is assembled here, then swapped in
OLD=/opt/.etd.old
CONF_DIR=/etc/etd
CONF=$CONF_DIR/etd.yaml
STATE_DIR=/var/lib/etd
UNIT=/etc/systemd/system/etd.service
SYSCTL=/etc/sysctl.d/90-etd.conf
BIN_LINK=/usr/local/bin/etd
ETD_USER=etd
NODE_MIN=20
# libnftables1: etd drives nftables through it (koffi); nftables: the nft command for operators;
# iproute2: etd runs `ip rule`/`ip route` for policy routing; libsystemd0: sd_notify (Type=notify);
# g++/make/python3: native builds (better-sqlite3 here, etd's addon when building from source).
PACKAGES=(nftables libnftables1 iproute2 libsystemd0 g++ make python3)

DRY_RUN=0
UNINSTALL=0
PURGE=0
COPY_MODULES=0
START=0
KEEPALIVED=0
KA_DIR=/etc/keepalived
BLOCKED=()     # dry-run: problems that would stop a real run

usage() {
  cat <<EOF
usage: $0 [--dry-run] [--copy-node-modules] [--start] [--keepalived]
       $0 --uninstall [--purge] [--dry-run]

  --dry-run            print every step and command, change nothing (no root needed)
  --copy-node-modules  copy this checkout's node_modules (pruned to production) instead of
                       running npm ci: for gateways without access to the npm registry
  --start              start etd after installing (restart it when it is running)
  --keepalived         also prepare an HA pair (docs/ha.md): install keepalived and curl, the track
                       script $KA_DIR/etd-health.sh and the example configs as
                       $KA_DIR/etd-keepalived-{a,b}.conf.example; never keepalived.conf itself
  --uninstall          stop and disable etd, remove its rules, /opt/etd, the unit, the command
                       and the sysctl drop-in; keep /etc/etd, /var/lib/etd and the user
  --purge              with --uninstall: also remove /etc/etd, /var/lib/etd and the user etd
EOF
}

while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --copy-node-modules) COPY_MODULES=1 ;;
    --start) START=1 ;;
    --keepalived) KEEPALIVED=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if ((PURGE && !UNINSTALL)); then echo "install.sh: --purge only goes with --uninstall" >&2; exit 2; fi
if ((KEEPALIVED && UNINSTALL)); then echo "install.sh: --keepalived goes with an install (--uninstall removes what it installed)" >&2; exit 2; fi
# keepalived: the VRRP daemon of the HA pair; curl: the track script asks etd's API with it.
if ((KEEPALIVED)); then PACKAGES+=(keepalived curl); fi

# --- output and execution helpers ---------------------------------------------------------------

STEP=0
step() { STEP=$((STEP + 1)); printf '\n==> %d. %s\n' "$STEP" "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# A problem that stops a real run; a dry run reports it and goes on, to show the remaining steps.
block() {
  if ((DRY_RUN)); then
    printf '    PROBLEM (a real run stops here): %s\n' "$*"
    BLOCKED+=("$*")
  else
    die "$*"
  fi
}

# Shell-quotes one word only when it needs it, so printed commands stay readable and runnable.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() {
  local out='' w
  for w in "$@"; do out+="$(quote "$w") "; done
  printf '    + %s\n' "${out% }"
}

# run CMD...: prints the command; executes it unless this is a dry run.
run() {
  show "$@"
  ((DRY_RUN)) || "$@"
}

# run_in DIR CMD...: the same, inside DIR.
run_in() {
  local dir=$1
  shift
  local out='' w
  for w in "$@"; do out+="$(quote "$w") "; done
  printf '    + (cd %s && %s)\n' "$(quote "$dir")" "${out% }"
  ((DRY_RUN)) || (cd "$dir" && "$@")
}

# write_file PATH MODE OWNER GROUP [FROM]: installs stdin as PATH unless PATH already has exactly
# that content. A dry run prints the content (or, with FROM, where it comes from).
write_file() {
  local path=$1 mode=$2 owner=$3 group=$4 from=${5:-} content
  content=$(cat; printf x)
  content=${content%x}
  if [[ -f $path && -r $path ]] && [[ "$(cat "$path"; printf x)" == "${content}x" ]]; then
    note "$path is up to date"
    run chmod "$mode" "$path"
    run chown "$owner:$group" "$path"
    return
  fi
  if ((DRY_RUN)); then
    if [[ -n $from ]]; then
      note "would write $path (mode $mode, $owner:$group) from $from"
    else
      note "would write $path (mode $mode, $owner:$group):"
      printf '%s' "$content" | sed 's/^/    | /'
    fi
    return
  fi
  local tmp
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner:$group" "$tmp"
  mv -f "$tmp" "$path"
  note "wrote $path"
}

systemd_running() { [[ -d /run/systemd/system ]]; }

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *" installed" ]]; }

# Major version of a Node.js binary, or nothing.
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || true; }

# --- the steps ----------------------------------------------------------------------------------

check_system() {
  step "checks: system, privileges, Node.js >= $NODE_MIN, the built checkout in $SRC"
  if ((DRY_RUN)); then
    note "DRY RUN: nothing is changed; '+' lines are the commands a real run executes"
  elif ((EUID != 0)); then
    die "run as root (sudo $0 ...), or try --dry-run"
  fi
  local id='' like=''
  if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091 # os-release is the system's, not ours
    id=$(. /etc/os-release && printf '%s' "${ID:-}")
    # shellcheck disable=SC1091
    like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
  fi
  if [[ $id == debian || $id == ubuntu || " $like " == *" debian "* ]]; then
    note "system: $id ($(uname -r))"
  else
    block "this installer is for Debian or Ubuntu (found ID=${id:-unknown}); install by hand as docs/operations.md describes"
  fi
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    block "dpkg-query/apt-get not found: not a Debian-like system"
  fi
  if ((!UNINSTALL)); then
    local f
    for f in dist/src/cli.js native/build/Release/etd_transparent.node package.json package-lock.json config/etd.example.yaml systemd/etd.service; do
      [[ -e $SRC/$f ]] || block "$SRC/$f is missing: build the checkout first (npm ci && npm run build)"
    done
    if ((COPY_MODULES)) && [[ ! -d $SRC/node_modules ]]; then
      block "--copy-node-modules: $SRC/node_modules is missing (run npm ci in $SRC)"
    fi
    check_node
  fi
}

NODE_PACKAGES=()
check_node() {
  local node major candidate
  node=$(command -v node || true)
  major=${node:+$(node_major "$node")}
  if [[ -n $major ]] && ((major >= NODE_MIN)); then
    note "node: $node ($("$node" --version))"
    command -v npm >/dev/null || block "npm is missing: install the npm that goes with $node (npm ci builds /opt/etd/node_modules)"
    # The unit starts /opt/etd/dist/src/cli.js through "#!/usr/bin/env node" with systemd's PATH.
    case $(dirname "$node") in
      /usr/local/sbin | /usr/local/bin | /usr/sbin | /usr/bin | /sbin | /bin) ;;
      *) warn "$node is not on systemd's default PATH: link it as /usr/local/bin/node, or the unit cannot start" ;;
    esac
    return
  fi
  # No usable node: take the distribution's nodejs when it is recent enough.
  candidate=$(apt-cache policy nodejs 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [[ $candidate =~ ^([0-9]+:)?([0-9]+)\. ]] && ((BASH_REMATCH[2] >= NODE_MIN)); then
    note "node: ${node:+$node is too old ($("$node" --version)); }will install nodejs $candidate from apt"
    NODE_PACKAGES=(nodejs)
    # NodeSource's nodejs contains npm; Debian's does not.
    [[ $candidate == *nodesource* ]] || command -v npm >/dev/null || NODE_PACKAGES+=(npm)
  else
    block "Node.js >= $NODE_MIN is required: found ${node:-no node}${major:+ (major $major)}, and apt offers nodejs ${candidate:-none}. Install Node.js $NODE_MIN+ (e.g. NodeSource's node_$NODE_MIN.x repository, or Debian 13), then run this again"
  fi
}

install_packages() {
  step "system packages: ${PACKAGES[*]}${NODE_PACKAGES[*]:+ ${NODE_PACKAGES[*]}}"
  local missing=() p
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  missing+=("${NODE_PACKAGES[@]}")
  if ((${#missing[@]} == 0)); then
    note "all installed"
    return
  fi
  note "missing: ${missing[*]}"
  run apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

create_user() {
  step "system user $ETD_USER (no login, no home; owns $STATE_DIR)"
  if getent passwd "$ETD_USER" >/dev/null; then
    note "user $ETD_USER exists ($(id "$ETD_USER"))"
  else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment 'etd SMTP early-talker detection' "$ETD_USER"
  fi
  note "$STATE_DIR itself is created by systemd (StateDirectory=etd) when etd starts"
}

install_files() {
  step "program files in $PREFIX (root-owned: etd cannot modify its own code)"
  # Assembled beside the old copy and swapped in at the end, so a failed npm ci leaves the
  # installed version untouched. A running etd keeps the code it loaded until it restarts.
  run rm -rf "$STAGE"
  run install -d -m 0755 "$STAGE" "$STAGE/native/build/Release" "$STAGE/config" "$STAGE/systemd"
  run cp -R "$SRC/dist" "$SRC/scripts" "$SRC/package.json" "$SRC/package-lock.json" "$STAGE/"
  if [[ -d $SRC/docs ]]; then run cp -R "$SRC/docs" "$STAGE/"; fi
  if [[ -d $SRC/examples ]]; then run cp -R "$SRC/examples" "$STAGE/"; fi
  run cp "$SRC/native/build/Release/etd_transparent.node" "$STAGE/native/build/Release/"
  run cp "$SRC/config/etd.example.yaml" "$STAGE/config/"
  run cp "$SRC/systemd/etd.service" "$STAGE/systemd/"
  # Install scripts of dependencies run only where package.json's allowScripts allows them
  # (better-sqlite3 builds or fetches its binding); etd's own "install" script would rebuild
  # the addon, which is copied above, built.
  local allowed='<the allowScripts packages>'
  if command -v node >/dev/null; then
    allowed=$(node -e 'const p = require(process.argv[1]); console.log(Object.entries(p.allowScripts || {}).filter(([, v]) => v === true).map(([k]) => k).join(" "))' "$SRC/package.json")
  fi
  if ((COPY_MODULES)); then
    run cp -R "$SRC/node_modules" "$STAGE/"
    run_in "$STAGE" npm prune --omit=dev --ignore-scripts --offline --no-audit --no-fund
    run find "$STAGE/node_modules" -mindepth 1 -maxdepth 1 -type d -empty -delete
  else
    run_in "$STAGE" npm ci --omit=dev --ignore-scripts --no-audit --no-fund
    if [[ -n $allowed ]]; then
      # shellcheck disable=SC2086 # one word per package name
      run_in "$STAGE" npm rebuild $allowed
    fi
  fi
  run chown -R root:root "$STAGE"
  run chmod -R go-w "$STAGE"
  # Prove the copy works before it replaces the installed one.
  run node "$STAGE/dist/src/cli.js" version
  run node -e 'require(process.argv[1]); const D = require(process.argv[2]); new D(":memory:").close()' \
    "$STAGE/native/build/Release/etd_transparent.node" "$STAGE/node_modules/better-sqlite3"
  if [[ -e $PREFIX ]]; then
    run rm -rf "$OLD"
    run mv "$PREFIX" "$OLD"
    run mv "$STAGE" "$PREFIX"
    run rm -rf "$OLD"
  else
    run mv "$STAGE" "$PREFIX"
  fi
}

CONFIG_IS_NEW=0
install_config() {
  step "configuration in $CONF_DIR (root:$ETD_USER, not world-readable: it may hold an API token)"
  run install -d -m 0750 -o root -g "$ETD_USER" "$CONF_DIR"
  # The reference copy is refreshed on every run; the live file is never overwritten.
  run install -m 0644 -o root -g root "$SRC/config/etd.example.yaml" "$CONF_DIR/etd.example.yaml"
  if [[ -e $CONF ]]; then
    note "$CONF exists: kept as it is"
  elif [[ -d $CONF_DIR && ! -x $CONF_DIR ]]; then
    note "cannot look into $CONF_DIR as $(id -un): $CONF is created only if it does not exist"
    CONFIG_IS_NEW=1
  else
    run install -m 0640 -o root -g "$ETD_USER" "$SRC/config/etd.example.yaml" "$CONF"
    note "$CONF is the commented example: set the listeners and servers before starting etd"
    CONFIG_IS_NEW=1
  fi
  # The service reads it as $ETD_USER: check it that way (a warning only; etd check prints why).
  show runuser -u "$ETD_USER" -- "$PREFIX/dist/src/cli.js" check -c "$CONF"
  if ((!DRY_RUN)) && ! runuser -u "$ETD_USER" -- "$PREFIX/dist/src/cli.js" check -c "$CONF" >/dev/null; then
    warn "$CONF does not pass etd check as user $ETD_USER: fix it before starting etd"
  fi
}

install_command() {
  step "command $BIN_LINK -> $PREFIX/dist/src/cli.js"
  if [[ -e $BIN_LINK && ! -L $BIN_LINK ]]; then
    block "$BIN_LINK exists and is not a symlink: move it away, then run this again"
  elif [[ $(readlink "$BIN_LINK" 2>/dev/null) == "$PREFIX/dist/src/cli.js" ]]; then
    note "$BIN_LINK is up to date"
  else
    run ln -sfn "$PREFIX/dist/src/cli.js" "$BIN_LINK"
  fi
}

install_sysctl() {
  step "kernel settings: $SYSCTL"
  write_file "$SYSCTL" 0644 root root "systemd/90-etd.conf" <"$SRC/systemd/90-etd.conf"
  # Applies this file now (it is read at every boot anyway). A container may refuse some keys.
  show sysctl -p "$SYSCTL"
  if ((!DRY_RUN)) && ! sysctl -p "$SYSCTL" >/dev/null; then
    warn "sysctl -p $SYSCTL failed for some keys (see above); they apply at the next boot"
  fi
}

install_unit() {
  step "systemd unit $UNIT (enabled: starts at boot)"
  write_file "$UNIT" 0644 root root "systemd/etd.service" <"$SRC/systemd/etd.service"
  if systemd_running; then
    run systemctl daemon-reload
  else
    note "systemd is not running here: daemon-reload skipped (it happens at the next boot)"
  fi
  run systemctl enable etd.service
  local active=0
  systemd_running && systemctl is-active --quiet etd.service && active=1
  if ((START)); then
    if ! systemd_running; then
      note "--start: systemd is not running here, so etd starts at the next boot"
    elif ((active)); then
      run systemctl restart etd.service
    else
      run systemctl start etd.service
    fi
  elif ((active)); then
    note "etd is running the previous version: restart it when convenient (systemctl restart etd)"
  fi
}

# Only with --keepalived. The configs need this site's interfaces and addresses, so they are
# installed as examples: a keepalived.conf written here would make keepalived (whose Debian unit
# starts when the file exists) claim documentation addresses on a live network.
install_keepalived() {
  step "HA pair (--keepalived): track script and example configs in $KA_DIR"
  run install -d -m 0755 "$KA_DIR"
  write_file "$KA_DIR/etd-health.sh" 0755 root root "examples/keepalived/etd-health.sh" <"$SRC/examples/keepalived/etd-health.sh"
  local gw
  for gw in a b; do
    write_file "$KA_DIR/etd-keepalived-$gw.conf.example" 0644 root root "examples/keepalived/keepalived-$gw.conf" <"$SRC/examples/keepalived/keepalived-$gw.conf"
  done
  if [[ -e $KA_DIR/keepalived.conf ]]; then
    note "$KA_DIR/keepalived.conf exists: kept as it is"
  else
    note "next, on gateway A (B: the -b file): adapt $KA_DIR/etd-keepalived-a.conf.example (interfaces,"
    note "VIPs, api address) and save it as $KA_DIR/keepalived.conf; in $CONF listen on the VIP with"
    note "freebind: true; then systemctl restart keepalived (docs/ha.md)"
  fi
}

next_steps() {
  step "done"
  if ((CONFIG_IS_NEW)); then
    note "next: edit $CONF (listeners, servers), then:"
  else
    note "check the configuration and the host:"
  fi
  note "  etd check -c $CONF && etd doctor -c $CONF"
  ((START)) || note "  systemctl start etd"
  note "  journalctl -u etd -f        # one JSON line per session"
}

# --- uninstall ----------------------------------------------------------------------------------

uninstall() {
  step "stop and disable etd"
  if [[ -e $UNIT ]]; then
    if systemd_running; then
      # Stopping runs ExecStopPost, which removes the rules as well.
      run systemctl disable --now etd.service
    else
      run systemctl disable etd.service
    fi
  else
    note "$UNIT is not installed"
  fi

  step "remove etd's nftables table and ip rules (idempotent)"
  if [[ -x $PREFIX/dist/src/cli.js && -r $CONF ]]; then
    show "$PREFIX/dist/src/cli.js" rules remove -c "$CONF"
    if ((!DRY_RUN)) && ! "$PREFIX/dist/src/cli.js" rules remove -c "$CONF"; then
      warn "etd rules remove failed: check with nft list table inet etd and ip rule"
    fi
  else
    note "no $PREFIX/dist/src/cli.js or no readable $CONF: nothing to run (check nft list tables and ip rule by hand)"
  fi

  step "remove the unit $UNIT"
  if [[ -e $UNIT ]]; then
    run rm -f "$UNIT"
    if systemd_running; then
      run systemctl daemon-reload
      run systemctl reset-failed etd.service
    fi
  else
    note "not present"
  fi

  step "remove the command $BIN_LINK"
  if [[ -L $BIN_LINK && $(readlink "$BIN_LINK") == "$PREFIX/"* ]]; then
    run rm -f "$BIN_LINK"
  else
    note "not present (or not etd's)"
  fi

  step "remove the program files $PREFIX"
  if [[ -e $PREFIX || -e $STAGE || -e $OLD ]]; then
    run rm -rf "$PREFIX" "$STAGE" "$OLD"
  else
    note "not present"
  fi

  step "remove the kernel settings $SYSCTL"
  if [[ -e $SYSCTL ]]; then
    run rm -f "$SYSCTL"
    note "the values stay in effect until the next boot; forwarding is not switched off on a live"
    note "gateway: if nothing else needs it, run sysctl -w net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0"
  else
    note "not present"
  fi

  # Only when --keepalived installed something: the step is not shown otherwise.
  local ka_files=() f
  for f in "$KA_DIR/etd-keepalived-a.conf.example" "$KA_DIR/etd-keepalived-b.conf.example"; do
    if [[ -e $f ]]; then ka_files+=("$f"); fi
  done
  if ((${#ka_files[@]})) || [[ -e $KA_DIR/etd-health.sh ]]; then
    step "HA pair files of --keepalived in $KA_DIR (keepalived itself and keepalived.conf are left alone)"
    if ((${#ka_files[@]})); then run rm -f "${ka_files[@]}"; fi
    if [[ -e $KA_DIR/etd-health.sh ]]; then
      if ((PURGE)); then
        run rm -f "$KA_DIR/etd-health.sh"
      else
        note "kept $KA_DIR/etd-health.sh: a keepalived.conf may still name it (removed with --purge)"
      fi
    fi
  fi

  step "configuration, state and user"
  if ((PURGE)); then
    run rm -rf "$CONF_DIR" "$STATE_DIR"
    if getent passwd "$ETD_USER" >/dev/null; then
      run userdel "$ETD_USER" # removes the group of the same name too (USERGROUPS_ENAB)
    else
      note "user $ETD_USER does not exist"
    fi
    if ((!DRY_RUN)) && getent group "$ETD_USER" >/dev/null; then run groupdel "$ETD_USER"; fi
  else
    note "kept: $CONF_DIR, $STATE_DIR and the user $ETD_USER (remove them with --uninstall --purge)"
  fi
  note "system packages are left installed (other software may use them)"
}

# --- main ---------------------------------------------------------------------------------------

if ((!DRY_RUN)) && ((EUID == 0)); then
  # One installer at a time.
  exec 9>/run/etd-install.lock
  flock -n 9 || die "another install.sh is running"
fi

check_system
if ((UNINSTALL)); then
  uninstall
else
  install_packages
  create_user
  install_files
  install_config
  install_command
  install_sysctl
  install_unit
  if ((KEEPALIVED)); then install_keepalived; fi
  next_steps
fi

if ((${#BLOCKED[@]})); then
  printf '\nDRY RUN: a real run would stop with %d problem(s):\n' "${#BLOCKED[@]}"
  printf '  - %s\n' "${BLOCKED[@]}"
  exit 1
fi
