/*
 * Inputs that once crashed or misled a node or the client (found by
 * fuzzing), each with the behaviour it must get now. The fuzz corpora
 * replay the same bytes (tests/fuzz); these cases also check the answers.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "frame.h"
#include "grid.h"
#include "harness.h"
#include "pmap.h"

static harness_node_t node;

/* Reads from fd until want bytes or EOF or a 5 s silence; returns the
 * bytes read (NUL-terminated in buf). */
static size_t read_some(int fd, char *buf, size_t cap, size_t want) {
  size_t got = 0;
  while (got < want && got + 1 < cap) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 5000) != 1) break;
    ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  buf[got] = '\0';
  return got;
}

/* An unknown command whose argument holds CR LF: the error stays one line,
 * so the client does not read a forged reply after it. */
static void test_resp_error_is_one_line(void) {
  int fd = harness_connect(node.resp_port);
  const char *in = "*2\r\n$3\r\nFOO\r\n$6\r\na\r\n:12\r\n*1\r\n$4\r\nPING\r\n";
  harness_send_all(fd, in, strlen(in));
  char buf[1024];
  read_some(fd, buf, sizeof buf, 200);
  close(fd);
  fprintf(stderr, "   node said: %s", buf);
  CHECK(strncmp(buf, "-ERR unknown command 'FOO'", 26) == 0);
  char *eol = strstr(buf, "\r\n");
  CHECK(eol);
  CHECK(strchr(buf, '\n') == eol + 1);             /* no bare LF before */
  CHECK(memchr(buf, '\r', (size_t)(eol - buf)) == NULL); /* no bare CR */
  CHECK_STR(eol + 2, "+PONG\r\n");                 /* the next reply is PING's */
}

/* A command of 20,000 arguments arriving a few bytes at a time is parsed
 * once (not from its start on every read) and answered right. */
static void test_resp_fragmented_command(void) {
  enum { ARGS = 20000 };
  size_t cap = 32 + (size_t)ARGS * 12;
  char *cmd = malloc(cap);
  CHECK(cmd);
  size_t n = (size_t)snprintf(cmd, cap, "*%d\r\n$3\r\nDEL\r\n", ARGS + 1);
  for (int i = 0; i < ARGS; i++) n += (size_t)snprintf(cmd + n, cap - n, "$1\r\nz\r\n");
  int fd = harness_connect(node.resp_port);
  for (size_t off = 0; off < n; off += 7) harness_send_all(fd, cmd + off, n - off < 7 ? n - off : 7);
  harness_send_all(fd, "*1\r\n$4\r\nPING\r\n", 14);
  char buf[256];
  read_some(fd, buf, sizeof buf, 11);
  close(fd);
  free(cmd);
  CHECK_STR(buf, ":0\r\n+PONG\r\n");
}

/* A command announcing more bytes than resp_command_bytes_max is refused
 * as soon as it is announced, with words, and the connection closed. */
static void test_resp_command_too_long(void) {
  int fd = harness_connect(node.resp_port);
  /* Each argument is within the bound, the two together are not. */
  char *in = malloc(300000);
  CHECK(in);
  size_t n = (size_t)snprintf(in, 300000, "*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$200000\r\n");
  memset(in + n, 'x', 200000);
  n += 200000;
  n += (size_t)snprintf(in + n, 300000 - n, "\r\n$1\r\nb\r\n$200000\r\n");
  harness_send_all(fd, in, n);
  free(in);
  char buf[512];
  read_some(fd, buf, sizeof buf, sizeof buf);
  fprintf(stderr, "   node said: %s", buf);
  CHECK_STR(buf, "-ERR Protocol error: command longer than resp_command_bytes_max\r\n");
  CHECK(harness_wait_eof(fd, 5000));
  close(fd);
}

/* Empty keys and values are valid, as in Redis, on every path. */
static void test_empty_keys_and_values(void) {
  grid_t *g;
  CHECK_RC(grid_open(node.uri, NULL, &g), 0);
  CHECK_RC(grid_put(g, "default", NULL, 0, "v", 1, 0, NULL), 0);
  grid_value_t v;
  CHECK_RC(grid_get(g, "default", "", 0, &v), 0);
  CHECK_STR(v.data, "v");
  grid_value_free(&v);
  CHECK_RC(grid_put(g, "default", "e", 1, NULL, 0, 0, NULL), 0);
  CHECK_RC(grid_get(g, "default", "e", 1, &v), 0);
  CHECK_EQ(v.len, 0);
  grid_value_free(&v);
  CHECK_RC(grid_delete(g, "default", NULL, 0), 0);
  CHECK_RC(grid_get(g, "default", NULL, 0, &v), GRID_ENOTFOUND);
  grid_close(g);
}

