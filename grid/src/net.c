#include "net.h"

#include <errno.h>
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
  conn_accept(lp, server, server == (uv_stream_t *)&lp->resp_listener ? &resp_proto
                                                                        : &native_proto);
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

int net_listen(node_t *n, loops_t *ls, char *err, size_t err_len) {
  struct sockaddr_storage ss, rss;
  int port, resp_port = 0;
  int rc = net_pick_address(n->cfg.bind, n->cfg.port, &ss, &port, err, err_len);
  if (rc != 0) return rc;
  if (n->cfg.resp_port >= 0) {
    rc = net_pick_address(n->cfg.bind, n->cfg.resp_port, &rss, &resp_port, err, err_len);
    if (rc != 0) return rc;
  }
  for (int i = 0; i < loops_count(ls); i++) {
    loop_t *lp = loops_at(ls, i);
    char why[160];
    rc = net_listen_on(lp, &lp->listener, &ss, why, sizeof why);
    if (rc != 0) {
      snprintf(err, err_len, "%s:%d: %s", n->cfg.bind, port, why);
      return rc;
    }
    if (n->cfg.resp_port >= 0) {
      rc = net_listen_on(lp, &lp->resp_listener, &rss, why, sizeof why);
      if (rc != 0) {
        snprintf(err, err_len, "RESP %s:%d: %s", n->cfg.bind, resp_port, why);
        return rc;
      }
    }
  }
  n->port = port;
  n->resp_port = n->cfg.resp_port >= 0 ? resp_port : 0;
  return 0;
}
