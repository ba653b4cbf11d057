/* telemetry.c: recording (see knhk/telemetry.h and telemetry_impl.h).
 *
 * Each thread that records owns a ring of 64-byte records, found through a
 * thread-local pointer and registered once in a list that is never shrunk
 * (a thread that exits leaves its ring to the next new thread), so a record
 * costs: a stamp (clock.h: the CPU's counter where it can serve, converted
 * to nanoseconds by the drainer), a check of the ring's fill level, 64 bytes
 * written, one release store. When a ring passes half full its thread asks the
 * reactor to drain early (knhk__tel_kick). The drainer (telemetry_export.c)
 * holds knhk__tel.m and is the rings' only consumer.
 *
 * The span a thread records under is its current context ({span, trace}):
 * the running nursery child's, else the thread's own. A child's context
 * lives in its record, so spans begun in a task stay current after it
 * waits, on the worker it resumes on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "knhk/errors.h"
#include "telemetry_impl.h"

_Atomic uint32_t knhk__tel_on;
knhk__tel_session_t knhk__tel = {.m = PTHREAD_MUTEX_INITIALIZER};

static pthread_mutex_t bufs_m = PTHREAD_MUTEX_INITIALIZER; /* the list of rings */
static _Atomic(knhk__tel_buf_t *) bufs_head;
static uint64_t nbufs;
static pthread_key_t buf_key;
static pthread_once_t buf_key_once = PTHREAD_ONCE_INIT;

static _Thread_local knhk__tel_buf_t *tls_buf;
static _Thread_local uint64_t *tls_cur; /* {span, trace} code runs in now */
static _Thread_local uint64_t tls_own[2];

/* ------------------------------------------------------------- the rings */

static void buf_thread_exit(void *p) {
  knhk__tel_buf_t *b = p;
  st_release(&b->free, 1); /* its records stay for the drainer */
}

static void make_key(void) { pthread_key_create(&buf_key, buf_thread_exit); }

knhk__tel_buf_t *knhk__tel_buffer(void) {
  knhk__tel_buf_t *b = tls_buf;
  if (b) return b;
  pthread_once(&buf_key_once, make_key);
  pthread_mutex_lock(&bufs_m);
  for (b = ld_acquire(&bufs_head); b; b = b->next) {
    uint32_t one = 1;
    if (atomic_compare_exchange_strong_explicit(&b->free, &one, 0, memory_order_acquire,
                                                memory_order_relaxed))
      break;
  }
  if (!b) {
    b = aligned_alloc(KNHK__CACHELINE, sizeof *b);
    knhk__tel_rec_t *ring = b ? aligned_alloc(KNHK__CACHELINE, KNHK__TEL_RING * sizeof *ring) : NULL;
    if (!ring) {
      free(b);
      pthread_mutex_unlock(&bufs_m);
      return NULL;
    }
    memset(b, 0, sizeof *b);
    b->ring = ring;
    b->id = ++nbufs;
    b->next = ld_relaxed(&bufs_head);
    st_release(&bufs_head, b); /* published whole: the drainer walks the list */
  }
  pthread_mutex_unlock(&bufs_m);
  pthread_setspecific(buf_key, b);
  tls_buf = b;
  return b;
}

/* The list of every ring, for the drainer (entries are never removed). */
knhk__tel_buf_t *knhk__tel_buffers(void);
knhk__tel_buf_t *knhk__tel_buffers(void) { return ld_acquire(&bufs_head); }

/* A process-unique id: the ring's number in the high bits. */
static uint64_t new_id(knhk__tel_buf_t *b) { return (b->id << 40) | ++b->seq; }

/* Room for n records, or NULL (counted as dropped). */
static knhk__tel_rec_t *reserve(knhk__tel_buf_t *b, uint32_t n, uint64_t *head) {
  uint64_t h = ld_relaxed(&b->head);
  uint64_t used = h - ld_acquire(&b->tail); /* acquire: the drainer is done with those slots */
  if (used + n > KNHK__TEL_RING) {
    atomic_fetch_add_explicit(&b->dropped, n, memory_order_relaxed);
    return NULL;
  }
  if (used < KNHK__TEL_RING / 2 && used + n >= KNHK__TEL_RING / 2) knhk__tel_kick();
  *head = h;
  return &b->ring[h & (KNHK__TEL_RING - 1)];
}

static void publish(knhk__tel_buf_t *b, uint64_t head, uint32_t n) {
  st_release(&b->head, head + n); /* release: the record is complete */
}

