#!/usr/bin/env bash
# The operations port (http_port) of a single node, with a real gridd and
# curl: /health, /ready, /metrics in Prometheus' text format (every line a
# comment or a sample, histogram buckets cumulative and ending in +Inf, a
# counter that a write load moved, errors by code); bad input (an unknown
# path, a POST, oversized headers, a client that sends half a request and
# waits) answered or closed while the node keeps serving; the flags --zk,
# --cluster, --zone and --http-port as settings.
set -euo pipefail
GRIDD=$1
GRIDCTL=$2
dir=$(mktemp -d /tmp/grid-http-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/gridd.log" ] && tail -20 "$dir/gridd.log"; exit 1; }
command -v curl >/dev/null || fail "curl not found (scripts/deps installs it)"

# The flags are the settings of the same names.
"$GRIDD" --zk 127.0.0.1:1 --cluster plant --zone hall-2 --http-port 0 --print-config > "$dir/cfg"
grep -qx 'zk = 127.0.0.1:1' "$dir/cfg" || fail "--zk"
grep -qx 'cluster = plant' "$dir/cfg" || fail "--cluster"
grep -qx 'zone = hall-2' "$dir/cfg" || fail "--zone"
grep -qx 'http_port = 0' "$dir/cfg" || fail "--http-port"
"$GRIDD" --help | grep -q -- "--http-port N" || fail "--help does not list --http-port"

"$GRIDD" --port 0 --port-file "$dir/port" --http-port 0 --set http_port_file="$dir/hport" \
  --set http_timeout_ms=1000 2>>"$dir/gridd.log" &
pid=$!
for _ in $(seq 1 500); do [ -s "$dir/hport" ] && break; sleep 0.02; done
[ -s "$dir/hport" ] || fail "gridd did not start"
url="http://127.0.0.1:$(cat "$dir/hport")"
ctl() { "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" "$@"; }

[ "$(curl -s "$url/health")" = "ok" ] || fail "/health"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" = "200" ] || fail "/ready"

metric() { # NAME{LABELS}: its value in a fresh scrape ("" when absent)
  curl -s "$url/metrics" | awk -v k="$1" '$1 == k { print $2 }'
}
before=$(metric 'grid_requests_total{op="PUT"}')
for i in $(seq 1 50); do ctl put default "k$i" "v$i"; done
ctl get nosuchcache k >/dev/null 2>&1 || true
after=$(metric 'grid_requests_total{op="PUT"}')
[ "$((after - ${before:-0}))" -eq 50 ] || fail "PUT counter moved by $((after - ${before:-0})), not 50"
[ "$(metric 'grid_errors_total{op="GET",code="GRID_ENOCACHE"}')" = "1" ] || fail "errors by code"
[ "$(metric 'grid_cache_entries{cache="default"}')" = "50" ] || fail "entries per cache"
[ "$(metric 'grid_request_duration_seconds_count{op="PUT"}')" = "$after" ] ||
  fail "histogram count is not the counter"

# The whole text is Prometheus' format.
curl -s "$url/metrics" > "$dir/metrics"
python3 - "$dir/metrics" <<'PY' || fail "/metrics is not well-formed"
import re, sys
sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*\})? [-+0-9.eE]+$|^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \+?Inf$')
hist = {}
for line in open(sys.argv[1]):
    line = line.rstrip('\n')
    if not line or line.startswith('# HELP ') or line.startswith('# TYPE '):
        continue
    if not sample.match(line):
        sys.exit('not a sample: %r' % line)
    m = re.match(r'^grid_request_duration_seconds_bucket\{op="([^"]+)",le="([^"]+)"\} (\d+)$', line)
    if m:
        hist.setdefault(m.group(1), []).append((m.group(2), int(m.group(3))))
for op, b in hist.items():
    counts = [c for _, c in b]
    if counts != sorted(counts) or b[-1][0] != '+Inf':
        sys.exit('histogram of %s: %r' % (op, b))
PY

# The dashboard's page and its JSON: /api/status holds what gridctl
# status --json prints; /api/load counts the requests and keeps a history.
page=$(curl -s "$url/")
case "$page" in *'<title>grid dashboard</title>'*) ;; *) fail "/ is not the dashboard" ;; esac
case "$page" in *'src="http'*|*"href=\"http"*) fail "the dashboard loads a file from elsewhere" ;; esac
curl -s "$url/api/status" > "$dir/api.json"
ctl status --json > "$dir/ctl.json"
curl -s -D "$dir/headers" -o "$dir/load.json" "$url/api/load"
grep -qi '^Access-Control-Allow-Origin: \*' "$dir/headers" || fail "/api/load without CORS"
ctl get default k1 >/dev/null
sleep 2.5 # two samples of the node's load
curl -s "$url/api/load" > "$dir/load2.json"
python3 - "$dir/api.json" "$dir/ctl.json" "$dir/load.json" "$dir/load2.json" <<'PY' ||
import json, sys
api, ctl, l1, l2 = (json.load(open(p)) for p in sys.argv[1:])
for k, v in ctl.items():
    if api.get(k) != v:
        sys.exit('/api/status %s: %r, gridctl: %r' % (k, api.get(k), v))
if api['serving'] is not True:
    sys.exit('a single node serves')
if not l2['requests'] > l1['requests'] >= 50:
    sys.exit('requests %r then %r' % (l1['requests'], l2['requests']))
if len(l1['buckets']) != len(l1['le']) + 1 or l1['buckets'] != sorted(l1['buckets']):
    sys.exit('histogram %r %r' % (l1['le'], l1['buckets']))
if not l2['history'] or any(len(s) != 4 for s in l2['history']):
    sys.exit('history %r' % l2['history'])
PY
  fail "/api/status or /api/load"

# Bad input: answered in words or closed, and the node goes on.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/nope")" = "404" ] || fail "unknown path"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/metrics")" = "405" ] || fail "POST"
big=$(head -c 40000 /dev/zero | tr '\0' a)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "$url/metrics" || true)
[ "$code" = "431" ] || [ "$code" = "413" ] || fail "oversized headers: $code"
# Half a request, then silence: closed within http_timeout_ms.
exec 5<>/dev/tcp/127.0.0.1/"$(cat "$dir/hport")"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&5
got=$(timeout 10 cat <&5 || echo "TIMEOUT")
exec 5<&-
[ "$got" != "TIMEOUT" ] || fail "a slow client was not closed"
[ "$(ctl get default k7)" = "v7" ] || fail "the node after the bad input"
[ "$(curl -s "$url/health")" = "ok" ] || fail "/health after the bad input"
kill "$pid"
wait "$pid" || fail "gridd exit status $? on SIGTERM (a sanitizer's report?)"
pid=""
echo "test_http: ok"
