#!/usr/bin/env bash
# TLS on a single node, with real gridd processes and certificates this
# test makes with the openssl CLI: gridctl and redis-cli over TLS; a plain
# client on a TLS port, a TLS client on a plain port, a CA the node does not
# trust, an expired certificate, a wrong host name, no client certificate
# where one is required, a protocol version the node refuses: each refused
# with words that say why (to the client and in the node's log), while a
# good client keeps being served with nothing lost. Certificates reload on
# SIGHUP without dropping open connections; a file that does not load leaves
# the old ones in force. Settings that cannot work stop gridd at start.
set -euo pipefail
GRIDD=$1
GRIDCTL=$2
dir=$(mktemp -d /tmp/grid-tls-XXXXXX)
pid=""
holder=""
cleanup() {
  if [ -n "$holder" ]; then kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true; fi
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  [ -n "${KEEP_DIR:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/gridd.log" ] && tail -20 "$dir/gridd.log"; exit 1; }

# ---- certificates --------------------------------------------------------
c="$dir/certs"
mkdir -p "$c"
ossl() { openssl "$@" >/dev/null 2>&1 || fail "openssl $*"; }
ca() { # ca NAME: a self-signed CA
  ossl req -x509 -newkey rsa:2048 -nodes -keyout "$c/$1.key" -out "$c/$1.crt" -days 30 \
    -subj "/CN=grid test $1"
}
cert() { # cert NAME CA CN DAYS [SAN]: a key and a certificate CA signed
  ossl req -newkey rsa:2048 -nodes -keyout "$c/$1.key" -out "$c/$1.csr" -subj "/CN=$3"
  : > "$c/$1.ext"
  [ -n "${5:-}" ] && echo "subjectAltName=$5" > "$c/$1.ext"
  ossl x509 -req -in "$c/$1.csr" -CA "$c/$2.crt" -CAkey "$c/$2.key" -CAcreateserial \
    -out "$c/$1.crt" -days "$4" -extfile "$c/$1.ext"
}
ca ca
ca other
cert node ca node1 30 "DNS:localhost,IP:127.0.0.1"
cert node_expired ca node1 -1 "DNS:localhost,IP:127.0.0.1"
cert node_wrongname ca node1 30 "DNS:elsewhere.example"
cert client ca alice 30
cert client_expired ca alice -1
cert client_other other mallory 30
cert client_bob ca bob 30
cp "$c/node.crt" "$c/live.crt"
cp "$c/node.key" "$c/live.key"

