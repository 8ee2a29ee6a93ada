/*
 * test_bounds: the node's queues of replication fill up and refuse with
 * GRID_EBUSY at their named maximum, and drain afterwards.
 *
 * Two nodes, one backup per partition, full_sync: with the backup stopped
 * (SIGSTOP, well within its ZooKeeper session), every write the primary
 * takes waits for an acknowledgement that does not come, so the queues
 * stay exactly as full as the test made them.
 *   repl_pending_max   requests of one partition waiting for its backups
 *   loop_handoffs_max  requests other loops handed to one loop, unanswered
 *   resp_pipeline_max  RESP commands of one connection awaiting replies
 */
#include <poll.h>
#include <stdatomic.h>
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

#define CACHE "bounded"
#define PARTITIONS 16
#define KEYS_MAX 8

static harness_zk_t zk;

typedef struct put_result {
  atomic_int done;
  atomic_int status;
} put_result_t;

static void on_put(int status, uint64_t version, void *arg) {
  (void)version;
  put_result_t *r = arg;
  atomic_store(&r->status, status);
  atomic_store(&r->done, 1);
}

static int count_done(put_result_t *r, int n, int status) {
  int c = 0;
  for (int i = 0; i < n; i++)
    if (atomic_load(&r[i].done) && (status == 1 || atomic_load(&r[i].status) == status)) c++;
  return c;
}

/* Waits until `want` of r[0..n) are done (status 1: any status); 0 when
 * they are not within 20 s. */
static int wait_done(put_result_t *r, int n, int want, int status) {
  for (int i = 0; i < 400; i++) {
    if (count_done(r, n, status) >= want) return 1;
    harness_sleep_ms(50);
  }
  return 0;
}

typedef struct two_nodes {
  harness_node_t nodes[2];
  grid_t *g;               /* a partition-aware handle on the cluster */
  int primary;             /* index in nodes of the primary of the keys */
  char keys[KEYS_MAX][32];
  uint32_t parts[KEYS_MAX];
  int nkeys;
} two_nodes_t;

/* Keys whose partitions node `primary` (by id) leads, with the other
 * node's copy OWNING; one per partition, taken in partition order. */
static int pick_keys(two_nodes_t *t, const char *cluster, int want_per_parity) {
  pmap_t m;
  harness_pmap(t->nodes[0].port, &m);
  const pmap_group_t *pc = pmap_find_cache(&m, CACHE);
  if (!pc || m.nnodes < 2) {
    pmap_free(&m);
    return 0;
  }
  char id0[64];
  snprintf(id0, sizeof id0, "%s-0", cluster);
  int p0 = pmap_node_index(&m, id0);
  int taken[2] = {0, 0};
  int used[PARTITIONS] = {0};
  t->nkeys = 0;
  for (int k = 0; k < 10000 && t->nkeys < 2 * want_per_parity; k++) {
    char key[32];
    snprintf(key, sizeof key, "key-%d", k);
    uint32_t p = part_of(key, strlen(key), pc->partitions);
    int st;
    if (used[p] || pmap_primary(pc, p) != p0) continue;
    if (pmap_copy_at(pc, p, 1, &st) < 0 || st != PMAP_OWNING) continue;
    if (taken[p % 2] >= want_per_parity) continue;
    used[p] = 1;
    taken[p % 2]++;
    snprintf(t->keys[t->nkeys], sizeof t->keys[0], "%s", key);
    t->parts[t->nkeys++] = p;
  }
  pmap_free(&m);
  t->primary = 0;
  return t->nkeys == 2 * want_per_parity;
}

static void start_two(two_nodes_t *t, const char *cluster, const char *const *extra,
                      int want_per_parity) {
  memset(t, 0, sizeof *t);
  const char *settings[16];
  int n = 0;
  settings[n++] = "cluster_min_nodes=2";
  settings[n++] = "zk_session_timeout_ms=30000"; /* the paused backup stays in */
  settings[n++] = "forward_timeout_ms=30000";    /* and its writes keep waiting */
  for (int i = 0; extra[i]; i++) settings[n++] = extra[i];
  settings[n] = NULL;
  for (int i = 0; i < 2; i++) harness_start_cluster_node(&t->nodes[i], &zk, cluster, i, settings);
  grid_options_t o = {.timeout_ms = 20000, .client_name = "test_bounds"};
  CHECK_RC(grid_open(t->nodes[0].uri, &o, &t->g), 0);
  grid_cache_config_t cc = {.name = CACHE, .partitions = PARTITIONS, .backups = 1,
                            .sync = GRID_SYNC_FULL};
  CHECK_RC(grid_cache_create(t->g, &cc), 0);
  int ok = 0;
  for (int i = 0; i < 200 && !ok; i++) {
    ok = pick_keys(t, cluster, want_per_parity);
    if (!ok) harness_sleep_ms(50);
  }
  CHECK(ok);
  /* Every chosen partition takes a write end to end before the test. */
  for (int i = 0; i < t->nkeys; i++)
    CHECK_RC(grid_put(t->g, CACHE, t->keys[i], strlen(t->keys[i]), "0", 1, 0, NULL), 0);
}

