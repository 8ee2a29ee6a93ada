#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <xxhash.h>

#include "grid_types.h"
#include "log.h"
#include "clock.h"
#include "num.h"
#include "part.h"

/* An entry is one allocation: the header, then the key, then the value and a
 * NUL (so a value read in place is a C string for counters). */
typedef struct store_entry {
  struct store_entry *next; /* bucket chain */
  uint64_t hash;
  uint64_t version;
  int64_t expire_at_ms;     /* wall clock; 0 = never */
  uint32_t key_len : 24;    /* key_bytes_max is at most 1 MiB */
  uint32_t type : 8;        /* grid_value_type_t */
  uint32_t value_len;
  unsigned char data[];
} store_entry_t;

#define STORE_KEY_BYTES_LIMIT ((size_t)1 << 24) /* what key_len holds */

typedef struct store_part {
  pthread_mutex_t lock;
  store_entry_t **buckets;  /* NULL until the first write */
  uint64_t mask;            /* bucket count - 1 */
  _Atomic uint64_t count;   /* entries; read without the lock by size */
  _Atomic uint64_t expiring; /* ... of them with an expiry */
  _Atomic uint64_t bytes;   /* the entries' memory (their key, value and
                               overhead, as memory_bytes_max counts them);
                               changed under the lock, read without it */
  uint64_t counter;         /* update counter: last version's low bits */
  store_part_sync_t sync;   /* replication progress (cluster mode) */
  changes_t *changes;       /* recent changes, NULL until the first */
  uint64_t began;           /* the counter the history began after (its
                               first record, or a fill's reset) */
  uint64_t last_version;    /* the version of the newest change applied */
  uint64_t base_version;    /* a persistent copy: it holds every change up
                               to this one (loaded whole from disk, or a
                               fill completed), the start of a delta */
  int base_whole;           /* ... base_version holds (0: no base) */
} store_part_t;

struct store_cache {
  store_cache_cfg_t cfg;
  uint64_t name_hash;
  atomic_int refs;          /* the registry's reference plus users' */
  store_t *store;
  store_part_t *parts;
  pthread_mutex_t watch_lock; /* guards watchers */
  store_watch_t *watchers;
  _Atomic int nwatchers;
  _Atomic int history;        /* changes are kept: once the cache is watched
                                 here, or its primary's records say so */
  void *disk;                 /* a persistent cache's disk (persist.open's),
                                 set before it serves */
};

/* ---- a thread's hold on partitions (store_hold) --------------------------
 *
 * While a thread holds partitions, the store's own calls on them from that
 * thread take no lock: they run inside the hold, and no other thread sees
 * the partition in between. The partitions are sorted by address, which is
 * also the order they were locked in (one order for every hold: two never
 * wait on each other). */
struct store_hold {
  size_t n;
  int small;             /* the thread's own (store_hold_small): not freed */
  store_part_t *parts[]; /* sorted by address, each once */
};

#define STORE_HOLD_SMALL 16 /* partitions a hold names without a malloc */

static _Thread_local const struct store_hold *store_held;

static int store_part_held(const store_part_t *p) {
  const struct store_hold *h = store_held;
  if (!h) return 0;
  size_t lo = 0, hi = h->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const store_part_t *at = h->parts[mid];
    if (at == p) return 1;
    if ((uintptr_t)at < (uintptr_t)p) lo = mid + 1;
    else hi = mid;
  }
  return 0;
}

static void part_lock(store_part_t *p) {
  if (!store_held || !store_part_held(p)) pthread_mutex_lock(&p->lock);
}

static void part_unlock(store_part_t *p) {
  if (!store_held || !store_part_held(p)) pthread_mutex_unlock(&p->lock);
}

#define STORE_BUCKETS_MIN 8
/* What one entry costs beyond its key and value: the header and malloc's
 * own bookkeeping. */
#define STORE_ENTRY_OVERHEAD (sizeof(store_entry_t) + 16)

struct store {
  store_limits_t limits;
  pthread_rwlock_t lock;     /* guards caches[] and ncaches */
  _Atomic uint64_t gen;      /* changes with every create and drop */
  store_cache_t **caches;    /* caches_max slots */
  size_t ncaches;
  _Atomic int64_t memory_bytes;
  _Atomic uint64_t epoch;    /* high bits of every version */
  void (*repl_free)(void *repl); /* frees store_part_sync_t.repl */
  pthread_mutex_t sweep_lock;
  size_t sweep_cache, sweep_part; /* where the sweep goes on */
  uint64_t sweep_cursor;
  int announce_applied;      /* a single node: changes announced as applied */
  store_persist_t persist;   /* persistent caches' disk (open NULL: none) */
  _Atomic int64_t changes_bytes; /* held by change histories */
};

/* ---- memory accounting ------------------------------------------------ */

/* Gives back bytes reserved earlier. Every release follows the reservation
 * it undoes (under the same partition lock, or after the last reference to
 * a cache), so the total can never go below zero: if it does, something
 * was released twice or never reserved. */
static void store_mem_release(store_t *s, int64_t bytes) {
  GRID_ASSERT(bytes >= 0);
  int64_t before = atomic_fetch_sub(&s->memory_bytes, bytes);
  GRID_ASSERT(before - bytes >= 0);
}

/* Reserves delta bytes against memory_bytes_max; a negative delta always
 * succeeds. A compare-and-swap loop, so that concurrent writers never pass
 * the limit together and none is refused while there is room for it. */
static int store_mem_reserve(store_t *s, int64_t delta) {
  if (delta <= 0) {
    store_mem_release(s, -delta);
    return 0;
  }
  int64_t cur = atomic_load_explicit(&s->memory_bytes, memory_order_relaxed);
  do {
    if (cur + delta > s->limits.memory_bytes_max) return GRID_EMEMLIMIT;
  } while (!atomic_compare_exchange_weak(&s->memory_bytes, &cur, cur + delta));
  GRID_ASSERT(cur >= 0 && cur + delta <= s->limits.memory_bytes_max);
  return 0;
}

/* Undoes store_mem_reserve(s, delta) when the step it paid for failed. A
 * negative delta gave bytes back early: they are taken again without the
 * limit check, since they were held before. */
static void store_mem_unreserve(store_t *s, int64_t delta) {
  if (delta >= 0)
    store_mem_release(s, delta);
  else
    atomic_fetch_add(&s->memory_bytes, -delta);
}

static int64_t store_entry_cost(size_t key_len, size_t value_len) {
  return (int64_t)(STORE_ENTRY_OVERHEAD + key_len + value_len + 1);
}

/* The partition's entry bytes moved by delta. Partition locked: a load and
 * a store, no locked instruction (readers take it without the lock). */
static void store_part_bytes_add(store_part_t *p, int64_t delta) {
  uint64_t cur = atomic_load_explicit(&p->bytes, memory_order_relaxed);
  atomic_store_explicit(&p->bytes, cur + (uint64_t)delta, memory_order_relaxed);
}

/* ---- caches ------------------------------------------------------------ */

static int store_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > STORE_CACHE_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.'))
      return 0;
  }
  return 1;
}

static void store_part_clear(store_t *s, store_part_t *p) {
  int64_t freed = 0;
  if (p->buckets) {
    for (uint64_t b = 0; b <= p->mask; b++) {
      store_entry_t *e = p->buckets[b];
      while (e) {
        store_entry_t *next = e->next;
        freed += store_entry_cost(e->key_len, e->value_len);
        free(e);
        e = next;
      }
    }
    freed += (int64_t)((p->mask + 1) * sizeof(store_entry_t *));
    free(p->buckets);
    p->buckets = NULL;
  }
  atomic_store(&p->count, 0);
  atomic_store(&p->expiring, 0);
  atomic_store(&p->bytes, 0);
  store_mem_release(s, freed);
}

/* Frees p's change history and gives its memory back. */
static void store_changes_free(store_t *s, store_part_t *p) {
  if (!p->changes) return;
  int64_t bytes = (int64_t)(p->changes->cap + sizeof *p->changes);
  changes_free(p->changes);
  free(p->changes);
  p->changes = NULL;
  atomic_fetch_sub(&s->changes_bytes, bytes);
  store_mem_release(s, bytes);
}

static void store_cache_destroy(store_cache_t *c) {
  store_t *s = c->store;
  GRID_ASSERT(c->watchers == NULL);
  pthread_mutex_destroy(&c->watch_lock);
  for (uint32_t i = 0; i < c->cfg.partitions; i++) {
    store_part_clear(s, &c->parts[i]);
    store_changes_free(s, &c->parts[i]);
    pthread_mutex_destroy(&c->parts[i].lock);
    if (c->parts[i].sync.repl && s->repl_free) s->repl_free(c->parts[i].sync.repl);
  }
  store_mem_release(s, (int64_t)(sizeof *c + c->cfg.partitions * sizeof(store_part_t)));
  if (c->disk) s->persist.free(c->disk);
  free(c->parts);
  free(c);
}

store_t *store_new(const store_limits_t *limits) {
  store_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->limits = *limits;
  s->caches = calloc((size_t)limits->caches_max, sizeof *s->caches);
  if (!s->caches) {
    free(s);
    return NULL;
  }
  pthread_rwlock_init(&s->lock, NULL);
  pthread_mutex_init(&s->sweep_lock, NULL);
  s->epoch = 1;
  store_cache_cfg_t def = {.name = "default"};
  if (store_cache_create(s, &def) != 0) {
    store_free(s);
    return NULL;
  }
  return s;
}

void store_free(store_t *s) {
  if (!s) return;
  for (size_t i = 0; i < s->ncaches; i++) store_cache_destroy(s->caches[i]);
  free(s->caches);
  pthread_rwlock_destroy(&s->lock);
  pthread_mutex_destroy(&s->sweep_lock);
  free(s);
}

static ssize_t store_find_locked(store_t *s, const char *name, size_t len,
                                 uint64_t h) {
  for (size_t i = 0; i < s->ncaches; i++) {
    store_cache_t *c = s->caches[i];
    if (c->name_hash == h && strlen(c->cfg.name) == len &&
        memcmp(c->cfg.name, name, len) == 0)
      return (ssize_t)i;
  }
  return -1;
}

