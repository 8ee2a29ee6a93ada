/*
 * Change streams on a single gridd: every write reaches a subscriber once,
 * in order, with the version the writer was told; filters (prefix,
 * affinity keys, keys only) pass exactly what they name; a subscriber that
 * does not read gets a GAP, not a node that grows without bound; bad input
 * gets clear errors (unknown cache, empty or oversized filter, too many
 * subscriptions).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "grid.h"
#include "harness.h"

static harness_node_t node;

static grid_t *open_remote(void) {
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_stream"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(node.uri, &o, &g), 0);
  return g;
}

/* The next event, within 10 s. */
static grid_event_t next_event(grid_sub_t *s) {
  grid_event_t ev;
  CHECK_RC(grid_sub_next(s, 10000, &ev), 0);
  return ev;
}

static void check_put(const grid_event_t *ev, const char *key, const char *value,
                      uint64_t version) {
  CHECK_EQ(ev->kind, GRID_EVENT_PUT);
  CHECK_EQ(ev->key_len, strlen(key));
  CHECK(memcmp(ev->key, key, ev->key_len) == 0);
  if (value) {
    CHECK_EQ(ev->value_len, strlen(value));
    CHECK(memcmp(ev->value, value, ev->value_len) == 0);
  }
  CHECK_EQ(ev->version, version);
}

static void test_every_write_once_in_order(void) {
  grid_t *g = open_remote();
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", NULL, &s), 0);
  uint64_t v1, v2, v3;
  CHECK_RC(grid_put(g, "default", "k1", 2, "one", 3, 0, &v1), 0);
  CHECK_RC(grid_put(g, "default", "k1", 2, "two", 3, 0, &v2), 0);
  CHECK_RC(grid_delete(g, "default", "k1", 2), 0);
  int64_t sum;
  CHECK_RC(grid_add(g, "default", "ctr", 3, 5, &sum), 0);
  CHECK_RC(grid_put(g, "default", "k2", 2, "", 0, 0, &v3), 0);
  /* Each partition's events come in its order; partitions interleave
   * as they please. */
  grid_event_t evs[5];
  int nk1 = 0, nctr = 0, nk2 = 0;
  grid_event_t ev;
  for (int i = 0; i < 5; i++) {
    ev = next_event(s);
    if (ev.key_len == 2 && memcmp(ev.key, "k1", 2) == 0) {
      evs[nk1++] = ev;
      continue;
    }
    if (ev.key_len == 3 && memcmp(ev.key, "ctr", 3) == 0) {
      nctr++;
      CHECK_EQ(ev.kind, GRID_EVENT_PUT);
      CHECK_EQ(ev.value_len, 1);
      CHECK_EQ(ev.op, 11); /* ADD, as grid.proto numbers it */
      continue;
    }
    check_put(&ev, "k2", "", v3);
    nk2++;
  }
  CHECK_EQ(nctr, 1);
  CHECK_EQ(nk2, 1);
  CHECK_EQ(nk1, 3);
  /* (ev's key and value are valid until the next call: the k1 events
   * were checked for key only above, their order here.) */
  CHECK_EQ(evs[0].kind, GRID_EVENT_PUT);
  CHECK_EQ(evs[0].version, v1);
  CHECK_EQ(evs[0].op, 3); /* PUT */
  CHECK_EQ(evs[1].kind, GRID_EVENT_PUT);
  CHECK_EQ(evs[1].version, v2);
  CHECK(evs[1].partition == grid_partition_of("k1", 2, 1024));
  CHECK_EQ(evs[2].kind, GRID_EVENT_DELETE);
  CHECK(evs[2].version > v2);
  /* Nothing else came. */
  CHECK_RC(grid_sub_next(s, 200, &ev), GRID_ETIMEDOUT);
  grid_unsubscribe(s);
  grid_close(g);
}

/* Many writes over many partitions, with a second subscriber: each sees
 * every write exactly once, each key's versions growing. */
