/* The switched connection: after a 101, the client and upstream sockets are
 * joined into a raw bidirectional byte tunnel.
 *
 * Each direction moves bytes source -> pipe -> destination with splice(2), so
 * payload never enters user space; a buffered read/write path is used instead
 * when asked (force_copy) or when the kernel refuses splice on a socket.
 * A direction holds a pipe (or a copy buffer) only while it has bytes in flight.
 * At most one pipe's worth (256 KiB) per direction is ever in flight: when the
 * destination is full the source stops being read (backpressure).
 *
 * Tunnels live in a hub, one per loop: the hub has a timer wheel for the idle
 * and FIN timeouts and the pipe pool, and its tunnels' sockets are in the
 * worker's edge-triggered epoll set (evset.h). So a tunnel is one small
 * allocation and two epoll entries, with no libuv handle of its own; an idle
 * tunnel costs its sockets and a few hundred bytes, and moving bytes needs no
 * epoll_ctl.
 *
 * Requirements on the process: SIGPIPE must be ignored (splice(2) into a socket
 * whose peer is gone raises it, and unlike send() it has no MSG_NOSIGNAL).
 * Everything runs on the loop's thread. */
#ifndef SWITCHYARD_TUNNEL_H
#define SWITCHYARD_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "switchyard/evset.h"
#include "switchyard/pipepool.h"

typedef struct sy_tunnel sy_tunnel;
typedef struct sy_tunnel_hub sy_tunnel_hub;

typedef struct sy_tunnel_opts {
  /* No byte either way for this long -> close, reason "idle_timeout". 0: never. */
  uint64_t idle_timeout_ms;
  /* After the first FIN (from either side), the other direction may go on at
   * most this long -> close, reason "fin_timeout". 0: no limit (idle still applies). */
  uint64_t fin_timeout_ms;
  /* Use the buffered read/write path instead of splice. It is also switched to
   * automatically, per direction, when splice fails with EINVAL/ENOSYS. */
  int force_copy;
  /* The caller promises both fds are already non-blocking and are the only
   * descriptors of their sockets (no dup kept anywhere): then no fcntl at the
   * start, and at the end close() alone takes them out of the hub's epoll set.
   * Four syscalls fewer per tunnel; what a handshake costs is mostly syscalls. */
  int exclusive;
  /* Both fds are already in the hub's epoll set for reading and writing (a
   * connection's sockets, sy_sock): the tunnel takes their events over with
   * no system call. Implies exclusive. readable/rdhup: what their last owner
   * knew (an edge already reported is not reported again). */
  int registered;
  uint8_t readable[2], rdhup[2];
} sy_tunnel_opts;

/* Payload bytes: each way, and of their sum how they moved. */
typedef struct sy_tunnel_bytes {
  uint64_t c2u, u2c, spliced, copied;
} sy_tunnel_bytes;

typedef struct sy_tunnel_stats {
  uint64_t bytes_c2u, bytes_u2c; /* payload bytes delivered each way, pending bytes included */
  uint64_t spliced, copied;      /* of those, how they moved (pending bytes count as copied) */
  uint64_t duration_ms;          /* from sy_tunnel_start to close (or to now while live) */
  uint64_t wakeups;              /* epoll events handled for this tunnel */
  const char *closed_by;         /* "client" | "upstream" | "proxy"; NULL while live */
  /* "eof" (both directions finished cleanly; closed_by = the side whose FIN came
   * first), "reset" (ECONNRESET/EPIPE), "error" (any other failure; closed_by
   * "proxy" when it was ours, e.g. ENOMEM), "idle_timeout", "fin_timeout", or the
   * reason given to sy_tunnel_close ("shutdown" by default). NULL while live. */
  const char *reason;
  /* The bytes above not yet passed to the progress callback (all of them when
   * the hub has none): what the owner adds to its counters at the end. */
  sy_tunnel_bytes unreported;
} sy_tunnel_stats;

