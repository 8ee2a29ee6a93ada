/*
 * events_probe: change-stream latency, grid against Redis keyspace
 * notifications, measured the same way for both.
 *
 * A writer issues writes at a fixed rate (paced every millisecond; grid:
 * asynchronous puts through one handle, Redis: SET pipelined on one
 * connection), each to key "ev:<seq>". A subscriber (grid: grid_subscribe
 * with a callback, over the node given by --sub; Redis: PSUBSCRIBE to
 * __keyspace@0__:ev:* on a redis-server with notify-keyspace-events KA)
 * records when each seq's event arrives. The latency of a write is from
 * its acknowledgement reaching the writer to its event reaching the
 * subscriber (0 when the event came first), and from the write's start.
 * Optionally a process is killed with SIGKILL partway (--kill-pid): then
 * the writes acknowledged with no event are counted (grid: 0 expected).
 *
 * One line of JSON per run on stdout.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const char *arg) {
  fprintf(stderr, "events_probe: %s%s\n", what, arg);
  exit(2);
}

static struct {
  const char *grid_writer, *grid_sub, *redis;
  const char *cache;
  long rate, seconds;
  pid_t kill_pid;
  double kill_after_s;
  double redis_drop_after_s;     /* the Redis subscriber reconnects then */
} cfg = {.cache = "events", .rate = 1000, .seconds = 10};

static long total;               /* writes to make */
static _Atomic int64_t *t_start, *t_ack, *t_event;
static atomic_long acked, failed, events, repeats;

static long seq_of(const void *key, size_t len) {
  if (len < 4 || memcmp(key, "ev:", 3) != 0) return -1;
  char buf[32];
  if (len - 3 >= sizeof buf) return -1;
  memcpy(buf, (const char *)key + 3, len - 3);
  buf[len - 3] = '\0';
  long s = atol(buf);
  return s >= 0 && s < total ? s : -1;
}

static void saw_event(long seq) {
  if (seq < 0) return;
  int64_t zero = 0;
  if (atomic_compare_exchange_strong(&t_event[seq], &zero, now_ns())) atomic_fetch_add(&events, 1);
  else atomic_fetch_add(&repeats, 1);
}

/* Sleeps until t (monotonic ns). */
static void sleep_until(int64_t t) {
  int64_t d = t - now_ns();
  if (d <= 0) return;
  struct timespec ts = {d / 1000000000, d % 1000000000};
  nanosleep(&ts, NULL);
}

static void *killer_main(void *arg) {
  (void)arg;
  sleep_until(now_ns() + (int64_t)(cfg.kill_after_s * 1e9));
  fprintf(stderr, "events_probe: kill -9 %d\n", (int)cfg.kill_pid);
  kill(cfg.kill_pid, SIGKILL);
  return NULL;
}

/* ---- grid ------------------------------------------------------------------- */

static void grid_on_event(const grid_event_t *ev, void *arg) {
  (void)arg;
  if (ev->kind == GRID_EVENT_PUT) saw_event(seq_of(ev->key, ev->key_len));
}

static void grid_on_put(int status, uint64_t version, void *arg) {
  (void)version;
  long seq = (long)(intptr_t)arg;
  if (status == 0) {
    atomic_store(&t_ack[seq], now_ns());
    atomic_fetch_add(&acked, 1);
  } else {
    atomic_fetch_add(&failed, 1);
  }
}

