/*
 * Persistent caches in a cluster, with real gridd processes, a real
 * ZooKeeper and each node's own data directory:
 *   1. a node killed with kill -9 and started again with its data_dir
 *      catches up by delta: the fill bytes it receives are far fewer than
 *      a whole copy's, and every key reads its last value;
 *   2. every node killed with kill -9 during a write load (fsync = always),
 *      started again one by one in another order: every acknowledged write
 *      is there; while a partition's nodes are not back, its keys answer
 *      with an error, never "not found" from a node without its data;
 *   3. a node gone for good: its partitions wait (past lost_grace_ms)
 *      until gridctl accept-loss (grid_accept_loss), then start again,
 *      empty; the node coming back later holds nothing of its old copies.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "grid.h"
#include "harness.h"
#include "part.h"
#include "pmap.h"

#define NODES 3
#define CACHE "kept"
#define SOLO "solo"      /* no backup: a node's partitions are its alone */
#define PARTS 64
#define WRITERS 4
#define KEYS_PER_WRITER 200

static harness_zk_t zk;
static harness_node_t nodes[NODES];
static char data_dirs[NODES][64];

static void start_node(int i) {
  char dd[96];
  snprintf(dd, sizeof dd, "data_dir=%s", data_dirs[i]);
  const char *settings[] = {"cluster_min_nodes=1", "zk_session_timeout_ms=1000",
                            "forward_timeout_ms=3000", "loops=2", "lost_grace_ms=1000", dd,
                            NULL};
  harness_start_cluster_node(&nodes[i], &zk, "pc", i, settings);
}

static grid_t *open_node(int i, int timeout_ms) {
  grid_options_t o = {.timeout_ms = (uint64_t)timeout_ms, .client_name = "test_persist_cluster"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(nodes[i].uri, &o, &g), 0);
  return g;
}

static void node_id(int i, char *out, size_t len) { snprintf(out, len, "pc-%d", i); }

/* The map on port: `live` nodes not absent, cache's partitions each led by
 * a live node, none MOVING. */
static int settled(int port, const char *cache, size_t live) {
  pmap_t m;
  harness_pmap(port, &m);
  const pmap_group_t *pc = pmap_find_cache(&m, cache);
  int ok = pc && pmap_live_nodes(&m) == live;
  for (uint32_t p = 0; ok && p < pc->partitions; p++) {
    int prim = pmap_primary(pc, p);
    if (prim < 0 || m.nodes[prim].absent) ok = 0;
    for (uint32_t k = 0; ok && k < pc->slots; k++) {
      int st;
      pmap_copy_at(pc, p, k, &st);
      if (st == PMAP_MOVING || st == PMAP_LOST) ok = 0;
    }
  }
  pmap_free(&m);
  return ok;
}

static void wait_settled(int port, const char *cache, size_t live) {
  for (int i = 0; i < 1200; i++) {
    if (settled(port, cache, live)) return;
    harness_sleep_ms(50);
  }
  fprintf(stderr, "cache %s did not settle on %zu live nodes within 60 s\n", cache, live);
  abort();
}

static grid_stats_t stats_of(int i) {
  grid_t *g = open_node(i, 5000);
  grid_stats_t s;
  CHECK_RC(grid_stats(g, &s), 0);
  grid_close(g);
  return s;
}

static void put_value(grid_t *g, const char *cache, const char *key, const char *val) {
  int rc = 0;
  for (int t = 0; t < 100; t++) {
    rc = grid_put(g, cache, key, strlen(key), val, strlen(val), 0, NULL);
    if (rc == 0) return;
    harness_sleep_ms(50);
  }
  fprintf(stderr, "put %s failed: %s\n", key, grid_err_name(rc));
  CHECK_RC(rc, 0);
}

/* A value of about 100 bytes that names its key and round. */
static void value_of(char *out, size_t len, const char *key, long round) {
  snprintf(out, len, "%s:%ld:%0*d", key, round, 80, 0);
}

static void check_value(grid_t *g, const char *cache, const char *key, const char *want) {
  grid_value_t v;
  int rc = grid_get(g, cache, key, strlen(key), &v);
  if (rc != 0) fprintf(stderr, "get %s: %s\n", key, grid_err_name(rc));
  CHECK_RC(rc, 0);
  CHECK_STR(v.data, want);
  grid_value_free(&v);
}

