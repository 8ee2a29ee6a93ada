/*
 * lock: a Thing's lock with a lease and a fencing token, and the cluster
 * singleton built on one.
 *
 * Two entries in the Thing's partition:
 *   "{thing}#lock"   the lease: the holder's name, with a time to live of
 *                    the lease; gone when the lease runs out (the grid's
 *                    TTL, kept on every copy: a failover keeps it)
 *   "{thing}#fence"  written at each grant (never expires): its version is
 *                    the grant's fencing token. Versions of a partition
 *                    only grow (epoch above counter), so each grant's token
 *                    is greater than every earlier one's.
 *   "{thing}#wait"   a waiter's claim on the next grant (a short TTL,
 *                    renewed while it waits): a holder that lets go and
 *                    locks again at once does not starve the waiters.
 * A grant is one atomic batch: lock := me (TTL, only if absent), fence :=
 * me, and the claim is mine (taken away) or nobody's. A renewal: [fence still my token?] lock := me (TTL, only if
 * present). A fenced write carries [fence still my token? lock present?]
 * in its own batch, so a holder whose lease ran out (paused, cut off)
 * cannot write once another was granted, nor after its lease ended.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "thing_int.h"

#define THING_LEASE_DEFAULT_MS 10000
#define THING_LOCK_POLL_MS 20         /* a waiting thing_lock tries again */
#define THING_LOCK_CLAIM_MS 100       /* a waiter's claim on the next grant
                                         lasts at least (renewed at each
                                         try; four rounds of its own when
                                         they are slower) */

struct thing_lock {
  thing_store_t *ts;
  char *lock_key, *fence_key, *wait_key;
  size_t lock_len, fence_len, wait_len;
  uint32_t lease_ms;
  uint64_t token;
  int64_t held_until;                /* monotonic ms: believed held until */
};

