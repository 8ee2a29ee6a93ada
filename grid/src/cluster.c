#include "cluster.h"
#include "auth.h"
#include "disk.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "grid_types.h"
#include "log.h"
#include "loop.h"
#include "ops.h"
#include "node.h"
#include "pmap.h"
#include "zk.h"

#define CLUSTER_TICK_MS 50          /* reconcile at least this often */
#define CLUSTER_RESYNC_MS 1000      /* full re-read even without a watch */
#define CLUSTER_JOBS_MAX 1024       /* cache create/drop requests queued */
#define CLUSTER_PATH_MAX 512
#define CLUSTER_REPORTS_MAX 65536   /* fill / demote reports kept */
#define CLUSTER_MAP_LISTENERS_MAX 4 /* cluster_on_map registrations */
#define CLUSTER_REFUSED_RETRY_MS 5000 /* a node refused at join asks again */
#define CLUSTER_PROBE_MS 1000         /* a new member's TLS certificate, checked */
/* The map's znodes. Named anew when the map's stored form changed (it was
 * one "pmap" znode): a cluster restarted on this version starts a map of
 * its own instead of failing to read an older one. */
#define CLUSTER_MAP_ROOT "map"
#define CLUSTER_MAP_CHUNKS "map-chunks"

/* One loop's mailbox for maps: the newest map not taken yet, and the task
 * that hands it over, posted at most once at a time. A map that comes
 * while the task waits replaces the one waiting: a loop only ever needs
 * the newest. */
typedef struct cluster_box {
  loop_task_t task;
  struct cluster *c;
  pmap_t *pending;            /* under c->lock */
  int queued;                 /* under c->lock: task is in the inbox */
  pmap_t *current;            /* the loop's map (lp->pmap), loop only */
} cluster_box_t;

/* Nodes whose loss the operator accepted (gridctl accept-loss): a znode
 * each, until a map no longer names the node. */
#define CLUSTER_ACCEPT_LOSS "accept-loss"

typedef struct cluster_job {
  struct cluster_job *next;
  loop_task_t task;            /* the answer's handoff to loop_index */
  int create;                 /* 1: create, 0: drop, 2: accept the loss of
                                 node cfg.name */
  store_cache_cfg_t cfg;
  int loop_index;
  cluster_done_fn done;
  void *arg;
  int status;                 /* once done: the result */
  char detail[320];           /* words for a refusal, or empty */
  int64_t deadline_ms;        /* a create waits for the map until then */
  int caches_version;         /* ... made from this cversion of caches/ or
                                 a later one (so every node that has read
                                 the map knows the cache) */
  unsigned char *user_rq;     /* create 3: the USER request, packed */
  size_t user_rq_len;
} cluster_job_t;

/* The users (auth.h): one znode holds them all, as a packed UserList. */
#define CLUSTER_USERS "users"
#define CLUSTER_USER_TRIES 16 /* a change that races another is made again */

struct cluster {
  node_t *node;
  pthread_t thread;
  int started;                /* the thread runs (cluster_start) */
  pthread_mutex_t lock;       /* everything below that the loops read */
  pthread_cond_t cond;
  int stop;
  int dirty;                  /* a watch fired: read everything again */
  cluster_job_t *jobs;        /* waiting for the cluster thread */
  size_t njobs;
  cluster_job_t *waiting;     /* creates waiting for the map */
  Grid__ReadyItem *reports;   /* this node's reports (cache/node strdup'd) */
  size_t nreports;
  int reports_dirty;          /* to be written to ZooKeeper */
  /* cluster thread only */
  zk_t *zk;
  int registered;
  int64_t registered_ms;      /* when this session registered */
  int64_t last_connected_ms;
  int64_t last_resync_ms;
  int users_version;          /* of the users znode last read; -2: never */
  int refused_logged;         /* ZooKeeper refused the credentials: said */
  char root[CLUSTER_PATH_MAX];
  char election_path[CLUSTER_PATH_MAX];
  /* Coordinator: nodes of the map gone from ZooKeeper, kept in the next
   * maps as absent for lost_grace_ms, so that a partition whose only
   * copies they hold waits for them (a node whose session expired while
   * its process lived, paused or cut off, is back with its data intact)
   * instead of being declared lost at once. */
  struct cluster_departed {
    pmap_node_t node;         /* as the map had it, absent = 1 */
    int64_t since_ms;
    int warned;               /* its grace is over, and the log said so */
  } departed[PMAP_NODES_MAX];
  size_t ndeparted;
  /* Coordinator with tls_replication: the members whose certificate was
   * checked (their TLS port answered with one the cluster's CA signed,
   * naming their host), or refused (checked again after a while). Only
   * trusted members get copies. */
  struct cluster_trust {
    char id[PMAP_ID_MAX];
    uint64_t incarnation;
    int trusted;
    int64_t checked_ms;
  } trust[PMAP_NODES_MAX];
  size_t ntrust;
  /* Coordinator: the nodes whose loss the operator accepted (read from
   * ZooKeeper each pass): no longer waited for. */
  char (*accepted)[PMAP_ID_MAX];
  size_t naccepted;
  pthread_rwlock_t map_lock;  /* map: written here, read by loops fencing */
  pmap_t map;                 /* the map as last read (epoch 0: none) */
  int map_version;            /* its root znode's version, -1: no znode */
  pmap_stored_t stored;       /* the chunks map was read from */
  size_t map_root_bytes;      /* the root znode's size */
  int coordinating;           /* this node coordinated on its last pass */
  uint64_t sweep_at_epoch;    /* once the map reaches this epoch, delete the
                                 chunks no map names (0: nothing pending) */
  uint64_t map_writes;        /* attempts to write a map: each names its
                                 chunks apart */
  /* The cache definitions as last read, sorted by name, and the cversion
   * of caches/ then (cluster thread only). */
  store_cache_cfg_t *defs;
  size_t ndefs;
  int defs_cversion;
  int defs_read;
  /* The live nodes' znodes as last read (cluster thread only). */
  pmap_node_t known[PMAP_NODES_MAX];
  size_t nknown;
  int known_cversion;
  int known_read;
  int caches_stale;           /* the map does not name them as defined yet */
  size_t creating;            /* caches defined here since defs were read */
  int64_t unplaced_logged_ms; /* a cache no map can place was last logged */
  int64_t register_after_ms;  /* refused at join: not asked again before */
  /* The lease (shared/DESIGN.md section 4): the loops serve data only
   * before lease_until_ms (monotonic), which moves on each time ZooKeeper
   * answers a ping: to the ping's send time plus half the session timeout.
   * ZooKeeper expires the session no sooner than a session timeout after
   * it last heard from this node, and others take its partitions only
   * after that; so a node that was paused, or cut off, stops serving
   * before anyone else may serve its partitions, whatever its threads
   * were doing meanwhile. */
  _Atomic int64_t lease_until_ms;
  _Atomic int ping_inflight;
  _Atomic int64_t lease_ms;      /* cluster_lease_ms, for the ping's thread */
  _Atomic uint64_t session_gen;  /* a ping of an older session renews nothing */
  int64_t ping_sent_ms;          /* cluster thread */
  /* shared with the loops (under lock) */
  atomic_int serving;
  int zk_ok;
  size_t nalive;
  pmap_node_t alive[PMAP_NODES_MAX];
  char coordinator[PMAP_ID_MAX];
  int leaving;                /* asked to leave */
  int leaving_written;        /* ... and said in ZooKeeper (leaving/<id>) */
  int left;                   /* the map gives this node no copy any more */
  void (*on_left)(void *arg); /* told once left */
  void *on_left_arg;
  size_t my_copies;           /* copies the current map gives this node */
  cluster_box_t *boxes;       /* one per loop */
  int nboxes;
  int publish_failed;         /* a copy for a loop failed: publish again */
  cluster_map_fn on_map[CLUSTER_MAP_LISTENERS_MAX]; /* set before start */
  int n_on_map;
};

static void cluster_wake(void *arg) {
  cluster_t *c = arg;
  pthread_mutex_lock(&c->lock);
  c->dirty = 1;
  pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

/* Read everything again at the next tick (from the cluster thread). */
static void cluster_mark_dirty(cluster_t *c) {
  pthread_mutex_lock(&c->lock);
  c->dirty = 1;
  pthread_mutex_unlock(&c->lock);
}

/* root/dir or root/dir/name. */
static void cluster_path(cluster_t *c, char *out, const char *dir, const char *name) {
  if (name)
    snprintf(out, CLUSTER_PATH_MAX, "%.200s/%.32s/%.200s", c->root, dir, name);
  else
    snprintf(out, CLUSTER_PATH_MAX, "%.200s/%.32s", c->root, dir);
}

/* ---- this node's lease and the election -------------------------------- */

/* This node's znode data: its address, zone, and whether it is leaving. */
static int cluster_node_data(cluster_t *c, unsigned char *buf, size_t cap, size_t *len) {
  node_t *n = c->node;
  Grid__PmapNode me = GRID__PMAP_NODE__INIT;
  me.id = n->node_id;
  me.addr = n->advertise;
  me.tls_addr = n->advertise_tls;
  me.http_addr = n->advertise_http;
  me.zone = n->cfg.zone;
  me.leaving = c->leaving_written || c->leaving; /* read on the cluster thread */
  me.incarnation = n->incarnation;
  me.disk_id = n->disk ? disk_id(n->disk) : 0;
  *len = grid__pmap_node__get_packed_size(&me);
  if (*len > cap) return GRID_EINVAL;
  grid__pmap_node__pack(&me, buf);
  return 0;
}

static int cluster_read_nodes(cluster_t *c, pmap_node_t *alive, size_t *nalive);

/* Whether a listing's znodes must all be read again: never read yet, or
 * its cversion (children made or deleted, ever) moved by more than the
 * names made and dropped since the last read explain: a name was dropped
 * and made again between two reads, and its znode may say something new.
 * Otherwise only the new names need reading. */
static int cluster_read_whole(int read_before, int cversion_before, int cversion,
                              size_t added, size_t removed) {
  return !read_before || (int64_t)cversion - cversion_before != (int64_t)(added + removed);
}

static int cluster_register(cluster_t *c) {
  node_t *n = c->node;
  char path[CLUSTER_PATH_MAX];
  const char *dirs[] = {"nodes",   "election", "caches",     "ready", CLUSTER_MAP_CHUNKS,
                        "leaving", CLUSTER_ACCEPT_LOSS};
  /* /grid is every cluster's parent: open, so that clusters with other
   * credentials live beside this one; /grid/<cluster> and all below are
   * this cluster's (zk_auth). */
  int rc0 = zk_create(c->zk, "/grid", NULL, 0, ZK_PERSISTENT | ZK_OPEN, NULL, 0);
  if (rc0 != 0 && rc0 != GRID_EEXIST) return rc0;
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    cluster_path(c, path, dirs[i], NULL);
    int rc = zk_ensure_path(c->zk, path);
    if (rc != 0) return rc;
  }
  /* The default cache exists in every cluster, as on a single node. */
  cluster_path(c, path, "caches", "default");
  Grid__CacheConfig cc = GRID__CACHE_CONFIG__INIT;
  cc.name = "default";
  cc.partitions = (uint32_t)n->cfg.partitions_default;
  unsigned char buf[256];
  size_t len = grid__cache_config__pack(&cc, buf);
  int rc = zk_create(c->zk, path, buf, len, ZK_PERSISTENT, NULL, 0);
  if (rc != 0 && rc != GRID_EEXIST) return rc;

  /* A map names at most PMAP_NODES_MAX nodes (a node is one byte in it):
   * past that a node is refused here, in words, rather than left out of
   * every map. */
  char **names;
  size_t count;
  cluster_path(c, path, "nodes", NULL);
  rc = zk_children(c->zk, path, 0, &names, &count, NULL);
  if (rc != 0) return rc;
  int known = 0;
  for (size_t i = 0; i < count; i++) known |= strcmp(names[i], n->node_id) == 0;
  zk_children_free(names, count);
  if (!known && count >= PMAP_NODES_MAX) {
    LOG_E("cluster", "\"cannot join: the cluster has as many nodes as a partition map holds\" "
          "nodes=%zu max=%d node=%s", count, PMAP_NODES_MAX, n->node_id);
    return GRID_ELIMIT;
  }
  /* The members before this node is one of them: the map that gives this
   * node copies comes right after its znode, and their primaries link to
   * it to fill them, which it accepts only from members it knows. */
  pmap_node_t *alive = malloc(sizeof(pmap_node_t) * PMAP_NODES_MAX);
  size_t nalive = 0;
  rc = alive ? cluster_read_nodes(c, alive, &nalive) : GRID_ENOMEM;
  if (rc == 0) {
    pthread_mutex_lock(&c->lock);
    memcpy(c->alive, alive, nalive * sizeof *alive);
    c->nalive = nalive;
    pthread_mutex_unlock(&c->lock);
  }
  free(alive);
  if (rc != 0) return rc;
  unsigned char mb[512];
  size_t ml;
  rc = cluster_node_data(c, mb, sizeof mb, &ml);
  if (rc != 0) return rc;
  cluster_path(c, path, "nodes", n->node_id);
  rc = zk_create(c->zk, path, mb, ml, ZK_EPHEMERAL, NULL, 0);
  if (rc == GRID_EEXIST) {
    /* A znode of this id from an earlier session of this node (restarted
     * before that session expired): take it over. */
    LOG_W("cluster", "\"replacing a znode left by an earlier session of this node id\" node=%s",
          n->node_id);
    zk_delete(c->zk, path, -1);
    rc = zk_create(c->zk, path, mb, ml, ZK_EPHEMERAL, NULL, 0);
  }
  if (rc != 0) return rc;
  cluster_path(c, path, "election", "n_");
  rc = zk_create(c->zk, path, n->node_id, strlen(n->node_id),
                 ZK_EPHEMERAL | ZK_SEQUENTIAL, c->election_path,
                 sizeof c->election_path);
  if (rc != 0) return rc;
  LOG_I("cluster", "\"joined\" cluster=%s node=%s addr=%s zone=\"%s\"",
        n->cfg.cluster, n->node_id, n->advertise, n->cfg.zone);
  return 0;
}

