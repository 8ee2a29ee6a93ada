/*
 * foundationd: a small application server shaped like the platform's
 * Foundation server, over the Thing layer (thing.h). Several run at once
 * behind a load balancer, each with an embedded grid node that is a member
 * of one cluster (or, with --grid URI, each a client of a remote grid
 * cluster); any of them serves any Thing, every one hears every change.
 *
 * REST (JSON in and out, libmicrohttpd on a pool of threads):
 *   GET  /Thingworx/Things/{thing}/Properties/{prop}   one property
 *   GET  /Thingworx/Things/{thing}/Properties          every property
 *   PUT  /Thingworx/Things/{thing}/Properties/{prop}   {"value": v, ...}
 *                                                      or {"<prop>": v}
 *   POST /Thingworx/Things/{thing}/Services/UpdatePropertyValues
 *        {"values": {"rows": [{"name", "value", "time", "quality",
 *        "type"}...]}}: one atomic write of the Thing, each property only
 *        if newer (a message delivered twice changes nothing)
 *   GET  /health  the process serves HTTP
 *   GET  /ready   a member of the cluster that serves (503: joining,
 *                 leaving, or cut from ZooKeeper)
 *   GET  /stats   DataChange events seen here, the singleton, requests
 *
 * Every server subscribes to DataChange events of every Thing and is a
 * candidate for the singleton role; both are logged. SIGTERM leaves
 * gracefully: /ready turns 503, the balancer stops sending, the embedded
 * node hands its partitions over, then the process exits.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"
#include "thing.h"

#define FD_BODY_BYTES_MAX_DEFAULT (1u << 20)
#define FD_CONFIG_TEXT_MAX 8192
#define FD_UPDATES_MAX 256 /* properties in one UpdatePropertyValues */

static struct {
  const char *grid_uri;      /* NULL: an embedded cluster member */
  const char *zk, *cluster, *node_id, *cache;
  char config[FD_CONFIG_TEXT_MAX];
  int port;
  const char *port_file;
  unsigned threads;
  size_t body_bytes_max;
  uint32_t drain_ms;         /* /ready is 503 this long before leaving */
  uint32_t timeout_ms;
  int no_singleton, no_subscribe;
  uint32_t singleton_lease_ms, leave_timeout_ms;
} opt = {.singleton_lease_ms = 5000, .leave_timeout_ms = 30000, .cache = "things", .threads = 8, .body_bytes_max = FD_BODY_BYTES_MAX_DEFAULT,
         .drain_ms = 3000, .timeout_ms = 5000};

static grid_t *g;
static thing_store_t *ts;
static thing_sub_t *sub;
static thing_singleton_t *single; /* under single_lock once HTTP serves */
static pthread_mutex_t single_lock = PTHREAD_MUTEX_INITIALIZER;
static char self_id[64];
static atomic_int leaving, stopping;
static atomic_ullong events_seen, requests, writes_done, singleton_gains;

static int64_t wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "foundationd %s at_ms=%lld %s\n", self_id, (long long)wall_ms(), line);
}

/* ---- VTQ <-> JSON ------------------------------------------------------------ */

static const char *const type_names[] = {"", "NUMBER", "INTEGER", "BOOLEAN", "STRING",
                                         "DATETIME", "LOCATION", "JSON", "BLOB"};
static const char *const quality_names[] = {"UNKNOWN", "GOOD", "BAD", "UNCERTAIN"};

static json_t *vtq_value_json(const thing_value_t *v) {
  switch (v->type) {
    case THING_NUMBER: return json_real(v->u.number);
    case THING_INTEGER: return json_integer(v->u.integer);
    case THING_BOOLEAN: return json_boolean(v->u.boolean);
    case THING_STRING: return json_stringn(v->u.bytes.data, v->u.bytes.len);
    case THING_DATETIME: return json_integer(v->u.datetime_ms);
    case THING_LOCATION:
      return json_pack("{s:f,s:f,s:f}", "latitude", v->u.location.latitude, "longitude",
                       v->u.location.longitude, "elevation", v->u.location.elevation);
    case THING_JSON: {
      json_error_t err;
      json_t *j = json_loadb(v->u.bytes.data, v->u.bytes.len, JSON_DECODE_ANY, &err);
      return j ? j : json_null();
    }
    default: return json_null(); /* BLOB: not carried in JSON here */
  }
}

