/* Counters and gauges, one table per worker so the hot path never shares a
 * cache line or takes a lock; readers (the admin listener) sum the tables.
 *
 * A series is a metric name plus labels, written as Prometheus writes them:
 *   switchyard_requests_total{route="ws",class="2xx"}
 * Slots are claimed once and never move, so a reader on another thread can
 * walk a table while its worker adds to it (relaxed atomics on the values). */
#ifndef SWITCHYARD_METRICS_H
#define SWITCHYARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "switchyard/base.h"

typedef struct sy_metrics sy_metrics;

sy_metrics *sy_metrics_new(void);
void sy_metrics_free(sy_metrics *m);

/* Adds `delta` (negative for a gauge going down) to the series `name{labels}`.
 * `labels` is NULL or the inside of the braces. Silently dropped when the
 * table is full (a bounded table cannot be grown under a concurrent reader). */
void sy_metrics_add(sy_metrics *m, const char *name, const char *labels, int64_t delta);

/* The same for a series counted on every connection: the caller keeps *cell
 * (NULL at first) and only the first call looks the series up, so it still
 * appears when first counted. */
void sy_metrics_add_cell(sy_metrics *m, int64_t **cell, const char *name, const char *labels,
                         int64_t delta);

/* The sum over several tables of one series (0 when absent). */
int64_t sy_metrics_get(sy_metrics *const *ms, size_t n, const char *name, const char *labels);

/* Prometheus text exposition of the sum of the tables, with # TYPE lines. */
void sy_metrics_render(sy_metrics *const *ms, size_t n, sy_buf *out);

/* Calls fn for every series of the summed tables (name, labels, value). */
void sy_metrics_each(sy_metrics *const *ms, size_t n,
                     void (*fn)(const char *name, const char *labels, int64_t v, void *arg),
                     void *arg);

/* Writes `label="value"` with the value escaped for the exposition format. */
void sy_metrics_label(sy_buf *b, const char *label, const char *value, size_t len);

#endif
