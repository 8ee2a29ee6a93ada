#include "ops.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "auth.h"
#include "clock.h"
#include "coll.h"
#include "disk.h"
#include "glob.h"
#include "grid_types.h"
#include "log.h"
#include "notify.h"
#include "op.h"
#include "part.h"

void ops_reply_error(Grid__Reply *rp, int status, const char *detail,
                     arena_t *a) {
  rp->status = status;
  if (!detail) {
    rp->message = (char *)grid_strerror(status);
    return;
  }
  size_t n = strlen(grid_strerror(status)) + strlen(detail) + 3;
  char *m = arena_alloc(a, n);
  if (!m) {
    rp->message = (char *)grid_strerror(status);
    return;
  }
  snprintf(m, n, "%s: %s", grid_strerror(status), detail);
  rp->message = m;
}

static void *ops_arena_alloc(void *ctx, size_t n) { return arena_alloc(ctx, n); }

/* Looks the request's cache up; on failure the reply says why. Without a
 * view the caller holds a reference and releases it. */
static store_cache_t *ops_cache(node_t *n, store_view_t *view,
                                const Grid__Request *rq, Grid__Reply *rp,
                                arena_t *a) {
  const char *name = rq->cache ? rq->cache : "";
  store_cache_t *c = view ? store_view_find(view, name, strlen(name))
                          : store_cache_acquire(n->store, name, strlen(name));
  if (!c) {
    char detail[96];
    snprintf(detail, sizeof detail, "\"%.64s\"", name);
    ops_reply_error(rp, GRID_ENOCACHE, detail, a);
  }
  return c;
}

static int ops_check_key(node_t *n, const ProtobufCBinaryData *key,
                         size_t value_len, Grid__Reply *rp, arena_t *a) {
  int rc = store_check_sizes(n->store, key->len, value_len);
  if (rc == 0) return 0;
  char detail[96];
  snprintf(detail, sizeof detail, "%zu bytes, at most %lld",
           rc == GRID_EKEYTOOBIG ? key->len : value_len,
           (long long)(rc == GRID_EKEYTOOBIG ? n->cfg.key_bytes_max
                                             : n->cfg.value_bytes_max));
  ops_reply_error(rp, rc, detail, a);
  return rc;
}

static int ops_check_batch(node_t *n, size_t count, Grid__Reply *rp,
                           arena_t *a) {
  if ((int64_t)count <= n->cfg.batch_keys_max) return 0;
  char detail[96];
  snprintf(detail, sizeof detail, "%zu keys, at most %lld", count,
           (long long)n->cfg.batch_keys_max);
  ops_reply_error(rp, GRID_EBATCHTOOBIG, detail, a);
  return GRID_EBATCHTOOBIG;
}

/* A reply has to fit in one frame: batches and scans whose values add up to
 * more than frame_bytes_max are refused rather than built. */
static int ops_reply_too_big(node_t *n, size_t bytes, Grid__Reply *rp,
                             arena_t *a) {
  if (bytes <= (size_t)n->cfg.frame_bytes_max) return 0;
  char detail[128];
  snprintf(detail, sizeof detail,
           "the reply would pass frame_bytes_max (%lld): ask for fewer entries",
           (long long)n->cfg.frame_bytes_max);
  ops_reply_error(rp, GRID_ELIMIT, detail, a);
  return GRID_ELIMIT;
}

static void ops_get(node_t *n, store_cache_t *c, const Grid__Request *rq,
                    Grid__Reply *rp, arena_t *a) {
  if (ops_check_key(n, &rq->key, 0, rp, a)) return;
  store_key_t k;
  store_key_init(c, rq->key.data, rq->key.len, &k);
  void *v;
  size_t vlen;
  uint64_t ver;
  int rc = store_get(c, &k, STORE_NOW_LAZY, ops_arena_alloc, a, &v, &vlen, &ver);
  if (rc != 0) {
    ops_reply_error(rp, rc, NULL, a);
    return;
  }
  rp->value.data = v;
  rp->value.len = vlen;
  rp->version = ver;
}

static store_op_t ops_store_op(Grid__Op op) {
  switch (op) {
    case GRID__OP__PUT_IF_ABSENT: return STORE_PUT_IF_ABSENT;
    case GRID__OP__REPLACE: return STORE_REPLACE;
    case GRID__OP__CAS: return STORE_CAS;
    case GRID__OP__DELETE: case GRID__OP__GET_AND_DELETE: return STORE_DELETE;
    case GRID__OP__ADD: return STORE_ADD;
    case GRID__OP__APPEND: return STORE_APPEND;
    case GRID__OP__EXPIRE: return STORE_EXPIRE;
    case GRID__OP__EXPIRE_DUE: return STORE_REMOVE_EXPIRED;
    default: return STORE_PUT;
  }
}

static void ops_ttl(node_t *n, store_cache_t *c, const Grid__Request *rq,
                    Grid__Reply *rp, arena_t *a) {
  if (ops_check_key(n, &rq->key, 0, rp, a)) return;
  store_key_t k;
  store_key_init(c, rq->key.data, rq->key.len, &k);
  int64_t now = clock_wall_ms(), expire_at = 0;
  uint64_t version = 0;
  uint8_t type = 0;
  int rc = store_expiry(c, &k, now, &expire_at, &version, &type);
  if (rc != 0) {
    ops_reply_error(rp, rc, NULL, a);
    return;
  }
  rp->version = version; /* what WATCH remembers */
  rp->value_type = type;  /* what TYPE says */
  if (rq->expire_absolute) rp->number = expire_at == 0 ? -1 : expire_at;
  else rp->number = expire_at == 0 ? -1 : (expire_at > now ? expire_at - now : 0);
}

static void ops_write(node_t *n, store_cache_t *c, const Grid__Request *rq,
                      Grid__Reply *rp, arena_t *a, store_applied_fn applied,
                      void *ctx) {
  if (ops_check_key(n, &rq->key, rq->value.len, rp, a)) return;
  store_key_t k;
  store_key_init(c, rq->key.data, rq->key.len, &k);
  store_write_t w = {
      .op = ops_store_op(rq->op),
      .value = rq->value.data,
      .value_len = rq->value.len,
      .ttl_ms = rq->ttl_ms,
      .expected_version = rq->version,
      .delta = rq->delta,
      .cond = rq->cond,
      .keep_ttl = rq->keep_ttl,
      .expire_ms = rq->expire_ms,
      .persist = rq->persist,
      .expire_absolute = rq->expire_absolute,
      .expire_cond = rq->op == GRID__OP__EXPIRE ? rq->cond : 0,
      .how = (uint8_t)rq->op,
  };
  if (rq->op == GRID__OP__GET_AND_PUT || rq->op == GRID__OP__GET_AND_DELETE) {
    w.old_alloc = ops_arena_alloc;
    w.old_ctx = a;
  }
  store_result_t res = {0};
  int rc = store_write_rec(c, &k, &w, clock_wall_ms(), &res, applied, ctx);
  if (res.old_value) { /* also when a condition refused the write */
    rp->found = 1;
    rp->value.data = res.old_value;
    rp->value.len = res.old_len;
  }
  if (rc != 0) {
    ops_reply_error(rp, rc, NULL, a);
    return;
  }
  rp->version = res.version;
  rp->number = res.number;
}

