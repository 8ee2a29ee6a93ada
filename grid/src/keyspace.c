#include "keyspace.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "grid.pb-c.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "notify.h"
#include "pmap.h"
#include "pubsub.h"
#include "stream.h"

#define KEYSPACE_CHANNEL_BYTES 256 /* a channel name built on the stack; longer: malloc */

/* One database followed. */
typedef struct keyspace_db {
  struct keyspace_db *next;
  loop_t *lp;
  store_cache_t *cache;      /* compared only: the subscription holds it */
  stream_sub_t *sub;
  int db;
  uint32_t nparts;
  uint64_t *held;            /* bitmap: partitions taken */
  int dead;                  /* its cache was dropped */
} keyspace_db_t;

struct keyspace {
  keyspace_db_t *dbs;
  int done;                  /* every led partition is taken, at ... */
  uint64_t done_epoch;       /* ... this map (0: a single node's) */
  int warned;                /* a subscription refused was logged */
};

static int keyspace_bit(const uint64_t *m, uint32_t p) { return (m[p / 64] >> (p % 64)) & 1; }

/* The database a cache stands for, or -1. */
static int keyspace_db_of(const char *name) {
  if (strcmp(name, "default") == 0) return 0;
  if (strncmp(name, "db", 2) != 0 || !name[2]) return -1;
  long v = 0;
  for (const char *p = name + 2; *p; p++) {
    if (*p < '0' || *p > '9' || v > 100000000) return -1;
    v = v * 10 + (*p - '0');
  }
  /* SELECT 0 names "default", so "db0" is not database 0; nor "db01". */
  if (v == 0 || name[2] == '0') return -1;
  return (int)v;
}

/* ---- publishing ---------------------------------------------------------- */

static int keyspace_is_set(int op) {
  return op == GRID__OP__PUT || op == GRID__OP__PUT_IF_ABSENT || op == GRID__OP__REPLACE ||
         op == GRID__OP__CAS || op == GRID__OP__GET_AND_PUT || op == GRID__OP__PUT_ALL ||
         op == GRID__OP__BATCH || op == GRID__OP__EXEC;
}

static void keyspace_publish(loop_t *lp, int db, unsigned flags, notify_event_t ev,
                             const void *key, size_t key_len) {
  if (!ev.name || !notify_wanted(flags, ev.cls)) return;
  char buf[KEYSPACE_CHANNEL_BYTES];
  int64_t receivers;
  size_t ev_len = strlen(ev.name);
  if (flags & NOTIFY_KEYSPACE) {
    char *chan = buf;
    size_t need = notify_keyspace_channel(db, key, key_len, buf, sizeof buf);
    if (need >= sizeof buf && (chan = malloc(need + 1)) != NULL)
      notify_keyspace_channel(db, key, key_len, chan, need + 1);
    if (chan) pubsub_publish(lp, chan, need, ev.name, ev_len, 1, &receivers);
    if (chan != buf) free(chan);
  }
  if (flags & NOTIFY_KEYEVENT) {
    size_t need = notify_keyevent_channel(db, ev.name, buf, sizeof buf);
    if (need < sizeof buf) pubsub_publish(lp, buf, need, key, key_len, 1, &receivers);
  }
}

/* A change, as the events Redis raises for the command that made it. */
static void keyspace_change(loop_t *lp, int db, const change_t *ch) {
  unsigned flags = atomic_load(&lp->node->notify_flags);
  int op = ch->how & CHANGE_HOW_OP;
  switch (ch->kind) {
    case CHANGE_EXPIRE:
      keyspace_publish(lp, db, flags, notify_event_of(op, NOTIFY_CHANGE_EXPIRED), ch->key,
                       ch->key_len);
      return;
    case CHANGE_DELETE:
      keyspace_publish(lp, db, flags, notify_event_of(op, NOTIFY_CHANGE_DELETE), ch->key,
                       ch->key_len);
      /* A collection command that left it empty: its event, then "del"
       * (RENAME's source: rename_from alone), as Redis. */
      if (op >= NOTIFY_HOW_EVENT && op != NOTIFY_HOW_EVENT + NOTIFY_EV_RENAME_FROM)
        keyspace_publish(lp, db, flags, notify_event_of(GRID__OP__DELETE, NOTIFY_CHANGE_DELETE),
                         ch->key, ch->key_len);
      return;
    case CHANGE_PUT:
      break;
  }
  if (op == GRID__OP__EXPIRE) {
    notify_change_t c = ch->expire_at_ms ? NOTIFY_CHANGE_TTL : NOTIFY_CHANGE_PERSIST;
    keyspace_publish(lp, db, flags, notify_event_of(op, c), ch->key, ch->key_len);
    return;
  }
  /* A key made: "new" first, as Redis raises it when the key is added. */
  if (ch->how & CHANGE_HOW_NEW)
    keyspace_publish(lp, db, flags, notify_event_of(op, NOTIFY_CHANGE_NEW), ch->key,
                     ch->key_len);
  keyspace_publish(lp, db, flags, notify_event_of(op, NOTIFY_CHANGE_PUT), ch->key, ch->key_len);
  /* SET with EX or PX: "set", then "expire", as Redis. */
  if (ch->expire_at_ms && keyspace_is_set(op))
    keyspace_publish(lp, db, flags, notify_event_of(op, NOTIFY_CHANGE_TTL), ch->key,
                     ch->key_len);
}

