#include "node.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "grid_types.h"
#include "log.h"
#include "cluster.h"
#include "disk.h"
#include "ops.h"
#include "conn.h"
#include "loop.h"
#include "native.h"
#include "net.h"
#include "peer.h"
#include "repl.h"
#include "keyspace.h"
#include "notify.h"
#include "pubsub.h"
#include "stream.h"
#include "tls.h"
#include "auth.h"
#include "http.h"

/* The housekeeping thread: the TTL sweep, bounded to sweep_entries_per_tick
 * entries every sweep_interval_ms, off the event loops. */
static void *node_cron_main(void *arg) {
  node_t *n = arg;
  pthread_mutex_lock(&n->cron_lock);
  while (!n->cron_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + n->cfg.sweep_interval_ms * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&n->cron_cond, &n->cron_lock, &ts);
    if (n->cron_stop) break;
    pthread_mutex_unlock(&n->cron_lock);
    size_t removed = store_sweep(n->store, clock_wall_ms(),
                                 (size_t)n->cfg.sweep_entries_per_tick);
    if (removed) LOG_D("store", "\"expired entries swept\" removed=%zu", removed);
    pthread_mutex_lock(&n->cron_lock);
  }
  pthread_mutex_unlock(&n->cron_lock);
  return NULL;
}

static void node_make_id(node_t *n) {
  if (n->cfg.node_id[0]) {
    snprintf(n->node_id, sizeof n->node_id, "%s", n->cfg.node_id);
    return;
  }
  unsigned char r[6];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    uint64_t t = clock_mono_ns();
    memcpy(r, &t, sizeof r);
  }
  snprintf(n->node_id, sizeof n->node_id, "n-%02x%02x%02x%02x%02x%02x", r[0],
           r[1], r[2], r[3], r[4], r[5]);
}

/* ---- persistence: the store's persist hooks over disk.h ------------------ */

_Static_assert((int)STORE_PART_WHOLE == (int)DISK_PART_WHOLE &&
                   (int)STORE_PART_FILLING == (int)DISK_PART_FILLING &&
                   (int)STORE_PART_SYNC == (int)DISK_PART_SYNC,
               "store and disk name a partition's state alike");

typedef struct node_load {
  store_cache_t *c;
  int64_t now_ms;
  uint64_t entries, expired;
  char err[256];
} node_load_t;

static int node_load_entry(void *ctx, uint32_t part, const void *key, size_t key_len,
                           const void *value, size_t value_len, uint8_t type, uint64_t version,
                           int64_t expire_at_ms) {
  node_load_t *l = ctx;
  if (expire_at_ms && expire_at_ms <= l->now_ms) {
    l->expired++;
    return 0;
  }
  store_key_t k;
  store_key_init(l->c, key, key_len, &k);
  if (k.part != part) {
    snprintf(l->err, sizeof l->err, "an entry on disk is in partition %u, its key's is %u", part,
             k.part);
    return 1;
  }
  int rc = store_apply(l->c, &k, value, value_len, type, version, expire_at_ms);
  if (rc != 0) {
    snprintf(l->err, sizeof l->err, "%s after %llu entries (%s)",
             rc == GRID_EMEMLIMIT ? "it does not fit in memory_bytes_max" : "loading failed",
             (unsigned long long)l->entries, grid_strerror(rc));
    return 1;
  }
  l->entries++;
  return 0;
}

