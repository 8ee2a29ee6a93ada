/*
 * thing: a Thing's properties in the grid. A property is the entry
 * "{thing}.prop"; a write reads what is there (its base type, its time),
 * then writes every update of the Thing in one atomic grid_batch whose
 * conditions say "as read" (the version, or absent): a writer that came
 * between makes the batch fail whole, and it is tried again from a fresh
 * read. So types, "only if newer" and fencing hold under any number of
 * concurrent writers, and a Thing's updates are seen all or none.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "thing_int.h"

int thing_name_ok(const char *thing) {
  return thing && thing[0] && !strchr(thing, '{') && !strchr(thing, '}');
}

char *thing_key(const char *thing, const char *sep, const char *name, size_t *len, int *rc) {
  if (!thing_name_ok(thing)) {
    *rc = THING_ENAME;
    return NULL;
  }
  size_t n = strlen(thing) + strlen(sep) + (name ? strlen(name) : 0) + 3;
  char *k = malloc(n);
  if (!k) {
    *rc = GRID_ENOMEM;
    return NULL;
  }
  *len = (size_t)snprintf(k, n, "{%s}%s%s", thing, sep, name ? name : "");
  *rc = 0;
  return k;
}

int thing_open(grid_t *g, const thing_options_t *opts, thing_store_t **out) {
  *out = NULL;
  thing_store_t *ts = calloc(1, sizeof *ts);
  if (!ts) return GRID_ENOMEM;
  ts->g = g;
  const char *cache = opts && opts->cache ? opts->cache : THING_CACHE_DEFAULT;
  if (strlen(cache) >= sizeof ts->cache) {
    free(ts);
    return GRID_EINVAL;
  }
  snprintf(ts->cache, sizeof ts->cache, "%s", cache);
  char host[64] = "";
  gethostname(host, sizeof host - 1);
  snprintf(ts->member, sizeof ts->member, "%ld@%s", (long)getpid(), host);
  if (!opts || opts->create_cache) {
    grid_cache_config_t cfg = {.name = ts->cache, .backups = 1, .mode = GRID_MODE_PARTITIONED,
                               .sync = GRID_SYNC_FULL};
    int rc = grid_cache_create(g, &cfg);
    if (rc != 0 && rc != GRID_ECACHEEXISTS) {
      free(ts);
      return rc;
    }
  }
  *out = ts;
  return 0;
}

void thing_close(thing_store_t *ts) { free(ts); }

void thing_prop_free(thing_prop_t *p) {
  if (!p) return;
  free(p->name);
  free(p->mem_);
  memset(p, 0, sizeof *p);
}

void thing_props_free(thing_prop_t *props, size_t n) {
  if (!props) return;
  for (size_t i = 0; i < n; i++) thing_prop_free(&props[i]);
  free(props);
}

/* A stored value as a prop named name. */
static int thing_prop_from(const char *name, size_t name_len, const void *value, size_t len,
                           uint64_t version, thing_prop_t *out) {
  memset(out, 0, sizeof *out);
  int rc = thing_vtq_decode(value, len, &out->vtq, &out->mem_);
  if (rc != 0) return rc;
  out->name = malloc(name_len + 1);
  if (!out->name) {
    thing_prop_free(out);
    return GRID_ENOMEM;
  }
  memcpy(out->name, name, name_len);
  out->name[name_len] = '\0';
  out->version = version;
  return 0;
}

int thing_read(thing_store_t *ts, const char *thing, const char *prop, thing_prop_t *out) {
  memset(out, 0, sizeof *out);
  if (!prop || !prop[0]) return GRID_EINVAL;
  size_t klen;
  int rc;
  char *key = thing_key(thing, ".", prop, &klen, &rc);
  if (!key) return rc;
  grid_value_t v;
  rc = grid_get(ts->g, ts->cache, key, klen, &v);
  free(key);
  if (rc != 0) return rc;
  rc = thing_prop_from(prop, strlen(prop), v.data, v.len, v.version, out);
  grid_value_free(&v);
  return rc;
}

static int thing_prop_cmp(const void *a, const void *b) {
  return strcmp(((const thing_prop_t *)a)->name, ((const thing_prop_t *)b)->name);
}

