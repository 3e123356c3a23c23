/* Small calls Swift cannot import or express: accept4, SO_PEERCRED,
   SCM_CREDENTIALS, memfd_create, pipe2, sched_getaffinity, the packed epoll_event. */
#define _GNU_SOURCE
#include "swarm_misc.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

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

int swarm_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, 0);
}

int swarm_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
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

int swarm_memfd_create_flags(const char *name, int cloexec) {
    return (int)syscall(SYS_memfd_create, name, cloexec ? 1U /* MFD_CLOEXEC */ : 0U);
}

int swarm_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int swarm_epoll_watch(int epfd, int add, int fd, unsigned int events, unsigned long long token) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = token;
    return epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
}

int swarm_epoll_ready(int epfd, unsigned long long *tokens, unsigned int *events, int max) {
    struct epoll_event evs[128];
    if (max > 128) max = 128;
    int n = epoll_wait(epfd, evs, max, 0);
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

static volatile sig_atomic_t rttime_tripped;
static volatile pid_t rttime_guarded_tid;

static void on_rttime(int sig) {
    (void)sig;
    int saved = errno;
    struct sched_param normal = { .sched_priority = 0 };
    /* SIGXCPU is sent to the process: any thread that does not block it may
       run this. The thread that installed the guard (swarmd's loop) and this one. */
    (void)syscall(SYS_sched_setscheduler, rttime_guarded_tid, SCHED_OTHER, &normal);
    (void)syscall(SYS_sched_setscheduler, 0, SCHED_OTHER, &normal);
    rttime_tripped = 1;
    errno = saved;
}

int swarm_rttime_guard(unsigned long long soft_us, unsigned long long *old_soft, unsigned long long *old_hard) {
    struct rlimit old;
    if (getrlimit(RLIMIT_RTTIME, &old) < 0) return -1;
    *old_soft = old.rlim_cur;
    *old_hard = old.rlim_max;
    rttime_guarded_tid = (pid_t)syscall(SYS_gettid);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_rttime;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGXCPU, &sa, NULL) < 0) return -1;
    sigset_t xcpu;
    sigemptyset(&xcpu);
    sigaddset(&xcpu, SIGXCPU);
    if (pthread_sigmask(SIG_UNBLOCK, &xcpu, NULL) != 0) return -1;
    /* Below a finite hard limit, which would SIGKILL at the same moment. */
    rlim_t soft = old.rlim_max != RLIM_INFINITY && soft_us >= old.rlim_max / 2 ? old.rlim_max / 2 : soft_us;
    struct rlimit guard = { soft, old.rlim_max };
    return setrlimit(RLIMIT_RTTIME, &guard);
}

int swarm_rttime_tripped(void) {
    int t = rttime_tripped;
    rttime_tripped = 0;
    return t;
}

void swarm_hold_heap(void) {
    (void)mallopt(M_TRIM_THRESHOLD, 1 << 30);
    (void)mallopt(M_MMAP_THRESHOLD, 32 << 20);   /* glibc's largest on 64-bit */
    (void)mallopt(M_TOP_PAD, 64 << 20);
}
