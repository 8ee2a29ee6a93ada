/*
 * test_part: which partition a key lands in: the {affinity} part, the
 * XXH3-mod-P rule, agreement with the public grid_partition_of, and an even
 * spread over partitions.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "check.h"
#include "grid.h"
#include "part.h"

/* The affinity of a C-string key, as a new C string in out. */
static void affinity_of(const char *key, char *out, size_t cap) {
  const void *aff = NULL;
  size_t aff_len = (size_t)-1;
  part_affinity(key, strlen(key), &aff, &aff_len);
  CHECK(aff != NULL || aff_len == 0);
  CHECK(aff_len < cap);
  /* The affinity is a slice of the key itself. */
  CHECK((const char *)aff >= key && (const char *)aff + aff_len <= key + strlen(key));
  memcpy(out, aff, aff_len);
  out[aff_len] = '\0';
}

static void check_affinity(const char *key, const char *want) {
  char got[256];
  affinity_of(key, got, sizeof got);
  if (strcmp(got, want) != 0)
    fprintf(stderr, "affinity of \"%s\": \"%s\", expected \"%s\"\n", key, got, want);
  CHECK_STR(got, want);
}

static void test_affinity(void) {
  check_affinity("{thing}.temp", "thing");
  check_affinity("{thing}.humidity", "thing");
  check_affinity("prefix{thing}suffix", "thing");
  check_affinity("a{b}c{d}", "b");          /* the first braces only */
  check_affinity("{}x", "{}x");             /* empty: the whole key */
  check_affinity("{}{x}", "{}{x}");         /* first '{' decides, and it is empty */
  check_affinity("{x", "{x");               /* no closing brace */
  check_affinity("x}", "x}");               /* no opening brace */
  check_affinity("}x{", "}x{");             /* '}' before '{' does not count */
  check_affinity("abc{", "abc{");           /* '{' at the very end */
  check_affinity("{", "{");
  check_affinity("}", "}");
  check_affinity("{{a}}", "{a");            /* up to the first '}' after '{' */
  check_affinity("a{b{c}d}", "b{c");
  check_affinity("plain", "plain");
  check_affinity("{a}", "a");

  /* The empty key: its affinity is empty. */
  const void *aff = (const void *)1;
  size_t aff_len = 99;
  const char empty[1] = {0};
  part_affinity(empty, 0, &aff, &aff_len);
  CHECK_EQ(aff_len, 0);

  /* Binary keys: braces around bytes that include NUL. */
  const unsigned char bin[] = {'x', '{', 0, 1, '}', 'y'};
  part_affinity(bin, sizeof bin, &aff, &aff_len);
  CHECK_EQ(aff_len, 2);
  CHECK(aff == bin + 2);
  /* A '{' past key_len is not looked at. */
  const char trunc[] = "ab{c}";
  part_affinity(trunc, 2, &aff, &aff_len);
  CHECK_EQ(aff_len, 2);
  CHECK(aff == trunc);
  /* A '}' past key_len is not looked at either. */
  part_affinity(trunc, 4, &aff, &aff_len);
  CHECK_EQ(aff_len, 4);
  CHECK(aff == trunc);
}

static uint32_t part_of_str(const char *key, uint32_t partitions) {
  return part_of(key, strlen(key), partitions);
}

