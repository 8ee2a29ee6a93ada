/*
 * thing_int.h: what the shim's files share. codec.c packs VTQs
 * (proto/thing.proto), thing.c reads and writes properties, lock.c keeps
 * locks and the singleton, sub.c turns change streams into DataChange
 * events. Only grid.h of grid is used.
 */
#ifndef THING_INT_H
#define THING_INT_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "thing.h"

#define THING_CACHE_DEFAULT "things"
/* A conditional write that lost to another writer is tried again from a
 * fresh read at most this many times (THING_ECONTENDED after). */
#define THING_WRITE_ATTEMPTS_MAX 64
/* What a lock or role holder's lease is believed to last, of lease_ms,
 * counted from when its request left: the grid's copy lasts lease_ms from
 * when the request arrived, so the holder lets go first. */
#define THING_LEASE_TRUST_PERCENT 90

struct thing_store {
  grid_t *g;
  char cache[65];
  char member[96];            /* "pid@host": what a lock's entries say */
};

/* "{thing}" + sep + name into a malloc'd key; NULL for a bad Thing name
 * (THING_ENAME in *rc) or memory (GRID_ENOMEM). */
char *thing_key(const char *thing, const char *sep, const char *name, size_t *len, int *rc);
int thing_name_ok(const char *thing);

/* Whether two VTQs hold the same value (type and value; not time or
 * quality): THING_CHANGE_VALUE. */
int thing_value_equal(const thing_value_t *a, const thing_value_t *b);

/* A condition variable whose timed waits count on the monotonic clock. */
static inline void thing_cond_init(pthread_cond_t *cv) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &ca);
  pthread_condattr_destroy(&ca);
}

/* The monotonic time ms from now, for thing_cond_init's waits. */
static inline struct timespec thing_deadline(int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

static inline int64_t thing_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
