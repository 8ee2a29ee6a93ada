/*
 * test_thing_cluster: foundation-shim on a 3-node cluster of real gridd
 * processes and a real ZooKeeper.
 *
 * 1. A Thing's batch of 20 properties is seen whole by readers on other
 *    handles while it is written over and over.
 * 2. DataChange subscriptions, one per node: every acknowledged change
 *    arrives once, in order, with its old value, through a kill -9 of a
 *    node.
 * 3. A Thing's lock: three worker processes increment a counter under it,
 *    one paused (SIGSTOP) past its lease while holding it, one killed -9
 *    while holding it: no two grants write the same count, tokens grow
 *    with the count, no increment is lost, the paused holder's late write
 *    is refused.
 * 4. The singleton: three worker processes; the holder is killed -9, the
 *    next paused past its lease: never two holders at once (their own
 *    view, sampled), tokens grow with each grant; the takeover time is
 *    printed (not asserted).
 */
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"
#include "thing.h"

extern char **environ;

static harness_zk_t zk;
static harness_node_t nodes[3];
static char uris[3][256]; /* every node, each list starting at another */

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void open_store(int seed, grid_t **g, thing_store_t **ts) {
  grid_options_t o = {.timeout_ms = 5000};
  CHECK_RC(grid_open(uris[seed], &o, g), 0);
  CHECK_RC(thing_open(*g, NULL, ts), 0);
}

/* ---- 1. batches seen whole ------------------------------------------------ */

#define BATCH_PROPS 20

typedef struct reader {
  int seed;
  _Atomic int *stop;
  int reads, torn, partial;
} reader_t;

static void *reader_main(void *arg) {
  reader_t *r = arg;
  grid_t *g;
  thing_store_t *ts;
  open_store(r->seed, &g, &ts);
  while (!atomic_load(r->stop)) {
    thing_prop_t *props;
    size_t n;
    if (thing_read_all(ts, "press-1", &props, &n) != 0) continue;
    if (n != 0 && n != BATCH_PROPS) r->partial++;
    for (size_t i = 1; i < n; i++)
      if (props[i].vtq.value.u.integer != props[0].vtq.value.u.integer) r->torn++;
    r->reads++;
    thing_props_free(props, n);
  }
  thing_close(ts);
  grid_close(g);
  return NULL;
}

static void test_batches_whole(void) {
  grid_t *g;
  thing_store_t *ts;
  open_store(0, &g, &ts);
  _Atomic int stop = 0;
  reader_t readers[2] = {{.seed = 1, .stop = &stop}, {.seed = 2, .stop = &stop}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, reader_main, &readers[i]) == 0);
  thing_update_t u[BATCH_PROPS];
  char names[BATCH_PROPS][16];
  for (int round = 1; round <= 400; round++) {
    for (int i = 0; i < BATCH_PROPS; i++) {
      snprintf(names[i], sizeof names[i], "p%02d", i);
      u[i] = (thing_update_t){.prop = names[i],
                              .vtq = thing_vtq_integer(round, round, THING_GOOD)};
    }
    CHECK_RC(thing_write(ts, "press-1", u, BATCH_PROPS, 0, NULL), 0);
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  fprintf(stderr, "batches: reads %d and %d, torn %d, partial %d\n", readers[0].reads,
          readers[1].reads, readers[0].torn + readers[1].torn,
          readers[0].partial + readers[1].partial);
  CHECK(readers[0].reads > 0 && readers[1].reads > 0);
  CHECK_EQ(readers[0].torn + readers[1].torn, 0);
  CHECK_EQ(readers[0].partial + readers[1].partial, 0);
  thing_close(ts);
  grid_close(g);
}

/* ---- 2. subscriptions through kill -9 -------------------------------------- */

#define SUB_THINGS 4
#define SUB_PROPS 5
#define SUB_KEYS (SUB_THINGS * SUB_PROPS)
#define SUB_SEQ_MAX 100000

typedef struct prop_log {
  int64_t last;                 /* the last new value received */
  int n;
  int out_of_order, bad_old;
  unsigned char *got;           /* got[v]: times value v arrived */
} prop_log_t;

typedef struct sub_state {
  pthread_mutex_t mu;
  prop_log_t props[SUB_KEYS];
} sub_state_t;

static int key_index(const char *thing, const char *prop) {
  int t, p;
  if (sscanf(thing, "dev-%d", &t) != 1 || sscanf(prop, "v%d", &p) != 1) return -1;
  if (t < 0 || t >= SUB_THINGS || p < 0 || p >= SUB_PROPS) return -1;
  return t * SUB_PROPS + p;
}

