#include "conn.h"
#include "disk.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"

static void conn_resume(conn_t *c);
static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

typedef struct conn_write {
  uv_write_t req;
  conn_t *c;
  unsigned char *mem;          /* whole buffer, freed when written */
  size_t len;
} conn_write_t;

static int64_t conn_output_bytes_max(const conn_t *c) {
  return c->lp->node->cfg.output_bytes_max;
}

/* TLS: a loop thread's buffers for the bytes of one read, and for the
 * bytes of one write before the socket takes them (what it does not take
 * is copied for uv_write). */
#define CONN_TLS_BUF_BYTES 65536
static _Thread_local unsigned char conn_tls_in[CONN_TLS_BUF_BYTES];
static _Thread_local unsigned char conn_tls_out[CONN_TLS_BUF_BYTES];

static void conn_tls_send(conn_t *c);

/* ---- output ------------------------------------------------------------ */

unsigned char *conn_out_space(conn_t *c, size_t n) {
  if (c->wcap - c->wlen < n) {
    size_t cap = c->wcap ? c->wcap : 4096;
    while (cap - c->wlen < n) cap *= 2;
    unsigned char *b = realloc(c->wbuf, cap);
    if (!b) return NULL;
    c->wbuf = b;
    c->wcap = cap;
  }
  return c->wbuf + c->wlen;
}

void conn_out_commit(conn_t *c, size_t n) {
  GRID_ASSERT(c->wcap - c->wlen >= n);
  c->wlen += n;
}

int conn_out(conn_t *c, const void *p, size_t n) {
  unsigned char *at = conn_out_space(c, n);
  if (!at) return GRID_ENOMEM;
  if (n) memcpy(at, p, n);
  conn_out_commit(c, n);
  return 0;
}

int conn_open(const conn_t *c) {
  return !c->closed && !c->closing && !uv_is_closing((const uv_handle_t *)&c->tcp);
}

void conn_close_when_written(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  c->closing_since_ms = clock_mono_ms();
  c->in.len = 0; /* a failed connection's input is dropped */
}

void conn_pause(conn_t *c) {
  if (c->paused || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->paused = 1;
}

static void conn_on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

/* After a failure: once everything queued is written, half-close, so the
 * peer reads the error reply and then EOF; the cron closes the socket when
 * the peer does not within CONN_LINGER_MS. */
static void conn_shutdown_if_drained(conn_t *c) {
  if (!c->closing || c->inflight_bytes || c->wlen ||
      uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  if (c->tls && !c->tls_dead && !c->tls_notified && tls_sess_handshake_done(c->tls)) {
    /* TLS ends with close_notify, then the TCP half-close. */
    c->tls_notified = 1;
    tls_sess_close_notify(c->tls);
    conn_tls_send(c);
    if (c->inflight_bytes || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  }
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
    free(req);
    conn_close(c);
  }
}

static void conn_on_write(uv_write_t *req, int status) {
  conn_write_t *w = (conn_write_t *)req;
  conn_t *c = w->c;
  c->inflight_bytes -= w->len;
  free(w->mem);
  free(w);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->paused && c->inflight_bytes <= (size_t)conn_output_bytes_max(c) / 2 &&
      !uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_resume(c);
  }
  conn_shutdown_if_drained(c);
}

/* Hands len bytes at mem + off to uv_write, which then owns mem (malloc'd). */
static int conn_queue_write(conn_t *c, unsigned char *mem, size_t off, size_t len) {
  conn_write_t *w = malloc(sizeof *w);
  if (!w) {
    free(mem);
    conn_close(c);
    return -1;
  }
  w->c = c;
  w->mem = mem;
  w->len = len;
  uv_buf_t b = uv_buf_init((char *)mem + off, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write) != 0) {
    free(w->mem);
    free(w);
    conn_close(c);
    return -1;
  }
  c->inflight_bytes += len;
  return 0;
}

/* Sends what the TLS session has to send: through the thread's buffer
 * straight to the socket while it takes it all and nothing waits before
 * it, the rest copied for uv_write. */
static void conn_tls_send(conn_t *c) {
  while (tls_sess_pending(c->tls) > 0 && !uv_is_closing((uv_handle_t *)&c->tcp)) {
    size_t k = 0, off = 0;
    if (c->inflight_bytes == 0) {
      k = tls_sess_take(c->tls, conn_tls_out, sizeof conn_tls_out);
      uv_buf_t b = uv_buf_init((char *)conn_tls_out, (unsigned)k);
      int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
      if (n > 0) off = (size_t)n;
      else if (n != UV_EAGAIN) {
        conn_close(c);
        return;
      }
      if (off == k) continue;
    }
    size_t rest = k - off, more = tls_sess_pending(c->tls);
    unsigned char *mem = malloc(rest + more);
    if (!mem) {
      conn_close(c);
      return;
    }
    memcpy(mem, conn_tls_out + off, rest);
    tls_sess_take(c->tls, mem + rest, more);
    conn_queue_write(c, mem, 0, rest + more);
    return;
  }
}

