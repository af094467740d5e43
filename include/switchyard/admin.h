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
#include "switchyard/status.h"

typedef struct sy_admin sy_admin;

sy_admin *sy_admin_start(uv_loop_t *loop, const sy_addr *addr, sy_admin_state *st);
void sy_admin_stop(sy_admin *a);

#endif
