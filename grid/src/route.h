/*
 * route: where a request runs in a cluster. A keyed request runs on the
 * primary of its partition: here when this node leads it, else it is
 * forwarded over the loop's link to the primary (one hop: a forwarded
 * request is never forwarded again) and the reply relayed. Batches are
 * split by primary and merged; SIZE adds up every node's primaries; cache
 * creation and drop go through the cluster thread to ZooKeeper.
 */
#ifndef GRID_ROUTE_H
#define GRID_ROUTE_H

#include "grid.pb-c.h"

typedef struct conn conn_t;
typedef struct net_loop net_loop_t;

enum {
  ROUTE_LOCAL = 0,    /* the caller runs it here (ops_execute) */
  ROUTE_TAKEN = 1,    /* answered now, or later on c */
  ROUTE_WAIT_MAP = 2, /* a peer's record of a map this node has not read
                         yet: the caller keeps the frame and waits */
};
/* Where a request goes. Only for a node in a cluster. */
int route_request(conn_t *c, Grid__Request *rq);

/* Where a reply for another front end goes: fn(lp, arg, rp) runs on this
 * loop (the caller's) exactly once. */
typedef struct repl_sink {
  void (*fn)(net_loop_t *lp, void *arg, const Grid__Reply *rp);
  void *arg;
  int loop;
} repl_sink_t;

/* Runs one keyed request (GET ... TTL) where its partition's primary is,
 * or a SIZE across the cluster, and answers through sink. For front ends
 * other than the native protocol. */
void route_keyed(net_loop_t *lp, Grid__Request *rq, repl_sink_t sink);

#endif
