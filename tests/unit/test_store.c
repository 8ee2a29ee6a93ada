/*
 * test_store: the store module on its own: caches, the write operations and
 * their error codes, TTL against explicit clocks, memory accounting, scans
 * (also while the table grows) and concurrent counters.
 *
 * Every now_ms here is an explicit value: nothing sleeps, nothing depends on
 * how fast the machine is.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "grid.h"
#include "store.h"

/* A clock far from 0, so that now_ms + ttl never looks like "no expiry". */
#define T0 INT64_C(1700000000000)

static store_limits_t test_limits(void) {
  store_limits_t l = {
      .memory_bytes_max = INT64_C(1) << 30,
      .key_bytes_max = 1024,
      .value_bytes_max = 1 << 20,
      .caches_max = 16,
      .partitions_default = 16,
      .partitions_max = 65536,
  };
  return l;
}

static void *test_alloc(void *ctx, size_t n) {
  (void)ctx;
  return malloc(n);
}

static void *failing_alloc(void *ctx, size_t n) {
  (void)ctx;
  (void)n;
  return NULL;
}

static store_cache_cfg_t cache_cfg(const char *name, uint32_t partitions) {
  store_cache_cfg_t cfg;
  memset(&cfg, 0, sizeof cfg);
  snprintf(cfg.name, sizeof cfg.name, "%s", name);
  cfg.partitions = partitions;
  cfg.mode = GRID_MODE_PARTITIONED;
  cfg.sync = GRID_SYNC_FULL;
  return cfg;
}

static store_cache_t *acquire(store_t *s, const char *name) {
  store_cache_t *c = store_cache_acquire(s, name, strlen(name));
  CHECK(c != NULL);
  return c;
}

/* One write of a C-string key and value. */
static int write_op(store_cache_t *c, store_op_t op, const char *key,
                    const char *value, uint64_t ttl_ms, int64_t now_ms,
                    store_result_t *res) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  store_write_t w = {.op = op,
                     .value = value,
                     .value_len = value ? strlen(value) : 0,
                     .ttl_ms = ttl_ms};
  store_result_t dummy;
  return store_write(c, &k, &w, now_ms, res ? res : &dummy);
}

static int put(store_cache_t *c, const char *key, const char *value,
               uint64_t ttl_ms, int64_t now_ms) {
  return write_op(c, STORE_PUT, key, value, ttl_ms, now_ms, NULL);
}

static int del(store_cache_t *c, const char *key, int64_t now_ms) {
  return write_op(c, STORE_DELETE, key, NULL, 0, now_ms, NULL);
}

static int cas(store_cache_t *c, const char *key, const char *value,
               uint64_t expected_version, int64_t now_ms, store_result_t *res) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  store_write_t w = {.op = STORE_CAS,
                     .value = value,
                     .value_len = strlen(value),
                     .expected_version = expected_version};
  return store_write(c, &k, &w, now_ms, res);
}

static int add(store_cache_t *c, const char *key, int64_t delta,
               uint64_t ttl_ms, int64_t now_ms, int64_t *result) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  store_write_t w = {.op = STORE_ADD, .delta = delta, .ttl_ms = ttl_ms};
  store_result_t res = {0};
  int rc = store_write(c, &k, &w, now_ms, &res);
  if (rc == 0 && result) *result = res.number;
  return rc;
}

/* Gets key; on success *out is malloc'd (NUL-terminated by the store). */
static int get(store_cache_t *c, const char *key, int64_t now_ms, char **out,
               size_t *out_len, uint64_t *version) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  void *v = NULL;
  size_t len = 0;
  uint64_t ver = 0;
  int rc = store_get(c, &k, now_ms, test_alloc, NULL, &v, &len, &ver);
  if (rc == 0) {
    if (out) *out = v;
    else free(v);
    if (out_len) *out_len = len;
    if (version) *version = ver;
  }
  return rc;
}

static void check_value(store_cache_t *c, const char *key, int64_t now_ms,
                        const char *want) {
  char *v = NULL;
  size_t len = 0;
  CHECK_RC(get(c, key, now_ms, &v, &len, NULL), 0);
  CHECK_EQ(len, strlen(want));
  CHECK_STR(v, want);
  free(v);
}

static void check_missing(store_cache_t *c, const char *key, int64_t now_ms) {
  CHECK_RC(get(c, key, now_ms, NULL, NULL, NULL), GRID_ENOTFOUND);
}

/* Counts its calls and asks the scan to stop at the first entry. */
static int scan_stop_cb(void *ctx, const void *key, size_t key_len,
                        const void *value, size_t value_len, uint64_t version) {
  (*(int *)ctx)++;
  return 1;
}

/* Counts entries; anything but "live" adds 1000, so a leak shows. */
static int scan_count_cb(void *ctx, const void *key, size_t key_len,
                         const void *value, size_t value_len, uint64_t version) {
  (*(int *)ctx)++;
  if (key_len != 4 || memcmp(key, "live", 4) != 0) (*(int *)ctx) += 1000;
  return 0;
}

/* ---- basics ------------------------------------------------------------ */

static void test_new_has_default_cache(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  CHECK(s != NULL);
  CHECK_EQ(store_cache_count(s), 1);
  CHECK_EQ(store_memory_bytes_max(s), l.memory_bytes_max);
  CHECK(store_memory_bytes(s) > 0); /* the default cache's partitions */
  CHECK(store_memory_bytes(s) <= l.memory_bytes_max);
  CHECK_EQ(store_entries(s), 0);

  store_cache_cfg_t list[4];
  CHECK_EQ(store_cache_list(s, list, 4), 1);
  CHECK_STR(list[0].name, "default");
  CHECK_EQ(list[0].partitions, l.partitions_default);
  CHECK_EQ(list[0].default_ttl_ms, 0);

  store_cache_t *c = acquire(s, "default");
  CHECK_STR(store_cache_cfg(c)->name, "default");
  CHECK_EQ(store_cache_cfg(c)->partitions, 16);
  CHECK_EQ(store_cache_size(c), 0);
  store_cache_release(s, c);

  /* The name is matched with its length, not as a prefix. */
  CHECK(store_cache_acquire(s, "defaul", 6) == NULL);
  CHECK(store_cache_acquire(s, "default!", 8) == NULL);
  CHECK(store_cache_acquire(s, "nosuch", 6) == NULL);
  store_free(s);
}

static void test_put_get_delete(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");

  check_missing(c, "a", T0);
  store_result_t r1 = {0};
  CHECK_RC(write_op(c, STORE_PUT, "a", "hello", 0, T0, &r1), 0);
  CHECK(r1.version != 0);
  uint64_t ver = 0;
  char *v = NULL;
  size_t len = 0;
  CHECK_RC(get(c, "a", T0, &v, &len, &ver), 0);
  CHECK_EQ(len, 5);
  CHECK(memcmp(v, "hello", 5) == 0);
  CHECK_EQ(v[5], '\0'); /* copied out NUL-terminated */
  CHECK_EQ(ver, r1.version);
  free(v);
  CHECK_EQ(store_cache_size(c), 1);
  CHECK_EQ(store_entries(s), 1);
  /* The cache's bytes: its entry's key, value and overhead. */
  uint64_t bytes_a = store_cache_bytes(c);
  CHECK(bytes_a > 1 + 5);
  store_key_t ka;
  store_key_init(c, "a", 1, &ka);
  CHECK_EQ(store_part_bytes(c, ka.part), bytes_a);

  /* Overwrite: same count, new value, newer version. */
  store_result_t r2 = {0};
  CHECK_RC(write_op(c, STORE_PUT, "a", "world!", 0, T0, &r2), 0);
  CHECK(r2.version > r1.version);
  check_value(c, "a", T0, "world!");
  CHECK_EQ(store_cache_size(c), 1);
  CHECK_EQ(store_cache_bytes(c), bytes_a + 1); /* one byte longer */

  /* Empty value and binary keys / values with NULs inside. */
  CHECK_RC(put(c, "empty", "", 0, T0), 0);
  check_value(c, "empty", T0, "");
  {
    const unsigned char bk[] = {'k', 0, 'x', 0xff};
    const unsigned char bv[] = {0, 1, 2, 0, 3};
    store_key_t k;
    store_key_init(c, bk, sizeof bk, &k);
    store_write_t w = {.op = STORE_PUT, .value = bv, .value_len = sizeof bv};
    store_result_t res;
    CHECK_RC(store_write(c, &k, &w, T0, &res), 0);
    void *out = NULL;
    size_t out_len = 0;
    uint64_t out_ver = 0;
    CHECK_RC(store_get(c, &k, T0, test_alloc, NULL, &out, &out_len, &out_ver), 0);
    CHECK_EQ(out_len, sizeof bv);
    CHECK(memcmp(out, bv, sizeof bv) == 0);
    free(out);
    /* A key that is a prefix of the binary key is another key. */
    store_key_init(c, bk, 1, &k);
    CHECK_RC(store_get(c, &k, T0, test_alloc, NULL, &out, &out_len, &out_ver),
             GRID_ENOTFOUND);
  }
  CHECK_EQ(store_cache_size(c), 3);

  /* An alloc callback that fails gives GRID_ENOMEM and leaves the entry. */
  {
    store_key_t k;
    store_key_init(c, "a", 1, &k);
    void *out = NULL;
    size_t out_len = 0;
    uint64_t out_ver = 0;
    CHECK_RC(store_get(c, &k, T0, failing_alloc, NULL, &out, &out_len, &out_ver),
             GRID_ENOMEM);
    check_value(c, "a", T0, "world!");
  }

  /* Delete returns the deleted entry's version; a second one finds nothing. */
  store_result_t rd = {0};
  uint64_t bytes_before = store_cache_bytes(c);
  CHECK_RC(write_op(c, STORE_DELETE, "a", NULL, 0, T0, &rd), 0);
  CHECK_EQ(rd.version, r2.version);
  CHECK_EQ(bytes_before - store_cache_bytes(c), bytes_a + 1); /* its bytes went */
  check_missing(c, "a", T0);
  CHECK_RC(del(c, "a", T0), GRID_ENOTFOUND);
  CHECK_EQ(store_cache_size(c), 2);

  /* Many keys: all readable after the tables grew. */
  char key[32], val[32];
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    snprintf(val, sizeof val, "v%d", i * 7);
    CHECK_RC(put(c, key, val, 0, T0), 0);
  }
  CHECK_EQ(store_cache_size(c), 2002);
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    snprintf(val, sizeof val, "v%d", i * 7);
    check_value(c, key, T0, val);
  }
  for (int i = 0; i < 2000; i += 2) {
    snprintf(key, sizeof key, "k%d", i);
    CHECK_RC(del(c, key, T0), 0);
  }
  CHECK_EQ(store_cache_size(c), 1002);
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    if (i % 2 == 0) {
      check_missing(c, key, T0);
    } else {
      snprintf(val, sizeof val, "v%d", i * 7);
      check_value(c, key, T0, val);
    }
  }
  store_cache_release(s, c);
  store_free(s);
}

