/*
 * thing.h: the live state of Things in the grid, for the application
 * servers of an industrial IoT platform that run active-active (any server
 * reads and writes any Thing, every server hears every change, one server
 * holds the singleton role).
 *
 * It uses nothing of grid but grid.h, so it works the same over an
 * embedded node, an embedded cluster member, a remote cluster or a single
 * node: open a grid_t as you like and hand it to thing_open().
 *
 * Layout in the grid (cache "things" unless told otherwise): a property is
 * the entry "{thing}.property" (so one Thing's properties share a
 * partition, and a Thing's reads and writes go to one primary), its value
 * a packed grid.thing.Vtq (proto/thing.proto). A Thing's lock is the
 * entries "{thing}#lock", "{thing}#fence" and "{thing}#wait". Thing names
 * must not hold '{' or '}'.
 *
 * Conventions are grid.h's: 0 or a negative code (GRID_E* or THING_E*;
 * thing_strerror() has the words, grid_last_error() the node's), memory
 * returned is the caller's and freed with the matching *_free().
 */
#ifndef THING_H
#define THING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grid.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The shim's own errors (grid's are GRID_E*, -1 .. -99). */
enum {
  THING_ETYPE = -201,     /* the value's type is not the property's base
                             type (a property keeps the type of its first
                             write) */
  THING_EJSON = -202,     /* a JSON value that does not parse */
  THING_EFENCED = -203,   /* the write's fencing token is no longer the
                             lock's: another holder has it (or had it) */
  THING_ENOTHELD = -204,  /* the lock (or role) is not held: its lease ran
                             out, or another holds it */
  THING_ELOCKED = -205,   /* try-lock: another holds the lock */
  THING_EDECODE = -206,   /* a stored value is not a VTQ this reader knows
                             (written by something else, or a newer type) */
  THING_ENAME = -207,     /* a Thing name with '{' or '}', or empty */
  THING_ECONTENDED = -208,/* a conditional write lost to other writers
                             THING_WRITE_ATTEMPTS_MAX times in a row */
};

/* Words for a THING_E* or GRID_E* code. Static. */
const char *thing_strerror(int err);

typedef enum thing_type {
  THING_NUMBER = 1,       /* double */
  THING_INTEGER = 2,      /* int64_t */
  THING_BOOLEAN = 3,
  THING_STRING = 4,       /* UTF-8 text */
  THING_DATETIME = 5,     /* ms since 1970-01-01 UTC */
  THING_LOCATION = 6,
  THING_JSON = 7,         /* validated when written */
  THING_BLOB = 8,         /* bytes */
} thing_type_t;

typedef enum thing_quality {
  THING_QUALITY_UNKNOWN = 0,
  THING_GOOD = 1,
  THING_BAD = 2,
  THING_UNCERTAIN = 3,
} thing_quality_t;

typedef struct thing_location {
  double latitude, longitude, elevation;
} thing_location_t;

typedef struct thing_value {
  thing_type_t type;
  union {
    double number;
    int64_t integer;
    bool boolean;
    int64_t datetime_ms;
    thing_location_t location;
    struct {
      const char *data;   /* STRING, JSON, BLOB (not NUL-terminated for a
                             blob; a string read back is) */
      size_t len;
    } bytes;
  } u;
} thing_value_t;

/* A value, its time and its quality. */
typedef struct thing_vtq {
  thing_value_t value;
  int64_t time_ms;        /* when it was measured, ms UTC */
  thing_quality_t quality;
} thing_vtq_t;

/* Helpers that make a VTQ (text is not copied). */
thing_vtq_t thing_vtq_number(double v, int64_t time_ms, thing_quality_t q);
thing_vtq_t thing_vtq_integer(int64_t v, int64_t time_ms, thing_quality_t q);
thing_vtq_t thing_vtq_boolean(bool v, int64_t time_ms, thing_quality_t q);
thing_vtq_t thing_vtq_string(const char *text, int64_t time_ms, thing_quality_t q);

/* ---- the codec (what the grid holds) ------------------------------------ */

/* Packs vtq (a JSON value is validated first: THING_EJSON). *out is
 * malloc'd and the caller's. */
