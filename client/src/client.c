/*
 * client: the public calls of grid.h. Each builds a Request and runs it on
 * the handle's transport: the remote connection, or the embedded node's
 * ops_execute in this process. An embedded get of a key reads the store
 * directly: no encoding, no network, no event-loop queue.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_int.h"
#include "clock.h"
#include "log.h"

#define CLIENT_TIMEOUT_MS_DEFAULT 5000
#define CLIENT_ARENA_BYTES 4096
#define CLIENT_RETRY_DELAY_MS_MAX 100 /* between tries of a refused request */
/* Async requests of a handle in flight or on the retry list, unless
 * grid_options_t.async_max says otherwise: as many as one connection can
 * have in flight (remote.c's REMOTE_INFLIGHT_MAX). */
#define CLIENT_ASYNC_MAX_DEFAULT 4096

typedef struct client_async client_async_t;

/* Asynchronous requests the cluster refused unrun, waiting to be sent
 * again (by a thread of their own, started on the first). The list holds
 * at most the handle's async_max requests: every one on it was counted in
 * grid_t.async_n when its call was accepted. */
struct client_retry {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
  int started, stop;
  client_async_t *head;      /* not in due order: few at a time */
};

/* ---- opening ------------------------------------------------------------- */

static int client_open_embedded(const grid_options_t *opts, grid_t *g) {
  char self[160];
  int rc = embedded_open(opts, &g->embedded, self, sizeof self);
  if (rc == 0 && self[0]) {
    /* An embedded cluster node: the application's requests go through the
     * node's own listener, like any client's, so that they are routed,
     * replicated and fenced like every other request. */
    rc = router_open(self, opts, 0, &g->router);
    if (rc != 0) {
      embedded_close(g->embedded);
      g->embedded = NULL;
    }
  }
  return rc;
}

int grid_open(const char *uri, const grid_options_t *opts, grid_t **out) {
  if (!uri || !out) return GRID_EINVAL;
  grid_t *g = calloc(1, sizeof *g);
  if (!g) return GRID_ENOMEM;
  g->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : CLIENT_TIMEOUT_MS_DEFAULT;
  g->async_max = opts && opts->async_max ? opts->async_max : CLIENT_ASYNC_MAX_DEFAULT;
  atomic_init(&g->async_n, 0);
  int rc;
  if (strncmp(uri, "embedded:", 9) == 0) {
    rc = client_open_embedded(opts, g);
  } else if (strncmp(uri, "grid://", 7) == 0) {
    rc = router_open(uri + 7, opts, 0, &g->router);
  } else if (strncmp(uri, "grids://", 8) == 0) {
    rc = router_open(uri + 8, opts, 1, &g->router);
  } else {
    rc = GRID_EADDR;
  }
  if (rc == 0 && g->router) rc = near_open(g, opts, &g->near);
  if (rc == 0 && g->router) {
    g->retry = calloc(1, sizeof *g->retry);
    if (!g->retry) {
      rc = GRID_ENOMEM;
    } else {
      pthread_mutex_init(&g->retry->lock, NULL);
      clock_cond_init(&g->retry->cond);
    }
  }
  if (rc != 0) {
    near_close(g->near);
    if (g->router) router_close(g->router);
    if (g->embedded) embedded_close(g->embedded);
    free(g);
    return rc;
  }
  *out = g;
  return 0;
}

void grid_close(grid_t *g) {
  if (!g) return;
  if (g->retry) {
    /* Retries first: what waits fails; what the connections still hold
     * then fails through client_async_done, which sees the stop. */
    pthread_mutex_lock(&g->retry->lock);
    g->retry->stop = 1;
    int started = g->retry->started;
    pthread_cond_signal(&g->retry->cond);
    pthread_mutex_unlock(&g->retry->lock);
    if (started) pthread_join(g->retry->thread, NULL);
  }
  near_close(g->near); /* its streams use the router */
  if (g->router) router_close(g->router);
  if (g->retry) {
    pthread_mutex_destroy(&g->retry->lock);
    pthread_cond_destroy(&g->retry->cond);
    free(g->retry);
  }
  if (g->embedded) embedded_close(g->embedded);
  free(g);
}

void grid_set_timeout(grid_t *g, uint32_t timeout_ms) {
  g->timeout_ms = timeout_ms ? timeout_ms : CLIENT_TIMEOUT_MS_DEFAULT;
}

/* ---- running a request --------------------------------------------------- */

/* Runs rq and waits. Returns the transport's error, or the node's status;
 * on 0 and on a node error *out holds the reply (free it either way when
 * the return is not a transport error: client_call frees it itself then). */
static int client_call_once(grid_t *g, Grid__Request *rq, client_reply_t *out);

/* The words of the last error a node answered a call of this thread with. */
static __thread char client_last_error[512];
/* The number the node answered the last error with (BATCH: the op whose
 * condition failed). */
static __thread int64_t client_last_error_number;

/* Runs rq; when the node says the request was not run because the
 * partition is changing owner (GRID_ENOTREADY, GRID_ESTALE) or the node is
 * not serving for now (GRID_ECLUSTER: no ZooKeeper), tries again until the
 * call's deadline: such a request is safe to repeat, write or not, since
 * it was never applied. */
/* A write through a handle with a near cache: its keys' entries go first
 * (read-your-writes), and a get in flight of them keeps nothing. */
static void client_near_forget(grid_t *g, const Grid__Request *rq) {
  if (!g->near || !op_is_write(rq->op)) return;
  const char *cache = rq->cache ? rq->cache : "default";
  if (op_has(rq->op, OP_KEYED)) near_forget(g->near, cache, rq->key.data, rq->key.len);
  for (size_t i = 0; i < rq->n_keys; i++)
    near_forget(g->near, cache, rq->keys[i].data, rq->keys[i].len);
  for (size_t i = 0; i < rq->n_batch; i++)
    near_forget(g->near, cache, rq->batch[i]->key.data, rq->batch[i]->key.len);
}

static int client_call_retrying(grid_t *g, Grid__Request *rq, client_reply_t *out);

static int client_call(grid_t *g, Grid__Request *rq, client_reply_t *out) {
  client_last_error[0] = '\0';
  client_last_error_number = 0;
  client_near_forget(g, rq);
  int rc = client_call_retrying(g, rq, out);
  /* Again once answered: a get sent while the write was in flight may
   * have kept the value it replaced. */
  client_near_forget(g, rq);
  return rc;
}

static int client_call_retrying(grid_t *g, Grid__Request *rq, client_reply_t *out) {
  int64_t deadline = clock_mono_ms() + g->timeout_ms;
  int delay_ms = 2;
  for (;;) {
    int rc = client_call_once(g, rq, out);
    if (rc != GRID_ENOTREADY && rc != GRID_ESTALE && rc != GRID_ECLUSTER) return rc;
    if (g->router) router_mark_stale(g->router);
    if (clock_mono_ms() + delay_ms >= deadline) return rc;
    struct timespec ts = {0, delay_ms * 1000000L};
    nanosleep(&ts, NULL);
    if (delay_ms < CLIENT_RETRY_DELAY_MS_MAX) delay_ms *= 2;
  }
}