static void run_grid(void) {
  grid_options_t o = {.timeout_ms = 10000, .client_name = "events_probe", .async_max = 65536};
  grid_t *w, *s;
  if (grid_open(cfg.grid_writer, &o, &w) != 0) die("cannot open ", cfg.grid_writer);
  if (grid_open(cfg.grid_sub, &o, &s) != 0) die("cannot open ", cfg.grid_sub);
  grid_cache_config_t cc = {.name = cfg.cache, .backups = 1};
  int rc = grid_cache_create(w, &cc);
  if (rc != 0 && rc != GRID_ECACHEEXISTS) die("cannot create the cache: ", grid_strerror(rc));
  grid_sub_options_t so = {.keys_only = 1, .callback = grid_on_event};
  grid_sub_t *sub = NULL;
  for (int i = 0; i < 50 && (rc = grid_subscribe(s, cfg.cache, &so, &sub)) != 0; i++)
    usleep(100000);
  if (rc != 0) die("cannot subscribe: ", grid_last_error());
  pthread_t killer;
  if (cfg.kill_pid) pthread_create(&killer, NULL, killer_main, NULL);
  int64_t t0 = now_ns();
  long per_ms = cfg.rate / 1000 ? cfg.rate / 1000 : 1;
  int64_t step = cfg.rate >= 1000 ? 1000000 : 1000000000 / cfg.rate;
  for (long seq = 0, tick = 0; seq < total; tick++) {
    sleep_until(t0 + tick * step);
    for (long k = 0; k < per_ms && seq < total; k++, seq++) {
      char key[32];
      int n = snprintf(key, sizeof key, "ev:%ld", seq);
      atomic_store(&t_start[seq], now_ns());
      if (grid_put_async(w, cfg.cache, key, (size_t)n, "x", 1, 0, grid_on_put,
                         (void *)(intptr_t)seq) != 0)
        atomic_fetch_add(&failed, 1);
    }
  }
  /* Every acknowledged write's event, or 10 s. */
  int64_t until = now_ns() + 10000000000LL;
  while (now_ns() < until &&
         atomic_load(&acked) + atomic_load(&failed) < total) usleep(10000);
  while (now_ns() < until && atomic_load(&events) < atomic_load(&acked)) usleep(10000);
  usleep(200000);
  if (cfg.kill_pid) pthread_join(killer, NULL);
  grid_unsubscribe(sub);
  grid_close(s);
  grid_close(w);
}

/* ---- Redis ------------------------------------------------------------------ */

static int redis_connect(void) {
  char host[256];
  snprintf(host, sizeof host, "%s", cfg.redis);
  char *colon = strrchr(host, ':');
  if (!colon) die("--redis wants HOST:PORT, not ", cfg.redis);
  *colon = '\0';
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0) die("cannot resolve ", cfg.redis);
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) die("cannot connect to ", cfg.redis);
  freeaddrinfo(res);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

/* A buffered reader of lines. */
typedef struct rd {
  int fd;
  char buf[65536];
  size_t len, off;
} rd_t;

static int rd_line(rd_t *r, char *out, size_t cap) {
  for (;;) {
    char *nl = memchr(r->buf + r->off, '\n', r->len - r->off);
    if (nl) {
      size_t n = (size_t)(nl - (r->buf + r->off)) + 1;
      size_t c = n < cap ? n : cap - 1;
      memcpy(out, r->buf + r->off, c);
      out[c] = '\0';
      r->off += n;
      return 0;
    }
    if (r->off) {
      memmove(r->buf, r->buf + r->off, r->len - r->off);
      r->len -= r->off;
      r->off = 0;
    }
    if (r->len == sizeof r->buf) return -1;
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);
    if (n <= 0) return -1;
    r->len += (size_t)n;
  }
}

static atomic_int redis_done;

static void *redis_acks_main(void *arg) {
  rd_t *r = arg;
  char line[256];
  for (long seq = 0; seq < total; seq++) {
    if (rd_line(r, line, sizeof line) != 0) break;
    if (line[0] == '+') {
      atomic_store(&t_ack[seq], now_ns());
      atomic_fetch_add(&acked, 1);
    } else {
      atomic_fetch_add(&failed, 1);
    }
  }
  return NULL;
}

/* notify-keyspace-events KA publishes on the keyspace channels only:
 * the subscriber follows __keyspace@0__:ev:* (the key is in the channel). */
static const char *redis_subscribe_cmd =
    "*2\r\n$10\r\nPSUBSCRIBE\r\n$19\r\n__keyspace@0__:ev:*\r\n";

