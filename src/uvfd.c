/* See uvfd.h for why this reaches into the handle. */
#include "switchyard/uvfd.h"

#include <errno.h>
#include <sys/epoll.h>

int sy_uvfd_take(uv_tcp_t *h) {
  int fd = h->io_watcher.fd;
  uv_read_stop((uv_stream_t *)h);
  /* pevents 0: the loop's watcher table no longer points at this handle, so
   * nothing in libuv will touch the socket again except the close. */
  if (fd < 0 || h->io_watcher.pevents != 0 || uv_stream_get_write_queue_size((uv_stream_t *)h))
    return -1;
  /* libuv removes a stopped socket from epoll lazily, at its next event;
   * that event would wake the loop for a socket it no longer serves. */
  if (epoll_ctl(uv_backend_fd(h->loop), EPOLL_CTL_DEL, fd, NULL) < 0 && errno != ENOENT) return -1;
  return fd;
}

void sy_uvfd_forget(uv_tcp_t *h) {
  h->io_watcher.fd = -1;
}
