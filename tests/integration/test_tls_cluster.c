/*
 * TLS in a cluster, with real gridd processes, a real ZooKeeper and
 * certificates this test makes with the openssl CLI:
 *   1. three nodes with tls_replication = yes advertise their TLS ports in
 *      the map; a grids:// client routes every key to its primary over TLS
 *      and follows a change stream over TLS;
 *   2. the nodes' links are TLS: a node killed with kill -9 loses nothing,
 *      its backups (filled and kept over those links) lead its partitions;
 *   3. a process that claims to be a node on a plain port is refused with
 *      words that say why; a node whose certificate another CA signed
 *      joins ZooKeeper but gets no copies (the coordinator checked its
 *      certificate and says why in its log); the others keep serving.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"
#include "pmap.h"

#define NODES 3
#define CACHE "sec"
#define KEYS 400

static harness_zk_t zk;
static harness_node_t nodes[NODES];
static int tls_ports[NODES];
static char certs[64];

static void sh(const char *cmd) {
  if (system(cmd) != 0) {
    fprintf(stderr, "failed: %s\n", cmd);
    abort();
  }
}

/* A CA, a certificate per node (naming 127.0.0.1) and a client's. */
static void make_certs(void) {
  snprintf(certs, sizeof certs, "/tmp/grid-tlsc-XXXXXX");
  CHECK(mkdtemp(certs) != NULL);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
           "-days 30 -subj '/CN=grid cluster CA' >/dev/null 2>&1 && "
           "echo 'subjectAltName=IP:127.0.0.1' > san.ext && "
           "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt "
           "-days 30 -subj '/CN=another CA' >/dev/null 2>&1 && "
           "for n in node:ca client:ca rogue:other; do c=${n#*:}; n=${n%%:*}; "
           "openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=$n "
           ">/dev/null 2>&1 && openssl x509 -req -in $n.csr -CA $c.crt -CAkey $c.key "
           "-CAcreateserial -out $n.crt -days 30 -extfile san.ext >/dev/null 2>&1 || exit 1; "
           "done",
           certs);
  sh(cmd);
}

/* Node i, with the certificate called name. */
static void start_node_as(harness_node_t *hn, int i, const char *name) {
  char tpf[128], cert[128], key[128], ca[128], hpf[128];
  snprintf(tpf, sizeof tpf, "tls_port_file=%s/tport%d", certs, i);
  snprintf(hpf, sizeof hpf, "http_port_file=%s/hport%d", certs, i);
  snprintf(cert, sizeof cert, "tls_cert_file=%s/%s.crt", certs, name);
  snprintf(key, sizeof key, "tls_key_file=%s/%s.key", certs, name);
  snprintf(ca, sizeof ca, "tls_ca_cert_file=%s/ca.crt", certs);
  const char *settings[] = {"cluster_min_nodes=1", "zk_session_timeout_ms=1000",
                            "forward_timeout_ms=3000", "loops=2", "tls_port=0", tpf, cert, key,
                            ca, "tls_replication=yes", "tls_auth_clients=optional", "lost_grace_ms=1000",
                            "http_port=0", hpf, NULL};
  harness_start_cluster_node(hn, &zk, "tc", i, settings);
  if (i >= NODES) return;
  char path[128];
  snprintf(path, sizeof path, "%s/tport%d", certs, i);
  /* The node creates the file, then writes the port: read until it is
   * there (found by CI: an empty file read the moment it appeared). */
  int got = 0;
  for (int t = 0; t < 500 && !got; t++) {
    FILE *f = fopen(path, "r");
    if (f) {
      got = fscanf(f, "%d", &tls_ports[i]) == 1;
      fclose(f);
    }
    if (!got) harness_sleep_ms(20);
  }
  CHECK(got);
}

static void start_node(int i) { start_node_as(&nodes[i], i, "node"); }

