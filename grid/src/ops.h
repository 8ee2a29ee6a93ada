/*
 * ops: executes one decoded request against the node's store. The network
 * side and the embedded client share it, so that every operation has one
 * implementation.
 */
#ifndef GRID_OPS_H
#define GRID_OPS_H

#include "arena.h"
#include "grid.pb-c.h"
#include "node.h"

/* Fills rp (already initialised with grid__reply__init) for rq. Everything
 * rp points to is either in rq, in arena a, or static: rp is valid until the
 * arena is reset and rq is freed. Never fails as a function: errors are in
 * rp->status / rp->message.
 * view is the calling thread's view of the caches (an event loop's), or NULL
 * for a thread that has none: then the cache is looked up under the
 * registry's read lock. */
void ops_execute(node_t *n, store_view_t *view, const Grid__Request *rq,
                 Grid__Reply *rp, arena_t *a);

/* ops_execute, with applied(ctx, ...) called for a single-key write that
 * changed the store (the record a primary sends to its backups). */
void ops_execute_rec(node_t *n, store_view_t *view, const Grid__Request *rq,
                     Grid__Reply *rp, arena_t *a, store_applied_fn applied,
                     void *ctx);

/* A cache definition from its message (name from m->name unless given). */
/* A cache's settings as the wire carries them (m's name points at
 * cfg's). */
void ops_cfg_to_msg(const store_cache_cfg_t *cfg, Grid__CacheConfig *m);
/* A new cache's id: random, never 0. */
uint64_t ops_cache_id(void);
/* Words for why a node refuses a cache definition's persistence settings
 * (no data_dir, a window out of range), or NULL. */
const char *ops_cache_cfg_refused(const node_t *n, const store_cache_cfg_t *cfg);
void ops_cfg_from_msg(const Grid__CacheConfig *m, const char *name, store_cache_cfg_t *cfg);

/* Requests served: the node's own count plus every loop's. */
uint64_t ops_served(node_t *n);

/* Sets rp's status and words; detail (may be NULL) is added to the code's
 * own words. */
void ops_reply_error(Grid__Reply *rp, int status, const char *detail,
                     arena_t *a);

#endif
