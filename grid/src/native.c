#include "native.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "clock.h"
#include "cluster.h"
#include "frame.h"
#include "grid_types.h"
#include "log.h"
#include "node.h"
#include "op.h"
#include "pmap.h"
#include "notify.h"
#include "ops.h"
#include "route.h"
#include "sink.h"
#include "pubsub.h"
#include "stream.h"
#include "auth.h"

/* A native connection's own state (c->fe). */
typedef struct native_conn {
  unsigned peer_role : 1;      /* the peer said hello as a grid node */
  unsigned map_wait : 1;       /* a peer's record names a map not read here
                                  yet: reading stops, the frame waits */
  unsigned map_wait_over : 1;  /* ... for longer than forward_timeout_ms:
                                  the record is refused */
  int64_t map_wait_since_ms;
  char peer_id[64];            /* a peer's node id, from its hello */
  stream_sub_t **subs;         /* change-stream subscriptions on it */
  size_t nsubs, subs_cap;
  int batch_open;              /* an event frame is being filled in the
                                  output, from batch_at */
  size_t batch_at;
  uint64_t batch_sub;
  size_t running;              /* requests handed to route, not answered */
  auth_principal_t *who;       /* auth = on: the client's user; NULL for
                                  a node, or without auth */
  uint64_t started_ns;         /* when the request being served came */
} native_conn_t;

#define NATIVE_BATCH_BYTES 65536 /* events put in one frame, about */

static native_conn_t *native_of(conn_t *c) { return c->fe; }

/* ---- output ------------------------------------------------------------ */

/* Ends the event frame being filled: its length goes in its header. */
static void native_batch_close(conn_t *c) {
  native_conn_t *nc = c->fe;
  if (!nc || !nc->batch_open) return;
  nc->batch_open = 0;
  size_t len = c->wlen - nc->batch_at - FRAME_HEADER_BYTES;
  GRID_ASSERT(len <= UINT32_MAX);
  frame_put_header(c->wbuf + nc->batch_at, (uint32_t)len);
}

/* Appends one framed message to the connection's output. */
static int native_send(conn_t *c, const ProtobufCMessage *m) {
  native_batch_close(c); /* frames never interleave */
  size_t n = protobuf_c_message_get_packed_size(m);
  GRID_ASSERT(n <= UINT32_MAX);
  unsigned char *at = conn_out_space(c, FRAME_HEADER_BYTES + n);
  if (!at) return GRID_ENOMEM;
  frame_put_header(at, (uint32_t)n);
  size_t packed = protobuf_c_message_pack(m, at + FRAME_HEADER_BYTES);
  GRID_ASSERT(packed == n);
  conn_out_commit(c, FRAME_HEADER_BYTES + n);
  return 0;
}

/* Sends rp (its id already set) on c and flushes, unless c has closed or
 * failed meanwhile. A reply that cannot be framed (out of memory) closes
 * the connection: its client then knows the request's outcome is unknown,
 * never waits for a reply that will not come. */
static void native_reply(conn_t *c, const Grid__Reply *rp) {
  if (!conn_open(c)) return;
  if (native_send(c, &rp->base) != 0) {
    conn_close(c);
    return;
  }
  conn_flush(c);
}

/* Sends a connection-level error and stops serving the connection. Before
 * the handshake the error goes in a HelloReply, which is what the peer
 * expects to read first. */
static void native_fail(conn_t *c, int status, const char *detail) {
  if (c->closing) return;
  arena_t *a = &c->lp->arena;
  LOG_W("net", "\"closing connection\" peer=%s error=%s detail=\"%s\"", c->peer,
        grid_err_name(status), detail ? detail : "");
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_reply_error(&rp, status, detail, a);
  if (!c->handshaken) {
    Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
    hr.status = status;
    hr.message = rp.message;
    hr.version = FRAME_PROTOCOL_VERSION;
    native_send(c, &hr.base);
  } else {
    native_send(c, &rp.base);
  }
  conn_close_when_written(c);
}

/* ---- deferred replies ---------------------------------------------------- */

