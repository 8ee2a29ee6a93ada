/*
 * store: the node's in-memory data: caches, each split into partitions, each
 * partition a hash table of entries guarded by its own lock. No lock is
 * shared by two partitions on the hot path; the cache registry is read-locked
 * only for the lookup of a cache by name.
 *
 * Entry versions are (epoch << 40) | partition update counter, so that a
 * version orders every write of a partition and is never 0.
 */
#ifndef GRID_STORE_H
#define GRID_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "changes.h"
#include "grid_types.h"

#define STORE_CACHE_NAME_MAX 64
#define STORE_VERSION_COUNTER_BITS 40

typedef struct store store_t;
typedef struct store_cache store_cache_t;

typedef struct store_limits {
  int64_t memory_bytes_max;
  int64_t key_bytes_max;
  int64_t value_bytes_max;
  int64_t caches_max;
  int64_t partitions_default;
  int64_t partitions_max;
  int64_t change_buffer_bytes; /* a partition's change history at most
                                  (0: none kept) */
  int64_t change_buffers_bytes_max; /* every history together (0: none) */
} store_limits_t;

typedef struct store_cache_cfg {
  char name[STORE_CACHE_NAME_MAX + 1];
  uint32_t partitions;
  uint32_t backups;
  int mode;                /* GRID_MODE_* */
  int sync;                /* GRID_SYNC_* */
  uint64_t default_ttl_ms;
  int read_from_backup;    /* 1 on, -1 off, 0 the mode's default (on for
                              replicated caches): store_reads_backup */
  int persistence;         /* 1: kept on disk too (the store's persist
                              hooks, set by the node that has a data_dir) */
  int fsync;               /* GRID_FSYNC_* */
  uint32_t fsync_every_ms; /* GRID_FSYNC_EVERY_MS's window */
  uint64_t id;             /* random, made with the cache (0: not known) */
} store_cache_cfg_t;

/* Whether an in-sync backup copy of the cache serves its node's reads. */
static inline int store_reads_backup(const store_cache_cfg_t *cfg) {
  return cfg->read_from_backup > 0 ||
         (cfg->read_from_backup == 0 && cfg->mode == GRID_MODE_REPLICATED);
}

/* A key with its placement worked out once. */
typedef struct store_key {
  const void *data;
  size_t len;
  uint64_t hash; /* XXH3 of the whole key, halves swapped: bucket choice */
  uint32_t part; /* partition, from the affinity part */
} store_key_t;

typedef enum {
  STORE_PUT,
  STORE_PUT_IF_ABSENT,
  STORE_REPLACE,
  STORE_CAS,
  STORE_DELETE,
  STORE_ADD,
  STORE_APPEND,       /* value appended to the entry's (a new one if none) */
  STORE_EXPIRE,       /* only the expiry changes: ttl (<= 0 deletes) or persist */
  STORE_REMOVE_EXPIRED, /* removes the entry if its time to live ran out
                           (GRID_ENOTFOUND if not): a change of its own,
                           CHANGE_EXPIRE in the history */
} store_op_t;

/* STORE_EXPIRE's conditions (EXPIRE ... NX|XX|GT|LT; no expiry counts as
 * never expiring: GT never holds for it, LT always does). */
enum { STORE_EXPIRE_NX = 1, STORE_EXPIRE_XX = 2, STORE_EXPIRE_GT = 4, STORE_EXPIRE_LT = 8 };

/* STORE_PUT's condition on the key (Redis SET NX / XX). */
enum { STORE_ANY = 0, STORE_IF_ABSENT = 1, STORE_IF_PRESENT = 2 };

/* Allocates room for a value copied out of the store; NULL on failure. It
 * is called with the partition locked and must not call into the store. */
typedef void *(*store_alloc_fn)(void *ctx, size_t n);