static int client_call_once(grid_t *g, Grid__Request *rq, client_reply_t *out) {
  memset(out, 0, sizeof *out);
  int rc;
  uint32_t part;
  if (!g->router) {
    arena_init(&out->arena, CLIENT_ARENA_BYTES);
    grid__reply__init(&out->local);
    embedded_call(g->embedded, rq, &out->local, &out->arena);
    out->rp = &out->local;
  } else if (g->embedded && op_has(rq->op, OP_KEYED) && op_is_write(rq->op) &&
             embedded_leads(g->embedded, rq->cache ? rq->cache : "default", rq->key.data,
                            rq->key.len, &part)) {
    /* An embedded member's write of a key it leads: straight to the
     * partition's loop, no socket. */
    rc = embedded_call_loop(g->embedded, rq, part, g->timeout_ms, &out->rp);
    if (rc != 0) return rc;
    out->unpacked = 1;
    router_saw_epoch(g->router, out->rp->epoch);
  } else {
    remote_t *r = router_pick(g->router, rq, g->timeout_ms);
    rc = remote_call(r, rq, g->timeout_ms, out);
    if (rc == GRID_ECONN && router_clustered(g->router)) {
      /* Not sent, or a read whose connection went: the node may be gone;
       * a fresh map names the partition's new primary. */
      router_mark_stale(g->router);
      return GRID_ENOTREADY;
    }
    if (rc != 0) return rc;
    router_saw_epoch(g->router, out->rp->epoch);
  }
  rc = out->rp->status;
  if (rc != 0) {
    snprintf(client_last_error, sizeof client_last_error, "%s",
             out->rp->message && out->rp->message[0] ? out->rp->message : grid_strerror(rc));
    client_last_error_number = out->rp->number;
    client_reply_free(out);
  }
  return rc;
}

const char *grid_last_error(void) { return client_last_error; }

void client_set_error(const char *words) {
  snprintf(client_last_error, sizeof client_last_error, "%s", words);
}

/* Runs rq when only its status and version matter. */
static int client_call_version(grid_t *g, Grid__Request *rq, uint64_t *version) {
  client_reply_t r;
  int rc = client_call(g, rq, &r);
  if (rc != 0) return rc;
  if (version) *version = r.rp->version;
  client_reply_free(&r);
  return 0;
}

static int client_value_set(grid_value_t *v, const void *data, size_t len,
                            uint64_t version) {
  v->data = malloc(len + 1);
  if (!v->data) return GRID_ENOMEM;
  if (len) memcpy(v->data, data, len);
  ((char *)v->data)[len] = '\0';
  v->len = len;
  v->version = version;
  v->found = true;
  return 0;
}

void grid_value_free(grid_value_t *v) {
  if (!v) return;
  free(v->data);
  v->data = NULL;
  v->len = 0;
}

static void client_request_key(Grid__Request *rq, Grid__Op op, const char *cache,
                               const void *key, size_t key_len) {
  grid__request__init(rq);
  rq->op = op;
  rq->cache = (char *)(cache ? cache : "default");
  rq->key.data = (uint8_t *)key;
  rq->key.len = key_len;
}

/* ---- single keys --------------------------------------------------------- */

int grid_ping(grid_t *g) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__PING;
  return client_call_version(g, &rq, NULL);
}

/* The embedded read path: straight into the store, copying the value into
 * a buffer of the caller's. */
static int client_embedded_get(grid_t *g, const char *cache, const void *key,
                               size_t key_len, grid_value_t *out) {
  void *v;
  size_t len;
  uint64_t ver;
  int rc = embedded_get(g->embedded, cache ? cache : "default", key, key_len, &v, &len, &ver);
  if (rc != 0) return rc;
  out->data = v;
  out->len = len;
  out->version = ver;
  out->found = true;
  return 0;
}

int grid_get(grid_t *g, const char *cache, const void *key, size_t key_len,
             grid_value_t *out) {
  memset(out, 0, sizeof *out);
  if (!g->router) return client_embedded_get(g, cache, key, key_len, out);
  if (g->embedded) {
    /* An embedded cluster member reads what it leads in this thread. */
    void *v;
    size_t len;
    uint64_t ver;
    int rc = embedded_get_led(g->embedded, cache ? cache : "default", key, key_len, &v, &len,
                              &ver);
    if (rc == 0) {
      *out = (grid_value_t){.data = v, .len = len, .version = ver, .found = true};
      return 0;
    }
    if (rc != GRID_ENOTREADY) return rc;
  }
  near_ticket_t ticket;
  int fill = 0;
  if (g->near) {
    void *v;
    size_t len;
    uint64_t ver;
    const char *c = cache ? cache : "default";
    if (near_get(g->near, c, key, key_len, &v, &len, &ver) == 0) {
      *out = (grid_value_t){.data = v, .len = len, .version = ver, .found = true};
      return 0;
    }
    fill = near_ticket(g->near, c, key, key_len, &ticket);
  }
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__GET, cache, key, key_len);
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  rc = client_value_set(out, r.rp->value.data, r.rp->value.len, r.rp->version);
  if (rc == 0 && fill)
    near_fill(g->near, &ticket, key, key_len, r.rp->value.data, r.rp->value.len,
              r.rp->version);
  client_reply_free(&r);
  return rc;
}

static int client_write(grid_t *g, Grid__Op op, const char *cache,
                        const void *key, size_t key_len, const void *value,
                        size_t value_len, uint64_t ttl_ms, uint64_t expected,
                        uint64_t *version_out) {
  Grid__Request rq;
  client_request_key(&rq, op, cache, key, key_len);
  rq.value.data = (uint8_t *)value;
  rq.value.len = value_len;
  rq.ttl_ms = ttl_ms;
  rq.version = expected;
  return client_call_version(g, &rq, version_out);
}

int grid_put(grid_t *g, const char *cache, const void *key, size_t key_len,
             const void *value, size_t value_len, uint64_t ttl_ms,
             uint64_t *version_out) {
  return client_write(g, GRID__OP__PUT, cache, key, key_len, value, value_len,
                      ttl_ms, 0, version_out);
}

int grid_put_if_absent(grid_t *g, const char *cache, const void *key,
                       size_t key_len, const void *value, size_t value_len,
                       uint64_t ttl_ms, uint64_t *version_out) {
  return client_write(g, GRID__OP__PUT_IF_ABSENT, cache, key, key_len, value,
                      value_len, ttl_ms, 0, version_out);
}

int grid_replace(grid_t *g, const char *cache, const void *key, size_t key_len,
                 const void *value, size_t value_len, uint64_t ttl_ms,
                 uint64_t *version_out) {
  return client_write(g, GRID__OP__REPLACE, cache, key, key_len, value,
                      value_len, ttl_ms, 0, version_out);
}

int grid_cas(grid_t *g, const char *cache, const void *key, size_t key_len,
             uint64_t expected_version, const void *value, size_t value_len,
             uint64_t ttl_ms, uint64_t *version_out) {
  return client_write(g, GRID__OP__CAS, cache, key, key_len, value, value_len,
                      ttl_ms, expected_version, version_out);
}

int grid_delete(grid_t *g, const char *cache, const void *key, size_t key_len) {
  return client_write(g, GRID__OP__DELETE, cache, key, key_len, NULL, 0, 0, 0,
                      NULL);
}

int grid_add(grid_t *g, const char *cache, const void *key, size_t key_len,
             int64_t delta, int64_t *result) {
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__ADD, cache, key, key_len);
  rq.delta = delta;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  if (result) *result = r.rp->number;
  client_reply_free(&r);
  return 0;
}

/* ---- hashes --------------------------------------------------------------- */

/* A COLL request of cmd on key, its arguments the n pairs (or singles when
 * b is NULL) a / b. */
