/*
 * repl_int.h: what the files of repl share. repl.c keeps a partition's
 * writes in counter order and releases replies as they commit (the
 * primary's side; the rules of that order are repl_order.c's, pure);
 * repl_backup.c applies a primary's records and fills on a backup;
 * repl_fill.c streams a partition to its MOVING copies. Only repl*.c
 * include it.
 */
#ifndef GRID_REPL_INT_H
#define GRID_REPL_INT_H

#include <stdint.h>

#include "loop.h"
#include "pmap.h"
#include "repl.h"
#include "repl_order.h"
#include "sink.h"
#include "store.h"

#define REPL_FILL_CHUNK_ENTRIES 512      /* entries in one FILL message */
#define REPL_FILL_CHUNK_BYTES (1u << 20) /* ... or about this many bytes */
#define REPL_FILL_RETRY_MS 500           /* a failed fill starts again after */
#define REPL_FILL_METRICS_LOOKUPS 4096   /* partition sizes read per second to
                                            count what fills have left; past
                                            it the rest is extrapolated */

/* A reply built now, released later (once what it saw is committed). */
typedef struct repl_packed {
  sink_t *sink;
  int handed;                    /* handed over by another loop: counted in
                                    lp->handoffs until released or failed */
  uint64_t id;                   /* the request's: for an error instead */
  size_t len;
  unsigned char buf[];
} repl_packed_t;

typedef struct repl_part repl_part_t;

enum { REPL_WAIT = 0, REPL_ACKED = 1, REPL_FAILED = 2 };

typedef struct repl_backup {
  char node_id[PMAP_ID_MAX];
  int state;
  int owning;                    /* a full_sync write waits for it */
  int moving;                    /* a MOVING copy (being filled), not an
                                    OWNING one */
} repl_backup_t;

typedef struct repl_write {
  repl_order_write_t ord;        /* its place in the partition's FIFO:
                                    counter, OWNING backups not acked yet,
                                    given up (repl_order.h) */
  struct repl_write *lnext, *lprev; /* the loop's list of pending writes */
  struct repl_part *part;
  store_t *store;
  store_cache_t *cache;          /* a reference, released when done */
  uint32_t p;
  int refs;                      /* the FIFO, plus acks in flight */
  int answered;                  /* the sink got its reply */
  int64_t deadline_ms;
  sink_t *sink;
  repl_packed_t *reply;          /* answered once committed */
  size_t nbackups;
  repl_backup_t backups[];
} repl_write_t;

typedef struct repl_wait {
  repl_order_wait_t ord;         /* answered once committed reaches its
                                    release */
  repl_packed_t *reply;
} repl_wait_t;

struct repl_part {
  repl_order_t order;            /* writes in counter order, waits, and
                                    pending (at most repl_pending_max) */
  uint64_t handoff_epoch;        /* handing over in it: report when drained */
  store_part_sync_t *sync;
  store_t *store;
  store_cache_t *cache;          /* not a reference: the part lives in it */
  uint32_t p;
};

/* How a persistent cache's copy is filled: the copy says what its disk
 * holds (a probe), and gets the changes after it where the primary's
 * history still has them, else a whole copy. */
enum { REPL_FILL_ASK = 0, REPL_FILL_PROBING = 1, REPL_FILL_DELTA = 2, REPL_FILL_WHOLE = 3 };

typedef struct repl_fill {
  int orphan;                    /* repl_close came while a chunk was in
                                    flight: its ack frees it */
  struct repl_fill *next;
  char group[PMAP_GROUP_NAME_MAX];/* the placement group: every cache of
                                    it is filled, one after another, by
                                    name */
  char cache[STORE_CACHE_NAME_MAX + 1]; /* the cache being filled ("": none
                                    yet) */
  int cache_done;                /* ... and its last chunk is in */
  uint64_t caches;               /* caches filled in this pass */
  uint32_t p;
  char node_id[PMAP_ID_MAX];
  uint64_t epoch;                /* map epoch it was started in */
  uint64_t cursor;               /* in the cache being filled */
  int started;                   /* the cache's first chunk went */
  int inflight, done, reported, failed;
  int restart;                   /* start over once the chunk in flight is in */
  int mode;                      /* the cache's fill: REPL_FILL_* */
  uint64_t delta_after;          /* REPL_FILL_DELTA: the changes after this
                                    counter are sent next */
  int64_t retry_at_ms;           /* after a failure, not before then */
  uint64_t entries, bytes;
  int64_t started_ms;
} repl_fill_t;

struct repl_loop {
  repl_write_t *writes;          /* every pending write of this loop */
  repl_fill_t *fills;
  int64_t window_ms;             /* fill pacing: this second's bytes */
  uint64_t window_bytes;
  int fills_incomplete;          /* a fill could not be made: look again */
  int64_t fill_metrics_ms;       /* the fills' metrics were last counted */
  int64_t lease_logged_ms;       /* a lapsed lease was last logged then */
  /* expiry of followed caches (repl_expire.c): where it goes on */
  int64_t expire_at_ms;          /* the next round, not before */
  size_t expire_cache;           /* index in the loop's view of caches */
  uint32_t expire_part;
  uint64_t expire_cursor;
};


/* repl.c */
struct repl_loop *repl_loop(loop_t *lp);
/* The loop that owns partition p: every write of p runs there. */
int repl_owner_loop(const loop_t *lp, uint32_t p);
/* Answers a packed reply's sink with an error instead, under its id. */
void repl_fail_packed(loop_t *lp, repl_packed_t *pk, int status, const char *why);

/* The placement group of cache `name` in lp's map, or NULL. */
const char *repl_group_of(const loop_t *lp, const char *name);

/* repl_expire.c: a primary removes the keys of followed caches whose time
 * to live ran out, each as a write of its own (EXPIRE_DUE) sent to its
 * backups, so that every copy's change history says the same. */
void repl_expire_cron(loop_t *lp, int64_t now_ms);

/* repl.c: runs rq (a keyed request of partition p, which this loop owns)
 * here, as repl_execute does for the owner loop. */
void repl_run_here(loop_t *lp, const Grid__Request *rq, uint32_t p, sink_t *sink);

/* repl_fill.c */
repl_fill_t *repl_fill_find(struct repl_loop *rl, const char *group, uint32_t p,
                            const char *node);
/* Counts what this loop's fills have left to send into its metrics. */
void repl_fill_metrics(loop_t *lp);
/* A MOVING copy missed a record: its fill (of the whole group's partition)
 * starts over, and a report that it was filled no longer holds. */
void repl_fill_restart(loop_t *lp, const char *group, uint32_t p, const char *node);
/* Sends the fill's next chunk when pacing allows. */
void repl_fill_step(loop_t *lp, repl_fill_t *f, int64_t now);
/* One fill per MOVING copy of a group's partition led here and owned by
 * this loop; fills no longer wanted go. */
void repl_fills_on_map(loop_t *lp, const pmap_t *m);

#endif
