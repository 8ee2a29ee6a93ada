#include "coll.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <xxhash.h>

#include "grid_types.h"
#include "num.h"

#define COLL_FLOAT_CHARS_MAX 5120 /* Redis's MAX_LONG_DOUBLE_CHARS */

int coll_parse_i64(const void *p, size_t len, int64_t *out) { return num_parse_i64(p, len, out); }

/* ---- the vector ------------------------------------------------------------ */

void coll_vec_free(coll_vec_t *c) {
  for (size_t i = 0; i < c->nown; i++) free(c->own[i]);
  free(c->own);
  free(c->v);
  memset(c, 0, sizeof *c);
}

static int vec_room(coll_vec_t *c, size_t more) {
  if (c->n + more <= c->cap) return 0;
  size_t cap = c->cap ? c->cap : 8;
  while (cap < c->n + more) cap *= 2;
  coll_item_t *v = realloc(c->v, cap * sizeof *v);
  if (!v) return -1;
  c->v = v;
  c->cap = cap;
  return 0;
}

static int vec_insert(coll_vec_t *c, size_t at, const void *p, size_t len) {
  if (vec_room(c, 1) != 0) return -1;
  memmove(&c->v[at + 1], &c->v[at], (c->n - at) * sizeof *c->v);
  c->v[at] = (coll_item_t){p, len};
  c->n++;
  return 0;
}

static int vec_push(coll_vec_t *c, const void *p, size_t len) { return vec_insert(c, c->n, p, len); }

static void vec_remove(coll_vec_t *c, size_t at, size_t k) {
  memmove(&c->v[at], &c->v[at + k], (c->n - at - k) * sizeof *c->v);
  c->n -= k;
}

/* Memory the vector frees with itself: m, or NULL (freed) when out of
 * memory. */
static unsigned char *vec_adopt(coll_vec_t *c, unsigned char *m) {
  if (!m) return NULL;
  if (c->nown == c->own_cap) {
    size_t cap = c->own_cap ? c->own_cap * 2 : 4;
    unsigned char **o = realloc(c->own, cap * sizeof *o);
    if (!o) {
      free(m);
      return NULL;
    }
    c->own = o;
    c->own_cap = cap;
  }
  c->own[c->nown++] = m;
  return m;
}

/* A copy of n bytes the vector keeps (NULL when out of memory). */
static unsigned char *vec_keep(coll_vec_t *c, const void *p, size_t n) {
  unsigned char *m = malloc(n ? n : 1);
  if (m && n) memcpy(m, p, n);
  return vec_adopt(c, m);
}

static int item_eq(const coll_item_t *a, const void *p, size_t len) {
  return a->len == len && (len == 0 || memcmp(a->p, p, len) == 0);
}

/* ---- an index of a vector's items (every stride-th) ------------------------
 *
 * A command that looks up k items in a collection of n, or removes k from
 * it, builds one (O(n)) instead of k linear searches (O(k n)): a client's
 * one command of a million arguments must not stall a loop for hours. */
typedef struct coll_index {
  uint32_t *slot;  /* an item's position + 1; 0 empty */
  size_t mask;
  size_t used;
  const coll_vec_t *c;
  size_t stride;
} coll_index_t;

static uint64_t item_hash(const void *p, size_t len) { return XXH3_64bits(p, len); }

static void index_free(coll_index_t *ix) {
  free(ix->slot);
  ix->slot = NULL;
}

static void index_put(coll_index_t *ix, size_t pos) {
  const coll_item_t *it = &ix->c->v[pos];
  size_t i = item_hash(it->p, it->len) & ix->mask;
  while (ix->slot[i]) i = (i + 1) & ix->mask;
  ix->slot[i] = (uint32_t)(pos + 1);
  ix->used++;
}

/* Indexes c's items 0, stride, 2 stride, ...: 0, or -1 out of memory. */
static int index_build(coll_index_t *ix, const coll_vec_t *c, size_t stride, size_t more) {
  size_t want = (c->n / stride + more) * 2 + 16, cap = 16;
  while (cap < want) cap *= 2;
  if (c->n + more >= UINT32_MAX) return -1;
  ix->slot = calloc(cap, sizeof *ix->slot);
  if (!ix->slot) return -1;
  ix->mask = cap - 1;
  ix->used = 0;
  ix->c = c;
  ix->stride = stride;
  for (size_t i = 0; i + stride - 1 < c->n; i += stride) index_put(ix, i);
  return 0;
}

/* An item added at pos (after the build): 0, or -1 out of memory. */
static int index_add(coll_index_t *ix, size_t pos) {
  if ((ix->used + 1) * 2 > ix->mask + 1) { /* grow: index everything again */
    coll_index_t bigger;
    if (index_build(&bigger, ix->c, ix->stride, ix->used + 1) != 0) return -1;
    index_free(ix);
    *ix = bigger;
    return 0; /* pos is in the vector already: the build took it */
  }
  index_put(ix, pos);
  return 0;
}

/* The position of an item equal to p, or -1. */
static ssize_t index_find(const coll_index_t *ix, const void *p, size_t len) {
  size_t i = item_hash(p, len) & ix->mask;
  for (; ix->slot[i]; i = (i + 1) & ix->mask) {
    size_t pos = ix->slot[i] - 1;
    if (item_eq(&ix->c->v[pos], p, len)) return (ssize_t)pos;
  }
  return -1;
}

/* Removes every item (and the stride-1 after it) marked in gone, keeping
 * the others' order: one pass. */
static void vec_compact(coll_vec_t *c, const unsigned char *gone, size_t stride) {
  size_t w = 0;
  for (size_t i = 0; i < c->n; i += stride) {
    if (gone[i]) continue;
    for (size_t k = 0; k < stride && i + k < c->n; k++) c->v[w++] = c->v[i + k];
  }
  c->n = w;
}

/* ---- the encoding ---------------------------------------------------------- */

