/* telemetry_export.c: the drain. Reads every thread's ring, puts each span
 * together from its records (they may come from different threads and
 * arrive in any order: a task's end can be read before its spawn), writes
 * finished spans as OTLP/JSON lines, and the metrics when asked.
 *
 * Runs under knhk__tel.m, on a reactor's thread (telemetry_reactor.c) or in
 * flush/stop. It allocates (the table of open spans, the line being built):
 * the drain is not the hot path.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "executor_impl.h"
#include "knhk/cancel.h"
#include "knhk/errors.h"
#include "knhk/nursery.h"
#include "telemetry_impl.h"

knhk__tel_buf_t *knhk__tel_buffers(void);

enum { HAVE_START = 1, HAVE_RUN = 2, HAVE_END = 4 };
enum { SPANS_PER_LINE = 2048 };

typedef struct {
  uint64_t span, trace, parent, start, run, end;
  uint32_t name, have;
  int32_t worker, status;
  int64_t a[3], extra;
  char *attrs, *msg;
} ent_t;

typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} sbuf_t;

/* spawn-to-run latency of nursery tasks, ns */
static const double lat_bounds[] = {1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5,
                                    1e6, 2e6, 5e6, 1e7, 1e8};
enum { NLAT = sizeof lat_bounds / sizeof lat_bounds[0] };

static struct {
  ent_t *tab;             /* open addressing, key span (0: empty) */
  size_t cap, n;
  sbuf_t spans;           /* spans of the line being built */
  int nspans;
  uint64_t lat[NLAT + 1], lat_count;
  double lat_sum, lat_min, lat_max;
} X;

/* --------------------------------------------------------------- strings */

static void sb_grow(sbuf_t *b, size_t more) {
  if (b->n + more + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->n + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return;
  }
  b->p = p, b->cap = cap;
}

/* The drain writes ~550 bytes of JSON per span, most of them constant
 * pieces: the helpers below are inlined so that the pieces' lengths are
 * known when compiled (strlen of a literal folds) and their copies are a
 * few moves, not calls. */
#define SB_INLINE static inline __attribute__((always_inline))