static int keyspace_event(void *ctx, stream_sub_t *s, uint32_t p, int what, const change_t *ch,
                          uint64_t pos) {
  (void)s;
  (void)pos;
  keyspace_db_t *d = ctx;
  switch (what) {
    case STREAM_EV_CHANGE:
      keyspace_change(d->lp, d->db, ch);
      break;
    case STREAM_EV_END:
      d->held[p / 64] &= ~(UINT64_C(1) << (p % 64));
      break;
    case STREAM_EV_DROPPED:
      d->dead = 1;
      break;
    default: /* a GAP: fire-and-forget, as Redis's */
      break;
  }
  return 0;
}

static void keyspace_flush(void *ctx) { (void)ctx; }

static const stream_out_t keyspace_out = {keyspace_event, keyspace_flush};

/* ---- following ----------------------------------------------------------- */

static void keyspace_db_close(keyspace_db_t *d) {
  if (d->sub) stream_close(d->sub);
  free(d->held);
  free(d);
}

static void keyspace_close_all(struct keyspace *ks) {
  while (ks->dbs) {
    keyspace_db_t *d = ks->dbs;
    ks->dbs = d->next;
    keyspace_db_close(d);
  }
  ks->done = 0;
}

/* Whether this node leads p of d's cache (every partition, alone). */
static int keyspace_leads(const keyspace_db_t *d, uint32_t p) {
  loop_t *lp = d->lp;
  if (!lp->node->cluster) return 1;
  const pmap_group_t *g = lp->pmap ? pmap_find_cache(lp->pmap, store_cache_cfg(d->cache)->name)
                                   : NULL;
  return g && p < g->partitions && pmap_leads(g, p, lp->self);
}

/* Takes the partitions of d this node leads and does not hold yet; 1 when
 * some could not be taken yet (their loop has not caught up). */
static int keyspace_take(keyspace_db_t *d) {
  int pending = 0;
  for (uint32_t p = 0; p < d->nparts; p++) {
    if (keyspace_bit(d->held, p)) continue;
    uint64_t pos;
    int rc = stream_take(d->sub, p, 0, 1, 0, &pos);
    if (rc == 0) d->held[p / 64] |= UINT64_C(1) << (p % 64);
    else if (rc != GRID_ENOTREADY || keyspace_leads(d, p)) pending = 1;
  }
  return pending;
}

static keyspace_db_t *keyspace_db_open(loop_t *lp, struct keyspace *ks, store_cache_t *cache,
                                       int db) {
  keyspace_db_t *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->lp = lp;
  d->cache = cache;
  d->db = db;
  d->nparts = store_cache_cfg(cache)->partitions;
  d->held = calloc((d->nparts + 63) / 64, sizeof *d->held);
  stream_filter_t f = {0};
  int rc = d->held ? stream_open(lp, cache, 0, &f, &keyspace_out, d, &d->sub) : GRID_ENOMEM;
  if (rc != 0) {
    if (!ks->warned)
      LOG_W("keyspace", "\"keyspace notifications wait: %s\" db=%d", grid_strerror(rc), db);
    ks->warned = 1;
    d->sub = NULL;
    keyspace_db_close(d);
    return NULL;
  }
  d->next = ks->dbs;
  ks->dbs = d;
  return d;
}

/* Follows every database of the view, takes what the map gives this node. */
static void keyspace_follow(loop_t *lp, struct keyspace *ks) {
  /* Databases dropped: their subscriptions end. */
  for (keyspace_db_t **at = &ks->dbs; *at;) {
    keyspace_db_t *d = *at;
    if (d->dead) {
      *at = d->next;
      keyspace_db_close(d);
    } else {
      at = &d->next;
    }
  }
  store_view_refresh(&lp->view);
  int pending = 0;
  uint64_t epoch = lp->pmap ? lp->pmap->epoch : 0;
  for (size_t i = 0; i < lp->view.n; i++) {
    store_cache_t *cache = lp->view.caches[i];
    int db = keyspace_db_of(store_cache_cfg(cache)->name);
    if (db < 0) continue;
    keyspace_db_t *d = ks->dbs;
    while (d && d->cache != cache) d = d->next;
    int fresh = !d;
    if (!d && !(d = keyspace_db_open(lp, ks, cache, db))) {
      pending = 1;
      continue;
    }
    if (fresh || !ks->done || ks->done_epoch != epoch) pending |= keyspace_take(d);
  }
  ks->done = !pending;
  ks->done_epoch = epoch;
}

static struct keyspace *keyspace_of(loop_t *lp) {
  if (!lp->keyspace) lp->keyspace = calloc(1, sizeof(struct keyspace));
  return lp->keyspace;
}

void keyspace_cron(loop_t *lp, int64_t now_ms) {
  (void)now_ms;
  if (lp->index != 0 || lp->stopping) return;
  unsigned flags = atomic_load(&lp->node->notify_flags);
  int want = (flags & (NOTIFY_KEYSPACE | NOTIFY_KEYEVENT)) && (flags & ~(NOTIFY_KEYSPACE |
                                                                          NOTIFY_KEYEVENT));
  if (!want) {
    if (lp->keyspace) keyspace_close_all(lp->keyspace);
    return;
  }
  struct keyspace *ks = keyspace_of(lp);
  if (ks) keyspace_follow(lp, ks);
}

void keyspace_on_map(loop_t *lp) {
  if (lp->index != 0 || !lp->keyspace || !lp->keyspace->dbs) return;
  lp->keyspace->done = 0;
  keyspace_follow(lp, lp->keyspace);
}

void keyspace_stop(loop_t *lp) {
  if (!lp->keyspace) return;
  keyspace_close_all(lp->keyspace);
  free(lp->keyspace);
  lp->keyspace = NULL;
}
