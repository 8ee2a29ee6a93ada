/*
 * test_op: the op table (common/op.h) against grid.proto. Every operation
 * of the protocol must have a row, flags that agree with each other, and a
 * name that is the proto's; a number outside the table counts as a write.
 */
#include <string.h>

#include "check.h"
#include "grid_types.h"
#include "op.h"

static void test_every_proto_op_has_a_row(void) {
  const ProtobufCEnumDescriptor *d = &grid__op__descriptor;
  CHECK(d->n_values > 20);
  for (unsigned i = 0; i < d->n_values; i++) {
    Grid__Op op = (Grid__Op)d->values[i].value;
    if (op == GRID__OP__OP_NONE) continue;
    if (!op_has(op, OP_KNOWN)) {
      fprintf(stderr, "op %s (%d) of grid.proto is missing from GRID_OP_TABLE in common/op.h\n",
              d->values[i].name, d->values[i].value);
      CHECK(0);
    }
    CHECK(d->values[i].value < OP_NUMBER_MAX);
    CHECK_STR(op_name(op), d->values[i].name);
  }
}

static void test_flags_agree(void) {
  const ProtobufCEnumDescriptor *d = &grid__op__descriptor;
  for (unsigned i = 0; i < d->n_values; i++) {
    Grid__Op op = (Grid__Op)d->values[i].value;
    if (op == GRID__OP__OP_NONE) continue;
    unsigned f = op_flags(op);
    /* A request is repeated only when that is safe: never a write. */
    CHECK(!((f & OP_WRITE) && (f & OP_IDEMPOTENT)));
    CHECK((f & OP_WRITE) || (f & OP_IDEMPOTENT));
    /* Routed by key, by batch, or neither. */
    CHECK(!((f & OP_KEYED) && (f & OP_BATCH)));
    CHECK(!(f & OP_PARTITION) || (f & OP_KEYED));
    /* Keyed and batched ops name a cache; peer-only ones are writes. */
    if (f & (OP_KEYED | OP_BATCH)) CHECK(f & OP_DATA);
    if (f & OP_PEER) CHECK(f & OP_WRITE);
    CHECK_EQ(op_is_write(op), (f & OP_WRITE) != 0);
  }
}

static void test_known_rows(void) {
  CHECK(!op_is_write(GRID__OP__GET) && op_has(GRID__OP__GET, OP_KEYED));
  CHECK(op_is_write(GRID__OP__PUT) && op_has(GRID__OP__PUT, OP_KEYED));
  CHECK(op_has(GRID__OP__SCAN, OP_PARTITION));
  CHECK(op_has(GRID__OP__GET_ALL, OP_BATCH) && !op_is_write(GRID__OP__GET_ALL));
  CHECK(op_has(GRID__OP__REPL, OP_PEER) && op_has(GRID__OP__FILL, OP_PEER));
  CHECK(op_has(GRID__OP__SIZE, OP_ALL_NODES));
  CHECK(!op_has(GRID__OP__PING, OP_DATA));
}

static void test_unknown_ops_are_writes(void) {
  /* A newer peer's op, or garbage: never retried as if it were a read. */
  CHECK(op_is_write((Grid__Op)63));
  CHECK(op_is_write((Grid__Op)1000));
  CHECK(op_is_write((Grid__Op)-1));
  CHECK(op_is_write(GRID__OP__OP_NONE));
  CHECK_STR(op_name((Grid__Op)1000), "?");
  CHECK_EQ(op_flags((Grid__Op)1000), 0);
}

int main(void) {
  test_every_proto_op_has_a_row();
  test_flags_agree();
  test_known_rows();
  test_unknown_ops_are_writes();
  printf("test_op: ok\n");
  return 0;
}
