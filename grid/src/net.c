#include "net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "arena.h"
#include "clock.h"
#include "frame.h"
#include "grid_types.h"
#include "grid.pb-c.h"
#include "log.h"
#include "node.h"
#include "ops.h"
#include "store.h"
#include "net_int.h"
#include "peer.h"
#include "repl.h"
#include "route.h"
#include "resp.h"
#include "cluster.h"

static void conn_close(conn_t *c);
static void conn_resume(conn_t *c);
static void net_on_connection(uv_stream_t *server, int status);

/* ---- output ------------------------------------------------------------ */

static int conn_reserve(conn_t *c, size_t more) {
  if (c->wcap - c->wlen >= more) return 0;
  size_t cap = c->wcap ? c->wcap : 4096;
  while (cap - c->wlen < more) cap *= 2;
  unsigned char *b = realloc(c->wbuf, cap);
  if (!b) return GRID_ENOMEM;
  c->wbuf = b;
  c->wcap = cap;
  return 0;
}

int conn_out(conn_t *c, const void *p, size_t n) {
  if (conn_reserve(c, n) != 0) return GRID_ENOMEM;
  memcpy(c->wbuf + c->wlen, p, n);
  c->wlen += n;
  return 0;
}

void conn_close_when_written(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  c->closing_since_ms = clock_mono_ms();
  c->in.len = 0;
}

void conn_pause(conn_t *c) {
  if (c->paused || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->paused = 1;
}

/* Appends one framed message to the connection's output. */
static int conn_send(conn_t *c, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  GRID_ASSERT(n <= UINT32_MAX);
  if (conn_reserve(c, FRAME_HEADER_BYTES + n) != 0) return GRID_ENOMEM;
  frame_put_header(c->wbuf + c->wlen, (uint32_t)n);
  size_t packed = protobuf_c_message_pack(m, c->wbuf + c->wlen + FRAME_HEADER_BYTES);
  GRID_ASSERT(packed == n);
  c->wlen += FRAME_HEADER_BYTES + n;
  return 0;
}

static void conn_on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

/* After a failure: once everything queued is written, half-close, so the
 * peer reads the error reply and then EOF; the cron closes the socket when
 * the peer does not within NET_LINGER_MS. */
void conn_shutdown_if_drained(conn_t *c) {
  if (!c->closing || c->inflight_bytes || c->wlen ||
      uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
    free(req);
    conn_close(c);
  }
}

static void conn_on_write(uv_write_t *req, int status) {
  net_write_t *w = (net_write_t *)req;
  conn_t *c = w->c;
  c->inflight_bytes -= w->len;
  free(w->mem);
  free(w);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->paused && c->inflight_bytes <= (size_t)c->lp->net->node->cfg.output_bytes_max / 2 &&
      !uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_resume(c);
  }
  conn_shutdown_if_drained(c);
}

/* Writes what the read callback gathered: straight to the socket when it
 * takes it all (the common case, no allocation), else through uv_write,
 * which then owns the buffer. */
void conn_flush(conn_t *c) {
  if (c->wlen == 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_shutdown_if_drained(c);
    return;
  }
  size_t off = 0;
  if (c->inflight_bytes == 0) {
    uv_buf_t b = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n > 0) off = (size_t)n;
    else if (n != UV_EAGAIN) {
      c->wlen = 0;
      conn_close(c);
      return;
    }
  }
  if (off == c->wlen) {
    c->wlen = 0;
    conn_shutdown_if_drained(c);
    return;
  }
  net_write_t *w = malloc(sizeof *w);
  if (!w) {
    conn_close(c);
    return;
  }
  w->c = c;
  w->mem = c->wbuf;
  w->len = c->wlen - off;
  uv_buf_t b = uv_buf_init((char *)c->wbuf + off, (unsigned)w->len);
  c->wbuf = NULL;
  c->wlen = c->wcap = 0;
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write) != 0) {
    free(w->mem);
    free(w);
    conn_close(c);
    return;
  }
  c->inflight_bytes += w->len;
}

