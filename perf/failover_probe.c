/*
 * failover_probe: writers over a cluster while one node is killed (kill -9
 * by pid, from here, at a known instant). It reports how long writes
 * started after the kill took to be acknowledged: the longest is the
 * failover time as a client sees it (detection, new map, new primary). The
 * client library retries writes the cluster refused unrun, so a write to a
 * partition of the dead node waits through the failover and then succeeds:
 * a write started once the node is gone must not fail (target 0), with the
 * 5 s deadline of every call; writes in flight at the kill may be of
 * unknown outcome, and are counted apart.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"

#define PROBE_THREADS_MAX 64

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct probe {
  const char *uri, *cache;
  int threads, keys;
  double kill_after_s, run_after_s;
  long kill_pid;
  atomic_llong kill_at_us;   /* kill -9 sent */
  atomic_llong dead_at_us;   /* the process is gone (its sockets closed) */
  atomic_int stop;
} probe_t;

typedef struct worker {
  probe_t *pr;
  int id;
  long ok, unknown, failed;
  long after, after_failed, after_unknown; /* started once the node was gone */
  long inflight, inflight_unknown;         /* started before, answered after the kill */
  int64_t max_after_us, sum_before_us;
  long n_before;
  int first_error;                         /* of a write started after */
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  probe_t *pr = w->pr;
  grid_options_t o = {.timeout_ms = 5000, .client_name = "failover_probe"};
  grid_t *g;
  int rc = grid_open(pr->uri, &o, &g);
  if (rc) {
    fprintf(stderr, "failover_probe: cannot open %s: %s\n", pr->uri, grid_strerror(rc));
    return NULL;
  }
  for (long i = w->id; !atomic_load(&pr->stop); i += pr->threads) {
    char key[32], val[32];
    snprintf(key, sizeof key, "probe:%05ld", i % pr->keys);
    snprintf(val, sizeof val, "%ld", i);
    int64_t t0 = now_us();
    rc = grid_put(g, pr->cache, key, strlen(key), val, strlen(val), 0, NULL);
    int64_t t1 = now_us();
    long long kill = atomic_load(&pr->kill_at_us), dead = atomic_load(&pr->dead_at_us);
    if (rc == 0) w->ok++;
    else if (rc == GRID_EUNKNOWN) w->unknown++;
    else w->failed++;
    if (dead && t0 >= dead) {
      w->after++;
      if (rc != 0) {
        w->after_failed++;
        if (rc == GRID_EUNKNOWN) w->after_unknown++;
        if (!w->first_error) w->first_error = rc;
      }
      if (t1 - t0 > w->max_after_us) w->max_after_us = t1 - t0;
    } else if (kill && t1 >= kill) {
      w->inflight++;
      if (rc == GRID_EUNKNOWN) w->inflight_unknown++;
    } else if (!kill && rc == 0) {
      w->sum_before_us += t1 - t0;
      w->n_before++;
    }
  }
  grid_close(g);
  return NULL;
}

/* Waits until pid has exited (its sockets are closed by then): through a
 * pidfd, which becomes readable at the exit. 0, or -1 when it cannot tell. */
static int wait_gone(long pid, int timeout_ms) {
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) return errno == ESRCH ? 0 : -1;
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int rc = poll(&pfd, 1, timeout_ms) == 1 ? 0 : -1;
  close(fd);
  return rc;
}

static void usage(FILE *f) {
  fprintf(f, "usage: failover_probe --uri grid://h:p[,h:p...] --kill-pid PID [options]\n"
             "  --cache NAME        cache written (default \"default\")\n"
             "  --threads N         writers, one connection each (default 4)\n"
             "  --keys N            keys written round-robin (default 4096)\n"
             "  --kill-after-s S    kill -9 PID after S seconds (default 2)\n"
             "  --run-after-s S     keep writing S seconds after the kill (default 5)\n"
             "  --json              one JSON object on stdout\n");
}

