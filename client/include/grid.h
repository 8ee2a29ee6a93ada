/*
 * grid.h: the one public API of grid, for a remote node and for an embedded
 * node alike.
 *
 * Conventions:
 * - Every function that can fail returns int: 0 on success, a negative
 *   GRID_E* code otherwise; grid_strerror() gives the words.
 * - Keys and values are byte strings given as (pointer, length). The library
 *   never keeps a pointer the caller passed in after the call returns.
 * - Memory the library returns to the caller (values, lists) is owned by the
 *   caller and freed with the matching grid_*_free() function.
 * - A grid_t may be used from many threads at once. Every call is bounded by
 *   the handle's timeout (grid_options_t.timeout_ms).
 * - A function that takes a callback and returns an error never calls the
 *   callback; when it returns 0, the callback is called exactly once.
 */
#ifndef GRID_H
#define GRID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "grid_types.h"

typedef struct grid grid_t;

typedef struct grid_options {
  uint32_t timeout_ms;      /* deadline of every call; 0 = 5000 */
  const char *config_path;  /* embedded: a config file to read, or NULL */
  const char *config_text;  /* embedded: "key = value" lines applied after
                               config_path, or NULL */
  const char *client_name;  /* remote: shown in the node's logs, or NULL */
  uint64_t reply_bytes_max; /* remote: a reply frame longer than this is
                               refused and its connection closed (calls on
                               it fail as on a lost connection); 0 = the
                               node's frame_bytes_max, from the handshake */
  uint32_t async_max;       /* async requests of a handle in flight or
                               waiting to be sent again at most (each counts
                               until its callback starts); a call past it
                               returns GRID_EBUSY and its callback is never
                               called; 0 = 4096. An embedded node outside a
                               cluster runs an async call before returning,
                               so it needs no bound there */
  uint64_t near_cache_bytes; /* remote, or an embedded cluster member: keep
                               recently read entries of other nodes in this
                               handle, at most this many bytes (least
                               recently used out first), each forgotten when
                               its key changes (a change stream per cache,
                               keys only); 0 = no near cache */
  const char *near_caches;  /* with near_cache_bytes: the caches held near,
                               comma-separated; NULL = every cache read */
  /* grids:// (TLS). The node's certificate must be signed by a CA of
   * tls_ca_file and name the host of the URI (or of the map's address). */
  const char *tls_ca_file;   /* PEM CA certificates; NULL = the system's */
  const char *tls_cert_file; /* this client's certificate, for nodes that
                                ask for one (tls_auth_clients); or NULL */
  const char *tls_key_file;  /* its private key */
  /* Nodes with auth = on: who this handle is. Copied at grid_open and sent
   * on every connection's handshake. */
  const char *user;          /* NULL: "default" */
  const char *password;
} grid_options_t;

/*
 * Opens a handle.
 * uri "grid://host:port" connects to a remote node (one TCP connection,
 * pipelined); "grids://host:port" does the same over TLS, to the node's
 * tls_port (a list "h1:p1,h2:p2" names several seeds). uri "embedded:" starts a node inside this process from
 * opts->config_path / opts->config_text (no network listener unless the
 * config says listen = on). opts may be NULL. On success *out is the
 * caller's and is released with grid_close().
 */
GRID_EXPORT int grid_open(const char *uri, const grid_options_t *opts, grid_t **out);
/* Waits for calls in flight to finish or fail, then frees the handle (and
 * stops the embedded node). No call may start on g after this begins. */
GRID_EXPORT void grid_close(grid_t *g);
/* Changes the deadline of later calls on g. */
GRID_EXPORT void grid_set_timeout(grid_t *g, uint32_t timeout_ms);

/* The words the node gave with the last error it answered a synchronous
 * call of the calling thread with (which limit, which argument), or its
 * code's grid_strerror() when it gave none; "" before any. Valid until
 * this thread's next call. */
GRID_EXPORT const char *grid_last_error(void);

/* A value returned by the library. data is malloc'd and the caller's:
 * release it with grid_value_free(). data is NUL-terminated for
 * convenience (the terminator is not counted in len). */