/* The TLS session failed (its handshake, a record): say why in the log,
 * send its alert, and close. */
static void conn_tls_failed(conn_t *c, const char *what) {
  LOG_W("net", "\"%s\" peer=%s reason=\"%s\"", what, c->peer, tls_sess_error(c->tls));
  c->tls_dead = 1;
  conn_tls_send(c);
  conn_close_when_written(c);
  c->wlen = 0;
  conn_shutdown_if_drained(c);
}

/* Writes what the read callback gathered: straight to the socket when it
 * takes it all (the common case, no allocation), else through uv_write,
 * which then owns the buffer. Over TLS, encrypted first (once the
 * handshake is done: until then it waits). */
/* Before the loop sleeps: one sync covers the writes of every connection
 * whose replies wait for it (a group commit, as Redis's before-sleep AOF
 * write), then they leave. */
static void conn_settle_run(loop_t *lp, void *arg) {
  (void)arg;
  lp->conn_settle_deferred = 0;
  disk_settle();
  for (conn_t *c = lp->conns, *next; c; c = next) {
    next = c->next;
    if (!c->settle_wait) continue;
    c->settle_wait = 0;
    conn_flush(c);
    if (c->paused && !c->closing && !conn_output_full(c) &&
        !uv_is_closing((uv_handle_t *)&c->tcp))
      conn_resume(c);
  }
}

void conn_flush(conn_t *c) {
  if (c->wlen && disk_pending()) {
    /* Replies telling of writes to fsync = always caches leave once those
     * are on disk. */
    c->settle_wait = 1;
    if (!c->lp->conn_settle_deferred) {
      c->lp->conn_settle_deferred = 1;
      c->lp->conn_settle_task.fn = conn_settle_run;
      c->lp->conn_settle_task.arg = NULL;
      loop_defer(c->lp, &c->lp->conn_settle_task);
    }
    return;
  }
  if (c->wlen == 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_shutdown_if_drained(c);
    return;
  }
  if (c->tls) {
    if (c->tls_dead || !tls_sess_handshake_done(c->tls)) return;
    int rc = tls_sess_write(c->tls, c->wbuf, c->wlen);
    c->wlen = 0;
    if (rc != 0) {
      conn_tls_failed(c, "TLS write failed");
      return;
    }
    conn_tls_send(c);
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
  unsigned char *mem = c->wbuf; /* uv_write's now */
  size_t len = c->wlen - off;
  c->wbuf = NULL;
  c->wlen = c->wcap = 0;
  conn_queue_write(c, mem, off, len);
}

/* Whether the connection's replies, written or waiting, are over
 * output_bytes_max. */
int conn_output_full(const conn_t *c) {
  return c->wlen + c->inflight_bytes > (size_t)conn_output_bytes_max(c);
}

/* ---- input ------------------------------------------------------------- */

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn_t *c = h->data;
  /* The buffer holds at most one unfinished frame (or RESP command) plus
   * what arrived with it: bounded by frame_bytes_max (resp_command_bytes_max),
   * whatever the peer sends; the parsers refuse what would not fit. */
  size_t room = frame_buf_room(&c->in, c->proto->framed && !c->closing);
  if (c->tls && room) {
    /* Records are read into the thread's buffer and handed to the session
     * at once; plaintext goes to c->in as room allows, the rest waits in
     * the session (one read's worth: reading stops while c->in is full,
     * as it does without TLS). */
    buf->base = (char *)conn_tls_in;
    buf->len = sizeof conn_tls_in;
    return;
  }
  buf->base = room ? (char *)c->in.data + c->in.len : NULL;
  buf->len = room; /* 0: libuv reports UV_ENOBUFS to the read callback */
}

/* TLS: goes on with the handshake, then decrypts into c->in as room
 * allows and serves it, while the front end takes more. */
