/*
 * test_repl_order: the commit order of a partition's primary on its own
 * (repl_order.h): writes acknowledged out of order commit in counter
 * order; a head write still waiting holds back the writes behind it; an
 * abandoned write leaves without committing and the ones behind it still
 * commit; a held read leaves exactly when committed reaches what it saw;
 * an empty FIFO catches committed up to applied unless writes were given
 * up; and, over seeded random sequences checked against a reference model
 * written here, committed never goes down.
 *
 * Everything here is pure computation: items live in the test's arrays,
 * committed and applied are plain numbers. Run with a test name as
 * argument to run that test alone.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "repl_order.h"

/* The counters of a handed-back write list, in its order, as "1,2,3". */
static const char *write_list(const repl_order_write_t *l, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (; l; l = l->next)
    n += (size_t)snprintf(buf + n, cap - n, "%s%llu", n ? "," : "",
                          (unsigned long long)l->counter);
  return buf;
}

/* The releases of a handed-back wait list, in its order. */
static const char *wait_list(const repl_order_wait_t *l, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (; l; l = l->next)
    n += (size_t)snprintf(buf + n, cap - n, "%s%llu", n ? "," : "",
                          (unsigned long long)l->release);
  return buf;
}

/* One advance; returns committed and checks the written lists. */
static uint64_t advance(repl_order_t *o, uint64_t committed, uint64_t applied,
                        const char *writes, const char *waits) {
  repl_order_out_t out;
  char buf[256];
  uint64_t c = repl_order_advance(o, committed, applied, &out);
  CHECK(c >= committed);
  CHECK_STR(write_list(out.writes, buf, sizeof buf), writes);
  CHECK_STR(wait_list(out.waits, buf, sizeof buf), waits);
  return c;
}

/* Acks that come in 3, 2, 1 commit nothing until 1's, then 1, 2, 3. */
static void test_out_of_order_acks_commit_in_order(void) {
  repl_order_t o;
  repl_order_write_t w[3];
  repl_order_init(&o);
  for (int i = 0; i < 3; i++) repl_order_push(&o, &w[i], (uint64_t)i + 1, 1, 0);
  CHECK_EQ(o.pending, 3);
  CHECK_EQ(repl_order_ack(&w[2]), 1);
  CHECK_EQ(advance(&o, 0, 3, "", ""), 0);
  CHECK_EQ(repl_order_ack(&w[1]), 1);
  CHECK_EQ(advance(&o, 0, 3, "", ""), 0);
  CHECK_EQ(repl_order_ack(&w[0]), 1);
  CHECK_EQ(advance(&o, 0, 3, "1,2,3", ""), 3);
  CHECK(repl_order_empty(&o));
  CHECK_EQ(o.pending, 0);
}

/* A head waiting for two backups holds back writes that wait for none,
 * through its first ack, and lets them all go with its second. */
static void test_head_waiting_blocks_later_writes(void) {
  repl_order_t o;
  repl_order_write_t w[3];
  repl_order_init(&o);
  repl_order_push(&o, &w[0], 11, 2, 10);
  repl_order_push(&o, &w[1], 12, 0, 10);
  repl_order_push(&o, &w[2], 13, 0, 10);
  CHECK_EQ(advance(&o, 10, 13, "", ""), 10);
  CHECK_EQ(repl_order_ack(&w[0]), 0);
  CHECK_EQ(advance(&o, 10, 13, "", ""), 10);
  CHECK_EQ(o.pending, 3);
  CHECK_EQ(repl_order_ack(&w[0]), 1);
  CHECK_EQ(advance(&o, 10, 13, "11,12,13", ""), 13);
}

/* An abandoned head leaves without moving committed, and the writes
 * behind it still commit as they are acked; one abandoned in the middle
 * does not hold back the write behind it either. */
