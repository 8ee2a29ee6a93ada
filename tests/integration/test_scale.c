/*
 * test_scale: a cluster with many caches and one with many nodes, on real
 * gridd processes and a real ZooKeeper.
 *
 * - 1,000 caches on three nodes share one placement group, so the map in
 *   ZooKeeper stays the size of one cache's; every cache stays readable and
 *   writable, with what was written, after a kill -9 of a node, a join and
 *   a graceful leave.
 * - Creates past a named limit (caches_max, map_bytes_max, map_groups_max)
 *   are refused at once with words that name the limit, and the cluster
 *   keeps serving.
 * - A node past the 255 nodes a map can name is refused at join, and says
 *   why in its log (the cluster's nodes are made directly in ZooKeeper).
 * - 32 nodes form one cluster, lose one to kill -9, and heal; a node that
 *   joins then takes its fills at once (none refused or started again).
 *
 * Run with a test name as argument to run that test alone.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define THREADED /* the synchronous calls of ZooKeeper's mt client */
#include <zookeeper/zookeeper.h>

#include "check.h"
#include "clock.h"
#include "grid.h"
#include "harness.h"
#include "pmap.h"

#define NCACHES 1000
#define CACHE_PARTITIONS 128 /* kept small: 128,000 cache partitions a node */
#define MANY_NODES 32

static harness_zk_t zk;

static grid_t *open_uri(const char *uri) {
  grid_options_t o = {.timeout_ms = 15000, .client_name = "test_scale"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(uri, &o, &g), 0);
  return g;
}

static void cache_name(int i, char *out, size_t len) { snprintf(out, len, "thing-%04d", i); }

/* Every cache holds key "k" with value "<round>-<cache>"; then each is
 * written with round + 1. */
static void check_all_caches(grid_t *g, int round) {
  for (int i = 0; i < NCACHES; i++) {
    char name[32], want[64], next[64];
    cache_name(i, name, sizeof name);
    snprintf(want, sizeof want, "%d-%s", round, name);
    grid_value_t v;
    int rc = grid_get(g, name, "k", 1, &v);
    if (rc != 0) fprintf(stderr, "cache %s: get: %s\n", name, grid_err_name(rc));
    CHECK_RC(rc, 0);
    CHECK(v.len == strlen(want) && memcmp(v.data, want, v.len) == 0);
    grid_value_free(&v);
    snprintf(next, sizeof next, "%d-%s", round + 1, name);
    CHECK_RC(grid_put(g, name, "k", 1, next, strlen(next), 0, NULL), 0);
  }
}

static void start_scale_node(harness_node_t *n, const char *cluster, int i) {
  const char *settings[] = {"zk_session_timeout_ms=1500", "loops=1", "caches_max=1001",
                            "lost_grace_ms=1000", "memory_bytes_max=1g", NULL};
  harness_start_cluster_node(n, &zk, cluster, i, settings);
}

