/*
 * fuzz_resp: the Redis protocol port of a real node.
 *
 * Input: byte 0 is a control byte, the rest goes to the RESP port as is.
 *   bits 4..7  cut the rest into sends of 2^(k-1) bytes (0: one send), so
 *              that the parser also sees commands arrive in small reads
 * Every reply must be well-formed RESP2 (RESP3 once HELLO 3 asked for it),
 * and no simple string or error line
 * may hold a CR or LF (the check aborts otherwise). The store is brought
 * back to one empty "default" cache after each input.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"

static node_t *node;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  config_t cfg;
  fuzz_node_config(&cfg);
  cfg.resp_port = 0;
  node = fuzz_node_start_for_run(&cfg);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  int fd = fuzz_connect(node->resp_port);
  fuzz_output_t out;
  fuzz_exchange(fd, NULL, 0, data + 1, size - 1, fuzz_chunk_bytes(data[0]), 0, &out);
  fuzz_check_resp_output(&out);
  fuzz_output_free(&out);
  fuzz_store_reset(node);
  return 0;
}
