/* telemetry_impl.h: what the telemetry files share, and the hooks the rest
 * of core/src calls (private to core/src).
 *
 *   telemetry.c         recording: per-thread buffers, the hooks, the API
 *   telemetry_export.c  the drain: records -> spans and metrics -> OTLP/JSON
 *   telemetry_reactor.c the reactor's part: drains every interval, and
 *                       early when a buffer fills up
 *
 * A hook is called as KNHK__TEL(fn(args)): when not recording it costs one
 * relaxed load and a branch predicted not taken, and calls nothing. Hooks
 * never depend on the executor: a thread's buffer is reached through a
 * thread-local pointer, whatever the thread is.
 */
#ifndef KNHK_TELEMETRY_IMPL_H
#define KNHK_TELEMETRY_IMPL_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "atomics.h"
#include "knhk/executor.h"
#include "knhk/reactor.h"
#include "knhk/telemetry.h"
#include "telemetry_names.h"

extern _Atomic uint32_t knhk__tel_on;

#define KNHK__TEL_ON() __builtin_expect(ld_relaxed(&knhk__tel_on) != 0, 0)
#define KNHK__TEL(call)                                                         \
  do {                                                                          \
    if (KNHK__TEL_ON()) knhk__tel_##call;                                       \
  } while (0)

/* A span context: the span code runs in now, and its trace. A nursery
 * child keeps its span in its own words until it ends, and then writes it
 * as one record (KNHK__REC_TASK): one record per task rather than a start
 * and an end, and the drainer need not pair them. The words: its own span,
 * its current span, its trace ({current, trace} is the context it runs
 * in), when it first ran, when it was spawned, its parent span, and its
 * spawn index with KNHK__TEL_IN_NURSERY. */
enum { KNHK__TEL_CHILD_SPAN = 0, KNHK__TEL_CHILD_CUR = 1, KNHK__TEL_CHILD_TRACE = 2,
       KNHK__TEL_CHILD_RAN = 3,   /* when it first ran (a stamp), 0 before */
       KNHK__TEL_CHILD_START = 4, /* when it was spawned (a stamp) */
       KNHK__TEL_CHILD_PARENT = 5,
       KNHK__TEL_CHILD_INFO = 6,  /* index | KNHK__TEL_IN_NURSERY */
       KNHK__TEL_CHILD_WORDS = 7 };
/* The parent is the nursery's span (else the spawner's: the nursery was
 * opened while not recording), and the span's nursery id. */
#define KNHK__TEL_IN_NURSERY (UINT64_C(1) << 32)
_Static_assert(sizeof(knhk_telemetry_task_t) == KNHK__TEL_CHILD_WORDS * sizeof(uint64_t),
               "knhk_telemetry_task_t holds a child's words");

/* ---- hooks (any thread) ---- */
/* nursery.c */
void knhk__tel_nursery_open(uint64_t tel[2], uint32_t flags);
void knhk__tel_nursery_close(const uint64_t tel[2]);
void knhk__tel_child_spawn(uint64_t child[KNHK__TEL_CHILD_WORDS], const uint64_t nursery[2],
                           uint32_t index);
/* Makes the child's context the thread's current one (and notes when it
 * first ran); returns what to give back to leave, or NULL (nothing to give
 * back). The end's record carries the first run's time and the worker of
 * `ex` it ran on (a task ends on the worker that ran it). */
uint64_t *knhk__tel_child_enter(uint64_t child[KNHK__TEL_CHILD_WORDS], knhk_executor_t *ex);
void knhk__tel_child_leave(uint64_t *prev);
void knhk__tel_child_end(const uint64_t child[KNHK__TEL_CHILD_WORDS], int status,
                         knhk_executor_t *ex);
uint64_t knhk__tel_wait_begin(const uint64_t nursery[2], uint32_t live);
void knhk__tel_wait_end(uint64_t span);
/* cancel.c */
uint64_t knhk__tel_token_new(uint64_t parent_id);
uint64_t knhk__tel_cancel_begin(uint64_t token_id, int reason);
void knhk__tel_cancel_end(uint64_t span, uint32_t descendants);
/* executor.c, reactor.c: sources of metrics, and drainers */
void knhk__tel_executor_add(knhk_executor_t *ex);
void knhk__tel_executor_remove(knhk_executor_t *ex);
void knhk__tel_reactor_add(knhk_reactor_t *r);
void knhk__tel_reactor_remove(knhk_reactor_t *r);

/* ---- records ---- */