int store_cache_create(store_t *s, const store_cache_cfg_t *cfg) {
  if (!store_name_ok(cfg->name) || cfg->backups > 3 ||
      (int64_t)cfg->partitions > s->limits.partitions_max ||
      (cfg->mode != GRID_MODE_PARTITIONED && cfg->mode != GRID_MODE_REPLICATED) ||
      (cfg->sync != GRID_SYNC_FULL && cfg->sync != GRID_SYNC_PRIMARY))
    return GRID_EINVAL;
  uint32_t parts = cfg->partitions ? cfg->partitions
                                   : (uint32_t)s->limits.partitions_default;
  int64_t cost = (int64_t)(sizeof(store_cache_t) + parts * sizeof(store_part_t));
  store_cache_t *c = calloc(1, sizeof *c);
  store_part_t *p = calloc(parts, sizeof *p);
  if (!c || !p) {
    free(c);
    free(p);
    return GRID_ENOMEM;
  }
  c->cfg = *cfg;
  c->cfg.partitions = parts;
  c->name_hash = XXH3_64bits(cfg->name, strlen(cfg->name));
  c->store = s;
  c->parts = p;
  atomic_init(&c->refs, 1);
  pthread_mutex_init(&c->watch_lock, NULL);
  for (uint32_t i = 0; i < parts; i++) pthread_mutex_init(&p[i].lock, NULL);

  int rc = 0;
  if (cfg->persistence) {
    /* Its entries are loaded from disk before anyone sees it (and before
     * the registry's lock: a load may take a while). */
    pthread_rwlock_rdlock(&s->lock);
    int exists = store_find_locked(s, cfg->name, strlen(cfg->name), c->name_hash) >= 0;
    pthread_rwlock_unlock(&s->lock);
    /* A node without a data_dir holds no copy of it (the map places
     * persistent groups on nodes with one): the cache is only named here,
     * for the requests it passes on. */
    if (exists) rc = GRID_ECACHEEXISTS;
    else if (s->persist.open && !(c->disk = s->persist.open(s->persist.ctx, c))) rc = GRID_EDISK;
    /* Its changes are kept from the start: a copy restarted with its disk
     * catches up from them (a delta), instead of a whole copy. */
    atomic_store(&c->history, 1);
  }
  if (rc == 0) {
    pthread_rwlock_wrlock(&s->lock);
    if (store_find_locked(s, cfg->name, strlen(cfg->name), c->name_hash) >= 0)
      rc = GRID_ECACHEEXISTS;
    else if ((int64_t)s->ncaches >= s->limits.caches_max)
      rc = GRID_ELIMIT;
    else if ((rc = store_mem_reserve(s, cost)) == 0) {
      s->caches[s->ncaches++] = c;
      atomic_fetch_add_explicit(&s->gen, 1, memory_order_release);
    }
    pthread_rwlock_unlock(&s->lock);
  }
  if (rc != 0) {
    if (cfg->persistence) {
      /* Loaded (in part, when the load failed), then refused: its entries
       * go, its disk stays as it was. */
      for (uint32_t i = 0; i < parts; i++) {
        store_part_clear(s, &p[i]);
        store_changes_free(s, &p[i]);
      }
      if (c->disk) s->persist.free(c->disk);
    }
    for (uint32_t i = 0; i < parts; i++) pthread_mutex_destroy(&p[i].lock);
    pthread_mutex_destroy(&c->watch_lock);
    free(p);
    free(c);
  }
  return rc;
}

int store_cache_drop(store_t *s, const char *name) {
  pthread_rwlock_wrlock(&s->lock);
  ssize_t i = store_find_locked(s, name, strlen(name),
                                XXH3_64bits(name, strlen(name)));
  store_cache_t *c = NULL;
  if (i >= 0) {
    c = s->caches[i];
    s->caches[i] = s->caches[--s->ncaches];
    s->caches[s->ncaches] = NULL;
    atomic_fetch_add_explicit(&s->gen, 1, memory_order_release);
  }
  pthread_rwlock_unlock(&s->lock);
  if (!c) return GRID_ENOCACHE;
  if (c->disk) s->persist.drop(c->disk);
  store_cache_release(s, c);
  return 0;
}

store_cache_t *store_cache_acquire(store_t *s, const char *name, size_t len) {
  uint64_t h = XXH3_64bits(name, len);
  store_cache_t *c = NULL;
  pthread_rwlock_rdlock(&s->lock);
  ssize_t i = store_find_locked(s, name, len, h);
  if (i >= 0) {
    c = s->caches[i];
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  }
  pthread_rwlock_unlock(&s->lock);
  return c;
}