static void test_same_affinity_same_partition(void) {
  const uint32_t ps[] = {1, 2, 7, 1024, 65536};
  char key[64];
  for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
    uint32_t P = ps[pi];
    for (int t = 0; t < 200; t++) {
      snprintf(key, sizeof key, "thing%d", t);
      uint32_t bare = part_of_str(key, P);
      /* Around the tag: a suffix, a prefix, a second tag, nothing. */
      const char *pre[] = {"", "", "x", "", ""};
      const char *post[] = {".temp", ".humidity", "", "{other}", ""};
      for (size_t f = 0; f < sizeof pre / sizeof pre[0]; f++) {
        char k2[64];
        snprintf(k2, sizeof k2, "%s{thing%d}%s", pre[f], t, post[f]);
        CHECK_EQ(part_of_str(k2, P), bare);
        CHECK_EQ(part_hash(k2, strlen(k2)), part_hash(key, strlen(key)));
      }
    }
  }
  /* And keys without shared affinity do spread: of 100 "{t0}.x" style keys
   * with different tags, not all land in one of 1024 partitions. */
  uint32_t first = part_of_str("{t0}.x", 1024);
  int differ = 0;
  for (int t = 1; t < 100; t++) {
    snprintf(key, sizeof key, "{t%d}.x", t);
    if (part_of_str(key, 1024) != first) differ++;
  }
  CHECK(differ > 90);
}

static void test_range_and_formula(void) {
  const uint32_t ps[] = {1, 7, 1024, 65536, 3, UINT32_MAX};
  char key[64];
  for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
    uint32_t P = ps[pi];
    for (int i = 0; i < 20000; i++) {
      /* Some keys with affinity, some without, some empty-braced. */
      switch (i % 4) {
        case 0: snprintf(key, sizeof key, "key:%d", i); break;
        case 1: snprintf(key, sizeof key, "{aff%d}.p%d", i / 7, i); break;
        case 2: snprintf(key, sizeof key, "{}k%d", i); break;
        default: snprintf(key, sizeof key, "k%d{", i); break;
      }
      size_t len = strlen(key);
      uint32_t p = part_of(key, len, P);
      CHECK(p < P);
      const void *aff;
      size_t aff_len;
      part_affinity(key, len, &aff, &aff_len);
      uint64_t h = XXH3_64bits(aff, aff_len);
      CHECK(part_hash(key, len) == h);
      CHECK_EQ(p, (uint32_t)(h % P));
      CHECK_EQ(grid_partition_of(key, len, P), p);
    }
    CHECK_EQ(part_of("", 0, P), (uint32_t)(XXH3_64bits("", 0) % P));
    CHECK_EQ(grid_partition_of("", 0, P), part_of("", 0, P));
  }
  /* One partition: always 0. */
  CHECK_EQ(part_of_str("anything", 1), 0);
  /* The public function takes 0 partitions without crashing. */
  CHECK_EQ(grid_partition_of("k", 1, 0), 0);
  /* A known value, so that a change of hash function is noticed. */
  CHECK_EQ(part_of_str("{thing}.temp", 1024),
           (uint32_t)(XXH3_64bits("thing", 5) % 1024));
}

static void test_distribution(void) {
  enum { KEYS = 1000000, P = 1024 };
  uint32_t *count = calloc(P, sizeof *count);
  CHECK(count != NULL);
  char key[32];
  for (int i = 0; i < KEYS; i++) {
    int n = snprintf(key, sizeof key, "key:%d", i);
    uint32_t p = part_of(key, (size_t)n, P);
    CHECK(p < P);
    count[p]++;
  }
  double mean = (double)KEYS / P;
  uint32_t lo = UINT32_MAX, hi = 0;
  uint64_t sum = 0;
  for (int p = 0; p < P; p++) {
    if (count[p] < lo) lo = count[p];
    if (count[p] > hi) hi = count[p];
    sum += count[p];
    if (count[p] < mean * 0.75 || count[p] > mean * 1.25)
      fprintf(stderr, "partition %d has %u keys, mean %.1f\n", p, count[p], mean);
    CHECK(count[p] >= mean * 0.75);
    CHECK(count[p] <= mean * 1.25);
  }
  CHECK_EQ(sum, KEYS);
  fprintf(stderr, "   %d keys over %d partitions: min %u max %u mean %.1f\n",
          KEYS, P, lo, hi, mean);
  free(count);
}

int main(void) {
  RUN(test_affinity);
  RUN(test_same_affinity_same_partition);
  RUN(test_range_and_formula);
  RUN(test_distribution);
  fprintf(stderr, "test_part: all passed\n");
  return 0;
}