static json_t *prop_json(const thing_prop_t *p) {
  unsigned t = (unsigned)p->vtq.value.type, q = (unsigned)p->vtq.quality;
  return json_pack("{s:s,s:o,s:I,s:s,s:s,s:I}", "name", p->name, "value",
                   vtq_value_json(&p->vtq.value), "time", (json_int_t)p->vtq.time_ms,
                   "quality", q < 4 ? quality_names[q] : "UNKNOWN", "type",
                   t < 9 ? type_names[t] : "?", "version", (json_int_t)p->version);
}

/* A VTQ from a JSON row {value, time?, quality?, type?}. Strings and JSON
 * text point into *keep (to free after the write). NULL, or why not. */
static const char *vtq_from_json(json_t *value, json_t *row, thing_vtq_t *out, char **keep) {
  memset(out, 0, sizeof *out);
  *keep = NULL;
  json_t *jt = row ? json_object_get(row, "time") : NULL;
  json_t *jq = row ? json_object_get(row, "quality") : NULL;
  json_t *jtype = row ? json_object_get(row, "type") : NULL;
  out->time_ms = json_is_integer(jt) ? (int64_t)json_integer_value(jt) : wall_ms();
  out->quality = THING_GOOD;
  if (jq) {
    const char *q = json_string_value(jq);
    int found = 0;
    for (int i = 0; q && i < 4; i++)
      if (!strcmp(q, quality_names[i])) out->quality = (thing_quality_t)i, found = 1;
    if (!found) return "quality must be GOOD, BAD, UNCERTAIN or UNKNOWN";
  }
  int type = 0;
  if (jtype) {
    const char *t = json_string_value(jtype);
    for (int i = 1; t && i < 8; i++)
      if (!strcmp(t, type_names[i])) type = i;
    if (!type) return "type must be NUMBER, INTEGER, BOOLEAN, STRING, DATETIME, LOCATION or JSON";
  } else if (json_is_number(value)) {
    type = THING_NUMBER;
  } else if (json_is_boolean(value)) {
    type = THING_BOOLEAN;
  } else if (json_is_string(value)) {
    type = THING_STRING;
  } else if (json_is_object(value) || json_is_array(value)) {
    type = THING_JSON;
  } else {
    return "a property's value must be a number, a boolean, a string or JSON";
  }
  out->value.type = (thing_type_t)type;
  switch (type) {
    case THING_NUMBER:
      if (!json_is_number(value)) return "a NUMBER's value must be a number";
      out->value.u.number = json_number_value(value);
      return NULL;
    case THING_INTEGER:
    case THING_DATETIME:
      if (!json_is_integer(value)) return "an INTEGER's or DATETIME's value must be an integer";
      if (type == THING_INTEGER) out->value.u.integer = (int64_t)json_integer_value(value);
      else out->value.u.datetime_ms = (int64_t)json_integer_value(value);
      return NULL;
    case THING_BOOLEAN:
      if (!json_is_boolean(value)) return "a BOOLEAN's value must be true or false";
      out->value.u.boolean = json_is_true(value);
      return NULL;
    case THING_STRING:
      if (!json_is_string(value)) return "a STRING's value must be a string";
      out->value.u.bytes.data = json_string_value(value);
      out->value.u.bytes.len = json_string_length(value);
      return NULL;
    case THING_LOCATION: {
      double la, lo, el = 0;
      if (json_unpack(value, "{s:F,s:F,s?F}", "latitude", &la, "longitude", &lo, "elevation",
                      &el) != 0)
        return "a LOCATION's value is {\"latitude\": n, \"longitude\": n, \"elevation\": n}";
      out->value.u.location = (thing_location_t){la, lo, el};
      return NULL;
    }
    default: /* JSON */
      *keep = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
      if (!*keep) return "out of memory";
      out->value.u.bytes.data = *keep;
      out->value.u.bytes.len = strlen(*keep);
      return NULL;
  }
}