SB_INLINE void sb_add(sbuf_t *b, const char *s, size_t len) {
  if (__builtin_expect(b->n + len + 1 > b->cap, 0)) {
    sb_grow(b, len);
    if (b->oom) return;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = 0;
}

SB_INLINE void sb_str(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void sb_fmt(sbuf_t *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k > 0) sb_add(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* Numbers without printf: the drain formats millions of them (two
 * digits a step: a timestamp has nineteen). */
static void sb_u64(sbuf_t *b, uint64_t v) {
  static const char pairs[] = "00010203040506070809101112131415161718192021222324"
                              "25262728293031323334353637383940414243444546474849"
                              "50515253545556575859606162636465666768697071727374"
                              "75767778798081828384858687888990919293949596979899";
  char tmp[24];
  int i = sizeof tmp;
  while (v >= 100) {
    unsigned d = (unsigned)(v % 100) * 2;
    v /= 100;
    tmp[--i] = pairs[d + 1];
    tmp[--i] = pairs[d];
  }
  if (v >= 10) {
    tmp[--i] = pairs[v * 2 + 1];
    tmp[--i] = pairs[v * 2];
  } else {
    tmp[--i] = (char)('0' + v);
  }
  sb_add(b, tmp + i, sizeof tmp - (size_t)i);
}

static void sb_i64(sbuf_t *b, int64_t v) {
  if (v < 0) {
    sb_add(b, "-", 1);
    sb_u64(b, (uint64_t)0 - (uint64_t)v);
  } else {
    sb_u64(b, (uint64_t)v);
  }
}

SB_INLINE void sb_hex16(sbuf_t *b, uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  char tmp[16];
  for (int i = 15; i >= 0; i--, v >>= 4) tmp[i] = digits[v & 15];
  sb_add(b, tmp, 16);
}

/* A double as OTLP/JSON carries one. JSON has no NaN or infinity (printf's
 * "nan" and "inf" would make the whole line unreadable): the protobuf JSON
 * mapping writes them as the strings "NaN", "Infinity", "-Infinity". The
 * Lua layer refuses non-finite values, but a C caller may record one, and
 * a sum may overflow. */
static void sb_double(sbuf_t *b, double v) {
  if (isnan(v)) sb_str(b, "\"NaN\"");
  else if (isinf(v)) sb_str(b, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
  else sb_fmt(b, "%.17g", v);
}

/* OTLP/JSON is UTF-8, and strings come from anywhere (a Lua string is
 * bytes): a sequence that is not UTF-8 is written as U+FFFD, one for each
 * maximal ill-formed part, as Unicode advises. utf8_seq says how long the
 * sequence at p (before end) is: n > 0 bytes of valid UTF-8, or -n bytes
 * to replace. */
static int utf8_seq(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0], lo = 0x80, hi = 0xBF;
  int need;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) { /* no overlong forms, no surrogates */
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) { /* nothing above U+10FFFF */
    need = 3;
    if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int i = 1; i <= need; i++) {
    if (p + i >= end || p[i] < lo || p[i] > hi) return -i;
    lo = 0x80, hi = 0xBF;
  }
  return need + 1;
}

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* s[0, len) as UTF-8: JSON text made elsewhere (attribute lists), whose
 * only bytes above 0x7f are inside its strings. */
static void sb_utf8(sbuf_t *b, const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    const unsigned char *run = p; /* the usual case: ASCII */
    while (p < end && *p < 0x80) p++;
    for (int k; p < end && (k = utf8_seq(p, end)) > 0;) p += k;
    sb_add(b, (const char *)run, (size_t)(p - run));
    if (p < end) {
      sb_add(b, replacement, 3);
      p += -utf8_seq(p, end);
    }
  }
}

/* A list of attributes made as JSON elsewhere (a span's, a series'), or
 * an empty one. */
static void sb_attrs(sbuf_t *b, const char *attrs) {
  if (attrs) sb_utf8(b, attrs, strlen(attrs));
  else sb_str(b, "[]");
}

/* A JSON string, quoted and escaped, in UTF-8. */
static void sb_json(sbuf_t *b, const char *s) {
  sb_add(b, "\"", 1);
  size_t plain = 0; /* (a loop: strcspn with 33 bytes to reject is slower) */
  for (unsigned char c; (c = (unsigned char)s[plain]) >= 0x20 && c < 0x80 && c != '"' && c != '\\';)
    plain++;
  sb_add(b, s, plain); /* the usual case: nothing to escape */
  s += plain;
  const unsigned char *end = (const unsigned char *)s + strlen(s);
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    if (*p == '"' || *p == '\\') {
      char e[2] = {'\\', (char)*p};
      sb_add(b, e, 2);
      p++;
    } else if (*p < 0x20) {
      sb_fmt(b, "\\u%04x", *p);
      p++;
    } else {
      int k = utf8_seq(p, end);
      if (k > 0) sb_add(b, (const char *)p, (size_t)k);
      else sb_add(b, replacement, 3);
      p += k > 0 ? k : -k;
    }
  }
  sb_add(b, "\"", 1);
}

static uint64_t unix_ns(uint64_t mono) { return mono + (uint64_t)knhk__tel.unix_minus_mono; }

/* A new pair to convert this drain's stamps with, and the rate over the
 * whole recording so far (the first rate until 2 ms have passed). */
static void stamps_recalibrate(void) {
  knhk__tel_session_t *s = &knhk__tel;
  knhk__stamp_pair(&s->stamp_at, &s->stamp_at_ns);
  if (s->stamp_at_ns - s->stamp0_ns >= 2000000u && s->stamp_at > s->stamp0)
    s->ns_per_stamp = (double)(s->stamp_at_ns - s->stamp0_ns) / (double)(s->stamp_at - s->stamp0);
}

/* A stamp (clock.h) as a knhk__mono_ns reading. */
static uint64_t stamp_ns(uint64_t stamp) {
  knhk__tel_session_t *s = &knhk__tel;
  if (s->stamps_are_ns) return stamp;
  double d = (double)(int64_t)(stamp - s->stamp_at) * s->ns_per_stamp;
  return s->stamp_at_ns + (uint64_t)(int64_t)d;
}

/* ---------------------------------------------------------- attributes */

SB_INLINE void attr_key(sbuf_t *b, int *first, const char *key) {
  sb_str(b, *first ? "{\"key\":\"" : ",{\"key\":\"");
  sb_str(b, key);
  *first = 0;
}

SB_INLINE void attr_int(sbuf_t *b, int *first, const char *key, int64_t v) {
  attr_key(b, first, key);
  sb_str(b, "\",\"value\":{\"intValue\":\"");
  sb_i64(b, v);
  sb_str(b, "\"}}");
}

