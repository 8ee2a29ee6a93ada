/*
 * Operations of a cluster, with real gridd processes, a real ZooKeeper, a
 * real Prometheus server (Debian's prometheus) and headless Chromium
 * (Debian's chromium):
 *   1. Prometheus scrapes /metrics of every node (a generated config, a
 *      one-second scrape interval); its query API sees the PUT counter a
 *      write load moved, and promtool check metrics passes on every node's
 *      text;
 *   2. a third node joins while the copies it gets are filled slowly
 *      (rebalance_bytes_per_sec): Prometheus sees partitions MOVING, and
 *      the dashboard of node 0, loaded by Chromium, shows every node and a
 *      rebalancing progress value; a screenshot of it is saved (PNG; to
 *      $GRID_DASHBOARD_PNG when set, which is how the README's picture is
 *      made);
 *   3. once settled, Prometheus sees no copy MOVING, and /api/status holds
 *      every key and value gridctl status --json prints.
 * Every process it starts (nodes, ZooKeeper, Prometheus, Chromium and the
 * children Chromium makes, in a process group of its own) is stopped by
 * pid; each wait is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

#define NODES 3
#define CACHE "things"
#define KEYS 4000
#define VALUE_BYTES 1000

static harness_zk_t zk;
static harness_node_t nodes[NODES];
static int http_ports[NODES];
static char dir[64];
static pid_t prom_pid;
static int prom_port;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs argv in a process group of its own, output to out_path; kills the
 * whole group after timeout_ms. Returns its exit status (-1: killed). */
static int run(char *const argv[], const char *out_path, int timeout_ms) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, 1);
    if (null >= 0) dup2(null, 2);
    execvp(argv[0], argv);
    _exit(127);
  }
  setpgid(pid, pid);
  int64_t deadline = now_ms() + timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) break;
    if (now_ms() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    harness_sleep_ms(50);
  }
  kill(-pid, SIGKILL); /* what it left behind in its group (Chromium's helpers) */
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The body of GET url (curl), in buf; its length, or -1. */
static long get(const char *url, char *buf, size_t cap) {
  char out[128];
  snprintf(out, sizeof out, "%s/get.out", dir);
  char *const argv[] = {"curl", "-s", "-f", "-m", "10", (char *)url, NULL};
  if (run(argv, out, 15000) != 0) return -1;
  FILE *f = fopen(out, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = '\0';
  return (long)n;
}

static void start_node(int i, int slow_fills) {
  char hp[64];
  http_ports[i] = harness_free_port();
  snprintf(hp, sizeof hp, "http_port=%d", http_ports[i]);
  const char *settings[] = {"cluster_min_nodes=1", "zk_session_timeout_ms=2000", "loops=2",
                            hp, slow_fills ? "rebalance_bytes_per_sec=65536" : NULL, NULL};
  harness_start_cluster_node(&nodes[i], &zk, "ops", i, settings);
}

/* A Prometheus server scraping every node each second. */
static void start_prometheus(void) {
  char cfg[128], data[128], listen[64], buf[256];
  snprintf(cfg, sizeof cfg, "%s/prometheus.yml", dir);
  snprintf(data, sizeof data, "%s/prom-data", dir);
  FILE *f = fopen(cfg, "w");
  CHECK(f != NULL);
  fprintf(f, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
             "scrape_configs:\n  - job_name: grid\n    static_configs:\n      - targets: [");
  for (int i = 0; i < NODES; i++) fprintf(f, "%s'127.0.0.1:%d'", i ? ", " : "", http_ports[i]);
  fprintf(f, "]\n");
  fclose(f);
  prom_port = harness_free_port();
  snprintf(listen, sizeof listen, "--web.listen-address=127.0.0.1:%d", prom_port);
  char config_flag[160], data_flag[160], log[128];
  snprintf(config_flag, sizeof config_flag, "--config.file=%s", cfg);
  snprintf(data_flag, sizeof data_flag, "--storage.tsdb.path=%s", data);
  snprintf(log, sizeof log, "%s/prometheus.log", dir);
  prom_pid = fork();
  CHECK(prom_pid >= 0);
  if (prom_pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execlp("prometheus", "prometheus", config_flag, data_flag, listen, "--log.level=warn",
           (char *)NULL);
    _exit(127);
  }
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/-/ready", prom_port);
  int64_t deadline = now_ms() + 60000;
  while (get(url, buf, sizeof buf) < 0) {
    CHECK(waitpid(prom_pid, NULL, WNOHANG) == 0); /* still running */
    CHECK(now_ms() < deadline);
    harness_sleep_ms(200);
  }
}

static void stop_prometheus(void) {
  kill(prom_pid, SIGTERM);
  int64_t deadline = now_ms() + 20000;
  while (waitpid(prom_pid, NULL, WNOHANG) == 0) {
    if (now_ms() > deadline) {
      kill(prom_pid, SIGKILL);
      waitpid(prom_pid, NULL, 0);
      break;
    }
    harness_sleep_ms(50);
  }
}

/* The value of a PromQL query whose answer is one number (sum(...)), or
 * -1 when it has none yet. */
static double prom_query(const char *promql) {
  static char body[1 << 16];
  char url[512], q[256];
  size_t o = 0;
  for (const char *p = promql; *p && o + 4 < sizeof q; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '_')
      q[o++] = *p;
    else
      o += (size_t)snprintf(q + o, sizeof q - o, "%%%02X", (unsigned char)*p);
  }
  q[o] = '\0';
  snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/query?query=%s", prom_port, q);
  if (get(url, body, sizeof body) < 0) return -1;
  json_error_t err;
  json_t *j = json_loads(body, 0, &err);
  CHECK(j != NULL);
  CHECK_STR(json_string_value(json_object_get(j, "status")), "success");
  json_t *res = json_object_get(json_object_get(j, "data"), "result");
  double v = -1;
  if (json_array_size(res) == 1) {
    const char *s = json_string_value(json_array_get(json_object_get(json_array_get(res, 0),
                                                                     "value"), 1));
    if (s) v = atof(s);
  }
  json_decref(j);
  return v;
}

