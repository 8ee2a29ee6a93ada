#!/usr/bin/env bash
# node-redis 4 and ioredis 5 (the Node.js clients of Redis, from npm) run one
# scripted session (redis_node_session.js) against gridd and against a real
# redis-server 7: every step's result must be the same.
#
#   test_redis_node.sh GRIDD DIR        DIR holds redis_node_session.js
#
# The clients are installed once, pinned, into $GRID_NODE_DEPS (default
# <gridd's directory>/node_deps) from the npm registry. Starts one
# redis-server and one gridd on loopback and stops exactly those, by pid.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 GRIDD DIR" >&2; exit 2; }
GRIDD=$1
SESSION=$2/redis_node_session.js
NODE_REDIS=redis@4.7.1
IOREDIS=ioredis@5.11.1
START_WAIT_STEPS=200      # 200 x 0.05 s for a server to answer PING
SESSION_TIMEOUT_S=120

for tool in node npm redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "test_redis_node: $tool not found; scripts/deps installs it"; exit 1; }
done
deps=${GRID_NODE_DEPS:-$(dirname "$GRIDD")/node_deps}
if ! [ -f "$deps/node_modules/redis/package.json" ] || ! [ -f "$deps/node_modules/ioredis/package.json" ]; then
  echo "test_redis_node: installing $NODE_REDIS and $IOREDIS into $deps"
  mkdir -p "$deps"
  npm install --prefix "$deps" --no-audit --no-fund --silent "$NODE_REDIS" "$IOREDIS"
fi

dir=$(mktemp -d /tmp/grid-node-XXXXXX)
redis_pid=""
gridd_pid=""
cleanup() {
  local pid
  for pid in $gridd_pid $redis_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT

# free_port, wait_pong
# shellcheck source=resp_servers.sh
. "$(dirname "$0")/resp_servers.sh"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  >"$dir/redis.log" 2>&1 &
redis_pid=$!
wait_pong "$redis_port" "$redis_pid" || { echo "test_redis_node: redis-server did not start"; exit 1; }

"$GRIDD" --port 0 --set resp_port=0 --set resp_port_file="$dir/resp.port" >"$dir/gridd.log" 2>&1 &
gridd_pid=$!
for ((i = 0; i < START_WAIT_STEPS; i++)); do
  grep -Eqx '[0-9]+' "$dir/resp.port" 2>/dev/null && break
  sleep 0.05
done
grid_port=$(cat "$dir/resp.port" 2>/dev/null || true)
[[ $grid_port =~ ^[0-9]+$ ]] && wait_pong "$grid_port" "$gridd_pid" ||
  { echo "test_redis_node: gridd did not serve RESP"; cat "$dir/gridd.log"; exit 1; }

run() { NODE_PATH="$deps/node_modules" timeout "$SESSION_TIMEOUT_S" node "$SESSION" "$1" >"$dir/$2.out"; }
run "$redis_port" redis || { echo "test_redis_node: the session failed against Redis"; cat "$dir/redis.out"; exit 1; }
run "$grid_port" grid || { echo "test_redis_node: the session failed against gridd"; cat "$dir/grid.out"; exit 1; }

steps=$(wc -l <"$dir/redis.out")
# The check itself: Redis ran the WATCH retry, and answered every step.
grep -q '^\["nr watch",\["OK","22"\]\]$' "$dir/redis.out" ||
  { echo "test_redis_node: the session's WATCH step did not run as expected on Redis"; cat "$dir/redis.out"; exit 1; }
if diff -u --label redis --label grid "$dir/redis.out" "$dir/grid.out"; then
  echo "test_redis_node: $steps steps of node-redis and ioredis, the same on both"
else
  echo "test_redis_node: results differ"
  exit 1
fi
kill "$gridd_pid"
rc=0
wait "$gridd_pid" || rc=$?
gridd_pid=""
[ "$rc" -eq 0 ] || { echo "test_redis_node: gridd did not stop cleanly (status $rc)"; tail -50 "$dir/gridd.log"; exit 1; }
