/*
 * thing_bench: foundation-shim's figures (perf/thing runs it on a cluster).
 *
 *   thing_bench run --uri URI [--config FILE] [--seconds S] [--threads T]
 *                   [--led] [--label TEXT]
 *     one JSON line per case:
 *       write      thing_write_one of one property (1 thread): its read and
 *                  its batch, latency
 *       read       thing_read of one property, latency
 *       read_all   thing_read_all of a Thing of 50 properties, latency
 *       message    device messages of 10 properties (thing_write with
 *                  THING_IF_NEWER), T threads, each its own Things:
 *                  messages/s and latency per message
 *     --led: only Things whose partition the handle's own node leads (an
 *     embedded member: what it reads and writes without a socket).
 *   thing_bench takeover --uri URI --kind singleton|lock [--lease MS]
 *                        [--rounds N]
 *     a holder process (this program, "hold") takes the role or the lock
 *     and renews it; it is killed -9, and the time until a waiting member
 *     here has it is measured, N times. One JSON line.
 *   thing_bench hold --uri URI --kind singleton|lock --lease MS
 *     (the holder: says "held" on stdout, renews until killed)
 */
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "thing.h"

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "thing_bench: %s: %s (%s)\n", what, thing_strerror(rc), grid_last_error());
  exit(1);
}

typedef struct samples {
  int64_t *ns;
  size_t n, cap;
} samples_t;

static void sample_add(samples_t *s, int64_t ns) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    s->ns = realloc(s->ns, s->cap * sizeof *s->ns);
    if (!s->ns) die("memory", GRID_ENOMEM);
  }
  s->ns[s->n++] = ns;
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(samples_t *s, double p) {
  if (!s->n) return 0;
  size_t i = (size_t)(p * (double)(s->n - 1));
  return (double)s->ns[i] / 1000.0;
}

static grid_t *g;
static uint64_t local_before; /* the node's local_reads when the case began */

static uint64_t local_reads(void) {
  grid_stats_t st;
  return grid_stats(g, &st) == 0 ? st.local_reads : 0;
}

static void report(const char *label, const char *kase, samples_t *s, double seconds,
                   int threads, const char *extra) {
  qsort(s->ns, s->n, sizeof *s->ns, cmp64);
  uint64_t local = local_reads() - local_before;
  printf("{\"label\": \"%s\", \"case\": \"%s\", \"ops\": %zu, \"ops_per_s\": %.0f, "
         "\"threads\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
         "\"local_reads\": %llu%s}\n",
         label, kase, s->n, (double)s->n / seconds, threads, pct_us(s, 0.5), pct_us(s, 0.99),
         pct_us(s, 0.999), (unsigned long long)local, extra ? extra : "");
  fflush(stdout);
  local_before = local_reads();
}

/* Options of "run". */
static const char *uri = "embedded:", *config_path, *label = "";
static int seconds = 5, threads = 2, led;
static thing_store_t *ts;
static char self_id[64];

/* The i-th Thing of a family: one this handle's node leads when --led. */
static void thing_name(const char *family, int i, char *out, size_t len) {
  for (int k = 0;; k++) {
    snprintf(out, len, "%s-%d-%d", family, i, k);
    if (!led) return;
    char key[160], owner[64];
    int n = snprintf(key, sizeof key, "{%s}", out);
    if (grid_key_owner(g, "things", key, (size_t)n, owner, sizeof owner) == 0 &&
        !strcmp(owner, self_id))
      return;
  }
}

static void case_write_read(void) {
  samples_t w = {0}, r = {0};
  char things[64][96];
  for (int i = 0; i < 64; i++) thing_name("w", i, things[i], sizeof things[i]);
  int64_t end = mono_ns() + (int64_t)seconds * 1000000000, t;
  for (int64_t i = 0; (t = mono_ns()) < end; i++) {
    thing_vtq_t v = thing_vtq_number((double)i, wall_ms(), THING_GOOD);
    int rc = thing_write_one(ts, things[i % 64], "temperature", &v, 0, NULL);
    if (rc) die("write", rc);
    sample_add(&w, mono_ns() - t);
  }
  report(label, "write", &w, seconds, 1, NULL);
  end = mono_ns() + (int64_t)seconds * 1000000000;
  for (int64_t i = 0; (t = mono_ns()) < end; i++) {
    thing_prop_t p;
    int rc = thing_read(ts, things[i % 64], "temperature", &p);
    if (rc) die("read", rc);
    thing_prop_free(&p);
    sample_add(&r, mono_ns() - t);
  }
  report(label, "read", &r, seconds, 1, NULL);
  free(w.ns);
  free(r.ns);
}

