/*
 * client_int.h: what the client's files share. The public calls (client.c)
 * build a Request and hand it to one of two transports: remote.c (a TCP
 * connection to a node) or the embedded node (ops_execute in this process).
 */
#ifndef GRID_CLIENT_INT_H
#define GRID_CLIENT_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "arena.h"
#include "grid.h"
#include "op.h"
#include "grid.pb-c.h"

typedef struct embedded embedded_t;
typedef struct remote remote_t;
typedef struct router router_t;

struct grid {
  uint32_t timeout_ms;
  embedded_t *embedded; /* embedded mode */
  router_t *router; /* remote mode */
  struct near *near; /* near_cache_bytes set: the near cache */
  struct client_retry *retry; /* remote: async requests to send again */
  uint32_t async_max;         /* grid_options_t.async_max, 0 replaced */
  /* Async calls accepted whose callback has not run yet: in flight on a
   * connection or on the retry list. client_call_async refuses past
   * async_max; client_async_finish (or the accepting call's own failure)
   * gives the place back. */
  _Atomic uint32_t async_n;
};

/* A reply a sync call got: rp is valid until client_reply_free(). */
typedef struct client_reply {
  Grid__Reply *rp;
  Grid__Reply local;  /* embedded: rp points here */
  arena_t arena;      /* embedded: what local points into */
  int unpacked;       /* remote: rp was unpacked with malloc */
} client_reply_t;

/* client.c: what grid_last_error() says on this thread from now. */
void client_set_error(const char *words);

/* remote.c: frees what a reply holds (remote or embedded). */
void client_reply_free(client_reply_t *r);

/* Called once per async request: status is a transport error (then rp is
 * NULL) or 0 with the node's reply in rp, valid during the call only. */
typedef void (*client_done_fn)(void *arg, int status, const Grid__Reply *rp);

/* remote.c: a connection's TLS (NULL on a plain one): the session, used by
 * a writer and a reader at once under its lock, and counted references
 * (the connection, a reader, a writer), so that a thread still in it when
 * the connection is replaced finds it whole. */
typedef struct client_link client_link_t;
struct tls_ctx;
/* Over fd (connected, blocking), the TLS handshake within deadline_ms; the
 * server's certificate must name server_name. On failure the reason is in
 * grid_last_error(). */
int client_link_open(struct tls_ctx *ctx, const char *server_name, int fd, int64_t deadline_ms,
                     client_link_t **out);
void client_link_ref(client_link_t *l);
void client_link_unref(client_link_t *l);
/* Sends all n bytes (blocking, within the socket's SO_SNDTIMEO): 0,
 * GRID_ETIMEDOUT or GRID_ECONN. l NULL: plain. */
int client_link_send(client_link_t *l, int fd, const void *p, size_t n);
/* As recv(2): plaintext > 0, 0 when the connection ended, -1 with errno
 * (EAGAIN: nothing whole yet). Plaintext the session holds comes first,
 * without touching the socket. flags: recv's (MSG_DONTWAIT). */
ssize_t client_link_recv(client_link_t *l, int fd, void *p, size_t n, int flags);
/* The client's TLS context for opts (grids://): CA, certificate, key. */
int client_tls_ctx(const grid_options_t *opts, struct tls_ctx **out);

int remote_open(const char *host, int port, const grid_options_t *opts, struct tls_ctx *tls,
                remote_t **out);
void remote_close(remote_t *r);
/* Sends rq (its id is set here) and waits for the reply up to timeout_ms.
 * 0 with out filled, or a transport error (GRID_ETIMEDOUT, GRID_ECONN,
 * GRID_EUNKNOWN for a write that was sent, GRID_EBUSY, GRID_EFRAMETOOBIG). */
int remote_call(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                client_reply_t *out);
/* Sends rq; done runs on the reader thread when the reply (or an error)
 * comes. A nonzero return means done will never run. */
int remote_call_async(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                      client_done_fn done, void *arg);

/* A connection of its own (a subscription's), handshake done: *fd and
 * *link (NULL without tls) are the caller's; *reply_max the longest frame
 * to accept on it. */
int remote_dial_fd(const char *host, int port, const grid_options_t *opts, struct tls_ctx *tls,
                   uint32_t timeout_ms, int *fd, client_link_t **link, uint64_t *reply_max);
/* "host:port" of r's node. */
void remote_addr(const remote_t *r, char *out, size_t len);

