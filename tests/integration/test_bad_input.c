/*
 * Bad input on the native protocol: each case gets a clear error where the
 * stream allows it, the connection is closed where it cannot go on, and the
 * node keeps serving a well-behaved client with nothing lost.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "frame.h"
#include "grid.h"
#include "harness.h"

static harness_node_t node;
static grid_t *witness;
enum { WITNESS_KEYS = 500 };

static void witness_write(void) {
  for (int i = 0; i < WITNESS_KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "witness:%d", i);
    CHECK_RC(grid_put(witness, "default", key, strlen(key), key, strlen(key), 0, NULL), 0);
  }
}

/* The node still answers, and everything acknowledged earlier is there. */
static void witness_check(void) {
  CHECK_RC(grid_ping(witness), 0);
  for (int i = 0; i < WITNESS_KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "witness:%d", i);
    grid_value_t v;
    CHECK_RC(grid_get(witness, "default", key, strlen(key), &v), 0);
    CHECK_STR(v.data, key);
    grid_value_free(&v);
  }
}

static Grid__Reply *read_reply(int fd) {
  static unsigned char buf[1 << 20];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 5000);
  CHECK(n >= 0);
  Grid__Reply *rp = grid__reply__unpack(NULL, (size_t)n, buf);
  CHECK(rp);
  return rp;
}

static Grid__HelloReply *read_hello_reply(int fd) {
  unsigned char buf[4096];
  ssize_t n = harness_read_frame(fd, buf, sizeof buf, 5000);
  CHECK(n >= 0);
  Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, (size_t)n, buf);
  CHECK(hr);
  return hr;
}

/* Expects one reply with the status and then the node closing. */
static void expect_reply_then_close(int fd, int status) {
  Grid__Reply *rp = read_reply(fd);
  CHECK_RC(rp->status, status);
  CHECK(rp->message && strlen(rp->message) > 10);
  fprintf(stderr, "   node said: %s\n", rp->message);
  grid__reply__free_unpacked(rp, NULL);
  CHECK(harness_wait_eof(fd, 5000));
  close(fd);
}

static void expect_hello_error_then_close(int fd, int status) {
  Grid__HelloReply *hr = read_hello_reply(fd);
  CHECK_RC(hr->status, status);
  CHECK(hr->message && strlen(hr->message) > 10);
  fprintf(stderr, "   node said: %s\n", hr->message);
  grid__hello_reply__free_unpacked(hr, NULL);
  CHECK(harness_wait_eof(fd, 5000));
  close(fd);
}

static void send_request(int fd, Grid__Request *rq) { harness_send_frame(fd, &rq->base); }

static void test_frame_too_big(void) {
  int fd = harness_connect(node.port);
  harness_send_hello(fd);
  unsigned char hdr[4];
  frame_put_header(hdr, 1 << 20); /* over frame_bytes_max = 64K */
  harness_send_all(fd, hdr, 4);
  harness_send_all(fd, "some of the body", 16);
  expect_reply_then_close(fd, GRID_EFRAMETOOBIG);
  witness_check();
}

static void test_not_our_protocol(void) {
  /* An HTTP request: its first four bytes read as a huge length. */
  int fd = harness_connect(node.port);
  const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  harness_send_all(fd, http, strlen(http));
  expect_hello_error_then_close(fd, GRID_EFRAMETOOBIG);
  witness_check();
}