static void put(knhk__tel_buf_t *b, uint32_t kind, uint32_t name, uint64_t span, uint64_t trace,
                uint64_t parent, int64_t a0, int64_t a1, int64_t a2) {
  uint64_t h;
  knhk__tel_rec_t *r = reserve(b, 1, &h);
  if (!r) return;
  *r = (knhk__tel_rec_t){kind, name, knhk__stamp(), span, trace, parent, {a0, a1, a2}};
  publish(b, h, 1);
}

/* Bytes for `span` (attributes or a message), in the slots after a header. */
static void put_blob(knhk__tel_buf_t *b, uint64_t span, int what, const char *data, size_t len) {
  if (len > 1u << 20) len = 1u << 20;
  uint32_t slots = 1 + (uint32_t)((len + sizeof(knhk__tel_rec_t) - 1) / sizeof(knhk__tel_rec_t));
  uint64_t h;
  knhk__tel_rec_t *r = reserve(b, slots, &h);
  if (!r) return;
  *r = (knhk__tel_rec_t){KNHK__REC_BLOB, (uint32_t)len, 0, span, 0, 0, {what, slots, 0}};
  for (uint32_t i = 1; i < slots; i++) {
    size_t off = (size_t)(i - 1) * sizeof(knhk__tel_rec_t);
    size_t k = len - off < sizeof(knhk__tel_rec_t) ? len - off : sizeof(knhk__tel_rec_t);
    memcpy(&b->ring[(h + i) & (KNHK__TEL_RING - 1)], data + off, k);
  }
  publish(b, h, slots);
}

static uint64_t *cur(void) { return tls_cur ? tls_cur : tls_own; }

/* ------------------------------------------------------------- the hooks */

void knhk__tel_nursery_open(uint64_t tel[2], uint32_t flags) {
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return;
  uint64_t *c = cur(), span = new_id(b), trace = c[1] ? c[1] : span;
  put(b, KNHK__REC_START, KNHK_TEL_SPAN_CONCURRENCY_NURSERY, span, trace, c[0], (int64_t)span,
      flags, 0);
  tel[0] = span;
  tel[1] = trace;
}

void knhk__tel_nursery_close(const uint64_t tel[2]) {
  knhk__tel_buf_t *b = tel[0] ? knhk__tel_buffer() : NULL;
  if (b) put(b, KNHK__REC_END, 0, tel[0], 0, 0, 0, 0, 0);
}

/* Nothing is written yet: the child's span stays in its words until it
 * ends (see KNHK__TEL_CHILD_*). */
void knhk__tel_child_spawn(uint64_t child[KNHK__TEL_CHILD_WORDS], const uint64_t nursery[2],
                           uint32_t index) {
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) {
    child[KNHK__TEL_CHILD_SPAN] = 0; /* no span: the other hooks skip it */
    return;
  }
  uint64_t *c = cur(), span = new_id(b);
  child[KNHK__TEL_CHILD_SPAN] = child[KNHK__TEL_CHILD_CUR] = span;
  child[KNHK__TEL_CHILD_TRACE] = nursery[0] ? nursery[1] : c[1] ? c[1] : span;
  child[KNHK__TEL_CHILD_RAN] = 0;
  child[KNHK__TEL_CHILD_START] = knhk__stamp();
  child[KNHK__TEL_CHILD_PARENT] = nursery[0] ? nursery[0] : c[0];
  child[KNHK__TEL_CHILD_INFO] = index | (nursery[0] ? KNHK__TEL_IN_NURSERY : 0);
}

uint64_t *knhk__tel_child_enter(uint64_t child[KNHK__TEL_CHILD_WORDS], knhk_executor_t *ex) {
  (void)ex;
  if (!child[KNHK__TEL_CHILD_SPAN]) return NULL;
  if (!child[KNHK__TEL_CHILD_RAN]) child[KNHK__TEL_CHILD_RAN] = knhk__stamp();
  uint64_t *prev = cur();
  tls_cur = &child[KNHK__TEL_CHILD_CUR]; /* {cur, trace}: adjacent */
  return prev;
}

void knhk__tel_child_leave(uint64_t *prev) { tls_cur = prev == tls_own ? NULL : prev; }

