/*
 * fault_client: the workload of the fault-injection harness (faults.py).
 *
 * Threads run a seeded mix of single-key operations through grid.h only,
 * and record every operation as one JSON line for checker.py:
 *
 *   {"p": process, "f": "put"|"get"|"cas"|"add", "k": key, "v": value or
 *    delta, "exp": the value a cas expects, "t0": invoke ns, "t1": completion
 *    ns, "r": "ok"|"fail"|"info", "out": value read / new sum / null,
 *    "err": GRID_E* name when not ok}
 *
 * Times are CLOCK_MONOTONIC nanoseconds, one clock for every process on the
 * machine (network namespaces do not change it), so the final read of a
 * second run orders after the workload.
 *
 * Keys: "r<i>" are registers (put, get, cas), "c<i>" counters (add, get),
 * "b<i>" batch registers: one register kept as the four entries
 * "{b<i>}.0" .. "{b<i>}.3", put by one atomic grid_batch of the same value
 * into all four and got by one grid_get_prefix, which records the value
 * only when all four hold it (else "TORN", a value nobody wrote: the
 * checker then finds no linearization).
 * Written values are unique ("t<thread>-<seq>"), which lets the checker
 * tell every write apart and makes a version-based cas equal to a
 * value-based one.
 *
 * Result classes: "ok" was acknowledged; "fail" certainly did not take
 * effect (a read that failed, or a refusal the protocol defines as not
 * applied); "info" may or may not have taken effect (no reply, or an error
 * this client cannot be sure about). When in doubt a write is "info".
 * A thread whose operation ended "info" takes a new process number, as in
 * Jepsen: the operation may still be running, and a process runs one
 * operation at a time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"

#define FC_THREADS_MAX 64          /* --threads bound: processes of the history */
#define FC_KEY_BYTES_MAX 32        /* "r12345" */
#define FC_VALUE_BYTES_MAX 48      /* "t63-123456789" */
#define FC_ERR_CODES 64            /* GRID_E* codes go down to -29; room to grow */
#define FC_FINAL_PROCESS 1000      /* process number of the final reads */
#define FC_FINAL_RETRY_MS 50       /* pause between attempts of a final read */
#define FC_OUT_BUFFER_BYTES (1 << 20)

typedef struct fc_options {
  const char *uri;
  const char *cache;
  int threads;
  int keys;         /* registers r0..r<keys-1> */
  int counters;     /* counters c0..c<counters-1> */
  int batches;      /* batch registers b0..b<batches-1> */
  int64_t duration_ms;
  uint64_t seed;
  uint32_t timeout_ms;
  const char *out;
  int final_read;
  int64_t deadline_ms;
  int rate;         /* operations per second over all threads; 0: no bound */
  const char *events; /* a change stream of the cache, logged here */
} fc_options_t;

static fc_options_t opt = {
    .cache = "faults", .threads = 4, .keys = 16, .counters = -1, .batches = 4, .duration_ms = 10000,
    .seed = 1, .timeout_ms = 1500, .out = "history.jsonl", .deadline_ms = 20000,
};

static FILE *out_file;
static atomic_long count_ok, count_fail, count_info;
static atomic_long count_err[FC_ERR_CODES]; /* by -code */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* splitmix64: a small seeded generator per thread, so that a seed replays
 * the same sequence of operation choices (timing still differs). */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

typedef enum { FC_OK, FC_FAIL, FC_INFO } fc_result_t;

static const char *result_name(fc_result_t r) {
  return r == FC_OK ? "ok" : r == FC_FAIL ? "fail" : "info";
}

/* Whether a failed write certainly did not take effect. These codes are
 * answered by a node before it runs the write (the key's state refused it,
 * or the partition or the node could not take it); GRID_ECONN is returned
 * by the library only for a request it never sent (a lost connection makes
 * a write GRID_EUNKNOWN). Anything else, a timeout included, is unknown. */
