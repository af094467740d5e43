/* Request -> route. Pure function of the config snapshot and the request view:
 * no I/O, no allocation, so it is unit-testable and safe on the hot path. */
#ifndef SWITCHYARD_ROUTER_H
#define SWITCHYARD_ROUTER_H

#include <stddef.h>

#include "switchyard/base.h"
#include "switchyard/config.h"

typedef struct sy_header {
  sy_str name, value;
} sy_header;

typedef struct sy_request_view {
  sy_str method;
  sy_str host; /* Host field value as sent (port and case are handled by the router) */
  sy_str path; /* request target without query string */
  const sy_header *headers;
  size_t nheaders;
  /* Upgrade tokens offered (only set for a real upgrade request), protocol
   * name without version compare is the router's job: "websocket" matches
   * "WebSocket" and "h2c"; match is case-insensitive on the name before '/'. */
  const sy_str *upgrades;
  size_t nupgrades;
} sy_request_view;

/* First matching route, or NULL (-> 404). */
const sy_route_cfg *sy_route_match(const sy_config *cfg, const sy_request_view *req);

/* Does the route let this upgrade token through? (allow_upgrades semantics:
 * "*" = every token but h2c; h2c only when named; names compared
 * case-insensitively on the protocol name, a listed "TLS/1.2" matches exactly.) */
int sy_route_allows_upgrade(const sy_route_cfg *route, sy_str token);
/* The configured entry that allows the token ("*" when only the wildcard
 * does), or NULL when the route does not allow it. */
const char *sy_route_upgrade_entry(const sy_route_cfg *route, sy_str token);

#endif
