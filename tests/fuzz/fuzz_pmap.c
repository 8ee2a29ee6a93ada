/*
 * fuzz_pmap: the partition map decoders and every rule over a decoded map.
 *
 * Input: the bytes of a Pmap message, as a client reads one from a PMAP
 * reply (the wire form: placement groups with their owners, and the caches
 * they place). When pmap_decode accepts it, the map must hold up to
 * everything the node and the client do with one:
 * - pmap_primary / pmap_leader / pmap_copy_at for every partition and slot
 *   (and one past each end) of every group, part_of with the group's
 *   partition count, pmap_find_cache and pmap_group_cache_after for every
 *   cache;
 * - pmap_copy, and pmap_encode then pmap_decode giving the same map back;
 * - storing it as ZooKeeper holds it (pmap_store_plan, then
 *   pmap_root_decode and pmap_chunk_apply of what was written) giving the
 *   same nodes and groups back;
 * - pmap_next with the map as current, its nodes alive, its caches defined
 *   (a group without a cache is given one named after it; bit i of the
 *   epoch flips group i between replicated and not) and fill, demote and
 *   drained reports derived from its states; the next map must be sound,
 *   decode again, and be stored over the first writing only the chunks it
 *   changed: a reader that holds the first reads the others from it.
 *
 * The same bytes are read as the map stored in ZooKeeper too, framed:
 *
 *   +----------+------+----------+---------+----------+---------+---
 *   | len (4)  | root | len (4)  | chunk 0 | len (4)  | chunk 1 | ...
 *   +----------+------+----------+---------+----------+---------+---
 *
 * each len little-endian, a len past the end taking what is left; chunk i
 * is applied to the root's i-th chunk reference. When pmap_root_decode
 * accepts the root, its chunks cover every partition of every group exactly
 * once, a chunk is applied whole or refused leaving the map as it was, the
 * map is sound, and a map taking every chunk from it (pmap_chunk_reuse)
 * has the same owners.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "grid_types.h"
#include "part.h"
#include "pmap.h"

#define FUZZ_READY_MAX 1024

/* The same nodes, coordinator and epoch. */
static void check_same_nodes(const pmap_t *a, const pmap_t *b, const char *what) {
  if (a->epoch != b->epoch || a->nnodes != b->nnodes || strcmp(a->coordinator, b->coordinator) != 0)
    fuzz_die("%s: epoch, nodes or coordinator differ", what);
  for (size_t i = 0; i < a->nnodes; i++)
    if (strcmp(a->nodes[i].id, b->nodes[i].id) || strcmp(a->nodes[i].addr, b->nodes[i].addr) ||
        strcmp(a->nodes[i].zone, b->nodes[i].zone) ||
        (a->nodes[i].leaving != 0) != (b->nodes[i].leaving != 0) ||
        a->nodes[i].incarnation != b->nodes[i].incarnation ||
        (a->nodes[i].absent != 0) != (b->nodes[i].absent != 0))
      fuzz_die("%s: node %zu differs", what, i);
}

/* The same groups, owners and states byte for byte. */
static void check_same_groups(const pmap_t *a, const pmap_t *b, const char *what) {
  if (a->ngroups != b->ngroups) fuzz_die("%s: %zu groups, then %zu", what, a->ngroups, b->ngroups);
  for (size_t i = 0; i < a->ngroups; i++) {
    const pmap_group_t *x = &a->groups[i], *y = &b->groups[i];
    size_t n = (size_t)x->partitions * x->slots;
    if (strcmp(x->name, y->name) || x->partitions != y->partitions || x->slots != y->slots ||
        x->backups != y->backups || (x->replicated != 0) != (y->replicated != 0) ||
        (n && (memcmp(x->owners, y->owners, n) || memcmp(x->states, y->states, n))))
      fuzz_die("%s: group %zu (\"%s\") differs", what, i, x->name);
  }
}

