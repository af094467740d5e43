/* Pipe pool: lending, reuse, the max_idle bound, counters, and fd hygiene. */
#include "switchyard/pipepool.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static sy_pipe_pool_stats pool_stats(const sy_pipe_pool *p) {
  sy_pipe_pool_stats st;
  sy_pipe_pool_stats_get(p, &st);
  return st;
}

static int fd_is_open(int fd) {
  return fcntl(fd, F_GETFD) >= 0;
}

START_TEST(test_get_gives_nonblocking_cloexec_256k_pipe) {
  sy_pipe_pool *p = sy_pipe_pool_new(4);
  ck_assert_ptr_nonnull(p);
  int fds[2] = {-1, -1};
  ck_assert_int_eq(sy_pipe_pool_get(p, fds), 256 * 1024);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_ge(fds[i], 0);
    ck_assert(fcntl(fds[i], F_GETFL) & O_NONBLOCK);
    ck_assert(fcntl(fds[i], F_GETFD) & FD_CLOEXEC);
  }
  ck_assert_int_eq(fcntl(fds[1], F_GETPIPE_SZ), 256 * 1024);
  /* fds[1] writes into fds[0] */
  ck_assert_int_eq(write(fds[1], "x", 1), 1);
  char c = 0;
  ck_assert_int_eq(read(fds[0], &c, 1), 1);
  ck_assert_int_eq(c, 'x');
  /* empty and non-blocking: EAGAIN, not a hang */
  ck_assert_int_eq(read(fds[0], &c, 1), -1);
  ck_assert_int_eq(errno, EAGAIN);
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.in_use, 1);
  ck_assert_uint_eq(st.idle, 0);
  ck_assert_uint_eq(st.created, 1);
  ck_assert_uint_eq(st.closed, 0);
  sy_pipe_pool_put(p, fds, 256 * 1024);
  ck_assert_int_eq(fds[0], -1);
  ck_assert_int_eq(fds[1], -1);
  sy_pipe_pool_free(p);
}
END_TEST

START_TEST(test_put_then_get_reuses_the_same_pipe) {
  sy_pipe_pool *p = sy_pipe_pool_new(4);
  int a[2], b[2];
  ck_assert_int_eq(sy_pipe_pool_get(p, a), 256 * 1024);
  int r0 = a[0], w0 = a[1];
  sy_pipe_pool_put(p, a, 256 * 1024);
  ck_assert_uint_eq(pool_stats(p).idle, 1);
  ck_assert_uint_eq(pool_stats(p).in_use, 0);
  ck_assert_int_eq(sy_pipe_pool_get(p, b), 256 * 1024);
  ck_assert_int_eq(b[0], r0);
  ck_assert_int_eq(b[1], w0);
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.created, 1); /* no second pipe2() */
  ck_assert_uint_eq(st.in_use, 1);
  ck_assert_uint_eq(st.idle, 0);
  sy_pipe_pool_put(p, b, 256 * 1024);
  sy_pipe_pool_free(p);
}
END_TEST

START_TEST(test_max_idle_bounds_kept_pipes) {
  enum { N = 5, MAX_IDLE = 2 };
  sy_pipe_pool *p = sy_pipe_pool_new(MAX_IDLE);
  int fds[N][2], saved[N][2];
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(sy_pipe_pool_get(p, fds[i]), 256 * 1024);
    saved[i][0] = fds[i][0];
    saved[i][1] = fds[i][1];
  }
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.in_use, N);
  ck_assert_uint_eq(st.created, N);
  for (int i = 0; i < N; i++)
    sy_pipe_pool_put(p, fds[i], 256 * 1024);
  st = pool_stats(p);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.idle, MAX_IDLE);
  ck_assert_uint_eq(st.closed, N - MAX_IDLE);
  /* the first MAX_IDLE returned are kept, the rest really closed */
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(fd_is_open(saved[i][0]), i < MAX_IDLE);
    ck_assert_int_eq(fd_is_open(saved[i][1]), i < MAX_IDLE);
  }
  sy_pipe_pool_free(p);
  for (int i = 0; i < MAX_IDLE; i++)
    ck_assert(!fd_is_open(saved[i][0]));
}
END_TEST

