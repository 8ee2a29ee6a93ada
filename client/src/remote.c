/*
 * remote: one pipelined TCP connection to a node.
 *
 * Callers write their request frames on the socket themselves (under
 * wlock). Reading is a role, not a thread (leader/follower): a synchronous
 * caller waiting for its reply takes the role when nobody holds it, reads
 * reply frames and hands each to its request, and gives the role up once
 * its own reply is in; the others sleep on the handle's condition variable
 * until their reply is handed to them or the role is free. A lone caller
 * thus reads its own reply, with no thread between the socket and it. A
 * background thread takes the role only while asynchronous requests wait
 * and nobody else reads; their callbacks run on whichever thread reads.
 *
 * The table has REMOTE_INFLIGHT_MAX slots kept on a free list; an id is
 * (sequence << REMOTE_SLOT_BITS) | slot, so a reply finds its slot at once
 * and a late reply to a request that gave up finds a newer id there and is
 * dropped. GRID_EBUSY only when every slot is in use.
 *
 * A lost connection fails every request sent on it (GRID_EUNKNOWN for
 * writes, whose outcome is unknown; GRID_ECONN otherwise) and the next call
 * connects again. Each connection has a generation so that a request is
 * failed only by the loss of the connection it was sent on.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_int.h"
#include "clock.h"
#include "frame.h"
#include "log.h"
#include "tls.h"

#define REMOTE_SLOT_BITS 12
#define REMOTE_INFLIGHT_MAX (1u << REMOTE_SLOT_BITS) /* requests in flight per handle */
#define REMOTE_POLL_MS 50              /* a reader looks up at least this often */
#define REMOTE_RBUF_BYTES 65536
#define REMOTE_STACK_FRAME_BYTES 4096  /* requests this small skip malloc */
#define REMOTE_DRAIN_READS_MAX 64      /* reads of a closed connection's last replies */
/* A reply at most, before the handshake has named the node's frame limit,
 * and whatever the node names: the node's own frame_bytes_max is bounded
 * the same way (config.c). */
#define REMOTE_REPLY_BYTES_MAX ((uint64_t)1 << 30)
#define REMOTE_HELLO_BYTES_MAX 4096    /* a HelloReply is a few dozen bytes */

/* A synchronous caller waiting for its reply, on the caller's stack. */
typedef struct remote_waiter {
  int done;                 /* under the handle's lock */
  int status;               /* transport status */
  Grid__Reply *rp;          /* the reply when status is 0 */
} remote_waiter_t;

typedef struct remote_slot {
  uint64_t id;              /* 0: free */
  uint64_t gen;             /* connection it was sent on */
  int is_write;
  int64_t deadline_ms;      /* async: when it fails with GRID_ETIMEDOUT */
  remote_waiter_t *waiter;  /* sync; NULL for async */
  client_done_fn cb;        /* async */
  void *arg;
  uint32_t next_free;       /* free list: index + 1, 0 ends it */
} remote_slot_t;

struct remote {
  char host[256];
  int port;
  char client_name[64];
  char user[256], password[256]; /* auth = on: the login, "": none */
  pthread_mutex_t lock;     /* slots, conn state, the reading role */
  pthread_cond_t cond;      /* a reply handed over, or the role freed */
  int sleepers;             /* synchronous callers waiting on cond */
  pthread_cond_t bg_cond;   /* wakes the background reader */
  pthread_mutex_t wlock;    /* socket writes, and closing the socket */
  int fd;                   /* -1: not connected */
  client_link_t *link;      /* fd's TLS; NULL: plain */
  struct tls_ctx *tls;      /* grids://: the handle's context (not ours) */
  uint64_t gen;             /* generation of fd */
  int reading;              /* a thread holds the reading role */
  int closing;
  pthread_t bg;             /* reads for asynchronous requests */
  int bg_started;
  uint64_t seq;             /* high bits of the next id */
  uint32_t free_head;       /* first free slot: index + 1, 0 = none */
  size_t async_inflight;    /* async requests waiting for replies */
  size_t inflight;          /* all requests waiting for replies */
  uint64_t frame_bytes_max; /* the node's, from the handshake */
  uint64_t reply_bytes_max; /* the caller's cap (0: frame_bytes_max) */
  uint64_t reply_max;       /* in force: a longer reply closes the link */
  uint64_t rbuf_gen;        /* the connection rbuf's bytes came from: only
                               the reading role's holder touches both */
  frame_buf_t rbuf;         /* bytes read, not yet a whole frame: only the
                               reading role's holder touches it */
  int64_t expired_checked_ms;
  int64_t last_read_ms;     /* when a reply last came */
  remote_slot_t slots[REMOTE_INFLIGHT_MAX];
};

/* ---- TLS links ------------------------------------------------------------ */