static void ops_get_all(node_t *n, store_cache_t *c, const Grid__Request *rq,
                        Grid__Reply *rp, arena_t *a) {
  if (ops_check_batch(n, rq->n_keys, rp, a)) return;
  Grid__Entry **list = arena_alloc(a, (rq->n_keys + 1) * sizeof *list);
  Grid__Entry *ents = arena_alloc(a, (rq->n_keys + 1) * sizeof *ents);
  if (!list || !ents) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  int64_t now = clock_wall_ms();
  size_t reply_bytes = 0;
  for (size_t i = 0; i < rq->n_keys; i++) {
    if (ops_check_key(n, &rq->keys[i], 0, rp, a)) return;
    Grid__Entry *e = &ents[i];
    grid__entry__init(e);
    store_key_t k;
    store_key_init(c, rq->keys[i].data, rq->keys[i].len, &k);
    void *v;
    size_t vlen;
    uint64_t ver;
    int rc = store_get(c, &k, now, ops_arena_alloc, a, &v, &vlen, &ver);
    if (rc == GRID_ENOMEM) {
      ops_reply_error(rp, rc, NULL, a);
      return;
    }
    e->key = rq->keys[i];
    if (rc == 0) {
      reply_bytes += rq->keys[i].len + vlen + 16;
      if (ops_reply_too_big(n, reply_bytes, rp, a)) return;
      e->found = 1;
      e->value.data = v;
      e->value.len = vlen;
      e->version = ver;
    }
    list[i] = e;
  }
  rp->entries = list;
  rp->n_entries = rq->n_keys;
}

static void ops_put_all(node_t *n, store_cache_t *c, const Grid__Request *rq,
                        Grid__Reply *rp, arena_t *a) {
  if (ops_check_batch(n, rq->n_keys, rp, a)) return;
  if (rq->n_values != rq->n_keys) {
    ops_reply_error(rp, GRID_EINVAL, "put_all needs as many values as keys", a);
    return;
  }
  /* Every size is checked before anything is written, so that a refused
   * batch leaves nothing behind. */
  for (size_t i = 0; i < rq->n_keys; i++)
    if (ops_check_key(n, &rq->keys[i], rq->values[i].len, rp, a)) return;
  int64_t now = clock_wall_ms();
  for (size_t i = 0; i < rq->n_keys; i++) {
    store_key_t k;
    store_key_init(c, rq->keys[i].data, rq->keys[i].len, &k);
    store_write_t w = {.op = STORE_PUT, .how = GRID__OP__PUT_ALL,
                       .value = rq->values[i].data,
                       .value_len = rq->values[i].len,
                       .ttl_ms = rq->ttl_ms};
    store_result_t res;
    int rc = store_write(c, &k, &w, now, &res);
    if (rc != 0) {
      char detail[64];
      snprintf(detail, sizeof detail, "after %zu of %zu entries were written",
               i, rq->n_keys);
      ops_reply_error(rp, rc, detail, a);
      rp->number = (int64_t)i;
      return;
    }
  }
  rp->number = (int64_t)rq->n_keys;
}

static void ops_delete_all(node_t *n, store_cache_t *c, const Grid__Request *rq,
                           Grid__Reply *rp, arena_t *a) {
  if (ops_check_batch(n, rq->n_keys, rp, a)) return;
  for (size_t i = 0; i < rq->n_keys; i++)
    if (ops_check_key(n, &rq->keys[i], 0, rp, a)) return;
  int64_t now = clock_wall_ms(), deleted = 0;
  for (size_t i = 0; i < rq->n_keys; i++) {
    store_key_t k;
    store_key_init(c, rq->keys[i].data, rq->keys[i].len, &k);
    store_write_t w = {.op = STORE_DELETE, .how = GRID__OP__DELETE_ALL};
    store_result_t res;
    if (store_write(c, &k, &w, now, &res) == 0) deleted++;
  }
  rp->number = deleted;
}

/* BATCH: the writes and checks of one partition, all or none. */
static void ops_batch(node_t *n, store_cache_t *c, const Grid__Request *rq,
                      Grid__Reply *rp, arena_t *a, store_applied_fn applied, void *ctx) {
  size_t cnt = rq->n_batch;
  if (cnt == 0) {
    ops_reply_error(rp, GRID_EINVAL, "an empty batch", a);
    return;
  }
  if (ops_check_batch(n, cnt, rp, a)) return;
  store_batch_op_t *ops = arena_alloc(a, cnt * sizeof *ops);
  if (!ops) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  store_key_t routed;
  store_key_init(c, rq->key.data, rq->key.len, &routed);
  /* Its record carries every entry in one frame: refused here rather than
   * written and then not replicated. */
  size_t bytes = 0;
  char detail[160];
  for (size_t i = 0; i < cnt; i++) {
    const Grid__BatchOp *bo = rq->batch[i];
    if (ops_check_key(n, &bo->key, bo->kind == GRID__BATCH_KIND__BATCH_PUT ? bo->value.len : 0,
                      rp, a))
      return;
    store_batch_op_t *op = &ops[i];
    memset(op, 0, sizeof *op);
    store_key_init(c, bo->key.data, bo->key.len, &op->key);
    if (op->key.part != routed.part) {
      snprintf(detail, sizeof detail,
               "op %zu: its key is in another partition than the batch's (a batch is one "
               "partition's: give its keys one affinity part, \"{thing}.name\")", i);
      ops_reply_error(rp, GRID_EINVAL, detail, a);
      rp->number = (int64_t)i;
      return;
    }
    if (bo->kind < GRID__BATCH_KIND__BATCH_PUT || bo->kind > GRID__BATCH_KIND__BATCH_CHECK ||
        bo->cond < GRID__BATCH_COND__COND_ANY || bo->cond > GRID__BATCH_COND__COND_VERSION) {
      snprintf(detail, sizeof detail, "op %zu: kind %d or condition %d is not known", i,
               (int)bo->kind, (int)bo->cond);
      ops_reply_error(rp, GRID_EINVAL, detail, a);
      rp->number = (int64_t)i;
      return;
    }
    op->kind = (int)bo->kind; /* the store's numbers are the protocol's */
    op->cond = (int)bo->cond;
    op->value = bo->value.data ? bo->value.data : (const uint8_t *)"";
    op->value_len = bo->value.len;
    op->ttl_ms = bo->ttl_ms;
    op->version = bo->version;
    bytes += bo->key.len + bo->value.len + 48;
  }
  if (bytes + 1024 > (size_t)n->cfg.frame_bytes_max) {
    snprintf(detail, sizeof detail,
             "the batch's record would pass frame_bytes_max (%lld): write fewer entries",
             (long long)n->cfg.frame_bytes_max);
    ops_reply_error(rp, GRID_ELIMIT, detail, a);
    return;
  }
  /* The reply's room first: once written, every op's version is told. */
  Grid__Entry **list = arena_alloc(a, cnt * sizeof *list);
  Grid__Entry *ents = arena_alloc(a, cnt * sizeof *ents);
  if (!list || !ents) {
    ops_reply_error(rp, GRID_ENOMEM, "nothing was written", a);
    return;
  }
  size_t failed = 0;
  int rc = store_write_batch(c, ops, cnt, clock_wall_ms(), (uint8_t)GRID__OP__BATCH, &failed,
                             applied, ctx);
  if (rc == GRID_EINVAL) {
    snprintf(detail, sizeof detail, "op %zu names a key an earlier op of the batch names",
             failed);
    ops_reply_error(rp, rc, detail, a);
    rp->number = (int64_t)failed;
    return;
  }
  if (rc == GRID_EEXIST || rc == GRID_ENOTFOUND || rc == GRID_EVERSION) {
    snprintf(detail, sizeof detail, "op %zu's condition does not hold: nothing was written",
             failed);
    ops_reply_error(rp, rc, detail, a);
    rp->number = (int64_t)failed;
    return;
  }
  if (rc != 0) {
    ops_reply_error(rp, rc, "nothing was written", a);
    return;
  }
  for (size_t i = 0; i < cnt; i++) {
    grid__entry__init(&ents[i]);
    ents[i].version = ops[i].version_out;
    ents[i].found = ops[i].existed;
    list[i] = &ents[i];
  }
  rp->entries = list;
  rp->n_entries = cnt;
  rp->version = ops[cnt - 1].version_out;
}