static int client_hash_call(grid_t *g, const char *cache, const void *key, size_t key_len,
                            int cmd, size_t n, const void *const *a, const size_t *a_lens,
                            const void *const *b, const size_t *b_lens, int64_t delta,
                            client_reply_t *r) {
  size_t nv = b ? 2 * n : n;
  ProtobufCBinaryData *vals = malloc((nv ? nv : 1) * sizeof *vals);
  if (!vals) return GRID_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (b) {
      vals[2 * i] = (ProtobufCBinaryData){a_lens[i], (uint8_t *)a[i]};
      vals[2 * i + 1] = (ProtobufCBinaryData){b_lens[i], (uint8_t *)b[i]};
    } else {
      vals[i] = (ProtobufCBinaryData){a_lens[i], (uint8_t *)a[i]};
    }
  }
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__COLL, cache, key, key_len);
  rq.coll_cmd = (uint32_t)cmd;
  rq.values = vals;
  rq.n_values = nv;
  rq.delta = delta;
  int rc = client_call(g, &rq, r);
  free(vals);
  return rc;
}

/* HSET, HDEL: n fields (and values), the number the node counted. */
static int client_hash_count(grid_t *g, const char *cache, const void *key, size_t key_len,
                             int cmd, const char *who, size_t n, const void *const *fields,
                             const size_t *field_lens, const void *const *values,
                             const size_t *value_lens, size_t *count) {
  if (n == 0) {
    char words[64];
    snprintf(words, sizeof words, "%s: no field", who);
    client_set_error(words);
    return GRID_EINVAL;
  }
  client_reply_t r;
  int rc = client_hash_call(g, cache, key, key_len, cmd, n, fields, field_lens, values, value_lens,
                            0, &r);
  if (rc != 0) return rc;
  if (count) *count = (size_t)r.rp->number;
  client_reply_free(&r);
  return 0;
}

int grid_hset(grid_t *g, const char *cache, const void *key, size_t key_len, size_t n,
              const void *const *fields, const size_t *field_lens, const void *const *values,
              const size_t *value_lens, size_t *added) {
  return client_hash_count(g, cache, key, key_len, GRID__COLL_CMD__HSET, "grid_hset", n, fields,
                           field_lens, values, value_lens, added);
}

int grid_hget(grid_t *g, const char *cache, const void *key, size_t key_len, const void *field,
              size_t field_len, grid_value_t *out) {
  memset(out, 0, sizeof *out);
  client_reply_t r;
  int rc = client_hash_call(g, cache, key, key_len, GRID__COLL_CMD__HGET, 1, &field, &field_len,
                            NULL, NULL, 0, &r);
  if (rc != 0) return rc;
  if (r.rp->found) rc = client_value_set(out, r.rp->value.data, r.rp->value.len, r.rp->version);
  client_reply_free(&r);
  return rc;
}

int grid_hdel(grid_t *g, const char *cache, const void *key, size_t key_len, size_t n,
              const void *const *fields, const size_t *field_lens, size_t *removed) {
  return client_hash_count(g, cache, key, key_len, GRID__COLL_CMD__HDEL, "grid_hdel", n, fields,
                           field_lens, NULL, NULL, removed);
}

int grid_hgetall(grid_t *g, const char *cache, const void *key, size_t key_len,
                 grid_entry_t **entries, size_t *n) {
  *entries = NULL;
  *n = 0;
  client_reply_t r;
  int rc = client_hash_call(g, cache, key, key_len, GRID__COLL_CMD__HGETALL, 0, NULL, NULL, NULL,
                            NULL, 0, &r);
  if (rc != 0) return rc;
  size_t pairs = r.rp->n_entries / 2;
  grid_entry_t *list = calloc(pairs ? pairs : 1, sizeof *list);
  for (size_t i = 0; list && i < pairs; i++) {
    const Grid__Entry *f = r.rp->entries[2 * i], *v = r.rp->entries[2 * i + 1];
    char *mem = malloc(f->value.len + v->value.len + 2);
    if (!mem) {
      grid_entries_free(list, i);
      list = NULL;
      break;
    }
    if (f->value.len) memcpy(mem, f->value.data, f->value.len);
    mem[f->value.len] = '\0';
    if (v->value.len) memcpy(mem + f->value.len + 1, v->value.data, v->value.len);
    mem[f->value.len + 1 + v->value.len] = '\0';
    list[i] = (grid_entry_t){mem, f->value.len, mem + f->value.len + 1, v->value.len,
                             r.rp->version};
  }
  client_reply_free(&r);
  if (!list) return GRID_ENOMEM;
  *entries = list;
  *n = pairs;
  return 0;
}

int grid_hincrby(grid_t *g, const char *cache, const void *key, size_t key_len,
                 const void *field, size_t field_len, int64_t delta, int64_t *result) {
  client_reply_t r;
  int rc = client_hash_call(g, cache, key, key_len, GRID__COLL_CMD__HINCRBY, 1, &field,
                            &field_len, NULL, NULL, delta, &r);
  if (rc != 0) return rc;
  if (result) *result = r.rp->number;
  client_reply_free(&r);
  return 0;
}

/* ---- batches ------------------------------------------------------------- */

/* Points a request's repeated bytes field at the caller's keys. */
static ProtobufCBinaryData *client_bytes_list(size_t n, const void *const *p,
                                              const size_t *lens) {
  ProtobufCBinaryData *b = malloc((n ? n : 1) * sizeof *b);
  if (!b) return NULL;
  for (size_t i = 0; i < n; i++) {
    b[i].data = (uint8_t *)p[i];
    b[i].len = lens[i];
  }
  return b;
}

/* Runs a batch op that takes only keys (get_all, delete_all). */
static int client_call_keys(grid_t *g, Grid__Op op, const char *cache, size_t n,
                            const void *const *keys, const size_t *key_lens,
                            client_reply_t *r) {
  Grid__Request rq;
  client_request_key(&rq, op, cache, NULL, 0);
  rq.keys = client_bytes_list(n, keys, key_lens);
  if (!rq.keys) return GRID_ENOMEM;
  rq.n_keys = n;
  int rc = client_call(g, &rq, r);
  free(rq.keys);
  return rc;
}

/* ---- batches split by primary (in a cluster) ---------------------------- */

/* One primary's share of a batch: positions in the caller's arrays. */
typedef int (*client_share_fn)(grid_t *g, void *ctx, const size_t *idx, size_t m);

/* In a cluster, a batch whose keys several nodes lead is split into one
 * batch per primary, each sent straight to it (the router sends a batch
 * by its first key). Returns 1 with *rc when it ran the shares, 0 when the
 * batch should go as one. */
static int client_split(grid_t *g, const char *cache, size_t n, const void *const *keys,
                        const size_t *lens, client_share_fn share, void *ctx, int *rc) {
  if (!g->router || n < 2 || !router_clustered(g->router)) return 0;
  int *owner = malloc(n * sizeof *owner);
  size_t *idx = malloc(n * sizeof *idx);
  unsigned char *done = calloc(n, 1);
  int split = 0;
  if (owner && idx && done) {
    for (size_t i = 0; i < n; i++) {
      owner[i] = router_primary_of(g->router, cache ? cache : "default", keys[i], lens[i]);
      if (owner[i] < 0) break; /* unknown: the node sorts it out */
      if (owner[i] != owner[0]) split = 1;
      if (i + 1 == n && split) split = 2;
    }
  }
  if (split == 2) {
    *rc = 0;
    for (size_t i = 0; i < n && *rc == 0; i++) {
      if (done[i]) continue;
      size_t m = 0;
      for (size_t j = i; j < n; j++) {
        if (!done[j] && owner[j] == owner[i]) {
          idx[m++] = j;
          done[j] = 1;
        }
      }
      *rc = share(g, ctx, idx, m);
    }
  }
  free(owner);
  free(idx);
  free(done);
  return split == 2;
}

