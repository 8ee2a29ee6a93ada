#include "changes.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

/* A record in the ring, 8-byte aligned:
 *
 *   0      4      5     6        14       22          30        34        38
 *   +------+------+-----+--------+--------+-----------+---------+---------+-----+-------+
 *   | len  | kind | how | counter| version| expire_at | key_len | val_len | key | value |
 *   | u32  | u8   | u8  | u64    | u64    | i64       | u32     | u32     |     |       |
 *
 * kind's byte holds the value's type in its high four bits.
 *   +------+------+-----+--------+--------+-----------+---------+---------+-----+-------+
 *
 * len counts the whole record with its padding; CHANGES_WRAP in len marks
 * the unused end of the ring (the next record is at offset 0). */
#define CHANGES_HEADER_BYTES 38
#define CHANGES_WRAP 0xffffffffu
#define CHANGES_ALIGN 8
#define CHANGES_BYTES_MIN 64
#define CHANGES_BYTES_MAX ((size_t)1 << 31)

static size_t changes_round(size_t n) { return (n + CHANGES_ALIGN - 1) & ~(size_t)(CHANGES_ALIGN - 1); }

void changes_init(changes_t *c, size_t bytes_max, uint64_t counter) {
  memset(c, 0, sizeof *c);
  /* Whole records only: the ring's size is a multiple of the alignment, so
   * the end always has room for a wrap mark. */
  c->bytes_max = bytes_max ? (bytes_max < CHANGES_BYTES_MIN ? CHANGES_BYTES_MIN : bytes_max) : 0;
  /* A record's length is a u32: no ring is larger. */
  if (c->bytes_max > CHANGES_BYTES_MAX) c->bytes_max = CHANGES_BYTES_MAX;
  c->bytes_max &= ~(size_t)(CHANGES_ALIGN - 1);
  c->base = c->last = counter;
}

void changes_free(changes_t *c) {
  free(c->buf);
  c->buf = NULL;
  c->cap = 0;
  c->head = c->tail = c->used = c->count = 0;
}

static uint32_t changes_len_at(const changes_t *c, size_t pos);
static size_t changes_skip(const changes_t *c, size_t pos);

static size_t changes_record_bytes(const change_t *ch) {
  return changes_round(CHANGES_HEADER_BYTES + ch->key_len +
                       (ch->kind == CHANGE_PUT ? ch->value_len : 0));
}

/* Whether a record of n bytes fits without forgetting any. */
static int changes_fits(const changes_t *c, size_t n) {
  if (!c->buf) return 0;
  if (c->count == 0) return n <= c->cap;
  int wrapped = c->tail < c->head || c->tail == c->head;
  if (wrapped) return n <= c->head - c->tail;
  return n <= c->cap - c->tail || n <= c->head;
}

size_t changes_grow_wanted(const changes_t *c, const change_t *ch) {
  size_t n = changes_record_bytes(ch);
  if (c->cap >= c->bytes_max || changes_fits(c, n)) return 0;
  size_t cap = c->cap ? c->cap * 2 : CHANGES_BYTES_FIRST;
  while (cap < n && cap < c->bytes_max) cap *= 2;
  return cap < c->bytes_max ? cap : c->bytes_max;
}

int changes_grow(changes_t *c, size_t cap) {
  GRID_ASSERT(cap > c->cap && cap <= c->bytes_max && cap % CHANGES_ALIGN == 0);
  unsigned char *nb = malloc(cap);
  if (!nb) return -1;
  /* The records are copied oldest first from offset 0: no wrap mark. */
  size_t pos = c->head, at = 0;
  for (size_t i = 0; i < c->count; i++) {
    if (changes_len_at(c, pos) == CHANGES_WRAP) pos = 0;
    uint32_t len = changes_len_at(c, pos);
    memcpy(nb + at, c->buf + pos, len);
    at += len;
    pos = changes_skip(c, pos);
  }
  free(c->buf);
  c->buf = nb;
  c->cap = cap;
  c->gen++;
  c->head = 0;
  c->tail = at == cap ? 0 : at;
  c->used = at;
  return 0;
}

void changes_reset(changes_t *c, uint64_t counter) {
  c->head = c->tail = c->used = c->count = 0;
  c->base = c->last = counter;
  c->gen++;
}

static uint32_t changes_len_at(const changes_t *c, size_t pos) {
  uint32_t len;
  memcpy(&len, c->buf + pos, sizeof len);
  return len;
}

/* The offset of the record that follows the one (or the mark) at pos. */
static size_t changes_skip(const changes_t *c, size_t pos) {
  uint32_t len = changes_len_at(c, pos);
  if (len == CHANGES_WRAP) return 0;
  pos += len;
  return pos == c->cap ? 0 : pos;
}

static void changes_decode(const changes_t *c, size_t pos, change_t *ch) {
  const unsigned char *p = c->buf + pos;
  uint32_t key_len, value_len;
  ch->kind = (change_kind_t)(p[4] & 0x0f);
  ch->type = (uint8_t)(p[4] >> 4);
  ch->how = p[5];
  memcpy(&ch->counter, p + 6, 8);
  memcpy(&ch->version, p + 14, 8);
  memcpy(&ch->expire_at_ms, p + 22, 8);
  memcpy(&key_len, p + 30, 4);
  memcpy(&value_len, p + 34, 4);
  ch->key = p + CHANGES_HEADER_BYTES;
  ch->key_len = key_len;
  ch->value = p + CHANGES_HEADER_BYTES + key_len;
  ch->value_len = value_len;
}

