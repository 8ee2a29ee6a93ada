#include "peer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "clock.h"
#include "frame.h"
#include "grid_types.h"
#include "log.h"
#include "op.h"
#include "loop.h"
#include "pmap.h"
#include "node.h"
#include "tls.h"

#define PEER_SLOT_BITS 12
#define PEER_RBUF_BYTES 65536
#define PEER_QUEUED_BYTES_MAX (64u << 20) /* frames waiting for the link */
#define PEER_CONNECT_MS_MAX 2000 /* connect + handshake, at most (a cut
                                   link would otherwise wait for TCP's own
                                   give-up, minutes later) */

enum { PEER_CONNECTING, PEER_TLS, PEER_HELLO, PEER_READY, PEER_DEAD };

/* TLS: a loop thread's buffer for the bytes of one read. */
#define PEER_TLS_BUF_BYTES 65536
static _Thread_local unsigned char peer_tls_in[PEER_TLS_BUF_BYTES];

typedef struct peer_slot {
  uint64_t id;          /* 0: free */
  int is_write;
  int sent;             /* handed to the socket: the node may have run it */
  int64_t deadline_ms;
  peer_reply_cb cb;
  void *arg;
  uint32_t next_free;   /* index + 1 */
} peer_slot_t;

struct peer {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  loop_t *lp;
  peer_t *next;               /* the loop's list */
  char node_id[PMAP_ID_MAX];
  char addr[PMAP_ADDR_MAX];
  int state;
  int64_t started_ms;         /* when the connect began */
  frame_buf_t rbuf;            /* replies not yet whole */
  tls_sess_t *tls;             /* tls_replication; NULL: plain */
  unsigned char *queued;      /* frames written before the link was ready */
  size_t queued_len, queued_cap;
  uint64_t seq;
  uint32_t free_head;
  size_t inflight;
  peer_slot_t slots[PEER_INFLIGHT_MAX];
};

typedef struct peer_write {
  uv_write_t req;
  unsigned char *mem;
} peer_write_t;

static void peer_fail(peer_t *p, const char *why);

static void peer_slot_release(peer_t *p, peer_slot_t *s) {
  s->id = 0;
  s->next_free = p->free_head;
  p->free_head = (uint32_t)(s - p->slots) + 1;
  p->inflight--;
}

static void peer_on_write(uv_write_t *req, int status) {
  peer_write_t *w = (peer_write_t *)req;
  peer_t *p = req->handle->data;
  free(w->mem);
  free(w);
  if (status < 0 && p->state != PEER_DEAD) peer_fail(p, uv_strerror(status));
}

/* Writes a whole buffer, which the link then owns. Over TLS, its records
 * instead (mem is freed). */
static int peer_write_raw(peer_t *p, unsigned char *mem, size_t len) {
  if (p->tls) {
    int rc = len ? tls_sess_write(p->tls, mem, len) : 0;
    free(mem);
    if (rc != 0) return GRID_ECONN;
    len = tls_sess_pending(p->tls);
    if (len == 0) return 0;
    mem = malloc(len);
    if (!mem) return GRID_ENOMEM;
    tls_sess_take(p->tls, mem, len);
  }
  peer_write_t *w = malloc(sizeof *w);
  if (!w) {
    free(mem);
    return GRID_ENOMEM;
  }
  w->mem = mem;
  uv_buf_t b = uv_buf_init((char *)mem, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&p->tcp, &b, 1, peer_on_write) != 0) {
    free(mem);
    free(w);
    return GRID_ECONN;
  }
  return 0;
}

static int peer_frame(const ProtobufCMessage *m, unsigned char **out, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  unsigned char *b = malloc(n + FRAME_HEADER_BYTES);
  if (!b) return GRID_ENOMEM;
  frame_put_header(b, (uint32_t)n);
  protobuf_c_message_pack(m, b + FRAME_HEADER_BYTES);
  *out = b;
  *len = n + FRAME_HEADER_BYTES;
  return 0;
}

static void peer_on_close(uv_handle_t *h) {
  peer_t *p = h->data;
  frame_buf_free(&p->rbuf);
  tls_sess_free(p->tls);
  free(p->queued);
  free(p);
}

/* The link is unusable: every call on it fails, and it leaves the loop's
 * list so the next call makes a new one. */
