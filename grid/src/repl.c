#include "repl.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "cluster.h"
#include "clock.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "op.h"
#include "ops.h"
#include "peer.h"
#include "repl_int.h"

static void repl_fail_waits(loop_t *lp, repl_order_wait_t *l, int status, const char *why);
static void repl_backup_missed(loop_t *lp, repl_write_t *w, repl_backup_t *b);

/* ---- replies that cross loops ------------------------------------------ */

static repl_packed_t *repl_pack(sink_t *sink, const Grid__Reply *rp, int handed) {
  size_t len = grid__reply__get_packed_size(rp);
  repl_packed_t *pk = malloc(sizeof *pk + len);
  if (!pk) return NULL;
  pk->sink = sink;
  pk->handed = handed;
  pk->id = rp->id;
  pk->len = len;
  grid__reply__pack(rp, pk->buf);
  return pk;
}


/* Whether a reply that depends on this node leading the partition may
 * leave now: the lease, read at the moment of release (after the state
 * the reply describes was read, so that state was this node's to tell). */
static int repl_leased(loop_t *lp) {
  if (cluster_serving(lp->node->cluster)) return 1;
  /* Said at most once a second per loop: a lapse refuses every reply. */
  struct repl_loop *rl = lp->repl;
  int64_t now = clock_mono_ms();
  if (rl && now - rl->lease_logged_ms >= 1000) {
    rl->lease_logged_ms = now;
    LOG_W("repl", "\"lease ran out: replies that depend on this node's role are refused\" loop=%d",
          lp->index);
  }
  return 0;
}

#define REPL_LEASE_LOST_READ "this node's lease ran out before the reply left: not answered, retry"
#define REPL_LEASE_LOST_WRITE "this node's lease ran out before the write's reply left: its outcome is unknown"

/* Delivers rp, or an error when the lease ran out: status says which
 * (GRID_ECLUSTER for what changed nothing, GRID_EUNKNOWN for a write). */
static void repl_deliver_leased(loop_t *lp, sink_t *sink, const Grid__Reply *rp,
                                int lost_status) {
  if (repl_leased(lp)) {
    sink_deliver(lp, sink, rp);
    return;
  }
  Grid__Reply err = GRID__REPLY__INIT;
  err.id = rp->id;
  err.status = lost_status;
  err.message = lost_status == GRID_EUNKNOWN ? REPL_LEASE_LOST_WRITE : REPL_LEASE_LOST_READ;
  sink_deliver(lp, sink, &err);
}

/* A request another loop handed here is answered (loop_handoffs_max). */
static void repl_handoff_answered(loop_t *lp) {
  int64_t before = atomic_fetch_sub_explicit(&lp->handoffs, 1, memory_order_relaxed);
  GRID_ASSERT(before > 0);
}

/* A packed reply released on its loop, or failed when the lease ran out. */
static void repl_release_packed(loop_t *lp, repl_packed_t *pk, int lost_status) {
  if (pk->handed) {
    pk->handed = 0;
    repl_handoff_answered(lp);
  }
  if (!repl_leased(lp)) {
    repl_fail_packed(lp, pk, lost_status,
                     lost_status == GRID_EUNKNOWN ? REPL_LEASE_LOST_WRITE : REPL_LEASE_LOST_READ);
    return;
  }
  sink_deliver_packed(lp, pk->sink, pk, pk->buf, pk->len, pk->id);
}

void repl_part_free(void *repl) {
  repl_part_t *rp = repl;
  /* Pending work holds a reference to the cache, so none is left here. */
  free(rp);
}

struct repl_loop *repl_loop(loop_t *lp) {
  if (!lp->repl) lp->repl = calloc(1, sizeof *lp->repl);
  return lp->repl;
}

static repl_part_t *repl_part(store_t *store, store_cache_t *sc, uint32_t p) {
  store_part_sync_t *sync = store_part_sync(sc, p);
  if (!sync) return NULL;
  if (!sync->repl) {
    repl_part_t *rp = calloc(1, sizeof *rp);
    if (!rp) return NULL;
    repl_order_init(&rp->order);
    rp->sync = sync;
    rp->store = store;
    rp->cache = sc;
    rp->p = p;
    sync->repl = rp;
  }
  return sync->repl;
}

const char *repl_group_of(const loop_t *lp, const char *name) {
  const pmap_group_t *g = lp->pmap ? pmap_find_cache(lp->pmap, name) : NULL;
  return g ? g->name : NULL;
}

/* Partition p of cache `name` when a write of it is in flight here, else
 * NULL. */
static repl_part_t *repl_busy_part(loop_t *lp, const char *name, uint32_t p) {
  store_cache_t *sc = store_view_find(&lp->view, name, strlen(name));
  store_part_sync_t *sync = sc ? store_part_sync(sc, p) : NULL;
  repl_part_t *part = sync ? sync->repl : NULL;
  return part && !repl_order_empty(&part->order) ? part : NULL;
}

/* Whether no cache of group g (of lp's map) has a write of partition p in
 * flight here. */
static int repl_group_drained(loop_t *lp, const pmap_group_t *g, uint32_t p) {
  for (size_t i = g->first_cache; i < g->first_cache + g->ncaches; i++)
    if (repl_busy_part(lp, lp->pmap->caches[i].name, p)) return 0;
  return 1;
}