SB_INLINE void attr_str(sbuf_t *b, int *first, const char *key, const char *v) {
  attr_key(b, first, key);
  sb_str(b, "\",\"value\":{\"stringValue\":");
  sb_json(b, v);
  sb_str(b, "}}");
}

static const char *reason_name(int64_t r) {
  switch (r) {
  case KNHK_CANCEL_EXPLICIT: return KNHK_TEL_CANCEL_REASON_EXPLICIT;
  case KNHK_CANCEL_DEADLINE: return KNHK_TEL_CANCEL_REASON_DEADLINE;
  case KNHK_CANCEL_SIBLING: return KNHK_TEL_CANCEL_REASON_SIBLING;
  case KNHK_CANCEL_SIGNAL: return KNHK_TEL_CANCEL_REASON_SIGNAL;
  default: return KNHK_TEL_CANCEL_REASON_SHUTDOWN;
  }
}

static const char *status_name(int status) {
  return status == 0                ? KNHK_TEL_TASK_STATUS_COMPLETED
         : status == KNHK_ECANCELED ? KNHK_TEL_TASK_STATUS_CANCELLED
                                    : KNHK_TEL_TASK_STATUS_FAILED;
}

/* ------------------------------------------------------------ the table */

static size_t slot_of(uint64_t key) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  return (size_t)(h ^ (h >> 29)) & (X.cap - 1);
}

static ent_t *find(uint64_t key) {
  if (!X.cap) return NULL;
  for (size_t i = slot_of(key);; i = (i + 1) & (X.cap - 1)) {
    if (X.tab[i].span == key) return &X.tab[i];
    if (X.tab[i].span == 0) return NULL;
  }
}

static ent_t *insert(uint64_t key) {
  if ((X.n + 1) * 2 > X.cap) {
    size_t cap = X.cap ? X.cap * 2 : 1024;
    ent_t *old = X.tab;
    size_t oldcap = X.cap;
    ent_t *tab = calloc(cap, sizeof *tab);
    if (!tab) return NULL;
    X.tab = tab, X.cap = cap;
    for (size_t i = 0; i < oldcap; i++)
      if (old[i].span) {
        size_t j = slot_of(old[i].span);
        while (X.tab[j].span) j = (j + 1) & (cap - 1);
        X.tab[j] = old[i];
      }
    free(old);
  }
  size_t i = slot_of(key);
  while (X.tab[i].span) i = (i + 1) & (X.cap - 1);
  memset(&X.tab[i], 0, sizeof X.tab[i]);
  X.tab[i].span = key;
  X.n++;
  return &X.tab[i];
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void erase(ent_t *e) {
  size_t i = (size_t)(e - X.tab);
  free(e->attrs), free(e->msg);
  X.tab[i].span = 0;
  X.n--;
  for (size_t j = (i + 1) & (X.cap - 1); X.tab[j].span; j = (j + 1) & (X.cap - 1)) {
    size_t home = slot_of(X.tab[j].span);
    /* move j back to i if its home is not in (i, j] */
    if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
      X.tab[i] = X.tab[j];
      X.tab[j].span = 0;
      i = j;
    }
  }
}

static ent_t *entry(uint64_t key) {
  ent_t *e = find(key);
  return e ? e : insert(key);
}

/* ---------------------------------------------------------------- spans */

static void write_line(const char *kind, const char *inner_key, sbuf_t *items) {
  knhk__tel_session_t *s = &knhk__tel;
  if (!s->file || !items->n) return;
  sbuf_t b = {0};
  sb_fmt(&b, "{\"%s\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":"
             "{\"stringValue\":", kind);
  sb_json(&b, s->service ? s->service : "knhk");
  sb_fmt(&b, "}}]},\"%s\":[{\"scope\":{\"name\":\"knhk\",\"version\":\"0.1.0\"},\"%s\":[",
         kind[8] == 'S' ? "scopeSpans" : "scopeMetrics", inner_key);
  if (!b.oom) {
    fwrite(b.p, 1, b.n, s->file);
    fwrite(items->p, 1, items->n, s->file);
    fputs("]}]}]}\n", s->file);
  }
  free(b.p);
}

static void flush_spans(void) {
  write_line("resourceSpans", "spans", &X.spans);
  X.spans.n = 0;
  X.nspans = 0;
}