/* The keys (and values) at positions idx, as arrays of their own. */
typedef struct client_subset {
  const void **keys, **values;
  size_t *key_lens, *value_lens;
} client_subset_t;

static int client_subset_make(client_subset_t *sub, const size_t *idx, size_t m,
                              const void *const *keys, const size_t *key_lens,
                              const void *const *values, const size_t *value_lens) {
  sub->keys = malloc(m * sizeof *sub->keys);
  sub->key_lens = malloc(m * sizeof *sub->key_lens);
  sub->values = values ? malloc(m * sizeof *sub->values) : NULL;
  sub->value_lens = values ? malloc(m * sizeof *sub->value_lens) : NULL;
  if (!sub->keys || !sub->key_lens || (values && (!sub->values || !sub->value_lens)))
    return GRID_ENOMEM;
  for (size_t j = 0; j < m; j++) {
    sub->keys[j] = keys[idx[j]];
    sub->key_lens[j] = key_lens[idx[j]];
    if (values) {
      sub->values[j] = values[idx[j]];
      sub->value_lens[j] = value_lens[idx[j]];
    }
  }
  return 0;
}

static void client_subset_free(client_subset_t *sub) {
  free(sub->keys);
  free(sub->key_lens);
  free(sub->values);
  free(sub->value_lens);
}

typedef struct client_batch_ctx {
  const char *cache;
  const void *const *keys;
  const size_t *key_lens;
  const void *const *values;
  const size_t *value_lens;
  uint64_t ttl_ms;
  grid_value_t *out;     /* get_all */
  size_t count;          /* delete_all */
} client_batch_ctx_t;

static int client_get_share(grid_t *g, void *arg, const size_t *idx, size_t m) {
  client_batch_ctx_t *b = arg;
  client_subset_t sub = {0};
  grid_value_t *vals = calloc(m, sizeof *vals);
  int rc = vals ? client_subset_make(&sub, idx, m, b->keys, b->key_lens, NULL, NULL) : GRID_ENOMEM;
  if (rc == 0) rc = grid_get_all(g, b->cache, m, sub.keys, sub.key_lens, vals);
  for (size_t j = 0; rc == 0 && j < m; j++) b->out[idx[j]] = vals[j];
  client_subset_free(&sub);
  free(vals);
  return rc;
}

static int client_put_share(grid_t *g, void *arg, const size_t *idx, size_t m) {
  client_batch_ctx_t *b = arg;
  client_subset_t sub = {0};
  int rc = client_subset_make(&sub, idx, m, b->keys, b->key_lens, b->values, b->value_lens);
  if (rc == 0)
    rc = grid_put_all(g, b->cache, m, sub.keys, sub.key_lens, sub.values, sub.value_lens,
                      b->ttl_ms);
  client_subset_free(&sub);
  return rc;
}

static int client_delete_share(grid_t *g, void *arg, const size_t *idx, size_t m) {
  client_batch_ctx_t *b = arg;
  client_subset_t sub = {0};
  size_t deleted = 0;
  int rc = client_subset_make(&sub, idx, m, b->keys, b->key_lens, NULL, NULL);
  if (rc == 0) rc = grid_delete_all(g, b->cache, m, sub.keys, sub.key_lens, &deleted);
  b->count += deleted;
  client_subset_free(&sub);
  return rc;
}

int grid_get_all(grid_t *g, const char *cache, size_t n,
                 const void *const *keys, const size_t *key_lens,
                 grid_value_t *out) {
  memset(out, 0, n * sizeof *out);
  if (g->embedded && g->router && n > 0) {
    /* An embedded member reads keys it leads in this thread, each as
     * grid_get does; if any is not its to read, the whole batch goes the
     * way of any client's. */
    const char *c = cache ? cache : "default";
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
      void *v;
      size_t len;
      uint64_t ver;
      rc = embedded_get_led(g->embedded, c, keys[i], key_lens[i], &v, &len, &ver);
      if (rc == 0) out[i] = (grid_value_t){.data = v, .len = len, .version = ver, .found = true};
      if (rc == GRID_ENOTFOUND) rc = 0;
    }
    if (rc == 0) return 0;
    for (size_t i = 0; i < n; i++) grid_value_free(&out[i]);
    memset(out, 0, n * sizeof *out);
    if (rc != GRID_ENOTREADY) return rc;
  }
  client_batch_ctx_t b = {.cache = cache, .keys = keys, .key_lens = key_lens, .out = out};
  int split_rc;
  if (client_split(g, cache, n, keys, key_lens, client_get_share, &b, &split_rc)) {
    if (split_rc != 0)
      for (size_t i = 0; i < n; i++) grid_value_free(&out[i]);
    return split_rc;
  }
  client_reply_t r;
  int rc = client_call_keys(g, GRID__OP__GET_ALL, cache, n, keys, key_lens, &r);
  if (rc != 0) return rc;
  if (r.rp->n_entries != n) rc = GRID_EPROTO;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const Grid__Entry *e = r.rp->entries[i];
    if (e->found)
      rc = client_value_set(&out[i], e->value.data, e->value.len, e->version);
  }
  if (rc != 0)
    for (size_t i = 0; i < n; i++) grid_value_free(&out[i]);
  client_reply_free(&r);
  return rc;
}

int grid_put_all(grid_t *g, const char *cache, size_t n,
                 const void *const *keys, const size_t *key_lens,
                 const void *const *values, const size_t *value_lens,
                 uint64_t ttl_ms) {
  client_batch_ctx_t b = {.cache = cache, .keys = keys, .key_lens = key_lens,
                          .values = values, .value_lens = value_lens, .ttl_ms = ttl_ms};
  int split_rc;
  if (client_split(g, cache, n, keys, key_lens, client_put_share, &b, &split_rc))
    return split_rc;
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__PUT_ALL, cache, NULL, 0);
  rq.keys = client_bytes_list(n, keys, key_lens);
  rq.values = client_bytes_list(n, values, value_lens);
  rq.n_keys = rq.n_values = n;
  rq.ttl_ms = ttl_ms;
  int rc = rq.keys && rq.values ? client_call_version(g, &rq, NULL) : GRID_ENOMEM;
  free(rq.keys);
  free(rq.values);
  return rc;
}

int grid_delete_all(grid_t *g, const char *cache, size_t n,
                    const void *const *keys, const size_t *key_lens,
                    size_t *deleted) {
  client_batch_ctx_t b = {.cache = cache, .keys = keys, .key_lens = key_lens};
  int split_rc;
  if (client_split(g, cache, n, keys, key_lens, client_delete_share, &b, &split_rc)) {
    if (deleted) *deleted = b.count;
    return split_rc;
  }
  client_reply_t r;
  int rc = client_call_keys(g, GRID__OP__DELETE_ALL, cache, n, keys, key_lens, &r);
  if (rc != 0) return rc;
  if (deleted) *deleted = (size_t)r.rp->number;
  client_reply_free(&r);
  return 0;
}

/* ---- scan, size, caches, stats ------------------------------------------- */

void grid_entries_free(grid_entry_t *entries, size_t n) {
  if (!entries) return;
  for (size_t i = 0; i < n; i++) free(entries[i].key);
  free(entries);
}

/* A reply's entries as the caller's list (one allocation per entry: key
 * and value, freed through the key). NULL when memory fails. */