static int write_error_is_not_applied(int rc) {
  switch (rc) {
  case GRID_ENOTFOUND: /* cas on a missing key */
  case GRID_EVERSION:
  case GRID_ENOCACHE:
  case GRID_EKEYTOOBIG:
  case GRID_EVALTOOBIG:
  case GRID_EMEMLIMIT:
  case GRID_ENOTNUM:
  case GRID_EOVERFLOW:
  case GRID_EINVAL:
  case GRID_ESTALE:
  case GRID_ELOST:
  case GRID_ECLUSTER:
  case GRID_ENOTREADY:
  case GRID_ECONN:
  case GRID_EBUSY:
    return 1;
  default:
    return 0;
  }
}

static void count_result(fc_result_t r, int rc) {
  if (r == FC_OK) atomic_fetch_add(&count_ok, 1);
  else if (r == FC_FAIL) atomic_fetch_add(&count_fail, 1);
  else atomic_fetch_add(&count_info, 1);
  if (rc < 0 && -rc < FC_ERR_CODES) atomic_fetch_add(&count_err[-rc], 1);
}

/* Writes a JSON string (keys and values here are plain ASCII; anything
 * else is escaped so that a surprising value still parses). */
static void put_json_string(FILE *f, const char *s, size_t len) {
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20 || c >= 0x7f) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

/* One history line. v, exp and out may be NULL (JSON null); for "add" v
 * and out are numbers written as text by the caller. */
static void record(int p, const char *f, const char *key, const char *v, int v_is_num,
                   const char *exp, int64_t t0, int64_t t1, fc_result_t r, const char *out,
                   size_t out_len, int out_is_num, int rc, int final) {
  flockfile(out_file);
  fprintf(out_file, "{\"p\":%d,\"f\":\"%s\",\"k\":\"%s\",\"v\":", p, f, key);
  if (!v) fputs("null", out_file);
  else if (v_is_num) fputs(v, out_file);
  else put_json_string(out_file, v, strlen(v));
  fputs(",\"exp\":", out_file);
  if (exp) put_json_string(out_file, exp, strlen(exp));
  else fputs("null", out_file);
  fprintf(out_file, ",\"t0\":%" PRId64 ",\"t1\":%" PRId64 ",\"r\":\"%s\",\"out\":", t0, t1,
          result_name(r));
  if (!out) fputs("null", out_file);
  else if (out_is_num) fputs(out, out_file);
  else put_json_string(out_file, out, out_len);
  if (rc) fprintf(out_file, ",\"err\":\"%s\"", grid_err_name(rc));
  if (final) fputs(",\"fin\":1", out_file);
  fputs("}\n", out_file);
  funlockfile(out_file);
}

/* A get; returns its class. *found and the value (in buf) on success. */
static fc_result_t do_get(grid_t *g, int p, const char *key, char *buf, size_t cap,
                          int *found, uint64_t *version, int final, int *rc_out) {
  grid_value_t v;
  int64_t t0 = now_ns();
  int rc = grid_get(g, opt.cache, key, strlen(key), &v);
  int64_t t1 = now_ns();
  *rc_out = rc;
  *found = 0;
  if (rc == 0) {
    size_t n = v.len < cap - 1 ? v.len : cap - 1;
    memcpy(buf, v.data, n);
    buf[n] = '\0';
    *found = 1;
    if (version) *version = v.version;
    grid_value_free(&v);
    record(p, "get", key, NULL, 0, NULL, t0, t1, FC_OK, buf, n, 0, 0, final);
    count_result(FC_OK, 0);
    return FC_OK;
  }
  if (rc == GRID_ENOTFOUND) {
    record(p, "get", key, NULL, 0, NULL, t0, t1, FC_OK, NULL, 0, 0, 0, final);
    count_result(FC_OK, 0);
    return FC_OK;
  }
  /* A read changes nothing: whatever went wrong, it is no observation. */
  record(p, "get", key, NULL, 0, NULL, t0, t1, FC_FAIL, NULL, 0, 0, rc, final);
  count_result(FC_FAIL, rc);
  return FC_FAIL;
}

#define FC_BATCH_ENTRIES 4