static void emit(ent_t *e) {
  knhk__tel_session_t *s = &knhk__tel;
  sbuf_t *b = &X.spans;
  const char *name = e->name < (uint32_t)s->nnames ? s->names[e->name] : "knhk.unknown";
  if (e->name == KNHK_TEL_SPAN_CONCURRENCY_NURSERY_SPAWN && e->extra) { /* it ran */
    e->run = stamp_ns((uint64_t)e->extra);
    e->have |= HAVE_RUN;
    double d = e->run > e->start ? (double)(e->run - e->start) : 0;
    int k = 0;
    while (k < NLAT && d > lat_bounds[k]) k++;
    X.lat[k]++;
    if (!X.lat_count || d < X.lat_min) X.lat_min = d;
    if (!X.lat_count || d > X.lat_max) X.lat_max = d;
    X.lat_count++;
    X.lat_sum += d;
  }
  /* a span's start and end read in different drains were converted with
   * pairs a few ns apart: never let that make it end before it began */
  if (e->end < e->start) e->end = e->start;
  sb_str(b, X.nspans ? ",{\"traceId\":\"" : "{\"traceId\":\"");
  sb_hex16(b, s->trace_hi);
  sb_hex16(b, e->trace);
  sb_str(b, "\",\"spanId\":\"");
  sb_hex16(b, e->span);
  if (e->parent) {
    sb_str(b, "\",\"parentSpanId\":\"");
    sb_hex16(b, e->parent);
  }
  sb_str(b, "\",\"name\":");
  sb_json(b, name);
  sb_str(b, ",\"kind\":1,\"startTimeUnixNano\":\"");
  sb_u64(b, unix_ns(e->start));
  sb_str(b, "\",\"endTimeUnixNano\":\"");
  sb_u64(b, unix_ns(e->end));
  sb_str(b, "\",\"attributes\":");
  int first = 1, failed = 0;
  switch (e->name) {
  case KNHK_TEL_SPAN_CONCURRENCY_NURSERY:
    sb_str(b, "[");
    attr_int(b, &first, KNHK_TEL_ATTR_NURSERY_ID, e->a[0]);
    attr_str(b, &first, KNHK_TEL_ATTR_NURSERY_MODE,
             (e->a[1] & KNHK_NURSERY_SUPERVISE) ? KNHK_TEL_NURSERY_MODE_SUPERVISE
                                                 : KNHK_TEL_NURSERY_MODE_FAIL_FAST);
    sb_str(b, "]");
    break;
  case KNHK_TEL_SPAN_CONCURRENCY_NURSERY_SPAWN:
    sb_str(b, "[");
    attr_int(b, &first, KNHK_TEL_ATTR_NURSERY_ID, e->a[0]);
    attr_int(b, &first, KNHK_TEL_ATTR_TASK_INDEX, e->a[1]);
    if (e->have & HAVE_RUN) {
      attr_int(b, &first, KNHK_TEL_ATTR_WORKER_ID, e->worker);
      attr_int(b, &first, KNHK_TEL_ATTR_TASK_QUEUE_TIME, e->run > e->start ? (int64_t)(e->run - e->start) : 0);
    }
    attr_str(b, &first, KNHK_TEL_ATTR_TASK_STATUS, status_name(e->status));
    sb_str(b, "]");
    failed = e->status != 0 && e->status != KNHK_ECANCELED;
    break;
  case KNHK_TEL_SPAN_CONCURRENCY_NURSERY_WAIT:
    sb_str(b, "[");
    attr_int(b, &first, KNHK_TEL_ATTR_NURSERY_ID, e->a[0]);
    attr_int(b, &first, KNHK_TEL_ATTR_NURSERY_LIVE, e->a[1]);
    sb_str(b, "]");
    break;
  case KNHK_TEL_SPAN_CONCURRENCY_CANCEL_TOKEN_CREATE:
    sb_str(b, "[");
    attr_int(b, &first, KNHK_TEL_ATTR_CANCEL_TOKEN_ID, e->a[0]);
    if (e->a[1]) attr_int(b, &first, KNHK_TEL_ATTR_CANCEL_TOKEN_PARENT_ID, e->a[1]);
    sb_str(b, "]");
    break;
  case KNHK_TEL_SPAN_CONCURRENCY_CANCEL_TOKEN_CANCEL:
    sb_str(b, "[");
    attr_int(b, &first, KNHK_TEL_ATTR_CANCEL_TOKEN_ID, e->a[0]);
    attr_str(b, &first, KNHK_TEL_ATTR_CANCEL_REASON, reason_name(e->a[1]));
    attr_int(b, &first, KNHK_TEL_ATTR_CANCEL_DESCENDANTS, e->extra);
    sb_str(b, "]");
    break;
  default: /* spans begun above C carry their attributes as JSON */
    sb_attrs(b, e->attrs);
    failed = e->status == 2;
    break;
  }
  if (failed) {
    sb_str(b, ",\"status\":{\"code\":2,\"message\":");
    if (e->msg) sb_json(b, e->msg);
    else sb_json(b, knhk_err_name(e->status));
    sb_str(b, "}}");
  } else {
    sb_str(b, ",\"status\":{}}");
  }
  if (++X.nspans >= SPANS_PER_LINE) flush_spans();
}