/* A writer's keys and what it knows of each. */
typedef struct key_state {
  long acked;        /* -1: never acknowledged */
  long unknown[64];
  int nunknown;
} key_state_t;

typedef struct writer {
  int id;
  grid_t *g;
  key_state_t keys[KEYS_PER_WRITER];
  long acked;
} writer_t;

static atomic_int stop_writers;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  for (int k = 0; k < KEYS_PER_WRITER; k++) w->keys[k].acked = -1;
  for (long seq = 0; !atomic_load(&stop_writers); seq++) {
    int k = (int)(seq % KEYS_PER_WRITER);
    char key[32], val[32];
    snprintf(key, sizeof key, "w%d:k%d", w->id, k);
    snprintf(val, sizeof val, "%ld", seq);
    int rc = grid_put(w->g, CACHE, key, strlen(key), val, strlen(val), 0, NULL);
    key_state_t *ks = &w->keys[k];
    if (rc == 0) {
      ks->acked = seq;
      ks->nunknown = 0;
      w->acked++;
    } else {
      /* Any failure during the crash may have been applied somewhere. */
      if (ks->nunknown < 64) ks->unknown[ks->nunknown++] = seq;
      harness_sleep_ms(2);
    }
  }
  return NULL;
}

/* Every key of w reads its last acknowledged value (or a later write whose
 * outcome is unknown); with partial set, a key may also answer an error
 * (its partition waits for a node that is away), never a wrong value or
 * "not found" for a key that was written. */
/* Whether key's partition is led by live node `only` in the map on port
 * (-1: any key). */
static int key_led_by(const pmap_t *m, const char *key, int only) {
  if (only < 0) return 1;
  const pmap_group_t *pc = pmap_find_cache(m, CACHE);
  if (!pc) return 0;
  int prim = pmap_primary(pc, part_of(key, strlen(key), pc->partitions));
  return prim >= 0 && !m->nodes[prim].absent &&
         strcmp(m->nodes[prim].id, m->nodes[only].id) == 0;
}

static void check_writers_on(grid_t *g, writer_t *w, int nw, int partial) {
  long checked = 0, refused = 0;
  pmap_t m;
  int only = -1;
  if (partial) { /* only the keys the one node left leads */
    harness_pmap(nodes[2].port, &m);
    char id2[32];
    node_id(2, id2, sizeof id2);
    only = pmap_node_index(&m, id2);
    CHECK(only >= 0);
  }
  for (int i = 0; i < nw; i++) {
    for (int k = 0; k < KEYS_PER_WRITER; k++) {
      key_state_t *ks = &w[i].keys[k];
      char key[32];
      snprintf(key, sizeof key, "w%d:k%d", i, k);
      if (!key_led_by(&m, key, only)) {
        refused++;
        continue;
      }
      grid_value_t v;
      int rc = grid_get(g, CACHE, key, strlen(key), &v);
      if (rc == GRID_ENOTFOUND && ks->acked < 0) continue;
      if (rc != 0) fprintf(stderr, "key %s: %s (acked %ld)\n", key, grid_err_name(rc), ks->acked);
      CHECK_RC(rc, 0);
      long got = atol(v.data);
      int ok = got == ks->acked;
      for (int u = 0; u < ks->nunknown && !ok; u++) ok = got == ks->unknown[u];
      if (!ok)
        fprintf(stderr, "key %s reads %ld, last acknowledged %ld (%d unknown after it)\n", key,
                got, ks->acked, ks->nunknown);
      CHECK(ok);
      grid_value_free(&v);
      checked++;
    }
  }
  if (partial) pmap_free(&m);
  fprintf(stderr, "   %ld keys read back with their last acknowledged value%s\n", checked,
          partial ? " from the one node left" : "");
  CHECK(checked > 0);
}

static void check_writers(grid_t *g, writer_t *w, int nw) { check_writers_on(g, w, nw, 0); }