/* A batch register's get: one grid_get_prefix of its four entries. */
static fc_result_t do_get_batch(grid_t *g, int p, const char *key, int final, int *rc_out) {
  char prefix[FC_KEY_BYTES_MAX + 4];
  int pl = snprintf(prefix, sizeof prefix, "{%s}.", key);
  grid_entry_t *ents = NULL;
  size_t n = 0;
  int64_t t0 = now_ns();
  int rc = grid_get_prefix(g, opt.cache, prefix, (size_t)pl, 0, &ents, &n);
  int64_t t1 = now_ns();
  *rc_out = rc;
  if (rc != 0) {
    record(p, "get", key, NULL, 0, NULL, t0, t1, FC_FAIL, NULL, 0, 0, rc, final);
    count_result(FC_FAIL, rc);
    return FC_FAIL;
  }
  const char *v = NULL;
  size_t vlen = 0;
  int torn = n != 0 && n != FC_BATCH_ENTRIES;
  for (size_t i = 0; i < n && !torn; i++) {
    if (i == 0) {
      v = ents[0].value;
      vlen = ents[0].value_len;
    } else if (ents[i].value_len != vlen || memcmp(ents[i].value, v, vlen) != 0) {
      torn = 1;
    }
  }
  if (torn) {
    v = "TORN";
    vlen = 4;
  }
  record(p, "get", key, NULL, 0, NULL, t0, t1, FC_OK, v, vlen, 0, 0, final);
  count_result(FC_OK, 0);
  grid_entries_free(ents, n);
  return FC_OK;
}

static fc_result_t classify_write(int rc);

/* A batch register's put: one atomic grid_batch of val into its four
 * entries. */
static fc_result_t do_put_batch(grid_t *g, int p, const char *key, const char *val,
                                int *rc_out) {
  char keys[FC_BATCH_ENTRIES][FC_KEY_BYTES_MAX + 8];
  grid_batch_op_t ops[FC_BATCH_ENTRIES];
  for (int i = 0; i < FC_BATCH_ENTRIES; i++) {
    int kl = snprintf(keys[i], sizeof keys[i], "{%s}.%d", key, i);
    ops[i] = (grid_batch_op_t){.kind = GRID_BATCH_PUT, .key = keys[i], .key_len = (size_t)kl,
                               .value = val, .value_len = strlen(val)};
  }
  int64_t t0 = now_ns();
  int rc = grid_batch(g, opt.cache, ops, FC_BATCH_ENTRIES, NULL);
  int64_t t1 = now_ns();
  fc_result_t r = classify_write(rc);
  record(p, "put", key, val, 0, NULL, t0, t1, r, NULL, 0, 0, rc, 0);
  count_result(r, rc);
  *rc_out = rc;
  return r;
}

static fc_result_t classify_write(int rc) {
  if (rc == 0) return FC_OK;
  return write_error_is_not_applied(rc) ? FC_FAIL : FC_INFO;
}

typedef struct fc_thread {
  int id;
  grid_t *g;
  pthread_t thread;
} fc_thread_t;

