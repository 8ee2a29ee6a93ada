/* A cluster of real gridd processes and a real ZooKeeper, on loopback. */
#define _GNU_SOURCE /* memmem */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"
#include "part.h"
#include "pmap.h"

static harness_zk_t zk;

static void start_node(harness_node_t *n, const char *cluster, int i, const char *zone,
                       int min_nodes) {
  char s_zone[64], s_min[64];
  snprintf(s_zone, sizeof s_zone, "zone=%s", zone ? zone : "");
  snprintf(s_min, sizeof s_min, "cluster_min_nodes=%d", min_nodes);
  /* lost_grace_ms short: test_lost_partitions waits for the loss. */
  /* Keyspace notifications on: test_resp_pubsub hears them, and every
   * other test runs with the nodes following their default cache. */
  const char *settings[] = {s_zone, s_min, "zk_session_timeout_ms=1000", "loops=2",
                            "lost_grace_ms=1000", "notify_keyspace_events=KEA", NULL};
  harness_start_cluster_node(n, &zk, cluster, i, settings);
}

/* Waits until the node at port acts on a map of `nodes` nodes placing
 * `cache` (NULL: any), with an epoch of at least min_epoch. */
static void wait_map(int port, size_t nodes, const char *cache, uint64_t min_epoch, pmap_t *out) {
  for (int i = 0; i < 600; i++) {
    harness_pmap(port, out);
    if (out->epoch >= min_epoch && out->nnodes == nodes &&
        (!cache || pmap_find_cache(out, cache)))
      return;
    pmap_free(out);
    harness_sleep_ms(50);
  }
  fprintf(stderr, "no map of %zu nodes%s%s on port %d within 30 s\n", nodes,
          cache ? " with cache " : "", cache ? cache : "", port);
  abort();
}

static grid_t *open_node(const harness_node_t *n) {
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_cluster"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(n->uri, &o, &g), 0);
  return g;
}

/* Every node leads about a third of the partitions, and no partition has
 * two copies on one node. */
static void check_placement(const pmap_t *m, const char *cache, size_t copies_want) {
  const pmap_group_t *pc = pmap_find_cache(m, cache);
  CHECK(pc);
  uint32_t prim[PMAP_NODES_MAX] = {0};
  for (uint32_t p = 0; p < pc->partitions; p++) {
    int seen[PMAP_NODES_MAX] = {0};
    size_t copies = 0;
    for (uint32_t k = 0; k < pc->slots; k++) {
      int st;
      int idx = pmap_copy_at(pc, p, k, &st);
      if (idx < 0 || st == PMAP_NONE) continue;
      CHECK_EQ(st, PMAP_OWNING);
      CHECK(!seen[idx]);
      seen[idx] = 1;
      copies++;
    }
    CHECK_EQ(copies, copies_want);
    int pr = pmap_primary(pc, p);
    CHECK(pr >= 0);
    prim[pr]++;
  }
  double third = pc->partitions / (double)m->nnodes;
  for (size_t i = 0; i < m->nnodes; i++) {
    fprintf(stderr, "   %s leads %u of %u partitions of %s\n", m->nodes[i].id, prim[i],
            pc->partitions, cache);
    CHECK(prim[i] >= 0.9 * third && prim[i] <= 1.1 * third);
  }
}

static harness_node_t nodes[3];
static grid_t *g[3];