static void test_bad_hello(void) {
  int fd = harness_connect(node.port);
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x12345678;
  h.version = 1;
  harness_send_frame(fd, &h.base);
  expect_hello_error_then_close(fd, GRID_EHANDSHAKE);

  fd = harness_connect(node.port);
  h.magic = 0x47524944u;
  h.version = 99;
  harness_send_frame(fd, &h.base);
  expect_hello_error_then_close(fd, GRID_EHANDSHAKE);

  fd = harness_connect(node.port);
  unsigned char junk[12] = {0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  harness_send_all(fd, junk, sizeof junk);
  expect_hello_error_then_close(fd, GRID_EPROTO);
  witness_check();
}

static void test_undecodable_request(void) {
  int fd = harness_connect(node.port);
  harness_send_hello(fd);
  unsigned char junk[14] = {0, 0, 0, 10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  harness_send_all(fd, junk, sizeof junk);
  expect_reply_then_close(fd, GRID_EPROTO);
  witness_check();
}

/* Errors within a well-formed stream: a reply each, the connection goes on. */
static void test_request_errors_keep_connection(void) {
  int fd = harness_connect(node.port);
  harness_send_hello(fd);
  Grid__Request rq = GRID__REQUEST__INIT;
  Grid__Reply *rp;

  rq.id = 1;
  rq.op = (Grid__Op)99;
  send_request(fd, &rq);
  rp = read_reply(fd);
  CHECK_EQ(rp->id, 1);
  CHECK_RC(rp->status, GRID_EBADOP);
  grid__reply__free_unpacked(rp, NULL);

  rq.id = 2;
  rq.op = GRID__OP__GET;
  rq.cache = "no-such-cache";
  rq.key.data = (uint8_t *)"k";
  rq.key.len = 1;
  send_request(fd, &rq);
  rp = read_reply(fd);
  CHECK_EQ(rp->id, 2);
  CHECK_RC(rp->status, GRID_ENOCACHE);
  CHECK(strstr(rp->message, "no-such-cache"));
  grid__reply__free_unpacked(rp, NULL);

  static uint8_t big[8192];
  memset(big, 'k', sizeof big);
  rq.id = 3;
  rq.op = GRID__OP__PUT;
  rq.cache = "default";
  rq.key.data = big;
  rq.key.len = 200; /* key_bytes_max = 128 */
  send_request(fd, &rq);
  rp = read_reply(fd);
  CHECK_RC(rp->status, GRID_EKEYTOOBIG);
  grid__reply__free_unpacked(rp, NULL);

  rq.id = 4;
  rq.key.len = 3;
  rq.value.data = big;
  rq.value.len = 5000; /* value_bytes_max = 4K */
  send_request(fd, &rq);
  rp = read_reply(fd);
  CHECK_RC(rp->status, GRID_EVALTOOBIG);
  grid__reply__free_unpacked(rp, NULL);

  ProtobufCBinaryData keys[101];
  for (int i = 0; i < 101; i++) keys[i] = (ProtobufCBinaryData){1, big};
  Grid__Request batch = GRID__REQUEST__INIT;
  batch.id = 5;
  batch.op = GRID__OP__GET_ALL;
  batch.cache = "default";
  batch.keys = keys;
  batch.n_keys = 101; /* batch_keys_max = 100 */
  send_request(fd, &batch);
  rp = read_reply(fd);
  CHECK_RC(rp->status, GRID_EBATCHTOOBIG);
  grid__reply__free_unpacked(rp, NULL);

  /* put_all with fewer values than keys writes nothing. */
  batch.id = 6;
  batch.op = GRID__OP__PUT_ALL;
  batch.n_keys = 2;
  batch.values = keys;
  batch.n_values = 1;
  send_request(fd, &batch);
  rp = read_reply(fd);
  CHECK_RC(rp->status, GRID_EINVAL);
  grid__reply__free_unpacked(rp, NULL);

  /* Three requests in one write: three replies, each with its id. */
  Grid__Request ping = GRID__REQUEST__INIT;
  ping.op = GRID__OP__PING;
  unsigned char out[64];
  size_t off = 0;
  for (uint64_t id = 10; id < 13; id++) {
    ping.id = id;
    size_t n = grid__request__get_packed_size(&ping);
    frame_put_header(out + off, (uint32_t)n);
    grid__request__pack(&ping, out + off + 4);
    off += 4 + n;
  }
  harness_send_all(fd, out, off);
  uint64_t ids = 0;
  for (int i = 0; i < 3; i++) {
    rp = read_reply(fd);
    CHECK_RC(rp->status, 0);
    ids |= 1ull << (rp->id - 10);
    grid__reply__free_unpacked(rp, NULL);
  }
  CHECK_EQ(ids, 7);
  close(fd);
  witness_check();
}

static void test_stalls(void) {
  /* Stops in the middle of a frame. */
  int fd = harness_connect(node.port);
  harness_send_hello(fd);
  unsigned char part[14] = {0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  harness_send_all(fd, part, sizeof part);
  expect_reply_then_close(fd, GRID_ETIMEDOUT); /* frame_timeout_ms = 300 */

  /* Never says hello. */
  fd = harness_connect(node.port);
  expect_hello_error_then_close(fd, GRID_ETIMEDOUT); /* handshake_timeout_ms = 300 */

  /* Goes away in the middle of a frame. */
  fd = harness_connect(node.port);
  harness_send_hello(fd);
  harness_send_all(fd, part, 8);
  close(fd);
  witness_check();
}

static void test_connections_max(void) {
  /* Connections of earlier cases may still be closing: wait until the
   * witness's is the only one. */
  grid_stats_t st = {0};
  for (int i = 0; i < 500; i++) {
    CHECK_RC(grid_stats(witness, &st), 0);
    if (st.connections == 1) break;
    usleep(10000);
  }
  CHECK_EQ(st.connections, 1);
  /* connections_max = 8: the witness holds one; fill the rest. */
  int fds[7];
  for (int i = 0; i < 7; i++) {
    fds[i] = harness_connect(node.port);
    harness_send_hello(fds[i]);
  }
  int extra = harness_connect(node.port);
  expect_hello_error_then_close(extra, GRID_ELIMIT);
  for (int i = 0; i < 7; i++) close(fds[i]);
  witness_check();
}

/* A client that sends a long pipeline of gets and reads nothing: the node
 * stops reading it once output_bytes_max of replies wait, and serves the
 * rest when the client reads; every reply arrives, in order. */
static void test_slow_reader(void) {
  static char val[4000];
  memset(val, 'x', sizeof val);
  CHECK_RC(grid_put(witness, "default", "big", 3, val, sizeof val, 0, NULL), 0);
  int fd = harness_connect(node.port);
  harness_send_hello(fd);
  enum { N = 2000 }; /* 8 MB of replies against 64K of output_bytes_max */
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__GET;
  rq.cache = "default";
  rq.key.data = (uint8_t *)"big";
  rq.key.len = 3;
  size_t one = grid__request__get_packed_size(&rq) + 8;
  unsigned char *out = malloc(N * (one + 4));
  size_t off = 0;
  for (int i = 1; i <= N; i++) {
    rq.id = (uint64_t)i;
    size_t n = grid__request__get_packed_size(&rq);
    frame_put_header(out + off, (uint32_t)n);
    grid__request__pack(&rq, out + off + 4);
    off += 4 + n;
  }
  harness_send_all(fd, out, off);
  free(out);
  usleep(200000); /* the node fills its output and pauses */
  witness_check(); /* others are served meanwhile */
  for (int i = 1; i <= N; i++) {
    Grid__Reply *rp = read_reply(fd);
    if (rp->id != (uint64_t)i)
      fprintf(stderr, "reply %d: id %llu status %d: %s\n", i,
              (unsigned long long)rp->id, rp->status, rp->message);
    CHECK_EQ(rp->id, i);
    CHECK_RC(rp->status, 0);
    CHECK_EQ(rp->value.len, sizeof val);
    grid__reply__free_unpacked(rp, NULL);
  }
  close(fd);

  /* A batch whose reply would not fit in one frame is refused. */
  const void *keys[20];
  size_t lens[20];
  for (int i = 0; i < 20; i++) {
    keys[i] = "big";
    lens[i] = 3;
  }
  grid_value_t vals[20];
  CHECK_RC(grid_get_all(witness, "default", 20, keys, lens, vals), GRID_ELIMIT);
  CHECK_RC(grid_delete(witness, "default", "big", 3), 0);
}

int main(void) {
  const char *settings[] = {"frame_bytes_max=64K", "key_bytes_max=128",
                            "value_bytes_max=4K", "batch_keys_max=100",
                            "handshake_timeout_ms=300", "frame_timeout_ms=300",
                            "connections_max=8", "output_bytes_max=64K", NULL};
  harness_start(&node, settings);
  grid_options_t o = {.timeout_ms = 10000};
  CHECK_RC(grid_open(node.uri, &o, &witness), 0);
  witness_write();
  RUN(test_frame_too_big);
  RUN(test_not_our_protocol);
  RUN(test_bad_hello);
  RUN(test_undecodable_request);
  RUN(test_request_errors_keep_connection);
  RUN(test_stalls);
  RUN(test_slow_reader);
  RUN(test_connections_max);
  witness_check();
  grid_close(witness);
  CHECK(harness_stop(&node) == 0); /* a clean exit: nothing crashed */
  printf("test_bad_input: all passed\n");
  return 0;
}