static int varint_get(const unsigned char **p, const unsigned char *end, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return -1;
    unsigned char b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

static size_t varint_put(unsigned char *p, uint64_t v) {
  size_t n = 0;
  do {
    unsigned char b = v & 0x7f;
    v >>= 7;
    p[n++] = (unsigned char)(b | (v ? 0x80 : 0));
  } while (v);
  return n;
}

int coll_decode(const void *value, size_t len, coll_vec_t *c) {
  memset(c, 0, sizeof *c);
  const unsigned char *p = value, *end = p + len;
  uint64_t count;
  if (len == 0) return 0; /* a new collection */
  if (varint_get(&p, end, &count) != 0 || count > len) return -1;
  if (vec_room(c, (size_t)count) != 0) return -2;
  for (uint64_t i = 0; i < count; i++) {
    uint64_t n;
    if (varint_get(&p, end, &n) != 0 || n > (uint64_t)(end - p)) {
      coll_vec_free(c);
      return -1;
    }
    c->v[c->n++] = (coll_item_t){p, (size_t)n};
    p += n;
  }
  if (p != end) {
    coll_vec_free(c);
    return -1;
  }
  return 0;
}

unsigned char *coll_encode(const coll_vec_t *c, size_t *len) {
  size_t n = 10;
  for (size_t i = 0; i < c->n; i++) n += 10 + c->v[i].len;
  unsigned char *out = malloc(n), *p = out;
  if (!out) return NULL;
  p += varint_put(p, c->n);
  for (size_t i = 0; i < c->n; i++) {
    p += varint_put(p, c->v[i].len);
    if (c->v[i].len) memcpy(p, c->v[i].p, c->v[i].len);
    p += c->v[i].len;
  }
  *len = (size_t)(p - out);
  return out;
}

/* ---- commands ---------------------------------------------------------------- */

int coll_cmd_type(int cmd) {
  if (cmd >= COLL_HSET && cmd <= COLL_HSCAN) return GRID_TYPE_HASH;
  if (cmd >= COLL_SADD && cmd <= COLL_SMOVE) return GRID_TYPE_SET;
  if (cmd >= COLL_LPUSH && cmd <= COLL_LMOVE) return GRID_TYPE_LIST;
  if (cmd >= COLL_INCRBYFLOAT && cmd <= COLL_GETEX) return GRID_TYPE_STRING;
  return -1;
}

int coll_cmd_keys(int cmd) {
  return (cmd >= COLL_SINTER && cmd <= COLL_SMOVE) || cmd == COLL_LMOVE ||
         (cmd >= COLL_RENAME && cmd <= COLL_COPY);
}

int coll_cmd_writes(int cmd) {
  switch (cmd) {
    case COLL_HSET: case COLL_HSETNX: case COLL_HDEL: case COLL_HINCRBY: case COLL_HINCRBYFLOAT:
    case COLL_SADD: case COLL_SREM: case COLL_SPOP:
    case COLL_LPUSH: case COLL_RPUSH: case COLL_LPUSHX: case COLL_RPUSHX: case COLL_LPOP:
    case COLL_RPOP: case COLL_LSET: case COLL_LREM: case COLL_LTRIM: case COLL_LINSERT:
    case COLL_SINTERSTORE: case COLL_SUNIONSTORE: case COLL_SDIFFSTORE: case COLL_SMOVE:
    case COLL_LMOVE: case COLL_INCRBYFLOAT: case COLL_SETRANGE: case COLL_SETBIT: case COLL_GETEX:
    case COLL_RENAME: case COLL_RENAMENX: case COLL_COPY:
      return 1;
    default:
      return 0;
  }
}

static void out_error(coll_out_t *o, int status, const char *err) {
  o->status = status;
  o->err = err;
  o->write = COLL_KEEP;
}

static void out_number(coll_out_t *o, int64_t n) {
  o->has_number = 1;
  o->number = n;
}

static void out_value(coll_out_t *o, const coll_item_t *it) {
  o->has_value = 1;
  if (it) o->value = *it;
  else o->nil_value = 1;
}

/* The collection after a change: its entry is written, or removed when it
 * is empty (as Redis removes an empty hash, list or set). */
static void out_changed(coll_out_t *o, const coll_vec_t *c) {
  o->write = c->n ? COLL_PUT : COLL_DELETE;
}

static int out_item(coll_out_t *o, const void *p, size_t len) {
  o->array = 1;
  if (vec_push(&o->items, p, len) != 0) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return -1;
  }
  return 0;
}

/* ... with a nil mark (HMGET's missing fields). */
static int out_item_nil(coll_out_t *o, const void *p, size_t len, int nil) {
  if (out_item(o, p, len) != 0) return -1;
  unsigned char *m = realloc(o->nils, o->items.cap);
  if (!m) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return -1;
  }
  o->nils = m;
  m[o->items.n - 1] = (unsigned char)nil;
  return 0;
}

void coll_out_free(coll_out_t *out) {
  coll_vec_free(&out->items);
  free(out->nils);
  out->nils = NULL;
}

/* ---- hashes ------------------------------------------------------------------ */

/* The index of field's item (even), or -1. */
static ssize_t hash_find(const coll_vec_t *c, const coll_item_t *field) {
  for (size_t i = 0; i + 1 < c->n; i += 2)
    if (item_eq(&c->v[i], field->p, field->len)) return (ssize_t)i;
  return -1;
}

/* Sets field to value: 1 when the field is new. -1 out of memory. */
static int hash_set(coll_vec_t *c, const coll_item_t *field, const coll_item_t *value) {
  ssize_t at = hash_find(c, field);
  if (at >= 0) {
    c->v[at + 1] = *value;
    return 0;
  }
  if (vec_push(c, field->p, field->len) != 0 || vec_push(c, value->p, value->len) != 0) return -1;
  return 1;
}

