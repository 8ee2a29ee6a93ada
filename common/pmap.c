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
  uint32_t node[PMAP_NODES_MAX]; /* index into the alive list */
  uint8_t state[PMAP_NODES_MAX];
  int lost;
} pmap_list_t;

static int pmap_list_find(const pmap_list_t *l, uint32_t node) {
  for (size_t i = 0; i < l->n; i++)
    if (l->node[i] == node) return (int)i;
  return -1;
}

enum { PMAP_REPORT_FILLED, PMAP_REPORT_DEMOTE, PMAP_REPORT_DRAINED };

static int pmap_is_reported(const pmap_ready_t *ready, size_t nready,
                            const char *cache, uint32_t p, const char *node_id,
                            uint64_t epoch, int kind) {
  for (size_t i = 0; i < nready; i++) {
    int k = ready[i].drained ? PMAP_REPORT_DRAINED
            : ready[i].demote ? PMAP_REPORT_DEMOTE : PMAP_REPORT_FILLED;
    if (ready[i].partition == p && ready[i].epoch == epoch && k == kind &&
        strcmp(ready[i].cache, cache) == 0 && strcmp(ready[i].node_id, node_id) == 0)
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

/* Works out the copies of partition p of one cache (see pmap.h). */
static void pmap_next_partition(const pmap_t *cur, const pmap_cache_t *cc,
                                const pmap_node_t *alive, size_t nalive,
                                const pmap_cache_def_t *def, uint32_t p,
                                const pmap_ready_t *ready, size_t nready,
                                pmap_list_t *l) {
  uint32_t ideal[PMAP_NODES_MAX];
  /* A replicated cache has a copy on every node, zones or not. */
  size_t want = def->replicated ? nalive : (size_t)def->backups + 1;
  size_t nideal = pmap_rank(alive, nalive, p, want, !def->replicated, ideal);
  memset(l, 0, sizeof *l);
  if (!cc || cc->partitions != def->partitions) {
    /* A cache new to the map: empty, so its ideal owners own it now. */
    for (size_t i = 0; i < nideal; i++) {
      l->node[l->n] = ideal[i];
      l->state[l->n++] = PMAP_OWNING;
    }
    /* With no node alive it has no copy (not LOST: it never had data). */
    return;
  }
  int st0;
  pmap_copy_at(cc, p, 0, &st0);
  if (st0 == PMAP_LOST) {
    l->lost = 1;
    return;
  }
  int had_owning = 0;
  for (uint32_t i = 0; i < cc->slots; i++) {
    int st;
    int idx = pmap_copy_at(cc, p, i, &st);
    if (idx < 0 || st == PMAP_NONE) continue;
    if (st == PMAP_OWNING || st == PMAP_HANDOFF) had_owning = 1;
    int a = pmap_alive_index(alive, nalive, &cur->nodes[idx]);
    if (a < 0) continue; /* its node is gone, or restarted */
    if (st == PMAP_MOVING &&
        pmap_is_reported(ready, nready, def->name, p, alive[a].id, cur->epoch, PMAP_REPORT_FILLED))
      st = PMAP_OWNING | PMAP_JUST_FILLED;
    else if (st == PMAP_OWNING && i > 0 &&
             pmap_is_reported(ready, nready, def->name, p, alive[a].id, cur->epoch, PMAP_REPORT_DEMOTE))
      st = PMAP_MOVING;
    l->node[l->n] = (uint32_t)a;
    l->state[l->n++] = (uint8_t)st;
  }
  int owning = -1; /* the first copy in sync (not just filled) on a live node */
  int absent_owning = 0;
  for (size_t i = 0; i < l->n; i++) {
    int in_sync = l->state[i] == PMAP_OWNING || l->state[i] == PMAP_HANDOFF;
    if (in_sync && alive[l->node[i]].absent) absent_owning = 1;
    else if (in_sync && owning < 0) owning = (int)i;
  }
  if (owning < 0 && absent_owning) {
    /* Only an absent node holds it in sync: it waits for that node as it
     * is (nothing to promote), rather than being declared lost. */
    for (size_t i = 0; i < l->n; i++) l->state[i] &= (uint8_t)~PMAP_JUST_FILLED;
    return;
  }
  if (absent_owning || owning >= 0) {
    /* A live copy leads: the absent node's copies go, as a dead node's. */
    size_t k = 0;
    for (size_t i = 0; i < l->n; i++) {
      if (alive[l->node[i]].absent) continue;
      if ((int)i == owning) owning = (int)k;
      l->node[k] = l->node[i];
      l->state[k++] = l->state[i];
    }
    l->n = k;
  }
  if (owning < 0) {
    /* Nothing in sync is left: with data, the partition is lost; a
     * partition that never had an owner (no node was alive) starts anew. */
    if (had_owning) {
      l->lost = 1;
      l->n = 0;
      return;
    }
    l->n = 0;
    for (size_t i = 0; i < nideal; i++) {
      l->node[l->n] = ideal[i];
      l->state[l->n++] = PMAP_OWNING;
    }
    /* With no node alive it has no copy (not LOST: it never had data). */
    return;
  }
  int old_primary = pmap_copy_at(cc, p, 0, &st0);
  int same_primary = old_primary >= 0 && (st0 == PMAP_OWNING || st0 == PMAP_HANDOFF) &&
                     strcmp(cur->nodes[old_primary].id, alive[l->node[owning]].id) == 0;
  if (owning > 0) { /* promote the first copy in sync */
    uint32_t nd = l->node[owning];
    memmove(&l->node[1], &l->node[0], (size_t)owning * sizeof l->node[0]);
    memmove(&l->state[1], &l->state[0], (size_t)owning);
    l->node[0] = nd;
    l->state[0] = PMAP_OWNING;
  }
  int handing_off = l->state[0] == PMAP_HANDOFF;
  if (!same_primary)
    for (size_t i = 1; i < l->n; i++) l->state[i] = PMAP_MOVING;
  size_t ideal_owning = 0;
  for (size_t i = 0; i < nideal; i++) {
    int at = pmap_list_find(l, ideal[i]);
    if (at < 0) {
      l->node[l->n] = ideal[i];
      l->state[l->n++] = PMAP_MOVING;
    } else if (l->state[at] == PMAP_OWNING || l->state[at] == PMAP_HANDOFF) {
      ideal_owning++;
    }
  }
  for (size_t i = 0; i < l->n; i++) l->state[i] &= (uint8_t)~PMAP_JUST_FILLED;
  if (nideal == 0 || ideal_owning < nideal) {
    /* The handover is off until every ideal owner is in sync again (a
     * copy demoted, a node joined): meanwhile the primary serves. */
    if (handing_off) l->state[0] = PMAP_OWNING;
    return;
  }
  /* Every ideal owner is in sync: the ideal layout takes over. Another
   * primary takes over in two steps: the primary hands off (takes no new
   * request), then, once it reported every write in flight acknowledged,
   * the new one leads, and every copy is still in sync. */
  if (l->node[0] != ideal[0]) {
    if (!handing_off) {
      l->state[0] = PMAP_HANDOFF;
      return;
    }
    if (!pmap_is_reported(ready, nready, def->name, p, alive[l->node[0]].id, cur->epoch,
                          PMAP_REPORT_DRAINED))
      return;
  }
  l->n = 0;
  for (size_t i = 0; i < nideal; i++) {
    l->node[l->n] = ideal[i];
    l->state[l->n++] = PMAP_OWNING;
  }
}

int pmap_next(const pmap_t *cur, const pmap_node_t *alive, size_t nalive,
              const pmap_cache_def_t *defs, size_t ndefs,
              const pmap_ready_t *ready, size_t nready, pmap_t *out,
              int *changed) {
  if (cur && cur->epoch == 0) cur = NULL;
  if (nalive > PMAP_NODES_MAX) nalive = PMAP_NODES_MAX;
  out->nnodes = nalive;
  memcpy(out->nodes, alive, nalive * sizeof *alive);
  out->caches = calloc(ndefs ? ndefs : 1, sizeof *out->caches);
  if (!out->caches) return GRID_ENOMEM;
  pmap_list_t *lists = malloc(sizeof *lists);
  if (!lists) return GRID_ENOMEM;
  int rc = 0;
  for (size_t d = 0; d < ndefs && rc == 0; d++) {
    const pmap_cache_def_t *def = &defs[d];
    const pmap_cache_t *cc = cur ? pmap_find_cache(cur, def->name) : NULL;
    pmap_cache_t *oc = &out->caches[d];
    out->ncaches = d + 1;
    snprintf(oc->name, sizeof oc->name, "%s", def->name);
    oc->partitions = def->partitions;
    oc->backups = def->backups;
    oc->replicated = def->replicated;
    /* Two passes: the first finds how many slots the widest partition
     * needs, the second fills them. */
    uint32_t slots = 1;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
      if (pass == 1) {
        oc->slots = slots;
        if ((rc = pmap_cache_alloc(oc)) != 0) break;
      }
      for (uint32_t p = 0; p < def->partitions; p++) {
        pmap_next_partition(cur, cc, alive, nalive, def, p, ready, nready, lists);
        if (pass == 0) {
          if (lists->n > slots) slots = (uint32_t)lists->n;
          continue;
        }
        size_t at = (size_t)p * slots;
        if (lists->lost) {
          oc->states[at] = PMAP_LOST;
          continue;
        }
        for (size_t i = 0; i < lists->n; i++) {
          oc->owners[at + i] = (uint8_t)(lists->node[i] + 1);
          oc->states[at + i] = lists->state[i];
        }
      }
    }
  }
  free(lists);
  if (rc != 0) return rc;

  /* Changed: other nodes, other caches, or any copy moved or changed state. */
  int diff = !cur || cur->nnodes != out->nnodes || cur->ncaches != out->ncaches;
  for (size_t i = 0; !diff && i < out->nnodes; i++)
    diff = strcmp(cur->nodes[i].id, out->nodes[i].id) != 0 ||
           strcmp(cur->nodes[i].addr, out->nodes[i].addr) != 0 ||
           cur->nodes[i].leaving != out->nodes[i].leaving ||
           cur->nodes[i].incarnation != out->nodes[i].incarnation ||
           cur->nodes[i].absent != out->nodes[i].absent;
  for (size_t d = 0; !diff && d < out->ncaches; d++) {
    const pmap_cache_t *a = pmap_find_cache(cur, out->caches[d].name);
    const pmap_cache_t *b = &out->caches[d];
    if (!a || a->partitions != b->partitions) {
      diff = 1;
      break;
    }
    for (uint32_t p = 0; !diff && p < b->partitions; p++) {
      uint32_t k = a->slots > b->slots ? a->slots : b->slots;
      for (uint32_t i = 0; !diff && i < k; i++) {
        int sa, sb;
        int na = pmap_copy_at(a, p, i, &sa), nb = pmap_copy_at(b, p, i, &sb);
        const char *ida = na >= 0 ? cur->nodes[na].id : "";
        const char *idb = nb >= 0 ? out->nodes[nb].id : "";
        diff = sa != sb || strcmp(ida, idb) != 0;
      }
    }
  }
  *changed = diff;
  return 0;
}

int pmap_encode(const pmap_t *m, unsigned char **buf, size_t *len) {
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
  if (rc != 0) pmap_free(m);
  return rc;
}