typedef struct store_write {
  store_op_t op;
  const void *value;
  size_t value_len;
  uint64_t ttl_ms;           /* 0: the cache's default TTL */
  uint64_t expected_version; /* STORE_CAS */
  int64_t delta;             /* STORE_ADD */
  int cond;                  /* STORE_PUT: STORE_ANY / _IF_ABSENT / _IF_PRESENT */
  int keep_ttl;              /* STORE_PUT, STORE_APPEND: keep the expiry */
  int64_t expire_ms;         /* STORE_EXPIRE: from now; <= 0 deletes */
  int persist;               /* STORE_EXPIRE: remove the expiry instead */
  int expire_absolute;       /* STORE_EXPIRE: expire_ms is a wall-clock
                                time, not a time from now */
  int expire_cond;           /* STORE_EXPIRE: STORE_EXPIRE_NX | _XX | _GT |
                                _LT (Redis 7's options); one that does not
                                hold changes nothing (number 0) */
  store_alloc_fn old_alloc;  /* if set, the previous value is copied out */
  void *old_ctx;
  uint8_t how;               /* kept with the change for whoever names it
                                (the request's op); 0: not known */
  uint8_t type;              /* STORE_PUT: the value's type
                                (grid_value_type_t); the string ops (ADD,
                                APPEND, a PUT or DELETE that copies the old
                                value out) refuse a key of another type:
                                GRID_EWRONGTYPE */
} store_write_t;

typedef struct store_result {
  uint64_t version; /* of the entry written */
  int64_t number;   /* STORE_ADD: the new value; STORE_APPEND: the new
                       length; STORE_EXPIRE: 1 changed, 0 not */
  void *old_value;  /* with old_alloc: the previous value, NULL if none */
  size_t old_len;
} store_result_t;

/* The state a write left behind, for its replication record: called by
 * store_write with the partition locked; the pointers are valid only
 * during the call. value is NULL for a delete (STORE_REMOVE_EXPIRED's
 * too). */
typedef void (*store_applied_fn)(void *ctx, const void *key, size_t key_len,
                                 const void *value, size_t value_len, uint8_t type,
                                 uint64_t version, int64_t expire_at_ms);

/* A partition's replication progress. applied: the update counter of the
 * last write applied here. committed: every write up to it is on every
 * in-sync copy, so a reader may see it (shared/DESIGN.md section 5). Both
 * are written by the loop that owns the partition and read by any loop. */
typedef struct store_part_sync {
  _Atomic uint64_t applied;
  _Atomic uint64_t committed;
  _Atomic int led;          /* this node leads the partition (repl sets it
                               with each map): its sweep leaves followed
                               caches' expired keys to repl_expire.c */
  _Atomic int backup_in_sync; /* this node holds an OWNING backup copy of it
                               (repl sets it with each map): with
                               read_from_backup, its committed values are
                               read here (store_get_committed) */
  void *repl;               /* the owning loop's state for the partition */
} store_part_sync_t;

#define STORE_COUNTER_MASK ((UINT64_C(1) << STORE_VERSION_COUNTER_BITS) - 1)
/* A copy of a followed cache's partition led elsewhere removes an expired
 * key itself this long after it expired (its primary removes it first,
 * with a record, unless it keeps no changes for the cache). */
#define STORE_BACKUP_EXPIRE_GRACE_MS 10000


/* Creates the store with a "default" cache. Returns NULL when out of memory.
 * store_free() frees every cache; every reference taken with
 * store_cache_acquire() must have been released before (the node stops its
 * loops first). */
store_t *store_new(const store_limits_t *limits);
void store_free(store_t *s);

/* 0, GRID_EINVAL (bad name or settings), GRID_ECACHEEXISTS, GRID_ELIMIT
 * (caches_max), GRID_EMEMLIMIT. cfg->partitions 0 takes the default. */
int store_cache_create(store_t *s, const store_cache_cfg_t *cfg);
/* 0 or GRID_ENOCACHE. Memory is freed when the last reference goes. */
int store_cache_drop(store_t *s, const char *name);
/* A counted reference, or NULL when there is no such cache. */
store_cache_t *store_cache_acquire(store_t *s, const char *name, size_t name_len);
void store_cache_release(store_t *s, store_cache_t *c);
/* One more reference to a cache the caller already holds one to. */
void store_cache_hold(store_cache_t *c);
const store_cache_cfg_t *store_cache_cfg(const store_cache_t *c);
/* Copies up to max cache configs into out; returns how many caches exist. */
size_t store_cache_list(store_t *s, store_cache_cfg_t *out, size_t max);

