/*
 * An embedded cluster member (issue 10): its application reads the keys
 * the node leads in its own thread (no socket, no loop: the node's loops
 * serve none of those reads), sees its own acknowledged writes and other
 * handles' acknowledged writes, and goes on reading every key while a
 * node is killed with kill -9. Two gridd processes, the embedded node in
 * this one, a real ZooKeeper.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "grid.h"
#include "harness.h"
#include "part.h"
#include "pmap.h"

#define KEYS 600
#define CACHE "ec"

static harness_zk_t zk;
static harness_node_t nodes[2];
static char values[KEYS][32];

static void key_of(int i, char *out, size_t len) { snprintf(out, len, "ec-%d", i); }

/* Which keys the embedded node leads now (map read from node 0). */
static int led_keys(int *led, int *n_led) {
  pmap_t m;
  harness_pmap(nodes[0].port, &m);
  int self = pmap_node_index(&m, "ec-embedded");
  const pmap_group_t *g = pmap_find_cache(&m, CACHE);
  CHECK(g != NULL);
  int n = 0;
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    key_of(i, key, sizeof key);
    led[i] = self >= 0 && pmap_primary(g, part_of(key, strlen(key), g->partitions)) == self;
    n += led[i];
  }
  *n_led = n;
  pmap_free(&m);
  return self;
}

static void check_value(grid_t *e, int i) {
  char key[32];
  key_of(i, key, sizeof key);
  grid_value_t v;
  CHECK_RC(grid_get(e, CACHE, key, strlen(key), &v), 0);
  CHECK_STR(v.data, values[i]);
  grid_value_free(&v);
}

static void stats(grid_t *e, grid_stats_t *s) { CHECK_RC(grid_stats(e, s), 0); }

/* Writes keys ec-0..ec-19 of both caches ("ec" partitioned, "ecr"
 * replicated: read from backups) round and round through another handle. */
typedef struct writer {
  grid_t *g;
  _Atomic int stop;
  _Atomic uint64_t acked;
} writer_t;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  char key[32], val[32];
  for (uint64_t i = 0; !atomic_load(&w->stop); i++) {
    key_of((int)(i % 20), key, sizeof key);
    snprintf(val, sizeof val, "w-%llu", (unsigned long long)i);
    const char *cache = i % 2 ? "ecr" : CACHE;
    if (grid_put(w->g, cache, key, strlen(key), val, strlen(val), 0, NULL) == 0)
      atomic_fetch_add(&w->acked, 1);
  }
  return NULL;
}

/* Reads ec-0..ec-19 of both caches through the embedded handle for ms:
 * no version ever goes back (nothing a failover took back, nothing older
 * than what was read before, from a primary or a backup copy). Returns
 * the reads made. */
static uint64_t read_monotonic(grid_t *e, uint64_t *last, int64_t ms) {
  uint64_t n = 0;
  int64_t until = clock_mono_ms() + ms;
  while (clock_mono_ms() < until) {
    for (int i = 0; i < 40; i++) {
      char key[32];
      key_of(i % 20, key, sizeof key);
      grid_value_t v;
      CHECK_RC(grid_get(e, i < 20 ? CACHE : "ecr", key, strlen(key), &v), 0);
      CHECK(v.version >= last[i]);
      last[i] = v.version;
      grid_value_free(&v);
      n++;
    }
  }
  return n;
}

