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
  char tls_addr[PMAP_ADDR_MAX]; /* its TLS port's host:port; "": none */
  char http_addr[PMAP_ADDR_MAX];/* its operations port's host:port; "": none */
  char zone[PMAP_ZONE_MAX];
  int leaving;         /* alive, but no longer an ideal owner of anything */
  uint64_t incarnation;/* random per process start; 0: matches any */
  uint64_t disk_id;    /* its data_dir's identity (0: none): only such a
                          node holds persistent groups, and one restarted
                          with the same disk keeps their copies */
  int absent;          /* gone from ZooKeeper within the grace period: no
                          ideal owner; its copies stay only where no live
                          copy is in sync (else the partition would be
                          declared lost while the node may be back a
                          moment later, data intact) */
} pmap_node_t;

/* A placement group: the caches with the same partitions, backups and
 * mode share one assignment (as Ignite's cache groups do), so the map
 * grows with the kinds of caches, not their number. A group's name says
 * what it places: "p1024-b1" (1024 partitions, one backup), "p256-all"
 * (replicated). */
#define PMAP_GROUP_NAME_MAX 32
typedef struct pmap_group {
  char name[PMAP_GROUP_NAME_MAX];
  uint32_t partitions;
  uint32_t backups;
  int replicated;
  int persistent;      /* its caches are on disk: "-d" ends the name */
  uint32_t slots;      /* copies room per partition (K) */
  uint8_t *owners;     /* partitions * slots: node index + 1, 0 = empty */
  uint8_t *states;     /* partitions * slots: PMAP_* */
  size_t first_cache;  /* its caches: m->caches[first_cache ..] */
  size_t ncaches;
} pmap_group_t;

/* A cache the map places, and its group. */
typedef struct pmap_cache_ref {
  char name[65];
  uint32_t group;      /* index into m->groups */
} pmap_cache_ref_t;

typedef struct pmap {
  uint64_t epoch;
  size_t nnodes;
  pmap_node_t nodes[PMAP_NODES_MAX];
  size_t ngroups;
  pmap_group_t *groups;
  char coordinator[PMAP_ID_MAX];
  /* The caches placed, sorted by group then name, and a hash index of
   * them (slots hold index + 1; 0 is empty). */
  size_t ncaches;
  pmap_cache_ref_t *caches;
  uint32_t *index;
  size_t index_mask;
  int32_t caches_version; /* the cache definitions' version it was made
                             from (the cluster's; pmap_next leaves it) */
} pmap_t;

/* What the coordinator knows of a cache when it computes a map. */
typedef struct pmap_cache_def {
  const char *name;
  uint32_t partitions;
  uint32_t backups;
  int replicated;
  int persistent;
} pmap_cache_def_t;

/* A MOVING copy that its primary reports filled, at the epoch it was
 * filled in (for every cache of the group). */
typedef struct pmap_ready {
  const char *group;
  uint32_t partition;
  const char *node_id;
  uint64_t epoch;
  int demote;       /* instead: this OWNING backup missed a write */
  int drained;      /* instead: this primary, handing over, has drained */
  int restart;      /* instead: the operator accepted the loss of a
                       persistent group's partitions (partition UINT32_MAX:
                       each of them): one with no copy left starts again,
                       empty, on its ideal owners (node_id unused) */
} pmap_ready_t;

void pmap_init(pmap_t *m);
void pmap_free(pmap_t *m);
/* Deep copy; GRID_ENOMEM. */
int pmap_copy(pmap_t *dst, const pmap_t *src);

/* The name of the group that places a cache of this kind. */
void pmap_group_name(uint32_t partitions, uint32_t backups, int replicated, char *out,
                     size_t len);
/* The name of the group that places a cache of def's kind, persistence
 * included ("p1024-b1-d"). */
