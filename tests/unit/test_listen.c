/* sy_listen_reuseport: workers share a port, and an accepted socket comes with
 * TCP_NODELAY from its listener (the proxy sets no option per connection). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchyard/worker.h"

static int accepted_from(int l, struct sockaddr_in *sa) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(c, 0);
  /* Blocking: on return the connection waits in some listener's queue. */
  ck_assert_int_eq(connect(c, (struct sockaddr *)sa, sizeof(*sa)), 0);
  int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  close(c);
  return a;
}

/* A listener on a free loopback port (sa->sin_port 0) or on sa's port. */
static int listener(struct sockaddr_in *sa) {
  int l = sy_listen_reuseport((struct sockaddr *)sa, 16, -1);
  ck_assert_int_ge(l, 0);
  socklen_t len = sizeof(*sa);
  ck_assert_int_eq(getsockname(l, (struct sockaddr *)sa, &len), 0);
  return l;
}

START_TEST(test_accepted_sockets_have_nodelay) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int l = listener(&sa);
  for (int i = 0; i < 3; i++) {
    int a = accepted_from(l, &sa);
    ck_assert_int_ge(a, 0);
    int on = 0;
    socklen_t len = sizeof(on);
    ck_assert_int_eq(getsockopt(a, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
    ck_assert_int_eq(on, 1);
    close(a);
  }
  close(l);
}
END_TEST

START_TEST(test_two_listeners_share_a_port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int l1 = listener(&sa);
  int l2 = listener(&sa); /* the same port again */
  ck_assert_int_ne(l2, l1);
  close(l1);
  close(l2);
}
END_TEST

int main(void) {
  Suite *su = suite_create("listen");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_accepted_sockets_have_nodelay);
  tcase_add_test(tc, test_two_listeners_share_a_port);
  suite_add_tcase(su, tc);
  SRunner *r = srunner_create(su);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