int repl_owner_loop(const loop_t *lp, uint32_t p) {
  return (int)(p % (uint32_t)loops_count(lp->set));
}

static void repl_write_unref(repl_write_t *w) {
  if (--w->refs > 0) return;
  free(w->reply);
  store_cache_release(w->store, w->cache);
  free(w);
}

/* The write or the wait around an item repl_order handed back. */
static repl_write_t *repl_write_of(repl_order_write_t *o) {
  return (repl_write_t *)((char *)o - offsetof(repl_write_t, ord));
}

static repl_wait_t *repl_wait_of(repl_order_wait_t *o) {
  return (repl_wait_t *)((char *)o - offsetof(repl_wait_t, ord));
}

/* A write that left its partition's FIFO: its reply goes (unless it went
 * already), and it leaves the loop's list. */
static void repl_write_done(loop_t *lp, repl_write_t *w) {
  struct repl_loop *rl = lp->repl;
  if (!w->answered && w->reply) {
    w->answered = 1;
    repl_packed_t *pk = w->reply;
    w->reply = NULL;
    repl_release_packed(lp, pk, GRID_EUNKNOWN);
  }
  if (w->lprev) w->lprev->lnext = w->lnext;
  else rl->writes = w->lnext;
  if (w->lnext) w->lnext->lprev = w->lprev;
  repl_write_unref(w);
}

static size_t repl_backups_of(const loop_t *lp, const pmap_group_t *pc, uint32_t p,
                              int full_sync, uint32_t *idx, int *owning, int *moving);

static void repl_told(void *arg, int status, const Grid__Reply *rp) {
  (void)arg;
  (void)status;
  (void)rp; /* a backup that missed it serves reads from its primary until
               the next record or notice */
}

/* Tells the partition's backups its committed counter (read_from_backup:
 * what they may serve). Not waited for, not retried. */
static void repl_tell_committed(loop_t *lp, repl_part_t *part, uint64_t committed) {
  const char *name = store_cache_cfg(part->cache)->name;
  const pmap_group_t *pc = lp->pmap ? pmap_find_cache(lp->pmap, name) : NULL;
  if (!pc || !pmap_leads(pc, part->p, lp->self)) return;
  uint32_t idx[PMAP_NODES_MAX];
  int owning[PMAP_NODES_MAX], moving[PMAP_NODES_MAX];
  size_t nb = repl_backups_of(lp, pc, part->p, 0, idx, owning, moving);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__COMMITTED;
  rq.cache = (char *)name;
  rq.partition = part->p;
  rq.epoch = lp->pmap->epoch;
  rq.committed = committed;
  for (size_t i = 0; i < nb; i++) {
    if (moving[i]) continue; /* a copy being filled is not read */
    const pmap_node_t *nd = &lp->pmap->nodes[idx[i]];
    peer_t *peer = peer_get(lp, nd);
    if (peer) (void)peer_call(peer, &rq, lp->node->cfg.forward_timeout_ms, repl_told, NULL);
  }
}

/* Answers what the partition's committed counter now allows: writes at the
 * head of the FIFO that every backup has acknowledged, then waiting reads
 * (repl_order_advance decides which). */
static void repl_advance(loop_t *lp, repl_part_t *part) {
  /* The writes freed here may hold the last references to the cache, and
   * the part lives in the cache: keep it until the end. */
  store_cache_t *cache = part->cache;
  store_cache_hold(cache);
  uint64_t before = atomic_load(&part->sync->committed);
  repl_order_out_t out;
  uint64_t committed = repl_order_advance(&part->order, before,
                                          atomic_load(&part->sync->applied), &out);
  /* Published once, before any reply leaves: a client that heard of its
   * write finds it committed from every loop, and a sink that runs another
   * request of the partition on this loop starts from the new value.
   * Sequentially consistent, as the catch-up to applied always was (each
   * write's commit was a release store: this is at least as strong). */
  GRID_ASSERT(committed >= before);
  /* Published (and change streams told) once, before any reply leaves. */
  if (committed != before) store_part_commit(cache, part->p, committed);
  /* The line is empty: the backups hear where it got to (records carry the
   * committed counter of their time; the last ones' commit needs this). */
  if (committed != before && repl_order_empty(&part->order) &&
      store_reads_backup(store_cache_cfg(cache)))
    repl_tell_committed(lp, part, committed);
  for (repl_order_write_t *o = out.writes, *next; o; o = next) {
    next = o->next;
    repl_write_done(lp, repl_write_of(o));
  }
  if (repl_order_empty(&part->order) && part->handoff_epoch) {
    /* The group's partition is drained once every cache's is. */
    const pmap_group_t *g = lp->pmap ? pmap_find_cache(lp->pmap, store_cache_cfg(cache)->name)
                                     : NULL;
    if (g && repl_group_drained(lp, g, part->p))
      cluster_report_drained(lp->node->cluster, g->name, part->p, part->handoff_epoch);
    part->handoff_epoch = 0;
  }
  for (repl_order_wait_t *o = out.waits, *next; o; o = next) {
    next = o->next;
    repl_wait_t *wt = repl_wait_of(o);
    repl_release_packed(lp, wt->reply, GRID_ECLUSTER);
    free(wt);
  }
  store_cache_release(part->store, cache);
}

