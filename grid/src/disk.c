#include "disk.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "grid_types.h"
#include "log.h"

#define DISK_VALUE_HEADER 17      /* type, version, expiry */
#define DISK_META_PART_BYTES 9    /* version, state */
#define DISK_IDLE_SYNC_MS 1000    /* the disk thread's period with no
                                     every_ms cache */
#define DISK_SPACE_CHECK_BYTES (1u << 20) /* free space is looked at again
                                     after this much was written */
#define DISK_SPACE_RECHECK_MS 100 /* ... and by a refused write, at most
                                     this often */

struct disk {
  rocksdb_t *db;
  rocksdb_options_t *opts;
  rocksdb_writeoptions_t *wopts;
  rocksdb_readoptions_t *ropts;
  char dir[1024];
  uint64_t id;
  pthread_mutex_t lock;           /* the caches list, every_ms_min */
  disk_cache_t *caches;
  /* The column families found at open, until a cache takes its own. */
  size_t nfound;
  char **found_names;
  rocksdb_column_family_handle_t **found;
  uint32_t every_ms_min;          /* 0: no every_ms cache */
  /* The group commit: writes counted as they return from RocksDB (in its
   * log buffer: manual_wal_flush), handed to the OS (flushed) and synced
   * as a FlushWAL covers them. */
  _Atomic uint64_t written;
  _Atomic uint64_t flushed;
  _Atomic uint64_t synced;
  _Atomic uint64_t bytes;
  /* Writes go in one at a time: RocksDB's write path is one queue anyway
   * (its leader would merge our threads' batches, reading memory of
   * another thread under RocksDB's own ordering, which ThreadSanitizer
   * cannot see in the library's uninstrumented build). */
  pthread_spinlock_t write_lock; /* held for a memtable append: a spin,
                                    not a sleep and a wake, on 2 loops */
  pthread_mutex_t sync_lock;
  /* Free space (disk_free_bytes_min): as last looked at, and the bytes
   * written then; a write that would go below the minimum is refused. */
  int64_t free_min;
  _Atomic int64_t free_bytes;
  _Atomic uint64_t bytes_at_check;
  _Atomic int64_t checked_ms;
  _Atomic int low;            /* below the minimum (logged once a time) */
  _Atomic int broken;         /* RocksDB refused a write: it takes no more
                                 (a restart with room recovers) */
  /* The disk thread (every_ms caches). */
  pthread_t thread;
  pthread_cond_t cond;
  int stopping;
};

/* A partition's meta as last read or written (read once, then kept:
 * every write of it is under its partition's lock). */
typedef struct disk_part {
  uint64_t version;
  uint8_t state;
  uint8_t known;
} disk_part_t;

struct disk_cache {
  disk_cache_t *next;
  disk_t *disk;
  rocksdb_column_family_handle_t *cf;
  char name[80];
  int fsync;
  uint32_t every_ms;
  _Atomic int dropped;
  uint32_t partitions;
  disk_part_t *parts;
};

/* ---- this thread's batch and what it left unsynced ---------------------- */

static pthread_key_t disk_batch_key;
static pthread_once_t disk_batch_once = PTHREAD_ONCE_INIT;
static _Thread_local rocksdb_writebatch_t *disk_batch;
static _Thread_local disk_t *disk_unsynced;   /* the disk of pending writes */
static _Thread_local uint64_t disk_unsynced_at; /* written count to cover */
static _Thread_local int disk_unsynced_sync;  /* ... of an fsync = always
                                                 cache: synced, not only
                                                 handed to the OS */
static _Thread_local int disk_batch_failed;   /* an add found no memory */

static void disk_batch_destroy(void *b) { rocksdb_writebatch_destroy(b); }
static void disk_batch_key_make(void) { pthread_key_create(&disk_batch_key, disk_batch_destroy); }

static rocksdb_writebatch_t *disk_thread_batch(void) {
  if (!disk_batch) {
    pthread_once(&disk_batch_once, disk_batch_key_make);
    disk_batch = rocksdb_writebatch_create();
    pthread_setspecific(disk_batch_key, disk_batch);
  }
  return disk_batch;
}

/* ---- encodings ----------------------------------------------------------- */

static void disk_put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t disk_get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void disk_put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static uint32_t disk_get_be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* "p/<name>" 0 <part>: the partition's meta key. */
static size_t disk_meta_key(const disk_cache_t *dc, uint32_t part, unsigned char *out) {
  size_t n = (size_t)snprintf((char *)out, 80, "p/%s", dc->name);
  out[n++] = 0;
  disk_put_be32(out + n, part);
  return n + 4;
}

/* Words for a RocksDB error, which is freed. */
static void disk_words(char *err, size_t err_len, const char *what, char *rerr) {
  if (err && err_len) snprintf(err, err_len, "%s: %s", what, rerr ? rerr : "unknown error");
  free(rerr);
}

/* ---- free space -------------------------------------------------------------- */

static void disk_space_check(disk_t *d) {
  struct statvfs v;
  if (statvfs(d->dir, &v) != 0) return;
  atomic_store(&d->bytes_at_check, atomic_load(&d->bytes));
  atomic_store(&d->free_bytes, (int64_t)v.f_bavail * (int64_t)v.f_frsize);
  atomic_store(&d->checked_ms, clock_mono_ms());
}

/* Whether a write of size bytes leaves disk_free_bytes_min free, as far as
 * the last look and what was written since tell. */