int thing_vtq_encode(const thing_vtq_t *vtq, void **out, size_t *len);
/* Unpacks a stored VTQ; strings, JSON and blobs point into *mem (malloc'd,
 * the caller frees it; NULL when there are none). THING_EDECODE. */
int thing_vtq_decode(const void *data, size_t len, thing_vtq_t *vtq, void **mem);

/* ---- the store -------------------------------------------------------------- */

typedef struct thing_store thing_store_t;

typedef struct thing_options {
  const char *cache;      /* NULL: "things" */
  int create_cache;       /* make the cache when missing (1 backup, full
                             sync): 1, or 0 to require it */
} thing_options_t;

/* The handle g must outlive the store. opts may be NULL. */
int thing_open(grid_t *g, const thing_options_t *opts, thing_store_t **out);
void thing_close(thing_store_t *ts);

/* One property as read. */
typedef struct thing_prop {
  char *name;             /* the property's name (NUL-terminated) */
  thing_vtq_t vtq;        /* strings point into memory the prop holds */
  uint64_t version;       /* the grid entry's: what thing_cas compares */
  void *mem_;
} thing_prop_t;

void thing_prop_free(thing_prop_t *p);
void thing_props_free(thing_prop_t *props, size_t n);

/* GRID_ENOTFOUND when the Thing has no such property. */
int thing_read(thing_store_t *ts, const char *thing, const char *prop, thing_prop_t *out);
/* Every property of the Thing, in one request (sorted by name). *props is
 * the caller's: thing_props_free(*props, *n). A Thing with none: 0, n 0. */
int thing_read_all(thing_store_t *ts, const char *thing, thing_prop_t **props, size_t *n);

/* One property's new VTQ in a write. */
typedef struct thing_update {
  const char *prop;
  thing_vtq_t vtq;
  /* set by thing_write: */
  uint64_t version;       /* the entry's version written (0: skipped) */
  bool skipped;           /* THING_IF_NEWER: the stored VTQ was as new */
} thing_update_t;

enum {
  /* Late or repeated device messages never move a property back in time:
   * an update whose time_ms is not after the stored one's is skipped (the
   * others are written). */
  THING_IF_NEWER = 1u << 0,
};

/* A lock's fencing token, carried by a write: the write happens only
 * while the token is the lock's (THING_EFENCED otherwise). */
typedef struct thing_fence {
  uint64_t token;         /* thing_lock_token() */
} thing_fence_t;

/* Writes updates[0..n) of one Thing as one atomic step: readers, other
 * servers and subscribers see all of them or none. Each property keeps
 * its base type (THING_ETYPE for the first update that would change one:
 * nothing written). fence (may be NULL) ties the write to the holder of
 * the Thing's lock. At most the node's batch_keys_max updates (less two
 * with a fence). */
int thing_write(thing_store_t *ts, const char *thing, thing_update_t *updates, size_t n,
                unsigned flags, const thing_fence_t *fence);
/* One property: thing_write of one update. version may be NULL. */
int thing_write_one(thing_store_t *ts, const char *thing, const char *prop,
                    const thing_vtq_t *vtq, unsigned flags, uint64_t *version);
/* Compare-and-set: writes only if the property's version is still
 * expected_version (from thing_read): GRID_EVERSION otherwise,
 * GRID_ENOTFOUND if it is gone. For read-modify-write. */
int thing_cas(thing_store_t *ts, const char *thing, const char *prop, uint64_t expected_version,
              const thing_vtq_t *vtq, uint64_t *version);
/* Removes a property (GRID_ENOTFOUND if it has none such). */
int thing_delete(thing_store_t *ts, const char *thing, const char *prop);

/* ---- DataChange subscriptions ---------------------------------------------- */

typedef enum thing_change_type {
  THING_CHANGE_ALWAYS = 0, /* every committed write, even of the same value */
  THING_CHANGE_VALUE = 1,  /* only writes that changed the value */
} thing_change_type_t;

typedef struct thing_change {
  const char *thing;
  const char *prop;
  const thing_vtq_t *old_vtq; /* NULL: the property is new */
  const thing_vtq_t *new_vtq; /* NULL: the property was deleted */
  uint64_t version;
  uint32_t partition;
} thing_change_t;