static void stop_two(two_nodes_t *t) {
  grid_close(t->g);
  for (int i = 0; i < 2; i++) CHECK_EQ(harness_stop(&t->nodes[i]), 0);
}

/* repl_pending_max = 3, one loop: three writes of one partition wait for
 * the stopped backup, the fourth is refused at once; once the backup is
 * back the three are acknowledged and the partition takes writes again. */
static void test_repl_pending_max(void) {
  fprintf(stderr, "-- repl_pending_max: writes of one partition waiting for a stopped backup\n");
  two_nodes_t t;
  const char *extra[] = {"loops=1", "repl_pending_max=3", NULL};
  start_two(&t, "bounds-a", extra, 1);
  const char *key = t.keys[0];
  harness_node_t *backup = &t.nodes[1 - t.primary];
  harness_pause(backup);
  put_result_t r[4];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 4; i++) {
    char v[8];
    snprintf(v, sizeof v, "v%d", i + 1);
    CHECK_RC(grid_put_async(t.g, CACHE, key, strlen(key), v, strlen(v), 0, on_put, &r[i]), 0);
  }
  CHECK(wait_done(r, 4, 1, GRID_EBUSY));
  harness_sleep_ms(300);
  CHECK_EQ(count_done(r, 4, 1), 1);                 /* the other three still wait */
  CHECK(atomic_load(&r[3].done) && atomic_load(&r[3].status) == GRID_EBUSY);
  fprintf(stderr, "   the 4th write: GRID_EBUSY while 3 wait; resuming the backup\n");
  harness_resume(backup);
  CHECK(wait_done(r, 4, 4, 1));
  for (int i = 0; i < 3; i++) CHECK_RC(atomic_load(&r[i].status), 0);
  grid_value_t v;
  CHECK_RC(grid_get(t.g, CACHE, key, strlen(key), &v), 0);
  CHECK(v.len == 2 && memcmp(v.data, "v3", 2) == 0);
  grid_value_free(&v);
  CHECK_RC(grid_put(t.g, CACHE, key, strlen(key), "v5", 2, 0, NULL), 0);
  stop_two(&t);
}

/* loop_handoffs_max = 2, two loops: a partition is owned by loop
 * (partition mod 2), and the client's one connection to the primary lives
 * on one of them, so writes of the other loop's partitions are handed
 * over. Three such writes of three partitions: two wait, one is refused;
 * the three writes of the connection's own loop all wait. */
static void test_loop_handoffs_max(void) {
  fprintf(stderr, "-- loop_handoffs_max: writes handed to the partition's loop\n");
  two_nodes_t t;
  const char *extra[] = {"loops=2", "loop_handoffs_max=2", NULL};
  start_two(&t, "bounds-b", extra, 3);
  harness_node_t *backup = &t.nodes[1 - t.primary];
  harness_pause(backup);
  put_result_t r[6];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 6; i++)
    CHECK_RC(grid_put_async(t.g, CACHE, t.keys[i], strlen(t.keys[i]), "w", 1, 0, on_put, &r[i]),
             0);
  CHECK(wait_done(r, 6, 1, GRID_EBUSY));
  harness_sleep_ms(300);
  CHECK_EQ(count_done(r, 6, 1), 1);
  int refused = -1;
  for (int i = 0; i < 6; i++)
    if (atomic_load(&r[i].done)) refused = i;
  CHECK(refused >= 0 && atomic_load(&r[refused].status) == GRID_EBUSY);
  fprintf(stderr, "   a write of partition %u (loop %u): GRID_EBUSY while 5 wait; resuming\n",
          t.parts[refused], t.parts[refused] % 2);
  harness_resume(backup);
  CHECK(wait_done(r, 6, 6, 1));
  for (int i = 0; i < 6; i++)
    if (i != refused) CHECK_RC(atomic_load(&r[i].status), 0);
  /* Answered: the loop takes handoffs again. */
  for (int i = 0; i < 6; i++)
    CHECK_RC(grid_put(t.g, CACHE, t.keys[i], strlen(t.keys[i]), "x", 1, 0, NULL), 0);
  stop_two(&t);
}