/* GET_PREFIX: a prefix's entries, gathered by ops_prefix_cb. */
typedef struct ops_prefix_ctx {
  arena_t *a;
  const ProtobufCBinaryData *prefix;
  Grid__Entry **list;
  size_t n, max;
  size_t bytes, bytes_max;
  int failed;
} ops_prefix_ctx_t;

static int ops_prefix_cb(void *ctx, const void *key, size_t key_len, const void *value,
                         size_t value_len, uint64_t version) {
  ops_prefix_ctx_t *pc = ctx;
  if (key_len < pc->prefix->len || memcmp(key, pc->prefix->data, pc->prefix->len) != 0)
    return 0;
  if (pc->n == pc->max) {
    pc->failed = GRID_ELIMIT;
    return 1;
  }
  pc->bytes += key_len + value_len + 16;
  if (pc->bytes > pc->bytes_max) {
    pc->failed = GRID_EFRAMETOOBIG;
    return 1;
  }
  Grid__Entry *e = arena_alloc(pc->a, sizeof *e);
  void *k = arena_dup(pc->a, key, key_len);
  void *v = arena_dup(pc->a, value, value_len);
  if (!e || !k || !v) {
    pc->failed = GRID_ENOMEM;
    return 1;
  }
  grid__entry__init(e);
  e->key = (ProtobufCBinaryData){key_len, k};
  e->value = (ProtobufCBinaryData){value_len, v};
  e->version = version;
  e->found = 1;
  pc->list[pc->n++] = e;
  return 0;
}

static void ops_get_prefix(node_t *n, store_cache_t *c, const Grid__Request *rq,
                           Grid__Reply *rp, arena_t *a) {
  if (ops_check_key(n, &rq->key, 0, rp, a)) return;
  const void *aff;
  size_t aff_len;
  part_affinity(rq->key.data, rq->key.len, &aff, &aff_len);
  if (aff_len >= rq->key.len) {
    ops_reply_error(rp, GRID_EINVAL,
                    "the prefix must hold a whole affinity part, as \"{thing}.\", so that "
                    "its keys share a partition", a);
    return;
  }
  size_t max = rq->count ? rq->count : (size_t)n->cfg.batch_keys_max;
  if (max > (size_t)n->cfg.batch_keys_max) max = (size_t)n->cfg.batch_keys_max;
  ops_prefix_ctx_t pc = {.a = a, .prefix = &rq->key, .max = max,
                         .bytes_max = (size_t)n->cfg.frame_bytes_max};
  pc.list = arena_alloc(a, (max ? max : 1) * sizeof *pc.list);
  if (!pc.list) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  store_key_t k;
  store_key_init(c, rq->key.data, rq->key.len, &k);
  uint64_t cursor = 0;
  /* One pass over the partition under its lock: the entries as of one
   * moment. */
  store_scan(c, k.part, &cursor, UINT32_MAX, clock_wall_ms(), ops_prefix_cb, &pc);
  char detail[160];
  if (pc.failed == GRID_ELIMIT) {
    snprintf(detail, sizeof detail, "more than %zu keys start with the prefix (count, at most "
             "batch_keys_max)", max);
    ops_reply_error(rp, GRID_ELIMIT, detail, a);
    return;
  }
  if (pc.failed == GRID_EFRAMETOOBIG) {
    ops_reply_too_big(n, pc.bytes, rp, a);
    return;
  }
  if (pc.failed) {
    ops_reply_error(rp, pc.failed, NULL, a);
    return;
  }
  rp->entries = pc.list;
  rp->n_entries = pc.n;
  rp->number = (int64_t)pc.n;
}

typedef struct ops_scan_ctx {
  arena_t *a;
  Grid__Entry **list;
  size_t n, max;
  size_t bytes, bytes_max; /* reply size so far, and its bound */
  int failed;              /* GRID_ENOMEM or GRID_ELIMIT */
  int keys_only;           /* SCAN: entries without values */
} ops_scan_ctx_t;

static int ops_scan_entry_cb(void *ctx, const void *key, size_t key_len,
                             const void *value, size_t value_len,
                             uint64_t version) {
  ops_scan_ctx_t *sc = ctx;
  if (sc->keys_only) value_len = 0;
  sc->bytes += key_len + value_len + 16;
  if (sc->bytes > sc->bytes_max) {
    sc->failed = GRID_ELIMIT;
    return 1;
  }
  if (sc->n == sc->max) {
    /* A bucket can hold more entries than were asked for; the list grows
     * rather than stopping inside a bucket, which the cursor cannot resume. */
    size_t max = sc->max * 2;
    Grid__Entry **list = arena_alloc(sc->a, max * sizeof *list);
    if (!list) {
      sc->failed = GRID_ENOMEM;
      return 1;
    }
    memcpy(list, sc->list, sc->n * sizeof *list);
    sc->list = list;
    sc->max = max;
  }
  Grid__Entry *e = arena_alloc(sc->a, sizeof *e);
  void *k = arena_dup(sc->a, key, key_len);
  void *v = arena_dup(sc->a, value, value_len);
  if (!e || !k || !v) {
    sc->failed = GRID_ENOMEM;
    return 1;
  }
  grid__entry__init(e);
  e->key.data = k;
  e->key.len = key_len;
  e->value.data = v;
  e->value.len = value_len;
  e->version = version;
  e->found = 1;
  sc->list[sc->n++] = e;
  return 0;
}

/* SCAN's: each entry with its type and expiry. */
static int ops_scan_full_cb(void *ctx, const void *key, size_t key_len, const void *value,
                            size_t value_len, uint8_t type, uint64_t version,
                            int64_t expire_at_ms) {
  ops_scan_ctx_t *sc = ctx;
  size_t before = sc->n;
  int stop = ops_scan_entry_cb(ctx, key, key_len, value, value_len, version);
  if (sc->n > before) {
    sc->list[before]->type = type;
    sc->list[before]->expire_at_ms = expire_at_ms;
  }
  return stop;
}

static void ops_scan(node_t *n, store_cache_t *c, const Grid__Request *rq,
                     Grid__Reply *rp, arena_t *a) {
  const store_cache_cfg_t *cfg = store_cache_cfg(c);
  if (rq->partition >= cfg->partitions) {
    char detail[64];
    snprintf(detail, sizeof detail, "partition %u of a cache of %u",
             rq->partition, cfg->partitions);
    ops_reply_error(rp, GRID_EINVAL, detail, a);
    return;
  }
  uint32_t count = rq->count ? rq->count : 100;
  if ((int64_t)count > n->cfg.scan_count_max) count = (uint32_t)n->cfg.scan_count_max;
  ops_scan_ctx_t sc = {.a = a, .max = (size_t)count + 8,
                       .bytes_max = (size_t)n->cfg.frame_bytes_max, .keys_only = rq->keys_only};
  sc.list = arena_alloc(a, sc.max * sizeof(Grid__Entry *));
  if (!sc.list) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  uint64_t cursor = rq->cursor;
  store_scan_full(c, rq->partition, &cursor, count, clock_wall_ms(), ops_scan_full_cb, &sc);
  if (sc.failed == GRID_ELIMIT) {
    ops_reply_too_big(n, sc.bytes, rp, a);
    return;
  }
  if (sc.failed) {
    ops_reply_error(rp, sc.failed, NULL, a);
    return;
  }
  rp->entries = sc.list;
  rp->n_entries = sc.n;
  rp->cursor = cursor;
}

