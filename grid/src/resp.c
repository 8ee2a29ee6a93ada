#include "resp.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "clock.h"
#include "cluster.h"
#include "grid_types.h"
#include "log.h"
#include "net_int.h"
#include "node.h"
#include "ops.h"
#include "repl.h"
#include "route.h"
#include "store.h"

#define RESP_INLINE_BYTES_MAX (64 * 1024) /* an inline command, or a count line */
#define RESP_ARGV_STACK 16

/* ---- per connection ------------------------------------------------------- */

/* One command's reply; replies leave in command order. */
typedef struct resp_slot {
  struct resp_slot *next;
  int done;
  char *buf;
  size_t len, cap;
} resp_slot_t;

typedef struct resp_job resp_job_t;

struct resp_conn {
  resp_slot_t *head, *tail;  /* replies not written yet, oldest first */
  resp_slot_t direct;        /* a single node answers every command at once:
                                its reply is built here and written as is */
  resp_job_t *job;           /* ... and its one command in flight here */
  int cluster;               /* answers may come later: slots keep order */
  char cache[STORE_CACHE_NAME_MAX + 1];
  char name[128];            /* CLIENT SETNAME */
  int quit;                  /* QUIT: close once the replies are out */
  char why[64];              /* words of a protocol error being reported */
  /* An unfinished multibulk command, so that a command arriving in many
   * reads is looked at once, not again from its start on every read
   * (which is quadratic in its size). Offsets count from the command's
   * first byte, which stays the first unconsumed byte of the read buffer
   * (the buffer may move or grow between reads: offsets survive that). */
  int64_t mb_count;          /* arguments announced; 0: no command begun */
  int64_t mb_got;            /* arguments complete */
  size_t mb_pos;             /* the next byte to look at; inline: bytes
                                already searched for the line's end */
  struct resp_span { size_t off, len; } *spans; /* complete arguments */
  size_t spans_cap;
  struct resp_arg *argv;     /* a command's arguments past RESP_ARGV_STACK */
  size_t argv_cap;
};

resp_conn_t *resp_conn_new(int cluster) {
  resp_conn_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  strcpy(r->cache, "default");
  r->cluster = cluster;
  return r;
}

void resp_conn_free(resp_conn_t *r) {
  if (!r) return;
  free(r->spans);
  free(r->argv);
  free(r->direct.buf);
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

static void slot_put(resp_slot_t *s, const void *p, size_t n) {
  if (n == 0) return; /* an empty value may come as NULL (protobuf-c) */
  if (s->cap - s->len < n) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    while (cap - s->len < n) cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b) return; /* the reply comes out short; the client sees a protocol error */
    s->buf = b;
    s->cap = cap;
  }
  memcpy(s->buf + s->len, p, n);
  s->len += n;
}

