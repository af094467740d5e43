/* The admin status page: the HTML (a self-contained page, no external
 * resources) and /status.json, built from the Prometheus text the admin
 * listener renders, so the page shows exactly what /metrics says, and a ring
 * of 1-second samples of a few sums for the page's graphs. Main thread only. */
#ifndef SWITCHYARD_STATUS_H
#define SWITCHYARD_STATUS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "switchyard/config.h"
#include "switchyard/http.h"
#include "switchyard/worker.h"

/* What the admin listener serves besides the metrics: the process, its
 * reloads and workers. Written by the main thread, which also serves it. */
typedef struct sy_admin_state {
  sy_worker *workers;
  unsigned nworkers;
  sy_config *cfg; /* current snapshot (main thread) */
  uint64_t reloads_ok, reloads_failed, generation;
  time_t started, last_reload_time; /* last_reload_time 0: no reload yet */
  int last_reload_ok;
  char last_reload_error[512]; /* the refused file's message */
  int draining;
  const char *version;
  int64_t start_time, last_reload_success; /* Unix seconds; the last good load's */
  int main_metrics_ready;
  sy_metrics *main;             /* series the main thread counts (health checks) */
  struct sy_resolver *resolver; /* /readyz waits for its first answers; NULL: none */
} sy_admin_state;

#define SY_STATUS_HISTORY 300 /* samples kept: five minutes at one a second */

typedef struct sy_status_sample {
  double requests, errors, tunnels_open, tunnel_bytes, connections_open;
} sy_status_sample;

typedef struct sy_status_history {
  sy_status_sample ring[SY_STATUS_HISTORY];
  size_t next, n;
} sy_status_history;

/* Calls fn for every sample line of Prometheus text: the metric name, the
 * inside of its braces (empty when none) and the value. Comment and malformed
 * lines are skipped. */
typedef void (*sy_status_sample_fn)(const char *name, size_t nlen, const char *labels, size_t llen,
                                    double v, void *arg);
void sy_status_scrape(const char *text, size_t len, sy_status_sample_fn fn, void *arg);

/* The value of label `key` in a label set, unescaped into out (NUL-terminated,
 * cut at cap - 1). Returns its length, or -1 when the label is absent. */
int sy_status_label(const char *labels, size_t llen, const char *key, char *out, size_t cap);

/* Appends one sample (the sums over `text`) to the ring. */
void sy_status_record(sy_status_history *h, const char *text, size_t len);

/* /status.json from the metrics text, the admin state and the ring. */
void sy_status_json(sy_buf *out, const sy_admin_state *st, const sy_status_history *h,
                    const char *text, size_t len);

/* The HTML page. */
const char *sy_status_page(size_t *len);

#endif
