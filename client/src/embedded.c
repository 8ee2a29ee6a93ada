/*
 * embedded: the node inside the application's process. The only file of
 * the client that includes the node's headers (docs/architecture.md): the
 * rest of the client sees an embedded_t and these calls.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "clock.h"
#include "cluster.h"
#include "disk.h"
#include "config.h"
#include "log.h"
#include "loop.h"
#include "node.h"
#include "ops.h"
#include "part.h"
#include "route.h"
#include "sink.h"
#include "store.h"

struct embedded {
  node_t *node;
};

int embedded_open(const grid_options_t *opts, embedded_t **out, char *advertise,
                  size_t advertise_len) {
  config_t cfg;
  config_defaults(&cfg);
  cfg.listen = 0; /* an embedded node listens only when its config says so */
  char err[512];
  if (opts && opts->config_path &&
      config_load_file(&cfg, opts->config_path, err, sizeof err) != 0) {
    LOG_E("client", "\"embedded config refused\" reason=\"%s\"", err);
    return GRID_ECONFIG;
  }
  if (opts && opts->config_text &&
      config_apply_text(&cfg, opts->config_text, "config_text", err, sizeof err) != 0) {
    LOG_E("client", "\"embedded config refused\" reason=\"%s\"", err);
    return GRID_ECONFIG;
  }
  embedded_t *e = calloc(1, sizeof *e);
  if (!e) return GRID_ENOMEM;
  int rc = node_start(&cfg, &e->node, err, sizeof err);
  if (rc != 0) {
    LOG_E("client", "\"embedded node did not start\" reason=\"%s\"", err);
    free(e);
    return rc;
  }
  advertise[0] = '\0';
  if (e->node->cluster) snprintf(advertise, advertise_len, "%s", e->node->advertise);
  *out = e;
  return 0;
}

void embedded_close(embedded_t *e) {
  if (!e) return;
  node_stop(e->node);
  free(e);
}

void embedded_call(embedded_t *e, const Grid__Request *rq, Grid__Reply *rp, arena_t *a) {
  ops_execute(e->node, NULL, rq, rp, a);
  /* A write of an fsync = always cache returns once it is on disk. */
  if (disk_pending()) disk_settle();
}

static void *embedded_malloc_cb(void *ctx, size_t n) {
  (void)ctx;
  return malloc(n);
}

int embedded_get(embedded_t *e, const char *cache, const void *key, size_t key_len,
                 void **value, size_t *value_len, uint64_t *version) {
  node_t *n = e->node;
  int rc = store_check_sizes(n->store, key_len, 0);
  if (rc != 0) return rc;
  store_cache_t *c = store_cache_acquire(n->store, cache, strlen(cache));
  if (!c) return GRID_ENOCACHE;
  store_key_t k;
  store_key_init(c, key, key_len, &k);
  rc = store_get(c, &k, STORE_NOW_LAZY, embedded_malloc_cb, NULL, value, value_len, version);
  store_cache_release(n->store, c);
  atomic_fetch_add_explicit(&n->ops, 1, memory_order_relaxed);
  return rc;
}

/* An embedded cluster member's read of a key it leads, in the calling
 * thread: GRID_ENOTREADY sends it the way of any client's (the node does
 * not lead the key's partition, a write to it is not committed yet, the
 * node is not serving, or the cache is not here yet). */
int embedded_get_led(embedded_t *e, const char *cache, const void *key, size_t key_len,
                     void **value, size_t *value_len, uint64_t *version) {
  node_t *n = e->node;
  if (!n->cluster || !cluster_serving(n->cluster)) return GRID_ENOTREADY;
  int rc = store_check_sizes(n->store, key_len, 0);
  if (rc != 0) return rc;
  store_cache_t *c = store_cache_acquire(n->store, cache, strlen(cache));
  if (!c) return GRID_ENOTREADY;
  store_key_t k;
  store_key_init(c, key, key_len, &k);
  rc = store_get_committed(c, &k, STORE_NOW_LAZY, embedded_malloc_cb, NULL, value, value_len,
                           version);
  store_cache_release(n->store, c);
  if (rc == GRID_ENOTREADY) return rc;
  /* The lease is checked again after the read, as a loop checks it before
   * a reply leaves: a process paused past its session never answers from a
   * role it may have lost meanwhile. */
  if (!cluster_serving(n->cluster)) {
    if (rc == 0) free(*value);
    return GRID_ENOTREADY;
  }
  atomic_fetch_add_explicit(&n->ops, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&n->local_reads, 1, memory_order_relaxed);
  return rc;
}

