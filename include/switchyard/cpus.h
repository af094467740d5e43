/* How many workers `workers: auto` starts: the CPUs the process may run on
 * (its affinity mask), capped by the cgroup v2 CPU limit of its cgroup and of
 * every ancestor (cpu.max quota/period, rounded up), and at least 1. A
 * container limited to 1.5 CPUs on a 64-core node gets 2 workers, not 64.
 *
 * The parsing is pure (text in, number out) so it is tested without the
 * host's cgroups; sy_auto_workers() is the thin part that reads the files. */
#ifndef SWITCHYARD_CPUS_H
#define SWITCHYARD_CPUS_H

#include <stddef.h>

/* One cpu.max file's text ("max 100000", "150000 100000", trailing newline
 * allowed): the CPUs that limit allows, rounded up and at least 1; 0 for no
 * limit ("max"); -1 if the text is malformed. */
long sy_cpu_max_cpus(const char *text);

/* The cgroup v2 path ("/kubepods/pod1/ctr") in /proc/self/cgroup's text (the
 * "0::PATH" line), copied into out. Returns 0, or -1 when there is none (a
 * cgroup v1 only host) or it does not fit. */
int sy_cgroup2_path(const char *proc_self_cgroup, char *out, size_t cap);

/* The rule: `affinity` CPUs (0 = unknown: 1), capped by every limit that the
 * texts of the cpu.max files along the cgroup path set (NULL or malformed
 * texts are skipped: a limit we cannot read does not stop the start). */
unsigned sy_workers_for(unsigned affinity, const char *const *cpu_max_texts, size_t n);

/* Reads `proc_cgroup` (normally /proc/self/cgroup) and the cpu.max files of
 * that cgroup and its ancestors under `mount` (normally /sys/fs/cgroup; when
 * the cgroup's directory is not there, as under some cgroup namespaces,
 * `mount`/cpu.max alone) and applies sy_workers_for. `why` gets a short
 * explanation for the start-up log ("2 CPUs in the affinity mask; cgroup
 * limit 150000/100000 in /sys/fs/cgroup/cpu.max = 2"). */
unsigned sy_auto_workers_at(const char *proc_cgroup, const char *mount, unsigned affinity,
                            char *why, size_t cap);

/* The same for this process: sched_getaffinity, /proc/self/cgroup, /sys/fs/cgroup. */
unsigned sy_auto_workers(char *why, size_t cap);

/* worker_cpu_affinity: the (i mod count)-th CPU of this thread's affinity
 * mask, -1 when the mask cannot be read. */
int sy_cpu_nth(unsigned i);

#endif