/* Waits (bounded) for a query to satisfy ok(v). */
static double prom_wait(const char *promql, int (*ok)(double), int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  double v;
  while (!ok(v = prom_query(promql))) {
    if (now_ms() > deadline) {
      fprintf(stderr, "prometheus: %s is %g\n", promql, v);
      abort();
    }
    harness_sleep_ms(250);
  }
  return v;
}
static int puts_seen(double v) { return v >= KEYS; }
static int positive(double v) { return v > 0; }
static int zero(double v) { return v == 0; }

static void fill(grid_t *g) {
  grid_cache_config_t cc = {.name = CACHE, .partitions = 64, .backups = 1};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  static char value[VALUE_BYTES];
  memset(value, 'v', sizeof value);
  enum { BATCH = 100 };
  char keys[BATCH][16];
  const void *kp[BATCH], *vp[BATCH];
  size_t kl[BATCH], vl[BATCH];
  for (int i = 0; i < KEYS; i += BATCH) {
    for (int j = 0; j < BATCH; j++) {
      kl[j] = (size_t)snprintf(keys[j], sizeof keys[j], "t%05d", i + j);
      kp[j] = keys[j];
      vp[j] = value;
      vl[j] = sizeof value;
    }
    CHECK_RC(grid_put_all(g, CACHE, BATCH, kp, kl, vp, vl, 0), 0);
  }
  for (int i = 0; i < KEYS; i++) { /* PUTs one by one, for the counter */
    char k[16];
    snprintf(k, sizeof k, "p%05d", i);
    CHECK_RC(grid_put(g, CACHE, k, strlen(k), "x", 1, 0, NULL), 0);
  }
}

/* A client reading and writing throughout the join (what the dashboard's
 * sparklines show); every request answered. */
static atomic_int load_stop;
static char load_uri[96];
static long load_done;
static void *load_main(void *arg) {
  (void)arg;
  grid_t *g = NULL;
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_ops_load"};
  CHECK_RC(grid_open(load_uri, &o, &g), 0);
  for (long i = 0; !atomic_load(&load_stop); i++) {
    char k[16];
    snprintf(k, sizeof k, "t%05ld", i % KEYS);
    grid_value_t v;
    CHECK_RC(grid_get(g, CACHE, k, strlen(k), &v), 0);
    grid_value_free(&v);
    snprintf(k, sizeof k, "l%05ld", i % KEYS);
    CHECK_RC(grid_put(g, CACHE, k, strlen(k), "y", 1, 0, NULL), 0);
    load_done = i + 1;
  }
  grid_close(g);
  return NULL;
}

