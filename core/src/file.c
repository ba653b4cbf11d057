/* file.c: whole-file reads and writes on the reactor (see knhk/reactor.h).
 *
 * The work runs on libuv's threadpool; the completion runs on the reactor
 * thread. A request holds the clock from its submission to the end of its
 * completion: a virtual clock does not jump while a file operation is in
 * flight (knhk/clock.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "knhk/errors.h"
#include "reactor_impl.h"


typedef struct {
  uv_work_t work;
  knhk_file_op_t *op;
  knhk_reactor_t *r;
} file_impl_t;

static int read_all(int fd, char **out, size_t *len) {
  size_t cap = 8192, n = 0;
  char *b = malloc(cap);
  if (!b) return KNHK_ENOMEM;
  for (;;) {
    if (cap - n < 4097) {
      char *nb = realloc(b, cap *= 2);
      if (!nb) {
        free(b);
        return KNHK_ENOMEM;
      }
      b = nb;
    }
    ssize_t k = read(fd, b + n, cap - n - 1);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      int e = -errno;
      free(b);
      return e;
    }
    if (k == 0) break;
    n += (size_t)k;
  }
  b[n] = 0;
  *out = b;
  *len = n;
  return 0;
}

static void file_work(uv_work_t *w) { /* threadpool thread */
  file_impl_t *fi = w->data;
  knhk_file_op_t *op = fi->op;
  int flags = op->kind == KNHK_FILE_READ     ? O_RDONLY
              : op->kind == KNHK_FILE_APPEND ? O_WRONLY | O_CREAT | O_APPEND
                                             : O_WRONLY | O_CREAT | O_TRUNC;
  int fd = open(op->path, flags | O_CLOEXEC, 0666);
  if (fd < 0) {
    op->error = errno == ENOENT ? KNHK_ENOENT : -errno;
    return;
  }
  if (op->kind == KNHK_FILE_READ) {
    op->error = read_all(fd, &op->result, &op->result_len);
  } else {
    size_t done = 0;
    while (done < op->len) {
      ssize_t k = write(fd, op->data + done, op->len - done);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        op->error = -errno;
        break;
      }
      done += (size_t)k;
    }
  }
  if (close(fd) != 0 && !op->error) op->error = KNHK_EIO;
}

/* Reactor thread: the request's end, and its hold on the clock with it
 * (after on_done, which wakes its task: the clock may jump only after). */
static void finish(knhk_reactor_t *r, knhk_file_op_t *op) {
  op->on_done(op); /* may free op */
  knhk_clock_release(r);
}

static void file_after(uv_work_t *w, int status) { /* reactor thread */
  file_impl_t *fi = w->data;
  knhk_file_op_t *op = fi->op;
  knhk_reactor_t *r = fi->r;
  if (status == UV_ECANCELED) op->error = KNHK_ECANCELED;
  r->file_ops--;
  free(fi);
  op->knhk__impl = NULL;
  finish(r, op);
}

void knhk__files_take(knhk_reactor_t *r) {
  knhk_link_t *l;
  while ((l = knhk__reactor_take(&r->files))) {
    knhk_file_op_t *op = container_of(l, knhk_file_op_t, knhk__link);
    file_impl_t *fi = malloc(sizeof *fi);
    if (!fi) {
      op->error = KNHK_ENOMEM;
      finish(r, op);
      continue;
    }
    fi->op = op;
    fi->r = r;
    fi->work.data = fi;
    op->knhk__impl = fi;
    r->file_ops++;
    if (uv_queue_work(&r->loop, &fi->work, file_work, file_after) != 0) {
      r->file_ops--;
      free(fi);
      op->error = KNHK_EIO;
      finish(r, op);
    }
  }
}

int knhk_file_submit(knhk_reactor_t *r, knhk_file_op_t *op) {
  if (!r || !op || !op->path || !op->on_done ||
      (op->kind != KNHK_FILE_READ && !op->data && op->len) || op->kind < 0 ||
      op->kind > KNHK_FILE_APPEND)
    return KNHK_EINVAL;
  op->error = 0;
  op->result = NULL;
  op->result_len = 0;
  op->knhk__reactor = r;
  knhk_clock_hold(r); /* before the request is visible: see finish */
  int rc = knhk__reactor_submit(r, &r->files, &op->knhk__link);
  if (rc != 0) knhk_clock_release(r);
  return rc;
}

void knhk_file_dispose(knhk_file_op_t *op) {
  if (!op) return;
  free(op->result);
  op->result = NULL;
  op->result_len = 0;
}