/* Runs on the subscription's own thread; everything it is given is valid
 * during the call only. It must not call thing_unsubscribe. */
typedef void (*thing_change_cb)(const thing_change_t *ch, void *arg);

typedef struct thing_sub_options {
  const char *const *things; /* these Things (NULL, 0: every Thing) */
  size_t n_things;
  const char *prop;          /* only this property (NULL: every one) */
  thing_change_type_t type;
  thing_change_cb callback;
  void *arg;
} thing_sub_options_t;

typedef struct thing_sub thing_sub_t;

/* Every committed change of the chosen properties from now on, once each,
 * in each property's order, with its old and new VTQ, on every server and
 * across failover (grid's change streams). 0 once the current values are
 * known (the subscription reads them first, to give old values). */
int thing_subscribe(thing_store_t *ts, const thing_sub_options_t *opts, thing_sub_t **out);
/* Changes passed to the callback so far; gaps healed by reading again. */
uint64_t thing_sub_delivered(const thing_sub_t *s);
uint64_t thing_sub_gaps(const thing_sub_t *s);
void thing_unsubscribe(thing_sub_t *s);

/* ---- per-Thing locks ----------------------------------------------------- */

typedef struct thing_lock thing_lock_t;

/* Takes the Thing's lock for lease_ms (0: 10000), waiting up to wait_ms
 * for another holder to let go or its lease to run out (0: try once,
 * THING_ELOCKED). The lease runs out unless renewed: a holder that dies
 * or stops loses the lock after at most lease_ms. Each grant has a fencing
 * token greater than every earlier grant's. A waiter claims the next
 * grant while it waits, so a holder that unlocks and locks again at once
 * goes behind it (a waiter is not starved; among several waiters the
 * order is not promised). */
int thing_lock(thing_store_t *ts, const char *thing, uint32_t lease_ms, uint32_t wait_ms,
               thing_lock_t **out);
/* The grant's fencing token (the same through renewals). */
uint64_t thing_lock_token(const thing_lock_t *l);
/* Whether the lease is still the holder's by this process's clock (it
 * ends a little before the grid lets it go). */
bool thing_lock_held(const thing_lock_t *l);
/* A new lease from now: 0, or THING_ENOTHELD (the lock was lost). */
int thing_lock_renew(thing_lock_t *l);
/* Lets the lock go (if still held) and frees l. */
int thing_unlock(thing_lock_t *l);
/* Frees l without a request (a holder that is going away). */
void thing_lock_forget(thing_lock_t *l);

/* ---- the cluster singleton --------------------------------------------- */

typedef struct thing_singleton thing_singleton_t;

typedef void (*thing_role_cb)(uint64_t token, void *arg);

typedef struct thing_singleton_options {
  const char *name;        /* NULL: "singleton" (one role per name) */
  uint32_t lease_ms;       /* 0: 2000. A holder that dies or is paused
                              loses the role after at most this; another
                              member takes it within lease_ms + check_ms */
  uint32_t check_ms;       /* 0: lease_ms / 10. How often a member that
                              does not hold the role tries to take it */
  thing_role_cb on_gain;   /* the role is this member's (with its token) */
  thing_role_cb on_loss;   /* it no longer is (released, lease lost) */
  void *arg;
} thing_singleton_options_t;

/* Makes this member a candidate for the role: a thread of the singleton's
 * takes the role when nobody holds it and renews it while held. The
 * callbacks run on that thread. */
int thing_singleton_start(thing_store_t *ts, const thing_singleton_options_t *opts,
                          thing_singleton_t **out);
/* Whether this member holds the role now; *token (may be NULL) the role's
 * fencing token. */
bool thing_singleton_held(thing_singleton_t *s, uint64_t *token);
/* Gives the role up (as the platform's ReleaseSingletonRole): another
 * member takes it; this one stays a candidate, and tries again only after
 * one lease. */
int thing_singleton_release(thing_singleton_t *s);
/* Releases the role if held, stops the thread, frees s. */
void thing_singleton_stop(thing_singleton_t *s);

#ifdef __cplusplus
}
#endif
#endif /* THING_H */
