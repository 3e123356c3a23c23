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
#include <linux/filter.h>
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

int swarm_accept(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int swarm_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int swarm_enable_passcred(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
}

ssize_t swarm_recv_with_cred(int fd, void *buf, size_t len, pid_t *pid) {
    struct iovec iov = { buf, len };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 16)];
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
    if (n < 0) return -1;
    *pid = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            *pid = cred.pid;
        } else if (c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int passed;
                memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                close(passed);
            }
        }
    }
    if (msg.msg_flags & MSG_TRUNC) { errno = EMSGSIZE; return -1; }
    return n;
}

int swarm_attach_reuseport_steering(int fd, unsigned n, int ipv6) {
    if (n == 0) { errno = EINVAL; return -1; }
    /* The skb data starts after the TCP header; SKF_NET_OFF reaches the IP header. */
    uint32_t sport = ipv6 ? 40 : 20;   /* TCP source port, assuming no IP options / extension headers */
    uint32_t saddr = ipv6 ? 20 : 12;   /* (last 32 bits of) the source address */
    struct sock_filter code[] = {
        { BPF_LD | BPF_H | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF + sport },
        { BPF_ALU | BPF_RSH | BPF_K, 0, 0, 1 },
        { BPF_MISC | BPF_TAX, 0, 0, 0 },
        { BPF_LD | BPF_W | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF + saddr },
        { BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0 },
        { BPF_ALU | BPF_MOD | BPF_K, 0, 0, n },
        { BPF_RET | BPF_A, 0, 0, 0 },
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}

int swarm_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, 0);
}

int swarm_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

/* Round-robin steering of a SO_REUSEPORT group with an eBPF program
 * (BPF_PROG_TYPE_SK_REUSEPORT): a counter in an array map picks the next
 * index modulo the number of live slots, and a REUSEPORT_SOCKARRAY maps
 * each slot index to its socket. An index with no socket falls back to the
 * kernel's hash. Needs CAP_BPF (root); callers fall back to the classic BPF
 * program otherwise. */
#include <linux/bpf.h>

static long swarm_bpf(int cmd, union bpf_attr *attr) {
    return syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i;
    memset(&i, 0, sizeof i);
    i.code = code;
    i.dst_reg = dst;
    i.src_reg = src;
    i.off = off;
    i.imm = imm;
    return i;
}

int swarm_rr_create(unsigned max_slots, int *state_map, int *sock_map, char *log, unsigned log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = sizeof(struct swarm_rr_state);
    attr.max_entries = 1;
    int state = (int)swarm_bpf(BPF_MAP_CREATE, &attr);
    if (state < 0) return -1;

    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_REUSEPORT_SOCKARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = max_slots;
    int socks = (int)swarm_bpf(BPF_MAP_CREATE, &attr);
    if (socks < 0) { int e = errno; close(state); errno = e; return -1; }

    struct bpf_insn prog[40];
    int n = 0;
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0);          /* r6 = ctx */
    prog[n++] = insn(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0);                  /* *(u32 *)(fp-4) = 0 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4);                /* r2 = fp-4 */
    prog[n++] = insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, state);/* r1 = &state */
    prog[n++] = insn(0, 0, 0, 0, 0);
    prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
    int jump_to_pass_1 = n;
    prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 0, 0);                   /* if r0 == 0 goto pass */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_7, BPF_REG_0, 0, 0);          /* r7 = value */
    /* A hand-over pending: the next `quota` connections go to index `target`. Two
       CPUs may both take the last one; the quota then ends at -1, which is as done. */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_1, BPF_REG_7, 16, 0);          /* r1 = quota */
    int jump_to_rr = n;
    prog[n++] = insn(BPF_JMP | BPF_JSLE | BPF_K, BPF_REG_1, 0, 0, 0);                  /* if quota <= 0 goto rr */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, -1);
    prog[n++] = insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_7, BPF_REG_1, 16, BPF_ADD); /* lock quota -= 1 */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_8, BPF_REG_7, 12, 0);           /* r8 = target */
    int jump_to_select = n;
    prog[n++] = insn(BPF_JMP | BPF_JA, 0, 0, 0, 0);                                    /* goto select */
    prog[jump_to_rr].off = (int16_t)(n - jump_to_rr - 1);
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1);
    prog[n++] = insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_7, BPF_REG_1, 0, BPF_ADD);  /* lock counter += 1 */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_8, BPF_REG_7, 0, 0);           /* r8 = counter */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_9, BPF_REG_7, 8, 0);            /* r9 = live slots */
    int jump_to_pass_2 = n;
    prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_9, 0, 0, 0);                   /* if r9 == 0 goto pass */
    prog[n++] = insn(BPF_ALU64 | BPF_MOD | BPF_X, BPF_REG_8, BPF_REG_9, 0, 0);          /* r8 %= r9 */
    prog[jump_to_select].off = (int16_t)(n - jump_to_select - 1);
    prog[n++] = insn(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_8, -8, 0);          /* *(u32 *)(fp-8) = r8 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0);          /* r1 = ctx */
    prog[n++] = insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, socks);/* r2 = &socks */
    prog[n++] = insn(0, 0, 0, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -8);                /* r3 = fp-8 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0);                 /* flags */
    prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_select_reuseport);
    int pass = n;
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS);
    prog[n++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    prog[jump_to_pass_1].off = (int16_t)(pass - jump_to_pass_1 - 1);
    prog[jump_to_pass_2].off = (int16_t)(pass - jump_to_pass_2 - 1);

    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attr.insn_cnt = (uint32_t)n;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    if (log && log_size) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    int fd = (int)swarm_bpf(BPF_PROG_LOAD, &attr);
    if (fd < 0) { int e = errno; close(state); close(socks); errno = e; return -1; }
    *state_map = state;
    *sock_map = socks;
    return fd;
}