/* router.c: uri_list is "h1:p1,h2:p2" (after grid:// or grids://: tls). */
int router_open(const char *uri_list, const grid_options_t *opts, int tls, router_t **out);
/* What the router's connections are made with, for connections of their
 * own (subscriptions): its options (strings the router's) and TLS context
 * (NULL: plain). */
void router_link_opts(router_t *rt, grid_options_t *opts, struct tls_ctx **tls);
void router_close(router_t *rt);
/* The connection rq should go to (its epoch is stamped for a direct one). */
remote_t *router_pick(router_t *rt, Grid__Request *rq, uint32_t timeout_ms);
/* A reply carried this epoch: a newer one makes the map stale. */
void router_saw_epoch(router_t *rt, uint64_t epoch);
void router_mark_stale(router_t *rt);
/* Node index (in the router's map) of the primary of key, or -1. */
int router_primary_of(router_t *rt, const char *cache, const void *key, size_t len);
/* The id of the node leading key's partition in the router's map
 * (refreshed first when stale): 0, GRID_ENOCACHE (the map does not place
 * the cache), GRID_ENOTREADY (no primary now). */
int router_owner_of(router_t *rt, const char *cache, const void *key, size_t len,
                    uint32_t timeout_ms, char *node_id, size_t node_id_len);
/* Whether the handle talks to a cluster (it has a map). */
int router_clustered(router_t *rt);
/* Where a cache's partitions are led: for each partition the index in
 * addrs of its primary's "host:port", or -1 (none now). Without a map (a
 * single node) every partition is the seed's, and *partitions is 0 (the
 * node says how many). refresh fetches the map first. 0, GRID_ENOCACHE
 * (the map does not place it), GRID_ENOMEM. */
typedef struct router_place {
  uint64_t epoch;
  uint32_t partitions;
  int *primary;                  /* partitions entries */
  size_t naddrs;
  char (*addrs)[128];            /* PMAP_ADDR_MAX */
} router_place_t;
int router_place(router_t *rt, const char *cache, int refresh, uint32_t timeout_ms,
                 router_place_t *out);
void router_place_free(router_place_t *p);
/* Splits "host:port" (host may be [v6]). */
int router_split(const char *addr, char *host, size_t host_len, int *port);

/* embedded.c: the node in this process. embedded_open starts it from
 * opts' config; advertise receives the node's cluster address, or "" when
 * it is not in a cluster. */
int embedded_open(const grid_options_t *opts, embedded_t **out, char *advertise,
                  size_t advertise_len);
void embedded_close(embedded_t *e);
/* ops_execute on the node: rp points into rq, a, or static memory. */
void embedded_call(embedded_t *e, const Grid__Request *rq, Grid__Reply *rp, arena_t *a);
/* An embedded cluster member's read of a key whose partition it leads,
 * from its committed state in the calling thread; GRID_ENOTREADY: ask the
 * key's primary as any client does. *value is malloc'd and the caller's. */
int embedded_get_led(embedded_t *e, const char *cache, const void *key, size_t key_len,
                     void **value, size_t *value_len, uint64_t *version);
/* grid_get_prefix of an embedded cluster member, in the calling thread, as
 * embedded_get_led reads: GRID_ENOTREADY sends it the way of any client's
 * (also for what the node refuses, which it words). *entries as
 * grid_get_prefix's. */
int embedded_get_prefix_led(embedded_t *e, const char *cache, const void *prefix,
                            size_t prefix_len, uint32_t max, grid_entry_t **entries, size_t *n);
/* Whether the embedded node is a cluster member leading key's partition now
 * (its map's view: it may change the next moment, and then the node
 * forwards what it was handed); *part: the key's partition. */
int embedded_leads(embedded_t *e, const char *cache, const void *key, size_t key_len,
                   uint32_t *part);
/* Runs rq on the embedded node's loop that owns partition part, as a
 * client's request (routed, replicated, fenced), without a socket; waits
 * up to timeout_ms. 0 with *out (grid__reply__free_unpacked), or
 * GRID_ETIMEDOUT, GRID_EUNKNOWN (a write without its reply), GRID_ENOMEM. */
int embedded_call_loop(embedded_t *e, const Grid__Request *rq, uint32_t part, uint32_t timeout_ms,
                       Grid__Reply **out);
/* Reads key straight from the store; *value is malloc'd and the caller's. */
int embedded_get(embedded_t *e, const char *cache, const void *key, size_t key_len,
                 void **value, size_t *value_len, uint64_t *version);

