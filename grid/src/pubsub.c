#include "pubsub.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "glob.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "peer.h"
#include "pmap.h"

#define PUBSUB_BUCKETS_FIRST 64

/* One channel with at least one subscriber. */
typedef struct pubsub_chan {
  struct pubsub_chan *next;  /* its bucket's */
  uint64_t hash;
  pubsub_name_t name;
  pubsub_client_t **clients;
  size_t n, cap;
} pubsub_chan_t;

/* One client's subscription to a pattern. */
typedef struct pubsub_pat {
  pubsub_name_t name;
  pubsub_client_t *client;
} pubsub_pat_t;

struct pubsub {
  pthread_mutex_t lock;
  pubsub_chan_t **buckets;
  size_t nbuckets, nchans;
  pubsub_pat_t *pats;
  size_t npats, pats_cap;
  _Atomic size_t inflight_bytes;  /* messages posted, not delivered yet */
  _Atomic int forwards;           /* PUBLISH to other nodes, unanswered */
  _Atomic uint64_t dropped;
};

/* A message on its way to other loops: one task per loop, the last to run
 * frees it. */
typedef struct pubsub_msg {
  pubsub_t *ps;
  _Atomic int refs;
  size_t channel_len, msg_len, bytes;
  loop_task_t *tasks;
  unsigned char data[];      /* channel, then message */
} pubsub_msg_t;

static int pubsub_grow(void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t c = *cap ? *cap * 2 : 4;
  void *a = realloc(*arr, c * size);
  if (!a) return -1;
  *arr = a;
  *cap = c;
  return 0;
}

static int pubsub_name_set(pubsub_name_t *nm, const void *p, size_t len) {
  nm->bytes = malloc(len ? len : 1);
  if (!nm->bytes) return -1;
  if (len) memcpy(nm->bytes, p, len);
  nm->len = len;
  return 0;
}

static int pubsub_name_is(const pubsub_name_t *nm, const void *p, size_t len) {
  return nm->len == len && (len == 0 || memcmp(nm->bytes, p, len) == 0);
}

pubsub_t *pubsub_new(void) {
  pubsub_t *ps = calloc(1, sizeof *ps);
  if (!ps) return NULL;
  ps->buckets = calloc(PUBSUB_BUCKETS_FIRST, sizeof *ps->buckets);
  if (!ps->buckets) {
    free(ps);
    return NULL;
  }
  ps->nbuckets = PUBSUB_BUCKETS_FIRST;
  pthread_mutex_init(&ps->lock, NULL);
  return ps;
}

void pubsub_free(pubsub_t *ps) {
  if (!ps) return;
  /* Every client closed before: only the tables are left. */
  for (size_t b = 0; b < ps->nbuckets; b++) {
    for (pubsub_chan_t *ch = ps->buckets[b], *next; ch; ch = next) {
      next = ch->next;
      free(ch->name.bytes);
      free(ch->clients);
      free(ch);
    }
  }
  for (size_t i = 0; i < ps->npats; i++) free(ps->pats[i].name.bytes);
  free(ps->pats);
  free(ps->buckets);
  pthread_mutex_destroy(&ps->lock);
  free(ps);
}

uint64_t pubsub_dropped(const pubsub_t *ps) { return atomic_load(&ps->dropped); }

/* ---- the registry (under its lock) -------------------------------------- */

static pubsub_chan_t **pubsub_chan_at(pubsub_t *ps, const void *name, size_t len, uint64_t h) {
  pubsub_chan_t **at = &ps->buckets[h & (ps->nbuckets - 1)];
  while (*at && !((*at)->hash == h && pubsub_name_is(&(*at)->name, name, len))) at = &(*at)->next;
  return at;
}

/* Twice the buckets once there are more channels than buckets (if memory
 * allows: a longer chain is only slower). */
