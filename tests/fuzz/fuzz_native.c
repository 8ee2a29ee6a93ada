/*
 * fuzz_native: the native protocol of a real node, frames and requests.
 *
 * Input: byte 0 is a control byte, the rest goes to the node as is.
 *   bit 0      send a valid Hello first, so that the rest reaches requests
 *   bits 4..7  cut the rest into sends of 2^(k-1) bytes (0: one send)
 * One node runs in this process for the whole run; each input gets a new
 * connection, half-closed when sent, and the node must answer and close it
 * within FUZZ_EXCHANGE_MS. Its answer must be well-formed frames. The store
 * is brought back to one empty "default" cache after each input.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "grid.pb-c.h"

static node_t *node;
static unsigned char *hello;
static size_t hello_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  config_t cfg;
  fuzz_node_config(&cfg);
  node = fuzz_node_start_for_run(&cfg);
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = 0x47524944u;
  h.version = 1;
  h.client_name = "fuzz";
  unsigned char m[64];
  size_t n = grid__hello__pack(&h, m);
  fuzz_buf_frame(&hello, &hello_len, m, n);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t control = data[0];
  int fd = fuzz_connect(node_port(node));
  fuzz_output_t out;
  fuzz_exchange(fd, control & 1 ? hello : NULL, control & 1 ? hello_len : 0, data + 1,
                size - 1, fuzz_chunk_bytes(control), 0, &out);
  fuzz_check_native_output(&out);
  fuzz_output_free(&out);
  fuzz_store_reset(node);
  return 0;
}
