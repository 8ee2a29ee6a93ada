#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "clock.h"
#include "cluster.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "peer.h"
#include "repl_int.h"

typedef struct repl_fill_chunk {
  arena_t arena;
  Grid__Request rq;
  size_t bytes;
  size_t n, cap;
  int failed;              /* out of memory: the chunk is not whole */
} repl_fill_chunk_t;

/* One entry packed into the chunk (deleted: a delta's removal). 0, or 1
 * when memory ran out. */
static int repl_fill_add(repl_fill_chunk_t *ch, const void *key, size_t key_len,
                         const void *value, size_t value_len, uint8_t type, uint64_t version,
                         int64_t expire_at_ms, int deleted) {
  if (ch->n == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 64;
    ProtobufCBinaryData *v = arena_alloc(&ch->arena, cap * sizeof *v);
    if (!v) {
      ch->failed = 1;
      return 1;
    }
    if (ch->n) memcpy(v, ch->rq.values, ch->n * sizeof *v);
    ch->rq.values = v;
    ch->cap = cap;
  }
  Grid__Entry e = GRID__ENTRY__INIT;
  e.key.data = (uint8_t *)key;
  e.key.len = key_len;
  e.value.data = (uint8_t *)value;
  e.value.len = value_len;
  e.type = type;
  e.version = version;
  e.expire_at_ms = expire_at_ms;
  e.deleted = deleted != 0;
  size_t len = grid__entry__get_packed_size(&e);
  uint8_t *buf = arena_alloc(&ch->arena, len ? len : 1);
  if (!buf) {
    ch->failed = 1;
    return 1;
  }
  grid__entry__pack(&e, buf);
  ch->rq.values[ch->n].data = buf;
  ch->rq.values[ch->n].len = len;
  ch->n++;
  ch->bytes += len;
  return 0;
}

static int repl_fill_entry_cb(void *ctx, const void *key, size_t key_len,
                              const void *value, size_t value_len, uint8_t type,
                              uint64_t version, int64_t expire_at_ms) {
  return repl_fill_add(ctx, key, key_len, value, value_len, type, version, expire_at_ms, 0);
}

static void repl_fill_rewind(repl_fill_t *f);

typedef struct repl_fill_ack {
  loop_t *lp;
  repl_fill_t *f;
  int last;
  uint64_t entries, bytes;       /* in the chunk: counted once acked */
} repl_fill_ack_t;

static void repl_fill_on_ack(void *arg, int status, const Grid__Reply *rp) {
  repl_fill_ack_t *a = arg;
  repl_fill_t *f = a->f;
  f->inflight = 0;
  if (f->orphan) { /* the loop's replication state is gone (stopping) */
    free(f);
    free(a);
    return;
  }
  if (status == 0 && rp->status != 0) status = rp->status;
  if (f->restart) {
    f->restart = 0;
    repl_fill_rewind(f);
    free(a);
    return; /* the next cron tick starts it again */
  }
  if (status != 0) {
    LOG_W("repl", "\"filling a copy failed: starting it again\" cache=%s partition=%u node=%s error=%s",
          f->cache, f->p, f->node_id, grid_err_name(status));
    f->started = 0; /* the cache again from its first chunk, which empties it */
    f->cursor = 0;
    f->mode = REPL_FILL_ASK;
    f->retry_at_ms = clock_mono_ms() + REPL_FILL_RETRY_MS;
  } else {
    f->entries += a->entries;
    f->bytes += a->bytes;
    metrics_bump(&a->lp->metrics.fill_entries, a->entries);
    metrics_bump(&a->lp->metrics.fill_bytes, a->bytes);
    if (a->last) {
      f->cache_done = 1;
      f->caches++;
    }
  }
  loop_t *lp = a->lp;
  free(a);
  if (!f->done && status == 0) repl_fill_step(lp, f, clock_mono_ms()); /* the next chunk now */
}

