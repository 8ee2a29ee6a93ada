/*
 * router: a remote handle's view of the cluster. It keeps one connection
 * per node it has talked to, the partition map fetched from the cluster
 * (PMAP), and sends each keyed request straight to its partition's primary
 * in one hop, stamped with the map's epoch. A node answers with its own
 * epoch; a newer one, a refusal that asks for a retry (GRID_ESTALE,
 * GRID_ENOTREADY) or a connection that cannot be made marks the map stale,
 * and the next call fetches it again. Requests without a key, and every
 * request while no map is known (a single node), go to the seed connection,
 * which any node serves.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "clock.h"
#include "part.h"
#include "pmap.h"
#include "tls.h"

#define ROUTER_SEEDS_MAX 32
#define ROUTER_CONNECT_MS 1000 /* handshake with a node the map names */

typedef struct router_conn {
  char addr[PMAP_ADDR_MAX];
  remote_t *r;
} router_conn_t;

struct router {
  pthread_mutex_t lock;        /* map, conns, stale */
  grid_options_t opts;
  struct tls_ctx *tls;         /* grids://; NULL: plain */
  char client_name[64];
  char user[256], password[256];
  size_t nseeds;
  char seeds[ROUTER_SEEDS_MAX][PMAP_ADDR_MAX];
  remote_t *any;               /* the seed connection */
  pmap_t map;                  /* epoch 0: none (a single node) */
  /* Read and set without the lock: callbacks of replies set them, and a
   * refresh holds the lock while it waits for a reply that a callback's
   * thread may be the one to read. */
  _Atomic int stale;
  _Atomic uint64_t epoch;      /* map.epoch */
  size_t nconns;
  router_conn_t conns[PMAP_NODES_MAX];
};

/* Splits "host:port" (host may be [v6]). */
int router_split(const char *addr, char *host, size_t host_len, int *port) {
  const char *colon;
  if (*addr == '[') {
    const char *end = strchr(addr, ']');
    if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= host_len) return GRID_EADDR;
    memcpy(host, addr + 1, (size_t)(end - addr - 1));
    host[end - addr - 1] = '\0';
    colon = end + 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= host_len) return GRID_EADDR;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
  }
  char *end;
  long n = strtol(colon + 1, &end, 10);
  if (*end != '\0' || n <= 0 || n > 65535) return GRID_EADDR;
  *port = (int)n;
  return 0;
}

/* A connection to addr whose handshake completes within timeout_ms. */
static int router_connect_within(router_t *rt, const char *addr, uint32_t timeout_ms,
                                 remote_t **out) {
  char host[PMAP_ADDR_MAX];
  int port;
  int rc = router_split(addr, host, sizeof host, &port);
  grid_options_t o = rt->opts;
  o.timeout_ms = timeout_ms;
  if (rc == 0) rc = remote_open(host, port, &o, rt->tls, out);
  return rc;
}

static int router_connect(router_t *rt, const char *addr, remote_t **out) {
  /* A node that does not complete a handshake within ROUTER_CONNECT_MS is
   * taken as unreachable for now (the seed connection forwards): a node
   * stopping may still accept connections it will never serve, and
   * waiting a whole call's timeout on it would hold every caller up. */
  uint32_t t = rt->opts.timeout_ms;
  return router_connect_within(rt, addr, !t || t > ROUTER_CONNECT_MS ? ROUTER_CONNECT_MS : t,
                               out);
}

/* Where a node of the map is reached: its TLS port's address over TLS. */
static const char *router_node_addr(const router_t *rt, size_t i) {
  return rt->tls ? rt->map.nodes[i].tls_addr : rt->map.nodes[i].addr;
}

void router_link_opts(router_t *rt, grid_options_t *opts, struct tls_ctx **tls) {
  *opts = rt->opts;
  *tls = rt->tls;
}

