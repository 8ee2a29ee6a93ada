/*
 * The near cache (issue 10): a handle keeps what it read from other nodes
 * and serves it again without asking them; a write through another handle
 * reaches it through the change stream (it then reads the new value), a
 * write through the same handle is read back at once, versions read never
 * go back, also while a node is killed with kill -9. Three gridd processes
 * and a real ZooKeeper.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "grid.h"
#include "harness.h"

#define KEYS 300
#define CACHE "near"
#define WAIT_STEPS 1000 /* x 5 ms: a change must reach the near cache by then */

static harness_zk_t zk;
static harness_node_t nodes[3];

static uint64_t ops_of_nodes(void) {
  uint64_t total = 0;
  for (int i = 0; i < 3; i++) {
    if (!nodes[i].pid) continue;
    grid_t *h;
    grid_options_t o = {.timeout_ms = 5000};
    CHECK_RC(grid_open(nodes[i].uri, &o, &h), 0);
    grid_stats_t st;
    CHECK_RC(grid_stats(h, &st), 0);
    total += st.ops;
    grid_close(h);
  }
  return total;
}

static void key_of(int i, char *k, size_t n) { snprintf(k, n, "near-%d", i); }

/* Reads key until it holds want (the change reached the near cache). */
static int64_t wait_for(grid_t *g, const char *key, const char *want) {
  int64_t t0 = clock_mono_ms();
  for (int i = 0; i < WAIT_STEPS; i++) {
    grid_value_t v;
    CHECK_RC(grid_get(g, CACHE, key, strlen(key), &v), 0);
    int same = strcmp(v.data, want) == 0;
    grid_value_free(&v);
    if (same) return clock_mono_ms() - t0;
    harness_sleep_ms(5);
  }
  CHECK(!"the change never reached the near cache");
  return -1;
}

typedef struct writer {
  grid_t *g;
  _Atomic int stop;
  _Atomic uint64_t written;
} writer_t;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  char val[32];
  for (uint64_t i = 1; !atomic_load(&w->stop); i++) {
    snprintf(val, sizeof val, "w-%llu", (unsigned long long)i);
    if (grid_put(w->g, CACHE, "near-hot", 8, val, strlen(val), 0, NULL) == 0)
      atomic_store(&w->written, i);
    harness_sleep_ms(1);
  }
  return NULL;
}

int main(void) {
  harness_zk_start(&zk);
  const char *settings[] = {"cluster_min_nodes=3", "zk_session_timeout_ms=1000",
                            "lost_grace_ms=1000", NULL};
  for (int i = 0; i < 3; i++) harness_start_cluster_node(&nodes[i], &zk, "near", i, settings);
  grid_options_t no = {.timeout_ms = 10000, .near_cache_bytes = 1 << 20};
  grid_options_t o = {.timeout_ms = 10000};
  grid_t *a, *b;
  CHECK_RC(grid_open(nodes[0].uri, &no, &a), 0);
  CHECK_RC(grid_open(nodes[1].uri, &o, &b), 0);
  grid_cache_config_t cc = {.name = CACHE, .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(b, &cc), 0);
  char key[32], val[32];
  for (int i = 0; i < KEYS; i++) {
    key_of(i, key, sizeof key);
    snprintf(val, sizeof val, "v0-%d", i);
    CHECK_RC(grid_put(b, CACHE, key, strlen(key), val, strlen(val), 0, NULL), 0);
  }
  harness_wait_settled(nodes[0].port, CACHE, 3);

  fprintf(stderr, "-- a second read of each key is served near: the nodes see none\n");
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < KEYS; i++) { /* the first round fills */
      key_of(i, key, sizeof key);
      grid_value_t v;
      CHECK_RC(grid_get(a, CACHE, key, strlen(key), &v), 0);
      grid_value_free(&v);
    }
  }
  uint64_t before = ops_of_nodes();
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < KEYS; i++) {
      key_of(i, key, sizeof key);
      snprintf(val, sizeof val, "v0-%d", i);
      grid_value_t v;
      CHECK_RC(grid_get(a, CACHE, key, strlen(key), &v), 0);
      CHECK_STR(v.data, val);
      grid_value_free(&v);
    }
  }
  /* The STATS calls of ops_of_nodes only (and peers' own traffic), not
   * 900 gets. */
  CHECK(ops_of_nodes() - before < 100);

  fprintf(stderr, "-- a write through another handle reaches the near cache\n");
  int64_t worst = 0;
  for (int i = 0; i < 50; i++) {
    key_of(i, key, sizeof key);
    snprintf(val, sizeof val, "v1-%d", i);
    CHECK_RC(grid_put(b, CACHE, key, strlen(key), val, strlen(val), 0, NULL), 0);
    int64_t ms = wait_for(a, key, val);
    if (ms > worst) worst = ms;
  }
  fprintf(stderr, "   (longest wait %lld ms: information, not asserted)\n", (long long)worst);
  CHECK_RC(grid_delete(b, CACHE, "near-0", 6), 0);
  for (int i = 0; i < WAIT_STEPS; i++) {
    grid_value_t v;
    int rc = grid_get(a, CACHE, "near-0", 6, &v);
    if (rc == GRID_ENOTFOUND) break;
    CHECK_RC(rc, 0);
    grid_value_free(&v);
    CHECK(i + 1 < WAIT_STEPS);
    harness_sleep_ms(5);
  }

  fprintf(stderr, "-- its own writes are read back at once\n");
  for (int i = 1; i < KEYS; i++) {
    key_of(i, key, sizeof key);
    grid_value_t v;
    CHECK_RC(grid_get(a, CACHE, key, strlen(key), &v), 0); /* held near */
    grid_value_free(&v);
    snprintf(val, sizeof val, "v2-%d", i);
    uint64_t wrote;
    CHECK_RC(grid_put(a, CACHE, key, strlen(key), val, strlen(val), 0, &wrote), 0);
    CHECK_RC(grid_get(a, CACHE, key, strlen(key), &v), 0);
    CHECK_STR(v.data, val);
    CHECK(v.version >= wrote);
    grid_value_free(&v);
  }

  fprintf(stderr, "-- under a writer, and a node killed with kill -9: versions never go back\n");
  writer_t w = {.g = b};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, writer_main, &w) == 0);
  uint64_t last = 0;
  int64_t until = clock_mono_ms() + 6000;
  int killed = 0;
  while (clock_mono_ms() < until) {
    if (!killed && clock_mono_ms() > until - 4000) {
      harness_kill9(&nodes[2]);
      killed = 1;
    }
    grid_value_t v;
    int rc = grid_get(a, CACHE, "near-hot", 8, &v);
    if (rc == GRID_ENOTFOUND) continue; /* before the first write */
    CHECK_RC(rc, 0);
    CHECK(v.version >= last);
    last = v.version;
    grid_value_free(&v);
  }
  atomic_store(&w.stop, 1);
  pthread_join(t, NULL);
  /* The last write acknowledged is read, once its change has come. */
  snprintf(val, sizeof val, "w-%llu", (unsigned long long)atomic_load(&w.written));
  wait_for(a, "near-hot", val);

  grid_close(a);
  grid_close(b);
  for (int i = 0; i < 2; i++) CHECK(harness_stop(&nodes[i]) == 0);
  harness_zk_stop(&zk);
  printf("test_near: all passed\n");
  return 0;
}
