/*
 * test_thing: foundation-shim over one node, embedded and remote (a real
 * gridd): properties keep their base type, a write of several is seen
 * whole, only-if-newer skips what is not newer, compare-and-set, reading a
 * whole Thing in one request, locks with fencing tokens (a write fenced by
 * an old grant is refused), subscriptions with old and new values and the
 * VALUE filter; and the grid calls under them (grid_batch's refusals,
 * grid_get_prefix's).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "harness.h"
#include "thing.h"

static int64_t now_ms(void) { return INT64_C(1796000000000); }

static void test_types_and_batches(thing_store_t *ts) {
  thing_update_t msg[3] = {
      {.prop = "temp", .vtq = thing_vtq_number(20.5, now_ms(), THING_GOOD)},
      {.prop = "rpm", .vtq = thing_vtq_integer(1500, now_ms(), THING_GOOD)},
      {.prop = "state", .vtq = thing_vtq_string("on", now_ms(), THING_GOOD)},
  };
  CHECK_RC(thing_write(ts, "pump-1", msg, 3, 0, NULL), 0);
  CHECK(msg[0].version != 0 && msg[2].version > msg[0].version);
  thing_prop_t p;
  CHECK_RC(thing_read(ts, "pump-1", "rpm", &p), 0);
  CHECK_EQ(p.vtq.value.type, THING_INTEGER);
  CHECK_EQ(p.vtq.value.u.integer, 1500);
  CHECK_EQ(p.version, msg[1].version);
  thing_prop_free(&p);
  CHECK_RC(thing_read(ts, "pump-1", "none", &p), GRID_ENOTFOUND);

  /* A wrong type anywhere in a message: nothing of it is written. */
  thing_update_t bad[2] = {
      {.prop = "temp", .vtq = thing_vtq_number(99, now_ms() + 1, THING_GOOD)},
      {.prop = "rpm", .vtq = thing_vtq_string("fast", now_ms() + 1, THING_GOOD)},
  };
  CHECK_RC(thing_write(ts, "pump-1", bad, 2, 0, NULL), THING_ETYPE);
  CHECK_RC(thing_read(ts, "pump-1", "temp", &p), 0);
  CHECK(p.vtq.value.u.number == 20.5);
  thing_prop_free(&p);

  /* Only if newer: the late update is skipped, the new one written. */
  thing_update_t late[2] = {
      {.prop = "temp", .vtq = thing_vtq_number(1.0, now_ms() - 10, THING_GOOD)},
      {.prop = "rpm", .vtq = thing_vtq_integer(1600, now_ms() + 10, THING_GOOD)},
  };
  CHECK_RC(thing_write(ts, "pump-1", late, 2, THING_IF_NEWER, NULL), 0);
  CHECK(late[0].skipped && !late[1].skipped);
  CHECK(late[0].version == 0 && late[1].version != 0);
  /* A duplicate of a message already written: all skipped. */
  CHECK_RC(thing_write(ts, "pump-1", late, 2, THING_IF_NEWER, NULL), 0);
  CHECK(late[0].skipped && late[1].skipped);
  thing_prop_t *all;
  size_t n;
  CHECK_RC(thing_read_all(ts, "pump-1", &all, &n), 0);
  CHECK_EQ(n, 3);
  CHECK_STR(all[0].name, "rpm"); /* sorted by name */
  CHECK_EQ(all[0].vtq.value.u.integer, 1600);
  CHECK_STR(all[1].name, "state");
  CHECK_STR(all[1].vtq.value.u.bytes.data, "on");
  CHECK_STR(all[2].name, "temp");
  CHECK(all[2].vtq.value.u.number == 20.5);
  thing_props_free(all, n);
  /* Another Thing whose name starts the same is not read with it. */
  CHECK_RC(thing_write_one(ts, "pump-10", "temp", &msg[0].vtq, 0, NULL), 0);
  CHECK_RC(thing_read_all(ts, "pump-1", &all, &n), 0);
  CHECK_EQ(n, 3);
  thing_props_free(all, n);
  CHECK_RC(thing_read_all(ts, "nobody", &all, &n), 0);
  CHECK_EQ(n, 0);
  thing_props_free(all, n);

  /* Compare-and-set. */
  CHECK_RC(thing_read(ts, "pump-1", "temp", &p), 0);
  thing_vtq_t v = thing_vtq_number(21, now_ms() + 20, THING_GOOD);
  uint64_t ver;
  CHECK_RC(thing_cas(ts, "pump-1", "temp", p.version, &v, &ver), 0);
  CHECK(ver > p.version);
  CHECK_RC(thing_cas(ts, "pump-1", "temp", p.version, &v, &ver), GRID_EVERSION);
  CHECK_RC(thing_cas(ts, "pump-1", "gone", p.version, &v, &ver), GRID_ENOTFOUND);
  thing_prop_free(&p);

  /* Bad names and values. */
  CHECK_RC(thing_write_one(ts, "a{b", "x", &v, 0, NULL), THING_ENAME);
  CHECK_RC(thing_write_one(ts, "", "x", &v, 0, NULL), THING_ENAME);
  thing_vtq_t json = {.value = {.type = THING_JSON}, .time_ms = now_ms()};
  json.value.u.bytes.data = "[1, 2";
  json.value.u.bytes.len = 5;
  CHECK_RC(thing_write_one(ts, "pump-1", "cfg", &json, 0, NULL), THING_EJSON);
  thing_update_t twice[2] = {{.prop = "a", .vtq = v}, {.prop = "a", .vtq = v}};
  CHECK_RC(thing_write(ts, "pump-1", twice, 2, 0, NULL), GRID_EINVAL);
  CHECK_RC(thing_delete(ts, "pump-1", "state"), 0);
  CHECK_RC(thing_delete(ts, "pump-1", "state"), GRID_ENOTFOUND);
}

