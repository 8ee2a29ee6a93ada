#include "repl_order.h"

#include "log.h"

void repl_order_init(repl_order_t *o) { *o = (repl_order_t){0}; }

void repl_order_push(repl_order_t *o, repl_order_write_t *w, uint64_t counter, int waiting,
                     uint64_t committed) {
  /* The store hands out counters past applied, and applied is never below
   * committed; only writes given up may have left applied ahead. */
  GRID_ASSERT(counter > committed || o->abandoned);
  /* Writes commit in FIFO order, so the FIFO must be in counter order. */
  GRID_ASSERT(!o->tail || counter > o->tail->counter);
  GRID_ASSERT(waiting >= 0);
  *w = (repl_order_write_t){.counter = counter, .waiting = waiting};
  if (o->tail) o->tail->next = w;
  else o->head = w;
  o->tail = w;
  o->pending++;
}

int repl_order_ack(repl_order_write_t *w) {
  /* Only a write given up may hear from a backup it no longer waits for:
   * abandoning it stopped the count without knowing who was left. */
  GRID_ASSERT(w->waiting > 0 || w->abandoned);
  if (w->waiting > 0) w->waiting--;
  return repl_order_ready(w);
}

void repl_order_abandon(repl_order_t *o, repl_order_write_t *w) {
  w->waiting = 0;
  w->abandoned = 1;
  o->abandoned = 1;
}

void repl_order_resume(repl_order_t *o) {
  /* While a given-up write is still queued, the partition's state past
   * committed is not yet known to be the truth: wait until it has left. */
  if (!o->head) o->abandoned = 0;
}

int repl_order_may_answer(const repl_order_t *o, uint64_t committed, uint64_t applied,
                          uint64_t release) {
  /* With nothing queued, what is applied is about to be committed (the
   * next advance catches committed up to it). */
  return release <= committed || (!o->head && release <= applied);
}

void repl_order_hold(repl_order_t *o, repl_order_wait_t *wt, uint64_t release,
                     uint64_t committed) {
  GRID_ASSERT(release > committed);
  wt->release = release;
  wt->next = o->waits;
  o->waits = wt;
  o->pending++;
}

/* Moves the FIFO's head writes that wait for nobody to *tail, in order;
 * returns committed after them. */
static uint64_t repl_order_commit_head(repl_order_t *o, uint64_t committed,
                                       repl_order_write_t ***tail) {
  while (o->head && repl_order_ready(o->head)) {
    repl_order_write_t *w = o->head;
    o->head = w->next;
    if (!o->head) o->tail = NULL;
    GRID_ASSERT(o->pending > 0);
    o->pending--;
    if (!w->abandoned) {
      GRID_ASSERT(w->counter > committed); /* committed only grows */
      committed = w->counter;
    }
    w->next = NULL;
    **tail = w;
    *tail = &w->next;
  }
  return committed;
}

uint64_t repl_order_advance(repl_order_t *o, uint64_t committed, uint64_t applied,
                            repl_order_out_t *out) {
  uint64_t before = committed;
  repl_order_write_t **wtail = &out->writes;
  repl_order_wait_t **ttail = &out->waits;
  out->writes = NULL;
  out->waits = NULL;
  committed = repl_order_commit_head(o, committed, &wtail);
  /* Nothing pending: all that is applied here is as committed as it gets
   * (after a promotion, a backup's records become the truth). Not after
   * writes were given up: those may be missing on the new primary. */
  if (!o->head && !o->abandoned && committed < applied) committed = applied;
  repl_order_wait_t **l = &o->waits;
  while (*l) {
    repl_order_wait_t *wt = *l;
    if (wt->release > committed) {
      l = &wt->next;
      continue;
    }
    *l = wt->next;
    GRID_ASSERT(o->pending > 0);
    o->pending--;
    wt->next = NULL;
    *ttail = wt;
    ttail = &wt->next;
  }
  GRID_ASSERT(committed >= before);
  return committed;
}

repl_order_wait_t *repl_order_take_waits(repl_order_t *o) {
  repl_order_wait_t *l = o->waits;
  o->waits = NULL;
  for (repl_order_wait_t *wt = l; wt; wt = wt->next) {
    GRID_ASSERT(o->pending > 0);
    o->pending--;
  }
  return l;
}

repl_order_wait_t *repl_order_close(repl_order_t *o) {
  for (repl_order_write_t *w = o->head; w; w = w->next) {
    GRID_ASSERT(o->pending > 0);
    o->pending--;
  }
  o->head = o->tail = NULL;
  return repl_order_take_waits(o);
}