# ---- the node ------------------------------------------------------------
start() { # start [settings...]
  rm -f "$dir/port" "$dir/tport" "$dir/trport"
  "$GRIDD" --port 0 --port-file "$dir/port" --set tls_port=0 --set tls_port_file="$dir/tport" \
    --set tls_resp_port=0 --set tls_resp_port_file="$dir/trport" \
    --set tls_cert_file="$c/live.crt" --set tls_key_file="$c/live.key" \
    --set tls_ca_cert_file="$c/ca.crt" "$@" 2>>"$dir/gridd.log" &
  pid=$!
  for _ in $(seq 1 1000); do [ -s "$dir/tport" ] && [ -s "$dir/trport" ] && break; sleep 0.02; done
  [ -s "$dir/tport" ] || fail "gridd did not start"
}
stop() { kill "$pid"; wait "$pid" || fail "gridd exit status $? on SIGTERM"; pid=""; }
tport() { cat "$dir/tport"; }
ctl() { "$GRIDCTL" --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" \
          --cert "$c/client.crt" --key "$c/client.key" "$@"; }
# refused_ctl WORDS LOGWORDS ARGS...: gridctl exits 3 saying WORDS, and the
# node's log says LOGWORDS ("" to skip).
refused_ctl() {
  local words=$1 logwords=$2; shift 2
  set +e; local out; out=$("$GRIDCTL" "$@" 2>&1); local rc=$?; set -e
  [ "$rc" -eq 3 ] || fail "gridctl $* exited $rc, not 3: $out"
  echo "$out" | grep -q -- "$words" || fail "gridctl $*: no \"$words\" in: $out"
  if [ -n "$logwords" ]; then
    for _ in $(seq 1 100); do grep -q -- "$logwords" "$dir/gridd.log" && break; sleep 0.02; done
    grep -q -- "$logwords" "$dir/gridd.log" || fail "no \"$logwords\" in the node's log"
  fi
}
# refused WORDS [flags...]: gridd must not start, and say WORDS.
refused() {
  local words=$1; shift
  set +e
  timeout 20 "$GRIDD" --port 0 "$@" 2>"$dir/refused.log"; local rc=$?
  set -e
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "gridd started (exit $rc) with $*"
  grep -q -- "$words" "$dir/refused.log" || { cat "$dir/refused.log"; fail "no \"$words\""; }
}
rcli_tls() { redis-cli -p "$(cat "$dir/trport")" --tls --cacert "$c/ca.crt" \
               --cert "$c/client.crt" --key "$c/client.key" "$@"; }

start
ctl create-cache t
for i in $(seq 1 100); do ctl put t "k$i" "v$i"; done
[ "$(ctl get t k42)" = "v42" ] || fail "get over TLS"
# By name as well as by address: the certificate names both.
[ "$("$GRIDCTL" --server "grids://localhost:$(tport)" --cacert "$c/ca.crt" \
      --cert "$c/client.crt" --key "$c/client.key" get t k7)" = "v7" ] || fail "get by name"
# The Redis protocol over TLS, with redis-cli's own TLS.
[ "$(rcli_tls set r1 hello)" = "OK" ] || fail "redis-cli --tls SET"
[ "$(rcli_tls get r1)" = "hello" ] || fail "redis-cli --tls GET"

# A plain client on the TLS ports is told so, in its protocol.
refused_ctl "this port speaks TLS" "plain connection on a TLS port" \
  --server "127.0.0.1:$(tport)" get t k1
out=$(redis-cli -p "$(cat "$dir/trport")" get r1 2>&1 || true)
echo "$out" | grep -q "this port speaks TLS" || fail "plain redis-cli on the TLS RESP port: $out"
# A TLS client on the plain port.
refused_ctl "is this the node's TLS port" "" \
  --server "grids://127.0.0.1:$(cat "$dir/port")" --cacert "$c/ca.crt" \
  --cert "$c/client.crt" --key "$c/client.key" get t k1
# A client that does not trust the node's CA.
refused_ctl "certificate verify failed" "" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/other.crt" \
  --cert "$c/client.crt" --key "$c/client.key" get t k1
# No client certificate where tls_auth_clients = yes (the default).
refused_ctl "certificate" "peer did not return a certificate" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" get t k1
# A client certificate signed by another CA, and an expired one.
refused_ctl "TLS" "TLS handshake failed.*certificate" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" \
  --cert "$c/client_other.crt" --key "$c/client_other.key" get t k1
refused_ctl "TLS" "certificate has expired" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" \
  --cert "$c/client_expired.crt" --key "$c/client_expired.key" get t k1
# A protocol version the node does not speak is refused by openssl itself.
if echo | openssl s_client -connect "127.0.0.1:$(tport)" -tls1_1 -CAfile "$c/ca.crt" \
     >"$dir/s_client.log" 2>&1; then
  grep -q "Verify return code: 0" "$dir/s_client.log" && fail "TLS 1.1 accepted"
fi
# Everyone else was served throughout, and nothing was lost.
for i in $(seq 1 100); do [ "$(ctl get t "k$i")" = "v$i" ] || fail "k$i after the refusals"; done

# SIGHUP: a connection open before it keeps working; new ones see the new
# certificate. An expired one: clients refuse the node, and say why.
/usr/bin/python3 - "$(cat "$dir/trport")" "$c" "$dir" <<'EOF' &
import os, ssl, sys, time, redis
port, c, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=c + "/ca.crt",
                ssl_certfile=c + "/client.crt", ssl_keyfile=c + "/client.key")
r.set("held", "before")
open(d + "/held.ready", "w").close()
while not os.path.exists(d + "/held.go"):
    time.sleep(0.02)
ok = r.get("held") == b"before" and r.set("held", "after")
open(d + ("/held.ok" if ok else "/held.bad"), "w").close()
EOF
holder=$!
for _ in $(seq 1 500); do [ -e "$dir/held.ready" ] && break; sleep 0.02; done
[ -e "$dir/held.ready" ] || fail "the held connection did not start"
cp "$c/node_expired.crt" "$c/live.crt"; cp "$c/node_expired.key" "$c/live.key"
kill -HUP "$pid"
for _ in $(seq 1 200); do grep -q "TLS certificate, key and CA reloaded" "$dir/gridd.log" && break; sleep 0.02; done
grep -q "TLS certificate, key and CA reloaded" "$dir/gridd.log" || fail "no reload line"
refused_ctl "certificate has expired" "" --server "grids://127.0.0.1:$(tport)" \
  --cacert "$c/ca.crt" --cert "$c/client.crt" --key "$c/client.key" get t k1
touch "$dir/held.go"
wait "$holder" || true; holder=""
[ -e "$dir/held.ok" ] || fail "a connection open across SIGHUP was dropped"
# A certificate for another name: clients refuse it.
cp "$c/node_wrongname.crt" "$c/live.crt"; cp "$c/node_wrongname.key" "$c/live.key"
kill -HUP "$pid"
sleep 0.3
refused_ctl "certificate verify failed" "" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" \
  --cert "$c/client.crt" --key "$c/client.key" get t k1