static int disk_space_ok(disk_t *d, size_t size) {
  uint64_t since = atomic_load(&d->bytes) - atomic_load(&d->bytes_at_check);
  int low = atomic_load(&d->low);
  if (since >= DISK_SPACE_CHECK_BYTES ||
      (low && clock_mono_ms() - atomic_load(&d->checked_ms) >= DISK_SPACE_RECHECK_MS)) {
    disk_space_check(d);
    since = 0;
  }
  int64_t left = atomic_load(&d->free_bytes) - (int64_t)since - (int64_t)size;
  int now_low = left < d->free_min;
  if (now_low != low && atomic_exchange(&d->low, now_low) != now_low) {
    if (now_low)
      LOG_W("disk", "\"data_dir is nearly full: writes to persistent caches are refused\" "
            "dir=%s free_bytes=%lld disk_free_bytes_min=%lld", d->dir,
            (long long)atomic_load(&d->free_bytes), (long long)d->free_min);
    else
      LOG_I("disk", "\"data_dir has room again: writes to persistent caches are taken\" dir=%s "
            "free_bytes=%lld", d->dir, (long long)atomic_load(&d->free_bytes));
  }
  return !now_low;
}

/* ---- the disk thread: every_ms caches' syncs ------------------------------ */

/* Hands RocksDB's log to the OS (sync: and to the disk) up to every write
 * made so far; one call covers every thread waiting. */
static void disk_flush_log(disk_t *d, int sync) {
  pthread_mutex_lock(&d->sync_lock);
  uint64_t upto = atomic_load(&d->written);
  if (atomic_load(sync ? &d->synced : &d->flushed) < upto) {
    if (atomic_load(&d->broken)) {
      /* RocksDB refused a write: its log takes no more calls, so what was
       * written before cannot be made durable, and replies waiting for it
       * must not leave. */
      LOG_E("disk", "\"writes wait for a log the data directory can no longer write: stopping "
            "the node\" dir=%s", d->dir);
      _exit(75);
    }
    char *rerr = NULL;
    rocksdb_flush_wal(d->db, (unsigned char)sync, &rerr);
    if (rerr) {
      /* What was acknowledged as on disk may not be: this node must not
       * go on as if it were (its copies are filled again elsewhere). */
      LOG_E("disk", "\"writing the data directory's log failed: stopping the node\" dir=%s "
            "error=\"%s\"", d->dir, rerr);
      _exit(75);
    }
    atomic_store(&d->flushed, upto);
    if (sync) atomic_store(&d->synced, upto);
  }
  pthread_mutex_unlock(&d->sync_lock);
}

static void disk_sync_now(disk_t *d) { disk_flush_log(d, 1); }

static void *disk_thread_main(void *arg) {
  disk_t *d = arg;
  pthread_mutex_lock(&d->lock);
  while (!d->stopping) {
    uint32_t ms = d->every_ms_min ? d->every_ms_min : DISK_IDLE_SYNC_MS;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&d->cond, &d->lock, &ts);
    if (d->stopping) break;
    int any = d->every_ms_min != 0;
    pthread_mutex_unlock(&d->lock);
    if (any && !atomic_load(&d->broken)) disk_sync_now(d);
    disk_space_check(d);
    pthread_mutex_lock(&d->lock);
  }
  pthread_mutex_unlock(&d->lock);
  return NULL;
}

/* ---- open ----------------------------------------------------------------- */

static int disk_meta_get(disk_t *d, const char *key, char *out, size_t out_len, char *err,
                         size_t err_len) {
  char *rerr = NULL;
  size_t len = 0;
  char *v = rocksdb_get(d->db, d->ropts, key, strlen(key), &len, &rerr);
  if (rerr) {
    char what[1200];
    snprintf(what, sizeof what,
             "data_dir %s is damaged (its identity cannot be read); restore it from a snapshot, "
             "or give the node an empty data_dir and its copies come from other nodes",
             d->dir);
    disk_words(err, err_len, what, rerr);
    return GRID_EDISK;
  }
  out[0] = '\0';
  if (!v) return GRID_ENOTFOUND;
  snprintf(out, out_len, "%.*s", (int)len, v);
  free(v);
  return 0;
}

static int disk_meta_put(disk_t *d, const char *key, const char *val, char *err,
                         size_t err_len) {
  char *rerr = NULL;
  rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(w, 1);
  pthread_spin_lock(&d->write_lock);
  rocksdb_put(d->db, w, key, strlen(key), val, strlen(val), &rerr);
  pthread_spin_unlock(&d->write_lock);
  rocksdb_writeoptions_destroy(w);
  if (rerr) {
    disk_words(err, err_len, "writing the data directory's identity failed", rerr);
    return GRID_EDISK;
  }
  return 0;
}

/* The format, cluster and identity of a data directory: made when it is
 * new, checked when it is not. */