static void peer_fail(peer_t *p, const char *why) {
  if (p->state == PEER_DEAD) return;
  if (p->inflight)
    LOG_W("peer", "\"link to node lost\" node=%s addr=%s reason=\"%s\" in_flight=%zu",
          p->node_id, p->addr, why, p->inflight);
  p->state = PEER_DEAD;
  loop_t *lp = p->lp;
  for (peer_t **l = &lp->peers; *l; l = &(*l)->next) {
    if (*l == p) {
      *l = p->next;
      break;
    }
  }
  for (uint32_t i = 0; i < PEER_INFLIGHT_MAX; i++) {
    peer_slot_t *s = &p->slots[i];
    if (!s->id) continue;
    peer_reply_cb cb = s->cb;
    void *arg = s->arg;
    /* A request that never left this node was not run anywhere: the
     * caller may run it elsewhere (GRID_ECONN). */
    int status = s->is_write && s->sent ? GRID_EUNKNOWN : GRID_ECONN;
    peer_slot_release(p, s);
    cb(arg, status, NULL);
  }
  uv_close((uv_handle_t *)&p->tcp, peer_on_close);
}

static void peer_on_reply(peer_t *p, const unsigned char *buf, size_t len) {
  Grid__Reply *rp = frame_nesting_ok(buf, len, FRAME_FIELD_REPLY_STEPS, 1)
                        ? grid__reply__unpack(NULL, len, buf)
                        : NULL;
  if (!rp) {
    peer_fail(p, "a reply does not decode");
    return;
  }
  peer_slot_t *s = &p->slots[rp->id & (PEER_INFLIGHT_MAX - 1)];
  if (rp->id != 0 && s->id == rp->id) {
    peer_reply_cb cb = s->cb;
    void *arg = s->arg;
    peer_slot_release(p, s);
    cb(arg, 0, rp);
  } else if (rp->id == 0 && rp->status != 0) {
    LOG_W("peer", "\"node refused the link\" node=%s message=\"%s\"", p->node_id,
          rp->message ? rp->message : "");
  }
  grid__reply__free_unpacked(rp, NULL);
}

static void peer_on_hello(peer_t *p, const unsigned char *buf, size_t len) {
  Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, len, buf);
  if (!hr || hr->status != 0) {
    char why[160];
    snprintf(why, sizeof why, "handshake refused: %s",
             hr && hr->message ? hr->message : "reply does not decode");
    if (hr) grid__hello_reply__free_unpacked(hr, NULL);
    peer_fail(p, why);
    return;
  }
  grid__hello_reply__free_unpacked(hr, NULL);
  p->state = PEER_READY;
  if (p->queued_len) {
    unsigned char *q = p->queued;
    size_t n = p->queued_len;
    p->queued = NULL;
    p->queued_len = p->queued_cap = 0;
    if (peer_write_raw(p, q, n) != 0) {
      peer_fail(p, "cannot write"); /* nothing of it went out */
      return;
    }
    for (uint32_t i = 0; i < PEER_INFLIGHT_MAX; i++)
      if (p->slots[i].id) p->slots[i].sent = 1;
  }
}

static void peer_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  peer_t *p = h->data;
  if (p->tls) { /* records go to the session at once */
    buf->base = (char *)peer_tls_in;
    buf->len = sizeof peer_tls_in;
    return;
  }
  /* Grown to the announced frame only within frame_bytes_max: a longer
   * one fails the link in peer_on_read, unread. */
  size_t room = frame_buf_room(&p->rbuf, 1);
  buf->base = room ? (char *)p->rbuf.data + p->rbuf.len : NULL;
  buf->len = room; /* 0: libuv reports UV_ENOBUFS to peer_on_read */
}

/* Serves the whole frames in rbuf. Returns how many bytes it took. */
static size_t peer_on_frames(peer_t *p) {
  size_t off = 0;
  while (p->state != PEER_DEAD) {
    const unsigned char *payload;
    size_t plen, flen;
    frame_result_t r = frame_buf_next(&p->rbuf, &off, &payload, &plen, &flen);
    if (r == FRAME_NEED_MORE) break;
    if (r == FRAME_TOO_BIG) {
      peer_fail(p, "frame over frame_bytes_max");
      return off;
    }
    if (p->state == PEER_HELLO) peer_on_hello(p, payload, plen);
    else peer_on_reply(p, payload, plen);
  }
  if (p->state == PEER_DEAD) return off;
  frame_buf_consume(&p->rbuf, off);
  return off;
}

static void peer_send_hello(peer_t *p);

/* The link failed in its TLS session: say why, whatever waits on it. */
static void peer_tls_failed(peer_t *p, const char *what) {
  char why[256];
  snprintf(why, sizeof why, "%s: %s", what, tls_sess_error(p->tls));
  LOG_W("peer", "\"TLS link to node failed\" node=%s addr=%s reason=\"%s\"", p->node_id,
        p->addr, why);
  peer_fail(p, why);
}

/* Sends what the session has to say (handshake, alerts). */
static int peer_tls_flush(peer_t *p) {
  if (tls_sess_pending(p->tls) == 0) return 0;
  return peer_write_raw(p, NULL, 0);
}

/* TLS bytes arrived: the handshake, then the plaintext into rbuf as room
 * allows, served frame by frame. */
