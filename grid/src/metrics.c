#include "metrics.h"

/* 25 us to 1 s, then the rest: what a request on loopback takes (tens of
 * microseconds) to what a failover or a full disk makes it wait. */
const uint64_t metrics_bucket_ns[METRICS_BUCKETS] = {
    25000,     50000,     100000,    250000,    500000,    1000000,
    2500000,   5000000,   10000000,  25000000,  50000000,  100000000,
    250000000, 500000000, 1000000000, UINT64_MAX};
