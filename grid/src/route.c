#include "route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "cluster.h"
#include "grid_types.h"
#include "log.h"
#include "op.h"
#include "loop.h"
#include "node.h"
#include "ops.h"
#include "part.h"
#include "peer.h"
#include "pmap.h"
#include "repl.h"
#include "sink.h"

/* ---- sinks: where replies go ------------------------------------------------ */

/* ---- one keyed request ----------------------------------------------------- */

typedef struct route_fwd {
  sink_t *sink;
  loop_t *lp;
  uint64_t id;             /* the request's, for an error instead */
} route_fwd_t;

/* A forward that never reached the primary (the link is down, or could
 * not be made) ran nowhere: the client may send it again, so it hears
 * GRID_ENOTREADY and retries within its deadline (once the map names the
 * new primary, it goes there). Only a write that was sent and got no reply
 * is of unknown outcome. */
static int route_fwd_status(int status) { return status == GRID_ECONN ? GRID_ENOTREADY : status; }

static void route_fwd_done(void *arg, int status, const Grid__Reply *rp) {
  route_fwd_t *f = arg;
  if (status != 0)
    sink_error(f->lp, f->sink, f->id, route_fwd_status(status),
                     status == GRID_ECONN ? "the partition's primary cannot be reached: not run"
                                          : "forwarding to the partition's primary");
  else
    sink_deliver(f->lp, f->sink, rp);
  free(f);
}

/* Runs a keyed request (or SCAN) where its partition's primary is: here
 * through repl, or forwarded over the loop's link (one hop). */
static void route_key(loop_t *lp, Grid__Request *rq, const pmap_group_t *pc,
                      sink_t *sink, int ordered) {
  uint32_t p = op_has(rq->op, OP_PARTITION)
                   ? rq->partition
                   : part_of(rq->key.data, rq->key.len, pc->partitions);
  if (p >= pc->partitions) {
    sink_error(lp, sink, rq->id, GRID_EINVAL, "partition out of range");
    return;
  }
  int st0;
  pmap_copy_at(pc, p, 0, &st0);
  if (st0 == PMAP_LOST) {
    char detail[96];
    snprintf(detail, sizeof detail, "cache %.64s partition %u", pc->name, p);
    sink_error(lp, sink, rq->id, GRID_ELOST, detail);
    return;
  }
  int prim = pmap_primary(pc, p);
  if (pmap_leads(pc, p, lp->self)) {
    repl_execute(lp, rq, p, sink, ordered);
    return;
  }
  if (rq->hops || prim < 0) {
    sink_error(lp, sink, rq->id, rq->hops ? GRID_ESTALE : GRID_ENOTREADY,
                     "this node does not lead the partition");
    return;
  }
  const pmap_node_t *nd = &lp->pmap->nodes[prim];
  if (strcmp(nd->id, lp->node->node_id) == 0) {
    /* The map names this node's id under another incarnation: this process
     * restarted and holds none of those copies; the next map says who
     * leads now. */
    sink_error(lp, sink, rq->id, GRID_ENOTREADY,
                     "this node restarted: the partition map does not place it yet");
    return;
  }
  peer_t *peer = peer_get(lp, nd);
  route_fwd_t *f = malloc(sizeof *f);
  uint64_t id = rq->id; /* peer_call puts its own id in rq */
  int rc = GRID_ENOMEM;
  if (peer && f) {
    *f = (route_fwd_t){sink, lp, id};
    rq->hops = 1;
    rc = peer_call(peer, rq, lp->node->cfg.forward_timeout_ms, route_fwd_done, f);
  } else if (!peer) {
    rc = GRID_ECONN;
  }
  if (rc != 0) {
    free(f);
    sink_error(lp, sink, id, route_fwd_status(rc),
               "the partition's primary cannot be reached: not run");
  }
}

/* ---- batches, key by key ------------------------------------------------------ */

/* A batch run as one request per key, each where its primary is, merged
 * in the request's key order. */
typedef struct route_batch {
  loop_t *lp;
  sink_t *sink;            /* where the merged reply goes */
  uint64_t id;
  Grid__Op op;
  size_t nkeys;
  int pending;             /* keys not answered yet, plus one while sending */
  int status;              /* first error */
  char *message;           /* its words */
  int64_t number;          /* PUT_ALL written / DELETE_ALL deleted / SIZE sum */
  Grid__Entry **entries;   /* GET_ALL: in the request's key order */
  arena_t arena;           /* entries and words live here */
} route_batch_t;

