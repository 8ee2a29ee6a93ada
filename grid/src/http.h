/*
 * http: the node's operations port (http_port), through libmicrohttpd on a
 * thread of its own, so that nothing on it ever waits for an event loop or
 * makes one wait:
 *   /metrics  Prometheus' text format: requests, errors and latency
 *             histograms by op (summed over the loops' metrics.h blocks),
 *             entries per cache, memory, connections, partitions by state
 *             per placement group, primaries per node, the map epoch,
 *             ZooKeeper and lease state, grid_build_info;
 *   /health   200 while the process serves at all;
 *   /ready    200 when the node serves its partitions (a single node: once
 *             listening; a cluster member: map read and lease held), else
 *             503 with the reason.
 * Bounds: http_connections_max, http_timeout_ms (a slow client is closed),
 * http_request_bytes_max (a request's line and headers); only GET and HEAD.
 */
#ifndef GRID_HTTP_H
#define GRID_HTTP_H

#include <stddef.h>

typedef struct node node_t;
typedef struct http http_t;

/* Starts serving cfg.http_port on cfg.bind; sets n->http_port (the bound
 * port). On failure err says why. */
int http_start(node_t *n, http_t **out, char *err, size_t err_len);
void http_stop(http_t *h);

#endif