static void test_put_if_absent_replace(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");

  CHECK_RC(write_op(c, STORE_PUT_IF_ABSENT, "k", "first", 0, T0, NULL), 0);
  CHECK_RC(write_op(c, STORE_PUT_IF_ABSENT, "k", "second", 0, T0, NULL), GRID_EEXIST);
  check_value(c, "k", T0, "first");

  CHECK_RC(write_op(c, STORE_REPLACE, "missing", "x", 0, T0, NULL), GRID_ENOTFOUND);
  check_missing(c, "missing", T0);
  CHECK_RC(write_op(c, STORE_REPLACE, "k", "third", 0, T0, NULL), 0);
  check_value(c, "k", T0, "third");
  CHECK_EQ(store_cache_size(c), 1);

  /* An expired entry counts as absent for both. */
  CHECK_RC(put(c, "t", "old", 10, T0), 0);
  CHECK_RC(write_op(c, STORE_REPLACE, "t", "new", 0, T0 + 10, NULL), GRID_ENOTFOUND);
  CHECK_RC(put(c, "t", "old", 10, T0), 0);
  CHECK_RC(write_op(c, STORE_PUT_IF_ABSENT, "t", "new", 0, T0 + 10, NULL), 0);
  check_value(c, "t", T0 + 1000000, "new"); /* no TTL on the new entry */
  store_cache_release(s, c);
  store_free(s);
}

static void test_cas(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");

  store_result_t r = {0};
  CHECK_RC(cas(c, "k", "v", 1, T0, &r), GRID_ENOTFOUND);
  check_missing(c, "k", T0);

  store_result_t r1 = {0}, r2 = {0}, r3 = {0};
  CHECK_RC(write_op(c, STORE_PUT, "k", "v1", 0, T0, &r1), 0);
  CHECK_RC(cas(c, "k", "v2", r1.version, T0, &r2), 0);
  CHECK(r2.version > r1.version);
  uint64_t ver = 0;
  CHECK_RC(get(c, "k", T0, NULL, NULL, &ver), 0);
  CHECK_EQ(ver, r2.version);
  check_value(c, "k", T0, "v2");

  /* The old version no longer matches. */
  CHECK_RC(cas(c, "k", "v3", r1.version, T0, &r), GRID_EVERSION);
  CHECK_RC(cas(c, "k", "v3", r2.version + 1, T0, &r), GRID_EVERSION);
  CHECK_RC(cas(c, "k", "v3", 0, T0, &r), GRID_EVERSION);
  check_value(c, "k", T0, "v2");
  CHECK_RC(get(c, "k", T0, NULL, NULL, &ver), 0);
  CHECK_EQ(ver, r2.version);

  CHECK_RC(cas(c, "k", "v3", r2.version, T0, &r3), 0);
  CHECK(r3.version > r2.version);
  check_value(c, "k", T0, "v3");

  /* Versions keep increasing over a run of writes to one key. */
  uint64_t last = r3.version;
  for (int i = 0; i < 100; i++) {
    store_result_t ri = {0};
    CHECK_RC(write_op(c, STORE_PUT, "k", "x", 0, T0, &ri), 0);
    CHECK(ri.version > last);
    last = ri.version;
  }
  /* A delete and a re-create: the new entry's version is newer still, so a
   * CAS holding a version from before the delete fails. */
  CHECK_RC(del(c, "k", T0), 0);
  store_result_t r4 = {0};
  CHECK_RC(write_op(c, STORE_PUT, "k", "again", 0, T0, &r4), 0);
  CHECK(r4.version > last);
  CHECK_RC(cas(c, "k", "no", last, T0, &r), GRID_EVERSION);
  check_value(c, "k", T0, "again");

  /* CAS on an expired entry is a missing key. */
  store_result_t r5 = {0};
  CHECK_RC(write_op(c, STORE_PUT, "e", "x", 5, T0, &r5), 0);
  CHECK_RC(cas(c, "e", "y", r5.version, T0 + 5, &r), GRID_ENOTFOUND);
  store_cache_release(s, c);
  store_free(s);
}

static void test_add(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");
  int64_t n = 0;

  /* A missing key counts as 0. */
  CHECK_RC(add(c, "ctr", 5, 0, T0, &n), 0);
  CHECK_EQ(n, 5);
  check_value(c, "ctr", T0, "5");
  CHECK_RC(add(c, "ctr", 37, 0, T0, &n), 0);
  CHECK_EQ(n, 42);
  check_value(c, "ctr", T0, "42");
  CHECK_RC(add(c, "ctr", -50, 0, T0, &n), 0);
  CHECK_EQ(n, -8);
  check_value(c, "ctr", T0, "-8");
  CHECK_RC(add(c, "ctr", 8, 0, T0, &n), 0);
  CHECK_EQ(n, 0);
  check_value(c, "ctr", T0, "0");
  CHECK_RC(add(c, "neg", -3, 0, T0, &n), 0);
  CHECK_EQ(n, -3);
  check_value(c, "neg", T0, "-3");

  /* A value put as text is a counter when it is a plain decimal. */
  CHECK_RC(put(c, "p", "-17", 0, T0), 0);
  CHECK_RC(add(c, "p", 20, 0, T0, &n), 0);
  CHECK_EQ(n, 3);
  CHECK_RC(put(c, "z", "0", 0, T0), 0);
  CHECK_RC(add(c, "z", 0, 0, T0, &n), 0);
  CHECK_EQ(n, 0);

  /* Not numbers: the entry stays as it was. */
  const char *bad[] = {"abc", "1.5", " 1", "1 ", "01", "+1", "", "-", "1a",
                       "0x10", "--1", "9223372036854775808", "99999999999999999999",
                       "-9223372036854775809", "123456789012345678901"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_RC(put(c, "bad", bad[i], 0, T0), 0);
    store_result_t r = {0};
    store_key_t k;
    store_key_init(c, "bad", 3, &k);
    store_write_t w = {.op = STORE_ADD, .delta = 1};
    int rc = store_write(c, &k, &w, T0, &r);
    if (rc != GRID_ENOTNUM)
      fprintf(stderr, "value \"%s\" was taken as a number\n", bad[i]);
    CHECK_RC(rc, GRID_ENOTNUM);
    check_value(c, "bad", T0, bad[i]);
  }

  /* The int64 edges. */
  CHECK_RC(put(c, "max", "9223372036854775807", 0, T0), 0);
  CHECK_RC(add(c, "max", 1, 0, T0, &n), GRID_EOVERFLOW);
  check_value(c, "max", T0, "9223372036854775807");
  CHECK_RC(add(c, "max", 0, 0, T0, &n), 0);
  CHECK_EQ(n, INT64_MAX);
  CHECK_RC(add(c, "max", -1, 0, T0, &n), 0);
  CHECK_EQ(n, INT64_MAX - 1);
  CHECK_RC(add(c, "max", 1, 0, T0, &n), 0);
  CHECK_EQ(n, INT64_MAX);
  CHECK_RC(add(c, "max", INT64_MAX, 0, T0, &n), GRID_EOVERFLOW);

  CHECK_RC(put(c, "min", "-9223372036854775808", 0, T0), 0);
  CHECK_RC(add(c, "min", -1, 0, T0, &n), GRID_EOVERFLOW);
  check_value(c, "min", T0, "-9223372036854775808");
  CHECK_RC(add(c, "min", 0, 0, T0, &n), 0);
  CHECK_EQ(n, INT64_MIN);
  CHECK_RC(add(c, "min", INT64_MAX, 0, T0, &n), 0);
  CHECK_EQ(n, -1);
  check_value(c, "min", T0, "-1");

  CHECK_RC(add(c, "fresh-max", INT64_MAX, 0, T0, &n), 0);
  check_value(c, "fresh-max", T0, "9223372036854775807");
  CHECK_RC(add(c, "fresh-min", INT64_MIN, 0, T0, &n), 0);
  check_value(c, "fresh-min", T0, "-9223372036854775808");
  CHECK_RC(add(c, "fresh-min", -1, 0, T0, &n), GRID_EOVERFLOW);

  /* ADD writes a new version each time. */
  store_result_t r1 = {0}, r2 = {0};
  store_key_t k;
  store_key_init(c, "ctr", 3, &k);
  store_write_t w = {.op = STORE_ADD, .delta = 1};
  CHECK_RC(store_write(c, &k, &w, T0, &r1), 0);
  CHECK_RC(store_write(c, &k, &w, T0, &r2), 0);
  CHECK(r2.version > r1.version);
  CHECK_EQ(r2.number, 2);
  store_cache_release(s, c);
  store_free(s);
}

/* ---- TTL --------------------------------------------------------------- */