/* Sends a connection-level error and stops serving the connection. Before
 * the handshake the error goes in a HelloReply, which is what the peer
 * expects to read first. */
static void conn_fail(conn_t *c, int status, const char *detail) {
  if (c->closing) return;
  if (c->resp) {
    char why[256];
    snprintf(why, sizeof why, "%s%s%s", grid_strerror(status), detail ? ": " : "",
             detail ? detail : "");
    resp_fail(c, why);
    return;
  }
  arena_t *a = &c->lp->arena;
  LOG_W("net", "\"closing connection\" peer=%s error=%s detail=\"%s\"", c->peer,
        grid_err_name(status), detail ? detail : "");
  if (!c->handshaken) {
    Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
    Grid__Reply tmp = GRID__REPLY__INIT;
    ops_reply_error(&tmp, status, detail, a);
    hr.status = status;
    hr.message = tmp.message;
    hr.version = FRAME_PROTOCOL_VERSION;
    conn_send(c, &hr.base);
  } else {
    Grid__Reply rp = GRID__REPLY__INIT;
    ops_reply_error(&rp, status, detail, a);
    conn_send(c, &rp.base);
  }
  c->closing = 1;
  c->closing_since_ms = clock_mono_ms();
  c->in.len = 0;
}

/* ---- input ------------------------------------------------------------- */

static void conn_on_hello(conn_t *c, const unsigned char *p, size_t len) {
  node_t *n = c->lp->net->node;
  Grid__Hello *h = grid__hello__unpack(&c->lp->arena.pb, len, p);
  if (!h) {
    conn_fail(c, GRID_EPROTO, "the first frame must be a Hello message");
    return;
  }
  if (h->magic != FRAME_MAGIC) {
    conn_fail(c, GRID_EHANDSHAKE, "wrong magic: not a grid client");
    return;
  }
  if (h->version != FRAME_PROTOCOL_VERSION) {
    char detail[64];
    snprintf(detail, sizeof detail, "client speaks version %u, node speaks %d",
             h->version, FRAME_PROTOCOL_VERSION);
    conn_fail(c, GRID_EHANDSHAKE, detail);
    return;
  }
  if (h->role == GRID__ROLE__ROLE_PEER) {
    /* Until nodes authenticate (TLS), a peer must at least be a member of
     * the cluster, connecting from the address it advertises: records from
     * anyone else would bypass every client check. */
    char why[256];
    int rc = GRID_EHANDSHAKE;
    if (!n->cluster)
      snprintf(why, sizeof why, "this node is not in a cluster: it has no peers");
    else
      rc = cluster_peer_check(n->cluster, h->client_name ? h->client_name : "", c->ip, why,
                              sizeof why);
    if (rc != 0) {
      LOG_W("net", "\"peer refused\" peer=%s reason=\"%s\"", c->peer, why);
      conn_fail(c, rc, why);
      return;
    }
  }
  Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
  hr.node_id = n->node_id;
  hr.version = FRAME_PROTOCOL_VERSION;
  hr.features = 0;
  hr.frame_bytes_max = (uint64_t)n->cfg.frame_bytes_max;
  if (conn_send(c, &hr.base) != 0) {
    conn_close(c);
    return;
  }
  c->handshaken = 1;
  c->peer_role = h->role == GRID__ROLE__ROLE_PEER;
  if (c->peer_role) snprintf(c->peer_id, sizeof c->peer_id, "%s", h->client_name ? h->client_name : "");
  LOG_D("net", "\"client said hello\" peer=%s name=\"%s\"", c->peer,
        h->client_name ? h->client_name : "");
}

/* Serves one request frame. 1 when it must wait for a newer map (the
 * frame is not consumed), else 0. */
