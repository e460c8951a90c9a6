#!/usr/bin/env bash
# Ferry's main job on its embedded defaults, start to finish, on this machine:
# a dev server, an install token, an agent pairing with a real block device
# (a loop device over a sparse file), and the server in `ferry servers list`.
# Run through `make demo`, which installs what it needs and builds bin/ferry.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY="$PWD/bin/ferry"
work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
api_port="${FERRY_DEMO_API_PORT:-8443}"
data_port="${FERRY_DEMO_DATA_PORT:-1500}"
server_pid="" loopdev=""

cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

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

disk_args=()
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
  step "Make a source disk: a 1 GiB sparse file on a loop device, ext4 with data on it"
  truncate -s 1G "$work/source.img"
  mkfs.ext4 -q -F "$work/source.img"
  loopdev="$(losetup --find --show "$work/source.img")"
  echo "source disk: $loopdev"
  disk_args=(--disk "$loopdev")
else
  echo "demo: not root, so the agent reports this host's real disks instead of a loop device"
fi

step "Pair the agent: ferry agent --server … --install-token … --ca-fingerprint …"
"$FERRY" agent --server "https://127.0.0.1:$api_port" --install-token "$install_token" --ca-fingerprint "$fingerprint" \
  --state-dir "$work/agent" "${disk_args[@]}" --once
ls -l "$work/agent"

step "The server in the inventory: ferry servers list"
"$FERRY" servers list
id="$("$FERRY" servers list -o json | grep -o '"id": *"s-[^"]*"' | head -1 | sed 's/.*"\(s-[^"]*\)"/\1/')"
step "ferry servers show $id"
"$FERRY" servers show "$id"

step "Demo finished: the server, the paired agent and its disk are above"
