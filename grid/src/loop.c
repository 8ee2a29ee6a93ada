#include "loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "disk.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"

struct loops {
  node_t *node;
  int n;
  loop_t *loops;
  int running;                 /* threads started */
  loop_cron_fn cron[LOOP_HOOKS_MAX];
  int ncron;
  loop_stop_fn stop_first[LOOP_HOOKS_MAX];
  loop_stop_fn stop_last[LOOP_HOOKS_MAX];
  int nstop;
  _Atomic int joined;          /* every thread has ended: loops_stop runs
                                  what is still posted itself */
  pthread_mutex_t stop_lock;   /* the stop's first step, on every loop */
  pthread_cond_t stop_cond;
  int stopped_first;
};

int loops_count(const loops_t *ls) { return ls->n; }

loop_t *loops_at(loops_t *ls, int index) {
  GRID_ASSERT(index >= 0 && index < ls->n);
  return &ls->loops[index];
}

void loops_on_cron(loops_t *ls, loop_cron_fn fn) {
  GRID_ASSERT(!ls->running && ls->ncron < LOOP_HOOKS_MAX);
  ls->cron[ls->ncron++] = fn;
}

void loops_on_stop(loops_t *ls, loop_stop_fn first, loop_stop_fn last) {
  GRID_ASSERT(!ls->running && ls->nstop < LOOP_HOOKS_MAX);
  ls->stop_first[ls->nstop] = first;
  ls->stop_last[ls->nstop] = last;
  ls->nstop++;
}

/* ---- tasks from other threads ----------------------------------------- */

static _Thread_local loop_t *loop_current; /* the loop whose thread this is */
static void loops_post_now(loops_t *ls, int index, loop_task_t *t);

/* Before the loop sleeps: one flush (a sync for fsync = always) covers the
 * writes its held tasks tell of, then they go. */
static void loop_held_run(loop_t *lp, void *arg) {
  (void)arg;
  lp->held_deferred = 0;
  disk_settle();
  loop_task_t *t = lp->held_head;
  lp->held_head = lp->held_tail = NULL;
  while (t) {
    loop_task_t *next = t->next;
    loops_post_now(lp->set, t->to, t);
    t = next;
  }
}

void loops_post(loops_t *ls, int index, loop_task_t *t) {
  /* What this thread hands on (a reply, above all) may tell of writes to
   * persistent caches: they are in the OS (on disk for fsync = always)
   * first. A loop holds it until the round's one flush; another thread
   * flushes now. */
  if (disk_pending()) {
    loop_t *cur = loop_current;
    if (cur && cur->set == ls) {
      t->to = index;
      t->next = NULL;
      if (cur->held_tail) cur->held_tail->next = t;
      else cur->held_head = t;
      cur->held_tail = t;
      if (!cur->held_deferred) {
        cur->held_deferred = 1;
        cur->held_task.fn = loop_held_run;
        cur->held_task.arg = NULL;
        loop_defer(cur, &cur->held_task);
      }
      return;
    }
    disk_settle();
  }
  loops_post_now(ls, index, t);
}

static void loops_post_now(loops_t *ls, int index, loop_task_t *t) {
  loop_t *lp = loops_at(ls, index);
  t->next = NULL;
  pthread_mutex_lock(&lp->inbox_lock);
  if (lp->inbox_tail) lp->inbox_tail->next = t;
  else lp->inbox_head = t;
  lp->inbox_tail = t;
  pthread_mutex_unlock(&lp->inbox_lock);
  if (!atomic_load(&ls->joined)) uv_async_send(&lp->inbox_async);
}

static void loop_on_inbox(uv_async_t *a) {
  loop_t *lp = a->data;
  pthread_mutex_lock(&lp->inbox_lock);
  loop_task_t *t = lp->inbox_head;
  lp->inbox_head = lp->inbox_tail = NULL;
  pthread_mutex_unlock(&lp->inbox_lock);
  while (t) {
    loop_task_t *next = t->next; /* fn may free t, or post it again */
    t->fn(lp, t->arg);
    t = next;
  }
}

static void loop_run_deferred(loop_t *lp) {
  /* Tasks deferred by these tasks wait for the next round. */
  loop_task_t *t = lp->defer_head;
  lp->defer_head = lp->defer_tail = NULL;
  while (t) {
    loop_task_t *next = t->next;
    t->fn(lp, t->arg);
    t = next;
  }
}