static void test_placement(void) {
  pmap_t m;
  wait_map(nodes[0].port, 3, "default", 1, &m);
  check_placement(&m, "default", 1);
  pmap_free(&m);
  grid_cache_config_t cc = {.name = "b1", .partitions = 512, .backups = 1};
  CHECK_RC(grid_cache_create(g[1], &cc), 0);
  CHECK_RC(grid_cache_create(g[2], &cc), GRID_ECACHEEXISTS);
  for (int i = 0; i < 3; i++) {
    wait_map(nodes[i].port, 3, "b1", 1, &m);
    check_placement(&m, "b1", 2);
    pmap_free(&m);
  }
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g[2], &st), 0);
  CHECK_STR(st->cluster, "c3");
  CHECK_EQ(st->nnodes, 3);
  CHECK(st->coordinator[0] != '\0');
  CHECK(st->epoch >= 1);
  CHECK(st->zk_connected);
  uint32_t prim_total = 0;
  for (size_t i = 0; i < st->nnodes; i++) {
    CHECK(st->nodes[i].alive);
    prim_total += st->nodes[i].primaries;
  }
  CHECK_EQ(prim_total, 1024 + 512);
  for (size_t i = 0; i < st->ncaches; i++) {
    CHECK_EQ(st->caches[i].lost, 0);
    CHECK_EQ(st->caches[i].moving, 0);
  }
  grid_cluster_status_free(st);
}

/* Writes through any node are read through every node. */
static void test_any_node(void) {
  enum { N = 600 };
  char key[32], val[32];
  for (int i = 0; i < N; i++) {
    snprintf(key, sizeof key, "k%d", i);
    snprintf(val, sizeof val, "v%d", i);
    CHECK_RC(grid_put(g[i % 3], "default", key, strlen(key), val, strlen(val), 0, NULL), 0);
  }
  for (int n = 0; n < 3; n++) {
    for (int i = 0; i < N; i++) {
      snprintf(key, sizeof key, "k%d", i);
      snprintf(val, sizeof val, "v%d", i);
      grid_value_t v;
      CHECK_RC(grid_get(g[n], "default", key, strlen(key), &v), 0);
      CHECK_STR(v.data, val);
      grid_value_free(&v);
    }
    uint64_t size;
    CHECK_RC(grid_size(g[n], "default", &size), 0);
    CHECK_EQ(size, N);
  }
  int64_t sum;
  for (int i = 0; i < 30; i++) CHECK_RC(grid_add(g[i % 3], "default", "ctr", 3, 1, &sum), 0);
  CHECK_EQ(sum, 30);
  /* Batches spread over the nodes that lead their keys. */
  static char kb[N][16];
  const void *keys[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) {
    snprintf(kb[i], sizeof kb[i], "batch%d", i);
    keys[i] = kb[i];
    lens[i] = strlen(kb[i]);
  }
  CHECK_RC(grid_put_all(g[0], "default", N, keys, lens, keys, lens, 0), 0);
  grid_value_t *out = calloc(N, sizeof *out);
  CHECK_RC(grid_get_all(g[1], "default", N, keys, lens, out), 0);
  for (int i = 0; i < N; i++) {
    CHECK(out[i].found);
    CHECK_STR(out[i].data, kb[i]);
    grid_value_free(&out[i]);
  }
  free(out);
  size_t deleted;
  CHECK_RC(grid_delete_all(g[2], "default", N, keys, lens, &deleted), 0);
  CHECK_EQ(deleted, N);
}

static void test_caches_cluster_wide(void) {
  grid_cache_config_t cc = {.name = "things", .partitions = 64};
  CHECK_RC(grid_cache_create(g[0], &cc), 0);
  CHECK_RC(grid_put(g[2], "things", "{pump}.t", 8, "21.5", 4, 0, NULL), 0);
  grid_value_t v;
  CHECK_RC(grid_get(g[1], "things", "{pump}.t", 8, &v), 0);
  CHECK_STR(v.data, "21.5");
  grid_value_free(&v);
  CHECK_RC(grid_cache_drop(g[1], "things"), 0);
  CHECK_RC(grid_cache_drop(g[1], "things"), GRID_ENOCACHE);
  int rc = 0;
  for (int i = 0; i < 200; i++) {
    rc = grid_get(g[0], "things", "{pump}.t", 8, &v);
    if (rc == GRID_ENOCACHE) break;
    if (rc == 0) grid_value_free(&v);
    harness_sleep_ms(25);
  }
  CHECK_RC(rc, GRID_ENOCACHE);
}