struct client_link {
  pthread_mutex_t lock;     /* the session: a reader and a writer share it */
  tls_sess_t *sess;
  _Atomic int refs;
};

#define CLIENT_LINK_STACK_BYTES 8192  /* a small write's records skip malloc */
#define CLIENT_LINK_READ_BYTES 16640  /* one TLS record and its header */

static int client_send_all(int fd, const unsigned char *p, size_t len) {
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? GRID_ETIMEDOUT : GRID_ECONN;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int client_tls_ctx(const grid_options_t *opts, struct tls_ctx **out) {
  tls_settings_t s;
  memset(&s, 0, sizeof s);
  if (opts) {
    s.cert_file = opts->tls_cert_file;
    s.key_file = opts->tls_key_file;
    s.ca_file = opts->tls_ca_file;
  }
  char err[400];
  int rc = tls_ctx_new(0, &s, out, err, sizeof err);
  if (rc != 0) client_set_error(err);
  return rc;
}

void client_link_ref(client_link_t *l) { atomic_fetch_add(&l->refs, 1); }

void client_link_unref(client_link_t *l) {
  if (!l || atomic_fetch_sub(&l->refs, 1) != 1) return;
  tls_sess_free(l->sess);
  pthread_mutex_destroy(&l->lock);
  free(l);
}

/* Sends what the session has to send. Taken under the lock, sent without
 * it: a writer blocked on a full socket must not keep the reader from
 * decrypting the replies that would drain it. Writers are one at a time
 * (the caller's), so records leave in the order they were made. */
static int client_link_push(client_link_t *l, int fd) {
  unsigned char stackbuf[CLIENT_LINK_STACK_BYTES];
  pthread_mutex_lock(&l->lock);
  size_t k = tls_sess_pending(l->sess);
  unsigned char *buf = k <= sizeof stackbuf ? stackbuf : malloc(k);
  if (buf) tls_sess_take(l->sess, buf, k);
  pthread_mutex_unlock(&l->lock);
  if (!buf) return GRID_ENOMEM;
  int rc = k ? client_send_all(fd, buf, k) : 0;
  if (buf != stackbuf) free(buf);
  return rc;
}

int client_link_send(client_link_t *l, int fd, const void *p, size_t n) {
  if (!l) return client_send_all(fd, p, n);
  pthread_mutex_lock(&l->lock);
  int rc = tls_sess_write(l->sess, p, n);
  pthread_mutex_unlock(&l->lock);
  if (rc != 0) return GRID_ECONN;
  return client_link_push(l, fd);
}

/* The session's answer to a read, as recv's. */
static ssize_t client_link_result(client_link_t *l, ssize_t r) {
  if (r > 0) return r;
  if (r == TLS_CLOSED) return 0;
  if (r == TLS_AGAIN) {
    errno = EAGAIN;
    return -1;
  }
  char words[320];
  pthread_mutex_lock(&l->lock);
  const char *e = tls_sess_error(l->sess);
  snprintf(words, sizeof words, "TLS: %s%s", e,
           strstr(e, "certificate") ? " (the node wants a client certificate its CA "
                                      "signed: tls_cert_file / --cert and --key)" : "");
  pthread_mutex_unlock(&l->lock);
  client_set_error(words);
  errno = EPROTO; /* the session failed: GRID_ETLS */
  return -1;
}

ssize_t client_link_recv(client_link_t *l, int fd, void *p, size_t n, int flags) {
  if (!l) return recv(fd, p, n, flags);
  pthread_mutex_lock(&l->lock);
  ssize_t r = tls_sess_read(l->sess, p, n);
  pthread_mutex_unlock(&l->lock);
  if (r != TLS_AGAIN) return client_link_result(l, r);
  unsigned char buf[CLIENT_LINK_READ_BYTES];
  ssize_t k = recv(fd, buf, sizeof buf, flags);
  if (k <= 0) return k;
  pthread_mutex_lock(&l->lock);
  r = tls_sess_feed(l->sess, buf, (size_t)k);
  if (r == 0) r = tls_sess_read(l->sess, p, n);
  pthread_mutex_unlock(&l->lock);
  return client_link_result(l, r);
}

int client_link_open(struct tls_ctx *ctx, const char *server_name, int fd, int64_t deadline_ms,
                     client_link_t **out) {
  client_link_t *l = calloc(1, sizeof *l);
  if (!l) return GRID_ENOMEM;
  pthread_mutex_init(&l->lock, NULL);
  atomic_init(&l->refs, 1);
  l->sess = tls_sess_new(ctx, server_name);
  if (!l->sess) {
    client_link_unref(l);
    return GRID_ENOMEM;
  }
  int rc = 0;
  for (;;) {
    int h = tls_sess_handshake(l->sess);
    if ((rc = client_link_push(l, fd)) != 0) break;
    if (h == 1) break;
    if (h == TLS_FAILED) {
      char words[320];
      snprintf(words, sizeof words, "TLS handshake with the node failed: %s%s",
               tls_sess_error(l->sess),
               strstr(tls_sess_error(l->sess), "wrong version") ||
                       strstr(tls_sess_error(l->sess), "packet length")
                   ? " (is this the node's TLS port, tls_port?)" : "");
      client_set_error(words);
      rc = GRID_ETLS;
      break;
    }
    int64_t left = deadline_ms - clock_mono_ms();
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&pfd, 1, (int)left) == 0) {
      client_set_error("TLS handshake with the node not completed in time");
      rc = GRID_ETIMEDOUT;
      break;
    }
    unsigned char buf[CLIENT_LINK_READ_BYTES];
    ssize_t k = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (k <= 0) {
      client_set_error("the node closed the connection during the TLS handshake "
                       "(is this the node's TLS port, tls_port?)");
      rc = GRID_ETLS;
      break;
    }
    if (tls_sess_feed(l->sess, buf, (size_t)k) != 0) {
      rc = GRID_ENOMEM;
      break;
    }
  }
  if (rc != 0) {
    client_link_unref(l);
    return rc;
  }
  *out = l;
  return 0;
}