/* ---------------------------------------------------------------- drain */

static void aggregate(uint32_t id, int64_t bits) {
  knhk__tel_session_t *s = &knhk__tel;
  if (id >= (uint32_t)s->ninsts) return;
  knhk__tel_inst_t *x = &s->insts[id];
  double v;
  memcpy(&v, &bits, sizeof v);
  if (x->kind == KNHK_INSTRUMENT_GAUGE) {
    x->last = v;
  } else if (x->kind == KNHK_INSTRUMENT_HISTOGRAM) {
    int k = 0;
    while (k < x->nbounds && v > x->bounds[k]) k++;
    x->buckets[k]++;
    if (!x->count || v < x->min) x->min = v;
    if (!x->count || v > x->max) x->max = v;
    x->count++;
    x->sum += v;
  } else {
    x->sum += v;
  }
  x->seen = 1;
}

static char *blob(knhk__tel_buf_t *b, uint64_t t, size_t len) {
  char *out = malloc(len + 1);
  if (!out) return NULL;
  for (size_t off = 0; off < len; off += sizeof(knhk__tel_rec_t)) {
    size_t k = len - off < sizeof(knhk__tel_rec_t) ? len - off : sizeof(knhk__tel_rec_t);
    memcpy(out + off, &b->ring[(t + 1 + off / sizeof(knhk__tel_rec_t)) & (KNHK__TEL_RING - 1)], k);
  }
  out[len] = 0;
  return out;
}

/* A nursery task's span, whole in one record: written at once, without
 * the table, unless an error message for it came first (task_error). */
static void task_span(const knhk__tel_rec_t *r) {
  uint64_t a2 = (uint64_t)r->a[2];
  ent_t e = {.span = r->span, .trace = r->trace, .parent = r->parent,
             .start = stamp_ns((uint64_t)r->a[0]), .end = stamp_ns(r->ts),
             .name = KNHK_TEL_SPAN_CONCURRENCY_NURSERY_SPAWN, .have = HAVE_START | HAVE_END,
             .worker = (int32_t)((a2 >> 32) & 0xffff) - 1, .status = (int32_t)(uint32_t)a2,
             .a = {(a2 >> 16) & KNHK__TEL_IN_NURSERY ? (int64_t)r->parent : 0, r->name, 0},
             .extra = r->a[1]};
  ent_t *pending = X.n ? find(r->span) : NULL;
  if (pending) { /* its message, kept in the table until now */
    e.msg = pending->msg, e.attrs = pending->attrs;
    pending->msg = pending->attrs = NULL;
    erase(pending);
  }
  emit(&e);
  free(e.msg), free(e.attrs);
}

/* Reads up to `budget` records of b; returns how many it read. */
static uint64_t drain_buffer(knhk__tel_buf_t *b, uint64_t budget) {
  uint64_t h = ld_acquire(&b->head), t = ld_relaxed(&b->tail), t0 = t;
  while (t < h && t - t0 < budget) {
    knhk__tel_rec_t *r = &b->ring[t & (KNHK__TEL_RING - 1)];
    uint64_t step = 1;
    ent_t *e = NULL;
    switch (r->kind) {
    case KNHK__REC_BLOB:
      step = (uint64_t)r->a[1];
      if ((e = entry(r->span))) {
        char **dst = r->a[0] == KNHK__BLOB_ATTRS ? &e->attrs : &e->msg;
        free(*dst);
        *dst = blob(b, t, r->name);
      }
      break;
    case KNHK__REC_START:
    case KNHK__REC_INSTANT:
      if ((e = entry(r->span))) {
        e->name = r->name, e->start = stamp_ns(r->ts), e->trace = r->trace, e->parent = r->parent;
        memcpy(e->a, r->a, sizeof e->a);
        e->have |= HAVE_START;
        if (r->kind == KNHK__REC_INSTANT) e->end = e->start, e->have |= HAVE_END;
      }
      break;
    case KNHK__REC_END:
      if ((e = entry(r->span))) {
        /* (its start may not have been read yet: emit reads extra) */
        e->end = stamp_ns(r->ts), e->status = (int32_t)r->a[0], e->extra = r->a[1];
        e->worker = (int32_t)r->a[2];
        e->have |= HAVE_END;
      }
      break;
    case KNHK__REC_METRIC:
      aggregate(r->name, r->a[0]);
      break;
    case KNHK__REC_TASK:
      task_span(r);
      break;
    }
    if (e && (e->have & (HAVE_START | HAVE_END)) == (HAVE_START | HAVE_END)) {
      emit(e);
      erase(e);
    }
    t += step;
  }
  st_release(&b->tail, t); /* release: done reading those slots */
  return t - t0;
}

