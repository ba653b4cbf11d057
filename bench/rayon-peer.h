/* rayon-peer.h: drives the Rayon peer (bench/rayon-peer, a Rust program)
 * from bench-executor: one child process for the whole run, one command
 * per measurement, so Rayon's pools stay warm between runs as ours do. */
#ifndef KNHK_RAYON_PEER_H
#define KNHK_RAYON_PEER_H
#include <stdio.h>
#include <sys/types.h>

typedef struct {
  pid_t pid;
  FILE *to, *from;
} rayon_peer_t;

/* Starts the program at `path`. Returns 0, or -1 (with a message on
 * stderr) if it cannot be started. */
int rayon_peer_start(rayon_peer_t *p, const char *path);
/* Sends one command ("fib 30 2", see src/main.rs) and reads the answer:
 * wall seconds and the computed result. Returns 0, or -1 if the peer did
 * not answer (it died, or refused the command). */
int rayon_peer_run(rayon_peer_t *p, const char *command, double *seconds, long *result);
/* Closes its stdin and waits for it to exit. */
void rayon_peer_stop(rayon_peer_t *p);
#endif
