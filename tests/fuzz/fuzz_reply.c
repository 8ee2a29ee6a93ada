/*
 * fuzz_reply: the client's reading of what a node sends.
 *
 * A fake node runs on a thread of this process, on 127.0.0.1: on every
 * connection it reads the client's Hello and answers with a valid
 * HelloReply, reads the first request, then sends the input (after its
 * control byte) as its replies and half-closes. The client, opened with
 * grid_open("grid://127.0.0.1:PORT") and a short timeout, runs a few calls;
 * each must come back with an error or a result, never crash or allocate
 * without bound. Request ids are predictable (the n-th request of a fresh
 * handle has id n << 12), so an input can answer any call.
 *
 * Input: byte 0 selects calls beyond grid_open (whose PMAP request comes
 * first), grid_get, grid_put and grid_cluster_status, which always run:
 *   bit 0 grid_get_all   bit 1 grid_scan   bit 2 grid_cache_list
 *   bit 3 grid_stats     bit 4 grid_add    bit 5 grid_delete_all
 * The rest is the byte stream every connection receives after the
 * HelloReply.
 *
 * A map in a reply may name any address: this target lets the client
 * connect to the fake node only (connect() and getaddrinfo() are wrapped
 * below), so no fuzzed address reaches another process or a DNS server.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "frame.h"
#include "fuzz_common.h"
#include "grid.h"
#include "grid.pb-c.h"
#include "log.h"

#define FAKE_CONNS_MAX 16
#define FAKE_IN_BYTES_MAX (1u << 20) /* a request bigger than this is cut off */
#define FUZZ_CLIENT_TIMEOUT_MS 30 /* refused calls retry until it: keep it short */

typedef struct fake_conn {
  int fd;                 /* -1: free */
  int phase;              /* 0: wants the Hello; 1: wants a request; 2: sending; 3: done */
  unsigned char *in;
  size_t in_len;
  unsigned char *out;
  size_t out_len, out_off;
} fake_conn_t;

static int fake_listen_fd = -1;
static int fake_port;
static pthread_t fake_thread;
static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *fake_input;  /* under fake_lock */
static size_t fake_input_len;
static int fake_open;              /* connections open, under fake_lock */
static fake_conn_t fake_conns[FAKE_CONNS_MAX];
static unsigned char fake_hello_reply[64];
static size_t fake_hello_reply_len;

/* ---- the client may reach the fake node only ------------------------------ */

int connect(int fd, __CONST_SOCKADDR_ARG arg, socklen_t len) {
#if defined(__USE_GNU) && !defined(__cplusplus)
  const struct sockaddr *addr = arg.__sockaddr__; /* glibc's transparent union */
#else
  const struct sockaddr *addr = arg;
#endif
  if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    if (a->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(a->sin_port) == fake_port)
      return (int)syscall(SYS_connect, fd, addr, len);
  }
  errno = ECONNREFUSED;
  return -1;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
  static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
  if (!real) {
    *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    if (!real) return EAI_FAIL;
  }
  struct addrinfo h;
  memset(&h, 0, sizeof h);
  if (hints) h = *hints;
  h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV; /* never a DNS query */
  return real(node, service, &h, res);
}

/* ---- the fake node ----------------------------------------------------------- */

static void fake_close(fake_conn_t *c) {
  close(c->fd);
  free(c->in);
  free(c->out);
  memset(c, 0, sizeof *c);
  c->fd = -1;
  pthread_mutex_lock(&fake_lock);
  fake_open--;
  pthread_mutex_unlock(&fake_lock);
}

/* Takes one whole frame off c->in; 1 if there was one. */
static int fake_take_frame(fake_conn_t *c) {
  if (c->in_len < FRAME_HEADER_BYTES) return 0;
  size_t n = FRAME_HEADER_BYTES + (size_t)frame_get_header(c->in);
  if (n > c->in_len) return 0;
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
  return 1;
}

static void fake_queue(fake_conn_t *c, const unsigned char *p, size_t n) {
  unsigned char *b = realloc(c->out, c->out_len + n + 1);
  if (!b) fuzz_die("out of memory");
  if (n) memcpy(b + c->out_len, p, n);
  c->out = b;
  c->out_len += n;
}

static void fake_on_readable(fake_conn_t *c) {
  unsigned char buf[65536];
  ssize_t n = recv(c->fd, buf, sizeof buf, 0);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    fake_close(c);
    return;
  }
  if (n < 0 || c->phase >= 2) return; /* later requests are not answered */
  size_t take = (size_t)n;
  if (take > FAKE_IN_BYTES_MAX - c->in_len) take = FAKE_IN_BYTES_MAX - c->in_len;
  unsigned char *b = realloc(c->in, c->in_len + take + 1);
  if (!b) fuzz_die("out of memory");
  memcpy(b + c->in_len, buf, take);
  c->in = b;
  c->in_len += take;
  if (c->phase == 0 && fake_take_frame(c)) {
    fake_queue(c, fake_hello_reply, fake_hello_reply_len);
    c->phase = 1;
  }
  if (c->phase == 1 && fake_take_frame(c)) {
    pthread_mutex_lock(&fake_lock);
    fake_queue(c, fake_input, fake_input_len);
    pthread_mutex_unlock(&fake_lock);
    c->phase = 2;
  }
}

static void fake_on_writable(fake_conn_t *c) {
  if (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) c->out_off += (size_t)n;
    else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      fake_close(c);
      return;
    }
  }
  if (c->phase == 2 && c->out_off == c->out_len) {
    shutdown(c->fd, SHUT_WR); /* the client reads the input, then EOF */
    c->phase = 3;
  }
}

