#include "pmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "grid_types.h"
#include "grid.pb-c.h"
#include "log.h"

void pmap_init(pmap_t *m) { memset(m, 0, sizeof *m); }

void pmap_free(pmap_t *m) {
  for (size_t i = 0; i < m->ncaches; i++) {
    free(m->caches[i].owners);
    free(m->caches[i].states);
  }
  free(m->caches);
  pmap_init(m);
}

static int pmap_cache_alloc(pmap_cache_t *c) {
  size_t n = (size_t)c->partitions * c->slots;
  c->owners = calloc(n ? n : 1, 1);
  c->states = calloc(n ? n : 1, 1);
  return c->owners && c->states ? 0 : GRID_ENOMEM;
}

int pmap_copy(pmap_t *dst, const pmap_t *src) {
  pmap_init(dst);
  GRID_ASSERT(src->nnodes <= PMAP_NODES_MAX);
  dst->epoch = src->epoch;
  dst->nnodes = src->nnodes;
  memcpy(dst->nodes, src->nodes, src->nnodes * sizeof src->nodes[0]);
  memcpy(dst->coordinator, src->coordinator, sizeof dst->coordinator);
  dst->caches = calloc(src->ncaches ? src->ncaches : 1, sizeof *dst->caches);
  if (!dst->caches) return GRID_ENOMEM;
  for (size_t i = 0; i < src->ncaches; i++) {
    dst->caches[i] = src->caches[i];
    dst->ncaches = i + 1;
    if (pmap_cache_alloc(&dst->caches[i]) != 0) {
      dst->caches[i].owners = dst->caches[i].states = NULL;
      pmap_free(dst);
      return GRID_ENOMEM;
    }
    size_t n = (size_t)src->caches[i].partitions * src->caches[i].slots;
    memcpy(dst->caches[i].owners, src->caches[i].owners, n);
    memcpy(dst->caches[i].states, src->caches[i].states, n);
  }
  return 0;
}

/* The best `want` nodes by rendezvous rank; zones honoured when asked. */
static size_t pmap_rank(const pmap_node_t *nodes, size_t n, uint32_t p,
                        size_t want, int zones, uint32_t *out) {
  /* Selection by repeated maximum: n and want are small (<= 255). */
  GRID_ASSERT(n <= PMAP_NODES_MAX);
  uint64_t score[PMAP_NODES_MAX];
  unsigned char taken[PMAP_NODES_MAX] = {0};
  for (size_t i = 0; i < n; i++) {
    score[i] = XXH3_64bits_withSeed(nodes[i].id, strlen(nodes[i].id), p);
    /* A leaving or absent node is nobody's ideal owner. */
    taken[i] = nodes[i].leaving != 0 || nodes[i].absent != 0;
  }
  size_t got = 0;
  while (got < want) {
    int best = -1;
    for (size_t i = 0; i < n; i++) {
      if (taken[i]) continue;
      if (best < 0 || score[i] > score[best] ||
          (score[i] == score[best] && strcmp(nodes[i].id, nodes[best].id) < 0))
        best = (int)i;
    }
    if (best < 0) break;
    taken[best] = 1;
    int zone_used = 0;
    if (zones && nodes[best].zone[0]) {
      for (size_t k = 0; k < got; k++)
        if (strcmp(nodes[out[k]].zone, nodes[best].zone) == 0) zone_used = 1;
    }
    if (!zone_used) out[got++] = (uint32_t)best;
  }
  GRID_ASSERT(got <= want && got <= n);
  return got;
}

size_t pmap_ideal(const pmap_node_t *nodes, size_t n, uint32_t p, size_t want,
                  uint32_t *out) {
  return pmap_rank(nodes, n, p, want, 1, out);
}

const pmap_cache_t *pmap_find_cache(const pmap_t *m, const char *name) {
  for (size_t i = 0; i < m->ncaches; i++)
    if (strcmp(m->caches[i].name, name) == 0) return &m->caches[i];
  return NULL;
}

