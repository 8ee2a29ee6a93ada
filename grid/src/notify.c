#include "notify.h"

#include <stdio.h>
#include <string.h>

#include "grid.pb-c.h"

typedef struct notify_letter_flag {
  char letter;
  unsigned flag;
} notify_letter_flag_t;

/* Each letter with its flag, in the order the canonical form lists the
 * classes of A. */
static const notify_letter_flag_t notify_classes[] = {
    {'g', NOTIFY_GENERIC}, {'$', NOTIFY_STRING}, {'l', NOTIFY_LIST},
    {'s', NOTIFY_SET},     {'h', NOTIFY_HASH},   {'z', NOTIFY_ZSET},
    {'x', NOTIFY_EXPIRED}, {'e', NOTIFY_EVICTED}, {'t', NOTIFY_STREAM},
    {'d', NOTIFY_MODULE},
};

/* ... and the letters outside A, in the order they follow (n comes with
 * the classes, see notify_format). */
static const notify_letter_flag_t notify_others[] = {
    {'K', NOTIFY_KEYSPACE}, {'E', NOTIFY_KEYEVENT}, {'m', NOTIFY_KEY_MISS},
};

#define NOTIFY_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static unsigned notify_letter(char c) {
  if (c == 'A') return NOTIFY_ALL;
  if (c == 'n') return NOTIFY_NEW;
  for (size_t i = 0; i < NOTIFY_COUNT(notify_classes); i++)
    if (notify_classes[i].letter == c) return notify_classes[i].flag;
  for (size_t i = 0; i < NOTIFY_COUNT(notify_others); i++)
    if (notify_others[i].letter == c) return notify_others[i].flag;
  return 0;
}

int notify_parse(const char *text, unsigned *flags) {
  unsigned f = 0;
  for (const char *p = text; *p; p++) {
    unsigned one = notify_letter(*p);
    if (!one) return -1;
    f |= one;
  }
  *flags = f;
  return 0;
}

void notify_format(unsigned flags, char out[NOTIFY_FLAGS_TEXT_MAX]) {
  /* As Redis 7 shows it (checked against redis-server 7.0.15): the classes
   * of A in their order, then n, or "A" alone when every class of A is
   * set, which then leaves n unshown; then K, E, m. */
  size_t n = 0;
  if ((flags & NOTIFY_ALL) == NOTIFY_ALL) {
    out[n++] = 'A';
  } else {
    for (size_t i = 0; i < NOTIFY_COUNT(notify_classes); i++)
      if (flags & notify_classes[i].flag) out[n++] = notify_classes[i].letter;
    if (flags & NOTIFY_NEW) out[n++] = 'n';
  }
  for (size_t i = 0; i < NOTIFY_COUNT(notify_others); i++)
    if (flags & notify_others[i].flag) out[n++] = notify_others[i].letter;
  out[n] = '\0';
}

int notify_wanted(unsigned flags, unsigned cls) {
  return (flags & (NOTIFY_KEYSPACE | NOTIFY_KEYEVENT)) != 0 && (flags & cls) != 0;
}

