#include "fuzz_common.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "grid.h"
#include "grid.pb-c.h"
#include "store.h"

void fuzz_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "FUZZ CHECK FAILED: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort();
}

static int64_t fuzz_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fuzz_node_config(config_t *cfg) {
  config_defaults(cfg);
  strcpy(cfg->bind, "127.0.0.1");
  cfg->port = 0;
  cfg->resp_port = -1;
  cfg->loops = 1;
  cfg->memory_bytes_max = 64 << 20;
  cfg->frame_bytes_max = 1 << 20;
  cfg->value_bytes_max = 256 << 10;
  cfg->partitions_default = 16;
  cfg->partitions_max = 4096; /* a CREATE_CACHE costs what the input says */
  cfg->caches_max = 32;
  cfg->batch_keys_max = 1000;
  cfg->scan_count_max = 1000;
  cfg->output_bytes_max = 1 << 20;
  /* An input's connection ends at its EOF; these only matter for a hang. */
  cfg->handshake_timeout_ms = 10000;
  cfg->frame_timeout_ms = 10000;
  /* Connection errors are the point of fuzzing: keep stderr for findings. */
  strcpy(cfg->log_level, getenv("FUZZ_LOG_LEVEL") ? getenv("FUZZ_LOG_LEVEL") : "error");
}

node_t *fuzz_node_start(const config_t *cfg) {
  node_t *n = NULL;
  char err[512];
  int rc = node_start(cfg, &n, err, sizeof err);
  if (rc != 0) fuzz_die("node_start: %s (%s)", err, grid_err_name(rc));
  return n;
}

static node_t *fuzz_run_node;

static void fuzz_run_node_stop(void) {
  if (fuzz_run_node) node_stop(fuzz_run_node);
  fuzz_run_node = NULL;
}

node_t *fuzz_node_start_for_run(const config_t *cfg) {
  if (fuzz_run_node) fuzz_die("fuzz_node_start_for_run called twice");
  fuzz_run_node = fuzz_node_start(cfg);
  atexit(fuzz_run_node_stop);
  return fuzz_run_node;
}

void fuzz_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

void fuzz_store_reset(node_t *n) {
  store_cache_cfg_t cfgs[64];
  size_t k = store_cache_list(n->store, cfgs, sizeof cfgs / sizeof cfgs[0]);
  for (;;) {
    if (k > sizeof cfgs / sizeof cfgs[0]) k = sizeof cfgs / sizeof cfgs[0];
    for (size_t i = 0; i < k; i++) store_cache_drop(n->store, cfgs[i].name);
    k = store_cache_list(n->store, cfgs, sizeof cfgs / sizeof cfgs[0]);
    if (k == 0) break;
  }
  store_cache_cfg_t def;
  memset(&def, 0, sizeof def);
  strcpy(def.name, "default");
  int rc = store_cache_create(n->store, &def);
  if (rc != 0) fuzz_die("cannot create the default cache again: %s", grid_err_name(rc));
}

void fuzz_cache_clear(node_t *n, const char *cache) {
  store_cache_t *c = store_cache_acquire(n->store, cache, strlen(cache));
  if (!c) return;
  for (uint32_t p = 0; p < store_cache_cfg(c)->partitions; p++) store_part_reset(c, p, 0);
  store_cache_release(n->store, c);
}

size_t fuzz_chunk_bytes(uint8_t control) {
  unsigned k = control >> 4;
  return k == 0 ? 0 : (size_t)1 << (k - 1);
}

void fuzz_output_free(fuzz_output_t *o) {
  free(o->data);
  memset(o, 0, sizeof *o);
}

int fuzz_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fuzz_die("socket: %s", strerror(errno));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    /* libFuzzer's timers (SIGALRM) interrupt: the connect goes on. */
    int err = errno;
    if (err == EINTR) {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      while (poll(&pfd, 1, 10000) < 0 && errno == EINTR) {}
      socklen_t el = sizeof err;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
    }
    if (err != 0 && err != EISCONN)
      fuzz_die("connect to 127.0.0.1:%d: %s (did the node stop listening?)", port, strerror(err));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void fuzz_output_add(fuzz_output_t *o, const unsigned char *p, size_t n) {
  o->total += n;
  if (o->len >= FUZZ_OUTPUT_BYTES_MAX) return;
  if (n > FUZZ_OUTPUT_BYTES_MAX - o->len) n = FUZZ_OUTPUT_BYTES_MAX - o->len;
  unsigned char *b = realloc(o->data, o->len + n + 1);
  if (!b) fuzz_die("out of memory");
  o->data = b;
  memcpy(o->data + o->len, p, n);
  o->len += n;
}