/* Reads the live nodes (watching for changes). A node's znode is written
 * once per session (address, zone, incarnation), so its data is read once:
 * nodes/ is listed with its cversion, and only names it does not explain
 * are read (all, when a name was deleted and made again between two
 * reads: a restart). Leaving is said apart, by an ephemeral leaving/<id>,
 * so that it needs no read of every node either. With a hundred nodes
 * this is two listings a pass instead of a hundred reads. */
static int cluster_cached_node(const cluster_t *c, const char *id) {
  for (size_t i = 0; i < c->nknown; i++)
    if (strcmp(c->known[i].id, id) == 0) return (int)i;
  return -1;
}

static int cluster_read_nodes(cluster_t *c, pmap_node_t *alive, size_t *nalive) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "leaving", NULL);
  char **leaving;
  size_t nleaving;
  int rc = zk_children(c->zk, path, 1, &leaving, &nleaving, NULL);
  if (rc != 0) return rc;
  cluster_path(c, path, "nodes", NULL);
  char **names;
  size_t n;
  int cversion;
  rc = zk_children(c->zk, path, 1, &names, &n, &cversion);
  if (rc != 0) {
    zk_children_free(leaving, nleaving);
    return rc;
  }
  size_t added = 0, removed = 0;
  for (size_t i = 0; i < n; i++) added += cluster_cached_node(c, names[i]) < 0;
  for (size_t j = 0; j < c->nknown; j++) {
    int there = 0;
    for (size_t i = 0; i < n && !there; i++) there = strcmp(names[i], c->known[j].id) == 0;
    removed += !there;
  }
  int all = cluster_read_whole(c->known_read, c->known_cversion, cversion, added, removed);
  size_t k = 0;
  for (size_t i = 0; i < n && k < PMAP_NODES_MAX; i++) {
    int at = all ? -1 : cluster_cached_node(c, names[i]);
    if (at >= 0) {
      alive[k++] = c->known[at];
      continue;
    }
    char p2[CLUSTER_PATH_MAX];
    cluster_path(c, p2, "nodes", names[i]);
    unsigned char *data;
    size_t len;
    int grc = zk_get(c->zk, p2, 0, &data, &len, NULL);
    if (grc == GRID_ENOTFOUND) continue; /* just left: cversion moves again */
    if (grc != 0) {
      /* ZooKeeper went away mid-read: a node not read is not a node gone. */
      zk_children_free(names, n);
      zk_children_free(leaving, nleaving);
      return grc;
    }
    Grid__PmapNode *pn = grid__pmap_node__unpack(NULL, len, data);
    free(data);
    if (!pn) continue;
    memset(&alive[k], 0, sizeof alive[k]);
    snprintf(alive[k].id, PMAP_ID_MAX, "%s", pn->id);
    snprintf(alive[k].addr, PMAP_ADDR_MAX, "%s", pn->addr);
    snprintf(alive[k].tls_addr, PMAP_ADDR_MAX, "%s", pn->tls_addr);
    snprintf(alive[k].http_addr, PMAP_ADDR_MAX, "%s", pn->http_addr);
    snprintf(alive[k].zone, PMAP_ZONE_MAX, "%s", pn->zone);
    alive[k].leaving = pn->leaving;
    alive[k].incarnation = pn->incarnation;
    alive[k].disk_id = pn->disk_id;
    alive[k].absent = 0;
    k++;
    grid__pmap_node__free_unpacked(pn, NULL);
  }
  zk_children_free(names, n);
  memcpy(c->known, alive, k * sizeof *alive);
  c->nknown = k;
  c->known_cversion = cversion;
  c->known_read = 1;
  /* Leaving: said in the znode's data when it was made, or since. */
  for (size_t i = 0; i < k; i++)
    for (size_t j = 0; j < nleaving && !alive[i].leaving; j++)
      alive[i].leaving = strcmp(leaving[j], alive[i].id) == 0;
  zk_children_free(leaving, nleaving);
  *nalive = k;
  return 0;
}

/* The coordinator: the node of the lowest election sequence. */
static int cluster_read_coordinator(cluster_t *c, char *coord, size_t len) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "election", NULL);
  char **names;
  size_t n;
  int rc = zk_children(c->zk, path, 1, &names, &n, NULL);
  if (rc != 0) return rc;
  const char *lowest = NULL;
  for (size_t i = 0; i < n; i++)
    if (!lowest || strcmp(names[i], lowest) < 0) lowest = names[i];
  coord[0] = '\0';
  if (lowest) {
    char p2[CLUSTER_PATH_MAX];
    cluster_path(c, p2, "election", lowest);
    unsigned char *data;
    size_t dl;
    if (zk_get(c->zk, p2, 0, &data, &dl, NULL) == 0) {
      snprintf(coord, len, "%.*s", (int)dl, (const char *)data);
      free(data);
    }
  }
  zk_children_free(names, n);
  return 0;
}

/* ---- caches ---------------------------------------------------------------- */


/* Reads the cache definitions (watching), brings the local store in step,
 * and keeps them in c->defs for the coordinator and the map.
 *
 * With thousands of caches, reading every definition on every pass would
 * cost a round trip each: a definition is read once, and only when the
 * children of caches/ changed (their cversion moved). When the names
 * alone explain the change (as many made and dropped as cversion counts),
 * only the new names are read; otherwise (a cache dropped and made again
 * under its name between two reads) every definition is read again.
 * *changed tells whether the definitions differ from before. */
static int cluster_def_cmp(const void *a, const void *b) {
  return strcmp(((const store_cache_cfg_t *)a)->name, ((const store_cache_cfg_t *)b)->name);
}

static int cluster_name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static const store_cache_cfg_t *cluster_def_find(const store_cache_cfg_t *defs, size_t n,
                                                 const char *name) {
  store_cache_cfg_t key;
  snprintf(key.name, sizeof key.name, "%s", name);
  return n ? bsearch(&key, defs, n, sizeof *defs, cluster_def_cmp) : NULL;
}

static int cluster_def_same(const store_cache_cfg_t *a, const store_cache_cfg_t *b) {
  return a->partitions == b->partitions && a->backups == b->backups && a->mode == b->mode &&
         a->sync == b->sync && a->default_ttl_ms == b->default_ttl_ms &&
         a->read_from_backup == b->read_from_backup && a->persistence == b->persistence &&
         a->fsync == b->fsync && a->fsync_every_ms == b->fsync_every_ms && a->id == b->id;
}

/* One definition: 0, GRID_ENOTFOUND (dropped just now), or an error. */
static int cluster_read_def(cluster_t *c, const char *name, store_cache_cfg_t *out) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "caches", name);
  unsigned char *data;
  size_t len;
  int rc = zk_get(c->zk, path, 0, &data, &len, NULL);
  if (rc != 0) return rc;
  Grid__CacheConfig *m = grid__cache_config__unpack(NULL, len, data);
  free(data);
  if (!m) {
    LOG_E("cluster", "\"a cache definition in ZooKeeper does not decode: nothing changes\" cache=%s",
          name);
    return GRID_EPROTO;
  }
  ops_cfg_from_msg(m, name, out);
  grid__cache_config__free_unpacked(m, NULL);
  return 0;
}

/* The local store: create what is defined, drop what is not, and make
 * again a cache defined anew with another shape. */
/* Makes and drops this node's caches as defined; 1 when it made one (the
 * loops then take the map again: what they keep per partition, such as
 * whether it is led here, covers the new cache). */
static int cluster_sync_store(cluster_t *c) {
  node_t *n = c->node;
  size_t max = (size_t)n->cfg.caches_max;
  store_cache_cfg_t *local = calloc(max + 1, sizeof *local);
  if (!local) return 0;
  int made = 0;
  size_t nlocal = store_cache_list(n->store, local, max);
  if (nlocal > max) nlocal = max;
  for (size_t j = 0; j < nlocal; j++) {
    const store_cache_cfg_t *d = cluster_def_find(c->defs, c->ndefs, local[j].name);
    if (d && cluster_def_same(d, &local[j])) continue;
    if (store_cache_drop(n->store, local[j].name) == 0)
      LOG_I("cluster", "\"cache dropped\" cache=%s", local[j].name);
  }
  qsort(local, nlocal, sizeof *local, cluster_def_cmp);
  for (size_t i = 0; i < c->ndefs; i++) {
    const store_cache_cfg_t *l = cluster_def_find(local, nlocal, c->defs[i].name);
    if (l && cluster_def_same(l, &c->defs[i])) continue;
    int rc = store_cache_create(n->store, &c->defs[i]);
    made |= rc == 0;
    if (rc == 0)
      LOG_I("cluster", "\"cache created\" cache=%s partitions=%u backups=%u", c->defs[i].name,
            c->defs[i].partitions, c->defs[i].backups);
    else if (rc != GRID_ECACHEEXISTS)
      LOG_E("cluster", "\"cannot hold a cache the cluster defines\" cache=%s error=%s",
            c->defs[i].name, grid_err_name(rc));
  }
  free(local);
  return made;
}