/* ---- the primary's side ------------------------------------------------------ */

/* The record of a write, as store_write_rec hands it over; a batch's
 * gathers every entry it wrote (records), sent as one REPL. */
typedef struct repl_rec {
  int captured;
  int failed;           /* the write was applied, its record not made */
  int batch;            /* BATCH: entries go to records */
  Grid__Request rq;     /* REPL message; key/value point into mem */
  unsigned char *mem;
  Grid__Entry **records;/* BATCH: each malloc'd with its key and value */
  size_t nrecords, cap;
} repl_rec_t;

static void repl_rec_free(repl_rec_t *r) {
  free(r->mem);
  for (size_t i = 0; i < r->nrecords; i++) free(r->records[i]);
  free(r->records);
}

/* A batch's entry joins its record. */
static void repl_capture_entry(repl_rec_t *r, const void *key, size_t key_len,
                               const void *value, size_t value_len, uint8_t type,
                               uint64_t version, int64_t expire_at_ms) {
  if (r->nrecords == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 8;
    Grid__Entry **l = realloc(r->records, cap * sizeof *l);
    if (!l) {
      r->failed = 1;
      return;
    }
    r->records = l;
    r->cap = cap;
  }
  Grid__Entry *e = malloc(sizeof *e + key_len + value_len + 1);
  if (!e) {
    r->failed = 1;
    return;
  }
  unsigned char *mem = (unsigned char *)(e + 1);
  grid__entry__init(e);
  if (key_len) memcpy(mem, key, key_len);
  if (value_len) memcpy(mem + key_len, value, value_len);
  e->key = (ProtobufCBinaryData){key_len, mem};
  e->value = (ProtobufCBinaryData){value_len, mem + key_len};
  e->deleted = value == NULL;
  e->type = type;
  e->version = version;
  e->expire_at_ms = expire_at_ms;
  r->records[r->nrecords++] = e;
  if (r->nrecords == 1) {
    grid__request__init(&r->rq);
    r->rq.op = GRID__OP__REPL;
    r->rq.key = e->key; /* the backup finds the partition by it */
  }
  r->rq.records = r->records;
  r->rq.n_records = r->nrecords;
  r->rq.version = version;
  r->captured = !r->failed;
}

static void repl_capture(void *ctx, const void *key, size_t key_len,
                         const void *value, size_t value_len, uint8_t type, uint64_t version,
                         int64_t expire_at_ms) {
  repl_rec_t *r = ctx;
  if (r->batch) {
    repl_capture_entry(r, key, key_len, value, value_len, type, version, expire_at_ms);
    return;
  }
  r->mem = malloc(key_len + value_len + 1);
  if (!r->mem) {
    r->failed = 1; /* its backups are demoted: see repl_record_lost */
    return;
  }
  if (key_len) memcpy(r->mem, key, key_len); /* an empty key may be NULL */
  if (value_len) memcpy(r->mem + key_len, value, value_len);
  grid__request__init(&r->rq);
  r->rq.op = GRID__OP__REPL;
  r->rq.key.data = r->mem;
  r->rq.key.len = key_len;
  r->rq.value.data = r->mem + key_len;
  r->rq.value.len = value_len;
  r->rq.deleted = value == NULL;
  r->rq.value_type = type;
  r->rq.version = version;
  r->rq.expire_at_ms = expire_at_ms;
  r->captured = 1;
}

typedef struct repl_ack {
  repl_write_t *w;
  size_t backup;
  loop_t *lp;
} repl_ack_t;

static void repl_on_ack(void *arg, int status, const Grid__Reply *rp) {
  repl_ack_t *a = arg;
  repl_write_t *w = a->w;
  repl_backup_t *b = &w->backups[a->backup];
  if (status == 0 && rp->status != 0) status = rp->status;
  if (status == 0 && b->state == REPL_WAIT) {
    b->state = REPL_ACKED;
    repl_order_ack(&w->ord);
  } else if (status != 0 && b->state != REPL_FAILED && w->part) {
    /* The backup may have missed this record (a write stopping with the
     * node has no part, and demotes nobody). A full_sync write waits for
     * an OWNING copy until a map no longer counts it in sync. */
    b->state = REPL_FAILED;
    repl_backup_missed(a->lp, w, b);
  }
  if (repl_order_ready(&w->ord) && w->part) repl_advance(a->lp, w->part);
  repl_write_unref(w);
  free(a);
}

/* Whether the partition already has repl_pending_max requests waiting for
 * its backups: then this one is refused with GRID_EBUSY (1). */
static int repl_full(loop_t *lp, repl_part_t *part, uint64_t id, sink_t *sink) {
  int64_t max = lp->node->cfg.repl_pending_max;
  if ((int64_t)part->order.pending < max) return 0;
  char detail[128];
  snprintf(detail, sizeof detail, "repl_pending_max (%lld) requests of partition %u wait for "
           "its backups", (long long)max, part->p);
  sink_error(lp, sink, id, GRID_EBUSY, detail);
  return 1;
}

