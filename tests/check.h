/*
 * check.h: assertions for tests. They stay on in every build type and stop
 * the test with file:line and the values compared.
 */
#ifndef GRID_TEST_CHECK_H
#define GRID_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                               \
    }                                                                        \
  } while (0)

#define CHECK_EQ(a, b)                                                       \
  do {                                                                       \
    long long a_ = (long long)(a), b_ = (long long)(b);                      \
    if (a_ != b_) {                                                          \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n",   \
              __FILE__, __LINE__, #a, #b, a_, b_);                           \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* A grid call's result against the code expected, with both names. */
#define CHECK_RC(call, want)                                                 \
  do {                                                                       \
    int rc_ = (call), want_ = (want);                                        \
    if (rc_ != want_) {                                                      \
      fprintf(stderr, "%s:%d: %s returned %s (%d), expected %s (%d)\n",      \
              __FILE__, __LINE__, #call, grid_err_name(rc_), rc_,            \
              grid_err_name(want_), want_);                                  \
      abort();                                                               \
    }                                                                        \
  } while (0)

#define CHECK_STR(a, b)                                                      \
  do {                                                                       \
    const char *a_ = (a), *b_ = (b);                                         \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                 \
      fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s (\"%s\" vs \"%s\")\n", \
              __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",                \
              b_ ? b_ : "(null)");                                           \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* Runs one test function and says so. */
#define RUN(fn)                                                              \
  do {                                                                       \
    fprintf(stderr, "-- %s\n", #fn);                                         \
    fn();                                                                    \
  } while (0)

#endif