/* A reply for request id on c, once route has it. */
typedef struct native_pending {
  sink_t sink;
  conn_t *c;
  uint64_t id;
  unsigned op;                 /* for the metrics */
  uint64_t started_ns;
} native_pending_t;

static void native_pending_fn(loop_t *lp, sink_t *s, const Grid__Reply *rp) {
  native_pending_t *pd = (native_pending_t *)s;
  metrics_record(&lp->metrics, pd->op, rp->status, clock_mono_ns() - pd->started_ns);
  if (native_of(pd->c) && native_of(pd->c)->running) native_of(pd->c)->running--;
  Grid__Reply r = *rp;
  r.id = pd->id;
  native_reply(pd->c, &r);
  conn_unref(pd->c);
  free(pd);
}

/* ---- input ------------------------------------------------------------- */

/* Whether a peer's hello may be taken: a member of the cluster, connecting
 * from the address it advertises, and with tls_replication over TLS with a
 * certificate the cluster's CA signed: records from anyone else would
 * bypass every client check. */
static int native_peer_allowed(conn_t *c, const Grid__Hello *h) {
  node_t *n = c->lp->node;
  char why[256], addr[PMAP_ADDR_MAX] = "";
  int rc = GRID_EHANDSHAKE;
  if (!n->cluster)
    snprintf(why, sizeof why, "this node is not in a cluster: it has no peers");
  else if (n->cfg.tls_replication && (!c->tls || !tls_sess_peer_verified(c->tls)))
    snprintf(why, sizeof why, "tls_replication = yes: a node links over TLS, to tls_port, "
             "with a certificate signed by tls_ca_cert_file");
  else if (!n->cfg.tls_replication && n->cfg.cluster_secret[0] &&
           !auth_secret_ok(n->cfg.cluster_secret, h->password))
    snprintf(why, sizeof why, "this cluster's nodes show its cluster_secret: this one did not");
  else
    rc = cluster_peer_check(n->cluster, h->client_name ? h->client_name : "", c->ip, addr,
                            sizeof addr, why, sizeof why);
  if (rc == 0 && n->cfg.tls_replication) {
    /* The certificate is the node's own: it names the host the node
     * advertises, as the one others check when they link to it (a client's
     * certificate from the same CA does not). */
    char host[PMAP_ADDR_MAX];
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    const char *hp = addr;
    if (hp[0] == '[' && hl >= 2) {
      hp++;
      hl -= 2;
    }
    snprintf(host, sizeof host, "%.*s", (int)hl, hp);
    if (!tls_sess_peer_names(c->tls, host)) {
      rc = GRID_EHANDSHAKE;
      snprintf(why, sizeof why, "its TLS certificate does not name the host it advertises (%s)",
               host);
    }
  }
  if (rc == 0) return 1;
  LOG_W("net", "\"peer refused\" peer=%s reason=\"%s\"", c->peer, why);
  native_fail(c, rc, why);
  return 0;
}

/* auth = on: the client logs in with its hello's user and password, or
 * with its TLS client certificate. 1 when it did; else it was told why. */
static int native_login(conn_t *c, const Grid__Hello *h) {
  node_t *n = c->lp->node;
  auth_principal_t p;
  char why[256];
  int rc;
  const char *cn = c->tls && tls_sess_peer_verified(c->tls) ? tls_sess_peer_cn(c->tls) : "";
  if (h->password && h->password[0]) {
    rc = auth_login(n->auth, h->user, h->password, c->ip, &p, why, sizeof why);
  } else if (cn[0] && (!h->user || !h->user[0] || !strcmp(h->user, cn))) {
    rc = auth_login_cert(n->auth, cn, c->ip, &p, 1, why, sizeof why);
  } else {
    rc = GRID_EAUTH;
    snprintf(why, sizeof why, "this node requires a login: a user and password (gridctl "
             "--user U --password P), or the TLS client certificate of a user added with --cert");
  }
  if (rc == 0 && !(native_of(c)->who = malloc(sizeof p))) rc = GRID_ENOMEM;
  if (rc != 0) {
    native_fail(c, rc, rc == GRID_ENOMEM ? NULL : why);
    return 0;
  }
  *native_of(c)->who = p;
  LOG_D("auth", "\"logged in\" user=%s peer=%s", p.name, c->peer);
  return 1;
}

