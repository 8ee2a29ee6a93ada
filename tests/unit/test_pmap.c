/*
 * test_pmap: the partition map on its own: rendezvous placement with zones,
 * the rules by which pmap_next derives one epoch from the last (first map,
 * node loss, join with fill reports, a copy just filled leading only a
 * step later, a new primary after a death refilling the other copies, a
 * planned handover in two steps (HANDOFF, then the drained report), demote
 * reports, stability, replicated caches, caches added and removed), the
 * placement groups that caches of one shape share (reports name groups;
 * the map grows with shapes, not caches; the cache index and walks), the
 * order of nodes kept from map to map, the protobuf encoding (the wire form
 * with groups and the caches they place; the root and chunks of the map in
 * ZooKeeper, and a new map writing only the chunks it changed), pmap_copy
 * and the accessors.
 *
 * Everything here is pure computation: no clock, no sleep, no I/O. Node
 * indexes differ from map to map (they index each map's own node list, in
 * which a node's place shifts when one before it goes), so copies are
 * compared by node id.
 *
 * Run with a test name as argument to run that test alone.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "check.h"
#include "grid.h"
#include "grid.pb-c.h"
#include "pmap.h"

#define P 1024 /* partitions of the balance and movement tests */

/* Nodes node-<first>..node-<first+n-1>, with addresses and no zone. */
static void mknodes(pmap_node_t *nodes, size_t n, int first) {
  memset(nodes, 0, n * sizeof *nodes);
  for (size_t i = 0; i < n; i++) {
    snprintf(nodes[i].id, sizeof nodes[i].id, "node-%d", first + (int)i);
    snprintf(nodes[i].addr, sizeof nodes[i].addr, "127.0.0.1:%d",
             7000 + first + (int)i);
  }
}

static pmap_cache_def_t def(const char *name, uint32_t partitions,
                            uint32_t backups, int replicated) {
  pmap_cache_def_t d = {.name = name,
                        .partitions = partitions,
                        .backups = backups,
                        .replicated = replicated};
  return d;
}

/* The first map (no current one), at epoch 1. */
static void first_map(const pmap_node_t *nodes, size_t n,
                      const pmap_cache_def_t *defs, size_t ndefs, pmap_t *out) {
  int changed = -1;
  pmap_init(out);
  CHECK_RC(pmap_next(NULL, nodes, n, defs, ndefs, NULL, 0, out, &changed), 0);
  CHECK_EQ(changed, 1);
  out->epoch = 1;
}

/* The map after cur, at cur's epoch + 1; returns `changed`. */
static int step(const pmap_t *cur, const pmap_node_t *nodes, size_t n,
                const pmap_cache_def_t *defs, size_t ndefs,
                const pmap_ready_t *ready, size_t nready, pmap_t *out) {
  int changed = -1;
  pmap_init(out);
  CHECK_RC(pmap_next(cur, nodes, n, defs, ndefs, ready, nready, out, &changed),
           0);
  CHECK(changed == 0 || changed == 1);
  out->epoch = cur->epoch + 1;
  return changed;
}

/* The group that places cache `name` in m (caches of one shape share it). */
static const pmap_group_t *cache(const pmap_t *m, const char *name) {
  const pmap_group_t *c = pmap_find_cache(m, name);
  CHECK(c != NULL);
  return c;
}

/* Group `name` of m. */
static const pmap_group_t *group(const pmap_t *m, const char *name) {
  const pmap_group_t *g = pmap_find_group(m, name);
  CHECK(g != NULL);
  return g;
}

/* The name of the group placing cache `name` in m, as reports name it; it
 * lives as long as m. */
static const char *grp(const pmap_t *m, const char *name) {
  return cache(m, name)->name;
}

/* Id of the primary of p, or NULL when it has none. */
static const char *primary_id(const pmap_t *m, const pmap_group_t *c,
                              uint32_t p) {
  int idx = pmap_primary(c, p);
  if (idx < 0) return NULL;
  CHECK((size_t)idx < m->nnodes);
  return m->nodes[idx].id;
}

/* Slot of the copy of p on node `id`, and its state; -1 when there is none. */
static int slot_of(const pmap_t *m, const pmap_group_t *c, uint32_t p,
                   const char *id, int *state) {
  int found = -1;
  for (uint32_t i = 0; i < c->slots; i++) {
    int st;
    int idx = pmap_copy_at(c, p, i, &st);
    if (idx < 0 || st == PMAP_NONE) continue;
    CHECK((size_t)idx < m->nnodes);
    if (strcmp(m->nodes[idx].id, id) == 0) {
      CHECK(found < 0); /* never two copies on one node */
      found = (int)i;
      *state = st;
    }
  }
  return found;
}

/* How many copies of p the map holds (slots with a node). */
static uint32_t ncopies(const pmap_group_t *c, uint32_t p) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < c->slots; i++) {
    int st;
    if (pmap_copy_at(c, p, i, &st) >= 0 && st != PMAP_NONE) n++;
  }
  return n;
}

/* p's copies are exactly ideal[0..nideal) of nodes[], in that order, the
 * primary OWNING and the other copies in `backup_state`, and every other
 * slot is empty. */
static void check_ideal_states(const pmap_t *m, const pmap_group_t *c,
                               uint32_t p, const pmap_node_t *nodes,
                               const uint32_t *ideal, size_t nideal,
                               int backup_state) {
  CHECK(nideal <= c->slots);
  for (uint32_t i = 0; i < c->slots; i++) {
    int st;
    int idx = pmap_copy_at(c, p, i, &st);
    if (i < nideal) {
      CHECK(idx >= 0 && (size_t)idx < m->nnodes);
      CHECK_EQ(st, i == 0 ? PMAP_OWNING : backup_state);
      CHECK_STR(m->nodes[idx].id, nodes[ideal[i]].id);
    } else {
      CHECK_EQ(idx, -1);
      CHECK_EQ(st, PMAP_NONE);
    }
  }
}

/* p's copies are exactly ideal[0..nideal) of nodes[], in that order, all
 * OWNING, and every other slot is empty. */
static void check_ideal_layout(const pmap_t *m, const pmap_group_t *c,
                               uint32_t p, const pmap_node_t *nodes,
                               const uint32_t *ideal, size_t nideal) {
  check_ideal_states(m, c, p, nodes, ideal, nideal, PMAP_OWNING);
}

/* Id of the leader of p (the primary, or the primary handing over), or
 * NULL when it has none. */
static const char *leader_id(const pmap_t *m, const pmap_group_t *c,
                             uint32_t p) {
  int idx = pmap_leader(c, p);
  if (idx < 0) return NULL;
  CHECK((size_t)idx < m->nnodes);
  return m->nodes[idx].id;
}

/* The first step of a planned handover: in m, p's primary of prev (OWNING
 * there) hands off (copy 0 HANDOFF: no primary, but it still leads), and
 * nothing else changed: every other copy is on the same node, in the same
 * slot and state as in prev. */
static void check_handoff(const pmap_t *m, const pmap_group_t *c, uint32_t p,
                          const pmap_t *prev, const pmap_group_t *pc) {
  int s;
  int was = pmap_copy_at(pc, p, 0, &s);
  CHECK(was >= 0 && (size_t)was < prev->nnodes);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK_EQ(pmap_primary(c, p), -1);
  CHECK(primary_id(m, c, p) == NULL);
  CHECK_STR(leader_id(m, c, p), prev->nodes[was].id);
  CHECK_EQ(ncopies(c, p), ncopies(pc, p));
  uint32_t k = c->slots > pc->slots ? c->slots : pc->slots;
  for (uint32_t i = 0; i < k; i++) {
    int sp, sm;
    int np = pmap_copy_at(pc, p, i, &sp), nm = pmap_copy_at(c, p, i, &sm);
    if (np < 0) {
      CHECK_EQ(nm, -1);
      CHECK_EQ(sm, PMAP_NONE);
      continue;
    }
    CHECK(nm >= 0 && (size_t)nm < m->nnodes);
    CHECK_STR(m->nodes[nm].id, prev->nodes[np].id);
    CHECK_EQ(sm, i == 0 ? PMAP_HANDOFF : sp);
  }
}

/* A drained report of the primary `id` handing over p of `group`, at
 * `epoch`. */
static pmap_ready_t drained(const char *group, uint32_t p, const char *id,
                            uint64_t epoch) {
  pmap_ready_t r = {.group = group, .partition = p, .node_id = id,
                    .epoch = epoch, .drained = 1};
  return r;
}


/* The ranking pmap.h promises, worked out here on its own: indexes of
 * nodes[] by XXH3_64(id, seed = p), highest first. */
typedef struct ranked {
  uint64_t score;
  uint32_t idx;
} ranked_t;

static int cmp_ranked(const void *a, const void *b) {
  const ranked_t *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  return 0;
}

static void rank_nodes(const pmap_node_t *nodes, size_t n, uint32_t p,
                       uint32_t *out) {
  ranked_t r[PMAP_NODES_MAX];
  for (size_t i = 0; i < n; i++) {
    r[i].score = XXH3_64bits_withSeed(nodes[i].id, strlen(nodes[i].id), p);
    r[i].idx = (uint32_t)i;
  }
  qsort(r, n, sizeof r[0], cmp_ranked);
  for (size_t i = 0; i < n; i++) out[i] = r[i].idx;
}

/* ---- pmap_ideal ---------------------------------------------------------- */

/* A node the map does not name (self -1) never leads a partition, not even
 * one whose primary is "no one" (handing over, lost, no copy): found in
 * test_lease, where a node not yet in its first map served a partition
 * handing over from its empty store. */
static void test_leads_needs_a_place(void) {
  uint8_t owners[6] = {1, 2, 2, 1, 0, 0};
  uint8_t states[6] = {PMAP_HANDOFF, PMAP_OWNING, PMAP_OWNING, PMAP_OWNING, PMAP_NONE,
                       PMAP_NONE};
  pmap_group_t g = {.name = "g", .partitions = 3, .backups = 1, .slots = 2, .owners = owners,
                    .states = states};
  CHECK_EQ(pmap_primary(&g, 0), -1); /* handing over */
  CHECK(!pmap_leads(&g, 0, -1));
  CHECK(!pmap_leads(&g, 0, 0));
  CHECK(pmap_leads(&g, 1, 1));
  CHECK(!pmap_leads(&g, 1, 0));
  CHECK(!pmap_leads(&g, 1, -1));
  CHECK_EQ(pmap_primary(&g, 2), -1); /* no copy */
  CHECK(!pmap_leads(&g, 2, -1));
}

static void test_ideal_order(void) {
  pmap_node_t nodes[8];
  mknodes(nodes, 8, 1);
  for (uint32_t p = 0; p < 256; p++) {
    uint32_t want_order[8];
    rank_nodes(nodes, 8, p, want_order);
    for (size_t want = 0; want <= 10; want++) {
      uint32_t out[PMAP_NODES_MAX], again[PMAP_NODES_MAX];
      size_t got = pmap_ideal(nodes, 8, p, want, out);
      CHECK_EQ(got, want < 8 ? want : 8);
      /* deterministic */
      CHECK_EQ(pmap_ideal(nodes, 8, p, want, again), got);
      CHECK(memcmp(out, again, got * sizeof out[0]) == 0);
      /* best first: the hash ranking, and so distinct nodes */
      for (size_t i = 0; i < got; i++) CHECK_EQ(out[i], want_order[i]);
    }
  }
  /* Fewer nodes than wanted; no nodes at all. */
  uint32_t out[4];
  CHECK_EQ(pmap_ideal(nodes, 2, 7, 4, out), 2);
  CHECK(out[0] != out[1] && out[0] < 2 && out[1] < 2);
  CHECK_EQ(pmap_ideal(nodes, 0, 7, 4, out), 0);
}

/* The chosen nodes are a property of the ids, not of their order in the
 * array. */
static void test_ideal_order_independent(void) {
  pmap_node_t nodes[6], rev[6];
  mknodes(nodes, 6, 1);
  for (size_t i = 0; i < 6; i++) rev[i] = nodes[5 - i];
  for (uint32_t p = 0; p < 128; p++) {
    uint32_t a[3], b[3];
    CHECK_EQ(pmap_ideal(nodes, 6, p, 3, a), 3);
    CHECK_EQ(pmap_ideal(rev, 6, p, 3, b), 3);
    for (size_t i = 0; i < 3; i++) CHECK_STR(nodes[a[i]].id, rev[b[i]].id);
  }
}

/* What zone-aware placement must give: walk the ranking, keep a node unless
 * its (non-empty) zone is taken already. */
static size_t zone_expect(const pmap_node_t *nodes, size_t n, uint32_t p,
                          size_t want, uint32_t *out) {
  uint32_t order[PMAP_NODES_MAX];
  rank_nodes(nodes, n, p, order);
  size_t got = 0;
  for (size_t i = 0; i < n && got < want; i++) {
    const char *z = nodes[order[i]].zone;
    int used = 0;
    for (size_t k = 0; z[0] && k < got; k++)
      if (strcmp(nodes[out[k]].zone, z) == 0) used = 1;
    if (!used) out[got++] = order[i];
  }
  return got;
}

static void test_ideal_zones(void) {
  pmap_node_t nodes[6];
  mknodes(nodes, 6, 1);
  const char *zones[6] = {"a", "a", "b", "c", "b", "a"};
  for (size_t i = 0; i < 6; i++)
    snprintf(nodes[i].zone, sizeof nodes[i].zone, "%s", zones[i]);
  int saw_second_of_a_zone_skipped = 0;
  for (uint32_t p = 0; p < 256; p++) {
    for (size_t want = 1; want <= 6; want++) {
      uint32_t out[6], exp[6];
      size_t got = pmap_ideal(nodes, 6, p, want, out);
      /* three zones: never more than three copies */
      CHECK_EQ(got, want < 3 ? want : 3);
      for (size_t i = 0; i < got; i++)
        for (size_t k = 0; k < i; k++) {
          CHECK(out[i] != out[k]);
          CHECK(strcmp(nodes[out[i]].zone, nodes[out[k]].zone) != 0);
        }
      CHECK_EQ(zone_expect(nodes, 6, p, want, exp), got);
      for (size_t i = 0; i < got; i++) CHECK_EQ(out[i], exp[i]);
    }
    /* the best node always leads */
    uint32_t order[6], one[1];
    rank_nodes(nodes, 6, p, order);
    CHECK_EQ(pmap_ideal(nodes, 6, p, 1, one), 1);
    CHECK_EQ(one[0], order[0]);
    if (strcmp(nodes[order[0]].zone, nodes[order[1]].zone) == 0)
      saw_second_of_a_zone_skipped = 1;
  }
  CHECK(saw_second_of_a_zone_skipped); /* the zone rule was exercised */

  /* "a","a","b","c": two copies of "a" never; four wanted, three given. */
  for (uint32_t p = 0; p < 64; p++) {
    uint32_t out[4];
    size_t got = pmap_ideal(nodes, 4, p, 4, out);
    CHECK_EQ(got, 3);
    int in_a = 0;
    for (size_t i = 0; i < got; i++) in_a += nodes[out[i]].zone[0] == 'a';
    CHECK_EQ(in_a, 1);
  }
}

static void test_ideal_empty_zone_unconstrained(void) {
  pmap_node_t nodes[5];
  mknodes(nodes, 5, 1);
  /* node-1, node-2, node-3: no zone; node-4, node-5: zone "z" */
  snprintf(nodes[3].zone, sizeof nodes[3].zone, "z");
  snprintf(nodes[4].zone, sizeof nodes[4].zone, "z");
  for (uint32_t p = 0; p < 256; p++) {
    uint32_t out[5], exp[5];
    size_t got = pmap_ideal(nodes, 5, p, 5, out);
    CHECK_EQ(got, 4); /* the three without a zone, one of "z" */
    int nz = 0, nempty = 0;
    for (size_t i = 0; i < got; i++) {
      if (nodes[out[i]].zone[0]) nz++;
      else nempty++;
    }
    CHECK_EQ(nz, 1);
    CHECK_EQ(nempty, 3);
    CHECK_EQ(zone_expect(nodes, 5, p, 5, exp), got);
    for (size_t i = 0; i < got; i++) CHECK_EQ(out[i], exp[i]);
  }
  /* No zones at all: nothing is held back. */
  pmap_node_t plain[5];
  mknodes(plain, 5, 1);
  uint32_t out[5];
  CHECK_EQ(pmap_ideal(plain, 5, 3, 5, out), 5);
}

/* ---- first map and balance ---------------------------------------------- */

static void test_first_map_balance(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", P, 1, 0)};
  pmap_t m;
  first_map(nodes, 3, defs, 1, &m);
  CHECK_EQ(m.nnodes, 3);
  for (size_t i = 0; i < 3; i++) {
    CHECK_STR(m.nodes[i].id, nodes[i].id);
    CHECK_STR(m.nodes[i].addr, nodes[i].addr);
  }
  CHECK_EQ(m.ncaches, 1);
  CHECK_EQ(m.ngroups, 1);
  const pmap_group_t *c = cache(&m, "cache");
  CHECK(c == &m.groups[0]);
  CHECK_STR(c->name, "p1024-b1");
  CHECK_EQ(c->partitions, P);
  CHECK_EQ(c->backups, 1);
  CHECK_EQ(c->replicated, 0);
  CHECK(c->slots >= 2);

  unsigned prim[3] = {0}, back[3] = {0};
  for (uint32_t p = 0; p < P; p++) {
    int s0, s1;
    int a = pmap_copy_at(c, p, 0, &s0), b = pmap_copy_at(c, p, 1, &s1);
    CHECK_EQ(s0, PMAP_OWNING);
    CHECK_EQ(s1, PMAP_OWNING);
    CHECK(a >= 0 && a < 3 && b >= 0 && b < 3);
    CHECK(a != b);
    CHECK_EQ(pmap_primary(c, p), a);
    CHECK_EQ(ncopies(c, p), 2);
    uint32_t ideal[2];
    CHECK_EQ(pmap_ideal(m.nodes, m.nnodes, p, 2, ideal), 2);
    check_ideal_layout(&m, c, p, m.nodes, ideal, 2);
    prim[a]++;
    back[b]++;
  }
  /* P/3 = 341.3: primaries within 10%, backups within 15% */
  for (int i = 0; i < 3; i++) {
    fprintf(stderr, "   %s: %u primaries, %u backups\n", nodes[i].id, prim[i],
            back[i]);
    CHECK(prim[i] * 3 * 10 >= (unsigned)P * 9 && prim[i] * 3 * 10 <= (unsigned)P * 11);
    CHECK(back[i] * 3 * 100 >= (unsigned)P * 85 &&
          back[i] * 3 * 100 <= (unsigned)P * 115);
  }
  pmap_free(&m);
}

/* epoch 0 means "no map yet", as NULL does. */
static void test_first_map_epoch0(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("c", 64, 1, 0)};
  pmap_t fresh, zero, out;
  first_map(nodes, 3, defs, 1, &fresh);
  pmap_init(&zero); /* epoch 0, no caches, no nodes */
  int changed = -1;
  pmap_init(&out);
  CHECK_RC(pmap_next(&zero, nodes, 3, defs, 1, NULL, 0, &out, &changed), 0);
  CHECK_EQ(changed, 1);
  const pmap_group_t *a = cache(&fresh, "c"), *b = cache(&out, "c");
  for (uint32_t p = 0; p < 64; p++) {
    CHECK_STR(primary_id(&out, b, p), primary_id(&fresh, a, p));
    CHECK_EQ(ncopies(b, p), 2);
  }
  pmap_free(&fresh);
  pmap_free(&out);
}

/* ---- node loss ------------------------------------------------------------ */

static void test_node_loss_backup_takes_over(void) {
  pmap_node_t nodes[3], alive[2];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", P, 1, 0)};
  pmap_t cur, next;
  first_map(nodes, 3, defs, 1, &cur);
  /* node-2 dies */
  alive[0] = nodes[0];
  alive[1] = nodes[2];
  const char *dead = "node-2";
  CHECK_EQ(step(&cur, alive, 2, defs, 1, NULL, 0, &next), 1);
  CHECK_EQ(next.nnodes, 2);
  CHECK_EQ(pmap_node_index(&next, dead), -1);
  const pmap_group_t *a = cache(&cur, "cache"), *b = cache(&next, "cache");
  unsigned led = 0, backed = 0, untouched = 0, moving = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st, sd;
    const char *was = primary_id(&cur, a, p);
    const char *now = primary_id(&next, b, p);
    CHECK(was != NULL);
    CHECK(now != NULL); /* never LOST with a backup left */
    CHECK(strcmp(now, dead) != 0);
    CHECK_EQ(slot_of(&next, b, p, dead, &sd), -1);
    int dead_slot = slot_of(&cur, a, p, dead, &sd);
    if (dead_slot == 0) {
      led++;
      int bs;
      int bk = pmap_copy_at(a, p, 1, &bs);
      CHECK_EQ(bs, PMAP_OWNING);
      CHECK_STR(now, cur.nodes[bk].id);
    } else if (dead_slot < 0) {
      untouched++;
      CHECK_STR(now, was);
      /* nothing to do: both copies stay, in sync */
      CHECK_EQ(ncopies(b, p), 2);
      for (uint32_t i = 0; i < a->slots; i++) {
        int sa;
        int na = pmap_copy_at(a, p, i, &sa);
        if (na < 0) continue;
        CHECK_EQ(slot_of(&next, b, p, cur.nodes[na].id, &st), (int)i);
        CHECK_EQ(st, PMAP_OWNING);
      }
    } else {
      backed++;
      CHECK_STR(now, was);
    }
    /* every ideal owner of the survivors has a copy; those that had none
     * in cur get one MOVING */
    uint32_t ideal[2];
    size_t nideal = pmap_ideal(alive, 2, p, 2, ideal);
    CHECK_EQ(nideal, 2);
    for (size_t i = 0; i < nideal; i++) {
      const char *id = alive[ideal[i]].id;
      int sc;
      CHECK(slot_of(&next, b, p, id, &st) >= 0);
      if (slot_of(&cur, a, p, id, &sc) < 0) {
        CHECK_EQ(st, PMAP_MOVING);
        moving++;
      } else {
        CHECK_EQ(st, PMAP_OWNING);
      }
    }
  }
  CHECK(led > 0 && backed > 0 && untouched > 0);
  CHECK_EQ(moving, led + backed); /* one fresh copy per partition touched */
  pmap_free(&cur);
  pmap_free(&next);
}

/* Both copies of some partitions gone at once: those are LOST. */
static void test_node_loss_all_copies(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", 256, 1, 0)};
  pmap_t cur, next;
  first_map(nodes, 3, defs, 1, &cur);
  /* node-1 and node-2 die; node-3 is left */
  CHECK_EQ(step(&cur, &nodes[2], 1, defs, 1, NULL, 0, &next), 1);
  const pmap_group_t *a = cache(&cur, "cache"), *b = cache(&next, "cache");
  unsigned lost = 0;
  for (uint32_t p = 0; p < 256; p++) {
    int st;
    int had3 = slot_of(&cur, a, p, "node-3", &st) >= 0;
    int idx = pmap_copy_at(b, p, 0, &st);
    if (had3) {
      CHECK_STR(primary_id(&next, b, p), "node-3");
      CHECK_EQ(ncopies(b, p), 1);
    } else {
      lost++;
      CHECK_EQ(st, PMAP_LOST);
      CHECK_EQ(idx, -1);
      CHECK_EQ(pmap_primary(b, p), -1);
    }
  }
  CHECK(lost > 0);
  pmap_free(&cur);
  pmap_free(&next);
}