static int cluster_read_caches(cluster_t *c, int *changed) {
  *changed = 0;
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "caches", NULL);
  char **names;
  size_t count;
  int cversion;
  int rc = zk_children(c->zk, path, 1, &names, &count, &cversion);
  if (rc != 0) return rc;
  if (c->defs_read && cversion == c->defs_cversion) {
    zk_children_free(names, count);
    c->creating = 0;
    return 0;
  }
  qsort(names, count, sizeof *names, cluster_name_cmp);
  size_t added = 0, removed = 0;
  for (size_t i = 0; i < count; i++) added += !cluster_def_find(c->defs, c->ndefs, names[i]);
  for (size_t i = 0; i < c->ndefs; i++)
    removed += !bsearch(&(const char *){c->defs[i].name}, names, count, sizeof *names,
                        cluster_name_cmp);
  int all = cluster_read_whole(c->defs_read, c->defs_cversion, cversion, added, removed);
  store_cache_cfg_t *list = calloc(count + 1, sizeof *list);
  size_t k = 0;
  for (size_t i = 0; list && i < count; i++) {
    const store_cache_cfg_t *known = all ? NULL : cluster_def_find(c->defs, c->ndefs, names[i]);
    if (known) {
      list[k++] = *known;
      continue;
    }
    rc = cluster_read_def(c, names[i], &list[k]);
    if (rc == GRID_ENOTFOUND) continue; /* dropped just now: cversion moves again */
    if (rc != 0) {
      /* ZooKeeper went away mid-read. Only ZooKeeper saying a cache is
       * gone drops it here: a definition not read is not a cache dropped
       * (all of a node's data went once, when ZooKeeper was killed
       * between the list and the reads). */
      zk_children_free(names, count);
      free(list);
      return rc;
    }
    k++;
  }
  zk_children_free(names, count);
  if (!list) return GRID_ENOMEM;
  free(c->defs);
  c->defs = list; /* sorted, as names were */
  c->ndefs = k;
  c->defs_cversion = cversion;
  c->defs_read = 1;
  c->creating = 0;
  *changed = 1;
  return 0;
}

static void cluster_job_finish(cluster_t *c, cluster_job_t *j);

/* Whether a new placement group of this shape fits beside `groups` groups
 * whose owners take `bytes` (map_groups_max, map_bytes_max): 1, or 0 with
 * words for why not in why. The create's check and the coordinator's. */
static int cluster_group_fits(const cluster_t *c, size_t groups, uint64_t bytes,
                              const pmap_cache_def_t *def, char *why, size_t len) {
  const config_t *k = &c->node->cfg;
  uint32_t partitions = def->partitions, backups = def->backups;
  int replicated = def->replicated;
  char g[PMAP_GROUP_NAME_MAX];
  pmap_group_name_of(def, g, sizeof g);
  if ((int64_t)groups >= k->map_groups_max) {
    snprintf(why, len, "a cache of this shape needs a new placement group (%s); the map has "
             "%zu groups and map_groups_max is %lld: use the partitions, backups and mode of an "
             "existing cache, or raise map_groups_max on every node", g, groups,
             (long long)k->map_groups_max);
    return 0;
  }
  uint64_t add = pmap_group_bytes(partitions, backups, replicated, c->nalive);
  if (bytes + add <= (uint64_t)k->map_bytes_max) return 1;
  snprintf(why, len, "a cache of this shape needs a new placement group (%s, %llu bytes of "
           "map); the map holds %llu and map_bytes_max is %lld: use the partitions, backups "
           "and mode of an existing cache, or raise map_bytes_max on every node", g,
           (unsigned long long)add, (unsigned long long)bytes, (long long)k->map_bytes_max);
  return 0;
}

/* Whether the cluster could not hold a new cache of cfg's shape: more
 * caches than caches_max, or a placement group the map has no room for.
 * Refused at once, in words, rather than a cache defined that no map
 * places. */
static int cluster_refuse_create(cluster_t *c, const store_cache_cfg_t *cfg, char *why,
                                 size_t len) {
  const config_t *k = &c->node->cfg;
  if (cluster_def_find(c->defs, c->ndefs, cfg->name)) return 0; /* it exists: said so later */
  if ((int64_t)(c->ndefs + c->creating) >= k->caches_max) {
    snprintf(why, len, "the cluster has %zu caches, caches_max is %lld: drop a cache or raise "
             "caches_max on every node", c->ndefs + c->creating, (long long)k->caches_max);
    return 1;
  }
  pmap_cache_def_t def = {.name = cfg->name, .partitions = cfg->partitions,
                          .backups = cfg->backups,
                          .replicated = cfg->mode == GRID_MODE_REPLICATED,
                          .persistent = cfg->persistence != 0};
  char g[PMAP_GROUP_NAME_MAX];
  pmap_group_name_of(&def, g, sizeof g);
  if (c->map_version < 0 || pmap_find_group(&c->map, g)) return 0; /* no new group */
  return !cluster_group_fits(c, c->map.ngroups, pmap_bytes(&c->map), &def, why, len);
}

static int cluster_is_alive(const cluster_t *c, const char *id);

/* accept-loss: node j->cfg.name is gone and its partitions are not to be
 * waited for. Written for the coordinator to act on. */
static void cluster_run_accept_loss(cluster_t *c, cluster_job_t *j) {
  const char *id = j->cfg.name;
  int idx = c->map_version >= 0 ? pmap_node_index(&c->map, id) : -1;
  if (idx < 0) {
    j->status = GRID_EINVAL;
    snprintf(j->detail, sizeof j->detail, "the partition map names no node \"%s\"", id);
  } else if (cluster_is_alive(c, id)) {
    j->status = GRID_EINVAL;
    snprintf(j->detail, sizeof j->detail,
             "node \"%s\" is alive: accept-loss is for a node that is gone and not coming "
             "back", id);
  } else {
    char path[CLUSTER_PATH_MAX];
    cluster_path(c, path, CLUSTER_ACCEPT_LOSS, id);
    int rc = zk_create(c->zk, path, NULL, 0, ZK_PERSISTENT, NULL, 0);
    j->status = rc == GRID_EEXIST ? 0 : rc;
    if (j->status == 0) {
      LOG_W("cluster", "\"the operator accepts the loss of a node: partitions only it held "
            "start again empty\" node=%s", id);
      cluster_mark_dirty(c);
    }
  }
  cluster_job_finish(c, j);
}

/* The users as ZooKeeper has them: *data malloc'd (NULL, 0 when there are
 * none yet: *version -1). */
static int cluster_get_users(cluster_t *c, int watch, unsigned char **data, size_t *len,
                             int *version) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_USERS, NULL);
  int rc = zk_get(c->zk, path, watch, data, len, version);
  if (rc == GRID_ENOTFOUND) {
    *data = NULL;
    *len = 0;
    *version = -1;
    return 0;
  }
  return rc;
}

/* Reads the users again when their znode changed, for this node's logins. */
static int cluster_read_users(cluster_t *c) {
  unsigned char *data;
  size_t len;
  int version;
  int rc = cluster_get_users(c, 1, &data, &len, &version);
  if (rc != 0) return rc;
  if (version != c->users_version) {
    rc = auth_set_stored(c->node->auth, data, len);
    if (rc == 0) c->users_version = version;
    else LOG_E("cluster", "\"the users znode does not decode: the users stay as they were\"");
    rc = 0;
  }
  free(data);
  return rc;
}

/* USER: read the users, change them, write them back if nobody else did
 * meanwhile (else again). */
static void cluster_run_user(cluster_t *c, cluster_job_t *j) {
  Grid__Request *rq = grid__request__unpack(NULL, j->user_rq_len, j->user_rq);
  j->status = rq ? GRID_EBUSY : GRID_ENOMEM;
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_USERS, NULL);
  for (int t = 0; rq && t < CLUSTER_USER_TRIES && j->status == GRID_EBUSY; t++) {
    unsigned char *cur = NULL, *next = NULL;
    size_t cur_len = 0, next_len = 0;
    int version, nv = 0;
    int rc = cluster_get_users(c, 0, &cur, &cur_len, &version);
    if (rc == 0) rc = auth_change(cur, cur_len, rq, &next, &next_len, j->detail, sizeof j->detail);
    if (rc == 0) {
      rc = version < 0 ? zk_create(c->zk, path, next, next_len, ZK_PERSISTENT, NULL, 0)
                       : zk_set(c->zk, path, next, next_len, version, &nv);
      if (rc == GRID_EEXIST || rc == GRID_EVERSION) rc = GRID_EBUSY; /* raced: again */
    }
    if (rc == 0) {
      auth_set_stored(c->node->auth, next, next_len);
      c->users_version = version < 0 ? 0 : nv;
      LOG_I("cluster", "\"users changed\" action=%d user=\"%.*s\"", (int)rq->user_action,
            (int)(rq->key.len < 64 ? rq->key.len : 64), (const char *)rq->key.data);
    }
    j->status = rc;
    free(cur);
    free(next);
  }
  if (rq) grid__request__free_unpacked(rq, NULL);
  if (j->status == GRID_EBUSY)
    snprintf(j->detail, sizeof j->detail, "the users kept changing under this change: try again");
  cluster_job_finish(c, j);
}

static void cluster_run_job(cluster_t *c, cluster_job_t *j) {
  char path[CLUSTER_PATH_MAX];
  if (j->create == 2) {
    cluster_run_accept_loss(c, j);
    return;
  }
  if (j->create == 3) {
    cluster_run_user(c, j);
    return;
  }
  cluster_path(c, path, "caches", j->cfg.name);
  if (!j->create) {
    int rc = zk_delete(c->zk, path, -1);
    j->status = rc == GRID_ENOTFOUND ? GRID_ENOCACHE : rc;
    if (rc == 0) store_cache_drop(c->node->store, j->cfg.name);
    cluster_job_finish(c, j);
    return;
  }
  if (!j->cfg.partitions) j->cfg.partitions = (uint32_t)c->node->cfg.partitions_default;
  if (!j->cfg.id) j->cfg.id = ops_cache_id();
  if (cluster_refuse_create(c, &j->cfg, j->detail, sizeof j->detail)) {
    j->status = GRID_ELIMIT;
    cluster_job_finish(c, j);
    return;
  }
  Grid__CacheConfig m;
  ops_cfg_to_msg(&j->cfg, &m);
  unsigned char buf[512];
  size_t len = grid__cache_config__pack(&m, buf);
  int rc = zk_create(c->zk, path, buf, len, ZK_PERSISTENT, NULL, 0);
  if (rc != 0) {
    j->status = rc == GRID_EEXIST ? GRID_ECACHEEXISTS : rc;
    cluster_job_finish(c, j);
    return;
  }
  store_cache_create(c->node->store, &j->cfg);
  c->creating++; /* counted until the definitions are read again */
  j->status = 0;
  cluster_path(c, path, "caches", NULL);
  if (zk_cversion(c->zk, path, &j->caches_version) != 0)
    j->caches_version = -1; /* taken from the definitions once they name it */
  /* Answered once this node's map places the cache's partitions. */
  j->next = c->waiting;
  c->waiting = j;
}

/* ---- fill reports ----------------------------------------------------------- */

enum { CLUSTER_FILLED = 0, CLUSTER_DEMOTE = 1, CLUSTER_DRAINED = 2 };

static void cluster_report(cluster_t *c, const char *group, uint32_t p,
                           const char *node_id, uint64_t epoch, int kind) {
  if (!c) return;
  pthread_mutex_lock(&c->lock);
  /* The same report not written yet (a demote said again) is one report. */
  for (size_t i = 0; i < c->nreports; i++) {
    const Grid__ReadyItem *it = &c->reports[i];
    if (it->kind == (uint32_t)kind && it->partition == p &&
        it->epoch == (kind == CLUSTER_DEMOTE ? 0 : epoch) && strcmp(it->cache, group) == 0 &&
        strcmp(it->node, node_id) == 0) {
      pthread_mutex_unlock(&c->lock);
      return;
    }
  }
  if (c->nreports < CLUSTER_REPORTS_MAX) {
    Grid__ReadyItem *r = realloc(c->reports, (c->nreports + 1) * sizeof *r);
    if (r) {
      c->reports = r;
      Grid__ReadyItem *it = &r[c->nreports];
      grid__ready_item__init(it);
      it->cache = strdup(group);
      it->node = strdup(node_id);
      it->partition = p;
      /* A demote names no epoch of its own: the current one, when written. */
      it->epoch = kind == CLUSTER_DEMOTE ? 0 : epoch;
      it->kind = (uint32_t)kind;
      if (it->cache && it->node) c->nreports++;
      else {
        free(it->cache);
        free(it->node);
      }
      c->reports_dirty = 1;
      c->dirty = 1;
      pthread_cond_signal(&c->cond);
    }
  }
  pthread_mutex_unlock(&c->lock);
}

