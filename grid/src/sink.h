/*
 * sink: where a deferred reply goes, exactly once.
 *
 * A request that is answered later (after a forward to another node, a
 * handoff to the loop that owns its partition, its backups' acks, or the
 * cluster thread) carries a sink: the requester's, inside the requester's
 * own struct, valid until its fn has run. fn runs once, on the sink's loop,
 * with the reply. The task that carries a reply to another loop is in the
 * sink too, so delivering can never fail after a request was taken: a reply
 * that cannot be copied for the trip (out of memory) arrives as GRID_ENOMEM
 * under the request's id, never not at all.
 */
#ifndef GRID_SINK_H
#define GRID_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "grid.pb-c.h"
#include "loop.h"

typedef struct sink sink_t;
/* rp is valid during the call only; fn may free the struct s is in. */
typedef void (*sink_fn)(loop_t *lp, sink_t *s, const Grid__Reply *rp);

struct sink {
  sink_fn fn;
  int loop;                 /* the loop fn runs on */
  loop_task_t task;          /* the trip to that loop */
  void *block;              /* crossing: freed once fn has run */
  const unsigned char *packed; /* ... the packed reply in it */
  size_t packed_len;
  uint64_t id;              /* ... or, when block is NULL, an error for */
  int status;               /* this request id */
};

void sink_init(sink_t *s, sink_fn fn, int loop);
/* Delivers rp to s: now when s is on lp's loop, else through its inbox. */
void sink_deliver(loop_t *lp, sink_t *s, const Grid__Reply *rp);
/* Delivers a reply packed earlier: bytes[0..len) inside block, a malloc'd
 * block that is taken over and freed once fn has run. id is the request's:
 * an error goes under it should the bytes not decode. */
void sink_deliver_packed(loop_t *lp, sink_t *s, void *block,
                         const unsigned char *bytes, size_t len, uint64_t id);
/* Delivers an error reply (words from grid_strerror plus detail). */
void sink_error(loop_t *lp, sink_t *s, uint64_t id, int status, const char *detail);

#endif
