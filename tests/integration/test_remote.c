/* The remote mode against real gridd processes on loopback. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

static harness_node_t node;

static grid_t *open_remote(const harness_node_t *n) {
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_remote"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(n->uri, &o, &g), 0);
  return g;
}

static void test_ops(void) {
  grid_t *g = open_remote(&node);
  CHECK_RC(grid_ping(g), 0);
  grid_value_t v;
  uint64_t v1, v2;
  CHECK_RC(grid_get(g, "default", "k", 1, &v), GRID_ENOTFOUND);
  CHECK_RC(grid_put(g, "default", "k", 1, "hello", 5, 0, &v1), 0);
  CHECK_RC(grid_get(g, "default", "k", 1, &v), 0);
  CHECK_STR(v.data, "hello");
  CHECK_EQ(v.version, v1);
  grid_value_free(&v);
  /* Binary keys and values, NULs included, travel as they are. */
  const char bkey[4] = {0, 1, 0, 2}, bval[5] = {'a', 0, 'b', 0, 'c'};
  CHECK_RC(grid_put(g, "default", bkey, 4, bval, 5, 0, NULL), 0);
  CHECK_RC(grid_get(g, "default", bkey, 4, &v), 0);
  CHECK_EQ(v.len, 5);
  CHECK(memcmp(v.data, bval, 5) == 0);
  grid_value_free(&v);
  CHECK_RC(grid_put(g, "default", "empty", 5, "", 0, 0, NULL), 0);
  CHECK_RC(grid_get(g, "default", "empty", 5, &v), 0);
  CHECK_EQ(v.len, 0);
  grid_value_free(&v);
  CHECK_RC(grid_put_if_absent(g, "default", "k", 1, "x", 1, 0, NULL), GRID_EEXIST);
  CHECK_RC(grid_put_if_absent(g, "default", "new", 3, "x", 1, 0, NULL), 0);
  CHECK_RC(grid_replace(g, "default", "missing", 7, "x", 1, 0, NULL), GRID_ENOTFOUND);
  CHECK_RC(grid_replace(g, "default", "new", 3, "y", 1, 0, NULL), 0);
  CHECK_RC(grid_cas(g, "default", "k", 1, v1 + 1, "z", 1, 0, NULL), GRID_EVERSION);
  CHECK_RC(grid_cas(g, "default", "k", 1, v1, "z", 1, 0, &v2), 0);
  CHECK(v2 > v1);
  CHECK_RC(grid_cas(g, "default", "nokey", 5, v1, "z", 1, 0, NULL), GRID_ENOTFOUND);
  int64_t sum;
  CHECK_RC(grid_add(g, "default", "ctr", 3, -5, &sum), 0);
  CHECK_EQ(sum, -5);
  CHECK_RC(grid_add(g, "default", "ctr", 3, INT64_MIN, &sum), GRID_EOVERFLOW);
  CHECK_RC(grid_delete(g, "default", "new", 3), 0);
  CHECK_RC(grid_delete(g, "default", "new", 3), GRID_ENOTFOUND);
  CHECK_RC(grid_get(g, "absent-cache", "k", 1, &v), GRID_ENOCACHE);

  /* Batches and scan on a cache of its own. */
  grid_cache_config_t cc = {.name = "scan-me", .partitions = 16};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  enum { N = 3000 };
  static char kbuf[N][16];
  const void *keys[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) {
    snprintf(kbuf[i], sizeof kbuf[i], "{t%d}.p%d", i % 50, i);
    keys[i] = kbuf[i];
    lens[i] = strlen(kbuf[i]);
  }
  CHECK_RC(grid_put_all(g, "scan-me", N, keys, lens, keys, lens, 0), 0);
  uint64_t size;
  CHECK_RC(grid_size(g, "scan-me", &size), 0);
  CHECK_EQ(size, N);
  char *seen = calloc(N, 1);
  size_t total = 0;
  for (uint32_t p = 0; p < 16; p++) {
    uint64_t cursor = 0;
    do {
      grid_entry_t *e;
      size_t n;
      CHECK_RC(grid_scan(g, "scan-me", p, &cursor, 100, &e, &n), 0);
      for (size_t i = 0; i < n; i++) {
        int idx = atoi(strstr(e[i].key, ".p") + 2);
        CHECK(idx >= 0 && idx < N);
        CHECK(strcmp(e[i].key, e[i].value) == 0);
        /* Every entry is in the partition its affinity key names. */
        CHECK_EQ(grid_partition_of(e[i].key, e[i].key_len, 16), p);
        if (!seen[idx]) total++;
        seen[idx] = 1;
      }
      grid_entries_free(e, n);
    } while (cursor != 0);
  }
  CHECK_EQ(total, N);
  free(seen);
  uint64_t c0;
  grid_entry_t *e;
  size_t n;
  c0 = 0;
  CHECK_RC(grid_scan(g, "scan-me", 16, &c0, 10, &e, &n), GRID_EINVAL);
  grid_value_t *out = calloc(N, sizeof *out);
  CHECK_RC(grid_get_all(g, "scan-me", N, keys, lens, out), 0);
  for (int i = 0; i < N; i++) {
    CHECK(out[i].found);
    CHECK_STR(out[i].data, kbuf[i]);
    grid_value_free(&out[i]);
  }
  free(out);
  size_t deleted;
  CHECK_RC(grid_delete_all(g, "scan-me", N, keys, lens, &deleted), 0);
  CHECK_EQ(deleted, N);
  CHECK_RC(grid_cache_drop(g, "scan-me"), 0);
  CHECK_RC(grid_size(g, "scan-me", &size), GRID_ENOCACHE);
  grid_close(g);
}