/* ---- connecting --------------------------------------------------------- */

/* Reads one whole frame into a malloc'd buffer, within deadline_ms. */
static int remote_read_frame(int fd, client_link_t *link, int64_t deadline_ms, size_t max,
                             unsigned char **out, size_t *out_len) {
  unsigned char hdr[FRAME_HEADER_BYTES];
  unsigned char *buf = NULL;
  size_t want = sizeof hdr, got = 0;
  unsigned char *dst = hdr;
  for (int phase = 0; phase < 2; phase++) {
    while (got < want) {
      int64_t left = deadline_ms - clock_mono_ms();
      if (left <= 0) {
        free(buf);
        return GRID_ETIMEDOUT;
      }
      /* What the TLS session holds first, then the socket when it has
       * something. */
      ssize_t n = client_link_recv(link, fd, dst + got, want - got, MSG_DONTWAIT);
      if (n > 0) {
        got += (size_t)n;
        continue;
      }
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        poll(&pfd, 1, (int)left);
        continue;
      }
      free(buf);
      return n < 0 && errno == EPROTO ? GRID_ETLS : GRID_ECONN;
    }
    if (phase == 0) {
      want = frame_get_header(hdr);
      if (want > max) return GRID_EPROTO;
      buf = malloc(want ? want : 1);
      if (!buf) return GRID_ENOMEM;
      dst = buf;
      got = 0;
    }
  }
  *out = buf;
  *out_len = want;
  return 0;
}

/* Resolves the node's address and connects to the first address that
 * answers before deadline_ms. Each attempt is non-blocking, so that an
 * address that never answers costs no more than the time left. */
static int remote_dial(remote_t *r, int64_t deadline_ms, int *out_fd) {
  char port[16];
  snprintf(port, sizeof port, "%d", r->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  if (getaddrinfo(r->host, port, &hints, &res) != 0) return GRID_EADDR;
  int rc = GRID_ECONN, fd = -1;
  for (struct addrinfo *ai = res; ai && rc != 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      close(fd);
      continue;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline_ms - clock_mono_ms();
    int err = 0;
    socklen_t el = sizeof err;
    if (left <= 0 || poll(&pfd, 1, (int)left) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
      rc = left <= 0 ? GRID_ETIMEDOUT : GRID_ECONN;
      close(fd);
      continue;
    }
    rc = 0;
  }
  freeaddrinfo(res);
  if (rc == 0) *out_fd = fd;
  return rc;
}

/* Makes a connected socket what the callers expect: requests go out at once
 * (no Nagle delay on small frames), and neither a write nor a read blocks
 * longer than its bound. */
static void remote_set_socket_bounds(int fd, uint32_t timeout_ms) {
  int flags = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &flags, sizeof flags);
  /* Blocking from here on; a send that the node does not drain gives up
   * after the timeout. */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct timeval rtv = {.tv_sec = 0, .tv_usec = REMOTE_POLL_MS * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rtv, sizeof rtv);
}

/* The handshake: sends Hello and reads the HelloReply before deadline_ms.
 * On success the node's frame limit, and the reply limit in force, are
 * recorded in r; on failure the caller closes fd. */