static void thing_sleep_ms(int64_t ms) {
  if (ms <= 0) return;
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static int64_t thing_trusted(uint32_t lease_ms) {
  return (int64_t)lease_ms * THING_LEASE_TRUST_PERCENT / 100;
}

void thing_lock_forget(thing_lock_t *l) {
  if (!l) return;
  free(l->lock_key);
  free(l->fence_key);
  free(l->wait_key);
  free(l);
}

/* One attempt at a grant: 0, THING_ELOCKED, or a call's error. claim: the
 * version of this waiter's claim on the next grant ("{thing}#wait"), 0
 * for none: without one, a grant also needs that nobody else claims it;
 * with one, the grant takes it away. *claim_lost: the claim ran out. */
static int thing_lock_try(thing_lock_t *l, uint64_t claim, int *claim_lost) {
  thing_store_t *ts = l->ts;
  size_t mlen = strlen(ts->member);
  grid_batch_op_t ops[3] = {
      {.kind = GRID_BATCH_PUT, .key = l->lock_key, .key_len = l->lock_len,
       .value = ts->member, .value_len = mlen, .ttl_ms = l->lease_ms, .cond = GRID_IF_ABSENT},
      {.kind = GRID_BATCH_PUT, .key = l->fence_key, .key_len = l->fence_len,
       .value = ts->member, .value_len = mlen},
      {.kind = claim ? GRID_BATCH_DELETE : GRID_BATCH_CHECK, .key = l->wait_key,
       .key_len = l->wait_len, .cond = claim ? GRID_IF_VERSION : GRID_IF_ABSENT,
       .version = claim},
  };
  int64_t sent = thing_mono_ms();
  size_t failed = 0;
  int rc = grid_batch(ts->g, ts->cache, ops, 3, &failed);
  *claim_lost = claim && failed == 2 && (rc == GRID_EVERSION || rc == GRID_ENOTFOUND);
  if (rc == GRID_EEXIST || *claim_lost) return THING_ELOCKED;
  if (rc != 0) return rc;
  l->token = ops[1].version_out;
  l->held_until = sent + thing_trusted(l->lease_ms);
  return 0;
}

/* A waiter keeps a claim on the next grant while it waits, so that a
 * holder that lets go and locks again at once does not starve it: makes
 * or renews it (*claim: its version, 0 when another waiter has it) for
 * ttl_ms. */
static void thing_lock_claim(thing_lock_t *l, uint64_t *claim, uint32_t ttl_ms) {
  thing_store_t *ts = l->ts;
  grid_batch_op_t op = {.kind = GRID_BATCH_PUT, .key = l->wait_key, .key_len = l->wait_len,
                        .value = ts->member, .value_len = strlen(ts->member),
                        .ttl_ms = ttl_ms, .cond = *claim ? GRID_IF_VERSION : GRID_IF_ABSENT,
                        .version = *claim};
  *claim = grid_batch(ts->g, ts->cache, &op, 1, NULL) == 0 ? op.version_out : 0;
}

int thing_lock(thing_store_t *ts, const char *thing, uint32_t lease_ms, uint32_t wait_ms,
               thing_lock_t **out) {
  *out = NULL;
  thing_lock_t *l = calloc(1, sizeof *l);
  if (!l) return GRID_ENOMEM;
  int rc;
  l->ts = ts;
  l->lease_ms = lease_ms ? lease_ms : THING_LEASE_DEFAULT_MS;
  l->lock_key = thing_key(thing, "#lock", NULL, &l->lock_len, &rc);
  if (l->lock_key) l->fence_key = thing_key(thing, "#fence", NULL, &l->fence_len, &rc);
  if (l->fence_key) l->wait_key = thing_key(thing, "#wait", NULL, &l->wait_len, &rc);
  if (!l->wait_key) {
    thing_lock_forget(l);
    return rc;
  }
  int64_t deadline = thing_mono_ms() + wait_ms;
  uint64_t claim = 0;
  for (;;) {
    int64_t round = thing_mono_ms();
    int lost = 0;
    rc = thing_lock_try(l, claim, &lost);
    if (lost) {
      /* The claim ran out (a slow round): the lock may be free all the
       * same, so at once again as anyone would. */
      claim = 0;
      rc = thing_lock_try(l, 0, &lost);
    }
    if (rc != THING_ELOCKED) break;
    int64_t left = deadline - thing_mono_ms();
    if (left <= 0) break;
    /* The claim outlives a few rounds of this waiter's, however slow its
     * round trips are. */
    int64_t took = thing_mono_ms() - round + THING_LOCK_POLL_MS;
    thing_lock_claim(l, &claim,
                     (uint32_t)(took * 4 > THING_LOCK_CLAIM_MS ? took * 4 : THING_LOCK_CLAIM_MS));
    thing_sleep_ms(left < THING_LOCK_POLL_MS ? left : THING_LOCK_POLL_MS);
  }
  if (claim && rc != 0) {
    /* Given up: the claim goes, so that others need not wait it out. */
    grid_batch_op_t op = {.kind = GRID_BATCH_DELETE, .key = l->wait_key, .key_len = l->wait_len,
                          .cond = GRID_IF_VERSION, .version = claim};
    (void)grid_batch(ts->g, ts->cache, &op, 1, NULL);
  }
  if (rc != 0) {
    thing_lock_forget(l);
    return rc;
  }
  *out = l;
  return 0;
}

uint64_t thing_lock_token(const thing_lock_t *l) { return l->token; }

bool thing_lock_held(const thing_lock_t *l) { return thing_mono_ms() < l->held_until; }

int thing_lock_renew(thing_lock_t *l) {
  thing_store_t *ts = l->ts;
  size_t mlen = strlen(ts->member);
  grid_batch_op_t ops[2] = {
      {.kind = GRID_BATCH_CHECK, .key = l->fence_key, .key_len = l->fence_len,
       .cond = GRID_IF_VERSION, .version = l->token},
      {.kind = GRID_BATCH_PUT, .key = l->lock_key, .key_len = l->lock_len,
       .value = ts->member, .value_len = mlen, .ttl_ms = l->lease_ms, .cond = GRID_IF_PRESENT},
  };
  int64_t sent = thing_mono_ms();
  int rc = grid_batch(ts->g, ts->cache, ops, 2, NULL);
  if (rc == GRID_EVERSION || rc == GRID_ENOTFOUND) {
    l->held_until = 0;
    return THING_ENOTHELD;
  }
  if (rc != 0) return rc;
  l->held_until = sent + thing_trusted(l->lease_ms);
  return 0;
}

/* Removes the lease if the grant is still the lock's. */
static int thing_lock_release(thing_lock_t *l) {
  grid_batch_op_t ops[2] = {
      {.kind = GRID_BATCH_CHECK, .key = l->fence_key, .key_len = l->fence_len,
       .cond = GRID_IF_VERSION, .version = l->token},
      {.kind = GRID_BATCH_DELETE, .key = l->lock_key, .key_len = l->lock_len,
       .cond = GRID_IF_PRESENT},
  };
  int rc = grid_batch(l->ts->g, l->ts->cache, ops, 2, NULL);
  l->held_until = 0;
  if (rc == GRID_EVERSION || rc == GRID_ENOTFOUND) return THING_ENOTHELD;
  return rc;
}

int thing_unlock(thing_lock_t *l) {
  if (!l) return GRID_EINVAL;
  int rc = thing_lock_release(l);
  thing_lock_forget(l);
  return rc;
}

/* ---- the cluster singleton ------------------------------------------------ */

#define THING_SINGLETON_LEASE_DEFAULT_MS 2000

struct thing_singleton {
  thing_store_t *ts;
  thing_singleton_options_t o;
  char thing[96];                 /* "$singleton.<name>" */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop, release;
  thing_lock_t *held;             /* the thread's */
  uint64_t token;                 /* under mu: 0 while not held */
  int64_t held_until;             /* under mu: the lease, as trusted */
  int64_t not_before;             /* after a release: try again then */
};

static void singleton_set(thing_singleton_t *s, uint64_t token, int64_t held_until) {
  pthread_mutex_lock(&s->mu);
  s->token = token;
  s->held_until = held_until;
  pthread_mutex_unlock(&s->mu);
}

/* The role is no longer this member's: said before anything else. */
static void singleton_lost(thing_singleton_t *s, int let_go) {
  singleton_set(s, 0, 0);
  if (s->o.on_loss) s->o.on_loss(s->held->token, s->o.arg);
  if (let_go) (void)thing_lock_release(s->held);
  thing_lock_forget(s->held);
  s->held = NULL;
}

/* Waits up to ms, or until stop or release is asked. */
static void singleton_wait(thing_singleton_t *s, int64_t ms) {
  if (ms <= 0) return;
  struct timespec ts = thing_deadline(ms);
  pthread_mutex_lock(&s->mu);
  if (!s->stop && !s->release) pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  pthread_mutex_unlock(&s->mu);
}

static void *singleton_main(void *arg) {
  thing_singleton_t *s = arg;
  uint32_t lease = s->o.lease_ms;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    int stop = s->stop, release = s->release;
    s->release = 0;
    pthread_mutex_unlock(&s->mu);
    int64_t now = thing_mono_ms();
    if (s->held) {
      if (stop || release) {
        singleton_lost(s, 1);
        s->not_before = now + lease;
      } else if (!thing_lock_held(s->held)) {
        /* Paused, or cut off, past what the lease is trusted for: the
         * role may be another's by now. */
        singleton_lost(s, 1);
      } else if (now >= s->held->held_until - thing_trusted(lease) * 2 / 3) {
        int rc = thing_lock_renew(s->held);
        if (rc == THING_ENOTHELD || !thing_lock_held(s->held)) singleton_lost(s, 0);
        else if (rc == 0) singleton_set(s, s->held->token, s->held->held_until);
      }
    }
    if (stop) break;
    if (!s->held && now >= s->not_before) {
      thing_lock_t *l = NULL;
      if (thing_lock(s->ts, s->thing, lease, 0, &l) == 0) {
        s->held = l;
        singleton_set(s, l->token, l->held_until);
        if (s->o.on_gain) s->o.on_gain(l->token, s->o.arg);
      }
    }
    int64_t wait = s->o.check_ms;
    if (s->held) {
      int64_t renew_at = s->held->held_until - thing_trusted(lease) * 2 / 3;
      wait = renew_at - thing_mono_ms();
      if (wait > s->o.check_ms) wait = s->o.check_ms;
      if (wait < 1) wait = 1;
    }
    singleton_wait(s, wait);
  }
  return NULL;
}