void knhk__tel_child_end(const uint64_t child[KNHK__TEL_CHILD_WORDS], int status,
                         knhk_executor_t *ex) {
  knhk__tel_buf_t *b = child[KNHK__TEL_CHILD_SPAN] ? knhk__tel_buffer() : NULL;
  uint64_t h, ran = child[KNHK__TEL_CHILD_RAN];
  knhk__tel_rec_t *r = b ? reserve(b, 1, &h) : NULL;
  if (!r) return;
  int worker = ran ? knhk_executor_worker_index(ex) : -1;
  uint64_t info = child[KNHK__TEL_CHILD_INFO];
  uint64_t a2 = (uint32_t)status | (uint64_t)(uint16_t)(worker + 1) << 32 |
                (info & KNHK__TEL_IN_NURSERY) << 16;
  *r = (knhk__tel_rec_t){KNHK__REC_TASK, (uint32_t)info, knhk__stamp(),
                         child[KNHK__TEL_CHILD_SPAN], child[KNHK__TEL_CHILD_TRACE],
                         child[KNHK__TEL_CHILD_PARENT],
                         {(int64_t)child[KNHK__TEL_CHILD_START], (int64_t)ran, (int64_t)a2}};
  publish(b, h, 1);
}

uint64_t knhk__tel_wait_begin(const uint64_t nursery[2], uint32_t live) {
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return 0;
  uint64_t *c = cur(), span = new_id(b);
  uint64_t parent = nursery[0] ? nursery[0] : c[0];
  uint64_t trace = nursery[0] ? nursery[1] : c[1] ? c[1] : span;
  put(b, KNHK__REC_START, KNHK_TEL_SPAN_CONCURRENCY_NURSERY_WAIT, span, trace, parent,
      (int64_t)nursery[0], live, 0);
  return span;
}

void knhk__tel_wait_end(uint64_t span) {
  knhk__tel_buf_t *b = span ? knhk__tel_buffer() : NULL;
  if (b) put(b, KNHK__REC_END, 0, span, 0, 0, 0, 0, 0);
}

uint64_t knhk__tel_token_new(uint64_t parent_id) {
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return 0;
  uint64_t *c = cur(), id = new_id(b);
  put(b, KNHK__REC_INSTANT, KNHK_TEL_SPAN_CONCURRENCY_CANCEL_TOKEN_CREATE, id, c[1] ? c[1] : id,
      c[0], (int64_t)id, (int64_t)parent_id, 0);
  return id;
}

uint64_t knhk__tel_cancel_begin(uint64_t token_id, int reason) {
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return 0;
  uint64_t *c = cur(), span = new_id(b);
  put(b, KNHK__REC_START, KNHK_TEL_SPAN_CONCURRENCY_CANCEL_TOKEN_CANCEL, span,
      c[1] ? c[1] : span, c[0], (int64_t)token_id, reason, 0);
  return span;
}

void knhk__tel_cancel_end(uint64_t span, uint32_t descendants) {
  knhk__tel_buf_t *b = span ? knhk__tel_buffer() : NULL;
  if (b) put(b, KNHK__REC_END, 0, span, 0, 0, 0, descendants, 0);
}

/* ---------------------------------------------------- spans from above C */

uint64_t knhk_telemetry_span_begin(int name, uint64_t *parent) {
  uint64_t *c = cur();
  if (parent) *parent = c[0];
  if (!KNHK__TEL_ON() || name < 0) return 0;
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return 0;
  uint64_t span = new_id(b), trace = c[1] ? c[1] : span;
  put(b, KNHK__REC_START, (uint32_t)name, span, trace, c[0], 0, 0, 0);
  c[0] = span;
  c[1] = trace;
  return span;
}

void knhk_telemetry_span_end(uint64_t span, uint64_t parent, int status, const char *attributes,
                             size_t attributes_len, const char *message) {
  if (!span) return;
  uint64_t *c = cur();
  if (c[0] == span) { /* ended by the task that began it: its context goes back */
    c[0] = parent;
    if (!parent) c[1] = 0; /* a root span ended: the next one starts a trace */
  }
  knhk__tel_buf_t *b = KNHK__TEL_ON() ? knhk__tel_buffer() : NULL;
  if (!b) return;
  if (attributes && attributes_len) put_blob(b, span, KNHK__BLOB_ATTRS, attributes, attributes_len);
  if (message) put_blob(b, span, KNHK__BLOB_MESSAGE, message, strlen(message));
  put(b, KNHK__REC_END, 0, span, 0, 0, status, 0, 0);
}

