/* What a spawn costs the caller's loop when it waits for the child's exec
   (CLONE_VFORK) and when it does not (no_wait_exec, spawn.c's arenas), issue 18:
   SPAWNS spawns of /bin/true, back to back, reaping with WNOHANG between them
   as swarmd's loop does, with 2*PIPES fds open. Prints the time blocked in
   swarm_spawn per call (median, p90, max), the wall time until every child
   ran and was reaped, and the caller's CPU per spawn.
   Built and run by bench/spawn-wait.sh: ./spawn-wait NOWAIT PIPES SPAWNS */
#define _GNU_SOURCE
#include "swarm_spawn.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int reap(int flags, int nowait) {
    int status;
    pid_t pid = waitpid(-1, &status, flags);
    if (pid <= 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && nowait) {
        int e, s;
        char path[256];
        if (swarm_spawn_take_failure(pid, &e, &s, path, sizeof path)) fprintf(stderr, "exec of %s failed: %d\n", path, e);
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: spawn-wait NOWAIT PIPES SPAWNS\n"); return 2; }
    int nowait = atoi(argv[1]), pipes = atoi(argv[2]), m = atoi(argv[3]);
    struct rlimit rl = { 65536, 65536 };
    setrlimit(RLIMIT_NOFILE, &rl);
    if (swarm_spawn_reserve_slots() != 0) { perror("swarm_spawn_reserve_slots"); return 1; }
    for (int i = 0; i < pipes; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) { perror("pipe2"); return 1; }
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    char *av[] = { "/bin/true", NULL };
    char *ev[] = { "PATH=/usr/bin:/bin", NULL };
    double *blocked = calloc((size_t)m, sizeof *blocked);
    struct rusage a, b;
    getrusage(RUSAGE_SELF, &a);
    double t0 = now();
    int reaped = 0;
    for (int i = 0; i < m; i++) {
        struct swarm_spawn_request r;
        memset(&r, 0, sizeof r);
        r.path = "/bin/true";
        r.argv = av;
        r.envp = ev;
        r.stdin_fd = devnull;
        r.stdout_fd = devnull;
        r.stderr_fd = devnull;
        r.cpu = -1;
        r.cgroup_procs_fd = -1;
        r.cgroup_dir_fd = -1;
        r.no_wait_exec = nowait;
        int e, s;
        double t = now();
        pid_t pid = swarm_spawn(&r, &e, &s);
        blocked[i] = now() - t;
        if (pid < 0) { fprintf(stderr, "spawn failed: errno %d, step %d\n", e, s); return 1; }
        while (reap(WNOHANG, nowait)) reaped++;
    }
    double spawned = now() - t0;
    while (reaped < m && reap(0, nowait)) reaped++;
    double wall = now() - t0;
    getrusage(RUSAGE_SELF, &b);
    double cpu = (b.ru_utime.tv_sec - a.ru_utime.tv_sec) + (b.ru_stime.tv_sec - a.ru_stime.tv_sec)
               + ((b.ru_utime.tv_usec - a.ru_utime.tv_usec) + (b.ru_stime.tv_usec - a.ru_stime.tv_usec)) / 1e6;
    qsort(blocked, (size_t)m, sizeof *blocked, by_value);
    printf("%-7s fds=%-5d spawns=%d: blocked in spawn median %5.0f us, p90 %5.0f us, max %6.0f us; "
           "all spawned in %.3f s, all run and reaped in %.3f s; caller CPU %4.0f us/spawn\n",
           nowait ? "no-wait" : "wait", 2 * pipes + 3, m, blocked[m / 2] * 1e6, blocked[m * 9 / 10] * 1e6, blocked[m - 1] * 1e6,
           spawned, wall, cpu / m * 1e6);
    return 0;
}
