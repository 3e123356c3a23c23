#define _GNU_SOURCE
#include "swarm_spawn.h"

#include <sched.h>
#include <linux/sched.h>

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
#include <pthread.h>
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
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/* Why the child shares swarmd's fd table and then takes a copy of its low end
   only (see swarm_spawn_reserve_slots):

   A plain clone copies swarmd's whole fd table (the kernel's dup_fd), and the
   exec then walks it again to close every close-on-exec fd. swarmd holds two
   pipes per live worker, so both grew with N, in swarmd's own time (the copy)
   and in the child's (the close), for every spawn, probe and hook.

   Instead, the fds a child needs are dup'ed onto reserved low numbers (slots
   held by /dev/null placeholders), the child is cloned with CLONE_FILES (no
   copy), and its very first call, close_range(ceiling, ~0, CLOSE_RANGE_UNSHARE),
   gives it a private table holding only the fds below the slot ceiling: the
   kernel copies fds [0, ceiling) and nothing above. Only then does the child
   touch an fd, so it never changes swarmd's table. After the child has exec'd
   (CLONE_VFORK), swarmd puts the placeholders back. Cost per spawn: a few
   dozen fds, whatever N.
   Limit: the slots are the lowest numbers free when LinuxKernel is made. After
   daemon-reexec the inherited worker pipes hold the low numbers, so the slots
   land above them and each child copies those too, until the next fresh start.

   Considered and not taken: a spawner process with a small table receiving
   the fds over SCM_RIGHTS and cloning with CLONE_PARENT. It would also take
   the exec off swarmd's loop, but every caller of spawn (workers, exec probes,
   hooks, the bind-interception hand-back) expects the pid, or the exec's
   errno, when spawn returns; the fd-table cost, which is what grew with N, is
   removed here without changing that contract. */
#define SWARM_SPAWN_SLOTS 64
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static int slots[SWARM_SPAWN_SLOTS];
static int nslots;
static int slot_ceiling;    /* highest slot + 1: the child copies fds below it */
static int placeholder = -1;

struct child_report {
    int err;
    int step;
};

/* Where a failing child says what failed. With CLONE_VM | CLONE_VFORK the
   child writes into the parent's memory, which the parent reads once the
   child is gone (as glibc's posix_spawn does): no pipe to make, read and
   close per spawn. Only the fork() fallback (ThreadSanitizer) needs a pipe. */
struct reporter {
    struct child_report *shared;    /* CLONE_VM: the parent's report */
    int fd;                         /* fork(): the report pipe's write end */
};