static void native_on_hello(conn_t *c, const unsigned char *p, size_t len) {
  node_t *n = c->lp->node;
  Grid__Hello *h = grid__hello__unpack(&c->lp->arena.pb, len, p);
  if (!h) {
    native_fail(c, GRID_EPROTO, "the first frame must be a Hello message");
    return;
  }
  if (h->magic != FRAME_MAGIC) {
    native_fail(c, GRID_EHANDSHAKE, "wrong magic: not a grid client");
    return;
  }
  if (h->version != FRAME_PROTOCOL_VERSION) {
    char detail[64];
    snprintf(detail, sizeof detail, "client speaks version %u, node speaks %d",
             h->version, FRAME_PROTOCOL_VERSION);
    native_fail(c, GRID_EHANDSHAKE, detail);
    return;
  }
  if (h->role == GRID__ROLE__ROLE_PEER && !native_peer_allowed(c, h)) return;
  native_conn_t *nc = native_of(c);
  if (h->role != GRID__ROLE__ROLE_PEER && auth_required(n->auth) && !native_login(c, h)) return;
  Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
  hr.user = nc->who ? nc->who->name : "";
  hr.node_id = n->node_id;
  hr.version = FRAME_PROTOCOL_VERSION;
  hr.features = 0;
  hr.frame_bytes_max = (uint64_t)n->cfg.frame_bytes_max;
  if (native_send(c, &hr.base) != 0) {
    conn_close(c);
    return;
  }
  c->handshaken = 1;
  frame_buf_set_frame_max(&c->in, (size_t)n->cfg.frame_bytes_max);
  nc->peer_role = h->role == GRID__ROLE__ROLE_PEER;
  if (nc->peer_role)
    snprintf(nc->peer_id, sizeof nc->peer_id, "%s", h->client_name ? h->client_name : "");
  LOG_D("net", "\"client said hello\" peer=%s name=\"%s\"", c->peer,
        h->client_name ? h->client_name : "");
}

/* ---- change streams ------------------------------------------------------ */

