/* knhk/errors.h: error codes shared by every knhk_ function.
 *
 * Every fallible function returns 0 (or a non-negative count) on success and
 * one of these negative codes on failure. They are negated errno values where
 * one fits, so they read naturally in strace and perror-style output.
 * knhk_strerror() names them; knhk_err_name() gives the symbol ("KNHK_EINVAL").
 */
#ifndef KNHK_ERRORS_H
#define KNHK_ERRORS_H

enum {
  KNHK_OK = 0,
  KNHK_EINVAL = -22,       /* bad argument: NULL, out of range, wrong handle */
  KNHK_ENOMEM = -12,       /* allocation failed */
  KNHK_EBUSY = -16,        /* handle still in use (e.g. close with tasks live) */
  KNHK_EDEADLK = -35,      /* the call would wait for the calling thread itself */
  KNHK_ECANCELED = -125,   /* cancelled (a task's status, or a wait's result) */
  KNHK_ETIMEDOUT = -110,   /* a deadline passed */
  KNHK_ESHUTDOWN = -108,   /* the executor is shutting down or shut down */
  KNHK_ECLOSED = -32,      /* the nursery or channel is closed (EPIPE) */
  KNHK_EAGAIN = -11,       /* nothing available now; try again */
  KNHK_EALREADY = -114,    /* already done (second close, second start) */
  KNHK_ENOENT = -2,        /* no such file or command */
  KNHK_EIO = -5,           /* an I/O operation failed */
  KNHK_EACCES = -13,       /* permission denied (a command not executable) */
  KNHK_EMFILE = -24,       /* too many open files in this process */
  KNHK_ENFILE = -23,       /* too many open files in the system */
  KNHK_ENOTDIR = -20,      /* a path's directory part is not a directory */
  KNHK_ENOEXEC = -8,       /* a command the system cannot execute */
  KNHK_E2BIG = -7,         /* a command's arguments and environment are too long */
  KNHK_EFAILED = -1000     /* a task failed (the generic task failure status) */
};

/* Any thread. A static, human-readable description; never NULL. */
const char *knhk_strerror(int err);
/* Any thread. The code's symbol, e.g. "KNHK_EINVAL"; "KNHK_E?" if unknown. */
const char *knhk_err_name(int err);

#endif