static void *workload_main(void *arg) {
  fc_thread_t *th = arg;
  uint64_t rng = opt.seed * 1000003u + (uint64_t)th->id;
  int p = th->id;
  long seq = 0;
  int64_t end = now_ns() + opt.duration_ms * 1000000;
  /* --rate: each thread starts an operation every threads/rate seconds,
   * which keeps a key's history small enough for the checker's search. */
  int64_t period_ns = opt.rate > 0 ? (int64_t)opt.threads * 1000000000 / opt.rate : 0;
  int64_t next_ns = now_ns();
  char key[FC_KEY_BYTES_MAX], val[FC_VALUE_BYTES_MAX], cur[FC_VALUE_BYTES_MAX];
  while (now_ns() < end) {
    if (period_ns) {
      int64_t wait_ns = next_ns - now_ns();
      if (wait_ns > 0) {
        struct timespec ts = {wait_ns / 1000000000, wait_ns % 1000000000};
        nanosleep(&ts, NULL);
      }
      next_ns += period_ns;
      if (next_ns < now_ns()) next_ns = now_ns(); /* no burst after a stall */
    }
    uint64_t pick = rng_next(&rng) % 100;
    fc_result_t r;
    int rc = 0;
    if (pick < 20 && opt.counters > 0) {
      /* Counters: adds of small positive deltas, so that the sum only
       * grows and a missing key (0) is told apart from any written sum. */
      snprintf(key, sizeof key, "c%d", (int)(rng_next(&rng) % (uint64_t)opt.counters));
      int64_t delta = 1 + (int64_t)(rng_next(&rng) % 5), sum = 0;
      char dv[24], sv[24];
      snprintf(dv, sizeof dv, "%" PRId64, delta);
      int64_t t0 = now_ns();
      rc = grid_add(th->g, opt.cache, key, strlen(key), delta, &sum);
      int64_t t1 = now_ns();
      r = classify_write(rc);
      snprintf(sv, sizeof sv, "%" PRId64, sum);
      record(p, "add", key, dv, 1, NULL, t0, t1, r, r == FC_OK ? sv : NULL, strlen(sv), 1, rc, 0);
      count_result(r, rc);
    } else if (pick < 30 && opt.counters > 0) {
      snprintf(key, sizeof key, "c%d", (int)(rng_next(&rng) % (uint64_t)opt.counters));
      int found;
      r = do_get(th->g, p, key, cur, sizeof cur, &found, NULL, 0, &rc);
    } else if (pick < 42 && opt.batches > 0) {
      snprintf(key, sizeof key, "b%d", (int)(rng_next(&rng) % (uint64_t)opt.batches));
      if (rng_next(&rng) % 2) {
        snprintf(val, sizeof val, "t%d-%ld", th->id, seq++);
        r = do_put_batch(th->g, p, key, val, &rc);
      } else {
        r = do_get_batch(th->g, p, key, 0, &rc);
      }
    } else {
      snprintf(key, sizeof key, "r%d", (int)(rng_next(&rng) % (uint64_t)opt.keys));
      uint64_t kind = rng_next(&rng) % 3;
      if (kind == 0) {
        snprintf(val, sizeof val, "t%d-%ld", th->id, seq++);
        int64_t t0 = now_ns();
        rc = grid_put(th->g, opt.cache, key, strlen(key), val, strlen(val), 0, NULL);
        int64_t t1 = now_ns();
        r = classify_write(rc);
        record(p, "put", key, val, 0, NULL, t0, t1, r, NULL, 0, 0, rc, 0);
        count_result(r, rc);
      } else if (kind == 1) {
        int found;
        r = do_get(th->g, p, key, cur, sizeof cur, &found, NULL, 0, &rc);
      } else {
        /* cas: read the version, then write only if it is still current.
         * The get is recorded as a read of its own; the cas expects the
         * value that read returned (values are unique, so "version
         * unchanged" and "value unchanged" are the same condition). */
        int found;
        uint64_t version = 0;
        r = do_get(th->g, p, key, cur, sizeof cur, &found, &version, 0, &rc);
        if (r == FC_OK && found) {
          snprintf(val, sizeof val, "t%d-%ld", th->id, seq++);
          int64_t t0 = now_ns();
          rc = grid_cas(th->g, opt.cache, key, strlen(key), version, val, strlen(val), 0, NULL);
          int64_t t1 = now_ns();
          r = classify_write(rc);
          record(p, "cas", key, val, 0, cur, t0, t1, r, NULL, 0, 0, rc, 0);
          count_result(r, rc);
        }
      }
    }
    if (r == FC_INFO) p += opt.threads; /* the old process may still be running it */
    /* A refused request is retried by the library within its deadline;
     * past that, a short pause keeps a dead cluster from spinning us. */
    if (r != FC_OK) sleep_ms(5);
  }
  return NULL;
}

/* Reads every key once, each retried until it answers or the deadline
 * passes. Returns how many keys could not be read. */
