#include "resp.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <errno.h>

#include "auth.h"
#include "clock.h"
#include "coll.h"
#include "grid_types.h"
#include "log.h"
#include "conn.h"
#include "loop.h"
#include "node.h"
#include "glob.h"
#include "notify.h"
#include "op.h"
#include "ops.h"
#include "pubsub.h"
#include "resp_parse.h"
#include "route.h"
#include "sink.h"
#include "store.h"

#define RESP_ERROR_LINE_BYTES_MAX 512 /* an error line of our own words */
#define RESP_UNAUTH_ARGS_MAX 10       /* a command's arguments before AUTH, as Redis */
#define RESP_QUOTED_BYTES_MAX 128     /* a client's bytes quoted in an error, as Redis */
#define RESP_MSG_KEEP_BYTES 65536     /* a subscriber's message buffer kept past this: freed */

/* ---- per connection ------------------------------------------------------- */

/* One command's reply; replies leave in command order. */
typedef struct resp_slot {
  struct resp_slot *next;
  int done;                  /* complete (or failed): may be written */
  int failed;                /* memory ran out while it was built: it is
                                never written, and the connection closes
                                after the replies before it */
  int push;                  /* a pub/sub message, not a command's reply:
                                not counted in resp_pipeline_max */
  int resp3;                 /* built for RESP3 (HELLO 3): nulls, maps,
                                sets and pushes of their own */
  char *buf;
  size_t len, cap;
} resp_slot_t;

typedef struct resp_job resp_job_t;
typedef struct resp_tx resp_tx_t;
typedef struct resp_exec resp_exec_t;

/* A key WATCH remembers: its version then (0: absent; ~0: not known, so
 * EXEC aborts), in the database it was watched in. */
typedef struct resp_watch {
  uint64_t version;
  char cache[STORE_CACHE_NAME_MAX + 1];
  size_t len;
  char key[];
} resp_watch_t;

#define RESP_WATCH_UNKNOWN UINT64_MAX

struct resp_conn {
  conn_t *conn;
  pubsub_client_t ps;        /* SUBSCRIBE, PSUBSCRIBE: while it holds any,
                                only those commands run (Redis's RESP2
                                subscribed mode) */
  resp_slot_t msg;           /* a pub/sub message being built */
  size_t push_bytes;         /* messages queued behind replies not written
                                yet (they count against output_bytes_max) */
  int msg_flush_deferred;    /* msg_flush_task waits for the loop (holds a
                                reference): messages leave together */
  loop_task_t msg_flush_task;
  resp_slot_t *head, *tail;  /* replies not written yet, oldest first */
  resp_pipeline_t pipe;      /* ... how many: resp_pipeline_max at most */
  resp_slot_t direct;        /* a single node answers every command at once:
                                its reply is built here and written as is */
  resp_job_t *job;           /* ... and its one command in flight here */
  int cluster;               /* answers may come later: slots keep order */
  char cache[STORE_CACHE_NAME_MAX + 1];
  char name[128];            /* CLIENT SETNAME */
  int resp3;                 /* HELLO 3 switched the connection to RESP3 */
  int ending;                /* QUIT, or a command that found no memory for
                                its slot: nothing more is parsed, and the
                                connection closes once the replies before
                                are written */
  int broken;                /* a reply could not be built whole: nothing
                                after it is written, and the connection
                                closes once what was written is out */
  int parsing;               /* resp_input is running: a reply completing
                                inside it must not start it again */
  int resume_posted;         /* resume_task is queued (holds a reference) */
  loop_task_t resume_task;    /* parses again once a full pipeline drained */
  resp_parser_t parser;      /* the command being received */
  resp_tx_t *tx;             /* MULTI: the commands queued */
  resp_exec_t *collect;      /* EXEC running the queued commands: their
                                requests are gathered into one */
  resp_watch_t **watch;      /* WATCH's keys, until EXEC, DISCARD,
                                UNWATCH or RESET */
  size_t nwatch, watch_cap;
  size_t running;            /* a cluster's commands sent, not answered:
                                a request of a later one must not overtake
                                them (route_from_t.behind) */
  int state_pending;         /* commands in flight that later ones depend
                                on (WATCH's reads: EXEC needs them;
                                SELECT making its database): nothing
                                more is parsed until they are answered */
  auth_principal_t *who;     /* auth = on: the user logged in (AUTH,
                                HELLO AUTH, a TLS client certificate);
                                NULL: not yet */
  int cert_tried;            /* the certificate's user was looked for */
};

static resp_conn_t *resp_of(const conn_t *c) { return c->fe; }

resp_conn_t *resp_conn_new(int cluster) {
  resp_conn_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  strcpy(r->cache, "default");
  r->cluster = cluster;
  resp_parser_init(&r->parser);
  return r;
}

static void resp_tx_free(resp_tx_t *tx);
static void resp_unwatch(resp_conn_t *r);

void resp_conn_free(resp_conn_t *r) {
  if (!r) return;
  free(r->who);
  resp_tx_free(r->tx);
  resp_unwatch(r);
  free(r->watch);
  resp_parser_close(&r->parser);
  free(r->direct.buf);
  free(r->msg.buf);
  free(r->job);
  while (r->head) {
    resp_slot_t *s = r->head;
    r->head = s->next;
    free(s->buf);
    free(s);
  }
  free(r);
}

/* ---- reply building --------------------------------------------------------- */

/* Room for n more bytes. When memory runs out the slot is marked failed
 * and every later append to it is a no-op: a reply is written whole or not
 * at all (a short one would make the client read the next reply's bytes as
 * the end of this one). */
static int slot_reserve(resp_slot_t *s, size_t n) {
  if (s->failed) return -1;
  if (s->cap - s->len >= n) return 0;
  size_t cap = s->cap ? s->cap * 2 : 64;
  while (cap - s->len < n) cap *= 2;
  char *b = realloc(s->buf, cap);
  if (!b) {
    s->failed = 1;
    return -1;
  }
  s->buf = b;
  s->cap = cap;
  return 0;
}

static void slot_put(resp_slot_t *s, const void *p, size_t n) {
  if (n == 0) return; /* an empty value may come as NULL (protobuf-c) */
  if (slot_reserve(s, n) != 0) return;
  memcpy(s->buf + s->len, p, n);
  s->len += n;
}

static void slot_printf(resp_slot_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slot_printf(resp_slot_t *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) s->failed = 1;
  if (n < 0 || slot_reserve(s, (size_t)n + 1) != 0) return;
  va_start(ap, fmt);
  vsnprintf(s->buf + s->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  s->len += (size_t)n;
}

/* "<type><number>\r\n", without printf (the hot path). */
static void slot_num_line(resp_slot_t *s, char type, int64_t v) {
  char buf[24];
  char *p = buf + sizeof buf;
  *--p = '\n';
  *--p = '\r';
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  *--p = type;
  slot_put(s, p, (size_t)(buf + sizeof buf - p));
}

static void slot_bulk(resp_slot_t *s, const void *p, size_t n) {
  slot_num_line(s, '$', (int64_t)n);
  slot_put(s, p, n);
  slot_put(s, "\r\n", 2);
}

static void slot_nil(resp_slot_t *s) {
  if (s->resp3) slot_put(s, "_\r\n", 3);
  else slot_put(s, "$-1\r\n", 5);
}

/* A null array (RESP3: the one null). */
static void slot_null_array(resp_slot_t *s) {
  if (s->resp3) slot_put(s, "_\r\n", 3);
  else slot_put(s, "*-1\r\n", 5);
}

/* An aggregate's header: a map of n pairs ('%'), a set ('~') or a push
 * ('>') in RESP3; in RESP2 each is an array (a map's of 2n items). */
static void slot_agg(resp_slot_t *s, char kind, int64_t n) {
  if (!s->resp3) {
    char line[32];
    int len = snprintf(line, sizeof line, "*%lld\r\n", (long long)(kind == '%' ? 2 * n : n));
    slot_put(s, line, (size_t)len);
    return;
  }
  char line[32];
  int len = snprintf(line, sizeof line, "%c%lld\r\n", kind, (long long)n);
  slot_put(s, line, (size_t)len);
}
static void slot_ok(resp_slot_t *s) { slot_put(s, "+OK\r\n", 5); }
static void slot_int(resp_slot_t *s, int64_t v) { slot_num_line(s, ':', v); }

/* Another slot's whole reply (an MGET key's) appended to s. */
static void slot_put_slot(resp_slot_t *s, const resp_slot_t *part) {
  if (part->failed) s->failed = 1;
  else slot_put(s, part->buf, part->len);
}

/* A reply that cannot be built: the connection closes after the ones
 * before it. */
static void slot_fail(resp_slot_t *s) {
  s->failed = 1;
  s->done = 1;
}

/* An error line's text may quote the client's own bytes: a CR or LF in it
 * would end the line early and let the rest read as a reply of its own, so
 * both become spaces (as Redis does). */
static void resp_error_words(char *text) {
  for (char *p = text; *p; p++)
    if (*p == '\r' || *p == '\n') *p = ' ';
}

/* The whole reply is the error line "-<text>\r\n". */
static void slot_error(resp_slot_t *s, const char *text) {
  char line[RESP_ERROR_LINE_BYTES_MAX];
  snprintf(line, sizeof line, "%s", text);
  resp_error_words(line);
  slot_printf(s, "-%s\r\n", line);
  s->done = 1;
}

/* A grid status as the error Redis gives in the same case. */
static void slot_status_error(resp_slot_t *s, int status, const char *message) {
  switch (status) {
    case GRID_ENOTNUM: slot_printf(s, "-ERR value is not an integer or out of range\r\n"); break;
    case GRID_EOVERFLOW: slot_printf(s, "-ERR increment or decrement would overflow\r\n"); break;
    case GRID_EWRONGTYPE:
      slot_printf(s, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
      break;
    case GRID_EMEMLIMIT:
      slot_printf(s, "-OOM command not allowed when used memory > 'maxmemory'.\r\n");
      break;
    case GRID_ENOPERM:
      slot_printf(s, "-NOPERM this user has no permissions to access one of the keys used as "
                  "arguments\r\n");
      break;
    case GRID_EAUTH:
      slot_printf(s, "-NOAUTH Authentication required.\r\n");
      break;
    default: {
      char words[300];
      snprintf(words, sizeof words, "%s", message && *message ? message : grid_strerror(status));
      resp_error_words(words);
      slot_printf(s, "-ERR %s\r\n", words);
    }
  }
}

/* ---- writing replies ---------------------------------------------------------- */

/* Writes one complete reply, unless one before it could not be: replies
 * match their commands by position only. */
static void resp_write_reply(conn_t *c, const resp_slot_t *s) {
  resp_conn_t *r = resp_of(c);
  if (r->broken) return;
  if (s->len && s->buf[0] == '-' && !s->push)
    atomic_fetch_add_explicit(&c->lp->node->resp_errors, 1, memory_order_relaxed);
  if (s->failed || (s->len && conn_out(c, s->buf, s->len) != 0)) r->broken = 1;
}

/* Writes the replies that are complete and have no unfinished one before
 * them. */
static void resp_flush_slots(conn_t *c) {
  resp_conn_t *r = resp_of(c);
  while (r->head && r->head->done) {
    resp_slot_t *s = r->head;
    r->head = s->next;
    if (!r->head) r->tail = NULL;
    if (!s->push) {
      GRID_ASSERT(r->pipe.waiting > 0);
      r->pipe.waiting--;
    } else {
      r->push_bytes -= s->len;
    }
    resp_write_reply(c, s);
    free(s->buf);
    free(s);
  }
  GRID_ASSERT(r->head || r->pipe.waiting == 0);
  if (r->broken || (!r->head && r->ending)) conn_close_when_written(c);
}

/* A single node's reply, written as soon as its command returns. */
static void resp_write_direct(conn_t *c) {
  resp_conn_t *r = resp_of(c);
  GRID_ASSERT(r->direct.done); /* a single node answers every command at once */
  resp_write_reply(c, &r->direct);
  r->direct.len = 0;
  if (r->broken || r->ending) conn_close_when_written(c);
}

/* The slot of the command about to run, or NULL when there is no memory
 * for one (the caller ends the connection after the replies before). */
static resp_slot_t *resp_slot_new(resp_conn_t *r) {
  if (!r->cluster) {
    r->direct.done = r->direct.failed = 0;
    r->direct.len = 0;
    r->direct.resp3 = r->resp3;
    return &r->direct; /* written when the command returns */
  }
  resp_slot_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->resp3 = r->resp3;
  if (r->tail) r->tail->next = s;
  else r->head = s;
  r->tail = s;
  r->pipe.waiting++;
  return s;
}

/* ---- the command table ------------------------------------------------------ */

typedef struct resp_cmd resp_cmd_t;

/* Runs a command whose arity was checked. Its reply goes into s, now or
 * (a request routed in a cluster) when its requests are answered; s->done
 * says which. */
typedef void (*resp_run_fn)(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                            resp_slot_t *s);
/* One request's reply (the i-th of the command's), into the command's. */
typedef void (*resp_reply_fn)(resp_job_t *job, size_t i, const Grid__Reply *rp);
/* The command's reply once all its requests succeeded; NULL when the
 * reply_fn wrote it already. */
typedef void (*resp_done_fn)(resp_job_t *job);

/* Where a command's keys are among its arguments (COMMAND shows it; one
 * request per key). */
enum {
  RESP_KEYS_NONE = 0,
  RESP_KEYS_ONE,   /* argv[1] */
  RESP_KEYS_ALL,   /* argv[1..] */
  RESP_KEYS_PAIRS, /* argv[1], argv[3], ...: each followed by its value */
};

/* A command is one row: its function parses its options and sends its
 * requests; reply and done turn the replies into Redis's. */
struct resp_cmd {
  const char *name;    /* lower case, as COMMAND lists it */
  int arity;           /* as Redis: n exact, -n at least n */
  int args_max;        /* arguments at most, command included; 0: no bound */
  Grid__Op op;         /* the request it becomes (what it is: op.h's flags);
                          OP_NONE: answered here */
  int keys;            /* RESP_KEYS_* */
  resp_run_fn run;
  resp_reply_fn reply; /* for commands that send requests */
  resp_done_fn done;
  int sub;             /* COLL: the collection command (coll.h); the
                          EXPIRE family: RESP_EXPIRE_* */
};

enum { RESP_EXPIRE_SECONDS = 1, RESP_EXPIRE_AT = 2 };

/* ---- commands that become requests ------------------------------------------ */

/* A command in flight: one request per key, merged when all are in. */
struct resp_job {
  int embedded;             /* the connection's own (a single node's) */
  conn_t *c;
  resp_slot_t *slot;
  const resp_cmd_t *cmd;
  int flag;                 /* SET: the GET option */
  int64_t range[2];         /* GETRANGE: start and end */
  int pending;              /* requests not answered, plus one while sending */
  size_t n;                 /* requests */
  int64_t count;            /* DEL / EXISTS / DBSIZE */
  int status;               /* first error */
  char message[200];
  uint64_t started_ns;      /* for the metrics (0: a step of EXEC's, counted
                               as EXEC) */
  resp_slot_t *parts;       /* MGET: each key's reply, in order */
  resp_exec_t *in_exec;     /* a queued command run by EXEC: its requests
                               are steps of EXEC's, its reply a part */
  size_t queued;            /* ... its place in the transaction */
  resp_exec_t *exec;        /* EXEC's own job: what it runs */
  size_t base;              /* WATCH: its first key's place in r->watch */
  char db[STORE_CACHE_NAME_MAX + 1]; /* SELECT: the database's cache */
  struct resp_walk *walk;   /* SCAN, KEYS, RANDOMKEY, FLUSHDB/ALL: its state */
  int holds_state;          /* counted in state_pending until answered */
};

typedef struct resp_sub {
  sink_t sink;              /* in a cluster, where route answers */
  resp_job_t *job;
  size_t index;
  int heap;                 /* freed by resp_sub_fn */
} resp_sub_t;

static void resp_input_resume(conn_t *c);

static void resp_job_error(resp_job_t *job, int status, const char *message) {
  if (job->status) return;
  job->status = status;
  snprintf(job->message, sizeof job->message, "%s", message ? message : "");
}

static void resp_reply_error(resp_job_t *job, const Grid__Reply *rp) {
  resp_job_error(job, rp->status, rp->message);
}

static void resp_exec_free(resp_exec_t *x);
static void resp_walk_free(struct resp_walk *w);
static void resp_exec_job_started(resp_exec_t *x, resp_job_t *job);
static int resp_exec_add_step(resp_exec_t *x, resp_job_t *job, size_t index,
                              const Grid__Request *rq);
static void resp_exec_job_done(resp_exec_t *x, resp_job_t *job);
static void cmd_watch(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s);
static void cmd_msetnx(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s);
static void cmd_walk(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s);

static void resp_job_finish(resp_job_t *job) {
  resp_slot_t *s = job->slot;
  if (job->started_ns)
    metrics_record(&job->c->lp->metrics, (unsigned)job->cmd->op, job->status,
                   clock_mono_ns() - job->started_ns);
  if (job->status) slot_status_error(s, job->status, job->message);
  else if (job->cmd->done) job->cmd->done(job);
  if (job->parts) {
    for (size_t i = 0; i < job->n; i++) free(job->parts[i].buf);
    free(job->parts);
  }
  s->done = 1;
  if (job->exec) {
    resp_exec_free(job->exec);
    job->exec = NULL;
  }
  if (job->walk) {
    resp_walk_free(job->walk);
    job->walk = NULL;
  }
  if (job->in_exec) { /* its reply is a part of EXEC's */
    resp_exec_job_done(job->in_exec, job);
    free(job);
    return;
  }
  if (job->holds_state) resp_of(job->c)->state_pending--;
  if (!job->embedded) resp_of(job->c)->running--;
  if (job->embedded) return; /* resp_dispatch writes the reply */
  conn_t *c = job->c;
  free(job);
  resp_flush_slots(c);
  resp_input_resume(c);
  conn_flush(c);
  conn_unref(c);
}

/* Every request was sent: the job's own hold on itself ends. */
static void resp_job_sent(resp_job_t *job) {
  if (--job->pending == 0) resp_job_finish(job);
}

/* One request's reply, turned into the command's. */
static void resp_sub_fn(loop_t *lp, sink_t *s, const Grid__Reply *rp) {
  (void)lp;
  resp_sub_t *sub = (resp_sub_t *)s;
  resp_job_t *job = sub->job;
  size_t i = sub->index;
  if (sub->heap) free(sub);
  job->cmd->reply(job, i, rp);
  if (--job->pending == 0) resp_job_finish(job);
}

/* Runs one request of a job: here on a single node, routed in a cluster. */
static void resp_job_submit(resp_job_t *job, size_t index, Grid__Request *rq) {
  conn_t *c = job->c;
  loop_t *lp = c->lp;
  node_t *n = lp->node;
  job->pending++;
  if (!rq->cache || !*rq->cache) rq->cache = resp_of(c)->cache;
  if (resp_of(c)->who) {
    /* Every request is checked where it goes (the command was, on the
     * database it was sent on; a step of EXEC runs on the database a SELECT
     * queued before it chose). */
    char why[200];
    int rc = auth_allow(n->auth, resp_of(c)->who, rq, NULL, why, sizeof why);
    if (rc != 0) {
      LOG_W("auth", "\"request refused\" user=%s peer=%s op=%s reason=\"%s\"",
            resp_of(c)->who->name, c->peer, op_name(rq->op), why);
      job->pending--;
      resp_job_error(job, rc, why);
      return;
    }
  }
  if (job->in_exec) { /* a step of EXEC's request, sent with the others */
    if (resp_exec_add_step(job->in_exec, job, index, rq) != 0) {
      job->pending--;
      resp_job_error(job, GRID_ENOMEM, NULL);
    }
    return;
  }
  if (n->cluster) {
    resp_sub_t *sub = malloc(sizeof *sub);
    if (!sub) {
      job->pending--;
      resp_job_error(job, GRID_ENOMEM, NULL);
      return;
    }
    *sub = (resp_sub_t){.job = job, .index = index, .heap = 1};
    sink_init(&sub->sink, resp_sub_fn, lp->index);
    /* This job counts itself once: anything more is an earlier command's. */
    route_from_t from = {.addr = c->peer, .behind = resp_of(c)->running > 1};
    route_run(lp, rq, &from, &sub->sink);
    return;
  }
  /* Here and now: the loop's arena, reset after each command. */
  resp_sub_t sub = {.job = job, .index = index};
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(n, &lp->view, rq, &rp, &lp->arena);
  resp_sub_fn(lp, &sub.sink, &rp);
}

/* A job of n requests answering into s; NULL when out of memory (s then
 * fails: the connection closes after the replies before it). */
static resp_job_t *resp_job_start(conn_t *c, const resp_cmd_t *cmd, resp_slot_t *s, size_t n) {
  resp_conn_t *r = resp_of(c);
  resp_job_t *job;
  if (r->collect) { /* EXEC runs a queued command: a job of its own */
    if (!(job = calloc(1, sizeof *job))) {
      slot_fail(s);
      return NULL;
    }
    job->in_exec = r->collect;
    resp_exec_job_started(r->collect, job);
  } else if (!r->cluster) {
    if (!r->job && !(r->job = malloc(sizeof *r->job))) {
      slot_fail(s);
      return NULL;
    }
    job = r->job;
    memset(job, 0, sizeof *job);
    job->embedded = 1;
  } else if (!(job = calloc(1, sizeof *job))) {
    slot_fail(s);
    return NULL;
  }
  job->c = c;
  job->slot = s;
  job->cmd = cmd;
  job->n = n;
  job->started_ns = job->in_exec ? 0 : clock_mono_ns();
  job->pending = 1;
  if (!job->embedded && !job->in_exec) {
    conn_ref(c);
    r->running++;
  }
  return job;
}

/* Later commands depend on this one's outcome: in a cluster (which answers
 * later) nothing more is parsed until it is answered. */
static void resp_job_hold_state(resp_job_t *job) {
  if (job->embedded || job->in_exec) return;
  job->holds_state = 1;
  resp_of(job->c)->state_pending++;
}

/* ---- argument helpers ------------------------------------------------------- */

static int arg_is(const resp_arg_t *a, const char *word) {
  return a->len == strlen(word) && strncasecmp(a->p, word, a->len) == 0;
}

static int arg_i64(const resp_arg_t *a, int64_t *out) { return resp_parse_i64(a->p, a->len, out); }

/* How much of an argument an error quotes: Redis shows 128 bytes. */
static int arg_quoted_len(const resp_arg_t *a) {
  return (int)(a->len > RESP_QUOTED_BYTES_MAX ? RESP_QUOTED_BYTES_MAX : a->len);
}

static void key_request(Grid__Request *rq, Grid__Op op, const resp_arg_t *key) {
  grid__request__init(rq);
  rq->op = op;
  rq->key.data = (uint8_t *)key->p;
  rq->key.len = key->len;
}

static void value_request(Grid__Request *rq, Grid__Op op, const resp_arg_t *key,
                          const resp_arg_t *value) {
  key_request(rq, op, key);
  rq->value.data = (uint8_t *)value->p;
  rq->value.len = value->len;
}

/* The requests a command of argc arguments sends. */
static size_t resp_requests_of(const resp_cmd_t *cmd, int argc) {
  switch (cmd->keys) {
    case RESP_KEYS_ALL: return (size_t)argc - 1;
    case RESP_KEYS_PAIRS: return (size_t)(argc - 1) / 2;
    default: return 1;
  }
}

/* Sends one request with one request: key_request(cmd->op) plus what the
 * caller set. */
static void resp_send_one(conn_t *c, const resp_cmd_t *cmd, resp_slot_t *s, Grid__Request *rq,
                          int flag) {
  resp_job_t *job = resp_job_start(c, cmd, s, 1);
  if (!job) return;
  job->flag = flag;
  resp_job_submit(job, 0, rq);
  resp_job_sent(job);
}

/* Sends cmd->op for each key (argv[1 + i]) until one fails to be sent. */
static void resp_send_keys(resp_job_t *job, resp_arg_t *argv) {
  for (size_t i = 0; i < job->n && !job->status; i++) {
    Grid__Request rq;
    key_request(&rq, job->cmd->op, &argv[1 + i]);
    resp_job_submit(job, i, &rq);
  }
  resp_job_sent(job);
}

/* ---- replies of requests ------------------------------------------------------ */

/* Where the i-th reply goes: its own part (MGET) or the command's slot. */
static resp_slot_t *resp_job_out(resp_job_t *job, size_t i) {
  return job->parts ? &job->parts[i] : job->slot;
}

static void reply_value(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  resp_slot_t *s = resp_job_out(job, i);
  if (rp->status == 0) slot_bulk(s, rp->value.data, rp->value.len);
  /* MGET answers nil for a key of another type, as Redis */
  else if (rp->status == GRID_ENOTFOUND || (job->parts && rp->status == GRID_EWRONGTYPE)) slot_nil(s);
  else resp_reply_error(job, rp);
}

/* GETSET, GETDEL, SET ... GET: the value before, if there was one. */
static void reply_old_value(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->found) slot_bulk(job->slot, rp->value.data, rp->value.len);
  else slot_nil(job->slot);
}

static void reply_set(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  int st = rp->status;
  int unmet = st == GRID_EEXIST || st == GRID_ENOTFOUND; /* NX / XX not met */
  if (job->flag && (st == 0 || unmet)) reply_old_value(job, i, rp);
  else if (!job->flag && st == 0) slot_ok(job->slot);
  else if (!job->flag && unmet) slot_nil(job->slot);
  else resp_reply_error(job, rp);
}

static void reply_getset(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  if (rp->status == 0 || rp->status == GRID_ENOTFOUND) reply_old_value(job, i, rp);
  else resp_reply_error(job, rp);
}

static void reply_setnx(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) slot_int(job->slot, 1);
  else if (rp->status == GRID_EEXIST) slot_int(job->slot, 0);
  else resp_reply_error(job, rp);
}