static void pubsub_rehash(pubsub_t *ps) {
  if (ps->nchans <= ps->nbuckets) return;
  size_t nb = ps->nbuckets * 2;
  pubsub_chan_t **b = calloc(nb, sizeof *b);
  if (!b) return;
  for (size_t i = 0; i < ps->nbuckets; i++) {
    for (pubsub_chan_t *ch = ps->buckets[i], *next; ch; ch = next) {
      next = ch->next;
      ch->next = b[ch->hash & (nb - 1)];
      b[ch->hash & (nb - 1)] = ch;
    }
  }
  free(ps->buckets);
  ps->buckets = b;
  ps->nbuckets = nb;
}

static int pubsub_chan_add(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len) {
  uint64_t h = XXH3_64bits(name, len);
  pubsub_chan_t **at = pubsub_chan_at(ps, name, len, h);
  pubsub_chan_t *ch = *at;
  if (!ch) {
    ch = calloc(1, sizeof *ch);
    if (!ch || pubsub_name_set(&ch->name, name, len) != 0) {
      free(ch);
      return GRID_ENOMEM;
    }
    ch->hash = h;
  }
  if (pubsub_grow((void **)&ch->clients, &ch->cap, ch->n, sizeof *ch->clients) != 0) {
    if (!*at) {
      free(ch->name.bytes);
      free(ch);
    }
    return GRID_ENOMEM;
  }
  ch->clients[ch->n++] = cl;
  if (!*at) {
    *at = ch;
    ps->nchans++;
    pubsub_rehash(ps);
  }
  return 0;
}

static void pubsub_chan_remove(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len) {
  uint64_t h = XXH3_64bits(name, len);
  pubsub_chan_t **at = pubsub_chan_at(ps, name, len, h);
  pubsub_chan_t *ch = *at;
  if (!ch) return;
  for (size_t i = 0; i < ch->n; i++) {
    if (ch->clients[i] == cl) {
      ch->clients[i] = ch->clients[--ch->n];
      break;
    }
  }
  if (ch->n) return;
  *at = ch->next;
  ps->nchans--;
  free(ch->name.bytes);
  free(ch->clients);
  free(ch);
}

static int pubsub_pat_add(pubsub_t *ps, pubsub_client_t *cl, const pubsub_name_t *name) {
  if (pubsub_grow((void **)&ps->pats, &ps->pats_cap, ps->npats, sizeof *ps->pats) != 0)
    return GRID_ENOMEM;
  /* The registry's record points at the client's own copy of the name:
   * both go together, on the client's loop. */
  ps->pats[ps->npats++] = (pubsub_pat_t){.name = *name, .client = cl};
  return 0;
}

static void pubsub_pat_remove(pubsub_t *ps, pubsub_client_t *cl, const pubsub_name_t *name) {
  for (size_t i = 0; i < ps->npats; i++) {
    if (ps->pats[i].client == cl && ps->pats[i].name.bytes == name->bytes) {
      /* Kept in order: PUBSUB and deliveries see patterns as subscribed. */
      memmove(&ps->pats[i], &ps->pats[i + 1], (ps->npats - i - 1) * sizeof *ps->pats);
      ps->npats--;
      return;
    }
  }
}

/* ---- a client's subscriptions ----------------------------------------- */

void pubsub_client_init(pubsub_client_t *cl, loop_t *lp, pubsub_deliver_fn deliver) {
  memset(cl, 0, sizeof *cl);
  cl->lp = lp;
  cl->deliver = deliver;
}

static pubsub_name_t *pubsub_client_list(pubsub_client_t *cl, int pattern, size_t **n,
                                         size_t **cap) {
  *n = pattern ? &cl->npatterns : &cl->nchannels;
  *cap = pattern ? &cl->patterns_cap : &cl->channels_cap;
  return pattern ? cl->patterns : cl->channels;
}

static long pubsub_client_find(pubsub_client_t *cl, int pattern, const void *name, size_t len) {
  size_t *n, *cap;
  pubsub_name_t *list = pubsub_client_list(cl, pattern, &n, &cap);
  for (size_t i = 0; i < *n; i++)
    if (pubsub_name_is(&list[i], name, len)) return (long)i;
  return -1;
}

