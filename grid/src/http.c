#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cluster.h"
#include "grid_types.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "node.h"
#include "op.h"
#include "pmap.h"
#include "store.h"

#define HTTP_CACHES_MAX 100000 /* caches listed in /metrics at most */

/* The dashboard (grid/web/dashboard.html), built in by cmake/embed.cmake. */
extern const unsigned char http_dashboard[];
extern const size_t http_dashboard_len;

#define HTTP_HISTORY 120        /* seconds of load kept for the dashboard */
#define HTTP_SAMPLE_MS 1000

/* One second of the node's load, as the dashboard's sparklines draw it. */
typedef struct http_sample {
  double t;                    /* uptime, seconds */
  double rps;                  /* requests answered per second */
  double p99;                  /* seconds; < 0: no request in the second */
  double fill_rate;            /* entries sent to copies being filled per second */
} http_sample_t;

struct http {
  struct MHD_Daemon *d;
  node_t *n;
  /* The sampler: a thread of its own takes the load each second. */
  pthread_t sampler;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int stop, sampling;
  http_sample_t hist[HTTP_HISTORY]; /* a ring: the newest at (head - 1) */
  size_t head, nhist;
  double prev_t;
  uint64_t prev_requests, prev_fill, prev_cum[METRICS_BUCKETS];
};

/* ---- a growing text buffer ------------------------------------------------ */

typedef struct http_buf {
  char *p;
  size_t len, cap;
  int failed;
} http_buf_t;

