/* See uvfd.h for why this reaches into the handle. */
#include "switchyard/uvfd.h"

int sy_uvfd_accept(uv_stream_t *server, uv_tcp_t *catcher) {
  int rc = uv_accept(server, (uv_stream_t *)catcher);
  if (rc < 0) return rc;
  int fd = catcher->io_watcher.fd;
  catcher->io_watcher.fd = -1; /* closing the catcher closes nothing */
  return fd;
}
