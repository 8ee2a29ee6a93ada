# Sourced by the shell tests that start a redis-server and a gridd
# (test_resp.sh, test_redis_node.sh): a free port, and waiting for a server
# to answer PING. START_WAIT_STEPS (x 0.05 s) bounds the wait.
# shellcheck shell=bash

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    echo $((20000 + RANDOM % 40000))
  fi
}

wait_pong() { # PORT PID — 0 once PORT answers PING, 1 if PID died or never answered
  local i
  for ((i = 0; i < ${START_WAIT_STEPS:-200}; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = "PONG" ] && return 0
    sleep 0.05
  done
  return 1
}