static void check_same(const pmap_t *a, const pmap_t *b, const char *what) {
  check_same_nodes(a, b, what);
  check_same_groups(a, b, what);
  if (a->ncaches != b->ncaches) fuzz_die("%s: %zu caches, then %zu", what, a->ncaches, b->ncaches);
  for (size_t i = 0; i < a->ncaches; i++)
    if (strcmp(a->caches[i].name, b->caches[i].name) ||
        strcmp(a->groups[a->caches[i].group].name, b->groups[b->caches[i].group].name))
      fuzz_die("%s: cache %zu (\"%s\") differs", what, i, a->caches[i].name);
}

/* What readers of a map rely on: owners name nodes of the map, states are
 * PMAP_* values, the accessors stay in bounds and agree with each other,
 * every cache is found in its group and walked in it. */
static void check_sound(const pmap_t *m, const char *what) {
  for (size_t c = 0; c < m->ngroups; c++) {
    const pmap_group_t *pc = &m->groups[c];
    for (uint32_t p = 0; p <= pc->partitions; p++) {
      for (uint32_t i = 0; i <= pc->slots; i++) {
        int st;
        int idx = pmap_copy_at(pc, p, i, &st);
        if (p == pc->partitions || i == pc->slots) {
          if (idx != -1 || st != PMAP_NONE)
            fuzz_die("%s: pmap_copy_at out of range gave %d/%d", what, idx, st);
          continue;
        }
        if (idx < -1 || idx >= (int)m->nnodes || st < PMAP_NONE || st > PMAP_HANDOFF)
          fuzz_die("%s: group %zu partition %u copy %u: node %d state %d", what, c, p, i, idx, st);
      }
      int prim = pmap_primary(pc, p), lead = pmap_leader(pc, p);
      if (prim >= (int)m->nnodes || lead >= (int)m->nnodes || (prim >= 0 && prim != lead))
        fuzz_die("%s: group %zu partition %u: primary %d leader %d", what, c, p, prim, lead);
    }
    /* As a client and a node place a key. */
    static const char *const keys[] = {"", "k", "{pump-7}.temperature", "{}x", "{a"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
      uint32_t p = part_of(keys[k], strlen(keys[k]), pc->partitions);
      if (p >= pc->partitions) fuzz_die("%s: part_of gave %u of %u", what, p, pc->partitions);
      (void)pmap_primary(pc, p);
    }
    if (pmap_find_group(m, pc->name) != pc) fuzz_die("%s: group %zu not found by name", what, c);
    /* Its caches, walked by name: each found in it, as many as it says. */
    size_t walked = 0;
    for (const char *at = pmap_group_cache_after(m, pc, ""); at;
         at = pmap_group_cache_after(m, pc, at)) {
      if (walked++ > pc->ncaches) fuzz_die("%s: group %zu walks past its caches", what, c);
      const pmap_group_t *g = pmap_find_cache(m, at);
      /* A cache named twice (in two groups) is found in one of them. */
      if (!g) fuzz_die("%s: cache \"%s\" of group %zu not found", what, at, c);
    }
    if (walked > pc->ncaches) fuzz_die("%s: group %zu walked %zu caches", what, c, walked);
  }
  for (size_t i = 0; i < m->ncaches; i++) {
    if (m->caches[i].group >= m->ngroups) fuzz_die("%s: cache %zu in no group", what, i);
    if (!pmap_find_cache(m, m->caches[i].name)) fuzz_die("%s: cache %zu not found", what, i);
  }
  for (size_t i = 0; i < m->nnodes; i++) {
    int idx = pmap_node_index(m, m->nodes[i].id);
    if (idx < 0 || idx > (int)i) fuzz_die("%s: pmap_node_index of node %zu gave %d", what, i, idx);
  }
}

