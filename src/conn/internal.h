/* The connection code's own header: the state machine, the connection and
 * exchange structs, and who may change what. Private to src/conn/.
 *
 * A connection has two sides, each a socket: SIDE_CLIENT and SIDE_UPSTREAM.
 * fl[s] is the flow that reads side s and writes side 1 - s, and tls[s] the
 * TLS layer of side s (NULL: cleartext); so fl[SIDE_CLIENT] carries the
 * request and fl[SIDE_UPSTREAM] the response. Code that does the same for
 * both sides is written once and called with the side, as in tunnel.c.
 *
 * States (conn_set_state is the only writer and refuses any other transition;
 * docs/DESIGN.md explains each):
 *
 *              +----------------- keep-alive ------------------+
 *              v                                                |
 *   READ_HEAD --> CONNECT --> SEND_BODY --> READ_RESP --> SEND_RESP --> LINGER --> CLOSED
 *      |           |  ^          |              |
 *      |           +--+          +-----101------+--> TUNNEL (hand-off) --> CLOSED
 *      |       next server                      +--> RELAY (TLS side)  --> CLOSED
 *      +-- local answer (400, 404, 408, 426, 431, 503...) from any HTTP state --> SEND_RESP
 *   CONNECT --> READ_RESP: the whole request was in before the connection was ready
 *   SEND_BODY, READ_RESP --> CONNECT: a stale pooled connection, retried once
 *   any state --> CLOSED
 *
 * The handlers of the current mode are in `io`: HTTP (http_mode.c) until a switch,
 * then the TLS relay's (relay.c); a spliced tunnel leaves the connection
 * altogether (handoff.c). */
#ifndef SY_CONN_INTERNAL_H
#define SY_CONN_INTERNAL_H

#include <llhttp.h>
#include <stdint.h>
#include <uv.h>

#include "switchyard/conn.h"
#include "switchyard/flow.h"
#include "switchyard/http.h"
#include "switchyard/tls.h"
#include "switchyard/log.h"
#include "switchyard/reqid.h"
#include "switchyard/sock.h"
#include "switchyard/termination.h"
#include "switchyard/upool.h"
#include "switchyard/upstream.h"

/* State changes for the debug log (log_level: debug), at no cost otherwise. */
#define CONN_TRACE(...)                                                                            \
  do {                                                                                             \
    if (sy_log_on(SY_LOG_DEBUG)) sy_log_debug(__VA_ARGS__);                                        \
  } while (0)

#define MAX_UPGRADES 8
#define LINGER_MS 2000

typedef enum conn_state {
  CS_READ_HEAD, /* waiting for (the rest of) a request head */
  CS_CONNECT,   /* choosing a server and connecting (or TLS to it) */
  CS_SEND_BODY, /* the head went upstream, the body is being forwarded */
  CS_READ_RESP, /* the request is out, waiting for the response head */
  CS_SEND_RESP, /* the response (the upstream's or a local one) goes to the client */
  CS_TUNNEL,    /* handed to the tunnel hub; the struct is about to go */
  CS_RELAY,     /* switched with TLS on a side: bytes copied by relay.c */
  CS_LINGER,    /* our side shut, draining the client before close */
  CS_CLOSED,    /* handles closing; freed when the last reference goes */
  CS_NSTATES
} conn_state;

typedef enum conn_side { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1 } conn_side;

/* One request and its response: everything here is reset, in one
 * assignment, when the exchange ends. Nothing in it assumes it owns the
 * client socket. */