typedef struct grid_value {
  void *data;
  size_t len;
  uint64_t version; /* the entry's version: what grid_cas() compares */
  bool found;       /* grid_get_all(): false for a missing key */
} grid_value_t;

GRID_EXPORT void grid_value_free(grid_value_t *v);

GRID_EXPORT int grid_ping(grid_t *g);

/* GRID_ENOTFOUND when the key is missing or expired. */
GRID_EXPORT int grid_get(grid_t *g, const char *cache, const void *key, size_t key_len,
             grid_value_t *out);

/* ttl_ms 0 takes the cache's default TTL (none unless the cache has one).
 * version_out may be NULL; it receives the new entry's version. */
GRID_EXPORT int grid_put(grid_t *g, const char *cache, const void *key, size_t key_len,
             const void *value, size_t value_len, uint64_t ttl_ms,
             uint64_t *version_out);
/* GRID_EEXIST when the key is present: nothing is written. */
GRID_EXPORT int grid_put_if_absent(grid_t *g, const char *cache, const void *key,
                       size_t key_len, const void *value, size_t value_len,
                       uint64_t ttl_ms, uint64_t *version_out);
/* GRID_ENOTFOUND when the key is missing: nothing is written. */
GRID_EXPORT int grid_replace(grid_t *g, const char *cache, const void *key, size_t key_len,
                 const void *value, size_t value_len, uint64_t ttl_ms,
                 uint64_t *version_out);
/* Writes only if the entry's version is expected_version (GRID_EVERSION
 * otherwise, GRID_ENOTFOUND if the key is missing). */
GRID_EXPORT int grid_cas(grid_t *g, const char *cache, const void *key, size_t key_len,
             uint64_t expected_version, const void *value, size_t value_len,
             uint64_t ttl_ms, uint64_t *version_out);
/* GRID_ENOTFOUND when there was nothing to delete. */
GRID_EXPORT int grid_delete(grid_t *g, const char *cache, const void *key, size_t key_len);

/* Atomic add on a counter kept as a decimal string (so a get reads "42").
 * A missing key counts as 0. GRID_ENOTNUM when the value is not an integer,
 * GRID_EOVERFLOW when the sum leaves the int64 range. */
GRID_EXPORT int grid_add(grid_t *g, const char *cache, const void *key, size_t key_len,
             int64_t delta, int64_t *result);

/* Batches: n keys at most the node's batch_keys_max. */
/* out[i] receives key i (out[i].found tells whether it exists); the caller
 * frees each with grid_value_free(). out must have n elements. */
GRID_EXPORT int grid_get_all(grid_t *g, const char *cache, size_t n,
                 const void *const *keys, const size_t *key_lens,
                 grid_value_t *out);
GRID_EXPORT int grid_put_all(grid_t *g, const char *cache, size_t n,
                 const void *const *keys, const size_t *key_lens,
                 const void *const *values, const size_t *value_lens,
                 uint64_t ttl_ms);
/* *deleted (may be NULL) receives how many keys existed. */
GRID_EXPORT int grid_delete_all(grid_t *g, const char *cache, size_t n,
                    const void *const *keys, const size_t *key_lens,
                    size_t *deleted);

/* One entry returned by grid_scan() and grid_get_prefix(). */
typedef struct grid_entry {
  void *key;
  size_t key_len;
  void *value;
  size_t value_len;
  uint64_t version;
} grid_entry_t;

/*
 * Atomic batches: writes and checks of keys of one partition (give them one
 * affinity part: "{pump-7}.temp", "{pump-7}.rpm"), all or none. Every
 * condition is checked first, against the entries as they were before the
 * batch; then every write is made, and the batch is replicated as one
 * record and committed as one: no reader, backup or change-stream
 * subscriber sees part of it, and a failover keeps all of it or none.
 * Change streams pass its changes on one after another, with op
 * GRID_OP_BATCH.
 */
