#!/usr/bin/env bash
# Persistent caches on a single node, with real gridd processes: the
# settings as gridctl shows them, entries (strings, hashes, TTLs, deletes)
# kept across a kill -9 and a clean stop, and a data directory that is
# missing, of another cluster, of a newer format or damaged refused with
# words a user understands.
set -euo pipefail
GRIDD=$1
GRIDCTL=$2
DISK_TOOL=$3
dir=$(mktemp -d /tmp/grid-persist-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/gridd.log" ] && tail -20 "$dir/gridd.log"; exit 1; }

start() { # start [settings...]: a node on free ports, data in $dir/data
  rm -f "$dir/port" "$dir/rport"
  "$GRIDD" --port 0 --port-file "$dir/port" --set resp_port=0 \
    --set resp_port_file="$dir/rport" "$@" 2>>"$dir/gridd.log" &
  pid=$!
  for _ in $(seq 1 1000); do [ -s "$dir/port" ] && [ -s "$dir/rport" ] && break; sleep 0.02; done
  [ -s "$dir/port" ] || fail "gridd did not start"
}
ctl() { "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" "$@"; }
rcli() { redis-cli -p "$(cat "$dir/rport")" "$@"; }
kill9() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
stop() { kill "$pid"; wait "$pid" || fail "gridd exit status $? on SIGTERM"; pid=""; }
# refused WORDS [settings...]: gridd must not start, and say WORDS.
refused() {
  local words=$1; shift
  set +e
  timeout 20 "$GRIDD" --port 0 "$@" 2>"$dir/refused.log"; local rc=$?
  set -e
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "gridd started (exit $rc) with $*"
  grep -q -- "$words" "$dir/refused.log" || { cat "$dir/refused.log"; fail "no \"$words\""; }
}

# Without a data_dir a persistent cache is refused, and says what to do.
start
set +e; msg=$(ctl create-cache p --persistence on 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] || fail "persistent cache without data_dir: exit $rc"
echo "$msg" | grep -q "data_dir=DIR" || fail "no data_dir words: $msg"
stop

data="$dir/data"
start --set data_dir="$data"
ctl create-cache p --persistence on --fsync always
ctl create-cache pe --persistence on --fsync every-ms=50
ctl create-cache pn --persistence on --fsync never
ctl create-cache m
ctl caches > "$dir/caches"
grep -Eq '^p +1024 +0 +partitioned +full +0 +on +always$' "$dir/caches" || { cat "$dir/caches"; fail "caches p"; }
grep -Eq '^pe .* on +every-ms=50$' "$dir/caches" || fail "caches pe"
grep -Eq '^pn .* on +never$' "$dir/caches" || fail "caches pn"
grep -Eq '^m .* off +-$' "$dir/caches" || fail "caches m"
for c in p pe pn m; do
  for i in $(seq 1 50); do ctl put "$c" "k$i" "v$i-$c"; done
done
ctl del p k7
ctl put p brief x --ttl-ms 400
ctl put p lasting y --ttl-ms 600000
ctl add p counter 41 >/dev/null
ctl add p counter 1 >/dev/null
[ "$(ctl size p)" = "52" ] || fail "size before the crash: $(ctl size p)"
kill9
sleep 0.5   # brief's TTL runs out while the node is down

start --set data_dir="$data"
grep -q 'persistent cache loaded" cache=p entries=' "$dir/gridd.log" || fail "no load line"
for c in p pe pn; do
  for i in 1 2 49 50; do
    [ "$(ctl get "$c" "k$i")" = "v$i-$c" ] || fail "$c k$i after kill -9"
  done
done
set +e; ctl get p k7 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "deleted k7 is back (exit $rc)"
set +e; ctl get p brief 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "expired entry loaded (exit $rc)"
[ "$(ctl get p lasting)" = "y" ] || fail "entry with a TTL lost"
[ "$(ctl add p counter 0)" = "42" ] || fail "counter after kill -9"
# The memory-only cache is gone with the process; the default cache is there.
set +e; ctl get m k1 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 3 ] || fail "memory-only cache survived (exit $rc)"
# Writes go on after a restart, and versions keep growing.
ctl put p k1 again
[ "$(ctl get p k1)" = "again" ] || fail "write after restart"
# A dropped cache stays dropped.
ctl drop-cache pn
stop                                        # a clean stop this time
start --set data_dir="$data"
[ "$(ctl get p k1)" = "again" ] || fail "k1 after a clean stop"
[ "$(ctl size p)" = "51" ] || fail "size after a clean stop: $(ctl size p)"
ctl caches | grep -q '^pn ' && fail "dropped cache pn is back"
stop

# Another cluster's data directory, a newer format, a damaged file.
refused 'holds the data of a single node, and this node is of cluster "other"' \
  --set data_dir="$data" --set zk=127.0.0.1:1 --set cluster=other
cp -a "$data" "$dir/newer"
"$DISK_TOOL" "$dir/newer" set grid.format 99
refused "was written by a newer grid (format 99" --set data_dir="$dir/newer"
# Each table file damaged in turn (the meta's, each cache's): a checksum
# finds it, and nothing is served from it.
n=0
for sst in "$data"/*.sst; do
  n=$((n + 1))
  rm -rf "$dir/damaged"; cp -a "$data" "$dir/damaged"
  f="$dir/damaged/$(basename "$sst")"
  size=$(stat -c %s "$f")
  printf 'not what grid wrote' | dd of="$f" bs=1 seek=$((size / 3)) conv=notrunc status=none
  refused "is damaged" --set data_dir="$dir/damaged"
done
[ "$n" -ge 2 ] || fail "a clean stop left $n table files"
cp -a "$data" "$dir/nocurrent"
echo "MANIFEST-999999" > "$dir/nocurrent/CURRENT"
refused "is damaged" --set data_dir="$dir/nocurrent"
# The node whose directory it is still starts, with everything; a second
# gridd on the same directory is refused.
start --set data_dir="$data"
refused "is in use by another process" --set data_dir="$data"
[ "$(ctl get p lasting)" = "y" ] || fail "the original data_dir after the refusals"
stop
echo "test_persist: ok"
