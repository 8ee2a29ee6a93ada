/* gridctl: the command line for a grid node, built on grid.h only. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grid.h"

#define STATUS_CACHES_LISTED 50 /* gridctl status names caches up to this many */

#define EXIT_NOT_FOUND 1
#define EXIT_USAGE 2
#define EXIT_FAILED 3

static void usage(FILE *f) {
  fprintf(f,
          "usage: gridctl [--server HOST:PORT] [--timeout-ms N] [--tls] [--cacert F]\n"
          "               [--cert F] [--key F] [--user U] [--password P] <verb> [args]\n"
          "\n"
          "Talks to a grid node (default server 127.0.0.1:10800, or $GRID_SERVER;\n"
          "grids://HOST:PORT or --tls: over TLS, to the node's tls_port).\n"
          "  --tls               TLS; the node's certificate is checked against\n"
          "                      --cacert F (PEM CA certificates; default: the system's)\n"
          "  --cert F --key F    this client's certificate and key (mutual TLS)\n"
          "  --user U            who to log in as, on nodes with auth = on\n"
          "  --password P        its password (default: $GRID_PASSWORD)\n"
          "\n"
          "verbs:\n"
          "  put CACHE KEY VALUE [--ttl-ms N]   write a value (TTL in milliseconds)\n"
          "  get CACHE KEY                      print the value; exit 1 if missing\n"
          "  del CACHE KEY                      delete; exit 1 if missing\n"
          "  add CACHE KEY DELTA                atomic add on a counter, print the sum\n"
          "  size CACHE                         number of entries\n"
          "  caches                             list caches and their settings\n"
          "  create-cache NAME [--partitions N] [--backups N]\n"
          "               [--mode partitioned|replicated] [--sync full|primary]\n"
          "               [--ttl-ms N] [--read-from-backup on|off]\n"
          "               [--persistence on|off] [--fsync always|never|every-ms=N]\n"
          "                                     create a cache (TTL: its default; an\n"
          "                                     embedded member reads its backups;\n"
          "                                     persistence: kept in each node's\n"
          "                                     data_dir too, fsync: when a write is\n"
          "                                     on disk, default always)\n"
          "  drop-cache NAME                    drop a cache and all its entries\n"
          "  stats                              entries, memory, ops served, connections\n"
          "  status [--json]                    cluster: nodes, coordinator, epoch, and\n"
          "                                     per cache partitions owning / moving / lost\n"
          "  status --watch [--interval-ms N] [--count N]\n"
          "                                     the same, refreshed in place every N ms\n"
          "                                     (1000), with a bar per group moving;\n"
          "                                     --count: stop after N views\n"
          "  watch CACHE [--prefix P] [--affinity A]... [--snapshot] [--keys-only]\n"
          "              [--json] [--count N]   print the cache's changes as they come,\n"
          "                                     one line each (--snapshot: its entries\n"
          "                                     first); stops after N events, or on ^C\n"
          "  ping                               check the node answers\n"
          "  leave                              the node leaves its cluster gracefully\n"
          "                                     (hands its partitions over, then stops)\n"
          "  snapshot create NAME               every node copies its persistent data\n"
          "                                     to data_dir/snapshots/NAME (gridd\n"
          "                                     --restore NAME goes back to it)\n"
          "  accept-loss NODE                   go on without NODE, gone for good:\n"
          "                                     partitions only it held stop waiting\n"
          "                                     (persistent ones start again, empty)\n"
          "  user add NAME [--password P | --cert] [--role R]...\n"
          "                                     a user of nodes with auth = on (roles:\n"
          "                                     read, write, admin, alone or role:CACHE;\n"
          "                                     --cert: logs in with a TLS client\n"
          "                                     certificate whose common name is NAME)\n"
          "  user del NAME | user passwd NAME --password P | user roles NAME --role R...\n"
          "  user list                          users, how they log in, their roles\n"
          "\n"
          "exit status: 0 done, 1 not found, 2 usage error, 3 refused or failed\n");
}

/* The error's words, and the node's own when it gave some (which limit,
 * which argument): once each, though the node's may repeat the code's. */
static void print_error(const char *prefix, int rc) {
  const char *why = grid_last_error(), *code = grid_strerror(rc);
  size_t cl = strlen(code);
  if (why[0] && !strncmp(why, code, cl)) why += cl;
  if (!strncmp(why, ": ", 2)) why += 2;
  if (why[0]) fprintf(stderr, "gridctl: %s: %s: %s\n", prefix, code, why);
  else fprintf(stderr, "gridctl: %s: %s\n", prefix, code);
}