static void reply_ok(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) slot_ok(job->slot);
  else resp_reply_error(job, rp);
}

static void reply_number(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) slot_int(job->slot, rp->number);
  else resp_reply_error(job, rp);
}

static void reply_strlen(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) slot_int(job->slot, (int64_t)rp->value.len);
  else if (rp->status == GRID_ENOTFOUND) slot_int(job->slot, 0);
  else resp_reply_error(job, rp);
}

/* GETRANGE / SUBSTR: the bytes from start to end of the value, both
 * counted from the end when negative, as Redis 7's getrangeCommand. */
static void reply_getrange(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == GRID_ENOTFOUND) {
    slot_bulk(job->slot, "", 0);
    return;
  }
  if (rp->status != 0) {
    resp_reply_error(job, rp);
    return;
  }
  int64_t len = (int64_t)rp->value.len, start = job->range[0], end = job->range[1];
  if (start < 0 && end < 0 && start > end) {
    slot_bulk(job->slot, "", 0);
    return;
  }
  if (start < 0) start = len + start;
  if (end < 0) end = len + end;
  if (start < 0) start = 0;
  if (end < 0) end = 0;
  if (end >= len) end = len - 1;
  if (start > end || len == 0) slot_bulk(job->slot, "", 0);
  else slot_bulk(job->slot, rp->value.data + start, (size_t)(end - start + 1));
}

/* TYPE: every value grid keeps over RESP is a string. */
static void reply_type(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  static const char *const names[] = {"string", "hash", "list", "set"};
  if (rp->status == 0)
    slot_printf(job->slot, "+%s\r\n", rp->value_type <= GRID_TYPE_MAX ? names[rp->value_type]
                                                                      : "unknown");
  else if (rp->status == GRID_ENOTFOUND) slot_put(job->slot, "+none\r\n", 7);
  else resp_reply_error(job, rp);
}

/* TTL and PTTL: -2 no key, -1 no expiry, else the time left. */
static void reply_ttl_in(resp_job_t *job, const Grid__Reply *rp, int64_t unit_ms) {
  if (rp->status == GRID_ENOTFOUND) slot_int(job->slot, -2);
  else if (rp->status != 0) resp_reply_error(job, rp);
  else if (rp->number < 0) slot_int(job->slot, -1);
  /* Rounded to the nearest unit without (n + unit/2) overflowing: an
   * expiry can be INT64_MAX (PEXPIREAT's largest time). */
  else slot_int(job->slot, rp->number / unit_ms + (rp->number % unit_ms >= (unit_ms + 1) / 2 &&
                                                   unit_ms > 1));
}

static void reply_ttl(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  reply_ttl_in(job, rp, 1000);
}

static void reply_pttl(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  reply_ttl_in(job, rp, 1);
}

/* DEL, EXISTS: the keys found. */
static void reply_count_found(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) job->count++;
  else if (rp->status != GRID_ENOTFOUND) resp_reply_error(job, rp);
}

static void reply_count_sum(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == 0) job->count += rp->number;
  else resp_reply_error(job, rp);
}

static void reply_errors_only(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status != 0) resp_reply_error(job, rp);
}

static void done_count(resp_job_t *job) { slot_int(job->slot, job->count); }
static void done_ok(resp_job_t *job) { slot_ok(job->slot); }

static void done_mget(resp_job_t *job) {
  slot_num_line(job->slot, '*', (int64_t)job->n);
  for (size_t i = 0; i < job->n; i++) slot_put_slot(job->slot, &job->parts[i]);
}

/* ---- keyed commands ------------------------------------------------------------ */

/* GET, GETDEL, STRLEN, TTL, PTTL, DEL, EXISTS: cmd->op on each key. */
static void cmd_keys(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  resp_job_t *job = resp_job_start(c, cmd, s, resp_requests_of(cmd, argc));
  if (job) resp_send_keys(job, argv);
}

static void cmd_getrange(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                         resp_slot_t *s) {
  (void)argc;
  int64_t start, end;
  if (arg_i64(&argv[2], &start) != 0 || arg_i64(&argv[3], &end) != 0) {
    slot_error(s, "ERR value is not an integer or out of range");
    return;
  }
  resp_job_t *job = resp_job_start(c, cmd, s, 1);
  if (!job) return;
  job->range[0] = start;
  job->range[1] = end;
  resp_send_keys(job, argv);
}

static void cmd_mget(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  resp_job_t *job = resp_job_start(c, cmd, s, resp_requests_of(cmd, argc));
  if (!job) return;
  job->parts = calloc(job->n, sizeof *job->parts);
  for (size_t i = 0; job->parts && i < job->n; i++) job->parts[i].resp3 = s->resp3;
  if (!job->parts) resp_job_error(job, GRID_ENOMEM, NULL);
  resp_send_keys(job, argv);
}

/* GETSET, APPEND: cmd->op with the key and its value. */
static void cmd_key_value(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                          resp_slot_t *s) {
  (void)argc;
  Grid__Request rq;
  value_request(&rq, cmd->op, &argv[1], &argv[2]);
  resp_send_one(c, cmd, s, &rq, 0);
}

static void cmd_setnx(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  (void)argc;
  Grid__Request rq;
  value_request(&rq, cmd->op, &argv[1], &argv[2]);
  rq.cond = STORE_IF_ABSENT;
  resp_send_one(c, cmd, s, &rq, 0);
}

typedef struct resp_set_options {
  int nx, xx, get, keep;
  int ex;          /* the expiry given: 1 EX, 2 PX, 3 EXAT, 4 PXAT; 0 none */
  int64_t ttl_ms;
} resp_set_options_t;

/* SET's EX/PX/EXAT/PXAT value as a TTL; NULL, or the error's words. */
static const char *set_expiry(const resp_arg_t *value, int kind, int64_t *ttl_ms) {
  int64_t v;
  if (arg_i64(value, &v) != 0) return "ERR value is not an integer or out of range";
  int secs = kind == 1 || kind == 3;
  int at = kind == 3 || kind == 4;
  if (v <= 0 || (secs && v > INT64_MAX / 1000)) return "ERR invalid expire time in 'set' command";
  int64_t ms = secs ? v * 1000 : v;
  if (!at && ms > INT64_MAX - clock_wall_ms()) return "ERR invalid expire time in 'set' command";
  if (at) {
    ms -= clock_wall_ms();
    if (ms <= 0) ms = 1; /* already past: gone at once */
  }
  *ttl_ms = ms;
  return NULL;
}

/* SET's options, all checked before anything runs (as Redis). NULL, or the
 * error's words. */
static const char *set_options(resp_arg_t *argv, int argc, resp_set_options_t *o) {
  *o = (resp_set_options_t){0};
  for (int i = 3; i < argc; i++) {
    const resp_arg_t *a = &argv[i];
    int kind = arg_is(a, "ex") ? 1 : arg_is(a, "px") ? 2 : arg_is(a, "exat") ? 3
               : arg_is(a, "pxat") ? 4 : 0;
    /* As Redis: an option may come again, but not with one it excludes. */
    if (arg_is(a, "nx") && !o->xx) {
      o->nx = 1;
    } else if (arg_is(a, "xx") && !o->nx) {
      o->xx = 1;
    } else if (arg_is(a, "get")) {
      o->get = 1;
    } else if (arg_is(a, "keepttl") && !o->ex) {
      o->keep = 1;
    } else if (kind && (!o->ex || o->ex == kind) && !o->keep && i + 1 < argc) {
      const char *why = set_expiry(&argv[i + 1], kind, &o->ttl_ms);
      if (why) return why;
      o->ex = kind;
      i++;
    } else {
      return "ERR syntax error";
    }
  }
  return NULL;
}

static void cmd_set(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                    resp_slot_t *s) {
  resp_set_options_t o;
  const char *why = set_options(argv, argc, &o);
  if (why) {
    slot_error(s, why);
    return;
  }
  Grid__Request rq;
  value_request(&rq, o.get ? GRID__OP__GET_AND_PUT : cmd->op, &argv[1], &argv[2]);
  rq.ttl_ms = (uint64_t)o.ttl_ms;
  rq.cond = o.nx ? STORE_IF_ABSENT : o.xx ? STORE_IF_PRESENT : STORE_ANY;
  rq.keep_ttl = o.keep;
  resp_send_one(c, cmd, s, &rq, o.get);
}

/* SETEX and PSETEX: key, a positive time in unit_ms, value. */
static void run_setex(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, resp_slot_t *s,
                      int64_t unit_ms) {
  int64_t t;
  if (arg_i64(&argv[2], &t) != 0) {
    slot_error(s, "ERR value is not an integer or out of range");
    return;
  }
  if (t <= 0 || t > INT64_MAX / unit_ms) {
    char line[80];
    snprintf(line, sizeof line, "ERR invalid expire time in '%s' command", cmd->name);
    slot_error(s, line);
    return;
  }
  Grid__Request rq;
  value_request(&rq, cmd->op, &argv[1], &argv[3]);
  rq.ttl_ms = (uint64_t)(t * unit_ms);
  resp_send_one(c, cmd, s, &rq, 0);
}

static void cmd_setex(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  (void)argc;
  run_setex(c, cmd, argv, s, 1000);
}

static void cmd_psetex(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)argc;
  run_setex(c, cmd, argv, s, 1);
}

static void send_add(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, resp_slot_t *s,
                     int64_t delta) {
  Grid__Request rq;
  key_request(&rq, cmd->op, &argv[1]);
  rq.delta = delta;
  resp_send_one(c, cmd, s, &rq, 0);
}

/* INCRBY and DECRBY's amount; 0, or -1 once the error is in s. */
static int add_amount(resp_arg_t *argv, resp_slot_t *s, int64_t *delta) {
  if (arg_i64(&argv[2], delta) == 0) return 0;
  slot_error(s, "ERR value is not an integer or out of range");
  return -1;
}

static void cmd_incr(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)argc;
  send_add(c, cmd, argv, s, 1);
}

static void cmd_decr(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)argc;
  send_add(c, cmd, argv, s, -1);
}

static void cmd_incrby(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)argc;
  int64_t delta;
  if (add_amount(argv, s, &delta) == 0) send_add(c, cmd, argv, s, delta);
}

static void cmd_decrby(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)argc;
  int64_t delta;
  if (add_amount(argv, s, &delta) != 0) return;
  if (delta == INT64_MIN) { /* its negation does not exist */
    slot_error(s, "ERR decrement would overflow");
    return;
  }
  send_add(c, cmd, argv, s, -delta);
}

/* EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: key, a time in unit_ms (from now,
 * or since 1970 with absolute), then Redis 7's NX | XX | GT | LT, checked
 * as Redis checks them: the options first, then the time. */
/* EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: the row's sub says which
 * (RESP_EXPIRE_SECONDS, RESP_EXPIRE_AT). */
static void cmd_expire(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  int64_t unit_ms = (cmd->sub & RESP_EXPIRE_SECONDS) ? 1000 : 1;
  int absolute = (cmd->sub & RESP_EXPIRE_AT) != 0;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  int cond = 0;
  for (int i = 3; i < argc; i++) {
    if (arg_is(&argv[i], "nx")) cond |= STORE_EXPIRE_NX;
    else if (arg_is(&argv[i], "xx")) cond |= STORE_EXPIRE_XX;
    else if (arg_is(&argv[i], "gt")) cond |= STORE_EXPIRE_GT;
    else if (arg_is(&argv[i], "lt")) cond |= STORE_EXPIRE_LT;
    else {
      snprintf(line, sizeof line, "ERR Unsupported option %.*s", arg_quoted_len(&argv[i]),
               argv[i].p);
      slot_error(s, line);
      return;
    }
  }
  if ((cond & STORE_EXPIRE_NX) && (cond & (STORE_EXPIRE_XX | STORE_EXPIRE_GT | STORE_EXPIRE_LT))) {
    slot_error(s, "ERR NX and XX, GT or LT options at the same time are not compatible");
    return;
  }
  if ((cond & STORE_EXPIRE_GT) && (cond & STORE_EXPIRE_LT)) {
    slot_error(s, "ERR GT and LT options at the same time are not compatible");
    return;
  }
  int64_t t;
  if (arg_i64(&argv[2], &t) != 0) {
    slot_error(s, "ERR value is not an integer or out of range");
    return;
  }
  int64_t base = absolute ? 0 : clock_wall_ms();
  if (t > INT64_MAX / unit_ms || t < INT64_MIN / unit_ms || t * unit_ms > INT64_MAX - base) {
    snprintf(line, sizeof line, "ERR invalid expire time in '%s' command", cmd->name);
    slot_error(s, line);
    return;
  }
  Grid__Request rq;
  key_request(&rq, cmd->op, &argv[1]);
  rq.expire_ms = t * unit_ms;
  rq.expire_absolute = absolute;
  rq.cond = cond;
  resp_send_one(c, cmd, s, &rq, 0);
}

