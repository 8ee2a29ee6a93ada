/*
 * notify: Redis keyspace notifications as pure rules (change streams,
 * issue 9): the letters of the notify_keyspace_events setting and their
 * canonical form (as CONFIG GET shows it), which Redis event, in which
 * class, each of grid's writes raises, and the two channels an event is
 * published on. No I/O and no state: the RESP front end publishes what
 * these rules name.
 *
 * Letters, as Redis has them: K keyspace channel, E keyevent channel; the
 * classes g generic, $ string, l list, s set, h hash, z sorted set,
 * x expired, e evicted, t stream, d module, m key miss, n new key; A is
 * g$lshzxetd. Nothing is published unless K or E is set, and a class.
 */
#ifndef GRID_NOTIFY_H
#define GRID_NOTIFY_H

#include <stddef.h>

enum {
  NOTIFY_KEYSPACE = 1u << 0,  /* K: __keyspace@<db>__:<key>, message: event */
  NOTIFY_KEYEVENT = 1u << 1,  /* E: __keyevent@<db>__:<event>, message: key */
  NOTIFY_GENERIC = 1u << 2,   /* g */
  NOTIFY_STRING = 1u << 3,    /* $ */
  NOTIFY_LIST = 1u << 4,      /* l */
  NOTIFY_SET = 1u << 5,       /* s */
  NOTIFY_HASH = 1u << 6,      /* h */
  NOTIFY_ZSET = 1u << 7,      /* z */
  NOTIFY_EXPIRED = 1u << 8,   /* x */
  NOTIFY_EVICTED = 1u << 9,   /* e */
  NOTIFY_STREAM = 1u << 10,   /* t */
  NOTIFY_MODULE = 1u << 11,   /* d */
  NOTIFY_KEY_MISS = 1u << 12, /* m (not in A) */
  NOTIFY_NEW = 1u << 13,      /* n (not in A) */
  NOTIFY_ALL = NOTIFY_GENERIC | NOTIFY_STRING | NOTIFY_LIST | NOTIFY_SET | NOTIFY_HASH |
               NOTIFY_ZSET | NOTIFY_EXPIRED | NOTIFY_EVICTED | NOTIFY_STREAM | NOTIFY_MODULE,
};

/* The canonical form is at most this long, with its NUL. */
#define NOTIFY_FLAGS_TEXT_MAX 24

/* The flags of a setting's text (letters in any order, repeats allowed; ""
 * is none). 0, or -1 when a letter is not one of Redis's (the setting is
 * refused, as Redis refuses it). */
int notify_parse(const char *text, unsigned *flags);
/* The text CONFIG GET shows for flags, as Redis 7 shows it: "A" for every
 * class of A, else the classes' letters and n; then K, E, m. (With A, Redis
 * does not show n though it keeps it: so does this.) out holds
 * NOTIFY_FLAGS_TEXT_MAX. */
void notify_format(unsigned flags, char out[NOTIFY_FLAGS_TEXT_MAX]);
/* Whether an event of class cls is published under flags. */
int notify_wanted(unsigned flags, unsigned cls);

/* What a write raised, as Redis names it. */
typedef struct notify_event {
  const char *name;  /* "set", "del", "incrby", ...; NULL: none */
  unsigned cls;      /* its class (NOTIFY_GENERIC, NOTIFY_STRING, ...) */
} notify_event_t;

/* The kinds of change a write makes (change streams' put, delete, expire,
 * and the TTL changes Redis also reports). */
typedef enum {
  NOTIFY_CHANGE_PUT = 1,      /* a value written */
  NOTIFY_CHANGE_DELETE = 2,   /* a key deleted by a request */
  NOTIFY_CHANGE_EXPIRED = 3,  /* a key gone because its TTL ran out */
  NOTIFY_CHANGE_TTL = 4,      /* a TTL set on a key that stays */
  NOTIFY_CHANGE_PERSIST = 5,  /* a TTL taken off */
  NOTIFY_CHANGE_NEW = 6,      /* a key made (Redis raises it before the
                                 write's own event) */
} notify_change_t;

/* The event of a change made by op (a GRID__OP__ number): "set" for the
 * writes of a value (PUT, PUT_IF_ABSENT, REPLACE, CAS, GET_AND_PUT,
 * PUT_ALL), "incrby" for ADD, "append" for APPEND, "del" for deletes,
 * "expire" and "persist" for TTL changes, "expired" for a TTL run out
 * (whatever op). A value written with a TTL raises two, as Redis's SET
 * with EX or PX does: the put's, then NOTIFY_CHANGE_TTL's "expire" (seen
 * on redis-server 7.0.15, as every name here). */
notify_event_t notify_event_of(int op, notify_change_t change);

/* A write of a hash, list or set command (or a string one changed in place)
 * names its event instead of an op: its "how" is NOTIFY_HOW_EVENT + the
 * event (ops.c picks it per key; the change streams show such a write as
 * op COLL). */
#define NOTIFY_HOW_EVENT 64
enum {
  NOTIFY_EV_HSET, NOTIFY_EV_HDEL, NOTIFY_EV_HINCRBY, NOTIFY_EV_HINCRBYFLOAT, NOTIFY_EV_SADD,
  NOTIFY_EV_SREM, NOTIFY_EV_SPOP, NOTIFY_EV_SINTERSTORE, NOTIFY_EV_SUNIONSTORE,
  NOTIFY_EV_SDIFFSTORE, NOTIFY_EV_LPUSH, NOTIFY_EV_RPUSH, NOTIFY_EV_LPOP, NOTIFY_EV_RPOP,
  NOTIFY_EV_LSET, NOTIFY_EV_LREM, NOTIFY_EV_LTRIM, NOTIFY_EV_LINSERT, NOTIFY_EV_INCRBYFLOAT,
  NOTIFY_EV_SETRANGE, NOTIFY_EV_SETBIT, NOTIFY_EV_RENAME_FROM, NOTIFY_EV_RENAME_TO,
  NOTIFY_EV_COPY_TO, NOTIFY_EV_COUNT,
};

/* The channels an event is published on, NUL-terminated; each returns the
 * length it needs (without the NUL), as snprintf does, so a key that does
 * not fit is seen. */
size_t notify_keyspace_channel(int db, const void *key, size_t key_len, char *out,
                               size_t cap);
size_t notify_keyevent_channel(int db, const char *event, char *out, size_t cap);

#endif
