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

/* The handshake's magic and the protocol version node, peers and client
 * speak (proto/grid.proto, Hello). */
#define FRAME_MAGIC 0x47524944u /* "GRID" */
#define FRAME_PROTOCOL_VERSION 1

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

/*
 * A bounded read buffer: the one frame reader of the node's connections,
 * its peer links and the client. It holds at most one unfinished frame plus
 * what arrived with it, so it never grows past header + frame_bytes_max +
 * rest_bytes, whatever a sender announces; an announced frame over the
 * maximum is reported by frame_buf_next before its body is read. A stream
 * that is not framed (RESP) uses the same buffer with framed = 0: it grows
 * by doubling up to limit_bytes, and its own parser refuses what would not
 * fit.
 */
typedef struct frame_buf {
  unsigned char *data;
  size_t len;               /* bytes received, not yet consumed */
  size_t cap;
  size_t rest_bytes;        /* the size at rest; also kept free to read into */
  size_t frame_bytes_max;   /* longest payload accepted */
  size_t limit_bytes;       /* cap never passes this */
} frame_buf_t;

/* No memory is taken until the first frame_buf_room. */
void frame_buf_init(frame_buf_t *b, size_t rest_bytes, size_t frame_bytes_max);
/* For a stream that is not framed: cap stays within limit_bytes. */
void frame_buf_set_limit(frame_buf_t *b, size_t limit_bytes);
/* A new longest payload (a connection's, known after its handshake). */
void frame_buf_set_frame_max(frame_buf_t *b, size_t frame_bytes_max);
/* Room to read into at data + len: grown toward the announced frame when
 * framed (within frame_bytes_max), else by doubling, never past the limit.
 * Returns the room's bytes; 0 when memory ran out or the limit is reached. */
size_t frame_buf_room(frame_buf_t *b, int framed);
/* The next whole frame at data + *off: FRAME_OK moves *off past it. */
frame_result_t frame_buf_next(const frame_buf_t *b, size_t *off,
                              const unsigned char **payload, size_t *payload_len,
                              size_t *frame_len);
/* The first off bytes were served: they are dropped, and memory a large
 * frame needed is given back once the buffer is nearly empty. */
void frame_buf_consume(frame_buf_t *b, size_t off);
void frame_buf_free(frame_buf_t *b);

/* Request.steps (EXEC's) and Reply.steps are messages of their own type:
 * protobuf-c unpacks nesting by recursion, so a frame of steps within steps
 * would run a thread out of stack. Whether the message in buf nests its
 * field `field` at most depth_max deep (1: steps, but no steps in them).
 * Malformed bytes pass (the unpack refuses them). */
#define FRAME_FIELD_REQUEST_STEPS 37
#define FRAME_FIELD_REPLY_STEPS 19
int frame_nesting_ok(const unsigned char *buf, size_t len, unsigned field, int depth_max);

#endif