static void test_many_writes(void) {
  enum { KEYS = 200, ROUNDS = 10 };
  grid_t *g = open_remote();
  grid_sub_t *a, *b;
  CHECK_RC(grid_subscribe(g, "default", NULL, &a), 0);
  CHECK_RC(grid_subscribe(g, "default", NULL, &b), 0);
  static uint64_t want[KEYS][ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    for (int k = 0; k < KEYS; k++) {
      char key[32], val[32];
      snprintf(key, sizeof key, "many:%d", k);
      snprintf(val, sizeof val, "%d", r);
      CHECK_RC(grid_put(g, "default", key, strlen(key), val, strlen(val), 0, &want[k][r]), 0);
    }
  }
  grid_sub_t *subs[2] = {a, b};
  for (int i = 0; i < 2; i++) {
    static int seen[KEYS];
    memset(seen, 0, sizeof seen);
    for (int n = 0; n < KEYS * ROUNDS; n++) {
      grid_event_t ev = next_event(subs[i]);
      CHECK_EQ(ev.kind, GRID_EVENT_PUT);
      char key[32];
      CHECK(ev.key_len < sizeof key);
      memcpy(key, ev.key, ev.key_len);
      key[ev.key_len] = '\0';
      int k = atoi(key + 5);
      CHECK(k >= 0 && k < KEYS);
      CHECK(seen[k] < ROUNDS);
      /* In order: the r-th event of a key is its r-th write. */
      CHECK_EQ(ev.version, want[k][seen[k]]);
      seen[k]++;
    }
    for (int k = 0; k < KEYS; k++) CHECK_EQ(seen[k], ROUNDS);
    grid_event_t ev;
    CHECK_RC(grid_sub_next(subs[i], 200, &ev), GRID_ETIMEDOUT);
  }
  grid_unsubscribe(a);
  grid_unsubscribe(b);
  grid_close(g);
}

static void test_filters(void) {
  grid_t *g = open_remote();
  grid_sub_options_t po = {.prefix = "pump:", .prefix_len = 5};
  const void *akeys[] = {"{pump-7}"};
  size_t alens[] = {8};
  grid_sub_options_t ao = {.affinity_keys = akeys, .affinity_key_lens = alens,
                           .n_affinity_keys = 1, .keys_only = 1};
  grid_sub_t *ps, *as;
  CHECK_RC(grid_subscribe(g, "default", &po, &ps), 0);
  CHECK_RC(grid_subscribe(g, "default", &ao, &as), 0);
  const char *keys[] = {"pump:1", "valve:1", "{pump-7}.temp", "pump:2", "{pump-8}.temp",
                        "{pump-7}.rpm"};
  uint64_t ver[6];
  for (int i = 0; i < 6; i++)
    CHECK_RC(grid_put(g, "default", keys[i], strlen(keys[i]), "v", 1, 0, &ver[i]), 0);
  /* Two partitions: in either order. */
  int got1 = 0, got2 = 0;
  grid_event_t ev;
  for (int i = 0; i < 2; i++) {
    ev = next_event(ps);
    if (ev.key_len == 6 && memcmp(ev.key, "pump:1", 6) == 0) {
      check_put(&ev, "pump:1", "v", ver[0]);
      got1++;
    } else {
      check_put(&ev, "pump:2", "v", ver[3]);
      got2++;
    }
  }
  CHECK(got1 == 1 && got2 == 1);
  CHECK_RC(grid_sub_next(ps, 200, &ev), GRID_ETIMEDOUT);
  ev = next_event(as);
  check_put(&ev, "{pump-7}.temp", NULL, ver[2]);
  CHECK(ev.value == NULL); /* keys only */
  ev = next_event(as);
  check_put(&ev, "{pump-7}.rpm", NULL, ver[5]);
  CHECK_RC(grid_sub_next(as, 200, &ev), GRID_ETIMEDOUT);
  grid_unsubscribe(ps);
  grid_unsubscribe(as);
  grid_close(g);
}

/* A continuous query while a writer runs: the snapshot and the changes
 * after it, applied in order, give exactly the cache's final contents,
 * with no key's version seen twice or going back. */
typedef struct cq_writer {
  grid_t *g;
  atomic_int stop;
  int writes;
} cq_writer_t;