void store_cache_hold(store_cache_t *c) {
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void store_cache_release(store_t *s, store_cache_t *c) {
  (void)s;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
    store_cache_destroy(c);
}

int store_view_init(store_view_t *v, store_t *s) {
  v->store = s;
  v->n = 0;
  v->gen = UINT64_MAX; /* refreshed on first use */
  atomic_init(&v->ops, 0);
  v->caches = calloc((size_t)s->limits.caches_max, sizeof *v->caches);
  size_t cap = 8;
  while (cap < (size_t)s->limits.caches_max * 2) cap *= 2;
  v->index = calloc(cap, sizeof *v->index);
  v->index_mask = cap - 1;
  if (!v->caches || !v->index) {
    free(v->caches);
    free(v->index);
    v->caches = NULL;
    v->index = NULL;
    return GRID_ENOMEM;
  }
  return 0;
}

static void store_view_release_all(store_view_t *v) {
  for (size_t i = 0; i < v->n; i++) store_cache_release(v->store, v->caches[i]);
  v->n = 0;
  memset(v->index, 0, (v->index_mask + 1) * sizeof *v->index);
}

void store_view_close(store_view_t *v) {
  if (!v->caches) return;
  store_view_release_all(v);
  free(v->caches);
  free(v->index);
  v->caches = NULL;
  v->index = NULL;
}

void store_view_refresh(store_view_t *v) {
  store_t *s = v->store;
  if (atomic_load_explicit(&s->gen, memory_order_acquire) == v->gen) return;
  store_view_release_all(v);
  pthread_rwlock_rdlock(&s->lock);
  v->gen = atomic_load_explicit(&s->gen, memory_order_relaxed);
  for (size_t i = 0; i < s->ncaches; i++) {
    store_cache_t *c = s->caches[i];
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    size_t at = c->name_hash & v->index_mask;
    while (v->index[at]) at = (at + 1) & v->index_mask;
    v->caches[v->n++] = c;
    v->index[at] = (uint32_t)v->n;
  }
  pthread_rwlock_unlock(&s->lock);
}

store_cache_t *store_view_find(store_view_t *v, const char *name, size_t len) {
  store_view_refresh(v);
  uint64_t h = XXH3_64bits(name, len);
  for (size_t at = h & v->index_mask; v->index[at]; at = (at + 1) & v->index_mask) {
    store_cache_t *c = v->caches[v->index[at] - 1];
    if (c->name_hash == h && strlen(c->cfg.name) == len &&
        memcmp(c->cfg.name, name, len) == 0)
      return c;
  }
  return NULL;
}

const store_cache_cfg_t *store_cache_cfg(const store_cache_t *c) { return &c->cfg; }

size_t store_cache_list(store_t *s, store_cache_cfg_t *out, size_t max) {
  pthread_rwlock_rdlock(&s->lock);
  size_t n = s->ncaches;
  for (size_t i = 0; i < n && i < max; i++) out[i] = s->caches[i]->cfg;
  pthread_rwlock_unlock(&s->lock);
  return n;
}

size_t store_cache_count(store_t *s) {
  pthread_rwlock_rdlock(&s->lock);
  size_t n = s->ncaches;
  pthread_rwlock_unlock(&s->lock);
  return n;
}

/* ---- entries ----------------------------------------------------------- */

void store_key_init(const store_cache_t *c, const void *key, size_t len,
                    store_key_t *k) {
  k->data = key;
  k->len = len;
  uint64_t h = XXH3_64bits(key, len);
  const void *aff;
  size_t aff_len;
  part_affinity(key, len, &aff, &aff_len);
  uint64_t ph = aff_len == len ? h : XXH3_64bits(aff, aff_len);
  k->part = (uint32_t)(ph % c->cfg.partitions);
  /* Buckets take the hash's high half: the partition already fixed its low
   * bits (hash mod a power of two), so they would send every key of a
   * partition to the same bucket. */
  k->hash = (h >> 32) | (h << 32);
}

int store_check_sizes(const store_t *s, size_t key_len, size_t value_len) {
  if (key_len > (uint64_t)s->limits.key_bytes_max) return GRID_EKEYTOOBIG;
  if (value_len > (uint64_t)s->limits.value_bytes_max) return GRID_EVALTOOBIG;
  return 0;
}

static int store_expired(const store_entry_t *e, int64_t now_ms) {
  return e->expire_at_ms != 0 && e->expire_at_ms <= now_ms;
}

/* Finds the entry of k in p; *link receives the pointer that points at it
 * (for unlinking). Expired entries are found too: the caller decides. */
static store_entry_t *store_find(store_part_t *p, const store_key_t *k,
                                 store_entry_t ***link) {
  if (!p->buckets) return NULL;
  store_entry_t **l = &p->buckets[k->hash & p->mask];
  for (store_entry_t *e = *l; e; l = &e->next, e = e->next) {
    if (e->hash == k->hash && e->key_len == k->len &&
        (k->len == 0 || memcmp(e->data, k->data, k->len) == 0)) {
      *link = l;
      return e;
    }
  }
  return NULL;
}

static void store_unlink_free(store_t *s, store_part_t *p, store_entry_t **link,
                              store_entry_t *e) {
  *link = e->next;
  atomic_fetch_sub_explicit(&p->count, 1, memory_order_relaxed);
  if (e->expire_at_ms) atomic_fetch_sub_explicit(&p->expiring, 1, memory_order_relaxed);
  store_part_bytes_add(p, -store_entry_cost(e->key_len, e->value_len));
  store_mem_release(s, store_entry_cost(e->key_len, e->value_len));
  free(e);
}

/* An entry's value into memory from alloc (NUL kept). Partition locked. */
static int store_copy_value(const store_entry_t *e, store_alloc_fn alloc, void *ctx,
                            void **value, size_t *value_len, uint64_t *version) {
  void *v = alloc(ctx, e->value_len + 1);
  if (!v) return GRID_ENOMEM;
  memcpy(v, e->data + e->key_len, e->value_len + 1);
  *value = v;
  *value_len = e->value_len;
  *version = e->version;
  return 0;
}

/* store_get's read, the partition locked. */
static int store_get_locked(store_cache_t *c, store_part_t *p, const store_key_t *k,
                            int64_t now_ms, store_alloc_fn alloc, void *ctx, void **value,
                            size_t *value_len, uint64_t *version, uint8_t *type) {
  int rc = GRID_ENOTFOUND;
  store_entry_t **link;
  store_entry_t *e = store_find(p, k, &link);
  /* The clock is read only for an entry that can expire: most cannot, and
   * the read is a good part of a get's cost. */
  if (e && e->expire_at_ms && now_ms == STORE_NOW_LAZY) now_ms = clock_wall_ms();
  if (e && store_expired(e, now_ms)) {
    /* Where changes are kept, its removal is a change of its own (the
     * sweep's, or the primary's): a read only sees it absent. */
    if (!atomic_load_explicit(&c->history, memory_order_relaxed))
      store_unlink_free(c->store, p, link, e);
    e = NULL;
  }
  /* No type asked for: a string is. */
  if (e && !type && e->type != GRID_TYPE_STRING) return GRID_EWRONGTYPE;
  if (e) rc = store_copy_value(e, alloc, ctx, value, value_len, version);
  if (e && type) *type = (uint8_t)e->type;
  return rc;
}

int store_get(store_cache_t *c, const store_key_t *k, int64_t now_ms,
              store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
              uint64_t *version) {
  store_part_t *p = &c->parts[k->part];
  part_lock(p);
  int rc = store_get_locked(c, p, k, now_ms, alloc, ctx, value, value_len, version, NULL);
  part_unlock(p);
  return rc;
}

int store_get_typed(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                    store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
                    uint64_t *version, uint8_t *type) {
  store_part_t *p = &c->parts[k->part];
  part_lock(p);
  int rc = store_get_locked(c, p, k, now_ms, alloc, ctx, value, value_len, version, type);
  part_unlock(p);
  return rc;
}

/* Doubles the bucket array (or makes the first one). Called with the lock
 * held; on failure the table stays as it was and still works. */
static void store_grow(store_t *s, store_part_t *p) {
  uint64_t old_n = p->buckets ? p->mask + 1 : 0;
  uint64_t n = old_n ? old_n * 2 : STORE_BUCKETS_MIN;
  int64_t cost = (int64_t)((n - old_n) * sizeof(store_entry_t *));
  if (store_mem_reserve(s, cost) != 0) return;
  store_entry_t **b = calloc(n, sizeof *b);
  if (!b) {
    store_mem_release(s, cost);
    return;
  }
  for (uint64_t i = 0; i < old_n; i++) {
    store_entry_t *e = p->buckets[i];
    while (e) {
      store_entry_t *next = e->next;
      store_entry_t **slot = &b[e->hash & (n - 1)];
      e->next = *slot;
      *slot = e;
      e = next;
    }
  }
  free(p->buckets);
  p->buckets = b;
  p->mask = n - 1;
}

/* Parses a whole value as a signed 64-bit decimal, as Redis's INCR does:
 * no spaces, no '+', no leading zeros except "0" itself. */

/* A new entry of k with this value, version and expiry, linked nowhere;
 * NULL when malloc fails. */
static store_entry_t *store_entry_new(const store_key_t *k, const void *value, size_t value_len,
                                      uint8_t type, uint64_t version, int64_t expire_at_ms) {
  GRID_ASSERT(k->len < STORE_KEY_BYTES_LIMIT); /* store_install refuses longer ones */
  store_entry_t *e = malloc(sizeof *e + k->len + value_len + 1);
  if (!e) return NULL;
  e->hash = k->hash;
  e->key_len = (uint32_t)k->len;
  e->type = type;
  e->value_len = (uint32_t)value_len;
  /* Empty keys and values are valid (as in Redis): their pointer may be
   * NULL, which memcpy must not see even with length 0. */
  if (k->len) memcpy(e->data, k->data, k->len);
  if (value_len) memcpy(e->data + k->len, value, value_len);
  e->data[k->len + value_len] = '\0';
  e->version = version;
  e->expire_at_ms = expire_at_ms;
  e->next = NULL;
  return e;
}

/* Links e (its memory paid for) in place of old (found at link; NULL: a
 * new key, for which the table grows when full). Fails only when p has no
 * bucket array and none can be had (GRID_EMEMLIMIT): nothing changed then.
 * Partition locked. */
static int store_link(store_t *s, store_part_t *p, store_entry_t **link, store_entry_t *old,
                      store_entry_t *e) {
  /* The lock was held since old was found, so its link still points at it. */
  GRID_ASSERT(!old || *link == old);
  if (old) {
    /* e's value may have come from old (an expiry change keeps the value):
     * it was copied, and from here on only e holds it. */
    e->next = old->next;
    *link = e;
    store_part_bytes_add(p, store_entry_cost(e->key_len, e->value_len) -
                                store_entry_cost(old->key_len, old->value_len));
    if ((e->expire_at_ms != 0) != (old->expire_at_ms != 0)) {
      if (e->expire_at_ms) atomic_fetch_add_explicit(&p->expiring, 1, memory_order_relaxed);
      else atomic_fetch_sub_explicit(&p->expiring, 1, memory_order_relaxed);
    }
    free(old);
    return 0;
  }
  uint64_t count = atomic_load_explicit(&p->count, memory_order_relaxed);
  if (!p->buckets || count >= p->mask + 1) store_grow(s, p);
  if (!p->buckets) return GRID_EMEMLIMIT; /* not even the first array could be had */
  store_entry_t **slot = &p->buckets[e->hash & p->mask];
  e->next = *slot;
  *slot = e;
  atomic_fetch_add_explicit(&p->count, 1, memory_order_relaxed);
  if (e->expire_at_ms) atomic_fetch_add_explicit(&p->expiring, 1, memory_order_relaxed);
  store_part_bytes_add(p, store_entry_cost(e->key_len, e->value_len));
  return 0;
}

/* Puts the entry of k with this value, version and expiry in place of old
 * (found at link; NULL: a new key). Called with the partition locked; on
 * failure nothing has changed. */
static int store_install(store_t *s, store_part_t *p, const store_key_t *k,
                         store_entry_t **link, store_entry_t *old,
                         const void *value, size_t value_len, uint8_t type, uint64_t version,
                         int64_t expire_at_ms, store_entry_t **installed) {
  if (k->len >= STORE_KEY_BYTES_LIMIT) return GRID_EKEYTOOBIG;
  int64_t cost = store_entry_cost(k->len, value_len);
  int64_t delta = cost - (old ? store_entry_cost(old->key_len, old->value_len) : 0);
  int rc = store_mem_reserve(s, delta);
  if (rc != 0) return rc;
  store_entry_t *e = store_entry_new(k, value, value_len, type, version, expire_at_ms);
  if (!e) {
    store_mem_unreserve(s, delta);
    return GRID_ENOMEM;
  }
  rc = store_link(s, p, link, old, e);
  if (rc != 0) {
    store_mem_unreserve(s, delta);
    free(e);
    return rc;
  }
  if (installed) *installed = e;
  GRID_ASSERT(e->version == version);
  return 0;
}

/* ---- writes ------------------------------------------------------------ */

/* What a write does once its condition holds. */
typedef enum {
  STORE_DO_INSTALL, /* puts the new value in place */
  STORE_DO_DELETE,  /* removes the entry, as a write of its own */
  STORE_DO_NOTHING, /* changes nothing, and that is no error (Redis EXPIRE
                       of a missing key) */
} store_action_t;

/* The value a write installs: the caller's, or one made from the old
 * entry's. */
typedef struct store_new_value {
  const void *data;
  size_t len;
  uint8_t type;           /* grid_value_type_t */
  unsigned char *joined;  /* STORE_APPEND's value, malloc'd; the writer frees it */
  char num[24];           /* STORE_ADD's value, as decimal text */
} store_new_value_t;

/* Copies old's value out for the caller, whatever the write then does
 * (Redis GETSET, SET ... GET, GETDEL). 0 or GRID_ENOMEM. */
static int store_copy_old_value(const store_write_t *w, const store_entry_t *old,
                                store_result_t *res) {
  res->old_value = w->old_alloc(w->old_ctx, old->value_len + 1);
  if (!res->old_value) return GRID_ENOMEM;
  memcpy(res->old_value, old->data + old->key_len, old->value_len + 1);
  res->old_len = old->value_len;
  return 0;
}

/* STORE_APPEND: old's value with w's after it (w's alone for a new key). */
static int store_append_value(const store_t *s, const store_write_t *w,
                              const store_entry_t *old, store_new_value_t *nv,
                              store_result_t *res) {
  if (old) {
    if (old->value_len + w->value_len > (uint64_t)s->limits.value_bytes_max)
      return GRID_EVALTOOBIG;
    nv->joined = malloc(old->value_len + w->value_len + 1);
    if (!nv->joined) return GRID_ENOMEM;
    memcpy(nv->joined, old->data + old->key_len, old->value_len);
    if (w->value_len) memcpy(nv->joined + old->value_len, w->value, w->value_len);
    nv->data = nv->joined;
    nv->len = old->value_len + w->value_len;
  }
  res->number = (int64_t)nv->len;
  return 0;
}

/* STORE_ADD: old's value read as a number (0 for a new key) plus delta,
 * written back as decimal text, as Redis's INCRBY keeps it. */
static int store_add_value(const store_write_t *w, const store_entry_t *old,
                           store_new_value_t *nv, store_result_t *res) {
  int64_t cur = 0, sum;
  if (old && num_parse_i64(old->data + old->key_len, old->value_len, &cur) != 0)
    return GRID_ENOTNUM;
  if (__builtin_add_overflow(cur, w->delta, &sum)) return GRID_EOVERFLOW;
  nv->len = (size_t)snprintf(nv->num, sizeof nv->num, "%lld", (long long)sum);
  nv->data = nv->num;
  res->number = sum;
  return 0;
}

/* STORE_EXPIRE: the wall-clock time w asks for (saturating). */
static int64_t store_expire_when(const store_write_t *w, int64_t now_ms) {
  if (w->expire_absolute) return w->expire_ms;
  return w->expire_ms >= INT64_MAX - now_ms ? INT64_MAX : now_ms + w->expire_ms;
}

/* STORE_EXPIRE: keeps old's value under a new expiry, or removes the key. */
static store_action_t store_expire_action(const store_write_t *w, const store_entry_t *old,
                                          int64_t now_ms, store_new_value_t *nv,
                                          store_result_t *res) {
  res->number = 0; /* nothing to change: not an error for Redis */
  if (!old || (w->persist && old->expire_at_ms == 0)) return STORE_DO_NOTHING;
  int64_t when = w->persist ? 0 : store_expire_when(w, now_ms), cur = old->expire_at_ms;
  if (!w->persist && w->expire_cond) {
    int c = w->expire_cond;
    if ((c & STORE_EXPIRE_NX) && cur) return STORE_DO_NOTHING;
    if ((c & STORE_EXPIRE_XX) && !cur) return STORE_DO_NOTHING;
    if ((c & STORE_EXPIRE_GT) && (!cur || when <= cur)) return STORE_DO_NOTHING;
    if ((c & STORE_EXPIRE_LT) && cur && when >= cur) return STORE_DO_NOTHING;
  }
  res->number = 1;
  /* An expiry in the past deletes the key (Redis 7). */
  if (!w->persist && when <= now_ms) return STORE_DO_DELETE;
  nv->data = old->data + old->key_len;
  nv->len = old->value_len;
  nv->type = (uint8_t)old->type;
  return STORE_DO_INSTALL;
}

/* Checks w's condition against old (NULL: the key is absent) and works out
 * the value to install. 0 with *action, or the error the write fails with
 * (nothing has changed then). */
static int store_write_decide(const store_t *s, const store_write_t *w,
                              const store_entry_t *old, int64_t now_ms, store_new_value_t *nv,
                              store_result_t *res, store_action_t *action) {
  *action = STORE_DO_INSTALL;
  nv->type = w->op == STORE_PUT ? w->type : GRID_TYPE_STRING;
  /* The string ops need a string (a plain PUT replaces whatever was there,
   * as Redis's SET). */
  if (old && old->type != GRID_TYPE_STRING &&
      (w->op == STORE_ADD || w->op == STORE_APPEND || w->old_alloc))
    return GRID_EWRONGTYPE;
  switch (w->op) {
    case STORE_PUT:
      if (w->cond == STORE_IF_ABSENT && old) return GRID_EEXIST;
      if (w->cond == STORE_IF_PRESENT && !old) return GRID_ENOTFOUND;
      return 0;
    case STORE_PUT_IF_ABSENT: return old ? GRID_EEXIST : 0;
    case STORE_REPLACE: return old ? 0 : GRID_ENOTFOUND;
    case STORE_CAS:
      if (!old) return GRID_ENOTFOUND;
      return old->version == w->expected_version ? 0 : GRID_EVERSION;
    case STORE_DELETE:
      *action = STORE_DO_DELETE;
      return old ? 0 : GRID_ENOTFOUND;
    case STORE_APPEND: return store_append_value(s, w, old, nv, res);
    case STORE_ADD: return store_add_value(w, old, nv, res);
    case STORE_EXPIRE:
      *action = store_expire_action(w, old, now_ms, nv, res);
      return 0;
    case STORE_REMOVE_EXPIRED:
      return GRID_ENOTFOUND; /* a live entry, or none: store_write_rec
                                handles an expired one */
  }
  return 0;
}

/* When the entry a write installs expires (0: never). */
static int64_t store_write_expire_at(const store_cache_t *c, const store_write_t *w,
                                     const store_entry_t *old, int64_t now_ms) {
  if (w->op == STORE_EXPIRE) return w->persist ? 0 : store_expire_when(w, now_ms);
  /* Counters and appends keep their expiry, as does a put asked to. */
  if (old && (w->op == STORE_ADD || w->keep_ttl || (w->op == STORE_APPEND && !w->ttl_ms)))
    return old->expire_at_ms;
  uint64_t ttl = w->ttl_ms ? w->ttl_ms : c->cfg.default_ttl_ms;
  if (!ttl) return 0;
  /* A TTL past the end of time saturates: the entry never expires in
   * practice, and no sum overflows. */
  return ttl >= (uint64_t)(INT64_MAX - now_ms) ? INT64_MAX : now_ms + (int64_t)ttl;
}

/* The version of p's next write: the map's epoch above the update counter
 * that write brings. Partition locked. */
static uint64_t store_next_version(store_t *s, const store_part_t *p) {
  return (atomic_load(&s->epoch) << STORE_VERSION_COUNTER_BITS) |
         ((p->counter + 1) & STORE_COUNTER_MASK);
}

/* Counts one write of p, made with version, and publishes it as applied.
 * Partition locked. */
static void store_count_write(store_part_t *p, uint64_t version) {
  uint64_t before = p->counter;
  /* version was worked out under the same lock: no write came between. */
  GRID_ASSERT((version & STORE_COUNTER_MASK) == ((before + 1) & STORE_COUNTER_MASK));
  p->counter++;
  p->last_version = version;
  GRID_ASSERT(p->counter > before); /* a partition's counter only grows */
  atomic_store_explicit(&p->sync.applied, p->counter & STORE_COUNTER_MASK, memory_order_release);
}

/* Keeps a change of p in its history: the ring is made at the first
 * change and grows while memory_bytes_max allows (a ring that cannot keep
 * it forgets what it held: its readers hear of a GAP). Partition locked. */
/* Reserves delta bytes for change histories: within
 * change_buffers_bytes_max and memory_bytes_max. 0 or -1. */
static int store_changes_reserve(store_t *s, int64_t delta) {
  int64_t cur = atomic_load(&s->changes_bytes);
  do {
    if (cur + delta > s->limits.change_buffers_bytes_max) return -1;
  } while (!atomic_compare_exchange_weak(&s->changes_bytes, &cur, cur + delta));
  if (store_mem_reserve(s, delta) != 0) {
    atomic_fetch_sub(&s->changes_bytes, delta);
    return -1;
  }
  return 0;
}

static void store_changes_unreserve(store_t *s, int64_t delta) {
  atomic_fetch_sub(&s->changes_bytes, delta);
  store_mem_release(s, delta);
}

/* Keeps a change of p in its history: the ring is made at the first
 * change and grows while its bounds allow (a ring that cannot keep it
 * forgets what it held: its readers hear of a GAP). Partition locked. */
static void store_keep_change(store_t *s, store_part_t *p, const change_t *ch) {
  if (!p->changes) {
    int64_t cost = (int64_t)sizeof *p->changes;
    if (store_changes_reserve(s, cost) != 0) return; /* no history: readers get a GAP */
    if (!(p->changes = malloc(sizeof *p->changes))) {
      store_changes_unreserve(s, cost);
      return;
    }
    changes_init(p->changes, (size_t)s->limits.change_buffer_bytes, ch->counter - 1);
    p->began = ch->counter - 1;
  }
  changes_t *r = p->changes;
  if (ch->counter <= r->last) {
    /* Not after what the history holds (it should not happen: records
     * come in counter order, and a fill restarts the history at its
     * counter): forget it all rather than pass a change out of order. */
    changes_reset(r, ch->counter);
    p->began = ch->counter;
    return;
  }
  size_t want = changes_grow_wanted(r, ch);
  if (want) {
    int64_t delta = (int64_t)(want - r->cap);
    if (store_changes_reserve(s, delta) == 0 && changes_grow(r, want) != 0)
      store_changes_unreserve(s, delta);
  }
  uint64_t base = r->base;
  changes_append(r, ch);
  /* A change the ring could not keep reset it: the history begins again
   * after it. */
  if (r->base > base && r->count == 0) p->began = r->base;
}

static void store_keep(store_t *s, store_part_t *p, change_kind_t kind, uint8_t how,
                       const void *key, size_t key_len, const void *value, size_t value_len,
                       uint8_t type, uint64_t version, int64_t expire_at_ms) {
  change_t ch = {.kind = kind, .type = type, .how = how, .counter = version & STORE_COUNTER_MASK,
                 .version = version, .expire_at_ms = expire_at_ms, .key = key,
                 .key_len = key_len, .value = value, .value_len = value_len};
  store_keep_change(s, p, &ch);
}

/* The disk state a record of counter `counter` leaves. Records come in
 * counter order (a persistent cache's every change is one), so a copy
 * that gets the very next one is as whole as it was; one that sees a jump
 * missed changes (it was not in sync, or is being filled) and is no copy
 * to trust after a restart until a fill completes. Partition locked. */
static int store_record_state(const store_part_t *p, uint64_t counter) {
  return (counter & STORE_COUNTER_MASK) > p->counter + 1 ? STORE_PART_FILLING : STORE_PART_KEEP;
}

/* One change of a persistent cache to its disk, before memory: 0, or the
 * disk's error (nothing changed). last: the partition's last version. */
static int store_persist_one(store_cache_t *c, uint32_t part, const void *key, size_t key_len,
                             const void *value, size_t value_len, uint8_t type,
                             uint64_t version, int64_t expire_at_ms, uint64_t last) {
  const store_persist_t *ps = &c->store->persist;
  ps->add(c->disk, part, key, key_len, value, value_len, type, version, expire_at_ms);
  return ps->commit(c->disk, part, last, STORE_PART_KEEP);
}

typedef struct store_delta_probe {
  uint64_t version;
  int seen, same;
} store_delta_probe_t;

static int store_delta_probe_cb(void *ctx, const change_t *ch) {
  store_delta_probe_t *pr = ctx;
  pr->seen = 1;
  pr->same = ch->version == pr->version;
  return 1;
}

/* Deletes old (found at link) as a write of its own: a new update counter,
 * and a record without a value. Partition locked. */
static int store_delete_rec(store_cache_t *c, store_part_t *p, const store_key_t *k,
                            store_entry_t **link, store_entry_t *old, store_result_t *res,
                            change_kind_t kind, uint8_t how, int keep,
                            store_applied_fn applied, void *ctx, int persist) {
  store_t *s = c->store;
  uint64_t version = store_next_version(s, p);
  if (persist && c->disk) {
    int rc = store_persist_one(c, k->part, k->data, k->len, NULL, 0, 0, version, 0, version);
    if (rc != 0) return rc;
  }
  res->version = old->version;
  store_unlink_free(s, p, link, old);
  store_count_write(p, version);
  if (keep) store_keep(s, p, kind, how, k->data, k->len, NULL, 0, 0, version, 0);
  if (applied) applied(ctx, k->data, k->len, NULL, 0, 0, version, 0);
  return 0;
}

/* Puts nv in place of old (found at link; NULL: a new key) as a write of
 * its own: the next version, a new update counter, and a record of the
 * entry as installed. Partition locked; on failure nothing has changed. */
static int store_install_rec(store_cache_t *c, store_part_t *p, const store_key_t *k,
                             store_entry_t **link, store_entry_t *old,
                             const store_new_value_t *nv, int64_t expire_at_ms,
                             store_result_t *res, uint8_t how, int keep,
                             store_applied_fn applied, void *ctx) {
  store_t *s = c->store;
  uint64_t version = store_next_version(s, p);
  store_entry_t *e;
  if (c->disk) {
    int rc = store_persist_one(c, k->part, k->data, k->len, nv->data, nv->len, nv->type, version,
                               expire_at_ms, version);
    if (rc != 0) return rc;
  }
  int rc = store_install(s, p, k, link, old, nv->data, nv->len, nv->type, version, expire_at_ms,
                         &e);
  if (rc != 0) {
    /* Memory refused it after the disk took it: the disk gets the entry
     * back as memory keeps it. */
    if (c->disk)
      store_persist_one(c, k->part, k->data, k->len, old ? old->data + old->key_len : NULL,
                        old ? old->value_len : 0, old ? old->type : 0, old ? old->version : 0,
                        old ? old->expire_at_ms : 0, 0);
    return rc;
  }
  store_count_write(p, version);
  if (keep)
    store_keep(s, p, CHANGE_PUT, how, e->data, e->key_len, e->data + e->key_len, e->value_len,
               nv->type, version, expire_at_ms);
  res->version = version;
  /* The record is made from the entry as installed: the value may have
   * pointed into the entry it replaced, which is freed now. */
  if (applied)
    applied(ctx, e->data, e->key_len, e->data + e->key_len, e->value_len, nv->type, version,
            expire_at_ms);
  return 0;
}

int store_write(store_cache_t *c, const store_key_t *k, const store_write_t *w,
                int64_t now_ms, store_result_t *res) {
  return store_write_rec(c, k, w, now_ms, res, NULL, NULL);
}

int store_write_rec(store_cache_t *c, const store_key_t *k, const store_write_t *w,
                    int64_t now_ms, store_result_t *res, store_applied_fn applied,
                    void *ctx) {
  store_t *s = c->store;
  store_part_t *p = &c->parts[k->part];
  store_new_value_t nv = {.data = w->value, .len = w->value_len};
  store_action_t action = STORE_DO_NOTHING;
  int rc = 0;

  part_lock(p);
  store_entry_t **link = NULL;
  int keep = atomic_load_explicit(&c->history, memory_order_relaxed);
  store_entry_t *found = store_find(p, k, &link), *old = found;
  if (found && store_expired(found, now_ms)) {
    /* The write sees the key as absent. Where changes are kept, its
     * removal is a change of its own (the sweep's, or the primary's), so
     * the entry stays until then, or is replaced by this write. */
    old = NULL;
    if (w->op == STORE_REMOVE_EXPIRED) {
      rc = store_delete_rec(c, p, k, link, found, res, CHANGE_EXPIRE, w->how, keep, applied, ctx,
                            1);
      action = rc == 0 ? STORE_DO_DELETE : STORE_DO_NOTHING;
      goto done;
    }
    if (!keep) {
      store_unlink_free(s, p, link, found);
      found = NULL;
    }
  }
  if (old && w->old_alloc) rc = store_copy_old_value(w, old, res);
  if (rc == 0) rc = store_write_decide(s, w, old, now_ms, &nv, res, &action);
  if (rc == 0 && action == STORE_DO_DELETE)
    rc = store_delete_rec(c, p, k, link, old, res, CHANGE_DELETE, w->how, keep, applied, ctx, 1);
  if (rc == 0 && action == STORE_DO_INSTALL)
    rc = store_install_rec(c, p, k, link, found, &nv, store_write_expire_at(c, w, old, now_ms),
                           res, (uint8_t)(w->how | (old ? 0 : CHANGE_HOW_NEW)), keep, applied,
                           ctx);
done:
  part_unlock(p);
  free(nv.joined);
  if (rc != 0) action = STORE_DO_NOTHING;
  if (rc == 0 && action != STORE_DO_NOTHING && s->announce_applied && store_watched(c))
    store_part_commit(c, k->part, 0);
  return rc;
}

/* ---- holds: several writes as one step ---------------------------------- */

static int store_ptr_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (store_part_t *const *)a, y = (uintptr_t) * (store_part_t *const *)b;
  return x < y ? -1 : x > y;
}