static void slot_printf(resp_slot_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slot_printf(resp_slot_t *s, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  slot_put(s, line, (size_t)n);
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

static void slot_nil(resp_slot_t *s) { slot_put(s, "$-1\r\n", 5); }
static void slot_ok(resp_slot_t *s) { slot_put(s, "+OK\r\n", 5); }
static void slot_int(resp_slot_t *s, int64_t v) { slot_num_line(s, ':', v); }

/* A grid status as the error Redis gives in the same case. */
static void slot_status_error(resp_slot_t *s, int status, const char *message) {
  switch (status) {
    case GRID_ENOTNUM: slot_printf(s, "-ERR value is not an integer or out of range\r\n"); break;
    case GRID_EOVERFLOW: slot_printf(s, "-ERR increment or decrement would overflow\r\n"); break;
    case GRID_EMEMLIMIT:
      slot_printf(s, "-OOM command not allowed when used memory > 'maxmemory'.\r\n");
      break;
    default: {
      /* No line breaks may go into an error line. */
      char words[300];
      snprintf(words, sizeof words, "%s", message && *message ? message : grid_strerror(status));
      for (char *p = words; *p; p++)
        if (*p == '\r' || *p == '\n') *p = ' ';
      slot_printf(s, "-ERR %s\r\n", words);
    }
  }
}

/* Writes the replies that are complete and have no unfinished one before
 * them. */
static void resp_flush_slots(conn_t *c) {
  resp_conn_t *r = c->resp;
  while (r->head && r->head->done) {
    resp_slot_t *s = r->head;
    r->head = s->next;
    if (!r->head) r->tail = NULL;
    if (s->len && conn_out(c, s->buf, s->len) != 0) conn_close_when_written(c);
    free(s->buf);
    free(s);
  }
  if (!r->head && r->quit) conn_close_when_written(c);
}

static resp_slot_t *resp_slot_new(resp_conn_t *r) {
  if (!r->cluster) {
    r->direct.done = 0;
    return &r->direct; /* written when the command returns */
  }
  resp_slot_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  if (r->tail) r->tail->next = s;
  else r->head = s;
  r->tail = s;
  return s;
}

/* ---- commands that become requests ------------------------------------------ */

enum {
  CMD_GET, CMD_SET, CMD_SETNX, CMD_SETEX, CMD_GETSET, CMD_GETDEL, CMD_DEL, CMD_EXISTS,
  CMD_MGET, CMD_MSET, CMD_INCR, CMD_APPEND, CMD_STRLEN, CMD_EXPIRE, CMD_PERSIST, CMD_TTL,
  CMD_PTTL, CMD_DBSIZE,
};

/* A command in flight: one request per key, merged when all are in. */
struct resp_job {
  int embedded;             /* the connection's own (a single node's) */
  conn_t *c;
  resp_slot_t *slot;
  int cmd;
  int flag;                 /* SET: 1 = GET option */
  int pending;              /* requests not answered, plus one while sending */
  size_t n;                 /* requests */
  int64_t count;            /* DEL / EXISTS / DBSIZE */
  int status;               /* first error */
  char message[200];
  resp_slot_t *parts;       /* MGET: each key's reply, in order */
};

typedef struct resp_sub {
  resp_job_t *job;
  size_t index;
  int heap;                 /* freed by resp_sub_fn */
} resp_sub_t;

static void resp_job_error(resp_job_t *job, int status, const char *message) {
  if (job->status) return;
  job->status = status;
  snprintf(job->message, sizeof job->message, "%s", message ? message : "");
}

static void resp_job_finish(resp_job_t *job) {
  resp_slot_t *s = job->slot;
  if (job->status) {
    slot_status_error(s, job->status, job->message);
  } else {
    switch (job->cmd) {
      case CMD_DEL: case CMD_EXISTS: case CMD_DBSIZE: slot_int(s, job->count); break;
      case CMD_MSET: slot_ok(s); break;
      case CMD_MGET:
        slot_printf(s, "*%zu\r\n", job->n);
        for (size_t i = 0; i < job->n; i++) slot_put(s, job->parts[i].buf, job->parts[i].len);
        break;
      default: break; /* single-key commands wrote their reply already */
    }
  }
  if (job->parts) {
    for (size_t i = 0; i < job->n; i++) free(job->parts[i].buf);
    free(job->parts);
  }
  s->done = 1;
  if (job->embedded) return; /* resp_dispatch writes the reply */
  conn_t *c = job->c;
  free(job);
  resp_flush_slots(c);
  conn_flush(c);
  conn_unref(c);
}

/* One request's reply, turned into the command's. */
static void resp_sub_fn(net_loop_t *lp, void *arg, const Grid__Reply *rp) {
  (void)lp;
  resp_sub_t *sub = arg;
  resp_job_t *job = sub->job;
  size_t i = sub->index;
  if (sub->heap) free(sub);
  resp_slot_t *s = job->slot;
  int st = rp->status;
  const char *msg = rp->message;
  switch (job->cmd) {
    case CMD_GET:
      if (st == 0) slot_bulk(s, rp->value.data, rp->value.len);
      else if (st == GRID_ENOTFOUND) slot_nil(s);
      else resp_job_error(job, st, msg);
      break;
    case CMD_SET:
      if (job->flag) { /* GET: the old value, set or not */
        if (st == 0 || st == GRID_EEXIST || st == GRID_ENOTFOUND) {
          if (rp->found) slot_bulk(s, rp->value.data, rp->value.len);
          else slot_nil(s);
        } else {
          resp_job_error(job, st, msg);
        }
      } else if (st == 0) {
        slot_ok(s);
      } else if (st == GRID_EEXIST || st == GRID_ENOTFOUND) {
        slot_nil(s); /* NX / XX not met */
      } else {
        resp_job_error(job, st, msg);
      }
      break;
    case CMD_SETNX:
      if (st == 0) slot_int(s, 1);
      else if (st == GRID_EEXIST) slot_int(s, 0);
      else resp_job_error(job, st, msg);
      break;
    case CMD_SETEX:
      if (st == 0) slot_ok(s);
      else resp_job_error(job, st, msg);
      break;
    case CMD_GETSET: case CMD_GETDEL:
      if (st == 0 || st == GRID_ENOTFOUND) {
        if (rp->found) slot_bulk(s, rp->value.data, rp->value.len);
        else slot_nil(s);
      } else {
        resp_job_error(job, st, msg);
      }
      break;
    case CMD_DEL:
      if (st == 0) job->count++;
      else if (st != GRID_ENOTFOUND) resp_job_error(job, st, msg);
      break;
    case CMD_EXISTS:
      if (st == 0) job->count++;
      else if (st != GRID_ENOTFOUND) resp_job_error(job, st, msg);
      break;
    case CMD_MGET: {
      resp_slot_t *part = &job->parts[i];
      if (st == 0) slot_bulk(part, rp->value.data, rp->value.len);
      else if (st == GRID_ENOTFOUND) slot_nil(part);
      else resp_job_error(job, st, msg);
      break;
    }
    case CMD_MSET:
      if (st != 0) resp_job_error(job, st, msg);
      break;
    case CMD_INCR:
      if (st == 0) slot_int(s, rp->number);
      else resp_job_error(job, st, msg);
      break;
    case CMD_APPEND:
      if (st == 0) slot_int(s, rp->number);
      else resp_job_error(job, st, msg);
      break;
    case CMD_STRLEN:
      if (st == 0) slot_int(s, (int64_t)rp->value.len);
      else if (st == GRID_ENOTFOUND) slot_int(s, 0);
      else resp_job_error(job, st, msg);
      break;
    case CMD_EXPIRE: case CMD_PERSIST:
      if (st == 0) slot_int(s, rp->number);
      else resp_job_error(job, st, msg);
      break;
    case CMD_TTL: case CMD_PTTL:
      if (st == GRID_ENOTFOUND) slot_int(s, -2);
      else if (st != 0) resp_job_error(job, st, msg);
      else if (rp->number < 0) slot_int(s, -1);
      else slot_int(s, job->cmd == CMD_TTL ? (rp->number + 500) / 1000 : rp->number);
      break;
    case CMD_DBSIZE:
      if (st == 0) job->count += rp->number;
      else resp_job_error(job, st, msg);
      break;
  }
  if (--job->pending == 0) resp_job_finish(job);
}

/* Runs one request of a job: here on a single node, routed in a cluster. */
static void resp_submit(resp_job_t *job, size_t index, Grid__Request *rq) {
  conn_t *c = job->c;
  net_loop_t *lp = c->lp;
  node_t *n = lp->net->node;
  job->pending++;
  rq->cache = c->resp->cache;
  if (n->cluster) {
    resp_sub_t *sub = malloc(sizeof *sub);
    if (!sub) {
      job->pending--;
      resp_job_error(job, GRID_ENOMEM, NULL);
      return;
    }
    *sub = (resp_sub_t){job, index, 1};
    route_keyed(lp, rq, (repl_sink_t){resp_sub_fn, sub, lp->index});
    return;
  }
  /* Here and now: the loop's arena, reset after each command. */
  resp_sub_t sub = {job, index, 0};
  Grid__Reply rp = GRID__REPLY__INIT;
  ops_execute(n, &lp->view, rq, &rp, &lp->arena);
  resp_sub_fn(lp, &sub, &rp);
}

static resp_job_t *resp_job_new(conn_t *c, int cmd, size_t n) {
  resp_conn_t *r = c->resp;
  resp_job_t *job;
  if (!r->cluster) {
    if (!r->job && !(r->job = malloc(sizeof *r->job))) return NULL;
    job = r->job;
    memset(job, 0, sizeof *job);
    job->embedded = 1;
  } else {
    job = calloc(1, sizeof *job);
    if (!job) return NULL;
  }
  resp_slot_t *slot = resp_slot_new(r);
  if (!slot) {
    if (!job->embedded) free(job);
    return NULL;
  }
  job->c = c;
  job->slot = slot;
  job->cmd = cmd;
  job->n = n;
  job->pending = 1;
  if (!job->embedded) conn_ref(c);
  return job;
}

/* ---- argument helpers ------------------------------------------------------- */

typedef struct resp_arg {
  const char *p;
  size_t len;
} resp_arg_t; /* struct resp_arg: also in resp_conn */

static int arg_is(const resp_arg_t *a, const char *word) {
  return a->len == strlen(word) && strncasecmp(a->p, word, a->len) == 0;
}

/* A whole signed 64-bit decimal, as Redis's string2ll. */
static int arg_i64(const resp_arg_t *a, int64_t *out) {
  char buf[32];
  if (a->len == 0 || a->len >= sizeof buf) return -1;
  memcpy(buf, a->p, a->len);
  buf[a->len] = '\0';
  if (buf[0] == '+' || isspace((unsigned char)buf[0])) return -1;
  if (buf[0] == '0' && a->len > 1) return -1;
  if (buf[0] == '-' && (a->len == 1 || buf[1] == '0')) return -1;
  errno = 0;
  char *end;
  long long v = strtoll(buf, &end, 10);
  if (*end || errno) return -1;
  *out = v;
  return 0;
}

static void key_request(Grid__Request *rq, Grid__Op op, const resp_arg_t *key) {
  grid__request__init(rq);
  rq->op = op;
  rq->key.data = (uint8_t *)key->p;
  rq->key.len = key->len;
}

/* ---- the command table ------------------------------------------------------ */

typedef struct resp_cmd {
  const char *name;
  int arity;         /* as Redis: n exact, -n at least n */
  void (*run)(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s);
  int cmd;           /* CMD_* for the keyed ones */
  int args_max;      /* arguments at most, command included; 0: no bound */
} resp_cmd_t;

/* An error line's text may quote the client's own bytes: a CR or LF in it
 * would end the line early and let the rest read as a reply of its own, so
 * both become spaces (as Redis does). */
static void resp_error_words(char *text) {
  for (char *p = text; *p; p++)
    if (*p == '\r' || *p == '\n') *p = ' ';
}

static void run_simple_error(conn_t *c, resp_slot_t *s, const char *text) {
  (void)c;
  char line[512];
  snprintf(line, sizeof line, "%s", text);
  resp_error_words(line);
  slot_printf(s, "-%s\r\n", line);
  s->done = 1;
}

static void run_keyed(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s, int cmd);

static void cmd_ping(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)c;
  if (argc == 1) slot_put(s, "+PONG\r\n", 7);
  else slot_bulk(s, argv[1].p, argv[1].len);
  s->done = 1;
}

static void cmd_echo(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)c;
  (void)argc;
  slot_bulk(s, argv[1].p, argv[1].len);
  s->done = 1;
}

