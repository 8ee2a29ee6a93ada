#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int log_level_now = LOG_INFO;
static const char *const log_level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(log_level_t level) { atomic_store(&log_level_now, (int)level); }

int log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, log_level_names[i]) == 0) return i;
  return -1;
}

int log_enabled(log_level_t level) {
  return (int)level >= atomic_load_explicit(&log_level_now, memory_order_relaxed);
}

void log_write(log_level_t level, const char *mod, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  /* One buffer and one fputs per line, so that lines of different threads
   * never interleave. */
  char line[2048];
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s msg=",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                   log_level_names[level], mod);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line)
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line - 1) n = (int)sizeof line - 2;
  line[n] = '\n';
  line[n + 1] = '\0';
  fputs(line, stderr);
}

void log_assert_failed(const char *expr, const char *file, int line) {
  log_write(LOG_ERROR, "assert", "\"assertion failed\" expr=\"%s\" at=%s:%d",
            expr, file, line);
  fflush(stderr);
  abort();
}