/*
 * A thread's view of the cache registry, so that finding a cache by name on
 * the hot path takes no lock and writes no shared memory: the view holds a
 * reference to every cache and checks one atomic generation number, which
 * changes when a cache is created or dropped; only then does it take the
 * registry lock to catch up. A view is used by one thread at a time. Caches
 * found through it stay valid until that thread's next store_view_find.
 */
typedef struct store_view {
  store_t *store;
  uint64_t gen;              /* registry generation the view reflects */
  size_t n;
  store_cache_t **caches;    /* caches_max counted references */
  uint32_t *index;           /* open addressing by name hash: caches[i-1],
                                0 is empty (thousands of caches cost a
                                lookup what one does) */
  size_t index_mask;
  _Atomic uint64_t ops;      /* requests served through this view */
} store_view_t;

int store_view_init(store_view_t *v, store_t *s);
/* Releases the view's references. */
void store_view_close(store_view_t *v);
/* The cache of that name, or NULL. No reference is taken for the caller. */
store_cache_t *store_view_find(store_view_t *v, const char *name, size_t len);
/* Catches up with created and dropped caches now (so that a dropped
 * cache's memory is given back even by a view that is not used). */
void store_view_refresh(store_view_t *v);

void store_key_init(const store_cache_t *c, const void *key, size_t len,
                    store_key_t *k);
/* GRID_EKEYTOOBIG / GRID_EVALTOOBIG / 0 */
int store_check_sizes(const store_t *s, size_t key_len, size_t value_len);

/* now_ms for store_get: read the clock only if the entry can expire. */
#define STORE_NOW_LAZY INT64_MIN

/* 0 with *value (from alloc), *value_len, *version; GRID_ENOTFOUND;
 * GRID_EWRONGTYPE for a key that holds no string; GRID_ENOMEM when alloc
 * fails. now_ms may be STORE_NOW_LAZY. */
int store_get(store_cache_t *c, const store_key_t *k, int64_t now_ms,
              store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
              uint64_t *version);
/* store_get of a value of any type, which goes in *type. */
int store_get_typed(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                    store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
                    uint64_t *version, uint8_t *type);
/* store_get in a cluster, outside the partition's loop (an embedded
 * node's application): as store_get where this node leads the partition
 * (or holds an in-sync backup copy of a read_from_backup cache) and what
 * the read sees is committed (every write applied to the partition, or
 * the key's own entry), else GRID_ENOTREADY (the read goes through the
 * owner loop, which holds it until then). */
int store_get_committed(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                        store_alloc_fn alloc, void *ctx, void **value, size_t *value_len,
                        uint64_t *version);
/* A backup copy hears its primary's committed counter (with a record, or
 * alone): committed rises to it, never past what this copy applied. */
void store_part_committed_to(store_cache_t *c, uint32_t part, uint64_t committed);
/* Remaining time to live of k: 0 with *expire_at_ms (0: none) and, where
 * not NULL, *version and *type; or GRID_ENOTFOUND. */
int store_expiry(store_cache_t *c, const store_key_t *k, int64_t now_ms,
                 int64_t *expire_at_ms, uint64_t *version, uint8_t *type);
/* Applies one write. 0, or GRID_EEXIST, GRID_ENOTFOUND, GRID_EVERSION,
 * GRID_ENOTNUM, GRID_EOVERFLOW, GRID_EMEMLIMIT, GRID_ENOMEM. */
int store_write(store_cache_t *c, const store_key_t *k, const store_write_t *w,
                int64_t now_ms, store_result_t *res);
/* store_write, and on success applied(ctx, ...) with the result, under the
 * same lock (so records are made in the partition's order). */