void ops_cfg_to_msg(const store_cache_cfg_t *cfg, Grid__CacheConfig *m) {
  grid__cache_config__init(m);
  m->name = (char *)cfg->name;
  m->partitions = cfg->partitions;
  m->backups = cfg->backups;
  m->mode = cfg->mode == GRID_MODE_REPLICATED ? GRID__CACHE_MODE__REPLICATED
                                              : GRID__CACHE_MODE__PARTITIONED;
  m->sync = cfg->sync == GRID_SYNC_PRIMARY ? GRID__SYNC_MODE__PRIMARY_SYNC
                                           : GRID__SYNC_MODE__FULL_SYNC;
  m->default_ttl_ms = cfg->default_ttl_ms;
  m->read_from_backup = cfg->read_from_backup;
  m->persistence = cfg->persistence != 0;
  m->fsync = cfg->fsync == GRID_FSYNC_NEVER      ? GRID__FSYNC_POLICY__FSYNC_NEVER
             : cfg->fsync == GRID_FSYNC_EVERY_MS ? GRID__FSYNC_POLICY__FSYNC_EVERY_MS
                                                 : GRID__FSYNC_POLICY__FSYNC_ALWAYS;
  m->fsync_every_ms = cfg->fsync_every_ms;
  m->cache_id = cfg->id;
}

static Grid__CacheConfig *ops_cache_config_msg(const store_cache_cfg_t *cfg,
                                               arena_t *a) {
  Grid__CacheConfig *m = arena_alloc(a, sizeof *m);
  char *name = arena_dup(a, cfg->name, strlen(cfg->name) + 1);
  if (!m || !name) return NULL;
  ops_cfg_to_msg(cfg, m);
  m->name = name;
  return m;
}

void ops_cfg_from_msg(const Grid__CacheConfig *m, const char *name, store_cache_cfg_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  snprintf(cfg->name, sizeof cfg->name, "%s", name ? name : (m->name ? m->name : ""));
  cfg->partitions = m->partitions;
  cfg->backups = m->backups;
  cfg->mode = m->mode == GRID__CACHE_MODE__REPLICATED ? GRID_MODE_REPLICATED
                                                     : GRID_MODE_PARTITIONED;
  cfg->sync = m->sync == GRID__SYNC_MODE__PRIMARY_SYNC ? GRID_SYNC_PRIMARY : GRID_SYNC_FULL;
  cfg->default_ttl_ms = m->default_ttl_ms;
  cfg->read_from_backup = m->read_from_backup > 0 ? 1 : m->read_from_backup < 0 ? -1 : 0;
  cfg->persistence = m->persistence ? 1 : 0;
  cfg->fsync = m->fsync == GRID__FSYNC_POLICY__FSYNC_NEVER      ? GRID_FSYNC_NEVER
               : m->fsync == GRID__FSYNC_POLICY__FSYNC_EVERY_MS ? GRID_FSYNC_EVERY_MS
                                                                : GRID_FSYNC_ALWAYS;
  cfg->fsync_every_ms = m->fsync_every_ms;
  cfg->id = m->cache_id;
}

uint64_t ops_cache_id(void) {
  uint64_t id = 0;
  if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) id = clock_mono_ns() ^ (uint64_t)clock_wall_ms();
  return id ? id : 1;
}

const char *ops_cache_cfg_refused(const node_t *n, const store_cache_cfg_t *cfg) {
  if (!cfg->persistence) return NULL;
  if (!n->cfg.data_dir[0])
    return "persistence = on needs a data directory on the node: start gridd with "
           "--set data_dir=DIR";
  if (cfg->fsync == GRID_FSYNC_EVERY_MS && cfg->fsync_every_ms > 60000)
    return "fsync every-ms=N takes N of 1..60000 milliseconds (0: 100)";
  return NULL;
}

static void ops_create_cache(node_t *n, const Grid__Request *rq,
                             Grid__Reply *rp, arena_t *a) {
  const Grid__CacheConfig *m = rq->cache_config;
  if (!m || !m->name || strlen(m->name) > STORE_CACHE_NAME_MAX) {
    ops_reply_error(rp, GRID_EINVAL, "a cache name of 1 to 64 characters is needed", a);
    return;
  }
  store_cache_cfg_t cfg;
  ops_cfg_from_msg(m, NULL, &cfg);
  const char *refused = ops_cache_cfg_refused(n, &cfg);
  if (refused) {
    ops_reply_error(rp, GRID_EINVAL, refused, a);
    return;
  }
  cfg.id = ops_cache_id();
  int rc = store_cache_create(n->store, &cfg);
  if (rc == GRID_EDISK) {
    ops_reply_error(rp, rc, "the cache cannot be kept in data_dir (the node's log says why)", a);
  } else if (rc == GRID_EINVAL) {
    char detail[160];
    snprintf(detail, sizeof detail,
             "name must be 1-64 of [A-Za-z0-9_.-], backups 0..3, partitions "
             "at most %lld", (long long)n->cfg.partitions_max);
    ops_reply_error(rp, rc, detail, a);
  } else if (rc == GRID_ELIMIT) {
    char detail[64];
    snprintf(detail, sizeof detail, "caches_max (%lld) caches exist",
             (long long)n->cfg.caches_max);
    ops_reply_error(rp, rc, detail, a);
  } else if (rc != 0) {
    ops_reply_error(rp, rc, NULL, a);
  } else {
    LOG_I("store", "\"cache created\" cache=%s partitions=%u", cfg.name,
          cfg.partitions ? cfg.partitions : (unsigned)n->cfg.partitions_default);
  }
}

static void ops_list_caches(node_t *n, Grid__Reply *rp, arena_t *a) {
  size_t max = (size_t)n->cfg.caches_max;
  store_cache_cfg_t *cfgs = arena_alloc(a, max * sizeof *cfgs);
  Grid__CacheConfig **list = arena_alloc(a, max * sizeof *list);
  if (!cfgs || !list) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  size_t count = store_cache_list(n->store, cfgs, max);
  if (count > max) count = max;
  for (size_t i = 0; i < count; i++) {
    if (!(list[i] = ops_cache_config_msg(&cfgs[i], a))) {
      ops_reply_error(rp, GRID_ENOMEM, NULL, a);
      return;
    }
  }
  rp->caches = list;
  rp->n_caches = count;
}

/* USER on a single node: its users are in its memory. (route.c sends a
 * cluster's through ZooKeeper.) */
static void ops_user(node_t *n, const Grid__Request *rq, Grid__Reply *rp, arena_t *a) {
  if (rq->user_action == GRID__USER_ACTION__USER_LIST) {
    auth_list(n->auth, rp, a);
    return;
  }
  unsigned char *cur = NULL, *next = NULL;
  size_t cur_len = 0, next_len = 0;
  char why[256] = "";
  /* One change at a time: the stored list is read, changed and put back. */
  static pthread_mutex_t ops_user_lock = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&ops_user_lock);
  int rc = auth_get_stored(n->auth, &cur, &cur_len);
  if (rc == 0) rc = auth_change(cur, cur_len, rq, &next, &next_len, why, sizeof why);
  if (rc == 0) rc = auth_set_stored(n->auth, next, next_len);
  pthread_mutex_unlock(&ops_user_lock);
  free(cur);
  free(next);
  if (rc != 0) ops_reply_error(rp, rc, why[0] ? why : NULL, a);
}