void fuzz_exchange(int fd, const void *head, size_t head_len, const void *data,
                   size_t len, size_t chunk, int quiet_ms, fuzz_output_t *out) {
  memset(out, 0, sizeof *out);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int64_t deadline = fuzz_now_ms() + FUZZ_EXCHANGE_MS;
  size_t hsent = 0, dsent = 0;
  int wr_open = 1;
  int64_t last_ms = fuzz_now_ms(); /* of the last byte sent or received */
  static unsigned char rbuf[65536];
  for (;;) {
    int64_t now = fuzz_now_ms();
    int all_sent = hsent == head_len && dsent == len;
    int poll_max = -1;
    if (wr_open && all_sent) {
      if (now - last_ms >= quiet_ms) {
        shutdown(fd, SHUT_WR); /* the node sees EOF once it has read it all */
        wr_open = 0;
      } else {
        poll_max = (int)(quiet_ms - (now - last_ms));
      }
    }
    int64_t left = deadline - now;
    if (left <= 0)
      fuzz_die("the node neither answered nor closed the connection within %d ms "
               "(sent %zu of %zu bytes, received %zu)", FUZZ_EXCHANGE_MS,
               hsent + dsent, head_len + len, out->total);
    struct pollfd pfd = {.fd = fd, .events = POLLIN | (wr_open && !all_sent ? POLLOUT : 0)};
    int pr = poll(&pfd, 1, poll_max >= 0 && poll_max < left ? poll_max : (int)left);
    if (pr < 0 && errno != EINTR) fuzz_die("poll: %s", strerror(errno));
    if (pr <= 0) continue;
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
      if (n > 0) {
        fuzz_output_add(out, rbuf, (size_t)n);
        last_ms = fuzz_now_ms();
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        break; /* EOF, or a reset: the node closed on us */
      }
    }
    if (wr_open && !all_sent && (pfd.revents & POLLOUT)) {
      const unsigned char *p;
      size_t n;
      if (hsent < head_len) {
        p = (const unsigned char *)head + hsent;
        n = head_len - hsent;
      } else {
        p = (const unsigned char *)data + dsent;
        n = len - dsent;
        if (chunk && n > chunk) n = chunk;
      }
      ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
      if (w > 0) {
        last_ms = fuzz_now_ms();
        if (hsent < head_len) hsent += (size_t)w;
        else dsent += (size_t)w;
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        /* The node closed its side after an error: what is left is not
         * read by anyone. Keep reading its answer. */
        shutdown(fd, SHUT_WR);
        wr_open = 0;
      }
    }
  }
  close(fd);
}

void fuzz_buf_frame(unsigned char **buf, size_t *len, const void *msg, size_t msg_len) {
  unsigned char *b = realloc(*buf, *len + FRAME_HEADER_BYTES + msg_len + 1);
  if (!b) fuzz_die("out of memory");
  frame_put_header(b + *len, (uint32_t)msg_len);
  if (msg_len) memcpy(b + *len + FRAME_HEADER_BYTES, msg, msg_len);
  *buf = b;
  *len += FRAME_HEADER_BYTES + msg_len;
}

static int fuzz_status_known(int status) {
  return strcmp(grid_err_name(status), "GRID_E?") != 0;
}

void fuzz_check_native_output(const fuzz_output_t *o) {
  size_t off = 0;
  int frames = 0, refused = 0;
  while (o->len - off >= FRAME_HEADER_BYTES) {
    size_t n = frame_get_header(o->data + off);
    if (n > o->len - off - FRAME_HEADER_BYTES) break; /* cut short at our EOF */
    const unsigned char *p = o->data + off + FRAME_HEADER_BYTES;
    if (refused)
      fuzz_die("the node sent a frame after refusing the handshake (output offset %zu)", off);
    if (frames == 0) {
      Grid__HelloReply *hr = grid__hello_reply__unpack(NULL, n, p);
      if (!hr) fuzz_die("the node's first frame (%zu bytes) is not a HelloReply", n);
      if (!fuzz_status_known(hr->status) || hr->status > 0)
        fuzz_die("HelloReply status %d is no GRID_E* code", (int)hr->status);
      refused = hr->status != 0;
      if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "  hello reply status=%s message=\"%s\"\n", grid_err_name(hr->status),
                hr->message ? hr->message : "");
      if (refused && (!hr->message || !hr->message[0]))
        fuzz_die("a refused handshake (%s) came without words", grid_err_name(hr->status));
      grid__hello_reply__free_unpacked(hr, NULL);
    } else {
      Grid__Reply *rp = grid__reply__unpack(NULL, n, p);
      if (!rp) fuzz_die("reply frame %d (%zu bytes at offset %zu) is not a Reply", frames, n, off);
      if (!fuzz_status_known(rp->status) || rp->status > 0)
        fuzz_die("reply %d: status %d is no GRID_E* code", frames, (int)rp->status);
      if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "  reply id=%llu status=%s message=\"%s\" value=%zu bytes\n",
                (unsigned long long)rp->id, grid_err_name(rp->status),
                rp->message ? rp->message : "", rp->value.len);
      grid__reply__free_unpacked(rp, NULL);
    }
    frames++;
    off += FRAME_HEADER_BYTES + n;
  }
}

/* ---- RESP ---------------------------------------------------------------- */

