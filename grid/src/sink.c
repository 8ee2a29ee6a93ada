#include "sink.h"

#include <stdlib.h>
#include <string.h>

#include "grid_types.h"
#include "log.h"
#include "ops.h"
#include "pmap.h"

void sink_init(sink_t *s, sink_fn fn, int loop) {
  memset(s, 0, sizeof *s);
  s->fn = fn;
  s->loop = loop;
}

/* On the sink's loop: the reply that crossed, or the error it became. */
static void sink_on_loop(loop_t *lp, void *arg) {
  sink_t *s = arg;
  void *block = s->block;
  Grid__Reply *rp = block ? grid__reply__unpack(NULL, s->packed_len, s->packed) : NULL;
  if (rp) {
    s->fn(lp, s, rp); /* may free s */
    grid__reply__free_unpacked(rp, NULL);
  } else {
    Grid__Reply err = GRID__REPLY__INIT;
    err.id = s->id;
    err.status = block ? GRID_EINTERNAL : s->status;
    err.message = block ? "a reply could not cross loops" : (char *)grid_strerror(err.status);
    s->fn(lp, s, &err);
  }
  free(block);
}

static void sink_post(loop_t *lp, sink_t *s) {
  s->task = (loop_task_t){.fn = sink_on_loop, .arg = s};
  loop_post(lp, s->loop, &s->task);
}

void sink_deliver(loop_t *lp, sink_t *s, const Grid__Reply *rp) {
  if (lp->index == s->loop) {
    s->fn(lp, s, rp);
    return;
  }
  size_t len = grid__reply__get_packed_size(rp);
  unsigned char *b = malloc(len ? len : 1);
  if (b) {
    size_t packed = grid__reply__pack(rp, b);
    GRID_ASSERT(packed == len);
    s->id = rp->id;
    s->block = b;
    s->packed = b;
    s->packed_len = len;
  } else {
    LOG_E("sink", "\"out of memory passing a reply between loops: answering GRID_ENOMEM\"");
    s->block = NULL;
    s->id = rp->id;
    s->status = GRID_ENOMEM;
  }
  sink_post(lp, s);
}

void sink_deliver_packed(loop_t *lp, sink_t *s, void *block,
                         const unsigned char *bytes, size_t len, uint64_t id) {
  s->id = id;
  s->block = block;
  s->packed = bytes;
  s->packed_len = len;
  if (lp->index == s->loop) sink_on_loop(lp, s);
  else sink_post(lp, s);
}

void sink_error(loop_t *lp, sink_t *s, uint64_t id, int status, const char *detail) {
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = id;
  rp.epoch = lp->pmap ? lp->pmap->epoch : 0;
  ops_reply_error(&rp, status, detail, &lp->arena);
  sink_deliver(lp, s, &rp);
}