/* The connection to addr, made on first use (lock held). */
static remote_t *router_conn(router_t *rt, const char *addr) {
  for (size_t i = 0; i < rt->nconns; i++)
    if (strcmp(rt->conns[i].addr, addr) == 0) return rt->conns[i].r;
  if (rt->nconns == PMAP_NODES_MAX) return NULL;
  remote_t *r;
  if (router_connect(rt, addr, &r) != 0) return NULL;
  router_conn_t *c = &rt->conns[rt->nconns++];
  size_t n = strnlen(addr, sizeof c->addr - 1);
  memmove(c->addr, addr, n); /* addr may be the map's, inside *rt */
  c->addr[n] = '\0';
  c->r = r;
  return r;
}

/* The seed connection failed: another node of the map, or another seed,
 * takes its place (lock held). */
static void router_replace_any(router_t *rt) {
  for (size_t i = 0; i < rt->map.nnodes; i++) {
    if (!router_node_addr(rt, i)[0]) continue;
    remote_t *r = router_conn(rt, router_node_addr(rt, i));
    if (r && r != rt->any) {
      /* It is in conns already; any is a connection of its own. */
      remote_t *fresh;
      if (router_connect(rt, router_node_addr(rt, i), &fresh) == 0) {
        remote_close(rt->any);
        rt->any = fresh;
        return;
      }
    }
  }
  for (size_t i = 0; i < rt->nseeds; i++) {
    remote_t *fresh;
    if (router_connect(rt, rt->seeds[i], &fresh) == 0) {
      remote_close(rt->any);
      rt->any = fresh;
      return;
    }
  }
}

/* Fetches the map from the seed connection (lock held). */
static void router_refresh_locked(router_t *rt, uint32_t timeout_ms) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__PMAP;
  client_reply_t r;
  memset(&r, 0, sizeof r);
  int rc = remote_call(rt->any, &rq, timeout_ms, &r);
  if (rc == GRID_ECONN && rt->map.epoch) {
    router_replace_any(rt);
    rc = remote_call(rt->any, &rq, timeout_ms, &r);
  }
  if (rc != 0) return; /* stays stale */
  atomic_store(&rt->stale, 0);
  if (r.rp->status == 0 && r.rp->pmap) {
    size_t len = grid__pmap__get_packed_size(r.rp->pmap);
    unsigned char *buf = malloc(len + 1);
    pmap_t m;
    if (buf) {
      grid__pmap__pack(r.rp->pmap, buf);
      if (pmap_decode(buf, len, &m) == 0) {
        m.epoch = r.rp->epoch;
        pmap_free(&rt->map);
        rt->map = m;
        atomic_store(&rt->epoch, m.epoch);
      }
      free(buf);
    }
  }
  client_reply_free(&r);
}