static void ops_stats(node_t *n, Grid__Reply *rp, arena_t *a) {
  Grid__Stats *st = arena_alloc(a, sizeof *st);
  if (!st) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  grid__stats__init(st);
  st->node_id = n->node_id;
  st->entries = store_entries(n->store);
  st->memory_bytes = (uint64_t)store_memory_bytes(n->store);
  st->memory_bytes_max = (uint64_t)store_memory_bytes_max(n->store);
  st->ops = ops_served(n);
  st->connections = atomic_load(&n->connections);
  st->caches = store_cache_count(n->store);
  st->uptime_ms = (uint64_t)(clock_mono_ms() - n->started_ms);
  st->loop_ops = n->loops_ops_served ? n->loops_ops_served(n->loops_ops_arg) : 0;
  st->local_reads = atomic_load(&n->local_reads);
  st->fill_bytes_in = atomic_load(&n->fill_bytes_in);
  st->fill_delta_parts = atomic_load(&n->fill_delta_parts);
  st->disk_bytes_written = n->disk ? disk_bytes_written(n->disk) : 0;
  rp->stats = st;
}

uint64_t ops_served(node_t *n) {
  return atomic_load(&n->ops) + (n->loops_ops_served ? n->loops_ops_served(n->loops_ops_arg) : 0);
}

static void ops_exec(node_t *n, store_cache_t *c, const Grid__Request *rq, Grid__Reply *rp,
                     arena_t *a, store_applied_fn applied, void *ctx);
static void ops_coll(node_t *n, store_cache_t *c, const Grid__Request *rq, Grid__Reply *rp,
                     arena_t *a, store_applied_fn applied, void *ctx);

/* One data request against its cache, found already. */
static void ops_on_cache(node_t *n, store_cache_t *c, const Grid__Request *rq, Grid__Reply *rp,
                         arena_t *a, store_applied_fn applied, void *ctx) {
  switch (rq->op) {
    case GRID__OP__GET: ops_get(n, c, rq, rp, a); break;
    case GRID__OP__GET_ALL: ops_get_all(n, c, rq, rp, a); break;
    case GRID__OP__PUT_ALL: ops_put_all(n, c, rq, rp, a); break;
    case GRID__OP__DELETE_ALL: ops_delete_all(n, c, rq, rp, a); break;
    case GRID__OP__SCAN: ops_scan(n, c, rq, rp, a); break;
    case GRID__OP__SIZE: rp->number = (int64_t)store_cache_size(c); break;
    case GRID__OP__TTL: ops_ttl(n, c, rq, rp, a); break;
    case GRID__OP__BATCH: ops_batch(n, c, rq, rp, a, applied, ctx); break;
    case GRID__OP__GET_PREFIX: ops_get_prefix(n, c, rq, rp, a); break;
    case GRID__OP__EXEC: ops_exec(n, c, rq, rp, a, applied, ctx); break;
    case GRID__OP__COLL: ops_coll(n, c, rq, rp, a, applied, ctx); break;
    default: ops_write(n, c, rq, rp, a, applied, ctx); break;
  }
}

/* ---- hashes, lists and sets (COLL) ---------------------------------------- */

/* SPOP, SRANDMEMBER, HRANDFIELD: each thread's own generator (xorshift64*,
 * seeded from the clock and the thread). */
static uint64_t ops_rand(void *ctx) {
  (void)ctx;
  static _Thread_local uint64_t x;
  if (!x) x = ((uint64_t)clock_wall_ms() << 20) ^ (uint64_t)(uintptr_t)&x ^ 0x9e3779b97f4a7c15u;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  return x * 0x2545f4914f6cdd1dULL;
}

static int ops_coll_match(void *ctx, const void *p, size_t len) {
  const ProtobufCBinaryData *pattern = ctx;
  return glob_match(pattern->data, pattern->len, p, len);
}

/* An answer's bytes, copied into the arena (they may be the collection's
 * own, freed with it). */
static int ops_coll_bytes(arena_t *a, const coll_item_t *it, ProtobufCBinaryData *out) {
  out->len = it->len;
  out->data = arena_alloc(a, it->len ? it->len : 1);
  if (!out->data) return -1;
  if (it->len) memcpy(out->data, it->p, it->len);
  return 0;
}

static int ops_coll_reply(const coll_out_t *o, Grid__Reply *rp, arena_t *a) {
  rp->number = o->number;
  rp->found = o->has_number; /* LPOS: a position, or (has_value) a nil */
  if (o->has_value) {
    rp->found = !o->nil_value;
    if (rp->found && ops_coll_bytes(a, &o->value, &rp->value) != 0) return -1;
  }
  if (o->array || o->nil_array) {
    rp->found = !o->nil_array;
    size_t n = o->items.n;
    Grid__Entry *es = arena_alloc(a, (n ? n : 1) * sizeof *es);
    Grid__Entry **ep = arena_alloc(a, (n ? n : 1) * sizeof *ep);
    if (!es || !ep) return -1;
    for (size_t i = 0; i < n; i++) {
      grid__entry__init(&es[i]);
      es[i].found = !(o->nils && o->nils[i]);
      if (es[i].found && ops_coll_bytes(a, &o->items.v[i], &es[i].value) != 0) return -1;
      ep[i] = &es[i];
    }
    rp->entries = ep;
    rp->n_entries = n;
  }
  return 0;
}

/* What a collection command's write of its key-th key is called, for
 * keyspace notifications (notify.h: NOTIFY_HOW_EVENT + the event). */
static uint8_t ops_coll_how(int cmd, int key, int flags) {
  int ev;
  switch (cmd) {
    case COLL_HSET: case COLL_HSETNX: ev = NOTIFY_EV_HSET; break;
    case COLL_HDEL: ev = NOTIFY_EV_HDEL; break;
    case COLL_HINCRBY: ev = NOTIFY_EV_HINCRBY; break;
    case COLL_HINCRBYFLOAT: ev = NOTIFY_EV_HINCRBYFLOAT; break;
    case COLL_SADD: ev = NOTIFY_EV_SADD; break;
    case COLL_SREM: ev = NOTIFY_EV_SREM; break;
    case COLL_SPOP: ev = NOTIFY_EV_SPOP; break;
    case COLL_SINTERSTORE: ev = NOTIFY_EV_SINTERSTORE; break;
    case COLL_SUNIONSTORE: ev = NOTIFY_EV_SUNIONSTORE; break;
    case COLL_SDIFFSTORE: ev = NOTIFY_EV_SDIFFSTORE; break;
    case COLL_SMOVE: ev = key ? NOTIFY_EV_SADD : NOTIFY_EV_SREM; break;
    case COLL_LPUSH: case COLL_LPUSHX: ev = NOTIFY_EV_LPUSH; break;
    case COLL_RPUSH: case COLL_RPUSHX: ev = NOTIFY_EV_RPUSH; break;
    case COLL_LPOP: ev = NOTIFY_EV_LPOP; break;
    case COLL_RPOP: ev = NOTIFY_EV_RPOP; break;
    case COLL_LMOVE:
      if (key) ev = (flags & COLL_F_TO_RIGHT) ? NOTIFY_EV_RPUSH : NOTIFY_EV_LPUSH;
      else ev = (flags & COLL_F_FROM_RIGHT) ? NOTIFY_EV_RPOP : NOTIFY_EV_LPOP;
      break;
    case COLL_LSET: ev = NOTIFY_EV_LSET; break;
    case COLL_LREM: ev = NOTIFY_EV_LREM; break;
    case COLL_LTRIM: ev = NOTIFY_EV_LTRIM; break;
    case COLL_LINSERT: ev = NOTIFY_EV_LINSERT; break;
    case COLL_INCRBYFLOAT: ev = NOTIFY_EV_INCRBYFLOAT; break;
    case COLL_SETRANGE: ev = NOTIFY_EV_SETRANGE; break;
    case COLL_SETBIT: ev = NOTIFY_EV_SETBIT; break;
    case COLL_RENAME: case COLL_RENAMENX: ev = key ? NOTIFY_EV_RENAME_TO : NOTIFY_EV_RENAME_FROM; break;
    case COLL_COPY: ev = NOTIFY_EV_COPY_TO; break;
    default: return GRID__OP__COLL;
  }
  return (uint8_t)(NOTIFY_HOW_EVENT + ev);
}

