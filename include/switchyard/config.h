/* Immutable, reference-counted configuration snapshot loaded from YAML.
 * A connection holds a reference for as long as it uses anything inside, so a
 * reload never pulls a route out from under an in-flight request or tunnel. */
#ifndef SWITCHYARD_CONFIG_H
#define SWITCHYARD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Durations are kept in milliseconds, sizes in bytes. */
typedef uint64_t sy_msec_t;
/* A route name is a metric label value, which is cut at 256 bytes. */
#define SY_ROUTE_NAME_MAX 256
#define SY_WS_SUBPROTOCOLS_MAX 16 /* websocket.subprotocols entries of a route */
#define SY_WORKERS_MAX 256        /* `workers`, and what `auto` may start */
#define SY_DURATION_MAX_MS (49ull * 24 * 3600 * 1000) /* every duration the loader takes */

typedef struct sy_addr {
  char *text; /* as written: "127.0.0.1:8080", "[::1]:80", "localhost:9000" */
  char *host; /* host part without brackets */
  uint16_t port;
  struct sockaddr_storage sa; /* resolved at load time */
  socklen_t salen;            /* 0: a name left unresolved (SY_CONFIG_NO_RESOLVE) */
} sy_addr;

typedef struct sy_tls_cert {
  char *cert;
  char *key;
} sy_tls_cert;

typedef struct sy_listener_tls {
  int enabled;
  sy_tls_cert *certs;
  size_t ncerts;
  char *min_version; /* "TLS1.2" (default) | "TLS1.3"; NULL = default */
  char *ciphers;     /* NULL = OpenSSL default */
} sy_listener_tls;

enum sy_tls_offer { SY_TLS_OFFER_OFF = 0, SY_TLS_OFFER_OPTIONAL, SY_TLS_OFFER_REQUIRED };

struct sy_tls_ctx;

typedef struct sy_listener_cfg {
  char *name; /* defaults to the address text */
  sy_addr addr;
  sy_listener_tls tls;
  enum sy_tls_offer offer_tls_upgrade;
  unsigned proxy_protocol;    /* PROXY header required first: SY_PP_V1|SY_PP_V2 bits, 0 = off */
  int line, column;           /* where it was declared, for later diagnostics */
  struct sy_tls_ctx *tls_ctx; /* built by sy_config_load when tls is set; freed with the config */
} sy_listener_cfg;

/* Runtime state of a server shared by all workers (atomics) and carried
 * from one config snapshot to the next for the same upstream name and
 * address, so a reload neither forgets the open tunnels (least_conn) nor
 * brings an ejected server back early. Reference-counted. */
typedef struct sy_server_rt {
  int refs;
  int active;             /* connections open to it, tunnels included */
  int down;               /* 1 = ejected (active check or passive failures) */
  int fails;              /* consecutive connect failures */
  uint64_t down_until_ms; /* passive ejection, not probed: retry after (0: at once) */
  uint64_t ejections;     /* times `down` went 0 -> 1 (rendered by the admin listener) */
  /* Written by the health checks (main thread): whether a probe watches the
   * server now, so only a probe brings it back, and the probes' runs, kept
   * across the checks' restarts (reloads, DNS changes). */
  int probed;
  unsigned probe_ok_run, probe_fail_run;
} sy_server_rt;

typedef struct sy_server_cfg {
  sy_addr addr;
  unsigned weight; /* default 1 */
  sy_server_rt *rt;
  /* addr.host is a DNS name: addr.sa is unset, the resolver turns every
   * address it finds into a server of the upstream's server set. */
  int dns;
  /* The set that holds it (a number no other set has) and its place there:
   * what the per-worker metrics cache knows its series by. */
  uint32_t set_serial, set_index;
} sy_server_cfg;

struct sy_server_set;

enum sy_balance { SY_BALANCE_ROUND_ROBIN = 0, SY_BALANCE_LEAST_CONN, SY_BALANCE_HASH };