static int remote_handshake(remote_t *r, int fd, client_link_t *link, int64_t deadline_ms) {
  Grid__Hello h = GRID__HELLO__INIT;
  h.magic = FRAME_MAGIC;
  h.version = FRAME_PROTOCOL_VERSION;
  h.role = GRID__ROLE__ROLE_CLIENT;
  h.client_name = r->client_name;
  h.user = r->user;
  h.password = r->password;
  unsigned char buf[1024];
  size_t n = grid__hello__get_packed_size(&h);
  GRID_ASSERT(n + FRAME_HEADER_BYTES <= sizeof buf);
  frame_put_header(buf, (uint32_t)n);
  grid__hello__pack(&h, buf + FRAME_HEADER_BYTES);
  unsigned char *reply = NULL;
  size_t reply_len = 0;
  int rc;
  if ((rc = client_link_send(link, fd, buf, n + FRAME_HEADER_BYTES)) != 0 ||
      (rc = remote_read_frame(fd, link, deadline_ms, REMOTE_HELLO_BYTES_MAX, &reply,
                              &reply_len)) != 0)
    return rc;
  Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, reply_len, reply);
  free(reply);
  if (!hr) return GRID_EPROTO;
  rc = hr->status;
  if (rc != 0 && hr->message && hr->message[0]) client_set_error(hr->message);
  if (rc == 0) {
    r->frame_bytes_max = hr->frame_bytes_max;
    uint64_t cap = r->reply_bytes_max ? r->reply_bytes_max : hr->frame_bytes_max;
    r->reply_max = cap && cap < REMOTE_REPLY_BYTES_MAX ? cap : REMOTE_REPLY_BYTES_MAX;
  }
  grid__hello_reply__free_unpacked(hr, NULL);
  return rc;
}

/* A new connection to the node, TLS and handshake done, within timeout_ms
 * in all. On success *out_fd is the caller's to close and *out_link (NULL
 * without TLS) to unref. */
static int remote_connect_fd(remote_t *r, uint32_t timeout_ms, int *out_fd,
                             client_link_t **out_link) {
  int64_t deadline = clock_mono_ms() + timeout_ms;
  int fd;
  client_link_t *link = NULL;
  int rc = remote_dial(r, deadline, &fd);
  if (rc != 0) return rc;
  remote_set_socket_bounds(fd, timeout_ms);
  if (r->tls) rc = client_link_open(r->tls, r->host, fd, deadline, &link);
  if (rc == 0) rc = remote_handshake(r, fd, link, deadline);
  if (rc != 0) {
    client_link_unref(link);
    close(fd);
    return rc;
  }
  *out_fd = fd;
  *out_link = link;
  return 0;
}

/* ---- completing requests ------------------------------------------------ */

static void remote_slot_free(remote_t *r, remote_slot_t *s) {
  if (!s->waiter) r->async_inflight--;
  r->inflight--;
  s->id = 0;
  s->waiter = NULL;
  s->next_free = r->free_head;
  r->free_head = (uint32_t)(s - r->slots) + 1;
}

/* An async request taken out of the table, its callback still to run
 * (without the lock). */
typedef struct remote_done {
  client_done_fn cb;
  void *arg;
  int status;
} remote_done_t;

/* Completes slot s (lock held): a waiter is handed its outcome; an async
 * request's callback is returned for the caller to run unlocked. */
static int remote_slot_complete(remote_t *r, remote_slot_t *s, int status, Grid__Reply *rp,
                                remote_done_t *out) {
  if (s->waiter) {
    s->waiter->status = status;
    s->waiter->rp = rp;
    s->waiter->done = 1;
    remote_slot_free(r, s);
    /* Wake sleepers only: a lone caller reading for itself needs no
     * wake-up, and a needless one costs a thread switch per call. */
    if (r->sleepers) pthread_cond_broadcast(&r->cond);
    return 0;
  }
  out->cb = s->cb;
  out->arg = s->arg;
  out->status = status;
  remote_slot_free(r, s);
  return 1;
}

/* Fails every request sent on connection gen, or (expired_only) the async
 * ones past their deadline. Callbacks run without the lock. */
static void remote_fail_slots(remote_t *r, uint64_t gen, int expired_only) {
  enum { BATCH = 64 };
  for (;;) {
    remote_done_t done[BATCH];
    int k = 0;
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&r->lock);
    if (expired_only && r->async_inflight == 0) {
      pthread_mutex_unlock(&r->lock);
      return;
    }
    for (size_t i = 0; i < REMOTE_INFLIGHT_MAX && k < BATCH; i++) {
      remote_slot_t *s = &r->slots[i];
      if (!s->id) continue;
      int status;
      if (expired_only) {
        if (s->waiter || now < s->deadline_ms) continue;
        status = s->is_write ? GRID_EUNKNOWN : GRID_ETIMEDOUT;
      } else {
        if (s->gen != gen) continue;
        status = s->is_write ? GRID_EUNKNOWN : GRID_ECONN;
      }
      if (remote_slot_complete(r, s, status, NULL, &done[k])) k++;
    }
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < k; i++) done[i].cb(done[i].arg, done[i].status, NULL);
    if (k < BATCH) return;
  }
}

