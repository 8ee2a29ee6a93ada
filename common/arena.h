/*
 * arena: per-request memory, freed all at once when the request ends (nginx
 * pools). It also serves as the protobuf-c allocator while a request is
 * decoded, so decoding allocates nothing that must be freed one by one.
 */
#ifndef GRID_ARENA_H
#define GRID_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct arena_chunk arena_chunk_t;

typedef struct arena {
  arena_chunk_t *head;     /* newest chunk first */
  size_t chunk_bytes;      /* size of a normal chunk */
  ProtobufCAllocator pb;   /* protobuf-c allocator drawing from this arena */
} arena_t;

void arena_init(arena_t *a, size_t chunk_bytes);
/* Frees everything but the first normal chunk, which is kept for reuse. */
void arena_reset(arena_t *a);
/* Frees everything. */
void arena_close(arena_t *a);
/* 16-byte aligned; NULL only when malloc fails. Freed by reset/close. */
void *arena_alloc(arena_t *a, size_t n);
void *arena_dup(arena_t *a, const void *p, size_t n);

#endif
