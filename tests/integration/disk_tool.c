/*
 * disk_tool: changes a stopped node's data directory the way an operator's
 * mistake or another grid version would, for test_persist.sh:
 *   disk_tool DIR set KEY VALUE   sets a meta key (grid.format, grid.cluster)
 */
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 5 || strcmp(argv[2], "set") != 0) {
    fprintf(stderr, "usage: disk_tool DIR set KEY VALUE\n");
    return 2;
  }
  rocksdb_options_t *o = rocksdb_options_create();
  char *err = NULL;
  size_t n = 0;
  char **names = rocksdb_list_column_families(o, argv[1], &n, &err);
  if (err) {
    fprintf(stderr, "disk_tool: %s\n", err);
    return 1;
  }
  const rocksdb_options_t **opts = calloc(n, sizeof *opts);
  rocksdb_column_family_handle_t **h = calloc(n, sizeof *h);
  for (size_t i = 0; i < n; i++) opts[i] = o;
  rocksdb_t *db = rocksdb_open_column_families(o, argv[1], (int)n, (const char *const *)names,
                                               opts, h, &err);
  if (err) {
    fprintf(stderr, "disk_tool: %s\n", err);
    return 1;
  }
  rocksdb_writeoptions_t *w = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(w, 1);
  rocksdb_put(db, w, argv[3], strlen(argv[3]), argv[4], strlen(argv[4]), &err);
  for (size_t i = 0; i < n; i++) rocksdb_column_family_handle_destroy(h[i]);
  rocksdb_close(db);
  rocksdb_list_column_families_destroy(names, n);
  rocksdb_writeoptions_destroy(w);
  rocksdb_options_destroy(o);
  free(opts);
  free(h);
  if (err) {
    fprintf(stderr, "disk_tool: %s\n", err);
    return 1;
  }
  return 0;
}
