/*
 * fuzz_common: what the fuzz targets share: an in-process node started once,
 * one bounded exchange over TCP per input, and the checks on what comes
 * back. Every failure here is a finding: it prints why and aborts, which
 * libFuzzer (or the replay driver under ASan) reports with the input.
 */
#ifndef GRID_FUZZ_COMMON_H
#define GRID_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "node.h"

/* The longest a node may take to answer one input and close: past it the
 * input is reported as a hang. */
#define FUZZ_EXCHANGE_MS 20000
/* Bytes of a node's answer kept for the checks (the rest is counted). */
#define FUZZ_OUTPUT_BYTES_MAX (8u << 20)

void fuzz_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* A single node's settings for fuzzing: 127.0.0.1, port 0, one loop, a
 * small memory limit, a small default cache, quiet logs. */
void fuzz_node_config(config_t *cfg);
/* node_start, or dies. */
node_t *fuzz_node_start(const config_t *cfg);
/* fuzz_node_start for the one node a target drives for its whole run; the
 * node is stopped at a normal exit (the replay driver's, or the end of a
 * fuzzing run), so that its shutdown is exercised too. Once per process. */
node_t *fuzz_node_start_for_run(const config_t *cfg);

/* Sleeps ms milliseconds (for targets that do not link tests/harness.c). */
void fuzz_sleep_ms(int ms);

/* Brings the node's store back to one empty "default" cache: what one input
 * did does not change what the next one does. Only for a single node (no
 * cluster: its caches are ZooKeeper's). */
void fuzz_store_reset(node_t *n);
/* Empties every partition of the named cache (any node). */
void fuzz_cache_clear(node_t *n, const char *cache);

/* The input's first byte, as the network targets read it: bits 4..7 choose
 * how the rest is cut into sends (0: one send; k: sends of 2^(k-1) bytes),
 * so that the node also sees it arrive in small reads. */
size_t fuzz_chunk_bytes(uint8_t control);

/* What a node answered to one connection. */
typedef struct fuzz_output {
  unsigned char *data;   /* the first FUZZ_OUTPUT_BYTES_MAX bytes */
  size_t len;
  size_t total;          /* every byte received */
} fuzz_output_t;

void fuzz_output_free(fuzz_output_t *o);

/* Connects to 127.0.0.1:port (TCP_NODELAY), or dies. */
int fuzz_connect(int port);
/* Sends head (may be empty) then data cut into chunk-byte sends (0: all
 * at once), reading the whole time so that the node is never blocked on
 * us; then, once nothing has come for quiet_ms (0: at once; a cluster node
 * answers forwarded requests later, and closes at our EOF), shutdown
 * (SHUT_WR) and reads until EOF. Dies when the node has not closed within
 * FUZZ_EXCHANGE_MS. Closes fd. */
void fuzz_exchange(int fd, const void *head, size_t head_len, const void *data,
                   size_t len, size_t chunk, int quiet_ms, fuzz_output_t *out);

/* Appends a framed message (4-byte big-endian length) to buf, growing it. */
void fuzz_buf_frame(unsigned char **buf, size_t *len, const void *msg, size_t msg_len);

/* Checks a native node's answer: whole frames, the first a HelloReply, the
 * others Replies, statuses known GRID_E* codes. A last frame cut short is
 * allowed (the node closes at our EOF, dropping what it had not written). */
void fuzz_check_native_output(const fuzz_output_t *o);
/* Checks a RESP answer: a sequence of well-formed RESP2 values, with no
 * CR or LF inside a simple string or error line. A last value cut short is
 * allowed, as above. */
void fuzz_check_resp_output(const fuzz_output_t *o);

#endif
