#ifndef SWARM_MISC_H
#define SWARM_MISC_H

#include <sys/types.h>

int swarm_accept(int fd);                      ///< accept4(NONBLOCK|CLOEXEC)
int swarm_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);
int swarm_enable_passcred(int fd);
/// recvmsg of one datagram with SCM_CREDENTIALS; returns length, sender pid in *pid (0 if none).
/// Any passed fds are closed.
ssize_t swarm_recv_with_cred(int fd, void *buf, size_t len, pid_t *pid);
/// memfd_create(name, 0): survives exec (the re-exec hand-over relies on it).
int swarm_memfd_create(const char *name);
/// memfd_create(name, MFD_CLOEXEC when cloexec != 0).
int swarm_memfd_create_flags(const char *name, int cloexec);
int swarm_pipe_cloexec(int fds[2]);

/* The CPUs this process may run on, ascending; how many were written, -1 on failure. */
int swarm_allowed_cpus(int *out, int max);

/* A private epoll set (epoll_event is packed on x86-64, so Swift goes through these). */
int swarm_epoll_create(void);                  ///< epoll_create1(EPOLL_CLOEXEC)
/// epoll_ctl ADD (add != 0) or MOD of `fd` for `events`, with `token` as its data.
int swarm_epoll_watch(int epfd, int add, int fd, unsigned int events, unsigned long long token);
/// epoll_wait without waiting: up to `max` ready (token, events); how many, -1 on failure.
int swarm_epoll_ready(int epfd, unsigned long long *tokens, unsigned int *events, int max);

/* The guard of a real-time swarmd: SIGXCPU (RLIMIT_RTTIME's soft limit, set to
   `soft_us` of CPU without a blocking call, below a finite hard limit) moves
   the calling thread, and the one the signal interrupted, back under
   SCHED_OTHER at once, from the handler: a loop that spins cannot read a
   signalfd. The limit that was in force is returned in *old_soft and
   *old_hard (for children, which must not inherit the guard). 0, or -1 with
   errno. */
int swarm_rttime_guard(unsigned long long soft_us, unsigned long long *old_soft, unsigned long long *old_hard);
/* Whether the guard has fired since the last call (and forgets it). */
int swarm_rttime_tripped(void);

/* malloc keeps its heap instead of giving memory back (no trim, no mmap'd
   chunks, growth in large steps): brk and munmap take the mmap_lock for
   writing, and with children that share swarmd's memory until their exec
   (spawn.c), a write waits for every such child in execve, which reads it. */
void swarm_hold_heap(void);

#endif