/* EXPIRETIME, PEXPIRETIME: the expiry's wall-clock time (TTL, absolute). */
static void cmd_expiretime(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                           resp_slot_t *s) {
  (void)argc;
  Grid__Request rq;
  key_request(&rq, cmd->op, &argv[1]);
  rq.expire_absolute = 1;
  resp_send_one(c, cmd, s, &rq, 0);
}

static void cmd_persist(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  (void)argc;
  Grid__Request rq;
  key_request(&rq, cmd->op, &argv[1]);
  rq.persist = 1;
  resp_send_one(c, cmd, s, &rq, 0);
}

static void cmd_mset(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  if ((argc - 1) % 2 != 0) {
    slot_error(s, "ERR wrong number of arguments for 'mset' command");
    return;
  }
  resp_job_t *job = resp_job_start(c, cmd, s, resp_requests_of(cmd, argc));
  if (!job) return;
  for (size_t i = 0; i < job->n && !job->status; i++) {
    Grid__Request rq;
    value_request(&rq, cmd->op, &argv[1 + 2 * i], &argv[2 + 2 * i]);
    resp_job_submit(job, i, &rq);
  }
  resp_job_sent(job);
}

static void cmd_dbsize(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)argv;
  (void)argc;
  Grid__Request rq;
  grid__request__init(&rq);
  rq.op = cmd->op;
  resp_send_one(c, cmd, s, &rq, 0);
}

/* ---- commands answered here ------------------------------------------------- */

static void cmd_ping(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)cmd;
  if (pubsub_client_count(&resp_of(c)->ps)) {
    /* As Redis in RESP2's subscribed mode: an array, as messages are. */
    slot_put(s, "*2\r\n$4\r\npong\r\n", 14);
    if (argc == 1) slot_put(s, "$0\r\n\r\n", 6);
    else slot_bulk(s, argv[1].p, argv[1].len);
  } else if (argc == 1) {
    slot_put(s, "+PONG\r\n", 7);
  } else {
    slot_bulk(s, argv[1].p, argv[1].len);
  }
  s->done = 1;
}

static void cmd_echo(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)c;
  (void)cmd;
  (void)argc;
  slot_bulk(s, argv[1].p, argv[1].len);
  s->done = 1;
}

static void cmd_quit(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)cmd;
  (void)argv;
  (void)argc;
  slot_ok(s);
  s->done = 1;
  resp_of(c)->ending = 1;
}

static void cmd_select(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)cmd;
  (void)argc;
  /* SELECT 0 is the default cache; SELECT <n> the cache "db<n>"; SELECT
   * <name> the cache of that name: a cache must exist to be selected. */
  char name[STORE_CACHE_NAME_MAX + 1];
  int64_t idx;
  int ok = 1;
  if (arg_i64(&argv[1], &idx) == 0) {
    ok = idx >= 0;
    if (idx == 0) snprintf(name, sizeof name, "default");
    else snprintf(name, sizeof name, "db%" PRId64, idx);
  } else {
    ok = argv[1].len <= STORE_CACHE_NAME_MAX;
    if (ok) {
      memcpy(name, argv[1].p, argv[1].len);
      name[argv[1].len] = '\0';
    }
  }
  if (ok && store_view_find(&c->lp->view, name, strlen(name))) {
    snprintf(resp_of(c)->cache, sizeof resp_of(c)->cache, "%s", name);
    slot_ok(s);
    s->done = 1;
    return;
  }
  /* Databases 1 .. databases-1 always exist for a client: the cache of one
   * is made (default settings, cluster-wide) by its first SELECT. */
  if (arg_i64(&argv[1], &idx) != 0) { /* and no cache of that name */
    slot_error(s, "ERR value is not an integer or out of range");
    return;
  }
  if (!ok || idx < 1 || idx >= c->lp->node->cfg.databases) {
    slot_error(s, "ERR DB index is out of range");
    return;
  }
  resp_job_t *job = resp_job_start(c, cmd, s, 1);
  if (!job) return;
  snprintf(job->db, sizeof job->db, "%s", name);
  resp_job_hold_state(job);
  Grid__CacheConfig cc = GRID__CACHE_CONFIG__INIT;
  cc.name = job->db;
  Grid__Request rq;
  grid__request__init(&rq);
  rq.op = GRID__OP__CREATE_CACHE;
  rq.cache_config = &cc;
  resp_job_submit(job, 0, &rq);
  resp_job_sent(job);
}

static void reply_select(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status != 0 && rp->status != GRID_ECACHEEXISTS) {
    resp_reply_error(job, rp);
    return;
  }
  resp_conn_t *r = resp_of(job->c);
  snprintf(r->cache, sizeof r->cache, "%s", job->db);
  slot_ok(job->slot);
}

/* CLIENT's subcommands and their arity. NULL, or the error's words in line. */
static const char *client_arity(resp_arg_t *argv, int argc, char *line, size_t size) {
  static const struct { const char *sub; int argc; } arity[] = {
      {"setname", 3}, {"getname", 2}, {"id", 2}, {"setinfo", 4}};
  for (size_t i = 0; i < sizeof arity / sizeof arity[0]; i++) {
    if (arg_is(&argv[1], arity[i].sub) && argc != arity[i].argc) {
      snprintf(line, size, "ERR wrong number of arguments for 'client|%s' command",
               arity[i].sub);
      return line;
    }
  }
  return NULL;
}

static void cmd_client(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)cmd;
  resp_conn_t *r = resp_of(c);
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (client_arity(argv, argc, line, sizeof line)) {
    slot_error(s, line);
    return;
  }
  if (arg_is(&argv[1], "setname")) {
    for (size_t i = 0; i < argv[2].len; i++) {
      if (argv[2].p[i] <= ' ' || argv[2].p[i] > '~') {
        slot_error(s, "ERR Client names cannot contain spaces, newlines or special characters.");
        return;
      }
    }
    snprintf(r->name, sizeof r->name, "%.*s", (int)argv[2].len, argv[2].p);
    slot_ok(s);
  } else if (arg_is(&argv[1], "getname")) {
    if (r->name[0]) slot_bulk(s, r->name, strlen(r->name));
    else slot_nil(s);
  } else if (arg_is(&argv[1], "id")) {
    slot_int(s, (int64_t)(uintptr_t)c & 0x7fffffff);
  } else if (arg_is(&argv[1], "setinfo")) {
    slot_ok(s);
  } else {
    snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try CLIENT HELP.",
             arg_quoted_len(&argv[1]), argv[1].p);
    slot_error(s, line);
    return;
  }
  s->done = 1;
}

/* The connection is no longer logged in (RESET, or its user is gone): with
 * auth on it is a stranger again, with a stranger's bounds and
 * handshake_timeout_ms from now. */
static void resp_logout(conn_t *c) {
  resp_conn_t *r = resp_of(c);
  node_t *n = c->lp->node;
  free(r->who);
  r->who = NULL;
  r->cert_tried = 0;
  if (!auth_required(n->auth)) return;
  c->handshaken = 0;
  c->accepted_ms = clock_mono_ms();
  frame_buf_set_limit(&c->in, (size_t)n->cfg.unauthenticated_bytes_max + CONN_RBUF_BYTES);
}

/* AUTH user password (user NULL: "default"), as Redis answers it. NULL
 * when it logged in, else the error's words (static, or in line). */
static const char *resp_login(conn_t *c, const resp_arg_t *user, const resp_arg_t *pass,
                              char *line, size_t size) {
  node_t *n = c->lp->node;
  resp_conn_t *r = resp_of(c);
  char u[AUTH_NAME_MAX + 1], p[AUTH_PASSWORD_BYTES_MAX + 1];
  snprintf(u, sizeof u, "%.*s", user ? (int)(user->len < AUTH_NAME_MAX ? user->len : AUTH_NAME_MAX) : 7,
           user ? user->p : "default");
  if (!auth_required(n->auth)) {
    /* As Redis with no password: the default user takes any. */
    if (!user)
      return "ERR AUTH <password> called without any password configured for the default "
             "user. Are you sure your configuration is correct?";
    return strcmp(u, "default") ? "WRONGPASS invalid username-password pair or user is disabled."
                                : NULL;
  }
  if (pass->len > AUTH_PASSWORD_BYTES_MAX || (pass->len && memchr(pass->p, 0, pass->len)))
    return "WRONGPASS invalid username-password pair or user is disabled.";
  snprintf(p, sizeof p, "%.*s", (int)pass->len, pass->p);
  auth_principal_t who;
  char why[200];
  int rc = auth_login(n->auth, u, p, c->ip, &who, why, sizeof why);
  if (rc == 0 && !r->who && !(r->who = malloc(sizeof who))) rc = GRID_ENOMEM;
  if (rc != 0) {
    snprintf(line, size, "WRONGPASS %s", why);
    return rc == GRID_ENOMEM ? "ERR out of memory" : line;
  }
  *r->who = who;
  if (!c->handshaken) {
    /* Logged in: the node's own bounds from now on. */
    c->handshaken = 1;
    frame_buf_set_limit(&c->in, (size_t)n->cfg.resp_command_bytes_max + CONN_RBUF_BYTES);
  }
  return NULL;
}

/* HELLO's version and options, when given: AUTH logs in first, then
 * SETNAME, as Redis. NULL, or the error's words (static, or in line). */
static const char *hello_check(conn_t *c, resp_arg_t *argv, int argc, char *line, size_t size) {
  const resp_arg_t *user = NULL, *pass = NULL, *name = NULL;
  if (argc >= 2) {
    int64_t ver;
    if (arg_i64(&argv[1], &ver) != 0) return "ERR Protocol version is not an integer or out of range";
    if (ver != 2 && ver != 3) return "NOPROTO unsupported protocol version";
  }
  for (int i = 2; i < argc; i++) {
    if (arg_is(&argv[i], "setname") && i + 1 < argc) {
      name = &argv[++i];
    } else if (arg_is(&argv[i], "auth") && i + 2 < argc) {
      user = &argv[i + 1];
      pass = &argv[i + 2];
      i += 2;
    } else {
      snprintf(line, size, "ERR Syntax error in HELLO option '%.*s'", arg_quoted_len(&argv[i]),
               argv[i].p);
      return line;
    }
  }
  if (user) {
    const char *why = resp_login(c, user, pass, line, size);
    if (why) return why;
  }
  if (auth_required(c->lp->node->auth) && !resp_of(c)->who)
    return "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
           "HELLO AUTH <user> <pass> option can be used to authenticate the client and "
           "select the RESP protocol version at the same time";
  if (name)
    snprintf(resp_of(c)->name, sizeof resp_of(c)->name, "%.*s", (int)name->len, name->p);
  return NULL;
}

/* AUTH [user] password. */
static void cmd_auth(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)cmd;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (argc > 3) {
    slot_error(s, "ERR syntax error");
    return;
  }
  const char *why = resp_login(c, argc == 3 ? &argv[1] : NULL, &argv[argc - 1], line, sizeof line);
  if (why) {
    slot_error(s, why);
    return;
  }
  slot_ok(s);
  s->done = 1;
}

/* ACL WHOAMI (and ACL USERS, for an admin). */
static void cmd_acl(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                    resp_slot_t *s) {
  (void)cmd;
  resp_conn_t *r = resp_of(c);
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (arg_is(&argv[1], "whoami") && argc == 2) {
    const char *name = r->who ? r->who->name : "default";
    slot_bulk(s, name, strlen(name));
    s->done = 1;
    return;
  }
  if (arg_is(&argv[1], "whoami")) {
    slot_error(s, "ERR wrong number of arguments for 'acl|whoami' command");
    return;
  }
  snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try ACL HELP.",
           arg_quoted_len(&argv[1]), argv[1].p);
  slot_error(s, line);
}

static void cmd_hello(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  (void)cmd;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  const char *why = hello_check(c, argv, argc, line, sizeof line);
  if (why) {
    slot_error(s, why);
    return;
  }
  int cluster = c->lp->node->cluster != NULL;
  /* HELLO 3 answers in RESP3 already (a map), as Redis does. */
  int64_t ver = 0;
  if (argc >= 2 && arg_i64(&argv[1], &ver) == 0) resp_of(c)->resp3 = s->resp3 = ver == 3;
  slot_agg(s, '%', 7);
  slot_bulk(s, "server", 6);
  slot_bulk(s, "grid", 4);
  slot_bulk(s, "version", 7);
  slot_bulk(s, GRID_VERSION_STRING, strlen(GRID_VERSION_STRING));
  slot_bulk(s, "proto", 5);
  slot_int(s, resp_of(c)->resp3 ? 3 : 2);
  slot_bulk(s, "id", 2);
  slot_int(s, (int64_t)(uintptr_t)c & 0x7fffffff);
  slot_bulk(s, "mode", 4);
  slot_bulk(s, cluster ? "cluster" : "standalone", cluster ? 7 : 10);
  slot_bulk(s, "role", 4);
  slot_bulk(s, "master", 6);
  slot_bulk(s, "modules", 7);
  slot_put(s, "*0\r\n", 4);
  s->done = 1;
}

/* INFO's sections, in Redis's order; "default", "all" and "everything"
 * name every one of them here (grid has no modules, command or error
 * statistics yet). */
enum {
  INFO_SERVER = 1 << 0, INFO_CLIENTS = 1 << 1, INFO_MEMORY = 1 << 2, INFO_PERSISTENCE = 1 << 3,
  INFO_STATS = 1 << 4, INFO_REPLICATION = 1 << 5, INFO_CPU = 1 << 6, INFO_CLUSTER = 1 << 7,
  INFO_KEYSPACE = 1 << 8, INFO_ALL = (1 << 9) - 1,
};