static void peer_tls_read(peer_t *p, const unsigned char *b, size_t n) {
  if (tls_sess_feed(p->tls, b, n) != 0) {
    peer_fail(p, "out of memory");
    return;
  }
  if (p->state == PEER_TLS) {
    int h = tls_sess_handshake(p->tls);
    if (h == TLS_FAILED) {
      peer_tls_failed(p, "TLS handshake");
      return;
    }
    if (peer_tls_flush(p) != 0) {
      peer_fail(p, "cannot write");
      return;
    }
    if (h != 1) return;
    peer_send_hello(p);
    if (p->state == PEER_DEAD) return;
  }
  for (;;) {
    int full = 0, got = 0;
    for (;;) {
      size_t room = frame_buf_room(&p->rbuf, 1);
      if (room == 0) {
        full = 1;
        break;
      }
      ssize_t r = tls_sess_read(p->tls, p->rbuf.data + p->rbuf.len, room);
      if (r > 0) {
        p->rbuf.len += (size_t)r;
        got = 1;
        if (!tls_sess_readable(p->tls)) break;
        continue;
      }
      if (r == TLS_AGAIN) break;
      if (r == TLS_CLOSED) peer_fail(p, "closed by the node");
      else peer_tls_failed(p, "TLS");
      return;
    }
    if (peer_tls_flush(p) != 0) {
      peer_fail(p, "cannot write");
      return;
    }
    size_t took = got || full ? peer_on_frames(p) : 0;
    if (p->state == PEER_DEAD || !full) return;
    if (!took && frame_buf_room(&p->rbuf, 1) == 0) {
      peer_fail(p, "out of memory for a reply");
      return;
    }
  }
}

static void peer_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  peer_t *p = st->data;
  if (nread < 0) {
    peer_fail(p, nread == UV_EOF ? "closed by the node" : uv_strerror((int)nread));
    return;
  }
  if (p->tls) {
    if (nread > 0) peer_tls_read(p, (const unsigned char *)buf->base, (size_t)nread);
    return;
  }
  p->rbuf.len += (size_t)nread;
  peer_on_frames(p);
}

static void peer_on_connect(uv_connect_t *req, int status) {
  peer_t *p = req->handle->data;
  if (p->state == PEER_DEAD) return;
  if (status < 0) {
    peer_fail(p, uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&p->tcp, 1);
  if (uv_read_start((uv_stream_t *)&p->tcp, peer_on_alloc, peer_on_read) != 0) {
    peer_fail(p, "cannot start reading");
    return;
  }
  if (p->tls) {
    /* The TLS handshake first; the Hello once it is done. */
    p->state = PEER_TLS;
    if (tls_sess_handshake(p->tls) == TLS_FAILED) peer_tls_failed(p, "TLS handshake");
    else if (peer_tls_flush(p) != 0) peer_fail(p, "cannot write");
    return;
  }
  peer_send_hello(p);
}

static void peer_send_hello(peer_t *p) {
  node_t *n = p->lp->node;
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = FRAME_MAGIC;
  h.version = FRAME_PROTOCOL_VERSION;
  h.role = GRID__ROLE__ROLE_PEER;
  h.client_name = n->node_id;
  if (!n->cfg.tls_replication && n->cfg.cluster_secret[0]) h.password = n->cfg.cluster_secret;
  unsigned char *mem;
  size_t len;
  if (peer_frame(&h.base, &mem, &len) != 0 || peer_write_raw(p, mem, len) != 0) {
    peer_fail(p, "cannot start the handshake");
    return;
  }
  p->state = PEER_HELLO;
}

/* Parses "host:port" or "[v6]:port" into a socket address. */
static int peer_parse_addr(const char *addr, struct sockaddr_storage *ss) {
  char host[PMAP_ADDR_MAX];
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr) return GRID_EADDR;
  size_t hl = (size_t)(colon - addr);
  if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
    memcpy(host, addr + 1, hl - 2);
    host[hl - 2] = '\0';
  } else {
    if (hl >= sizeof host) return GRID_EADDR;
    memcpy(host, addr, hl);
    host[hl] = '\0';
  }
  int port = atoi(colon + 1);
  if (port <= 0 || port > 65535) return GRID_EADDR;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return 0;
  return GRID_EADDR;
}

/* The host of "host:port" or "[v6]:port", which the node's certificate
 * must name. */
static void peer_host(const char *addr, char *host, size_t len) {
  const char *colon = strrchr(addr, ':');
  size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
  if (addr[0] == '[' && hl >= 2) {
    addr++;
    hl -= 2;
  }
  snprintf(host, len, "%.*s", (int)hl, addr);
}

