/*
 * fuzz_peer: what one cluster node accepts from another: the REPL and FILL
 * requests a primary sends its backups (repl_on_peer_request, through
 * route_request), and every other request of a connection that says it is
 * a node. Also the Redis protocol of a cluster node, whose commands are
 * routed (and may be forwarded) rather than run in place.
 *
 * LLVMFuzzerInitialize starts a ZooKeeper (Debian's, as tests/harness.c
 * does) and two nodes in this process, fuzz-a and fuzz-b, in one cluster
 * (cluster_min_nodes = 2), and waits until both serve.
 *
 * Input: byte 0 is a control byte.
 *   bit 0 = 0  connect to fuzz-a with a Hello of role PEER naming fuzz-b,
 *              then send the rest as frames; LEAVE, CREATE_CACHE and
 *              DROP_CACHE requests are left out (they would change the
 *              cluster for every later input). The answer must be
 *              well-formed frames, as in fuzz_native.
 *   bit 0 = 1  send the rest to fuzz-a's RESP port; the answer must be
 *              well-formed RESP, as in fuzz_resp.
 *   bits 4..7  cut what is sent into sends of 2^(k-1) bytes (0: one send).
 * The store is not reset between inputs (a cluster cache is ZooKeeper's,
 * and its partitions' replication state is the nodes'): a run accumulates
 * entries, within memory_bytes_max.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "frame.h"
#include "fuzz_common.h"
#include "grid.pb-c.h"
#include "harness.h"

/* Replies to forwarded requests come later than the others; the node
 * drops them once it has read our EOF, so EOF waits for a quiet moment. */
#define PEER_QUIET_MS 10

static harness_zk_t zk;
static node_t *node_a, *node_b;
static unsigned char *hello;
static size_t hello_len;

static void peer_stop_all(void) {
  /* A normal exit (the replay driver's): stop what Initialize started. A
   * crash leaves ZooKeeper to PR_SET_PDEATHSIG and its directory in /tmp. */
  if (node_a) node_stop(node_a);
  if (node_b) node_stop(node_b);
  node_a = node_b = NULL;
  harness_zk_stop(&zk);
}

static node_t *peer_node_start(const char *id) {
  config_t cfg;
  fuzz_node_config(&cfg);
  snprintf(cfg.zk, sizeof cfg.zk, "%s", zk.hosts);
  snprintf(cfg.cluster, sizeof cfg.cluster, "fuzz");
  snprintf(cfg.node_id, sizeof cfg.node_id, "%s", id);
  cfg.cluster_min_nodes = 2;
  cfg.zk_session_timeout_ms = 4000;
  cfg.forward_timeout_ms = 2000;
  cfg.resp_port = 0;
  return fuzz_node_start(&cfg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  harness_zk_start(&zk);
  node_a = peer_node_start("fuzz-a");
  node_b = peer_node_start("fuzz-b");
  atexit(peer_stop_all);
  int serving = 0;
  for (int i = 0; i < 600 && !serving; i++) {
    serving = cluster_serving(node_a->cluster) && cluster_serving(node_b->cluster);
    if (!serving) harness_sleep_ms(50);
  }
  if (!serving) fuzz_die("the two nodes did not serve within 30 s");
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x47524944u;
  h.version = 1;
  h.role = GRID__ROLE__ROLE_PEER;
  h.client_name = "fuzz-b";
  unsigned char m[64];
  size_t n = grid__hello__pack(&h, m);
  fuzz_buf_frame(&hello, &hello_len, m, n);
  return 0;
}

/* The input's frames without those that would change the cluster itself,
 * and with the map epoch a node knows in REPL and FILL requests that name
 * none (epoch 0), so that most records reach the store: a record naming a
 * map the node never read is refused before anything else is looked at. */
static unsigned char *peer_filter(const uint8_t *data, size_t len, size_t *out_len) {
  unsigned char *out = malloc(len + 1);
  if (!out) fuzz_die("out of memory");
  size_t off = 0, o = 0;
  while (len - off >= 4) {
    size_t n = ((size_t)data[off] << 24) | ((size_t)data[off + 1] << 16) |
               ((size_t)data[off + 2] << 8) | data[off + 3];
    if (n > len - off - 4) break; /* an unfinished frame goes as it is */
    Grid__Request *rq = grid__request__unpack(NULL, n, data + off + 4);
    int skip = rq && (rq->op == GRID__OP__LEAVE || rq->op == GRID__OP__CREATE_CACHE ||
                      rq->op == GRID__OP__DROP_CACHE);
    if (rq && !skip && rq->epoch == 0 &&
        (rq->op == GRID__OP__REPL || rq->op == GRID__OP__FILL)) {
      rq->epoch = cluster_newest_epoch(node_a->cluster);
      size_t m = grid__request__get_packed_size(rq);
      unsigned char *grown = realloc(out, o + 4 + m + (len - off) + 1);
      if (!grown) fuzz_die("out of memory");
      out = grown;
      frame_put_header(out + o, (uint32_t)m);
      grid__request__pack(rq, out + o + 4);
      o += 4 + m;
      skip = 2; /* written */
    }
    if (rq) grid__request__free_unpacked(rq, NULL);
    if (!skip) {
      memcpy(out + o, data + off, 4 + n);
      o += 4 + n;
    }
    off += 4 + n;
  }
  memcpy(out + o, data + off, len - off);
  *out_len = o + len - off;
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t control = data[0];
  fuzz_output_t out;
  if (control & 1) {
    int fd = fuzz_connect(node_a->resp_port);
    fuzz_exchange(fd, NULL, 0, data + 1, size - 1, fuzz_chunk_bytes(control), PEER_QUIET_MS, &out);
    fuzz_check_resp_output(&out);
  } else {
    size_t len;
    unsigned char *frames = peer_filter(data + 1, size - 1, &len);
    int fd = fuzz_connect(node_port(node_a));
    fuzz_exchange(fd, hello, hello_len, frames, len, fuzz_chunk_bytes(control), PEER_QUIET_MS, &out);
    free(frames);
    fuzz_check_native_output(&out);
  }
  fuzz_output_free(&out);
  return 0;
}