typedef struct route_part {
  sink_t sink;             /* for a key this node leads */
  route_batch_t *b;
  size_t index;            /* the key's position in the request */
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
  sink_deliver(b->lp, b->sink, &rp);
  arena_close(&b->arena);
  free(b);
}

static void route_batch_error(route_batch_t *b, int status, const char *message) {
  if (b->status != 0) return;
  b->status = status;
  const char *m = message ? message : grid_strerror(status);
  b->message = arena_dup(&b->arena, m, strlen(m) + 1);
}

/* One key's answer (rp NULL: a transport status). */
static void route_batch_take(route_batch_t *b, size_t index, int status,
                             const Grid__Reply *rp) {
  if (status == 0 && rp) status = rp->status;
  switch (b->op) {
    case GRID__OP__GET_ALL: {
      if (status != 0 && status != GRID_ENOTFOUND) {
        route_batch_error(b, status, rp ? rp->message : NULL);
        break;
      }
      Grid__Entry *e = arena_alloc(&b->arena, sizeof *e);
      if (!e) {
        route_batch_error(b, GRID_ENOMEM, NULL);
        break;
      }
      grid__entry__init(e);
      if (status == 0) {
        e->found = 1;
        e->version = rp->version;
        e->value.len = rp->value.len;
        e->value.data = arena_dup(&b->arena, rp->value.data, rp->value.len);
      }
      b->entries[index] = e;
      break;
    }
    case GRID__OP__PUT_ALL:
      if (status == 0) b->number++;
      else route_batch_error(b, status, rp ? rp->message : NULL);
      break;
    case GRID__OP__DELETE_ALL:
      if (status == 0) b->number++;
      else if (status != GRID_ENOTFOUND) route_batch_error(b, status, rp ? rp->message : NULL);
      break;
    default: /* SIZE */
      if (status == 0) b->number += rp->number;
      else route_batch_error(b, status, rp ? rp->message : NULL);
      break;
  }
  if (--b->pending == 0) route_batch_finish(b);
}

static void route_part_sink_fn(loop_t *lp, sink_t *sk, const Grid__Reply *rp) {
  (void)lp;
  route_part_t *part = (route_part_t *)sk;
  route_batch_t *b = part->b;
  size_t index = part->index;
  free(part);
  route_batch_take(b, index, 0, rp);
}

static void route_part_done(void *arg, int status, const Grid__Reply *rp) {
  route_part_t *part = arg;
  route_batch_t *b = part->b;
  size_t index = part->index;
  free(part);
  route_batch_take(b, index, route_fwd_status(status), rp);
}

/* A batch answering through sink (which it then owns). */
static route_batch_t *route_batch_new(loop_t *lp, Grid__Request *rq, size_t n,
                                      sink_t *sink) {
  route_batch_t *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  arena_init(&b->arena, 4096);
  b->lp = lp;
  b->sink = sink;
  b->id = rq->id;
  b->op = rq->op;
  b->nkeys = n;
  b->pending = 1; /* held until every key is sent */
  if (rq->op == GRID__OP__GET_ALL) {
    b->entries = arena_alloc(&b->arena, (n ? n : 1) * sizeof *b->entries);
    if (!b->entries) {
      arena_close(&b->arena);
      free(b);
      return NULL;
    }
    memset(b->entries, 0, (n ? n : 1) * sizeof *b->entries);
  }
  return b;
}

/* Whether a batch may run: its values match its keys, its size and each
 * key's and value's are within the node's limits. 0, or the error sent. */
static int route_batch_check(loop_t *lp, const Grid__Request *rq, sink_t *sink) {
  size_t n = rq->n_keys;
  if (rq->op == GRID__OP__PUT_ALL && rq->n_values != n) {
    sink_error(lp, sink, rq->id, GRID_EINVAL, "put_all needs as many values as keys");
    return GRID_EINVAL;
  }
  if ((int64_t)n > lp->node->cfg.batch_keys_max) {
    sink_error(lp, sink, rq->id, GRID_EBATCHTOOBIG, NULL);
    return GRID_EBATCHTOOBIG;
  }
  for (size_t i = 0; i < n; i++) {
    int rc = store_check_sizes(lp->node->store, rq->keys[i].len,
                               rq->op == GRID__OP__PUT_ALL ? rq->values[i].len : 0);
    if (rc != 0) {
      sink_error(lp, sink, rq->id, rc, NULL);
      return rc;
    }
  }
  return 0;
}