/* ---- a fake node, for the client's side ---------------------------------- */

enum { FAKE_BIG_VALUE, FAKE_HUGE_HEADER };

typedef struct fake_node {
  int listen_fd;
  int port;
  int mode;           /* how it answers a GET */
} fake_node_t;

/* Answers the handshake, a PMAP with a reply without a map (a single
 * node), and a GET as its mode says. */
static void *fake_node_main(void *arg) {
  fake_node_t *f = arg;
  int fd = accept(f->listen_fd, NULL, NULL);
  if (fd < 0) return NULL;
  static unsigned char buf[1 << 16];
  if (harness_read_frame(fd, buf, sizeof buf, 5000) >= 0) {
    Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
    hr.node_id = "fake";
    hr.version = 1;
    hr.frame_bytes_max = 64 << 10;
    harness_send_frame(fd, &hr.base);
  }
  ssize_t n;
  while ((n = harness_read_frame(fd, buf, sizeof buf, 5000)) >= 0) {
    Grid__Request *rq = grid__request__unpack(NULL, (size_t)n, buf);
    CHECK(rq);
    Grid__Reply rp = GRID__REPLY__INIT;
    rp.id = rq->id;
    if (rq->op == GRID__OP__GET && f->mode == FAKE_HUGE_HEADER) {
      static const unsigned char huge[] = {0x00, 0xea, 0x00, 0x00, 0x0b};
      harness_send_all(fd, huge, sizeof huge);
    } else {
      static unsigned char big[4000];
      if (rq->op == GRID__OP__GET) rp.value = (ProtobufCBinaryData){sizeof big, big};
      harness_send_frame(fd, &rp.base);
    }
    grid__request__free_unpacked(rq, NULL);
  }
  close(fd);
  return NULL;
}

static void fake_node_start(fake_node_t *f, pthread_t *t) {
  f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(f->listen_fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(f->listen_fd, (struct sockaddr *)&a, sizeof a) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(f->listen_fd, (struct sockaddr *)&a, &len) == 0);
  f->port = ntohs(a.sin_port);
  CHECK(listen(f->listen_fd, 4) == 0);
  CHECK(pthread_create(t, NULL, fake_node_main, f) == 0);
}

/* One get from a fake node answering in mode, with the client's cap. */
static int fake_get(int mode, uint64_t reply_bytes_max) {
  fake_node_t f = {.mode = mode};
  pthread_t t;
  fake_node_start(&f, &t);
  char uri[64];
  snprintf(uri, sizeof uri, "grid://127.0.0.1:%d", f.port);
  grid_options_t o = {.timeout_ms = 3000, .reply_bytes_max = reply_bytes_max};
  grid_t *g;
  CHECK_RC(grid_open(uri, &o, &g), 0);
  grid_value_t v;
  int rc = grid_get(g, "default", "k", 1, &v);
  if (rc == 0) grid_value_free(&v);
  grid_close(g);
  pthread_join(t, NULL);
  close(f.listen_fd);
  fprintf(stderr, "   get: %s\n", grid_err_name(rc));
  return rc;
}

/* A reply longer than the client's reply_bytes_max is refused with its
 * connection (not read into a buffer grown to it); by default the cap is
 * the node's frame_bytes_max, so a header announcing nearly 4 GiB fails
 * the call at once instead of waiting for the bytes. */
static void test_client_reply_cap(void) {
  CHECK_RC(fake_get(FAKE_BIG_VALUE, 0), 0);       /* within the node's limit */
  CHECK_RC(fake_get(FAKE_BIG_VALUE, 1024), GRID_ECONN);
  CHECK_RC(fake_get(FAKE_HUGE_HEADER, 0), GRID_ECONN);
}

/* A partition map naming a cache of 0 partitions does not decode: neither
 * a node (from ZooKeeper) nor a client (from a reply) divides by it. */
static void test_map_without_partitions(void) {
  static const unsigned char bytes[] = {0x1a, 0x0b, 0x0a, 0x07, 'd', 'e', 'f', 'a',
                                        'u',  'l',  't',  0x18, 0x01};
  pmap_t m;
  CHECK_RC(pmap_decode(bytes, sizeof bytes, &m), GRID_EPROTO);
}

int main(void) {
  const char *settings[] = {"resp_command_bytes_max=256K", NULL};
  harness_start(&node, settings);
  RUN(test_resp_error_is_one_line);
  RUN(test_resp_fragmented_command);
  RUN(test_resp_command_too_long);
  RUN(test_empty_keys_and_values);
  RUN(test_client_reply_cap);
  RUN(test_map_without_partitions);
  CHECK(harness_stop(&node) == 0); /* a clean exit: nothing crashed */
  printf("test_regress: all passed\n");
  return 0;
}
