/* Taking a socket away from a libuv TCP handle without a dup.
 *
 * libuv has no call that lets go of a stream's descriptor: closing the handle
 * closes the socket. The tunnel hub wants the socket itself (a dup and a close
 * per socket cost two system calls and, while both exist, a descriptor). These
 * two steps lean on what libuv's public struct shows: a stream that is neither
 * reading nor writing is out of the loop's watcher table, and a handle whose
 * descriptor field is -1 closes nothing. tests/unit/test_uvfd.c checks that
 * the libuv we build against still behaves so. */
#ifndef SY_UVFD_H
#define SY_UVFD_H

#include <uv.h>

/* Stops reading and takes the socket out of the loop's epoll set; the handle
 * still owns it (closing the handle closes it). -1: the handle is still
 * writing or has no socket, nothing changed but the read stop. */
int sy_uvfd_take(uv_tcp_t *h);

/* After sy_uvfd_take: the handle forgets its socket, so uv_close leaves it
 * open; the caller owns it from here. */
void sy_uvfd_forget(uv_tcp_t *h);

#endif