int pmap_self_index(const pmap_t *m, const char *node_id, uint64_t incarnation) {
  int i = pmap_node_index(m, node_id);
  if (i < 0) return -1;
  uint64_t inc = m->nodes[i].incarnation;
  return inc == 0 || incarnation == 0 || inc == incarnation ? i : -1;
}

size_t pmap_live_nodes(const pmap_t *m) {
  size_t n = 0;
  for (size_t i = 0; i < m->nnodes; i++) n += !m->nodes[i].absent;
  return n;
}

int pmap_node_index(const pmap_t *m, const char *node_id) {
  for (size_t i = 0; i < m->nnodes; i++)
    if (strcmp(m->nodes[i].id, node_id) == 0) return (int)i;
  return -1;
}

int pmap_copy_at(const pmap_cache_t *c, uint32_t p, uint32_t i, int *state) {
  if (p >= c->partitions || i >= c->slots) {
    *state = PMAP_NONE;
    return -1;
  }
  size_t at = (size_t)p * c->slots + i;
  *state = c->states[at];
  return c->owners[at] ? c->owners[at] - 1 : -1;
}

int pmap_primary(const pmap_cache_t *c, uint32_t p) {
  int state;
  int idx = pmap_copy_at(c, p, 0, &state);
  return state == PMAP_OWNING ? idx : -1;
}

int pmap_leader(const pmap_cache_t *c, uint32_t p) {
  int state;
  int idx = pmap_copy_at(c, p, 0, &state);
  return state == PMAP_OWNING || state == PMAP_HANDOFF ? idx : -1;
}

/* A copy made OWNING by a fill report in this very step: it may not lead
 * yet, since its primary did not wait for its acknowledgements until now
 * (cleared before the map is written). */
#define PMAP_JUST_FILLED 0x80

/* One partition's copies while the next map is worked out. */
typedef struct pmap_list {
  size_t n;
  uint32_t node[PMAP_NODES_MAX]; /* index into the alive list, each node once */
  uint8_t state[PMAP_NODES_MAX];
  int lost;
} pmap_list_t;

/* What every partition's step reads: the current map, the nodes alive now
 * and the reports made at the current map's epoch. */
typedef struct pmap_step {
  const pmap_t *cur;
  const pmap_node_t *alive;
  size_t nalive;
  const pmap_ready_t *ready;
  size_t nready;
} pmap_step_t;

static int pmap_list_find(const pmap_list_t *l, uint32_t node) {
  for (size_t i = 0; i < l->n; i++)
    if (l->node[i] == node) return (int)i;
  return -1;
}

enum { PMAP_REPORT_FILLED, PMAP_REPORT_DEMOTE, PMAP_REPORT_DRAINED };

/* Whether alive node a reported (kind) on partition p of cache at the
 * current epoch: a report made under an older map is stale. */
static int pmap_is_reported(const pmap_step_t *st, const char *cache, uint32_t p,
                            uint32_t a, int kind) {
  const char *node_id = st->alive[a].id;
  for (size_t i = 0; i < st->nready; i++) {
    const pmap_ready_t *r = &st->ready[i];
    int k = r->drained ? PMAP_REPORT_DRAINED : r->demote ? PMAP_REPORT_DEMOTE : PMAP_REPORT_FILLED;
    if (r->partition == p && r->epoch == st->cur->epoch && k == kind &&
        strcmp(r->cache, cache) == 0 && strcmp(r->node_id, node_id) == 0)
      return 1;
  }
  return 0;
}

/* The alive node that holds what `was` held: the same id, and the same
 * incarnation (a node restarted under its id holds none of it). */
static int pmap_alive_index(const pmap_node_t *alive, size_t nalive, const pmap_node_t *was) {
  for (size_t i = 0; i < nalive; i++) {
    if (strcmp(alive[i].id, was->id) != 0) continue;
    int same = !alive[i].incarnation || !was->incarnation ||
               alive[i].incarnation == was->incarnation;
    return same ? (int)i : -1;
  }
  return -1;
}

