/* Counters, gauges and histograms, one table per worker so the hot path never
 * shares a cache line or takes a lock; readers (the admin listener) sum the
 * tables.
 *
 * A series is a metric name plus labels, written as Prometheus writes them:
 *   switchyard_requests_total{route="ws",class="2xx"}
 * Slots are claimed once and never move, so a reader on another thread can
 * walk a table while its worker adds to it (relaxed atomics on the values).
 * Only the table's own thread writes to it.
 *
 * Every family the proxy emits is in one registry (name, type, help, buckets):
 * rendering takes # HELP and # TYPE from there. */
#ifndef SWITCHYARD_METRICS_H
#define SWITCHYARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "switchyard/base.h"
#include "switchyard/config.h"

enum sy_metric_type { SY_METRIC_COUNTER, SY_METRIC_GAUGE, SY_METRIC_HISTOGRAM };

/* Upper bounds of a histogram's buckets, without +Inf. */
#define SY_HIST_MAX_BUCKETS 20

typedef struct sy_metric_buckets {
  size_t n;
  uint64_t ns[SY_HIST_MAX_BUCKETS];    /* upper bounds, nanoseconds, ascending */
  const char *le[SY_HIST_MAX_BUCKETS]; /* the same in seconds, as rendered */
} sy_metric_buckets;

typedef struct sy_metric_family {
  const char *name;
  enum sy_metric_type type;
  const char *labels; /* label names, for the docs and tests: "route,class" or "" */
  const char *help;
  const sy_metric_buckets *buckets; /* histograms only */
} sy_metric_family;

/* The registry: every family the proxy can emit. */
const sy_metric_family *sy_metrics_families(size_t *n);
/* The family of that name, or NULL. */
const sy_metric_family *sy_metrics_family(const char *name);

typedef struct sy_metrics sy_metrics;
typedef struct sy_hist sy_hist; /* one histogram series in one table */

/* How many series a worker's table needs for this configuration: every label
 * set the proxy can produce from its routes, upstreams and servers, doubled so
 * reloads that add some fit too. */
size_t sy_metrics_capacity(const sy_config *cfg);

/* A table for `capacity` series (0: a small default); NULL on failure. */
sy_metrics *sy_metrics_new(size_t capacity);
void sy_metrics_free(sy_metrics *m);
/* Series the table can hold (>= the capacity asked for). */
size_t sy_metrics_size(const sy_metrics *m);

/* Adds `delta` (negative for a gauge going down) to the series `name{labels}`.
 * `labels` is NULL or the inside of the braces. When the table is full the
 * series is dropped, counted in switchyard_metrics_series_dropped_total and
 * logged (at most once a second). */
void sy_metrics_add(sy_metrics *m, const char *name, const char *labels, int64_t delta);

/* The same for a series counted on every connection: the caller keeps *cell
 * (NULL at first) and only the first call looks the series up, so it still
 * appears when first counted. */
void sy_metrics_add_cell(sy_metrics *m, int64_t **cell, const char *name, const char *labels,
                         int64_t delta);

/* The histogram series `name{labels}` (name: a registered histogram family),
 * created on first use; NULL when the table is full (counted as above). Look
 * it up once and keep it: observing is then a few stores, no lock, no malloc. */
sy_hist *sy_metrics_hist(sy_metrics *m, const char *name, const char *labels);
/* One observation of `ns` nanoseconds; h NULL is a no-op. */
void sy_metrics_observe(sy_hist *h, uint64_t ns);
/* sy_metrics_hist on the first call (*cell NULL), then sy_metrics_observe. */
void sy_metrics_observe_cell(sy_metrics *m, sy_hist **cell, const char *name, const char *labels,
                             uint64_t ns);

/* A cache in front of the lookups above for the hot path, so a request's
 * labelled series cost neither building the label text nor hashing it: label
 * sets are named by a number. Per table, owner thread only; a miss costs
 * nothing but the normal lookup. A key must name one label set of one family
 * for the process's lifetime: sy_metrics_key packs a config snapshot's serial
 * (sy_config.serial), a tag the caller gives each family, and up to three
 * small indexes (route or upstream index < 4096, server index < 4096, a
 * class < 256); it returns 0 (never cached) when they do not fit.
 *   int64_t *c = sy_metrics_cache_get(m, k);
 *   if (!c) { build labels; sy_metrics_add_cell(m, &c, name, labels, 0);
 *             sy_metrics_cache_put(m, k, c); }
 *   if (c) __atomic_add_fetch(c, 1, __ATOMIC_RELAXED);   (or sy_metrics_observe) */
uint64_t sy_metrics_key(uint64_t serial, unsigned tag, unsigned a, unsigned b, unsigned c);
void *sy_metrics_cache_get(const sy_metrics *m, uint64_t key);
void sy_metrics_cache_put(sy_metrics *m, uint64_t key, void *cell);

/* The sum over several tables of one series (0 when absent; a histogram's
 * observation count). */
int64_t sy_metrics_get(sy_metrics *const *ms, size_t n, const char *name, const char *labels);

/* Series dropped because a table was full, summed over the tables. */
int64_t sy_metrics_dropped(sy_metrics *const *ms, size_t n);

/* Prometheus text exposition of the sum of the tables: # HELP and # TYPE per
 * family, histograms as cumulative _bucket, _sum and _count, and
 * switchyard_metrics_series_dropped_total. */
void sy_metrics_render(sy_metrics *const *ms, size_t n, sy_buf *out);

/* # HELP and # TYPE lines of a registered family (for series rendered elsewhere). */
void sy_metrics_header(sy_buf *out, const char *name);

/* Calls fn for every counter and gauge series of the summed tables. */
void sy_metrics_each(sy_metrics *const *ms, size_t n,
                     void (*fn)(const char *name, const char *labels, int64_t v, void *arg),
                     void *arg);

/* Label values are cut to this many bytes (on a character boundary). */
#define SY_METRIC_VALUE_MAX 256

/* Writes `label="value"` (after a comma when b is not empty): the value as
 * valid UTF-8 (each invalid byte becomes U+FFFD, a NUL too), cut to
 * SY_METRIC_VALUE_MAX bytes without splitting a character, with \\, \" and \n
 * escaped as the exposition format requires. */
void sy_metrics_label(sy_buf *b, const char *label, const char *value, size_t len);

/* The longest prefix of s[0, len) of at most max bytes that does not end in
 * the middle of a UTF-8 sequence. */
size_t sy_utf8_cut(const char *s, size_t len, size_t max);

#endif