/* grid.h's hash calls, over the socket. */
static void test_hashes(void) {
  grid_t *g = open_remote(&node);
  harness_check_hashes(g, "default", "remote");
  grid_close(g);
}

static void test_ttl(void) {
  grid_t *g = open_remote(&node);
  CHECK_RC(grid_put(g, "default", "short", 5, "x", 1, 200, NULL), 0);
  CHECK_RC(grid_put(g, "default", "long", 4, "y", 1, 600000, NULL), 0);
  grid_value_t v;
  CHECK_RC(grid_get(g, "default", "short", 5, &v), 0);
  grid_value_free(&v);
  harness_sleep_ms(600);
  CHECK_RC(grid_get(g, "default", "short", 5, &v), GRID_ENOTFOUND);
  CHECK_RC(grid_get(g, "default", "long", 4, &v), 0);
  grid_value_free(&v);
  /* A cache's default TTL applies to writes that name none; the sweep
   * removes such entries without anyone reading them. */
  grid_cache_config_t cc = {.name = "ttl-cache", .partitions = 4, .default_ttl_ms = 100};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  for (int i = 0; i < 100; i++) {
    char key[16];
    snprintf(key, sizeof key, "e%d", i);
    CHECK_RC(grid_put(g, "ttl-cache", key, strlen(key), "v", 1, 0, NULL), 0);
  }
  uint64_t size = 1;
  for (int i = 0; i < 100 && size != 0; i++) {
    harness_sleep_ms(50);
    CHECK_RC(grid_size(g, "ttl-cache", &size), 0);
  }
  CHECK_EQ(size, 0);
  grid_close(g);
}

typedef struct pending {
  atomic_int done, failed;
} pending_t;

static void on_put(int status, uint64_t version, void *arg) {
  pending_t *p = arg;
  if (status != 0 || version == 0) atomic_fetch_add(&p->failed, 1);
  atomic_fetch_add(&p->done, 1);
}

static void on_get(int status, const grid_value_t *v, void *arg) {
  pending_t *p = arg;
  if (status != 0 || v->len != 8 || memcmp(v->data, "value:", 6) != 0)
    atomic_fetch_add(&p->failed, 1);
  atomic_fetch_add(&p->done, 1);
}

static void test_async_pipelined(void) {
  grid_t *g = open_remote(&node);
  enum { N = 20000 };
  pending_t p = {0};
  int sent = 0;
  for (int i = 0; i < N; i++) {
    char key[16];
    snprintf(key, sizeof key, "async%d", i);
    int rc;
    /* At most 4096 in flight per handle: wait for room when it says busy. */
    while ((rc = grid_put_async(g, "default", key, strlen(key), "value:xx", 8, 0,
                                on_put, &p)) == GRID_EBUSY)
      harness_sleep_ms(1);
    CHECK_RC(rc, 0);
    sent++;
  }
  for (int i = 0; i < 2000 && atomic_load(&p.done) < sent; i++) harness_sleep_ms(5);
  CHECK_EQ(atomic_load(&p.done), N);
  CHECK_EQ(atomic_load(&p.failed), 0);
  pending_t q = {0};
  for (int i = 0; i < N; i++) {
    char key[16];
    snprintf(key, sizeof key, "async%d", i);
    int rc;
    while ((rc = grid_get_async(g, "default", key, strlen(key), on_get, &q)) == GRID_EBUSY)
      harness_sleep_ms(1);
    CHECK_RC(rc, 0);
  }
  for (int i = 0; i < 2000 && atomic_load(&q.done) < N; i++) harness_sleep_ms(5);
  CHECK_EQ(atomic_load(&q.done), N);
  CHECK_EQ(atomic_load(&q.failed), 0);
  grid_close(g);
}

