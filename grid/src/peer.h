/*
 * peer: a loop's links to other nodes of the cluster, over the native
 * protocol with role PEER. A loop makes at most one link per node, on first
 * use, and keeps it; requests on it are pipelined and answered by callbacks
 * on the same loop, so a forwarded request never leaves its loop thread.
 */
#ifndef GRID_PEER_H
#define GRID_PEER_H

#include <stdint.h>

#include "grid.pb-c.h"
#include "pmap.h"

typedef struct loop loop_t;
typedef struct peer peer_t;

#define PEER_INFLIGHT_MAX 4096 /* requests in flight on one link */

/* status is 0 with the node's reply (valid during the call only), or a
 * transport error with rp NULL: GRID_ECONN (never sent, so not run there;
 * or a read lost before it was answered), GRID_EUNKNOWN (a write sent, no
 * reply), GRID_ETIMEDOUT (a read sent, no reply). */
typedef void (*peer_reply_cb)(void *arg, int status, const Grid__Reply *rp);

/* The loop's link to node nd, made if needed: to its native port, or with
 * tls_replication over TLS to its TLS port (its certificate checked
 * against tls_ca_cert_file, this node showing its own). */
peer_t *peer_get(loop_t *lp, const pmap_node_t *nd);
/* Sends rq (its id is replaced). Returns 0 and calls cb exactly once
 * later, or returns an error and never calls cb. */
int peer_call(peer_t *p, Grid__Request *rq, int64_t timeout_ms,
              peer_reply_cb cb, void *arg);
/* Deadlines of calls in flight; called by the loop's cron. */
void peer_cron(loop_t *lp, int64_t now_ms);
/* Fails every call in flight and closes every link of the loop. */
void peer_close_all(loop_t *lp);

#endif
