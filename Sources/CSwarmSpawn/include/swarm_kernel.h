#ifndef SWARM_KERNEL_H
#define SWARM_KERNEL_H

/* Kernel mechanisms for workers: a cgroup v2 per worker (cgroup.c) and
   interception of bind() with seccomp user notification (intercept.c).
   The child-side functions are called from the spawn child and make only
   async-signal-safe system calls; the rest is for the daemon. */

#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>

/* The native ABI's numbers, for Swift (which does not import SYS_bind). */
enum { SWARM_NR_BIND = __NR_bind, SWARM_NR_LISTEN = __NR_listen };

/* Spawn steps of these mechanisms, reported like enum swarm_spawn_step
   (numbered far from it so the two lists can grow independently). */
enum swarm_kernel_step {
    SWARM_STEP_CGROUP = 100,    /* write("0") to the worker's cgroup.procs */
    SWARM_STEP_SECCOMP = 101,   /* seccomp(SET_MODE_FILTER, NEW_LISTENER) */
    SWARM_STEP_SECCOMP_SEND = 102, /* sendmsg(SCM_RIGHTS) of the listener fd */
};

/* ---- cgroups (cgroup.c) ---- */

/* 1 if path is the root of a cgroup2 mount (statfs magic), 0 if not, -1 and errno. */
int swarm_is_cgroup2(const char *path);

/* ---- bind interception (intercept.c) ---- */

/* Flags the child reports with its listener fd. */
#define SWARM_INTERCEPT_NO_NEW_PRIVS  1u  /* PR_SET_NO_NEW_PRIVS was set to install the filter */
#define SWARM_INTERCEPT_WAIT_KILLABLE 2u  /* SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is in effect */

/* Child: install the filter (USER_NOTIF for bind and listen on the native
   arch, ALLOW for the rest) and send the listener fd over send_fd (a socketpair end)
   with SCM_RIGHTS; the listener is closed in the child. Raw system calls only
   (errno untouched): 0, or -errno with *step (SWARM_STEP_SECCOMP or
   SWARM_STEP_SECCOMP_SEND). */
int swarm_child_intercept_bind(int send_fd, int *step);

/* Parent: the listener fd the child sent (O_CLOEXEC), and its flags in *flags.
   -1 and errno (EAGAIN: nothing was sent). */
int swarm_intercept_receive_listener(int sock, unsigned *flags);

/* One bind() call waiting for an answer. */
struct swarm_bind_call {
    uint64_t id;        /* notification cookie */
    int32_t pid;        /* the caller (a thread id: any thread may bind) */
    uint32_t nr;        /* system call number */
    uint32_t arch;      /* AUDIT_ARCH_* */
    int32_t fd;         /* args[0] */
    uint64_t addr;      /* args[1]: pointer in the caller */
    uint64_t addrlen;   /* args[2], as passed (not truncated) */
};

/* Receives one notification without blocking: 1 with *call filled in; 0 if
   none is pending; -1 and errno (ENOENT: the caller died before it was
   received; EPIPE: every process under the filter has exited). */
int swarm_notif_recv(int notify_fd, struct swarm_bind_call *call);
/* 0 while the notification is still pending, -1 and errno (ENOENT) otherwise. */
int swarm_notif_id_valid(int notify_fd, uint64_t id);
/* ADDFD with SETFD: srcfd becomes the caller's newfd. The fd number, or -1 and errno. */
int swarm_notif_addfd(int notify_fd, uint64_t id, int srcfd, int newfd, int cloexec);
/* The answer: continue (the kernel runs the call itself) or val/error. 0, or -1 and errno. */
int swarm_notif_send(int notify_fd, uint64_t id, int cont, int64_t val, int32_t error);

/* process_vm_readv of len bytes at addr in pid: bytes read, or -1 and errno. */
ssize_t swarm_read_remote(pid_t pid, uint64_t addr, void *buf, size_t len);
/* pidfd_open(pid) / pidfd_getfd(pidfd, fd): an fd, or -1 and errno. */
int swarm_pidfd_open(pid_t pid);
int swarm_pidfd_getfd(int pidfd, int fd);
/* SO_DOMAIN, SO_TYPE, SO_PROTOCOL of a socket: 0, or -1 and errno. */
int swarm_socket_kind(int fd, int *domain, int *type, int *protocol);

/* Can this process intercept bind()? Runs a throwaway child (clone with no
   exit signal, so the daemon's waitpid(-1) reaper never sees it) that installs
   the filter and binds once; the probe answers it. 0 when everything works
   (*flags as above), else -1 with errno and a sentence in reason. */
int swarm_intercept_probe(char *reason, size_t reason_len, unsigned *flags);

#endif
