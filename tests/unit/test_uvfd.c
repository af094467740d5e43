/* sy_uvfd: the socket taken from a libuv handle stays open and leaves the
 * loop alone; a handle still writing keeps its socket. This is the contract
 * the tunnel hand-off relies on, checked against the libuv we link. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchyard/uvfd.h"

static int reads, closed;

/* A connected loopback pair: *a for libuv, *b the test's blocking end. */
static void tcp_pair(int *a, int *b) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(listen(l, 1), 0);
  ck_assert_int_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
  *b = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_eq(connect(*b, (struct sockaddr *)&sa, sizeof(sa)), 0);
  *a = accept(l, NULL, NULL);
  ck_assert_int_ge(*a, 0);
  close(l);
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  static char mem[256];
  buf->base = mem;
  buf->len = sizeof(mem);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n > 0) reads++;
}

static void on_close(uv_handle_t *h) {
  closed++;
}

static void on_write(uv_write_t *w, int status) {}

/* Runs the loop without blocking until cond holds (bounded). */
#define RUN_UNTIL(loop, cond)                                                                      \
  for (int i_ = 0; i_ < 1000 && !(cond); i_++) {                                                   \
    uv_run(loop, UV_RUN_NOWAIT);                                                                   \
    usleep(1000);                                                                                  \
  }

START_TEST(test_taken_socket_outlives_the_handle) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int a, b;
  tcp_pair(&a, &b);
  uv_tcp_t h;
  uv_tcp_init(&loop, &h);
  ck_assert_int_eq(uv_tcp_open(&h, a), 0);
  reads = closed = 0;
  ck_assert_int_eq(uv_read_start((uv_stream_t *)&h, on_alloc, on_read), 0);
  ck_assert_int_eq(write(b, "x", 1), 1);
  RUN_UNTIL(&loop, reads == 1);
  ck_assert_int_eq(reads, 1); /* registered in the loop's epoll set */

  ck_assert_int_eq(sy_uvfd_take(&h), a);
  sy_uvfd_forget(&h);
  uv_close((uv_handle_t *)&h, on_close);
  RUN_UNTIL(&loop, closed == 1);
  ck_assert_int_eq(closed, 1);
  ck_assert_int_ne(fcntl(a, F_GETFD), -1); /* still open */
  /* Out of the loop's epoll set: already removed, so this finds nothing. */
  ck_assert_int_eq(epoll_ctl(uv_backend_fd(&loop), EPOLL_CTL_DEL, a, NULL), -1);
  ck_assert_int_eq(errno, ENOENT);

  /* Bytes that arrive now are the new owner's, and wake no one in libuv. */
  ck_assert_int_eq(write(b, "yz", 2), 2);
  for (int i = 0; i < 20; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(reads, 1);
  char got[4];
  ck_assert_int_eq(recv(a, got, sizeof(got), 0), 2);
  ck_assert(memcmp(got, "yz", 2) == 0);
  close(a);
  close(b);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(test_writing_handle_keeps_its_socket) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int a, b;
  tcp_pair(&a, &b);
  int small = 4096;
  setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  uv_tcp_t h;
  uv_tcp_init(&loop, &h);
  ck_assert_int_eq(uv_tcp_open(&h, a), 0);
  /* The peer does not read: fill the send path until a write must queue. */
  static char chunk[65536];
  uv_buf_t buf = uv_buf_init(chunk, sizeof(chunk));
  for (int i = 0; i < 1000 && uv_try_write((uv_stream_t *)&h, &buf, 1) > 0; i++) {
  }
  uv_write_t w;
  ck_assert_int_eq(uv_write(&w, (uv_stream_t *)&h, &buf, 1, on_write), 0);
  ck_assert_uint_gt(uv_stream_get_write_queue_size((uv_stream_t *)&h), 0);
  ck_assert_int_eq(sy_uvfd_take(&h), -1);
  /* Still the handle's: closing it closes the socket. */
  closed = 0;
  uv_close((uv_handle_t *)&h, on_close);
  RUN_UNTIL(&loop, closed == 1);
  ck_assert_int_eq(closed, 1);
  ck_assert_int_eq(fcntl(a, F_GETFD), -1);
  close(b);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("uvfd");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_taken_socket_outlives_the_handle);
  tcase_add_test(tc, test_writing_handle_keeps_its_socket);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}
