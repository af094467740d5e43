/* sy_parse_duration / sy_parse_size: the strict scalar grammars of the config. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "switchyard/config.h"

typedef struct dcase {
  const char *in;
  int ok;
  uint64_t want;
} dcase;

static const dcase durations[] = {
    {"0s", 1, 0},
    {"0ms", 1, 0},
    {"1ms", 1, 1},
    {"250ms", 1, 250},
    {"10s", 1, 10000},
    {"5m", 1, 300000},
    {"1h", 1, 3600000},
    {"2d", 1, 172800000},
    {"007s", 1, 7000},
    {"18446744073709551615ms", 1, UINT64_MAX},
    {"", 0, 0},
    {"5", 0, 0},
    {"5 s", 0, 0},
    {" 5s", 0, 0},
    {"5s ", 0, 0},
    {"-1s", 0, 0},
    {"+1s", 0, 0},
    {"1.5s", 0, 0},
    {"s", 0, 0},
    {"5S", 0, 0},
    {"5sec", 0, 0},
    {"5us", 0, 0},
    {"5ss", 0, 0},
    {"1h30m", 0, 0},
    {"0x10s", 0, 0},
    {"99999999999999999999h", 0, 0},
    {"18446744073709551616ms", 0, 0},
    {"18446744073709551615s", 0, 0},
    {"213503982334d", 1, 213503982334ull * 86400000ull}, /* largest day count */
    {"213503982335d", 0, 0},                             /* just over 2^64 ms */
};

static const dcase sizes[] = {
    {"0", 1, 0},
    {"512", 1, 512},
    {"512B", 1, 512},
    {"10KB", 1, 10000},
    {"32KiB", 1, 32768},
    {"3MB", 1, 3000000},
    {"1MiB", 1, 1048576},
    {"2GB", 1, 2000000000},
    {"1GiB", 1, 1073741824},
    {"4GiB", 1, 4294967296},
    {"18446744073709551615", 1, UINT64_MAX},
    {"", 0, 0},
    {"KiB", 0, 0},
    {"10kib", 0, 0},
    {"10kb", 0, 0},
    {"10Kib", 0, 0},
    {"10 KiB", 0, 0},
    {"10KiB ", 0, 0},
    {"-1", 0, 0},
    {"+1", 0, 0},
    {"1.5MiB", 0, 0},
    {"10K", 0, 0},
    {"10TB", 0, 0},
    {"1e3", 0, 0},
    {"18446744073709551616", 0, 0},
    {"18446744073709551615KiB", 0, 0},
    {"17179869184GiB", 0, 0}, /* 2^34 GiB = 2^64 */
};

#define NCASES(a) ((int)(sizeof(a) / sizeof((a)[0])))

START_TEST(test_duration) {
  const dcase *c = &durations[_i];
  sy_msec_t out = 12345;
  int rc = sy_parse_duration(c->in, &out);
  ck_assert_msg(rc == (c->ok ? 0 : -1), "duration \"%s\": rc %d", c->in, rc);
  if (c->ok)
    ck_assert_msg(out == c->want, "duration \"%s\": got %llu", c->in, (unsigned long long)out);
}
END_TEST

START_TEST(test_size) {
  const dcase *c = &sizes[_i];
  uint64_t out = 12345;
  int rc = sy_parse_size(c->in, &out);
  ck_assert_msg(rc == (c->ok ? 0 : -1), "size \"%s\": rc %d", c->in, rc);
  if (c->ok) ck_assert_msg(out == c->want, "size \"%s\": got %llu", c->in, (unsigned long long)out);
}
END_TEST

START_TEST(test_null_input) {
  sy_msec_t d;
  uint64_t s;
  ck_assert_int_eq(sy_parse_duration(NULL, &d), -1);
  ck_assert_int_eq(sy_parse_size(NULL, &s), -1);
}
END_TEST

static Suite *parse_suite(void) {
  Suite *s = suite_create("parse");
  TCase *tc = tcase_create("scalars");
  tcase_add_loop_test(tc, test_duration, 0, NCASES(durations));
  tcase_add_loop_test(tc, test_size, 0, NCASES(sizes));
  tcase_add_test(tc, test_null_input);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(parse_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