static void redis_subscribe(rd_t *r) {
  r->len = r->off = 0;
  send_all(r->fd, redis_subscribe_cmd, strlen(redis_subscribe_cmd));
  char line[256];
  for (int i = 0; i < 6; i++)
    if (rd_line(r, line, sizeof line) != 0) die("SUBSCRIBE failed on ", cfg.redis);
}

static void *redis_sub_main(void *arg) {
  rd_t *r = arg;
  char line[256];
  /* *4 $8 pmessage $19 __keyspace@0__:ev:* $N __keyspace@0__:ev:<seq> $3 set */
  while (!atomic_load(&redis_done)) {
    if (rd_line(r, line, sizeof line) != 0) {
      if (atomic_load(&redis_done)) break;
      /* Dropped (--redis-drop-after-s): a subscriber reconnects at once,
       * as a client library would. */
      close(r->fd);
      r->fd = redis_connect();
      redis_subscribe(r);
      fprintf(stderr, "events_probe: the Redis subscriber reconnected\n");
      continue;
    }
    static const char chan[] = "__keyspace@0__:ev:";
    if (strncmp(line, chan, sizeof chan - 1) == 0 && line[sizeof chan - 1] != '*') {
      const char *key = line + sizeof chan - 1 - 3;
      saw_event(seq_of(key, strcspn(key, "\r\n")));
    }
  }
  return NULL;
}

static rd_t redis_sr;

static void *redis_dropper_main(void *arg) {
  (void)arg;
  sleep_until(now_ns() + (int64_t)(cfg.redis_drop_after_s * 1e9));
  fprintf(stderr, "events_probe: dropping the Redis subscriber's connection\n");
  shutdown(redis_sr.fd, SHUT_RDWR);
  return NULL;
}

static void run_redis(void) {
  static rd_t wr;
  rd_t *sr = &redis_sr;
  wr.fd = redis_connect();
  sr->fd = redis_connect();
  redis_subscribe(sr);
  pthread_t acks, subt, killer, dropper;
  pthread_create(&acks, NULL, redis_acks_main, &wr);
  pthread_create(&subt, NULL, redis_sub_main, sr);
  if (cfg.kill_pid) pthread_create(&killer, NULL, killer_main, NULL);
  if (cfg.redis_drop_after_s > 0) pthread_create(&dropper, NULL, redis_dropper_main, NULL);
  int64_t t0 = now_ns();
  long per_ms = cfg.rate / 1000 ? cfg.rate / 1000 : 1;
  int64_t step = cfg.rate >= 1000 ? 1000000 : 1000000000 / cfg.rate;
  char cmd[65536];
  for (long seq = 0, tick = 0; seq < total; tick++) {
    sleep_until(t0 + tick * step);
    size_t len = 0;
    for (long k = 0; k < per_ms && seq < total; k++, seq++) {
      char key[32];
      int n = snprintf(key, sizeof key, "ev:%ld", seq);
      atomic_store(&t_start[seq], now_ns());
      len += (size_t)snprintf(cmd + len, sizeof cmd - len, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nx\r\n",
                              n, key);
    }
    send_all(wr.fd, cmd, len);
  }
  int64_t until = now_ns() + 10000000000LL;
  while (now_ns() < until && atomic_load(&acked) + atomic_load(&failed) < total) usleep(10000);
  while (now_ns() < until && atomic_load(&events) < atomic_load(&acked)) usleep(10000);
  usleep(200000);
  if (cfg.redis_drop_after_s > 0) pthread_join(dropper, NULL);
  atomic_store(&redis_done, 1);
  shutdown(sr->fd, SHUT_RDWR);
  shutdown(wr.fd, SHUT_RDWR);
  pthread_join(subt, NULL);
  pthread_join(acks, NULL);
  if (cfg.kill_pid) pthread_join(killer, NULL);
  close(sr->fd);
  close(wr.fd);
}

