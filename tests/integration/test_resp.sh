#!/usr/bin/env bash
# gridd's RESP endpoint against a real Redis 7: the same commands, through the
# same redis-cli, must get the same replies, byte for byte as redis-cli prints
# them. Then what cannot be diffed line by line (INFO, COMMAND, HELLO, DBSIZE,
# PTTL, raw protocol on a socket) is checked on its own, on both servers.
#
#   test_resp.sh GRIDD DIR           DIR holds resp_commands.txt
#   test_resp.sh --redis-only DIR    no gridd: runs everything against Redis
#                                    alone and prints Redis's replies, to
#                                    check a new line of resp_commands.txt
#
# Needs redis-server and redis-cli 7.x (scripts/deps installs them); installs
# nothing. Starts one redis-server and one gridd on loopback, stops exactly
# those two by pid.
# The '$' of RESP bulk lengths in single quotes is meant literally:
# shellcheck disable=SC2016
set -euo pipefail

usage() { echo "usage: $0 GRIDD|--redis-only DIR_WITH_resp_commands.txt" >&2; exit 2; }
[ $# -eq 2 ] || usage
GRIDD=$1
COMMANDS=$2/resp_commands.txt
REDIS_ONLY=0
[ "$GRIDD" = "--redis-only" ] && REDIS_ONLY=1
[ -r "$COMMANDS" ] || { echo "test_resp: cannot read $COMMANDS"; exit 2; }
[ "$REDIS_ONLY" -eq 1 ] || [ -x "$GRIDD" ] || { echo "test_resp: $GRIDD is not an executable"; exit 2; }

for tool in redis-server redis-cli timeout; do
  command -v "$tool" >/dev/null || {
    echo "test_resp: $tool not found; scripts/deps installs it (Debian packages redis-server, redis-tools)"
    exit 1
  }
done
# The expected replies are Redis 7's (e.g. "'client|setname'" in argument
# errors); an older Redis would make grid look wrong.
redis_major=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
[ "${redis_major:-0}" -ge 7 ] || { echo "test_resp: need Redis >= 7, have: $(redis-server --version)"; exit 1; }

CLI_TIMEOUT_S=10          # any one redis-cli call
STREAM_TIMEOUT_S=60       # the whole command file on one connection
START_WAIT_STEPS=200      # 200 x 0.05 s to see a server answer PING
RAW_READ_TIMEOUT_S=5      # one reply line on a raw socket
RAW_LINES_MAX=50          # reply lines read from one raw socket

dir=$(mktemp -d /tmp/grid-resp-XXXXXX)
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
trap 'exit 130' INT TERM

cli() { # PORT ARGS... — one redis-cli call, typed (non-raw) output
  local port=$1; shift
  timeout "$CLI_TIMEOUT_S" redis-cli -h 127.0.0.1 -p "$port" --no-raw "$@"
}

# free_port, wait_pong
# shellcheck source=resp_servers.sh
. "$(dirname "$0")/resp_servers.sh"

# --- Redis, on a free port; another process may take the port between the
# probe and the bind, so a few attempts.
redis_port=""
for _ in 1 2 3 4 5; do
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$dir" >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  if wait_pong "$port" "$redis_pid"; then redis_port=$port; break; fi
  kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
done
[ -n "$redis_port" ] || { echo "test_resp: redis-server did not start"; cat "$dir/redis.log"; exit 1; }
[ "$(cli "$redis_port" FLUSHALL)" = "OK" ] || { echo "test_resp: FLUSHALL on Redis failed"; exit 1; }

# --- gridd: the native protocol and RESP, both on ports it picks.
grid_port=""
if [ "$REDIS_ONLY" -eq 0 ]; then
  "$GRIDD" --port 0 --port-file "$dir/native.port" \
    --set resp_port=0 --set resp_port_file="$dir/resp.port" >"$dir/gridd.log" 2>&1 &
  gridd_pid=$!
  for ((i = 0; i < START_WAIT_STEPS; i++)); do
    grep -Eqx '[0-9]+' "$dir/resp.port" 2>/dev/null && break
    kill -0 "$gridd_pid" 2>/dev/null || break
    sleep 0.05
  done
  grid_port=$(cat "$dir/resp.port" 2>/dev/null || true)
  if ! [[ $grid_port =~ ^[0-9]+$ ]] || ! wait_pong "$grid_port" "$gridd_pid"; then
    echo "test_resp: gridd did not serve RESP (resp_port_file: '${grid_port}')"
    cat "$dir/gridd.log"
    exit 1
  fi
fi

# --- 1. A command file, one connection per server, replies diffed; once
# in RESP2 (resp_commands.txt), once in RESP3 (resp3_commands.txt, through
# redis-cli -3: it shows maps, sets and nulls as such).
diff_commands() { # FILE REDIS_CLI_FLAGS TAG
pfile=$1
pflags=$2
pdir="$dir/$3"
mkdir -p "$pdir"
# Comments and blank lines go; what is left must be sent as it is, so the
# lines redis-cli would act on itself are refused.
grep -Ev '^[[:space:]]*(#|$)' "$pfile" | sed 's/\r$//' > "$pdir/cmds"
n_cmds=$(wc -l < "$pdir/cmds")
bad=$(awk '/^[[:space:]]*(#|$)/ { next }
  tolower($1) ~ /^(quit|exit|help|connect|clear|:.*)$/ || $1 ~ /^[0-9]+$/ { print FILENAME ":" NR ": " $0 }' "$pfile")
[ -z "$bad" ] || { echo "test_resp: redis-cli would not send these lines as they are:"; echo "$bad"; exit 2; }

# Each command is preceded by ECHO "@@ i": its reply line marks where the
# replies of command i begin, so a difference is shown next to its command.
# Not inside MULTI ... EXEC / DISCARD / RESET, where the ECHO would be queued
# too: a transaction's lines are one block, the MULTI line's (the others'
# blocks are left empty, listed in "inside").
awk -v inside="$pdir/inside" '
  { up = toupper($1) }
  !tx { printf "ECHO \"@@ %d\"\n", NR }
  tx { print NR > inside }
  { print }
  !tx && up == "MULTI" && NF == 1 { tx = 1; next }
  tx && (up == "EXEC" || up == "DISCARD" || up == "RESET") && NF == 1 { tx = 0 }' \
  "$pdir/cmds" > "$pdir/stream"
touch "$pdir/inside"

run_stream() { # PORT NAME — redis-cli reads the lines of the stream from stdin
  local rc=0
  timeout "$STREAM_TIMEOUT_S" redis-cli $pflags -h 127.0.0.1 -p "$1" --no-raw \
    < "$pdir/stream" > "$pdir/$2.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || echo "(redis-cli exit status $rc)" >> "$pdir/$2.out"
  # Block i holds the reply lines of command i; block 0 whatever came first.
  mkdir -p "$pdir/$2"
  awk -v out="$pdir/$2" '
    BEGIN { f = out "/0"; printf "" > f }
    /^"@@ [0-9]+"$/ { close(f); n = $2; sub(/"$/, "", n); f = out "/" n; printf "" > f; next }
    { print > f }' "$pdir/$2.out"
  local i
  while read -r i; do : > "$pdir/$2/$i"; done < "$pdir/inside"
}

run_stream "$redis_port" redis
for ((i = 1; i <= n_cmds; i++)); do
  [ -f "$pdir/redis/$i" ] || { echo "test_resp: Redis gave no reply to line $i of the commands:"; cat "$pdir/redis.out"; exit 1; }
done
# redis-cli answers a line it cannot split (an open quote) itself.
if grep -qx 'Invalid argument(s)' "$pdir/redis.out"; then
  echo "test_resp: redis-cli could not split a line of $pfile (unbalanced quotes?)"; exit 2
fi
if [ -s "$pdir/redis/0" ]; then echo "test_resp: redis-cli printed before the first command:"; cat "$pdir/redis/0"; exit 1; fi

if [ "$REDIS_ONLY" -eq 1 ]; then
  for ((i = 1; i <= n_cmds; i++)); do
    echo "> $(sed -n "${i}p" "$pdir/cmds")"
    sed 's/^/  /' "$pdir/redis/$i"
  done
  passed=$n_cmds
else
  run_stream "$grid_port" grid
  differ=0
  missing=0
  for ((i = 1; i <= n_cmds; i++)); do
    [ -f "$pdir/grid/$i" ] || missing=$((missing + 1))
  done
  if [ "$missing" -gt 0 ]; then
    # Without the markers (ECHO broken, or gridd gone) replies cannot be
    # paired with commands: the whole outputs then, markers included.
    echo "test_resp: $missing of the ECHO \"@@ i\" markers missing from grid's replies; whole outputs:"
    diff -u --label redis --label grid "$pdir/redis.out" "$pdir/grid.out" | head -n 300 || true
  fi
  for ((i = 0; i <= n_cmds; i++)); do
    if [ ! -f "$pdir/grid/$i" ]; then differ=$((differ + 1)); continue; fi
    if [ "$i" -eq 0 ] && [ "$missing" -gt 0 ]; then failed=$((failed + 1)); continue; fi
    if ! cmp -s "$pdir/redis/$i" "$pdir/grid/$i"; then
      # Block 0 is no command of the file but fails the test all the same.
      if [ "$i" -eq 0 ]; then failed=$((failed + 1)); else differ=$((differ + 1)); fi
      if [ "$i" -eq 0 ]; then what="(before the first command)"; else what=$(sed -n "${i}p" "$pdir/cmds"); fi
      diff -u --label "redis: $what" --label "grid:  $what" "$pdir/redis/$i" "$pdir/grid/$i" || true
    fi
  done
  if [ "$differ" -eq 0 ]; then
    echo "test_resp: $n_cmds commands, replies identical to Redis"
  else
    echo "test_resp: $differ of $n_cmds commands got replies that differ from Redis's"
  fi
  failed=$((failed + differ))
  passed=$((passed + n_cmds - differ))
fi
}
passed=0
failed=0
diff_commands "$COMMANDS" "" resp2
RESP3_COMMANDS=$(dirname "$COMMANDS")/resp3_commands.txt
[ -r "$RESP3_COMMANDS" ] || { echo "test_resp: cannot read $RESP3_COMMANDS"; exit 2; }
diff_commands "$RESP3_COMMANDS" "-3" resp3

# --- 2. Checks that cannot be a plain diff; each runs on Redis too, which
# proves the check itself right.
why=""
check() { # NAME FUNCTION — runs FUNCTION PORT on each server
  local name=$1 fn=$2 who port
  for who in redis grid; do
    if [ "$who" = redis ]; then port=$redis_port; else port=$grid_port; fi
    [ -n "$port" ] || continue
    why=""
    if "$fn" "$port" && [ -z "$why" ]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
      echo "FAIL [$who] $name: ${why:-check returned false}"
    fi
  done
}

check_ping_cli() {
  local out; out=$(cli "$1" PING 2>&1) || true
  [ "$out" = "PONG" ] || why="redis-cli PING printed '$out'"
}

check_info() {
  local out section
  # redis-cli prints INFO's text as it is, CRLF line ends included.
  out=$(cli "$1" INFO 2>&1 | tr -d '\r') || { why="redis-cli failed: $out"; return; }
  for section in Server Clients Memory Persistence Stats Replication CPU Keyspace; do
    grep -qx "# $section" <<<"$out" || { why="no '# $section' line in INFO"; return; }
  done
  # The fields client libraries and monitoring read.
  local field
  for field in redis_version arch_bits uptime_in_days connected_clients used_memory loading \
               total_commands_processed role used_cpu_sys used_cpu_user; do
    grep -q "^$field:" <<<"$out" || { why="no '$field:' in INFO"; return; }
  done
  # Sections asked for by name (any case), and nothing for an unknown one.
  out=$(cli "$1" INFO server CLIENTS 2>&1 | tr -d '\r')
  grep -qx "# Server" <<<"$out" && grep -qx "# Clients" <<<"$out" ||
    { why="INFO server CLIENTS lacks a section it asked for"; return; }
  ! grep -qx "# Memory" <<<"$out" || { why="INFO server CLIENTS has # Memory"; return; }
  out=$(cli "$1" INFO keyspace 2>&1 | tr -d '\r')
  grep -qx "# Keyspace" <<<"$out" && ! grep -qx "# Server" <<<"$out" ||
    { why="INFO keyspace is not the keyspace section alone"; return; }
  out=$(cli "$1" INFO nosuchsection 2>&1)
  [ -z "$out" ] || { why="INFO nosuchsection printed '$out'"; return; }
  # INFO is one bulk string, not an array or a status line.
  raw "$1" first '*1\r\n$4\r\nINFO\r\n' > "$dir/info.raw"
  head -n1 "$dir/info.raw" | grep -Eqx '\$[1-9][0-9]*' || why="INFO reply starts with '$(head -n1 "$dir/info.raw")', not a bulk length"
}

check_time() {
  local out sec usec now
  out=$(cli "$1" TIME 2>&1) || { why="redis-cli TIME failed: $out"; return; }
  # redis-cli prints 1) "s" 2) "us" (or the bare values, unformatted).
  out=$(sed -E 's/^[0-9]+\) //; s/"//g' <<<"$out")
  sec=$(sed -n 1p <<<"$out")
  usec=$(sed -n 2p <<<"$out")
  [[ "$sec" =~ ^[0-9]+$ && "$usec" =~ ^[0-9]+$ ]] || { why="TIME printed '$out'"; return; }
  [ "$usec" -lt 1000000 ] || { why="TIME's microseconds $usec"; return; }
  now=$(date +%s)
  [ $((sec - now)) -le 5 ] && [ $((now - sec)) -le 5 ] || why="TIME says $sec, the clock $now"
}

check_command() {
  local out rc=0
  out=$(cli "$1" COMMAND 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || { why="redis-cli COMMAND exit status $rc: $(head -n3 <<<"$out")"; return; }
  [ -n "$out" ] || { why="COMMAND printed nothing"; return; }
  case $out in
    "(error)"* | Error* | *"Could not connect"*) why="COMMAND: $(head -n1 <<<"$out")" ;;
  esac
}

check_hello2() {
  local out
  out=$(cli "$1" HELLO 2 2>&1) || { why="redis-cli failed: $out"; return; }
  # The map comes flat in RESP2: ..., "proto", 2, ...
  awk 'prev ~ /^ *[0-9]+\) "proto"$/ && $0 ~ /^ *[0-9]+\) \(integer\) 2$/ { ok = 1 } { prev = $0 } END { exit !ok }' <<<"$out" ||
    why="no \"proto\" followed by (integer) 2 in: $(tr '\n' '|' <<<"$out")"
}

check_dbsize() {
  local d1 d2 d3
  d1=$(cli "$1" DBSIZE)
  [[ $d1 =~ ^\(integer\)\ ([0-9]+)$ ]] || { why="DBSIZE printed '$d1'"; return; }
  d1=${BASH_REMATCH[1]}
  cli "$1" SET rt:dbsize:fresh v >/dev/null
  d2=$(cli "$1" DBSIZE)
  cli "$1" DEL rt:dbsize:fresh >/dev/null
  d3=$(cli "$1" DBSIZE)
  [ "$d2" = "(integer) $((d1 + 1))" ] && [ "$d3" = "(integer) $d1" ] ||
    why="DBSIZE $d1, after a new key '$d2', after deleting it '$d3'"
}

check_pttl() {
  local out ms
  cli "$1" SET rt:pttl v PX 100000 >/dev/null
  out=$(cli "$1" PTTL rt:pttl)
  [[ $out =~ ^\(integer\)\ ([0-9]+)$ ]] || { why="PTTL printed '$out'"; return; }
  ms=${BASH_REMATCH[1]}
  [ "$ms" -ge 99000 ] && [ "$ms" -le 100000 ] || why="PTTL $ms after PX 100000"
  out=$(cli "$1" PEXPIRE rt:pttl 50000)
  [ "$out" = "(integer) 1" ] || { why="PEXPIRE printed '$out'"; return; }
  out=$(cli "$1" PTTL rt:pttl)
  [[ $out =~ ^\(integer\)\ ([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 49000 ] &&
    [ "${BASH_REMATCH[1]}" -le 50000 ] || why="PTTL '$out' after PEXPIRE 50000"
}

check_big_value() {
  local bytes=1000000 out
  out=$(head -c "$bytes" /dev/zero | tr '\0' v | cli "$1" -x SET rt:big)
  [ "$out" = "OK" ] || { why="SET of $bytes bytes: '$out'"; return; }
  out=$(cli "$1" STRLEN rt:big)
  [ "$out" = "(integer) $bytes" ] || { why="STRLEN after a $bytes-byte SET: '$out'"; return; }
  out=$(timeout "$CLI_TIMEOUT_S" redis-cli -h 127.0.0.1 -p "$1" --raw GET rt:big | tr -d '\n' | wc -c)
  [ "$out" -eq "$bytes" ] || why="GET gave back $out bytes of $bytes"
}

# raw PORT open|close|first CHUNK... — sends the chunks (printf %b escapes) on one
# fresh connection, a moment apart, and prints the reply lines, CRLF removed
# (a line ending in a bare LF is marked). "open": a PING follows the last
# chunk and reading stops at its +PONG, so the connection must have stayed
# open with no reply too many. "close": reads until the server closes.
# "first": only the first line.
raw() {
  local port=$1 mode=$2 fd line rc n=0 chunk first=1
  shift 2
  { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || { echo "<cannot connect>"; return 0; }
  for chunk in "$@"; do
    [ "$first" -eq 1 ] || sleep 0.2
    first=0
    { printf '%b' "$chunk" >&"$fd"; } 2>/dev/null || true
  done
  if [ "$mode" = open ]; then { printf '*1\r\n$4\r\nPING\r\n' >&"$fd"; } 2>/dev/null || true; fi
  while ((n++ < RAW_LINES_MAX)); do
    rc=0
    IFS= read -r -t "$RAW_READ_TIMEOUT_S" -u "$fd" line || rc=$?
    if [ "$rc" -eq 0 ]; then
      if [[ $line == *$'\r' ]]; then line=${line%$'\r'}; else line="$line<LF without CR>"; fi
      printf '%s\n' "$line"
      [ "$mode" = open ] && [ "$line" = "+PONG" ] && break
      [ "$mode" = first ] && break
    elif [ "$rc" -le 128 ]; then
      [ -z "$line" ] || printf '%s<no line end>\n' "$line"
      echo "<closed>"
      break
    else
      echo "<no reply in ${RAW_READ_TIMEOUT_S}s>"
      break
    fi
  done
  exec {fd}>&-
}

# raw_case NAME EXPECTED MODE CHUNK... — EXPECTED lines separated by '|'.
raw_case() {
  local name=$1 expected=$2 mode=$3
  shift 3
  RAW_EXPECTED=$expected
  RAW_MODE=$mode
  RAW_CHUNKS=("$@")
  check "$name" check_raw_case
}
check_raw_case() {
  local got
  got=$(raw "$1" "$RAW_MODE" "${RAW_CHUNKS[@]}" | paste -sd'|' -)
  [ "$got" = "$RAW_EXPECTED" ] || why="expected '$RAW_EXPECTED', got '$got'"
}

check "redis-cli PING" check_ping_cli
check "INFO sections" check_info
check "TIME" check_time
check "COMMAND" check_command
check "HELLO 2" check_hello2
check "DBSIZE counts a new key" check_dbsize
check "PTTL after PX / PEXPIRE" check_pttl
check "1 MB value" check_big_value

# Pipelining: several commands in one write, inline and multibulk.
raw_case "pipelined inline commands" '+OK|$1|1|:2|+PONG' open \
  'SET rt:pipe1 1\r\nGET rt:pipe1\r\nINCR rt:pipe1\r\n'
raw_case "pipelined multibulk commands" '+OK|$1|1|:2|+PONG' open \
  '*3\r\n$3\r\nSET\r\n$8\r\nrt:pipe2\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$8\r\nrt:pipe2\r\n*2\r\n$4\r\nINCR\r\n$8\r\nrt:pipe2\r\n'
# A command cut in two writes, inside the word and inside a length line.
raw_case "command split across writes" '$1|2|+PONG' open \
  '*2\r\n$3\r\nGE' 'T\r\n$' '8\r\nrt:pipe2\r\n'
# Redis skips an empty or negative multibulk count without a reply, and
# blank inline lines too.
raw_case "*0, *-5 and a blank line are skipped" '+PONG' open '*0\r\n*-5\r\n\r\n'
raw_case "unknown command on the wire" "-ERR unknown command 'FOO', with args beginning with: 'a' |+PONG" open \
  '*2\r\n$3\r\nFOO\r\n$1\r\na\r\n'
raw_case "wrong arity on the wire" "-ERR wrong number of arguments for 'get' command|+PONG" open '*1\r\n$3\r\nGET\r\n'
raw_case "QUIT" '+OK|<closed>' close '*1\r\n$4\r\nQUIT\r\n'
# Protocol errors: one -ERR, then the server closes the connection.
raw_case "bulk length too big" '-ERR Protocol error: invalid bulk length|<closed>' close '*1\r\n$999999999999\r\n'
raw_case "negative bulk length" '-ERR Protocol error: invalid bulk length|<closed>' close '*1\r\n$-1\r\n'
raw_case "multibulk count not a number" '-ERR Protocol error: invalid multibulk length|<closed>' close '*abc\r\n'
raw_case "multibulk count too big" '-ERR Protocol error: invalid multibulk length|<closed>' close '*3000000000\r\n'
raw_case "bulk without \$" "-ERR Protocol error: expected '\$', got '+'|<closed>" close '*1\r\n+foo\r\n'
raw_case "inline unbalanced quotes" '-ERR Protocol error: unbalanced quotes in request|<closed>' close 'SET "a\r\n'
# The server is still there for everyone else.
check "PING after the protocol errors" check_ping_cli

# gridd must have lived through all of it and stop cleanly (under the
# sanitizers a leak or an error shows here as a non-zero status).
if [ -n "$gridd_pid" ]; then
  if kill "$gridd_pid" 2>/dev/null; then
    rc=0; wait "$gridd_pid" || rc=$?
    if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL [grid] exit status $rc on SIGTERM"; fi
  else
    rc=0; wait "$gridd_pid" || rc=$?
    failed=$((failed + 1)); echo "FAIL [grid] gridd exited during the test, status $rc"
  fi
  gridd_pid=""
  [ "$rc" -eq 0 ] || { echo "--- gridd log (last 40 lines)"; tail -n 40 "$dir/gridd.log"; }
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