static void test_abandoned_write_skipped(void) {
  repl_order_t o;
  repl_order_write_t w[5];
  repl_order_init(&o);
  for (int i = 0; i < 5; i++) repl_order_push(&o, &w[i], (uint64_t)i + 1, 1, 0);
  repl_order_abandon(&o, &w[0]);
  CHECK(w[0].abandoned && w[0].waiting == 0);
  CHECK_EQ(advance(&o, 0, 5, "1", ""), 0);
  /* A backup that answers after the write was given up changes nothing. */
  CHECK_EQ(repl_order_ack(&w[0]), 1);
  repl_order_ack(&w[1]);
  CHECK_EQ(advance(&o, 0, 5, "2", ""), 2);
  repl_order_abandon(&o, &w[3]);
  CHECK_EQ(advance(&o, 2, 5, "", ""), 2);
  repl_order_ack(&w[4]);
  CHECK_EQ(advance(&o, 2, 5, "", ""), 2); /* 3 still waits */
  repl_order_ack(&w[2]);
  CHECK_EQ(advance(&o, 2, 5, "3,4,5", ""), 5);
  CHECK_EQ(o.pending, 0);
}

/* Held reads leave in the advance that brings committed to their
 * release, never one before, whether a write's commit or the catch-up to
 * applied brings it there. */
static void test_waits_released_exactly_at_release(void) {
  repl_order_t o;
  repl_order_write_t w[4];
  repl_order_wait_t t[4];
  repl_order_init(&o);
  for (int i = 0; i < 4; i++) repl_order_push(&o, &w[i], (uint64_t)i + 1, 1, 0);
  CHECK_EQ(repl_order_may_answer(&o, 0, 6, 2), 0);
  repl_order_hold(&o, &t[0], 2, 0);
  repl_order_hold(&o, &t[1], 3, 0);
  repl_order_hold(&o, &t[2], 3, 0);
  repl_order_hold(&o, &t[3], 6, 0); /* past every write: applied covers it */
  CHECK_EQ(o.pending, 8);
  repl_order_ack(&w[0]);
  CHECK_EQ(advance(&o, 0, 6, "1", ""), 1);
  repl_order_ack(&w[1]);
  CHECK_EQ(advance(&o, 1, 6, "2", "2"), 2);
  CHECK_EQ(repl_order_may_answer(&o, 2, 6, 2), 1);
  CHECK_EQ(repl_order_may_answer(&o, 2, 6, 3), 0);
  repl_order_ack(&w[2]);
  CHECK_EQ(advance(&o, 2, 6, "3", "3,3"), 3); /* newest first */
  repl_order_ack(&w[3]);
  CHECK_EQ(advance(&o, 3, 6, "4", "6"), 6);
  CHECK_EQ(o.pending, 0);
}

/* With the FIFO empty committed catches up to applied; not while a write
 * is pending, not after writes were given up, and again once this node
 * resumes leading with the given-up writes gone. */
static void test_empty_fifo_catches_up_unless_abandoned(void) {
  repl_order_t o;
  repl_order_write_t w[2];
  repl_order_wait_t t;
  repl_order_init(&o);
  CHECK_EQ(advance(&o, 3, 7, "", ""), 7);
  CHECK_EQ(repl_order_may_answer(&o, 3, 7, 7), 1);
  repl_order_push(&o, &w[0], 8, 1, 7);
  CHECK_EQ(repl_order_may_answer(&o, 7, 8, 8), 0);
  CHECK_EQ(advance(&o, 7, 9, "", ""), 7);
  repl_order_hold(&o, &t, 8, 7);
  repl_order_abandon(&o, &w[0]);
  /* Still queued: resuming now must not make it the truth. */
  repl_order_resume(&o);
  CHECK_EQ(o.abandoned, 1);
  CHECK_EQ(advance(&o, 7, 9, "8", ""), 7);
  CHECK_EQ(advance(&o, 7, 9, "", ""), 7);
  /* The shell fails the waits of a partition it gave up. */
  CHECK(repl_order_take_waits(&o) == &t);
  CHECK_EQ(o.pending, 0);
  repl_order_resume(&o);
  CHECK_EQ(o.abandoned, 0);
  CHECK_EQ(advance(&o, 7, 9, "", ""), 9);
  repl_order_push(&o, &w[1], 10, 0, 9);
  CHECK_EQ(advance(&o, 9, 10, "10", ""), 10);
  CHECK(repl_order_close(&o) == NULL);
}