/* ---- HTTP ----------------------------------------------------------------------- */

typedef struct req {
  char *body;
  size_t len;
  int too_big;
} req_t;

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j) {
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!s) return MHD_NO;
  size_t n = strlen(s);
  char *body = realloc(s, n + 2);
  if (!body) {
    free(s);
    return MHD_NO;
  }
  body[n++] = '\n';
  struct MHD_Response *r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", "application/json");
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *fmt,
                                   ...) __attribute__((format(printf, 3, 4)));
static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *fmt,
                                   ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return reply_json(c, status, json_pack("{s:s}", "error", why));
}

/* The HTTP status for a grid or Thing error. */
static unsigned status_of(int rc) {
  switch (rc) {
    case GRID_ENOTFOUND: return MHD_HTTP_NOT_FOUND;
    case THING_ETYPE: case THING_EJSON: case THING_ENAME: case GRID_EINVAL:
    case GRID_EKEYTOOBIG: case GRID_EVALTOOBIG: case GRID_EBATCHTOOBIG: case GRID_ELIMIT:
      return MHD_HTTP_BAD_REQUEST;
    case GRID_EVERSION: case THING_ECONTENDED: case THING_EFENCED: return MHD_HTTP_CONFLICT;
    default: return MHD_HTTP_SERVICE_UNAVAILABLE; /* the grid is away for a moment: retry */
  }
}

static enum MHD_Result reply_rc(struct MHD_Connection *c, int rc, const char *what) {
  const char *detail = grid_last_error();
  return reply_error(c, status_of(rc), "%s: %s%s%s", what, thing_strerror(rc),
                     detail && *detail ? ": " : "", detail && *detail ? detail : "");
}

/* Whether this server should get requests: a member of the cluster (in
 * its map, with a live ZooKeeper session), not leaving. */
static int ready(char *why, size_t len) {
  if (atomic_load(&leaving)) {
    snprintf(why, len, "leaving the cluster");
    return 0;
  }
  grid_cluster_status_t *st;
  int rc = grid_cluster_status(g, &st);
  if (rc) {
    snprintf(why, len, "the grid does not answer: %s", thing_strerror(rc));
    return 0;
  }
  int ok = 0;
  if (!st->cluster[0]) {
    ok = 1; /* a single node, or a remote grid: it answered */
  } else if (!st->zk_connected) {
    snprintf(why, len, "cut from ZooKeeper: not serving until the session is back");
  } else if (!opt.grid_uri) {
    for (size_t i = 0; i < st->nnodes; i++) {
      const grid_node_status_t *n = &st->nodes[i];
      if (strcmp(n->id, self_id)) continue;
      ok = n->alive && n->in_map && !n->leaving;
      if (!ok) snprintf(why, len, "%s", n->leaving ? "leaving the cluster"
                                                   : "joining: not in the partition map yet");
    }
    if (!ok && !why[0]) snprintf(why, len, "joining: not a member yet");
  } else {
    ok = 1;
  }
  grid_cluster_status_free(st);
  return ok;
}

static const char *const THINGS = "/Thingworx/Things/";

/* Splits /Thingworx/Things/{thing}/{kind}[/{name}] (kind: Properties or
 * Services) into its parts, in buf. 0 or -1. */
