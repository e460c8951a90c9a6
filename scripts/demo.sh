#!/usr/bin/env bash
# Ferry's main job on its embedded defaults, start to finish, on this machine:
# a dev server; an agent on a real block device (a small bootable Linux disk
# on a loop device) that pairs, copies the disk and streams its writes; a
# write on the source while it replicates; then a test launch that boots the
# replica under QEMU, with post-launch checks that see the boot marker and
# the guest's web server. Run through `make demo` (installs what it needs,
# builds bin/ferry). Needs root for the loop device and the eBPF tracker.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY="$PWD/bin/ferry"
work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
api_port="${FERRY_DEMO_API_PORT:-8443}"
data_port="${FERRY_DEMO_DATA_PORT:-1500}"
server_pid="" agent_pid="" loopdev=""

cleanup() {
  [ -n "${id:-}" ] && "$FERRY" launch terminate "$id" >/dev/null 2>&1 || true
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (loop devices and eBPF change tracking need it)" >&2
  exit 1
fi

step "Start the server: ferry server --dev --data $work/server"
"$FERRY" server --dev --data "$work/server" --listen "127.0.0.1:$api_port" --data-listen "127.0.0.1:$data_port" \
  --advertise 127.0.0.1 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "CA fingerprint" "$work/server.out" 2>/dev/null && grep -q "ferry server running" "$work/server.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "demo: the server exited" >&2; exit 1; }
  sleep 0.1
done
token="$(grep -A2 'admin API token' "$work/server.out" | grep -o 'fyt_[a-z0-9_]*')"
fingerprint="$(grep -A2 'CA fingerprint' "$work/server.out" | tail -1 | tr -d ' ')"
echo "admin token: ${token:0:12}… (shown once by the server)  CA fingerprint: $fingerprint"

export FERRY_CONFIG="$work/cli.json"
step "Log the CLI in"
"$FERRY" login --addr "https://127.0.0.1:$api_port" --token "$token" --ca-fingerprint "$fingerprint"

step "Create an install token for the agents"
"$FERRY" install-tokens create --name demo --max-uses 5 --expires 1h --tag env=demo -o json >"$work/it.json"
install_token="$(grep -o '"secret": *"[^"]*"' "$work/it.json" | sed 's/.*"\(fyi_[^"]*\)"/\1/')"
"$FERRY" install-tokens list

step "Make the source server's disk: a small bootable Linux (Debian kernel, busybox) on a loop device"
"$FERRY" dev test-disk -o "$work/source.img"
loopdev="$(losetup --find --show "$work/source.img")"
echo "source disk: $loopdev"

step "Run the agent: pair, initial sync, then continuous replication (eBPF change tracking)"
"$FERRY" agent --server "https://127.0.0.1:$api_port" --install-token "$install_token" --ca-fingerprint "$fingerprint" \
  --state-dir "$work/agent" --disk "$loopdev" --tracker auto >"$work/agent.log" 2>&1 &
agent_pid=$!
id=""
for _ in $(seq 1 600); do
  line="$("$FERRY" servers list -o json 2>/dev/null | tr -d '\n ' || true)"
  id="$(grep -o '"id":"s-[^"]*"' <<<"$line" | head -1 | cut -d'"' -f4 || true)"
  state="$(grep -o '"lifecycle_state":"[A-Z_]*"' <<<"$line" | head -1 | cut -d'"' -f4 || true)"
  repl="$(grep -o '"replication":{"state":"[A-Z_]*"' <<<"$line" | head -1 | cut -d'"' -f6 || true)"
  printf '\r  %s  lifecycle %-16s replication %-14s' "${id:-…}" "${state:-…}" "${repl:-…}"
  [ "$state" = READY_FOR_TEST ] && break
  kill -0 "$agent_pid" 2>/dev/null || { echo; cat "$work/agent.log"; echo "demo: the agent exited" >&2; exit 1; }
  sleep 0.5
done
echo
[ "$state" = READY_FOR_TEST ] || { cat "$work/agent.log"; echo "demo: initial sync did not finish" >&2; exit 1; }
"$FERRY" servers list

step "Write on the source while it replicates (the web page the guest serves)"
printf 'written on the source while Ferry replicated it\n' >"$work/index.html"
"$FERRY" dev write-file "$loopdev" /www/index.html "$work/index.html"
sync
echo "wrote /www/index.html on $loopdev"

step "Launch settings: post-launch checks for the boot marker and the web page"
cat >"$work/launch.json" <<JSON
{"launch_settings": {"launch_disposition": "STARTED", "right_sizing": "NONE", "cpus": 1, "memory_mib": 256,
  "boot_mode": "USE_SOURCE", "target": "qemu", "convert": false, "post_launch_actions": [
  {"id": "boot", "name": "boot marker on the serial console", "active": true, "order": 1, "timeout_seconds": 180,
   "deployment": "TEST_AND_CUTOVER", "category": "VALIDATION", "parameters": {"type": "boot_marker", "pattern": "FERRY-BOOT-OK"}},
  {"id": "web", "name": "the guest serves the page written during replication", "active": true, "order": 2, "timeout_seconds": 60,
   "deployment": "TEST_AND_CUTOVER", "category": "VALIDATION",
   "parameters": {"type": "http", "guest_port": "80", "path": "/", "contains": "while Ferry replicated it"}}]}}
JSON
curl -sS --fail-with-body --cacert "$work/server/pki/ca.crt" -X PATCH -H "Authorization: Bearer $token" \
  -H "Content-Type: application/json" --data @"$work/launch.json" "https://127.0.0.1:$api_port/api/v1/servers/$id" >/dev/null
echo "post-launch actions set on $id"

step "Test launch: snapshot now (replication continues), boot the replica under QEMU, run the checks"
"$FERRY" launch test "$id"
"$FERRY" servers show "$id" -o json | grep -o '"console_log": *"[^"]*"' | head -1
echo "guest console (last lines):"
tail -n 5 "$(ls "$work"/server/instances/*/console.log | head -1)" 2>/dev/null || true

step "Terminate the test instance"
"$FERRY" launch terminate "$id"
"$FERRY" servers list

step "Demo finished: replicated, tested, and the test instance booted the replica and served the new page"