/* 1. */
static void test_restart_catches_up_by_delta(void) {
  fprintf(stderr, "-- a restarted node catches up by delta\n");
  grid_t *g = open_node(0, 8000);
  const int keys = 3000, updates = 150;
  char key[32], val[128];
  for (int k = 0; k < keys; k++) {
    snprintf(key, sizeof key, "d:%d", k);
    value_of(val, sizeof val, key, 0);
    put_value(g, CACHE, key, val);
  }
  wait_settled(nodes[0].port, CACHE, NODES);
  grid_stats_t before = stats_of(2);
  harness_kill9(&nodes[2]);
  for (int k = 0; k < updates; k++) {
    snprintf(key, sizeof key, "d:%d", k * 7);
    value_of(val, sizeof val, key, 1);
    put_value(g, CACHE, key, val);
  }
  /* Writes go on while node 2 comes back: its copies get records before
   * and during their fills. */
  static writer_t w[2];
  pthread_t th[2];
  atomic_store(&stop_writers, 0);
  for (int i = 0; i < 2; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].id = i;
    w[i].g = open_node(i, 8000);
    CHECK(pthread_create(&th[i], NULL, writer_main, &w[i]) == 0);
  }
  harness_sleep_ms(300);
  start_node(2);
  wait_settled(nodes[0].port, CACHE, NODES);
  harness_sleep_ms(300);
  atomic_store(&stop_writers, 1);
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    grid_close(w[i].g);
  }
  grid_stats_t after = stats_of(2);
  /* A whole copy of what node 2 holds: its share of the entries (2 copies
   * of each, on 3 nodes), each over 100 bytes with its key. */
  uint64_t whole = (uint64_t)keys * 2 / NODES * 100;
  fprintf(stderr, "   node 2 held %llu entries; after its restart it received %llu fill bytes "
          "(%llu partitions by delta); a whole copy is over %llu bytes\n",
          (unsigned long long)before.entries, (unsigned long long)after.fill_bytes_in,
          (unsigned long long)after.fill_delta_parts, (unsigned long long)whole);
  CHECK(after.entries >= before.entries); /* loaded from its disk */
  CHECK(after.fill_delta_parts > 0);
  CHECK(after.fill_bytes_in * 5 < whole);
  /* Every key reads its last value, from every node's view. */
  for (int n = 0; n < NODES; n++) {
    grid_t *gn = open_node(n, 8000);
    for (int k = 0; k < keys; k++) {
      snprintf(key, sizeof key, "d:%d", k);
      value_of(val, sizeof val, key, (k % 7 == 0 && k / 7 < updates) ? 1 : 0);
      check_value(gn, CACHE, key, val);
    }
    grid_close(gn);
  }
  /* A snapshot on every node, each in its data_dir. */
  uint64_t made = 0;
  CHECK_RC(grid_snapshot_create(g, "after-delta", &made), 0);
  CHECK_EQ(made, NODES);
  for (int n = 0; n < NODES; n++) {
    char path[256];
    snprintf(path, sizeof path, "%s/snapshots/after-delta/CURRENT", data_dirs[n]);
    CHECK(access(path, F_OK) == 0);
  }
  CHECK_RC(grid_snapshot_create(g, "after-delta", &made), GRID_EEXIST);
  grid_close(g);
  /* Node 2's copies alone: the others killed, what node 2 serves (the
   * partitions it holds in sync) is every write, the ones made while it
   * was filled too. */
  harness_kill9(&nodes[0]);
  harness_kill9(&nodes[1]);
  harness_sleep_ms(500);
  g = open_node(2, 3000);
  /* Until node 2 leads what it holds in sync (a map without the others). */
  for (int t = 0; t < 200; t++) {
    pmap_t m2;
    harness_pmap(nodes[2].port, &m2);
    int absent = 0;
    for (size_t i = 0; i < m2.nnodes; i++) absent += m2.nodes[i].absent;
    pmap_free(&m2);
    if (absent == 2) break;
    harness_sleep_ms(100);
  }
  check_writers_on(g, w, 2, 1);
  pmap_t m2;
  harness_pmap(nodes[2].port, &m2);
  char id2[32];
  node_id(2, id2, sizeof id2);
  int idx2 = pmap_node_index(&m2, id2);
  long served = 0;
  for (int k = 0; k < keys; k++) {
    snprintf(key, sizeof key, "d:%d", k);
    if (!key_led_by(&m2, key, idx2)) continue;
    grid_value_t v;
    int rc = grid_get(g, CACHE, key, strlen(key), &v);
    if (rc != 0) fprintf(stderr, "get %s from node 2 alone: %s\n", key, grid_err_name(rc));
    CHECK_RC(rc, 0);
    value_of(val, sizeof val, key, (k % 7 == 0 && k / 7 < updates) ? 1 : 0);
    CHECK_STR(v.data, val);
    grid_value_free(&v);
    served++;
  }
  pmap_free(&m2);
  fprintf(stderr, "   node 2 alone served %ld of %d keys, each with its last value\n", served,
          keys);
  CHECK(served > 0);
  grid_close(g);
  start_node(0);
  start_node(1);
  wait_settled(nodes[0].port, CACHE, NODES);
  g = open_node(0, 8000);
  check_writers(g, w, 2);
  grid_close(g);
}