static int parse_path(const char *url, char *buf, size_t cap, char **thing, char **kind,
                      char **name) {
  size_t pl = strlen(THINGS);
  if (strncmp(url, THINGS, pl) || strlen(url + pl) >= cap) return -1;
  strcpy(buf, url + pl);
  *thing = buf;
  char *s = strchr(buf, '/');
  if (!s) return -1;
  *s++ = '\0';
  *kind = s;
  *name = NULL;
  s = strchr(s, '/');
  if (s) {
    *s++ = '\0';
    *name = s;
    if (strchr(s, '/') || !*s) return -1;
  }
  return **thing ? 0 : -1;
}

static enum MHD_Result get_props(struct MHD_Connection *c, const char *thing, const char *prop) {
  json_t *rows = json_array();
  if (prop) {
    thing_prop_t p;
    int rc = thing_read(ts, thing, prop, &p);
    if (rc) {
      json_decref(rows);
      return reply_rc(c, rc, "read");
    }
    json_array_append_new(rows, prop_json(&p));
    thing_prop_free(&p);
  } else {
    thing_prop_t *ps;
    size_t n;
    int rc = thing_read_all(ts, thing, &ps, &n);
    if (rc) {
      json_decref(rows);
      return reply_rc(c, rc, "read");
    }
    for (size_t i = 0; i < n; i++) json_array_append_new(rows, prop_json(&ps[i]));
    thing_props_free(ps, n);
  }
  return reply_json(c, MHD_HTTP_OK, json_pack("{s:s,s:o}", "thing", thing, "rows", rows));
}

static enum MHD_Result put_prop(struct MHD_Connection *c, const char *thing, const char *prop,
                                json_t *body) {
  /* {"value": v, "time"?, "quality"?, "type"?}, or the platform's {"<prop>": v} */
  json_t *value = json_object_get(body, "value"), *row = body;
  if (!value) {
    value = json_object_get(body, prop);
    row = NULL;
  }
  if (!value) return reply_error(c, 400, "the body is {\"value\": v} or {\"%s\": v}", prop);
  thing_vtq_t vtq;
  char *keep;
  const char *bad = vtq_from_json(value, row, &vtq, &keep);
  if (bad) return reply_error(c, 400, "%s: %s", prop, bad);
  uint64_t version = 0;
  int rc = thing_write_one(ts, thing, prop, &vtq, 0, &version);
  free(keep);
  if (rc) return reply_rc(c, rc, "write");
  atomic_fetch_add(&writes_done, 1);
  return reply_json(c, MHD_HTTP_OK, json_pack("{s:I}", "version", (json_int_t)version));
}