static void cmd_quit(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)argv;
  (void)argc;
  slot_ok(s);
  s->done = 1;
  c->resp->quit = 1;
}

static void cmd_select(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)argc;
  /* SELECT 0 is the default cache; SELECT <n> the cache "db<n>"; SELECT
   * <name> the cache of that name: a cache must exist to be selected. */
  char name[STORE_CACHE_NAME_MAX + 1];
  int64_t idx;
  if (arg_i64(&argv[1], &idx) == 0) {
    if (idx < 0) {
      run_simple_error(c, s, "ERR DB index is out of range");
      return;
    }
    if (idx == 0) snprintf(name, sizeof name, "default");
    else snprintf(name, sizeof name, "db%" PRId64, idx);
  } else {
    if (argv[1].len > STORE_CACHE_NAME_MAX) {
      run_simple_error(c, s, "ERR DB index is out of range");
      return;
    }
    memcpy(name, argv[1].p, argv[1].len);
    name[argv[1].len] = '\0';
  }
  if (!store_view_find(&c->lp->view, name, strlen(name))) {
    run_simple_error(c, s, "ERR DB index is out of range");
    return;
  }
  snprintf(c->resp->cache, sizeof c->resp->cache, "%s", name);
  slot_ok(s);
  s->done = 1;
}