static unsigned info_section_of(const resp_arg_t *a) {
  static const struct { const char *name; unsigned bit; } names[] = {
      {"server", INFO_SERVER},     {"clients", INFO_CLIENTS}, {"memory", INFO_MEMORY},
      {"persistence", INFO_PERSISTENCE}, {"stats", INFO_STATS},
      {"replication", INFO_REPLICATION}, {"cpu", INFO_CPU}, {"cluster", INFO_CLUSTER},
      {"keyspace", INFO_KEYSPACE}, {"default", INFO_ALL}, {"all", INFO_ALL},
      {"everything", INFO_ALL}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (arg_is(a, names[i].name)) return names[i].bit;
  return 0; /* Redis answers nothing for a section it does not know */
}

/* Appends one section (its header, then lines), with the blank line that
 * separates it from the one before. */
static size_t info_section(char *buf, size_t cap, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t info_section(char *buf, size_t cap, size_t at, const char *fmt, ...) {
  if (at >= cap) return at;
  if (at > 0) {
    int n = snprintf(buf + at, cap - at, "\r\n");
    at += n > 0 ? (size_t)n : 0;
    if (at >= cap) return cap - 1;
  }
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf + at, cap - at, fmt, ap);
  va_end(ap);
  if (n < 0) return at;
  return at + (size_t)n >= cap ? cap - 1 : at + (size_t)n;
}

static void cmd_info(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)cmd;
  unsigned want = argc > 1 ? 0 : INFO_ALL;
  for (int i = 1; i < argc; i++) want |= info_section_of(&argv[i]);
  node_t *n = c->lp->node;
  char body[4096];
  size_t at = 0, cap = sizeof body;
  int64_t up_s = (clock_mono_ms() - n->started_ms) / 1000;
  if (want & INFO_SERVER)
    at = info_section(body, cap, at,
                      "# Server\r\nredis_version:7.0.0\r\ngrid_version:%s\r\nredis_mode:%s\r\n"
                      "arch_bits:%d\r\nprocess_id:%d\r\ntcp_port:%d\r\nuptime_in_seconds:%lld\r\n"
                      "uptime_in_days:%lld\r\n",
                      GRID_VERSION_STRING, n->cluster ? "cluster" : "standalone",
                      (int)(sizeof(void *) * 8), (int)getpid(), n->resp_port, (long long)up_s,
                      (long long)(up_s / 86400));
  if (want & INFO_CLIENTS)
    at = info_section(body, cap, at, "# Clients\r\nconnected_clients:%llu\r\nmaxclients:%lld\r\n",
                      (unsigned long long)atomic_load(&n->connections),
                      (long long)n->cfg.connections_max);
  if (want & INFO_MEMORY)
    at = info_section(body, cap, at,
                      "# Memory\r\nused_memory:%lld\r\nmaxmemory:%lld\r\n"
                      "maxmemory_policy:noeviction\r\n",
                      (long long)store_memory_bytes(n->store),
                      (long long)store_memory_bytes_max(n->store));
  /* No persistence yet: nothing loads, nothing is saved. */
  if (want & INFO_PERSISTENCE)
    at = info_section(body, cap, at,
                      "# Persistence\r\nloading:0\r\nasync_loading:0\r\n"
                      "rdb_bgsave_in_progress:0\r\naof_enabled:0\r\n");
  if (want & INFO_STATS)
    at = info_section(body, cap, at, "# Stats\r\ntotal_commands_processed:%llu\r\n"
                      "total_error_replies:%llu\r\nrejected_calls:%llu\r\n",
                      (unsigned long long)ops_served(n),
                      (unsigned long long)atomic_load(&n->resp_errors),
                      (unsigned long long)atomic_load(&n->resp_rejected));
  /* Every node answers for every key as a primary would (grid's backups are
   * not Redis replicas). */
  if (want & INFO_REPLICATION)
    at = info_section(body, cap, at, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n");
  if (want & INFO_CPU) {
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_SELF, &ru);
    at = info_section(body, cap, at, "# CPU\r\nused_cpu_sys:%ld.%06ld\r\nused_cpu_user:%ld.%06ld\r\n",
                      (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec,
                      (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
  }
  /* Not Redis Cluster's protocol (no MOVED): any node answers any key. */
  if (want & INFO_CLUSTER) at = info_section(body, cap, at, "# Cluster\r\ncluster_enabled:0\r\n");
  if (want & INFO_KEYSPACE) {
    /* Each database with keys: its cache's entries here (in a cluster,
     * this node's copies), and how many of them expire. */
    char dbs[2048];
    size_t len = 0;
    for (int64_t db = 0; db < n->cfg.databases && len < sizeof dbs; db++) {
      char name[STORE_CACHE_NAME_MAX + 1];
      if (db == 0) snprintf(name, sizeof name, "default");
      else snprintf(name, sizeof name, "db%" PRId64, db);
      store_cache_t *sc = store_view_find(&c->lp->view, name, strlen(name));
      uint64_t keys = sc ? store_cache_size(sc) : 0;
      if (!keys) continue;
      int k = snprintf(dbs + len, sizeof dbs - len, "db%" PRId64 ":keys=%llu,expires=%llu,"
                       "avg_ttl=0\r\n", db, (unsigned long long)keys,
                       (unsigned long long)store_cache_expiring(sc));
      if (k < 0 || (size_t)k >= sizeof dbs - len) break; /* the lines that fit */
      len += (size_t)k;
    }
    dbs[len] = '\0';
    at = info_section(body, cap, at, "# Keyspace\r\n%s", dbs);
  }
  slot_bulk(s, body, at);
  s->done = 1;
}

/* TIME: the wall clock, seconds and microseconds, as two bulk strings. */
static void cmd_time(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)c;
  (void)cmd;
  (void)argv;
  (void)argc;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char sec[24], usec[24];
  int ns = snprintf(sec, sizeof sec, "%lld", (long long)ts.tv_sec);
  int nu = snprintf(usec, sizeof usec, "%ld", ts.tv_nsec / 1000);
  slot_num_line(s, '*', 2);
  slot_bulk(s, sec, (size_t)ns);
  slot_bulk(s, usec, (size_t)nu);
  s->done = 1;
}

static const resp_cmd_t resp_cmds[];
static const size_t resp_ncmds;

/* One command's row of COMMAND: name, arity, flags (none given), and where
 * its keys are. Whether it has keys is the op table's word. */
static void command_row(resp_slot_t *s, const resp_cmd_t *d) {
  int keyed = op_has(d->op, OP_KEYED) && d->keys != RESP_KEYS_NONE;
  int last = !keyed ? 0 : d->keys == RESP_KEYS_ONE ? 1 : -1;
  int step = !keyed ? 0 : d->keys == RESP_KEYS_PAIRS ? 2 : 1;
  slot_num_line(s, '*', 6);
  slot_bulk(s, d->name, strlen(d->name));
  slot_int(s, d->arity);
  slot_put(s, "*0\r\n", 4);
  slot_int(s, keyed ? 1 : 0);
  slot_int(s, last);
  slot_int(s, step);
}

static void cmd_command(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  (void)c;
  (void)cmd;
  if (argc >= 2 && arg_is(&argv[1], "count")) {
    slot_int(s, (int64_t)resp_ncmds);
  } else if (argc >= 2 && arg_is(&argv[1], "docs")) {
    slot_put(s, "*0\r\n", 4); /* no documentation to offer */
  } else if (argc == 1) {
    slot_num_line(s, '*', (int64_t)resp_ncmds);
    for (size_t i = 0; i < resp_ncmds; i++) command_row(s, &resp_cmds[i]);
  } else {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
             arg_quoted_len(&argv[1]), argv[1].p);
    slot_error(s, line);
    return;
  }
  s->done = 1;
}


/* ---- publish / subscribe ---------------------------------------------------- */

static pubsub_t *resp_pubsub(const conn_t *c) { return c->lp->node->pubsub; }

/* Writes the messages gathered; a subscriber whose unsent output is still
 * past output_bytes_max is disconnected. */
static void resp_msg_flush(loop_t *lp, conn_t *c) {
  (void)lp;
  if (!conn_open(c)) return;
  conn_flush(c);
  if (conn_open(c) && conn_output_full(c)) {
    LOG_W("resp", "\"subscriber closed: it does not read its messages\" addr=%s "
          "output_bytes_max=%lld", c->peer, (long long)c->lp->node->cfg.output_bytes_max);
    conn_close(c);
  }
}

static void resp_msg_flush_task(loop_t *lp, void *arg) {
  conn_t *c = arg;
  resp_of(c)->msg_flush_deferred = 0;
  resp_msg_flush(lp, c);
  conn_unref(c);
}

/* A message for a subscribed connection, on its loop: after the replies
 * still waiting (a cluster's slots), else at once. A subscriber whose
 * unsent output passes output_bytes_max is disconnected, as Redis does
 * past its pubsub output limit: the publisher never waits for it. The
 * messages of one loop round leave in one write (loop_defer). */
static void resp_deliver(pubsub_client_t *cl, const pubsub_name_t *pattern, const void *channel,
                         size_t channel_len, const void *msg, size_t msg_len) {
  resp_conn_t *r = (resp_conn_t *)(void *)((char *)cl - offsetof(resp_conn_t, ps));
  conn_t *c = r->conn;
  if (!conn_open(c) || r->broken || r->ending) return;
  resp_slot_t *m = &r->msg;
  m->len = 0;
  m->failed = 0;
  m->resp3 = r->resp3;
  if (pattern) {
    slot_agg(m, '>', 4);
    slot_put(m, "$8\r\npmessage\r\n", 14);
    slot_bulk(m, pattern->bytes, pattern->len);
  } else {
    slot_agg(m, '>', 3);
    slot_put(m, "$7\r\nmessage\r\n", 13);
  }
  slot_bulk(m, channel, channel_len);
  slot_bulk(m, msg, msg_len);
  if (m->failed) {
    LOG_W("resp", "\"subscriber closed: no memory for a message\" addr=%s", c->peer);
    conn_close(c);
    return;
  }
  if (r->head) {
    resp_slot_t *s = calloc(1, sizeof *s);
    if (!s) {
      conn_close(c);
      return;
    }
    *s = *m;
    s->next = NULL;
    s->done = s->push = 1;
    *m = (resp_slot_t){0};
    r->tail->next = s;
    r->tail = s;
    r->push_bytes += s->len;
    if (r->push_bytes + c->wlen + c->inflight_bytes >
        (size_t)c->lp->node->cfg.output_bytes_max) {
      LOG_W("resp", "\"subscriber closed: messages wait behind a reply past output_bytes_max\" "
            "addr=%s output_bytes_max=%lld", c->peer, (long long)c->lp->node->cfg.output_bytes_max);
      conn_close(c);
      return;
    }
  } else {
    int rc = conn_out(c, m->buf, m->len);
    if (m->cap > RESP_MSG_KEEP_BYTES) { /* one large message: not kept for life */
      free(m->buf);
      *m = (resp_slot_t){0};
    }
    if (rc != 0) {
      conn_close(c);
      return;
    }
  }
  if (conn_output_full(c)) {
    resp_msg_flush(c->lp, c); /* it may take it all at once */
    return;
  }
  if (!r->msg_flush_deferred) {
    r->msg_flush_deferred = 1;
    r->msg_flush_task = (loop_task_t){.fn = resp_msg_flush_task, .arg = c};
    conn_ref(c);
    loop_defer(c->lp, &r->msg_flush_task);
  }
}

/* "*3 kind name count": what SUBSCRIBE and the others answer for each
 * name (name NULL: nil, an UNSUBSCRIBE of nothing). */
static void slot_sub_line(resp_slot_t *s, const char *kind, const pubsub_name_t *name,
                          size_t count) {
  slot_agg(s, '>', 3); /* RESP3: a push */
  slot_bulk(s, kind, strlen(kind));
  if (name) slot_bulk(s, name->bytes, name->len);
  else slot_nil(s);
  slot_int(s, (int64_t)count);
}

static void cmd_subscribe(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                          resp_slot_t *s) {
  resp_conn_t *r = resp_of(c);
  int pattern = cmd->name[0] == 'p';
  for (int i = 1; i < argc; i++) {
    if (pubsub_subscribe(resp_pubsub(c), &r->ps, argv[i].p, argv[i].len, pattern) != 0) {
      slot_fail(s); /* no memory: the connection closes after the replies before */
      return;
    }
    pubsub_name_t nm = {argv[i].len, (unsigned char *)argv[i].p};
    slot_sub_line(s, cmd->name, &nm, pubsub_client_count(&r->ps));
  }
  s->done = 1;
}

/* UNSUBSCRIBE, PUNSUBSCRIBE: the names given, or every one held (in the
 * order subscribed). */
static void resp_unsubscribe(conn_t *c, const char *kind, int pattern, resp_arg_t *argv,
                             int argc, resp_slot_t *s) {
  resp_conn_t *r = resp_of(c);
  pubsub_t *ps = resp_pubsub(c);
  if (argc > 1) {
    for (int i = 1; i < argc; i++) {
      pubsub_unsubscribe(ps, &r->ps, argv[i].p, argv[i].len, pattern);
      pubsub_name_t nm = {argv[i].len, (unsigned char *)argv[i].p};
      slot_sub_line(s, kind, &nm, pubsub_client_count(&r->ps));
    }
    return;
  }
  size_t *held = pattern ? &r->ps.npatterns : &r->ps.nchannels;
  if (*held == 0) slot_sub_line(s, kind, NULL, pubsub_client_count(&r->ps));
  while (*held) {
    pubsub_name_t first = pattern ? r->ps.patterns[0] : r->ps.channels[0];
    slot_agg(s, '>', 3); /* RESP3: a push */
    slot_bulk(s, kind, strlen(kind));
    slot_bulk(s, first.bytes, first.len); /* before the name is freed */
    pubsub_unsubscribe(ps, &r->ps, first.bytes, first.len, pattern);
    slot_int(s, (int64_t)pubsub_client_count(&r->ps));
  }
}

static void cmd_unsubscribe(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                            resp_slot_t *s) {
  resp_unsubscribe(c, cmd->name, cmd->name[0] == 'p', argv, argc, s);
  s->done = 1;
}

static void cmd_publish(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  (void)cmd;
  (void)argc;
  int64_t receivers = 0;
  int rc = pubsub_publish(c->lp, argv[1].p, argv[1].len, argv[2].p, argv[2].len, 1, &receivers);
  if (rc != 0) slot_status_error(s, rc, rc == GRID_EBUSY ? "too many messages on their way to "
                                 "subscribers: try again" : NULL);
  else slot_int(s, receivers);
  s->done = 1;
}

typedef struct resp_names {
  resp_slot_t body;
  int64_t n;
} resp_names_t;

static void resp_names_add(void *ctx, const void *name, size_t len) {
  resp_names_t *nm = ctx;
  slot_bulk(&nm->body, name, len);
  nm->n++;
}

/* A subcommand Redis does not know, or one it knows given the wrong number
 * of arguments (known), in Redis's words. */
static void resp_subcommand_error(resp_slot_t *s, const char *command, const resp_arg_t *sub,
                                  int known) {
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (known) {
    char lower[32];
    size_t n = sub->len < sizeof lower - 1 ? sub->len : sizeof lower - 1;
    for (size_t i = 0; i < n; i++) lower[i] = (char)tolower((unsigned char)sub->p[i]);
    lower[n] = '\0';
    snprintf(line, sizeof line, "ERR wrong number of arguments for '%s|%s' command", command,
             lower);
  } else {
    char upper[16];
    snprintf(upper, sizeof upper, "%s", command);
    for (char *p = upper; *p; p++) *p = (char)toupper((unsigned char)*p);
    snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try %s HELP.",
             arg_quoted_len(sub), sub->p, upper);
  }
  slot_error(s, line);
}

/* PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT, on this node
 * (as in Redis Cluster). */
static void cmd_pubsub(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)cmd;
  pubsub_t *ps = resp_pubsub(c);
  if (arg_is(&argv[1], "channels") && argc <= 3) {
    resp_names_t nm = {0};
    pubsub_channels(ps, argc == 3 ? argv[2].p : NULL, argc == 3 ? argv[2].len : 0,
                    resp_names_add, &nm);
    slot_num_line(s, '*', nm.n);
    slot_put_slot(s, &nm.body);
    free(nm.body.buf);
  } else if (arg_is(&argv[1], "numsub")) {
    slot_num_line(s, '*', (int64_t)(argc - 2) * 2);
    for (int i = 2; i < argc; i++) {
      slot_bulk(s, argv[i].p, argv[i].len);
      slot_int(s, pubsub_numsub(ps, argv[i].p, argv[i].len));
    }
  } else if (arg_is(&argv[1], "numpat") && argc == 2) {
    slot_int(s, pubsub_numpat(ps));
  } else {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    if (arg_is(&argv[1], "channels") || arg_is(&argv[1], "numpat")) {
      /* Redis 7.0 counts PUBSUB's arguments itself, and says so thus. */
      snprintf(line, sizeof line, "ERR unknown subcommand or wrong number of arguments for "
               "'%.*s'. Try PUBSUB HELP.", arg_quoted_len(&argv[1]), argv[1].p);
      slot_error(s, line);
    } else {
      resp_subcommand_error(s, "pubsub", &argv[1], 0);
    }
    return;
  }
  s->done = 1;
}

/* RESET: the connection as new (no subscriptions, database 0, no name). */
static void cmd_reset(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  (void)cmd;
  (void)argv;
  (void)argc;
  resp_conn_t *r = resp_of(c);
  pubsub_client_close(resp_pubsub(c), &r->ps);
  resp_tx_free(r->tx);
  r->tx = NULL;
  resp_unwatch(r);
  /* As Redis: back to the default user, who needs a password when auth is
   * on. */
  resp_logout(c);
  r->resp3 = 0;
  strcpy(r->cache, "default");
  r->name[0] = '\0';
  slot_put(s, "+RESET\r\n", 8);
  s->done = 1;
}

#define RESP_NOTIFY_PARAM "notify-keyspace-events"

/* What CONFIG GET answers: Redis's names for grid's settings (read-only
 * but notify-keyspace-events), and the values Redis clients and tools ask
 * for on connect. */
static const char *const resp_config_params[] = {
    RESP_NOTIFY_PARAM, "databases", "maxmemory", "maxmemory-policy", "maxclients", "timeout",
    "save", "appendonly", "bind", "proto-max-bulk-len", "cluster-enabled",
};
#define RESP_CONFIG_PARAMS ((int)(sizeof resp_config_params / sizeof resp_config_params[0]))

static void resp_config_value(conn_t *c, int p, char *out, size_t cap) {
  node_t *n = c->lp->node;
  const config_t *cfg = &n->cfg;
  switch (p) {
    case 0: notify_format(atomic_load(&n->notify_flags), out); return;
    case 1: snprintf(out, cap, "%" PRId64, cfg->databases); return;
    case 2: snprintf(out, cap, "%" PRId64, store_memory_bytes_max(n->store)); return;
    case 3: snprintf(out, cap, "noeviction"); return; /* writes past the limit are refused */
    case 4: snprintf(out, cap, "%" PRId64, cfg->connections_max); return;
    case 5: snprintf(out, cap, "0"); return;
    case 6: snprintf(out, cap, "%s", ""); return;
    case 7: snprintf(out, cap, "no"); return;
    case 8: snprintf(out, cap, "%s", cfg->bind); return;
    case 9: snprintf(out, cap, "%" PRId64, cfg->resp_command_bytes_max); return;
    default: snprintf(out, cap, "no"); return; /* not Redis Cluster's protocol */
  }
}

/* CONFIG GET / SET: notify-keyspace-events only (on this node, as Redis
 * Cluster's nodes each have their own); GET of anything else is an empty
 * list, as Redis answers a parameter it does not have. */
static void cmd_config(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  (void)cmd;
  node_t *n = c->lp->node;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (arg_is(&argv[1], "get") && argc >= 3) {
    /* Each parameter once, in the table's order, if a pattern names it. */
    char values[RESP_CONFIG_PARAMS][64];
    int take[RESP_CONFIG_PARAMS] = {0}, count = 0;
    for (int p = 0; p < RESP_CONFIG_PARAMS; p++) {
      const char *name = resp_config_params[p];
      for (int i = 2; i < argc && !take[p]; i++)
        take[p] = glob_match(argv[i].p, argv[i].len, name, strlen(name)) || arg_is(&argv[i], name);
      if (!take[p]) continue;
      count++;
      resp_config_value(c, p, values[p], sizeof values[p]);
    }
    slot_agg(s, '%', count);
    for (int p = 0; p < RESP_CONFIG_PARAMS; p++) {
      if (!take[p]) continue;
      slot_bulk(s, resp_config_params[p], strlen(resp_config_params[p]));
      slot_bulk(s, values[p], strlen(values[p]));
    }
  } else if (arg_is(&argv[1], "set") && argc >= 4 && argc % 2 == 0) {
    unsigned flags = 0;
    for (int i = 2; i < argc; i += 2) {
      char text[64];
      if (!arg_is(&argv[i], RESP_NOTIFY_PARAM)) {
        int known = 0;
        for (int p = 0; p < RESP_CONFIG_PARAMS && !known; p++)
          known = arg_is(&argv[i], resp_config_params[p]);
        if (known)
          snprintf(line, sizeof line, "ERR CONFIG SET '%.*s' is not supported by grid: it is a "
                   "node setting (gridd --set, see README)", arg_quoted_len(&argv[i]), argv[i].p);
        else
          snprintf(line, sizeof line, "ERR Unknown option or number of arguments for CONFIG "
                   "SET - '%.*s'", arg_quoted_len(&argv[i]), argv[i].p);
        slot_error(s, line);
        return;
      }
      snprintf(text, sizeof text, "%.*s", (int)(argv[i + 1].len < 63 ? argv[i + 1].len : 63),
               argv[i + 1].p);
      if (argv[i + 1].len >= sizeof text || memchr(argv[i + 1].p, '\0', argv[i + 1].len) ||
          notify_parse(text, &flags) != 0) {
        slot_error(s, "ERR CONFIG SET failed (possibly related to argument "
                   "'notify-keyspace-events') - Invalid event class character. Use "
                   "'Ag$lshzxeKEtmdn'.");
        return;
      }
    }
    atomic_store(&n->notify_flags, flags);
    slot_ok(s);
  } else {
    resp_subcommand_error(s, "config", &argv[1], arg_is(&argv[1], "get") || arg_is(&argv[1], "set"));
    return;
  }
  s->done = 1;
}

/* ---- transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH ------------------------
 *
 * MULTI queues each command (its arguments copied; unknown commands and
 * wrong arities are refused at once and make EXEC answer EXECABORT, as
 * Redis). EXEC runs every queued command's function as usual, but their
 * requests are gathered (resp_exec_add_step) into one EXEC request that
 * runs them as one step where the keys live (ops.c: under one hold of
 * their partitions; in a cluster one partition, replicated as one record).
 * Its reply holds each step's reply, handed to the command that sent it;
 * the commands' replies are the parts of EXEC's array. WATCH remembers each
 * key's version; EXEC sends them as checks that must hold before anything
 * runs, and answers a null array when one does not. */

/* A command queued after MULTI, its arguments copied. */
typedef struct resp_queued {
  const resp_cmd_t *cmd;
  int argc;
  resp_arg_t *argv; /* and the bytes, in the same allocation */
} resp_queued_t;

struct resp_tx {
  int dirty;          /* a command was refused when queued: EXECABORT */
  size_t n, cap;
  size_t bytes;       /* of every queued argument: at most frame_bytes_max
                         (EXEC's request has to cross to another node) */
  resp_queued_t *q;
};

typedef struct resp_step_owner {
  resp_job_t *job;
  size_t index;
} resp_step_owner_t;

/* EXEC in flight: owned by its job. */
struct resp_exec {
  resp_tx_t *tx;
  resp_slot_t *parts;        /* each queued command's reply */
  resp_job_t **jobs;         /* each one's job while it waits for steps */
  Grid__Request *steps;      /* the requests gathered, in order */
  Grid__Request **stepp;
  resp_step_owner_t *owner;  /* who sent each */
  size_t nsteps, cap;
  Grid__BatchOp *watch;      /* WATCH's versions, as checks */
  Grid__BatchOp **watchp;
  resp_watch_t **watched;    /* WATCH's keys, taken from the connection */
  size_t nwatch;
  int aborted;               /* a watched key changed */
  size_t current;            /* the queued command running */
};

static void resp_tx_free(resp_tx_t *tx) {
  if (!tx) return;
  for (size_t i = 0; i < tx->n; i++) free(tx->q[i].argv);
  free(tx->q);
  free(tx);
}

static void resp_unwatch(resp_conn_t *r) {
  for (size_t i = 0; i < r->nwatch; i++) free(r->watch[i]);
  r->nwatch = 0;
}