static int final_read(grid_t *g) {
  int64_t deadline = now_ns() + opt.deadline_ms * 1000000;
  int stuck = 0;
  char key[FC_KEY_BYTES_MAX], buf[FC_VALUE_BYTES_MAX];
  int ncounters = opt.counters > 0 ? opt.counters : 0;
  int total = opt.keys + ncounters + opt.batches;
  fprintf(stdout, "{\"stuck\":[");
  for (int i = 0; i < total; i++) {
    int batch = i >= opt.keys + ncounters;
    if (i < opt.keys) snprintf(key, sizeof key, "r%d", i);
    else if (!batch) snprintf(key, sizeof key, "c%d", i - opt.keys);
    else snprintf(key, sizeof key, "b%d", i - opt.keys - ncounters);
    int last_rc = 0;
    for (;;) {
      int found, rc;
      fc_result_t fr = batch ? do_get_batch(g, FC_FINAL_PROCESS, key, 1, &rc)
                             : do_get(g, FC_FINAL_PROCESS, key, buf, sizeof buf, &found, NULL,
                                      1, &rc);
      if (fr == FC_OK) break;
      last_rc = rc;
      if (now_ns() + (int64_t)FC_FINAL_RETRY_MS * 1000000 >= deadline) {
        fprintf(stderr, "fault_client: key %s could not be read within --deadline-ms %" PRId64
                        ": last error %s\n", key, opt.deadline_ms, grid_err_name(last_rc));
        fprintf(stdout, "%s\"%s\"", stuck ? "," : "", key);
        stuck++;
        break;
      }
      sleep_ms(FC_FINAL_RETRY_MS);
    }
  }
  fprintf(stdout, "],");
  return stuck;
}

/* ---- the change stream (--events) ------------------------------------- */

/* A subscriber from before the workload to after it: every event as a JSON
 * line, {"e": "put"|"delete"|"expire"|"gap"|"ended", "k", "v", "ver",
 * "part"}, for tests/faults/stream_check.py. */
typedef struct fc_events {
  grid_t *g;
  grid_sub_t *sub;
  FILE *f;
  pthread_t thread;
  atomic_int workload_done;
  long events;
} fc_events_t;

#define FC_EVENTS_QUIET_MS 3000    /* drained: no event for this long after */
#define FC_EVENTS_DRAIN_MS 60000   /* ... the workload, at most */

static void *events_main(void *arg) {
  fc_events_t *ev = arg;
  int64_t quiet_since = 0, done_at = 0;
  for (;;) {
    grid_event_t e;
    int rc = grid_sub_next(ev->sub, 100, &e);
    int64_t now = now_ns();
    if (atomic_load(&ev->workload_done) && !done_at) done_at = now;
    if (rc == 0) {
      quiet_since = now;
      ev->events++;
      fprintf(ev->f, "{\"e\":\"%s\",\"part\":%u", grid_event_name(e.kind), e.partition);
      if (e.key) {
        fprintf(ev->f, ",\"k\":");
        put_json_string(ev->f, e.key, e.key_len);
        fprintf(ev->f, ",\"ver\":%" PRIu64, e.version);
      }
      if (e.value) {
        fprintf(ev->f, ",\"v\":");
        put_json_string(ev->f, e.value, e.value_len);
      }
      if (e.kind == GRID_EVENT_ENDED) fprintf(ev->f, ",\"err\":\"%s\"", grid_err_name(e.status));
      fprintf(ev->f, "}\n");
      if (e.kind == GRID_EVENT_ENDED) break;
      continue;
    }
    if (rc != GRID_ETIMEDOUT) break;
    if (done_at && (now - quiet_since > FC_EVENTS_QUIET_MS * 1000000LL ||
                    now - done_at > FC_EVENTS_DRAIN_MS * 1000000LL))
      break;
  }
  return NULL;
}

/* Subscribes before the workload starts (the cluster is healthy then, but
 * settling: tried for a while). */
static int events_start(fc_events_t *ev, const grid_options_t *go) {
  ev->f = fopen(opt.events, "w");
  if (!ev->f) {
    fprintf(stderr, "fault_client: cannot open %s: %s\n", opt.events, strerror(errno));
    return 3;
  }
  setvbuf(ev->f, NULL, _IOFBF, FC_OUT_BUFFER_BYTES);
  int rc = grid_open(opt.uri, go, &ev->g);
  for (int i = 0; rc == 0 && i < 20; i++) {
    rc = grid_subscribe(ev->g, opt.cache, NULL, &ev->sub);
    if (rc == 0) break;
    fprintf(stderr, "fault_client: subscribe: %s (%s): again\n", grid_err_name(rc),
            grid_last_error());
    sleep_ms(500);
  }
  if (rc != 0) {
    fprintf(stderr, "fault_client: cannot subscribe to %s: %s\n", opt.cache, grid_strerror(rc));
    return 3;
  }
  return pthread_create(&ev->thread, NULL, events_main, ev) == 0 ? 0 : 3;
}