typedef enum grid_batch_kind {
  GRID_BATCH_PUT = 1,     /* key := value (ttl_ms 0: the cache's default) */
  GRID_BATCH_DELETE = 2,  /* key removed (nothing when it is missing) */
  GRID_BATCH_CHECK = 3,   /* the condition alone: writes nothing */
} grid_batch_kind_t;

typedef enum grid_cond {
  GRID_IF_ANY = 0,
  GRID_IF_ABSENT = 1,     /* the key must be missing: GRID_EEXIST */
  GRID_IF_PRESENT = 2,    /* the key must exist: GRID_ENOTFOUND */
  GRID_IF_VERSION = 3,    /* the entry's version must be `version`:
                             GRID_EVERSION (GRID_ENOTFOUND if missing) */
} grid_cond_t;

typedef struct grid_batch_op {
  grid_batch_kind_t kind;
  const void *key;
  size_t key_len;
  const void *value;      /* GRID_BATCH_PUT */
  size_t value_len;
  uint64_t ttl_ms;
  grid_cond_t cond;
  uint64_t version;       /* GRID_IF_VERSION */
  uint64_t version_out;   /* set on success: the version written (a delete:
                             the removal's, 0 when nothing was there), or
                             the version checked (0: missing) */
  bool existed;           /* set on success: the key existed before */
} grid_batch_op_t;

/* GRID_BATCH_* ops, the op number change-stream events of a batch carry. */
#define GRID_OP_BATCH 32

/* Runs ops[0..n) as one atomic batch (n at most the node's batch_keys_max).
 * 0: all done, each op's version_out set. A condition that does not hold:
 * its error (GRID_EEXIST, GRID_ENOTFOUND, GRID_EVERSION) with *failed (may
 * be NULL) the op's index, and nothing written. GRID_EINVAL (keys of two
 * partitions, a key named twice, an empty batch: *failed and
 * grid_last_error() say which), GRID_ELIMIT (the batch's record would pass
 * the node's frame_bytes_max), GRID_EMEMLIMIT: nothing written. */
GRID_EXPORT int grid_batch(grid_t *g, const char *cache, grid_batch_op_t *ops, size_t n,
                           size_t *failed);

/* Every entry whose key starts with prefix, in one request, as of one
 * moment (no write of the partition is seen in part). The prefix must hold
 * a whole affinity part ("{pump-7}." or "{pump-7}"), so that its keys share
 * one partition; the node looks at every entry of that partition. max: at
 * most this many (0 = the node's batch_keys_max); more match: GRID_ELIMIT.
 * *entries is the caller's (grid_entries_free), in no particular order. */
GRID_EXPORT int grid_get_prefix(grid_t *g, const char *cache, const void *prefix,
                                size_t prefix_len, uint32_t max, grid_entry_t **entries,
                                size_t *n);

/*
 * Scans one partition. Start with *cursor = 0; each call returns up to count
 * entries and the next cursor; the scan is done when *cursor comes back 0.
 * Every entry present for the whole scan is returned at least once, even
 * while the partition grows. *entries is the caller's: free with
 * grid_entries_free(*entries, *n).
 */
GRID_EXPORT int grid_scan(grid_t *g, const char *cache, uint32_t partition,
              uint64_t *cursor, uint32_t count, grid_entry_t **entries,
              size_t *n);
GRID_EXPORT void grid_entries_free(grid_entry_t *entries, size_t n);

/*
 * Hashes: one key holding fields, as Redis's HSET keeps them (and the same
 * key Redis clients read with HGET): a Thing with a field per property,
 * read and changed field by field, each call one atomic step on the key
 * (replicated as one write). A key holds a hash or a string: these calls on
 * a string key, and grid_get of a hash key, give GRID_EWRONGTYPE. A hash
 * left with no field is removed. A hash is one entry: every call costs
 * O(its size), and it is at most value_bytes_max encoded.
 */
/* Sets n fields (new ones added, others replaced); *added (may be NULL)
 * receives how many were new. */
