#include "stream.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "part.h"
#include "pmap.h"

#define STREAM_READ_BATCH 256  /* changes read under one partition lock */
#define STREAM_PUMP_BATCHES 4  /* ... and batches read in a row: then the
                                  partition waits its turn again */

/* The loop's watcher of one cache, shared by its subscriptions of it. */
typedef struct stream_watch {
  store_watch_t w;               /* first: the store hands it back */
  loop_task_t task;              /* posted by wake, at most once at a time */
  loop_t *lp;
  store_cache_t *cache;          /* a reference while subscriptions use it */
  stream_sub_t *subs;
  int dead;                      /* unwatched while its task was posted: the
                                    task frees it */
  struct stream_watch *next;     /* lp->stream_watches */
} stream_watch_t;

struct stream_sub {
  stream_sub_t *next;            /* the watch's subscriptions */
  stream_watch_t *watch;         /* NULL: its cache was dropped (dead) */
  loop_t *lp;
  uint64_t id;
  const stream_out_t *out;
  void *ctx;
  unsigned char *prefix;
  size_t prefix_len;
  unsigned char **keys;          /* affinity tags (part_affinity of each) */
  size_t *key_lens;
  size_t nkeys;
  int keys_only;
  uint32_t nparts;
  uint64_t *pos;                 /* per partition: the last counter passed */
  uint64_t *on;                  /* bitmap: partitions held */
  uint64_t *backlog;             /* bitmap: more to read once there is room */
  uint64_t *snap;                /* bitmap: a snapshot is due first */
  changes_hint_t *hints;         /* per partition: where the last read
                                    stopped in the history */
  int stalled;                   /* the front end took no more */
};

static int stream_bit(const uint64_t *m, uint32_t p) { return (m[p / 64] >> (p % 64)) & 1; }
static void stream_set(uint64_t *m, uint32_t p) { m[p / 64] |= UINT64_C(1) << (p % 64); }
static void stream_clear(uint64_t *m, uint32_t p) { m[p / 64] &= ~(UINT64_C(1) << (p % 64)); }

/* ---- the loop's watchers ------------------------------------------------ */

static void stream_pump(stream_sub_t *s, uint32_t p);

static void stream_dirty(void *ctx, uint32_t p) {
  stream_watch_t *wt = ctx;
  for (stream_sub_t *s = wt->subs; s; s = s->next) {
    if (!stream_bit(s->on, p)) continue;
    if (s->stalled) stream_set(s->backlog, p);
    else stream_pump(s, p);
  }
}

static void stream_task(loop_t *lp, void *arg) {
  (void)lp;
  stream_watch_t *wt = arg;
  if (wt->dead) {
    free(wt);
    return;
  }
  store_watch_take(&wt->w, stream_dirty, wt);
  for (stream_sub_t *s = wt->subs; s; s = s->next) s->out->flush(s->ctx);
}

/* From the announcing thread, the cache's watch lock held. */
static void stream_wake(store_watch_t *w) {
  stream_watch_t *wt = (stream_watch_t *)w;
  /* On the subscriber's own loop (the writer's too) no wake-up is needed:
   * the changes leave before the loop next waits. */
  loops_post_or_defer(wt->lp->set, wt->lp->index, &wt->task);
}

static stream_watch_t *stream_watch_get(loop_t *lp, store_cache_t *cache) {
  for (stream_watch_t *wt = lp->stream_watches; wt; wt = wt->next)
    if (wt->cache == cache) return wt;
  stream_watch_t *wt = calloc(1, sizeof *wt);
  if (!wt) return NULL;
  wt->lp = lp;
  wt->w.wake = stream_wake;
  wt->task.fn = stream_task;
  wt->task.arg = wt;
  if (store_watch_add(cache, &wt->w) != 0) {
    free(wt);
    return NULL;
  }
  store_cache_hold(cache);
  wt->cache = cache;
  wt->next = lp->stream_watches;
  lp->stream_watches = wt;
  return wt;
}

