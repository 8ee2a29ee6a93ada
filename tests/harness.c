#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "frame.h"
#include "grid.h"
#include "pmap.h"

#ifndef GRIDD_PATH
#error "GRIDD_PATH must name the gridd binary"
#endif

/* Settings harness_start_cluster_node passes on besides its own three
 * (harness_start has room for about twice that). */
#define HARNESS_CLUSTER_SETTINGS_MAX 16

void harness_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* In a child about to exec: it dies with the test (even when the test
 * aborts), and its output goes to log_file. */
static void harness_child_setup(const char *log_file) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int fd = open(log_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
  }
}

void harness_start(harness_node_t *n, const char *const *settings) {
  memset(n, 0, sizeof *n);
  snprintf(n->dir, sizeof n->dir, "/tmp/grid-test-XXXXXX");
  CHECK(mkdtemp(n->dir) != NULL);
  char port_file[300], log_file[300];
  snprintf(port_file, sizeof port_file, "%s/port", n->dir);
  snprintf(log_file, sizeof log_file, "%s/gridd.log", n->dir);
  char *argv[64];
  int argc = 0;
  argv[argc++] = (char *)GRIDD_PATH;
  argv[argc++] = "--port";
  argv[argc++] = "0";
  argv[argc++] = "--port-file";
  argv[argc++] = port_file;
  char resp_file_set[330];
  snprintf(resp_file_set, sizeof resp_file_set, "resp_port_file=%s/rport", n->dir);
  argv[argc++] = "--set";
  argv[argc++] = "resp_port=0";
  argv[argc++] = "--set";
  argv[argc++] = resp_file_set;
  for (int i = 0; settings && settings[i] && argc < 60; i++) {
    argv[argc++] = "--set";
    argv[argc++] = (char *)settings[i];
  }
  argv[argc] = NULL;
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    harness_child_setup(log_file);
    execv(argv[0], argv);
    _exit(127);
  }
  n->pid = pid;
  for (int i = 0; i < 2000; i++) {
    FILE *f = fopen(port_file, "r");
    if (f) {
      int port = 0;
      int ok = fscanf(f, "%d", &port) == 1 && port > 0;
      fclose(f);
      char rpath[300];
      snprintf(rpath, sizeof rpath, "%s/rport", n->dir);
      FILE *rf = ok ? fopen(rpath, "r") : NULL;
      n->resp_port = 0;
      if (rf) {
        if (fscanf(rf, "%d", &n->resp_port) != 1) n->resp_port = 0;
        fclose(rf);
      }
      ok = ok && n->resp_port > 0; /* written just after the native port */
      if (ok) {
        n->port = port;
        snprintf(n->uri, sizeof n->uri, "grid://127.0.0.1:%d", port);
        return;
      }
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      fprintf(stderr, "gridd exited at start; its log:\n");
      char cmd[400];
      snprintf(cmd, sizeof cmd, "cat %s >&2", log_file);
      if (system(cmd)) {}
      abort();
    }
    harness_sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  fprintf(stderr, "gridd did not start listening within 20 s\n");
  abort();
}

/* SIGTERM to pid, then its exit status; SIGKILL after wait_ms. */
static int harness_term_pid(pid_t pid, int wait_ms) {
  int status = 0;
  kill(pid, SIGTERM);
  for (int i = 0; i < wait_ms / 10; i++) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    harness_sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return status;
}

/* Removes a test's temporary directory (and forgets it). */
static void harness_rm_dir(char *dir) {
  if (!dir[0]) return;
  if (getenv("HARNESS_KEEP_DIRS")) { /* for a look at the logs after a failure */
    fprintf(stderr, "harness: kept %s\n", dir);
    dir[0] = '\0';
    return;
  }
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) {}
  dir[0] = '\0';
}

int harness_stop(harness_node_t *n) {
  int status = 0;
  if (n->pid > 0) status = harness_term_pid(n->pid, 20000);
  n->pid = 0;
  harness_rm_dir(n->dir);
  return status;
}

void harness_kill9(harness_node_t *n) {
  if (n->pid <= 0) return;
  kill(n->pid, SIGKILL);
  waitpid(n->pid, NULL, 0);
  n->pid = 0;
  harness_rm_dir(n->dir);
}

int harness_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

#define HARNESS_ZK_JAR "/usr/share/java/zookeeper.jar"

