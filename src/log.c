#include "switchyard/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int access_fd = 1;

static void vlog(const char *level, const char *fmt, va_list ap) {
  char line[1024];
  int n = snprintf(line, sizeof(line), "switchyard: %s: ", level);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof(line) - 2)
    len = sizeof(line) - 2;
  line[len++] = '\n';
  /* One write per line so lines from several workers never interleave. */
  ssize_t w = write(2, line, len);
  (void)w;
}

void sy_log_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog("error", fmt, ap);
  va_end(ap);
}

void sy_log_info(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog("info", fmt, ap);
  va_end(ap);
}

int sy_access_log_open(const char *where) {
  int fd;
  if (!where || strcmp(where, "stdout") == 0)
    fd = 1;
  else if (strcmp(where, "off") == 0)
    fd = -1;
  else {
    fd = open(where, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      sy_log_error("access log %s: %s", where, strerror(errno));
      return -1;
    }
  }
  int old = access_fd;
  access_fd = fd;
  if (old > 2)
    close(old);
  return 0;
}

void sy_access_log_close(void) {
  if (access_fd > 2)
    close(access_fd);
  access_fd = -1;
}

int sy_access_log_enabled(void) {
  return access_fd >= 0;
}

void sy_access_log_write(const char *line, size_t len) {
  int fd = access_fd;
  if (fd < 0)
    return;
  /* O_APPEND (or a pipe for stdout) and one write per line keep lines whole. */
  ssize_t w = write(fd, line, len);
  (void)w;
}

void sy_json_str(sy_buf *b, const char *key, const char *s, size_t n, int comma) {
  sy_buf_appendf(b, "%s\"%s\":", comma ? "," : "", key);
  if (!s) {
    sy_buf_append(b, "null", 4);
    return;
  }
  sy_buf_append(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sy_buf_append(b, e, 2);
    } else if (c < 0x20 || c >= 0x7f) {
      sy_buf_appendf(b, "\\u%04x", c);
    } else {
      sy_buf_append(b, &s[i], 1);
    }
  }
  sy_buf_append(b, "\"", 1);
}

void sy_json_time(sy_buf *b, const char *key, int comma) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[64];
  size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
  sy_buf_appendf(b, "%s\"%s\":\"%s\"", comma ? "," : "", key, ts);
}