static int fail(const char *verb, int rc) {
  print_error(verb, rc);
  return EXIT_FAILED;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s == '-') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || *end || errno) return -1;
  *out = v;
  return 0;
}

static int parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno) return -1;
  *out = v;
  return 0;
}

static int need_args(const char *verb, int have, int want) {
  if (have >= want) return 0;
  fprintf(stderr, "gridctl: %s needs %d argument%s (see gridctl --help)\n", verb,
          want, want == 1 ? "" : "s");
  return -1;
}

static int cmd_put(grid_t *g, int argc, char **argv) {
  if (need_args("put", argc, 3)) return EXIT_USAGE;
  uint64_t ttl = 0;
  for (int i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--ttl-ms") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &ttl) == 0) {
      i++;
    } else {
      fprintf(stderr, "gridctl: put: unexpected \"%s\" (expected --ttl-ms N)\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  int rc = grid_put(g, argv[0], argv[1], strlen(argv[1]), argv[2], strlen(argv[2]), ttl, NULL);
  return rc ? fail("put", rc) : 0;
}

static int cmd_get(grid_t *g, int argc, char **argv) {
  if (need_args("get", argc, 2)) return EXIT_USAGE;
  grid_value_t v;
  int rc = grid_get(g, argv[0], argv[1], strlen(argv[1]), &v);
  if (rc == GRID_ENOTFOUND) {
    fprintf(stderr, "not found\n");
    return EXIT_NOT_FOUND;
  }
  if (rc) return fail("get", rc);
  fwrite(v.data, 1, v.len, stdout);
  fputc('\n', stdout);
  grid_value_free(&v);
  return 0;
}

static int cmd_del(grid_t *g, int argc, char **argv) {
  if (need_args("del", argc, 2)) return EXIT_USAGE;
  int rc = grid_delete(g, argv[0], argv[1], strlen(argv[1]));
  if (rc == GRID_ENOTFOUND) {
    fprintf(stderr, "not found\n");
    return EXIT_NOT_FOUND;
  }
  return rc ? fail("del", rc) : 0;
}

static int cmd_add(grid_t *g, int argc, char **argv) {
  if (need_args("add", argc, 3)) return EXIT_USAGE;
  int64_t delta, sum;
  if (parse_i64(argv[2], &delta)) {
    fprintf(stderr, "gridctl: add: DELTA must be a whole number, got \"%s\"\n", argv[2]);
    return EXIT_USAGE;
  }
  int rc = grid_add(g, argv[0], argv[1], strlen(argv[1]), delta, &sum);
  if (rc) return fail("add", rc);
  printf("%" PRId64 "\n", sum);
  return 0;
}

static int cmd_size(grid_t *g, int argc, char **argv) {
  if (need_args("size", argc, 1)) return EXIT_USAGE;
  uint64_t n;
  int rc = grid_size(g, argv[0], &n);
  if (rc) return fail("size", rc);
  printf("%" PRIu64 "\n", n);
  return 0;
}

static int cmd_caches(grid_t *g) {
  grid_cache_config_t *list;
  size_t n;
  int rc = grid_cache_list(g, &list, &n);
  if (rc) return fail("caches", rc);
  printf("%-24s %10s %7s %-11s %-7s %14s %-11s %s\n", "NAME", "PARTITIONS", "BACKUPS",
         "MODE", "SYNC", "DEFAULT_TTL_MS", "PERSISTENCE", "FSYNC");
  for (size_t i = 0; i < n; i++) {
    char fsync[32];
    if (!list[i].persistence) snprintf(fsync, sizeof fsync, "-");
    else if (list[i].fsync == GRID_FSYNC_NEVER) snprintf(fsync, sizeof fsync, "never");
    else if (list[i].fsync == GRID_FSYNC_EVERY_MS)
      snprintf(fsync, sizeof fsync, "every-ms=%u", list[i].fsync_every_ms);
    else snprintf(fsync, sizeof fsync, "always");
    printf("%-24s %10u %7u %-11s %-7s %14" PRIu64 " %-11s %s\n", list[i].name,
           list[i].partitions, list[i].backups,
           list[i].mode == GRID_MODE_REPLICATED ? "replicated" : "partitioned",
           list[i].sync == GRID_SYNC_PRIMARY ? "primary" : "full",
           list[i].default_ttl_ms, list[i].persistence ? "on" : "off", fsync);
  }
  grid_cache_list_free(list, n);
  return 0;
}

static int cmd_snapshot(grid_t *g, int argc, char **argv) {
  if (argc != 2 || strcmp(argv[0], "create") != 0) {
    fprintf(stderr, "gridctl: snapshot: usage: snapshot create NAME\n");
    return EXIT_USAGE;
  }
  uint64_t nodes = 0;
  int rc = grid_snapshot_create(g, argv[1], &nodes);
  if (rc) return fail("snapshot create", rc);
  printf("snapshot %s made on %" PRIu64 " node%s (data_dir/snapshots/%s; gridd --restore %s "
         "brings a node back to it)\n", argv[1], nodes, nodes == 1 ? "" : "s", argv[1], argv[1]);
  return 0;
}

static int cmd_accept_loss(grid_t *g, int argc, char **argv) {
  if (need_args("accept-loss", argc, 1)) return EXIT_USAGE;
  int rc = grid_accept_loss(g, argv[0]);
  if (rc) return fail("accept-loss", rc);
  printf("the loss of %s is accepted: the coordinator's next map goes on without it\n", argv[0]);
  return 0;
}

#define GRIDCTL_ROLES_MAX 32

/* user add NAME [--password P | --cert] [--role R]..., user del NAME,
 * user passwd NAME --password P, user roles NAME --role R..., user list. */
static int cmd_user(grid_t *g, int argc, char **argv) {
  if (argc < 1) {
    fprintf(stderr, "gridctl: user: expected add, del, passwd, roles or list (see gridctl --help)\n");
    return EXIT_USAGE;
  }
  const char *sub = argv[0];
  if (!strcmp(sub, "list")) {
    grid_user_t *us;
    size_t n;
    int rc = grid_user_list(g, &us, &n);
    if (rc) return fail("user list", rc);
    printf("%-24s %-10s %s\n", "USER", "LOGIN", "ROLES");
    for (size_t i = 0; i < n; i++) {
      char roles[1024] = "";
      size_t at = 0;
      for (size_t k = 0; k < us[i].n_roles && at < sizeof roles; k++)
        at += (size_t)snprintf(roles + at, sizeof roles - at, "%s%s", k ? "," : "", us[i].roles[k]);
      const char *login = us[i].password && us[i].cert ? "both" : us[i].cert ? "cert" : "password";
      printf("%-24s %-10s %s\n", us[i].name, login, us[i].n_roles ? roles : "-");
    }
    grid_user_list_free(us, n);
    return 0;
  }
  int known = !strcmp(sub, "add") || !strcmp(sub, "del") || !strcmp(sub, "passwd") ||
              !strcmp(sub, "roles");
  if (!known || argc < 2) {
    fprintf(stderr, "gridctl: user %s: usage: user add NAME [--password P | --cert] [--role R]..., "
            "user del NAME, user passwd NAME --password P, user roles NAME --role R..., "
            "user list\n", sub);
    return EXIT_USAGE;
  }
  const char *name = argv[1], *password = NULL;
  const char *roles[GRIDCTL_ROLES_MAX];
  size_t nroles = 0;
  bool cert = false;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--cert")) {
      cert = true;
    } else if (!strcmp(argv[i], "--password") && i + 1 < argc) {
      password = argv[++i];
    } else if (!strcmp(argv[i], "--role") && i + 1 < argc && nroles < GRIDCTL_ROLES_MAX) {
      roles[nroles++] = argv[++i];
    } else {
      fprintf(stderr, "gridctl: user %s: unknown or incomplete option \"%s\"\n", sub, argv[i]);
      return EXIT_USAGE;
    }
  }
  char verb[32];
  snprintf(verb, sizeof verb, "user %s", sub);
  int rc;
  if (!strcmp(sub, "add")) {
    rc = grid_user_add(g, name, password, roles, nroles, cert);
  } else if (!strcmp(sub, "del")) {
    rc = grid_user_del(g, name);
  } else if (!strcmp(sub, "passwd")) {
    if (!password) {
      fprintf(stderr, "gridctl: user passwd: --password P is the new password\n");
      return EXIT_USAGE;
    }
    rc = grid_user_passwd(g, name, password);
  } else {
    rc = grid_user_roles(g, name, roles, nroles);
  }
  if (rc) return fail(verb, rc);
  return 0;
}