/* ---------------------------------------------------------------- metrics */

typedef struct {
  sbuf_t *b;
  int nmetrics;
  uint64_t t0, now;
} mw_t;

static void metric_begin(mw_t *w, int metric, const char *shape) {
  const char *const *info = knhk_tel_metric_info[metric];
  sb_fmt(w->b, "%s{\"name\":\"%s\",\"unit\":", w->nmetrics++ ? "," : "", info[0]);
  sb_json(w->b, info[1]);
  sb_str(w->b, ",\"description\":");
  sb_json(w->b, info[3]);
  sb_fmt(w->b, ",\"%s\":{\"dataPoints\":[", shape);
}

static void sum_end(mw_t *w) { sb_str(w->b, "],\"aggregationTemporality\":2,\"isMonotonic\":true}}"); }

static void point_int(mw_t *w, int *first, int worker, const char *status, uint64_t v) {
  sb_fmt(w->b, "%s{\"attributes\":[", *first ? "" : ",");
  int f = 1;
  if (worker >= 0) attr_int(w->b, &f, KNHK_TEL_ATTR_WORKER_ID, worker);
  if (status) attr_str(w->b, &f, KNHK_TEL_ATTR_TASK_STATUS, status);
  sb_fmt(w->b, "],\"startTimeUnixNano\":\"%" PRIu64 "\",\"timeUnixNano\":\"%" PRIu64
               "\",\"asInt\":\"%" PRIu64 "\"}", w->t0, w->now, v);
  *first = 0;
}