/* The Redis protocol on any node, for any key; DBSIZE counts the cluster. */
static void test_resp_any_node(void) {
  char out[256];
  for (int i = 0; i < 40; i++) {
    char key[32], val[32];
    snprintf(key, sizeof key, "resp%d", i);
    snprintf(val, sizeof val, "v%d", i);
    const char *set[] = {"SET", key, val, NULL};
    harness_resp(nodes[i % 3].resp_port, set, out, sizeof out);
    CHECK_STR(out, "+OK");
  }
  for (int n = 0; n < 3; n++) {
    for (int i = 0; i < 40; i++) {
      char key[32], val[32];
      snprintf(key, sizeof key, "resp%d", i);
      snprintf(val, sizeof val, "v%d", i);
      const char *get[] = {"GET", key, NULL};
      harness_resp(nodes[n].resp_port, get, out, sizeof out);
      CHECK_STR(out, val);
    }
  }
  uint64_t size;
  CHECK_RC(grid_size(g[0], "default", &size), 0);
  char want[32];
  snprintf(want, sizeof want, ":%llu", (unsigned long long)size);
  const char *dbsize[] = {"DBSIZE", NULL};
  for (int n = 0; n < 3; n++) {
    harness_resp(nodes[n].resp_port, dbsize, out, sizeof out);
    CHECK_STR(out, want);
  }
  const char *incr[] = {"INCR", "resp-counter", NULL};
  for (int n = 0; n < 3; n++) harness_resp(nodes[n].resp_port, incr, out, sizeof out);
  CHECK_STR(out, ":3");
}

/* An expiry change on a cluster node: its replication record is made from
 * the entry as installed (it was once read from the entry just freed; the
 * ASan build of gridd aborts on that). */
static void test_resp_expire_replicated(void) {
  char out[256];
  for (int n = 0; n < 3; n++) {
    const char *set[] = {"SET", "exp-b", "v", NULL};
    const char *pexpire[] = {"PEXPIRE", "exp-b", "100000", NULL};
    const char *persist[] = {"PERSIST", "exp-b", NULL};
    const char *get[] = {"GET", "exp-b", NULL};
    const char *pttl[] = {"PTTL", "exp-b", NULL};
    harness_resp(nodes[n].resp_port, set, out, sizeof out);
    CHECK_STR(out, "+OK");
    harness_resp(nodes[n].resp_port, pexpire, out, sizeof out);
    CHECK_STR(out, ":1");
    harness_resp(nodes[n].resp_port, pttl, out, sizeof out);
    CHECK(out[0] == ':' && atol(out + 1) > 90000);
    harness_resp(nodes[n].resp_port, persist, out, sizeof out);
    CHECK_STR(out, ":1");
    harness_resp(nodes[n].resp_port, get, out, sizeof out);
    CHECK_STR(out, "v");
  }
}

static int peer_hello(int fd, const char *node_id) {
  return harness_hello(fd, GRID__ROLE__ROLE_PEER, node_id);
}

/* Sends a REPL record and returns the reply's status. */
static int peer_record(int fd, uint64_t epoch, size_t key_len) {
  unsigned char *key = calloc(1, key_len + 1);
  CHECK(key);
  memset(key, 'k', key_len);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.id = 7;
  rq.op = GRID__OP__REPL;
  rq.cache = "default";
  rq.key = (ProtobufCBinaryData){key_len, key};
  rq.value = (ProtobufCBinaryData){1, (uint8_t *)"x"};
  rq.epoch = epoch;
  rq.version = 1;
  harness_send_frame(fd, &rq.base);
  free(key);
  static unsigned char buf[1 << 16];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 20000);
  CHECK(n >= 0);
  Grid__Reply *rp = grid__reply__unpack(NULL, (size_t)n, buf);
  CHECK(rp);
  int st = rp->status;
  fprintf(stderr, "   record: %s (%s)\n", grid_err_name(st), rp->message ? rp->message : "");
  grid__reply__free_unpacked(rp, NULL);
  return st;
}