void knhk_telemetry_span_instant(int name, const char *attributes, size_t attributes_len) {
  if (!KNHK__TEL_ON() || name < 0) return;
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return;
  uint64_t *c = cur(), span = new_id(b);
  if (attributes && attributes_len) put_blob(b, span, KNHK__BLOB_ATTRS, attributes, attributes_len);
  put(b, KNHK__REC_INSTANT, (uint32_t)name, span, c[1] ? c[1] : span, c[0], 0, 0, 0);
}

uint64_t knhk_telemetry_current_span(void) { return cur()[0]; }

/* tls_cur points into a child's words only when child_enter put it there */
void knhk_telemetry_task_error(const char *message) {
  if (!KNHK__TEL_ON() || !message || !tls_cur) return;
  uint64_t *child = tls_cur - KNHK__TEL_CHILD_CUR;
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (b) put_blob(b, child[KNHK__TEL_CHILD_SPAN], KNHK__BLOB_MESSAGE, message, strlen(message));
}

void knhk_telemetry_record(int instrument, double value) {
  if (!KNHK__TEL_ON() || instrument < 0) return;
  knhk__tel_buf_t *b = knhk__tel_buffer();
  if (!b) return;
  int64_t bits;
  memcpy(&bits, &value, sizeof bits);
  put(b, KNHK__REC_METRIC, (uint32_t)instrument, 0, 0, 0, bits, 0, 0);
}

/* --------------------------------------------------------- names, instruments */

static int intern_locked(const char *name) {
  knhk__tel_session_t *s = &knhk__tel;
  if (s->nnames == 0) { /* the registry's spans come first: their enum is their id */
    for (int i = 0; i < KNHK_TEL_SPAN__COUNT; i++) {
      if (s->nnames == s->capnames) {
        int cap = s->capnames ? s->capnames * 2 : 64;
        char **n = realloc(s->names, (size_t)cap * sizeof *n);
        if (!n) return KNHK_ENOMEM;
        s->names = n, s->capnames = cap;
      }
      s->names[s->nnames++] = strdup(knhk_tel_span_names[i]);
    }
  }
  if (!name) return 0;
  for (int i = 0; i < s->nnames; i++)
    if (s->names[i] && strcmp(s->names[i], name) == 0) return i;
  if (s->nnames == s->capnames) {
    int cap = s->capnames * 2;
    char **n = realloc(s->names, (size_t)cap * sizeof *n);
    if (!n) return KNHK_ENOMEM;
    s->names = n, s->capnames = cap;
  }
  char *copy = strdup(name);
  if (!copy) return KNHK_ENOMEM;
  s->names[s->nnames] = copy;
  return s->nnames++;
}

int knhk_telemetry_intern(const char *name) {
  if (!name) return KNHK_EINVAL;
  pthread_mutex_lock(&knhk__tel.m);
  int id = intern_locked(name);
  pthread_mutex_unlock(&knhk__tel.m);
  return id;
}

static int same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int knhk_telemetry_instrument(const char *name, int kind, const char *unit, const char *attributes,
                              const double *bounds, int nbounds) {
  if (!name || kind < KNHK_INSTRUMENT_COUNTER || kind > KNHK_INSTRUMENT_GAUGE || nbounds < 0 ||
      (nbounds && !bounds))
    return KNHK_EINVAL;
  for (int i = 0; i < nbounds; i++) /* (finite: the +inf bucket is the last, always there) */
    if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) return KNHK_EINVAL;
  knhk__tel_session_t *s = &knhk__tel;
  pthread_mutex_lock(&s->m);
  int id = intern_locked(name);
  for (int i = 0; id >= 0 && i < s->ninsts; i++) {
    knhk__tel_inst_t *x = &s->insts[i];
    if (x->name == id && x->kind == kind && same_str(x->attrs, attributes)) {
      pthread_mutex_unlock(&s->m);
      return i;
    }
  }
  if (id >= 0 && s->ninsts == s->capinsts) {
    int cap = s->capinsts ? s->capinsts * 2 : 16;
    knhk__tel_inst_t *n = realloc(s->insts, (size_t)cap * sizeof *n);
    if (n) s->insts = n, s->capinsts = cap;
    else id = KNHK_ENOMEM;
  }
  if (id >= 0) {
    knhk__tel_inst_t x = {.name = id, .kind = kind, .nbounds = kind == KNHK_INSTRUMENT_HISTOGRAM ? nbounds : 0};
    x.unit = strdup(unit ? unit : "");
    x.attrs = attributes ? strdup(attributes) : NULL;
    x.bounds = calloc((size_t)x.nbounds + 1, sizeof *x.bounds);
    x.buckets = calloc((size_t)x.nbounds + 1, sizeof *x.buckets);
    if (!x.unit || (attributes && !x.attrs) || !x.bounds || !x.buckets) {
      free(x.unit), free(x.attrs), free(x.bounds), free(x.buckets);
      id = KNHK_ENOMEM;
    } else {
      if (x.nbounds) memcpy(x.bounds, bounds, (size_t)x.nbounds * sizeof *bounds);
      s->insts[s->ninsts] = x;
      id = s->ninsts++;
    }
  }
  pthread_mutex_unlock(&s->m);
  return id;
}

