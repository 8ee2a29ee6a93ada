/*
 * codec: a VTQ to and from the bytes the grid keeps (grid.thing.Vtq,
 * proto/thing.proto, through protobuf-c). JSON is validated with jansson.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "thing.pb-c.h"
#include "thing_int.h"

/* Well-formed UTF-8 without NUL (what a STRING may hold: protobuf's
 * string is UTF-8, and protobuf-c's ends at a NUL). */
static int codec_utf8_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t extra;
    uint32_t cp;
    if (c == 0) return 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xE0) == 0xC0) extra = 1, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) extra = 2, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) extra = 3, cp = c & 0x07;
    else return 0;
    if (i + extra >= n) return 0; /* cut short */
    for (size_t k = 1; k <= extra; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    /* Overlong forms, surrogates, past U+10FFFF. */
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
        (extra == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += extra + 1;
  }
  return 1;
}

thing_vtq_t thing_vtq_number(double v, int64_t time_ms, thing_quality_t q) {
  return (thing_vtq_t){.value = {.type = THING_NUMBER, .u.number = v}, .time_ms = time_ms,
                       .quality = q};
}

thing_vtq_t thing_vtq_integer(int64_t v, int64_t time_ms, thing_quality_t q) {
  return (thing_vtq_t){.value = {.type = THING_INTEGER, .u.integer = v}, .time_ms = time_ms,
                       .quality = q};
}

thing_vtq_t thing_vtq_boolean(bool v, int64_t time_ms, thing_quality_t q) {
  return (thing_vtq_t){.value = {.type = THING_BOOLEAN, .u.boolean = v}, .time_ms = time_ms,
                       .quality = q};
}

thing_vtq_t thing_vtq_string(const char *text, int64_t time_ms, thing_quality_t q) {
  thing_vtq_t v = {.value = {.type = THING_STRING}, .time_ms = time_ms, .quality = q};
  v.value.u.bytes.data = text;
  v.value.u.bytes.len = text ? strlen(text) : 0;
  return v;
}

int thing_vtq_encode(const thing_vtq_t *vtq, void **out, size_t *len) {
  *out = NULL;
  *len = 0;
  Grid__Thing__Vtq m = GRID__THING__VTQ__INIT;
  Grid__Thing__Location loc = GRID__THING__LOCATION__INIT;
  if (vtq->quality < THING_QUALITY_UNKNOWN || vtq->quality > THING_UNCERTAIN)
    return GRID_EINVAL;
  m.type = (Grid__Thing__BaseType)vtq->value.type;
  m.time_ms = vtq->time_ms;
  m.quality = (Grid__Thing__Quality)vtq->quality;
  const thing_value_t *v = &vtq->value;
  char *text = NULL; /* STRING and JSON: protobuf-c wants a C string */
  switch (v->type) {
    case THING_NUMBER:
      m.value_case = GRID__THING__VTQ__VALUE_NUMBER;
      m.number = v->u.number;
      break;
    case THING_INTEGER:
      m.value_case = GRID__THING__VTQ__VALUE_INTEGER;
      m.integer = v->u.integer;
      break;
    case THING_BOOLEAN:
      m.value_case = GRID__THING__VTQ__VALUE_BOOLEAN;
      m.boolean = v->u.boolean;
      break;
    case THING_DATETIME:
      m.value_case = GRID__THING__VTQ__VALUE_DATETIME_MS;
      m.datetime_ms = v->u.datetime_ms;
      break;
    case THING_LOCATION:
      if (!isfinite(v->u.location.latitude) || !isfinite(v->u.location.longitude) ||
          !isfinite(v->u.location.elevation) || fabs(v->u.location.latitude) > 90 ||
          fabs(v->u.location.longitude) > 180)
        return GRID_EINVAL;
      loc.latitude = v->u.location.latitude;
      loc.longitude = v->u.location.longitude;
      loc.elevation = v->u.location.elevation;
      m.value_case = GRID__THING__VTQ__VALUE_LOCATION;
      m.location = &loc;
      break;
    case THING_STRING:
    case THING_JSON: {
      const char *d = v->u.bytes.len ? v->u.bytes.data : "";
      if (!d) return GRID_EINVAL;
      if (!codec_utf8_ok((const unsigned char *)d, v->u.bytes.len)) return GRID_EINVAL;
      if (v->type == THING_JSON) {
        json_error_t err;
        json_t *doc = json_loadb(d, v->u.bytes.len, JSON_DECODE_ANY, &err);
        if (!doc) return THING_EJSON;
        json_decref(doc);
      }
      text = malloc(v->u.bytes.len + 1);
      if (!text) return GRID_ENOMEM;
      memcpy(text, d, v->u.bytes.len);
      text[v->u.bytes.len] = '\0';
      if (v->type == THING_STRING) {
        m.value_case = GRID__THING__VTQ__VALUE_TEXT;
        m.text = text;
      } else {
        m.value_case = GRID__THING__VTQ__VALUE_JSON;
        m.json = text;
      }
      break;
    }
    case THING_BLOB:
      if (v->u.bytes.len && !v->u.bytes.data) return GRID_EINVAL;
      m.value_case = GRID__THING__VTQ__VALUE_BLOB;
      m.blob.data = (uint8_t *)v->u.bytes.data;
      m.blob.len = v->u.bytes.len;
      break;
    default:
      return GRID_EINVAL;
  }
  size_t n = grid__thing__vtq__get_packed_size(&m);
  unsigned char *buf = malloc(n ? n : 1);
  if (!buf) {
    free(text);
    return GRID_ENOMEM;
  }
  grid__thing__vtq__pack(&m, buf);
  free(text);
  *out = buf;
  *len = n;
  return 0;
}