int swarm_rr_attach(int prog, int sock) {
    return setsockopt(sock, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof prog);
}

int swarm_rr_set_socket(int sock_map, unsigned index, int sock) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    uint64_t value = (uint64_t)sock;
    attr.map_fd = (uint32_t)sock_map;
    attr.key = (uint64_t)(uintptr_t)&index;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    return (int)swarm_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

/* Read-modify-write of the state: the program's counter keeps running meanwhile
   (a lost increment only shifts the round-robin by one). */
static int swarm_rr_update_state(int state_map, int set_count, unsigned count, unsigned target, int64_t quota) {
    uint32_t key = 0;
    struct swarm_rr_state st;
    memset(&st, 0, sizeof st);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)state_map;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&st;
    (void)swarm_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
    if (set_count) st.live = count;
    st.target = target;
    st.quota = quota;
    attr.flags = BPF_ANY;
    return (int)swarm_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

int swarm_rr_set_count(int state_map, unsigned count) {
    /* The socket array changed: a pending hand-over's index may name another slot now. */
    return swarm_rr_update_state(state_map, 1, count, 0, 0);
}

int swarm_rr_set_handover(int state_map, unsigned target, unsigned quota) {
    return swarm_rr_update_state(state_map, 0, 0, target, (int64_t)quota);
}

int swarm_rr_clear_socket(int sock_map, unsigned index) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)sock_map;
    attr.key = (uint64_t)(uintptr_t)&index;
    long r = swarm_bpf(BPF_MAP_DELETE_ELEM, &attr);
    return (r < 0 && errno == ENOENT) ? 0 : (int)r;
}

/* ---- Established connections of one process on one port (sock_diag) ---- */

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>

static int swarm_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Asks the kernel for established TCP sockets only (not the listening or
   TIME_WAIT ones, which /proc/net/tcp would list by the hundred thousand under
   short-lived connections), and counts those on local port `port` whose inode is
   in `inodes` (sorted ascending). -1 and errno on failure. */
int swarm_count_established(uint16_t port, const uint32_t *inodes, int ninodes) {
    int total = 0;
    const int families[2] = { AF_INET, AF_INET6 };
    for (int f = 0; f < 2; f++) {
        int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (fd < 0) return -1;
        struct {
            struct nlmsghdr nlh;
            struct inet_diag_req_v2 req;
        } msg;
        memset(&msg, 0, sizeof msg);
        msg.nlh.nlmsg_len = sizeof msg;
        msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.req.sdiag_family = (uint8_t)families[f];
        msg.req.sdiag_protocol = IPPROTO_TCP;
        msg.req.idiag_states = 1u << TCP_ESTABLISHED;
        if (send(fd, &msg, sizeof msg, 0) < 0) { int e = errno; close(fd); errno = e; return -1; }
        static char buf[32768] __attribute__((aligned(8)));
        int done = 0;
        while (!done) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                int e = errno; close(fd); errno = e; return -1;
            }
            if (n == 0) break;
            for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_type == NLMSG_DONE) { done = 1; break; }
                if (h->nlmsg_type == NLMSG_ERROR) {
                    struct nlmsgerr *err = NLMSG_DATA(h);
                    close(fd);
                    errno = err->error ? -err->error : EIO;
                    return -1;
                }
                struct inet_diag_msg *d = NLMSG_DATA(h);
                if (ntohs(d->id.idiag_sport) != port) continue;
                uint32_t inode = d->idiag_inode;
                if (bsearch(&inode, inodes, (size_t)ninodes, sizeof *inodes, swarm_cmp_u32)) total++;
            }
        }
        close(fd);
    }
    return total;
}

/* The CPUs this process may run on, ascending; how many were written. */
int swarm_allowed_cpus(int *out, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++) {
        if (CPU_ISSET(cpu, &set)) out[n++] = cpu;
    }
    return n;
}