void cluster_report_ready(cluster_t *c, const char *group, uint32_t p,
                          const char *node_id, uint64_t epoch) {
  cluster_report(c, group, p, node_id, epoch, CLUSTER_FILLED);
}

void cluster_report_demote(cluster_t *c, const char *group, uint32_t p,
                           const char *node_id) {
  cluster_report(c, group, p, node_id, 0, CLUSTER_DEMOTE);
}

void cluster_report_drained(cluster_t *c, const char *group, uint32_t p, uint64_t epoch) {
  cluster_report(c, group, p, c->node->node_id, epoch, CLUSTER_DRAINED);
}

/* Writes this node's reports for the current epoch (demotes are stamped
 * with it here); older ones are dropped: the map has moved past them. */
static void cluster_write_reports(cluster_t *c) {
  uint64_t epoch = c->map.epoch;
  pthread_mutex_lock(&c->lock);
  if (!c->reports_dirty) {
    pthread_mutex_unlock(&c->lock);
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < c->nreports; i++) {
    Grid__ReadyItem *it = &c->reports[i];
    if (it->epoch == 0) it->epoch = epoch; /* a demote: this epoch's */
    if (it->epoch < epoch) {
      free(it->cache);
      free(it->node);
      continue;
    }
    c->reports[k++] = *it;
  }
  c->nreports = k;
  Grid__ReadyReport rr = GRID__READY_REPORT__INIT;
  Grid__ReadyItem **items = calloc(k + 1, sizeof *items);
  for (size_t i = 0; items && i < k; i++) items[i] = &c->reports[i];
  rr.items = items;
  rr.n_items = items ? k : 0;
  size_t len = grid__ready_report__get_packed_size(&rr);
  unsigned char *buf = malloc(len + 1);
  if (buf) grid__ready_report__pack(&rr, buf);
  c->reports_dirty = 0;
  pthread_mutex_unlock(&c->lock);
  free(items);
  if (!buf) return;
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "ready", c->node->node_id);
  int rc = zk_set(c->zk, path, buf, len, -1, NULL);
  if (rc == GRID_ENOTFOUND) rc = zk_create(c->zk, path, buf, len, ZK_EPHEMERAL, NULL, 0);
  if (rc != 0) {
    LOG_W("cluster", "\"cannot write fill reports\" error=%s", grid_err_name(rc));
    pthread_mutex_lock(&c->lock);
    c->reports_dirty = 1;
    pthread_mutex_unlock(&c->lock);
  }
  free(buf);
}

/* The coordinator reads every node's reports (watching them). */
static int cluster_read_reports(cluster_t *c, pmap_ready_t **out, size_t *nout,
                                Grid__ReadyReport ***msgs, size_t *nmsgs) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, "ready", NULL);
  char **names;
  size_t n;
  int rc = zk_children(c->zk, path, 1, &names, &n, NULL);
  if (rc != 0) return rc;
  Grid__ReadyReport **m = calloc(n + 1, sizeof *m);
  size_t total = 0, k = 0;
  for (size_t i = 0; m && i < n; i++) {
    char p2[CLUSTER_PATH_MAX];
    cluster_path(c, p2, "ready", names[i]);
    unsigned char *data;
    size_t len;
    if (zk_get(c->zk, p2, 1, &data, &len, NULL) != 0) continue;
    m[k] = grid__ready_report__unpack(NULL, len, data);
    free(data);
    if (m[k]) total += m[k++]->n_items;
  }
  zk_children_free(names, n);
  pmap_ready_t *r = calloc(total + 1, sizeof *r);
  size_t nr = 0;
  for (size_t i = 0; r && i < k; i++) {
    for (size_t j = 0; j < m[i]->n_items; j++) {
      const Grid__ReadyItem *it = m[i]->items[j];
      r[nr].group = it->cache;
      r[nr].partition = it->partition;
      r[nr].node_id = it->node;
      r[nr].demote = it->kind == CLUSTER_DEMOTE;
      r[nr].drained = it->kind == CLUSTER_DRAINED;
      r[nr].epoch = it->epoch;
      nr++;
    }
  }
  *out = r;
  *nout = nr;
  *msgs = m;
  *nmsgs = k;
  return r || total == 0 ? 0 : GRID_ENOMEM;
}

/* ---- the partition map ----------------------------------------------------- */

/* On the loop: installs the newest map and tells the listeners. */
static void cluster_apply_on_loop(loop_t *lp, void *arg) {
  cluster_box_t *box = arg;
  cluster_t *c = box->c;
  pthread_mutex_lock(&c->lock);
  pmap_t *m = box->pending;
  box->pending = NULL;
  box->queued = 0;
  pthread_mutex_unlock(&c->lock);
  if (!m) return;
  if (box->current && m->epoch < box->current->epoch)
    LOG_W("cluster", "\"the partition map went back: its znode was made again\" epoch=%llu was=%llu",
          (unsigned long long)m->epoch, (unsigned long long)box->current->epoch);
  if (box->current) {
    pmap_free(box->current);
    free(box->current);
  }
  box->current = m;
  lp->pmap = m;
  lp->self = pmap_self_index(m, c->node->node_id, c->node->incarnation);
  for (int i = 0; i < c->n_on_map; i++) c->on_map[i](lp);
}

/* Hands a copy of the map to every loop. A copy that cannot be made is
 * made again at the next tick: a loop never misses the newest map. */
static void cluster_publish(cluster_t *c) {
  loops_t *ls = c->node->loops;
  if (!ls) return;
  c->publish_failed = 0;
  for (int i = 0; i < c->nboxes; i++) {
    cluster_box_t *box = &c->boxes[i];
    pmap_t *copy = malloc(sizeof *copy);
    if (!copy || pmap_copy(copy, &c->map) != 0) {
      free(copy);
      c->publish_failed = 1;
      LOG_E("cluster", "\"out of memory handing the map to a loop: trying again\" loop=%d", i);
      continue;
    }
    pthread_mutex_lock(&c->lock);
    pmap_t *old = box->pending;
    box->pending = copy;
    int post = !box->queued;
    box->queued = 1;
    pthread_mutex_unlock(&c->lock);
    if (old) {
      pmap_free(old);
      free(old);
    }
    if (post) loops_post(ls, i, &box->task);
  }
}

void cluster_on_map(cluster_t *c, cluster_map_fn fn) {
  GRID_ASSERT(!c->started && c->n_on_map < CLUSTER_MAP_LISTENERS_MAX);
  c->on_map[c->n_on_map++] = fn;
}

/* The definitions as pmap_set_caches takes them (pointing into c->defs). */
static pmap_cache_def_t *cluster_pmap_defs(cluster_t *c) {
  pmap_cache_def_t *cd = calloc(c->ndefs + 1, sizeof *cd);
  for (size_t i = 0; cd && i < c->ndefs; i++) {
    cd[i].name = c->defs[i].name;
    cd[i].partitions = c->defs[i].partitions;
    cd[i].backups = c->defs[i].backups;
    cd[i].replicated = c->defs[i].mode == GRID_MODE_REPLICATED;
    cd[i].persistent = c->defs[i].persistence != 0;
  }
  return cd;
}

/* Names in m the caches defined now. 0 or GRID_ENOMEM. */
static int cluster_name_caches(cluster_t *c, pmap_t *m) {
  pmap_cache_def_t *cd = cluster_pmap_defs(c);
  int rc = cd ? pmap_set_caches(m, cd, c->ndefs) : GRID_ENOMEM;
  free(cd);
  return rc;
}

/* Reads one chunk the root names into m. */
static int cluster_read_chunk(cluster_t *c, pmap_t *m, const pmap_chunk_ref_t *ref) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_MAP_CHUNKS, ref->znode);
  unsigned char *data;
  size_t len;
  int rc = zk_get(c->zk, path, 0, &data, &len, NULL);
  if (rc != 0) return rc;
  rc = pmap_chunk_apply(m, ref, data, len);
  free(data);
  return rc;
}

static void cluster_log_map(cluster_t *c) {
  int self = pmap_self_index(&c->map, c->node->node_id, c->node->incarnation);
  size_t primaries = 0, copies = 0, total = 0;
  for (size_t i = 0; i < c->map.ngroups; i++) {
    const pmap_group_t *g = &c->map.groups[i];
    total += g->partitions;
    for (uint32_t p = 0; p < g->partitions; p++) {
      if (self >= 0 && pmap_primary(g, p) == self) primaries++;
      for (uint32_t k = 0; k < g->slots; k++) {
        int st;
        if (pmap_copy_at(g, p, k, &st) == self && self >= 0 && st != PMAP_NONE) copies++;
      }
    }
  }
  c->my_copies = copies;
  LOG_I("cluster", "\"partition map\" epoch=%llu nodes=%zu groups=%zu caches=%zu "
        "primary_for=%zu copies=%zu partitions=%zu",
        (unsigned long long)c->map.epoch, c->map.nnodes, c->map.ngroups, c->map.ncaches,
        primaries, copies, total);
}

/* Reads the map's root (watching) and the chunks it names that this node
 * does not hold yet, and hands the map to the loops when it, or the caches
 * it places (caches_changed), changed. A chunk gone meanwhile means a newer
 * map was written: GRID_ENOTFOUND, read again on the next pass. */
static int cluster_read_map(cluster_t *c, int caches_changed) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_MAP_ROOT, NULL);
  unsigned char *data;
  size_t len;
  int version;
  int rc = zk_get(c->zk, path, 1, &data, &len, &version);
  if (rc == GRID_ENOTFOUND) {
    pthread_rwlock_wrlock(&c->map_lock);
    c->map_version = -1;
    pthread_rwlock_unlock(&c->map_lock);
    return 0;
  }
  if (rc != 0) return rc;
  if (version == c->map_version) {
    free(data);
    if (!caches_changed) return 0;
    pthread_rwlock_wrlock(&c->map_lock);
    rc = cluster_name_caches(c, &c->map);
    pthread_rwlock_unlock(&c->map_lock);
    if (rc == 0) cluster_publish(c);
    return rc;
  }
  pmap_t m;
  pmap_stored_t refs;
  rc = pmap_root_decode(data, len, &m, &refs);
  free(data);
  if (rc != 0) {
    LOG_E("cluster", "\"the partition map in ZooKeeper does not decode\" version=%d error=%s",
          version, grid_err_name(rc));
    return rc;
  }
  size_t fetched = 0;
  for (size_t i = 0; rc == 0 && i < refs.n; i++) {
    if (c->map_version >= 0 && pmap_chunk_reuse(&m, &c->map, &c->stored, &refs.refs[i])) continue;
    rc = cluster_read_chunk(c, &m, &refs.refs[i]);
    fetched++;
    if (rc == GRID_EPROTO)
      LOG_E("cluster", "\"a partition map chunk in ZooKeeper does not decode\" chunk=%s",
            refs.refs[i].znode);
  }
  if (rc == 0 && m.caches_version > c->defs_cversion) {
    /* The map was made from definitions this node has not read yet: read
     * them first, so that a node acting on the map knows every cache it
     * was made with. */
    int defs_changed = 0;
    rc = cluster_read_caches(c, &defs_changed);
    if (rc == 0 && cluster_sync_store(c)) c->caches_stale = 1;
  }
  if (rc == 0) rc = cluster_name_caches(c, &m);
  if (rc != 0) {
    pmap_free(&m);
    pmap_stored_free(&refs);
    return rc;
  }
  m.epoch = (uint64_t)version + 1;
  pthread_rwlock_wrlock(&c->map_lock);
  pmap_free(&c->map);
  c->map = m;
  pmap_stored_free(&c->stored);
  c->stored = refs;
  c->map_root_bytes = len;
  c->map_version = version;
  pthread_rwlock_unlock(&c->map_lock);
  LOG_D("cluster", "\"map read\" epoch=%llu chunks=%zu read=%zu", (unsigned long long)m.epoch,
        refs.n, fetched);
  cluster_log_map(c);
  cluster_publish(c);
  return 0;
}