static void cmd_client(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  resp_conn_t *r = c->resp;
  static const struct { const char *sub; int argc; } arity[] = {
      {"setname", 3}, {"getname", 2}, {"id", 2}, {"setinfo", 4}};
  for (size_t i = 0; i < sizeof arity / sizeof arity[0]; i++) {
    if (arg_is(&argv[1], arity[i].sub) && argc != arity[i].argc) {
      char line[120];
      snprintf(line, sizeof line, "ERR wrong number of arguments for 'client|%s' command",
               arity[i].sub);
      run_simple_error(c, s, line);
      return;
    }
  }
  if (arg_is(&argv[1], "setname") && argc == 3) {
    for (size_t i = 0; i < argv[2].len; i++) {
      if (argv[2].p[i] <= ' ' || argv[2].p[i] > '~') {
        run_simple_error(c, s, "ERR Client names cannot contain spaces, newlines or special characters.");
        return;
      }
    }
    snprintf(r->name, sizeof r->name, "%.*s", (int)argv[2].len, argv[2].p);
    slot_ok(s);
  } else if (arg_is(&argv[1], "getname") && argc == 2) {
    if (r->name[0]) slot_bulk(s, r->name, strlen(r->name));
    else slot_nil(s);
  } else if (arg_is(&argv[1], "id") && argc == 2) {
    slot_int(s, (int64_t)(uintptr_t)c & 0x7fffffff);
  } else if (arg_is(&argv[1], "setinfo") && argc == 4) {
    slot_ok(s);
  } else {
    char line[200];
    snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try CLIENT HELP.",
             (int)(argv[1].len > 128 ? 128 : argv[1].len), argv[1].p);
    run_simple_error(c, s, line);
    return;
  }
  s->done = 1;
}

static void cmd_hello(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  if (argc >= 2) {
    int64_t ver;
    if (arg_i64(&argv[1], &ver) != 0) {
      run_simple_error(c, s, "ERR Protocol version is not an integer or out of range");
      return;
    }
    if (ver != 2) {
      run_simple_error(c, s, "NOPROTO unsupported protocol version");
      return;
    }
    for (int i = 2; i < argc; i++) {
      if (arg_is(&argv[i], "setname") && i + 1 < argc) {
        snprintf(c->resp->name, sizeof c->resp->name, "%.*s", (int)argv[i + 1].len, argv[i + 1].p);
        i++;
      } else if (arg_is(&argv[i], "auth") && i + 2 < argc) {
        i += 2; /* no users yet: every client is let in */
      } else {
        char line[200];
        snprintf(line, sizeof line, "ERR Syntax error in HELLO option '%.*s'",
                 (int)(argv[i].len > 128 ? 128 : argv[i].len), argv[i].p);
        run_simple_error(c, s, line);
        return;
      }
    }
  }
  slot_printf(s, "*14\r\n");
  slot_bulk(s, "server", 6);
  slot_bulk(s, "grid", 4);
  slot_bulk(s, "version", 7);
  slot_bulk(s, GRID_VERSION_STRING, strlen(GRID_VERSION_STRING));
  slot_bulk(s, "proto", 5);
  slot_int(s, 2);
  slot_bulk(s, "id", 2);
  slot_int(s, (int64_t)(uintptr_t)c & 0x7fffffff);
  slot_bulk(s, "mode", 4);
  slot_bulk(s, c->lp->net->node->cluster ? "cluster" : "standalone",
            c->lp->net->node->cluster ? 7 : 10);
  slot_bulk(s, "role", 4);
  slot_bulk(s, "master", 6);
  slot_bulk(s, "modules", 7);
  slot_printf(s, "*0\r\n");
  s->done = 1;
}

static void cmd_info(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)argv;
  (void)argc;
  node_t *n = c->lp->net->node;
  char body[2048];
  size_t caches = store_cache_count(n->store);
  int len = snprintf(body, sizeof body,
                     "# Server\r\nredis_version:7.0.0\r\ngrid_version:%s\r\nredis_mode:%s\r\n"
                     "process_id:%d\r\ntcp_port:%d\r\nuptime_in_seconds:%lld\r\n\r\n"
                     "# Clients\r\nconnected_clients:%llu\r\nmaxclients:%lld\r\n\r\n"
                     "# Memory\r\nused_memory:%lld\r\nmaxmemory:%lld\r\n"
                     "maxmemory_policy:noeviction\r\n\r\n"
                     "# Stats\r\ntotal_commands_processed:%llu\r\n\r\n"
                     "# Keyspace\r\ndb0:keys=%llu,expires=0,avg_ttl=0\r\n",
                     GRID_VERSION_STRING, n->cluster ? "cluster" : "standalone", (int)getpid(),
                     net_resp_port(n->net), (long long)((clock_mono_ms() - n->started_ms) / 1000),
                     (unsigned long long)atomic_load(&n->connections),
                     (long long)n->cfg.connections_max, (long long)store_memory_bytes(n->store),
                     (long long)store_memory_bytes_max(n->store),
                     (unsigned long long)ops_served(n),
                     (unsigned long long)store_entries(n->store));
  (void)caches;
  if (len < 0) len = 0;
  if ((size_t)len >= sizeof body) len = sizeof body - 1;
  slot_bulk(s, body, (size_t)len);
  s->done = 1;
}

static const resp_cmd_t resp_cmds[];
static const size_t resp_ncmds;

static void cmd_command(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *s) {
  (void)c;
  if (argc >= 2 && arg_is(&argv[1], "count")) {
    slot_int(s, (int64_t)resp_ncmds);
  } else if (argc >= 2 && arg_is(&argv[1], "docs")) {
    slot_printf(s, "*0\r\n"); /* no documentation to offer */
  } else if (argc == 1) {
    slot_printf(s, "*%zu\r\n", resp_ncmds);
    for (size_t i = 0; i < resp_ncmds; i++) {
      const resp_cmd_t *d = &resp_cmds[i];
      int keyed = d->run == NULL;
      slot_printf(s, "*6\r\n");
      slot_bulk(s, d->name, strlen(d->name));
      slot_int(s, d->arity);
      slot_printf(s, "*0\r\n");
      slot_int(s, keyed ? 1 : 0);
      slot_int(s, keyed ? (d->cmd == CMD_DEL || d->cmd == CMD_EXISTS || d->cmd == CMD_MGET ||
                                   d->cmd == CMD_MSET ? -1 : 1)
                        : 0);
      slot_int(s, keyed ? (d->cmd == CMD_MSET ? 2 : 1) : 0);
    }
  } else {
    char line[200];
    snprintf(line, sizeof line, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
             (int)(argv[1].len > 128 ? 128 : argv[1].len), argv[1].p);
    run_simple_error(c, s, line);
    return;
  }
  s->done = 1;
}