static void stream_watch_put(stream_watch_t *wt) {
  if (wt->subs) return;
  loop_t *lp = wt->lp;
  for (stream_watch_t **at = &lp->stream_watches; *at; at = &(*at)->next) {
    if (*at == wt) {
      *at = wt->next;
      break;
    }
  }
  store_watch_remove(wt->cache, &wt->w);
  store_cache_release(lp->node->store, wt->cache);
  wt->cache = NULL;
  /* No wake runs from now on; one that ran posted the task, which frees
   * it (it runs on this loop, later). */
  if (atomic_load(&wt->w.woken)) wt->dead = 1;
  else free(wt);
}

/* ---- a subscription ----------------------------------------------------- */

static void stream_free(stream_sub_t *s) {
  for (size_t i = 0; i < s->nkeys; i++) free(s->keys[i]);
  free(s->keys);
  free(s->key_lens);
  free(s->prefix);
  free(s->pos);
  free(s->on);
  free(s->backlog);
  free(s->snap);
  free(s->hints);
  free(s);
}

static void *stream_dup(const void *p, size_t n) {
  unsigned char *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, p, n);
  return d;
}

int stream_open(loop_t *lp, store_cache_t *cache, uint64_t id, const stream_filter_t *f,
                const stream_out_t *out, void *ctx, stream_sub_t **sub) {
  node_t *n = lp->node;
  if (atomic_fetch_add(&n->subscriptions, 1) >= n->cfg.subscriptions_max) {
    atomic_fetch_sub(&n->subscriptions, 1);
    return GRID_ELIMIT;
  }
  stream_sub_t *s = calloc(1, sizeof *s);
  uint32_t parts = store_cache_cfg(cache)->partitions;
  size_t words = (parts + 63) / 64;
  int ok = s != NULL;
  if (ok) {
    s->id = id;
    s->out = out;
    s->ctx = ctx;
    s->nparts = parts;
    s->keys_only = f->keys_only;
    s->pos = calloc(parts, sizeof *s->pos);
    s->on = calloc(words, sizeof *s->on);
    s->backlog = calloc(words, sizeof *s->backlog);
    s->snap = calloc(words, sizeof *s->snap);
    s->hints = calloc(parts, sizeof *s->hints);
    ok = s->pos && s->on && s->backlog && s->snap && s->hints;
  }
  if (ok && f->prefix) {
    s->prefix = stream_dup(f->prefix, f->prefix_len);
    s->prefix_len = f->prefix_len;
    ok = s->prefix != NULL;
  }
  if (ok && f->nkeys) {
    s->keys = calloc(f->nkeys, sizeof *s->keys);
    s->key_lens = calloc(f->nkeys, sizeof *s->key_lens);
    ok = s->keys && s->key_lens;
    for (size_t i = 0; ok && i < f->nkeys; i++) {
      const void *tag;
      size_t tag_len;
      part_affinity(f->keys[i], f->key_lens[i], &tag, &tag_len);
      s->keys[i] = stream_dup(tag, tag_len);
      s->key_lens[i] = tag_len;
      s->nkeys = i + 1;
      ok = s->keys[i] != NULL;
    }
  }
  stream_watch_t *wt = ok ? stream_watch_get(lp, cache) : NULL;
  if (!wt) {
    if (s) stream_free(s);
    atomic_fetch_sub(&n->subscriptions, 1);
    return GRID_ENOMEM;
  }
  s->watch = wt;
  s->lp = lp;
  s->next = wt->subs;
  wt->subs = s;
  *sub = s;
  return 0;
}

int stream_dead(const stream_sub_t *s) { return s->watch == NULL; }

uint64_t stream_id(const stream_sub_t *s) { return s->id; }
int stream_keys_only(const stream_sub_t *s) { return s->keys_only; }

/* Whether this node leads p now (a single node leads every partition). */
static int stream_leads(const stream_sub_t *s, uint32_t p) {
  loop_t *lp = s->lp;
  if (!s->watch) return 0;
  if (!lp->node->cluster) return 1;
  if (!lp->pmap) return 0;
  const pmap_group_t *g = pmap_find_cache(lp->pmap, store_cache_cfg(s->watch->cache)->name);
  return g && p < g->partitions && pmap_leads(g, p, lp->self);
}

