#define _GNU_SOURCE
#include "swarm_kernel.h"
#include "raw_syscall.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#  define SWARM_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#  define SWARM_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#  error "bind interception: add this architecture's AUDIT_ARCH_*"
#endif

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif

/* USER_NOTIF for bind() and listen() of the native ABI, ALLOW for everything
   else. listen() too, because a program's listen() on the socket it got
   would set swarm's backlog to the program's (Python's http.server: 5).
   Other ABIs (x32, i386 on x86_64) are not intercepted: their calls
   continue as they would without swarm. */
/* Raw system calls only (raw_syscall.h): the child may share swarmd's
   memory and TLS. The listener fd, or -errno. */
static int install_filter(unsigned *flags) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SWARM_AUDIT_ARCH, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bind, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_listen, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { (unsigned short)(sizeof code / sizeof code[0]), code };
    /* Killable wait (5.19+): once swarmd has received the notification, a
       non-fatal signal (Go's SIGURG preemption, every few ms) does not abort
       and restart the bind under it. */
    unsigned long mode = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    *flags = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        long fd = sys3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, mode, &prog);
        if (fd >= 0) {
            if (mode & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) *flags |= SWARM_INTERCEPT_WAIT_KILLABLE;
            return (int)fd;
        }
        if (fd == -EACCES && !(*flags & SWARM_INTERCEPT_NO_NEW_PRIVS)) {
            /* Without CAP_SYS_ADMIN the kernel accepts a filter only under
               no_new_privs: from here on, setuid/setgid bits and file
               capabilities of programs the worker execs are ignored. A root
               swarmd installs the filter before dropping to the app's user,
               so its workers keep them. */
            long r = sys6(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0);
            if (r < 0) return (int)r;
            *flags |= SWARM_INTERCEPT_NO_NEW_PRIVS;
            continue;
        }
        if (fd == -EINVAL && (mode & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)) {
            mode &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
            continue;
        }
        return (int)fd;
    }
    return -EINVAL;
}

/* 0, or -errno. */
static int send_fd(int sock, int fd, unsigned flags) {
    unsigned char payload = (unsigned char)flags;
    struct iovec iov = { &payload, 1 };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    for (size_t i = 0; i < sizeof control.buf; i++) control.buf[i] = 0;
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    int *slot = (int *)(void *)CMSG_DATA(c);
    *slot = fd;
    long n;
    do { n = sys3(SYS_sendmsg, sock, &msg, MSG_NOSIGNAL); } while (n == -EINTR);
    if (n < 0) return (int)n;
    return n == 1 ? 0 : -EIO;
}

int swarm_child_intercept_bind(int send_sock, int *step) {
    unsigned flags;
    *step = SWARM_STEP_SECCOMP;
    int listener = install_filter(&flags);
    if (listener < 0) return listener;
    *step = SWARM_STEP_SECCOMP_SEND;
    int r = send_fd(send_sock, listener, flags);
    (void)sys1(SYS_close, listener);
    return r;
}

/* The listener and its flags byte; or, with `extra`, whatever else came
   instead (the probe child's report) copied there, *extra_len its size. */
static int receive_listener(int sock, unsigned *flags, void *extra, size_t *extra_len) {
    unsigned char payload[64];
    memset(payload, 0, sizeof payload);
    struct iovec iov = { payload, extra ? sizeof payload : 1 };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    int fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count; i++) {
            int passed;
            memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fd < 0) fd = passed; else close(passed);
        }
    }
    if (fd < 0) {
        if (extra && n > 0) {
            size_t len = (size_t)n < *extra_len ? (size_t)n : *extra_len;
            memcpy(extra, payload, len);
            *extra_len = len;
        } else if (extra) {
            *extra_len = 0;
        }
        errno = n == 0 ? EPIPE : EBADMSG;
        return -1;
    }
    *flags = payload[0];
    return fd;
}

int swarm_intercept_receive_listener(int sock, unsigned *flags) {
    return receive_listener(sock, flags, NULL, NULL);
}