/* Copies a command into the transaction; 0, or -1 when out of memory. */
static int resp_tx_queue(resp_tx_t *tx, const resp_cmd_t *cmd, const resp_arg_t *argv, int argc) {
  size_t bytes = 0;
  for (int i = 0; i < argc; i++) bytes += argv[i].len + 1;
  if (tx->n == tx->cap) {
    size_t cap = tx->cap ? tx->cap * 2 : 8;
    resp_queued_t *q = realloc(tx->q, cap * sizeof *q);
    if (!q) return -1;
    tx->q = q;
    tx->cap = cap;
  }
  resp_arg_t *copy = malloc((size_t)argc * sizeof *copy + bytes);
  if (!copy) return -1;
  char *at = (char *)(copy + argc);
  for (int i = 0; i < argc; i++) {
    if (argv[i].len) memcpy(at, argv[i].p, argv[i].len);
    at[argv[i].len] = '\0';
    copy[i] = (resp_arg_t){.p = at, .len = argv[i].len};
    at += argv[i].len + 1;
  }
  tx->q[tx->n++] = (resp_queued_t){cmd, argc, copy};
  tx->bytes += bytes;
  return 0;
}

static void resp_exec_free(resp_exec_t *x) {
  if (!x) return;
  /* Commands still waiting for steps (EXEC failed whole): their jobs go. */
  for (size_t i = 0; x->jobs && i < x->tx->n; i++) {
    if (!x->jobs[i]) continue;
    if (x->jobs[i]->parts) {
      for (size_t k = 0; k < x->jobs[i]->n; k++) free(x->jobs[i]->parts[k].buf);
      free(x->jobs[i]->parts);
    }
    free(x->jobs[i]);
  }
  for (size_t i = 0; x->parts && i < x->tx->n; i++) free(x->parts[i].buf);
  free(x->parts);
  free(x->jobs);
  free(x->steps);
  free(x->stepp);
  free(x->owner);
  free(x->watch);
  free(x->watchp);
  for (size_t i = 0; x->watched && i < x->nwatch; i++) free(x->watched[i]);
  free(x->watched);
  resp_tx_free(x->tx);
  free(x);
}

static void resp_exec_job_started(resp_exec_t *x, resp_job_t *job) {
  job->queued = x->current;
  x->jobs[x->current] = job;
}

static void resp_exec_job_done(resp_exec_t *x, resp_job_t *job) {
  if (x && job->queued < x->tx->n && x->jobs[job->queued] == job) x->jobs[job->queued] = NULL;
}

static int resp_exec_add_step(resp_exec_t *x, resp_job_t *job, size_t index,
                              const Grid__Request *rq) {
  if (x->nsteps == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 16;
    Grid__Request *st = realloc(x->steps, cap * sizeof *st);
    if (!st) return -1;
    x->steps = st;
    resp_step_owner_t *ow = realloc(x->owner, cap * sizeof *ow);
    if (!ow) return -1;
    x->owner = ow;
    x->cap = cap;
  }
  x->steps[x->nsteps] = *rq; /* its bytes are the queued arguments' */
  x->owner[x->nsteps] = (resp_step_owner_t){job, index};
  x->nsteps++;
  return 0;
}

/* The reply to EXEC: each step's reply to its command, then the array. */
static void reply_exec(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  resp_exec_t *x = job->exec;
  if (rp->status == GRID_EVERSION && rp->n_steps == 0 && x->nwatch) {
    x->aborted = 1;
    return;
  }
  if (rp->status != 0) {
    resp_reply_error(job, rp);
    return;
  }
  for (size_t k = 0; k < x->nsteps; k++) {
    resp_step_owner_t *ow = &x->owner[k];
    if (k < rp->n_steps) {
      ow->job->cmd->reply(ow->job, ow->index, rp->steps[k]);
    } else {
      resp_job_error(ow->job, GRID_EINTERNAL, "the transaction's reply lacks this command's");
    }
    if (--ow->job->pending == 0) resp_job_finish(ow->job);
  }
}

static void done_exec(resp_job_t *job) {
  resp_exec_t *x = job->exec;
  if (x->aborted) {
    slot_null_array(job->slot);
    return;
  }
  for (size_t k = 0; k < x->tx->n; k++) { /* the commands answered here, in order */
    resp_queued_t *q = &x->tx->q[k];
    if (q->cmd->op == GRID__OP__OP_NONE) q->cmd->run(job->c, q->cmd, q->argv, q->argc, &x->parts[k]);
  }
  slot_printf(job->slot, "*%zu\r\n", x->tx->n);
  for (size_t k = 0; k < x->tx->n; k++) slot_put_slot(job->slot, &x->parts[k]);
}

/* Every key of the transaction in one partition of the cache (a cluster's
 * rule, as Redis Cluster's slots): 0, or -1. */
static int resp_exec_one_partition(conn_t *c, resp_exec_t *x) {
  store_cache_t *sc = store_view_find(&c->lp->view, resp_of(c)->cache,
                                      strlen(resp_of(c)->cache));
  if (!sc) return 0; /* the request says there is no such cache */
  int have = 0;
  uint32_t part = 0;
  for (size_t i = 0; i < x->nsteps + x->nwatch; i++) {
    const ProtobufCBinaryData *key;
    size_t nkeys = 1;
    if (i < x->nsteps) {
      if (!op_has(x->steps[i].op, OP_KEYED)) continue;
      key = &x->steps[i].key;
      nkeys += x->steps[i].n_keys; /* a COLL step's other keys */
    } else {
      key = &x->watch[i - x->nsteps].key;
    }
    for (size_t j = 0; j < nkeys; j++) {
      const ProtobufCBinaryData *kj = j == 0 ? key : &x->steps[i].keys[j - 1];
      store_key_t k;
      store_key_init(sc, kj->data, kj->len, &k);
      if (have && k.part != part) return -1;
      have = 1;
      part = k.part;
    }
  }
  return 0;
}

/* The request that runs the transaction; its key routes it. */
static void resp_exec_request(resp_exec_t *x, Grid__Request *rq) {
  grid__request__init(rq);
  rq->op = GRID__OP__EXEC;
  for (size_t i = 0; i < x->nsteps; i++) x->stepp[i] = &x->steps[i];
  rq->steps = x->stepp;
  rq->n_steps = x->nsteps;
  rq->watch = x->watchp;
  rq->n_watch = x->nwatch;
  for (size_t i = 0; i < x->nsteps && !rq->key.len; i++)
    if (op_has(x->steps[i].op, OP_KEYED)) rq->key = x->steps[i].key;
  if (!rq->key.len && x->nwatch) rq->key = x->watch[0].key;
}

/* WATCH's keys as EXEC's checks. -1: out of memory; -2: a key watched in
 * another database than EXEC's. */
static int resp_exec_watches(resp_conn_t *r, resp_exec_t *x) {
  if (!r->nwatch) return 0;
  x->watch = calloc(r->nwatch, sizeof *x->watch);
  x->watchp = calloc(r->nwatch, sizeof *x->watchp);
  x->watched = calloc(r->nwatch, sizeof *x->watched);
  if (!x->watch || !x->watchp || !x->watched) return -1;
  /* The keys move to x: the checks point into them. */
  memcpy(x->watched, r->watch, r->nwatch * sizeof *x->watched);
  x->nwatch = r->nwatch;
  r->nwatch = 0;
  for (size_t i = 0; i < x->nwatch; i++) {
    const resp_watch_t *w = x->watched[i];
    if (strcmp(w->cache, r->cache) != 0) return -2;
    Grid__BatchOp *b = &x->watch[i];
    grid__batch_op__init(b);
    b->kind = GRID__BATCH_KIND__BATCH_CHECK;
    b->key = (ProtobufCBinaryData){w->len, (uint8_t *)w->key};
    b->cond = w->version ? GRID__BATCH_COND__COND_VERSION : GRID__BATCH_COND__COND_ABSENT;
    b->version = w->version;
    x->watchp[i] = b;
  }
  return 0;
}

static void cmd_multi(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  (void)cmd;
  (void)argv;
  (void)argc;
  resp_conn_t *r = resp_of(c);
  if (r->tx) {
    slot_error(s, "ERR MULTI calls can not be nested");
    return;
  }
  if (!(r->tx = calloc(1, sizeof *r->tx))) {
    slot_fail(s);
    return;
  }
  slot_ok(s);
  s->done = 1;
}

static void cmd_discard(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  (void)cmd;
  (void)argv;
  (void)argc;
  resp_conn_t *r = resp_of(c);
  if (!r->tx) {
    slot_error(s, "ERR DISCARD without MULTI");
    return;
  }
  resp_tx_free(r->tx);
  r->tx = NULL;
  resp_unwatch(r);
  slot_ok(s);
  s->done = 1;
}

/* Refuses EXEC as a whole: the words in s, the transaction gone. */
static void resp_exec_refuse(resp_exec_t *x, resp_slot_t *s, const char *line) {
  resp_exec_free(x);
  slot_error(s, line);
}

static void cmd_exec(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  (void)argv;
  (void)argc;
  resp_conn_t *r = resp_of(c);
  node_t *n = c->lp->node;
  resp_tx_t *tx = r->tx;
  if (!tx) {
    slot_error(s, "ERR EXEC without MULTI");
    return;
  }
  r->tx = NULL;
  resp_exec_t *x = calloc(1, sizeof *x);
  if (!x) {
    resp_tx_free(tx);
    resp_unwatch(r);
    slot_fail(s);
    return;
  }
  x->tx = tx;
  int wrc = tx->dirty ? 0 : resp_exec_watches(r, x);
  resp_unwatch(r);
  if (tx->dirty) {
    resp_exec_refuse(x, s, "EXECABORT Transaction discarded because of previous errors.");
    return;
  }
  if (wrc == -2) {
    resp_exec_refuse(x, s, "ERR a transaction runs in the database its keys were watched in: "
                     "SELECT it again before EXEC");
    return;
  }
  x->parts = calloc(tx->n ? tx->n : 1, sizeof *x->parts);
  for (size_t i = 0; x->parts && i < tx->n; i++) x->parts[i].resp3 = s->resp3;
  x->jobs = calloc(tx->n ? tx->n : 1, sizeof *x->jobs);
  if (wrc == -1 || !x->parts || !x->jobs) {
    resp_exec_free(x);
    slot_fail(s);
    return;
  }
  /* Each queued command runs as it would alone, its requests gathered;
   * one answered here (PING, PUBLISH, CLIENT SETNAME, ...) runs once the
   * transaction did (done_exec), and not at all when it did not. */
  r->collect = x;
  for (x->current = 0; x->current < tx->n; x->current++) {
    resp_queued_t *q = &tx->q[x->current];
    if (q->cmd->op == GRID__OP__OP_NONE) continue;
    q->cmd->run(c, q->cmd, q->argv, q->argc, &x->parts[x->current]);
  }
  r->collect = NULL;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if ((int64_t)(x->nsteps + x->nwatch) > n->cfg.batch_keys_max) {
    snprintf(line, sizeof line, "ERR transaction too large: %zu keys, at most batch_keys_max "
             "(%lld)", x->nsteps + x->nwatch, (long long)n->cfg.batch_keys_max);
    resp_exec_refuse(x, s, line);
    return;
  }
  if (r->cluster && resp_exec_one_partition(c, x) != 0) {
    resp_exec_refuse(x, s, "CROSSSLOT Keys in request don't hash to the same slot");
    return;
  }
  if (!(x->stepp = calloc(x->nsteps ? x->nsteps : 1, sizeof *x->stepp))) {
    resp_exec_free(x);
    slot_fail(s);
    return;
  }
  resp_job_t *job = resp_job_start(c, cmd, s, 1);
  if (!job) {
    resp_exec_free(x);
    return;
  }
  job->exec = x;
  if (x->nsteps || x->nwatch) { /* else nothing runs where the data lives */
    Grid__Request rq;
    resp_exec_request(x, &rq);
    resp_job_submit(job, 0, &rq);
  }
  resp_job_sent(job);
}

static void reply_watch(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  resp_conn_t *r = resp_of(job->c);
  size_t at = job->base + i;
  if (at >= r->nwatch) return;
  if (rp->status == 0) r->watch[at]->version = rp->version;
  else if (rp->status == GRID_ENOTFOUND) r->watch[at]->version = 0;
  /* else not known: EXEC will abort (WATCH itself never fails in Redis) */
}

static void cmd_watch(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                      resp_slot_t *s) {
  resp_conn_t *r = resp_of(c);
  if (r->tx) {
    slot_error(s, "ERR WATCH inside MULTI is not allowed");
    return;
  }
  size_t add = (size_t)argc - 1;
  if (r->nwatch + add > r->watch_cap) {
    size_t cap = r->watch_cap ? r->watch_cap : 8;
    while (cap < r->nwatch + add) cap *= 2;
    resp_watch_t **w = realloc(r->watch, cap * sizeof *w);
    if (!w) {
      slot_fail(s);
      return;
    }
    r->watch = w;
    r->watch_cap = cap;
  }
  size_t base = r->nwatch;
  for (size_t i = 0; i < add; i++) {
    resp_watch_t *w = malloc(sizeof *w + argv[1 + i].len + 1);
    if (!w) {
      slot_fail(s);
      return;
    }
    w->version = RESP_WATCH_UNKNOWN;
    snprintf(w->cache, sizeof w->cache, "%s", r->cache);
    w->len = argv[1 + i].len;
    if (w->len) memcpy(w->key, argv[1 + i].p, w->len);
    r->watch[r->nwatch++] = w;
  }
  resp_job_t *job = resp_job_start(c, cmd, s, add);
  if (!job) return;
  job->base = base;
  /* EXEC needs these versions: nothing after WATCH is parsed until they
   * are in (a cluster answers later; a single node at once). */
  resp_job_hold_state(job);
  resp_send_keys(job, argv);
}

static void cmd_unwatch(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  (void)cmd;
  (void)argv;
  (void)argc;
  resp_unwatch(resp_of(c));
  slot_ok(s);
  s->done = 1;
}

/* Whether a command is queued after MULTI (the others run at once). */
static int resp_cmd_queued(const resp_cmd_t *cmd) {
  return cmd->run != cmd_multi && cmd->run != cmd_exec && cmd->run != cmd_discard &&
         cmd->run != cmd_watch && cmd->run != cmd_quit && cmd->run != cmd_reset;
}

/* A command after MULTI: queued ("+QUEUED"), or refused, which makes EXEC
 * answer EXECABORT. */
static void resp_tx_add(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                        resp_slot_t *s) {
  resp_tx_t *tx = resp_of(c)->tx;
  node_t *n = c->lp->node;
  char line[RESP_ERROR_LINE_BYTES_MAX];
  size_t bytes = 0;
  for (int i = 0; i < argc; i++) bytes += argv[i].len + 1;
  if (cmd->run == cmd_select || cmd->run == cmd_subscribe || cmd->run == cmd_unsubscribe ||
      cmd->run == cmd_msetnx || cmd->run == cmd_walk) {
    snprintf(line, sizeof line, "ERR %s inside MULTI is not supported by grid: run it before "
             "MULTI or after EXEC", cmd->name);
    slot_error(s, line);
    tx->dirty = 1;
    return;
  }
  if ((int64_t)tx->n >= n->cfg.batch_keys_max) {
    snprintf(line, sizeof line, "ERR transaction too large: more than batch_keys_max (%lld) "
             "commands", (long long)n->cfg.batch_keys_max);
    slot_error(s, line);
    tx->dirty = 1;
    return;
  }
  if (tx->bytes + bytes > (size_t)n->cfg.frame_bytes_max) {
    snprintf(line, sizeof line, "ERR transaction too large: its commands pass frame_bytes_max "
             "(%lld bytes)", (long long)n->cfg.frame_bytes_max);
    slot_error(s, line);
    tx->dirty = 1;
    return;
  }
  if (resp_tx_queue(tx, cmd, argv, argc) != 0) {
    slot_fail(s);
    return;
  }
  slot_put(s, "+QUEUED\r\n", 9);
  s->done = 1;
}

/* ---- hashes, lists and sets ---------------------------------------------------
 *
 * Each command is one COLL request (coll.h names them): its arguments
 * after the key, numbers and options parsed here with Redis's errors. */

/* How a collection command's reply looks. */
enum {
  COLL_R_NUMBER,     /* :n */
  COLL_R_OK,         /* +OK (HMSET, LSET, LTRIM) */
  COLL_R_VALUE,      /* a bulk, or nil */
  COLL_R_ARRAY,      /* bulks (nil items as nil), or a null array */
  COLL_R_NUMBERS,    /* integers (SMISMEMBER, LPOS ... COUNT) */
  COLL_R_SCAN,       /* cursor "0" and the items */
  COLL_R_NUMBER_NIL, /* :n, or nil (LPOS without COUNT) */
};

static int coll_shape(int sub, int flags, const resp_cmd_t *cmd) {
  switch (sub) {
    case COLL_HSET: return strcmp(cmd->name, "hmset") == 0 ? COLL_R_OK : COLL_R_NUMBER;
    case COLL_LSET: case COLL_LTRIM: case COLL_RENAME: return COLL_R_OK;
    case COLL_GETEX: return COLL_R_VALUE;
    case COLL_HGET: case COLL_HINCRBYFLOAT: case COLL_LINDEX: case COLL_LMOVE:
    case COLL_INCRBYFLOAT:
      return COLL_R_VALUE;
    case COLL_SINTER: case COLL_SUNION: case COLL_SDIFF: return COLL_R_ARRAY;
    case COLL_HRANDFIELD: case COLL_SPOP: case COLL_SRANDMEMBER: case COLL_LPOP: case COLL_RPOP:
      return flags & COLL_F_COUNT ? COLL_R_ARRAY : COLL_R_VALUE;
    case COLL_HMGET: case COLL_HGETALL: case COLL_HKEYS: case COLL_HVALS: case COLL_SMEMBERS:
    case COLL_LRANGE:
      return COLL_R_ARRAY;
    case COLL_SMISMEMBER: return COLL_R_NUMBERS;
    case COLL_LPOS: return flags & COLL_F_COUNT ? COLL_R_NUMBERS : COLL_R_NUMBER_NIL;
    case COLL_HSCAN: case COLL_SSCAN: return COLL_R_SCAN;
    default: return COLL_R_NUMBER;
  }
}

