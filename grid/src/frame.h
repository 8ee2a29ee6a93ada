/*
 * frame: the length prefix of the wire protocol.
 *
 *   0        4                      4+len
 *   +--------+----------------------+
 *   | len    | protobuf message     |
 *   | u32 BE | (len bytes)          |
 *   +--------+----------------------+
 *
 * len counts the message only. A frame whose len is over the receiver's
 * frame_bytes_max is refused before its body is read.
 */
#ifndef GRID_FRAME_H
#define GRID_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_HEADER_BYTES 4

typedef enum {
  FRAME_NEED_MORE = 0, /* not a whole frame yet */
  FRAME_OK = 1,        /* *payload / *payload_len describe a whole frame */
  FRAME_TOO_BIG = 2,   /* len is over frame_bytes_max */
} frame_result_t;

/* Looks at buf[0..len) for one frame. *frame_len receives header + payload
 * bytes when the result is FRAME_OK, and the announced payload length when
 * it is FRAME_TOO_BIG. */
frame_result_t frame_parse(const unsigned char *buf, size_t len,
                           size_t frame_bytes_max, const unsigned char **payload,
                           size_t *payload_len, size_t *frame_len);

static inline void frame_put_header(unsigned char *p, uint32_t len) {
  p[0] = (unsigned char)(len >> 24);
  p[1] = (unsigned char)(len >> 16);
  p[2] = (unsigned char)(len >> 8);
  p[3] = (unsigned char)len;
}

static inline uint32_t frame_get_header(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

#endif