/* Whether this second's share of rebalance_bytes_per_sec has room. */
static int repl_fill_paced(loop_t *lp, int64_t now) {
  struct repl_loop *rl = lp->repl;
  int64_t per_sec = lp->node->cfg.rebalance_bytes_per_sec;
  if (now - rl->window_ms >= 1000) {
    rl->window_ms = now;
    rl->window_bytes = 0;
  }
  return per_sec <= 0 || rl->window_bytes < (uint64_t)per_sec;
}

/* The fill starts over from its group's first cache. */
static void repl_fill_rewind(repl_fill_t *f) {
  f->cache[0] = '\0';
  f->cache_done = 0;
  f->caches = 0;
  f->started = 0;
  f->cursor = 0;
  f->mode = REPL_FILL_ASK;
  f->done = 0;
  f->entries = f->bytes = 0;
}

/* Every cache of the group is filled: the copy is in sync. */
static void repl_fill_finished(loop_t *lp, repl_fill_t *f, int64_t now) {
  f->done = 1;
  /* The fill may have begun under an older map; it still holds in this
   * one (a fill no longer wanted is dropped on the map change). */
  f->epoch = lp->pmap->epoch;
  LOG_I("repl", "\"copy filled\" group=%s partition=%u node=%s caches=%llu entries=%llu bytes=%llu "
        "ms=%lld", f->group, f->p, f->node_id, (unsigned long long)f->caches,
        (unsigned long long)f->entries, (unsigned long long)f->bytes,
        (long long)(now - f->started_ms));
  cluster_report_ready(lp->node->cluster, f->group, f->p, f->node_id, f->epoch);
  f->reported = 1;
}

/* The cache to fill now: the current one until its last chunk is in,
 * then the group's next by name (a cache made or dropped meanwhile is
 * found or skipped as the map names it). NULL when none is left, or
 * (*wait) when the map names a cache this node does not hold yet (not
 * made here yet, or no memory for it): the fill waits for it rather than
 * call a copy filled without it. */
static store_cache_t *repl_fill_cache(loop_t *lp, repl_fill_t *f, const pmap_group_t *g,
                                      int *wait) {
  *wait = 0;
  for (;;) {
    if (!f->cache[0] || f->cache_done) {
      const char *next = pmap_group_cache_after(lp->pmap, g, f->cache);
      if (!next) return NULL;
      snprintf(f->cache, sizeof f->cache, "%s", next);
      f->cache_done = 0;
      f->started = 0;
      f->cursor = 0;
      f->mode = REPL_FILL_ASK;
    }
    store_cache_t *sc = store_view_find(&lp->view, f->cache, strlen(f->cache));
    if (sc) return sc;
    if (pmap_find_cache(lp->pmap, f->cache) != g) {
      f->cache_done = 1; /* dropped: the map no longer names it here */
      continue;
    }
    *wait = 1;
    return NULL;
  }
}

/* The fill starts over from its first chunk (which empties the copy),
 * not before REPL_FILL_RETRY_MS. */
static void repl_fill_again_later(repl_fill_t *f, int64_t now) {
  f->started = 0;
  f->cursor = 0;
  f->mode = REPL_FILL_ASK;
  f->retry_at_ms = now + REPL_FILL_RETRY_MS;
}

/* A FILL request of f's cache and partition, in ch (its arena made). */
static void repl_fill_chunk_start(loop_t *lp, const repl_fill_t *f, store_cache_t *sc,
                                  repl_fill_chunk_t *ch) {
  arena_init(&ch->arena, 64 * 1024);
  grid__request__init(&ch->rq);
  ch->rq.op = GRID__OP__FILL;
  ch->rq.cache = (char *)f->cache;
  ch->rq.partition = f->p;
  ch->rq.epoch = lp->pmap->epoch;
  ch->rq.history = store_history_kept(sc);
}

/* The fill's next chunk, from its cursor: whole buckets until it is big
 * enough, under the same lock as writes, so the chunk is the partition as
 * it is between two records. 0, or -1 when memory ran out. */