/* A key of cache `cache` whose primary is node `cluster`-0. */
static void key_led_by_node0(int port, const char *cluster, const char *cache, char *out,
                             size_t out_len) {
  char id0[64];
  snprintf(id0, sizeof id0, "%s-0", cluster);
  for (int tries = 0; tries < 200; tries++) {
    pmap_t m;
    harness_pmap(port, &m);
    const pmap_group_t *pc = pmap_find_cache(&m, cache);
    int p0 = pmap_node_index(&m, id0);
    for (int k = 0; pc && p0 >= 0 && k < 10000; k++) {
      snprintf(out, out_len, "%s-%d", cache, k);
      if (pmap_primary(pc, part_of(out, strlen(out), pc->partitions)) == p0) {
        pmap_free(&m);
        return;
      }
    }
    pmap_free(&m);
    harness_sleep_ms(50);
  }
  CHECK(0);
}

/* Reads from fd until `lines` RESP lines have come, or timeout_ms passed;
 * returns how many came. */
static int read_lines(int fd, int lines, int timeout_ms, char *buf, size_t cap) {
  size_t len = 0;
  int got = 0;
  for (int waited = 0; got < lines && waited < timeout_ms; waited += 50) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, 50) <= 0) continue;
    ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
    CHECK(n > 0);
    len += (size_t)n;
    buf[len] = '\0';
    got = 0;
    for (const char *q = buf; (q = strstr(q, "\r\n")) != NULL; q += 2) got++;
  }
  return got;
}

/* resp_pipeline_max = 4: a RESP client pipelines four SETs of a partition
 * whose backup is stopped, then SELECT of a cache without backups and a
 * SET there. The four wait for their replies, so the node parses (and
 * reads) no further: the fifth and sixth have not run while the backup is
 * stopped; once it is back all six are answered, in order. */
static void test_resp_pipeline_max(void) {
  fprintf(stderr, "-- resp_pipeline_max: RESP commands waiting for their replies\n");
  two_nodes_t t;
  const char *extra[] = {"loops=1", "resp_pipeline_max=4", NULL};
  start_two(&t, "bounds-c", extra, 1);
  grid_cache_config_t solo = {.name = "solo", .partitions = PARTITIONS, .backups = 0};
  CHECK_RC(grid_cache_create(t.g, &solo), 0);
  char probe[32];
  key_led_by_node0(t.nodes[0].port, "bounds-c", "solo", probe, sizeof probe);
  CHECK_RC(grid_put(t.g, "solo", "warm", 4, "1", 1, 0, NULL), 0);
  int fd = harness_connect(t.nodes[t.primary].resp_port);
  char buf[4096];
  const char *select_bounded = "SELECT " CACHE "\r\n";
  harness_send_all(fd, select_bounded, strlen(select_bounded));
  CHECK_EQ(read_lines(fd, 1, 5000, buf, sizeof buf), 1);
  CHECK_STR(buf, "+OK\r\n");
  harness_pause(&t.nodes[1 - t.primary]);
  char pipeline[512];
  int n = 0;
  for (int i = 0; i < 4; i++)
    n += snprintf(pipeline + n, sizeof pipeline - (size_t)n, "SET %s v%d\r\n", t.keys[0], i);
  n += snprintf(pipeline + n, sizeof pipeline - (size_t)n, "SELECT solo\r\nSET %s 1\r\n", probe);
  harness_send_all(fd, pipeline, (size_t)n);
  harness_sleep_ms(500);
  grid_value_t v;
  CHECK_RC(grid_get(t.g, "solo", probe, strlen(probe), &v), GRID_ENOTFOUND);
  CHECK_EQ(read_lines(fd, 1, 200, buf, sizeof buf), 0); /* the first SET waits */
  fprintf(stderr, "   4 SETs wait, the 5th and 6th commands were not run; resuming\n");
  harness_resume(&t.nodes[1 - t.primary]);
  CHECK_EQ(read_lines(fd, 6, 20000, buf, sizeof buf), 6);
  CHECK_STR(buf, "+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n");
  CHECK_RC(grid_get(t.g, "solo", probe, strlen(probe), &v), 0);
  CHECK_STR(v.data, "1");
  grid_value_free(&v);
  close(fd);
  stop_two(&t);
}

int main(void) {
  harness_zk_start(&zk);
  test_repl_pending_max();
  test_loop_handoffs_max();
  test_resp_pipeline_max();
  harness_zk_stop(&zk);
  printf("test_bounds: ok\n");
  return 0;
}
