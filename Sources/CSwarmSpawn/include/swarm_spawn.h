#ifndef SWARM_SPAWN_H
#define SWARM_SPAWN_H

#include <sys/types.h>
#include <stdint.h>
#include "swarm_kernel.h"

/// One resource limit to set in the child before exec.
struct swarm_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/// Everything the child needs, prepared by the parent before fork so that
/// the child only makes async-signal-safe calls.
struct swarm_spawn_request {
    const char *path;            ///< resolved executable
    char *const *argv;
    char *const *envp;           ///< may contain listen_pid_slot
    char *listen_pid_slot;       ///< "LISTEN_PID=" followed by >= 21 spare bytes, or NULL
    const char *cwd;             ///< NULL: inherit
    const int *fds;              ///< placed at 3, 4, ... in order
    int nfds;
    int stdin_fd;                ///< -1: /dev/null is opened by the parent and passed here
    int stdout_fd;
    int stderr_fd;
    int pdeathsig;               ///< 0: none
    int set_ids;                 ///< 1: setgroups(0)/setgid/setuid below
    uid_t uid;
    gid_t gid;
    int no_new_privs;
    const struct swarm_rlimit *rlimits;
    int nrlimits;
    int set_nice;                ///< 1: setpriority(nice) below
    int nice;
    int cpu;                     ///< >= 0: sched_setaffinity to this CPU only
    /* kernel mechanisms (swarm_kernel.h) */
    int join_cgroup;             ///< 1: write "0" to cgroup_procs_fd first thing in the child
    int cgroup_procs_fd;         ///< the worker cgroup's cgroup.procs, opened O_WRONLY by the parent
    int cgroup_dir_fd;           ///< the worker cgroup's directory, or -1: with it the child is created in
                                 ///< the cgroup (clone3 CLONE_INTO_CGROUP) and joins nothing; where clone3
                                 ///< cannot, it joins by cgroup_procs_fd, or by the directory's cgroup.procs
                                 ///< opened then (and fails the spawn, step SWARM_STEP_CGROUP, if it cannot)
    int intercept_bind;          ///< 1: install the bind() filter, send its listener over intercept_sock
    int intercept_sock;          ///< child end of a socketpair (CLOEXEC)
    int no_clone3;               ///< 1: join the cgroup by cgroup.procs even where clone3 could create the
                                 ///< child in it (what kernels before 5.7 do); for tests of that path
    int reset_policy;            ///< 1: the child leaves swarmd's real-time policy for SCHED_OTHER before it
                                 ///< lowers its nice, changes ids and execs (it runs real-time until then, so
                                 ///< that its way to exec, which swarmd may wait for, is not queued behind the
                                 ///< CPUs' other work)
    int no_wait_exec;            ///< 1: return once the child is on its own fd table and in its own process
                                 ///< group (and, with intercept_bind, has sent its listener), not after its
                                 ///< exec; an exec failure is then taken at the reap (swarm_spawn_take_failure).
                                 ///< Ignored (the spawn waits) with join_cgroup or no_clone3, where clone3 is
                                 ///< missing, on other CPUs than x86_64, and with every arena busy (spawn.c)
};

/// Steps of the child; reported with the errno when one fails.
enum swarm_spawn_step {
    SWARM_STEP_NONE = 0,
    SWARM_STEP_FORK,
    SWARM_STEP_SETPGID,
    SWARM_STEP_PDEATHSIG,
    SWARM_STEP_FDS,
    SWARM_STEP_STDIO,
    SWARM_STEP_RLIMIT,
    SWARM_STEP_CHDIR,
    SWARM_STEP_SETGROUPS,
    SWARM_STEP_SETGID,
    SWARM_STEP_SETUID,
    SWARM_STEP_NO_NEW_PRIVS,
    SWARM_STEP_EXEC,
    SWARM_STEP_AFFINITY,
    SWARM_STEP_SCHED_POLICY,
};

/// fork + exec. Returns the pid, or -1 with *err = errno and *step = the
/// failing step (exec failures included, unless no_wait_exec let the child
/// run on: see swarm_spawn_take_failure).
pid_t swarm_spawn(const struct swarm_spawn_request *req, int *err, int *step);

/// For a reaped pid spawned with no_wait_exec, and its ticket
/// (swarm_spawn_last_ticket): 1 if its child failed before or at its exec,
/// with *err, *step and the executable's path (truncated to path_size); 0 if
/// it exec'd, or is no such child. Once per child: then its arena is freed.
int swarm_spawn_take_failure_ticket(int ticket, pid_t pid, int *err, int *step, char *path, size_t path_size);
/// The same without the ticket: looks through every child still held (for
/// callers that did not keep it; a pid reused meanwhile may find an old report).
int swarm_spawn_take_failure(pid_t pid, int *err, int *step, char *path, size_t path_size);

/// The calling thread's last swarm_spawn, if it did not wait for the exec: a
/// ticket for swarm_spawn_execing; else -1.
int swarm_spawn_last_ticket(void);
/// 1 while the child `pid` spawned with `ticket` is still on its way to exec
/// (in swarmd's memory; /proc readers of its files may block on its exec);
/// 0 once it exec'd or exited, or for any other pid.
int swarm_spawn_execing(int ticket, pid_t pid);
/// Arenas made so far (they are kept): for tests.
int swarm_spawn_arena_count(void);

int swarm_set_child_subreaper(void);

/// Reserves the low fd numbers swarm_spawn places a child's fds on, so that
/// the child copies only those instead of the caller's whole fd table (see
/// spawn.c). Call early, while the lowest free numbers are small; idempotent.
/// Without it swarm_spawn copies the table as fork does. 0 or -errno.
int swarm_spawn_reserve_slots(void);
/// The fds a child copies: [0, ceiling); -1 before swarm_spawn_reserve_slots.
int swarm_spawn_slot_ceiling(void);

/* The other concerns of this target, each in its own file. */
#include "swarm_misc.h"
#include "swarm_bpf.h"
#include "swarm_sock_diag.h"

#endif
