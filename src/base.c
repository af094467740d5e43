#include "switchyard/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int sy_str_ieq(sy_str a, const char *lit) {
  size_t n = strlen(lit);
  return a.len == n && strncasecmp(a.p, lit, n) == 0;
}

int sy_str_ieq2(sy_str a, sy_str b) {
  return a.len == b.len && strncasecmp(a.p, b.p, a.len) == 0;
}

int sy_buf_reserve(sy_buf *b, size_t n) {
  if (b->len + n > b->cap) {
    size_t ncap = b->cap ? b->cap : 512;
    while (ncap < b->len + n)
      ncap *= 2;
    char *np = realloc(b->p, ncap);
    if (!np) return -1;
    b->p = np;
    b->cap = ncap;
  }
  return 0;
}

int sy_buf_append(sy_buf *b, const void *p, size_t n) {
  if (sy_buf_reserve(b, n) < 0) return -1;
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

int sy_buf_appendf(sy_buf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof(tmp)) return -1;
  return sy_buf_append(b, tmp, (size_t)n);
}

void sy_buf_free(sy_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}