typedef struct conn_xchg {
  const sy_route_cfg *route;
  sy_server_set *set;          /* the upstream's servers as this request saw them (held) */
  const sy_server_cfg *server; /* in set->servers */
  uint64_t tried;              /* servers of the set already tried (bit i = server i) */
  uint64_t key_hash;           /* hash balancing input */

  /* What the request head told us that outlives its bytes in the buffer. */
  char method[16];
  char *path; /* without the query; for routing and logs */
  unsigned is_head : 1, client_close : 1, http10 : 1, keep_alive10 : 1, has_body : 1;
  unsigned upgrading : 1;         /* forwarded as an upgrade: the answer may switch */
  unsigned check_accept : 1;      /* a 101 must carry the right Sec-WebSocket-Accept */
  unsigned tls_upgrade_now : 1;   /* this request is the one that switched to TLS */
  unsigned path_normalized : 1;   /* differs from the target: forwarded instead of it */
  sy_str up_tokens[MAX_UPGRADES]; /* the tokens forwarded, in the client's order */
  size_t nup_tokens;
  char up_store[256];
  char ws_key[128];                  /* empty: missing or unusable, so no 101 can verify */
  char offered0[32];                 /* the first token offered, for metrics */
  char request_id[SY_REQID_MAX + 1]; /* the client's (when sane) or ours; "" none */

  /* The answer. */
  int status;
  unsigned close_after : 1;        /* the connection ends with this answer */
  unsigned resp_head_sent : 1;     /* a head is queued for the client */
  unsigned resp_flushed : 1;       /* some of the final response went out */
  unsigned resp_from_upstream : 1; /* ... and it is the upstream's */
  unsigned bad_101 : 1;            /* a 101 that failed the checks: 502 */
  unsigned switching : 1;          /* an accepted 101: tunnel or relay next */
  char proto[32];                  /* the protocol the 101 switched to */

  /* The upstream connection. */
  unsigned last_err : 5;  /* how the last connect failed: SY_TERM_CONNECT_FAILED, _TIMEOUT or
                           * SY_TERM_UPSTREAM_TLS; 0 when none did */
  unsigned link_used : 1; /* a connection was taken for this request */
  unsigned retried : 1, fresh_only : 1;
  const sy_server_cfg *retry_from; /* failed, the next pick is a retry (metrics) */
  sy_buf retry_head;               /* the head sent on a reused connection, for one retry;
                                      its capacity survives the reset */

  /* Access log and metrics: loop-independent times (uv_hrtime), -1 = the
   * phase did not happen. */
  uint64_t t_start, bytes_in, bytes_out;
  uint64_t t_connect, t_sent;        /* connect started; request sent upstream */
  int64_t connect_ns, first_byte_ns; /* upstream connect (TLS included); first byte */
  enum sy_term term;                 /* why the exchange ended (SY_TERM_OK by default) */
  unsigned reported : 1;             /* its line and count are written */
} conn_xchg;

struct conn_io;

struct sy_conn {
  sy_conn_env *env;
  sy_conn *next, *prev; /* env->conns */
  sy_config *cfg;       /* the snapshot this connection started with */
  const sy_listener_cfg *lcfg;
  const struct conn_io *io;
  conn_state state; /* set_state only */
  int refs;         /* open handles + requests in flight; freed at 0 once CLOSED */
  sy_sock client;
  uv_timer_t timer;
  sy_link *link;       /* the upstream connection, NULL when none */
  sy_flow fl[2];       /* fl[s] reads side s, writes side 1 - s */
  sy_tls_conn *tls[2]; /* per side; NULL = cleartext */
  conn_xchg x;

  uint64_t deadline, timer_due; /* loop times: the timeout due, the timer set */
  char client_ip[64];
  int client_port;
  struct sockaddr_storage peer, local; /* the client's addresses (a PROXY header's, if any);
                                        local read on demand: conn_local */
  unsigned in_pump : 2;                /* bit per side: tls_pump running (no re-entry) */
  unsigned tls_upgrade_pending : 1;    /* RFC 2817: 101 sent, handshake running */
  unsigned server_counted : 1;         /* counted in the server's active connections */
  unsigned client_counted : 1;         /* counted in max_connections_per_client */
  unsigned handed_off : 1;             /* a spliced tunnel's note took over the counts */
  struct {
    uint64_t start, bytes[2]; /* bytes[s]: read from side s */
    uint64_t counted[2];      /* of those, already in the live tunnel byte series */
    uint64_t counted_at;      /* loop time of the last live report */
    const char *closed_by;
    unsigned reported : 1;
    unsigned shut_pending : 2; /* shutdowns (close_notify, FIN) not yet done */
  } relay;
};

/* The handlers of a mode (HTTP, relay); swapped by assignment to c->io. */
typedef struct conn_io {
  int (*wants)(sy_conn *c, conn_side s);                /* read side s now? */
  void (*read_update)(sy_conn *c, conn_side s);         /* start or stop reading s */
  void (*input)(sy_conn *c, conn_side s, size_t n);     /* n bytes landed in fl[s] */
  void (*eof)(sy_conn *c, conn_side s, ssize_t status); /* side s ended (EOF or error) */
  void (*written)(sy_conn *c, conn_side s, sy_sock_wreq *req, int status); /* fl[s]'s batch */
} conn_io;

extern const conn_io conn_http_io;
extern const conn_io conn_relay_io;
extern const conn_io conn_pp_io; /* a PROXY protocol header before anything else */

static inline int conn_closed(const sy_conn *c) {
  return c->state == CS_CLOSED;
}

/* lifetime.c: lifetime, state, timers */
void conn_set_state(sy_conn *c, conn_state to);
const char *conn_state_name(conn_state s);
void conn_close(sy_conn *c);
/* The client socket's descriptor, given away still in the worker's set; the
 * socket's close callback still comes (the connection's reference). */
