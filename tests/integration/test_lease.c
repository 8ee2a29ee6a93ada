/*
 * The lease: a node that loses ZooKeeper stops serving before its session
 * can expire and its partitions go to others; when ZooKeeper is back the
 * cluster serves again with nothing lost.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"
#include "part.h"
#include "pmap.h"

/* The primary of key k in cache "leased" is stopped (SIGSTOP) for three
 * session timeouts; meanwhile its backup takes over and acknowledges a
 * newer value. A request that reached the stopped node's socket before it
 * resumes is served first thing after SIGCONT, before its cluster thread
 * can notice the session is gone: it must not get the old value. */
static void paused_primary(grid_t *g, harness_node_t *nodes) {
  const char *key = "paused-key";
  CHECK_RC(grid_put(g, "leased", key, strlen(key), "old", 3, 0, NULL), 0);
  pmap_t m;
  harness_pmap(nodes[0].port, &m);
  const pmap_group_t *pc = pmap_find_cache(&m, "leased");
  CHECK(pc);
  int prim = pmap_primary(pc, part_of(key, strlen(key), pc->partitions));
  CHECK(prim >= 0);
  int victim = -1;
  for (int i = 0; i < 3; i++) {
    char id[32];
    snprintf(id, sizeof id, "lease-%d", i);
    if (strcmp(m.nodes[prim].id, id) == 0) victim = i;
  }
  pmap_free(&m);
  CHECK(victim >= 0);
  harness_node_t *a = &nodes[victim], *b = &nodes[(victim + 1) % 3];
  fprintf(stderr, "   %s leads the key: stopping it\n", a->uri);
  harness_pause(a);
  /* Through another node, the new value is acknowledged once the backup
   * leads (short calls: the stopped node answers nothing meanwhile). */
  grid_options_t o = {.timeout_ms = 300};
  grid_t *gb;
  CHECK_RC(grid_open(b->uri, &o, &gb), 0);
  int rc = -1;
  for (int i = 0; i < 200 && rc != 0; i++) {
    rc = grid_put(gb, "leased", key, strlen(key), "new", 3, 0, NULL);
    if (rc != 0) harness_sleep_ms(50);
  }
  CHECK_RC(rc, 0);
  harness_sleep_ms(2000); /* well past the stopped node's session and lease */
  /* A GET already waiting in the stopped node's socket. */
  int fd = harness_connect(a->port);
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x47524944u;
  h.version = 1;
  harness_send_frame(fd, &h.base);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.id = 1;
  rq.op = GRID__OP__GET;
  rq.cache = "leased";
  rq.key = (ProtobufCBinaryData){strlen(key), (uint8_t *)key};
  harness_send_frame(fd, &rq.base);
  harness_resume(a);
  unsigned char buf[4096];
  CHECK(harness_read_frame(fd, buf, sizeof buf, 10000) >= 0); /* HelloReply */
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 10000);
  CHECK(n >= 0);
  Grid__Reply *rp = grid__reply__unpack(NULL, (size_t)n, buf);
  CHECK(rp);
  fprintf(stderr, "   the resumed node answered: %s%s%.*s\n", grid_err_name(rp->status),
          rp->status ? "" : " ", (int)rp->value.len, (const char *)rp->value.data);
  CHECK(rp->status != 0 || (rp->value.len == 3 && memcmp(rp->value.data, "new", 3) == 0));
  grid__reply__free_unpacked(rp, NULL);
  close(fd);
  /* And once it is back in the cluster, every node reads the new value. */
  grid_set_timeout(gb, 10000);
  grid_value_t v;
  CHECK_RC(grid_get(gb, "leased", key, strlen(key), &v), 0);
  CHECK_STR(v.data, "new");
  grid_value_free(&v);
  grid_close(gb);
}

