/*
 * test_frame: the length prefix (frame_parse, the header helpers), the
 * bounded frame reader (frame_buf_t) and the per-request arena, also as the
 * protobuf-c allocator of a decoded Request.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "check.h"
#include "frame.h"
#include "grid.h"
#include "grid.pb-c.h"

/* Writes a frame of payload p[0..n) at out; returns its whole length. */
static size_t make_frame(unsigned char *out, const void *p, uint32_t n) {
  frame_put_header(out, n);
  if (n) memcpy(out + FRAME_HEADER_BYTES, p, n);
  return FRAME_HEADER_BYTES + (size_t)n;
}

static void test_need_more(void) {
  unsigned char buf[64];
  const unsigned char *payload = (const unsigned char *)"untouched";
  size_t plen = 12345, flen = 6789;
  size_t total = make_frame(buf, "hello", 5);
  CHECK_EQ(total, 9);

  /* Fewer than 4 bytes: not even the header. */
  for (size_t len = 0; len < FRAME_HEADER_BYTES; len++)
    CHECK_EQ(frame_parse(buf, len, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);
  /* Header there, body not whole. */
  for (size_t len = FRAME_HEADER_BYTES; len < total; len++)
    CHECK_EQ(frame_parse(buf, len, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);
  /* A big announced length, few bytes present, under the max. */
  frame_put_header(buf, 1000);
  CHECK_EQ(frame_parse(buf, 64, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);
  /* Announced length exactly the max, the body not all there. */
  CHECK_EQ(frame_parse(buf, 64, 1000, &payload, &plen, &flen), FRAME_NEED_MORE);
  /* Nothing was reported for a frame that is not whole. */
  CHECK(plen == 12345 && flen == 6789);
}

static void test_exact_and_back_to_back(void) {
  unsigned char buf[256];
  size_t a = make_frame(buf, "first", 5);
  size_t b = make_frame(buf + a, "the second one", 14);
  size_t c = make_frame(buf + a + b, "", 0);
  size_t all = a + b + c;

  const unsigned char *payload = NULL;
  size_t plen = 0, flen = 0;
  /* Exactly one frame. */
  CHECK_EQ(frame_parse(buf, a, 1024, &payload, &plen, &flen), FRAME_OK);
  CHECK(payload == buf + FRAME_HEADER_BYTES);
  CHECK_EQ(plen, 5);
  CHECK_EQ(flen, 9);
  CHECK(memcmp(payload, "first", 5) == 0);

  /* Back to back: parse, advance by frame_len, parse again. */
  size_t off = 0;
  const char *want[] = {"first", "the second one", ""};
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(frame_parse(buf + off, all - off, 1024, &payload, &plen, &flen), FRAME_OK);
    CHECK_EQ(plen, strlen(want[i]));
    CHECK_EQ(flen, FRAME_HEADER_BYTES + strlen(want[i]));
    CHECK(payload == buf + off + FRAME_HEADER_BYTES);
    CHECK(plen == 0 || memcmp(payload, want[i], plen) == 0);
    off += flen;
  }
  CHECK_EQ(off, all);
  CHECK_EQ(frame_parse(buf + off, 0, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);

  /* The first of two frames, with only part of the second present. */
  CHECK_EQ(frame_parse(buf, a + 6, 1024, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(flen, a);
  CHECK_EQ(frame_parse(buf + a, 6, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);
}

static void test_zero_length(void) {
  unsigned char buf[4];
  frame_put_header(buf, 0);
  const unsigned char *payload = NULL;
  size_t plen = 99, flen = 99;
  CHECK_EQ(frame_parse(buf, 4, 1024, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(plen, 0);
  CHECK_EQ(flen, 4);
  CHECK(payload == buf + 4);
  /* Even with a max of 0. */
  CHECK_EQ(frame_parse(buf, 4, 0, &payload, &plen, &flen), FRAME_OK);
}

static void test_too_big(void) {
  unsigned char buf[64];
  const unsigned char *payload = NULL;
  size_t plen = 0, flen = 0;

  /* Refused from the header alone, before the body is there. */
  frame_put_header(buf, 1025);
  CHECK_EQ(frame_parse(buf, 4, 1024, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 1025);
  /* Exactly the max is allowed (and needs its body). */
  frame_put_header(buf, 1024);
  CHECK_EQ(frame_parse(buf, 4, 1024, &payload, &plen, &flen), FRAME_NEED_MORE);
  /* One over with the body there is still refused. */
  size_t n = make_frame(buf, "0123456789", 10);
  CHECK_EQ(frame_parse(buf, n, 9, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 10);
  CHECK_EQ(frame_parse(buf, n, 10, &payload, &plen, &flen), FRAME_OK);
  /* The largest announced length. */
  frame_put_header(buf, 0xFFFFFFFFu);
  CHECK_EQ(frame_parse(buf, 4, 64u << 20, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 0xFFFFFFFFu);
  frame_put_header(buf, 0x80000000u);
  CHECK_EQ(frame_parse(buf, 4, 1024, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 0x80000000u);
}

static void test_header_round_trip(void) {
  unsigned char h[4];
  frame_put_header(h, 0x01020304u);
  CHECK_EQ(h[0], 0x01);
  CHECK_EQ(h[1], 0x02);
  CHECK_EQ(h[2], 0x03);
  CHECK_EQ(h[3], 0x04); /* big-endian */
  const uint32_t vals[] = {0, 1, 0xFF, 0x100, 0x7F, 0x80, 0xFFFF, 0x10000,
                           0x7FFFFFFFu, 0x80000000u, 0xDEADBEEFu, 0xFFFFFFFEu,
                           0xFFFFFFFFu};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    frame_put_header(h, vals[i]);
    CHECK(frame_get_header(h) == vals[i]);
  }
  frame_put_header(h, 0xFFFFFFFFu);
  CHECK(h[0] == 0xFF && h[1] == 0xFF && h[2] == 0xFF && h[3] == 0xFF);
  const unsigned char raw[4] = {0x80, 0, 0, 0x01};
  CHECK(frame_get_header(raw) == 0x80000001u);
}

/* ---- the bounded reader (frame_buf_t) ----------------------------------- */

#define STREAM_FRAMES_MAX 64

/* A byte stream of frames, as a sender would write it, with where each
 * payload lies so that a reader's output can be compared with it. */
typedef struct stream {
  unsigned char *bytes;
  size_t len;
  size_t n_frames;
  size_t payload_len[STREAM_FRAMES_MAX];
  size_t payload_at[STREAM_FRAMES_MAX]; /* offset of the payload in bytes */
  size_t end_at[STREAM_FRAMES_MAX];     /* offset just past the frame */
} stream_t;

/* Each frame gets its own byte pattern, so that a frame served twice, out
 * of order or shifted by a byte does not compare equal. */
static unsigned char stream_byte(size_t frame, size_t i) {
  return (unsigned char)(frame * 31 + i * 7 + 1);
}

static void stream_make(stream_t *s, const size_t *sizes, size_t n) {
  CHECK(n <= STREAM_FRAMES_MAX);
  memset(s, 0, sizeof *s);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += FRAME_HEADER_BYTES + sizes[i];
  s->bytes = malloc(total ? total : 1);
  CHECK(s->bytes != NULL);
  for (size_t i = 0; i < n; i++) {
    frame_put_header(s->bytes + s->len, (uint32_t)sizes[i]);
    s->payload_at[i] = s->len + FRAME_HEADER_BYTES;
    s->payload_len[i] = sizes[i];
    for (size_t j = 0; j < sizes[i]; j++) s->bytes[s->payload_at[i] + j] = stream_byte(i, j);
    s->len += FRAME_HEADER_BYTES + sizes[i];
    s->end_at[i] = s->len;
  }
  s->n_frames = n;
}

static void stream_free(stream_t *s) {
  free(s->bytes);
  s->bytes = NULL;
}

/* How many bytes each simulated read brings: a fixed size, or sizes from
 * 1 to max drawn from a fixed seed (the same every run). */
typedef struct chunker {
  size_t fixed;
  uint32_t seed;
  size_t max;
} chunker_t;

static size_t chunker_next(chunker_t *c) {
  if (c->fixed) return c->fixed;
  c->seed = c->seed * 1103515245u + 12345u;
  return 1 + (size_t)(c->seed >> 8) % c->max;
}

/* Reads stream s into b the way a socket reader does (frame_buf_room,
 * bytes written at data + len, len += n, then frame_buf_next until it
 * needs more, then frame_buf_consume), each read as long as the chunker
 * says and the room allows. Checks that exactly the frames of s come out,
 * in order, each as soon as its last byte is in; that a reader with an
 * unfinished frame always gets room; and that the buffer never passes
 * header + frame_bytes_max + rest_bytes. Returns the largest cap seen. */
static size_t stream_read(frame_buf_t *b, const stream_t *s, chunker_t *ch) {
  size_t bound = FRAME_HEADER_BYTES + b->frame_bytes_max + b->rest_bytes;
  size_t fed = 0, served = 0, cap_max = 0;
  while (fed < s->len) {
    size_t room = frame_buf_room(b, 1);
    CHECK(room > 0);
    CHECK(b->cap <= bound);
    CHECK_EQ(room, b->cap - b->len);
    size_t n = chunker_next(ch);
    if (n > room) n = room;
    if (n > s->len - fed) n = s->len - fed;
    memcpy(b->data + b->len, s->bytes + fed, n);
    b->len += n;
    fed += n;
    if (b->cap > cap_max) cap_max = b->cap;

    size_t off = 0;
    const unsigned char *payload;
    size_t plen, flen;
    frame_result_t r;
    while ((r = frame_buf_next(b, &off, &payload, &plen, &flen)) == FRAME_OK) {
      CHECK(served < s->n_frames);
      CHECK_EQ(plen, s->payload_len[served]);
      CHECK_EQ(flen, FRAME_HEADER_BYTES + plen);
      CHECK(payload >= b->data && payload + plen <= b->data + b->len);
      CHECK(plen == 0 || memcmp(payload, s->bytes + s->payload_at[served], plen) == 0);
      served++;
    }
    CHECK_EQ(r, FRAME_NEED_MORE);
    /* Every frame whose last byte has arrived was served, no other. */
    size_t whole = 0;
    while (whole < s->n_frames && s->end_at[whole] <= fed) whole++;
    CHECK_EQ(served, whole);
    frame_buf_consume(b, off);
    CHECK(b->cap <= bound);
  }
  CHECK_EQ(served, s->n_frames);
  CHECK_EQ(b->len, 0);
  return cap_max;
}

static void test_buf_starts_empty(void) {
  frame_buf_t b;
  frame_buf_init(&b, 64, 1000);
  /* No memory until the first read asks for room. */
  CHECK(b.data == NULL);
  CHECK_EQ(b.cap, 0);
  CHECK_EQ(b.len, 0);
  /* Nothing to serve yet, asked before any read: no null pointer is
   * offset (UBSan under clang reported data + 0 here). */
  const unsigned char *payload;
  size_t plen, flen, off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_NEED_MORE);
  CHECK_EQ(off, 0);
  frame_buf_consume(&b, 0);
  CHECK(b.data == NULL);
  size_t room = frame_buf_room(&b, 1);
  CHECK(room >= 64);
  CHECK(b.data != NULL);
  frame_buf_free(&b);
  CHECK(b.data == NULL);
  CHECK_EQ(b.cap, 0);
  /* A freed buffer can be used again, and freed twice. */
  CHECK(frame_buf_room(&b, 1) > 0);
  frame_buf_free(&b);
  frame_buf_free(&b);
}

static const size_t stream_sizes[] = {5, 0, 1, 100, 3, 0, 0, 4000, 17, 999, 2, 64, 65, 1000, 0, 7};
#define STREAM_SIZES_N (sizeof stream_sizes / sizeof stream_sizes[0])

static void test_buf_byte_by_byte(void) {
  stream_t s;
  stream_make(&s, stream_sizes, STREAM_SIZES_N);
  frame_buf_t b;
  frame_buf_init(&b, 64, 8192);
  chunker_t one = {.fixed = 1};
  stream_read(&b, &s, &one);
  /* The same buffer goes on with a second stream. */
  stream_read(&b, &s, &one);
  frame_buf_free(&b);
  stream_free(&s);
}

static void test_buf_chunks(void) {
  stream_t s;
  stream_make(&s, stream_sizes, STREAM_SIZES_N);
  /* Sizes that split headers in every way, primes, the rest size, and
   * whole reads of all the room there is. */
  const size_t fixed[] = {2, 3, 4, 5, 7, 13, 63, 64, 65, 1000, 5000, s.len};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    frame_buf_t b;
    frame_buf_init(&b, 64, 8192);
    chunker_t ch = {.fixed = fixed[i]};
    stream_read(&b, &s, &ch);
    frame_buf_free(&b);
  }
  for (uint32_t seed = 1; seed <= 40; seed++) {
    frame_buf_t b;
    /* A rest size smaller than a header, and larger ones. */
    frame_buf_init(&b, seed % 4 == 0 ? 3 : 16u * seed, 8192);
    chunker_t ch = {.seed = seed, .max = seed % 2 ? 10 : 700};
    stream_read(&b, &s, &ch);
    frame_buf_free(&b);
  }
  stream_free(&s);
}

static void test_buf_several_in_one_read(void) {
  const size_t sizes[] = {1, 2, 3, 0, 40, 5, 6, 7, 8, 9};
  stream_t s;
  stream_make(&s, sizes, 10);
  frame_buf_t b;
  frame_buf_init(&b, 4096, 1000);
  size_t room = frame_buf_room(&b, 1);
  CHECK(room >= s.len);
  /* Ten whole frames and half of the first again, in one read. */
  memcpy(b.data, s.bytes, s.len);
  memcpy(b.data + s.len, s.bytes, 3);
  b.len = s.len + 3;
  size_t off = 0;
  const unsigned char *payload;
  size_t plen, flen;
  for (size_t i = 0; i < 10; i++) {
    CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
    CHECK_EQ(plen, sizes[i]);
    CHECK(payload == b.data + s.payload_at[i]);
    CHECK(plen == 0 || memcmp(payload, s.bytes + s.payload_at[i], plen) == 0);
    CHECK_EQ(off, s.end_at[i]);
  }
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_NEED_MORE);
  CHECK_EQ(off, s.len); /* NEED_MORE does not move off */
  frame_buf_consume(&b, off);
  /* The partial frame is kept, moved to the front. */
  CHECK_EQ(b.len, 3);
  CHECK(memcmp(b.data, s.bytes, 3) == 0);
  CHECK(frame_buf_room(&b, 1) > 0);
  memcpy(b.data + b.len, s.bytes + 3, s.end_at[0] - 3);
  b.len += s.end_at[0] - 3;
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(plen, 1);
  CHECK_EQ(payload[0], stream_byte(0, 0));
  frame_buf_consume(&b, off);
  CHECK_EQ(b.len, 0);
  frame_buf_free(&b);
  stream_free(&s);
}

/* A reader writes the header it received into b and asks for room. */
static void put_header_read(frame_buf_t *b, uint32_t announced) {
  CHECK(frame_buf_room(b, 1) >= FRAME_HEADER_BYTES);
  frame_put_header(b->data + b->len, announced);
  b->len += FRAME_HEADER_BYTES;
}

static void test_buf_frame_max(void) {
  enum { REST = 16, MAX = 1000 };
  const size_t bound = FRAME_HEADER_BYTES + MAX + REST;

  /* Exactly frame_bytes_max is accepted, byte by byte and in chunks, with
   * small frames before and after it. */
  const size_t sizes[] = {3, MAX, 0, MAX, 1};
  stream_t s;
  stream_make(&s, sizes, 5);
  const size_t chunk[] = {1, 3, 4, 17, 999, 1000, 1003, 1004, 1005, 2000};
  for (size_t i = 0; i < sizeof chunk / sizeof chunk[0]; i++) {
    frame_buf_t b;
    frame_buf_init(&b, REST, MAX);
    chunker_t ch = {.fixed = chunk[i]};
    size_t cap_max = stream_read(&b, &s, &ch);
    CHECK(cap_max >= FRAME_HEADER_BYTES + MAX);
    CHECK(cap_max <= bound);
    frame_buf_free(&b);
  }
  stream_free(&s);

  /* One over: refused from the header alone, byte by byte. */
  frame_buf_t b;
  frame_buf_init(&b, REST, MAX);
  unsigned char hdr[FRAME_HEADER_BYTES];
  frame_put_header(hdr, MAX + 1);
  const unsigned char *payload;
  size_t plen, flen = 0, off = 0;
  for (size_t i = 0; i < FRAME_HEADER_BYTES; i++) {
    CHECK(frame_buf_room(&b, 1) > 0);
    b.data[b.len++] = hdr[i];
    off = 0;
    frame_result_t r = frame_buf_next(&b, &off, &payload, &plen, &flen);
    CHECK_EQ(r, i + 1 < FRAME_HEADER_BYTES ? FRAME_NEED_MORE : FRAME_TOO_BIG);
    CHECK_EQ(off, 0);
  }
  CHECK_EQ(flen, MAX + 1);
  CHECK_EQ(b.len, FRAME_HEADER_BYTES); /* no byte of the body was needed */
  frame_buf_free(&b);

  /* One over after two good frames in the same read: those are served
   * first, then the refusal. */
  frame_buf_init(&b, REST, MAX);
  CHECK(frame_buf_room(&b, 1) >= 3 * FRAME_HEADER_BYTES + 2);
  b.len += make_frame(b.data + b.len, "a", 1);
  b.len += make_frame(b.data + b.len, "b", 1);
  frame_put_header(b.data + b.len, MAX + 1);
  b.len += FRAME_HEADER_BYTES;
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(payload[0], 'a');
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(payload[0], 'b');
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, MAX + 1);
  CHECK_EQ(off, 2 * (FRAME_HEADER_BYTES + 1));
  frame_buf_free(&b);

  /* Whatever is announced (4 GiB - 1, the most a header can say; 2 GiB;
   * one over), the buffer does not grow toward it... */
  const uint32_t announced[] = {0xFFFFFFFFu, 0x80000000u, MAX + 1};
  for (size_t i = 0; i < sizeof announced / sizeof announced[0]; i++) {
    frame_buf_init(&b, REST, MAX);
    put_header_read(&b, announced[i]);
    CHECK(frame_buf_room(&b, 1) > 0);
    CHECK_EQ(b.cap, REST);
    off = 0;
    CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
    CHECK_EQ(flen, announced[i]);
    /* ...and a reader that went on reading anyway finds the room run out
     * at header + frame_bytes_max + rest_bytes. */
    size_t reads = 0;
    for (;;) {
      size_t room = frame_buf_room(&b, 1);
      CHECK(b.cap <= bound);
      if (room == 0) break;
      memset(b.data + b.len, 0xAB, room);
      b.len += room;
      CHECK(++reads < 1000);
    }
    CHECK_EQ(b.len, bound);
    frame_buf_free(&b);
  }

  /* With a large maximum, a header announcing more than it still takes no
   * memory toward the announced length. */
  frame_buf_init(&b, 64, (size_t)64 << 20);
  put_header_read(&b, 0xFFFFFFFFu);
  CHECK(frame_buf_room(&b, 1) > 0);
  CHECK_EQ(b.cap, 64);
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 0xFFFFFFFFu);
  frame_buf_free(&b);
}

static void test_buf_gives_memory_back(void) {
  enum { REST = 64, BIG = 100000 };
  frame_buf_t b;
  frame_buf_init(&b, REST, (size_t)1 << 20);
  CHECK(frame_buf_room(&b, 1) > 0);
  CHECK_EQ(b.cap, REST);
  for (int round = 0; round < 3; round++) {
    put_header_read(&b, BIG);
    /* Grown toward the announced frame: its whole body fits in one read,
     * and not much more than it was taken. */
    size_t room = frame_buf_room(&b, 1);
    CHECK(room >= BIG);
    CHECK(b.cap >= FRAME_HEADER_BYTES + BIG);
    CHECK(b.cap <= FRAME_HEADER_BYTES + BIG + REST);
    for (size_t i = 0; i < BIG; i++) b.data[b.len + i] = stream_byte(7, i);
    b.len += BIG;
    /* The next frame's first two bytes came with it. */
    b.data[b.len++] = 0;
    b.data[b.len++] = 0;
    size_t off = 0;
    const unsigned char *payload;
    size_t plen, flen;
    CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
    CHECK_EQ(plen, BIG);
    CHECK(payload[0] == stream_byte(7, 0) && payload[BIG - 1] == stream_byte(7, BIG - 1));
    CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_NEED_MORE);
    frame_buf_consume(&b, off);
    /* Served: the memory is given back, what followed is kept. */
    CHECK_EQ(b.cap, REST);
    CHECK_EQ(b.len, 2);
    /* The rest of that next frame: a zero-length one. */
    CHECK(frame_buf_room(&b, 1) >= 2);
    b.data[b.len++] = 0;
    b.data[b.len++] = 0;
    off = 0;
    CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
    CHECK_EQ(plen, 0);
    frame_buf_consume(&b, off);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(b.cap, REST);
  }
  frame_buf_free(&b);
}

static void test_buf_unframed_limit(void) {
  enum { REST = 64, LIMIT = 1000 };
  frame_buf_t b;
  frame_buf_init(&b, REST, (size_t)1 << 20);
  frame_buf_set_limit(&b, LIMIT);
  /* The first bytes would announce a 512 KiB frame, within frame_bytes_max:
   * an unframed stream (RESP) must not grow toward it. */
  size_t room = frame_buf_room(&b, 0);
  CHECK(room >= FRAME_HEADER_BYTES);
  frame_put_header(b.data, 512u << 10);
  b.len = FRAME_HEADER_BYTES;
  size_t reads = 0, prev_cap = b.cap;
  for (;;) {
    room = frame_buf_room(&b, 0);
    CHECK(b.cap <= LIMIT);
    /* Grown by doubling at most (or to the rest size). */
    CHECK(b.cap <= (prev_cap * 2 > REST ? prev_cap * 2 : REST));
    prev_cap = b.cap;
    if (room == 0) break;
    CHECK_EQ(room, b.cap - b.len);
    /* Short reads, so that the buffer fills step by step. */
    size_t n = room < 50 ? room : 50;
    memset(b.data + b.len, 'x', n);
    b.len += n;
    CHECK(++reads < 1000);
  }
  CHECK_EQ(b.cap, LIMIT);
  CHECK_EQ(b.len, LIMIT);
  CHECK_EQ(frame_buf_room(&b, 0), 0); /* and stays 0 */
  CHECK_EQ(b.cap, LIMIT);
  CHECK(frame_get_header(b.data) == 512u << 10); /* nothing was moved */
  /* A parser that takes part of it makes room again. */
  frame_buf_consume(&b, 600);
  CHECK_EQ(b.len, LIMIT - 600);
  CHECK_EQ(frame_buf_room(&b, 0), 600);
  CHECK(b.data[0] == 'x');
  frame_buf_free(&b);

  /* A limit under the rest size is the rest size. */
  frame_buf_init(&b, REST, (size_t)1 << 20);
  frame_buf_set_limit(&b, 10);
  room = frame_buf_room(&b, 0);
  CHECK_EQ(room, REST);
  b.len = REST;
  CHECK_EQ(frame_buf_room(&b, 0), 0);
  CHECK_EQ(b.cap, REST);
  frame_buf_free(&b);
}

static void test_buf_set_frame_max(void) {
  enum { REST = 16 };
  const unsigned char *payload;
  size_t plen, flen, off;
  frame_buf_t b;

  /* 150 bytes are over a maximum of 100... */
  frame_buf_init(&b, REST, 100);
  put_header_read(&b, 150);
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
  /* ...and within one of 200 set later, which also lets the buffer grow
   * to it. */
  frame_buf_set_frame_max(&b, 200);
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_NEED_MORE);
  CHECK(frame_buf_room(&b, 1) >= 150);
  CHECK(b.cap <= FRAME_HEADER_BYTES + 200 + REST);
  memset(b.data + b.len, 'y', 150);
  b.len += 150;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_OK);
  CHECK_EQ(plen, 150);
  frame_buf_consume(&b, off);
  frame_buf_free(&b);

  /* A smaller maximum refuses what the larger one took. */
  frame_buf_init(&b, REST, 5000);
  frame_buf_set_frame_max(&b, 50);
  const size_t sizes[] = {50, 0, 50};
  stream_t s;
  stream_make(&s, sizes, 3);
  chunker_t ch = {.fixed = 7};
  CHECK(stream_read(&b, &s, &ch) <= FRAME_HEADER_BYTES + 50 + REST);
  stream_free(&s);
  put_header_read(&b, 51);
  off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 51);
  /* Reading on regardless, the buffer stops at the new bound. */
  size_t room;
  while ((room = frame_buf_room(&b, 1)) > 0) {
    CHECK(b.cap <= FRAME_HEADER_BYTES + 50 + REST);
    b.len += room;
  }
  CHECK_EQ(b.len, FRAME_HEADER_BYTES + 50 + REST);
  frame_buf_free(&b);
}

static void test_buf_zero_length(void) {
  size_t sizes[40];
  for (size_t i = 0; i < 40; i++) sizes[i] = 0;
  stream_t s;
  stream_make(&s, sizes, 40);
  CHECK_EQ(s.len, 40 * FRAME_HEADER_BYTES);
  const size_t chunk[] = {1, 2, 3, 4, 5, 160};
  for (size_t i = 0; i < sizeof chunk / sizeof chunk[0]; i++) {
    frame_buf_t b;
    frame_buf_init(&b, 256, 1000);
    chunker_t ch = {.fixed = chunk[i]};
    stream_read(&b, &s, &ch);
    frame_buf_free(&b);
  }
  /* With a maximum of 0, empty frames are all that is accepted. */
  frame_buf_t b;
  frame_buf_init(&b, 16, 0);
  chunker_t one = {.fixed = 1};
  stream_read(&b, &s, &one);
  put_header_read(&b, 1);
  const unsigned char *payload;
  size_t plen, flen, off = 0;
  CHECK_EQ(frame_buf_next(&b, &off, &payload, &plen, &flen), FRAME_TOO_BIG);
  CHECK_EQ(flen, 1);
  frame_buf_free(&b);
  stream_free(&s);
}

/* ---- arena ------------------------------------------------------------- */

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

static void test_arena_many(void) {
  enum { N = 3000 };
  arena_t a;
  arena_init(&a, 256);
  unsigned char *ptr[N];
  size_t len[N];
  for (int i = 0; i < N; i++) {
    len[i] = (size_t)(i * 37 % 200) + (i % 5 == 0 ? 0 : 1); /* 0..200 */
    ptr[i] = arena_alloc(&a, len[i]);
    CHECK(ptr[i] != NULL);
    CHECK(aligned16(ptr[i]));
    memset(ptr[i], (int)(i & 0xFF), len[i]);
  }
  /* Every block kept its bytes: no two blocks overlap. */
  for (int i = 0; i < N; i++)
    for (size_t j = 0; j < len[i]; j++) CHECK_EQ(ptr[i][j], i & 0xFF);
  arena_close(&a);
  CHECK(a.head == NULL);
}

static void test_arena_big(void) {
  arena_t a;
  arena_init(&a, 128);
  /* A block larger than a chunk on an empty arena. */
  unsigned char *big0 = arena_alloc(&a, 1000);
  CHECK(big0 != NULL && aligned16(big0));
  memset(big0, 0xB0, 1000);
  unsigned char *s1 = arena_alloc(&a, 40);
  CHECK(s1 != NULL && aligned16(s1));
  memset(s1, 0x51, 40);
  /* A large one after small ones, then small ones go on. */
  unsigned char *big1 = arena_alloc(&a, 100000);
  CHECK(big1 != NULL && aligned16(big1));
  memset(big1, 0xB1, 100000);
  unsigned char *s2 = arena_alloc(&a, 40);
  CHECK(s2 != NULL && aligned16(s2));
  memset(s2, 0x52, 40);
  unsigned char *exact = arena_alloc(&a, 128); /* exactly one chunk */
  CHECK(exact != NULL && aligned16(exact));
  memset(exact, 0xEE, 128);
  unsigned char *s3 = arena_alloc(&a, 1);
  CHECK(s3 != NULL && aligned16(s3));
  *s3 = 0x53;
  for (int i = 0; i < 1000; i++) CHECK_EQ(big0[i], 0xB0);
  for (int i = 0; i < 40; i++) CHECK_EQ(s1[i], 0x51);
  for (int i = 0; i < 100000; i++) CHECK_EQ(big1[i], 0xB1);
  for (int i = 0; i < 40; i++) CHECK_EQ(s2[i], 0x52);
  for (int i = 0; i < 128; i++) CHECK_EQ(exact[i], 0xEE);
  CHECK_EQ(*s3, 0x53);

  /* Reset, then use again: memory is writable and keeps what is written. */
  arena_reset(&a);
  unsigned char *r[200];
  for (int i = 0; i < 200; i++) {
    r[i] = arena_alloc(&a, (size_t)(i % 150) + 1);
    CHECK(r[i] != NULL && aligned16(r[i]));
    memset(r[i], i, (size_t)(i % 150) + 1);
  }
  for (int i = 0; i < 200; i++)
    for (int j = 0; j <= i % 150; j++) CHECK_EQ(r[i][j], i);
  unsigned char *big2 = arena_alloc(&a, 5000);
  CHECK(big2 != NULL);
  memset(big2, 0xB2, 5000);
  arena_reset(&a);
  arena_reset(&a); /* twice in a row is fine */
  unsigned char *again = arena_alloc(&a, 64);
  CHECK(again != NULL);
  memset(again, 1, 64);
  arena_close(&a);

  /* Reset of an arena that holds only an oversized block. */
  arena_init(&a, 64);
  CHECK(arena_alloc(&a, 4096) != NULL);
  arena_reset(&a);
  unsigned char *p = arena_alloc(&a, 16);
  CHECK(p != NULL);
  memset(p, 2, 16);
  arena_close(&a);
  /* Close of an unused arena, and a default chunk size. */
  arena_init(&a, 0);
  CHECK(a.chunk_bytes > 0);
  arena_close(&a);
}

static void test_arena_dup(void) {
  arena_t a;
  arena_init(&a, 64);
  const char *text = "a string that is longer than one chunk of sixty-four bytes, to cross";
  char *d = arena_dup(&a, text, strlen(text) + 1);
  CHECK(d != NULL && d != text);
  CHECK_STR(d, text);
  unsigned char bin[3] = {0, 0xFF, 0};
  unsigned char *db = arena_dup(&a, bin, 3);
  CHECK(db != NULL && memcmp(db, bin, 3) == 0);
  CHECK(arena_dup(&a, "", 0) != NULL); /* zero bytes: a valid pointer */
  CHECK_STR(d, text); /* still there after more allocations */
  arena_close(&a);
}

static void test_arena_protobuf(void) {
  Grid__Request rq = GRID__REQUEST__INIT;
  rq.id = 42;
  rq.op = GRID__OP__PUT_ALL;
  rq.cache = "default";
  rq.key.data = (uint8_t *)"the-key";
  rq.key.len = 7;
  unsigned char value[3000];
  for (size_t i = 0; i < sizeof value; i++) value[i] = (unsigned char)(i * 13);
  rq.value.data = value;
  rq.value.len = sizeof value;
  rq.delta = -5;
  enum { NK = 50 };
  ProtobufCBinaryData keys[NK];
  char key_text[NK][16];
  for (int i = 0; i < NK; i++) {
    snprintf(key_text[i], sizeof key_text[i], "k%d", i);
    keys[i].data = (uint8_t *)key_text[i];
    keys[i].len = strlen(key_text[i]);
  }
  rq.n_keys = NK;
  rq.keys = keys;

  size_t n = grid__request__get_packed_size(&rq);
  unsigned char *buf = malloc(n);
  CHECK(buf != NULL);
  CHECK_EQ(grid__request__pack(&rq, buf), n);

  /* Small chunks so that decoding crosses many of them. */
  arena_t a;
  arena_init(&a, 512);
  for (int round = 0; round < 3; round++) {
    Grid__Request *got = grid__request__unpack(&a.pb, n, buf);
    CHECK(got != NULL);
    CHECK_EQ(got->id, 42);
    CHECK_EQ(got->op, GRID__OP__PUT_ALL);
    CHECK_STR(got->cache, "default");
    CHECK_EQ(got->key.len, 7);
    CHECK(memcmp(got->key.data, "the-key", 7) == 0);
    CHECK_EQ(got->value.len, sizeof value);
    CHECK(memcmp(got->value.data, value, sizeof value) == 0);
    CHECK_EQ(got->delta, -5);
    CHECK_EQ(got->n_keys, NK);
    for (int i = 0; i < NK; i++) {
      CHECK_EQ(got->keys[i].len, strlen(key_text[i]));
      CHECK(memcmp(got->keys[i].data, key_text[i], got->keys[i].len) == 0);
    }
    CHECK_EQ(got->n_values, 0);
    /* Freeing through the arena allocator is a no-op; the arena owns it. */
    grid__request__free_unpacked(got, &a.pb);
    arena_reset(&a);
  }
  /* A truncated message fails to decode, and leaves nothing to free but
   * the arena. */
  CHECK(grid__request__unpack(&a.pb, n - 1, buf) == NULL);
  arena_close(&a);
  free(buf);
}

/* A size whose rounding up to 16, or whose chunk header, would overflow
 * size_t cannot be had: NULL, not a small block. Today (SIZE_MAX + 15) & ~15
 * wraps to 0 and sizeof(chunk) + (SIZE_MAX - 15) wraps to 16, so both calls
 * return a pointer to a block of (almost) no bytes. No correct arena calls
 * malloc for these sizes, so this does not depend on how malloc fails. */
static void test_arena_alloc_overflow(void) {
  arena_t a;
  arena_init(&a, 256);
  CHECK(arena_alloc(&a, SIZE_MAX) == NULL);
  CHECK(arena_alloc(&a, SIZE_MAX - 8) == NULL);
  CHECK(arena_alloc(&a, SIZE_MAX - 15) == NULL);
  CHECK(arena_alloc(&a, SIZE_MAX - 31) == NULL);
  /* The arena still works after the refusals. */
  unsigned char *p = arena_alloc(&a, 100);
  CHECK(p != NULL);
  memset(p, 7, 100);
  arena_close(&a);
}

/* Steps may not hold steps: protobuf-c unpacks nesting by recursion, so a
 * frame of steps within steps would run the thread out of stack; the check
 * runs on the bytes before the unpack. */
static void test_steps_nesting(void) {
  Grid__Request inner = GRID__REQUEST__INIT, step = GRID__REQUEST__INIT,
                exec = GRID__REQUEST__INIT;
  inner.op = GRID__OP__GET;
  Grid__Request *inner_p = &inner, *step_p = &step;
  step.op = GRID__OP__GET;
  exec.op = GRID__OP__EXEC;
  exec.steps = &step_p;
  exec.n_steps = 1;
  unsigned char buf[256];
  size_t n = grid__request__pack(&exec, buf);
  CHECK(frame_nesting_ok(buf, n, FRAME_FIELD_REQUEST_STEPS, 1));
  step.steps = &inner_p; /* a step with a step of its own */
  step.n_steps = 1;
  n = grid__request__pack(&exec, buf);
  CHECK(!frame_nesting_ok(buf, n, FRAME_FIELD_REQUEST_STEPS, 1));
  CHECK(frame_nesting_ok(buf, n, FRAME_FIELD_REQUEST_STEPS, 2));
  /* A million levels, made by hand: refused without recursing a million
   * times, in a bounded number of steps. */
  size_t levels = 1000000, cap = levels * 6 + 16, len = 0;
  unsigned char *deep = malloc(cap);
  CHECK(deep);
  for (size_t i = 0; i < levels; i++) { /* from the inside out, at the end of deep */
    unsigned char hdr[8];
    size_t h = 0;
    hdr[h++] = 0xaa; /* field 37, length-delimited: (37 << 3 | 2) as a varint */
    hdr[h++] = 0x02;
    for (size_t v = len; ; v >>= 7) {
      hdr[h++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
      if (v <= 0x7f) break;
    }
    memmove(deep + cap - len - h, hdr, h);
    len += h;
  }
  CHECK(!frame_nesting_ok(deep + cap - len, len, FRAME_FIELD_REQUEST_STEPS, 1));
  free(deep);
  /* Malformed bytes pass: the unpack refuses them. */
  const unsigned char junk[] = {0xaa, 0x02, 0x7f};
  CHECK(frame_nesting_ok(junk, sizeof junk, FRAME_FIELD_REQUEST_STEPS, 1));
}

int main(void) {
  RUN(test_need_more);
  RUN(test_steps_nesting);
  RUN(test_exact_and_back_to_back);
  RUN(test_zero_length);
  RUN(test_too_big);
  RUN(test_header_round_trip);
  RUN(test_buf_starts_empty);
  RUN(test_buf_byte_by_byte);
  RUN(test_buf_chunks);
  RUN(test_buf_several_in_one_read);
  RUN(test_buf_frame_max);
  RUN(test_buf_gives_memory_back);
  RUN(test_buf_unframed_limit);
  RUN(test_buf_set_frame_max);
  RUN(test_buf_zero_length);
  RUN(test_arena_many);
  RUN(test_arena_big);
  RUN(test_arena_dup);
  RUN(test_arena_protobuf);
  RUN(test_arena_alloc_overflow); /* last: it fails today, see its comment */
  fprintf(stderr, "test_frame: all passed\n");
  return 0;
}