static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void export_metrics(void) {
  knhk__tel_session_t *s = &knhk__tel;
  static uint64_t c[KNHK_MAX_WORKERS][7];
  static int64_t depth[KNHK_MAX_WORKERS];
  memcpy(c, s->retired, sizeof c);
  uint64_t external = s->retired_external;
  int nw = s->retired_workers, live_workers = 0;
  memset(depth, 0, sizeof depth);
  int have_live = 0; /* else every executor has ended: the retired counts */
  for (knhk__tel_src_t *src = s->srcs; src; src = src->next) {
    knhk_worker_stats_t per[KNHK_MAX_WORKERS];
    knhk_executor_stats_t st;
    int n = knhk_executor_stats(src->ex, &st, per, KNHK_MAX_WORKERS);
    if (n <= 0) continue;
    have_live = 1;
    live_workers += n;
    knhk__executor_t *impl = knhk__impl_of(src->ex);
    for (int i = 0; i < n; i++) {
      c[i][0] += per[i].spawned, c[i][1] += per[i].completed, c[i][2] += per[i].failed;
      c[i][3] += per[i].cancelled, c[i][4] += per[i].stolen, c[i][5] += per[i].steal_attempts;
      c[i][6] += per[i].parks;
      if (impl) depth[i] += knhk__deque_size(&impl->workers[i].deque);
    }
    external += st.external_spawned;
    if (n > nw) nw = n;
  }
  uint64_t dropped = 0;
  for (knhk__tel_buf_t *b = knhk__tel_buffers(); b; b = b->next) dropped += ld_relaxed(&b->dropped);

  sbuf_t out = {0};
  mw_t w = {&out, 0, s->start_unix_ns, unix_ns(knhk__mono_ns())};
  int first;
  if (nw > 0) {
    metric_begin(&w, KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_TASKS_SPAWNED, "sum");
    first = 1;
    for (int i = 0; i < nw; i++) point_int(&w, &first, i, NULL, c[i][0]);
    if (external) point_int(&w, &first, -1, NULL, external);
    sum_end(&w);
    metric_begin(&w, KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_TASKS_COMPLETED, "sum");
    first = 1;
    for (int i = 0; i < nw; i++) {
      point_int(&w, &first, i, KNHK_TEL_TASK_STATUS_COMPLETED, c[i][1]);
      point_int(&w, &first, i, KNHK_TEL_TASK_STATUS_FAILED, c[i][2]);
      point_int(&w, &first, i, KNHK_TEL_TASK_STATUS_CANCELLED, c[i][3]);
    }
    sum_end(&w);
    static const int per_worker[][2] = {{KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_TASKS_STOLEN, 4},
                                        {KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_STEAL_ATTEMPTS, 5},
                                        {KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_PARKS, 6}};
    for (int m = 0; m < 3; m++) {
      metric_begin(&w, per_worker[m][0], "sum");
      first = 1;
      for (int i = 0; i < nw; i++) point_int(&w, &first, i, NULL, c[i][per_worker[m][1]]);
      sum_end(&w);
    }
  }
  if (!have_live) live_workers = nw; /* utilization up to when they ended */
  if (nw > 0) {
    metric_begin(&w, KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_QUEUE_DEPTH, "gauge");
    for (int i = 0; i < nw; i++) {
      int f = 1;
      sb_fmt(&out, "%s{\"attributes\":[", i ? "," : "");
      attr_int(&out, &f, KNHK_TEL_ATTR_WORKER_ID, i);
      sb_fmt(&out, "],\"timeUnixNano\":\"%" PRIu64 "\",\"asInt\":\"%" PRId64 "\"}", w.now,
             depth[i] > 0 ? depth[i] : 0);
    }
    sb_str(&out, "]}}");
    uint64_t cpu = cpu_ns(), wall = knhk__mono_ns();
    if (s->last_wall_ns && wall > s->last_wall_ns) {
      double u = (double)(cpu - s->last_cpu_ns) / ((double)(wall - s->last_wall_ns) * live_workers);
      if (!(u >= 0)) u = 0; /* (NaN too: never written as such) */
      if (u > 1) u = 1;
      metric_begin(&w, KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_CPU_UTILIZATION, "gauge");
      int f = 1;
      sb_str(&out, "{\"attributes\":[");
      attr_int(&out, &f, KNHK_TEL_ATTR_WORKER_COUNT, live_workers);
      sb_fmt(&out, "],\"timeUnixNano\":\"%" PRIu64 "\",\"asDouble\":%.6f}]}}", w.now, u);
    }
    s->last_cpu_ns = cpu, s->last_wall_ns = wall;
  }
  metric_begin(&w, KNHK_TEL_METRIC_CONCURRENCY_EXECUTOR_SPAWN_LATENCY, "histogram");
  sb_fmt(&out, "{\"startTimeUnixNano\":\"%" PRIu64 "\",\"timeUnixNano\":\"%" PRIu64
               "\",\"count\":\"%" PRIu64 "\",\"sum\":%.1f,\"bucketCounts\":[",
         w.t0, w.now, X.lat_count, X.lat_sum);
  for (int k = 0; k <= NLAT; k++) sb_fmt(&out, "%s\"%" PRIu64 "\"", k ? "," : "", X.lat[k]);
  sb_str(&out, "],\"explicitBounds\":[");
  for (int k = 0; k < NLAT; k++) sb_fmt(&out, "%s%.0f", k ? "," : "", lat_bounds[k]);
  sb_str(&out, "]");
  if (X.lat_count) sb_fmt(&out, ",\"min\":%.1f,\"max\":%.1f", X.lat_min, X.lat_max);
  sb_str(&out, "}],\"aggregationTemporality\":2}}");
  metric_begin(&w, KNHK_TEL_METRIC_TELEMETRY_RECORDS_DROPPED, "sum");
  first = 1;
  point_int(&w, &first, -1, NULL, dropped);
  sum_end(&w);

  /* user instruments: one metric per name, one data point per series */
  for (int i = 0; i < s->ninsts; i++) {
    knhk__tel_inst_t *x = &s->insts[i];
    int shown = 0;
    for (int j = 0; j < i; j++)
      if (s->insts[j].name == x->name && s->insts[j].seen) shown = 1;
    if (!x->seen || shown) continue;
    const char *shape = x->kind == KNHK_INSTRUMENT_HISTOGRAM ? "histogram"
                        : x->kind == KNHK_INSTRUMENT_GAUGE   ? "gauge"
                                                             : "sum";
    sb_fmt(&out, "%s{\"name\":", w.nmetrics++ ? "," : "");
    sb_json(&out, s->names[x->name]);
    sb_str(&out, ",\"unit\":");
    sb_json(&out, x->unit);
    sb_fmt(&out, ",\"%s\":{\"dataPoints\":[", shape);
    int np = 0;
    for (int j = i; j < s->ninsts; j++) {
      knhk__tel_inst_t *y = &s->insts[j];
      if (y->name != x->name || !y->seen) continue;
      /* (not through sb_fmt, whose 256 bytes would cut a long list short) */
      sb_str(&out, np++ ? ",{\"attributes\":" : "{\"attributes\":");
      sb_attrs(&out, y->attrs);
      sb_str(&out, ",");
      if (y->kind != KNHK_INSTRUMENT_GAUGE) sb_fmt(&out, "\"startTimeUnixNano\":\"%" PRIu64 "\",", w.t0);
      sb_fmt(&out, "\"timeUnixNano\":\"%" PRIu64 "\"", w.now);
      if (y->kind == KNHK_INSTRUMENT_HISTOGRAM) {
        sb_fmt(&out, ",\"count\":\"%" PRIu64 "\",\"sum\":", y->count);
        sb_double(&out, y->sum);
        sb_str(&out, ",\"bucketCounts\":[");
        for (int k = 0; k <= y->nbounds; k++) sb_fmt(&out, "%s\"%" PRIu64 "\"", k ? "," : "", y->buckets[k]);
        sb_str(&out, "],\"explicitBounds\":[");
        for (int k = 0; k < y->nbounds; k++) {
          if (k) sb_str(&out, ",");
          sb_double(&out, y->bounds[k]);
        }
        sb_str(&out, "]");
        if (y->count) {
          sb_str(&out, ",\"min\":");
          sb_double(&out, y->min);
          sb_str(&out, ",\"max\":");
          sb_double(&out, y->max);
        }
        sb_str(&out, "}");
      } else {
        sb_str(&out, ",\"asDouble\":");
        sb_double(&out, y->kind == KNHK_INSTRUMENT_GAUGE ? y->last : y->sum);
        sb_str(&out, "}");
      }
    }
    sb_str(&out, "]");
    if (x->kind == KNHK_INSTRUMENT_HISTOGRAM) sb_str(&out, ",\"aggregationTemporality\":2");
    else if (x->kind != KNHK_INSTRUMENT_GAUGE)
      sb_fmt(&out, ",\"aggregationTemporality\":2,\"isMonotonic\":%s",
             x->kind == KNHK_INSTRUMENT_COUNTER ? "true" : "false");
    sb_str(&out, "}}");
  }
  if (!out.oom) write_line("resourceMetrics", "metrics", &out);
  free(out.p);
}

