#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
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

struct http {
  struct MHD_Daemon *d;
  node_t *n;
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

/* Requests, errors and latency by op, summed over the loops. */
static void http_metrics_ops(node_t *n, http_buf_t *b) {
  metrics_t *sp = calloc(1, sizeof *sp);
  if (!sp) {
    b->failed = 1;
    return;
  }
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
  }
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
  free(sp);
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
  http_printf(b, "# HELP grid_cache_entries Entries of each cache held on this node (every "
                 "copy: primaries and backups).\n# TYPE grid_cache_entries gauge\n");
  for (size_t i = 0; i < count; i++) {
    store_cache_t *c = store_cache_acquire(n->store, cfgs[i].name, strlen(cfgs[i].name));
    if (!c) continue;
    http_printf(b, "grid_cache_entries{cache=\"%s\"} %llu\n", cfgs[i].name,
                (unsigned long long)store_cache_size(c));
    store_cache_release(n->store, c);
  }
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
  static const char *const names[] = {"NONE", "OWNING", "MOVING", "LOST", "HANDOFF"};
  http_printf(b, "# HELP grid_partition_copies Copies of partitions by state, per placement "
                 "group (its caches share it).\n# TYPE grid_partition_copies gauge\n");
  uint32_t primaries[PMAP_NODES_MAX] = {0};
  for (size_t g = 0; g < m.ngroups; g++) {
    const pmap_group_t *pg = &m.groups[g];
    uint64_t by[5] = {0};
    for (uint32_t p = 0; p < pg->partitions; p++) {
      int prim = pmap_primary(pg, p);
      if (prim >= 0 && (size_t)prim < PMAP_NODES_MAX) primaries[prim]++;
      int any = 0;
      for (uint32_t k = 0; k < pg->slots; k++) {
        int s;
        if (pmap_copy_at(pg, p, k, &s) < 0) continue;
        if (s > 0 && s < 5) by[s]++;
        any = 1;
      }
      if (!any) by[3]++; /* no copy at all: lost */
    }
    for (int s = 1; s < 5; s++)
      http_printf(b, "grid_partition_copies{group=\"%s\",state=\"%s\"} %llu\n", pg->name,
                  names[s], (unsigned long long)by[s]);
  }
  http_printf(b, "# HELP grid_primaries Partitions each node leads, every group.\n"
                 "# TYPE grid_primaries gauge\n");
  for (size_t i = 0; i < m.nnodes; i++)
    http_printf(b, "grid_primaries{node=\"%s\"} %u\n", m.nodes[i].id, primaries[i]);
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
  http_metrics_ops(n, &b);
  http_metrics_store(n, &b);
  http_metrics_cluster(n, &b);
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
  if (!strcmp(url, "/health")) return http_text(conn, MHD_HTTP_OK, "ok\n");
  if (!strcmp(url, "/ready")) {
    char why[160];
    return http_ready(h->n, why, sizeof why) ? http_text(conn, MHD_HTTP_OK, "ready\n")
                                             : http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
  }
  return http_text(conn, MHD_HTTP_NOT_FOUND,
                   "not found: this port serves /metrics, /health and /ready\n");
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
    free(h);
    return GRID_ECONN;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  n->http_port = info ? info->port : (int)c->http_port;
  *out = h;
  return 0;
}

void http_stop(http_t *h) {
  if (!h) return;
  MHD_stop_daemon(h->d);
  free(h);
}
