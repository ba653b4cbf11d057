/* errors.c: names and descriptions of the KNHK_E* codes. */
#include "knhk/errors.h"

#define KNHK__ERRORS(X)                                                        \
  X(KNHK_OK, "success")                                                        \
  X(KNHK_EINVAL, "invalid argument")                                           \
  X(KNHK_ENOMEM, "out of memory")                                              \
  X(KNHK_EBUSY, "resource busy")                                               \
  X(KNHK_EDEADLK, "the call would wait for the calling thread itself")         \
  X(KNHK_ECANCELED, "cancelled")                                               \
  X(KNHK_ETIMEDOUT, "timed out")                                               \
  X(KNHK_ESHUTDOWN, "executor is shut down")                                   \
  X(KNHK_ECLOSED, "closed")                                                    \
  X(KNHK_EAGAIN, "resource temporarily unavailable")                          \
  X(KNHK_EALREADY, "already done")                                             \
  X(KNHK_ENOENT, "no such file or directory")                                  \
  X(KNHK_EIO, "input/output error")                                            \
  X(KNHK_EACCES, "permission denied")                                          \
  X(KNHK_EMFILE, "too many open files")                                        \
  X(KNHK_ENFILE, "too many open files in the system")                          \
  X(KNHK_ENOTDIR, "not a directory")                                           \
  X(KNHK_ENOEXEC, "not an executable format")                                  \
  X(KNHK_E2BIG, "argument list too long")                                      \
  X(KNHK_EFAILED, "task failed")

const char *knhk_strerror(int err) {
#define KNHK__MSG(code, msg) case code: return msg;
  switch (err) { KNHK__ERRORS(KNHK__MSG) }
#undef KNHK__MSG
  return "unknown error";
}

const char *knhk_err_name(int err) {
#define KNHK__NAME(code, msg) case code: return #code;
  switch (err) { KNHK__ERRORS(KNHK__NAME) }
#undef KNHK__NAME
  return "KNHK_E?";
}
