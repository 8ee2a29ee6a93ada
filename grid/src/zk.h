/*
 * zk: the node's ZooKeeper session, through the ZooKeeper C client (mt).
 * Every call here blocks until ZooKeeper answers (or the client library
 * gives up), so only the cluster thread calls them, never an event loop.
 * ZooKeeper's error codes are turned into GRID_E* here, at the boundary.
 */
#ifndef GRID_ZK_H
#define GRID_ZK_H

#include <stddef.h>
#include <stdint.h>

#define ZK_DATA_BYTES_MAX (1024 * 1024) /* ZooKeeper's own znode limit */

typedef struct zk zk_t;

/* Called on the ZooKeeper client's thread for every session change and
 * every watch that fires: it should only wake the cluster thread. */
typedef void (*zk_event_cb)(void *arg);

/* Starts a session with hosts ("h1:p1,h2:p2"); the session is usable once
 * zk_connected() says so. auth ("user:password", or NULL): ZooKeeper digest
 * credentials; the znodes made are then readable and writable with them
 * alone, and a znode they do not open answers GRID_EAUTH. */
int zk_open(const char *hosts, int session_timeout_ms, zk_event_cb cb, void *arg,
            const char *auth, zk_t **out);
void zk_close(zk_t *z);
int zk_connected(zk_t *z);
/* The session has expired: it cannot come back; open a new one. */
int zk_expired(zk_t *z);
/* The session timeout ZooKeeper granted. */
int zk_session_timeout_ms(zk_t *z);

/* A round trip to the ZooKeeper server that does not block: done(arg, rc)
 * runs once, on the ZooKeeper client's completion thread, with 0 when the
 * server answered within this session (so the session was alive when the
 * request left), else an error. Returns an error (done never runs) or 0. */
typedef void (*zk_ping_cb)(void *arg, int rc);
int zk_ping(zk_t *z, zk_ping_cb done, void *arg);

enum { ZK_PERSISTENT = 0, ZK_EPHEMERAL = 1, ZK_SEQUENTIAL = 2,
       ZK_OPEN = 4 /* open to all whatever the credentials (a shared parent) */ };

/* Creates path and its missing parents (persistent, empty). */
int zk_ensure_path(zk_t *z, const char *path);
/* GRID_EEXIST when it exists. created (may be NULL) receives the real path
 * (with the sequence number for ZK_SEQUENTIAL). */
int zk_create(zk_t *z, const char *path, const void *data, size_t len,
              int flags, char *created, size_t created_len);
/* *data is malloc'd (the caller frees it); *version is the znode's data
 * version. watch: one event when the data changes or the znode goes.
 * GRID_ENOTFOUND when it does not exist. */
int zk_get(zk_t *z, const char *path, int watch, unsigned char **data,
           size_t *len, int *version);
/* expected_version -1: any. GRID_EVERSION when it does not match. */
int zk_set(zk_t *z, const char *path, const void *data, size_t len,
           int expected_version, int *new_version);
int zk_delete(zk_t *z, const char *path, int expected_version);
/* *names is a malloc'd array of malloc'd strings: free with
 * zk_children_free(). watch: one event when the children change.
 * cversion (may be NULL): how many times children were made or deleted
 * under path, ever. */
int zk_children(zk_t *z, const char *path, int watch, char ***names,
                size_t *n, int *cversion);
void zk_children_free(char **names, size_t n);
/* How many times children were made or deleted under path, ever. */
int zk_cversion(zk_t *z, const char *path, int *cversion);

#endif