/* GET_PREFIX's gathering, in the calling thread. */
typedef struct embedded_prefix {
  const void *prefix;
  size_t len, max, n, cap;
  grid_entry_t *list;
  int failed;
} embedded_prefix_t;

static int embedded_prefix_cb(void *ctx, const void *key, size_t key_len, const void *value,
                              size_t value_len, uint64_t version) {
  embedded_prefix_t *p = ctx;
  if (key_len < p->len || memcmp(key, p->prefix, p->len) != 0) return 0;
  if (p->n == p->max) {
    p->failed = GRID_ELIMIT;
    return 1;
  }
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 64;
    grid_entry_t *l = realloc(p->list, cap * sizeof *l);
    if (!l) {
      p->failed = GRID_ENOMEM;
      return 1;
    }
    p->list = l;
    p->cap = cap;
  }
  /* As client.c's lists: key and value in one allocation, freed by key. */
  unsigned char *mem = malloc(key_len + value_len + 2);
  if (!mem) {
    p->failed = GRID_ENOMEM;
    return 1;
  }
  if (key_len) memcpy(mem, key, key_len);
  mem[key_len] = '\0';
  if (value_len) memcpy(mem + key_len + 1, value, value_len);
  mem[key_len + 1 + value_len] = '\0';
  p->list[p->n++] = (grid_entry_t){mem, key_len, mem + key_len + 1, value_len, version};
  return 0;
}

int embedded_get_prefix_led(embedded_t *e, const char *cache, const void *prefix,
                            size_t prefix_len, uint32_t max, grid_entry_t **entries, size_t *n) {
  node_t *nd = e->node;
  if (!nd->cluster || !cluster_serving(nd->cluster)) return GRID_ENOTREADY;
  const void *aff;
  size_t aff_len;
  part_affinity(prefix, prefix_len, &aff, &aff_len);
  if (aff_len >= prefix_len || store_check_sizes(nd->store, prefix_len, 0) != 0)
    return GRID_ENOTREADY; /* the node's words for it */
  store_cache_t *c = store_cache_acquire(nd->store, cache, strlen(cache));
  if (!c) return GRID_ENOTREADY;
  size_t limit = (size_t)nd->cfg.batch_keys_max;
  embedded_prefix_t p = {.prefix = prefix, .len = prefix_len,
                         .max = max && max < limit ? max : limit};
  store_key_t k;
  store_key_init(c, prefix, prefix_len, &k);
  int rc = store_scan_committed(c, k.part, clock_wall_ms(), embedded_prefix_cb, &p);
  store_cache_release(nd->store, c);
  if (rc == 0) rc = p.failed;
  /* The lease again after the read, as embedded_get_led. */
  if (rc == 0 && !cluster_serving(nd->cluster)) rc = GRID_ENOTREADY;
  if (rc != 0) {
    for (size_t i = 0; i < p.n; i++) free(p.list[i].key);
    free(p.list);
    return rc == GRID_ELIMIT ? GRID_ENOTREADY : rc; /* the node words a refusal */
  }
  atomic_fetch_add_explicit(&nd->ops, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&nd->local_reads, 1, memory_order_relaxed);
  *entries = p.list ? p.list : calloc(1, sizeof **entries);
  *n = p.n;
  return *entries ? 0 : GRID_ENOMEM;
}

/* ---- an embedded cluster member's requests, handed to its loops ----------- */

