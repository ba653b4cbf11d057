/* rayon-peer.c: the pipe to the Rayon peer process (see rayon-peer.h). */
#define _GNU_SOURCE
#include "rayon-peer.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int rayon_peer_start(rayon_peer_t *p, const char *path) {
  int in[2], out[2]; /* in: we write, it reads; out: it writes, we read */
  if (pipe2(in, O_CLOEXEC) != 0) return -1;
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    return -1;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  char *argv[] = {(char *)path, NULL};
  int rc = posix_spawn(&p->pid, path, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    fprintf(stderr, "bench-executor: cannot start the Rayon peer %s\n", path);
    close(in[1]);
    close(out[0]);
    return -1;
  }
  p->to = fdopen(in[1], "w");
  p->from = fdopen(out[0], "r");
  return 0;
}

int rayon_peer_run(rayon_peer_t *p, const char *command, double *seconds, long *result) {
  if (fprintf(p->to, "%s\n", command) < 0 || fflush(p->to) != 0) return -1;
  if (fscanf(p->from, "%lf %ld", seconds, result) != 2) {
    fprintf(stderr, "bench-executor: the Rayon peer gave no answer to '%s'\n", command);
    return -1;
  }
  return 0;
}

void rayon_peer_stop(rayon_peer_t *p) {
  fclose(p->to);
  fclose(p->from);
  waitpid(p->pid, NULL, 0);
}
