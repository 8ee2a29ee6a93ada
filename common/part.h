/*
 * part: which partition a key belongs to.
 *
 * partition = XXH3_64(affinity key) mod P, where the affinity key is the part
 * between the first '{' and the next '}' when that part is not empty (as
 * Redis hash tags), and the whole key otherwise. All properties of one Thing,
 * keyed "{thing}.prop", so land in one partition.
 */
#ifndef GRID_PART_H
#define GRID_PART_H

#include <stddef.h>
#include <stdint.h>

/* Sets *aff / *aff_len to the bytes that are hashed for placement. */
void part_affinity(const void *key, size_t key_len, const void **aff,
                   size_t *aff_len);
uint64_t part_hash(const void *key, size_t key_len);
/* A change stream's filter: whether key starts with prefix (NULL: any),
 * and, when ntags > 0, whether its affinity part is one of tags (affinity
 * parts already taken with part_affinity). */
int part_key_passes(const void *key, size_t key_len, const void *prefix, size_t prefix_len,
                    const void *const *tags, const size_t *tag_lens, size_t ntags);
uint32_t part_of(const void *key, size_t key_len, uint32_t partitions);

#endif
