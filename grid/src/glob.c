#include "glob.h"

/* The class at p[0..n) (just after its `[`): whether byte c is in it, and
 * how many pattern bytes it took with its `]` (if any). */
static int glob_class(const unsigned char *p, size_t n, unsigned char c, size_t *used) {
  size_t i = 0;
  int negate = i < n && p[i] == '^';
  if (negate) i++;
  int in = 0;
  while (i < n && p[i] != ']') {
    if (p[i] == '\\' && i + 1 < n) {
      in |= p[i + 1] == c;
      i += 2;
    } else if (i + 2 < n && p[i + 1] == '-') {
      unsigned char lo = p[i], hi = p[i + 2];
      if (lo > hi) {
        unsigned char t = lo;
        lo = hi;
        hi = t;
      }
      in |= c >= lo && c <= hi;
      i += 3;
    } else {
      in |= p[i] == c;
      i++;
    }
  }
  *used = i < n ? i + 1 : i; /* past the `]`, or to the end without one */
  return negate ? !in : in;
}

int glob_match(const void *pattern, size_t plen, const void *str, size_t slen) {
  const unsigned char *p = pattern, *s = str;
  size_t pi = 0, si = 0;
  /* The last star seen: where the pattern goes on after it, and how much
   * of the string it has taken so far (backtracking takes one more). */
  size_t star_p = (size_t)-1, star_s = 0;
  for (;;) {
    if (pi < plen && p[pi] == '*') {
      while (pi < plen && p[pi] == '*') pi++;
      if (pi == plen) return 1;
      star_p = pi;
      star_s = si;
      continue;
    }
    if (pi == plen && si == slen) return 1;
    int ok = 0;
    size_t next = pi;
    if (pi < plen && si < slen) {
      unsigned char c = p[pi];
      if (c == '?') {
        ok = 1;
        next = pi + 1;
      } else if (c == '[') {
        size_t used;
        ok = glob_class(p + pi + 1, plen - pi - 1, s[si], &used);
        next = pi + 1 + used;
      } else if (c == '\\' && pi + 1 < plen) {
        ok = p[pi + 1] == s[si];
        next = pi + 2;
      } else {
        ok = c == s[si];
        next = pi + 1;
      }
    }
    if (ok) {
      pi = next;
      si++;
      continue;
    }
    /* No match here: the last star takes one byte more, if any is left. */
    if (star_p == (size_t)-1 || star_s >= slen) return 0;
    star_s++;
    pi = star_p;
    si = star_s;
  }
}
