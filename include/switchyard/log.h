/* Diagnostics (stderr, text) and the access log (one JSON object per line). */
#ifndef SWITCHYARD_LOG_H
#define SWITCHYARD_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "switchyard/base.h"

void sy_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sy_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Where access-log lines go: "stdout"/NULL, "off", or a file path. 0 or -1. */
int sy_access_log_open(const char *where);
void sy_access_log_close(void);
int sy_access_log_enabled(void);
/* Queues one complete line (the caller includes the trailing '\n') for the
 * writer thread; never blocks on the destination. */
void sy_access_log_write(const char *line, size_t len);
/* Lines dropped because the queue was full (a stuck destination). */
uint64_t sy_access_log_dropped(void);

/* JSON helpers for building a line into a sy_buf. */
void sy_json_str(sy_buf *b, const char *key, const char *s, size_t n, int comma);
void sy_json_time(sy_buf *b, const char *key, int comma);

#endif