/* -------------------------------------------------------------- lifecycle */

static uint64_t random64(void) {
  uint64_t v = 0;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (read(fd, &v, sizeof v) != (ssize_t)sizeof v) v = 0;
    close(fd);
  }
  if (!v) v = knhk__mono_ns() ^ ((uint64_t)getpid() << 32);
  return v | 1;
}

/* exit() while recording: what was recorded reaches the file, as at a
 * stop. A program (a Lua script's os.exit, from whichever thread) may end
 * that way without stopping first, and a recording's last interval, for a
 * short run its whole, would be lost with the stdio buffer. Not in a
 * forked child: its copy of the session is its parent's. The lock is
 * waited for a while only: the thread that exits may be the one holding
 * it, and an exit must not hang. */
static pid_t recording_pid;
static pthread_once_t at_exit_once = PTHREAD_ONCE_INIT;

static void stop_locked(void);

static void stop_at_exit(void) {
  knhk__tel_session_t *s = &knhk__tel;
  if (!ld_acquire(&knhk__tel_on) || recording_pid != getpid()) return;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 2;
  if (pthread_mutex_timedlock(&s->m, &until) != 0) return;
  if (ld_relaxed(&knhk__tel_on)) stop_locked();
  pthread_mutex_unlock(&s->m);
}

static void register_at_exit(void) { atexit(stop_at_exit); }

int knhk_telemetry_start(const knhk_telemetry_options_t *o) {
  if (!o || !o->path || !*o->path) return KNHK_EINVAL;
  knhk__tel_session_t *s = &knhk__tel;
  pthread_mutex_lock(&s->m);
  if (ld_relaxed(&knhk__tel_on)) {
    pthread_mutex_unlock(&s->m);
    return KNHK_EALREADY;
  }
  FILE *f = fopen(o->path, "we");
  char *service = strdup(o->service_name ? o->service_name : "knhk");
  if (!f || !service || intern_locked(NULL) < 0) {
    int rc = !f ? -errno : KNHK_ENOMEM;
    if (f) fclose(f);
    free(service);
    pthread_mutex_unlock(&s->m);
    return rc;
  }
  s->file = f;
  free(s->service);
  s->service = service;
  s->interval_ns = o->interval_ns ? o->interval_ns : 1000000000u;
  struct timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt);
  uint64_t mono = knhk__mono_ns();
  s->start_unix_ns = (uint64_t)rt.tv_sec * 1000000000u + (uint64_t)rt.tv_nsec;
  s->unix_minus_mono = (int64_t)(s->start_unix_ns - mono);
  knhk__stamp_pair(&s->stamp0, &s->stamp0_ns); /* decides the stamps' kind, once */
  s->stamp_at = s->stamp0, s->stamp_at_ns = s->stamp0_ns;
  s->ns_per_stamp = knhk__stamp_ns_per_tick();
  s->stamps_are_ns = knhk__stamp_decide() == KNHK__STAMP_NS;
  s->trace_hi = random64();
  /* what a previous recording left unread (a record that raced with its
   * stop) is not this one's */
  for (knhk__tel_buf_t *b = knhk__tel_buffers(); b; b = b->next) {
    st_release(&b->tail, ld_acquire(&b->head));
    st_relaxed(&b->dropped, 0);
  }
  for (int i = 0; i < s->ninsts; i++) {
    knhk__tel_inst_t *x = &s->insts[i];
    memset(x->buckets, 0, ((size_t)x->nbounds + 1) * sizeof *x->buckets);
    x->count = 0, x->sum = x->last = 0, x->seen = 0;
  }
  memset(s->retired, 0, sizeof s->retired);
  s->retired_external = 0;
  s->retired_workers = 0;
  knhk__tel_export_reset_locked();
  recording_pid = getpid();
  st_release(&knhk__tel_on, 1);
  pthread_mutex_unlock(&s->m);
  pthread_once(&at_exit_once, register_at_exit);
  knhk__tel_reactor_attach_locked();
  return 0;
}

