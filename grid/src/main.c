/* gridd: one grid node in its own process. This file only wires the
 * command line, the config and the signals to the node module. */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cluster.h"
#include "config.h"
#include "grid_types.h"
#include "log.h"
#include "disk.h"
#include "node.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: gridd [options]\n"
          "\n"
          "Runs one grid node in the foreground until SIGINT or SIGTERM. In a\n"
          "cluster the first signal makes it leave gracefully (its partitions are\n"
          "handed over first, within leave_timeout_ms); a second stops it at once.\n"
          "\n"
          "  --config FILE      read settings (\"key = value\" lines) from FILE\n"
          "  --port N           listen port (default 10800; 0 picks a free port)\n"
          "  --bind ADDR        listen address (default 127.0.0.1)\n"
          "  --loops N          event loop threads (default: one per core)\n"
          "  --port-file FILE   write the bound port to FILE once listening\n"
          "  --resp-port N      also serve the Redis protocol (RESP2) on port N\n"
          "  --zk HOSTS         ZooKeeper (\"h1:2181,h2:2181\"): join a cluster\n"
          "  --cluster NAME     its name (default grid): /grid/NAME in ZooKeeper\n"
          "  --zone Z           this node's zone: no two copies of a partition in one\n"
          "  --http-port N      /metrics (Prometheus), /health, /ready on port N\n"
          "  --set KEY=VALUE    any config setting; may be repeated\n"
          "  --print-config     print the settings in effect and exit\n"
          "  --restore NAME     first make snapshot NAME (gridctl snapshot create) the\n"
          "                     node's data: it is checked whole before anything\n"
          "                     changes; the data it replaces is kept aside in\n"
          "                     data_dir/db.before-restore-<time>\n"
          "  --version          print the version and exit\n"
          "  --help             this text\n"
          "\n"
          "Command-line flags override the config file. Settings (sizes take\n"
          "K, M, G; times are milliseconds):\n"
          "  bind, port, listen, port_file, resp_port, resp_port_file,\n"
          "  resp_args_max, resp_command_bytes_max, resp_pipeline_max, node_id, loops,\n"
          "  memory_bytes_max, frame_bytes_max, key_bytes_max, value_bytes_max,\n"
          "  batch_keys_max, scan_count_max, caches_max, partitions_default,\n"
          "  partitions_max, connections_max, output_bytes_max, handshake_timeout_ms,\n"
          "  frame_timeout_ms, sweep_interval_ms, sweep_entries_per_tick,\n"
          "  change_buffer_bytes, change_buffers_bytes_max, subscriptions_max,\n"
          "  subscription_keys_max, notify_keyspace_events (Redis's letters, as KEA;\n"
          "  empty: none)\n"
          "  log_level (debug, info, warn, error), data_dir (persistent caches)\n"
          "Cluster settings: zk (ZooKeeper hosts; empty: a single node), cluster,\n"
          "  zone, advertise, zk_session_timeout_ms, cluster_min_nodes,\n"
          "  forward_timeout_ms, repl_pending_max, loop_handoffs_max,\n"
          "  rebalance_bytes_per_sec, leave_timeout_ms, lost_grace_ms, map_bytes_max,\n"
          "  map_groups_max\n"
          "TLS settings (Redis's names; SIGHUP reloads the files): tls_port,\n"
          "  tls_port_file, tls_resp_port, tls_resp_port_file (-1: off, 0: any free\n"
          "  port; port = -1 turns the plain native port off), tls_cert_file,\n"
          "  tls_key_file, tls_ca_cert_file, tls_auth_clients (yes, no, optional),\n"
          "  tls_protocols (\"TLSv1.2 TLSv1.3\"), tls_ciphers, tls_ciphersuites,\n"
          "  tls_replication (links between nodes over TLS)\n");
}

#define GRIDD_LEAVE_GRACE_MS 500

/* The node cannot go on: say why, and stop with an error status. */
static _Atomic int gridd_fatal;
static void gridd_on_fatal(const char *why) {
  if (atomic_exchange(&gridd_fatal, 1)) return;
  fprintf(stderr, "gridd: %s\n", why);
  kill(getpid(), SIGTERM);
}

/* A leave asked by gridctl is done: stop the way a signal would. */
static void gridd_on_left(void *arg) {
  (void)arg;
  kill(getpid(), SIGTERM);
}