int embedded_leads(embedded_t *e, const char *cache, const void *key, size_t key_len,
                   uint32_t *part) {
  node_t *n = e->node;
  if (!n->cluster || !n->loops) return 0;
  store_cache_t *c = store_cache_acquire(n->store, cache, strlen(cache));
  if (!c) return 0;
  store_key_t k;
  store_key_init(c, key, key_len, &k);
  int led = atomic_load(&store_part_sync(c, k.part)->led);
  *part = k.part;
  store_cache_release(n->store, c);
  return led;
}

/* One request on its way through the node: the caller waits for it, or
 * gives up (a deadline); the last of the two to let go frees it. */
typedef struct embedded_req {
  loop_task_t task;
  sink_t sink;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int refs;
  int done;
  unsigned char *rq_bytes;    /* the request, packed: the caller may be gone
                                 by the time it runs */
  size_t rq_len;
  unsigned char *rp_bytes;    /* the reply, packed */
  size_t rp_len;
  int status;                 /* GRID_ENOMEM: the reply could not be kept */
} embedded_req_t;

static void embedded_req_unref(embedded_req_t *q) {
  pthread_mutex_lock(&q->lock);
  int last = --q->refs == 0;
  pthread_mutex_unlock(&q->lock);
  if (!last) return;
  pthread_mutex_destroy(&q->lock);
  pthread_cond_destroy(&q->cond);
  free(q->rq_bytes);
  free(q->rp_bytes);
  free(q);
}

/* On the loop: the reply, kept packed for the caller's thread. */
static void embedded_req_reply(loop_t *lp, sink_t *s, const Grid__Reply *rp) {
  (void)lp;
  if (disk_pending()) disk_settle(); /* the reply covers only what is on disk */
  embedded_req_t *q = (embedded_req_t *)(void *)((char *)s - offsetof(embedded_req_t, sink));
  size_t len = grid__reply__get_packed_size(rp);
  unsigned char *b = malloc(len ? len : 1);
  pthread_mutex_lock(&q->lock);
  if (b) {
    grid__reply__pack(rp, b);
    q->rp_bytes = b;
    q->rp_len = len;
  } else {
    q->status = GRID_ENOMEM;
  }
  q->done = 1;
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
  embedded_req_unref(q);
}

/* On the loop: the request runs as a client's would (route_run). */
static void embedded_req_run(loop_t *lp, void *arg) {
  embedded_req_t *q = arg;
  Grid__Request *rq = grid__request__unpack(&lp->arena.pb, q->rq_len, q->rq_bytes);
  if (!rq) {
    sink_error(lp, &q->sink, 0, GRID_ENOMEM, NULL);
  } else {
    route_from_t from = {.addr = "embedded"};
    route_run(lp, rq, &from, &q->sink);
  }
  arena_reset(&lp->arena);
}

int embedded_call_loop(embedded_t *e, const Grid__Request *rq, uint32_t part, uint32_t timeout_ms,
                       Grid__Reply **out) {
  node_t *n = e->node;
  embedded_req_t *q = calloc(1, sizeof *q);
  size_t len = grid__request__get_packed_size(rq);
  unsigned char *b = q ? malloc(len ? len : 1) : NULL;
  if (!b) {
    free(q);
    return GRID_ENOMEM;
  }
  grid__request__pack(rq, b);
  q->rq_bytes = b;
  q->rq_len = len;
  q->refs = 2; /* the caller's, and the reply's */
  pthread_mutex_init(&q->lock, NULL);
  clock_cond_init(&q->cond);
  /* The loop that owns the partition: no handoff there. */
  int loop = (int)(part % (uint32_t)loops_count(n->loops));
  sink_init(&q->sink, embedded_req_reply, loop);
  q->task = (loop_task_t){.fn = embedded_req_run, .arg = q};
  loops_post(n->loops, loop, &q->task);
  struct timespec until = clock_mono_deadline(timeout_ms);
  pthread_mutex_lock(&q->lock);
  while (!q->done && pthread_cond_timedwait(&q->cond, &q->lock, &until) == 0) {
  }
  int done = q->done, status = q->status;
  unsigned char *rp_bytes = q->rp_bytes;
  size_t rp_len = q->rp_len;
  q->rp_bytes = NULL;
  pthread_mutex_unlock(&q->lock);
  embedded_req_unref(q);
  if (!done) return op_is_write(rq->op) ? GRID_EUNKNOWN : GRID_ETIMEDOUT;
  if (status != 0) {
    free(rp_bytes);
    return status;
  }
  *out = grid__reply__unpack(NULL, rp_len, rp_bytes);
  free(rp_bytes);
  return *out ? 0 : GRID_ENOMEM;
}