static int repl_fill_build(loop_t *lp, repl_fill_t *f, store_cache_t *sc, int64_t now,
                           repl_fill_chunk_t *ch) {
  repl_fill_chunk_start(lp, f, sc, ch);
  ch->rq.reset = !f->started;
  /* The copy's change history restarts here: the records after this
   * counter follow on the same link. */
  if (ch->rq.reset) ch->rq.version = store_part_last_version(sc, f->p);
  f->started = 1;
  do {
    store_scan_full(sc, f->p, &f->cursor, 64, clock_wall_ms(), repl_fill_entry_cb, ch);
  } while (!ch->failed && f->cursor != 0 && ch->n < REPL_FILL_CHUNK_ENTRIES &&
           ch->bytes < REPL_FILL_CHUNK_BYTES);
  ch->rq.n_values = ch->n;
  ch->rq.done = f->cursor == 0;
  return ch->failed ? -1 : 0;
}

/* A delta chunk's change: an entry as a record (deleted: removed). */
static int repl_fill_change_cb(void *ctx, const change_t *c) {
  repl_fill_chunk_t *ch = ctx;
  int put = c->kind == CHANGE_PUT;
  if (repl_fill_add(ch, c->key, c->key_len, put ? c->value : NULL, put ? c->value_len : 0,
                    c->type, c->version, put ? c->expire_at_ms : 0, !put))
    return 1;
  return ch->n >= REPL_FILL_CHUNK_ENTRIES || ch->bytes >= REPL_FILL_CHUNK_BYTES;
}

/* The next delta chunk: the changes after f->delta_after, as the
 * partition's history has them. 0; 1 when the history no longer has them
 * (the fill becomes a whole copy); -1 when memory ran out. */
static int repl_fill_build_delta(loop_t *lp, repl_fill_t *f, store_cache_t *sc,
                                 repl_fill_chunk_t *ch) {
  repl_fill_chunk_start(lp, f, sc, ch);
  ch->rq.fill_mode = 2;
  uint64_t next, upto;
  if (store_changes_since(sc, f->p, f->delta_after, REPL_FILL_CHUNK_ENTRIES, repl_fill_change_cb,
                          ch, &next, &upto) != CHANGES_OK)
    return 1;
  if (ch->failed) return -1;
  f->delta_after = next;
  ch->rq.n_values = ch->n;
  ch->rq.done = next >= upto;
  return 0;
}

typedef struct repl_fill_probe {
  loop_t *lp;
  repl_fill_t *f;
} repl_fill_probe_t;

/* The copy said what its disk holds: a delta from there, or a whole copy. */
static void repl_fill_on_probe(void *arg, int status, const Grid__Reply *rp) {
  repl_fill_probe_t *pr = arg;
  repl_fill_t *f = pr->f;
  loop_t *lp = pr->lp;
  free(pr);
  f->inflight = 0;
  if (f->orphan) {
    free(f);
    return;
  }
  if (status == 0 && rp->status != 0) status = rp->status;
  if (f->restart) {
    f->restart = 0;
    repl_fill_rewind(f);
    return;
  }
  if (status != 0) {
    repl_fill_again_later(f, clock_mono_ms());
    return;
  }
  store_cache_t *sc = store_view_find(&lp->view, f->cache, strlen(f->cache));
  int d = sc ? store_delta_from(sc, f->p, rp->version, rp->found) : STORE_DELTA_NO;
  if (d == STORE_DELTA_NO) {
    f->mode = REPL_FILL_WHOLE;
  } else {
    f->mode = REPL_FILL_DELTA;
    f->started = 1; /* no reset: the copy keeps what it has */
    f->delta_after = rp->version & STORE_COUNTER_MASK;
  }
  LOG_I("repl", "\"a restarted copy says what its disk holds\" cache=%s partition=%u node=%s "
        "version=%llu fill=%s", f->cache, f->p, f->node_id, (unsigned long long)rp->version,
        d == STORE_DELTA_NO ? "whole" : d == STORE_DELTA_NONE ? "nothing" : "delta");
  if (!f->done) repl_fill_step(lp, f, clock_mono_ms());
}