static const resp_cmd_t resp_cmds[] = {
    {"ping", -1, cmd_ping, 0, 2},     {"echo", 2, cmd_echo, 0, 0},
    {"quit", -1, cmd_quit, 0, 0},        {"select", 2, cmd_select, 0, 0},
    {"client", -2, cmd_client, 0, 0},    {"hello", -1, cmd_hello, 0, 0},
    {"info", -1, cmd_info, 0, 0},        {"command", -1, cmd_command, 0, 0},
    {"get", 2, NULL, CMD_GET, 0},        {"set", -3, NULL, CMD_SET, 0},
    {"setnx", 3, NULL, CMD_SETNX, 0},    {"setex", 4, NULL, CMD_SETEX, 0},
    {"psetex", 4, NULL, CMD_SETEX, 0},   {"getset", 3, NULL, CMD_GETSET, 0},
    {"getdel", 2, NULL, CMD_GETDEL, 0},  {"del", -2, NULL, CMD_DEL, 0},
    {"exists", -2, NULL, CMD_EXISTS, 0}, {"mget", -2, NULL, CMD_MGET, 0},
    {"mset", -3, NULL, CMD_MSET, 0},     {"incr", 2, NULL, CMD_INCR, 0},
    {"decr", 2, NULL, CMD_INCR, 0},      {"incrby", 3, NULL, CMD_INCR, 0},
    {"decrby", 3, NULL, CMD_INCR, 0},    {"append", 3, NULL, CMD_APPEND, 0},
    {"strlen", 2, NULL, CMD_STRLEN, 0},  {"expire", -3, NULL, CMD_EXPIRE, 0},
    {"pexpire", -3, NULL, CMD_EXPIRE, 0}, {"persist", 2, NULL, CMD_PERSIST, 0},
    {"ttl", 2, NULL, CMD_TTL, 0},        {"pttl", 2, NULL, CMD_PTTL, 0},
    {"dbsize", 1, NULL, CMD_DBSIZE, 0},
};
static const size_t resp_ncmds = sizeof resp_cmds / sizeof resp_cmds[0];

