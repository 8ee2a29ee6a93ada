/*
 * gridbench: latency and throughput of grid's client API (grid.h only),
 * against a remote node ("grid://host:port") or an embedded node in this
 * process ("embedded:"); or, with the same workload, schedule and figures,
 * of a Redis-protocol server ("redis://host:port": gridd --resp-port, or a
 * real redis-server), spoken by a small blocking RESP2 client of its own.
 *
 * Each worker thread issues requests on its own handle (remote) or on the
 * one shared embedded handle, either
 *   - closed loop: the next request goes out when a previous one is done,
 *     with --pipeline D requests in flight (D = 1: synchronous calls), or
 *   - open loop (--rate R): request i of a thread has an intended start time
 *     on a fixed schedule; when the thread is behind it sends at once, and the
 *     latency is counted from the intended start, so that a stall of the
 *     system is charged to every request it delayed (the "coordinated
 *     omission" correction of wrk2 and HdrHistogram).
 *
 * Latencies go to per-thread log-bucketed histograms (128 sub-buckets per
 * power of two: under 0.4% error at the bucket midpoint), merged at the end.
 * See perf/README.md for how to read the numbers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"

#define EXIT_RUN_FAILED 1 /* preload failed, interrupted before measuring, ... */
#define EXIT_USAGE 2
#define EXIT_CONNECT 3

/* Limits on what the command line may ask for. */
#define THREADS_MAX 256
#define PIPELINE_MAX 1024 /* well under the client's 4096 in-flight slots */
#define KEYS_MAX 100000000u /* keeps "key:%08u" at exactly 12 bytes */
#define VALUE_BYTES_MAX (16u << 20) /* the node's default value_bytes_max */
#define RATE_MAX 10000000.0
#define DURATION_S_MAX 86400.0
#define WARMUP_S_MAX 3600.0
#define REQUESTS_MAX 1000000000000ull
#define TIMEOUT_MS_MAX 3600000u
#define SPIN_US_MAX 10000u
#define CACHE_NAME_BYTES_MAX 64
#define KEY_BYTES_MAX 16 /* "key:" + up to 10 digits + NUL */

#define PRELOAD_BATCH_KEYS 1000
#define PRELOAD_BATCH_BYTES_MAX (8u << 20) /* values per put_all, well below frame_bytes_max */
#define BATCH_MEAN_GETS 1000000            /* gets in the untimed-per-call loop */
#define BATCH_MEAN_KEYS 65536              /* precomputed keys it cycles through */
#define TIMER_COST_READS 1000000           /* clock reads to price one read */
#define SLEEP_CHUNK_NS 100000000ull        /* longest sleep: stays responsive to ^C */
#define CONTROL_TICK_NS 50000000ull        /* controller wake-up */
#define DRAIN_GRACE_MS 5000                /* beyond the timeout, for callbacks */
#define CATCH_UP_NS 1000000000ull          /* open loop: sending what was due, after the window */
#define ZIPF_THETA 0.99

/* RESP mode (redis://). */
#define RESP_READ_BYTES (64u << 10)    /* reply buffer per connection; also the longest reply line */
#define RESP_WRITE_BYTES (64u << 10)   /* commands are gathered up to this much, then sent */
#define RESP_BULK_BYTES_MAX (512ull << 20) /* Redis's proto-max-bulk-len: longer is a bad reply */
#define RESP_ARRAY_ITEMS_MAX 1000000   /* an array reply we skip over; more is a bad reply */
#define RESP_NESTING_MAX 8             /* arrays within arrays */
#define RESP_ERR_KINDS_MAX 16          /* distinct error texts counted per thread (and in all) */
#define RESP_ERR_TEXT_BYTES 120        /* an error text is cut to this (with its NUL) */
#define RECONNECT_DELAY_NS 100000000ull /* between failed reconnection attempts */
#define HOST_BYTES_MAX 256
#define PORT_BYTES_MAX 6               /* "65535" + NUL */

#define NS_PER_S 1000000000ull

/* ---- time ---------------------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void sleep_abs_ns(uint64_t t) {
  struct timespec ts = {.tv_sec = (time_t)(t / NS_PER_S), .tv_nsec = (long)(t % NS_PER_S)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

/* ---- histogram ------------------------------------------------------------ */

/*
 * Buckets, in nanoseconds:
 *
 *   value v              bucket index                         width
 *   0 .. 255             v                                    1
 *   2^e .. 2^(e+1)-1     256 + (e-8)*128 + (v>>(e-7)) - 128   2^(e-7)   (8 <= e <= 36)
 *
 * so a bucket is at most 1/128 of its lower bound wide. Values from 2^37 ns
 * (137 s, far beyond any timeout) share the last bucket; max is exact.
 *
 * One thread writes a histogram at a time (its worker, or its connection's
 * I/O thread under the worker's mutex); the controller reads it while it
 * grows for the progress line. Relaxed atomic loads and stores make that
 * race-free at the cost of a plain move on x86.
 */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_EXACT (2u * HIST_SUB)
#define HIST_TOP_BIT 37
#define HIST_BUCKETS (HIST_EXACT + (HIST_TOP_BIT - HIST_SUB_BITS - 1) * HIST_SUB)

typedef struct hist {
  _Atomic uint64_t n;
  _Atomic uint64_t sum_ns;
  _Atomic uint64_t max_ns;
  _Atomic uint64_t counts[HIST_BUCKETS];
} hist_t;

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
/* Single-writer increment: no locked instruction needed. */
#define BUMP(x, by) STORE(x, LOAD(x) + (by))

static uint32_t hist_index(uint64_t v) {
  if (v < HIST_EXACT) return (uint32_t)v;
  if (v >= (1ull << HIST_TOP_BIT)) v = (1ull << HIST_TOP_BIT) - 1;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  return HIST_EXACT + (e - HIST_SUB_BITS - 1) * HIST_SUB +
         (uint32_t)(v >> (e - HIST_SUB_BITS)) - HIST_SUB;
}

/* The midpoint of bucket i: what a percentile falling in it reports. */
static uint64_t hist_value_at(uint32_t i) {
  if (i < HIST_EXACT) return i;
  uint32_t group = (i - HIST_EXACT) / HIST_SUB, sub = (i - HIST_EXACT) % HIST_SUB;
  unsigned shift = group + 1;
  uint64_t low = (uint64_t)(HIST_SUB + sub) << shift;
  return low + ((1ull << shift) >> 1);
}

static void hist_record(hist_t *h, uint64_t v) {
  BUMP(h->counts[hist_index(v)], 1);
  BUMP(h->n, 1);
  BUMP(h->sum_ns, v);
  if (v > LOAD(h->max_ns)) STORE(h->max_ns, v);
}

/* dst += src. dst is the caller's alone; src may be growing. */
static void hist_merge(hist_t *dst, hist_t *src) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    uint64_t c = LOAD(src->counts[i]);
    if (c) {
      BUMP(dst->counts[i], c);
      n += c;
    }
  }
  /* Counted from the buckets so that percentiles of a snapshot add up. */
  BUMP(dst->n, n);
  BUMP(dst->sum_ns, LOAD(src->sum_ns));
  if (LOAD(src->max_ns) > LOAD(dst->max_ns)) STORE(dst->max_ns, LOAD(src->max_ns));
}

static void hist_clear(hist_t *h) { memset(h, 0, sizeof *h); }

/* The value at or below which pct percent of the samples lie. */
static uint64_t hist_percentile(hist_t *h, double pct) {
  uint64_t n = LOAD(h->n);
  if (n == 0) return 0;
  uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)n);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    seen += LOAD(h->counts[i]);
    if (seen >= rank) {
      uint64_t v = hist_value_at(i), max = LOAD(h->max_ns);
      return v > max ? max : v;
    }
  }
  return LOAD(h->max_ns);
}

static double hist_mean(hist_t *h) {
  uint64_t n = LOAD(h->n);
  return n ? (double)LOAD(h->sum_ns) / (double)n : 0.0;
}

static hist_t *hist_new(void) { return calloc(1, sizeof(hist_t)); }

/* ---- random keys ---------------------------------------------------------- */

/* splitmix64: small, fast, and good enough to pick keys. */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/*
 * Zipfian ranks in [0, n) after Gray et al., "Quickly generating
 * billion-record synthetic databases" (SIGMOD 1994), as YCSB's
 * ZipfianGenerator does it. Rank 0 (key:00000000) is the hottest; keys are
 * not scrambled, which does not matter here because the grid places keys
 * by hash.
 */
typedef struct zipf {
  uint64_t n;
  double theta;
  double alpha;      /* 1 / (1 - theta) */
  double zetan;      /* sum over i = 1..n of 1 / i^theta */
  double eta;
  double half_pow_theta; /* 0.5^theta */
} zipf_t;

static void zipf_init(zipf_t *z, uint64_t n, double theta) {
  double zetan = 0.0;
  for (uint64_t i = n; i >= 1; i--) zetan += 1.0 / pow((double)i, theta); /* small terms first */
  double zeta2 = 1.0 + pow(0.5, theta);
  z->n = n;
  z->theta = theta;
  z->alpha = 1.0 / (1.0 - theta);
  z->zetan = zetan;
  z->half_pow_theta = pow(0.5, theta);
  z->eta = n > 1 ? (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / zetan) : 0.0;
}

static uint64_t zipf_next(const zipf_t *z, double u) {
  double uz = u * z->zetan;
  if (uz < 1.0) return 0;
  if (uz < 1.0 + z->half_pow_theta) return z->n > 1 ? 1 : 0;
  uint64_t r = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
  return r < z->n ? r : z->n - 1;
}

/* Writes "key:%08u" into buf (KEY_BYTES_MAX bytes); returns its length. */
static size_t key_format(char *buf, uint32_t i) {
  char digits[10];
  int nd = 0;
  do {
    digits[nd++] = (char)('0' + i % 10);
    i /= 10;
  } while (i);
  while (nd < 8) digits[nd++] = '0';
  memcpy(buf, "key:", 4);
  for (int k = 0; k < nd; k++) buf[4 + k] = digits[nd - 1 - k];
  buf[4 + nd] = '\0';
  return 4 + (size_t)nd;
}

/* ---- configuration --------------------------------------------------------- */

typedef enum { OP_GET, OP_PUT, OP_MIX, OP_MULTI } op_kind_t;
enum { REQ_GET = 0, REQ_PUT = 1, REQ_KINDS = 2 };
static const char *const req_names[REQ_KINDS] = {"get", "put"};
static const char *const op_names[] = {"get", "put", "mix"};

typedef struct bench_cfg {
  const char *uri;
  int embedded;
  int resp;              /* redis://: speak RESP over plain sockets, not grid.h */
  char host[HOST_BYTES_MAX]; /* resp: from the URI */
  char port[PORT_BYTES_MAX];
  op_kind_t op;
  double get_ratio;      /* mix: share of gets */
  int get_ratio_set;
  uint32_t keys;
  uint32_t value_bytes;
  int zipfian;
  const char *cache;
  int cache_set;         /* given on the command line (resp: SELECT it) */
  uint32_t threads;
  uint32_t pipeline;
  double rate;           /* total ops/s; 0 = closed loop */
  double duration_s;
  int duration_set;
  double warmup_s;
  uint64_t requests;     /* recorded requests in all; 0 = run for duration_s */
  uint32_t timeout_ms;
  uint32_t spin_us;      /* open loop: busy-wait this close to a start time */
  int preload;
  int json;
  int quiet;
  const char *config;    /* embedded: the node's settings file */
  int keys_led;          /* only keys the handle's own node leads */
  uint64_t near_bytes;   /* a near cache of this many bytes per handle */
  int replicated;        /* embedded: a cache made here is replicated */
  const char *cacert, *cert, *key; /* grids:// */
  const char *user, *password;     /* nodes with auth = on */
} bench_cfg_t;