static int disk_identity(disk_t *d, const char *cluster, char *err, size_t err_len) {
  char v[128];
  int rc = disk_meta_get(d, "grid.format", v, sizeof v, err, err_len);
  if (rc == GRID_EDISK) return rc;
  if (rc == GRID_ENOTFOUND) {
    uint64_t id = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&id, sizeof id, 1, f) != 1) id = (uint64_t)clock_wall_ms() * 2654435761u;
    if (f) fclose(f);
    if (!id) id = 1;
    char idtext[24], fmt[16];
    snprintf(idtext, sizeof idtext, "%016" PRIx64, id);
    snprintf(fmt, sizeof fmt, "%d", DISK_FORMAT);
    if ((rc = disk_meta_put(d, "grid.cluster", cluster, err, err_len)) ||
        (rc = disk_meta_put(d, "grid.disk_id", idtext, err, err_len)) ||
        (rc = disk_meta_put(d, "grid.format", fmt, err, err_len)))
      return rc;
    d->id = id;
    LOG_I("disk", "\"data directory made\" dir=%s disk_id=%s", d->dir, idtext);
    return 0;
  }
  long fmt = strtol(v, NULL, 10);
  if (fmt > DISK_FORMAT || fmt < 1) {
    snprintf(err, err_len,
             "data_dir %s was written by a newer grid (format %s; this gridd reads format %d): "
             "start it with that version, or give this node an empty data_dir",
             d->dir, v, DISK_FORMAT);
    return GRID_ECONFIG;
  }
  if ((rc = disk_meta_get(d, "grid.cluster", v, sizeof v, err, err_len)) == GRID_EDISK) return rc;
  if (strcmp(v, cluster) != 0) {
    snprintf(err, err_len,
             "data_dir %s holds the data of %s%s%s, and this node is %s%s%s: give each node "
             "a data_dir of its own cluster",
             d->dir, v[0] ? "cluster \"" : "a single node", v, v[0] ? "\"" : "",
             cluster[0] ? "of cluster \"" : "a single node", cluster, cluster[0] ? "\"" : "");
    return GRID_ECONFIG;
  }
  if ((rc = disk_meta_get(d, "grid.disk_id", v, sizeof v, err, err_len)) != 0) {
    if (rc == GRID_ENOTFOUND)
      snprintf(err, err_len, "data_dir %s is damaged: it has no grid.disk_id", d->dir);
    return GRID_EDISK;
  }
  d->id = strtoull(v, NULL, 16);
  return 0;
}

/* What a directory holds: -1 it cannot be read, 0 nothing, 1 files
 * without RocksDB's CURRENT (a damaged database), 2 a database. */
static int disk_dir_state(const char *path) {
  DIR *dh = opendir(path);
  if (!dh) return errno == ENOENT ? 0 : -1;
  int any = 0, current = 0;
  struct dirent *e;
  while ((e = readdir(dh)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    any = 1;
    if (strcmp(e->d_name, "CURRENT") == 0) current = 1;
  }
  closedir(dh);
  return current ? 2 : any ? 1 : 0;
}

int disk_open(const char *data_dir, const char *cluster, int64_t free_min, disk_t **out,
              char *err, size_t err_len) {
  *out = NULL;
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/" DISK_DB_DIR, data_dir);
  if ((mkdir(data_dir, 0755) != 0 && errno != EEXIST) || (mkdir(dir, 0755) != 0 && errno != EEXIST)) {
    snprintf(err, err_len, "data_dir %s cannot be made: %s", data_dir, strerror(errno));
    return GRID_ECONFIG;
  }
  int state = disk_dir_state(dir);
  if (state < 0) {
    snprintf(err, err_len, "data_dir %s cannot be read: %s", dir, strerror(errno));
    return GRID_ECONFIG;
  }
  if (state == 1) {
    /* Files, and no CURRENT: RocksDB would make a new, empty database over
     * them, and the node would serve nothing as if it had nothing. */
    snprintf(err, err_len,
             "data_dir %s is damaged (%s has no CURRENT file); restore it from a snapshot "
             "(gridd --restore NAME), or give the node an empty data_dir and its copies come "
             "from other nodes",
             data_dir, dir);
    return GRID_EDISK;
  }
  disk_t *d = calloc(1, sizeof *d);
  if (!d) return GRID_ENOMEM;
  snprintf(d->dir, sizeof d->dir, "%s", data_dir);
  d->free_min = free_min;
  disk_space_check(d);
  pthread_mutex_init(&d->lock, NULL);
  pthread_mutex_init(&d->sync_lock, NULL);
  pthread_spin_init(&d->write_lock, PTHREAD_PROCESS_PRIVATE);
  pthread_cond_init(&d->cond, NULL);
  d->opts = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(d->opts, state == 0);
  rocksdb_options_set_create_missing_column_families(d->opts, 1);
  rocksdb_options_set_paranoid_checks(d->opts, 1);
  rocksdb_options_set_info_log_level(d->opts, 2 /* WARN */);
  rocksdb_options_set_keep_log_file_num(d->opts, 2);
  rocksdb_options_set_compression(d->opts, rocksdb_lz4_compression);
  /* The log is handed to the OS by disk_settle, once for every reply of a
   * loop round, not by each write (a system call each). */
  rocksdb_options_set_manual_wal_flush(d->opts, 1);
  /* Memtables only take writes (reads are served from grid's memory, and
   * a load reads the files): an append-only vector instead of a skip list
   * (whose ordered insert was most of a write's cost), sorted when it is
   * written out. Writes are one at a time (write_lock). */
  rocksdb_options_set_memtable_vector_rep(d->opts);
  rocksdb_options_set_allow_concurrent_memtable_write(d->opts, 0);
  /* Less log to replay after a kill -9: memtables are written out once
   * the log holds this much. */
  rocksdb_options_set_max_total_wal_size(d->opts, 64u << 20);
  d->wopts = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(d->wopts, 0);
  /* A write racing its cache's drop is dropped with it, not an error that
   * would stop every write. */
  rocksdb_writeoptions_set_ignore_missing_column_families(d->wopts, 1);
  d->ropts = rocksdb_readoptions_create();
  rocksdb_readoptions_set_verify_checksums(d->ropts, 1);

  /* Every column family there is must be opened with it. */
  char *rerr = NULL;
  size_t ncf = 0;
  char **names = rocksdb_list_column_families(d->opts, dir, &ncf, &rerr);
  free(rerr); /* none yet: a new directory */
  rerr = NULL;
  if (!names || ncf == 0) {
    d->db = rocksdb_open(d->opts, dir, &rerr);
  } else {
    const rocksdb_options_t **cfo = calloc(ncf, sizeof *cfo);
    rocksdb_column_family_handle_t **h = calloc(ncf, sizeof *h);
    for (size_t i = 0; cfo && i < ncf; i++) cfo[i] = d->opts;
    if (cfo && h) {
      d->db = rocksdb_open_column_families(d->opts, dir, (int)ncf, (const char *const *)names,
                                           cfo, h, &rerr);
    }
    free(cfo);
    if (d->db) {
      /* Caches take their own handles when they are opened again. */
      d->found = h;
      d->found_names = names;
      d->nfound = ncf;
      names = NULL;
    } else {
      free(h);
    }
  }
  if (names) rocksdb_list_column_families_destroy(names, ncf);
  if (!d->db) {
    char what[1200];
    if (rerr && strstr(rerr, "While lock file"))
      snprintf(what, sizeof what, "data_dir %s is in use by another process (a gridd)",
               data_dir);
    else
      snprintf(what, sizeof what,
               "data_dir %s is damaged (it cannot be opened); restore it from a snapshot "
               "(gridd --restore NAME), or give the node an empty data_dir and its copies come "
               "from other nodes",
               data_dir);
    disk_words(err, err_len, what, rerr);
    disk_close(d);
    return GRID_EDISK;
  }
  int rc = disk_identity(d, cluster, err, err_len);
  if (rc != 0) {
    disk_close(d);
    return rc;
  }
  if (pthread_create(&d->thread, NULL, disk_thread_main, d) != 0) {
    snprintf(err, err_len, "cannot start the disk thread");
    d->thread = 0;
    disk_close(d);
    return GRID_ENOMEM;
  }
  *out = d;
  return 0;
}

void disk_close(disk_t *d) {
  if (!d) return;
  if (d->thread) {
    pthread_mutex_lock(&d->lock);
    d->stopping = 1;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->thread, NULL);
  }
  if (d->db) disk_sync_now(d);
  for (size_t i = 0; i < d->nfound; i++)
    if (d->found[i]) rocksdb_column_family_handle_destroy(d->found[i]);
  free(d->found);
  if (d->found_names) rocksdb_list_column_families_destroy(d->found_names, d->nfound);
  /* Caches not freed (their store let them go) are freed here. */
  for (disk_cache_t *c = d->caches, *next; c; c = next) {
    next = c->next;
    rocksdb_column_family_handle_destroy(c->cf);
    free(c->parts);
    free(c);
  }
  if (d->db) rocksdb_close(d->db);
  if (d->opts) rocksdb_options_destroy(d->opts);
  if (d->wopts) rocksdb_writeoptions_destroy(d->wopts);
  if (d->ropts) rocksdb_readoptions_destroy(d->ropts);
  pthread_mutex_destroy(&d->lock);
  pthread_mutex_destroy(&d->sync_lock);
  pthread_spin_destroy(&d->write_lock);
  pthread_cond_destroy(&d->cond);
  if (disk_unsynced == d) disk_unsynced = NULL;
  free(d);
}

