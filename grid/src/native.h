/*
 * native: the native protocol on a connection (proto/grid.proto): the
 * handshake (and, for a node's link, the peer check), then request frames
 * run here (ops) or routed in a cluster (route), and their replies framed
 * back, in any order, under each request's id.
 */
#ifndef GRID_NATIVE_H
#define GRID_NATIVE_H

#include <stdint.h>

#include "conn.h"
#include "loop.h"

extern const conn_proto_t native_proto;

/* Loop hooks (node.c registers them): a new map lets the connections whose
 * peer records waited for it go on (a cluster_on_map listener); the timer
 * refuses records that waited past forward_timeout_ms. */
void native_on_map(loop_t *lp);
void native_cron(loop_t *lp, int64_t now_ms);

#endif
