#!/usr/bin/env bash
# Logins and roles on a single node (auth = on, requirepass), with real
# processes: the Redis protocol's AUTH, HELLO AUTH, ACL WHOAMI, NOAUTH,
# WRONGPASS and NOPERM answered as Debian's redis-server answers them (the
# same lines sent to both, the replies compared), a stranger's bounds (a
# small command, handshake_timeout_ms), and gridctl's user verbs with the
# refusals they lead to; every other client served throughout.
set -euo pipefail
GRIDD=$1
GRIDCTL=$2
. "$(dirname "$0")/resp_servers.sh"
dir=$(mktemp -d /tmp/grid-auth-XXXXXX)
pid=""
redis_pid=""
cleanup() {
  local p
  for p in $pid $redis_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/gridd.log" ] && tail -20 "$dir/gridd.log"; exit 1; }

"$GRIDD" --port 0 --port-file "$dir/port" --set resp_port=0 --set resp_port_file="$dir/rport" \
  --set requirepass=s3cret --set handshake_timeout_ms=500 --set auth_failures_max=1000 \
  2>>"$dir/gridd.log" &
pid=$!
for _ in $(seq 1 500); do [ -s "$dir/rport" ] && break; sleep 0.02; done
[ -s "$dir/rport" ] || fail "gridd did not start"
gport=$(cat "$dir/rport")
ctl() { GRID_PASSWORD=s3cret "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" "$@"; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --requirepass s3cret \
  >"$dir/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 200); do
  [ "$(redis-cli -p "$rport" -a s3cret --no-auth-warning PING 2>/dev/null)" = "PONG" ] && break
  sleep 0.05
done
# The same users on both: a reader (every read, no write) and a writer.
redis-cli -p "$rport" -a s3cret --no-auth-warning ACL SETUSER reader on '>r-pw' '~*' '&*' \
  +@all -@write >/dev/null
redis-cli -p "$rport" -a s3cret --no-auth-warning ACL SETUSER writer on '>w-pw' '~*' '&*' \
  +@all >/dev/null
ctl user add reader --password r-pw --role read
ctl user add writer --password w-pw --role write

# ---- the differential: one connection per block, each line a command ----
cat > "$dir/cmds1" <<'EOF'
GET au:k
SET au:k v
AUTH
AUTH wrong
AUTH default wrong
AUTH nobody s3cret
AUTH a b c
HELLO 3
HELLO 2 AUTH reader nope
HELLO 4 AUTH reader r-pw
ACL WHOAMI
AUTH reader r-pw
ACL WHOAMI
ACL WHOAMI extra
ACL NOSUCH
GET au:k
SET au:k v
DEL au:k
INCR au:n
MULTI
GET au:k
SET au:k v
EXEC
RESET
GET au:k
AUTH writer w-pw
ACL WHOAMI
SET au:k v
GET au:k
DEL au:k
AUTH s3cret
ACL WHOAMI
GET au:k
EOF
redis-cli -p "$rport" < "$dir/cmds1" > "$dir/redis.out" 2>&1
redis-cli -p "$gport" < "$dir/cmds1" > "$dir/grid.out" 2>&1
diff "$dir/redis.out" "$dir/grid.out" > "$dir/diff" ||
  { cat "$dir/diff"; fail "AUTH replies differ from Redis's (< redis, > grid)"; }
grep -q "NOPERM" "$dir/grid.out" || fail "no NOPERM at all: $(cat "$dir/grid.out")"
grep -q "WRONGPASS" "$dir/grid.out" || fail "no WRONGPASS"
grep -q "NOAUTH" "$dir/grid.out" || fail "no NOAUTH"

# A stranger's command is small: a long one before AUTH closes the
# connection; after AUTH it is served.
big=$(head -c 20000 /dev/zero | tr '\0' x)
out=$(printf 'SET au:big %s\r\n' "$big" | timeout 10 redis-cli -p "$gport" 2>&1 || true)
echo "$out" | grep -qi "error\|closed" || fail "a long command before AUTH was not refused: $out"
[ "$(redis-cli -p "$gport" -a s3cret --no-auth-warning SET au:big "$big")" = "OK" ] ||
  fail "a long command after AUTH"
# ... and a stranger who says nothing is told so and closed, by
# handshake_timeout_ms (cat returns at the close).
exec 5<>/dev/tcp/127.0.0.1/"$gport"
got=$(timeout 10 cat <&5 || true)
exec 5<&-
echo "$got" | grep -q "no handshake within handshake_timeout_ms" ||
  fail "a silent stranger was not closed by handshake_timeout_ms: $got"

# ---- gridctl's user verbs, and what they lead to -------------------------
ctl create-cache things
ctl user add alice --password a-pw --role read:things --role write:logs
ctl user list > "$dir/users"
grep -Eq '^alice +password +read:things,write:logs$' "$dir/users" || { cat "$dir/users"; fail "user list"; }
grep -Eq '^default +password +admin$' "$dir/users" || fail "user list: default"
set +e
out=$(ctl user add alice --password x 2>&1); [ $? -eq 3 ] || fail "a second alice"
echo "$out" | grep -q 'user "alice" exists' || fail "a second alice: $out"
out=$(ctl user add bob --password x --role root 2>&1); [ $? -eq 3 ] || fail "role root"
echo "$out" | grep -q 'role "root"' || fail "role root: $out"
out=$(ctl user add carol 2>&1); [ $? -eq 3 ] || fail "no password"
echo "$out" | grep -q 'needs a password' || fail "no password: $out"
out=$(ctl user passwd nobody --password x 2>&1); [ $? -eq 3 ] || fail "passwd of nobody"
echo "$out" | grep -q 'no user "nobody"' || fail "passwd of nobody: $out"
set -e
ctl put things k1 v1
actl() { GRID_PASSWORD=$1 "$GRIDCTL" --server "127.0.0.1:$(cat "$dir/port")" --user alice "${@:2}"; }
[ "$(actl a-pw get things k1)" = "v1" ] || fail "alice reads things"
set +e
out=$(actl a-pw put things k2 v2 2>&1); rc=$?
set -e
[ "$rc" -eq 3 ] && echo "$out" | grep -q 'no write role on cache "things"' || fail "alice wrote things: $out"
grep -q 'command refused\|roles do not permit' "$dir/gridd.log" || true
ctl user passwd alice --password new-pw
set +e; actl a-pw get things k1 >/dev/null 2>&1; rc=$?; set -e
[ "$rc" -eq 3 ] || fail "the old password still works"
[ "$(actl new-pw get things k1)" = "v1" ] || fail "the new password"
ctl user roles alice --role write:things
actl new-pw put things k2 v2
ctl user del alice
set +e; out=$(actl new-pw get things k1 2>&1); rc=$?; set -e
[ "$rc" -eq 3 ] && echo "$out" | grep -q "authentication failed" || fail "a deleted user: $out"
grep -q 'login failed" user="alice"' "$dir/gridd.log" || fail "failed logins are not logged"
# Everyone else was served throughout.
[ "$(ctl get things k2)" = "v2" ] || fail "the admin after it all"
[ "$(redis-cli -p "$gport" -a s3cret --no-auth-warning GET au:big | wc -c)" -gt 19999 ] ||
  fail "the long value"
echo "test_auth: ok"
