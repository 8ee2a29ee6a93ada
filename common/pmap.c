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
  for (size_t i = 0; i < m->ngroups; i++) {
    free(m->groups[i].owners);
    free(m->groups[i].states);
  }
  free(m->groups);
  free(m->caches);
  free(m->index);
  pmap_init(m);
}

static int pmap_group_alloc(pmap_group_t *g) {
  size_t n = (size_t)g->partitions * g->slots;
  g->owners = calloc(n ? n : 1, 1);
  g->states = calloc(n ? n : 1, 1);
  return g->owners && g->states ? 0 : GRID_ENOMEM;
}

/* The hash index of m->caches. 0 or GRID_ENOMEM. */
static int pmap_index_build(pmap_t *m) {
  free(m->index);
  m->index = NULL;
  m->index_mask = 0;
  size_t cap = 8;
  while (cap < m->ncaches * 2) cap *= 2;
  m->index = calloc(cap, sizeof *m->index);
  if (!m->index) return GRID_ENOMEM;
  m->index_mask = cap - 1;
  for (size_t i = 0; i < m->ncaches; i++) {
    size_t at = XXH3_64bits(m->caches[i].name, strlen(m->caches[i].name)) & m->index_mask;
    while (m->index[at]) at = (at + 1) & m->index_mask;
    m->index[at] = (uint32_t)i + 1;
  }
  return 0;
}