/* Makes the ideal owners the partition's only copies, all OWNING. */
static void pmap_list_set_ideal(pmap_list_t *l, const uint32_t *ideal, size_t nideal) {
  l->n = 0;
  for (size_t i = 0; i < nideal; i++) {
    l->node[l->n] = ideal[i];
    l->state[l->n++] = PMAP_OWNING;
  }
}

static void pmap_list_clear_just_filled(pmap_list_t *l) {
  for (size_t i = 0; i < l->n; i++) l->state[i] &= (uint8_t)~PMAP_JUST_FILLED;
}

/* Lists the copies cc gives partition p on nodes still alive, with the
 * fill and demote reports applied. A node named twice (only a damaged map
 * does that) is listed once, so that the list never holds more copies than
 * there are nodes. Returns whether any copy was in sync, alive or not. */
static int pmap_list_current(const pmap_step_t *st, const pmap_cache_t *cc,
                             const char *cache, uint32_t p, pmap_list_t *l) {
  int had_owning = 0;
  for (uint32_t i = 0; i < cc->slots; i++) {
    int s;
    int idx = pmap_copy_at(cc, p, i, &s);
    if (idx < 0 || s == PMAP_NONE) continue;
    /* pmap_decode and pmap_next only make maps whose owners are nodes of
     * the map. */
    GRID_ASSERT((size_t)idx < st->cur->nnodes);
    if (s == PMAP_OWNING || s == PMAP_HANDOFF) had_owning = 1;
    int a = pmap_alive_index(st->alive, st->nalive, &st->cur->nodes[idx]);
    if (a < 0) continue; /* its node is gone, or restarted */
    if (pmap_list_find(l, (uint32_t)a) >= 0) continue;
    if (s == PMAP_MOVING && pmap_is_reported(st, cache, p, (uint32_t)a, PMAP_REPORT_FILLED))
      s = PMAP_OWNING | PMAP_JUST_FILLED;
    else if (s == PMAP_OWNING && i > 0 &&
             pmap_is_reported(st, cache, p, (uint32_t)a, PMAP_REPORT_DEMOTE))
      s = PMAP_MOVING;
    l->node[l->n] = (uint32_t)a;
    l->state[l->n++] = (uint8_t)s;
  }
  return had_owning;
}

/* The first copy in sync on a live node (a copy filled in this very step
 * is not yet), or -1; *absent_in_sync tells whether a node marked absent
 * holds one in sync. */
static int pmap_list_first_in_sync(const pmap_list_t *l, const pmap_node_t *alive,
                                   int *absent_in_sync) {
  int owning = -1;
  *absent_in_sync = 0;
  for (size_t i = 0; i < l->n; i++) {
    int in_sync = l->state[i] == PMAP_OWNING || l->state[i] == PMAP_HANDOFF;
    if (in_sync && alive[l->node[i]].absent) *absent_in_sync = 1;
    else if (in_sync && owning < 0) owning = (int)i;
  }
  return owning;
}

/* Drops the copies on absent nodes, as a dead node's; returns where the
 * copy at keep (on a live node) is now. */
static int pmap_list_drop_absent(pmap_list_t *l, const pmap_node_t *alive, int keep) {
  size_t k = 0;
  int kept = -1;
  for (size_t i = 0; i < l->n; i++) {
    if (alive[l->node[i]].absent) continue;
    if ((int)i == keep) kept = (int)k;
    l->node[k] = l->node[i];
    l->state[k++] = l->state[i];
  }
  l->n = k;
  GRID_ASSERT(kept >= 0);
  return kept;
}

/* Whether alive node a holds copy 0 of p in cur, leading or handing over. */
static int pmap_is_current_primary(const pmap_step_t *st, const pmap_cache_t *cc,
                                   uint32_t p, uint32_t a) {
  int s;
  int old = pmap_copy_at(cc, p, 0, &s);
  return old >= 0 && (s == PMAP_OWNING || s == PMAP_HANDOFF) &&
         strcmp(st->cur->nodes[old].id, st->alive[a].id) == 0;
}

