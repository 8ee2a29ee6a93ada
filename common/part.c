#include "part.h"

#include <string.h>
#include <xxhash.h>

#include "grid_types.h"
#include "log.h"

void part_affinity(const void *key, size_t key_len, const void **aff,
                   size_t *aff_len) {
  const unsigned char *k = key;
  const unsigned char *open = key_len ? memchr(k, '{', key_len) : NULL;
  if (open) {
    size_t rest = key_len - (size_t)(open - k) - 1;
    const unsigned char *close = rest ? memchr(open + 1, '}', rest) : NULL;
    if (close && close > open + 1) {
      *aff = open + 1;
      *aff_len = (size_t)(close - open - 1);
      return;
    }
  }
  *aff = key;
  *aff_len = key_len;
}

uint64_t part_hash(const void *key, size_t key_len) {
  const void *aff;
  size_t aff_len;
  part_affinity(key, key_len, &aff, &aff_len);
  return XXH3_64bits(aff, aff_len);
}

uint32_t part_of(const void *key, size_t key_len, uint32_t partitions) {
  GRID_ASSERT(partitions > 0);
  return (uint32_t)(part_hash(key, key_len) % partitions);
}

int part_key_passes(const void *key, size_t key_len, const void *prefix, size_t prefix_len,
                    const void *const *tags, const size_t *tag_lens, size_t ntags) {
  if (prefix && (key_len < prefix_len || memcmp(key, prefix, prefix_len) != 0)) return 0;
  if (!ntags) return 1;
  const void *tag;
  size_t tag_len;
  part_affinity(key, key_len, &tag, &tag_len);
  for (size_t i = 0; i < ntags; i++)
    if (tag_lens[i] == tag_len && memcmp(tags[i], tag, tag_len) == 0) return 1;
  return 0;
}
