/* The embedded mode: a node inside this process, reached through grid.h. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

static grid_t *open_embedded(const char *config_text) {
  grid_options_t o = {.config_text = config_text};
  grid_t *g = NULL;
  CHECK_RC(grid_open("embedded:", &o, &g), 0);
  return g;
}

static void test_basic_ops(void) {
  grid_t *g = open_embedded(NULL);
  grid_value_t v;
  uint64_t v1, v2;
  CHECK_RC(grid_get(g, "default", "k", 1, &v), GRID_ENOTFOUND);
  CHECK_RC(grid_put(g, "default", "k", 1, "hello", 5, 0, &v1), 0);
  CHECK_RC(grid_get(g, "default", "k", 1, &v), 0);
  CHECK_EQ(v.len, 5);
  CHECK_STR(v.data, "hello");
  CHECK_EQ(v.version, v1);
  grid_value_free(&v);
  CHECK_RC(grid_put_if_absent(g, "default", "k", 1, "x", 1, 0, NULL), GRID_EEXIST);
  CHECK_RC(grid_replace(g, "default", "missing", 7, "x", 1, 0, NULL), GRID_ENOTFOUND);
  CHECK_RC(grid_cas(g, "default", "k", 1, v1 + 1000, "y", 1, 0, NULL), GRID_EVERSION);
  CHECK_RC(grid_cas(g, "default", "k", 1, v1, "y", 1, 0, &v2), 0);
  CHECK(v2 > v1);
  int64_t sum;
  CHECK_RC(grid_add(g, "default", "n", 1, 40, &sum), 0);
  CHECK_RC(grid_add(g, "default", "n", 1, 2, &sum), 0);
  CHECK_EQ(sum, 42);
  CHECK_RC(grid_get(g, "default", "n", 1, &v), 0);
  CHECK_STR(v.data, "42");
  grid_value_free(&v);
  CHECK_RC(grid_add(g, "default", "k", 1, 1, &sum), GRID_ENOTNUM);
  CHECK_RC(grid_get(g, "nope", "k", 1, &v), GRID_ENOCACHE);
  CHECK_RC(grid_delete(g, "default", "k", 1), 0);
  CHECK_RC(grid_delete(g, "default", "k", 1), GRID_ENOTFOUND);

  const void *keys[3] = {"a", "b", "c"};
  size_t klens[3] = {1, 1, 1};
  const void *vals[3] = {"1", "22", "333"};
  size_t vlens[3] = {1, 2, 3};
  CHECK_RC(grid_put_all(g, "default", 3, keys, klens, vals, vlens, 0), 0);
  const void *qkeys[4] = {"a", "zz", "c", "b"};
  size_t qlens[4] = {1, 2, 1, 1};
  grid_value_t out[4];
  CHECK_RC(grid_get_all(g, "default", 4, qkeys, qlens, out), 0);
  CHECK(out[0].found && !out[1].found && out[2].found && out[3].found);
  CHECK_STR(out[2].data, "333");
  CHECK_STR(out[3].data, "22");
  for (int i = 0; i < 4; i++) grid_value_free(&out[i]);
  size_t deleted;
  CHECK_RC(grid_delete_all(g, "default", 4, qkeys, qlens, &deleted), 0);
  CHECK_EQ(deleted, 3);
  uint64_t size;
  CHECK_RC(grid_size(g, "default", &size), 0);
  CHECK_EQ(size, 1); /* "n" */

  grid_cache_config_t cc = {.name = "things", .partitions = 8, .backups = 1,
                            .sync = GRID_SYNC_PRIMARY};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  CHECK_RC(grid_cache_create(g, &cc), GRID_ECACHEEXISTS);
  grid_cache_config_t *list;
  size_t n;
  CHECK_RC(grid_cache_list(g, &list, &n), 0);
  CHECK_EQ(n, 2);
  int seen = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(list[i].name, "things") == 0) {
      seen = 1;
      CHECK_EQ(list[i].partitions, 8);
      CHECK_EQ(list[i].backups, 1);
      CHECK_EQ(list[i].sync, GRID_SYNC_PRIMARY);
    }
  }
  CHECK(seen);
  grid_cache_list_free(list, n);
  CHECK_RC(grid_cache_drop(g, "things"), 0);
  CHECK_RC(grid_cache_drop(g, "things"), GRID_ENOCACHE);

  grid_stats_t st;
  CHECK_RC(grid_stats(g, &st), 0);
  CHECK_EQ(st.entries, 1);
  CHECK_EQ(st.caches, 1);
  CHECK(st.ops > 10);
  CHECK_EQ(st.connections, 0);
  grid_close(g);
}

/* grid.h's hash calls, on the node in this process. */
static void test_hashes(void) {
  grid_t *g = open_embedded(NULL);
  harness_check_hashes(g, "default", "embedded");
  grid_close(g);
}