static void reply_coll(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  resp_slot_t *s = job->slot;
  if (rp->status != 0) {
    if (rp->status == GRID_EWRONGTYPE || rp->status == GRID_EMEMLIMIT) {
      slot_status_error(s, rp->status, rp->message);
    } else {
      char words[300];
      snprintf(words, sizeof words, "%s", rp->message && *rp->message ? rp->message
                                                                      : grid_strerror(rp->status));
      resp_error_words(words);
      slot_printf(s, "-ERR %s\r\n", words);
    }
    return;
  }
  switch (coll_shape(job->cmd->sub, job->flag, job->cmd)) {
    case COLL_R_NUMBER: slot_int(s, rp->number); return;
    case COLL_R_OK: slot_ok(s); return;
    case COLL_R_VALUE:
      if (rp->found) slot_bulk(s, rp->value.data, rp->value.len);
      else slot_nil(s);
      return;
    case COLL_R_NUMBER_NIL:
      if (rp->found) slot_int(s, rp->number);
      else slot_nil(s);
      return;
    case COLL_R_SCAN: slot_put(s, "*2\r\n$1\r\n0\r\n", 11); break;
    default: break;
  }
  if (!rp->found) {
    slot_null_array(s);
    return;
  }
  int sub = job->cmd->sub;
  if (s->resp3 && sub == COLL_HRANDFIELD && (job->flag & COLL_F_WITHVALUES)) {
    /* RESP3: [field, value] pairs */
    slot_num_line(s, '*', (int64_t)rp->n_entries / 2);
    for (size_t k = 0; k + 1 < rp->n_entries; k += 2) {
      slot_put(s, "*2\r\n", 4);
      slot_bulk(s, rp->entries[k]->value.data, rp->entries[k]->value.len);
      slot_bulk(s, rp->entries[k + 1]->value.data, rp->entries[k + 1]->value.len);
    }
    return;
  }
  if (sub == COLL_HGETALL) slot_agg(s, '%', (int64_t)rp->n_entries / 2);
  else if (sub == COLL_SMEMBERS || sub == COLL_SINTER || sub == COLL_SUNION || sub == COLL_SDIFF ||
           (sub == COLL_SPOP && (job->flag & COLL_F_COUNT)))
    slot_agg(s, '~', (int64_t)rp->n_entries);
  else slot_num_line(s, '*', (int64_t)rp->n_entries);
  int numbers = coll_shape(job->cmd->sub, job->flag, job->cmd) == COLL_R_NUMBERS;
  for (size_t k = 0; k < rp->n_entries; k++) {
    const Grid__Entry *e = rp->entries[k];
    if (!e->found) slot_nil(s);
    else if (numbers) slot_printf(s, ":%.*s\r\n", (int)e->value.len, (const char *)e->value.data);
    else slot_bulk(s, e->value.data, e->value.len);
  }
}

/* A count argument Redis wants at least 0. */
static int coll_positive(const resp_arg_t *a, int64_t *out, resp_slot_t *s) {
  if (arg_i64(a, out) != 0 || *out < 0) {
    slot_error(s, "ERR value is out of range, must be positive");
    return -1;
  }
  return 0;
}

static int coll_int(const resp_arg_t *a, int64_t *out, resp_slot_t *s) {
  if (arg_i64(a, out) != 0) {
    slot_error(s, "ERR value is not an integer or out of range");
    return -1;
  }
  return 0;
}

/* HRANDFIELD / SRANDMEMBER's count: a negative one may repeat members, so
 * nothing else bounds its reply: at most batch_keys_max of them. */
static int coll_random_count(conn_t *c, int64_t count, resp_slot_t *s) {
  if (count == INT64_MIN) {
    slot_error(s, "ERR value is out of range, value must between -9223372036854775807 and "
                  "9223372036854775807");
    return -1;
  }
  int64_t max = c->lp->node->cfg.batch_keys_max;
  if (count < -max) {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    snprintf(line, sizeof line, "ERR a count of %lld is past batch_keys_max (%lld): ask for fewer",
             (long long)count, (long long)max);
    slot_error(s, line);
    return -1;
  }
  return 0;
}

/* HSCAN / SSCAN key cursor [MATCH pattern] [COUNT n]: the whole collection
 * at cursor 0 (so a cursor other than 0 has nothing left). */
static int coll_scan_options(resp_arg_t *argv, int argc, int *flags, int *first, int *nargs,
                             int *empty, resp_slot_t *s) {
  uint64_t cursor = 0;
  char *end;
  char buf[32];
  if (argv[2].len == 0 || argv[2].len >= sizeof buf) {
    slot_error(s, "ERR invalid cursor");
    return -1;
  }
  memcpy(buf, argv[2].p, argv[2].len);
  buf[argv[2].len] = '\0';
  errno = 0;
  cursor = strtoull(buf, &end, 10);
  if (*end || errno || buf[0] == '-') {
    slot_error(s, "ERR invalid cursor");
    return -1;
  }
  *empty = cursor != 0;
  *first = argc; /* no arguments unless MATCH */
  *nargs = 0;
  for (int i = 3; i < argc; i += 2) {
    if (i + 1 >= argc) {
      slot_error(s, "ERR syntax error");
      return -1;
    }
    int64_t count;
    if (arg_is(&argv[i], "count")) {
      if (coll_int(&argv[i + 1], &count, s) != 0) return -1;
      if (count < 1) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
    } else if (arg_is(&argv[i], "match")) {
      *flags |= COLL_F_MATCH;
      *first = i + 1;
      *nargs = 1;
    } else {
      slot_error(s, "ERR syntax error");
      return -1;
    }
  }
  return 0;
}

/* LPOS key element [RANK r] [COUNT n] [MAXLEN m]. */
static int coll_lpos_options(resp_arg_t *argv, int argc, int *flags, int64_t *n, resp_slot_t *s) {
  for (int i = 3; i < argc; i += 2) {
    if (i + 1 >= argc) {
      slot_error(s, "ERR syntax error");
      return -1;
    }
    int64_t v;
    if (arg_is(&argv[i], "rank")) {
      if (coll_int(&argv[i + 1], &v, s) != 0) return -1;
      if (v == 0) {
        slot_error(s, "ERR RANK can't be zero: use 1 to start from the first match, 2 from the "
                      "second ... or use negative to start from the end of the list");
        return -1;
      }
      *flags |= COLL_F_RANK;
      n[0] = v;
    } else if (arg_is(&argv[i], "count")) {
      if (coll_int(&argv[i + 1], &v, s) != 0) return -1;
      if (v < 0) {
        slot_error(s, "ERR COUNT can't be negative");
        return -1;
      }
      *flags |= COLL_F_COUNT;
      n[1] = v;
    } else if (arg_is(&argv[i], "maxlen")) {
      if (coll_int(&argv[i + 1], &v, s) != 0) return -1;
      if (v < 0) {
        slot_error(s, "ERR MAXLEN can't be negative");
        return -1;
      }
      *flags |= COLL_F_MAXLEN;
      n[2] = v;
    } else {
      slot_error(s, "ERR syntax error");
      return -1;
    }
  }
  return 0;
}

/* GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST], as Redis checks
 * them. */
static int getex_options(resp_arg_t *argv, int argc, int *flags, int64_t *n, resp_slot_t *s) {
  int have = 0;
  for (int i = 2; i < argc; i++) {
    int ex = arg_is(&argv[i], "ex"), px = arg_is(&argv[i], "px");
    int exat = arg_is(&argv[i], "exat"), pxat = arg_is(&argv[i], "pxat");
    if ((ex || px || exat || pxat) && !have && i + 1 < argc) {
      int64_t v;
      if (coll_int(&argv[++i], &v, s) != 0) return -1;
      int64_t unit = ex || exat ? 1000 : 1;
      if (v <= 0 || v > INT64_MAX / unit) {
        slot_error(s, "ERR invalid expire time in 'getex' command");
        return -1;
      }
      n[0] = v * unit;
      *flags |= COLL_F_EXPIRE | (ex || px ? COLL_F_RELATIVE : 0);
      have = 1;
    } else if (arg_is(&argv[i], "persist") && !have) {
      *flags |= COLL_F_PERSIST;
      have = 1;
    } else {
      slot_error(s, "ERR syntax error");
      return -1;
    }
  }
  return 0;
}

/* The options and numbers of one command: 0, or -1 with its error in s.
 * first / nargs: the arguments the request carries. */
static int coll_parse(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc, int64_t *n,
                      int *flags, int *first, int *nargs, int *empty, resp_slot_t *s) {
  *first = 2;
  *nargs = argc - 2;
  switch (cmd->sub) {
    case COLL_HSET:
      if ((argc - 2) % 2) {
        char line[RESP_ERROR_LINE_BYTES_MAX];
        snprintf(line, sizeof line, "ERR wrong number of arguments for '%s' command", cmd->name);
        slot_error(s, line);
        return -1;
      }
      return 0;
    case COLL_HINCRBY:
      *nargs = 1;
      return coll_int(&argv[3], &n[0], s);
    case COLL_HRANDFIELD:
      *nargs = 0;
      if (argc > 4) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
      if (argc >= 3) {
        if (coll_int(&argv[2], &n[0], s) != 0 || coll_random_count(c, n[0], s) != 0) return -1;
        *flags |= COLL_F_COUNT;
      }
      if (argc == 4) {
        if (!arg_is(&argv[3], "withvalues")) {
          slot_error(s, "ERR syntax error");
          return -1;
        }
        *flags |= COLL_F_WITHVALUES;
      }
      return 0;
    case COLL_HSCAN: case COLL_SSCAN:
      return coll_scan_options(argv, argc, flags, first, nargs, empty, s);
    case COLL_SPOP: case COLL_SRANDMEMBER: case COLL_LPOP: case COLL_RPOP:
      *nargs = 0;
      if (argc > 3) {
        if (cmd->sub == COLL_LPOP || cmd->sub == COLL_RPOP) {
          char line[RESP_ERROR_LINE_BYTES_MAX];
          snprintf(line, sizeof line, "ERR wrong number of arguments for '%s' command", cmd->name);
          slot_error(s, line);
        } else {
          slot_error(s, "ERR syntax error");
        }
        return -1;
      }
      if (argc == 3) {
        int rc = cmd->sub == COLL_SRANDMEMBER
                     ? (coll_int(&argv[2], &n[0], s) || coll_random_count(c, n[0], s))
                     : coll_positive(&argv[2], &n[0], s);
        if (rc != 0) return -1;
        *flags |= COLL_F_COUNT;
      }
      return 0;
    case COLL_LRANGE: case COLL_LTRIM:
      *nargs = 0;
      if (coll_int(&argv[2], &n[0], s) != 0 || coll_int(&argv[3], &n[1], s) != 0) return -1;
      return 0;
    case COLL_LINDEX: case COLL_LSET: case COLL_LREM:
      *first = 3;
      *nargs = argc - 3;
      return coll_int(&argv[2], &n[0], s);
    case COLL_LINSERT:
      *first = 3;
      *nargs = 2;
      if (arg_is(&argv[2], "after")) *flags |= COLL_F_AFTER;
      else if (!arg_is(&argv[2], "before")) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
      return 0;
    case COLL_LPOS:
      *nargs = 1;
      return coll_lpos_options(argv, argc, flags, n, s);
    case COLL_SINTER: case COLL_SUNION: case COLL_SDIFF: case COLL_SINTERSTORE:
    case COLL_SUNIONSTORE: case COLL_SDIFFSTORE:
      *nargs = 0; /* keys only */
      return 0;
    case COLL_SMOVE:
      *first = 3;
      *nargs = 1;
      return 0;
    case COLL_SETRANGE:
      *first = 3;
      *nargs = 1;
      if (coll_int(&argv[2], &n[0], s) != 0) return -1;
      if (n[0] < 0) {
        slot_error(s, "ERR offset is out of range");
        return -1;
      }
      return 0;
    case COLL_GETBIT: case COLL_SETBIT:
      *nargs = 0;
      /* a bit of a string of at most 512 MB */
      if (arg_i64(&argv[2], &n[0]) != 0 || n[0] < 0 || n[0] >= ((int64_t)512 << 23)) {
        slot_error(s, "ERR bit offset is not an integer or out of range");
        return -1;
      }
      if (cmd->sub == COLL_SETBIT) {
        if (!arg_is(&argv[3], "0") && !arg_is(&argv[3], "1")) {
          slot_error(s, "ERR bit is not an integer or out of range");
          return -1;
        }
        n[1] = argv[3].p[0] == '1';
      }
      return 0;
    case COLL_GETEX:
      *nargs = 0;
      return getex_options(argv, argc, flags, n, s);
    case COLL_RENAME: case COLL_RENAMENX:
      *nargs = 0;
      return 0;
    case COLL_COPY:
      *nargs = 0;
      for (int i = 3; i < argc; i++) {
        int64_t db;
        if (arg_is(&argv[i], "replace")) {
          *flags |= COLL_F_REPLACE;
        } else if (arg_is(&argv[i], "db") && i + 1 < argc) {
          if (coll_int(&argv[++i], &db, s) != 0) return -1;
          /* the database this connection is in: its cache's name */
          char name[STORE_CACHE_NAME_MAX + 1];
          if (db == 0) snprintf(name, sizeof name, "default");
          else snprintf(name, sizeof name, "db%" PRId64, db);
          if (strcmp(name, resp_of(c)->cache) != 0) {
            slot_error(s, "ERR COPY to another database is not supported by grid");
            return -1;
          }
        } else {
          slot_error(s, "ERR syntax error");
          return -1;
        }
      }
      return 0;
    case COLL_BITCOUNT:
      *nargs = 0;
      if (argc == 3 || argc > 5) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
      if (argc >= 4) {
        if (coll_int(&argv[2], &n[0], s) != 0 || coll_int(&argv[3], &n[1], s) != 0) return -1;
        *flags |= COLL_F_RANGE;
      }
      if (argc == 5) {
        if (arg_is(&argv[4], "bit")) *flags |= COLL_F_BITS;
        else if (!arg_is(&argv[4], "byte")) {
          slot_error(s, "ERR syntax error");
          return -1;
        }
      }
      return 0;
    case COLL_LMOVE: {
      *nargs = 0;
      if (strcmp(cmd->name, "rpoplpush") == 0) {
        *flags |= COLL_F_FROM_RIGHT;
        return 0;
      }
      int from_right = arg_is(&argv[3], "right"), to_right = arg_is(&argv[4], "right");
      if ((!from_right && !arg_is(&argv[3], "left")) || (!to_right && !arg_is(&argv[4], "left"))) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
      *flags |= (from_right ? COLL_F_FROM_RIGHT : 0) | (to_right ? COLL_F_TO_RIGHT : 0);
      return 0;
    }
    default:
      return 0;
  }
}

/* The keys after the first of a command of several (SINTER's sources,
 * SMOVE's and LMOVE's destination): how many, from argv[2]. */
static int coll_more_keys(int sub, int argc) {
  switch (sub) {
    case COLL_SINTER: case COLL_SUNION: case COLL_SDIFF: case COLL_SINTERSTORE:
    case COLL_SUNIONSTORE: case COLL_SDIFFSTORE:
      return argc - 2;
    case COLL_SMOVE: case COLL_LMOVE: case COLL_RENAME: case COLL_RENAMENX: case COLL_COPY:
      return 1;
    default: return 0;
  }
}

/* In a cluster, a command's keys are of one partition (as Redis Cluster's
 * slots): 0, or -1 with CROSSSLOT in s. */
static int resp_keys_one_partition(conn_t *c, const resp_arg_t *keys, int n, resp_slot_t *s) {
  if (!resp_of(c)->cluster || n < 2) return 0;
  store_cache_t *sc = store_view_find(&c->lp->view, resp_of(c)->cache, strlen(resp_of(c)->cache));
  if (!sc) return 0; /* the request says there is no such cache */
  store_key_t k0, k;
  store_key_init(sc, keys[0].p, keys[0].len, &k0);
  for (int i = 1; i < n; i++) {
    store_key_init(sc, keys[i].p, keys[i].len, &k);
    if (k.part != k0.part) {
      slot_error(s, "CROSSSLOT Keys in request don't hash to the same slot");
      return -1;
    }
  }
  return 0;
}

static void cmd_coll(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  int64_t n[3] = {0, 0, 0};
  int flags = 0, first, nargs, empty = 0, more = coll_more_keys(cmd->sub, argc);
  if (coll_parse(c, cmd, argv, argc, n, &flags, &first, &nargs, &empty, s) != 0) return;
  if (resp_keys_one_partition(c, &argv[1], 1 + more, s) != 0) return;
  if (empty) { /* a scan past its only cursor */
    slot_put(s, "*2\r\n$1\r\n0\r\n*0\r\n", 15);
    s->done = 1;
    return;
  }
  ProtobufCBinaryData *vals = arena_alloc(&c->lp->arena, (size_t)(nargs + more + 1) * sizeof *vals);
  if (!vals) {
    slot_fail(s);
    return;
  }
  for (int i = 0; i < nargs; i++)
    vals[i] = (ProtobufCBinaryData){argv[first + i].len, (uint8_t *)argv[first + i].p};
  ProtobufCBinaryData *keys = vals + nargs;
  for (int i = 0; i < more; i++)
    keys[i] = (ProtobufCBinaryData){argv[2 + i].len, (uint8_t *)argv[2 + i].p};
  Grid__Request rq;
  key_request(&rq, GRID__OP__COLL, &argv[1]);
  rq.coll_cmd = (uint32_t)cmd->sub;
  rq.coll_flags = (uint32_t)flags;
  rq.delta = n[0];
  rq.n2 = n[1];
  rq.n3 = n[2];
  rq.values = vals;
  rq.n_values = (size_t)nargs;
  rq.keys = keys;
  rq.n_keys = (size_t)more;
  resp_send_one(c, cmd, s, &rq, flags);
}

/* MSETNX: one EXEC of the puts, each key checked absent first. */
static void reply_msetnx(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status == GRID_EVERSION) { /* a key exists: nothing was set */
    slot_int(job->slot, 0);
    return;
  }
  if (rp->status) {
    resp_reply_error(job, rp);
    return;
  }
  for (size_t k = 0; k < rp->n_steps; k++) {
    if (rp->steps[k]->status) {
      resp_reply_error(job, rp->steps[k]);
      return;
    }
  }
  slot_int(job->slot, 1);
}

static void cmd_msetnx(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  if ((argc - 1) % 2) {
    slot_error(s, "ERR wrong number of arguments for 'msetnx' command");
    return;
  }
  size_t k = (size_t)(argc - 1) / 2;
  arena_t *a = &c->lp->arena;
  Grid__Request *steps = arena_alloc(a, k * sizeof *steps);
  Grid__Request **stepp = arena_alloc(a, k * sizeof *stepp);
  Grid__BatchOp *w = arena_alloc(a, k * sizeof *w);
  Grid__BatchOp **wp = arena_alloc(a, k * sizeof *wp);
  resp_arg_t *keys = arena_alloc(a, k * sizeof *keys);
  if (!steps || !stepp || !w || !wp || !keys) {
    slot_fail(s);
    return;
  }
  for (size_t i = 0; i < k; i++) {
    value_request(&steps[i], GRID__OP__PUT, &argv[1 + 2 * i], &argv[2 + 2 * i]);
    steps[i].cache = resp_of(c)->cache;
    stepp[i] = &steps[i];
    grid__batch_op__init(&w[i]);
    w[i].kind = GRID__BATCH_KIND__BATCH_CHECK;
    w[i].cond = GRID__BATCH_COND__COND_ABSENT;
    w[i].key = steps[i].key;
    wp[i] = &w[i];
    keys[i] = argv[1 + 2 * i];
  }
  if (resp_keys_one_partition(c, keys, (int)k, s) != 0) return;
  Grid__Request rq;
  key_request(&rq, GRID__OP__EXEC, &argv[1]);
  rq.steps = stepp;
  rq.n_steps = k;
  rq.watch = wp;
  rq.n_watch = k;
  resp_send_one(c, cmd, s, &rq, 0);
}

/* ---- walks over every partition: SCAN, KEYS, RANDOMKEY, FLUSHDB, FLUSHALL ------
 *
 * A database is its cache's partitions; a walk reads them one after
 * another with grid's SCAN (keys only), each where its primary is. SCAN's
 * cursor is the partition's cursor times the partition count, plus the
 * partition: 0 starts, 0 again is the end, and every key present for the
 * whole scan is returned at least once (as Redis's). A FLUSH deletes what
 * each page found (DELETE_ALL) and reads the partition on: not one step
 * as Redis's, but every key there before it began is gone when it
 * answers. */