typedef struct sy_upstream_tls {
  int enabled;
  int verify; /* default 1 when tls is present */
  char *ca, *sni, *cert, *key;
} sy_upstream_tls;

/* The probe's path is written into its request line as it is. */
#define SY_HEALTH_PATH_MAX 256

typedef struct sy_health_cfg {
  int enabled;
  char *path;
  sy_msec_t interval, timeout;
  unsigned healthy, unhealthy;
} sy_health_cfg;

typedef struct sy_upstream_cfg {
  char *name;
  enum sy_balance balance;
  char *hash_key; /* for hash(header:X-User) -> "header:X-User" */
  sy_server_cfg *servers;
  size_t nservers;
  sy_upstream_tls tls;
  sy_health_cfg health;
  unsigned keepalive_max_idle; /* idle connections kept per worker and server; 0 = none */
  sy_msec_t keepalive_idle;    /* how long one may stay idle */
  unsigned send_proxy;         /* PROXY header on each new connection: SY_PP_V1, SY_PP_V2 or 0 */
  /* The one mutable member: the round-robin cursor, shared by all workers
   * (atomic increments) so balancing is even whichever worker accepted. */
  unsigned rr_next;
  struct sy_tls_ctx *tls_ctx; /* built by sy_config_load when tls is set */
  int dynamic;                /* some server is a DNS name */
  /* The servers requests go to now (upstream.h): built at load; for a
   * dynamic upstream, replaced by the resolver as answers change. Read only
   * through sy_upstream_acquire. */
  struct sy_server_set *set;
  int set_readers;
} sy_upstream_cfg;

typedef struct sy_header_match {
  char *name;
  char *value; /* NULL: the field only has to be present */
} sy_header_match;

/* Per-route timeouts; 0 means "inherit the global value". */
typedef struct sy_timeouts {
  sy_msec_t connect, response, client_idle, header, tunnel_idle, tunnel_fin;
  sy_msec_t drain;     /* global only: how long SIGTERM lets tunnels end on their own */
  sy_msec_t body_idle; /* global only: a request body that stalls this long -> 408 */
} sy_timeouts;

typedef struct sy_route_cfg {
  char *name; /* optional; logs use "#<index>" when absent */
  /* match */
  char *host; /* NULL = any; "*.example.com" = suffix; compared lower-case, port ignored */
  char *path_prefix;
  char *path; /* exact */
  char **methods;
  size_t nmethods;
  sy_header_match *headers;
  size_t nheaders;
  char **match_upgrade; /* only upgrade requests offering one of these tokens match */
  size_t nmatch_upgrade;

  char *upstream_name;
  const sy_upstream_cfg *upstream; /* resolved at load */

  /* allow_upgrades: absent -> ["*"]; [] -> none. "*" = every token but h2c. */
  char **allow_upgrades;
  size_t nallow_upgrades;
  int allow_any_upgrade; /* "*" was listed */

  int ws_check_accept;
  char **ws_subprotocols;
  size_t nws_subprotocols;
  int ws_subprotocols_set; /* the key was present, even if empty */

  int require_tls;
  sy_timeouts timeouts;
  size_t index; /* position in the routes list, for logs */
  int line, column;
} sy_route_cfg;

typedef struct sy_limits {
  uint64_t max_connections;            /* default 100000 */
  uint64_t max_header_bytes;           /* default 32 KiB */
  uint64_t max_headers;                /* default 100 */
  uint64_t max_connections_per_client; /* per client address; default 0 = unlimited */
  uint64_t max_tunnels;                /* switched connections at once; default 0 = unlimited */
} sy_limits;

typedef struct sy_forwarding {
  int x_forwarded_for, x_forwarded_proto, x_forwarded_host, via; /* all default 1 */
  int request_id;          /* default 0: send the id upstream and back (always logged) */
  char *request_id_header; /* default "X-Request-Id" (set at load, never NULL) */
} sy_forwarding;

