#define _GNU_SOURCE
#include "swarm_kernel.h"

#include <errno.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

/* The parent opened cgroup.procs before the fork, so the child needs no
   path lookup and no allocation: one write(2). "0" means "the writer",
   which here is the child itself (its own thread group: no CLONE_THREAD).
   The kernel checks the delegation rules against the opener's credentials
   (since 5.16), so this works after setuid too; the child still joins
   first, before it forks or changes ids, so nothing it starts is outside. */
int swarm_child_join_cgroup(int procs_fd) {
    ssize_t n;
    do { n = write(procs_fd, "0", 1); } while (n < 0 && errno == EINTR);
    if (n == 1) return 0;
    if (n >= 0) errno = EIO;
    return -1;
}

int swarm_is_cgroup2(const char *path) {
    struct statfs st;
    if (statfs(path, &st) < 0) return -1;
    return st.f_type == CGROUP2_SUPER_MAGIC ? 1 : 0;
}