static void sub_on_change(const thing_change_t *ch, void *arg) {
  sub_state_t *s = arg;
  int k = key_index(ch->thing, ch->prop);
  if (k < 0 || !ch->new_vtq) return;
  int64_t v = ch->new_vtq->value.u.integer;
  pthread_mutex_lock(&s->mu);
  prop_log_t *pl = &s->props[k];
  if (v <= pl->last) pl->out_of_order++;
  if (!ch->old_vtq || ch->old_vtq->value.u.integer != pl->last) pl->bad_old++;
  if (v >= 0 && v < SUB_SEQ_MAX) pl->got[v]++;
  pl->last = v;
  pl->n++;
  pthread_mutex_unlock(&s->mu);
}

typedef struct writer {
  thing_store_t *ts;
  _Atomic int stop;
  int64_t next[SUB_KEYS];       /* the next value of each property */
  unsigned char *acked[SUB_KEYS], *unknown[SUB_KEYS];
  _Atomic int writes;
  int failures;
} writer_t;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  for (int i = 0; !atomic_load(&w->stop); i++) {
    int k = i % SUB_KEYS;
    char thing[16], prop[16];
    snprintf(thing, sizeof thing, "dev-%d", k / SUB_PROPS);
    snprintf(prop, sizeof prop, "v%d", k % SUB_PROPS);
    int64_t v = w->next[k]++;
    if (v >= SUB_SEQ_MAX) break;
    thing_vtq_t vtq = thing_vtq_integer(v, v, THING_GOOD);
    int rc = thing_write_one(w->ts, thing, prop, &vtq, 0, NULL);
    if (rc == 0) w->acked[k][v] = 1;
    else w->unknown[k][v] = 1, w->failures++;
    w->writes++;
  }
  return NULL;
}

static void test_subscriptions_through_kill(void) {
  grid_t *g;
  thing_store_t *ts;
  open_store(0, &g, &ts);
  /* Every property exists (value 0) before anyone subscribes. */
  for (int k = 0; k < SUB_KEYS; k++) {
    char thing[16], prop[16];
    snprintf(thing, sizeof thing, "dev-%d", k / SUB_PROPS);
    snprintf(prop, sizeof prop, "v%d", k % SUB_PROPS);
    thing_vtq_t vtq = thing_vtq_integer(0, 0, THING_GOOD);
    CHECK_RC(thing_write_one(ts, thing, prop, &vtq, 0, NULL), 0);
  }
  static sub_state_t states[3];
  grid_t *sg[3];
  thing_store_t *sts[3];
  thing_sub_t *subs[3];
  const char *things[SUB_THINGS] = {"dev-0", "dev-1", "dev-2", "dev-3"};
  for (int i = 0; i < 3; i++) {
    pthread_mutex_init(&states[i].mu, NULL);
    for (int k = 0; k < SUB_KEYS; k++) {
      states[i].props[k].got = calloc(SUB_SEQ_MAX, 1);
      CHECK(states[i].props[k].got != NULL);
    }
    open_store(i, &sg[i], &sts[i]);
    /* Node 0's subscriber follows every Thing; the others, the four. */
    thing_sub_options_t o = {.things = i ? things : NULL, .n_things = i ? SUB_THINGS : 0,
                             .callback = sub_on_change, .arg = &states[i]};
    CHECK_RC(thing_subscribe(sts[i], &o, &subs[i]), 0);
  }
  static writer_t w;
  memset(&w, 0, sizeof w);
  w.ts = ts;
  for (int k = 0; k < SUB_KEYS; k++) {
    w.next[k] = 1;
    w.acked[k] = calloc(SUB_SEQ_MAX, 1);
    w.unknown[k] = calloc(SUB_SEQ_MAX, 1);
  }
  pthread_t wt;
  CHECK(pthread_create(&wt, NULL, writer_main, &w) == 0);
  harness_sleep_ms(1500);
  fprintf(stderr, "subscriptions: kill -9 node 2 after %d writes\n", atomic_load(&w.writes));
  harness_kill9(&nodes[2]);
  harness_wait_settled(nodes[0].port, "things", 2);
  harness_sleep_ms(1500);
  atomic_store(&w.stop, 1);
  pthread_join(wt, NULL);
  fprintf(stderr, "subscriptions: %d writes, %d without an answer\n", w.writes, w.failures);
  CHECK(w.writes > 100);
  /* Every subscriber catches up with what the grid holds. */
  int64_t final[SUB_KEYS];
  for (int k = 0; k < SUB_KEYS; k++) {
    char thing[16], prop[16];
    snprintf(thing, sizeof thing, "dev-%d", k / SUB_PROPS);
    snprintf(prop, sizeof prop, "v%d", k % SUB_PROPS);
    thing_prop_t p;
    CHECK_RC(thing_read(ts, thing, prop, &p), 0);
    final[k] = p.vtq.value.u.integer;
    thing_prop_free(&p);
  }
  for (int i = 0; i < 3; i++) {
    int caught_up = 0;
    for (int tries = 0; tries < 3000 && !caught_up; tries++) {
      caught_up = 1;
      pthread_mutex_lock(&states[i].mu);
      for (int k = 0; k < SUB_KEYS; k++) caught_up &= states[i].props[k].last == final[k];
      pthread_mutex_unlock(&states[i].mu);
      if (!caught_up) harness_sleep_ms(10);
    }
    CHECK(caught_up);
  }
  for (int i = 0; i < 3; i++) thing_unsubscribe(subs[i]);
  /* Once each, in order, old values right, every acknowledged write there,
   * nothing that was not written. */
  for (int i = 0; i < 3; i++) {
    int delivered = 0;
    for (int k = 0; k < SUB_KEYS; k++) {
      prop_log_t *pl = &states[i].props[k];
      CHECK_EQ(pl->out_of_order, 0);
      CHECK_EQ(pl->bad_old, 0);
      for (int64_t v = 1; v < w.next[k]; v++) {
        CHECK(pl->got[v] <= 1);
        if (w.acked[k][v]) CHECK_EQ(pl->got[v], 1);
        if (pl->got[v]) CHECK(w.acked[k][v] || w.unknown[k][v]);
      }
      delivered += pl->n;
      free(pl->got);
    }
    fprintf(stderr, "subscriptions: subscriber %d got %d changes\n", i, delivered);
  }
  for (int i = 0; i < 3; i++) {
    thing_close(sts[i]);
    grid_close(sg[i]);
  }
  for (int k = 0; k < SUB_KEYS; k++) {
    free(w.acked[k]);
    free(w.unknown[k]);
  }
  thing_close(ts);
  grid_close(g);
}

