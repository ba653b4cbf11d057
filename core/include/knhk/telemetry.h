/* knhk/telemetry.h: OpenTelemetry spans and metrics, written as OTLP/JSON.
 *
 * Off by default. knhk_telemetry_start opens a file and from then on the
 * runtime records: nurseries and their tasks, nursery waits, cancel tokens
 * made and cancelled (spans named in registry/, the semantic-convention
 * registry), and the executor's counters (metrics). Code above C (the Lua
 * layer) adds its own spans and instruments through the functions below.
 *
 * The file is JSON lines, as OpenTelemetry's file exporter writes them: each
 * line one {"resourceSpans": ...} or {"resourceMetrics": ...} object with
 * the resource (service.name) and the scope ("knhk"). Spans are written as
 * they end; metrics every interval and when recording stops.
 *
 * Cost: recording appends fixed-size records to a buffer of the calling
 * thread (no lock, no allocation; a full buffer drops the record and counts
 * it); the thread of a reactor (knhk/reactor.h) turns them into JSON. Off,
 * each place that would record costs one load and one predictable branch.
 *
 * Ids: span, nursery and token ids are unique in the process; a span
 * without a parent starts a trace, and its descendants keep that trace on
 * whatever worker they run.
 */
#ifndef KNHK_TELEMETRY_H
#define KNHK_TELEMETRY_H

#include <stddef.h>
#include <stdint.h>

#include "knhk/executor.h"

typedef struct {
  const char *path;          /* the file; it is truncated */
  uint64_t interval_ns;      /* metrics export period; 0: one second */
  const char *service_name;  /* resource service.name; NULL: "knhk" */
} knhk_telemetry_options_t;

/* Any thread. Starts recording into opts->path. Returns 0; KNHK_EINVAL
 * (NULL, no path); KNHK_EALREADY if recording; -errno if the file cannot
 * be opened. A process that calls exit() while recording stops it then
 * (an atexit handler): what was recorded is written. */
int knhk_telemetry_start(const knhk_telemetry_options_t *opts);
/* Any thread but a reactor's. Stops recording: every record so far is
 * written (spans still open end now, but for those of tasks: a task's span
 * is recorded whole when it ends), metrics a last time, and the file is
 * closed. Returns 0, or KNHK_EALREADY if not recording. */
int knhk_telemetry_stop(void);
/* Any thread. 1 while recording, else 0. */
int knhk_telemetry_enabled(void);
/* Any thread. Writes what has been recorded so far, and the metrics.
 * Returns 0, or KNHK_EALREADY if not recording. */
int knhk_telemetry_flush(void);

/* ---- spans from code above C (no-ops returning 0 when not recording) ---- */

/* Any thread. An id for a span or instrument name (copied), the same for
 * the same name. Returns a value >= 0, or KNHK_ENOMEM. */
int knhk_telemetry_intern(const char *name);
/* Any thread. Begins a span named `name` (knhk_telemetry_intern) as a
 * child of the calling task's current span, and makes it the current
 * span (for the spans and nurseries begun inside it, also after the task
 * waits). *parent gets the span to restore at the end. Returns the span
 * id, or 0 when not recording. */
uint64_t knhk_telemetry_span_begin(int name, uint64_t *parent);
/* Same thread as the begin. Ends `span`: status 0 (unset) or 2 (error),
 * `attributes` a JSON array of OTLP attributes (may be NULL), `message`
 * the error status's message (may be NULL). The current span goes back to
 * `parent`. */
void knhk_telemetry_span_end(uint64_t span, uint64_t parent, int status, const char *attributes,
                             size_t attributes_len, const char *message);
/* Any thread. A span without duration, child of the current span. */
void knhk_telemetry_span_instant(int name, const char *attributes, size_t attributes_len);
/* Any thread. The current span of the calling task (0: none). */
uint64_t knhk_telemetry_current_span(void);
/* Worker, inside a nursery task. The task is failing with `message`: its
 * span's error status says so (instead of the bare status code). */
void knhk_telemetry_task_error(const char *message);
/* Any thread. The id the telemetry gave a cancel token, 0 if it was made
 * while not recording. `token` is a knhk_token_t (knhk/cancel.h). */
uint64_t knhk_telemetry_token_id(const void *token);

/* Any thread. The code that opened nursery `n` (a knhk_nursery_t,
 * knhk/nursery.h) waits for its children: a span, child of the nursery's,
 * until knhk_telemetry_nursery_wait_end. Returns the span, or 0. */
uint64_t knhk_telemetry_nursery_wait_begin(const void *n);
void knhk_telemetry_nursery_wait_end(uint64_t span);

/* ---- tasks of runtimes built on top (the Lua layer), recorded as the
 * C nursery records its children (no-ops when not recording) ---- */

/* What a nursery, and a task, keep for the telemetry: the caller's
 * memory, zeroed before the first call. */
typedef struct { uint64_t w[2]; } knhk_telemetry_nursery_t;
typedef struct { uint64_t w[7]; } knhk_telemetry_task_t;

/* Any thread. A nursery opens (its span begins, a child of the current
 * span) and closes (it ends). flags: as knhk_nursery_new's. */
void knhk_telemetry_nursery_open(knhk_telemetry_nursery_t *n, uint32_t flags);
void knhk_telemetry_nursery_close(const knhk_telemetry_nursery_t *n);
/* Any thread. A task is spawned into n (its spawn span, a child of n's),
 * the index-th. */
void knhk_telemetry_task_spawn(knhk_telemetry_task_t *t, const knhk_telemetry_nursery_t *n,
                               uint32_t index);
/* The worker of `ex` that runs t, around each run: t's context is the
 * thread's current one until leave (given what enter returned). */
uint64_t *knhk_telemetry_task_enter(knhk_telemetry_task_t *t, knhk_executor_t *ex);
void knhk_telemetry_task_leave(uint64_t *prev);
/* The worker that ran t, once: t ended with `status` (0, KNHK_ECANCELED,
 * or a failure). */
void knhk_telemetry_task_end(const knhk_telemetry_task_t *t, int status, knhk_executor_t *ex);
/* Any thread. The code that opened n waits for its `live` children: a
 * span until knhk_telemetry_nursery_wait_end. Returns it, or 0. */
uint64_t knhk_telemetry_group_wait_begin(const knhk_telemetry_nursery_t *n, uint32_t live);

/* ---- instruments ---- */

enum knhk_instrument_kind {
  KNHK_INSTRUMENT_COUNTER = 0,       /* a monotonic sum */
  KNHK_INSTRUMENT_UPDOWNCOUNTER = 1, /* a sum that may go down */
  KNHK_INSTRUMENT_HISTOGRAM = 2,     /* a distribution over bounds */
  KNHK_INSTRUMENT_GAUGE = 3          /* the last value */
};

/* Any thread. One time series: the instrument `name` (interned) with
 * `attributes` (a JSON array of OTLP attributes, may be NULL) and, for a
 * histogram, its bucket bounds (finite, ascending). The same arguments give the
 * same id. Returns an id >= 0, KNHK_EINVAL or KNHK_ENOMEM. Works while not
 * recording too: values recorded then are ignored. */
int knhk_telemetry_instrument(const char *name, int kind, const char *unit, const char *attributes,
                              const double *bounds, int nbounds);
/* Any thread. Adds to a counter, records into a histogram, sets a gauge.
 * A value that is not finite (or a sum that overflows) is written as the
 * OTLP/JSON strings "NaN", "Infinity", "-Infinity"; a NaN stays in a sum. */
void knhk_telemetry_record(int instrument, double value);

#endif