/* Request-path normalisation before routing (see uri.h). */
typedef struct sy_paths {
  int normalize;              /* default 1; 0 routes and forwards the path as sent */
  int merge_slashes;          /* default 1 */
  int reject_escaped_slashes; /* escaped_slashes: reject (default keep) */
} sy_paths;

/* resolver: how DNS names of upstream servers are looked up. */
typedef struct sy_resolver_cfg {
  char **nameservers; /* "host:port", "[v6]:port"; none = /etc/resolv.conf */
  size_t nnameservers;
  sy_msec_t min_ttl, max_ttl; /* bounds on the answers' TTL (default 1s, 5m) */
} sy_resolver_cfg;

typedef struct sy_config {
  int refs; /* atomic via __atomic builtins */
  /* Run-time state another module attached to the snapshot (the upstream
   * module's server sets, sy_upstream_prepare) is released through this,
   * first thing when the snapshot is freed; the loader never names it. */
  void (*release)(struct sy_config *cfg);
  uint64_t serial; /* 1, 2, ... per snapshot loaded: unique for the process's lifetime */
  char *path;
  unsigned workers;        /* 0 = auto */
  int worker_cpu_affinity; /* 1 = auto: worker i on the i-th CPU of the mask */
  sy_listener_cfg *listeners;
  size_t nlisteners;
  int admin_enabled;
  sy_addr admin_addr;
  char *admin_token; /* admin.token, or admin.token_file's content; NULL = no auth */
  sy_upstream_cfg *upstreams;
  size_t nupstreams;
  sy_route_cfg *routes;
  size_t nroutes;
  sy_limits limits;
  sy_timeouts timeouts; /* global defaults, all non-zero after load */
  sy_forwarding forwarding;
  sy_paths paths;
  sy_resolver_cfg resolver;
  char *access_log; /* NULL or "stdout" = stdout, "off", or a file path */
  int log_level;    /* enum sy_log_level, default info */
  int log_format;   /* enum sy_log_format, default text */
} sy_config;

/* Error text is "file:line:column: message". */
typedef struct sy_config_error {
  char msg[512];
} sy_config_error;

/* Returns a config with one reference, or NULL with *err filled. */
sy_config *sy_config_load(const char *path, sy_config_error *err);
/* Same, from a buffer; `name` is used in messages in place of a file name. */
sy_config *sy_config_load_string(const char *name, const char *yaml, size_t len,
                                 sy_config_error *err);

/* Load flags. SY_CONFIG_NO_RESOLVE (`switchyard -t`): upstream host names are
 * checked for syntax but not looked up (their addr.salen stays 0), and
 * admin.token_file is not read (a mounted secret), so a check gives the same
 * answer on a machine that cannot resolve the names or lacks the secret. Such a config
 * is for checking only: it cannot be run. */
enum { SY_CONFIG_NO_RESOLVE = 1u };
sy_config *sy_config_load_flags(const char *path, unsigned flags, sy_config_error *err);
sy_config *sy_config_load_string_flags(const char *name, const char *yaml, size_t len,
                                       unsigned flags, sy_config_error *err);
sy_config *sy_config_ref(sy_config *cfg);
/* Takes over the runtime state (server counters and health, balancing
 * cursors) of `old` for every upstream server `cfg` shares with it. */
void sy_config_adopt_state(sy_config *cfg, const sy_config *old);
/* A server's runtime state outlives snapshots while something holds it (a
 * pooled upstream connection, a reload's adoption). */
void sy_server_rt_ref(sy_server_rt *rt);
void sy_server_rt_unref(sy_server_rt *rt);
void sy_config_unref(sy_config *cfg);

/* Strict parsers: "250ms", "10s", "5m", "1h", "2d" (integer and unit, nothing
 * else) and "512", "32KiB", "1MiB", "1GiB", "10KB" (KB = 1000). Return 0 on
 * success, -1 on anything else (empty, sign, space, overflow, unknown unit). */
int sy_parse_duration(const char *s, sy_msec_t *out);
int sy_parse_size(const char *s, uint64_t *out);

#endif
