/*
 * repl_order: the commit order of a partition led here, as pure rules over
 * plain data. Nothing here knows a loop, a sink, the store or the cluster,
 * so tests/unit/test_repl_order.c drives it alone; repl.c is the shell
 * that feeds it writes, acknowledgements and reads, publishes the
 * committed counter it returns, and answers what it releases.
 *
 * A partition's writes wait in a FIFO in update-counter order, each until
 * every OWNING backup acknowledged it. Reads that saw state past committed
 * wait for committed to reach what they saw:
 *
 *   FIFO   head -> [c=5 waiting=0] -> [c=6 waiting=1] -> [c=7 waiting=0]
 *                   commits now       blocks 7 behind it
 *   waits  [release=6] [release=9]    released once committed >= release
 *
 * The rules, each one kept by repl_order_advance:
 *   - only the head of the FIFO leaves it, once it waits for no backup,
 *     so writes commit in counter order whatever order the acks come in;
 *   - an abandoned write leaves the FIFO without moving committed (the
 *     partition's new primary may never have had it);
 *   - with the FIFO empty, and no write given up since this node last
 *     resumed leading, committed catches up to applied (what a backup
 *     applied becomes the truth once it is promoted);
 *   - a wait leaves once committed reaches its release, never before;
 *   - committed never goes down, and counters in the FIFO strictly grow.
 *
 * Items are intrusive: they live in the caller's structs (repl_write_t,
 * repl_wait_t), so nothing here allocates and nothing here can fail. The
 * caller owns every item; one is the module's only between its push and
 * the call that hands it back (advance, take_waits, close).
 */
#ifndef GRID_REPL_ORDER_H
#define GRID_REPL_ORDER_H

#include <stddef.h>
#include <stdint.h>

/* A write in a partition's FIFO. */
typedef struct repl_order_write {
  struct repl_order_write *next; /* the FIFO; once handed back, the list
                                    it was handed back in */
  uint64_t counter;              /* the write's update counter */
  int waiting;                   /* OWNING backups that have not acked */
  int abandoned;                 /* given up: never counts as committed */
} repl_order_write_t;

/* A reply held until committed reaches what it saw. */
typedef struct repl_order_wait {
  struct repl_order_wait *next;  /* the partition's waits, newest first */
  uint64_t release;              /* leaves once committed reaches it */
} repl_order_wait_t;

/* One partition's commit order; all zero is an empty one. */
typedef struct repl_order {
  repl_order_write_t *head, *tail;
  repl_order_wait_t *waits;
  size_t pending;                /* writes in the FIFO plus waits: the
                                    caller bounds it (repl_pending_max) */
  int abandoned;                 /* writes were given up when another node
                                    took the lead: what is applied here past
                                    committed is not committed */
} repl_order_t;

/* What one repl_order_advance handed back to the caller to answer. */
typedef struct repl_order_out {
  repl_order_write_t *writes;    /* left the FIFO, in counter order */
  repl_order_wait_t *waits;      /* released, in the order they were kept */
} repl_order_out_t;

void repl_order_init(repl_order_t *o);

/* Whether the FIFO holds no write. */
static inline int repl_order_empty(const repl_order_t *o) { return o->head == NULL; }

/* Whether w waits for no backup: it commits once it is the head. */
static inline int repl_order_ready(const repl_order_write_t *w) { return w->waiting <= 0; }

/* Queues w behind the partition's pending writes with counter, waiting for
 * `waiting` OWNING backups. committed is the partition's, now: a new write
 * lies past it (unless writes were given up) and past the FIFO's tail. */
void repl_order_push(repl_order_t *o, repl_order_write_t *w, uint64_t counter, int waiting,
                     uint64_t committed);

/* One backup w waited for acknowledged it, or no longer counts. 1 when w
 * now waits for none (repl_order_advance may release it). */
int repl_order_ack(repl_order_write_t *w);

/* Gives w up (its partition is led elsewhere now): it waits for no backup,
 * will never count as committed, and committed stops catching up to
 * applied until repl_order_resume. */
void repl_order_abandon(repl_order_t *o, repl_order_write_t *w);

/* This node serves the partition as its primary: once every given-up
 * write has left the FIFO, what it holds is the truth again. */
void repl_order_resume(repl_order_t *o);

/* Whether a reply that saw state up to release may leave now, with the
 * partition's committed and applied counters as they are. */
int repl_order_may_answer(const repl_order_t *o, uint64_t committed, uint64_t applied,
                          uint64_t release);

/* Holds wt until committed reaches release; release lies past committed
 * (else the reply may leave now: repl_order_may_answer). */
void repl_order_hold(repl_order_t *o, repl_order_wait_t *wt, uint64_t release,
                     uint64_t committed);

/* Applies the rules above: commits what may commit and releases what may
 * leave. Takes the partition's committed and applied counters, returns
 * committed after the step (never lower). out gets what left, for the
 * caller to answer: the items are the caller's again. */
uint64_t repl_order_advance(repl_order_t *o, uint64_t committed, uint64_t applied,
                            repl_order_out_t *out);

/* Takes every wait out (to be failed instead), newest first. */
repl_order_wait_t *repl_order_take_waits(repl_order_t *o);

/* Forgets every write of the FIFO and takes every wait out, as
 * repl_order_take_waits (the node is stopping; the caller holds its
 * writes elsewhere too). */
repl_order_wait_t *repl_order_close(repl_order_t *o);

#endif