/* ---- worker processes -------------------------------------------------------- */

static char logdir[] = "/tmp/test_thing_cluster.XXXXXX";

static pid_t spawn_worker(char *const argv[]) {
  pid_t pid;
  CHECK(posix_spawn(&pid, THING_WORKER_PATH, NULL, NULL, argv, environ) == 0);
  return pid;
}

/* Lines of a worker's log, read again from the start. */
static char *read_log(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return calloc(1, 1);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = calloc(1, (size_t)n + 1);
  CHECK(buf != NULL);
  if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) buf[0] = '\0';
  fclose(f);
  return buf;
}

static int count_lines(const char *path, const char *word) {
  char *buf = read_log(path);
  int n = 0;
  size_t wl = strlen(word);
  for (char *l = buf; l && *l;) {
    if (!strncmp(l, word, wl) && l[wl] == ' ') n++;
    char *nl = strchr(l, '\n');
    l = nl ? nl + 1 : NULL;
  }
  free(buf);
  return n;
}

/* Waits until the worker logs one more line starting with word. */
static void wait_line(const char *path, const char *word, int after) {
  for (int i = 0; i < 4000; i++) {
    if (count_lines(path, word) > after) return;
    harness_sleep_ms(1);
  }
  CHECK(!"a worker never logged the line waited for");
}

static int wait_exit(pid_t pid) {
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid);
  return st;
}

/* ---- 3. the lock ----------------------------------------------------------------- */

#define LOCK_WORKERS 3

