#include "frame.h"

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