static grid_entry_t *client_entries(const Grid__Reply *rp) {
  size_t m = rp->n_entries;
  grid_entry_t *list = calloc(m ? m : 1, sizeof *list);
  for (size_t i = 0; list && i < m; i++) {
    const Grid__Entry *e = rp->entries[i];
    unsigned char *mem = malloc(e->key.len + e->value.len + 2);
    if (!mem) {
      grid_entries_free(list, i);
      return NULL;
    }
    /* protobuf-c leaves an empty field's data NULL. */
    if (e->key.len) memcpy(mem, e->key.data, e->key.len);
    mem[e->key.len] = '\0';
    if (e->value.len) memcpy(mem + e->key.len + 1, e->value.data, e->value.len);
    mem[e->key.len + 1 + e->value.len] = '\0';
    list[i] = (grid_entry_t){mem, e->key.len, mem + e->key.len + 1, e->value.len,
                             e->version};
  }
  return list;
}

/* Runs rq, whose reply is a list of entries (and, for SCAN, a cursor). */
static int client_call_entries(grid_t *g, Grid__Request *rq, grid_entry_t **entries, size_t *n,
                               uint64_t *cursor) {
  client_reply_t r;
  int rc = client_call(g, rq, &r);
  if (rc != 0) return rc;
  grid_entry_t *list = client_entries(r.rp);
  if (list) {
    *entries = list;
    *n = r.rp->n_entries;
    if (cursor) *cursor = r.rp->cursor;
  }
  client_reply_free(&r);
  return list ? 0 : GRID_ENOMEM;
}

int grid_scan(grid_t *g, const char *cache, uint32_t partition,
              uint64_t *cursor, uint32_t count, grid_entry_t **entries,
              size_t *n) {
  *entries = NULL;
  *n = 0;
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__SCAN, cache, NULL, 0);
  rq.partition = partition;
  rq.cursor = *cursor;
  rq.count = count;
  return client_call_entries(g, &rq, entries, n, cursor);
}

int grid_get_prefix(grid_t *g, const char *cache, const void *prefix, size_t prefix_len,
                    uint32_t max, grid_entry_t **entries, size_t *n) {
  *entries = NULL;
  *n = 0;
  if (g->embedded && g->router) {
    /* An embedded member reads a Thing it leads in this thread. */
    int rc = embedded_get_prefix_led(g->embedded, cache ? cache : "default", prefix, prefix_len,
                                     max, entries, n);
    if (rc != GRID_ENOTREADY) return rc;
  }
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__GET_PREFIX, cache, prefix, prefix_len);
  rq.count = max;
  return client_call_entries(g, &rq, entries, n, NULL);
}

int grid_batch(grid_t *g, const char *cache, grid_batch_op_t *ops, size_t n, size_t *failed) {
  if (failed) *failed = 0;
  if (n == 0) {
    client_set_error("an empty batch");
    return GRID_EINVAL;
  }
  Grid__BatchOp *bo = calloc(n, sizeof *bo);
  Grid__BatchOp **list = calloc(n, sizeof *list);
  if (!bo || !list) {
    free(bo);
    free(list);
    return GRID_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    grid__batch_op__init(&bo[i]);
    bo[i].kind = (Grid__BatchKind)ops[i].kind;
    bo[i].key = (ProtobufCBinaryData){ops[i].key_len, (uint8_t *)ops[i].key};
    if (ops[i].kind == GRID_BATCH_PUT)
      bo[i].value = (ProtobufCBinaryData){ops[i].value_len, (uint8_t *)ops[i].value};
    bo[i].ttl_ms = ops[i].ttl_ms;
    bo[i].cond = (Grid__BatchCond)ops[i].cond;
    bo[i].version = ops[i].version;
    list[i] = &bo[i];
  }
  Grid__Request rq;
  /* Routed by its first key; the node checks that every key is of that
   * partition. */
  client_request_key(&rq, GRID__OP__BATCH, cache, ops[0].key, ops[0].key_len);
  rq.batch = list;
  rq.n_batch = n;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc == 0) {
    if (r.rp->n_entries != n) {
      /* Written, but not what each op wrote: no version is made up. */
      client_set_error("the node's reply to a batch does not carry every op's version");
      rc = GRID_EUNKNOWN;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
      ops[i].version_out = r.rp->entries[i]->version;
      ops[i].existed = r.rp->entries[i]->found;
    }
    client_reply_free(&r);
  } else if (failed && (rc == GRID_EEXIST || rc == GRID_ENOTFOUND || rc == GRID_EVERSION ||
                        rc == GRID_EINVAL)) {
    *failed = client_last_error_number >= 0 && (size_t)client_last_error_number < n
                  ? (size_t)client_last_error_number : 0;
  }
  free(bo);
  free(list);
  return rc;
}

int grid_size(grid_t *g, const char *cache, uint64_t *size) {
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__SIZE, cache, NULL, 0);
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  *size = (uint64_t)r.rp->number;
  client_reply_free(&r);
  return 0;
}

int grid_cache_create(grid_t *g, const grid_cache_config_t *cfg) {
  if (!cfg || !cfg->name) return GRID_EINVAL;
  Grid__CacheConfig m = GRID__CACHE_CONFIG__INIT;
  m.name = (char *)cfg->name;
  m.partitions = cfg->partitions;
  m.backups = cfg->backups;
  m.mode = cfg->mode == GRID_MODE_REPLICATED ? GRID__CACHE_MODE__REPLICATED
                                             : GRID__CACHE_MODE__PARTITIONED;
  m.sync = cfg->sync == GRID_SYNC_PRIMARY ? GRID__SYNC_MODE__PRIMARY_SYNC
                                          : GRID__SYNC_MODE__FULL_SYNC;
  m.default_ttl_ms = cfg->default_ttl_ms;
  m.read_from_backup = cfg->read_from_backup > 0 ? 1 : cfg->read_from_backup < 0 ? -1 : 0;
  m.persistence = cfg->persistence != 0;
  m.fsync = cfg->fsync == GRID_FSYNC_NEVER      ? GRID__FSYNC_POLICY__FSYNC_NEVER
            : cfg->fsync == GRID_FSYNC_EVERY_MS ? GRID__FSYNC_POLICY__FSYNC_EVERY_MS
                                                : GRID__FSYNC_POLICY__FSYNC_ALWAYS;
  m.fsync_every_ms = cfg->fsync_every_ms;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__CREATE_CACHE;
  rq.cache_config = &m;
  return client_call_version(g, &rq, NULL);
}

int grid_cache_drop(grid_t *g, const char *name) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__DROP_CACHE;
  rq.cache = (char *)name;
  return client_call_version(g, &rq, NULL);
}

void grid_cache_list_free(grid_cache_config_t *caches, size_t n) {
  if (!caches) return;
  for (size_t i = 0; i < n; i++) free((char *)caches[i].name);
  free(caches);
}

