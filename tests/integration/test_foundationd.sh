#!/usr/bin/env bash
# foundationd's REST API against a real gridd (foundationd --grid, the
# remote mode; the embedded mode runs in test_demo): properties written and
# read one by one and all together, UpdatePropertyValues writing only newer
# values (a message delivered twice changes nothing), the platform's
# {"prop": v} body, types kept; bad input answered with a status and words
# (unknown paths, methods, bodies that are not JSON, wrong types, names,
# an oversized body) while the server keeps serving; /health, /ready,
# /stats, --help.
set -euo pipefail
GRIDD=$1
FOUNDATIOND=$2
dir=$(mktemp -d /tmp/grid-fd-XXXXXX)
gpid="" fpid=""
cleanup() {
  for p in $fpid $gpid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -20 "$dir/fd.log" 2>/dev/null; exit 1; }

"$FOUNDATIOND" --help | grep -q "UpdatePropertyValues" || fail "--help"
"$FOUNDATIOND" --http-port 0 2>/dev/null && fail "started without --zk or --grid"
"$FOUNDATIOND" --grid grid://127.0.0.1:1 --http-port abc 2>"$dir/err" && fail "--http-port abc"
grep -q "expected a number" "$dir/err" || fail "words for a bad number: $(cat "$dir/err")"

"$GRIDD" --port 0 --port-file "$dir/gport" 2>"$dir/gridd.log" &
gpid=$!
for _ in $(seq 1 500); do [ -s "$dir/gport" ] && break; sleep 0.02; done
"$FOUNDATIOND" --grid "grid://127.0.0.1:$(cat "$dir/gport")" --http-port 0 \
  --port-file "$dir/fport" --body-bytes-max 4096 --no-singleton 2>"$dir/fd.log" &
fpid=$!
for _ in $(seq 1 500); do [ -s "$dir/fport" ] && break; sleep 0.02; done
[ -s "$dir/fport" ] || fail "foundationd did not start"
u="http://127.0.0.1:$(cat "$dir/fport")"
T="$u/Thingworx/Things/pump-7"
# code METHOD URL [BODY]: the status; the body in $dir/body
code() {
  if [ $# -ge 3 ]; then
    curl -s -o "$dir/body" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
      --data-binary "$3" "$2"
  else
    curl -s -o "$dir/body" -w '%{http_code}' -X "$1" "$2"
  fi
}
j() { /usr/bin/python3 -c "import json,sys; d=json.load(open('$dir/body')); print($1)"; }

[ "$(code GET "$u/health")" = 200 ] || fail "/health"
for _ in $(seq 1 100); do [ "$(code GET "$u/ready")" = 200 ] && break; sleep 0.1; done
[ "$(code GET "$u/ready")" = 200 ] || fail "/ready: $(cat "$dir/body")"

# One property, in both body shapes; read back with its time and quality.
[ "$(code PUT "$T/Properties/temperature" '{"value": 71.5, "time": 1000, "quality": "GOOD"}')" = 200 ] ||
  fail "PUT: $(cat "$dir/body")"
[ "$(code PUT "$T/Properties/state" '{"state": "running"}')" = 200 ] || fail "PUT {prop: v}"
[ "$(code GET "$T/Properties/temperature")" = 200 ] || fail "GET one"
[ "$(j "d['rows'][0]['value'], d['rows'][0]['time'], d['rows'][0]['quality'], d['rows'][0]['type']")" = \
  "71.5 1000 GOOD NUMBER" ] || fail "read back: $(cat "$dir/body")"

# A device message: written where newer; the same message again changes nothing.
msg='{"values": {"rows": [{"name": "temperature", "value": 72.0, "time": 2000},
      {"name": "rpm", "value": 1480, "type": "INTEGER", "time": 2000},
      {"name": "where", "value": {"latitude": 48.1, "longitude": 11.6}, "type": "LOCATION", "time": 2000}]}}'
[ "$(code POST "$T/Services/UpdatePropertyValues" "$msg")" = 200 ] || fail "update: $(cat "$dir/body")"
[ "$(j "d['written'], d['skipped']")" = "3 0" ] || fail "first delivery: $(cat "$dir/body")"
[ "$(code POST "$T/Services/UpdatePropertyValues" "$msg")" = 200 ] || fail "again"
[ "$(j "d['written'], d['skipped']")" = "0 3" ] || fail "a repeated message wrote: $(cat "$dir/body")"
old='{"values": {"rows": [{"name": "temperature", "value": 10.0, "time": 1500}]}}'
[ "$(code POST "$T/Services/UpdatePropertyValues" "$old")" = 200 ] || fail "late message"
[ "$(code GET "$T/Properties")" = 200 ] || fail "GET all"
[ "$(j "sorted((r['name'], r['value'] if r['type'] != 'LOCATION' else r['value']['latitude']) for r in d['rows'])")" = \
  "[('rpm', 1480), ('state', 'running'), ('temperature', 72.0), ('where', 48.1)]" ] ||
  fail "all properties: $(cat "$dir/body")"

# Bad input: a status and words, never a crash.
[ "$(code GET "$T/Properties/nosuch")" = 404 ] || fail "missing property"
[ "$(code GET "$u/nope")" = 404 ] || fail "unknown path"
[ "$(code DELETE "$T/Properties/rpm")" = 405 ] || fail "DELETE"
[ "$(code PUT "$T/Properties/rpm" 'not json')" = 400 ] || fail "not JSON"
j "d['error']" | grep -q "not a JSON object" || fail "words for bad JSON: $(cat "$dir/body")"
[ "$(code PUT "$T/Properties/rpm" '{"value": "fast"}')" = 400 ] || fail "a string into an INTEGER"
j "d['error']" | grep -qi "type" || fail "words for a wrong type: $(cat "$dir/body")"
[ "$(code POST "$T/Services/UpdatePropertyValues" '{"values": {"rows": [{"value": 1}]}}')" = 400 ] ||
  fail "a row without a name"
[ "$(code POST "$T/Services/UpdatePropertyValues" '{"values": {"rows": []}}')" = 400 ] || fail "no rows"
[ "$(code PUT "$u/Thingworx/Things/a%7Bb/Properties/x" '{"value": 1}')" = 400 ] ||
  fail "a Thing name with a brace"
big=$(head -c 6000 /dev/zero | tr '\0' a)
[ "$(code PUT "$T/Properties/note" "{\"value\": \"$big\"}")" = 413 ] || fail "an oversized body"
[ "$(code GET "$T/Properties/temperature")" = 200 ] || fail "serving after the bad input"
[ "$(code GET "$u/stats")" = 200 ] || fail "/stats"
[ "$(j "d['writes'] >= 4")" = "True" ] || fail "/stats writes: $(cat "$dir/body")"

kill "$fpid"
wait "$fpid" || fail "foundationd exit status $? on SIGTERM (a sanitizer's report?)"
fpid=""
echo "test_foundationd: ok"
