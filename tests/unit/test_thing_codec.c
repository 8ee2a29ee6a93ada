/*
 * test_thing_codec: foundation-shim's VTQ codec on its own: every type
 * packs and unpacks to what went in, bad input is refused with its own
 * error, and bytes a newer writer adds (fields this reader does not know)
 * are skipped. Prints the bytes one VTQ takes per type (the figure the
 * issue asked for; not asserted beyond a sanity bound).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "thing.h"

#define T_MS INT64_C(1796000000123) /* a 2026 timestamp */

static size_t roundtrip(const thing_vtq_t *in, thing_vtq_t *out, void **mem) {
  void *buf;
  size_t len;
  CHECK_RC(thing_vtq_encode(in, &buf, &len), 0);
  CHECK_RC(thing_vtq_decode(buf, len, out, mem), 0);
  free(buf);
  CHECK_EQ(out->value.type, in->value.type);
  CHECK_EQ(out->time_ms, in->time_ms);
  CHECK_EQ(out->quality, in->quality);
  return len;
}

static void test_every_type(void) {
  thing_vtq_t out;
  void *mem;
  size_t len;

  thing_vtq_t v = thing_vtq_number(71.25, T_MS, THING_GOOD);
  len = roundtrip(&v, &out, &mem);
  CHECK(out.value.u.number == 71.25);
  printf("bytes per VTQ: number %zu\n", len);
  CHECK(len < 32);
  free(mem);

  v = thing_vtq_number(0.0, 0, THING_QUALITY_UNKNOWN); /* all defaults */
  roundtrip(&v, &out, &mem);
  CHECK(out.value.u.number == 0.0);
  free(mem);

  v = thing_vtq_integer(-1480, T_MS, THING_BAD);
  len = roundtrip(&v, &out, &mem);
  CHECK_EQ(out.value.u.integer, -1480);
  printf("bytes per VTQ: integer %zu\n", len);
  free(mem);
  v = thing_vtq_integer(INT64_MIN, T_MS, THING_GOOD);
  roundtrip(&v, &out, &mem);
  CHECK(out.value.u.integer == INT64_MIN);
  free(mem);

  v = thing_vtq_boolean(true, T_MS, THING_UNCERTAIN);
  len = roundtrip(&v, &out, &mem);
  CHECK(out.value.u.boolean);
  printf("bytes per VTQ: boolean %zu\n", len);
  free(mem);
  v = thing_vtq_boolean(false, T_MS, THING_GOOD); /* false is still sent */
  roundtrip(&v, &out, &mem);
  CHECK(!out.value.u.boolean);
  free(mem);

  v = thing_vtq_string("running ✓", T_MS, THING_GOOD);
  len = roundtrip(&v, &out, &mem);
  CHECK_EQ(out.value.u.bytes.len, strlen("running ✓"));
  CHECK_STR(out.value.u.bytes.data, "running ✓");
  printf("bytes per VTQ: string (11 bytes) %zu\n", len);
  free(mem);
  v = thing_vtq_string("", T_MS, THING_GOOD);
  roundtrip(&v, &out, &mem);
  CHECK_EQ(out.value.u.bytes.len, 0);
  free(mem);

  v = (thing_vtq_t){.value = {.type = THING_DATETIME, .u.datetime_ms = T_MS - 5},
                    .time_ms = T_MS, .quality = THING_GOOD};
  len = roundtrip(&v, &out, &mem);
  CHECK_EQ(out.value.u.datetime_ms, T_MS - 5);
  printf("bytes per VTQ: datetime %zu\n", len);
  free(mem);

  v = (thing_vtq_t){.value = {.type = THING_LOCATION,
                              .u.location = {47.3769, 8.5417, 408.0}},
                    .time_ms = T_MS, .quality = THING_GOOD};
  len = roundtrip(&v, &out, &mem);
  CHECK(out.value.u.location.latitude == 47.3769);
  CHECK(out.value.u.location.longitude == 8.5417);
  CHECK(out.value.u.location.elevation == 408.0);
  printf("bytes per VTQ: location %zu\n", len);
  free(mem);

  const char *doc = "{\"setpoint\": 72.5, \"mode\": [\"auto\", 3]}";
  v = (thing_vtq_t){.value = {.type = THING_JSON}, .time_ms = T_MS, .quality = THING_GOOD};
  v.value.u.bytes.data = doc;
  v.value.u.bytes.len = strlen(doc);
  len = roundtrip(&v, &out, &mem);
  CHECK_STR(out.value.u.bytes.data, doc);
  printf("bytes per VTQ: json (%zu chars) %zu\n", strlen(doc), len);
  free(mem);

  const unsigned char blob[] = {0, 1, 2, 0xff, 0, 7};
  v = (thing_vtq_t){.value = {.type = THING_BLOB}, .time_ms = T_MS, .quality = THING_GOOD};
  v.value.u.bytes.data = (const char *)blob;
  v.value.u.bytes.len = sizeof blob;
  len = roundtrip(&v, &out, &mem);
  CHECK_EQ(out.value.u.bytes.len, sizeof blob);
  CHECK(memcmp(out.value.u.bytes.data, blob, sizeof blob) == 0);
  printf("bytes per VTQ: blob (6 bytes) %zu\n", len);
  free(mem);
}