static void case_read_all(void) {
  char things[16][96];
  for (int i = 0; i < 16; i++) {
    thing_name("ra", i, things[i], sizeof things[i]);
    thing_update_t u[50];
    char names[50][16];
    for (int k = 0; k < 50; k++) {
      snprintf(names[k], sizeof names[k], "prop%02d", k);
      u[k] = (thing_update_t){.prop = names[k],
                              .vtq = thing_vtq_number(k, wall_ms(), THING_GOOD)};
    }
    int rc = thing_write(ts, things[i], u, 50, 0, NULL);
    if (rc) die("write 50", rc);
  }
  samples_t s = {0};
  int64_t end = mono_ns() + (int64_t)seconds * 1000000000, t;
  for (int64_t i = 0; (t = mono_ns()) < end; i++) {
    thing_prop_t *props;
    size_t n;
    int rc = thing_read_all(ts, things[i % 16], &props, &n);
    if (rc || n != 50) die("read_all", rc);
    thing_props_free(props, n);
    sample_add(&s, mono_ns() - t);
  }
  report(label, "read_all (50 properties)", &s, seconds, 1, NULL);
  free(s.ns);
}

typedef struct msg_worker {
  int id;
  samples_t s;
  uint64_t skipped;
} msg_worker_t;

static void *msg_main(void *arg) {
  msg_worker_t *mw = arg;
  char things[32][96];
  for (int i = 0; i < 32; i++) {
    char fam[16];
    snprintf(fam, sizeof fam, "m%d", mw->id);
    thing_name(fam, i, things[i], sizeof things[i]);
  }
  static const char *names[10] = {"temperature", "pressure", "rpm", "state", "flow",
                                  "voltage", "current", "vibration", "position", "alarm"};
  int64_t end = mono_ns() + (int64_t)seconds * 1000000000, t;
  for (int64_t i = 0; (t = mono_ns()) < end; i++) {
    int64_t now = wall_ms() * 1000 + i; /* strictly newer each message */
    thing_update_t u[10];
    for (int k = 0; k < 10; k++)
      u[k] = (thing_update_t){.prop = names[k],
                              .vtq = k == 3 ? thing_vtq_string("running", now, THING_GOOD)
                                     : k == 9 ? thing_vtq_boolean(i % 7 == 0, now, THING_GOOD)
                                              : thing_vtq_number((double)(i + k), now,
                                                                 THING_GOOD)};
    int rc = thing_write(ts, things[i % 32], u, 10, THING_IF_NEWER, NULL);
    if (rc) die("message", rc);
    for (int k = 0; k < 10; k++) mw->skipped += u[k].skipped;
    sample_add(&mw->s, mono_ns() - t);
  }
  return NULL;
}

static void case_messages(void) {
  msg_worker_t *w = calloc((size_t)threads, sizeof *w);
  pthread_t *th = calloc((size_t)threads, sizeof *th);
  for (int i = 0; i < threads; i++) {
    w[i].id = i;
    pthread_create(&th[i], NULL, msg_main, &w[i]);
  }
  samples_t all = {0};
  uint64_t skipped = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    for (size_t k = 0; k < w[i].s.n; k++) sample_add(&all, w[i].s.ns[k]);
    skipped += w[i].skipped;
    free(w[i].s.ns);
  }
  char extra[64];
  snprintf(extra, sizeof extra, ", \"skipped\": %llu", (unsigned long long)skipped);
  report(label, "device messages (10 properties, if newer)", &all, seconds, threads, extra);
  free(all.ns);
  free(w);
  free(th);
}

static void open_store(void) {
  grid_options_t o = {.timeout_ms = 10000, .config_path = config_path};
  int rc = grid_open(uri, &o, &g);
  if (rc) die("grid_open", rc);
  rc = thing_open(g, NULL, &ts);
  if (rc) die("thing_open", rc);
  grid_stats_t st;
  if (grid_stats(g, &st) == 0) snprintf(self_id, sizeof self_id, "%s", st.node_id);
  local_before = st.local_reads;
}

/* ---- takeover ---------------------------------------------------------------- */

static const char *kind = "singleton";
static int lease = 2000, rounds = 5;

static int hold(void) {
  open_store();
  if (!strcmp(kind, "lock")) {
    thing_lock_t *l;
    int rc = thing_lock(ts, "bench-lock", (uint32_t)lease, 60000, &l);
    if (rc) die("lock", rc);
    printf("held\n");
    fflush(stdout);
    for (;;) {
      usleep((useconds_t)lease * 1000 / 4);
      thing_lock_renew(l);
    }
  }
  thing_singleton_options_t o = {.name = "bench", .lease_ms = (uint32_t)lease};
  thing_singleton_t *s;
  int rc = thing_singleton_start(ts, &o, &s);
  if (rc) die("singleton", rc);
  while (!thing_singleton_held(s, NULL)) usleep(1000);
  printf("held\n");
  fflush(stdout);
  for (;;) pause();
  return 0;
}