/* Puts the copy at owning (in sync) first, to lead. When that changes the
 * primary, every other copy becomes MOVING, since it may hold writes the
 * new primary never saw (the new primary fills it again). */
static void pmap_list_promote(pmap_list_t *l, int owning, int same_primary) {
  GRID_ASSERT(owning >= 0 && (size_t)owning < l->n);
  if (owning > 0) {
    uint32_t nd = l->node[owning];
    memmove(&l->node[1], &l->node[0], (size_t)owning * sizeof l->node[0]);
    memmove(&l->state[1], &l->state[0], (size_t)owning);
    l->node[0] = nd;
    l->state[0] = PMAP_OWNING;
  }
  if (!same_primary)
    for (size_t i = 1; i < l->n; i++) l->state[i] = PMAP_MOVING;
  GRID_ASSERT(l->state[0] == PMAP_OWNING || l->state[0] == PMAP_HANDOFF);
}

/* Gives each ideal owner without a copy one, MOVING; returns how many
 * ideal owners are in sync (a copy filled in this very step is not yet). */
static size_t pmap_list_add_ideal(pmap_list_t *l, const uint32_t *ideal, size_t nideal) {
  size_t ideal_owning = 0;
  for (size_t i = 0; i < nideal; i++) {
    int at = pmap_list_find(l, ideal[i]);
    if (at < 0) {
      /* Nodes are listed once each, and there are no more than that. */
      GRID_ASSERT(l->n < PMAP_NODES_MAX);
      l->node[l->n] = ideal[i];
      l->state[l->n++] = PMAP_MOVING;
    } else if (l->state[at] == PMAP_OWNING || l->state[at] == PMAP_HANDOFF) {
      ideal_owning++;
    }
  }
  return ideal_owning;
}

/* Every ideal owner is in sync: the ideal layout takes over. Another
 * primary takes over in two steps: the primary hands off (takes no new
 * request), then, once it reported every write in flight acknowledged,
 * the new one leads, and every copy is still in sync. */
static void pmap_list_move_to_ideal(const pmap_step_t *st, const char *cache, uint32_t p,
                                    const uint32_t *ideal, size_t nideal, int handing_off,
                                    pmap_list_t *l) {
  if (l->node[0] != ideal[0]) {
    if (!handing_off) {
      l->state[0] = PMAP_HANDOFF;
      return;
    }
    if (!pmap_is_reported(st, cache, p, l->node[0], PMAP_REPORT_DRAINED)) return;
  }
  pmap_list_set_ideal(l, ideal, nideal);
}

/* Works out the copies of partition p of one cache (the rules are in
 * pmap.h); cc is the cache in the current map, NULL when it is new. */
static void pmap_next_partition(const pmap_step_t *st, const pmap_cache_t *cc,
                                const pmap_cache_def_t *def, uint32_t p, pmap_list_t *l) {
  uint32_t ideal[PMAP_NODES_MAX];
  /* A replicated cache has a copy on every node, zones or not. */
  size_t want = def->replicated ? st->nalive : (size_t)def->backups + 1;
  size_t nideal = pmap_rank(st->alive, st->nalive, p, want, !def->replicated, ideal);
  memset(l, 0, sizeof *l);
  if (!cc || cc->partitions != def->partitions) {
    /* A cache new to the map: empty, so its ideal owners own it now. With
     * no node alive it has no copy (not LOST: it never had data). */
    pmap_list_set_ideal(l, ideal, nideal);
    return;
  }
  int state0;
  pmap_copy_at(cc, p, 0, &state0);
  if (state0 == PMAP_LOST) {
    l->lost = 1;
    return;
  }
  int had_owning = pmap_list_current(st, cc, def->name, p, l);
  int absent_in_sync;
  int owning = pmap_list_first_in_sync(l, st->alive, &absent_in_sync);
  if (owning < 0 && absent_in_sync) {
    /* Only an absent node holds it in sync: it waits for that node as it
     * is (nothing to promote), rather than being declared lost. */
    pmap_list_clear_just_filled(l);
    return;
  }
  if (owning < 0) {
    /* Nothing in sync is left: with data, the partition is lost; a
     * partition that never had an owner (no node was alive) starts anew,
     * with no copy while no node is alive. */
    if (had_owning) {
      l->lost = 1;
      l->n = 0;
    } else {
      pmap_list_set_ideal(l, ideal, nideal);
    }
    return;
  }
  /* A live copy leads: the absent nodes' copies go, as a dead node's. */
  owning = pmap_list_drop_absent(l, st->alive, owning);
  pmap_list_promote(l, owning, pmap_is_current_primary(st, cc, p, l->node[owning]));
  int handing_off = l->state[0] == PMAP_HANDOFF;
  size_t ideal_owning = pmap_list_add_ideal(l, ideal, nideal);
  pmap_list_clear_just_filled(l);
  if (nideal == 0 || ideal_owning < nideal) {
    /* The handover is off until every ideal owner is in sync again (a
     * copy demoted, a node joined): meanwhile the primary serves. */
    if (handing_off) l->state[0] = PMAP_OWNING;
    return;
  }
  pmap_list_move_to_ideal(st, def->name, p, ideal, nideal, handing_off, l);
}