static void test_node_loss_no_backup_lost(void) {
  pmap_node_t nodes[3], alive[2];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", P, 0, 0)};
  pmap_t m1, m2, m3, m4;
  first_map(nodes, 3, defs, 1, &m1);
  alive[0] = nodes[0];
  alive[1] = nodes[2];
  CHECK_EQ(step(&m1, alive, 2, defs, 1, NULL, 0, &m2), 1);
  const pmap_group_t *c1 = cache(&m1, "cache"), *c2 = cache(&m2, "cache");
  unsigned lost = 0;
  for (uint32_t p = 0; p < P; p++) {
    const char *was = primary_id(&m1, c1, p);
    CHECK(was != NULL);
    CHECK_EQ(ncopies(c1, p), 1);
    int st;
    int idx = pmap_copy_at(c2, p, 0, &st);
    if (strcmp(was, "node-2") == 0) {
      lost++;
      CHECK_EQ(st, PMAP_LOST);
      CHECK_EQ(idx, -1);
      CHECK_EQ(pmap_primary(c2, p), -1);
      CHECK_EQ(ncopies(c2, p), 0);
    } else {
      CHECK_STR(primary_id(&m2, c2, p), was);
      CHECK_EQ(ncopies(c2, p), 1);
    }
  }
  CHECK(lost > P / 5 && lost < P / 2);

  /* Unchanged topology: LOST stays LOST, and nothing changes. */
  CHECK_EQ(step(&m2, alive, 2, defs, 1, NULL, 0, &m3), 0);
  /* node-2 comes back: its partitions stay LOST (its data is gone), the
   * others stay where they are. */
  step(&m3, nodes, 3, defs, 1, NULL, 0, &m4);
  const pmap_group_t *c4 = cache(&m4, "cache");
  unsigned lost4 = 0;
  for (uint32_t p = 0; p < P; p++) {
    const char *was = primary_id(&m1, c1, p);
    int st;
    int idx = pmap_copy_at(c4, p, 0, &st);
    if (strcmp(was, "node-2") == 0) {
      lost4++;
      CHECK_EQ(st, PMAP_LOST);
      CHECK_EQ(idx, -1);
      CHECK_EQ(pmap_primary(c4, p), -1);
      CHECK_EQ(slot_of(&m4, c4, p, "node-2", &st), -1);
    } else {
      CHECK_STR(primary_id(&m4, c4, p), was);
      CHECK_EQ(ncopies(c4, p), 1);
    }
  }
  CHECK_EQ(lost4, lost);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* backups 2, a node dies. Where it led, the next copy leads, OWNING, and
 * the other surviving copy turns MOVING: it may hold writes the new primary
 * never saw, so the new primary fills it again. Where it did not lead, the
 * primary stays and so do the other copies, OWNING. Once filled, the ideal
 * layout of the survivors, all OWNING, and stable. */
static void test_node_loss_backups2_refill(void) {
  pmap_node_t nodes[4], alive[3];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[1] = {def("cache", 256, 2, 0)};
  pmap_t m1, m2, m3, m4;
  first_map(nodes, 4, defs, 1, &m1);
  alive[0] = nodes[0];
  alive[1] = nodes[1];
  alive[2] = nodes[3];
  const char *dead = "node-3";
  CHECK_EQ(step(&m1, alive, 3, defs, 1, NULL, 0, &m2), 1);
  const pmap_group_t *c1 = cache(&m1, "cache"), *c2 = cache(&m2, "cache");
  pmap_ready_t ready[256 * 3];
  size_t nready = 0;
  unsigned led = 0, backed = 0, untouched = 0;
  for (uint32_t p = 0; p < 256; p++) {
    int st, sd;
    CHECK_EQ(ncopies(c1, p), 3);
    CHECK_EQ(ncopies(c2, p), 3); /* every survivor is an ideal owner */
    CHECK_EQ(slot_of(&m2, c2, p, dead, &sd), -1);
    int dead_slot = slot_of(&m1, c1, p, dead, &sd);
    const char *now = primary_id(&m2, c2, p);
    CHECK(now != NULL);
    if (dead_slot == 0) {
      led++;
      /* copy 1 is promoted, copy 2 turns MOVING */
      int s1, s2;
      int n1 = pmap_copy_at(c1, p, 1, &s1), n2 = pmap_copy_at(c1, p, 2, &s2);
      CHECK_EQ(s1, PMAP_OWNING);
      CHECK_EQ(s2, PMAP_OWNING);
      CHECK_STR(now, m1.nodes[n1].id);
      CHECK_EQ(slot_of(&m2, c2, p, m1.nodes[n1].id, &st), 0);
      CHECK_EQ(st, PMAP_OWNING);
      CHECK(slot_of(&m2, c2, p, m1.nodes[n2].id, &st) > 0);
      CHECK_EQ(st, PMAP_MOVING);
    } else {
      /* the primary stays; the copies it had stay OWNING */
      if (dead_slot > 0) backed++;
      else untouched++;
      CHECK_STR(now, primary_id(&m1, c1, p));
      for (uint32_t i = 0; i < c1->slots; i++) {
        int sa;
        int na = pmap_copy_at(c1, p, i, &sa);
        if (na < 0 || strcmp(m1.nodes[na].id, dead) == 0) continue;
        CHECK(slot_of(&m2, c2, p, m1.nodes[na].id, &st) >= 0);
        CHECK_EQ(st, PMAP_OWNING);
      }
    }
    /* the survivor that had no copy gets one, MOVING */
    for (size_t i = 0; i < 3; i++) {
      int sc;
      if (slot_of(&m1, c1, p, alive[i].id, &sc) >= 0) continue;
      CHECK(slot_of(&m2, c2, p, alive[i].id, &st) > 0);
      CHECK_EQ(st, PMAP_MOVING);
    }
    /* fill reports for every MOVING copy, at m2's epoch */
    for (uint32_t i = 0; i < c2->slots; i++) {
      int s;
      int n = pmap_copy_at(c2, p, i, &s);
      if (s != PMAP_MOVING) continue;
      CHECK(i > 0);
      ready[nready++] = (pmap_ready_t){.group = grp(&m2, "cache"),
                                       .partition = p,
                                       .node_id = m2.nodes[n].id,
                                       .epoch = m2.epoch};
    }
  }
  /* three copies on four nodes: node-3 held a copy of about 3/4 */
  CHECK(led > 0 && backed > 0 && untouched > 0);
  /* two MOVING copies where the dead node led, one elsewhere */
  CHECK_EQ(nready, led * 2 + backed);
  CHECK_EQ(step(&m2, alive, 3, defs, 1, ready, nready, &m3), 1);
  const pmap_group_t *c3 = cache(&m3, "cache");
  for (uint32_t p = 0; p < 256; p++) {
    uint32_t ideal[3];
    CHECK_EQ(pmap_ideal(alive, 3, p, 3, ideal), 3);
    check_ideal_layout(&m3, c3, p, alive, ideal, 3);
  }
  CHECK_EQ(step(&m3, alive, 3, defs, 1, NULL, 0, &m4), 0);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* ---- join ----------------------------------------------------------------- */

static void test_join_minimal_movement(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  const char *newcomer = "node-4";
  pmap_cache_def_t defs[1] = {def("cache", P, 1, 0)};
  pmap_t m1, m2;
  first_map(nodes, 3, defs, 1, &m1);
  CHECK_EQ(step(&m1, nodes, 4, defs, 1, NULL, 0, &m2), 1);
  CHECK_EQ(m2.epoch, 2);
  const pmap_group_t *c1 = cache(&m1, "cache"), *c2 = cache(&m2, "cache");

  pmap_ready_t *ready = calloc(P, sizeof *ready);
  CHECK(ready != NULL);
  size_t nready = 0;
  unsigned involved = 0, ideal_primary = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st;
    /* the primary stays: the newcomer has no data yet */
    CHECK_STR(primary_id(&m2, c2, p), primary_id(&m1, c1, p));
    /* the old copies stay, in sync */
    for (uint32_t i = 0; i < c1->slots; i++) {
      int s1;
      int n1 = pmap_copy_at(c1, p, i, &s1);
      if (n1 < 0) continue;
      CHECK(slot_of(&m2, c2, p, m1.nodes[n1].id, &st) >= 0);
      CHECK_EQ(st, PMAP_OWNING);
    }
    uint32_t ideal[2];
    CHECK_EQ(pmap_ideal(nodes, 4, p, 2, ideal), 2);
    int in_ideal = ideal[0] == 3 || ideal[1] == 3;
    int at = slot_of(&m2, c2, p, newcomer, &st);
    if (in_ideal) {
      involved++;
      ideal_primary += ideal[0] == 3;
      CHECK(at >= 1);
      CHECK_EQ(st, PMAP_MOVING);
      CHECK_EQ(ncopies(c2, p), 3);
      ready[nready++] = (pmap_ready_t){.group = grp(&m2, "cache"),
                                       .partition = p,
                                       .node_id = newcomer,
                                       .epoch = m2.epoch};
    } else {
      CHECK_EQ(at, -1);
      CHECK_EQ(ncopies(c2, p), 2);
    }
  }
  fprintf(stderr, "   newcomer: ideal owner of %u, ideal primary of %u of %d\n",
          involved, ideal_primary, P);
  /* A quarter of all copies moves: with two copies per partition that is
   * half the partitions (2 of 4 ranks), a quarter of the primaries. */
  CHECK(involved * 100 >= (unsigned)P * 40 && involved * 100 <= (unsigned)P * 60);
  CHECK(ideal_primary * 100 >= (unsigned)P * 15 &&
        ideal_primary * 100 <= (unsigned)P * 35);

  /* Fill reports of another epoch count for nothing. */
  for (int off = -1; off <= 1; off += 2) {
    pmap_ready_t *bad = calloc(nready, sizeof *bad);
    CHECK(bad != NULL);
    for (size_t i = 0; i < nready; i++) {
      bad[i] = ready[i];
      bad[i].epoch = (uint64_t)((int64_t)m2.epoch + off);
    }
    pmap_t w;
    CHECK_EQ(step(&m2, nodes, 4, defs, 1, bad, nready, &w), 0);
    const pmap_group_t *cw = cache(&w, "cache");
    for (size_t i = 0; i < nready; i++) {
      int st;
      CHECK(slot_of(&w, cw, ready[i].partition, newcomer, &st) >= 1);
      CHECK_EQ(st, PMAP_MOVING);
    }
    pmap_free(&w);
    free(bad);
  }
  /* Reports naming another group, the cache rather than its group, or
   * another node count for nothing either. */
  {
    pmap_ready_t other[3] = {ready[0], ready[0], ready[0]};
    other[0].group = "other";
    other[1].node_id = "node-1";
    other[2].group = "cache";
    pmap_t w;
    CHECK_EQ(step(&m2, nodes, 4, defs, 1, other, 3, &w), 0);
    pmap_free(&w);
  }

  /* Every MOVING copy reported at the current epoch: the newcomer's copies
   * turn OWNING, but they may not lead yet (until this map the primary did
   * not wait for their acknowledgements), nor do they count as in sync for
   * the ideal layout: the primaries stay, and so does every copy where it
   * was, the copy outside the ideal set included. */
  pmap_t m3, fresh;
  CHECK_EQ(step(&m2, nodes, 4, defs, 1, ready, nready, &m3), 1);
  first_map(nodes, 4, defs, 1, &fresh);
  const pmap_group_t *c3 = cache(&m3, "cache"), *cf = cache(&fresh, "cache");
  for (uint32_t p = 0; p < P; p++) {
    CHECK_STR(primary_id(&m3, c3, p), primary_id(&m2, c2, p));
    CHECK_EQ(ncopies(c3, p), ncopies(c2, p));
    for (uint32_t i = 0; i < c2->slots; i++) {
      int s2, s3;
      int n2 = pmap_copy_at(c2, p, i, &s2);
      if (n2 < 0) continue;
      CHECK_EQ(slot_of(&m3, c3, p, m2.nodes[n2].id, &s3), (int)i);
      CHECK_EQ(s3, PMAP_OWNING);
    }
  }

  /* One step later, with no report: those copies were OWNING in the
   * current map. Where the primary is the ideal one already, the ideal
   * owners, in the ideal order, all OWNING, the copy outside the ideal set
   * dropped. Where that hands the partition to another primary (the
   * newcomer leads), it takes two steps: first the primary hands off
   * (HANDOFF: it still leads, takes no new request, and there is no
   * primary), and nothing else changes: every other copy stays OWNING. */
  pmap_t m4;
  CHECK_EQ(step(&m3, nodes, 4, defs, 1, NULL, 0, &m4), 1);
  const pmap_group_t *c4 = cache(&m4, "cache");
  pmap_ready_t *drain = calloc(P, sizeof *drain);
  uint32_t *handed = calloc(P, sizeof *handed);
  CHECK(drain != NULL && handed != NULL);
  size_t ndrain = 0;
  for (uint32_t p = 0; p < P; p++) {
    uint32_t ideal[2];
    CHECK_EQ(pmap_ideal(m4.nodes, m4.nnodes, p, 2, ideal), 2);
    int handover =
        strcmp(primary_id(&m3, c3, p), m4.nodes[ideal[0]].id) != 0;
    if (handover) {
      check_handoff(&m4, c4, p, &m3, c3);
      CHECK_STR(m4.nodes[ideal[0]].id, newcomer);
      CHECK_EQ(ncopies(c4, p), 3);
      handed[ndrain] = p;
      drain[ndrain++] =
          drained(grp(&m4, "cache"), p, primary_id(&m3, c3, p), m4.epoch);
    } else {
      check_ideal_layout(&m4, c4, p, m4.nodes, ideal, 2);
      CHECK_EQ(ncopies(c4, p), 2);
      CHECK_STR(primary_id(&m4, c4, p), primary_id(&fresh, cf, p));
      CHECK_STR(leader_id(&m4, c4, p), primary_id(&fresh, cf, p));
    }
  }
  /* the primary changes exactly where the newcomer is the ideal primary */
  CHECK_EQ(ndrain, ideal_primary);
  CHECK(ndrain > 1);
  /* and it holds still: without a drained report the primaries handing
   * off wait */
  pmap_t m5;
  CHECK_EQ(step(&m4, nodes, 4, defs, 1, NULL, 0, &m5), 0);
  /* Drained reports of another epoch (m2's, m3's, the next one) count for
   * nothing; nor do fill or demote reports of the primary handing off at
   * m4's epoch, nor drained reports naming the new primary. */
  for (uint64_t e = m2.epoch; e <= m4.epoch + 1; e++) {
    for (int kind = 0; kind < 4; kind++) {
      if (e != m4.epoch && kind != 0) continue;
      if (e == m4.epoch && kind == 0) continue;
      pmap_ready_t *bad = calloc(ndrain, sizeof *bad);
      CHECK(bad != NULL);
      for (size_t i = 0; i < ndrain; i++) {
        bad[i] = drain[i];
        bad[i].epoch = e;
        if (kind == 1) bad[i].drained = 0;           /* a fill report */
        if (kind == 2) {                             /* a demote report */
          bad[i].drained = 0;
          bad[i].demote = 1;
        }
        if (kind == 3) bad[i].node_id = newcomer;    /* not the primary */
      }
      pmap_t w;
      CHECK_EQ(step(&m4, nodes, 4, defs, 1, bad, ndrain, &w), 0);
      const pmap_group_t *cw = cache(&w, "cache");
      for (size_t i = 0; i < ndrain; i++)
        check_handoff(&w, cw, handed[i], &m3, c3);
      pmap_free(&w);
      free(bad);
    }
  }
  /* Half of them drained at m4's epoch: those partitions hand over, the
   * others (whatever the partition a report names) still wait. */
  {
    size_t half = ndrain / 2;
    pmap_t w;
    CHECK_EQ(step(&m4, nodes, 4, defs, 1, drain, half, &w), 1);
    const pmap_group_t *cw = cache(&w, "cache");
    for (size_t i = 0; i < ndrain; i++) {
      uint32_t p = handed[i];
      if (i < half) {
        uint32_t ideal[2];
        CHECK_EQ(pmap_ideal(w.nodes, w.nnodes, p, 2, ideal), 2);
        check_ideal_layout(&w, cw, p, w.nodes, ideal, 2);
        CHECK_STR(primary_id(&w, cw, p), newcomer);
      } else {
        check_handoff(&w, cw, p, &m3, c3);
      }
    }
    pmap_free(&w);
  }
  /* All drained at m4's epoch: the ideal layout, every copy OWNING (the
   * copies stayed in sync through the handover, so nothing is filled
   * again) ... */
  pmap_t m6, m7;
  CHECK_EQ(step(&m4, nodes, 4, defs, 1, drain, ndrain, &m6), 1);
  const pmap_group_t *c6 = cache(&m6, "cache");
  for (uint32_t p = 0; p < P; p++) {
    uint32_t ideal[2];
    CHECK_EQ(pmap_ideal(m6.nodes, m6.nnodes, p, 2, ideal), 2);
    check_ideal_layout(&m6, c6, p, m6.nodes, ideal, 2);
    CHECK_EQ(ncopies(c6, p), 2);
    CHECK_STR(primary_id(&m6, c6, p), primary_id(&fresh, cf, p));
    CHECK_STR(leader_id(&m6, c6, p), primary_id(&fresh, cf, p));
  }
  /* ... the same layout as a first map of the four nodes ... */
  CHECK_EQ(c6->slots, cf->slots);
  CHECK(memcmp(c6->owners, cf->owners, (size_t)P * cf->slots) == 0);
  CHECK(memcmp(c6->states, cf->states, (size_t)P * cf->slots) == 0);
  /* ... and stable. */
  CHECK_EQ(step(&m6, nodes, 4, defs, 1, NULL, 0, &m7), 0);
  free(ready);
  free(drain);
  free(handed);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
  pmap_free(&m5);
  pmap_free(&m6);
  pmap_free(&m7);
  pmap_free(&fresh);
}

/* Part of the copies reported: those partitions settle, the rest wait. */
static void test_join_partial_ready(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[1] = {def("cache", 128, 1, 0)};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, defs, 1, &m1);
  step(&m1, nodes, 4, defs, 1, NULL, 0, &m2);
  const pmap_group_t *c2 = cache(&m2, "cache");
  uint32_t moving[128];
  size_t nmoving = 0;
  for (uint32_t p = 0; p < 128; p++) {
    int st;
    if (slot_of(&m2, c2, p, "node-4", &st) >= 0) {
      CHECK_EQ(st, PMAP_MOVING);
      moving[nmoving++] = p;
    }
  }
  CHECK(nmoving >= 2);
  pmap_ready_t r = {.group = grp(&m2, "cache"),
                    .partition = moving[0],
                    .node_id = "node-4",
                    .epoch = m2.epoch};
  CHECK_EQ(step(&m2, nodes, 4, defs, 1, &r, 1, &m3), 1);
  const pmap_group_t *c3 = cache(&m3, "cache");
  /* the reported copy is OWNING, but the primary and the copies stay as
   * they were for this step */
  {
    int st;
    CHECK(slot_of(&m3, c3, moving[0], "node-4", &st) >= 1);
    CHECK_EQ(st, PMAP_OWNING);
    CHECK_STR(primary_id(&m3, c3, moving[0]),
              primary_id(&m2, c2, moving[0]));
    CHECK_EQ(ncopies(c3, moving[0]), 3);
  }
  /* one step later, no report needed: the ideal owners, all OWNING; when
   * the primary changes, first the primary hands off, and the ideal owners
   * take over, all OWNING, once it reported itself drained */
  pmap_t m4;
  CHECK_EQ(step(&m3, nodes, 4, defs, 1, NULL, 0, &m4), 1);
  const pmap_group_t *c4 = cache(&m4, "cache");
  uint32_t ideal[2];
  CHECK_EQ(pmap_ideal(nodes, 4, moving[0], 2, ideal), 2);
  int handover = strcmp(primary_id(&m2, c2, moving[0]), nodes[ideal[0]].id) != 0;
  if (handover) {
    check_handoff(&m4, c4, moving[0], &m3, c3);
    pmap_ready_t d = drained(grp(&m4, "cache"), moving[0],
                             primary_id(&m3, c3, moving[0]), m4.epoch);
    pmap_t m5;
    CHECK_EQ(step(&m4, nodes, 4, defs, 1, &d, 1, &m5), 1);
    check_ideal_layout(&m5, cache(&m5, "cache"), moving[0], nodes, ideal, 2);
    pmap_free(&m5);
  } else {
    check_ideal_layout(&m4, c4, moving[0], nodes, ideal, 2);
  }
  /* the copies not reported still wait, in both maps */
  for (size_t i = 1; i < nmoving; i++) {
    const pmap_t *m[2] = {&m3, &m4};
    for (size_t k = 0; k < 2; k++) {
      const pmap_group_t *c = cache(m[k], "cache");
      int st;
      CHECK(slot_of(m[k], c, moving[i], "node-4", &st) >= 1);
      CHECK_EQ(st, PMAP_MOVING);
      CHECK_STR(primary_id(m[k], c, moving[i]),
                primary_id(&m2, c2, moving[i]));
      CHECK_EQ(ncopies(c, moving[i]), 3);
    }
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* backups 0: the newcomer takes a quarter of the partitions, MOVING, and
 * the old primary keeps serving until the step after the fill is
 * reported. */
static void test_join_no_backup(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[1] = {def("cache", P, 0, 0)};
  pmap_t m1, m2;
  first_map(nodes, 3, defs, 1, &m1);
  CHECK_EQ(step(&m1, nodes, 4, defs, 1, NULL, 0, &m2), 1);
  const pmap_group_t *c1 = cache(&m1, "cache"), *c2 = cache(&m2, "cache");
  unsigned involved = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st;
    CHECK_STR(primary_id(&m2, c2, p), primary_id(&m1, c1, p));
    uint32_t ideal[1];
    CHECK_EQ(pmap_ideal(nodes, 4, p, 1, ideal), 1);
    int at = slot_of(&m2, c2, p, "node-4", &st);
    if (ideal[0] == 3) {
      involved++;
      CHECK_EQ(at, 1);
      CHECK_EQ(st, PMAP_MOVING);
    } else {
      CHECK_EQ(at, -1);
    }
  }
  CHECK(involved * 100 >= (unsigned)P * 15 && involved * 100 <= (unsigned)P * 35);
  pmap_free(&m1);
  pmap_free(&m2);
}

/* ---- stability -------------------------------------------------------------- */

static void test_stable(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[2] = {def("a", P, 1, 0), def("b", 64, 2, 0)};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, defs, 2, &m1);
  CHECK_EQ(step(&m1, nodes, 3, defs, 2, NULL, 0, &m2), 0);
  CHECK_EQ(m1.ngroups, 2); /* two shapes */
  CHECK_EQ(m2.ngroups, 2);
  for (size_t d = 0; d < 2; d++) {
    const pmap_group_t *a = &m1.groups[d], *b = pmap_find_group(&m2, a->name);
    CHECK(b != NULL);
    CHECK_EQ(a->slots, b->slots);
    size_t n = (size_t)a->partitions * a->slots;
    CHECK(memcmp(a->owners, b->owners, n) == 0);
    CHECK(memcmp(a->states, b->states, n) == 0);
  }
  /* A map with copies still MOVING holds still too, without reports. */
  pmap_node_t two[2] = {nodes[0], nodes[1]};
  pmap_t l1, l2;
  CHECK_EQ(step(&m2, two, 2, defs, 2, NULL, 0, &l1), 1);
  CHECK_EQ(step(&l1, two, 2, defs, 2, NULL, 0, &l2), 0);
  /* A different address for a node is a change. */
  pmap_node_t moved[3];
  memcpy(moved, nodes, sizeof moved);
  snprintf(moved[1].addr, sizeof moved[1].addr, "10.0.0.2:7000");
  CHECK_EQ(step(&m2, moved, 3, defs, 2, NULL, 0, &m3), 1);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&l1);
  pmap_free(&l2);
}

/* ---- replicated ------------------------------------------------------------ */

static void check_everywhere(const pmap_t *m, const pmap_group_t *c,
                             int want_state_of_last) {
  for (uint32_t p = 0; p < c->partitions; p++) {
    CHECK_EQ(ncopies(c, p), m->nnodes);
    for (size_t i = 0; i < m->nnodes; i++) {
      int st;
      CHECK(slot_of(m, c, p, m->nodes[i].id, &st) >= 0);
      if (want_state_of_last && i == m->nnodes - 1)
        CHECK_EQ(st, want_state_of_last);
      else
        CHECK_EQ(st, PMAP_OWNING);
    }
    CHECK(pmap_primary(c, p) >= 0);
  }
}