static void usage(FILE *f) {
  fprintf(f,
    "usage: gridbench --uri URI [options]\n"
    "\n"
    "Measures latency and throughput of grid's client API (grid.h), or of a Redis-\n"
    "protocol server (gridd --resp-port, redis-server) with the same workload.\n"
    "\n"
    "target\n"
    "  --uri URI            grid://HOST:PORT (a running node; grids:// over TLS, with\n"
    "                       --cacert F, --cert F, --key F), embedded: (a node in\n"
    "                       this process, called from the worker threads directly), or\n"
    "                       redis://HOST:PORT (RESP mode: GET/SET over one TCP\n"
    "                       connection per thread; gridd's --resp-port or redis-server)\n"
    "  --cache NAME         cache to use (default \"default\"); with embedded: it is\n"
    "                       created if missing; with redis:// each connection sends\n"
    "                       SELECT NAME (grid: a cache name; Redis: a db number)\n"
    "  --config FILE        embedded: the node's settings file (zk = ... makes it a\n"
    "                       member of that cluster)\n"
    "  --cache-mode M       embedded: partitioned (default) or replicated, for a\n"
    "                       cache it makes\n"
    "  --near-cache-bytes N a near cache of N bytes in each handle (grid:// or an\n"
    "                       embedded member): reads of other nodes' keys kept here\n"
    "  --keys-led           only the keys whose partition the handle's own node leads\n"
    "                       now (grid_key_owner): an embedded member's local reads\n"
    "  --user U --password P  log in (nodes with auth = on)\n"
    "  --timeout-ms N       deadline of every call (default 5000); redis://: the\n"
    "                       socket timeout, after which the connection is reopened\n"
    "workload\n"
    "  --op get|put|mix     operation (default get); redis://: GET, SET, or both\n"
    "  --op multi           redis:// only: a transaction of 3 commands on one key's\n"
    "                       {tag}: MULTI, SET, INCR, GET, EXEC (counted as a put)\n"
    "  --get-ratio F        mix only: share of gets, 0..1 (default 0.9)\n"
    "  --keys N             keys \"key:%%08u\" for i in [0, N) (default 100000, max %u)\n"
    "  --value-bytes N      value size (default 100, max %u)\n"
    "  --keyspace K         uniform | zipfian (theta %.2f, rank 0 hottest) (default uniform)\n"
    "  --no-preload         skip writing every key first (by default all keys are\n"
    "                       written with put_all, or redis:// MSET, batches of %d so\n"
    "                       gets hit)\n"
    "load\n"
    "  --threads T          worker threads, one handle (connection) each (default 1,\n"
    "                       max %d); embedded: all threads share the one node\n"
    "  --pipeline D         requests in flight per thread (default 1 = synchronous\n"
    "                       calls; D > 1 uses grid_get_async/grid_put_async; max %d);\n"
    "                       redis://: write D commands, then read the D replies\n"
    "  --rate R             open loop: R ops/s in all, spread evenly over the threads;\n"
    "                       latency counts from each request's scheduled start\n"
    "                       (default: closed loop, as fast as replies come);\n"
    "                       redis://: only with --pipeline 1\n"
    "  --duration-s S       measured time (default 5)\n"
    "  --warmup-s W         unrecorded time before it (default 1)\n"
    "  --requests N         measure N requests in all instead of a duration\n"
    "  --spin-us N          open loop: busy-wait the last N us before each scheduled\n"
    "                       start instead of sleeping (default 0; see README)\n"
    "output\n"
    "  --json               one JSON object on stdout instead of the table\n"
    "  --quiet              no progress lines on stderr\n"
    "  --help, --version\n"
    "\n"
    "exit status: 0 measured (request errors are reported, not fatal), 1 run failed,\n"
    "2 bad command line, 3 cannot connect or open the node\n",
    KEYS_MAX, VALUE_BYTES_MAX, ZIPF_THETA, PRELOAD_BATCH_KEYS, THREADS_MAX, PIPELINE_MAX);
}

__attribute__((format(printf, 1, 2), noreturn)) static void usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "gridbench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see gridbench --help)\n");
  va_end(ap);
  exit(EXIT_USAGE);
}

static uint64_t parse_u64_in(const char *flag, const char *s, uint64_t min, uint64_t max) {
  char *end;
  errno = 0;
  unsigned long long v = *s == '-' ? 0 : strtoull(s, &end, 10);
  if (*s == '-' || end == s || *end || errno || v < min || v > max) {
    char range[64];
    snprintf(range, sizeof range, "%" PRIu64 "..%" PRIu64, min, max);
    fprintf(stderr, "gridbench: %s wants an integer in %s, not \"%s\"\n(see gridbench --help)\n",
            flag, range, s);
    exit(EXIT_USAGE);
  }
  return v;
}

/* min_open: min itself is excluded. */
static double parse_double_in(const char *flag, const char *s, double min, int min_open,
                              double max) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !isfinite(v) || v < min || (min_open && v == min) ||
      v > max) {
    fprintf(stderr, "gridbench: %s wants a number %s %g and at most %g, not \"%s\"\n"
            "(see gridbench --help)\n", flag, min_open ? "above" : "from", min, max, s);
    exit(EXIT_USAGE);
  }
  return v;
}

static int cache_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > CACHE_NAME_BYTES_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

/* redis://HOST:PORT (HOST may be [IPv6]) into c->host and c->port. */
static void parse_redis_uri(bench_cfg_t *c) {
  const char *hp = c->uri + strlen("redis://");
  const char *host = hp, *host_end, *port;
  if (*hp == '[') {
    host = hp + 1;
    host_end = strchr(host, ']');
    port = host_end && host_end[1] == ':' ? host_end + 2 : NULL;
  } else {
    host_end = strrchr(hp, ':');
    port = host_end ? host_end + 1 : NULL;
  }
  if (!host_end || !port)
    usage_error("--uri wants redis://HOST:PORT (the port too), not \"%s\"", c->uri);
  size_t host_len = (size_t)(host_end - host);
  if (host_len == 0 || host_len >= HOST_BYTES_MAX || memchr(host, '@', host_len) ||
      memchr(host, '/', host_len))
    usage_error("--uri wants redis://HOST:PORT with a plain host name or address (no user,\n"
                "no password, no /db: use --cache for SELECT), not \"%s\"", c->uri);
  size_t port_len = strlen(port);
  if (port_len == 0 || port_len >= PORT_BYTES_MAX || strspn(port, "0123456789") != port_len ||
      atoi(port) < 1 || atoi(port) > 65535)
    usage_error("--uri wants a port in 1..65535 after the host, not \"%s\"", c->uri);
  memcpy(c->host, host, host_len);
  c->host[host_len] = '\0';
  memcpy(c->port, port, port_len + 1);
}

static void parse_args(int argc, char **argv, bench_cfg_t *c) {
  enum {
    O_URI = 1000, O_OP, O_GET_RATIO, O_KEYS, O_VALUE_BYTES, O_KEYSPACE, O_CACHE, O_THREADS,
    O_PIPELINE, O_RATE, O_DURATION, O_WARMUP, O_REQUESTS, O_TIMEOUT, O_SPIN, O_NO_PRELOAD, O_JSON,
    O_QUIET, O_HELP, O_VERSION, O_CONFIG, O_KEYS_LED, O_NEAR, O_CACHE_MODE, O_CACERT, O_CERT,
    O_KEY, O_USER, O_PASSWORD
  };
  static const struct option opts[] = {
      {"uri", required_argument, 0, O_URI},
      {"op", required_argument, 0, O_OP},
      {"get-ratio", required_argument, 0, O_GET_RATIO},
      {"keys", required_argument, 0, O_KEYS},
      {"value-bytes", required_argument, 0, O_VALUE_BYTES},
      {"keyspace", required_argument, 0, O_KEYSPACE},
      {"cache", required_argument, 0, O_CACHE},
      {"threads", required_argument, 0, O_THREADS},
      {"pipeline", required_argument, 0, O_PIPELINE},
      {"rate", required_argument, 0, O_RATE},
      {"duration-s", required_argument, 0, O_DURATION},
      {"warmup-s", required_argument, 0, O_WARMUP},
      {"requests", required_argument, 0, O_REQUESTS},
      {"timeout-ms", required_argument, 0, O_TIMEOUT},
      {"spin-us", required_argument, 0, O_SPIN},
      {"no-preload", no_argument, 0, O_NO_PRELOAD},
      {"json", no_argument, 0, O_JSON},
      {"quiet", no_argument, 0, O_QUIET},
      {"config", required_argument, 0, O_CONFIG},
      {"keys-led", no_argument, 0, O_KEYS_LED},
      {"near-cache-bytes", required_argument, 0, O_NEAR},
      {"cache-mode", required_argument, 0, O_CACHE_MODE},
      {"cacert", required_argument, 0, O_CACERT},
      {"cert", required_argument, 0, O_CERT},
      {"key", required_argument, 0, O_KEY},
      {"user", required_argument, 0, O_USER},
      {"password", required_argument, 0, O_PASSWORD},
      {"help", no_argument, 0, O_HELP},
      {"version", no_argument, 0, O_VERSION},
      {0, 0, 0, 0},
  };
  *c = (bench_cfg_t){.op = OP_GET, .get_ratio = 0.9, .keys = 100000, .value_bytes = 100,
                     .cache = "default", .threads = 1, .pipeline = 1, .duration_s = 5.0,
                     .warmup_s = 1.0, .timeout_ms = 5000, .preload = 1};
  opterr = 0;
  int o;
  while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (o) {
      case O_URI: c->uri = optarg; break;
      case O_OP:
        if (strcmp(optarg, "get") == 0) c->op = OP_GET;
        else if (strcmp(optarg, "put") == 0) c->op = OP_PUT;
        else if (strcmp(optarg, "mix") == 0) c->op = OP_MIX;
        else if (strcmp(optarg, "multi") == 0) c->op = OP_MULTI;
        else usage_error("--op wants get, put, mix or multi, not \"%s\"", optarg);
        break;
      case O_GET_RATIO:
        c->get_ratio = parse_double_in("--get-ratio", optarg, 0.0, 0, 1.0);
        c->get_ratio_set = 1;
        break;
      case O_KEYS: c->keys = (uint32_t)parse_u64_in("--keys", optarg, 1, KEYS_MAX); break;
      case O_VALUE_BYTES:
        c->value_bytes = (uint32_t)parse_u64_in("--value-bytes", optarg, 0, VALUE_BYTES_MAX);
        break;
      case O_KEYSPACE:
        if (strcmp(optarg, "uniform") == 0) c->zipfian = 0;
        else if (strcmp(optarg, "zipfian") == 0) c->zipfian = 1;
        else usage_error("--keyspace wants uniform or zipfian, not \"%s\"", optarg);
        break;
      case O_CACHE:
        if (!cache_name_ok(optarg))
          usage_error("--cache wants 1..64 bytes of [A-Za-z0-9_.-], not \"%s\"", optarg);
        c->cache = optarg;
        c->cache_set = 1;
        break;
      case O_THREADS: c->threads = (uint32_t)parse_u64_in("--threads", optarg, 1, THREADS_MAX); break;
      case O_PIPELINE:
        c->pipeline = (uint32_t)parse_u64_in("--pipeline", optarg, 1, PIPELINE_MAX);
        break;
      case O_RATE: c->rate = parse_double_in("--rate", optarg, 0.0, 1, RATE_MAX); break;
      case O_DURATION:
        c->duration_s = parse_double_in("--duration-s", optarg, 0.0, 1, DURATION_S_MAX);
        c->duration_set = 1;
        break;
      case O_WARMUP: c->warmup_s = parse_double_in("--warmup-s", optarg, 0.0, 0, WARMUP_S_MAX); break;
      case O_REQUESTS: c->requests = parse_u64_in("--requests", optarg, 1, REQUESTS_MAX); break;
      case O_TIMEOUT:
        c->timeout_ms = (uint32_t)parse_u64_in("--timeout-ms", optarg, 1, TIMEOUT_MS_MAX);
        break;
      case O_SPIN: c->spin_us = (uint32_t)parse_u64_in("--spin-us", optarg, 0, SPIN_US_MAX); break;
      case O_NO_PRELOAD: c->preload = 0; break;
      case O_JSON: c->json = 1; break;
      case O_QUIET: c->quiet = 1; break;
      case O_CONFIG: c->config = optarg; break;
      case O_KEYS_LED: c->keys_led = 1; break;
      case O_CACHE_MODE:
        if (strcmp(optarg, "replicated") == 0) c->replicated = 1;
        else if (strcmp(optarg, "partitioned") == 0) c->replicated = 0;
        else usage_error("--cache-mode wants partitioned or replicated, not \"%s\"", optarg);
        break;
      case O_NEAR: c->near_bytes = parse_u64_in("--near-cache-bytes", optarg, 1, UINT64_MAX); break;
      case O_CACERT: c->cacert = optarg; break;
      case O_CERT: c->cert = optarg; break;
      case O_KEY: c->key = optarg; break;
      case O_USER: c->user = optarg; break;
      case O_PASSWORD: c->password = optarg; break;
      case O_HELP: usage(stdout); exit(0);
      case O_VERSION: printf("gridbench %s\n", GRID_VERSION_STRING); exit(0);
      case ':':
        usage_error("%s needs a value", argv[optind - 1]);
        break;
      default:
        usage_error("unknown option \"%s\"", argv[optind - 1]);
    }
  }
  if (optind < argc) usage_error("unexpected argument \"%s\"", argv[optind]);
  if (!c->uri) usage_error("--uri is required: grid://HOST:PORT, embedded: or redis://HOST:PORT");
  if (strcmp(c->uri, "embedded:") == 0) {
    c->embedded = 1;
  } else if (strncmp(c->uri, "redis://", 8) == 0) {
    c->resp = 1;
    parse_redis_uri(c);
  } else if (strncmp(c->uri, "grid://", 7) != 0 && strncmp(c->uri, "grids://", 8) != 0) {
    usage_error("--uri wants grid://HOST:PORT, grids://HOST:PORT, embedded: or "
                "redis://HOST:PORT, not \"%s\"", c->uri);
  }
  if ((c->cacert || c->cert || c->key) && strncmp(c->uri, "grids://", 8) != 0)
    usage_error("--cacert, --cert and --key are for grids:// (TLS)");
  if (c->op == OP_MULTI && !c->resp) usage_error("--op multi needs redis:// (MULTI / EXEC)");
  if (c->get_ratio_set && c->op != OP_MIX)
    usage_error("--get-ratio only applies to --op mix");
  if (c->requests && c->duration_set)
    usage_error("give --duration-s or --requests, not both");
  if (c->spin_us && c->rate <= 0) usage_error("--spin-us only applies with --rate");
  if (c->rate > 0 && c->rate / c->threads < 1e-3)
    usage_error("--rate is under 0.001 ops/s per thread");
  /* The RESP client writes a whole batch and then reads it back, so a
   * request of a batch cannot leave on a schedule of its own. */
  if (c->config && !c->embedded) usage_error("--config only applies to embedded:");
  if (c->keys_led && c->resp) usage_error("--keys-led needs grid.h (grid:// or embedded:)");
  if (c->near_bytes && c->resp) usage_error("--near-cache-bytes needs grid.h (grid:// or embedded:)");
  if (c->resp && c->rate > 0 && c->pipeline > 1)
    usage_error("--rate needs --pipeline 1 with redis:// (a RESP batch of D commands is\n"
                "written at once, so its requests cannot follow the open-loop schedule);\n"
                "use the closed loop for pipelined RESP runs");
}