static int cmd_create_cache(grid_t *g, int argc, char **argv) {
  if (need_args("create-cache", argc, 1)) return EXIT_USAGE;
  grid_cache_config_t cfg = {.name = argv[0]};
  for (int i = 1; i < argc; i++) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t n;
    if (!val) {
      fprintf(stderr, "gridctl: create-cache: %s needs a value\n", opt);
      return EXIT_USAGE;
    }
    i++;
    if (strcmp(opt, "--partitions") == 0 && parse_u64(val, &n) == 0 && n > 0 && n <= UINT32_MAX) {
      cfg.partitions = (uint32_t)n;
    } else if (strcmp(opt, "--backups") == 0 && parse_u64(val, &n) == 0 && n <= 3) {
      cfg.backups = (uint32_t)n;
    } else if (strcmp(opt, "--mode") == 0 && strcmp(val, "partitioned") == 0) {
      cfg.mode = GRID_MODE_PARTITIONED;
    } else if (strcmp(opt, "--mode") == 0 && strcmp(val, "replicated") == 0) {
      cfg.mode = GRID_MODE_REPLICATED;
    } else if (strcmp(opt, "--sync") == 0 && strcmp(val, "full") == 0) {
      cfg.sync = GRID_SYNC_FULL;
    } else if (strcmp(opt, "--sync") == 0 && strcmp(val, "primary") == 0) {
      cfg.sync = GRID_SYNC_PRIMARY;
    } else if (strcmp(opt, "--ttl-ms") == 0 && parse_u64(val, &n) == 0) {
      cfg.default_ttl_ms = n;
    } else if (strcmp(opt, "--read-from-backup") == 0 && strcmp(val, "on") == 0) {
      cfg.read_from_backup = 1;
    } else if (strcmp(opt, "--read-from-backup") == 0 && strcmp(val, "off") == 0) {
      cfg.read_from_backup = -1;
    } else if (strcmp(opt, "--persistence") == 0 && strcmp(val, "on") == 0) {
      cfg.persistence = 1;
    } else if (strcmp(opt, "--persistence") == 0 && strcmp(val, "off") == 0) {
      cfg.persistence = 0;
    } else if (strcmp(opt, "--fsync") == 0 && strcmp(val, "always") == 0) {
      cfg.fsync = GRID_FSYNC_ALWAYS;
    } else if (strcmp(opt, "--fsync") == 0 && strcmp(val, "never") == 0) {
      cfg.fsync = GRID_FSYNC_NEVER;
    } else if (strcmp(opt, "--fsync") == 0 && strncmp(val, "every-ms=", 9) == 0 &&
               parse_u64(val + 9, &n) == 0 && n >= 1 && n <= 60000) {
      cfg.fsync = GRID_FSYNC_EVERY_MS;
      cfg.fsync_every_ms = (uint32_t)n;
    } else {
      fprintf(stderr,
              "gridctl: create-cache: bad option \"%s %s\" (--partitions N>0, "
              "--backups 0..3, --mode partitioned|replicated, --sync full|primary, "
              "--ttl-ms N, --read-from-backup on|off, --persistence on|off, "
              "--fsync always|never|every-ms=N with N 1..60000)\n", opt, val);
      return EXIT_USAGE;
    }
  }
  int rc = grid_cache_create(g, &cfg);
  return rc ? fail("create-cache", rc) : 0;
}

