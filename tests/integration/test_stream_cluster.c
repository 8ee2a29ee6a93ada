/*
 * Change streams across a cluster on a real ZooKeeper: a subscriber sees
 * every acknowledged write made through two other nodes exactly once (after
 * the library's dedup), each key's changes in version order, while a node
 * that leads a third of the partitions is killed with kill -9 and while a
 * new node joins and partitions move to it. The event log is compared with
 * what the writers were told.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

#define CACHE "ev"
#define WRITERS 2
#define KEYS 100
#define WRITES_MAX 200000

static harness_zk_t zk;
static harness_node_t nodes[4];

static void start_node(int i) {
  const char *settings[] = {"cluster_min_nodes=3", "zk_session_timeout_ms=1000",
                            "forward_timeout_ms=3000", "loops=2", "lost_grace_ms=1000", NULL};
  harness_start_cluster_node(&nodes[i], &zk, "st", i, settings);
}

static grid_t *open_node(int i, const char *name) {
  grid_options_t o = {.timeout_ms = 8000, .client_name = name};
  grid_t *g = NULL;
  CHECK_RC(grid_open(nodes[i].uri, &o, &g), 0);
  return g;
}

/* A write the writer heard the outcome of. */
typedef struct acked {
  int key;
  uint64_t version;
} acked_t;

typedef struct writer {
  int id;
  grid_t *g;
  acked_t *acked;
  size_t nacked;
  long unknown;
} writer_t;

static atomic_int stop_writers;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  for (long seq = 0; !atomic_load(&stop_writers) && w->nacked < WRITES_MAX; seq++) {
    int k = (int)(seq % KEYS);
    char key[32], val[32];
    snprintf(key, sizeof key, "w%d:%d", w->id, k);
    snprintf(val, sizeof val, "%ld", seq);
    uint64_t v;
    int rc = grid_put(w->g, CACHE, key, strlen(key), val, strlen(val), 0, &v);
    if (rc == 0) w->acked[w->nacked++] = (acked_t){w->id * KEYS + k, v};
    else w->unknown++; /* its outcome is unknown: it may or may not appear */
    if (seq % 64 == 0) usleep(1000);
  }
  return NULL;
}

/* The subscriber's log. */
typedef struct logged {
  int key;
  uint64_t version;
} logged_t;

static logged_t *evlog;
static atomic_size_t nlog;
static atomic_int gaps;
static atomic_int stop_reader;

static void *reader_main(void *arg) {
  grid_sub_t *s = arg;
  while (!atomic_load(&stop_reader)) {
    grid_event_t ev;
    if (grid_sub_next(s, 100, &ev) != 0) continue;
    if (ev.kind == GRID_EVENT_GAP) {
      atomic_fetch_add(&gaps, 1);
      continue;
    }
    CHECK_EQ(ev.kind, GRID_EVENT_PUT);
    char key[32];
    CHECK(ev.key_len < sizeof key);
    memcpy(key, ev.key, ev.key_len);
    key[ev.key_len] = '\0';
    int w = key[1] - '0', k = atoi(key + 3);
    size_t n = atomic_load(&nlog);
    CHECK(n < (size_t)WRITERS * WRITES_MAX * 2);
    evlog[n] = (logged_t){w * KEYS + k, ev.version};
    atomic_store(&nlog, n + 1);
  }
  return NULL;
}

static int cmp_logged(const void *a, const void *b) {
  const logged_t *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->version < y->version ? -1 : x->version > y->version;
}

/* Whether (key, version) is in the sorted log. */
static int logged(const logged_t *sorted, size_t n, int key, uint64_t version) {
  logged_t want = {key, version};
  return bsearch(&want, sorted, n, sizeof want, cmp_logged) != NULL;
}