/* Only members of the cluster may link as peers, and their records pass
 * the limits a client's write does and the map fencing, whatever epoch
 * they claim. */
/* Reads from fd until every one of the n needles has been seen, or 10 s
 * pass; returns how many were seen. */
static int read_until_seen(int fd, const char *const *needles, int n) {
  static char buf[1 << 20];
  size_t got = 0;
  int seen = 0;
  for (int rounds = 0; rounds < 1000 && seen < n; rounds++) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 10000) != 1) break;
    ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
    buf[got] = '\0';
    seen = 0;
    for (int i = 0; i < n; i++) seen += memmem(buf, got, needles[i], strlen(needles[i])) != NULL;
  }
  return seen;
}

/* Redis pub/sub is cluster-wide: a subscriber on node 2 hears a PUBLISH
 * made on node 0, and the keyspace notifications of keys whose primaries
 * are on every node. */
static void test_resp_pubsub(void) {
  int fd = harness_connect(nodes[2].resp_port);
  const char *sub = "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n"
                    "*2\r\n$10\r\nPSUBSCRIBE\r\n$19\r\n__keyspace@0__:ps-*\r\n";
  harness_send_all(fd, sub, strlen(sub));
  const char *confirmed[] = {"subscribe\r\n$4\r\nnews\r\n:1\r\n",
                             "psubscribe\r\n$19\r\n__keyspace@0__:ps-*\r\n:2\r\n"};
  CHECK(read_until_seen(fd, confirmed, 2) == 2);
  char out[256];
  const char *publish[] = {"PUBLISH", "news", "hello-cluster", NULL};
  harness_resp(nodes[0].resp_port, publish, out, sizeof out);
  CHECK_STR(out, ":0"); /* node 0's own subscribers: none, as Redis Cluster counts */
  const char *message[] = {"$4\r\nnews\r\n$13\r\nhello-cluster\r\n"};
  CHECK(read_until_seen(fd, message, 1) == 1);
  enum { KEYS = 30 };
  char names[KEYS][64];
  const char *needles[KEYS];
  for (int i = 0; i < KEYS; i++) {
    char key[16];
    snprintf(key, sizeof key, "ps-%d", i);
    const char *set[] = {"SET", key, "v", NULL};
    harness_resp(nodes[i % 3].resp_port, set, out, sizeof out);
    CHECK_STR(out, "+OK");
    snprintf(names[i], sizeof names[i], "__keyspace@0__:%s\r\n$3\r\nset\r\n", key);
    needles[i] = names[i];
  }
  /* Their primaries are spread over the three nodes: each one's notifier
   * published to node 2. */
  CHECK(read_until_seen(fd, needles, KEYS) == KEYS);
  close(fd);
}

static void test_peer_checks(void) {
  int fd = harness_connect(nodes[0].port);
  CHECK_RC(peer_hello(fd, "intruder"), GRID_EHANDSHAKE);
  close(fd);
  fd = harness_connect(nodes[0].port);
  CHECK_RC(peer_hello(fd, "c3-0"), GRID_EHANDSHAKE); /* its own id */
  close(fd);
  pmap_t m;
  wait_map(nodes[0].port, 3, "default", 1, &m);
  uint64_t epoch = m.epoch;
  pmap_free(&m);
  fd = harness_connect(nodes[0].port);
  CHECK_RC(peer_hello(fd, "c3-1"), 0);
  CHECK_RC(peer_record(fd, epoch, 70000), GRID_EKEYTOOBIG);
  /* A map nobody has: it waits for it (forward_timeout_ms), then refused. */
  CHECK_RC(peer_record(fd, UINT64_MAX, 8), GRID_ESTALE);
  close(fd);
  CHECK_RC(grid_ping(g[0]), 0);
}