enum { WALK_SCAN = 1, WALK_KEYS, WALK_RANDOM, WALK_FLUSH };

#define RESP_SCAN_PARTS_PER_CALL 64 /* partitions one SCAN call reads at least
                                       (COUNT more), unless COUNT keys came first */

typedef struct resp_walk {
  int kind;
  char cache[STORE_CACHE_NAME_MAX + 1];
  uint32_t part, parts, visited;
  uint64_t pcursor;
  uint64_t count;           /* SCAN: keys wanted (Redis's COUNT hint) */
  char *match;              /* MATCH's pattern (copied), NULL: every key */
  size_t match_len;
  int type;                 /* SCAN TYPE: grid_value_type_t, -1 any */
  resp_slot_t acc;          /* the keys found, as bulks */
  size_t nacc;
  int found;                /* RANDOMKEY: acc holds one */
  int sending, again;       /* resp_walk_send's loop runs; a reply asked
                               for the next request meanwhile */
  int deleting;             /* FLUSH: acc's keys are to be deleted next */
  int all;                  /* FLUSHALL: every database, one after another */
  int64_t db;               /* FLUSHALL: the database being flushed */
} resp_walk_t;

static void resp_walk_free(struct resp_walk *w) {
  if (!w) return;
  free(w->match);
  free(w->acc.buf);
  free(w);
}

/* Points w at a database's cache: 0, or -1 when it does not exist. */
static int resp_walk_cache(conn_t *c, resp_walk_t *w, const char *name) {
  store_cache_t *sc = store_view_find(&c->lp->view, name, strlen(name));
  if (!sc) return -1;
  snprintf(w->cache, sizeof w->cache, "%s", name);
  w->parts = store_cache_cfg(sc)->partitions;
  w->part = 0;
  w->pcursor = 0;
  w->visited = 0;
  return 0;
}

/* FLUSHALL: the next database whose cache exists; 0, or -1 when none is left. */
static int resp_walk_next_db(conn_t *c, resp_walk_t *w) {
  for (w->db++; w->db < c->lp->node->cfg.databases; w->db++) {
    char name[STORE_CACHE_NAME_MAX + 1];
    snprintf(name, sizeof name, "db%" PRId64, w->db);
    if (resp_walk_cache(c, w, name) == 0) return 0;
  }
  return -1;
}

static void resp_walk_send(resp_job_t *job);

/* Whether the walk is over after a page (the cursor moved on). Partitions
 * are walked in order; RANDOMKEY's from a random one, around. */
static int resp_walk_over(resp_job_t *job) {
  resp_walk_t *w = job->walk;
  if (job->status) return 1;
  if (w->pcursor == 0) {
    w->part++;
    w->visited++;
    if (w->kind == WALK_RANDOM && w->part >= w->parts) w->part = 0;
  }
  int end = w->kind == WALK_RANDOM ? w->visited >= w->parts : w->part >= w->parts;
  switch (w->kind) {
    case WALK_SCAN:
      /* COUNT is the work a call does, as Redis's: partitions too */
      return end || w->nacc >= w->count ||
             w->visited >= (w->count > RESP_SCAN_PARTS_PER_CALL ? w->count : RESP_SCAN_PARTS_PER_CALL);
    case WALK_RANDOM:
      return w->found || end;
    case WALK_KEYS:
      return end;
    default:
      if (end && w->all && resp_walk_next_db(job->c, w) == 0) return 0;
      return end;
  }
}

/* A page's keys (i == 0) or a deletion's answer (i == 1). */
static void reply_walk(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  resp_walk_t *w = job->walk;
  if (rp->status != 0) {
    resp_reply_error(job, rp);
    return;
  }
  if (i == 1) { /* the page's keys are gone */
    w->deleting = 0;
    w->acc.len = 0;
    w->nacc = 0;
  } else {
    for (size_t k = 0; k < rp->n_entries; k++) {
      const Grid__Entry *e = rp->entries[k];
      if (w->type >= 0 && (int)e->type != w->type) continue;
      if (w->match && !glob_match(w->match, w->match_len, e->key.data, e->key.len)) continue;
      if (w->kind == WALK_RANDOM && w->found) break;
      slot_bulk(&w->acc, e->key.data, e->key.len);
      w->nacc++;
      w->found = 1;
    }
    w->pcursor = rp->cursor;
    if (w->kind == WALK_FLUSH && w->nacc > 0) {
      w->deleting = 1;
      resp_walk_send(job);
      return;
    }
  }
  if (!resp_walk_over(job)) resp_walk_send(job);
}

/* acc's keys (bulks) as a request's keys. */
static ProtobufCBinaryData *resp_walk_keys(resp_job_t *job) {
  resp_walk_t *w = job->walk;
  if (w->acc.failed) return NULL; /* keys missing from acc: out of memory */
  ProtobufCBinaryData *ks = malloc((w->nacc ? w->nacc : 1) * sizeof *ks);
  if (!ks) return NULL;
  const char *at = w->acc.buf;
  for (size_t k = 0; k < w->nacc; k++) {
    size_t len = (size_t)strtoull(at + 1, NULL, 10);
    at = strchr(at, '\n') + 1;
    ks[k] = (ProtobufCBinaryData){len, (uint8_t *)at};
    at += len + 2;
  }
  return ks;
}

/* Sends the walk's next request: a page, or the deletion of one. A single
 * node answers inside the send, and its reply asks for the next request
 * then: this loop sends it (no recursion, however many partitions). */
static void resp_walk_send(resp_job_t *job) {
  resp_walk_t *w = job->walk;
  if (w->sending) {
    w->again = 1;
    return;
  }
  w->sending = 1;
  do {
    w->again = 0;
    Grid__Request rq;
    grid__request__init(&rq);
    rq.cache = w->cache;
    if (w->deleting) {
      rq.op = GRID__OP__DELETE_ALL;
      if (!(rq.keys = resp_walk_keys(job))) {
        resp_job_error(job, GRID_ENOMEM, NULL);
        break;
      }
      rq.n_keys = w->nacc;
      resp_job_submit(job, 1, &rq); /* sent (or answered) before it returns */
      free(rq.keys);
      continue;
    }
    rq.op = GRID__OP__SCAN;
    rq.partition = w->part;
    rq.cursor = w->pcursor;
    rq.keys_only = 1;
    rq.count = w->kind == WALK_RANDOM ? 1
               : w->kind == WALK_SCAN ? (uint32_t)(w->count > w->nacc ? w->count - w->nacc : 1)
                                      : (uint32_t)job->c->lp->node->cfg.scan_count_max;
    resp_job_submit(job, 0, &rq);
    /* A single node answered the page in the loop's arena: nothing of it is
     * kept (keys go to acc), so a walk of any size takes one page's room. */
    if (job->embedded) arena_reset(&job->c->lp->arena);
  } while (w->again && !job->status);
  w->sending = 0;
}

static void done_walk(resp_job_t *job) {
  resp_walk_t *w = job->walk;
  resp_slot_t *s = job->slot;
  switch (w->kind) {
    case WALK_SCAN: {
      uint64_t next = w->part >= w->parts ? 0 : w->pcursor * w->parts + w->part;
      char cur[24];
      int n = snprintf(cur, sizeof cur, "%" PRIu64, next);
      slot_put(s, "*2\r\n", 4);
      slot_bulk(s, cur, (size_t)n);
      slot_num_line(s, '*', (int64_t)w->nacc);
      slot_put(s, w->acc.buf, w->acc.len);
      return;
    }
    case WALK_KEYS:
      slot_num_line(s, '*', (int64_t)w->nacc);
      slot_put(s, w->acc.buf, w->acc.len);
      return;
    case WALK_RANDOM:
      if (w->found) slot_put(s, w->acc.buf, w->acc.len);
      else slot_nil(s);
      return;
    default:
      slot_ok(s);
      return;
  }
}

/* SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. */
static int scan_options(resp_arg_t *argv, int argc, resp_walk_t *w, uint64_t *cursor,
                        resp_slot_t *s) {
  char buf[32], *end;
  if (argv[1].len == 0 || argv[1].len >= sizeof buf) {
    slot_error(s, "ERR invalid cursor");
    return -1;
  }
  memcpy(buf, argv[1].p, argv[1].len);
  buf[argv[1].len] = '\0';
  errno = 0;
  *cursor = strtoull(buf, &end, 10);
  if (*end || errno || buf[0] == '-') {
    slot_error(s, "ERR invalid cursor");
    return -1;
  }
  w->count = 10;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) {
      slot_error(s, "ERR syntax error");
      return -1;
    }
    int64_t count;
    if (arg_is(&argv[i], "count")) {
      if (coll_int(&argv[i + 1], &count, s) != 0) return -1;
      if (count < 1) {
        slot_error(s, "ERR syntax error");
        return -1;
      }
      w->count = (uint64_t)count;
    } else if (arg_is(&argv[i], "match")) {
      free(w->match); /* the last MATCH counts, as Redis */
      w->match_len = argv[i + 1].len;
      if (!(w->match = malloc(w->match_len + 1))) return -2;
      memcpy(w->match, argv[i + 1].p, w->match_len);
    } else if (arg_is(&argv[i], "type")) {
      static const char *const names[] = {"string", "hash", "list", "set"};
      w->type = 99; /* a type no key has: nothing matches (as Redis) */
      for (int t = 0; t <= GRID_TYPE_MAX; t++)
        if (arg_is(&argv[i + 1], names[t])) w->type = t;
    } else {
      slot_error(s, "ERR syntax error");
      return -1;
    }
  }
  return 0;
}

/* SCAN, KEYS, RANDOMKEY, FLUSHDB, FLUSHALL. */
static void cmd_walk(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                     resp_slot_t *s) {
  resp_walk_t *w = calloc(1, sizeof *w);
  if (!w) {
    slot_fail(s);
    return;
  }
  w->kind = cmd->sub;
  w->type = -1;
  uint64_t cursor = 0;
  if (w->kind == WALK_SCAN) {
    int rc = scan_options(argv, argc, w, &cursor, s);
    if (rc != 0) {
      resp_walk_free(w);
      if (rc == -2) slot_fail(s);
      return;
    }
  } else if (w->kind == WALK_KEYS) {
    w->match_len = argv[1].len;
    if (!(w->match = malloc(w->match_len + 1))) {
      resp_walk_free(w);
      slot_fail(s);
      return;
    }
    memcpy(w->match, argv[1].p, w->match_len);
  } else if (w->kind == WALK_FLUSH && argc > 1) {
    if (argc > 2 || (!arg_is(&argv[1], "async") && !arg_is(&argv[1], "sync"))) {
      resp_walk_free(w);
      slot_error(s, "ERR syntax error");
      return;
    }
  }
  w->all = w->kind == WALK_FLUSH && strcmp(cmd->name, "flushall") == 0;
  if (resp_walk_cache(c, w, w->all ? "default" : resp_of(c)->cache) != 0) {
    if (!w->all) {
      resp_walk_free(w);
      slot_status_error(s, GRID_ENOCACHE, NULL);
      s->done = 1;
      return;
    }
  }
  if (w->kind == WALK_SCAN && w->parts) {
    w->part = (uint32_t)(cursor % w->parts);
    w->pcursor = cursor / w->parts;
  }
  if (w->kind == WALK_RANDOM && w->parts) w->part = (uint32_t)(clock_mono_ms() % w->parts);
  resp_job_t *job = resp_job_start(c, cmd, s, 1);
  if (!job) {
    resp_walk_free(w);
    return;
  }
  job->walk = w;
  /* A flush must be over before the commands after it run (a pipelined
   * SET after FLUSHDB survives it); the other walks answer in order anyway. */
  if (w->kind == WALK_FLUSH) resp_job_hold_state(job);
  resp_walk_send(job);
  resp_job_sent(job);
}

/* OBJECT ENCODING | REFCOUNT | IDLETIME | FREQ key: one COLL request (the
 * value's encoding as Redis would keep it; grid keeps no reference counts
 * nor access times: 1 and 0). */
static void reply_object(resp_job_t *job, size_t i, const Grid__Reply *rp) {
  (void)i;
  if (rp->status) {
    resp_reply_error(job, rp);
    return;
  }
  if (!rp->found) slot_nil(job->slot);
  else if (job->flag == 1) slot_int(job->slot, 1);
  else if (job->flag == 2) slot_int(job->slot, 0);
  else slot_bulk(job->slot, rp->value.data, rp->value.len);
}

static void cmd_object(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                       resp_slot_t *s) {
  int flag;
  if (arg_is(&argv[1], "encoding") && argc == 3) flag = 0;
  else if (arg_is(&argv[1], "refcount") && argc == 3) flag = 1;
  else if (arg_is(&argv[1], "idletime") && argc == 3) flag = 2;
  else if (arg_is(&argv[1], "freq") && argc == 3) {
    slot_error(s, "ERR An LFU maxmemory policy is not selected, access frequency not tracked. "
                  "Please note that when switching between policies at runtime LRU and LFU "
                  "data will take some time to adjust.");
    return;
  } else {
    resp_subcommand_error(s, "object", &argv[1],
                          arg_is(&argv[1], "encoding") || arg_is(&argv[1], "refcount") ||
                              arg_is(&argv[1], "idletime") || arg_is(&argv[1], "freq"));
    return;
  }
  Grid__Request rq;
  key_request(&rq, GRID__OP__COLL, &argv[2]);
  rq.coll_cmd = COLL_OBJECT_ENCODING;
  resp_send_one(c, cmd, s, &rq, flag);
}

#define RESP_OP(name) GRID__OP__##name
#define RESP_LOCAL GRID__OP__OP_NONE

/* Adding a command: a row here and its function above. Columns: name,
 * arity, args_max, op, keys, run, reply, done. */
static const resp_cmd_t resp_cmds[] = {
    {"ping", -1, 2, RESP_LOCAL, RESP_KEYS_NONE, cmd_ping, NULL, NULL, 0},
    {"echo", 2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_echo, NULL, NULL, 0},
    {"quit", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_quit, NULL, NULL, 0},
    {"select", 2, 0, RESP_OP(CREATE_CACHE), RESP_KEYS_NONE, cmd_select, reply_select, NULL, 0},
    {"time", 1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_time, NULL, NULL, 0},
    {"client", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_client, NULL, NULL, 0},
    {"hello", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_hello, NULL, NULL, 0},
    {"auth", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_auth, NULL, NULL, 0},
    {"acl", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_acl, NULL, NULL, 0},
    {"info", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_info, NULL, NULL, 0},
    {"command", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_command, NULL, NULL, 0},
    {"subscribe", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_subscribe, NULL, NULL, 0},
    {"psubscribe", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_subscribe, NULL, NULL, 0},
    {"unsubscribe", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_unsubscribe, NULL, NULL, 0},
    {"punsubscribe", -1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_unsubscribe, NULL, NULL, 0},
    {"publish", 3, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_publish, NULL, NULL, 0},
    {"pubsub", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_pubsub, NULL, NULL, 0},
    {"reset", 1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_reset, NULL, NULL, 0},
    {"config", -2, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_config, NULL, NULL, 0},
    {"multi", 1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_multi, NULL, NULL, 0},
    {"exec", 1, 0, RESP_OP(EXEC), RESP_KEYS_NONE, cmd_exec, reply_exec, done_exec, 0},
    {"discard", 1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_discard, NULL, NULL, 0},
    {"watch", -2, 0, RESP_OP(TTL), RESP_KEYS_ALL, cmd_watch, reply_watch, done_ok, 0},
    {"unwatch", 1, 0, RESP_LOCAL, RESP_KEYS_NONE, cmd_unwatch, NULL, NULL, 0},
    {"get", 2, 0, RESP_OP(GET), RESP_KEYS_ONE, cmd_keys, reply_value, NULL, 0},
    {"set", -3, 0, RESP_OP(PUT), RESP_KEYS_ONE, cmd_set, reply_set, NULL, 0},
    {"setnx", 3, 0, RESP_OP(PUT), RESP_KEYS_ONE, cmd_setnx, reply_setnx, NULL, 0},
    {"setex", 4, 0, RESP_OP(PUT), RESP_KEYS_ONE, cmd_setex, reply_ok, NULL, 0},
    {"psetex", 4, 0, RESP_OP(PUT), RESP_KEYS_ONE, cmd_psetex, reply_ok, NULL, 0},
    {"getset", 3, 0, RESP_OP(GET_AND_PUT), RESP_KEYS_ONE, cmd_key_value, reply_getset, NULL, 0},
    {"getdel", 2, 0, RESP_OP(GET_AND_DELETE), RESP_KEYS_ONE, cmd_keys, reply_getset, NULL, 0},
    {"del", -2, 0, RESP_OP(DELETE), RESP_KEYS_ALL, cmd_keys, reply_count_found, done_count, 0},
    {"unlink", -2, 0, RESP_OP(DELETE), RESP_KEYS_ALL, cmd_keys, reply_count_found, done_count, 0},
    {"exists", -2, 0, RESP_OP(TTL), RESP_KEYS_ALL, cmd_keys, reply_count_found, done_count, 0},
    {"touch", -2, 0, RESP_OP(TTL), RESP_KEYS_ALL, cmd_keys, reply_count_found, done_count, 0},
    {"mget", -2, 0, RESP_OP(GET), RESP_KEYS_ALL, cmd_mget, reply_value, done_mget, 0},
    {"mset", -3, 0, RESP_OP(PUT), RESP_KEYS_PAIRS, cmd_mset, reply_errors_only, done_ok, 0},
    {"msetnx", -3, 0, RESP_OP(EXEC), RESP_KEYS_PAIRS, cmd_msetnx, reply_msetnx, NULL, 0},
    {"scan", -2, 0, RESP_OP(SCAN), RESP_KEYS_NONE, cmd_walk, reply_walk, done_walk, WALK_SCAN},
    {"keys", 2, 0, RESP_OP(SCAN), RESP_KEYS_NONE, cmd_walk, reply_walk, done_walk, WALK_KEYS},
    {"randomkey", 1, 0, RESP_OP(SCAN), RESP_KEYS_NONE, cmd_walk, reply_walk, done_walk,
     WALK_RANDOM},
    {"flushdb", -1, 0, RESP_OP(SCAN), RESP_KEYS_NONE, cmd_walk, reply_walk, done_walk,
     WALK_FLUSH},
    {"flushall", -1, 0, RESP_OP(SCAN), RESP_KEYS_NONE, cmd_walk, reply_walk, done_walk,
     WALK_FLUSH},
    {"incr", 2, 0, RESP_OP(ADD), RESP_KEYS_ONE, cmd_incr, reply_number, NULL, 0},
    {"decr", 2, 0, RESP_OP(ADD), RESP_KEYS_ONE, cmd_decr, reply_number, NULL, 0},
    {"incrby", 3, 0, RESP_OP(ADD), RESP_KEYS_ONE, cmd_incrby, reply_number, NULL, 0},
    {"decrby", 3, 0, RESP_OP(ADD), RESP_KEYS_ONE, cmd_decrby, reply_number, NULL, 0},
    {"append", 3, 0, RESP_OP(APPEND), RESP_KEYS_ONE, cmd_key_value, reply_number, NULL, 0},
    {"strlen", 2, 0, RESP_OP(GET), RESP_KEYS_ONE, cmd_keys, reply_strlen, NULL, 0},
    {"getrange", 4, 0, RESP_OP(GET), RESP_KEYS_ONE, cmd_getrange, reply_getrange, NULL, 0},
    {"substr", 4, 0, RESP_OP(GET), RESP_KEYS_ONE, cmd_getrange, reply_getrange, NULL, 0},
    {"type", 2, 0, RESP_OP(TTL), RESP_KEYS_ONE, cmd_keys, reply_type, NULL, 0},
    {"expire", -3, 0, RESP_OP(EXPIRE), RESP_KEYS_ONE, cmd_expire, reply_number, NULL,
     RESP_EXPIRE_SECONDS},
    {"pexpire", -3, 0, RESP_OP(EXPIRE), RESP_KEYS_ONE, cmd_expire, reply_number, NULL, 0},
    {"expireat", -3, 0, RESP_OP(EXPIRE), RESP_KEYS_ONE, cmd_expire, reply_number, NULL,
     RESP_EXPIRE_SECONDS | RESP_EXPIRE_AT},
    {"pexpireat", -3, 0, RESP_OP(EXPIRE), RESP_KEYS_ONE, cmd_expire, reply_number, NULL,
     RESP_EXPIRE_AT},
    {"expiretime", 2, 0, RESP_OP(TTL), RESP_KEYS_ONE, cmd_expiretime, reply_ttl, NULL, 0},
    {"pexpiretime", 2, 0, RESP_OP(TTL), RESP_KEYS_ONE, cmd_expiretime, reply_pttl, NULL, 0},
    {"persist", 2, 0, RESP_OP(EXPIRE), RESP_KEYS_ONE, cmd_persist, reply_number, NULL, 0},
    {"ttl", 2, 0, RESP_OP(TTL), RESP_KEYS_ONE, cmd_keys, reply_ttl, NULL, 0},
    {"pttl", 2, 0, RESP_OP(TTL), RESP_KEYS_ONE, cmd_keys, reply_pttl, NULL, 0},
    {"dbsize", 1, 0, RESP_OP(SIZE), RESP_KEYS_NONE, cmd_dbsize, reply_count_sum, done_count, 0},
    {"hset", -4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HSET},
    {"hmset", -4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HSET},
    {"hsetnx", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HSETNX},
    {"hget", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HGET},
    {"hmget", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HMGET},
    {"hdel", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HDEL},
    {"hexists", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HEXISTS},
    {"hlen", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HLEN},
    {"hstrlen", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HSTRLEN},
    {"hgetall", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HGETALL},
    {"hkeys", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HKEYS},
    {"hvals", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HVALS},
    {"hincrby", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HINCRBY},
    {"hincrbyfloat", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_HINCRBYFLOAT},
    {"hrandfield", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_HRANDFIELD},
    {"hscan", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_HSCAN},
    {"sadd", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SADD},
    {"srem", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SREM},
    {"smembers", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SMEMBERS},
    {"sismember", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_SISMEMBER},
    {"smismember", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_SMISMEMBER},
    {"scard", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SCARD},
    {"spop", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SPOP},
    {"srandmember", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_SRANDMEMBER},
    {"sscan", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SSCAN},
    {"sinter", -2, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_SINTER},
    {"sunion", -2, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_SUNION},
    {"sdiff", -2, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_SDIFF},
    {"sinterstore", -3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL,
     COLL_SINTERSTORE},
    {"sunionstore", -3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL,
     COLL_SUNIONSTORE},
    {"sdiffstore", -3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL,
     COLL_SDIFFSTORE},
    {"smove", 4, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_SMOVE},
    {"lpush", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LPUSH},
    {"rpush", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_RPUSH},
    {"lpushx", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LPUSHX},
    {"rpushx", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_RPUSHX},
    {"lpop", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LPOP},
    {"rpop", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_RPOP},
    {"lrange", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LRANGE},
    {"llen", 2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LLEN},
    {"lindex", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LINDEX},
    {"lset", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LSET},
    {"lrem", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LREM},
    {"ltrim", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LTRIM},
    {"linsert", 5, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LINSERT},
    {"lpos", -3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_LPOS},
    {"lmove", 5, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_LMOVE},
    {"incrbyfloat", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL,
     COLL_INCRBYFLOAT},
    {"setrange", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SETRANGE},
    {"getbit", 3, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_GETBIT},
    {"setbit", 4, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_SETBIT},
    {"bitcount", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_BITCOUNT},
    {"getex", -2, 0, RESP_OP(COLL), RESP_KEYS_ONE, cmd_coll, reply_coll, NULL, COLL_GETEX},
    {"object", -2, 0, RESP_OP(COLL), RESP_KEYS_NONE, cmd_object, reply_object, NULL, 0},
    {"rename", 3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_RENAME},
    {"renamenx", 3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_RENAMENX},
    {"copy", -3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_COPY},
    {"rpoplpush", 3, 0, RESP_OP(COLL), RESP_KEYS_ALL, cmd_coll, reply_coll, NULL, COLL_LMOVE},
};
static const size_t resp_ncmds = sizeof resp_cmds / sizeof resp_cmds[0];