/* Writes a collection's key as a command left it: its items (type), or
 * nothing (removed). replace: the key is made anew (no expiry kept). */
static int ops_coll_write(node_t *n, store_cache_t *c, const store_key_t *k, int what,
                          const coll_vec_t *v, int type, int replace, uint8_t how,
                          store_applied_fn applied, void *ctx, int64_t now, uint64_t *version) {
  if (what == COLL_KEEP || what == COLL_EXPIRE) return 0; /* ops_coll_expire's */
  store_write_t w = {.op = what == COLL_PUT ? STORE_PUT : STORE_DELETE, .keep_ttl = !replace,
                     .type = (uint8_t)type, .how = how};
  size_t len = 0;
  unsigned char *buf = NULL;
  if (what == COLL_PUT && type == GRID_TYPE_STRING) { /* the string's bytes as they are */
    len = v->n ? v->v[0].len : 0;
    if ((buf = malloc(len ? len : 1)) && len) memcpy(buf, v->v[0].p, len);
  } else if (what == COLL_PUT) {
    buf = coll_encode(v, &len);
  }
  store_result_t res = {0};
  int rc;
  if (what == COLL_PUT && !buf) rc = GRID_ENOMEM;
  else if (what == COLL_PUT && (rc = store_check_sizes(n->store, k->len, len)) != 0) {
  } else {
    w.value = buf;
    w.value_len = len;
    /* The clock the entry was read with: a key that expired since would
     * otherwise come back as new, without its expiry. */
    rc = store_write_rec(c, k, &w, now, &res, applied, ctx);
    if (rc == GRID_ENOTFOUND && what == COLL_DELETE) rc = 0; /* a STORE of nothing */
  }
  free(buf);
  if (rc == 0) *version = res.version;
  return rc;
}

/* GETEX: the key's expiry as the command asked (a time in the past
 * removes the key). */
static int ops_coll_expire(store_cache_t *c, const store_key_t *k, const Grid__Request *rq,
                           const coll_out_t *out, store_applied_fn applied, void *ctx,
                           uint64_t *version) {
  store_write_t w = {.op = STORE_EXPIRE, .how = GRID__OP__EXPIRE};
  if (rq->coll_flags & COLL_F_PERSIST) w.persist = 1;
  w.expire_ms = out->expire_at;
  w.expire_absolute = !(rq->coll_flags & COLL_F_RELATIVE);
  store_result_t res = {0};
  int rc = store_write_rec(c, k, &w, clock_wall_ms(), &res, applied, ctx);
  if (rc == 0 && res.version) *version = res.version;
  return rc;
}

/* RENAME, RENAMENX, COPY: the source's value, type and expiry to the
 * destination (ks[1]) as one step; RENAME's source removed. The caller
 * holds both partitions. 0 with the answer in rp, or an error. */
static int ops_move(node_t *n, store_cache_t *c, const store_key_t *ks, const Grid__Request *rq,
                    Grid__Reply *rp, arena_t *a, store_applied_fn applied, void *ctx) {
  (void)n;
  int cmd = (int)rq->coll_cmd;
  int same = ks[0].len == ks[1].len && (!ks[0].len || memcmp(ks[0].data, ks[1].data, ks[0].len) == 0);
  if (cmd == COLL_COPY && same) {
    rp->status = GRID_EINVAL;
    rp->message = "source and destination objects are the same";
    return 0;
  }
  void *v = NULL;
  size_t vlen = 0;
  uint64_t ver;
  uint8_t type = 0;
  int64_t now = clock_wall_ms(), expire_at = 0;
  int rc = store_get_typed(c, &ks[0], now, ops_arena_alloc, a, &v, &vlen, &ver, &type);
  if (rc == GRID_ENOTFOUND) {
    if (cmd == COLL_COPY) return 0; /* number 0 */
    rp->status = GRID_ENOTFOUND;
    rp->message = "no such key";
    return 0;
  }
  if (rc != 0) return rc;
  if (same) { /* RENAME onto itself: nothing changes */
    rp->number = cmd == COLL_RENAME;
    return 0;
  }
  store_expiry(c, &ks[0], now, &expire_at, NULL, NULL);
  int64_t dexp;
  if (cmd != COLL_RENAME && !(rq->coll_flags & COLL_F_REPLACE) &&
      store_expiry(c, &ks[1], now, &dexp, NULL, NULL) == 0)
    return 0; /* the destination exists: number 0 */
  /* The destination takes the expiry as a time from now (at least 1 ms
   * while it has not passed). */
  uint64_t ttl = expire_at ? (uint64_t)(expire_at > now ? expire_at - now : 1) : 0;
  store_write_t w = {.op = STORE_PUT, .value = v, .value_len = vlen, .ttl_ms = ttl,
                     .type = type, .how = ops_coll_how(cmd, 1, 0)};
  store_result_t res = {0};
  rc = store_write_rec(c, &ks[1], &w, now, &res, applied, ctx);
  if (rc != 0) return rc;
  if (!expire_at && ttl == 0 && store_cache_cfg(c)->default_ttl_ms) {
    /* a source without expiry: so is its copy, whatever the cache's default */
    store_write_t p = {.op = STORE_EXPIRE, .persist = 1, .how = (uint8_t)GRID__OP__EXPIRE};
    store_result_t pr;
    store_write_rec(c, &ks[1], &p, now, &pr, applied, ctx);
  }
  rp->version = res.version;
  if (cmd != COLL_COPY) {
    store_write_t d = {.op = STORE_DELETE, .how = ops_coll_how(cmd, 0, 0)};
    rc = store_write_rec(c, &ks[0], &d, now, &res, applied, ctx);
    if (rc != 0) return rc;
  }
  rp->number = 1;
  return 0;
}

/* A command on a hash, list or set: its entries read, changed and written
 * back (or removed, when a collection is left empty) as one step under
 * the hold of their partitions (within an EXEC's, when it is one of its
 * steps); a command of several keys (key, then keys) is replicated as one
 * record. */
