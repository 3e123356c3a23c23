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
#include <linux/futex.h>
#include <stdlib.h>
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

#include "raw_syscall.h"

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

/* Where a failing child says what failed. With CLONE_VM the child writes
   into swarmd's memory, which swarmd reads once the child is gone (as
   glibc's posix_spawn does): no pipe to make, read and close per spawn.
   Only the fork() fallback (ThreadSanitizer) needs a pipe. */
struct reporter {
    struct child_report *shared;    /* CLONE_VM: the report swarmd reads */
    int fd;                         /* fork(): the report pipe's write end */
};

/* Only raw system calls and the child's own memory from here to exec. */
static void child_fail(const struct reporter *rep, int step, int err) {
    struct child_report r = { err, step };
    if (rep->shared) {
        *rep->shared = r;
    } else {
        (void)sys3(SYS_write, rep->fd, &r, sizeof r);
    }
    (void)sys1(SYS_exit_group, 127);
    for (;;) {}
}

static void write_pid(char *slot) {
    /* slot points at "LISTEN_PID=" (11 bytes) + spare room. */
    char digits[24];
    int n = 0;
    long pid = sys0(SYS_getpid);
    do { digits[n++] = (char)('0' + pid % 10); pid /= 10; } while (pid > 0 && n < 23);
    char *p = slot + 11;
    while (n > 0) *p++ = digits[--n];
    *p = '\0';
}

/* The kernel's struct sigaction (rt_sigaction), not glibc's. */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

/* The process group first (before swarm_spawn returns for a child that runs
   on: swarmd may signal the group at once); signals are all blocked until
   exec, so no inherited handler can run meanwhile. */
static void child_own_group(const struct reporter *rep) {
    long r = sys2(SYS_setpgid, 0, 0);
    if (r < 0) child_fail(rep, SWARM_STEP_SETPGID, (int)-r);
}

/* struct arena's word (below). */
enum { CHILD_DONE = 0, CHILD_CLONED = 1, CHILD_ON_ITS_OWN = 2 };

/* CHILD_ON_ITS_OWN: swarmd may go on. Woken, swarmd is most often queued
   on this CPU behind the child, which would run on to its exec first, as
   with vfork: the yield lets swarmd go on at once (blocked 30 us per spawn
   instead of 120-400). */
static void release_swarmd(uint32_t *stage) {
    __atomic_store_n(stage, CHILD_ON_ITS_OWN, __ATOMIC_RELEASE);
    (void)sys3(SYS_futex, stage, FUTEX_WAKE, 1);
    (void)sys0(SYS_sched_yield);
}

