/*
 * Users, roles and ZooKeeper ACLs in a cluster, with real gridd processes
 * and a real ZooKeeper (auth = on, requirepass, cluster_secret, zk_auth):
 *   1. users added on one node (grid_user_add) log in on the other: they
 *      live in ZooKeeper, hashed;
 *   2. roles: a reader of cache "things" reads it and nothing else, writes
 *      nothing, cannot drop a cache or make a node leave; a writer of
 *      "things" writes it; each refusal says which role is missing;
 *   3. a wrong password, an unknown user, no credentials: refused; a user
 *      deleted is refused on its open connection at its next call;
 *   4. ZooKeeper without the credentials reads and writes nothing of the
 *      cluster; a node with other credentials stops at once with words;
 *   5. a process that claims to be a node without the cluster_secret is
 *      refused; an EXEC whose steps name no cache runs on the EXEC's, and
 *      is checked there;
 *   6. failed logins from an address are refused for a while past
 *      auth_failures_max, then logins work again;
 * and all along, a writer's handle is served with nothing lost.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#define THREADED
#include <zookeeper/zookeeper.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

#define NODES 2
#define ADMIN_PW "admin-pw"

static harness_zk_t zk;
static harness_node_t nodes[NODES];

static const char *const base_settings[] = {
    "cluster_min_nodes=1", "zk_session_timeout_ms=1000", "forward_timeout_ms=3000", "loops=2",
    "requirepass=" ADMIN_PW, "cluster_secret=node-secret", "zk_auth=grid:zk-pw",
    "auth_failures_max=3", "auth_lockout_ms=400", NULL};

static grid_t *login(int i, const char *user, const char *password, int *rc_out) {
  grid_options_t o = {.timeout_ms = 5000, .client_name = "test_auth_cluster", .user = user,
                      .password = password};
  grid_t *g = NULL;
  int rc = grid_open(nodes[i].uri, &o, &g);
  if (rc_out) *rc_out = rc;
  else CHECK_RC(rc, 0);
  return g;
}

/* grid_open's status for user on node i (the handle closed). */
static int login_rc(int i, const char *user, const char *password) {
  int rc;
  grid_t *g = login(i, user, password, &rc);
  if (g) grid_close(g);
  return rc;
}

static void put_s(grid_t *g, const char *cache, const char *k, const char *v, int want) {
  CHECK_RC(grid_put(g, cache, k, strlen(k), v, strlen(v), 0, NULL), want);
}

static int get_s(grid_t *g, const char *cache, const char *k, const char *want) {
  grid_value_t v = {0};
  int rc = grid_get(g, cache, k, strlen(k), &v);
  if (rc == 0) {
    CHECK(want && v.len == strlen(want) && memcmp(v.data, want, v.len) == 0);
    grid_value_free(&v);
  }
  return rc;
}

/* The writer's keys so far are all there. */
static void check_writer(grid_t *w, int upto) {
  for (int k = 0; k < upto; k++) {
    char key[32], val[32];
    snprintf(key, sizeof key, "w%d", k);
    snprintf(val, sizeof val, "v%d", k);
    CHECK_RC(get_s(w, "things", key, val), 0);
  }
}

/* On a raw connection to node i, logged in as user: an EXEC on cache
 * `cache` of one PUT step that names no cache of its own. Its status. */
static int raw_exec_put(int i, const char *user, const char *password, const char *cache) {
  int fd = harness_connect(nodes[i].port);
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x47524944u;
  h.version = 1;
  h.client_name = "raw";
  h.user = (char *)user;
  h.password = (char *)password;
  harness_send_frame(fd, &h.base);
  unsigned char buf[4096];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 5000);
  CHECK(n >= 0);
  Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, (size_t)n, buf);
  CHECK(hr && hr->status == 0);
  grid__hello_reply__free_unpacked(hr, NULL);
  Grid__Request step = GRID__REQUEST__INIT;
  step.op = GRID__OP__PUT;
  step.key.data = (uint8_t *)"sneaky";
  step.key.len = 6;
  step.value.data = (uint8_t *)"x";
  step.value.len = 1;
  Grid__Request *steps[] = {&step};
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__EXEC;
  rq.id = 1 << 12;
  rq.cache = (char *)cache;
  rq.steps = steps;
  rq.n_steps = 1;
  harness_send_frame(fd, &rq.base);
  n = harness_read_frame(fd, buf, sizeof buf, 5000);
  CHECK(n >= 0);
  Grid__Reply *rp = grid__reply__unpack(NULL, (size_t)n, buf);
  CHECK(rp != NULL);
  int status = rp->status;
  grid__reply__free_unpacked(rp, NULL);
  close(fd);
  return status;
}

