/* sy_slab: zeroed aligned slots, reuse, and blocks given back when empty. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "switchyard/slab.h"

START_TEST(test_slots_are_zeroed_aligned_and_distinct) {
  sy_slab s;
  sy_slab_init(&s, 430);
  ck_assert_uint_eq(s.slot, 432);
  enum { N = 1000 };
  static char *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = sy_slab_alloc(&s);
    ck_assert_ptr_nonnull(p[i]);
    ck_assert_uint_eq((uintptr_t)p[i] % 16, 0);
    for (size_t k = 0; k < s.slot; k++)
      ck_assert_int_eq(p[i][k], 0);
    memset(p[i], 0xa5, s.slot); /* a slot's whole size is the user's */
  }
  ck_assert_uint_gt(s.blocks, 1);
  for (int i = 1; i < N; i++)
    ck_assert(p[i] != p[i - 1]);
  for (int i = 0; i < N; i++) /* neighbours were not overwritten */
    ck_assert_int_eq((unsigned char)p[i][s.slot - 1], 0xa5);
  /* A freed slot comes back zeroed. */
  sy_slab_free(&s, p[7]);
  char *q = sy_slab_alloc(&s);
  ck_assert_ptr_eq(q, p[7]);
  ck_assert_int_eq(q[0], 0);
  for (int i = 0; i < N; i++)
    sy_slab_free(&s, p[i]);
  /* Empty blocks went back, but for the one kept for the next slot. */
  ck_assert_uint_eq(s.blocks, 1);
  sy_slab_destroy(&s);
  ck_assert_uint_eq(s.blocks, 0);
}
END_TEST

START_TEST(test_churn_keeps_one_block) {
  sy_slab s;
  sy_slab_init(&s, 64);
  for (int i = 0; i < 10000; i++) {
    void *a = sy_slab_alloc(&s);
    ck_assert_ptr_nonnull(a);
    sy_slab_free(&s, a);
    ck_assert_uint_eq(s.blocks, 1);
  }
  sy_slab_destroy(&s);
}
END_TEST

int main(void) {
  Suite *su = suite_create("slab");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_slots_are_zeroed_aligned_and_distinct);
  tcase_add_test(tc, test_churn_keeps_one_block);
  suite_add_tcase(su, tc);
  SRunner *r = srunner_create(su);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}