static void child(const struct swarm_spawn_request *req, struct reporter rep, pid_t parent, int in_cgroup, uint32_t *stage) {
    long r;
    struct kernel_sigaction dfl = { 0, 0, 0, 0 };   /* SIG_DFL */
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sys4(SYS_rt_sigaction, sig, &dfl, 0, 8);
    }
    /* kernel: before anything the child starts could escape it. swarmd opened
       cgroup.procs, so this is one write of "0" (the writer: the child's own
       thread group), and the kernel checks the delegation rules against the
       opener's credentials (since 5.16), so it holds after setuid too. */
    if (req->join_cgroup && !in_cgroup) {
        do { r = sys3(SYS_write, req->cgroup_procs_fd, "0", 1); } while (r == -EINTR);
        if (r != 1) child_fail(&rep, SWARM_STEP_CGROUP, r < 0 ? (int)-r : EIO);
    }
    if (req->pdeathsig > 0) {
        if ((r = sys2(SYS_prctl, PR_SET_PDEATHSIG, req->pdeathsig)) < 0) child_fail(&rep, SWARM_STEP_PDEATHSIG, (int)-r);
        /* The daemon may have died before prctl took effect. */
        if (sys0(SYS_getppid) != parent) (void)sys1(SYS_exit_group, 0);
    }

    /* kernel: while still root (no no_new_privs needed then) and before the fd
       moves reuse intercept_sock's number */
    if (req->intercept_bind) {
        int kstep;
        int failed = swarm_child_intercept_bind(req->intercept_sock, &kstep);
        if (failed < 0) child_fail(&rep, kstep, -failed);
        /* swarmd takes the listener as soon as swarm_spawn returns. */
        if (stage) release_swarmd(stage);
    }

    /* Move the passed fds above every target number, then into place. */
    int high = 3 + req->nfds + 3;
    if (rep.fd >= 0 && high < rep.fd + 1) high = rep.fd + 1;
    int moved[256];
    if (req->nfds > 256) child_fail(&rep, SWARM_STEP_FDS, EMFILE);
    for (int i = 0; i < req->nfds; i++) {
        r = sys3(SYS_fcntl, req->fds[i], F_DUPFD_CLOEXEC, high + 16);
        if (r < 0) child_fail(&rep, SWARM_STEP_FDS, (int)-r);
        moved[i] = (int)r;
    }
    if (rep.fd >= 0) {
        r = sys3(SYS_fcntl, rep.fd, F_DUPFD_CLOEXEC, high + 16 + req->nfds + 1);
        if (r < 0) child_fail(&rep, SWARM_STEP_FDS, (int)-r);
        rep.fd = (int)r;
    }
    int stdio[3] = { req->stdin_fd, req->stdout_fd, req->stderr_fd };
    for (int i = 0; i < 3; i++) {
        if (stdio[i] < 0) continue;
        r = sys3(SYS_fcntl, stdio[i], F_DUPFD_CLOEXEC, high + 16);
        if (r < 0) child_fail(&rep, SWARM_STEP_STDIO, (int)-r);
        stdio[i] = (int)r;
    }
    for (int i = 0; i < 3; i++) {
        if (stdio[i] >= 0 && (r = sys3(SYS_dup3, stdio[i], i, 0)) < 0) child_fail(&rep, SWARM_STEP_STDIO, (int)-r);
    }
    for (int i = 0; i < req->nfds; i++) {
        if ((r = sys3(SYS_dup3, moved[i], 3 + i, 0)) < 0) child_fail(&rep, SWARM_STEP_FDS, (int)-r);
    }
    /* Everything else: closed now, while the child may still hold swarmd's
       real-time policy, rather than by the exec (do_close_on_exec), which
       runs at the worker's priority and inside the window in which the
       exec holds the task's exec_update_lock, which swarmd's /proc reads of
       it wait for. A report pipe (fork) must survive until the exec. */
    int closed = rep.fd < 0 && sys3(SYS_close_range, 3 + req->nfds, ~0U, 0) == 0;
    if (!closed && sys3(SYS_close_range, 3 + req->nfds, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = 3 + req->nfds; fd < 65536; fd++) {
            if (fd != rep.fd) (void)sys3(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
        }
    }

    for (int i = 0; i < req->nrlimits; i++) {
        uint64_t rl[2] = { req->rlimits[i].soft, req->rlimits[i].hard };
        if ((r = sys4(SYS_prlimit64, 0, req->rlimits[i].resource, rl, 0)) < 0) child_fail(&rep, SWARM_STEP_RLIMIT, (int)-r);
    }
    /* swarmd's real-time policy is kept up to here: when thousands of dying
       workers share the CPUs, a child under SCHED_OTHER would wait behind
       them for each of these few steps, and swarmd, short of arenas, for it. */
    if (req->reset_policy) {
        int param = 0;   /* struct sched_param: its priority */
        if ((r = sys3(SYS_sched_setscheduler, 0, SCHED_OTHER, &param)) < 0) child_fail(&rep, SWARM_STEP_SCHED_POLICY, (int)-r);
    }
    /* Lowered before exec, so every thread the program starts inherits it. */
    if (req->set_nice) (void)sys3(SYS_setpriority, PRIO_PROCESS, 0, req->nice);
    if (req->cpu >= 0) {
        unsigned long mask[1024 / (8 * sizeof(unsigned long))];
        for (unsigned i = 0; i < sizeof mask / sizeof mask[0]; i++) mask[i] = 0;
        if (req->cpu >= 1024) child_fail(&rep, SWARM_STEP_AFFINITY, EINVAL);
        mask[req->cpu / (8 * sizeof(unsigned long))] |= 1UL << (req->cpu % (8 * sizeof(unsigned long)));
        if ((r = sys3(SYS_sched_setaffinity, 0, sizeof mask, mask)) < 0) child_fail(&rep, SWARM_STEP_AFFINITY, (int)-r);
    }
    if (req->set_ids) {
        /* Raw system calls: glibc's wrappers would try to change the
           credentials of every thread of the (shared-memory) parent. */
        if ((r = sys2(SYS_setgroups, 0, 0)) < 0) child_fail(&rep, SWARM_STEP_SETGROUPS, (int)-r);
        if ((r = sys1(SYS_setgid, req->gid)) < 0) child_fail(&rep, SWARM_STEP_SETGID, (int)-r);
        if ((r = sys1(SYS_setuid, req->uid)) < 0) child_fail(&rep, SWARM_STEP_SETUID, (int)-r);
    }
    if (req->cwd && (r = sys1(SYS_chdir, req->cwd)) < 0) child_fail(&rep, SWARM_STEP_CHDIR, (int)-r);
    if (req->no_new_privs && (r = sys6(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0)) < 0)
        child_fail(&rep, SWARM_STEP_NO_NEW_PRIVS, (int)-r);
    if (req->listen_pid_slot) write_pid(req->listen_pid_slot);

    uint64_t empty = 0;
    (void)sys4(SYS_rt_sigprocmask, SIG_SETMASK, &empty, 0, 8);
    r = sys3(SYS_execve, req->path, req->argv, req->envp);
    child_fail(&rep, SWARM_STEP_EXEC, (int)-r);
}

