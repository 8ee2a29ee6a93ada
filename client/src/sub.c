/*
 * sub: change-stream subscriptions (grid_subscribe). Each subscription has
 * a thread of its own and connections of its own, one per node that leads
 * some of its partitions (the handle's connections serve calls; a stream
 * would hold their readers up). The thread:
 *
 *   - subscribes each partition at its primary (SUBSCRIBE with the
 *     partition's position: "now" the first time, then the counter of the
 *     last change passed on);
 *   - passes each event on once: one at or before the partition's position
 *     is a repeat (the same change, heard again from a new primary) and is
 *     dropped; a GAP moves the position past what was lost;
 *   - where a partition's node says END (a new map moved it), closes, or
 *     the map names another primary, subscribes it again where the map
 *     says, from its position, every SUB_RETRY_MS until one takes it.
 *
 * Events go to the callback on this thread, or into a queue of at most
 * queue_max events for grid_sub_next; a full queue stops the reading, so
 * the node holds what follows (within its output_bytes_max, then the
 * history, then a GAP): no memory grows without bound on either side.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_int.h"
#include "clock.h"
#include "frame.h"
#include "log.h"
#include "part.h"

#define SUB_RETRY_MS 100        /* a partition with no primary is asked again */
#define SUB_MAP_CHECK_MS 5000   /* the map is looked at again this often (a
                                   node cut off cannot say END) */
#define SUB_QUEUE_DEFAULT 65536
#define SUB_CONNS_MAX 256
#define SUB_RBUF_BYTES 65536
#define SUB_ASK_PARTITIONS_MAX 32 /* partitions one SUBSCRIBE names */

enum { SUB_UNWANTED = -3, SUB_ASKING = -2, SUB_HOMELESS = -1 };

typedef struct sub_conn {
  char addr[128];
  int fd;                       /* -1: closed */
  client_link_t *link;          /* its TLS; NULL: plain */
  frame_buf_t in;
  uint64_t next_id;
} sub_conn_t;

typedef struct sub_item {
  struct sub_item *next;
  grid_event_t ev;
  unsigned char data[];         /* key then value */
} sub_item_t;

struct grid_sub {
  grid_t *g;
  embedded_watch_t *ew;         /* an embedded node outside a cluster: its
                                   store is read in this process */
  char cache[65];
  grid_sub_options_t opts;
  unsigned char *prefix;
  unsigned char **akeys;
  size_t *akey_lens;
  const void **atags;           /* their affinity parts (into akeys) */
  size_t *atag_lens;
  uint64_t id;                  /* the subscription's id on every node */
  pthread_t thread;
  int efd;                      /* wakes the thread to stop */
  _Atomic int stop;
  /* the thread's own */
  uint32_t nparts;
  uint64_t *pos;
  int *home;                    /* conn index, or SUB_* */
  _Atomic uint32_t *life;       /* per partition: odd while it is taken (a
                                   connection reads its changes), moved on
                                   at every change of that (sub_life) */
  int *asking_on;               /* SUB_ASKING: the conn asked */
  unsigned char *fresh;         /* never positioned: from now */
  unsigned char *snapdue;       /* its snapshot is still to come */
  uint32_t snaps_left;          /* partitions whose snapshot is to come */
  sub_item_t **held, **held_tail; /* per partition: its snapshot's entries
                                   so far, passed on once it is whole */
  int64_t *asked_ms;            /* SUB_ASKING: since when */
  uint64_t *asked_id;           /* ... and the request's id */
  sub_conn_t conns[SUB_CONNS_MAX];
  size_t nconns;
  int64_t retry_at_ms, map_check_at_ms;
  /* the first round, for grid_subscribe */
  int asks;                     /* SUBSCRIBE replies awaited */
  int init_status;
  char init_error[256];
  int init_done;
  /* the queue (pull mode) */
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* an event queued / room made / init done */
  sub_item_t *head, *tail;
  size_t queued;
  sub_item_t *current;          /* the last one grid_sub_next returned */
  int ended;                    /* the subscription ended with this status
                                   (GRID_EVENT_ENDED): no more events */
  int ended_told;               /* ... and grid_sub_next passed it on */
  int closing;                  /* grid_unsubscribe runs: waiters leave */
  int waiters;                  /* threads in grid_sub_next */
};

static uint64_t sub_next_id(void) {
  static _Atomic uint64_t seq = 0;
  return atomic_fetch_add(&seq, 1) + 1;
}

/* ---- delivery ----------------------------------------------------------- */

/* A copy of ev that owns its bytes, or NULL. */
static sub_item_t *sub_item_new(const grid_event_t *ev) {
  sub_item_t *it = malloc(sizeof *it + ev->key_len + ev->value_len + 1);
  if (!it) return NULL;
  it->next = NULL;
  it->ev = *ev;
  if (ev->key_len) memcpy(it->data, ev->key, ev->key_len);
  if (ev->value_len) memcpy(it->data + ev->key_len, ev->value, ev->value_len);
  it->data[ev->key_len + ev->value_len] = '\0';
  it->ev.key = it->data;
  it->ev.value = ev->value_len || ev->value ? it->data + ev->key_len : NULL;
  return it;
}

/* The subscription ends with status: the callback hears it, or
 * grid_sub_next once the queue is drained; nothing more is read. */
/* Sets p's home, moving its life on where it is taken or let go. */
static void sub_set_home(grid_sub_t *s, uint32_t p, int home) {
  if ((s->home[p] >= 0) != (home >= 0)) atomic_fetch_add(&s->life[p], 1);
  s->home[p] = home;
}