static void http_printf(http_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void http_printf(http_buf_t *b, const char *fmt, ...) {
  if (b->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = 1;
      return;
    }
    if (b->p && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap ? b->cap * 2 : 16384;
    while (cap - b->len <= (size_t)n) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
      b->failed = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
}

/* ---- /metrics ---------------------------------------------------------------- */

static const char *http_op_label(unsigned op) {
  const char *s = op_name((Grid__Op)op);
  return strcmp(s, "?") ? s : "OTHER";
}

/* The loops' metrics summed (malloc'd; NULL: out of memory). */
static metrics_t *http_metrics_sum(node_t *n) {
  metrics_t *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  for (int i = 0; n->loops && i < loops_count(n->loops); i++) {
    metrics_t *m = &loops_at(n->loops, i)->metrics;
    for (unsigned op = 0; op < OP_NUMBER_MAX; op++) {
      metrics_bump(&sp->ops[op], atomic_load_explicit(&m->ops[op], memory_order_relaxed));
      metrics_bump(&sp->sum_ns[op], atomic_load_explicit(&m->sum_ns[op], memory_order_relaxed));
      for (unsigned k = 0; k < METRICS_CODES; k++)
        metrics_bump(&sp->errors[op][k],
                     atomic_load_explicit(&m->errors[op][k], memory_order_relaxed));
      for (unsigned k = 0; k < METRICS_BUCKETS; k++)
        metrics_bump(&sp->bucket[op][k],
                     atomic_load_explicit(&m->bucket[op][k], memory_order_relaxed));
    }
    _Atomic uint64_t *from[] = {&m->repl_pending, &m->fill_entries, &m->fill_bytes,
                                &m->fills, &m->fill_entries_left, &m->fill_bytes_left};
    _Atomic uint64_t *to[] = {&sp->repl_pending, &sp->fill_entries, &sp->fill_bytes,
                              &sp->fills, &sp->fill_entries_left, &sp->fill_bytes_left};
    for (size_t k = 0; k < sizeof from / sizeof *from; k++)
      metrics_bump(to[k], atomic_load_explicit(from[k], memory_order_relaxed));
  }
  return sp;
}

/* Requests and the cumulative latency histogram of every op. */
static void http_totals(const metrics_t *sp, uint64_t *requests, uint64_t *errors,
                        uint64_t cum[METRICS_BUCKETS]) {
  *requests = *errors = 0;
  memset(cum, 0, METRICS_BUCKETS * sizeof *cum);
  for (unsigned op = 0; op < OP_NUMBER_MAX; op++) {
    *requests += sp->ops[op];
    for (unsigned k = 1; k < METRICS_CODES; k++) *errors += sp->errors[op][k];
    for (unsigned k = 0; k < METRICS_BUCKETS; k++) cum[k] += sp->bucket[op][k];
  }
  for (unsigned k = 1; k < METRICS_BUCKETS; k++) cum[k] += cum[k - 1];
}

/* The 99th percentile (seconds) of the requests between two cumulative
 * histograms, linear inside its bucket (as Prometheus' histogram_quantile);
 * -1 when there was none. */
static double http_p99(const uint64_t *before, const uint64_t *after) {
  uint64_t total = after[METRICS_BUCKETS - 1] - before[METRICS_BUCKETS - 1];
  if (!total) return -1;
  double want = 0.99 * (double)total, lo = 0, below = 0;
  for (unsigned k = 0; k < METRICS_BUCKETS - 1; k++) {
    double c = (double)(after[k] - before[k]), hi = (double)metrics_bucket_ns[k] / 1e9;
    if (c >= want) return lo + (hi - lo) * (c > below ? (want - below) / (c - below) : 1);
    below = c;
    lo = hi;
  }
  return lo; /* past the last finite bound */
}

static void http_sample(http_t *h) {
  metrics_t *sp = http_metrics_sum(h->n);
  if (!sp) return;
  uint64_t requests, errors, cum[METRICS_BUCKETS];
  http_totals(sp, &requests, &errors, cum);
  double t = (double)(clock_mono_ms() - h->n->started_ms) / 1000.0;
  pthread_mutex_lock(&h->lock);
  if (h->prev_t > 0 && t > h->prev_t) {
    double dt = t - h->prev_t;
    http_sample_t *s = &h->hist[h->head];
    s->t = t;
    s->rps = (double)(requests - h->prev_requests) / dt;
    s->p99 = http_p99(h->prev_cum, cum);
    s->fill_rate = (double)(sp->fill_entries - h->prev_fill) / dt;
    h->head = (h->head + 1) % HTTP_HISTORY;
    if (h->nhist < HTTP_HISTORY) h->nhist++;
  }
  h->prev_t = t;
  h->prev_requests = requests;
  h->prev_fill = sp->fill_entries;
  memcpy(h->prev_cum, cum, sizeof cum);
  pthread_mutex_unlock(&h->lock);
  free(sp);
}

static void *http_sampler_main(void *arg) {
  http_t *h = arg;
  pthread_mutex_lock(&h->lock);
  while (!h->stop) {
    pthread_mutex_unlock(&h->lock);
    http_sample(h);
    pthread_mutex_lock(&h->lock);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (int64_t)HTTP_SAMPLE_MS * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    while (!h->stop && pthread_cond_timedwait(&h->cond, &h->lock, &ts) == 0) {
    }
  }
  pthread_mutex_unlock(&h->lock);
  return NULL;
}

/* Replication and rebalancing: what the loops' fills have left. */
static void http_metrics_repl(node_t *n, const metrics_t *sp, http_buf_t *b) {
  http_printf(b,
      "# HELP grid_replication_pending_writes Writes this node leads that wait for their "
      "backups' acknowledgement.\n# TYPE grid_replication_pending_writes gauge\n"
      "grid_replication_pending_writes %llu\n"
      "# HELP grid_rebalance_fills Copies on other nodes this node is filling now "
      "(rebalancing, a new backup).\n# TYPE grid_rebalance_fills gauge\ngrid_rebalance_fills %llu\n"
      "# HELP grid_rebalance_entries_left Entries those fills have still to send.\n"
      "# TYPE grid_rebalance_entries_left gauge\ngrid_rebalance_entries_left %llu\n"
      "# HELP grid_rebalance_bytes_left Their bytes, as the store counts entries.\n"
      "# TYPE grid_rebalance_bytes_left gauge\ngrid_rebalance_bytes_left %llu\n"
      "# HELP grid_rebalance_entries_sent_total Entries sent to copies being filled "
      "(rate(): the fill rate).\n# TYPE grid_rebalance_entries_sent_total counter\n"
      "grid_rebalance_entries_sent_total %llu\n"
      "# HELP grid_rebalance_bytes_sent_total Bytes of those fills on the wire.\n"
      "# TYPE grid_rebalance_bytes_sent_total counter\ngrid_rebalance_bytes_sent_total %llu\n"
      "# HELP grid_rebalance_bytes_received_total Bytes of fills of this node's copies.\n"
      "# TYPE grid_rebalance_bytes_received_total counter\n"
      "grid_rebalance_bytes_received_total %llu\n",
      (unsigned long long)sp->repl_pending, (unsigned long long)sp->fills,
      (unsigned long long)sp->fill_entries_left, (unsigned long long)sp->fill_bytes_left,
      (unsigned long long)sp->fill_entries, (unsigned long long)sp->fill_bytes,
      (unsigned long long)atomic_load(&n->fill_bytes_in));
}

/* Requests, errors and latency by op, summed over the loops. */
static void http_metrics_ops(const metrics_t *sp, http_buf_t *b) {
  http_printf(b, "# HELP grid_requests_total Requests served by this node's loops, by op.\n"
                 "# TYPE grid_requests_total counter\n");
  for (unsigned op = 0; op < OP_NUMBER_MAX; op++)
    if (sp->ops[op])
      http_printf(b, "grid_requests_total{op=\"%s\"} %llu\n", http_op_label(op),
                  (unsigned long long)sp->ops[op]);
  http_printf(b, "# HELP grid_errors_total Requests answered with an error, by op and code.\n"
                 "# TYPE grid_errors_total counter\n");
  for (unsigned op = 0; op < OP_NUMBER_MAX; op++)
    for (unsigned k = 1; k < METRICS_CODES; k++)
      if (sp->errors[op][k])
        http_printf(b, "grid_errors_total{op=\"%s\",code=\"%s\"} %llu\n", http_op_label(op),
                    grid_err_name(-(int)k), (unsigned long long)sp->errors[op][k]);
  http_printf(b, "# HELP grid_request_duration_seconds From a request's arrival to its reply, "
                 "by op.\n# TYPE grid_request_duration_seconds histogram\n");
  for (unsigned op = 0; op < OP_NUMBER_MAX; op++) {
    if (!sp->ops[op]) continue;
    uint64_t cum = 0;
    for (unsigned k = 0; k < METRICS_BUCKETS; k++) {
      cum += sp->bucket[op][k];
      if (k == METRICS_BUCKETS - 1)
        http_printf(b, "grid_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n",
                    http_op_label(op), (unsigned long long)cum);
      else
        http_printf(b, "grid_request_duration_seconds_bucket{op=\"%s\",le=\"%g\"} %llu\n",
                    http_op_label(op), (double)metrics_bucket_ns[k] / 1e9,
                    (unsigned long long)cum);
    }
    http_printf(b, "grid_request_duration_seconds_sum{op=\"%s\"} %.9f\n", http_op_label(op),
                (double)sp->sum_ns[op] / 1e9);
    http_printf(b, "grid_request_duration_seconds_count{op=\"%s\"} %llu\n", http_op_label(op),
                (unsigned long long)cum);
  }
}

/* Entries per cache, memory, connections. */
static void http_metrics_store(node_t *n, http_buf_t *b) {
  http_printf(b, "# HELP grid_memory_used_bytes Memory the store accounts for.\n"
                 "# TYPE grid_memory_used_bytes gauge\ngrid_memory_used_bytes %lld\n"
                 "# HELP grid_memory_limit_bytes memory_bytes_max.\n"
                 "# TYPE grid_memory_limit_bytes gauge\ngrid_memory_limit_bytes %lld\n"
                 "# HELP grid_connections Client connections open.\n"
                 "# TYPE grid_connections gauge\ngrid_connections %llu\n",
              (long long)store_memory_bytes(n->store), (long long)store_memory_bytes_max(n->store),
              (unsigned long long)atomic_load(&n->connections));
  size_t count = store_cache_list(n->store, NULL, 0);
  if (count > HTTP_CACHES_MAX) count = HTTP_CACHES_MAX;
  store_cache_cfg_t *cfgs = calloc(count ? count : 1, sizeof *cfgs);
  if (!cfgs) return;
  count = store_cache_list(n->store, cfgs, count);
  if (count > HTTP_CACHES_MAX) count = HTTP_CACHES_MAX;
  uint64_t *bytes = calloc(count ? count : 1, sizeof *bytes);
  if (!bytes) {
    free(cfgs);
    return;
  }
  http_printf(b, "# HELP grid_cache_entries Entries of each cache held on this node (every "
                 "copy: primaries and backups).\n# TYPE grid_cache_entries gauge\n");
  for (size_t i = 0; i < count; i++) {
    store_cache_t *c = store_cache_acquire(n->store, cfgs[i].name, strlen(cfgs[i].name));
    if (!c) continue;
    http_printf(b, "grid_cache_entries{cache=\"%s\"} %llu\n", cfgs[i].name,
                (unsigned long long)store_cache_size(c));
    bytes[i] = store_cache_bytes(c);
    store_cache_release(n->store, c);
  }
  http_printf(b, "# HELP grid_cache_bytes Memory of each cache's entries on this node (keys, "
                 "values, per-entry overhead).\n# TYPE grid_cache_bytes gauge\n");
  for (size_t i = 0; i < count; i++)
    http_printf(b, "grid_cache_bytes{cache=\"%s\"} %llu\n", cfgs[i].name,
                (unsigned long long)bytes[i]);
  free(bytes);
  free(cfgs);
}

/* The map: epoch, partitions by state per placement group, primaries per
 * node; ZooKeeper and the lease. */
static void http_metrics_cluster(node_t *n, http_buf_t *b) {
  if (!n->cluster) return;
  Grid__ClusterStatus st = GRID__CLUSTER_STATUS__INIT;
  cluster_status(n->cluster, &st);
  http_printf(b, "# HELP grid_zk_connected Whether this node's ZooKeeper session is up.\n"
                 "# TYPE grid_zk_connected gauge\ngrid_zk_connected %d\n"
                 "# HELP grid_serving Whether this node holds its lease and serves.\n"
                 "# TYPE grid_serving gauge\ngrid_serving %d\n"
                 "# HELP grid_nodes_alive Nodes with a live ZooKeeper session.\n"
                 "# TYPE grid_nodes_alive gauge\ngrid_nodes_alive %zu\n",
              st.zk_connected ? 1 : 0, cluster_serving(n->cluster) ? 1 : 0, st.n_alive);
  cluster_status_free(&st);
  pmap_t m;
  pmap_init(&m);
  if (cluster_map_copy(n->cluster, &m) != 0) return;
  http_printf(b, "# HELP grid_map_epoch The partition map's epoch this node acts on.\n"
                 "# TYPE grid_map_epoch gauge\ngrid_map_epoch %llu\n",
              (unsigned long long)m.epoch);
  http_printf(b, "# HELP grid_coordinator Whether this node is the coordinator (computes "
                 "the maps).\n# TYPE grid_coordinator gauge\ngrid_coordinator %d\n",
              strcmp(m.coordinator, n->node_id) == 0);
  http_printf(b, "# HELP grid_partition_copies Copies of partitions by state, per placement "
                 "group (grid_cache_group names each cache's): OWNING in sync, MOVING being "
                 "filled; partitions HANDOFF (primary handing over), LOST (no copy left), "
                 "WAITING (led only from a node that is gone).\n"
                 "# TYPE grid_partition_copies gauge\n");
  uint32_t primaries[PMAP_NODES_MAX] = {0}, backups[PMAP_NODES_MAX] = {0};
  for (size_t g = 0; g < m.ngroups; g++) {
    pmap_counts_t k;
    pmap_count(&m, &m.groups[g], &k, primaries, backups);
    const char *gn = m.groups[g].name;
    http_printf(b, "grid_partition_copies{group=\"%s\",state=\"OWNING\"} %u\n"
                   "grid_partition_copies{group=\"%s\",state=\"MOVING\"} %u\n"
                   "grid_partition_copies{group=\"%s\",state=\"HANDOFF\"} %u\n"
                   "grid_partition_copies{group=\"%s\",state=\"LOST\"} %u\n"
                   "grid_partition_copies{group=\"%s\",state=\"WAITING\"} %u\n",
                gn, k.owning, gn, k.moving, gn, k.handoff, gn, k.lost, gn, k.waiting);
  }
  http_printf(b, "# HELP grid_cache_group The placement group of each cache (1).\n"
                 "# TYPE grid_cache_group gauge\n");
  for (size_t i = 0; i < m.ncaches && i < HTTP_CACHES_MAX; i++)
    http_printf(b, "grid_cache_group{cache=\"%s\",group=\"%s\"} 1\n", m.caches[i].name,
                m.groups[m.caches[i].group].name);
  http_printf(b, "# HELP grid_primaries Partitions each node leads, every group.\n"
                 "# TYPE grid_primaries gauge\n");
  for (size_t i = 0; i < m.nnodes; i++)
    http_printf(b, "grid_primaries{node=\"%s\"} %u\n", m.nodes[i].id, primaries[i]);
  http_printf(b, "# HELP grid_backups Other copies each node holds (in sync or being "
                 "filled), every group.\n# TYPE grid_backups gauge\n");
  for (size_t i = 0; i < m.nnodes; i++)
    http_printf(b, "grid_backups{node=\"%s\"} %u\n", m.nodes[i].id, backups[i]);
  pmap_free(&m);
}

static char *http_metrics(node_t *n, size_t *len) {
  http_buf_t b = {0};
  http_printf(&b, "# HELP grid_build_info The build: its version.\n"
                  "# TYPE grid_build_info gauge\ngrid_build_info{version=\"%s\",node=\"%s\"} 1\n",
              GRID_VERSION_STRING, n->node_id);
  http_printf(&b, "# HELP grid_uptime_seconds Since the node started.\n"
                  "# TYPE grid_uptime_seconds gauge\ngrid_uptime_seconds %.3f\n",
              (double)(clock_mono_ms() - n->started_ms) / 1000.0);
  metrics_t *sp = http_metrics_sum(n);
  if (!sp) b.failed = 1;
  if (sp) http_metrics_ops(sp, &b);
  if (sp) http_metrics_repl(n, sp, &b);
  free(sp);
  http_metrics_store(n, &b);
  http_metrics_cluster(n, &b);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* ---- /api/status, /api/load: JSON for the dashboard ----------------------------- */

static void http_json_str(http_buf_t *b, const char *s) {
  http_printf(b, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') http_printf(b, "\\%c", *p);
    else if (*p < 0x20) http_printf(b, "\\u%04x", *p);
    else http_printf(b, "%c", *p);
  }
  http_printf(b, "\"");
}

static void http_json_counts(http_buf_t *b, const pmap_group_t *g, const pmap_counts_t *k,
                             uint32_t caches) {
  http_printf(b, ",\"caches\":%u,\"partitions\":%u,\"owning\":%u,\"moving\":%u,"
                 "\"handoff\":%u,\"lost\":%u,\"waiting\":%u}", caches, g->partitions,
              k->owning, k->moving, k->handoff, k->lost, k->waiting);
}

/* Each partition of g in one number for the dashboard's cells: 0 in sync,
 * 1 a copy being filled, 2 its primary handing over, 3 lost, 4 led only
 * from a node that is gone. */
static int http_cell_state(const pmap_t *m, const pmap_group_t *g, uint32_t p) {
  int s0, cell = 0;
  int prim = pmap_copy_at(g, p, 0, &s0);
  if (s0 == PMAP_LOST || prim < 0) return 3;
  if (s0 == PMAP_HANDOFF) cell = 2;
  if ((size_t)prim < m->nnodes && m->nodes[prim].absent) return 4;
  for (uint32_t i = 0; i < g->slots && !cell; i++) {
    int s;
    if (pmap_copy_at(g, p, i, &s) >= 0 && s == PMAP_MOVING) cell = 1;
  }
  return cell;
}

/* The map: what gridctl status --json prints (same keys and values, from
 * this node's view), then what the dashboard draws: each group's
 * partitions (primary node index, cell state). */
static void http_status_map(const pmap_t *m, http_buf_t *b) {
  pmap_counts_t *k = calloc(m->ngroups ? m->ngroups : 1, sizeof *k);
  uint32_t *caches = calloc(m->ngroups ? m->ngroups : 1, sizeof *caches);
  if (!k || !caches) {
    free(k);
    free(caches);
    b->failed = 1;
    return;
  }
  for (size_t g = 0; g < m->ngroups; g++) pmap_count(m, &m->groups[g], &k[g], NULL, NULL);
  for (size_t i = 0; i < m->ncaches; i++) caches[m->caches[i].group]++;
  http_printf(b, "],\"caches\":[");
  for (size_t i = 0; i < m->ncaches; i++) {
    const pmap_group_t *g = &m->groups[m->caches[i].group];
    http_printf(b, "%s{\"name\":", i ? "," : "");
    http_json_str(b, m->caches[i].name);
    http_printf(b, ",\"group\":");
    http_json_str(b, g->name);
    http_json_counts(b, g, &k[m->caches[i].group], 1);
  }
  http_printf(b, "],\"groups\":[");
  for (size_t i = 0; i < m->ngroups; i++) {
    http_printf(b, "%s{\"name\":", i ? "," : "");
    http_json_str(b, m->groups[i].name);
    http_printf(b, ",\"group\":");
    http_json_str(b, m->groups[i].name);
    http_json_counts(b, &m->groups[i], &k[i], caches[i]);
  }
  free(k);
  free(caches);
}

static void http_status_cells(const pmap_t *m, http_buf_t *b) {
  http_printf(b, ",\"partition_map\":[");
  for (size_t i = 0; i < m->ngroups; i++) {
    const pmap_group_t *g = &m->groups[i];
    http_printf(b, "%s{\"group\":", i ? "," : "");
    http_json_str(b, g->name);
    http_printf(b, ",\"copies\":%u,\"primary\":[", g->slots);
    for (uint32_t p = 0; p < g->partitions; p++) {
      int s;
      http_printf(b, p ? ",%d" : "%d", pmap_copy_at(g, p, 0, &s));
    }
    http_printf(b, "],\"state\":[");
    for (uint32_t p = 0; p < g->partitions; p++)
      http_printf(b, p ? ",%d" : "%d", http_cell_state(m, g, p));
    http_printf(b, "]}");
  }
  http_printf(b, "]");
}

static char *http_api_status(node_t *n, size_t *len) {
  http_buf_t b = {0};
  Grid__ClusterStatus st = GRID__CLUSTER_STATUS__INIT;
  pmap_t m;
  pmap_init(&m);
  int have_map = 0;
  if (n->cluster) {
    cluster_status(n->cluster, &st);
    have_map = cluster_map_copy(n->cluster, &m) == 0 && m.epoch > 0;
  }
  http_printf(&b, "{\"cluster\":");
  http_json_str(&b, st.cluster ? st.cluster : "");
  http_printf(&b, ",\"node\":");
  http_json_str(&b, n->node_id);
  http_printf(&b, ",\"coordinator\":");
  http_json_str(&b, have_map ? m.coordinator : "");
  http_printf(&b, ",\"epoch\":%llu,\"zk_connected\":%s,\"nodes\":[",
              (unsigned long long)(have_map ? m.epoch : 0), st.zk_connected ? "true" : "false");
  /* The map's nodes first, then live ones it does not have yet. */
  uint32_t primaries[PMAP_NODES_MAX] = {0}, backups[PMAP_NODES_MAX] = {0};
  for (size_t g = 0; have_map && g < m.ngroups; g++) {
    pmap_counts_t k;
    pmap_count(&m, &m.groups[g], &k, primaries, backups);
  }
  size_t listed = 0;
  for (size_t i = 0; have_map && i < m.nnodes; i++) {
    int alive = 0;
    for (size_t j = 0; j < st.n_alive; j++) alive |= !strcmp(st.alive[j]->id, m.nodes[i].id);
    http_printf(&b, "%s{\"id\":", listed++ ? "," : "");
    http_json_str(&b, m.nodes[i].id);
    http_printf(&b, ",\"addr\":");
    http_json_str(&b, m.nodes[i].addr);
    http_printf(&b, ",\"zone\":");
    http_json_str(&b, m.nodes[i].zone);
    http_printf(&b, ",\"http\":");
    http_json_str(&b, m.nodes[i].http_addr);
    http_printf(&b, ",\"alive\":%s,\"primaries\":%u,\"backups\":%u}",
                alive ? "true" : "false", primaries[i], backups[i]);
  }
  for (size_t j = 0; j < st.n_alive; j++) {
    if (have_map && pmap_node_index(&m, st.alive[j]->id) >= 0) continue;
    http_printf(&b, "%s{\"id\":", listed++ ? "," : "");
    http_json_str(&b, st.alive[j]->id);
    http_printf(&b, ",\"addr\":");
    http_json_str(&b, st.alive[j]->addr ? st.alive[j]->addr : "");
    http_printf(&b, ",\"zone\":");
    http_json_str(&b, st.alive[j]->zone ? st.alive[j]->zone : "");
    http_printf(&b, ",\"http\":");
    http_json_str(&b, st.alive[j]->http_addr ? st.alive[j]->http_addr : "");
    http_printf(&b, ",\"alive\":true,\"primaries\":0,\"backups\":0}");
  }
  if (have_map) http_status_map(&m, &b);
  else http_printf(&b, "],\"caches\":[],\"groups\":[");
  http_printf(&b, "],\"map\":{\"bytes\":%llu,\"znodes\":%u,\"znode_bytes\":%u,"
                  "\"znode_bytes_max\":%u,\"map_bytes_max\":%llu}",
              (unsigned long long)st.map_bytes, st.map_znodes, st.map_znode_bytes,
              st.map_znode_bytes_max, (unsigned long long)st.map_bytes_max);
  http_printf(&b, ",\"serving\":%s,\"http\":",
              !n->cluster || cluster_serving(n->cluster) ? "true" : "false");
  http_json_str(&b, n->advertise_http);
  if (have_map) http_status_cells(&m, &b);
  http_printf(&b, "}\n");
  if (n->cluster) cluster_status_free(&st);
  pmap_free(&m);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* This node's load for the dashboard's sparklines: counters and the
 * latency histogram of every request (the page takes differences). */
static char *http_api_load(http_t *h, size_t *len) {
  node_t *n = h->n;
  metrics_t *sp = http_metrics_sum(n);
  if (!sp) return NULL;
  http_buf_t b = {0};
  uint64_t requests, errors, cum[METRICS_BUCKETS];
  http_totals(sp, &requests, &errors, cum);
  http_printf(&b, "{\"node\":");
  http_json_str(&b, n->node_id);
  http_printf(&b, ",\"serving\":%s,\"uptime_s\":%.3f,\"requests\":%llu,\"errors\":%llu,"
                  "\"le\":[", !n->cluster || cluster_serving(n->cluster) ? "true" : "false",
              (double)(clock_mono_ms() - n->started_ms) / 1000.0,
              (unsigned long long)requests, (unsigned long long)errors);
  for (unsigned k = 0; k + 1 < METRICS_BUCKETS; k++)
    http_printf(&b, k ? ",%g" : "%g", (double)metrics_bucket_ns[k] / 1e9);
  http_printf(&b, "],\"buckets\":[");
  for (unsigned k = 0; k < METRICS_BUCKETS; k++)
    http_printf(&b, k ? ",%llu" : "%llu", (unsigned long long)cum[k]);
  /* The last seconds, oldest first: [uptime, requests/s, p99 s (-1: none),
   * fill entries/s]. */
  http_printf(&b, "],\"history\":[");
  pthread_mutex_lock(&h->lock);
  for (size_t i = 0; i < h->nhist; i++) {
    const http_sample_t *s = &h->hist[(h->head + HTTP_HISTORY - h->nhist + i) % HTTP_HISTORY];
    http_printf(&b, "%s[%.3f,%.1f,%.6f,%.1f]", i ? "," : "", s->t, s->rps, s->p99,
                s->fill_rate);
  }
  pthread_mutex_unlock(&h->lock);
  http_printf(&b, "],\"memory_used\":%lld,\"memory_limit\":%lld,\"connections\":%llu,"
                  "\"entries\":%llu,\"repl_pending\":%llu,\"fills\":%llu,"
                  "\"fill_entries_left\":%llu,\"fill_bytes_left\":%llu,"
                  "\"fill_entries_sent\":%llu,\"fill_bytes_sent\":%llu}\n",
              (long long)store_memory_bytes(n->store), (long long)store_memory_bytes_max(n->store),
              (unsigned long long)atomic_load(&n->connections),
              (unsigned long long)store_entries(n->store), (unsigned long long)sp->repl_pending,
              (unsigned long long)sp->fills, (unsigned long long)sp->fill_entries_left,
              (unsigned long long)sp->fill_bytes_left, (unsigned long long)sp->fill_entries,
              (unsigned long long)sp->fill_bytes);
  free(sp);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* ---- the server --------------------------------------------------------------- */

static enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, char *body,
                                  size_t len, const char *type) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", "no-store");
  /* The dashboard of one node reads every node's /api/load. */
  if (!strncmp(type, "application/json", 16))
    MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result http_text(struct MHD_Connection *conn, unsigned status, const char *text) {
  char *body = strdup(text);
  return body ? http_reply(conn, status, body, strlen(body), "text/plain; charset=utf-8")
              : MHD_NO;
}

/* Whether the node serves its partitions, with the reason when not. */
static int http_ready(node_t *n, char *why, size_t len) {
  if (!n->cluster) return 1;
  if (!cluster_serving(n->cluster)) {
    snprintf(why, len, "not serving: no partition map read yet, or no lease (ZooKeeper)\n");
    return 0;
  }
  return 1;
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload, size_t *upload_len, void **state) {
  (void)version;
  (void)upload;
  http_t *h = cls;
  if (!*state) { /* headers only so far: answer when the request is whole */
    *state = h;
    return MHD_YES;
  }
  if (*upload_len) { /* a body is not wanted: dropped */
    *upload_len = 0;
    return MHD_YES;
  }
  if (strcmp(method, "GET") && strcmp(method, "HEAD"))
    return http_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
  if (!strcmp(url, "/metrics")) {
    size_t len;
    char *body = http_metrics(h->n, &len);
    if (!body) return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return http_reply(conn, MHD_HTTP_OK, body, len, "text/plain; version=0.0.4; charset=utf-8");
  }
  if (!strcmp(url, "/api/status") || !strcmp(url, "/api/load")) {
    size_t len;
    char *body = url[5] == 's' ? http_api_status(h->n, &len) : http_api_load(h, &len);
    if (!body) return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return http_reply(conn, MHD_HTTP_OK, body, len, "application/json");
  }
  if (!strcmp(url, "/") || !strcmp(url, "/index.html")) {
    char *body = malloc(http_dashboard_len);
    if (!body) return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    memcpy(body, http_dashboard, http_dashboard_len);
    return http_reply(conn, MHD_HTTP_OK, body, http_dashboard_len, "text/html; charset=utf-8");
  }
  if (!strcmp(url, "/health")) return http_text(conn, MHD_HTTP_OK, "ok\n");
  if (!strcmp(url, "/ready")) {
    char why[160];
    return http_ready(h->n, why, sizeof why) ? http_text(conn, MHD_HTTP_OK, "ready\n")
                                             : http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
  }
  return http_text(conn, MHD_HTTP_NOT_FOUND,
                   "not found: this port serves / (the dashboard), /metrics, /api/status, "
                   "/api/load, /health and /ready\n");
}

static void http_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char line[256];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t l = strlen(line);
  while (l && (line[l - 1] == '\n' || line[l - 1] == '"')) line[--l] = '\0';
  LOG_D("http", "\"%s\"", line);
}

int http_start(node_t *n, http_t **out, char *err, size_t err_len) {
  const config_t *c = &n->cfg;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (inet_pton(AF_INET, c->bind, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
    ss.ss_family = AF_INET;
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->http_port);
  } else if (inet_pton(AF_INET6, c->bind, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    ss.ss_family = AF_INET6;
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)c->http_port);
  } else {
    snprintf(err, err_len, "http_port: bind address \"%s\" is not an IPv4 or IPv6 address",
             c->bind);
    return GRID_ECONFIG;
  }
  http_t *h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  h->n = n;
  pthread_mutex_init(&h->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cond, &ca);
  pthread_condattr_destroy(&ca);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                   (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  unsigned timeout_s = (unsigned)((c->http_timeout_ms + 999) / 1000);
  h->d = MHD_start_daemon(flags, (uint16_t)c->http_port, NULL, NULL, http_handler, h,
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->http_connections_max,
                          MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
                          MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)c->http_request_bytes_max,
                          MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL, MHD_OPTION_END);
  if (!h->d) {
    snprintf(err, err_len, "http_port %s:%lld: cannot listen (in use, or not allowed)", c->bind,
             (long long)c->http_port);
    http_stop(h);
    return GRID_ECONN;
  }
  h->sampling = pthread_create(&h->sampler, NULL, http_sampler_main, h) == 0;
  if (!h->sampling) LOG_W("http", "\"cannot start the sampler: the dashboard has no history\"");
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  n->http_port = info ? info->port : (int)c->http_port;
  *out = h;
  return 0;
}

void http_stop(http_t *h) {
  if (!h) return;
  if (h->d) MHD_stop_daemon(h->d);
  if (h->sampling) {
    pthread_mutex_lock(&h->lock);
    h->stop = 1;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->sampler, NULL);
  }
  pthread_cond_destroy(&h->cond);
  pthread_mutex_destroy(&h->lock);
  free(h);
}
