/*
 * disk: the node's RocksDB, the boundary to it (as zk.c is ZooKeeper's):
 * persistent caches' entries, their definitions, each partition's last
 * change, and the data directory's identity. RocksDB's errors become words
 * and GRID_EDISK here.
 *
 * Layout (docs/decisions.md, "Persistence"): one RocksDB per node, in
 * data_dir. Its default column family holds the meta keys: "grid.format",
 * "grid.cluster", "grid.disk_id", a cache's definition under "c/<name>",
 * and each partition's last change under "p/<name>" 0x00 <partition, 4
 * bytes big-endian> (its version, and whether the copy is whole or was
 * being filled). Each cache has a column family of its own, "cache.<name>"
 * (a drop is one DropColumnFamily), whose keys are <partition, 4 bytes
 * big-endian><key> (a partition is one key range: a reset is one
 * DeleteRange) and whose values are <type, 1><version, 8><expiry, 8><value>.
 *
 * Writes are made with the partition locked (so a partition's changes
 * reach RocksDB in counter order) and are not synced there: WAL writes go
 * to the OS at once (a process crash loses nothing), and what must be on
 * disk before a reply leaves is synced by disk_settle, by the thread that
 * is about to send it, once for everything written before it (a group
 * commit: RocksDB's FlushWAL(sync)). fsync = every_ms caches are synced by
 * the disk's own thread at least that often.
 */
#ifndef GRID_DISK_H
#define GRID_DISK_H

#include <stddef.h>
#include <stdint.h>

#define DISK_FORMAT 1  /* the layout above; a newer one is refused */
#define DISK_DB_DIR "db"               /* data_dir/db: the RocksDB */
#define DISK_SNAPSHOTS_DIR "snapshots" /* data_dir/snapshots/NAME: checkpoints */
#define DISK_SNAPSHOT_NAME_MAX 64

typedef struct disk disk_t;
typedef struct disk_cache disk_cache_t;

/* What a partition's copy on disk is. */
enum {
  DISK_PART_NONE = 0,     /* nothing written for it */
  DISK_PART_WHOLE = 1,    /* every change up to its version */
  DISK_PART_FILLING = 2,  /* a fill began and did not finish: not a copy */
  DISK_PART_SYNC = 0x10,  /* disk_commit's state with it: synced before the
                             replies telling of it, whatever the policy */
};

/* Opens (making it when empty) the data directory dir of a node of
 * `cluster` ("" for a single node). A directory of another cluster, of a
 * newer format, or damaged is refused with words in err. Writes that would
 * leave less than free_min bytes free are refused (GRID_EDISK), before
 * RocksDB meets a full disk. 0 or GRID_EDISK / GRID_ECONFIG. */
int disk_open(const char *data_dir, const char *cluster, int64_t free_min, disk_t **out,
              char *err, size_t err_len);
/* Writes the memtables to files (a clean stop: the next start reads them
 * instead of replaying the log). */
void disk_flush(disk_t *d);
/* Syncs what was written and closes. */
void disk_close(disk_t *d);
/* The data directory's identity: random, made with it. */
uint64_t disk_id(const disk_t *d);
const char *disk_dir(const disk_t *d);

/* A cache's column family, made when new; its definition (def, opaque
 * bytes) is kept with it. fsync: GRID_FSYNC_*. NULL with words in err. */
disk_cache_t *disk_cache_open(disk_t *d, const char *name, uint32_t partitions, const void *def,
                              size_t def_len, int fsync, uint32_t every_ms, char *err,
                              size_t err_len);
/* Calls cb for each cache definition kept (those opened and not dropped). */
int disk_cache_defs(disk_t *d, void (*cb)(void *ctx, const char *name, const void *def,
                                          size_t len),
                    void *ctx);
/* The definition kept for cache name (*def malloc'd): 0, GRID_ENOTFOUND
 * or GRID_EDISK. */
int disk_cache_def(disk_t *d, const char *name, void **def, size_t *len);
/* Forgets the cache: its column family, definition and partitions. The
 * handle stays valid (writes to it are dropped) until disk_cache_free. */
void disk_cache_drop(disk_cache_t *dc);
void disk_cache_free(disk_cache_t *dc);

/* A partition's changes, added one by one (value NULL: the key is
 * removed) and written together by disk_commit, which also keeps the
 * partition's last version and state (state 0: as it is). Called with the
 * partition locked; the calling thread's own batch. 0, or GRID_EDISK
 * (nothing written). */
void disk_add(disk_cache_t *dc, uint32_t part, const void *key, size_t key_len,
              const void *value, size_t value_len, uint8_t type, uint64_t version,
              int64_t expire_at_ms);
int disk_commit(disk_cache_t *dc, uint32_t part, uint64_t last_version, int state);
/* Forgets what this thread added and did not commit. */
void disk_discard(void);
/* Empties partition part on disk (a copy about to be filled, from the
 * primary's change at version): it is DISK_PART_FILLING until a commit
 * says otherwise. */
int disk_part_reset(disk_cache_t *dc, uint32_t part, uint64_t version);
/* The partition's last version and state as kept. */
void disk_part_state(disk_cache_t *dc, uint32_t part, uint64_t *version, int *state);

/* Whether this thread wrote changes whose replies must wait: until the OS
 * has them (RocksDB's log is flushed by hand, once for many writes), and
 * for an fsync = always cache until they are synced; disk_settle does it
 * (for whatever else was written before too: one call serves every thread
 * waiting). A flush or sync that fails stops the process: replies it was
 * to cover must not leave. */
int disk_pending(void);
void disk_settle(void);

/* Every entry of the cache on disk, partition by partition: cb (nonzero
 * stops). 0, or GRID_EDISK with words in err (a damaged file). */
typedef int (*disk_entry_cb)(void *ctx, uint32_t part, const void *key, size_t key_len,
                             const void *value, size_t value_len, uint8_t type,
                             uint64_t version, int64_t expire_at_ms);
int disk_cache_load(disk_cache_t *dc, disk_entry_cb cb, void *ctx, char *err, size_t err_len);

/* A consistent point-in-time copy of the node's data (a RocksDB
 * checkpoint: table files hard-linked) in data_dir/snapshots/name. 0,
 * GRID_EINVAL (a bad name), GRID_EEXIST, or GRID_EDISK, with words. */
int disk_snapshot(disk_t *d, const char *name, char *err, size_t err_len);
/* Before a node opens data_dir: checks snapshot `name` whole (every entry
 * read, its checksums checked), then makes it the data (the data it
 * replaces is moved aside, not deleted). Nothing changes when the check
 * fails. 0, or an error with words. */
int disk_restore(const char *data_dir, const char *name, char *err, size_t err_len);

/* Bytes written to RocksDB since the start (entries and meta). */
uint64_t disk_bytes_written(const disk_t *d);

#endif