static void *node_persist_open(void *ctx, store_cache_t *c) {
  node_t *n = ctx;
  const store_cache_cfg_t *cfg = store_cache_cfg(c);
  Grid__CacheConfig m;
  ops_cfg_to_msg(cfg, &m);
  unsigned char def[512];
  size_t def_len = grid__cache_config__pack(&m, def);
  char err[1400];
  /* A cache of that name the disk holds may be another one: dropped while
   * this node was away and made again (another id), or of another shape.
   * Its entries are not this cache's. */
  void *kept;
  size_t kept_len;
  if (disk_cache_def(n->disk, cfg->name, &kept, &kept_len) == 0) {
    Grid__CacheConfig *old = grid__cache_config__unpack(NULL, kept_len, kept);
    free(kept);
    int other = !old || old->partitions != cfg->partitions ||
                (old->cache_id && cfg->id && old->cache_id != cfg->id);
    if (old) grid__cache_config__free_unpacked(old, NULL);
    disk_cache_t *stale = other ? disk_cache_open(n->disk, cfg->name, cfg->partitions, def,
                                                  def_len, cfg->fsync, cfg->fsync_every_ms,
                                                  err, sizeof err)
                                : NULL;
    if (stale) {
      LOG_W("disk", "\"the disk held another cache of this name (dropped and made again while "
            "this node was away): its entries are forgotten\" cache=%s", cfg->name);
      disk_cache_drop(stale);
      disk_cache_free(stale);
    }
  }
  disk_cache_t *dc = disk_cache_open(n->disk, cfg->name, cfg->partitions, def, def_len,
                                     cfg->fsync, cfg->fsync_every_ms, err, sizeof err);
  if (!dc) {
    LOG_E("disk", "\"a persistent cache cannot be opened\" cache=%s error=\"%s\"", cfg->name, err);
    return NULL;
  }
  int64_t t0 = clock_mono_ms();
  node_load_t l = {.c = c, .now_ms = clock_wall_ms()};
  int rc = disk_cache_load(dc, node_load_entry, &l, err, sizeof err);
  if (rc == 0 && l.err[0]) {
    snprintf(err, sizeof err, "%s", l.err);
    rc = GRID_EDISK;
  }
  if (rc != 0) {
    LOG_E("disk", "\"a persistent cache cannot be loaded\" cache=%s dir=%s error=\"%s\"",
          cfg->name, n->cfg.data_dir, err);
    disk_cache_free(dc);
    return NULL;
  }
  uint32_t filling = 0;
  for (uint32_t p = 0; p < cfg->partitions; p++) {
    uint64_t version;
    int state;
    disk_part_state(dc, p, &version, &state);
    if (state == DISK_PART_FILLING) {
      /* A fill that did not finish: no copy (it is filled again). */
      store_part_reset(c, p, 0);
      filling++;
      LOG_I("disk", "\"a partition's fill did not finish: it is no copy\" cache=%s partition=%u",
            cfg->name, p);
    }
    store_part_restore(c, p, version, state != DISK_PART_FILLING);
  }
  LOG_I("disk", "\"persistent cache loaded\" cache=%s entries=%llu expired=%llu "
        "unfinished_fills=%u ms=%lld", cfg->name, (unsigned long long)l.entries,
        (unsigned long long)l.expired, filling, (long long)(clock_mono_ms() - t0));
  return dc;
}

static void node_persist_add(void *disk, uint32_t part, const void *key, size_t key_len,
                             const void *value, size_t value_len, uint8_t type,
                             uint64_t version, int64_t expire_at_ms) {
  disk_add(disk, part, key, key_len, value, value_len, type, version, expire_at_ms);
}

static int node_persist_commit(void *disk, uint32_t part, uint64_t last_version, int state) {
  return disk_commit(disk, part, last_version, state);
}

static void node_persist_reset(void *disk, uint32_t part, uint64_t version) {
  if (disk_part_reset(disk, part, version) != 0) {
    /* The disk would keep entries the fill replaces: it cannot be trusted
     * after a restart, so this node stops (its copies live elsewhere). */
    LOG_E("disk", "\"emptying a partition on disk failed: stopping the node\" partition=%u",
          part);
    _exit(75);
  }
}

static void node_persist_state(void *disk, uint32_t part, uint64_t *version, int *state) {
  disk_part_state(disk, part, version, state);
}

static void node_persist_drop(void *disk) { disk_cache_drop(disk); }
static void node_persist_free(void *disk) { disk_cache_free(disk); }

static void node_recreate_cache(void *ctx, const char *name, const void *def, size_t len) {
  node_t *n = ctx;
  Grid__CacheConfig *m = grid__cache_config__unpack(NULL, len, def);
  if (!m) {
    LOG_E("disk", "\"a cache's definition on disk cannot be read: left out\" cache=%s", name);
    return;
  }
  store_cache_cfg_t cfg;
  ops_cfg_from_msg(m, name, &cfg);
  grid__cache_config__free_unpacked(m, NULL);
  int rc = store_cache_create(n->store, &cfg);
  if (rc != 0 && !n->disk_failed) {
    n->disk_failed = rc;
    LOG_E("disk", "\"a persistent cache cannot be made again\" cache=%s error=\"%s\"", name,
          grid_strerror(rc));
  }
}

