#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct arena_chunk {
  arena_chunk_t *next;
  size_t used;
  size_t cap;
  _Alignas(16) unsigned char data[];
};

static void *arena_pb_alloc(void *ctx, size_t n) { return arena_alloc(ctx, n); }
static void arena_pb_free(void *ctx, void *p) { (void)ctx; (void)p; }

void arena_init(arena_t *a, size_t chunk_bytes) {
  a->head = NULL;
  a->chunk_bytes = chunk_bytes ? chunk_bytes : 4096;
  a->pb.alloc = arena_pb_alloc;
  a->pb.free = arena_pb_free;
  a->pb.allocator_data = a;
}

static arena_chunk_t *arena_chunk_new(size_t cap) {
  arena_chunk_t *c = malloc(sizeof *c + cap);
  if (!c) return NULL;
  c->next = NULL;
  c->used = 0;
  c->cap = cap;
  return c;
}

void *arena_alloc(arena_t *a, size_t n) {
  if (n > SIZE_MAX - sizeof(arena_chunk_t) - 16) return NULL; /* would wrap */
  n = (n + 15) & ~(size_t)15;
  arena_chunk_t *c = a->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > a->chunk_bytes ? n : a->chunk_bytes;
    arena_chunk_t *nc = arena_chunk_new(cap);
    if (!nc) return NULL;
    if (c && n > a->chunk_bytes) {
      /* An oversized block goes behind the current chunk, so the space left
       * in the current chunk stays usable. */
      nc->next = c->next;
      c->next = nc;
      nc->used = n;
      return nc->data;
    }
    nc->next = c;
    a->head = c = nc;
  }
  void *p = c->data + c->used;
  c->used += n;
  return p;
}

void *arena_dup(arena_t *a, const void *p, size_t n) {
  void *d = arena_alloc(a, n ? n : 1);
  if (d && n) memcpy(d, p, n);
  return d;
}

void arena_reset(arena_t *a) {
  arena_chunk_t *keep = NULL;
  arena_chunk_t *c = a->head;
  while (c) {
    arena_chunk_t *next = c->next;
    if (!keep && c->cap == a->chunk_bytes) {
      keep = c;
    } else {
      free(c);
    }
    c = next;
  }
  if (keep) {
    keep->next = NULL;
    keep->used = 0;
  }
  a->head = keep;
}

void arena_close(arena_t *a) {
  arena_chunk_t *c = a->head;
  while (c) {
    arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
}