/* Whether node i of m holds any copy. */
static int cluster_node_holds_copies(const pmap_t *m, size_t i) {
  for (size_t k = 0; k < m->ngroups; k++) {
    const pmap_group_t *g = &m->groups[k];
    for (size_t at = 0; at < (size_t)g->partitions * g->slots; at++)
      if (g->owners[at] == i + 1 && g->states[at] != PMAP_NONE) return 1;
  }
  return 0;
}

static int cluster_is_alive(const cluster_t *c, const char *id) {
  for (size_t i = 0; i < c->nalive; i++)
    if (strcmp(c->alive[i].id, id) == 0) return 1;
  return 0;
}

/* The nodes the next map is made from: the live ones, and the map's nodes
 * gone from ZooKeeper less than lost_grace_ms ago, marked absent (pmap.h
 * says what that changes). Returns how many are in out. */
static int cluster_is_accepted(const cluster_t *c, const char *id) {
  for (size_t i = 0; i < c->naccepted; i++)
    if (strcmp(c->accepted[i], id) == 0) return 1;
  return 0;
}

/* Whether node i of m holds a copy of a persistent group: its data is on
 * its disk, so it is waited for until it is back or the operator accepts
 * its loss. */
static int cluster_node_holds_disk_copies(const pmap_t *m, size_t i) {
  for (size_t k = 0; k < m->ngroups; k++) {
    const pmap_group_t *g = &m->groups[k];
    if (!g->persistent) continue;
    for (size_t at = 0; at < (size_t)g->partitions * g->slots; at++)
      if (g->owners[at] == i + 1 && g->states[at] != PMAP_NONE) return 1;
  }
  return 0;
}

/* The certificate a member shows on its TLS port, checked as a link to it
 * would (signed by the cluster's CA, naming its host), within
 * CLUSTER_PROBE_MS: 0, or an error with why. */
static int cluster_probe_tls(cluster_t *c, const pmap_node_t *nd, char *why, size_t why_len) {
  char host[PMAP_ADDR_MAX];
  const char *colon = strrchr(nd->tls_addr, ':');
  if (!colon) {
    snprintf(why, why_len, "it has no tls_port (tls_replication needs one on every node)");
    return GRID_EADDR;
  }
  size_t hl = (size_t)(colon - nd->tls_addr);
  const char *h = nd->tls_addr;
  if (h[0] == '[' && hl >= 2) {
    h++;
    hl -= 2;
  }
  snprintf(host, sizeof host, "%.*s", (int)hl, h);
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  int port = atoi(colon + 1);
  socklen_t sl;
  if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
    ss.ss_family = AF_INET;
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
    sl = sizeof(struct sockaddr_in);
  } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    ss.ss_family = AF_INET6;
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    sl = sizeof(struct sockaddr_in6);
  } else {
    snprintf(why, why_len, "its TLS address %s is not an IP address and port", nd->tls_addr);
    return GRID_EADDR;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(why, why_len, "no socket: %s", strerror(errno));
    return GRID_ECONN;
  }
  int64_t deadline = clock_mono_ms() + CLUSTER_PROBE_MS;
  tls_sess_t *s = NULL;
  int rc = GRID_ECONN;
  snprintf(why, why_len, "its TLS port %s does not answer", nd->tls_addr);
  if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
    /* Non-blocking: connected once writable, with no error pending. */
    struct pollfd wp = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t el = sizeof err;
    if (errno != EINPROGRESS || poll(&wp, 1, CLUSTER_PROBE_MS) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0)
      goto out;
  }
  s = tls_sess_new(c->node->tls_client, host);
  if (!s) goto out;
  for (;;) {
    int hs = tls_sess_handshake(s);
    size_t k;
    unsigned char buf[16640];
    while ((k = tls_sess_take(s, buf, sizeof buf)) > 0) {
      for (size_t off = 0; off < k;) {
        ssize_t w = send(fd, buf + off, k - off, MSG_NOSIGNAL);
        if (w > 0) {
          off += (size_t)w;
          continue;
        }
        struct pollfd wp = {.fd = fd, .events = POLLOUT};
        int64_t left = deadline - clock_mono_ms();
        if (w < 0 && (errno == EAGAIN || errno == EINTR) && left > 0 &&
            poll(&wp, 1, (int)left) >= 0)
          continue;
        goto out;
      }
    }
    if (hs == 1) {
      rc = 0;
      goto out;
    }
    if (hs == TLS_FAILED) {
      snprintf(why, why_len, "its TLS certificate was refused: %s", tls_sess_error(s));
      rc = GRID_ETLS;
      goto out;
    }
    int64_t left = deadline - clock_mono_ms();
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) goto out;
    ssize_t got = recv(fd, buf, sizeof buf, 0);
    if (got <= 0 || tls_sess_feed(s, buf, (size_t)got) != 0) goto out;
  }
out:
  tls_sess_free(s);
  close(fd);
  return rc;
}

/* Whether member nd may hold copies: always without tls_replication; with
 * it, once its certificate was checked (cluster_probe_tls; a refusal is
 * logged once and checked again every CLUSTER_REFUSED_RETRY_MS). */
static int cluster_trusted(cluster_t *c, const pmap_node_t *nd) {
  node_t *n = c->node;
  if (!n->tls_client || !strcmp(nd->id, n->node_id)) return 1;
  struct cluster_trust *t = NULL;
  for (size_t i = 0; i < c->ntrust && !t; i++)
    if (!strcmp(c->trust[i].id, nd->id)) t = &c->trust[i];
  int64_t now = clock_mono_ms();
  if (t && t->incarnation == nd->incarnation &&
      (t->trusted || now - t->checked_ms < CLUSTER_REFUSED_RETRY_MS))
    return t->trusted;
  if (!t) {
    if (c->ntrust == PMAP_NODES_MAX) { /* the oldest entry goes */
      memmove(&c->trust[0], &c->trust[1], (PMAP_NODES_MAX - 1) * sizeof c->trust[0]);
      c->ntrust--;
    }
    t = &c->trust[c->ntrust++];
    memset(t, 0, sizeof *t);
  }
  int was_refused = t->incarnation == nd->incarnation && t->checked_ms && !t->trusted;
  snprintf(t->id, sizeof t->id, "%s", nd->id);
  t->incarnation = nd->incarnation;
  t->checked_ms = now;
  char why[320];
  t->trusted = cluster_probe_tls(c, nd, why, sizeof why) == 0;
  if (!t->trusted && !was_refused)
    LOG_W("cluster", "\"a node is refused: it gets no copies until its TLS certificate is the "
          "cluster CA's\" node=%s addr=%s reason=\"%s\"", nd->id, nd->tls_addr, why);
  else if (t->trusted)
    LOG_I("cluster", "\"a node's TLS certificate is the cluster CA's\" node=%s", nd->id);
  return t->trusted;
}

static size_t cluster_map_nodes(cluster_t *c, pmap_node_t *out) {
  int64_t now = clock_mono_ms(), grace = c->node->cfg.lost_grace_ms;
  size_t k = 0;
  for (size_t i = 0; i < c->ndeparted; i++) {
    /* An entry lasts while the map has its node (past the grace it is
     * simply left out of the next map), and ends when the node is back. */
    struct cluster_departed *d = &c->departed[i];
    if (cluster_is_alive(c, d->node.id) || cluster_is_accepted(c, d->node.id) ||
        (c->map_version >= 0 && pmap_node_index(&c->map, d->node.id) < 0))
      continue;
    c->departed[k++] = *d;
  }
  c->ndeparted = k;
  for (size_t i = 0; c->map_version >= 0 && i < c->map.nnodes; i++) {
    const pmap_node_t *m = &c->map.nodes[i];
    int known = cluster_is_alive(c, m->id);
    for (size_t j = 0; j < c->ndeparted && !known; j++)
      known = strcmp(c->departed[j].node.id, m->id) == 0;
    if (known || c->ndeparted == PMAP_NODES_MAX || !cluster_node_holds_copies(&c->map, i) ||
        cluster_is_accepted(c, m->id))
      continue; /* a node that left holding nothing is simply gone */
    struct cluster_departed *d = &c->departed[c->ndeparted++];
    d->node = *m;
    d->node.absent = 1;
    d->since_ms = now;
    d->warned = 0;
    LOG_I("cluster", "\"a node is gone from ZooKeeper: waiting for it before its only copies count as lost\" "
          "node=%s grace_ms=%lld", m->id, (long long)grace);
  }
  size_t n = 0;
  for (size_t i = 0; i < c->nalive && n < PMAP_NODES_MAX; i++)
    if (cluster_trusted(c, &c->alive[i])) out[n++] = c->alive[i];
  for (size_t i = 0; i < c->ndeparted && n < PMAP_NODES_MAX; i++) {
    struct cluster_departed *d = &c->departed[i];
    int idx = c->map_version >= 0 ? pmap_node_index(&c->map, d->node.id) : -1;
    int on_disk = idx >= 0 && cluster_node_holds_disk_copies(&c->map, (size_t)idx);
    if (now - d->since_ms < grace || on_disk) {
      out[n++] = d->node;
      if (on_disk && now - d->since_ms >= grace && !d->warned) {
        d->warned = 1;
        LOG_W("cluster", "\"a node holding persistent copies is gone: its partitions that no "
              "other node holds in sync wait for it (gridctl accept-loss %s goes on without "
              "it)\" node=%s", d->node.id, d->node.id);
      }
    } else if (!d->warned) {
      d->warned = 1;
      LOG_W("cluster", "\"a node gone from ZooKeeper is not back: its copies are dropped\" node=%s",
            d->node.id);
    }
  }
  return n;
}

/* Deletes the chunk znodes no map names: left by a coordinator that
 * stopped between writing chunks and the root, or whose root lost its
 * versioned set. Only chunks of an epoch up to the current one: a chunk
 * of a later epoch may belong to a map being written right now. */
static void cluster_sweep_chunks(cluster_t *c) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_MAP_CHUNKS, NULL);
  char **names;
  size_t n;
  if (zk_children(c->zk, path, 0, &names, &n, NULL) != 0) return;
  size_t deleted = 0;
  for (size_t i = 0; i < n; i++) {
    int named = 0;
    for (size_t k = 0; k < c->stored.n && !named; k++)
      named = strcmp(c->stored.refs[k].znode, names[i]) == 0;
    /* <group>.<first>.<epoch>.<writer> */
    const char *dot = strchr(names[i], '.');
    const char *e = dot ? strchr(dot + 1, '.') : NULL;
    unsigned long long epoch = e ? strtoull(e + 1, NULL, 10) : 0;
    if (named || !e || epoch > c->map.epoch) continue;
    char p2[CLUSTER_PATH_MAX];
    cluster_path(c, p2, CLUSTER_MAP_CHUNKS, names[i]);
    if (zk_delete(c->zk, p2, -1) == 0) deleted++;
  }
  zk_children_free(names, n);
  if (deleted) LOG_I("cluster", "\"deleted partition map chunks no map names\" chunks=%zu", deleted);
}

/* Writes next as the map after c->map: its new chunks, then the root with
 * a versioned set (the one step that makes the new epoch), then deletes
 * the chunks only the old map named. When the root was surely not set
 * (another map was written first, or a chunk failed before it), the
 * chunks written are deleted; when the outcome is unknown (the connection
 * went with the set in flight), nothing is: the root may name them, and
 * the sweep takes what no map names once the map has passed that epoch.
 * Every attempt names its chunks apart, so a chunk an earlier attempt
 * made without hearing back never stands in the way. */