int pubsub_subscribe(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len,
                     int pattern) {
  if (pubsub_client_find(cl, pattern, name, len) >= 0) return 0;
  size_t *n, *cap;
  pubsub_client_list(cl, pattern, &n, &cap);
  void **arr = pattern ? (void **)&cl->patterns : (void **)&cl->channels;
  if (pubsub_grow(arr, cap, *n, sizeof(pubsub_name_t)) != 0) return GRID_ENOMEM;
  pubsub_name_t nm;
  if (pubsub_name_set(&nm, name, len) != 0) return GRID_ENOMEM;
  pthread_mutex_lock(&ps->lock);
  int rc = pattern ? pubsub_pat_add(ps, cl, &nm) : pubsub_chan_add(ps, cl, name, len);
  pthread_mutex_unlock(&ps->lock);
  if (rc != 0) {
    free(nm.bytes);
    return rc;
  }
  pubsub_name_t *list = pattern ? cl->patterns : cl->channels;
  list[(*n)++] = nm;
  return 0;
}

static void pubsub_client_forget(pubsub_t *ps, pubsub_client_t *cl, int pattern, size_t i) {
  size_t *n, *cap;
  pubsub_name_t *list = pubsub_client_list(cl, pattern, &n, &cap);
  pthread_mutex_lock(&ps->lock);
  if (pattern) pubsub_pat_remove(ps, cl, &list[i]);
  else pubsub_chan_remove(ps, cl, list[i].bytes, list[i].len);
  pthread_mutex_unlock(&ps->lock);
  free(list[i].bytes);
  memmove(&list[i], &list[i + 1], (*n - i - 1) * sizeof *list);
  (*n)--;
}

int pubsub_unsubscribe(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len,
                       int pattern) {
  long i = pubsub_client_find(cl, pattern, name, len);
  if (i < 0) return 0;
  pubsub_client_forget(ps, cl, pattern, (size_t)i);
  return 1;
}

void pubsub_client_close(pubsub_t *ps, pubsub_client_t *cl) {
  while (cl->nchannels) pubsub_client_forget(ps, cl, 0, cl->nchannels - 1);
  while (cl->npatterns) pubsub_client_forget(ps, cl, 1, cl->npatterns - 1);
  free(cl->channels);
  free(cl->patterns);
  cl->channels = cl->patterns = NULL;
  cl->channels_cap = cl->patterns_cap = 0;
}

/* ---- delivery ------------------------------------------------------------ */

/* A client and the pattern it matched by (NULL: the channel's name). */
typedef struct pubsub_to {
  pubsub_client_t *cl;
  int by_pattern;
  pubsub_name_t pattern;     /* the client's own copy of the pattern */
} pubsub_to_t;

/* The clients of lp (or of every loop: lp NULL) that a message on channel
 * is for, in *to (malloc'd, NULL when none); the number, or -1 when out of
 * memory. loops_mask gets a bit per loop (the first 64; loops past them
 * are always posted to). Patterns' names are the clients' own: valid on
 * their loop until they unsubscribe there. */
static long pubsub_match(pubsub_t *ps, loop_t *lp, const void *channel, size_t channel_len,
                         pubsub_to_t **to, uint64_t *loops_mask) {
  long n = 0;
  *to = NULL;
  pthread_mutex_lock(&ps->lock);
  uint64_t h = XXH3_64bits(channel, channel_len);
  pubsub_chan_t *ch = *pubsub_chan_at(ps, channel, channel_len, h);
  size_t cap = (ch ? ch->n : 0) + ps->npats;
  if (cap && !(*to = malloc(cap * sizeof **to))) {
    pthread_mutex_unlock(&ps->lock);
    return -1;
  }
  for (size_t i = 0; ch && i < ch->n; i++) {
    pubsub_client_t *cl = ch->clients[i];
    if (lp && cl->lp != lp) continue;
    if (loops_mask) *loops_mask |= UINT64_C(1) << (cl->lp->index & 63);
    (*to)[n++] = (pubsub_to_t){.cl = cl};
  }
  for (size_t i = 0; i < ps->npats; i++) {
    pubsub_pat_t *pt = &ps->pats[i];
    if (lp && pt->client->lp != lp) continue;
    if (!glob_match(pt->name.bytes, pt->name.len, channel, channel_len)) continue;
    if (loops_mask) *loops_mask |= UINT64_C(1) << (pt->client->lp->index & 63);
    (*to)[n++] = (pubsub_to_t){.cl = pt->client, .by_pattern = 1, .pattern = pt->name};
  }
  pthread_mutex_unlock(&ps->lock);
  return n;
}

