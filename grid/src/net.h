/*
 * net: the node's native-protocol listener. cfg.loops event loops, each on
 * its own thread with its own listening socket on the same port
 * (SO_REUSEPORT), so the kernel spreads connections over the loops and no
 * loop hands work to another. A connection lives on one loop for its life.
 */
#ifndef GRID_NET_H
#define GRID_NET_H

#include <stddef.h>
#include <stdint.h>

typedef struct node node_t;
typedef struct net net_t;
typedef struct net_loop net_loop_t;

/* Binds cfg.bind:cfg.port and starts the loop threads. On failure err holds
 * words for the user and nothing is left running. */
int net_start(node_t *n, net_t **out, char *err, size_t err_len);
int net_port(const net_t *net);
int net_loops(const net_t *net);
/* The bound RESP port, or 0 when there is none. */
int net_resp_port(const net_t *net);
/* Requests served by every loop so far. */
uint64_t net_ops_served(net_t *net);
/* The loop has a newer map: connections waiting for one go on (a
 * cluster_on_map listener). */
void net_loop_on_map(net_loop_t *lp);
/* Closes every connection and listener, joins the threads, frees net. */
void net_stop(net_t *net);

#endif