/* Answers rp now or once committed reaches release (on the owner loop).
 * 1 when the reply waits (kept packed until released or failed). */
static int repl_answer_when(loop_t *lp, repl_part_t *part, uint64_t release,
                            sink_t *sink, const Grid__Reply *rp, int handed) {
  uint64_t committed = part ? atomic_load(&part->sync->committed) : 0;
  if (!part || repl_order_may_answer(&part->order, committed,
                                     atomic_load(&part->sync->applied), release)) {
    if (part && repl_order_empty(&part->order)) repl_advance(lp, part);
    repl_deliver_leased(lp, sink, rp, GRID_ECLUSTER);
    return 0;
  }
  if (repl_full(lp, part, rp->id, sink)) return 0; /* it would wait */
  repl_wait_t *wt = malloc(sizeof *wt);
  repl_packed_t *pk = repl_pack(sink, rp, handed);
  if (!wt || !pk) {
    free(wt);
    free(pk);
    sink_error(lp, sink, rp->id, GRID_ENOMEM, "keeping a read until what it saw is committed");
    return 0;
  }
  wt->reply = pk;
  repl_order_hold(&part->order, &wt->ord, release, committed);
  return 1;
}

/* The copies a write of partition p goes to besides this one: every
 * OWNING or MOVING copy. owning[i]: a full_sync write waits for copy
 * idx[i]; moving[i]: it is being filled (one that misses a record is
 * filled again, where an OWNING one is demoted). */
static size_t repl_backups_of(const loop_t *lp, const pmap_group_t *pc, uint32_t p,
                              int full_sync, uint32_t *idx, int *owning, int *moving) {
  size_t nb = 0;
  for (uint32_t k = 1; k < pc->slots; k++) {
    int st;
    int node = pmap_copy_at(pc, p, k, &st);
    if (node < 0 || node == lp->self || (st != PMAP_OWNING && st != PMAP_MOVING)) continue;
    GRID_ASSERT(nb < PMAP_NODES_MAX && (size_t)node < lp->pmap->nnodes);
    idx[nb] = (uint32_t)node;
    moving[nb] = st == PMAP_MOVING;
    owning[nb++] = st == PMAP_OWNING && full_sync;
  }
  return nb;
}

/* Backup b of w may have missed w's record: an OWNING copy is demoted (the
 * coordinator has it filled again), a MOVING one starts its fill over. */
static void repl_backup_missed(loop_t *lp, repl_write_t *w, repl_backup_t *b) {
  const char *cache = store_cache_cfg(w->cache)->name;
  const char *group = repl_group_of(lp, cache);
  if (!group) return; /* the map places the cache no more: nothing to repair */
  if (b->moving) {
    repl_fill_restart(lp, group, w->p, b->node_id);
    return;
  }
  LOG_W("repl", "\"a backup missed a write: demoting it\" node=%s cache=%s partition=%u",
        b->node_id, cache, w->p);
  cluster_report_demote(lp->node->cluster, group, w->p, b->node_id);
}

/* Sends w's record to every backup. A backup it cannot reach is demoted
 * (it missed the write), so a full_sync write does not wait for it. */
static void repl_send_record(loop_t *lp, repl_write_t *w, Grid__Request *rec,
                             const uint32_t *idx, const int *owning, const int *moving) {
  node_t *n = lp->node;
  for (size_t i = 0; i < w->nbackups; i++) {
    const pmap_node_t *nd = &lp->pmap->nodes[idx[i]];
    snprintf(w->backups[i].node_id, PMAP_ID_MAX, "%s", nd->id);
    w->backups[i].state = owning[i] ? REPL_WAIT : REPL_ACKED;
    w->backups[i].owning = owning[i];
    w->backups[i].moving = moving[i];
    peer_t *peer = peer_get(lp, nd);
    repl_ack_t *ack = malloc(sizeof *ack);
    int rc = GRID_ENOMEM;
    if (peer && ack) {
      *ack = (repl_ack_t){w, i, lp};
      w->refs++;
      rc = peer_call(peer, rec, n->cfg.forward_timeout_ms, repl_on_ack, ack);
      if (rc != 0) w->refs--;
    }
    if (rc != 0) {
      free(ack);
      w->backups[i].state = REPL_FAILED;
      repl_backup_missed(lp, w, &w->backups[i]);
    }
  }
}

/* A write was applied here but its record could not be made (out of
 * memory): no backup will have it. Its client hears that the outcome is
 * unknown, and it stays in the partition's line as a write every waited
 * copy failed: it does not count as committed until a map no longer
 * counts those copies in sync (they are demoted, and filled again). */
