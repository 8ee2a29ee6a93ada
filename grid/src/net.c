#include "net.h"

#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "grid_types.h"
#include "log.h"
#include "native.h"
#include "node.h"
#include "resp.h"

#define NET_BACKLOG 511

static void net_on_connection(uv_stream_t *server, int status) {
  loop_t *lp = server->data;
  if (status < 0) {
    LOG_W("net", "\"accept failed\" error=\"%s\"", uv_strerror(status));
    return;
  }
  node_t *n = lp->node;
  if (server == (uv_stream_t *)&lp->listener) conn_accept(lp, server, &native_proto, NULL);
  else if (server == (uv_stream_t *)&lp->resp_listener) conn_accept(lp, server, &resp_proto, NULL);
  else if (server == (uv_stream_t *)&lp->tls_listener)
    conn_accept(lp, server, &native_proto, n->tls_server);
  else conn_accept(lp, server, &resp_proto, n->tls_server);
}

/* Opens a listening socket on addr; reuseport lets the loops share it. */
static int net_bind_socket(const struct sockaddr *addr, int reuseport,
                           char *err, size_t err_len) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_len, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
  if (bind(fd, addr, len) != 0) {
    snprintf(err, err_len, "cannot bind: %s", strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

static void net_set_port(struct sockaddr_storage *ss, int port) {
  if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* Resolves bind:port into ss, and picks the port with a plain bind (which
 * fails when another process holds it: a SO_REUSEPORT group alone would
 * share it silently). */
static int net_pick_address(const char *bind_addr, int64_t port, struct sockaddr_storage *ss,
                            int *port_out, char *err, size_t err_len) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(bind_addr, (int)port, (struct sockaddr_in *)ss) != 0 &&
      uv_ip6_addr(bind_addr, (int)port, (struct sockaddr_in6 *)ss) != 0) {
    snprintf(err, err_len, "bind address \"%s\" is not an IPv4 or IPv6 address", bind_addr);
    return GRID_ECONFIG;
  }
  char why[128];
  int probe = net_bind_socket((struct sockaddr *)ss, 0, why, sizeof why);
  if (probe < 0) {
    snprintf(err, err_len, "%s:%lld: %s", bind_addr, (long long)port, why);
    return GRID_ECONN;
  }
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  getsockname(probe, (struct sockaddr *)&bound, &bl);
  *port_out = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  close(probe);
  net_set_port(ss, *port_out);
  return 0;
}

/* One loop's listening socket on ss, in the SO_REUSEPORT group. */
static int net_listen_on(loop_t *lp, uv_tcp_t *h, const struct sockaddr_storage *ss,
                         char *err, size_t err_len) {
  char why[128];
  uv_tcp_init(&lp->uv, h);
  h->data = lp;
  int fd = net_bind_socket((const struct sockaddr *)ss, 1, why, sizeof why);
  int rc = 0;
  if (fd >= 0 && (rc = uv_tcp_open(h, fd)) != 0) close(fd);
  if (fd >= 0 && rc == 0) rc = uv_listen((uv_stream_t *)h, NET_BACKLOG, net_on_connection);
  if (fd < 0 || rc != 0) {
    snprintf(err, err_len, "%s", fd < 0 ? why : uv_strerror(rc));
    return GRID_ECONN;
  }
  return 0;
}

/* The node's listeners: a port setting (-1: none), the loop's handle, the
 * bound port, and what logs call it. */
typedef struct net_port {
  int64_t want;
  size_t handle_off;
  int *bound;
  const char *what;
} net_port_t;

int net_listen(node_t *n, loops_t *ls, char *err, size_t err_len) {
  net_port_t ports[] = {
      {n->cfg.port, offsetof(loop_t, listener), &n->port, ""},
      {n->cfg.resp_port, offsetof(loop_t, resp_listener), &n->resp_port, "RESP "},
      {n->cfg.tls_port, offsetof(loop_t, tls_listener), &n->tls_port, "TLS "},
      {n->cfg.tls_resp_port, offsetof(loop_t, tls_resp_listener), &n->tls_resp_port,
       "TLS RESP "},
  };
  struct sockaddr_storage ss[4];
  int rc;
  for (size_t k = 0; k < 4; k++) {
    *ports[k].bound = 0;
    if (ports[k].want < 0) continue;
    rc = net_pick_address(n->cfg.bind, ports[k].want, &ss[k], ports[k].bound, err, err_len);
    if (rc != 0) return rc;
  }
  for (int i = 0; i < loops_count(ls); i++) {
    loop_t *lp = loops_at(ls, i);
    for (size_t k = 0; k < 4; k++) {
      if (ports[k].want < 0) continue;
      char why[160];
      uv_tcp_t *h = (uv_tcp_t *)(void *)((char *)lp + ports[k].handle_off);
      rc = net_listen_on(lp, h, &ss[k], why, sizeof why);
      if (rc != 0) {
        snprintf(err, err_len, "%s%s:%d: %s", ports[k].what, n->cfg.bind, *ports[k].bound, why);
        return rc;
      }
    }
  }
  return 0;
}