static size_t native_varint(unsigned char *at, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    at[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  at[n++] = (unsigned char)v;
  return n;
}

/* Adds ev to the event frame of subscription sub being filled (a Reply
 * with sub and events, encoded field by field), opening one if need be:
 * a burst of events leaves in a few frames, not one each. */
static int native_batch_add(conn_t *c, uint64_t sub, const Grid__Event *ev) {
  native_conn_t *nc = native_of(c);
  size_t len = grid__event__get_packed_size(ev);
  /* A frame stays within what the client takes (frame_bytes_max, told at
   * the handshake): an event joins the open one only if both fit. */
  size_t max = (size_t)c->lp->node->cfg.frame_bytes_max;
  if (max > NATIVE_BATCH_BYTES) max = NATIVE_BATCH_BYTES;
  if (nc->batch_open &&
      (nc->batch_sub != sub || c->wlen - nc->batch_at - FRAME_HEADER_BYTES + 12 + len > max))
    native_batch_close(c);
  if (!nc->batch_open) {
    unsigned char *at = conn_out_space(c, FRAME_HEADER_BYTES + 1 + 10);
    if (!at) return GRID_ENOMEM;
    size_t n = FRAME_HEADER_BYTES;
    at[n++] = (15 << 3) | 0; /* Reply.sub, a varint */
    n += native_varint(at + n, sub);
    nc->batch_at = c->wlen;
    nc->batch_sub = sub;
    nc->batch_open = 1;
    conn_out_commit(c, n);
  }
  unsigned char *at = conn_out_space(c, 2 + 10 + len);
  if (!at) return GRID_ENOMEM;
  size_t n = native_varint(at, (16 << 3) | 2); /* Reply.events, length-delimited */
  n += native_varint(at + n, len);
  size_t packed = grid__event__pack(ev, at + n);
  GRID_ASSERT(packed == len);
  conn_out_commit(c, n + len);
  return 0;
}

static int native_event(void *ctx, stream_sub_t *s, uint32_t p, int what, const change_t *ch,
                        uint64_t pos) {
  conn_t *c = ctx;
  if (!conn_open(c)) return 1;
  Grid__Event ev = GRID__EVENT__INIT;
  ev.partition = p;
  ev.counter = pos;
  if (what == STREAM_EV_GAP) {
    ev.kind = GRID__EVENT_KIND__EVENT_GAP;
  } else if (what == STREAM_EV_END) {
    ev.kind = GRID__EVENT_KIND__EVENT_END;
  } else if (what == STREAM_EV_SNAPSHOT_END) {
    ev.kind = GRID__EVENT_KIND__EVENT_SNAPSHOT_END;
  } else if (what == STREAM_EV_DROPPED) {
    ev.kind = GRID__EVENT_KIND__EVENT_DROPPED;
  } else {
    ev.kind = what == STREAM_EV_SNAPSHOT    ? GRID__EVENT_KIND__EVENT_SNAPSHOT
              : ch->kind == CHANGE_PUT      ? GRID__EVENT_KIND__EVENT_PUT
              : ch->kind == CHANGE_EXPIRE ? GRID__EVENT_KIND__EVENT_EXPIRE
                                          : GRID__EVENT_KIND__EVENT_DELETE;
    ev.version = ch->version;
    ev.op = ch->how & CHANGE_HOW_OP;
    if (ev.op >= NOTIFY_HOW_EVENT) ev.op = GRID__OP__COLL; /* a collection command's */
    ev.key.data = (uint8_t *)ch->key;
    ev.key.len = ch->key_len;
    if (ch->kind == CHANGE_PUT) {
      ev.expire_at_ms = ch->expire_at_ms;
      ev.value_type = ch->type;
      if (!(stream_keys_only(s))) {
        ev.value.data = (uint8_t *)ch->value;
        ev.value.len = ch->value_len;
      }
    }
  }
  if (native_batch_add(c, stream_id(s), &ev) != 0) {
    conn_close(c);
    return 1;
  }
  if (!conn_output_full(c)) return 0;
  /* Full: reading stops too, and both go on once the output drains
   * (native_input resumes the subscriptions). */
  native_batch_close(c);
  conn_flush(c);
  if (!conn_output_full(c)) return 0;
  conn_pause(c);
  return 1;
}

static void native_stream_flush(void *ctx) {
  native_batch_close(ctx);
  conn_flush(ctx);
}

static const stream_out_t native_stream_out = {native_event, native_stream_flush};

static stream_sub_t *native_sub_find(native_conn_t *nc, uint64_t id, size_t *at) {
  for (size_t i = 0; i < nc->nsubs; i++) {
    if (stream_id(nc->subs[i]) == id) {
      if (at) *at = i;
      return nc->subs[i];
    }
  }
  return NULL;
}

static void native_sub_error(conn_t *c, Grid__Reply *rp, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void native_sub_error(conn_t *c, Grid__Reply *rp, int status, const char *fmt, ...) {
  char detail[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  ops_reply_error(rp, status, detail, &c->lp->arena);
}

/* Checks a SUBSCRIBE's filter: 0, or the error already in rp. */
static int native_sub_check(conn_t *c, const Grid__Request *rq, Grid__Reply *rp) {
  node_t *n = c->lp->node;
  if (rq->sub == 0) {
    native_sub_error(c, rp, GRID_EINVAL, "a subscription needs an id (sub) other than 0");
    return -1;
  }
  if ((int64_t)rq->prefix.len > n->cfg.key_bytes_max) {
    native_sub_error(c, rp, GRID_EKEYTOOBIG, "the prefix is %zu bytes, key_bytes_max is %lld",
                     rq->prefix.len, (long long)n->cfg.key_bytes_max);
    return -1;
  }
  if ((int64_t)rq->n_keys > n->cfg.subscription_keys_max) {
    native_sub_error(c, rp, GRID_ELIMIT, "%zu affinity keys, subscription_keys_max is %lld",
                     rq->n_keys, (long long)n->cfg.subscription_keys_max);
    return -1;
  }
  for (size_t i = 0; i < rq->n_keys; i++) {
    if (rq->keys[i].len == 0) {
      native_sub_error(c, rp, GRID_EINVAL, "affinity key %zu is empty", i);
      return -1;
    }
    if ((int64_t)rq->keys[i].len > n->cfg.key_bytes_max) {
      native_sub_error(c, rp, GRID_EKEYTOOBIG, "affinity key %zu is %zu bytes, key_bytes_max "
                       "is %lld", i, rq->keys[i].len, (long long)n->cfg.key_bytes_max);
      return -1;
    }
  }
  if (rq->prefix.len && rq->n_keys) {
    native_sub_error(c, rp, GRID_EINVAL, "a subscription filters by a prefix or by affinity "
                     "keys, not both");
    return -1;
  }
  return 0;
}

/* SUBSCRIBE: the partitions asked for that this node leads are taken (the
 * reply says where each starts), the others are named in moved. */
static void native_subscribe(conn_t *c, const Grid__Request *rq, Grid__Reply *rp) {
  loop_t *lp = c->lp;
  native_conn_t *nc = native_of(c);
  arena_t *a = &lp->arena;
  if (native_sub_check(c, rq, rp) != 0) return;
  const char *name = rq->cache && rq->cache[0] ? rq->cache : "default";
  store_cache_t *cache = store_view_find(&lp->view, name, strlen(name));
  if (!cache) {
    /* A cache the map places that this node has not made yet: retry. */
    int placed = lp->pmap && pmap_find_cache(lp->pmap, name);
    native_sub_error(c, rp, placed ? GRID_ENOTREADY : GRID_ENOCACHE, "\"%.64s\"", name);
    return;
  }
  size_t at;
  stream_sub_t *s = native_sub_find(nc, rq->sub, &at);
  if (s && stream_dead(s)) {
    /* Its cache was dropped under it: a subscription anew. */
    stream_close(s);
    nc->subs[at] = nc->subs[--nc->nsubs];
    s = NULL;
  }
  int made = 0;
  if (!s) {
    if (nc->nsubs == nc->subs_cap) {
      size_t cap = nc->subs_cap ? nc->subs_cap * 2 : 4;
      stream_sub_t **v = realloc(nc->subs, cap * sizeof *v);
      if (!v) {
        ops_reply_error(rp, GRID_ENOMEM, NULL, a);
        return;
      }
      nc->subs = v;
      nc->subs_cap = cap;
    }
    const void **keys = rq->n_keys ? arena_alloc(a, rq->n_keys * sizeof *keys) : NULL;
    size_t *lens = rq->n_keys ? arena_alloc(a, rq->n_keys * sizeof *lens) : NULL;
    if (rq->n_keys && (!keys || !lens)) {
      ops_reply_error(rp, GRID_ENOMEM, NULL, a);
      return;
    }
    for (size_t i = 0; i < rq->n_keys; i++) {
      keys[i] = rq->keys[i].data;
      lens[i] = rq->keys[i].len;
    }
    stream_filter_t f = {.prefix = rq->prefix.len ? rq->prefix.data : NULL,
                         .prefix_len = rq->prefix.len,
                         .keys = (const void *const *)keys,
                         .key_lens = lens,
                         .nkeys = rq->n_keys,
                         .keys_only = rq->keys_only};
    int rc = stream_open(lp, cache, rq->sub, &f, &native_stream_out, c, &s);
    if (rc == GRID_ELIMIT) {
      native_sub_error(c, rp, rc, "this node serves subscriptions_max (%lld) subscriptions",
                       (long long)lp->node->cfg.subscriptions_max);
      return;
    }
    if (rc != 0) {
      ops_reply_error(rp, rc, NULL, a);
      return;
    }
    nc->subs[nc->nsubs++] = s;
    made = 1;
  }
  Grid__SubPosition **taken = arena_alloc(a, (rq->n_positions + 1) * sizeof *taken);
  Grid__SubPosition *tk = arena_alloc(a, (rq->n_positions + 1) * sizeof *tk);
  uint32_t *moved = arena_alloc(a, (rq->n_positions + 1) * sizeof *moved);
  if (!taken || !tk || !moved) {
    if (made) {
      stream_close(s);
      nc->nsubs--;
    }
    ops_reply_error(rp, GRID_ENOMEM, NULL, a);
    return;
  }
  for (size_t i = 0; i < rq->n_positions; i++) {
    const Grid__SubPosition *sp = rq->positions[i];
    uint64_t pos;
    int rc = stream_take(s, sp->partition, sp->after, sp->now, sp->snapshot, &pos);
    if (rc == GRID_EINVAL) {
      if (made) {
        stream_close(s);
        nc->nsubs--;
      }
      native_sub_error(c, rp, rc, "partition %u is out of range: cache %.64s has %u", sp->partition,
                       name, store_cache_cfg(cache)->partitions);
      return;
    }
    if (rc != 0) {
      moved[rp->n_moved++] = sp->partition;
      continue;
    }
    grid__sub_position__init(&tk[rp->n_positions]);
    tk[rp->n_positions].partition = sp->partition;
    tk[rp->n_positions].after = pos;
    taken[rp->n_positions] = &tk[rp->n_positions];
    rp->n_positions++;
  }
  rp->positions = taken;
  rp->moved = moved;
  rp->number = store_cache_cfg(cache)->partitions;
  rp->epoch = lp->pmap ? lp->pmap->epoch : 0;
}

static void native_unsubscribe(conn_t *c, const Grid__Request *rq, Grid__Reply *rp) {
  native_conn_t *nc = native_of(c);
  size_t at;
  stream_sub_t *s = native_sub_find(nc, rq->sub, &at);
  if (!s) {
    native_sub_error(c, rp, GRID_ENOTFOUND, "no subscription %llu on this connection",
                     (unsigned long long)rq->sub);
    return;
  }
  if (rq->n_positions) {
    for (size_t i = 0; i < rq->n_positions; i++) stream_drop(s, rq->positions[i]->partition);
    return;
  }
  stream_close(s);
  nc->subs[at] = nc->subs[--nc->nsubs];
}

/* SUBSCRIBE and UNSUBSCRIBE: served on this connection, never routed. */
static void native_stream_request(conn_t *c, const Grid__Request *rq) {
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = rq->id;
  if (native_of(c)->peer_role) {
    ops_reply_error(&rp, GRID_EINVAL, "a change stream is a client's, not a peer's",
                    &c->lp->arena);
  } else if (c->lp->node->cluster && !cluster_serving(c->lp->node->cluster)) {
    ops_reply_error(&rp, GRID_ECLUSTER, "this node is not serving (no partition map, or no "
                    "ZooKeeper)", &c->lp->arena);
  } else if (rq->op == GRID__OP__SUBSCRIBE) {
    native_subscribe(c, rq, &rp);
  } else {
    native_unsubscribe(c, rq, &rp);
  }
  if (native_send(c, &rp.base) != 0) {
    conn_close(c);
    return;
  }
  /* What the history holds already follows the reply. */
  if (rq->op == GRID__OP__SUBSCRIBE && rp.status == 0) {
    stream_sub_t *s = native_sub_find(native_of(c), rq->sub, NULL);
    if (s) stream_start(s);
  }
}

static void native_streams_resume(conn_t *c) {
  native_conn_t *nc = native_of(c);
  for (size_t i = 0; i < nc->nsubs && !conn_output_full(c); i++) stream_resume(nc->subs[i]);
}

/* Another node passes on a Redis PUBLISH: for this node's subscribers. */
static void native_publish(conn_t *c, const Grid__Request *rq) {
  Grid__Reply rp = GRID__REPLY__INIT;
  rp.id = rq->id;
  int64_t receivers = 0;
  int rc = GRID_EBADOP;
  if (native_of(c)->peer_role && c->lp->node->pubsub)
    rc = pubsub_publish(c->lp, rq->key.data, rq->key.len, rq->value.data, rq->value.len, 0,
                        &receivers);
  if (rc != 0) {
    ops_reply_error(&rp, rc, rc == GRID_EBADOP ? "PUBLISH is passed on by grid nodes only" : NULL,
                    &c->lp->arena);
  } else {
    rp.number = receivers;
  }
  if (native_send(c, &rp.base) != 0) conn_close(c);
}

/* A cluster node's request: routed. 1 when it must wait for a newer map
 * (the frame is not consumed), else 0. */
static int native_route(conn_t *c, Grid__Request *rq) {
  loop_t *lp = c->lp;
  native_conn_t *nc = native_of(c);
  route_from_t from = {.peer = nc->peer_role, .peer_id = nc->peer_id, .addr = c->peer,
                       .map_wait_over = nc->map_wait_over};
  switch (route_classify(lp, rq, &from)) {
    case ROUTE_WAIT_MAP:
      if (!nc->map_wait) {
        nc->map_wait = 1;
        nc->map_wait_since_ms = clock_mono_ms();
      }
      conn_hold(c);
      return 1;
    case ROUTE_RECORD: {
      nc->map_wait_over = 0;
      Grid__Reply rp = GRID__REPLY__INIT;
      route_record(lp, rq, &from, &rp);
      if (native_send(c, &rp.base) != 0) conn_close(c);
      return 0;
    }
    case ROUTE_RUN: {
      native_pending_t *pd = malloc(sizeof *pd);
      if (!pd) {
        Grid__Reply rp = GRID__REPLY__INIT;
        rp.id = rq->id;
        ops_reply_error(&rp, GRID_ENOMEM, NULL, &lp->arena);
        if (native_send(c, &rp.base) != 0) conn_close(c);
        return 0;
      }
      sink_init(&pd->sink, native_pending_fn, lp->index);
      pd->c = c;
      pd->id = rq->id;
      pd->op = (unsigned)rq->op;
      pd->started_ns = nc->started_ns;
      conn_ref(c);
      from.behind = nc->running > 0;
      nc->running++;
      route_run(lp, rq, &from, &pd->sink);
      return 0;
    }
    default: /* ROUTE_LOCAL */
      break;
  }
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(lp->node, &lp->view, rq, &rp, &lp->arena);
  metrics_record(&lp->metrics, (unsigned)rq->op, rp.status, clock_mono_ns() - nc->started_ns);
  if (native_send(c, &rp.base) != 0) conn_close(c);
  return 0;
}

/* Serves one request frame. 1 when it must wait for a newer map (the
 * frame is not consumed), else 0. */
static int native_on_request(conn_t *c, const unsigned char *p, size_t len) {
  loop_t *lp = c->lp;
  if (!frame_nesting_ok(p, len, FRAME_FIELD_REQUEST_STEPS, 1)) {
    native_fail(c, GRID_EPROTO, "a request's steps hold steps of their own");
    return 0;
  }
  Grid__Request *rq = grid__request__unpack(&lp->arena.pb, len, p);
  if (!rq) {
    native_fail(c, GRID_EPROTO, "a request frame does not decode as a Request");
    return 0;
  }
  native_conn_t *nc = native_of(c);
  nc->started_ns = clock_mono_ns();
  if (nc->who) { /* the user's roles allow it, or it is answered with why not */
    char why[256];
    int rc = auth_allow(lp->node->auth, nc->who, rq, NULL, why, sizeof why);
    if (rc == GRID_EAUTH) {
      native_fail(c, rc, why);
      return 0;
    }
    if (rc != 0) {
      LOG_W("auth", "\"request refused\" user=%s peer=%s op=%s reason=\"%s\"", nc->who->name,
            c->peer, op_name(rq->op), why);
      Grid__Reply rp = GRID__REPLY__INIT;
      rp.id = rq->id;
      ops_reply_error(&rp, rc, why, &lp->arena);
      if (native_send(c, &rp.base) != 0) conn_close(c);
      return 0;
    }
  }
  if (op_has(rq->op, OP_STREAM)) {
    native_stream_request(c, rq);
    return 0;
  }
  if (rq->op == GRID__OP__PUBLISH) {
    native_publish(c, rq);
    return 0;
  }
  if (lp->node->cluster) return native_route(c, rq);
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(lp->node, &lp->view, rq, &rp, &lp->arena);
  metrics_record(&lp->metrics, (unsigned)rq->op, rp.status, clock_mono_ns() - nc->started_ns);
  if (native_send(c, &rp.base) != 0) conn_close(c);
  return 0;
}

/* Serves the whole frames in the read buffer. It stops early when the
 * replies pass output_bytes_max (a pipeline of gets of large values can
 * make far more output than input): reading pauses until the peer has
 * taken half of them, and the frames left are served on resume. */
static void native_input(conn_t *c) {
  node_t *n = c->lp->node;
  size_t off = 0;
  if (native_of(c)->nsubs && !c->closing) native_streams_resume(c);
  while (!c->closing && !uv_is_closing((uv_handle_t *)&c->tcp)) {
    if (conn_output_full(c)) {
      /* Try to make room first: the socket may take it all at once. */
      native_batch_close(c);
      conn_flush(c);
      if (conn_output_full(c) || uv_is_closing((uv_handle_t *)&c->tcp)) break;
    }
    const unsigned char *payload;
    size_t plen, flen, at = off;
    frame_result_t r = frame_buf_next(&c->in, &at, &payload, &plen, &flen);
    if (r == FRAME_NEED_MORE) break;
    if (r == FRAME_TOO_BIG) {
      char detail[96];
      snprintf(detail, sizeof detail, "%zu bytes announced, at most %lld",
               flen, (long long)n->cfg.frame_bytes_max);
      native_fail(c, GRID_EFRAMETOOBIG, detail);
      break;
    }
    int wait = 0;
    if (c->handshaken) wait = native_on_request(c, payload, plen);
    else native_on_hello(c, payload, plen);
    arena_reset(&c->lp->arena);
    if (wait) break; /* the frame waits for a newer map */
    off = at;
  }
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  conn_consumed(c, off);
  native_batch_close(c);
  conn_flush(c);
  if (!c->closing && conn_output_full(c)) conn_pause(c);
}

/* ---- the protocol's table and hooks -------------------------------------- */

static int native_open(conn_t *c) {
  c->fe = calloc(1, sizeof(native_conn_t));
  /* Until its hello, a connection is a stranger's: a small frame at most
   * (frame_bytes_max once it said who it is). */
  if (c->fe && auth_required(c->lp->node->auth))
    frame_buf_set_frame_max(&c->in, (size_t)c->lp->node->cfg.unauthenticated_bytes_max);
  return c->fe ? 0 : GRID_ENOMEM;
}

static void native_free(conn_t *c) {
  native_conn_t *nc = native_of(c);
  for (size_t i = 0; i < nc->nsubs; i++) stream_close(nc->subs[i]);
  free(nc->subs);
  free(nc->who);
  free(c->fe);
  c->fe = NULL;
}

const conn_proto_t native_proto = {
    .name = "native",
    .framed = 1,
    .open = native_open,
    .input = native_input,
    .fail = native_fail,
    .free = native_free,
};

/* A waiting connection goes on: its frame is looked at again. */
static void native_map_resume(conn_t *c) {
  native_of(c)->map_wait = 0;
  conn_release(c);
}

void native_on_map(loop_t *lp) {
  conn_t *next;
  for (conn_t *c = lp->conns; c; c = next) {
    next = c->next;
    if (c->proto == &native_proto && native_of(c)->map_wait &&
        !uv_is_closing((uv_handle_t *)&c->tcp))
      native_map_resume(c);
  }
}

void native_cron(loop_t *lp, int64_t now) {
  conn_t *next;
  for (conn_t *c = lp->conns; c; c = next) {
    next = c->next;
    if (c->proto != &native_proto || uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    native_conn_t *nc = native_of(c);
    /* The map a peer's record names never came: refuse the record. */
    if (nc->map_wait && now - nc->map_wait_since_ms >= lp->node->cfg.forward_timeout_ms) {
      nc->map_wait_over = 1;
      native_map_resume(c);
    }
  }
}
