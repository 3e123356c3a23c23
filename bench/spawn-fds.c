/* Spawn cost against the size of the caller's fd table (issue 18): swarm_spawn of /bin/true
   with and without the reserved fd slots, with 2*PIPES fds open. Built and run by
   bench/spawn-fds.sh: ./spawn-fds RESERVE PIPES SPAWNS */
#define _GNU_SOURCE
#include "swarm_spawn.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <string.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  int reserve=atoi(argv[1]); int pipes=atoi(argv[2]); int m=atoi(argv[3]);
  struct rlimit rl={65536,65536}; setrlimit(RLIMIT_NOFILE,&rl);
  if(reserve && swarm_spawn_reserve_slots()!=0){perror("reserve");return 1;}
  for(int i=0;i<pipes;i++){int p[2]; if(pipe2(p,O_CLOEXEC)<0){perror("pipe");return 1;}}
  int devnull=open("/dev/null",O_RDWR|O_CLOEXEC);
  char *av[]={"/bin/true",NULL}; char *ev[]={NULL};
  struct rusage a,b; getrusage(RUSAGE_SELF,&a); double t0=now();
  for(int i=0;i<m;i++){
    struct swarm_spawn_request r; memset(&r,0,sizeof r);
    r.path="/bin/true"; r.argv=av; r.envp=ev; r.stdin_fd=devnull; r.stdout_fd=devnull; r.stderr_fd=devnull; r.cpu=-1;
    int e,s; pid_t pid=swarm_spawn(&r,&e,&s); if(pid<0){fprintf(stderr,"spawn %d %d\n",e,s);return 1;}
    waitpid(pid,NULL,0);
  }
  double t=now()-t0; getrusage(RUSAGE_SELF,&b);
  double cpu=(b.ru_utime.tv_sec-a.ru_utime.tv_sec)+(b.ru_stime.tv_sec-a.ru_stime.tv_sec)+((b.ru_utime.tv_usec-a.ru_utime.tv_usec)+(b.ru_stime.tv_usec-a.ru_stime.tv_usec))/1e6;
  printf("reserve=%d fds=%d: %.1f us/spawn wall, %.1f us/spawn parent cpu\n",reserve,2*pipes,t/m*1e6,cpu/m*1e6);
}