static int repl_fill_probe(loop_t *lp, repl_fill_t *f, int64_t now) {
  const pmap_node_t *nd = &lp->pmap->nodes[pmap_node_index(lp->pmap, f->node_id)];
  peer_t *peer = peer_get(lp, nd);
  repl_fill_probe_t *pr = malloc(sizeof *pr);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__FILL;
  rq.cache = f->cache;
  rq.partition = f->p;
  rq.epoch = lp->pmap->epoch;
  rq.fill_mode = 1;
  int rc = GRID_ENOMEM;
  if (peer && pr) {
    *pr = (repl_fill_probe_t){lp, f};
    rc = peer_call(peer, &rq, lp->node->cfg.forward_timeout_ms, repl_fill_on_probe, pr);
  }
  if (rc != 0) {
    free(pr);
    repl_fill_again_later(f, now);
    return rc;
  }
  f->inflight = 1;
  f->mode = REPL_FILL_PROBING;
  return 0;
}

void repl_fill_step(loop_t *lp, repl_fill_t *f, int64_t now) {
  if (f->done || f->inflight || f->failed || now < f->retry_at_ms) return;
  if (!repl_fill_paced(lp, now)) return; /* this second's share is spent */
  const pmap_group_t *g = lp->pmap ? pmap_find_group(lp->pmap, f->group) : NULL;
  int target = lp->pmap ? pmap_node_index(lp->pmap, f->node_id) : -1;
  if (!g || target < 0) {
    f->failed = 1;
    return;
  }
  if (!f->cache[0]) f->started_ms = now;
  int wait;
  store_cache_t *sc = repl_fill_cache(lp, f, g, &wait);
  if (wait) {
    f->retry_at_ms = now + REPL_FILL_RETRY_MS;
    return;
  }
  if (!sc) {
    repl_fill_finished(lp, f, now);
    return;
  }
  /* A persistent cache's copy may hold most of it on disk: asked first. */
  if (f->mode == REPL_FILL_ASK && store_cache_disk(sc)) {
    repl_fill_probe(lp, f, now);
    return;
  }
  if (f->mode == REPL_FILL_PROBING) return;
  repl_fill_chunk_t ch = {0};
  int built = -1;
  if (f->mode == REPL_FILL_DELTA) {
    built = repl_fill_build_delta(lp, f, sc, &ch);
    if (built == 1) {
      /* The history moved past the copy meanwhile: a whole copy. */
      arena_close(&ch.arena);
      f->mode = REPL_FILL_WHOLE;
      f->started = 0;
      f->cursor = 0;
      memset(&ch, 0, sizeof ch);
      built = repl_fill_build(lp, f, sc, now, &ch);
    }
  } else {
    built = repl_fill_build(lp, f, sc, now, &ch);
  }
  if (built != 0) {
    /* Not sent short: the copy would miss what did not fit. */
    LOG_W("repl", "\"out of memory building a fill chunk: starting the fill again\" cache=%s "
          "partition=%u node=%s", f->cache, f->p, f->node_id);
    repl_fill_again_later(f, now);
    arena_close(&ch.arena);
    return;
  }
  const pmap_node_t *nd = &lp->pmap->nodes[target];
  peer_t *peer = peer_get(lp, nd);
  repl_fill_ack_t *a = malloc(sizeof *a);
  int rc = GRID_ENOMEM;
  if (peer && a) {
    *a = (repl_fill_ack_t){lp, f, ch.rq.done, ch.n, ch.bytes};
    rc = peer_call(peer, &ch.rq, lp->node->cfg.forward_timeout_ms, repl_fill_on_ack, a);
  }
  if (rc != 0) {
    free(a);
    repl_fill_again_later(f, now);
  } else {
    f->inflight = 1;
    lp->repl->window_bytes += ch.bytes;
  }
  arena_close(&ch.arena);
}

repl_fill_t *repl_fill_find(struct repl_loop *rl, const char *group, uint32_t p,
                                   const char *node) {
  for (repl_fill_t *f = rl->fills; f; f = f->next)
    if (f->p == p && strcmp(f->group, group) == 0 && strcmp(f->node_id, node) == 0) return f;
  return NULL;
}

