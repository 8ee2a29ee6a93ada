#include "frame.h"

#include <stdlib.h>
#include <string.h>

frame_result_t frame_parse(const unsigned char *buf, size_t len,
                           size_t frame_bytes_max, const unsigned char **payload,
                           size_t *payload_len, size_t *frame_len) {
  if (len < FRAME_HEADER_BYTES) return FRAME_NEED_MORE;
  size_t n = frame_get_header(buf);
  if (n > frame_bytes_max) {
    *frame_len = n;
    return FRAME_TOO_BIG;
  }
  if (len - FRAME_HEADER_BYTES < n) return FRAME_NEED_MORE;
  *payload = buf + FRAME_HEADER_BYTES;
  *payload_len = n;
  *frame_len = FRAME_HEADER_BYTES + n;
  return FRAME_OK;
}

void frame_buf_init(frame_buf_t *b, size_t rest_bytes, size_t frame_bytes_max) {
  memset(b, 0, sizeof *b);
  b->rest_bytes = rest_bytes;
  b->frame_bytes_max = frame_bytes_max;
  b->limit_bytes = FRAME_HEADER_BYTES + frame_bytes_max + rest_bytes;
}

void frame_buf_set_limit(frame_buf_t *b, size_t limit_bytes) {
  b->limit_bytes = limit_bytes > b->rest_bytes ? limit_bytes : b->rest_bytes;
}

void frame_buf_set_frame_max(frame_buf_t *b, size_t frame_bytes_max) {
  b->frame_bytes_max = frame_bytes_max;
  b->limit_bytes = FRAME_HEADER_BYTES + frame_bytes_max + b->rest_bytes;
}

size_t frame_buf_room(frame_buf_t *b, int framed) {
  size_t want = b->rest_bytes;
  if (framed && b->len >= FRAME_HEADER_BYTES) {
    size_t announced = frame_get_header(b->data);
    if (announced <= b->frame_bytes_max &&
        FRAME_HEADER_BYTES + announced + b->rest_bytes > want)
      want = FRAME_HEADER_BYTES + announced + b->rest_bytes;
  }
  /* Keep a quarter of the rest size free to read into, so a read never
   * brings a few bytes at a time. */
  if (b->cap - b->len < b->rest_bytes / 4 + 1 || b->cap < want) {
    size_t cap = b->cap * 2 > want ? b->cap * 2 : want;
    if (cap > b->limit_bytes) cap = b->limit_bytes;
    if (cap > b->cap) {
      unsigned char *p = realloc(b->data, cap);
      if (!p) return 0;
      b->data = p;
      b->cap = cap;
    }
  }
  return b->cap - b->len;
}

frame_result_t frame_buf_next(const frame_buf_t *b, size_t *off,
                              const unsigned char **payload, size_t *payload_len,
                              size_t *frame_len) {
  /* A buffer that never had room has no data yet: even data + 0 would be
   * arithmetic on a null pointer. */
  if (!b->data) return FRAME_NEED_MORE;
  frame_result_t r = frame_parse(b->data + *off, b->len - *off, b->frame_bytes_max,
                                 payload, payload_len, frame_len);
  if (r == FRAME_OK) *off += *frame_len;
  return r;
}

void frame_buf_consume(frame_buf_t *b, size_t off) {
  if (off == 0) return;
  if (off >= b->len) {
    b->len = 0;
  } else {
    memmove(b->data, b->data + off, b->len - off);
    b->len -= off;
  }
  if (b->cap > 4 * b->rest_bytes && b->len < b->rest_bytes) {
    unsigned char *p = realloc(b->data, b->rest_bytes);
    if (p) {
      b->data = p;
      b->cap = b->rest_bytes;
    }
  }
}

void frame_buf_free(frame_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static int frame_varint(const unsigned char *p, size_t len, size_t *at, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && *at < len; shift += 7) {
    unsigned char b = p[(*at)++];
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

int frame_nesting_ok(const unsigned char *buf, size_t len, unsigned field, int depth_max) {
  size_t at = 0;
  while (at < len) {
    uint64_t key, n;
    if (frame_varint(buf, len, &at, &key) != 0) return 1;
    switch (key & 7) {
      case 0:
        if (frame_varint(buf, len, &at, &n) != 0) return 1;
        break;
      case 1: at += 8; break;
      case 5: at += 4; break;
      case 2:
        if (frame_varint(buf, len, &at, &n) != 0 || n > len - at) return 1;
        if ((key >> 3) == field &&
            (depth_max <= 0 || !frame_nesting_ok(buf + at, (size_t)n, field, depth_max - 1)))
          return 0;
        at += (size_t)n;
        break;
      default:
        return 1; /* groups: protobuf-c refuses them */
    }
  }
  return 1;
}