/* What store_hold returns inside a hold that covers what it asks for. */
static struct store_hold store_hold_within;

/* A thread's hold of a few partitions (most: a collection command holds
 * one), so that taking one costs no malloc. */
static _Thread_local _Alignas(struct store_hold) unsigned char
    store_hold_small[sizeof(struct store_hold) + STORE_HOLD_SMALL * sizeof(store_part_t *)];

store_hold_t *store_hold(store_cache_t *c, const uint32_t *parts, size_t n) {
  if (store_held) { /* one hold at a time: within it, only what it holds */
    for (size_t i = 0; i < n; i++)
      if (parts[i] >= c->cfg.partitions || !store_part_held(&c->parts[parts[i]])) return NULL;
    return &store_hold_within;
  }
  store_hold_t *h = n <= STORE_HOLD_SMALL ? (store_hold_t *)(void *)store_hold_small
                                          : malloc(sizeof *h + n * sizeof h->parts[0]);
  if (!h) return NULL;
  h->small = n <= STORE_HOLD_SMALL;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (parts[i] < c->cfg.partitions) h->parts[m++] = &c->parts[parts[i]];
  qsort(h->parts, m, sizeof h->parts[0], store_ptr_cmp);
  size_t u = 0;
  for (size_t i = 0; i < m; i++)
    if (u == 0 || h->parts[u - 1] != h->parts[i]) h->parts[u++] = h->parts[i];
  h->n = u;
  for (size_t i = 0; i < u; i++) pthread_mutex_lock(&h->parts[i]->lock);
  store_held = h;
  return h;
}