/* The keyed commands: their options first, then one request per key. */
static void run_keyed(conn_t *c, resp_arg_t *argv, int argc, resp_slot_t *unused, int cmd) {
  (void)unused;
  const char *name_lc = NULL;
  for (size_t i = 0; i < resp_ncmds; i++)
    if (arg_is(&argv[0], resp_cmds[i].name)) name_lc = resp_cmds[i].name;
  Grid__Request rq;
  /* Options are checked before anything runs, as Redis does. */
  if (cmd == CMD_SET) {
    int nx = 0, xx = 0, get = 0, keep = 0, ex = 0; /* ex: 1 EX, 2 PX, 3 EXAT, 4 PXAT */
    int64_t ttl_ms = 0;
    for (int i = 3; i < argc; i++) {
      int has_next = i + 1 < argc;
      int kind = arg_is(&argv[i], "ex") ? 1 : arg_is(&argv[i], "px") ? 2
                 : arg_is(&argv[i], "exat") ? 3 : arg_is(&argv[i], "pxat") ? 4 : 0;
      /* As Redis: an option may come again, but not with one it excludes. */
      if (arg_is(&argv[i], "nx") && !xx) nx = 1;
      else if (arg_is(&argv[i], "xx") && !nx) xx = 1;
      else if (arg_is(&argv[i], "get")) get = 1;
      else if (arg_is(&argv[i], "keepttl") && !ex) keep = 1;
      else if (kind && (!ex || ex == kind) && !keep && has_next) {
        int64_t v;
        if (arg_i64(&argv[i + 1], &v) != 0) {
          resp_slot_t *s = resp_slot_new(c->resp);
          if (s) run_simple_error(c, s, "ERR value is not an integer or out of range");
          return;
        }
        int secs = arg_is(&argv[i], "ex") || arg_is(&argv[i], "exat");
        int at = arg_is(&argv[i], "exat") || arg_is(&argv[i], "pxat");
        if (v <= 0 || (secs && v > INT64_MAX / 1000)) {
          resp_slot_t *s = resp_slot_new(c->resp);
          if (s) run_simple_error(c, s, "ERR invalid expire time in 'set' command");
          return;
        }
        ttl_ms = secs ? v * 1000 : v;
        if (!at && ttl_ms > INT64_MAX - clock_wall_ms()) {
          resp_slot_t *s = resp_slot_new(c->resp);
          if (s) run_simple_error(c, s, "ERR invalid expire time in 'set' command");
          return;
        }
        if (at) {
          ttl_ms -= clock_wall_ms();
          if (ttl_ms <= 0) ttl_ms = 1; /* already past: gone at once */
        }
        ex = kind;
        i++;
      } else {
        resp_slot_t *s = resp_slot_new(c->resp);
        if (s) run_simple_error(c, s, "ERR syntax error");
        return;
      }
    }
    resp_job_t *job = resp_job_new(c, cmd, 1);
    if (!job) return;
    job->flag = get;
    key_request(&rq, get ? GRID__OP__GET_AND_PUT : GRID__OP__PUT, &argv[1]);
    rq.value.data = (uint8_t *)argv[2].p;
    rq.value.len = argv[2].len;
    rq.ttl_ms = (uint64_t)ttl_ms;
    rq.cond = nx ? STORE_IF_ABSENT : xx ? STORE_IF_PRESENT : STORE_ANY;
    rq.keep_ttl = keep;
    resp_submit(job, 0, &rq);
    if (--job->pending == 0) resp_job_finish(job);
    return;
  }
  int64_t num = 0;
  if (cmd == CMD_SETEX || ((cmd == CMD_INCR || cmd == CMD_EXPIRE) && argc >= 3)) {
    const resp_arg_t *a = &argv[2];
    if (arg_i64(a, &num) != 0) {
      resp_slot_t *s = resp_slot_new(c->resp);
      if (s) run_simple_error(c, s, "ERR value is not an integer or out of range");
      return;
    }
  }
  if (cmd == CMD_SETEX) {
    int secs = arg_is(&argv[0], "setex");
    if (num <= 0 || (secs && num > INT64_MAX / 1000)) {
      char line[80];
      snprintf(line, sizeof line, "ERR invalid expire time in '%s' command", name_lc);
      resp_slot_t *s = resp_slot_new(c->resp);
      if (s) run_simple_error(c, s, line);
      return;
    }
    num = secs ? num * 1000 : num;
  }
  if (cmd == CMD_EXPIRE) {
    if (argc > 3) {
      char line[200];
      snprintf(line, sizeof line, "ERR Unsupported option %.*s",
               (int)(argv[3].len > 128 ? 128 : argv[3].len), argv[3].p);
      resp_slot_t *s = resp_slot_new(c->resp);
      if (s) run_simple_error(c, s, line);
      return;
    }
    int secs = arg_is(&argv[0], "expire");
    int64_t now = clock_wall_ms();
    if ((secs && (num > INT64_MAX / 1000 || num < INT64_MIN / 1000)) ||
        (secs ? num * 1000 : num) > INT64_MAX - now) {
      char line[80];
      snprintf(line, sizeof line, "ERR invalid expire time in '%s' command",
               secs ? "expire" : "pexpire");
      resp_slot_t *s = resp_slot_new(c->resp);
      if (s) run_simple_error(c, s, line);
      return;
    }
    if (secs) num *= 1000;
  }
  if (cmd == CMD_MSET && (argc - 1) % 2 != 0) {
    resp_slot_t *s = resp_slot_new(c->resp);
    if (s) run_simple_error(c, s, "ERR wrong number of arguments for 'mset' command");
    return;
  }
  if (cmd == CMD_INCR) {
    if (arg_is(&argv[0], "incr")) num = 1;
    else if (arg_is(&argv[0], "decr")) num = -1;
    else if (arg_is(&argv[0], "decrby")) {
      if (num == INT64_MIN) {
        resp_slot_t *s = resp_slot_new(c->resp);
        if (s) run_simple_error(c, s, "ERR decrement would overflow");
        return;
      }
      num = -num;
    }
  }
  size_t nreq = cmd == CMD_DEL || cmd == CMD_EXISTS || cmd == CMD_MGET ? (size_t)argc - 1
                : cmd == CMD_MSET ? (size_t)(argc - 1) / 2 : 1;
  resp_job_t *job = resp_job_new(c, cmd, nreq);
  if (!job) return;
  if (cmd == CMD_MGET) {
    job->parts = calloc(nreq, sizeof *job->parts);
    if (!job->parts) resp_job_error(job, GRID_ENOMEM, NULL);
  }
  for (size_t i = 0; i < nreq && !job->status; i++) {
    switch (cmd) {
      case CMD_GET: case CMD_STRLEN: key_request(&rq, GRID__OP__GET, &argv[1]); break;
      case CMD_MGET: key_request(&rq, GRID__OP__GET, &argv[1 + i]); break;
      case CMD_SETNX:
        key_request(&rq, GRID__OP__PUT, &argv[1]);
        rq.value.data = (uint8_t *)argv[2].p;
        rq.value.len = argv[2].len;
        rq.cond = STORE_IF_ABSENT;
        break;
      case CMD_SETEX:
        key_request(&rq, GRID__OP__PUT, &argv[1]);
        rq.value.data = (uint8_t *)argv[3].p;
        rq.value.len = argv[3].len;
        rq.ttl_ms = (uint64_t)num;
        break;
      case CMD_GETSET:
        key_request(&rq, GRID__OP__GET_AND_PUT, &argv[1]);
        rq.value.data = (uint8_t *)argv[2].p;
        rq.value.len = argv[2].len;
        break;
      case CMD_GETDEL: key_request(&rq, GRID__OP__GET_AND_DELETE, &argv[1]); break;
      case CMD_DEL: key_request(&rq, GRID__OP__DELETE, &argv[1 + i]); break;
      case CMD_EXISTS: key_request(&rq, GRID__OP__TTL, &argv[1 + i]); break;
      case CMD_MSET:
        key_request(&rq, GRID__OP__PUT, &argv[1 + 2 * i]);
        rq.value.data = (uint8_t *)argv[2 + 2 * i].p;
        rq.value.len = argv[2 + 2 * i].len;
        break;
      case CMD_INCR:
        key_request(&rq, GRID__OP__ADD, &argv[1]);
        rq.delta = num;
        break;
      case CMD_APPEND:
        key_request(&rq, GRID__OP__APPEND, &argv[1]);
        rq.value.data = (uint8_t *)argv[2].p;
        rq.value.len = argv[2].len;
        break;
      case CMD_EXPIRE:
        key_request(&rq, GRID__OP__EXPIRE, &argv[1]);
        rq.expire_ms = num;
        break;
      case CMD_PERSIST:
        key_request(&rq, GRID__OP__EXPIRE, &argv[1]);
        rq.persist = 1;
        break;
      case CMD_TTL: case CMD_PTTL: key_request(&rq, GRID__OP__TTL, &argv[1]); break;
      case CMD_DBSIZE:
        grid__request__init(&rq);
        rq.op = GRID__OP__SIZE;
        break;
    }
    resp_submit(job, i, &rq);
  }
  if (--job->pending == 0) resp_job_finish(job);
}

static void resp_dispatch_one(conn_t *c, resp_arg_t *argv, int argc);

/* Runs one parsed command; its reply goes in a slot of its own, or, on a
 * single node, straight to the connection. */