uint32_t sub_life(const grid_sub_t *s, uint32_t p) {
  return s->life && p < s->nparts ? atomic_load(&s->life[p]) : 0;
}

uint32_t sub_partitions(const grid_sub_t *s) { return s->life ? s->nparts : 0; }

static void sub_end(grid_sub_t *s, int status, const char *why) {
  if (s->ended) return;
  for (uint32_t p = 0; s->home && p < s->nparts; p++) sub_set_home(s, p, SUB_HOMELESS);
  LOG_W("client", "\"a subscription ended\" cache=%s error=%s reason=\"%s\"", s->cache,
        grid_err_name(status), why);
  atomic_store(&s->stop, 1);
  if (s->opts.callback) {
    s->ended = status;
    grid_event_t ev = {.kind = GRID_EVENT_ENDED, .status = status};
    s->opts.callback(&ev, s->opts.arg);
    return;
  }
  pthread_mutex_lock(&s->lock);
  s->ended = status;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* Queues it for grid_sub_next, waiting while the queue is full (except in
 * the first round: grid_subscribe has not returned, nobody reads yet). */
static void sub_enqueue(grid_sub_t *s, sub_item_t *it) {
  pthread_mutex_lock(&s->lock);
  size_t max = s->opts.queue_max ? s->opts.queue_max : SUB_QUEUE_DEFAULT;
  while (s->init_done && s->queued >= max && !atomic_load(&s->stop)) {
    struct timespec ts = clock_mono_deadline(100); /* stop is looked at again */
    pthread_cond_timedwait(&s->cond, &s->lock, &ts);
  }
  if (s->tail) s->tail->next = it;
  else s->head = it;
  s->tail = it;
  s->queued++;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* Passes ev on: to the callback, or queued. */
static void sub_deliver(grid_sub_t *s, const grid_event_t *ev) {
  if (s->ended) return;
  if (s->opts.callback) {
    s->opts.callback(ev, s->opts.arg);
    return;
  }
  sub_item_t *it = sub_item_new(ev);
  if (!it) {
    sub_end(s, GRID_ENOMEM, "out of memory queueing an event");
    return;
  }
  sub_enqueue(s, it);
}

/* Holds a snapshot entry of p until its snapshot is whole. */
static void sub_hold(grid_sub_t *s, uint32_t p, const grid_event_t *ev) {
  sub_item_t *it = sub_item_new(ev);
  if (!it) {
    sub_end(s, GRID_ENOMEM, "out of memory holding a snapshot");
    return;
  }
  if (s->held_tail[p]) s->held_tail[p]->next = it;
  else s->held[p] = it;
  s->held_tail[p] = it;
}

/* p's snapshot is whole: its entries go on, in the order they came. */
static void sub_release_held(grid_sub_t *s, uint32_t p) {
  sub_item_t *it = s->held[p];
  s->held[p] = s->held_tail[p] = NULL;
  while (it) {
    sub_item_t *next = it->next;
    it->next = NULL;
    if (s->ended) {
      free(it);
    } else if (s->opts.callback) {
      s->opts.callback(&it->ev, s->opts.arg);
      free(it);
    } else {
      sub_enqueue(s, it);
    }
    it = next;
  }
}

/* p's snapshot was cut short (its node went, or moved it): what came of
 * it is dropped; the next one is sent whole. */
static void sub_drop_held(grid_sub_t *s, uint32_t p) {
  sub_item_t *it = s->held[p];
  s->held[p] = s->held_tail[p] = NULL;
  while (it) {
    sub_item_t *next = it->next;
    free(it);
    it = next;
  }
}

/* ---- connections ---------------------------------------------------------- */

static int sub_send(sub_conn_t *c, const Grid__Request *rq) {
  size_t n = grid__request__get_packed_size(rq);
  unsigned char *buf = malloc(FRAME_HEADER_BYTES + n);
  if (!buf) return GRID_ENOMEM;
  frame_put_header(buf, (uint32_t)n);
  grid__request__pack(rq, buf + FRAME_HEADER_BYTES);
  int rc = client_link_send(c->link, c->fd, buf, FRAME_HEADER_BYTES + n) ? GRID_ECONN : 0;
  free(buf);
  return rc;
}

static void sub_conn_lost(grid_sub_t *s, size_t ci) {
  sub_conn_t *c = &s->conns[ci];
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  client_link_unref(c->link);
  c->link = NULL;
  c->in.len = 0;
  for (uint32_t p = 0; p < s->nparts; p++) {
    if (s->home[p] == (int)ci || (s->home[p] == SUB_ASKING && s->asking_on[p] == (int)ci)) {
      sub_set_home(s, p, SUB_HOMELESS);
      sub_drop_held(s, p);
    }
  }
  s->retry_at_ms = 0;
}

/* The connection to addr, made now if need be; -1 when it cannot be. */
static int sub_conn_get(grid_sub_t *s, const char *addr) {
  size_t ci = s->nconns;
  for (size_t i = 0; i < s->nconns; i++) {
    if (strcmp(s->conns[i].addr, addr) == 0) {
      if (s->conns[i].fd >= 0) return (int)i;
      ci = i;
      break;
    }
  }
  if (ci == SUB_CONNS_MAX) return -1;
  char host[128];
  int port, fd;
  uint64_t reply_max;
  grid_options_t o;
  struct tls_ctx *tls;
  client_link_t *link;
  router_link_opts(s->g->router, &o, &tls);
  o.client_name = "subscription";
  if (router_split(addr, host, sizeof host, &port) != 0 ||
      remote_dial_fd(host, port, &o, tls, s->g->timeout_ms, &fd, &link, &reply_max) != 0)
    return -1;
  sub_conn_t *c = &s->conns[ci];
  if (ci == s->nconns) {
    memset(c, 0, sizeof *c);
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    frame_buf_init(&c->in, SUB_RBUF_BYTES, (size_t)reply_max);
    s->nconns++;
  } else {
    frame_buf_set_frame_max(&c->in, (size_t)reply_max);
  }
  c->fd = fd;
  c->link = link;
  c->in.len = 0;
  return (int)ci;
}

/* Sends SUBSCRIBE for the partitions in ps (n of them) on conn ci. */
static int sub_ask(grid_sub_t *s, int ci, const uint32_t *ps, size_t n) {
  sub_conn_t *c = &s->conns[ci];
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.op = GRID__OP__SUBSCRIBE;
  rq.id = ++c->next_id;
  rq.cache = s->cache;
  rq.sub = s->id;
  rq.keys_only = s->opts.keys_only;
  if (s->prefix) {
    rq.prefix.data = s->prefix;
    rq.prefix.len = s->opts.prefix_len;
  }
  ProtobufCBinaryData *keys = NULL;
  if (s->opts.n_affinity_keys) {
    keys = calloc(s->opts.n_affinity_keys, sizeof *keys);
    if (!keys) return GRID_ENOMEM;
    for (size_t i = 0; i < s->opts.n_affinity_keys; i++) {
      keys[i].data = s->akeys[i];
      keys[i].len = s->akey_lens[i];
    }
    rq.keys = keys;
    rq.n_keys = s->opts.n_affinity_keys;
  }
  Grid__SubPosition *sp = calloc(n ? n : 1, sizeof *sp);
  Grid__SubPosition **spp = calloc(n ? n : 1, sizeof *spp);
  int rc = GRID_ENOMEM;
  if (sp && spp) {
    for (size_t i = 0; i < n; i++) {
      grid__sub_position__init(&sp[i]);
      sp[i].partition = ps[i];
      sp[i].after = s->pos[ps[i]];
      sp[i].now = s->fresh[ps[i]];
      sp[i].snapshot = s->snapdue[ps[i]];
      spp[i] = &sp[i];
    }
    rq.positions = spp;
    rq.n_positions = n;
    rc = sub_send(c, &rq);
  }
  free(sp);
  free(spp);
  free(keys);
  if (rc != 0) return rc;
  int64_t now = clock_mono_ms();
  for (size_t i = 0; i < n; i++) {
    s->home[ps[i]] = SUB_ASKING;
    s->asking_on[ps[i]] = ci;
    s->asked_ms[ps[i]] = now;
    s->asked_id[ps[i]] = rq.id;
  }
  return 0;
}

/* ---- what the nodes send ---------------------------------------------------- */

static void sub_on_event(grid_sub_t *s, size_t ci, const Grid__Event *e) {
  uint32_t p = e->partition;
  if (e->kind == GRID__EVENT_KIND__EVENT_DROPPED) {
    sub_end(s, GRID_ENOCACHE, "the cache was dropped");
    return;
  }
  if (p >= s->nparts || s->home[p] != (int)ci) return; /* not from its home now */
  switch (e->kind) {
    case GRID__EVENT_KIND__EVENT_END:
      /* The last frame of p on this connection: its counter is where the
       * node got to (past changes the filter left out). */
      if (!s->snapdue[p] && e->counter > s->pos[p]) s->pos[p] = e->counter;
      sub_set_home(s, p, SUB_HOMELESS);
      sub_drop_held(s, p);
      s->retry_at_ms = 0;
      return;
    case GRID__EVENT_KIND__EVENT_SNAPSHOT: {
      if (!s->snapdue[p]) return; /* a snapshot taken again: had it */
      grid_event_t ev = {
          .kind = GRID_EVENT_PUT, .partition = p, .version = e->version,
          .key = e->key.data, .key_len = e->key.len,
          .value = s->opts.keys_only ? NULL : e->value.data ? (const void *)e->value.data : "",
          .value_len = e->value.len, .expire_at_ms = e->expire_at_ms, .snapshot = 1};
      sub_hold(s, p, &ev);
      return;
    }
    case GRID__EVENT_KIND__EVENT_SNAPSHOT_END:
      if (!s->snapdue[p]) return;
      s->snapdue[p] = 0;
      s->pos[p] = e->counter;
      sub_release_held(s, p);
      if (--s->snaps_left == 0) {
        grid_event_t ev = {.kind = GRID_EVENT_SYNCED, .partition = p};
        sub_deliver(s, &ev);
      }
      return;
    case GRID__EVENT_KIND__EVENT_GAP: {
      grid_event_t ev = {.kind = GRID_EVENT_GAP, .partition = p};
      /* Where the node goes on: past what was lost, or back to where its
       * history starts when the position came from another history. */
      s->pos[p] = e->counter;
      sub_deliver(s, &ev);
      return;
    }
    default:
      break;
  }
  if (e->counter <= s->pos[p]) return; /* passed on already */
  s->pos[p] = e->counter;
  grid_event_t ev = {
      .kind = e->kind == GRID__EVENT_KIND__EVENT_PUT      ? GRID_EVENT_PUT
              : e->kind == GRID__EVENT_KIND__EVENT_EXPIRE ? GRID_EVENT_EXPIRE
                                                          : GRID_EVENT_DELETE,
      .partition = p,
      .version = e->version,
      .key = e->key.data,
      .key_len = e->key.len,
      .value = e->kind == GRID__EVENT_KIND__EVENT_PUT && !s->opts.keys_only
                   ? (e->value.data ? (const void *)e->value.data : "")
                   : NULL,
      .value_len = e->value.len,
      .expire_at_ms = e->expire_at_ms,
      .op = e->op,
  };
  sub_deliver(s, &ev);
}

static void sub_on_reply(grid_sub_t *s, size_t ci, const Grid__Reply *rp) {
  if (rp->sub) {
    for (size_t i = 0; i < rp->n_events; i++) sub_on_event(s, ci, rp->events[i]);
    return;
  }
  if (rp->id == 0) return; /* a connection-level error: the close follows */
  if (rp->status != 0) {
    /* A refusal of the whole request: its partitions are asked again
     * later; the first round reports one that is not about the moment (a
     * node not serving, or not placing the cache yet). */
    for (uint32_t p = 0; p < s->nparts; p++)
      if (s->home[p] == SUB_ASKING && s->asking_on[p] == (int)ci && s->asked_id[p] == rp->id)
        s->home[p] = SUB_HOMELESS;
    /* (A node at subscriptions_max may have room later: after the first
     * round, asked again. Other limits do not pass.) */
    int transient = rp->status == GRID_ECLUSTER || rp->status == GRID_ENOTREADY ||
                    rp->status == GRID_ESTALE || rp->status == GRID_EBUSY ||
                    (rp->status == GRID_ELIMIT && s->init_done && rp->message &&
                     strstr(rp->message, "subscriptions_max"));
    const char *why = rp->message ? rp->message : grid_strerror(rp->status);
    if (!transient && !s->init_done && !s->init_status) {
      s->init_status = rp->status;
      snprintf(s->init_error, sizeof s->init_error, "%s", why);
    } else if (!transient && s->init_done) {
      sub_end(s, rp->status, why); /* the cache was dropped, say */
    }
    if (s->asks) s->asks--;
    return;
  }
  if (!s->nparts && rp->number) {
    /* A single node: it says how many partitions there are. */
    s->nparts = (uint32_t)rp->number;
  } else if (rp->number && rp->number != s->nparts) {
    sub_end(s, GRID_ENOCACHE, "the cache was made again with other partitions");
    return;
  }
  for (size_t i = 0; i < rp->n_positions; i++) {
    uint32_t p = rp->positions[i]->partition;
    if (p >= s->nparts || s->home[p] != SUB_ASKING || s->asking_on[p] != (int)ci) continue;
    sub_set_home(s, p, (int)ci);
    if (s->fresh[p]) s->pos[p] = rp->positions[i]->after;
    s->fresh[p] = 0;
  }
  for (size_t i = 0; i < rp->n_moved; i++) {
    uint32_t p = rp->moved[i];
    if (p < s->nparts && s->home[p] == SUB_ASKING) s->home[p] = SUB_HOMELESS;
  }
  if (s->asks) s->asks--;
}

/* One read of conn ci: 1 when it read, 0 when nothing was there, -1 when
 * it closed. */
static int sub_read_once(grid_sub_t *s, size_t ci) {
  sub_conn_t *c = &s->conns[ci];
  size_t room = frame_buf_room(&c->in, 1);
  if (room == 0) return 0;
  ssize_t n = client_link_recv(c->link, c->fd, c->in.data + c->in.len, room, MSG_DONTWAIT);
  if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  if (n <= 0) return -1;
  c->in.len += (size_t)n;
  size_t off = 0;
  frame_result_t fr;
  const unsigned char *payload;
  size_t plen, flen;
  while (!atomic_load(&s->stop) &&
         (fr = frame_buf_next(&c->in, &off, &payload, &plen, &flen)) == FRAME_OK) {
    Grid__Reply *rp = grid__reply__unpack(NULL, plen, payload);
    if (!rp) return -1;
    sub_on_reply(s, ci, rp);
    grid__reply__free_unpacked(rp, NULL);
    if (c->fd < 0) return 0;
  }
  if (!atomic_load(&s->stop) && fr == FRAME_TOO_BIG) return -1;
  frame_buf_consume(&c->in, off);
  return 1;
}

/* Reads what conn ci has; -1 when it closed. Over TLS, until the session
 * and the socket have nothing more: poll sees only the socket. */
static int sub_read(grid_sub_t *s, size_t ci) {
  sub_conn_t *c = &s->conns[ci];
  int rc;
  while ((rc = sub_read_once(s, ci)) == 1 && c->link && c->fd >= 0) {
  }
  return rc < 0 ? -1 : 0;
}

/* ---- placing partitions ------------------------------------------------------- */

/* Asks each homeless partition's primary to take it. */
static void sub_place(grid_sub_t *s, int refresh) {
  router_place_t pl;
  int rc = router_place(s->g->router, s->cache, refresh, s->g->timeout_ms, &pl);
  if (rc != 0) {
    if (!s->init_done && !s->init_status) {
      s->init_status = rc;
      snprintf(s->init_error, sizeof s->init_error, "%s", grid_strerror(rc));
    } else if (s->init_done && rc == GRID_ENOCACHE) {
      sub_end(s, rc, "the cache was dropped");
    }
    return;
  }
  if (pl.partitions && !s->nparts) s->nparts = pl.partitions;
  if (pl.partitions && pl.partitions != s->nparts) {
    router_place_free(&pl);
    sub_end(s, GRID_ENOCACHE, "the cache was made again with other partitions");
    return;
  }
  uint32_t *ps = malloc((s->nparts ? s->nparts : 1) * sizeof *ps);
  for (size_t a = 0; ps && a < pl.naddrs; a++) {
    size_t n = 0;
    for (uint32_t p = 0; p < s->nparts; p++) {
      if (s->home[p] >= 0 && pl.partitions && pl.primary[p] != (int)a &&
          strcmp(s->conns[s->home[p]].addr, pl.addrs[a]) == 0) {
        /* Led elsewhere now: this node will END it; ask the new one. */
        sub_set_home(s, p, SUB_HOMELESS);
      }
      if (s->home[p] != SUB_HOMELESS) continue;
      if (pl.partitions ? pl.primary[p] == (int)a : a == 0) ps[n++] = p;
    }
    if (!n) continue;
    int ci = sub_conn_get(s, pl.addrs[a]);
    /* In requests of a few partitions each: a reply names them all, and
     * must fit the node's frame_bytes_max (1K at least). */
    for (size_t at = 0; ci >= 0 && at < n; at += SUB_ASK_PARTITIONS_MAX) {
      size_t k = n - at < SUB_ASK_PARTITIONS_MAX ? n - at : SUB_ASK_PARTITIONS_MAX;
      if (sub_ask(s, ci, ps + at, k) != 0) {
        sub_conn_lost(s, (size_t)ci);
        ci = -1;
        break;
      }
      s->asks++;
    }
  }
  free(ps);
  router_place_free(&pl);
}

static int sub_homeless(const grid_sub_t *s) {
  for (uint32_t p = 0; p < s->nparts; p++)
    if (s->home[p] == SUB_HOMELESS) return 1;
  return 0;
}

/* Partitions not taken yet: HOMELESS or ASKING. */
static uint32_t sub_untaken(const grid_sub_t *s) {
  uint32_t n = 0;
  for (uint32_t p = 0; p < s->nparts; p++)
    n += s->home[p] == SUB_HOMELESS || s->home[p] == SUB_ASKING;
  return n;
}

/* A SUBSCRIBE not answered within the handle's timeout: its node is
 * taken as gone (cut off, stopped), its connection closed, its partitions
 * asked again where the map says. */
static void sub_check_asks(grid_sub_t *s, int64_t now) {
  for (uint32_t p = 0; p < s->nparts; p++) {
    if (s->home[p] != SUB_ASKING || now - s->asked_ms[p] < (int64_t)s->g->timeout_ms) continue;
    int ci = s->asking_on[p];
    LOG_W("client", "\"a node did not answer a subscription: asking again\" node=%s",
          s->conns[ci].addr);
    sub_conn_lost(s, (size_t)ci);
  }
}

/* A single node's first round: how many partitions, then all of them. */
static int sub_size(grid_sub_t *s) {
  if (s->nparts) return 0;
  router_place_t pl;
  int rc = router_place(s->g->router, s->cache, 0, s->g->timeout_ms, &pl);
  if (rc != 0) return rc;
  if (pl.partitions) {
    s->nparts = pl.partitions;
    router_place_free(&pl);
    return 0;
  }
  int ci = sub_conn_get(s, pl.addrs[0]);
  router_place_free(&pl);
  if (ci < 0) return GRID_ECONN;
  rc = sub_ask(s, ci, NULL, 0);
  if (rc != 0) return rc;
  s->asks = 1;
  int64_t deadline = clock_mono_ms() + s->g->timeout_ms;
  while (s->asks && !s->init_status && s->conns[ci].fd >= 0 &&
         clock_mono_ms() < deadline) {
    struct pollfd pfd = {.fd = s->conns[ci].fd, .events = POLLIN};
    if (poll(&pfd, 1, 100) > 0 && sub_read(s, (size_t)ci) != 0) sub_conn_lost(s, (size_t)ci);
  }
  if (s->init_status) return s->init_status;
  return s->nparts ? 0 : GRID_ETIMEDOUT;
}

static int sub_alloc_parts(grid_sub_t *s) {
  s->pos = calloc(s->nparts, sizeof *s->pos);
  s->home = calloc(s->nparts, sizeof *s->home);
  s->asking_on = calloc(s->nparts, sizeof *s->asking_on);
  s->fresh = calloc(s->nparts, 1);
  s->snapdue = calloc(s->nparts, 1);
  s->held = calloc(s->nparts, sizeof *s->held);
  s->held_tail = calloc(s->nparts, sizeof *s->held_tail);
  s->asked_ms = calloc(s->nparts, sizeof *s->asked_ms);
  s->asked_id = calloc(s->nparts, sizeof *s->asked_id);
  _Atomic uint32_t *life = calloc(s->nparts, sizeof *life);
  if (!s->pos || !s->home || !s->asking_on || !s->fresh || !s->snapdue || !s->held ||
      !s->held_tail || !s->asked_ms || !s->asked_id || !life) {
    free(life);
    return GRID_ENOMEM;
  }
  s->life = life;
  for (uint32_t p = 0; p < s->nparts; p++) {
    s->home[p] = s->opts.n_affinity_keys ? SUB_UNWANTED : SUB_HOMELESS;
    s->fresh[p] = 1;
  }
  for (size_t i = 0; i < s->opts.n_affinity_keys; i++)
    s->home[part_of(s->akeys[i], s->akey_lens[i], s->nparts)] = SUB_HOMELESS;
  for (uint32_t p = 0; s->opts.snapshot && p < s->nparts; p++) {
    if (s->home[p] == SUB_UNWANTED) continue;
    s->snapdue[p] = 1;
    s->snaps_left++;
  }
  return 0;
}

/* ---- the thread ---------------------------------------------------------------- */

static void sub_init_finish(grid_sub_t *s) {
  pthread_mutex_lock(&s->lock);
  s->init_done = 1;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void *sub_main(void *arg) {
  grid_sub_t *s = arg;
  int rc = sub_size(s);
  if (rc == 0) rc = sub_alloc_parts(s);
  if (rc != 0) {
    if (!s->init_status) {
      s->init_status = rc;
      snprintf(s->init_error, sizeof s->init_error, "%s", grid_strerror(rc));
    }
    sub_init_finish(s);
    return NULL;
  }
  s->asks = 0;
  sub_place(s, 0);
  int64_t init_deadline = clock_mono_ms() + s->g->timeout_ms;
  while (!atomic_load(&s->stop)) {
    int64_t now = clock_mono_ms();
    sub_check_asks(s, now);
    if (!s->init_done) {
      /* grid_subscribe returns once every partition is taken: one taken
       * later "from now" would miss what was written in between. */
      uint32_t left = sub_untaken(s);
      if (!s->init_status && left && now >= init_deadline) {
        s->init_status = GRID_ETIMEDOUT;
        snprintf(s->init_error, sizeof s->init_error,
                 "%u partitions have no primary that takes the subscription now "
                 "(the cluster is changing): subscribe again", left);
      }
      if (s->init_status || !left) sub_init_finish(s);
    }
    if (s->init_done && s->init_status) break; /* grid_subscribe fails */
    if (s->init_done && now >= s->map_check_at_ms) {
      s->map_check_at_ms = now + SUB_MAP_CHECK_MS;
      sub_place(s, 1);
    } else if (now >= s->retry_at_ms && sub_homeless(s)) {
      s->retry_at_ms = now + SUB_RETRY_MS;
      sub_place(s, 1);
    }
    if (atomic_load(&s->stop)) break;
    struct pollfd pfd[SUB_CONNS_MAX + 1];
    size_t idx[SUB_CONNS_MAX];
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){.fd = s->efd, .events = POLLIN};
    for (size_t i = 0; i < s->nconns; i++) {
      if (s->conns[i].fd < 0) continue;
      idx[n - 1] = i;
      pfd[n++] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
    }
    int wait = sub_untaken(s) ? SUB_RETRY_MS : SUB_MAP_CHECK_MS / 2;
    if (poll(pfd, n, wait) <= 0) continue;
    for (nfds_t i = 1; i < n && !atomic_load(&s->stop); i++) {
      if (!pfd[i].revents) continue;
      if (sub_read(s, idx[i - 1]) != 0) sub_conn_lost(s, idx[i - 1]);
    }
  }
  if (!s->init_done) sub_init_finish(s);
  return NULL;
}

/* ---- an embedded node outside a cluster --------------------------------------- */

/* Whether key passes the subscription's filter (the node applies it for a
 * remote subscription, stream.c). */
static int sub_passes(const grid_sub_t *s, const void *key, size_t key_len) {
  return part_key_passes(key, key_len, s->prefix, s->opts.prefix_len, s->atags, s->atag_lens,
                         s->opts.n_affinity_keys);
}

typedef struct sub_local_read {
  grid_sub_t *s;
  uint32_t p;
  int snapshot;
} sub_local_read_t;

/* A change (or a snapshot's entry) read from the store, as a node would
 * have sent it. */
static int sub_local_change(void *ctx, const embedded_change_t *ch) {
  sub_local_read_t *r = ctx;
  grid_sub_t *s = r->s;
  if (!sub_passes(s, ch->key, ch->key_len)) return 0;
  Grid__Event e = GRID__EVENT__INIT;
  e.kind = r->snapshot       ? GRID__EVENT_KIND__EVENT_SNAPSHOT
           : ch->kind == 1 ? GRID__EVENT_KIND__EVENT_PUT
           : ch->kind == 3 ? GRID__EVENT_KIND__EVENT_EXPIRE
                           : GRID__EVENT_KIND__EVENT_DELETE;
  e.partition = r->p;
  e.counter = ch->counter;
  e.version = ch->version;
  e.op = ch->how & 0x7f; /* CHANGE_HOW_OP: the op, without the new-key bit */
  if (e.op >= 64) e.op = GRID__OP__COLL; /* NOTIFY_HOW_EVENT: a collection command's */
  e.key.data = (uint8_t *)ch->key;
  e.key.len = ch->key_len;
  if (ch->kind == 1) {
    e.expire_at_ms = ch->expire_at_ms;
    e.value_type = ch->type;
    if (!s->opts.keys_only) {
      e.value.data = (uint8_t *)ch->value;
      e.value.len = ch->value_len;
    }
  }
  sub_on_event(s, 0, &e);
  return atomic_load(&s->stop);
}

static int sub_local_keep(void *ctx, const void *key, size_t key_len) {
  return sub_passes(ctx, key, key_len);
}

/* Reads p from its position up to what is announced: 0 when it caught up,
 * 1 when more is left for its next turn, 2 when memory ran out (its turn
 * comes after a pause). */
static int sub_local_pump(grid_sub_t *s, uint32_t p, uint64_t (*hints)[3]) {
  embedded_filter_t f = {sub_local_keep, s, s->opts.keys_only};
  if (s->snapdue[p]) {
    sub_local_read_t r = {s, p, 1};
    Grid__Event e = GRID__EVENT__INIT;
    e.kind = GRID__EVENT_KIND__EVENT_SNAPSHOT_END;
    e.partition = p;
    int failed = 0;
    e.counter = embedded_watch_snapshot(s->ew, p, &f, sub_local_change, &r, &failed);
    if (failed) {
      sub_drop_held(s, p); /* not whole: taken again */
      return 2;
    }
    sub_on_event(s, 0, &e);
  }
  for (int batch = 0; batch < 64 && !atomic_load(&s->stop); batch++) {
    sub_local_read_t r = {s, p, 0};
    uint64_t next, upto, before = s->pos[p];
    int rc = embedded_watch_read(s->ew, p, before, 256, &f, sub_local_change, &r, &next, &upto,
                                 hints[p]);
    if (rc < 0) {
      if (next > s->pos[p]) s->pos[p] = next;
      return 2;
    }
    if (rc > 0) {
      Grid__Event e = GRID__EVENT__INIT;
      e.kind = GRID__EVENT_KIND__EVENT_GAP;
      e.partition = p;
      e.counter = next;
      sub_on_event(s, 0, &e);
    }
    /* Past the changes the filter left out too. */
    if (next > s->pos[p]) s->pos[p] = next;
    if (s->pos[p] >= upto || next == before) return 0;
  }
  return !atomic_load(&s->stop);
}

static void sub_local_mark(void *ctx, uint32_t p) {
  unsigned char *dirty = ctx;
  dirty[p] = 1;
}

static void *sub_local_main(void *arg) {
  grid_sub_t *s = arg;
  int rc = embedded_watch_open(s->g->embedded, s->cache, &s->ew, &s->nparts);
  if (rc == 0) rc = sub_alloc_parts(s);
  uint64_t (*hints)[3] = rc == 0 ? calloc(s->nparts, sizeof *hints) : NULL;
  unsigned char *dirty = rc == 0 ? calloc(s->nparts, 1) : NULL;
  if (rc == 0 && (!hints || !dirty)) rc = GRID_ENOMEM;
  if (rc != 0) {
    s->init_status = rc;
    snprintf(s->init_error, sizeof s->init_error, "%s",
             rc == GRID_ENOCACHE ? "no such cache" : grid_strerror(rc));
    free(hints);
    free(dirty);
    sub_init_finish(s);
    return NULL;
  }
  /* Every partition is here: taken at once, from now. */
  for (uint32_t p = 0; p < s->nparts; p++) {
    if (s->home[p] == SUB_UNWANTED) continue;
    sub_set_home(s, p, 0);
    s->fresh[p] = 0;
    s->pos[p] = embedded_watch_now(s->ew, p);
    if (s->snapdue[p]) dirty[p] = 1;
  }
  sub_init_finish(s);
  int more = 1, pause = 0; /* snapshots to take first */
  while (!atomic_load(&s->stop)) {
    if (embedded_watch_dropped(s->ew)) {
      sub_end(s, GRID_ENOCACHE, "the cache was dropped");
      break;
    }
    /* With partitions left to read, no waiting: their turn is now (after
     * a pause when memory ran out). */
    int wait = more && !pause ? 0 : 100;
    if (!embedded_watch_wait(s->ew, (uint32_t)wait) && !more) continue;
    embedded_watch_take(s->ew, sub_local_mark, dirty);
    more = pause = 0;
    for (uint32_t p = 0; p < s->nparts && !atomic_load(&s->stop); p++) {
      if (!dirty[p] || s->home[p] != 0) continue;
      int got = sub_local_pump(s, p, hints);
      dirty[p] = got != 0;
      more |= got != 0;
      pause |= got == 2;
    }
  }
  free(hints);
  free(dirty);
  return NULL;
}

/* ---- the calls ------------------------------------------------------------------- */

static void sub_free(grid_sub_t *s) {
  for (size_t i = 0; i < s->nconns; i++) {
    if (s->conns[i].fd >= 0) close(s->conns[i].fd);
    client_link_unref(s->conns[i].link);
    free(s->conns[i].in.data);
  }
  for (size_t i = 0; i < s->opts.n_affinity_keys && s->akeys; i++) free(s->akeys[i]);
  free(s->akeys);
  free(s->akey_lens);
  free(s->atags);
  free(s->atag_lens);
  free(s->prefix);
  free(s->pos);
  free(s->home);
  free(s->asking_on);
  free(s->fresh);
  free(s->snapdue);
  for (uint32_t p = 0; s->held && p < s->nparts; p++) sub_drop_held(s, p);
  free(s->held);
  free(s->held_tail);
  free(s->asked_ms);
  free(s->asked_id);
  free((void *)s->life);
  while (s->head) {
    sub_item_t *it = s->head;
    s->head = it->next;
    free(it);
  }
  free(s->current);
  if (s->efd >= 0) close(s->efd);
  embedded_watch_close(s->ew);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  free(s);
}

static int sub_check_opts(const grid_sub_options_t *o) {
  if (o->prefix && o->prefix_len == 0) {
    client_set_error("an empty prefix (omit the prefix to follow every key)");
    return GRID_EINVAL;
  }
  if (!o->prefix && o->prefix_len) {
    client_set_error("prefix_len without a prefix");
    return GRID_EINVAL;
  }
  if (o->prefix && o->n_affinity_keys) {
    client_set_error("a subscription filters by a prefix or by affinity keys, not both");
    return GRID_EINVAL;
  }
  if (o->n_affinity_keys && (!o->affinity_keys || !o->affinity_key_lens)) {
    client_set_error("n_affinity_keys without affinity_keys and affinity_key_lens");
    return GRID_EINVAL;
  }
  for (size_t i = 0; i < o->n_affinity_keys; i++) {
    if (!o->affinity_keys[i] || o->affinity_key_lens[i] == 0) {
      client_set_error("an empty affinity key");
      return GRID_EINVAL;
    }
  }
  return 0;
}

int grid_subscribe(grid_t *g, const char *cache, const grid_sub_options_t *opts,
                   grid_sub_t **out) {
  if (!g || !out) return GRID_EINVAL;
  grid_sub_options_t o = {0};
  if (opts) o = *opts;
  int rc = sub_check_opts(&o);
  if (rc != 0) return rc;
  if (!cache) cache = "default";
  if (strlen(cache) > 64) {
    client_set_error("a cache name is at most 64 bytes");
    return GRID_EINVAL;
  }
  grid_sub_t *s = calloc(1, sizeof *s);
  if (!s) return GRID_ENOMEM;
  s->efd = -1;
  pthread_mutex_init(&s->lock, NULL);
  clock_cond_init(&s->cond);
  s->g = g;
  snprintf(s->cache, sizeof s->cache, "%s", cache);
  s->opts = o;
  s->id = sub_next_id();
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  rc = s->efd >= 0 ? 0 : GRID_ENOMEM;
  if (rc == 0 && o.prefix) {
    s->prefix = malloc(o.prefix_len);
    if (s->prefix) memcpy(s->prefix, o.prefix, o.prefix_len);
    else rc = GRID_ENOMEM;
  }
  if (rc == 0 && o.n_affinity_keys) {
    s->akeys = calloc(o.n_affinity_keys, sizeof *s->akeys);
    s->akey_lens = calloc(o.n_affinity_keys, sizeof *s->akey_lens);
    s->atags = calloc(o.n_affinity_keys, sizeof *s->atags);
    s->atag_lens = calloc(o.n_affinity_keys, sizeof *s->atag_lens);
    if (!s->akeys || !s->akey_lens || !s->atags || !s->atag_lens) rc = GRID_ENOMEM;
    for (size_t i = 0; rc == 0 && i < o.n_affinity_keys; i++) {
      s->akeys[i] = malloc(o.affinity_key_lens[i]);
      if (!s->akeys[i]) {
        rc = GRID_ENOMEM;
        break;
      }
      memcpy(s->akeys[i], o.affinity_keys[i], o.affinity_key_lens[i]);
      s->akey_lens[i] = o.affinity_key_lens[i];
      part_affinity(s->akeys[i], s->akey_lens[i], &s->atags[i], &s->atag_lens[i]);
    }
  }
  if (rc == 0 &&
      pthread_create(&s->thread, NULL, g->router ? sub_main : sub_local_main, s) != 0)
    rc = GRID_ENOMEM;
  if (rc != 0) {
    sub_free(s);
    return rc;
  }
  pthread_mutex_lock(&s->lock);
  while (!s->init_done) pthread_cond_wait(&s->cond, &s->lock);
  pthread_mutex_unlock(&s->lock);
  if (s->init_status) {
    rc = s->init_status;
    client_set_error(s->init_error);
    atomic_store(&s->stop, 1);
    uint64_t one = 1;
    (void)!write(s->efd, &one, sizeof one);
    pthread_join(s->thread, NULL);
    sub_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int grid_sub_next(grid_sub_t *s, uint32_t timeout_ms, grid_event_t *ev) {
  if (!s || !ev) return GRID_EINVAL;
  if (s->opts.callback) return GRID_EINVAL;
  struct timespec ts = clock_mono_deadline(timeout_ms);
  pthread_mutex_lock(&s->lock);
  s->waiters++;
  free(s->current);
  s->current = NULL;
  int rc = 0;
  while (!s->head && !s->closing && !s->ended) {
    if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
  }
  if (s->head) {
    sub_item_t *it = s->head;
    s->head = it->next;
    if (!s->head) s->tail = NULL;
    s->queued--;
    s->current = it;
    *ev = it->ev;
    pthread_cond_broadcast(&s->cond); /* room for the reader */
  } else if (s->closing) {
    rc = GRID_ECONN;
  } else if (s->ended && !s->ended_told) {
    /* Once, the event that says why; then the status itself. */
    s->ended_told = 1;
    *ev = (grid_event_t){.kind = GRID_EVENT_ENDED, .status = s->ended};
  } else if (s->ended) {
    rc = s->ended;
  } else {
    rc = GRID_ETIMEDOUT;
  }
  if (--s->waiters == 0 && s->closing) pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
  return rc;
}

void grid_unsubscribe(grid_sub_t *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  uint64_t one = 1;
  (void)!write(s->efd, &one, sizeof one);
  pthread_join(s->thread, NULL);
  /* Threads waiting in grid_sub_next leave (GRID_ECONN) before it goes. */
  pthread_mutex_lock(&s->lock);
  s->closing = 1;
  pthread_cond_broadcast(&s->cond);
  while (s->waiters) pthread_cond_wait(&s->cond, &s->lock);
  pthread_mutex_unlock(&s->lock);
  /* Closing the connections ends the subscriptions on the nodes. */
  sub_free(s);
}

const char *grid_event_name(grid_event_kind_t kind) {
  switch (kind) {
    case GRID_EVENT_PUT: return "put";
    case GRID_EVENT_DELETE: return "delete";
    case GRID_EVENT_EXPIRE: return "expire";
    case GRID_EVENT_GAP: return "gap";
    case GRID_EVENT_SYNCED: return "synced";
    case GRID_EVENT_ENDED: return "ended";
  }
  return "?";
}
