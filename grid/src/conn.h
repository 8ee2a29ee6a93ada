/*
 * conn: a client connection's socket, on one loop for its life: its read
 * buffer (bounded: frame_bytes_max, or resp_command_bytes_max for RESP),
 * its output (gathered during a read callback and written together, with
 * backpressure past output_bytes_max), its half-close after a failure, and
 * its deadlines (handshake_timeout_ms, frame_timeout_ms). What the bytes
 * mean is its front end's: a table of callbacks (native.c, resp.c) given
 * when the listener accepts it.
 */
#ifndef GRID_CONN_H
#define GRID_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "frame.h"
#include "loop.h"
#include "tls.h"

#define CONN_RBUF_BYTES 16384  /* a connection's read buffer at rest */
#define CONN_LINGER_MS 1000    /* a failed connection is closed by then */

typedef struct conn conn_t;

/* A front end: what a connection's bytes mean. */
typedef struct conn_proto {
  const char *name;            /* for logs */
  int framed;                  /* input is length-prefixed frames */
  /* The front end's per-connection state (c->fe), or an error: the
   * connection is then closed at once. */
  int (*open)(conn_t *c);
  /* Bytes arrived in c->in (or reading resumed): serve what is whole and
   * drop it with conn_consumed. */
  void (*input)(conn_t *c);
  /* A connection-level error (a deadline passed, a frame too long): say
   * it in the protocol's words, then conn_close_when_written. */
  void (*fail)(conn_t *c, int status, const char *detail);
  /* c is freed: free c->fe. */
  void (*free)(conn_t *c);
} conn_proto_t;

/* Owned by its loop; freed once it is closed and no deferred request
 * (forwarded, or waiting for the cluster thread) still refers to it. */
struct conn {
  uv_tcp_t tcp;
  loop_t *lp;
  const conn_proto_t *proto;
  void *fe;                    /* the front end's state */
  struct conn *prev, *next;    /* the loop's list of connections */
  frame_buf_t in;              /* bytes received, not yet served */
  unsigned char *wbuf;         /* replies gathered during one read callback */
  size_t wlen, wcap;
  size_t inflight_bytes;       /* handed to uv_write, not yet written */
  int64_t accepted_ms;
  int64_t frame_started_ms;    /* when the unfinished input began; 0: none */
  int64_t closing_since_ms;
  unsigned handshaken : 1;     /* the front end may serve requests */
  unsigned closing : 1;        /* failed: input is dropped, then closed */
  unsigned paused : 1;         /* reading stopped: too much unsent output */
  unsigned held : 1;           /* reading stopped by the front end */
  unsigned counted : 1;        /* counted in node->connections */
  unsigned closed : 1;         /* libuv closed it; freed when refs is 0 */
  unsigned settle_wait : 1;    /* its output waits for the disk's sync */
  unsigned tls_fed : 1;        /* TLS: bytes have arrived */
  unsigned tls_dead : 1;       /* TLS: failed, nothing more to say in it */
  unsigned tls_notified : 1;   /* TLS: close_notify sent */
  tls_sess_t *tls;             /* NULL: plain TCP */
  int refs;                    /* deferred requests that will answer on it */
  char peer[64];               /* "ip:port", for logs */
  char ip[48];                 /* the peer's address alone */
};

/* Accepts a connection on server (a listener of lp) for front end proto,
 * over TLS when tls is not NULL. Connections past connections_max are
 * refused. */
void conn_accept(loop_t *lp, uv_stream_t *server, const conn_proto_t *proto, tls_ctx_t *tls);

/* Output: append, and write what is gathered. conn_out_space returns room
 * for n bytes at the end of the output (NULL when out of memory), which
 * conn_out_commit then counts. */
int conn_out(conn_t *c, const void *p, size_t n);
unsigned char *conn_out_space(conn_t *c, size_t n);
void conn_out_commit(conn_t *c, size_t n);
void conn_flush(conn_t *c);
/* Whether unsent output is over output_bytes_max. */
int conn_output_full(const conn_t *c);
/* Stops reading until the output drains to half of output_bytes_max. */
void conn_pause(conn_t *c);
/* The front end stops reading (a request waits for something) and goes on
 * later: conn_release calls proto->input again first. */
void conn_hold(conn_t *c);
void conn_release(conn_t *c);
/* The first off bytes of the read buffer were served: drop them. */
void conn_consumed(conn_t *c, size_t off);
/* Input is dropped from now on; the connection is half-closed once its
 * output is written and closed after CONN_LINGER_MS at most. */
void conn_close_when_written(conn_t *c);
/* Closes now. */
void conn_close(conn_t *c);
/* Whether replies may still go out on c. */
int conn_open(const conn_t *c);

/* Deferred replies: a request answered later holds a reference. */
void conn_ref(conn_t *c);
void conn_unref(conn_t *c);

/* Loop hooks (node.c registers them): deadlines, and closing every
 * connection when the loop stops. */
void conn_cron(loop_t *lp, int64_t now_ms);
void conn_close_all(loop_t *lp);

#endif
