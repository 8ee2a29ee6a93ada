/*
 * net: the node's listeners. Every loop listens on the native port and,
 * when resp_port is set, on the Redis-protocol port, each with a socket of
 * its own in one SO_REUSEPORT group, so the kernel spreads connections
 * over the loops and no loop accepts for another. A connection accepted
 * on a loop lives there (conn.h) with its front end (native.h, resp.h).
 */
#ifndef GRID_NET_H
#define GRID_NET_H

#include <stddef.h>

#include "loop.h"

typedef struct node node_t;

/* Binds cfg.bind:cfg.port (and the RESP port) and listens on every loop of
 * ls, which do not run yet. Sets n->port and n->resp_port. The sockets
 * are handles of their loops, closed when the loops stop. On failure err
 * holds words for the user. */
int net_listen(node_t *n, loops_t *ls, char *err, size_t err_len);

#endif