static void test_ttl(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");

  CHECK_RC(put(c, "short", "x", 100, T0), 0);
  CHECK_RC(put(c, "forever", "y", 0, T0), 0); /* default has no TTL */
  check_value(c, "short", T0, "x");
  check_value(c, "short", T0 + 99, "x");
  CHECK_EQ(store_cache_size(c), 2);
  check_missing(c, "short", T0 + 100); /* expires when now reaches it */
  check_missing(c, "short", T0 + 99);  /* and is gone for good */
  CHECK_EQ(store_cache_size(c), 1);
  check_value(c, "forever", T0 + INT64_C(1000000000000), "y");

  /* A put renews the TTL; a put with ttl 0 (and no cache default) removes it. */
  CHECK_RC(put(c, "r", "1", 100, T0), 0);
  CHECK_RC(put(c, "r", "2", 100, T0 + 50), 0);
  check_value(c, "r", T0 + 149, "2");
  CHECK_RC(put(c, "r", "3", 0, T0 + 140), 0);
  check_value(c, "r", T0 + 100000, "3");

  /* Writes to an expired entry see a missing key. */
  CHECK_RC(put(c, "gone", "x", 10, T0), 0);
  CHECK_RC(del(c, "gone", T0 + 10), GRID_ENOTFOUND);
  CHECK_RC(put(c, "gone", "5", 10, T0), 0);
  int64_t n = 0;
  CHECK_RC(add(c, "gone", 1, 0, T0 + 10, &n), 0);
  CHECK_EQ(n, 1); /* counted from 0, not from the expired 5 */

  /* Scans do not show expired entries. */
  store_cache_cfg_t one = cache_cfg("one", 1);
  CHECK_RC(store_cache_create(s, &one), 0);
  store_cache_t *c1 = acquire(s, "one");
  CHECK_RC(put(c1, "live", "x", 0, T0), 0);
  CHECK_RC(put(c1, "dead", "x", 10, T0), 0);
  int seen = 0;
  uint64_t cursor = 0;
  do {
    CHECK_RC(store_scan(c1, 0, &cursor, 100, T0 + 10, scan_count_cb, &seen), 0);
  } while (cursor != 0);
  CHECK_EQ(seen, 1); /* "live" only */
  store_cache_release(s, c1);
  store_cache_release(s, c);
  store_free(s);
}

static void test_cache_default_ttl(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("sessions", 4);
  cfg.default_ttl_ms = 500;
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "sessions");
  CHECK_EQ(store_cache_cfg(c)->default_ttl_ms, 500);

  CHECK_RC(put(c, "a", "x", 0, T0), 0);    /* takes the default 500 */
  CHECK_RC(put(c, "b", "x", 2000, T0), 0); /* its own TTL wins */
  check_value(c, "a", T0 + 499, "x");
  check_missing(c, "a", T0 + 500);
  check_value(c, "b", T0 + 1999, "x");
  check_missing(c, "b", T0 + 2000);

  /* ADD on a missing key takes the default too. */
  int64_t n = 0;
  CHECK_RC(add(c, "ctr", 1, 0, T0, &n), 0);
  check_value(c, "ctr", T0 + 499, "1");
  check_missing(c, "ctr", T0 + 500);
  store_cache_release(s, c);
  store_free(s);
}

static void test_add_keeps_expiry(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_t *c = acquire(s, "default");
  int64_t n = 0;

  CHECK_RC(put(c, "ctr", "5", 100, T0), 0);
  CHECK_RC(add(c, "ctr", 1, 0, T0 + 50, &n), 0);
  CHECK_EQ(n, 6);
  CHECK_RC(add(c, "ctr", 1, 100000, T0 + 60, &n), 0); /* ttl of ADD ignored */
  CHECK_EQ(n, 7);
  check_value(c, "ctr", T0 + 99, "7");
  check_missing(c, "ctr", T0 + 100);

  /* ADD creating a counter gives it the TTL of the write. */
  CHECK_RC(add(c, "c2", 3, 100, T0, &n), 0);
  CHECK_RC(add(c, "c2", 3, 0, T0 + 10, &n), 0);
  check_value(c, "c2", T0 + 99, "6");
  check_missing(c, "c2", T0 + 100);

  /* A counter without TTL stays without. */
  CHECK_RC(add(c, "c3", 1, 0, T0, &n), 0);
  CHECK_RC(add(c, "c3", 1, 0, T0, &n), 0);
  check_value(c, "c3", T0 + INT64_C(100000000000), "2");
  store_cache_release(s, c);
  store_free(s);
}

static void test_sweep(void) {
  store_limits_t l = test_limits();
  l.partitions_default = 4;
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("ttl", 8);
  cfg.default_ttl_ms = 1000;
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *d = acquire(s, "default");
  store_cache_t *c = acquire(s, "ttl");
  int64_t mem_empty = store_memory_bytes(s);

  char key[32];
  for (int i = 0; i < 300; i++) {
    snprintf(key, sizeof key, "s%d", i);
    /* Thirds: cache default (1000), short (100), long (10000). */
    uint64_t ttl = i % 3 == 0 ? 0 : i % 3 == 1 ? 100 : 10000;
    CHECK_RC(put(c, key, "value", ttl, T0), 0);
    snprintf(key, sizeof key, "d%d", i);
    CHECK_RC(put(d, key, "value", i % 2 ? 100 : 0, T0), 0);
  }
  CHECK_EQ(store_cache_size(c), 300);
  CHECK_EQ(store_cache_size(d), 300);
  CHECK_EQ(store_entries(s), 600);

  /* Nothing has expired yet. */
  CHECK_EQ(store_sweep(s, T0 + 99, 100000), 0);
  CHECK_EQ(store_entries(s), 600);

  /* At +100: the short ones of both caches. Small budgets, called until
   * nothing more goes, so that continuing across calls is exercised. */
  int64_t mem_before = store_memory_bytes(s);
  size_t removed = 0;
  for (int round = 0; round < 10000; round++) removed += store_sweep(s, T0 + 100, 7);
  CHECK_EQ(removed, 100 + 150);
  CHECK_EQ(store_cache_size(c), 200);
  CHECK_EQ(store_cache_size(d), 150);
  CHECK(store_memory_bytes(s) < mem_before);

  /* At +1000: the cache default ones. */
  CHECK_EQ(store_sweep(s, T0 + 1000, 100000), 100);
  CHECK_EQ(store_cache_size(c), 100);
  for (int i = 0; i < 300; i++) {
    snprintf(key, sizeof key, "s%d", i);
    if (i % 3 == 2) check_value(c, key, T0 + 1000, "value");
    else check_missing(c, key, T0 + 1000);
  }
  /* At +10000: the rest of "ttl"; "default"'s entries without TTL stay. */
  CHECK_EQ(store_sweep(s, T0 + 10000, 100000), 100);
  CHECK_EQ(store_cache_size(c), 0);
  CHECK_EQ(store_cache_size(d), 150);
  for (int i = 0; i < 300; i += 2) {
    snprintf(key, sizeof key, "d%d", i);
    check_value(d, key, T0 + 10000, "value");
  }
  /* All entry memory of "ttl" is back; its tables stay allocated. */
  for (int i = 0; i < 300; i += 2) {
    snprintf(key, sizeof key, "d%d", i);
    CHECK_RC(del(d, key, T0), 0);
  }
  CHECK_EQ(store_entries(s), 0);
  CHECK(store_memory_bytes(s) >= mem_empty);
  CHECK(store_memory_bytes(s) < mem_empty + 16 * 1024); /* bucket arrays only */
  store_cache_release(s, c);
  store_cache_release(s, d);
  store_free(s);
}

/* ---- memory and sizes -------------------------------------------------- */

static void test_memory_limit(void) {
  store_limits_t l = test_limits();
  l.partitions_default = 1;
  l.memory_bytes_max = 64 * 1024;
  store_t *s = store_new(&l);
  CHECK(s != NULL);
  store_cache_t *c = acquire(s, "default");

  char big[1001];
  memset(big, 'v', 1000);
  big[1000] = '\0';
  char key[32];
  int n = 0;
  int rc = 0;
  for (; n < 1000; n++) {
    snprintf(key, sizeof key, "k%d", n);
    int64_t before = store_memory_bytes(s);
    rc = put(c, key, big, 0, T0);
    if (rc != 0) {
      /* A refused write leaves the accounting as it was. */
      CHECK_EQ(store_memory_bytes(s), before);
      break;
    }
    CHECK(store_memory_bytes(s) >= before + 1000);
    CHECK(store_memory_bytes(s) <= l.memory_bytes_max);
  }
  CHECK_RC(rc, GRID_EMEMLIMIT);
  CHECK(n > 10 && n < 64);
  CHECK_EQ(store_cache_size(c), n);
  check_missing(c, key, T0); /* the refused key */
  int64_t full = store_memory_bytes(s);
  CHECK(full <= l.memory_bytes_max);
  CHECK(full > l.memory_bytes_max - 2 * 1100);

  /* Other writes that grow are refused too, and change nothing. */
  CHECK_RC(put(c, "k0", big, 0, T0), 0); /* same size: allowed */
  CHECK_EQ(store_memory_bytes(s), full);
  CHECK_RC(write_op(c, STORE_PUT_IF_ABSENT, key, big, 0, T0, NULL), GRID_EMEMLIMIT);
  CHECK_EQ(store_memory_bytes(s), full);

  /* Replacing with a smaller value works while full, and frees the
   * difference exactly. */
  CHECK_RC(write_op(c, STORE_REPLACE, "k0", "small", 0, T0, NULL), 0);
  check_value(c, "k0", T0, "small");
  CHECK_EQ(store_memory_bytes(s), full - 995);
  CHECK_RC(put(c, "k1", "", 0, T0), 0);
  CHECK_EQ(store_memory_bytes(s), full - 995 - 1000);
  check_value(c, "k1", T0, "");
  /* ...and growing it back fits again, to the byte. */
  CHECK_RC(put(c, "k1", big, 0, T0), 0);
  CHECK_RC(put(c, "k0", big, 0, T0), 0);
  CHECK_EQ(store_memory_bytes(s), full);

  /* Delete frees memory; the memory goes back to the exact previous value
   * and the same write fits again. */
  CHECK_RC(del(c, "k2", T0), 0);
  int64_t after_delete = store_memory_bytes(s);
  CHECK(after_delete <= full - 1000);
  CHECK_RC(put(c, "k2", big, 0, T0), 0);
  CHECK_EQ(store_memory_bytes(s), full);
  CHECK_RC(del(c, "k2", T0), 0);
  CHECK_EQ(store_memory_bytes(s), after_delete);

  /* After the delete there is room for the key refused earlier. */
  CHECK_RC(put(c, key, big, 0, T0), 0);
  check_value(c, key, T0, big);
  CHECK_RC(del(c, key, T0), 0);
  CHECK_EQ(store_memory_bytes(s), after_delete);

  /* A value larger than the whole limit never fits. */
  size_t huge_len = (size_t)l.memory_bytes_max;
  char *huge = malloc(huge_len + 1);
  CHECK(huge != NULL);
  memset(huge, 'h', huge_len);
  huge[huge_len] = '\0';
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "k%d", i);
    if (i != 2) CHECK_RC(del(c, key, T0), 0);
  }
  CHECK_EQ(store_cache_size(c), 0);
  int64_t empty = store_memory_bytes(s);
  CHECK_RC(put(c, "huge", huge, 0, T0), GRID_EMEMLIMIT);
  CHECK_EQ(store_memory_bytes(s), empty);
  free(huge);

  /* A cache that does not fit is refused with GRID_EMEMLIMIT. */
  store_cache_cfg_t cfg = cache_cfg("wide", 4096);
  CHECK_RC(store_cache_create(s, &cfg), GRID_EMEMLIMIT);
  CHECK_EQ(store_cache_count(s), 1);
  CHECK_EQ(store_memory_bytes(s), empty);
  store_cache_release(s, c);
  store_free(s);
}

