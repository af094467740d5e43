/* `workers: auto`: cpu.max parsing, the cgroup path, the rule (affinity
 * capped by every limit up the tree), and the file walk over a fake cgroup
 * tree in a temporary directory; nothing here reads the host's cgroups. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "switchyard/cpus.h"

START_TEST(test_cpu_max_parse) {
  ck_assert_int_eq(sy_cpu_max_cpus("max 100000\n"), 0);
  ck_assert_int_eq(sy_cpu_max_cpus("max 100000"), 0);
  ck_assert_int_eq(sy_cpu_max_cpus("200000 100000\n"), 2);
  ck_assert_int_eq(sy_cpu_max_cpus("150000 100000\n"), 2); /* 1.5 CPUs: rounded up */
  ck_assert_int_eq(sy_cpu_max_cpus("100001 100000\n"), 2);
  ck_assert_int_eq(sy_cpu_max_cpus("50000 100000\n"), 1); /* half a CPU: at least one */
  ck_assert_int_eq(sy_cpu_max_cpus("1000 100000\n"), 1);
  ck_assert_int_eq(sy_cpu_max_cpus("0 100000\n"), 1);
  ck_assert_int_eq(sy_cpu_max_cpus("400000 50000\n"), 8);
  ck_assert_int_eq(sy_cpu_max_cpus("18446744073709551615 1\n"), INT_MAX);
  static const char *const bad[] = {
      "",
      "\n",
      "max",
      "max\n",
      "100000",
      "max 0\n",
      "100 0\n",
      "-1 100000\n",
      "max  100000",
      "max 100000\n\n",
      "1.5 100000",
      "max 1e5\n",
      "MAX 100000",
      " 100 100000",
      "100 100000 7",
      "100\t1000",
      "max -100000",
      "100 ",
      "1 99999999999999999999\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(sy_cpu_max_cpus(bad[i]) == -1, "accepted \"%s\"", bad[i]);
}
END_TEST

START_TEST(test_cgroup2_path) {
  char out[64];
  ck_assert_int_eq(sy_cgroup2_path("0::/\n", out, sizeof out), 0);
  ck_assert_str_eq(out, "/");
  /* A hybrid host: v1 controllers first, the v2 line last, no final newline. */
  ck_assert_int_eq(sy_cgroup2_path("12:cpu,cpuacct:/docker/x\n1:name=systemd:/a\n0::/kubepods/"
                                   "burstable/pod1/ctr",
                                   out, sizeof out),
                   0);
  ck_assert_str_eq(out, "/kubepods/burstable/pod1/ctr");
  ck_assert_int_eq(sy_cgroup2_path("4:memory:/x\n1:cpu:/\n", out, sizeof out), -1); /* v1 only */
  ck_assert_int_eq(sy_cgroup2_path("", out, sizeof out), -1);
  ck_assert_int_eq(sy_cgroup2_path("0::relative\n", out, sizeof out), -1);
  char tiny[4];
  ck_assert_int_eq(sy_cgroup2_path("0::/abcdef\n", tiny, sizeof tiny), -1); /* does not fit */
  ck_assert_int_eq(sy_cgroup2_path("0::/ab\n", tiny, sizeof tiny), 0);
  ck_assert_str_eq(tiny, "/ab");
}
END_TEST

START_TEST(test_rule) {
  const char *none[] = {NULL};
  ck_assert_uint_eq(sy_workers_for(8, none, 0), 8);
  ck_assert_uint_eq(sy_workers_for(0, none, 0), 1); /* unknown affinity: one worker */
  const char *one[] = {"150000 100000\n"};
  ck_assert_uint_eq(sy_workers_for(64, one, 1), 2);
  ck_assert_uint_eq(sy_workers_for(1, one, 1), 1); /* the affinity mask is smaller */
  /* The lowest limit on the path decides, wherever it sits. */
  const char *tree[] = {"max 100000\n", "400000 100000\n", NULL, "garbage", "300000 100000\n"};
  ck_assert_uint_eq(sy_workers_for(16, tree, 5), 3);
  const char *unlimited[] = {"max 100000\n", "max 100000\n"};
  ck_assert_uint_eq(sy_workers_for(6, unlimited, 2), 6);
  const char *malformed[] = {"lots", ""};
  ck_assert_uint_eq(sy_workers_for(6, malformed, 2), 6);
}
END_TEST

/* A fake /proc/self/cgroup and cgroup mount under a temporary directory. */
static char root[256];