/* ---- running a command ---------------------------------------------------------- */

static const resp_cmd_t *resp_cmd_find(const resp_arg_t *name) {
  for (size_t i = 0; i < resp_ncmds; i++)
    if (arg_is(name, resp_cmds[i].name)) return &resp_cmds[i];
  return NULL;
}

static void resp_unknown_command(resp_slot_t *s, resp_arg_t *argv, int argc) {
  char line[RESP_ERROR_LINE_BYTES_MAX];
  int at = snprintf(line, sizeof line, "ERR unknown command '%.*s', with args beginning with: ",
                    arg_quoted_len(&argv[0]), argv[0].p);
  /* As Redis: arguments until their text reaches 128 characters, the last
   * one cut to what is left. */
  size_t shown = 0;
  for (int i = 1; i < argc && shown < RESP_QUOTED_BYTES_MAX && at > 0 && (size_t)at < sizeof line;
       i++) {
    size_t room = RESP_QUOTED_BYTES_MAX - shown;
    int n = (int)(argv[i].len < room ? argv[i].len : room);
    at += snprintf(line + at, sizeof line - (size_t)at, "'%.*s' ", n, argv[i].p);
    shown += (size_t)n + 3;
  }
  slot_error(s, line);
}

/* Whether cmd may run on a subscribed connection (RESP2). */
static int resp_cmd_subscribed(const resp_cmd_t *cmd) {
  return cmd->run == cmd_subscribe || cmd->run == cmd_unsubscribe || cmd->run == cmd_ping ||
         cmd->run == cmd_quit || cmd->run == cmd_reset;
}

/* auth = on: whether the connection's user may run cmd, else the slot
 * has Redis's error (NOAUTH, NOPERM) and the refusal is logged. A TLS
 * client certificate naming a user logs it in at its first command. */
static int resp_cmd_authorized(conn_t *c, const resp_cmd_t *cmd, resp_arg_t *argv, int argc,
                               resp_slot_t *s) {
  node_t *n = c->lp->node;
  resp_conn_t *r = resp_of(c);
  if (!r->who && !r->cert_tried) {
    r->cert_tried = 1;
    const char *cn = c->tls && tls_sess_peer_verified(c->tls) ? tls_sess_peer_cn(c->tls) : "";
    auth_principal_t who;
    char why[200];
    if (cn[0] && auth_login_cert(n->auth, cn, c->ip, &who, 0, why, sizeof why) == 0 &&
        (r->who = malloc(sizeof who))) {
      *r->who = who;
      c->handshaken = 1;
      frame_buf_set_limit(&c->in, (size_t)n->cfg.resp_command_bytes_max + CONN_RBUF_BYTES);
    }
  }
  if (cmd->run == cmd_auth || cmd->run == cmd_hello || cmd->run == cmd_quit ||
      cmd->run == cmd_reset)
    return 1;
  if (!r->who) {
    slot_error(s, "NOAUTH Authentication required.");
    return 0;
  }
  /* The role the command needs, on the connection's database ("*": on
   * any cache, for channels). */
  int level = AUTH_READ;
  const char *cache = r->cache;
  if (cmd->op == RESP_LOCAL) {
    if (cmd->run == cmd_publish) {
      level = AUTH_WRITE;
      cache = "*";
    } else if (cmd->run == cmd_subscribe || cmd->run == cmd_pubsub) {
      cache = "*";
    } else if (cmd->run == cmd_config && argc > 1 && arg_is(&argv[1], "set")) {
      level = AUTH_ADMIN;
      cache = NULL;
    } else {
      level = 0;
    }
  } else if (cmd->run == cmd_select || cmd->run == cmd_exec) {
    level = 0; /* EXEC's commands were checked as they were queued */
  } else if (cmd->run == cmd_walk && cmd->sub == WALK_FLUSH) {
    level = strcmp(cmd->name, "flushall") ? AUTH_WRITE : AUTH_ADMIN;
    if (level == AUTH_ADMIN) cache = NULL;
  } else if (cmd->op == GRID__OP__COLL) {
    level = coll_cmd_writes(cmd->sub) ? AUTH_WRITE : AUTH_READ;
  } else if (op_is_write(cmd->op)) {
    level = AUTH_WRITE;
  }
  int scoped = 0;
  char why[256];
  int rc = auth_allow_level(n->auth, r->who, level, cache, &scoped, why, sizeof why);
  if (rc == 0) return 1;
  LOG_W("auth", "\"command refused\" user=%s peer=%s command=%s reason=\"%s\"", r->who->name,
        c->peer, cmd->name, why);
  if (rc == GRID_EAUTH) {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    snprintf(line, sizeof line, "NOAUTH %s", why);
    slot_error(s, line);
    resp_logout(c);
    return 0;
  }
  char line[RESP_ERROR_LINE_BYTES_MAX];
  if (cache && !strcmp(cache, "*"))
    snprintf(line, sizeof line, "NOPERM this user has no permissions to access one of the "
             "channels used as arguments");
  else if (scoped)
    snprintf(line, sizeof line, "NOPERM this user has no permissions to access one of the keys "
             "used as arguments");
  else
    snprintf(line, sizeof line, "NOPERM this user has no permissions to run the '%s' command",
             cmd->name);
  slot_error(s, line);
  return 0;
}

static void resp_run(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  resp_tx_t *tx = resp_of(c)->tx;
  const resp_cmd_t *cmd = resp_cmd_find(&argv[0]);
  if (!cmd) {
    atomic_fetch_add_explicit(&c->lp->node->resp_rejected, 1, memory_order_relaxed);
    resp_unknown_command(s, argv, argc);
    if (tx) tx->dirty = 1;
    return;
  }
  if ((cmd->arity > 0 && argc != cmd->arity) || (cmd->arity < 0 && argc < -cmd->arity) ||
      (cmd->args_max && argc > cmd->args_max)) {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    atomic_fetch_add_explicit(&c->lp->node->resp_rejected, 1, memory_order_relaxed);
    snprintf(line, sizeof line, "ERR wrong number of arguments for '%s' command", cmd->name);
    if (cmd->run == cmd_exec) { /* as Redis: EXEC refused ends the transaction */
      snprintf(line, sizeof line, "EXECABORT Transaction discarded because of: wrong number of "
               "arguments for '%s' command", cmd->name);
      resp_tx_free(tx);
      resp_of(c)->tx = tx = NULL;
      resp_unwatch(resp_of(c));
    }
    slot_error(s, line);
    if (tx) tx->dirty = 1;
    return;
  }
  if (auth_required(c->lp->node->auth) && !resp_cmd_authorized(c, cmd, argv, argc, s)) {
    atomic_fetch_add_explicit(&c->lp->node->resp_rejected, 1, memory_order_relaxed);
    if (tx) tx->dirty = 1;
    return;
  }
  /* RESP2's subscribed mode; RESP3 takes every command alongside pushes. */
  if (!resp_of(c)->resp3 && pubsub_client_count(&resp_of(c)->ps) && !resp_cmd_subscribed(cmd)) {
    char line[RESP_ERROR_LINE_BYTES_MAX];
    atomic_fetch_add_explicit(&c->lp->node->resp_rejected, 1, memory_order_relaxed);
    snprintf(line, sizeof line, "ERR Can't execute '%s': only (P|S)SUBSCRIBE / "
             "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", cmd->name);
    slot_error(s, line);
    return;
  }
  if (tx && resp_cmd_queued(cmd)) {
    resp_tx_add(c, cmd, argv, argc, s);
    return;
  }
  cmd->run(c, cmd, argv, argc, s);
}

/* Runs one parsed command; its reply goes in a slot of its own, or, on a
 * single node, straight to the connection. */
static void resp_dispatch(conn_t *c, resp_arg_t *argv, int argc) {
  resp_conn_t *r = resp_of(c);
  resp_slot_t *s = resp_slot_new(r);
  if (!s) {
    r->ending = 1; /* no room for its reply: the ones before go out, then the close */
    return;
  }
  resp_run(c, argv, argc, s);
  if (!r->cluster) resp_write_direct(c);
}

/* ---- input ------------------------------------------------------------------ */

void resp_fail(conn_t *c, const char *why) {
  /* Whatever was answered goes first, then the error, then the close. */
  resp_flush_slots(c);
  char words[240];
  snprintf(words, sizeof words, "%s", why);
  resp_error_words(words);
  char line[256];
  int n = snprintf(line, sizeof line, "-ERR %s\r\n", words);
  if (n > 0) conn_out(c, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  conn_close_when_written(c);
}

/* Whether the command at off may be parsed now. Not while the replies
 * waiting to be written pass output_bytes_max (reading pauses too), nor
 * while resp_pipeline_max commands wait for theirs: both are tried to be
 * written first. */
static int resp_input_may_go_on(conn_t *c, size_t off) {
  resp_conn_t *r = resp_of(c);
  size_t pipeline_max = (size_t)c->lp->node->cfg.resp_pipeline_max;
  if (c->closing || r->ending || r->broken || uv_is_closing((uv_handle_t *)&c->tcp) ||
      off >= c->in.len)
    return 0;
  if (conn_output_full(c)) {
    /* Try to make room first: the socket may take it all at once. */
    resp_flush_slots(c);
    conn_flush(c);
    if (conn_output_full(c) || uv_is_closing((uv_handle_t *)&c->tcp)) return 0;
  }
  if (r->state_pending) return 0; /* resp_input_resume goes on */
  if (!resp_pipeline_has_room(&r->pipe, pipeline_max)) {
    /* Replies complete but not written still count: write them first. */
    resp_flush_slots(c);
    if (!resp_pipeline_has_room(&r->pipe, pipeline_max)) return 0;
  }
  return !c->closing && off < c->in.len; /* a failed write closes */
}

void resp_input(conn_t *c) {
  resp_conn_t *r = resp_of(c);
  node_t *n = c->lp->node;
  /* Until it logs in, a connection's commands are small (as Redis's
   * unauthenticated bounds). */
  int stranger = auth_required(n->auth) && !r->who;
  const resp_parse_limits_t limits = {
      stranger ? RESP_UNAUTH_ARGS_MAX : n->cfg.resp_args_max,
      (size_t)(stranger ? n->cfg.unauthenticated_bytes_max : n->cfg.resp_command_bytes_max),
      RESP_PARSE_INLINE_BYTES_MAX};
  if (r->parsing) return;
  r->parsing = 1;
  size_t off = 0;
  while (resp_input_may_go_on(c, off)) {
    resp_command_t cmd;
    resp_parse_result_t pr = resp_parse_next(&r->parser, (const char *)c->in.data + off,
                                             c->in.len - off, &limits, &cmd);
    if (pr == RESP_PARSE_ERROR) resp_fail(c, cmd.why);
    if (pr != RESP_PARSE_DONE) break;
    if (cmd.argc > 0) resp_dispatch(c, cmd.argv, cmd.argc);
    off += cmd.used;
    arena_reset(&c->lp->arena);
  }
  r->parsing = 0;
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  conn_consumed(c, off);
  resp_flush_slots(c);
  conn_flush(c);
  if (!c->closing && conn_output_full(c)) conn_pause(c);
  /* A full pipeline stops reading too, so the buffer does not fill up
   * with commands that cannot be parsed yet: resp_input_resume goes on. */
  if (!c->closing && !c->held &&
      (r->state_pending ||
       !resp_pipeline_has_room(&r->pipe, (size_t)c->lp->node->cfg.resp_pipeline_max)))
    conn_hold(c);
}

static void resp_on_resume(loop_t *lp, void *arg) {
  (void)lp;
  conn_t *c = arg;
  resp_of(c)->resume_posted = 0;
  if (c->held) conn_release(c); /* parses, then reads again */
  else resp_input(c);
  conn_unref(c);
}

/* A reply was written: if that drained a full pipeline, the commands left
 * in the read buffer are parsed again and reading goes on. Not from here
 * (a reply arrives from deep in route, peer or repl, which a new request
 * must not re-enter) but as a task of this loop, holding a reference until
 * it runs. */
static void resp_input_resume(conn_t *c) {
  resp_conn_t *r = resp_of(c);
  size_t pipeline_max = (size_t)c->lp->node->cfg.resp_pipeline_max;
  if ((!r->pipe.full && !c->held) || r->state_pending || r->parsing || r->resume_posted ||
      c->closing ||
      uv_is_closing((uv_handle_t *)&c->tcp) || !resp_pipeline_has_room(&r->pipe, pipeline_max) ||
      (c->in.len == 0 && !c->held))
    return;
  r->resume_posted = 1;
  r->resume_task = (loop_task_t){.fn = resp_on_resume, .arg = c};
  conn_ref(c);
  loop_post(c->lp, c->lp->index, &r->resume_task);
}

/* ---- the protocol's table ----------------------------------------------------- */

static int resp_open(conn_t *c) {
  node_t *n = c->lp->node;
  resp_conn_t *r = resp_conn_new(n->cluster != NULL);
  if (!r) return GRID_ENOMEM;
  c->fe = r;
  r->conn = c;
  pubsub_client_init(&r->ps, c->lp, resp_deliver);
  /* No handshake: commands at once, each within resp_command_bytes_max.
   * With auth on, a stranger's until AUTH: within handshake_timeout_ms,
   * each command within unauthenticated_bytes_max. */
  int stranger = auth_required(n->auth);
  c->handshaken = !stranger;
  frame_buf_set_limit(&c->in, (size_t)(stranger ? n->cfg.unauthenticated_bytes_max
                                                 : n->cfg.resp_command_bytes_max) +
                                  CONN_RBUF_BYTES);
  return 0;
}

static void resp_conn_fail(conn_t *c, int status, const char *detail) {
  if (c->closing) return;
  char why[256];
  snprintf(why, sizeof why, "%s%s%s", grid_strerror(status), detail ? ": " : "",
           detail ? detail : "");
  resp_fail(c, why);
}

static void resp_free(conn_t *c) {
  resp_conn_t *r = c->fe;
  if (r) pubsub_client_close(c->lp->node->pubsub, &r->ps);
  resp_conn_free(c->fe);
  c->fe = NULL;
}

const conn_proto_t resp_proto = {
    .name = "resp",
    .framed = 0,
    .open = resp_open,
    .input = resp_input,
    .fail = resp_conn_fail,
    .free = resp_free,
};
