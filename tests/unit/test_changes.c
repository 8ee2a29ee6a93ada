/*
 * test_changes: a partition's change ring (grid/src/changes.c): changes
 * read back in counter order, exactly those after a position, the oldest
 * forgotten to make room with a GAP for a reader that needed them, and the
 * ring's bytes never over its bound, checked against a plain model over
 * seeded random sizes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "changes.h"
#include "check.h"

typedef struct seen {
  change_t ch[4096];
  char keys[4096][64];
  char values[4096][512];
  size_t n;
  size_t stop_after;       /* 0: never stop early */
} seen_t;

static int collect(void *ctx, const change_t *ch) {
  seen_t *s = ctx;
  CHECK(s->n < 4096);
  s->ch[s->n] = *ch;
  CHECK(ch->key_len < sizeof s->keys[0] && ch->value_len < sizeof s->values[0]);
  memcpy(s->keys[s->n], ch->key, ch->key_len);
  s->keys[s->n][ch->key_len] = '\0';
  memcpy(s->values[s->n], ch->value, ch->value_len);
  s->values[s->n][ch->value_len] = '\0';
  s->n++;
  return s->stop_after && s->n >= s->stop_after;
}

/* Appends as the store does: the ring grows first while it may. */
static void append(changes_t *c, const change_t *ch) {
  size_t want = changes_grow_wanted(c, ch);
  if (want) {
    size_t before = c->cap;
    CHECK_EQ(changes_grow(c, want), 0);
    CHECK(c->cap > before && c->cap <= c->bytes_max);
  }
  changes_append(c, ch);
}

static void put(changes_t *c, uint64_t counter, const char *key, const char *value) {
  change_t ch = {.kind = CHANGE_PUT, .how = 3, .counter = counter, .version = counter | (7ull << 48),
                 .expire_at_ms = (int64_t)counter * 10, .key = key, .key_len = strlen(key),
                 .value = value, .value_len = strlen(value)};
  append(c, &ch);
}

static int read_all(const changes_t *c, uint64_t after, seen_t *s, uint64_t *next) {
  memset(s, 0, sizeof *s);
  return changes_read(c, after, UINT64_MAX, SIZE_MAX, collect, s, next);
}