/* ZooKeeper's "ruok" four-letter command: 1 when it answers "imok". */
static int harness_zk_ok(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && send(fd, "ruok", 4, MSG_NOSIGNAL) == 4) {
    char buf[8] = {0};
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 1000) == 1 && recv(fd, buf, 4, 0) == 4) ok = memcmp(buf, "imok", 4) == 0;
  }
  close(fd);
  return ok;
}

void harness_zk_start(harness_zk_t *z) {
  memset(z, 0, sizeof *z);
  if (access(HARNESS_ZK_JAR, R_OK) != 0) {
    fprintf(stderr, "%s is missing: scripts/deps installs the zookeeper package\n", HARNESS_ZK_JAR);
    abort();
  }
  snprintf(z->dir, sizeof z->dir, "/tmp/grid-zk-XXXXXX");
  CHECK(mkdtemp(z->dir) != NULL);
  z->port = harness_free_port();
  snprintf(z->hosts, sizeof z->hosts, "127.0.0.1:%d", z->port);
  char cfg[300], log_file[300], data[300];
  snprintf(cfg, sizeof cfg, "%s/zoo.cfg", z->dir);
  snprintf(log_file, sizeof log_file, "%s/zk.log", z->dir);
  snprintf(data, sizeof data, "%s/data", z->dir);
  CHECK(mkdir(data, 0755) == 0);
  FILE *f = fopen(cfg, "w");
  CHECK(f);
  /* A short tick so that sessions of a second or less are allowed. */
  fprintf(f, "tickTime=100\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\n"
             "minSessionTimeout=200\nmaxSessionTimeout=60000\nadmin.enableServer=false\n"
             "4lw.commands.whitelist=ruok,srvr\n", data, z->port);
  fclose(f);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    harness_child_setup(log_file);
    char cp[400];
    snprintf(cp, sizeof cp, "%s:%s", z->dir, HARNESS_ZK_JAR);
    execl("/usr/bin/java", "java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
          "-cp", cp, "org.apache.zookeeper.server.ZooKeeperServerMain", cfg, (char *)NULL);
    _exit(127);
  }
  z->pid = pid;
  for (int i = 0; i < 600; i++) {
    if (harness_zk_ok(z->port)) return;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    harness_sleep_ms(100);
  }
  fprintf(stderr, "ZooKeeper did not start; its log:\n");
  char cmd[400];
  snprintf(cmd, sizeof cmd, "cat %s >&2", log_file);
  if (system(cmd)) {}
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  abort();
}

void harness_start_cluster_node(harness_node_t *n, const harness_zk_t *z, const char *cluster,
                                int i, const char *const *settings) {
  char s_zk[96], s_cluster[96], s_id[96];
  snprintf(s_zk, sizeof s_zk, "zk=%s", z->hosts);
  snprintf(s_cluster, sizeof s_cluster, "cluster=%s", cluster);
  snprintf(s_id, sizeof s_id, "node_id=%s-%d", cluster, i);
  const char *all[3 + HARNESS_CLUSTER_SETTINGS_MAX + 1] = {s_zk, s_cluster, s_id};
  size_t k = 3;
  for (size_t j = 0; settings && settings[j]; j++) {
    CHECK(k < 3 + HARNESS_CLUSTER_SETTINGS_MAX);
    all[k++] = settings[j];
  }
  all[k] = NULL;
  harness_start(n, all);
}

void harness_zk_stop(harness_zk_t *z) {
  if (z->pid > 0) harness_term_pid(z->pid, 10000);
  z->pid = 0;
  harness_rm_dir(z->dir);
}

void harness_pmap(int port, pmap_t *out) {
  int fd = harness_connect(port);
  harness_send_hello(fd);
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.id = 1;
  rq.op = GRID__OP__PMAP;
  harness_send_frame(fd, &rq.base);
  static unsigned char buf[1 << 22];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 10000);
  CHECK(n >= 0);
  close(fd);
  Grid__Reply *rp = grid__reply__unpack(NULL, (size_t)n, buf);
  CHECK(rp);
  pmap_init(out);
  if (rp->pmap) {
    size_t len = grid__pmap__get_packed_size(rp->pmap);
    unsigned char *pb = malloc(len + 1);
    CHECK(pb);
    grid__pmap__pack(rp->pmap, pb);
    CHECK(pmap_decode(pb, len, out) == 0);
    free(pb);
    out->epoch = rp->epoch;
  }
  grid__reply__free_unpacked(rp, NULL);
}