static void test_locks(thing_store_t *ts) {
  thing_lock_t *a, *b;
  CHECK_RC(thing_lock(ts, "valve-3", 60000, 0, &a), 0);
  CHECK(thing_lock_held(a));
  uint64_t t1 = thing_lock_token(a);
  CHECK(t1 != 0);
  CHECK_RC(thing_lock(ts, "valve-3", 60000, 0, &b), THING_ELOCKED);
  CHECK_RC(thing_lock(ts, "valve-3", 60000, 50, &b), THING_ELOCKED); /* waited */
  CHECK_RC(thing_lock_renew(a), 0);
  CHECK_EQ(thing_lock_token(a), t1); /* the same grant */
  thing_fence_t f1 = {t1};
  thing_update_t u = {.prop = "pos", .vtq = thing_vtq_integer(1, now_ms(), THING_GOOD)};
  CHECK_RC(thing_write(ts, "valve-3", &u, 1, 0, &f1), 0);
  CHECK_RC(thing_unlock(a), 0);
  /* Unlocked: a write fenced by the old grant is refused. */
  u.vtq.value.u.integer = 2;
  CHECK_RC(thing_write(ts, "valve-3", &u, 1, 0, &f1), THING_EFENCED);
  CHECK_RC(thing_lock(ts, "valve-3", 60000, 0, &b), 0);
  uint64_t t2 = thing_lock_token(b);
  CHECK(t2 > t1);
  CHECK_RC(thing_write(ts, "valve-3", &u, 1, 0, &f1), THING_EFENCED);
  thing_fence_t f2 = {t2};
  CHECK_RC(thing_write(ts, "valve-3", &u, 1, 0, &f2), 0);
  thing_prop_t p;
  CHECK_RC(thing_read(ts, "valve-3", "pos", &p), 0);
  CHECK_EQ(p.vtq.value.u.integer, 2);
  thing_prop_free(&p);
  /* The lock's entries are not properties. */
  thing_prop_t *all;
  size_t n;
  CHECK_RC(thing_read_all(ts, "valve-3", &all, &n), 0);
  CHECK_EQ(n, 1);
  thing_props_free(all, n);
  CHECK_RC(thing_unlock(b), 0);

  /* A lease that runs out lets another in, with a greater token; the old
   * holder can neither renew nor write. */
  CHECK_RC(thing_lock(ts, "valve-4", 300, 0, &a), 0);
  uint64_t ta = thing_lock_token(a);
  CHECK_RC(thing_lock(ts, "valve-4", 60000, 10000, &b), 0); /* waits it out */
  CHECK(thing_lock_token(b) > ta);
  CHECK(!thing_lock_held(a));
  CHECK_RC(thing_lock_renew(a), THING_ENOTHELD);
  thing_fence_t fa = {ta};
  CHECK_RC(thing_write(ts, "valve-4", &u, 1, 0, &fa), THING_EFENCED);
  CHECK_RC(thing_unlock(a), THING_ENOTHELD); /* b's lock stays */
  CHECK_RC(thing_lock(ts, "valve-4", 60000, 0, &a), THING_ELOCKED);
  CHECK_RC(thing_unlock(b), 0);
}

