/*
 * test_frame: the length prefix (frame_parse, the header helpers) and the
 * per-request arena, also as the protobuf-c allocator of a decoded Request.
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

int main(void) {
  RUN(test_need_more);
  RUN(test_exact_and_back_to_back);
  RUN(test_zero_length);
  RUN(test_too_big);
  RUN(test_header_round_trip);
  RUN(test_arena_many);
  RUN(test_arena_big);
  RUN(test_arena_dup);
  RUN(test_arena_protobuf);
  RUN(test_arena_alloc_overflow); /* last: it fails today, see its comment */
  fprintf(stderr, "test_frame: all passed\n");
  return 0;
}
