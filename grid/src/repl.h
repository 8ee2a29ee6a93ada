/*
 * repl: replication of a partition from its primary to its backups
 * (shared/DESIGN.md section 5), on the primary's side and on the backups'.
 *
 * Each partition is owned by one event loop of its primary, loop
 * (partition mod loops): every write of the partition runs there, in the
 * order of the partition's update counter, and its record goes to every
 * backup over that loop's link to the backup, so a backup receives the
 * partition's records in order. A full_sync write is answered once every
 * OWNING backup has acknowledged it; replies of the partition are released
 * in counter order, and the counter up to which all is acknowledged is the
 * partition's `committed`. A read answers at once when what it saw is
 * committed, else it waits behind the writes it depends on: no reader sees
 * a value that a failover could take back.
 *
 * MOVING copies get the live records too, plus a snapshot streamed over
 * the same link (so records and snapshot stay in order), paced to
 * rebalance_bytes_per_sec; once the last chunk is acknowledged the primary
 * reports the copy filled, and the coordinator makes it OWNING.
 */
#ifndef GRID_REPL_H
#define GRID_REPL_H

#include <stdint.h>

#include "grid.pb-c.h"
#include "pmap.h"
#include "store.h"

typedef struct loop loop_t;

typedef struct sink sink_t;

/* Runs a keyed request (GET ... ADD) or a SCAN of partition p, which this
 * node leads in lp's map, and delivers its reply through sink once it may
 * be seen. ordered: earlier requests of its connection are in flight, so
 * a read takes the owner loop's line (behind them) instead of answering
 * from this loop. */
void repl_execute(loop_t *lp, const Grid__Request *rq, uint32_t p,
                  sink_t *sink, int ordered);

/* A backup's side: REPL and FILL from a primary (from_node: its id). */
void repl_on_peer_request(loop_t *lp, const char *from_node,
                          const Grid__Request *rq, Grid__Reply *rp);

/* The loop has a new map: pending writes are looked at again (a backup
 * that left no longer holds them up), fills start or stop. */
void repl_on_map(loop_t *lp);
/* Deadlines and fill pacing; from the loop's cron. */
void repl_cron(loop_t *lp, int64_t now_ms);
/* The loop stops: everything pending fails. */
void repl_close(loop_t *lp);
/* For store_set_repl_free. */
void repl_part_free(void *repl);

#endif
