/* Taking an accepted socket from a libuv listener without a libuv handle for
 * it.
 *
 * libuv's listener accepts a connection itself (accept4) and holds it for
 * uv_accept, which can only put it into a uv_tcp_t; the connection code
 * drives its sockets itself (sock.h). So the socket goes into a "catcher"
 * handle that never reads or writes (so it never enters the loop's watcher
 * table or epoll set) and is taken out of it at once by setting the handle's
 * descriptor field back to -1. This leans on what libuv's public struct
 * shows; tests/unit/test_uvfd.c checks that the libuv we build against still
 * behaves so. */
#ifndef SY_UVFD_H
#define SY_UVFD_H

#include <uv.h>

/* The socket waiting on `server` (non-blocking, close-on-exec), owned by the
 * caller; the listener goes on accepting. `catcher`: an initialised TCP
 * handle of the same loop, reused for every accept, closed with the loop.
 * A negative libuv error when there is none or uv_accept fails. */
int sy_uvfd_accept(uv_stream_t *server, uv_tcp_t *catcher);

#endif
