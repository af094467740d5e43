/* Why an exchange or a tunnel ended: the access log's "termination" field
 * (docs/OPERATIONS.md lists every code). One value per line, chosen by the
 * connection code at the point it decides to end the exchange. The names are
 * a stable interface for log pipelines: add codes, never rename them. */
#ifndef SWITCHYARD_TERMINATION_H
#define SWITCHYARD_TERMINATION_H

enum sy_term {
  SY_TERM_OK = 0,           /* response sent completely (whatever its status) */
  SY_TERM_CLIENT_CLOSED,    /* client sent FIN before the response was complete; */
                            /* tunnel: the client's FIN came first */
  SY_TERM_CLIENT_RESET,     /* client RST / write to the client failed */
  SY_TERM_UPSTREAM_CLOSED,  /* upstream closed before its response ended (truncated); */
                            /* tunnel: the upstream's FIN came first */
  SY_TERM_UPSTREAM_RESET,   /* upstream RST / write to the upstream failed */
  SY_TERM_HEADER_TIMEOUT,   /* limits.header_timeout: request head incomplete (408) */
  SY_TERM_BODY_TIMEOUT,     /* limits.body_timeout: request body stalled (408) */
  SY_TERM_RESPONSE_TIMEOUT, /* timeouts.response: upstream too slow (504) */
  SY_TERM_IDLE_TIMEOUT,     /* tunnel: timeouts.tunnel_idle */
  SY_TERM_FIN_TIMEOUT,      /* tunnel: timeouts.tunnel_fin after one side's FIN */
  SY_TERM_CONNECT_FAILED,   /* no upstream connection: refused/unreachable (502) */
  SY_TERM_CONNECT_TIMEOUT,  /* the last connect attempt timed out (504) */
  SY_TERM_NO_SERVER,        /* every server of the upstream is down (503) */
  SY_TERM_UPSTREAM_TLS,     /* TLS handshake with the upstream failed (502) */
  SY_TERM_CLIENT_TLS,       /* TLS handshake with the client failed */
  SY_TERM_BAD_REQUEST,      /* the client's request is not valid HTTP/1.1 (400, 501, ...) */
  SY_TERM_BAD_RESPONSE,     /* the upstream's response is not valid (502) */
  SY_TERM_NO_ROUTE,         /* no route matched (404) */
  SY_TERM_UPGRADE_REJECTED, /* upgrade refused by policy or an invalid 101 */
  SY_TERM_LIMIT,            /* a configured limit: header size/count (431), */
                            /* max_tunnels, max_connections_per_client (503) */
  SY_TERM_SHUTDOWN,         /* cut by the drain timeout or SIGQUIT */
  SY_TERM_INTERNAL,         /* the proxy's own failure (memory, descriptors, ...) */
  SY_TERM_COUNT
};

/* "ok", "client_closed", ...; "unknown" for a value out of range. */
const char *sy_term_name(enum sy_term t);
/* The code for a name, or -1. */
int sy_term_parse(const char *name);

/* A tunnel's ending (sy_tunnel_stats closed_by / reason) as a code:
 * eof -> client_closed / upstream_closed (who sent FIN first), reset ->
 * client_reset / upstream_reset, idle_timeout, fin_timeout, shutdown; an
 * "error" -> the side's reset; anything else (the proxy's own) -> internal. */
enum sy_term sy_term_for_tunnel(const char *closed_by, const char *reason);

#endif