/* Sorts m->caches by group then name, and sets each group's range. */
static int pmap_cache_cmp(const void *a, const void *b) {
  const pmap_cache_ref_t *x = a, *y = b;
  if (x->group != y->group) return x->group < y->group ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int pmap_caches_settle(pmap_t *m) {
  if (m->ncaches > 1) qsort(m->caches, m->ncaches, sizeof *m->caches, pmap_cache_cmp);
  for (size_t g = 0; g < m->ngroups; g++) m->groups[g].first_cache = m->groups[g].ncaches = 0;
  for (size_t i = 0; i < m->ncaches; i++) {
    pmap_group_t *g = &m->groups[m->caches[i].group];
    if (g->ncaches == 0) g->first_cache = i;
    g->ncaches++;
  }
  return pmap_index_build(m);
}

int pmap_copy(pmap_t *dst, const pmap_t *src) {
  pmap_init(dst);
  GRID_ASSERT(src->nnodes <= PMAP_NODES_MAX);
  dst->epoch = src->epoch;
  dst->caches_version = src->caches_version;
  dst->nnodes = src->nnodes;
  memcpy(dst->nodes, src->nodes, src->nnodes * sizeof src->nodes[0]);
  memcpy(dst->coordinator, src->coordinator, sizeof dst->coordinator);
  dst->groups = calloc(src->ngroups ? src->ngroups : 1, sizeof *dst->groups);
  dst->caches = calloc(src->ncaches ? src->ncaches : 1, sizeof *dst->caches);
  if (!dst->groups || !dst->caches) {
    pmap_free(dst);
    return GRID_ENOMEM;
  }
  for (size_t i = 0; i < src->ngroups; i++) {
    dst->groups[i] = src->groups[i];
    dst->ngroups = i + 1;
    if (pmap_group_alloc(&dst->groups[i]) != 0) {
      pmap_free(dst);
      return GRID_ENOMEM;
    }
    size_t n = (size_t)src->groups[i].partitions * src->groups[i].slots;
    memcpy(dst->groups[i].owners, src->groups[i].owners, n);
    memcpy(dst->groups[i].states, src->groups[i].states, n);
  }
  if (src->ncaches) memcpy(dst->caches, src->caches, src->ncaches * sizeof *src->caches);
  dst->ncaches = src->ncaches;
  if (pmap_index_build(dst) != 0) {
    pmap_free(dst);
    return GRID_ENOMEM;
  }
  return 0;
}

void pmap_group_name(uint32_t partitions, uint32_t backups, int replicated, char *out,
                     size_t len) {
  if (replicated) snprintf(out, len, "p%u-all", partitions);
  else snprintf(out, len, "p%u-b%u", partitions, backups);
}

void pmap_group_name_of(const pmap_cache_def_t *def, char *out, size_t len) {
  const char *disk = def->persistent ? "-d" : "";
  if (def->replicated) snprintf(out, len, "p%u-all%s", def->partitions, disk);
  else snprintf(out, len, "p%u-b%u%s", def->partitions, def->backups, disk);
}

uint64_t pmap_group_bytes(uint32_t partitions, uint32_t backups, int replicated, size_t nnodes) {
  uint64_t copies = replicated ? (nnodes ? nnodes : 1) : (uint64_t)backups + 1;
  return 2 * (uint64_t)partitions * copies;
}

uint64_t pmap_bytes(const pmap_t *m) {
  uint64_t n = 0;
  for (size_t i = 0; i < m->ngroups; i++) n += 2 * (uint64_t)m->groups[i].partitions * m->groups[i].slots;
  return n;
}

const pmap_group_t *pmap_find_group(const pmap_t *m, const char *name) {
  for (size_t i = 0; i < m->ngroups; i++)
    if (strcmp(m->groups[i].name, name) == 0) return &m->groups[i];
  return NULL;
}

const char *pmap_group_cache_after(const pmap_t *m, const pmap_group_t *g, const char *after) {
  size_t lo = g->first_cache, hi = g->first_cache + g->ncaches;
  GRID_ASSERT(hi <= m->ncaches);
  while (lo < hi) { /* the first name > after */
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(m->caches[mid].name, after) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo < g->first_cache + g->ncaches ? m->caches[lo].name : NULL;
}

int pmap_set_caches(pmap_t *m, const pmap_cache_def_t *defs, size_t ndefs) {
  pmap_cache_ref_t *refs = calloc(ndefs ? ndefs : 1, sizeof *refs);
  if (!refs) return GRID_ENOMEM;
  size_t k = 0;
  for (size_t i = 0; i < ndefs; i++) {
    char gname[PMAP_GROUP_NAME_MAX];
    pmap_group_name_of(&defs[i], gname, sizeof gname);
    const pmap_group_t *g = pmap_find_group(m, gname);
    if (!g || strlen(defs[i].name) >= sizeof refs[k].name) continue;
    snprintf(refs[k].name, sizeof refs[k].name, "%s", defs[i].name);
    refs[k++].group = (uint32_t)(g - m->groups);
  }
  pmap_cache_ref_t *old = m->caches;
  size_t nold = m->ncaches;
  m->caches = refs;
  m->ncaches = k;
  if (pmap_caches_settle(m) != 0) {
    m->caches = old;
    m->ncaches = nold;
    free(refs);
    pmap_caches_settle(m); /* the old index; failing again leaves none */
    return GRID_ENOMEM;
  }
  free(old);
  return 0;
}

/* The best `want` nodes by rendezvous rank; zones honoured when asked. */
static size_t pmap_rank(const pmap_node_t *nodes, size_t n, uint32_t p,
                        size_t want, int zones, int need_disk, uint32_t *out) {
  /* Selection by repeated maximum: n and want are small (<= 255). */
  GRID_ASSERT(n <= PMAP_NODES_MAX);
  uint64_t score[PMAP_NODES_MAX];
  unsigned char taken[PMAP_NODES_MAX] = {0};
  for (size_t i = 0; i < n; i++) {
    score[i] = XXH3_64bits_withSeed(nodes[i].id, strlen(nodes[i].id), p);
    /* A leaving or absent node is nobody's ideal owner. */
    taken[i] = nodes[i].leaving != 0 || nodes[i].absent != 0;
    /* A persistent group's copies are only where a data_dir keeps them. */
    if (need_disk && !nodes[i].disk_id) taken[i] = 1;
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
  return pmap_rank(nodes, n, p, want, 1, 0, out);
}

const pmap_group_t *pmap_find_cache(const pmap_t *m, const char *name) {
  if (!m->index) return NULL;
  size_t at = XXH3_64bits(name, strlen(name)) & m->index_mask;
  for (uint32_t i; (i = m->index[at]) != 0; at = (at + 1) & m->index_mask)
    if (strcmp(m->caches[i - 1].name, name) == 0) return &m->groups[m->caches[i - 1].group];
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

int pmap_copy_at(const pmap_group_t *c, uint32_t p, uint32_t i, int *state) {
  if (p >= c->partitions || i >= c->slots) {
    *state = PMAP_NONE;
    return -1;
  }
  size_t at = (size_t)p * c->slots + i;
  *state = c->states[at];
  return c->owners[at] ? c->owners[at] - 1 : -1;
}

void pmap_count(const pmap_t *m, const pmap_group_t *g, pmap_counts_t *out,
                uint32_t *primaries, uint32_t *backups) {
  memset(out, 0, sizeof *out);
  for (uint32_t p = 0; p < g->partitions; p++) {
    for (uint32_t i = 0; i < g->slots; i++) {
      int state;
      int owner = pmap_copy_at(g, p, i, &state);
      if (state == PMAP_LOST) {
        out->lost++;
        continue;
      }
      int in_sync = state == PMAP_OWNING || state == PMAP_HANDOFF;
      int leads = i == 0 && in_sync;
      out->owning += in_sync;
      out->handoff += state == PMAP_HANDOFF;
      out->moving += state == PMAP_MOVING;
      if (owner < 0 || (size_t)owner >= m->nnodes || state == PMAP_NONE) continue;
      if (leads && m->nodes[owner].absent) out->waiting++;
      if (leads && primaries) primaries[owner]++;
      else if (!leads && backups) backups[owner]++;
    }
  }
}

int pmap_primary(const pmap_group_t *c, uint32_t p) {
  int state;
  int idx = pmap_copy_at(c, p, 0, &state);
  return state == PMAP_OWNING ? idx : -1;
}

int pmap_leader(const pmap_group_t *c, uint32_t p) {
  int state;
  int idx = pmap_copy_at(c, p, 0, &state);
  return state == PMAP_OWNING || state == PMAP_HANDOFF ? idx : -1;
}

/* A copy made OWNING by a fill report in this very step: it may not lead
 * yet, since its primary did not wait for its acknowledgements until now
 * (cleared before the map is written). */
#define PMAP_JUST_FILLED 0x80
/* A persistent copy whose node was restarted with its disk: in sync only
 * if no copy on a node that stayed up is (then that one has writes it
 * missed). */
#define PMAP_RESTARTED 0x40

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

/* Whether alive node a reported (kind) on partition p of group at the
 * current epoch: a report made under an older map is stale. */
static int pmap_is_reported(const pmap_step_t *st, const char *group, uint32_t p,
                            uint32_t a, int kind) {
  const char *node_id = st->alive[a].id;
  for (size_t i = 0; i < st->nready; i++) {
    const pmap_ready_t *r = &st->ready[i];
    int k = r->drained ? PMAP_REPORT_DRAINED : r->demote ? PMAP_REPORT_DEMOTE : PMAP_REPORT_FILLED;
    if (r->partition == p && r->epoch == st->cur->epoch && k == kind &&
        strcmp(r->group, group) == 0 && strcmp(r->node_id, node_id) == 0)
      return 1;
  }
  return 0;
}

/* Whether the operator accepted the loss of group's partition p. */
static int pmap_restart_reported(const pmap_step_t *st, const char *group, uint32_t p) {
  for (size_t i = 0; i < st->nready; i++) {
    const pmap_ready_t *r = &st->ready[i];
    if (r->restart && (r->partition == p || r->partition == UINT32_MAX) &&
        strcmp(r->group, group) == 0)
      return 1;
  }
  return 0;
}

/* The alive node that holds what `was` held: the same id, and the same
 * incarnation (a node restarted under its id holds none of it; the copies
 * of persistent groups: see pmap_restarted_index). */
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
/* The alive node that is `was` restarted with the same data directory:
 * its persistent copies are on its disk still. -1 when there is none. */
static int pmap_restarted_index(const pmap_node_t *alive, size_t nalive,
                                const pmap_node_t *was) {
  for (size_t i = 0; i < nalive; i++)
    if (strcmp(alive[i].id, was->id) == 0)
      return was->disk_id && alive[i].disk_id == was->disk_id && !alive[i].absent ? (int)i : -1;
  return -1;
}

/* Restarted copies (PMAP_RESTARTED): when a copy on a node that stayed up
 * is in sync, they missed writes, and are filled again (by delta, from what
 * their disk holds). Else (the whole cluster restarted) the first of them
 * in sync (the old primary when it is back) holds every acknowledged
 * write (each was on the disk of every in-sync copy) and leads; the others
 * may lack or hold writes it does not (not acknowledged), so they are
 * filled from it. */
static void pmap_list_settle_restarted(pmap_list_t *l, const pmap_node_t *alive) {
  int stayed = 0;
  for (size_t i = 0; i < l->n; i++) {
    int st = l->state[i] & 0x0f;
    int in_sync = st == PMAP_OWNING || st == PMAP_HANDOFF;
    if (in_sync && !(l->state[i] & PMAP_RESTARTED) && !alive[l->node[i]].absent) stayed = 1;
  }
  int kept = stayed;
  for (size_t i = 0; i < l->n; i++) {
    if (!(l->state[i] & PMAP_RESTARTED)) continue;
    l->state[i] &= (uint8_t)~PMAP_RESTARTED;
    int in_sync = l->state[i] == PMAP_OWNING || l->state[i] == PMAP_HANDOFF;
    if (in_sync && !kept) {
      l->state[i] = PMAP_OWNING;
      kept = 1;
    } else {
      l->state[i] = PMAP_MOVING;
    }
  }
}

static int pmap_list_current(const pmap_step_t *st, const pmap_group_t *cc,
                             const char *group, uint32_t p, pmap_list_t *l) {
  int had_owning = 0, restarted = 0;
  for (uint32_t i = 0; i < cc->slots; i++) {
    int s;
    int idx = pmap_copy_at(cc, p, i, &s);
    if (idx < 0 || s == PMAP_NONE) continue;
    /* pmap_decode and pmap_next only make maps whose owners are nodes of
     * the map. */
    GRID_ASSERT((size_t)idx < st->cur->nnodes);
    if (s == PMAP_OWNING || s == PMAP_HANDOFF) had_owning = 1;
    int a = pmap_alive_index(st->alive, st->nalive, &st->cur->nodes[idx]);
    int again = 0;
    if (a < 0 && cc->persistent &&
        (a = pmap_restarted_index(st->alive, st->nalive, &st->cur->nodes[idx])) >= 0)
      again = 1;
    if (a < 0) continue; /* its node is gone, or restarted */
    if (pmap_list_find(l, (uint32_t)a) >= 0) continue;
    if (s == PMAP_MOVING && pmap_is_reported(st, group, p, (uint32_t)a, PMAP_REPORT_FILLED))
      s = PMAP_OWNING | PMAP_JUST_FILLED;
    else if (s == PMAP_OWNING && i > 0 &&
             pmap_is_reported(st, group, p, (uint32_t)a, PMAP_REPORT_DEMOTE))
      s = PMAP_MOVING;
    if (again) {
      s |= PMAP_RESTARTED;
      restarted = 1;
    }
    l->node[l->n] = (uint32_t)a;
    l->state[l->n++] = (uint8_t)s;
  }
  if (restarted) pmap_list_settle_restarted(l, st->alive);
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
static int pmap_is_current_primary(const pmap_step_t *st, const pmap_group_t *cc,
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
static void pmap_list_move_to_ideal(const pmap_step_t *st, const char *group, uint32_t p,
                                    const uint32_t *ideal, size_t nideal, int handing_off,
                                    pmap_list_t *l) {
  if (l->node[0] != ideal[0]) {
    if (!handing_off) {
      l->state[0] = PMAP_HANDOFF;
      return;
    }
    if (!pmap_is_reported(st, group, p, l->node[0], PMAP_REPORT_DRAINED)) return;
  }
  pmap_list_set_ideal(l, ideal, nideal);
}

/* Works out the copies of partition p of one group (the rules are in
 * pmap.h); def describes the group (its name is the group's), cc is the
 * group in the current map, NULL when it is new. */
static void pmap_next_partition(const pmap_step_t *st, const pmap_group_t *cc,
                                const pmap_cache_def_t *def, uint32_t p, pmap_list_t *l) {
  uint32_t ideal[PMAP_NODES_MAX];
  /* A replicated cache has a copy on every node, zones or not. */
  size_t want = def->replicated ? st->nalive : (size_t)def->backups + 1;
  size_t nideal =
      pmap_rank(st->alive, st->nalive, p, want, !def->replicated, def->persistent, ideal);
  memset(l, 0, sizeof *l);
  if (!cc || cc->partitions != def->partitions) {
    /* A group new to the map: its caches are empty, so its ideal owners
     * own it now. With no node alive it has no copy (not LOST: it never
     * had data). */
    pmap_list_set_ideal(l, ideal, nideal);
    return;
  }
  int state0;
  pmap_copy_at(cc, p, 0, &state0);
  int restart = def->persistent && pmap_restart_reported(st, def->name, p);
  if (state0 == PMAP_LOST) {
    if (restart) pmap_list_set_ideal(l, ideal, nideal); /* again, empty */
    else l->lost = 1;
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
    if (had_owning && !restart) {
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
static void pmap_put_partition(pmap_group_t *oc, size_t nnodes, uint32_t p,
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

/* Fills oc, the next map's entry for group def (cc: the current one, or
 * NULL), using l as scratch. 0 or GRID_ENOMEM. */
static int pmap_next_group(const pmap_step_t *st, const pmap_cache_def_t *def,
                           const pmap_group_t *cc, pmap_group_t *oc, pmap_list_t *l) {
  snprintf(oc->name, sizeof oc->name, "%s", def->name);
  oc->partitions = def->partitions;
  oc->backups = def->backups;
  oc->replicated = def->replicated;
  oc->persistent = def->persistent;
  /* Two passes: the first finds how many slots the widest partition
   * needs, the second fills them (the rules are pure functions, so both
   * passes work out the same copies). */
  uint32_t slots = 1;
  for (uint32_t p = 0; p < def->partitions; p++) {
    pmap_next_partition(st, cc, def, p, l);
    if (l->n > slots) slots = (uint32_t)l->n;
  }
  oc->slots = slots;
  int rc = pmap_group_alloc(oc);
  if (rc != 0) return rc;
  for (uint32_t p = 0; p < def->partitions; p++) {
    pmap_next_partition(st, cc, def, p, l);
    pmap_put_partition(oc, st->nalive, p, l);
  }
  return 0;
}

/* Whether next differs from cur (NULL: there is none): other nodes, other
 * groups, or any copy moved or changed state. */
static int pmap_differs(const pmap_t *cur, const pmap_t *next) {
  if (!cur || cur->nnodes != next->nnodes || cur->ngroups != next->ngroups) return 1;
  for (size_t i = 0; i < next->nnodes; i++) {
    const pmap_node_t *a = &cur->nodes[i], *b = &next->nodes[i];
    if (strcmp(a->id, b->id) != 0 || strcmp(a->addr, b->addr) != 0 ||
        strcmp(a->tls_addr, b->tls_addr) != 0 || strcmp(a->http_addr, b->http_addr) != 0 ||
        a->leaving != b->leaving || a->incarnation != b->incarnation || a->absent != b->absent ||
        a->disk_id != b->disk_id)
      return 1;
  }
  for (size_t d = 0; d < next->ngroups; d++) {
    const pmap_group_t *a = pmap_find_group(cur, next->groups[d].name);
    const pmap_group_t *b = &next->groups[d];
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

/* One group the defs need, described as a def named as the group. */
typedef struct pmap_group_def {
  pmap_cache_def_t def;
  char name[PMAP_GROUP_NAME_MAX];
} pmap_group_def_t;

static int pmap_group_def_cmp(const void *a, const void *b) {
  return strcmp(((const pmap_group_def_t *)a)->name, ((const pmap_group_def_t *)b)->name);
}

/* The groups the defs need, each once, sorted by name; *n receives how
 * many. NULL when memory ran out. */
static pmap_group_def_t *pmap_group_defs(const pmap_cache_def_t *defs, size_t ndefs, size_t *n) {
  pmap_group_def_t *g = calloc(ndefs ? ndefs : 1, sizeof *g);
  if (!g) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < ndefs; i++) {
    char name[PMAP_GROUP_NAME_MAX];
    int replicated = defs[i].replicated != 0;
    uint32_t backups = replicated ? 0 : defs[i].backups;
    pmap_group_name_of(&defs[i], name, sizeof name);
    size_t j = 0;
    while (j < k && strcmp(g[j].name, name) != 0) j++;
    if (j < k) continue; /* groups are few: a linear look is enough */
    memcpy(g[k].name, name, sizeof name);
    g[k].def = (pmap_cache_def_t){.name = NULL, .partitions = defs[i].partitions,
                                  .backups = backups, .replicated = replicated,
                                  .persistent = defs[i].persistent != 0};
    k++;
  }
  qsort(g, k, sizeof *g, pmap_group_def_cmp);
  for (size_t i = 0; i < k; i++) g[i].def.name = g[i].name;
  *n = k;
  return g;
}

/* The nodes of the next map: those of cur still alive keep their order
 * (so copies keep their node indexes where they can), the others follow. */
static void pmap_arrange(const pmap_t *cur, const pmap_node_t *alive, size_t nalive,
                         pmap_node_t *out) {
  unsigned char used[PMAP_NODES_MAX] = {0};
  size_t k = 0;
  for (size_t i = 0; cur && i < cur->nnodes; i++) {
    for (size_t j = 0; j < nalive; j++) {
      if (used[j] || strcmp(alive[j].id, cur->nodes[i].id) != 0) continue;
      used[j] = 1;
      out[k++] = alive[j];
      break;
    }
  }
  for (size_t j = 0; j < nalive; j++)
    if (!used[j]) out[k++] = alive[j];
  GRID_ASSERT(k == nalive);
}

int pmap_next(const pmap_t *cur, const pmap_node_t *alive_in, size_t nalive,
              const pmap_cache_def_t *defs, size_t ndefs,
              const pmap_ready_t *ready, size_t nready, pmap_t *out,
              int *changed) {
  GRID_ASSERT(out->groups == NULL && out->ngroups == 0); /* pmap_init'ed */
  if (cur && cur->epoch == 0) cur = NULL;
  if (nalive > PMAP_NODES_MAX) nalive = PMAP_NODES_MAX;
  out->nnodes = nalive;
  pmap_arrange(cur, alive_in, nalive, out->nodes);
  const pmap_node_t *alive = out->nodes;
  size_t ngd = 0;
  pmap_group_def_t *gd = pmap_group_defs(defs, ndefs, &ngd);
  out->groups = calloc(ngd ? ngd : 1, sizeof *out->groups);
  pmap_list_t *l = malloc(sizeof *l);
  if (!gd || !out->groups || !l) {
    free(gd);
    free(l);
    return GRID_ENOMEM;
  }
  const pmap_step_t st = {cur, alive, nalive, ready, nready};
  int rc = 0;
  for (size_t d = 0; d < ngd && rc == 0; d++) {
    const pmap_group_t *cc = cur ? pmap_find_group(cur, gd[d].name) : NULL;
    out->ngroups = d + 1;
    rc = pmap_next_group(&st, &gd[d].def, cc, &out->groups[d], l);
  }
  free(l);
  free(gd);
  if (rc == 0) rc = pmap_set_caches(out, defs, ndefs);
  if (rc != 0) return rc;
  *changed = pmap_differs(cur, out);
  return 0;
}

/* ---- protobuf ------------------------------------------------------------- */

/* The Pmap message of m, pointing into m; groups carry their owners when
 * with_data, the caches are named when with_caches. Free with
 * pmap_msg_free. */
typedef struct pmap_msg {
  Grid__Pmap pm;
  Grid__PmapNode *nodes, **np;
  Grid__PmapCache *groups, **gp;
  Grid__PmapCacheGroup *refs, **rp;
} pmap_msg_t;

static void pmap_msg_free(pmap_msg_t *x) {
  free(x->nodes);
  free(x->np);
  free(x->groups);
  free(x->gp);
  free(x->refs);
  free(x->rp);
}

static int pmap_msg(const pmap_t *m, int with_data, int with_caches, pmap_msg_t *x) {
  GRID_ASSERT(m->nnodes <= PMAP_NODES_MAX);
  memset(x, 0, sizeof *x);
  grid__pmap__init(&x->pm);
  size_t nrefs = with_caches ? m->ncaches : 0;
  x->nodes = calloc(m->nnodes + 1, sizeof *x->nodes);
  x->np = calloc(m->nnodes + 1, sizeof *x->np);
  x->groups = calloc(m->ngroups + 1, sizeof *x->groups);
  x->gp = calloc(m->ngroups + 1, sizeof *x->gp);
  x->refs = calloc(nrefs + 1, sizeof *x->refs);
  x->rp = calloc(nrefs + 1, sizeof *x->rp);
  if (!x->nodes || !x->np || !x->groups || !x->gp || !x->refs || !x->rp) {
    pmap_msg_free(x);
    return GRID_ENOMEM;
  }
  x->pm.epoch = m->epoch;
  x->pm.coordinator = (char *)m->coordinator;
  x->pm.caches_version = m->caches_version;
  for (size_t i = 0; i < m->nnodes; i++) {
    Grid__PmapNode *n = &x->nodes[i];
    grid__pmap_node__init(n);
    n->id = (char *)m->nodes[i].id;
    n->addr = (char *)m->nodes[i].addr;
    n->tls_addr = (char *)m->nodes[i].tls_addr;
    n->http_addr = (char *)m->nodes[i].http_addr;
    n->zone = (char *)m->nodes[i].zone;
    n->leaving = m->nodes[i].leaving != 0;
    n->incarnation = m->nodes[i].incarnation;
    n->absent = m->nodes[i].absent != 0;
    n->disk_id = m->nodes[i].disk_id;
    x->np[i] = n;
  }
  x->pm.nodes = x->np;
  x->pm.n_nodes = m->nnodes;
  for (size_t i = 0; i < m->ngroups; i++) {
    const pmap_group_t *g = &m->groups[i];
    /* Node indexes are one byte: a map with more copies to a partition
     * than that would not decode again. */
    GRID_ASSERT(g->slots <= PMAP_NODES_MAX);
    Grid__PmapCache *c = &x->groups[i];
    grid__pmap_cache__init(c);
    c->name = (char *)g->name;
    c->partitions = g->partitions;
    c->copies = g->slots;
    c->backups = g->backups;
    c->replicated = g->replicated != 0;
    c->persistent = g->persistent != 0;
    if (with_data) {
      size_t n = (size_t)g->partitions * g->slots;
      c->owners = (ProtobufCBinaryData){n, g->owners};
      c->states = (ProtobufCBinaryData){n, g->states};
    }
    x->gp[i] = c;
  }
  x->pm.caches = x->gp;
  x->pm.n_caches = m->ngroups;
  for (size_t i = 0; i < nrefs; i++) {
    Grid__PmapCacheGroup *r = &x->refs[i];
    grid__pmap_cache_group__init(r);
    r->cache = (char *)m->caches[i].name;
    r->group = (char *)m->groups[m->caches[i].group].name;
    x->rp[i] = r;
  }
  x->pm.cache_groups = x->rp;
  x->pm.n_cache_groups = nrefs;
  return 0;
}

static int pmap_pack(const Grid__Pmap *pm, unsigned char **buf, size_t *len) {
  *len = grid__pmap__get_packed_size(pm);
  *buf = malloc(*len ? *len : 1);
  if (!*buf) return GRID_ENOMEM;
  grid__pmap__pack(pm, *buf);
  return 0;
}

int pmap_encode(const pmap_t *m, unsigned char **buf, size_t *len) {
  pmap_msg_t x;
  int rc = pmap_msg(m, 1, 1, &x);
  if (rc != 0) return rc;
  rc = pmap_pack(&x.pm, buf, len);
  pmap_msg_free(&x);
  return rc;
}

/* Every owner names a node of the map, every state is one a map holds. */
static int pmap_range_ok(const uint8_t *owners, const uint8_t *states, size_t n, size_t nnodes) {
  for (size_t k = 0; k < n; k++)
    if (owners[k] > nnodes || states[k] > PMAP_HANDOFF) return 0;
  return 1;
}

/* Decodes pm's nodes and groups into m (pmap_init'ed); with_data: the
 * groups carry their owners, else they are left empty (chunks fill them). */
static int pmap_from_msg(const Grid__Pmap *pm, int with_data, pmap_t *m) {
  if (pm->n_nodes > PMAP_NODES_MAX) return GRID_EPROTO;
  m->epoch = pm->epoch;
  m->caches_version = pm->caches_version;
  snprintf(m->coordinator, sizeof m->coordinator, "%s", pm->coordinator ? pm->coordinator : "");
  for (size_t i = 0; i < pm->n_nodes; i++) {
    snprintf(m->nodes[i].id, PMAP_ID_MAX, "%s", pm->nodes[i]->id);
    snprintf(m->nodes[i].addr, PMAP_ADDR_MAX, "%s", pm->nodes[i]->addr);
    snprintf(m->nodes[i].tls_addr, PMAP_ADDR_MAX, "%s", pm->nodes[i]->tls_addr);
    snprintf(m->nodes[i].http_addr, PMAP_ADDR_MAX, "%s", pm->nodes[i]->http_addr);
    snprintf(m->nodes[i].zone, PMAP_ZONE_MAX, "%s", pm->nodes[i]->zone);
    m->nodes[i].leaving = pm->nodes[i]->leaving;
    m->nodes[i].incarnation = pm->nodes[i]->incarnation;
    m->nodes[i].absent = pm->nodes[i]->absent;
    m->nodes[i].disk_id = pm->nodes[i]->disk_id;
    m->nnodes = i + 1;
  }
  m->groups = calloc(pm->n_caches + 1, sizeof *m->groups);
  if (!m->groups) return GRID_ENOMEM;
  for (size_t i = 0; i < pm->n_caches; i++) {
    const Grid__PmapCache *pc = pm->caches[i];
    pmap_group_t *g = &m->groups[i];
    size_t n = (size_t)pc->partitions * pc->copies;
    /* A map from the network or from ZooKeeper is input like any other: a
     * group without partitions, or with more than any node accepts, would
     * trip the placement arithmetic of every reader. */
    if (pc->partitions == 0 || pc->partitions > PMAP_PARTITIONS_MAX || pc->copies == 0 ||
        pc->copies > PMAP_NODES_MAX || !pc->name || strlen(pc->name) >= sizeof g->name ||
        pmap_find_group(m, pc->name) ||
        (with_data && (pc->owners.len != n || pc->states.len != n)))
      return GRID_EPROTO;
    snprintf(g->name, sizeof g->name, "%s", pc->name);
    g->partitions = pc->partitions;
    g->slots = pc->copies;
    g->backups = pc->backups;
    g->replicated = pc->replicated;
    g->persistent = pc->persistent;
    m->ngroups = i + 1;
    int rc = pmap_group_alloc(g);
    if (rc != 0) return rc;
    if (!with_data) continue;
    memcpy(g->owners, pc->owners.data, n);
    memcpy(g->states, pc->states.data, n);
    if (!pmap_range_ok(g->owners, g->states, n, m->nnodes)) return GRID_EPROTO;
  }
  return 0;
}

static int pmap_name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether no cache is named twice (a map from the network is input). */
static int pmap_caches_unique(const pmap_t *m) {
  const char **names = malloc((m->ncaches ? m->ncaches : 1) * sizeof *names);
  if (!names) return 0;
  for (size_t i = 0; i < m->ncaches; i++) names[i] = m->caches[i].name;
  qsort(names, m->ncaches, sizeof *names, pmap_name_cmp);
  int ok = 1;
  for (size_t i = 1; ok && i < m->ncaches; i++) ok = strcmp(names[i - 1], names[i]) != 0;
  free(names);
  return ok;
}

int pmap_decode(const unsigned char *buf, size_t len, pmap_t *m) {
  pmap_init(m);
  Grid__Pmap *pm = grid__pmap__unpack(NULL, len, buf);
  if (!pm) return GRID_EPROTO;
  int rc = pmap_from_msg(pm, 1, m);
  if (rc == 0) {
    m->caches = calloc(pm->n_cache_groups + 1, sizeof *m->caches);
    if (!m->caches) rc = GRID_ENOMEM;
  }
  for (size_t i = 0; rc == 0 && i < pm->n_cache_groups; i++) {
    const Grid__PmapCacheGroup *r = pm->cache_groups[i];
    const pmap_group_t *g = r->group ? pmap_find_group(m, r->group) : NULL;
    if (!g || !r->cache || strlen(r->cache) >= sizeof m->caches[0].name) {
      rc = GRID_EPROTO;
      break;
    }
    snprintf(m->caches[i].name, sizeof m->caches[i].name, "%s", r->cache);
    m->caches[i].group = (uint32_t)(g - m->groups);
    m->ncaches = i + 1;
  }
  if (rc == 0) rc = pmap_caches_settle(m);
  if (rc == 0 && !pmap_caches_unique(m)) rc = GRID_EPROTO;
  grid__pmap__free_unpacked(pm, NULL);
  if (rc != 0) {
    pmap_free(m);
    return rc;
  }
  /* What every reader relies on, as the checks above give it. */
  GRID_ASSERT(m->nnodes <= PMAP_NODES_MAX);
  for (size_t i = 0; i < m->ngroups; i++)
    GRID_ASSERT(m->groups[i].partitions > 0 && m->groups[i].partitions <= PMAP_PARTITIONS_MAX &&
                m->groups[i].slots > 0 && m->groups[i].slots <= PMAP_NODES_MAX);
  return 0;
}

/* ---- the map in ZooKeeper: a root and chunks ------------------------------ */

void pmap_stored_free(pmap_stored_t *st) {
  free(st->refs);
  st->refs = NULL;
  st->n = 0;
}

void pmap_plan_free(pmap_plan_t *plan) {
  free(plan->root);
  for (size_t i = 0; i < plan->nwrites; i++) free(plan->writes[i].buf);
  free(plan->writes);
  free(plan->obsolete);
  pmap_stored_free(&plan->stored);
  memset(plan, 0, sizeof *plan);
}

uint32_t pmap_chunk_partitions(uint32_t slots) {
  uint32_t per = PMAP_CHUNK_BYTES / (2 * (slots ? slots : 1));
  return per ? per : 1;
}

/* Whether cur holds, at ref's range, exactly the bytes next's group has. */
static int pmap_range_same(const pmap_t *cur, const pmap_chunk_ref_t *ref,
                           const pmap_group_t *ng) {
  const pmap_group_t *cg = cur ? pmap_find_group(cur, ref->group) : NULL;
  if (!cg || cg->slots != ng->slots || cg->partitions != ng->partitions) return 0;
  size_t at = (size_t)ref->first * ng->slots, n = (size_t)ref->count * ng->slots;
  return memcmp(cg->owners + at, ng->owners + at, n) == 0 &&
         memcmp(cg->states + at, ng->states + at, n) == 0;
}

static const pmap_chunk_ref_t *pmap_stored_find(const pmap_stored_t *st, const char *group,
                                                uint32_t first, uint32_t count) {
  for (size_t i = 0; st && i < st->n; i++)
    if (st->refs[i].first == first && st->refs[i].count == count &&
        strcmp(st->refs[i].group, group) == 0)
      return &st->refs[i];
  return NULL;
}

/* One chunk's znode data: range [first, first + count) of g. */
static int pmap_chunk_encode(const pmap_group_t *g, uint32_t first, uint32_t count,
                             pmap_blob_t *out) {
  Grid__PmapChunk ch = GRID__PMAP_CHUNK__INIT;
  ch.group = (char *)g->name;
  ch.first = first;
  ch.count = count;
  ch.copies = g->slots;
  size_t at = (size_t)first * g->slots, n = (size_t)count * g->slots;
  ch.owners = (ProtobufCBinaryData){n, g->owners + at};
  ch.states = (ProtobufCBinaryData){n, g->states + at};
  out->len = grid__pmap_chunk__get_packed_size(&ch);
  out->buf = malloc(out->len ? out->len : 1);
  if (!out->buf) return GRID_ENOMEM;
  grid__pmap_chunk__pack(&ch, out->buf);
  return 0;
}

int pmap_store_plan(const pmap_t *next, const pmap_t *cur, const pmap_stored_t *cur_refs,
                    uint64_t epoch, uint64_t writer, pmap_plan_t *plan) {
  memset(plan, 0, sizeof *plan);
  size_t nchunks = 0;
  for (size_t i = 0; i < next->ngroups; i++) {
    uint32_t per = pmap_chunk_partitions(next->groups[i].slots);
    nchunks += (next->groups[i].partitions + per - 1) / per;
  }
  size_t ncur = cur_refs ? cur_refs->n : 0;
  plan->stored.refs = calloc(nchunks + 1, sizeof *plan->stored.refs);
  plan->writes = calloc(nchunks + 1, sizeof *plan->writes);
  plan->obsolete = calloc(ncur + 1, sizeof *plan->obsolete);
  unsigned char *kept = calloc(ncur + 1, 1);
  Grid__PmapChunkRef *crefs = calloc(nchunks + 1, sizeof *crefs);
  Grid__PmapChunkRef **crp = calloc(nchunks + 1, sizeof *crp);
  int rc = GRID_ENOMEM;
  if (!plan->stored.refs || !plan->writes || !plan->obsolete || !kept || !crefs || !crp)
    goto out;
  for (size_t i = 0; i < next->ngroups; i++) {
    const pmap_group_t *g = &next->groups[i];
    uint32_t per = pmap_chunk_partitions(g->slots);
    for (uint32_t first = 0; first < g->partitions; first += per) {
      uint32_t count = g->partitions - first < per ? g->partitions - first : per;
      pmap_chunk_ref_t *r = &plan->stored.refs[plan->stored.n++];
      const pmap_chunk_ref_t *old = pmap_stored_find(cur_refs, g->name, first, count);
      if (old && pmap_range_same(cur, old, g)) {
        *r = *old; /* unchanged: the root names the same znode again */
        kept[old - cur_refs->refs] = 1;
        continue;
      }
      snprintf(r->group, sizeof r->group, "%s", g->name);
      r->first = first;
      r->count = count;
      snprintf(r->znode, sizeof r->znode, "%s.%u.%llu.%016llx", g->name, first,
               (unsigned long long)epoch, (unsigned long long)writer);
      pmap_blob_t *w = &plan->writes[plan->nwrites];
      if ((rc = pmap_chunk_encode(g, first, count, w)) != 0) goto out;
      snprintf(w->znode, sizeof w->znode, "%s", r->znode);
      r->bytes = (uint32_t)w->len;
      plan->nwrites++;
    }
  }
  for (size_t i = 0; i < ncur; i++)
    if (!kept[i]) memcpy(plan->obsolete[plan->nobsolete++], cur_refs->refs[i].znode, PMAP_ZNODE_MAX);
  pmap_msg_t x;
  if ((rc = pmap_msg(next, 0, 0, &x)) != 0) goto out;
  x.pm.epoch = epoch;
  for (size_t i = 0; i < plan->stored.n; i++) {
    const pmap_chunk_ref_t *r = &plan->stored.refs[i];
    grid__pmap_chunk_ref__init(&crefs[i]);
    crefs[i].group = (char *)r->group;
    crefs[i].first = r->first;
    crefs[i].count = r->count;
    crefs[i].znode = (char *)r->znode;
    crefs[i].bytes = r->bytes;
    crp[i] = &crefs[i];
  }
  x.pm.chunks = crp;
  x.pm.n_chunks = plan->stored.n;
  rc = pmap_pack(&x.pm, &plan->root, &plan->root_len);
  pmap_msg_free(&x);
out:
  free(kept);
  free(crefs);
  free(crp);
  if (rc != 0) pmap_plan_free(plan);
  return rc;
}

static int pmap_ref_cmp(const void *a, const void *b) {
  const pmap_chunk_ref_t *x = a, *y = b;
  int c = strcmp(x->group, y->group);
  if (c) return c;
  return x->first < y->first ? -1 : x->first > y->first;
}

static int pmap_znode_cmp(const void *a, const void *b) {
  return strcmp(((const pmap_chunk_ref_t *)a)->znode, ((const pmap_chunk_ref_t *)b)->znode);
}

/* Whether refs put every partition of every group of m in exactly one
 * chunk, and name each chunk znode once. */
static int pmap_stored_exact(const pmap_t *m, const pmap_stored_t *refs) {
  pmap_chunk_ref_t *sorted = malloc((refs->n ? refs->n : 1) * sizeof *sorted);
  if (!sorted) return 0;
  if (refs->n) memcpy(sorted, refs->refs, refs->n * sizeof *sorted);
  int ok = 1;
  qsort(sorted, refs->n, sizeof *sorted, pmap_znode_cmp);
  for (size_t i = 0; ok && i < refs->n; i++)
    ok = sorted[i].znode[0] && (i == 0 || strcmp(sorted[i - 1].znode, sorted[i].znode) != 0);
  qsort(sorted, refs->n, sizeof *sorted, pmap_ref_cmp);
  for (size_t g = 0; ok && g < m->ngroups; g++) {
    /* The group's chunks, by first partition, must tile it. */
    uint32_t next = 0;
    for (size_t i = 0; i < refs->n; i++) {
      if (strcmp(sorted[i].group, m->groups[g].name) != 0) continue;
      if (sorted[i].first != next) ok = 0;
      next = sorted[i].first + sorted[i].count;
    }
    if (next != m->groups[g].partitions) ok = 0;
  }
  free(sorted);
  return ok;
}

int pmap_root_decode(const unsigned char *buf, size_t len, pmap_t *m, pmap_stored_t *refs) {
  pmap_init(m);
  memset(refs, 0, sizeof *refs);
  Grid__Pmap *pm = grid__pmap__unpack(NULL, len, buf);
  if (!pm) return GRID_EPROTO;
  int rc = pmap_from_msg(pm, 0, m);
  if (rc == 0) {
    refs->refs = calloc(pm->n_chunks + 1, sizeof *refs->refs);
    if (!refs->refs) rc = GRID_ENOMEM;
  }
  /* Every partition of every group is in exactly one chunk. */
  uint64_t covered = 0, want = 0;
  for (size_t i = 0; rc == 0 && i < m->ngroups; i++) want += m->groups[i].partitions;
  for (size_t i = 0; rc == 0 && i < pm->n_chunks; i++) {
    const Grid__PmapChunkRef *c = pm->chunks[i];
    pmap_chunk_ref_t *r = &refs->refs[i];
    const pmap_group_t *g = c->group ? pmap_find_group(m, c->group) : NULL;
    if (!g || !c->znode || strlen(c->znode) >= sizeof r->znode || c->count == 0 ||
        c->first >= g->partitions || c->count > g->partitions - c->first ||
        pmap_stored_find(refs, g->name, c->first, c->count)) {
      rc = GRID_EPROTO;
      break;
    }
    snprintf(r->group, sizeof r->group, "%s", g->name);
    snprintf(r->znode, sizeof r->znode, "%s", c->znode);
    r->first = c->first;
    r->count = c->count;
    r->bytes = c->bytes;
    refs->n = i + 1;
    covered += c->count;
  }
  if (rc == 0 && (covered != want || !pmap_stored_exact(m, refs))) rc = GRID_EPROTO;
  if (rc == 0) rc = pmap_caches_settle(m);
  grid__pmap__free_unpacked(pm, NULL);
  if (rc != 0) {
    pmap_free(m);
    pmap_stored_free(refs);
  }
  return rc;
}

int pmap_chunk_apply(pmap_t *m, const pmap_chunk_ref_t *ref, const unsigned char *buf,
                     size_t len) {
  pmap_group_t *g = (pmap_group_t *)pmap_find_group(m, ref->group);
  Grid__PmapChunk *ch = grid__pmap_chunk__unpack(NULL, len, buf);
  if (!ch) return GRID_EPROTO;
  size_t n = (size_t)ref->count * (g ? g->slots : 0);
  int ok = g && ch->group && strcmp(ch->group, ref->group) == 0 && ch->first == ref->first &&
           ch->count == ref->count && ch->copies == g->slots && ch->owners.len == n &&
           ch->states.len == n && pmap_range_ok(ch->owners.data, ch->states.data, n, m->nnodes);
  if (ok) {
    size_t at = (size_t)ref->first * g->slots;
    memcpy(g->owners + at, ch->owners.data, n);
    memcpy(g->states + at, ch->states.data, n);
  }
  grid__pmap_chunk__free_unpacked(ch, NULL);
  return ok ? 0 : GRID_EPROTO;
}

int pmap_chunk_reuse(pmap_t *m, const pmap_t *prev, const pmap_stored_t *prev_refs,
                     const pmap_chunk_ref_t *ref) {
  int named = 0;
  for (size_t i = 0; prev_refs && i < prev_refs->n && !named; i++)
    named = strcmp(prev_refs->refs[i].znode, ref->znode) == 0;
  pmap_group_t *g = (pmap_group_t *)pmap_find_group(m, ref->group);
  const pmap_group_t *pg = prev ? pmap_find_group(prev, ref->group) : NULL;
  if (!named || !g || !pg || pg->slots != g->slots || pg->partitions != g->partitions)
    return 0;
  size_t at = (size_t)ref->first * g->slots, n = (size_t)ref->count * g->slots;
  /* The bytes are the chunk's, as prev read them; they name nodes by index
   * into the root that names the chunk, which is m's. */
  if (!pmap_range_ok(pg->owners + at, pg->states + at, n, m->nnodes)) return 0;
  memcpy(g->owners + at, pg->owners + at, n);
  memcpy(g->states + at, pg->states + at, n);
  return 1;
}