/* ---- RESP client (redis://) ------------------------------------------------ */

/*
 * One blocking TCP connection per worker thread, speaking RESP2. Commands go
 * out as multibulk:
 *
 *   *2\r\n $3\r\n GET\r\n $12\r\n key:00000042\r\n
 *   *3\r\n $3\r\n SET\r\n $12\r\n key:00000042\r\n $<n>\r\n <n bytes>\r\n
 *
 * and replies are read back one at a time by a pull parser that blocks in
 * recv() until the reply is whole:
 *
 *   first byte  rest of the line          then
 *   +           simple string ("OK")      -
 *   -           error ("ERR ...")         -
 *   :           integer                   -
 *   $           length n, or -1 (nil)     n bytes and \r\n (not kept: only n)
 *   *           count n, or -1 (nil)      n replies (skipped, nesting bounded)
 *
 * A bulk reply's bytes are skipped, never stored, so a value of any size
 * passes through the one RESP_READ_BYTES buffer; only a line must fit in it.
 * A reply that does not parse leaves the stream out of step: the caller
 * closes the connection and opens a new one.
 */

/* What a link operation can fail with. */
enum {
  LINK_ETIMEDOUT = -1, /* nothing within --timeout-ms (SO_RCVTIMEO / SO_SNDTIMEO) */
  LINK_ECLOSED = -2,   /* the server closed the connection */
  LINK_EPROTO = -3,    /* a reply that is not RESP2: see link->why */
  LINK_EIO = -4,       /* a socket call failed: see link->sys_errno */
  LINK_EREFUSED = -5,  /* PING answered otherwise than +PONG: see link->why */
  LINK_ESELECT = -6,   /* SELECT answered otherwise than +OK: see link->why */
};

typedef struct resp_link {
  int fd;               /* -1: not connected */
  char *rbuf;           /* RESP_READ_BYTES; replies not parsed yet are rbuf[rpos, rlen) */
  size_t rpos, rlen;
  uint64_t recv_ns;     /* when the last recv() returned: the arrival of what it read */
  char *wbuf;           /* RESP_WRITE_BYTES of commands not sent yet */
  size_t wlen;
  int sys_errno;        /* LINK_EIO */
  char why[RESP_ERR_TEXT_BYTES]; /* LINK_EPROTO, LINK_EREFUSED, LINK_ESELECT */
} resp_link_t;

typedef struct resp_reply {
  char type;            /* '+', '-', ':', '$' or '*' */
  int64_t n;            /* ':' the integer; '$' the length, '*' the count (-1: nil) */
  char text[RESP_ERR_TEXT_BYTES]; /* '+' and '-': the line, cut short, printable */
} resp_reply_t;

/* Both buffers are the caller's to free with link_free(); fd stays -1 until
 * link_open(). */
static int link_init(resp_link_t *l) {
  memset(l, 0, sizeof *l);
  l->fd = -1;
  l->rbuf = malloc(RESP_READ_BYTES);
  l->wbuf = malloc(RESP_WRITE_BYTES);
  return l->rbuf && l->wbuf ? 0 : -1;
}

static void link_close(resp_link_t *l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  l->rpos = l->rlen = l->wlen = 0;
}

static void link_free(resp_link_t *l) {
  link_close(l);
  free(l->rbuf);
  free(l->wbuf);
  l->rbuf = l->wbuf = NULL;
}

/* Connects to addr with TCP_NODELAY and both socket timeouts at timeout_ms
 * (on Linux the send timeout bounds connect() too). */
static int link_open(resp_link_t *l, const struct sockaddr *addr, socklen_t addr_len,
                     uint32_t timeout_ms) {
  link_close(l);
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    l->sys_errno = errno;
    return LINK_EIO;
  }
  int one = 1;
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    l->sys_errno = errno;
    close(fd);
    return LINK_EIO;
  }
  if (connect(fd, addr, addr_len) != 0) {
    int e = errno;
    close(fd);
    if (e == EINPROGRESS || e == EAGAIN) return LINK_ETIMEDOUT;
    l->sys_errno = e;
    return LINK_EIO;
  }
  l->fd = fd;
  return 0;
}

/* Words for a link failure, for the error counts and messages. */
static void link_error_text(const resp_link_t *l, int rc, char *buf, size_t cap) {
  switch (rc) {
    case LINK_ETIMEDOUT: snprintf(buf, cap, "no reply within --timeout-ms"); break;
    case LINK_ECLOSED: snprintf(buf, cap, "connection closed by the server"); break;
    case LINK_EPROTO: snprintf(buf, cap, "malformed reply: %.96s", l->why); break;
    case LINK_EIO: snprintf(buf, cap, "socket error: %s", strerror(l->sys_errno)); break;
    case LINK_EREFUSED: case LINK_ESELECT: snprintf(buf, cap, "%s", l->why); break;
    default: snprintf(buf, cap, "link error %d", rc);
  }
}