int store_write_rec(store_cache_t *c, const store_key_t *k, const store_write_t *w,
                    int64_t now_ms, store_result_t *res, store_applied_fn applied,
                    void *ctx);
/* Several steps as one (a Redis transaction): the calling thread holds
 * the partitions named (each locked, in one order every hold uses) until
 * store_release; the store's calls on them from this thread run inside
 * the hold, so no other thread sees part of what it did. One hold per
 * thread at a time: inside one, store_hold of partitions it holds returns
 * a hold whose release does nothing, and of others NULL. No cache
 * registry call (store_cache_acquire, a view's refresh) while holding.
 * NULL when out of memory. */
typedef struct store_hold store_hold_t;
store_hold_t *store_hold(store_cache_t *c, const uint32_t *parts, size_t n);
void store_release(store_hold_t *h);

/* One step of store_write_batch. */
typedef enum {
  STORE_BATCH_PUT = 1,        /* key := value (ttl_ms: 0 the cache's default) */
  STORE_BATCH_DELETE = 2,     /* key removed (nothing when it is absent) */
  STORE_BATCH_CHECK = 3,      /* the condition alone */
} store_batch_kind_t;

enum {
  STORE_COND_ANY = 0,
  STORE_COND_ABSENT = 1,      /* GRID_EEXIST when the key is live */
  STORE_COND_PRESENT = 2,     /* GRID_ENOTFOUND when it is not */
  STORE_COND_VERSION = 3,     /* GRID_EVERSION unless its version is
                                 version (GRID_ENOTFOUND: absent) */
};

typedef struct store_batch_op {
  int kind;                   /* store_batch_kind_t */
  store_key_t key;
  const void *value;
  size_t value_len;
  uint64_t ttl_ms;
  int cond;
  uint64_t version;           /* STORE_COND_VERSION */
  uint8_t type;               /* STORE_BATCH_PUT: the value's type */
  uint64_t version_out;       /* out: the entry's version written (a
                                 delete: the removal's), or checked (0:
                                 absent) */
  int existed;                /* out: the key was live before the batch */
} store_batch_op_t;

/* A batch of one partition's writes, all or none, under its lock: every
 * condition is checked against the entries as they were before the batch,
 * and the memory of every put reserved, before anything changes; then each
 * write takes the next update counter (applied(ctx, ...) for each, in
 * order, as store_write_rec). No reader (of the partition, of its change
 * history) sees part of it. 0; a condition's error with *failed its op's
 * index (nothing written); GRID_EINVAL with *failed an op of another
 * partition than op 0's, of an unknown kind or condition, or naming a key
 * an earlier op names; GRID_EMEMLIMIT, GRID_ENOMEM (nothing written). */
int store_write_batch(store_cache_t *c, store_batch_op_t *ops, size_t n, int64_t now_ms,
                      uint8_t how, size_t *failed, store_applied_fn applied, void *ctx);
/* A backup applies its primary's record as it is: the value (NULL: the key
 * is deleted), version and expiry. The partition's counter follows the
 * record's. 0, GRID_EMEMLIMIT or GRID_ENOMEM. */
int store_apply(store_cache_t *c, const store_key_t *k, const void *value,
                size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms);
/* store_apply for a replication record (not a fill's entry): the change
 * is kept in the partition's history, with how (the primary's op). */
int store_apply_change(store_cache_t *c, const store_key_t *k, const void *value,
                       size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms,
                       uint8_t how, int expired);
/* One record of a primary's batch, as a backup applies it. */
typedef struct store_record {
  store_key_t key;
  const void *value;          /* NULL: the key was removed */
  size_t value_len;
  uint8_t type;
  uint64_t version;
  int64_t expire_at_ms;
} store_record_t;

/* A primary's batch record: every entry applied under one lock (so no
 * reader sees part of it), each kept in the history with how. 0, or the
 * error of record *applied (the ones before it are applied: the primary
 * hears of the failure and has this copy filled again); GRID_EINVAL for
 * records of two partitions. */
int store_apply_batch(store_cache_t *c, const store_record_t *recs, size_t n, uint8_t how,
                      size_t *applied);