static void test_many_caches(void) {
  printf("-- 1,000 caches on three nodes: one placement group; kill -9, join, leave\n");
  harness_node_t nodes[4] = {0};
  for (int i = 0; i < 3; i++) start_scale_node(&nodes[i], "many", i);
  grid_t *g = open_uri(nodes[0].uri);
  for (int i = 0; i < NCACHES; i++) {
    char name[32];
    cache_name(i, name, sizeof name);
    grid_cache_config_t cfg = {.name = name, .partitions = CACHE_PARTITIONS, .backups = 1};
    int rc = grid_cache_create(g, &cfg);
    if (rc != 0) fprintf(stderr, "create %s: %s\n", name, grid_err_name(rc));
    CHECK_RC(rc, 0);
    char value[64];
    snprintf(value, sizeof value, "0-%s", name);
    CHECK_RC(grid_put(g, name, "k", 1, value, strlen(value), 0, NULL), 0);
  }
  harness_wait_settled(nodes[0].port, "thing-0000", 3);

  /* One group places all 1,000; the map stays small. */
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g, &st), 0);
  CHECK_EQ(st->ncaches, NCACHES + 1); /* and "default" */
  size_t thing_groups = 0;
  for (size_t i = 0; i < st->ngroups; i++)
    if (st->groups[i].caches == NCACHES) thing_groups++;
  CHECK_EQ(thing_groups, 1);
  CHECK_EQ(st->ngroups, 2);
  printf("   map: %llu bytes in %u znodes, largest %u\n", (unsigned long long)st->map_bytes,
         st->map_znodes, st->map_znode_bytes);
  /* Two groups: 128 partitions x 2 copies and 1024 x 1, twice (owners and
   * states), plus the root: far below one znode, whatever the caches. */
  CHECK(st->map_bytes < 64 * 1024);
  grid_cluster_status_free(st);
  check_all_caches(g, 0);

  printf("   kill -9 of a node\n");
  harness_kill9(&nodes[2]);
  harness_wait_settled(nodes[0].port, "thing-0000", 2);
  check_all_caches(g, 1);

  printf("   a node joins\n");
  start_scale_node(&nodes[3], "many", 3);
  harness_wait_settled(nodes[0].port, "thing-0000", 3);
  check_all_caches(g, 2);

  printf("   a node leaves gracefully\n");
  CHECK(harness_stop(&nodes[1]) == 0);
  harness_wait_settled(nodes[0].port, "thing-0000", 2);
  check_all_caches(g, 3);

  /* Through the joined node too: it holds every cache. */
  grid_t *g3 = open_uri(nodes[3].uri);
  check_all_caches(g3, 4);
  grid_close(g3);
  grid_close(g);
  CHECK(harness_stop(&nodes[3]) == 0);
  CHECK(harness_stop(&nodes[0]) == 0);
}

/* The error's words name the limit. */
static void check_refusal(grid_t *g, const grid_cache_config_t *cfg, const char *words) {
  int rc = grid_cache_create(g, cfg);
  CHECK_RC(rc, GRID_ELIMIT);
  const char *msg = grid_last_error();
  printf("   %s: %s\n", cfg->name, msg ? msg : "(no words)");
  CHECK(msg && strstr(msg, words));
}

static void test_limits(void) {
  printf("-- creates past caches_max, map_bytes_max and map_groups_max are refused in words\n");
  harness_node_t nodes[2] = {0};
  const char *settings[] = {"zk_session_timeout_ms=1500", "loops=1", "caches_max=5",
                            "map_bytes_max=20000", "map_groups_max=3", NULL};
  for (int i = 0; i < 2; i++) harness_start_cluster_node(&nodes[i], &zk, "limits", i, settings);
  grid_t *g = open_uri(nodes[0].uri);
  /* "default" (1024 x 1 copy: 2,048 bytes of map) is the first of five
   * caches and of three groups. */
  grid_cache_config_t a = {.name = "a", .partitions = 1024, .backups = 1};
  CHECK_RC(grid_cache_create(g, &a), 0);
  /* 4,096 partitions x 2 copies x 2 bytes would pass 20,000 bytes. */
  grid_cache_config_t big = {.name = "big", .partitions = 4096, .backups = 1};
  check_refusal(g, &big, "map_bytes_max");
  /* The same shape as "a": no new group, so it fits. */
  grid_cache_config_t b = {.name = "b", .partitions = 1024, .backups = 1};
  CHECK_RC(grid_cache_create(g, &b), 0);
  /* A third group fits (2,048 bytes more); a fourth is past map_groups_max. */
  grid_cache_config_t c = {.name = "c", .partitions = 512, .backups = 1};
  CHECK_RC(grid_cache_create(g, &c), 0);
  grid_cache_config_t e = {.name = "e", .partitions = 256, .backups = 1};
  check_refusal(g, &e, "map_groups_max");
  grid_cache_config_t d = {.name = "d", .partitions = 1024, .backups = 1};
  CHECK_RC(grid_cache_create(g, &d), 0);
  /* "default", a, b, c, d: five caches, caches_max. */
  grid_cache_config_t f = {.name = "f", .partitions = 1024, .backups = 1};
  check_refusal(g, &f, "caches_max");
  /* The cluster serves on, and the refused caches do not exist. */
  CHECK_RC(grid_put(g, "c", "k", 1, "v", 1, 0, NULL), 0);
  grid_value_t v;
  CHECK_RC(grid_get(g, "big", "k", 1, &v), GRID_ENOCACHE);
  CHECK_RC(grid_get(g, "e", "k", 1, &v), GRID_ENOCACHE);
  CHECK_RC(grid_get(g, "f", "k", 1, &v), GRID_ENOCACHE);
  /* A drop makes room again. */
  CHECK_RC(grid_cache_drop(g, "b"), 0);
  CHECK_RC(grid_cache_create(g, &f), 0);
  /* A cache dropped and made again in another shape takes it on every
   * node: the other node reports it in the new shape's group and serves
   * it (the old group goes with its last cache). */
  CHECK_RC(grid_cache_drop(g, "c"), 0);
  grid_cache_config_t c2 = {.name = "c", .partitions = 1024, .backups = 1};
  CHECK_RC(grid_cache_create(g, &c2), 0);
  grid_t *g1 = open_uri(nodes[1].uri);
  int seen = 0;
  for (int tries = 0; tries < 200 && !seen; tries++) {
    grid_cluster_status_t *st;
    CHECK_RC(grid_cluster_status(g1, &st), 0);
    for (size_t i = 0; i < st->ncaches; i++)
      if (strcmp(st->caches[i].name, "c") == 0 && strcmp(st->caches[i].group, "p1024-b1") == 0)
        seen = st->ngroups == 2;
    grid_cluster_status_free(st);
    if (!seen) harness_sleep_ms(50);
  }
  CHECK(seen);
  CHECK_RC(grid_put(g1, "c", "k2", 2, "v", 1, 0, NULL), 0);
  grid_close(g1);
  grid_close(g);
  for (int i = 0; i < 2; i++) CHECK(harness_stop(&nodes[i]) == 0);
}