/* Redis's string2ld: the text of a long double, all of it. */
static int parse_ld(const void *p, size_t len, long double *out) {
  char buf[COLL_FLOAT_CHARS_MAX];
  if (len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, p, len);
  buf[len] = '\0';
  if (buf[0] == ' ' || (buf[0] >= '\t' && buf[0] <= '\r')) return -1;
  errno = 0;
  char *end;
  long double v = strtold(buf, &end);
  if (*end || isnan(v) ||
      (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL || fpclassify(v) == FP_ZERO)))
    return -1;
  *out = v;
  return 0;
}

/* Redis's ld2string, human form: 17 decimals, trailing zeros dropped. */
static size_t format_ld(char *buf, size_t cap, long double v) {
  int l = snprintf(buf, cap, "%.17Lf", v);
  if (l < 0 || (size_t)l >= cap) return 0;
  if (strchr(buf, '.')) {
    char *p = buf + l - 1;
    while (*p == '0') {
      p--;
      l--;
    }
    if (*p == '.') l--;
  }
  if (l == 2 && buf[0] == '-' && buf[1] == '0') {
    buf[0] = '0';
    l = 1;
  }
  buf[l] = '\0';
  return (size_t)l;
}

static void hash_incr(const coll_req_t *req, coll_vec_t *c, coll_out_t *o) {
  const coll_item_t *field = &req->args[0];
  ssize_t at = hash_find(c, field);
  char text[sizeof o->num];
  size_t n;
  if (req->cmd == COLL_HINCRBY) {
    int64_t cur = 0, sum;
    if (at >= 0 && coll_parse_i64(c->v[at + 1].p, c->v[at + 1].len, &cur) != 0) {
      out_error(o, GRID_ENOTNUM, "hash value is not an integer");
      return;
    }
    if (__builtin_add_overflow(cur, req->n1, &sum)) {
      out_error(o, GRID_EOVERFLOW, "increment or decrement would overflow");
      return;
    }
    n = (size_t)snprintf(text, sizeof text, "%lld", (long long)sum);
    out_number(o, sum);
  } else {
    long double cur = 0, incr;
    if (parse_ld(req->args[1].p, req->args[1].len, &incr) != 0) {
      out_error(o, GRID_ENOTNUM, "value is not a valid float");
      return;
    }
    if (isinf(incr)) {
      out_error(o, GRID_EINVAL, "value is NaN or Infinity");
      return;
    }
    if (at >= 0 && parse_ld(c->v[at + 1].p, c->v[at + 1].len, &cur) != 0) {
      out_error(o, GRID_ENOTNUM, "hash value is not a float");
      return;
    }
    long double sum = cur + incr;
    if (isnan(sum) || isinf(sum)) {
      out_error(o, GRID_EINVAL, "increment would produce NaN or Infinity");
      return;
    }
    char big[COLL_FLOAT_CHARS_MAX];
    n = format_ld(big, sizeof big, sum);
    if (n == 0 || n >= sizeof o->num) { /* huge: kept whole */
      unsigned char *m = vec_keep(c, big, n);
      coll_item_t v = {m, n};
      if (!m || hash_set(c, field, &v) < 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      out_value(o, &v);
      out_changed(o, c);
      return;
    }
    memcpy(text, big, n + 1);
  }
  unsigned char *m = vec_keep(c, text, n);
  coll_item_t v = {m, n};
  if (!m || hash_set(c, field, &v) < 0) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return;
  }
  if (req->cmd == COLL_HINCRBYFLOAT) out_value(o, &v);
  out_changed(o, c);
}

/* HRANDFIELD, SRANDMEMBER: count picks (step items apiece: 2 for a hash's
 * pairs); count < 0 may repeat, count > 0 does not. */
static void rand_pick(const coll_req_t *req, const coll_vec_t *c, size_t step, int with_values,
                      coll_out_t *o) {
  size_t n = c->n / step;
  o->array = 1;
  if (n == 0 || req->n1 == 0) return;
  if (req->n1 < 0) {
    uint64_t want = req->n1 == INT64_MIN ? (uint64_t)INT64_MAX + 1 : (uint64_t)-req->n1;
    for (uint64_t k = 0; k < want; k++) {
      size_t i = (size_t)(req->rand(req->rand_ctx) % n) * step;
      if (out_item(o, c->v[i].p, c->v[i].len) != 0) return;
      if (with_values && out_item(o, c->v[i + 1].p, c->v[i + 1].len) != 0) return;
    }
    return;
  }
  /* Distinct: a shuffled prefix of the indexes. */
  size_t want = (uint64_t)req->n1 < n ? (size_t)req->n1 : n;
  size_t *idx = malloc(n * sizeof *idx);
  if (!idx) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) idx[i] = i;
  for (size_t i = 0; i < want; i++) {
    size_t j = i + (size_t)(req->rand(req->rand_ctx) % (n - i));
    size_t t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
    size_t at = idx[i] * step;
    if (out_item(o, c->v[at].p, c->v[at].len) != 0) break;
    if (with_values && out_item(o, c->v[at + 1].p, c->v[at + 1].len) != 0) break;
  }
  free(idx);
}

/* HDEL, SREM: the arguments' items removed (with their values: stride 2)
 * in one pass; the number removed. */
static void removed_of(const coll_req_t *req, coll_vec_t *c, size_t stride, coll_out_t *o) {
  coll_index_t ix;
  unsigned char *gone = calloc(c->n ? c->n : 1, 1);
  if (!gone || index_build(&ix, c, stride, 0) != 0) {
    free(gone);
    out_error(o, GRID_ENOMEM, "out of memory");
    return;
  }
  int64_t removed = 0;
  for (size_t i = 0; i < req->nargs; i++) {
    ssize_t at = index_find(&ix, req->args[i].p, req->args[i].len);
    if (at < 0 || gone[at]) continue;
    gone[at] = 1;
    removed++;
  }
  index_free(&ix);
  if (removed) vec_compact(c, gone, stride);
  free(gone);
  out_number(o, removed);
  if (removed) out_changed(o, c);
}