static void events_stop(fc_events_t *ev) {
  atomic_store(&ev->workload_done, 1);
  pthread_join(ev->thread, NULL);
  grid_unsubscribe(ev->sub);
  grid_close(ev->g);
  fclose(ev->f);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: fault_client --uri grid://[addr]:port,... [options]\n"
          "\n"
          "The workload of the fault-injection harness (tests/faults/faults.py):\n"
          "threads run a seeded mix of put / get / cas on registers r<i> and add /\n"
          "get on counters c<i> through grid.h, and record every operation as a\n"
          "JSON line (see tests/faults/README.md) for tests/faults/checker.py.\n"
          "At the end it prints one JSON line of counts on stdout.\n"
          "\n"
          "  --uri URI          grid://host:port[,host:port...] ([v6]:port for IPv6)\n"
          "  --cache NAME       the cache to use (default faults; it must exist)\n"
          "  --threads N        client threads, each its own process in the history\n"
          "                     (default 4, at most %d)\n"
          "  --keys K           register keys r0..r<K-1> (default 16)\n"
          "  --counters C       counter keys c0..c<C-1> (default K/4, at least 1; 0: none)\n"
          "  --batches B        batch registers b0..b<B-1>, four entries each, put by one\n"
          "                     atomic grid_batch, got by one grid_get_prefix (default 4;\n"
          "                     0: none)\n"
          "  --duration-ms D    how long the workload runs (default 10000)\n"
          "  --seed S           seeds the choice of operations and keys (default 1)\n"
          "  --timeout-ms T     deadline of every call (default 1500)\n"
          "  --rate R           operations per second over all threads (default 0:\n"
          "                     as fast as the cluster answers)\n"
          "  --out FILE         the history, appended to (default history.jsonl)\n"
          "  --final-read       read every key once instead of running the workload,\n"
          "                     retrying each until --deadline-ms; exit 1 if a key\n"
          "                     could not be read (liveness)\n"
          "  --deadline-ms D    bound of --final-read over all keys (default 20000)\n"
          "  --events FILE      also follow the cache's change stream from before the\n"
          "                     workload until it has drained after it, every event a\n"
          "                     JSON line in FILE (tests/faults/stream_check.py)\n"
          "  --help             this text\n"
          "\n"
          "Exit status: 0 done, 1 a key unreadable by the deadline (--final-read),\n"
          "2 usage error, 3 cannot open the cluster or the output.\n",
          FC_THREADS_MAX);
}