static enum MHD_Result update_values(struct MHD_Connection *c, const char *thing, json_t *body) {
  json_t *rows = json_object_get(json_object_get(body, "values"), "rows");
  if (!rows) rows = json_object_get(body, "rows");
  size_t n = json_array_size(rows);
  if (!json_is_array(rows) || n == 0)
    return reply_error(c, 400, "the body is {\"values\": {\"rows\": [{\"name\": p, \"value\": v, "
                               "\"time\": ms, \"quality\": q}, ...]}}");
  if (n > FD_UPDATES_MAX)
    return reply_error(c, 400, "%zu properties in one update: at most %d", n, FD_UPDATES_MAX);
  thing_update_t up[FD_UPDATES_MAX];
  char *keep[FD_UPDATES_MAX] = {0};
  const char *bad = NULL;
  size_t i;
  for (i = 0; i < n && !bad; i++) {
    json_t *row = json_array_get(rows, i);
    up[i] = (thing_update_t){.prop = json_string_value(json_object_get(row, "name"))};
    if (!up[i].prop) bad = "each row needs a \"name\"";
    else if (!json_object_get(row, "value")) bad = "each row needs a \"value\"";
    else bad = vtq_from_json(json_object_get(row, "value"), row, &up[i].vtq, &keep[i]);
  }
  int rc = bad ? 0 : thing_write(ts, thing, up, n, THING_IF_NEWER, NULL);
  for (size_t k = 0; k < n; k++) free(keep[k]);
  if (bad) return reply_error(c, 400, "row %zu: %s", i - 1, bad);
  if (rc) return reply_rc(c, rc, "UpdatePropertyValues");
  size_t skipped = 0;
  for (size_t k = 0; k < n; k++) skipped += up[k].skipped;
  atomic_fetch_add(&writes_done, 1);
  return reply_json(c, MHD_HTTP_OK, json_pack("{s:I,s:I}", "written", (json_int_t)(n - skipped),
                                              "skipped", (json_int_t)skipped));
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_len, void **state) {
  (void)cls;
  (void)version;
  req_t *rq = *state;
  if (!rq) {
    rq = calloc(1, sizeof *rq);
    if (!rq) return MHD_NO;
    *state = rq;
    return MHD_YES;
  }
  if (*upload_len) { /* the body, kept up to body_bytes_max */
    if (rq->len + *upload_len > opt.body_bytes_max) {
      rq->too_big = 1;
    } else {
      char *b = realloc(rq->body, rq->len + *upload_len + 1);
      if (!b) return MHD_NO;
      memcpy(b + rq->len, upload, *upload_len);
      rq->body = b;
      rq->len += *upload_len;
      rq->body[rq->len] = '\0';
    }
    *upload_len = 0;
    return MHD_YES;
  }
  atomic_fetch_add(&requests, 1);
  if (rq->too_big)
    return reply_error(c, 413, "a body of more than %zu bytes",
                       opt.body_bytes_max);
  int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
  if (!strcmp(url, "/health")) return reply_json(c, 200, json_pack("{s:s}", "status", "ok"));
  if (!strcmp(url, "/ready")) {
    char why[256] = "";
    return ready(why, sizeof why) ? reply_json(c, 200, json_pack("{s:s}", "status", "ready"))
                                  : reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "%s", why);
  }
  if (!strcmp(url, "/stats")) {
    pthread_mutex_lock(&single_lock);
    int held = single && thing_singleton_held(single, NULL);
    pthread_mutex_unlock(&single_lock);
    return reply_json(c, 200, json_pack("{s:s,s:I,s:b,s:I,s:I,s:I}", "server", self_id,
                                        "datachange_events", (json_int_t)events_seen,
                                        "singleton", held,
                                        "singleton_gains", (json_int_t)singleton_gains,
                                        "requests", (json_int_t)requests, "writes",
                                        (json_int_t)writes_done));
  }
  char buf[1024], *thing, *kind, *name;
  if (parse_path(url, buf, sizeof buf, &thing, &kind, &name) != 0)
    return reply_error(c, MHD_HTTP_NOT_FOUND, "not found: /Thingworx/Things/{thing}/Properties"
                       "[/{prop}], /Thingworx/Things/{thing}/Services/UpdatePropertyValues, "
                       "/health, /ready, /stats");
  int put = !strcmp(kind, "Properties") && name && !strcmp(method, "PUT");
  int update = !strcmp(kind, "Services") && name && !strcmp(name, "UpdatePropertyValues") &&
               !strcmp(method, "POST");
  if (!(get && !strcmp(kind, "Properties")) && !put && !update)
    return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                       "%s %s: GET or PUT Properties, POST Services/UpdatePropertyValues",
                       method, url);
  json_t *body = NULL;
  if (!get) {
    json_error_t err;
    body = json_loadb(rq->body ? rq->body : "", rq->len, 0, &err);
    if (!json_is_object(body)) {
      json_decref(body);
      return reply_error(c, 400, "the body is not a JSON object: %s", err.text);
    }
  }
  enum MHD_Result ret = put      ? put_prop(c, thing, name, body)
                        : update ? update_values(c, thing, body)
                                 : get_props(c, thing, name);
  json_decref(body);
  return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **state,
                      enum MHD_RequestTerminationCode why) {
  (void)cls;
  (void)c;
  (void)why;
  req_t *rq = *state;
  if (rq) {
    free(rq->body);
    free(rq);
  }
  *state = NULL;
}

