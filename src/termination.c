#include "switchyard/termination.h"

#include <string.h>

static const char *const names[SY_TERM_COUNT] = {
    [SY_TERM_OK] = "ok",
    [SY_TERM_CLIENT_CLOSED] = "client_closed",
    [SY_TERM_CLIENT_RESET] = "client_reset",
    [SY_TERM_UPSTREAM_CLOSED] = "upstream_closed",
    [SY_TERM_UPSTREAM_RESET] = "upstream_reset",
    [SY_TERM_HEADER_TIMEOUT] = "header_timeout",
    [SY_TERM_BODY_TIMEOUT] = "body_timeout",
    [SY_TERM_RESPONSE_TIMEOUT] = "response_timeout",
    [SY_TERM_IDLE_TIMEOUT] = "idle_timeout",
    [SY_TERM_FIN_TIMEOUT] = "fin_timeout",
    [SY_TERM_CONNECT_FAILED] = "connect_failed",
    [SY_TERM_CONNECT_TIMEOUT] = "connect_timeout",
    [SY_TERM_NO_SERVER] = "no_server",
    [SY_TERM_UPSTREAM_TLS] = "upstream_tls_failed",
    [SY_TERM_CLIENT_TLS] = "client_tls_failed",
    [SY_TERM_BAD_REQUEST] = "bad_request",
    [SY_TERM_BAD_RESPONSE] = "bad_response",
    [SY_TERM_NO_ROUTE] = "no_route",
    [SY_TERM_UPGRADE_REJECTED] = "upgrade_rejected",
    [SY_TERM_LIMIT] = "limit",
    [SY_TERM_SHUTDOWN] = "shutdown",
    [SY_TERM_INTERNAL] = "internal",
};

const char *sy_term_name(enum sy_term t) {
  return (unsigned)t < SY_TERM_COUNT ? names[t] : "unknown";
}

int sy_term_parse(const char *name) {
  for (int i = 0; i < SY_TERM_COUNT; i++)
    if (name && strcmp(name, names[i]) == 0) return i;
  return -1;
}

enum sy_term sy_term_for_tunnel(const char *closed_by, const char *reason) {
  int client = closed_by && strcmp(closed_by, "client") == 0;
  int upstream = closed_by && strcmp(closed_by, "upstream") == 0;
  if (!reason) reason = "";
  if (strcmp(reason, "idle_timeout") == 0) return SY_TERM_IDLE_TIMEOUT;
  if (strcmp(reason, "fin_timeout") == 0) return SY_TERM_FIN_TIMEOUT;
  if (strcmp(reason, "shutdown") == 0) return SY_TERM_SHUTDOWN;
  if (strcmp(reason, "eof") == 0 && (client || upstream))
    return client ? SY_TERM_CLIENT_CLOSED : SY_TERM_UPSTREAM_CLOSED;
  /* reset, error: the side it happened on */
  if (client) return SY_TERM_CLIENT_RESET;
  if (upstream) return SY_TERM_UPSTREAM_RESET;
  return SY_TERM_INTERNAL;
}