void disk_flush(disk_t *d) {
  if (!d) return;
  rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
  rocksdb_flushoptions_set_wait(fo, 1);
  char *rerr = NULL;
  rocksdb_flush(d->db, fo, &rerr);
  free(rerr);
  pthread_mutex_lock(&d->lock);
  for (disk_cache_t *c = d->caches; c; c = c->next) {
    rerr = NULL;
    if (!atomic_load(&c->dropped)) rocksdb_flush_cf(d->db, fo, c->cf, &rerr);
    free(rerr);
  }
  pthread_mutex_unlock(&d->lock);
  rocksdb_flushoptions_destroy(fo);
}

uint64_t disk_id(const disk_t *d) { return d->id; }
const char *disk_dir(const disk_t *d) { return d->dir; }
uint64_t disk_bytes_written(const disk_t *d) { return atomic_load(&d->bytes); }

/* ---- caches --------------------------------------------------------------- */

static void disk_every_ms_update(disk_t *d) {
  uint32_t min = 0;
  for (disk_cache_t *c = d->caches; c; c = c->next)
    if (!atomic_load(&c->dropped) && c->fsync == GRID_FSYNC_EVERY_MS && c->every_ms &&
        (!min || c->every_ms < min))
      min = c->every_ms;
  if (min != d->every_ms_min) {
    d->every_ms_min = min;
    pthread_cond_signal(&d->cond);
  }
}