peer_t *peer_get(loop_t *lp, const pmap_node_t *nd) {
  tls_ctx_t *tls = lp->node->tls_client;
  const char *node_id = nd->id, *addr = tls ? nd->tls_addr : nd->addr;
  for (peer_t *p = lp->peers; p; p = p->next)
    if (strcmp(p->node_id, node_id) == 0 && strcmp(p->addr, addr) == 0) return p;
  struct sockaddr_storage ss;
  if (peer_parse_addr(addr, &ss) != 0) {
    LOG_W("peer", "\"node address is not host:port\" node=%s addr=%s%s", node_id, addr,
          tls && !addr[0] ? " (it has no tls_port: tls_replication needs one on every node)"
                          : "");
    return NULL;
  }
  peer_t *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  if (tls) {
    char host[PMAP_ADDR_MAX];
    peer_host(addr, host, sizeof host);
    if (!(p->tls = tls_sess_new(tls, host))) {
      free(p);
      return NULL;
    }
  }
  p->lp = lp;
  frame_buf_init(&p->rbuf, PEER_RBUF_BYTES, (size_t)lp->node->cfg.frame_bytes_max);
  snprintf(p->node_id, sizeof p->node_id, "%s", node_id);
  snprintf(p->addr, sizeof p->addr, "%s", addr);
  for (uint32_t i = 0; i < PEER_INFLIGHT_MAX; i++)
    p->slots[i].next_free = i + 1 < PEER_INFLIGHT_MAX ? i + 2 : 0;
  p->free_head = 1;
  uv_tcp_init(&lp->uv, &p->tcp);
  p->tcp.data = p;
  p->state = PEER_CONNECTING;
  p->started_ms = clock_mono_ms();
  p->next = lp->peers;
  lp->peers = p;
  if (uv_tcp_connect(&p->connect_req, &p->tcp, (struct sockaddr *)&ss, peer_on_connect) != 0)
    peer_fail(p, "cannot connect");
  return p->state == PEER_DEAD ? NULL : p;
}

int peer_call(peer_t *p, Grid__Request *rq, int64_t timeout_ms,
              peer_reply_cb cb, void *arg) {
  if (p->state == PEER_DEAD) return GRID_ECONN;
  if (!p->free_head) return GRID_EBUSY;
  peer_slot_t *s = &p->slots[p->free_head - 1];
  uint64_t id = (++p->seq << PEER_SLOT_BITS) | (uint64_t)(s - p->slots);
  rq->id = id;
  unsigned char *mem;
  size_t len;
  if (peer_frame(&rq->base, &mem, &len) != 0) return GRID_ENOMEM;
  if (p->state != PEER_READY) {
    if (p->queued_len + len > PEER_QUEUED_BYTES_MAX) {
      free(mem);
      return GRID_EBUSY;
    }
    if (p->queued_cap - p->queued_len < len) {
      size_t cap = (p->queued_len + len) * 2;
      unsigned char *q = realloc(p->queued, cap);
      if (!q) {
        free(mem);
        return GRID_ENOMEM;
      }
      p->queued = q;
      p->queued_cap = cap;
    }
    memcpy(p->queued + p->queued_len, mem, len);
    p->queued_len += len;
    free(mem);
  } else if (peer_write_raw(p, mem, len) != 0) {
    return GRID_ECONN;
  }
  p->free_head = s->next_free;
  p->inflight++;
  s->id = id;
  s->sent = p->state == PEER_READY;
  s->is_write = op_is_write(rq->op);
  s->deadline_ms = clock_mono_ms() + timeout_ms;
  s->cb = cb;
  s->arg = arg;
  return 0;
}

void peer_cron(loop_t *lp, int64_t now_ms) {
  int64_t connect_ms = lp->node->cfg.forward_timeout_ms;
  if (connect_ms > PEER_CONNECT_MS_MAX) connect_ms = PEER_CONNECT_MS_MAX;
  peer_t *next;
  for (peer_t *p = lp->peers; p; p = next) {
    next = p->next;
    if (p->state != PEER_READY && now_ms - p->started_ms >= connect_ms) {
      /* What waits on it was never sent: it fails as such (GRID_ECONN). */
      peer_fail(p, "no connection and handshake within the connect bound");
      continue;
    }
    if (!p->inflight) continue;
    for (uint32_t i = 0; i < PEER_INFLIGHT_MAX; i++) {
      peer_slot_t *s = &p->slots[i];
      if (!s->id || now_ms < s->deadline_ms) continue;
      peer_reply_cb cb = s->cb;
      void *arg = s->arg;
      int status = !s->sent ? GRID_ECONN : s->is_write ? GRID_EUNKNOWN : GRID_ETIMEDOUT;
      peer_slot_release(p, s);
      cb(arg, status, NULL);
    }
  }
}

void peer_close_all(loop_t *lp) {
  while (lp->peers) peer_fail(lp->peers, "node stopping");
}