void repl_fill_restart(loop_t *lp, const char *group, uint32_t p, const char *node) {
  struct repl_loop *rl = lp->repl;
  repl_fill_t *f = rl ? repl_fill_find(rl, group, p, node) : NULL;
  if (f) {
    f->reported = 0;
    if (!f->inflight) repl_fill_rewind(f);
    else f->restart = 1; /* once the chunk in flight is answered */
    f->done = 0;
  }
  cluster_report_withdraw(lp->node->cluster, group, p, node);
}

void repl_fills_on_map(loop_t *lp, const pmap_t *m) {
  struct repl_loop *rl = lp->repl;
  node_t *n = lp->node;
  /* A fill already done is reported again for this epoch. */
  rl->fills_incomplete = 0;
  for (repl_fill_t *f = rl->fills; f; f = f->next) f->failed = 1; /* unless still wanted */
  for (size_t c = 0; c < m->ngroups; c++) {
    const pmap_group_t *pc = &m->groups[c];
    for (uint32_t p = 0; p < pc->partitions; p++) {
      if (repl_owner_loop(lp, p) != lp->index || !pmap_leads(pc, p, lp->self)) continue;
      for (uint32_t k = 1; k < pc->slots; k++) {
        int st;
        int idx = pmap_copy_at(pc, p, k, &st);
        if (idx < 0 || st != PMAP_MOVING) continue;
        repl_fill_t *f = repl_fill_find(rl, pc->name, p, m->nodes[idx].id);
        if (f) {
          f->failed = 0;
          if (f->done) {
            f->epoch = m->epoch;
            cluster_report_ready(n->cluster, f->group, p, f->node_id, f->epoch);
          }
          continue;
        }
        f = calloc(1, sizeof *f);
        if (!f) {
          rl->fills_incomplete = 1; /* repl_cron tries again */
          continue;
        }
        snprintf(f->group, sizeof f->group, "%s", pc->name);
        f->p = p;
        snprintf(f->node_id, sizeof f->node_id, "%s", m->nodes[idx].id);
        f->epoch = m->epoch;
        f->next = rl->fills;
        rl->fills = f;
      }
    }
  }
  repl_fill_t **l = &rl->fills;
  while (*l) {
    repl_fill_t *f = *l;
    if (f->failed && !f->inflight) {
      *l = f->next;
      free(f);
    } else {
      l = &f->next;
    }
  }
}


/* What the fills in progress have left: each one's partition in every
 * cache of its group (entries and their bytes, as the store counts them)
 * less what it sent in this pass. Bounded: past REPL_FILL_METRICS_LOOKUPS
 * partition sizes, the fills not looked at count as the average of those
 * that were. */
void repl_fill_metrics(loop_t *lp) {
  struct repl_loop *rl = lp->repl;
  uint64_t fills = 0, looked = 0, lookups = 0, entries_left = 0, bytes_left = 0;
  for (repl_fill_t *f = rl->fills; f; f = f->next) {
    if (f->done || f->orphan) continue;
    fills++;
    const pmap_group_t *g = lp->pmap ? pmap_find_group(lp->pmap, f->group) : NULL;
    if (!g || lookups + g->ncaches > REPL_FILL_METRICS_LOOKUPS) continue;
    uint64_t entries = 0, bytes = 0;
    for (size_t i = 0; i < g->ncaches; i++) {
      const char *name = lp->pmap->caches[g->first_cache + i].name;
      store_cache_t *sc = store_view_find(&lp->view, name, strlen(name));
      if (!sc) continue;
      entries += store_part_size(sc, f->p);
      bytes += store_part_bytes(sc, f->p);
    }
    lookups += g->ncaches;
    looked++;
    uint64_t left = entries > f->entries ? entries - f->entries : 0;
    entries_left += left;
    bytes_left += entries ? (uint64_t)((double)bytes * (double)left / (double)entries) : 0;
  }
  if (looked && looked < fills) {
    entries_left = (uint64_t)((double)entries_left * (double)fills / (double)looked);
    bytes_left = (uint64_t)((double)bytes_left * (double)fills / (double)looked);
  }
  metrics_set(&lp->metrics.fills, fills);
  metrics_set(&lp->metrics.fill_entries_left, entries_left);
  metrics_set(&lp->metrics.fill_bytes_left, bytes_left);
}
