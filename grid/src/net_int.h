/*
 * net_int.h: what net.c shares with the files that work on its loops
 * (peer.c: links to other nodes; route.c: requests in a cluster). Only
 * net*.c, peer.c and route.c include it.
 */
#ifndef GRID_NET_INT_H
#define GRID_NET_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "arena.h"
#include "frame.h"
#include "grid.pb-c.h"
#include "net.h"
#include "pmap.h"
#include "store.h"

#define NET_BACKLOG 511
#define NET_RBUF_BYTES 16384    /* a connection's read buffer at rest */
#define NET_LINGER_MS 1000      /* a failed connection is closed by then */
#define NET_CRON_MS_MAX 100

typedef struct net_loop net_loop_t;
typedef struct peer peer_t;

/* One client connection. Owned by its loop; freed once it is closed and no
 * deferred request (forwarded, or waiting for the cluster thread) still
 * refers to it. */
typedef struct conn {
  uv_tcp_t tcp;
  net_loop_t *lp;
  struct conn *prev, *next;    /* the loop's list of connections */
  frame_buf_t in;              /* bytes received, not yet a whole frame
                                  (or RESP command) */
  unsigned char *wbuf;         /* replies gathered during one read callback */
  size_t wlen, wcap;
  size_t inflight_bytes;       /* handed to uv_write, not yet written */
  int64_t accepted_ms;
  int64_t frame_started_ms;    /* when the unfinished frame began; 0: none */
  int64_t closing_since_ms;
  unsigned handshaken : 1;
  unsigned closing : 1;        /* failed: input is dropped, then closed */
  unsigned paused : 1;         /* reading stopped: too much unsent output */
  unsigned counted : 1;        /* counted in node->connections */
  unsigned peer_role : 1;      /* the peer said hello as a grid node */
  unsigned closed : 1;         /* libuv closed it; freed when refs is 0 */
  unsigned map_wait : 1;       /* a peer's record names a map not read here
                                  yet: reading stops, the frame waits */
  unsigned map_wait_over : 1;  /* ... for longer than forward_timeout_ms:
                                  the record is refused */
  int64_t map_wait_since_ms;
  char peer_id[64];            /* a peer's node id, from its hello */
  struct resp_conn *resp;      /* a Redis-protocol client's state, or NULL */
  int refs;                    /* deferred requests that will answer on it */
  char peer[64];               /* "ip:port", for logs */
  char ip[48];                 /* the peer's address alone */
} conn_t;

/* Work handed to a loop from another thread. The node lives in the
 * sender's own struct (as libuv's requests do), so posting it cannot fail:
 * a handoff that could fail must fail before it is posted. */
typedef struct net_task {
  struct net_task *next;
  void (*fn)(net_loop_t *lp, void *arg);
  void *arg;
} net_task_t;

struct net_loop {
  uv_loop_t loop;
  uv_thread_t thread;
  uv_tcp_t listener;
  uv_tcp_t resp_listener;      /* the Redis-protocol port (when resp_on) */
  int resp_on;
  uv_async_t stop_async;
  uv_timer_t cron;
  net_t *net;
  int index;
  conn_t *conns;
  arena_t arena;               /* one request at a time per loop */
  store_view_t view;           /* this loop's caches, found without a lock */
  uv_async_t inbox_async;      /* wakes the loop for posted tasks */
  pthread_mutex_t inbox_lock;
  net_task_t *inbox_head, *inbox_tail;
  net_task_t stop_task;        /* the stop's first step */
  pmap_t *pmap;                /* this loop's copy of the partition map:
                                  cluster.c's, set on this loop only */
  int self;                    /* this node's index in pmap, or -1 */
  peer_t *peers;               /* links to other nodes, made on demand */
  struct repl_loop *repl;      /* replication state of the partitions this
                                  loop owns (cluster mode) */
  _Atomic int64_t handoffs;    /* requests other loops handed to this one,
                                  not answered yet (repl.c; at most
                                  loop_handoffs_max) */
};

struct net {
  node_t *node;
  int nloops;
  int port;
  net_loop_t *loops;
  pthread_mutex_t stop_lock;   /* the stop's first step, on every loop */
  pthread_cond_t stop_cond;
  int stopped_first;
  int resp_port;               /* 0: no RESP listener */
};

typedef struct net_write {
  uv_write_t req;
  conn_t *c;
  unsigned char *mem;          /* whole buffer, freed when written */
  size_t len;
} net_write_t;


/* Runs t->fn(lp, t->arg) on loop `index`'s thread, exactly once; callable
 * from any thread. t is the caller's and must stay valid until fn runs;
 * it may be posted again from then on. */
void net_post(net_t *net, int index, net_task_t *t);

/* Deferred replies: a request answered later (after a forward, or after
 * the cluster thread) holds a reference to its connection. */
void conn_ref(conn_t *c);
void conn_unref(conn_t *c);
/* Sends rp (its id already set) on c and flushes, unless c has closed or
 * failed meanwhile. */
void conn_reply(conn_t *c, const Grid__Reply *rp);
/* Raw output (the RESP front end): append, write what is gathered, close
 * once written, stop reading while the output is full. */
int conn_out(conn_t *c, const void *p, size_t n);
/* The first off bytes of the read buffer were served: drop them. */
void conn_consumed(conn_t *c, size_t off);
void conn_flush(conn_t *c);
void conn_close_when_written(conn_t *c);
void conn_shutdown_if_drained(conn_t *c);
int conn_output_full(const conn_t *c);
void conn_pause(conn_t *c);
/* A peer's record waits for a map this node has not read yet (route):
 * reading stops until the loop gets a newer map or forward_timeout_ms
 * passes. */
void conn_wait_map(conn_t *c);

#endif