static void *cq_writer_main(void *arg) {
  cq_writer_t *w = arg;
  for (int i = 0; !atomic_load(&w->stop); i++) {
    char key[32], val[32];
    snprintf(key, sizeof key, "cq:%d", i % 300);
    snprintf(val, sizeof val, "%d", i);
    if (i % 7 == 3) grid_delete(w->g, "default", key, strlen(key));
    else CHECK_RC(grid_put(w->g, "default", key, strlen(key), val, strlen(val), 0, NULL), 0);
    w->writes++;
  }
  return NULL;
}

static void test_continuous_query(void) {
  enum { KEYS = 300 };
  grid_t *g = open_remote();
  for (int i = 0; i < KEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "cq:%d", i);
    CHECK_RC(grid_put(g, "default", key, strlen(key), "start", 5, 0, NULL), 0);
  }
  cq_writer_t w = {.g = open_remote()};
  pthread_t t;
  pthread_create(&t, NULL, cq_writer_main, &w);
  harness_sleep_ms(100);
  grid_sub_options_t o = {.prefix = "cq:", .prefix_len = 3, .snapshot = 1};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", &o, &s), 0);
  static char state[KEYS][32];
  static uint64_t version[KEYS];
  static int present[KEYS];
  int synced = 0, snapshot_entries = 0;
  int64_t stop_at = 0;
  for (int n = 0;; n++) {
    grid_event_t ev;
    int rc = grid_sub_next(s, stop_at ? 500 : 10000, &ev);
    if (rc == GRID_ETIMEDOUT && stop_at) break;
    CHECK_RC(rc, 0);
    if (ev.kind == GRID_EVENT_SYNCED) {
      CHECK(!synced);
      synced = 1;
      /* The writer goes on a little, then stops; what it wrote comes. */
      harness_sleep_ms(200);
      atomic_store(&w.stop, 1);
      pthread_join(t, NULL);
      stop_at = 1;
      continue;
    }
    CHECK(ev.kind == GRID_EVENT_PUT || ev.kind == GRID_EVENT_DELETE);
    char key[32];
    memcpy(key, ev.key, ev.key_len);
    key[ev.key_len] = '\0';
    int k = atoi(key + 3);
    CHECK(k >= 0 && k < KEYS);
    if (ev.snapshot) {
      CHECK(!synced);
      snapshot_entries++;
    }
    CHECK(ev.version > version[k]); /* never twice, never back */
    version[k] = ev.version;
    present[k] = ev.kind == GRID_EVENT_PUT;
    if (present[k]) {
      memcpy(state[k], ev.value, ev.value_len);
      state[k][ev.value_len] = '\0';
    }
  }
  CHECK(synced);
  fprintf(stderr, "continuous query: %d snapshot entries, %d writes during it\n",
          snapshot_entries, w.writes);
  CHECK(snapshot_entries > 0);
  for (int k = 0; k < KEYS; k++) {
    char key[32];
    snprintf(key, sizeof key, "cq:%d", k);
    grid_value_t v;
    int rc = grid_get(g, "default", key, strlen(key), &v);
    CHECK_EQ(rc == 0, present[k]);
    if (rc == 0) {
      CHECK_STR(v.data, state[k]);
      CHECK_EQ(v.version, version[k]);
      grid_value_free(&v);
    }
  }
  grid_unsubscribe(s);
  grid_close(w.g);
  grid_close(g);
}

/* A key whose time to live runs out: its subscriber hears EXPIRE. */
static void test_expire_event(void) {
  grid_t *g = open_remote();
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", NULL, &s), 0);
  uint64_t v;
  CHECK_RC(grid_put(g, "default", "brief", 5, "x", 1, 50, &v), 0);
  grid_event_t ev = next_event(s);
  check_put(&ev, "brief", "x", v);
  CHECK(ev.expire_at_ms > 0);
  ev = next_event(s); /* the sweep (every 100 ms) removes it */
  CHECK_EQ(ev.kind, GRID_EVENT_EXPIRE);
  CHECK_EQ(ev.key_len, 5);
  CHECK(memcmp(ev.key, "brief", 5) == 0);
  CHECK(ev.version > v);
  grid_value_t gv;
  CHECK_RC(grid_get(g, "default", "brief", 5, &gv), GRID_ENOTFOUND);
  grid_unsubscribe(s);
  grid_close(g);
}