static void test_many_nodes(void) {
  printf("-- %d nodes form one cluster, lose one to kill -9, and heal\n", MANY_NODES);
  static harness_node_t nodes[MANY_NODES];
  memset(nodes, 0, sizeof nodes);
  const char *settings[] = {"zk_session_timeout_ms=2000", "loops=1", "partitions_default=256",
                            "memory_bytes_max=64m", "lost_grace_ms=1000", NULL};
  int64_t t0 = clock_mono_ms();
  for (int i = 0; i < MANY_NODES; i++)
    harness_start_cluster_node(&nodes[i], &zk, "wide", i, settings);
  int64_t t1 = clock_mono_ms();
  grid_t *g = open_uri(nodes[0].uri);
  grid_cache_config_t cfg = {.name = "wide", .partitions = 256, .backups = 1};
  CHECK_RC(grid_cache_create(g, &cfg), 0);
  harness_wait_settled(nodes[0].port, "wide", MANY_NODES);
  printf("   (started in %lld ms, settled %lld ms later)\n", (long long)(t1 - t0),
         (long long)(clock_mono_ms() - t1));
  for (int k = 0; k < 200; k++) {
    char key[16];
    snprintf(key, sizeof key, "key-%d", k);
    CHECK_RC(grid_put(g, "wide", key, strlen(key), key, strlen(key), 0, NULL), 0);
  }
  /* Every node leads some partitions. */
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g, &st), 0);
  CHECK_EQ(st->nnodes, MANY_NODES);
  for (size_t i = 0; i < st->nnodes; i++) CHECK(st->nodes[i].alive && st->nodes[i].primaries > 0);
  grid_cluster_status_free(st);

  int64_t t2 = clock_mono_ms();
  harness_kill9(&nodes[MANY_NODES / 2]);
  harness_wait_settled(nodes[0].port, "wide", MANY_NODES - 1);
  printf("   (healed %lld ms after the kill)\n", (long long)(clock_mono_ms() - t2));
  for (int k = 0; k < 200; k++) {
    char key[16];
    snprintf(key, sizeof key, "key-%d", k);
    grid_value_t v;
    CHECK_RC(grid_get(g, "wide", key, strlen(key), &v), 0);
    CHECK(v.len == strlen(key) && memcmp(v.data, key, v.len) == 0);
    grid_value_free(&v);
  }
  /* A node joins the 31: the primaries link to it to fill its copies at
   * once, and it takes them (it knew the members before they knew it: a
   * joining node once refused the first fills, "not a member", and every
   * refused fill started again). */
  static harness_node_t joined;
  memset(&joined, 0, sizeof joined);
  harness_start_cluster_node(&joined, &zk, "wide", MANY_NODES, settings);
  harness_wait_settled(nodes[0].port, "wide", MANY_NODES);
  for (int i = 0; i <= MANY_NODES; i++) {
    const harness_node_t *n = i < MANY_NODES ? &nodes[i] : &joined;
    if (!n->pid) continue;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "grep -c -e 'not a member of this cluster' -e 'filling a copy failed' "
             "%s/gridd.log", n->dir);
    FILE *p = popen(cmd, "r");
    CHECK(p);
    int refused = -1;
    CHECK(fscanf(p, "%d", &refused) == 1);
    pclose(p);
    if (refused) fprintf(stderr, "node %d: %d fills refused or failed (%s/gridd.log)\n", i, refused,
                         n->dir);
    CHECK_EQ(refused, 0);
  }
  grid_close(g);
  /* Thirty-two graceful leaves would each hand partitions over: this test
   * is about forming and healing, so its nodes end as the one above did. */
  for (int i = 0; i < MANY_NODES; i++)
    if (i != MANY_NODES / 2) harness_kill9(&nodes[i]);
  harness_kill9(&joined);
}

