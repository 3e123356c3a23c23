#ifndef SWARM_RAW_SYSCALL_H
#define SWARM_RAW_SYSCALL_H
/* System calls made without glibc's wrappers, for code that runs in a child
   sharing swarmd's memory and TLS (spawn.c: a CLONE_VM child swarmd does not
   wait for). A wrapper's failure writes errno, which is the calling thread's
   in swarmd too. These return the result, or -errno, and touch no memory.
   Elsewhere than x86_64 only children swarmd waits for exist, and glibc's
   syscall() is used. Internal to CSwarmSpawn. */
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
static inline long sys6(long n, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
static inline long sys6(long n, long a, long b, long c, long d, long e, long f) {
    long r = syscall(n, a, b, c, d, e, f);
    return r < 0 ? -errno : r;
}
#endif
#define sys0(n) sys6((n), 0, 0, 0, 0, 0, 0)
#define sys1(n, a) sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#endif
