/*
 * test_notify: Redis keyspace notifications' rules (grid/src/notify.c):
 * the notify_keyspace_events letters parsed and shown back as Redis shows
 * them, what is published under which flags, the event each of grid's
 * writes raises, and the channels' names. Pure: no I/O.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "grid.pb-c.h"
#include "notify.h"

static unsigned parse(const char *text) {
  unsigned f = 0xdeadu;
  CHECK_EQ(notify_parse(text, &f), 0);
  return f;
}

static void check_format(const char *text, const char *want) {
  char out[NOTIFY_FLAGS_TEXT_MAX];
  notify_format(parse(text), out);
  if (strcmp(out, want) != 0) fprintf(stderr, "\"%s\" shows as \"%s\", not \"%s\"\n", text, out, want);
  CHECK(strcmp(out, want) == 0);
}

static void test_parse(void) {
  printf("-- test_parse\n");
  CHECK_EQ(parse(""), 0u);
  CHECK_EQ(parse("K"), (unsigned)NOTIFY_KEYSPACE);
  CHECK_EQ(parse("KEA"), (unsigned)(NOTIFY_KEYSPACE | NOTIFY_KEYEVENT | NOTIFY_ALL));
  CHECK_EQ(parse("Ex"), (unsigned)(NOTIFY_KEYEVENT | NOTIFY_EXPIRED));
  CHECK_EQ(parse("$$g"), (unsigned)(NOTIFY_STRING | NOTIFY_GENERIC));
  /* A is every class but key miss and new key. */
  CHECK_EQ(parse("A") & (NOTIFY_KEY_MISS | NOTIFY_NEW), 0u);
  CHECK_EQ(parse("g$lshzxetd"), parse("A"));
  unsigned f = 7;
  CHECK_EQ(notify_parse("KQ", &f), -1); /* Q is no letter of Redis's */
  CHECK_EQ(f, 7u);                      /* ... and nothing is set */
  CHECK_EQ(notify_parse("k", &f), -1);  /* letters are case-sensitive */
  CHECK_EQ(notify_parse("K E", &f), -1);
}

static void test_format(void) {
  printf("-- test_format\n");
  check_format("", "");
  check_format("AKE", "AKE");
  check_format("EKA", "AKE");
  check_format("KEg$lshzxetd", "AKE");
  check_format("Ex", "xE");
  check_format("E$g", "g$E");
  /* As redis-server 7.0.15 shows them (CONFIG SET, then CONFIG GET). */
  check_format("Kg$lshzxet", "g$lshzxetK"); /* no d: not all of A */
  check_format("lszhKEmn", "lshznKEm");
  check_format("g$lshzxetnmKE", "g$lshzxetnKEm");
  check_format("nd", "dn");
  check_format("md", "dm");
  check_format("etdK", "etdK");
  check_format("nmEKA", "AKEm"); /* with A, Redis does not show n */
  check_format("An", "A");
  /* What is shown parses back to the same flags (but n beside A). */
  const char *texts[] = {"", "K", "AKE", "g$xE", "lszhKEmn", "etdK", "A", "dnm"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    char out[NOTIFY_FLAGS_TEXT_MAX];
    notify_format(parse(texts[i]), out);
    CHECK_EQ(parse(out), parse(texts[i]));
  }
}

static void test_wanted(void) {
  printf("-- test_wanted\n");
  /* Nothing without K or E, nothing of a class not set. */
  CHECK(!notify_wanted(parse("A"), NOTIFY_STRING));
  CHECK(notify_wanted(parse("K$"), NOTIFY_STRING));
  CHECK(notify_wanted(parse("E$"), NOTIFY_STRING));
  CHECK(!notify_wanted(parse("KE$"), NOTIFY_GENERIC));
  CHECK(notify_wanted(parse("KEA"), NOTIFY_EXPIRED));
  CHECK(!notify_wanted(parse("KEA"), NOTIFY_NEW));
  CHECK(!notify_wanted(0, NOTIFY_GENERIC));
}

static void check_event(int op, notify_change_t change, const char *name, unsigned cls) {
  notify_event_t e = notify_event_of(op, change);
  CHECK(e.name && strcmp(e.name, name) == 0);
  CHECK_EQ(e.cls, cls);
}