void pmap_group_name_of(const pmap_cache_def_t *def, char *out, size_t len);
/* The bytes a group of this kind takes in the map with nnodes nodes. */
uint64_t pmap_group_bytes(uint32_t partitions, uint32_t backups, int replicated, size_t nnodes);
/* The bytes of every group's owners and states. */
uint64_t pmap_bytes(const pmap_t *m);

/* Names the caches m places: each def whose group m has (others are
 * left out until a map places their group). 0 or GRID_ENOMEM (m keeps its
 * caches as they were). */
int pmap_set_caches(pmap_t *m, const pmap_cache_def_t *defs, size_t ndefs);

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
 * - a group new to the map starts with its ideal owners, all OWNING (its
 *   caches are empty, so there is nothing to fill);
 * - persistent groups (their caches on disk): only nodes with a disk_id
 *   are their ideal owners; a node alive under a new incarnation with the
 *   disk_id it had keeps its copies: MOVING where a copy on a node that
 *   stayed up is in sync, else (the whole cluster restarted) the first in
 *   sync leads and the others are MOVING; a LOST partition (or one whose
 *   last in-sync copy just went) with a restart report starts again,
 *   empty.
 * The rules work on placement groups: the defs are grouped by kind, a
 * group is kept while some def is of its kind, and reports name groups.
 * Nodes of cur keep their places in out (those that stay, in cur's order,
 * then the new ones), so that a change touches only the chunks it must.
 * out must be pmap_init'ed; its epoch is left for the caller. Returns 0 or
 * GRID_ENOMEM; *changed tells whether out differs from cur in owners.
 */
int pmap_next(const pmap_t *cur, const pmap_node_t *alive, size_t nalive,
              const pmap_cache_def_t *defs, size_t ndefs,
              const pmap_ready_t *ready, size_t nready, pmap_t *out,
              int *changed);

/* The group that places cache `name`, or NULL. */
const pmap_group_t *pmap_find_cache(const pmap_t *m, const char *name);
const pmap_group_t *pmap_find_group(const pmap_t *m, const char *name);
/* The first cache of group g (by name) after `after` ("": the first), or
 * NULL: for walking a group's caches while the map changes under the walk. */
const char *pmap_group_cache_after(const pmap_t *m, const pmap_group_t *g, const char *after);
int pmap_node_index(const pmap_t *m, const char *node_id);
/* This node's index in m: its id, and its incarnation unless the map's is
 * 0; -1 when the map does not name this incarnation (a node restarted
 * under the same id holds none of the copies the map gives the old one). */
int pmap_self_index(const pmap_t *m, const char *node_id, uint64_t incarnation);
/* Nodes of m that are not absent. */
size_t pmap_live_nodes(const pmap_t *m);
/* Node index of the primary of p, or -1 (no map, no cache, lost, or
 * handing over). */
int pmap_primary(const pmap_group_t *c, uint32_t p);
/* Whether node self (its index in the map; -1: the map does not name it)
 * leads p. A node the map does not name never does: pmap_primary's -1
 * means "no one" (a partition handing over, lost), not "any node outside
 * the map" (found in test_lease: a node that had just joined, not yet in
 * its first map, served a partition handing over from its empty store). */
static inline int pmap_leads(const pmap_group_t *c, uint32_t p, int self) {
  return self >= 0 && pmap_primary(c, p) == self;
}
/* Node index of the primary of p including one handing over, or -1. */
int pmap_leader(const pmap_group_t *c, uint32_t p);
/* Node index and state of copy i of p (state PMAP_NONE: no such copy). */
int pmap_copy_at(const pmap_group_t *c, uint32_t p, uint32_t i, int *state);

/* A group's copies as gridctl status counts them. */
typedef struct pmap_counts {
  uint32_t owning;   /* copies in sync (a primary handing over included) */
  uint32_t moving;   /* copies being filled */
  uint32_t handoff;  /* partitions whose primary hands over */
  uint32_t lost;     /* partitions with no copy left */
  uint32_t waiting;  /* partitions led only from a node that is gone */
} pmap_counts_t;
/* Counts g's copies into *out; primaries[i] and backups[i] (m->nnodes
 * each; either may be NULL) grow by the copies node i leads and backs. */