/* ---- DataChange and the singleton -------------------------------------------- */

static void on_change(const thing_change_t *ch, void *arg) {
  (void)ch;
  (void)arg;
  atomic_fetch_add(&events_seen, 1);
}

static void on_gain(uint64_t token, void *arg) {
  (void)arg;
  atomic_fetch_add(&singleton_gains, 1);
  say("singleton=gained token=%" PRIu64, token);
}

static void on_loss(uint64_t token, void *arg) {
  (void)arg;
  say("singleton=lost token=%" PRIu64, token);
}

/* ---- main ----------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "foundationd: a Foundation-style application server over the Thing layer.\n\n"
          "Usage: foundationd --http-port N [--port-file F] (--zk HOSTS --cluster NAME\n"
          "                   [--node-id ID] [--set key=value]... | --grid URI)\n\n"
          "  --http-port N       the REST port on 127.0.0.1 (0: any free port)\n"
          "  --bind ADDR         the REST port's address (default 127.0.0.1)\n"
          "  --port-file F       write the REST port there once it listens\n"
          "  --zk HOSTS          ZooKeeper of the grid cluster; this server embeds a\n"
          "                      member of it (with --cluster, --node-id)\n"
          "  --cluster NAME      the grid cluster's name\n"
          "  --node-id ID        this server's (and its grid node's) id\n"
          "  --set key=value     a grid setting of the embedded node (repeatable)\n"
          "  --grid URI          instead: a client of a remote grid (grid://h:p,...)\n"
          "  --cache NAME        the Things' cache (default things)\n"
          "  --threads N         HTTP worker threads (default 8)\n"
          "  --body-bytes-max N  a request body at most (default 1048576: 413 past it)\n"
          "  --drain-ms N        on SIGTERM, /ready is 503 this long before the node\n"
          "                      leaves (default 3000: the balancer's checks see it)\n"
          "  --timeout-ms N      each grid call's deadline (default 5000)\n"
          "  --leave-timeout-ms N  on SIGTERM, wait this long at most for the node's\n"
          "                      partitions to be handed over (default 30000)\n"
          "  --singleton-lease-ms N  the singleton's lease (default 5000: longer than a\n"
          "                      failover, so a holder keeps it while a node dies)\n"
          "  --no-singleton      not a candidate for the singleton role\n"
          "  --no-subscribe      no DataChange subscription\n\n"
          "REST: GET|PUT /Thingworx/Things/{thing}/Properties[/{prop}],\n"
          "POST /Thingworx/Things/{thing}/Services/UpdatePropertyValues, /health, /ready,\n"
          "/stats. SIGTERM leaves the cluster gracefully.\n");
}

static void on_term(int sig) {
  (void)sig;
  atomic_store(&stopping, 1);
}

/* A numeric flag's value in [min, max], or a message and exit status 2. */
static long long num_arg(const char *flag, const char *v, long long min, long long max) {
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || end == v || *end || n < min || n > max) {
    fprintf(stderr, "foundationd: %s %s: expected a number from %lld to %lld\n", flag, v, min,
            max);
    exit(2);
  }
  return n;
}

static int add_setting(const char *kv) {
  size_t used = strlen(opt.config);
  if (!strchr(kv, '=') || used + strlen(kv) + 2 >= sizeof opt.config) return -1;
  char *eq = strchr(kv, '=');
  snprintf(opt.config + used, sizeof opt.config - used, "%.*s = %s\n", (int)(eq - kv), kv,
           eq + 1);
  return 0;
}