static int conn_on_request(conn_t *c, const unsigned char *p, size_t len) {
  arena_t *a = &c->lp->arena;
  Grid__Request *rq = grid__request__unpack(&a->pb, len, p);
  if (!rq) {
    conn_fail(c, GRID_EPROTO, "a request frame does not decode as a Request");
    return 0;
  }
  if (c->lp->net->node->cluster) {
    int r = route_request(c, rq);
    if (r == ROUTE_WAIT_MAP) {
      conn_wait_map(c);
      return 1;
    }
    if (r == ROUTE_TAKEN) return 0; /* answered now or later */
  }
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(c->lp->net->node, &c->lp->view, rq, &rp, a);
  if (conn_send(c, &rp.base) != 0) conn_close(c);
  return 0;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn_t *c = h->data;
  /* The buffer holds at most one unfinished frame (or RESP command) plus
   * what arrived with it: bounded by frame_bytes_max (resp_command_bytes_max),
   * whatever the peer sends; the parsers refuse what would not fit. */
  size_t room = frame_buf_room(&c->in, !c->resp && !c->closing);
  buf->base = room ? (char *)c->in.data + c->in.len : NULL;
  buf->len = room; /* 0: libuv reports UV_ENOBUFS to the read callback */
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Whether the connection's replies, written or waiting, are over
 * output_bytes_max. */
int conn_output_full(const conn_t *c) {
  return c->wlen + c->inflight_bytes > (size_t)c->lp->net->node->cfg.output_bytes_max;
}

/* Serves the whole frames in the read buffer. It stops early when the
 * replies pass output_bytes_max (a pipeline of gets of large values can
 * make far more output than input): reading pauses until the peer has
 * taken half of them, and the frames left are served on resume. */
static void conn_process(conn_t *c) {
  node_t *n = c->lp->net->node;
  size_t off = 0;
  if (c->resp) {
    resp_input(c);
    return;
  }
  while (!c->closing && !uv_is_closing((uv_handle_t *)&c->tcp)) {
    if (conn_output_full(c)) {
      /* Try to make room first: the socket may take it all at once. */
      conn_flush(c);
      if (conn_output_full(c) || uv_is_closing((uv_handle_t *)&c->tcp)) break;
    }
    const unsigned char *payload;
    size_t plen, flen;
    size_t at = off;
    frame_result_t r = frame_buf_next(&c->in, &at, &payload, &plen, &flen);
    if (r == FRAME_NEED_MORE) break;
    if (r == FRAME_TOO_BIG) {
      char detail[96];
      snprintf(detail, sizeof detail, "%zu bytes announced, at most %lld",
               flen, (long long)n->cfg.frame_bytes_max);
      conn_fail(c, GRID_EFRAMETOOBIG, detail);
      break;
    }
    if (c->handshaken) {
      if (conn_on_request(c, payload, plen)) {
        arena_reset(&c->lp->arena);
        break; /* the frame waits for a newer map */
      }
    } else {
      conn_on_hello(c, payload, plen);
    }
    arena_reset(&c->lp->arena);
    off += flen;
  }
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  conn_consumed(c, off);
  conn_flush(c);
  if (!c->closing && conn_output_full(c)) conn_pause(c);
}

void conn_consumed(conn_t *c, size_t off) {
  if (c->closing) {
    c->in.len = 0; /* a failed connection's input is dropped */
  } else if (off > 0) {
    frame_buf_consume(&c->in, off);
    /* What is left is the start of the next request: its clock starts. */
    c->frame_started_ms = c->in.len ? clock_mono_ms() : 0;
  } else if (c->frame_started_ms == 0 && c->in.len > 0) {
    c->frame_started_ms = clock_mono_ms();
  }
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  conn_t *c = s->data;
  if (nread < 0) {
    if (nread != UV_EOF && !c->closing)
      LOG_D("net", "\"connection error\" peer=%s error=\"%s\"", c->peer,
            uv_strerror((int)nread));
    conn_close(c);
    return;
  }
  if (c->closing) {
    c->in.len = 0; /* a failed connection's input is dropped */
    return;
  }
  c->in.len += (size_t)nread;
  conn_process(c);
}

static void conn_resume(conn_t *c) {
  c->paused = 0;
  if (c->frame_started_ms) c->frame_started_ms = clock_mono_ms();
  conn_process(c); /* frames that waited while output was full */
  if (c->paused || c->map_wait || c->closing || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) != 0)
    conn_close(c);
}