/* With no backup, a killed node's partitions are lost, said so, and never
 * silently empty; every other partition goes on. */
static void test_lost_partitions(void) {
  pmap_t before;
  wait_map(nodes[0].port, 3, "default", 1, &before);
  const pmap_group_t *pc = pmap_find_cache(&before, "default");
  int victim = pmap_node_index(&before, "c3-2");
  CHECK(victim >= 0);
  char lost_key[32] = "", kept_key[32] = "";
  for (int i = 0; i < 10000 && (!lost_key[0] || !kept_key[0]); i++) {
    char key[32];
    snprintf(key, sizeof key, "probe%d", i);
    int pr = pmap_primary(pc, grid_partition_of(key, strlen(key), pc->partitions));
    if (pr == victim && !lost_key[0]) snprintf(lost_key, sizeof lost_key, "%s", key);
    if (pr != victim && !kept_key[0]) snprintf(kept_key, sizeof kept_key, "%s", key);
  }
  CHECK_RC(grid_put(g[0], "default", lost_key, strlen(lost_key), "x", 1, 0, NULL), 0);
  CHECK_RC(grid_put(g[0], "default", kept_key, strlen(kept_key), "y", 1, 0, NULL), 0);
  uint64_t epoch = before.epoch;
  pmap_free(&before);
  harness_kill9(&nodes[2]);
  grid_close(g[2]);
  g[2] = NULL;
  pmap_t after;
  wait_map(nodes[0].port, 2, "default", epoch + 1, &after);
  pmap_free(&after);
  wait_map(nodes[1].port, 2, "default", epoch + 1, &after);
  pmap_free(&after);
  grid_value_t v;
  CHECK_RC(grid_get(g[0], "default", lost_key, strlen(lost_key), &v), GRID_ELOST);
  CHECK_RC(grid_put(g[1], "default", lost_key, strlen(lost_key), "z", 1, 0, NULL), GRID_ELOST);
  CHECK_RC(grid_get(g[1], "default", kept_key, strlen(kept_key), &v), 0);
  CHECK_STR(v.data, "y");
  grid_value_free(&v);
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g[0], &st), 0);
  int found = 0;
  for (size_t i = 0; i < st->ncaches; i++) {
    if (strcmp(st->caches[i].name, "default") == 0) {
      found = 1;
      CHECK(st->caches[i].lost > 250 && st->caches[i].lost < 450);
    }
  }
  CHECK(found);
  grid_cluster_status_free(st);
}

/* Zones: no two copies of a partition in one zone. */
static void test_zones(void) {
  harness_node_t zn[3];
  const char *zones[3] = {"a", "b", "b"};
  for (int i = 0; i < 3; i++) start_node(&zn[i], "zoned", i, zones[i], 3);
  pmap_t m;
  wait_map(zn[0].port, 3, "default", 1, &m);
  pmap_free(&m);
  grid_t *z = open_node(&zn[1]);
  grid_cache_config_t cc = {.name = "zb", .partitions = 256, .backups = 1};
  CHECK_RC(grid_cache_create(z, &cc), 0);
  wait_map(zn[0].port, 3, "zb", 1, &m);
  const pmap_group_t *pc = pmap_find_cache(&m, "zb");
  int node_a = pmap_node_index(&m, "zoned-0");
  for (uint32_t p = 0; p < pc->partitions; p++) {
    int st0, st1;
    int n0 = pmap_copy_at(pc, p, 0, &st0), n1 = pmap_copy_at(pc, p, 1, &st1);
    CHECK(n0 >= 0 && n1 >= 0);
    CHECK(strcmp(m.nodes[n0].zone, m.nodes[n1].zone) != 0);
    CHECK(n0 == node_a || n1 == node_a); /* zone a has one node: it holds every partition */
  }
  pmap_free(&m);
  grid_close(z);
  for (int i = 0; i < 3; i++) CHECK(harness_stop(&zn[i]) == 0);
}