int swarm_notif_recv(int notify_fd, struct swarm_bind_call *call) {
    /* RECV itself ignores O_NONBLOCK and would sleep: ask poll first. A
       notification seen by poll cannot vanish before RECV without leaving
       RECV an ENOENT to return (the kernel counts it in a semaphore). */
    struct pollfd p = { notify_fd, POLLIN, 0 };
    int r;
    do { r = poll(&p, 1, 0); } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    if (r == 0) return 0;
    if (p.revents & POLLNVAL) { errno = EBADF; return -1; }
    if (!(p.revents & POLLIN)) {
        if (p.revents & (POLLHUP | POLLERR)) { errno = EPIPE; return -1; }
        return 0;
    }
    struct seccomp_notif n;
    memset(&n, 0, sizeof n);  /* the kernel refuses a buffer that is not zeroed */
    do { r = ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &n); } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    call->id = n.id;
    call->pid = (int32_t)n.pid;
    call->nr = (uint32_t)n.data.nr;
    call->arch = n.data.arch;
    call->fd = (int32_t)n.data.args[0];
    call->addr = n.data.args[1];
    call->addrlen = n.data.args[2];
    return 1;
}

int swarm_notif_id_valid(int notify_fd, uint64_t id) {
    return ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id);
}

int swarm_notif_addfd(int notify_fd, uint64_t id, int srcfd, int newfd, int cloexec) {
    struct seccomp_notif_addfd a;
    memset(&a, 0, sizeof a);
    a.id = id;
    a.flags = SECCOMP_ADDFD_FLAG_SETFD;
    a.srcfd = (uint32_t)srcfd;
    a.newfd = (uint32_t)newfd;
    a.newfd_flags = cloexec ? O_CLOEXEC : 0;
    int r;
    do { r = ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &a); } while (r < 0 && errno == EINTR);
    return r;
}

int swarm_notif_send(int notify_fd, uint64_t id, int cont, int64_t val, int32_t error) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    if (cont) {
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    } else {
        resp.val = val;
        resp.error = error;
    }
    int r;
    do { r = ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp); } while (r < 0 && errno == EINTR);
    return r;
}

ssize_t swarm_read_remote(pid_t pid, uint64_t addr, void *buf, size_t len) {
    struct iovec local = { buf, len };
    struct iovec remote = { (void *)(uintptr_t)addr, len };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

int swarm_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int swarm_pidfd_getfd(int pidfd, int fd) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
}

int swarm_socket_kind(int fd, int *domain, int *type, int *protocol) {
    socklen_t len = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, domain, &len) < 0) return -1;
    len = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, type, &len) < 0) return -1;
    len = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, protocol, &len) < 0) return -1;
    return 0;
}

/* ---- the availability probe ---- */

struct probe_report { int err; int step; };

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_readable(int fd, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left < 0) left = 0;
        struct pollfd p = { fd, POLLIN, 0 };
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        return (p.revents & POLLIN) ? 1 : 0;
    }
}

/* The probe child: raw system calls only (it is a copy of a multithreaded
   process). Exit 0: CONTINUE gave EBADF and the ADDFD+answer gave 0. */
static void probe_child(int sock) {
    int step;
    int failed = swarm_child_intercept_bind(sock, &step);
    if (failed < 0) {
        struct probe_report r = { -failed, step };
        ssize_t ignored = write(sock, &r, sizeof r);
        (void)ignored;
        _exit(1);
    }
    long a = syscall(SYS_bind, -1, NULL, 0);
    if (!(a < 0 && errno == EBADF)) _exit(2);
    long b = syscall(SYS_bind, -1, NULL, 0);
    if (b != 0) _exit(3);
    _exit(0);
}

static int probe_fail(char *reason, size_t len, int err, const char *fmt, const char *detail) {
    snprintf(reason, len, fmt, detail, strerror(err));
    errno = err;
    return -1;
}

