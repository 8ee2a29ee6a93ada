/*
 * near: a handle's near cache (issue 10), as Ignite's: recently read
 * entries of remote keys kept in the client, bounded in bytes
 * (grid_options_t.near_cache_bytes, least recently used out first), and
 * forgotten when they change: each cache held near has a change stream of
 * its own (grid_subscribe, keys only), and every change it hears removes
 * the key's entry.
 *
 * An entry is served only while the stream of its partition is the one it
 * was read under (sub_life: the same connection reads the partition's
 * changes, without a break): where that stops (a lost connection, a moved
 * partition, a GAP) the partition's entries are not served again, so a
 * change missed is never hidden; the staleness of an entry is the stream's
 * delay. A get's value is kept only if nothing was heard of its partition
 * between the moment the get was sent and its reply (a per-partition
 * generation), so an old value read before a change never outlives it. A
 * write through the handle forgets the key's entry before it is sent.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "client_int.h"
#include "clock.h"
#include "log.h"
#include "part.h"

#define NEAR_BUCKETS_FIRST 1024
#define NEAR_ENTRY_OVERHEAD 64     /* what an entry costs beyond its bytes */
#define NEAR_RETRY_MS 1000         /* a cache whose stream failed is tried again */
#define NEAR_CACHE_NAMES_MAX 64    /* caches named in near_caches */

typedef struct near_cache near_cache_t;

typedef struct near_entry {
  struct near_entry *hnext;        /* bucket chain */
  struct near_entry *prev, *next;  /* recency: head is the newest */
  near_cache_t *cache;
  uint64_t hash;
  uint64_t version;
  uint32_t part, life;
  size_t key_len, value_len;
  unsigned char data[];            /* key, value, NUL */
} near_entry_t;

enum { NEAR_STARTING = 0, NEAR_READY = 1, NEAR_FAILED = 2 };

struct near_cache {
  near_cache_t *next;
  near_t *n;
  char name[65];
  int state;
  int64_t retry_at_ms;             /* NEAR_FAILED: when to try again */
  grid_sub_t *sub;
  uint32_t nparts;
  uint32_t *gen;                   /* per partition: moved on at every change
                                      heard (a get's fill must see it unmoved) */
};

struct near {
  grid_t *g;
  pthread_mutex_t lock;
  size_t bytes_max, bytes;
  near_entry_t **buckets;
  size_t nbuckets, count;
  near_entry_t *newest, *oldest;
  near_cache_t *caches;
  size_t nnames;                   /* 0: every cache is held near */
  char names[NEAR_CACHE_NAMES_MAX][65];
};

static uint64_t near_hash(const char *cache, const void *key, size_t len) {
  return XXH3_64bits_withSeed(key, len, XXH3_64bits(cache, strlen(cache)));
}

int near_open(grid_t *g, const grid_options_t *opts, near_t **out) {
  *out = NULL;
  if (!opts || !opts->near_cache_bytes) return 0;
  near_t *n = calloc(1, sizeof *n);
  if (!n) return GRID_ENOMEM;
  n->buckets = calloc(NEAR_BUCKETS_FIRST, sizeof *n->buckets);
  if (!n->buckets) {
    free(n);
    return GRID_ENOMEM;
  }
  n->nbuckets = NEAR_BUCKETS_FIRST;
  n->g = g;
  n->bytes_max = opts->near_cache_bytes;
  pthread_mutex_init(&n->lock, NULL);
  for (const char *p = opts->near_caches; p && *p;) {
    size_t len = strcspn(p, ",");
    if (len == 0 || len > 64 || n->nnames == NEAR_CACHE_NAMES_MAX) {
      client_set_error("near_caches: names of 1..64 bytes, at most 64 of them, comma-separated");
      near_close(n);
      return GRID_EINVAL;
    }
    memcpy(n->names[n->nnames], p, len);
    n->names[n->nnames++][len] = '\0';
    p += len + (p[len] == ',');
  }
  *out = n;
  return 0;
}

static void near_unlink(near_t *n, near_entry_t *e) {
  near_entry_t **at = &n->buckets[e->hash & (n->nbuckets - 1)];
  while (*at != e) at = &(*at)->hnext;
  *at = e->hnext;
  if (e->prev) e->prev->next = e->next;
  else n->newest = e->next;
  if (e->next) e->next->prev = e->prev;
  else n->oldest = e->prev;
  n->bytes -= NEAR_ENTRY_OVERHEAD + e->key_len + e->value_len;
  n->count--;
  free(e);
}