void store_release(store_hold_t *h) {
  if (!h || h == &store_hold_within) return;
  GRID_ASSERT(store_held == h);
  store_held = NULL;
  for (size_t i = h->n; i-- > 0;) pthread_mutex_unlock(&h->parts[i]->lock);
  if (!h->small) free(h);
}

/* ---- batches: one partition's writes, all or none ---------------------- */

static int store_batch_hash_cmp(const void *a, const void *b) {
  const store_batch_op_t *x = *(store_batch_op_t *const *)a, *y = *(store_batch_op_t *const *)b;
  if (x->key.hash != y->key.hash) return x->key.hash < y->key.hash ? -1 : 1;
  if (x->key.len != y->key.len) return x->key.len < y->key.len ? -1 : 1;
  return x->key.len ? memcmp(x->key.data, y->key.data, x->key.len) : 0;
}

/* An op naming a key another op names (the later of the two): its index
 * + 1, or 0 when every key is named once; -1 when memory fails. */
static ssize_t store_batch_twice(store_batch_op_t *ops, size_t n) {
  if (n < 2) return 0;
  store_batch_op_t **by = malloc(n * sizeof *by);
  if (!by) return -1;
  for (size_t i = 0; i < n; i++) by[i] = &ops[i];
  qsort(by, n, sizeof *by, store_batch_hash_cmp);
  ssize_t twice = 0;
  for (size_t i = 1; i < n && !twice; i++)
    if (store_batch_hash_cmp(&by[i - 1], &by[i]) == 0)
      twice = (by[i] > by[i - 1] ? by[i] : by[i - 1]) - ops + 1;
  free(by);
  return twice;
}

/* op's condition against the live entry (NULL: absent). */
static int store_batch_cond(const store_batch_op_t *op, const store_entry_t *live) {
  switch (op->cond) {
    case STORE_COND_ABSENT: return live ? GRID_EEXIST : 0;
    case STORE_COND_PRESENT: return live ? 0 : GRID_ENOTFOUND;
    case STORE_COND_VERSION:
      if (!live) return GRID_ENOTFOUND;
      return live->version == op->version ? 0 : GRID_EVERSION;
    default: return 0;
  }
}