/* Encodes m and decodes it again: it must come back the same. */
static void check_roundtrip(const pmap_t *m, const char *what) {
  unsigned char *buf = NULL;
  size_t len = 0;
  if (pmap_encode(m, &buf, &len) != 0) fuzz_die("%s: pmap_encode failed", what);
  pmap_t again;
  int rc = pmap_decode(buf, len, &again);
  free(buf);
  if (rc != 0) fuzz_die("%s: a map pmap_encode wrote does not decode (%d)", what, rc);
  check_same(m, &again, what);
  pmap_free(&again);
}

/* The chunks refs names cover every partition of every group of m exactly
 * once. */
static void check_covered(const pmap_t *m, const pmap_stored_t *refs, const char *what) {
  for (size_t g = 0; g < m->ngroups; g++) {
    const pmap_group_t *pg = &m->groups[g];
    uint8_t *seen = calloc(pg->partitions, 1);
    if (!seen) fuzz_die("out of memory");
    for (size_t i = 0; i < refs->n; i++) {
      const pmap_chunk_ref_t *r = &refs->refs[i];
      if (!pmap_find_group(m, r->group)) fuzz_die("%s: chunk %zu of no group", what, i);
      if (strcmp(r->group, pg->name) != 0) continue;
      if (r->count == 0 || r->first >= pg->partitions || r->count > pg->partitions - r->first)
        fuzz_die("%s: chunk %zu out of its group", what, i);
      for (uint32_t p = r->first; p < r->first + r->count; p++)
        if (seen[p]++) fuzz_die("%s: partition %u of group %zu in two chunks", what, p, g);
    }
    for (uint32_t p = 0; p < pg->partitions; p++)
      if (!seen[p]) fuzz_die("%s: partition %u of group %zu in no chunk", what, p, g);
    free(seen);
  }
}

/* The chunk plan wrote under znode, or NULL. */
static const pmap_blob_t *plan_write(const pmap_plan_t *plan, const char *znode) {
  for (size_t i = 0; i < plan->nwrites; i++)
    if (strcmp(plan->writes[i].znode, znode) == 0) return &plan->writes[i];
  return NULL;
}

/* Reads the map plan stores, as a node does: the root, then each chunk
 * from prev (read from prev_refs) where pmap_chunk_reuse may, else from
 * plan's writes, which must hold it. */
static void read_plan(const pmap_plan_t *plan, const pmap_t *prev, const pmap_stored_t *prev_refs,
                      pmap_t *out, pmap_stored_t *refs, const char *what) {
  int rc = pmap_root_decode(plan->root, plan->root_len, out, refs);
  if (rc != 0) fuzz_die("%s: a root pmap_store_plan wrote does not decode (%d)", what, rc);
  check_covered(out, refs, what);
  for (size_t i = 0; i < refs->n; i++) {
    const pmap_chunk_ref_t *r = &refs->refs[i];
    if (pmap_chunk_reuse(out, prev, prev_refs, r)) continue;
    const pmap_blob_t *w = plan_write(plan, r->znode);
    if (!w) fuzz_die("%s: chunk \"%s\" neither written nor read before", what, r->znode);
    if (w->len != r->bytes) fuzz_die("%s: chunk \"%s\" size differs", what, r->znode);
    if ((rc = pmap_chunk_apply(out, r, w->buf, w->len)) != 0)
      fuzz_die("%s: a chunk pmap_store_plan wrote is refused (%d)", what, rc);
  }
}

/* Stores m from nothing and reads it back: the same nodes and groups. The
 * plan is kept in plan, the map read in back (with refs). */
static void check_stored(const pmap_t *m, pmap_plan_t *plan, pmap_t *back, pmap_stored_t *refs,
                         const char *what) {
  if (pmap_store_plan(m, NULL, NULL, m->epoch, 1, plan) != 0)
    fuzz_die("%s: pmap_store_plan failed", what);
  if (plan->nobsolete != 0 || plan->nwrites != plan->stored.n)
    fuzz_die("%s: a first plan writes %zu of %zu chunks", what, plan->nwrites, plan->stored.n);
  read_plan(plan, NULL, NULL, back, refs, what);
  check_same_nodes(m, back, what);
  check_same_groups(m, back, what);
}