/* Whether every thread of pid is stopped ('T' in /proc/PID/task/TID/stat). */
static int harness_all_stopped(pid_t pid) {
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
  DIR *d = opendir(dir);
  if (!d) return 0;
  int all = 1;
  struct dirent *e;
  while (all && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[400], line[512];
    snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue; /* a thread that just ended */
    if (fgets(line, sizeof line, f)) {
      const char *p = strrchr(line, ')');
      if (!p || p[1] != ' ' || (p[2] != 'T' && p[2] != 't')) all = 0;
    }
    fclose(f);
  }
  closedir(d);
  return all;
}

void harness_pause_pid(pid_t pid) {
  CHECK(kill(pid, SIGSTOP) == 0);
  /* kill() returns before the stop takes effect on threads running on
   * another core; /proc says when every thread has stopped. */
  for (int i = 0; i < 2000 && !harness_all_stopped(pid); i++) harness_sleep_ms(1);
  CHECK(harness_all_stopped(pid));
}

void harness_pause(harness_node_t *n) { harness_pause_pid(n->pid); }

void harness_resume(harness_node_t *n) { CHECK(kill(n->pid, SIGCONT) == 0); }

void harness_resp(int resp_port, const char *const *words, char *out, size_t out_len) {
  int fd = harness_connect(resp_port);
  char req[4096];
  size_t n = 0, count = 0;
  while (words[count]) count++;
  n += (size_t)snprintf(req + n, sizeof req - n, "*%zu\r\n", count);
  for (size_t i = 0; i < count; i++)
    n += (size_t)snprintf(req + n, sizeof req - n, "$%zu\r\n%s\r\n", strlen(words[i]), words[i]);
  CHECK(n < sizeof req);
  harness_send_all(fd, req, n);
  char buf[4096];
  size_t got = 0;
  /* Enough for a line, and for a bulk's body after it. */
  for (int tries = 0; tries < 500; tries++) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 10000) != 1) break;
    ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
    buf[got] = '\0';
    char *crlf = strstr(buf, "\r\n");
    if (!crlf) continue;
    if (buf[0] != '$' || buf[1] == '-') break;
    long blen = atol(buf + 1);
    if ((size_t)(crlf + 2 - buf) + (size_t)blen + 2 <= got) break;
  }
  close(fd);
  buf[got] = '\0';
  char *crlf = strstr(buf, "\r\n");
  if (crlf) *crlf = '\0';
  if (buf[0] == '$' && buf[1] != '-' && crlf) {
    char *body = crlf + 2;
    char *end = strstr(body, "\r\n");
    if (end) *end = '\0';
    snprintf(out, out_len, "%s", body);
  } else {
    snprintf(out, out_len, "%s", buf);
  }
}

int harness_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void harness_send_all(int fd, const void *p, size_t len) {
  const unsigned char *b = p;
  while (len) {
    ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    CHECK(n > 0);
    b += n;
    len -= (size_t)n;
  }
}

void harness_send_frame(int fd, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(n + 4);
  CHECK(buf);
  frame_put_header(buf, (uint32_t)n);
  protobuf_c_message_pack(m, buf + 4);
  harness_send_all(fd, buf, n + 4);
  free(buf);
}

int harness_hello(int fd, int role, const char *name) {
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x47524944u;
  h.version = 1;
  h.role = (Grid__Role)role;
  h.client_name = (char *)name;
  harness_send_frame(fd, &h.base);
  unsigned char buf[1024];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 5000);
  CHECK(n >= 0);
  Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, (size_t)n, buf);
  CHECK(hr);
  int status = hr->status;
  if (status) fprintf(stderr, "   node said: %s\n", hr->message);
  grid__hello_reply__free_unpacked(hr, NULL);
  return status;
}

void harness_send_hello(int fd) { CHECK_EQ(harness_hello(fd, GRID__ROLE__ROLE_CLIENT, "harness"), 0); }