disk_cache_t *disk_cache_open(disk_t *d, const char *name, uint32_t partitions, const void *def,
                              size_t def_len, int fsync, uint32_t every_ms, char *err,
                              size_t err_len) {
  disk_cache_t *dc = calloc(1, sizeof *dc);
  disk_part_t *parts = calloc(partitions ? partitions : 1, sizeof *parts);
  if (!dc || !parts) {
    free(dc);
    free(parts);
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  dc->parts = parts;
  dc->partitions = partitions;
  dc->disk = d;
  snprintf(dc->name, sizeof dc->name, "%s", name);
  dc->fsync = fsync;
  dc->every_ms = fsync == GRID_FSYNC_EVERY_MS && every_ms == 0 ? 100 : every_ms;
  char cfname[96];
  snprintf(cfname, sizeof cfname, "cache.%s", name);
  char *rerr = NULL;
  /* The family exists after a restart: disk_open kept its handle. */
  pthread_mutex_lock(&d->lock);
  for (size_t i = 0; i < d->nfound && !dc->cf; i++) {
    if (d->found[i] && strcmp(d->found_names[i], cfname) == 0) {
      dc->cf = d->found[i];
      d->found[i] = NULL;
    }
  }
  pthread_mutex_unlock(&d->lock);
  if (!dc->cf) dc->cf = rocksdb_create_column_family(d->db, d->opts, cfname, &rerr);
  if (!dc->cf) {
    char what[1200];
    snprintf(what, sizeof what, "the cache's column family %s cannot be made in %s", cfname,
             d->dir);
    disk_words(err, err_len, what, rerr);
    free(dc->parts);
    free(dc);
    return NULL;
  }
  char key[80];
  int kn = snprintf(key, sizeof key, "c/%s", name);
  rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(w, 1);
  pthread_spin_lock(&d->write_lock);
  rocksdb_put(d->db, w, key, (size_t)kn, def, def_len, &rerr);
  pthread_spin_unlock(&d->write_lock);
  rocksdb_writeoptions_destroy(w);
  if (rerr) {
    disk_words(err, err_len, "keeping the cache's definition failed", rerr);
    rocksdb_column_family_handle_destroy(dc->cf);
    free(dc->parts);
    free(dc);
    return NULL;
  }
  pthread_mutex_lock(&d->lock);
  dc->next = d->caches;
  d->caches = dc;
  disk_every_ms_update(d);
  pthread_mutex_unlock(&d->lock);
  return dc;
}

int disk_cache_defs(disk_t *d, void (*cb)(void *ctx, const char *name, const void *def,
                                          size_t len),
                    void *ctx) {
  rocksdb_iterator_t *it = rocksdb_create_iterator(d->db, d->ropts);
  for (rocksdb_iter_seek(it, "c/", 2); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t kl, vl;
    const char *k = rocksdb_iter_key(it, &kl);
    const char *v = rocksdb_iter_value(it, &vl);
    if (kl < 2 || memcmp(k, "c/", 2) != 0) break;
    char name[80];
    snprintf(name, sizeof name, "%.*s", (int)(kl - 2), k + 2);
    cb(ctx, name, v, vl);
  }
  char *rerr = NULL;
  rocksdb_iter_get_error(it, &rerr);
  rocksdb_iter_destroy(it);
  if (rerr) {
    LOG_E("disk", "\"reading the caches kept failed\" dir=%s error=\"%s\"", d->dir, rerr);
    free(rerr);
    return GRID_EDISK;
  }
  return 0;
}

int disk_cache_def(disk_t *d, const char *name, void **def, size_t *len) {
  char key[80];
  int kn = snprintf(key, sizeof key, "c/%s", name);
  char *rerr = NULL;
  *def = rocksdb_get(d->db, d->ropts, key, (size_t)kn, len, &rerr);
  if (rerr) {
    free(rerr);
    *def = NULL;
    return GRID_EDISK;
  }
  return *def ? 0 : GRID_ENOTFOUND;
}

void disk_cache_drop(disk_cache_t *dc) {
  disk_t *d = dc->disk;
  if (atomic_exchange(&dc->dropped, 1)) return;
  char *rerr = NULL;
  rocksdb_drop_column_family(d->db, dc->cf, &rerr);
  if (rerr) {
    LOG_W("disk", "\"dropping a cache's column family failed\" cache=%s error=\"%s\"", dc->name,
          rerr);
    free(rerr);
    rerr = NULL;
  }
  /* Its definition and partitions' meta go too. */
  unsigned char from[96], to[96];
  int kn = snprintf((char *)from, sizeof from, "c/%s", dc->name);
  rocksdb_writebatch_t *b = rocksdb_writebatch_create();
  rocksdb_writebatch_delete(b, (const char *)from, (size_t)kn);
  size_t fn = disk_meta_key(dc, 0, from);
  memcpy(to, from, fn - 4);
  memset(to + fn - 4, 0xff, 5);
  rocksdb_writebatch_delete_range(b, (const char *)from, fn, (const char *)to, fn + 1);
  rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(w, 1);
  pthread_spin_lock(&d->write_lock);
  rocksdb_write(d->db, w, b, &rerr);
  pthread_spin_unlock(&d->write_lock);
  rocksdb_writeoptions_destroy(w);
  rocksdb_writebatch_destroy(b);
  if (rerr) {
    LOG_W("disk", "\"forgetting a dropped cache failed\" cache=%s error=\"%s\"", dc->name, rerr);
    free(rerr);
  }
  pthread_mutex_lock(&d->lock);
  disk_every_ms_update(d);
  pthread_mutex_unlock(&d->lock);
}

void disk_cache_free(disk_cache_t *dc) {
  if (!dc) return;
  disk_t *d = dc->disk;
  pthread_mutex_lock(&d->lock);
  for (disk_cache_t **l = &d->caches; *l; l = &(*l)->next) {
    if (*l == dc) {
      *l = dc->next;
      break;
    }
  }
  disk_every_ms_update(d);
  pthread_mutex_unlock(&d->lock);
  rocksdb_column_family_handle_destroy(dc->cf);
  free(dc->parts);
  free(dc);
}

/* ---- writes --------------------------------------------------------------- */

void disk_add(disk_cache_t *dc, uint32_t part, const void *key, size_t key_len,
              const void *value, size_t value_len, uint8_t type, uint64_t version,
              int64_t expire_at_ms) {
  rocksdb_writebatch_t *b = disk_thread_batch();
  unsigned char kbuf[256];
  unsigned char *k = key_len + 4 <= sizeof kbuf ? kbuf : malloc(key_len + 4);
  if (!k) {
    disk_batch_failed = 1; /* its commit refuses the batch */
    return;
  }
  disk_put_be32(k, part);
  if (key_len) memcpy(k + 4, key, key_len);
  if (!value) {
    rocksdb_writebatch_delete_cf(b, dc->cf, (const char *)k, key_len + 4);
  } else {
    unsigned char h[DISK_VALUE_HEADER];
    h[0] = type;
    disk_put_u64(h + 1, version);
    disk_put_u64(h + 9, (uint64_t)expire_at_ms);
    const char *parts[2] = {(const char *)h, (const char *)value};
    size_t lens[2] = {sizeof h, value_len};
    rocksdb_writebatch_putv_cf(b, dc->cf, 1, (const char *const *)&k, (size_t[]){key_len + 4},
                               value_len ? 2 : 1, parts, lens);
  }
  if (k != kbuf) free(k);
}

void disk_discard(void) {
  if (disk_batch) rocksdb_writebatch_clear(disk_batch);
  disk_batch_failed = 0;
}

int disk_commit(disk_cache_t *dc, uint32_t part, uint64_t last_version, int state) {
  disk_t *d = dc->disk;
  int sync = (state & DISK_PART_SYNC) != 0;
  state &= ~DISK_PART_SYNC;
  rocksdb_writebatch_t *b = disk_thread_batch();
  if (disk_batch_failed) {
    disk_discard();
    return GRID_ENOMEM;
  }
  if (atomic_load_explicit(&dc->dropped, memory_order_relaxed)) {
    rocksdb_writebatch_clear(b);
    return 0;
  }
  uint64_t mv_version = 0;
  uint8_t mv_state = 0;
  if (part >= dc->partitions) {
    rocksdb_writebatch_clear(b);
    return GRID_EINVAL;
  }
  if (last_version || state) {
    unsigned char mk[96], mv[DISK_META_PART_BYTES];
    size_t mn = disk_meta_key(dc, part, mk);
    uint64_t v0 = 0;
    int s0 = DISK_PART_WHOLE;
    if (!last_version || !state) disk_part_state(dc, part, &v0, &s0);
    mv_version = last_version ? last_version : v0;
    mv_state = (uint8_t)(state ? state : s0 ? s0 : DISK_PART_WHOLE);
    disk_put_u64(mv, mv_version);
    mv[8] = mv_state;
    rocksdb_writebatch_put(b, (const char *)mk, mn, (const char *)mv, sizeof mv);
  }
  size_t size = 0;
  rocksdb_writebatch_data(b, &size);
  if (atomic_load(&d->broken) || !disk_space_ok(d, size)) {
    rocksdb_writebatch_clear(b);
    return GRID_EDISK;
  }
  char *rerr = NULL;
  pthread_spin_lock(&d->write_lock);
  rocksdb_write(d->db, d->wopts, b, &rerr);
  pthread_spin_unlock(&d->write_lock);
  rocksdb_writebatch_clear(b);
  if (rerr) {
    /* RocksDB's log writer is in error now: no more writes to it. */
    atomic_store(&d->broken, 1);
    LOG_E("disk", "\"a write to the data directory failed: writes to persistent caches are "
          "refused until the node restarts\" cache=%s dir=%s error=\"%s\"",
          dc->name, d->dir, rerr);
    free(rerr);
    return GRID_EDISK;
  }
  uint64_t at = atomic_fetch_add(&d->written, 1) + 1;
  atomic_fetch_add_explicit(&d->bytes, size, memory_order_relaxed);
  if (last_version || state) {
    disk_part_t *dp = &dc->parts[part];
    dp->version = mv_version;
    dp->state = mv_state;
    dp->known = 1;
  }
  /* Every reply telling of it waits: for the OS to have it, and for the
   * disk with fsync = always. */
  if (disk_unsynced && disk_unsynced != d) disk_settle();
  disk_unsynced = d;
  disk_unsynced_at = at;
  /* A copy marked whole is synced whatever its policy: a map may count
   * it in sync once its fill is acknowledged. */
  if (dc->fsync == GRID_FSYNC_ALWAYS || sync) disk_unsynced_sync = 1;
  return 0;
}

int disk_part_reset(disk_cache_t *dc, uint32_t part, uint64_t version) {
  if (atomic_load(&dc->dropped)) return 0;
  unsigned char from[4], to[4];
  disk_put_be32(from, part);
  disk_put_be32(to, part + 1);
  rocksdb_writebatch_t *b = disk_thread_batch();
  rocksdb_writebatch_clear(b);
  if (part == UINT32_MAX) {
    /* No end key after the last partition of 2^32: not a real case. */
    return GRID_EINVAL;
  }
  rocksdb_writebatch_delete_range_cf(b, dc->cf, (const char *)from, 4, (const char *)to, 4);
  return disk_commit(dc, part, version, DISK_PART_FILLING);
}

void disk_part_state(disk_cache_t *dc, uint32_t part, uint64_t *version, int *state) {
  *version = 0;
  *state = DISK_PART_NONE;
  if (part >= dc->partitions) return;
  disk_part_t *dp = &dc->parts[part];
  if (dp->known) {
    *version = dp->version;
    *state = dp->state;
    return;
  }
  unsigned char mk[96];
  size_t mn = disk_meta_key(dc, part, mk);
  char *rerr = NULL;
  size_t len = 0;
  char *v = rocksdb_get(dc->disk->db, dc->disk->ropts, (const char *)mk, mn, &len, &rerr);
  *version = 0;
  *state = DISK_PART_NONE;
  free(rerr);
  if (v && len == DISK_META_PART_BYTES) {
    *version = disk_get_u64((const unsigned char *)v);
    *state = (unsigned char)v[8];
  }
  free(v);
  dp->version = *version;
  dp->state = (uint8_t)*state;
  dp->known = 1;
}

/* ---- the group commit ----------------------------------------------------- */

int disk_pending(void) { return disk_unsynced != NULL; }

void disk_settle(void) {
  disk_t *d = disk_unsynced;
  if (!d) return;
  uint64_t want = disk_unsynced_at;
  int sync = disk_unsynced_sync;
  disk_unsynced = NULL;
  disk_unsynced_sync = 0;
  if (atomic_load(sync ? &d->synced : &d->flushed) >= want) return;
  disk_flush_log(d, sync);
}

/* ---- load ----------------------------------------------------------------- */

int disk_cache_load(disk_cache_t *dc, disk_entry_cb cb, void *ctx, char *err, size_t err_len) {
  disk_t *d = dc->disk;
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_verify_checksums(ro, 1);
  rocksdb_readoptions_set_fill_cache(ro, 0);
  rocksdb_iterator_t *it = rocksdb_create_iterator_cf(d->db, ro, dc->cf);
  int rc = 0;
  for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it) && rc == 0;
       rocksdb_iter_next(it)) {
    size_t kl, vl;
    const unsigned char *k = (const unsigned char *)rocksdb_iter_key(it, &kl);
    const unsigned char *v = (const unsigned char *)rocksdb_iter_value(it, &vl);
    if (kl < 4 || vl < DISK_VALUE_HEADER || v[0] > GRID_TYPE_MAX) {
      snprintf(err, err_len,
               "data_dir %s is damaged: cache %s holds an entry grid did not write (key of %zu "
               "bytes, value of %zu)",
               d->dir, dc->name, kl, vl);
      rc = GRID_EDISK;
      break;
    }
    if (cb(ctx, disk_get_be32(k), k + 4, kl - 4, v + DISK_VALUE_HEADER, vl - DISK_VALUE_HEADER,
           v[0], disk_get_u64(v + 1), (int64_t)disk_get_u64(v + 9)))
      break;
  }
  char *rerr = NULL;
  rocksdb_iter_get_error(it, &rerr);
  rocksdb_iter_destroy(it);
  rocksdb_readoptions_destroy(ro);
  if (rerr) {
    char what[1400];
    snprintf(what, sizeof what,
             "data_dir %s is damaged (cache %s cannot be read); restore it from a snapshot, or "
             "give the node an empty data_dir and its copies come from other nodes",
             d->dir, dc->name);
    disk_words(err, err_len, what, rerr);
    rc = GRID_EDISK;
  }
  return rc;
}