static _Atomic int64_t gained_at;

static void on_gain(uint64_t token, void *arg) {
  (void)token;
  (void)arg;
  atomic_store(&gained_at, mono_ns());
}

static int takeover(void) {
  open_store();
  samples_t s = {0};
  for (int r = 0; r < rounds; r++) {
    int fds[2];
    if (pipe(fds) != 0) die("pipe", GRID_ENOMEM);
    pid_t pid = fork();
    if (pid == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      char lease_s[16];
      snprintf(lease_s, sizeof lease_s, "%d", lease);
      execl("/proc/self/exe", "thing_bench", "hold", "--uri", uri, "--kind", kind, "--lease",
            lease_s, (char *)NULL);
      _exit(127);
    }
    close(fds[1]);
    char line[16] = "";
    FILE *f = fdopen(fds[0], "r");
    if (!f || !fgets(line, sizeof line, f) || strncmp(line, "held", 4)) die("holder", GRID_ECONN);
    thing_singleton_t *cand = NULL;
    atomic_store(&gained_at, 0);
    if (!strcmp(kind, "singleton")) {
      thing_singleton_options_t o = {.name = "bench", .lease_ms = (uint32_t)lease,
                                     .on_gain = on_gain};
      int rc = thing_singleton_start(ts, &o, &cand);
      if (rc) die("candidate", rc);
      usleep((useconds_t)lease * 1000 / 2); /* a candidate for a while first */
    }
    int64_t t0 = mono_ns();
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fclose(f);
    if (cand) {
      while (!atomic_load(&gained_at)) usleep(1000);
      sample_add(&s, atomic_load(&gained_at) - t0);
      thing_singleton_stop(cand);
    } else {
      thing_lock_t *l;
      int rc = thing_lock(ts, "bench-lock", (uint32_t)lease, (uint32_t)lease * 5, &l);
      if (rc) die("lock after the kill", rc);
      sample_add(&s, mono_ns() - t0);
      thing_unlock(l);
    }
    fprintf(stderr, "thing_bench: takeover round %d: %.0f ms\n", r + 1,
            (double)s.ns[s.n - 1] / 1e6);
  }
  qsort(s.ns, s.n, sizeof *s.ns, cmp64);
  printf("{\"label\": \"%s\", \"case\": \"%s takeover after kill -9 (lease %d ms)\", "
         "\"rounds\": %zu, \"min_ms\": %.0f, \"median_ms\": %.0f, \"max_ms\": %.0f}\n",
         label, kind, lease, s.n, (double)s.ns[0] / 1e6, (double)s.ns[s.n / 2] / 1e6,
         (double)s.ns[s.n - 1] / 1e6);
  free(s.ns);
  return 0;
}

static void usage(void) {
  fputs("usage: thing_bench run --uri URI [--config FILE] [--seconds S] [--threads T] [--led]\n"
        "                       [--label TEXT]\n"
        "       thing_bench takeover --uri URI --kind singleton|lock [--lease MS] [--rounds N]\n"
        "       thing_bench hold --uri URI --kind singleton|lock --lease MS\n"
        "See the comment at the top of perf/thing_bench.c for what each case measures.\n",
        stderr);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const char *mode = argv[1];
  static struct option opts[] = {
      {"uri", required_argument, 0, 'u'},     {"config", required_argument, 0, 'c'},
      {"seconds", required_argument, 0, 's'}, {"threads", required_argument, 0, 't'},
      {"led", no_argument, 0, 'l'},           {"label", required_argument, 0, 'L'},
      {"kind", required_argument, 0, 'k'},    {"lease", required_argument, 0, 'e'},
      {"rounds", required_argument, 0, 'r'},  {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int c;
  optind = 2;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 'u': uri = optarg; break;
      case 'c': config_path = optarg; break;
      case 's': seconds = atoi(optarg); break;
      case 't': threads = atoi(optarg); break;
      case 'l': led = 1; break;
      case 'L': label = optarg; break;
      case 'k': kind = optarg; break;
      case 'e': lease = atoi(optarg); break;
      case 'r': rounds = atoi(optarg); break;
      case 'h': usage(); return 0;
      default: usage(); return 2;
    }
  }
  if (seconds < 1 || threads < 1 || lease < 10 || rounds < 1 ||
      (strcmp(kind, "singleton") && strcmp(kind, "lock"))) {
    fprintf(stderr, "thing_bench: bad option value (see --help)\n");
    return 2;
  }
  if (!strcmp(mode, "hold")) return hold();
  if (!strcmp(mode, "takeover")) return takeover();
  if (strcmp(mode, "run")) {
    usage();
    return 2;
  }
  open_store();
  case_write_read();
  case_read_all();
  case_messages();
  thing_close(ts);
  grid_close(g);
  return 0;
}
