#!/usr/bin/env bash
# The main job on a fresh machine, in about a minute: install coi-watch, prepare the Incus
# test bed (scripts/testbed.sh), launch a throwaway container, start `coi-watch watch` on
# it, play a real reverse shell inside it, and show the detection, the kill and the audit
# record. Run as root (Incus and the kernel's process events need it).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (sudo bash scripts/demo.sh)" >&2; exit 2; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 Incus test bed"
bash scripts/testbed.sh

step "2/6 Installing coi-watch into .venv"
if [[ ! -x .venv/bin/coi-watch ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e .
cw=.venv/bin/coi-watch
$cw version

name="coi-demo-$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
audit=$(mktemp -d /tmp/coi-demo-audit.XXXXXX)
watcher=""
cleanup() {
    [[ -n "$watcher" ]] && kill -TERM "$watcher" 2>/dev/null && wait "$watcher" 2>/dev/null
    incus delete --force "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "3/6 Launching the throwaway container $name"
incus launch "${COI_TESTBED_IMAGE:-coi-bb}" "$name" >/dev/null
incus list "^$name\$" -c ns

step "4/6 coi-watch watch $name (audit log in $audit)"
$cw watch "$name" --no-follow --audit-dir "$audit" >"$audit/watch.log" 2>&1 &
watcher=$!
for _ in $(seq 100); do grep -q '^.*ready' "$audit/watch.log" && break; sleep 0.1; done
cat "$audit/watch.log"

step "5/6 Playing a reverse shell inside the container (busybox nc -e /bin/sh to its own loopback)"
echo "\$ incus exec $name -- sh -c 'nc -l -p 4444 & nc 127.0.0.1 4444 -e /bin/sh'"
start=$(date +%s.%N)
incus exec "$name" -- sh -c 'ip link set lo up; (nc -l -p 4444 >/dev/null 2>&1 &); sleep 0.3;
    nc 127.0.0.1 4444 -e /bin/sh; sleep 30' >/dev/null 2>&1 &
for _ in $(seq 200); do
    [[ $(incus list "^$name\$" -c s -f csv) == STOPPED ]] && break
    sleep 0.05
done
end=$(date +%s.%N)
kill -TERM "$watcher"; wait "$watcher" || true; watcher=""
cat "$audit/watch.log"
echo
incus list "^$name\$" -c ns
python3 -c "import sys; print(f'container stopped {float(sys.argv[2]) - float(sys.argv[1]):.2f} s after the reverse shell was started')" "$start" "$end"

step "6/6 The audit record"
$cw audit show "$audit/$name.jsonl" --kind verdict
$cw audit show "$audit/$name.jsonl" --kind action
$cw audit verify "$audit/$name.jsonl"
echo "full log: $cw audit show $audit/$name.jsonl"