/* Called exactly once per tunnel, from the set's work at the end of a turn
 * (never from inside sy_tunnel_start or sy_tunnel_close), after both fds are
 * closed. st and its strings are valid only during the call; the tunnel (and
 * its extra area) is freed when the callback returns. The hub no longer
 * counts it. */
typedef void (*sy_tunnel_done_cb)(sy_tunnel *t, const sy_tunnel_stats *st, void *arg);

/* Live byte counts: about every interval, for each tunnel that moved bytes
 * since its last report, the bytes moved since then (never called from inside
 * sy_tunnel_start, sy_tunnel_close or a done callback; t may be closed from
 * here). A tunnel's progress reports plus its done callback's `unreported`
 * add up to its totals exactly. */
typedef void (*sy_tunnel_progress_cb)(sy_tunnel *t, const sy_tunnel_bytes *delta, void *arg);

/* NULL on failure (allocation). The tunnels' sockets go into `ev`, the
 * worker's epoll set; each tunnel holds it (keeps the loop alive). */
sy_tunnel_hub *sy_tunnel_hub_new(sy_evset *ev, sy_pipe_pool *pool, sy_tunnel_done_cb cb);
/* Turns progress reports on (cb NULL: off). interval_ms 0 means 1000. The
 * cost on the byte path is a flag test per move; the hub's timer runs only
 * while it holds tunnels. */
void sy_tunnel_hub_set_progress(sy_tunnel_hub *h, sy_tunnel_progress_cb cb, uint64_t interval_ms);

/* Tunnels started and not yet reported done. */
size_t sy_tunnel_hub_count(const sy_tunnel_hub *h);

/* sy_tunnel_close on every live tunnel. */
void sy_tunnel_hub_close_all(sy_tunnel_hub *h, const char *reason);

/* Closes the hub's handles; the hub is freed once libuv has closed them (run
 * the loop). The count must be 0. */
void sy_tunnel_hub_free(sy_tunnel_hub *h);

/* Takes ownership of both fds (already dup'd by the caller, no other watcher on
 * them; they are made non-blocking here unless opts->exclusive says they are).
 * The pending bytes, read past the HTTP heads, are copied and delivered before
 * anything else each way: to_upstream before any client byte, to_client before
 * any upstream byte.
 * extra: bytes the caller wants kept with the tunnel (sy_tunnel_extra), zeroed,
 * so per-tunnel bookkeeping costs no allocation of its own.
 * On an error the peers get an RST (SO_LINGER 0) so neither mistakes a broken
 * tunnel for a clean end; so does a peer whose in-flight bytes were dropped by a
 * timeout or sy_tunnel_close. Clean ends and idle closes send FIN.
 * Nothing moves before the next loop turn. Returns NULL on failure (allocation,
 * an fd epoll refuses): the fds are then neither closed nor owned, and the done
 * callback is never called. */
sy_tunnel *sy_tunnel_start(sy_tunnel_hub *h, int client_fd, int upstream_fd,
                           const char *to_upstream, size_t to_upstream_len, const char *to_client,
                           size_t to_client_len, const sy_tunnel_opts *opts, size_t extra,
                           void *arg);

/* The caller's area of `extra` bytes (suitably aligned for any type). */
void *sy_tunnel_extra(sy_tunnel *t);

/* Proxy-initiated close (shutdown, drain): closed_by "proxy", reason as given
 * (a string that outlives the tunnel, e.g. a literal; NULL means "shutdown").
 * Asynchronous: the fds are closed before this returns, but the done callback
 * runs on a later loop turn. Until then t stays valid and further
 * sy_tunnel_close calls are no-ops; calling it from the done callback is a
 * no-op too. Never call it after the done callback has returned (t is freed). */
void sy_tunnel_close(sy_tunnel *t, const char *reason);

/* Live counters (duration so far; closed_by/reason NULL until the tunnel closes). */
void sy_tunnel_stats_get(const sy_tunnel *t, sy_tunnel_stats *out);

#endif