static void test_lock_workers(void) {
  char logs[LOCK_WORKERS][320];
  pid_t pids[LOCK_WORKERS];
  for (int i = 0; i < LOCK_WORKERS; i++) {
    snprintf(logs[i], sizeof logs[i], "%s/lock-%d.log", logdir, i);
    char *argv[] = {"thing_worker", "lock", uris[i % 2], "counter", "1000", "60", "10",
                    logs[i], NULL};
    pids[i] = spawn_worker(argv);
  }
  /* Worker 0 is paused past its lease while it holds the lock. */
  wait_line(logs[0], "holding", 1);
  int held0 = count_lines(logs[0], "holding");
  wait_line(logs[0], "holding", held0);
  kill(pids[0], SIGSTOP);
  int64_t others = count_lines(logs[1], "wrote") + count_lines(logs[2], "wrote");
  harness_sleep_ms(2500);
  CHECK(count_lines(logs[1], "wrote") + count_lines(logs[2], "wrote") > others);
  kill(pids[0], SIGCONT);
  /* Worker 1 is killed -9 while it holds the lock. */
  int held1 = count_lines(logs[1], "holding");
  wait_line(logs[1], "holding", held1);
  kill(pids[1], SIGKILL);
  wait_exit(pids[1]);
  int wrote_at_kill = count_lines(logs[0], "wrote") + count_lines(logs[2], "wrote");
  CHECK_EQ(wait_exit(pids[0]), 0);
  CHECK_EQ(wait_exit(pids[2]), 0);
  /* The killed holder's lease ran out: the others went on. */
  CHECK(count_lines(logs[0], "wrote") + count_lines(logs[2], "wrote") > wrote_at_kill);

  /* Every write, by count. */
  int64_t max_n = 0, total = 0;
  static uint64_t token_of[100000];
  static unsigned char writer_of[100000];
  memset(token_of, 0, sizeof token_of);
  int fenced0 = 0;
  for (int i = 0; i < LOCK_WORKERS; i++) {
    char *buf = read_log(logs[i]);
    for (char *l = buf; l && *l;) {
      long long n;
      unsigned long long tok;
      if (sscanf(l, "wrote %lld %llu", &n, &tok) == 2) {
        CHECK(n > 0 && n < 100000);
        CHECK_EQ(token_of[n], 0); /* no two writes made the same count */
        token_of[n] = tok;
        writer_of[n] = (unsigned char)i;
        if (n > max_n) max_n = n;
        total++;
      }
      if (i == 0 && sscanf(l, "fenced %llu", &tok) == 1) fenced0++;
      char *nl = strchr(l, '\n');
      l = nl ? nl + 1 : NULL;
    }
    free(buf);
  }
  grid_t *g;
  thing_store_t *ts;
  open_store(0, &g, &ts);
  thing_prop_t p;
  CHECK_RC(thing_read(ts, "counter", "n", &p), 0);
  int64_t final = p.vtq.value.u.integer;
  thing_prop_free(&p);
  /* The killed worker may have written once more without saying so. */
  fprintf(stderr, "lock: counter %lld, %lld writes logged, worker 0 refused %d times\n",
          (long long)final, (long long)total, fenced0);
  CHECK(final == total || final == total + 1);
  for (int64_t n = 1; n <= max_n; n++) {
    if (!token_of[n]) {
      CHECK(final == total + 1); /* the one unlogged write */
      continue;
    }
    if (n > 1 && token_of[n - 1]) CHECK(token_of[n] >= token_of[n - 1]);
    if (token_of[n] > 0 && n > 1 && token_of[n - 1] && writer_of[n] != writer_of[n - 1])
      CHECK(token_of[n] > token_of[n - 1]); /* another holder, a later grant */
  }
  /* The paused holder's late write was refused. */
  CHECK(fenced0 >= 1);
  thing_close(ts);
  grid_close(g);
}

/* ---- 4. the singleton --------------------------------------------------------- */

#define ROLE_WORKERS 3

typedef struct held {
  int64_t from, to;
  uint64_t token;
  int who;
} held_t;

/* The holder now: of the workers whose last gain has no lose after it (a
 * paused one cannot say it lost the role), the one that gained last; the
 * killed one, dead, is not looked at. */
static int killed_worker = -1;

static int current_holder(char logs[][320], uint64_t *token, int64_t *since) {
  int best = -1;
  for (int i = 0; i < ROLE_WORKERS; i++) {
    if (i == killed_worker) continue;
    char *buf = read_log(logs[i]);
    int holds = 0;
    long long gained = 0;
    unsigned long long gained_token = 0;
    for (char *l = buf; l && *l;) {
      long long t;
      unsigned long long tok;
      if (sscanf(l, "gain %lld %llu", &t, &tok) == 2) {
        holds = 1;
        gained = t;
        gained_token = tok;
      } else if (!strncmp(l, "lose ", 5)) {
        holds = 0;
      }
      char *nl = strchr(l, '\n');
      l = nl ? nl + 1 : NULL;
    }
    free(buf);
    if (holds && (best < 0 || gained > *since)) {
      best = i;
      *token = gained_token;
      *since = gained;
    }
  }
  return best;
}

static int wait_holder_other_than(char logs[][320], int not, uint64_t *token, int64_t *since) {
  for (int i = 0; i < 20000; i++) {
    int h = current_holder(logs, token, since);
    if (h >= 0 && h != not) return h;
    harness_sleep_ms(1);
  }
  CHECK(!"nobody took the role");
  return -1;
}