/* Empties one partition (a copy about to be filled anew); its change
 * history starts again after version's counter (the primary's last change
 * when the fill began: every record after it follows on the same link). */
void store_part_reset(store_cache_t *c, uint32_t part, uint64_t version);
/* The version of the partition's newest change (its counter alone when
 * that is not known). */
uint64_t store_part_last_version(store_cache_t *c, uint32_t part);
store_part_sync_t *store_part_sync(store_cache_t *c, uint32_t part);
/* ---- persistence: a persistent cache's changes reach its disk -----------
 *
 * The node that has a data_dir sets these (node.c, over disk.h): a cache
 * made with cfg.persistence gets its disk from open, which loads what the
 * disk holds into it (store_apply, store_part_restore) before anyone sees
 * it. Every change of the cache then goes to its disk first, with the
 * partition locked (so in counter order): a local write's, a backup's
 * record, a fill's entry, an expired key's removal; a write the disk
 * refuses changes nothing (GRID_EDISK). Without a data_dir, a persistent
 * cache is refused (GRID_EINVAL). */
enum { STORE_PART_KEEP = 0, STORE_PART_WHOLE = 1, STORE_PART_FILLING = 2,
       STORE_PART_SYNC = 0x10 /* with a state: synced whatever the policy */ };
typedef struct store_persist {
  void *ctx;
  /* The disk of new cache c, loaded into it; NULL (logged) when it cannot
   * be had. */
  void *(*open)(void *ctx, store_cache_t *c);
  /* One change of partition part (value NULL: removed), gathered by the
   * calling thread until commit writes what it gathered as one, with the
   * partition's last version (0: as it was) and state (STORE_PART_*).
   * commit: 0, or an error with nothing written. */
  void (*add)(void *disk, uint32_t part, const void *key, size_t key_len, const void *value,
              size_t value_len, uint8_t type, uint64_t version, int64_t expire_at_ms);
  int (*commit)(void *disk, uint32_t part, uint64_t last_version, int state);
  /* Empties the partition on disk, STORE_PART_FILLING at version. */
  void (*reset)(void *disk, uint32_t part, uint64_t version);
  /* The partition's last version and state as the disk keeps them. */
  void (*state)(void *disk, uint32_t part, uint64_t *version, int *state);
  void (*drop)(void *disk);  /* the cache was dropped */
  void (*free)(void *disk);  /* its last reference went */
} store_persist_t;
void store_set_persist(store_t *s, const store_persist_t *p);
/* Where a loaded partition goes on: its counter (and history) after
 * version's. */
void store_part_restore(store_cache_t *c, uint32_t part, uint64_t version, int whole);
/* A fill of part is complete here: its disk copy is whole (synced), the
 * base of a later delta. 0, or the disk's error (the fill is not). */
int store_part_filled(store_cache_t *c, uint32_t part);
/* A fill of part begins here (by delta): until it is complete the copy
 * on disk is not one. */
int store_part_mark_filling(store_cache_t *c, uint32_t part);
/* What this copy of part holds for a fill by delta: the version up to
 * which it has every change (loaded whole from disk, or its last fill's),
 * and whether it has such a base (0 and 0 without a disk). */
void store_part_disk_state(store_cache_t *c, uint32_t part, uint64_t *version, int *whole);
/* A primary's answer to a copy holding `version` (whole: a complete one):
 * STORE_DELTA_NONE it has every change, STORE_DELTA_OK the changes after it
 * are in the history (store_changes_since), STORE_DELTA_NO a whole copy is
 * needed (too old, or a tail this copy never had). */
enum { STORE_DELTA_NO = 0, STORE_DELTA_NONE = 1, STORE_DELTA_OK = 2 };
int store_delta_from(store_cache_t *c, uint32_t part, uint64_t version, int whole);
/* A partition's changes after `after`, up to what it applied (*upto), at
 * most max, for a fill by delta (cb must not call the store). CHANGES_GAP
 * when they are no longer held. */