static int parse_long(const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

int main(int argc, char **argv) {
  enum { O_URI = 1, O_CACHE, O_THREADS, O_KEYS, O_COUNTERS, O_BATCHES, O_DURATION, O_SEED, O_TIMEOUT,
         O_OUT, O_FINAL, O_DEADLINE, O_RATE, O_EVENTS, O_HELP };
  static const struct option longopts[] = {
      {"uri", required_argument, 0, O_URI},
      {"cache", required_argument, 0, O_CACHE},
      {"threads", required_argument, 0, O_THREADS},
      {"keys", required_argument, 0, O_KEYS},
      {"counters", required_argument, 0, O_COUNTERS},
      {"batches", required_argument, 0, O_BATCHES},
      {"duration-ms", required_argument, 0, O_DURATION},
      {"seed", required_argument, 0, O_SEED},
      {"timeout-ms", required_argument, 0, O_TIMEOUT},
      {"out", required_argument, 0, O_OUT},
      {"final-read", no_argument, 0, O_FINAL},
      {"deadline-ms", required_argument, 0, O_DEADLINE},
      {"rate", required_argument, 0, O_RATE},
      {"events", required_argument, 0, O_EVENTS},
      {"help", no_argument, 0, O_HELP},
      {0, 0, 0, 0}};
  int c;
  long long n;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case O_URI: opt.uri = optarg; break;
    case O_CACHE: opt.cache = optarg; break;
    case O_THREADS: bad = parse_long(optarg, 1, FC_THREADS_MAX, &n); opt.threads = (int)n; break;
    case O_KEYS: bad = parse_long(optarg, 1, 1000000, &n); opt.keys = (int)n; break;
    case O_COUNTERS: bad = parse_long(optarg, 0, 1000000, &n); opt.counters = (int)n; break;
    case O_BATCHES: bad = parse_long(optarg, 0, 100000, &n); opt.batches = (int)n; break;
    case O_DURATION: bad = parse_long(optarg, 0, 86400000, &n); opt.duration_ms = n; break;
    case O_SEED: bad = parse_long(optarg, 0, INT64_MAX, &n); opt.seed = (uint64_t)n; break;
    case O_TIMEOUT: bad = parse_long(optarg, 1, 3600000, &n); opt.timeout_ms = (uint32_t)n; break;
    case O_OUT: opt.out = optarg; break;
    case O_FINAL: opt.final_read = 1; break;
    case O_DEADLINE: bad = parse_long(optarg, 0, 86400000, &n); opt.deadline_ms = n; break;
    case O_RATE: bad = parse_long(optarg, 0, 10000000, &n); opt.rate = (int)n; break;
    case O_EVENTS: opt.events = optarg; break;
    case O_HELP: case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
    if (bad) {
      fprintf(stderr, "fault_client: bad value \"%s\" for --%s\n", optarg,
              longopts[c - 1].name);
      return 2;
    }
  }
  if (optind < argc || !opt.uri) {
    fprintf(stderr, "fault_client: %s\n", !opt.uri ? "--uri is required" : "unexpected argument");
    usage(stderr);
    return 2;
  }
  if (opt.counters < 0) opt.counters = opt.keys / 4 > 0 ? opt.keys / 4 : 1;
  out_file = fopen(opt.out, "a");
  if (!out_file) {
    fprintf(stderr, "fault_client: cannot open %s: %s\n", opt.out, strerror(errno));
    return 3;
  }
  setvbuf(out_file, NULL, _IOFBF, FC_OUT_BUFFER_BYTES);
  grid_options_t go = {.timeout_ms = opt.timeout_ms, .client_name = "fault_client"};
  int status = 0;
  if (opt.final_read) {
    grid_t *g = NULL;
    /* The cluster may still be settling: opening is retried too. */
    int64_t deadline = now_ns() + opt.deadline_ms * 1000000;
    int rc;
    while ((rc = grid_open(opt.uri, &go, &g)) != 0 && now_ns() < deadline) sleep_ms(200);
    if (rc != 0) {
      fprintf(stderr, "fault_client: cannot open %s: %s\n", opt.uri, grid_strerror(rc));
      printf("{\"stuck\":[\"*\"],\"open_error\":\"%s\"}\n", grid_err_name(rc));
      fclose(out_file);
      return 1;
    }
    status = final_read(g) ? 1 : 0;
    grid_close(g);
  } else {
    static fc_events_t evs;
    if (opt.events && events_start(&evs, &go) != 0) return 3;
    static fc_thread_t th[FC_THREADS_MAX];
    for (int i = 0; i < opt.threads; i++) {
      th[i].id = i;
      int rc = grid_open(opt.uri, &go, &th[i].g);
      if (rc != 0) {
        fprintf(stderr, "fault_client: cannot open %s: %s\n", opt.uri, grid_strerror(rc));
        return 3;
      }
    }
    for (int i = 0; i < opt.threads; i++)
      if (pthread_create(&th[i].thread, NULL, workload_main, &th[i]) != 0) {
        fprintf(stderr, "fault_client: cannot start a thread\n");
        return 3;
      }
    for (int i = 0; i < opt.threads; i++) pthread_join(th[i].thread, NULL);
    for (int i = 0; i < opt.threads; i++) grid_close(th[i].g);
    printf("{");
    if (opt.events) {
      events_stop(&evs);
      printf("\"events\":%ld,", evs.events);
    }
  }
  fclose(out_file);
  printf("\"ok\":%ld,\"fail\":%ld,\"info\":%ld,\"errors\":{", atomic_load(&count_ok),
         atomic_load(&count_fail), atomic_load(&count_info));
  int first = 1;
  for (int i = 1; i < FC_ERR_CODES; i++) {
    long v = atomic_load(&count_err[i]);
    if (!v) continue;
    printf("%s\"%s\":%ld", first ? "" : ",", grid_err_name(-i), v);
    first = 0;
  }
  printf("}}\n");
  return status;
}
