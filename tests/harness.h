/*
 * harness: real gridd processes for integration tests, on 127.0.0.1 with
 * ephemeral ports, and raw protocol access for the bad-input tests. Every
 * process a test starts is stopped by pid.
 */
#ifndef GRID_TEST_HARNESS_H
#define GRID_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "grid.pb-c.h"

typedef struct harness_node {
  pid_t pid;
  int port;
  int resp_port;     /* its Redis-protocol port */
  char dir[256];     /* temporary directory of this node */
  char uri[64];      /* grid://127.0.0.1:port */
} harness_node_t;

/* Sleeps ms milliseconds: a test polls for what it waits for in steps
 * (it asserts behaviour, never a timing). */
void harness_sleep_ms(int ms);

/* Starts gridd with --port 0 and the given "key=value" settings (NULL
 * terminated, may be NULL), waits until it listens. Aborts the test when it
 * does not start within 20 s. */
void harness_start(harness_node_t *n, const char *const *settings);
/* SIGTERM, then waits for the exit (SIGKILL after 20 s). Returns the exit
 * status as waitpid gives it. */
int harness_stop(harness_node_t *n);

/* SIGSTOP, and waits until every thread of the node is stopped;
 * harness_resume sends SIGCONT. */
void harness_pause(harness_node_t *n);
void harness_pause_pid(pid_t pid);
void harness_resume(harness_node_t *n);

/* SIGKILL, as a crash: no goodbye to anyone. */
void harness_kill9(harness_node_t *n);

/* A ZooKeeper server from the Debian package, on a free loopback port with
 * a data directory of its own. */
typedef struct harness_zk {
  pid_t pid;
  int port;
  char dir[256];
  char hosts[64];  /* 127.0.0.1:port */
} harness_zk_t;

/* Aborts the test when it does not answer within 60 s. */
void harness_zk_start(harness_zk_t *z);
void harness_zk_stop(harness_zk_t *z);

/* Starts node i of cluster `cluster` on ZooKeeper z, as harness_start:
 * settings zk, cluster and node_id ("<cluster>-<i>"), then the given ones
 * (NULL-terminated, at most 16, may be NULL). */
void harness_start_cluster_node(harness_node_t *n, const harness_zk_t *z, const char *cluster,
                                int i, const char *const *settings);
/* Waits until the map the node at port acts on has n nodes and every
 * copy of cache's partitions is in sync (none MOVING or LOST): a test
 * that takes a node away needs its backups filled first. Aborts the test
 * after 60 s. */
void harness_wait_settled(int port, const char *cache, size_t n);
/* A port free on 127.0.0.1 right now. */
int harness_free_port(void);

/* The partition map node at port acts on (epoch 0: none yet), read with a
 * raw PMAP request. The caller pmap_free()s it. */
struct pmap;
void harness_pmap(int port, struct pmap *out);

/* Sends one RESP command (words, NULL-terminated) to a node's RESP port
 * and returns the first line of its reply (without CRLF) in out, and for a
 * bulk reply the bulk's body. */
void harness_resp(int resp_port, const char *const *words, char *out, size_t out_len);

/* grid.h's hash calls on key "h:<tag>" of cache through g (an embedded
 * node, a remote one, a cluster): set, get, increment, delete, the whole
 * hash, WRONGTYPE against a string, and the key gone with its last field.
 * Checks abort the test. */
struct grid;
void harness_check_hashes(struct grid *g, const char *cache, const char *tag);

/* Raw connections. */
int harness_connect(int port);
void harness_send_all(int fd, const void *p, size_t len);
void harness_send_frame(int fd, const ProtobufCMessage *m);
void harness_send_hello(int fd); /* and checks the reply */
/* A Hello of role (GRID__ROLE__*) naming name; the reply's status. */
int harness_hello(int fd, int role, const char *name);
/* Reads one frame within timeout_ms into buf; returns its payload length,
 * -1 on EOF or error, -2 on timeout. */
ssize_t harness_read_frame(int fd, unsigned char *buf, size_t cap, int timeout_ms);
/* Waits for EOF (the node closed the connection) within timeout_ms:
 * 1 when it came, 0 when not. */
int harness_wait_eof(int fd, int timeout_ms);

#endif