static ssize_t harness_read_exact(int fd, unsigned char *p, size_t len,
                                  int timeout_ms) {
  size_t got = 0;
  while (got < len) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int pr = poll(&pfd, 1, timeout_ms);
    if (pr == 0) return -2;
    if (pr < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    ssize_t n = recv(fd, p + got, len - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

ssize_t harness_read_frame(int fd, unsigned char *buf, size_t cap, int timeout_ms) {
  unsigned char hdr[4];
  ssize_t r = harness_read_exact(fd, hdr, 4, timeout_ms);
  if (r < 0) return r;
  size_t n = frame_get_header(hdr);
  CHECK(n <= cap);
  r = harness_read_exact(fd, buf, n, timeout_ms);
  return r < 0 ? r : (ssize_t)n;
}

int harness_wait_eof(int fd, int timeout_ms) {
  unsigned char b[4096];
  for (;;) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int pr = poll(&pfd, 1, timeout_ms);
    if (pr <= 0) return 0;
    ssize_t n = recv(fd, b, sizeof b, 0);
    if (n <= 0) return 1;
  }
}

void harness_wait_settled(int port, const char *cache, size_t n) {
  for (int i = 0; i < 1200; i++) {
    pmap_t m;
    harness_pmap(port, &m);
    const pmap_group_t *pc = pmap_find_cache(&m, cache);
    int settled = pc && m.nnodes == n;
    for (uint32_t p = 0; settled && pc && p < pc->partitions; p++)
      for (uint32_t k = 0; k < pc->slots; k++) {
        int st;
        pmap_copy_at(pc, p, k, &st);
        if (st == PMAP_MOVING || st == PMAP_LOST) settled = 0;
      }
    pmap_free(&m);
    if (settled) return;
    harness_sleep_ms(50);
  }
  fprintf(stderr, "the map of cache %s did not settle on %zu nodes within 60 s\n", cache, n);
  abort();
}

void harness_check_hashes(struct grid *g, const char *cache, const char *tag) {
  char key[64], str[64];
  snprintf(key, sizeof key, "h:%s", tag);
  snprintf(str, sizeof str, "s:%s", tag);
  size_t kl = strlen(key), n;
  const void *fields[] = {"temp", "rpm", "state"};
  const size_t flens[] = {4, 3, 5};
  const void *vals[] = {"21.5", "1200", "on"};
  const size_t vlens[] = {4, 4, 2};
  size_t added, removed;
  CHECK_RC(grid_hset(g, cache, key, kl, 3, fields, flens, vals, vlens, &added), 0);
  CHECK_EQ(added, 3);
  const void *vals2[] = {"22.0"};
  const size_t vlens2[] = {4};
  CHECK_RC(grid_hset(g, cache, key, kl, 1, fields, flens, vals2, vlens2, &added), 0);
  CHECK_EQ(added, 0);
  grid_value_t v;
  CHECK_RC(grid_hget(g, cache, key, kl, "temp", 4, &v), 0);
  CHECK(v.found);
  CHECK_STR(v.data, "22.0");
  CHECK(v.version != 0);
  grid_value_free(&v);
  CHECK_RC(grid_hget(g, cache, key, kl, "nope", 4, &v), 0);
  CHECK(!v.found);
  CHECK_RC(grid_hget(g, cache, "h:missing", 9, "temp", 4, &v), 0);
  CHECK(!v.found);
  int64_t r;
  CHECK_RC(grid_hincrby(g, cache, key, kl, "rpm", 3, 30, &r), 0);
  CHECK_EQ(r, 1230);
  CHECK_RC(grid_hincrby(g, cache, key, kl, "state", 5, 1, &r), GRID_ENOTNUM);
  grid_entry_t *es;
  CHECK_RC(grid_hgetall(g, cache, key, kl, &es, &n), 0);
  CHECK_EQ(n, 3);
  CHECK_STR(es[0].key, "temp"); /* in the order fields were first set */
  CHECK_STR(es[0].value, "22.0");
  CHECK_STR(es[1].key, "rpm");
  CHECK_STR(es[1].value, "1230");
  CHECK_STR(es[2].key, "state");
  grid_entries_free(es, n);
  /* A key holds a hash or a string. */
  CHECK_RC(grid_get(g, cache, key, kl, &v), GRID_EWRONGTYPE);
  CHECK_RC(grid_put(g, cache, str, strlen(str), "x", 1, 0, NULL), 0);
  CHECK_RC(grid_hget(g, cache, str, strlen(str), "temp", 4, &v), GRID_EWRONGTYPE);
  CHECK_RC(grid_hset(g, cache, str, strlen(str), 1, fields, flens, vals, vlens, NULL),
           GRID_EWRONGTYPE);
  /* The last field removed removes the key. */
  CHECK_RC(grid_hdel(g, cache, key, kl, 3, fields, flens, &removed), 0);
  CHECK_EQ(removed, 3);
  CHECK_RC(grid_hgetall(g, cache, key, kl, &es, &n), 0);
  CHECK_EQ(n, 0);
  grid_entries_free(es, n);
  CHECK_RC(grid_get(g, cache, key, kl, &v), GRID_ENOTFOUND);
  CHECK_RC(grid_delete(g, cache, str, strlen(str)), 0);
}