static void repl_record_lost(loop_t *lp, struct repl_loop *rl, repl_part_t *part,
                             repl_write_t *w, const uint32_t *idx, const int *owning,
                             const int *moving, uint64_t id) {
  sink_error(lp, w->sink, id, GRID_EUNKNOWN, "out of memory replicating the write");
  w->answered = 1;
  int waiting = 0;
  for (size_t i = 0; i < w->nbackups; i++) {
    repl_backup_t *b = &w->backups[i];
    snprintf(b->node_id, PMAP_ID_MAX, "%s", lp->pmap->nodes[idx[i]].id);
    b->owning = owning[i];
    b->moving = moving[i];
    b->state = REPL_FAILED;
    waiting += owning[i] != 0;
    repl_backup_missed(lp, w, b);
  }
  w->lnext = rl->writes;
  if (rl->writes) rl->writes->lprev = w;
  rl->writes = w;
  /* The write's counter is the partition's applied one: this loop alone
   * writes the partition, and it just applied it. */
  repl_order_push(&part->order, &w->ord, atomic_load(&part->sync->applied), waiting,
                  atomic_load(&part->sync->committed));
}

/* Queues w, a captured write, behind the partition's pending writes and
 * sends its record; its reply leaves once every OWNING backup acked. */
static int repl_start_write(loop_t *lp, struct repl_loop *rl, repl_part_t *part,
                            repl_write_t *w, repl_rec_t *rec, const Grid__Reply *rp,
                            const uint32_t *idx, const int *owning, const int *moving,
                            int handed) {
  const store_cache_cfg_t *cfg = store_cache_cfg(w->cache);
  if (cfg->sync == GRID_SYNC_PRIMARY) {
    /* Answered at once: the newest writes may be lost with the primary. */
    repl_deliver_leased(lp, w->sink, rp, GRID_EUNKNOWN);
    w->answered = 1;
  } else {
    w->reply = repl_pack(w->sink, rp, handed);
    if (!w->reply) {
      /* Its words cannot be kept for later: the write still goes to the
       * backups, but its client hears now that the outcome is unknown. */
      sink_error(lp, w->sink, rp->id, GRID_EUNKNOWN, "out of memory keeping the write's reply");
      w->answered = 1;
    }
  }
  w->lnext = rl->writes;
  if (rl->writes) rl->writes->lprev = w;
  rl->writes = w;
  /* It waits for every copy owning[] names (OWNING, full_sync); one that
   * cannot be reached is demoted as the record is sent, and the write
   * waits for it until a map no longer counts it in sync. */
  int waiting = 0;
  for (size_t i = 0; i < w->nbackups; i++) waiting += owning[i] != 0;
  repl_order_push(&part->order, &w->ord, rec->rq.version & STORE_COUNTER_MASK, waiting,
                  atomic_load(&part->sync->committed));
  rec->rq.cache = (char *)cfg->name;
  rec->rq.partition = w->p;
  rec->rq.epoch = lp->pmap->epoch;
  repl_send_record(lp, w, &rec->rq, idx, owning, moving);
  return w->reply != NULL;
}

/* A write (or a read) on the partition's owner loop. Everything a write
 * needs is taken before it runs, so that once it has changed the store
 * its record always goes out (or its backups are demoted). 1 when the
 * reply waits (kept packed until released or failed), 0 when it left. */
static int repl_run(loop_t *lp, const Grid__Request *rq, uint32_t p, sink_t *sink,
                    int handed) {
  node_t *n = lp->node;
  if (lp->stopping) {
    /* After repl_close: nothing new may wait here (nobody would answer). */
    sink_error(lp, sink, rq->id, GRID_ECONN, "the node is stopping");
    return 0;
  }
  const pmap_group_t *pc = lp->pmap ? pmap_find_cache(lp->pmap, rq->cache) : NULL;
  store_cache_t *sc = store_view_find(&lp->view, rq->cache, strlen(rq->cache));
  if (!pc || !sc || !pmap_leads(pc, p, lp->self)) {
    sink_error(lp, sink, rq->id, GRID_ENOTREADY, "the partition changed owner: retry");
    return 0;
  }
  repl_part_t *part = repl_part(n->store, sc, p);
  struct repl_loop *rl = repl_loop(lp);
  if (!part || !rl) {
    sink_error(lp, sink, rq->id, GRID_ENOMEM, "replication state of the partition");
    return 0;
  }
  int write = op_is_write(rq->op);
  if (write && repl_full(lp, part, rq->id, sink)) return 0;
  /* This node leads again (promoted): what it holds is the truth now,
   * given-up writes included (their clients heard GRID_EUNKNOWN). */
  repl_order_resume(&part->order);
  uint32_t idx[PMAP_NODES_MAX];
  int owning[PMAP_NODES_MAX], moving[PMAP_NODES_MAX];
  size_t nb = 0;
  repl_write_t *w = NULL;
  if (write) {
    nb = repl_backups_of(lp, pc, p, store_cache_cfg(sc)->sync == GRID_SYNC_FULL, idx, owning,
                         moving);
    w = calloc(1, sizeof *w + nb * sizeof(repl_backup_t));
    if (!w) {
      sink_error(lp, sink, rq->id, GRID_ENOMEM, "replicating the write: not run");
      return 0;
    }
    *w = (repl_write_t){.part = part, .store = n->store, .p = p, .refs = 1, .sink = sink,
                        .nbackups = nb,
                        .deadline_ms = clock_mono_ms() + n->cfg.forward_timeout_ms};
  }
  arena_t a;
  arena_init(&a, 4096);
  Grid__Reply rp = GRID__REPLY__INIT;
  /* Writes of several keys are one record: BATCH, EXEC, a collection
   * command of several keys (SMOVE, LMOVE, a STORE form). */
  repl_rec_t rec = {.batch = rq->op == GRID__OP__BATCH || rq->op == GRID__OP__EXEC ||
                             (rq->op == GRID__OP__COLL && rq->n_keys > 0)};
  ops_execute_rec(n, &lp->view, rq, &rp, &a, repl_capture, &rec);
  if (rec.failed) rec.captured = 0;
  rp.epoch = lp->pmap->epoch;
  int waits = 0;
  if (w && (rec.captured || rec.failed)) {
    /* The write changed the store: it joins the partition's line. */
    store_cache_hold(sc);
    w->cache = sc;
    if (rec.captured) {
      rec.rq.change_op = (uint32_t)rq->op; /* backups keep it with the change */
      rec.rq.history = store_history_kept(sc);
      rec.rq.expired = rq->op == GRID__OP__EXPIRE_DUE;
      rec.rq.committed = atomic_load(&part->sync->committed);
      waits = repl_start_write(lp, rl, part, w, &rec, &rp, idx, owning, moving, handed);
    } else {
      repl_record_lost(lp, rl, part, w, idx, owning, moving, rq->id);
    }
    repl_advance(lp, part);
  } else {
    /* A read, or a write that changed nothing (its answer still depends
     * on the state it saw). */
    free(w);
    uint64_t release = atomic_load(&part->sync->applied);
    if (rq->op == GRID__OP__GET && rp.status == 0) release = rp.version & STORE_COUNTER_MASK;
    waits = repl_answer_when(lp, part, release, sink, &rp, handed);
  }
  repl_rec_free(&rec);
  arena_close(&a);
  return waits;
}