GRID_EXPORT int grid_hset(grid_t *g, const char *cache, const void *key, size_t key_len,
                          size_t n, const void *const *fields, const size_t *field_lens,
                          const void *const *values, const size_t *value_lens, size_t *added);
/* out->found tells whether the field (and the key) exist; free out with
 * grid_value_free(). out->version is the hash's. */
GRID_EXPORT int grid_hget(grid_t *g, const char *cache, const void *key, size_t key_len,
                          const void *field, size_t field_len, grid_value_t *out);
/* Removes n fields; *removed (may be NULL) receives how many existed. */
GRID_EXPORT int grid_hdel(grid_t *g, const char *cache, const void *key, size_t key_len,
                          size_t n, const void *const *fields, const size_t *field_lens,
                          size_t *removed);
/* Every field: entries[i].key is a field, .value its value (in the order
 * fields were first set); none when the key is missing. Free with
 * grid_entries_free(). */
GRID_EXPORT int grid_hgetall(grid_t *g, const char *cache, const void *key, size_t key_len,
                             grid_entry_t **entries, size_t *n);
/* Adds delta to a field kept as a decimal integer (a missing one counts as
 * 0): GRID_ENOTNUM when it is not one, GRID_EOVERFLOW past int64. */
GRID_EXPORT int grid_hincrby(grid_t *g, const char *cache, const void *key, size_t key_len,
                             const void *field, size_t field_len, int64_t delta,
                             int64_t *result);

/* Entries in the cache (including expired ones not yet swept). */
GRID_EXPORT int grid_size(grid_t *g, const char *cache, uint64_t *size);

typedef struct grid_cache_config {
  const char *name;
  uint32_t partitions;     /* 0 = the node's default (1024) */
  uint32_t backups;        /* 0..3 */
  grid_cache_mode_t mode;
  grid_sync_t sync;
  uint64_t default_ttl_ms; /* 0 = no expiry by default */
  int read_from_backup;    /* an embedded cluster member reads keys of its
                              in-sync backup copies itself (committed values
                              only, as Ignite's readFromBackup): 1 on, -1
                              off, 0 = on for replicated caches only */
  int persistence;         /* 1: every node holding a copy keeps it in its
                              RocksDB too (its data_dir) and loads it when
                              restarted; 0 = memory only */
  grid_fsync_t fsync;      /* persistent caches: when a write is on disk
                              before it is acknowledged (README) */
  uint32_t fsync_every_ms; /* GRID_FSYNC_EVERY_MS: the group commit's window
                              (0 = 100) */
} grid_cache_config_t;

/* GRID_ECACHEEXISTS when the name is taken. Names: 1..64 bytes of
 * [A-Za-z0-9_.-]. */
GRID_EXPORT int grid_cache_create(grid_t *g, const grid_cache_config_t *cfg);
/* Drops the cache and every entry in it. GRID_ENOCACHE if there is none. */
GRID_EXPORT int grid_cache_drop(grid_t *g, const char *name);
/* *caches is the caller's (names included): free with grid_cache_list_free. */
GRID_EXPORT int grid_cache_list(grid_t *g, grid_cache_config_t **caches, size_t *n);
GRID_EXPORT void grid_cache_list_free(grid_cache_config_t *caches, size_t n);

typedef struct grid_stats {
  char node_id[64];
  uint64_t entries;
  uint64_t memory_bytes;
  uint64_t memory_bytes_max;
  uint64_t ops;         /* requests served since start */
  uint64_t connections; /* client connections open now */
  uint64_t caches;
  uint64_t uptime_ms;
  uint64_t loop_ops;    /* of ops: those the node's event loops served (its
                           listeners' requests, other nodes') */
  uint64_t local_reads; /* of ops: reads an embedded cluster member served
                           in its application's thread, with no socket */
  uint64_t fill_bytes_in;    /* bytes of fills this node's copies received */
  uint64_t fill_delta_parts; /* partitions a restarted copy of this node
                                caught up by delta, from its disk */
  uint64_t disk_bytes_written; /* to its data_dir (persistent caches) */
} grid_stats_t;

