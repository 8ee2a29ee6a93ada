/*
 * metrics: what a loop counts of the requests it serves, for /metrics
 * (http.c): requests and errors by op and by error code, and a latency
 * histogram per op (Prometheus buckets). Each loop has its own block and
 * is its only writer: a count goes up with a plain load and store (no
 * locked instruction on the hot path), relaxed atomics so that the HTTP
 * thread may read it at any time.
 */
#ifndef GRID_METRICS_H
#define GRID_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "op.h"

#define METRICS_BUCKETS 16  /* upper bounds, the last +Inf */
#define METRICS_CODES 48    /* error codes -1..-47; 0 is success */

/* The buckets' upper bounds, in nanoseconds (the last: UINT64_MAX). */
extern const uint64_t metrics_bucket_ns[METRICS_BUCKETS];

typedef struct metrics {
  _Atomic uint64_t ops[OP_NUMBER_MAX];
  _Atomic uint64_t errors[OP_NUMBER_MAX][METRICS_CODES];
  _Atomic uint64_t bucket[OP_NUMBER_MAX][METRICS_BUCKETS]; /* not cumulative */
  _Atomic uint64_t sum_ns[OP_NUMBER_MAX];
  /* Replication and rebalancing on this loop (repl.c, repl_fill.c): */
  _Atomic uint64_t repl_pending;      /* writes waiting for their backups
                                         (a gauge, counted each cron tick) */
  _Atomic uint64_t fill_entries;      /* entries sent to copies being filled */
  _Atomic uint64_t fill_bytes;        /* ... their bytes on the wire */
  _Atomic uint64_t fills;             /* copies this loop fills now (gauge) */
  _Atomic uint64_t fill_entries_left; /* what those fills have still to send,
                                         from the partitions' sizes (gauge,
                                         refreshed once a second) */
  _Atomic uint64_t fill_bytes_left;   /* ... in entry bytes as the store
                                         counts them */
} metrics_t;

static inline void metrics_bump(_Atomic uint64_t *x, uint64_t v) {
  atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + v,
                        memory_order_relaxed);
}

static inline void metrics_set(_Atomic uint64_t *x, uint64_t v) {
  atomic_store_explicit(x, v, memory_order_relaxed);
}

/* One request of op answered with status after ns nanoseconds; by the
 * block's own loop only. */
static inline void metrics_record(metrics_t *m, unsigned op, int status, uint64_t ns) {
  if (op >= OP_NUMBER_MAX) op = 0;
  metrics_bump(&m->ops[op], 1);
  if (status < 0 && -status < METRICS_CODES) metrics_bump(&m->errors[op][-status], 1);
  unsigned b = 0;
  while (b < METRICS_BUCKETS - 1 && ns > metrics_bucket_ns[b]) b++;
  metrics_bump(&m->bucket[op][b], 1);
  metrics_bump(&m->sum_ns[op], ns);
}

#endif