static void pubsub_deliver_here(loop_t *lp, const void *channel, size_t channel_len,
                                const void *msg, size_t msg_len) {
  pubsub_to_t *to;
  long n = pubsub_match(lp->node->pubsub, lp, channel, channel_len, &to, NULL);
  if (n < 0) {
    atomic_fetch_add(&lp->node->pubsub->dropped, 1);
    return;
  }
  for (long i = 0; i < n; i++)
    to[i].cl->deliver(to[i].cl, to[i].by_pattern ? &to[i].pattern : NULL, channel, channel_len, msg, msg_len);
  free(to);
}

static void pubsub_msg_task(loop_t *lp, void *arg) {
  pubsub_msg_t *m = arg;
  if (!lp->stopping)
    pubsub_deliver_here(lp, m->data, m->channel_len, m->data + m->channel_len, m->msg_len);
  if (atomic_fetch_sub(&m->refs, 1) == 1) {
    atomic_fetch_sub(&m->ps->inflight_bytes, m->bytes);
    free(m);
  }
}

/* Posts the message to the loops in mask other than lp's. */
static int pubsub_post(loop_t *lp, uint64_t mask, const void *channel, size_t channel_len,
                       const void *msg, size_t msg_len) {
  pubsub_t *ps = lp->node->pubsub;
  int nloops = loops_count(lp->set);
  int targets = 0;
  for (int i = 0; i < nloops; i++)
    if (i != lp->index && (i >= 64 || (mask >> i) & 1)) targets++;
  if (!targets) return 0;
  size_t data = (channel_len + msg_len + 15) & ~(size_t)15; /* the tasks after, aligned */
  size_t bytes = sizeof(pubsub_msg_t) + data + (size_t)nloops * sizeof(loop_task_t);
  if (atomic_fetch_add(&ps->inflight_bytes, bytes) + bytes > PUBSUB_INFLIGHT_BYTES_MAX) {
    atomic_fetch_sub(&ps->inflight_bytes, bytes);
    return GRID_EBUSY;
  }
  pubsub_msg_t *m = malloc(bytes);
  if (!m) {
    atomic_fetch_sub(&ps->inflight_bytes, bytes);
    return GRID_ENOMEM;
  }
  m->ps = ps;
  m->channel_len = channel_len;
  m->msg_len = msg_len;
  m->bytes = bytes;
  if (channel_len) memcpy(m->data, channel, channel_len);
  if (msg_len) memcpy(m->data + channel_len, msg, msg_len);
  m->tasks = (loop_task_t *)(void *)(m->data + data);
  atomic_init(&m->refs, targets);
  for (int i = 0; i < nloops; i++) {
    if (i == lp->index || !(i >= 64 || (mask >> i) & 1)) continue;
    m->tasks[i] = (loop_task_t){.fn = pubsub_msg_task, .arg = m};
    loop_post(lp, i, &m->tasks[i]);
  }
  return 0;
}

static void pubsub_peer_done(void *arg, int status, const Grid__Reply *rp) {
  pubsub_t *ps = arg;
  atomic_fetch_sub(&ps->forwards, 1);
  if (status != 0 || !rp || rp->status != 0) atomic_fetch_add(&ps->dropped, 1);
}

