/*
 * stream: change-stream subscriptions served on a loop (issue 9). A
 * subscription names a cache, a filter (a key prefix, or affinity keys),
 * and for each partition where it is (an update counter). It reads the
 * partition's history (store.h: store_changes_read) past its position, up
 * to what may be announced, and hands each change that passes the filter
 * to its front end (native.c frames it): nothing is queued here, so a
 * subscriber's memory on the node is its connection's output
 * (output_bytes_max). A subscriber that does not read falls behind the
 * history, and hears of it (a GAP) when it reads again.
 *
 * Changes are announced to the loop by the store's watchers: one per
 * cache and loop, shared by the loop's subscriptions of the cache; the
 * partitions marked are read on the loop, in a task posted once per
 * burst. In a cluster a subscription holds only partitions this node
 * leads: where that ends (a new map) the front end hears END, and the
 * client subscribes again where the map says.
 */
#ifndef GRID_STREAM_H
#define GRID_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "changes.h"
#include "loop.h"
#include "store.h"

typedef struct stream_sub stream_sub_t;

/* What a subscription hands its front end. */
enum {
  STREAM_EV_CHANGE = 0,    /* ch: a change that passed the filter */
  STREAM_EV_GAP = 1,       /* changes before pos are gone (ch NULL) */
  STREAM_EV_END = 2,       /* the partition is not led here any more */
  STREAM_EV_SNAPSHOT = 3,  /* ch: an entry of the partition's snapshot */
  STREAM_EV_SNAPSHOT_END = 4, /* the snapshot is whole; changes after pos
                                 follow */
  STREAM_EV_DROPPED = 5,   /* the cache was dropped: the subscription ends */
};

typedef struct stream_out {
  /* One event of partition p; pos is the subscription's position after
   * it. Returns nonzero when the front end takes no more for now (its
   * output is full): stream_resume goes on later. */
  int (*event)(void *ctx, stream_sub_t *s, uint32_t p, int what, const change_t *ch,
               uint64_t pos);
  /* After a burst of events: write them out. */
  void (*flush)(void *ctx);
} stream_out_t;

typedef struct stream_filter {
  const void *prefix;      /* NULL: any key */
  size_t prefix_len;
  const void *const *keys; /* affinity keys (their {tag}s are compared) */
  const size_t *key_lens;
  size_t nkeys;
  int keys_only;           /* no values in events */
} stream_filter_t;

/* A new subscription of cache on lp, for the front end out/ctx, with id
 * (the front end's). 0, GRID_ENOMEM, GRID_ELIMIT (subscriptions_max). It
 * holds no partition until stream_take. */
int stream_open(loop_t *lp, store_cache_t *cache, uint64_t id, const stream_filter_t *f,
                const stream_out_t *out, void *ctx, stream_sub_t **sub);
/* Takes partition p from after (now: from what is announced now; with
 * snapshot: the partition's entries first, then the changes after them);
 * the position taken goes in *pos. GRID_ENOTREADY when this node does not
 * lead p (cluster), GRID_EINVAL when p is out of range. */
int stream_take(stream_sub_t *s, uint32_t p, uint64_t after, int now, int snapshot,
                uint64_t *pos);
/* Drops partition p (or every partition: p = UINT32_MAX). */
void stream_drop(stream_sub_t *s, uint32_t p);
/* Sends what is there already, for the partitions just taken. */
void stream_start(stream_sub_t *s);
void stream_close(stream_sub_t *s);
uint64_t stream_id(const stream_sub_t *s);
/* Whether its events leave values out. */
int stream_keys_only(const stream_sub_t *s);
/* The front end has room again: subscriptions that stopped go on. */
void stream_resume(stream_sub_t *s);
/* A new map on lp: partitions of lp's subscriptions no longer led here
 * end (registered with cluster_on_map). */
void stream_on_map(loop_t *lp);
/* The loop's timer: subscriptions of a dropped cache end (END for each
 * partition) and let the cache go; they are dead from then on. */
void stream_cron(loop_t *lp, int64_t now_ms);
/* Whether s's cache was dropped under it (stream_take: GRID_ENOCACHE). */
int stream_dead(const stream_sub_t *s);

#endif