/* A stopping node: close forgets the writes and hands back the waits. */
static void test_close(void) {
  repl_order_t o;
  repl_order_write_t w[2];
  repl_order_wait_t t[2];
  repl_order_init(&o);
  repl_order_push(&o, &w[0], 1, 1, 0);
  repl_order_push(&o, &w[1], 2, 1, 0);
  repl_order_hold(&o, &t[0], 1, 0);
  repl_order_hold(&o, &t[1], 2, 0);
  repl_order_wait_t *l = repl_order_close(&o);
  CHECK(l == &t[1] && l->next == &t[0] && !t[0].next);
  CHECK(repl_order_empty(&o));
  CHECK_EQ(o.pending, 0);
}

/* ---- seeded random sequences against a reference model ------------------ */

#define MODEL_STEPS 400
#define MODEL_SEEDS 300

/* The reference: every write ever pushed, in push order, and every wait
 * ever held. It keeps no FIFO: the writes gone are the longest prefix of
 * the history that is ready, which is what "only the head leaves" means. */
typedef struct model {
  struct {
    uint64_t counter;
    int waiting, abandoned, gone;
  } w[MODEL_STEPS];
  size_t nw, ngone;
  struct {
    uint64_t release;
    int released, failed;
  } t[MODEL_STEPS];
  size_t nt;
  uint64_t committed, applied;
  int abandoned;
} model_t;

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* What advance must do: the prefix of ready writes leaves; committed is
 * the last counter among them that was not given up, or applied once all
 * left while nothing was given up, and never less than it was. */
static void model_advance(model_t *m) {
  while (m->ngone < m->nw && m->w[m->ngone].waiting <= 0) {
    m->w[m->ngone].gone = 1;
    if (!m->w[m->ngone].abandoned && m->w[m->ngone].counter > m->committed)
      m->committed = m->w[m->ngone].counter;
    m->ngone++;
  }
  if (m->ngone == m->nw && !m->abandoned && m->applied > m->committed)
    m->committed = m->applied;
}

/* Checks one advance of o against the model's. */
static void check_advance(repl_order_t *o, model_t *m, repl_order_write_t *W,
                          repl_order_wait_t *T) {
  size_t gone_before = m->ngone;
  uint64_t before = m->committed;
  repl_order_out_t out;
  uint64_t c = repl_order_advance(o, m->committed, m->applied, &out);
  model_advance(m);
  CHECK(c >= before); /* committed never goes down */
  CHECK_EQ(c, m->committed);
  size_t i = gone_before;
  for (repl_order_write_t *x = out.writes; x; x = x->next, i++) {
    CHECK(i < m->ngone);
    CHECK(x == &W[i]); /* in push order, that is counter order */
  }
  CHECK_EQ(i, m->ngone);
  for (repl_order_wait_t *x = out.waits; x; x = x->next) {
    size_t k = (size_t)(x - T);
    CHECK(k < m->nt && !m->t[k].released && !m->t[k].failed);
    CHECK(m->t[k].release <= c); /* never earlier */
    m->t[k].released = 1;
  }
  for (size_t k = 0; k < m->nt; k++)
    if (!m->t[k].released && !m->t[k].failed) CHECK(m->t[k].release > c);
}

/* One random step (push, ack, abandon, resume, a read, applied moving on
 * by itself), then an advance when it is drawn. */
