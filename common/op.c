#include "op.h"

#define OP_FLAGS_ROW_(name, flags) [GRID__OP__##name] = OP_KNOWN | (flags),
const uint16_t op_flags_table[OP_NUMBER_MAX] = {GRID_OP_TABLE(OP_FLAGS_ROW_)};
#undef OP_FLAGS_ROW_

const char *op_name(Grid__Op op) {
  switch (op) {
#define OP_NAME_CASE_(name, flags) case GRID__OP__##name: return #name;
    GRID_OP_TABLE(OP_NAME_CASE_)
#undef OP_NAME_CASE_
    default: return "?";
  }
}