int store_write_batch(store_cache_t *c, store_batch_op_t *ops, size_t n, int64_t now_ms,
                      uint8_t how, size_t *failed, store_applied_fn applied, void *ctx) {
  store_t *s = c->store;
  *failed = 0;
  if (n == 0) return 0;
  uint32_t part = ops[0].key.part;
  for (size_t i = 0; i < n; i++) {
    if (ops[i].key.part != part) {
      *failed = i;
      return GRID_EINVAL; /* the caller says which */
    }
    if (ops[i].kind < STORE_BATCH_PUT || ops[i].kind > STORE_BATCH_CHECK ||
        ops[i].cond < STORE_COND_ANY || ops[i].cond > STORE_COND_VERSION) {
      *failed = i;
      return GRID_EINVAL;
    }
  }
  ssize_t twice = store_batch_twice(ops, n);
  if (twice < 0) return GRID_ENOMEM;
  if (twice) {
    *failed = (size_t)twice - 1;
    return GRID_EINVAL;
  }
  store_entry_t **made = calloc(n, sizeof *made);
  if (!made) return GRID_ENOMEM;
  store_part_t *p = &c->parts[part];
  int rc = 0, wrote = 0;
  int64_t delta = 0;
  part_lock(p);
  int keep = atomic_load_explicit(&c->history, memory_order_relaxed);
  /* 1. Every condition against the entries as they are, and the memory
   * the puts need, before anything changes. */
  int new_keys = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    store_batch_op_t *op = &ops[i];
    store_entry_t **link;
    store_entry_t *e = store_find(p, &op->key, &link);
    store_entry_t *live = e && !store_expired(e, now_ms) ? e : NULL;
    rc = store_batch_cond(op, live);
    if (rc != 0) {
      *failed = i;
      break;
    }
    op->version_out = live ? live->version : 0;
    op->existed = live != NULL;
    if (op->kind != STORE_BATCH_PUT) continue;
    store_write_t w = {.op = STORE_PUT, .ttl_ms = op->ttl_ms};
    int64_t expire_at = store_write_expire_at(c, &w, live, now_ms);
    made[i] = op->key.len < STORE_KEY_BYTES_LIMIT && op->type <= GRID_TYPE_MAX
                  ? store_entry_new(&op->key, op->value, op->value_len, op->type, 0, expire_at)
                  : NULL;
    if (!made[i]) rc = GRID_ENOMEM;
    delta += store_entry_cost(op->key.len, op->value_len) -
             (e ? store_entry_cost(e->key_len, e->value_len) : 0);
    new_keys += e == NULL;
  }
  if (rc == 0) rc = store_mem_reserve(s, delta);
  else delta = 0;
  if (rc == 0 && new_keys && !p->buckets) store_grow(s, p);
  if (rc == 0 && new_keys && !p->buckets) {
    store_mem_unreserve(s, delta);
    rc = GRID_EMEMLIMIT;
  }
  if (rc == 0 && c->disk) {
    /* The disk takes the whole batch as one write, with the versions step
     * 2 gives (the next counters, in order), before memory changes. */
    uint64_t counter = p->counter, epoch = atomic_load(&s->epoch), version = 0;
    for (size_t i = 0; i < n; i++) {
      store_batch_op_t *op = &ops[i];
      if (op->kind == STORE_BATCH_CHECK || (op->kind == STORE_BATCH_DELETE && !op->existed))
        continue;
      version = (epoch << STORE_VERSION_COUNTER_BITS) | (++counter & STORE_COUNTER_MASK);
      if (op->kind == STORE_BATCH_DELETE)
        s->persist.add(c->disk, part, op->key.data, op->key.len, NULL, 0, 0, version, 0);
      else
        s->persist.add(c->disk, part, op->key.data, op->key.len, op->value, op->value_len,
                       op->type, version, made[i]->expire_at_ms);
    }
    if (version && (rc = s->persist.commit(c->disk, part, version, STORE_PART_KEEP)) != 0)
      store_mem_unreserve(s, delta);
  }
  /* 2. Every write, each with the next counter: none can fail now. */
  for (size_t i = 0; i < n && rc == 0; i++) {
    store_batch_op_t *op = &ops[i];
    if (op->kind == STORE_BATCH_CHECK) continue;
    store_entry_t **link = NULL;
    store_entry_t *e = store_find(p, &op->key, &link);
    uint64_t version = store_next_version(s, p);
    if (op->kind == STORE_BATCH_DELETE) {
      if (!op->existed) continue; /* nothing to remove (an expired entry
                                     is left to its own removal) */
      store_result_t res;
      store_delete_rec(c, p, &op->key, link, e, &res, CHANGE_DELETE, how, keep, applied, ctx, 0);
      op->version_out = version;
      wrote = 1;
      continue;
    }
    store_entry_t *ne = made[i];
    made[i] = NULL;
    ne->version = version;
    int lrc = store_link(s, p, link, e, ne);
    GRID_ASSERT(lrc == 0); /* the bucket array exists: linking cannot fail */
    (void)lrc;
    store_count_write(p, version);
    uint8_t h = (uint8_t)(how | (op->existed ? 0 : CHANGE_HOW_NEW));
    if (keep)
      store_keep(s, p, CHANGE_PUT, h, ne->data, ne->key_len, ne->data + ne->key_len,
                 ne->value_len, op->type, version, ne->expire_at_ms);
    if (applied)
      applied(ctx, ne->data, ne->key_len, ne->data + ne->key_len, ne->value_len, op->type, version,
              ne->expire_at_ms);
    op->version_out = version;
    wrote = 1;
  }
  part_unlock(p);
  for (size_t i = 0; i < n; i++) free(made[i]);
  free(made);
  if (rc == 0 && wrote && s->announce_applied && store_watched(c)) store_part_commit(c, part, 0);
  return rc;
}

/* ---- scan and sweep ---------------------------------------------------- */

static uint64_t store_rev64(uint64_t v) {
  v = ((v >> 1) & 0x5555555555555555ull) | ((v & 0x5555555555555555ull) << 1);
  v = ((v >> 2) & 0x3333333333333333ull) | ((v & 0x3333333333333333ull) << 2);
  v = ((v >> 4) & 0x0F0F0F0F0F0F0F0Full) | ((v & 0x0F0F0F0F0F0F0F0Full) << 4);
  return __builtin_bswap64(v);
}

/* The next cursor after visiting bucket (v & mask): increments the
 * reversed, masked cursor. 0 means the whole table was covered. */
static uint64_t store_cursor_next(uint64_t v, uint64_t mask) {
  v |= ~mask;
  v = store_rev64(v);
  v++;
  return store_rev64(v);
}

/* The scan of store_scan and store_scan_full: one of cb / full is set. */
static int store_scan_any(store_cache_t *c, uint32_t part, uint64_t *cursor,
                          uint32_t count, int64_t now_ms, store_entry_cb cb,
                          store_entry_full_cb full, void *ctx) {
  if (part >= c->cfg.partitions) return GRID_EINVAL;
  store_part_t *p = &c->parts[part];
  uint64_t v = *cursor;
  uint32_t seen = 0;
  int stop = 0;
  part_lock(p);
  if (!p->buckets) {
    v = 0;
  } else {
    do {
      for (store_entry_t *e = p->buckets[v & p->mask]; e && !stop; e = e->next) {
        if (store_expired(e, now_ms)) continue;
        seen++;
        stop = cb ? cb(ctx, e->data, e->key_len, e->data + e->key_len, e->value_len,
                       e->version)
                  : full(ctx, e->data, e->key_len, e->data + e->key_len, e->value_len,
                         (uint8_t)e->type, e->version, e->expire_at_ms);
      }
      v = store_cursor_next(v, p->mask);
    } while (v != 0 && seen < count && !stop);
  }
  part_unlock(p);
  *cursor = v;
  return 0;
}

int store_expiry(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                 int64_t *expire_at_ms, uint64_t *version, uint8_t *type) {
  store_part_t *p = &c->parts[k->part];
  part_lock(p);
  store_entry_t **link;
  store_entry_t *e = store_find(p, k, &link);
  int rc = GRID_ENOTFOUND;
  if (e && !store_expired(e, now_ms)) {
    *expire_at_ms = e->expire_at_ms;
    if (version) *version = e->version;
    if (type) *type = (uint8_t)e->type;
    rc = 0;
  }
  part_unlock(p);
  return rc;
}

int store_scan(store_cache_t *c, uint32_t part, uint64_t *cursor,
               uint32_t count, int64_t now_ms, store_entry_cb cb, void *ctx) {
  return store_scan_any(c, part, cursor, count, now_ms, cb, NULL, ctx);
}

int store_scan_full(store_cache_t *c, uint32_t part, uint64_t *cursor,
                    uint32_t count, int64_t now_ms, store_entry_full_cb cb,
                    void *ctx) {
  return store_scan_any(c, part, cursor, count, now_ms, NULL, cb, ctx);
}

static int store_apply_any(store_cache_t *c, const store_key_t *k, const void *value,
                           size_t value_len, uint8_t type, uint64_t version,
                           int64_t expire_at_ms, int keep, uint8_t how, int expired);

int store_apply(store_cache_t *c, const store_key_t *k, const void *value,
                size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms) {
  return store_apply_any(c, k, value, value_len, type, version, expire_at_ms, 0, 0, 0);
}

int store_apply_change(store_cache_t *c, const store_key_t *k, const void *value,
                       size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms,
                       uint8_t how, int expired) {
  return store_apply_any(c, k, value, value_len, type, version, expire_at_ms, 1, how, expired);
}

/* One record or fill entry applied, the partition locked. */
static int store_apply_locked(store_cache_t *c, store_part_t *p, const store_key_t *k,
                              const void *value, size_t value_len, uint8_t type,
                              uint64_t version, int64_t expire_at_ms, int keep, uint8_t how,
                              int expired) {
  if (value && type > GRID_TYPE_MAX) return GRID_EINVAL; /* a newer peer's type */
  store_t *s = c->store;
  int rc = 0;
  store_entry_t **link = NULL;
  store_entry_t *old = store_find(p, k, &link);
  uint64_t before = p->counter, counter = version & STORE_COUNTER_MASK;
  /* A record of an older write (a fill sends each entry with the version it
   * was written at) leaves the counter as it is: the counter only grows. */
  if (counter > p->counter) {
    /* The very next change keeps a persistent copy's base whole up to it;
     * a jump leaves the base where it was (what is after it is replayed
     * by a delta). */
    if (keep && counter == p->counter + 1 && p->base_whole &&
        (p->base_version & STORE_COUNTER_MASK) == p->counter)
      p->base_version = version;
    p->counter = counter;
    p->last_version = version;
  }
  GRID_ASSERT(p->counter >= before && p->counter >= counter);
  atomic_store_explicit(&p->sync.applied, p->counter, memory_order_release);
  if (!value) {
    if (old) store_unlink_free(s, p, link, old);
  } else {
    rc = store_install(s, p, k, link, old, value, value_len, type, version, expire_at_ms, NULL);
  }
  /* A record is a change (kept even when the key was not here: a copy
   * being filled may not have it yet); a fill's entry is not. */
  if (rc == 0 && keep && atomic_load_explicit(&c->history, memory_order_relaxed))
    store_keep(s, p, value ? CHANGE_PUT : expired ? CHANGE_EXPIRE : CHANGE_DELETE, how, k->data,
               k->len, value, value ? value_len : 0, value ? type : 0, version,
               value ? expire_at_ms : 0);
  return rc;
}

static int store_apply_any(store_cache_t *c, const store_key_t *k, const void *value,
                           size_t value_len, uint8_t type, uint64_t version,
                           int64_t expire_at_ms, int keep, uint8_t how, int expired) {
  store_part_t *p = &c->parts[k->part];
  if (value && type > GRID_TYPE_MAX) return GRID_EINVAL; /* a newer peer's type */
  part_lock(p);
  int rc = 0;
  /* A fill's entry leaves the partition's last version as it is (it comes
   * in no order); a record moves it on. */
  if (c->disk) {
    c->store->persist.add(c->disk, k->part, k->data, k->len, value, value_len, type, version,
                          expire_at_ms);
    rc = c->store->persist.commit(c->disk, k->part, keep ? version : 0,
                                  keep ? store_record_state(p, version) : STORE_PART_KEEP);
  }
  if (rc == 0)
    rc = store_apply_locked(c, p, k, value, value_len, type, version, expire_at_ms, keep, how,
                            expired);
  part_unlock(p);
  if (rc == 0 && keep && c->store->announce_applied && store_watched(c))
    store_part_commit(c, k->part, 0);
  return rc;
}

