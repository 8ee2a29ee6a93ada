#include <string.h>

#include "cluster.h"
#include "grid_types.h"
#include "node.h"
#include "ops.h"
#include "part.h"
#include "repl_int.h"

/* A primary's BATCH record: every entry applied together (no reader here
 * sees part of it), each checked as a client's write is. */
static void repl_apply_batch(loop_t *lp, store_cache_t *sc, uint32_t part,
                             const Grid__Request *rq, Grid__Reply *rp) {
  store_t *store = lp->node->store;
  if ((int64_t)rq->n_records > lp->node->cfg.batch_keys_max) {
    ops_reply_error(rp, GRID_EBATCHTOOBIG, "in a replication record", &lp->arena);
    return;
  }
  store_record_t *recs = arena_alloc(&lp->arena, rq->n_records * sizeof *recs);
  if (!recs) {
    ops_reply_error(rp, GRID_ENOMEM, NULL, &lp->arena);
    return;
  }
  for (size_t i = 0; i < rq->n_records; i++) {
    const Grid__Entry *e = rq->records[i];
    int rc = store_check_sizes(store, e->key.len, e->deleted ? 0 : e->value.len);
    if (rc != 0) {
      ops_reply_error(rp, rc, "in a replication record", &lp->arena);
      return;
    }
    store_record_t *r = &recs[i];
    store_key_init(sc, e->key.data, e->key.len, &r->key);
    if (r->key.part != part) {
      ops_reply_error(rp, GRID_EINVAL, "a batch record's entries are of two partitions",
                      &lp->arena);
      return;
    }
    /* An empty value arrives as NULL data: only `deleted` means a delete. */
    r->value = e->deleted ? NULL : e->value.data ? e->value.data : (uint8_t *)"";
    r->value_len = e->deleted ? 0 : e->value.len;
    r->type = (uint8_t)(e->type <= GRID_TYPE_MAX ? e->type : UINT8_MAX); /* refused */
    r->version = e->version;
    r->expire_at_ms = e->expire_at_ms;
  }
  size_t applied = 0;
  int rc = store_apply_batch(sc, recs, rq->n_records, (uint8_t)rq->change_op, &applied);
  if (rc != 0) ops_reply_error(rp, rc, NULL, &lp->arena);
  else store_part_committed_to(sc, part, rq->committed);
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
}