START_TEST(test_max_idle_zero_closes_every_returned_pipe) {
  sy_pipe_pool *p = sy_pipe_pool_new(0);
  int fds[2];
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(sy_pipe_pool_get(p, fds), 256 * 1024);
    int r = fds[0];
    sy_pipe_pool_put(p, fds, 256 * 1024);
    ck_assert(!fd_is_open(r));
  }
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.created, 3);
  ck_assert_uint_eq(st.closed, 3);
  ck_assert_uint_eq(st.idle, 0);
  sy_pipe_pool_free(p);
}
END_TEST

START_TEST(test_drop_closes_a_full_pipe_instead_of_pooling_it) {
  sy_pipe_pool *p = sy_pipe_pool_new(4);
  int fds[2];
  ck_assert_int_eq(sy_pipe_pool_get(p, fds), 256 * 1024);
  ck_assert_int_eq(write(fds[1], "secret", 6), 6);
  int r = fds[0];
  sy_pipe_pool_drop(p, fds);
  ck_assert_int_eq(fds[0], -1);
  ck_assert(!fd_is_open(r));
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.idle, 0);
  ck_assert_uint_eq(st.closed, 1);
  /* the next borrower gets a fresh, empty pipe */
  ck_assert_int_eq(sy_pipe_pool_get(p, fds), 256 * 1024);
  char c;
  ck_assert_int_eq(read(fds[0], &c, 1), -1);
  ck_assert_int_eq(errno, EAGAIN);
  sy_pipe_pool_put(p, fds, 256 * 1024);
  sy_pipe_pool_free(p);
}
END_TEST

START_TEST(test_get_reports_emfile) {
  sy_pipe_pool *p = sy_pipe_pool_new(1);
  struct rlimit old, low;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  int probe = dup(0);
  ck_assert_int_ge(probe, 0);
  close(probe);
  /* the lowest free fd is probe: a limit of probe leaves no room for two more */
  low = old;
  low.rlim_cur = (rlim_t)probe;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  int fds[2];
  int r = sy_pipe_pool_get(p, fds);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(r, -EMFILE);
  sy_pipe_pool_stats st = pool_stats(p);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.created, 0);
  /* and it recovers once fds are available again */
  ck_assert_int_eq(sy_pipe_pool_get(p, fds), 256 * 1024);
  sy_pipe_pool_put(p, fds, 256 * 1024);
  sy_pipe_pool_free(p);
}
END_TEST

START_TEST(test_free_closes_idle_pipes) {
  sy_pipe_pool *p = sy_pipe_pool_new(8);
  int a[2], b[2];
  ck_assert_int_eq(sy_pipe_pool_get(p, a), 256 * 1024);
  ck_assert_int_eq(sy_pipe_pool_get(p, b), 256 * 1024);
  int fa = a[0], fb = b[1];
  sy_pipe_pool_put(p, a, 256 * 1024);
  sy_pipe_pool_put(p, b, 256 * 1024);
  sy_pipe_pool_free(p);
  ck_assert(!fd_is_open(fa));
  ck_assert(!fd_is_open(fb));
  sy_pipe_pool_free(NULL);
}
END_TEST

static Suite *pipepool_suite(void) {
  Suite *s = suite_create("pipepool");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_get_gives_nonblocking_cloexec_256k_pipe);
  tcase_add_test(tc, test_put_then_get_reuses_the_same_pipe);
  tcase_add_test(tc, test_max_idle_bounds_kept_pipes);
  tcase_add_test(tc, test_max_idle_zero_closes_every_returned_pipe);
  tcase_add_test(tc, test_drop_closes_a_full_pipe_instead_of_pooling_it);
  tcase_add_test(tc, test_get_reports_emfile);
  tcase_add_test(tc, test_free_closes_idle_pipes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pipepool_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
