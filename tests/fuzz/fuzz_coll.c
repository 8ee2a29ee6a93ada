/*
 * fuzz_coll: hashes, lists and sets as grid keeps them (grid/src/coll.c):
 * the decoder of a stored collection (what a peer's record or fill brings)
 * and every command run on whatever it decoded, with any arguments.
 *
 * Input:
 *   byte 0       the command: an index into every CollCmd (wrapping)
 *   byte 1, 2    its flags (little-endian)
 *   bytes 3..26  n1, n2, n3 (int64, little-endian)
 *   byte 27      k: arguments (k % 8), each a length byte then its bytes
 *   the rest     the collection's stored bytes (a string command's string)
 *
 * When the bytes decode, the command must not read or write out of bounds
 * (ASan), every answer's items must be readable, and a collection it wrote
 * must encode and decode back to the same items. Several-key commands run
 * on the decoded collection and an empty one (as a second key). Random
 * picks with repeats are bounded as the node bounds them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "fuzz_common.h"
#include "grid_types.h"

#define FUZZ_COLL_RANDOM_MAX 10000 /* the node's batch_keys_max default */
#define FUZZ_COLL_BYTES_MAX (1u << 20)

static const int fuzz_cmds[] = {
    COLL_HSET, COLL_HSETNX, COLL_HGET, COLL_HMGET, COLL_HDEL, COLL_HEXISTS, COLL_HLEN,
    COLL_HSTRLEN, COLL_HGETALL, COLL_HKEYS, COLL_HVALS, COLL_HINCRBY, COLL_HINCRBYFLOAT,
    COLL_HRANDFIELD, COLL_HSCAN, COLL_SADD, COLL_SREM, COLL_SMEMBERS, COLL_SISMEMBER,
    COLL_SMISMEMBER, COLL_SCARD, COLL_SPOP, COLL_SRANDMEMBER, COLL_SSCAN, COLL_SINTER,
    COLL_SUNION, COLL_SDIFF, COLL_SINTERSTORE, COLL_SUNIONSTORE, COLL_SDIFFSTORE, COLL_SMOVE,
    COLL_LPUSH, COLL_RPUSH, COLL_LPUSHX, COLL_RPUSHX, COLL_LPOP, COLL_RPOP, COLL_LRANGE,
    COLL_LLEN, COLL_LINDEX, COLL_LSET, COLL_LREM, COLL_LTRIM, COLL_LINSERT, COLL_LPOS,
    COLL_LMOVE, COLL_INCRBYFLOAT, COLL_SETRANGE, COLL_GETBIT, COLL_SETBIT, COLL_BITCOUNT,
    COLL_GETEX,
};
#define FUZZ_CMDS (sizeof fuzz_cmds / sizeof fuzz_cmds[0])

static uint64_t fuzz_rand_state;
static uint64_t fuzz_rand(void *ctx) {
  (void)ctx;
  fuzz_rand_state = fuzz_rand_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return fuzz_rand_state >> 11;
}

static int64_t get_i64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return (int64_t)v;
}

/* Reads every byte of every item (ASan finds an item pointing nowhere). */
static unsigned touch(const coll_vec_t *v) {
  unsigned sum = 0;
  for (size_t i = 0; i < v->n; i++)
    for (size_t k = 0; k < v->v[i].len; k++) sum += v->v[i].p[k];
  return sum;
}

/* A collection written must come back the same through its encoding. */
static void check_round_trip(const coll_vec_t *v, int type) {
  if (type == GRID_TYPE_STRING) return;
  size_t len;
  unsigned char *b = coll_encode(v, &len);
  if (!b) fuzz_die("coll_encode: out of memory");
  coll_vec_t back;
  if (coll_decode(b, len, &back) != 0) fuzz_die("a collection's encoding does not decode");
  if (back.n != v->n) fuzz_die("decoded %zu items of %zu", back.n, v->n);
  for (size_t i = 0; i < v->n; i++)
    if (back.v[i].len != v->v[i].len ||
        (v->v[i].len && memcmp(back.v[i].p, v->v[i].p, v->v[i].len) != 0))
      fuzz_die("item %zu differs after a round trip", i);
  coll_vec_free(&back);
  free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 28) return 0;
  int cmd = fuzz_cmds[data[0] % FUZZ_CMDS];
  int type = coll_cmd_type(cmd);
  coll_req_t req = {.cmd = cmd, .flags = data[1] | data[2] << 8, .n1 = get_i64(data + 3),
                    .n2 = get_i64(data + 11), .n3 = get_i64(data + 19), .rand = fuzz_rand,
                    .bytes_max = FUZZ_COLL_BYTES_MAX};
  req.flags &= ~COLL_F_MATCH; /* the node strips MATCH's pattern itself */
  if ((cmd == COLL_SRANDMEMBER || cmd == COLL_HRANDFIELD) && req.n1 < -FUZZ_COLL_RANDOM_MAX)
    return 0; /* refused by the node before coll sees it */
  if ((cmd == COLL_GETBIT || cmd == COLL_SETBIT) && req.n1 < 0) return 0; /* the front end's */
  coll_item_t args[8];
  size_t at = 28, nargs = data[27] % 8;
  for (size_t i = 0; i < nargs; i++) {
    size_t len = at < size ? data[at++] : 0;
    if (len > size - at) len = size - at;
    args[i] = (coll_item_t){data + at, len};
    at += len;
  }
  req.args = args;
  req.nargs = nargs;
  fuzz_rand_state = (uint64_t)size;
  const uint8_t *value = data + at;
  size_t vlen = size - at;
  coll_vec_t v = {0}, empty = {0};
  if (type == GRID_TYPE_STRING) {
    static coll_item_t one;
    one = (coll_item_t){value, vlen};
    v.v = malloc(sizeof *v.v);
    if (!v.v) return 0;
    v.v[0] = one;
    v.n = v.cap = 1;
  } else if (coll_decode(value, vlen, &v) != 0) {
    return 0; /* refused: what a node does with such a record */
  }
  coll_out_t out;
  if (coll_cmd_keys(cmd)) {
    coll_vec_t *vs[2] = {&v, &empty};
    int exists[2] = {1, 0};
    coll_run_keys(&req, vs, exists, 2, &out);
    if (out.write2 == COLL_PUT) check_round_trip(&empty, type);
  } else {
    coll_run(&req, &v, 1, &out);
  }
  if (!out.status && out.write == COLL_PUT) check_round_trip(&v, type);
  unsigned sum = touch(&out.items) + touch(&v);
  if (out.has_value && !out.nil_value)
    for (size_t k = 0; k < out.value.len; k++) sum += out.value.p[k];
  if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "  cmd %d status %d sum %u\n", cmd, out.status, sum);
  coll_out_free(&out);
  coll_vec_free(&v);
  coll_vec_free(&empty);
  return 0;
}
