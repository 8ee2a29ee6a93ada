#include <string.h>

#include "cluster.h"
#include "grid_types.h"
#include "node.h"
#include "ops.h"
#include "part.h"
#include "repl_int.h"

/* A primary's BATCH record: every entry applied together (no reader here
 * sees part of it), each checked as a client's write is. */
/* Entries of partition part applied together, as records (deleted: a
 * removal): a batch's REPL, or a delta fill's chunk. 0, or the error
 * answered in rp. */
static int repl_apply_entries(loop_t *lp, store_cache_t *sc, uint32_t part,
                              Grid__Entry *const *es, size_t n, uint8_t how, Grid__Reply *rp) {
  store_t *store = lp->node->store;
  store_record_t *recs = arena_alloc(&lp->arena, (n ? n : 1) * sizeof *recs);
  if (!recs) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, &lp->arena);
    return GRID_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const Grid__Entry *e = es[i];
    int rc = store_check_sizes(store, e->key.len, e->deleted ? 0 : e->value.len);
    if (rc != 0) {
      ops_reply_error(rp, rc, "in a replication record", &lp->arena);
      return rc;
    }
    store_record_t *r = &recs[i];
    store_key_init(sc, e->key.data, e->key.len, &r->key);
    if (r->key.part != part) {
      ops_reply_error(rp, GRID_EINVAL, "a record's entries are of two partitions", &lp->arena);
      return GRID_EINVAL;
    }
    /* An empty value arrives as NULL data: only `deleted` means a delete. */
    r->value = e->deleted ? NULL : e->value.data ? e->value.data : (uint8_t *)"";
    r->value_len = e->deleted ? 0 : e->value.len;
    r->type = (uint8_t)(e->type <= GRID_TYPE_MAX ? e->type : UINT8_MAX); /* refused */
    r->version = e->version;
    r->expire_at_ms = e->expire_at_ms;
  }
  size_t applied = 0;
  int rc = store_apply_batch(sc, recs, n, how, &applied);
  if (rc != 0) ops_reply_error(rp, rc, NULL, &lp->arena);
  return rc;
}

static void repl_apply_batch(loop_t *lp, store_cache_t *sc, uint32_t part,
                             const Grid__Request *rq, Grid__Reply *rp) {
  if ((int64_t)rq->n_records > lp->node->cfg.batch_keys_max) {
    ops_reply_error(rp, GRID_EBATCHTOOBIG, "in a replication record", &lp->arena);
    return;
  }
  if (repl_apply_entries(lp, sc, part, rq->records, rq->n_records, (uint8_t)rq->change_op, rp) ==
      0)
    store_part_committed_to(sc, part, rq->committed);
}

/* A delta fill's chunk: the primary's changes after what this copy held,
 * in counter order, applied as its records are. */
static void repl_apply_delta(loop_t *lp, store_cache_t *sc, uint32_t part,
                             const Grid__Request *rq, Grid__Reply *rp) {
  Grid__Entry **es = arena_alloc(&lp->arena, (rq->n_values ? rq->n_values : 1) * sizeof *es);
  if (!es) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, &lp->arena);
    return;
  }
  for (size_t i = 0; i < rq->n_values; i++) {
    es[i] = grid__entry__unpack(&lp->arena.pb, rq->values[i].len, rq->values[i].data);
    if (!es[i]) {
      ops_reply_error(rp, GRID_EPROTO, "a fill entry does not decode", &lp->arena);
      return;
    }
  }
  repl_apply_entries(lp, sc, part, es, rq->n_values, 0, rp);
}

