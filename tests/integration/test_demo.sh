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
grep -q "kill -9: fd-" "$out/log" || fail "no kill"
grep -q "leave: fd-" "$out/log" || fail "no graceful leave"
[ "$(grep -c "^  fd-[0-9]: [1-9][0-9]* events" "$out/log")" -ge 2 ] ||
  fail "DataChange events not seen on every server"
# The singleton's holder was the one killed: another server took the role.
[ "$(grep -E "^ +-?[0-9.]+ s  fd-[0-9] gained" "$out/log" | awk '{print $3}' | sort -u | wc -l)" -ge 2 ] ||
  fail "the singleton did not move to another server"
[ -s "$out/run/timeline.png" ] || fail "no timeline plot"
# A sanitizer build's report in any foundationd's log fails the test.
if grep -l "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|WARNING: ThreadSanitizer\|runtime error:" \
     "$out"/run/fd-*.log; then
  grep -h -A30 "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|WARNING: ThreadSanitizer\|runtime error:" \
    "$out"/run/fd-*.log | head -80
  fail "a sanitizer report (above)"
fi
echo "test_demo: ok"
