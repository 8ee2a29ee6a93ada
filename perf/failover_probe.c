/*
 * failover_probe: writers over a cluster while one node is killed (kill -9
 * by pid, from here, at a known instant). It reports how long writes
 * started after the kill took to be acknowledged: the longest is the
 * failover time as a client sees it (detection, new map, new primary). The
 * client library retries writes the cluster refused unrun, so a write to a
 * partition of the dead node waits through the failover and then succeeds.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
  atomic_llong kill_at_us;
  atomic_int stop;
} probe_t;

typedef struct worker {
  probe_t *pr;
  int id;
  long ok, unknown, failed, after_kill;
  int64_t max_after_kill_us, sum_before_us;
  long n_before;
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  probe_t *pr = w->pr;
  grid_options_t o = {.timeout_ms = 10000, .client_name = "failover_probe"};
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
    int64_t dt = now_us() - t0;
    long long kill = atomic_load(&pr->kill_at_us);
    if (rc == 0) w->ok++;
    else if (rc == GRID_EUNKNOWN) w->unknown++;
    else w->failed++;
    if (kill && t0 >= kill) {
      w->after_kill++;
      if (rc == 0 && dt > w->max_after_kill_us) w->max_after_kill_us = dt;
    } else if (!kill && rc == 0) {
      w->sum_before_us += dt;
      w->n_before++;
    }
  }
  grid_close(g);
  return NULL;
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
  }
  fprintf(stderr, "failover_probe: killed pid %ld, writing on\n", pr.kill_pid);
  ts = (struct timespec){(time_t)pr.run_after_s, (long)((pr.run_after_s - (time_t)pr.run_after_s) * 1e9)};
  nanosleep(&ts, NULL);
  atomic_store(&pr.stop, 1);
  long ok = 0, unknown = 0, failed = 0, after = 0, n_before = 0;
  int64_t max_after = 0, sum_before = 0;
  for (int i = 0; i < pr.threads; i++) {
    pthread_join(t[i], NULL);
    ok += w[i].ok;
    unknown += w[i].unknown;
    failed += w[i].failed;
    after += w[i].after_kill;
    n_before += w[i].n_before;
    sum_before += w[i].sum_before_us;
    if (w[i].max_after_kill_us > max_after) max_after = w[i].max_after_kill_us;
  }
  double mean_before = n_before ? (double)sum_before / n_before : 0;
  if (json) {
    printf("{\"failover_ms\":%.1f,\"writes_ok\":%ld,\"writes_unknown\":%ld,\"writes_failed\":%ld,"
           "\"writes_after_kill\":%ld,\"mean_write_before_kill_us\":%.1f}\n",
           max_after / 1000.0, ok, unknown, failed, after, mean_before);
  } else {
    printf("failover (longest acknowledged write started after the kill): %.1f ms\n", max_after / 1000.0);
    printf("writes: %ld acknowledged, %ld unknown outcome, %ld refused; %ld started after the kill\n",
           ok, unknown, failed, after);
    printf("mean write before the kill: %.1f us\n", mean_before);
  }
  return 0;
}
