/* sy_uvfd_accept: the socket taken from a libuv listener is open,
 * non-blocking and outside the loop's epoll set; closing the catcher leaves
 * it open; the listener goes on accepting. This is the contract the
 * connection code relies on, checked against the libuv we link. */
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

typedef struct fx {
  uv_tcp_t listener, catcher;
  int fds[4];
  int n, closed;
} fx;

static void on_conn(uv_stream_t *s, int status) {
  fx *f = s->data;
  ck_assert_int_eq(status, 0);
  int fd = sy_uvfd_accept(s, &f->catcher);
  ck_assert_int_ge(fd, 0);
  if (f->n < 4) f->fds[f->n++] = fd;
}

static void on_close(uv_handle_t *h) {
  fx *f = h->data;
  f->closed++;
}

/* Runs the loop without blocking until cond holds (bounded). */
#define RUN_UNTIL(loop, cond)                                                                      \
  for (int i_ = 0; i_ < 1000 && !(cond); i_++) {                                                   \
    uv_run(loop, UV_RUN_NOWAIT);                                                                   \
    usleep(1000);                                                                                  \
  }

static int connect_to(const struct sockaddr_in *sa) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_eq(connect(c, (const struct sockaddr *)sa, sizeof(*sa)), 0);
  return c;
}

START_TEST(test_accepted_sockets_are_the_callers) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fx f = {.n = 0};
  ck_assert_int_eq(uv_tcp_init(&loop, &f.listener), 0);
  ck_assert_int_eq(uv_tcp_init(&loop, &f.catcher), 0);
  f.listener.data = f.catcher.data = &f;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(uv_tcp_bind(&f.listener, (const struct sockaddr *)&sa, 0), 0);
  int len = sizeof(sa);
  ck_assert_int_eq(uv_tcp_getsockname(&f.listener, (struct sockaddr *)&sa, &len), 0);
  ck_assert_int_eq(uv_listen((uv_stream_t *)&f.listener, 8, on_conn), 0);

  /* Three connections, one catcher: each accept gives a socket of its own. */
  int peers[3];
  for (int i = 0; i < 3; i++)
    peers[i] = connect_to(&sa);
  RUN_UNTIL(&loop, f.n == 3);
  ck_assert_int_eq(f.n, 3);
  ck_assert_int_ne(f.fds[0], f.fds[1]);
  ck_assert_int_ne(f.fds[1], f.fds[2]);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_ne(fcntl(f.fds[i], F_GETFL) & O_NONBLOCK, 0);
    ck_assert_int_ne(fcntl(f.fds[i], F_GETFD) & FD_CLOEXEC, 0);
    /* Never in the loop's epoll set: libuv does not watch it. */
    ck_assert_int_eq(epoll_ctl(uv_backend_fd(&loop), EPOLL_CTL_DEL, f.fds[i], NULL), -1);
    ck_assert_int_eq(errno, ENOENT);
  }

  /* Closing the catcher closes none of them: bytes still flow both ways. */
  uv_close((uv_handle_t *)&f.catcher, on_close);
  RUN_UNTIL(&loop, f.closed == 1);
  ck_assert_int_eq(f.closed, 1);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(write(peers[i], "x", 1), 1);
    char b = 0;
    struct timeval tv = {.tv_sec = 5};
    ck_assert_int_eq(fcntl(f.fds[i], F_SETFL, 0), 0);
    ck_assert_int_eq(setsockopt(f.fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    ck_assert_int_eq(read(f.fds[i], &b, 1), 1);
    ck_assert_int_eq(b, 'x');
    ck_assert_int_eq(write(f.fds[i], "y", 1), 1);
    ck_assert_int_eq(read(peers[i], &b, 1), 1);
    ck_assert_int_eq(b, 'y');
    close(f.fds[i]);
    close(peers[i]);
  }
  uv_close((uv_handle_t *)&f.listener, on_close);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(f.closed, 2);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("uvfd");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_accepted_sockets_are_the_callers);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}
