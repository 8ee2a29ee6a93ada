#!/usr/bin/env bash
# gridctl against a real gridd: what a user types, what they see, exit codes.
set -euo pipefail
GRIDD=$1
GRIDCTL=$2
dir=$(mktemp -d /tmp/grid-ctl-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$GRIDD" --port 0 --port-file "$dir/port" 2>"$dir/gridd.log" &
pid=$!
for _ in $(seq 1 500); do [ -s "$dir/port" ] && break; sleep 0.02; done
[ -s "$dir/port" ] || { echo "gridd did not start"; cat "$dir/gridd.log"; exit 1; }
ctl() { "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" "$@"; }
fail() { echo "FAIL: $*"; exit 1; }

ctl put default k v
[ "$(ctl get default k)" = "v" ] || fail "get k"

# A missing key: nothing on stdout, "not found" on stderr, exit 1.
set +e
out=$(ctl get default missing 2>"$dir/err"); rc=$?
set -e
[ "$rc" -eq 1 ] || fail "missing key exit $rc"
[ -z "$out" ] || fail "missing key printed '$out'"
[ "$(cat "$dir/err")" = "not found" ] || fail "missing key stderr '$(cat "$dir/err")'"

ctl put default spaced "a value with spaces"
[ "$(ctl get default spaced)" = "a value with spaces" ] || fail "spaces"

ctl put default brief x --ttl-ms 100
sleep 0.5
set +e; ctl get default brief 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "ttl entry still there (exit $rc)"

ctl del default k
set +e; ctl del default k 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "second del exit $rc"

[ "$(ctl add default n 5)" = "5" ] || fail "add"
[ "$(ctl add default n -8)" = "-3" ] || fail "add negative"

ctl create-cache things --partitions 64 --backups 1 --mode replicated --sync primary
ctl caches | grep -Eq '^things +64 +1 +replicated +primary' || { ctl caches; fail "caches listing"; }
ctl put things t1 hot
[ "$(ctl size things)" = "1" ] || fail "size"
set +e; msg=$(ctl create-cache things 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] || fail "duplicate cache exit $rc"
echo "$msg" | grep -q "already exists" || fail "duplicate cache words: $msg"
ctl drop-cache things
set +e; msg=$(ctl get things t1 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] && echo "$msg" | grep -q "no such cache" || fail "dropped cache: $rc $msg"

# Connections of the earlier gridctl runs may still be closing on the node:
# it counts only this one once they are gone.
for _ in $(seq 1 100); do
  stats=$(ctl stats)
  echo "$stats" | grep -Eq '^connections +1$' && break
  sleep 0.05
done
echo "$stats" | grep -Eq '^entries +2$' || { echo "$stats"; fail "stats entries"; }
echo "$stats" | grep -Eq '^connections +1$' || { echo "$stats"; fail "stats connections"; }
echo "$stats" | grep -Eq '^ops +[0-9]+$' || fail "stats ops"
echo "$stats" | grep -Eq '^memory_bytes +[1-9][0-9]*$' || fail "stats memory"

# watch: the snapshot, then each change as it comes, one line each (and
# --json); it stops after --count events. Each waits for its snapshot to
# be whole before the changes are made, and gives up after 60 s.
wctl() { timeout 60 "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" "$@"; }
wait_synced() {
  for _ in $(seq 1 3000); do grep -q 'synced' "$1" 2>/dev/null && return 0; sleep 0.02; done
  fail "watch never synced: $(cat "$1")"
}
ctl create-cache watched --partitions 8
ctl put watched before 1
wctl watch watched --snapshot --count 4 > "$dir/watch" 2>"$dir/watch.err" &
wpid=$!
wait_synced "$dir/watch"
ctl put watched sensor:1 "21.5"
ctl del watched before
wait "$wpid" || fail "watch exit $?: $(cat "$dir/watch.err")"
grep -Eq '^snapshot +before = 1 ' "$dir/watch" || fail "watch snapshot: $(cat "$dir/watch")"
grep -Eq '^put +sensor:1 = 21.5 ' "$dir/watch" || fail "watch put: $(cat "$dir/watch")"
grep -Eq '^delete +before ' "$dir/watch" || fail "watch delete: $(cat "$dir/watch")"
wctl watch watched --json --prefix sensor: --snapshot --count 3 > "$dir/watch" &
wpid=$!
wait_synced "$dir/watch"
ctl put watched other x
ctl put watched sensor:2 '"q"'
wait "$wpid" || fail "watch --json exit $?"
grep -q '^{"event":"snapshot","partition":[0-9]*,"version":[0-9]*,"key":"sensor:1","value":"21.5"}$' \
  "$dir/watch" || fail "watch --json snapshot: $(cat "$dir/watch")"
grep -q '^{"event":"put","partition":[0-9]*,"version":[0-9]*,"key":"sensor:2","value":"\\"q\\""}$' \
  "$dir/watch" || fail "watch --json: $(cat "$dir/watch")"
! grep -q '"other"' "$dir/watch" || fail "watch --prefix let another key through"
set +e; msg=$(ctl watch nosuch 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] && echo "$msg" | grep -q "no such cache" || fail "watch unknown cache: $rc $msg"
set +e; msg=$(ctl watch watched --prefix "" 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] && echo "$msg" | grep -q "empty prefix" || fail "watch empty prefix: $rc $msg"
ctl drop-cache watched

# Usage errors: words and exit 2.
set +e
ctl frobnicate >/dev/null 2>"$dir/err"; rc=$?
[ "$rc" -eq 2 ] && grep -q "unknown verb" "$dir/err" || fail "unknown verb ($rc)"
ctl put default onlykey >/dev/null 2>"$dir/err"; rc=$?
[ "$rc" -eq 2 ] || fail "put without value ($rc)"
ctl create-cache c --backups 9 >/dev/null 2>"$dir/err"; rc=$?
[ "$rc" -eq 2 ] || fail "backups 9 ($rc)"
"$GRIDCTL" --help | grep -q "usage: gridctl" || fail "--help"
# A server that is not there: words, exit 3.
"$GRIDCTL" --server 127.0.0.1:1 get default k >/dev/null 2>"$dir/err"; rc=$?
[ "$rc" -eq 3 ] && grep -q "cannot reach" "$dir/err" || fail "no server ($rc)"
set -e

"$GRIDD" --help | grep -q "usage: gridd" || fail "gridd --help"

# A config file, with flags overriding it whatever their order.
cat > "$dir/grid.conf" <<CONF
# a comment
port = 1            # overridden by --port
memory_bytes_max = 3M
key_bytes_max=100
CONF
"$GRIDD" --port 0 --config "$dir/grid.conf" --set key_bytes_max=200 --print-config > "$dir/eff"
grep -qx 'port = 0' "$dir/eff" || fail "--port did not override the file"
grep -qx 'memory_bytes_max = 3145728' "$dir/eff" || fail "file setting lost"
grep -qx 'key_bytes_max = 200' "$dir/eff" || fail "--set did not override the file"
printf 'port = 99999\n' > "$dir/bad.conf"
set +e
"$GRIDD" --config "$dir/bad.conf" 2>"$dir/err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "bad.conf:1: port: 99999 is outside -1..65535" "$dir/err" || fail "bad config file ($rc): $(cat "$dir/err")"
set +e
"$GRIDD" --set no_such=1 2>"$dir/err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q 'unknown setting "no_such"' "$dir/err" || fail "gridd bad setting ($rc)"

kill "$pid"; wait "$pid"; rc=$?; pid=""
[ "$rc" -eq 0 ] || fail "gridd exit status $rc on SIGTERM"
grep -q 'msg="stopped"' "$dir/gridd.log" || fail "no stop line in the log"
echo "test_gridctl: all passed"
