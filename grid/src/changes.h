/*
 * changes: a partition's recent changes, in update-counter order, in a
 * bounded byte ring: what change streams (issue 9, shared/DESIGN.md
 * section 5) are to resume from. Pure data: no lock, no loop, no store; its
 * owner (to be the store, under the partition's lock: nothing appends to
 * it yet) appends each change as it applies it, and readers ask for what
 * came after a counter.
 *
 * A reader whose position is older than what the ring still holds is told
 * so (CHANGES_GAP): history is never skipped silently. The ring forgets
 * its oldest changes to make room, and forgets everything at a reset (a
 * copy filled from a snapshot, a partition emptied), after which it knows
 * only what comes after the reset's counter.
 *
 *   ring   [ base | c=41 | c=42 | c=43 | ... free ... ]
 *            ^ a reader at 40 reads 41..; a reader at 39 gets a GAP
 *
 * Records never wrap: one that does not fit before the end starts at the
 * beginning, and the end's unused bytes are marked so readers skip them.
 */
#ifndef GRID_CHANGES_H
#define GRID_CHANGES_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  CHANGE_PUT = 1,
  CHANGE_DELETE = 2,
  CHANGE_EXPIRE = 3,
} change_kind_t;

/* One change, as appended and as read (key and value point into the ring
 * while read: valid during the callback only). */
typedef struct change {
  change_kind_t kind;
  uint8_t type;              /* PUT: the value's type (grid_value_type_t) */
  uint8_t how;               /* what made it, for those who name it: the
                                request's op (CHANGE_HOW_OP; 0: not known),
                                and CHANGE_HOW_NEW */
  uint64_t counter;          /* the partition's update counter */
  uint64_t version;          /* the entry's version after the change */
  int64_t expire_at_ms;      /* PUT: wall-clock expiry, 0: none */
  const void *key;
  size_t key_len;
  const void *value;         /* PUT only */
  size_t value_len;
} change_t;

#define CHANGE_HOW_OP 0x7f   /* how's op */
#define CHANGE_HOW_NEW 0x80  /* a put that made the key (it was absent), as
                                its primary saw it: Redis's "new" event */

typedef struct changes {
  unsigned char *buf;        /* cap bytes, taken at the first append */
  size_t cap;                /* the ring's size now: it grows (changes_grow)
                                up to bytes_max */
  size_t bytes_max;          /* 0: the ring keeps nothing (every read after
                                an append is a GAP) */
  size_t head, tail;         /* oldest record's offset, end of the newest */
  size_t used;               /* bytes held, marks included */
  size_t count;              /* records held */
  uint64_t base;             /* the counter just before the oldest record
                                held: positions below it are gone */
  uint64_t last;             /* the newest record's counter (base if none) */
  uint64_t gen;              /* changes when records move (grow, reset,
                                emptied): a read hint of another gen is
                                not used */
} changes_t;

/* Where a reader stopped, so that its next read starts there instead of
 * walking the ring from its oldest record. */
typedef struct changes_hint {
  uint64_t gen;
  uint64_t counter;          /* the position it was made at */
  size_t pos;                /* the offset of the record after it */
} changes_hint_t;

enum {
  CHANGES_OK = 0,
  CHANGES_GAP = 1,           /* changes after `after` are no longer held */
};

void changes_init(changes_t *c, size_t bytes_max, uint64_t counter);
void changes_free(changes_t *c);
/* History restarts after counter: the ring forgets what it holds, and a
 * reader at an earlier position gets a GAP. */
void changes_reset(changes_t *c, uint64_t counter);
/* The ring's first size: it starts small and doubles as it fills, so a
 * partition written rarely costs little. */
#define CHANGES_BYTES_FIRST 4096
/* The size the ring would grow to before keeping ch, or 0 when it has room
 * or is as large as it may be (then the oldest changes go instead). */
size_t changes_grow_wanted(const changes_t *c, const change_t *ch);
/* Grows the ring to cap bytes (its changes kept). 0, or -1 when out of
 * memory (nothing changed). */
int changes_grow(changes_t *c, size_t cap);
/* Appends ch (ch->counter > the newest held), forgetting the oldest
 * changes to make room. A change larger than the whole ring, or one the
 * ring has no memory for, cannot be kept: the ring resets at its counter
 * (readers before it get a GAP); the write itself stands either way. */
void changes_append(changes_t *c, const change_t *ch);
/* Calls cb for each change with after < counter <= upto, oldest first, at
 * most max of them, stopping early when cb returns nonzero. *next is the
 * counter of the last change passed (after when none). CHANGES_GAP when
 * after is older than what the ring holds (nothing is passed). */
typedef int (*changes_cb)(void *ctx, const change_t *ch);
int changes_read(const changes_t *c, uint64_t after, uint64_t upto, size_t max,
                 changes_cb cb, void *ctx, uint64_t *next);
/* changes_read, starting where hint says when it is still good (made by
 * the last read at position `after` of this ring), and leaving in it
 * where this read stopped. hint may be NULL. */
int changes_read_hinted(const changes_t *c, uint64_t after, uint64_t upto, size_t max,
                        changes_cb cb, void *ctx, uint64_t *next, changes_hint_t *hint);

#endif