static int cluster_write_map(cluster_t *c, const pmap_t *next) {
  uint64_t epoch = (uint64_t)(c->map_version + 2);
  pmap_plan_t plan;
  int first = c->map_version < 0;
  uint64_t writer = c->node->incarnation + ++c->map_writes;
  int rc = pmap_store_plan(next, first ? NULL : &c->map, first ? NULL : &c->stored, epoch,
                           writer, &plan);
  if (rc != 0) return rc;
  if (plan.root_len > ZK_DATA_BYTES_MAX) {
    LOG_E("cluster", "\"the partition map's root is over ZooKeeper's znode limit\" bytes=%zu max=%d",
          plan.root_len, ZK_DATA_BYTES_MAX);
    pmap_plan_free(&plan);
    return GRID_ELIMIT;
  }
  char path[CLUSTER_PATH_MAX];
  size_t written = 0, bytes = 0;
  for (size_t i = 0; rc == 0 && i < plan.nwrites; i++) {
    cluster_path(c, path, CLUSTER_MAP_CHUNKS, plan.writes[i].znode);
    rc = zk_create(c->zk, path, plan.writes[i].buf, plan.writes[i].len, ZK_PERSISTENT, NULL, 0);
    if (rc == 0) {
      written++;
      bytes += plan.writes[i].len;
    }
  }
  int root_tried = rc == 0;
  if (root_tried) {
    cluster_path(c, path, CLUSTER_MAP_ROOT, NULL);
    rc = first ? zk_create(c->zk, path, plan.root, plan.root_len, ZK_PERSISTENT, NULL, 0)
               : zk_set(c->zk, path, plan.root, plan.root_len, c->map_version, NULL);
  }
  /* The root surely not set: another map came first (a versioned set
   * refused, or the first root made by another), or it was never tried. */
  int not_set = rc != 0 && (!root_tried || rc == GRID_EVERSION || rc == GRID_EEXIST);
  size_t ndelete = rc == 0 ? plan.nobsolete : not_set ? written : 0;
  for (size_t i = 0; i < ndelete; i++) {
    cluster_path(c, path, CLUSTER_MAP_CHUNKS, rc == 0 ? plan.obsolete[i] : plan.writes[i].znode);
    zk_delete(c->zk, path, -1);
  }
  /* A chunk whose create or root whose set was not heard back from may
   * exist: swept once the map has passed this epoch, unless a root names
   * it. */
  if (rc != 0 && (!not_set || (written < plan.nwrites && rc != GRID_EEXIST)))
    c->sweep_at_epoch = epoch;
  if (rc == 0)
    LOG_I("cluster", "\"wrote the next partition map\" epoch=%llu nodes=%zu groups=%zu "
          "chunks_written=%zu chunk_bytes=%zu root_bytes=%zu",
          (unsigned long long)epoch, next->nnodes, next->ngroups, written, bytes, plan.root_len);
  pmap_plan_free(&plan);
  return rc;
}

/* The definitions the next map places: each one whose group the map has,
 * or whose new group fits (cluster_group_fits: a create checks this before
 * it defines a cache; this holds the line when two creates raced). Moved
 * to the front of cd; returns how many, or SIZE_MAX when memory ran out. */
static size_t cluster_placeable(cluster_t *c, pmap_cache_def_t *cd, size_t n) {
  int have_map = c->map_version >= 0;
  size_t groups = have_map ? c->map.ngroups : 0;
  uint64_t bytes = have_map ? pmap_bytes(&c->map) : 0;
  /* The new groups taken in this pass: at most one per definition. */
  char (*taken)[PMAP_GROUP_NAME_MAX] = malloc((n ? n : 1) * sizeof *taken);
  if (!taken) return SIZE_MAX;
  size_t ntaken = 0, k = 0;
  for (size_t i = 0; i < n; i++) {
    char g[PMAP_GROUP_NAME_MAX];
    pmap_group_name_of(&cd[i], g, sizeof g);
    int known = have_map && pmap_find_group(&c->map, g);
    for (size_t j = 0; j < ntaken && !known; j++) known = strcmp(taken[j], g) == 0;
    if (!known) {
      char why[320];
      if (!cluster_group_fits(c, groups + ntaken, bytes, &cd[i], why, sizeof why)) {
        int64_t now = clock_mono_ms();
        if (now - c->unplaced_logged_ms >= 10000) { /* said every 10 s at most */
          c->unplaced_logged_ms = now;
          LOG_E("cluster", "\"a cache is not placed\" cache=%s why=\"%s\"", cd[i].name, why);
        }
        continue;
      }
      bytes += pmap_group_bytes(cd[i].partitions, cd[i].backups, cd[i].replicated, c->nalive);
      memcpy(taken[ntaken++], g, sizeof g);
    }
    cd[k++] = cd[i];
  }
  free(taken);
  return k;
}

/* The coordinator's part: the next map, written with a versioned set so
 * that a coordinator that lost its place cannot overwrite a newer map. */
/* The nodes whose loss the operator accepted; a znode whose node the map
 * no longer names has done its work and goes. */
static void cluster_read_accepted(cluster_t *c) {
  char path[CLUSTER_PATH_MAX];
  cluster_path(c, path, CLUSTER_ACCEPT_LOSS, NULL);
  char **names;
  size_t n;
  c->naccepted = 0;
  if (zk_children(c->zk, path, 0, &names, &n, NULL) != 0) return;
  free(c->accepted);
  c->accepted = calloc(n + 1, sizeof *c->accepted);
  for (size_t i = 0; c->accepted && i < n; i++) {
    if (c->map_version >= 0 && pmap_node_index(&c->map, names[i]) < 0) {
      char p2[CLUSTER_PATH_MAX];
      cluster_path(c, p2, CLUSTER_ACCEPT_LOSS, names[i]);
      if (zk_delete(c->zk, p2, -1) == 0)
        LOG_I("cluster", "\"the loss of a node is accepted, and done\" node=%s", names[i]);
      continue;
    }
    snprintf(c->accepted[c->naccepted++], PMAP_ID_MAX, "%s", names[i]);
  }
  zk_children_free(names, n);
}

static void cluster_coordinate(cluster_t *c) {
  node_t *n = c->node;
  if (c->map_version < 0 && (int64_t)c->nalive < n->cfg.cluster_min_nodes) {
    LOG_D("cluster", "\"waiting for nodes before the first map\" alive=%zu min=%lld",
          c->nalive, (long long)n->cfg.cluster_min_nodes);
    return;
  }
  if (!c->coordinating) { /* just became coordinator: sweep what others left */
    c->coordinating = 1;
    c->sweep_at_epoch = 1;
  }
  if (c->sweep_at_epoch && c->map_version >= 0 && c->map.epoch >= c->sweep_at_epoch) {
    c->sweep_at_epoch = 0;
    cluster_sweep_chunks(c);
  }
  int64_t t0 = clock_mono_ms();
  pmap_cache_def_t *cd = cluster_pmap_defs(c);
  if (!cd) return;
  size_t ndefs = cluster_placeable(c, cd, c->ndefs);
  if (ndefs == SIZE_MAX) { /* out of memory: no map this pass (none without its caches) */
    free(cd);
    return;
  }
  pmap_ready_t *ready = NULL;
  size_t nready = 0, nmsgs = 0;
  Grid__ReadyReport **msgs = NULL;
  if (cluster_read_reports(c, &ready, &nready, &msgs, &nmsgs) != 0) nready = 0;
  cluster_read_accepted(c);
  if (c->naccepted && c->map_version >= 0) {
    /* The operator's word: persistent partitions left with no copy start
     * again, empty. */
    pmap_ready_t *more = realloc(ready, (nready + c->map.ngroups + 1) * sizeof *more);
    if (more) {
      ready = more;
      for (size_t g = 0; g < c->map.ngroups; g++)
        if (c->map.groups[g].persistent)
          ready[nready++] = (pmap_ready_t){.group = c->map.groups[g].name,
                                           .partition = UINT32_MAX, .restart = 1};
    }
  }
  pmap_t next;
  pmap_init(&next);
  int changed = 0;
  pmap_node_t *nodes = malloc(sizeof(pmap_node_t) * PMAP_NODES_MAX);
  size_t nnodes = nodes ? cluster_map_nodes(c, nodes) : 0;
  int rc = nodes ? pmap_next(c->map_version >= 0 ? &c->map : NULL, nodes, nnodes, cd, ndefs,
                             ready, nready, &next, &changed)
                 : GRID_ENOMEM;
  free(nodes);
  free(cd);
  free(ready);
  for (size_t i = 0; i < nmsgs; i++) grid__ready_report__free_unpacked(msgs[i], NULL);
  free(msgs);
  if (rc == 0 && changed && c->map_version >= 0 &&
      pmap_live_nodes(&next) < pmap_live_nodes(&c->map) &&
      clock_mono_ms() - c->registered_ms < n->cfg.zk_session_timeout_ms) {
    /* This coordinator's session is new (ZooKeeper was away, or it just
     * took over): give the others one session timeout to come back before
     * a map without them is written. */
    LOG_D("cluster", "\"waiting for nodes to re-register before dropping them\"");
    cluster_mark_dirty(c);
    pmap_free(&next);
    return;
  }
  /* A map is written when the caches defined changed too, placed or not:
   * its epoch tells every node, and every client, that a cache was made or
   * dropped (a request routed with it waits for a node that has not read
   * it, rather than being told the cache does not exist). */
  next.caches_version = c->defs_cversion;
  if (c->map_version >= 0 && next.caches_version != c->map.caches_version) changed = 1;
  if (rc == 0 && (changed || c->map_version < 0)) {
    snprintf(next.coordinator, sizeof next.coordinator, "%s", n->node_id);
    int64_t t1 = clock_mono_ms();
    rc = cluster_write_map(c, &next);
    if (rc == 0)
      LOG_I("cluster", "\"map computed and written\" compute_ms=%lld write_ms=%lld",
            (long long)(t1 - t0), (long long)(clock_mono_ms() - t1));
    else if (rc != GRID_EVERSION && rc != GRID_EEXIST)
      LOG_W("cluster", "\"cannot write the partition map\" error=%s", grid_err_name(rc));
    /* Read back what is there now; a map too big to store is tried again
     * at the next periodic pass, not at once. */
    if (rc != GRID_ELIMIT) cluster_mark_dirty(c);
  }
  pmap_free(&next);
}

/* ---- jobs ------------------------------------------------------------------ */

static void cluster_done_on_loop(loop_t *lp, void *arg) {
  cluster_job_t *j = arg;
  j->done(lp, j->arg, j->status, j->detail[0] ? j->detail : NULL);
  free(j->user_rq);
  free(j);
}

/* The job's answer goes to its loop; the task is in the job, so this
 * cannot fail. */
static void cluster_job_finish(cluster_t *c, cluster_job_t *j) {
  if (j->status == GRID_EAUTH) { /* ZooKeeper's NOAUTH: the node's, not the client's */
    j->status = GRID_ECLUSTER;
    snprintf(j->detail, sizeof j->detail, "ZooKeeper refused this node's credentials (zk_auth)");
  }
  j->task = (loop_task_t){.fn = cluster_done_on_loop, .arg = j};
  loops_post(c->node->loops, j->loop_index, &j->task);
}

/* Creates waiting for the map: answered once it places the cache (or at
 * their deadline: the cache exists, routing catches up by itself). */
static void cluster_check_waiting(cluster_t *c, int64_t now) {
  cluster_job_t **l = &c->waiting;
  while (*l) {
    cluster_job_t *j = *l;
    if (j->caches_version < 0 && cluster_def_find(c->defs, c->ndefs, j->cfg.name))
      j->caches_version = c->defs_cversion;
    int placed = j->caches_version >= 0 && pmap_find_cache(&c->map, j->cfg.name) != NULL &&
                 c->map.caches_version >= j->caches_version;
    if (placed || now >= j->deadline_ms) {
      *l = j->next;
      if (!placed) {
        j->status = GRID_ETIMEDOUT;
        snprintf(j->detail, sizeof j->detail,
                 "the cache is defined, but no partition map places it yet: the coordinator "
                 "(%s) may be unable to write the map; its log says why", c->coordinator);
      }
      cluster_job_finish(c, j);
    } else {
      l = &j->next;
    }
  }
}