static void test_in_order(void) {
  changes_t c;
  changes_init(&c, 4096, 100);
  put(&c, 101, "a", "one");
  put(&c, 102, "b", "two");
  change_t del = {.kind = CHANGE_DELETE, .counter = 103, .version = 103, .key = "a", .key_len = 1,
                  .value = "ignored", .value_len = 7};
  append(&c, &del);
  static seen_t s;
  uint64_t next;
  CHECK_EQ(read_all(&c, 100, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 3);
  CHECK_EQ(next, 103);
  CHECK_EQ(s.ch[0].counter, 101);
  CHECK_EQ(s.ch[0].kind, CHANGE_PUT);
  CHECK_STR(s.keys[0], "a");
  CHECK_STR(s.values[0], "one");
  CHECK_EQ(s.ch[0].version, 101 | (7ull << 48));
  CHECK_EQ(s.ch[0].expire_at_ms, 1010);
  CHECK_STR(s.values[1], "two");
  CHECK_EQ(s.ch[2].kind, CHANGE_DELETE);
  CHECK_EQ(s.ch[2].value_len, 0); /* a delete keeps no value */
  /* Only what comes after a position, up to a bound, at most max. */
  CHECK_EQ(read_all(&c, 101, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 2);
  CHECK_EQ(s.ch[0].counter, 102);
  memset(&s, 0, sizeof s);
  CHECK_EQ(changes_read(&c, 100, 102, SIZE_MAX, collect, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 2);
  CHECK_EQ(next, 102);
  memset(&s, 0, sizeof s);
  CHECK_EQ(changes_read(&c, 100, UINT64_MAX, 1, collect, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 1);
  CHECK_EQ(next, 101);
  memset(&s, 0, sizeof s);
  s.stop_after = 2; /* the callback stops the read */
  CHECK_EQ(changes_read(&c, 100, UINT64_MAX, SIZE_MAX, collect, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 2);
  CHECK_EQ(next, 102);
  /* A position past the newest: nothing yet, no gap. */
  CHECK_EQ(read_all(&c, 103, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 0);
  CHECK_EQ(next, 103);
  /* Before the ring's start: a GAP, nothing passed. */
  CHECK_EQ(read_all(&c, 99, &s, &next), CHANGES_GAP);
  CHECK_EQ(s.n, 0);
  changes_free(&c);
}

static void test_forgets_oldest_with_gap(void) {
  changes_t c;
  changes_init(&c, 512, 0);
  char key[16], value[64];
  for (uint64_t i = 1; i <= 100; i++) {
    snprintf(key, sizeof key, "k%llu", (unsigned long long)i);
    snprintf(value, sizeof value, "value-%llu-of-some-length", (unsigned long long)i);
    put(&c, i, key, value);
  }
  CHECK(c.used <= 512);
  CHECK(c.base > 0 && c.base < 100);
  CHECK_EQ(c.last, 100);
  static seen_t s;
  uint64_t next;
  /* What is held is exactly base+1 .. 100, with nothing missing. */
  CHECK_EQ(read_all(&c, c.base, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 100 - c.base);
  for (size_t i = 0; i < s.n; i++) {
    CHECK_EQ(s.ch[i].counter, c.base + 1 + i);
    snprintf(key, sizeof key, "k%llu", (unsigned long long)s.ch[i].counter);
    CHECK_STR(s.keys[i], key);
  }
  /* A reader that needed a forgotten change hears so. */
  CHECK_EQ(read_all(&c, c.base - 1, &s, &next), CHANGES_GAP);
  CHECK_EQ(read_all(&c, 0, &s, &next), CHANGES_GAP);
  changes_free(&c);
}

static void test_oversized_and_reset(void) {
  changes_t c;
  changes_init(&c, 256, 10);
  put(&c, 11, "a", "1");
  char big[400];
  memset(big, 'v', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  put(&c, 12, "b", big); /* larger than the ring: kept nowhere */
  static seen_t s;
  uint64_t next;
  CHECK_EQ(read_all(&c, 11, &s, &next), CHANGES_GAP); /* 12 is gone */
  CHECK_EQ(read_all(&c, 12, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 0);
  put(&c, 13, "c", "3");
  CHECK_EQ(read_all(&c, 12, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 1);
  CHECK_EQ(s.ch[0].counter, 13);
  /* A reset (a copy filled from a snapshot) forgets the history. */
  changes_reset(&c, 50);
  CHECK_EQ(read_all(&c, 13, &s, &next), CHANGES_GAP);
  CHECK_EQ(read_all(&c, 50, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 0);
  put(&c, 51, "d", "4");
  CHECK_EQ(read_all(&c, 50, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 1);
  changes_free(&c);
}

static void test_keeps_nothing_at_zero(void) {
  changes_t c;
  changes_init(&c, 0, 5);
  put(&c, 6, "a", "1");
  static seen_t s;
  uint64_t next;
  CHECK_EQ(read_all(&c, 5, &s, &next), CHANGES_GAP);
  CHECK_EQ(read_all(&c, 6, &s, &next), CHANGES_OK);
  CHECK_EQ(s.n, 0);
  CHECK(c.buf == NULL);
  changes_free(&c);
}

/* Seeded random sizes, against a model of every change appended: after
 * each append the ring holds exactly the newest changes of the model, from
 * base+1 to the last, and never more bytes than its bound. */
static void test_against_model(void) {
  static char model_keys[3000][64], model_values[3000][300];
  static seen_t s, hs;
  for (unsigned seed = 1; seed <= 20; seed++) {
    srand(seed);
    /* Small rings, and rings that grow through several sizes. */
    size_t bytes_max = 128 + (size_t)(rand() % (seed % 2 ? 2000 : 40000));
    changes_t c;
    changes_init(&c, bytes_max, 0);
    /* A reader that keeps up in small steps with a hint: it sees every
     * change held, in order, each once, or a GAP when it fell behind. */
    changes_hint_t hint = {0};
    uint64_t hpos = 0;
    for (uint64_t i = 1; i < 3000; i++) {
      int kl = 1 + rand() % 40, vl = rand() % 290;
      int del = rand() % 5 == 0;
      for (int k = 0; k < kl; k++) model_keys[i][k] = (char)('a' + (i + (uint64_t)k) % 26);
      model_keys[i][kl] = '\0';
      for (int k = 0; k < vl; k++) model_values[i][k] = (char)('A' + (i * 7 + (uint64_t)k) % 26);
      model_values[i][del ? 0 : vl] = '\0';
      change_t ch = {.kind = del ? CHANGE_DELETE : CHANGE_PUT, .how = (uint8_t)(i % 9),
                     .counter = i, .version = i,
                     .key = model_keys[i], .key_len = (size_t)kl, .value = model_values[i],
                     .value_len = del ? 0 : (size_t)vl};
      append(&c, &ch);
      CHECK(c.used <= c.cap && c.cap <= c.bytes_max);
      CHECK_EQ(c.last, i);
      if (rand() % 3 == 0) {
        memset(&hs, 0, sizeof hs);
        uint64_t hnext;
        size_t step = 1 + (size_t)(rand() % 6);
        int rc = changes_read_hinted(&c, hpos, UINT64_MAX, step, collect, &hs, &hnext, &hint);
        if (rc == CHANGES_GAP) {
          CHECK(hpos < c.base);
          hpos = c.base;
        } else {
          CHECK(hs.n <= step);
          for (size_t k = 0; k < hs.n; k++) {
            CHECK_EQ(hs.ch[k].counter, hpos + 1 + k);
            CHECK_STR(hs.keys[k], model_keys[hpos + 1 + k]);
            CHECK_STR(hs.values[k], model_values[hpos + 1 + k]);
          }
          CHECK_EQ(hnext, hpos + hs.n);
          hpos = hnext;
        }
      }
      if (i % 13 != 0) continue; /* a full check every few appends */
      uint64_t next;
      CHECK_EQ(read_all(&c, c.base, &s, &next), CHANGES_OK);
      CHECK_EQ(s.n, i - c.base);
      CHECK_EQ(s.n, c.count);
      for (size_t k = 0; k < s.n; k++) {
        uint64_t want = c.base + 1 + k;
        CHECK_EQ(s.ch[k].counter, want);
        CHECK_EQ(s.ch[k].how, want % 9);
        CHECK_STR(s.keys[k], model_keys[want]);
        CHECK_STR(s.values[k], model_values[want]);
      }
      if (c.base > 0) CHECK_EQ(read_all(&c, c.base - 1, &s, &next), CHANGES_GAP);
    }
    changes_free(&c);
  }
}

int main(void) {
  test_in_order();
  test_forgets_oldest_with_gap();
  test_oversized_and_reset();
  test_keeps_nothing_at_zero();
  test_against_model();
  printf("test_changes: ok\n");
  return 0;
}