int main(int argc, char **argv) {
  const char *bind_addr = "127.0.0.1";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--no-singleton")) {
      opt.no_singleton = 1;
    } else if (!strcmp(a, "--no-subscribe")) {
      opt.no_subscribe = 1;
    } else if (!v) {
      fprintf(stderr, "foundationd: %s needs a value (--help)\n", a);
      return 2;
    } else if (!strcmp(a, "--http-port")) {
      opt.port = (int)num_arg(a, v, 0, 65535), i++;
    } else if (!strcmp(a, "--bind")) {
      bind_addr = v, i++;
    } else if (!strcmp(a, "--port-file")) {
      opt.port_file = v, i++;
    } else if (!strcmp(a, "--zk")) {
      opt.zk = v, i++;
    } else if (!strcmp(a, "--cluster")) {
      opt.cluster = v, i++;
    } else if (!strcmp(a, "--node-id")) {
      opt.node_id = v, i++;
    } else if (!strcmp(a, "--grid")) {
      opt.grid_uri = v, i++;
    } else if (!strcmp(a, "--cache")) {
      opt.cache = v, i++;
    } else if (!strcmp(a, "--threads")) {
      opt.threads = (unsigned)num_arg(a, v, 1, 256), i++;
    } else if (!strcmp(a, "--body-bytes-max")) {
      opt.body_bytes_max = (size_t)num_arg(a, v, 1024, 1ll << 30), i++;
    } else if (!strcmp(a, "--drain-ms")) {
      opt.drain_ms = (uint32_t)num_arg(a, v, 0, 600000), i++;
    } else if (!strcmp(a, "--leave-timeout-ms")) {
      opt.leave_timeout_ms = (uint32_t)num_arg(a, v, 0, 3600000), i++;
    } else if (!strcmp(a, "--singleton-lease-ms")) {
      opt.singleton_lease_ms = (uint32_t)num_arg(a, v, 100, 600000), i++;
    } else if (!strcmp(a, "--timeout-ms")) {
      opt.timeout_ms = (uint32_t)num_arg(a, v, 1, 3600000), i++;
    } else if (!strcmp(a, "--set")) {
      if (add_setting(v)) {
        fprintf(stderr, "foundationd: --set %s: expected key=value\n", v);
        return 2;
      }
      i++;
    } else {
      fprintf(stderr, "foundationd: unknown option %s (--help lists them)\n", a);
      return 2;
    }
  }
  if (!opt.grid_uri && (!opt.zk || !opt.cluster)) {
    fprintf(stderr, "foundationd: --zk and --cluster (an embedded member), or --grid URI\n");
    return 2;
  }
  if (opt.port < 0 || opt.port > 65535 || opt.threads < 1 || opt.threads > 256 ||
      opt.body_bytes_max < 1024) {
    fprintf(stderr, "foundationd: --http-port 0..65535, --threads 1..256, "
                    "--body-bytes-max at least 1024\n");
    return 2;
  }
  snprintf(self_id, sizeof self_id, "%s", opt.node_id ? opt.node_id : "foundationd");
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);

  /* The grid: an embedded member of the cluster, or a remote one. */
  char config[FD_CONFIG_TEXT_MAX + 512];
  grid_options_t go = {.timeout_ms = opt.timeout_ms, .client_name = "foundationd"};
  if (!opt.grid_uri) {
    snprintf(config, sizeof config, "zk = %s\ncluster = %s\n%s%s%s%s", opt.zk, opt.cluster,
             opt.node_id ? "node_id = " : "", opt.node_id ? opt.node_id : "",
             opt.node_id ? "\n" : "", opt.config);
    go.config_text = config;
  }
  int rc = grid_open(opt.grid_uri ? opt.grid_uri : "embedded:", &go, &g);
  if (rc) {
    fprintf(stderr, "foundationd: the grid: %s: %s\n", thing_strerror(rc), grid_last_error());
    return 1;
  }
  grid_stats_t gs;
  if (!opt.grid_uri && grid_stats(g, &gs) == 0) snprintf(self_id, sizeof self_id, "%s", gs.node_id);
  thing_options_t to = {.cache = opt.cache, .create_cache = 1};
  for (int t = 0; (rc = thing_open(g, &to, &ts)) != 0 && t < 300; t++) {
    if (atomic_load(&stopping)) break;
    usleep(100000); /* the cluster may not serve yet (its first map) */
  }
  if (rc) {
    fprintf(stderr, "foundationd: the Things' cache: %s: %s\n", thing_strerror(rc),
            grid_last_error());
    grid_close(g);
    return 1;
  }
  if (!opt.no_singleton) {
    thing_singleton_options_t so = {.on_gain = on_gain, .on_loss = on_loss,
                                    .lease_ms = opt.singleton_lease_ms};
    if ((rc = thing_singleton_start(ts, &so, &single)) != 0)
      say("warning=\"not a singleton candidate: %s\"", thing_strerror(rc));
  }

  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
  if (inet_pton(AF_INET, bind_addr, &sa.sin_addr) != 1) {
    fprintf(stderr, "foundationd: --bind %s is not an IPv4 address\n", bind_addr);
    return 2;
  }
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)opt.port, NULL, NULL, handler,
      NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE,
      opt.threads, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned)60, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "foundationd: cannot listen on %s:%d\n", bind_addr, opt.port);
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  int port = info ? info->port : opt.port;
  if (opt.port_file) {
    FILE *f = fopen(opt.port_file, "w");
    if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0) {
      fprintf(stderr, "foundationd: cannot write %s\n", opt.port_file);
      return 1;
    }
  }
  say("listening=%s:%d grid=%s", bind_addr, port, opt.grid_uri ? opt.grid_uri : "embedded");

  /* DataChange events of every Thing: the subscription reads the current
   * values first, which a cluster still settling (nodes joining) may not
   * answer in time: tried again until it holds. */
  for (int tries = 0; !opt.no_subscribe && !sub && !atomic_load(&stopping); tries++) {
    thing_sub_options_t so = {.type = THING_CHANGE_ALWAYS, .callback = on_change};
    if ((rc = thing_subscribe(ts, &so, &sub)) == 0) {
      say("subscribed=yes tries=%d", tries + 1);
    } else {
      sub = NULL;
      if (tries == 0) say("warning=\"DataChange subscription: %s: trying again\"", thing_strerror(rc));
      usleep(500000);
    }
  }
  while (!atomic_load(&stopping)) usleep(50000);

  /* A graceful leave: not ready, the balancer notices, the node hands its
   * partitions over, then the process goes. */
  atomic_store(&leaving, 1);
  say("leaving=started drain_ms=%u", opt.drain_ms);
  usleep((useconds_t)opt.drain_ms * 1000);
  pthread_mutex_lock(&single_lock);
  if (single) thing_singleton_stop(single); /* the role moves now, not at the lease's end */
  single = NULL;
  pthread_mutex_unlock(&single_lock);
  if (!opt.grid_uri && (rc = grid_leave(g)) != 0)
    say("warning=\"the grid node did not leave gracefully: %s\"", thing_strerror(rc));
  /* Until this node holds no copy any more (its partitions are handed
   * over), --leave-timeout-ms at most (the last member has nobody to hand
   * them to). */
  for (int t = 0; !opt.grid_uri && rc == 0 && t < (int)(opt.leave_timeout_ms / 100); t++) {
    grid_cluster_status_t *st;
    int holds = 0;
    if (grid_cluster_status(g, &st) == 0) {
      for (size_t i = 0; i < st->nnodes; i++)
        if (!strcmp(st->nodes[i].id, self_id) && st->nodes[i].in_map)
          holds = st->nodes[i].primaries + st->nodes[i].backups > 0 || !st->nodes[i].leaving;
      grid_cluster_status_free(st);
    }
    if (!holds) break;
    usleep(100000);
  }
  MHD_stop_daemon(d);
  if (sub) thing_unsubscribe(sub);
  thing_close(ts);
  grid_close(g);
  say("stopped=yes events=%llu requests=%llu", (unsigned long long)events_seen,
      (unsigned long long)requests);
  return 0;
}