int store_apply_batch(store_cache_t *c, const store_record_t *recs, size_t n, uint8_t how,
                      size_t *applied) {
  *applied = 0;
  if (n == 0) return 0;
  uint32_t part = recs[0].key.part;
  for (size_t i = 0; i < n; i++)
    if (recs[i].key.part != part) return GRID_EINVAL;
  store_part_t *p = &c->parts[part];
  int rc = 0;
  for (size_t i = 0; i < n; i++)
    if (recs[i].value && recs[i].type > GRID_TYPE_MAX) {
      *applied = 0;
      return GRID_EINVAL; /* a newer peer's type: refused before the disk has it */
    }
  part_lock(p);
  if (c->disk) {
    for (size_t i = 0; i < n; i++)
      c->store->persist.add(c->disk, part, recs[i].key.data, recs[i].key.len, recs[i].value,
                            recs[i].value_len, recs[i].type, recs[i].version,
                            recs[i].expire_at_ms);
    rc = c->store->persist.commit(c->disk, part, recs[n - 1].version,
                                  store_record_state(p, recs[0].version));
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    const store_record_t *r = &recs[i];
    rc = store_apply_locked(c, p, &r->key, r->value, r->value_len, r->type, r->version,
                            r->expire_at_ms,
                            1, how, 0);
    if (rc == 0) (*applied)++;
  }
  /* Memory refused part of what the disk took: the copy on disk is no
   * copy (it is filled again). */
  if (rc != 0 && *applied < n && c->disk)
    c->store->persist.commit(c->disk, part, 0, STORE_PART_FILLING);
  part_unlock(p);
  if (*applied && c->store->announce_applied && store_watched(c)) store_part_commit(c, part, 0);
  return rc;
}

void store_part_reset(store_cache_t *c, uint32_t part, uint64_t version) {
  if (part >= c->cfg.partitions) return;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  if (c->disk) c->store->persist.reset(c->disk, part, version);
  store_part_clear(c->store, p);
  p->base_whole = 0;
  /* The copy takes the primary's counter: the entries to come were
   * written at or before it, the records after it follow. (Its own
   * counter may be lower: its newest writes were deletes.) */
  uint64_t counter = version & STORE_COUNTER_MASK;
  if (counter >= p->counter) {
    p->counter = counter;
    p->last_version = version;
    atomic_store_explicit(&p->sync.applied, counter, memory_order_release);
  }
  if (p->changes) {
    changes_reset(p->changes, counter);
    p->began = counter;
  }
  part_unlock(p);
}

uint64_t store_part_last_version(store_cache_t *c, uint32_t part) {
  if (part >= c->cfg.partitions) return 0;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  uint64_t v = p->last_version ? p->last_version : p->counter;
  part_unlock(p);
  return v;
}

/* ---- change history and watchers ----------------------------------------- */

void store_set_announce_applied(store_t *s, int on) { s->announce_applied = on; }

void store_set_persist(store_t *s, const store_persist_t *p) { s->persist = *p; }

void *store_cache_disk(const store_cache_t *c) { return c->disk; }

void store_part_restore(store_cache_t *c, uint32_t part, uint64_t version, int whole) {
  if (part >= c->cfg.partitions) return;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  uint64_t counter = version & STORE_COUNTER_MASK;
  if (counter >= p->counter) {
    p->counter = counter;
    p->last_version = version;
  }
  atomic_store_explicit(&p->sync.applied, p->counter, memory_order_release);
  if (p->changes) changes_reset(p->changes, p->counter);
  p->began = p->counter;
  p->base_version = version;
  p->base_whole = whole;
  part_unlock(p);
}

int store_delta_from(store_cache_t *c, uint32_t part, uint64_t version, int whole) {
  if (part >= c->cfg.partitions) return STORE_DELTA_NO;
  store_part_t *p = &c->parts[part];
  uint64_t counter = version & STORE_COUNTER_MASK;
  int rc = STORE_DELTA_NO;
  part_lock(p);
  if (!whole) {
    rc = STORE_DELTA_NO;
  } else if (counter == p->counter && version == p->last_version) {
    rc = STORE_DELTA_NONE;
  } else if (counter < p->counter && p->changes) {
    /* The change at the copy's counter must be the very one it holds (a
     * copy's tail the primary never had is another change there). */
    store_delta_probe_t probe = {.version = version};
    uint64_t next;
    if (counter == 0)
      probe.same = p->changes->base == 0;
    else if (changes_read(p->changes, counter - 1, counter, 1, store_delta_probe_cb, &probe,
                          &next) == CHANGES_OK)
      probe.same = probe.seen && probe.same;
    else
      probe.same = 0;
    if (probe.same) rc = STORE_DELTA_OK;
  }
  part_unlock(p);
  return rc;
}

int store_changes_since(store_cache_t *c, uint32_t part, uint64_t after, size_t max,
                        changes_cb cb, void *ctx, uint64_t *next, uint64_t *upto) {
  if (part >= c->cfg.partitions) return CHANGES_GAP;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  *upto = p->counter;
  int rc = CHANGES_GAP;
  *next = after;
  if (after == p->counter) rc = CHANGES_OK;
  else if (p->changes) rc = changes_read(p->changes, after, p->counter, max, cb, ctx, next);
  part_unlock(p);
  return rc;
}

void store_part_disk_state(store_cache_t *c, uint32_t part, uint64_t *version, int *whole) {
  *version = 0;
  *whole = 0;
  if (!c->disk || part >= c->cfg.partitions) return;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  /* Not what the disk's meta says now: records applied to a copy that is
   * not in sync may have skipped changes; its base has none missing. */
  *version = p->base_version;
  *whole = p->base_whole;
  part_unlock(p);
}

int store_part_mark_filling(store_cache_t *c, uint32_t part) {
  if (!c->disk || part >= c->cfg.partitions) return 0;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  int rc = c->store->persist.commit(c->disk, part, 0, STORE_PART_FILLING);
  part_unlock(p);
  return rc;
}

int store_part_filled(store_cache_t *c, uint32_t part) {
  if (!c->disk || part >= c->cfg.partitions) return 0;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  int rc = c->store->persist.commit(c->disk, part, p->last_version,
                                    STORE_PART_WHOLE | STORE_PART_SYNC);
  if (rc == 0) {
    p->base_version = p->last_version;
    p->base_whole = 1;
  }
  part_unlock(p);
  return rc;
}

int store_watched(const store_cache_t *c) {
  return atomic_load_explicit(&c->nwatchers, memory_order_acquire) > 0;
}

void store_keep_history(store_cache_t *c) { atomic_store(&c->history, 1); }

int store_history_kept(const store_cache_t *c) { return atomic_load(&c->history); }

uint64_t store_part_now(store_cache_t *c, uint32_t part) {
  if (part >= c->cfg.partitions) return 0;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  uint64_t now = store_part_announced(c, part);
  /* Writes in flight when the history began are not in it: "from now"
   * starts after them (they were concurrent with the subscription). (Not
   * the ring's base, which moves as it forgets.) */
  uint64_t began = p->changes ? p->began : (p->counter & STORE_COUNTER_MASK);
  if (began > now) now = began;
  part_unlock(p);
  return now;
}

int store_watch_add(store_cache_t *c, store_watch_t *w) {
  store_keep_history(c);
  w->words = (c->cfg.partitions + 63) / 64;
  w->dirty = calloc(w->words, sizeof *w->dirty);
  if (!w->dirty) return GRID_ENOMEM;
  atomic_init(&w->woken, 0);
  pthread_mutex_lock(&c->watch_lock);
  w->next = c->watchers;
  c->watchers = w;
  atomic_fetch_add(&c->nwatchers, 1);
  pthread_mutex_unlock(&c->watch_lock);
  return 0;
}

void store_watch_remove(store_cache_t *c, store_watch_t *w) {
  pthread_mutex_lock(&c->watch_lock);
  for (store_watch_t **at = &c->watchers; *at; at = &(*at)->next) {
    if (*at == w) {
      *at = w->next;
      atomic_fetch_sub(&c->nwatchers, 1);
      break;
    }
  }
  pthread_mutex_unlock(&c->watch_lock);
  free(w->dirty);
  w->dirty = NULL;
}

void store_watch_take(store_watch_t *w, void (*fn)(void *ctx, uint32_t p), void *ctx) {
  /* woken first: a partition marked after its word was read wakes again. */
  atomic_store(&w->woken, 0);
  for (size_t i = 0; i < w->words; i++) {
    uint64_t bits = atomic_exchange(&w->dirty[i], 0);
    while (bits) {
      int b = __builtin_ctzll(bits);
      bits &= bits - 1;
      fn(ctx, (uint32_t)(i * 64 + (size_t)b));
    }
  }
}

void store_watch_poke(store_watch_t *w, uint32_t p) {
  atomic_fetch_or(&w->dirty[p / 64], UINT64_C(1) << (p % 64));
  if (!atomic_exchange(&w->woken, 1)) w->wake(w);
}

void store_part_commit(store_cache_t *c, uint32_t part, uint64_t committed) {
  if (part >= c->cfg.partitions) return;
  if (!c->store->announce_applied) atomic_store(&c->parts[part].sync.committed, committed);
  if (!store_watched(c)) return;
  pthread_mutex_lock(&c->watch_lock);
  for (store_watch_t *w = c->watchers; w; w = w->next) {
    atomic_fetch_or(&w->dirty[part / 64], UINT64_C(1) << (part % 64));
    if (!atomic_exchange(&w->woken, 1)) w->wake(w);
  }
  pthread_mutex_unlock(&c->watch_lock);
}

uint64_t store_part_announced(store_cache_t *c, uint32_t part) {
  if (part >= c->cfg.partitions) return 0;
  store_part_sync_t *sy = &c->parts[part].sync;
  return c->store->announce_applied ? atomic_load(&sy->applied) : atomic_load(&sy->committed);
}

int store_changes_read(store_cache_t *c, uint32_t part, uint64_t after, size_t max,
                       changes_cb cb, void *ctx, uint64_t *next, uint64_t *upto,
                       changes_hint_t *hint) {
  store_part_t *p = &c->parts[part];
  part_lock(p);
  uint64_t announced = store_part_announced(c, part);
  *upto = announced;
  int rc;
  if (after > (p->counter & STORE_COUNTER_MASK)) {
    /* A position this copy never reached: another history's. */
    *next = announced;
    rc = CHANGES_GAP;
  } else if (after >= announced) {
    /* Nothing new (or a position this copy has not reached yet). */
    *next = after;
    rc = CHANGES_OK;
  } else if (!p->changes) {
    *next = announced;
    rc = CHANGES_GAP;
  } else {
    rc = changes_read_hinted(p->changes, after, announced, max, cb, ctx, next, hint);
    if (rc == CHANGES_GAP)
      *next = p->changes->base < announced ? p->changes->base : announced;
  }
  part_unlock(p);
  return rc;
}

