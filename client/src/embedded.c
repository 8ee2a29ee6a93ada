/*
 * embedded: the node inside the application's process. The only file of
 * the client that includes the node's headers (docs/architecture.md): the
 * rest of the client sees an embedded_t and these calls.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "config.h"
#include "log.h"
#include "node.h"
#include "ops.h"
#include "store.h"

struct embedded {
  node_t *node;
};

int embedded_open(const grid_options_t *opts, embedded_t **out, char *advertise,
                  size_t advertise_len) {
  config_t cfg;
  config_defaults(&cfg);
  cfg.listen = 0; /* an embedded node listens only when its config says so */
  char err[512];
  if (opts && opts->config_path &&
      config_load_file(&cfg, opts->config_path, err, sizeof err) != 0) {
    LOG_E("client", "\"embedded config refused\" reason=\"%s\"", err);
    return GRID_ECONFIG;
  }
  if (opts && opts->config_text &&
      config_apply_text(&cfg, opts->config_text, "config_text", err, sizeof err) != 0) {
    LOG_E("client", "\"embedded config refused\" reason=\"%s\"", err);
    return GRID_ECONFIG;
  }
  embedded_t *e = calloc(1, sizeof *e);
  if (!e) return GRID_ENOMEM;
  int rc = node_start(&cfg, &e->node, err, sizeof err);
  if (rc != 0) {
    LOG_E("client", "\"embedded node did not start\" reason=\"%s\"", err);
    free(e);
    return rc;
  }
  advertise[0] = '\0';
  if (e->node->cluster) snprintf(advertise, advertise_len, "%s", e->node->advertise);
  *out = e;
  return 0;
}

void embedded_close(embedded_t *e) {
  if (!e) return;
  node_stop(e->node);
  free(e);
}

void embedded_call(embedded_t *e, const Grid__Request *rq, Grid__Reply *rp, arena_t *a) {
  ops_execute(e->node, NULL, rq, rp, a);
}

static void *embedded_malloc_cb(void *ctx, size_t n) {
  (void)ctx;
  return malloc(n);
}

int embedded_get(embedded_t *e, const char *cache, const void *key, size_t key_len,
                 void **value, size_t *value_len, uint64_t *version) {
  node_t *n = e->node;
  int rc = store_check_sizes(n->store, key_len, 0);
  if (rc != 0) return rc;
  store_cache_t *c = store_cache_acquire(n->store, cache, strlen(cache));
  if (!c) return GRID_ENOCACHE;
  store_key_t k;
  store_key_init(c, key, key_len, &k);
  rc = store_get(c, &k, STORE_NOW_LAZY, embedded_malloc_cb, NULL, value, value_len, version);
  store_cache_release(n->store, c);
  atomic_fetch_add_explicit(&n->ops, 1, memory_order_relaxed);
  return rc;
}
