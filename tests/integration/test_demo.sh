#!/usr/bin/env bash
# The reference deployment, small and short (scripts/demo's driver with
# its own processes: ZooKeeper, three foundationd, two connservers,
# HAProxy, the device simulator): a Foundation server killed with kill -9
# and restarted, another leaving gracefully, under device traffic. Asserts
# from its summary line that every message was acknowledged, none lost and
# no property stale when read back through the balancer; that the line has
# the fields scripts read; and that the timeline plot was made.
set -euo pipefail
BIN=$1
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/grid-demo-test-XXXXXX)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*"; tail -40 "$out/log" 2>/dev/null; exit 1; }
for t in haproxy gnuplot; do command -v $t >/dev/null || fail "$t not found (scripts/deps)"; done
/usr/bin/python3 -c 'import aiohttp' || fail "python3-aiohttp not installed (scripts/deps)"

status=0
/usr/bin/python3 "$here/../../foundation-shim/demo/demo.py" --bin "$BIN" --duration-s 24 \
  --devices 150 --rate 2 --props 3 --out "$out/run" > "$out/log" 2>&1 || status=$?
last=$(tail -1 "$out/log")
echo "$last"
case "$last" in demo:\ *) ;; *) fail "the last line is not the summary: $last" ;; esac
field() { echo "$last" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
for f in sent acked lost stale p99_ms longest_no_ack_ms; do
  [ -n "$(field $f)" ] || fail "the summary has no $f="
done
[ "$(field lost)" = "0" ] || fail "lost=$(field lost)"
[ "$(field stale)" = "0" ] || fail "stale=$(field stale)"
[ "$(field sent)" -gt 0 ] || fail "nothing sent"
[ "$(field acked)" = "$(field sent)" ] || fail "acked $(field acked) of $(field sent)"
[ "$status" = "0" ] || fail "exit status $status"
grep -q "kill -9: fd-1" "$out/log" || fail "no kill"
grep -q "leave: fd-2" "$out/log" || fail "no graceful leave"
grep -q "^  fd-0: [1-9][0-9]* events" "$out/log" || fail "no DataChange events on fd-0"
[ -s "$out/run/timeline.png" ] || fail "no timeline plot"
echo "test_demo: ok"