static void test_memory_back_after_drop(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  int64_t m0 = store_memory_bytes(s);
  store_cache_cfg_t cfg = cache_cfg("tmp", 32);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  int64_t m1 = store_memory_bytes(s);
  CHECK(m1 > m0);
  store_cache_t *c = acquire(s, "tmp");
  char key[32];
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof key, "key%d", i);
    CHECK_RC(put(c, key, "some value", 0, T0), 0);
  }
  CHECK(store_memory_bytes(s) > m1 + 1000 * 10);
  store_cache_release(s, c);
  CHECK_RC(store_cache_drop(s, "tmp"), 0);
  CHECK_EQ(store_memory_bytes(s), m0);
  store_free(s);
}

static void test_check_sizes(void) {
  store_limits_t l = test_limits();
  l.key_bytes_max = 16;
  l.value_bytes_max = 100;
  store_t *s = store_new(&l);
  CHECK_RC(store_check_sizes(s, 16, 100), 0);
  CHECK_RC(store_check_sizes(s, 1, 0), 0);
  CHECK_RC(store_check_sizes(s, 0, 0), 0);
  CHECK_RC(store_check_sizes(s, 17, 0), GRID_EKEYTOOBIG);
  CHECK_RC(store_check_sizes(s, 16, 101), GRID_EVALTOOBIG);
  CHECK_RC(store_check_sizes(s, 17, 101), GRID_EKEYTOOBIG);
  CHECK_RC(store_check_sizes(s, (size_t)1 << 32, 0), GRID_EKEYTOOBIG);
  CHECK_RC(store_check_sizes(s, 1, (size_t)1 << 40), GRID_EVALTOOBIG);
  store_free(s);
}

/* Lengths of 2^63 and more (a length computed wrongly by a caller, such as
 * (size_t)-1) must be refused too, not let through to store_write, which
 * keeps lengths in 32 bits. */
static void test_check_sizes_huge(void) {
  store_limits_t l = test_limits();
  l.key_bytes_max = 16;
  l.value_bytes_max = 100;
  store_t *s = store_new(&l);
  int key_rc = store_check_sizes(s, (size_t)-1, 0);
  int value_rc = store_check_sizes(s, 1, (size_t)-1);
  int half_rc = store_check_sizes(s, (size_t)1 << 63, 0);
  store_free(s);
  CHECK_RC(key_rc, GRID_EKEYTOOBIG);
  CHECK_RC(value_rc, GRID_EVALTOOBIG);
  CHECK_RC(half_rc, GRID_EKEYTOOBIG);
}

/* ---- caches ------------------------------------------------------------ */

static int list_has(const store_cache_cfg_t *list, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(list[i].name, name) == 0) return 1;
  return 0;
}

static void test_caches(void) {
  store_limits_t l = test_limits();
  l.caches_max = 5;
  l.partitions_max = 256;
  store_t *s = store_new(&l);

  store_cache_cfg_t a = cache_cfg("alpha", 0); /* takes the default */
  a.backups = 3;
  a.mode = GRID_MODE_REPLICATED;
  a.sync = GRID_SYNC_PRIMARY;
  a.default_ttl_ms = 1234;
  CHECK_RC(store_cache_create(s, &a), 0);
  CHECK_RC(store_cache_create(s, &a), GRID_ECACHEEXISTS);
  store_cache_cfg_t dflt = cache_cfg("default", 4);
  CHECK_RC(store_cache_create(s, &dflt), GRID_ECACHEEXISTS);
  store_cache_cfg_t b = cache_cfg("b.e-t_a9", 256);
  CHECK_RC(store_cache_create(s, &b), 0);
  CHECK_EQ(store_cache_count(s), 3);

  store_cache_t *c = acquire(s, "alpha");
  const store_cache_cfg_t *got = store_cache_cfg(c);
  CHECK_STR(got->name, "alpha");
  CHECK_EQ(got->partitions, 16);
  CHECK_EQ(got->backups, 3);
  CHECK_EQ(got->mode, GRID_MODE_REPLICATED);
  CHECK_EQ(got->sync, GRID_SYNC_PRIMARY);
  CHECK_EQ(got->default_ttl_ms, 1234);
  store_cache_release(s, c);

  store_cache_cfg_t list[8];
  CHECK_EQ(store_cache_list(s, list, 8), 3);
  CHECK(list_has(list, 3, "default"));
  CHECK(list_has(list, 3, "alpha"));
  CHECK(list_has(list, 3, "b.e-t_a9"));
  /* A short array gets what fits; the count is still all of them. */
  memset(list, 0, sizeof list);
  CHECK_EQ(store_cache_list(s, list, 1), 3);
  CHECK(list[0].name[0] != '\0');
  CHECK_EQ(list[1].name[0], '\0');
  CHECK_EQ(store_cache_list(s, NULL, 0), 3);

  /* Bad settings. */
  store_cache_cfg_t bad = cache_cfg("", 1);
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("a b", 1);
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("a/b", 1);
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("caf\xc3\xa9", 1);
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  {
    /* A 65-byte name cannot be NUL-terminated inside name[65]; the bytes
     * after the array are struct padding, zeroed here, so the name reads as
     * 65 characters (as a caller that forgot to bound it would pass). */
    _Static_assert(offsetof(store_cache_cfg_t, partitions) > STORE_CACHE_NAME_MAX + 1,
                   "padding after name is needed for this case");
    store_cache_cfg_t long_name;
    memset(&long_name, 0, sizeof long_name);
    memset(long_name.name, 'n', STORE_CACHE_NAME_MAX + 1);
    long_name.partitions = 1;
    CHECK_RC(store_cache_create(s, &long_name), GRID_EINVAL);
    /* 64 is allowed. */
    store_cache_cfg_t name64 = cache_cfg("", 1);
    memset(name64.name, 'n', STORE_CACHE_NAME_MAX);
    name64.name[STORE_CACHE_NAME_MAX] = '\0';
    CHECK_RC(store_cache_create(s, &name64), 0);
    store_cache_t *c64 = store_cache_acquire(s, name64.name, 64);
    CHECK(c64 != NULL);
    CHECK_EQ(strlen(store_cache_cfg(c64)->name), 64);
    store_cache_release(s, c64);
    CHECK_RC(store_cache_drop(s, name64.name), 0);
  }
  bad = cache_cfg("ok", 1);
  bad.backups = 4;
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("ok", 257); /* over partitions_max */
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("ok", 1);
  bad.mode = 2;
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  bad = cache_cfg("ok", 1);
  bad.sync = 7;
  CHECK_RC(store_cache_create(s, &bad), GRID_EINVAL);
  CHECK(store_cache_acquire(s, "ok", 2) == NULL);
  CHECK_EQ(store_cache_count(s), 3);

  /* caches_max = 5 counts "default". */
  store_cache_cfg_t x = cache_cfg("x", 1), y = cache_cfg("y", 1), z = cache_cfg("z", 1);
  CHECK_RC(store_cache_create(s, &x), 0);
  CHECK_RC(store_cache_create(s, &y), 0);
  CHECK_RC(store_cache_create(s, &z), GRID_ELIMIT);
  CHECK_EQ(store_cache_count(s), 5);
  CHECK(store_cache_acquire(s, "z", 1) == NULL);
  /* A taken name is reported as taken even at the limit. */
  CHECK_RC(store_cache_create(s, &x), GRID_ECACHEEXISTS);

  /* Drop frees a slot. */
  CHECK_RC(store_cache_drop(s, "x"), 0);
  CHECK_RC(store_cache_drop(s, "x"), GRID_ENOCACHE);
  CHECK_RC(store_cache_drop(s, "never"), GRID_ENOCACHE);
  CHECK(store_cache_acquire(s, "x", 1) == NULL);
  CHECK_EQ(store_cache_count(s), 4);
  CHECK_RC(store_cache_create(s, &z), 0);
  CHECK_EQ(store_cache_list(s, list, 8), 5);
  CHECK(!list_has(list, 5, "x"));
  CHECK(list_has(list, 5, "z"));
  CHECK(list_has(list, 5, "y"));

  /* Even "default" can be dropped, and made again. */
  CHECK_RC(store_cache_drop(s, "default"), 0);
  CHECK(store_cache_acquire(s, "default", 7) == NULL);
  CHECK_RC(store_cache_create(s, &dflt), 0);
  store_free(s);
}