void conn_wait_map(conn_t *c) {
  if (!c->map_wait) {
    c->map_wait = 1;
    c->map_wait_since_ms = clock_mono_ms();
  }
  if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_read_stop((uv_stream_t *)&c->tcp);
}

/* A waiting connection goes on: its frame is looked at again. */
static void conn_map_resume(conn_t *c) {
  c->map_wait = 0;
  if (c->paused) return; /* resumed once its output drains */
  conn_resume(c);
}

void net_loop_on_map(net_loop_t *lp) {
  conn_t *next;
  for (conn_t *c = lp->conns; c; c = next) {
    next = c->next;
    if (c->map_wait && !uv_is_closing((uv_handle_t *)&c->tcp)) conn_map_resume(c);
  }
}

/* ---- life cycle -------------------------------------------------------- */

static void conn_free(conn_t *c) {
  resp_conn_free(c->resp);
  frame_buf_free(&c->in);
  free(c->wbuf);
  free(c);
}

static void conn_on_close(uv_handle_t *h) {
  conn_t *c = h->data;
  net_loop_t *lp = c->lp;
  if (c->prev) c->prev->next = c->next;
  else lp->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->counted) atomic_fetch_sub(&lp->net->node->connections, 1);
  LOG_D("net", "\"connection closed\" peer=%s", c->peer);
  c->closed = 1;
  if (c->refs == 0) conn_free(c);
}

static void conn_close(conn_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

void conn_ref(conn_t *c) { c->refs++; }

void conn_unref(conn_t *c) {
  GRID_ASSERT(c->refs > 0);
  if (--c->refs == 0 && c->closed) conn_free(c);
}

void conn_reply(conn_t *c, const Grid__Reply *rp) {
  if (c->closed || c->closing || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (conn_send(c, &rp->base) != 0) {
    conn_close(c);
    return;
  }
  conn_flush(c);
}

/* ---- tasks from other threads ----------------------------------------- */

void net_post(net_t *net, int index, net_task_t *t) {
  net_loop_t *lp = &net->loops[index];
  t->next = NULL;
  pthread_mutex_lock(&lp->inbox_lock);
  if (lp->inbox_tail) lp->inbox_tail->next = t;
  else lp->inbox_head = t;
  lp->inbox_tail = t;
  pthread_mutex_unlock(&lp->inbox_lock);
  uv_async_send(&lp->inbox_async);
}

static void net_on_inbox(uv_async_t *a) {
  net_loop_t *lp = a->data;
  pthread_mutex_lock(&lp->inbox_lock);
  net_task_t *t = lp->inbox_head;
  lp->inbox_head = lp->inbox_tail = NULL;
  pthread_mutex_unlock(&lp->inbox_lock);
  while (t) {
    net_task_t *next = t->next; /* fn may post t again */
    t->fn(lp, t->arg);
    t = next;
  }
}

static void net_on_connection(uv_stream_t *server, int status) {
  net_loop_t *lp = server->data;
  node_t *n = lp->net->node;
  if (status < 0) {
    LOG_W("net", "\"accept failed\" error=\"%s\"", uv_strerror(status));
    return;
  }
  conn_t *c = calloc(1, sizeof *c);
  if (!c) return;
  c->lp = lp;
  frame_buf_init(&c->in, NET_RBUF_BYTES, (size_t)n->cfg.frame_bytes_max);
  uv_tcp_init(&lp->loop, &c->tcp);
  c->tcp.data = c;
  c->next = lp->conns;
  if (lp->conns) lp->conns->prev = c;
  lp->conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  if (server == (uv_stream_t *)&lp->resp_listener) {
    /* A Redis-protocol client: no handshake, commands at once. */
    c->resp = resp_conn_new(n->cluster != NULL);
    c->handshaken = 1;
    frame_buf_set_limit(&c->in, (size_t)n->cfg.resp_command_bytes_max + NET_RBUF_BYTES);
    if (!c->resp) {
      conn_close(c);
      return;
    }
  }
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  strcpy(c->peer, "?");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
    snprintf(c->ip, sizeof c->ip, "%s", ip);
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->accepted_ms = clock_mono_ms();
  if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) != 0) {
    conn_close(c);
    return;
  }
  uint64_t before = atomic_fetch_add(&n->connections, 1);
  c->counted = 1;
  if ((int64_t)before >= n->cfg.connections_max) {
    char detail[64];
    snprintf(detail, sizeof detail, "connections_max (%lld) reached",
             (long long)n->cfg.connections_max);
    conn_fail(c, GRID_ELIMIT, detail);
    conn_flush(c);
    return;
  }
  LOG_D("net", "\"connection accepted\" peer=%s loop=%d", c->peer, lp->index);
}

