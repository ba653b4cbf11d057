/* test-telemetry.c: recording from the C core, the file it writes. The
 * lines are checked here for what C alone can check (kinds of lines, names,
 * parent links, ids); spec/telemetry_spec.lua reads them as JSON. */
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "knhk/errors.h"
#include "knhk/nursery.h"
#include "knhk/reactor.h"
#include "knhk/telemetry.h"
#include "runner.h"

static char path[64];

static void start_recording(void) {
  snprintf(path, sizeof path, "/tmp/knhk-tel-%d.jsonl", (int)getpid());
  knhk_telemetry_options_t o = {path, 0, "test"};
  ASSERT_OK(knhk_telemetry_start(&o));
}

/* The recording, whole (the previous one's memory is reused). */
static char *slurp(void) {
  static char *buf;
  FILE *f = fopen(path, "r");
  ASSERT(f != NULL);
  ASSERT(fseek(f, 0, SEEK_END) == 0);
  long size = ftell(f);
  ASSERT(size >= 0);
  rewind(f);
  free(buf);
  buf = malloc((size_t)size + 1);
  ASSERT(buf != NULL);
  size_t n = fread(buf, 1, (size_t)size, f);
  buf[n] = 0;
  fclose(f);
  unlink(path);
  return buf;
}

/* How many times `what` occurs in s. A plain loop, not strstr: a
 * sanitizer's strstr measures the rest of the haystack at every call, which
 * makes counting in a large recording quadratic. */
static int count(const char *s, const char *what) {
  size_t m = strlen(what);
  int n = 0;
  for (const char *p = s; *p; p++)
    if (*p == what[0] && strncmp(p, what, m) == 0) n++, p += m - 1;
  return n;
}

/* The value of `"key":"` following the first `after` in s, copied. */
static void field_after(const char *s, const char *after, const char *key, char *out, size_t max) {
  const char *p = strstr(s, after);
  ASSERT(p != NULL);
  char k[64];
  snprintf(k, sizeof k, "\"%s\":\"", key);
  p = strstr(p, k);
  ASSERT(p != NULL);
  p += strlen(k);
  size_t i = 0;
  while (p[i] && p[i] != '"' && i + 1 < max) out[i] = p[i], i++;
  out[i] = 0;
}

static int child_ok(knhk_child_t *c) {
  (void)c;
  return 0;
}

static int child_fails(knhk_child_t *c) {
  (void)c;
  return KNHK_EIO;
}

/* Records a nursery of `children` children running fn on `workers`
 * workers, from start to stop; returns what was written, and the wait's
 * status in *status. */
/* Runs a nursery of `children` children running fn on `workers` workers;
 * returns the wait's status. */
static int run_nursery(int workers, int children, knhk_child_fn fn) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = workers;
  ASSERT_OK(knhk_executor_init(&ex, &o));
  knhk_nursery_t *n;
  ASSERT_OK(knhk_nursery_new(&n, &ex, NULL, 0));
  for (int i = 0; i < children; i++) ASSERT_OK(knhk_nursery_spawn(n, fn, NULL));
  int status = knhk_nursery_wait_all(n);
  ASSERT_OK(knhk_nursery_free(n));
  ASSERT_OK(knhk_executor_close(&ex));
  return status;
}

static char *record_nursery(int workers, int children, knhk_child_fn fn, int *status) {
  start_recording();
  *status = run_nursery(workers, children, fn);
  ASSERT_OK(knhk_telemetry_stop());
  return slurp();
}

