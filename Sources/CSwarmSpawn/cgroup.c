#define _GNU_SOURCE
#include "swarm_kernel.h"

#include <errno.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

int swarm_is_cgroup2(const char *path) {
    struct statfs st;
    if (statfs(path, &st) < 0) return -1;
    return st.f_type == CGROUP2_SUPER_MAGIC ? 1 : 0;
}