GRID_EXPORT int grid_stats(grid_t *g, grid_stats_t *out);

/* One node as the partition map and ZooKeeper see it. */
typedef struct grid_node_status {
  char id[64];
  char addr[128];
  char zone[64];
  bool alive;          /* has a live ZooKeeper session */
  uint32_t primaries;  /* partitions it leads, all caches */
  uint32_t backups;    /* other copies it holds (OWNING or MOVING) */
  char http_addr[128]; /* its operations port (http_port: /metrics, the
                          dashboard); "": none */
  bool in_map;         /* the partition map names it (a node that just
                          joined is alive but not yet in it) */
  bool leaving;        /* handing its partitions over before it stops */
} grid_node_status_t;

/* A cache, or a placement group: caches of the same partitions, backups
 * and mode share one placement (and so the same counts). */
typedef struct grid_cache_status {
  char name[65];
  uint32_t partitions;
  uint32_t owning;     /* copies in sync */
  uint32_t moving;     /* copies being filled (rebalancing) */
  uint32_t handoff;    /* partitions whose primary is handing over */
  uint32_t lost;       /* partitions with no copy left */
  uint32_t waiting;    /* partitions whose in-sync copies are all on nodes
                          that are gone (a persistent cache's wait for
                          them, or for gridctl accept-loss) */
  char group[32];      /* the placement group ("p1024-b1", "p256-all") */
  uint32_t caches;     /* in groups[]: the caches it places; else 1 */
} grid_cache_status_t;

typedef struct grid_cluster_status {
  char cluster[64];    /* empty for a single node */
  char node_id[64];    /* the node that answered */
  char coordinator[64];
  uint64_t epoch;      /* of the partition map; 0: none yet */
  bool zk_connected;
  size_t nnodes;
  grid_node_status_t *nodes;
  size_t ncaches;
  grid_cache_status_t *caches;
  size_t ngroups;
  grid_cache_status_t *groups;
  /* The partition map as stored in ZooKeeper (a root and its chunks). */
  uint64_t map_bytes;          /* every znode of it */
  uint32_t map_znodes;
  uint32_t map_znode_bytes;    /* the largest */
  uint32_t map_znode_bytes_max;/* what one znode may hold */
  uint64_t map_bytes_max;      /* the owners of every group at most
                                  (setting map_bytes_max) */
} grid_cluster_status_t;

/* The cluster as the node g talks to sees it. *out is the caller's: free
 * with grid_cluster_status_free(). */
GRID_EXPORT int grid_cluster_status(grid_t *g, grid_cluster_status_t **out);
GRID_EXPORT void grid_cluster_status_free(grid_cluster_status_t *st);

/* Asks the node g's seed connection is to (the first of grid://...) to
 * leave its cluster gracefully: it hands its partitions over, then stops.
 * Returns once the node has started leaving. */
GRID_EXPORT int grid_leave(grid_t *g);

/* Every node makes a snapshot of its data named name (1..64 of
 * [A-Za-z0-9_.-]): a consistent point-in-time copy of its data_dir (a
 * RocksDB checkpoint: table files hard-linked) in data_dir/snapshots/name;
 * gridd --restore name brings a node back to it. *nodes (may be NULL):
 * how many nodes made it. An error when any node could not (one away, no
 * data_dir, the name taken). */
GRID_EXPORT int grid_snapshot_create(grid_t *g, const char *name, uint64_t *nodes);

/* The operator accepts that node node_id, gone from the cluster, is not
 * coming back: partitions only it held in sync are no longer waited for
 * (a persistent cache's start again, empty: what only that node had is
 * lost). GRID_EINVAL when the map names no such node or it is alive. */
GRID_EXPORT int grid_accept_loss(grid_t *g, const char *node_id);

/*
 * Users, on nodes with auth = on (an admin's handle; a cluster keeps them
 * in ZooKeeper, every node reads them). A password is stored only hashed
 * (PBKDF2-HMAC-SHA256, salted). Roles: "read", "write" (reads too),
 * "admin" (everything), each alone (every cache) or as "role:cache".
 * cert: the user may log in with a TLS client certificate whose common name
 * is its name (password may then be NULL). GRID_EEXIST, GRID_ENOTFOUND,
 * GRID_EINVAL (grid_last_error() says which name or role).
 */