static int cluster_enqueue(cluster_t *c, cluster_job_t *j) {
  pthread_mutex_lock(&c->lock);
  if (c->stop) {
    pthread_mutex_unlock(&c->lock);
    free(j->user_rq);
    free(j);
    return GRID_ECLUSTER;
  }
  if (c->njobs >= CLUSTER_JOBS_MAX) {
    pthread_mutex_unlock(&c->lock);
    free(j->user_rq);
    free(j);
    return GRID_EBUSY;
  }
  j->next = c->jobs;
  c->jobs = j;
  c->njobs++;
  pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
  return 0;
}

int cluster_cache_create(cluster_t *c, const store_cache_cfg_t *cfg,
                         int loop_index, cluster_done_fn done, void *arg) {
  cluster_job_t *j = calloc(1, sizeof *j);
  if (!j) return GRID_ENOMEM;
  j->create = 1;
  j->cfg = *cfg;
  j->loop_index = loop_index;
  j->done = done;
  j->arg = arg;
  j->deadline_ms = clock_mono_ms() + c->node->cfg.forward_timeout_ms;
  return cluster_enqueue(c, j);
}

int cluster_cache_drop(cluster_t *c, const char *name, int loop_index,
                       cluster_done_fn done, void *arg) {
  cluster_job_t *j = calloc(1, sizeof *j);
  if (!j) return GRID_ENOMEM;
  snprintf(j->cfg.name, sizeof j->cfg.name, "%s", name);
  j->loop_index = loop_index;
  j->done = done;
  j->arg = arg;
  return cluster_enqueue(c, j);
}

int cluster_user_change(cluster_t *c, const Grid__Request *rq, int loop_index,
                        cluster_done_fn done, void *arg) {
  cluster_job_t *j = calloc(1, sizeof *j);
  if (!j) return GRID_ENOMEM;
  j->create = 3;
  j->user_rq_len = grid__request__get_packed_size(rq);
  j->user_rq = malloc(j->user_rq_len ? j->user_rq_len : 1);
  if (!j->user_rq) {
    free(j);
    return GRID_ENOMEM;
  }
  grid__request__pack(rq, j->user_rq);
  j->loop_index = loop_index;
  j->done = done;
  j->arg = arg;
  return cluster_enqueue(c, j);
}

int cluster_accept_loss(cluster_t *c, const char *node_id, int loop_index,
                        cluster_done_fn done, void *arg) {
  cluster_job_t *j = calloc(1, sizeof *j);
  if (!j) return GRID_ENOMEM;
  j->create = 2;
  snprintf(j->cfg.name, sizeof j->cfg.name, "%s", node_id);
  j->loop_index = loop_index;
  j->done = done;
  j->arg = arg;
  return cluster_enqueue(c, j);
}

/* ---- the reconcile loop ---------------------------------------------------- */

static void cluster_set_serving(cluster_t *c, int serving) {
  if (atomic_exchange(&c->serving, serving) != serving)
    LOG_W("cluster", "\"%s\" node=%s", serving ? "serving" : "fenced: not serving until ZooKeeper is back",
          c->node->node_id);
}

/* ---- the lease -------------------------------------------------------------- */

typedef struct cluster_ping {
  cluster_t *c;
  int64_t sent_ms;
  uint64_t gen;
} cluster_ping_t;

/* How long a ping's answer lets this node serve, from the ping's send. */
static int64_t cluster_lease_ms(cluster_t *c) {
  int64_t t = c->node->cfg.zk_session_timeout_ms;
  int granted = c->zk ? zk_session_timeout_ms(c->zk) : 0;
  if (granted > 0 && granted < t) t = granted;
  return t / 2;
}

static void cluster_ping_done(void *arg, int rc) {
  cluster_ping_t *pg = arg;
  cluster_t *c = pg->c;
  if (rc == 0 && pg->gen == atomic_load(&c->session_gen)) {
    int64_t until = pg->sent_ms + atomic_load(&c->lease_ms);
    int64_t cur = atomic_load(&c->lease_until_ms);
    while (until > cur && !atomic_compare_exchange_weak(&c->lease_until_ms, &cur, until)) {
    }
  }
  atomic_store(&c->ping_inflight, 0);
  free(pg);
}

/* One ping in flight at most, every eighth of the session timeout: the
 * lease (half of it) outlives three missed answers. */
static void cluster_renew_lease(cluster_t *c, int64_t now) {
  if (atomic_load(&c->ping_inflight) || now - c->ping_sent_ms < cluster_lease_ms(c) / 4) return;
  cluster_ping_t *pg = malloc(sizeof *pg);
  if (!pg) return;
  *pg = (cluster_ping_t){c, now, atomic_load(&c->session_gen)};
  atomic_store(&c->lease_ms, cluster_lease_ms(c));
  atomic_store(&c->ping_inflight, 1);
  c->ping_sent_ms = now;
  if (zk_ping(c->zk, cluster_ping_done, pg) != 0) {
    atomic_store(&c->ping_inflight, 0);
    free(pg);
  }
}

/* ZooKeeper refused this node's credentials for the cluster's znodes: it
 * cannot take part, and says so once, then the node stops (gridd exits
 * with an error). */
static void cluster_refused_credentials(cluster_t *c) {
  node_t *n = c->node;
  char why[768];
  snprintf(why, sizeof why, "ZooKeeper refused access to %s: its znodes are protected and "
           "zk_auth %s; set zk_auth to the cluster's \"user:password\" on every node", c->root,
           n->cfg.zk_auth[0] ? "is not the credentials they were made with" : "is not set");
  if (!c->refused_logged) LOG_E("cluster", "\"cannot join\" reason=\"%s\"", why);
  c->refused_logged = 1;
  c->register_after_ms = clock_mono_ms() + CLUSTER_REFUSED_RETRY_MS;
  void (*fatal)(const char *) = atomic_load(&n->on_fatal);
  if (fatal) fatal(why);
}

/* The ZooKeeper session: opened, renewed, registered. 1 when it is up and
 * this node is registered, so the tick may go on. */
static int cluster_tick_session(cluster_t *c, int64_t now) {
  node_t *n = c->node;
  if (!c->zk) {
    if (zk_open(n->cfg.zk, (int)n->cfg.zk_session_timeout_ms, cluster_wake, c, n->cfg.zk_auth,
                &c->zk) != 0) {
      c->zk = NULL;
      return 0;
    }
    /* A ping of the closed session may never be answered. */
    atomic_store(&c->ping_inflight, 0);
    c->registered = 0;
  }
  if (zk_expired(c->zk)) {
    LOG_W("cluster", "\"ZooKeeper session expired: starting a new one\" node=%s", n->node_id);
    cluster_set_serving(c, 0);
    atomic_fetch_add(&c->session_gen, 1);
    atomic_store(&c->lease_until_ms, 0);
    zk_close(c->zk);
    c->zk = NULL;
    return 0;
  }
  int connected = zk_connected(c->zk);
  pthread_mutex_lock(&c->lock);
  c->zk_ok = connected;
  pthread_mutex_unlock(&c->lock);
  if (!connected) {
    /* The lease: stop serving well before ZooKeeper can expire the session
     * and the coordinator hand this node's partitions to others. */
    int64_t lease = n->cfg.zk_session_timeout_ms / 4;
    if (c->registered && now - c->last_connected_ms > lease) cluster_set_serving(c, 0);
    return 0;
  }
  c->last_connected_ms = now;
  cluster_renew_lease(c, now);
  if (!c->registered) {
    if (now < c->register_after_ms) return 0;
    int rc = cluster_register(c);
    if (rc != 0) {
      /* Refused (the cluster is full): asked again every few seconds, not
       * every tick. */
      if (rc == GRID_ELIMIT) c->register_after_ms = now + CLUSTER_REFUSED_RETRY_MS;
      else if (rc == GRID_EAUTH) cluster_refused_credentials(c);
      else LOG_W("cluster", "\"cannot register with ZooKeeper\" error=%s", grid_err_name(rc));
      return 0;
    }
    c->registered = 1;
    c->registered_ms = now;
    cluster_mark_dirty(c);
  }
  return 1;
}

/* A graceful leave: said in this node's znode, then done once the map
 * gives the node no copy (or no other node could take one). */
static void cluster_tick_leave(cluster_t *c, int leaving) {
  node_t *n = c->node;
  if (leaving && !c->leaving_written) {
    char path[CLUSTER_PATH_MAX];
    cluster_path(c, path, "leaving", n->node_id);
    int rc = zk_create(c->zk, path, NULL, 0, ZK_EPHEMERAL, NULL, 0);
    if (rc == 0 || rc == GRID_EEXIST) {
      c->leaving_written = 1;
      LOG_I("cluster", "\"leaving: handing partitions over\" node=%s copies=%zu", n->node_id,
            c->my_copies);
    }
  }
  size_t others = 0; /* nodes that could take partitions over */
  for (size_t i = 0; i < c->nalive; i++)
    if (!c->alive[i].leaving && strcmp(c->alive[i].id, n->node_id) != 0) others++;
  if (c->leaving_written && !c->left &&
      ((c->map_version >= 0 && c->my_copies == 0) || others == 0)) {
    pthread_mutex_lock(&c->lock);
    c->left = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    LOG_I("cluster", "\"left: no partition here any more\" node=%s", n->node_id);
    if (c->on_left) c->on_left(c->on_left_arg);
  }
}

/* Reads everything again (cache definitions, live nodes, coordinator, the
 * map) and acts on it. A read that fails leaves everything as it was and
 * marks the state dirty: nothing is taken for dropped. */
static void cluster_resync(cluster_t *c, int leaving) {
  pmap_node_t *alive = malloc(sizeof(pmap_node_t) * PMAP_NODES_MAX);
  size_t nalive = 0;
  char coord[PMAP_ID_MAX];
  int defs_changed = 0;
  int rc = alive ? cluster_read_caches(c, &defs_changed) : GRID_ENOMEM;
  if (defs_changed) c->caches_stale = 1;
  /* Every pass, not only when the definitions change: a cache this node
   * could not make (no memory, its own caches_max) is tried again. */
  if (rc == 0 && cluster_sync_store(c)) c->caches_stale = 1;
  if (rc == 0) rc = cluster_read_users(c);
  if (rc == 0) rc = cluster_read_nodes(c, alive, &nalive);
  if (rc == 0) rc = cluster_read_coordinator(c, coord, sizeof coord);
  if (rc == 0) rc = cluster_read_map(c, c->caches_stale);
  if (rc == 0) c->caches_stale = 0;
  if (rc == 0) {
    pthread_mutex_lock(&c->lock);
    memcpy(c->alive, alive, nalive * sizeof *alive);
    c->nalive = nalive;
    snprintf(c->coordinator, sizeof c->coordinator, "%s", coord);
    pthread_mutex_unlock(&c->lock);
    cluster_write_reports(c);
    cluster_tick_leave(c, leaving);
    if (strcmp(coord, c->node->node_id) == 0) cluster_coordinate(c);
    else c->coordinating = 0; /* sweeps again on becoming coordinator */
    cluster_set_serving(c, c->map_version >= 0);
  } else {
    cluster_mark_dirty(c);
  }
  free(alive);
}