static void remote_on_reply(remote_t *r, const unsigned char *p, size_t len) {
  Grid__Reply *rp = frame_nesting_ok(p, len, FRAME_FIELD_REPLY_STEPS, 1)
                        ? grid__reply__unpack(NULL, len, p)
                        : NULL;
  if (!rp) return; /* a reply we cannot read: its caller will time out */
  remote_done_t d;
  int async = 0, mine;
  pthread_mutex_lock(&r->lock);
  remote_slot_t *s = &r->slots[rp->id & (REMOTE_INFLIGHT_MAX - 1)];
  mine = rp->id != 0 && s->id == rp->id;
  if (mine) async = remote_slot_complete(r, s, 0, rp, &d);
  pthread_mutex_unlock(&r->lock);
  if (mine) {
    if (async) {
      d.cb(d.arg, 0, rp);
      grid__reply__free_unpacked(rp, NULL);
    }
    return; /* a waiter now owns rp */
  }
  if (rp->id == 0 && rp->status != 0)
    LOG_W("client", "\"node reported a connection error\" error=%s message=\"%s\"",
          grid_err_name(rp->status), rp->message ? rp->message : "");
  grid__reply__free_unpacked(rp, NULL);
}

/* The connection of generation gen is gone: close it and fail what was
 * sent on it. */
static void remote_conn_lost(remote_t *r, int fd, uint64_t gen) {
  pthread_mutex_lock(&r->wlock);
  pthread_mutex_lock(&r->lock);
  int current = r->gen == gen && r->fd == fd;
  client_link_t *link = current ? r->link : NULL;
  if (current) {
    r->fd = -1; /* the next call connects again */
    r->link = NULL;
  }
  pthread_mutex_unlock(&r->lock);
  if (current) close(fd);
  client_link_unref(link);
  pthread_mutex_unlock(&r->wlock);
  remote_fail_slots(r, gen, 0);
}

/* With the reading role held: reads what arrives within wait_ms and hands
 * out every whole reply. Returns 0, or -1 when the connection is gone. */
static int remote_read_some(remote_t *r, int fd, client_link_t *link, uint64_t gen,
                            int wait_ms) {
  if (r->rbuf_gen != gen) {
    /* A new connection: what an older one left unfinished is dropped
     * here, by the reader, never by the thread that saw it go. */
    r->rbuf_gen = gen;
    r->rbuf.len = 0;
    frame_buf_set_frame_max(&r->rbuf, (size_t)r->reply_max);
  }
  size_t room = frame_buf_room(&r->rbuf, 1);
  if (room == 0) return 0; /* no memory now: the next read tries again */
  /* One blocking recv, bounded by the socket's SO_RCVTIMEO
   * (REMOTE_POLL_MS): a syscall fewer than poll + recv on every reply. */
  (void)wait_ms;
  ssize_t n = client_link_recv(link, fd, r->rbuf.data + r->rbuf.len, room, 0);
  if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  if (n <= 0) {
    remote_conn_lost(r, fd, gen);
    return -1;
  }
  r->rbuf.len += (size_t)n;
  r->last_read_ms = clock_mono_ms();
  size_t off = 0;
  frame_result_t fr;
  const unsigned char *payload;
  size_t plen, flen;
  while ((fr = frame_buf_next(&r->rbuf, &off, &payload, &plen, &flen)) == FRAME_OK)
    remote_on_reply(r, payload, plen);
  if (fr == FRAME_TOO_BIG) {
    /* The buffer would have to grow to whatever the header announces: the
     * reply is refused, and with it the connection (the stream cannot be
     * resynchronised). */
    LOG_W("client", "\"reply longer than reply_bytes_max: closing the connection\" "
          "bytes=%zu reply_bytes_max=%llu node=%s:%d", flen,
          (unsigned long long)r->reply_max, r->host, r->port);
    remote_conn_lost(r, fd, gen);
    return -1;
  }
  frame_buf_consume(&r->rbuf, off);
  return 0;
}

/* Takes the reading role if it is free (lock held on entry and on return),
 * reads once for up to wait_ms, and gives the role up. 1 if it read. */
static int remote_try_read(remote_t *r, int wait_ms) {
  if (r->reading || r->fd < 0) return 0;
  r->reading = 1;
  int fd = r->fd;
  uint64_t gen = r->gen;
  client_link_t *link = r->link;
  if (link) client_link_ref(link);
  pthread_mutex_unlock(&r->lock);
  int64_t now = clock_mono_ms();
  if (now - r->expired_checked_ms >= REMOTE_POLL_MS) {
    r->expired_checked_ms = now;
    remote_fail_slots(r, 0, 1); /* async calls past their deadline */
  }
  remote_read_some(r, fd, link, gen, wait_ms);
  client_link_unref(link);
  pthread_mutex_lock(&r->lock);
  r->reading = 0;
  /* Someone else may read now. */
  if (r->sleepers) pthread_cond_broadcast(&r->cond);
  if (r->async_inflight) pthread_cond_signal(&r->bg_cond);
  return 1;
}