/* The events of NOTIFY_HOW_EVENT + n, Redis's names and classes. */
static const notify_event_t notify_coll_events[NOTIFY_EV_COUNT] = {
    [NOTIFY_EV_HSET] = {"hset", NOTIFY_HASH},
    [NOTIFY_EV_HDEL] = {"hdel", NOTIFY_HASH},
    [NOTIFY_EV_HINCRBY] = {"hincrby", NOTIFY_HASH},
    [NOTIFY_EV_HINCRBYFLOAT] = {"hincrbyfloat", NOTIFY_HASH},
    [NOTIFY_EV_SADD] = {"sadd", NOTIFY_SET},
    [NOTIFY_EV_SREM] = {"srem", NOTIFY_SET},
    [NOTIFY_EV_SPOP] = {"spop", NOTIFY_SET},
    [NOTIFY_EV_SINTERSTORE] = {"sinterstore", NOTIFY_SET},
    [NOTIFY_EV_SUNIONSTORE] = {"sunionstore", NOTIFY_SET},
    [NOTIFY_EV_SDIFFSTORE] = {"sdiffstore", NOTIFY_SET},
    [NOTIFY_EV_LPUSH] = {"lpush", NOTIFY_LIST},
    [NOTIFY_EV_RPUSH] = {"rpush", NOTIFY_LIST},
    [NOTIFY_EV_LPOP] = {"lpop", NOTIFY_LIST},
    [NOTIFY_EV_RPOP] = {"rpop", NOTIFY_LIST},
    [NOTIFY_EV_LSET] = {"lset", NOTIFY_LIST},
    [NOTIFY_EV_LREM] = {"lrem", NOTIFY_LIST},
    [NOTIFY_EV_LTRIM] = {"ltrim", NOTIFY_LIST},
    [NOTIFY_EV_LINSERT] = {"linsert", NOTIFY_LIST},
    [NOTIFY_EV_INCRBYFLOAT] = {"incrbyfloat", NOTIFY_STRING},
    [NOTIFY_EV_SETRANGE] = {"setrange", NOTIFY_STRING},
    [NOTIFY_EV_SETBIT] = {"setbit", NOTIFY_STRING},
    [NOTIFY_EV_RENAME_FROM] = {"rename_from", NOTIFY_GENERIC},
    [NOTIFY_EV_RENAME_TO] = {"rename_to", NOTIFY_GENERIC},
    [NOTIFY_EV_COPY_TO] = {"copy_to", NOTIFY_GENERIC},
};

notify_event_t notify_event_of(int op, notify_change_t change) {
  if (op >= NOTIFY_HOW_EVENT && op < NOTIFY_HOW_EVENT + NOTIFY_EV_COUNT &&
      (change == NOTIFY_CHANGE_PUT || change == NOTIFY_CHANGE_DELETE))
    return notify_coll_events[op - NOTIFY_HOW_EVENT]; /* a delete: the command's, then "del" */
  switch (change) {
    case NOTIFY_CHANGE_EXPIRED:
      return (notify_event_t){"expired", NOTIFY_EXPIRED};
    case NOTIFY_CHANGE_DELETE:
      return (notify_event_t){"del", NOTIFY_GENERIC};
    case NOTIFY_CHANGE_TTL:
      return (notify_event_t){"expire", NOTIFY_GENERIC};
    case NOTIFY_CHANGE_PERSIST:
      return (notify_event_t){"persist", NOTIFY_GENERIC};
    case NOTIFY_CHANGE_NEW:
      return (notify_event_t){"new", NOTIFY_NEW};
    case NOTIFY_CHANGE_PUT:
      break;
  }
  switch (op) {
    case GRID__OP__ADD:
      return (notify_event_t){"incrby", NOTIFY_STRING};
    case GRID__OP__APPEND:
      return (notify_event_t){"append", NOTIFY_STRING};
    case GRID__OP__PUT: case GRID__OP__PUT_IF_ABSENT: case GRID__OP__REPLACE:
    case GRID__OP__CAS: case GRID__OP__GET_AND_PUT: case GRID__OP__PUT_ALL:
    case GRID__OP__BATCH: case GRID__OP__EXEC:
      return (notify_event_t){"set", NOTIFY_STRING};
    default:
      return (notify_event_t){NULL, 0};
  }
}

size_t notify_keyspace_channel(int db, const void *key, size_t key_len, char *out,
                               size_t cap) {
  int head = snprintf(out, cap, "__keyspace@%d__:", db);
  size_t need = (size_t)(head < 0 ? 0 : head) + key_len;
  if (head >= 0 && need < cap) {
    memcpy(out + head, key, key_len);
    out[need] = '\0';
  }
  return need;
}

size_t notify_keyevent_channel(int db, const char *event, char *out, size_t cap) {
  int n = snprintf(out, cap, "__keyevent@%d__:%s", db, event);
  return n < 0 ? 0 : (size_t)n;
}