int store_changes_since(store_cache_t *c, uint32_t part, uint64_t after, size_t max,
                        changes_cb cb, void *ctx, uint64_t *next, uint64_t *upto);
/* The cache's disk (NULL: memory only). */
void *store_cache_disk(const store_cache_t *c);

/* Frees a partition's sync.repl when its cache is freed. */
void store_set_repl_free(store_t *s, void (*fn)(void *repl));
/* The epoch put in the versions of new writes (the partition map's). */
void store_set_epoch(store_t *s, uint64_t epoch);

/* Called for each live entry by store_scan, with the partition locked. The
 * pointers are valid only during the call. Nonzero stops the scan. */
typedef int (*store_entry_cb)(void *ctx, const void *key, size_t key_len,
                              const void *value, size_t value_len,
                              uint64_t version);
/* Visits whole buckets from *cursor until at least count entries were seen;
 * *cursor becomes the next cursor, 0 when the partition is done. Every entry
 * present for the whole scan is visited at least once even if the partition
 * grows in between (reverse-binary cursor, as Redis's dictScan). */
int store_scan(store_cache_t *c, uint32_t part, uint64_t *cursor,
               uint32_t count, int64_t now_ms, store_entry_cb cb, void *ctx);

/* Every live entry of partition part, under its lock (cb must not call
 * the store; nonzero stops), as store_get_committed reads: where this node
 * leads the partition (or holds a readable in-sync backup copy) and every
 * write applied to it is committed; else GRID_ENOTREADY. */
int store_scan_committed(store_cache_t *c, uint32_t part, int64_t now_ms, store_entry_cb cb,
                         void *ctx);

/* store_scan with each entry's expiry (for filling another copy). */
typedef int (*store_entry_full_cb)(void *ctx, const void *key, size_t key_len,
                                   const void *value, size_t value_len, uint8_t type,
                                   uint64_t version, int64_t expire_at_ms);
int store_scan_full(store_cache_t *c, uint32_t part, uint64_t *cursor,
                    uint32_t count, int64_t now_ms, store_entry_full_cb cb,
                    void *ctx);

uint64_t store_cache_size(const store_cache_t *c);
/* Entries of the cache with an expiry (Redis INFO's expires=). */
uint64_t store_cache_expiring(const store_cache_t *c);
/* Entries of one partition (0 for a partition out of range). */
uint64_t store_part_size(const store_cache_t *c, uint32_t part);
/* The memory of the cache's entries (of one partition): key, value and
 * per-entry overhead, as memory_bytes_max counts them (bucket arrays and
 * change histories not included). Read without locks. */
uint64_t store_cache_bytes(const store_cache_t *c);
uint64_t store_part_bytes(const store_cache_t *c, uint32_t part);
uint64_t store_entries(store_t *s);
int64_t store_memory_bytes(const store_t *s);
int64_t store_memory_bytes_max(const store_t *s);
size_t store_cache_count(store_t *s);

/* ---- change history: what change streams read ---------------------------
 *
 * Each partition keeps its recent changes (changes.h) in counter order, at
 * most change_buffer_bytes, all of them at most change_buffers_bytes_max,
 * charged to memory_bytes_max too (a ring refused memory keeps what it
 * holds, or nothing: its readers get a GAP; data is never refused for a
 * history's sake beyond that share). Every copy keeps them: a
 * primary its writes, a backup its primary's records, so a promoted backup
 * goes on where the old primary stopped. Only caches followed keep them
 * (store_keep_history: the first watcher, or a primary's record that says
 * its cache is followed).
 *
 * A change may be announced once it cannot be taken back: in a cluster
 * once it is committed (store_part_commit), on a single node once applied.
 * Watchers (one per event loop that serves subscriptions of the cache, or
 * an embedded subscription) hear of it: a bit per partition is set, and
 * their wake runs once until they take the bits. */
typedef struct store_watch store_watch_t;
struct store_watch {
  store_watch_t *next;             /* the cache's watchers (the store's) */
  _Atomic uint64_t *dirty;         /* a bit per partition: changes to read */
  size_t words;
  _Atomic int woken;               /* wake ran, the bits not yet taken */
  /* Runs on the announcing thread, the cache's watch lock held: it may
   * only hand off (post a task, signal a condition). */
  void (*wake)(store_watch_t *w);
};

