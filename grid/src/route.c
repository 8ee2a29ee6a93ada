#include "route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "cluster.h"
#include "grid.h"
#include "log.h"
#include "net_int.h"
#include "node.h"
#include "ops.h"
#include "part.h"
#include "peer.h"
#include "pmap.h"

static void route_reply_error(conn_t *c, uint64_t id, int status, const char *detail) {
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = id;
  rp.epoch = c->lp->pmap ? c->lp->pmap->epoch : 0;
  ops_reply_error(&rp, status, detail, &c->lp->arena);
  conn_reply(c, &rp);
}

/* ---- one request to one node ------------------------------------------- */

typedef struct route_fwd {
  conn_t *c;
  uint64_t id;   /* the client's request id */
} route_fwd_t;

static void route_fwd_done(void *arg, int status, const Grid__Reply *rp) {
  route_fwd_t *f = arg;
  if (status != 0) {
    route_reply_error(f->c, f->id, status, "forwarding to the partition's primary");
  } else {
    Grid__Reply r = *rp;
    r.id = f->id;
    conn_reply(f->c, &r);
  }
  conn_unref(f->c);
  free(f);
}

/* Sends rq to node `idx` of the loop's map; the reply goes to c. */
static void route_forward(conn_t *c, Grid__Request *rq, int idx) {
  net_loop_t *lp = c->lp;
  const pmap_node_t *nd = &lp->pmap->nodes[idx];
  uint64_t id = rq->id;
  peer_t *p = peer_get(lp, nd->id, nd->addr);
  route_fwd_t *f = malloc(sizeof *f);
  if (!p || !f) {
    free(f);
    route_reply_error(c, id, GRID_ECONN, "no link to the partition's primary");
    return;
  }
  f->c = c;
  f->id = id;
  rq->hops = 1;
  conn_ref(c);
  int rc = peer_call(p, rq, lp->net->node->cfg.forward_timeout_ms, route_fwd_done, f);
  if (rc != 0) {
    conn_unref(c);
    free(f);
    route_reply_error(c, id, rc, "forwarding to the partition's primary");
  }
}

/* ---- batches ------------------------------------------------------------ */

/* A batch split by primary: one part per node, merged when all are in. */
typedef struct route_batch {
  conn_t *c;
  uint64_t id;
  Grid__Op op;
  size_t nkeys;
  int pending;             /* parts not answered yet */
  int status;              /* first error of any part */
  char *message;           /* its words */
  int64_t number;          /* PUT_ALL / DELETE_ALL / SIZE: the sum */
  Grid__Entry **entries;   /* GET_ALL: in the request's key order */
  arena_t arena;           /* entries and words live here */
} route_batch_t;

typedef struct route_part {
  route_batch_t *b;
  size_t n;
  size_t *index;           /* request position of each key of the part */
} route_part_t;

static void route_batch_finish(route_batch_t *b) {
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = b->id;
  rp.status = b->status;
  rp.message = b->message;
  rp.number = b->number;
  if (b->status == 0 && b->op == GRID__OP__GET_ALL) {
    rp.entries = b->entries;
    rp.n_entries = b->nkeys;
  }
  conn_reply(b->c, &rp);
  conn_unref(b->c);
  arena_close(&b->arena);
  free(b);
}

/* Takes one part's reply into the batch (rp NULL: transport status). */
static void route_batch_take(route_batch_t *b, route_part_t *part, int status,
                             const Grid__Reply *rp) {
  if (status == 0) status = rp->status;
  if (status != 0 && b->status == 0) {
    b->status = status;
    const char *m = rp && rp->message ? rp->message : grid_strerror(status);
    b->message = arena_dup(&b->arena, m, strlen(m) + 1);
  }
  if (status == 0) {
    b->number += rp->number;
    if (b->op == GRID__OP__GET_ALL && rp->n_entries == part->n) {
      for (size_t i = 0; i < part->n; i++) {
        const Grid__Entry *src = rp->entries[i];
        Grid__Entry *e = arena_alloc(&b->arena, sizeof *e);
        if (!e) {
          b->status = GRID_ENOMEM;
          break;
        }
        grid__entry__init(e);
        e->found = src->found;
        e->version = src->version;
        e->key.len = src->key.len;
        e->key.data = arena_dup(&b->arena, src->key.data, src->key.len);
        e->value.len = src->value.len;
        e->value.data = arena_dup(&b->arena, src->value.data, src->value.len);
        b->entries[part->index[i]] = e;
      }
    } else if (b->op == GRID__OP__GET_ALL && b->status == 0) {
      b->status = GRID_EPROTO;
    }
  }
  free(part->index);
  free(part);
  if (--b->pending == 0) route_batch_finish(b);
}