static int cmd_stats(grid_t *g) {
  grid_stats_t s;
  int rc = grid_stats(g, &s);
  if (rc) return fail("stats", rc);
  printf("node_id           %s\n", s.node_id);
  printf("entries           %" PRIu64 "\n", s.entries);
  printf("memory_bytes      %" PRIu64 "\n", s.memory_bytes);
  printf("memory_bytes_max  %" PRIu64 "\n", s.memory_bytes_max);
  printf("ops               %" PRIu64 "\n", s.ops);
  printf("connections       %" PRIu64 "\n", s.connections);
  printf("caches            %" PRIu64 "\n", s.caches);
  printf("uptime_ms         %" PRIu64 "\n", s.uptime_ms);
  printf("loop_ops          %" PRIu64 "\n", s.loop_ops);
  printf("local_reads       %" PRIu64 "\n", s.local_reads);
  printf("fill_bytes_in     %" PRIu64 "\n", s.fill_bytes_in);
  printf("fill_delta_parts  %" PRIu64 "\n", s.fill_delta_parts);
  printf("disk_bytes_written %" PRIu64 "\n", s.disk_bytes_written);
  return 0;
}

/* Prints s as a JSON string. */
static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}

/* Prints n bytes as a JSON string. */
static void json_bytes(const void *p, size_t n) {
  const unsigned char *b = p;
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    if (b[i] == '"' || b[i] == '\\') printf("\\%c", b[i]);
    else if (b[i] < 0x20 || b[i] >= 0x7f) printf("\\u%04x", b[i]);
    else putchar(b[i]);
  }
  putchar('"');
}

