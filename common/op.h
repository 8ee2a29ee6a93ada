/*
 * op: the one table of the protocol's operations (proto/grid.proto, enum Op)
 * and what each one is. The node's ops, routing and peer links, the
 * client's transport and router, and the RESP front end all read it; none of
 * them lists operations by hand. tests/unit/test_op.c fails when an
 * operation of grid.proto is missing here.
 */
#ifndef GRID_OP_H
#define GRID_OP_H

#include <stdint.h>

#include "grid.pb-c.h"

enum {
  OP_KNOWN = 1u << 0,      /* in this table (an op number from a newer
                              peer is not) */
  OP_KEYED = 1u << 1,      /* runs on the primary of one partition: the
                              key's, or rq->partition's for OP_PARTITION */
  OP_PARTITION = 1u << 2,  /* names its partition (SCAN) instead of a key */
  OP_BATCH = 1u << 3,      /* keys[]: split by primary, replies merged */
  OP_WRITE = 1u << 4,      /* changes data or the cluster: its outcome is
                              unknown when the reply is lost */
  OP_IDEMPOTENT = 1u << 5, /* may be sent again after a lost reply */
  OP_PEER = 1u << 6,       /* node to node only: refused from a client */
  OP_DATA = 1u << 7,       /* names a cache and runs against its data */
  OP_ALL_NODES = 1u << 8,  /* answered from every node's primaries (SIZE) */
  OP_STREAM = 1u << 9,     /* a change stream on the connection it came on:
                              served by the front end, never routed */
};

#define OP_READ_KEYED_ (OP_KEYED | OP_DATA | OP_IDEMPOTENT)
#define OP_WRITE_KEYED_ (OP_KEYED | OP_DATA | OP_WRITE)

/* X(name, flags): name as in grid.proto (GRID__OP__<name>). */
#define GRID_OP_TABLE(X)                                   \
  X(PING, OP_IDEMPOTENT)                                   \
  X(GET, OP_READ_KEYED_)                                   \
  X(PUT, OP_WRITE_KEYED_)                                  \
  X(PUT_IF_ABSENT, OP_WRITE_KEYED_)                        \
  X(REPLACE, OP_WRITE_KEYED_)                              \
  X(CAS, OP_WRITE_KEYED_)                                  \
  X(DELETE, OP_WRITE_KEYED_)                               \
  X(GET_ALL, OP_BATCH | OP_DATA | OP_IDEMPOTENT)           \
  X(PUT_ALL, OP_BATCH | OP_DATA | OP_WRITE)                \
  X(DELETE_ALL, OP_BATCH | OP_DATA | OP_WRITE)             \
  X(ADD, OP_WRITE_KEYED_)                                  \
  X(SCAN, OP_READ_KEYED_ | OP_PARTITION)                   \
  X(SIZE, OP_DATA | OP_IDEMPOTENT | OP_ALL_NODES)          \
  X(CREATE_CACHE, OP_WRITE)                                \
  X(DROP_CACHE, OP_WRITE)                                  \
  X(LIST_CACHES, OP_IDEMPOTENT)                            \
  X(STATS, OP_IDEMPOTENT)                                  \
  X(PMAP, OP_IDEMPOTENT)                                   \
  X(LEAVE, OP_WRITE)                                       \
  X(REPL, OP_PEER | OP_WRITE)                              \
  X(FILL, OP_PEER | OP_WRITE)                              \
  X(APPEND, OP_WRITE_KEYED_)                               \
  X(GET_AND_PUT, OP_WRITE_KEYED_)                          \
  X(GET_AND_DELETE, OP_WRITE_KEYED_)                       \
  X(EXPIRE, OP_WRITE_KEYED_)                               \
  X(TTL, OP_READ_KEYED_)                                   \
  X(SUBSCRIBE, OP_STREAM | OP_IDEMPOTENT)                  \
  X(UNSUBSCRIBE, OP_STREAM | OP_IDEMPOTENT)                \
  X(EXPIRE_DUE, OP_WRITE_KEYED_)                           \
  X(PUBLISH, OP_PEER | OP_WRITE)                           \
  X(COMMITTED, OP_PEER | OP_WRITE)                         \
  X(BATCH, OP_WRITE_KEYED_)                                \
  X(GET_PREFIX, OP_READ_KEYED_)                            \
  X(EXEC, OP_WRITE_KEYED_)                                 \
  X(COLL, OP_WRITE_KEYED_)                                 \
  X(ACCEPT_LOSS, OP_WRITE)                                 \
  X(SNAPSHOT, OP_WRITE)                                    \
  X(USER, OP_WRITE)

#define OP_NUMBER_MAX 64 /* room in op_flags_table; grid.proto's ops stay below */

extern const uint16_t op_flags_table[OP_NUMBER_MAX];

/* The op's flags; 0 for a number not in the table. */
static inline unsigned op_flags(Grid__Op op) {
  return (unsigned)op < OP_NUMBER_MAX ? op_flags_table[op] : 0;
}
static inline int op_has(Grid__Op op, unsigned flag) {
  return (op_flags(op) & flag) != 0;
}
/* Whether a lost reply leaves the outcome unknown. An op not in the table
 * counts as a write: a request is never repeated unless it is known to be
 * safe. */
static inline int op_is_write(Grid__Op op) {
  unsigned f = op_flags(op);
  return !(f & OP_KNOWN) || (f & OP_WRITE);
}
/* The op's name as in grid.proto ("GET"), or "?" when unknown. Static. */
const char *op_name(Grid__Op op);

#endif
