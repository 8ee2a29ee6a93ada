/*
 * resp_parse: the request side of the Redis protocol (RESP2) as pure
 * functions over bytes: a command's arguments out of a buffer, and the
 * bound on commands parsed but not answered yet. Nothing here knows a
 * connection, a loop or the store, so tests/unit/test_resp_parse.c drives
 * it alone; resp.c is the shell that feeds it a connection's read buffer.
 *
 * A request comes in one of two forms, as Redis reads them:
 *
 *   multibulk  *<count>\r\n  then <count> times  $<len>\r\n<len bytes>\r\n
 *              (the bytes are anything, \0 and \r\n included; a count of
 *              0 or less is an empty command, skipped)
 *   inline     words up to \n (a \r before it is dropped), split as
 *              Redis's sdssplitargs: spaces separate, "double" quotes take
 *              \n \r \t and \<any> escapes, 'single' quotes take \' only;
 *              a blank line is an empty command
 *
 * A command is looked at once however many reads it arrives in: the parser
 * keeps its place between calls as offsets from the command's first byte,
 * so the caller's buffer may move or grow in between, as long as it starts
 * at that byte on every call. Every input is bounded by limits the caller
 * passes and refused as soon as it is seen to pass one, with the words
 * Redis uses for the same case (a bulk longer than the command may be is
 * refused when announced, before its bytes arrive).
 */
#ifndef GRID_RESP_PARSE_H
#define GRID_RESP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* An inline command without its line's end, or a count or length line
 * without its CRLF, at most: Redis's PROTO_INLINE_MAX_SIZE. */
#define RESP_PARSE_INLINE_BYTES_MAX (64 * 1024)

/* One argument: a byte string, not NUL-terminated. */
typedef struct resp_arg {
  const char *p;
  size_t len;
} resp_arg_t;

typedef struct resp_parse_limits {
  int64_t args_max;         /* arguments of one command (resp_args_max) */
  size_t command_bytes_max; /* a multibulk command's bytes from its '*' to
                               its last CRLF (resp_command_bytes_max) */
  size_t inline_bytes_max;  /* RESP_PARSE_INLINE_BYTES_MAX unless a test
                               wants a smaller one */
} resp_parse_limits_t;

/* Where a complete argument of an unfinished command lies, as offsets from
 * the command's first byte (pointers would not survive the buffer moving). */
typedef struct resp_span {
  size_t off, len;
} resp_span_t;

/* A parser's state; the caller owns the struct (resp_parser_init, then
 * resp_parser_close to free what it grew). */
typedef struct resp_parser {
  int64_t mb_count;      /* arguments announced; 0: no multibulk begun */
  int64_t mb_got;        /* arguments complete */
  size_t mb_pos;         /* the next byte to look at; inline: bytes already
                            searched for the line's end */
  resp_span_t *spans;    /* the complete arguments of the command begun */
  size_t spans_cap;
  resp_arg_t *argv;      /* the arguments handed out, kept for the next */
  size_t argv_cap;
  char *words;           /* an inline command's words, unquoted */
  size_t words_cap;
  char why[64];          /* an error's words when they quote a byte */
} resp_parser_t;

typedef enum {
  RESP_PARSE_MORE = 0,  /* no whole command yet: call again with more */
  RESP_PARSE_DONE = 1,  /* one command in *out */
  RESP_PARSE_ERROR = 2, /* a protocol error: out->why; the connection ends */
} resp_parse_result_t;

typedef struct resp_command {
  resp_arg_t *argv; /* the parser's array; a multibulk's arguments point
                       into buf, an inline one's into the parser: both are
                       valid until the next call or resp_parser_close */
  int argc;         /* 0: an empty command (*0, a blank line), not run */
  size_t used;      /* bytes of buf the command took */
  const char *why;  /* on RESP_PARSE_ERROR: static, or in the parser */
} resp_command_t;

void resp_parser_init(resp_parser_t *p);
/* Frees what the parser grew; it may be initialized again. */
void resp_parser_close(resp_parser_t *p);

/* One command from buf[0..len), which begins at the first byte of the
 * command the last call left unfinished (or of a new one). On
 * RESP_PARSE_DONE the caller drops out->used bytes before the next call.
 * After RESP_PARSE_ERROR the parser starts afresh; its input is not
 * RESP any more, so the caller should not feed it the rest. Out of memory
 * is an error too ("out of memory"). Nothing is kept of buf. */
resp_parse_result_t resp_parse_next(resp_parser_t *p, const char *buf, size_t len,
                                    const resp_parse_limits_t *limits, resp_command_t *out);

/* A whole signed 64-bit decimal, as Redis's string2ll: no sign '+', no
 * spaces, no leading zero. 0, or -1 when the text is not one. */
int resp_parse_i64(const char *p, size_t len, int64_t *out);

/*
 * The pipeline bound: a client may send commands without reading replies,
 * and in a cluster each one waits for its reply in a slot of its own. At
 * resp_pipeline_max such commands the connection stops being parsed (its
 * commands stay in the read buffer), and goes on once half of those
 * replies are written, as output_bytes_max does for reply bytes: one more
 * command per written reply would look at the buffer again for every one.
 */
typedef struct resp_pipeline {
  size_t waiting; /* commands whose reply is not written yet */
  int full;       /* parsing stopped until waiting drains to half */
} resp_pipeline_t;

/* Whether one more command may be parsed, with at most max waiting.
 * Updates p->full; call again after writing replies. */
int resp_pipeline_has_room(resp_pipeline_t *p, size_t max);

#endif