static void test_whole_cluster_kill9(void) {
  fprintf(stderr, "-- every node killed with kill -9 under load, started again in another "
          "order\n");
  static writer_t w[WRITERS];
  pthread_t th[WRITERS];
  atomic_store(&stop_writers, 0);
  for (int i = 0; i < WRITERS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].id = i;
    w[i].g = open_node(i % NODES, 3000);
    CHECK(pthread_create(&th[i], NULL, writer_main, &w[i]) == 0);
  }
  harness_sleep_ms(2000);
  for (int i = 0; i < NODES; i++) harness_kill9(&nodes[i]);
  harness_sleep_ms(200);
  atomic_store(&stop_writers, 1);
  long acked = 0;
  for (int i = 0; i < WRITERS; i++) {
    pthread_join(th[i], NULL);
    grid_close(w[i].g);
    acked += w[i].acked;
  }
  fprintf(stderr, "   %ld writes acknowledged before the crash\n", acked);
  CHECK(acked > 100);

  /* node 2 first, alone: partitions it held in sync are served from it;
   * the others wait for their nodes. No key answers "not found". */
  start_node(2);
  harness_sleep_ms(3000); /* past lost_grace_ms: still waiting */
  grid_t *g = open_node(2, 1500);
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g, &st), 0);
  uint32_t waiting = 0;
  for (size_t i = 0; i < st->ngroups; i++) waiting += st->groups[i].waiting;
  grid_cluster_status_free(st);
  fprintf(stderr, "   with one node back, %u partitions wait for the others\n", waiting);
  CHECK(waiting > 0);
  long answered = 0, refused = 0;
  for (int i = 0; i < WRITERS; i++) {
    for (int k = 0; k < KEYS_PER_WRITER; k += 5) {
      if (w[i].keys[k].acked < 0) continue;
      char key[32];
      snprintf(key, sizeof key, "w%d:k%d", i, k);
      grid_value_t v;
      int rc = grid_get(g, CACHE, key, strlen(key), &v);
      if (rc == GRID_ENOTFOUND) {
        pmap_t m;
        harness_pmap(nodes[2].port, &m);
        const pmap_group_t *pc = pmap_find_cache(&m, CACHE);
        uint32_t p = part_of(key, strlen(key), pc->partitions);
        fprintf(stderr, "key %s (partition %u) not found; its copies:", key, p);
        for (uint32_t s = 0; s < pc->slots; s++) {
          int cst, idx = pmap_copy_at(pc, p, s, &cst);
          if (idx >= 0)
            fprintf(stderr, " %s:%d%s", m.nodes[idx].id, cst, m.nodes[idx].absent ? "(absent)" : "");
        }
        fprintf(stderr, "\n");
        pmap_free(&m);
      }
      CHECK(rc != GRID_ENOTFOUND); /* never the answer of a node without it */
      if (rc == 0) {
        answered++;
        grid_value_free(&v);
      } else {
        refused++;
      }
    }
  }
  fprintf(stderr, "   %ld reads answered, %ld refused while their nodes are away\n", answered,
          refused);
  CHECK(answered > 0 && refused > 0);
  grid_close(g);
  start_node(0);
  harness_sleep_ms(500);
  start_node(1);
  wait_settled(nodes[0].port, CACHE, NODES);
  g = open_node(1, 8000);
  check_writers(g, w, WRITERS);
  grid_close(g);
}

