/*
 * grid_types.h: the parts of grid's public face that the library's every
 * layer shares: the error codes and their words, the cache modes, the
 * version, and GRID_EXPORT. grid.h includes it; inside the project the node
 * and the common layer include it instead of grid.h, since they are below
 * the client API.
 */
#ifndef GRID_TYPES_H
#define GRID_TYPES_H

#ifdef __cplusplus
extern "C" {
#endif

#define GRID_VERSION_STRING "0.1.0"

/* Marks what libgrid exports. Everything else is compiled with
 * -fvisibility=hidden and localized in the installed archive, so that an
 * application with its own log_write or conn_close links with grid. */
#if defined(__GNUC__)
#define GRID_EXPORT __attribute__((visibility("default")))
#else
#define GRID_EXPORT
#endif

/* The error codes. The same numbers travel on the wire as reply statuses. */
#define GRID_ERRNO_MAP(XX)                                                     \
  XX(ENOTFOUND, -1, "key not found")                                           \
  XX(EEXIST, -2, "key already exists")                                         \
  XX(EVERSION, -3, "entry version does not match the expected version")        \
  XX(ENOCACHE, -4, "no such cache")                                            \
  XX(ECACHEEXISTS, -5, "a cache with this name already exists")                \
  XX(EKEYTOOBIG, -6, "key longer than the node's key_bytes_max")               \
  XX(EVALTOOBIG, -7, "value longer than the node's value_bytes_max")           \
  XX(EMEMLIMIT, -8, "node memory limit (memory_bytes_max) reached, write refused") \
  XX(ENOTNUM, -9, "value is not a 64-bit decimal integer")                     \
  XX(EOVERFLOW, -10, "counter would overflow a signed 64-bit integer")         \
  XX(EINVAL, -11, "invalid argument")                                          \
  XX(EBADOP, -12, "unknown operation")                                         \
  XX(EPROTO, -13, "protocol error: malformed frame or message")                \
  XX(EFRAMETOOBIG, -14, "frame longer than the node's frame_bytes_max")        \
  XX(EHANDSHAKE, -15, "handshake refused") \
  XX(ETIMEDOUT, -16, "operation timed out")                                    \
  XX(ECONN, -17, "cannot connect to the node, or the connection was lost")     \
  XX(EUNKNOWN, -18, "a write was sent but no reply came (timeout or lost connection): its outcome is unknown") \
  XX(ENOMEM, -19, "out of memory in this process")                             \
  XX(EBUSY, -20, "too many requests in flight on this handle")                 \
  XX(EBATCHTOOBIG, -21, "batch has more keys than the node's batch_keys_max")  \
  XX(ECONFIG, -22, "bad configuration")                                        \
  XX(EADDR, -23, "bad address: expected grid://host:port, grids://host:port or embedded:")        \
  XX(ELIMIT, -24, "a named node limit was reached")                            \
  XX(EINTERNAL, -25, "internal error")                                         \
  XX(ESTALE, -26, "request routed with a stale partition map: refresh and retry") \
  XX(ELOST, -27, "partition lost: no copy of it is left in the cluster")       \
  XX(ECLUSTER, -28, "cluster coordination (ZooKeeper) unavailable to this node") \
  XX(ENOTREADY, -29, "partition changing owner: retry shortly")               \
  XX(EWRONGTYPE, -30, "the key holds another type of value (a string, hash, list or set)") \
  XX(EDISK, -31, "the node's data directory refused the write (disk full, or an I/O error): nothing was written") \
  XX(ETLS, -32, "TLS refused: a certificate, the CA, the protocol or the port did not match") \
  XX(EAUTH, -33, "authentication failed: unknown user or wrong password, or none given to a node that requires one") \
  XX(ENOPERM, -34, "the user's roles do not permit this operation")

typedef enum {
  GRID_OK = 0,
#define GRID_ERR_ENUM_(name, code, text) GRID_##name = code,
  GRID_ERRNO_MAP(GRID_ERR_ENUM_)
#undef GRID_ERR_ENUM_
} grid_errno_t;

/* Words for a GRID_E* code (or 0). Never NULL; the string is static. */
GRID_EXPORT const char *grid_strerror(int err);
/* The code's name, e.g. "GRID_ENOTFOUND". Never NULL; static. */
GRID_EXPORT const char *grid_err_name(int err);

typedef enum {
  GRID_MODE_PARTITIONED = 0,
  GRID_MODE_REPLICATED = 1
} grid_cache_mode_t;

typedef enum { GRID_SYNC_FULL = 0, GRID_SYNC_PRIMARY = 1 } grid_sync_t;

/* When a persistent cache's writes reach the disk (README, "Persistence"):
 * ALWAYS before the write is acknowledged, on every in-sync copy;
 * EVERY_MS in a group commit at most fsync_every_ms later; NEVER when the
 * operating system writes its pages (a process crash loses nothing, a
 * machine's crash what the OS had not written). */
typedef enum { GRID_FSYNC_ALWAYS = 0, GRID_FSYNC_EVERY_MS = 1, GRID_FSYNC_NEVER = 2 } grid_fsync_t;

/* What an entry's value is: bytes (what grid_put writes), or one of the
 * collections the Redis protocol and grid's hash calls keep as one entry. */
typedef enum {
  GRID_TYPE_STRING = 0,
  GRID_TYPE_HASH = 1,
  GRID_TYPE_LIST = 2,
  GRID_TYPE_SET = 3,
} grid_value_type_t;
#define GRID_TYPE_MAX GRID_TYPE_SET

#ifdef __cplusplus
}
#endif
#endif /* GRID_TYPES_H */
