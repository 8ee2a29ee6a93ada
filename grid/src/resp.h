/*
 * resp: the Redis-protocol (RESP2) front end. A RESP connection is a
 * connection (conn.h) like any other; its input goes here instead of to
 * the native frame reader. Commands become the same requests the
 * native protocol sends (run by ops on a single node, routed to their
 * partition's primary in a cluster), and replies are written in command
 * order, as Redis clients expect, even when some complete later.
 */
#ifndef GRID_RESP_H
#define GRID_RESP_H

#include "conn.h"

typedef struct resp_conn resp_conn_t;

/* The Redis protocol as a connection's front end (net.c's RESP port). */
extern const conn_proto_t resp_proto;

/* cluster: replies may complete out of order (and are put back in it). */
resp_conn_t *resp_conn_new(int cluster);
void resp_conn_free(resp_conn_t *r);
/* Serves the whole commands in c's read buffer (parsed by resp_parse.h).
 * It stops at resp_pipeline_max commands whose replies are not written
 * (in a cluster replies come later): the rest wait in the buffer and are
 * served once half of those replies are written. */
void resp_input(conn_t *c);
/* Words for a connection-level failure, as a RESP error line. */
void resp_fail(conn_t *c, const char *why);

#endif
