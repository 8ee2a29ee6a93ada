/*
 * coll: hashes, lists and sets as one entry's value, and what each Redis
 * command does to one. Pure: a command takes the entry's items as they
 * are (decoded), and says what the entry becomes and what to answer; ops.c
 * reads and writes the store around it, under the partition's hold.
 *
 * A collection's value is its items, each length-prefixed:
 *
 *   varint(count) { varint(len) bytes }*
 *
 * (LEB128 varints). A hash's items are field, value, field, value ... in
 * the order fields were first set (as a small Redis hash); a list's are
 * its elements, head first; a set's its members, in ascending numeric
 * order while every member is a 64-bit integer (as Redis's intset), else
 * in the order they were added. Every command costs O(the collection):
 * it is one entry, read and written (and replicated) whole.
 */
#ifndef GRID_COLL_H
#define GRID_COLL_H

#include <stddef.h>
#include <stdint.h>

#include "grid.pb-c.h"

typedef struct coll_item {
  const unsigned char *p;
  size_t len;
} coll_item_t;

/* A collection being worked on: items point into the old value, the
 * command's arguments, or memory the vector owns (own). */
typedef struct coll_vec {
  coll_item_t *v;
  size_t n, cap;
  unsigned char **own;
  size_t nown, own_cap;
} coll_vec_t;

void coll_vec_free(coll_vec_t *c);
/* Decodes value into c (items point into value). 0, or -1 for bytes that
 * are not a collection, -2 when out of memory. */
int coll_decode(const void *value, size_t len, coll_vec_t *c);
/* The value of c's items (malloc'd), NULL when out of memory. */
unsigned char *coll_encode(const coll_vec_t *c, size_t *len);

/* The commands: grid.proto's CollCmd (the protocol's numbers). Hashes,
 * then sets, then lists, each a range of its own. */
typedef enum {
  COLL_NONE = 0,
  COLL_HSET = GRID__COLL_CMD__HSET,
  COLL_HSETNX = GRID__COLL_CMD__HSETNX,
  COLL_HGET = GRID__COLL_CMD__HGET,
  COLL_HMGET = GRID__COLL_CMD__HMGET,
  COLL_HDEL = GRID__COLL_CMD__HDEL,
  COLL_HEXISTS = GRID__COLL_CMD__HEXISTS,
  COLL_HLEN = GRID__COLL_CMD__HLEN,
  COLL_HSTRLEN = GRID__COLL_CMD__HSTRLEN,
  COLL_HGETALL = GRID__COLL_CMD__HGETALL,
  COLL_HKEYS = GRID__COLL_CMD__HKEYS,
  COLL_HVALS = GRID__COLL_CMD__HVALS,
  COLL_HINCRBY = GRID__COLL_CMD__HINCRBY,
  COLL_HINCRBYFLOAT = GRID__COLL_CMD__HINCRBYFLOAT,
  COLL_HRANDFIELD = GRID__COLL_CMD__HRANDFIELD,
  COLL_HSCAN = GRID__COLL_CMD__HSCAN,
  COLL_SADD = GRID__COLL_CMD__SADD,
  COLL_SREM = GRID__COLL_CMD__SREM,
  COLL_SMEMBERS = GRID__COLL_CMD__SMEMBERS,
  COLL_SISMEMBER = GRID__COLL_CMD__SISMEMBER,
  COLL_SMISMEMBER = GRID__COLL_CMD__SMISMEMBER,
  COLL_SCARD = GRID__COLL_CMD__SCARD,
  COLL_SPOP = GRID__COLL_CMD__SPOP,
  COLL_SRANDMEMBER = GRID__COLL_CMD__SRANDMEMBER,
  COLL_SSCAN = GRID__COLL_CMD__SSCAN,
  COLL_SINTER = GRID__COLL_CMD__SINTER,
  COLL_SUNION = GRID__COLL_CMD__SUNION,
  COLL_SDIFF = GRID__COLL_CMD__SDIFF,
  COLL_SINTERSTORE = GRID__COLL_CMD__SINTERSTORE,
  COLL_SUNIONSTORE = GRID__COLL_CMD__SUNIONSTORE,
  COLL_SDIFFSTORE = GRID__COLL_CMD__SDIFFSTORE,
  COLL_SMOVE = GRID__COLL_CMD__SMOVE,
  COLL_LPUSH = GRID__COLL_CMD__LPUSH,
  COLL_RPUSH = GRID__COLL_CMD__RPUSH,
  COLL_LPUSHX = GRID__COLL_CMD__LPUSHX,
  COLL_RPUSHX = GRID__COLL_CMD__RPUSHX,
  COLL_LPOP = GRID__COLL_CMD__LPOP,
  COLL_RPOP = GRID__COLL_CMD__RPOP,
  COLL_LRANGE = GRID__COLL_CMD__LRANGE,
  COLL_LLEN = GRID__COLL_CMD__LLEN,
  COLL_LINDEX = GRID__COLL_CMD__LINDEX,
  COLL_LSET = GRID__COLL_CMD__LSET,
  COLL_LREM = GRID__COLL_CMD__LREM,
  COLL_LTRIM = GRID__COLL_CMD__LTRIM,
  COLL_LINSERT = GRID__COLL_CMD__LINSERT,
  COLL_LPOS = GRID__COLL_CMD__LPOS,
  COLL_LMOVE = GRID__COLL_CMD__LMOVE,
  COLL_INCRBYFLOAT = GRID__COLL_CMD__INCRBYFLOAT,
  COLL_SETRANGE = GRID__COLL_CMD__SETRANGE,
  COLL_GETBIT = GRID__COLL_CMD__GETBIT,
  COLL_SETBIT = GRID__COLL_CMD__SETBIT,
  COLL_BITCOUNT = GRID__COLL_CMD__BITCOUNT,
  COLL_GETEX = GRID__COLL_CMD__GETEX,
  COLL_RENAME = GRID__COLL_CMD__RENAME,
  COLL_RENAMENX = GRID__COLL_CMD__RENAMENX,
  COLL_COPY = GRID__COLL_CMD__COPY,
  COLL_OBJECT_ENCODING = GRID__COLL_CMD__OBJECT_ENCODING,
} coll_cmd_t;