/* ---- change streams of an embedded node outside a cluster ---------------- */

struct embedded_watch {
  store_watch_t w;              /* first: the store hands it back */
  node_t *node;
  store_cache_t *cache;         /* a reference */
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* woken */
  int woken;
};

/* From a writing thread, the cache's watch lock held: a signal only. */
static void embedded_wake(store_watch_t *w) {
  embedded_watch_t *ew = (embedded_watch_t *)w;
  pthread_mutex_lock(&ew->lock);
  ew->woken = 1;
  pthread_cond_signal(&ew->cond);
  pthread_mutex_unlock(&ew->lock);
}

int embedded_watch_open(embedded_t *e, const char *cache, embedded_watch_t **out,
                        uint32_t *partitions) {
  store_cache_t *c = store_cache_acquire(e->node->store, cache, strlen(cache));
  if (!c) return GRID_ENOCACHE;
  embedded_watch_t *ew = calloc(1, sizeof *ew);
  if (!ew) {
    store_cache_release(e->node->store, c);
    return GRID_ENOMEM;
  }
  ew->node = e->node;
  ew->cache = c;
  ew->w.wake = embedded_wake;
  pthread_mutex_init(&ew->lock, NULL);
  clock_cond_init(&ew->cond);
  if (store_watch_add(c, &ew->w) != 0) {
    embedded_watch_close(ew);
    return GRID_ENOMEM;
  }
  *partitions = store_cache_cfg(c)->partitions;
  *out = ew;
  return 0;
}

void embedded_watch_close(embedded_watch_t *ew) {
  if (!ew) return;
  if (ew->w.dirty) store_watch_remove(ew->cache, &ew->w);
  store_cache_release(ew->node->store, ew->cache);
  pthread_mutex_destroy(&ew->lock);
  pthread_cond_destroy(&ew->cond);
  free(ew);
}

int embedded_watch_wait(embedded_watch_t *ew, uint32_t timeout_ms) {
  struct timespec ts = clock_mono_deadline(timeout_ms);
  pthread_mutex_lock(&ew->lock);
  while (!ew->woken && pthread_cond_timedwait(&ew->cond, &ew->lock, &ts) == 0) {
  }
  int woken = ew->woken;
  ew->woken = 0;
  pthread_mutex_unlock(&ew->lock);
  return woken;
}

void embedded_watch_take(embedded_watch_t *ew, void (*fn)(void *ctx, uint32_t p), void *ctx) {
  store_watch_take(&ew->w, fn, ctx);
}

int embedded_watch_dropped(embedded_watch_t *ew) {
  const char *name = store_cache_cfg(ew->cache)->name;
  store_cache_t *now = store_cache_acquire(ew->node->store, name, strlen(name));
  if (now) store_cache_release(ew->node->store, now);
  return now != ew->cache;
}

uint64_t embedded_watch_now(embedded_watch_t *ew, uint32_t p) {
  return store_part_now(ew->cache, p);
}

/* Changes copied out of the store under its partition lock, passed on
 * after it is released: the receiver may block (a full queue) or write to
 * the same partition (a callback) without holding writers up. */
typedef struct embedded_batch {
  embedded_change_t *v;
  unsigned char **mem;
  size_t n, cap;
  int failed;
  const embedded_filter_t *filter; /* applied before copying */
  uint64_t last;                /* the counter of the last change looked at
                                   and left out, or copied */
} embedded_batch_t;