enum { RESP_CUT = 0, RESP_BAD = -1 };
#define RESP_DEPTH_MAX 16

/* The line at p[1..]: its length (to CRLF) in *line_len. RESP_CUT when the
 * data ends first; RESP_BAD for a CR or LF inside it. */
static int resp_line(const unsigned char *p, size_t len, size_t *line_len) {
  for (size_t i = 1; i < len; i++) {
    if (p[i] == '\n') return RESP_BAD;
    if (p[i] == '\r') {
      if (i + 1 == len) return RESP_CUT;
      if (p[i + 1] != '\n') return RESP_BAD;
      *line_len = i - 1;
      return 1;
    }
  }
  return RESP_CUT;
}

static int resp_int(const unsigned char *p, size_t n, long long *out) {
  if (n == 0 || n > 20) return -1;
  size_t i = 0;
  int neg = 0;
  if (p[0] == '-') {
    neg = 1;
    i = 1;
    if (n == 1) return -1;
  }
  unsigned long long v = 0;
  for (; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    unsigned d = (unsigned)(p[i] - '0');
    if (v > (9223372036854775808ull - d) / 10) return -1; /* past int64 */
    v = v * 10 + d;
  }
  if (!neg && v > 9223372036854775807ull) return -1;
  *out = neg ? (long long)(0 - v) : (long long)v;
  return 0;
}

/* One value at p: bytes it takes (> 0), RESP_CUT or RESP_BAD. */
static long resp_value(const unsigned char *p, size_t len, int depth, const char **why) {
  if (len == 0) return RESP_CUT;
  if (depth > RESP_DEPTH_MAX) {
    *why = "arrays nested too deep";
    return RESP_BAD;
  }
  size_t ll;
  int r = resp_line(p, len, &ll);
  if (r == RESP_BAD) {
    *why = "a bare CR or LF inside a line";
    return RESP_BAD;
  }
  if (r == RESP_CUT) return RESP_CUT;
  size_t head = 1 + ll + 2;
  long long v;
  switch (p[0]) {
    case '+': case '-':
      return (long)head;
    case '_': /* RESP3 (after HELLO 3): the null */
      if (ll != 0) {
        *why = "a RESP3 null with bytes after it";
        return RESP_BAD;
      }
      return (long)head;
    case ':':
      if (resp_int(p + 1, ll, &v) != 0) {
        *why = "an integer reply that is not an integer";
        return RESP_BAD;
      }
      return (long)head;
    case '$':
      if (resp_int(p + 1, ll, &v) != 0 || v < -1) {
        *why = "a bulk length that is not -1 or a length";
        return RESP_BAD;
      }
      if (v == -1) return (long)head;
      if ((unsigned long long)v + 2 > len - head) return RESP_CUT;
      if (p[head + v] != '\r' || p[head + v + 1] != '\n') {
        *why = "a bulk not followed by CRLF";
        return RESP_BAD;
      }
      return (long)(head + v + 2);
    case '*': case '%': case '~': case '>': { /* RESP3: map (pairs), set, push */
      if (resp_int(p + 1, ll, &v) != 0 || v < -1 || (p[0] != '*' && v < 0)) {
        *why = "an array length that is not -1 or a count";
        return RESP_BAD;
      }
      if (p[0] == '%') v *= 2;
      size_t off = head;
      for (long long i = 0; i < v; i++) {
        long e = resp_value(p + off, len - off, depth + 1, why);
        if (e <= 0) return e;
        off += (size_t)e;
      }
      return (long)off;
    }
    default:
      *why = "a value of unknown type";
      return RESP_BAD;
  }
}

void fuzz_check_resp_output(const fuzz_output_t *o) {
  size_t off = 0;
  int values = 0;
  while (off < o->len) {
    const char *why = "";
    long n = resp_value(o->data + off, o->len - off, 0, &why);
    if (n == RESP_CUT) break;
    if (n == RESP_BAD) {
      size_t show = o->len - off < 80 ? o->len - off : 80;
      char esc[400];
      size_t e = 0;
      for (size_t i = 0; i < show && e + 5 < sizeof esc; i++) {
        unsigned char ch = o->data[off + i];
        if (ch == '\r') e += (size_t)snprintf(esc + e, sizeof esc - e, "\\r");
        else if (ch == '\n') e += (size_t)snprintf(esc + e, sizeof esc - e, "\\n");
        else if (ch < 32 || ch > 126) e += (size_t)snprintf(esc + e, sizeof esc - e, "\\x%02x", ch);
        else esc[e++] = (char)ch;
      }
      esc[e] = '\0';
      fuzz_die("RESP reply %d at output offset %zu is malformed: %s: \"%s\"", values, off, why, esc);
    }
    if (getenv("FUZZ_VERBOSE"))
      fprintf(stderr, "  resp reply: %.*s\n", (int)(n > 100 ? 100 : n), (const char *)o->data + off);
    off += (size_t)n;
    values++;
  }
}