/* The value type a command works on (grid_value_type_t); -1 for none. A
 * string command's collection is one item, the string (none: absent). */
int coll_cmd_type(int cmd);
/* Whether a command may change the entry. */
int coll_cmd_writes(int cmd);

/* Flags of a request. */
enum {
  COLL_F_COUNT = 1,      /* LPOP / RPOP / SPOP / SRANDMEMBER / HRANDFIELD:
                            a count was given (n1) */
  COLL_F_WITHVALUES = 2, /* HRANDFIELD */
  COLL_F_AFTER = 4,      /* LINSERT AFTER (else BEFORE) */
  COLL_F_RANK = 8,       /* LPOS: n1 is RANK */
  COLL_F_MAXLEN = 16,    /* LPOS: n3 is MAXLEN */
  COLL_F_MATCH = 32,     /* HSCAN / SSCAN: args[0] is the pattern */
  COLL_F_FROM_RIGHT = 64, /* LMOVE: pop the source's tail (else head) */
  COLL_F_TO_RIGHT = 128,  /* LMOVE: push at the destination's tail */
  COLL_F_RANGE = 256,     /* BITCOUNT: n1 .. n2 is the range */
  COLL_F_BITS = 512,      /* BITCOUNT: ... in bits (else bytes) */
  COLL_F_PERSIST = 1024,  /* GETEX: the expiry removed */
  COLL_F_EXPIRE = 2048,   /* GETEX: n1 is the new expiry (wall clock, ms) */
  COLL_F_REPLACE = 4096,  /* COPY: the destination may exist */
  COLL_F_RELATIVE = 8192, /* GETEX: n1 is a time from now (ms) */
};

typedef struct coll_req {
  int cmd;
  const coll_item_t *args;   /* the command's arguments after the key */
  size_t nargs;
  int64_t n1, n2, n3;        /* counts, indexes, ranks (as each command says) */
  int flags;
  uint64_t (*rand)(void *ctx); /* SPOP, SRANDMEMBER, HRANDFIELD */
  void *rand_ctx;
  /* HSCAN, SSCAN: whether a field or member is wanted (NULL: all). A scan
   * answers the whole collection at once (cursor 0), as Redis does for a
   * small one. */
  int (*match)(void *ctx, const void *p, size_t len);
  void *match_ctx;
  uint64_t bytes_max;        /* SETRANGE, SETBIT: the string's size at most
                                (value_bytes_max), refused before it is
                                made; 0: Redis's 512 MB */
} coll_req_t;

/* What a command answers. nils[i] marks an item that is a nil (HMGET). */
typedef struct coll_out {
  int status;                /* 0, or a GRID_E* code with words in err */
  const char *err;           /* Redis's words (without "ERR "), static */
  int write;                 /* COLL_KEEP / COLL_PUT / COLL_DELETE */
  int write2;                /* ... of the second key (SMOVE, LMOVE) */
  int64_t expire_at;         /* COLL_EXPIRE: the new expiry (0: none) */
  int64_t number;            /* the integer answer */
  int has_number;
  int has_value;             /* a single bulk answer (value) ... */
  coll_item_t value;         /* ... or nil when has_value and !value.p */
  int nil_value;
  coll_vec_t items;          /* an array answer */
  unsigned char *nils;       /* HMGET, LPOS: per item */
  int array;                 /* the answer is items (even if empty) */
  int nil_array;             /* the answer is a null array (LPOP of a missing
                                key with a count) */
  char num[48];              /* HINCRBYFLOAT's, LPOS's text */
} coll_out_t;

enum { COLL_KEEP = 0, COLL_PUT = 1, COLL_DELETE = 2, COLL_EXPIRE = 3 };

/* Runs req against c (the entry's items; exists: the key was there).
 * c is changed in place when the command writes (out->write says what
 * becomes of the entry). */
void coll_run(const coll_req_t *req, coll_vec_t *c, int exists, coll_out_t *out);
void coll_out_free(coll_out_t *out);

/* The encoding Redis 7.0 would keep a value of this type in (its default
 * thresholds): what OBJECT ENCODING answers. */
const char *coll_encoding(int type, const void *value, size_t len);

/* Whether a command names several keys (coll_run_keys runs it). */
int coll_cmd_keys(int cmd);
/* A command of several keys: v[i] (exists[i]) the i-th key's items, the
 * same vector where two keys are one. SINTER, SUNION, SDIFF: every key a
 * source; their STORE forms: v[0] the destination (made anew: write),
 * sources after it; SMOVE, LMOVE: v[0] the source (write), v[1] the
 * destination (write2). */
void coll_run_keys(const coll_req_t *req, coll_vec_t *const *v, const int *exists, size_t n,
                   coll_out_t *out);

/* Whether bytes are a 64-bit decimal integer as Redis reads one. */
int coll_parse_i64(const void *p, size_t len, int64_t *out);

#endif