int thing_singleton_start(thing_store_t *ts, const thing_singleton_options_t *opts,
                          thing_singleton_t **out) {
  *out = NULL;
  thing_singleton_t *s = calloc(1, sizeof *s);
  if (!s) return GRID_ENOMEM;
  s->ts = ts;
  if (opts) s->o = *opts;
  const char *name = s->o.name ? s->o.name : "singleton";
  if (strlen(name) > 64 || !thing_name_ok(name)) {
    free(s);
    return THING_ENAME;
  }
  snprintf(s->thing, sizeof s->thing, "$singleton.%s", name);
  s->o.name = NULL; /* not kept: the caller's */
  if (!s->o.lease_ms) s->o.lease_ms = THING_SINGLETON_LEASE_DEFAULT_MS;
  if (!s->o.check_ms) s->o.check_ms = s->o.lease_ms / 10 ? s->o.lease_ms / 10 : 1;
  pthread_mutex_init(&s->mu, NULL);
  thing_cond_init(&s->cv);
  if (pthread_create(&s->thread, NULL, singleton_main, s) != 0) {
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return GRID_ENOMEM;
  }
  *out = s;
  return 0;
}

bool thing_singleton_held(thing_singleton_t *s, uint64_t *token) {
  pthread_mutex_lock(&s->mu);
  /* Not past the lease even while the thread is held up renewing it. */
  uint64_t t = thing_mono_ms() < s->held_until ? s->token : 0;
  pthread_mutex_unlock(&s->mu);
  if (token) *token = t;
  return t != 0;
}

int thing_singleton_release(thing_singleton_t *s) {
  pthread_mutex_lock(&s->mu);
  int held = s->token != 0;
  if (held) s->release = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return held ? 0 : THING_ENOTHELD;
}

void thing_singleton_stop(thing_singleton_t *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}