GRID_EXPORT int grid_user_add(grid_t *g, const char *name, const char *password,
                              const char *const *roles, size_t n_roles, bool cert);
GRID_EXPORT int grid_user_del(grid_t *g, const char *name);
GRID_EXPORT int grid_user_passwd(grid_t *g, const char *name, const char *password);
GRID_EXPORT int grid_user_roles(grid_t *g, const char *name, const char *const *roles,
                                size_t n_roles);
typedef struct grid_user {
  char *name;
  char **roles;
  size_t n_roles;
  bool cert;              /* logs in with a TLS client certificate */
  bool password;          /* has a password */
} grid_user_t;
/* *users is the caller's: free with grid_user_list_free. */
GRID_EXPORT int grid_user_list(grid_t *g, grid_user_t **users, size_t *n);
GRID_EXPORT void grid_user_list_free(grid_user_t *users, size_t n);

/*
 * Asynchronous calls. The callback runs once: on the thread that reads the
 * connection at that moment (the library's own, or a thread waiting in a
 * synchronous call on the same handle) for a remote handle, or on the
 * calling thread before the call returns for an embedded one. A
 * value passed to a callback is valid only during the callback; copy what
 * must outlive it. Callbacks must not block.
 */
typedef void (*grid_get_cb)(int status, const grid_value_t *value, void *arg);
typedef void (*grid_write_cb)(int status, uint64_t version, void *arg);

GRID_EXPORT int grid_get_async(grid_t *g, const char *cache, const void *key,
                   size_t key_len, grid_get_cb cb, void *arg);
GRID_EXPORT int grid_put_async(grid_t *g, const char *cache, const void *key,
                   size_t key_len, const void *value, size_t value_len,
                   uint64_t ttl_ms, grid_write_cb cb, void *arg);
GRID_EXPORT int grid_delete_async(grid_t *g, const char *cache, const void *key,
                      size_t key_len, grid_write_cb cb, void *arg);

/*
 * Change streams: every committed change of a cache, as it happens, in
 * each partition's commit order, across reconnects, failover and
 * rebalancing. The library keeps a position per partition and subscribes
 * again where the partition's primary moved; events it has passed on
 * already are dropped, so each change reaches the application once.
 * Where the history needed to go on is gone (the node's per-partition
 * history, change_buffer_bytes, rolled over, or the subscriber fell too
 * far behind), a GRID_EVENT_GAP for that partition says so: re-read it
 * (grid_scan) to catch up. Nothing is dropped without a GAP.
 */
typedef enum grid_event_kind {
  GRID_EVENT_PUT = 1,     /* a value written: key, value, version */
  GRID_EVENT_DELETE = 2,  /* a key deleted */
  GRID_EVENT_EXPIRE = 3,  /* a key gone because its time to live ran out */
  GRID_EVENT_GAP = 4,     /* changes of this partition were lost to the
                             subscriber: the stream goes on after them */
  GRID_EVENT_SYNCED = 5,  /* (snapshot) every partition's entries were
                             passed on: what follows are changes. Once */
  GRID_EVENT_ENDED = 6,   /* the subscription ended (status says why:
                             GRID_ENOCACHE when the cache was dropped,
                             GRID_ENOMEM): no event follows. Once */
} grid_event_kind_t;

typedef struct grid_event {
  grid_event_kind_t kind;
  uint32_t partition;
  uint64_t version;       /* the entry's version after the change (0: GAP) */
  const void *key;        /* valid until the next grid_sub_next, or the end
                             of the callback */
  size_t key_len;
  const void *value;      /* GRID_EVENT_PUT, unless keys_only */
  size_t value_len;
  int64_t expire_at_ms;   /* GRID_EVENT_PUT: wall-clock expiry, 0: none */
  uint32_t op;            /* the write's op, as grid.proto numbers them
                             (0: not known) */
  int snapshot;           /* a GRID_EVENT_PUT of the initial snapshot: the
                             entry as it was when its partition's snapshot
                             was taken (its later changes follow) */
  int status;             /* GRID_EVENT_ENDED: why */
} grid_event_t;