static void test_memory_limit(void) {
  grid_t *g = open_embedded("memory_bytes_max = 512K\nvalue_bytes_max = 64K\n");
  char val[4096];
  memset(val, 'v', sizeof val);
  int i, rc = 0;
  char key[32];
  for (i = 0; i < 1000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    rc = grid_put(g, "default", key, strlen(key), val, sizeof val, 0, NULL);
    if (rc != 0) break;
  }
  CHECK_RC(rc, GRID_EMEMLIMIT);
  CHECK(i > 10);
  /* What was written is intact, and a delete makes room again. */
  grid_value_t v;
  CHECK_RC(grid_get(g, "default", "k0", 2, &v), 0);
  CHECK_EQ(v.len, sizeof val);
  grid_value_free(&v);
  CHECK_RC(grid_delete(g, "default", "k0", 2), 0);
  CHECK_RC(grid_put(g, "default", key, strlen(key), val, sizeof val, 0, NULL), 0);
  char big[70000];
  memset(big, 'b', sizeof big);
  CHECK_RC(grid_put(g, "default", "big", 3, big, sizeof big, 0, NULL), GRID_EVALTOOBIG);
  grid_close(g);
}

static void test_bad_config(void) {
  grid_options_t o = {.config_text = "memory_bytes_max = lots\n"};
  grid_t *g = NULL;
  CHECK_RC(grid_open("embedded:", &o, &g), GRID_ECONFIG);
  o.config_text = "no_such_setting = 1\n";
  CHECK_RC(grid_open("embedded:", &o, &g), GRID_ECONFIG);
  o.config_text = NULL;
  o.config_path = "/nonexistent/grid.conf";
  CHECK_RC(grid_open("embedded:", &o, &g), GRID_ECONFIG);
  CHECK_RC(grid_open("redis://x", NULL, &g), GRID_EADDR);
  CHECK_RC(grid_open("grid://nohostport", NULL, &g), GRID_EADDR);
  CHECK(g == NULL);
}

typedef struct async_result {
  int calls, status;
  char value[16];
  uint64_t version;
} async_result_t;

static void on_get(int status, const grid_value_t *v, void *arg) {
  async_result_t *r = arg;
  r->calls++;
  r->status = status;
  if (v) snprintf(r->value, sizeof r->value, "%.*s", (int)v->len, (const char *)v->data);
}

static void on_write(int status, uint64_t version, void *arg) {
  async_result_t *r = arg;
  r->calls++;
  r->status = status;
  r->version = version;
}

static void test_async_inline(void) {
  grid_t *g = open_embedded(NULL);
  async_result_t w = {0}, r = {0}, m = {0}, d = {0};
  CHECK_RC(grid_put_async(g, "default", "a", 1, "va", 2, 0, on_write, &w), 0);
  CHECK_EQ(w.calls, 1);
  CHECK_RC(w.status, 0);
  CHECK(w.version != 0);
  CHECK_RC(grid_get_async(g, "default", "a", 1, on_get, &r), 0);
  CHECK_EQ(r.calls, 1);
  CHECK_STR(r.value, "va");
  CHECK_RC(grid_get_async(g, "default", "zz", 2, on_get, &m), 0);
  CHECK_RC(m.status, GRID_ENOTFOUND);
  CHECK_RC(grid_delete_async(g, "default", "a", 1, on_write, &d), 0);
  CHECK_RC(d.status, 0);
  grid_close(g);
}

typedef struct worker {
  grid_t *g;
  int id;
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  char key[32], val[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof key, "w%d:%d", w->id, i);
    snprintf(val, sizeof val, "v%d", i * 7);
    CHECK_RC(grid_put(w->g, "default", key, strlen(key), val, strlen(val), 0, NULL), 0);
    grid_value_t v;
    CHECK_RC(grid_get(w->g, "default", key, strlen(key), &v), 0);
    CHECK_STR(v.data, val);
    grid_value_free(&v);
    CHECK_RC(grid_add(w->g, "default", "shared", 6, 1, NULL), 0);
  }
  return NULL;
}

static void test_threads(void) {
  grid_t *g = open_embedded(NULL);
  pthread_t t[4];
  worker_t w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker_t){g, i};
    CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  grid_value_t v;
  CHECK_RC(grid_get(g, "default", "shared", 6, &v), 0);
  CHECK_STR(v.data, "20000");
  grid_value_free(&v);
  uint64_t size;
  CHECK_RC(grid_size(g, "default", &size), 0);
  CHECK_EQ(size, 20001);
  grid_close(g);
}

/* An embedded node that also listens: a remote client sees its data. */
static void test_embedded_listener(void) {
  char dir[] = "/tmp/grid-embed-XXXXXX";
  CHECK(mkdtemp(dir));
  char cfg[512], port_file[300];
  snprintf(port_file, sizeof port_file, "%s/port", dir);
  snprintf(cfg, sizeof cfg, "listen = on\nport = 0\nport_file = %s\n", port_file);
  grid_t *g = open_embedded(cfg);
  CHECK_RC(grid_put(g, "default", "shared", 6, "from-embedded", 13, 0, NULL), 0);
  FILE *f = fopen(port_file, "r");
  CHECK(f);
  int port = 0;
  CHECK(fscanf(f, "%d", &port) == 1);
  fclose(f);
  char uri[64];
  snprintf(uri, sizeof uri, "grid://127.0.0.1:%d", port);
  grid_t *r;
  CHECK_RC(grid_open(uri, NULL, &r), 0);
  grid_value_t v;
  CHECK_RC(grid_get(r, "default", "shared", 6, &v), 0);
  CHECK_STR(v.data, "from-embedded");
  grid_value_free(&v);
  CHECK_RC(grid_put(r, "default", "back", 4, "from-remote", 11, 0, NULL), 0);
  CHECK_RC(grid_get(g, "default", "back", 4, &v), 0);
  CHECK_STR(v.data, "from-remote");
  grid_value_free(&v);
  grid_close(r);
  grid_close(g);
  unlink(port_file);
  rmdir(dir);
}

