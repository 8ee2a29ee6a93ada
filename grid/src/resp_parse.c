#include "resp_parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "num.h"

/* The first growth of the argument arrays: most commands have fewer. */
#define RESP_PARSE_ARGV_FIRST 16

void resp_parser_init(resp_parser_t *p) { memset(p, 0, sizeof *p); }

void resp_parser_close(resp_parser_t *p) {
  free(p->spans);
  free(p->argv);
  free(p->words);
  memset(p, 0, sizeof *p);
}

/* Forgets the command begun; what was grown is kept for the next one. */
static void resp_parser_restart(resp_parser_t *p) {
  p->mb_count = p->mb_got = 0;
  p->mb_pos = 0;
}

static resp_parse_result_t resp_parse_fail(resp_parser_t *p, resp_command_t *out,
                                           const char *why) {
  resp_parser_restart(p);
  out->why = why;
  return RESP_PARSE_ERROR;
}

int resp_parse_i64(const char *p, size_t len, int64_t *out) { return num_parse_i64(p, len, out); }

/* Room for n arguments in p->argv. */
static int resp_parse_argv_room(resp_parser_t *p, size_t n) {
  if (p->argv_cap >= n) return 0;
  size_t cap = n > RESP_PARSE_ARGV_FIRST ? n : RESP_PARSE_ARGV_FIRST;
  resp_arg_t *a = realloc(p->argv, cap * sizeof *a);
  if (!a) return -1;
  p->argv = a;
  p->argv_cap = cap;
  return 0;
}

/* Finds "\r\n" in p[0..len); returns its offset or -1. */
static long long resp_parse_line_end(const char *p, size_t len) {
  const char *cr = len ? memchr(p, '\r', len) : NULL;
  while (cr && (size_t)(cr - p) + 1 < len) {
    if (cr[1] == '\n') return cr - p;
    cr = memchr(cr + 1, '\r', len - (size_t)(cr + 1 - p));
  }
  return -1;
}

/* ---- inline commands ------------------------------------------------------ */

/* One word of an inline line from p[*i], unquoted into out[*o]. -1 when a
 * quote is not closed, or a closing quote is followed by more than a space
 * (as sdssplitargs). */
static int resp_split_word(const char *p, size_t len, size_t *i, char *out, size_t *o) {
  int inq = 0, insq = 0;
  while (*i < len) {
    char ch = p[*i];
    if (inq) {
      if (ch == '\\' && *i + 1 < len) {
        char e = p[*i + 1];
        out[(*o)++] = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
        *i += 2;
        continue;
      }
      if (ch == '"') {
        if (*i + 1 < len && !isspace((unsigned char)p[*i + 1])) return -1;
        (*i)++;
        return 0;
      }
    } else if (insq) {
      if (ch == '\\' && *i + 1 < len && p[*i + 1] == '\'') {
        out[(*o)++] = '\'';
        *i += 2;
        continue;
      }
      if (ch == '\'') {
        if (*i + 1 < len && !isspace((unsigned char)p[*i + 1])) return -1;
        (*i)++;
        return 0;
      }
    } else {
      if (isspace((unsigned char)ch)) return 0;
      if (ch == '"' || ch == '\'') {
        inq = ch == '"';
        insq = ch == '\'';
        (*i)++;
        continue;
      }
    }
    out[(*o)++] = ch;
    (*i)++;
  }
  return inq || insq ? -1 : 0;
}

/* Splits an inline line into out (the words point into it; out has len
 * bytes). Every word is counted in *argc, but only the first argv_room are
 * stored: a line with too many words is refused by its count, and the
 * array need not grow for it. -1: unbalanced quotes. */
static int resp_split_inline(const char *p, size_t len, char *out, resp_arg_t *argv,
                             size_t argv_room, size_t *argc) {
  size_t i = 0, o = 0, n = 0;
  for (;;) {
    while (i < len && isspace((unsigned char)p[i])) i++;
    if (i >= len) break;
    size_t start = o;
    if (resp_split_word(p, len, &i, out, &o) != 0) return -1;
    if (n < argv_room) argv[n] = (resp_arg_t){out + start, o - start};
    n++;
  }
  *argc = n;
  return 0;
}

static resp_parse_result_t resp_parse_inline(resp_parser_t *p, const char *buf, size_t len,
                                             const resp_parse_limits_t *lim,
                                             resp_command_t *out) {
  size_t from = p->mb_pos < len ? p->mb_pos : len;
  const char *nl = memchr(buf + from, '\n', len - from);
  if (!nl) {
    if (len > lim->inline_bytes_max)
      return resp_parse_fail(p, out, "Protocol error: too big inline request");
    p->mb_pos = len; /* not searched again */
    return RESP_PARSE_MORE;
  }
  p->mb_pos = 0;
  size_t line = (size_t)(nl - buf);
  size_t end = line > 0 && buf[line - 1] == '\r' ? line - 1 : line;
  if (p->words_cap < end + 1) {
    char *w = realloc(p->words, end + 1);
    if (!w) return resp_parse_fail(p, out, "out of memory");
    p->words = w;
    p->words_cap = end + 1;
  }
  /* Words are at least two bytes apart (one and a space), or two quotes. */
  size_t room = end / 2 + 2;
  if (lim->args_max >= 0 && room > (uint64_t)lim->args_max) room = (size_t)lim->args_max;
  if (resp_parse_argv_room(p, room) != 0) return resp_parse_fail(p, out, "out of memory");
  size_t argc;
  if (resp_split_inline(buf, end, p->words, p->argv, room, &argc) != 0)
    return resp_parse_fail(p, out, "Protocol error: unbalanced quotes in request");
  if ((uint64_t)argc > (uint64_t)lim->args_max)
    return resp_parse_fail(p, out, "Protocol error: invalid multibulk length");
  out->argv = p->argv;
  out->argc = (int)argc;
  out->used = line + 1;
  return RESP_PARSE_DONE;
}

