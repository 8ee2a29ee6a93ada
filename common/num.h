/*
 * num: numbers written as text, as Redis reads them (a counter's value, an
 * integer argument, a set member that is an integer).
 */
#ifndef GRID_NUM_H
#define GRID_NUM_H

#include <stddef.h>
#include <stdint.h>

/* A whole signed 64-bit decimal, as Redis's string2ll: an optional '-',
 * digits, no '+', no spaces, no leading zero, no "-0". 0, or -1 when the
 * bytes are not one. */
int num_parse_i64(const void *p, size_t len, int64_t *out);

#endif
