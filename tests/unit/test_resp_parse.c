/*
 * test_resp_parse: the RESP request parser (grid/src/resp_parse.h) over
 * plain bytes: multibulk and inline commands whole, cut at every byte and
 * pipelined; bulk strings empty or binary; each limit at its bound and one
 * past it; malformed input with Redis's words; and the pipeline bound that
 * stops parsing while too many replies are unwritten.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "resp_parse.h"

#define BIG_ARGS_MAX (1024 * 1024)
#define BIG_COMMAND_BYTES_MAX (64u << 20)

static const resp_parse_limits_t big_limits = {BIG_ARGS_MAX, BIG_COMMAND_BYTES_MAX,
                                               RESP_PARSE_INLINE_BYTES_MAX};

/* An argument equals the n bytes at want (which may hold \0). */
static void check_arg(const resp_command_t *cmd, int i, const char *want, size_t n) {
  CHECK(i < cmd->argc);
  CHECK_EQ(cmd->argv[i].len, n);
  CHECK(n == 0 || memcmp(cmd->argv[i].p, want, n) == 0);
}
#define CHECK_ARG(cmd, i, lit) check_arg(cmd, i, lit, sizeof lit - 1)

/* Parses text (len bytes) whole with big_limits: one command expected. */
static resp_parse_result_t parse_once(resp_parser_t *p, const char *text, size_t len,
                                      const resp_parse_limits_t *lim, resp_command_t *cmd) {
  return resp_parse_next(p, text, len, lim ? lim : &big_limits, cmd);
}