int knhk__tel_drain_locked(int metrics, int final, uint64_t budget) {
  if (!knhk__tel.file) return 0;
  stamps_recalibrate();
  int more = 0;
  for (knhk__tel_buf_t *b = knhk__tel_buffers(); b; b = b->next) {
    budget -= drain_buffer(b, budget);
    if (ld_acquire(&b->head) != ld_relaxed(&b->tail)) more = 1;
  }
  if (final) { /* spans still open end now; ends never begun are dropped */
    uint64_t now = knhk__mono_ns();
    for (size_t i = 0; i < X.cap; i++) {
      ent_t *e = &X.tab[i];
      if (!e->span || !(e->have & HAVE_START)) continue;
      e->end = now;
      emit(e);
    }
    for (size_t i = 0; i < X.cap; i++)
      if (X.tab[i].span) free(X.tab[i].attrs), free(X.tab[i].msg);
    free(X.tab);
    X.tab = NULL, X.cap = X.n = 0;
  }
  flush_spans();
  if (metrics) export_metrics();
  fflush(knhk__tel.file);
  return more;
}

void knhk__tel_export_reset_locked(void) {
  for (size_t i = 0; i < X.cap; i++)
    if (X.tab[i].span) free(X.tab[i].attrs), free(X.tab[i].msg);
  free(X.tab);
  X.tab = NULL, X.cap = X.n = 0;
  X.spans.n = 0, X.nspans = 0;
  memset(X.lat, 0, sizeof X.lat);
  X.lat_count = 0, X.lat_sum = X.lat_min = X.lat_max = 0;
  knhk__tel.last_cpu_ns = cpu_ns(); /* utilization counts from the start */
  knhk__tel.last_wall_ns = knhk__mono_ns();
}
