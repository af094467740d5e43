/* The switched connection: after a 101, the client and upstream sockets are
 * joined into a raw bidirectional byte tunnel.
 *
 * Each direction moves bytes source -> pipe -> destination with splice(2), so
 * payload never enters user space; a buffered read/write path is used instead
 * when asked (force_copy) or when the kernel refuses splice on a socket.
 * A direction holds a pipe (or a copy buffer) only while it has bytes in flight:
 * an idle tunnel costs two fds, two poll watchers and a timer, nothing more.
 * At most one pipe's worth (64 KiB) per direction is ever in flight: when the
 * destination is full the source stops being read (backpressure).
 *
 * Requirements on the process: SIGPIPE must be ignored (splice(2) into a socket
 * whose peer is gone raises it, and unlike send() it has no MSG_NOSIGNAL).
 * Everything runs on the loop's thread; the pool must belong to that loop. */
#ifndef SWITCHYARD_TUNNEL_H
#define SWITCHYARD_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "switchyard/pipepool.h"

typedef struct sy_tunnel sy_tunnel;

typedef struct sy_tunnel_opts {
  /* No byte either way for this long -> close, reason "idle_timeout". 0: never. */
  uint64_t idle_timeout_ms;
  /* After the first FIN (from either side), the other direction may go on at
   * most this long -> close, reason "fin_timeout". 0: no limit (idle still applies). */
  uint64_t fin_timeout_ms;
  /* Use the buffered read/write path instead of splice. It is also switched to
   * automatically, per direction, when splice fails with EINVAL/ENOSYS. */
  int force_copy;
} sy_tunnel_opts;

typedef struct sy_tunnel_stats {
  uint64_t bytes_c2u, bytes_u2c; /* payload bytes delivered each way, pending bytes included */
  uint64_t spliced, copied;      /* of those, how they moved (pending bytes count as copied) */
  uint64_t duration_ms;          /* from sy_tunnel_start to close (or to now while live) */
  uint64_t wakeups;              /* poll callbacks run; a level-triggered spin shows here */
  const char *closed_by;         /* "client" | "upstream" | "proxy"; NULL while live */
  /* "eof" (both directions finished cleanly; closed_by = the side whose FIN came
   * first), "reset" (ECONNRESET/EPIPE), "error" (any other failure; closed_by
   * "proxy" when it was ours, e.g. ENOMEM), "idle_timeout", "fin_timeout", or the
   * reason given to sy_tunnel_close ("shutdown" by default). NULL while live. */
  const char *reason;
} sy_tunnel_stats;

/* Called exactly once, always from a libuv callback (never from inside
 * sy_tunnel_start or sy_tunnel_close), after both fds are closed and every
 * handle's close callback has run. st and its strings are valid only during the
 * call; the tunnel frees itself when the callback returns, so forget t there. */
typedef void (*sy_tunnel_done_cb)(sy_tunnel *t, const sy_tunnel_stats *st, void *arg);

/* Takes ownership of both fds (already dup'd by the caller, no other libuv handle
 * on them; they are made non-blocking here). The pending bytes, read past the HTTP
 * heads, are copied and delivered before anything else each way: to_upstream
 * before any client byte, to_client before any upstream byte.
 * On an error the peers get an RST (SO_LINGER 0) so neither mistakes a broken
 * tunnel for a clean end; so does a peer whose in-flight bytes were dropped by a
 * timeout or sy_tunnel_close. Clean ends and idle closes send FIN.
 * Returns NULL on failure (allocation, or libuv refusing an fd for polling):
 * the fds are then neither closed nor owned, and done_cb is never called. */
sy_tunnel *sy_tunnel_start(uv_loop_t *loop, sy_pipe_pool *pool, int client_fd, int upstream_fd,
                           const char *to_upstream, size_t to_upstream_len, const char *to_client,
                           size_t to_client_len, const sy_tunnel_opts *opts, sy_tunnel_done_cb cb,
                           void *arg);

/* Proxy-initiated close (shutdown, drain): closed_by "proxy", reason as given
 * (copied, at most 31 chars; NULL means "shutdown").
 * Asynchronous: the fds are closed before this returns, but done_cb runs on a
 * later loop turn, once libuv has closed the handles. Until then t stays valid
 * and further sy_tunnel_close calls are no-ops; calling it from done_cb is a
 * no-op too. Never call it after done_cb has returned (t is freed). */
void sy_tunnel_close(sy_tunnel *t, const char *reason);

/* Live counters (duration so far; closed_by/reason NULL until the tunnel closes). */
void sy_tunnel_stats_get(const sy_tunnel *t, sy_tunnel_stats *out);

#endif