static void test_events(void) {
  printf("-- test_events\n");
  const int sets[] = {GRID__OP__PUT, GRID__OP__PUT_IF_ABSENT, GRID__OP__REPLACE, GRID__OP__CAS,
                      GRID__OP__GET_AND_PUT, GRID__OP__PUT_ALL};
  for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
    check_event(sets[i], NOTIFY_CHANGE_PUT, "set", NOTIFY_STRING);
  check_event(GRID__OP__ADD, NOTIFY_CHANGE_PUT, "incrby", NOTIFY_STRING);
  check_event(GRID__OP__APPEND, NOTIFY_CHANGE_PUT, "append", NOTIFY_STRING);
  check_event(GRID__OP__DELETE, NOTIFY_CHANGE_DELETE, "del", NOTIFY_GENERIC);
  check_event(GRID__OP__GET_AND_DELETE, NOTIFY_CHANGE_DELETE, "del", NOTIFY_GENERIC);
  check_event(GRID__OP__DELETE_ALL, NOTIFY_CHANGE_DELETE, "del", NOTIFY_GENERIC);
  /* EXPIRE: a TTL set, taken off, or (none left) a delete, as Redis. */
  check_event(GRID__OP__EXPIRE, NOTIFY_CHANGE_TTL, "expire", NOTIFY_GENERIC);
  check_event(GRID__OP__EXPIRE, NOTIFY_CHANGE_PERSIST, "persist", NOTIFY_GENERIC);
  check_event(GRID__OP__PUT, NOTIFY_CHANGE_NEW, "new", NOTIFY_NEW);
  check_event(GRID__OP__ADD, NOTIFY_CHANGE_NEW, "new", NOTIFY_NEW);
  check_event(GRID__OP__EXPIRE, NOTIFY_CHANGE_DELETE, "del", NOTIFY_GENERIC);
  /* A TTL that runs out is "expired", whatever wrote the key. */
  check_event(GRID__OP__PUT, NOTIFY_CHANGE_EXPIRED, "expired", NOTIFY_EXPIRED);
  check_event(0, NOTIFY_CHANGE_EXPIRED, "expired", NOTIFY_EXPIRED);
  /* Reads raise nothing. */
  CHECK(notify_event_of(GRID__OP__GET, NOTIFY_CHANGE_PUT).name == NULL);
}

static void test_channels(void) {
  printf("-- test_channels\n");
  char out[64];
  CHECK_EQ(notify_keyspace_channel(0, "pump-7", 6, out, sizeof out), strlen("__keyspace@0__:pump-7"));
  CHECK(strcmp(out, "__keyspace@0__:pump-7") == 0);
  CHECK_EQ(notify_keyevent_channel(15, "expired", out, sizeof out),
           strlen("__keyevent@15__:expired"));
  CHECK(strcmp(out, "__keyevent@15__:expired") == 0);
  /* A key with a NUL in it is kept whole (Redis keys are binary). */
  size_t n = notify_keyspace_channel(3, "a\0b", 3, out, sizeof out);
  CHECK_EQ(n, strlen("__keyspace@3__:") + 3);
  CHECK(memcmp(out, "__keyspace@3__:a\0b", n) == 0 && out[n] == '\0');
  /* Too small: the length needed is said, and nothing is overrun. */
  char tiny[8];
  memset(tiny, 'z', sizeof tiny);
  CHECK_EQ(notify_keyspace_channel(0, "pump-7", 6, tiny, sizeof tiny), strlen("__keyspace@0__:pump-7"));
  CHECK(tiny[sizeof tiny - 1] == '\0');
}

int main(int argc, char **argv) {
  const struct {
    const char *name;
    void (*fn)(void);
  } tests[] = {{"test_parse", test_parse}, {"test_format", test_format},
               {"test_wanted", test_wanted}, {"test_events", test_events},
               {"test_channels", test_channels}};
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strcmp(argv[1], tests[i].name) == 0) tests[i].fn();
  printf("test_notify: ok\n");
  return 0;
}