static void loop_on_prepare(uv_prepare_t *h) {
  loop_t *lp = h->data;
  /* A deferred task may defer another (a change read, then its message's
   * flush): rounds until none is left, at most LOOP_DEFER_ROUNDS_MAX. */
  for (int round = 0; lp->defer_head && round < LOOP_DEFER_ROUNDS_MAX; round++)
    loop_run_deferred(lp);
  if (!lp->defer_head) {
    uv_prepare_stop(&lp->defer_prepare);
    return;
  }
  /* A prepare handle does not keep the poll from blocking: wake the loop
   * so that what is left runs at once. */
  uv_async_send(&lp->inbox_async);
}

void loop_defer(loop_t *lp, loop_task_t *t) {
  t->next = NULL;
  if (lp->defer_tail) lp->defer_tail->next = t;
  else lp->defer_head = t;
  lp->defer_tail = t;
  if (!uv_is_closing((uv_handle_t *)&lp->defer_prepare))
    uv_prepare_start(&lp->defer_prepare, loop_on_prepare);
}

/* ---- housekeeping ------------------------------------------------------ */

static void loop_on_cron(uv_timer_t *t) {
  loop_t *lp = t->data;
  int64_t now = clock_mono_ms();
  store_view_refresh(&lp->view); /* let go of dropped caches */
  for (int i = 0; i < lp->set->ncron; i++) lp->set->cron[i](lp, now);
}

/* ---- stopping ---------------------------------------------------------- */

/* First step, on every loop before any closes: what waits for another
 * node or loop fails, so that every deferred reply is answered (possibly
 * through another loop's inbox, which the second step drains). */
static void loop_stop_first(loop_t *lp, void *arg) {
  (void)arg;
  loops_t *ls = lp->set;
  lp->stopping = 1;
  for (int i = 0; i < ls->nstop; i++)
    if (ls->stop_first[i]) ls->stop_first[i](lp);
  pthread_mutex_lock(&ls->stop_lock);
  ls->stopped_first++;
  pthread_cond_broadcast(&ls->stop_cond);
  pthread_mutex_unlock(&ls->stop_lock);
}

static void loop_close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void loop_on_stop(uv_async_t *a) {
  loop_t *lp = a->data;
  loop_on_inbox(&lp->inbox_async); /* tasks posted before the stop */
  loop_run_deferred(lp);
  for (int i = 0; i < lp->set->nstop; i++)
    if (lp->set->stop_last[i]) lp->set->stop_last[i](lp);
  loop_run_deferred(lp);
  uv_walk(&lp->uv, loop_close_walk_cb, lp);
}


void loops_post_or_defer(loops_t *ls, int index, loop_task_t *t) {
  loop_t *lp = loops_at(ls, index);
  if (loop_current == lp) loop_defer(lp, t);
  else loops_post(ls, index, t);
}

static void loop_thread_main(void *arg) {
  loop_t *lp = arg;
  loop_current = lp;
  uv_run(&lp->uv, UV_RUN_DEFAULT);
}

/* ---- life cycle --------------------------------------------------------- */

static void loop_close(loop_t *lp) {
  int rc = uv_loop_close(&lp->uv);
  GRID_ASSERT(rc == 0);
  arena_close(&lp->arena);
  store_view_close(&lp->view);
  pthread_mutex_destroy(&lp->inbox_lock);
}

/* A loop that never ran: its handles close on a last run of its own. */
static void loop_discard(loop_t *lp) {
  uv_walk(&lp->uv, loop_close_walk_cb, lp);
  uv_run(&lp->uv, UV_RUN_DEFAULT);
  loop_close(lp);
}

static int loop_init(loops_t *ls, int i, int64_t cron_ms) {
  loop_t *lp = &ls->loops[i];
  lp->set = ls;
  lp->node = ls->node;
  lp->index = i;
  lp->self = -1;
  arena_init(&lp->arena, LOOP_ARENA_BYTES);
  if (store_view_init(&lp->view, ls->node->store) != 0) {
    arena_close(&lp->arena);
    return GRID_ENOMEM;
  }
  uv_loop_init(&lp->uv);
  pthread_mutex_init(&lp->inbox_lock, NULL);
  uv_async_init(&lp->uv, &lp->inbox_async, loop_on_inbox);
  lp->inbox_async.data = lp;
  uv_prepare_init(&lp->uv, &lp->defer_prepare);
  lp->defer_prepare.data = lp;
  uv_async_init(&lp->uv, &lp->stop_async, loop_on_stop);
  lp->stop_async.data = lp;
  uv_timer_init(&lp->uv, &lp->cron);
  lp->cron.data = lp;
  uv_timer_start(&lp->cron, loop_on_cron, (uint64_t)cron_ms, (uint64_t)cron_ms);
  return 0;
}