TEST(nursery_spans_are_written_with_parent_links) {
  int st;
  char *s = record_nursery(2, 5, child_ok, &st);
  ASSERT_OK(st);
  ASSERT(strstr(s, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\","
                   "\"value\":{\"stringValue\":\"test\"}}]}") == s);
  ASSERT_EQ(5, count(s, "\"name\":\"knhk.concurrency.nursery.spawn\""));
  ASSERT_EQ(1, count(s, "\"name\":\"knhk.concurrency.nursery\""));
  ASSERT_EQ(1, count(s, "\"name\":\"knhk.concurrency.nursery.wait\""));
  /* no token: a nursery makes its own only when something needs it (a
   * cancellation, a failure), and nothing here did */
  ASSERT_EQ(0, count(s, "\"name\":\"knhk.concurrency.cancel.token.create\""));
  /* every child's parent is the nursery's span, in the nursery's trace */
  char nursery_span[40], nursery_trace[40], parent[40], trace[40];
  const char *nspan = strstr(s, "\"name\":\"knhk.concurrency.nursery\"");
  const char *start = nspan;
  while (start > s && strncmp(start, "{\"traceId\"", 10) != 0) start--;
  field_after(start, "{\"traceId\"", "traceId", nursery_trace, sizeof nursery_trace);
  field_after(start, "{\"traceId\"", "spanId", nursery_span, sizeof nursery_span);
  int children = 0;
  for (const char *p = s; (p = strstr(p, "\"name\":\"knhk.concurrency.nursery.spawn\"")); p++) {
    const char *b = p;
    while (strncmp(b, "{\"traceId\"", 10) != 0) b--;
    field_after(b, "{\"traceId\"", "parentSpanId", parent, sizeof parent);
    field_after(b, "{\"traceId\"", "traceId", trace, sizeof trace);
    ASSERT(strcmp(parent, nursery_span) == 0);
    ASSERT(strcmp(trace, nursery_trace) == 0);
    children++;
  }
  ASSERT_EQ(5, children);
  /* each child's place in the spawn order, from 0, once */
  for (int i = 0; i < 5; i++) {
    char attr[96];
    snprintf(attr, sizeof attr, "{\"key\":\"knhk.task.index\",\"value\":{\"intValue\":\"%d\"}}", i);
    ASSERT_EQ(1, count(s, attr));
  }
  ASSERT(strstr(s, "{\"resourceMetrics\":[") != NULL);
  ASSERT(strstr(s, "\"name\":\"knhk.concurrency.executor.tasks.spawned\"") != NULL);
}

static uint64_t unix_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int child_sleeps(knhk_child_t *c) {
  (void)c;
  usleep(3000);
  return 0;
}

/* The value of the next `"key":"` in s from p on, as a number. */
static uint64_t number_after(const char **p, const char *key) {
  char k[64];
  snprintf(k, sizeof k, "\"%s\":\"", key);
  *p = strstr(*p, k);
  ASSERT(*p != NULL);
  *p += strlen(k);
  return strtoull(*p, NULL, 10);
}

/* Stamps (the CPU's counter, or clock readings under KNHK_STAMP=clock, a
 * second ctest) become Unix times inside the recording, and a child that
 * sleeps 3 ms lasts at least that long. */
TEST(spans_are_timed_within_the_recording) {
  uint64_t before = unix_now_ns();
  int st;
  char *s = record_nursery(2, 4, child_sleeps, &st);
  uint64_t after = unix_now_ns();
  ASSERT_OK(st);
  *strchr(s, '\n') = 0; /* the spans' line */
  int spans = 0, children = 0;
  for (const char *p = s; (p = strstr(p, "{\"traceId\"")); spans++) {
    const char *next = strstr(p + 1, "{\"traceId\"");
    int child = strstr(p, "\"name\":\"knhk.concurrency.nursery.spawn\"") != NULL &&
                (!next || strstr(p, "\"name\":\"knhk.concurrency.nursery.spawn\"") < next);
    uint64_t start = number_after(&p, "startTimeUnixNano");
    uint64_t end = number_after(&p, "endTimeUnixNano");
    /* (1 ms of slack: the realtime clock may be slewed meanwhile) */
    ASSERT(start + 1000000u >= before && end <= after + 1000000u);
    ASSERT(end >= start);
    if (child) {
      ASSERT(end - start >= 3000000u);
      children++;
    }
  }
  ASSERT_EQ(4, children);
  ASSERT_EQ(6, spans); /* and the nursery's, and its wait's */
}