int router_open(const char *list, const grid_options_t *opts, int tls, router_t **out) {
  router_t *rt = calloc(1, sizeof *rt);
  if (!rt) return GRID_ENOMEM;
  pthread_mutex_init(&rt->lock, NULL);
  pmap_init(&rt->map);
  if (opts) rt->opts = *opts;
  snprintf(rt->client_name, sizeof rt->client_name, "%s",
           opts && opts->client_name ? opts->client_name : "");
  rt->opts.client_name = rt->client_name;
  rt->opts.config_path = rt->opts.config_text = NULL;
  /* The caller's strings are not kept: what reconnecting needs is copied,
   * the TLS files are read once, here. */
  if ((opts && opts->user && strlen(opts->user) >= sizeof rt->user) ||
      (opts && opts->password && strlen(opts->password) >= sizeof rt->password)) {
    client_set_error("user and password: at most 255 bytes each");
    router_close(rt);
    return GRID_EINVAL;
  }
  snprintf(rt->user, sizeof rt->user, "%s", opts && opts->user ? opts->user : "");
  snprintf(rt->password, sizeof rt->password, "%s",
           opts && opts->password ? opts->password : "");
  rt->opts.user = opts && opts->user ? rt->user : NULL;
  rt->opts.password = opts && opts->password ? rt->password : NULL;
  rt->opts.tls_ca_file = rt->opts.tls_cert_file = rt->opts.tls_key_file = NULL;
  rt->opts.near_caches = NULL;
  if (tls) {
    int rc = client_tls_ctx(opts, &rt->tls);
    if (rc != 0) {
      router_close(rt);
      return rc;
    }
  }
  const char *p = list;
  while (*p && rt->nseeds < ROUTER_SEEDS_MAX) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    if (n == 0 || n >= PMAP_ADDR_MAX) {
      router_close(rt);
      return GRID_EADDR;
    }
    memcpy(rt->seeds[rt->nseeds], p, n);
    rt->seeds[rt->nseeds++][n] = '\0';
    p += n + (comma ? 1 : 0);
  }
  if (rt->nseeds == 0 || *p) {
    router_close(rt);
    return GRID_EADDR;
  }
  /* The seeds the caller named share the open's whole timeout, each its
   * share of what is left and at least ROUTER_CONNECT_MS (not just that: a
   * busy node's handshake may take longer, and failing the open for it
   * was found flaky under TSan in CI). */
  int rc = GRID_ECONN;
  uint32_t timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : 5000;
  int64_t deadline = clock_mono_ms() + timeout_ms;
  for (size_t i = 0; i < rt->nseeds && !rt->any; i++) {
    char host[PMAP_ADDR_MAX];
    int port;
    if (router_split(rt->seeds[i], host, sizeof host, &port) != 0) {
      rc = GRID_EADDR;
      break;
    }
    int64_t left = deadline - clock_mono_ms();
    if (left <= 0) {
      rc = GRID_ETIMEDOUT;
      break;
    }
    int64_t share = left / (int64_t)(rt->nseeds - i);
    if (share < ROUTER_CONNECT_MS) share = left < ROUTER_CONNECT_MS ? left : ROUTER_CONNECT_MS;
    rc = router_connect_within(rt, rt->seeds[i], (uint32_t)share, &rt->any);
  }
  if (!rt->any) {
    router_close(rt);
    return rc;
  }
  router_refresh_locked(rt, opts && opts->timeout_ms ? opts->timeout_ms : 5000);
  *out = rt;
  return 0;
}

void router_close(router_t *rt) {
  if (!rt) return;
  for (size_t i = 0; i < rt->nconns; i++) remote_close(rt->conns[i].r);
  if (rt->any) remote_close(rt->any);
  pmap_free(&rt->map);
  pthread_mutex_destroy(&rt->lock);
  tls_ctx_free(rt->tls);
  free(rt);
}

remote_t *router_pick(router_t *rt, Grid__Request *rq, uint32_t timeout_ms) {
  pthread_mutex_lock(&rt->lock);
  if (atomic_load(&rt->stale)) router_refresh_locked(rt, timeout_ms);
  remote_t *r = rt->any;
  int batch = op_has(rq->op, OP_BATCH) && rq->n_keys > 0;
  const pmap_group_t *pc = rt->map.epoch && (op_has(rq->op, OP_KEYED) || batch)
                               ? pmap_find_cache(&rt->map, rq->cache)
                               : NULL;
  if (pc) {
    /* A batch goes by its first key: the client splits batches so that
     * one primary leads all their keys (else the node splits them). */
    const ProtobufCBinaryData *key = batch ? &rq->keys[0] : &rq->key;
    uint32_t p = op_has(rq->op, OP_PARTITION) ? rq->partition
                                          : part_of(key->data, key->len, pc->partitions);
    int prim = p < pc->partitions ? pmap_primary(pc, p) : -1;
    if (prim >= 0) {
      remote_t *direct = router_node_addr(rt, (size_t)prim)[0]
                             ? router_conn(rt, router_node_addr(rt, (size_t)prim))
                             : NULL;
      if (direct) {
        r = direct;
        rq->epoch = rt->map.epoch;
      } else {
        atomic_store(&rt->stale, 1); /* gone, or moved: the seed forwards */
      }
    }
  }
  pthread_mutex_unlock(&rt->lock);
  return r;
}

