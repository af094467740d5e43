/* Active health checks for upstreams with `health:` set: every interval, a
 * GET of health.path with Connection: close; a 2xx or 3xx within
 * health.timeout is a success. `healthy` successes in a row bring a server
 * up, `unhealthy` failures in a row take it down. Runs on the main loop;
 * workers only read the `down` flags. */
#ifndef SWITCHYARD_HEALTH_H
#define SWITCHYARD_HEALTH_H

#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/metrics.h"

typedef struct sy_health sy_health;

/* NULL when no upstream asks for checks. Holds a reference to cfg. */
sy_health *sy_health_start(uv_loop_t *loop, sy_config *cfg, sy_metrics *m);
/* Stops the checks; frees itself once libuv has closed its handles. NULL ok. */
void sy_health_stop(sy_health *h);

#endif