static void test_bad_input(void) {
  void *buf = NULL;
  size_t len = 0;
  thing_vtq_t v = {.value = {.type = THING_JSON}, .time_ms = T_MS};
  v.value.u.bytes.data = "{\"a\": ";
  v.value.u.bytes.len = 6;
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), THING_EJSON);
  CHECK(buf == NULL);
  v.value.type = THING_STRING;
  v.value.u.bytes.data = "a\xff" "b"; /* not UTF-8 */
  v.value.u.bytes.len = 3;
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v.value.u.bytes.data = "a\0b"; /* a NUL in a string */
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v.value.u.bytes.data = "\xed\xa0\x80"; /* a surrogate */
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v.value.u.bytes.data = "\xc0\xaf"; /* overlong */
  v.value.u.bytes.len = 2;
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v.value.u.bytes.data = "\xe2\x9c"; /* cut short */
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v = thing_vtq_number(1, T_MS, (thing_quality_t)9);
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v = (thing_vtq_t){.value = {.type = (thing_type_t)42}};
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v = (thing_vtq_t){.value = {.type = THING_LOCATION, .u.location = {91, 0, 0}}};
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);
  v = (thing_vtq_t){.value = {.type = THING_LOCATION, .u.location = {0, NAN, 0}}};
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), GRID_EINVAL);

  /* Bytes that are not a VTQ. */
  thing_vtq_t out;
  void *mem = (void *)1;
  CHECK_RC(thing_vtq_decode("hello", 5, &out, &mem), THING_EDECODE);
  CHECK(mem == NULL);
  /* A VTQ cut short. */
  v = thing_vtq_string("abcdef", T_MS, THING_GOOD);
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), 0);
  CHECK_RC(thing_vtq_decode(buf, len - 2, &out, &mem), THING_EDECODE);
  free(buf);
  /* A type whose value is in another type's field: type NUMBER (field 1
   * = 1), value as integer (field 5, sint64 zigzag 2 = 1). */
  const unsigned char mixed[] = {0x08, 0x01, 0x28, 0x02};
  CHECK_RC(thing_vtq_decode(mixed, sizeof mixed, &out, &mem), THING_EDECODE);
  /* An empty message: no type. */
  CHECK_RC(thing_vtq_decode("", 0, &out, &mem), THING_EDECODE);
}

/* A newer writer's fields (here 14, a varint, and 20, bytes) are skipped,
 * the rest read; a newer type (9) is refused in words, never misread. */
static void test_forward_compatible(void) {
  thing_vtq_t v = thing_vtq_integer(42, T_MS, THING_GOOD), out;
  void *buf, *mem;
  size_t len;
  CHECK_RC(thing_vtq_encode(&v, &buf, &len), 0);
  unsigned char *more = malloc(len + 8);
  memcpy(more, buf, len);
  const unsigned char extra[] = {0x70, 0x05, 0xa2, 0x01, 0x02, 'h', 'i'}; /* 14: 5; 20: "hi" */
  memcpy(more + len, extra, sizeof extra);
  CHECK_RC(thing_vtq_decode(more, len + sizeof extra, &out, &mem), 0);
  CHECK_EQ(out.value.u.integer, 42);
  CHECK_EQ(out.time_ms, T_MS);
  free(mem);
  /* format 1 (field 15) is read like format 0. */
  const unsigned char fmt[] = {0x78, 0x01};
  memcpy(more + len, fmt, sizeof fmt);
  CHECK_RC(thing_vtq_decode(more, len + sizeof fmt, &out, &mem), 0);
  CHECK_EQ(out.value.u.integer, 42);
  free(mem);
  free(more);
  free(buf);
  /* type 9 with a value in a field this reader does not know (12). */
  const unsigned char newer[] = {0x08, 0x09, 0x62, 0x01, 'x'};
  CHECK_RC(thing_vtq_decode(newer, sizeof newer, &out, &mem), THING_EDECODE);
  CHECK(strstr(thing_strerror(THING_EDECODE), "VTQ") != NULL);
}

static void test_value_equal_words(void) {
  CHECK(strstr(thing_strerror(THING_ETYPE), "base type") != NULL);
  CHECK(strstr(thing_strerror(GRID_ENOTFOUND), "not found") != NULL);
}

int main(void) {
  RUN(test_every_type);
  RUN(test_bad_input);
  RUN(test_forward_compatible);
  RUN(test_value_equal_words);
  fprintf(stderr, "test_thing_codec: all passed\n");
  return 0;
}
