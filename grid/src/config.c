#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grid_types.h"
#include "pmap.h"

typedef enum { CFG_INT, CFG_SIZE, CFG_BOOL, CFG_STR, CFG_CHOICE } config_kind_t;

typedef struct config_key {
  const char *name;
  config_kind_t kind;
  size_t offset;
  int64_t min, max; /* for numbers; for strings max is the buffer size */
  const char *choices; /* CFG_CHOICE: the values allowed, "|"-separated */
} config_key_t;

#define CFG_N(name, kind, min, max) {#name, kind, offsetof(config_t, name), min, max, NULL}
#define CFG_S(name) {#name, CFG_STR, offsetof(config_t, name), 0, sizeof(((config_t *)0)->name), NULL}
#define CFG_C(name, choices) \
  {#name, CFG_CHOICE, offsetof(config_t, name), 0, sizeof(((config_t *)0)->name), choices}

static const config_key_t config_keys[] = {
    CFG_S(bind),
    CFG_N(port, CFG_INT, -1, 65535),
    CFG_N(listen, CFG_BOOL, 0, 1),
    CFG_S(port_file),
    CFG_N(resp_port, CFG_INT, -1, 65535),
    CFG_S(resp_port_file),
    CFG_N(resp_args_max, CFG_INT, 3, 10000000),
    CFG_N(resp_command_bytes_max, CFG_SIZE, 0, (int64_t)1 << 30),
    CFG_N(resp_pipeline_max, CFG_INT, 1, 1000000),
    CFG_N(databases, CFG_INT, 1, 100000),
    CFG_S(node_id),
    CFG_S(data_dir),
    CFG_N(disk_free_bytes_min, CFG_SIZE, 0, (int64_t)1 << 50),
    CFG_N(loops, CFG_INT, 0, 64),
    CFG_N(memory_bytes_max, CFG_SIZE, 0, INT64_MAX),
    CFG_N(frame_bytes_max, CFG_SIZE, 1024, (int64_t)1 << 30),
    CFG_N(key_bytes_max, CFG_SIZE, 1, (int64_t)1 << 20),
    CFG_N(value_bytes_max, CFG_SIZE, 1, (int64_t)1 << 30),
    CFG_N(batch_keys_max, CFG_INT, 1, 1000000),
    CFG_N(scan_count_max, CFG_INT, 1, 1000000),
    CFG_N(caches_max, CFG_INT, 1, 100000),
    CFG_N(partitions_default, CFG_INT, 1, PMAP_PARTITIONS_MAX),
    CFG_N(partitions_max, CFG_INT, 1, PMAP_PARTITIONS_MAX),
    CFG_N(connections_max, CFG_INT, 1, 1000000),
    CFG_N(output_bytes_max, CFG_SIZE, 4096, INT64_MAX),
    CFG_N(handshake_timeout_ms, CFG_INT, 1, 3600000),
    CFG_N(frame_timeout_ms, CFG_INT, 1, 3600000),
    CFG_N(sweep_interval_ms, CFG_INT, 1, 3600000),
    CFG_N(sweep_entries_per_tick, CFG_INT, 1, 10000000),
    CFG_S(log_level),
    CFG_S(zk),
    CFG_S(cluster),
    CFG_S(zone),
    CFG_S(advertise),
    CFG_N(zk_session_timeout_ms, CFG_INT, 200, 600000),
    CFG_N(cluster_min_nodes, CFG_INT, 1, PMAP_NODES_MAX),
    CFG_N(forward_timeout_ms, CFG_INT, 1, 3600000),
    CFG_N(repl_pending_max, CFG_INT, 1, 10000000),
    CFG_N(loop_handoffs_max, CFG_INT, 1, 10000000),
    CFG_N(rebalance_bytes_per_sec, CFG_SIZE, 0, INT64_MAX),
    CFG_N(leave_timeout_ms, CFG_INT, 0, 3600000),
    CFG_N(lost_grace_ms, CFG_INT, 0, 86400000),
    /* 1G: 4,096 chunks of 256K, whose names keep the root well under
     * ZooKeeper's 1 MB. */
    CFG_N(map_bytes_max, CFG_SIZE, 4096, (int64_t)1 << 30),
    CFG_N(map_groups_max, CFG_INT, 1, 4096),
    CFG_N(change_buffer_bytes, CFG_SIZE, 0, (int64_t)1 << 30),
    CFG_N(change_buffers_bytes_max, CFG_SIZE, 0, INT64_MAX),
    CFG_N(subscriptions_max, CFG_INT, 0, 1000000),
    CFG_N(subscription_keys_max, CFG_INT, 1, 1000000),
    CFG_S(notify_keyspace_events),
    CFG_N(tls_port, CFG_INT, -1, 65535),
    CFG_S(tls_port_file),
    CFG_N(tls_resp_port, CFG_INT, -1, 65535),
    CFG_S(tls_resp_port_file),
    CFG_S(tls_cert_file),
    CFG_S(tls_key_file),
    CFG_S(tls_ca_cert_file),
    CFG_C(tls_auth_clients, "yes|no|optional"),
    CFG_S(tls_protocols),
    CFG_S(tls_ciphers),
    CFG_S(tls_ciphersuites),
    CFG_N(tls_replication, CFG_BOOL, 0, 1),
    CFG_N(auth, CFG_BOOL, 0, 1),
    CFG_S(requirepass),
    CFG_N(auth_failures_max, CFG_INT, 1, 1000000),
    CFG_N(auth_lockout_ms, CFG_INT, 1, 3600000),
    CFG_N(unauthenticated_bytes_max, CFG_SIZE, 64, (int64_t)1 << 30),
    CFG_S(cluster_secret),
    CFG_S(zk_auth),
    CFG_N(http_port, CFG_INT, -1, 65535),
    CFG_S(http_port_file),
    CFG_N(http_connections_max, CFG_INT, 1, 100000),
    CFG_N(http_timeout_ms, CFG_INT, 1000, 3600000),
    CFG_N(http_request_bytes_max, CFG_SIZE, 4096, 1 << 20),
};

/* Whether value is one of choices ("a|b|c"). */
static int config_choice_ok(const char *choices, const char *value) {
  size_t vl = strlen(value);
  for (const char *p = choices; *p;) {
    const char *bar = strchr(p, '|');
    size_t l = bar ? (size_t)(bar - p) : strlen(p);
    if (l == vl && !strncmp(p, value, l)) return 1;
    p += l + (bar ? 1 : 0);
  }
  return 0;
}

void config_defaults(config_t *c) {
  memset(c, 0, sizeof *c);
  strcpy(c->bind, "127.0.0.1");
  c->port = 10800;
  c->listen = 1;
  c->resp_port = -1;
  c->resp_args_max = 1024 * 1024;
  c->resp_command_bytes_max = 0; /* as frame_bytes_max */
  c->resp_pipeline_max = 1024;
  c->databases = 16;
  c->loops = 0;
  c->memory_bytes_max = 0;
  c->frame_bytes_max = 64 << 20;
  c->key_bytes_max = 64 << 10;
  c->value_bytes_max = 16 << 20;
  c->batch_keys_max = 10000;
  c->scan_count_max = 10000;
  c->caches_max = 256;
  c->partitions_default = 1024;
  c->partitions_max = 65536;
  c->connections_max = 10000;
  c->output_bytes_max = 64 << 20;
  c->handshake_timeout_ms = 5000;
  c->frame_timeout_ms = 30000;
  c->sweep_interval_ms = 100;
  c->sweep_entries_per_tick = 2000;
  strcpy(c->log_level, "info");
  strcpy(c->cluster, "grid");
  c->zk_session_timeout_ms = 2000;
  c->cluster_min_nodes = 1;
  c->forward_timeout_ms = 5000;
  c->repl_pending_max = 10000;
  c->loop_handoffs_max = 100000;
  c->rebalance_bytes_per_sec = 64 << 20;
  c->leave_timeout_ms = 60000;
  c->map_bytes_max = 64 << 20;
  c->map_groups_max = 1024;
  c->lost_grace_ms = 30000;
  c->change_buffer_bytes = 64 << 10;
  c->disk_free_bytes_min = 64 << 20;
  c->subscriptions_max = 1024;
  c->subscription_keys_max = 1024;
  c->tls_port = -1;
  c->tls_resp_port = -1;
  strcpy(c->tls_auth_clients, "yes");
  c->auth_failures_max = 5;
  c->auth_lockout_ms = 1000;
  c->unauthenticated_bytes_max = 16384;
  c->http_port = -1;
  c->http_connections_max = 64;
  c->http_timeout_ms = 10000;
  c->http_request_bytes_max = 32768;
}

static int config_parse_number(const char *v, int is_size, int64_t *out) {
  errno = 0;
  char *end;
  long long n = strtoll(v, &end, 10);
  if (end == v || errno) return -1;
  int64_t mul = 1;
  if (is_size && *end) {
    switch (toupper((unsigned char)*end)) {
      case 'K': mul = 1024; break;
      case 'M': mul = 1024 * 1024; break;
      case 'G': mul = 1024 * 1024 * 1024; break;
      default: return -1;
    }
    end++;
    if (toupper((unsigned char)*end) == 'B') end++;
  }
  if (*end) return -1;
  if (n != 0 && (n > INT64_MAX / mul || n < INT64_MIN / mul)) return -1;
  *out = (int64_t)n * mul;
  return 0;
}

int config_set(config_t *c, const char *key, const char *value, char *err,
               size_t err_len) {
  for (size_t i = 0; i < sizeof config_keys / sizeof config_keys[0]; i++) {
    const config_key_t *k = &config_keys[i];
    if (strcmp(k->name, key) != 0) continue;
    char *field = (char *)c + k->offset;
    if (k->kind == CFG_CHOICE && !config_choice_ok(k->choices, value)) {
      snprintf(err, err_len, "%s: expected one of %s, got \"%s\"", key, k->choices, value);
      return GRID_ECONFIG;
    }
    if (k->kind == CFG_STR || k->kind == CFG_CHOICE) {
      if (strlen(value) >= (size_t)k->max) {
        snprintf(err, err_len, "%s: value longer than %lld bytes", key,
                 (long long)k->max - 1);
        return GRID_ECONFIG;
      }
      strcpy(field, value);
      return 0;
    }
    int64_t n;
    if (k->kind == CFG_BOOL) {
      if (!strcmp(value, "on") || !strcmp(value, "true") || !strcmp(value, "1") ||
          !strcmp(value, "yes")) {
        n = 1;
      } else if (!strcmp(value, "off") || !strcmp(value, "false") ||
                 !strcmp(value, "0") || !strcmp(value, "no")) {
        n = 0;
      } else {
        snprintf(err, err_len, "%s: expected on or off, got \"%s\"", key, value);
        return GRID_ECONFIG;
      }
    } else if (config_parse_number(value, k->kind == CFG_SIZE, &n) != 0) {
      snprintf(err, err_len, "%s: expected %s, got \"%s\"", key,
               k->kind == CFG_SIZE ? "a size such as 512M" : "a whole number",
               value);
      return GRID_ECONFIG;
    }
    if (n < k->min || n > k->max) {
      snprintf(err, err_len, "%s: %lld is outside %lld..%lld", key,
               (long long)n, (long long)k->min, (long long)k->max);
      return GRID_ECONFIG;
    }
    *(int64_t *)(void *)field = n;
    return 0;
  }
  snprintf(err, err_len, "unknown setting \"%s\"", key);
  return GRID_ECONFIG;
}

static char *config_trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

int config_apply_text(config_t *c, const char *text, const char *origin,
                      char *err, size_t err_len) {
  int line_no = 0;
  const char *p = text;
  while (*p) {
    line_no++;
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    char line[1024];
    if (len >= sizeof line) {
      snprintf(err, err_len, "%s:%d: line longer than %zu bytes", origin,
               line_no, sizeof line - 1);
      return GRID_ECONFIG;
    }
    memcpy(line, p, len);
    line[len] = '\0';
    p += len + (nl ? 1 : 0);
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *s = config_trim(line);
    if (!*s) continue;
    char *eq = strchr(s, '=');
    if (!eq) {
      snprintf(err, err_len, "%s:%d: expected \"key = value\"", origin, line_no);
      return GRID_ECONFIG;
    }
    *eq = '\0';
    char *key = config_trim(s);
    char *value = config_trim(eq + 1);
    char why[256];
    if (config_set(c, key, value, why, sizeof why) != 0) {
      snprintf(err, err_len, "%s:%d: %s", origin, line_no, why);
      return GRID_ECONFIG;
    }
  }
  return 0;
}

int config_load_file(config_t *c, const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, err_len, "cannot read config file %s: %s", path,
             strerror(errno));
    return GRID_ECONFIG;
  }
  char *text = NULL;
  size_t len = 0, cap = 0;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
    if (len + n + 1 > cap) {
      cap = (len + n + 1) * 2;
      char *t = realloc(text, cap);
      if (!t) {
        free(text);
        fclose(f);
        snprintf(err, err_len, "out of memory reading %s", path);
        return GRID_ENOMEM;
      }
      text = t;
    }
    memcpy(text + len, buf, n);
    len += n;
  }
  int read_failed = ferror(f);
  int read_errno = errno;
  fclose(f);
  if (read_failed) {
    free(text);
    snprintf(err, err_len, "cannot read config file %s: %s", path,
             strerror(read_errno));
    return GRID_ECONFIG;
  }
  if (!text) return 0;
  text[len] = '\0';
  int rc = config_apply_text(c, text, path, err, err_len);
  free(text);
  return rc;
}