/* Async-signal-safe: only raw syscalls and stack memory below. */
static void child_fail(const struct reporter *rep, int step) {
    struct child_report r = { errno, step };
    if (rep->shared) {
        *rep->shared = r;
    } else {
        ssize_t ignored = write(rep->fd, &r, sizeof r);
        (void)ignored;
    }
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

static void child(const struct swarm_spawn_request *req, struct reporter rep, pid_t parent, int in_cgroup) {
    /* Dispositions first: a signal arriving now must not run the daemon's handlers.
       (No fd is touched here: with a shared table, see unshare_table.) */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL);
    }
    /* kernel: before anything the child starts could escape it */
    if (req->join_cgroup && !in_cgroup && swarm_child_join_cgroup(req->cgroup_procs_fd) < 0) child_fail(&rep, SWARM_STEP_CGROUP);
    if (setpgid(0, 0) < 0) child_fail(&rep, SWARM_STEP_SETPGID);
    if (req->pdeathsig > 0) {
        if (prctl(PR_SET_PDEATHSIG, req->pdeathsig) < 0) child_fail(&rep, SWARM_STEP_PDEATHSIG);
        /* The daemon may have died before prctl took effect. */
        if (getppid() != parent) _exit(0);
    }

    /* kernel: while still root (no no_new_privs needed then) and before the fd moves reuse intercept_sock's number */
    if (req->intercept_bind) {
        int kstep;
        if (swarm_child_intercept_bind(req->intercept_sock, &kstep) < 0) child_fail(&rep, kstep);
    }

    /* Move the passed fds above every target number, then into place. */
    int high = 3 + req->nfds + 3;
    if (rep.fd >= 0 && high < rep.fd + 1) high = rep.fd + 1;
    int moved[256];
    if (req->nfds > 256) { errno = EMFILE; child_fail(&rep, SWARM_STEP_FDS); }
    for (int i = 0; i < req->nfds; i++) {
        moved[i] = fcntl(req->fds[i], F_DUPFD_CLOEXEC, high + 16);
        if (moved[i] < 0) child_fail(&rep, SWARM_STEP_FDS);
    }
    if (rep.fd >= 0) {
        int report = fcntl(rep.fd, F_DUPFD_CLOEXEC, high + 16 + req->nfds + 1);
        if (report < 0) child_fail(&rep, SWARM_STEP_FDS);
        rep.fd = report;
    }
    int in = req->stdin_fd >= 0 ? fcntl(req->stdin_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    int out = req->stdout_fd >= 0 ? fcntl(req->stdout_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    int err = req->stderr_fd >= 0 ? fcntl(req->stderr_fd, F_DUPFD_CLOEXEC, high + 16) : -1;
    if ((req->stdin_fd >= 0 && in < 0) || (req->stdout_fd >= 0 && out < 0) || (req->stderr_fd >= 0 && err < 0))
        child_fail(&rep, SWARM_STEP_STDIO);
    if (in >= 0 && dup2(in, 0) < 0) child_fail(&rep, SWARM_STEP_STDIO);
    if (out >= 0 && dup2(out, 1) < 0) child_fail(&rep, SWARM_STEP_STDIO);
    if (err >= 0 && dup2(err, 2) < 0) child_fail(&rep, SWARM_STEP_STDIO);
    for (int i = 0; i < req->nfds; i++) {
        if (dup2(moved[i], 3 + i) < 0) child_fail(&rep, SWARM_STEP_FDS);
    }
    /* Everything else: closed at exec. A report pipe must survive until then. */
    if (syscall(SYS_close_range, 3 + req->nfds, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = 3 + req->nfds; fd < 65536; fd++) {
            if (fd != rep.fd) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }

    for (int i = 0; i < req->nrlimits; i++) {
        struct rlimit rl = { (rlim_t)req->rlimits[i].soft, (rlim_t)req->rlimits[i].hard };
        if (setrlimit(req->rlimits[i].resource, &rl) < 0) child_fail(&rep, SWARM_STEP_RLIMIT);
    }
    /* Lowered before exec, so every thread the program starts inherits it. */
    if (req->set_nice) (void)syscall(SYS_setpriority, PRIO_PROCESS, 0, req->nice);
    if (req->cpu >= 0) {
        unsigned long mask[1024 / (8 * sizeof(unsigned long))];
        memset(mask, 0, sizeof mask);
        if (req->cpu >= 1024) child_fail(&rep, SWARM_STEP_AFFINITY);
        mask[req->cpu / (8 * sizeof(unsigned long))] |= 1UL << (req->cpu % (8 * sizeof(unsigned long)));
        if (syscall(SYS_sched_setaffinity, 0, sizeof mask, mask) < 0) child_fail(&rep, SWARM_STEP_AFFINITY);
    }
    if (req->set_ids) {
        /* Raw system calls: glibc's wrappers would try to change the
           credentials of every thread of the (shared-memory) parent. */
        if (syscall(SYS_setgroups, 0, NULL) < 0) child_fail(&rep, SWARM_STEP_SETGROUPS);
        if (syscall(SYS_setgid, req->gid) < 0) child_fail(&rep, SWARM_STEP_SETGID);
        if (syscall(SYS_setuid, req->uid) < 0) child_fail(&rep, SWARM_STEP_SETUID);
    }
    if (req->cwd && chdir(req->cwd) < 0) child_fail(&rep, SWARM_STEP_CHDIR);
    if (req->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(&rep, SWARM_STEP_NO_NEW_PRIVS);
    if (req->listen_pid_slot) write_pid(req->listen_pid_slot);

    sigset_t empty;
    sigemptyset(&empty);
    (void)sigprocmask(SIG_SETMASK, &empty, NULL);
    execve(req->path, req->argv, req->envp);
    child_fail(&rep, SWARM_STEP_EXEC);
}

struct child_args {
    const struct swarm_spawn_request *req;
    struct reporter rep;
    int report_read_fd;  /* fork(): the report pipe's read end, the child closes it; else -1 */
    pid_t parent;
    int shared_table;    /* cloned with CLONE_FILES: unshare before touching any fd */
    int ceiling;
    int in_cgroup;       /* created in its cgroup by clone3: no cgroup.procs write */
};

static int child_entry(void *arg) {
    struct child_args *a = arg;
    if (a->shared_table) {
        /* Copies fds [0, ceiling) into a table of the child's own. Should the
           kernel refuse (before 5.9), take a full copy rather than share. */
        if (syscall(SYS_close_range, (unsigned)a->ceiling, ~0U, CLOSE_RANGE_UNSHARE) < 0 && unshare(CLONE_FILES) < 0) {
            /* Still shared: report (no fd touched) and leave. */
            child_fail(&a->rep, SWARM_STEP_FORK);
        }
    } else if (a->report_read_fd >= 0) {
        close(a->report_read_fd);
    }
    child(a->req, a->rep, a->parent, a->in_cgroup);
    return 127;
}

#if defined(__x86_64__) && !SWARM_SPAWN_WITH_FORK
#define SWARM_HAVE_CLONE3_RUN 1
/* clone3 with CLONE_VM and a stack of the child's own, calling fn(arg) there,
   as glibc's clone() does for clone (glibc exports no clone3 wrapper). The
   child returns from the system call on its new stack, so it cannot go back
   into C code: the assembly calls fn, then exits with its result. Returns the
   pid, or -errno. */
long swarm_clone3_run(struct clone_args *args, size_t size, int (*fn)(void *), void *arg);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type swarm_clone3_run, @function\n"
    "swarm_clone3_run:\n"
    "    push %r12\n"
    "    push %r13\n"
    "    mov %rdx, %r12\n"          /* fn and arg in callee-saved registers: the child keeps them */
    "    mov %rcx, %r13\n"
    "    mov $435, %eax\n"          /* SYS_clone3; args in %rdi, size in %rsi */
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jz 1f\n"
    "    pop %r13\n"
    "    pop %r12\n"
    "    ret\n"
    "1:  xor %ebp, %ebp\n"          /* the child, on its own 16-byte aligned stack */
    "    mov %r13, %rdi\n"
    "    call *%r12\n"
    "    mov %eax, %edi\n"
    "    mov $60, %eax\n"           /* SYS_exit */
    "    syscall\n"
    "    hlt\n"
    ".size swarm_clone3_run, .-swarm_clone3_run\n");

#endif
/* Set once clone3 or CLONE_INTO_CGROUP turned out missing (before Linux 5.7). */
static int clone3_unsupported;


int swarm_spawn_reserve_slots(void) {
    pthread_mutex_lock(&slot_lock);
    int r = 0;
    if (placeholder < 0) {
        int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd < 0) {
            r = -errno;
        } else {
            /* The lowest free numbers: at start-up, just above swarmd's first few fds. */
            int n = 0, ceiling = null_fd + 1;
            for (; n < SWARM_SPAWN_SLOTS; n++) {
                int fd = fcntl(null_fd, F_DUPFD_CLOEXEC, 0);
                if (fd < 0) break;
                slots[n] = fd;
                if (fd + 1 > ceiling) ceiling = fd + 1;
            }
            if (n < SWARM_SPAWN_SLOTS) {
                r = -errno;
                for (int i = 0; i < n; i++) close(slots[i]);
                close(null_fd);
            } else {
                nslots = n;
                slot_ceiling = ceiling;
                placeholder = null_fd;
            }
        }
    }
    pthread_mutex_unlock(&slot_lock);
    return r;
}

int swarm_spawn_slot_ceiling(void) {
    pthread_mutex_lock(&slot_lock);
    int c = placeholder >= 0 ? slot_ceiling : -1;
    pthread_mutex_unlock(&slot_lock);
    return c;
}

/* Puts fd on the next free slot; -1 (errno set) when none is left. */
static int to_slot(int fd, int *used) {
    if (fd < 0) return fd;
    if (*used >= nslots) { errno = EMFILE; return -1; }
    int slot = slots[*used];
    if (dup3(fd, slot, O_CLOEXEC) < 0) return -1;
    (*used)++;
    return slot;
}

static void release_slots(int used) {
    for (int i = 0; i < used; i++) (void)dup3(placeholder, slots[i], O_CLOEXEC);
}

/* The child's stack, made once and kept: with CLONE_VFORK the child is done
   with it (exec'd or gone) when clone returns, and spawns are serialised by
   slot_lock. An mmap, its page faults and a munmap per spawn were 5 % of
   swarmd's CPU when starting 4,096 workers (issue 18). */
static void *child_stack;
static const size_t child_stack_size = 256 * 1024;

/* A worker created in its cgroup by clone3 needs no cgroup.procs fd, so the
   caller may pass only the cgroup's directory; should clone3 fail, the child
   joins after all, through cgroup.procs opened here (relative to the
   directory). Returns the fd opened (the caller closes it) or -1. */
static int open_procs_for_join(struct swarm_spawn_request *view) {
    if (view->join_cgroup || view->cgroup_dir_fd < 0) return -1;
    int fd = openat(view->cgroup_dir_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    view->join_cgroup = 1;
    view->cgroup_procs_fd = fd;
    return fd;
}

/* clone(CLONE_VM | CLONE_VFORK) on a stack of its own, like posix_spawn: no
   copy of swarmd's page tables, and swarmd resumes once the child has exec'd
   (or failed). The child touches only its stack, the request prepared
   before, and raw system calls. */
pid_t swarm_spawn(const struct swarm_spawn_request *req, int *err, int *step) {
    *err = 0;
    *step = SWARM_STEP_NONE;
    pid_t parent = getpid();
    struct child_report report = { 0, SWARM_STEP_NONE };
    /* The child's view of the request: the same, with every fd it needs on a slot. */
    struct swarm_spawn_request view = *req;
    struct child_args args = { &view, { &report, -1 }, -1, parent, 0, 0, 0 };
    int joined_procs = -1;
#if SWARM_SPAWN_WITH_FORK
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) { *err = errno; *step = SWARM_STEP_FORK; return -1; }
    args.rep.shared = NULL;
    args.rep.fd = pipefd[1];
    args.report_read_fd = pipefd[0];
    joined_procs = open_procs_for_join(&view);  /* fork() has no CLONE_INTO_CGROUP */
    if (req->cgroup_dir_fd >= 0 && !view.join_cgroup) {
        /* No way into the cgroup: fail rather than run outside it. */
        *err = errno;
        *step = SWARM_STEP_CGROUP;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
#endif

    pthread_mutex_lock(&slot_lock);
    if (!SWARM_SPAWN_WITH_FORK && !child_stack) {
        void *stack = mmap(NULL, child_stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            *err = errno;
            *step = SWARM_STEP_FORK;
            pthread_mutex_unlock(&slot_lock);
            return -1;
        }
        child_stack = stack;
    }
    int slot_fds[SWARM_SPAWN_SLOTS];
    int used = 0;
    /* Room for a cgroup.procs fd opened later (open_procs_for_join). */
    int needed = 4 + req->nfds + 1 + (req->intercept_bind ? 1 : 0);
    if (!SWARM_SPAWN_WITH_FORK && placeholder >= 0 && needed <= nslots) {
        int ok = 1;
        for (int i = 0; ok && i < req->nfds; i++) {
            slot_fds[i] = to_slot(req->fds[i], &used);
            ok = slot_fds[i] >= 0 || req->fds[i] < 0;
        }
        if (ok) { view.stdin_fd = to_slot(req->stdin_fd, &used); ok = req->stdin_fd < 0 || view.stdin_fd >= 0; }
        if (ok) { view.stdout_fd = to_slot(req->stdout_fd, &used); ok = req->stdout_fd < 0 || view.stdout_fd >= 0; }
        if (ok) { view.stderr_fd = to_slot(req->stderr_fd, &used); ok = req->stderr_fd < 0 || view.stderr_fd >= 0; }
        if (ok && req->join_cgroup) { view.cgroup_procs_fd = to_slot(req->cgroup_procs_fd, &used); ok = view.cgroup_procs_fd >= 0; }
        if (ok && req->intercept_bind) { view.intercept_sock = to_slot(req->intercept_sock, &used); ok = view.intercept_sock >= 0; }
        if (ok) {
            view.fds = slot_fds;
            args.shared_table = 1;
            args.ceiling = slot_ceiling;
        } else {
            /* A bad fd in the request (EBADF): the copying path reports it as before. */
            release_slots(used);
            used = 0;
            view = *req;
        }
    }

    /* Block every signal across clone so the child never runs a handler
       inherited from the daemon before it resets dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
#if SWARM_SPAWN_WITH_FORK
    (void)child_entry;
    pid_t pid = fork();
    if (pid == 0) child_entry(&args);
    int fork_errno = errno;
#else
    pid_t pid = -1;
    int fork_errno = 0;
    int cloned = 0;
#if SWARM_HAVE_CLONE3_RUN
    /* Created in its cgroup: joining it from the child (a write to
       cgroup.procs, a cgroup migration under the kernel's threadgroup lock)
       took 0.45 ms on average and up to 15 ms per spawn on a busy host, while
       swarmd waited in vfork. Any failure falls back to clone and the join,
       which reports its own error. */
    if (req->cgroup_dir_fd >= 0 && !clone3_unsupported && !req->no_clone3) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP | (args.shared_table ? CLONE_FILES : 0);
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)child_stack;
        ca.stack_size = child_stack_size;
        ca.cgroup = (uint64_t)req->cgroup_dir_fd;
        args.in_cgroup = 1;
        long r = swarm_clone3_run(&ca, sizeof ca, child_entry, &args);
        if (r >= 0) {
            pid = (pid_t)r;
            cloned = 1;
        } else {
            args.in_cgroup = 0;
            if (r == -ENOSYS || r == -E2BIG) clone3_unsupported = 1;
        }
    }
#endif
    if (!cloned) {
        if (!view.join_cgroup && req->cgroup_dir_fd >= 0) {
            joined_procs = open_procs_for_join(&view);
            if (joined_procs >= 0 && args.shared_table) {
                view.cgroup_procs_fd = to_slot(joined_procs, &used);
                if (view.cgroup_procs_fd < 0) view.join_cgroup = 0;
            }
            if (!view.join_cgroup) {
                /* No way into the cgroup: fail rather than run outside it. */
                fork_errno = errno;
                pthread_sigmask(SIG_SETMASK, &old, NULL);
                release_slots(used);
                pthread_mutex_unlock(&slot_lock);
                if (joined_procs >= 0) close(joined_procs);
                *err = fork_errno;
                *step = SWARM_STEP_CGROUP;
                return -1;
            }
        }
        int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (args.shared_table ? CLONE_FILES : 0);
        pid = clone(child_entry, (char *)child_stack + child_stack_size, flags, &args);
        fork_errno = errno;
    }
#endif
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    release_slots(used);
    pthread_mutex_unlock(&slot_lock);
    if (joined_procs >= 0) close(joined_procs);
#if SWARM_SPAWN_WITH_FORK
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
    } else {
        ssize_t n;
        do { n = read(pipefd[0], &report, sizeof report); } while (n < 0 && errno == EINTR);
        close(pipefd[0]);
        if (n != (ssize_t)sizeof report) report.step = SWARM_STEP_NONE;
    }
#endif
    if (pid < 0) {
        *err = fork_errno;
        *step = SWARM_STEP_FORK;
        return -1;
    }
    if (report.step != SWARM_STEP_NONE) {
        /* The child is exiting with 127: reap it here so no unknown pid reaches the reaper. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *err = report.err;
        *step = report.step;
        return -1;
    }
    return pid;
}

int swarm_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}