static void put(const char *rel, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

static void mkdirs(const char *rel) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  for (char *p = path + strlen(root) + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    mkdir(path, 0755);
    *p = '/';
  }
  mkdir(path, 0755);
}

static void setup_tree(void) {
  snprintf(root, sizeof root, "%s/sy-cpus-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull(mkdtemp(root));
  mkdirs("cg/kubepods/pod1/ctr");
}

static void teardown_tree(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  ck_assert_int_eq(system(cmd), 0);
}

static unsigned walk(unsigned affinity, char *why, size_t cap) {
  char proc[300], mount[300];
  snprintf(proc, sizeof proc, "%s/proc-self-cgroup", root);
  snprintf(mount, sizeof mount, "%s/cg", root);
  return sy_auto_workers_at(proc, mount, affinity, why, cap);
}

START_TEST(test_walk_limit_on_parent) {
  char why[512];
  put("proc-self-cgroup", "3:cpu:/whatever\n0::/kubepods/pod1/ctr\n");
  put("cg/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  put("cg/kubepods/pod1/cpu.max", "150000 100000\n"); /* the pod's limit */
  put("cg/kubepods/cpu.max", "max 100000\n");
  ck_assert_uint_eq(walk(64, why, sizeof why), 2);
  ck_assert_msg(strstr(why, "64 CPUs in the affinity mask") != NULL, "%s", why);
  ck_assert_msg(strstr(why, "\"150000 100000\"") && strstr(why, "kubepods/pod1/cpu.max = 2"), "%s",
                why);
  ck_assert_uint_eq(walk(1, why, sizeof why), 1); /* affinity below the limit */
  ck_assert_msg(strstr(why, "no lower cgroup CPU limit") != NULL, "%s", why);
}
END_TEST

START_TEST(test_walk_limit_at_root_and_namespaced) {
  char why[512];
  /* Inside a cgroup namespace the process sees "0::/" and its own cgroup as the mount. */
  put("proc-self-cgroup", "0::/\n");
  put("cg/cpu.max", "300000 100000\n");
  ck_assert_uint_eq(walk(8, why, sizeof why), 3);
  /* A path that is not visible under the mount: the mount's own cpu.max counts. */
  put("proc-self-cgroup", "0::/elsewhere/ctr\n");
  ck_assert_uint_eq(walk(8, why, sizeof why), 3);
  /* No v2 line at all (cgroup v1 host): the same fallback. */
  put("proc-self-cgroup", "4:cpu,cpuacct:/docker/abc\n");
  ck_assert_uint_eq(walk(8, why, sizeof why), 3);
}
END_TEST

START_TEST(test_walk_nothing_readable) {
  char why[512];
  /* No /proc file, no cpu.max anywhere: the affinity mask alone. */
  ck_assert_uint_eq(walk(6, why, sizeof why), 6);
  ck_assert_msg(strstr(why, "no cgroup v2 cpu.max found") != NULL, "%s", why);
  put("proc-self-cgroup", "0::/kubepods/pod1/ctr\n");
  put("cg/kubepods/pod1/ctr/cpu.max", "not a limit\n");
  ck_assert_uint_eq(walk(6, why, sizeof why), 6);
  ck_assert_uint_eq(walk(0, why, sizeof why), 1);
  /* A tiny buffer for the explanation truncates it, nothing more. */
  char small[8];
  ck_assert_uint_eq(walk(6, small, sizeof small), 6);
  ck_assert_uint_eq(strlen(small), sizeof small - 1);
}
END_TEST

START_TEST(test_this_process) {
  /* Whatever the host: at least one worker and an explanation. */
  char why[512] = "";
  ck_assert_uint_ge(sy_auto_workers(why, sizeof why), 1);
  ck_assert_msg(strstr(why, "affinity mask") != NULL, "%s", why);
}
END_TEST

static Suite *cpus_suite(void) {
  Suite *s = suite_create("cpus");
  TCase *tc = tcase_create("parse");
  tcase_add_test(tc, test_cpu_max_parse);
  tcase_add_test(tc, test_cgroup2_path);
  tcase_add_test(tc, test_rule);
  tcase_add_test(tc, test_this_process);
  suite_add_tcase(s, tc);
  tc = tcase_create("walk");
  tcase_add_checked_fixture(tc, setup_tree, teardown_tree);
  tcase_add_test(tc, test_walk_limit_on_parent);
  tcase_add_test(tc, test_walk_limit_at_root_and_namespaced);
  tcase_add_test(tc, test_walk_nothing_readable);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(cpus_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