static void test_singleton_workers(void) {
  char logs[ROLE_WORKERS][320];
  pid_t pids[ROLE_WORKERS];
  for (int i = 0; i < ROLE_WORKERS; i++) {
    snprintf(logs[i], sizeof logs[i], "%s/role-%d.log", logdir, i);
    char *argv[] = {"thing_worker", "singleton", uris[i % 2], "1000", "12", logs[i], NULL};
    pids[i] = spawn_worker(argv);
  }
  uint64_t token;
  int64_t since;
  int first = wait_holder_other_than(logs, -1, &token, &since);
  harness_sleep_ms(300);
  kill(pids[first], SIGKILL);
  int64_t killed_at = mono_us();
  killed_worker = first;
  wait_exit(pids[first]);
  int second = wait_holder_other_than(logs, first, &token, &since);
  fprintf(stderr, "singleton: takeover after kill -9 of the holder: %lld ms\n",
          (long long)(since - killed_at) / 1000);
  harness_sleep_ms(300);
  kill(pids[second], SIGSTOP);
  int64_t paused_at = mono_us();
  int third = wait_holder_other_than(logs, second, &token, &since);
  CHECK(third != first);
  fprintf(stderr, "singleton: takeover after SIGSTOP of the holder: %lld ms\n",
          (long long)(since - paused_at) / 1000);
  harness_sleep_ms(500);
  kill(pids[second], SIGCONT);
  for (int i = 0; i < ROLE_WORKERS; i++)
    if (i != first) CHECK_EQ(wait_exit(pids[i]), 0);

  /* Every holding, from each worker's own samples. */
  held_t h[256];
  int nh = 0;
  for (int i = 0; i < ROLE_WORKERS; i++) {
    char *buf = read_log(logs[i]);
    for (char *l = buf; l && *l;) {
      long long t;
      unsigned long long tok;
      if (sscanf(l, "gain %lld %llu", &t, &tok) == 2) {
        CHECK(nh < 256);
        h[nh++] = (held_t){t, -1, tok, i};
      } else if (sscanf(l, "lose %lld %llu", &t, &tok) == 2) {
        CHECK(nh > 0 && h[nh - 1].who == i && h[nh - 1].token == tok);
        h[nh - 1].to = t;
      }
      char *nl = strchr(l, '\n');
      l = nl ? nl + 1 : NULL;
    }
    free(buf);
    if (i == first && nh > 0 && h[nh - 1].to < 0) h[nh - 1].to = killed_at;
  }
  CHECK(nh >= 3);
  for (int a = 0; a < nh; a++) {
    CHECK(h[a].to >= h[a].from);
    for (int b = 0; b < nh; b++) {
      if (a == b) continue;
      /* Never two holders: no overlap, and a later grant has a greater
       * token. */
      CHECK(h[a].to < h[b].from || h[b].to < h[a].from);
      if (h[a].from < h[b].from) CHECK(h[a].token < h[b].token);
    }
  }
  fprintf(stderr, "singleton: %d holdings, never two at once\n", nh);
}

int main(void) {
  CHECK(mkdtemp(logdir) != NULL);
  harness_zk_start(&zk);
  for (int i = 0; i < 3; i++) harness_start_cluster_node(&nodes[i], &zk, "tc", i, NULL);
  for (int i = 0; i < 3; i++) {
    int a = nodes[i].port, b = nodes[(i + 1) % 3].port, c = nodes[(i + 2) % 3].port;
    snprintf(uris[i], sizeof uris[i], "grid://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", a, b, c);
  }
  grid_t *g;
  thing_store_t *ts;
  open_store(0, &g, &ts); /* makes the cache */
  harness_wait_settled(nodes[0].port, "things", 3);
  thing_close(ts);
  grid_close(g);

  fprintf(stderr, "-- batches seen whole\n");
  test_batches_whole();
  fprintf(stderr, "-- subscriptions through kill -9\n");
  test_subscriptions_through_kill();
  fprintf(stderr, "-- the lock, workers paused and killed\n");
  test_lock_workers();
  fprintf(stderr, "-- the singleton, holders killed and paused\n");
  test_singleton_workers();

  for (int i = 0; i < 2; i++) harness_stop(&nodes[i]);
  harness_zk_stop(&zk);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", logdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", logdir);
  fprintf(stderr, "test_thing_cluster: all passed\n");
  return 0;
}