static void route_part_done(void *arg, int status, const Grid__Reply *rp) {
  route_part_t *part = arg;
  route_batch_take(part->b, part, status, rp);
}

/* Runs a batch across the nodes that lead its keys. */
static void route_batch(conn_t *c, Grid__Request *rq, const pmap_cache_t *pc) {
  net_loop_t *lp = c->lp;
  const pmap_t *m = lp->pmap;
  size_t n = rq->n_keys;
  if (rq->op == GRID__OP__PUT_ALL && rq->n_values != n) {
    route_reply_error(c, rq->id, GRID_EINVAL, "put_all needs as many values as keys");
    return;
  }
  if ((int64_t)n > lp->net->node->cfg.batch_keys_max) {
    route_reply_error(c, rq->id, GRID_EBATCHTOOBIG, NULL);
    return;
  }
  int *owner = malloc((n ? n : 1) * sizeof *owner);
  route_batch_t *b = calloc(1, sizeof *b);
  if (!owner || !b) {
    free(owner);
    free(b);
    route_reply_error(c, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t p = part_of(rq->keys[i].data, rq->keys[i].len, pc->partitions);
    owner[i] = pmap_primary(pc, p);
    if (owner[i] < 0) {
      free(owner);
      free(b);
      route_reply_error(c, rq->id, GRID_ELOST, NULL);
      return;
    }
  }
  arena_init(&b->arena, 4096);
  b->c = c;
  b->id = rq->id;
  b->op = rq->op;
  b->nkeys = n;
  b->pending = 1; /* held until every part is sent */
  b->entries = arena_alloc(&b->arena, (n ? n : 1) * sizeof *b->entries);
  conn_ref(c);
  ProtobufCBinaryData *keys = malloc((n ? n : 1) * sizeof *keys);
  ProtobufCBinaryData *vals = malloc((n ? n : 1) * sizeof *vals);
  for (size_t node = 0; node < m->nnodes && keys && vals && b->entries; node++) {
    route_part_t *part = calloc(1, sizeof *part);
    if (part) part->index = malloc((n ? n : 1) * sizeof *part->index);
    if (!part || !part->index) {
      if (part) free(part);
      b->status = GRID_ENOMEM;
      break;
    }
    part->b = b;
    for (size_t i = 0; i < n; i++) {
      if (owner[i] != (int)node) continue;
      keys[part->n] = rq->keys[i];
      if (rq->op == GRID__OP__PUT_ALL) vals[part->n] = rq->values[i];
      part->index[part->n++] = i;
    }
    if (part->n == 0) {
      free(part->index);
      free(part);
      continue;
    }
    Grid__Request sub = *rq;
    sub.keys = keys;
    sub.n_keys = part->n;
    sub.values = rq->op == GRID__OP__PUT_ALL ? vals : NULL;
    sub.n_values = rq->op == GRID__OP__PUT_ALL ? part->n : 0;
    b->pending++;
    if ((int)node == lp->self) {
      /* This node's share runs here and now. */
      arena_t a;
      arena_init(&a, 4096);
      Grid__Reply rp = GRID__REPLY__INIT;
      ops_execute(lp->net->node, &lp->view, &sub, &rp, &a);
      route_batch_take(b, part, 0, &rp);
      arena_close(&a);
    } else {
      const pmap_node_t *nd = &m->nodes[node];
      peer_t *p = peer_get(lp, nd->id, nd->addr);
      sub.hops = 1;
      int rc = p ? peer_call(p, &sub, lp->net->node->cfg.forward_timeout_ms,
                             route_part_done, part)
                 : GRID_ECONN;
      if (rc != 0) route_batch_take(b, part, rc, NULL);
    }
  }
  if ((!keys || !vals || !b->entries) && b->status == 0) b->status = GRID_ENOMEM;
  free(keys);
  free(vals);
  free(owner);
  if (b->status == 0 && b->op == GRID__OP__GET_ALL) {
    /* Every key has its entry unless a part failed. */
    for (size_t i = 0; i < n && b->pending == 1; i++)
      if (!b->entries[i]) b->status = GRID_EINTERNAL;
  }
  if (--b->pending == 0) route_batch_finish(b);
}

/* SIZE: every node counts the partitions it leads. */
static void route_size(conn_t *c, Grid__Request *rq, const pmap_cache_t *pc) {
  net_loop_t *lp = c->lp;
  const pmap_t *m = lp->pmap;
  if (rq->local) {
    store_cache_t *sc = store_view_find(&lp->view, rq->cache, strlen(rq->cache));
    int64_t total = 0;
    for (uint32_t p = 0; sc && p < pc->partitions; p++)
      if (pmap_primary(pc, p) == lp->self) total += (int64_t)store_part_size(sc, p);
    Grid__Reply rp = GRID__REPLY__INIT;
    rp.id = rq->id;
    rp.number = total;
    if (!sc) ops_reply_error(&rp, GRID_ENOTREADY, "cache not here yet", &lp->arena);
    conn_reply(c, &rp);
    return;
  }
  route_batch_t *b = calloc(1, sizeof *b);
  if (!b) {
    route_reply_error(c, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  arena_init(&b->arena, 1024);
  b->c = c;
  b->id = rq->id;
  b->op = GRID__OP__SIZE;
  b->pending = 1;
  conn_ref(c);
  for (size_t node = 0; node < m->nnodes; node++) {
    route_part_t *part = calloc(1, sizeof *part);
    if (!part) {
      b->status = GRID_ENOMEM;
      break;
    }
    part->b = b;
    Grid__Request sub = *rq;
    sub.local = 1;
    sub.hops = 1;
    b->pending++;
    const pmap_node_t *nd = &m->nodes[node];
    peer_t *p = (int)node == lp->self ? NULL : peer_get(lp, nd->id, nd->addr);
    if ((int)node == lp->self) {
      store_cache_t *sc = store_view_find(&lp->view, rq->cache, strlen(rq->cache));
      Grid__Reply rp = GRID__REPLY__INIT;
      for (uint32_t q = 0; sc && q < pc->partitions; q++)
        if (pmap_primary(pc, q) == lp->self) rp.number += (int64_t)store_part_size(sc, q);
      route_batch_take(b, part, sc ? 0 : GRID_ENOTREADY, sc ? &rp : NULL);
    } else {
      int rc = p ? peer_call(p, &sub, lp->net->node->cfg.forward_timeout_ms,
                             route_part_done, part)
                 : GRID_ECONN;
      if (rc != 0) route_batch_take(b, part, rc, NULL);
    }
  }
  if (--b->pending == 0) route_batch_finish(b);
}

/* ---- caches and status --------------------------------------------------- */

typedef struct route_cache_job {
  conn_t *c;
  uint64_t id;
} route_cache_job_t;

static void route_cache_done(net_loop_t *lp, void *arg, int status) {
  (void)lp;
  route_cache_job_t *j = arg;
  if (status != 0) {
    route_reply_error(j->c, j->id, status, NULL);
  } else {
    Grid__Reply rp = GRID__REPLY__INIT;
    rp.id = j->id;
    conn_reply(j->c, &rp);
  }
  conn_unref(j->c);
  free(j);
}

static void route_cache_op(conn_t *c, Grid__Request *rq) {
  net_loop_t *lp = c->lp;
  node_t *n = lp->net->node;
  route_cache_job_t *j = malloc(sizeof *j);
  if (!j) {
    route_reply_error(c, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  j->c = c;
  j->id = rq->id;
  int rc;
  if (rq->op == GRID__OP__CREATE_CACHE) {
    const Grid__CacheConfig *m = rq->cache_config;
    store_cache_cfg_t cfg = {0};
    if (!m || !m->name || strlen(m->name) == 0 || strlen(m->name) > STORE_CACHE_NAME_MAX) {
      free(j);
      route_reply_error(c, rq->id, GRID_EINVAL, "a cache name of 1 to 64 characters is needed");
      return;
    }
    snprintf(cfg.name, sizeof cfg.name, "%s", m->name);
    cfg.partitions = m->partitions;
    cfg.backups = m->backups;
    cfg.mode = m->mode == GRID__CACHE_MODE__REPLICATED ? GRID_MODE_REPLICATED : GRID_MODE_PARTITIONED;
    cfg.sync = m->sync == GRID__SYNC_MODE__PRIMARY_SYNC ? GRID_SYNC_PRIMARY : GRID_SYNC_FULL;
    cfg.default_ttl_ms = m->default_ttl_ms;
    /* Checked here, as a single node would, before anything is written. */
    const char *name = cfg.name;
    int ok = cfg.backups <= 3 && (int64_t)cfg.partitions <= n->cfg.partitions_max;
    for (const char *s = name; *s && ok; s++)
      ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
           (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.';
    if (!ok) {
      free(j);
      route_reply_error(c, rq->id, GRID_EINVAL,
                        "name must be 1-64 of [A-Za-z0-9_.-], backups 0..3, partitions at most partitions_max");
      return;
    }
    rc = cluster_cache_create(n->cluster, &cfg, lp->index, route_cache_done, j);
  } else {
    rc = cluster_cache_drop(n->cluster, rq->cache ? rq->cache : "", lp->index,
                            route_cache_done, j);
  }
  if (rc != 0) {
    free(j);
    route_reply_error(c, rq->id, rc, NULL);
    return;
  }
  conn_ref(c);
}

/* PMAP: the map this node acts on, and what it knows of the cluster. */
static void route_pmap(conn_t *c, Grid__Request *rq) {
  net_loop_t *lp = c->lp;
  node_t *n = lp->net->node;
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = rq->id;
  Grid__ClusterStatus st = GRID__CLUSTER_STATUS__INIT;
  cluster_status(n->cluster, &st);
  rp.cluster = &st;
  Grid__Pmap *pm = NULL;
  if (lp->pmap) {
    unsigned char *buf;
    size_t len;
    if (pmap_encode(lp->pmap, &buf, &len) == 0) {
      pm = grid__pmap__unpack(NULL, len, buf);
      free(buf);
    }
    rp.epoch = lp->pmap->epoch;
    if (pm) pm->epoch = lp->pmap->epoch;
  }
  rp.pmap = pm;
  conn_reply(c, &rp);
  if (pm) grid__pmap__free_unpacked(pm, NULL);
  cluster_status_free(&st);
}

/* ---- the entry point ---------------------------------------------------- */

int route_request(conn_t *c, Grid__Request *rq) {
  net_loop_t *lp = c->lp;
  node_t *n = lp->net->node;
  switch (rq->op) {
    case GRID__OP__PING: case GRID__OP__STATS: case GRID__OP__LIST_CACHES:
      return 0;
    case GRID__OP__PMAP:
      route_pmap(c, rq);
      return 1;
    case GRID__OP__CREATE_CACHE: case GRID__OP__DROP_CACHE:
      route_cache_op(c, rq);
      return 1;
    case GRID__OP__GET: case GRID__OP__PUT: case GRID__OP__PUT_IF_ABSENT:
    case GRID__OP__REPLACE: case GRID__OP__CAS: case GRID__OP__DELETE:
    case GRID__OP__ADD: case GRID__OP__GET_ALL: case GRID__OP__PUT_ALL:
    case GRID__OP__DELETE_ALL: case GRID__OP__SCAN: case GRID__OP__SIZE:
      break;
    default:
      return 0; /* ops_execute answers: unknown operation */
  }
  if (!cluster_serving(n->cluster)) {
    route_reply_error(c, rq->id, GRID_ECLUSTER, "this node is not serving (no partition map, or no ZooKeeper)");
    return 1;
  }
  const char *name = rq->cache ? rq->cache : "";
  const pmap_cache_t *pc = lp->pmap ? pmap_find_cache(lp->pmap, name) : NULL;
  if (!pc) {
    /* A cache this node knows but the map does not place yet: retry. */
    int known = store_view_find(&lp->view, name, strlen(name)) != NULL;
    char detail[96];
    snprintf(detail, sizeof detail, "\"%.64s\"", name);
    route_reply_error(c, rq->id, known ? GRID_ENOTREADY : GRID_ENOCACHE, detail);
    return 1;
  }
  if (rq->op == GRID__OP__SIZE) {
    route_size(c, rq, pc);
    return 1;
  }
  if (rq->op == GRID__OP__GET_ALL || rq->op == GRID__OP__PUT_ALL ||
      rq->op == GRID__OP__DELETE_ALL) {
    /* All keys led here (or a forwarded part): run it here. */
    int local = 1;
    for (size_t i = 0; i < rq->n_keys && local; i++)
      local = pmap_primary(pc, part_of(rq->keys[i].data, rq->keys[i].len, pc->partitions)) == lp->self;
    if (local) return 0;
    if (rq->hops) {
      route_reply_error(c, rq->id, GRID_ESTALE, "keys of the batch are not led here");
      return 1;
    }
    route_batch(c, rq, pc);
    return 1;
  }
  uint32_t p = rq->op == GRID__OP__SCAN
                   ? rq->partition
                   : part_of(rq->key.data, rq->key.len, pc->partitions);
  if (p >= pc->partitions) return 0; /* ops_execute answers: bad partition */
  int st0;
  pmap_copy_at(pc, p, 0, &st0);
  if (st0 == PMAP_LOST) {
    char detail[96];
    snprintf(detail, sizeof detail, "cache %.64s partition %u", name, p);
    route_reply_error(c, rq->id, GRID_ELOST, detail);
    return 1;
  }
  int prim = pmap_primary(pc, p);
  if (prim == lp->self) return 0;
  if (rq->hops || prim < 0) {
    route_reply_error(c, rq->id, rq->hops ? GRID_ESTALE : GRID_ENOTREADY,
                      "this node does not lead the partition");
    return 1;
  }
  route_forward(c, rq, prim);
  return 1;
}
