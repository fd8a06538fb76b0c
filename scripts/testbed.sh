#!/usr/bin/env bash
# Prepare a real Incus test bed for coi-watch (idempotent; run as root).
#
# Target: Debian 12 (bookworm), no systemd, network access only to Debian's
# package mirrors. Steps (each one skipped when already done):
#   1. install incus (bookworm-backports) + nftables conntrack busybox-static
#      iproute2 procps (bookworm main)
#   2. start incusd detached if its unix socket does not answer
#   3. storage pool "default" (dir) + root disk device on profile "default"
#   4. build and import a tiny busybox image (alias $COI_TESTBED_IMAGE)
#   5. print a summary
#
# Env: COI_TESTBED_IMAGE  image alias to create (default: coi-bb)
set -Eeuo pipefail

IMAGE_ALIAS="${COI_TESTBED_IMAGE:-coi-bb}"
INCUSD=/usr/libexec/incus/incusd
INCUS_SOCKET=/var/lib/incus/unix.socket
INCUSD_LOG=/var/log/coi-testbed-incusd.log
BACKPORTS_FILE=/etc/apt/sources.list.d/coi-testbed-backports.sources
LOCK_FILE=/run/lock/coi-testbed.lock
MAIN_PKGS=(nftables conntrack busybox-static iproute2 procps)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export HOME="${HOME:-/root}"
export DEBIAN_FRONTEND=noninteractive

STEP="init"
WORKDIR=""

on_err() {
    local rc=$?
    echo "testbed.sh: FAILED in step '${STEP}' (exit ${rc}, line ${BASH_LINENO[0]:-?})" >&2
    exit "$rc"
}
cleanup() {
    if [[ -n "$WORKDIR" && -d "$WORKDIR" ]]; then
        rm -rf -- "$WORKDIR"
    fi
}
trap on_err ERR
trap cleanup EXIT

die() {
    echo "testbed.sh: FAILED in step '${STEP}': $*" >&2
    exit 1
}
log() { echo "testbed: $*"; }

case "${1:-}" in
    "") ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "usage: $0   (env COI_TESTBED_IMAGE=alias, default coi-bb)" >&2; exit 2 ;;
esac

[[ "$(id -u)" -eq 0 ]] || { STEP="init"; die "must run as root"; }

# Serialise concurrent runs. fd 9 is closed again for the daemon (see start_incusd).
mkdir -p "$(dirname "$LOCK_FILE")"
exec 9>"$LOCK_FILE"
flock -w 900 9 || { STEP="lock"; die "could not take $LOCK_FILE within 900 s"; }

# --------------------------------------------------------------------------
# 1. packages
# --------------------------------------------------------------------------
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# Print deb822 stanza(s) for "$CODENAME-backports main", derived from the
# machine's existing Debian source(s) for "$CODENAME": same URIs, Signed-By,
# Architectures etc. strict=1 only accepts sources signed by the Debian archive
# keyring (or without Signed-By); strict=0 accepts any "$CODENAME ... main" source.
derive_backports_stanzas() {
    local codename=$1 strict=$2 f
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v want="$codename" -v strict="$strict" '
            function ok_signed(s) { return (!strict || s == "" || s ~ /debian-archive/ || s ~ /BEGIN PGP/) }
            function flush(   i) {
                if (n > 0 && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " want " ") \
                    && (" " comps " ") ~ / main / && enabled != "no" && ok_signed(signed)) {
                    print "Types: deb"
                    for (i = 1; i <= n; i++) print lines[i]
                    print "Suites: " want "-backports"
                    print "Components: main"
                    print ""
                }
                n = 0; types = suites = comps = signed = enabled = key = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {                      # continuation line (e.g. inline Signed-By key)
                if (key == "signed-by") { signed = signed "\n" $0 }
                if (keep) lines[++n] = $0
                next
            }
            {
                key = tolower(substr($0, 1, index($0, ":") - 1))
                val = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", val)
                keep = 0
                if (key == "types") types = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "enabled") enabled = tolower(val)
                else { if (key == "signed-by") signed = val; keep = 1; lines[++n] = $0 }
            }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        awk -v want="$codename" -v strict="$strict" '
            /^[ \t]*deb[ \t]/ {
                line = $0; opts = ""
                if (match(line, /\[[^]]*\]/)) {
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) " " substr(line, RSTART + RLENGTH)
                }
                sub(/[ \t]#.*$/, "", line)
                n = split(line, a, /[ \t]+/); i = (a[1] == "") ? 2 : 1
                if (a[i] != "deb" || a[i + 2] != want) next
                main = 0
                for (j = i + 3; j <= n; j++) if (a[j] == "main") main = 1
                if (!main) next
                signed = ""; extra = ""
                m = split(opts, o, /[ \t]+/)
                for (j = 1; j <= m; j++) {
                    if (o[j] == "") continue
                    k = o[j]; v = o[j]; sub(/[-+]?=.*/, "", k); sub(/^[^=]*=/, "", v)
                    if (k == "signed-by") { signed = v; extra = extra "Signed-By: " v "\n" }
                    else if (k == "arch") { gsub(",", " ", v); extra = extra "Architectures: " v "\n" }
                    else if (k == "trusted") extra = extra "Trusted: " v "\n"
                }
                if (strict && signed != "" && signed !~ /debian-archive/) next
                printf "Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n%s\n", a[i + 1], want, extra
            }
        ' "$f"
    done
}