int swarm_intercept_probe(char *reason, size_t reason_len, unsigned *flags) {
    reason[0] = 0;
    *flags = 0;
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return probe_fail(reason, reason_len, errno, "%ssocketpair: %s", "");
    /* No exit signal: the child is a "clone child" that only waitpid with
       __WCLONE reaps, so a daemon's waitpid(-1) reaper neither sees nor steals it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long pid = syscall(SYS_clone, 0L, NULL, NULL, NULL, 0L);
    if (pid == 0) {
        close(sp[0]);
        probe_child(sp[1]);
    }
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sp[1]);
    if (pid < 0) {
        close(sp[0]);
        return probe_fail(reason, reason_len, clone_errno, "%sclone: %s", "");
    }

    int result = -1;
    int listener = -1;
    int extra = -1;
    int64_t deadline = now_ms() + 2000;
    if (!wait_readable(sp[0], deadline)) {
        probe_fail(reason, reason_len, ETIMEDOUT, "%sthe probe child sent nothing within 2 s: %s", "");
        goto out;
    }
    struct probe_report r = { 0, 0 };
    size_t report_len = sizeof r;
    listener = receive_listener(sp[0], flags, &r, &report_len);
    if (listener < 0) {
        /* A failing child sends its report (errno, step) in place of the listener. */
        if (report_len == sizeof r) {
            const char *what = r.step == SWARM_STEP_SECCOMP_SEND ? "sendmsg of the listener fd"
                : "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER)";
            const char *hint = "";
            if (r.step == SWARM_STEP_SECCOMP) {
                if (r.err == ENOSYS) hint = " (no seccomp in this kernel)";
                else if (r.err == EINVAL) hint = " (the kernel lacks seccomp user notification: Linux 5.0+ needed, 5.9+ for ADDFD)";
                else if (r.err == EBUSY) hint = " (an enclosing seccomp filter already has a listener, e.g. a container runtime's)";
                else if (r.err == EPERM || r.err == EACCES) hint = " (a container or security policy forbids seccomp filters)";
            }
            char buf[256];
            snprintf(buf, sizeof buf, "%s failed%s", what, hint);
            probe_fail(reason, reason_len, r.err, "%s: %s", buf);
        } else {
            probe_fail(reason, reason_len, errno ? errno : EPROTO, "%sno listener fd from the probe child: %s", "");
        }
        goto out;
    }
    for (int round = 0; round < 2; round++) {
        if (!wait_readable(listener, deadline)) {
            probe_fail(reason, reason_len, ETIMEDOUT, "%sno bind() notification within 2 s: %s", "");
            goto out;
        }
        struct swarm_bind_call call;
        int got = swarm_notif_recv(listener, &call);
        if (got <= 0) {
            probe_fail(reason, reason_len, got < 0 ? errno : EAGAIN, "%sSECCOMP_IOCTL_NOTIF_RECV: %s", "");
            goto out;
        }
        if (round == 0) {
            if (swarm_notif_send(listener, call.id, 1, 0, 0) < 0) {
                probe_fail(reason, reason_len, errno, "%s: %s",
                           "SECCOMP_USER_NOTIF_FLAG_CONTINUE refused (Linux 5.5+ needed)");
                goto out;
            }
        } else {
            extra = fcntl(sp[0], F_DUPFD_CLOEXEC, 0);
            if (extra < 0 || swarm_notif_addfd(listener, call.id, extra, 100, 1) < 0) {
                probe_fail(reason, reason_len, errno, "%s: %s",
                           "SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD refused (Linux 5.9+ needed)");
                goto out;
            }
            if (swarm_notif_send(listener, call.id, 0, 0, 0) < 0) {
                probe_fail(reason, reason_len, errno, "%s: %s", "SECCOMP_IOCTL_NOTIF_SEND");
                goto out;
            }
        }
    }
    result = 0;
out:
    if (extra >= 0) close(extra);
    if (listener >= 0) close(listener);
    close(sp[0]);
    /* Bounded: the child exits at once when the probe worked; otherwise kill it. */
    int status = 0;
    int64_t reap_deadline = now_ms() + 2000;
    for (;;) {
        long w = waitpid((pid_t)pid, &status, __WCLONE | WNOHANG);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) break;
        if (now_ms() > reap_deadline) {
            kill((pid_t)pid, SIGKILL);
            while (waitpid((pid_t)pid, &status, __WCLONE) < 0 && errno == EINTR) {}
            break;
        }
        struct timespec ts = { 0, 2 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    if (result == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        char buf[160];
        snprintf(buf, sizeof buf, "the probe child's bind() got the wrong answers (exit %d)", code);
        probe_fail(reason, reason_len, EPROTO, "%s: %s", buf);
        result = -1;
    }
    return result;
}