/* A sample of node i's /metrics (curl), or -1 when it has none. */
static long long metric(int i, const char *sample) {
  char cmd[512], line[512];
  snprintf(cmd, sizeof cmd, "curl -s http://127.0.0.1:$(cat %s/hport%d)/metrics", certs, i);
  FILE *p = popen(cmd, "r");
  CHECK(p != NULL);
  long long v = -1;
  size_t sl = strlen(sample);
  while (fgets(line, sizeof line, p))
    if (!strncmp(line, sample, sl) && line[sl] == ' ') v = atoll(line + sl + 1);
  pclose(p);
  return v;
}

/* Waits (10 s at most) for a sample of node i's /metrics to be want: a
 * gauge such as the lease's may read otherwise for a moment. */
static void wait_metric(int i, const char *sample, long long want) {
  long long v = -1;
  for (int t = 0; t < 200 && (v = metric(i, sample)) != want; t++) harness_sleep_ms(50);
  if (v != want) {
    fprintf(stderr, "node %d: %s is %lld, not %lld\n", i, sample, v, want);
    abort();
  }
}

static grid_t *open_tls(int i) {
  char uri[64], ca[128], cert[128], key[128];
  snprintf(uri, sizeof uri, "grids://127.0.0.1:%d", tls_ports[i]);
  snprintf(ca, sizeof ca, "%s/ca.crt", certs);
  snprintf(cert, sizeof cert, "%s/client.crt", certs);
  snprintf(key, sizeof key, "%s/client.key", certs);
  grid_options_t o = {.timeout_ms = 5000, .client_name = "test_tls_cluster",
                      .tls_ca_file = ca, .tls_cert_file = cert, .tls_key_file = key};
  grid_t *g = NULL;
  CHECK_RC(grid_open(uri, &o, &g), 0);
  return g;
}

static void check_all(grid_t *g, const char *tag) {
  for (int k = 0; k < KEYS; k++) {
    char key[32], want[32];
    snprintf(key, sizeof key, "k%d", k);
    snprintf(want, sizeof want, "v%d", k);
    grid_value_t v = {0};
    int rc = 0;
    for (int t = 0; t < 100; t++) {
      rc = grid_get(g, CACHE, key, strlen(key), &v);
      if (rc == 0) break;
      harness_sleep_ms(50);
    }
    if (rc != 0 || v.len != strlen(want) || memcmp(v.data, want, v.len) != 0) {
      fprintf(stderr, "%s: %s: rc %d\n", tag, key, rc);
      abort();
    }
    grid_value_free(&v);
  }
}