/* Writes partition p's copies, as worked out, into oc of a map of nnodes
 * nodes. */
static void pmap_put_partition(pmap_cache_t *oc, size_t nnodes, uint32_t p,
                               const pmap_list_t *l) {
  /* The first pass sized the slots for the widest partition, and a lost
   * partition keeps no copy. */
  GRID_ASSERT(l->n <= oc->slots && (!l->lost || l->n == 0));
  size_t at = (size_t)p * oc->slots;
  if (l->lost) {
    oc->states[at] = PMAP_LOST;
    return;
  }
  for (size_t i = 0; i < l->n; i++) {
    /* Every copy names a node of the map, in a state a map may hold. */
    GRID_ASSERT(l->node[i] < nnodes && l->state[i] != PMAP_NONE && l->state[i] <= PMAP_HANDOFF);
    oc->owners[at + i] = (uint8_t)(l->node[i] + 1);
    oc->states[at + i] = l->state[i];
  }
}

/* Fills oc, the next map's entry for def (cc: the current one, or NULL),
 * using l as scratch. 0 or GRID_ENOMEM. */
static int pmap_next_cache(const pmap_step_t *st, const pmap_cache_def_t *def,
                           const pmap_cache_t *cc, pmap_cache_t *oc, pmap_list_t *l) {
  snprintf(oc->name, sizeof oc->name, "%s", def->name);
  oc->partitions = def->partitions;
  oc->backups = def->backups;
  oc->replicated = def->replicated;
  /* Two passes: the first finds how many slots the widest partition
   * needs, the second fills them (the rules are pure functions, so both
   * passes work out the same copies). */
  uint32_t slots = 1;
  for (uint32_t p = 0; p < def->partitions; p++) {
    pmap_next_partition(st, cc, def, p, l);
    if (l->n > slots) slots = (uint32_t)l->n;
  }
  oc->slots = slots;
  int rc = pmap_cache_alloc(oc);
  if (rc != 0) return rc;
  for (uint32_t p = 0; p < def->partitions; p++) {
    pmap_next_partition(st, cc, def, p, l);
    pmap_put_partition(oc, st->nalive, p, l);
  }
  return 0;
}

/* Whether next differs from cur (NULL: there is none): other nodes, other
 * caches, or any copy moved or changed state. */