static void cluster_tick(cluster_t *c) {
  int64_t now = clock_mono_ms();
  if (!cluster_tick_session(c, now)) {
    /* Asked to leave a cluster it never joined (refused, or ZooKeeper
     * never answered): it holds nothing to hand over, so it has left. */
    pthread_mutex_lock(&c->lock);
    int leave_now = c->leaving && !c->left && c->registered_ms == 0;
    if (leave_now) {
      c->left = 1;
      pthread_cond_broadcast(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
    if (leave_now) {
      LOG_I("cluster", "\"left: this node never joined the cluster\" node=%s", c->node->node_id);
      if (c->on_left) c->on_left(c->on_left_arg);
    }
    return;
  }
  /* Jobs first: a cache created now is read back below. */
  pthread_mutex_lock(&c->lock);
  cluster_job_t *jobs = c->jobs;
  c->jobs = NULL;
  c->njobs = 0;
  int dirty = c->dirty;
  c->dirty = 0;
  int leaving = c->leaving;
  pthread_mutex_unlock(&c->lock);
  while (jobs) {
    cluster_job_t *next = jobs->next;
    cluster_run_job(c, jobs);
    jobs = next;
    dirty = 1;
  }
  if (dirty || now - c->last_resync_ms >= CLUSTER_RESYNC_MS) {
    c->last_resync_ms = now;
    cluster_resync(c, leaving);
  }
  if (c->publish_failed) cluster_publish(c);
  cluster_check_waiting(c, now);
}

static void *cluster_main(void *arg) {
  cluster_t *c = arg;
  pthread_mutex_lock(&c->lock);
  while (!c->stop) {
    if (!c->dirty && !c->jobs) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      ts.tv_nsec += CLUSTER_TICK_MS * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&c->cond, &c->lock, &ts);
      if (c->stop) break;
    }
    pthread_mutex_unlock(&c->lock);
    cluster_tick(c);
    pthread_mutex_lock(&c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

int cluster_new(node_t *n, cluster_t **out) {
  cluster_t *c = calloc(1, sizeof *c);
  if (!c) return GRID_ENOMEM;
  c->node = n;
  c->map_version = -1;
  c->users_version = -2;
  pmap_init(&c->map);
  pthread_rwlock_init(&c->map_lock, NULL);
  snprintf(c->root, sizeof c->root, "/grid/%s", n->cfg.cluster);
  pthread_mutex_init(&c->lock, NULL);
  clock_cond_init(&c->cond);
  atomic_init(&c->serving, 0);
  c->nboxes = (int)n->cfg.loops;
  c->boxes = calloc((size_t)c->nboxes, sizeof *c->boxes);
  if (!c->boxes) {
    cluster_free(c);
    return GRID_ENOMEM;
  }
  for (int i = 0; i < c->nboxes; i++)
    c->boxes[i] = (cluster_box_t){.task = {.fn = cluster_apply_on_loop, .arg = &c->boxes[i]},
                                  .c = c};
  *out = c;
  return 0;
}

int cluster_start(cluster_t *c, char *err, size_t err_len) {
  if (pthread_create(&c->thread, NULL, cluster_main, c) != 0) {
    snprintf(err, err_len, "cannot start the cluster thread");
    return GRID_ENOMEM;
  }
  c->started = 1;
  return 0;
}

void cluster_stop(cluster_t *c) {
  pthread_mutex_lock(&c->lock);
  c->stop = 1;
  pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
  if (c->started) pthread_join(c->thread, NULL);
  c->started = 0;
  if (c->zk) zk_close(c->zk); /* the session ends: this node's znodes go */
  c->zk = NULL;
  atomic_store(&c->serving, 0);
  /* Requests still queued are answered: the node is going away. */
  pthread_mutex_lock(&c->lock);
  cluster_job_t *lists[2] = {c->jobs, c->waiting};
  c->jobs = c->waiting = NULL;
  pthread_mutex_unlock(&c->lock);
  for (int i = 0; i < 2; i++) {
    while (lists[i]) {
      cluster_job_t *next = lists[i]->next;
      if (i == 0) lists[i]->status = GRID_ECLUSTER;
      cluster_job_finish(c, lists[i]);
      lists[i] = next;
    }
  }
}

void cluster_free(cluster_t *c) {
  for (size_t i = 0; i < c->nreports; i++) {
    free(c->reports[i].cache);
    free(c->reports[i].node);
  }
  free(c->reports);
  for (int i = 0; c->boxes && i < c->nboxes; i++) {
    pmap_t *maps[2] = {c->boxes[i].pending, c->boxes[i].current};
    for (int k = 0; k < 2; k++) {
      if (!maps[k]) continue;
      pmap_free(maps[k]);
      free(maps[k]);
    }
  }
  free(c->boxes);
  pmap_free(&c->map);
  pmap_stored_free(&c->stored);
  free(c->defs);
  free(c->accepted);
  pthread_rwlock_destroy(&c->map_lock);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->cond);
  free(c);
}

/* The host part of "host:port" or "[v6]:port" into out; 0 or -1. */
static int cluster_addr_host(const char *addr, char *out, size_t out_len) {
  const char *colon = strrchr(addr, ':');
  if (!colon) return -1;
  const char *h = addr;
  size_t n = (size_t)(colon - addr);
  if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
    h++;
    n -= 2;
  }
  if (n == 0 || n >= out_len) return -1;
  memcpy(out, h, n);
  out[n] = '\0';
  return 0;
}

/* Whether a node advertising addr may connect from ip: when the advertised
 * host is an IP address, the connection must come from it (a hostname is
 * not resolved here: the id decides). */
static int cluster_addr_matches(const char *addr, const char *ip) {
  char host[PMAP_ADDR_MAX];
  if (cluster_addr_host(addr, host, sizeof host) != 0) return 0;
  unsigned char a[16], b[16];
  int fam = strchr(host, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(fam, host, a) != 1) return 1;
  int ip_fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(ip_fam, ip, b) != 1) return 0;
  if (fam == ip_fam) return memcmp(a, b, fam == AF_INET6 ? 16 : 4) == 0;
  /* An IPv4 peer on a dual-stack listener shows as ::ffff:a.b.c.d. */
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return fam == AF_INET && memcmp(b, mapped, 12) == 0 && memcmp(a, b + 12, 4) == 0;
}

int cluster_peer_check(cluster_t *c, const char *node_id, const char *ip, char *addr_out,
                       size_t addr_len, char *why, size_t why_len) {
  if (strcmp(node_id, c->node->node_id) == 0) {
    snprintf(why, why_len, "a node does not link to itself (node id %.64s)", node_id);
    return GRID_EHANDSHAKE;
  }
  const char *addr = NULL;
  char found[PMAP_ADDR_MAX];
  pthread_rwlock_rdlock(&c->map_lock);
  int i = pmap_node_index(&c->map, node_id);
  if (i >= 0) {
    snprintf(found, sizeof found, "%s", c->map.nodes[i].addr);
    addr = found;
  }
  pthread_rwlock_unlock(&c->map_lock);
  if (!addr) { /* alive in ZooKeeper, not in a map yet (just joined) */
    pthread_mutex_lock(&c->lock);
    for (size_t k = 0; k < c->nalive && !addr; k++) {
      if (strcmp(c->alive[k].id, node_id) != 0) continue;
      snprintf(found, sizeof found, "%s", c->alive[k].addr);
      addr = found;
    }
    pthread_mutex_unlock(&c->lock);
  }
  if (!addr) {
    snprintf(why, why_len, "node id %.64s is not a member of this cluster", node_id);
    return GRID_EHANDSHAKE;
  }
  if (!cluster_addr_matches(addr, ip)) {
    snprintf(why, why_len, "node %.64s advertises %.128s but connects from %.64s", node_id,
             addr, ip);
    return GRID_EHANDSHAKE;
  }
  if (addr_out) snprintf(addr_out, addr_len, "%s", addr);
  return 0;
}

int cluster_map_copy(cluster_t *c, struct pmap *out) {
  pthread_rwlock_rdlock(&c->map_lock);
  int rc = pmap_copy(out, &c->map);
  pthread_rwlock_unlock(&c->map_lock);
  return rc;
}

uint64_t cluster_newest_epoch(cluster_t *c) {
  pthread_rwlock_rdlock(&c->map_lock);
  uint64_t e = c->map.epoch;
  pthread_rwlock_unlock(&c->map_lock);
  return e;
}

int cluster_accepts(cluster_t *c, const char *cache, uint32_t p, uint64_t epoch,
                    const char *from_node) {
  pthread_rwlock_rdlock(&c->map_lock);
  /* A map this node has not read is no map at all: the caller waits for it
   * before it asks (net), so what is still ahead here is refused. */
  int ok = epoch == c->map.epoch;
  if (!ok && epoch < c->map.epoch) {
    const pmap_group_t *pc = pmap_find_cache(&c->map, cache);
    int from = pmap_node_index(&c->map, from_node);
    ok = pc && from >= 0 && pmap_leader(pc, p) == from;
  }
  pthread_rwlock_unlock(&c->map_lock);
  return ok;
}

void cluster_report_withdraw(cluster_t *c, const char *group, uint32_t p,
                             const char *node_id) {
  if (!c) return;
  pthread_mutex_lock(&c->lock);
  size_t k = 0;
  for (size_t i = 0; i < c->nreports; i++) {
    Grid__ReadyItem *it = &c->reports[i];
    if (it->partition == p && it->kind == CLUSTER_FILLED && strcmp(it->cache, group) == 0 &&
        strcmp(it->node, node_id) == 0) {
      free(it->cache);
      free(it->node);
      c->reports_dirty = 1;
      c->dirty = 1;
      continue;
    }
    c->reports[k++] = *it;
  }
  c->nreports = k;
  if (c->reports_dirty) pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

void cluster_leave(cluster_t *c, void (*on_left)(void *arg), void *arg) {
  pthread_mutex_lock(&c->lock);
  if (!c->leaving) {
    c->leaving = 1;
    c->on_left = on_left;
    c->on_left_arg = arg;
    c->dirty = 1;
    pthread_cond_signal(&c->cond);
  }
  pthread_mutex_unlock(&c->lock);
}

int cluster_wait_left(cluster_t *c, int64_t timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&c->lock);
  while (!c->left && !c->stop)
    if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) == ETIMEDOUT) break;
  int left = c->left;
  pthread_mutex_unlock(&c->lock);
  return left ? 0 : GRID_ETIMEDOUT;
}

int cluster_serving(cluster_t *c) {
  return atomic_load_explicit(&c->serving, memory_order_relaxed) &&
         clock_mono_ms() < atomic_load_explicit(&c->lease_until_ms, memory_order_relaxed);
}

void cluster_status(cluster_t *c, Grid__ClusterStatus *st) {
  pthread_mutex_lock(&c->lock);
  st->cluster = strdup(c->node->cfg.cluster);
  st->node_id = strdup(c->node->node_id);
  st->zk_connected = c->zk_ok;
  st->map_znode_bytes_max = ZK_DATA_BYTES_MAX;
  st->map_bytes_max = (uint64_t)c->node->cfg.map_bytes_max;
  pthread_rwlock_rdlock(&c->map_lock);
  st->groups = (uint32_t)c->map.ngroups;
  if (c->map_version >= 0) {
    st->map_bytes = c->map_root_bytes;
    st->map_znodes = 1 + (uint32_t)c->stored.n;
    st->map_znode_bytes = (uint32_t)c->map_root_bytes;
    for (size_t i = 0; i < c->stored.n; i++) {
      st->map_bytes += c->stored.refs[i].bytes;
      if (c->stored.refs[i].bytes > st->map_znode_bytes) st->map_znode_bytes = c->stored.refs[i].bytes;
    }
  }
  pthread_rwlock_unlock(&c->map_lock);
  st->alive = calloc(c->nalive + 1, sizeof *st->alive);
  for (size_t i = 0; st->alive && i < c->nalive; i++) {
    Grid__PmapNode *pn = calloc(1, sizeof *pn);
    if (!pn) break;
    grid__pmap_node__init(pn);
    pn->id = strdup(c->alive[i].id);
    pn->addr = strdup(c->alive[i].addr);
    pn->zone = strdup(c->alive[i].zone);
    pn->http_addr = strdup(c->alive[i].http_addr);
    pn->leaving = c->alive[i].leaving;
    st->alive[st->n_alive++] = pn;
  }
  pthread_mutex_unlock(&c->lock);
}

void cluster_status_free(Grid__ClusterStatus *st) {
  free(st->cluster);
  free(st->node_id);
  for (size_t i = 0; i < st->n_alive; i++) {
    free(st->alive[i]->id);
    free(st->alive[i]->addr);
    free(st->alive[i]->zone);
    free(st->alive[i]->http_addr);
    free(st->alive[i]);
  }
  free(st->alive);
}
