/*
 * test_glob: Redis's glob patterns (grid/src/glob.c). The expectations of
 * the tricky cases are what redis-server 7.0.15 answers to KEYS with these
 * keys stored (checked by hand; test_resp diffs the wired commands later).
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "glob.h"

static const char *keys[] = {"a", "b", "c", "[abc", "ab", "abc", "x", "-", "]", "\\",
                             "a\\b", "z", "m", "hello", "hallo", "hxllo", "hllo", "heeeello",
                             "^", "a*", "aXc"};

/* The keys pattern matches, space-separated in the order above. */
static void matches(const char *pattern, char *out, size_t cap) {
  out[0] = '\0';
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (!glob_match(pattern, strlen(pattern), keys[i], strlen(keys[i]))) continue;
    if (out[0]) strncat(out, " ", cap - strlen(out) - 1);
    strncat(out, keys[i], cap - strlen(out) - 1);
  }
}

static void expect(const char *pattern, const char *want) {
  char got[512];
  matches(pattern, got, sizeof got);
  if (strcmp(got, want) != 0) {
    fprintf(stderr, "pattern \"%s\": got \"%s\", want \"%s\"\n", pattern, got, want);
    CHECK(0);
  }
}

int main(void) {
  /* As redis-server 7.0.15 answers KEYS (sorted here in the keys' order). */
  expect("[abc", "a b c");
  expect("[a-c]", "a b c");
  expect("[c-a]", "a b c");
  expect("[^a-c]", "x - ] \\ z m ^");
  expect("[\\]]", "]");
  expect("a\\*", "a*");
  expect("\\", "\\");
  expect("h?llo", "hello hallo hxllo");
  expect("h*llo", "hello hallo hxllo hllo heeeello");
  expect("h[^e]llo", "hallo hxllo");
  expect("h[a-b]llo", "hallo");
  expect("[", "");
  expect("[]", "");
  expect("[a-", "a -");
  expect("a[\\\\]b", "a\\b");
  expect("[-]", "-");
  expect("[^]", "a b c x - ] \\ z m ^");
  expect("a?c", "abc aXc");
  expect("*", "a b c [abc ab abc x - ] \\ a\\b z m hello hallo hxllo hllo heeeello ^ a* aXc");
  /* Stars: runs, ends, and backtracking. */
  CHECK(glob_match("**a**", 5, "xxa", 3));
  CHECK(glob_match("*a*b*c", 6, "aXbYabc", 7));
  CHECK(!glob_match("*a*b*c", 6, "aXbYab", 6));
  CHECK(glob_match("", 0, "", 0));
  CHECK(!glob_match("", 0, "a", 1));
  CHECK(glob_match("*", 1, "", 0));
  CHECK(!glob_match("?", 1, "", 0));
  /* Binary-safe: a NUL is a byte like another. */
  CHECK(glob_match("a?b", 3, "a\0b", 3));
  CHECK(glob_match("__keyspace@0__:*", 16, "__keyspace@0__:pump:7", 21));
  /* Many stars against a long string: bounded work, not exponential. */
  char pat[64], str[4096];
  memset(pat, '*', sizeof pat);
  pat[sizeof pat - 1] = 'b';
  memset(str, 'a', sizeof str);
  CHECK(!glob_match(pat, sizeof pat, str, sizeof str));
  printf("test_glob: ok\n");
  return 0;
}