/* 3. */
static void test_accept_loss(void) {
  fprintf(stderr, "-- a node gone for good: its partitions wait, then the operator accepts "
          "the loss\n");
  grid_t *g = open_node(0, 3000);
  char key[32], val[128];
  for (int k = 0; k < 300; k++) {
    snprintf(key, sizeof key, "s:%d", k);
    value_of(val, sizeof val, key, 0);
    put_value(g, SOLO, key, val);
  }
  wait_settled(nodes[0].port, SOLO, NODES);
  pmap_t m;
  harness_pmap(nodes[0].port, &m);
  const pmap_group_t *pc = pmap_find_cache(&m, SOLO);
  CHECK(pc != NULL);
  char id2[32];
  node_id(2, id2, sizeof id2);
  int idx2 = pmap_node_index(&m, id2);
  /* Keys node 2 holds alone, and one it does not. */
  int on2[300], n2 = 0, other = -1;
  for (int k = 0; k < 300; k++) {
    snprintf(key, sizeof key, "s:%d", k);
    uint32_t p = part_of(key, strlen(key), pc->partitions);
    if (pmap_primary(pc, p) == idx2) on2[n2++] = k;
    else if (other < 0) other = k;
  }
  pmap_free(&m);
  CHECK(n2 > 0 && other >= 0);
  harness_kill9(&nodes[2]);
  harness_sleep_ms(4000); /* well past lost_grace_ms */
  grid_close(g);
  g = open_node(0, 1500);
  /* A snapshot needs every node of the map. */
  CHECK(grid_snapshot_create(g, "one-away", NULL) != 0);
  grid_value_t v;
  snprintf(key, sizeof key, "s:%d", on2[0]);
  int rc = grid_get(g, SOLO, key, strlen(key), &v);
  CHECK(rc != 0 && rc != GRID_ENOTFOUND); /* waits: not lost, not served empty */
  snprintf(key, sizeof key, "s:%d", other);
  value_of(val, sizeof val, key, 0);
  check_value(g, SOLO, key, val);
  /* A node that is alive, or unknown, is refused. */
  char id0[32];
  node_id(0, id0, sizeof id0);
  CHECK_RC(grid_accept_loss(g, id0), GRID_EINVAL);
  CHECK_RC(grid_accept_loss(g, "no-such-node"), GRID_EINVAL);
  CHECK_RC(grid_accept_loss(g, id2), 0);
  wait_settled(nodes[0].port, SOLO, NODES - 1);
  grid_close(g);
  g = open_node(0, 8000);
  snprintf(key, sizeof key, "s:%d", on2[0]);
  CHECK_RC(grid_get(g, SOLO, key, strlen(key), &v), GRID_ENOTFOUND); /* started again */
  put_value(g, SOLO, key, "after");
  /* The node comes back with its old data: it holds nothing of its old
   * copies (another history now), and what it serves is what the cluster
   * has. */
  start_node(2);
  wait_settled(nodes[0].port, SOLO, NODES);
  grid_close(g);
  g = open_node(2, 8000);
  check_value(g, SOLO, key, "after");
  if (n2 > 1) {
    snprintf(key, sizeof key, "s:%d", on2[1]);
    CHECK_RC(grid_get(g, SOLO, key, strlen(key), &v), GRID_ENOTFOUND);
  }
  grid_close(g);
}

int main(void) {
  harness_zk_start(&zk);
  for (int i = 0; i < NODES; i++) {
    snprintf(data_dirs[i], sizeof data_dirs[i], "/tmp/grid-pdata-XXXXXX");
    CHECK(mkdtemp(data_dirs[i]) != NULL);
  }
  for (int i = 0; i < NODES; i++) start_node(i);
  grid_t *g = open_node(0, 8000);
  grid_cache_config_t cfg = {.name = CACHE, .partitions = PARTS, .backups = 1,
                             .persistence = 1, .fsync = GRID_FSYNC_ALWAYS};
  CHECK_RC(grid_cache_create(g, &cfg), 0);
  grid_cache_config_t solo = {.name = SOLO, .partitions = PARTS, .backups = 0,
                              .persistence = 1, .fsync = GRID_FSYNC_ALWAYS};
  CHECK_RC(grid_cache_create(g, &solo), 0);
  grid_close(g);
  wait_settled(nodes[0].port, CACHE, NODES);
  test_restart_catches_up_by_delta();
  test_whole_cluster_kill9();
  test_accept_loss();
  for (int i = 0; i < NODES; i++) CHECK_EQ(harness_stop(&nodes[i]), 0);
  harness_zk_stop(&zk);
  for (int i = 0; i < NODES; i++) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dirs[i]);
    if (system(cmd)) {}
  }
  fprintf(stderr, "test_persist_cluster: all passed\n");
  return 0;
}
