/*
 * loop: the node's event loops. cfg.loops threads, each running one libuv
 * loop; a connection, a peer link, a partition's replication state live on
 * one loop for their whole life, so they need no lock. Other threads hand a
 * loop work as tasks. The modules above keep their per-loop state in the
 * fields below marked with their name, and hook the loop's timer and stop
 * (loops_on_cron, loops_on_stop) at start: the loop calls nothing above it.
 */
#ifndef GRID_LOOP_H
#define GRID_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "arena.h"
#include "metrics.h"
#include "store.h"

typedef struct node node_t;
typedef struct loop loop_t;
typedef struct loops loops_t;
typedef struct pmap pmap_t;

#define LOOP_HOOKS_MAX 8     /* cron and stop hooks, each */
#define LOOP_ARENA_BYTES 16384
#define LOOP_CRON_MS_MAX 100 /* the timer fires at least this often */
#define LOOP_STOP_DRAIN_ROUNDS_MAX 16 /* inboxes run after the threads end */
#define LOOP_DEFER_ROUNDS_MAX 8  /* deferred tasks deferring more, run
                                    before the loop polls again */

/* Work for a loop from any thread. The task lives in the sender's own
 * struct (as libuv's requests do), so posting it cannot fail: a handoff
 * that could fail fails before it is posted. */
typedef struct loop_task {
  struct loop_task *next;
  void (*fn)(loop_t *lp, void *arg);
  void *arg;
  int to;                      /* held for the disk: the loop it goes to */
} loop_task_t;

struct loop {
  uv_loop_t uv;
  uv_thread_t thread;
  loops_t *set;
  node_t *node;
  int index;
  arena_t arena;               /* one request at a time per loop */
  store_view_t view;           /* this loop's caches, found without a lock */
  uv_async_t inbox_async;      /* wakes the loop for posted tasks */
  pthread_mutex_t inbox_lock;
  loop_task_t *inbox_head, *inbox_tail;
  uv_prepare_t defer_prepare;  /* runs the deferred tasks before polling */
  loop_task_t *defer_head, *defer_tail; /* loop_defer's, this thread's only */
  uv_async_t stop_async;
  loop_task_t stop_task;       /* the stop's first step */
  uv_timer_t cron;
  int stopping;                /* the stop's first step ran: layers that
                                  keep requests waiting take no new ones */
  /* cluster.c: this loop's copy of the partition map, set on this loop by
   * the map task; read by the layers above on this loop. */
  pmap_t *pmap;
  int self;                    /* this node's index in pmap, or -1 */
  /* peer.c */
  struct peer *peers;          /* links to other nodes, made on demand */
  /* repl.c */
  struct repl_loop *repl;      /* the partitions this loop owns */
  _Atomic uint64_t repl_epoch; /* the map this loop's partitions were last
                                  brought up to (read by other loops) */
  /* keyspace.c (the first loop only) */
  struct keyspace *keyspace;   /* the databases keyspace notifications
                                  follow */
  /* stream.c */
  struct stream_watch *stream_watches; /* caches this loop's subscriptions
                                  watch */
  /* Written by every loop that hands this one a request: on a cache line
   * of its own, away from what this loop reads on every request. */
  _Alignas(64) _Atomic int64_t handoffs; /* requests other loops handed to
                                  this one, not answered yet
                                  (loop_handoffs_max) */
  char handoffs_pad[64 - sizeof(int64_t)];
  /* conn.c */
  struct conn *conns;          /* open client connections */
  loop_task_t conn_settle_task; /* their replies' wait for the disk */
  metrics_t metrics;           /* requests served here (metrics.h) */
  int conn_settle_deferred;
  /* loop.c: tasks this loop posts while its writes wait for the disk
   * (replies on their way), posted once one flush covers them all. */
  loop_task_t *held_head, *held_tail;
  loop_task_t held_task;
  int held_deferred;
  uv_tcp_t refused;            /* takes a connection that finds no memory,
                                  to close it: a listener whose connection
                                  is not accepted stops accepting */
  int refusing;                /* refused is in use (closing) */
  uv_stream_t *refuse_next;    /* a listener waiting for it, and its */
  const struct conn_proto *refuse_next_proto; /* front end */
  struct tls_ctx *refuse_next_tls;            /* and its TLS */
  /* net.c */
  uv_tcp_t listener;           /* the native port */
  uv_tcp_t resp_listener;      /* the Redis-protocol port (resp_port set) */
  uv_tcp_t tls_listener;       /* the native port over TLS (tls_port set) */
  uv_tcp_t tls_resp_listener;  /* RESP over TLS (tls_resp_port set) */
};

/* Makes n->cfg.loops loops, not running yet: what must be set up on them
 * before they run (listeners, hooks) is done between this and loops_run.
 * On failure err holds words for the user. */
int loops_new(node_t *n, loops_t **out, char *err, size_t err_len);
int loops_count(const loops_t *ls);
loop_t *loops_at(loops_t *ls, int index);

/* Hooks, registered before loops_run, run on every loop in the order
 * registered: fn(lp, now_ms) on the loop's timer; on stop, first(lp) on
 * every loop before any loop closes a handle (what waits for another node
 * or loop fails, so every deferred reply is answered), then last(lp). */
typedef void (*loop_cron_fn)(loop_t *lp, int64_t now_ms);
typedef void (*loop_stop_fn)(loop_t *lp);
void loops_on_cron(loops_t *ls, loop_cron_fn fn);
void loops_on_stop(loops_t *ls, loop_stop_fn first, loop_stop_fn last);

/* Starts the threads. */
int loops_run(loops_t *ls, char *err, size_t err_len);
/* Runs the stop hooks, closes every handle, joins the threads, frees ls. */
void loops_stop(loops_t *ls);

/* Runs t->fn(lp, t->arg) on loop `index`, exactly once; callable from any
 * thread. t must stay valid until fn runs, and may be posted again from
 * then on. */
void loops_post(loops_t *ls, int index, loop_task_t *t);
/* The same, from loop `from` to another loop of its set. */
static inline void loop_post(loop_t *from, int index, loop_task_t *t) {
  loops_post(from->set, index, t);
}
/* Runs t->fn(lp, t->arg) once, on lp's own thread (the caller's), when
 * the loop has done what is ready now and before it waits for I/O again:
 * what many tasks or callbacks gathered for one connection leaves in one
 * write (Redis's "before sleep"). t must stay valid until fn runs. */
void loop_defer(loop_t *lp, loop_task_t *t);
/* Runs t on loop index: at once deferred (loop_defer) when the caller is
 * that loop's own thread, else posted (loops_post). */
void loops_post_or_defer(loops_t *ls, int index, loop_task_t *t);
/* Requests served through every loop's view so far. */
uint64_t loops_ops_served(loops_t *ls);

#endif