void store_snapshot(store_cache_t *c, uint32_t part, int64_t now_ms, store_entry_full_cb cb,
                    void *ctx, uint64_t *upto) {
  *upto = 0;
  if (part >= c->cfg.partitions) return;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  uint64_t announced = store_part_announced(c, part);
  *upto = announced;
  for (uint64_t b = 0; p->buckets && b <= p->mask; b++) {
    for (store_entry_t *e = p->buckets[b]; e; e = e->next) {
      if (store_expired(e, now_ms) || (e->version & STORE_COUNTER_MASK) > announced) continue;
      cb(ctx, e->data, e->key_len, e->data + e->key_len, e->value_len, (uint8_t)e->type,
         e->version, e->expire_at_ms);
    }
  }
  part_unlock(p);
}

size_t store_expired_keys(store_cache_t *c, uint32_t part, int64_t now_ms, uint64_t *cursor,
                          size_t budget, store_key_cb cb, void *ctx) {
  if (part >= c->cfg.partitions) {
    *cursor = 0;
    return 0;
  }
  store_part_t *p = &c->parts[part];
  size_t looked = 0;
  uint64_t v = *cursor;
  part_lock(p);
  if (!p->buckets || atomic_load_explicit(&p->count, memory_order_relaxed) == 0) {
    v = 0;
  } else {
    do {
      for (store_entry_t *e = p->buckets[v & p->mask]; e; e = e->next) {
        looked++;
        if (store_expired(e, now_ms)) cb(ctx, e->data, e->key_len);
      }
      v = store_cursor_next(v, p->mask);
    } while (v != 0 && looked < budget);
  }
  part_unlock(p);
  *cursor = v;
  return looked;
}

int64_t store_changes_bytes(const store_t *s) { return atomic_load(&s->changes_bytes); }

int store_get_committed(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                        store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
                        uint64_t *version) {
  store_part_t *p = &c->parts[k->part];
  part_lock(p);
  int rc = GRID_ENOTREADY;
  uint64_t committed = atomic_load(&p->sync.committed);
  if (!atomic_load(&p->sync.led) &&
      !(atomic_load(&p->sync.backup_in_sync) && store_reads_backup(&c->cfg))) {
    /* Neither the primary here nor a backup that may be read: the owner
     * loop's way. */
  } else if (p->counter <= committed) {
    /* Every write applied here is committed (the counter is moved under
     * this lock as a write is applied): what the read sees, a key found
     * or not, no failover can take back. */
    rc = store_get_locked(c, p, k, now_ms, alloc, ctx, value, value_len, version, NULL);
  } else {
    /* Writes in flight: the key's own entry is committed if its version
     * is (a later write of it would have replaced it); an absence may be
     * a delete in flight, so it is not told. */
    store_entry_t **link;
    store_entry_t *e = store_find(p, k, &link);
    if (e && e->expire_at_ms && now_ms == STORE_NOW_LAZY) now_ms = clock_wall_ms();
    if (e && !store_expired(e, now_ms) && (e->version & STORE_COUNTER_MASK) <= committed)
      rc = store_copy_value(e, alloc, ctx, value, value_len, version);
  }
  part_unlock(p);
  return rc;
}

int store_scan_committed(store_cache_t *c, uint32_t part, int64_t now_ms, store_entry_cb cb,
                         void *ctx) {
  if (part >= c->cfg.partitions) return GRID_EINVAL;
  store_part_t *p = &c->parts[part];
  int rc = GRID_ENOTREADY;
  part_lock(p);
  int readable = atomic_load(&p->sync.led) ||
                 (atomic_load(&p->sync.backup_in_sync) && store_reads_backup(&c->cfg));
  /* Only with every write applied here committed: then no entry seen (nor
   * any missing) can be taken back, and a batch is seen whole. */
  if (readable && p->counter <= atomic_load(&p->sync.committed)) {
    rc = 0;
    int stop = 0;
    for (uint64_t b = 0; p->buckets && b <= p->mask && !stop; b++)
      for (store_entry_t *e = p->buckets[b]; e && !stop; e = e->next)
        if (!store_expired(e, now_ms))
          stop = cb(ctx, e->data, e->key_len, e->data + e->key_len, e->value_len, e->version);
  }
  part_unlock(p);
  return rc;
}

void store_part_committed_to(store_cache_t *c, uint32_t part, uint64_t committed) {
  if (part >= c->cfg.partitions) return;
  store_part_t *p = &c->parts[part];
  part_lock(p);
  if (committed > p->counter) committed = p->counter;
  if (committed > atomic_load(&p->sync.committed)) atomic_store(&p->sync.committed, committed);
  part_unlock(p);
}

store_part_sync_t *store_part_sync(store_cache_t *c, uint32_t part) {
  return part < c->cfg.partitions ? &c->parts[part].sync : NULL;
}

void store_set_repl_free(store_t *s, void (*fn)(void *repl)) { s->repl_free = fn; }

void store_set_epoch(store_t *s, uint64_t epoch) {
  /* Every loop calls this when it takes a new map, so two may race with
   * different epochs: a compare-and-swap keeps the larger, and the epoch
   * never goes back. */
  uint64_t cur = atomic_load(&s->epoch);
  while (epoch > cur && !atomic_compare_exchange_weak(&s->epoch, &cur, epoch)) {
  }
  GRID_ASSERT(atomic_load(&s->epoch) >= epoch);
}

uint64_t store_cache_size(const store_cache_t *c) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < c->cfg.partitions; i++)
    n += atomic_load_explicit(&c->parts[i].count, memory_order_relaxed);
  return n;
}

uint64_t store_cache_bytes(const store_cache_t *c) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < c->cfg.partitions; i++)
    n += atomic_load_explicit(&c->parts[i].bytes, memory_order_relaxed);
  return n;
}

uint64_t store_part_bytes(const store_cache_t *c, uint32_t part) {
  if (part >= c->cfg.partitions) return 0;
  return atomic_load_explicit(&c->parts[part].bytes, memory_order_relaxed);
}

uint64_t store_cache_expiring(const store_cache_t *c) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < c->cfg.partitions; i++)
    n += atomic_load_explicit(&c->parts[i].expiring, memory_order_relaxed);
  return n;
}

uint64_t store_part_size(const store_cache_t *c, uint32_t part) {
  if (part >= c->cfg.partitions) return 0;
  return atomic_load_explicit(&c->parts[part].count, memory_order_relaxed);
}

uint64_t store_entries(store_t *s) {
  uint64_t n = 0;
  pthread_rwlock_rdlock(&s->lock);
  for (size_t i = 0; i < s->ncaches; i++) n += store_cache_size(s->caches[i]);
  pthread_rwlock_unlock(&s->lock);
  return n;
}

int64_t store_memory_bytes(const store_t *s) { return atomic_load(&s->memory_bytes); }
int64_t store_memory_bytes_max(const store_t *s) { return s->limits.memory_bytes_max; }

/* Removes expired entries of one bucket; returns how many entries it
 * looked at. */
static size_t store_sweep_bucket(store_cache_t *c, store_part_t *p, uint64_t b,
                                 int64_t now_ms, int counted, int64_t grace_ms, size_t *removed) {
  store_t *s = c->store;
  size_t looked = 0;
  store_entry_t **link = &p->buckets[b];
  while (*link) {
    store_entry_t *e = *link;
    looked++;
    if (store_expired(e, now_ms) && (!grace_ms || e->expire_at_ms < now_ms - grace_ms)) {
      /* The disk forgets it too (should it not, a load skips it). */
      uint64_t version = store_next_version(s, p);
      if (c->disk)
        store_persist_one(c, (uint32_t)(p - c->parts), e->data, e->key_len, NULL, 0, 0,
                          counted ? version : e->version, 0, counted ? version : 0);
      if (counted) {
        /* A change of its own: a counter, and the history says so. */
        store_keep(s, p, CHANGE_EXPIRE, 0, e->data, e->key_len, NULL, 0, 0, version, 0);
        store_unlink_free(s, p, link, e);
        store_count_write(p, version);
      } else {
        store_unlink_free(s, p, link, e);
      }
      (*removed)++;
    } else {
      link = &e->next;
    }
  }
  return looked;
}

size_t store_sweep(store_t *s, int64_t now_ms, size_t budget) {
  size_t removed = 0, looked = 0, parts_visited = 0;
  pthread_mutex_lock(&s->sweep_lock);
  pthread_rwlock_rdlock(&s->lock);
  /* Bounded twice: by entries looked at and by partitions visited, so that
   * a store of many empty partitions is not walked whole in one tick. */
  size_t parts_max = budget;
  while (looked < budget && parts_visited < parts_max && s->ncaches > 0) {
    if (s->sweep_cache >= s->ncaches) {
      s->sweep_cache = 0;
      s->sweep_part = 0;
      s->sweep_cursor = 0;
    }
    store_cache_t *c = s->caches[s->sweep_cache];
    if (s->sweep_part >= c->cfg.partitions) {
      s->sweep_cache++;
      s->sweep_part = 0;
      s->sweep_cursor = 0;
      continue;
    }
    int history = atomic_load_explicit(&c->history, memory_order_relaxed);
    store_part_t *p = &c->parts[s->sweep_part];
    int64_t grace_ms = 0;
    if (history && !s->announce_applied) {
      /* A cluster's: the primary removes them, as changes of their own
       * sent to every copy (repl_expire.c); a copy of a partition led
       * elsewhere removes them itself only long after (its primary may
       * not keep changes, and sweep silently). */
      if (atomic_load_explicit(&p->sync.led, memory_order_relaxed)) {
        s->sweep_part++;
        s->sweep_cursor = 0;
        parts_visited++;
        continue;
      }
      grace_ms = STORE_BACKUP_EXPIRE_GRACE_MS;
    }
    size_t removed_before = removed;
    part_lock(p);
    uint64_t v = s->sweep_cursor;
    if (p->buckets && atomic_load_explicit(&p->count, memory_order_relaxed) > 0) {
      do {
        looked += store_sweep_bucket(c, p, v & p->mask, now_ms, history && !grace_ms, grace_ms,
                                     &removed) + 1;
        v = store_cursor_next(v, p->mask);
      } while (v != 0 && looked < budget);
    } else {
      v = 0;
    }
    part_unlock(p);
    if (history && !grace_ms && removed != removed_before && store_watched(c))
      store_part_commit(c, (uint32_t)s->sweep_part, 0);
    s->sweep_cursor = v;
    if (v == 0) {
      s->sweep_part++;
      parts_visited++;
    }
  }
  pthread_rwlock_unlock(&s->lock);
  pthread_mutex_unlock(&s->sweep_lock);
  return removed;
}