/* next stored over cur (stored by cur_plan, read back as cur_back with
 * cur_refs): the chunks next names again are cur's, those it no longer
 * names are obsolete, and a reader holding cur_back reads next back. */
static void check_stored_over(const pmap_t *next, const pmap_t *cur, const pmap_plan_t *cur_plan,
                              const pmap_t *cur_back, const pmap_stored_t *cur_refs) {
  const char *what = "pmap_next stored over the map";
  pmap_plan_t plan;
  if (pmap_store_plan(next, cur, &cur_plan->stored, next->epoch, 2, &plan) != 0)
    fuzz_die("%s: pmap_store_plan failed", what);
  size_t kept = 0;
  for (size_t i = 0; i < plan.stored.n; i++) {
    int old = 0;
    for (size_t k = 0; k < cur_refs->n && !old; k++)
      old = strcmp(plan.stored.refs[i].znode, cur_refs->refs[k].znode) == 0;
    int written = plan_write(&plan, plan.stored.refs[i].znode) != NULL;
    if (old == written) fuzz_die("%s: chunk %zu both or neither kept and written", what, i);
    kept += old;
  }
  if (kept + plan.nwrites != plan.stored.n || plan.nobsolete + kept != cur_refs->n)
    fuzz_die("%s: %zu kept, %zu written, %zu obsolete of %zu and %zu", what, kept, plan.nwrites,
             plan.nobsolete, cur_refs->n, plan.stored.n);
  pmap_t back;
  pmap_stored_t refs;
  read_plan(&plan, cur_back, cur_refs, &back, &refs, what);
  check_same_nodes(next, &back, what);
  check_same_groups(next, &back, what);
  pmap_free(&back);
  pmap_stored_free(&refs);
  pmap_plan_free(&plan);
}