/* promtool check metrics on node i's /metrics. */
static void promtool(int i) {
  char cmd[256], out[128];
  snprintf(out, sizeof out, "%s/promtool.out", dir);
  snprintf(cmd, sizeof cmd, "curl -s -f http://127.0.0.1:%d/metrics | promtool check metrics",
           http_ports[i]);
  char *const argv[] = {"sh", "-c", cmd, NULL};
  int rc = run(argv, out, 30000);
  if (rc != 0) {
    char line[256];
    FILE *f = fopen(out, "r");
    while (f && fgets(line, sizeof line, f)) fputs(line, stderr);
    if (f) fclose(f);
  }
  CHECK_EQ(rc, 0);
}

/* Chromium loads node 0's dashboard, runs its script for a few seconds of
 * virtual time and prints the DOM (or, with png, saves a screenshot). */
static int chromium(const char *png, const char *out) {
  char url[64], shot[256], profile[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", http_ports[0]);
  snprintf(profile, sizeof profile, "--user-data-dir=%s/chromium", dir);
  snprintf(shot, sizeof shot, "--screenshot=%s", png ? png : "");
  char *const argv[] = {"chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run", profile,
                        "--window-size=1400,1000", "--virtual-time-budget=6000",
                        png ? shot : "--dump-dom", url, NULL};
  return run(argv, out, 90000);
}

static int file_has(const char *path, const char *needle) {
  static char buf[1 << 20];
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, needle) != NULL;
}

