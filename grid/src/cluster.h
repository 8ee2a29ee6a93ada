/*
 * cluster: the node's part in a cluster coordinated through ZooKeeper
 * (shared/DESIGN.md section 4). One thread, the cluster thread, owns the
 * ZooKeeper session and does every ZooKeeper call; it keeps this node's
 * znode (its lease), takes part in the coordinator election, keeps the
 * local caches in step with the cache definitions, hands each new partition
 * map to the event loops, and, while it is coordinator, computes and writes
 * the next map. It works as a reconcile loop: any watch that fires, and a
 * periodic tick, make it read the state again and act on the difference.
 *
 * ZooKeeper layout under /grid/<cluster>:
 *   nodes/<id>        ephemeral, PmapNode (address, zone), written once per
 *                     session: the node's lease
 *   election/n_<seq>  ephemeral sequential, node id: lowest leads
 *   caches/<name>     CacheConfig
 *   leaving/<id>      ephemeral: the node is leaving gracefully
 *   map               Pmap, the map's root: nodes, placement groups, and
 *                     the chunks that hold their owners; the znode's data
 *                     version + 1 is the epoch (pmap.h: the map in ZooKeeper)
 *   map-chunks/<c>    PmapChunk, written once, deleted once no root names it
 *   ready/<id>        ReadyReport: this node's fill, demote, drained reports
 */
#ifndef GRID_CLUSTER_H
#define GRID_CLUSTER_H

#include <stddef.h>

#include "grid.pb-c.h"
#include "store.h"

struct pmap;

typedef struct node node_t;
typedef struct cluster cluster_t;
typedef struct loop loop_t;

/* The node's cluster state, made before its loops start (they look at
 * node->cluster from their first request: until the thread runs and a map
 * is read, they refuse data requests with GRID_ECLUSTER). */
int cluster_new(node_t *n, cluster_t **out);
/* Calls fn on each loop, on the loop's thread, once the loop has a new
 * partition map (lp->pmap, lp->self are set by then). For the layers
 * above (repl, the native front end): registered before cluster_start,
 * at most CLUSTER_MAP_LISTENERS_MAX. */
typedef void (*cluster_map_fn)(loop_t *lp);
void cluster_on_map(cluster_t *c, cluster_map_fn fn);

/* Starts the cluster thread (node->advertise is set by then). */
int cluster_start(cluster_t *c, char *err, size_t err_len);
/* Leaves the cluster (the session ends, so this node's znodes go at once)
 * and stops the thread. The loops may still call in until cluster_free,
 * which comes after they have stopped. */
void cluster_stop(cluster_t *c);
void cluster_free(cluster_t *c);

/* Starts a graceful leave: the node says so in its znode, the coordinator
 * moves every copy off it (handing its primaries over), and once the map
 * gives it none, on_left(arg) runs on the cluster thread (may be NULL). */
void cluster_leave(cluster_t *c, void (*on_left)(void *arg), void *arg);
/* Waits until this node has left (0) or timeout_ms passed (GRID_ETIMEDOUT). */
int cluster_wait_left(cluster_t *c, int64_t timeout_ms);

/* Whether this node may serve data now: it has read the partition map and
 * holds its lease (ZooKeeper answered a ping sent less than half a session
 * timeout ago), checked against the monotonic clock at the call. Callable
 * from any thread; the loops call it before running a request and again
 * before a reply that depends on the node's role leaves, so a process that
 * was paused never answers from a role it may have lost meanwhile. */
int cluster_serving(cluster_t *c);

/* Creates or drops a cache cluster-wide, from a loop. done(lp, arg,
 * status, detail) runs later on loop `loop_index` (once this node's map
 * has the change, for a create); detail: words for a refusal, or NULL.
 * Returns an error (done never runs) or 0. */
typedef void (*cluster_done_fn)(loop_t *lp, void *arg, int status, const char *detail);
int cluster_cache_create(cluster_t *c, const store_cache_cfg_t *cfg,
                         int loop_index, cluster_done_fn done, void *arg);
/* The operator accepts that node_id, gone, is not coming back: its
 * partitions are no longer waited for (persistent ones only it held start
 * again, empty). As cluster_cache_create's done. */
int cluster_accept_loss(cluster_t *c, const char *node_id, int loop_index,
                        cluster_done_fn done, void *arg);
int cluster_cache_drop(cluster_t *c, const char *name, int loop_index,
                       cluster_done_fn done, void *arg);
/* USER's add, del, passwd or roles, cluster-wide: the users znode changed
 * (and this node's users at once). As cluster_cache_create's done. */
int cluster_user_change(cluster_t *c, const Grid__Request *rq, int loop_index,
                        cluster_done_fn done, void *arg);

/* From a loop, for partition p of placement group `group` (every cache of
 * the group): the primary has filled a MOVING copy (node_id) in map epoch
 * `epoch`; or (demote) an OWNING backup missed a write and must be filled
 * again. The cluster thread writes them to ZooKeeper for the coordinator. */
void cluster_report_ready(cluster_t *c, const char *group, uint32_t p,
                          const char *node_id, uint64_t epoch);
void cluster_report_demote(cluster_t *c, const char *group, uint32_t p,
                           const char *node_id);

/* This node, handing partition p of group over in map `epoch`, has no
 * write of it in flight any more, in any cache of the group. */
void cluster_report_drained(cluster_t *c, const char *group, uint32_t p, uint64_t epoch);

/* Withdraws a fill report: the copy missed a record since. */
void cluster_report_withdraw(cluster_t *c, const char *group, uint32_t p,
                             const char *node_id);

/* Fencing, for a backup: whether a record of partition p sent by from_node
 * under map `epoch` may be applied. Judged against the newest map this
 * node has (not a loop's, which may lag): a record of an older map is
 * refused unless its sender still leads the partition. */
int cluster_accepts(cluster_t *c, const char *cache, uint32_t p, uint64_t epoch,
                    const char *from_node);

/* Whether a connection from ip that said hello as node_id (role PEER) is
 * a member of this cluster: in this node's newest map or alive in
 * ZooKeeper, and, when its advertised host is an IP address, connecting
 * from it. 0 (addr_out, when given, gets the address it advertises), or
 * GRID_EHANDSHAKE with words in why. */
int cluster_peer_check(cluster_t *c, const char *node_id, const char *ip, char *addr_out,
                       size_t addr_len, char *why, size_t why_len);
/* The epoch of the newest map this node has read (0: none). */
uint64_t cluster_newest_epoch(cluster_t *c);

/* A copy of the map this node acts on (epoch 0: none yet), for readers
 * off the loops (/metrics); the caller pmap_free()s it. 0 or GRID_ENOMEM. */
int cluster_map_copy(cluster_t *c, struct pmap *out);
/* Fills st (strings point into memory the caller frees with
 * cluster_status_free). */
void cluster_status(cluster_t *c, Grid__ClusterStatus *st);
void cluster_status_free(Grid__ClusterStatus *st);

#endif