/* Prints n bytes as text, bytes that are not printable as \xHH. */
static void text_bytes(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\') putchar(b[i]);
    else printf("\\x%02x", b[i]);
  }
}

static volatile sig_atomic_t watch_stop;
static void watch_on_signal(int sig) {
  (void)sig;
  watch_stop = 1;
}

static void watch_print(const grid_event_t *ev, int json) {
  const char *kind = ev->snapshot ? "snapshot" : grid_event_name(ev->kind);
  if (json) {
    printf("{\"event\":\"%s\",\"partition\":%" PRIu32, kind, ev->partition);
    if (ev->kind == GRID_EVENT_PUT || ev->kind == GRID_EVENT_DELETE ||
        ev->kind == GRID_EVENT_EXPIRE) {
      printf(",\"version\":%" PRIu64 ",\"key\":", ev->version);
      json_bytes(ev->key, ev->key_len);
      if (ev->value) {
        printf(",\"value\":");
        json_bytes(ev->value, ev->value_len);
      }
      if (ev->expire_at_ms) printf(",\"expire_at_ms\":%" PRId64, ev->expire_at_ms);
    }
    if (ev->kind == GRID_EVENT_ENDED) printf(",\"error\":\"%s\"", grid_err_name(ev->status));
    printf("}\n");
  } else if (ev->kind == GRID_EVENT_GAP) {
    printf("gap      partition=%" PRIu32 " (changes lost: re-read the partition)\n",
           ev->partition);
  } else if (ev->kind == GRID_EVENT_SYNCED) {
    printf("synced   (the snapshot is whole: changes follow)\n");
  } else if (ev->kind == GRID_EVENT_ENDED) {
    printf("ended    %s\n", grid_strerror(ev->status));
  } else {
    printf("%-8s ", kind);
    text_bytes(ev->key, ev->key_len);
    if (ev->value) {
      printf(" = ");
      text_bytes(ev->value, ev->value_len);
    }
    printf("  version=%" PRIu64 " partition=%" PRIu32 "\n", ev->version, ev->partition);
  }
  fflush(stdout);
}