have_backports_source() {
    local codename=$1
    grep -rqsE "(^|[[:space:]])${codename}-backports([[:space:]]|\$)" \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null
}

ensure_packages() {
    STEP="install packages"
    local codename missing_main=() p need_incus=0 stanzas
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || codename=bookworm
    for p in "${MAIN_PKGS[@]}"; do pkg_installed "$p" || missing_main+=("$p"); done
    if ! [[ -x "$INCUSD" ]] || ! command -v incus >/dev/null 2>&1; then need_incus=1; fi
    if [[ $need_incus -eq 0 && ${#missing_main[@]} -eq 0 ]]; then
        log "packages already installed (skipping apt)"
        return
    fi
    if [[ $need_incus -eq 1 ]] && ! have_backports_source "$codename"; then
        STEP="add ${codename}-backports apt source"
        stanzas="$(derive_backports_stanzas "$codename" 1)"
        [[ -n "$stanzas" ]] || stanzas="$(derive_backports_stanzas "$codename" 0)"
        [[ -n "$stanzas" ]] || die "no Debian apt source for suite '$codename' (component main) found in /etc/apt/sources.list{,.d/}"
        { echo "# written by coi-watch scripts/testbed.sh (derived from the existing Debian source)"
          printf '%s\n' "$stanzas"; } >"$BACKPORTS_FILE"
        log "added $BACKPORTS_FILE:"
        sed 's/^/    /' "$BACKPORTS_FILE"
    fi
    STEP="apt-get update"
    log "apt-get update"
    apt-get update -q
    if [[ ${#missing_main[@]} -gt 0 ]]; then
        STEP="apt-get install ${missing_main[*]}"
        log "installing from $codename: ${missing_main[*]}"
        apt-get install -y -q --no-install-recommends "${missing_main[@]}"
    fi
    if [[ $need_incus -eq 1 ]]; then
        STEP="apt-get install incus (${codename}-backports)"
        log "installing incus from ${codename}-backports"
        apt-get install -y -q -t "${codename}-backports" incus
    fi
    STEP="install packages"
    [[ -x "$INCUSD" ]] || die "$INCUSD missing after install"
}

# --------------------------------------------------------------------------
# 2. daemon
# --------------------------------------------------------------------------
incus_answers() {
    [[ -S "$INCUS_SOCKET" ]] && timeout 10 incus query /1.0 >/dev/null 2>&1
}

spawn_incusd() {
    log "starting incusd (log: $INCUSD_LOG)"
    # Detach fully: new session, cwd /, every inherited fd > 2 closed (fd 9 =
    # our lock, plus whatever CI passed in), stdin /dev/null, stdout/stderr to
    # the log. The daemon outlives this script and never holds a caller's pipe.
    (
        cd /
        for fdpath in /proc/self/fd/*; do
            fd="${fdpath##*/}"
            if [[ "$fd" =~ ^[0-9]+$ && "$fd" -gt 2 ]]; then
                eval "exec ${fd}>&-" 2>/dev/null || true
            fi
        done
        exec setsid "$INCUSD" --group root </dev/null >"$INCUSD_LOG" 2>&1
    ) </dev/null >/dev/null 2>&1 &
}

start_incusd() {
    STEP="start incusd"
    local started=0 deadline=$((SECONDS + 90))
    while ! incus_answers; do
        if ! pgrep -x incusd >/dev/null 2>&1; then
            # No daemon (or a previous one just finished shutting down).
            if [[ $started -eq 1 ]]; then
                echo "---- last lines of $INCUSD_LOG ----" >&2
                tail -n 30 "$INCUSD_LOG" >&2 || true
                die "incusd exited right after start"
            fi
            spawn_incusd
            started=1
            if ! incus admin waitready --timeout 60 </dev/null; then
                echo "---- last lines of $INCUSD_LOG ----" >&2
                tail -n 30 "$INCUSD_LOG" >&2 || true
                die "incusd did not become ready within 60 s"
            fi
            continue
        fi
        # An incusd process exists but does not answer: it is starting up or
        # shutting down. Wait for either outcome.
        [[ $SECONDS -lt $deadline ]] || die "an incusd process exists but $INCUS_SOCKET does not answer (90 s)"
        sleep 0.5
    done
    if [[ $started -eq 0 ]]; then log "incusd answering on $INCUS_SOCKET"; fi
}

# --------------------------------------------------------------------------
# 3. storage pool + profile root disk
# --------------------------------------------------------------------------
ensure_storage() {
    STEP="storage pool default"
    if incus storage show default >/dev/null 2>&1; then
        log "storage pool 'default' exists"
    else
        log "creating storage pool 'default' (dir)"
        incus storage create default dir
    fi
    STEP="profile default root disk"
    if incus profile device list default 2>/dev/null | grep -qx root; then
        log "profile 'default' already has a root device"
    else
        log "adding root disk to profile 'default'"
        incus profile device add default root disk path=/ pool=default
    fi
}

# --------------------------------------------------------------------------
# 4. busybox image
# --------------------------------------------------------------------------
ensure_image() {
    STEP="image $IMAGE_ALIAS"
    if incus image info "$IMAGE_ALIAS" >/dev/null 2>&1; then
        log "image alias '$IMAGE_ALIAS' exists"
        return
    fi
    local bb arch rootfs applet dir bbver
    bb="$(dpkg -L busybox-static 2>/dev/null | grep -E '/bin/busybox$' | head -n1 || true)"
    [[ -n "$bb" && -x "$bb" ]] || die "static busybox not found (package busybox-static)"
    if ldd "$bb" >/dev/null 2>&1; then die "$bb is dynamically linked"; fi
    case "$(uname -m)" in
        x86_64|amd64) arch=x86_64 ;;
        aarch64|arm64) arch=aarch64 ;;
        *) arch="$(uname -m)" ;;
    esac
    bbver="$("$bb" 2>&1 | head -n1 | awk '{print $2}' || true)"

    log "building busybox image '$IMAGE_ALIAS' ($arch, busybox ${bbver:-?})"
    WORKDIR="$(mktemp -d /tmp/coi-testbed-image.XXXXXX)"
    rootfs="$WORKDIR/rootfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,var/log,root,home,tmp}
    ln -s ../run "$rootfs/var/run"
    chmod 1777 "$rootfs/tmp"
    chmod 0700 "$rootfs/root"
    install -m 0755 "$bb" "$rootfs/bin/busybox"
    # One symlink per applet, at busybox's own install path (bin/, sbin/, usr/bin/ ...).
    while read -r applet; do
        [[ -n "$applet" ]] || continue
        applet="${applet#/}"
        [[ "$applet" == "bin/busybox" ]] && continue
        dir="$(dirname "$applet")"
        mkdir -p "$rootfs/$dir"
        [[ -e "$rootfs/$applet" || -L "$rootfs/$applet" ]] || ln -s /bin/busybox "$rootfs/$applet"
    done < <("$bb" --list-full)
    # Applets from --list that --list-full did not place (should be none): put in /bin.
    while read -r applet; do
        [[ -n "$applet" && "$applet" != busybox ]] || continue
        for dir in bin sbin usr/bin usr/sbin; do
            [[ -e "$rootfs/$dir/$applet" || -L "$rootfs/$dir/$applet" ]] && continue 2
        done
        ln -s /bin/busybox "$rootfs/bin/$applet"
    done < <("$bb" --list)
    ln -sfn /bin/busybox "$rootfs/sbin/init"

    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$rootfs/etc/shadow"
    chmod 0640 "$rootfs/etc/shadow"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
    echo "coi-bb" >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
    printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' >"$rootfs/etc/profile"
    # Incus/LXC already mounts /proc and /sys; mount them only if missing.
    # busybox init stays PID 1; the respawned sleep keeps one ordinary process
    # alive. A graceful `incus stop` (SIGPWR) works: busybox init TERMs/KILLs
    # everything and exits (~3 s); `incus stop --force` takes ~0.6 s.
    cat >"$rootfs/etc/inittab" <<'EOF'
::sysinit:/bin/sh -c 'mountpoint -q /proc || mount -t proc proc /proc; mountpoint -q /sys || mount -t sysfs sysfs /sys; mkdir -p /run /tmp; true'
::respawn:/bin/sleep 2147483647
EOF

    cat >"$WORKDIR/metadata.yaml" <<EOF
architecture: $arch
creation_date: $(date +%s)
properties:
  description: coi-watch busybox test image (busybox ${bbver:-static})
  os: busybox
  release: "${bbver:-static}"
  architecture: $arch
  variant: coi-testbed
EOF
    tar -C "$WORKDIR" --numeric-owner --owner=0 --group=0 -czf "$WORKDIR/meta.tar.gz" metadata.yaml
    tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -czf "$WORKDIR/rootfs.tar.gz" .
    incus image import "$WORKDIR/meta.tar.gz" "$WORKDIR/rootfs.tar.gz" --alias "$IMAGE_ALIAS" </dev/null
    rm -rf -- "$WORKDIR"
    WORKDIR=""
    incus image info "$IMAGE_ALIAS" >/dev/null 2>&1 || die "image alias '$IMAGE_ALIAS' missing after import"
}

# --------------------------------------------------------------------------
main() {
    ensure_packages
    start_incusd
    ensure_storage
    ensure_image
    STEP="summary"
    local fp
    fp="$(incus image info "$IMAGE_ALIAS" | awk '/^Fingerprint:/ {print substr($2, 1, 12)}')"
    echo "---- coi-watch test bed ready ----"
    incus version | sed 's/^/  /'
    echo "  socket: $INCUS_SOCKET"
    echo "  image:  $IMAGE_ALIAS (fingerprint ${fp:-?})"
    echo "  incusd log: $INCUSD_LOG"
}

main