static int link_send_all(resp_link_t *l, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = send(l->fd, p, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return LINK_ETIMEDOUT;
      l->sys_errno = errno;
      return errno == EPIPE || errno == ECONNRESET ? LINK_ECLOSED : LINK_EIO;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

static int link_flush(resp_link_t *l) {
  int rc = link_send_all(l, l->wbuf, l->wlen);
  l->wlen = 0;
  return rc;
}

/* Queues n bytes; what does not fit is sent now. A piece as big as the
 * buffer (a large value) goes out directly instead of being copied. */
static int link_put(resp_link_t *l, const void *p, size_t n) {
  if (n > RESP_WRITE_BYTES - l->wlen) {
    int rc = link_flush(l);
    if (rc != 0) return rc;
    if (n >= RESP_WRITE_BYTES) return link_send_all(l, p, n);
  }
  memcpy(l->wbuf + l->wlen, p, n);
  l->wlen += n;
  return 0;
}

/* Writes "<prefix><v>\r\n" into buf (24 bytes or more); returns its length. */
static size_t format_count_line(char *buf, char prefix, uint64_t v) {
  char digits[20];
  int nd = 0;
  do {
    digits[nd++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  size_t n = 0;
  buf[n++] = prefix;
  while (nd) buf[n++] = digits[--nd];
  buf[n++] = '\r';
  buf[n++] = '\n';
  return n;
}

static int link_put_bulk(resp_link_t *l, const void *p, size_t n) {
  char head[24];
  int rc = link_put(l, head, format_count_line(head, '$', n));
  if (rc == 0) rc = link_put(l, p, n);
  if (rc == 0) rc = link_put(l, "\r\n", 2);
  return rc;
}

/* Queues one command of argc arguments. */
static int link_put_command(resp_link_t *l, int argc, const void *const *argv,
                            const size_t *lens) {
  char head[24];
  int rc = link_put(l, head, format_count_line(head, '*', (uint64_t)argc));
  for (int i = 0; rc == 0 && i < argc; i++) rc = link_put_bulk(l, argv[i], lens[i]);
  return rc;
}

/* Reads more into the buffer, moving what is unread to its start first. */
static int link_fill(resp_link_t *l) {
  if (l->rpos > 0) {
    memmove(l->rbuf, l->rbuf + l->rpos, l->rlen - l->rpos);
    l->rlen -= l->rpos;
    l->rpos = 0;
  }
  if (l->rlen == RESP_READ_BYTES) {
    snprintf(l->why, sizeof l->why, "a reply line longer than %u bytes", RESP_READ_BYTES);
    return LINK_EPROTO;
  }
  for (;;) {
    ssize_t k = recv(l->fd, l->rbuf + l->rlen, RESP_READ_BYTES - l->rlen, 0);
    if (k > 0) {
      l->rlen += (size_t)k;
      l->recv_ns = now_ns();
      return 0;
    }
    if (k == 0) return LINK_ECLOSED;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return LINK_ETIMEDOUT;
    l->sys_errno = errno;
    return errno == ECONNRESET ? LINK_ECLOSED : LINK_EIO;
  }
}

/* The next line, without its \r\n; *p stays valid until the next read. */
static int link_line(resp_link_t *l, const char **p, size_t *n) {
  size_t scanned = 0; /* bytes known to hold no "\r\n" */
  for (;;) {
    const char *b = l->rbuf + l->rpos;
    size_t avail = l->rlen - l->rpos;
    for (size_t i = scanned; i + 1 < avail; i++) {
      if (b[i] == '\r' && b[i + 1] == '\n') {
        *p = b;
        *n = i;
        l->rpos += i + 2;
        return 0;
      }
    }
    scanned = avail ? avail - 1 : 0;
    int rc = link_fill(l);
    if (rc != 0) return rc;
  }
}

/* Consumes n bytes, buffered or still to come, without keeping them. */
static int link_skip(resp_link_t *l, uint64_t n) {
  while (n > 0) {
    if (l->rpos == l->rlen) {
      int rc = link_fill(l);
      if (rc != 0) return rc;
    }
    size_t take = l->rlen - l->rpos;
    if (take > n) take = (size_t)n;
    l->rpos += take;
    n -= take;
  }
  return 0;
}

/* A whole signed decimal, as RESP writes lengths and integers. */
static int parse_resp_int(const char *p, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = n > 0 && p[0] == '-';
  if (neg) i++;
  if (i == n || n - i > 19) return -1;
  uint64_t v = 0;
  for (; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (uint64_t)(p[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX) return -1;
  *out = neg ? -(int64_t)v : (int64_t)v;
  return 0;
}

/* Copies a reply line for showing: cut short, control bytes as '?'. */
static void copy_line_text(char *dst, size_t cap, const char *p, size_t n) {
  if (n > cap - 1) n = cap - 1;
  for (size_t i = 0; i < n; i++) dst[i] = (unsigned char)p[i] < 0x20 || p[i] == 0x7f ? '?' : p[i];
  dst[n] = '\0';
}

static int link_read_value(resp_link_t *l, resp_reply_t *r, int depth) {
  const char *p;
  size_t n;
  int rc = link_line(l, &p, &n);
  if (rc != 0) return rc;
  if (n == 0) {
    snprintf(l->why, sizeof l->why, "an empty line");
    return LINK_EPROTO;
  }
  r->type = p[0];
  r->n = 0;
  r->text[0] = '\0';
  switch (p[0]) {
    case '+': case '-':
      copy_line_text(r->text, sizeof r->text, p + 1, n - 1);
      return 0;
    case ':':
      if (parse_resp_int(p + 1, n - 1, &r->n) != 0) break;
      return 0;
    case '$':
      if (parse_resp_int(p + 1, n - 1, &r->n) != 0 || r->n < -1 ||
          (r->n >= 0 && (uint64_t)r->n > RESP_BULK_BYTES_MAX))
        break;
      if (r->n == -1) return 0;
      if ((rc = link_skip(l, (uint64_t)r->n)) != 0) return rc;
      if ((rc = link_line(l, &p, &n)) != 0) return rc;
      if (n != 0) {
        snprintf(l->why, sizeof l->why, "a bulk string longer than its length %" PRId64, r->n);
        return LINK_EPROTO;
      }
      return 0;
    case '*': {
      if (parse_resp_int(p + 1, n - 1, &r->n) != 0 || r->n < -1 || r->n > RESP_ARRAY_ITEMS_MAX)
        break;
      if (depth == RESP_NESTING_MAX) {
        snprintf(l->why, sizeof l->why, "arrays nested deeper than %d", RESP_NESTING_MAX);
        return LINK_EPROTO;
      }
      resp_reply_t item;
      for (int64_t i = 0; i < r->n; i++)
        if ((rc = link_read_value(l, &item, depth + 1)) != 0) return rc;
      return 0;
    }
    default: {
      char shown[32];
      copy_line_text(shown, sizeof shown, p, n);
      snprintf(l->why, sizeof l->why, "a line starting \"%s\"", shown);
      return LINK_EPROTO;
    }
  }
  char shown[32];
  copy_line_text(shown, sizeof shown, p, n);
  snprintf(l->why, sizeof l->why, "a bad count or integer in \"%s\"", shown);
  return LINK_EPROTO;
}

/* Reads one whole reply; its arrival time is then l->recv_ns (the recv()
 * that brought its last byte is the latest one so far). */
static int link_read_reply(resp_link_t *l, resp_reply_t *r) { return link_read_value(l, r, 0); }

/* How a reply looked, for "unexpected reply" texts. */
static void describe_reply(const resp_reply_t *r, char *buf, size_t cap) {
  switch (r->type) {
    case '+': snprintf(buf, cap, "+%.48s", r->text); break;
    case '-': snprintf(buf, cap, "-%.48s", r->text); break;
    case ':': snprintf(buf, cap, ":%" PRId64 " (an integer)", r->n); break;
    case '$': snprintf(buf, cap, r->n < 0 ? "$-1 (nil)" : "$%" PRId64 " (a bulk string)", r->n); break;
    default: snprintf(buf, cap, "*%" PRId64 " (an array)", r->n); break;
  }
}

/* Right after connecting: PING, and SELECT when --cache was given. Tells a
 * RESP server from something else early, with words that say so. */
static int link_handshake(resp_link_t *l, const bench_cfg_t *c) {
  static const char ping[] = "PING", select[] = "SELECT";
  const void *ping_argv[1] = {ping};
  size_t ping_lens[1] = {4};
  int rc = link_put_command(l, 1, ping_argv, ping_lens);
  if (rc == 0 && c->cache_set) {
    const void *argv[2] = {select, c->cache};
    size_t lens[2] = {6, strlen(c->cache)};
    rc = link_put_command(l, 2, argv, lens);
  }
  if (rc == 0) rc = link_flush(l);
  resp_reply_t r;
  char shown[64];
  if (rc == 0 && (rc = link_read_reply(l, &r)) == 0 &&
      !(r.type == '+' && strcmp(r.text, "PONG") == 0)) {
    describe_reply(&r, shown, sizeof shown);
    snprintf(l->why, sizeof l->why, "PING answered %s, not +PONG", shown);
    rc = LINK_EREFUSED;
  }
  if (rc == 0 && c->cache_set && (rc = link_read_reply(l, &r)) == 0 &&
      !(r.type == '+' && strcmp(r.text, "OK") == 0)) {
    describe_reply(&r, shown, sizeof shown);
    snprintf(l->why, sizeof l->why, "SELECT %.20s answered %.80s", c->cache,
             r.type == '-' ? r.text : shown);
    rc = LINK_ESELECT;
  }
  if (rc != 0) link_close(l);
  return rc;
}

/* ---- the run ------------------------------------------------------------- */

/* Error counters: slot -code for a GRID_E* code; two of our own. */
#define ERR_SLOTS 64
#define ERR_SLOT_BAD_LEN 0           /* a get returned a value of the wrong size */
#define ERR_SLOT_OTHER (ERR_SLOTS - 1)
#define BENCH_EBADLEN 1000           /* our status for ERR_SLOT_BAD_LEN */

static int err_slot(int rc) {
  if (rc == BENCH_EBADLEN) return ERR_SLOT_BAD_LEN;
  if (rc < 0 && rc > -ERR_SLOT_OTHER) return -rc;
  return ERR_SLOT_OTHER;
}

static const char *err_words(int slot) {
  if (slot == ERR_SLOT_BAD_LEN) return "get returned a value of unexpected length";
  if (slot == ERR_SLOT_OTHER) return "unexpected error code";
  return grid_strerror(-slot);
}

/*
 * RESP mode counts its failures by text: the server's error line ("ERR ...",
 * "OOM ...") or one of ours (a reply of the wrong kind, a timeout). Each
 * thread has its own table (one writer; the controller only sums counts),
 * merged by text at the end. The last entry takes whatever does not fit.
 */
#define ERR_TEXT_OVERFLOW "other failures (too many kinds to list)"

typedef struct err_text {
  char text[RESP_ERR_TEXT_BYTES];
  _Atomic uint64_t count;
} err_text_t;

static void err_text_count(err_text_t *tab, uint32_t *used, const char *text, uint64_t by) {
  for (uint32_t i = 0; i < *used; i++) {
    if (strcmp(tab[i].text, text) == 0) {
      BUMP(tab[i].count, by);
      return;
    }
  }
  uint32_t i = *used;
  if (i >= RESP_ERR_KINDS_MAX - 1) {
    i = RESP_ERR_KINDS_MAX - 1;
    snprintf(tab[i].text, sizeof tab[i].text, "%s", ERR_TEXT_OVERFLOW);
    *used = RESP_ERR_KINDS_MAX;
  } else {
    snprintf(tab[i].text, sizeof tab[i].text, "%s", text);
    *used = i + 1;
  }
  BUMP(tab[i].count, by);
}

typedef struct run {
  const bench_cfg_t *cfg;
  zipf_t zipf;
  unsigned char *value;      /* value_bytes of pattern, read-only */
  uint64_t begin_ns;         /* the open-loop schedule starts here */
  uint64_t measure_start_ns; /* requests starting (or due) from here are recorded */
  uint64_t measure_end_ns;   /* ... until here; UINT64_MAX with --requests */
  uint64_t send_end_ns;      /* open loop: no sending after this */
  struct sockaddr_storage addr; /* resp: the server, as resolved once */
  socklen_t addr_len;
  uint32_t *led;             /* --keys-led: the indexes of those keys */
  _Atomic uint64_t gets;     /* gets called, warm-up included */
  uint32_t nled;
  _Atomic int stop;          /* ^C: workers stop issuing */
  _Atomic uint32_t workers_done;
} run_t;

typedef struct worker worker_t;

/* One pipelined request in flight. */
typedef struct req_ctx {
  worker_t *w;
  struct req_ctx *next_free;
  uint64_t intended_ns; /* scheduled start (== sent_ns in closed loop) */
  uint64_t sent_ns;
  int kind;             /* REQ_GET or REQ_PUT */
  int recorded;         /* started within the measured window */
} req_ctx_t;

struct worker {
  run_t *run;
  uint32_t idx;
  grid_t *g;
  pthread_t tid;
  uint64_t rng;
  uint64_t quota;                 /* --requests: recorded requests to issue */
  hist_t *lat[REQ_KINDS];         /* from the intended start */
  hist_t *svc[REQ_KINDS];         /* open loop: from the actual send */
  _Atomic uint64_t errors[ERR_SLOTS];
  _Atomic uint64_t completed;     /* every completion, warm-up included */
  uint64_t unsent;                /* open loop: due in the window, never sent */
  uint64_t finish_ns;
  uint32_t stuck;                 /* requests never called back */
  /* pipelining: the callbacks run on the handle's I/O thread */
  pthread_mutex_t mu;
  pthread_cond_t cv;              /* a request completed */
  uint32_t inflight;
  req_ctx_t *free_list;
  req_ctx_t *ctxs;
  /* RESP mode: the worker's own connection, and one batch's requests */
  resp_link_t link;
  uint8_t *batch_kinds;           /* pipeline entries: REQ_GET or REQ_PUT */
  uint32_t *batch_keys;           /* pipeline entries: key numbers */
  err_text_t err_texts[RESP_ERR_KINDS_MAX];
  uint32_t err_texts_used;
};

static int op_pick(worker_t *w) {
  const bench_cfg_t *c = w->run->cfg;
  if (c->op == OP_GET) return REQ_GET;
  if (c->op == OP_PUT || c->op == OP_MULTI) return REQ_PUT;
  return rng_unit(&w->rng) < c->get_ratio ? REQ_GET : REQ_PUT;
}

static uint32_t key_pick(worker_t *w) {
  const bench_cfg_t *c = w->run->cfg;
  double u = rng_unit(&w->rng);
  uint32_t k;
  if (c->zipfian) {
    k = (uint32_t)zipf_next(&w->run->zipf, u);
  } else {
    k = (uint32_t)(u * c->keys);
    if (k >= c->keys) k = c->keys - 1;
  }
  return w->run->led ? w->run->led[k % w->run->nled] : k;
}

/* Open loop: when request i of this worker is due. Requests of all workers
 * interleave evenly: together they form one schedule at --rate. */
static uint64_t schedule_ns(const worker_t *w, uint64_t i) {
  const bench_cfg_t *c = w->run->cfg;
  double at = ((double)i * c->threads + w->idx) * (double)NS_PER_S / c->rate;
  return w->run->begin_ns + (uint64_t)at;
}

/* Sleeps until t, waking now and then to see ^C; the last --spin-us are
 * spent spinning, since a sleeper wakes some microseconds late. */
static void sleep_until(run_t *r, uint64_t t) {
  uint64_t spin_ns = (uint64_t)r->cfg->spin_us * 1000;
  for (;;) {
    uint64_t now = now_ns();
    if (now >= t || LOAD(r->stop)) return;
    if (t - now <= spin_ns) continue;
    uint64_t wake = t - spin_ns;
    sleep_abs_ns(wake - now > SLEEP_CHUNK_NS ? now + SLEEP_CHUNK_NS : wake);
  }
}

/* Counts the requests due in the measured window, from request i on, that
 * the worker will not send: it is still behind CATCH_UP_NS after the window
 * closed. */
static void count_unsent(worker_t *w, uint64_t i) {
  run_t *r = w->run;
  for (uint64_t t; (t = schedule_ns(w, i)) < r->measure_end_ns; i++)
    if (t >= r->measure_start_ns) w->unsent++;
}

/* Books one completed request. Called by the worker (synchronous calls) or
 * with w->mu held (pipelined). */
static void worker_complete(worker_t *w, int kind, int rc, uint64_t intended_ns,
                            uint64_t sent_ns, uint64_t end_ns, int recorded) {
  BUMP(w->completed, 1);
  if (!recorded) return;
  if (rc != 0) {
    BUMP(w->errors[err_slot(rc)], 1);
    return;
  }
  hist_record(w->lat[kind], end_ns - intended_ns);
  if (w->svc[kind]) hist_record(w->svc[kind], end_ns - sent_ns);
}

/* One synchronous request; the timed part is the call and, for a get, the
 * grid_value_free() every caller must do. */
static int worker_call_sync(worker_t *w, int kind, const char *key, size_t key_len) {
  const bench_cfg_t *c = w->run->cfg;
  if (kind == REQ_PUT)
    return grid_put(w->g, c->cache, key, key_len, w->run->value, c->value_bytes, 0, NULL);
  grid_value_t v;
  atomic_fetch_add_explicit(&w->run->gets, 1, memory_order_relaxed);
  int rc = grid_get(w->g, c->cache, key, key_len, &v);
  if (rc == 0 && v.len != c->value_bytes) rc = BENCH_EBADLEN;
  grid_value_free(&v);
  return rc;
}

static void worker_run_sync(worker_t *w) {
  run_t *r = w->run;
  const bench_cfg_t *c = r->cfg;
  int open = c->rate > 0;
  uint64_t issued_recorded = 0;
  char key[KEY_BYTES_MAX];
  for (uint64_t i = 0;; i++) {
    int kind = op_pick(w);
    size_t key_len = key_format(key, key_pick(w));
    uint64_t intended = 0;
    if (open) {
      intended = schedule_ns(w, i);
      if (intended >= r->measure_end_ns) break;
      sleep_until(r, intended);
    }
    if (LOAD(r->stop)) break;
    uint64_t t0 = now_ns();
    if (!open) {
      intended = t0;
      if (t0 >= r->measure_end_ns) break;
    } else if (t0 >= r->send_end_ns) {
      count_unsent(w, i);
      break;
    }
    int recorded = intended >= r->measure_start_ns;
    if (recorded && issued_recorded++ == w->quota) break;
    int rc = worker_call_sync(w, kind, key, key_len);
    uint64_t t1 = now_ns();
    worker_complete(w, kind, rc, intended, t0, t1, recorded);
  }
}

static void worker_async_done(req_ctx_t *q, int rc, uint64_t end_ns) {
  worker_t *w = q->w;
  pthread_mutex_lock(&w->mu);
  worker_complete(w, q->kind, rc, q->intended_ns, q->sent_ns, end_ns, q->recorded);
  q->next_free = w->free_list;
  w->free_list = q;
  w->inflight--;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void worker_on_get_cb(int status, const grid_value_t *value, void *arg) {
  uint64_t end = now_ns();
  req_ctx_t *q = arg;
  if (status == 0 && value->len != q->w->run->cfg->value_bytes) status = BENCH_EBADLEN;
  worker_async_done(q, status, end);
}

static void worker_on_put_cb(int status, uint64_t version, void *arg) {
  (void)version;
  worker_async_done(arg, status, now_ns());
}

/* Waits until every request in flight has called back, within the calls'
 * deadline and a grace period; what is still out then is reported. */
static void worker_drain(worker_t *w) {
  const bench_cfg_t *c = w->run->cfg;
  uint64_t deadline = now_ns() + ((uint64_t)c->timeout_ms + DRAIN_GRACE_MS) * 1000000ull;
  struct timespec ts = {.tv_sec = (time_t)(deadline / NS_PER_S),
                        .tv_nsec = (long)(deadline % NS_PER_S)};
  pthread_mutex_lock(&w->mu);
  while (w->inflight > 0)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) break;
  w->stuck = w->inflight;
  pthread_mutex_unlock(&w->mu);
}

static void worker_run_pipelined(worker_t *w) {
  run_t *r = w->run;
  const bench_cfg_t *c = r->cfg;
  int open = c->rate > 0;
  uint64_t issued_recorded = 0;
  char key[KEY_BYTES_MAX];
  for (uint64_t i = 0;; i++) {
    int kind = op_pick(w);
    size_t key_len = key_format(key, key_pick(w));
    uint64_t intended = 0;
    if (open) {
      intended = schedule_ns(w, i);
      if (intended >= r->measure_end_ns) break;
      sleep_until(r, intended);
    }
    /* A free place in the pipeline; completions come within the timeout. */
    pthread_mutex_lock(&w->mu);
    while (w->inflight >= c->pipeline) pthread_cond_wait(&w->cv, &w->mu);
    req_ctx_t *q = w->free_list;
    w->free_list = q->next_free;
    w->inflight++;
    pthread_mutex_unlock(&w->mu);
    uint64_t t0 = now_ns();
    int last = LOAD(r->stop) != 0;
    if (!open) {
      intended = t0;
      last = last || t0 >= r->measure_end_ns;
    } else if (!last && t0 >= r->send_end_ns) {
      count_unsent(w, i);
      last = 1;
    }
    int recorded = intended >= r->measure_start_ns;
    if (!last && recorded && issued_recorded++ == w->quota) last = 1;
    if (last) { /* give the place back unused */
      pthread_mutex_lock(&w->mu);
      q->next_free = w->free_list;
      w->free_list = q;
      w->inflight--;
      pthread_mutex_unlock(&w->mu);
      break;
    }
    *q = (req_ctx_t){.w = w, .intended_ns = intended, .sent_ns = t0, .kind = kind,
                     .recorded = recorded};
    /* Embedded: the callback runs inside the call, so no lock is held here. */
    if (kind == REQ_GET) atomic_fetch_add_explicit(&r->gets, 1, memory_order_relaxed);
    int rc = kind == REQ_GET
                 ? grid_get_async(w->g, c->cache, key, key_len, worker_on_get_cb, q)
                 : grid_put_async(w->g, c->cache, key, key_len, r->value, c->value_bytes, 0,
                                  worker_on_put_cb, q);
    if (rc != 0) worker_async_done(q, rc, now_ns()); /* no callback will come */
  }
  worker_drain(w);
}

/* ---- the run in RESP mode --------------------------------------------------- */

/* Books a failed request of a RESP worker under text. */
static void worker_fail_text(worker_t *w, const char *text, int recorded) {
  BUMP(w->completed, 1);
  if (recorded) err_text_count(w->err_texts, &w->err_texts_used, text, 1);
}

/* Opens the worker's connection again (after a timeout or a lost one). On
 * failure it counts one error, waits RECONNECT_DELAY_NS, and returns -1. */
static int worker_reconnect(worker_t *w) {
  run_t *r = w->run;
  const bench_cfg_t *c = r->cfg;
  int rc = link_open(&w->link, (const struct sockaddr *)&r->addr, r->addr_len, c->timeout_ms);
  if (rc == 0) rc = link_handshake(&w->link, c);
  if (rc == 0) return 0;
  char why[RESP_ERR_TEXT_BYTES], text[RESP_ERR_TEXT_BYTES];
  link_error_text(&w->link, rc, why, sizeof why);
  link_close(&w->link);
  snprintf(text, sizeof text, "reconnect failed (retried every %llu ms): %.70s",
           RECONNECT_DELAY_NS / 1000000ull, why);
  uint64_t now = now_ns();
  if (now >= r->measure_start_ns && now < r->measure_end_ns)
    err_text_count(w->err_texts, &w->err_texts_used, text, 1);
  sleep_until(r, now + RECONNECT_DELAY_NS);
  return -1;
}

/* 0 when the reply is what kind expects; BENCH_EBADLEN for a value of the
 * wrong size; -1 with the failure's words in text otherwise. A GET of a
 * missing key ($-1) fails, as grid_get's GRID_ENOTFOUND does. */
static int resp_check_reply(const bench_cfg_t *c, int kind, const resp_reply_t *r, char *text,
                            size_t cap) {
  if (r->type == '-') {
    snprintf(text, cap, "%s", r->text);
    return -1;
  }
  if (kind == REQ_GET && r->type == '$') {
    if (r->n < 0) {
      snprintf(text, cap, "GET: nil reply (key not found)");
      return -1;
    }
    return r->n == c->value_bytes ? 0 : BENCH_EBADLEN;
  }
  if (kind == REQ_PUT && r->type == '+' && strcmp(r->text, "OK") == 0) return 0;
  char shown[64];
  describe_reply(r, shown, sizeof shown);
  snprintf(text, cap, "unexpected reply to %s: %s", kind == REQ_GET ? "GET" : "SET", shown);
  return -1;
}

/* Queues request kind on key k. */
static int resp_put_request(worker_t *w, int kind, uint32_t k) {
  const bench_cfg_t *c = w->run->cfg;
  char key[KEY_BYTES_MAX];
  size_t key_len = key_format(key, k);
  static const char get[] = "GET", set[] = "SET";
  if (c->op == OP_MULTI) {
    /* One key's {tag}, so a cluster runs it on one partition. */
    char tk[KEY_BYTES_MAX + 8], nk[KEY_BYTES_MAX + 8];
    int tl = snprintf(tk, sizeof tk, "{%.*s}", (int)key_len, key);
    int nl = snprintf(nk, sizeof nk, "{%.*s}:n", (int)key_len, key);
    const void *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const void *sv[3] = {set, tk, w->run->value}, *iv[2] = {"INCR", nk}, *gv[2] = {get, tk};
    size_t ml[1] = {5}, el[1] = {4}, sl[3] = {3, (size_t)tl, c->value_bytes},
           il[2] = {4, (size_t)nl}, gl[2] = {3, (size_t)tl};
    int rc = link_put_command(&w->link, 1, multi, ml);
    if (rc == 0) rc = link_put_command(&w->link, 3, sv, sl);
    if (rc == 0) rc = link_put_command(&w->link, 2, iv, il);
    if (rc == 0) rc = link_put_command(&w->link, 2, gv, gl);
    if (rc == 0) rc = link_put_command(&w->link, 1, exec, el);
    return rc;
  }
  const void *argv[3] = {kind == REQ_GET ? get : set, key, w->run->value};
  size_t lens[3] = {3, key_len, c->value_bytes};
  return link_put_command(&w->link, kind == REQ_GET ? 2 : 3, argv, lens);
}

/*
 * Batches of D requests (D = --pipeline; 1 in the open loop): keys drawn,
 * then the clock read (the batch's start), the D commands written, and the
 * D replies read in order. Each request is timed from its batch's start (or,
 * open loop, its scheduled start) to the recv() that completed its reply.
 * A timeout or a broken connection fails every request of the batch still
 * unanswered; the connection is reopened before the next batch.
 */
static void worker_run_resp(worker_t *w) {
  run_t *r = w->run;
  const bench_cfg_t *c = r->cfg;
  resp_link_t *l = &w->link;
  int open = c->rate > 0;
  uint32_t depth = open ? 1 : c->pipeline;
  uint64_t issued_recorded = 0;
  char text[RESP_ERR_TEXT_BYTES];
  for (uint64_t i = 0;;) {
    for (uint32_t j = 0; j < depth; j++) {
      w->batch_kinds[j] = (uint8_t)op_pick(w);
      w->batch_keys[j] = key_pick(w);
    }
    uint64_t intended = 0;
    if (open) {
      intended = schedule_ns(w, i);
      if (intended >= r->measure_end_ns) break;
      sleep_until(r, intended);
    }
    if (LOAD(r->stop)) break;
    /* The last batch lost the connection. Open loop: the time to reopen it
     * is charged to this request, which counts from its schedule. */
    if (l->fd < 0) {
      uint64_t now = now_ns();
      if (open ? now >= r->send_end_ns : now >= r->measure_end_ns) {
        if (open) count_unsent(w, i);
        break;
      }
      if (worker_reconnect(w) != 0) continue;
    }
    uint64_t t0 = now_ns();
    if (!open) {
      intended = t0;
      if (t0 >= r->measure_end_ns) break;
    } else if (t0 >= r->send_end_ns) {
      count_unsent(w, i);
      break;
    }
    int recorded = intended >= r->measure_start_ns;
    uint32_t n = depth;
    if (recorded) {
      if (issued_recorded == w->quota) break;
      if (w->quota - issued_recorded < n) n = (uint32_t)(w->quota - issued_recorded);
      issued_recorded += n;
    }
    int rc = 0;
    for (uint32_t j = 0; rc == 0 && j < n; j++)
      rc = resp_put_request(w, w->batch_kinds[j], w->batch_keys[j]);
    if (rc == 0) rc = link_flush(l);
    uint32_t answered = 0;
    for (; rc == 0 && answered < n; answered++) {
      resp_reply_t reply;
      /* A transaction: +OK and three +QUEUED before EXEC's array. */
      int st = 0;
      for (int q = 0; c->op == OP_MULTI && q < 4 && rc == 0; q++) {
        if ((rc = link_read_reply(l, &reply)) == 0 && reply.type != '+' && st == 0) {
          describe_reply(&reply, text, sizeof text);
          st = -1;
        }
      }
      if (rc != 0 || (rc = link_read_reply(l, &reply)) != 0) break;
      int kind = w->batch_kinds[answered];
      if (st == 0 && c->op == OP_MULTI) {
        st = reply.type == '*' && reply.n == 3 ? 0 : -1;
        if (st) describe_reply(&reply, text, sizeof text);
      } else if (st == 0) {
        st = resp_check_reply(c, kind, &reply, text, sizeof text);
      }
      if (st < 0) worker_fail_text(w, text, recorded);
      else worker_complete(w, kind, st, intended, t0, l->recv_ns, recorded);
    }
    if (rc != 0) {
      char why[RESP_ERR_TEXT_BYTES];
      link_error_text(l, rc, why, sizeof why);
      snprintf(text, sizeof text, "%.96s (connection reopened)", why);
      for (; answered < n; answered++) worker_fail_text(w, text, recorded);
      link_close(l);
    }
    i += n;
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  const bench_cfg_t *c = w->run->cfg;
  /* Open loop: wake up on schedule, not up to 50 us late (the default slack). */
  if (c->rate > 0) prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  if (c->resp) worker_run_resp(w);
  else if (c->pipeline > 1) worker_run_pipelined(w);
  else worker_run_sync(w);
  w->finish_ns = now_ns();
  atomic_fetch_add(&w->run->workers_done, 1);
  return NULL;
}

static int worker_init(worker_t *w, run_t *r, uint32_t idx) {
  const bench_cfg_t *c = r->cfg;
  memset(w, 0, sizeof *w);
  w->run = r;
  w->idx = idx;
  w->rng = 0x6772696462656E63ull ^ ((uint64_t)(idx + 1) * 0x9E3779B97F4A7C15ull);
  w->quota = UINT64_MAX;
  if (c->requests)
    w->quota = c->requests / c->threads + (idx < c->requests % c->threads ? 1 : 0);
  for (int k = 0; k < REQ_KINDS; k++) {
    if (!(w->lat[k] = hist_new())) return -1;
    if (c->rate > 0 && !(w->svc[k] = hist_new())) return -1;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (c->resp) {
    if (link_init(&w->link) != 0) return -1;
    w->batch_kinds = calloc(c->pipeline, sizeof *w->batch_kinds);
    w->batch_keys = calloc(c->pipeline, sizeof *w->batch_keys);
    if (!w->batch_kinds || !w->batch_keys) return -1;
  } else if (c->pipeline > 1) {
    if (!(w->ctxs = calloc(c->pipeline, sizeof *w->ctxs))) return -1;
    for (uint32_t i = 0; i < c->pipeline; i++) {
      w->ctxs[i].next_free = w->free_list;
      w->free_list = &w->ctxs[i];
    }
  }
  return 0;
}

/* ---- preload -------------------------------------------------------------- */

/* Writes every key with put_all batches, halving a batch the node refuses as
 * too big. */
static int preload(grid_t *g, const bench_cfg_t *c, const unsigned char *value, int progress) {
  size_t batch = PRELOAD_BATCH_KEYS;
  size_t by_bytes = PRELOAD_BATCH_BYTES_MAX / ((size_t)c->value_bytes + KEY_BYTES_MAX);
  if (by_bytes < 1) by_bytes = 1;
  if (batch > by_bytes) batch = by_bytes;
  char(*kbuf)[KEY_BYTES_MAX] = malloc(PRELOAD_BATCH_KEYS * sizeof *kbuf);
  const void **kp = malloc(PRELOAD_BATCH_KEYS * sizeof *kp);
  const void **vp = malloc(PRELOAD_BATCH_KEYS * sizeof *vp);
  size_t *kl = malloc(PRELOAD_BATCH_KEYS * sizeof *kl);
  size_t *vl = malloc(PRELOAD_BATCH_KEYS * sizeof *vl);
  int rc = kbuf && kp && vp && kl && vl ? 0 : GRID_ENOMEM;
  uint64_t t0 = now_ns(), shown = t0;
  int tty = isatty(STDERR_FILENO);
  for (uint32_t i = 0; rc == 0 && i < c->keys;) {
    size_t n = c->keys - i < batch ? c->keys - i : batch;
    for (size_t j = 0; j < n; j++) {
      kl[j] = key_format(kbuf[j], i + (uint32_t)j);
      kp[j] = kbuf[j];
      vp[j] = value;
      vl[j] = c->value_bytes;
    }
    rc = grid_put_all(g, c->cache, n, kp, kl, vp, vl, 0);
    if ((rc == GRID_EBATCHTOOBIG || rc == GRID_EFRAMETOOBIG) && batch > 1) {
      batch /= 2;
      rc = 0;
      continue;
    }
    i += (uint32_t)n;
    uint64_t now = now_ns();
    if (progress && rc == 0 && (now - shown >= NS_PER_S / 2 || i == c->keys)) {
      fprintf(stderr, "%spreload: %u/%u keys (%.0f%%)%s", tty ? "\r" : "", i, c->keys,
              100.0 * i / c->keys, tty ? "" : "\n");
      shown = now;
    }
  }
  if (progress && rc == 0)
    fprintf(stderr, "%spreload: %u keys of %u bytes in %.2f s (put_all, batches of %zu)\n",
            tty ? "\r\033[K" : "", c->keys, c->value_bytes, (now_ns() - t0) / 1e9, batch);
  free(kbuf);
  free(kp);
  free(vp);
  free(kl);
  free(vl);
  return rc;
}

/* Writes every key with MSET batches (as preload(): at most
 * PRELOAD_BATCH_KEYS keys and about PRELOAD_BATCH_BYTES_MAX of values each),
 * one round trip per batch. 0, or an exit status with the reason on stderr. */
static int resp_preload(resp_link_t *l, const bench_cfg_t *c, const unsigned char *value,
                        int progress) {
  static const char mset[] = "MSET";
  size_t batch = PRELOAD_BATCH_KEYS;
  size_t by_bytes = PRELOAD_BATCH_BYTES_MAX / ((size_t)c->value_bytes + KEY_BYTES_MAX);
  if (by_bytes < 1) by_bytes = 1;
  if (batch > by_bytes) batch = by_bytes;
  uint64_t t0 = now_ns(), shown = t0;
  int tty = isatty(STDERR_FILENO);
  char head[24], key[KEY_BYTES_MAX], why[RESP_ERR_TEXT_BYTES];
  for (uint32_t i = 0; i < c->keys;) {
    size_t n = c->keys - i < batch ? c->keys - i : batch;
    int rc = link_put(l, head, format_count_line(head, '*', 1 + 2 * (uint64_t)n));
    if (rc == 0) rc = link_put_bulk(l, mset, 4);
    for (size_t j = 0; rc == 0 && j < n; j++) {
      size_t key_len = key_format(key, i + (uint32_t)j);
      rc = link_put_bulk(l, key, key_len);
      if (rc == 0) rc = link_put_bulk(l, value, c->value_bytes);
    }
    if (rc == 0) rc = link_flush(l);
    resp_reply_t reply;
    if (rc == 0) rc = link_read_reply(l, &reply);
    if (rc != 0) {
      link_error_text(l, rc, why, sizeof why);
      fprintf(stderr, "%sgridbench: preload failed: %s\n", tty && progress ? "\n" : "", why);
      return EXIT_CONNECT;
    }
    if (!(reply.type == '+' && strcmp(reply.text, "OK") == 0)) {
      describe_reply(&reply, why, sizeof why);
      fprintf(stderr, "%sgridbench: preload failed: MSET of %zu keys answered %s\n",
              tty && progress ? "\n" : "", n, reply.type == '-' ? reply.text : why);
      return EXIT_RUN_FAILED;
    }
    i += (uint32_t)n;
    uint64_t now = now_ns();
    if (progress && (now - shown >= NS_PER_S / 2 || i == c->keys)) {
      fprintf(stderr, "%spreload: %u/%u keys (%.0f%%)%s", tty ? "\r" : "", i, c->keys,
              100.0 * i / c->keys, tty ? "" : "\n");
      shown = now;
    }
  }
  if (progress)
    fprintf(stderr, "%spreload: %u keys of %u bytes in %.2f s (MSET, batches of %zu)\n",
            tty ? "\r\033[K" : "", c->keys, c->value_bytes, (now_ns() - t0) / 1e9, batch);
  return 0;
}

/* Resolves HOST:PORT and connects the first worker's link to the first
 * address that takes it, which the other links then use too. 0, or
 * EXIT_CONNECT with the reason on stderr. */
static int resp_connect_first(run_t *r, resp_link_t *l) {
  const bench_cfg_t *c = r->cfg;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(c->host, c->port, &hints, &res);
  if (gai != 0) {
    fprintf(stderr, "gridbench: cannot resolve %s: %s\n", c->host, gai_strerror(gai));
    return EXIT_CONNECT;
  }
  int rc = LINK_EIO;
  l->sys_errno = EADDRNOTAVAIL;
  for (struct addrinfo *a = res; a && rc != 0; a = a->ai_next) {
    if (a->ai_addrlen > sizeof r->addr) continue;
    rc = link_open(l, a->ai_addr, (socklen_t)a->ai_addrlen, c->timeout_ms);
    if (rc == 0) {
      memcpy(&r->addr, a->ai_addr, a->ai_addrlen);
      r->addr_len = (socklen_t)a->ai_addrlen;
    }
  }
  freeaddrinfo(res);
  if (rc != 0) {
    fprintf(stderr, "gridbench: cannot connect to %s: %s\n", c->uri,
            rc == LINK_ETIMEDOUT ? "timed out" : strerror(l->sys_errno));
    return EXIT_CONNECT;
  }
  return 0;
}

/* Connects every worker and checks each connection with link_handshake(). */
static int resp_connect_all(run_t *r, worker_t *ws) {
  const bench_cfg_t *c = r->cfg;
  int rc = resp_connect_first(r, &ws[0].link);
  if (rc != 0) return rc;
  for (uint32_t i = 0; i < c->threads; i++) {
    resp_link_t *l = &ws[i].link;
    if (i > 0) rc = link_open(l, (const struct sockaddr *)&r->addr, r->addr_len, c->timeout_ms);
    if (rc == 0) rc = link_handshake(l, c);
    if (rc == 0) continue;
    char why[RESP_ERR_TEXT_BYTES];
    link_error_text(l, rc, why, sizeof why);
    if (rc == LINK_ETIMEDOUT) snprintf(why, sizeof why, "no reply to PING within %u ms", c->timeout_ms);
    fprintf(stderr, "gridbench: %s, connection %u: %s\n", c->uri, i, why);
    if (rc == LINK_ESELECT) return EXIT_RUN_FAILED; /* as a missing cache in grid:// mode */
    fprintf(stderr, "gridbench: is %s:%s a RESP server? gridd speaks RESP only on its\n"
                    "           --resp-port (resp_port), not on its native --port\n",
            c->host, c->port);
    return EXIT_CONNECT;
  }
  return 0;
}

/* ---- embedded extras: the clock's price and the batch mean --------------- */

/* Mean cost of one CLOCK_MONOTONIC read. */
static double timer_cost_ns(void) {
  uint64_t sink = 0, t0 = now_ns();
  for (int i = 0; i < TIMER_COST_READS; i++) sink += now_ns();
  uint64_t t1 = now_ns();
  __asm__ volatile("" : : "r"(sink));
  return (double)(t1 - t0) / TIMER_COST_READS;
}

/* Mean time of a get (call + grid_value_free) over one timed loop of
 * BATCH_MEAN_GETS gets: no clock read per call. Keys are drawn up front. */
static int batch_mean_ns(grid_t *g, run_t *r, double *mean_ns, uint64_t *errors) {
  const bench_cfg_t *c = r->cfg;
  char(*keys)[KEY_BYTES_MAX] = malloc(BATCH_MEAN_KEYS * sizeof *keys);
  size_t *lens = malloc(BATCH_MEAN_KEYS * sizeof *lens);
  if (!keys || !lens) {
    free(keys);
    free(lens);
    return GRID_ENOMEM;
  }
  worker_t picker = {.run = r, .rng = 0x62617463686D65ull};
  for (uint32_t i = 0; i < BATCH_MEAN_KEYS; i++) lens[i] = key_format(keys[i], key_pick(&picker));
  uint64_t errs = 0;
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < BATCH_MEAN_GETS; i++) {
    uint32_t k = i & (BATCH_MEAN_KEYS - 1);
    grid_value_t v;
    if (grid_get(g, c->cache, keys[k], lens[k], &v) != 0) errs++;
    grid_value_free(&v);
  }
  uint64_t t1 = now_ns();
  free(keys);
  free(lens);
  *mean_ns = (double)(t1 - t0) / BATCH_MEAN_GETS;
  *errors = errs;
  return 0;
}

/* ---- results -------------------------------------------------------------- */

typedef struct results {
  hist_t *lat[REQ_KINDS + 1];  /* per kind, then all */
  hist_t *svc[REQ_KINDS + 1];  /* open loop only */
  uint64_t errors[ERR_SLOTS];
  uint64_t errors_total;
  err_text_t err_texts[RESP_ERR_KINDS_MAX]; /* RESP mode: failures by text */
  uint32_t err_texts_used;
  uint64_t unsent;
  uint32_t stuck;
  double elapsed_s;            /* the measured window */
  int batch_measured;
  double batch_mean_ns;
  uint64_t batch_errors;
  double timer_ns;
  int interrupted;             /* ^C ended the run early */
  int local_measured;          /* embedded: the node's counters were read */
  uint64_t local_reads;        /* ... reads served in the calling thread */
  uint64_t gets;               /* ... of the gets called (warm-up included) */
} results_t;

/* Merges the workers' histograms into h[kind] and h[REQ_KINDS] (all). */
static void merge_hists(worker_t *ws, uint32_t n, int service, hist_t **h) {
  for (int k = 0; k <= REQ_KINDS; k++) hist_clear(h[k]);
  for (uint32_t i = 0; i < n; i++)
    for (int k = 0; k < REQ_KINDS; k++) {
      hist_t *src = service ? ws[i].svc[k] : ws[i].lat[k];
      if (!src) continue;
      hist_merge(h[k], src);
      hist_merge(h[REQ_KINDS], src);
    }
}

static double us(uint64_t ns) { return (double)ns / 1000.0; }

static void print_row(const char *label, hist_t *h, double elapsed_s) {
  uint64_t n = LOAD(h->n);
  printf("%-14s %10" PRIu64 " %11.1f %9.3f %9.3f %9.3f %9.3f %10.3f %9.3f\n", label, n,
         elapsed_s > 0 ? n / elapsed_s : 0.0, us(hist_percentile(h, 50)),
         us(hist_percentile(h, 90)), us(hist_percentile(h, 99)), us(hist_percentile(h, 99.9)),
         us(LOAD(h->max_ns)), hist_mean(h) / 1000.0);
}

static void print_table(const bench_cfg_t *c, results_t *res) {
  printf("gridbench %s  uri=%s  cache=%s\n", GRID_VERSION_STRING, c->uri, c->cache);
  printf("workload: op=%s", op_names[c->op]);
  if (c->op == OP_MIX) printf(" (get ratio %.3g)", c->get_ratio);
  printf("  keys=%u %s%s  value=%u bytes\n", c->keys, c->zipfian ? "zipfian" : "uniform",
         c->zipfian ? " (theta 0.99)" : "", c->value_bytes);
  const char *how = c->pipeline == 1 ? " (synchronous calls)" : " (async calls)";
  if (c->resp)
    how = c->pipeline == 1 ? " (RESP, one round trip per request)"
                           : " (RESP, batches: write D commands, read D replies)";
  printf("load: %s loop, %u thread%s x pipeline %u%s", c->rate > 0 ? "open" : "closed",
         c->threads, c->threads == 1 ? "" : "s", c->pipeline, how);
  if (c->rate > 0) printf(", target %.0f ops/s", c->rate);
  if (c->spin_us) printf(", spin %u us", c->spin_us);
  printf("\n        measured %.2f s after %.2f s of warm-up", res->elapsed_s, c->warmup_s);
  if (c->requests) printf(" (--requests %" PRIu64 ")", c->requests);
  if (res->interrupted) printf(" (interrupted)");
  printf("\n\n");
  printf("%-14s %10s %11s %9s %9s %9s %9s %10s %9s\n", "latency (us)", "ops", "ops/s", "p50",
         "p90", "p99", "p99.9", "max", "mean");
  int mix = c->op == OP_MIX;
  for (int k = 0; k <= REQ_KINDS; k++) {
    if (mix ? 0 : k != REQ_KINDS) continue;
    print_row(k == REQ_KINDS ? (mix ? "all" : op_names[c->op]) : req_names[k], res->lat[k],
              res->elapsed_s);
  }
  if (c->rate > 0) {
    for (int k = 0; k <= REQ_KINDS; k++) {
      if (mix ? 0 : k != REQ_KINDS) continue;
      char label[32];
      snprintf(label, sizeof label, "%s service", k == REQ_KINDS ? (mix ? "all" : op_names[c->op]) : req_names[k]);
      print_row(label, res->svc[k], res->elapsed_s);
    }
  }
  printf("\nerrors: ");
  if (res->errors_total == 0) printf("none\n");
  else {
    printf("%" PRIu64 " (not in the latencies)\n", res->errors_total);
    for (int s = 0; s < ERR_SLOTS; s++)
      if (res->errors[s]) printf("  %10" PRIu64 "  %s\n", res->errors[s], err_words(s));
    for (uint32_t t = 0; t < res->err_texts_used; t++)
      printf("  %10" PRIu64 "  %s\n", LOAD(res->err_texts[t].count), res->err_texts[t].text);
  }
  if (c->rate > 0)
    printf("note: open loop: latency counts from each request's scheduled start (corrected\n"
           "      for coordinated omission); \"service\" rows count from the actual send.\n");
  if (c->pipeline > 1 && c->resp)
    printf("note: a pipelined request is timed from the start of its batch's send to the\n"
           "      arrival of its reply.\n");
  else if (c->pipeline > 1)
    printf("note: a pipelined request is timed from its send to its callback.\n");
  if (c->embedded) {
    printf("note: embedded: each call timed on its own with CLOCK_MONOTONIC; the clock read\n"
           "      (%.0f ns here) is included in every latency above.\n", res->timer_ns);
    if (res->batch_measured)
      printf("      batch mean: %.1f ns per get (%d gets in one timed loop, one thread,\n"
             "      no per-call clock read)%s\n", res->batch_mean_ns, BATCH_MEAN_GETS,
             res->batch_errors ? " -- with errors!" : "");
    if (res->local_measured && res->gets)
      printf("      served in the calling thread (no socket, no loop): %" PRIu64 " of the %"
             PRIu64 " gets (warm-up included, %.1f%%)\n", res->local_reads, res->gets,
             100.0 * (double)res->local_reads / (double)res->gets);
  }
  if (res->unsent)
    printf("warning: %" PRIu64 " requests due in the window were never sent: the node (or\n"
           "         this client) did not keep up with --rate, and the figures above cover\n"
           "         only the requests sent; lower the rate.\n", res->unsent);
  if (res->stuck)
    printf("warning: %u requests never called back (client library bug?)\n", res->stuck);
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}

static void json_lat(const char *prefix, hist_t *h) {
  printf(",\"%sp50_us\":%.3f,\"%sp90_us\":%.3f,\"%sp99_us\":%.3f,\"%sp999_us\":%.3f,"
         "\"%smax_us\":%.3f,\"%smean_us\":%.3f",
         prefix, us(hist_percentile(h, 50)), prefix, us(hist_percentile(h, 90)), prefix,
         us(hist_percentile(h, 99)), prefix, us(hist_percentile(h, 99.9)), prefix,
         us(LOAD(h->max_ns)), prefix, hist_mean(h) / 1000.0);
}

static void print_json(const bench_cfg_t *c, results_t *res) {
  hist_t *all = res->lat[REQ_KINDS];
  uint64_t ops = LOAD(all->n);
  printf("{\"uri\":");
  json_string(c->uri);
  printf(",\"op\":\"%s\",\"threads\":%u,\"pipeline\":%u,\"rate\":%.3f,\"loop\":\"%s\","
         "\"value_bytes\":%u,\"keys\":%u,\"keyspace\":\"%s\",\"cache\":",
         op_names[c->op], c->threads, c->pipeline, c->rate, c->rate > 0 ? "open" : "closed",
         c->value_bytes, c->keys, c->zipfian ? "zipfian" : "uniform");
  json_string(c->cache);
  printf(",\"duration_s\":%.3f,\"warmup_s\":%.3f,\"ops\":%" PRIu64 ",\"ops_per_s\":%.1f,"
         "\"errors\":%" PRIu64,
         res->elapsed_s, c->warmup_s, ops, res->elapsed_s > 0 ? ops / res->elapsed_s : 0.0,
         res->errors_total);
  json_lat("", all);
  if (res->batch_measured) printf(",\"batch_mean_ns\":%.1f", res->batch_mean_ns);
  if (c->embedded) printf(",\"timer_overhead_ns\":%.1f", res->timer_ns);
  if (res->local_measured)
    printf(",\"local_reads\":%" PRIu64 ",\"gets_called\":%" PRIu64, res->local_reads, res->gets);
  if (c->rate > 0) {
    json_lat("service_", res->svc[REQ_KINDS]);
    printf(",\"unsent\":%" PRIu64, res->unsent);
  }
  if (c->op == OP_MIX) printf(",\"get_ratio\":%.3f", c->get_ratio);
  printf(",\"error_counts\":{");
  int first = 1;
  for (int s = 0; s < ERR_SLOTS; s++) {
    if (!res->errors[s]) continue;
    if (!first) putchar(',');
    first = 0;
    json_string(err_words(s));
    printf(":%" PRIu64, res->errors[s]);
  }
  for (uint32_t t = 0; t < res->err_texts_used; t++) {
    if (!first) putchar(',');
    first = 0;
    json_string(res->err_texts[t].text);
    printf(":%" PRIu64, LOAD(res->err_texts[t].count));
  }
  putchar('}');
  if (res->stuck) printf(",\"stuck\":%u", res->stuck);
  if (res->interrupted) printf(",\"interrupted\":true");
  /* Last, so that a reader taking the first "p50_us" gets the overall one. */
  if (c->op == OP_MIX) {
    printf(",\"by_op\":{");
    for (int k = 0; k < REQ_KINDS; k++) {
      uint64_t n = LOAD(res->lat[k]->n);
      printf("%s\"%s\":{\"ops\":%" PRIu64 ",\"ops_per_s\":%.1f", k ? "," : "", req_names[k], n,
             res->elapsed_s > 0 ? n / res->elapsed_s : 0.0);
      json_lat("", res->lat[k]);
      putchar('}');
    }
    putchar('}');
  }
  printf("}\n");
}

/* ---- controller ---------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* One line on stderr: how the measured part goes so far. */
static void print_progress(run_t *r, worker_t *ws, hist_t **scratch, uint64_t now,
                           uint64_t *last_completed, uint64_t *last_ns) {
  const bench_cfg_t *c = r->cfg;
  uint64_t completed = 0, errors = 0;
  for (uint32_t i = 0; i < c->threads; i++) {
    completed += LOAD(ws[i].completed);
    for (int s = 0; s < ERR_SLOTS; s++) errors += LOAD(ws[i].errors[s]);
    for (int t = 0; t < RESP_ERR_KINDS_MAX; t++) errors += LOAD(ws[i].err_texts[t].count);
  }
  double rate_now = now > *last_ns ? (completed - *last_completed) * 1e9 / (now - *last_ns) : 0;
  *last_completed = completed;
  *last_ns = now;
  if (now < r->measure_start_ns + NS_PER_S / 5) { /* too soon for a measured rate */
    fprintf(stderr, "[%6.1fs] warm-up   ops/s now=%.0f\n", (now - r->begin_ns) / 1e9, rate_now);
    return;
  }
  merge_hists(ws, c->threads, 0, scratch);
  hist_t *all = scratch[REQ_KINDS];
  double t = (now - r->measure_start_ns) / 1e9;
  fprintf(stderr,
          "[%6.1fs] measuring ops=%" PRIu64 " ops/s=%.0f (now %.0f) p99=%.1fus errors=%" PRIu64
          "\n",
          (now - r->begin_ns) / 1e9, LOAD(all->n), t > 0 ? LOAD(all->n) / t : 0.0, rate_now,
          us(hist_percentile(all, 99)), errors);
}

static int open_handle(const bench_cfg_t *c, uint32_t idx, grid_t **out) {
  char name[64];
  snprintf(name, sizeof name, "gridbench-%u", idx);
  grid_options_t o = {.timeout_ms = c->timeout_ms, .client_name = name,
                      .config_path = c->embedded ? c->config : NULL,
                      .near_cache_bytes = c->near_bytes, .tls_ca_file = c->cacert,
                      .tls_cert_file = c->cert, .tls_key_file = c->key, .user = c->user,
                      .password = c->password};
  int rc = grid_open(c->uri, &o, out);
  if (rc != 0)
    fprintf(stderr, "gridbench: cannot open %s: %s (%s)\n", c->uri, grid_strerror(rc),
            grid_last_error());
  return rc;
}

/* --keys-led: the keys whose partition the handle's own node leads now. */
static int led_keys_find(grid_t *g, const bench_cfg_t *c, run_t *run) {
  grid_stats_t st;
  int rc = grid_stats(g, &st);
  if (rc != 0) {
    fprintf(stderr, "gridbench: --keys-led: cannot ask the node its id: %s\n", grid_strerror(rc));
    return EXIT_RUN_FAILED;
  }
  run->led = malloc((size_t)c->keys * sizeof *run->led);
  if (!run->led) return EXIT_RUN_FAILED;
  char key[KEY_BYTES_MAX], owner[64];
  for (uint32_t i = 0; i < c->keys; i++) {
    size_t n = key_format(key, i);
    rc = grid_key_owner(g, c->cache, key, n, owner, sizeof owner);
    if (rc != 0) {
      fprintf(stderr, "gridbench: --keys-led: %s\n", grid_strerror(rc));
      return EXIT_RUN_FAILED;
    }
    if (strcmp(owner, st.node_id) == 0) run->led[run->nled++] = i;
  }
  if (!c->quiet)
    fprintf(stderr, "gridbench: --keys-led: %u of %u keys are led by %s\n", run->nled, c->keys,
            st.node_id);
  if (run->nled == 0) {
    fprintf(stderr, "gridbench: --keys-led: node %s leads none of the keys\n", st.node_id);
    return EXIT_RUN_FAILED;
  }
  return 0;
}

/* The cache must exist; an embedded node starts with "default" only, so a
 * cache named on the command line is made there. */
static int ensure_cache(grid_t *g, const bench_cfg_t *c) {
  uint64_t size;
  int rc = grid_size(g, c->cache, &size);
  if (rc == GRID_ENOCACHE && c->embedded) {
    grid_cache_config_t cc = {.name = c->cache,
                              .mode = c->replicated ? GRID_MODE_REPLICATED : GRID_MODE_PARTITIONED};
    rc = grid_cache_create(g, &cc);
    if (rc == 0 && !c->quiet)
      fprintf(stderr, "gridbench: created cache \"%s\" in the embedded node\n", c->cache);
  }
  if (rc != 0)
    fprintf(stderr, "gridbench: cache \"%s\": %s%s\n", c->cache, grid_strerror(rc),
            rc == GRID_ENOCACHE ? " (create it with gridctl create-cache)" : "");
  return rc;
}

int main(int argc, char **argv) {
  bench_cfg_t cfg;
  parse_args(argc, argv, &cfg);
  const bench_cfg_t *c = &cfg;

  run_t run = {.cfg = c};
  if (c->zipfian) {
    if (!c->quiet && c->keys > 10000000)
      fprintf(stderr, "gridbench: computing zipfian constants for %u keys...\n", c->keys);
    zipf_init(&run.zipf, c->keys, ZIPF_THETA);
  }
  run.value = malloc(c->value_bytes ? c->value_bytes : 1);
  worker_t *ws = calloc(c->threads, sizeof *ws);
  if (!run.value || !ws) {
    fprintf(stderr, "gridbench: out of memory\n");
    return EXIT_RUN_FAILED;
  }
  for (uint32_t i = 0; i < c->value_bytes; i++) run.value[i] = (unsigned char)('a' + i % 26);
  for (uint32_t i = 0; i < c->threads; i++) {
    if (worker_init(&ws[i], &run, i) != 0) {
      fprintf(stderr, "gridbench: out of memory\n");
      return EXIT_RUN_FAILED;
    }
  }

  /* Remote: one handle (one connection) per thread. Embedded: one node,
   * shared, since separate handles would be separate nodes. RESP: one
   * socket per thread, no grid.h at all. */
  grid_t *shared = NULL;
  if (c->resp) {
    int rc = resp_connect_all(&run, ws);
    if (rc == 0 && c->preload) rc = resp_preload(&ws[0].link, c, run.value, !c->quiet);
    if (rc != 0) return rc;
  } else {
    for (uint32_t i = 0; i < c->threads; i++) {
      if (c->embedded && shared) {
        ws[i].g = shared;
        continue;
      }
      if (open_handle(c, i, &ws[i].g) != 0) return EXIT_CONNECT;
      if (c->embedded) shared = ws[i].g;
    }
    int rc = ensure_cache(ws[0].g, c);
    if (rc != 0) return rc == GRID_ECONN || rc == GRID_ETIMEDOUT ? EXIT_CONNECT : EXIT_RUN_FAILED;
    if (c->preload && (rc = preload(ws[0].g, c, run.value, !c->quiet)) != 0) {
      fprintf(stderr, "gridbench: preload failed: %s\n", grid_strerror(rc));
      return rc == GRID_ECONN ? EXIT_CONNECT : EXIT_RUN_FAILED;
    }
  }
  if (c->keys_led && !c->resp) {
    int rc = led_keys_find(ws[0].g, c, &run);
    if (rc != 0) return rc;
  }
  grid_stats_t stats_before = {0};
  int stats_ok = c->embedded && grid_stats(ws[0].g, &stats_before) == 0;
  if (c->embedded && c->pipeline > 1 && !c->quiet)
    fprintf(stderr, "gridbench: note: embedded async calls complete before they return, "
                    "so --pipeline %u keeps at most one request in flight\n", c->pipeline);

  struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESETHAND};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);

  run.begin_ns = now_ns();
  run.measure_start_ns = run.begin_ns + (uint64_t)(c->warmup_s * 1e9);
  run.measure_end_ns =
      c->requests ? UINT64_MAX : run.measure_start_ns + (uint64_t)(c->duration_s * 1e9);
  run.send_end_ns = c->requests ? UINT64_MAX : run.measure_end_ns + CATCH_UP_NS;
  for (uint32_t i = 0; i < c->threads; i++) {
    if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
      fprintf(stderr, "gridbench: cannot start worker thread %u\n", i);
      STORE(run.stop, 1);
      for (uint32_t j = 0; j < i; j++) pthread_join(ws[j].tid, NULL);
      return EXIT_RUN_FAILED;
    }
  }

  hist_t *scratch[REQ_KINDS + 1];
  hist_t *scratch_svc[REQ_KINDS + 1];
  for (int k = 0; k <= REQ_KINDS; k++) {
    scratch[k] = hist_new();
    scratch_svc[k] = hist_new();
    if (!scratch[k] || !scratch_svc[k]) {
      fprintf(stderr, "gridbench: out of memory\n");
      return EXIT_RUN_FAILED;
    }
  }
  uint64_t stop_ns = 0, next_progress = run.begin_ns + NS_PER_S;
  uint64_t last_completed = 0, last_ns = run.begin_ns;
  while (atomic_load(&run.workers_done) < c->threads) {
    sleep_abs_ns(now_ns() + CONTROL_TICK_NS);
    uint64_t now = now_ns();
    if (interrupted && !stop_ns) {
      stop_ns = now;
      STORE(run.stop, 1);
      if (!c->quiet) fprintf(stderr, "gridbench: interrupted, finishing what is in flight\n");
    }
    if (now >= next_progress) {
      if (!c->quiet && !stop_ns)
        print_progress(&run, ws, scratch, now, &last_completed, &last_ns);
      next_progress += NS_PER_S;
      if (next_progress <= now) next_progress = now + NS_PER_S;
    }
  }
  for (uint32_t i = 0; i < c->threads; i++) pthread_join(ws[i].tid, NULL);

  results_t res = {0};
  for (int k = 0; k <= REQ_KINDS; k++) {
    res.lat[k] = scratch[k];
    res.svc[k] = scratch_svc[k];
  }
  merge_hists(ws, c->threads, 0, res.lat);
  if (c->rate > 0) merge_hists(ws, c->threads, 1, res.svc);
  uint64_t last_finish = 0;
  for (uint32_t i = 0; i < c->threads; i++) {
    for (int s = 0; s < ERR_SLOTS; s++) {
      res.errors[s] += LOAD(ws[i].errors[s]);
      res.errors_total += LOAD(ws[i].errors[s]);
    }
    for (uint32_t j = 0; j < ws[i].err_texts_used; j++) {
      uint64_t n = LOAD(ws[i].err_texts[j].count);
      err_text_count(res.err_texts, &res.err_texts_used, ws[i].err_texts[j].text, n);
      res.errors_total += n;
    }
    res.unsent += ws[i].unsent;
    res.stuck += ws[i].stuck;
    if (ws[i].finish_ns > last_finish) last_finish = ws[i].finish_ns;
  }
  uint64_t window_end = c->requests ? last_finish : run.measure_end_ns;
  if (stop_ns && stop_ns < window_end) window_end = stop_ns;
  if (window_end <= run.measure_start_ns) {
    fprintf(stderr, "gridbench: stopped before the measured part began: nothing to report\n");
    return EXIT_RUN_FAILED;
  }
  res.elapsed_s = (window_end - run.measure_start_ns) / 1e9;
  res.interrupted = stop_ns != 0;

  grid_stats_t stats_after;
  if (stats_ok && grid_stats(shared, &stats_after) == 0) {
    res.local_reads = stats_after.local_reads - stats_before.local_reads;
    res.gets = atomic_load(&run.gets);
    res.local_measured = 1;
  }
  if (c->embedded) {
    res.timer_ns = timer_cost_ns();
    if (c->op == OP_GET && !stop_ns) {
      if (!c->quiet) fprintf(stderr, "gridbench: batch mean: %d gets in one timed loop\n",
                             BATCH_MEAN_GETS);
      res.batch_measured = batch_mean_ns(shared, &run, &res.batch_mean_ns, &res.batch_errors) == 0;
    }
  }

  if (c->json) print_json(c, &res);
  else print_table(c, &res);
  fflush(stdout);

  /* A handle with requests that never called back cannot be closed (close
   * waits for them), nor can its worker's memory be freed. */
  int any_stuck = res.stuck > 0;
  if (c->embedded) {
    if (!any_stuck) grid_close(shared);
  } else if (c->resp) {
    for (uint32_t i = 0; i < c->threads; i++) link_free(&ws[i].link);
  } else {
    for (uint32_t i = 0; i < c->threads; i++)
      if (!ws[i].stuck) grid_close(ws[i].g);
  }
  if (!any_stuck) {
    for (uint32_t i = 0; i < c->threads; i++) {
      for (int k = 0; k < REQ_KINDS; k++) {
        free(ws[i].lat[k]);
        free(ws[i].svc[k]);
      }
      free(ws[i].ctxs);
      free(ws[i].batch_kinds);
      free(ws[i].batch_keys);
      pthread_mutex_destroy(&ws[i].mu);
      pthread_cond_destroy(&ws[i].cv);
    }
    free(ws);
  }
  for (int k = 0; k <= REQ_KINDS; k++) {
    free(scratch[k]);
    free(scratch_svc[k]);
  }
  free(run.value);
  return any_stuck ? EXIT_RUN_FAILED : 0;
}
