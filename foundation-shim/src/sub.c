/*
 * sub: DataChange subscriptions over grid's change streams. A continuous
 * query (snapshot, then changes) of the chosen Things' properties; the
 * subscription keeps each followed property's last VTQ, so every change is
 * told with its old and new value, and a VALUE subscription leaves out
 * writes that kept the value. The stream drops repeats across failover
 * (each change once, in each partition's order); a GAP (the node's history
 * rolled over) is healed by reading the partition again and telling what
 * differs from what was known.
 *
 * Memory: the last packed VTQ of every followed property.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "thing_int.h"

#define SUB_SYNC_WAIT_MS 60000  /* thing_subscribe waits this long for the
                                   first values at most */
#define SUB_SCAN_COUNT 10000    /* entries per grid_scan while healing (a
                                   partition in one page is read at one
                                   moment) */
#define SUB_HEAL_TRIES 100      /* a heal's read tried again at most, */
#define SUB_HEAL_RETRY_MS 50    /* ... this far apart; then at the
                                   partition's next event */

typedef struct sub_known {
  struct sub_known *next;
  uint64_t hash;
  uint32_t partition;
  uint64_t version;
  size_t key_len, len;
  unsigned char *key;           /* key then packed VTQ, one allocation */
  unsigned char *bytes;
  int mark;                     /* healing: seen in the new read */
} sub_known_t;

struct thing_sub {
  thing_store_t *ts;
  thing_sub_options_t o;
  char *prop;                   /* the caller's, copied */
  char **things;                /* the caller's, copied (n_things) */
  size_t n_things;
  /* Per partition (grown as partitions are seen): the newest version a
   * heal read, and whether a heal is owed. An event of a key not known
   * here at or below the floor is older than what the heal told. */
  uint64_t *floor;
  unsigned char *owed;
  size_t nparts;
  grid_sub_t *gs;
  sub_known_t **table;
  size_t mask, count;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int synced, ended, status;
  _Atomic uint64_t delivered, gaps;
};

