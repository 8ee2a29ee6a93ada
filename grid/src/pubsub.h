/*
 * pubsub: Redis's publish/subscribe on a node (issue 9): channels and
 * patterns subscribed by clients (RESP connections), messages published to
 * them. Like Redis 7's, it is fire-and-forget: a message reaches the
 * clients subscribed when it comes, on every node of the cluster (a
 * publish is passed to every other node over the peer links), and is lost
 * for a client that is not connected then. Keyspace notifications
 * (keyspace.c) are published through it.
 *
 * The node's registry (channel -> clients, patterns) is shared by its
 * loops under one lock; a client lives on one loop and hears its messages
 * there. A message for clients of other loops is posted to those loops
 * once, holding a reference; each loop finds its own clients again when it
 * runs (a client unsubscribes or closes only on its own loop, so those it
 * finds stay valid until it returns).
 */
#ifndef GRID_PUBSUB_H
#define GRID_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

/* Bytes of messages posted to loops and not delivered yet, over the whole
 * node: past it a publish is refused (GRID_EBUSY), as a full queue is. */
#define PUBSUB_INFLIGHT_BYTES_MAX ((size_t)256 << 20)

/* PUBLISH requests passed to other nodes and not answered yet, over the
 * whole node: they share the peer links with forwarded client requests
 * (PEER_INFLIGHT_MAX each), so past this a message is not passed on (it is
 * dropped, as on a link that is down). */
#define PUBSUB_FORWARD_INFLIGHT_MAX 1024

typedef struct pubsub pubsub_t;
typedef struct pubsub_client pubsub_client_t;
typedef struct pubsub_name pubsub_name_t;

/* A message for cl, on its loop. pattern is the one it matched (NULL for
 * a channel subscribed by name). */
typedef void (*pubsub_deliver_fn)(pubsub_client_t *cl, const pubsub_name_t *pattern,
                                  const void *channel, size_t channel_len, const void *msg,
                                  size_t msg_len);

struct pubsub_name {
  size_t len;
  unsigned char *bytes;
};

/* Embedded in the front end's connection state. */
struct pubsub_client {
  loop_t *lp;
  pubsub_deliver_fn deliver;
  pubsub_name_t *channels;  /* its own, in the order subscribed */
  size_t nchannels, channels_cap;
  pubsub_name_t *patterns;
  size_t npatterns, patterns_cap;
};

pubsub_t *pubsub_new(void);
void pubsub_free(pubsub_t *ps);

void pubsub_client_init(pubsub_client_t *cl, loop_t *lp, pubsub_deliver_fn deliver);
/* Unsubscribes from everything (the connection closes). */
void pubsub_client_close(pubsub_t *ps, pubsub_client_t *cl);
/* Channels and patterns cl is subscribed to. */
static inline size_t pubsub_client_count(const pubsub_client_t *cl) {
  return cl->nchannels + cl->npatterns;
}

/* Subscribes cl to a channel (pattern 0) or a pattern (1); subscribing
 * again is not an error. 0, or GRID_ENOMEM (nothing changed). */
int pubsub_subscribe(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len,
                     int pattern);
/* 1 when cl was subscribed to it, 0 when not. */
int pubsub_unsubscribe(pubsub_t *ps, pubsub_client_t *cl, const void *name, size_t len,
                       int pattern);

/* Publishes msg on channel from lp: to this node's clients (those of lp
 * at once, the others' through their loops) and, when forward is set in a
 * cluster, to every other node (a request each, not waited for; a node
 * that cannot be reached misses it, as in Redis). *receivers: this node's
 * clients it was for (Redis Cluster counts the publishing node's too).
 * 0, or GRID_EBUSY (PUBSUB_INFLIGHT_BYTES_MAX), GRID_ENOMEM: then no other
 * loop and no other node was sent it. */
int pubsub_publish(loop_t *lp, const void *channel, size_t channel_len, const void *msg,
                   size_t msg_len, int forward, int64_t *receivers);

/* PUBSUB CHANNELS / NUMSUB / NUMPAT on this node. each is called, under
 * the registry's lock (it must not call pubsub), for every channel with a
 * subscriber that matches pattern (NULL: every one). */
void pubsub_channels(pubsub_t *ps, const void *pattern, size_t pattern_len,
                     void (*each)(void *ctx, const void *name, size_t len), void *ctx);
int64_t pubsub_numsub(pubsub_t *ps, const void *channel, size_t len);
int64_t pubsub_numpat(pubsub_t *ps);

/* Messages dropped on the way to other nodes (a link down or full), and
 * publishes refused, since start: for STATS and logs. */
uint64_t pubsub_dropped(const pubsub_t *ps);

#endif