TEST(a_failed_child_has_an_error_status_and_cancels_with_a_span) {
  int st;
  char *s = record_nursery(1, 1, child_fails, &st);
  ASSERT_EQ(KNHK_EIO, st);
  *strchr(s, '\n') = 0; /* the spans' line (metrics count failures too) */
  ASSERT_EQ(1, count(s, "\"status\":{\"code\":2"));
  ASSERT_EQ(1, count(s, "{\"key\":\"knhk.task.status\",\"value\":{\"stringValue\":\"failed\"}}"));
  /* the failure needed the nursery's token to cancel the siblings: made then */
  ASSERT_EQ(1, count(s, "\"name\":\"knhk.concurrency.cancel.token.create\""));
  ASSERT_EQ(1, count(s, "\"name\":\"knhk.concurrency.cancel.token.cancel\""));
  ASSERT_EQ(1, count(s, "{\"key\":\"knhk.cancel.reason\",\"value\":{\"stringValue\":\"sibling\"}}"));
}

/* A nursery that already had children when recording began: the spawn
 * index still counts them. */
TEST(spawn_indices_count_children_spawned_before_recording) {
  knhk_executor_t ex;
  knhk_executor_options_t o;
  knhk_executor_options_init(&o);
  o.workers = 1;
  ASSERT_OK(knhk_executor_init(&ex, &o));
  knhk_nursery_t *n;
  ASSERT_OK(knhk_nursery_new(&n, &ex, NULL, 0));
  for (int i = 0; i < 2; i++) ASSERT_OK(knhk_nursery_spawn(n, child_ok, NULL));
  start_recording();
  for (int i = 0; i < 3; i++) ASSERT_OK(knhk_nursery_spawn(n, child_ok, NULL));
  ASSERT_OK(knhk_nursery_wait_all(n));
  ASSERT_OK(knhk_nursery_free(n));
  ASSERT_OK(knhk_executor_close(&ex));
  ASSERT_OK(knhk_telemetry_stop());
  char *s = slurp();
  ASSERT_EQ(3, count(s, "\"name\":\"knhk.concurrency.nursery.spawn\""));
  for (int i = 0; i < 5; i++) {
    char attr[96];
    snprintf(attr, sizeof attr, "{\"key\":\"knhk.task.index\",\"value\":{\"intValue\":\"%d\"}}", i);
    ASSERT_EQ(i >= 2, count(s, attr));
  }
}

TEST(nothing_is_recorded_while_off) {
  start_recording();
  ASSERT_OK(knhk_telemetry_stop());
  knhk_token_t *t;
  ASSERT_OK(knhk_token_new(&t, NULL));
  ASSERT_EQ(0, knhk_telemetry_token_id(t));
  knhk_token_release(t);
  ASSERT_EQ(KNHK_EALREADY, knhk_telemetry_stop());
  ASSERT_EQ(0, knhk_telemetry_enabled());
  char *s = slurp();
  ASSERT_EQ(0, count(s, "resourceSpans"));
}

/* The recording's size so far, read without stopping it. */
static long size_written(void) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* A backlog larger than one drain's share (the reactor drains 4096
 * records a turn, then kicks itself again) reaches the file in turns, with
 * no interval tick (a minute away) and no flush. 40 000 children on one
 * worker: its buffer passes half full (32 768) once, which kicks the first
 * drain; the rest must follow by themselves. The file stops growing once
 * nothing is left to drain: a second after that, every span is there. */
TEST(a_reactor_drains_a_backlog_in_turns_and_loses_nothing) {
  enum { N = 40000 };
  knhk_reactor_t *r;
  ASSERT_OK(knhk_reactor_new(&r));
  snprintf(path, sizeof path, "/tmp/knhk-tel-%d.jsonl", (int)getpid());
  knhk_telemetry_options_t to = {path, 60000000000u, "test"};
  ASSERT_OK(knhk_telemetry_start(&to));
  ASSERT_OK(run_nursery(1, N, child_ok));
  long size = -1;
  for (int still = 0, i = 0; still < 10 && i < 600; i++) { /* 100 ms steps, 1 min at most */
    usleep(100000);
    long now = size_written();
    still = now == size && now > 0 ? still + 1 : 0;
    size = now;
  }
  char *s = slurp(); /* (not stopped: what the reactor wrote by itself) */
  ASSERT_EQ(N, count(s, "\"name\":\"knhk.concurrency.nursery.spawn\""));
  ASSERT_OK(knhk_telemetry_stop());
  ASSERT_OK(knhk_reactor_free(r));
  unlink(path);
}

