/* A device message for pump-7: three properties written as one step, only
 * where newer, then the whole Thing read back in one request. Run with no
 * argument for an embedded node, or with grid://host:port. */
#include <stdio.h>
#include <time.h>

#include "thing.h"

int main(int argc, char **argv) {
  grid_t *g;
  thing_store_t *ts;
  if (grid_open(argc > 1 ? argv[1] : "embedded:", NULL, &g) != 0) return 1;
  if (thing_open(g, NULL, &ts) != 0) return 1;

  int64_t now = (int64_t)time(NULL) * 1000;
  thing_update_t msg[] = {
      {.prop = "temperature", .vtq = thing_vtq_number(71.5, now, THING_GOOD)},
      {.prop = "rpm", .vtq = thing_vtq_integer(1480, now, THING_GOOD)},
      {.prop = "state", .vtq = thing_vtq_string("running", now, THING_GOOD)},
  };
  int rc = thing_write(ts, "pump-7", msg, 3, THING_IF_NEWER, NULL);
  if (rc != 0) {
    fprintf(stderr, "write: %s\n", thing_strerror(rc));
    return 1;
  }

  thing_prop_t *props;
  size_t n;
  if (thing_read_all(ts, "pump-7", &props, &n) != 0) return 1;
  for (size_t i = 0; i < n; i++)
    printf("%s type=%d time=%lld quality=%d\n", props[i].name, (int)props[i].vtq.value.type,
           (long long)props[i].vtq.time_ms, (int)props[i].vtq.quality);
  thing_props_free(props, n);

  thing_close(ts);
  grid_close(g);
  return 0;
}