static uint64_t sub_hash(const void *key, size_t len) {
  const unsigned char *p = key;
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static sub_known_t **sub_find(thing_sub_t *s, const void *key, size_t len, uint64_t h) {
  sub_known_t **l = &s->table[h & s->mask];
  for (; *l; l = &(*l)->next)
    if ((*l)->hash == h && (*l)->key_len == len && memcmp((*l)->key, key, len) == 0) return l;
  return l;
}

static void sub_grow(thing_sub_t *s) {
  size_t n = (s->mask + 1) * 2;
  sub_known_t **t = calloc(n, sizeof *t);
  if (!t) return; /* longer chains, still right */
  for (size_t i = 0; i <= s->mask; i++) {
    for (sub_known_t *k = s->table[i], *next; k; k = next) {
      next = k->next;
      k->next = t[k->hash & (n - 1)];
      t[k->hash & (n - 1)] = k;
    }
  }
  free(s->table);
  s->table = t;
  s->mask = n - 1;
}

/* Keeps key's VTQ (bytes NULL: forgets it). */
static void sub_remember(thing_sub_t *s, const void *key, size_t key_len, uint32_t part,
                         uint64_t version, const void *bytes, size_t len) {
  uint64_t h = sub_hash(key, key_len);
  sub_known_t **l = sub_find(s, key, key_len, h);
  if (*l) {
    sub_known_t *k = *l;
    *l = k->next;
    free(k);
    s->count--;
  }
  if (!bytes) return;
  sub_known_t *k = malloc(sizeof *k + key_len + len + 1);
  if (!k) return; /* its next change is told without its old value */
  k->key = (unsigned char *)(k + 1);
  k->bytes = k->key + key_len;
  memcpy(k->key, key, key_len);
  if (len) memcpy(k->bytes, bytes, len);
  k->key_len = key_len;
  k->len = len;
  k->hash = h;
  k->partition = part;
  k->version = version;
  k->mark = 0;
  l = sub_find(s, key, key_len, h);
  k->next = NULL;
  *l = k;
  if (++s->count > (s->mask + 1) * 2) sub_grow(s);
}

/* Splits "{thing}.prop" into its parts (into buf); 0 when key is not a
 * property's (a lock's entries, another program's keys) or not followed. */
static int sub_parse(thing_sub_t *s, const void *key, size_t len, char *buf, size_t cap,
                     const char **thing, const char **prop) {
  const char *k = key;
  if (len < 4 || len >= cap || k[0] != '{') return 0;
  const char *close = memchr(k, '}', len);
  if (!close || close == k + 1 || (size_t)(close - k) + 1 >= len || close[1] != '.') return 0;
  memcpy(buf, k, len);
  buf[len] = '\0';
  if (memchr(buf, '\0', len)) return 0;
  size_t t = (size_t)(close - k);
  buf[t] = '\0';
  *thing = buf + 1;
  *prop = buf + t + 2;
  if (s->prop && strcmp(*prop, s->prop) != 0) return 0;
  if (!s->n_things) return 1;
  for (size_t i = 0; i < s->n_things; i++)
    if (!strcmp(s->things[i], *thing)) return 1;
  return 0; /* another Thing of a followed partition (a heal reads them all) */
}

/* Room for partition p's floor; 0 when memory fails. */
static int sub_part_room(thing_sub_t *s, uint32_t p) {
  if (p < s->nparts) return 1;
  size_t n = s->nparts ? s->nparts : 64;
  while (n <= p) n *= 2;
  uint64_t *f = realloc(s->floor, n * sizeof *f);
  if (!f) return 0;
  s->floor = f;
  unsigned char *o = realloc(s->owed, n);
  if (!o) return 0;
  s->owed = o;
  memset(s->floor + s->nparts, 0, (n - s->nparts) * sizeof *f);
  memset(s->owed + s->nparts, 0, n - s->nparts);
  s->nparts = n;
  return 1;
}

/* Tells one change: old is what was known (NULL: nothing), new_bytes the
 * new VTQ (NULL: deleted). */
static void sub_tell(thing_sub_t *s, const void *key, size_t key_len, uint32_t part,
                     uint64_t version, const void *new_bytes, size_t new_len) {
  char buf[1024];
  char *heap = NULL;
  char *b = buf;
  if (key_len + 1 > sizeof buf) {
    if (!(heap = malloc(key_len + 1))) return;
    b = heap;
  }
  const char *thing, *prop;
  if (!sub_parse(s, key, key_len, b, key_len + 1 > sizeof buf ? key_len + 1 : sizeof buf, &thing,
                 &prop)) {
    free(heap);
    return;
  }
  sub_known_t **l = sub_find(s, key, key_len, sub_hash(key, key_len));
  sub_known_t *known = *l;
  /* Told already: a change at or before what is known of the key, or, for
   * a key not known, at or before what a heal of its partition read. */
  if ((known && known->version >= version) ||
      (!known && part < s->nparts && version <= s->floor[part])) {
    free(heap);
    return;
  }
  thing_vtq_t oldv, newv;
  void *old_mem = NULL, *new_mem = NULL;
  int have_old = known && thing_vtq_decode(known->bytes, known->len, &oldv, &old_mem) == 0;
  int have_new = new_bytes && thing_vtq_decode(new_bytes, new_len, &newv, &new_mem) == 0;
  int tell = have_new || !new_bytes; /* a value this reader cannot decode is not told */
  if (tell && s->o.type == THING_CHANGE_VALUE && have_old && have_new &&
      thing_value_equal(&oldv.value, &newv.value))
    tell = 0;
  if (!new_bytes && !known) tell = 0; /* a delete of what was never there */
  if (tell && s->o.callback) {
    thing_change_t ch = {.thing = thing, .prop = prop, .old_vtq = have_old ? &oldv : NULL,
                         .new_vtq = have_new ? &newv : NULL, .version = version,
                         .partition = part};
    s->o.callback(&ch, s->o.arg);
    atomic_fetch_add(&s->delivered, 1);
  }
  free(old_mem);
  free(new_mem);
  sub_remember(s, key, key_len, part, version, new_bytes, new_len);
  free(heap);
}

static int sub_followed(thing_sub_t *s, const void *key, size_t len);

/* A GAP in partition p: read it again and tell what differs. The whole
 * partition is read first (every page; again from the start when a page
 * fails), and only then are changes told, deletions last. */
static void sub_heal(thing_sub_t *s, uint32_t p) {
  if (!sub_part_room(s, p)) return;
  grid_entry_t *all = NULL;
  size_t nall = 0;
  int whole = 0;
  for (int tries = 0; tries < SUB_HEAL_TRIES && !whole; tries++) {
    if (tries) {
      struct timespec t = {0, SUB_HEAL_RETRY_MS * 1000000L};
      nanosleep(&t, NULL);
    }
    grid_entries_free(all, nall);
    all = NULL;
    nall = 0;
    uint64_t cursor = 0;
    whole = 1;
    do {
      grid_entry_t *ents = NULL;
      size_t n = 0;
      if (grid_scan(s->ts->g, s->ts->cache, p, &cursor, SUB_SCAN_COUNT, &ents, &n) != 0) {
        whole = 0;
        break;
      }
      grid_entry_t *grown = n ? realloc(all, (nall + n) * sizeof *all) : all;
      if (n && !grown) {
        grid_entries_free(ents, n);
        whole = 0;
        break;
      }
      all = grown;
      memcpy(all + nall, ents, n * sizeof *ents);
      nall += n;
      free(ents); /* the entries' memory moved to all */
    } while (cursor != 0);
  }
  if (!whole) {
    grid_entries_free(all, nall);
    s->owed[p] = 1; /* tried again at the partition's next event */
    return;
  }
  s->owed[p] = 0;
  atomic_fetch_add(&s->gaps, 1);
  for (size_t i = 0; i <= s->mask; i++)
    for (sub_known_t *k = s->table[i]; k; k = k->next) k->mark = 0;
  uint64_t newest = s->floor[p];
  for (size_t i = 0; i < nall; i++) {
    const grid_entry_t *e = &all[i];
    if (e->version > newest) newest = e->version;
    if (!sub_followed(s, e->key, e->key_len)) continue;
    sub_known_t *k = *sub_find(s, e->key, e->key_len, sub_hash(e->key, e->key_len));
    if (!k || k->version != e->version) {
      if (k) k->version = 0; /* what the heal read replaces it, older or not */
      sub_tell(s, e->key, e->key_len, p, e->version, e->value, e->value_len);
    }
    k = *sub_find(s, e->key, e->key_len, sub_hash(e->key, e->key_len));
    if (k) k->mark = 1;
  }
  /* Known here, gone there: deleted during the gap. */
  for (size_t i = 0; i <= s->mask; i++) {
    for (sub_known_t *k = s->table[i], *next; k; k = next) {
      next = k->next;
      if (k->partition == p && !k->mark) sub_tell(s, k->key, k->key_len, p, k->version + 1, NULL, 0);
    }
  }
  s->floor[p] = newest;
  grid_entries_free(all, nall);
}

static int sub_followed(thing_sub_t *s, const void *key, size_t len) {
  char buf[1024];
  const char *t, *pr;
  if (len + 1 > sizeof buf) return 1; /* sub_tell looks again */
  return sub_parse(s, key, len, buf, sizeof buf, &t, &pr);
}

static void sub_on_event(const grid_event_t *ev, void *arg) {
  thing_sub_t *s = arg;
  if (ev->kind != GRID_EVENT_GAP && ev->partition < s->nparts && s->owed[ev->partition])
    sub_heal(s, ev->partition);
  switch (ev->kind) {
    case GRID_EVENT_PUT:
      if (ev->snapshot) {
        if (sub_followed(s, ev->key, ev->key_len))
          sub_remember(s, ev->key, ev->key_len, ev->partition, ev->version, ev->value,
                       ev->value_len);
        return;
      }
      sub_tell(s, ev->key, ev->key_len, ev->partition, ev->version, ev->value, ev->value_len);
      return;
    case GRID_EVENT_DELETE:
    case GRID_EVENT_EXPIRE:
      sub_tell(s, ev->key, ev->key_len, ev->partition, ev->version, NULL, 0);
      return;
    case GRID_EVENT_GAP:
      sub_heal(s, ev->partition);
      return;
    case GRID_EVENT_SYNCED:
    case GRID_EVENT_ENDED:
      pthread_mutex_lock(&s->mu);
      if (ev->kind == GRID_EVENT_SYNCED) s->synced = 1;
      else s->ended = 1, s->status = ev->status;
      pthread_cond_broadcast(&s->cv);
      pthread_mutex_unlock(&s->mu);
      return;
  }
}

static void sub_free(thing_sub_t *s) {
  for (size_t i = 0; s->table && i <= s->mask; i++)
    for (sub_known_t *k = s->table[i], *next; k; k = next) {
      next = k->next;
      free(k);
    }
  free(s->table);
  free(s->prop);
  for (size_t i = 0; i < s->n_things; i++) free(s->things[i]);
  free(s->things);
  free(s->floor);
  free(s->owed);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

int thing_subscribe(thing_store_t *ts, const thing_sub_options_t *opts, thing_sub_t **out) {
  *out = NULL;
  if (!opts || !opts->callback || (opts->n_things && !opts->things)) return GRID_EINVAL;
  for (size_t i = 0; i < opts->n_things; i++)
    if (!thing_name_ok(opts->things[i])) return THING_ENAME;
  thing_sub_t *s = calloc(1, sizeof *s);
  if (!s) return GRID_ENOMEM;
  s->ts = ts;
  s->o = *opts;
  s->o.things = NULL;
  s->mask = 255;
  s->table = calloc(s->mask + 1, sizeof *s->table);
  s->prop = opts->prop ? strdup(opts->prop) : NULL;
  s->things = opts->n_things ? calloc(opts->n_things, sizeof *s->things) : NULL;
  int copied = !opts->n_things || s->things;
  for (size_t i = 0; copied && i < opts->n_things; i++) {
    s->things[i] = strdup(opts->things[i]);
    copied = s->things[i] != NULL;
    s->n_things = i + 1;
  }
  pthread_mutex_init(&s->mu, NULL);
  thing_cond_init(&s->cv);
  if (!s->table || (opts->prop && !s->prop) || !copied) {
    sub_free(s);
    return GRID_ENOMEM;
  }
  /* One Thing's one property: its key is the prefix. Several Things: their
   * affinity parts (their partitions alone are followed). */
  grid_sub_options_t go = {.snapshot = 1, .callback = sub_on_event, .arg = s};
  char **tags = NULL;
  size_t *tag_lens = NULL;
  char *prefix = NULL;
  int rc = 0;
  if (opts->n_things == 1 && opts->prop) {
    size_t plen;
    prefix = thing_key(opts->things[0], ".", opts->prop, &plen, &rc);
    go.prefix = prefix;
    go.prefix_len = plen;
  } else if (opts->n_things) {
    tags = calloc(opts->n_things, sizeof *tags);
    tag_lens = calloc(opts->n_things, sizeof *tag_lens);
    if (!tags || !tag_lens) rc = GRID_ENOMEM;
    for (size_t i = 0; rc == 0 && i < opts->n_things; i++)
      tags[i] = thing_key(opts->things[i], "", NULL, &tag_lens[i], &rc);
    go.affinity_keys = (const void *const *)tags;
    go.affinity_key_lens = tag_lens;
    go.n_affinity_keys = opts->n_things;
  }
  if (rc == 0) rc = grid_subscribe(ts->g, ts->cache, &go, &s->gs);
  free(prefix);
  for (size_t i = 0; tags && i < opts->n_things; i++) free(tags[i]);
  free(tags);
  free(tag_lens);
  if (rc != 0) {
    sub_free(s);
    return rc;
  }
  /* Old values are known once the snapshot is whole. */
  struct timespec dl = thing_deadline(SUB_SYNC_WAIT_MS);
  pthread_mutex_lock(&s->mu);
  int w = 0;
  while (!s->synced && !s->ended && w == 0) w = pthread_cond_timedwait(&s->cv, &s->mu, &dl);
  int synced = s->synced, status = s->ended ? s->status : GRID_ETIMEDOUT;
  pthread_mutex_unlock(&s->mu);
  if (!synced) {
    grid_unsubscribe(s->gs);
    sub_free(s);
    return status ? status : GRID_ECONN;
  }
  *out = s;
  return 0;
}

uint64_t thing_sub_delivered(const thing_sub_t *s) { return atomic_load(&s->delivered); }
uint64_t thing_sub_gaps(const thing_sub_t *s) { return atomic_load(&s->gaps); }

void thing_unsubscribe(thing_sub_t *s) {
  if (!s) return;
  grid_unsubscribe(s->gs);
  sub_free(s);
}