static void ops_coll(node_t *n, store_cache_t *c, const Grid__Request *rq, Grid__Reply *rp,
                     arena_t *a, store_applied_fn applied, void *ctx) {
  int cmd = (int)rq->coll_cmd, type = coll_cmd_type(cmd), multi = coll_cmd_keys(cmd);
  if (cmd == COLL_OBJECT_ENCODING) { /* any type */
    if (ops_check_key(n, &rq->key, 0, rp, a)) return;
    store_key_t k;
    store_key_init(c, rq->key.data, rq->key.len, &k);
    void *v = NULL;
    size_t vlen = 0;
    uint64_t ver;
    uint8_t have = 0;
    int rc = store_get_typed(c, &k, STORE_NOW_LAZY, ops_arena_alloc, a, &v, &vlen, &ver, &have);
    if (rc != 0 && rc != GRID_ENOTFOUND) {
      ops_reply_error(rp, rc, NULL, a);
      return;
    }
    rp->found = rc == 0;
    if (rc == 0) {
      const char *enc = coll_encoding(have, v, vlen);
      rp->value = (ProtobufCBinaryData){strlen(enc), (uint8_t *)enc};
      rp->version = ver;
    }
    return;
  }
  if (cmd >= COLL_RENAME && cmd <= COLL_COPY) type = GRID_TYPE_STRING; /* any: ops_move */
  if (type < 0 || (!multi && rq->n_keys)) {
    ops_reply_error(rp, GRID_EBADOP, "unknown collection command", a);
    return;
  }
  size_t nk = 1 + (multi ? rq->n_keys : 0);
  if (nk > (size_t)n->cfg.batch_keys_max) {
    ops_check_batch(n, nk, rp, a);
    return;
  }
  store_key_t *ks = arena_alloc(a, nk * sizeof *ks);
  uint32_t *parts = arena_alloc(a, nk * sizeof *parts);
  size_t *same = arena_alloc(a, nk * sizeof *same);
  int *exists = arena_alloc(a, nk * sizeof *exists);
  coll_vec_t *vecs = arena_alloc(a, nk * sizeof *vecs);
  coll_vec_t **vp = arena_alloc(a, nk * sizeof *vp);
  coll_item_t *args = arena_alloc(a, (rq->n_values ? rq->n_values : 1) * sizeof *args);
  if (!ks || !parts || !same || !exists || !vecs || !vp || !args) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  memset(vecs, 0, nk * sizeof *vecs);
  for (size_t i = 0; i < nk; i++) {
    const ProtobufCBinaryData *key = i == 0 ? &rq->key : &rq->keys[i - 1];
    if (ops_check_key(n, key, 0, rp, a)) return;
    store_key_init(c, key->data, key->len, &ks[i]);
    parts[i] = ks[i].part;
    if (n->cluster && parts[i] != parts[0]) {
      ops_reply_error(rp, GRID_EINVAL, "a command's keys are of one partition", a);
      return;
    }
    same[i] = i;
    for (size_t j = 0; j < i; j++)
      if (ks[j].len == ks[i].len && (!ks[i].len || memcmp(ks[j].data, ks[i].data, ks[i].len) == 0)) {
        same[i] = j;
        break;
      }
    vp[i] = &vecs[same[i]];
  }
  for (size_t i = 0; i < rq->n_values; i++) args[i] = (coll_item_t){rq->values[i].data, rq->values[i].len};
  /* A random pick with repeats has no other bound (native clients too). */
  if ((cmd == COLL_SRANDMEMBER || cmd == COLL_HRANDFIELD) && (rq->coll_flags & COLL_F_COUNT) &&
      rq->delta < -n->cfg.batch_keys_max) {
    ops_check_batch(n, rq->delta == INT64_MIN ? SIZE_MAX : (size_t)-rq->delta, rp, a);
    return;
  }
  coll_req_t req = {.cmd = cmd, .args = args, .nargs = rq->n_values, .n1 = rq->delta,
                    .n2 = rq->n2, .n3 = rq->n3, .flags = (int)rq->coll_flags, .rand = ops_rand,
                    .bytes_max = (uint64_t)n->cfg.value_bytes_max};
  if ((req.flags & COLL_F_MATCH) && req.nargs > 0) {
    req.match = ops_coll_match;
    req.match_ctx = &rq->values[0];
    req.args++;
    req.nargs--;
  }
  /* A STORE form's destination is made anew: whatever it held is not read
   * (unless it is also a source). */
  int store_form = cmd == COLL_SINTERSTORE || cmd == COLL_SUNIONSTORE || cmd == COLL_SDIFFSTORE;
  int dest_read = !store_form;
  for (size_t i = 1; i < nk && !dest_read; i++) dest_read = same[i] == 0;
  store_hold_t *hold = store_hold(c, parts, nk);
  if (!hold) {
    ops_reply_error(rp, GRID_EINVAL, "a transaction's step of a partition it does not hold", a);
    return;
  }
  if (cmd >= COLL_RENAME && cmd <= COLL_COPY) {
    int mrc = nk == 2 ? ops_move(n, c, ks, rq, rp, a, applied, ctx) : GRID_EINVAL;
    store_release(hold);
    if (mrc != 0) ops_reply_error(rp, mrc, NULL, a);
    return;
  }
  coll_out_t out = {0};
  int rc = 0;
  int64_t now = clock_wall_ms();
  for (size_t i = 0; i < nk && rc == 0; i++) {
    exists[i] = 0;
    if (same[i] != i) {
      exists[i] = exists[same[i]];
      continue;
    }
    if (i == 0 && !dest_read) continue;
    void *v = NULL;
    size_t vlen = 0;
    uint64_t ver;
    uint8_t have = 0;
    rc = store_get_typed(c, &ks[i], now, ops_arena_alloc, a, &v, &vlen, &ver, &have);
    if (rc == GRID_ENOTFOUND) {
      rc = 0;
      continue;
    }
    if (rc != 0) break;
    exists[i] = 1;
    if (i == 0) rp->version = ver;
    if (have != type) rc = GRID_EWRONGTYPE;
    else if (type == GRID_TYPE_STRING) /* a string command's one item */
      rc = (vecs[i].v = malloc(sizeof *vecs[i].v)) ? 0 : GRID_ENOMEM;
    else if ((rc = coll_decode(v, vlen, &vecs[i])) != 0) rc = rc == -2 ? GRID_ENOMEM : GRID_EINTERNAL;
    if (rc == 0 && type == GRID_TYPE_STRING) {
      vecs[i].v[0] = (coll_item_t){v, vlen};
      vecs[i].n = vecs[i].cap = 1;
    }
  }
  if (rc != 0) {
    ops_reply_error(rp, rc, rc == GRID_EINTERNAL ? "a collection's value does not decode" : NULL, a);
  } else {
    if (multi) coll_run_keys(&req, vp, exists, nk, &out);
    else coll_run(&req, vp[0], exists[0], &out);
    uint64_t version = rp->version;
    if (out.status) {
      rp->status = out.status;
      rp->message = (char *)out.err; /* Redis's words: the front ends show them */
    } else {
      /* A STORE form that leaves nothing only deletes (Redis's "del"). */
      uint8_t how0 = store_form && out.write == COLL_DELETE ? (uint8_t)GRID__OP__DELETE
                                                             : ops_coll_how(cmd, 0, req.flags);
      rc = ops_coll_write(n, c, &ks[0], out.write, vp[0], type, store_form, how0, applied, ctx,
                          now, &version);
      if (rc == 0 && out.write == COLL_EXPIRE)
        rc = ops_coll_expire(c, &ks[0], rq, &out, applied, ctx, &version);
      if (rc == 0 && nk > 1)
        rc = ops_coll_write(n, c, &ks[1], out.write2, vp[1], type, 0,
                            ops_coll_how(cmd, 1, req.flags), applied, ctx, now, &version);
      if (rc != 0) ops_reply_error(rp, rc, rc == GRID_EVALTOOBIG ? "the collection would pass "
                                   "value_bytes_max" : NULL, a);
      else rp->version = version;
    }
    if (!rp->status && ops_coll_reply(&out, rp, a) != 0) ops_reply_error(rp, GRID_ENOMEM, NULL, a);
  }
  store_release(hold);
  coll_out_free(&out);
  for (size_t i = 0; i < nk; i++) coll_vec_free(&vecs[i]);
}

/* Whether a request may be a step of an EXEC: a data request of one key
 * (SIZE too on a single node, where a transaction holds the cache). */
static int ops_exec_step_ok(const node_t *n, Grid__Op op) {
  if (op == GRID__OP__EXEC || op == GRID__OP__BATCH || op == GRID__OP__EXPIRE_DUE ||
      op_has(op, OP_PARTITION))
    return 0;
  if (op_has(op, OP_KEYED) && op_has(op, OP_DATA)) return 1;
  return op == GRID__OP__SIZE && !n->cluster;
}