/* A request on its way to the loop that owns its partition; the task is
 * in it, so once it is made the trip cannot fail. */
typedef struct repl_handoff {
  loop_task_t task;
  sink_t *sink;
  uint64_t id;
  uint32_t p;
  size_t len;
  unsigned char buf[];
} repl_handoff_t;

static void repl_handoff_on_loop(loop_t *lp, void *arg) {
  repl_handoff_t *h = arg;
  Grid__Request *rq = grid__request__unpack(NULL, h->len, h->buf);
  if (rq) {
    /* Counted in lp->handoffs until answered: now, or when its kept reply
     * is released or failed. */
    if (!repl_run(lp, rq, h->p, h->sink, 1)) repl_handoff_answered(lp);
    grid__request__free_unpacked(rq, NULL);
  } else {
    repl_handoff_answered(lp);
    Grid__Reply err = GRID__REPLY__INIT;
    err.id = h->id;
    err.status = GRID_EINTERNAL;
    err.message = "a request could not cross loops";
    sink_deliver(lp, h->sink, &err);
  }
  free(h);
}

void repl_run_here(loop_t *lp, const Grid__Request *rq, uint32_t p, sink_t *sink) {
  GRID_ASSERT(repl_owner_loop(lp, p) == lp->index);
  repl_run(lp, rq, p, sink, 0);
}

void repl_execute(loop_t *lp, const Grid__Request *rq, uint32_t p, sink_t *sink, int ordered) {
  int owner = repl_owner_loop(lp, p);
  if (owner == lp->index) {
    repl_run(lp, rq, p, sink, 0);
    return;
  }
  if (rq->op == GRID__OP__GET && !ordered) {
    /* A read answers from any loop when what it saw is committed (and
     * nothing of its connection is ahead of it, in the owner's line). */
    store_cache_t *sc = store_view_find(&lp->view, rq->cache, strlen(rq->cache));
    store_part_sync_t *sync = sc ? store_part_sync(sc, p) : NULL;
    if (sync && atomic_load(&sync->committed) == atomic_load(&sync->applied)) {
      arena_t a;
      arena_init(&a, 4096);
      Grid__Reply rp = GRID__REPLY__INIT;
      ops_execute(lp->node, &lp->view, rq, &rp, &a);
      uint64_t release = rp.status == 0 ? (rp.version & STORE_COUNTER_MASK)
                                        : atomic_load(&sync->applied);
      if (release <= atomic_load(&sync->committed)) {
        rp.epoch = lp->pmap ? lp->pmap->epoch : 0;
        repl_deliver_leased(lp, sink, &rp, GRID_ECLUSTER);
        arena_close(&a);
        return;
      }
      arena_close(&a);
    }
  }
  loop_t *to = loops_at(lp->set, owner);
  int64_t max = lp->node->cfg.loop_handoffs_max;
  if (atomic_fetch_add_explicit(&to->handoffs, 1, memory_order_relaxed) >= max) {
    atomic_fetch_sub_explicit(&to->handoffs, 1, memory_order_relaxed);
    char detail[128];
    snprintf(detail, sizeof detail, "loop_handoffs_max (%lld) requests wait on the loop that "
             "owns partition %u", (long long)max, p);
    sink_error(lp, sink, rq->id, GRID_EBUSY, detail);
    return;
  }
  size_t len = grid__request__get_packed_size(rq);
  repl_handoff_t *h = malloc(sizeof *h + len);
  if (!h) {
    atomic_fetch_sub_explicit(&to->handoffs, 1, memory_order_relaxed);
    sink_error(lp, sink, rq->id, GRID_ENOMEM, "handing the request to its partition's loop");
    return;
  }
  h->task = (loop_task_t){.fn = repl_handoff_on_loop, .arg = h};
  h->sink = sink;
  h->id = rq->id;
  h->p = p;
  h->len = len;
  grid__request__pack(rq, h->buf);
  loop_post(lp, owner, &h->task);
}