/* Every key and value of gridctl status --json is in /api/status. */
static void same_status(void) {
  static char a[1 << 20], b[1 << 20];
  char cmd[256], url[64], out[128];
  snprintf(out, sizeof out, "%s/gridctl.json", dir);
  snprintf(cmd, sizeof cmd, "%s --server 127.0.0.1:%d status --json", GRIDCTL_PATH,
           nodes[0].port);
  char *const argv[] = {"sh", "-c", cmd, NULL};
  CHECK_EQ(run(argv, out, 30000), 0);
  FILE *f = fopen(out, "r");
  CHECK(f != NULL);
  a[fread(a, 1, sizeof a - 1, f)] = '\0';
  fclose(f);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/api/status", http_ports[0]);
  CHECK(get(url, b, sizeof b) > 0);
  json_error_t err;
  json_t *ja = json_loads(a, 0, &err), *jb = json_loads(b, 0, &err);
  CHECK(ja != NULL && jb != NULL);
  const char *key;
  json_t *v;
  size_t keys = 0;
  json_object_foreach(ja, key, v) {
    if (!json_equal(v, json_object_get(jb, key))) {
      fprintf(stderr, "/api/status differs from gridctl status --json at \"%s\"\n%s\n%s\n", key,
              a, b);
      abort();
    }
    keys++;
  }
  CHECK(keys >= 9);
  CHECK_EQ(json_array_size(json_object_get(jb, "nodes")), NODES);
  CHECK(json_array_size(json_object_get(jb, "partition_map")) >= 1);
  json_decref(ja);
  json_decref(jb);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  snprintf(dir, sizeof dir, "/tmp/grid-ops-XXXXXX");
  CHECK(mkdtemp(dir) != NULL);
  harness_zk_start(&zk);
  start_node(0, 1);
  start_node(1, 1);
  http_ports[2] = harness_free_port(); /* Prometheus knows it before it starts */
  start_prometheus();

  grid_t *g = NULL;
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_ops_cluster"};
  char uri[96];
  snprintf(uri, sizeof uri, "grid://127.0.0.1:%d,127.0.0.1:%d", nodes[0].port, nodes[1].port);
  CHECK_RC(grid_open(uri, &o, &g), 0);
  harness_wait_settled(nodes[0].port, "default", 2);
  fill(g);
  harness_wait_settled(nodes[0].port, CACHE, 2);

  /* 1. The write load in Prometheus; the text is Prometheus' own format. */
  double put_count = prom_wait("sum(grid_requests_total{op=\"PUT\"})", puts_seen, 60000);
  fprintf(stderr, "prometheus: %g PUTs counted\n", put_count);
  for (int i = 0; i < 2; i++) promtool(i);

  /* 2. A third node joins while a client works; its copies are filled
   * slowly. */
  snprintf(load_uri, sizeof load_uri, "%s", uri);
  pthread_t load;
  CHECK(pthread_create(&load, NULL, load_main, NULL) == 0);
  char hp[64];
  snprintf(hp, sizeof hp, "http_port=%d", http_ports[2]);
  const char *settings[] = {"cluster_min_nodes=1", "zk_session_timeout_ms=2000", "loops=2", hp,
                            "rebalance_bytes_per_sec=65536", NULL};
  harness_start_cluster_node(&nodes[2], &zk, "ops", 2, settings);
  harness_sleep_ms(3000); /* a few seconds of history on the new node */
  double moving = prom_wait("sum(grid_partition_copies{group=\"p64-b1\",state=\"MOVING\"})",
                            positive, 60000);
  fprintf(stderr, "prometheus: %g copies MOVING during the rebalance\n", moving);
  char dom[128];
  snprintf(dom, sizeof dom, "%s/dom.html", dir);
  CHECK_EQ(chromium(NULL, dom), 0);
  for (int i = 0; i < NODES; i++) {
    char want[64];
    snprintf(want, sizeof want, "data-node=\"ops-%d\"", i);
    if (!file_has(dom, want)) {
      fprintf(stderr, "the dashboard's DOM does not show node ops-%d\n", i);
      abort();
    }
  }
  CHECK(file_has(dom, "class=\"rebalance\""));   /* a progress bar per group moving */
  CHECK(file_has(dom, "id=\"rebalance-text\"")); /* with its words and time left */
  CHECK(file_has(dom, "coordinator</span>"));
  CHECK(file_has(dom, "data-group=\"p64-b1\""));  /* the partition map of the cache */
  const char *png_env = getenv("GRID_DASHBOARD_PNG");
  char png[256];
  snprintf(png, sizeof png, "%s", png_env && *png_env ? png_env : "");
  if (!png[0]) snprintf(png, sizeof png, "%s/dashboard.png", dir);
  char shot_out[128];
  snprintf(shot_out, sizeof shot_out, "%s/shot.out", dir);
  CHECK_EQ(chromium(png, shot_out), 0);
  struct stat sb;
  CHECK(stat(png, &sb) == 0 && sb.st_size > 10000);
  unsigned char magic[8] = {0};
  FILE *pf = fopen(png, "rb");
  CHECK(pf != NULL && fread(magic, 1, 8, pf) == 8);
  fclose(pf);
  CHECK(!memcmp(magic, "\x89PNG\r\n\x1a\n", 8));
  fprintf(stderr, "dashboard screenshot: %s (%lld bytes)\n", png, (long long)sb.st_size);

  /* 3. Settled: nothing moving in Prometheus; the status endpoint is
   * gridctl's. */
  harness_wait_settled(nodes[0].port, CACHE, NODES);
  atomic_store(&load_stop, 1);
  pthread_join(load, NULL);
  fprintf(stderr, "load: %ld reads and writes through the join\n", load_done);
  CHECK(load_done > 0);
  prom_wait("sum(grid_partition_copies{state=\"MOVING\"})", zero, 60000);
  CHECK(prom_query("sum(grid_rebalance_entries_sent_total)") > 0);
  promtool(2);
  same_status();
  grid_value_t v;
  CHECK_RC(grid_get(g, CACHE, "t00042", 6, &v), 0); /* nothing lost on the way */
  CHECK_EQ(v.len, VALUE_BYTES);
  grid_value_free(&v);

  grid_close(g);
  stop_prometheus();
  for (int i = NODES - 1; i >= 0; i--) harness_stop(&nodes[i]);
  harness_zk_stop(&zk);
  char rm[128];
  snprintf(rm, sizeof rm, "rm -rf %s", dir);
  CHECK(system(rm) == 0);
  puts("test_ops_cluster: all passed");
  return 0;
}