int loops_new(node_t *n, loops_t **out, char *err, size_t err_len) {
  loops_t *ls = calloc(1, sizeof *ls);
  if (!ls) {
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  ls->node = n;
  ls->loops = calloc((size_t)n->cfg.loops, sizeof *ls->loops);
  if (!ls->loops) {
    free(ls);
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  pthread_mutex_init(&ls->stop_lock, NULL);
  pthread_cond_init(&ls->stop_cond, NULL);
  /* Connection deadlines are checked at a quarter of the shortest. */
  int64_t cron_ms = n->cfg.handshake_timeout_ms < n->cfg.frame_timeout_ms
                        ? n->cfg.handshake_timeout_ms
                        : n->cfg.frame_timeout_ms;
  cron_ms /= 4;
  if (cron_ms < 1) cron_ms = 1;
  if (cron_ms > LOOP_CRON_MS_MAX) cron_ms = LOOP_CRON_MS_MAX;
  for (int i = 0; i < (int)n->cfg.loops; i++) {
    if (loop_init(ls, i, cron_ms) != 0) {
      snprintf(err, err_len, "out of memory");
      loops_stop(ls);
      return GRID_ENOMEM;
    }
    ls->n++;
  }
  *out = ls;
  return 0;
}

int loops_run(loops_t *ls, char *err, size_t err_len) {
  ls->running = 1;
  for (int i = 0; i < ls->n; i++) {
    if (uv_thread_create(&ls->loops[i].thread, loop_thread_main, &ls->loops[i]) != 0) {
      snprintf(err, err_len, "cannot start loop thread %d", i);
      /* The loops that run stop as usual; the others are discarded. */
      for (int k = i; k < ls->n; k++) loop_discard(&ls->loops[k]);
      ls->n = i;
      return GRID_ENOMEM;
    }
  }
  return 0;
}

uint64_t loops_ops_served(loops_t *ls) {
  uint64_t total = 0;
  for (int i = 0; i < ls->n; i++)
    total += atomic_load_explicit(&ls->loops[i].view.ops, memory_order_relaxed);
  return total;
}

void loops_stop(loops_t *ls) {
  if (!ls->running) {
    for (int i = 0; i < ls->n; i++) loop_discard(&ls->loops[i]);
  } else {
    for (int i = 0; i < ls->n; i++) {
      ls->loops[i].stop_task = (loop_task_t){.fn = loop_stop_first};
      loops_post(ls, i, &ls->loops[i].stop_task);
    }
    pthread_mutex_lock(&ls->stop_lock);
    while (ls->stopped_first < ls->n) pthread_cond_wait(&ls->stop_cond, &ls->stop_lock);
    pthread_mutex_unlock(&ls->stop_lock);
    for (int i = 0; i < ls->n; i++) uv_async_send(&ls->loops[i].stop_async);
    for (int i = 0; i < ls->n; i++) uv_thread_join(&ls->loops[i].thread);
    /* A loop's last step may have posted to a loop that had ended (a
     * reply to a request handed over just before the stop): with every
     * thread gone, this thread runs those tasks, so every deferred reply
     * still reaches its (closed) connection and frees what it holds. */
    atomic_store(&ls->joined, 1);
    for (int again = 1, rounds = 0; again && rounds < LOOP_STOP_DRAIN_ROUNDS_MAX; rounds++) {
      again = 0;
      for (int i = 0; i < ls->n; i++) {
        again |= ls->loops[i].inbox_head != NULL || ls->loops[i].defer_head != NULL;
        loop_on_inbox(&ls->loops[i].inbox_async);
        loop_run_deferred(&ls->loops[i]);
      }
    }
    for (int i = 0; i < ls->n; i++) loop_close(&ls->loops[i]);
  }
  pthread_mutex_destroy(&ls->stop_lock);
  pthread_cond_destroy(&ls->stop_cond);
  free(ls->loops);
  free(ls);
}