/* The input read as the stored form (the frames of the header comment). */
static void check_stored_input(const uint8_t *data, size_t size) {
  const uint8_t *frame[FUZZ_READY_MAX];
  size_t flen[FUZZ_READY_MAX], nframes = 0;
  while (size >= 4 && nframes < FUZZ_READY_MAX) {
    size_t len = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 |
                 (size_t)data[3] << 24;
    data += 4;
    size -= 4;
    if (len > size) len = size;
    frame[nframes] = data;
    flen[nframes++] = len;
    data += len;
    size -= len;
  }
  if (nframes == 0) return;
  pmap_t m;
  pmap_stored_t refs;
  if (pmap_root_decode(frame[0], flen[0], &m, &refs) != 0) return;
  check_covered(&m, &refs, "decoded root");
  for (size_t i = 0; i < refs.n && i + 1 < nframes; i++) {
    const pmap_chunk_ref_t *r = &refs.refs[i];
    const pmap_group_t *g = pmap_find_group(&m, r->group);
    size_t at = (size_t)r->first * g->slots, n = (size_t)r->count * g->slots;
    uint8_t *was = malloc(2 * n + 1);
    if (!was) fuzz_die("out of memory");
    memcpy(was, g->owners + at, n);
    memcpy(was + n, g->states + at, n);
    int rc = pmap_chunk_apply(&m, r, frame[i + 1], flen[i + 1]);
    if (rc != 0 && rc != GRID_EPROTO) fuzz_die("pmap_chunk_apply gave %d", rc);
    if (rc != 0 && (memcmp(was, g->owners + at, n) || memcmp(was + n, g->states + at, n)))
      fuzz_die("chunk %zu refused, but its range changed", i);
    free(was);
  }
  check_sound(&m, "decoded root and chunks");
  /* Every chunk taken from the map read: the same owners. */
  pmap_t again;
  pmap_stored_t refs2;
  if (pmap_root_decode(frame[0], flen[0], &again, &refs2) != 0)
    fuzz_die("a root decoded once is refused again");
  for (size_t i = 0; i < refs2.n; i++)
    if (!pmap_chunk_reuse(&again, &m, &refs, &refs2.refs[i]))
      fuzz_die("chunk %zu of the same root not taken from the map read", i);
  check_same_groups(&m, &again, "pmap_chunk_reuse");
  pmap_free(&again);
  pmap_stored_free(&refs2);
  pmap_free(&m);
  pmap_stored_free(&refs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_stored_input(data, size);
  pmap_t m;
  if (pmap_decode(data, size, &m) != 0) return 0;
  check_sound(&m, "decoded map");
  pmap_t copy;
  if (pmap_copy(&copy, &m) != 0) fuzz_die("pmap_copy failed");
  check_same(&m, &copy, "pmap_copy");
  check_sound(&copy, "pmap_copy");
  pmap_free(&copy);
  check_roundtrip(&m, "encode/decode");
  pmap_plan_t plan;
  pmap_t stored;
  pmap_stored_t refs;
  check_stored(&m, &plan, &stored, &refs, "stored map");

  /* The coordinator's next step from this map: its caches, and a cache for
   * each group that has none. */
  pmap_cache_def_t *defs = calloc(m.ncaches + m.ngroups + 1, sizeof *defs);
  pmap_ready_t *ready = calloc(FUZZ_READY_MAX, sizeof *ready);
  if (!defs || !ready) fuzz_die("out of memory");
  size_t ndefs = 0, nready = 0;
  for (size_t c = 0; c < m.ngroups; c++) {
    const pmap_group_t *pc = &m.groups[c];
    pmap_cache_def_t shape = {pc->name, pc->partitions, pc->backups,
                              (pc->replicated != 0) != (c < 64 && ((m.epoch >> c) & 1)),
                              pc->persistent};
    if (pc->ncaches == 0) defs[ndefs++] = shape;
    for (size_t k = 0; k < pc->ncaches; k++) {
      defs[ndefs] = shape;
      defs[ndefs++].name = m.caches[pc->first_cache + k].name;
    }
    for (uint32_t p = 0; p < pc->partitions; p++) {
      for (uint32_t i = 0; i < pc->slots && nready < FUZZ_READY_MAX; i++) {
        int st;
        int idx = pmap_copy_at(pc, p, i, &st);
        if (idx < 0) continue;
        pmap_ready_t r = {pc->name, p, m.nodes[idx].id, m.epoch, 0, 0, 0};
        if (st == PMAP_MOVING && (p + i) % 2 == 0) ready[nready++] = r;
        else if (st == PMAP_LOST && pc->persistent && p % 2 == 0) {
          r.restart = 1;
          ready[nready++] = r;
        }
        else if (st == PMAP_OWNING && i > 0 && (p + i) % 3 == 0) {
          r.demote = 1;
          ready[nready++] = r;
        } else if (st == PMAP_HANDOFF && i == 0 && p % 2 == 0) {
          r.drained = 1;
          ready[nready++] = r;
        }
      }
    }
  }
  pmap_t next;
  pmap_init(&next);
  int changed = 0;
  int rc = pmap_next(&m, m.nodes, m.nnodes, defs, ndefs, ready, nready, &next, &changed);
  if (rc == 0) {
    next.epoch = m.epoch + 1;
    check_sound(&next, "pmap_next");
    check_roundtrip(&next, "pmap_next encode/decode");
    check_stored_over(&next, &m, &plan, &stored, &refs);
    /* And the step after it, which must settle nothing worse. */
    pmap_t after;
    pmap_init(&after);
    if (pmap_next(&next, next.nodes, next.nnodes, defs, ndefs, NULL, 0, &after, &changed) == 0)
      check_sound(&after, "pmap_next twice");
    pmap_free(&after);
  }
  pmap_free(&next);
  pmap_plan_free(&plan);
  pmap_free(&stored);
  pmap_stored_free(&refs);
  free(defs);
  free(ready);
  pmap_free(&m);
  return 0;
}