/* Housekeeping with work bounded by the number of connections: handshake
 * and frame deadlines, and the last close of failed connections. */
static void net_on_cron(uv_timer_t *t) {
  net_loop_t *lp = t->data;
  node_t *n = lp->net->node;
  int64_t now = clock_mono_ms();
  store_view_refresh(&lp->view); /* let go of dropped caches */
  peer_cron(lp, now);
  repl_cron(lp, now);
  conn_t *next;
  for (conn_t *c = lp->conns; c; c = next) {
    next = c->next;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    if (c->closing) {
      if (now - c->closing_since_ms >= NET_LINGER_MS) conn_close(c);
      continue;
    }
    if (c->map_wait) {
      /* The map a peer's record names never came: refuse the record. */
      if (now - c->map_wait_since_ms >= n->cfg.forward_timeout_ms) {
        c->map_wait_over = 1;
        conn_map_resume(c);
      }
      continue;
    }
    char detail[96];
    if (!c->handshaken && now - c->accepted_ms >= n->cfg.handshake_timeout_ms) {
      snprintf(detail, sizeof detail, "no handshake within handshake_timeout_ms (%lld)",
               (long long)n->cfg.handshake_timeout_ms);
      conn_fail(c, GRID_ETIMEDOUT, detail);
      conn_flush(c);
    } else if (c->frame_started_ms && !c->paused &&
               now - c->frame_started_ms >= n->cfg.frame_timeout_ms) {
      /* A paused connection's unfinished frame waits for the node, not for
       * the peer: only a running one can be stalled by its peer. */
      snprintf(detail, sizeof detail, "frame not completed within frame_timeout_ms (%lld)",
               (long long)n->cfg.frame_timeout_ms);
      conn_fail(c, GRID_ETIMEDOUT, detail);
      conn_flush(c);
    }
  }
}

