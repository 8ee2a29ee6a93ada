/*
 * pmap: the partition map, as pure logic (no I/O): who owns which partition
 * of which cache, in what state, at what epoch; how the coordinator derives
 * the next map from the current one and the live nodes; and its encoding.
 *
 * Owners of partition p are the nodes ranked highest by XXH3_64(node id,
 * seed = p) (rendezvous hashing): a join or a leave moves only the
 * partitions it must. Where nodes name zones, no two copies of a partition
 * share a zone (a partition then has fewer copies rather than two in one
 * zone); a replicated cache has a copy on every node whatever the zones.
 * A leaving node is no partition's ideal owner: its copies move away (and
 * its primaries are handed over) while it still serves.
 */
#ifndef GRID_PMAP_H
#define GRID_PMAP_H

#include <stddef.h>
#include <stdint.h>

#define PMAP_NODES_MAX 255  /* node indexes are one byte in the map */
#define PMAP_PARTITIONS_MAX 65536 /* partitions of one cache (partitions_max's bound) */
#define PMAP_ID_MAX 64
#define PMAP_ADDR_MAX 128
#define PMAP_ZONE_MAX 64

enum { PMAP_NONE = 0, PMAP_OWNING = 1, PMAP_MOVING = 2, PMAP_LOST = 3,
       PMAP_HANDOFF = 4 /* copy 0 only: leads, takes no new request */ };

typedef struct pmap_node {
  char id[PMAP_ID_MAX];
  char addr[PMAP_ADDR_MAX];
  char zone[PMAP_ZONE_MAX];
  int leaving;         /* alive, but no longer an ideal owner of anything */
  uint64_t incarnation;/* random per process start; 0: matches any */
  int absent;          /* gone from ZooKeeper within the grace period: no
                          ideal owner; its copies stay only where no live
                          copy is in sync (else the partition would be
                          declared lost while the node may be back a
                          moment later, data intact) */
} pmap_node_t;

typedef struct pmap_cache {
  char name[65];
  uint32_t partitions;
  uint32_t backups;
  int replicated;
  uint32_t slots;      /* copies room per partition (K) */
  uint8_t *owners;     /* partitions * slots: node index + 1, 0 = empty */
  uint8_t *states;     /* partitions * slots: PMAP_* */
} pmap_cache_t;

typedef struct pmap {
  uint64_t epoch;
  size_t nnodes;
  pmap_node_t nodes[PMAP_NODES_MAX];
  size_t ncaches;
  pmap_cache_t *caches;
  char coordinator[PMAP_ID_MAX];
} pmap_t;

/* What the coordinator knows of a cache when it computes a map. */
typedef struct pmap_cache_def {
  const char *name;
  uint32_t partitions;
  uint32_t backups;
  int replicated;
} pmap_cache_def_t;

/* A MOVING copy that its primary reports filled, at the epoch it was
 * filled in. */
typedef struct pmap_ready {
  const char *cache;
  uint32_t partition;
  const char *node_id;
  uint64_t epoch;
  int demote;       /* instead: this OWNING backup missed a write */
  int drained;      /* instead: this primary, handing over, has drained */
} pmap_ready_t;

void pmap_init(pmap_t *m);
void pmap_free(pmap_t *m);
/* Deep copy; GRID_ENOMEM. */
int pmap_copy(pmap_t *dst, const pmap_t *src);

/* The best `want` nodes for partition p, zones respected: out[] receives
 * node indexes, best first; returns how many (fewer than want when there
 * are too few nodes or zones). */
size_t pmap_ideal(const pmap_node_t *nodes, size_t n, uint32_t p, size_t want,
                  uint32_t *out);

/*
 * The next map from cur (NULL or epoch 0: the first map), the live nodes,
 * the caches defined and the fill reports. Rules, per partition:
 * - copies on nodes no longer alive are dropped (a node alive under a new
 *   incarnation was restarted: its old copies are gone too); when no
 *   OWNING copy is left of a partition that had one, it is LOST (and stays
 *   so);
 * - nodes marked absent (gone from ZooKeeper within the caller's grace
 *   period) are nobody's ideal owner, and their copies count only for a
 *   partition with no OWNING copy on a live node: such a partition keeps
 *   its copies as they are (waiting for the node, not LOST); any other
 *   drops them;
 * - an OWNING backup reported (demote) at the current epoch as having
 *   missed a write becomes MOVING;
 * - the primary stays while alive and OWNING, else the first OWNING copy
 *   left takes over; when the primary changes, every other copy becomes
 *   MOVING, since it may hold writes the new primary never saw (the new
 *   primary fills it again);
 * - ideal owners without a copy get one, MOVING; a MOVING copy reported
 *   filled at the current epoch becomes OWNING, but may not lead in that
 *   same step (until this map its primary did not wait for its
 *   acknowledgements);
 * - once every ideal owner is OWNING (and was so in cur), the ideal primary
 *   leads and copies outside the ideal set are dropped. When that changes
 *   the primary, it happens in two steps: first the primary goes HANDOFF
 *   (it takes no new request and finishes those in flight), then, once it
 *   reports itself drained at that epoch, the new primary leads (should an
 *   ideal owner fall out of sync meanwhile, the primary serves again);
 * - a cache new to the map starts with its ideal owners, all OWNING (it is
 *   empty, so there is nothing to fill).
 * out must be pmap_init'ed; its epoch is left for the caller. Returns 0 or
 * GRID_ENOMEM; *changed tells whether out differs from cur in owners.
 */
int pmap_next(const pmap_t *cur, const pmap_node_t *alive, size_t nalive,
              const pmap_cache_def_t *defs, size_t ndefs,
              const pmap_ready_t *ready, size_t nready, pmap_t *out,
              int *changed);

const pmap_cache_t *pmap_find_cache(const pmap_t *m, const char *name);
int pmap_node_index(const pmap_t *m, const char *node_id);
/* This node's index in m: its id, and its incarnation unless the map's is
 * 0; -1 when the map does not name this incarnation (a node restarted
 * under the same id holds none of the copies the map gives the old one). */
int pmap_self_index(const pmap_t *m, const char *node_id, uint64_t incarnation);
/* Nodes of m that are not absent. */
size_t pmap_live_nodes(const pmap_t *m);
/* Node index of the primary of p, or -1 (no map, no cache, lost, or
 * handing over). */
int pmap_primary(const pmap_cache_t *c, uint32_t p);
/* Node index of the primary of p including one handing over, or -1. */
int pmap_leader(const pmap_cache_t *c, uint32_t p);
/* Node index and state of copy i of p (state PMAP_NONE: no such copy). */
int pmap_copy_at(const pmap_cache_t *c, uint32_t p, uint32_t i, int *state);

/* Protobuf encoding (Pmap message). Encode returns a malloc'd buffer. */
int pmap_encode(const pmap_t *m, unsigned char **buf, size_t *len);
int pmap_decode(const unsigned char *buf, size_t len, pmap_t *m);

#endif