static void test_drop_while_acquired(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  int64_t m0 = store_memory_bytes(s);
  store_cache_cfg_t cfg = cache_cfg("held", 2);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "held");
  CHECK_RC(put(c, "k", "before", 0, T0), 0);

  CHECK_RC(store_cache_drop(s, "held"), 0);
  CHECK(store_cache_acquire(s, "held", 4) == NULL);
  CHECK_EQ(store_cache_count(s), 1);

  /* The holder still reads and writes its cache. */
  check_value(c, "k", T0, "before");
  CHECK_RC(put(c, "k2", "during", 0, T0), 0);
  check_value(c, "k2", T0, "during");
  CHECK_EQ(store_cache_size(c), 2);
  CHECK_STR(store_cache_cfg(c)->name, "held");

  /* A new cache of the same name is a different, empty one. */
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c2 = acquire(s, "held");
  CHECK(c2 != c);
  check_missing(c2, "k", T0);
  CHECK_EQ(store_cache_size(c2), 0);
  check_value(c, "k", T0, "before");
  store_cache_release(s, c2);
  CHECK_RC(store_cache_drop(s, "held"), 0);

  /* The last release frees the old cache and all its memory. */
  CHECK(store_memory_bytes(s) > m0);
  store_cache_release(s, c);
  CHECK_EQ(store_memory_bytes(s), m0);
  store_free(s);
}

/* ---- scan -------------------------------------------------------------- */

typedef struct scan_seen {
  unsigned char *seen; /* times each key:i was seen, saturating */
  size_t max;
  size_t calls_entries; /* entries seen in the current store_scan call */
  size_t total;
  int bad;              /* entries that are not key:i with the right value */
} scan_seen_t;

static int scan_collect_cb(void *ctx, const void *key, size_t key_len,
                           const void *value, size_t value_len, uint64_t version) {
  scan_seen_t *sc = ctx;
  char buf[64];
  sc->calls_entries++;
  sc->total++;
  if (key_len >= sizeof buf || version == 0) {
    sc->bad++;
    return 0;
  }
  memcpy(buf, key, key_len);
  buf[key_len] = '\0';
  unsigned idx;
  char tail;
  if (sscanf(buf, "key:%u%c", &idx, &tail) != 1 || idx >= sc->max) {
    sc->bad++;
    return 0;
  }
  /* The value of key:i is v:i. */
  char want[64];
  int wn = snprintf(want, sizeof want, "v:%u", idx);
  if ((size_t)wn != value_len || memcmp(value, want, value_len) != 0) sc->bad++;
  if (sc->seen[idx] < 255) sc->seen[idx]++;
  return 0;
}

static void put_numbered(store_cache_t *c, unsigned i) {
  char key[32], val[32];
  snprintf(key, sizeof key, "key:%u", i);
  snprintf(val, sizeof val, "v:%u", i);
  CHECK_RC(put(c, key, val, 0, T0), 0);
}

static void test_scan(void) {
  enum { N = 5000 };
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("scan", 1);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "scan");

  /* An empty partition is done at once. */
  scan_seen_t sc = {.seen = calloc(N, 1), .max = N};
  CHECK(sc.seen != NULL);
  uint64_t cursor = 0;
  CHECK_RC(store_scan(c, 0, &cursor, 7, T0, scan_collect_cb, &sc), 0);
  CHECK_EQ(cursor, 0);
  CHECK_EQ(sc.total, 0);
  CHECK_RC(store_scan(c, 1, &cursor, 7, T0, scan_collect_cb, &sc), GRID_EINVAL);

  for (unsigned i = 0; i < N; i++) put_numbered(c, i);
  CHECK_EQ(store_cache_size(c), N);

  cursor = 0;
  int calls = 0;
  do {
    sc.calls_entries = 0;
    CHECK_RC(store_scan(c, 0, &cursor, 7, T0, scan_collect_cb, &sc), 0);
    /* A call that is not the last one has seen at least count entries. */
    if (cursor != 0) CHECK(sc.calls_entries >= 7);
    calls++;
    CHECK(calls <= N); /* it does end */
  } while (cursor != 0);
  CHECK_EQ(sc.bad, 0);
  for (unsigned i = 0; i < N; i++) {
    if (sc.seen[i] == 0) fprintf(stderr, "key:%u never returned\n", i);
    CHECK(sc.seen[i] >= 1);
  }
  /* Without changes in between, no entry comes twice. */
  CHECK_EQ(sc.total, N);
  CHECK(calls >= N / 7 / 2);

  /* A callback that returns nonzero stops the call after that entry. */
  {
    int calls_cb = 0;
    uint64_t cur = 0;
    CHECK_RC(store_scan(c, 0, &cur, 1000, T0, scan_stop_cb, &calls_cb), 0);
    CHECK_EQ(calls_cb, 1);
    CHECK(cur != 0);
  }
  free(sc.seen);
  store_cache_release(s, c);
  store_free(s);
}

static void test_scan_while_growing(void) {
  enum { N0 = 1000, NMAX = 12000, PER_CALL = 25 };
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("grow", 1);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "grow");

  for (unsigned i = 0; i < N0; i++) put_numbered(c, i);
  scan_seen_t sc = {.seen = calloc(NMAX, 1), .max = NMAX};
  CHECK(sc.seen != NULL);
  unsigned next = N0;
  uint64_t cursor = 0;
  int calls = 0;
  do {
    CHECK_RC(store_scan(c, 0, &cursor, 7, T0, scan_collect_cb, &sc), 0);
    /* The table doubles several times while the scan goes on. */
    for (int j = 0; j < PER_CALL && next < NMAX; j++) put_numbered(c, next++);
    calls++;
    CHECK(calls <= 100000);
  } while (cursor != 0);
  CHECK_EQ(next, NMAX); /* the inserts really went on to the end */
  CHECK_EQ(store_cache_size(c), NMAX);
  CHECK_EQ(sc.bad, 0);
  for (unsigned i = 0; i < N0; i++) {
    if (sc.seen[i] == 0) fprintf(stderr, "key:%u never returned\n", i);
    CHECK(sc.seen[i] >= 1);
  }
  free(sc.seen);
  store_cache_release(s, c);
  store_free(s);
}

/* ---- concurrency ------------------------------------------------------- */

enum { THREADS = 4, ADDS = 20000, OWN_KEYS = 1000 };

typedef struct adder {
  store_t *s;
  int id;
  int failures;
} adder_t;

static void *adder_main(void *arg) {
  adder_t *a = arg;
  /* Each thread takes its own reference, as a connection would. */
  store_cache_t *c = store_cache_acquire(a->s, "counters", 8);
  if (!c) {
    a->failures++;
    return NULL;
  }
  char key[32];
  for (int i = 0; i < ADDS; i++) {
    if (add(c, "shared", 1, 0, T0, NULL) != 0) a->failures++;
    snprintf(key, sizeof key, "t%d:%d", a->id, i % OWN_KEYS);
    if (add(c, key, 1, 0, T0, NULL) != 0) a->failures++;
  }
  store_cache_release(a->s, c);
  return NULL;
}

static void test_concurrent_add(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("counters", 8);
  CHECK_RC(store_cache_create(s, &cfg), 0);

  pthread_t th[THREADS];
  adder_t ad[THREADS];
  for (int t = 0; t < THREADS; t++) {
    ad[t] = (adder_t){.s = s, .id = t};
    CHECK_EQ(pthread_create(&th[t], NULL, adder_main, &ad[t]), 0);
  }
  for (int t = 0; t < THREADS; t++) CHECK_EQ(pthread_join(th[t], NULL), 0);
  for (int t = 0; t < THREADS; t++) CHECK_EQ(ad[t].failures, 0);

  store_cache_t *c = acquire(s, "counters");
  char want[32];
  snprintf(want, sizeof want, "%d", THREADS * ADDS);
  check_value(c, "shared", T0, want);
  snprintf(want, sizeof want, "%d", ADDS / OWN_KEYS);
  char key[32];
  for (int t = 0; t < THREADS; t++)
    for (int k = 0; k < OWN_KEYS; k++) {
      snprintf(key, sizeof key, "t%d:%d", t, k);
      check_value(c, key, T0, want);
    }
  CHECK_EQ(store_cache_size(c), 1 + THREADS * OWN_KEYS);
  CHECK_EQ(store_entries(s), 1 + THREADS * OWN_KEYS);
  store_cache_release(s, c);
  store_free(s);
}

/* Keys of one partition spread over its buckets: a scan step of count 1
 * returns one bucket, so no step returns many entries. (The partition
 * fixes the low bits of the key hash; buckets taken from those bits would
 * chain a whole partition in one bucket.) */
static int count_all_cb(void *ctx, const void *key, size_t key_len,
                        const void *value, size_t value_len, uint64_t version) {
  (*(int *)ctx)++;
  return 0;
}

static void test_buckets_spread(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("spread", 1024);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "spread");
  for (unsigned i = 0; i < 100000; i++) put_numbered(c, i);
  int max_step = 0, total = 0;
  for (uint32_t p = 0; p < 8; p++) {
    uint64_t cursor = 0;
    do {
      int step = 0;
      CHECK_RC(store_scan(c, p, &cursor, 1, T0, count_all_cb, &step), 0);
      if (step > max_step) max_step = step;
      total += step;
    } while (cursor != 0);
  }
  CHECK(total > 8 * 50); /* about 98 entries per partition */
  CHECK(max_step <= 12);
  store_cache_release(s, c);
  store_free(s);
}

/* ---- change history ---------------------------------------------------- */

typedef struct hist {
  uint64_t counters[64];
  int kinds[64];
  size_t value_lens[64];
  int types[64];
  size_t n;
} hist_t;

static int hist_cb(void *ctx, const change_t *ch) {
  hist_t *h = ctx;
  CHECK(h->n < 64);
  h->counters[h->n] = ch->counter;
  h->kinds[h->n] = ch->kind;
  h->value_lens[h->n] = ch->value_len;
  h->types[h->n] = ch->type;
  h->n++;
  return 0;
}

static int hist_read(store_cache_t *c, uint32_t p, uint64_t after, hist_t *h, uint64_t *next) {
  memset(h, 0, sizeof *h);
  uint64_t upto;
  return store_changes_read(c, p, after, 64, hist_cb, h, next, &upto, NULL);
}