typedef struct worker {
  grid_t *g;
  int id;
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  char key[32], val[32];
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof key, "thr%d:%d", w->id, i);
    snprintf(val, sizeof val, "v%d-%d", w->id, i);
    CHECK_RC(grid_put(w->g, "default", key, strlen(key), val, strlen(val), 0, NULL), 0);
    grid_value_t v;
    CHECK_RC(grid_get(w->g, "default", key, strlen(key), &v), 0);
    CHECK_STR(v.data, val);
    grid_value_free(&v);
    CHECK_RC(grid_add(w->g, "default", "thr-counter", 11, 1, NULL), 0);
  }
  return NULL;
}

/* Eight threads on one handle (one pipelined connection), and two more
 * handles: every reply reaches the caller that asked. */
static void test_threads(void) {
  grid_t *shared = open_remote(&node), *other = open_remote(&node);
  enum { T = 8 };
  pthread_t t[T];
  worker_t w[T];
  for (int i = 0; i < T; i++) {
    w[i] = (worker_t){i < 6 ? shared : other, i};
    CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
  }
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  grid_value_t v;
  CHECK_RC(grid_get(shared, "default", "thr-counter", 11, &v), 0);
  CHECK_STR(v.data, "16000");
  grid_value_free(&v);
  grid_stats_t st;
  CHECK_RC(grid_stats(other, &st), 0);
  CHECK(st.connections >= 2);
  CHECK(st.ops >= 16000 * 3);
  grid_close(shared);
  grid_close(other);
}

/* A node that stops answering: reads time out, writes are reported as of
 * unknown outcome; once it answers again the same handle works. */
static void test_timeouts(void) {
  grid_t *g = open_remote(&node);
  grid_set_timeout(g, 300);
  harness_pause(&node);
  grid_value_t v;
  CHECK_RC(grid_get(g, "default", "k", 1, &v), GRID_ETIMEDOUT);
  CHECK_RC(grid_put(g, "default", "stopped", 7, "v", 1, 0, NULL), GRID_EUNKNOWN);
  harness_resume(&node);
  grid_set_timeout(g, 10000);
  CHECK_RC(grid_ping(g), 0);
  CHECK_RC(grid_get(g, "default", "k", 1, &v), 0);
  grid_value_free(&v);
  grid_close(g);
}

/* A node that goes away: calls fail with words, never hang. */
static void test_node_gone(void) {
  harness_node_t n;
  harness_start(&n, NULL);
  grid_t *g = open_remote(&n);
  CHECK_RC(grid_put(g, "default", "a", 1, "b", 1, 0, NULL), 0);
  CHECK(harness_stop(&n) == 0); /* exit status 0: a clean stop on SIGTERM */
  grid_value_t v;
  int rc = grid_get(g, "default", "a", 1, &v);
  CHECK(rc == GRID_ECONN);
  rc = grid_put(g, "default", "a", 1, "b", 1, 0, NULL);
  CHECK(rc == GRID_ECONN || rc == GRID_EUNKNOWN);
  grid_close(g);
  grid_t *h = NULL;
  CHECK_RC(grid_open(n.uri, NULL, &h), GRID_ECONN);
}

static void test_memory_limit(void) {
  const char *settings[] = {"memory_bytes_max=2M", NULL};
  harness_node_t n;
  harness_start(&n, settings);
  grid_t *g = open_remote(&n);
  char val[8192];
  memset(val, 'm', sizeof val);
  char key[32];
  int i, rc = 0;
  for (i = 0; i < 10000; i++) {
    snprintf(key, sizeof key, "m%d", i);
    if ((rc = grid_put(g, "default", key, strlen(key), val, sizeof val, 0, NULL)) != 0) break;
  }
  CHECK_RC(rc, GRID_EMEMLIMIT);
  CHECK(i > 10);
  grid_stats_t st;
  CHECK_RC(grid_stats(g, &st), 0);
  CHECK(st.memory_bytes <= st.memory_bytes_max);
  CHECK_EQ(st.entries, i);
  /* Everything acknowledged is still there. */
  for (int j = 0; j < i; j++) {
    snprintf(key, sizeof key, "m%d", j);
    grid_value_t v;
    CHECK_RC(grid_get(g, "default", key, strlen(key), &v), 0);
    CHECK_EQ(v.len, sizeof val);
    grid_value_free(&v);
  }
  CHECK_RC(grid_delete(g, "default", "m0", 2), 0);
  snprintf(key, sizeof key, "m%d", i);
  CHECK_RC(grid_put(g, "default", key, strlen(key), val, sizeof val, 0, NULL), 0);
  grid_close(g);
  CHECK(harness_stop(&n) == 0);
}

int main(void) {
  harness_start(&node, NULL);
  RUN(test_ops);
  RUN(test_ttl);
  RUN(test_hashes);
  RUN(test_async_pipelined);
  RUN(test_threads);
  RUN(test_timeouts);
  RUN(test_node_gone);
  RUN(test_memory_limit);
  CHECK(harness_stop(&node) == 0);
  printf("test_remote: all passed\n");
  return 0;
}