int main(int argc, char **argv) {
  probe_t pr = {.cache = "default", .threads = 4, .keys = 4096, .kill_after_s = 2,
                .run_after_s = 5};
  int json = 0;
  static const struct option opts[] = {
      {"uri", 1, 0, 'u'}, {"cache", 1, 0, 'c'}, {"threads", 1, 0, 't'}, {"keys", 1, 0, 'k'},
      {"kill-pid", 1, 0, 'p'}, {"kill-after-s", 1, 0, 'a'}, {"run-after-s", 1, 0, 'r'},
      {"json", 0, 0, 'j'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (opt) {
      case 'u': pr.uri = optarg; break;
      case 'c': pr.cache = optarg; break;
      case 't': pr.threads = atoi(optarg); break;
      case 'k': pr.keys = atoi(optarg); break;
      case 'p': pr.kill_pid = atol(optarg); break;
      case 'a': pr.kill_after_s = atof(optarg); break;
      case 'r': pr.run_after_s = atof(optarg); break;
      case 'j': json = 1; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (!pr.uri || pr.kill_pid <= 0 || pr.threads < 1 || pr.threads > PROBE_THREADS_MAX ||
      pr.keys < 1 || pr.kill_after_s < 0 || pr.run_after_s <= 0) {
    usage(stderr);
    return 2;
  }
  worker_t w[PROBE_THREADS_MAX] = {0};
  pthread_t t[PROBE_THREADS_MAX];
  for (int i = 0; i < pr.threads; i++) {
    w[i].pr = &pr;
    w[i].id = i;
    pthread_create(&t[i], NULL, worker_main, &w[i]);
  }
  struct timespec ts = {(time_t)pr.kill_after_s, (long)((pr.kill_after_s - (time_t)pr.kill_after_s) * 1e9)};
  nanosleep(&ts, NULL);
  atomic_store(&pr.kill_at_us, now_us());
  if (kill((pid_t)pr.kill_pid, SIGKILL) != 0) {
    fprintf(stderr, "failover_probe: kill %ld: %s\n", pr.kill_pid, strerror(errno));
    atomic_store(&pr.stop, 1);
  } else if (wait_gone(pr.kill_pid, 5000) != 0) {
    fprintf(stderr, "failover_probe: cannot tell when pid %ld exited\n", pr.kill_pid);
  }
  atomic_store(&pr.dead_at_us, now_us());
  fprintf(stderr, "failover_probe: killed pid %ld, writing on\n", pr.kill_pid);
  ts = (struct timespec){(time_t)pr.run_after_s, (long)((pr.run_after_s - (time_t)pr.run_after_s) * 1e9)};
  nanosleep(&ts, NULL);
  atomic_store(&pr.stop, 1);
  long ok = 0, unknown = 0, failed = 0, after = 0, after_failed = 0, after_unknown = 0;
  long inflight = 0, inflight_unknown = 0, n_before = 0;
  int64_t max_after = 0, sum_before = 0;
  int first_error = 0;
  for (int i = 0; i < pr.threads; i++) {
    pthread_join(t[i], NULL);
    ok += w[i].ok;
    unknown += w[i].unknown;
    failed += w[i].failed;
    after += w[i].after;
    after_failed += w[i].after_failed;
    after_unknown += w[i].after_unknown;
    inflight += w[i].inflight;
    inflight_unknown += w[i].inflight_unknown;
    n_before += w[i].n_before;
    sum_before += w[i].sum_before_us;
    if (w[i].max_after_us > max_after) max_after = w[i].max_after_us;
    if (!first_error) first_error = w[i].first_error;
  }
  double mean_before = n_before ? (double)sum_before / n_before : 0;
  if (json) {
    printf("{\"failover_ms\":%.1f,\"writes_ok\":%ld,\"writes_unknown\":%ld,\"writes_failed\":%ld,"
           "\"writes_after_kill\":%ld,\"after_kill_failed\":%ld,\"after_kill_unknown\":%ld,"
           "\"inflight_at_kill\":%ld,\"inflight_unknown\":%ld,\"mean_write_before_kill_us\":%.1f}\n",
           max_after / 1000.0, ok, unknown, failed, after, after_failed, after_unknown, inflight,
           inflight_unknown, mean_before);
  } else {
    printf("writes started after the kill: %ld, failed %ld (of which unknown %ld)%s%s\n", after,
           after_failed, after_unknown, first_error ? "; first error: " : "",
           first_error ? grid_err_name(first_error) : "");
    printf("longest wait of a write started after the kill: %.1f ms\n", max_after / 1000.0);
    printf("in flight at the kill: %ld, of which unknown %ld\n", inflight, inflight_unknown);
    printf("writes: %ld acknowledged, %ld unknown outcome, %ld refused\n", ok, unknown, failed);
    printf("mean write before the kill: %.1f us\n", mean_before);
  }
  return 0;
}
