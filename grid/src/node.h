/*
 * node: one grid node: its store, its network side (when it listens), its
 * housekeeping. gridd runs one; an embedded grid_t runs one in the
 * application's process.
 */
#ifndef GRID_NODE_H
#define GRID_NODE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

typedef struct loops loops_t;
typedef struct cluster cluster_t;
struct disk;

typedef struct node {
  config_t cfg;                    /* settled: config_finish() was applied */
  store_t *store;
  loops_t *loops;                  /* the event loops; NULL when cfg.listen
                                      is off */
  int port;                        /* the bound native port, 0: none */
  int resp_port;                   /* the bound RESP port, 0: none */
  int tls_port, tls_resp_port;     /* the bound TLS ports, 0: none */
  struct tls_ctx *tls_server;      /* the TLS listeners' context (tls.h);
                                      NULL without TLS */
  struct tls_ctx *tls_client;      /* links to other nodes over TLS
                                      (tls_replication); NULL: plain */
  struct auth *auth;               /* users and roles (auth.h) */
  struct http *http;               /* the operations port (http.h); NULL:
                                      none */
  int http_port;                   /* its bound port, 0: none */
  cluster_t *cluster;              /* NULL for a single node (no zk) */
  struct disk *disk;               /* data_dir's RocksDB (disk.h); NULL
                                      without a data_dir */
  _Atomic uint64_t fill_bytes_in;  /* fills this node's copies received */
  _Atomic uint64_t fill_delta_parts; /* ... partitions caught up by delta */
  int disk_failed;                 /* a persistent cache failed to load at
                                      start (its error) */
  char advertise[128];             /* host:port other nodes reach us at */
  char advertise_tls[128];         /* ... at our TLS port; "": none */
  char advertise_http[128];        /* ... at our http_port; "": none */
  char node_id[64];
  uint64_t incarnation;            /* random per start: a node restarted
                                      under the same id is a new node */
  int64_t started_ms;              /* monotonic */
  _Atomic uint64_t ops;            /* requests served outside the loops */
  /* Requests the loops served: set by the network side before its loops
   * run, so that ops (below it) can count them without calling up. */
  uint64_t (*loops_ops_served)(void *arg);
  void *loops_ops_arg;
  _Atomic uint64_t connections;    /* client connections open */
  _Atomic uint64_t local_reads;    /* of ops: an embedded cluster member's
                                      application's reads served in its own
                                      thread */
  _Atomic int64_t subscriptions;   /* change-stream subscriptions served
                                      (subscriptions_max) */
  struct pubsub *pubsub;           /* Redis pub/sub's registry (pubsub.h);
                                      NULL without a listener */
  _Atomic unsigned notify_flags;   /* notify_keyspace_events (notify.h),
                                      changed by CONFIG SET */
  _Atomic uint64_t resp_errors;    /* RESP error replies written (INFO's
                                      total_error_replies) */
  _Atomic uint64_t resp_rejected;  /* RESP commands refused before running:
                                      unknown, wrong arity, not allowed now
                                      (INFO's rejected_calls) */
  pthread_t cron_thread;           /* TTL sweep */
  pthread_mutex_t cron_lock;
  pthread_cond_t cron_cond;
  int cron_stop;
  void (*on_left)(void *arg);      /* gridd: once a graceful leave is done */
  /* gridd: the node cannot go on (ZooKeeper refused its credentials):
   * why, in words; the process stops with an error. NULL: it keeps
   * trying. Set after the node started, read by its cluster thread. */
  void (*_Atomic on_fatal)(const char *why);
} node_t;

/* Starts a node from cfg (copied; config_finish() is applied). On success
 * *out is the caller's, to be stopped with node_stop(). On failure err
 * holds words for the user. */
int node_start(const config_t *cfg, node_t **out, char *err, size_t err_len);
/* Bound port, or 0 when not listening. */
int node_port(const node_t *n);
/* Stops the loops, closes every connection and frees the node. */
void node_stop(node_t *n);
/* Reads the TLS certificate, key and CA files again (SIGHUP): new
 * connections use them, open ones keep theirs. On failure the old ones stay
 * and err says why. */
int node_tls_reload(node_t *n, char *err, size_t err_len);

#endif