TEST(a_reactor_drains_at_the_interval) {
  knhk_reactor_t *r;
  ASSERT_OK(knhk_reactor_new(&r));
  snprintf(path, sizeof path, "/tmp/knhk-tel-%d.jsonl", (int)getpid());
  knhk_telemetry_options_t o = {path, 20000000u, NULL}; /* 20 ms */
  ASSERT_OK(knhk_telemetry_start(&o));
  knhk_token_t *t;
  ASSERT_OK(knhk_token_new(&t, NULL));
  ASSERT_NE(0, knhk_telemetry_token_id(t));
  /* the span reaches the file without a flush: the reactor's interval */
  int seen = 0;
  for (int i = 0; i < 500 && !seen; i++) {
    usleep(10000);
    FILE *f = fopen(path, "r");
    char line[4096] = "";
    seen = f && fgets(line, sizeof line, f) && strstr(line, "knhk.concurrency.cancel.token.create");
    if (f) fclose(f);
  }
  ASSERT(seen);
  knhk_token_release(t);
  ASSERT_OK(knhk_telemetry_stop());
  ASSERT_OK(knhk_reactor_free(r));
  slurp();
}

/* JSON has no NaN or infinity: a value that is not finite, recorded from C
 * or reached by a sum that overflows, is written as the strings of the
 * protobuf JSON mapping, never as printf's nan / inf (which would make the
 * whole metrics line unreadable, every later one too). */
TEST(non_finite_values_are_written_as_otlp_json_strings) {
  start_recording();
  int gauge = knhk_telemetry_instrument("t.gauge", KNHK_INSTRUMENT_GAUGE, "", NULL, NULL, 0);
  int up = knhk_telemetry_instrument("t.up", KNHK_INSTRUMENT_COUNTER, "", NULL, NULL, 0);
  int down = knhk_telemetry_instrument("t.down", KNHK_INSTRUMENT_UPDOWNCOUNTER, "", NULL, NULL, 0);
  double bounds[] = {1, 10};
  int hist = knhk_telemetry_instrument("t.hist", KNHK_INSTRUMENT_HISTOGRAM, "", NULL, bounds, 2);
  ASSERT_GE(gauge, 0);
  ASSERT_GE(up, 0);
  ASSERT_GE(down, 0);
  ASSERT_GE(hist, 0);
  knhk_telemetry_record(gauge, 0.0 / 0.0);
  knhk_telemetry_record(up, 1e308); /* twice: the sum overflows */
  knhk_telemetry_record(up, 1e308);
  knhk_telemetry_record(down, -1e308);
  knhk_telemetry_record(down, -1e308);
  knhk_telemetry_record(hist, 0.0 / 0.0);
  ASSERT_OK(knhk_telemetry_stop());
  char *s = slurp();
  ASSERT_EQ(1, count(s, "\"asDouble\":\"NaN\""));
  ASSERT_EQ(1, count(s, "\"asDouble\":\"Infinity\""));
  ASSERT_EQ(1, count(s, "\"asDouble\":\"-Infinity\""));
  ASSERT_EQ(1, count(s, "\"sum\":\"NaN\""));
  ASSERT_EQ(1, count(s, "\"min\":\"NaN\",\"max\":\"NaN\""));
  ASSERT_EQ(0, count(s, ":nan") + count(s, ":-nan") + count(s, ":inf") + count(s, ":-inf"));
}

/* A histogram's bounds are finite and ascending (the bucket above the
 * last bound is always there). */
TEST(histogram_bounds_must_be_finite_and_ascending) {
  double nan_first[] = {0.0 / 0.0}, inf_last[] = {1, 1.0 / 0.0}, down[] = {2, 1};
  ASSERT_EQ(KNHK_EINVAL, knhk_telemetry_instrument("t.b", KNHK_INSTRUMENT_HISTOGRAM, "", NULL, nan_first, 1));
  ASSERT_EQ(KNHK_EINVAL, knhk_telemetry_instrument("t.b", KNHK_INSTRUMENT_HISTOGRAM, "", NULL, inf_last, 2));
  ASSERT_EQ(KNHK_EINVAL, knhk_telemetry_instrument("t.b", KNHK_INSTRUMENT_HISTOGRAM, "", NULL, down, 2));
}