static void model_step(repl_order_t *o, model_t *m, repl_order_write_t *W,
                       repl_order_wait_t *T, uint64_t *seed) {
  uint64_t r = rnd(seed);
  size_t live = m->nw - m->ngone;
  switch (r % 8) {
    case 0: /* a write: its counter lies past applied, as the store gives */
      if (m->nw < MODEL_STEPS) {
        uint64_t counter = m->applied + 1 + (r >> 8) % 3;
        int waiting = (int)((r >> 16) % 3);
        repl_order_push(o, &W[m->nw], counter, waiting, m->committed);
        m->w[m->nw].counter = counter;
        m->w[m->nw].waiting = waiting;
        m->nw++;
        m->applied = counter;
      }
      break;
    case 1:
    case 2: /* an ack of a write that still waits for one */
      if (live) {
        size_t i = m->ngone + (size_t)((r >> 8) % live);
        if (m->w[i].waiting > 0) {
          m->w[i].waiting--;
          CHECK_EQ(repl_order_ack(&W[i]), m->w[i].waiting <= 0);
        }
      }
      break;
    case 3: /* the lead moves away, rarely */
      if (live && (r >> 8) % 4 == 0) {
        size_t i = m->ngone + (size_t)((r >> 16) % live);
        repl_order_abandon(o, &W[i]);
        m->w[i].waiting = 0;
        m->w[i].abandoned = 1;
        m->abandoned = 1;
        for (repl_order_wait_t *x = repl_order_take_waits(o); x; x = x->next)
          m->t[x - T].failed = 1;
      }
      break;
    case 4: /* this node leads the partition again */
      repl_order_resume(o);
      if (m->ngone == m->nw) m->abandoned = 0;
      break;
    case 5: /* a read that saw some state up to applied */
      if (m->applied && m->nt < MODEL_STEPS) {
        uint64_t release = 1 + (r >> 8) % m->applied;
        int now = release <= m->committed || (m->ngone == m->nw && release <= m->applied);
        CHECK_EQ(repl_order_may_answer(o, m->committed, m->applied, release), now);
        if (!now) {
          repl_order_hold(o, &T[m->nt], release, m->committed);
          m->t[m->nt++].release = release;
        }
      }
      break;
    case 6: /* applied moves without a record (a write whose record was lost) */
      m->applied += 1;
      break;
    default: break;
  }
  if (r % 8 == 7 || (r >> 32) % 3 == 0) check_advance(o, m, W, T);
}

static void test_random_against_model(void) {
  static model_t m;
  static repl_order_write_t W[MODEL_STEPS];
  static repl_order_wait_t T[MODEL_STEPS];
  for (uint64_t s = 1; s <= MODEL_SEEDS; s++) {
    uint64_t seed = s * 0x9E3779B97F4A7C15ull;
    repl_order_t o;
    repl_order_init(&o);
    memset(&m, 0, sizeof m);
    for (int i = 0; i < MODEL_STEPS; i++) model_step(&o, &m, W, T, &seed);
    /* Every write acked, then one last advance: what was pushed is gone. */
    for (size_t i = m.ngone; i < m.nw; i++)
      while (m.w[i].waiting > 0) {
        m.w[i].waiting--;
        repl_order_ack(&W[i]);
      }
    check_advance(&o, &m, W, T);
    CHECK(repl_order_empty(&o));
    size_t held = 0;
    for (size_t k = 0; k < m.nt; k++) held += !m.t[k].released && !m.t[k].failed;
    CHECK_EQ(o.pending, held);
  }
}

#define RUN_ONE(fn)                                          \
  do {                                                       \
    if (!only || strcmp(only, #fn) == 0) RUN(fn);            \
  } while (0)

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  RUN_ONE(test_out_of_order_acks_commit_in_order);
  RUN_ONE(test_head_waiting_blocks_later_writes);
  RUN_ONE(test_abandoned_write_skipped);
  RUN_ONE(test_waits_released_exactly_at_release);
  RUN_ONE(test_empty_fifo_catches_up_unless_abandoned);
  RUN_ONE(test_close);
  RUN_ONE(test_random_against_model);
  fprintf(stderr, "test_repl_order: all passed\n");
  return 0;
}