/* A watch of an EXEC against the key as it is (held): 0 when it holds. */
static int ops_exec_watch(store_cache_t *c, const Grid__BatchOp *w, int64_t now_ms) {
  store_key_t k;
  store_key_init(c, w->key.data, w->key.len, &k);
  int64_t expire_at = 0;
  uint64_t version = 0;
  int live = store_expiry(c, &k, now_ms, &expire_at, &version, NULL) == 0;
  if (w->cond == GRID__BATCH_COND__COND_ABSENT) return live ? GRID_EVERSION : 0;
  return live && version == w->version ? 0 : GRID_EVERSION;
}

/* EXEC: the watches, then every step, under one hold of the partitions
 * they name (in a cluster, the one partition of rq->key). */
static void ops_exec(node_t *n, store_cache_t *c, const Grid__Request *rq, Grid__Reply *rp,
                     arena_t *a, store_applied_fn applied, void *ctx) {
  size_t ns = rq->n_steps, nw = rq->n_watch, nmore = 0;
  for (size_t i = 0; i < ns; i++) nmore += rq->steps[i]->n_keys; /* a COLL step's other keys */
  if (ops_check_batch(n, ns + nw + nmore, rp, a)) return;
  uint32_t *parts = arena_alloc(a, (ns + nw + nmore + 1) * sizeof *parts);
  Grid__Reply **out = arena_alloc(a, (ns ? ns : 1) * sizeof *out);
  Grid__Reply *srps = arena_alloc(a, (ns ? ns : 1) * sizeof *srps);
  if (!parts || !out || !srps) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  store_key_t k;
  store_key_init(c, rq->key.data, rq->key.len, &k);
  size_t m = 0;
  parts[m++] = k.part;
  for (size_t i = 0; i < ns + nw; i++) {
    int step = i < ns;
    if (step && !op_has(rq->steps[i]->op, OP_KEYED)) continue;
    size_t nkeys = 1 + (step ? rq->steps[i]->n_keys : 0); /* a COLL step's other keys */
    for (size_t j = 0; j < nkeys; j++) {
      const ProtobufCBinaryData *key = !step   ? &rq->watch[i - ns]->key
                                       : j == 0 ? &rq->steps[i]->key
                                                : &rq->steps[i]->keys[j - 1];
      store_key_init(c, key->data, key->len, &k);
      if (n->cluster && k.part != parts[0]) {
        char detail[96];
        snprintf(detail, sizeof detail, "a transaction's keys are of one partition: %s %zu is of "
                 "partition %u, not %u", step ? "step" : "watch", step ? i : i - ns, k.part,
                 parts[0]);
        ops_reply_error(rp, GRID_EINVAL, detail, a);
        return;
      }
      parts[m++] = k.part;
    }
  }
  store_hold_t *hold = store_hold(c, parts, m);
  if (!hold) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  int64_t now = clock_wall_ms();
  for (size_t i = 0; i < nw; i++) {
    if (ops_exec_watch(c, rq->watch[i], now) != 0) {
      store_release(hold);
      ops_reply_error(rp, GRID_EVERSION, "a watched key changed: the transaction did not run", a);
      return;
    }
  }
  for (size_t i = 0; i < ns; i++) {
    const Grid__Request *st = rq->steps[i];
    Grid__Reply *srp = &srps[i];
    grid__reply__init(srp);
    out[i] = srp;
    if (!ops_exec_step_ok(n, st->op)) {
      char detail[64];
      snprintf(detail, sizeof detail, "op %d cannot be a step of a transaction", (int)st->op);
      ops_reply_error(srp, GRID_EBADOP, detail, a);
    } else if (st->cache && *st->cache && strcmp(st->cache, rq->cache ? rq->cache : "") != 0) {
      ops_reply_error(srp, GRID_EINVAL, "a transaction's steps are of one cache", a);
    } else {
      ops_on_cache(n, c, st, srp, a, applied, ctx);
    }
  }
  store_release(hold);
  rp->steps = out;
  rp->n_steps = ns;
}

void ops_execute(node_t *n, store_view_t *view, const Grid__Request *rq,
                 Grid__Reply *rp, arena_t *a) {
  ops_execute_rec(n, view, rq, rp, a, NULL, NULL);
}

void ops_execute_rec(node_t *n, store_view_t *view, const Grid__Request *rq,
                     Grid__Reply *rp, arena_t *a, store_applied_fn applied,
                     void *ctx) {
  rp->id = rq->id;
  rp->status = 0;
  if (view) /* one writer: a plain increment, no locked instruction */
    atomic_store_explicit(&view->ops,
                          atomic_load_explicit(&view->ops, memory_order_relaxed) + 1,
                          memory_order_relaxed);
  else
    atomic_fetch_add_explicit(&n->ops, 1, memory_order_relaxed);
  switch (rq->op) {
    case GRID__OP__PING: return;
    case GRID__OP__CREATE_CACHE: ops_create_cache(n, rq, rp, a); return;
    case GRID__OP__DROP_CACHE: {
      const char *name = rq->cache ? rq->cache : "";
      int rc = store_cache_drop(n->store, name);
      if (rc != 0) {
        char detail[96];
        snprintf(detail, sizeof detail, "\"%.64s\"", name);
        ops_reply_error(rp, rc, detail, a);
      } else {
        LOG_I("store", "\"cache dropped\" cache=%s", name);
      }
      return;
    }
    case GRID__OP__LIST_CACHES: ops_list_caches(n, rp, a); return;
    case GRID__OP__LEAVE:
      ops_reply_error(rp, GRID_EINVAL, "a single node has no cluster to leave: stop it instead", a);
      return;
    case GRID__OP__SNAPSHOT: {
      char name[DISK_SNAPSHOT_NAME_MAX + 2], words[1600];
      snprintf(name, sizeof name, "%.*s", (int)(rq->key.len < sizeof name - 1 ? rq->key.len : sizeof name - 1),
               rq->key.data ? (const char *)rq->key.data : "");
      if (!n->disk) {
        ops_reply_error(rp, GRID_EINVAL, "this node has no data_dir to snapshot", a);
        return;
      }
      int rc = disk_snapshot(n->disk, name, words, sizeof words);
      if (rc != 0) ops_reply_error(rp, rc, words, a);
      else rp->number = 1;
      return;
    }
    case GRID__OP__ACCEPT_LOSS:
      ops_reply_error(rp, GRID_EINVAL, "a single node has no other node to lose", a);
      return;
    case GRID__OP__USER: ops_user(n, rq, rp, a); return;
    case GRID__OP__STATS: ops_stats(n, rp, a); return;
    case GRID__OP__PMAP: {
      /* A single node: no map, no cluster. (route.c answers in a cluster.) */
      Grid__ClusterStatus *st = arena_alloc(a, sizeof *st);
      if (!st) {
        ops_reply_error(rp, GRID_ENOMEM, NULL, a);
        return;
      }
      grid__cluster_status__init(st);
      st->node_id = n->node_id;
      rp->cluster = st;
      return;
    }
    default: {
      if (op_has(rq->op, OP_DATA)) break;
      if (op_has(rq->op, OP_STREAM)) {
        ops_reply_error(rp, GRID_EINVAL, "a change stream is served on a connection to a node", a);
        return;
      }
      char detail[32];
      snprintf(detail, sizeof detail, "op %d", (int)rq->op);
      ops_reply_error(rp, GRID_EBADOP, detail, a);
      return;
    }
  }
  store_cache_t *c = ops_cache(n, view, rq, rp, a);
  if (!c) return;
  ops_on_cache(n, c, rq, rp, a, applied, ctx);
  if (!view) store_cache_release(n->store, c);
}