int router_primary_of(router_t *rt, const char *cache, const void *key, size_t len) {
  pthread_mutex_lock(&rt->lock);
  const pmap_group_t *pc = rt->map.epoch ? pmap_find_cache(&rt->map, cache) : NULL;
  int prim = pc ? pmap_primary(pc, part_of(key, len, pc->partitions)) : -1;
  pthread_mutex_unlock(&rt->lock);
  return prim;
}

int router_owner_of(router_t *rt, const char *cache, const void *key, size_t len,
                    uint32_t timeout_ms, char *node_id, size_t node_id_len) {
  pthread_mutex_lock(&rt->lock);
  if (atomic_load(&rt->stale)) router_refresh_locked(rt, timeout_ms);
  int rc = GRID_ENOCACHE;
  const pmap_group_t *pc = rt->map.epoch ? pmap_find_cache(&rt->map, cache) : NULL;
  if (pc) {
    int prim = pmap_primary(pc, part_of(key, len, pc->partitions));
    rc = prim >= 0 && (size_t)prim < rt->map.nnodes ? 0 : GRID_ENOTREADY;
    if (rc == 0) snprintf(node_id, node_id_len, "%s", rt->map.nodes[prim].id);
  }
  pthread_mutex_unlock(&rt->lock);
  return rc;
}

void router_saw_epoch(router_t *rt, uint64_t epoch) {
  if (epoch > atomic_load(&rt->epoch)) atomic_store(&rt->stale, 1);
}

void router_mark_stale(router_t *rt) { atomic_store(&rt->stale, 1); }

int router_clustered(router_t *rt) { return atomic_load(&rt->epoch) != 0; }

uint32_t grid_partition_of(const void *key, size_t key_len, uint32_t partitions) {
  return partitions ? part_of(key, key_len, partitions) : 0;
}

int router_place(router_t *rt, const char *cache, int refresh, uint32_t timeout_ms,
                 router_place_t *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&rt->lock);
  if (refresh || atomic_load(&rt->stale)) router_refresh_locked(rt, timeout_ms);
  int rc = 0;
  out->epoch = rt->map.epoch;
  if (!rt->map.epoch) {
    out->addrs = calloc(1, sizeof *out->addrs);
    if (out->addrs) {
      remote_addr(rt->any, out->addrs[0], sizeof out->addrs[0]);
      out->naddrs = 1;
    } else {
      rc = GRID_ENOMEM;
    }
    pthread_mutex_unlock(&rt->lock);
    return rc;
  }
  const pmap_group_t *g = pmap_find_cache(&rt->map, cache);
  if (!g && !refresh) {
    /* Made since this map was fetched, perhaps. */
    router_refresh_locked(rt, timeout_ms);
    out->epoch = rt->map.epoch;
    g = rt->map.epoch ? pmap_find_cache(&rt->map, cache) : NULL;
  }
  if (!g) {
    pthread_mutex_unlock(&rt->lock);
    return GRID_ENOCACHE;
  }
  out->partitions = g->partitions;
  out->primary = calloc(g->partitions, sizeof *out->primary);
  out->addrs = calloc(rt->map.nnodes ? rt->map.nnodes : 1, sizeof *out->addrs);
  if (!out->primary || !out->addrs) {
    pthread_mutex_unlock(&rt->lock);
    router_place_free(out);
    return GRID_ENOMEM;
  }
  out->naddrs = rt->map.nnodes;
  _Static_assert(sizeof out->addrs[0] >= PMAP_ADDR_MAX, "an address fits");
  for (size_t i = 0; i < rt->map.nnodes; i++)
    snprintf(out->addrs[i], sizeof out->addrs[i], "%s", router_node_addr(rt, i));
  for (uint32_t p = 0; p < g->partitions; p++) out->primary[p] = pmap_primary(g, p);
  pthread_mutex_unlock(&rt->lock);
  return 0;
}

void router_place_free(router_place_t *p) {
  free(p->primary);
  free(p->addrs);
  memset(p, 0, sizeof *p);
}