/* To every other node of the map: each delivers to its own clients. */
static void pubsub_forward(loop_t *lp, const void *channel, size_t channel_len, const void *msg,
                           size_t msg_len) {
  node_t *n = lp->node;
  const pmap_t *m = lp->pmap;
  if (!n->cluster || !m) return;
  for (size_t i = 0; i < m->nnodes; i++) {
    const pmap_node_t *nd = &m->nodes[i];
    if ((int)i == lp->self || strcmp(nd->id, n->node_id) == 0) continue;
    peer_t *p = peer_get(lp, nd);
    Grid__Request rq = GRID__REQUEST__INIT;
    rq.op = GRID__OP__PUBLISH;
    rq.key = (ProtobufCBinaryData){channel_len, (uint8_t *)(uintptr_t)channel};
    rq.value = (ProtobufCBinaryData){msg_len, (uint8_t *)(uintptr_t)msg};
    pubsub_t *ps = n->pubsub;
    if (atomic_fetch_add(&ps->forwards, 1) >= PUBSUB_FORWARD_INFLIGHT_MAX ||
        !p || peer_call(p, &rq, n->cfg.forward_timeout_ms, pubsub_peer_done, ps) != 0) {
      atomic_fetch_sub(&ps->forwards, 1);
      atomic_fetch_add(&ps->dropped, 1);
    }
  }
}

int pubsub_publish(loop_t *lp, const void *channel, size_t channel_len, const void *msg,
                   size_t msg_len, int forward, int64_t *receivers) {
  pubsub_t *ps = lp->node->pubsub;
  pubsub_to_t *to;
  uint64_t mask = 0;
  long n = pubsub_match(ps, NULL, channel, channel_len, &to, &mask);
  if (n < 0) return GRID_ENOMEM;
  free(to); /* the count and the loops are what is needed here */
  int rc = n ? pubsub_post(lp, mask, channel, channel_len, msg, msg_len) : 0;
  if (rc != 0) {
    atomic_fetch_add(&ps->dropped, 1);
    return rc;
  }
  if (n && (mask & (UINT64_C(1) << (lp->index & 63))))
    pubsub_deliver_here(lp, channel, channel_len, msg, msg_len);
  if (forward) pubsub_forward(lp, channel, channel_len, msg, msg_len);
  *receivers = n;
  return 0;
}

/* ---- PUBSUB --------------------------------------------------------------- */

void pubsub_channels(pubsub_t *ps, const void *pattern, size_t pattern_len,
                     void (*each)(void *ctx, const void *name, size_t len), void *ctx) {
  pthread_mutex_lock(&ps->lock);
  for (size_t b = 0; b < ps->nbuckets; b++) {
    for (pubsub_chan_t *ch = ps->buckets[b]; ch; ch = ch->next) {
      if (pattern && !glob_match(pattern, pattern_len, ch->name.bytes, ch->name.len)) continue;
      each(ctx, ch->name.bytes, ch->name.len);
    }
  }
  pthread_mutex_unlock(&ps->lock);
}

int64_t pubsub_numsub(pubsub_t *ps, const void *channel, size_t len) {
  pthread_mutex_lock(&ps->lock);
  pubsub_chan_t *ch = *pubsub_chan_at(ps, channel, len, XXH3_64bits(channel, len));
  int64_t n = ch ? (int64_t)ch->n : 0;
  pthread_mutex_unlock(&ps->lock);
  return n;
}

static int pubsub_u64_cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int64_t pubsub_numpat(pubsub_t *ps) {
  /* Redis counts distinct patterns, not clients' subscriptions to them:
   * their 64-bit hashes are taken under the lock (linear), then sorted and
   * counted outside it. */
  pthread_mutex_lock(&ps->lock);
  size_t n = ps->npats;
  uint64_t *h = n ? malloc(n * sizeof *h) : NULL;
  for (size_t i = 0; h && i < n; i++)
    h[i] = XXH3_64bits(ps->pats[i].name.bytes, ps->pats[i].name.len);
  pthread_mutex_unlock(&ps->lock);
  if (!h) return (int64_t)n; /* no memory to tell repeats apart */
  qsort(h, n, sizeof *h, pubsub_u64_cmp);
  int64_t distinct = 0;
  for (size_t i = 0; i < n; i++) distinct += i == 0 || h[i] != h[i - 1];
  free(h);
  return distinct;
}