/* A series' attributes are written whole, however long. */
TEST(long_instrument_attributes_are_written_whole) {
  char attrs[1024];
  int n = snprintf(attrs, sizeof attrs, "[{\"key\":\"k\",\"value\":{\"stringValue\":\"");
  while (n < 900) attrs[n++] = 'x';
  snprintf(attrs + n, sizeof attrs - (size_t)n, "\"}}]");
  start_recording();
  int g = knhk_telemetry_instrument("t.long", KNHK_INSTRUMENT_GAUGE, "", attrs, NULL, 0);
  ASSERT_GE(g, 0);
  knhk_telemetry_record(g, 1);
  ASSERT_OK(knhk_telemetry_stop());
  char *s = slurp();
  char whole[1100];
  snprintf(whole, sizeof whole, "{\"attributes\":%s,\"timeUnixNano\"", attrs);
  ASSERT_EQ(1, count(s, whole));
}

#define FFFD "\xEF\xBF\xBD"

/* OTLP/JSON is UTF-8: bytes that are not (a Lua string may hold any) are
 * written as U+FFFD, one per maximal ill-formed part, in attributes made
 * above C and in messages alike; valid sequences pass as they are. */
TEST(strings_that_are_not_utf8_are_written_with_replacement_characters) {
  start_recording();
  int name = knhk_telemetry_intern("t.utf8");
  ASSERT_GE(name, 0);
  uint64_t parent;
  uint64_t span = knhk_telemetry_span_begin(name, &parent);
  ASSERT_NE(0, span);
  /* two stray bytes; e acute and an emoji (valid); a sequence cut short */
  const char *attrs = "[{\"key\":\"m\",\"value\":{\"stringValue\":\"\xff\xfe ok \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\"}}]";
  /* a surrogate (ED A0 80) and an overlong slash (C0 AF): one per byte */
  knhk_telemetry_span_end(span, parent, 2, attrs, strlen(attrs), "bad \xed\xa0\x80 \xc0\xaf end");
  int g = knhk_telemetry_instrument("t.utf8.g", KNHK_INSTRUMENT_GAUGE, "",
                                    "[{\"key\":\"k\",\"value\":{\"stringValue\":\"a\xf5z\"}}]", NULL, 0);
  ASSERT_GE(g, 0);
  knhk_telemetry_record(g, 1);
  ASSERT_OK(knhk_telemetry_stop());
  char *s = slurp();
  ASSERT_EQ(1, count(s, "\"stringValue\":\"" FFFD FFFD " ok \xc3\xa9 \xf0\x9f\x98\x80 " FFFD "\""));
  ASSERT_EQ(1, count(s, "\"message\":\"bad " FFFD FFFD FFFD " " FFFD FFFD " end\""));
  ASSERT_EQ(1, count(s, "\"stringValue\":\"a" FFFD "z\""));
}

/* A process that exits while recording (a Lua script's os.exit, from any
 * thread) has what it recorded written: the recording stops at exit. */
TEST(a_process_that_exits_while_recording_writes_the_recording) {
  snprintf(path, sizeof path, "/tmp/knhk-tel-%d.jsonl", (int)getpid());
  pid_t child = fork();
  ASSERT(child >= 0);
  if (child == 0) {
    knhk_telemetry_options_t o = {path, 60000000000u, "test"}; /* no interval export */
    if (knhk_telemetry_start(&o) != 0) _exit(2);
    knhk_token_t *t;
    if (knhk_token_new(&t, NULL) != 0) _exit(3);
    exit(0); /* no stop */
  }
  int status;
  ASSERT_EQ(child, waitpid(child, &status, 0));
  ASSERT(WIFEXITED(status));
  ASSERT_EQ(0, WEXITSTATUS(status));
  char *s = slurp();
  ASSERT_EQ(1, count(s, "\"name\":\"knhk.concurrency.cancel.token.create\""));
  ASSERT_EQ(1, count(s, "{\"resourceMetrics\":["));
}
