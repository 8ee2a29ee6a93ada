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
mounted=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || true; fi
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
# refused WORDS [flags...]: gridd must not start, and say WORDS.
refused() {
  local words=$1; shift
  set +e
  timeout 20 "$GRIDD" --port 0 "$@" 2>"$dir/refused.log"; local rc=$?
  set -e
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "gridd started (exit $rc) with $*"
  grep -q -- "$words" "$dir/refused.log" || { cat "$dir/refused.log"; fail "no \"$words\""; }
  return 0
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

# A snapshot, more writes, then back to the snapshot: what it held, and
# only that. A damaged snapshot is refused before anything changes.
ctl snapshot create before-upgrade | grep -q "made on 1 node" || fail "snapshot create"
[ -d "$data/snapshots/before-upgrade" ] || fail "no snapshot directory"
set +e; msg=$(ctl snapshot create before-upgrade 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] && echo "$msg" | grep -q "exists" || fail "second snapshot of one name: $rc $msg"
set +e; msg=$(ctl snapshot create ../escape 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] || fail "snapshot name with a slash: $rc $msg"
ctl put p k2 changed-after
ctl del p k3
ctl put p newkey fresh
stop
cp -a "$data/snapshots/before-upgrade" "$dir/snapcopy"
snapsst=$(ls "$data/snapshots/before-upgrade"/*.sst | tail -1)
# A damaged copy of the snapshot (its own file: the table files are links).
rm -f "$snapsst"; cp "$dir/snapcopy/$(basename "$snapsst")" "$snapsst"
size=$(stat -c %s "$snapsst")
printf 'not what grid wrote' | dd of="$snapsst" bs=1 seek=$((size / 3)) conv=notrunc status=none
refused "snapshot before-upgrade is damaged" --set data_dir="$data" --restore before-upgrade
refused "no snapshot nosuch" --set data_dir="$data" --restore nosuch
ls -d "$data"/db.before-restore-* 2>/dev/null && fail "a refused restore moved the data"
rm -rf "$data/snapshots/before-upgrade"; cp -a "$dir/snapcopy" "$data/snapshots/before-upgrade"
start --set data_dir="$data" --restore before-upgrade
[ "$(ctl get p k2)" = "v2-p" ] || fail "k2 after the restore: $(ctl get p k2)"
[ "$(ctl get p k3)" = "v3-p" ] || fail "k3 after the restore"
set +e; ctl get p newkey 2>/dev/null; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "a key written after the snapshot is there (exit $rc)"
ls -d "$data"/db.before-restore-* >/dev/null || fail "the replaced data was not kept aside"
grep -q "restored from a snapshot" "$dir/gridd.log" || fail "no restore line in the log"
stop

# Entries that do not fit in memory_bytes_max are refused at start, by name.
start --set data_dir="$data"
ctl create-cache bulk --persistence on --fsync never --partitions 16
chunk=$(head -c 100000 /dev/zero | tr '\0' b)
for i in $(seq 1 30); do ctl put bulk "b$i" "$chunk"; done
stop
refused "does not fit in memory_bytes_max" --set data_dir="$data" --set memory_bytes_max=2M
grep -q 'cache=bulk' "$dir/refused.log" || { cat "$dir/refused.log"; fail "the refusal names no cache"; }

# A full disk: writes to the persistent cache are refused in words, change
# nothing, and the node goes on serving everything else.
small="$dir/small"
mkdir -p "$small"
mount -t tmpfs -o size=3m tmpfs "$small" || fail "cannot mount a small tmpfs (the test runs as root)"
mounted="$small"
start --set data_dir="$small/data" --set disk_free_bytes_min=1M
ctl create-cache full --persistence on --partitions 16
ctl put full first v
# Someone else's file takes a third of the disk: what is left runs out.
head -c 1000000 /dev/zero > "$small/ballast"
big=$(head -c 100000 /dev/zero | tr '\0' x)
refusedput=""
for i in $(seq 1 40); do
  set +e; msg=$(ctl put full "big$i" "$big" 2>&1); rc=$?; set -e
  if [ "$rc" -ne 0 ]; then refusedput="$i: $msg"; break; fi
done
[ -n "$refusedput" ] || fail "a 3 MB disk took 4 MB of values"
echo "$refusedput" | grep -q "data directory refused the write" || fail "disk full words: $refusedput"
n=${refusedput%%:*}
set +e; ctl get full "big$n" >/dev/null 2>&1; rc=$?; set -e
[ "$rc" -eq 1 ] || fail "the refused write is in memory (exit $rc)"
ctl put default still serving
[ "$(ctl get default still)" = "serving" ] || fail "memory cache after disk full"
[ "$(ctl get full first)" = "v" ] || fail "earlier persistent entry unreadable"
grep -q "data_dir is nearly full" "$dir/gridd.log" || fail "no disk-full line in the log"
# The operator makes room: writes are taken again, without a restart.
rm -f "$small/ballast"
ok=""
for _ in $(seq 1 50); do
  if ctl put full again v2 2>/dev/null; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || fail "writes still refused once the disk has room"
grep -q "data_dir has room again" "$dir/gridd.log" || fail "no room-again line in the log"
kill9
start --set data_dir="$small/data" --set disk_free_bytes_min=1M
[ "$(ctl get full again)" = "v2" ] || fail "the write after the room came back was lost"
[ "$(ctl get full first)" = "v" ] || fail "the first write was lost"
stop
umount "$small"; mounted=""

# Another cluster's data directory, a newer format, a damaged file.
refused 'holds the data of a single node, and this node is of cluster "other"' \
  --set data_dir="$data" --set zk=127.0.0.1:1 --set cluster=other
cp -a "$data" "$dir/newer"
"$DISK_TOOL" "$dir/newer/db" set grid.format 99
refused "was written by a newer grid (format 99" --set data_dir="$dir/newer"
# Each table file damaged in turn (the meta's, each cache's): a checksum
# finds it, and nothing is served from it.
n=0
for sst in "$data"/db/*.sst; do
  n=$((n + 1))
  rm -rf "$dir/damaged"; cp -a "$data" "$dir/damaged"
  f="$dir/damaged/db/$(basename "$sst")"
  size=$(stat -c %s "$f")
  printf 'not what grid wrote' | dd of="$f" bs=1 seek=$((size / 3)) conv=notrunc status=none
  refused "is damaged" --set data_dir="$dir/damaged"
done
[ "$n" -ge 2 ] || fail "a clean stop left $n table files"
# ... and each truncated (a copy cut short, a disk that lost its end).
for sst in "$data"/db/*.sst; do
  rm -rf "$dir/damaged"; cp -a "$data" "$dir/damaged"
  f="$dir/damaged/db/$(basename "$sst")"
  truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
  refused "is damaged" --set data_dir="$dir/damaged"
done
cp -a "$data" "$dir/nocurrent"
echo "MANIFEST-999999" > "$dir/nocurrent/db/CURRENT"
refused "is damaged" --set data_dir="$dir/nocurrent"
rm -f "$dir/nocurrent/db/CURRENT"
refused "has no CURRENT file" --set data_dir="$dir/nocurrent"
# The node whose directory it is still starts, with everything; a second
# gridd on the same directory is refused.
start --set data_dir="$data"
refused "is in use by another process" --set data_dir="$data"
[ "$(ctl get p lasting)" = "y" ] || fail "the original data_dir after the refusals"
stop
echo "test_persist: ok"