static void zk_quiet_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx) {
  (void)zh, (void)type, (void)state, (void)path, (void)ctx;
}

/* Whether the file holds the text. */
static int file_has(const char *path, const char *text) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[2048];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) found = strstr(line, text) != NULL;
  fclose(f);
  return found;
}

static void test_node_limit(void) {
  printf("-- a node past the %d a map names is refused at join, in words\n", PMAP_NODES_MAX);
  zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
  zhandle_t *zh = zookeeper_init(zk.hosts, zk_quiet_watcher, 10000, NULL, NULL, 0);
  CHECK(zh);
  for (int i = 0; i < 200 && zoo_state(zh) != ZOO_CONNECTED_STATE; i++) harness_sleep_ms(50);
  CHECK(zoo_state(zh) == ZOO_CONNECTED_STATE);
  const char *dirs[] = {"/grid", "/grid/full", "/grid/full/nodes"};
  for (size_t i = 0; i < 3; i++) {
    int rc = zoo_create(zh, dirs[i], NULL, -1, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
    CHECK(rc == ZOK || rc == ZNODEEXISTS);
  }
  /* As many members as a map holds: ephemeral, gone with this session. */
  for (int i = 0; i < PMAP_NODES_MAX; i++) {
    char path[64];
    snprintf(path, sizeof path, "/grid/full/nodes/member-%03d", i);
    CHECK_EQ(zoo_create(zh, path, NULL, -1, &ZOO_OPEN_ACL_UNSAFE, ZOO_EPHEMERAL, NULL, 0), ZOK);
  }
  harness_node_t n = {0};
  const char *settings[] = {"zk_session_timeout_ms=1500", "loops=1", NULL};
  harness_start_cluster_node(&n, &zk, "full", 0, settings);
  char log[300];
  snprintf(log, sizeof log, "%s/gridd.log", n.dir);
  int said = 0;
  for (int i = 0; i < 200 && !said; i++) {
    said = file_has(log, "cannot join: the cluster has as many nodes as a partition map holds");
    if (!said) harness_sleep_ms(50);
  }
  CHECK(said);
  /* Not a member, so it serves no data; it answers, and says why. */
  grid_t *g = open_uri(n.uri);
  grid_set_timeout(g, 500);
  CHECK_RC(grid_put(g, "default", "k", 1, "v", 1, 0, NULL), GRID_ECLUSTER);
  grid_close(g);
  CHECK(harness_stop(&n) == 0);
  zookeeper_close(zh);
}

int main(int argc, char **argv) {
  const struct {
    const char *name;
    void (*fn)(void);
  } tests[] = {
      {"test_limits", test_limits},
      {"test_node_limit", test_node_limit},
      {"test_many_caches", test_many_caches},
      {"test_many_nodes", test_many_nodes},
  };
  harness_zk_start(&zk);
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strcmp(argv[1], tests[i].name) == 0) tests[i].fn();
  harness_zk_stop(&zk);
  printf("test_scale: ok\n");
  return 0;
}