static void test_whole_multibulk(void) {
  resp_parser_t p;
  resp_parser_init(&p);
  static const char in[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
  resp_command_t cmd;
  CHECK_EQ(parse_once(&p, in, sizeof in - 1, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 3);
  CHECK_EQ(cmd.used, sizeof in - 1);
  CHECK_ARG(&cmd, 0, "SET");
  CHECK_ARG(&cmd, 1, "k");
  CHECK_ARG(&cmd, 2, "hello");
  /* A multibulk's arguments are not copied: they point into the input. */
  CHECK(cmd.argv[2].p == in + sizeof in - 8);
  resp_parser_close(&p);
}

/* Feeds in[0..len) to a parser the way a connection does: bytes arrive a
 * few at a time (step), each call sees the unconsumed bytes from a freshly
 * allocated copy (the read buffer may move between reads), and a command
 * is dropped once parsed. Returns the commands' arguments joined as
 * "a|b|c;" for comparison, and fails the test on an error. */
static char *feed(const char *in, size_t len, size_t step, const resp_parse_limits_t *lim) {
  resp_parser_t p;
  resp_parser_init(&p);
  size_t out_cap = 4 * len + 16, out_len = 0;
  char *out = malloc(out_cap);
  CHECK(out);
  size_t start = 0, have = 0;
  while (have < len || start < have) {
    size_t more = step;
    if (more > len - have) more = len - have;
    have += more;
    for (;;) {
      size_t n = have - start;
      char *copy = malloc(n ? n : 1);
      CHECK(copy);
      memcpy(copy, in + start, n);
      resp_command_t cmd;
      resp_parse_result_t r = resp_parse_next(&p, copy, n, lim ? lim : &big_limits, &cmd);
      CHECK(r != RESP_PARSE_ERROR);
      if (r == RESP_PARSE_MORE) {
        free(copy);
        break;
      }
      CHECK(cmd.used > 0 && cmd.used <= n);
      for (int i = 0; i < cmd.argc; i++) {
        CHECK(out_len + cmd.argv[i].len + 2 < out_cap);
        memcpy(out + out_len, cmd.argv[i].p, cmd.argv[i].len);
        out_len += cmd.argv[i].len;
        out[out_len++] = i + 1 < cmd.argc ? '|' : ';';
      }
      if (cmd.argc == 0) out[out_len++] = ';';
      free(copy);
      start += cmd.used;
    }
    if (have == len && start < have) CHECK(!"input ends inside a command");
  }
  out[out_len] = '\0';
  resp_parser_close(&p);
  return out;
}

static void test_split_at_every_byte(void) {
  /* Multibulk (with a CRLF and a '*' inside a bulk), inline, an empty
   * command, and a bulk longer than one read. */
  static const char in[] =
      "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na\r\n*$b\r\n"
      "GET \"x y\" 'z'\r\n"
      "*0\r\n"
      "*2\r\n$4\r\nECHO\r\n$40\r\n0123456789012345678901234567890123456789\r\n";
  const char *want =
      "SET|k|a\r\n*$b;GET|x y|z;;ECHO|0123456789012345678901234567890123456789;";
  char *whole = feed(in, sizeof in - 1, sizeof in, NULL);
  CHECK_STR(whole, want);
  free(whole);
  for (size_t step = 1; step < sizeof in; step++) {
    char *got = feed(in, sizeof in - 1, step, NULL);
    if (strcmp(got, want) != 0) fprintf(stderr, "step %zu\n", step);
    CHECK_STR(got, want);
    free(got);
  }
  /* One command cut in two at every byte: the first part is not enough,
   * the whole is one command, whatever the cut. */
  static const char one[] = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
  for (size_t cut = 1; cut < sizeof one - 1; cut++) {
    resp_parser_t p;
    resp_parser_init(&p);
    resp_command_t cmd;
    CHECK_EQ(resp_parse_next(&p, one, cut, &big_limits, &cmd), RESP_PARSE_MORE);
    CHECK_EQ(resp_parse_next(&p, one, sizeof one - 1, &big_limits, &cmd), RESP_PARSE_DONE);
    CHECK_EQ(cmd.argc, 2);
    CHECK_EQ(cmd.used, sizeof one - 1);
    CHECK_ARG(&cmd, 1, "key");
    resp_parser_close(&p);
  }
}

static void test_inline(void) {
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  static const char in[] = "  set  \"a b\\n\\\"c\" 'it\\'s'  x\r\nrest";
  CHECK_EQ(parse_once(&p, in, sizeof in - 1, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 4);
  CHECK_EQ(cmd.used, sizeof in - 1 - 4); /* up to and with the \n */
  CHECK_ARG(&cmd, 0, "set");
  CHECK_ARG(&cmd, 1, "a b\n\"c");
  CHECK_ARG(&cmd, 2, "it's");
  CHECK_ARG(&cmd, 3, "x");
  /* A bare \n ends a line too; an empty quoted word is a word. */
  static const char lf[] = "ECHO \"\"\n";
  CHECK_EQ(parse_once(&p, lf, sizeof lf - 1, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 2);
  CHECK_ARG(&cmd, 1, "");
  /* A blank line is an empty command, consumed. */
  CHECK_EQ(parse_once(&p, "\r\nPING\r\n", 8, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 0);
  CHECK_EQ(cmd.used, 2);
  /* No line end yet. */
  CHECK_EQ(parse_once(&p, "PING", 4, NULL, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(parse_once(&p, "PING\r", 5, NULL, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(parse_once(&p, "PING\r\n", 6, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 1);
  CHECK_ARG(&cmd, 0, "PING");
  resp_parser_close(&p);
}

static void test_pipeline(void) {
  resp_parser_t p;
  resp_parser_init(&p);
  static const char in[] = "*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n*1\r\n$3";
  size_t off = 0, len = sizeof in - 1;
  resp_command_t cmd;
  CHECK_EQ(parse_once(&p, in + off, len - off, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 1);
  CHECK_EQ(cmd.used, 14);
  off += cmd.used;
  CHECK_EQ(parse_once(&p, in + off, len - off, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 1);
  CHECK_ARG(&cmd, 0, "PING");
  CHECK_EQ(cmd.used, 6);
  off += cmd.used;
  CHECK_EQ(parse_once(&p, in + off, len - off, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 2);
  CHECK_ARG(&cmd, 1, "hi");
  off += cmd.used;
  /* The last command has only begun. */
  CHECK_EQ(parse_once(&p, in + off, len - off, NULL, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(cmd.used, 0);
  resp_parser_close(&p);
}

static void test_empty_and_binary_bulks(void) {
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  static const char empty[] = "*3\r\n$3\r\nSET\r\n$0\r\n\r\n$0\r\n\r\n";
  CHECK_EQ(parse_once(&p, empty, sizeof empty - 1, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 3);
  CHECK_ARG(&cmd, 1, "");
  CHECK_ARG(&cmd, 2, "");
  CHECK_EQ(cmd.used, sizeof empty - 1);
  /* \0, CR, LF, '*' and '$' inside a bulk are bytes like any other. */
  static const char bin[] = "*2\r\n$4\r\nECHO\r\n$9\r\na\0\r\n*1\r\n$\r\n";
  CHECK_EQ(parse_once(&p, bin, sizeof bin - 1, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 2);
  check_arg(&cmd, 1, "a\0\r\n*1\r\n$", 9);
  CHECK_EQ(cmd.used, sizeof bin - 1);
  resp_parser_close(&p);
}

/* A parse that must fail with exactly these words. */
static void check_error(const char *in, size_t len, const resp_parse_limits_t *lim,
                        const char *why) {
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  CHECK_EQ(resp_parse_next(&p, in, len, lim ? lim : &big_limits, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, why);
  /* The parser starts afresh after an error. */
  CHECK_EQ(resp_parse_next(&p, "PING\r\n", 6, &big_limits, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 1);
  resp_parser_close(&p);
}
#define CHECK_ERROR(lit, lim, why) check_error(lit, sizeof lit - 1, lim, why)

static void test_args_max(void) {
  resp_parse_limits_t lim = big_limits;
  lim.args_max = 3;
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  static const char three[] = "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
  CHECK_EQ(parse_once(&p, three, sizeof three - 1, &lim, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 3);
  CHECK_EQ(parse_once(&p, "a b c\r\n", 7, &lim, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 3);
  resp_parser_close(&p);
  /* The count is refused when read, before any argument arrives. */
  CHECK_ERROR("*4\r\n", &lim, "Protocol error: invalid multibulk length");
  CHECK_ERROR("a b c d\r\n", &lim, "Protocol error: invalid multibulk length");
  /* Words past the bound are counted, not stored: 17 words against a
   * bound of 16 (the argument array's first size) touch no 17th slot. */
  lim.args_max = 16;
  resp_parser_init(&p);
  static const char sixteen[] = "a b c d e f g h i j k l m n o p\r\n";
  CHECK_EQ(parse_once(&p, sixteen, sizeof sixteen - 1, &lim, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 16);
  CHECK_ARG(&cmd, 15, "p");
  static const char seventeen[] = "a b c d e f g h i j k l m n o p q\r\n";
  CHECK_EQ(parse_once(&p, seventeen, sizeof seventeen - 1, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: invalid multibulk length");
  resp_parser_close(&p);
}

/* "*1\r\n$<n>\r\n<n x 'v'>\r\n": one argument of n bytes; the whole
 * command's length in *total. */
static char *one_bulk(size_t n, size_t *total) {
  char *b = malloc(n + 64);
  CHECK(b);
  int h = snprintf(b, 64, "*1\r\n$%zu\r\n", n);
  memset(b + h, 'v', n);
  memcpy(b + h + n, "\r\n", 2);
  *total = (size_t)h + n + 2;
  return b;
}

static void test_command_bytes_max(void) {
  size_t total;
  char *cmd_text = one_bulk(1000, &total);
  resp_parse_limits_t lim = big_limits;
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  lim.command_bytes_max = total; /* at the bound: taken */
  CHECK_EQ(resp_parse_next(&p, cmd_text, total, &lim, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argv[0].len, 1000);
  /* One byte under it: refused as soon as the length line is read,
   * before the bytes it announces arrive. */
  lim.command_bytes_max = total - 1;
  CHECK_EQ(resp_parse_next(&p, cmd_text, 12, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: command longer than resp_command_bytes_max");
  /* A length past the bound on its own is not a length at all. */
  lim.command_bytes_max = 999;
  CHECK_EQ(resp_parse_next(&p, cmd_text, 12, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: invalid bulk length");
  resp_parser_close(&p);
  free(cmd_text);
}

static void test_inline_bytes_max(void) {
  resp_parse_limits_t lim = big_limits;
  lim.inline_bytes_max = 100;
  char line[256];
  memset(line, 'a', sizeof line);
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  /* An inline command with no line end yet: 100 bytes wait, 101 do not. */
  CHECK_EQ(resp_parse_next(&p, line, 100, &lim, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(resp_parse_next(&p, line, 101, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: too big inline request");
  /* A count line the same. */
  line[0] = '*';
  CHECK_EQ(resp_parse_next(&p, line, 100, &lim, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(resp_parse_next(&p, line, 101, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: too big mbulk count string");
  /* And a bulk's length line, counted from its '$'. */
  memcpy(line, "*1\r\n$", 5);
  CHECK_EQ(resp_parse_next(&p, line, 104, &lim, &cmd), RESP_PARSE_MORE);
  CHECK_EQ(resp_parse_next(&p, line, 105, &lim, &cmd), RESP_PARSE_ERROR);
  CHECK_STR(cmd.why, "Protocol error: too big bulk count string");
  resp_parser_close(&p);
}

static void test_malformed(void) {
  CHECK_ERROR("*abc\r\n", NULL, "Protocol error: invalid multibulk length");
  CHECK_ERROR("*01\r\n", NULL, "Protocol error: invalid multibulk length");
  CHECK_ERROR("*+1\r\n", NULL, "Protocol error: invalid multibulk length");
  CHECK_ERROR("*3000000000\r\n", NULL, "Protocol error: invalid multibulk length");
  CHECK_ERROR("*1\r\n$-1\r\n", NULL, "Protocol error: invalid bulk length");
  CHECK_ERROR("*1\r\n$x\r\n", NULL, "Protocol error: invalid bulk length");
  CHECK_ERROR("*1\r\n$999999999999\r\n", NULL, "Protocol error: invalid bulk length");
  CHECK_ERROR("*1\r\n+foo\r\n", NULL, "Protocol error: expected '$', got '+'");
  CHECK_ERROR("*2\r\n$1\r\na\r\n:1\r\n", NULL, "Protocol error: expected '$', got ':'");
  /* A line ended by LF alone runs into the next line's CRLF, and the two
   * read together are not a number. */
  CHECK_ERROR("*1\n$4\r\nPING\r\n", NULL, "Protocol error: invalid multibulk length");
  CHECK_ERROR("*1\r\n$4\nPING\r\n", NULL, "Protocol error: invalid bulk length");
  CHECK_ERROR("SET \"a\r\n", NULL, "Protocol error: unbalanced quotes in request");
  CHECK_ERROR("SET 'a\r\n", NULL, "Protocol error: unbalanced quotes in request");
  CHECK_ERROR("SET \"a\"b\r\n", NULL, "Protocol error: unbalanced quotes in request");
  /* A count of zero or less is an empty command (as Redis), not an error. */
  resp_parser_t p;
  resp_parser_init(&p);
  resp_command_t cmd;
  CHECK_EQ(parse_once(&p, "*-1\r\n", 5, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 0);
  CHECK_EQ(cmd.used, 5);
  CHECK_EQ(parse_once(&p, "*0\r\n", 4, NULL, &cmd), RESP_PARSE_DONE);
  CHECK_EQ(cmd.argc, 0);
  resp_parser_close(&p);
}

static void test_i64(void) {
  int64_t v = 0;
  CHECK_EQ(resp_parse_i64("0", 1, &v), 0);
  CHECK_EQ(v, 0);
  CHECK_EQ(resp_parse_i64("-42", 3, &v), 0);
  CHECK_EQ(v, -42);
  CHECK_EQ(resp_parse_i64("9223372036854775807", 19, &v), 0);
  CHECK_EQ(v, INT64_MAX);
  CHECK_EQ(resp_parse_i64("-9223372036854775808", 20, &v), 0);
  CHECK(v == INT64_MIN);
  CHECK_EQ(resp_parse_i64("9223372036854775808", 19, &v), -1);
  CHECK_EQ(resp_parse_i64("", 0, &v), -1);
  CHECK_EQ(resp_parse_i64("+1", 2, &v), -1);
  CHECK_EQ(resp_parse_i64(" 1", 2, &v), -1);
  CHECK_EQ(resp_parse_i64("01", 2, &v), -1);
  CHECK_EQ(resp_parse_i64("-0", 2, &v), -1);
  CHECK_EQ(resp_parse_i64("-", 1, &v), -1);
  CHECK_EQ(resp_parse_i64("1x", 2, &v), -1);
  CHECK_EQ(resp_parse_i64("12", 1, &v), 0); /* only len bytes are read */
  CHECK_EQ(v, 1);
}

/* A pipeline of more commands than the bound, as resp.c serves it in a
 * cluster: parse while there is room, each parsed command waiting for its
 * reply; then replies are written one by one. */
static void test_pipeline_bound(void) {
  enum { MAX = 8, SENT = MAX * 2 + 3 };
  char in[SENT * 14];
  size_t len = 0;
  for (int i = 0; i < SENT; i++) {
    memcpy(in + len, "*1\r\n$4\r\nPING\r\n", 14);
    len += 14;
  }
  resp_parser_t p;
  resp_parser_init(&p);
  resp_pipeline_t pipe = {0, 0};
  size_t off = 0;
  int parsed = 0;
  resp_command_t cmd;
  while (resp_pipeline_has_room(&pipe, MAX) &&
         resp_parse_next(&p, in + off, len - off, &big_limits, &cmd) == RESP_PARSE_DONE) {
    off += cmd.used;
    pipe.waiting++;
    parsed++;
  }
  /* Full at the bound: the rest stays unparsed. */
  CHECK_EQ(parsed, MAX);
  CHECK(pipe.full);
  CHECK_EQ(off, (size_t)MAX * 14);
  /* One reply written is not enough to go on: parsing waits for half. */
  for (int written = 1; written < MAX / 2; written++) {
    pipe.waiting--;
    CHECK(!resp_pipeline_has_room(&pipe, MAX));
  }
  pipe.waiting--;
  CHECK_EQ(pipe.waiting, MAX / 2);
  CHECK(resp_pipeline_has_room(&pipe, MAX));
  CHECK(!pipe.full);
  /* It fills again after MAX / 2 more. */
  while (resp_pipeline_has_room(&pipe, MAX) &&
         resp_parse_next(&p, in + off, len - off, &big_limits, &cmd) == RESP_PARSE_DONE) {
    off += cmd.used;
    pipe.waiting++;
    parsed++;
  }
  CHECK_EQ(parsed, MAX + MAX / 2);
  CHECK_EQ(pipe.waiting, MAX);
  /* Everything written: the rest is parsed, and the bound is not hit. */
  pipe.waiting = 0;
  while (resp_pipeline_has_room(&pipe, MAX) &&
         resp_parse_next(&p, in + off, len - off, &big_limits, &cmd) == RESP_PARSE_DONE) {
    off += cmd.used;
    pipe.waiting++;
    parsed++;
  }
  CHECK_EQ(parsed, SENT);
  CHECK_EQ(off, len);
  CHECK(!pipe.full);
  /* A bound of one: one command at a time. */
  resp_pipeline_t one = {0, 0};
  CHECK(resp_pipeline_has_room(&one, 1));
  one.waiting = 1;
  CHECK(!resp_pipeline_has_room(&one, 1));
  one.waiting = 0;
  CHECK(resp_pipeline_has_room(&one, 1));
  resp_parser_close(&p);
}

int main(void) {
  RUN(test_whole_multibulk);
  RUN(test_split_at_every_byte);
  RUN(test_inline);
  RUN(test_pipeline);
  RUN(test_empty_and_binary_bulks);
  RUN(test_args_max);
  RUN(test_command_bytes_max);
  RUN(test_inline_bytes_max);
  RUN(test_malformed);
  RUN(test_i64);
  RUN(test_pipeline_bound);
  fprintf(stderr, "test_resp_parse: ok\n");
  return 0;
}