void near_close(near_t *n) {
  if (!n) return;
  /* The streams first: their callbacks take the lock. */
  for (near_cache_t *c = n->caches; c; c = c->next)
    if (c->sub) grid_unsubscribe(c->sub);
  while (n->newest) near_unlink(n, n->newest);
  for (near_cache_t *c = n->caches, *next; c; c = next) {
    next = c->next;
    free(c->gen);
    free(c);
  }
  free(n->buckets);
  pthread_mutex_destroy(&n->lock);
  free(n);
}

static near_entry_t *near_find(near_t *n, const near_cache_t *c, uint64_t h, const void *key,
                               size_t len) {
  for (near_entry_t *e = n->buckets[h & (n->nbuckets - 1)]; e; e = e->hnext)
    if (e->hash == h && e->cache == c && e->key_len == len && memcmp(e->data, key, len) == 0)
      return e;
  return NULL;
}

static near_cache_t *near_cache_find(near_t *n, const char *name) {
  for (near_cache_t *c = n->caches; c; c = c->next)
    if (strcmp(c->name, name) == 0) return c;
  return NULL;
}

static int near_wanted(const near_t *n, const char *name) {
  if (!n->nnames) return 1;
  for (size_t i = 0; i < n->nnames; i++)
    if (strcmp(n->names[i], name) == 0) return 1;
  return 0;
}

/* Every entry of c (of partition part, or all: UINT32_MAX) goes. Locked. */
static void near_drop(near_t *n, near_cache_t *c, uint32_t part) {
  for (near_entry_t *e = n->newest, *next; e; e = next) {
    next = e->next;
    if (e->cache == c && (part == UINT32_MAX || e->part == part)) near_unlink(n, e);
  }
}

/* The stream's events, on its thread. */
static void near_on_event(const grid_event_t *ev, void *arg) {
  near_cache_t *c = arg;
  near_t *n = c->n;
  pthread_mutex_lock(&n->lock);
  switch (ev->kind) {
    case GRID_EVENT_PUT: case GRID_EVENT_DELETE: case GRID_EVENT_EXPIRE: {
      if (c->gen && ev->partition < c->nparts) c->gen[ev->partition]++;
      uint64_t h = near_hash(c->name, ev->key, ev->key_len);
      near_entry_t *e = near_find(n, c, h, ev->key, ev->key_len);
      if (e) near_unlink(n, e);
      break;
    }
    case GRID_EVENT_GAP:
      if (c->gen && ev->partition < c->nparts) c->gen[ev->partition]++;
      near_drop(n, c, ev->partition);
      break;
    case GRID_EVENT_ENDED:
      /* The cache was dropped: nothing of it is held any more. */
      c->state = NEAR_FAILED;
      c->retry_at_ms = INT64_MAX;
      near_drop(n, c, UINT32_MAX);
      break;
    default:
      break;
  }
  pthread_mutex_unlock(&n->lock);
}

/* Starts c's stream (the lock not held: its events take it). */
static void near_start(near_t *n, near_cache_t *c) {
  grid_sub_options_t so = {.keys_only = 1, .callback = near_on_event, .arg = c};
  grid_sub_t *sub = NULL;
  int rc = grid_subscribe(n->g, c->name, &so, &sub);
  uint32_t parts = rc == 0 ? sub_partitions(sub) : 0;
  uint32_t *gen = parts ? calloc(parts, sizeof *gen) : NULL;
  int ok = rc == 0 && gen;
  pthread_mutex_lock(&n->lock);
  if (ok) {
    c->sub = sub;
    c->nparts = parts;
    c->gen = gen;
    /* Unless the stream ended already (the cache dropped): then off. */
    if (c->state == NEAR_STARTING) c->state = NEAR_READY;
  } else {
    c->state = NEAR_FAILED;
    c->retry_at_ms = clock_mono_ms() + NEAR_RETRY_MS;
  }
  pthread_mutex_unlock(&n->lock);
  if (!ok) { /* decided above, under the lock: the state may move since */
    LOG_W("client", "\"near cache off for a while: its change stream did not start\" cache=%s "
          "error=%s", c->name, grid_err_name(rc ? rc : GRID_ENOMEM));
    free(gen);
    if (sub) grid_unsubscribe(sub);
  }
}

int near_ticket(near_t *n, const char *cache, const void *key, size_t key_len,
                near_ticket_t *t) {
  if (strlen(cache) > 64 || !near_wanted(n, cache)) return 0; /* no such cache name */
  pthread_mutex_lock(&n->lock);
  near_cache_t *c = near_cache_find(n, cache);
  int start = 0;
  if (!c) {
    c = calloc(1, sizeof *c);
    if (c) {
      c->n = n;
      snprintf(c->name, sizeof c->name, "%s", cache);
      c->next = n->caches;
      n->caches = c;
      start = 1;
    }
  } else if (c->state == NEAR_FAILED && clock_mono_ms() >= c->retry_at_ms && !c->sub) {
    c->state = NEAR_STARTING;
    start = 1;
  }
  int ok = 0;
  if (c && c->state == NEAR_READY) {
    uint32_t p = part_of(key, key_len, c->nparts);
    uint32_t life = sub_life(c->sub, p);
    if (life & 1) {
      *t = (near_ticket_t){.cache = c, .part = p, .life = life, .gen = c->gen[p]};
      ok = 1;
    }
  }
  pthread_mutex_unlock(&n->lock);
  if (start) near_start(n, c);
  return ok;
}