static void test_replicated(void) {
  pmap_node_t nodes[5];
  mknodes(nodes, 5, 1);
  pmap_cache_def_t defs[1] = {def("r", 128, 0, 1)};
  pmap_t m1, m2, m3;
  first_map(nodes, 4, defs, 1, &m1);
  const pmap_group_t *c1 = cache(&m1, "r");
  CHECK_EQ(c1->replicated, 1);
  check_everywhere(&m1, c1, 0);
  /* primaries spread over the nodes */
  unsigned prim[4] = {0};
  for (uint32_t p = 0; p < 128; p++) prim[pmap_primary(c1, p)]++;
  for (int i = 0; i < 4; i++) CHECK(prim[i] > 0);
  /* A fifth node gets a copy of everything, MOVING. */
  CHECK_EQ(step(&m1, nodes, 5, defs, 1, NULL, 0, &m2), 1);
  check_everywhere(&m2, cache(&m2, "r"), PMAP_MOVING);
  /* A node leaves: the others still hold everything. Where it led, the
   * next copy leads and the others are MOVING (the new primary fills them
   * again); elsewhere every copy stays OWNING. */
  pmap_node_t three[3] = {nodes[0], nodes[2], nodes[3]};
  CHECK_EQ(step(&m1, three, 3, defs, 1, NULL, 0, &m3), 1);
  const pmap_group_t *c3 = cache(&m3, "r");
  pmap_ready_t refill[128 * 3];
  size_t nrefill = 0;
  unsigned led = 0;
  for (uint32_t p = 0; p < 128; p++) {
    CHECK_EQ(ncopies(c3, p), m3.nnodes);
    int was_led = strcmp(primary_id(&m1, c1, p), "node-2") == 0;
    led += was_led;
    if (was_led) {
      int s1;
      int n1 = pmap_copy_at(c1, p, 1, &s1);
      CHECK_STR(primary_id(&m3, c3, p), m1.nodes[n1].id);
    } else {
      CHECK_STR(primary_id(&m3, c3, p), primary_id(&m1, c1, p));
    }
    for (size_t i = 0; i < m3.nnodes; i++) {
      int st;
      int at = slot_of(&m3, c3, p, m3.nodes[i].id, &st);
      CHECK(at >= 0);
      if (at == 0 || !was_led) {
        CHECK_EQ(st, PMAP_OWNING);
      } else {
        CHECK_EQ(st, PMAP_MOVING);
        refill[nrefill++] = (pmap_ready_t){.group = grp(&m3, "r"),
                                           .partition = p,
                                           .node_id = m3.nodes[i].id,
                                           .epoch = m3.epoch};
      }
    }
  }
  CHECK(led > 0 && led < 128);
  CHECK_EQ(nrefill, led * 2);
  /* Filled again: every copy OWNING. */
  pmap_t m4;
  CHECK_EQ(step(&m3, three, 3, defs, 1, refill, nrefill, &m4), 1);
  check_everywhere(&m4, cache(&m4, "r"), 0);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* A replicated cache exists so that every node reads locally; zones that
 * cap a partitioned cache's copies must not cap it (pmap.h: "a replicated
 * cache has a copy on every node whatever the zones"; DESIGN.md section 3). */
static void test_replicated_with_zones(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  const char *zones[4] = {"a", "a", "b", "b"};
  for (size_t i = 0; i < 4; i++)
    snprintf(nodes[i].zone, sizeof nodes[i].zone, "%s", zones[i]);
  pmap_cache_def_t defs[1] = {def("r", 64, 0, 1)};
  pmap_t m;
  first_map(nodes, 4, defs, 1, &m);
  check_everywhere(&m, cache(&m, "r"), 0);
  pmap_free(&m);
}

/* ---- caches added and removed ---------------------------------------------- */

static void test_cache_added_removed(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t one[1] = {def("a", 256, 1, 0)};
  pmap_cache_def_t two[2] = {def("a", 256, 1, 0), def("b", 128, 2, 0)};
  pmap_cache_def_t only_b[1] = {def("b", 128, 2, 0)};
  pmap_t m1, m2, m3, m4;
  first_map(nodes, 3, one, 1, &m1);
  CHECK(pmap_find_cache(&m1, "b") == NULL);
  /* A join and a new cache at once: the new cache is empty, so its ideal
   * owners (the newcomer among them) own it at once. */
  CHECK_EQ(step(&m1, nodes, 4, two, 2, NULL, 0, &m2), 1);
  CHECK_EQ(m2.ncaches, 2);
  CHECK_EQ(m2.ngroups, 2); /* "a" and "b" differ in shape */
  const pmap_group_t *b = cache(&m2, "b");
  CHECK_EQ(b->partitions, 128);
  CHECK_EQ(b->backups, 2);
  int newcomer_owns = 0;
  for (uint32_t p = 0; p < 128; p++) {
    uint32_t ideal[3];
    CHECK_EQ(pmap_ideal(nodes, 4, p, 3, ideal), 3);
    check_ideal_layout(&m2, b, p, nodes, ideal, 3);
    int st;
    if (slot_of(&m2, b, p, "node-4", &st) >= 0) newcomer_owns = 1;
  }
  CHECK(newcomer_owns);
  /* while "a" moves as a join says */
  const pmap_group_t *a1 = cache(&m1, "a"), *a2 = cache(&m2, "a");
  for (uint32_t p = 0; p < 256; p++)
    CHECK_STR(primary_id(&m2, a2, p), primary_id(&m1, a1, p));

  /* The same defs again: nothing changes. */
  CHECK_EQ(step(&m2, nodes, 4, two, 2, NULL, 0, &m3), 0);
  /* "a" dropped: gone from the map. */
  CHECK_EQ(step(&m3, nodes, 4, only_b, 1, NULL, 0, &m4), 1);
  CHECK_EQ(m4.ncaches, 1);
  CHECK(pmap_find_cache(&m4, "a") == NULL);
  /* and so is its group, which placed no other cache */
  CHECK_EQ(m4.ngroups, 1);
  CHECK(pmap_find_group(&m4, cache(&m3, "a")->name) == NULL);
  const pmap_group_t *b3 = cache(&m3, "b"), *b4 = cache(&m4, "b");
  for (uint32_t p = 0; p < 128; p++)
    CHECK_STR(primary_id(&m4, b4, p), primary_id(&m3, b3, p));
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* A cache defined while no node is alive has no data: it never had an
 * OWNING copy, so it is not LOST (pmap.h: LOST is for "a partition that had
 * one"), and the first nodes to come own it. */
static void test_no_nodes_then_nodes(void) {
  pmap_node_t nodes[2];
  mknodes(nodes, 2, 1);
  pmap_cache_def_t defs[1] = {def("c", 16, 1, 0)};
  pmap_t m1, m2;
  first_map(nodes, 0, defs, 1, &m1);
  const pmap_group_t *c1 = cache(&m1, "c");
  for (uint32_t p = 0; p < 16; p++) CHECK_EQ(pmap_primary(c1, p), -1);
  CHECK_EQ(step(&m1, nodes, 2, defs, 1, NULL, 0, &m2), 1);
  const pmap_group_t *c2 = cache(&m2, "c");
  for (uint32_t p = 0; p < 16; p++) {
    int st;
    pmap_copy_at(c2, p, 0, &st);
    CHECK(st != PMAP_LOST);
    CHECK(pmap_primary(c2, p) >= 0);
    CHECK_EQ(ncopies(c2, p), 2);
  }
  pmap_free(&m1);
  pmap_free(&m2);
}

/* ---- the rules one by one, on hand-made current maps ------------------------ */

/* A current map at epoch 5 with nodes[0..n) and one cache "h" of one
 * partition, placed by its group (named as pmap_next names it, so that the
 * next map finds it) whose copies are owners[] (node index + 1) and
 * states[]. */
static void handmade(pmap_t *m, const pmap_node_t *nodes, size_t n,
                     uint32_t backups, uint32_t slots, const uint8_t *owners,
                     const uint8_t *states) {
  pmap_init(m);
  m->epoch = 5;
  m->nnodes = n;
  memcpy(m->nodes, nodes, n * sizeof *nodes);
  m->groups = calloc(1, sizeof *m->groups);
  CHECK(m->groups != NULL);
  m->ngroups = 1;
  pmap_group_t *c = &m->groups[0];
  pmap_group_name(1, backups, 0, c->name, sizeof c->name);
  c->partitions = 1;
  c->backups = backups;
  c->slots = slots;
  c->owners = malloc(slots);
  c->states = malloc(slots);
  CHECK(c->owners && c->states);
  memcpy(c->owners, owners, slots);
  memcpy(c->states, states, slots);
  pmap_cache_def_t h = def("h", 1, backups, 0);
  CHECK_RC(pmap_set_caches(m, &h, 1), 0);
  CHECK(pmap_find_cache(m, "h") == c);
}

static void letters(pmap_node_t *nodes, size_t n) {
  memset(nodes, 0, n * sizeof *nodes);
  for (size_t i = 0; i < n; i++) nodes[i].id[0] = (char)('A' + i);
}

/* The primary gone, the first OWNING copy left leads, even behind a
 * MOVING one; the MOVING copy stays MOVING. */
static void test_rule_first_owning_takes_over(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
  const uint8_t own[3] = {1, 2, 3};
  const uint8_t st[3] = {PMAP_OWNING, PMAP_MOVING, PMAP_OWNING};
  pmap_t cur, out;
  handmade(&cur, n, 3, 2, 3, own, st);
  pmap_node_t alive[2] = {n[1], n[2]}; /* A died */
  CHECK_EQ(step(&cur, alive, 2, defs, 1, NULL, 0, &out), 1);
  const pmap_group_t *c = cache(&out, "h");
  int s;
  CHECK_STR(primary_id(&out, c, 0), "C");
  CHECK_EQ(slot_of(&out, c, 0, "C", &s), 0);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK(slot_of(&out, c, 0, "B", &s) > 0);
  CHECK_EQ(s, PMAP_MOVING);
  CHECK_EQ(ncopies(c, 0), 2);
  pmap_free(&cur);
  pmap_free(&out);
}

/* The only copy left is MOVING: the partition is LOST, even when that
 * copy is reported filled at the current epoch (a copy made OWNING in this
 * step may not lead in it: no copy that was OWNING before is left). Filled
 * while the primary lives, it is OWNING at once and leads once the primary
 * dies in a later step. */
static void test_rule_moving_alone(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
  const uint8_t own[2] = {1, 2};
  const uint8_t st[2] = {PMAP_OWNING, PMAP_MOVING};
  pmap_t cur, out;
  handmade(&cur, n, 3, 1, 2, own, st);
  const char *H = grp(&cur, "h"); /* its group, as reports name it */
  pmap_node_t alive[2] = {n[1], n[2]}; /* A died */
  int s;

  CHECK_EQ(step(&cur, alive, 2, defs, 1, NULL, 0, &out), 1);
  CHECK_EQ(pmap_copy_at(cache(&out, "h"), 0, 0, &s), -1);
  CHECK_EQ(s, PMAP_LOST);
  pmap_free(&out);

  pmap_ready_t stale = {.group = H, .partition = 0, .node_id = "B",
                        .epoch = 4};
  step(&cur, alive, 2, defs, 1, &stale, 1, &out);
  pmap_copy_at(cache(&out, "h"), 0, 0, &s);
  CHECK_EQ(s, PMAP_LOST);
  pmap_free(&out);

  pmap_ready_t r = {.group = H, .partition = 0, .node_id = "B", .epoch = 5};
  CHECK_EQ(step(&cur, alive, 2, defs, 1, &r, 1, &out), 1);
  CHECK_EQ(pmap_copy_at(cache(&out, "h"), 0, 0, &s), -1);
  CHECK_EQ(s, PMAP_LOST);
  CHECK_EQ(pmap_primary(cache(&out, "h"), 0), -1);
  CHECK_EQ(ncopies(cache(&out, "h"), 0), 0);
  pmap_free(&out);

  /* Reported filled with A alive: B is OWNING behind A ... */
  pmap_t filled;
  CHECK_EQ(step(&cur, n, 3, defs, 1, &r, 1, &filled), 1);
  const pmap_group_t *cf = cache(&filled, "h");
  CHECK_STR(primary_id(&filled, cf, 0), "A");
  CHECK_EQ(slot_of(&filled, cf, 0, "B", &s), 1);
  CHECK_EQ(s, PMAP_OWNING);
  /* ... and A dying in the next step, B leads. */
  CHECK_EQ(step(&filled, alive, 2, defs, 1, NULL, 0, &out), 1);
  const pmap_group_t *c = cache(&out, "h");
  CHECK_STR(primary_id(&out, c, 0), "B");
  CHECK(slot_of(&out, c, 0, "C", &s) > 0); /* the other ideal owner */
  CHECK_EQ(s, PMAP_MOVING);
  CHECK_EQ(ncopies(c, 0), 2);
  pmap_free(&filled);
  pmap_free(&cur);
  pmap_free(&out);
}

/* A fill report that changes a state and no owner is still a change. */
static void test_rule_state_change_is_change(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
  const uint8_t own[3] = {1, 2, 3};
  const uint8_t st[3] = {PMAP_OWNING, PMAP_MOVING, PMAP_MOVING};
  pmap_t cur, out, again;
  handmade(&cur, n, 3, 2, 3, own, st);
  const char *H = grp(&cur, "h"); /* its group, as reports name it */
  CHECK_EQ(step(&cur, n, 3, defs, 1, NULL, 0, &again), 0);
  pmap_ready_t r = {.group = H, .partition = 0, .node_id = "B", .epoch = 5};
  CHECK_EQ(step(&cur, n, 3, defs, 1, &r, 1, &out), 1);
  const pmap_group_t *c = cache(&out, "h");
  int s;
  CHECK_STR(primary_id(&out, c, 0), "A");
  CHECK_EQ(slot_of(&out, c, 0, "B", &s), 1);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK_EQ(slot_of(&out, c, 0, "C", &s), 2);
  CHECK_EQ(s, PMAP_MOVING);
  pmap_free(&cur);
  pmap_free(&out);
  pmap_free(&again);
}

/* A primary outside the ideal set keeps leading while an ideal owner
 * fills, and in the step its fill is reported (that copy turns OWNING but
 * is not yet counted as in sync); once every ideal owner was OWNING in the
 * current map, the primary hands off (HANDOFF, nothing else changes), and
 * once it reported itself drained at that map's epoch the ideal primary
 * leads, every ideal owner OWNING, and the extra copy goes. Ideal owners
 * in sync but in the wrong order: the same two steps at once. */
static void test_rule_ideal_takes_over(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
  uint32_t ideal[3];
  rank_nodes(n, 3, 0, ideal); /* ideal owners: ideal[0], ideal[1] */
  const uint8_t own[2] = {(uint8_t)(ideal[2] + 1), (uint8_t)(ideal[0] + 1)};
  const uint8_t st[2] = {PMAP_OWNING, PMAP_OWNING};
  pmap_t cur, mid, out;
  handmade(&cur, n, 3, 1, 2, own, st);
  const char *H = grp(&cur, "h"); /* its group, as reports name it */
  CHECK_EQ(step(&cur, n, 3, defs, 1, NULL, 0, &mid), 1);
  const pmap_group_t *c = cache(&mid, "h");
  int s;
  CHECK_STR(primary_id(&mid, c, 0), n[ideal[2]].id);
  CHECK(slot_of(&mid, c, 0, n[ideal[0]].id, &s) > 0);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK(slot_of(&mid, c, 0, n[ideal[1]].id, &s) > 0);
  CHECK_EQ(s, PMAP_MOVING);
  pmap_ready_t r = {.group = H, .partition = 0, .node_id = n[ideal[1]].id,
                    .epoch = mid.epoch};
  pmap_t filled;
  CHECK_EQ(step(&mid, n, 3, defs, 1, &r, 1, &filled), 1);
  c = cache(&filled, "h");
  CHECK_STR(primary_id(&filled, c, 0), n[ideal[2]].id);
  CHECK(slot_of(&filled, c, 0, n[ideal[0]].id, &s) > 0);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK(slot_of(&filled, c, 0, n[ideal[1]].id, &s) > 0);
  CHECK_EQ(s, PMAP_OWNING);
  CHECK_EQ(ncopies(c, 0), 3);
  CHECK_EQ(step(&filled, n, 3, defs, 1, NULL, 0, &out), 1);
  check_handoff(&out, cache(&out, "h"), 0, &filled, c);
  CHECK_STR(leader_id(&out, cache(&out, "h"), 0), n[ideal[2]].id);
  /* the primary drained: then the ideal layout, all OWNING, stable */
  pmap_t done, still;
  pmap_ready_t r2 = drained(H, 0, n[ideal[2]].id, out.epoch);
  CHECK_EQ(step(&out, n, 3, defs, 1, &r2, 1, &done), 1);
  check_ideal_layout(&done, cache(&done, "h"), 0, n, ideal, 2);
  CHECK_EQ(ncopies(cache(&done, "h"), 0), 2);
  CHECK_EQ(step(&done, n, 3, defs, 1, NULL, 0, &still), 0);
  pmap_free(&cur);
  pmap_free(&mid);
  pmap_free(&filled);
  pmap_free(&out);
  pmap_free(&done);
  pmap_free(&still);

  const uint8_t own2[2] = {(uint8_t)(ideal[1] + 1), (uint8_t)(ideal[0] + 1)};
  handmade(&cur, n, 3, 1, 2, own2, st);
  H = grp(&cur, "h");
  CHECK_EQ(step(&cur, n, 3, defs, 1, NULL, 0, &out), 1);
  check_handoff(&out, cache(&out, "h"), 0, &cur, cache(&cur, "h"));
  CHECK_STR(leader_id(&out, cache(&out, "h"), 0), n[ideal[1]].id);
  r2 = drained(H, 0, n[ideal[1]].id, out.epoch);
  CHECK_EQ(step(&out, n, 3, defs, 1, &r2, 1, &done), 1);
  check_ideal_layout(&done, cache(&done, "h"), 0, n, ideal, 2);
  CHECK_EQ(step(&done, n, 3, defs, 1, NULL, 0, &still), 0);
  pmap_free(&cur);
  pmap_free(&out);
  pmap_free(&done);
  pmap_free(&still);
}

/* A MOVING copy reported filled (demote 0) turns OWNING in the next map,
 * but in that step it may not lead: until that map its primary did not
 * wait for its acknowledgements, so it may lack acknowledged writes. Nor
 * does it count towards "every ideal owner is OWNING": the ideal layout,
 * and any handover it makes, waits for the step after, once the copy was
 * OWNING in the current map. */
static void test_rule_fill_leads_next_step(void) {
  pmap_node_t n[3];
  letters(n, 3);
  uint32_t ideal[3];
  rank_nodes(n, 3, 0, ideal);
  const char *i0 = n[ideal[0]].id, *i1 = n[ideal[1]].id, *i2 = n[ideal[2]].id;
  int s;

  /* The ideal primary is the copy filling, behind the ideal backup. */
  {
    pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
    const uint8_t own[2] = {(uint8_t)(ideal[1] + 1), (uint8_t)(ideal[0] + 1)};
    const uint8_t st[2] = {PMAP_OWNING, PMAP_MOVING};
    pmap_t cur, filled, over, w, done, still;
    handmade(&cur, n, 3, 1, 2, own, st);
    const char *H = grp(&cur, "h"); /* its group, as reports name it */
    pmap_ready_t r = {.group = H, .partition = 0, .node_id = i0,
                      .epoch = cur.epoch};
    /* The step with the fill report: OWNING, but the primary stays. */
    CHECK_EQ(step(&cur, n, 3, defs, 1, &r, 1, &filled), 1);
    const pmap_group_t *c = cache(&filled, "h");
    CHECK_STR(primary_id(&filled, c, 0), i1);
    CHECK_EQ(slot_of(&filled, c, 0, i1, &s), 0);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK_EQ(slot_of(&filled, c, 0, i0, &s), 1);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK_EQ(ncopies(c, 0), 2);
    /* The next step, no report needed: the handover starts; the primary
     * hands off, and the copy filled stays OWNING. */
    CHECK_EQ(step(&filled, n, 3, defs, 1, NULL, 0, &over), 1);
    check_handoff(&over, cache(&over, "h"), 0, &filled, c);
    CHECK_STR(leader_id(&over, cache(&over, "h"), 0), i1);
    /* the old report, again, counts for nothing */
    CHECK_EQ(step(&filled, n, 3, defs, 1, &r, 1, &w), 1);
    check_handoff(&w, cache(&w, "h"), 0, &filled, c);
    pmap_free(&w);
    CHECK_EQ(step(&over, n, 3, defs, 1, NULL, 0, &w), 0);
    pmap_free(&w);
    /* Drained at that map's epoch: the new primary leads, whole, and
     * stable. */
    pmap_ready_t r2 = drained(H, 0, i1, over.epoch);
    CHECK_EQ(step(&over, n, 3, defs, 1, &r2, 1, &done), 1);
    CHECK_STR(primary_id(&done, cache(&done, "h"), 0), i0);
    check_ideal_layout(&done, cache(&done, "h"), 0, n, ideal, 2);
    CHECK_EQ(step(&done, n, 3, defs, 1, NULL, 0, &still), 0);
    pmap_free(&cur);
    pmap_free(&filled);
    pmap_free(&over);
    pmap_free(&done);
    pmap_free(&still);
  }

  /* No handover, but a copy outside the ideal set: it stays in the step
   * with the fill report (the ideal owners are not all in sync yet), and
   * goes in the next one. */
  {
    pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
    const uint8_t own[3] = {(uint8_t)(ideal[0] + 1), (uint8_t)(ideal[2] + 1),
                            (uint8_t)(ideal[1] + 1)};
    const uint8_t st[3] = {PMAP_OWNING, PMAP_OWNING, PMAP_MOVING};
    pmap_t cur, filled, done, still;
    handmade(&cur, n, 3, 1, 3, own, st);
    const char *H = grp(&cur, "h"); /* its group, as reports name it */
    pmap_ready_t r = {.group = H, .partition = 0, .node_id = i1,
                      .epoch = cur.epoch};
    CHECK_EQ(step(&cur, n, 3, defs, 1, &r, 1, &filled), 1);
    const pmap_group_t *c = cache(&filled, "h");
    CHECK_STR(primary_id(&filled, c, 0), i0);
    CHECK_EQ(slot_of(&filled, c, 0, i2, &s), 1);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK_EQ(slot_of(&filled, c, 0, i1, &s), 2);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK_EQ(ncopies(c, 0), 3);
    CHECK_EQ(step(&filled, n, 3, defs, 1, NULL, 0, &done), 1);
    check_ideal_layout(&done, cache(&done, "h"), 0, n, ideal, 2);
    CHECK_EQ(step(&done, n, 3, defs, 1, NULL, 0, &still), 0);
    pmap_free(&cur);
    pmap_free(&filled);
    pmap_free(&done);
    pmap_free(&still);
  }

  /* The primary dies in the step a copy before it in the list is reported
   * filled: the copy that was OWNING already leads, not the one just
   * filled, which is MOVING again (the primary changed). */
  {
    pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
    const uint8_t own[3] = {1, 2, 3}; /* A, B, C */
    const uint8_t st[3] = {PMAP_OWNING, PMAP_MOVING, PMAP_OWNING};
    pmap_node_t alive[2] = {n[1], n[2]}; /* A dies */
    pmap_t cur, out;
    handmade(&cur, n, 3, 2, 3, own, st);
    const char *H = grp(&cur, "h"); /* its group, as reports name it */
    pmap_ready_t r = {.group = H, .partition = 0, .node_id = "B",
                      .epoch = cur.epoch};
    CHECK_EQ(step(&cur, alive, 2, defs, 1, &r, 1, &out), 1);
    const pmap_group_t *c = cache(&out, "h");
    CHECK_STR(primary_id(&out, c, 0), "C");
    CHECK_EQ(slot_of(&out, c, 0, "C", &s), 0);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK(slot_of(&out, c, 0, "B", &s) > 0);
    CHECK_EQ(s, PMAP_MOVING);
    CHECK_EQ(ncopies(c, 0), 2);
    pmap_free(&cur);
    pmap_free(&out);
  }

  /* The primary dies in the step its only other copies are reported
   * filled: no copy that was OWNING before is left, so the partition is
   * LOST. */
  {
    pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
    const uint8_t own[3] = {1, 2, 3};
    const uint8_t st[3] = {PMAP_OWNING, PMAP_MOVING, PMAP_MOVING};
    pmap_node_t alive[2] = {n[1], n[2]}; /* A dies */
    pmap_t cur, out, again;
    handmade(&cur, n, 3, 2, 3, own, st);
    const char *H = grp(&cur, "h"); /* its group, as reports name it */
    pmap_ready_t r[2] = {
        {.group = H, .partition = 0, .node_id = "B", .epoch = cur.epoch},
        {.group = H, .partition = 0, .node_id = "C", .epoch = cur.epoch}};
    CHECK_EQ(step(&cur, alive, 2, defs, 1, r, 2, &out), 1);
    const pmap_group_t *c = cache(&out, "h");
    CHECK_EQ(pmap_copy_at(c, 0, 0, &s), -1);
    CHECK_EQ(s, PMAP_LOST);
    CHECK_EQ(pmap_primary(c, 0), -1);
    CHECK_EQ(ncopies(c, 0), 0);
    /* and it stays LOST */
    CHECK_EQ(step(&out, alive, 2, defs, 1, NULL, 0, &again), 0);
    pmap_free(&cur);
    pmap_free(&out);
    pmap_free(&again);
  }
}

/* backups 2, the primary dies: the first OWNING copy left leads and every
 * other copy turns MOVING, an OWNING one included (it may hold writes the
 * new primary never saw); it turns OWNING again only once reported filled
 * at the new map's epoch. Done twice: the copy promoted is the survivors'
 * ideal primary, then it is not (and the promoted primary hands off one
 * step after the fill, the filled copy having been OWNING for a whole map,
 * and the ideal primary leads once it reported itself drained). */
static void test_rule_promotion_refills(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
  pmap_node_t alive[2] = {n[1], n[2]}; /* A dies */
  uint32_t r[2];
  rank_nodes(alive, 2, 0, r); /* the survivors' ideal order */
  const uint8_t st[3] = {PMAP_OWNING, PMAP_OWNING, PMAP_OWNING};
  for (int order = 0; order < 2; order++) {
    uint32_t lead = order == 0 ? r[0] : r[1], other = order == 0 ? r[1] : r[0];
    /* alive[k] is n[k + 1]: node index + 1 is k + 2 */
    const uint8_t own[3] = {1, (uint8_t)(lead + 2), (uint8_t)(other + 2)};
    pmap_t cur, m1, m2, w;
    handmade(&cur, n, 3, 2, 3, own, st);
    const char *H = grp(&cur, "h"); /* its group, as reports name it */
    CHECK_EQ(step(&cur, alive, 2, defs, 1, NULL, 0, &m1), 1);
    const pmap_group_t *c = cache(&m1, "h");
    int s;
    CHECK_STR(primary_id(&m1, c, 0), alive[lead].id);
    CHECK_EQ(slot_of(&m1, c, 0, alive[lead].id, &s), 0);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK_EQ(slot_of(&m1, c, 0, alive[other].id, &s), 1);
    CHECK_EQ(s, PMAP_MOVING);
    CHECK_EQ(slot_of(&m1, c, 0, "A", &s), -1);
    CHECK_EQ(ncopies(c, 0), 2);

    /* It waits: no report, a report of the old epoch, a demote report. */
    CHECK_EQ(step(&m1, alive, 2, defs, 1, NULL, 0, &w), 0);
    pmap_free(&w);
    pmap_ready_t rep = {.group = H, .partition = 0,
                        .node_id = alive[other].id, .epoch = cur.epoch};
    CHECK_EQ(step(&m1, alive, 2, defs, 1, &rep, 1, &w), 0);
    pmap_free(&w);
    rep.epoch = m1.epoch;
    rep.demote = 1;
    CHECK_EQ(step(&m1, alive, 2, defs, 1, &rep, 1, &w), 0);
    pmap_free(&w);

    /* Filled at m1's epoch. */
    rep.demote = 0;
    CHECK_EQ(step(&m1, alive, 2, defs, 1, &rep, 1, &m2), 1);
    c = cache(&m2, "h");
    if (order == 1) {
      /* The copy filled is OWNING but may not lead in this step: the
       * primary stays. */
      CHECK_STR(primary_id(&m2, c, 0), alive[lead].id);
      CHECK_EQ(slot_of(&m2, c, 0, alive[other].id, &s), 1);
      CHECK_EQ(s, PMAP_OWNING);
      CHECK_EQ(ncopies(c, 0), 2);
      /* One step later, both in sync: the promoted primary hands off, the
       * other copy stays OWNING ... */
      pmap_t m2b;
      CHECK_EQ(step(&m2, alive, 2, defs, 1, NULL, 0, &m2b), 1);
      check_handoff(&m2b, cache(&m2b, "h"), 0, &m2, c);
      CHECK_STR(leader_id(&m2b, cache(&m2b, "h"), 0), alive[lead].id);
      pmap_free(&m2);
      m2 = m2b;
      c = cache(&m2, "h");
      /* ... and once it drained, the ideal primary takes over. */
      pmap_ready_t rep2 = drained(H, 0, alive[lead].id, m2.epoch);
      pmap_t m3;
      CHECK_EQ(step(&m2, alive, 2, defs, 1, &rep2, 1, &m3), 1);
      pmap_free(&m2);
      m2 = m3;
      c = cache(&m2, "h");
    }
    check_ideal_layout(&m2, c, 0, alive, r, 2);
    CHECK_EQ(step(&m2, alive, 2, defs, 1, NULL, 0, &w), 0);
    pmap_free(&w);
    pmap_free(&cur);
    pmap_free(&m1);
    pmap_free(&m2);
  }
}

/* The copies of p in m are those of prev, node by node, slot by slot. */
static void check_same_copies(const pmap_t *m, const pmap_group_t *c,
                              uint32_t p, const pmap_t *prev,
                              const pmap_group_t *pc) {
  uint32_t k = c->slots > pc->slots ? c->slots : pc->slots;
  for (uint32_t i = 0; i < k; i++) {
    int sp, sm;
    int np = pmap_copy_at(pc, p, i, &sp), nm = pmap_copy_at(c, p, i, &sm);
    CHECK_EQ(sm, sp);
    if (np < 0) {
      CHECK_EQ(nm, -1);
      continue;
    }
    CHECK(nm >= 0);
    CHECK_STR(m->nodes[nm].id, prev->nodes[np].id);
  }
}

/* A planned change of primary (the ideal layout taking over with another
 * primary, every ideal owner OWNING in the current map) takes two steps,
 * and the other copies stay OWNING throughout: first the primary hands off
 * (copy 0 HANDOFF: pmap_primary has none, pmap_leader is the node handing
 * off) and nothing else changes; it stays so until a drained report (demote
 * 0) for that group, partition and node at the current epoch; then the
 * ideal owners, all OWNING, the ideal primary leading, the copies outside
 * the ideal set dropped, and the map is stable. A primary handing off that
 * dies is replaced like any dead primary. */
static void test_rule_handoff(void) {
  pmap_node_t n[4];
  letters(n, 4);
  uint32_t ideal[4];
  rank_nodes(n, 4, 0, ideal);
  const char *i0 = n[ideal[0]].id, *i1 = n[ideal[1]].id, *i2 = n[ideal[2]].id,
             *i3 = n[ideal[3]].id;
  pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
  /* The ideal owners in sync in the wrong order (ideal[1] leads), and a
   * copy outside the ideal set, in sync too. */
  const uint8_t own[4] = {(uint8_t)(ideal[1] + 1), (uint8_t)(ideal[0] + 1),
                          (uint8_t)(ideal[3] + 1), (uint8_t)(ideal[2] + 1)};
  const uint8_t st[4] = {PMAP_OWNING, PMAP_OWNING, PMAP_OWNING, PMAP_OWNING};
  pmap_t cur, h, w, done, still;
  int s;
  handmade(&cur, n, 4, 2, 4, own, st);
  const char *H = grp(&cur, "h"); /* its group, as reports name it */
  const pmap_group_t *cc = cache(&cur, "h");

  /* Step 1: the primary hands off, nothing else changes. */
  CHECK_EQ(step(&cur, n, 4, defs, 1, NULL, 0, &h), 1);
  CHECK_EQ(h.epoch, 6);
  const pmap_group_t *c = cache(&h, "h");
  check_handoff(&h, c, 0, &cur, cc);
  CHECK_EQ(pmap_copy_at(c, 0, 0, &s), (int)ideal[1]);
  CHECK_EQ(s, PMAP_HANDOFF);
  CHECK_EQ(pmap_primary(c, 0), -1);
  CHECK_EQ(pmap_leader(c, 0), (int)ideal[1]);
  CHECK_STR(leader_id(&h, c, 0), i1);
  CHECK_EQ(ncopies(c, 0), 4);
  for (uint32_t i = 1; i < 4; i++) {
    pmap_copy_at(c, 0, i, &s);
    CHECK_EQ(s, PMAP_OWNING);
  }
  /* A drained report before the handoff does not skip it. */
  {
    pmap_ready_t early = drained(H, 0, i1, cur.epoch);
    CHECK_EQ(step(&cur, n, 4, defs, 1, &early, 1, &w), 1);
    check_handoff(&w, cache(&w, "h"), 0, &cur, cc);
    pmap_free(&w);
  }

  /* Step 2: without a drained report it stays so. */
  CHECK_EQ(step(&h, n, 4, defs, 1, NULL, 0, &w), 0);
  check_same_copies(&w, cache(&w, "h"), 0, &h, c);
  pmap_free(&w);
  /* Reports that hand nothing over, one by one and all at once: a drained
   * report of another epoch (the one before, the one after), of another
   * node (the ideal primary, a backup, a node not in the map), of another
   * partition or group, or naming the cache rather than its group; a fill
   * report or a demote report of the primary handing off at the current
   * epoch. */
  {
    pmap_ready_t fill = {.group = H, .partition = 0, .node_id = i1,
                         .epoch = h.epoch};
    pmap_ready_t dem = {.group = H, .partition = 0, .node_id = i1,
                        .epoch = h.epoch, .demote = 1};
    pmap_ready_t none[] = {
        drained(H, 0, i1, h.epoch - 1), drained(H, 0, i1, h.epoch + 1),
        drained(H, 0, i0, h.epoch),     drained(H, 0, i2, h.epoch),
        drained(H, 0, "E", h.epoch),    drained(H, 1, i1, h.epoch),
        drained("other", 0, i1, h.epoch), drained("h", 0, i1, h.epoch),
        fill,                             dem,
    };
    size_t nnone = sizeof none / sizeof none[0];
    for (size_t i = 0; i <= nnone; i++) {
      const pmap_ready_t *rep = i < nnone ? &none[i] : none;
      size_t nrep = i < nnone ? 1 : nnone;
      CHECK_EQ(step(&h, n, 4, defs, 1, rep, nrep, &w), 0);
      check_handoff(&w, cache(&w, "h"), 0, &cur, cc);
      pmap_free(&w);
    }
  }

  /* Step 3: drained at the current epoch (among reports that do nothing):
   * the ideal owners, in the ideal order, every one OWNING (nothing to fill
   * again), the copy outside the ideal set dropped. */
  {
    pmap_ready_t reps[3] = {drained(H, 0, i0, h.epoch),
                            drained(H, 0, i1, h.epoch),
                            drained(H, 0, i1, h.epoch - 1)};
    CHECK_EQ(step(&h, n, 4, defs, 1, reps, 3, &done), 1);
  }
  const pmap_group_t *cd = cache(&done, "h");
  check_ideal_layout(&done, cd, 0, n, ideal, 3);
  CHECK_EQ(ncopies(cd, 0), 3);
  CHECK_EQ(slot_of(&done, cd, 0, i3, &s), -1);
  CHECK_EQ(pmap_primary(cd, 0), (int)ideal[0]);
  CHECK_EQ(pmap_leader(cd, 0), (int)ideal[0]);
  /* Stable: with no report, the same drained report again (now of an old
   * epoch), or one of the new primary, which hands nothing off. */
  CHECK_EQ(step(&done, n, 4, defs, 1, NULL, 0, &still), 0);
  pmap_free(&still);
  {
    pmap_ready_t again[2] = {drained(H, 0, i1, h.epoch),
                             drained(H, 0, i0, done.epoch)};
    CHECK_EQ(step(&done, n, 4, defs, 1, again, 2, &still), 0);
    check_ideal_layout(&still, cache(&still, "h"), 0, n, ideal, 3);
    pmap_free(&still);
  }
  pmap_free(&done);

  /* The primary handing off dies (with or without its drained report):
   * replaced like any dead primary. The first OWNING copy left (ideal[0])
   * leads; the other copies turn MOVING. Once they are filled the
   * survivors' ideal layout, all OWNING, at once (no handover: the primary
   * is the ideal one), and stable. */
  {
    pmap_node_t alive[3];
    size_t na = 0;
    for (size_t i = 0; i < 4; i++)
      if (i != ideal[1]) alive[na++] = n[i];
    uint32_t sideal[3];
    CHECK_EQ(pmap_ideal(alive, 3, 0, 3, sideal), 3);
    CHECK_STR(alive[sideal[0]].id, i0);
    pmap_ready_t d = drained(H, 0, i1, h.epoch);
    for (int with = 0; with < 2; with++) {
      pmap_t m1, m2, m3, m4;
      CHECK_EQ(step(&h, alive, 3, defs, 1, &d, (size_t)with, &m1), 1);
      const pmap_group_t *c1 = cache(&m1, "h");
      CHECK_STR(primary_id(&m1, c1, 0), i0);
      CHECK_STR(leader_id(&m1, c1, 0), i0);
      CHECK_EQ(slot_of(&m1, c1, 0, i0, &s), 0);
      CHECK_EQ(s, PMAP_OWNING);
      CHECK_EQ(slot_of(&m1, c1, 0, i1, &s), -1);
      CHECK(slot_of(&m1, c1, 0, i2, &s) > 0);
      CHECK_EQ(s, PMAP_MOVING);
      CHECK(slot_of(&m1, c1, 0, i3, &s) > 0);
      CHECK_EQ(s, PMAP_MOVING);
      CHECK_EQ(ncopies(c1, 0), 3);
      for (uint32_t i = 0; i < c1->slots; i++) {
        pmap_copy_at(c1, 0, i, &s);
        CHECK(s != PMAP_HANDOFF);
      }
      pmap_ready_t f[2] = {
          {.group = H, .partition = 0, .node_id = i2, .epoch = m1.epoch},
          {.group = H, .partition = 0, .node_id = i3, .epoch = m1.epoch}};
      CHECK_EQ(step(&m1, alive, 3, defs, 1, f, 2, &m2), 1);
      const pmap_group_t *c2 = cache(&m2, "h");
      CHECK_STR(primary_id(&m2, c2, 0), i0);
      for (uint32_t i = 0; i < c2->slots; i++) {
        if (pmap_copy_at(c2, 0, i, &s) < 0) continue;
        CHECK_EQ(s, PMAP_OWNING);
      }
      step(&m2, alive, 3, defs, 1, NULL, 0, &m3);
      check_ideal_layout(&m3, cache(&m3, "h"), 0, alive, sideal, 3);
      CHECK_EQ(step(&m3, alive, 3, defs, 1, NULL, 0, &m4), 0);
      pmap_free(&m1);
      pmap_free(&m2);
      pmap_free(&m3);
      pmap_free(&m4);
    }
  }

  /* The node the partition is handed to dies while the primary hands off:
   * the primary handing off is the survivors' ideal primary, so it leads
   * again (OWNING), every copy left OWNING. */
  {
    pmap_node_t alive[3];
    size_t na = 0;
    for (size_t i = 0; i < 4; i++)
      if (i != ideal[0]) alive[na++] = n[i];
    uint32_t sideal[3];
    CHECK_EQ(pmap_ideal(alive, 3, 0, 3, sideal), 3);
    CHECK_STR(alive[sideal[0]].id, i1);
    pmap_t m1, m2;
    CHECK_EQ(step(&h, alive, 3, defs, 1, NULL, 0, &m1), 1);
    check_ideal_layout(&m1, cache(&m1, "h"), 0, alive, sideal, 3);
    CHECK_STR(primary_id(&m1, cache(&m1, "h"), 0), i1);
    CHECK_EQ(step(&m1, alive, 3, defs, 1, NULL, 0, &m2), 0);
    pmap_free(&m1);
    pmap_free(&m2);
  }
  pmap_free(&cur);
  pmap_free(&h);

  /* Hand-made: the primary handing off dies and the first copy behind it
   * is MOVING: the next OWNING copy leads, the MOVING one stays MOVING. */
  {
    pmap_node_t m[3];
    letters(m, 3);
    pmap_cache_def_t d3[1] = {def("h", 1, 2, 0)};
    const uint8_t o3[3] = {1, 2, 3}; /* A, B, C */
    const uint8_t s3[3] = {PMAP_HANDOFF, PMAP_MOVING, PMAP_OWNING};
    pmap_node_t alive[2] = {m[1], m[2]}; /* A dies */
    pmap_t hc, out;
    handmade(&hc, m, 3, 2, 3, o3, s3);
    CHECK_EQ(pmap_primary(cache(&hc, "h"), 0), -1);
    CHECK_EQ(pmap_leader(cache(&hc, "h"), 0), 0);
    CHECK_EQ(step(&hc, alive, 2, d3, 1, NULL, 0, &out), 1);
    const pmap_group_t *co = cache(&out, "h");
    CHECK_STR(primary_id(&out, co, 0), "C");
    CHECK_EQ(slot_of(&out, co, 0, "C", &s), 0);
    CHECK_EQ(s, PMAP_OWNING);
    CHECK(slot_of(&out, co, 0, "B", &s) > 0);
    CHECK_EQ(s, PMAP_MOVING);
    CHECK_EQ(ncopies(co, 0), 2);
    pmap_free(&hc);
    pmap_free(&out);
  }

  /* ... and with no OWNING copy behind it, the partition is LOST, even
   * when the MOVING copy is reported filled in that step. */
  {
    pmap_node_t m[2];
    letters(m, 2);
    pmap_cache_def_t d2[1] = {def("h", 1, 1, 0)};
    const uint8_t o2[2] = {1, 2};
    const uint8_t s2[2] = {PMAP_HANDOFF, PMAP_MOVING};
    pmap_t hc, out;
    handmade(&hc, m, 2, 1, 2, o2, s2);
    const char *hg = grp(&hc, "h"); /* its group, as reports name it */
    pmap_ready_t f = {.group = hg, .partition = 0, .node_id = "B",
                      .epoch = hc.epoch};
    for (size_t nf = 0; nf <= 1; nf++) {
      CHECK_EQ(step(&hc, &m[1], 1, d2, 1, &f, nf, &out), 1);
      const pmap_group_t *co = cache(&out, "h");
      CHECK_EQ(pmap_copy_at(co, 0, 0, &s), -1);
      CHECK_EQ(s, PMAP_LOST);
      CHECK_EQ(pmap_primary(co, 0), -1);
      CHECK_EQ(pmap_leader(co, 0), -1);
      CHECK_EQ(ncopies(co, 0), 0);
      pmap_free(&out);
    }
    pmap_free(&hc);
  }

  /* backups 0: the only copy hands off to a copy filled beside it, then is
   * dropped once drained; the new primary is the only copy. */
  {
    pmap_node_t m[2];
    letters(m, 2);
    uint32_t r[2];
    rank_nodes(m, 2, 0, r);
    pmap_cache_def_t d1[1] = {def("h", 1, 0, 0)};
    const uint8_t o1[2] = {(uint8_t)(r[1] + 1), (uint8_t)(r[0] + 1)};
    const uint8_t s1[2] = {PMAP_OWNING, PMAP_OWNING};
    pmap_t hc, m1, m2, m3;
    handmade(&hc, m, 2, 0, 2, o1, s1);
    const char *hg = grp(&hc, "h"); /* its group, as reports name it */
    CHECK_EQ(step(&hc, m, 2, d1, 1, NULL, 0, &m1), 1);
    check_handoff(&m1, cache(&m1, "h"), 0, &hc, cache(&hc, "h"));
    CHECK_EQ(step(&m1, m, 2, d1, 1, NULL, 0, &m2), 0);
    pmap_free(&m2);
    pmap_ready_t d = drained(hg, 0, m[r[1]].id, m1.epoch);
    CHECK_EQ(step(&m1, m, 2, d1, 1, &d, 1, &m2), 1);
    const pmap_group_t *c2 = cache(&m2, "h");
    check_ideal_layout(&m2, c2, 0, m, r, 1);
    CHECK_EQ(ncopies(c2, 0), 1);
    CHECK_STR(primary_id(&m2, c2, 0), m[r[0]].id);
    CHECK_EQ(step(&m2, m, 2, d1, 1, NULL, 0, &m3), 0);
    pmap_free(&hc);
    pmap_free(&m1);
    pmap_free(&m2);
    pmap_free(&m3);
  }
}

/* A damaged map (pmap_decode takes it) naming one node in every slot of a
 * partition: the node keeps one copy, the next map has no more copies than
 * nodes (it once overflowed the list of copies), and it decodes again. */
static void test_rule_node_named_twice(void) {
  pmap_node_t n[2];
  letters(n, 2);
  pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
  uint8_t own[PMAP_NODES_MAX], st[PMAP_NODES_MAX];
  memset(own, 1, sizeof own); /* A everywhere */
  memset(st, PMAP_OWNING, sizeof st);
  pmap_t cur, out, back;
  handmade(&cur, n, 2, 1, PMAP_NODES_MAX, own, st);
  step(&cur, n, 2, defs, 1, NULL, 0, &out);
  const pmap_group_t *c = cache(&out, "h");
  CHECK(c->slots <= 2);
  int s;
  CHECK_STR(primary_id(&out, c, 0), "A");
  CHECK(slot_of(&out, c, 0, "B", &s) > 0); /* an ideal owner, filled anew */
  CHECK_EQ(s, PMAP_MOVING);
  CHECK_EQ(ncopies(c, 0), 2);
  unsigned char *buf;
  size_t len;
  CHECK_RC(pmap_encode(&out, &buf, &len), 0);
  CHECK_RC(pmap_decode(buf, len, &back), 0);
  free(buf);
  pmap_free(&back);
  pmap_free(&cur);
  pmap_free(&out);
}

/* A demote report at the current epoch turns an OWNING backup MOVING, and
 * the primary fills it again like any MOVING copy. For the primary, at
 * another epoch, or naming another group (or the cache, not its group),
 * partition or node, it does nothing; a fill report (demote 0) does not demote, and a demote report
 * does not fill. */
static void test_rule_demote(void) {
  pmap_node_t n[3];
  letters(n, 3);
  pmap_cache_def_t defs[1] = {def("h", 1, 2, 0)};
  uint32_t ideal[3];
  rank_nodes(n, 3, 0, ideal);
  const uint8_t own[3] = {(uint8_t)(ideal[0] + 1), (uint8_t)(ideal[1] + 1),
                          (uint8_t)(ideal[2] + 1)};
  const uint8_t st[3] = {PMAP_OWNING, PMAP_OWNING, PMAP_OWNING};
  const char *prim = n[ideal[0]].id, *b1 = n[ideal[1]].id, *b2 = n[ideal[2]].id;
  pmap_t cur, out, m2, m3;
  int s;
  handmade(&cur, n, 3, 2, 3, own, st); /* the ideal layout, epoch 5 */
  const char *H = grp(&cur, "h"); /* its group, as reports name it */
  CHECK_EQ(step(&cur, n, 3, defs, 1, NULL, 0, &out), 0);
  pmap_free(&out);

  /* Each backup on its own, then both. */
  for (uint32_t k = 1; k <= 2; k++) {
    pmap_ready_t d = {.group = H, .partition = 0,
                      .node_id = n[ideal[k]].id, .epoch = 5, .demote = 1};
    CHECK_EQ(step(&cur, n, 3, defs, 1, &d, 1, &out), 1);
    const pmap_group_t *c = cache(&out, "h");
    CHECK_STR(primary_id(&out, c, 0), prim);
    CHECK_EQ(ncopies(c, 0), 3);
    CHECK_EQ(slot_of(&out, c, 0, n[ideal[k]].id, &s), (int)k);
    CHECK_EQ(s, PMAP_MOVING);
    CHECK_EQ(slot_of(&out, c, 0, n[ideal[3 - k]].id, &s), (int)(3 - k));
    CHECK_EQ(s, PMAP_OWNING);
    pmap_free(&out);
  }
  {
    pmap_ready_t d[2] = {
        {.group = H, .partition = 0, .node_id = b1, .epoch = 5, .demote = 1},
        {.group = H, .partition = 0, .node_id = b2, .epoch = 5, .demote = 1}};
    CHECK_EQ(step(&cur, n, 3, defs, 1, d, 2, &out), 1);
    check_ideal_states(&out, cache(&out, "h"), 0, n, ideal, 3, PMAP_MOVING);
    pmap_free(&out);
  }

  /* Reports that demote nothing. */
  {
    pmap_ready_t none[] = {
        {.group = H, .partition = 0, .node_id = prim, .epoch = 5, .demote = 1},
        {.group = H, .partition = 0, .node_id = b1, .epoch = 4, .demote = 1},
        {.group = H, .partition = 0, .node_id = b1, .epoch = 6, .demote = 1},
        {.group = H, .partition = 0, .node_id = b1, .epoch = 5, .demote = 0},
        {.group = H, .partition = 0, .node_id = b2, .epoch = 5, .demote = 0},
        {.group = "other", .partition = 0, .node_id = b1, .epoch = 5,
         .demote = 1},
        {.group = "h", .partition = 0, .node_id = b1, .epoch = 5,
         .demote = 1}, /* the cache, not its group */
        {.group = H, .partition = 1, .node_id = b1, .epoch = 5, .demote = 1},
        {.group = H, .partition = 0, .node_id = "D", .epoch = 5, .demote = 1},
    };
    CHECK_EQ(step(&cur, n, 3, defs, 1, none, sizeof none / sizeof none[0], &out),
             0);
    check_ideal_layout(&out, cache(&out, "h"), 0, n, ideal, 3);
    pmap_free(&out);
  }

  /* Demoted, then filled again: a demote report for the MOVING copy does
   * not fill it, nor does a fill report of the old epoch; one at the new
   * epoch does, and the layout is whole and stable again. */
  pmap_ready_t d = {.group = H, .partition = 0, .node_id = b1, .epoch = 5,
                    .demote = 1};
  CHECK_EQ(step(&cur, n, 3, defs, 1, &d, 1, &out), 1);
  CHECK_EQ(out.epoch, 6);
  pmap_t w;
  pmap_ready_t again = {.group = H, .partition = 0, .node_id = b1,
                        .epoch = 6, .demote = 1};
  CHECK_EQ(step(&out, n, 3, defs, 1, &again, 1, &w), 0);
  CHECK_EQ(slot_of(&w, cache(&w, "h"), 0, b1, &s), 1);
  CHECK_EQ(s, PMAP_MOVING);
  pmap_free(&w);
  pmap_ready_t fill = {.group = H, .partition = 0, .node_id = b1, .epoch = 5};
  CHECK_EQ(step(&out, n, 3, defs, 1, &fill, 1, &w), 0);
  pmap_free(&w);
  fill.epoch = 6;
  CHECK_EQ(step(&out, n, 3, defs, 1, &fill, 1, &m2), 1);
  check_ideal_layout(&m2, cache(&m2, "h"), 0, n, ideal, 3);
  CHECK_EQ(step(&m2, n, 3, defs, 1, NULL, 0, &m3), 0);
  pmap_free(&out);
  pmap_free(&m2);
  pmap_free(&m3);

  /* A demoted copy is not in sync, so it cannot lead: the primary dying
   * with b1 demoted at the same epoch, b2 leads and b1 is MOVING. */
  pmap_node_t alive[2];
  size_t na = 0;
  for (size_t i = 0; i < 3; i++)
    if (i != ideal[0]) alive[na++] = n[i];
  CHECK_EQ(step(&cur, alive, 2, defs, 1, &d, 1, &out), 1);
  const pmap_group_t *c = cache(&out, "h");
  CHECK_STR(primary_id(&out, c, 0), b2);
  CHECK(slot_of(&out, c, 0, b1, &s) > 0);
  CHECK_EQ(s, PMAP_MOVING);
  CHECK_EQ(ncopies(c, 0), 2);
  pmap_free(&out);
  pmap_free(&cur);
}

/* Demote reports over a whole map: every backup named turns MOVING, the
 * primaries named stay OWNING and lead; filled again, the map is the one
 * before. */
static void test_demote_backups(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", 64, 1, 0)};
  pmap_t m1, m2, m3, m4;
  first_map(nodes, 3, defs, 1, &m1);
  const pmap_group_t *c1 = cache(&m1, "cache");
  pmap_ready_t rep[64 * 2];
  size_t nrep = 0;
  for (uint32_t p = 0; p < 64; p++)
    for (uint32_t i = 0; i < 2; i++) {
      int s;
      int idx = pmap_copy_at(c1, p, i, &s);
      CHECK_EQ(s, PMAP_OWNING);
      rep[nrep++] = (pmap_ready_t){.group = grp(&m1, "cache"), .partition = p,
                                   .node_id = m1.nodes[idx].id,
                                   .epoch = m1.epoch, .demote = 1};
    }
  CHECK_EQ(step(&m1, nodes, 3, defs, 1, rep, nrep, &m2), 1);
  const pmap_group_t *c2 = cache(&m2, "cache");
  for (uint32_t p = 0; p < 64; p++) {
    int s0, s1;
    int a0 = pmap_copy_at(c1, p, 0, &s0), a1 = pmap_copy_at(c1, p, 1, &s1);
    int b0 = pmap_copy_at(c2, p, 0, &s0), b1 = pmap_copy_at(c2, p, 1, &s1);
    CHECK_STR(m2.nodes[b0].id, m1.nodes[a0].id);
    CHECK_EQ(s0, PMAP_OWNING);
    CHECK_STR(m2.nodes[b1].id, m1.nodes[a1].id);
    CHECK_EQ(s1, PMAP_MOVING);
    CHECK_EQ(ncopies(c2, p), 2);
  }
  /* filled again at m2's epoch */
  for (size_t i = 0; i < nrep; i++) {
    rep[i].epoch = m2.epoch;
    rep[i].demote = 0;
  }
  CHECK_EQ(step(&m2, nodes, 3, defs, 1, rep, nrep, &m3), 1);
  const pmap_group_t *c3 = cache(&m3, "cache");
  CHECK_EQ(c3->slots, c1->slots);
  CHECK(memcmp(c3->owners, c1->owners, (size_t)64 * c1->slots) == 0);
  CHECK(memcmp(c3->states, c1->states, (size_t)64 * c1->slots) == 0);
  CHECK_EQ(step(&m3, nodes, 3, defs, 1, NULL, 0, &m4), 0);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* ---- encoding ---------------------------------------------------------------- */

/* The same groups, in the same order, with the same owners and states byte
 * for byte. */
static void check_same_groups(const pmap_t *a, const pmap_t *b) {
  CHECK_EQ(a->ngroups, b->ngroups);
  for (size_t d = 0; d < a->ngroups; d++) {
    const pmap_group_t *x = &a->groups[d], *y = &b->groups[d];
    CHECK_STR(x->name, y->name);
    CHECK_EQ(x->partitions, y->partitions);
    CHECK_EQ(x->backups, y->backups);
    CHECK_EQ(x->replicated, y->replicated);
    CHECK_EQ(x->slots, y->slots);
    size_t n = (size_t)x->partitions * x->slots;
    CHECK(memcmp(x->owners, y->owners, n) == 0);
    CHECK(memcmp(x->states, y->states, n) == 0);
  }
}

/* The same nodes (every field), coordinator and epoch. */
static void check_same_nodes(const pmap_t *a, const pmap_t *b) {
  CHECK_EQ(a->epoch, b->epoch);
  CHECK_STR(a->coordinator, b->coordinator);
  CHECK_EQ(a->nnodes, b->nnodes);
  for (size_t i = 0; i < a->nnodes; i++) {
    CHECK_STR(a->nodes[i].id, b->nodes[i].id);
    CHECK_STR(a->nodes[i].addr, b->nodes[i].addr);
    CHECK_STR(a->nodes[i].zone, b->nodes[i].zone);
    CHECK_EQ(a->nodes[i].leaving, b->nodes[i].leaving);
    CHECK_EQ(a->nodes[i].incarnation, b->nodes[i].incarnation);
    CHECK_EQ(a->nodes[i].absent, b->nodes[i].absent);
  }
}

/* The same map: nodes, groups and the caches they place. */
static void check_same_map(const pmap_t *a, const pmap_t *b) {
  check_same_nodes(a, b);
  check_same_groups(a, b);
  /* the same caches, each placed by the group of the same name */
  CHECK_EQ(a->ncaches, b->ncaches);
  for (size_t i = 0; i < a->ncaches; i++) {
    CHECK_STR(a->caches[i].name, b->caches[i].name);
    CHECK_STR(a->groups[a->caches[i].group].name,
              b->groups[b->caches[i].group].name);
    CHECK_STR(cache(b, a->caches[i].name)->name, cache(a, a->caches[i].name)->name);
  }
}

/* A map with OWNING, MOVING and LOST copies, zones, addresses, a
 * coordinator and an epoch. */
static void busy_map(pmap_t *out) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  const char *zones[4] = {"z1", "z2", "z3", ""};
  for (size_t i = 0; i < 4; i++)
    snprintf(nodes[i].zone, sizeof nodes[i].zone, "%s", zones[i]);
  pmap_cache_def_t defs[2] = {def("parted", 64, 1, 0), def("single", 32, 0, 0)};
  pmap_t m1;
  first_map(nodes, 3, defs, 2, &m1);
  m1.epoch = 41;
  pmap_node_t alive[3] = {nodes[0], nodes[2], nodes[3]}; /* node-2 gone */
  step(&m1, alive, 3, defs, 2, NULL, 0, out);
  snprintf(out->coordinator, sizeof out->coordinator, "node-3");
  pmap_free(&m1);
  CHECK_EQ(out->epoch, 42);
  /* it holds all states */
  int seen[PMAP_HANDOFF + 1] = {0};
  CHECK_EQ(out->ngroups, 2);
  for (size_t d = 0; d < out->ngroups; d++) {
    const pmap_group_t *c = &out->groups[d];
    for (size_t k = 0; k < (size_t)c->partitions * c->slots; k++) {
      CHECK(c->states[k] <= PMAP_HANDOFF);
      seen[c->states[k]] = 1;
    }
  }
  CHECK(seen[PMAP_OWNING] && seen[PMAP_MOVING] && seen[PMAP_LOST]);
}

static void test_encode_decode(void) {
  pmap_t m, d;
  busy_map(&m);
  unsigned char *buf = NULL;
  size_t len = 0;
  CHECK_RC(pmap_encode(&m, &buf, &len), 0);
  CHECK(buf != NULL && len > 0);
  CHECK_RC(pmap_decode(buf, len, &d), 0);
  check_same_map(&m, &d);
  CHECK_STR(d.nodes[0].zone, "z1");
  CHECK_STR(d.nodes[2].zone, "");
  CHECK_STR(d.nodes[1].addr, "127.0.0.1:7003");
  /* what was decoded serves as the current map */
  const pmap_group_t *c = cache(&d, "single");
  int lost = 0;
  for (uint32_t p = 0; p < c->partitions; p++) {
    int st;
    pmap_copy_at(c, p, 0, &st);
    if (st == PMAP_LOST) {
      lost = 1;
      CHECK_EQ(pmap_primary(c, p), -1);
    }
  }
  CHECK(lost);
  free(buf);
  pmap_free(&d);

  /* A map with a primary handing off, as pmap_next makes it. */
  {
    pmap_node_t n[3];
    letters(n, 3);
    uint32_t ideal[3];
    rank_nodes(n, 3, 0, ideal);
    pmap_cache_def_t defs[1] = {def("h", 1, 1, 0)};
    const uint8_t own[2] = {(uint8_t)(ideal[1] + 1), (uint8_t)(ideal[0] + 1)};
    const uint8_t st[2] = {PMAP_OWNING, PMAP_OWNING};
    pmap_t cur, h, hd;
    handmade(&cur, n, 3, 1, 2, own, st);
    CHECK_EQ(step(&cur, n, 3, defs, 1, NULL, 0, &h), 1);
    int s;
    pmap_copy_at(cache(&h, "h"), 0, 0, &s);
    CHECK_EQ(s, PMAP_HANDOFF);
    CHECK_RC(pmap_encode(&h, &buf, &len), 0);
    CHECK_RC(pmap_decode(buf, len, &hd), 0);
    check_same_map(&h, &hd);
    const pmap_group_t *ch = cache(&hd, "h");
    CHECK_EQ(pmap_primary(ch, 0), -1);
    CHECK_EQ(pmap_leader(ch, 0), (int)ideal[1]);
    free(buf);
    pmap_free(&cur);
    pmap_free(&h);
    pmap_free(&hd);
  }

  /* An empty map too. */
  pmap_t e, e2;
  pmap_init(&e);
  e.epoch = 7;
  CHECK_RC(pmap_encode(&e, &buf, &len), 0);
  CHECK_RC(pmap_decode(buf, len, &e2), 0);
  check_same_map(&e, &e2);
  free(buf);
  pmap_free(&e2);
  pmap_free(&m);
}

static void test_copy(void) {
  pmap_t m, c;
  busy_map(&m);
  CHECK_RC(pmap_copy(&c, &m), 0);
  check_same_map(&m, &c);
  /* deep: changing the copy leaves the original alone */
  CHECK(c.groups != m.groups);
  CHECK(c.caches != m.caches);
  CHECK(c.index != m.index);
  CHECK(c.groups[0].owners != m.groups[0].owners);
  CHECK(c.groups[0].states != m.groups[0].states);
  uint8_t o = m.groups[0].owners[0], s = m.groups[0].states[0];
  c.groups[0].owners[0] = (uint8_t)(o + 1);
  c.groups[0].states[0] = PMAP_LOST;
  snprintf(c.nodes[0].id, sizeof c.nodes[0].id, "changed");
  CHECK_EQ(m.groups[0].owners[0], o);
  CHECK_EQ(m.groups[0].states[0], s);
  CHECK_STR(m.nodes[0].id, "node-1");
  pmap_free(&m);
  /* the copy lives on alone, its caches found through its own index */
  CHECK_EQ(c.groups[0].owners[0], o + 1);
  CHECK(cache(&c, "parted") == pmap_find_group(&c, "p64-b1"));
  CHECK(cache(&c, "single") == pmap_find_group(&c, "p32-b0"));
  pmap_free(&c);
}

/* Pack a hand-made Pmap message. */
static unsigned char *pack(const Grid__Pmap *pm, size_t *len) {
  *len = grid__pmap__get_packed_size(pm);
  unsigned char *buf = malloc(*len ? *len : 1);
  CHECK(buf != NULL);
  CHECK_EQ(grid__pmap__pack(pm, buf), *len);
  return buf;
}

/* Decoding must refuse buf with GRID_EPROTO and leave nothing behind: m is
 * not freed here, so whatever a failed decode kept is a leak that
 * LeakSanitizer reports at exit. */
static void check_refused(const unsigned char *buf, size_t len) {
  pmap_t m;
  memset(&m, 0xa5, sizeof m); /* decode must not rely on m being clean */
  CHECK_RC(pmap_decode(buf, len, &m), GRID_EPROTO);
}

static void test_decode_garbage(void) {
  static const unsigned char junk1[] = {0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  static const unsigned char junk2[] = {0x12, 0x40, 0x0a, 0x01}; /* short */
  static const unsigned char junk3[] = {0x08}; /* tag, no value */
  static const unsigned char junk4[] = {0x0f, 0x00, 0x00}; /* wire type 7 */
  check_refused(junk1, sizeof junk1);
  check_refused(junk2, sizeof junk2);
  check_refused(junk3, sizeof junk3);
  check_refused(junk4, sizeof junk4);

  /* A real map cut short. */
  pmap_t m;
  busy_map(&m);
  unsigned char *buf;
  size_t len;
  CHECK_RC(pmap_encode(&m, &buf, &len), 0);
  check_refused(buf, len - 1);
  check_refused(buf, len / 2);
  free(buf);
  pmap_free(&m);
}

static void test_decode_bad_shapes(void) {
  Grid__PmapNode n1 = GRID__PMAP_NODE__INIT, n2 = GRID__PMAP_NODE__INIT;
  n1.id = "node-1";
  n1.addr = "h:1";
  n2.id = "node-2";
  n2.addr = "h:2";
  Grid__PmapNode *np[2] = {&n1, &n2};
  unsigned char good_owners[8] = {1, 2, 2, 1, 1, 2, 2, 1};
  unsigned char states[8] = {1, 1, 1, 1, 1, 2, 1, 1};
  Grid__PmapCache c0 = GRID__PMAP_CACHE__INIT, c1 = GRID__PMAP_CACHE__INIT;
  c0.name = "first";
  c0.partitions = 4;
  c0.copies = 2;
  c0.owners = (ProtobufCBinaryData){8, good_owners};
  c0.states = (ProtobufCBinaryData){8, states};
  c1 = c0;
  c1.name = "second";
  Grid__PmapCache *cp[2] = {&c0, &c1};
  Grid__Pmap pm = GRID__PMAP__INIT;
  pm.epoch = 9;
  pm.nodes = np;
  pm.n_nodes = 2;
  pm.caches = cp;
  pm.n_caches = 2;
  pm.coordinator = "node-1";

  /* The well-formed message decodes (owner index == nnodes is fine). */
  size_t len;
  unsigned char *buf = pack(&pm, &len);
  pmap_t m;
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  free(buf);
  CHECK_EQ(m.epoch, 9);
  CHECK_EQ(m.nnodes, 2);
  CHECK_STR(m.coordinator, "node-1");
  const pmap_group_t *c = group(&m, "second");
  CHECK_EQ(c->slots, 2);
  CHECK_EQ(pmap_primary(c, 1), 1);
  int st;
  CHECK_EQ(pmap_copy_at(c, 2, 1, &st), 1);
  CHECK_EQ(st, PMAP_MOVING);
  pmap_free(&m);

  /* owners shorter than partitions * copies (in the second cache, after
   * the first was built) */
  c1.owners.len = 7;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  /* longer */
  unsigned char long_owners[9] = {1, 2, 2, 1, 1, 2, 2, 1, 1};
  c1.owners = (ProtobufCBinaryData){9, long_owners};
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  /* copies that do not match the owners given */
  c1.owners = (ProtobufCBinaryData){8, good_owners};
  c1.copies = 3;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  c1.copies = 2;
  /* states length off */
  c1.states.len = 6;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  c1.states.len = 8;
  /* an owner index past the node list */
  unsigned char bad_owners[8] = {1, 2, 2, 1, 1, 3, 2, 1};
  c1.owners = (ProtobufCBinaryData){8, bad_owners};
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  /* ... also with no nodes at all */
  c1.owners = (ProtobufCBinaryData){8, good_owners};
  pm.n_nodes = 0;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  pm.n_nodes = 2;
  /* a state that does not exist: 5 (one past PMAP_HANDOFF) and above */
  unsigned char bad_states[8] = {1, 1, 1, 1, 1, 5, 1, 1};
  c1.states = (ProtobufCBinaryData){8, bad_states};
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  bad_states[5] = 255;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  bad_states[5] = 1;
  bad_states[0] = 5; /* in a primary's slot too */
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  /* state 4, PMAP_HANDOFF, is one: a primary handing over (copy 0 of
   * partition 1 of "second", on node-2) */
  unsigned char handoff_states[8] = {1, 1, 4, 1, 1, 2, 1, 1};
  c1.states = (ProtobufCBinaryData){8, handoff_states};
  buf = pack(&pm, &len);
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  free(buf);
  c = group(&m, "second");
  CHECK_EQ(pmap_copy_at(c, 1, 0, &st), 1);
  CHECK_EQ(st, PMAP_HANDOFF);
  CHECK_EQ(pmap_primary(c, 1), -1);
  CHECK_EQ(pmap_leader(c, 1), 1);
  CHECK_EQ(pmap_primary(c, 0), 0);
  CHECK_EQ(pmap_leader(c, 0), 0);
  pmap_free(&m);
  c1.states = (ProtobufCBinaryData){8, states};
  /* still good after all that */
  buf = pack(&pm, &len);
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  free(buf);
  pmap_free(&m);

  /* More nodes than a one-byte index can name. */
  Grid__PmapNode many[PMAP_NODES_MAX + 1];
  Grid__PmapNode *mp[PMAP_NODES_MAX + 1];
  char ids[PMAP_NODES_MAX + 1][16];
  for (size_t i = 0; i < PMAP_NODES_MAX + 1; i++) {
    grid__pmap_node__init(&many[i]);
    snprintf(ids[i], sizeof ids[i], "n%zu", i);
    many[i].id = ids[i];
    mp[i] = &many[i];
  }
  pm.nodes = mp;
  pm.n_nodes = PMAP_NODES_MAX + 1;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  pm.n_nodes = PMAP_NODES_MAX; /* the most there may be */
  buf = pack(&pm, &len);
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  CHECK_EQ(m.nnodes, PMAP_NODES_MAX);
  CHECK_STR(m.nodes[PMAP_NODES_MAX - 1].id, "n254");
  free(buf);
  pmap_free(&m);
}

/* ---- accessors ---------------------------------------------------------------- */

static void test_accessors(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[2] = {def("a", 64, 0, 0), def("b", 8, 1, 0)};
  pmap_t m, l;
  first_map(nodes, 3, defs, 2, &m);

  CHECK_EQ(pmap_node_index(&m, "node-1"), 0);
  CHECK_EQ(pmap_node_index(&m, "node-3"), 2);
  CHECK_EQ(pmap_node_index(&m, "node-4"), -1);
  CHECK_EQ(pmap_node_index(&m, "node-"), -1);
  CHECK_EQ(pmap_node_index(&m, ""), -1);

  const pmap_group_t *a = pmap_find_cache(&m, "a");
  const pmap_group_t *b = pmap_find_cache(&m, "b");
  CHECK(a != NULL && b != NULL && a != b); /* two shapes, two groups */
  CHECK_STR(a->name, "p64-b0");
  CHECK_STR(b->name, "p8-b1");
  CHECK(pmap_find_group(&m, "p64-b0") == a);
  CHECK(pmap_find_group(&m, "p8-b1") == b);
  CHECK(pmap_find_group(&m, "a") == NULL); /* caches are not groups */
  CHECK(pmap_find_cache(&m, "c") == NULL);
  CHECK(pmap_find_cache(&m, "") == NULL);
  CHECK(pmap_find_cache(&m, "aa") == NULL);
  pmap_t empty;
  pmap_init(&empty);
  CHECK(pmap_find_cache(&empty, "a") == NULL);
  CHECK_EQ(pmap_node_index(&empty, "node-1"), -1);

  for (uint32_t p = 0; p < 8; p++) {
    int s0, s1, s2;
    int n0 = pmap_copy_at(b, p, 0, &s0);
    int n1 = pmap_copy_at(b, p, 1, &s1);
    CHECK_EQ(s0, PMAP_OWNING);
    CHECK_EQ(s1, PMAP_OWNING);
    CHECK_EQ(pmap_primary(b, p), n0);
    CHECK_EQ(pmap_leader(b, p), n0);
    CHECK(n0 != n1 && n1 >= 0 && n1 < 3);
    /* past the slots, past the partitions: no copy */
    s2 = -5;
    CHECK_EQ(pmap_copy_at(b, p, b->slots, &s2), -1);
    CHECK_EQ(s2, PMAP_NONE);
    s2 = -5;
    CHECK_EQ(pmap_copy_at(b, p, UINT32_MAX, &s2), -1);
    CHECK_EQ(s2, PMAP_NONE);
  }
  int st = -5;
  CHECK_EQ(pmap_copy_at(b, 8, 0, &st), -1);
  CHECK_EQ(st, PMAP_NONE);
  CHECK_EQ(pmap_primary(b, 8), -1);
  CHECK_EQ(pmap_primary(b, UINT32_MAX), -1);
  CHECK_EQ(pmap_leader(b, 8), -1);
  CHECK_EQ(pmap_leader(b, UINT32_MAX), -1);

  /* LOST: no primary, no node in copy 0 */
  pmap_node_t alive[2] = {nodes[0], nodes[2]};
  step(&m, alive, 2, defs, 2, NULL, 0, &l);
  const pmap_group_t *la = cache(&l, "a");
  unsigned lost = 0, moving = 0;
  for (uint32_t p = 0; p < 64; p++) {
    int s;
    int n = pmap_copy_at(la, p, 0, &s);
    if (s == PMAP_LOST) {
      lost++;
      CHECK_EQ(n, -1);
      CHECK_EQ(pmap_primary(la, p), -1);
      CHECK_EQ(pmap_leader(la, p), -1);
    } else {
      CHECK_EQ(s, PMAP_OWNING);
      CHECK_EQ(pmap_primary(la, p), n);
      CHECK_EQ(pmap_leader(la, p), n);
    }
  }
  /* MOVING: a copy, but not a primary */
  const pmap_group_t *lb = cache(&l, "b");
  for (uint32_t p = 0; p < 8; p++)
    for (uint32_t i = 1; i < lb->slots; i++) {
      int s;
      int n = pmap_copy_at(lb, p, i, &s);
      if (s == PMAP_MOVING) {
        moving++;
        CHECK(n >= 0 && (size_t)n < l.nnodes);
        CHECK(pmap_primary(lb, p) != n);
        CHECK(pmap_leader(lb, p) != n);
      }
    }
  CHECK(lost > 0);
  CHECK(moving > 0);
  pmap_free(&m);
  pmap_free(&l);
}

/* ---- placement groups ----------------------------------------------------------- */

/* Caches named "<prefix>-<i>", for i in [0, n), each of shape shapes[i %
 * nshapes] (its name as given); names[] holds the names. */
typedef char cache_name_t[24];

static void many_defs(pmap_cache_def_t *defs, cache_name_t *names, size_t n,
                      const char *prefix, const pmap_cache_def_t *shapes,
                      size_t nshapes) {
  for (size_t i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "%s-%04zu", prefix, i);
    defs[i] = shapes[i % nshapes];
    defs[i].name = names[i];
  }
}

/* Caches of one shape share a group, placed as one cache of that shape
 * alone would be; a cache of another shape has its own. The group's name
 * says its shape. */
static void test_groups_shared(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[3] = {def("x", 64, 1, 0), def("y", 64, 1, 0),
                              def("z", 32, 1, 0)};
  pmap_t m, alone;
  first_map(nodes, 4, defs, 3, &m);
  CHECK_EQ(m.ncaches, 3);
  CHECK_EQ(m.ngroups, 2);
  const pmap_group_t *x = cache(&m, "x"), *y = cache(&m, "y"), *z = cache(&m, "z");
  CHECK(x == y);
  CHECK(x != z);
  CHECK_STR(x->name, "p64-b1");
  CHECK_STR(z->name, "p32-b1");
  CHECK(group(&m, "p64-b1") == x);
  CHECK(group(&m, "p32-b1") == z);
  CHECK_EQ(x->partitions, 64);
  CHECK_EQ(x->backups, 1);
  CHECK_EQ(x->replicated, 0);
  CHECK_EQ(x->ncaches, 2);
  CHECK_EQ(z->ncaches, 1);
  char name[PMAP_GROUP_NAME_MAX];
  pmap_group_name(64, 1, 0, name, sizeof name);
  CHECK_STR(name, "p64-b1");
  /* groups are sorted by name */
  CHECK(strcmp(m.groups[0].name, m.groups[1].name) < 0);
  /* the shared group is placed as "x" alone would be */
  first_map(nodes, 4, defs, 1, &alone);
  const pmap_group_t *xa = cache(&alone, "x");
  CHECK_EQ(xa->slots, x->slots);
  CHECK(memcmp(xa->owners, x->owners, (size_t)64 * x->slots) == 0);
  CHECK(memcmp(xa->states, x->states, (size_t)64 * x->slots) == 0);

  /* A report names the group: it moves the copy of every cache in it. A
   * join leaves copies MOVING; their fill reports, one per partition and
   * group, make them OWNING for "x" and "y" alike. */
  pmap_t m2, m3;
  pmap_node_t five[5];
  mknodes(five, 5, 1);
  CHECK_EQ(step(&m, five, 5, defs, 3, NULL, 0, &m2), 1);
  const pmap_group_t *g2 = cache(&m2, "x");
  CHECK(cache(&m2, "y") == g2);
  pmap_ready_t rep[64];
  size_t nrep = 0;
  for (uint32_t p = 0; p < 64; p++) {
    int st;
    if (slot_of(&m2, g2, p, "node-5", &st) < 0) continue;
    CHECK_EQ(st, PMAP_MOVING);
    rep[nrep++] = (pmap_ready_t){.group = g2->name, .partition = p,
                                 .node_id = "node-5", .epoch = m2.epoch};
  }
  CHECK(nrep > 0);
  CHECK_EQ(step(&m2, five, 5, defs, 3, rep, nrep, &m3), 1);
  const pmap_group_t *g3 = cache(&m3, "y");
  for (size_t i = 0; i < nrep; i++) {
    int st;
    CHECK(slot_of(&m3, g3, rep[i].partition, "node-5", &st) >= 1);
    CHECK_EQ(st, PMAP_OWNING);
  }
  /* ... and leaves the other group alone */
  const pmap_group_t *z2 = cache(&m2, "z"), *z3 = cache(&m3, "z");
  CHECK_EQ(z2->slots, z3->slots);
  CHECK(memcmp(z2->owners, z3->owners, (size_t)32 * z2->slots) == 0);
  CHECK(memcmp(z2->states, z3->states, (size_t)32 * z2->slots) == 0);

  /* Another cache of a shape the map has is placed at once, by the group
   * it joins: no owner moves, so the map does not change. */
  pmap_cache_def_t more[4] = {defs[0], defs[1], defs[2], def("w", 32, 1, 0)};
  pmap_t m4;
  CHECK_EQ(step(&m, nodes, 4, more, 4, NULL, 0, &m4), 0);
  CHECK_EQ(m4.ncaches, 4);
  CHECK_EQ(m4.ngroups, 2);
  CHECK(cache(&m4, "w") == cache(&m4, "z"));
  CHECK_EQ(cache(&m4, "w")->ncaches, 2);
  pmap_free(&m);
  pmap_free(&alone);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* The map grows with the shapes of caches, not their number: a thousand
 * caches of one shape take the bytes of one. */
static void test_groups_map_bytes(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  static pmap_cache_def_t defs[1000];
  static cache_name_t names[1000];
  const pmap_cache_def_t shape[1] = {def(NULL, 256, 1, 0)};
  many_defs(defs, names, 1000, "c", shape, 1);
  pmap_t one, thousand, two_shapes;
  first_map(nodes, 3, defs, 1, &one);
  first_map(nodes, 3, defs, 1000, &thousand);
  CHECK_EQ(one.ngroups, 1);
  CHECK_EQ(thousand.ngroups, 1);
  CHECK_EQ(thousand.ncaches, 1000);
  CHECK_EQ(pmap_bytes(&thousand), pmap_bytes(&one));
  /* settled (every copy in place), a group takes what pmap_group_bytes
   * says: owners and states, a byte each per copy */
  CHECK_EQ(pmap_bytes(&one), pmap_group_bytes(256, 1, 0, 3));
  CHECK_EQ(pmap_bytes(&one), 2 * 256 * 2);
  /* a second shape adds its own group's bytes, once */
  static pmap_cache_def_t mixed[1001];
  memcpy(mixed, defs, sizeof defs);
  mixed[1000] = def("replicated", 64, 0, 1);
  first_map(nodes, 3, mixed, 1001, &two_shapes);
  CHECK_EQ(two_shapes.ngroups, 2);
  CHECK_EQ(pmap_group_bytes(64, 0, 1, 3), 2 * 64 * 3);
  CHECK_EQ(pmap_bytes(&two_shapes), pmap_bytes(&one) + pmap_group_bytes(64, 0, 1, 3));
  /* the encoded map grows with the names of the caches only */
  unsigned char *b1, *b2;
  size_t l1, l2;
  CHECK_RC(pmap_encode(&one, &b1, &l1), 0);
  CHECK_RC(pmap_encode(&thousand, &b2, &l2), 0);
  CHECK(l2 - l1 < 999 * 64);
  free(b1);
  free(b2);
  pmap_free(&one);
  pmap_free(&thousand);
  pmap_free(&two_shapes);
}

/* pmap_find_cache finds every one of a thousand caches (by its hash index),
 * each in the group of its shape, and nothing for a name not defined. */
static void test_groups_find_many(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  static pmap_cache_def_t defs[1000];
  static cache_name_t names[1000];
  const pmap_cache_def_t shapes[3] = {def(NULL, 16, 1, 0), def(NULL, 8, 0, 0),
                                      def(NULL, 4, 0, 1)};
  many_defs(defs, names, 1000, "cache", shapes, 3);
  pmap_t m;
  first_map(nodes, 3, defs, 1000, &m);
  CHECK_EQ(m.ncaches, 1000);
  CHECK_EQ(m.ngroups, 3);
  const pmap_group_t *g[3] = {group(&m, "p16-b1"), group(&m, "p8-b0"),
                              group(&m, "p4-all")};
  for (size_t i = 0; i < 3; i++) CHECK_EQ(g[i]->ncaches, i == 0 ? 334 : 333);
  for (size_t i = 0; i < 1000; i++) CHECK(pmap_find_cache(&m, names[i]) == g[i % 3]);
  const char *unknown[] = {"cache-1000", "cache-", "cache", "", "Cache-0001",
                           "cache-0001 ", "cache-00001", "p16-b1"};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
    CHECK(pmap_find_cache(&m, unknown[i]) == NULL);
  /* every cache the map holds is one defined, once */
  for (size_t i = 0; i < m.ncaches; i++) {
    CHECK_EQ(strncmp(m.caches[i].name, "cache-", 6), 0);
    CHECK(i == 0 || m.caches[i - 1].group < m.caches[i].group ||
          (m.caches[i - 1].group == m.caches[i].group &&
           strcmp(m.caches[i - 1].name, m.caches[i].name) < 0));
  }
  pmap_free(&m);
}

/* pmap_group_cache_after walks a group's caches in name order, whatever
 * the order they were defined in and the caches of other groups between
 * them; it starts after any name, in the group or not. */
static void test_group_cache_after(void) {
  pmap_node_t nodes[2];
  mknodes(nodes, 2, 1);
  pmap_cache_def_t defs[7] = {def("delta", 8, 1, 0),  def("aardvark", 4, 0, 0),
                              def("alpha", 8, 1, 0),  def("zulu", 4, 0, 0),
                              def("charlie", 8, 1, 0), def("bravo", 8, 1, 0),
                              def("echo", 4, 0, 0)};
  pmap_t m;
  first_map(nodes, 2, defs, 7, &m);
  const pmap_group_t *g = group(&m, "p8-b1"), *o = group(&m, "p4-b0");
  CHECK_EQ(g->ncaches, 4);
  CHECK_EQ(o->ncaches, 3);
  const char *want[4] = {"alpha", "bravo", "charlie", "delta"};
  const char *at = "";
  for (size_t i = 0; i < 4; i++) {
    at = pmap_group_cache_after(&m, g, at);
    CHECK_STR(at, want[i]);
    CHECK(cache(&m, at) == g);
  }
  CHECK(pmap_group_cache_after(&m, g, at) == NULL);
  const char *want_o[3] = {"aardvark", "echo", "zulu"};
  at = "";
  for (size_t i = 0; i < 3; i++) {
    at = pmap_group_cache_after(&m, o, at);
    CHECK_STR(at, want_o[i]);
  }
  CHECK(pmap_group_cache_after(&m, o, at) == NULL);
  /* after names not in the group */
  CHECK_STR(pmap_group_cache_after(&m, g, "aardvark"), "alpha");
  CHECK_STR(pmap_group_cache_after(&m, g, "b"), "bravo");
  CHECK_STR(pmap_group_cache_after(&m, g, "bravo"), "charlie");
  CHECK_STR(pmap_group_cache_after(&m, g, "bravo0"), "charlie");
  CHECK_STR(pmap_group_cache_after(&m, g, "cz"), "delta");
  CHECK(pmap_group_cache_after(&m, g, "delta") == NULL);
  CHECK(pmap_group_cache_after(&m, g, "zz") == NULL);
  CHECK_STR(pmap_group_cache_after(&m, o, "alpha"), "echo");
  /* A walk goes on over a map that changed under it: "charlie" dropped,
   * "bravo2" added, the walk that stood at "bravo" finds "bravo2" next. */
  pmap_cache_def_t later[7] = {defs[0], defs[1], defs[2], defs[3],
                               def("bravo2", 8, 1, 0), defs[5], defs[6]};
  pmap_t m2;
  CHECK_EQ(step(&m, nodes, 2, later, 7, NULL, 0, &m2), 0);
  const pmap_group_t *g2 = group(&m2, "p8-b1");
  CHECK_STR(pmap_group_cache_after(&m2, g2, "bravo"), "bravo2");
  CHECK_STR(pmap_group_cache_after(&m2, g2, "bravo2"), "delta");
  CHECK_STR(pmap_group_cache_after(&m2, g2, "charlie"), "delta");
  pmap_free(&m);
  pmap_free(&m2);
}

/* A group lives while some cache is of its shape: dropping one of its
 * caches changes no owner, dropping the last drops the group; the other
 * groups stay as they were. */
static void test_group_dropped(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t abc[3] = {def("a", 16, 1, 0), def("b", 16, 1, 0), def("c", 8, 0, 0)};
  pmap_cache_def_t bc[2] = {abc[1], abc[2]};
  pmap_cache_def_t c_only[1] = {abc[2]};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, abc, 3, &m1);
  CHECK_EQ(m1.ngroups, 2);
  CHECK_EQ(step(&m1, nodes, 3, bc, 2, NULL, 0, &m2), 0);
  CHECK_EQ(m2.ngroups, 2);
  CHECK_EQ(m2.ncaches, 2);
  CHECK(pmap_find_cache(&m2, "a") == NULL);
  CHECK(cache(&m2, "b") == group(&m2, "p16-b1"));
  CHECK_EQ(cache(&m2, "b")->ncaches, 1);
  CHECK_EQ(step(&m2, nodes, 3, c_only, 1, NULL, 0, &m3), 1);
  CHECK_EQ(m3.ngroups, 1);
  CHECK_EQ(m3.ncaches, 1);
  CHECK(pmap_find_group(&m3, "p16-b1") == NULL);
  CHECK(pmap_find_cache(&m3, "b") == NULL);
  const pmap_group_t *c1 = cache(&m1, "c"), *c3 = cache(&m3, "c");
  CHECK(c3 == &m3.groups[0]);
  CHECK_EQ(c1->slots, c3->slots);
  CHECK(memcmp(c1->owners, c3->owners, (size_t)8 * c1->slots) == 0);
  CHECK(memcmp(c1->states, c3->states, (size_t)8 * c1->slots) == 0);
  CHECK(pmap_bytes(&m3) < pmap_bytes(&m1));
  /* Defined again, it comes back as a new group, owned at once. */
  pmap_t m4;
  CHECK_EQ(step(&m3, nodes, 3, abc, 3, NULL, 0, &m4), 1);
  const pmap_group_t *a4 = cache(&m4, "a");
  CHECK(a4 == cache(&m4, "b"));
  for (uint32_t p = 0; p < 16; p++) {
    uint32_t ideal[2];
    CHECK_EQ(pmap_ideal(nodes, 3, p, 2, ideal), 2);
    check_ideal_layout(&m4, a4, p, nodes, ideal, 2);
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
  pmap_free(&m4);
}

/* Replicated caches share a group by their partitions alone (their backups
 * mean nothing: the group says "all"), apart from partitioned caches of the
 * same partitions, each shape apart from the others. */
static void test_groups_replicated(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[5] = {def("r", 16, 2, 1), def("r0", 16, 0, 1),
                              def("p0", 16, 0, 0), def("p2", 16, 2, 0),
                              def("r8", 8, 1, 1)};
  pmap_t m;
  first_map(nodes, 4, defs, 5, &m);
  CHECK_EQ(m.ngroups, 4);
  const pmap_group_t *r = cache(&m, "r");
  CHECK(cache(&m, "r0") == r);
  CHECK_STR(r->name, "p16-all");
  CHECK_EQ(r->replicated, 1);
  CHECK_EQ(r->backups, 0);
  CHECK_EQ(r->slots, 4);
  check_everywhere(&m, r, 0);
  const pmap_group_t *p0 = cache(&m, "p0"), *p2 = cache(&m, "p2"), *r8 = cache(&m, "r8");
  CHECK_STR(p0->name, "p16-b0");
  CHECK_STR(p2->name, "p16-b2");
  CHECK_STR(r8->name, "p8-all");
  CHECK(p0 != r && p2 != r && p0 != p2);
  CHECK_EQ(p0->replicated, 0);
  CHECK_EQ(p0->slots, 1);
  CHECK_EQ(p2->slots, 3);
  check_everywhere(&m, r8, 0);
  char name[PMAP_GROUP_NAME_MAX];
  pmap_group_name(16, 2, 1, name, sizeof name);
  CHECK_STR(name, "p16-all");
  CHECK_EQ(pmap_group_bytes(16, 2, 1, 4), 2 * 16 * 4);
  /* A demote report for the replicated group leaves the partitioned groups
   * of the same partitions alone, and the other way round. */
  int s;
  int b = pmap_copy_at(r, 3, 1, &s);
  CHECK(b >= 0);
  pmap_ready_t d = {.group = r->name, .partition = 3, .node_id = m.nodes[b].id,
                    .epoch = m.epoch, .demote = 1};
  pmap_t out;
  CHECK_EQ(step(&m, nodes, 4, defs, 5, &d, 1, &out), 1);
  CHECK_EQ(slot_of(&out, cache(&out, "r0"), 3, m.nodes[b].id, &s), 1);
  CHECK_EQ(s, PMAP_MOVING);
  const pmap_group_t *q = cache(&out, "p2");
  CHECK(memcmp(q->states, p2->states, (size_t)16 * p2->slots) == 0);
  CHECK(memcmp(q->owners, p2->owners, (size_t)16 * p2->slots) == 0);
  pmap_free(&out);
  int pb = pmap_copy_at(p2, 3, 1, &s);
  d = (pmap_ready_t){.group = p2->name, .partition = 3, .node_id = m.nodes[pb].id,
                     .epoch = m.epoch, .demote = 1};
  CHECK_EQ(step(&m, nodes, 4, defs, 5, &d, 1, &out), 1);
  check_everywhere(&out, cache(&out, "r"), 0);
  CHECK_EQ(slot_of(&out, cache(&out, "p2"), 3, m.nodes[pb].id, &s), 1);
  CHECK_EQ(s, PMAP_MOVING);
  pmap_free(&out);
  pmap_free(&m);
}

/* ---- node order ------------------------------------------------------------------- */

/* The nodes of the next map keep their order in the current one, whatever
 * the order of the live nodes given: a node in the middle dies, the
 * survivors keep their relative order and the newcomer comes last, and the
 * same live nodes in yet another order change nothing. Copies follow their
 * nodes. */
static void test_node_order_kept(void) {
  pmap_node_t nodes[6];
  mknodes(nodes, 6, 1);
  pmap_cache_def_t defs[2] = {def("c", 128, 1, 0), def("r", 16, 0, 1)};
  pmap_t m1, m2, m3;
  first_map(nodes, 5, defs, 2, &m1);
  for (size_t i = 0; i < 5; i++) CHECK_STR(m1.nodes[i].id, nodes[i].id);
  /* node-3 dies, node-6 joins; the live nodes come in a scrambled order */
  pmap_node_t alive[5] = {nodes[5], nodes[4], nodes[0], nodes[3], nodes[1]};
  CHECK_EQ(step(&m1, alive, 5, defs, 2, NULL, 0, &m2), 1);
  const char *want[5] = {"node-1", "node-2", "node-4", "node-5", "node-6"};
  CHECK_EQ(m2.nnodes, 5);
  for (size_t i = 0; i < 5; i++) {
    CHECK_STR(m2.nodes[i].id, want[i]);
    CHECK_EQ(pmap_node_index(&m2, want[i]), (int)i);
    /* the whole node, not only its id */
    char addr[PMAP_ADDR_MAX];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", 7000 + (want[i][5] - '0'));
    CHECK_STR(m2.nodes[i].addr, addr);
  }
  /* copies on survivors stay on them (by id) where the dead node had none */
  const pmap_group_t *c1 = cache(&m1, "c"), *c2 = cache(&m2, "c");
  unsigned untouched = 0;
  for (uint32_t p = 0; p < 128; p++) {
    int st;
    if (slot_of(&m1, c1, p, "node-3", &st) >= 0) continue;
    untouched++;
    CHECK_STR(primary_id(&m2, c2, p), primary_id(&m1, c1, p));
    for (uint32_t i = 0; i < c1->slots; i++) {
      int s1;
      int n1 = pmap_copy_at(c1, p, i, &s1);
      if (n1 < 0) continue;
      CHECK_EQ(slot_of(&m2, c2, p, m1.nodes[n1].id, &st), (int)i);
      CHECK_EQ(st, PMAP_OWNING);
    }
  }
  CHECK(untouched > 0);
  /* the newcomer, last, gets a copy of every replicated partition, to
   * fill */
  const pmap_group_t *r2 = cache(&m2, "r");
  for (uint32_t p = 0; p < 16; p++) {
    int st;
    CHECK_EQ(ncopies(r2, p), 5);
    CHECK(slot_of(&m2, r2, p, "node-6", &st) > 0);
    CHECK_EQ(st, PMAP_MOVING);
  }
  /* the same nodes in another order: nothing changes */
  pmap_node_t again[5] = {nodes[3], nodes[1], nodes[5], nodes[0], nodes[4]};
  CHECK_EQ(step(&m2, again, 5, defs, 2, NULL, 0, &m3), 0);
  for (size_t i = 0; i < 5; i++) CHECK_STR(m3.nodes[i].id, want[i]);
  check_same_groups(&m2, &m3);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
}

/* ---- the wire form with groups ------------------------------------------------------ */

/* A map whose groups place several caches each (a replicated one among
 * them), with copies MOVING, encoded and decoded: the same nodes, groups,
 * owners and states, and every cache named in the group of the same name;
 * what was decoded steps as the original does. */
static void test_encode_groups(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  for (size_t i = 0; i < 4; i++) {
    snprintf(nodes[i].zone, sizeof nodes[i].zone, "z%zu", i % 2);
    nodes[i].incarnation = 1000 + i;
  }
  pmap_cache_def_t defs[6] = {def("a1", 64, 1, 0), def("a3", 64, 1, 0),
                              def("a2", 64, 1, 0), def("r1", 8, 0, 1),
                              def("r2", 8, 3, 1),  def("s", 32, 0, 0)};
  pmap_t m1, m, d;
  first_map(nodes, 3, defs, 6, &m1);
  CHECK_EQ(step(&m1, nodes, 4, defs, 6, NULL, 0, &m), 1); /* node-4 joins */
  snprintf(m.coordinator, sizeof m.coordinator, "node-2");
  m.nodes[1].leaving = 1;
  CHECK_EQ(m.ngroups, 3);
  CHECK_EQ(m.ncaches, 6);
  unsigned char *buf;
  size_t len;
  CHECK_RC(pmap_encode(&m, &buf, &len), 0);
  CHECK_RC(pmap_decode(buf, len, &d), 0);
  free(buf);
  check_same_map(&m, &d);
  int moving = 0;
  for (size_t i = 0; i < (size_t)d.groups[0].partitions * d.groups[0].slots; i++)
    moving |= d.groups[0].states[i] == PMAP_MOVING;
  CHECK(moving);
  for (size_t i = 0; i < 6; i++) {
    const pmap_group_t *g = cache(&d, defs[i].name);
    CHECK_STR(g->name, cache(&m, defs[i].name)->name);
    CHECK(g == group(&d, g->name));
  }
  CHECK(cache(&d, "a1") == cache(&d, "a2") && cache(&d, "a2") == cache(&d, "a3"));
  CHECK(cache(&d, "r1") == cache(&d, "r2"));
  CHECK(pmap_find_cache(&d, "p64-b1") == NULL);
  const pmap_group_t *a = group(&d, "p64-b1");
  CHECK_EQ(a->ncaches, 3);
  CHECK_STR(pmap_group_cache_after(&d, a, ""), "a1");
  CHECK_STR(pmap_group_cache_after(&d, a, "a1"), "a2");
  CHECK_STR(pmap_group_cache_after(&d, a, "a2"), "a3");
  CHECK(pmap_group_cache_after(&d, a, "a3") == NULL);
  /* the decoded map serves as the current one */
  m.nodes[1].leaving = 0;
  d.nodes[1].leaving = 0;
  pmap_t n1, n2;
  CHECK_EQ(step(&m, nodes, 4, defs, 6, NULL, 0, &n1), step(&d, nodes, 4, defs, 6, NULL, 0, &n2));
  check_same_map(&n1, &n2);
  pmap_free(&m1);
  pmap_free(&m);
  pmap_free(&d);
  pmap_free(&n1);
  pmap_free(&n2);
}

/* The caches a PMAP reply names must name its groups, whose names are
 * unique, and owners name nodes of the map. */
static void test_decode_bad_groups(void) {
  Grid__PmapNode n1 = GRID__PMAP_NODE__INIT, n2 = GRID__PMAP_NODE__INIT;
  n1.id = "node-1";
  n2.id = "node-2";
  Grid__PmapNode *np[2] = {&n1, &n2};
  unsigned char owners[8] = {1, 2, 2, 1, 1, 2, 2, 1};
  unsigned char states[8] = {1, 1, 1, 1, 1, 2, 1, 1};
  Grid__PmapCache g0 = GRID__PMAP_CACHE__INIT, g1;
  g0.name = "p4-b1";
  g0.partitions = 4;
  g0.copies = 2;
  g0.backups = 1;
  g0.owners = (ProtobufCBinaryData){8, owners};
  g0.states = (ProtobufCBinaryData){8, states};
  g1 = g0;
  g1.name = "p4-all";
  g1.backups = 0;
  g1.replicated = 1;
  Grid__PmapCache *gp[2] = {&g0, &g1};
  Grid__PmapCacheGroup c[3];
  Grid__PmapCacheGroup *cp[3] = {&c[0], &c[1], &c[2]};
  const char *cache_names[3] = {"a", "b", "c"};
  const char *group_names[3] = {"p4-b1", "p4-all", "p4-b1"};
  for (size_t i = 0; i < 3; i++) {
    grid__pmap_cache_group__init(&c[i]);
    c[i].cache = (char *)cache_names[i];
    c[i].group = (char *)group_names[i];
  }
  Grid__Pmap pm = GRID__PMAP__INIT;
  pm.epoch = 3;
  pm.nodes = np;
  pm.n_nodes = 2;
  pm.caches = gp;
  pm.n_caches = 2;
  pm.cache_groups = cp;
  pm.n_cache_groups = 3;

  size_t len;
  unsigned char *buf = pack(&pm, &len);
  pmap_t m;
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  free(buf);
  CHECK_EQ(m.ngroups, 2);
  CHECK_EQ(m.ncaches, 3);
  CHECK(cache(&m, "a") == group(&m, "p4-b1"));
  CHECK(cache(&m, "c") == group(&m, "p4-b1"));
  CHECK(cache(&m, "b") == group(&m, "p4-all"));
  CHECK_EQ(group(&m, "p4-all")->replicated, 1);
  CHECK_EQ(group(&m, "p4-b1")->backups, 1);
  CHECK_EQ(group(&m, "p4-b1")->ncaches, 2);
  pmap_free(&m);

  /* a cache in a group the map does not have */
  c[1].group = "p4-b2";
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  c[1].group = "";
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  c[1].group = "p4-all";
  /* a cache name longer than a map holds */
  char long_name[80];
  memset(long_name, 'x', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  c[2].cache = long_name;
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  c[2].cache = "c";
  /* two groups of one name */
  g1.name = "p4-b1";
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  g1.name = "p4-all";
  /* an owner past the node list, in a group caches name */
  unsigned char bad_owners[8] = {1, 2, 2, 1, 1, 3, 2, 1};
  g1.owners = (ProtobufCBinaryData){8, bad_owners};
  buf = pack(&pm, &len);
  check_refused(buf, len);
  free(buf);
  g1.owners = (ProtobufCBinaryData){8, owners};
  /* still good after all that */
  buf = pack(&pm, &len);
  CHECK_RC(pmap_decode(buf, len, &m), 0);
  free(buf);
  pmap_free(&m);
}

/* ---- the map in ZooKeeper: root and chunks -------------------------------------------- */

/* The chunk written under znode by plan, or NULL. */
static const pmap_blob_t *plan_write(const pmap_plan_t *plan, const char *znode) {
  for (size_t i = 0; i < plan->nwrites; i++)
    if (strcmp(plan->writes[i].znode, znode) == 0) return &plan->writes[i];
  return NULL;
}

/* A reader of the stored map: decodes plan's root into out and refs, takes
 * each chunk from prev (read from prev_refs) where it may, else reads it
 * from what plan wrote or, when older is not NULL, what older wrote.
 * Returns how many chunks it took from prev. */
static size_t read_stored_over(const pmap_plan_t *plan, const pmap_plan_t *older,
                               const pmap_t *prev, const pmap_stored_t *prev_refs,
                               pmap_t *out, pmap_stored_t *refs) {
  CHECK_RC(pmap_root_decode(plan->root, plan->root_len, out, refs), 0);
  size_t reused = 0;
  for (size_t i = 0; i < refs->n; i++) {
    const pmap_chunk_ref_t *r = &refs->refs[i];
    if (pmap_chunk_reuse(out, prev, prev_refs, r)) {
      reused++;
      continue;
    }
    const pmap_blob_t *w = plan_write(plan, r->znode);
    if (!w && older) w = plan_write(older, r->znode);
    CHECK(w != NULL);
    CHECK_EQ(w->len, r->bytes);
    CHECK_RC(pmap_chunk_apply(out, r, w->buf, w->len), 0);
  }
  return reused;
}

/* read_stored_over, of a root whose chunks plan wrote alone. */
static size_t read_stored(const pmap_plan_t *plan, const pmap_t *prev,
                          const pmap_stored_t *prev_refs, pmap_t *out,
                          pmap_stored_t *refs) {
  return read_stored_over(plan, NULL, prev, prev_refs, out, refs);
}

/* The same chunk references. */
static void check_same_refs(const pmap_stored_t *a, const pmap_stored_t *b) {
  CHECK_EQ(a->n, b->n);
  for (size_t i = 0; i < a->n; i++) {
    CHECK_STR(a->refs[i].group, b->refs[i].group);
    CHECK_EQ(a->refs[i].first, b->refs[i].first);
    CHECK_EQ(a->refs[i].count, b->refs[i].count);
    CHECK_EQ(a->refs[i].bytes, b->refs[i].bytes);
    CHECK_STR(a->refs[i].znode, b->refs[i].znode);
  }
}

/* The chunk of refs holding partition p of group g, or NULL. */
static const pmap_chunk_ref_t *ref_of(const pmap_stored_t *refs, const char *g, uint32_t p) {
  for (size_t i = 0; i < refs->n; i++)
    if (strcmp(refs->refs[i].group, g) == 0 && p >= refs->refs[i].first &&
        p - refs->refs[i].first < refs->refs[i].count)
      return &refs->refs[i];
  return NULL;
}

/* m stored from nothing: every chunk is written, none is obsolete, every
 * partition of every group is in exactly one chunk of at most
 * PMAP_CHUNK_BYTES (owners and states), znode names are unique, and a
 * reader of the root and the chunks gets m back: nodes, groups, owners and
 * states byte for byte; the caches come from their definitions. */
static void check_store_first(const pmap_t *m, const pmap_cache_def_t *defs, size_t ndefs) {
  pmap_plan_t plan;
  CHECK_RC(pmap_store_plan(m, NULL, NULL, m->epoch, 0xabcdef, &plan), 0);
  size_t want = 0;
  for (size_t g = 0; g < m->ngroups; g++) {
    uint32_t per = pmap_chunk_partitions(m->groups[g].slots);
    want += (m->groups[g].partitions + per - 1) / per;
  }
  CHECK(plan.root != NULL && plan.root_len > 0);
  CHECK_EQ(plan.stored.n, want);
  CHECK_EQ(plan.nwrites, want);
  CHECK_EQ(plan.nobsolete, 0);
  for (size_t g = 0; g < m->ngroups; g++) {
    const pmap_group_t *grp_g = &m->groups[g];
    uint32_t next = 0;
    for (size_t i = 0; i < plan.stored.n; i++) {
      const pmap_chunk_ref_t *r = &plan.stored.refs[i];
      if (strcmp(r->group, grp_g->name) != 0) continue;
      CHECK_EQ(r->first, next); /* in order, no gap, no overlap */
      CHECK(r->count > 0 && r->count <= pmap_chunk_partitions(grp_g->slots));
      CHECK(2 * (uint64_t)r->count * grp_g->slots <= PMAP_CHUNK_BYTES);
      next += r->count;
    }
    CHECK_EQ(next, grp_g->partitions);
  }
  for (size_t i = 0; i < plan.stored.n; i++) {
    CHECK(pmap_find_group(m, plan.stored.refs[i].group) != NULL);
    for (size_t k = 0; k < i; k++)
      CHECK(strcmp(plan.stored.refs[i].znode, plan.stored.refs[k].znode) != 0);
    const pmap_blob_t *w = plan_write(&plan, plan.stored.refs[i].znode);
    CHECK(w != NULL && w->buf != NULL);
    CHECK_EQ(w->len, plan.stored.refs[i].bytes);
  }
  pmap_t back;
  pmap_stored_t refs;
  CHECK_EQ(read_stored(&plan, NULL, NULL, &back, &refs), 0);
  check_same_nodes(m, &back);
  check_same_groups(m, &back);
  check_same_refs(&refs, &plan.stored);
  CHECK_EQ(back.ncaches, 0); /* the root names no cache */
  CHECK_RC(pmap_set_caches(&back, defs, ndefs), 0);
  check_same_map(m, &back);
  pmap_free(&back);
  pmap_stored_free(&refs);
  pmap_plan_free(&plan);
}

/* A large group, 65536 partitions of three copies, for the storage tests:
 * more than one chunk. */
#define BIG_PARTITIONS 65536

static void test_store_first_map(void) {
  pmap_t busy;
  busy_map(&busy);
  pmap_cache_def_t busy_defs[2] = {def("parted", 64, 1, 0), def("single", 32, 0, 0)};
  check_store_first(&busy, busy_defs, 2);
  pmap_free(&busy);

  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  pmap_cache_def_t defs[5] = {def("big", BIG_PARTITIONS, 2, 0), def("big2", BIG_PARTITIONS, 2, 0),
                              def("r", 16, 0, 1), def("s1", 32, 0, 0), def("s2", 32, 0, 0)};
  pmap_t m1, m;
  first_map(nodes, 3, defs, 5, &m1);
  CHECK_EQ(step(&m1, nodes, 4, defs, 5, NULL, 0, &m), 1); /* copies MOVING */
  snprintf(m.coordinator, sizeof m.coordinator, "node-1");
  CHECK(pmap_chunk_partitions(cache(&m, "big")->slots) < BIG_PARTITIONS);
  check_store_first(&m, defs, 5);
  /* An empty map is a root alone. */
  pmap_t e, eb;
  pmap_init(&e);
  e.epoch = 1;
  pmap_plan_t plan;
  CHECK_RC(pmap_store_plan(&e, NULL, NULL, 1, 1, &plan), 0);
  CHECK_EQ(plan.nwrites, 0);
  CHECK_EQ(plan.stored.n, 0);
  pmap_stored_t refs;
  CHECK_EQ(read_stored(&plan, NULL, NULL, &eb, &refs), 0);
  check_same_map(&e, &eb);
  pmap_free(&eb);
  pmap_stored_free(&refs);
  pmap_plan_free(&plan);
  pmap_free(&m1);
  pmap_free(&m);
}

/* A new map that changes one partition of one group writes that
 * partition's chunk alone, under a new name; the root names the other
 * chunks again, and the replaced chunk is obsolete. A reader that holds the
 * last map reads that one chunk. A map that changes nothing writes no
 * chunk. */
static void test_store_one_chunk(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[2] = {def("big", BIG_PARTITIONS, 2, 0), def("small", 16, 1, 0)};
  pmap_t m1, m2;
  first_map(nodes, 3, defs, 2, &m1);
  const pmap_group_t *b1 = cache(&m1, "big");
  CHECK_EQ(b1->slots, 3);
  uint32_t per = pmap_chunk_partitions(3);
  CHECK_EQ(per, PMAP_CHUNK_BYTES / 6);
  CHECK(per < BIG_PARTITIONS);
  CHECK(2 * (uint64_t)per >= BIG_PARTITIONS); /* two chunks */
  pmap_plan_t plan1, plan2, plan3, other;
  CHECK_RC(pmap_store_plan(&m1, NULL, NULL, m1.epoch, 0x1111, &plan1), 0);
  CHECK_EQ(plan1.stored.n, 3); /* "big" in two, "small" in one */
  pmap_t r1;
  pmap_stored_t refs1;
  CHECK_EQ(read_stored(&plan1, NULL, NULL, &r1, &refs1), 0);
  check_same_groups(&m1, &r1);

  /* Another writer, the same map and epoch: other names. */
  CHECK_RC(pmap_store_plan(&m1, NULL, NULL, m1.epoch, 0x2222, &other), 0);
  for (size_t i = 0; i < other.stored.n; i++)
    for (size_t k = 0; k < plan1.stored.n; k++)
      CHECK(strcmp(other.stored.refs[i].znode, plan1.stored.refs[k].znode) != 0);
  pmap_plan_free(&other);

  /* One backup of partition p, in the second chunk of "big", demoted: one
   * state changes. */
  const uint32_t p = per + 1000;
  int s;
  int b = pmap_copy_at(b1, p, 1, &s);
  CHECK(b >= 0);
  CHECK_EQ(s, PMAP_OWNING);
  pmap_ready_t d = {.group = b1->name, .partition = p, .node_id = m1.nodes[b].id,
                    .epoch = m1.epoch, .demote = 1};
  CHECK_EQ(step(&m1, nodes, 3, defs, 2, &d, 1, &m2), 1);
  const pmap_group_t *b2 = cache(&m2, "big");
  size_t diff = 0;
  for (size_t k = 0; k < (size_t)BIG_PARTITIONS * 3; k++)
    diff += (b1->owners[k] != b2->owners[k]) + (b1->states[k] != b2->states[k]);
  CHECK_EQ(diff, 1);
  CHECK_EQ(b2->states[(size_t)p * 3 + 1], PMAP_MOVING);

  CHECK_RC(pmap_store_plan(&m2, &m1, &plan1.stored, m2.epoch, 0x1111, &plan2), 0);
  CHECK_EQ(plan2.stored.n, 3);
  CHECK_EQ(plan2.nwrites, 1);
  const pmap_chunk_ref_t *was = ref_of(&plan1.stored, b2->name, p);
  const pmap_chunk_ref_t *now = ref_of(&plan2.stored, b2->name, p);
  CHECK(was != NULL && now != NULL);
  CHECK_EQ(now->first, per);
  CHECK_EQ(now->count, BIG_PARTITIONS - per);
  CHECK_EQ(now->first, was->first);
  CHECK_EQ(now->count, was->count);
  CHECK_STR(plan2.writes[0].znode, now->znode);
  CHECK(strcmp(now->znode, was->znode) != 0);
  for (size_t i = 0; i < plan2.stored.n; i++) {
    const pmap_chunk_ref_t *r = &plan2.stored.refs[i];
    if (r == now) continue;
    const pmap_chunk_ref_t *old = ref_of(&plan1.stored, r->group, r->first);
    CHECK(old != NULL);
    CHECK_EQ(r->count, old->count);
    CHECK_EQ(r->bytes, old->bytes);
    CHECK_STR(r->znode, old->znode); /* named again, not written */
    CHECK(plan_write(&plan2, r->znode) == NULL);
  }
  CHECK_EQ(plan2.nobsolete, 1);
  CHECK_STR(plan2.obsolete[0], was->znode);

  /* The reader that holds m1 reads one chunk and has m2. */
  pmap_t r2;
  pmap_stored_t refs2;
  CHECK_EQ(read_stored(&plan2, &r1, &refs1, &r2, &refs2), 2);
  check_same_nodes(&m2, &r2);
  check_same_groups(&m2, &r2);
  /* A reader with nothing reads every chunk (two of them written by the
   * first plan) and has m2 too. */
  pmap_t r2b;
  pmap_stored_t refs2b;
  CHECK_EQ(read_stored_over(&plan2, &plan1, NULL, NULL, &r2b, &refs2b), 0);
  check_same_groups(&m2, &r2b);

  /* Nothing changed: no chunk written, none obsolete, the same refs. */
  CHECK_RC(pmap_store_plan(&m2, &m2, &plan2.stored, m2.epoch + 1, 0x1111, &plan3), 0);
  CHECK_EQ(plan3.nwrites, 0);
  CHECK_EQ(plan3.nobsolete, 0);
  check_same_refs(&plan3.stored, &plan2.stored);

  pmap_plan_free(&plan1);
  pmap_plan_free(&plan2);
  pmap_plan_free(&plan3);
  pmap_stored_free(&refs1);
  pmap_stored_free(&refs2);
  pmap_stored_free(&refs2b);
  pmap_free(&r1);
  pmap_free(&r2);
  pmap_free(&r2b);
  pmap_free(&m1);
  pmap_free(&m2);
}

/* pmap_chunk_reuse takes a chunk from the previous map only when the
 * previous root named that very chunk (its znode); otherwise it touches
 * nothing and the chunk must be read. */
static void test_chunk_reuse(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[2] = {def("a", 32, 1, 0), def("b", 16, 0, 0)};
  pmap_t m1, m2;
  first_map(nodes, 3, defs, 2, &m1);
  const pmap_group_t *a1 = cache(&m1, "a");
  int s;
  int b = pmap_copy_at(a1, 5, 1, &s);
  pmap_ready_t d = {.group = a1->name, .partition = 5, .node_id = m1.nodes[b].id,
                    .epoch = m1.epoch, .demote = 1};
  CHECK_EQ(step(&m1, nodes, 3, defs, 2, &d, 1, &m2), 1);
  pmap_plan_t plan1, plan2;
  CHECK_RC(pmap_store_plan(&m1, NULL, NULL, m1.epoch, 7, &plan1), 0);
  CHECK_RC(pmap_store_plan(&m2, &m1, &plan1.stored, m2.epoch, 7, &plan2), 0);
  CHECK_EQ(plan2.nwrites, 1); /* "a"'s one chunk */
  pmap_t r1, fresh;
  pmap_stored_t refs1, refs;
  CHECK_EQ(read_stored(&plan1, NULL, NULL, &r1, &refs1), 0);
  CHECK_RC(pmap_root_decode(plan2.root, plan2.root_len, &fresh, &refs), 0);
  CHECK_EQ(refs.n, 2);
  const pmap_chunk_ref_t *ra = ref_of(&refs, cache(&m2, "a")->name, 0);
  const pmap_chunk_ref_t *rb = ref_of(&refs, cache(&m2, "b")->name, 0);
  CHECK(ra != NULL && rb != NULL);
  const pmap_group_t *fa = group(&fresh, ra->group), *fb = group(&fresh, rb->group);
  uint8_t zero[64] = {0};
  /* Not named by the previous root (it replaced "a"'s chunk): 0, untouched. */
  CHECK_EQ(pmap_chunk_reuse(&fresh, &r1, &refs1, ra), 0);
  CHECK(memcmp(fa->owners, zero, (size_t)32 * fa->slots) == 0);
  CHECK(memcmp(fa->states, zero, (size_t)32 * fa->slots) == 0);
  /* No previous map, or one without the group: 0. */
  CHECK_EQ(pmap_chunk_reuse(&fresh, NULL, NULL, rb), 0);
  CHECK_EQ(pmap_chunk_reuse(&fresh, &r1, NULL, rb), 0);
  CHECK_EQ(pmap_chunk_reuse(&fresh, NULL, &refs1, rb), 0);
  pmap_t empty;
  pmap_init(&empty);
  CHECK_EQ(pmap_chunk_reuse(&fresh, &empty, &refs1, rb), 0);
  CHECK(memcmp(fb->owners, zero, (size_t)16 * fb->slots) == 0);
  CHECK(memcmp(fb->states, zero, (size_t)16 * fb->slots) == 0);
  /* Named by the previous root: 1, the bytes of the previous map. */
  CHECK_EQ(pmap_chunk_reuse(&fresh, &r1, &refs1, rb), 1);
  const pmap_group_t *pb = group(&r1, rb->group);
  CHECK(memcmp(fb->owners, pb->owners, (size_t)16 * fb->slots) == 0);
  CHECK(memcmp(fb->states, pb->states, (size_t)16 * fb->slots) == 0);
  CHECK(memcmp(fb->owners, cache(&m2, "b")->owners, (size_t)16 * fb->slots) == 0);
  pmap_plan_free(&plan1);
  pmap_plan_free(&plan2);
  pmap_stored_free(&refs1);
  pmap_stored_free(&refs);
  pmap_free(&r1);
  pmap_free(&fresh);
  pmap_free(&m1);
  pmap_free(&m2);
}

/* A hand-made root of two nodes and groups "g" (8 partitions, 2 copies) and
 * "h" (4 partitions, 1 copy), naming the chunks refs[0..n). */
static unsigned char *root_with(const Grid__PmapChunkRef *const *refs, size_t n, size_t *len) {
  static Grid__PmapNode n1 = GRID__PMAP_NODE__INIT, n2 = GRID__PMAP_NODE__INIT;
  n1.id = "node-1";
  n2.id = "node-2";
  Grid__PmapNode *np[2] = {&n1, &n2};
  Grid__PmapCache g = GRID__PMAP_CACHE__INIT, h = GRID__PMAP_CACHE__INIT;
  g.name = "g";
  g.partitions = 8;
  g.copies = 2;
  h.name = "h";
  h.partitions = 4;
  h.copies = 1;
  Grid__PmapCache *gp[2] = {&g, &h};
  Grid__Pmap pm = GRID__PMAP__INIT;
  pm.epoch = 4;
  pm.nodes = np;
  pm.n_nodes = 2;
  pm.caches = gp;
  pm.n_caches = 2;
  pm.chunks = (Grid__PmapChunkRef **)refs;
  pm.n_chunks = n;
  return pack(&pm, len);
}

static Grid__PmapChunkRef chunk_ref(const char *group, uint32_t first, uint32_t count,
                                    const char *znode) {
  Grid__PmapChunkRef r = GRID__PMAP_CHUNK_REF__INIT;
  r.group = (char *)group;
  r.first = first;
  r.count = count;
  r.znode = (char *)znode;
  r.bytes = 10;
  return r;
}

/* pmap_root_decode must refuse the root with GRID_EPROTO, leaving nothing
 * behind (LeakSanitizer would say). */
static void check_root_refused(const Grid__PmapChunkRef *const *refs, size_t n) {
  size_t len;
  unsigned char *buf = root_with(refs, n, &len);
  pmap_t m;
  pmap_stored_t st;
  memset(&m, 0xa5, sizeof m);
  memset(&st, 0xa5, sizeof st);
  CHECK_RC(pmap_root_decode(buf, len, &m, &st), GRID_EPROTO);
  free(buf);
}

/* A root names chunks that cover every partition of every group exactly
 * once, each chunk within its group and under a name a znode can have. */
static void test_root_decode_refused(void) {
  Grid__PmapChunkRef g0 = chunk_ref("g", 0, 4, "g.0"), g4 = chunk_ref("g", 4, 4, "g.4"),
                     h0 = chunk_ref("h", 0, 4, "h.0");
  const Grid__PmapChunkRef *good[3] = {&g0, &g4, &h0};
  size_t len;
  unsigned char *buf = root_with(good, 3, &len);
  pmap_t m;
  pmap_stored_t st;
  CHECK_RC(pmap_root_decode(buf, len, &m, &st), 0);
  free(buf);
  CHECK_EQ(m.epoch, 4);
  CHECK_EQ(m.nnodes, 2);
  CHECK_EQ(m.ngroups, 2);
  CHECK_EQ(m.ncaches, 0);
  CHECK_EQ(st.n, 3);
  CHECK_STR(st.refs[1].group, "g");
  CHECK_EQ(st.refs[1].first, 4);
  CHECK_EQ(st.refs[1].count, 4);
  CHECK_STR(st.refs[1].znode, "g.4");
  CHECK_EQ(st.refs[1].bytes, 10);
  /* the owners wait for the chunks */
  const pmap_group_t *g = group(&m, "g");
  for (uint32_t p = 0; p < 8; p++) CHECK_EQ(pmap_leader(g, p), -1);
  pmap_free(&m);
  pmap_stored_free(&st);
  /* in any order */
  const Grid__PmapChunkRef *shuffled[3] = {&h0, &g4, &g0};
  buf = root_with(shuffled, 3, &len);
  CHECK_RC(pmap_root_decode(buf, len, &m, &st), 0);
  free(buf);
  pmap_free(&m);
  pmap_stored_free(&st);

  /* a chunk missing; none at all */
  const Grid__PmapChunkRef *missing[2] = {&g0, &h0};
  check_root_refused(missing, 2);
  check_root_refused(NULL, 0);
  /* a chunk twice */
  const Grid__PmapChunkRef *twice[4] = {&g0, &g4, &h0, &g0};
  check_root_refused(twice, 4);
  /* a chunk of a group the root does not have */
  Grid__PmapChunkRef x0 = chunk_ref("x", 0, 4, "x.0");
  const Grid__PmapChunkRef *unknown[4] = {&g0, &g4, &h0, &x0};
  check_root_refused(unknown, 4);
  const Grid__PmapChunkRef *instead[3] = {&g0, &g4, &x0};
  check_root_refused(instead, 3);
  /* empty, or past its group's partitions */
  Grid__PmapChunkRef bad[4] = {chunk_ref("g", 4, 0, "g.4"), chunk_ref("g", 8, 4, "g.8"),
                               chunk_ref("g", 6, 4, "g.6"), chunk_ref("g", 4, UINT32_MAX, "g.4")};
  for (size_t i = 0; i < 4; i++) {
    const Grid__PmapChunkRef *refs[3] = {&g0, &bad[i], &h0};
    check_root_refused(refs, 3);
  }
  /* a znode name longer than a map holds */
  char long_name[PMAP_ZNODE_MAX + 8];
  memset(long_name, 'z', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  Grid__PmapChunkRef lz = chunk_ref("h", 0, 4, long_name);
  const Grid__PmapChunkRef *lzr[3] = {&g0, &g4, &lz};
  check_root_refused(lzr, 3);
  /* not a root at all */
  static const unsigned char junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  CHECK_RC(pmap_root_decode(junk, sizeof junk, &m, &st), GRID_EPROTO);
}

/* Chunks that overlap while their counts add up to the partitions: some
 * partition is in two chunks and another in none, which the root must not
 * be taken with (pmap.h: "every partition of every group is in exactly
 * one chunk"). */
static void test_root_decode_overlap(void) {
  Grid__PmapChunkRef g0 = chunk_ref("g", 0, 4, "g.0"), g4 = chunk_ref("g", 4, 4, "g.4"),
                     h0 = chunk_ref("h", 0, 4, "h.0"), g2 = chunk_ref("g", 2, 4, "g.2");
  /* "g": [0,4) and [2,6): 8 partitions counted, 6 and 7 in none */
  const Grid__PmapChunkRef *overlap[3] = {&g0, &g2, &h0};
  check_root_refused(overlap, 3);
  /* "g" covered one and a half times, "h" not at all: 12 counted of 12 */
  const Grid__PmapChunkRef *other_group[3] = {&g0, &g4, &g2};
  check_root_refused(other_group, 3);
}

/* pmap_chunk_apply takes only the chunk its ref names: the same group,
 * range and copies, owners and states of the right length, owners naming
 * nodes of the root and states a map holds; a refused chunk leaves the map
 * as it was. */
static void test_chunk_apply_refused(void) {
  pmap_node_t nodes[2];
  mknodes(nodes, 2, 1);
  pmap_cache_def_t defs[2] = {def("a", 8, 1, 0), def("b", 4, 0, 0)};
  pmap_t m;
  first_map(nodes, 2, defs, 2, &m);
  pmap_plan_t plan;
  CHECK_RC(pmap_store_plan(&m, NULL, NULL, m.epoch, 1, &plan), 0);
  pmap_t r;
  pmap_stored_t refs;
  CHECK_RC(pmap_root_decode(plan.root, plan.root_len, &r, &refs), 0);
  CHECK_EQ(refs.n, 2);
  const pmap_chunk_ref_t *ra = ref_of(&refs, "p8-b1", 0), *rb = ref_of(&refs, "p4-b0", 0);
  CHECK(ra != NULL && rb != NULL);
  const pmap_blob_t *wa = plan_write(&plan, ra->znode), *wb = plan_write(&plan, rb->znode);
  CHECK(wa != NULL && wb != NULL);
  const pmap_group_t *ga = group(&r, "p8-b1");
  CHECK_EQ(ga->slots, 2);
  uint8_t zero[16] = {0};

  /* the other group's chunk */
  CHECK_RC(pmap_chunk_apply(&r, ra, wb->buf, wb->len), GRID_EPROTO);
  CHECK_RC(pmap_chunk_apply(&r, rb, wa->buf, wa->len), GRID_EPROTO);
  /* not a chunk */
  static const unsigned char junk[] = {0xff, 0xff, 0xff, 0xff};
  CHECK_RC(pmap_chunk_apply(&r, ra, junk, sizeof junk), GRID_EPROTO);
  /* a ref of a group the map does not have */
  pmap_chunk_ref_t rx = *ra;
  snprintf(rx.group, sizeof rx.group, "p8-b2");
  CHECK_RC(pmap_chunk_apply(&r, &rx, wa->buf, wa->len), GRID_EPROTO);

  /* The chunk of "a", altered one field at a time. */
  Grid__PmapChunk *ch = grid__pmap_chunk__unpack(NULL, wa->len, wa->buf);
  CHECK(ch != NULL);
  CHECK_STR(ch->group, "p8-b1");
  CHECK_EQ(ch->first, 0);
  CHECK_EQ(ch->count, 8);
  CHECK_EQ(ch->copies, 2);
  CHECK_EQ(ch->owners.len, 16);
  uint8_t owners[16], states[16];
  memcpy(owners, ch->owners.data, 16);
  memcpy(states, ch->states.data, 16);
  Grid__PmapChunk c = *ch;
  c.owners = (ProtobufCBinaryData){16, owners};
  c.states = (ProtobufCBinaryData){16, states};
  for (int k = 0; k <= 9; k++) {
    Grid__PmapChunk v = c;
    uint8_t vo[17], vs[17];
    memcpy(vo, owners, 16);
    memcpy(vs, states, 16);
    vo[16] = vs[16] = 1;
    v.owners = (ProtobufCBinaryData){16, vo};
    v.states = (ProtobufCBinaryData){16, vs};
    switch (k) {
      case 0: v.group = "p4-b0"; break;
      case 1: v.first = 1; break;
      case 2: v.count = 7; break;
      case 3: v.copies = 3; break;
      case 4: v.owners.len = 15; break;
      case 5: v.states.len = 17; break;
      case 6: vo[3] = 3; break;          /* node index past the two */
      case 7: vs[3] = PMAP_HANDOFF + 1; break;
      case 8: vs[0] = 255; break;
      case 9: break;                     /* as written: taken */
    }
    size_t len = grid__pmap_chunk__get_packed_size(&v);
    unsigned char *buf = malloc(len + 1);
    CHECK(buf != NULL);
    grid__pmap_chunk__pack(&v, buf);
    if (k < 9) {
      CHECK_RC(pmap_chunk_apply(&r, ra, buf, len), GRID_EPROTO);
      CHECK(memcmp(ga->owners, zero, 16) == 0);
      CHECK(memcmp(ga->states, zero, 16) == 0);
    } else {
      CHECK_RC(pmap_chunk_apply(&r, ra, buf, len), 0);
      CHECK(memcmp(ga->owners, cache(&m, "a")->owners, 16) == 0);
      CHECK(memcmp(ga->states, cache(&m, "a")->states, 16) == 0);
    }
    free(buf);
  }
  /* the ref must match the chunk too: another range of the same group */
  pmap_chunk_ref_t shifted = *ra;
  shifted.first = 1;
  shifted.count = 7;
  CHECK_RC(pmap_chunk_apply(&r, &shifted, wa->buf, wa->len), GRID_EPROTO);
  grid__pmap_chunk__free_unpacked(ch, NULL);
  pmap_plan_free(&plan);
  pmap_stored_free(&refs);
  pmap_free(&r);
  pmap_free(&m);
}

/* ---- pmap_copy's index ---------------------------------------------------------------- */

/* A copy finds every cache of the original, in the group of the same
 * place, through an index of its own (it still does once the original is
 * gone), and walks each group's caches alike. */
static void test_copy_index(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  static pmap_cache_def_t defs[1000];
  static cache_name_t names[1000];
  const pmap_cache_def_t shapes[2] = {def(NULL, 16, 1, 0), def(NULL, 8, 0, 1)};
  many_defs(defs, names, 1000, "k", shapes, 2);
  pmap_t m, c;
  first_map(nodes, 3, defs, 1000, &m);
  CHECK_RC(pmap_copy(&c, &m), 0);
  check_same_map(&m, &c);
  CHECK(c.index != NULL && c.index != m.index);
  CHECK_EQ(c.index_mask, m.index_mask);
  long at[1000];
  for (size_t i = 0; i < 1000; i++) {
    const pmap_group_t *g = pmap_find_cache(&c, names[i]);
    CHECK(g != NULL);
    at[i] = g - c.groups;
    CHECK_EQ(at[i], pmap_find_cache(&m, names[i]) - m.groups);
  }
  for (size_t g = 0; g < c.ngroups; g++) {
    const char *x = "", *y = "";
    do {
      x = pmap_group_cache_after(&c, &c.groups[g], x);
      y = pmap_group_cache_after(&m, &m.groups[g], y);
      CHECK((x == NULL) == (y == NULL));
      if (x) CHECK_STR(x, y);
    } while (x);
  }
  pmap_free(&m);
  for (size_t i = 0; i < 1000; i++) CHECK_EQ(pmap_find_cache(&c, names[i]) - c.groups, at[i]);
  CHECK(pmap_find_cache(&c, "k-1000") == NULL);
  /* the copy of an empty map finds nothing */
  pmap_t e, ec;
  pmap_init(&e);
  CHECK_RC(pmap_copy(&ec, &e), 0);
  CHECK(pmap_find_cache(&ec, "k-0000") == NULL);
  pmap_free(&ec);
  pmap_free(&c);
}

#define RUN_ONE(fn)                                          \
  do {                                                       \
    if (!only || strcmp(only, #fn) == 0) RUN(fn);            \
  } while (0)

/* A node restarted under its id (a new incarnation) holds none of its old
 * copies: its primaries go to their backups at once, as after a death; a
 * partition it held alone is lost; and the restarted node does not find
 * itself in the old map (pmap_self_index). */
static void test_restart_new_incarnation(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  for (int i = 0; i < 3; i++) nodes[i].incarnation = 100 + (uint64_t)i;
  pmap_cache_def_t defs[2] = {def("b1", P, 1, 0), def("b0", P, 0, 0)};
  pmap_t m1, m2;
  first_map(nodes, 3, defs, 2, &m1);
  CHECK_EQ(pmap_self_index(&m1, "node-2", 101), 1);
  CHECK_EQ(pmap_self_index(&m1, "node-2", 999), -1);
  CHECK_EQ(pmap_self_index(&m1, "node-2", 0), 1);
  pmap_node_t again[3];
  memcpy(again, nodes, sizeof again);
  again[1].incarnation = 999; /* node-2 restarted */
  CHECK_EQ(step(&m1, again, 3, defs, 2, NULL, 0, &m2), 1);
  const pmap_group_t *b1 = cache(&m1, "b1"), *b1n = cache(&m2, "b1");
  const pmap_group_t *b0 = cache(&m1, "b0"), *b0n = cache(&m2, "b0");
  unsigned moved = 0, lost = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st;
    if (strcmp(primary_id(&m1, b1, p), "node-2") == 0) {
      moved++;
      CHECK(primary_id(&m2, b1n, p) != NULL);
      CHECK(strcmp(primary_id(&m2, b1n, p), "node-2") != 0);
    }
    int at = slot_of(&m2, b1n, p, "node-2", &st);
    CHECK(at < 0 || st == PMAP_MOVING); /* the new incarnation is filled anew */
    if (strcmp(primary_id(&m1, b0, p), "node-2") == 0) {
      lost++;
      pmap_copy_at(b0n, p, 0, &st);
      CHECK_EQ(st, PMAP_LOST);
    }
  }
  CHECK(moved > 0 && lost > 0);
  CHECK_EQ(pmap_self_index(&m2, "node-2", 999), 1);
  /* Incarnations and absence travel with the map. */
  m2.nodes[0].absent = 1;
  unsigned char *buf;
  size_t len;
  CHECK_RC(pmap_encode(&m2, &buf, &len), 0);
  pmap_t back;
  CHECK_RC(pmap_decode(buf, len, &back), 0);
  free(buf);
  for (size_t i = 0; i < 3; i++) {
    CHECK_EQ(back.nodes[i].incarnation, m2.nodes[i].incarnation);
    CHECK_EQ(back.nodes[i].absent, i == 0);
  }
  pmap_free(&back);
  pmap_free(&m1);
  pmap_free(&m2);
}

/* A node gone from ZooKeeper and marked absent (the coordinator's grace
 * period): partitions it held alone wait for it as they are, not lost; its
 * primaries with a live backup go to that backup at once; it is nobody's
 * ideal owner. Back (not absent), it leads its kept partitions again. */
static void test_absent_node_waited_for(void) {
  pmap_node_t nodes[3], absent[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[2] = {def("b1", P, 1, 0), def("b0", P, 0, 0)};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, defs, 2, &m1);
  memcpy(absent, nodes, sizeof absent);
  absent[2].absent = 1; /* node-3 */
  CHECK_EQ(step(&m1, absent, 3, defs, 2, NULL, 0, &m2), 1);
  const pmap_group_t *b1 = cache(&m1, "b1"), *b1n = cache(&m2, "b1");
  const pmap_group_t *b0 = cache(&m1, "b0"), *b0n = cache(&m2, "b0");
  unsigned kept = 0, promoted = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st;
    if (strcmp(primary_id(&m1, b0, p), "node-3") == 0) {
      kept++;
      CHECK_STR(primary_id(&m2, b0n, p), "node-3"); /* waits, not LOST */
      CHECK_EQ(ncopies(b0n, p), 1);
    }
    if (strcmp(primary_id(&m1, b1, p), "node-3") == 0) {
      promoted++;
      CHECK(strcmp(primary_id(&m2, b1n, p), "node-3") != 0);
    }
    CHECK(slot_of(&m2, b1n, p, "node-3", &st) < 0); /* dropped where a live copy leads */
  }
  CHECK(kept > 0 && promoted > 0);
  /* Back with the same incarnation: its kept partitions are its again. */
  CHECK_EQ(step(&m2, nodes, 3, defs, 2, NULL, 0, &m3), 1);
  const pmap_group_t *b0b = cache(&m3, "b0");
  for (uint32_t p = 0; p < P; p++)
    if (strcmp(primary_id(&m1, b0, p), "node-3") == 0) CHECK_STR(primary_id(&m3, b0b, p), "node-3");
  /* An absent node is nobody's ideal owner. */
  uint32_t ideal[3];
  for (uint32_t p = 0; p < 64; p++) {
    size_t k = pmap_ideal(absent, 3, p, 3, ideal);
    CHECK_EQ(k, 2);
    for (size_t i = 0; i < k; i++) CHECK(ideal[i] != 2);
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
}


static pmap_cache_def_t pdef(const char *name, uint32_t partitions, uint32_t backups) {
  pmap_cache_def_t d = def(name, partitions, backups, 0);
  d.persistent = 1;
  return d;
}

/* A persistent cache's group is a group of its own ("-d"), placed only on
 * nodes with a data directory (disk_id), and says so on the wire. */
static void test_persistent_group_needs_disks(void) {
  pmap_node_t nodes[4];
  mknodes(nodes, 4, 1);
  for (int i = 0; i < 3; i++) nodes[i].disk_id = 0xd00 + (uint64_t)i; /* node-4 has none */
  pmap_cache_def_t defs[2] = {pdef("kept", 256, 1), def("mem", 256, 1, 0)};
  pmap_t m;
  first_map(nodes, 4, defs, 2, &m);
  CHECK_STR(grp(&m, "kept"), "p256-b1-d");
  CHECK_STR(grp(&m, "mem"), "p256-b1");
  char name[PMAP_GROUP_NAME_MAX];
  pmap_group_name_of(&defs[0], name, sizeof name);
  CHECK_STR(name, "p256-b1-d");
  const pmap_group_t *k = cache(&m, "kept"), *mem = cache(&m, "mem");
  CHECK(k->persistent && !mem->persistent);
  unsigned on4 = 0;
  for (uint32_t p = 0; p < 256; p++) {
    int st;
    CHECK(slot_of(&m, k, p, "node-4", &st) < 0);
    CHECK_EQ(ncopies(k, p), 2);
    on4 += slot_of(&m, mem, p, "node-4", &st) >= 0;
  }
  CHECK(on4 > 0); /* memory-only caches go everywhere */
  unsigned char *buf;
  size_t len;
  CHECK_RC(pmap_encode(&m, &buf, &len), 0);
  pmap_t back;
  CHECK_RC(pmap_decode(buf, len, &back), 0);
  free(buf);
  CHECK(group(&back, "p256-b1-d")->persistent);
  for (size_t i = 0; i < 4; i++) CHECK_EQ(back.nodes[i].disk_id, m.nodes[i].disk_id);
  pmap_free(&back);
  pmap_free(&m);
}

/* A node restarted (new incarnation) with the same data directory keeps
 * its persistent copies, but as MOVING where a copy on a node that stayed
 * up is in sync (it missed writes meanwhile: filled by delta); its memory
 * copies are gone as before. With another disk_id (an empty or other
 * data directory) its persistent copies are gone too. */
static void test_persistent_restart_one(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  for (int i = 0; i < 3; i++) {
    nodes[i].incarnation = 100 + (uint64_t)i;
    nodes[i].disk_id = 0xd00 + (uint64_t)i;
  }
  pmap_cache_def_t defs[2] = {pdef("kept", P, 1), def("mem", P, 0, 0)};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, defs, 2, &m1);
  pmap_node_t again[3];
  memcpy(again, nodes, sizeof again);
  again[1].incarnation = 999; /* node-2 restarted with its disk */
  CHECK_EQ(step(&m1, again, 3, defs, 2, NULL, 0, &m2), 1);
  const pmap_group_t *k1 = cache(&m1, "kept"), *k2 = cache(&m2, "kept");
  const pmap_group_t *mem1 = cache(&m1, "mem"), *mem2 = cache(&m2, "mem");
  unsigned had = 0, lost = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st1, st2;
    if (slot_of(&m1, k1, p, "node-2", &st1) >= 0) {
      had++;
      CHECK(slot_of(&m2, k2, p, "node-2", &st2) >= 0); /* kept, on its disk */
      CHECK_EQ(st2, PMAP_MOVING);
      CHECK(strcmp(primary_id(&m2, k2, p), "node-2") != 0);
    }
    if (strcmp(primary_id(&m1, mem1, p), "node-2") == 0) {
      lost++;
      pmap_copy_at(mem2, p, 0, &st2);
      CHECK_EQ(st2, PMAP_LOST);
    }
  }
  CHECK(had > 0 && lost > 0);
  /* Another data directory under the same id: nothing of it is kept. */
  again[1].incarnation = 1000;
  again[1].disk_id = 0xbad;
  CHECK_EQ(step(&m2, again, 3, defs, 2, NULL, 0, &m3), 1);
  const pmap_group_t *k3 = cache(&m3, "kept");
  for (uint32_t p = 0; p < P; p++) {
    int st;
    int at = slot_of(&m3, k3, p, "node-2", &st);
    CHECK(at < 0 || st == PMAP_MOVING);
    CHECK(primary_id(&m3, k3, p) != NULL);
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
}

/* The whole cluster stopped and came back, one node at a time: each
 * partition of a persistent cache is served only by a node that held it in
 * sync; one whose in-sync copies are all on nodes not back yet waits for
 * them (never led by a node without it); a node coming back later leads
 * nothing it missed, and is filled. */
static void test_persistent_whole_cluster_restart(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  for (int i = 0; i < 3; i++) {
    nodes[i].incarnation = 100 + (uint64_t)i;
    nodes[i].disk_id = 0xd00 + (uint64_t)i;
  }
  pmap_cache_def_t defs[1] = {pdef("kept", P, 1)};
  pmap_t m1, m2, m3;
  first_map(nodes, 3, defs, 1, &m1);
  /* Only node-3 is back (new incarnation); node-1 and node-2 are absent
   * (the coordinator waits for nodes holding persistent copies). */
  pmap_node_t back[3];
  memcpy(back, nodes, sizeof back);
  back[0].absent = 1;
  back[1].absent = 1;
  back[2].incarnation = 777;
  step(&m1, back, 3, defs, 1, NULL, 0, &m2);
  const pmap_group_t *k1 = cache(&m1, "kept"), *k2 = cache(&m2, "kept");
  unsigned led = 0, waiting = 0;
  for (uint32_t p = 0; p < P; p++) {
    int st;
    int had = slot_of(&m1, k1, p, "node-3", &st) >= 0;
    const char *prim = primary_id(&m2, k2, p);
    CHECK(prim != NULL);
    if (had) {
      led++;
      CHECK_STR(prim, "node-3");
    } else {
      waiting++;
      CHECK(strcmp(prim, "node-3") != 0); /* waits for its own copies' nodes */
      CHECK_STR(prim, primary_id(&m1, k1, p));
    }
  }
  CHECK(led > 0 && waiting > 0);
  /* node-1 and node-2 back: nothing lost, each partition led by a node
   * that held it; copies of the restarted nodes that are not the one kept
   * in sync are filled (MOVING). */
  pmap_node_t all[3];
  memcpy(all, nodes, sizeof all);
  all[0].incarnation = 501;
  all[1].incarnation = 502;
  all[2].incarnation = 777;
  step(&m2, all, 3, defs, 1, NULL, 0, &m3);
  const pmap_group_t *k3 = cache(&m3, "kept");
  for (uint32_t p = 0; p < P; p++) {
    int st0, st;
    CHECK(pmap_copy_at(k3, p, 0, &st0) >= 0);
    CHECK(st0 == PMAP_OWNING);
    const char *prim = primary_id(&m3, k3, p);
    CHECK(slot_of(&m1, k1, p, prim, &st) >= 0); /* it held the partition */
    for (uint32_t i = 1; i < k3->slots; i++) {
      int idx = pmap_copy_at(k3, p, i, &st);
      if (idx >= 0 && st != PMAP_NONE) CHECK_EQ(st, PMAP_MOVING);
    }
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
}

/* The operator accepts the loss of an absent node: the partitions of a
 * persistent group only it held start again, empty, on live nodes (a
 * restart report); without one they stay lost, and a memory group's lost
 * partitions stay lost either way. */
static void test_persistent_accept_loss(void) {
  pmap_node_t nodes[2];
  mknodes(nodes, 2, 1);
  for (int i = 0; i < 2; i++) nodes[i].disk_id = 0xd00 + (uint64_t)i;
  pmap_cache_def_t defs[2] = {pdef("kept", 64, 0), def("mem", 64, 0, 0)};
  pmap_t m1, m2, m3;
  first_map(nodes, 2, defs, 2, &m1);
  /* node-2 is gone and its loss accepted: it is no longer in the nodes. */
  step(&m1, nodes, 1, defs, 2, NULL, 0, &m2);
  const pmap_group_t *k2 = cache(&m2, "kept"), *mem2 = cache(&m2, "mem");
  unsigned lost = 0;
  for (uint32_t p = 0; p < 64; p++) {
    int st;
    pmap_copy_at(k2, p, 0, &st);
    if (st == PMAP_LOST) lost++;
  }
  CHECK(lost > 0);
  pmap_ready_t r[2] = {{.group = grp(&m2, "kept"), .partition = UINT32_MAX, .restart = 1},
                       {.group = grp(&m2, "mem"), .partition = UINT32_MAX, .restart = 1}};
  step(&m2, nodes, 1, defs, 2, r, 2, &m3);
  const pmap_group_t *k3 = cache(&m3, "kept"), *mem3 = cache(&m3, "mem");
  for (uint32_t p = 0; p < 64; p++) {
    int st, stm2, stm3;
    pmap_copy_at(k3, p, 0, &st);
    CHECK_EQ(st, PMAP_OWNING);
    CHECK_STR(primary_id(&m3, k3, p), "node-1");
    pmap_copy_at(mem2, p, 0, &stm2);
    pmap_copy_at(mem3, p, 0, &stm3);
    CHECK_EQ(stm2 == PMAP_LOST, stm3 == PMAP_LOST);
  }
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&m3);
}

/* pmap_count, as gridctl status and /metrics show a group: a first map
 * in sync, then a node joined (copies MOVING), then one gone. */
static void test_count(void) {
  pmap_node_t nodes[3];
  mknodes(nodes, 3, 1);
  pmap_cache_def_t defs[1] = {def("cache", P, 1, 0)};
  pmap_t m1, m2;
  first_map(nodes, 2, defs, 1, &m1);
  pmap_counts_t c;
  uint32_t prim[3] = {0}, back[3] = {0};
  pmap_count(&m1, cache(&m1, "cache"), &c, prim, back);
  CHECK_EQ(c.owning, 2 * P); /* every copy in sync */
  CHECK_EQ(c.moving + c.handoff + c.lost + c.waiting, 0);
  CHECK_EQ(prim[0] + prim[1], P);
  CHECK_EQ(back[0] + back[1], P);
  CHECK(prim[0] > 0 && prim[1] > 0);
  /* node-3 joins: some copies are being filled on it */
  step(&m1, nodes, 3, defs, 1, NULL, 0, &m2);
  memset(prim, 0, sizeof prim);
  memset(back, 0, sizeof back);
  pmap_count(&m2, cache(&m2, "cache"), &c, prim, back);
  CHECK(c.moving > 0);
  CHECK_EQ(c.lost, 0);
  unsigned moving = 0, in_sync = 0, handoff = 0;
  const pmap_group_t *g = cache(&m2, "cache");
  for (uint32_t p = 0; p < P; p++)
    for (uint32_t i = 0; i < g->slots; i++) {
      int st;
      if (pmap_copy_at(g, p, i, &st) < 0) continue;
      moving += st == PMAP_MOVING;
      in_sync += st == PMAP_OWNING || st == PMAP_HANDOFF;
      handoff += st == PMAP_HANDOFF;
    }
  CHECK_EQ(c.moving, moving);
  CHECK_EQ(c.owning, in_sync);
  CHECK_EQ(c.handoff, handoff);
  CHECK_EQ(prim[2], 0); /* a copy being filled leads nothing yet */
  CHECK(back[2] > 0);   /* ... but is a copy it holds */
  /* No backup, and node-2 gone: its partitions are lost. */
  pmap_cache_def_t solo[1] = {def("solo", 64, 0, 0)};
  pmap_t s1, s2;
  first_map(nodes, 2, solo, 1, &s1);
  step(&s1, nodes, 1, solo, 1, NULL, 0, &s2);
  pmap_count(&s2, cache(&s2, "solo"), &c, NULL, NULL);
  CHECK(c.lost > 0);
  CHECK_EQ(c.lost + c.owning, 64);
  pmap_free(&m1);
  pmap_free(&m2);
  pmap_free(&s1);
  pmap_free(&s2);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  RUN_ONE(test_count);
  RUN_ONE(test_leads_needs_a_place);
  RUN_ONE(test_ideal_order);
  RUN_ONE(test_ideal_order_independent);
  RUN_ONE(test_ideal_zones);
  RUN_ONE(test_ideal_empty_zone_unconstrained);
  RUN_ONE(test_first_map_balance);
  RUN_ONE(test_first_map_epoch0);
  RUN_ONE(test_node_loss_backup_takes_over);
  RUN_ONE(test_node_loss_all_copies);
  RUN_ONE(test_node_loss_no_backup_lost);
  RUN_ONE(test_node_loss_backups2_refill);
  RUN_ONE(test_restart_new_incarnation);
  RUN_ONE(test_absent_node_waited_for);
  RUN_ONE(test_persistent_group_needs_disks);
  RUN_ONE(test_persistent_restart_one);
  RUN_ONE(test_persistent_whole_cluster_restart);
  RUN_ONE(test_persistent_accept_loss);
  RUN_ONE(test_join_minimal_movement);
  RUN_ONE(test_join_partial_ready);
  RUN_ONE(test_join_no_backup);
  RUN_ONE(test_stable);
  RUN_ONE(test_replicated);
  RUN_ONE(test_replicated_with_zones);
  RUN_ONE(test_cache_added_removed);
  RUN_ONE(test_no_nodes_then_nodes);
  RUN_ONE(test_rule_first_owning_takes_over);
  RUN_ONE(test_rule_moving_alone);
  RUN_ONE(test_rule_state_change_is_change);
  RUN_ONE(test_rule_ideal_takes_over);
  RUN_ONE(test_rule_fill_leads_next_step);
  RUN_ONE(test_rule_promotion_refills);
  RUN_ONE(test_rule_handoff);
  RUN_ONE(test_rule_demote);
  RUN_ONE(test_rule_node_named_twice);
  RUN_ONE(test_demote_backups);
  RUN_ONE(test_encode_decode);
  RUN_ONE(test_copy);
  RUN_ONE(test_decode_garbage);
  RUN_ONE(test_decode_bad_shapes);
  RUN_ONE(test_accessors);
  RUN_ONE(test_groups_shared);
  RUN_ONE(test_groups_map_bytes);
  RUN_ONE(test_groups_find_many);
  RUN_ONE(test_group_cache_after);
  RUN_ONE(test_group_dropped);
  RUN_ONE(test_groups_replicated);
  RUN_ONE(test_node_order_kept);
  RUN_ONE(test_encode_groups);
  RUN_ONE(test_decode_bad_groups);
  RUN_ONE(test_store_first_map);
  RUN_ONE(test_store_one_chunk);
  RUN_ONE(test_chunk_reuse);
  RUN_ONE(test_root_decode_refused);
  RUN_ONE(test_chunk_apply_refused);
  RUN_ONE(test_copy_index);
  RUN_ONE(test_root_decode_overlap);
  fprintf(stderr, "test_pmap: all passed\n");
  return 0;
}
