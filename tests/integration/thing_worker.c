/*
 * thing_worker: one member of foundation-shim's lock and singleton checks,
 * a process of its own so that a test can kill -9 or SIGSTOP it. It logs
 * what it did, one line per write(2) on an O_APPEND file (CLOCK_MONOTONIC
 * microseconds, shared by every process of the machine):
 *
 *   thing_worker lock URI THING LEASE_MS HOLD_MS SECONDS LOG
 *     loops: lock THING (waiting), "holding T TOKEN", sleeps HOLD_MS, reads
 *     property "n", writes n+1 fenced by the grant: "wrote N TOKEN", or
 *     "fenced TOKEN" when the grant was no longer the lock's; unlocks.
 *   thing_worker singleton URI LEASE_MS SECONDS LOG
 *     a candidate for the role; samples thing_singleton_held every 2 ms:
 *     "gain T TOKEN" at the first sample that holds it, "lose T TOKEN"
 *     with T the last sample that did.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "thing.h"

static int log_fd = -1;

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void say(const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  if (write(log_fd, line, (size_t)n) != n) _exit(3);
}

static void sleep_ms(int ms) {
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

static int run_lock(thing_store_t *ts, const char *thing, uint32_t lease, int hold,
                    int seconds) {
  int64_t end = mono_us() + (int64_t)seconds * 1000000;
  while (mono_us() < end) {
    thing_lock_t *l;
    int rc = thing_lock(ts, thing, lease, 5000, &l);
    if (rc != 0) {
      say("nolock %d %s", rc, grid_last_error());
      continue;
    }
    uint64_t token = thing_lock_token(l);
    say("holding %lld %llu", (long long)mono_us(), (unsigned long long)token);
    sleep_ms(hold);
    thing_prop_t p;
    int64_t n = 0;
    rc = thing_read(ts, thing, "n", &p);
    if (rc == 0) {
      n = p.vtq.value.u.integer;
      thing_prop_free(&p);
    }
    if (rc == 0 || rc == GRID_ENOTFOUND) {
      thing_update_t u = {.prop = "n", .vtq = thing_vtq_integer(n + 1, mono_us(), THING_GOOD)};
      thing_fence_t f = {token};
      rc = thing_write(ts, thing, &u, 1, 0, &f);
      if (rc == 0) say("wrote %lld %llu", (long long)(n + 1), (unsigned long long)token);
      else if (rc == THING_EFENCED) say("fenced %llu", (unsigned long long)token);
      else say("error %d %s", rc, grid_last_error());
    } else {
      say("readerror %d %s", rc, grid_last_error());
    }
    thing_unlock(l);
  }
  say("end");
  return 0;
}

static int run_singleton(thing_store_t *ts, uint32_t lease, int seconds) {
  thing_singleton_options_t o = {.lease_ms = lease};
  thing_singleton_t *s;
  int rc = thing_singleton_start(ts, &o, &s);
  if (rc != 0) {
    say("start %d", rc);
    return 1;
  }
  int64_t end = mono_us() + (int64_t)seconds * 1000000, last_held = 0;
  uint64_t held_token = 0;
  while (mono_us() < end) {
    uint64_t token;
    int64_t t = mono_us();
    bool held = thing_singleton_held(s, &token);
    if (held && !held_token) say("gain %lld %llu", (long long)t, (unsigned long long)token);
    if (held) last_held = t;
    if (!held && held_token)
      say("lose %lld %llu", (long long)last_held, (unsigned long long)held_token);
    held_token = held ? token : 0;
    sleep_ms(2);
  }
  if (held_token) say("lose %lld %llu", (long long)last_held, (unsigned long long)held_token);
  thing_singleton_stop(s);
  say("end");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fprintf(stderr,
            "usage: thing_worker lock URI THING LEASE_MS HOLD_MS SECONDS LOG\n"
            "       thing_worker singleton URI LEASE_MS SECONDS LOG\n");
    return argc < 2 ? 2 : 0;
  }
  int lock = !strcmp(argv[1], "lock");
  if ((lock && argc != 8) || (!lock && (strcmp(argv[1], "singleton") || argc != 6))) {
    fprintf(stderr, "thing_worker: bad arguments (see --help)\n");
    return 2;
  }
  log_fd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log_fd < 0) return 2;
  grid_t *g;
  grid_options_t go = {.timeout_ms = 3000};
  int rc = grid_open(argv[2], &go, &g);
  if (rc != 0) {
    say("open %d", rc);
    return 1;
  }
  thing_options_t to = {.create_cache = 0};
  thing_store_t *ts;
  if ((rc = thing_open(g, &to, &ts)) != 0) {
    say("thing_open %d", rc);
    return 1;
  }
  rc = lock ? run_lock(ts, argv[3], (uint32_t)atoi(argv[4]), atoi(argv[5]), atoi(argv[6]))
            : run_singleton(ts, (uint32_t)atoi(argv[3]), atoi(argv[4]));
  thing_close(ts);
  grid_close(g);
  return rc;
}