int main(void) {
  harness_zk_t zk;
  harness_zk_start(&zk);
  harness_node_t nodes[3];
  const char *settings[] = {"cluster_min_nodes=3", "zk_session_timeout_ms=1000", NULL};
  for (int i = 0; i < 3; i++) harness_start_cluster_node(&nodes[i], &zk, "lease", i, settings);
  grid_options_t o = {.timeout_ms = 10000};
  grid_t *g;
  CHECK_RC(grid_open(nodes[0].uri, &o, &g), 0);
  grid_cache_config_t cc = {.name = "leased", .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  for (int i = 0; i < 200; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    CHECK_RC(grid_put(g, "leased", key, strlen(key), key, strlen(key), 0, NULL), 0);
  }

  fprintf(stderr, "-- ZooKeeper stops answering: every node fences itself\n");
  harness_pause_pid(zk.pid);
  grid_set_timeout(g, 1000);
  int rc = 0;
  for (int i = 0; i < 200; i++) {
    grid_value_t v;
    rc = grid_get(g, "leased", "k1", 2, &v);
    if (rc == 0) grid_value_free(&v);
    if (rc == GRID_ECLUSTER) break;
    harness_sleep_ms(50);
  }
  CHECK_RC(rc, GRID_ECLUSTER);
  CHECK_RC(grid_put(g, "leased", "k1", 2, "new", 3, 0, NULL), GRID_ECLUSTER);

  fprintf(stderr, "-- ZooKeeper is back: the cluster serves again, nothing lost\n");
  CHECK(kill(zk.pid, SIGCONT) == 0);
  grid_set_timeout(g, 10000);
  for (int i = 0; i < 400; i++) {
    rc = grid_put(g, "leased", "after", 5, "yes", 3, 0, NULL);
    if (rc == 0) break;
    harness_sleep_ms(50);
  }
  CHECK_RC(rc, 0);
  for (int i = 0; i < 200; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    grid_value_t v;
    rc = grid_get(g, "leased", key, strlen(key), &v);
    CHECK_RC(rc, 0);
    CHECK_STR(v.data, key);
    grid_value_free(&v);
  }
  grid_cluster_status_t *st;
  CHECK_RC(grid_cluster_status(g, &st), 0);
  for (size_t i = 0; i < st->ncaches; i++) CHECK_EQ(st->caches[i].lost, 0);
  grid_cluster_status_free(st);
  /* The outage expired every session, and the copies it moved are filled
   * again before the next step takes a primary away. */
  harness_wait_settled(nodes[0].port, "leased", 3);

  fprintf(stderr, "-- a paused primary, resumed, does not answer from the role it lost\n");
  paused_primary(g, nodes);

  fprintf(stderr, "-- an embedded node joins the cluster and serves its application\n");
  char cfg[256];
  snprintf(cfg, sizeof cfg, "zk = %s\ncluster = lease\nnode_id = lease-embedded\n"
                            "listen = on\nport = 0\nzk_session_timeout_ms = 1000\n", zk.hosts);
  grid_options_t eo = {.timeout_ms = 10000, .config_text = cfg};
  grid_t *e;
  CHECK_RC(grid_open("embedded:", &eo, &e), 0);
  grid_value_t v;
  CHECK_RC(grid_get(e, "leased", "k7", 2, &v), 0);
  CHECK_STR(v.data, "k7");
  grid_value_free(&v);
  CHECK_RC(grid_put(e, "leased", "from-embedded", 13, "hi", 2, 0, NULL), 0);
  CHECK_RC(grid_get(g, "leased", "from-embedded", 13, &v), 0);
  CHECK_STR(v.data, "hi");
  grid_value_free(&v);
  for (int i = 0; i < 400; i++) { /* the map takes the embedded node in */
    CHECK_RC(grid_cluster_status(g, &st), 0);
    size_t n = st->nnodes;
    grid_cluster_status_free(st);
    if (n == 4) break;
    harness_sleep_ms(50);
  }
  CHECK_RC(grid_cluster_status(e, &st), 0);
  CHECK_EQ(st->nnodes, 4);
  CHECK_STR(st->node_id, "lease-embedded");
  grid_cluster_status_free(st);
  grid_close(e);
  grid_close(g);
  for (int i = 0; i < 3; i++) CHECK(harness_stop(&nodes[i]) == 0);
  harness_zk_stop(&zk);
  printf("test_lease: all passed\n");
  return 0;
}