int main(void) {
  harness_zk_start(&zk);
  for (int i = 0; i < 3; i++) start_node(i);
  grid_t *admin = open_node(2, "admin");
  grid_cache_config_t cc = {.name = CACHE, .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(admin, &cc), 0);
  harness_wait_settled(nodes[2].port, CACHE, 3);

  evlog = calloc((size_t)WRITERS * WRITES_MAX * 2, sizeof *evlog);
  CHECK(evlog != NULL);
  /* The subscriber comes in through node 2; the writers through 0 and 1. */
  grid_t *gs = open_node(2, "subscriber");
  grid_sub_options_t so = {.keys_only = 1};
  grid_sub_t *sub;
  int src = grid_subscribe(gs, CACHE, &so, &sub);
  if (src) fprintf(stderr, "subscribe: %s\n", grid_last_error());
  CHECK_RC(src, 0);
  pthread_t reader;
  pthread_create(&reader, NULL, reader_main, sub);

  writer_t w[WRITERS];
  pthread_t wt[WRITERS];
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer_t){.id = i, .g = open_node(i, "writer")};
    w[i].acked = calloc(WRITES_MAX, sizeof *w[i].acked);
    pthread_create(&wt[i], NULL, writer_main, &w[i]);
  }
  harness_sleep_ms(1500);
  /* kill -9 of node 1: it leads a third of the partitions, and one writer
   * came in through it (its handle finds the others). */
  fprintf(stderr, "killing node 1 with %zu events logged\n", atomic_load(&nlog));
  harness_kill9(&nodes[1]);
  harness_sleep_ms(3000);
  /* A new node joins: partitions move to it while the writers go on. */
  fprintf(stderr, "node 3 joins with %zu events logged\n", atomic_load(&nlog));
  start_node(3);
  harness_wait_settled(nodes[2].port, CACHE, 3);
  harness_sleep_ms(1000);
  atomic_store(&stop_writers, 1);
  size_t acked_total = 0;
  long unknown = 0;
  for (int i = 0; i < WRITERS; i++) {
    pthread_join(wt[i], NULL);
    acked_total += w[i].nacked;
    unknown += w[i].unknown;
  }
  fprintf(stderr, "%zu writes acknowledged, %ld with an unknown outcome\n", acked_total,
          unknown);
  CHECK(acked_total > 1000);

  /* Every acknowledged write reaches the subscriber: wait for the log to
   * hold them all (up to 60 s), then compare. */
  size_t missing = acked_total;
  for (int t = 0; t < 600 && missing; t++) {
    size_t n = atomic_load(&nlog);
    logged_t *sorted = malloc((n ? n : 1) * sizeof *sorted);
    memcpy(sorted, evlog, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_logged);
    missing = 0;
    for (int i = 0; i < WRITERS; i++)
      for (size_t j = 0; j < w[i].nacked; j++)
        missing += !logged(sorted, n, w[i].acked[j].key, w[i].acked[j].version);
    free(sorted);
    if (missing) harness_sleep_ms(100);
  }
  atomic_store(&stop_reader, 1);
  pthread_join(reader, NULL);
  size_t n = atomic_load(&nlog);
  fprintf(stderr, "%zu events logged, %d gaps, %zu acknowledged writes missing\n", n,
          atomic_load(&gaps), missing);
  if (missing) {
    /* What is missing, where: the partition, its counter, and the last
     * change of the key the subscriber had. */
    size_t shown = 0;
    for (int i = 0; i < WRITERS && shown < 20; i++) {
      for (size_t j = 0; j < w[i].nacked && shown < 20; j++) {
        acked_t *a = &w[i].acked[j];
        int found = 0;
        uint64_t last = 0;
        for (size_t e = 0; e < n; e++) {
          if (evlog[e].key != a->key) continue;
          if (evlog[e].version == a->version) found = 1;
          if (evlog[e].version > last) last = evlog[e].version;
        }
        if (found) continue;
        char key[32];
        snprintf(key, sizeof key, "w%d:%d", a->key / KEYS, a->key % KEYS);
        fprintf(stderr, "missing %s version %llu (epoch %llu counter %llu) partition %u; "
                "last logged version %llu\n", key, (unsigned long long)a->version,
                (unsigned long long)(a->version >> 40),
                (unsigned long long)(a->version & ((1ull << 40) - 1)),
                grid_partition_of(key, strlen(key), 64), (unsigned long long)last);
        shown++;
      }
    }
  }
  CHECK_EQ(atomic_load(&gaps), 0);
  CHECK_EQ(missing, 0);
  /* Exactly once, each key in version order: the log, key by key, grows. */
  int last_key = -1;
  uint64_t last_version = 0;
  static uint64_t seen_version[WRITERS * KEYS];
  for (size_t i = 0; i < n; i++) {
    int k = evlog[i].key;
    CHECK(k >= 0 && k < WRITERS * KEYS);
    CHECK(evlog[i].version > seen_version[k]); /* no repeat, no step back */
    seen_version[k] = evlog[i].version;
    (void)last_key;
    (void)last_version;
  }
  /* Nothing logged that no writer made: every event is an acknowledged
   * write or one whose outcome was unknown. */
  CHECK(n <= acked_total + (size_t)unknown);

  grid_unsubscribe(sub);

  /* Keys whose time to live runs out: each removed once, by its primary,
   * and heard once as EXPIRE (not once per copy). */
  enum { TTL_KEYS = 40 };
  grid_sub_t *tsub;
  grid_sub_options_t to = {.prefix = "ttl:", .prefix_len = 4};
  CHECK_RC(grid_subscribe(gs, CACHE, &to, &tsub), 0);
  for (int i = 0; i < TTL_KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "ttl:%d", i);
    CHECK_RC(grid_put(w[0].g, CACHE, key, strlen(key), "x", 1, 100, NULL), 0);
  }
  int puts = 0, expires = 0;
  static int expired_seen[TTL_KEYS];
  for (int t = 0; t < 300 && expires < TTL_KEYS; t++) {
    grid_event_t ev;
    if (grid_sub_next(tsub, 100, &ev) != 0) continue;
    char key[32];
    CHECK(ev.key_len < sizeof key);
    memcpy(key, ev.key, ev.key_len);
    key[ev.key_len] = '\0';
    int k = atoi(key + 4);
    CHECK(k >= 0 && k < TTL_KEYS);
    if (ev.kind == GRID_EVENT_PUT) puts++;
    if (ev.kind == GRID_EVENT_EXPIRE) {
      CHECK_EQ(expired_seen[k], 0);
      expired_seen[k] = 1;
      expires++;
    }
  }
  fprintf(stderr, "ttl keys: %d puts, %d expire events\n", puts, expires);
  CHECK_EQ(puts, TTL_KEYS);
  CHECK_EQ(expires, TTL_KEYS);
  grid_event_t extra;
  CHECK_RC(grid_sub_next(tsub, 500, &extra), GRID_ETIMEDOUT); /* no repeat */
  grid_unsubscribe(tsub);
  grid_close(gs);
  for (int i = 0; i < WRITERS; i++) {
    grid_close(w[i].g);
    free(w[i].acked);
  }
  grid_close(admin);
  for (int i = 0; i < 4; i++)
    if (i != 1) CHECK_EQ(harness_stop(&nodes[i]), 0);
  harness_zk_stop(&zk);
  free(evlog);
  printf("test_stream_cluster: ok\n");
  return 0;
}