static void conn_tls_pump(conn_t *c) {
  for (;;) {
    if (c->tls_dead || uv_is_closing((uv_handle_t *)&c->tcp)) return;
    if (!tls_sess_handshake_done(c->tls)) {
      int h = tls_sess_handshake(c->tls);
      if (h == TLS_FAILED) {
        conn_tls_failed(c, "TLS handshake failed");
        return;
      }
      conn_tls_send(c);
      if (h != 1) return;
      LOG_D("net", "\"TLS handshake done\" peer=%s version=%s cipher=%s client_cn=\"%s\"",
            c->peer, tls_sess_version(c->tls), tls_sess_cipher(c->tls),
            tls_sess_peer_cn(c->tls));
      if (c->wlen) conn_flush(c); /* written before the handshake */
    }
    int got = 0;
    while (!c->closing) {
      size_t room = frame_buf_room(&c->in, c->proto->framed);
      if (room == 0) break;
      ssize_t n = tls_sess_read(c->tls, c->in.data + c->in.len, room);
      if (n > 0) {
        c->in.len += (size_t)n;
        got = 1;
        if (!tls_sess_readable(c->tls)) break; /* no read that would find nothing */
        continue;
      }
      if (n == TLS_AGAIN) break;
      if (n == TLS_CLOSED) {
        conn_close(c); /* as an EOF */
        return;
      }
      conn_tls_failed(c, "TLS connection failed");
      return;
    }
    conn_tls_send(c); /* what reading made the session say */
    if (!got || c->closing) return;
    c->proto->input(c);
    if (c->held || c->paused || c->closing) return;
  }
}

/* TLS bytes arrived. A first byte that cannot start a TLS record is a
 * plain client on the TLS port: it is told so in its own protocol. */
static void conn_tls_read(conn_t *c, const unsigned char *p, size_t n) {
  if (!c->tls_fed) {
    c->tls_fed = 1;
    if (p[0] != 0x16) { /* a handshake record */
      LOG_W("net", "\"plain connection on a TLS port: refused\" peer=%s", c->peer);
      tls_sess_free(c->tls);
      c->tls = NULL;
      c->proto->fail(c, GRID_ETLS,
                     "this port speaks TLS: connect with TLS (grids://, redis-cli --tls)");
      conn_flush(c);
      return;
    }
  }
  if (tls_sess_feed(c->tls, p, n) != 0) {
    conn_close(c);
    return;
  }
  conn_tls_pump(c);
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
  conn_t *c = s->data;
  if (nread < 0) {
    if (nread != UV_EOF && !c->closing)
      LOG_D("net", "\"connection error\" peer=%s error=\"%s\"", c->peer,
            uv_strerror((int)nread));
    conn_close(c);
    return;
  }
  if (c->tls && !c->tls_dead && !tls_sess_handshake_done(c->tls)) {
    /* Even when refused (connections_max): the handshake goes on, so the
     * client reads why. */
    if (nread > 0) conn_tls_read(c, (const unsigned char *)buf->base, (size_t)nread);
    return;
  }
  if (c->closing) {
    c->in.len = 0; /* a failed connection's input is dropped */
    return;
  }
  if (c->tls) {
    if (nread > 0) conn_tls_read(c, (const unsigned char *)buf->base, (size_t)nread);
    return;
  }
  c->in.len += (size_t)nread;
  c->proto->input(c);
}

/* Reading goes on once neither the output nor the front end holds it. */
static void conn_resume(conn_t *c) {
  c->paused = 0;
  if (c->frame_started_ms) c->frame_started_ms = clock_mono_ms();
  c->proto->input(c); /* what waited while output was full */
  if (c->tls && !c->paused && !c->held) conn_tls_pump(c); /* what the session holds */
  if (c->paused || c->held || c->closing || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) != 0)
    conn_close(c);
}

void conn_hold(conn_t *c) {
  c->held = 1;
  if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_read_stop((uv_stream_t *)&c->tcp);
}

void conn_release(conn_t *c) {
  c->held = 0;
  if (c->paused || uv_is_closing((uv_handle_t *)&c->tcp)) return; /* once output drains */
  conn_resume(c);
}

/* ---- life cycle -------------------------------------------------------- */

static void conn_free(conn_t *c) {
  if (c->proto->free) c->proto->free(c);
  tls_sess_free(c->tls);
  frame_buf_free(&c->in);
  free(c->wbuf);
  free(c);
}

static void conn_on_close(uv_handle_t *h) {
  conn_t *c = h->data;
  loop_t *lp = c->lp;
  if (c->prev) c->prev->next = c->next;
  else lp->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->counted) atomic_fetch_sub(&lp->node->connections, 1);
  LOG_D("net", "\"connection closed\" peer=%s", c->peer);
  c->closed = 1;
  if (c->refs == 0) conn_free(c);
}