typedef struct counted {
  atomic_int puts;
  atomic_int gaps;
} counted_t;

static void count_cb(const grid_event_t *ev, void *arg) {
  counted_t *c = arg;
  if (ev->kind == GRID_EVENT_PUT) atomic_fetch_add(&c->puts, 1);
  if (ev->kind == GRID_EVENT_GAP) atomic_fetch_add(&c->gaps, 1);
}

static void test_callback(void) {
  grid_t *g = open_remote();
  counted_t c = {0};
  grid_sub_options_t o = {.callback = count_cb, .arg = &c};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", &o, &s), 0);
  for (int i = 0; i < 50; i++) {
    char key[16];
    snprintf(key, sizeof key, "cb%d", i);
    CHECK_RC(grid_put(g, "default", key, strlen(key), "x", 1, 0, NULL), 0);
  }
  for (int i = 0; i < 500 && atomic_load(&c.puts) < 50; i++) harness_sleep_ms(20);
  CHECK_EQ(atomic_load(&c.puts), 50);
  grid_event_t ev;
  CHECK_RC(grid_sub_next(s, 10, &ev), GRID_EINVAL); /* callback subscriptions do not pull */
  grid_unsubscribe(s);
  CHECK_EQ(atomic_load(&c.gaps), 0);
  grid_close(g);
}

/* A subscriber that does not read: the node keeps at most its output
 * and the history; once it reads again, it hears of what it lost. */
/* A process's resident memory, from /proc. */
static long rss_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) kb = atol(line + 6);
  fclose(f);
  CHECK(kb > 0);
  return kb;
}

static void test_slow_subscriber_gap(void) {
  enum { WRITES = 20000 };
  grid_t *g = open_remote();
  grid_sub_options_t o = {.queue_max = 16};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "slow", &o, &s), 0);
  /* One partition, a small history (change_buffer_bytes=8K), a small
   * output (64K): 20 MB of writes cannot all wait, in the node or in the
   * sockets' buffers. */
  long rss_before = rss_kb(node.pid);
  char val[1024];
  memset(val, 'x', sizeof val);
  for (int i = 0; i < WRITES; i++) {
    char key[32];
    snprintf(key, sizeof key, "{one}.k%d", i % 100);
    CHECK_RC(grid_put(g, "slow", key, strlen(key), val, sizeof val, 0, NULL), 0);
  }
  int puts = 0, gaps = 0;
  grid_event_t ev;
  while (grid_sub_next(s, 1000, &ev) == 0) {
    if (ev.kind == GRID_EVENT_PUT) puts++;
    if (ev.kind == GRID_EVENT_GAP) gaps++;
  }
  long rss_after = rss_kb(node.pid);
  fprintf(stderr, "slow subscriber: %d events, %d gaps of %d writes; node RSS %ld -> %ld KB\n",
          puts, gaps, WRITES, rss_before, rss_after);
  CHECK(gaps >= 1);
  CHECK(puts < WRITES);
  /* What the subscriber did not take stayed out of the node: far less
   * than the 20 MB written (the entries themselves are 100 KB). */
  CHECK(rss_after - rss_before < 16 * 1024);
  /* After the gap the stream goes on: a new write arrives. */
  uint64_t v;
  CHECK_RC(grid_put(g, "slow", "{one}.after", 11, "y", 1, 0, &v), 0);
  ev = next_event(s);
  check_put(&ev, "{one}.after", "y", v);
  grid_unsubscribe(s);
  grid_close(g);
}

/* A snapshot larger than the queue: grid_subscribe still returns (nobody
 * can read before it does), and every entry then comes. (Found in review:
 * it waited for room forever.) */
