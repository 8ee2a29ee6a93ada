/*
 * The client's named bounds, filled: grid_options_t.async_max caps the
 * async requests of a handle that are in flight or on the retry list.
 *
 * To keep requests on the retry list, a one-node cluster is fenced: once
 * the handle has the node's partition map, ZooKeeper is stopped (SIGSTOP)
 * and the node, past its lease, answers every data request with
 * GRID_ECLUSTER (route.c, cluster.c), which the client sends again until
 * the call's deadline. (A node that never had a map, with
 * cluster_min_nodes above the nodes there are, refuses the same way, but a
 * handle without a map answers an async call's refusal at once instead of
 * keeping it: nothing would wait.)
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "grid.h"
#include "harness.h"
#include "pmap.h"

#define BOUNDS_ASYNC_MAX 8
#define BOUNDS_TIMEOUT_MS 3000
#define BOUNDS_WAIT_STEPS 600 /* of 50 ms: what the test waits for at most */

static harness_zk_t zk;
static harness_node_t node;

/* What the callbacks saw; each accepted request has a slot (its arg). */
typedef struct bounds_call {
  atomic_int runs;      /* times its callback ran: 1 at the end */
  atomic_int status;
} bounds_call_t;

static bounds_call_t calls[BOUNDS_ASYNC_MAX + 2];
static atomic_int calls_done;
static int refused_arg; /* the arg of refused calls: never called back */

static void on_get(int status, const grid_value_t *value, void *arg) {
  (void)value;
  CHECK(arg != &refused_arg);
  bounds_call_t *c = arg;
  atomic_store(&c->status, status);
  atomic_fetch_add(&c->runs, 1);
  atomic_fetch_add(&calls_done, 1);
}

static void on_write(int status, uint64_t version, void *arg) {
  (void)status;
  (void)version;
  (void)arg;
  CHECK(!"a refused write's callback ran");
}

static void wait_calls_done(int n) {
  for (int i = 0; i < BOUNDS_WAIT_STEPS && atomic_load(&calls_done) < n; i++)
    harness_sleep_ms(50);
  CHECK_EQ(atomic_load(&calls_done), n);
}

/* The node acts on a map placing "default", and then g's router has it
 * too (grid_open fetches the map). */
static grid_t *open_with_map(void) {
  for (int i = 0; i < BOUNDS_WAIT_STEPS; i++) {
    pmap_t m;
    harness_pmap(node.port, &m);
    int ready = m.epoch > 0 && pmap_find_cache(&m, "default") != NULL;
    pmap_free(&m);
    if (ready) break;
    CHECK(i + 1 < BOUNDS_WAIT_STEPS);
    harness_sleep_ms(50);
  }
  grid_options_t o = {.timeout_ms = BOUNDS_TIMEOUT_MS, .client_name = "test_client_bounds",
                      .async_max = BOUNDS_ASYNC_MAX};
  grid_t *g = NULL;
  CHECK_RC(grid_open(node.uri, &o, &g), 0);
  CHECK_RC(grid_put(g, "default", "k", 1, "v", 1, 0, NULL), 0);
  return g;
}

/* ZooKeeper stops answering; the node fences itself after its lease. */
static void fence_node(grid_t *g) {
  harness_pause_pid(zk.pid);
  grid_set_timeout(g, 300);
  int rc = 0;
  for (int i = 0; i < BOUNDS_WAIT_STEPS && rc != GRID_ECLUSTER; i++) {
    grid_value_t v;
    rc = grid_get(g, "default", "k", 1, &v);
    if (rc == 0) grid_value_free(&v);
    if (rc != GRID_ECLUSTER) harness_sleep_ms(50);
  }
  CHECK_RC(rc, GRID_ECLUSTER);
  grid_set_timeout(g, BOUNDS_TIMEOUT_MS);
}

/* async_max requests are accepted and held (retried until their
 * deadline); one more is refused at once, with no callback; once they
 * have ended, a new one is accepted again. */
static void test_async_max(void) {
  grid_t *g = open_with_map();
  fence_node(g);

  for (int i = 0; i < BOUNDS_ASYNC_MAX; i++)
    CHECK_RC(grid_get_async(g, "default", "k", 1, on_get, &calls[i]), 0);
  /* Refused while the eight are still counted: the node refuses them
   * unrun (GRID_ECLUSTER), so they are held for a retry, not answered. */
  CHECK_RC(grid_get_async(g, "default", "k", 1, on_get, &refused_arg), GRID_EBUSY);
  CHECK_RC(grid_put_async(g, "default", "k", 1, "w", 1, 0, on_write, &refused_arg), GRID_EBUSY);
  CHECK_RC(grid_delete_async(g, "default", "k", 1, on_write, &refused_arg), GRID_EBUSY);

  /* The bound is the handle's: another handle still sends. */
  grid_options_t o = {.timeout_ms = BOUNDS_TIMEOUT_MS, .client_name = "test_client_bounds"};
  grid_t *other = NULL;
  CHECK_RC(grid_open(node.uri, &o, &other), 0);
  CHECK_RC(grid_get_async(other, "default", "k", 1, on_get, &calls[BOUNDS_ASYNC_MAX]), 0);

  wait_calls_done(BOUNDS_ASYNC_MAX + 1);
  for (int i = 0; i <= BOUNDS_ASYNC_MAX; i++) {
    CHECK_EQ(atomic_load(&calls[i].runs), 1);
    CHECK_RC(atomic_load(&calls[i].status), GRID_ECLUSTER);
  }
  fprintf(stderr, "   %d held until their deadline, the next refused: GRID_EBUSY\n",
          BOUNDS_ASYNC_MAX);

  /* A place is given back as its callback starts: the new call may have
   * to try a moment more, while the last callbacks run. */
  bounds_call_t *last = &calls[BOUNDS_ASYNC_MAX + 1];
  int rc = GRID_EBUSY;
  for (int i = 0; i < BOUNDS_WAIT_STEPS && rc == GRID_EBUSY; i++) {
    rc = grid_get_async(g, "default", "k", 1, on_get, last);
    if (rc == GRID_EBUSY) harness_sleep_ms(50);
  }
  CHECK_RC(rc, 0);
  wait_calls_done(BOUNDS_ASYNC_MAX + 2);
  CHECK_EQ(atomic_load(&last->runs), 1);
  CHECK_RC(atomic_load(&last->status), GRID_ECLUSTER);

  CHECK(kill(zk.pid, SIGCONT) == 0);
  grid_close(other);
  grid_close(g);
  /* Closing ran no callback twice, and none for a refused call. */
  CHECK_EQ(atomic_load(&calls_done), BOUNDS_ASYNC_MAX + 2);
}

int main(void) {
  harness_zk_start(&zk);
  const char *settings[] = {"cluster_min_nodes=1", "zk_session_timeout_ms=1000", NULL};
  harness_start_cluster_node(&node, &zk, "bounds", 0, settings);
  RUN(test_async_max);
  CHECK(harness_stop(&node) == 0);
  harness_zk_stop(&zk);
  printf("test_client_bounds: all passed\n");
  return 0;
}