static void *fake_main(void *arg) {
  (void)arg;
  for (;;) {
    struct pollfd pfd[FAKE_CONNS_MAX + 1];
    int idx[FAKE_CONNS_MAX + 1];
    int n = 0;
    pfd[n] = (struct pollfd){.fd = fake_listen_fd, .events = POLLIN};
    idx[n++] = -1;
    for (int i = 0; i < FAKE_CONNS_MAX; i++) {
      fake_conn_t *c = &fake_conns[i];
      if (c->fd < 0) continue;
      short ev = POLLIN;
      if (c->out_off < c->out_len || c->phase == 2) ev |= POLLOUT;
      pfd[n] = (struct pollfd){.fd = c->fd, .events = ev};
      idx[n++] = i;
    }
    if (poll(pfd, (nfds_t)n, 100) <= 0) continue;
    for (int k = 0; k < n; k++) {
      if (!pfd[k].revents) continue;
      if (idx[k] < 0) {
        int fd = accept4(fake_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) continue;
        int slot = -1;
        for (int i = 0; i < FAKE_CONNS_MAX && slot < 0; i++)
          if (fake_conns[i].fd < 0) slot = i;
        if (slot < 0) {
          close(fd); /* more connections than any input needs: refused */
          continue;
        }
        memset(&fake_conns[slot], 0, sizeof fake_conns[slot]);
        fake_conns[slot].fd = fd;
        pthread_mutex_lock(&fake_lock);
        fake_open++;
        pthread_mutex_unlock(&fake_lock);
        continue;
      }
      fake_conn_t *c = &fake_conns[idx[k]];
      if (c->fd < 0) continue;
      if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) fake_on_readable(c);
      if (c->fd >= 0 && (pfd[k].revents & POLLOUT)) fake_on_writable(c);
    }
  }
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  log_set_level(LOG_ERROR); /* the client warns of every connection error */
  for (int i = 0; i < FAKE_CONNS_MAX; i++) fake_conns[i].fd = -1;
  fake_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (fake_listen_fd < 0 || bind(fake_listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(fake_listen_fd, 64) != 0 ||
      getsockname(fake_listen_fd, (struct sockaddr *)&a, &al) != 0)
    fuzz_die("fake node: cannot listen: %s", strerror(errno));
  fake_port = ntohs(a.sin_port);
  Grid__HelloReply hr = GRID__HELLO_REPLY__INIT;
  hr.node_id = "fake";
  hr.version = 1;
  hr.frame_bytes_max = 1 << 20;
  unsigned char m[48];
  size_t n = grid__hello_reply__pack(&hr, m);
  frame_put_header(fake_hello_reply, (uint32_t)n);
  memcpy(fake_hello_reply + FRAME_HEADER_BYTES, m, n);
  fake_hello_reply_len = FRAME_HEADER_BYTES + n;
  if (pthread_create(&fake_thread, NULL, fake_main, NULL) != 0) fuzz_die("pthread_create");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t calls = data[0];
  pthread_mutex_lock(&fake_lock);
  free(fake_input);
  fake_input = malloc(size);
  if (!fake_input) fuzz_die("out of memory");
  memcpy(fake_input, data + 1, size - 1);
  fake_input_len = size - 1;
  pthread_mutex_unlock(&fake_lock);

  char uri[64];
  snprintf(uri, sizeof uri, "grid://127.0.0.1:%d", fake_port);
  grid_options_t o = {.timeout_ms = FUZZ_CLIENT_TIMEOUT_MS, .client_name = "fuzz"};
  grid_t *g = NULL;
  if (grid_open(uri, &o, &g) == 0) {
    grid_value_t v = {0};
    if (grid_get(g, "default", "k", 1, &v) == 0) grid_value_free(&v);
    uint64_t version;
    grid_put(g, "default", "k", 1, "v", 1, 0, &version);
    grid_cluster_status_t *st = NULL;
    if (grid_cluster_status(g, &st) == 0) grid_cluster_status_free(st);
    const void *keys[2] = {"k", "{k}2"};
    const size_t lens[2] = {1, 4};
    if (calls & 1) {
      grid_value_t out[2];
      memset(out, 0, sizeof out);
      if (grid_get_all(g, "default", 2, keys, lens, out) == 0) {
        grid_value_free(&out[0]);
        grid_value_free(&out[1]);
      }
    }
    if (calls & 2) {
      uint64_t cursor = 0;
      grid_entry_t *e = NULL;
      size_t n = 0;
      if (grid_scan(g, "default", 0, &cursor, 10, &e, &n) == 0) grid_entries_free(e, n);
    }
    if (calls & 4) {
      grid_cache_config_t *caches = NULL;
      size_t n = 0;
      if (grid_cache_list(g, &caches, &n) == 0) grid_cache_list_free(caches, n);
    }
    if (calls & 8) {
      grid_stats_t s;
      grid_stats(g, &s);
    }
    if (calls & 16) {
      int64_t sum;
      grid_add(g, "default", "n", 1, 1, &sum);
    }
    if (calls & 32) {
      size_t deleted;
      grid_delete_all(g, "default", 2, keys, lens, &deleted);
    }
    grid_close(g);
  }
  /* The next input starts with the fake node idle: every connection of
   * this one closed (the client closed its side; the fake node sees EOF). */
  for (int i = 0; i < 2000; i++) {
    pthread_mutex_lock(&fake_lock);
    int open = fake_open;
    pthread_mutex_unlock(&fake_lock);
    if (open == 0) break;
    fuzz_sleep_ms(1);
  }
  return 0;
}