static void net_close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Stopping, first step, on every loop before any closes: what waits for
 * another node fails, so that every deferred reply is answered (possibly
 * through another loop's inbox, which the second step drains). */
static void net_stop_first(net_loop_t *lp, void *arg) {
  (void)arg;
  repl_close(lp);
  peer_close_all(lp); /* fails what was forwarded */
  net_t *net = lp->net;
  pthread_mutex_lock(&net->stop_lock);
  net->stopped_first++;
  pthread_cond_broadcast(&net->stop_cond);
  pthread_mutex_unlock(&net->stop_lock);
}

static void net_on_stop(uv_async_t *a) {
  net_loop_t *lp = a->data;
  net_on_inbox(&lp->inbox_async); /* tasks posted before the stop */
  peer_close_all(lp);
  for (conn_t *c = lp->conns; c; c = c->next) conn_close(c);
  uv_walk(&lp->loop, net_close_walk_cb, lp);
}

static void net_loop_run(void *arg) {
  net_loop_t *lp = arg;
  uv_run(&lp->loop, UV_RUN_DEFAULT);
}

/* Opens a listening socket on addr; reuseport lets the loops share it. */
static int net_bind_socket(const struct sockaddr *addr, int reuseport,
                           char *err, size_t err_len) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_len, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
  if (bind(fd, addr, len) != 0) {
    snprintf(err, err_len, "cannot bind: %s", strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

static void net_set_port(struct sockaddr_storage *ss, int port) {
  if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* Resolves bind:port into ss, and picks the port with a plain bind (which
 * fails when another process holds it: a SO_REUSEPORT group alone would
 * share it silently). */
static int net_pick_address(const char *bind_addr, int64_t port, struct sockaddr_storage *ss,
                            int *port_out, char *err, size_t err_len) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(bind_addr, (int)port, (struct sockaddr_in *)ss) != 0 &&
      uv_ip6_addr(bind_addr, (int)port, (struct sockaddr_in6 *)ss) != 0) {
    snprintf(err, err_len, "bind address \"%s\" is not an IPv4 or IPv6 address", bind_addr);
    return GRID_ECONFIG;
  }
  char why[128];
  int probe = net_bind_socket((struct sockaddr *)ss, 0, why, sizeof why);
  if (probe < 0) {
    snprintf(err, err_len, "%s:%lld: %s", bind_addr, (long long)port, why);
    return GRID_ECONN;
  }
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  getsockname(probe, (struct sockaddr *)&bound, &bl);
  *port_out = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  close(probe);
  net_set_port(ss, *port_out);
  return 0;
}

/* One loop's listening socket on ss, in the SO_REUSEPORT group. */
static int net_listen_on(net_loop_t *lp, uv_tcp_t *h, const struct sockaddr_storage *ss,
                         char *err, size_t err_len) {
  char why[128];
  uv_tcp_init(&lp->loop, h);
  h->data = lp;
  int fd = net_bind_socket((const struct sockaddr *)ss, 1, why, sizeof why);
  int rc = 0;
  if (fd >= 0 && (rc = uv_tcp_open(h, fd)) != 0) close(fd);
  if (fd >= 0 && rc == 0) rc = uv_listen((uv_stream_t *)h, NET_BACKLOG, net_on_connection);
  if (fd < 0 || rc != 0) {
    snprintf(err, err_len, "%s", fd < 0 ? why : uv_strerror(rc));
    return GRID_ECONN;
  }
  return 0;
}

static uint64_t net_ops_served_cb(void *arg) { return net_ops_served(arg); }

int net_start(node_t *n, net_t **out, char *err, size_t err_len) {
  struct sockaddr_storage ss, rss;
  int port, resp_port = 0;
  int rc = net_pick_address(n->cfg.bind, n->cfg.port, &ss, &port, err, err_len);
  if (rc != 0) return rc;
  if (n->cfg.resp_port >= 0) {
    rc = net_pick_address(n->cfg.bind, n->cfg.resp_port, &rss, &resp_port, err, err_len);
    if (rc != 0) return rc;
  }

  net_t *net = calloc(1, sizeof *net);
  if (!net) return GRID_ENOMEM;
  net->node = n;
  net->nloops = (int)n->cfg.loops;
  pthread_mutex_init(&net->stop_lock, NULL);
  pthread_cond_init(&net->stop_cond, NULL);
  net->port = port;
  net->resp_port = n->cfg.resp_port >= 0 ? resp_port : 0;
  net->loops = calloc((size_t)net->nloops, sizeof *net->loops);
  if (!net->loops) {
    free(net);
    return GRID_ENOMEM;
  }
  int64_t cron_ms = n->cfg.handshake_timeout_ms < n->cfg.frame_timeout_ms
                        ? n->cfg.handshake_timeout_ms
                        : n->cfg.frame_timeout_ms;
  cron_ms /= 4;
  if (cron_ms < 1) cron_ms = 1;
  if (cron_ms > NET_CRON_MS_MAX) cron_ms = NET_CRON_MS_MAX;
  /* The node's pointer is set before any loop runs: loops read it. */
  *out = net;
  n->loops_ops_served = net_ops_served_cb;
  n->loops_ops_arg = net;
  int started = 0;
  for (int i = 0; i < net->nloops; i++) {
    net_loop_t *lp = &net->loops[i];
    lp->net = net;
    lp->index = i;
    arena_init(&lp->arena, 16384);
    if (store_view_init(&lp->view, n->store) != 0) {
      snprintf(err, err_len, "out of memory");
      rc = GRID_ENOMEM;
      arena_close(&lp->arena);
      break;
    }
    uv_loop_init(&lp->loop);
    uv_async_init(&lp->loop, &lp->stop_async, net_on_stop);
    lp->stop_async.data = lp;
    uv_async_init(&lp->loop, &lp->inbox_async, net_on_inbox);
    lp->inbox_async.data = lp;
    pthread_mutex_init(&lp->inbox_lock, NULL);
    lp->self = -1;
    uv_timer_init(&lp->loop, &lp->cron);
    lp->cron.data = lp;
    uv_timer_start(&lp->cron, net_on_cron, (uint64_t)cron_ms, (uint64_t)cron_ms);
    char why[160];
    rc = net_listen_on(lp, &lp->listener, &ss, why, sizeof why);
    if (rc == 0) snprintf(why, sizeof why, "cannot start loop thread %d", i);
    else snprintf(err, err_len, "%s:%d: %s", n->cfg.bind, port, why);
    if (rc == 0 && n->cfg.resp_port >= 0) {
      rc = net_listen_on(lp, &lp->resp_listener, &rss, why, sizeof why);
      lp->resp_on = rc == 0;
      if (rc != 0) snprintf(err, err_len, "RESP %s:%d: %s", n->cfg.bind, resp_port, why);
    }
    if (rc == 0 && uv_thread_create(&lp->thread, net_loop_run, lp) != 0) {
      snprintf(err, err_len, "cannot start loop thread %d", i);
      rc = GRID_ENOMEM;
    }
    if (rc != 0) {
      uv_walk(&lp->loop, net_close_walk_cb, lp);
      uv_run(&lp->loop, UV_RUN_DEFAULT);
      uv_loop_close(&lp->loop);
      arena_close(&lp->arena);
      store_view_close(&lp->view);
      pthread_mutex_destroy(&lp->inbox_lock);
      break;
    }
    started++;
  }
  if (rc != 0) {
    net->nloops = started;
    net_stop(net);
    *out = NULL;
    return rc;
  }
  return 0;
}

int net_port(const net_t *net) { return net->port; }

int net_resp_port(const net_t *net) { return net->resp_port; }

int net_loops(const net_t *net) { return net->nloops; }

uint64_t net_ops_served(net_t *net) {
  uint64_t total = 0;
  for (int i = 0; i < net->nloops; i++)
    total += atomic_load_explicit(&net->loops[i].view.ops, memory_order_relaxed);
  return total;
}

void net_stop(net_t *net) {
  net->node->loops_ops_served = NULL; /* loops are gone: nothing to count */
  for (int i = 0; i < net->nloops; i++) {
    net->loops[i].stop_task = (net_task_t){.fn = net_stop_first};
    net_post(net, i, &net->loops[i].stop_task);
  }
  pthread_mutex_lock(&net->stop_lock);
  while (net->stopped_first < net->nloops) pthread_cond_wait(&net->stop_cond, &net->stop_lock);
  pthread_mutex_unlock(&net->stop_lock);
  for (int i = 0; i < net->nloops; i++) uv_async_send(&net->loops[i].stop_async);
  for (int i = 0; i < net->nloops; i++) {
    net_loop_t *lp = &net->loops[i];
    uv_thread_join(&lp->thread);
    int rc = uv_loop_close(&lp->loop);
    GRID_ASSERT(rc == 0);
    arena_close(&lp->arena);
    store_view_close(&lp->view);
    pthread_mutex_destroy(&lp->inbox_lock);
  }
  pthread_mutex_destroy(&net->stop_lock);
  pthread_cond_destroy(&net->stop_cond);
  free(net->loops);
  free(net);
}