/* ---- snapshots -------------------------------------------------------------- */

static int disk_snapshot_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > DISK_SNAPSHOT_NAME_MAX || name[0] == '.') return 0;
  for (const char *s = name; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '_' || *s == '-' || *s == '.'))
      return 0;
  return 1;
}

int disk_snapshot(disk_t *d, const char *name, char *err, size_t err_len) {
  if (!disk_snapshot_name_ok(name)) {
    snprintf(err, err_len, "a snapshot name is 1-%d of [A-Za-z0-9_.-], not starting with '.'",
             DISK_SNAPSHOT_NAME_MAX);
    return GRID_EINVAL;
  }
  char path[1200];
  snprintf(path, sizeof path, "%s/" DISK_SNAPSHOTS_DIR, d->dir);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    snprintf(err, err_len, "%s cannot be made: %s", path, strerror(errno));
    return GRID_EDISK;
  }
  snprintf(path, sizeof path, "%s/" DISK_SNAPSHOTS_DIR "/%s", d->dir, name);
  struct stat st;
  if (stat(path, &st) == 0) {
    snprintf(err, err_len, "a snapshot named %s exists on this node (%s)", name, path);
    return GRID_EEXIST;
  }
  char *rerr = NULL;
  rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(d->db, &rerr);
  /* log_size_for_flush 0: the memtables are written first, so the
   * snapshot is its table files (hard links) and needs no log replay. */
  if (cp) rocksdb_checkpoint_create(cp, path, 0, &rerr);
  if (cp) rocksdb_checkpoint_object_destroy(cp);
  if (rerr) {
    disk_words(err, err_len, "making the snapshot failed", rerr);
    return GRID_EDISK;
  }
  LOG_I("disk", "\"snapshot made\" name=%s path=%s", name, path);
  return 0;
}