static store_t *history_store(int64_t per_part, int64_t total) {
  store_limits_t l = test_limits();
  l.change_buffer_bytes = per_part;
  l.change_buffers_bytes_max = total;
  store_t *s = store_new(&l);
  CHECK(s != NULL);
  store_set_announce_applied(s, 1); /* a single node */
  store_cache_cfg_t cfg = cache_cfg("h", 1);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "h");
  store_keep_history(c); /* as a first watcher does */
  store_cache_release(s, c);
  return s;
}

static void put_key(store_cache_t *c, const char *key, const char *value) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  store_write_t w = {.op = value ? STORE_PUT : STORE_DELETE, .value = value,
                     .value_len = value ? strlen(value) : 0, .how = 3};
  store_result_t r = {0};
  CHECK_RC(store_write(c, &k, &w, T0, &r), 0);
}

/* A cache nobody follows keeps no history: it costs nothing. */
static void test_history_off_until_followed(void) {
  store_limits_t l = test_limits();
  l.change_buffer_bytes = 4096;
  l.change_buffers_bytes_max = 1 << 20;
  store_t *s = store_new(&l);
  store_set_announce_applied(s, 1);
  store_cache_cfg_t cfg = cache_cfg("quiet", 4);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "quiet");
  put_key(c, "a", "1");
  CHECK(!store_history_kept(c));
  CHECK_EQ(store_changes_bytes(s), 0);
  store_keep_history(c);
  put_key(c, "a", "2");
  CHECK(store_changes_bytes(s) > 0);
  store_cache_release(s, c);
  store_free(s);
}

/* Every write of a partition is kept in order, deletes included, and read
 * back past any position. */
static void test_history_in_order(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  put_key(c, "a", "1");
  put_key(c, "b", "2");
  put_key(c, "a", NULL);
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 0, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 3);
  CHECK_EQ(h.counters[0], 1);
  CHECK_EQ(h.counters[2], 3);
  CHECK_EQ(h.kinds[2], CHANGE_DELETE);
  CHECK_EQ(next, 3);
  CHECK_EQ(hist_read(c, 0, 2, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 1);
  CHECK(store_changes_bytes(s) > 0);
  store_cache_release(s, c);
  store_free(s);
}

/* A filled copy takes the primary's counter at the reset, even when its
 * own is lower (its newest writes were deletes): its next record goes on
 * from there, never reusing a counter. (Found in review: the copy kept its
 * lower counter and, once promoted, wrote counters the history skipped.) */
static void test_history_reset_takes_counter(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  put_key(c, "a", "1"); /* counter 1 */
  store_part_reset(c, 0, 10);
  CHECK_EQ(atomic_load(&store_part_sync(c, 0)->applied), 10);
  put_key(c, "b", "2"); /* counter 11 */
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 10, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 1);
  CHECK_EQ(h.counters[0], 11);
  /* Before the reset: gone. */
  CHECK_EQ(hist_read(c, 0, 1, &h, &next), CHANGES_GAP);
  store_cache_release(s, c);
  store_free(s);
}

/* A position past all this copy ever applied is another history's (writes
 * lost with an old primary, a cache made again): a GAP back to where this
 * history is, never a silent wait. */
static void test_history_position_from_elsewhere(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  put_key(c, "a", "1");
  put_key(c, "a", "2");
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 7, &h, &next), CHANGES_GAP);
  CHECK_EQ(next, 2);
  CHECK_EQ(hist_read(c, 0, 2, &h, &next), CHANGES_OK); /* caught up */
  CHECK_EQ(h.n, 0);
  store_cache_release(s, c);
  store_free(s);
}

/* Histories share change_buffers_bytes_max: past it a ring keeps what it
 * has (the oldest go) and data writes are never refused for it. */
static void test_history_budget(void) {
  store_limits_t l = test_limits();
  l.memory_bytes_max = 4 << 20;
  l.change_buffer_bytes = 1 << 20;
  l.change_buffers_bytes_max = 64 << 10;
  store_t *s = store_new(&l);
  store_set_announce_applied(s, 1);
  store_cache_cfg_t cfg = cache_cfg("big", 64);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "big");
  store_keep_history(c);
  char value[900];
  memset(value, 'v', sizeof value - 1);
  value[sizeof value - 1] = '\0';
  for (int i = 0; i < 2000; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i % 500);
    put_key(c, key, value); /* each one fits: CHECK_RC inside */
  }
  CHECK(store_changes_bytes(s) <= 64 << 10);
  CHECK(store_changes_bytes(s) > 0);
  store_cache_release(s, c);
  CHECK_RC(store_cache_drop(s, "big"), 0);
  CHECK_EQ(store_changes_bytes(s), 0);
  store_free(s);
}

/* Where changes are kept, a key whose time to live ran out is removed as a
 * change of its own (CHANGE_EXPIRE) by the sweep of a single node; a write
 * to it meanwhile sees it absent: a delete finds nothing (the removal
 * still comes), a put replaces it. */
static void test_history_expiry(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  store_key_t k, k2;
  store_key_init(c, "t", 1, &k);
  store_key_init(c, "u", 1, &k2);
  store_write_t w = {.op = STORE_PUT, .value = "v", .value_len = 1, .ttl_ms = 10};
  store_result_t r = {0};
  CHECK_RC(store_write(c, &k, &w, T0, &r), 0);   /* counter 1 */
  CHECK_RC(store_write(c, &k2, &w, T0, &r), 0);  /* counter 2 */
  store_write_t del = {.op = STORE_DELETE};
  CHECK_RC(store_write(c, &k, &del, T0 + 20, &r), GRID_ENOTFOUND);
  store_write_t put = {.op = STORE_PUT, .value = "w", .value_len = 1};
  CHECK_RC(store_write(c, &k2, &put, T0 + 20, &r), 0); /* counter 3: replaces */
  CHECK_EQ(store_part_size(c, 0), 2); /* t stays until it is removed */
  CHECK_EQ(store_sweep(s, T0 + 20, 100), 1);
  CHECK_EQ(store_part_size(c, 0), 1);
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 0, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 4);
  CHECK_EQ(h.kinds[2], CHANGE_PUT);
  CHECK_EQ(h.kinds[3], CHANGE_EXPIRE);
  CHECK_EQ(h.counters[3], 4);
  /* A read of an expired key sees it absent and leaves its removal to
   * the sweep (found in review: a get removed it silently, with no
   * change, and in a cluster on the primary only). */
  store_write_t brief = {.op = STORE_PUT, .value = "y", .value_len = 1, .ttl_ms = 5};
  store_key_t k3;
  store_key_init(c, "w", 1, &k3);
  CHECK_RC(store_write(c, &k3, &brief, T0 + 20, &r), 0); /* counter 5 */
  void *val;
  size_t vlen;
  uint64_t ver;
  CHECK_RC(store_get(c, &k3, T0 + 30, test_alloc, NULL, &val, &vlen, &ver), GRID_ENOTFOUND);
  CHECK_EQ(store_part_size(c, 0), 2);
  CHECK_EQ(store_sweep(s, T0 + 30, 100), 1); /* counter 6: CHANGE_EXPIRE */
  CHECK_EQ(hist_read(c, 0, 5, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 1);
  CHECK_EQ(h.kinds[0], CHANGE_EXPIRE);
  /* The primary's way (a cluster): STORE_REMOVE_EXPIRED, only if due. */
  store_write_t rm = {.op = STORE_REMOVE_EXPIRED};
  CHECK_RC(store_write(c, &k2, &rm, T0 + 20, &r), GRID_ENOTFOUND); /* live */
  store_write_t ttl = {.op = STORE_PUT, .value = "x", .value_len = 1, .ttl_ms = 5};
  CHECK_RC(store_write(c, &k2, &ttl, T0 + 20, &r), 0);            /* counter 7 */
  CHECK_RC(store_write(c, &k2, &rm, T0 + 30, &r), 0);             /* counter 8 */
  CHECK_EQ(hist_read(c, 0, 7, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 1);
  CHECK_EQ(h.kinds[0], CHANGE_EXPIRE);
  store_cache_release(s, c);
  store_free(s);
}

typedef struct woken {
  store_watch_t w;
  int wakes;
} woken_t;

static void count_wake(store_watch_t *w) { ((woken_t *)w)->wakes++; }

static void collect_part(void *ctx, uint32_t p) { ((uint64_t *)ctx)[p / 64] |= UINT64_C(1) << (p % 64); }

/* A watcher hears once per burst, and takes exactly the partitions that
 * changed. */
static void test_history_watchers(void) {
  store_limits_t l = test_limits();
  l.change_buffer_bytes = 4096;
  l.change_buffers_bytes_max = 1 << 20;
  store_t *s = store_new(&l);
  store_set_announce_applied(s, 1);
  store_cache_cfg_t cfg = cache_cfg("w", 128);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "w");
  woken_t wk = {.w = {.wake = count_wake}};
  CHECK_RC(store_watch_add(c, &wk.w), 0);
  CHECK(store_watched(c));
  put_key(c, "x", "1");
  put_key(c, "y", "1");
  CHECK_EQ(wk.wakes, 1); /* not again until taken */
  uint64_t parts[2] = {0, 0};
  store_watch_take(&wk.w, collect_part, parts);
  store_key_t kx, ky;
  store_key_init(c, "x", 1, &kx);
  store_key_init(c, "y", 1, &ky);
  CHECK((parts[kx.part / 64] >> (kx.part % 64)) & 1);
  CHECK((parts[ky.part / 64] >> (ky.part % 64)) & 1);
  CHECK_EQ(__builtin_popcountll(parts[0]) + __builtin_popcountll(parts[1]),
           kx.part == ky.part ? 1 : 2);
  put_key(c, "x", "2");
  CHECK_EQ(wk.wakes, 2);
  store_watch_remove(c, &wk.w);
  CHECK(!store_watched(c));
  put_key(c, "x", "3");
  CHECK_EQ(wk.wakes, 2);
  store_cache_release(s, c);
  store_free(s);
}