static void embedded_batch_add(embedded_batch_t *b, const embedded_change_t *ch) {
  if (b->failed) return;
  if (b->filter && !b->filter->keep(b->filter->ctx, ch->key, ch->key_len)) {
    b->last = ch->counter;
    return;
  }
  embedded_change_t c0 = *ch;
  if (b->filter && b->filter->keys_only) {
    c0.value = NULL;
    c0.value_len = 0;
  }
  ch = &c0;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    embedded_change_t *v = realloc(b->v, cap * sizeof *v);
    if (v) b->v = v;
    unsigned char **m = v ? realloc(b->mem, cap * sizeof *m) : NULL;
    if (m) b->mem = m;
    if (!v || !m) {
      b->failed = 1;
      return;
    }
    b->cap = cap;
  }
  unsigned char *mem = malloc(ch->key_len + ch->value_len + 1);
  if (!mem) {
    b->failed = 1;
    return;
  }
  if (ch->key_len) memcpy(mem, ch->key, ch->key_len);
  if (ch->value_len) memcpy(mem + ch->key_len, ch->value, ch->value_len);
  embedded_change_t *c = &b->v[b->n];
  *c = *ch;
  c->key = mem;
  c->value = ch->value ? mem + ch->key_len : NULL;
  b->mem[b->n++] = mem;
  b->last = ch->counter;
}

/* Passes the batch on and frees it; 1 when the receiver asked to stop. */
static int embedded_batch_deliver(embedded_batch_t *b,
                                  int (*cb)(void *ctx, const embedded_change_t *ch), void *ctx) {
  int stop = 0;
  for (size_t i = 0; i < b->n; i++) {
    if (!stop) stop = cb(ctx, &b->v[i]);
    free(b->mem[i]);
  }
  free(b->v);
  free(b->mem);
  return stop;
}

static int embedded_read_cb(void *ctx, const change_t *c) {
  embedded_change_t ch = {.kind = (int)c->kind, .how = c->how, .type = c->type,
                          .counter = c->counter,
                          .version = c->version, .expire_at_ms = c->expire_at_ms,
                          .key = c->key, .key_len = c->key_len,
                          .value = c->kind == CHANGE_PUT ? c->value : NULL,
                          .value_len = c->value_len};
  embedded_batch_add(ctx, &ch);
  return ((embedded_batch_t *)ctx)->failed;
}

int embedded_watch_read(embedded_watch_t *ew, uint32_t p, uint64_t after, size_t max,
                        const embedded_filter_t *f,
                        int (*cb)(void *ctx, const embedded_change_t *ch), void *ctx,
                        uint64_t *next, uint64_t *upto, uint64_t hint[3]) {
  changes_hint_t h = {hint[0], hint[1], (size_t)hint[2]};
  embedded_batch_t b = {.filter = f, .last = after};
  int rc = store_changes_read(ew->cache, p, after, max, embedded_read_cb, &b, next, upto, &h);
  hint[0] = h.gen;
  hint[1] = h.counter;
  hint[2] = h.pos;
  int failed = b.failed;
  if (failed) {
    /* Out of memory: what was copied goes on; the rest is read again. */
    *next = b.last;
    hint[0] = 0;
  }
  embedded_batch_deliver(&b, cb, ctx);
  return failed ? -1 : rc == CHANGES_GAP ? 1 : 0;
}

static int embedded_snap_cb(void *ctx, const void *key, size_t key_len, const void *value,
                            size_t value_len, uint8_t type, uint64_t version,
                            int64_t expire_at_ms) {
  embedded_change_t ch = {.kind = CHANGE_PUT, .type = type, .counter = version & STORE_COUNTER_MASK,
                          .version = version, .expire_at_ms = expire_at_ms, .key = key,
                          .key_len = key_len, .value = value, .value_len = value_len};
  embedded_batch_add(ctx, &ch);
  return 0;
}

uint64_t embedded_watch_snapshot(embedded_watch_t *ew, uint32_t p, const embedded_filter_t *f,
                                 int (*cb)(void *ctx, const embedded_change_t *ch), void *ctx,
                                 int *failed) {
  embedded_batch_t b = {.filter = f};
  uint64_t upto;
  store_snapshot(ew->cache, p, clock_wall_ms(), embedded_snap_cb, &b, &upto);
  *failed = b.failed;
  embedded_batch_deliver(&b, cb, ctx);
  return upto;
}