/* ---- map changes and housekeeping ------------------------------------------- */

/* A pending write of a partition no longer led here: given up. */
static void repl_write_abandon(loop_t *lp, repl_write_t *w) {
  if (!w->answered && w->reply) {
    repl_fail_packed(lp, w->reply, GRID_EUNKNOWN,
                     "the partition changed primary before every copy acknowledged the write");
    w->reply = NULL;
    w->answered = 1;
  }
  /* Given up, not committed: a read waiting behind it must not see it
   * (the new primary may never have had it), so it is sent to retry
   * there instead; nor may a later read here (committed stays). */
  GRID_ASSERT(w->part); /* a write in the loop's list is in its FIFO */
  repl_order_abandon(&w->part->order, &w->ord);
  repl_fail_waits(lp, repl_order_take_waits(&w->part->order), GRID_ENOTREADY,
                  "the partition changed primary: retry");
}

/* A pending write under a new map: a backup no longer in sync no longer
 * holds it up; one the map still counts in sync after missing it is
 * demoted again. */
static void repl_write_on_map(loop_t *lp, const pmap_t *m, const pmap_group_t *pc,
                              repl_write_t *w) {
  node_t *n = lp->node;
  for (size_t i = 0; i < w->nbackups; i++) {
    repl_backup_t *b = &w->backups[i];
    if (b->state == REPL_ACKED) continue;
    int idx = pmap_node_index(m, b->node_id), in_sync = 0;
    for (uint32_t k = 1; idx >= 0 && k < pc->slots; k++) {
      int st;
      if (pmap_copy_at(pc, w->p, k, &st) == idx && st == PMAP_OWNING) in_sync = 1;
    }
    if (!in_sync) {
      b->state = REPL_ACKED;
      if (b->owning) repl_order_ack(&w->ord); /* the write waited for it */
    } else if (b->state == REPL_FAILED) {
      /* The map still counts a copy in sync that missed this write: the
       * demote was not acted on (the coordinator moved to another map
       * first, and a report names the map it was made in). Said again
       * for this map, until a map reflects it. */
      cluster_report_demote(n->cluster, pc->name, w->p, b->node_id); /* the group */
    }
  }
}

/* Partitions handed over from here: drained once no write is pending. */
static void repl_handoffs_on_map(loop_t *lp, const pmap_t *m) {
  node_t *n = lp->node;
  for (size_t c = 0; c < m->ngroups; c++) {
    const pmap_group_t *g = &m->groups[c];
    for (uint32_t p = 0; p < g->partitions; p++) {
      int st;
      if (lp->self < 0 || repl_owner_loop(lp, p) != lp->index ||
          pmap_copy_at(g, p, 0, &st) != lp->self || st != PMAP_HANDOFF)
        continue;
      /* Every cache of the group with a write of p in flight reports when
       * it drains (the last one for the group); none: drained now. */
      int pending = 0;
      for (size_t i = g->first_cache; i < g->first_cache + g->ncaches; i++) {
        repl_part_t *part = repl_busy_part(lp, m->caches[i].name, p);
        if (part) {
          part->handoff_epoch = m->epoch;
          pending = 1;
        }
      }
      if (!pending) cluster_report_drained(n->cluster, g->name, p, m->epoch);
    }
  }
}

/* Each partition this loop owns learns whether it is led here (the sweep
 * reads it). One it leads with no write pending: what it applied is as
 * committed as it gets (reads answer from it already), so its change
 * stream may go on to there. A promoted backup gets here before any write
 * comes, and subscribers resume at once. */
static void repl_commit_idle(loop_t *lp, const pmap_t *m) {
  store_view_refresh(&lp->view);
  int loops = loops_count(lp->set);
  for (size_t i = 0; i < lp->view.n; i++) {
    store_cache_t *sc = lp->view.caches[i];
    const pmap_group_t *g = pmap_find_cache(m, store_cache_cfg(sc)->name);
    if (!g) continue;
    for (uint32_t p = (uint32_t)lp->index; p < g->partitions; p += (uint32_t)loops) {
      store_part_sync_t *sy = store_part_sync(sc, p);
      int led = pmap_leads(g, p, lp->self);
      atomic_store_explicit(&sy->led, led, memory_order_relaxed);
      int in_sync = 0;
      for (uint32_t k = 1; !led && lp->self >= 0 && k < g->slots && !in_sync; k++) {
        int st;
        in_sync = pmap_copy_at(g, p, k, &st) == lp->self && st == PMAP_OWNING;
      }
      atomic_store_explicit(&sy->backup_in_sync, in_sync, memory_order_relaxed);
      uint64_t applied = atomic_load(&sy->applied);
      if (applied == atomic_load(&sy->committed) || !led) continue;
      repl_part_t *part = sy->repl;
      if (part && !repl_order_empty(&part->order)) continue;
      store_part_commit(sc, p, applied);
    }
  }
}