void config_finish(config_t *c) {
  if (c->loops == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->loops = n > 0 ? n : 1;
  }
  if (c->memory_bytes_max == 0) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    c->memory_bytes_max = pages > 0 && page > 0 ? (int64_t)pages * page / 4
                                                : (int64_t)1 << 30;
  }
  if (c->change_buffers_bytes_max == 0) c->change_buffers_bytes_max = c->memory_bytes_max / 8;
  if (c->partitions_default > c->partitions_max)
    c->partitions_default = c->partitions_max;
  if (c->requirepass[0]) c->auth = 1; /* as Redis's requirepass */
  /* A RESP command is bounded as a native frame is, unless set apart. */
  if (c->resp_command_bytes_max == 0) c->resp_command_bytes_max = c->frame_bytes_max;
}

void config_print(const config_t *c, void *fp) {
  FILE *f = fp;
  for (size_t i = 0; i < sizeof config_keys / sizeof config_keys[0]; i++) {
    const config_key_t *k = &config_keys[i];
    const char *field = (const char *)c + k->offset;
    int secret = !strcmp(k->name, "requirepass") || !strcmp(k->name, "cluster_secret") ||
                 !strcmp(k->name, "zk_auth");
    if (secret && field[0])
      fprintf(f, "%s = (set, not shown)\n", k->name);
    else if (k->kind == CFG_STR || k->kind == CFG_CHOICE)
      fprintf(f, "%s = %s\n", k->name, field);
    else if (k->kind == CFG_BOOL)
      fprintf(f, "%s = %s\n", k->name, *(const int64_t *)(const void *)field ? "on" : "off");
    else
      fprintf(f, "%s = %lld\n", k->name, (long long)*(const int64_t *)(const void *)field);
  }
}