int main(void) {
  harness_zk_start(&zk);
  const char *settings[] = {"cluster_min_nodes=3", "zk_session_timeout_ms=1000",
                            "lost_grace_ms=1000", NULL};
  for (int i = 0; i < 2; i++) harness_start_cluster_node(&nodes[i], &zk, "ec", i, settings);
  char cfg[512];
  snprintf(cfg, sizeof cfg,
           "zk = %s\ncluster = ec\nnode_id = ec-embedded\nlisten = on\nport = 0\n"
           "zk_session_timeout_ms = 1000\ncluster_min_nodes = 3\nlost_grace_ms = 1000\n",
           zk.hosts);
  grid_options_t eo = {.timeout_ms = 10000, .config_text = cfg};
  grid_t *e, *g;
  CHECK_RC(grid_open("embedded:", &eo, &e), 0);
  grid_options_t o = {.timeout_ms = 10000};
  CHECK_RC(grid_open(nodes[0].uri, &o, &g), 0);
  grid_cache_config_t cc = {.name = CACHE, .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    key_of(i, key, sizeof key);
    snprintf(values[i], sizeof values[i], "v0-%d", i);
    CHECK_RC(grid_put(e, CACHE, key, strlen(key), values[i], strlen(values[i]), 0, NULL), 0);
  }
  harness_wait_settled(nodes[0].port, CACHE, 3);
  int led[KEYS], n_led;
  char key[32], val[32];
  CHECK(led_keys(led, &n_led) >= 0);
  fprintf(stderr, "-- the embedded node leads %d of %d keys\n", n_led, KEYS);
  CHECK(n_led > KEYS / 10 && n_led < KEYS - KEYS / 10);

  fprintf(stderr, "-- reads of what it leads: in this thread, none through its loops\n");
  grid_stats_t s0, s1;
  stats(e, &s0);
  uint64_t n = 0;
  for (int round = 0; round < 5; round++)
    for (int i = 0; i < KEYS; i++)
      if (led[i]) {
        check_value(e, i);
        n++;
      }
  stats(e, &s1);
  CHECK_EQ(s1.local_reads - s0.local_reads, n);
  /* The loops served the STATS calls, and perhaps a peer's ping: not the
   * thousands of reads. */
  CHECK(s1.loop_ops - s0.loop_ops < 20);

  fprintf(stderr, "-- batch reads of what it leads (get_all, get_prefix): in this thread\n");
  {
    /* A Thing it leads and one it does not, three properties each, written
     * as one batch through the other handle. */
    char things[2][32] = {"", ""};
    for (int i = 0; i < 1000 && (!things[0][0] || !things[1][0]); i++) {
      char t[32], owner[64];
      int tl = snprintf(t, sizeof t, "{th-%d}", i);
      CHECK_RC(grid_key_owner(e, CACHE, t, (size_t)tl, owner, sizeof owner), 0);
      int mine = !strcmp(owner, "ec-embedded");
      if (!things[mine ? 0 : 1][0]) snprintf(things[mine ? 0 : 1], sizeof things[0], "%s", t);
    }
    CHECK(things[0][0] && things[1][0]);
    for (int t = 0; t < 2; t++) {
      char keys[3][48];
      const void *kp[3];
      size_t kl[3];
      grid_batch_op_t ops[3];
      for (int k = 0; k < 3; k++) {
        kl[k] = (size_t)snprintf(keys[k], sizeof keys[k], "%s.p%d", things[t], k);
        kp[k] = keys[k];
        ops[k] = (grid_batch_op_t){.kind = GRID_BATCH_PUT, .key = keys[k], .key_len = kl[k],
                                   .value = keys[k], .value_len = kl[k]};
      }
      CHECK_RC(grid_batch(g, CACHE, ops, 3, NULL), 0);
      grid_stats(e, &s0);
      grid_value_t vals[3];
      CHECK_RC(grid_get_all(e, CACHE, 3, kp, kl, vals), 0);
      for (int k = 0; k < 3; k++) {
        CHECK(vals[k].found);
        CHECK_STR(vals[k].data, keys[k]);
        CHECK_EQ(vals[k].version, ops[k].version_out);
        grid_value_free(&vals[k]);
      }
      grid_entry_t *ents;
      size_t ne;
      char prefix[48];
      size_t pl = (size_t)snprintf(prefix, sizeof prefix, "%s.", things[t]);
      CHECK_RC(grid_get_prefix(e, CACHE, prefix, pl, 0, &ents, &ne), 0);
      CHECK_EQ(ne, 3);
      for (size_t k = 0; k < ne; k++) CHECK(!memcmp(ents[k].key, prefix, pl));
      grid_entries_free(ents, ne);
      CHECK_RC(grid_get_prefix(e, CACHE, prefix, pl, 2, &ents, &ne), GRID_ELIMIT);
      grid_stats(e, &s1);
      /* The Thing it leads: 3 gets and a prefix read here; the other's: none. */
      if (t == 0) CHECK_EQ(s1.local_reads - s0.local_reads, 4);
      else CHECK_EQ(s1.local_reads - s0.local_reads, 0);
    }
  }

  fprintf(stderr, "-- reads of what others lead: to their primaries\n");
  for (int i = 0; i < KEYS; i++)
    if (!led[i]) check_value(e, i);
  stats(e, &s0);
  CHECK_EQ(s0.local_reads, s1.local_reads);

  fprintf(stderr, "-- a write acknowledged, through this handle or another, is read\n");
  for (int i = 0; i < KEYS; i++) {
    key_of(i, key, sizeof key);
    snprintf(values[i], sizeof values[i], "v1-%d", i);
    grid_t *w = i % 2 ? e : g;
    CHECK_RC(grid_put(w, CACHE, key, strlen(key), values[i], strlen(values[i]), 0, NULL), 0);
    check_value(e, i);
  }
  /* A key deleted and acknowledged is gone at once. */
  CHECK_RC(grid_delete(g, CACHE, "ec-0", 4), 0);
  grid_value_t v;
  CHECK_RC(grid_get(e, CACHE, "ec-0", 4, &v), GRID_ENOTFOUND);
  CHECK_RC(grid_put(g, CACHE, "ec-0", 4, values[0], strlen(values[0]), 0, NULL), 0);

  fprintf(stderr, "-- a replicated cache (read_from_backup): every key is read here\n");
  grid_cache_config_t rc_cfg = {.name = "ecr", .partitions = 16, .mode = GRID_MODE_REPLICATED};
  CHECK_RC(grid_cache_create(g, &rc_cfg), 0);
  for (int i = 0; i < 200; i++) {
    key_of(i, key, sizeof key);
    CHECK_RC(grid_put(i % 2 ? e : g, "ecr", key, strlen(key), key, strlen(key), 0, NULL), 0);
  }
  harness_wait_settled(nodes[0].port, "ecr", 3);
  /* Once each partition's backups have heard its primary's committed
   * counter (the COMMITTED notice after its last write), a whole round of
   * reads is served in this thread: a read from a backup copy that has not
   * heard it yet goes to the primary (correct, not local). */
  int all_local = 0;
  for (int tries = 0; tries < 200 && !all_local; tries++) {
    stats(e, &s0);
    for (int i = 0; i < 200; i++) {
      key_of(i, key, sizeof key);
      CHECK_RC(grid_get(e, "ecr", key, strlen(key), &v), 0);
      CHECK_STR(v.data, key);
      grid_value_free(&v);
    }
    stats(e, &s1);
    all_local = s1.local_reads - s0.local_reads == 200;
    if (!all_local) harness_sleep_ms(20);
  }
  CHECK(all_local);
  /* A write acknowledged is read at once (the backup applied it before the
   * ack, and reads it only once its commit is heard: until then from the
   * primary). */
  for (int i = 0; i < 200; i++) {
    key_of(i, key, sizeof key);
    snprintf(val, sizeof val, "r1-%d", i);
    CHECK_RC(grid_put(i % 2 ? e : g, "ecr", key, strlen(key), val, strlen(val), 0, NULL), 0);
    CHECK_RC(grid_get(e, "ecr", key, strlen(key), &v), 0);
    CHECK_STR(v.data, val);
    grid_value_free(&v);
  }

  fprintf(stderr, "-- node 1 is killed (kill -9): every key is still read\n");
  harness_kill9(&nodes[1]);
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < KEYS; i++) check_value(e, i);
  /* Once the map gives it node 1's primaries, it reads those here too. */
  int before = n_led;
  for (int tries = 0; tries < 400; tries++) {
    led_keys(led, &n_led);
    if (n_led > before) break;
    harness_sleep_ms(50);
  }
  CHECK(n_led > before);
  stats(e, &s0);
  n = 0;
  for (int i = 0; i < KEYS; i++)
    if (led[i]) {
      check_value(e, i);
      n++;
    }
  stats(e, &s1);
  /* A partition just promoted may still wait for its last writes to be
   * committed (read through the loop then); most are read here. */
  CHECK(s1.local_reads - s0.local_reads > n / 2);

  fprintf(stderr, "-- under writes: node 1 comes back and partitions move to it\n");
  harness_wait_settled(nodes[0].port, CACHE, 2);
  writer_t w = {.g = g};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, writer_main, &w) == 0);
  uint64_t last[40] = {0};
  uint64_t reads = read_monotonic(e, last, 1000);
  harness_start_cluster_node(&nodes[1], &zk, "ec", 1, settings);
  reads += read_monotonic(e, last, 3000);
  harness_wait_settled(nodes[0].port, CACHE, 3);
  reads += read_monotonic(e, last, 1000);
  atomic_store(&w.stop, 1);
  pthread_join(t, NULL);
  fprintf(stderr, "   %llu reads, %llu writes acknowledged\n", (unsigned long long)reads,
          (unsigned long long)atomic_load(&w.acked));
  CHECK(atomic_load(&w.acked) > 0);

  grid_close(g);
  grid_close(e);
  CHECK(harness_stop(&nodes[0]) == 0);
  CHECK(harness_stop(&nodes[1]) == 0);
  harness_zk_stop(&zk);
  printf("test_embedded_cluster: all passed\n");
  return 0;
}