/* The data directory: opened, its identity checked, the store's hooks
 * set; a single node makes its persistent caches again from it (a
 * cluster's come from ZooKeeper). */
static int node_open_disk(node_t *n, char *err, size_t err_len) {
  if (!n->cfg.data_dir[0]) return 0;
  int rc = disk_open(n->cfg.data_dir, n->cfg.zk[0] ? n->cfg.cluster : "",
                     n->cfg.disk_free_bytes_min, &n->disk, err, err_len);
  if (rc != 0) return rc;
  store_persist_t ps = {.ctx = n, .open = node_persist_open, .add = node_persist_add,
                        .commit = node_persist_commit, .reset = node_persist_reset,
                        .state = node_persist_state,
                        .drop = node_persist_drop, .free = node_persist_free};
  store_set_persist(n->store, &ps);
  if (n->cfg.zk[0]) return 0;
  int64_t t0 = clock_mono_ms();
  disk_cache_defs(n->disk, node_recreate_cache, n);
  if (n->disk_failed) {
    snprintf(err, err_len, "data_dir %s: a persistent cache cannot be loaded (the log says "
             "which and why)", n->cfg.data_dir);
    return n->disk_failed == GRID_EMEMLIMIT ? GRID_EMEMLIMIT : GRID_EDISK;
  }
  LOG_I("disk", "\"data directory loaded\" dir=%s disk_id=%016llx entries=%llu ms=%lld",
        n->cfg.data_dir, (unsigned long long)disk_id(n->disk),
        (unsigned long long)store_entries(n->store), (long long)(clock_mono_ms() - t0));
  return 0;
}

static uint64_t node_loops_ops_served(void *arg) { return loops_ops_served(arg); }

/* The event loops and what runs on them, in order: on the timer, the peer
 * links, replication, then connection deadlines; on stop, replication
 * fails what waits, the peer links fail what was forwarded, and then the
 * connections close. The listeners are opened before the loops run. */
