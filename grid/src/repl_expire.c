/*
 * repl_expire: in a cluster, the keys of a followed cache (one whose
 * changes are kept, store.h) whose time to live ran out are removed by
 * their partition's primary, each as a write of its own (EXPIRE_DUE): it
 * gets the partition's next counter, goes to the backups as a record, and
 * is announced once committed, so that a subscriber hears GRID_EVENT_EXPIRE
 * in the partition's order, and every copy's history says the same. (Other
 * caches are swept by every copy on its own, node.c's housekeeping, as
 * before: nobody follows them.) Backups never remove such keys themselves:
 * they wait for their primary's record, and a promoted backup takes over.
 */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cluster.h"
#include "log.h"
#include "node.h"
#include "repl_int.h"

#define REPL_EXPIRE_KEYS_MAX 256  /* removals started per loop per round */

/* Where an EXPIRE_DUE's reply goes: nowhere (removed, or written again
 * meanwhile and so not expired after all). */
static void repl_expire_done(loop_t *lp, sink_t *s, const Grid__Reply *rp) {
  (void)lp;
  (void)rp;
  free(s);
}

typedef struct repl_expire_keys {
  unsigned char *keys[REPL_EXPIRE_KEYS_MAX];
  size_t lens[REPL_EXPIRE_KEYS_MAX];
  size_t n;
} repl_expire_keys_t;

static void repl_expire_key(void *ctx, const void *key, size_t key_len) {
  repl_expire_keys_t *ks = ctx;
  if (ks->n == REPL_EXPIRE_KEYS_MAX) return; /* the next round finds it */
  unsigned char *copy = malloc(key_len ? key_len : 1);
  if (!copy) return;
  if (key_len) memcpy(copy, key, key_len);
  ks->keys[ks->n] = copy;
  ks->lens[ks->n++] = key_len;
}

/* Removes what expired in partition p of cache sc, led here: looks at
 * entries from the loop's cursor within budget. Returns the budget left. */
static size_t repl_expire_part(loop_t *lp, store_cache_t *sc, uint32_t p, size_t budget) {
  struct repl_loop *rl = lp->repl;
  repl_expire_keys_t ks = {.n = 0};
  size_t looked = store_expired_keys(sc, p, clock_wall_ms(), &rl->expire_cursor, budget,
                                     repl_expire_key, &ks);
  const char *name = store_cache_cfg(sc)->name;
  for (size_t i = 0; i < ks.n; i++) {
    sink_t *sink = malloc(sizeof *sink);
    if (sink) {
      sink_init(sink, repl_expire_done, lp->index);
      Grid__Request rq = GRID__REQUEST__INIT;
      rq.op = GRID__OP__EXPIRE_DUE;
      rq.cache = (char *)name;
      rq.key.data = ks.keys[i];
      rq.key.len = ks.lens[i];
      rq.epoch = lp->pmap->epoch;
      repl_run_here(lp, &rq, p, sink);
    }
    free(ks.keys[i]);
  }
  /* Each partition costs one, each removal a few more. */
  size_t used = looked + 1 + ks.n * 4;
  return used >= budget ? 0 : budget - used;
}

void repl_expire_cron(loop_t *lp, int64_t now_ms) {
  struct repl_loop *rl = lp->repl;
  node_t *n = lp->node;
  if (!rl || !lp->pmap || lp->self < 0 || lp->stopping || now_ms < rl->expire_at_ms) return;
  if (!cluster_serving(n->cluster)) return;
  rl->expire_at_ms = now_ms + n->cfg.sweep_interval_ms;
  int loops = loops_count(lp->set);
  size_t budget = (size_t)(n->cfg.sweep_entries_per_tick / loops);
  if (budget < 64) budget = 64;
  store_view_refresh(&lp->view);
  /* Caches in turn, each partition this loop owns and leads, from where
   * the last round stopped (the view's order moves only when caches come
   * and go: a cache may then wait a round more). */
  if (rl->expire_part % (uint32_t)loops != (uint32_t)lp->index) {
    rl->expire_part = (uint32_t)lp->index; /* this loop's partitions only */
    rl->expire_cursor = 0;
  }
  for (size_t k = 0; k < lp->view.n && budget; k++) {
    if (rl->expire_cache >= lp->view.n) {
      rl->expire_cache = 0;
      rl->expire_part = (uint32_t)lp->index;
      rl->expire_cursor = 0;
    }
    /* A reference of its own: running a removal may refresh the view,
     * which lets a cache dropped meanwhile go. */
    store_cache_t *sc = lp->view.caches[rl->expire_cache];
    store_cache_hold(sc);
    const pmap_group_t *g = pmap_find_cache(lp->pmap, store_cache_cfg(sc)->name);
    int kept = store_history_kept(sc);
    while (budget && g && kept && rl->expire_part < g->partitions) {
      uint32_t p = rl->expire_part;
      if (pmap_leads(g, p, lp->self)) budget = repl_expire_part(lp, sc, p, budget);
      else rl->expire_cursor = 0;
      if (rl->expire_cursor == 0) rl->expire_part += (uint32_t)loops;
    }
    int done = budget || !g || !kept || rl->expire_part >= g->partitions;
    store_cache_release(n->store, sc);
    if (done) {
      rl->expire_cache++;
      rl->expire_part = (uint32_t)lp->index;
      rl->expire_cursor = 0;
    }
  }
}
