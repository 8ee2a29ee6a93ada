#!/usr/bin/env bash
# The README's "Thing state" example is foundation-shim/examples/
# thing_example.c, and that program (built with the project) runs and
# prints the three properties it wrote.
set -euo pipefail
README=$1
EXAMPLE_SRC=$2
EXAMPLE_BIN=$3
dir=$(mktemp -d /tmp/grid-thing-readme-XXXXXX)
trap 'rm -rf "$dir"' EXIT
awk '/^## Thing state/{sec=1} sec && /^```c$/{on=1; next} on && /^```$/{exit} on' "$README" \
  > "$dir/readme.c"
[ -s "$dir/readme.c" ] || { echo "no \`\`\`c block in the README's Thing state section"; exit 1; }
diff -u "$EXAMPLE_SRC" "$dir/readme.c" || { echo "README's example differs from $EXAMPLE_SRC"; exit 1; }
out=$("$EXAMPLE_BIN" 2>/dev/null)
echo "$out"
[ "$(echo "$out" | wc -l)" -eq 3 ] || { echo "expected three properties"; exit 1; }
echo "$out" | grep -q '^rpm type=2 ' || { echo "rpm missing or not an integer"; exit 1; }
echo "$out" | grep -q '^state type=4 ' || { echo "state missing or not a string"; exit 1; }
echo "$out" | grep -q '^temperature type=1 .* quality=1$' || { echo "temperature wrong"; exit 1; }
echo "test_thing_readme: passed"
