#include "switchyard/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Access-log lines go through a bounded in-memory queue to a writer thread, so
 * a slow or stuck destination (a full pipe, a hung disk) never stalls a
 * worker's loop: when the queue is full, lines are dropped and counted. */
#define SY_LOG_QUEUE (4u << 20)

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int running, stop;
  int fd;      /* where lines go; -1 = off */
  int next_fd; /* set by a reopen, taken by the writer between writes */
  int has_next;
  char *q; /* ring of SY_LOG_QUEUE bytes */
  size_t head, len;
  uint64_t dropped;
  int enabled;
} L = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 1, -1, 0, NULL, 0, 0, 0, 1};

static void vlog(const char *level, const char *fmt, va_list ap) {
  char line[1024];
  int n = snprintf(line, sizeof(line), "switchyard: %s: ", level);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof(line) - 2) len = sizeof(line) - 2;
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

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0 && fd >= 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* a broken destination loses lines, never the proxy */
    p += w;
    n -= (size_t)w;
  }
}

static void *writer(void *arg) {
  char *chunk = malloc(64 * 1024);
  pthread_mutex_lock(&L.mu);
  for (;;) {
    while (!L.len && !L.has_next && !L.stop)
      pthread_cond_wait(&L.cv, &L.mu);
    if (L.has_next) {
      if (L.fd > 2) close(L.fd);
      L.fd = L.next_fd;
      L.has_next = 0;
    }
    if (!L.len && L.stop) break;
    size_t n = L.len < 64 * 1024 ? L.len : 64 * 1024;
    for (size_t i = 0; i < n; i++)
      chunk[i] = L.q[(L.head + i) % SY_LOG_QUEUE];
    L.head = (L.head + n) % SY_LOG_QUEUE;
    L.len -= n;
    int fd = L.fd;
    pthread_mutex_unlock(&L.mu);
    write_all(fd, chunk, n);
    pthread_mutex_lock(&L.mu);
  }
  if (L.fd > 2) close(L.fd);
  L.fd = -1;
  pthread_mutex_unlock(&L.mu);
  free(chunk);
  return NULL;
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
  pthread_mutex_lock(&L.mu);
  if (!L.q && !(L.q = malloc(SY_LOG_QUEUE))) {
    pthread_mutex_unlock(&L.mu);
    if (fd > 2) close(fd);
    return -1;
  }
  __atomic_store_n(&L.enabled, fd >= 0, __ATOMIC_RELAXED);
  if (!L.running) {
    L.fd = fd;
    L.stop = 0;
    if (pthread_create(&L.thread, NULL, writer, NULL) == 0) L.running = 1;
  } else {
    if (L.has_next && L.next_fd > 2) close(L.next_fd);
    L.next_fd = fd;
    L.has_next = 1;
    pthread_cond_signal(&L.cv);
  }
  pthread_mutex_unlock(&L.mu);
  return 0;
}

void sy_access_log_close(void) {
  pthread_mutex_lock(&L.mu);
  int running = L.running;
  L.stop = 1;
  pthread_cond_signal(&L.cv);
  pthread_mutex_unlock(&L.mu);
  if (running) pthread_join(L.thread, NULL); /* lines queued before the exit are written */
  pthread_mutex_lock(&L.mu);
  L.running = 0;
  free(L.q);
  L.q = NULL;
  L.head = L.len = 0;
  pthread_mutex_unlock(&L.mu);
}

int sy_access_log_enabled(void) {
  return __atomic_load_n(&L.enabled, __ATOMIC_RELAXED);
}

uint64_t sy_access_log_dropped(void) {
  return __atomic_load_n(&L.dropped, __ATOMIC_RELAXED);
}

void sy_access_log_write(const char *line, size_t len) {
  pthread_mutex_lock(&L.mu);
  if (!L.running || !L.q || L.len + len > SY_LOG_QUEUE) {
    if (L.running) __atomic_add_fetch(&L.dropped, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&L.mu);
    return;
  }
  size_t tail = (L.head + L.len) % SY_LOG_QUEUE;
  size_t first = len < SY_LOG_QUEUE - tail ? len : SY_LOG_QUEUE - tail;
  memcpy(L.q + tail, line, first);
  memcpy(L.q, line + first, len - first);
  L.len += len;
  pthread_cond_signal(&L.cv);
  pthread_mutex_unlock(&L.mu);
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