/* An embedded cluster member reads in its own thread only what it leads
 * and only once every write it applied is committed: a key written and
 * not yet committed, or deleted and not yet committed, is read through
 * the owner loop instead (GRID_ENOTREADY), never seen. */
static void test_get_committed(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("led", 1);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "led");
  store_part_sync_t *sy = store_part_sync(c, 0);
  store_key_t k;
  store_key_init(c, "a", 1, &k);
  void *v;
  size_t len;
  uint64_t ver;
  put_key(c, "a", "1");
  /* Not led here: never read locally. */
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  atomic_store(&sy->led, 1);
  /* Led, but write 1 is applied and not committed. */
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  atomic_store(&sy->committed, 1);
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), 0);
  CHECK_STR(v, "1");
  free(v);
  /* b written and not committed: b waits, a (committed) is read. */
  put_key(c, "b", "2");
  store_key_t kb;
  store_key_init(c, "b", 1, &kb);
  CHECK_RC(store_get_committed(c, &kb, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), 0);
  CHECK_STR(v, "1");
  free(v);
  store_key_t kz;
  store_key_init(c, "z", 1, &kz); /* absent, with a write in flight: not told */
  CHECK_RC(store_get_committed(c, &kz, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  atomic_store(&sy->committed, 2);
  CHECK_RC(store_get_committed(c, &kb, T0, test_alloc, NULL, &v, &len, &ver), 0);
  CHECK_STR(v, "2");
  free(v);
  /* A delete applied, not committed: the key's absence is not told yet. */
  put_key(c, "a", NULL);
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  atomic_store(&sy->committed, 3);
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTFOUND);
  /* Led no more (a new map): back to the owner loop. */
  atomic_store(&sy->led, 0);
  CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
  store_cache_release(s, c);
  store_free(s);
}

/* A backup copy serves its node's reads only for a read_from_backup cache
 * (on for replicated ones), only while it is in sync, and only what its
 * primary said is committed; what it hears never passes what it applied. */
static void test_get_committed_backup(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t part = cache_cfg("part", 1), rep = cache_cfg("rep", 1);
  rep.mode = GRID_MODE_REPLICATED;
  CHECK_RC(store_cache_create(s, &part), 0);
  CHECK_RC(store_cache_create(s, &rep), 0);
  const char *names[2] = {"part", "rep"};
  for (int i = 0; i < 2; i++) {
    store_cache_t *c = acquire(s, names[i]);
    store_part_sync_t *sy = store_part_sync(c, 0);
    store_key_t k;
    store_key_init(c, "a", 1, &k);
    void *v;
    size_t len;
    uint64_t ver;
    put_key(c, "a", "1"); /* a record applied: counter 1 */
    atomic_store(&sy->backup_in_sync, 1);
    store_part_committed_to(c, 0, 5); /* never past what it applied */
    CHECK_EQ(atomic_load(&sy->committed), 1);
    int rc = store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver);
    if (i == 0) {
      CHECK_RC(rc, GRID_ENOTREADY); /* a partitioned cache: off by default */
    } else {
      CHECK_RC(rc, 0);
      CHECK_STR(v, "1");
      free(v);
      put_key(c, "a", "2"); /* applied, its commit not heard yet */
      CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
      store_part_committed_to(c, 0, 2);
      CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), 0);
      CHECK_STR(v, "2");
      free(v);
      atomic_store(&sy->backup_in_sync, 0); /* demoted, or being filled */
      CHECK_RC(store_get_committed(c, &k, T0, test_alloc, NULL, &v, &len, &ver), GRID_ENOTREADY);
    }
    store_cache_release(s, c);
  }
  store_free(s);
}

/* ---- EXPIRE's options and absolute times ------------------------------- */

/* EXPIRE with cond bits (and an absolute time): 1 changed, 0 not. */
static int64_t expire_op(store_cache_t *c, const char *key, int64_t ms, int absolute, int cond,
                         int64_t now_ms) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  store_write_t w = {.op = STORE_EXPIRE, .expire_ms = ms, .expire_absolute = absolute,
                     .expire_cond = cond};
  store_result_t res = {0};
  CHECK_RC(store_write(c, &k, &w, now_ms, &res), 0);
  return res.number;
}

static int64_t expiry_of(store_cache_t *c, const char *key, int64_t now_ms) {
  store_key_t k;
  store_key_init(c, key, strlen(key), &k);
  int64_t at = -2;
  if (store_expiry(c, &k, now_ms, &at, NULL, NULL) != 0) return -2;
  return at;
}

/* Redis 7's NX / XX / GT / LT: no expiry counts as never expiring (GT
 * never holds for it, LT always does); a time in the past deletes the key
 * once the options hold. */
static void test_expire_options(void) {
  store_t *s = store_new(&(store_limits_t){.memory_bytes_max = 1 << 20, .key_bytes_max = 64,
                                           .value_bytes_max = 1024, .caches_max = 4,
                                           .partitions_default = 4, .partitions_max = 64});
  store_cache_t *c = acquire(s, "default");
  CHECK_RC(put(c, "k", "v", 0, T0), 0);
  CHECK_EQ(expire_op(c, "k", 1000, 0, STORE_EXPIRE_XX, T0), 0);
  CHECK_EQ(expire_op(c, "k", 1000, 0, STORE_EXPIRE_GT, T0), 0);
  CHECK_EQ(expiry_of(c, "k", T0), 0);
  CHECK_EQ(expire_op(c, "k", 5000, 0, STORE_EXPIRE_LT, T0), 1);
  CHECK_EQ(expiry_of(c, "k", T0), T0 + 5000);
  CHECK_EQ(expire_op(c, "k", 1000, 0, STORE_EXPIRE_NX, T0), 0);
  CHECK_EQ(expire_op(c, "k", 4000, 0, STORE_EXPIRE_GT, T0), 0);
  CHECK_EQ(expire_op(c, "k", 6000, 0, STORE_EXPIRE_GT | STORE_EXPIRE_XX, T0), 1);
  CHECK_EQ(expiry_of(c, "k", T0), T0 + 6000);
  CHECK_EQ(expire_op(c, "k", 6000, 0, STORE_EXPIRE_LT, T0), 0); /* not earlier */
  /* Absolute: a wall-clock time. */
  CHECK_EQ(expire_op(c, "k", T0 + 9000, 1, 0, T0), 1);
  CHECK_EQ(expiry_of(c, "k", T0), T0 + 9000);
  /* The options refuse: nothing is deleted even by a time in the past. */
  CHECK_EQ(expire_op(c, "k", T0 - 1, 1, STORE_EXPIRE_GT, T0), 0);
  CHECK_EQ(expiry_of(c, "k", T0), T0 + 9000);
  /* They hold: the key goes. */
  CHECK_EQ(expire_op(c, "k", T0 - 1, 1, STORE_EXPIRE_LT, T0), 1);
  CHECK_EQ(expiry_of(c, "k", T0), -2);
  /* A missing key: 0 whatever the options. */
  CHECK_EQ(expire_op(c, "none", 1000, 0, STORE_EXPIRE_NX, T0), 0);
  CHECK_EQ(expire_op(c, "none", 1000, 0, 0, T0), 0);
  store_cache_release(s, c);
  store_free(s);
}

/* ---- atomic batches ------------------------------------------------------ */

static store_batch_op_t bop(store_cache_t *c, int kind, const char *key, const char *value,
                            int cond, uint64_t version) {
  store_batch_op_t op = {.kind = kind, .value = value, .value_len = value ? strlen(value) : 0,
                         .cond = cond, .version = version};
  store_key_init(c, key, strlen(key), &op.key);
  return op;
}

typedef struct rec_log {
  uint64_t versions[16];
  int deleted[16];
  size_t n;
} rec_log_t;

static void rec_log_cb(void *ctx, const void *key, size_t key_len, const void *value,
                       size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms) {
  (void)key; (void)key_len; (void)value_len; (void)expire_at_ms; (void)type;
  rec_log_t *l = ctx;
  CHECK(l->n < 16);
  l->versions[l->n] = version;
  l->deleted[l->n++] = value == NULL;
}

/* Every condition is checked before anything is written: one that fails
 * leaves every key as it was and says which op; one that holds writes
 * every op, each with the next counter, one record each, in order. */