void repl_on_peer_request(loop_t *lp, const char *from_node,
                          const Grid__Request *rq, Grid__Reply *rp) {
  rp->id = rq->id;
  const char *name = rq->cache ? rq->cache : "";
  store_cache_t *sc = store_view_find(&lp->view, name, strlen(name));
  if (!sc) {
    ops_reply_error(rp, GRID_ENOTREADY, "cache not here yet", &lp->arena);
    return;
  }
  /* Fencing: a primary of an older map is refused once this node knows
   * another primary for the partition (from its newest map: this loop's
   * copy may lag the loop that already acts on the new one). */
  uint32_t part = rq->op == GRID__OP__REPL
                      ? part_of(rq->key.data, rq->key.len, store_cache_cfg(sc)->partitions)
                      : rq->partition;
  if (part >= store_cache_cfg(sc)->partitions) {
    ops_reply_error(rp, GRID_EINVAL, "partition out of range", &lp->arena);
    return;
  }
  if (!cluster_accepts(lp->node->cluster, name, part, rq->epoch, from_node)) {
    ops_reply_error(rp, GRID_ESTALE,
                    rq->epoch > cluster_newest_epoch(lp->node->cluster)
                        ? "the record names a partition map this node never read"
                        : "not the partition's primary in this node's map",
                    &lp->arena);
    return;
  }
  store_t *store = lp->node->store;
  /* The primary keeps this cache's changes (it is followed): this copy
   * keeps them from now on too, so that it can take over its streams. */
  if (rq->history && !store_history_kept(sc)) store_keep_history(sc);
  if (rq->op == GRID__OP__REPL && rq->n_records > 0) {
    repl_apply_batch(lp, sc, part, rq, rp);
    return;
  }
  if (rq->op == GRID__OP__REPL) {
    /* A record passes the limits a client's write does: a primary under
     * other settings, or a forged record, must not put past them. */
    int rc = store_check_sizes(store, rq->key.len, rq->deleted ? 0 : rq->value.len);
    if (rc != 0) {
      ops_reply_error(rp, rc, "in a replication record", &lp->arena);
      return;
    }
    store_key_t k;
    store_key_init(sc, rq->key.data, rq->key.len, &k);
    /* An empty value arrives as NULL data: only `deleted` means a delete. */
    const void *value = rq->deleted ? NULL : rq->value.data ? rq->value.data : (uint8_t *)"";
    uint8_t type = (uint8_t)(rq->value_type <= GRID_TYPE_MAX ? rq->value_type : UINT8_MAX);
    rc = store_apply_change(sc, &k, value, rq->value.len, type, rq->version, rq->expire_at_ms,
                            (uint8_t)rq->change_op, rq->expired);
    if (rc != 0) ops_reply_error(rp, rc, NULL, &lp->arena);
    /* What the primary had committed when it sent this (read_from_backup
     * reads up to it here). */
    else store_part_committed_to(sc, part, rq->committed);
    return;
  }
  if (rq->op == GRID__OP__COMMITTED) {
    store_part_committed_to(sc, part, rq->committed);
    return;
  }
  /* FILL */
  for (size_t i = 0; i < rq->n_values; i++)
    atomic_fetch_add_explicit(&lp->node->fill_bytes_in, rq->values[i].len, memory_order_relaxed);
  if (rq->fill_mode == 1) {
    /* A probe: what this copy holds on disk; a fill follows, so until it
     * is complete the copy on disk is not one. */
    int whole;
    store_part_disk_state(sc, part, &rp->version, &whole);
    rp->found = whole != 0;
    int rc = store_part_mark_filling(sc, part);
    if (rc != 0) ops_reply_error(rp, rc, "marking the copy on disk as being filled", &lp->arena);
    return;
  }
  if (rq->fill_mode == 2) {
    repl_apply_delta(lp, sc, part, rq, rp);
    if (rp->status == 0 && rq->done) {
      int rc = store_part_filled(sc, part);
      if (rc != 0) ops_reply_error(rp, rc, "marking the filled copy whole on disk", &lp->arena);
      else atomic_fetch_add_explicit(&lp->node->fill_delta_parts, 1, memory_order_relaxed);
    }
    return;
  }
  if (rq->reset) store_part_reset(sc, rq->partition, rq->version);
  for (size_t i = 0; i < rq->n_values; i++) {
    /* A chunk: values[i] is a packed Entry. */
    Grid__Entry *e = grid__entry__unpack(&lp->arena.pb, rq->values[i].len, rq->values[i].data);
    if (!e) {
      ops_reply_error(rp, GRID_EPROTO, "a fill entry does not decode", &lp->arena);
      return;
    }
    int rc = store_check_sizes(store, e->key.len, e->value.len);
    if (rc != 0) {
      ops_reply_error(rp, rc, "in a fill entry", &lp->arena);
      return;
    }
    store_key_t k;
    store_key_init(sc, e->key.data, e->key.len, &k);
    rc = store_apply(sc, &k, e->value.data ? e->value.data : (uint8_t *)"", e->value.len,
                     (uint8_t)(e->type <= GRID_TYPE_MAX ? e->type : UINT8_MAX), e->version,
                     e->expire_at_ms);
    if (rc != 0) {
      ops_reply_error(rp, rc, NULL, &lp->arena);
      return;
    }
  }
  int rc = rq->done ? store_part_filled(sc, part) : 0;
  if (rc != 0) ops_reply_error(rp, rc, "marking the filled copy whole on disk", &lp->arena);
}

