/*
 * glob: Redis's glob-style patterns (PSUBSCRIBE, and KEYS / SCAN MATCH),
 * as pure rules: `*` any run of bytes, `?` any one byte, `[abc]`, `[^abc]`
 * and ranges `[a-z]` (either way round), `\x` the byte x itself. Where
 * Redis's own rules are loose it is followed, as redis-server 7.0.15 shows
 * them: a `[` with no `]` ends at the pattern's end (`[abc` is a class),
 * `[]` matches nothing and `[^]` any one byte, a `-` with nothing after it
 * is itself, a lone `\` at the end is itself. Binary-safe; no recursion
 * (a pattern of many stars costs the pattern times the string, at most).
 */
#ifndef GRID_GLOB_H
#define GRID_GLOB_H

#include <stddef.h>

/* 1 when s matches the whole of pattern, else 0. */
int glob_match(const void *pattern, size_t plen, const void *s, size_t slen);

#endif
