#include "num.h"

int num_parse_i64(const void *p, size_t len, int64_t *out) {
  const unsigned char *v = p;
  if (len == 0 || len > 20) return -1;
  size_t i = 0;
  int neg = 0;
  if (v[0] == '-') {
    neg = 1;
    i = 1;
    if (len == 1) return -1;
  }
  if (v[i] == '0' && len > i + 1) return -1;
  if (neg && v[i] == '0') return -1;
  uint64_t acc = 0;
  for (; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    uint64_t d = (uint64_t)(v[i] - '0');
    if (acc > (UINT64_MAX - d) / 10) return -1;
    acc = acc * 10 + d;
  }
  if (!neg && acc > (uint64_t)INT64_MAX) return -1;
  if (neg && acc > (uint64_t)INT64_MAX + 1) return -1;
  *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
  return 0;
}