/* ---- results ----------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(const int64_t *v, long n, double p) {
  if (!n) return 0;
  long i = (long)(p * (double)(n - 1));
  return (double)v[i] / 1000.0;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("usage: events_probe (--grid-writer URI --grid-sub URI | --redis HOST:PORT)\n"
             "                    [--cache NAME] [--rate N] [--seconds N]\n"
             "                    [--kill-pid PID --kill-after-s S] [--redis-drop-after-s S]\n"
             "Writes at N per second to keys ev:<seq> and measures, for each, the time\n"
             "from its acknowledgement (and from its start) to its change event at a\n"
             "subscriber: grid_subscribe, or Redis keyspace notifications\n"
             "(PSUBSCRIBE __keyspace@0__:ev:*, the server needs notify-keyspace-events KA).\n"
             "--kill-pid kills that process with SIGKILL after S seconds; acknowledged\n"
             "writes with no event are then counted. --redis-drop-after-s S drops the\n"
             "Redis subscriber's connection after S seconds (it reconnects at once).\n"
             "Prints one JSON line.\n");
      return 0;
    }
    if (!v) die("a value is needed after ", a);
    if (!strcmp(a, "--grid-writer")) cfg.grid_writer = v;
    else if (!strcmp(a, "--grid-sub")) cfg.grid_sub = v;
    else if (!strcmp(a, "--redis")) cfg.redis = v;
    else if (!strcmp(a, "--cache")) cfg.cache = v;
    else if (!strcmp(a, "--rate")) cfg.rate = atol(v);
    else if (!strcmp(a, "--seconds")) cfg.seconds = atol(v);
    else if (!strcmp(a, "--kill-pid")) cfg.kill_pid = (pid_t)atol(v);
    else if (!strcmp(a, "--kill-after-s")) cfg.kill_after_s = atof(v);
    else if (!strcmp(a, "--redis-drop-after-s")) cfg.redis_drop_after_s = atof(v);
    else die("unknown option (see --help): ", a);
    i++;
  }
  if (!cfg.redis && (!cfg.grid_writer || !cfg.grid_sub))
    die("give --redis HOST:PORT, or --grid-writer and --grid-sub URIs", "");
  if (cfg.rate < 1 || cfg.rate > 1000000 || cfg.seconds < 1) die("bad --rate or --seconds", "");
  total = cfg.rate * cfg.seconds;
  t_start = calloc((size_t)total, sizeof *t_start);
  t_ack = calloc((size_t)total, sizeof *t_ack);
  t_event = calloc((size_t)total, sizeof *t_event);
  if (!t_start || !t_ack || !t_event) die("out of memory", "");
  if (cfg.redis) run_redis();
  else run_grid();

  int64_t *from_ack = malloc((size_t)total * sizeof *from_ack);
  int64_t *from_start = malloc((size_t)total * sizeof *from_start);
  long n = 0, lost = 0;
  for (long i = 0; i < total; i++) {
    int64_t a = atomic_load(&t_ack[i]), e = atomic_load(&t_event[i]);
    if (!a) continue;
    if (!e) {
      lost++;
      continue;
    }
    from_ack[n] = e > a ? e - a : 0;
    from_start[n] = e - atomic_load(&t_start[i]);
    n++;
  }
  qsort(from_ack, (size_t)n, sizeof *from_ack, cmp_i64);
  qsort(from_start, (size_t)n, sizeof *from_start, cmp_i64);
  printf("{\"system\":\"%s\",\"rate\":%ld,\"writes\":%ld,\"acked\":%ld,\"failed\":%ld,"
         "\"events\":%ld,\"repeats\":%ld,\"acked_without_event\":%ld,"
         "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
         "\"p50_from_start_us\":%.1f,\"p99_from_start_us\":%.1f}\n",
         cfg.redis ? "redis" : "grid", cfg.rate, total, atomic_load(&acked), atomic_load(&failed),
         atomic_load(&events), atomic_load(&repeats), lost, pct(from_ack, n, 0.5),
         pct(from_ack, n, 0.99), pct(from_ack, n, 0.999), pct(from_start, n, 0.5),
         pct(from_start, n, 0.99));
  return 0;
}