/* A cache's changes are kept from the first watcher on (or from a record
 * of a primary that keeps them): a cache nobody follows costs nothing. */
void store_keep_history(store_cache_t *c);
int store_history_kept(const store_cache_t *c);
/* Where a subscription "from now" starts in p: what may be announced, or
 * the start of p's history when that is later (writes in flight when the
 * history began are not in it: the caller waits for them to commit). */
uint64_t store_part_now(store_cache_t *c, uint32_t part);

/* Announcing on apply (a single node) or on commit (a cluster's
 * replication calls store_part_commit). Set before writes run. */
void store_set_announce_applied(store_t *s, int on);
/* 0 or GRID_ENOMEM. w->wake set by the caller. */
int store_watch_add(store_cache_t *c, store_watch_t *w);
/* After it returns, w's wake does not run again. */
void store_watch_remove(store_cache_t *c, store_watch_t *w);
/* Clears w's woken flag, then calls fn(ctx, p) for each partition marked
 * since the last take. */
void store_watch_take(store_watch_t *w, void (*fn)(void *ctx, uint32_t p), void *ctx);
/* Marks p for w alone and wakes it (a reader that stopped early goes on
 * later). */
void store_watch_poke(store_watch_t *w, uint32_t p);
/* Whether the cache has watchers (cheap: one atomic load). */
int store_watched(const store_cache_t *c);
/* committed moved on for p (cluster mode, the partition's owner loop):
 * publishes it and tells the watchers. */
void store_part_commit(store_cache_t *c, uint32_t part, uint64_t committed);
/* The counter up to which p's changes may be announced. */
uint64_t store_part_announced(store_cache_t *c, uint32_t part);
/* Reads p's history after `after`, up to what may be announced, at most
 * max changes, the partition locked during the call (cb must not call the
 * store). CHANGES_GAP when changes after `after` are gone (*next is then
 * the oldest position still held, or the announced one when nothing is),
 * or when `after` is past what this copy ever applied (a position from a
 * history this copy does not share: changes lost with an old primary, a
 * cache made again). *upto receives the announced counter. hint (may be
 * NULL) is the reader's, as changes_read_hinted keeps it. */
int store_changes_read(store_cache_t *c, uint32_t part, uint64_t after, size_t max,
                       changes_cb cb, void *ctx, uint64_t *next, uint64_t *upto,
                       changes_hint_t *hint);
/* A continuous query's first step: every live entry of p whose last
 * change is at or before what may be announced (*upto), under the
 * partition's lock (cb must not call the store). An entry changed later
 * is left out: its change follows in the history after *upto. */
void store_snapshot(store_cache_t *c, uint32_t part, int64_t now_ms, store_entry_full_cb cb,
                    void *ctx, uint64_t *upto);
/* Memory held by change histories (within store_memory_bytes). */
int64_t store_changes_bytes(const store_t *s);

/* Looks at up to budget entries, continuing where the last call stopped,
 * and removes the expired ones. Returns how many it removed. Caches whose
 * changes are kept: on a single node each removal is a change of its own
 * (CHANGE_EXPIRE, announced); in a cluster they are left to their
 * primaries (store_expired_keys, then STORE_REMOVE_EXPIRED through
 * replication), so that every copy's history says the same. */
size_t store_sweep(store_t *s, int64_t now_ms, size_t budget);

/* The keys of p whose time to live ran out, from *cursor (0 starts; 0
 * again when p is done), passed to cb with p locked (cb must not call the
 * store). Looks at whole buckets until budget entries were seen; returns
 * how many it looked at. */
typedef void (*store_key_cb)(void *ctx, const void *key, size_t key_len);
size_t store_expired_keys(store_cache_t *c, uint32_t part, int64_t now_ms, uint64_t *cursor,
                          size_t budget, store_key_cb cb, void *ctx);

#endif