int grid_cache_list(grid_t *g, grid_cache_config_t **caches, size_t *n) {
  *caches = NULL;
  *n = 0;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__LIST_CACHES;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  size_t m = r.rp->n_caches;
  grid_cache_config_t *list = calloc(m ? m : 1, sizeof *list);
  for (size_t i = 0; list && i < m; i++) {
    const Grid__CacheConfig *c = r.rp->caches[i];
    char *name = strdup(c->name ? c->name : "");
    if (!name) {
      grid_cache_list_free(list, i);
      list = NULL;
      break;
    }
    list[i] = (grid_cache_config_t){
        .name = name,
        .partitions = c->partitions,
        .backups = c->backups,
        .mode = c->mode == GRID__CACHE_MODE__REPLICATED ? GRID_MODE_REPLICATED
                                                        : GRID_MODE_PARTITIONED,
        .sync = c->sync == GRID__SYNC_MODE__PRIMARY_SYNC ? GRID_SYNC_PRIMARY
                                                         : GRID_SYNC_FULL,
        .default_ttl_ms = c->default_ttl_ms,
        .read_from_backup = c->read_from_backup,
        .persistence = c->persistence,
        .fsync = c->fsync == GRID__FSYNC_POLICY__FSYNC_NEVER      ? GRID_FSYNC_NEVER
                 : c->fsync == GRID__FSYNC_POLICY__FSYNC_EVERY_MS ? GRID_FSYNC_EVERY_MS
                                                                  : GRID_FSYNC_ALWAYS,
        .fsync_every_ms = c->fsync_every_ms,
    };
  }
  client_reply_free(&r);
  if (!list) return GRID_ENOMEM;
  *caches = list;
  *n = m;
  return 0;
}

int grid_stats(grid_t *g, grid_stats_t *out) {
  memset(out, 0, sizeof *out);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__STATS;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  const Grid__Stats *s = r.rp->stats;
  if (s) {
    snprintf(out->node_id, sizeof out->node_id, "%s", s->node_id ? s->node_id : "");
    out->entries = s->entries;
    out->memory_bytes = s->memory_bytes;
    out->memory_bytes_max = s->memory_bytes_max;
    out->ops = s->ops;
    out->connections = s->connections;
    out->caches = s->caches;
    out->uptime_ms = s->uptime_ms;
    out->loop_ops = s->loop_ops;
    out->local_reads = s->local_reads;
    out->fill_bytes_in = s->fill_bytes_in;
    out->fill_delta_parts = s->fill_delta_parts;
    out->disk_bytes_written = s->disk_bytes_written;
  } else {
    rc = GRID_EPROTO;
  }
  client_reply_free(&r);
  return rc;
}

int grid_key_owner(grid_t *g, const char *cache, const void *key, size_t key_len,
                   char *node_id, size_t node_id_len) {
  if (!cache) cache = "default";
  if (g->router && router_clustered(g->router))
    return router_owner_of(g->router, cache, key, key_len, g->timeout_ms, node_id, node_id_len);
  /* A single node: it leads every key of its caches. */
  uint64_t size;
  int rc = grid_size(g, cache, &size);
  grid_stats_t st;
  if (rc == 0) rc = grid_stats(g, &st);
  if (rc == 0) snprintf(node_id, node_id_len, "%s", st.node_id);
  return rc;
}

/* ---- cluster status -------------------------------------------------------- */

void grid_cluster_status_free(grid_cluster_status_t *st) {
  if (!st) return;
  free(st->nodes);
  free(st->caches);
  free(st->groups);
  free(st);
}

/* Counts, from the map, what each node leads and holds and the state of
 * each group's copies; each cache gets its group's counts. */
static void client_status_from_map(const Grid__Pmap *pm, grid_cluster_status_t *st) {
  for (size_t c = 0; c < pm->n_caches && c < st->ngroups; c++) {
    const Grid__PmapCache *pc = pm->caches[c];
    grid_cache_status_t *cs = &st->groups[c];
    snprintf(cs->name, sizeof cs->name, "%s", pc->name);
    snprintf(cs->group, sizeof cs->group, "%s", pc->name);
    cs->partitions = pc->partitions;
    uint32_t k = pc->copies;
    if (k == 0 || pc->owners.len != (size_t)pc->partitions * k || pc->states.len != pc->owners.len)
      continue;
    for (uint32_t p = 0; p < pc->partitions; p++) {
      for (uint32_t i = 0; i < k; i++) {
        size_t at = (size_t)p * k + i;
        uint8_t owner = pc->owners.data[at], state = pc->states.data[at];
        if (state == GRID__PART_STATE__PART_LOST) {
          cs->lost++;
          continue;
        }
        int leads = i == 0 && (state == GRID__PART_STATE__PART_OWNING ||
                               state == GRID__PART_STATE__PART_HANDOFF);
        if (state == GRID__PART_STATE__PART_OWNING || state == GRID__PART_STATE__PART_HANDOFF)
          cs->owning++;
        if (state == GRID__PART_STATE__PART_HANDOFF) cs->handoff++;
        if (state == GRID__PART_STATE__PART_MOVING) cs->moving++;
        if (leads && owner > 0 && owner <= pm->n_nodes && pm->nodes[owner - 1]->absent)
          cs->waiting++;
        if (owner == 0 || owner > st->nnodes || state == GRID__PART_STATE__PART_NONE) continue;
        if (leads) st->nodes[owner - 1].primaries++;
        else st->nodes[owner - 1].backups++;
      }
    }
  }
  for (size_t i = 0; i < pm->n_cache_groups && i < st->ncaches; i++) {
    const Grid__PmapCacheGroup *r = pm->cache_groups[i];
    grid_cache_status_t *cs = &st->caches[i];
    for (size_t g = 0; g < st->ngroups; g++) {
      if (!r->group || strcmp(st->groups[g].name, r->group) != 0) continue;
      *cs = st->groups[g];
      st->groups[g].caches++;
    }
    snprintf(cs->name, sizeof cs->name, "%s", r->cache ? r->cache : "");
    cs->caches = 1;
  }
}

int grid_cluster_status(grid_t *g, grid_cluster_status_t **out) {
  *out = NULL;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__PMAP;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  const Grid__Pmap *pm = r.rp->pmap;
  const Grid__ClusterStatus *cs = r.rp->cluster;
  size_t nmap = pm ? pm->n_nodes : 0, nalive = cs ? cs->n_alive : 0;
  grid_cluster_status_t *st = calloc(1, sizeof *st);
  if (st) {
    st->nodes = calloc(nmap + nalive + 1, sizeof *st->nodes);
    st->caches = calloc((pm ? pm->n_cache_groups : 0) + 1, sizeof *st->caches);
    st->groups = calloc((pm ? pm->n_caches : 0) + 1, sizeof *st->groups);
  }
  if (!st || !st->nodes || !st->caches || !st->groups) {
    grid_cluster_status_free(st);
    client_reply_free(&r);
    return GRID_ENOMEM;
  }
  if (cs) {
    snprintf(st->cluster, sizeof st->cluster, "%s", cs->cluster ? cs->cluster : "");
    snprintf(st->node_id, sizeof st->node_id, "%s", cs->node_id ? cs->node_id : "");
    st->zk_connected = cs->zk_connected;
    st->map_bytes = cs->map_bytes;
    st->map_znodes = cs->map_znodes;
    st->map_znode_bytes = cs->map_znode_bytes;
    st->map_znode_bytes_max = cs->map_znode_bytes_max;
    st->map_bytes_max = cs->map_bytes_max;
  }
  /* The map's nodes first (the counts refer to their positions), then any
   * live node the map does not have yet. */
  for (size_t i = 0; i < nmap; i++) {
    grid_node_status_t *ns = &st->nodes[st->nnodes++];
    snprintf(ns->id, sizeof ns->id, "%s", pm->nodes[i]->id);
    snprintf(ns->addr, sizeof ns->addr, "%s", pm->nodes[i]->addr);
    snprintf(ns->zone, sizeof ns->zone, "%s", pm->nodes[i]->zone);
    snprintf(ns->http_addr, sizeof ns->http_addr, "%s", pm->nodes[i]->http_addr);
    ns->in_map = true;
    ns->leaving = pm->nodes[i]->leaving;
  }
  for (size_t i = 0; i < nalive; i++) {
    size_t j = 0;
    while (j < st->nnodes && strcmp(st->nodes[j].id, cs->alive[i]->id) != 0) j++;
    if (j == st->nnodes) {
      grid_node_status_t *ns = &st->nodes[st->nnodes++];
      snprintf(ns->id, sizeof ns->id, "%s", cs->alive[i]->id);
      snprintf(ns->addr, sizeof ns->addr, "%s", cs->alive[i]->addr);
      snprintf(ns->zone, sizeof ns->zone, "%s", cs->alive[i]->zone);
      snprintf(ns->http_addr, sizeof ns->http_addr, "%s", cs->alive[i]->http_addr);
      ns->leaving = cs->alive[i]->leaving;
    }
    st->nodes[j].alive = true;
  }
  if (pm) {
    st->epoch = r.rp->epoch;
    snprintf(st->coordinator, sizeof st->coordinator, "%s", pm->coordinator ? pm->coordinator : "");
    st->ngroups = pm->n_caches;
    st->ncaches = pm->n_cache_groups;
    client_status_from_map(pm, st);
  }
  client_reply_free(&r);
  *out = st;
  return 0;
}