static int pmap_differs(const pmap_t *cur, const pmap_t *next) {
  if (!cur || cur->nnodes != next->nnodes || cur->ncaches != next->ncaches) return 1;
  for (size_t i = 0; i < next->nnodes; i++) {
    const pmap_node_t *a = &cur->nodes[i], *b = &next->nodes[i];
    if (strcmp(a->id, b->id) != 0 || strcmp(a->addr, b->addr) != 0 ||
        a->leaving != b->leaving || a->incarnation != b->incarnation || a->absent != b->absent)
      return 1;
  }
  for (size_t d = 0; d < next->ncaches; d++) {
    const pmap_cache_t *a = pmap_find_cache(cur, next->caches[d].name);
    const pmap_cache_t *b = &next->caches[d];
    if (!a || a->partitions != b->partitions) return 1;
    uint32_t k = a->slots > b->slots ? a->slots : b->slots;
    for (uint32_t p = 0; p < b->partitions; p++) {
      for (uint32_t i = 0; i < k; i++) {
        int sa, sb;
        int na = pmap_copy_at(a, p, i, &sa), nb = pmap_copy_at(b, p, i, &sb);
        const char *ida = na >= 0 ? cur->nodes[na].id : "";
        const char *idb = nb >= 0 ? next->nodes[nb].id : "";
        if (sa != sb || strcmp(ida, idb) != 0) return 1;
      }
    }
  }
  return 0;
}

int pmap_next(const pmap_t *cur, const pmap_node_t *alive, size_t nalive,
              const pmap_cache_def_t *defs, size_t ndefs,
              const pmap_ready_t *ready, size_t nready, pmap_t *out,
              int *changed) {
  GRID_ASSERT(out->caches == NULL && out->ncaches == 0); /* pmap_init'ed */
  if (cur && cur->epoch == 0) cur = NULL;
  if (nalive > PMAP_NODES_MAX) nalive = PMAP_NODES_MAX;
  out->nnodes = nalive;
  memcpy(out->nodes, alive, nalive * sizeof *alive);
  out->caches = calloc(ndefs ? ndefs : 1, sizeof *out->caches);
  if (!out->caches) return GRID_ENOMEM;
  pmap_list_t *l = malloc(sizeof *l);
  if (!l) return GRID_ENOMEM;
  const pmap_step_t st = {cur, alive, nalive, ready, nready};
  int rc = 0;
  for (size_t d = 0; d < ndefs && rc == 0; d++) {
    const pmap_cache_t *cc = cur ? pmap_find_cache(cur, defs[d].name) : NULL;
    out->ncaches = d + 1;
    rc = pmap_next_cache(&st, &defs[d], cc, &out->caches[d], l);
  }
  free(l);
  if (rc != 0) return rc;
  *changed = pmap_differs(cur, out);
  return 0;
}

int pmap_encode(const pmap_t *m, unsigned char **buf, size_t *len) {
  GRID_ASSERT(m->nnodes <= PMAP_NODES_MAX);
  Grid__Pmap pm = GRID__PMAP__INIT;
  Grid__PmapNode *nodes = calloc(m->nnodes + 1, sizeof *nodes);
  Grid__PmapNode **np = calloc(m->nnodes + 1, sizeof *np);
  Grid__PmapCache *caches = calloc(m->ncaches + 1, sizeof *caches);
  Grid__PmapCache **cp = calloc(m->ncaches + 1, sizeof *cp);
  int rc = GRID_ENOMEM;
  if (!nodes || !np || !caches || !cp) goto out;
  pm.epoch = m->epoch;
  pm.coordinator = (char *)m->coordinator;
  for (size_t i = 0; i < m->nnodes; i++) {
    grid__pmap_node__init(&nodes[i]);
    nodes[i].id = (char *)m->nodes[i].id;
    nodes[i].addr = (char *)m->nodes[i].addr;
    nodes[i].zone = (char *)m->nodes[i].zone;
    nodes[i].leaving = m->nodes[i].leaving != 0;
    nodes[i].incarnation = m->nodes[i].incarnation;
    nodes[i].absent = m->nodes[i].absent != 0;
    np[i] = &nodes[i];
  }
  pm.nodes = np;
  pm.n_nodes = m->nnodes;
  for (size_t i = 0; i < m->ncaches; i++) {
    const pmap_cache_t *c = &m->caches[i];
    /* Node indexes are one byte: a map with more copies to a partition
     * than that would not decode again. */
    GRID_ASSERT(c->slots <= PMAP_NODES_MAX);
    grid__pmap_cache__init(&caches[i]);
    caches[i].name = (char *)c->name;
    caches[i].partitions = c->partitions;
    caches[i].copies = c->slots;
    size_t n = (size_t)c->partitions * c->slots;
    caches[i].owners = (ProtobufCBinaryData){n, c->owners};
    caches[i].states = (ProtobufCBinaryData){n, c->states};
    cp[i] = &caches[i];
  }
  pm.caches = cp;
  pm.n_caches = m->ncaches;
  *len = grid__pmap__get_packed_size(&pm);
  *buf = malloc(*len ? *len : 1);
  if (*buf) {
    grid__pmap__pack(&pm, *buf);
    rc = 0;
  }
out:
  free(nodes);
  free(np);
  free(caches);
  free(cp);
  return rc;
}