int thing_read_all(thing_store_t *ts, const char *thing, thing_prop_t **props, size_t *n) {
  *props = NULL;
  *n = 0;
  size_t plen;
  int rc;
  char *prefix = thing_key(thing, ".", NULL, &plen, &rc);
  if (!prefix) return rc;
  grid_entry_t *ents;
  size_t m;
  rc = grid_get_prefix(ts->g, ts->cache, prefix, plen, 0, &ents, &m);
  free(prefix);
  if (rc != 0) return rc;
  thing_prop_t *list = calloc(m ? m : 1, sizeof *list);
  if (!list) rc = GRID_ENOMEM;
  for (size_t i = 0; rc == 0 && i < m; i++) {
    rc = thing_prop_from((const char *)ents[i].key + plen, ents[i].key_len - plen,
                         ents[i].value, ents[i].value_len, ents[i].version, &list[i]);
    if (rc != 0) thing_props_free(list, i);
  }
  grid_entries_free(ents, m);
  if (rc != 0) return rc;
  qsort(list, m, sizeof *list, thing_prop_cmp);
  *props = list;
  *n = m;
  return 0;
}

/* ---- writes ----------------------------------------------------------------- */

/* What a write knows of one update while it runs. */
typedef struct thing_pending {
  char *key;
  size_t key_len;
  void *bytes;                 /* the packed new VTQ */
  size_t len;
} thing_pending_t;

static void thing_pending_free(thing_pending_t *p, size_t n) {
  if (!p) return;
  for (size_t i = 0; i < n; i++) {
    free(p[i].key);
    free(p[i].bytes);
  }
  free(p);
}

/* What is stored under one key now: found, its version, its type and
 * time. */
typedef struct thing_seen {
  bool found;
  uint64_t version;
  thing_type_t type;
  int64_t time_ms;
} thing_seen_t;

static int thing_seen_of(const void *data, size_t len, uint64_t version, thing_seen_t *s) {
  thing_vtq_t v;
  void *mem;
  int rc = thing_vtq_decode(data, len, &v, &mem);
  free(mem);
  if (rc != 0) return rc;
  *s = (thing_seen_t){true, version, v.value.type, v.time_ms};
  return 0;
}

/* Reads the updates' keys: one get for one, one get_all (one primary: the
 * keys share the Thing's partition) for more. */
static int thing_read_seen(thing_store_t *ts, thing_pending_t *pend, size_t n,
                           thing_seen_t *seen) {
  memset(seen, 0, n * sizeof *seen);
  if (n == 1) {
    grid_value_t v;
    int rc = grid_get(ts->g, ts->cache, pend[0].key, pend[0].key_len, &v);
    if (rc == GRID_ENOTFOUND) return 0;
    if (rc != 0) return rc;
    rc = thing_seen_of(v.data, v.len, v.version, &seen[0]);
    grid_value_free(&v);
    return rc;
  }
  const void **keys = malloc(n * sizeof *keys);
  size_t *lens = malloc(n * sizeof *lens);
  grid_value_t *vals = calloc(n, sizeof *vals);
  int rc = keys && lens && vals ? 0 : GRID_ENOMEM;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    keys[i] = pend[i].key;
    lens[i] = pend[i].key_len;
  }
  if (rc == 0) rc = grid_get_all(ts->g, ts->cache, n, keys, lens, vals);
  for (size_t i = 0; rc == 0 && i < n; i++)
    if (vals[i].found) rc = thing_seen_of(vals[i].data, vals[i].len, vals[i].version, &seen[i]);
  for (size_t i = 0; vals && i < n; i++) grid_value_free(&vals[i]);
  free(keys);
  free(lens);
  free(vals);
  return rc;
}

/* The write of updates, each as read (expected[i] != 0: only if its version
 * is still that: a compare-and-set). */