static void test_snapshot_past_queue(void) {
  grid_t *g = open_remote();
  grid_cache_config_t cc = {.name = "snapq", .partitions = 4};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  for (int i = 0; i < 200; i++) {
    char key[16];
    snprintf(key, sizeof key, "s%d", i);
    CHECK_RC(grid_put(g, "snapq", key, strlen(key), "v", 1, 0, NULL), 0);
  }
  grid_sub_options_t o = {.snapshot = 1, .queue_max = 4};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "snapq", &o, &s), 0);
  int entries = 0, synced = 0;
  grid_event_t ev;
  while (!synced) {
    ev = next_event(s);
    if (ev.kind == GRID_EVENT_SYNCED) synced = 1;
    else entries += ev.snapshot;
  }
  CHECK_EQ(entries, 200);
  grid_unsubscribe(s);
  CHECK_RC(grid_cache_drop(g, "snapq"), 0);
  grid_close(g);
}

/* The cache is dropped under a subscription: it ends, and says why. */
static void test_dropped_cache_ends(void) {
  grid_t *g = open_remote();
  grid_cache_config_t cc = {.name = "gone", .partitions = 4};
  CHECK_RC(grid_cache_create(g, &cc), 0);
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "gone", NULL, &s), 0);
  CHECK_RC(grid_put(g, "gone", "k", 1, "v", 1, 0, NULL), 0);
  grid_event_t ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_PUT);
  CHECK_RC(grid_cache_drop(g, "gone"), 0);
  ev = next_event(s);
  CHECK_EQ(ev.kind, GRID_EVENT_ENDED);
  CHECK_EQ(ev.status, GRID_ENOCACHE);
  CHECK_RC(grid_sub_next(s, 10, &ev), GRID_ENOCACHE);
  grid_unsubscribe(s);
  grid_close(g);
}

/* grid_unsubscribe while another thread waits in grid_sub_next: the
 * waiter returns first. (Found in review: it was freed under the waiter.) */
static void *waiter_main(void *arg) {
  grid_event_t ev;
  int rc = grid_sub_next(arg, 30000, &ev);
  return (void *)(intptr_t)rc;
}

static void test_unsubscribe_with_waiter(void) {
  grid_t *g = open_remote();
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", NULL, &s), 0);
  pthread_t t;
  pthread_create(&t, NULL, waiter_main, s);
  /* Time for the waiter to be waiting (one that has not called yet would
   * call on a freed subscription: that is the caller's error). */
  harness_sleep_ms(300);
  grid_unsubscribe(s);
  void *rc;
  pthread_join(t, &rc);
  CHECK_EQ((intptr_t)rc, GRID_ECONN);
  grid_close(g);
}

/* A node with small frames: event frames stay within frame_bytes_max
 * (found in review: a 64 KB batch was refused by the client, which
 * subscribed again to the same batch, for ever). */
static void test_small_frames(void) {
  harness_node_t small;
  const char *settings[] = {"frame_bytes_max=4K", NULL};
  harness_start(&small, settings);
  grid_options_t o = {.timeout_ms = 10000, .client_name = "test_stream"};
  grid_t *g = NULL;
  CHECK_RC(grid_open(small.uri, &o, &g), 0);
  char val[1000];
  memset(val, 'v', sizeof val);
  for (int i = 0; i < 100; i++) {
    char key[16];
    snprintf(key, sizeof key, "b%d", i);
    CHECK_RC(grid_put(g, "default", key, strlen(key), val, sizeof val, 0, NULL), 0);
  }
  grid_sub_options_t so = {.snapshot = 1};
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "default", &so, &s), 0);
  int entries = 0;
  grid_event_t ev;
  for (;;) {
    ev = next_event(s);
    if (ev.kind == GRID_EVENT_SYNCED) break;
    CHECK_EQ(ev.value_len, sizeof val);
    entries++;
  }
  CHECK_EQ(entries, 100);
  grid_unsubscribe(s);
  grid_close(g);
  CHECK_EQ(harness_stop(&small), 0);
}

