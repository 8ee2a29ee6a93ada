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

typedef struct loop loop_t;
typedef struct sink sink_t;

/* Who sent a request, as far as routing cares. */
typedef struct route_from {
  int peer;               /* said hello as a grid node */
  const char *peer_id;    /* ... its node id */
  const char *addr;       /* "ip:port", for logs */
  int map_wait_over;      /* its record waited for a newer map for
                             forward_timeout_ms: refuse it now */
  int behind;             /* requests of its connection sent before this
                             one are not answered yet: this one must not
                             overtake them (a pipelined GET sees the SET
                             before it, as Redis answers a connection in
                             order) */
} route_from_t;

enum {
  ROUTE_LOCAL = 0,    /* the caller runs it here (ops_execute) */
  ROUTE_RUN = 1,      /* the caller hands it to route_run with a sink */
  ROUTE_RECORD = 2,   /* a peer's record (REPL, FILL): route_record
                         answers it at once */
  ROUTE_WAIT_MAP = 3, /* a peer's record of a map this node has not read
                         yet: the caller keeps the frame and waits */
};
/* How a cluster node's request goes. */
int route_classify(loop_t *lp, const Grid__Request *rq, const route_from_t *from);
/* A ROUTE_RECORD request: its reply, in rp, before this returns. */
void route_record(loop_t *lp, const Grid__Request *rq, const route_from_t *from,
                  Grid__Reply *rp);
/* A ROUTE_RUN request: its reply goes to sink exactly once, now or later.
 * rq may be changed. */
void route_run(loop_t *lp, Grid__Request *rq, const route_from_t *from, sink_t *sink);

#endif