static void route_batch(loop_t *lp, Grid__Request *rq, const pmap_group_t *pc, sink_t *sink) {
  size_t n = rq->n_keys;
  if (route_batch_check(lp, rq, sink) != 0) return;
  route_batch_t *b = route_batch_new(lp, rq, n, sink);
  if (!b) {
    sink_error(lp, sink, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  Grid__Op op = rq->op == GRID__OP__GET_ALL ? GRID__OP__GET
                : rq->op == GRID__OP__PUT_ALL ? GRID__OP__PUT
                                              : GRID__OP__DELETE;
  for (size_t i = 0; i < n; i++) {
    route_part_t *part = malloc(sizeof *part);
    if (!part) {
      route_batch_error(b, GRID_ENOMEM, NULL);
      break;
    }
    sink_init(&part->sink, route_part_sink_fn, lp->index);
    part->b = b;
    part->index = i;
    Grid__Request one = GRID__REQUEST__INIT;
    one.op = op;
    one.cache = rq->cache;
    one.key = rq->keys[i];
    if (op == GRID__OP__PUT) {
      one.value = rq->values[i];
      one.ttl_ms = rq->ttl_ms;
    }
    b->pending++;
    route_key(lp, &one, pc, &part->sink, 1);
  }
  if (--b->pending == 0) route_batch_finish(b);
}

/* SIZE: every node counts the partitions it leads. */
static int64_t route_local_size(loop_t *lp, const char *cache, const pmap_group_t *pc,
                                int *found) {
  /* A node the map does not place (it restarted under its id) leads
   * nothing it can count yet. */
  store_cache_t *sc = lp->self >= 0 ? store_view_find(&lp->view, cache, strlen(cache)) : NULL;
  int64_t total = 0;
  for (uint32_t p = 0; sc && p < pc->partitions; p++)
    if (pmap_leads(pc, p, lp->self)) total += (int64_t)store_part_size(sc, p);
  *found = sc != NULL;
  return total;
}

/* Whether node leads at least one partition of pc: only those are asked. */
static int route_leads_any(const pmap_group_t *pc, int node) {
  for (uint32_t p = 0; p < pc->partitions; p++)
    if (pmap_primary(pc, p) == node) return 1;
  return 0;
}

/* rq for node nd alone (local, one hop), its answer taken into b (an
 * answer counted in b->pending already). */
static void route_ask_node(loop_t *lp, route_batch_t *b, const Grid__Request *rq,
                           const pmap_node_t *nd) {
  route_part_t *part = malloc(sizeof *part);
  peer_t *p = peer_get(lp, nd);
  Grid__Request sub = *rq;
  sub.local = 1;
  sub.hops = 1;
  int rc = GRID_ENOMEM;
  if (part && p) {
    part->b = b;
    part->index = 0;
    rc = peer_call(p, &sub, lp->node->cfg.forward_timeout_ms, route_part_done, part);
  } else if (!p) {
    rc = GRID_ECONN;
  }
  if (rc != 0) {
    free(part);
    route_batch_take(b, 0, route_fwd_status(rc), NULL);
  }
}

static void route_size(loop_t *lp, Grid__Request *rq, const pmap_group_t *pc,
                       sink_t *sink) {
  const pmap_t *m = lp->pmap;
  int found;
  if (rq->local) {
    Grid__Reply rp = GRID__REPLY__INIT;
    rp.id = rq->id;
    rp.number = route_local_size(lp, rq->cache, pc, &found);
    if (!found) ops_reply_error(&rp, GRID_ENOTREADY, "cache not here yet", &lp->arena);
    sink_deliver(lp, sink, &rp);
    return;
  }
  route_batch_t *b = route_batch_new(lp, rq, 0, sink);
  if (!b) {
    sink_error(lp, sink, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  for (size_t node = 0; node < m->nnodes; node++) {
    if ((int)node != lp->self && !route_leads_any(pc, (int)node)) continue;
    b->pending++;
    if ((int)node == lp->self) {
      Grid__Reply rp = GRID__REPLY__INIT;
      rp.number = route_local_size(lp, rq->cache, pc, &found);
      route_batch_take(b, 0, found ? 0 : GRID_ENOTREADY, found ? &rp : NULL);
      continue;
    }
    if (strcmp(m->nodes[node].id, lp->node->node_id) == 0) {
      /* This node's id under an earlier incarnation: its partitions are
       * not here, and asking our own address would count ours twice. */
      route_batch_take(b, 0, GRID_ENOTREADY, NULL);
      continue;
    }
    route_ask_node(lp, b, rq, &m->nodes[node]);
  }
  if (--b->pending == 0) route_batch_finish(b);
}

/* ---- caches and status --------------------------------------------------- */

typedef struct route_cache_job {
  sink_t *sink;
  uint64_t id;
} route_cache_job_t;

static void route_cache_done(loop_t *lp, void *arg, int status, const char *detail) {
  route_cache_job_t *j = arg;
  if (status != 0) {
    sink_error(lp, j->sink, j->id, status, detail);
  } else {
    Grid__Reply rp = GRID__REPLY__INIT;
    rp.id = j->id;
    sink_deliver(lp, j->sink, &rp);
  }
  free(j);
}

/* A cache definition a client sent: checked here, as a single node would,
 * before anything is written to ZooKeeper. 0, or GRID_EINVAL. */
static int route_cache_cfg(const node_t *n, const Grid__CacheConfig *m, store_cache_cfg_t *cfg) {
  if (!m || !m->name || strlen(m->name) == 0 || strlen(m->name) > STORE_CACHE_NAME_MAX)
    return GRID_EINVAL;
  ops_cfg_from_msg(m, NULL, cfg);
  int ok = cfg->backups <= 3 && (int64_t)cfg->partitions <= n->cfg.partitions_max;
  for (const char *s = cfg->name; *s && ok; s++)
    ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
         *s == '_' || *s == '-' || *s == '.';
  return ok ? 0 : GRID_EINVAL;
}

/* CREATE_CACHE, DROP_CACHE, ACCEPT_LOSS, USER's changes (ZooKeeper's users
 * znode): through the cluster thread to ZooKeeper. */
static void route_cache_op(loop_t *lp, Grid__Request *rq, sink_t *sink) {
  node_t *n = lp->node;
  store_cache_cfg_t cfg;
  if (rq->op == GRID__OP__CREATE_CACHE && route_cache_cfg(n, rq->cache_config, &cfg) != 0) {
    sink_error(lp, sink, rq->id, GRID_EINVAL,
               "name must be 1-64 of [A-Za-z0-9_.-], backups 0..3, partitions at most partitions_max");
    return;
  }
  const char *refused =
      rq->op == GRID__OP__CREATE_CACHE ? ops_cache_cfg_refused(n, &cfg) : NULL;
  if (refused) {
    sink_error(lp, sink, rq->id, GRID_EINVAL, refused);
    return;
  }
  route_cache_job_t *j = malloc(sizeof *j);
  if (!j) {
    sink_error(lp, sink, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  j->sink = sink;
  j->id = rq->id;
  char node_id[PMAP_ID_MAX];
  snprintf(node_id, sizeof node_id, "%.*s", (int)rq->key.len,
           rq->key.data ? (const char *)rq->key.data : "");
  int rc = rq->op == GRID__OP__ACCEPT_LOSS
               ? cluster_accept_loss(n->cluster, node_id, lp->index, route_cache_done, j)
           : rq->op == GRID__OP__USER
               ? cluster_user_change(n->cluster, rq, lp->index, route_cache_done, j)
           : rq->op == GRID__OP__CREATE_CACHE
               ? cluster_cache_create(n->cluster, &cfg, lp->index, route_cache_done, j)
               : cluster_cache_drop(n->cluster, rq->cache ? rq->cache : "", lp->index,
                                    route_cache_done, j);
  if (rc != 0) {
    free(j);
    sink_error(lp, sink, rq->id, rc, NULL);
  }
}

/* PMAP: the map this node acts on, and what it knows of the cluster. */
static void route_pmap(loop_t *lp, Grid__Request *rq, sink_t *sink) {
  node_t *n = lp->node;
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
  sink_deliver(lp, sink, &rp);
  if (pm) grid__pmap__free_unpacked(pm, NULL);
  cluster_status_free(&st);
}

/* ---- the entry points ---------------------------------------------------- */

int route_classify(loop_t *lp, const Grid__Request *rq, const route_from_t *from) {
  switch (rq->op) {
    case GRID__OP__PING: case GRID__OP__STATS: case GRID__OP__LIST_CACHES:
      return ROUTE_LOCAL;
    case GRID__OP__REPL: case GRID__OP__FILL: case GRID__OP__COMMITTED:
      /* The sender read a map this node has not read yet (both learn it
       * from ZooKeeper a moment apart): its records wait, in order,
       * rather than be refused, which would cost the copy a refill. */
      if (from->peer && rq->epoch > cluster_newest_epoch(lp->node->cluster) &&
          !from->map_wait_over)
        return ROUTE_WAIT_MAP;
      return ROUTE_RECORD;
    default:
      /* Unknown ops run locally too: ops_execute answers GRID_EBADOP. */
      return op_has(rq->op, OP_KNOWN) ? ROUTE_RUN : ROUTE_LOCAL;
  }
}

void route_record(loop_t *lp, const Grid__Request *rq, const route_from_t *from,
                  Grid__Reply *rp) {
  GRID_ASSERT(op_has(rq->op, OP_PEER));
  if (!from->peer) {
    rp->id = rq->id;
    ops_reply_error(rp, GRID_EBADOP, "replication is for grid nodes only", &lp->arena);
    return;
  }
  repl_on_peer_request(lp, from->peer_id, rq, rp);
}

/* A data request: the cache must be in this loop's map. */
static void route_data(loop_t *lp, Grid__Request *rq, const route_from_t *from, sink_t *sink) {
  if (!cluster_serving(lp->node->cluster)) {
    sink_error(lp, sink, rq->id, GRID_ECLUSTER,
               "this node is not serving (no partition map, or no ZooKeeper)");
    return;
  }
  const char *name = rq->cache ? rq->cache : "";
  const pmap_group_t *pc = lp->pmap ? pmap_find_cache(lp->pmap, name) : NULL;
  if (!pc) {
    /* A cache this node knows but the map does not place yet, or a request
     * routed with a map this node has not read (it may name a cache made
     * since): retry. */
    int known = store_view_find(&lp->view, name, strlen(name)) != NULL ||
                (lp->pmap && rq->epoch > lp->pmap->epoch);
    char detail[96];
    snprintf(detail, sizeof detail, "\"%.64s\"", name);
    sink_error(lp, sink, rq->id, known ? GRID_ENOTREADY : GRID_ENOCACHE, detail);
    return;
  }
  if (op_has(rq->op, OP_ALL_NODES)) route_size(lp, rq, pc, sink);
  else if (op_has(rq->op, OP_BATCH)) route_batch(lp, rq, pc, sink);
  else route_key(lp, rq, pc, sink, from->behind);
}

/* SNAPSHOT in a cluster: every node of the map makes it (a node away
 * makes it fail: a snapshot is on every node or it is not one). */
static void route_snapshot(loop_t *lp, Grid__Request *rq, sink_t *sink) {
  const pmap_t *m = lp->pmap;
  if (rq->local || !m) {
    Grid__Reply rp = GRID__REPLY__INIT;
    ops_execute(lp->node, &lp->view, rq, &rp, &lp->arena);
    rp.id = rq->id;
    sink_deliver(lp, sink, &rp);
    return;
  }
  route_batch_t *b = route_batch_new(lp, rq, 0, sink);
  if (!b) {
    sink_error(lp, sink, rq->id, GRID_ENOMEM, NULL);
    return;
  }
  for (size_t node = 0; node < m->nnodes; node++) {
    b->pending++;
    if ((int)node == lp->self) {
      Grid__Reply rp = GRID__REPLY__INIT;
      ops_execute(lp->node, &lp->view, rq, &rp, &lp->arena);
      route_batch_take(b, 0, 0, &rp);
      continue;
    }
    const pmap_node_t *nd = &m->nodes[node];
    if (nd->absent) route_batch_take(b, 0, GRID_ECONN, NULL);
    else route_ask_node(lp, b, rq, nd);
  }
  if (--b->pending == 0) route_batch_finish(b);
}

void route_run(loop_t *lp, Grid__Request *rq, const route_from_t *from, sink_t *sink) {
  node_t *n = lp->node;
  switch (rq->op) {
    case GRID__OP__PMAP:
      route_pmap(lp, rq, sink);
      return;
    case GRID__OP__LEAVE: {
      cluster_leave(n->cluster, n->on_left, n);
      LOG_I("cluster", "\"asked to leave\" by=%s", from->addr);
      Grid__Reply rp = GRID__REPLY__INIT;
      rp.id = rq->id;
      sink_deliver(lp, sink, &rp);
      return;
    }
    case GRID__OP__SNAPSHOT:
      route_snapshot(lp, rq, sink);
      return;
    case GRID__OP__CREATE_CACHE: case GRID__OP__DROP_CACHE: case GRID__OP__ACCEPT_LOSS:
      route_cache_op(lp, rq, sink);
      return;
    case GRID__OP__USER:
      if (rq->user_action != GRID__USER_ACTION__USER_LIST) {
        route_cache_op(lp, rq, sink);
        return;
      }
      break; /* LIST: this node's copy of the users, below */
    default:
      break;
  }
  if (op_has(rq->op, OP_DATA)) {
    route_data(lp, rq, from, sink);
    return;
  }
  /* Known, not data, not handled above: runs here (a peer-only op from
   * route_classify's caller is refused by ops_execute). */
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(n, &lp->view, rq, &rp, &lp->arena);
  sink_deliver(lp, sink, &rp);
}