enum {
  KNHK__REC_START = 1,   /* name, ts, span, trace, parent, a0..a2 */
  KNHK__REC_END = 3,     /* ts, span, a0 = status, a1 = extra */
  KNHK__REC_INSTANT = 4, /* a START and END at once */
  KNHK__REC_BLOB = 5,    /* name = length, span, a0 = what (BLOB_*); the
                            bytes follow in the next slots */
  KNHK__REC_METRIC = 6,  /* name = instrument, a0 = the value's bits */
  KNHK__REC_TASK = 7     /* a nursery task's whole span: name = its index,
                            ts = its end, span, trace, parent, a0 = its
                            spawn, a1 = its first run (0: never), a2 = its
                            status (low 32 bits) | (worker + 1) << 32 |
                            KNHK__TEL_IN_NURSERY << 16 */
};
enum { KNHK__BLOB_ATTRS = 0, KNHK__BLOB_MESSAGE = 1 };

typedef struct {
  uint32_t kind, name;
  uint64_t ts;                       /* a stamp (clock.h) */
  uint64_t span, trace, parent;
  int64_t a[3];
} knhk__tel_rec_t;

/* A thread's ring of records: the thread writes at head, the drainer reads
 * from tail. One producer, one consumer (the drainer holds drain_m). */
typedef struct knhk__tel_buf {
  KNHK__ALIGNED _Atomic uint64_t head;
  _Atomic uint64_t dropped;
  uint64_t seq;                      /* ids this thread handed out */
  uint64_t id;                       /* high bits of those ids */
  KNHK__ALIGNED _Atomic uint64_t tail;
  _Atomic uint32_t free;             /* its thread exited: reusable */
  knhk__tel_rec_t *ring;
  struct knhk__tel_buf *next;        /* in the list of every buffer */
} knhk__tel_buf_t;

enum { KNHK__TEL_RING = 1u << 16 };  /* records per thread (4 MiB) */

/* A user instrument's time series (knhk_telemetry_instrument). */
typedef struct {
  int name, kind;
  char *unit, *attrs;
  double *bounds;
  int nbounds;
  uint64_t *buckets;                 /* nbounds + 1 */
  uint64_t count;
  double sum, min, max, last;
  int seen;
} knhk__tel_inst_t;

/* An executor whose counters are exported. */
typedef struct knhk__tel_src {
  knhk_executor_t *ex;
  struct knhk__tel_src *next;
} knhk__tel_src_t;

/* The recording session (one per process). */
typedef struct {
  pthread_mutex_t m;                 /* everything below but the rings */
  FILE *file;
  char *service;
  uint64_t interval_ns;
  uint64_t start_unix_ns;
  int64_t unix_minus_mono;           /* to turn clock readings into Unix time */
  /* Records carry stamps (clock.h), turned into clock readings when
   * drained: ns = stamp_at_ns + (stamp - stamp_at) * ns_per_stamp, where
   * (stamp_at, stamp_at_ns) is a pair read at the latest drain and the rate
   * is measured from the pair read at start: over that growing baseline
   * its error, spread over any stretch of the recording, stays within the
   * few ns of the pairs' own. */
  uint64_t stamp0, stamp0_ns, stamp_at, stamp_at_ns;
  double ns_per_stamp;
  int stamps_are_ns;                 /* KNHK__STAMP_NS: nothing to convert */
  uint64_t trace_hi;                 /* high half of every trace id */
  knhk__tel_buf_t *bufs;
  char **names;                      /* interned: registry spans first */
  int nnames, capnames;
  knhk__tel_inst_t *insts;
  int ninsts, capinsts;
  knhk__tel_src_t *srcs;
  uint64_t retired[KNHK_MAX_WORKERS][7]; /* counters of executors gone */
  uint64_t retired_external;
  int retired_workers;
  uint64_t last_cpu_ns, last_wall_ns;
  knhk_reactor_t *reactors[8];       /* known reactors; the first drains */
  int nreactors;
  void *export_state;                /* telemetry_export.c's */
} knhk__tel_session_t;

extern knhk__tel_session_t knhk__tel;

/* telemetry.c */
knhk__tel_buf_t *knhk__tel_buffer(void);
/* telemetry_export.c, under knhk__tel.m: drains every buffer; with
 * metrics, also exports the metrics. final: spans still open end now. */
/* Drains up to `budget` records (UINT64_MAX: all) into the file; with
 * `final`, spans still open end now. Returns 1 if records are left. */
int knhk__tel_drain_locked(int metrics, int final, uint64_t budget);
void knhk__tel_export_reset_locked(void);
/* telemetry_reactor.c */
void knhk__tel_kick(void);
void knhk__tel_reactor_attach_locked(void);

#endif