/* The flags: a first pass reads only --config, --print-config, --version and
 * --help; a second turns the others into config settings. */
static const struct option gridd_options[] = {
    {"config", required_argument, 0, 'c'}, {"port", required_argument, 0, 'p'},
    {"bind", required_argument, 0, 'b'},   {"loops", required_argument, 0, 'l'},
    {"port-file", required_argument, 0, 'f'}, {"set", required_argument, 0, 's'},
    {"resp-port", required_argument, 0, 'r'},
    {"zk", required_argument, 0, 'z'},     {"cluster", required_argument, 0, 'C'},
    {"zone", required_argument, 0, 'Z'},   {"http-port", required_argument, 0, 'H'},
    {"print-config", no_argument, 0, 'P'}, {"version", no_argument, 0, 'V'},
    {"restore", required_argument, 0, 'R'},
    {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
#define GRIDD_SHORT_OPTIONS "c:p:b:l:f:s:r:h"

/* Exit statuses, and "go on" for a step after which gridd keeps running. */
#define GRIDD_GO_ON (-1)
#define GRIDD_EXIT_OK 0
#define GRIDD_EXIT_USAGE 2

/* The first pass over the flags: finds the config file and --print-config,
 * and answers --version, --help and a flag it does not know at once, so
 * that no config file is read for them. Returns GRIDD_GO_ON or the status
 * gridd exits with. */
static const char *gridd_restore; /* --restore NAME */

static int gridd_scan_flags(int argc, char **argv, const char **config_path,
                            int *print_config) {
  int opt;
  while ((opt = getopt_long(argc, argv, GRIDD_SHORT_OPTIONS, gridd_options, NULL)) != -1) {
    switch (opt) {
      case 'c': *config_path = optarg; break;
      case 'R': gridd_restore = optarg; break;
      case 'P': *print_config = 1; break;
      case 'V': printf("gridd %s\n", GRID_VERSION_STRING); return GRIDD_EXIT_OK;
      case 'h': usage(stdout); return GRIDD_EXIT_OK;
      case '?': usage(stderr); return GRIDD_EXIT_USAGE;
      default: break;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "gridd: unexpected argument \"%s\" (see gridd --help)\n", argv[optind]);
    return GRIDD_EXIT_USAGE;
  }
  return GRIDD_GO_ON;
}

/* The second pass: every flag that names a setting goes through config_set,
 * so that the flags are checked by the same table rows as the file.
 * Returns GRIDD_GO_ON, or GRIDD_EXIT_USAGE on the first bad setting. */
static int gridd_apply_flags(int argc, char **argv, config_t *cfg) {
  char err[512];
  int opt;
  optind = 0;
  while ((opt = getopt_long(argc, argv, GRIDD_SHORT_OPTIONS, gridd_options, NULL)) != -1) {
    const char *key;
    char kv[600];
    switch (opt) {
      case 'p': key = "port"; break;
      case 'b': key = "bind"; break;
      case 'l': key = "loops"; break;
      case 'f': key = "port_file"; break;
      case 'r': key = "resp_port"; break;
      case 'z': key = "zk"; break;
      case 'C': key = "cluster"; break;
      case 'Z': key = "zone"; break;
      case 'H': key = "http_port"; break;
      case 's': key = NULL; break;
      default: continue;
    }
    snprintf(kv, sizeof kv, "%s", optarg);
    char *value = kv;
    if (!key) {
      char *eq = strchr(kv, '=');
      if (!eq) {
        fprintf(stderr, "gridd: --set needs KEY=VALUE, got \"%s\"\n", kv);
        return GRIDD_EXIT_USAGE;
      }
      *eq = '\0';
      key = kv;
      value = eq + 1;
    }
    if (config_set(cfg, key, value, err, sizeof err) != 0) {
      fprintf(stderr, "gridd: %s\n", err);
      return GRIDD_EXIT_USAGE;
    }
  }
  return GRIDD_GO_ON;
}

/* Builds the settings from the defaults, the config file and the flags.
 * Returns GRIDD_GO_ON, or the status gridd exits with. */
static int gridd_config_from_args(int argc, char **argv, config_t *cfg, int *print_config) {
  /* The config file is applied first and the flags after it, whatever their
   * order on the line: a first pass finds the file, a second applies the
   * flags (optind = 0 restarts GNU getopt). */
  const char *config_path = NULL;
  int status = gridd_scan_flags(argc, argv, &config_path, print_config);
  if (status != GRIDD_GO_ON) return status;
  config_defaults(cfg);
  char err[512];
  if (config_path && config_load_file(cfg, config_path, err, sizeof err) != 0) {
    fprintf(stderr, "gridd: %s\n", err);
    return GRIDD_EXIT_USAGE;
  }
  return gridd_apply_flags(argc, argv, cfg);
}

/* Signals are taken by sigwait on this thread only: every thread the node
 * starts inherits the blocked mask. It must therefore run before the node
 * starts a thread. */
static void gridd_block_signals(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGHUP); /* reload the TLS certificates */
  pthread_sigmask(SIG_BLOCK, set, NULL);
  signal(SIGPIPE, SIG_IGN);
}

/* A graceful leave first: the node hands its partitions over, so that
 * clients see no error; a second signal stops it at once. It returns when
 * the partitions are handed over, leave_timeout_ms has passed or a second
 * signal came, and the node is then ready to stop. */
static void gridd_leave_cluster(node_t *node, const sigset_t *set) {
  cluster_leave(node->cluster, NULL, NULL);
  int64_t deadline = clock_mono_ms() + node->cfg.leave_timeout_ms;
  struct timespec zero = {0, 0};
  while (cluster_wait_left(node->cluster, 100) != 0) {
    int s = sigtimedwait(set, NULL, &zero);
    if (s == SIGINT || s == SIGTERM) {
      LOG_W("node", "\"second signal: stopping without handing the rest over\"");
      break;
    }
    if (clock_mono_ms() >= deadline) {
      LOG_W("node", "\"leave_timeout_ms passed: stopping without handing the rest over\"");
      break;
    }
  }
  /* Clients still holding the old map learn the new one from the epoch
   * of every reply: serve (forward) a little longer before closing. */
  struct timespec grace = {0, GRIDD_LEAVE_GRACE_MS * 1000000L};
  nanosleep(&grace, NULL);
}

int main(int argc, char **argv) {
  config_t cfg;
  int print_config = 0;
  int status = gridd_config_from_args(argc, argv, &cfg, &print_config);
  if (status != GRIDD_GO_ON) return status;
  if (print_config) {
    config_finish(&cfg);
    config_print(&cfg, stdout);
    return GRIDD_EXIT_OK;
  }

  char err[2048];
  if (gridd_restore) {
    if (!cfg.data_dir[0]) {
      fprintf(stderr, "gridd: --restore needs the node's data_dir (--set data_dir=DIR)\n");
      return GRIDD_EXIT_USAGE;
    }
    if (disk_restore(cfg.data_dir, gridd_restore, err, sizeof err) != 0) {
      LOG_E("node", "\"cannot restore\" reason=\"%s\"", err);
      fprintf(stderr, "gridd: %s\n", err);
      return 1;
    }
  }
  sigset_t set;
  gridd_block_signals(&set);
  node_t *node;
  if (node_start(&cfg, &node, err, sizeof err) != 0) {
    LOG_E("node", "\"cannot start\" reason=\"%s\"", err);
    fprintf(stderr, "gridd: %s\n", err);
    return 1;
  }
  node->on_left = gridd_on_left;
  atomic_store(&node->on_fatal, gridd_on_fatal);
  int sig = 0;
  while (sigwait(&set, &sig) == 0 && sig == SIGHUP) {
    /* New connections take the files as they are now; open ones keep
     * theirs. A file that does not load leaves the old ones in force. */
    if (!node->tls_server && !node->tls_client) {
      LOG_I("node", "\"SIGHUP: no TLS to reload\"");
    } else if (node_tls_reload(node, err, sizeof err) != 0) {
      LOG_E("node", "\"SIGHUP: TLS files not reloaded, the old ones stay\" reason=\"%s\"", err);
    } else {
      LOG_I("node", "\"SIGHUP: TLS certificate, key and CA reloaded\"");
    }
  }
  LOG_I("node", "\"stopping\" signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (node->cluster) gridd_leave_cluster(node, &set);
  node_stop(node);
  LOG_I("node", "\"stopped\"");
  return atomic_load(&gridd_fatal) ? 1 : GRIDD_EXIT_OK;
}