/* A gridd with these settings must exit with an error within 30 s, its
 * log saying words. */
static void must_refuse_to_run(const char *const *settings, const char *words) {
  harness_node_t n;
  harness_start(&n, settings);
  int status = 0;
  pid_t got = 0;
  for (int t = 0; t < 600 && got == 0; t++) {
    got = waitpid(n.pid, &status, WNOHANG);
    if (!got) harness_sleep_ms(50);
  }
  CHECK(got == n.pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "grep -q '%s' %s/gridd.log", words, n.dir);
  CHECK_EQ(system(cmd), 0);
}

int main(void) {
  harness_zk_start(&zk);
  for (int i = 0; i < NODES; i++) harness_start_cluster_node(&nodes[i], &zk, "sc", i, base_settings);

  /* 1. The admin makes a cache and users on node 0. */
  grid_t *admin = login(0, "default", ADMIN_PW, NULL);
  grid_cache_config_t cc = {.name = "things", .partitions = 32, .backups = 1};
  CHECK_RC(grid_cache_create(admin, &cc), 0);
  const char *read_things[] = {"read:things"};
  const char *write_things[] = {"write:things"};
  CHECK_RC(grid_user_add(admin, "reader", "r-pw", read_things, 1, false), 0);
  CHECK_RC(grid_user_add(admin, "writer", "w-pw", write_things, 1, false), 0);
  CHECK_RC(grid_user_add(admin, "reader", "x", read_things, 1, false), GRID_EEXIST);
  const char *bad_role[] = {"superuser"};
  CHECK_RC(grid_user_add(admin, "bad", "x", bad_role, 1, false), GRID_EINVAL);
  CHECK(strstr(grid_last_error(), "superuser") != NULL);
  grid_user_t *us;
  size_t nu;
  CHECK_RC(grid_user_list(admin, &us, &nu), 0);
  CHECK_EQ(nu, 3); /* default, reader, writer */
  grid_user_list_free(us, nu);

  /* ... and they log in on node 1, which read them from ZooKeeper. */
  int rc = GRID_EAUTH;
  for (int t = 0; t < 100 && rc != 0; t++) {
    rc = login_rc(1, "writer", "w-pw");
    if (rc) harness_sleep_ms(50);
  }
  CHECK_RC(rc, 0);
  grid_t *w = login(1, "writer", "w-pw", NULL);
  int written = 0;
  for (; written < 50; written++) {
    char key[32], val[32];
    snprintf(key, sizeof key, "w%d", written);
    snprintf(val, sizeof val, "v%d", written);
    put_s(w, "things", key, val, 0);
  }

  /* 2. Roles. */
  grid_t *r = login(1, "reader", "r-pw", NULL);
  CHECK_RC(get_s(r, "things", "w7", "v7"), 0);
  put_s(r, "things", "r1", "x", GRID_ENOPERM);
  CHECK(strstr(grid_last_error(), "no write role on cache \"things\"") != NULL);
  CHECK_RC(get_s(r, "default", "w7", NULL), GRID_ENOPERM);
  CHECK_RC(grid_cache_drop(r, "things"), GRID_ENOPERM);
  CHECK_RC(grid_leave(r), GRID_ENOPERM);
  CHECK(strstr(grid_last_error(), "admin") != NULL);
  CHECK_RC(grid_user_del(r, "writer"), GRID_ENOPERM);
  put_s(w, "default", "x", "y", GRID_ENOPERM); /* the writer writes "things" only */
  CHECK_RC(grid_ping(r), 0);                   /* any user may ask how things are */
  check_writer(w, written);

  /* 3. Wrong password, unknown user, no credentials. */
  CHECK_RC(login_rc(1, "reader", "wrong"), GRID_EAUTH);
  CHECK_RC(login_rc(0, "nobody", "x"), GRID_EAUTH);
  CHECK_RC(login_rc(0, NULL, NULL), GRID_EAUTH);
  CHECK(strstr(grid_last_error(), "requires a login") != NULL);
  /* A deleted user is refused on the connection it has open. */
  CHECK_RC(grid_user_del(admin, "reader"), 0);
  rc = 0;
  for (int t = 0; t < 100 && rc == 0; t++) {
    rc = get_s(r, "things", "w7", "v7");
    if (rc == 0) harness_sleep_ms(50);
  }
  CHECK(rc == GRID_EAUTH || rc == GRID_ECONN || rc == GRID_EUNKNOWN);
  grid_close(r);
  CHECK_RC(login_rc(1, "reader", "r-pw"), GRID_EAUTH);
  put_s(w, "things", "w50", "v50", 0);
  written = 51;
  check_writer(w, written);

  /* 4. ZooKeeper without the credentials: nothing of the cluster. */
  zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
  zhandle_t *zh = zookeeper_init(zk.hosts, NULL, 5000, NULL, NULL, 0);
  CHECK(zh != NULL);
  char buf[4096];
  int blen = sizeof buf;
  int zrc = ZCONNECTIONLOSS;
  for (int t = 0; t < 100 && (zrc == ZCONNECTIONLOSS || zrc == ZINVALIDSTATE); t++) {
    blen = sizeof buf;
    zrc = zoo_get(zh, "/grid/sc/users", 0, buf, &blen, NULL);
    if (zrc == ZCONNECTIONLOSS || zrc == ZINVALIDSTATE) harness_sleep_ms(50);
  }
  CHECK_EQ(zrc, ZNOAUTH);
  CHECK_EQ(zoo_create(zh, "/grid/sc/nodes/intruder", "x", 1, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0),
           ZNOAUTH);
  CHECK_EQ(zoo_set(zh, "/grid/sc/users", "x", 1, -1), ZNOAUTH);
  CHECK_EQ(zoo_delete(zh, "/grid/sc/caches/things", -1), ZNOAUTH);
  zookeeper_close(zh);
  /* A node with other credentials (or none) stops, saying why. */
  char zkset[96];
  snprintf(zkset, sizeof zkset, "zk=%s", zk.hosts);
  const char *wrong[] = {zkset, "cluster=sc", "node_id=sc-9", "zk_auth=grid:guess",
                         "zk_session_timeout_ms=1000", NULL};
  must_refuse_to_run(wrong, "ZooKeeper refused access to /grid/sc");
  const char *none[] = {zkset, "cluster=sc", "node_id=sc-8", "zk_session_timeout_ms=1000", NULL};
  must_refuse_to_run(none, "zk_auth is not set");
  check_writer(w, written);

  /* 5. A process that claims to be node sc-1 without the cluster secret. */
  int fd = harness_connect(nodes[0].port);
  CHECK_RC(harness_hello(fd, GRID__ROLE__ROLE_PEER, "sc-1"), GRID_EHANDSHAKE);
  close(fd);
  /* An EXEC's steps are checked on the cache they run on: the EXEC's. */
  const char *write_default[] = {"write:default"};
  CHECK_RC(grid_user_add(admin, "dw", "dw-pw", write_default, 1, false), 0);
  rc = GRID_EAUTH;
  for (int t = 0; t < 100 && rc == GRID_EAUTH; t++) {
    rc = login_rc(0, "dw", "dw-pw");
    if (rc) harness_sleep_ms(50);
  }
  CHECK_RC(rc, 0);
  CHECK_RC(raw_exec_put(0, "dw", "dw-pw", "things"), GRID_ENOPERM);
  CHECK_RC(get_s(w, "things", "sneaky", NULL), GRID_ENOTFOUND);

  /* 6. Failed logins: past auth_failures_max the address waits, then may
   * log in again. */
  for (int i = 0; i < 3; i++) CHECK_RC(login_rc(0, "writer", "guess"), GRID_EAUTH);
  CHECK_RC(login_rc(0, "writer", "w-pw"), GRID_EAUTH); /* refused: locked out */
  CHECK(strstr(grid_last_error(), "too many failed logins") != NULL);
  rc = GRID_EAUTH;
  for (int t = 0; t < 100 && rc != 0; t++) {
    harness_sleep_ms(100);
    rc = login_rc(0, "writer", "w-pw");
  }
  CHECK_RC(rc, 0);
  check_writer(w, written); /* an open connection was served throughout */

  grid_close(w);
  grid_close(admin);
  for (int i = 0; i < NODES; i++) CHECK_EQ(harness_stop(&nodes[i]), 0);
  harness_zk_stop(&zk);
  printf("test_auth_cluster: ok\n");
  return 0;
}
