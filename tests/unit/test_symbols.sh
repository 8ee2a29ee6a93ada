#!/usr/bin/env bash
# test_symbols: the installed library exports only grid_* (docs/architecture.md).
# An application that embeds grid and defines its own log_write, conn_close
# or store_get must link: so no other global symbol may be defined in
# libgrid.a. Sanitizer builds add their own __asan_/__odr_asan_ globals,
# which are not ours and are allowed.
#   test_symbols.sh LIBGRID_A
set -euo pipefail
lib=${1:?usage: test_symbols.sh path/to/libgrid.a}
[ -f "$lib" ] || { echo "no such library: $lib" >&2; exit 1; }
defined=$(nm -g --defined-only "$lib" | awk 'NF == 3 { print $3 }' |
  grep -Ev '^(__asan_|__odr_asan|___asan|__tsan_|__ubsan_|__sancov_)' || true)
ours=$(printf '%s\n' "$defined" | grep -c '^grid_' || true)
others=$(printf '%s\n' "$defined" | grep -v '^grid_' | grep -v '^$' || true)
if [ -n "$others" ]; then
  echo "libgrid.a exports symbols without the grid_ prefix:" >&2
  printf '  %s\n' $others >&2
  exit 1
fi
# Every call grid.h and grid_types.h mark GRID_EXPORT is there (a call
# that lost the mark would be made local, and break only applications).
src=$(cd "$(dirname "$0")/../.." && pwd)
exported=$(sed -n 's/^GRID_EXPORT [^(]*[ *]\(grid_[a-z0-9_]*\)(.*/\1/p' \
  "$src/client/include/grid.h" "$src/common/include/grid_types.h")
[ -n "$exported" ] || { echo "no GRID_EXPORT call found in the public headers" >&2; exit 1; }
for sym in $exported; do
  # A here-string, not a pipe: grep -q stops at the first match, and under
  # pipefail the writer's SIGPIPE would fail the check at random.
  grep -qx "$sym" <<<"$defined" || { echo "libgrid.a lacks $sym" >&2; exit 1; }
done
# Internal names are gone from the public symbol table, protobuf-c's too.
if grep -q '^grid__' <<<"$defined"; then
  echo "libgrid.a exports grid__ (internal) symbols" >&2
  exit 1
fi
echo "test_symbols: ok ($ours grid_* symbols, every GRID_EXPORT call among them, nothing else)"