int pmap_decode(const unsigned char *buf, size_t len, pmap_t *m) {
  pmap_init(m);
  Grid__Pmap *pm = grid__pmap__unpack(NULL, len, buf);
  if (!pm) return GRID_EPROTO;
  int rc = 0;
  if (pm->n_nodes > PMAP_NODES_MAX) rc = GRID_EPROTO;
  m->epoch = pm->epoch;
  snprintf(m->coordinator, sizeof m->coordinator, "%s", pm->coordinator ? pm->coordinator : "");
  for (size_t i = 0; rc == 0 && i < pm->n_nodes; i++) {
    snprintf(m->nodes[i].id, PMAP_ID_MAX, "%s", pm->nodes[i]->id);
    snprintf(m->nodes[i].addr, PMAP_ADDR_MAX, "%s", pm->nodes[i]->addr);
    snprintf(m->nodes[i].zone, PMAP_ZONE_MAX, "%s", pm->nodes[i]->zone);
    m->nodes[i].leaving = pm->nodes[i]->leaving;
    m->nodes[i].incarnation = pm->nodes[i]->incarnation;
    m->nodes[i].absent = pm->nodes[i]->absent;
    m->nnodes = i + 1;
  }
  if (rc == 0) m->caches = calloc(pm->n_caches + 1, sizeof *m->caches);
  if (rc == 0 && !m->caches) rc = GRID_ENOMEM;
  for (size_t i = 0; rc == 0 && i < pm->n_caches; i++) {
    const Grid__PmapCache *pc = pm->caches[i];
    pmap_cache_t *c = &m->caches[i];
    size_t n = (size_t)pc->partitions * pc->copies;
    /* A map from the network or from ZooKeeper is input like any other: a
     * cache without partitions, or with more than any node accepts, would
     * trip the placement arithmetic of every reader. */
    if (pc->partitions == 0 || pc->partitions > PMAP_PARTITIONS_MAX || pc->copies == 0 ||
        pc->copies > PMAP_NODES_MAX || pc->owners.len != n || pc->states.len != n ||
        !pc->name || strlen(pc->name) >= sizeof c->name) {
      rc = GRID_EPROTO;
      break;
    }
    snprintf(c->name, sizeof c->name, "%s", pc->name);
    c->partitions = pc->partitions;
    c->slots = pc->copies;
    m->ncaches = i + 1;
    if ((rc = pmap_cache_alloc(c)) != 0) break;
    memcpy(c->owners, pc->owners.data, n);
    memcpy(c->states, pc->states.data, n);
    for (size_t k = 0; k < n; k++)
      if (c->owners[k] > m->nnodes || c->states[k] > PMAP_HANDOFF) rc = GRID_EPROTO;
  }
  grid__pmap__free_unpacked(pm, NULL);
  if (rc != 0) {
    pmap_free(m);
    return rc;
  }
  /* What every reader relies on, as the checks above give it. */
  GRID_ASSERT(m->nnodes <= PMAP_NODES_MAX);
  for (size_t i = 0; i < m->ncaches; i++)
    GRID_ASSERT(m->caches[i].partitions > 0 && m->caches[i].partitions <= PMAP_PARTITIONS_MAX &&
                m->caches[i].slots > 0 && m->caches[i].slots <= PMAP_NODES_MAX);
  return 0;
}