static void resp_dispatch(conn_t *c, resp_arg_t *argv, int argc) {
  resp_conn_t *r = c->resp;
  r->direct.len = 0;
  resp_dispatch_one(c, argv, argc);
  if (!r->cluster && r->direct.len) {
    if (conn_out(c, r->direct.buf, r->direct.len) != 0) conn_close_when_written(c);
    r->direct.len = 0;
  }
  if (!r->cluster && r->quit) conn_close_when_written(c);
}

static void resp_dispatch_one(conn_t *c, resp_arg_t *argv, int argc) {
  const resp_cmd_t *cmd = NULL;
  for (size_t i = 0; i < resp_ncmds && !cmd; i++)
    if (arg_is(&argv[0], resp_cmds[i].name)) cmd = &resp_cmds[i];
  if (!cmd) {
    resp_slot_t *s = resp_slot_new(c->resp);
    if (!s) return;
    char line[512];
    int at = snprintf(line, sizeof line, "ERR unknown command '%.*s', with args beginning with: ",
                      (int)(argv[0].len > 128 ? 128 : argv[0].len), argv[0].p);
    /* As Redis: arguments until their text reaches 128 characters, the
     * last one cut to what is left. */
    size_t shown = 0;
    for (int i = 1; i < argc && shown < 128 && at > 0 && (size_t)at < sizeof line; i++) {
      size_t room = 128 - shown;
      int n = (int)(argv[i].len < room ? argv[i].len : room);
      at += snprintf(line + at, sizeof line - (size_t)at, "'%.*s' ", n, argv[i].p);
      shown += (size_t)n + 3;
    }
    run_simple_error(c, s, line);
    return;
  }
  if ((cmd->arity > 0 && argc != cmd->arity) || (cmd->arity < 0 && argc < -cmd->arity) ||
      (cmd->args_max && argc > cmd->args_max)) {
    resp_slot_t *s = resp_slot_new(c->resp);
    if (!s) return;
    slot_printf(s, "-ERR wrong number of arguments for '%s' command\r\n", cmd->name);
    s->done = 1;
    return;
  }
  if (cmd->run) {
    resp_slot_t *s = resp_slot_new(c->resp);
    if (s) cmd->run(c, argv, argc, s);
    return;
  }
  run_keyed(c, argv, argc, NULL, cmd->cmd);
}

/* ---- parsing ---------------------------------------------------------------- */

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

enum { RESP_NEED_MORE = 0, RESP_DONE = 1, RESP_ERROR = 2 };

/* Splits an inline command as Redis's sdssplitargs: spaces separate,
 * "double" and 'single' quotes group. Copies into out (the words point
 * into it). */
static int resp_split_inline(const char *p, size_t len, char *out, resp_arg_t *argv,
                             int argv_max, int *argc) {
  size_t i = 0, o = 0;
  int n = 0;
  while (i < len) {
    while (i < len && isspace((unsigned char)p[i])) i++;
    if (i >= len) break;
    if (n == argv_max) return -2;
    size_t start = o;
    int inq = 0, insq = 0;
    for (;;) {
      if (i >= len) {
        if (inq || insq) return -1; /* unbalanced quotes */
        break;
      }
      char ch = p[i];
      if (inq) {
        if (ch == '\\' && i + 1 < len) {
          char e = p[i + 1];
          out[o++] = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
          i += 2;
          continue;
        }
        if (ch == '"') {
          if (i + 1 < len && !isspace((unsigned char)p[i + 1])) return -1;
          inq = 0;
          i++;
          break;
        }
        out[o++] = ch;
        i++;
      } else if (insq) {
        if (ch == '\\' && i + 1 < len && p[i + 1] == '\'') {
          out[o++] = '\'';
          i += 2;
          continue;
        }
        if (ch == '\'') {
          if (i + 1 < len && !isspace((unsigned char)p[i + 1])) return -1;
          insq = 0;
          i++;
          break;
        }
        out[o++] = ch;
        i++;
      } else {
        if (isspace((unsigned char)ch)) break;
        if (ch == '"') inq = 1;
        else if (ch == '\'') insq = 1;
        else out[o++] = ch;
        i++;
      }
    }
    argv[n].p = out + start;
    argv[n].len = o - start;
    n++;
  }
  *argc = n;
  return 0;
}

/* Finds "\r\n" in p[0..len); returns its offset or -1. */
static ssize_t resp_line_end(const char *p, size_t len) {
  const char *cr = len ? memchr(p, '\r', len) : NULL;
  while (cr && (size_t)(cr - p) + 1 < len) {
    if (cr[1] == '\n') return cr - p;
    cr = memchr(cr + 1, '\r', len - (size_t)(cr + 1 - p));
  }
  return -1;
}

/* Room for n arguments: the caller's stack array when it is enough, else
 * the connection's own (kept for the next command). */
static resp_arg_t *resp_argv_room(resp_conn_t *r, resp_arg_t *stack, size_t n) {
  if (n <= RESP_ARGV_STACK) return stack;
  if (r->argv_cap < n) {
    resp_arg_t *a = realloc(r->argv, n * sizeof *a);
    if (!a) return NULL;
    r->argv = a;
    r->argv_cap = n;
  }
  return r->argv;
}

static void resp_partial_reset(resp_conn_t *r) {
  r->mb_count = r->mb_got = 0;
  r->mb_pos = 0;
}

/* One command from buf, continuing where the last call stopped. On
 * RESP_DONE *used receives its bytes and *argv its arguments (pointing into
 * buf for a multibulk, into *scratch, malloc'd, for an inline command);
 * *argv is stack or the connection's. Bounds: resp_args_max arguments,
 * resp_command_bytes_max bytes for the whole command. */