typedef struct seen {
  pthread_mutex_t mu; /* the subscription's thread writes, the test reads */
  int n;
  char prop[8][16];
  double oldv[8], newv[8];
  int had_old[8], had_new[8];
} seen_t;

static void on_change(const thing_change_t *ch, void *arg) {
  seen_t *s = arg;
  pthread_mutex_lock(&s->mu);
  if (s->n >= 8) {
    pthread_mutex_unlock(&s->mu);
    return;
  }
  snprintf(s->prop[s->n], sizeof s->prop[0], "%s", ch->prop);
  s->had_old[s->n] = ch->old_vtq != NULL;
  s->had_new[s->n] = ch->new_vtq != NULL;
  s->oldv[s->n] = ch->old_vtq ? ch->old_vtq->value.u.number : 0;
  s->newv[s->n] = ch->new_vtq ? ch->new_vtq->value.u.number : 0;
  s->n++;
  pthread_mutex_unlock(&s->mu);
}

static int seen_n(seen_t *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->n;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* Waits until n changes came. */
static void wait_seen(seen_t *s, int n) {
  for (int i = 0; i < 1000 && seen_n(s) < n; i++) harness_sleep_ms(10);
  CHECK_EQ(seen_n(s), n);
}

static void test_subscriptions(thing_store_t *ts) {
  thing_vtq_t v = thing_vtq_number(1, now_ms(), THING_GOOD);
  CHECK_RC(thing_write_one(ts, "fan-1", "speed", &v, 0, NULL), 0);
  static seen_t always, value;
  memset(&always, 0, sizeof always);
  memset(&value, 0, sizeof value);
  pthread_mutex_init(&always.mu, NULL);
  pthread_mutex_init(&value.mu, NULL);
  const char *things[] = {"fan-1"};
  thing_sub_options_t o = {.things = things, .n_things = 1, .callback = on_change,
                           .arg = &always};
  thing_sub_t *sa, *sv;
  CHECK_RC(thing_subscribe(ts, &o, &sa), 0);
  o.type = THING_CHANGE_VALUE;
  o.arg = &value;
  o.prop = "speed";
  CHECK_RC(thing_subscribe(ts, &o, &sv), 0);
  v.time_ms++;
  CHECK_RC(thing_write_one(ts, "fan-1", "speed", &v, 0, NULL), 0); /* same value */
  v.value.u.number = 2;
  v.time_ms++;
  CHECK_RC(thing_write_one(ts, "fan-1", "speed", &v, 0, NULL), 0);
  CHECK_RC(thing_write_one(ts, "fan-1", "mode", &v, 0, NULL), 0); /* new property */
  CHECK_RC(thing_write_one(ts, "fan-2", "speed", &v, 0, NULL), 0); /* not followed */
  CHECK_RC(thing_delete(ts, "fan-1", "speed"), 0);
  wait_seen(&always, 4);
  wait_seen(&value, 2); /* the same-value write and "mode" left out */
  CHECK_EQ(thing_sub_delivered(sa), 4);
  thing_unsubscribe(sa); /* no callback runs after: the checks read alone */
  thing_unsubscribe(sv);
  CHECK_STR(always.prop[0], "speed");
  CHECK(always.had_old[0] && always.oldv[0] == 1 && always.newv[0] == 1);
  CHECK(always.oldv[1] == 1 && always.newv[1] == 2);
  CHECK_STR(always.prop[2], "mode");
  CHECK(!always.had_old[2] && always.had_new[2]);
  CHECK(always.had_old[3] && !always.had_new[3] && always.oldv[3] == 2);
  CHECK(value.oldv[0] == 1 && value.newv[0] == 2);
  CHECK(!value.had_new[1]);
}

/* A subscriber that falls behind past the node's history gets a GAP: the
 * shim reads the partition again and tells what changed, with the right
 * old values, and nothing of another Thing of the same partition (the
 * node here keeps 4 KB of history per partition and 4 KB of a
 * connection's unsent output). */
typedef struct gap_log {
  pthread_mutex_t mu;
  int64_t last[5];
  int changes, bad_old, backwards, others;
  int slept;
} gap_log_t;

static void gap_on_change(const thing_change_t *ch, void *arg) {
  gap_log_t *g = arg;
  pthread_mutex_lock(&g->mu);
  int sleep_now = !g->slept;
  g->slept = 1;
  int p = -1;
  if (strcmp(ch->thing, "gap-a") != 0 || sscanf(ch->prop, "p%d", &p) != 1 || p < 0 || p > 4) {
    g->others++;
  } else if (ch->new_vtq) {
    int64_t v = atoll(ch->new_vtq->value.u.bytes.data);
    if (!ch->old_vtq || atoll(ch->old_vtq->value.u.bytes.data) != g->last[p]) g->bad_old++;
    if (v <= g->last[p]) g->backwards++;
    g->last[p] = v;
    g->changes++;
  }
  pthread_mutex_unlock(&g->mu);
  if (sleep_now) harness_sleep_ms(2000); /* behind: the history rolls over */
}

static void test_subscription_gap(grid_t *g, thing_store_t *ts) {
  grid_cache_config_t *caches;
  size_t nc;
  uint32_t parts = 0;
  CHECK_RC(grid_cache_list(g, &caches, &nc), 0);
  for (size_t i = 0; i < nc; i++)
    if (!strcmp(caches[i].name, "things")) parts = caches[i].partitions;
  grid_cache_list_free(caches, nc);
  CHECK(parts > 0);
  char other[32];
  uint32_t pa = grid_partition_of("{gap-a}", 7, parts);
  for (int i = 0;; i++) {
    int n = snprintf(other, sizeof other, "gap-b-%d", i);
    char key[48];
    int kl = snprintf(key, sizeof key, "{%.*s}", n, other);
    if (grid_partition_of(key, (size_t)kl, parts) == pa) break;
  }
  /* Values of 2 KB ("<n>|" and filler), so that what the subscriber leaves
   * unread passes the sockets' buffers and the node's history. */
  char names[5][8];
  static char text[2048];
  memset(text, 'x', sizeof text - 1);
  for (int p = 0; p < 5; p++) {
    snprintf(names[p], sizeof names[p], "p%d", p);
    int n = snprintf(text, sizeof text, "%d|", 0);
    text[n] = 'x';
    thing_vtq_t v = thing_vtq_string(text, 0, THING_GOOD);
    CHECK_RC(thing_write_one(ts, "gap-a", names[p], &v, 0, NULL), 0);
  }
  static gap_log_t log;
  memset(&log, 0, sizeof log);
  pthread_mutex_init(&log.mu, NULL);
  const char *things[] = {"gap-a"};
  thing_sub_options_t o = {.things = things, .n_things = 1, .callback = gap_on_change,
                           .arg = &log};
  thing_sub_t *sub;
  CHECK_RC(thing_subscribe(ts, &o, &sub), 0);
  int64_t final[5] = {0};
  for (int i = 1; i <= 3000; i++) {
    int p = i % 5;
    int n = snprintf(text, sizeof text, "%d|", i);
    text[n] = 'x';
    thing_vtq_t v = thing_vtq_string(text, i, THING_GOOD);
    CHECK_RC(thing_write_one(ts, "gap-a", names[p], &v, 0, NULL), 0);
    final[p] = i;
    if (i % 3 == 0) CHECK_RC(thing_write_one(ts, other, "x", &v, 0, NULL), 0);
  }
  int caught_up = 0;
  for (int tries = 0; tries < 2000 && !caught_up; tries++) {
    pthread_mutex_lock(&log.mu);
    caught_up = 1;
    for (int p = 0; p < 5; p++) caught_up &= log.last[p] == final[p];
    pthread_mutex_unlock(&log.mu);
    if (!caught_up) harness_sleep_ms(10);
  }
  CHECK(caught_up);
  uint64_t gaps = thing_sub_gaps(sub);
  thing_unsubscribe(sub);
  fprintf(stderr, "   gap: %d changes told, %llu gaps healed\n", log.changes,
          (unsigned long long)gaps);
  CHECK(gaps >= 1);
  CHECK(log.changes < 3000); /* what the gap took was told as its result */
  CHECK_EQ(log.bad_old, 0);
  CHECK_EQ(log.backwards, 0);
  CHECK_EQ(log.others, 0);
}

typedef struct role_log {
  _Atomic int gains, losses;
  _Atomic uint64_t last_token;
} role_log_t;

static void role_gain(uint64_t token, void *arg) {
  role_log_t *r = arg;
  atomic_store(&r->last_token, token);
  atomic_fetch_add(&r->gains, 1);
}

static void role_loss(uint64_t token, void *arg) {
  (void)token;
  atomic_fetch_add(&((role_log_t *)arg)->losses, 1);
}

static int wait_gains(role_log_t *r, int n) {
  for (int i = 0; i < 2000 && atomic_load(&r->gains) < n; i++) harness_sleep_ms(5);
  return atomic_load(&r->gains) >= n;
}

/* Two members of one role: one holds it; released on request, the other
 * takes it with a greater token; stopping the holder hands it back. */
static void test_singleton(thing_store_t *ts) {
  static role_log_t a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  thing_singleton_options_t o = {.name = "timers", .lease_ms = 500, .on_gain = role_gain,
                                 .on_loss = role_loss, .arg = &a};
  thing_singleton_t *sa, *sb;
  CHECK_RC(thing_singleton_start(ts, &o, &sa), 0);
  CHECK(wait_gains(&a, 1));
  o.arg = &b;
  CHECK_RC(thing_singleton_start(ts, &o, &sb), 0);
  uint64_t ta;
  CHECK(thing_singleton_held(sa, &ta));
  CHECK_EQ(ta, atomic_load(&a.last_token));
  harness_sleep_ms(1200); /* past two leases: renewed, not lost */
  CHECK(thing_singleton_held(sa, NULL));
  CHECK(!thing_singleton_held(sb, NULL));
  CHECK_EQ(atomic_load(&b.gains), 0);
  CHECK_RC(thing_singleton_release(sb), THING_ENOTHELD);
  CHECK_RC(thing_singleton_release(sa), 0);
  CHECK(wait_gains(&b, 1));
  CHECK_EQ(atomic_load(&a.losses), 1);
  CHECK(atomic_load(&b.last_token) > ta);
  CHECK(!thing_singleton_held(sa, NULL));
  thing_singleton_stop(sb); /* lets go: a takes it again */
  CHECK(wait_gains(&a, 2));
  CHECK_EQ(atomic_load(&b.losses), 1);
  thing_singleton_stop(sa);
  thing_singleton_options_t bad = {.name = "a{b"};
  CHECK_RC(thing_singleton_start(ts, &bad, &sa), THING_ENAME);
}

/* The grid calls under the shim, refusing what they must. */
static void test_grid_calls(grid_t *g) {
  grid_cache_config_t cfg = {.name = "b", .partitions = 64};
  CHECK_RC(grid_cache_create(g, &cfg), 0);
  grid_batch_op_t ops[3] = {
      {.kind = GRID_BATCH_PUT, .key = "{t}.a", .key_len = 5, .value = "1", .value_len = 1},
      {.kind = GRID_BATCH_PUT, .key = "{t}.b", .key_len = 5, .value = "2", .value_len = 1},
      {.kind = GRID_BATCH_CHECK, .key = "{t}.c", .key_len = 5, .cond = GRID_IF_PRESENT},
  };
  size_t failed = 99;
  CHECK_RC(grid_batch(g, "b", ops, 3, &failed), GRID_ENOTFOUND);
  CHECK_EQ(failed, 2);
  CHECK(strstr(grid_last_error(), "op 2") != NULL);
  grid_value_t v;
  CHECK_RC(grid_get(g, "b", "{t}.a", 5, &v), GRID_ENOTFOUND);
  ops[2].cond = GRID_IF_ABSENT;
  CHECK_RC(grid_batch(g, "b", ops, 3, &failed), 0);
  CHECK(ops[0].version_out != 0 && ops[1].version_out > ops[0].version_out);
  CHECK(!ops[0].existed && ops[2].version_out == 0);
  /* Keys of two partitions. */
  char other[16];
  for (int i = 0;; i++) {
    snprintf(other, sizeof other, "{u%d}.a", i);
    if (grid_partition_of(other, strlen(other), 64) != grid_partition_of("{t}", 3, 64)) break;
  }
  ops[2] = (grid_batch_op_t){.kind = GRID_BATCH_PUT, .key = other, .key_len = strlen(other)};
  CHECK_RC(grid_batch(g, "b", ops, 3, &failed), GRID_EINVAL);
  CHECK_EQ(failed, 2);
  CHECK(strstr(grid_last_error(), "partition") != NULL);
  CHECK_RC(grid_batch(g, "b", ops, 0, &failed), GRID_EINVAL);
  /* Versions as conditions, and a delete. */
  grid_batch_op_t cas[2] = {
      {.kind = GRID_BATCH_PUT, .key = "{t}.a", .key_len = 5, .value = "3", .value_len = 1,
       .cond = GRID_IF_VERSION, .version = ops[0].version_out},
      {.kind = GRID_BATCH_DELETE, .key = "{t}.b", .key_len = 5},
  };
  CHECK_RC(grid_batch(g, "b", cas, 2, &failed), 0);
  CHECK_RC(grid_batch(g, "b", cas, 2, &failed), GRID_EVERSION);
  CHECK_EQ(failed, 0);
  CHECK_RC(grid_get(g, "b", "{t}.a", 5, &v), 0);
  CHECK_STR(v.data, "3");
  grid_value_free(&v);
  /* get_prefix: a whole affinity part is needed; a bound on what it returns. */
  grid_entry_t *ents;
  size_t n;
  CHECK_RC(grid_get_prefix(g, "b", "{t", 2, 0, &ents, &n), GRID_EINVAL);
  CHECK_RC(grid_get_prefix(g, "b", "plain", 5, 0, &ents, &n), GRID_EINVAL);
  CHECK_RC(grid_put(g, "b", "{t}.z", 5, "9", 1, 0, NULL), 0);
  CHECK_RC(grid_get_prefix(g, "b", "{t}.", 4, 0, &ents, &n), 0);
  CHECK_EQ(n, 2);
  grid_entries_free(ents, n);
  CHECK_RC(grid_get_prefix(g, "b", "{t}.", 4, 1, &ents, &n), GRID_ELIMIT);
  CHECK_RC(grid_get_prefix(g, "b", "{t}.q", 5, 0, &ents, &n), 0);
  CHECK_EQ(n, 0);
  grid_entries_free(ents, n);
}

static void run_all(grid_t *g) {
  thing_store_t *ts;
  CHECK_RC(thing_open(g, NULL, &ts), 0);
  test_types_and_batches(ts);
  test_locks(ts);
  test_subscriptions(ts);
  test_singleton(ts);
  thing_close(ts);
  test_grid_calls(g);
}

int main(void) {
  grid_t *g;
  fprintf(stderr, "-- embedded node\n");
  CHECK_RC(grid_open("embedded:", NULL, &g), 0);
  run_all(g);
  grid_close(g);

  fprintf(stderr, "-- remote node\n");
  harness_node_t node;
  const char *settings[] = {"change_buffer_bytes=4096", "output_bytes_max=4096", NULL};
  harness_start(&node, settings);
  CHECK_RC(grid_open(node.uri, NULL, &g), 0);
  run_all(g);
  {
    thing_store_t *ts;
    CHECK_RC(thing_open(g, NULL, &ts), 0);
    test_subscription_gap(g, ts);
    thing_close(ts);
  }
  grid_close(g);
  harness_stop(&node);
  fprintf(stderr, "test_thing: all passed\n");
  return 0;
}