void pmap_count(const pmap_t *m, const pmap_group_t *g, pmap_counts_t *out,
                uint32_t *primaries, uint32_t *backups);

/* Protobuf encoding (Pmap message, whole: groups with their owners, and
 * the caches), as PMAP replies carry it. Encode returns a malloc'd buffer. */
int pmap_encode(const pmap_t *m, unsigned char **buf, size_t *len);
int pmap_decode(const unsigned char *buf, size_t len, pmap_t *m);

/*
 * The map in ZooKeeper, split so that no znode grows without bound and a
 * new map writes only what changed. The root (one znode) holds the nodes,
 * the groups without their owners, and the chunks that hold them: each
 * chunk is a range of one group's partitions of at most PMAP_CHUNK_BYTES,
 * in a znode written once under a name no other write uses (group, first
 * partition, epoch, writer). A new map writes its changed chunks first,
 * then the root with a versioned set: that one write is the new epoch, and
 * a reader that follows the root finds every chunk it names. Chunks the
 * root no longer names are deleted after it.
 */
#define PMAP_CHUNK_BYTES (256 * 1024)
#define PMAP_ZNODE_MAX 96

typedef struct pmap_chunk_ref {
  char group[PMAP_GROUP_NAME_MAX];
  uint32_t first, count;  /* partitions */
  uint32_t bytes;         /* the chunk znode's size */
  char znode[PMAP_ZNODE_MAX];
} pmap_chunk_ref_t;

/* The chunks a root names. */
typedef struct pmap_stored {
  size_t n;
  pmap_chunk_ref_t *refs;
} pmap_stored_t;

typedef struct pmap_blob {
  char znode[PMAP_ZNODE_MAX];
  unsigned char *buf;
  size_t len;
} pmap_blob_t;

/* What writing a map takes: the chunks to create, then the root; then the
 * chunks to delete. */
typedef struct pmap_plan {
  unsigned char *root;
  size_t root_len;
  pmap_blob_t *writes;
  size_t nwrites;
  char (*obsolete)[PMAP_ZNODE_MAX];
  size_t nobsolete;
  pmap_stored_t stored;   /* the chunks the new root names */
} pmap_plan_t;

/* Partitions in one chunk of a group with `slots` copies. */
uint32_t pmap_chunk_partitions(uint32_t slots);
/* Plans storing next (at `epoch`, by `writer`, a number unique to the
 * writing process) over cur as stored in cur_refs (both NULL: nothing is
 * stored yet): a chunk whose bytes cur already has is named again, not
 * written. 0 or GRID_ENOMEM. */
int pmap_store_plan(const pmap_t *next, const pmap_t *cur, const pmap_stored_t *cur_refs,
                    uint64_t epoch, uint64_t writer, pmap_plan_t *plan);
void pmap_plan_free(pmap_plan_t *plan);
void pmap_stored_free(pmap_stored_t *st);
/* Decodes a root: m gets the nodes, the coordinator and the groups (their
 * owners all empty until the chunks are applied), refs the chunks. */
int pmap_root_decode(const unsigned char *buf, size_t len, pmap_t *m, pmap_stored_t *refs);
/* Fills ref's range of m from the chunk znode's data (checked against ref
 * and m's nodes). 0 or GRID_EPROTO. */
int pmap_chunk_apply(pmap_t *m, const pmap_chunk_ref_t *ref, const unsigned char *buf,
                     size_t len);
/* Fills ref's range of m from prev, read from prev_refs, when they named
 * the same chunk: 1, else 0 (the chunk must be read). */
int pmap_chunk_reuse(pmap_t *m, const pmap_t *prev, const pmap_stored_t *prev_refs,
                     const pmap_chunk_ref_t *ref);

#endif