static int node_start_loops(node_t *n, char *err, size_t err_len) {
  n->pubsub = pubsub_new();
  if (!n->pubsub) {
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  int rc = loops_new(n, &n->loops, err, err_len);
  if (rc != 0) {
    n->loops = NULL;
    return rc;
  }
  loops_t *ls = n->loops;
  loops_on_cron(ls, peer_cron);
  loops_on_cron(ls, repl_cron);
  loops_on_cron(ls, conn_cron);
  loops_on_cron(ls, native_cron);
  loops_on_cron(ls, stream_cron);
  loops_on_cron(ls, keyspace_cron);
  loops_on_stop(ls, repl_close, NULL);
  loops_on_stop(ls, peer_close_all, peer_close_all);
  loops_on_stop(ls, NULL, conn_close_all);
  loops_on_stop(ls, keyspace_stop, NULL);
  rc = net_listen(n, ls, err, err_len);
  if (rc == 0) {
    /* Set before the loops run: STATS reads it from any thread. */
    n->loops_ops_arg = ls;
    n->loops_ops_served = node_loops_ops_served;
    rc = loops_run(ls, err, err_len);
  }
  return rc;
}

/* The node's own state: settings, id, incarnation, store and housekeeping
 * thread. NULL with err set when it cannot be made (nothing is left). */
static node_t *node_new(const config_t *cfg, int *rc, char *err, size_t err_len) {
  node_t *n = calloc(1, sizeof *n);
  *rc = GRID_ENOMEM;
  if (!n) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  n->cfg = *cfg;
  config_finish(&n->cfg);
  int lvl = log_level_parse(n->cfg.log_level);
  if (lvl < 0) {
    snprintf(err, err_len, "log_level: expected debug, info, warn or error, got \"%s\"",
             n->cfg.log_level);
    free(n);
    *rc = GRID_ECONFIG;
    return NULL;
  }
  log_set_level((log_level_t)lvl);
  unsigned notify_flags;
  if (notify_parse(n->cfg.notify_keyspace_events, &notify_flags) != 0) {
    snprintf(err, err_len, "notify_keyspace_events: \"%s\" has a letter that is not one of "
             "Redis's (K E g $ l s h z x e t d m n A)", n->cfg.notify_keyspace_events);
    free(n);
    *rc = GRID_ECONFIG;
    return NULL;
  }
  atomic_init(&n->notify_flags, notify_flags);
  node_make_id(n);
  if (getrandom(&n->incarnation, sizeof n->incarnation, 0) != (ssize_t)sizeof n->incarnation)
    n->incarnation = clock_mono_ns() ^ (uint64_t)clock_wall_ms() << 20;
  if (n->incarnation == 0) n->incarnation = 1; /* 0 means "any" in a map */
  n->started_ms = clock_mono_ms();
  store_limits_t lim = {
      .memory_bytes_max = n->cfg.memory_bytes_max,
      .key_bytes_max = n->cfg.key_bytes_max,
      .value_bytes_max = n->cfg.value_bytes_max,
      .caches_max = n->cfg.caches_max,
      .partitions_default = n->cfg.partitions_default,
      .partitions_max = n->cfg.partitions_max,
      .change_buffer_bytes = n->cfg.change_buffer_bytes,
      .change_buffers_bytes_max = n->cfg.change_buffers_bytes_max,
  };
  n->store = store_new(&lim);
  /* A single node announces a change once applied; a cluster's, once
   * committed (repl). */
  if (n->store) store_set_announce_applied(n->store, !n->cfg.zk[0]);
  if (!n->store) {
    snprintf(err, err_len, "cannot create the store: memory_bytes_max (%lld) "
             "is too small for the default cache", (long long)lim.memory_bytes_max);
    free(n);
    *rc = GRID_EMEMLIMIT;
    return NULL;
  }
  pthread_mutex_init(&n->cron_lock, NULL);
  /* The wait below counts in monotonic time, so must the condition. */
  clock_cond_init(&n->cron_cond);
  if (pthread_create(&n->cron_thread, NULL, node_cron_main, n) != 0) {
    snprintf(err, err_len, "cannot start the housekeeping thread");
    store_free(n->store);
    free(n);
    return NULL;
  }
  *rc = 0;
  return n;
}

/* The node's cluster state, made before its loops run (they look at
 * node->cluster from their first request), with what runs on each loop
 * when a new map comes, in this order: the partitions' replication state
 * first, then the connections whose requests waited for that map. */
static int node_new_cluster(node_t *n, char *err, size_t err_len) {
  if (!n->cfg.listen) {
    snprintf(err, err_len, "a cluster node needs its listener: set listen = on");
    return GRID_ECONFIG;
  }
  store_set_repl_free(n->store, repl_part_free);
  if (cluster_new(n, &n->cluster) != 0) {
    snprintf(err, err_len, "out of memory");
    n->cluster = NULL;
    return GRID_ENOMEM;
  }
  cluster_on_map(n->cluster, repl_on_map);
  cluster_on_map(n->cluster, native_on_map);
  cluster_on_map(n->cluster, stream_on_map);
  cluster_on_map(n->cluster, keyspace_on_map);
  return 0;
}

/* The TLS settings, as tls.c takes them. */
static void node_tls_settings(const config_t *c, tls_settings_t *s) {
  memset(s, 0, sizeof *s);
  s->cert_file = c->tls_cert_file;
  s->key_file = c->tls_key_file;
  s->ca_file = c->tls_ca_cert_file;
  s->clients = !strcmp(c->tls_auth_clients, "no")         ? TLS_CLIENTS_NO
               : !strcmp(c->tls_auth_clients, "optional") ? TLS_CLIENTS_OPTIONAL
                                                          : TLS_CLIENTS_YES;
  /* Nodes linking with tls_replication show their certificates: asked for
   * even when clients need none. */
  if (s->clients == TLS_CLIENTS_NO && c->tls_replication) s->clients = TLS_CLIENTS_OPTIONAL;
  s->protocols = c->tls_protocols;
  s->ciphers = c->tls_ciphers;
  s->ciphersuites = c->tls_ciphersuites;
}

/* The TLS contexts: the listeners' (tls_port, tls_resp_port) and the links
 * to other nodes' (tls_replication), from the same certificate and CA. */
static int node_open_tls(node_t *n, char *err, size_t err_len) {
  const config_t *c = &n->cfg;
  if (c->listen && c->port < 0 && c->tls_port < 0) {
    snprintf(err, err_len, "port = -1 leaves no native listener: set tls_port");
    return GRID_ECONFIG;
  }
  if (c->tls_replication && c->tls_port < 0) {
    snprintf(err, err_len, "tls_replication = yes needs tls_port: nodes link to each "
             "other's TLS port");
    return GRID_ECONFIG;
  }
  int serve = c->listen && (c->tls_port >= 0 || c->tls_resp_port >= 0);
  if (!serve && !c->tls_replication) return 0;
  tls_settings_t s;
  node_tls_settings(c, &s);
  char why[384];
  int rc = serve ? tls_ctx_new(1, &s, &n->tls_server, why, sizeof why) : 0;
  if (rc == 0 && c->tls_replication) rc = tls_ctx_new(0, &s, &n->tls_client, why, sizeof why);
  if (rc != 0) {
    snprintf(err, err_len, "TLS: %s", why);
    return rc;
  }
  if (!c->tls_ca_cert_file[0] && (c->tls_replication || strcmp(c->tls_auth_clients, "no"))) {
    /* Else the system's CA store would vouch for clients and nodes: any
     * publicly trusted certificate would do. */
    snprintf(err, err_len, "TLS: certificates of %s are checked against tls_ca_cert_file: set "
             "it to the CA that signs them (or tls_auth_clients = no)",
             c->tls_replication ? "other nodes" : "clients");
    return GRID_ECONFIG;
  }
  return 0;
}

/* The users and roles (auth.h). A single node keeps its users in memory:
 * with auth on, requirepass is how anyone logs in first. */
static int node_open_auth(node_t *n, char *err, size_t err_len) {
  if (n->cfg.auth && !n->cfg.requirepass[0] && !n->cfg.zk[0]) {
    snprintf(err, err_len, "auth = on needs requirepass on a single node: the password of "
             "user \"default\" (admin), who adds the others (gridctl user add)");
    return GRID_ECONFIG;
  }
  if (n->cfg.auth && n->cfg.zk[0] && !n->cfg.tls_replication && !n->cfg.cluster_secret[0]) {
    snprintf(err, err_len, "auth = on in a cluster needs tls_replication = yes or a "
             "cluster_secret: else a process could pose as a node and skip the logins");
    return GRID_ECONFIG;
  }
  if (n->cfg.auth && n->cfg.zk[0] && !n->cfg.zk_auth[0]) {
    snprintf(err, err_len, "auth = on in a cluster needs zk_auth: the users live in "
             "ZooKeeper, and without credentials anyone who reaches it could add one");
    return GRID_ECONFIG;
  }
  if (!(n->auth = auth_new(&n->cfg))) {
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  return 0;
}

int node_tls_reload(node_t *n, char *err, size_t err_len) {
  tls_settings_t s;
  node_tls_settings(&n->cfg, &s);
  char why[384];
  /* Both contexts are built first: a file that does not load changes
   * neither. */
  tls_ctx_t *check = NULL;
  int rc = n->tls_server ? tls_ctx_new(1, &s, &check, why, sizeof why) : 0;
  tls_ctx_free(check);
  check = NULL;
  if (rc == 0 && n->tls_client) rc = tls_ctx_new(0, &s, &check, why, sizeof why);
  tls_ctx_free(check);
  if (rc == 0 && n->tls_server) rc = tls_ctx_reload(n->tls_server, &s, why, sizeof why);
  if (rc == 0 && n->tls_client) rc = tls_ctx_reload(n->tls_client, &s, why, sizeof why);
  if (rc != 0) snprintf(err, err_len, "TLS: %s", why);
  return rc;
}

/* The port files (native, RESP, TLS, HTTP), for scripts that started the
 * node with port 0. */
static int node_write_port_files(node_t *n, char *err, size_t err_len) {
  const char *files[5] = {n->cfg.port_file, n->cfg.resp_port_file, n->cfg.tls_port_file,
                          n->cfg.tls_resp_port_file, n->cfg.http_port_file};
  int ports[5] = {n->port, n->resp_port, n->tls_port, n->tls_resp_port, n->http_port};
  const char *keys[5] = {"port_file", "resp_port_file", "tls_port_file", "tls_resp_port_file",
                         "http_port_file"};
  for (int i = 0; i < 5; i++) {
    if (!files[i][0]) continue;
    FILE *f = fopen(files[i], "w");
    if (!f || fprintf(f, "%d\n", ports[i]) < 0 || fclose(f) != 0) {
      snprintf(err, err_len, "cannot write %s %s: %s", keys[i], files[i], strerror(errno));
      return GRID_ECONFIG;
    }
  }
  return 0;
}

/* The address other nodes reach this one at, then the cluster thread. */
static int node_join_cluster(node_t *n, char *err, size_t err_len) {
  if (n->cfg.advertise[0]) {
    snprintf(n->advertise, sizeof n->advertise, "%s", n->cfg.advertise);
  } else if (strcmp(n->cfg.bind, "0.0.0.0") == 0 || strcmp(n->cfg.bind, "::") == 0) {
    snprintf(err, err_len, "bind %s is every address: set advertise = host:port, "
             "the address other nodes reach this one at", n->cfg.bind);
    return GRID_ECONFIG;
  } else {
    snprintf(n->advertise, sizeof n->advertise, strchr(n->cfg.bind, ':') ? "[%s]:%d" : "%s:%d",
             n->cfg.bind, n->port);
  }
  /* The TLS port at the advertised host. */
  const char *colon = strrchr(n->advertise, ':');
  if (n->tls_port && colon)
    snprintf(n->advertise_tls, sizeof n->advertise_tls, "%.*s:%d", (int)(colon - n->advertise),
             n->advertise, n->tls_port);
  if (n->http && colon)
    snprintf(n->advertise_http, sizeof n->advertise_http, "%.*s:%d",
             (int)(colon - n->advertise), n->advertise, n->http_port);
  return cluster_start(n->cluster, err, err_len);
}

int node_start(const config_t *cfg, node_t **out, char *err, size_t err_len) {
  int rc;
  node_t *n = node_new(cfg, &rc, err, err_len);
  if (!n) return rc;
  rc = node_open_disk(n, err, err_len);
  if (rc == 0) rc = node_open_tls(n, err, err_len);
  if (rc == 0) rc = node_open_auth(n, err, err_len);
  if (rc == 0 && n->cfg.zk[0]) rc = node_new_cluster(n, err, err_len);
  if (rc == 0 && n->cfg.listen) {
    rc = node_start_loops(n, err, err_len);
    if (rc == 0 && n->cfg.http_port >= 0) rc = http_start(n, &n->http, err, err_len);
    if (rc == 0) rc = node_write_port_files(n, err, err_len);
    if (rc == 0)
      LOG_I("node", "\"listening\" node=%s addr=%s:%d resp_port=%d tls_port=%d "
            "tls_resp_port=%d loops=%lld memory_bytes_max=%lld",
            n->node_id, n->cfg.bind, n->port, n->resp_port, n->tls_port, n->tls_resp_port,
            (long long)n->cfg.loops, (long long)n->cfg.memory_bytes_max);
  } else if (rc == 0) {
    LOG_D("node", "\"started without a listener\" node=%s", n->node_id);
  }
  if (rc == 0 && n->cluster) rc = node_join_cluster(n, err, err_len);
  if (rc != 0) {
    node_stop(n);
    return rc;
  }
  *out = n;
  return 0;
}

int node_port(const node_t *n) { return n->port; }

void node_stop(node_t *n) {
  http_stop(n->http); /* it reads the loops and the cluster: first */
  n->http = NULL;
  if (n->cluster) cluster_stop(n->cluster); /* leave first: others take over */
  if (n->loops) {
    loops_stop(n->loops);
    n->loops = NULL;
    n->loops_ops_served = NULL; /* the loops are gone: nothing to count */
  }
  if (n->cluster) cluster_free(n->cluster);
  pthread_mutex_lock(&n->cron_lock);
  n->cron_stop = 1;
  pthread_cond_signal(&n->cron_cond);
  pthread_mutex_unlock(&n->cron_lock);
  pthread_join(n->cron_thread, NULL);
  pthread_mutex_destroy(&n->cron_lock);
  pthread_cond_destroy(&n->cron_cond);
  disk_flush(n->disk);
  store_free(n->store);
  disk_close(n->disk);
  pubsub_free(n->pubsub);
  tls_ctx_free(n->tls_server);
  tls_ctx_free(n->tls_client);
  auth_free(n->auth);
  free(n);
}