static int cmd_watch(grid_t *g, int argc, char **argv) {
  if (need_args("watch", argc, 1)) return EXIT_USAGE;
  const char *cache = argv[0];
  grid_sub_options_t o = {0};
  int json = 0;
  uint64_t count = 0;
  const void *akeys[64];
  size_t alens[64];
  size_t nak = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--prefix") && i + 1 < argc) {
      o.prefix = argv[++i];
      o.prefix_len = strlen(argv[i]);
    } else if (!strcmp(argv[i], "--affinity") && i + 1 < argc) {
      if (nak == sizeof akeys / sizeof akeys[0]) {
        fprintf(stderr, "gridctl: watch: at most %zu --affinity keys\n", nak);
        return EXIT_USAGE;
      }
      akeys[nak] = argv[++i];
      alens[nak++] = strlen(argv[i]);
    } else if (!strcmp(argv[i], "--snapshot")) {
      o.snapshot = 1;
    } else if (!strcmp(argv[i], "--keys-only")) {
      o.keys_only = 1;
    } else if (!strcmp(argv[i], "--json")) {
      json = 1;
    } else if (!strcmp(argv[i], "--count") && i + 1 < argc &&
               parse_u64(argv[i + 1], &count) == 0 && count > 0) {
      i++;
    } else {
      fprintf(stderr, "gridctl: watch: unexpected \"%s\" (see gridctl --help)\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (nak) {
    o.affinity_keys = akeys;
    o.affinity_key_lens = alens;
    o.n_affinity_keys = nak;
  }
  grid_sub_t *s;
  int rc = grid_subscribe(g, cache, &o, &s);
  if (rc) return fail("watch", rc);
  struct sigaction sa = {.sa_handler = watch_on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  if (!json) fprintf(stderr, "watching %s (^C stops)\n", cache);
  uint64_t seen = 0;
  while (!watch_stop && (!count || seen < count)) {
    grid_event_t ev;
    if (grid_sub_next(s, 200, &ev) != 0) continue;
    watch_print(&ev, json);
    seen++;
    if (ev.kind == GRID_EVENT_ENDED) {
      grid_unsubscribe(s);
      return EXIT_FAILED;
    }
  }
  grid_unsubscribe(s);
  return 0;
}

/* A bar of width cells, done of them filled. */
static void print_bar(double fraction, int width) {
  int done = (int)(fraction * width + 0.5);
  if (done > width) done = width;
  putchar('[');
  for (int i = 0; i < width; i++) putchar(i < done ? '#' : '-');
  putchar(']');
}

static void print_status(const grid_cluster_status_t *st, int json, int watch);

/* status [--json] [--watch [--interval-ms N] [--count N]] */
static int cmd_status(grid_t *g, int argc, char **argv) {
  int json = 0, watch = 0;
  uint64_t interval_ms = 1000, count = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) {
      json = 1;
    } else if (!strcmp(argv[i], "--watch")) {
      watch = 1;
    } else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc &&
               parse_u64(argv[i + 1], &interval_ms) == 0 && interval_ms >= 100 &&
               interval_ms <= 3600000) {
      i++;
    } else if (!strcmp(argv[i], "--count") && i + 1 < argc && parse_u64(argv[i + 1], &count) == 0 &&
               count > 0) {
      i++;
    } else {
      fprintf(stderr, "gridctl: status: unexpected \"%s\" (expected --json, --watch, "
              "--interval-ms N (100..3600000), --count N)\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (json && watch) {
    fprintf(stderr, "gridctl: status: --watch is a terminal view; --json prints once\n");
    return EXIT_USAGE;
  }
  int tty = isatty(STDOUT_FILENO);
  for (uint64_t n = 0; !watch || !count || n < count; n++) {
    grid_cluster_status_t *st;
    int rc = grid_cluster_status(g, &st);
    if (rc && !watch) return fail("status", rc);
    if (watch && tty) printf("\033[H\033[2J"); /* home, clear: the view refreshes in place */
    if (watch) {
      time_t now = time(NULL);
      char when[32];
      strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
      printf("%s  (every %.1f s; ^C to stop)\n\n", when, interval_ms / 1000.0);
    }
    if (rc) {
      print_error("status", rc); /* a node away for a moment: the view goes on */
    } else {
      print_status(st, json, watch);
      grid_cluster_status_free(st);
    }
    fflush(stdout);
    if (!watch) break;
    if (!count || n + 1 < count) {
      struct timespec ts = {(time_t)(interval_ms / 1000), (long)(interval_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  return 0;
}

static void print_status(const grid_cluster_status_t *st, int json, int watch) {
  if (json) {
    printf("{\"cluster\":");
    json_str(st->cluster);
    printf(",\"node\":");
    json_str(st->node_id);
    printf(",\"coordinator\":");
    json_str(st->coordinator);
    printf(",\"epoch\":%" PRIu64 ",\"zk_connected\":%s,\"nodes\":[", st->epoch,
           st->zk_connected ? "true" : "false");
    for (size_t i = 0; i < st->nnodes; i++) {
      const grid_node_status_t *n = &st->nodes[i];
      printf("%s{\"id\":", i ? "," : "");
      json_str(n->id);
      printf(",\"addr\":");
      json_str(n->addr);
      printf(",\"zone\":");
      json_str(n->zone);
      printf(",\"http\":");
      json_str(n->http_addr);
      printf(",\"alive\":%s,\"primaries\":%u,\"backups\":%u}", n->alive ? "true" : "false",
             n->primaries, n->backups);
    }
    for (int list = 0; list < 2; list++) {
      size_t n = list ? st->ngroups : st->ncaches;
      const grid_cache_status_t *cs = list ? st->groups : st->caches;
      printf("],\"%s\":[", list ? "groups" : "caches");
      for (size_t i = 0; i < n; i++) {
        const grid_cache_status_t *c = &cs[i];
        printf("%s{\"name\":", i ? "," : "");
        json_str(c->name);
        printf(",\"group\":");
        json_str(c->group);
        printf(",\"caches\":%u,\"partitions\":%u,\"owning\":%u,\"moving\":%u,\"handoff\":%u,"
               "\"lost\":%u,\"waiting\":%u}", c->caches, c->partitions, c->owning, c->moving,
               c->handoff, c->lost, c->waiting);
      }
    }
    printf("],\"map\":{\"bytes\":%" PRIu64 ",\"znodes\":%u,\"znode_bytes\":%u,"
           "\"znode_bytes_max\":%u,\"map_bytes_max\":%" PRIu64 "}}\n",
           st->map_bytes, st->map_znodes, st->map_znode_bytes, st->map_znode_bytes_max,
           st->map_bytes_max);
  } else if (!st->cluster[0]) {
    printf("single node %s (no cluster)\n", st->node_id);
  } else {
    printf("cluster      %s\n", st->cluster);
    printf("answered by  %s (ZooKeeper %s)\n", st->node_id,
           st->zk_connected ? "connected" : "NOT connected");
    printf("coordinator  %s\n", st->coordinator[0] ? st->coordinator : "(none yet)");
    printf("epoch        %" PRIu64 "%s\n", st->epoch, st->epoch ? "" : " (no partition map yet)");
    printf("\n%-20s %-24s %-10s %-6s %9s %8s\n", "NODE", "ADDRESS", "ZONE", "ALIVE",
           "PRIMARIES", "BACKUPS");
    for (size_t i = 0; i < st->nnodes; i++) {
      const grid_node_status_t *n = &st->nodes[i];
      printf("%-20s %-24s %-10s %-6s %9u %8u\n", n->id, n->addr, n->zone[0] ? n->zone : "-",
             n->alive ? "yes" : "NO", n->primaries, n->backups);
    }
    if (st->map_znodes)
      printf("\nmap          %" PRIu64 " bytes in %u znodes (largest %u, a znode holds %u); "
             "map_bytes_max %" PRIu64 "\n", st->map_bytes, st->map_znodes, st->map_znode_bytes,
             st->map_znode_bytes_max, st->map_bytes_max);
    printf("\n%-24s %7s %10s %8s %8s %8s %6s %10s %7s\n", "GROUP", "CACHES", "PARTITIONS",
           "OWNING", "MOVING", "HANDOFF", "LOST", "REBALANCED", "WAITING");
    uint32_t waiting = 0;
    for (size_t i = 0; i < st->ngroups; i++) {
      const grid_cache_status_t *c = &st->groups[i];
      uint32_t copies = c->owning + c->moving;
      printf("%-24s %7u %10u %8u %8u %8u %6u %9.1f%% %7u\n", c->name, c->caches, c->partitions,
             c->owning, c->moving, c->handoff, c->lost,
             copies ? 100.0 * c->owning / copies : 100.0, c->waiting);
      waiting += c->waiting;
    }
    if (waiting)
      printf("\n%u partitions wait for nodes that are gone (ALIVE NO above): they are served "
             "once those are back, or after gridctl accept-loss NODE\n", waiting);
    /* Caches by name while they fit on a screen; thousands are counted. */
    if (watch) {
      /* Rebalancing and fills as bars: copies in sync of all copies. */
      int any = 0;
      for (size_t i = 0; i < st->ngroups; i++) {
        const grid_cache_status_t *c = &st->groups[i];
        uint32_t copies = c->owning + c->moving;
        if (!c->moving && !c->handoff) continue;
        if (!any++) printf("\nmoving\n");
        printf("%-24s ", c->name);
        print_bar(copies ? (double)c->owning / copies : 1.0, 30);
        printf(" %5.1f%%  %u copies filling, %u handing off\n",
               copies ? 100.0 * c->owning / copies : 100.0, c->moving, c->handoff);
      }
      if (!any) printf("\nevery copy in sync: nothing moving\n");
    } else if (st->ncaches <= STATUS_CACHES_LISTED) {
      printf("\n%-24s %s\n", "CACHE", "GROUP");
      for (size_t i = 0; i < st->ncaches; i++)
        printf("%-24s %s\n", st->caches[i].name, st->caches[i].group);
    } else {
      printf("\n%zu caches (gridctl caches lists them; --json gives each with its group)\n",
             st->ncaches);
    }
  }
}

int main(int argc, char **argv) {
  const char *server = getenv("GRID_SERVER");
  if (!server || !*server) server = "127.0.0.1:10800";
  uint64_t timeout_ms = 5000;
  grid_options_t opts = {.client_name = "gridctl"};
  int tls = 0;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--server") && i + 1 < argc) {
      server = argv[++i];
    } else if (!strcmp(argv[i], "--tls")) {
      tls = 1;
    } else if (!strcmp(argv[i], "--cacert") && i + 1 < argc) {
      opts.tls_ca_file = argv[++i];
    } else if (!strcmp(argv[i], "--cert") && i + 1 < argc) {
      opts.tls_cert_file = argv[++i];
    } else if (!strcmp(argv[i], "--key") && i + 1 < argc) {
      opts.tls_key_file = argv[++i];
    } else if (!strcmp(argv[i], "--user") && i + 1 < argc) {
      opts.user = argv[++i];
    } else if (!strcmp(argv[i], "--password") && i + 1 < argc) {
      opts.password = argv[++i];
    } else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc &&
               parse_u64(argv[i + 1], &timeout_ms) == 0 && timeout_ms > 0 &&
               timeout_ms <= UINT32_MAX) {
      i++;
    } else {
      fprintf(stderr, "gridctl: unknown or incomplete option \"%s\" (see gridctl --help)\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *verb = argv[i];
  int vargc = argc - i - 1;
  char **vargv = argv + i + 1;
  static const char *const verbs[] = {"put", "get", "del", "add", "size", "caches",
                                      "create-cache", "drop-cache", "stats", "ping", "status", "leave",
                                      "accept-loss", "snapshot", "user",
                                      "watch"};
  int known = 0;
  for (size_t k = 0; k < sizeof verbs / sizeof verbs[0]; k++) known |= !strcmp(verb, verbs[k]);
  if (!known) {
    fprintf(stderr, "gridctl: unknown verb \"%s\" (see gridctl --help)\n", verb);
    return EXIT_USAGE;
  }

  char uri[300];
  if (!strncmp(server, "grids://", 8)) {
    tls = 1;
    server += 8;
  } else if (!strncmp(server, "grid://", 7)) {
    server += 7;
  }
  snprintf(uri, sizeof uri, "%s://%s", tls ? "grids" : "grid", server);
  opts.timeout_ms = (uint32_t)timeout_ms;
  if (!opts.password && getenv("GRID_PASSWORD")) opts.password = getenv("GRID_PASSWORD");
  if (opts.password && !opts.user) opts.user = "default";
  if ((opts.tls_cert_file || opts.tls_key_file || opts.tls_ca_file) && !tls) {
    fprintf(stderr, "gridctl: --cacert, --cert and --key are for TLS: add --tls "
            "(or --server grids://HOST:PORT)\n");
    return EXIT_USAGE;
  }
  grid_t *g;
  int rc = grid_open(uri, &opts, &g);
  if (rc) {
    char prefix[320];
    snprintf(prefix, sizeof prefix, "cannot reach %s", server);
    print_error(prefix, rc);
    return EXIT_FAILED;
  }
  int code;
  if (!strcmp(verb, "put")) code = cmd_put(g, vargc, vargv);
  else if (!strcmp(verb, "get")) code = cmd_get(g, vargc, vargv);
  else if (!strcmp(verb, "del")) code = cmd_del(g, vargc, vargv);
  else if (!strcmp(verb, "add")) code = cmd_add(g, vargc, vargv);
  else if (!strcmp(verb, "size")) code = cmd_size(g, vargc, vargv);
  else if (!strcmp(verb, "caches")) code = cmd_caches(g);
  else if (!strcmp(verb, "create-cache")) code = cmd_create_cache(g, vargc, vargv);
  else if (!strcmp(verb, "accept-loss")) code = cmd_accept_loss(g, vargc, vargv);
  else if (!strcmp(verb, "snapshot")) code = cmd_snapshot(g, vargc, vargv);
  else if (!strcmp(verb, "user")) code = cmd_user(g, vargc, vargv);
  else if (!strcmp(verb, "drop-cache")) {
    code = need_args("drop-cache", vargc, 1) ? EXIT_USAGE : 0;
    if (!code && (rc = grid_cache_drop(g, vargv[0])) != 0) code = fail("drop-cache", rc);
  } else if (!strcmp(verb, "stats")) code = cmd_stats(g);
  else if (!strcmp(verb, "status")) code = cmd_status(g, vargc, vargv);
  else if (!strcmp(verb, "watch")) code = cmd_watch(g, vargc, vargv);
  else if (!strcmp(verb, "leave")) {
    code = (rc = grid_leave(g)) ? fail("leave", rc) : 0;
    if (!code) printf("%s is leaving: it hands its partitions over, then stops\n", server);
  }
  else code = (rc = grid_ping(g)) ? fail("ping", rc) : (puts("pong"), 0);
  grid_close(g);
  return code;
}