static int thing_write_core(thing_store_t *ts, const char *thing, thing_update_t *updates,
                            size_t n, unsigned flags, const thing_fence_t *fence,
                            uint64_t expected) {
  if (n == 0) return 0;
  if (!thing_name_ok(thing)) return THING_ENAME;
  int rc = 0;
  thing_pending_t *pend = calloc(n, sizeof *pend);
  thing_seen_t *seen = calloc(n, sizeof *seen);
  grid_batch_op_t *ops = calloc(n + 2, sizeof *ops);
  char *fence_key = NULL, *lock_key = NULL;
  size_t fence_len = 0, lock_len = 0;
  if (!pend || !seen || !ops) rc = GRID_ENOMEM;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (!updates[i].prop || !updates[i].prop[0]) rc = GRID_EINVAL;
    if (rc == 0) pend[i].key = thing_key(thing, ".", updates[i].prop, &pend[i].key_len, &rc);
    if (rc == 0) rc = thing_vtq_encode(&updates[i].vtq, &pend[i].bytes, &pend[i].len);
    updates[i].version = 0;
    updates[i].skipped = false;
  }
  if (rc == 0 && fence) {
    fence_key = thing_key(thing, "#fence", NULL, &fence_len, &rc);
    if (rc == 0) lock_key = thing_key(thing, "#lock", NULL, &lock_len, &rc);
  }
  for (int attempt = 0; rc == 0; attempt++) {
    if (attempt == THING_WRITE_ATTEMPTS_MAX) {
      rc = THING_ECONTENDED;
      break;
    }
    rc = thing_read_seen(ts, pend, n, seen);
    if (rc != 0) break;
    size_t nops = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
      updates[i].skipped = false;
      if (seen[i].found && seen[i].type != updates[i].vtq.value.type) {
        rc = THING_ETYPE;
        break;
      }
      if (expected && (!seen[i].found || seen[i].version != expected)) {
        rc = seen[i].found ? GRID_EVERSION : GRID_ENOTFOUND;
        break;
      }
      if ((flags & THING_IF_NEWER) && seen[i].found && seen[i].time_ms >= updates[i].vtq.time_ms) {
        updates[i].skipped = true;
        continue;
      }
      ops[nops++] = (grid_batch_op_t){
          .kind = GRID_BATCH_PUT, .key = pend[i].key, .key_len = pend[i].key_len,
          .value = pend[i].bytes, .value_len = pend[i].len,
          .cond = seen[i].found ? GRID_IF_VERSION : GRID_IF_ABSENT, .version = seen[i].version};
    }
    if (rc != 0 || nops == 0) break; /* an error, or everything skipped */
    size_t nprops = nops;
    if (fence) {
      ops[nops++] = (grid_batch_op_t){.kind = GRID_BATCH_CHECK, .key = fence_key,
                                      .key_len = fence_len, .cond = GRID_IF_VERSION,
                                      .version = fence->token};
      ops[nops++] = (grid_batch_op_t){.kind = GRID_BATCH_CHECK, .key = lock_key,
                                      .key_len = lock_len, .cond = GRID_IF_PRESENT};
    }
    size_t failed = 0;
    rc = grid_batch(ts->g, ts->cache, ops, nops, &failed);
    if (rc == 0) {
      size_t k = 0;
      for (size_t i = 0; i < n; i++)
        if (!updates[i].skipped) updates[i].version = ops[k++].version_out;
      break;
    }
    int cond_failed = rc == GRID_EVERSION || rc == GRID_EEXIST || rc == GRID_ENOTFOUND;
    if (cond_failed && failed >= nprops) {
      rc = THING_EFENCED;
      break;
    }
    if (!cond_failed) break;
    /* Another writer came between the read and the batch: again. */
    if (expected) break; /* a compare-and-set says so instead */
    rc = 0;
  }
  thing_pending_free(pend, n);
  free(seen);
  free(ops);
  free(fence_key);
  free(lock_key);
  return rc;
}

int thing_write(thing_store_t *ts, const char *thing, thing_update_t *updates, size_t n,
                unsigned flags, const thing_fence_t *fence) {
  return thing_write_core(ts, thing, updates, n, flags, fence, 0);
}

int thing_write_one(thing_store_t *ts, const char *thing, const char *prop,
                    const thing_vtq_t *vtq, unsigned flags, uint64_t *version) {
  thing_update_t u = {.prop = prop, .vtq = *vtq};
  int rc = thing_write_core(ts, thing, &u, 1, flags, NULL, 0);
  if (rc == 0 && version) *version = u.version;
  return rc;
}

int thing_cas(thing_store_t *ts, const char *thing, const char *prop, uint64_t expected_version,
              const thing_vtq_t *vtq, uint64_t *version) {
  if (expected_version == 0 || !prop || !prop[0]) return GRID_EINVAL;
  thing_update_t u = {.prop = prop, .vtq = *vtq};
  int rc = thing_write_core(ts, thing, &u, 1, 0, NULL, expected_version);
  if (rc == 0 && version) *version = u.version;
  return rc;
}

int thing_delete(thing_store_t *ts, const char *thing, const char *prop) {
  if (!prop || !prop[0]) return GRID_EINVAL;
  size_t klen;
  int rc;
  char *key = thing_key(thing, ".", prop, &klen, &rc);
  if (!key) return rc;
  rc = grid_delete(ts->g, ts->cache, key, klen);
  free(key);
  return rc;
}