/* Under s->m, recording: every record to the file, which is closed. */
static void stop_locked(void) {
  knhk__tel_session_t *s = &knhk__tel;
  st_release(&knhk__tel_on, 0);
  knhk__tel_drain_locked(1, 1, UINT64_MAX);
  fclose(s->file);
  s->file = NULL;
}

int knhk_telemetry_stop(void) {
  knhk__tel_session_t *s = &knhk__tel;
  pthread_mutex_lock(&s->m);
  if (!ld_relaxed(&knhk__tel_on)) {
    pthread_mutex_unlock(&s->m);
    return KNHK_EALREADY;
  }
  stop_locked();
  pthread_mutex_unlock(&s->m);
  return 0;
}

int knhk_telemetry_enabled(void) { return ld_acquire(&knhk__tel_on) != 0; }

int knhk_telemetry_flush(void) {
  knhk__tel_session_t *s = &knhk__tel;
  pthread_mutex_lock(&s->m);
  int rc = KNHK_EALREADY;
  if (ld_relaxed(&knhk__tel_on) && s->file) {
    knhk__tel_drain_locked(1, 0, UINT64_MAX);
    fflush(s->file);
    rc = 0;
  }
  pthread_mutex_unlock(&s->m);
  return rc;
}

/* ------------------------------------------------------ metrics sources */

void knhk__tel_executor_add(knhk_executor_t *ex) {
  knhk__tel_src_t *src = malloc(sizeof *src);
  if (!src) return; /* its counters are not exported */
  src->ex = ex;
  pthread_mutex_lock(&knhk__tel.m);
  src->next = knhk__tel.srcs;
  knhk__tel.srcs = src;
  pthread_mutex_unlock(&knhk__tel.m);
}

/* Its last counters are kept (retired): counters never go back. */
void knhk__tel_executor_remove(knhk_executor_t *ex) {
  knhk__tel_session_t *s = &knhk__tel;
  knhk_worker_stats_t per[KNHK_MAX_WORKERS];
  knhk_executor_stats_t st;
  int n = knhk_executor_stats(ex, &st, per, KNHK_MAX_WORKERS);
  pthread_mutex_lock(&s->m);
  for (knhk__tel_src_t **p = &s->srcs; *p; p = &(*p)->next) {
    if ((*p)->ex != ex) continue;
    knhk__tel_src_t *dead = *p;
    *p = dead->next;
    free(dead);
    break;
  }
  if (n > 0) {
    for (int i = 0; i < n; i++) {
      uint64_t *r = s->retired[i];
      r[0] += per[i].spawned, r[1] += per[i].completed, r[2] += per[i].failed;
      r[3] += per[i].cancelled, r[4] += per[i].stolen, r[5] += per[i].steal_attempts;
      r[6] += per[i].parks;
    }
    s->retired_external += st.external_spawned;
    if (n > s->retired_workers) s->retired_workers = n;
  }
  pthread_mutex_unlock(&s->m);
}

/* ------------------------------------------ tasks of runtimes built on top */

void knhk_telemetry_nursery_open(knhk_telemetry_nursery_t *n, uint32_t flags) {
  KNHK__TEL(nursery_open(n->w, flags));
}

void knhk_telemetry_nursery_close(const knhk_telemetry_nursery_t *n) {
  KNHK__TEL(nursery_close(n->w));
}

void knhk_telemetry_task_spawn(knhk_telemetry_task_t *t, const knhk_telemetry_nursery_t *n,
                               uint32_t index) {
  KNHK__TEL(child_spawn(t->w, n->w, index));
}

uint64_t *knhk_telemetry_task_enter(knhk_telemetry_task_t *t, knhk_executor_t *ex) {
  return KNHK__TEL_ON() ? knhk__tel_child_enter(t->w, ex) : NULL;
}

void knhk_telemetry_task_leave(uint64_t *prev) {
  if (prev) knhk__tel_child_leave(prev);
}

void knhk_telemetry_task_end(const knhk_telemetry_task_t *t, int status, knhk_executor_t *ex) {
  KNHK__TEL(child_end(t->w, status, ex));
}

uint64_t knhk_telemetry_group_wait_begin(const knhk_telemetry_nursery_t *n, uint32_t live) {
  return KNHK__TEL_ON() ? knhk__tel_wait_begin(n->w, live) : 0;
}