int conn_client_release(sy_conn *c);
void conn_linger(sy_conn *c);
void conn_unref(sy_conn *c);
void conn_timer_arm(sy_conn *c, sy_msec_t ms);
sy_msec_t conn_route_timeout(sy_msec_t route_v, sy_msec_t global_v);
sy_msec_t conn_response_timeout(const sy_conn *c);
void conn_xchg_reset(sy_conn *c);
void conn_start(sy_conn *c);
void conn_set_client(sy_conn *c, const struct sockaddr_storage *peer,
                     const struct sockaddr_storage *local);
const struct sockaddr_storage *conn_local(sy_conn *c);

/* proxy_in.c: the PROXY protocol header of listeners[].proxy_protocol */
void conn_pp_failed(sy_conn *c, const char *reason);

/* sides.c: one side's socket plumbing, written once */
sy_sock *conn_stream(sy_conn *c, conn_side s);
const char *conn_side_name(conn_side s);
const char *conn_peer(const sy_conn *c, conn_side s); /* for log lines */
/* Starts or stops reading side s as the mode wants it now (c->io->wants),
 * after the plaintext OpenSSL already holds. */
void conn_read_arm(sy_conn *c, conn_side s);
int conn_flush(sy_conn *c, conn_side s); /* 1 in flight, 0 nothing to write, <0 failed */
int conn_raw_write(sy_conn *c, sy_sock *st, sy_buf *b);
uint32_t conn_buf_cap(const sy_conn *c, conn_side s);
void conn_link_read(sy_link *l); /* read a link with the upstream side's callbacks */

/* tls_side.c: TLS on either side, RFC 2817 */
void conn_tls_pump(sy_conn *c, conn_side s);
int conn_tls_flush(sy_conn *c, conn_side s);
void conn_tls_upgrade_start(sy_conn *c);

/* http_mode.c: the HTTP mode */
void http_feed(sy_conn *c, conn_side s);
void http_flush(sy_conn *c, conn_side s);
void http_exchange_end(sy_conn *c);

/* request.c / response.c */
void request_route(sy_conn *c);
int request_queue_head(sy_conn *c);
void request_remember_method(sy_conn *c);
int response_on_head(sy_flow *f);

/* connect.c: the upstream connection */
void upstream_connect(sy_conn *c);
int upstream_retry_stale(sy_conn *c);
void upstream_ready(sy_conn *c);
void upstream_failed(sy_conn *c, enum sy_term why);
void upstream_link_close(sy_conn *c);
void upstream_link_release(sy_conn *c);

/* local.c: answers the proxy writes itself */
int local_closing(sy_conn *c, int close);
void local_response(sy_conn *c, int status, int close);
void local_error(sy_conn *c, int status, int close, const char *extra_headers);
void local_send(sy_conn *c, int status, int close, sy_buf *b);
void local_426(sy_conn *c);

/* relay.c / handoff.c: after a 101 */
void relay_start(sy_conn *c);
void relay_end(sy_conn *c, const char *reason);
void relay_report(sy_conn *c, const char *reason);
void handoff_start(sy_conn *c);

/* report.c: metrics and access-log records */
typedef struct conn_note conn_note;
void report_request(sy_conn *c);
void report_tunnel_open(const conn_note *n);
void report_tunnel_closed(const conn_note *n, const sy_tunnel_stats *st);
void report_tunnel_bytes(const conn_note *n, const sy_tunnel_bytes *d);
void report_accept(sy_conn_env *env);
void report_conn_closed(sy_conn_env *env);
conn_note report_note_of(sy_conn *c);
/* An exchange cut short (the response was partly sent): its line and count,
 * with the reason, before the connection goes. */
void report_cut(sy_conn *c, enum sy_term why);
/* "ip:port", or "[ip]:port" for IPv6, for diagnostics. */
const char *conn_client_text(const sy_conn *c, char out[80]);

/* What a tunnel needs once its connection is gone: a spliced tunnel keeps
 * this in its own allocation (sy_tunnel_extra), strings inline, not the
 * whole connection, so an idle tunnel costs little more than its sockets. */
struct conn_note {
  sy_conn_env *env;
  sy_config *cfg;     /* keeps the route alive */
  sy_server_set *set; /* keeps the server alive (a DNS change may drop it from the upstream) */
  const sy_route_cfg *route;
  const sy_server_cfg *server;
  const char *proto, *client_ip, *path, *request_id;
  int client_port;
  int client_counted;
};

#endif
