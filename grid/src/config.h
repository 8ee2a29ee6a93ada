/*
 * config: the node's settings, every limit named.
 *
 * A config file holds "key = value" lines; '#' starts a comment. Sizes take
 * K, M, G suffixes (powers of 1024), times are in milliseconds. The same keys
 * can be set from gridd's command line (--set key=value, and the short flags
 * --port, --bind, --loops), which override the file.
 */
#ifndef GRID_CONFIG_H
#define GRID_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct config {
  char bind[64];                  /* listen address */
  int64_t port;                   /* listen port; 0 picks a free one; -1:
                                     none (TLS only, with tls_port) */
  int64_t listen;                 /* 1: serve the native protocol on TCP */
  char port_file[256];            /* if set, the bound port is written here */
  int64_t resp_port;              /* Redis-protocol port; -1: none, 0: any */
  char resp_port_file[256];       /* if set, the bound RESP port goes here */
  int64_t resp_args_max;          /* arguments of one RESP command at most */
  int64_t resp_command_bytes_max; /* one RESP command's bytes at most (all
                                     its arguments); 0 = frame_bytes_max */
  int64_t resp_pipeline_max;      /* RESP commands of one connection whose
                                     replies are not written yet, at most:
                                     parsing stops there until half are */
  int64_t databases;              /* Redis databases: SELECT 0..databases-1
                                     (cache "default", then "db<n>", made
                                     on the first SELECT) */
  char node_id[64];               /* empty: generated at start */
  char data_dir[512];             /* where persistent caches are kept (the
                                     node's RocksDB); empty: none, and
                                     persistent caches are refused */
  int64_t disk_free_bytes_min;    /* free space data_dir keeps: writes to
                                     persistent caches that would leave
                                     less are refused (GRID_EDISK) */
  int64_t loops;                  /* event loop threads; 0 = one per core */
  int64_t memory_bytes_max;       /* entry memory at most; 0 = 1/4 of RAM */
  int64_t frame_bytes_max;        /* one frame's payload at most */
  int64_t key_bytes_max;          /* one key at most */
  int64_t value_bytes_max;        /* one value at most */
  int64_t batch_keys_max;         /* keys in one get_all/put_all/delete_all */
  int64_t scan_count_max;         /* entries in one scan reply */
  int64_t caches_max;             /* caches on the node */
  int64_t partitions_default;     /* partitions of a cache that names none */
  int64_t partitions_max;         /* partitions of one cache at most */
  int64_t connections_max;        /* client connections at once */
  int64_t output_bytes_max;       /* unsent reply bytes per connection before
                                     the node stops reading from it */
  int64_t handshake_timeout_ms;   /* a connection must say hello by then */
  int64_t frame_timeout_ms;       /* a started frame must be complete by then */
  int64_t sweep_interval_ms;      /* TTL sweep period */
  int64_t sweep_entries_per_tick; /* entries the sweep looks at per period */
  char log_level[16];
  /* cluster */
  char zk[256];                   /* ZooKeeper hosts; empty: a single node */
  char cluster[64];               /* cluster name: /grid/<cluster> in ZooKeeper */
  char zone[64];                  /* no two copies of a partition per zone */
  char advertise[128];            /* host:port others reach this node at;
                                     empty: bind:port */
  int64_t zk_session_timeout_ms;  /* the node's lease */
  int64_t cluster_min_nodes;      /* nodes alive before the first map */
  int64_t forward_timeout_ms;     /* a request forwarded to another node,
                                     or a write waiting for its backups */
  int64_t repl_pending_max;       /* requests of one partition waiting on its
                                     primary for backups' acknowledgements
                                     (writes, and reads behind them) at
                                     most; more are refused with GRID_EBUSY */
  int64_t loop_handoffs_max;      /* requests other loops handed to one loop
                                     (its partitions' owner) not answered
                                     yet, at most; more: GRID_EBUSY */
  int64_t rebalance_bytes_per_sec;/* filling copies, per loop; 0: no limit */
  int64_t leave_timeout_ms;       /* a graceful leave at most, then a stop */
  int64_t lost_grace_ms;          /* a node gone from ZooKeeper is waited for
                                     this long before partitions only it
                                     holds count as lost (0: at once) */
  int64_t map_bytes_max;          /* the partition map's owners and states,
                                     every group: a cache that would need
                                     more is refused */
  int64_t map_groups_max;         /* placement groups (kinds of caches): the
                                     map's root names each, and must fit in
                                     one znode */
  int64_t change_buffer_bytes;    /* a partition's change history (what a
                                     subscription resumes from) at most; it
                                     grows from 4K as it fills; 0: none */
  int64_t change_buffers_bytes_max;/* every partition's history together, at
                                     most (within memory_bytes_max, so that
                                     data always has the rest); 0: an eighth
                                     of memory_bytes_max */
  int64_t subscriptions_max;      /* change-stream subscriptions served by
                                     this node at once, every connection */
  int64_t subscription_keys_max;  /* affinity keys one subscription names */
  char notify_keyspace_events[24];/* Redis keyspace notifications: Redis's
                                     letters (notify.h); empty: none */
  /* TLS (Redis's names). A port of -1 is off, 0 picks a free one. */
  int64_t tls_port;               /* the native protocol over TLS */
  char tls_port_file[256];
  int64_t tls_resp_port;          /* the Redis protocol over TLS */
  char tls_resp_port_file[256];
  char tls_cert_file[512];        /* the node's PEM certificate (chain) */
  char tls_key_file[512];         /* its private key */
  char tls_ca_cert_file[512];     /* CA certificates that sign clients'
                                     and other nodes' certificates */
  char tls_auth_clients[16];      /* yes (a client certificate is
                                     required), no, optional */
  char tls_protocols[64];         /* "TLSv1.2 TLSv1.3"; empty: 1.2 and up */
  char tls_ciphers[512];          /* TLS 1.2 cipher list; empty: OpenSSL's */
  char tls_ciphersuites[256];     /* TLS 1.3 suites; empty: OpenSSL's */
  int64_t tls_replication;        /* links between nodes use TLS */
  /* Authentication (auth.h). */
  int64_t auth;                   /* clients log in (users and roles) */
  char requirepass[256];          /* user "default"'s password (admin), as
                                     Redis's; set: auth is on */
  int64_t auth_failures_max;      /* failed logins from one address before
                                     it is refused for a while */
  int64_t auth_lockout_ms;        /* ... that while, doubled per failure */
  int64_t unauthenticated_bytes_max; /* a connection not logged in yet: its
                                     request or command at most */
  char cluster_secret[256];       /* without tls_replication: what a node
                                     shows the others to link to them */
  char zk_auth[256];              /* "user:password": ZooKeeper digest
                                     credentials; grid's znodes are then
                                     theirs alone */
  /* Operations (http.c). */
  int64_t http_port;              /* /metrics, /health, /ready; -1: off,
                                     0: any free port */
  char http_port_file[256];
  int64_t http_connections_max;   /* HTTP connections at once */
  int64_t http_timeout_ms;        /* an HTTP connection idle this long is
                                     closed (a slow client) */
  int64_t http_request_bytes_max; /* an HTTP request's line and headers */
} config_t;

/* Fills in the defaults of gridd. */
void config_defaults(config_t *c);
/* Sets one key from text. Returns 0, or GRID_ECONFIG with words in err. */
int config_set(config_t *c, const char *key, const char *value, char *err,
               size_t err_len);
/* Applies "key = value" lines; line numbers appear in err. */
int config_apply_text(config_t *c, const char *text, const char *origin,
                      char *err, size_t err_len);
int config_load_file(config_t *c, const char *path, char *err, size_t err_len);
/* Resolves "0 = automatic" values against this machine. Call once, last. */
void config_finish(config_t *c);
/* Writes "key = value" lines of every setting to f (FILE *). */
void config_print(const config_t *c, void *f);

#endif