struct child_args {
    const struct swarm_spawn_request *req;
    struct reporter rep;
    int report_read_fd;  /* fork(): the report pipe's read end, the child closes it; else -1 */
    pid_t parent;
    int shared_table;    /* cloned with CLONE_FILES: unshare before touching any fd */
    int ceiling;
    int in_cgroup;       /* created in its cgroup by clone3: no cgroup.procs write */
    uint32_t *stage;     /* a child swarmd does not wait for: set to CHILD_ON_ITS_OWN once swarmd may go on */
};


static int child_entry(void *arg) {
    struct child_args *a = arg;
    if (a->shared_table) {
        /* Copies fds [0, ceiling) into a table of the child's own. Should the
           kernel refuse (before 5.9), take a full copy rather than share. */
        if (sys3(SYS_close_range, (unsigned)a->ceiling, ~0U, CLOSE_RANGE_UNSHARE) < 0) {
            long r = sys1(SYS_unshare, CLONE_FILES);
            /* Still shared: report (no fd touched) and leave. */
            if (r < 0) child_fail(&a->rep, SWARM_STEP_FORK, (int)-r);
        }
    } else if (a->report_read_fd >= 0) {
        (void)sys1(SYS_close, a->report_read_fd);
    }
    child_own_group(&a->rep);
    /* swarmd's slots and process group no longer matter to this child; one
       that intercepts bind() lets swarmd go once its listener is sent. */
    if (a->stage && !a->req->intercept_bind) release_swarmd(a->stage);
    child(a->req, a->rep, a->parent, a->in_cgroup, a->stage);
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

/* ---- Children swarmd does not wait for (swarm_spawn_request.no_wait_exec) ----

   A spawn that waits (CLONE_VFORK) stops swarmd's loop for the child's whole
   way to exec: its fd moves, limits, credentials and the execve itself,
   about 0.55 ms per worker on the 2-core test machine, in which swarmd does
   nothing else (issue 18: 4,096 workers cost over 2 s of that at start and
   again in a kill storm). Without CLONE_VFORK the child runs on the other CPU
   while swarmd goes on; what vfork gave for free is then done by hand:
   - The child still runs in swarmd's memory (CLONE_VM), so it needs memory
     of its own that swarmd leaves alone until the child is done with it: an
     arena with its stack and a copy of the request. The kernel tells when
     (CLONE_CHILD_CLEARTID: at the exec, or the exit, it zeroes the arena's
     word). An arena that is still busy is not reused. Arenas are made as
     needed, up to SWARM_ARENAS_MAX: when thousands of dying workers hold the
     CPUs, children queue for their exec, and swarmd must not wait behind
     them for an arena (a spawn that found none waited 190 ms in a 4,096
     storm with 64). The extra ones, beyond SWARM_ARENAS_KEPT, drop their
     copies when free, and their stacks' pages once no child is on its way.
   - It shares the calling thread's TLS, so errno: only raw system calls (sys6).
   - swarm_spawn returns once the child is on a fd table of its own (swarmd
     puts its slots back then) and leads its own process group (swarmd may
     signal the group at once): the child says so in the word, by futex.
   - An exec that fails is seen at the reap: swarm_spawn_take_failure.
   - A child that intercepts bind() says so once it has sent swarmd its
     seccomp listener, which swarmd takes when swarm_spawn returns.
   Not for children that join a cgroup by cgroup.procs (they must be in it
   before swarmd counts them): those wait. */
#define SWARM_ARENAS_MAX 4096
#define SWARM_ARENAS_KEPT 64
/* The child's frames are small (raw system calls, about 2 KiB; execve runs on
   the kernel's stack). Every arena's stack is in one region reserved once:
   an mmap per arena takes swarmd's mmap_lock for writing, which waits for
   every child still in execve (it reads argv from swarmd's memory, under
   that lock for reading), and in a kill storm those children wait for a CPU
   (30-40 ms per mmap seen). */
#define ARENA_STACK_SIZE (16 * 1024)

struct arena {
    uint32_t word;              /* CHILD_*, futex; CHILD_DONE from the kernel */
    pid_t pid;
    struct child_report report;
    struct swarm_spawn_request view;
    struct child_args args;
    int slot_fds[SWARM_SPAWN_SLOTS];
    char *data;                 /* the request's strings and arrays */
    size_t capacity;
    int index;                  /* its stack's place in stacks */
};

/* Under slot_lock. An arena is free (the first SWARM_ARENAS_KEPT made, or the
   extra ones), busy (its child on its way to exec, or done with a report not
   yet taken), or borrowed by a spawn that waits after all. */
static struct arena *kept_free[SWARM_ARENAS_KEPT];
static int nkept_free;
static struct arena *extra_free[SWARM_ARENAS_MAX];
static int nextra_free;
static int extra_dirty;          /* an extra arena's stack was used since its pages were last given back */
static struct arena *busy[SWARM_ARENAS_MAX];   /* a ring */
static int busy_head, nbusy;
static int narenas;
static struct arena *all_arenas[SWARM_ARENAS_MAX];   /* by index: the tickets */
static _Thread_local int last_ticket = -1;        /* the calling thread's last spawn that did not wait */
static char *stacks;            /* SWARM_ARENAS_MAX stacks, reserved (MAP_NORESERVE) at the first use */

/* Arenas are kept once made; the extra ones without their copies, and their
   stacks' pages are given back once no child is on its way (arenas_harvest). */
static void arena_release(struct arena *a) {
    if (a->index < SWARM_ARENAS_KEPT) {
        kept_free[nkept_free++] = a;
        return;
    }
    free(a->data);
    a->data = NULL;
    a->capacity = 0;
    extra_free[nextra_free++] = a;
}

static void busy_push(struct arena *a) {
    busy[(busy_head + nbusy) % SWARM_ARENAS_MAX] = a;
    nbusy++;
}

/* A few busy arenas, oldest first: one whose child is done and left no report
   is free again; the others go to the back, so that a child that never
   reaches its exec (stopped, or stuck in a chdir on a dead NFS mount) holds
   its own arena only. Bounded per call, whatever the number in flight. */
#define HARVEST_PER_CALL 8
static void arenas_harvest(void) {
    int n = nbusy < HARVEST_PER_CALL ? nbusy : HARVEST_PER_CALL;
    for (int i = 0; i < n; i++) {
        struct arena *a = busy[busy_head];
        busy_head = (busy_head + 1) % SWARM_ARENAS_MAX;
        nbusy--;
        if (__atomic_load_n(&a->word, __ATOMIC_ACQUIRE) == CHILD_DONE && a->report.step == SWARM_STEP_NONE) arena_release(a);
        else busy_push(a);
    }
    if (nbusy == 0 && extra_dirty) {
        /* A storm is over: the pages it touched in the extra arenas' stacks go back (they fault in again if needed). */
        (void)madvise(stacks + (size_t)SWARM_ARENAS_KEPT * ARENA_STACK_SIZE,
                      (size_t)(narenas - SWARM_ARENAS_KEPT) * ARENA_STACK_SIZE, MADV_DONTNEED);
        extra_dirty = 0;
    }
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Copies what req points at into a; view gets the copy. 0, or -1 (ENOMEM). */
static int arena_copy(struct arena *a, const struct swarm_spawn_request *req) {
    size_t argc = 0, envc = 0;
    size_t strings = strlen(req->path) + 1 + (req->cwd ? strlen(req->cwd) + 1 : 0);
    for (; req->argv[argc]; argc++) strings += strlen(req->argv[argc]) + 1;
    for (; req->envp[envc]; envc++) strings += strlen(req->envp[envc]) + 1;
    size_t argv_size = align8((argc + 1) * sizeof(char *)), envp_size = align8((envc + 1) * sizeof(char *));
    size_t rl_size = align8((size_t)req->nrlimits * sizeof(struct swarm_rlimit));
    size_t fds_size = align8((size_t)req->nfds * sizeof(int));
    size_t need = argv_size + envp_size + rl_size + fds_size + strings;
    if (need > a->capacity) {
        char *bigger = realloc(a->data, need);
        if (!bigger) return -1;
        a->data = bigger;
        a->capacity = need;
    }
    char *p = a->data;
    char **argv = (char **)p;
    p += argv_size;
    char **envp = (char **)p;
    p += envp_size;
    struct swarm_rlimit *rl = (struct swarm_rlimit *)p;
    p += rl_size;
    int *fds = (int *)p;
    p += fds_size;
#define ARENA_STRING(dst, src) do { size_t n_ = strlen(src) + 1; memcpy(p, (src), n_); (dst) = p; p += n_; } while (0)
    a->view = *req;
    ARENA_STRING(a->view.path, req->path);
    if (req->cwd) ARENA_STRING(a->view.cwd, req->cwd);
    for (size_t i = 0; i < argc; i++) ARENA_STRING(argv[i], req->argv[i]);
    argv[argc] = NULL;
    a->view.listen_pid_slot = NULL;     /* the child writes only into a slot it owns */
    for (size_t i = 0; i < envc; i++) {
        ARENA_STRING(envp[i], req->envp[i]);
        if (req->envp[i] == req->listen_pid_slot) a->view.listen_pid_slot = envp[i];
    }
    envp[envc] = NULL;
#undef ARENA_STRING
    if (req->nrlimits > 0) memcpy(rl, req->rlimits, (size_t)req->nrlimits * sizeof *rl);
    if (req->nfds > 0) memcpy(fds, req->fds, (size_t)req->nfds * sizeof *fds);
    a->view.argv = argv;
    a->view.envp = envp;
    a->view.rlimits = rl;
    a->view.fds = fds;
    return 0;
}

/* A free arena holding a copy of req, or NULL (SWARM_ARENAS_MAX busy, or no memory). */
static struct arena *arena_take(const struct swarm_spawn_request *req) {
    arenas_harvest();
    struct arena *a = NULL;
    if (nkept_free > 0) {
        a = kept_free[--nkept_free];
    } else if (nextra_free > 0) {
        a = extra_free[--nextra_free];
        extra_dirty = 1;
    } else if (narenas < SWARM_ARENAS_MAX) {
        if (!stacks) {
            void *m = mmap(NULL, (size_t)SWARM_ARENAS_MAX * ARENA_STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) return NULL;
            stacks = m;
        }
        a = calloc(1, sizeof *a);
        if (!a) return NULL;
        a->index = narenas++;
        all_arenas[a->index] = a;
        if (a->index >= SWARM_ARENAS_KEPT) extra_dirty = 1;
    } else {
        return NULL;
    }
    if (arena_copy(a, req) < 0) {
        arena_release(a);
        return NULL;
    }
    a->report.err = 0;
    a->report.step = SWARM_STEP_NONE;
    return a;
}

static char *arena_stack_top(struct arena *a) { return stacks + (size_t)(a->index + 1) * ARENA_STACK_SIZE; }

static void arena_hold(struct arena *a, pid_t pid) {
    a->pid = pid;
    busy_push(a);
}

/* a's report, if a is the arena of pid's child and it failed; taken once
   (the arena is freed when the harvest comes to it). Under slot_lock. */
static int take_report(struct arena *a, pid_t pid, int *err, int *step, char *path, size_t path_size) {
    if (a->pid != pid || __atomic_load_n(&a->word, __ATOMIC_ACQUIRE) != CHILD_DONE || a->report.step == SWARM_STEP_NONE) return 0;
    *err = a->report.err;
    *step = a->report.step;
    if (path_size > 0) {
        size_t n = strlen(a->view.path);
        if (n >= path_size) n = path_size - 1;
        memcpy(path, a->view.path, n);
        path[n] = '\0';
    }
    a->report.step = SWARM_STEP_NONE;
    return 1;
}

int swarm_spawn_take_failure_ticket(int ticket, pid_t pid, int *err, int *step, char *path, size_t path_size) {
    int found = 0;
    pthread_mutex_lock(&slot_lock);
    if (ticket >= 0 && ticket < narenas) found = take_report(all_arenas[ticket], pid, err, step, path, path_size);
    pthread_mutex_unlock(&slot_lock);
    return found;
}

int swarm_spawn_take_failure(pid_t pid, int *err, int *step, char *path, size_t path_size) {
    int found = 0;
    pthread_mutex_lock(&slot_lock);
    for (int i = 0; i < nbusy && !found; i++) found = take_report(busy[(busy_head + i) % SWARM_ARENAS_MAX], pid, err, step, path, path_size);
    pthread_mutex_unlock(&slot_lock);
    return found;
}

/* The request's fds as they were, after a failed move onto the slots. */
static void unslot(struct swarm_spawn_request *view, const struct swarm_spawn_request *req, const int *fds) {
    view->fds = fds;
    view->stdin_fd = req->stdin_fd;
    view->stdout_fd = req->stdout_fd;
    view->stderr_fd = req->stderr_fd;
    view->cgroup_procs_fd = req->cgroup_procs_fd;
    view->intercept_sock = req->intercept_sock;
}

int swarm_spawn_last_ticket(void) { return last_ticket; }

int swarm_spawn_arena_count(void) {
    pthread_mutex_lock(&slot_lock);
    int n = narenas;
    pthread_mutex_unlock(&slot_lock);
    return n;
}

int swarm_spawn_execing(int ticket, pid_t pid) {
    int r = 0;
    pthread_mutex_lock(&slot_lock);
    if (ticket >= 0 && ticket < narenas) {
        struct arena *a = all_arenas[ticket];
        /* A reused arena holds another pid: this one's exec is over. */
        r = a->pid == pid && __atomic_load_n(&a->word, __ATOMIC_ACQUIRE) != CHILD_DONE;
    }
    pthread_mutex_unlock(&slot_lock);
    return r;
}

/* clone(CLONE_VM) on a stack of its own, like posix_spawn: no copy of
   swarmd's page tables. With CLONE_VFORK swarmd resumes once the child has
   exec'd (or failed); without (no_wait_exec, above) once the child is on its
   own fd table. The child touches only its stack, the request prepared
   before, and raw system calls. */
pid_t swarm_spawn(const struct swarm_spawn_request *req, int *err, int *step) {
    *err = 0;
    *step = SWARM_STEP_NONE;
    last_ticket = -1;
    pid_t parent = getpid();
    /* What one spawn needs: on this stack for a spawn that waits, in an arena for one that does not. */
    struct child_report local_report = { 0, SWARM_STEP_NONE };
    struct swarm_spawn_request local_view = *req;
    struct child_args local_args;
    int local_slot_fds[SWARM_SPAWN_SLOTS];
    struct child_report *report = &local_report;
    struct swarm_spawn_request *view = &local_view;
    struct child_args *args = &local_args;
    int *slot_fds = local_slot_fds;
    struct arena *arena = NULL;
    struct arena *borrowed = NULL;   /* an arena whose memory serves a spawn that waits after all */
    int joined_procs = -1;
#if SWARM_SPAWN_WITH_FORK
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) { *err = errno; *step = SWARM_STEP_FORK; return -1; }
    *args = (struct child_args){ view, { NULL, pipefd[1] }, pipefd[0], parent, 0, 0, 0, NULL };
    joined_procs = open_procs_for_join(view);  /* fork() has no CLONE_INTO_CGROUP */
    if (req->cgroup_dir_fd >= 0 && !view->join_cgroup) {
        /* No way into the cgroup: fail rather than run outside it. */
        *err = errno;
        *step = SWARM_STEP_CGROUP;
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
#endif

    pthread_mutex_lock(&slot_lock);
#if SWARM_HAVE_CLONE3_RUN
    if (req->no_wait_exec && !req->join_cgroup && !req->no_clone3
        && (req->cgroup_dir_fd < 0 || !clone3_unsupported)) {
        arena = arena_take(req);
        if (arena) {
            report = &arena->report;
            view = &arena->view;
            args = &arena->args;
            slot_fds = arena->slot_fds;
        }
    }
#endif
#if !SWARM_SPAWN_WITH_FORK
    *args = (struct child_args){ view, { report, -1 }, -1, parent, 0, 0, 0, NULL };
    if (!child_stack) {
        void *stack = mmap(NULL, child_stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            *err = errno;
            *step = SWARM_STEP_FORK;
            if (arena) arena_release(arena);
            pthread_mutex_unlock(&slot_lock);
            return -1;
        }
        child_stack = stack;
    }
    size_t stack_size = arena ? ARENA_STACK_SIZE : child_stack_size;
    (void)stack_size;   /* clone3 only */
    char *stack_top = arena ? arena_stack_top(arena) : (char *)child_stack + child_stack_size;
#endif
    const int *unslotted_fds = view->fds;
    int used = 0;
    /* Room for a cgroup.procs fd opened later (open_procs_for_join). */
    int needed = 4 + req->nfds + 1 + (req->intercept_bind ? 1 : 0);
    if (!SWARM_SPAWN_WITH_FORK && placeholder >= 0 && needed <= nslots) {
        int ok = 1;
        for (int i = 0; ok && i < req->nfds; i++) {
            slot_fds[i] = to_slot(req->fds[i], &used);
            ok = slot_fds[i] >= 0 || req->fds[i] < 0;
        }
        if (ok) { view->stdin_fd = to_slot(req->stdin_fd, &used); ok = req->stdin_fd < 0 || view->stdin_fd >= 0; }
        if (ok) { view->stdout_fd = to_slot(req->stdout_fd, &used); ok = req->stdout_fd < 0 || view->stdout_fd >= 0; }
        if (ok) { view->stderr_fd = to_slot(req->stderr_fd, &used); ok = req->stderr_fd < 0 || view->stderr_fd >= 0; }
        if (ok && req->join_cgroup) { view->cgroup_procs_fd = to_slot(req->cgroup_procs_fd, &used); ok = view->cgroup_procs_fd >= 0; }
        if (ok && req->intercept_bind) { view->intercept_sock = to_slot(req->intercept_sock, &used); ok = view->intercept_sock >= 0; }
        if (ok) {
            view->fds = slot_fds;
            args->shared_table = 1;
            args->ceiling = slot_ceiling;
        } else {
            /* A bad fd in the request (EBADF): the copying path reports it as before. */
            release_slots(used);
            used = 0;
            unslot(view, req, unslotted_fds);
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
    if (pid == 0) child_entry(args);
    int fork_errno = errno;
#else
    pid_t pid = -1;
    int fork_errno = 0;
    int cloned = 0;
    if (arena) {
        __atomic_store_n(&arena->word, CHILD_CLONED, __ATOMIC_RELEASE);
        args->stage = &arena->word;
    }
#if SWARM_HAVE_CLONE3_RUN
    /* Created in its cgroup: joining it from the child (a write to
       cgroup.procs, a cgroup migration under the kernel's threadgroup lock)
       took 0.45 ms on average and up to 15 ms per spawn on a busy host, while
       swarmd waited in vfork. Any failure falls back to clone and the join,
       which reports its own error. */
    if (req->cgroup_dir_fd >= 0 && !clone3_unsupported && !req->no_clone3) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_VM | CLONE_INTO_CGROUP | (arena ? CLONE_CHILD_CLEARTID : CLONE_VFORK)
                 | (args->shared_table ? CLONE_FILES : 0);
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)(stack_top - stack_size);
        ca.stack_size = stack_size;
        ca.cgroup = (uint64_t)req->cgroup_dir_fd;
        if (arena) ca.child_tid = (uint64_t)(uintptr_t)&arena->word;
        args->in_cgroup = 1;
        long r = swarm_clone3_run(&ca, sizeof ca, child_entry, args);
        if (r >= 0) {
            pid = (pid_t)r;
            cloned = 1;
        } else {
            args->in_cgroup = 0;
            if (r == -ENOSYS || r == -E2BIG) clone3_unsupported = 1;
            if (arena) {
                /* The join that follows needs the waiting kind (see above); the arena's memory serves it. */
                __atomic_store_n(&arena->word, CHILD_DONE, __ATOMIC_RELEASE);
                args->stage = NULL;
                borrowed = arena;
                arena = NULL;
            }
        }
    }
#endif
    if (!cloned) {
        if (!view->join_cgroup && req->cgroup_dir_fd >= 0) {
            joined_procs = open_procs_for_join(view);
            if (joined_procs >= 0 && args->shared_table) {
                view->cgroup_procs_fd = to_slot(joined_procs, &used);
                if (view->cgroup_procs_fd < 0) view->join_cgroup = 0;
            }
            if (!view->join_cgroup) {
                /* No way into the cgroup: fail rather than run outside it. */
                fork_errno = errno;
                pthread_sigmask(SIG_SETMASK, &old, NULL);
                release_slots(used);
                if (borrowed) arena_release(borrowed);
                pthread_mutex_unlock(&slot_lock);
                if (joined_procs >= 0) close(joined_procs);
                *err = fork_errno;
                *step = SWARM_STEP_CGROUP;
                return -1;
            }
        }
        int flags = CLONE_VM | SIGCHLD | (arena ? CLONE_CHILD_CLEARTID : CLONE_VFORK) | (args->shared_table ? CLONE_FILES : 0);
        pid = clone(child_entry, stack_top, flags, args, NULL, NULL, arena ? (pid_t *)&arena->word : NULL);
        fork_errno = errno;
    }
    if (borrowed) {
        /* The child is done with it (vfork): keep its report, free the rest. */
        local_report = *report;
        report = &local_report;
        arena_release(borrowed);
    }
    if (arena) {
        if (pid < 0) {
            __atomic_store_n(&arena->word, CHILD_DONE, __ATOMIC_RELEASE);
            arena_release(arena);
        } else {
            /* Until the child has its own fd table and process group (or is gone). */
            while (__atomic_load_n(&arena->word, __ATOMIC_ACQUIRE) == CHILD_CLONED)
                (void)syscall(SYS_futex, &arena->word, FUTEX_WAIT, CHILD_CLONED, NULL, NULL, 0);
            arena_hold(arena, pid);
        }
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
        do { n = read(pipefd[0], report, sizeof *report); } while (n < 0 && errno == EINTR);
        close(pipefd[0]);
        if (n != (ssize_t)sizeof *report) report->step = SWARM_STEP_NONE;
    }
#endif
    if (pid < 0) {
        *err = fork_errno;
        *step = SWARM_STEP_FORK;
        return -1;
    }
    /* A child that runs on reports at its reap (swarm_spawn_take_failure). */
    if (arena) {
        last_ticket = arena->index;
        return pid;
    }
    if (report->step != SWARM_STEP_NONE) {
        /* The child is exiting with 127: reap it here so no unknown pid reaches the reaper. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *err = report->err;
        *step = report->step;
        return -1;
    }
    return pid;
}

int swarm_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}
