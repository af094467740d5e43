/* The admin listener (off unless admin.address is set): /healthz, /readyz,
 * /metrics (Prometheus text), /status (an HTML page for people) and
 * /status.json (what the page polls). Runs on the main thread's loop and only
 * reads what workers publish (metrics tables, atomics). */
#ifndef SWITCHYARD_ADMIN_H
#define SWITCHYARD_ADMIN_H

#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/worker.h"

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

typedef struct sy_admin sy_admin;

sy_admin *sy_admin_start(uv_loop_t *loop, const sy_addr *addr, sy_admin_state *st);
void sy_admin_stop(sy_admin *a);

#endif