/* Every entry of every family of the database at path read once, its
 * checksums checked, and its identity there: 0, or GRID_EDISK with words. */
static int disk_verify(const char *path, const char *what, char *err, size_t err_len) {
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_paranoid_checks(o, 1);
  char *rerr = NULL;
  size_t n = 0;
  char **names = rocksdb_list_column_families(o, path, &n, &rerr);
  int rc = 0;
  rocksdb_t *db = NULL;
  rocksdb_column_family_handle_t **h = NULL;
  if (names && n) {
    const rocksdb_options_t **opts = calloc(n, sizeof *opts);
    h = calloc(n, sizeof *h);
    for (size_t i = 0; opts && i < n; i++) opts[i] = o;
    if (opts && h)
      db = rocksdb_open_for_read_only_column_families(o, path, (int)n,
                                                      (const char *const *)names, opts, h, 0,
                                                      &rerr);
    free(opts);
  }
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_verify_checksums(ro, 1);
  rocksdb_readoptions_set_fill_cache(ro, 0);
  uint64_t entries = 0;
  for (size_t i = 0; db && !rerr && i < n; i++) {
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(db, ro, h[i]);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) entries++;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
  }
  if (db && !rerr) {
    size_t len = 0;
    char *v = rocksdb_get(db, ro, "grid.disk_id", 12, &len, &rerr);
    if (!v && !rerr) rerr = strdup("no grid.disk_id: not a grid data directory");
    free(v);
  }
  if (!db || rerr) {
    char w[1500];
    snprintf(w, sizeof w, "%s is damaged or incomplete (%s)", what, path);
    disk_words(err, err_len, w, rerr ? rerr : strdup("it cannot be opened"));
    rc = GRID_EDISK;
  }
  rocksdb_readoptions_destroy(ro);
  for (size_t i = 0; h && i < n; i++)
    if (h[i]) rocksdb_column_family_handle_destroy(h[i]);
  free(h);
  if (db) rocksdb_close(db);
  if (names) rocksdb_list_column_families_destroy(names, n);
  rocksdb_options_destroy(o);
  if (rc == 0)
    LOG_I("disk", "\"snapshot checked\" path=%s entries=%llu", path, (unsigned long long)entries);
  return rc;
}