/* The kind's name: "put", "delete", "expire", "gap", "synced", "ended"
 * ("?" for another value). Static. */
GRID_EXPORT const char *grid_event_name(grid_event_kind_t kind);

typedef void (*grid_event_cb)(const grid_event_t *ev, void *arg);

typedef struct grid_sub_options {
  const void *prefix;     /* only keys that start with it (NULL: every
                             key; an empty prefix is refused) */
  size_t prefix_len;
  const void *const *affinity_keys; /* or only keys with one of these
                             affinity keys ("{pump-7}"): only their
                             partitions are followed */
  const size_t *affinity_key_lens;
  size_t n_affinity_keys;
  int keys_only;          /* events without values */
  int snapshot;           /* a continuous query: first every matching entry
                             (GRID_EVENT_PUT with snapshot set), each
                             partition's as of one point in its history,
                             then the changes after that point, with no gap
                             and no repeat between the two; then
                             GRID_EVENT_SYNCED. A partition's entries are
                             passed on once its snapshot is whole (one cut
                             short by a move is taken again) */
  grid_event_cb callback; /* set: each event is passed to it on the
                             subscription's own thread (it must not call
                             grid_unsubscribe); NULL: grid_sub_next */
  void *arg;
  uint32_t queue_max;     /* grid_sub_next: events held for the caller at
                             most (0 = 65536); when full the library stops
                             reading and the node holds the rest (a GAP if
                             its history rolls over meanwhile) */
} grid_sub_options_t;

typedef struct grid_sub grid_sub_t;

/* Subscribes to cache's changes from now on (opts may be NULL: every key,
 * with values, pulled with grid_sub_next). 0 once every partition's
 * primary took the subscription (one that cannot be reached now is taken
 * later, from the same position); GRID_ENOCACHE, GRID_EINVAL (an empty
 * prefix, both filters, an empty affinity key), GRID_EKEYTOOBIG,
 * GRID_ELIMIT (the node's subscriptions_max or subscription_keys_max:
 * grid_last_error() says which). */
GRID_EXPORT int grid_subscribe(grid_t *g, const char *cache, const grid_sub_options_t *opts,
                               grid_sub_t **out);
/* The next event: 0 with *ev (valid until the next call or
 * grid_unsubscribe), GRID_ETIMEDOUT when none came within timeout_ms,
 * GRID_EINVAL for a subscription with a callback. After GRID_EVENT_ENDED,
 * its status; GRID_ECONN to a thread waiting while another unsubscribes. */
GRID_EXPORT int grid_sub_next(grid_sub_t *s, uint32_t timeout_ms, grid_event_t *ev);
/* Ends the subscription and frees it; its callback is not called after
 * this returns, and threads waiting in grid_sub_next return first. The
 * handle must outlive its subscriptions. */
GRID_EXPORT void grid_unsubscribe(grid_sub_t *s);

/* The id of the node whose copy of key's partition is its primary now, as
 * this handle's partition map says (it may lag a change of the map by a
 * moment), into node_id (node_id_len bytes, 64 are enough): as Ignite's
 * affinity mapKeyToNode. A single node leads every key. 0, GRID_ENOCACHE,
 * GRID_ENOTREADY (the partition has no primary now), or a call's error. */
GRID_EXPORT int grid_key_owner(grid_t *g, const char *cache, const void *key, size_t key_len,
                               char *node_id, size_t node_id_len);

/* The partition a key belongs to in a cache of `partitions` partitions: XXH3
 * of the key, or of its {affinity} part when it has one. */
GRID_EXPORT uint32_t grid_partition_of(const void *key, size_t key_len,
                           uint32_t partitions);

#ifdef __cplusplus
}
#endif
#endif /* GRID_H */