/* Reads for asynchronous requests while nobody else does. */
static void *remote_bg_main(void *arg) {
  remote_t *r = arg;
  pthread_mutex_lock(&r->lock);
  while (!r->closing) {
    if (r->async_inflight > 0 && !r->reading && r->fd >= 0) {
      remote_try_read(r, REMOTE_POLL_MS);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += REMOTE_POLL_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->bg_cond, &r->lock, &ts);
    if (r->async_inflight > 0 && r->fd < 0) {
      pthread_mutex_unlock(&r->lock);
      remote_fail_slots(r, 0, 1);
      pthread_mutex_lock(&r->lock);
    }
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

/* Connects when there is no connection. Called with the lock held, which
 * other callers then wait on: they need the connection too. */
static int remote_ensure_connected(remote_t *r, uint32_t timeout_ms) {
  if (r->fd >= 0) return 0;
  if (r->closing) return GRID_ECONN;
  int fd;
  client_link_t *link;
  int rc = remote_connect_fd(r, timeout_ms, &fd, &link);
  if (rc != 0) return rc;
  r->fd = fd;
  r->link = link;
  r->gen++; /* the reader starts this connection's buffer afresh */
  if (!r->bg_started) {
    if (pthread_create(&r->bg, NULL, remote_bg_main, r) != 0) {
      close(fd);
      client_link_unref(link);
      r->fd = -1;
      r->link = NULL;
      return GRID_ENOMEM;
    }
    r->bg_started = 1;
  }
  return 0;
}

/* ---- calls --------------------------------------------------------------- */

/* Lock held, possibly released and taken again while replies are read.
 * Returns GRID_ECONN when the node has closed the connection, so that the
 * request is not sent; else 0 (the connection may then be gone, and is made
 * again by remote_ensure_connected). */
static int remote_check_not_closed(remote_t *r) {
  if (r->fd < 0) return 0;
  /* Look before sending: a node that died (or closed the connection)
   * has sent its FIN, which nobody may have read yet (a lone caller
   * reads only while it waits; a busy reader a moment later). A request
   * sent into such a socket would be of unknown outcome although it can
   * never run; found here, it is not sent at all and goes elsewhere once
   * the map moves. One poll per request: tens of nanoseconds of a round
   * trip of tens of microseconds. */
  struct pollfd pfd = {.fd = r->fd, .events = POLLRDHUP};
  if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) return 0;
  /* Replies the node sent before it closed are read first (requests
   * in flight get them), then the EOF finds the connection lost. */
  uint64_t gen = r->gen;
  for (int i = 0; i < REMOTE_DRAIN_READS_MAX && r->fd >= 0 && r->gen == gen; i++)
    if (!remote_try_read(r, 0)) break; /* another thread reads: it sees the EOF */
  if (r->fd >= 0 && r->gen == gen) return GRID_ECONN; /* not sent */
  return 0;
}

/* Lock held. Takes a free slot for rq on the current connection and gives
 * rq its id; *packed_bytes is rq's packed size. GRID_EBUSY when every slot
 * is in use; GRID_EFRAMETOOBIG when rq is over the node's frame limit, and
 * then no slot is taken. */
static int remote_slot_take(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                            remote_waiter_t *waiter, client_done_fn cb, void *arg,
                            remote_slot_t **out, size_t *packed_bytes) {
  if (r->free_head == 0) return GRID_EBUSY;
  remote_slot_t *s = &r->slots[r->free_head - 1];
  uint64_t id = (++r->seq << REMOTE_SLOT_BITS) | (uint64_t)(s - r->slots);
  rq->id = id; /* before the size: the id is part of the message */
  size_t n = grid__request__get_packed_size(rq);
  if (n > r->frame_bytes_max) return GRID_EFRAMETOOBIG;
  r->free_head = s->next_free;
  r->inflight++;
  s->id = id;
  s->gen = r->gen;
  s->is_write = op_is_write(rq->op);
  s->deadline_ms = clock_mono_ms() + timeout_ms;
  s->waiter = waiter;
  s->cb = cb;
  s->arg = arg;
  if (!waiter) {
    r->async_inflight++;
    pthread_cond_signal(&r->bg_cond); /* the background reader has work */
  }
  *out = s;
  *packed_bytes = n;
  return 0;
}

/* Lock not held. Packs rq (packed_bytes long) into one frame and writes it
 * on fd, unless connection gen has been replaced meanwhile (GRID_ECONN). A
 * small frame is built on the stack: most requests then cost no malloc. */
static int remote_write_request(remote_t *r, const Grid__Request *rq, size_t packed_bytes,
                                int fd, uint64_t gen) {
  unsigned char stackbuf[REMOTE_STACK_FRAME_BYTES];
  size_t frame_bytes = packed_bytes + FRAME_HEADER_BYTES;
  unsigned char *buf = frame_bytes <= sizeof stackbuf ? stackbuf : malloc(frame_bytes);
  if (!buf) return GRID_ENOMEM;
  frame_put_header(buf, (uint32_t)packed_bytes);
  grid__request__pack(rq, buf + FRAME_HEADER_BYTES);
  pthread_mutex_lock(&r->wlock);
  /* The socket may have been closed and replaced meanwhile. */
  pthread_mutex_lock(&r->lock);
  int same = r->fd == fd && r->gen == gen;
  client_link_t *link = same ? r->link : NULL;
  if (link) client_link_ref(link);
  pthread_mutex_unlock(&r->lock);
  int rc = same ? client_link_send(link, fd, buf, frame_bytes) : GRID_ECONN;
  pthread_mutex_unlock(&r->wlock);
  client_link_unref(link);
  if (buf != stackbuf) free(buf);
  return rc;
}

/* Lock not held. Writing request id (slot s, sent on connection gen) failed
 * with rc. Returns what remote_send returns: 0 when a reader has already
 * completed the request (its outcome reaches its waiter or callback); else
 * GRID_ENOMEM when its frame could not be built, and otherwise rc for a
 * read but GRID_EUNKNOWN for a write, since part of it may have gone out. */
static int remote_on_write_failed(remote_t *r, remote_slot_t *s, uint64_t id, int is_write,
                                  int fd, uint64_t gen, int rc) {
  /* Nothing or part of the frame went out: the stream is unusable. This
   * request is failed here, unless a reader has already taken it. */
  pthread_mutex_lock(&r->lock);
  int ours = s->id == id;
  if (ours) remote_slot_free(r, s);
  pthread_mutex_unlock(&r->lock);
  if (rc != GRID_ENOMEM) remote_conn_lost(r, fd, gen);
  if (!ours) return 0; /* its outcome is delivered: waiter or callback */
  return rc == GRID_ENOMEM ? rc : (is_write ? GRID_EUNKNOWN : rc);
}

/* Takes a slot for rq and sends it. On success *id_out is the request's id. */
static int remote_send(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                       remote_waiter_t *waiter, client_done_fn cb, void *arg,
                       uint64_t *id_out) {
  remote_slot_t *s = NULL;
  size_t n = 0;
  pthread_mutex_lock(&r->lock);
  int rc = remote_check_not_closed(r);
  if (rc == 0) rc = remote_ensure_connected(r, timeout_ms);
  if (rc == 0) rc = remote_slot_take(r, rq, timeout_ms, waiter, cb, arg, &s, &n);
  if (rc != 0) {
    pthread_mutex_unlock(&r->lock);
    return rc;
  }
  uint64_t id = s->id;
  int fd = r->fd;
  uint64_t gen = r->gen;
  pthread_mutex_unlock(&r->lock);

  rc = remote_write_request(r, rq, n, fd, gen);
  if (rc != 0) rc = remote_on_write_failed(r, s, id, op_is_write(rq->op), fd, gen, rc);
  if (rc == 0) *id_out = id;
  return rc;
}

int remote_call(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                client_reply_t *out) {
  remote_waiter_t w = {0};
  uint64_t id = 0;
  int rc = remote_send(r, rq, timeout_ms, &w, NULL, NULL, &id);
  if (rc != 0) return rc;
  int64_t deadline = clock_mono_ms() + timeout_ms;
  pthread_mutex_lock(&r->lock);
  while (!w.done) {
    int64_t left = deadline - clock_mono_ms();
    if (left <= 0) break;
    /* Read for everyone if nobody does; else wait to be handed the reply. */
    if (remote_try_read(r, (int)(left < REMOTE_POLL_MS ? left : REMOTE_POLL_MS))) continue;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t wait_ms = left < REMOTE_POLL_MS ? left : REMOTE_POLL_MS;
    ts.tv_nsec += wait_ms * 1000000L;
    while (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    r->sleepers++;
    pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    r->sleepers--;
  }
  if (!w.done) {
    /* Timed out. The slot is still ours (a reply would have completed it
     * under this same lock). */
    remote_slot_t *s = &r->slots[id & (REMOTE_INFLIGHT_MAX - 1)];
    if (s->id == id) remote_slot_free(r, s);
    pthread_mutex_unlock(&r->lock);
    /* A write that got no reply in time may still have been applied. */
    return op_is_write(rq->op) ? GRID_EUNKNOWN : GRID_ETIMEDOUT;
  }
  pthread_mutex_unlock(&r->lock);
  if (w.status != 0) return w.status;
  out->rp = w.rp;
  out->unpacked = 1;
  return 0;
}

int remote_call_async(remote_t *r, Grid__Request *rq, uint32_t timeout_ms,
                      client_done_fn done, void *arg) {
  uint64_t id;
  return remote_send(r, rq, timeout_ms, NULL, done, arg, &id);
}

/* A reply's memory: unpacked from a remote frame, or in the arena of an
 * embedded call. Here, in the transport, so the router (which refreshes
 * its map through remote_call) and the public calls both free replies
 * without calling up into client.c. */
void client_reply_free(client_reply_t *r) {
  if (r->unpacked && r->rp) grid__reply__free_unpacked(r->rp, NULL);
  else if (!r->unpacked) arena_close(&r->arena);
  r->rp = NULL;
}

/* Who r talks to, and as whom. */
static void remote_set_ident(remote_t *r, const char *host, int port,
                             const grid_options_t *opts) {
  snprintf(r->host, sizeof r->host, "%s", host);
  r->port = port;
  snprintf(r->client_name, sizeof r->client_name, "%s",
           opts && opts->client_name ? opts->client_name : "");
  snprintf(r->user, sizeof r->user, "%s", opts && opts->user ? opts->user : "");
  snprintf(r->password, sizeof r->password, "%s", opts && opts->password ? opts->password : "");
  r->reply_bytes_max = opts ? opts->reply_bytes_max : 0;
}

int remote_open(const char *host, int port, const grid_options_t *opts, struct tls_ctx *tls,
                remote_t **out) {
  remote_t *r = calloc(1, sizeof *r);
  if (r) frame_buf_init(&r->rbuf, REMOTE_RBUF_BYTES, REMOTE_REPLY_BYTES_MAX);
  if (!r) return GRID_ENOMEM;
  remote_set_ident(r, host, port, opts);
  r->tls = tls;
  r->fd = -1;
  for (uint32_t i = 0; i < REMOTE_INFLIGHT_MAX; i++)
    r->slots[i].next_free = i + 1 < REMOTE_INFLIGHT_MAX ? i + 2 : 0;
  r->free_head = 1;
  pthread_mutex_init(&r->lock, NULL);
  pthread_mutex_init(&r->wlock, NULL);
  clock_cond_init(&r->cond);
  clock_cond_init(&r->bg_cond);
  uint32_t timeout = opts && opts->timeout_ms ? opts->timeout_ms : 5000;
  pthread_mutex_lock(&r->lock);
  int rc = remote_ensure_connected(r, timeout);
  pthread_mutex_unlock(&r->lock);
  if (rc != 0) {
    remote_close(r);
    return rc;
  }
  *out = r;
  return 0;
}

void remote_close(remote_t *r) {
  pthread_mutex_lock(&r->lock);
  r->closing = 1;
  if (r->fd >= 0) shutdown(r->fd, SHUT_RDWR); /* a reader in recv wakes up */
  pthread_cond_broadcast(&r->cond);
  pthread_cond_signal(&r->bg_cond);
  int bg = r->bg_started;
  pthread_mutex_unlock(&r->lock);
  if (bg) pthread_join(r->bg, NULL);
  /* Callers have returned (grid_close's contract), so nobody reads now. */
  if (r->fd >= 0) {
    close(r->fd);
    uint64_t gen = r->gen;
    r->fd = -1;
    remote_fail_slots(r, gen, 0);
  }
  client_link_unref(r->link);
  r->link = NULL;
  frame_buf_free(&r->rbuf);
  pthread_mutex_destroy(&r->lock);
  pthread_mutex_destroy(&r->wlock);
  pthread_cond_destroy(&r->cond);
  pthread_cond_destroy(&r->bg_cond);
  free(r);
}

int remote_dial_fd(const char *host, int port, const grid_options_t *opts, struct tls_ctx *tls,
                   uint32_t timeout_ms, int *fd, client_link_t **link, uint64_t *reply_max) {
  remote_t *r = calloc(1, sizeof *r);
  if (!r) return GRID_ENOMEM;
  remote_set_ident(r, host, port, opts);
  r->tls = tls;
  int rc = remote_connect_fd(r, timeout_ms, fd, link);
  if (rc == 0) *reply_max = r->reply_max;
  free(r);
  return rc;
}

void remote_addr(const remote_t *r, char *out, size_t len) {
  snprintf(out, len, strchr(r->host, ':') ? "[%s]:%d" : "%s:%d", r->host, r->port);
}