/* Sends text on fd and checks that the replies that come back are want,
 * byte for byte. */
static void resp_expect(int fd, const char *text, const char *want) {
  harness_send_all(fd, text, strlen(text));
  static char buf[1 << 16];
  size_t got = 0, len = strlen(want);
  while (got < len) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 10000) != 1) break;
    ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  if (got != len || memcmp(buf, want, len) != 0) {
    fprintf(stderr, "   sent: %.2000s\n   want: %.2000s\n   got:  %.*s\n", text, want,
            (int)(got < 2000 ? got : 2000), buf);
    CHECK(!"the replies Redis gives");
  }
}

/* MULTI / EXEC on any node: keys of one partition ({tag}) run as one step
 * on their primary, a change made through the native protocol on another
 * node aborts a WATCH, and keys of two partitions get Redis Cluster's
 * CROSSSLOT. */
static void test_resp_transactions(void) {
  for (int n = 0; n < 3; n++) {
    int fd = harness_connect(nodes[n].resp_port);
    char key_a[32], key_n[32], text[512], want[256];
    snprintf(key_a, sizeof key_a, "{tx%d}a", n);
    snprintf(key_n, sizeof key_n, "{tx%d}n", n);
    snprintf(text, sizeof text,
             "MULTI\r\nSET %s 1\r\nINCR %s\r\nINCR %s\r\nGET %s\r\nEXEC\r\n", key_a, key_n,
             key_n, key_a);
    resp_expect(fd, text,
                "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
                "*4\r\n+OK\r\n:1\r\n:2\r\n$1\r\n1\r\n");
    /* WATCH, then the key changes through another node's native protocol:
     * EXEC runs nothing. */
    snprintf(text, sizeof text, "WATCH %s\r\n", key_a);
    resp_expect(fd, text, "+OK\r\n");
    CHECK_RC(grid_put(g[(n + 1) % 3], "default", key_a, strlen(key_a), "2", 1, 0, NULL), 0);
    snprintf(text, sizeof text, "MULTI\r\nSET %s 3\r\nEXEC\r\n", key_a);
    resp_expect(fd, text, "+OK\r\n+QUEUED\r\n*-1\r\n");
    /* Unchanged: it runs. */
    snprintf(text, sizeof text, "WATCH %s\r\nMULTI\r\nSET %s 4\r\nGET %s\r\nEXEC\r\n", key_a,
             key_a, key_a);
    resp_expect(fd, text, "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$1\r\n4\r\n");
    /* Keys of two partitions. */
    pmap_t m;
    harness_pmap(nodes[n].port, &m);
    const pmap_group_t *pc = pmap_find_cache(&m, "default");
    CHECK(pc);
    uint32_t parts = pc->partitions;
    pmap_free(&m);
    uint32_t pa = part_of(key_a, strlen(key_a), parts), pb = pa;
    char other[32];
    for (int i = 0; pb == pa; i++) {
      snprintf(other, sizeof other, "{other%d}", i);
      pb = part_of(other, strlen(other), parts);
    }
    snprintf(text, sizeof text, "MULTI\r\nSET %s 5\r\nSET %s 5\r\nEXEC\r\nGET %s\r\n", key_a,
             other, key_a);
    snprintf(want, sizeof want, "+OK\r\n+QUEUED\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't "
             "hash to the same slot\r\n$1\r\n4\r\n");
    resp_expect(fd, text, want);
    close(fd);
    /* What EXEC wrote is on every node. */
    for (int k = 0; k < 3; k++) {
      char out[64];
      const char *get[] = {"GET", key_n, NULL};
      harness_resp(nodes[k].resp_port, get, out, sizeof out);
      CHECK_STR(out, "2");
    }
  }
}

/* SELECT 1..15 works on any node without a cache made first: the first
 * SELECT makes it cluster-wide (the commands pipelined behind it wait for
 * it), and keys in it are apart from database 0's. */