void near_fill(near_t *n, const near_ticket_t *t, const void *key, size_t key_len,
               const void *value, size_t len, uint64_t version) {
  near_cache_t *c = t->cache;
  size_t cost = NEAR_ENTRY_OVERHEAD + key_len + len;
  if (cost > n->bytes_max) return;
  near_entry_t *e = malloc(sizeof *e + key_len + len + 1);
  if (!e) return;
  e->cache = c;
  e->hash = near_hash(c->name, key, key_len);
  e->version = version;
  e->part = t->part;
  e->life = t->life;
  e->key_len = key_len;
  e->value_len = len;
  memcpy(e->data, key, key_len);
  if (len) memcpy(e->data + key_len, value, len);
  e->data[key_len + len] = '\0';
  pthread_mutex_lock(&n->lock);
  if (c->state != NEAR_READY || c->gen[t->part] != t->gen ||
      sub_life(c->sub, t->part) != t->life) {
    /* A change was heard meanwhile, or the stream broke: what was read
     * may be older than it. */
    pthread_mutex_unlock(&n->lock);
    free(e);
    return;
  }
  near_entry_t *old = near_find(n, c, e->hash, key, key_len);
  if (old) near_unlink(n, old);
  while (n->oldest && n->bytes + cost > n->bytes_max) near_unlink(n, n->oldest);
  if (n->count >= n->nbuckets) {
    /* Twice the buckets (if memory allows: a longer chain is only slower). */
    size_t nb = n->nbuckets * 2;
    near_entry_t **b = calloc(nb, sizeof *b);
    if (b) {
      for (size_t i = 0; i < n->nbuckets; i++) {
        for (near_entry_t *x = n->buckets[i], *nx; x; x = nx) {
          nx = x->hnext;
          x->hnext = b[x->hash & (nb - 1)];
          b[x->hash & (nb - 1)] = x;
        }
      }
      free(n->buckets);
      n->buckets = b;
      n->nbuckets = nb;
    }
  }
  e->hnext = n->buckets[e->hash & (n->nbuckets - 1)];
  n->buckets[e->hash & (n->nbuckets - 1)] = e;
  e->prev = NULL;
  e->next = n->newest;
  if (n->newest) n->newest->prev = e;
  else n->oldest = e;
  n->newest = e;
  n->bytes += cost;
  n->count++;
  pthread_mutex_unlock(&n->lock);
}

int near_get(near_t *n, const char *cache, const void *key, size_t key_len, void **value,
             size_t *len, uint64_t *version) {
  pthread_mutex_lock(&n->lock);
  near_cache_t *c = near_cache_find(n, cache);
  near_entry_t *e = c && c->state == NEAR_READY
                        ? near_find(n, c, near_hash(cache, key, key_len), key, key_len)
                        : NULL;
  if (e && sub_life(c->sub, e->part) != e->life) {
    /* Read under a stream that has stopped since: it may have missed a
     * change. */
    near_unlink(n, e);
    e = NULL;
  }
  int rc = GRID_ENOTFOUND;
  if (e) {
    void *v = malloc(e->value_len + 1);
    if (v) {
      memcpy(v, e->data + e->key_len, e->value_len + 1);
      *value = v;
      *len = e->value_len;
      *version = e->version;
      rc = 0;
      if (e != n->newest) { /* the most recently used first */
        e->prev->next = e->next;
        if (e->next) e->next->prev = e->prev;
        else n->oldest = e->prev;
        e->prev = NULL;
        e->next = n->newest;
        n->newest->prev = e;
        n->newest = e;
      }
    }
  }
  pthread_mutex_unlock(&n->lock);
  return rc;
}

void near_forget(near_t *n, const char *cache, const void *key, size_t key_len) {
  pthread_mutex_lock(&n->lock);
  near_cache_t *c = near_cache_find(n, cache);
  if (c && c->state == NEAR_READY) {
    c->gen[part_of(key, key_len, c->nparts)]++;
    near_entry_t *e = near_find(n, c, near_hash(cache, key, key_len), key, key_len);
    if (e) near_unlink(n, e);
  }
  pthread_mutex_unlock(&n->lock);
}