int grid_snapshot_create(grid_t *g, const char *name, uint64_t *nodes) {
  if (!name || !name[0]) return GRID_EINVAL;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__SNAPSHOT;
  rq.key.data = (uint8_t *)name;
  rq.key.len = strlen(name);
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  if (nodes) *nodes = (uint64_t)r.rp->number;
  client_reply_free(&r);
  return 0;
}

int grid_accept_loss(grid_t *g, const char *node_id) {
  if (!node_id || !node_id[0]) return GRID_EINVAL;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__ACCEPT_LOSS;
  rq.key.data = (uint8_t *)node_id;
  rq.key.len = strlen(node_id);
  return client_call_version(g, &rq, NULL);
}

/* ---- users ---------------------------------------------------------------- */

static int client_user(grid_t *g, Grid__UserAction action, const char *name, const char *password,
                       const char *const *roles, size_t n_roles, bool cert) {
  if (!name || !name[0] || (n_roles && !roles)) return GRID_EINVAL;
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__USER;
  rq.user_action = action;
  rq.key.data = (uint8_t *)name;
  rq.key.len = strlen(name);
  if (password) {
    rq.value.data = (uint8_t *)password;
    rq.value.len = strlen(password);
  }
  rq.roles = (char **)roles;
  rq.n_roles = n_roles;
  rq.user_cert = cert;
  return client_call_version(g, &rq, NULL);
}

int grid_user_add(grid_t *g, const char *name, const char *password, const char *const *roles,
                  size_t n_roles, bool cert) {
  return client_user(g, GRID__USER_ACTION__USER_ADD, name, password, roles, n_roles, cert);
}

int grid_user_del(grid_t *g, const char *name) {
  return client_user(g, GRID__USER_ACTION__USER_DEL, name, NULL, NULL, 0, false);
}

int grid_user_passwd(grid_t *g, const char *name, const char *password) {
  if (!password || !password[0]) return GRID_EINVAL;
  return client_user(g, GRID__USER_ACTION__USER_PASSWD, name, password, NULL, 0, false);
}

int grid_user_roles(grid_t *g, const char *name, const char *const *roles, size_t n_roles) {
  return client_user(g, GRID__USER_ACTION__USER_ROLES, name, NULL, roles, n_roles, false);
}

void grid_user_list_free(grid_user_t *users, size_t n) {
  for (size_t i = 0; users && i < n; i++) {
    free(users[i].name);
    for (size_t k = 0; k < users[i].n_roles; k++) free(users[i].roles[k]);
    free(users[i].roles);
  }
  free(users);
}

int grid_user_list(grid_t *g, grid_user_t **out, size_t *n) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__USER;
  rq.user_action = GRID__USER_ACTION__USER_LIST;
  client_reply_t r;
  int rc = client_call(g, &rq, &r);
  if (rc != 0) return rc;
  size_t k = r.rp->n_users;
  grid_user_t *us = calloc(k ? k : 1, sizeof *us);
  for (size_t i = 0; us && i < k; i++) {
    const Grid__User *u = r.rp->users[i];
    us[i].name = strdup(u->name ? u->name : "");
    us[i].cert = u->cert;
    us[i].password = u->iterations != 0;
    us[i].roles = calloc(u->n_roles ? u->n_roles : 1, sizeof *us[i].roles);
    if (!us[i].name || !us[i].roles) {
      grid_user_list_free(us, i + 1);
      us = NULL;
      break;
    }
    for (size_t j = 0; j < u->n_roles; j++) {
      us[i].roles[j] = strdup(u->roles[j]);
      us[i].n_roles = j + 1;
      if (!us[i].roles[j]) {
        grid_user_list_free(us, i + 1);
        us = NULL;
        break;
      }
    }
  }
  client_reply_free(&r);
  if (!us) return GRID_ENOMEM;
  *out = us;
  *n = k;
  return 0;
}

int grid_leave(grid_t *g) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__LEAVE;
  return client_call_version(g, &rq, NULL);
}

/* ---- asynchronous calls -------------------------------------------------- */

#define CLIENT_RETRY_SLEEP_MS_MAX 50 /* the retry thread looks up at least this often */
/* An attempt is sent again only with at least this long left after its
 * delay: one sent with a few milliseconds left would time out, and the
 * call end "outcome unknown" where the node had refused it unrun. */
#define CLIENT_RETRY_LAST_MS 50

struct client_async {
  grid_t *g;
  grid_get_cb get_cb;
  grid_write_cb write_cb;
  void *arg;
  int64_t deadline_ms;       /* retries stop here */
  int delay_ms;              /* before the next retry */
  int64_t due_ms;            /* on the retry list: when */
  int refused;               /* the last refusal (a retryable status) */
  struct client_async *next;
  size_t req_len;            /* the request, packed, for a retry (cluster) */
  unsigned char req[];
};


/* Turns a reply into the user's callback. */
static void client_async_run(const client_async_t *a, int status,
                             const Grid__Reply *rp) {
  if (status == 0) status = rp->status;
  if (a->get_cb) {
    grid_value_t v = {0};
    if (status == 0) {
      v.data = rp->value.data;
      v.len = rp->value.len;
      v.version = rp->version;
      v.found = true;
    }
    a->get_cb(status, status == 0 ? &v : NULL, a->arg);
  } else {
    a->write_cb(status, status == 0 ? rp->version : 0, a->arg);
  }
}

/* The end of an accepted async request, exactly once per accepted call:
 * its place under the handle's async_max is given back, then its callback
 * runs (so a callback may start the next call without meeting its own
 * place still taken), then a is freed. */
static void client_async_finish(client_async_t *a, int status, const Grid__Reply *rp) {
  grid_t *g = a->g;
  uint32_t was = atomic_fetch_sub(&g->async_n, 1);
  GRID_ASSERT(was > 0 && was <= g->async_max);
  client_async_run(a, status, rp);
  free(a);
}

static void client_async_done(void *arg, int status, const Grid__Reply *rp);