/* Forgets the oldest record (a wrap mark at the head goes with it). */
static void changes_evict(changes_t *c) {
  GRID_ASSERT(c->count > 0);
  if (changes_len_at(c, c->head) == CHANGES_WRAP) {
    c->used -= c->cap - c->head;
    c->head = 0;
  }
  change_t ch;
  changes_decode(c, c->head, &ch);
  uint32_t len = changes_len_at(c, c->head);
  GRID_ASSERT(ch.counter > c->base);
  c->base = ch.counter;
  c->used -= len;
  c->head = changes_skip(c, c->head);
  if (--c->count == 0) {
    c->head = c->tail = c->used = 0;
    c->gen++;
  } else if (c->head != 0 && changes_len_at(c, c->head) == CHANGES_WRAP) {
    /* The mark after the evicted record goes too: the oldest is at 0. */
    c->used -= c->cap - c->head;
    c->head = 0;
  }
}

/* Where a record of n bytes goes: room is made by forgetting the oldest
 * records, and by leaving the end unused when it is too short. */
static size_t changes_make_room(changes_t *c, size_t n) {
  for (;;) {
    if (c->count == 0) {
      if (c->head || c->tail) c->gen++;
      c->head = c->tail = c->used = 0;
      return 0;
    }
    int wrapped = c->tail < c->head || (c->tail == c->head && c->count > 0);
    if (!wrapped) {
      if (n <= c->cap - c->tail) return c->tail;
      /* Too short: the end is marked and the record starts at 0. */
      uint32_t mark = CHANGES_WRAP;
      memcpy(c->buf + c->tail, &mark, sizeof mark);
      c->used += c->cap - c->tail;
      c->tail = 0;
      /* A hint made at the old tail points at this mark, which goes once
       * the head passes it: hints of before are not used. */
      c->gen++;
      continue;
    }
    if (n <= c->head - c->tail) return c->tail;
    changes_evict(c);
  }
}

void changes_append(changes_t *c, const change_t *ch) {
  GRID_ASSERT(ch->counter > c->last);
  size_t n = changes_record_bytes(ch);
  if (!c->buf || n > c->cap || ch->key_len > UINT32_MAX || ch->value_len > UINT32_MAX) {
    changes_reset(c, ch->counter); /* kept nowhere: readers before it get a GAP */
    return;
  }
  size_t pos = changes_make_room(c, n);
  unsigned char *p = c->buf + pos;
  uint32_t len = (uint32_t)n, key_len = (uint32_t)ch->key_len;
  uint32_t value_len = ch->kind == CHANGE_PUT ? (uint32_t)ch->value_len : 0;
  memcpy(p, &len, 4);
  p[4] = (unsigned char)(ch->kind | (ch->type & 0x0f) << 4);
  p[5] = ch->how;
  memcpy(p + 6, &ch->counter, 8);
  memcpy(p + 14, &ch->version, 8);
  memcpy(p + 22, &ch->expire_at_ms, 8);
  memcpy(p + 30, &key_len, 4);
  memcpy(p + 34, &value_len, 4);
  if (key_len) memcpy(p + CHANGES_HEADER_BYTES, ch->key, key_len);
  if (value_len) memcpy(p + CHANGES_HEADER_BYTES + key_len, ch->value, value_len);
  c->tail = pos + n == c->cap ? 0 : pos + n;
  c->used += n;
  c->count++;
  c->last = ch->counter;
  GRID_ASSERT(c->used <= c->cap);
}

int changes_read(const changes_t *c, uint64_t after, uint64_t upto, size_t max,
                 changes_cb cb, void *ctx, uint64_t *next) {
  return changes_read_hinted(c, after, upto, max, cb, ctx, next, NULL);
}

int changes_read_hinted(const changes_t *c, uint64_t after, uint64_t upto, size_t max,
                        changes_cb cb, void *ctx, uint64_t *next, changes_hint_t *hint) {
  *next = after;
  if (after < c->base) return CHANGES_GAP;
  if (after >= c->last || c->count == 0 || max == 0) return CHANGES_OK;
  /* Every record after `after` is held (after >= base): a hint made at
   * this position in this gen still points at the first of them, or at
   * where it will be written. */
  size_t pos = hint && hint->gen == c->gen && hint->counter == after ? hint->pos : c->head;
  size_t passed = 0;
  for (;;) {
    if (changes_len_at(c, pos) == CHANGES_WRAP) pos = 0;
    change_t ch;
    changes_decode(c, pos, &ch);
    if (ch.counter > upto) break;
    int stop = 0;
    if (ch.counter > after) {
      *next = ch.counter;
      passed++;
      stop = cb(ctx, &ch) != 0;
    }
    pos = changes_skip(c, pos);
    if (stop || ch.counter == c->last || passed == max) break;
  }
  /* A wrap mark goes once the head passes it: a hint points past it. (At
   * the tail nothing is written yet: a mark made there changes gen.) */
  if (pos != c->tail && changes_len_at(c, pos) == CHANGES_WRAP) pos = 0;
  if (hint) *hint = (changes_hint_t){c->gen, *next, pos};
  return CHANGES_OK;
}