/* sub.c: partition p's life in subscription s, from any thread: odd while
 * a connection reads p's changes, and moved on each time that starts or
 * stops (so a value seen at one odd life is not told of a change only as
 * long as the life stays the same). 0 before the partitions are known. */
uint32_t sub_life(const grid_sub_t *s, uint32_t p);
/* The cache's partitions as s knows them (0: not yet). */
uint32_t sub_partitions(const grid_sub_t *s);

/* near.c: a handle's near cache (grid_options_t.near_cache_bytes). */
typedef struct near near_t;
int near_open(grid_t *g, const grid_options_t *opts, near_t **out);
void near_close(near_t *n);
/* A hit: 0 with the value copied out (malloc'd, NUL-terminated), else
 * GRID_ENOTFOUND (not held, or not known to be current). */
int near_get(near_t *n, const char *cache, const void *key, size_t key_len, void **value,
             size_t *len, uint64_t *version);
/* Before a get goes to the node: where the key's partition stands, to be
 * given to near_fill with what the get read. 0: the cache is not held
 * near (or its stream is not up): no fill. */
typedef struct near_ticket {
  void *cache;
  uint32_t part, life, gen;
} near_ticket_t;
int near_ticket(near_t *n, const char *cache, const void *key, size_t key_len,
                near_ticket_t *t);
/* Keeps what the get read, unless the partition changed since the ticket. */
void near_fill(near_t *n, const near_ticket_t *t, const void *key, size_t key_len,
               const void *value, size_t len, uint64_t version);
/* A write through this handle: the key's entry goes first. */
void near_forget(near_t *n, const char *cache, const void *key, size_t key_len);

/* embedded.c: a change stream of a cache of the embedded node outside a
 * cluster (sub.c reads it as it reads a node's frames). */
typedef struct embedded_watch embedded_watch_t;
typedef struct embedded_change {
  int kind;                 /* 1 put, 2 delete, 3 expire */
  uint8_t how;              /* the write's op */
  uint8_t type;             /* put: the value's type (grid_value_type_t) */
  uint64_t counter, version;
  int64_t expire_at_ms;
  const void *key;
  size_t key_len;
  const void *value;
  size_t value_len;
} embedded_change_t;
/* What a subscription keeps: keep(ctx, key) is called with the store's
 * partition locked (it must not call the store), before anything is
 * copied. */
typedef struct embedded_filter {
  int (*keep)(void *ctx, const void *key, size_t key_len);
  void *ctx;
  int keys_only;
} embedded_filter_t;
int embedded_watch_open(embedded_t *e, const char *cache, embedded_watch_t **out,
                        uint32_t *partitions);
void embedded_watch_close(embedded_watch_t *ew);
/* Waits up to timeout_ms for a change to be announced: 1 if one was. */
int embedded_watch_wait(embedded_watch_t *ew, uint32_t timeout_ms);
/* The partitions marked since the last take. */
void embedded_watch_take(embedded_watch_t *ew, void (*fn)(void *ctx, uint32_t p), void *ctx);
/* Whether the cache was dropped (or made again) under the watch. */
int embedded_watch_dropped(embedded_watch_t *ew);
/* Where "from now" starts in p. */
uint64_t embedded_watch_now(embedded_watch_t *ew, uint32_t p);
/* p's changes after `after` that f keeps, as store_changes_read, copied
 * out and passed on once the store's lock is released (cb may block or
 * write): 1 for a GAP (*next is where it goes on), -1 when memory ran out
 * (*next: what was passed; read again later), else 0. hint: the
 * reader's, zeroed at first. */
int embedded_watch_read(embedded_watch_t *ew, uint32_t p, uint64_t after, size_t max,
                        const embedded_filter_t *f,
                        int (*cb)(void *ctx, const embedded_change_t *ch), void *ctx,
                        uint64_t *next, uint64_t *upto, uint64_t hint[3]);
/* p's snapshot (entries at or before the returned counter), passed on
 * once copied out (cb may block or write); *failed when memory ran out
 * (the snapshot is not whole: take it again). */
uint64_t embedded_watch_snapshot(embedded_watch_t *ew, uint32_t p, const embedded_filter_t *f,
                                 int (*cb)(void *ctx, const embedded_change_t *ch), void *ctx,
                                 int *failed);

#endif
