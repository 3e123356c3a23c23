#define _GNU_SOURCE
#include "swarm_spawn.h"

#include <sched.h>

/* ThreadSanitizer cannot follow clone(CLONE_VM) out of an instrumented,
   multithreaded process (the test runner): fall back to fork() there. */
#if defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define SWARM_SPAWN_WITH_FORK 1
#  endif
#endif
#ifndef SWARM_SPAWN_WITH_FORK
#  define SWARM_SPAWN_WITH_FORK 0
#endif

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct child_report {
    int err;
    int step;
};

/* Async-signal-safe: only raw syscalls and stack memory below. */
static void child_fail(int pipe_fd, int step) {
    struct child_report r = { errno, step };
    ssize_t ignored = write(pipe_fd, &r, sizeof r);
    (void)ignored;
    _exit(127);
}

static void write_pid(char *slot) {
    /* slot points at "LISTEN_PID=" + spare room. */
    char digits[24];
    int n = 0;
    pid_t pid = getpid();
    do { digits[n++] = (char)('0' + pid % 10); pid /= 10; } while (pid > 0 && n < 23);
    char *p = slot + strlen("LISTEN_PID=");
    while (n > 0) *p++ = digits[--n];
    *p = '\0';
}

static void child(const struct swarm_spawn_request *req, int report_fd, pid_t parent) {
    /* Dispositions first: a signal arriving now must not run the daemon's handlers. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL);
    }
    /* kernel: before anything the child starts could escape it */
    if (req->join_cgroup && swarm_child_join_cgroup(req->cgroup_procs_fd) < 0) child_fail(report_fd, SWARM_STEP_CGROUP);
    if (setpgid(0, 0) < 0) child_fail(report_fd, SWARM_STEP_SETPGID);
    if (req->pdeathsig > 0) {
        if (prctl(PR_SET_PDEATHSIG, req->pdeathsig) < 0) child_fail(report_fd, SWARM_STEP_PDEATHSIG);
        /* The daemon may have died before prctl took effect. */
        if (getppid() != parent) _exit(0);
    }

    /* kernel: while still root (no no_new_privs needed then) and before the fd moves reuse intercept_sock's number */
    if (req->intercept_bind) {
        int kstep;
        if (swarm_child_intercept_bind(req->intercept_sock, &kstep) < 0) child_fail(report_fd, kstep);
    }

    /* Move the passed fds above every target number, then into place. */
    int high = 3 + req->nfds + 3;
    if (high < report_fd + 1) high = report_fd + 1;
    int moved[256];
    if (req->nfds > 256) { errno = EMFILE; child_fail(report_fd, SWARM_STEP_FDS); }
    for (int i = 0; i < req->nfds; i++) {
        moved[i] = fcntl(req->fds[i], F_DUPFD_CLOEXEC, high + 16);
        if (moved[i] < 0) child_fail(report_fd, SWARM_STEP_FDS);
    }
    int report = fcntl(report_fd, F_DUPFD_CLOEXEC, high + 16 + req->nfds + 1);
    if (report < 0) child_fail(report_fd, SWARM_STEP_FDS);
    report_fd = report;
    int in = req->stdin_fd >= 0 ? fcntl(req->stdin_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    int out = req->stdout_fd >= 0 ? fcntl(req->stdout_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    int err = req->stderr_fd >= 0 ? fcntl(req->stderr_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    if ((req->stdin_fd >= 0 && in < 0) || (req->stdout_fd >= 0 && out < 0) || (req->stderr_fd >= 0 && err < 0))
        child_fail(report_fd, SWARM_STEP_STDIO);
    if (in >= 0 && dup2(in, 0) < 0) child_fail(report_fd, SWARM_STEP_STDIO);
    if (out >= 0 && dup2(out, 1) < 0) child_fail(report_fd, SWARM_STEP_STDIO);
    if (err >= 0 && dup2(err, 2) < 0) child_fail(report_fd, SWARM_STEP_STDIO);
    for (int i = 0; i < req->nfds; i++) {
        if (dup2(moved[i], 3 + i) < 0) child_fail(report_fd, SWARM_STEP_FDS);
    }
    /* Everything else: closed at exec. The report pipe must survive until then. */
    if (syscall(SYS_close_range, 3 + req->nfds, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = 3 + req->nfds; fd < 65536; fd++) {
            if (fd != report_fd) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }

    for (int i = 0; i < req->nrlimits; i++) {
        struct rlimit rl = { (rlim_t)req->rlimits[i].soft, (rlim_t)req->rlimits[i].hard };
        if (setrlimit(req->rlimits[i].resource, &rl) < 0) child_fail(report_fd, SWARM_STEP_RLIMIT);
    }
    /* Lowered before exec, so every thread the program starts inherits it. */
    if (req->set_nice) (void)syscall(SYS_setpriority, PRIO_PROCESS, 0, req->nice);
    if (req->cpu >= 0) {
        unsigned long mask[1024 / (8 * sizeof(unsigned long))];
        memset(mask, 0, sizeof mask);
        if (req->cpu >= 1024) child_fail(report_fd, SWARM_STEP_AFFINITY);
        mask[req->cpu / (8 * sizeof(unsigned long))] |= 1UL << (req->cpu % (8 * sizeof(unsigned long)));
        if (syscall(SYS_sched_setaffinity, 0, sizeof mask, mask) < 0) child_fail(report_fd, SWARM_STEP_AFFINITY);
    }
    if (req->set_ids) {
        /* Raw system calls: glibc's wrappers would try to change the
           credentials of every thread of the (shared-memory) parent. */
        if (syscall(SYS_setgroups, 0, NULL) < 0) child_fail(report_fd, SWARM_STEP_SETGROUPS);
        if (syscall(SYS_setgid, req->gid) < 0) child_fail(report_fd, SWARM_STEP_SETGID);
        if (syscall(SYS_setuid, req->uid) < 0) child_fail(report_fd, SWARM_STEP_SETUID);
    }
    if (req->cwd && chdir(req->cwd) < 0) child_fail(report_fd, SWARM_STEP_CHDIR);
    if (req->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(report_fd, SWARM_STEP_NO_NEW_PRIVS);
    if (req->listen_pid_slot) write_pid(req->listen_pid_slot);

    sigset_t empty;
    sigemptyset(&empty);
    (void)sigprocmask(SIG_SETMASK, &empty, NULL);
    execve(req->path, req->argv, req->envp);
    child_fail(report_fd, SWARM_STEP_EXEC);
}

struct child_args {
    const struct swarm_spawn_request *req;
    int report_fd;
    int report_read_fd;
    pid_t parent;
};

static int child_entry(void *arg) {
    struct child_args *a = arg;
    close(a->report_read_fd);
    child(a->req, a->report_fd, a->parent);
    return 127;
}

/* clone(CLONE_VM | CLONE_VFORK) on a stack of its own, like posix_spawn: no
   copy of swarmd's page tables, and swarmd resumes once the child has exec'd
   (or failed). The child touches only its stack, the request prepared
   before, and raw system calls. */
pid_t swarm_spawn(const struct swarm_spawn_request *req, int *err, int *step) {
    int pipefd[2];
    *err = 0;
    *step = SWARM_STEP_NONE;
    if (pipe2(pipefd, O_CLOEXEC) < 0) { *err = errno; *step = SWARM_STEP_FORK; return -1; }
    pid_t parent = getpid();
    size_t stack_size = 256 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        *err = errno;
        *step = SWARM_STEP_FORK;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    struct child_args args = { req, pipefd[1], pipefd[0], parent };

    /* Block every signal across clone so the child never runs a handler
       inherited from the daemon before it resets dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
#if SWARM_SPAWN_WITH_FORK
    (void)child_entry;
    pid_t pid = fork();
    if (pid == 0) child_entry(&args);
#else
    pid_t pid = clone(child_entry, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
#endif
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, stack_size);
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        *err = fork_errno;
        *step = SWARM_STEP_FORK;
        return -1;
    }
    struct child_report r;
    ssize_t n;
    do { n = read(pipefd[0], &r, sizeof r); } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof r) {
        /* The child is exiting with 127: reap it here so no unknown pid reaches the reaper. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *err = r.err;
        *step = r.step;
        return -1;
    }
    return pid;
}

int swarm_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}
