/*
 * keyspace: Redis keyspace notifications (issue 9). While
 * notify_keyspace_events asks for any, the node's first loop follows the
 * caches the Redis protocol names as databases ("default" is database 0,
 * "db<n>" database n) with change-stream subscriptions (stream.h) of the
 * partitions this node leads, and publishes each committed change as
 * Redis names it (notify.h) on __keyspace@<db>__:<key> and
 * __keyevent@<db>__:<event>, through pubsub: the subscribers of every node
 * hear every key's events, where Redis Cluster's hear only their own
 * node's keys. As in Redis they are fire-and-forget: a partition that
 * changes primary is followed from the new primary's next change on.
 */
#ifndef GRID_KEYSPACE_H
#define GRID_KEYSPACE_H

#include <stdint.h>

#include "loop.h"

/* The loop's timer: follows what the setting (CONFIG SET may change it)
 * and the map ask for. */
void keyspace_cron(loop_t *lp, int64_t now_ms);
/* A new map: takes the partitions now led here. */
void keyspace_on_map(loop_t *lp);
/* The loop stops: its subscriptions end. */
void keyspace_stop(loop_t *lp);

#endif