/* The value case a base type is stored in. */
static Grid__Thing__Vtq__ValueCase codec_case_of(thing_type_t t) {
  switch (t) {
    case THING_NUMBER: return GRID__THING__VTQ__VALUE_NUMBER;
    case THING_INTEGER: return GRID__THING__VTQ__VALUE_INTEGER;
    case THING_BOOLEAN: return GRID__THING__VTQ__VALUE_BOOLEAN;
    case THING_STRING: return GRID__THING__VTQ__VALUE_TEXT;
    case THING_DATETIME: return GRID__THING__VTQ__VALUE_DATETIME_MS;
    case THING_LOCATION: return GRID__THING__VTQ__VALUE_LOCATION;
    case THING_JSON: return GRID__THING__VTQ__VALUE_JSON;
    case THING_BLOB: return GRID__THING__VTQ__VALUE_BLOB;
  }
  return GRID__THING__VTQ__VALUE__NOT_SET;
}

int thing_vtq_decode(const void *data, size_t len, thing_vtq_t *vtq, void **mem) {
  *mem = NULL;
  memset(vtq, 0, sizeof *vtq);
  Grid__Thing__Vtq *m = grid__thing__vtq__unpack(NULL, len, data);
  if (!m) return THING_EDECODE;
  int rc = 0;
  thing_type_t t = (thing_type_t)m->type;
  if (t < THING_NUMBER || t > THING_BLOB || m->value_case != codec_case_of(t) ||
      m->quality < GRID__THING__QUALITY__QUALITY_UNKNOWN ||
      m->quality > GRID__THING__QUALITY__UNCERTAIN) {
    rc = THING_EDECODE;
    goto out;
  }
  vtq->value.type = t;
  vtq->time_ms = m->time_ms;
  vtq->quality = (thing_quality_t)m->quality;
  const char *src = NULL;
  size_t n = 0;
  switch (t) {
    case THING_NUMBER: vtq->value.u.number = m->number; break;
    case THING_INTEGER: vtq->value.u.integer = m->integer; break;
    case THING_BOOLEAN: vtq->value.u.boolean = m->boolean; break;
    case THING_DATETIME: vtq->value.u.datetime_ms = m->datetime_ms; break;
    case THING_LOCATION:
      if (!m->location) {
        rc = THING_EDECODE;
        goto out;
      }
      vtq->value.u.location = (thing_location_t){m->location->latitude, m->location->longitude,
                                                 m->location->elevation};
      break;
    case THING_STRING: src = m->text; n = src ? strlen(src) : 0; break;
    case THING_JSON: src = m->json; n = src ? strlen(src) : 0; break;
    case THING_BLOB: src = (const char *)m->blob.data; n = m->blob.len; break;
  }
  if (t == THING_STRING || t == THING_JSON || t == THING_BLOB) {
    char *copy = malloc(n + 1);
    if (!copy) {
      rc = GRID_ENOMEM;
      goto out;
    }
    if (n) memcpy(copy, src, n);
    copy[n] = '\0';
    vtq->value.u.bytes.data = copy;
    vtq->value.u.bytes.len = n;
    *mem = copy;
  }
out:
  grid__thing__vtq__free_unpacked(m, NULL);
  return rc;
}

int thing_value_equal(const thing_value_t *a, const thing_value_t *b) {
  if (a->type != b->type) return 0;
  switch (a->type) {
    case THING_NUMBER:
      /* Bit for bit: NaN equals NaN here, as a stored value does not change. */
      return memcmp(&a->u.number, &b->u.number, sizeof a->u.number) == 0;
    case THING_INTEGER: return a->u.integer == b->u.integer;
    case THING_BOOLEAN: return a->u.boolean == b->u.boolean;
    case THING_DATETIME: return a->u.datetime_ms == b->u.datetime_ms;
    case THING_LOCATION:
      return memcmp(&a->u.location, &b->u.location, sizeof a->u.location) == 0;
    case THING_STRING: case THING_JSON: case THING_BLOB:
      return a->u.bytes.len == b->u.bytes.len &&
             (a->u.bytes.len == 0 || memcmp(a->u.bytes.data, b->u.bytes.data, a->u.bytes.len) == 0);
  }
  return 0;
}

const char *thing_strerror(int err) {
  switch (err) {
    case THING_ETYPE: return "the value's type is not the property's base type";
    case THING_EJSON: return "the JSON value does not parse";
    case THING_EFENCED: return "the fencing token is no longer the lock's: another holder has it";
    case THING_ENOTHELD: return "the lock is not held (its lease ran out, or another holds it)";
    case THING_ELOCKED: return "another holder has the lock";
    case THING_EDECODE: return "a stored value is not a VTQ this reader knows";
    case THING_ENAME: return "a Thing name must be 1 or more bytes without '{' or '}'";
    case THING_ECONTENDED: return "the write lost to other writers too many times in a row";
    default: return grid_strerror(err);
  }
}