/* grid.h's hashes through any node of a cluster, and the same key read as
 * a Redis hash on another node. */
static void test_hashes_cluster(void) {
  for (int n = 0; n < 3; n++) {
    char tag[16];
    snprintf(tag, sizeof tag, "c%d", n);
    harness_check_hashes(g[n], "default", tag);
  }
  const void *f[] = {"temp"};
  const size_t fl[] = {4};
  const void *v[] = {"19.5"};
  const size_t vl[] = {4};
  CHECK_RC(grid_hset(g[0], "default", "{pump-7}", 8, 1, f, fl, v, vl, NULL), 0);
  char out[64];
  const char *hget[] = {"HGET", "{pump-7}", "temp", NULL};
  harness_resp(nodes[2].resp_port, hget, out, sizeof out);
  CHECK_STR(out, "19.5");
  const char *type[] = {"TYPE", "{pump-7}", NULL};
  harness_resp(nodes[1].resp_port, type, out, sizeof out);
  CHECK_STR(out, "+hash");
}

static void test_resp_databases(void) {
  int a = harness_connect(nodes[0].resp_port), b = harness_connect(nodes[2].resp_port);
  resp_expect(a, "SELECT 7\r\nSET dbkey seven\r\nGET dbkey\r\n", "+OK\r\n+OK\r\n$5\r\nseven\r\n");
  resp_expect(b, "SELECT 7\r\nGET dbkey\r\nSELECT 0\r\nGET dbkey\r\n",
              "+OK\r\n$5\r\nseven\r\n+OK\r\n$-1\r\n");
  resp_expect(b, "SELECT 16\r\n", "-ERR DB index is out of range\r\n");
  close(a);
  close(b);
}

/* A connection's pipelined commands run in order: a GET sent right behind
 * a SET of its key sees that SET, whichever node and loop leads the key
 * (a read once answered from the receiving loop before the write ahead of
 * it reached the partition's loop, and saw the old value). */
static void test_resp_pipeline_order(void) {
  enum { PAIRS = 300, KEYS = 7 };
  static char text[PAIRS * 64], want[PAIRS * 64];
  for (int n = 0; n < 3; n++) {
    size_t t = 0, w = 0;
    for (int j = 0; j < PAIRS; j++) {
      char v[16];
      int vl = snprintf(v, sizeof v, "v%d", j);
      t += (size_t)snprintf(text + t, sizeof text - t, "SET po%d:%d %s\r\nGET po%d:%d\r\n", n,
                            j % KEYS, v, n, j % KEYS);
      w += (size_t)snprintf(want + w, sizeof want - w, "+OK\r\n$%d\r\n%s\r\n", vl, v);
    }
    int fd = harness_connect(nodes[n].resp_port);
    resp_expect(fd, text, want);
    close(fd);
  }
}

int main(void) {
  harness_zk_start(&zk);
  for (int i = 0; i < 3; i++) start_node(&nodes[i], "c3", i, NULL, 3);
  for (int i = 0; i < 3; i++) g[i] = open_node(&nodes[i]);
  RUN(test_placement);
  RUN(test_any_node);
  RUN(test_caches_cluster_wide);
  RUN(test_zones);
  RUN(test_resp_any_node);
  RUN(test_resp_expire_replicated);
  RUN(test_resp_pubsub);
  RUN(test_resp_transactions);
  RUN(test_resp_databases);
  RUN(test_hashes_cluster);
  RUN(test_resp_pipeline_order);
  RUN(test_peer_checks);
  RUN(test_lost_partitions);
  for (int i = 0; i < 3; i++) {
    if (g[i]) grid_close(g[i]);
    if (nodes[i].pid) CHECK(harness_stop(&nodes[i]) == 0);
  }
  harness_zk_stop(&zk);
  printf("test_cluster: all passed\n");
  return 0;
}