/* Change streams work the same in-process: every write once, in each
 * key's order, the filter, a continuous query, expiry, and the end of a
 * dropped cache. */
static grid_event_t next_event(grid_sub_t *s) {
  grid_event_t ev;
  CHECK_RC(grid_sub_next(s, 10000, &ev), 0);
  return ev;
}

static void test_change_stream(void) {
  grid_t *g = open_embedded(NULL);
  grid_cache_config_t cc = {.name = "things", .partitions = 8};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  CHECK_RC(grid_put(g, "things", "pump:0", 6, "before", 6, 0, NULL), 0);
  grid_sub_options_t o = {.prefix = "pump:", .prefix_len = 5, .snapshot = 1};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "things", &o, &s), 0);
  grid_event_t ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_PUT);
  CHECK(ev.snapshot);
  CHECK_EQ(ev.value_len, 6);
  CHECK(memcmp(ev.value, "before", 6) == 0);
  ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_SYNCED);
  uint64_t want[50];
  for (int i = 0; i < 50; i++) {
    char key[16];
    snprintf(key, sizeof key, "pump:%d", i % 5);
    CHECK_RC(grid_put(g, "things", key, strlen(key), "v", 1, 0, &want[i]), 0);
    CHECK_RC(grid_put(g, "things", "valve", 5, "v", 1, 0, NULL), 0); /* filtered out */
  }
  uint64_t last[5] = {0};
  for (int i = 0; i < 50; i++) {
    ev = next_event(s);
    CHECK_EQ(ev.kind, GRID_EVENT_PUT);
    CHECK(ev.key_len == 6 && memcmp(ev.key, "pump:", 5) == 0);
    int k = ((const char *)ev.key)[5] - '0';
    CHECK(ev.version > last[k]);
    last[k] = ev.version;
  }
  for (int k = 0; k < 5; k++) CHECK_EQ(last[k], want[45 + k]);
  CHECK_RC(grid_sub_next(s, 200, &ev), GRID_ETIMEDOUT);
  CHECK_RC(grid_put(g, "things", "pump:brief", 10, "x", 1, 50, NULL), 0);
  ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_PUT);
  ev = next_event(s); /* the node's sweep removes it */
  CHECK_EQ(ev.kind, GRID_EVENT_EXPIRE);
  CHECK_RC(grid_cache_drop(g, "things"), 0);
  ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_ENDED);
  CHECK_EQ(ev.status, GRID_ENOCACHE);
  grid_unsubscribe(s);
  CHECK_RC(grid_subscribe(g, "nosuch", NULL, &s), GRID_ENOCACHE);
  grid_close(g);
}

/* A subscriber that does not read, in-process: writers never wait for it
 * (found in review: events were handed out under the partition's lock, so
 * a full queue stopped every write of the partition, on the same thread a
 * deadlock); once it reads, every change or a GAP comes. */
static void test_slow_subscriber_never_blocks_writers(void) {
  grid_t *g = open_embedded("change_buffer_bytes = 4K");
  grid_cache_config_t cc = {.name = "one", .partitions = 1};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  grid_sub_options_t o = {.queue_max = 4};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "one", &o, &s), 0);
  for (int i = 0; i < 5000; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i % 50);
    CHECK_RC(grid_put(g, "one", key, strlen(key), "value", 5, 0, NULL), 0);
  }
  int puts = 0, gaps = 0;
  grid_event_t ev;
  while (grid_sub_next(s, 1000, &ev) == 0) {
    puts += ev.kind == GRID_EVENT_PUT;
    gaps += ev.kind == GRID_EVENT_GAP;
  }
  fprintf(stderr, "in-process slow subscriber: %d events, %d gaps of 5000 writes\n", puts, gaps);
  CHECK(gaps >= 1);
  CHECK(puts >= 4);
  uint64_t v;
  CHECK_RC(grid_put(g, "one", "after", 5, "x", 1, 0, &v), 0);
  ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_PUT);
  CHECK_EQ(ev.version, v);
  grid_unsubscribe(s);
  grid_close(g);
}

int main(void) {
  RUN(test_basic_ops);
  RUN(test_hashes);
  RUN(test_memory_limit);
  RUN(test_bad_config);
  RUN(test_async_inline);
  RUN(test_threads);
  RUN(test_embedded_listener);
  RUN(test_change_stream);
  RUN(test_slow_subscriber_never_blocks_writers);
  printf("test_embedded: all passed\n");
  return 0;
}
