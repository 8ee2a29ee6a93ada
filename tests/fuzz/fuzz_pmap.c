/*
 * fuzz_pmap: the partition map decoder and every rule over a decoded map.
 *
 * Input: the bytes of a Pmap message, as a node reads one from ZooKeeper or
 * a client from a PMAP reply. When pmap_decode accepts it, the map must
 * hold up to everything the node and the client do with one:
 * - pmap_primary / pmap_leader / pmap_copy_at for every partition and slot
 *   (and one past each end), part_of with the cache's partition count;
 * - pmap_copy, and pmap_encode then pmap_decode giving the same map back;
 * - pmap_next with the map as current, its nodes alive, its caches defined
 *   (the epoch's bit i makes cache i replicated) and fill, demote and
 *   drained reports derived from its states; the next map must be sound
 *   and decode again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "part.h"
#include "pmap.h"

#define FUZZ_READY_MAX 1024

static void check_same(const pmap_t *a, const pmap_t *b, const char *what) {
  if (a->epoch != b->epoch || a->nnodes != b->nnodes || a->ncaches != b->ncaches ||
      strcmp(a->coordinator, b->coordinator) != 0)
    fuzz_die("%s: epoch, nodes, caches or coordinator differ", what);
  for (size_t i = 0; i < a->nnodes; i++)
    if (strcmp(a->nodes[i].id, b->nodes[i].id) || strcmp(a->nodes[i].addr, b->nodes[i].addr) ||
        strcmp(a->nodes[i].zone, b->nodes[i].zone) ||
        (a->nodes[i].leaving != 0) != (b->nodes[i].leaving != 0))
      fuzz_die("%s: node %zu differs", what, i);
  for (size_t i = 0; i < a->ncaches; i++) {
    const pmap_cache_t *x = &a->caches[i], *y = &b->caches[i];
    size_t n = (size_t)x->partitions * x->slots;
    if (strcmp(x->name, y->name) || x->partitions != y->partitions || x->slots != y->slots ||
        (n && (memcmp(x->owners, y->owners, n) || memcmp(x->states, y->states, n))))
      fuzz_die("%s: cache %zu (\"%s\") differs", what, i, x->name);
  }
}

/* What readers of a map rely on: owners name nodes of the map, states are
 * PMAP_* values, the accessors stay in bounds and agree with each other. */
static void check_sound(const pmap_t *m, const char *what) {
  for (size_t c = 0; c < m->ncaches; c++) {
    const pmap_cache_t *pc = &m->caches[c];
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
          fuzz_die("%s: cache %zu partition %u copy %u: node %d state %d", what, c, p, i, idx, st);
      }
      int prim = pmap_primary(pc, p), lead = pmap_leader(pc, p);
      if (prim >= (int)m->nnodes || lead >= (int)m->nnodes || (prim >= 0 && prim != lead))
        fuzz_die("%s: cache %zu partition %u: primary %d leader %d", what, c, p, prim, lead);
    }
    /* As a client and a node place a key. */
    static const char *const keys[] = {"", "k", "{pump-7}.temperature", "{}x", "{a"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
      uint32_t p = part_of(keys[k], strlen(keys[k]), pc->partitions);
      if (p >= pc->partitions) fuzz_die("%s: part_of gave %u of %u", what, p, pc->partitions);
      (void)pmap_primary(pc, p);
    }
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pmap_t m;
  if (pmap_decode(data, size, &m) != 0) return 0;
  check_sound(&m, "decoded map");
  pmap_t copy;
  if (pmap_copy(&copy, &m) != 0) fuzz_die("pmap_copy failed");
  check_same(&m, &copy, "pmap_copy");
  pmap_free(&copy);
  check_roundtrip(&m, "encode/decode");

  /* The coordinator's next step from this map. */
  pmap_cache_def_t *defs = calloc(m.ncaches + 1, sizeof *defs);
  pmap_ready_t *ready = calloc(FUZZ_READY_MAX, sizeof *ready);
  if (!defs || !ready) fuzz_die("out of memory");
  size_t nready = 0;
  for (size_t c = 0; c < m.ncaches; c++) {
    const pmap_cache_t *pc = &m.caches[c];
    defs[c].name = pc->name;
    defs[c].partitions = pc->partitions;
    defs[c].backups = pc->slots - 1 > 3 ? 3 : pc->slots - 1;
    defs[c].replicated = c < 64 && ((m.epoch >> c) & 1);
    for (uint32_t p = 0; p < pc->partitions; p++) {
      for (uint32_t i = 0; i < pc->slots && nready < FUZZ_READY_MAX; i++) {
        int st;
        int idx = pmap_copy_at(pc, p, i, &st);
        if (idx < 0) continue;
        pmap_ready_t r = {pc->name, p, m.nodes[idx].id, m.epoch, 0, 0};
        if (st == PMAP_MOVING && (p + i) % 2 == 0) ready[nready++] = r;
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
  int rc = pmap_next(&m, m.nodes, m.nnodes, defs, m.ncaches, ready, nready, &next, &changed);
  if (rc == 0) {
    next.epoch = m.epoch + 1;
    check_sound(&next, "pmap_next");
    check_roundtrip(&next, "pmap_next encode/decode");
    /* And the step after it, which must settle nothing worse. */
    pmap_t after;
    pmap_init(&after);
    if (pmap_next(&next, next.nodes, next.nnodes, defs, m.ncaches, NULL, 0, &after, &changed) == 0)
      check_sound(&after, "pmap_next twice");
    pmap_free(&after);
  }
  pmap_free(&next);
  free(defs);
  free(ready);
  pmap_free(&m);
  return 0;
}