static int resp_parse(conn_t *c, const char *buf, size_t len, resp_arg_t *stack,
                      resp_arg_t **argv, int *argc, size_t *used, char **scratch,
                      const char **why) {
  node_t *n = c->lp->net->node;
  resp_conn_t *r = c->resp;
  size_t cmd_max = (size_t)n->cfg.resp_command_bytes_max;
  if (buf[0] != '*') {
    size_t from = r->mb_pos < len ? r->mb_pos : len;
    const char *nl = memchr(buf + from, '\n', len - from);
    if (!nl) {
      r->mb_pos = len;
      if (len > RESP_INLINE_BYTES_MAX) {
        *why = "Protocol error: too big inline request";
        return RESP_ERROR;
      }
      return RESP_NEED_MORE;
    }
    r->mb_pos = 0;
    size_t line = (size_t)(nl - buf);
    size_t end = line > 0 && buf[line - 1] == '\r' ? line - 1 : line;
    *scratch = malloc(end + 1);
    size_t max = end / 2 + 2;
    *argv = resp_argv_room(r, stack, max);
    if (!*scratch || !*argv) {
      *why = "out of memory";
      return RESP_ERROR;
    }
    int rc = resp_split_inline(buf, end, *scratch, *argv, (int)max, argc);
    if (rc != 0) {
      *why = "Protocol error: unbalanced quotes in request";
      return RESP_ERROR;
    }
    if (*argc > n->cfg.resp_args_max) {
      *why = "Protocol error: invalid multibulk length";
      return RESP_ERROR;
    }
    *used = line + 1;
    return RESP_DONE;
  }
  if (r->mb_count == 0) {
    ssize_t le = resp_line_end(buf, len);
    if (le < 0) {
      if (len > RESP_INLINE_BYTES_MAX) {
        *why = "Protocol error: too big mbulk count string";
        return RESP_ERROR;
      }
      return RESP_NEED_MORE;
    }
    int64_t count;
    resp_arg_t a = {buf + 1, (size_t)le - 1};
    if (arg_i64(&a, &count) != 0 || count > n->cfg.resp_args_max) {
      *why = "Protocol error: invalid multibulk length";
      return RESP_ERROR;
    }
    if (count <= 0) { /* an empty command: nothing to run */
      *argc = 0;
      *used = (size_t)le + 2;
      return RESP_DONE;
    }
    r->mb_count = count;
    r->mb_got = 0;
    r->mb_pos = (size_t)le + 2;
  }
  size_t pos = r->mb_pos;
  while (r->mb_got < r->mb_count) {
    if (pos >= len) break;
    if (buf[pos] != '$') {
      snprintf(r->why, sizeof r->why, "Protocol error: expected '$', got '%c'", buf[pos]);
      *why = r->why;
      return RESP_ERROR;
    }
    ssize_t e = resp_line_end(buf + pos, len - pos);
    if (e < 0) {
      if (len - pos > RESP_INLINE_BYTES_MAX) {
        *why = "Protocol error: too big bulk count string";
        return RESP_ERROR;
      }
      break;
    }
    int64_t blen;
    resp_arg_t b = {buf + pos + 1, (size_t)e - 1};
    if (arg_i64(&b, &blen) != 0 || blen < 0 || (uint64_t)blen > cmd_max) {
      *why = "Protocol error: invalid bulk length";
      return RESP_ERROR;
    }
    size_t body = pos + (size_t)e + 2;
    if (body + (size_t)blen + 2 > cmd_max) {
      /* Refused as soon as it is announced, before its bytes arrive. */
      *why = "Protocol error: command longer than resp_command_bytes_max";
      return RESP_ERROR;
    }
    if (len - body < (size_t)blen + 2) break; /* wait for the argument */
    if ((size_t)r->mb_got == r->spans_cap) {
      size_t cap = r->spans_cap ? r->spans_cap * 2 : RESP_ARGV_STACK;
      struct resp_span *sp = realloc(r->spans, cap * sizeof *sp);
      if (!sp) {
        *why = "out of memory";
        return RESP_ERROR;
      }
      r->spans = sp;
      r->spans_cap = cap;
    }
    r->spans[r->mb_got].off = body;
    r->spans[r->mb_got].len = (size_t)blen;
    r->mb_got++;
    pos = body + (size_t)blen + 2;
  }
  r->mb_pos = pos;
  if (r->mb_got < r->mb_count) return RESP_NEED_MORE;
  *argv = resp_argv_room(r, stack, (size_t)r->mb_count);
  if (!*argv) {
    *why = "out of memory";
    return RESP_ERROR;
  }
  for (int64_t i = 0; i < r->mb_count; i++) {
    (*argv)[i].p = buf + r->spans[i].off;
    (*argv)[i].len = r->spans[i].len;
  }
  *argc = (int)r->mb_count;
  *used = pos;
  resp_partial_reset(r);
  return RESP_DONE;
}

void resp_input(conn_t *c) {
  size_t off = 0;
  while (!c->closing && !c->resp->quit && !uv_is_closing((uv_handle_t *)&c->tcp) &&
         off < c->in.len) {
    if (conn_output_full(c)) {
      resp_flush_slots(c);
      conn_flush(c);
      if (conn_output_full(c) || uv_is_closing((uv_handle_t *)&c->tcp)) break;
    }
    resp_arg_t stack_argv[RESP_ARGV_STACK];
    resp_arg_t *argv = stack_argv;
    char *scratch = NULL;
    int argc = 0;
    size_t used = 0;
    const char *why = NULL;
    int r = resp_parse(c, (const char *)c->in.data + off, c->in.len - off, stack_argv, &argv, &argc,
                       &used, &scratch, &why);
    if (r == RESP_DONE) {
      if (argc > 0) resp_dispatch(c, argv, argc);
      off += used;
      arena_reset(&c->lp->arena);
    } else if (r == RESP_ERROR) {
      resp_fail(c, why);
    }
    free(scratch);
    if (r != RESP_DONE) break;
  }
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  conn_consumed(c, off);
  resp_flush_slots(c);
  conn_flush(c);
  if (!c->closing && conn_output_full(c)) conn_pause(c);
}
