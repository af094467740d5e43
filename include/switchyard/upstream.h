/* Upstream server choice. Balancing policies beyond round-robin and health
 * come with the operations issue; the connection asks only "which server for
 * attempt N of this request". */
#ifndef SWITCHYARD_UPSTREAM_H
#define SWITCHYARD_UPSTREAM_H

#include "switchyard/config.h"

/* Starts a request's walk over the servers: returns the first index. */
unsigned sy_upstream_first(sy_upstream_cfg *up);
/* The server for attempt `attempt` (0-based) of a walk begun at `first`, or
 * NULL once every server has been tried. Weights spread the first choice. */
const sy_server_cfg *sy_upstream_server(const sy_upstream_cfg *up, unsigned first,
                                        unsigned attempt);

#endif