static void test_bad_input(void) {
  grid_t *g = open_remote();
  grid_sub_t *s;
  CHECK_RC(grid_subscribe(g, "no-such-cache", NULL, &s), GRID_ENOCACHE);
  grid_sub_options_t empty = {.prefix = "", .prefix_len = 0};
  CHECK_RC(grid_subscribe(g, "default", &empty, &s), GRID_EINVAL);
  CHECK(strstr(grid_last_error(), "empty prefix") != NULL);
  const void *akeys[] = {"{a}"};
  size_t alens[] = {3};
  grid_sub_options_t both = {.prefix = "p", .prefix_len = 1, .affinity_keys = akeys,
                             .affinity_key_lens = alens, .n_affinity_keys = 1};
  CHECK_RC(grid_subscribe(g, "default", &both, &s), GRID_EINVAL);
  size_t zero[] = {0};
  grid_sub_options_t emptykey = {.affinity_keys = akeys, .affinity_key_lens = zero,
                                 .n_affinity_keys = 1};
  CHECK_RC(grid_subscribe(g, "default", &emptykey, &s), GRID_EINVAL);
  /* key_bytes_max is 256 on this node. */
  char big[300];
  memset(big, 'p', sizeof big);
  grid_sub_options_t oversized = {.prefix = big, .prefix_len = sizeof big};
  CHECK_RC(grid_subscribe(g, "default", &oversized, &s), GRID_EKEYTOOBIG);
  CHECK(strstr(grid_last_error(), "key_bytes_max") != NULL);
  /* subscription_keys_max is 4. */
  const void *five[] = {"{a}", "{b}", "{c}", "{d}", "{e}"};
  size_t five_lens[] = {3, 3, 3, 3, 3};
  grid_sub_options_t many = {.affinity_keys = five, .affinity_key_lens = five_lens,
                             .n_affinity_keys = 5};
  CHECK_RC(grid_subscribe(g, "default", &many, &s), GRID_ELIMIT);
  CHECK(strstr(grid_last_error(), "subscription_keys_max") != NULL);
  /* subscriptions_max is 8: the 9th is refused, and served again once
   * one ends. */
  grid_sub_t *subs[8];
  for (int i = 0; i < 8; i++) CHECK_RC(grid_subscribe(g, "default", NULL, &subs[i]), 0);
  CHECK_RC(grid_subscribe(g, "default", NULL, &s), GRID_ELIMIT);
  CHECK(strstr(grid_last_error(), "subscriptions_max") != NULL);
  grid_unsubscribe(subs[0]);
  /* The node counts the subscription gone once it sees its connection
   * close: try for a while. */
  int rc = GRID_ELIMIT;
  for (int i = 0; i < 100 && rc == GRID_ELIMIT; i++) {
    rc = grid_subscribe(g, "default", NULL, &subs[0]);
    if (rc == GRID_ELIMIT) harness_sleep_ms(20);
  }
  CHECK_RC(rc, 0);
  for (int i = 0; i < 8; i++) grid_unsubscribe(subs[i]);
  /* The node still serves. */
  CHECK_RC(grid_put(g, "default", "still", 5, "here", 4, 0, NULL), 0);
  grid_close(g);
}

int main(void) {
  /* Under AddressSanitizer freed memory is held back (its quarantine),
   * which would count in the node's RSS: the node frees at once here, so
   * the slow subscriber's test measures the node, not the tool. */
  const char *asan = getenv("ASAN_OPTIONS");
  char opts[512];
  snprintf(opts, sizeof opts, "%s%squarantine_size_mb=0:thread_local_quarantine_size_kb=0",
           asan ? asan : "", asan && asan[0] ? ":" : "");
  setenv("ASAN_OPTIONS", opts, 1);
  const char *settings[] = {"key_bytes_max=256", "subscription_keys_max=4",
                            "subscriptions_max=8", "change_buffer_bytes=8K",
                            "output_bytes_max=64K", NULL};
  harness_start(&node, settings);
  grid_t *g = open_remote();
  grid_cache_config_t slow = {.name = "slow", .partitions = 1};
  CHECK_RC(grid_cache_create(g, &slow), 0);
  grid_close(g);
  RUN(test_every_write_once_in_order);
  RUN(test_many_writes);
  RUN(test_filters);
  RUN(test_callback);
  RUN(test_expire_event);
  RUN(test_continuous_query);
  RUN(test_slow_subscriber_gap);
  RUN(test_snapshot_past_queue);
  RUN(test_dropped_cache_ends);
  RUN(test_unsubscribe_with_waiter);
  RUN(test_small_frames);
  RUN(test_bad_input);
  CHECK_EQ(harness_stop(&node), 0);
  printf("test_stream: ok\n");
  return 0;
}