/* Copies file from to to (a snapshot's small files: RocksDB may write to
 * its own copy of them). */
static int disk_copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) return -1;
  int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    close(in);
    return -1;
  }
  char buf[65536];
  ssize_t n;
  int rc = 0;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) rc = -1;
  if (n < 0 || fsync(out) != 0) rc = -1;
  close(in);
  if (close(out) != 0) rc = -1;
  return rc;
}

int disk_restore(const char *data_dir, const char *name, char *err, size_t err_len) {
  if (!disk_snapshot_name_ok(name)) {
    snprintf(err, err_len, "--restore: a snapshot name is 1-%d of [A-Za-z0-9_.-]",
             DISK_SNAPSHOT_NAME_MAX);
    return GRID_ECONFIG;
  }
  char snap[1200], db[1200], aside[1300], what[200];
  snprintf(snap, sizeof snap, "%s/" DISK_SNAPSHOTS_DIR "/%s", data_dir, name);
  snprintf(db, sizeof db, "%s/" DISK_DB_DIR, data_dir);
  struct stat st;
  if (stat(snap, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, err_len, "--restore: no snapshot %s in %s/" DISK_SNAPSHOTS_DIR
             " (gridctl snapshot create %s makes one on every node)", name, data_dir, name);
    return GRID_ECONFIG;
  }
  snprintf(what, sizeof what, "snapshot %s", name);
  int rc = disk_verify(snap, what, err, err_len);
  if (rc != 0) return rc; /* nothing changed */
  /* The data it replaces is kept aside, not deleted: the operator's. */
  snprintf(aside, sizeof aside, "%s/" DISK_DB_DIR ".before-restore-%lld", data_dir,
           (long long)clock_wall_ms());
  if (stat(db, &st) == 0 && rename(db, aside) != 0) {
    snprintf(err, err_len, "--restore: %s cannot be moved aside: %s", db, strerror(errno));
    return GRID_EDISK;
  }
  if (mkdir(db, 0755) != 0) {
    snprintf(err, err_len, "--restore: %s cannot be made: %s", db, strerror(errno));
    return GRID_EDISK;
  }
  DIR *dh = opendir(snap);
  struct dirent *e;
  rc = 0;
  while (dh && rc == 0 && (e = readdir(dh)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char from[1500], to[1500];
    snprintf(from, sizeof from, "%s/%s", snap, e->d_name);
    snprintf(to, sizeof to, "%s/%s", db, e->d_name);
    size_t n = strlen(e->d_name);
    /* Table files never change: linked. The rest RocksDB may write to. */
    int linked = n > 4 && strcmp(e->d_name + n - 4, ".sst") == 0 && link(from, to) == 0;
    if (!linked && disk_copy_file(from, to) != 0) {
      snprintf(err, err_len, "--restore: %s cannot be copied to %s: %s (the data it was to "
               "replace is in %s: move it back to %s to go on without the restore)",
               from, to, strerror(errno), aside, db);
      rc = GRID_EDISK;
    }
  }
  if (dh) closedir(dh);
  if (!dh) {
    snprintf(err, err_len, "--restore: snapshot %s cannot be read: %s (the data it was to "
             "replace is in %s)", snap, strerror(errno), aside);
    rc = GRID_EDISK;
  }
  int dfd = open(db, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (rc == 0 && (dfd < 0 || fsync(dfd) != 0)) {
    snprintf(err, err_len, "--restore: %s cannot be synced: %s", db, strerror(errno));
    rc = GRID_EDISK;
  }
  if (dfd >= 0) close(dfd);
  if (rc == 0)
    LOG_W("disk", "\"restored from a snapshot: the data it replaced is kept aside (delete it "
          "once the node serves)\" snapshot=%s aside=%s", name, aside);
  return rc;
}