/* ---- multibulk commands --------------------------------------------------- */

/* The "*<count>\r\n" line. RESP_PARSE_MORE with p->mb_count set when the
 * arguments follow; DONE for an empty command. */
static resp_parse_result_t resp_parse_count(resp_parser_t *p, const char *buf, size_t len,
                                            const resp_parse_limits_t *lim,
                                            resp_command_t *out) {
  long long le = resp_parse_line_end(buf, len);
  if (le < 0) {
    if (len > lim->inline_bytes_max)
      return resp_parse_fail(p, out, "Protocol error: too big mbulk count string");
    return RESP_PARSE_MORE;
  }
  int64_t count;
  if (resp_parse_i64(buf + 1, (size_t)le - 1, &count) != 0 || count > lim->args_max)
    return resp_parse_fail(p, out, "Protocol error: invalid multibulk length");
  if (count <= 0) { /* an empty command: nothing to run */
    out->argc = 0;
    out->used = (size_t)le + 2;
    return RESP_PARSE_DONE;
  }
  p->mb_count = count;
  p->mb_got = 0;
  p->mb_pos = (size_t)le + 2;
  return RESP_PARSE_MORE;
}

/* One "$<len>\r\n<bytes>\r\n" at p->mb_pos. DONE when it was whole (and
 * p->mb_pos moved past it), MORE when its bytes have not all come. */
static resp_parse_result_t resp_parse_bulk(resp_parser_t *p, const char *buf, size_t len,
                                           const resp_parse_limits_t *lim,
                                           resp_command_t *out) {
  size_t pos = p->mb_pos;
  size_t cmd_max = lim->command_bytes_max;
  if (buf[pos] != '$') {
    snprintf(p->why, sizeof p->why, "Protocol error: expected '$', got '%c'", buf[pos]);
    return resp_parse_fail(p, out, p->why);
  }
  long long e = resp_parse_line_end(buf + pos, len - pos);
  if (e < 0) {
    if (len - pos > lim->inline_bytes_max)
      return resp_parse_fail(p, out, "Protocol error: too big bulk count string");
    return RESP_PARSE_MORE;
  }
  int64_t blen;
  if (resp_parse_i64(buf + pos + 1, (size_t)e - 1, &blen) != 0 || blen < 0 ||
      (uint64_t)blen > cmd_max)
    return resp_parse_fail(p, out, "Protocol error: invalid bulk length");
  size_t body = pos + (size_t)e + 2;
  if (body + (size_t)blen + 2 > cmd_max) {
    /* Refused as soon as it is announced, before its bytes arrive. */
    return resp_parse_fail(p, out,
                           "Protocol error: command longer than resp_command_bytes_max");
  }
  if (len - body < (size_t)blen + 2) return RESP_PARSE_MORE; /* wait for the bytes */
  if ((size_t)p->mb_got == p->spans_cap) {
    size_t cap = p->spans_cap ? p->spans_cap * 2 : RESP_PARSE_ARGV_FIRST;
    resp_span_t *sp = realloc(p->spans, cap * sizeof *sp);
    if (!sp) return resp_parse_fail(p, out, "out of memory");
    p->spans = sp;
    p->spans_cap = cap;
  }
  p->spans[p->mb_got++] = (resp_span_t){body, (size_t)blen};
  p->mb_pos = body + (size_t)blen + 2;
  return RESP_PARSE_DONE;
}

static resp_parse_result_t resp_parse_multibulk(resp_parser_t *p, const char *buf, size_t len,
                                                const resp_parse_limits_t *lim,
                                                resp_command_t *out) {
  if (p->mb_count == 0) {
    resp_parse_result_t r = resp_parse_count(p, buf, len, lim, out);
    if (r != RESP_PARSE_MORE || p->mb_count == 0) return r;
  }
  while (p->mb_got < p->mb_count) {
    if (p->mb_pos >= len) return RESP_PARSE_MORE;
    resp_parse_result_t r = resp_parse_bulk(p, buf, len, lim, out);
    if (r != RESP_PARSE_DONE) return r;
  }
  if (resp_parse_argv_room(p, (size_t)p->mb_count) != 0)
    return resp_parse_fail(p, out, "out of memory");
  for (int64_t i = 0; i < p->mb_count; i++)
    p->argv[i] = (resp_arg_t){buf + p->spans[i].off, p->spans[i].len};
  out->argv = p->argv;
  out->argc = (int)p->mb_count;
  out->used = p->mb_pos;
  resp_parser_restart(p);
  return RESP_PARSE_DONE;
}

resp_parse_result_t resp_parse_next(resp_parser_t *p, const char *buf, size_t len,
                                    const resp_parse_limits_t *limits, resp_command_t *out) {
  *out = (resp_command_t){NULL, 0, 0, NULL};
  if (len == 0) return RESP_PARSE_MORE;
  if (buf[0] != '*') return resp_parse_inline(p, buf, len, limits, out);
  return resp_parse_multibulk(p, buf, len, limits, out);
}

/* ---- the pipeline bound ----------------------------------------------------- */

int resp_pipeline_has_room(resp_pipeline_t *p, size_t max) {
  if (p->full && p->waiting <= max / 2) p->full = 0;
  else if (!p->full && p->waiting >= max) p->full = 1;
  return !p->full;
}