int stream_take(stream_sub_t *s, uint32_t p, uint64_t after, int now, int snapshot,
                uint64_t *pos) {
  if (!s->watch) return GRID_ENOCACHE;
  if (p >= s->nparts) return GRID_EINVAL;
  if (!stream_leads(s, p)) return GRID_ENOTREADY;
  loop_t *lp = s->lp;
  if (lp->node->cluster) {
    /* The loop that owns p must have brought it up to this map (a
     * promoted copy's committed catches up there) before a position is
     * taken from it. */
    loop_t *owner = loops_at(lp->set, (int)(p % (uint32_t)loops_count(lp->set)));
    if (atomic_load(&owner->repl_epoch) < lp->pmap->epoch) return GRID_ENOTREADY;
  }
  if (now || snapshot) {
    /* Writes in flight when the history began are not in it: wait until
     * they are committed (it takes a round trip to the backups). */
    after = store_part_now(s->watch->cache, p);
    if (after > store_part_announced(s->watch->cache, p)) return GRID_ENOTREADY;
  }
  s->pos[p] = after;
  if (snapshot) stream_set(s->snap, p);
  else stream_clear(s->snap, p);
  stream_set(s->on, p);
  stream_set(s->backlog, p);
  *pos = after;
  return 0;
}

void stream_drop(stream_sub_t *s, uint32_t p) {
  if (p == UINT32_MAX) {
    memset(s->on, 0, (s->nparts + 63) / 64 * sizeof *s->on);
    memset(s->backlog, 0, (s->nparts + 63) / 64 * sizeof *s->backlog);
    memset(s->snap, 0, (s->nparts + 63) / 64 * sizeof *s->snap);
    return;
  }
  if (p >= s->nparts) return;
  stream_clear(s->on, p);
  stream_clear(s->backlog, p);
  stream_clear(s->snap, p);
}

static void stream_detach(stream_sub_t *s) {
  stream_watch_t *wt = s->watch;
  if (!wt) return;
  for (stream_sub_t **at = &wt->subs; *at; at = &(*at)->next) {
    if (*at == s) {
      *at = s->next;
      break;
    }
  }
  s->watch = NULL;
  stream_watch_put(wt);
}

void stream_close(stream_sub_t *s) {
  atomic_fetch_sub(&s->lp->node->subscriptions, 1);
  stream_detach(s);
  stream_free(s);
}

/* Whether key passes s's filter. */
static int stream_passes(const stream_sub_t *s, const void *key, size_t key_len) {
  return part_key_passes(key, key_len, s->prefix, s->prefix_len,
                         (const void *const *)s->keys, s->key_lens, s->nkeys);
}

typedef struct stream_read {
  stream_sub_t *s;
  uint32_t p;
  int full;
} stream_read_t;

static int stream_read_cb(void *ctx, const change_t *ch) {
  stream_read_t *r = ctx;
  stream_sub_t *s = r->s;
  if (!stream_passes(s, ch->key, ch->key_len)) return 0;
  /* The change is passed on even if the front end then says it is full:
   * its position moves past it. */
  r->full = s->out->event(s->ctx, s, r->p, STREAM_EV_CHANGE, ch, ch->counter);
  return r->full;
}

static int stream_snapshot_cb(void *ctx, const void *key, size_t key_len, const void *value,
                              size_t value_len, uint8_t type, uint64_t version,
                              int64_t expire_at_ms) {
  stream_read_t *r = ctx;
  stream_sub_t *s = r->s;
  if (!stream_passes(s, key, key_len)) return 0;
  change_t ch = {.kind = CHANGE_PUT, .type = type, .counter = version & STORE_COUNTER_MASK,
                 .version = version, .expire_at_ms = expire_at_ms, .key = key,
                 .key_len = key_len, .value = value, .value_len = value_len};
  /* A snapshot is sent whole (one partition's matching entries, past
   * output_bytes_max if need be): it cannot stop halfway under the lock. */
  r->full |= s->out->event(s->ctx, s, r->p, STREAM_EV_SNAPSHOT, &ch, 0);
  return 0;
}

/* Reads partition p past the subscription's position, until it has caught
 * up or the front end is full (then p waits in the backlog). A snapshot
 * due comes first: the entries as of a counter, then the changes after. */