static void test_batch_all_or_none(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  put_key(c, "{t}.a", "1"); /* counter 1 */
  put_key(c, "{t}.b", "2"); /* counter 2 */
  uint64_t va;
  CHECK_RC(get(c, "{t}.a", T0, NULL, NULL, &va), 0);
  store_batch_op_t ops[4] = {
      bop(c, STORE_BATCH_PUT, "{t}.a", "10", STORE_COND_VERSION, va),
      bop(c, STORE_BATCH_PUT, "{t}.c", "30", STORE_COND_ABSENT, 0),
      bop(c, STORE_BATCH_DELETE, "{t}.b", NULL, STORE_COND_ANY, 0),
      bop(c, STORE_BATCH_CHECK, "{t}.z", NULL, STORE_COND_PRESENT, 0), /* fails */
  };
  size_t failed = 99;
  rec_log_t log = {0};
  int64_t mem = store_memory_bytes(s);
  CHECK_RC(store_write_batch(c, ops, 4, T0, 32, &failed, rec_log_cb, &log), GRID_ENOTFOUND);
  CHECK_EQ(failed, 3);
  CHECK_EQ(log.n, 0);
  CHECK_EQ(store_memory_bytes(s), mem);
  check_value(c, "{t}.a", T0, "1");
  check_value(c, "{t}.b", T0, "2");
  check_missing(c, "{t}.c", T0);
  CHECK_EQ(atomic_load(&store_part_sync(c, 0)->applied), 2);
  /* A version that moved on fails the first op. */
  ops[3] = bop(c, STORE_BATCH_CHECK, "{t}.z", NULL, STORE_COND_ABSENT, 0);
  ops[0].version = va + 1;
  CHECK_RC(store_write_batch(c, ops, 4, T0, 32, &failed, rec_log_cb, &log), GRID_EVERSION);
  CHECK_EQ(failed, 0);
  ops[0].version = va;
  CHECK_RC(store_write_batch(c, ops, 4, T0, 32, &failed, rec_log_cb, &log), 0);
  check_value(c, "{t}.a", T0, "10");
  check_value(c, "{t}.c", T0, "30");
  check_missing(c, "{t}.b", T0);
  CHECK_EQ(log.n, 3); /* the check writes nothing */
  CHECK_EQ(log.versions[0] & STORE_COUNTER_MASK, 3);
  CHECK_EQ(log.versions[1] & STORE_COUNTER_MASK, 4);
  CHECK_EQ(log.versions[2] & STORE_COUNTER_MASK, 5);
  CHECK(log.deleted[2] && !log.deleted[0]);
  CHECK_EQ(ops[0].version_out, log.versions[0]);
  CHECK(ops[0].existed && !ops[1].existed);
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 2, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 3);
  CHECK_EQ(h.counters[0], 3);
  CHECK_EQ(h.kinds[2], CHANGE_DELETE);
  /* The history keeps each put's value and type (they were once swapped:
   * change streams then saw batches' values empty; the fault harness's
   * stream check found it). */
  CHECK_EQ(h.value_lens[0], 2);
  CHECK_EQ(h.types[0], GRID_TYPE_STRING);
  /* A delete of a missing key does nothing, and is no error. */
  store_batch_op_t del = bop(c, STORE_BATCH_DELETE, "{t}.none", NULL, STORE_COND_ANY, 0);
  CHECK_RC(store_write_batch(c, &del, 1, T0, 32, &failed, NULL, NULL), 0);
  CHECK_EQ(atomic_load(&store_part_sync(c, 0)->applied), 5);
  store_cache_release(s, c);
  store_free(s);
}

/* Refused before anything: a key named twice, a key of another partition,
 * and a batch past memory_bytes_max (whose first puts would fit). */
static void test_batch_refusals(void) {
  store_limits_t l = test_limits();
  l.memory_bytes_max = 64 * 1024;
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("b", 8);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "b");
  size_t failed = 99;
  store_batch_op_t two[3] = {
      bop(c, STORE_BATCH_PUT, "{x}.a", "1", 0, 0),
      bop(c, STORE_BATCH_PUT, "{x}.b", "1", 0, 0),
      bop(c, STORE_BATCH_DELETE, "{x}.a", NULL, 0, 0),
  };
  CHECK_RC(store_write_batch(c, two, 3, T0, 32, &failed, NULL, NULL), GRID_EINVAL);
  CHECK_EQ(failed, 2);
  check_missing(c, "{x}.a", T0);
  /* Another partition: find a key whose partition differs. */
  char other[32] = "";
  for (int i = 0; i < 100 && !other[0]; i++) {
    char k[32];
    snprintf(k, sizeof k, "{y%d}.a", i);
    store_key_t sk;
    store_key_init(c, k, strlen(k), &sk);
    if (sk.part != two[0].key.part) snprintf(other, sizeof other, "%s", k);
  }
  CHECK(other[0]);
  two[2] = bop(c, STORE_BATCH_PUT, other, "1", 0, 0);
  CHECK_RC(store_write_batch(c, two, 3, T0, 32, &failed, NULL, NULL), GRID_EINVAL);
  CHECK_EQ(failed, 2);
  check_missing(c, "{x}.a", T0);
  /* Memory: 100 values of 1000 bytes do not fit in 64 KB. */
  static char big[1001];
  memset(big, 'v', 1000);
  store_batch_op_t many[100];
  char keys[100][16];
  for (int i = 0; i < 100; i++) {
    snprintf(keys[i], sizeof keys[i], "{x}.%d", i);
    many[i] = bop(c, STORE_BATCH_PUT, keys[i], big, 0, 0);
  }
  int64_t mem = store_memory_bytes(s);
  CHECK_RC(store_write_batch(c, many, 100, T0, 32, &failed, NULL, NULL), GRID_EMEMLIMIT);
  CHECK_EQ(store_memory_bytes(s), mem);
  CHECK_EQ(store_cache_size(c), 0);
  CHECK_RC(store_write_batch(c, many, 20, T0, 32, &failed, NULL, NULL), 0);
  CHECK_EQ(store_cache_size(c), 20);
  store_cache_release(s, c);
  store_free(s);
}

/* A reader that takes the partition's lock sees a batch whole or not at
 * all: one thread writes batches setting every key to the same round,
 * another reads all of them in one scan and finds one round throughout. */
typedef struct batch_race {
  store_cache_t *c;
  _Atomic int stop;
  int torn;
  int reads;
} batch_race_t;

typedef struct batch_seen {
  char first[16];
  int mixed, n;
} batch_seen_t;

static int batch_seen_cb(void *ctx, const void *key, size_t key_len, const void *value,
                         size_t value_len, uint64_t version) {
  (void)key; (void)key_len; (void)version;
  batch_seen_t *b = ctx;
  char v[16];
  snprintf(v, sizeof v, "%.*s", (int)value_len, (const char *)value);
  if (b->n++ == 0) snprintf(b->first, sizeof b->first, "%s", v);
  else if (strcmp(v, b->first) != 0) b->mixed = 1;
  return 0;
}

static void *batch_reader(void *arg) {
  batch_race_t *r = arg;
  while (!atomic_load(&r->stop)) {
    batch_seen_t b = {0};
    uint64_t cursor = 0;
    store_scan(r->c, 0, &cursor, UINT32_MAX, T0, batch_seen_cb, &b);
    if (b.mixed) r->torn++;
    r->reads++;
  }
  return NULL;
}

static void test_batch_readers_see_all_or_none(void) {
  store_limits_t l = test_limits();
  store_t *s = store_new(&l);
  store_cache_cfg_t cfg = cache_cfg("r", 1);
  CHECK_RC(store_cache_create(s, &cfg), 0);
  store_cache_t *c = acquire(s, "r");
  char keys[10][16];
  store_batch_op_t ops[10];
  for (int i = 0; i < 10; i++) {
    snprintf(keys[i], sizeof keys[i], "{t}.p%d", i);
    ops[i] = bop(c, STORE_BATCH_PUT, keys[i], "0", 0, 0);
  }
  size_t failed;
  CHECK_RC(store_write_batch(c, ops, 10, T0, 32, &failed, NULL, NULL), 0);
  batch_race_t r = {.c = c};
  pthread_t th;
  CHECK(pthread_create(&th, NULL, batch_reader, &r) == 0);
  char round[16];
  for (int k = 1; k <= 20000; k++) {
    snprintf(round, sizeof round, "%d", k);
    for (int i = 0; i < 10; i++) {
      ops[i].value = round;
      ops[i].value_len = strlen(round);
    }
    CHECK_RC(store_write_batch(c, ops, 10, T0, 32, &failed, NULL, NULL), 0);
  }
  atomic_store(&r.stop, 1);
  pthread_join(th, NULL);
  CHECK(r.reads > 0);
  CHECK_EQ(r.torn, 0);
  check_value(c, "{t}.p9", T0, "20000");
  store_cache_release(s, c);
  store_free(s);
}

/* A backup applies a batch's records together: counters and values as the
 * primary's, kept in its history. */
static void test_apply_batch(void) {
  store_t *s = history_store(4096, 1 << 20);
  store_cache_t *c = acquire(s, "h");
  store_record_t recs[2];
  memset(recs, 0, sizeof recs);
  store_key_init(c, "{t}.a", 5, &recs[0].key);
  recs[0].value = "x";
  recs[0].value_len = 1;
  recs[0].version = (UINT64_C(3) << STORE_VERSION_COUNTER_BITS) | 7;
  store_key_init(c, "{t}.b", 5, &recs[1].key);
  recs[1].value = NULL;
  recs[1].version = (UINT64_C(3) << STORE_VERSION_COUNTER_BITS) | 8;
  size_t applied = 0;
  CHECK_RC(store_apply_batch(c, recs, 2, 32, &applied), 0);
  CHECK_EQ(applied, 2);
  CHECK_EQ(atomic_load(&store_part_sync(c, 0)->applied), 8);
  uint64_t v;
  CHECK_RC(get(c, "{t}.a", T0, NULL, NULL, &v), 0);
  CHECK_EQ(v, recs[0].version);
  hist_t h;
  uint64_t next;
  CHECK_EQ(hist_read(c, 0, 6, &h, &next), CHANGES_OK);
  CHECK_EQ(h.n, 2);
  CHECK_EQ(h.counters[1], 8);
  CHECK_EQ(h.kinds[1], CHANGE_DELETE);
  store_cache_release(s, c);
  store_free(s);
}

int main(void) {
  RUN(test_new_has_default_cache);
  RUN(test_get_committed);
  RUN(test_expire_options);
  RUN(test_batch_all_or_none);
  RUN(test_batch_refusals);
  RUN(test_batch_readers_see_all_or_none);
  RUN(test_apply_batch);
  RUN(test_get_committed_backup);
  RUN(test_put_get_delete);
  RUN(test_put_if_absent_replace);
  RUN(test_cas);
  RUN(test_add);
  RUN(test_ttl);
  RUN(test_cache_default_ttl);
  RUN(test_add_keeps_expiry);
  RUN(test_sweep);
  RUN(test_memory_limit);
  RUN(test_memory_back_after_drop);
  RUN(test_check_sizes);
  RUN(test_caches);
  RUN(test_drop_while_acquired);
  RUN(test_scan);
  RUN(test_scan_while_growing);
  RUN(test_buckets_spread);
  RUN(test_concurrent_add);
  RUN(test_history_off_until_followed);
  RUN(test_history_in_order);
  RUN(test_history_reset_takes_counter);
  RUN(test_history_position_from_elsewhere);
  RUN(test_history_budget);
  RUN(test_history_expiry);
  RUN(test_history_watchers);
  RUN(test_check_sizes_huge); /* last: it fails today, see its comment */
  fprintf(stderr, "test_store: all passed\n");
  return 0;
}