int main(void) {
  make_certs();
  harness_zk_start(&zk);
  for (int i = 0; i < NODES; i++) start_node(i);

  /* 1. The map names each node's TLS port; keys go to their primaries. */
  grid_t *g = open_tls(0);
  grid_cache_config_t cc = {.name = CACHE, .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  harness_wait_settled(nodes[0].port, CACHE, NODES);
  pmap_t m;
  harness_pmap(nodes[0].port, &m);
  CHECK_EQ(m.nnodes, NODES);
  for (size_t i = 0; i < m.nnodes; i++) {
    int found = 0;
    for (int j = 0; j < NODES; j++) {
      char want[64];
      snprintf(want, sizeof want, "127.0.0.1:%d", tls_ports[j]);
      found |= strcmp(m.nodes[i].tls_addr, want) == 0;
    }
    CHECK(found);
  }
  pmap_free(&m);
  /* /metrics says the same: every copy in sync, each partition led once. */
  wait_metric(0, "grid_partition_copies{group=\"p64-b1\",state=\"OWNING\"}", 128);
  wait_metric(0, "grid_partition_copies{group=\"p64-b1\",state=\"MOVING\"}", 0);
  wait_metric(1, "grid_serving", 1);
  /* gridctl status --watch: each view either says nothing moves or shows a
   * bar per group moving (the default cache's partitions settle after the
   * three nodes joined); watched until a view is calm. */
  int calm = 0;
  for (int attempt = 0; attempt < 50 && !calm; attempt++) {
    char watch[512], line[512], shown[8192] = "";
    snprintf(watch, sizeof watch,
             "%s --server 127.0.0.1:%d status --watch --interval-ms 100 --count 2", GRIDCTL_PATH,
             nodes[0].port);
    FILE *p = popen(watch, "r");
    CHECK(p != NULL);
    int views = 0, moving = 0, bars = 0, nodes_listed = 0;
    while (fgets(line, sizeof line, p)) {
      strncat(shown, line, sizeof shown - strlen(shown) - 1);
      views += strstr(line, "(every 0.1 s; ^C to stop)") != NULL;
      calm += strstr(line, "every copy in sync: nothing moving") != NULL;
      moving += !strcmp(line, "moving\n");
      bars += strstr(line, "] ") && strstr(line, "copies filling,") != NULL;
      nodes_listed += !strncmp(line, "tc-", 3);
    }
    CHECK_EQ(pclose(p), 0);
    int ok = views == 2 && nodes_listed == 2 * NODES && calm + moving == views &&
             bars >= moving;
    if (!ok) fprintf(stderr, "%s", shown);
    CHECK(ok);
    if (!calm) harness_sleep_ms(200);
  }
  CHECK(calm > 0);
  grid_sub_t *sub;
  CHECK_RC(grid_subscribe(g, CACHE, NULL, &sub), 0);
  for (int k = 0; k < KEYS; k++) {
    char key[32], val[32];
    snprintf(key, sizeof key, "k%d", k);
    snprintf(val, sizeof val, "v%d", k);
    CHECK_RC(grid_put(g, CACHE, key, strlen(key), val, strlen(val), 0, NULL), 0);
  }
  check_all(g, "over TLS");
  /* Every write comes back on the change stream, read over TLS from
   * every primary. */
  int seen = 0;
  grid_event_t ev;
  while (seen < KEYS && grid_sub_next(sub, 5000, &ev) == 0)
    if (ev.kind == GRID_EVENT_PUT) seen++;
  CHECK_EQ(seen, KEYS);
  grid_unsubscribe(sub);
  grid_close(g);

  /* 3. A process claiming to be node tc-1 on a plain port is refused: with
   * tls_replication nodes link over TLS with the cluster CA's certificate. */
  int fd = harness_connect(nodes[0].port);
  CHECK_RC(harness_hello(fd, GRID__ROLE__ROLE_PEER, "tc-1"), GRID_EHANDSHAKE);
  close(fd);

  /* A node whose certificate another CA signed: in ZooKeeper, in no map. */
  harness_node_t rogue;
  start_node_as(&rogue, NODES, "rogue");
  int said = 0;
  for (int t = 0; t < 300 && !said; t++) {
    for (int i = 0; i < NODES && !said; i++) {
      char cmd[512];
      snprintf(cmd, sizeof cmd, "grep -q 'a node is refused.*node=tc-%d.*certificate verify failed' "
               "%s/gridd.log", NODES, nodes[i].dir);
      said = system(cmd) == 0;
    }
    if (!said) harness_sleep_ms(50);
  }
  CHECK(said);
  harness_pmap(nodes[0].port, &m);
  CHECK_EQ(m.nnodes, NODES);
  pmap_free(&m);
  g = open_tls(0);
  check_all(g, "with a rogue node in ZooKeeper");
  grid_close(g);
  CHECK_EQ(harness_stop(&rogue), 0);

  /* 2. The backups were filled over TLS links: a node killed loses
   * nothing. */
  harness_kill9(&nodes[2]);
  harness_wait_settled(nodes[0].port, CACHE, NODES - 1);
  g = open_tls(1);
  check_all(g, "after kill -9");
  grid_close(g);

  for (int i = 0; i < NODES - 1; i++) CHECK_EQ(harness_stop(&nodes[i]), 0);
  harness_zk_stop(&zk);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", certs);
  sh(cmd);
  printf("test_tls_cluster: ok\n");
  return 0;
}