# A key that is not the certificate's: not loaded, the old ones stay.
cp "$c/node.crt" "$c/live.crt"; cp "$c/client.key" "$c/live.key"
kill -HUP "$pid"
for _ in $(seq 1 200); do grep -q "TLS files not reloaded" "$dir/gridd.log" && break; sleep 0.02; done
grep -q "TLS files not reloaded.*not the key of tls_cert_file" "$dir/gridd.log" ||
  fail "a bad key was not refused on SIGHUP"
cp "$c/node.key" "$c/live.key"
kill -HUP "$pid"
for _ in $(seq 1 100); do ctl get t k3 >/dev/null 2>&1 && break; sleep 0.05; done
[ "$(ctl get t k3)" = "v3" ] || fail "the good certificate again"
stop

# tls_auth_clients = optional: clients without a certificate are served;
# TLS 1.3 only, and the plain native port off (port = -1).
rm -f "$dir/port"
"$GRIDD" --set port=-1 --set tls_port=0 --set tls_port_file="$dir/tport" \
  --set tls_cert_file="$c/node.crt" --set tls_key_file="$c/node.key" \
  --set tls_ca_cert_file="$c/ca.crt" --set tls_auth_clients=optional \
  --set tls_protocols=TLSv1.3 2>>"$dir/gridd.log" &
pid=$!
rm -f "$dir/tport"
for _ in $(seq 1 1000); do [ -s "$dir/tport" ] && break; sleep 0.02; done
[ -s "$dir/tport" ] || fail "the TLS-only node did not start"
"$GRIDCTL" --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" create-cache o ||
  fail "optional client certificate: no certificate refused"
"$GRIDCTL" --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" put o a 1
[ "$(ctl get o a)" = "1" ] || fail "optional: with a certificate"
if echo | openssl s_client -connect "127.0.0.1:$(tport)" -tls1_2 -CAfile "$c/ca.crt" \
     >"$dir/s_client.log" 2>&1; then
  fail "TLS 1.2 accepted with tls_protocols = TLSv1.3"
fi
grep -qi "protocol version\|no protocols available\|alert" "$dir/s_client.log" ||
  fail "no protocol words from openssl: $(tail -3 "$dir/s_client.log")"
stop

# Users identified by their client certificate (auth = on): the common
# name is the user's name; a certificate naming no such user is refused.
rm -f "$dir/tport" "$dir/trport"
"$GRIDD" --port 0 --port-file "$dir/port" --set tls_port=0 --set tls_port_file="$dir/tport" \
  --set tls_resp_port=0 --set tls_resp_port_file="$dir/trport" \
  --set tls_cert_file="$c/node.crt" --set tls_key_file="$c/node.key" \
  --set tls_ca_cert_file="$c/ca.crt" --set requirepass=s3cret 2>>"$dir/gridd.log" &
pid=$!
for _ in $(seq 1 1000); do [ -s "$dir/tport" ] && [ -s "$dir/trport" ] && break; sleep 0.02; done
[ -s "$dir/trport" ] || fail "the auth node did not start"
GRID_PASSWORD=s3cret ctl create-cache certs
GRID_PASSWORD=s3cret ctl put certs k v
GRID_PASSWORD=s3cret ctl user add alice --cert --role read:certs
[ "$(ctl get certs k)" = "v" ] || fail "alice by her certificate"
refused_ctl "no write role on cache" "" --server "grids://127.0.0.1:$(tport)" \
  --cacert "$c/ca.crt" --cert "$c/client.crt" --key "$c/client.key" put certs k v2
[ "$(rcli_tls ACL WHOAMI)" = "alice" ] || fail "redis-cli --tls as alice: $(rcli_tls ACL WHOAMI)"
refused_ctl "no user logs in with the TLS client certificate of \"bob\"" "login failed" \
  --server "grids://127.0.0.1:$(tport)" --cacert "$c/ca.crt" \
  --cert "$c/client_bob.crt" --key "$c/client_bob.key" get certs k
stop

# Settings that cannot work stop gridd at start, with words.
refused "TLS needs a certificate" --set tls_port=0
refused "tls_cert_file $dir/missing.crt: No such file" --set tls_port=0 \
  --set tls_cert_file="$dir/missing.crt" --set tls_key_file="$c/node.key"
refused "not the key of tls_cert_file" --set tls_port=0 \
  --set tls_cert_file="$c/node.crt" --set tls_key_file="$c/client.key"
refused "tls_auth_clients: expected one of yes|no|optional" --set tls_auth_clients=maybe
refused "unknown protocol \"SSLv3\"" --set tls_port=0 --set tls_cert_file="$c/node.crt" \
  --set tls_key_file="$c/node.key" --set tls_protocols=SSLv3
refused "port = -1 leaves no native listener" --set port=-1
refused "tls_replication = yes needs tls_port" --set tls_replication=yes
refused "certificates of clients are checked against tls_ca_cert_file" --set tls_port=0 \
  --set tls_cert_file="$c/node.crt" --set tls_key_file="$c/node.key"
echo "test_tls: ok"