/* Sends a's request again (on the retry thread). */
static void client_retry_send(client_async_t *a) {
  grid_t *g = a->g;
  Grid__Request *rq = grid__request__unpack(NULL, a->req_len, a->req);
  int64_t left = a->deadline_ms - clock_mono_ms();
  /* Past the deadline before it could be sent again (the retry thread woke
   * late): the call ends as the node last answered it, refused unrun, not
   * as a timeout, which would say its outcome is unknown. */
  int rc = !rq ? GRID_ENOMEM : left <= 0 ? (a->refused ? a->refused : GRID_ETIMEDOUT) : 0;
  if (rc == 0) {
    remote_t *r = router_pick(g->router, rq, g->timeout_ms);
    rc = remote_call_async(r, rq, (uint32_t)left, client_async_done, a);
  }
  if (rq) grid__request__free_unpacked(rq, NULL);
  if (rc != 0) client_async_finish(a, rc, NULL);
}

static void *client_retry_main(void *arg) {
  struct client_retry *rt = arg;
  pthread_mutex_lock(&rt->lock);
  while (!rt->stop) {
    int64_t now = clock_mono_ms(), next = now + CLIENT_RETRY_SLEEP_MS_MAX;
    client_async_t *due = NULL, **l = &rt->head;
    while (*l) {
      if ((*l)->due_ms <= now) {
        client_async_t *a = *l;
        *l = a->next;
        a->next = due;
        due = a;
      } else {
        if ((*l)->due_ms < next) next = (*l)->due_ms;
        l = &(*l)->next;
      }
    }
    if (due) {
      pthread_mutex_unlock(&rt->lock);
      while (due) {
        client_async_t *a = due;
        due = a->next;
        client_retry_send(a);
      }
      pthread_mutex_lock(&rt->lock);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (next - now) * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&rt->cond, &rt->lock, &ts);
  }
  /* Closing: what waits fails now (callbacks run exactly once). */
  client_async_t *left = rt->head;
  rt->head = NULL;
  pthread_mutex_unlock(&rt->lock);
  while (left) {
    client_async_t *a = left;
    left = a->next;
    client_async_finish(a, GRID_ECONN, NULL);
  }
  return NULL;
}

/* Puts a on the retry list; 0, or an error when it cannot (closing). */
static int client_retry_later(client_async_t *a) {
  struct client_retry *rt = a->g->retry;
  pthread_mutex_lock(&rt->lock);
  int rc = 0;
  if (rt->stop) {
    rc = GRID_ECONN;
  } else if (!rt->started) {
    if (pthread_create(&rt->thread, NULL, client_retry_main, rt) == 0) rt->started = 1;
    else rc = GRID_ENOMEM;
  }
  if (rc == 0) {
    a->due_ms = clock_mono_ms() + a->delay_ms;
    if (a->delay_ms < CLIENT_RETRY_DELAY_MS_MAX) a->delay_ms *= 2;
    a->next = rt->head;
    rt->head = a;
    pthread_cond_signal(&rt->cond);
  }
  pthread_mutex_unlock(&rt->lock);
  return rc;
}

/* The remote transport's completion: a was malloc'd for this call. A
 * request the cluster refused unrun is sent again later, within the
 * call's deadline, as synchronous calls do. */
static void client_async_done(void *arg, int status, const Grid__Reply *rp) {
  client_async_t *a = arg;
  int st = status ? status : rp->status;
  int retryable = st == GRID_ENOTREADY || st == GRID_ESTALE || st == GRID_ECLUSTER ||
                  (status == GRID_ECONN && router_clustered(a->g->router));
  if (a->req_len && retryable && router_clustered(a->g->router) &&
      clock_mono_ms() + a->delay_ms + CLIENT_RETRY_LAST_MS < a->deadline_ms) {
    a->refused = st;
    router_mark_stale(a->g->router);
    if (client_retry_later(a) == 0) return;
  }
  if (a->g->near && a->req_len) {
    /* A write's keys go again once it is answered: a get sent while it was
     * in flight may have kept the value it replaced. */
    Grid__Request *rq = grid__request__unpack(NULL, a->req_len, a->req);
    if (rq) {
      client_near_forget(a->g, rq);
      grid__request__free_unpacked(rq, NULL);
    }
  }
  client_async_finish(a, status, rp);
}

/* Takes a place under g's async_max for a call about to be accepted, or
 * GRID_EBUSY when all are taken. A compare-and-swap rather than an add
 * undone on failure: a failed add would briefly count a call that never
 * ran, and refuse another caller a place that was free. */
static int client_async_admit(grid_t *g) {
  uint32_t n = atomic_load(&g->async_n);
  do {
    if (n >= g->async_max) return GRID_EBUSY;
  } while (!atomic_compare_exchange_weak(&g->async_n, &n, n + 1));
  return 0;
}

/* Gives back the place of a call that returns an error (no callback). */
static void client_async_give_back(grid_t *g) {
  uint32_t was = atomic_fetch_sub(&g->async_n, 1);
  GRID_ASSERT(was > 0);
}

static int client_call_async(grid_t *g, Grid__Request *rq, grid_get_cb get_cb,
                             grid_write_cb write_cb, void *arg) {
  client_near_forget(g, rq);
  if (!g->router) {
    /* Embedded (not in a cluster): the work is done here and now, so the
     * callback runs on the calling thread before the call returns; nothing
     * waits, so nothing needs async_max. */
    client_reply_t r;
    memset(&r, 0, sizeof r);
    arena_init(&r.arena, CLIENT_ARENA_BYTES);
    grid__reply__init(&r.local);
    embedded_call(g->embedded, rq, &r.local, &r.arena);
    client_async_t a = {.get_cb = get_cb, .write_cb = write_cb, .arg = arg};
    client_async_run(&a, 0, &r.local);
    arena_close(&r.arena);
    return 0;
  }
  /* Bounded before anything is allocated: a request accepted here stays
   * until its callback has run, in flight or on the retry list. */
  int rc = client_async_admit(g);
  if (rc != 0) return rc;
  /* In a cluster the request is kept, packed, for a retry (and, with a
   * near cache, a write's keys to forget once it is answered). */
  size_t len = router_clustered(g->router) || (g->near && op_is_write(rq->op))
                   ? grid__request__get_packed_size(rq)
                   : 0;
  client_async_t *a = malloc(sizeof *a + len);
  if (!a) {
    client_async_give_back(g);
    return GRID_ENOMEM;
  }
  *a = (client_async_t){.g = g, .get_cb = get_cb, .write_cb = write_cb, .arg = arg,
                        .deadline_ms = clock_mono_ms() + g->timeout_ms, .delay_ms = 2,
                        .req_len = len};
  if (len) grid__request__pack(rq, a->req);
  remote_t *r = router_pick(g->router, rq, g->timeout_ms);
  rc = remote_call_async(r, rq, g->timeout_ms, client_async_done, a);
  if (rc != 0) {
    free(a);
    client_async_give_back(g);
  }
  return rc;
}

int grid_get_async(grid_t *g, const char *cache, const void *key,
                   size_t key_len, grid_get_cb cb, void *arg) {
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__GET, cache, key, key_len);
  return client_call_async(g, &rq, cb, NULL, arg);
}

int grid_put_async(grid_t *g, const char *cache, const void *key,
                   size_t key_len, const void *value, size_t value_len,
                   uint64_t ttl_ms, grid_write_cb cb, void *arg) {
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__PUT, cache, key, key_len);
  rq.value.data = (uint8_t *)value;
  rq.value.len = value_len;
  rq.ttl_ms = ttl_ms;
  return client_call_async(g, &rq, NULL, cb, arg);
}

int grid_delete_async(grid_t *g, const char *cache, const void *key,
                      size_t key_len, grid_write_cb cb, void *arg) {
  Grid__Request rq;
  client_request_key(&rq, GRID__OP__DELETE, cache, key, key_len);
  return client_call_async(g, &rq, NULL, cb, arg);
}