void conn_close(conn_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

void conn_ref(conn_t *c) { c->refs++; }

void conn_unref(conn_t *c) {
  GRID_ASSERT(c->refs > 0);
  if (--c->refs == 0 && c->closed) conn_free(c);
}

/* "ip:port" of the peer, for logs, and the ip alone. */
static void conn_name_peer(conn_t *c) {
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  strcpy(c->peer, "?");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0) return;
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

static void conn_on_refused(uv_handle_t *h) {
  loop_t *lp = h->data;
  lp->refusing = 0;
  uv_stream_t *server = lp->refuse_next;
  lp->refuse_next = NULL;
  if (server && !uv_is_closing((uv_handle_t *)server))
    conn_accept(lp, server, lp->refuse_next_proto, lp->refuse_next_tls);
}

/* No memory for a connection: it is accepted on the loop's spare handle
 * and closed at once (the client sees the connection closed), since a
 * listener that leaves a connection unaccepted accepts no other. While the
 * spare closes, the listener waits, and is served when it has closed. */
static void conn_refuse(loop_t *lp, uv_stream_t *server, const conn_proto_t *proto,
                        tls_ctx_t *tls) {
  if (lp->refusing) {
    lp->refuse_next = server;
    lp->refuse_next_proto = proto;
    lp->refuse_next_tls = tls;
    return;
  }
  lp->refusing = 1;
  uv_tcp_init(&lp->uv, &lp->refused);
  lp->refused.data = lp;
  if (uv_accept(server, (uv_stream_t *)&lp->refused) == 0)
    LOG_W("net", "\"out of memory for a new connection: closing it\" loop=%d", lp->index);
  uv_close((uv_handle_t *)&lp->refused, conn_on_refused);
}

void conn_accept(loop_t *lp, uv_stream_t *server, const conn_proto_t *proto, tls_ctx_t *tls) {
  node_t *n = lp->node;
  conn_t *c = calloc(1, sizeof *c);
  if (c && tls && !(c->tls = tls_sess_new(tls, NULL))) {
    free(c);
    c = NULL;
  }
  if (!c) {
    conn_refuse(lp, server, proto, tls);
    return;
  }
  c->lp = lp;
  c->proto = proto;
  frame_buf_init(&c->in, CONN_RBUF_BYTES, (size_t)n->cfg.frame_bytes_max);
  uv_tcp_init(&lp->uv, &c->tcp);
  c->tcp.data = c;
  c->next = lp->conns;
  if (lp->conns) lp->conns->prev = c;
  lp->conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  conn_name_peer(c);
  if (proto->open(c) != 0) {
    conn_close(c);
    return;
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
    proto->fail(c, GRID_ELIMIT, detail);
    conn_flush(c);
    return;
  }
  LOG_D("net", "\"connection accepted\" peer=%s loop=%d proto=%s", c->peer, lp->index,
        proto->name);
}

/* Housekeeping with work bounded by the number of connections: handshake
 * and frame deadlines, and the last close of failed connections. */
void conn_cron(loop_t *lp, int64_t now) {
  const config_t *cfg = &lp->node->cfg;
  conn_t *next;
  for (conn_t *c = lp->conns; c; c = next) {
    next = c->next;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    if (c->closing) {
      if (now - c->closing_since_ms >= CONN_LINGER_MS) conn_close(c);
      continue;
    }
    if (c->tls && !c->tls_dead && !tls_sess_handshake_done(c->tls)) {
      if (now - c->accepted_ms >= cfg->handshake_timeout_ms) {
        LOG_W("net", "\"TLS handshake not completed within handshake_timeout_ms: closing\" "
              "peer=%s handshake_timeout_ms=%lld", c->peer, (long long)cfg->handshake_timeout_ms);
        conn_close(c);
      }
      continue;
    }
    if (c->held) continue; /* its front end keeps the time */
    char detail[96];
    if (!c->handshaken && now - c->accepted_ms >= cfg->handshake_timeout_ms) {
      snprintf(detail, sizeof detail, "no handshake within handshake_timeout_ms (%lld)",
               (long long)cfg->handshake_timeout_ms);
      c->proto->fail(c, GRID_ETIMEDOUT, detail);
      conn_flush(c);
    } else if (c->frame_started_ms && !c->paused &&
               now - c->frame_started_ms >= cfg->frame_timeout_ms) {
      /* A paused connection's unfinished frame waits for the node, not for
       * the peer: only a running one can be stalled by its peer. */
      snprintf(detail, sizeof detail, "frame not completed within frame_timeout_ms (%lld)",
               (long long)cfg->frame_timeout_ms);
      c->proto->fail(c, GRID_ETIMEDOUT, detail);
      conn_flush(c);
    }
  }
}

void conn_close_all(loop_t *lp) {
  for (conn_t *c = lp->conns; c; c = c->next) conn_close(c);
}
