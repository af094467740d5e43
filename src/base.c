#include "switchyard/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