void repl_on_map(loop_t *lp) {
  if (lp->stopping) return; /* repl_close ran: nothing is kept any more */
  struct repl_loop *rl = repl_loop(lp);
  if (!rl || !lp->pmap) return;
  const pmap_t *m = lp->pmap;
  store_set_epoch(lp->node->store, m->epoch);
  /* Pending writes: a backup no longer in sync no longer holds them; a
   * partition no longer led here cannot finish them. */
  repl_write_t *next;
  for (repl_write_t *w = rl->writes; w; w = next) {
    next = w->lnext;
    const pmap_group_t *pc = pmap_find_cache(m, store_cache_cfg(w->cache)->name);
    if (!pc || lp->self < 0 || pmap_leader(pc, w->p) != lp->self) repl_write_abandon(lp, w);
    else repl_write_on_map(lp, m, pc, w);
  }
  /* Advancing frees writes, possibly several of the list: start over after
   * each (every round answers at least one). */
  for (int again = 1; again;) {
    again = 0;
    for (repl_write_t *w = rl->writes; w; w = w->lnext) {
      if (w->part && w->part->order.head == &w->ord && repl_order_ready(&w->ord)) {
        repl_advance(lp, w->part);
        again = 1;
        break;
      }
    }
  }
  repl_handoffs_on_map(lp, m);
  repl_fills_on_map(lp, m);
  repl_commit_idle(lp, m);
  atomic_store(&lp->repl_epoch, m->epoch);
}

void repl_cron(loop_t *lp, int64_t now_ms) {
  struct repl_loop *rl = lp->repl;
  if (!rl) return;
  uint64_t pending = 0;
  for (repl_write_t *w = rl->writes; w; w = w->lnext) {
    pending++;
    if (w->answered || now_ms < w->deadline_ms || !w->reply) continue;
    /* The client hears the outcome is unknown; the write stays in line
     * (applied here) until its backups answer or the map changes. A copy
     * that has not answered by now is taken as out of sync: the partition
     * is repaired (demote, refill) rather than held up without end. */
    repl_fail_packed(lp, w->reply, GRID_EUNKNOWN,
                     "backups did not acknowledge the write in time (forward_timeout_ms)");
    w->reply = NULL;
    w->answered = 1;
    for (size_t i = 0; i < w->nbackups; i++) {
      repl_backup_t *b = &w->backups[i];
      if (!b->owning || b->state != REPL_WAIT) continue;
      /* FAILED: each new map that still counts it in sync demotes it
       * again (repl_write_on_map), until one does not. */
      b->state = REPL_FAILED;
      repl_backup_missed(lp, w, b);
    }
  }
  metrics_set(&lp->metrics.repl_pending, pending);
  if (rl->fills_incomplete && lp->pmap) repl_fills_on_map(lp, lp->pmap);
  repl_expire_cron(lp, now_ms);
  for (repl_fill_t *f = rl->fills; f; f = f->next) repl_fill_step(lp, f, now_ms);
  if (now_ms - rl->fill_metrics_ms >= 1000) {
    rl->fill_metrics_ms = now_ms;
    repl_fill_metrics(lp);
  }
}

void repl_fail_packed(loop_t *lp, repl_packed_t *pk, int status, const char *why) {
  if (pk->handed) repl_handoff_answered(lp);
  Grid__Reply err = GRID__REPLY__INIT;
  err.id = pk->id;
  err.status = status;
  err.message = (char *)why;
  sink_deliver(lp, pk->sink, &err);
  free(pk);
}

/* Answers every read of l, waits taken out of their partition's order,
 * with an error instead. */
static void repl_fail_waits(loop_t *lp, repl_order_wait_t *l, int status, const char *why) {
  for (repl_order_wait_t *o = l, *next; o; o = next) {
    next = o->next;
    repl_wait_t *wt = repl_wait_of(o);
    repl_fail_packed(lp, wt->reply, status, why);
    free(wt);
  }
}

void repl_close(loop_t *lp) {
  struct repl_loop *rl = lp->repl;
  if (!rl) return;
  while (rl->writes) {
    repl_write_t *w = rl->writes;
    rl->writes = w->lnext;
    if (w->part) {
      /* The partition's writes are all in this list, freed here one by
       * one: its order forgets them at the first, and gives up its waits. */
      repl_fail_waits(lp, repl_order_close(&w->part->order), GRID_ECONN,
                      "the node is stopping");
    }
    if (!w->answered && w->reply) {
      repl_fail_packed(lp, w->reply, GRID_EUNKNOWN, "the node stopped before every copy acknowledged the write");
      w->reply = NULL;
      w->answered = 1;
    }
    w->part = NULL;
    repl_write_unref(w);
  }
  while (rl->fills) {
    repl_fill_t *f = rl->fills;
    rl->fills = f->next;
    /* A chunk in flight is failed by peer_close_all, which runs next: its
     * ack frees the fill. */
    if (f->inflight) f->orphan = 1;
    else free(f);
  }
  free(rl);
  lp->repl = NULL;
}