static void stream_pump(stream_sub_t *s, uint32_t p) {
  stream_clear(s->backlog, p);
  if (stream_bit(s->snap, p)) {
    stream_clear(s->snap, p);
    stream_read_t r = {s, p, 0};
    uint64_t upto;
    store_snapshot(s->watch->cache, p, clock_wall_ms(), stream_snapshot_cb, &r, &upto);
    s->pos[p] = upto;
    r.full |= s->out->event(s->ctx, s, p, STREAM_EV_SNAPSHOT_END, NULL, upto);
    if (r.full) {
      s->stalled = 1;
      stream_set(s->backlog, p);
      return;
    }
  }
  for (int batch = 0;; batch++) {
    if (batch == STREAM_PUMP_BATCHES) {
      /* Its turn again later: the loop has other work. */
      stream_set(s->backlog, p);
      store_watch_poke(&s->watch->w, p);
      return;
    }
    stream_read_t r = {s, p, 0};
    uint64_t next, upto, before = s->pos[p];
    int rc = store_changes_read(s->watch->cache, p, before, STREAM_READ_BATCH,
                                stream_read_cb, &r, &next, &upto, &s->hints[p]);
    if (rc == CHANGES_OK && next == before && before < upto) {
      /* Announced, yet not in the history (it kept nothing since): a gap
       * too, never a silent skip. */
      rc = CHANGES_GAP;
      next = upto;
    }
    if (rc == CHANGES_GAP) {
      s->pos[p] = next;
      r.full = s->out->event(s->ctx, s, p, STREAM_EV_GAP, NULL, next);
    } else {
      s->pos[p] = next;
    }
    if (r.full) {
      s->stalled = 1;
      stream_set(s->backlog, p);
      return;
    }
    if (s->pos[p] >= upto) return;
  }
}

void stream_start(stream_sub_t *s) {
  stream_resume(s);
}

void stream_resume(stream_sub_t *s) {
  if (!s->watch) return;
  s->stalled = 0;
  size_t words = (s->nparts + 63) / 64;
  for (size_t i = 0; i < words && !s->stalled; i++) {
    /* The partitions waiting now, each once: one that stops at its bound
     * is marked again, and waits its turn (store_watch_poke). */
    uint64_t bits = s->backlog[i];
    while (bits && !s->stalled) {
      uint32_t p = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(bits));
      bits &= bits - 1;
      stream_pump(s, p);
    }
  }
  s->out->flush(s->ctx);
}

void stream_on_map(loop_t *lp) {
  for (stream_watch_t *wt = lp->stream_watches; wt; wt = wt->next) {
    for (stream_sub_t *s = wt->subs; s; s = s->next) {
      size_t words = (s->nparts + 63) / 64;
      int ended = 0;
      for (size_t i = 0; i < words; i++) {
        uint64_t bits = s->on[i];
        while (bits) {
          uint32_t p = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(bits));
          bits &= bits - 1;
          if (stream_leads(s, p)) continue;
          /* What was committed while it led is passed first. */
          if (!s->stalled) stream_pump(s, p);
          stream_drop(s, p);
          s->out->event(s->ctx, s, p, STREAM_EV_END, NULL, s->pos[p]);
          ended = 1;
        }
      }
      if (ended) s->out->flush(s->ctx);
    }
  }
}

void stream_cron(loop_t *lp, int64_t now_ms) {
  (void)now_ms;
  stream_watch_t *next;
  for (stream_watch_t *wt = lp->stream_watches; wt; wt = next) {
    next = wt->next;
    const char *name = store_cache_cfg(wt->cache)->name;
    if (store_view_find(&lp->view, name, strlen(name)) == wt->cache) continue;
    /* Dropped (perhaps made again): its subscriptions end here. A client
     * that subscribes again finds the new cache, or none. */
    stream_sub_t *list = wt->subs;
    wt->subs = NULL;
    for (stream_sub_t *s = list, *sn; s; s = sn) {
      sn = s->next;
      /* Not END: its positions mean nothing in a cache made anew. */
      s->out->event(s->ctx, s, 0, STREAM_EV_DROPPED, NULL, 0);
      stream_drop(s, UINT32_MAX);
      s->out->flush(s->ctx);
      s->watch = NULL;
      s->next = NULL;
    }
    stream_watch_put(wt);
  }
}
