/*
 * log: structured log lines (logfmt) on stderr, and GRID_ASSERT.
 *
 *   ts=2026-11-26T15:00:00.123Z level=info mod=net msg="listening" addr=...
 *
 * The message and fields are given as one printf format; values that may
 * hold spaces should be quoted by the caller ("name=\"%s\"").
 */
#ifndef GRID_LOG_H
#define GRID_LOG_H

#include <stdarg.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Lines below the level are dropped. Thread-safe. */
void log_set_level(log_level_t level);
/* Parses "debug" / "info" / "warn" / "error"; -1 when unknown. */
int log_level_parse(const char *s);
int log_enabled(log_level_t level);
void log_write(log_level_t level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_D(mod, ...) \
  do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, mod, __VA_ARGS__); } while (0)
#define LOG_I(mod, ...) log_write(LOG_INFO, mod, __VA_ARGS__)
#define LOG_W(mod, ...) log_write(LOG_WARN, mod, __VA_ARGS__)
#define LOG_E(mod, ...) log_write(LOG_ERROR, mod, __VA_ARGS__)

/* Stays on in release builds: a broken invariant crashes with file:line. */
void log_assert_failed(const char *expr, const char *file, int line)
    __attribute__((noreturn));
#define GRID_ASSERT(e) \
  ((e) ? (void)0 : log_assert_failed(#e, __FILE__, __LINE__))

#endif
