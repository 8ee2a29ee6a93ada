#!/usr/bin/env bash
# Installs the build into a temporary prefix, takes the C example out of
# README.md, builds it against the installed library through pkg-config and
# runs it: the example in the README is one that works.
set -euo pipefail
BUILD=$1
README=$2
CC=$3
SANITIZERS=${4:-}   # what -fsanitize= the library was built with, or empty
dir=$(mktemp -d /tmp/grid-readme-XXXXXX)
trap 'rm -rf "$dir"' EXIT

cmake --install "$BUILD" --prefix "$dir/prefix" >/dev/null
awk '/^```c$/{on=1; next} /^```$/{if(on) exit} on' "$README" > "$dir/example.c"
[ -s "$dir/example.c" ] || { echo "no \`\`\`c block in $README"; exit 1; }
lines=$(grep -cv '^\s*$' "$dir/example.c")
echo "README example: $lines non-blank lines"

flags=""
[ -n "$SANITIZERS" ] && flags="-fsanitize=$SANITIZERS"
export PKG_CONFIG_PATH="$dir/prefix/lib/pkgconfig:$dir/prefix/lib/x86_64-linux-gnu/pkgconfig"
# shellcheck disable=SC2046
"$CC" -Wall -Wextra -Werror $flags -o "$dir/example" "$dir/example.c" \
  $(pkg-config --cflags --static --libs grid)
out=$("$dir/example")
echo "example printed: $out"
[ "$out" = "temperature = 21.5" ] || { echo "unexpected output"; exit 1; }

# The CMake package works too.
mkdir -p "$dir/cm"
cp "$dir/example.c" "$dir/cm/example.c"
cat > "$dir/cm/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(example C)
find_package(grid REQUIRED)
add_executable(example example.c)
target_link_libraries(example PRIVATE grid::grid)
target_compile_options(example PRIVATE $flags)
target_link_options(example PRIVATE $flags)
CM
cmake -S "$dir/cm" -B "$dir/cm/build" -DCMAKE_PREFIX_PATH="$dir/prefix" >/dev/null
cmake --build "$dir/cm/build" >/dev/null
[ "$("$dir/cm/build/example")" = "temperature = 21.5" ] || { echo "cmake-built example failed"; exit 1; }
echo "test_readme_example: passed"