static void run_hash(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *o) {
  const coll_item_t *a = req->args;
  switch (req->cmd) {
    case COLL_HSET: {
      int64_t added = 0;
      coll_index_t ix;
      if (index_build(&ix, c, 2, req->nargs / 2) != 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      for (size_t i = 0; i + 1 < req->nargs; i += 2) {
        ssize_t at = index_find(&ix, a[i].p, a[i].len);
        if (at >= 0) {
          c->v[at + 1] = a[i + 1];
          continue;
        }
        if (vec_push(c, a[i].p, a[i].len) != 0 || vec_push(c, a[i + 1].p, a[i + 1].len) != 0 ||
            index_add(&ix, c->n - 2) != 0) {
          index_free(&ix);
          out_error(o, GRID_ENOMEM, "out of memory");
          return;
        }
        added++;
      }
      index_free(&ix);
      out_number(o, added);
      out_changed(o, c);
      return;
    }
    case COLL_HSETNX:
      if (hash_find(c, &a[0]) >= 0) {
        out_number(o, 0);
        return;
      }
      if (hash_set(c, &a[0], &a[1]) < 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      out_number(o, 1);
      out_changed(o, c);
      return;
    case COLL_HGET: {
      ssize_t at = hash_find(c, &a[0]);
      out_value(o, at >= 0 ? &c->v[at + 1] : NULL);
      return;
    }
    case COLL_HMGET: {
      coll_index_t ix;
      if (index_build(&ix, c, 2, 0) != 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      for (size_t i = 0; i < req->nargs; i++) {
        ssize_t at = index_find(&ix, a[i].p, a[i].len);
        if (out_item_nil(o, at >= 0 ? c->v[at + 1].p : NULL, at >= 0 ? c->v[at + 1].len : 0,
                         at < 0) != 0)
          break;
      }
      index_free(&ix);
      return;
    }
    case COLL_HDEL: removed_of(req, c, 2, o); return;
    case COLL_HEXISTS: out_number(o, hash_find(c, &a[0]) >= 0); return;
    case COLL_HLEN: out_number(o, (int64_t)(c->n / 2)); return;
    case COLL_HSTRLEN: {
      ssize_t at = hash_find(c, &a[0]);
      out_number(o, at >= 0 ? (int64_t)c->v[at + 1].len : 0);
      return;
    }
    case COLL_HGETALL: case COLL_HKEYS: case COLL_HVALS: case COLL_HSCAN:
      o->array = 1;
      for (size_t i = 0; i + 1 < c->n; i += 2) {
        if (req->cmd == COLL_HSCAN && req->match &&
            !req->match(req->match_ctx, c->v[i].p, c->v[i].len))
          continue;
        if (req->cmd != COLL_HVALS && out_item(o, c->v[i].p, c->v[i].len) != 0) return;
        if (req->cmd != COLL_HKEYS && out_item(o, c->v[i + 1].p, c->v[i + 1].len) != 0) return;
      }
      return;
    case COLL_HINCRBY: case COLL_HINCRBYFLOAT: hash_incr(req, c, o); return;
    case COLL_HRANDFIELD:
      if (!(req->flags & COLL_F_COUNT)) {
        if (!exists || c->n < 2) {
          out_value(o, NULL);
          return;
        }
        size_t i = (size_t)(req->rand(req->rand_ctx) % (c->n / 2)) * 2;
        out_value(o, &c->v[i]);
        return;
      }
      rand_pick(req, c, 2, (req->flags & COLL_F_WITHVALUES) != 0, o);
      return;
    default: return;
  }
}

/* ---- sets -------------------------------------------------------------------- */

static ssize_t set_find(const coll_vec_t *c, const void *p, size_t len) {
  for (size_t i = 0; i < c->n; i++)
    if (item_eq(&c->v[i], p, len)) return (ssize_t)i;
  return -1;
}

/* Whether every member is an integer (the set is kept in numeric order). */
static int set_all_ints(const coll_vec_t *c) {
  int64_t v;
  for (size_t i = 0; i < c->n; i++)
    if (coll_parse_i64(c->v[i].p, c->v[i].len, &v) != 0) return 0;
  return 1;
}

/* Adds a member not in the set: in numeric order while every member is an
 * integer, else at the end. */
static int set_add(coll_vec_t *c, const coll_item_t *m, int *ints) {
  int64_t v, w;
  if (*ints && coll_parse_i64(m->p, m->len, &v) == 0) {
    size_t at = 0;
    while (at < c->n && coll_parse_i64(c->v[at].p, c->v[at].len, &w) == 0 && w < v) at++;
    return vec_insert(c, at, m->p, m->len);
  }
  *ints = 0;
  return vec_push(c, m->p, m->len);
}

static int int_item_cmp(const void *a, const void *b) {
  const coll_item_t *x = a, *y = b;
  int64_t u = 0, v = 0;
  coll_parse_i64(x->p, x->len, &u);
  coll_parse_i64(y->p, y->len, &v);
  return u < v ? -1 : u > v;
}

/* Adds the items not in c yet, each once, through an index (the members
 * of c are unique): appended, then the set sorted numerically when every
 * member is an integer. The number added, or -1 out of memory. */
static int64_t set_add_all(coll_vec_t *c, const coll_item_t *items, size_t n) {
  coll_index_t ix;
  if (index_build(&ix, c, 1, n) != 0) return -1;
  int64_t added = 0;
  for (size_t i = 0; i < n; i++) {
    if (index_find(&ix, items[i].p, items[i].len) >= 0) continue;
    if (vec_push(c, items[i].p, items[i].len) != 0 || index_add(&ix, c->n - 1) != 0) {
      index_free(&ix);
      return -1;
    }
    added++;
  }
  index_free(&ix);
  if (added && set_all_ints(c)) qsort(c->v, c->n, sizeof *c->v, int_item_cmp);
  return added;
}

static void run_set(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *o) {
  const coll_item_t *a = req->args;
  switch (req->cmd) {
    case COLL_SADD: {
      int64_t added = set_add_all(c, a, req->nargs);
      if (added < 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      out_number(o, added);
      if (added) out_changed(o, c);
      return;
    }
    case COLL_SREM: removed_of(req, c, 1, o); return;
    case COLL_SMEMBERS: case COLL_SSCAN:
      o->array = 1;
      for (size_t i = 0; i < c->n; i++) {
        if (req->cmd == COLL_SSCAN && req->match &&
            !req->match(req->match_ctx, c->v[i].p, c->v[i].len))
          continue;
        if (out_item(o, c->v[i].p, c->v[i].len) != 0) return;
      }
      return;
    case COLL_SISMEMBER: out_number(o, set_find(c, a[0].p, a[0].len) >= 0); return;
    case COLL_SMISMEMBER: {
      coll_index_t ix;
      if (index_build(&ix, c, 1, 0) != 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      o->array = 1;
      for (size_t i = 0; i < req->nargs; i++) {
        int in = index_find(&ix, a[i].p, a[i].len) >= 0;
        /* numbers: items of "0" / "1" the front end answers as integers */
        if (out_item(o, in ? "1" : "0", 1) != 0) break;
      }
      index_free(&ix);
      return;
    }
    case COLL_SCARD: out_number(o, (int64_t)c->n); return;
    case COLL_SPOP: {
      if (!(req->flags & COLL_F_COUNT)) {
        if (!exists || c->n == 0) {
          out_value(o, NULL);
          return;
        }
        size_t i = (size_t)(req->rand(req->rand_ctx) % c->n);
        out_value(o, &c->v[i]);
        vec_remove(c, i, 1);
        out_changed(o, c);
        return;
      }
      /* Distinct picks (a shuffled prefix), removed in one pass. */
      o->array = 1;
      size_t want = (uint64_t)req->n1 < c->n ? (size_t)req->n1 : c->n;
      if (want == 0) return;
      size_t *idx = malloc(c->n * sizeof *idx);
      unsigned char *gone = calloc(c->n, 1);
      if (!idx || !gone) {
        free(idx);
        free(gone);
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      for (size_t i = 0; i < c->n; i++) idx[i] = i;
      int failed = 0;
      for (size_t k = 0; k < want && !failed; k++) {
        size_t j = k + (size_t)(req->rand(req->rand_ctx) % (c->n - k)), t = idx[k];
        idx[k] = idx[j];
        idx[j] = t;
        gone[idx[k]] = 1;
        failed = out_item(o, c->v[idx[k]].p, c->v[idx[k]].len) != 0;
      }
      if (!failed) {
        vec_compact(c, gone, 1);
        out_changed(o, c);
      }
      free(idx);
      free(gone);
      return;
    }
    case COLL_SRANDMEMBER:
      if (!(req->flags & COLL_F_COUNT)) {
        if (!exists || c->n == 0) {
          out_value(o, NULL);
          return;
        }
        out_value(o, &c->v[req->rand(req->rand_ctx) % c->n]);
        return;
      }
      rand_pick(req, c, 1, 0, o);
      return;
    default: return;
  }
}

/* ---- lists ------------------------------------------------------------------- */

/* An index from the head (negative: from the tail) as a position, or -1
 * when out of range. */
static ssize_t list_at(const coll_vec_t *c, int64_t index) {
  int64_t n = (int64_t)c->n;
  if (index < 0) index += n;
  return index < 0 || index >= n ? -1 : (ssize_t)index;
}

/* LRANGE / LTRIM's start and stop, clamped as Redis does: 0 when empty. */
static int list_span(const coll_vec_t *c, int64_t start, int64_t stop, size_t *from, size_t *to) {
  int64_t n = (int64_t)c->n;
  if (start < 0) start = n + start;
  if (stop < 0) stop = n + stop;
  if (start < 0) start = 0;
  if (start > stop || start >= n) return 0;
  if (stop >= n) stop = n - 1;
  *from = (size_t)start;
  *to = (size_t)stop;
  return 1;
}

static void list_pop(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *o) {
  int left = req->cmd == COLL_LPOP;
  if (!(req->flags & COLL_F_COUNT)) {
    if (!exists || c->n == 0) {
      out_value(o, NULL);
      return;
    }
    size_t at = left ? 0 : c->n - 1;
    out_value(o, &c->v[at]);
    vec_remove(c, at, 1);
    out_changed(o, c);
    return;
  }
  if (!exists) {
    o->nil_array = 1;
    return;
  }
  o->array = 1;
  size_t want = (uint64_t)req->n1 < c->n ? (size_t)req->n1 : c->n;
  for (size_t k = 0; k < want; k++) { /* from the end popped: nearest first */
    size_t at = left ? k : c->n - 1 - k;
    if (out_item(o, c->v[at].p, c->v[at].len) != 0) return;
  }
  if (!want) return;
  vec_remove(c, left ? 0 : c->n - want, want); /* one move, not one per element */
  out_changed(o, c);
}

static void list_pos(const coll_req_t *req, const coll_vec_t *c, coll_out_t *o) {
  int64_t rank = req->flags & COLL_F_RANK ? req->n1 : 1;
  int64_t count = req->flags & COLL_F_COUNT ? req->n2 : -1; /* -1: one answer */
  int64_t maxlen = req->flags & COLL_F_MAXLEN ? req->n3 : 0;
  const coll_item_t *e = &req->args[0];
  int64_t skip = rank > 0 ? rank - 1 : -(rank + 1);
  int64_t found = 0, looked = 0;
  size_t n = c->n;
  if (count >= 0) o->array = 1;
  for (size_t k = 0; k < n && (maxlen == 0 || looked < maxlen); k++, looked++) {
    size_t i = rank > 0 ? k : n - 1 - k;
    if (!item_eq(&c->v[i], e->p, e->len)) continue;
    if (skip > 0) {
      skip--;
      continue;
    }
    if (count < 0) {
      out_number(o, (int64_t)i);
      return;
    }
    int len = snprintf(o->num, sizeof o->num, "%zu", i);
    unsigned char *m = vec_keep(&o->items, o->num, (size_t)len);
    if (!m || out_item(o, m, (size_t)len) != 0) return;
    if (count > 0 && ++found == count) return;
  }
  if (count < 0) out_value(o, NULL);
}

static void run_list(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *o) {
  const coll_item_t *a = req->args;
  switch (req->cmd) {
    case COLL_LPUSHX: case COLL_RPUSHX:
      if (!exists) {
        out_number(o, 0);
        return;
      }
      /* fall through */
    case COLL_LPUSH: case COLL_RPUSH: {
      int left = req->cmd == COLL_LPUSH || req->cmd == COLL_LPUSHX;
      size_t k = req->nargs;
      if (vec_room(c, k) != 0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      if (left) { /* one move; the last argument ends up first, as Redis */
        memmove(&c->v[k], &c->v[0], c->n * sizeof *c->v);
        for (size_t i = 0; i < k; i++) c->v[k - 1 - i] = a[i];
      } else {
        for (size_t i = 0; i < k; i++) c->v[c->n + i] = a[i];
      }
      c->n += k;
      out_number(o, (int64_t)c->n);
      out_changed(o, c);
      return;
    }
    case COLL_LPOP: case COLL_RPOP: list_pop(req, c, exists, o); return;
    case COLL_LRANGE: {
      size_t from, to;
      o->array = 1;
      if (!list_span(c, req->n1, req->n2, &from, &to)) return;
      for (size_t i = from; i <= to; i++)
        if (out_item(o, c->v[i].p, c->v[i].len) != 0) return;
      return;
    }
    case COLL_LLEN: out_number(o, (int64_t)c->n); return;
    case COLL_LINDEX: {
      ssize_t at = list_at(c, req->n1);
      out_value(o, at >= 0 ? &c->v[at] : NULL);
      return;
    }
    case COLL_LSET: {
      if (!exists) {
        out_error(o, GRID_ENOTFOUND, "no such key");
        return;
      }
      ssize_t at = list_at(c, req->n1);
      if (at < 0) {
        out_error(o, GRID_EINVAL, "index out of range");
        return;
      }
      c->v[at] = a[0];
      out_changed(o, c);
      return;
    }
    case COLL_LREM: {
      /* count > 0 from the head, < 0 from the tail, 0 every one */
      int64_t want = req->n1;
      uint64_t limit = want < 0 ? (uint64_t)(-(want + 1)) + 1 : (uint64_t)want, removed = 0;
      unsigned char *gone = calloc(c->n ? c->n : 1, 1);
      if (!gone) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      for (size_t k = 0; k < c->n && (want == 0 || removed < limit); k++) {
        size_t i = want >= 0 ? k : c->n - 1 - k;
        if (!item_eq(&c->v[i], a[0].p, a[0].len)) continue;
        gone[i] = 1;
        removed++;
      }
      if (removed) vec_compact(c, gone, 1); /* one pass */
      free(gone);
      out_number(o, (int64_t)removed);
      if (removed) out_changed(o, c);
      return;
    }
    case COLL_LTRIM: {
      size_t from, to;
      if (!exists) return;
      if (!list_span(c, req->n1, req->n2, &from, &to)) {
        c->n = 0;
      } else {
        vec_remove(c, to + 1, c->n - to - 1);
        vec_remove(c, 0, from);
      }
      out_changed(o, c);
      return;
    }
    case COLL_LINSERT: {
      if (!exists) {
        out_number(o, 0);
        return;
      }
      ssize_t at = set_find(c, a[0].p, a[0].len);
      if (at < 0) {
        out_number(o, -1);
        return;
      }
      if (vec_insert(c, (size_t)at + ((req->flags & COLL_F_AFTER) ? 1 : 0), a[1].p, a[1].len) !=
          0) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      out_number(o, (int64_t)c->n);
      out_changed(o, c);
      return;
    }
    case COLL_LPOS: list_pos(req, c, o); return;
    default: return;
  }
}

/* ---- strings ------------------------------------------------------------------- */

#define COLL_STRING_BYTES_MAX ((int64_t)512 << 20) /* Redis's proto-max-bulk-len */

/* The string as it becomes at least len bytes long (zeros added): its own
 * copy, the vector's item 0. */
static unsigned char *string_grow(coll_vec_t *c, size_t len) {
  size_t cur = c->n ? c->v[0].len : 0, n = len > cur ? len : cur;
  unsigned char *b = vec_adopt(c, calloc(1, n ? n : 1));
  if (!b) return NULL;
  if (cur) memcpy(b, c->v[0].p, cur);
  if (!c->n && vec_push(c, b, n) != 0) return NULL;
  c->v[0] = (coll_item_t){b, n};
  return b;
}

static void run_string(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *o) {
  const coll_item_t *s = exists && c->n ? &c->v[0] : NULL;
  size_t len = s ? s->len : 0;
  switch (req->cmd) {
    case COLL_INCRBYFLOAT: {
      long double cur = 0, incr;
      if ((s && parse_ld(s->p, s->len, &cur) != 0) ||
          parse_ld(req->args[0].p, req->args[0].len, &incr) != 0) {
        out_error(o, GRID_ENOTNUM, "value is not a valid float");
        return;
      }
      long double sum = cur + incr;
      if (isnan(sum) || isinf(sum)) {
        out_error(o, GRID_EINVAL, "increment would produce NaN or Infinity");
        return;
      }
      char text[COLL_FLOAT_CHARS_MAX];
      size_t n = format_ld(text, sizeof text, sum);
      unsigned char *m = vec_keep(c, text, n);
      if (!m || (!c->n && vec_push(c, m, n) != 0)) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      c->v[0] = (coll_item_t){m, n};
      out_value(o, &c->v[0]);
      o->write = COLL_PUT;
      return;
    }
    case COLL_SETRANGE: {
      const coll_item_t *v = &req->args[0];
      if (v->len == 0) { /* nothing to write: the length as it is */
        out_number(o, (int64_t)len);
        return;
      }
      if (req->n1 < 0) { /* the RESP front end says so first; a native request too */
        out_error(o, GRID_EINVAL, "offset is out of range");
        return;
      }
      if (req->n1 > COLL_STRING_BYTES_MAX - (int64_t)v->len) {
        out_error(o, GRID_EINVAL, "string exceeds maximum allowed size (proto-max-bulk-len)");
        return;
      }
      if (req->bytes_max && (uint64_t)req->n1 + v->len > req->bytes_max) {
        out_error(o, GRID_EVALTOOBIG, "string exceeds maximum allowed size (value_bytes_max)");
        return;
      }
      unsigned char *b = string_grow(c, (size_t)req->n1 + v->len);
      if (!b) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      memcpy(b + req->n1, v->p, v->len);
      out_number(o, (int64_t)c->v[0].len);
      o->write = COLL_PUT;
      return;
    }
    case COLL_GETBIT: {
      uint64_t byte = (uint64_t)req->n1 >> 3; /* n1 >= 0: the front end checks */
      int bit = byte < len ? (s->p[byte] >> (7 - (req->n1 & 7))) & 1 : 0;
      out_number(o, bit);
      return;
    }
    case COLL_SETBIT: {
      size_t byte = (size_t)((uint64_t)req->n1 >> 3);
      if (req->n1 < 0 || (req->bytes_max && (uint64_t)byte + 1 > req->bytes_max) ||
          (int64_t)byte + 1 > COLL_STRING_BYTES_MAX) {
        out_error(o, GRID_EVALTOOBIG, "string exceeds maximum allowed size (value_bytes_max)");
        return;
      }
      unsigned char *b = string_grow(c, byte + 1);
      if (!b) {
        out_error(o, GRID_ENOMEM, "out of memory");
        return;
      }
      int shift = 7 - (int)(req->n1 & 7), old = (b[byte] >> shift) & 1;
      size_t had = exists && s ? len : 0;
      out_number(o, old);
      if (req->n2) b[byte] = (unsigned char)(b[byte] | (1u << shift));
      else b[byte] = (unsigned char)(b[byte] & ~(1u << shift));
      /* As Redis 7: a bit that does not change, in a string that did not
       * grow, is no write (no event). */
      if (old != (req->n2 != 0) || byte >= had) o->write = COLL_PUT;
      return;
    }
    case COLL_GETEX:
      out_value(o, s);
      if (s && (req->flags & (COLL_F_PERSIST | COLL_F_EXPIRE))) {
        o->write = COLL_EXPIRE;
        o->expire_at = (req->flags & COLL_F_PERSIST) ? 0 : req->n1;
      }
      return;
    case COLL_BITCOUNT: {
      /* As Redis: negative ends count from the end, in bytes or bits. */
      int64_t total = (req->flags & COLL_F_BITS) ? (int64_t)len * 8 : (int64_t)len;
      int64_t start = 0, end = total - 1, count = 0;
      if (req->flags & COLL_F_RANGE) {
        start = req->n1 < 0 ? total + req->n1 : req->n1;
        end = req->n2 < 0 ? total + req->n2 : req->n2;
        if (start < 0) start = 0;
        if (end < 0) end = 0;
        if (end >= total) end = total - 1;
      }
      if (!s || start > end) {
        out_number(o, 0);
        return;
      }
      for (int64_t i = start; i <= end; i++) {
        if (req->flags & COLL_F_BITS) count += (s->p[i >> 3] >> (7 - (i & 7))) & 1;
        else count += __builtin_popcount(s->p[i]);
      }
      out_number(o, count);
      return;
    }
    default: return;
  }
}

/* The arguments a command needs at least (the front end checks Redis's
 * arity; a request from elsewhere is checked here). */
static size_t coll_args_min(int cmd) {
  switch (cmd) {
    case COLL_HSET: case COLL_HSETNX: case COLL_HINCRBYFLOAT: case COLL_LINSERT: return 2;
    case COLL_HGET: case COLL_HMGET: case COLL_HDEL: case COLL_HEXISTS: case COLL_HSTRLEN:
    case COLL_HINCRBY: case COLL_SADD: case COLL_SREM: case COLL_SISMEMBER: case COLL_SMISMEMBER:
    case COLL_SMOVE: case COLL_LPUSH: case COLL_RPUSH: case COLL_LPUSHX: case COLL_RPUSHX:
    case COLL_LSET: case COLL_LREM: case COLL_LPOS: case COLL_INCRBYFLOAT: case COLL_SETRANGE:
      return 1;
    default: return 0;
  }
}

static int coll_args_ok(const coll_req_t *req, coll_out_t *out) {
  if (req->nargs >= coll_args_min(req->cmd) && (req->cmd != COLL_HSET || req->nargs % 2 == 0))
    return 1;
  out_error(out, GRID_EINVAL, "wrong number of arguments");
  return 0;
}

void coll_run(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *out) {
  memset(out, 0, sizeof *out);
  if (!coll_args_ok(req, out)) return;
  switch (coll_cmd_type(req->cmd)) {
    case GRID_TYPE_STRING: run_string(req, c, exists, out); return;
    case GRID_TYPE_HASH: run_hash(req, c, exists, out); return;
    case GRID_TYPE_SET: run_set(req, c, exists, out); return;
    case GRID_TYPE_LIST: run_list(req, c, exists, out); return;
    default: out_error(out, GRID_EBADOP, "unknown collection command"); return;
  }
}

/* ---- several keys -------------------------------------------------------------- */

/* The sources' intersection, union or difference into r: in the smallest
 * source's order for an intersection answered as it is (as Redis walks
 * it), else as a set is kept (numeric order while every member is an
 * integer). */
static int set_algebra(int kind, coll_vec_t *const *src, size_t n, int as_set, coll_vec_t *r) {
  if (kind == COLL_SUNION) {
    for (size_t i = 0; i < n; i++)
      if (set_add_all(r, src[i]->v, src[i]->n) < 0) return -1;
    return 0;
  }
  /* INTER: the smallest source's members in every other; DIFF: the first
   * source's in none of the others. Each other source gets an index. */
  size_t m = 0;
  if (kind == COLL_SINTER)
    for (size_t i = 1; i < n; i++)
      if (src[i]->n < src[m]->n) m = i;
  coll_index_t *ix = calloc(n ? n : 1, sizeof *ix);
  if (!ix) return -1;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    if (i != m) rc = index_build(&ix[i], src[i], 1, 0);
  for (size_t k = 0; k < src[m]->n && rc == 0; k++) {
    const coll_item_t *x = &src[m]->v[k];
    int keep = 1;
    for (size_t i = 0; i < n && keep; i++) {
      if (i == m) continue;
      int in = index_find(&ix[i], x->p, x->len) >= 0;
      keep = kind == COLL_SINTER ? in : !in;
    }
    if (keep) rc = vec_push(r, x->p, x->len); /* src[m]'s members are unique */
  }
  for (size_t i = 0; i < n; i++) index_free(&ix[i]);
  free(ix);
  if (rc == 0 && as_set && r->n && set_all_ints(r)) qsort(r->v, r->n, sizeof *r->v, int_item_cmp);
  return rc;
}

static void run_smove(const coll_req_t *req, coll_vec_t *const *v, coll_out_t *o) {
  const coll_item_t *m = &req->args[0];
  ssize_t at = set_find(v[0], m->p, m->len);
  if (at < 0 || v[0] == v[1]) { /* not there, or moved onto itself */
    out_number(o, at >= 0);
    return;
  }
  vec_remove(v[0], (size_t)at, 1);
  out_changed(o, v[0]);
  out_number(o, 1);
  if (set_find(v[1], m->p, m->len) >= 0) return;
  int ints = set_all_ints(v[1]);
  if (set_add(v[1], m, &ints) != 0) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return;
  }
  o->write2 = COLL_PUT;
}

static void run_lmove(const coll_req_t *req, coll_vec_t *const *v, const int *exists,
                      coll_out_t *o) {
  if (!exists[0] || v[0]->n == 0) {
    out_value(o, NULL);
    return;
  }
  size_t at = (req->flags & COLL_F_FROM_RIGHT) ? v[0]->n - 1 : 0;
  coll_item_t x = v[0]->v[at];
  vec_remove(v[0], at, 1);
  if (vec_insert(v[1], (req->flags & COLL_F_TO_RIGHT) ? v[1]->n : 0, x.p, x.len) != 0) {
    out_error(o, GRID_ENOMEM, "out of memory");
    return;
  }
  out_value(o, &x);
  out_changed(o, v[0]);
  if (v[1] != v[0]) o->write2 = COLL_PUT;
}

void coll_run_keys(const coll_req_t *req, coll_vec_t *const *v, const int *exists, size_t n,
                   coll_out_t *out) {
  memset(out, 0, sizeof *out);
  if (!coll_args_ok(req, out)) return;
  if (n < 2 && req->cmd != COLL_SINTER && req->cmd != COLL_SUNION && req->cmd != COLL_SDIFF) {
    out_error(out, GRID_EINVAL, "wrong number of keys");
    return;
  }
  switch (req->cmd) {
    case COLL_SINTER: case COLL_SUNION: case COLL_SDIFF:
      if (set_algebra(req->cmd, v, n, req->cmd != COLL_SINTER, &out->items) != 0)
        out_error(out, GRID_ENOMEM, "out of memory");
      out->array = 1;
      return;
    case COLL_SINTERSTORE: case COLL_SUNIONSTORE: case COLL_SDIFFSTORE: {
      coll_vec_t r = {0};
      int kind = req->cmd - COLL_SINTERSTORE + COLL_SINTER;
      if (set_algebra(kind, v + 1, n - 1, 1, &r) != 0) {
        coll_vec_free(&r);
        out_error(out, GRID_ENOMEM, "out of memory");
        return;
      }
      /* The destination is made anew (its items point into the sources). */
      free(v[0]->v);
      v[0]->v = r.v;
      v[0]->n = r.n;
      v[0]->cap = r.cap;
      out_number(out, (int64_t)r.n);
      out_changed(out, v[0]);
      return;
    }
    case COLL_SMOVE: run_smove(req, v, out); return;
    case COLL_LMOVE: run_lmove(req, v, exists, out); return;
    default: out_error(out, GRID_EBADOP, "unknown collection command"); return;
  }
}

const char *coll_encoding(int type, const void *value, size_t len) {
  int64_t v;
  coll_vec_t c;
  const char *enc;
  switch (type) {
    case GRID_TYPE_STRING:
      if (len <= 20 && coll_parse_i64(value, len, &v) == 0) return "int";
      return len <= 44 ? "embstr" : "raw";
    case GRID_TYPE_LIST: return "quicklist";
    case GRID_TYPE_HASH:
      if (coll_decode(value, len, &c) != 0) return "hashtable";
      enc = c.n / 2 <= 128 ? "listpack" : "hashtable";
      for (size_t i = 0; i < c.n; i++)
        if (c.v[i].len > 64) enc = "hashtable";
      coll_vec_free(&c);
      return enc;
    case GRID_TYPE_SET:
      if (coll_decode(value, len, &c) != 0) return "hashtable";
      enc = c.n <= 512 && set_all_ints(&c) ? "intset" : "hashtable";
      coll_vec_free(&c);
      return enc;
    default: return "unknown";
  }
}
