/* klua_ffi.h: everything lua/knhk/ffi.lua binds through the FFI, and
 * nothing else. Plain declarations that ffi.cdef parses: the C files that
 * define these include this header (so the compiler holds the definitions
 * to it), and spec/ffi_spec.lua fails if ffi.lua's cdef and this header
 * drift apart (preprocessor lines aside). The hot calls of tasks go
 * through knhk.core instead (klua_core.c); these are the cold ones:
 * counters, prototypes, os.exit's report, processes, the clock, signals
 * and the REPL's line input. ffi.lua declares them in parts, each when
 * first needed: its parts begin where this header's comments name
 * knhk.exec, knhk.clock, OpenTelemetry and the REPL. */
#ifndef KLUA_FFI_H
#define KLUA_FFI_H
#include <stddef.h>
#include <stdint.h>

typedef struct klua_rt klua_rt_t;
typedef struct klua_task klua_task_t;
typedef struct knhk_token_s knhk_token_t;

const char *knhk_strerror(int err);
void klua_free(void *p);
int isatty(int fd);

/* the executor's counters (knhk.stats) */
typedef struct {
  uint64_t spawned, completed, failed, cancelled, stolen, steal_attempts, parks, busy_ns;
} klua_counters_t;
int klua_stats(klua_rt_t *rt, klua_counters_t *total, uint64_t *live, klua_counters_t *per,
               int n);
/* bytes of task records and nursery groups that live runtimes hold
 * (klua_arena.c: not malloc's, so mallinfo does not count them) */
size_t klua_arena_in_use(void);

/* the prototype registry (knhk.codec): id -> bytecode */
uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len);
const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len);
int klua_rt_set_paths(klua_rt_t *rt, const char *path, const char *cpath);
const char *klua_rt_path(klua_rt_t *rt, int c);
/* the first SIGINT/SIGTERM a run with signals received, or 0 (every run
 * of knhk-lua asks at its end) */
int klua_signals_received(void);
/* os.exit with a report first, in every VM of a run (klua_exit.c;
 * knhk-lua --stats) */
int klua_exit_report_set(const char *module);
const char *klua_exit_report(void);
int klua_exit_claim(void);
/* a module each worker VM of a run sets up with (klua_rt.c; knhk-lua's
 * global `knhk`) */
int klua_vm_setup_set(const char *module);
const char *klua_vm_setup(void);

/* knhk.exec: a child process as a step */
enum { KLUA_EXEC_AT_FILE = 0, KLUA_EXEC_AT_CWD = 1 };
typedef struct klua_exec klua_exec_t;
typedef struct {
  int error;            /* 0, or why it could not run (a KNHK_E* code) */
  int error_at;         /* KLUA_EXEC_AT_*: what the error is about */
  int64_t exit_status;
  int term_signal;
  int cancelled;
  const char *out, *err;
  size_t out_len, err_len;
} klua_exec_result_t;
klua_exec_t *klua_exec_start(klua_task_t *t, const char **argv, int argc, const char **env,
                             int envc, const char *cwd, const char *stdin_data, size_t stdin_len,
                             knhk_token_t *token, int *err);
int klua_exec_done(klua_exec_t *e);
void klua_exec_result(klua_exec_t *e, klua_exec_result_t *out);
void klua_exec_free(klua_exec_t *e);

/* knhk.clock: the runtime's clock (knhk/clock.h) */
typedef struct klua_advance klua_advance_t;
int klua_clock_kind(klua_rt_t *rt);
klua_advance_t *klua_clock_advance(klua_task_t *t, double seconds, int *err);
int klua_clock_advanced(klua_advance_t *a);
void klua_clock_advance_free(klua_advance_t *a);

/* OpenTelemetry (knhk/telemetry.h; knhk.telemetry) */
int klua_telemetry_start(const char *path, double interval_s, const char *service);
int knhk_telemetry_stop(void);
int knhk_telemetry_enabled(void);
int knhk_telemetry_flush(void);
int knhk_telemetry_intern(const char *name);
uint64_t knhk_telemetry_span_begin(int name, uint64_t *parent);
void knhk_telemetry_span_end(uint64_t span, uint64_t parent, int status, const char *attributes,
                             size_t attributes_len, const char *message);
void knhk_telemetry_span_instant(int name, const char *attributes, size_t attributes_len);
uint64_t knhk_telemetry_token_id(const void *token);
int knhk_telemetry_instrument(const char *name, int kind, const char *unit, const char *attributes,
                              const double *bounds, int nbounds);
void knhk_telemetry_record(int instrument, double value);

/* signals, and the REPL's line input (the knhk-lua command) */
typedef struct klua_lines klua_lines_t;
enum { KLUA_LINES_NONE = 0, KLUA_LINES_LINE = 1, KLUA_LINES_INTERRUPTED = 2 };
void klua_signals_target(knhk_token_t *token);
int klua_rt_take_line_stall(klua_rt_t *rt);
void klua_signals_repl(klua_lines_t *lines);
klua_lines_t *klua_lines_new(void);
int klua_lines_request(klua_lines_t *l, const char *prompt, klua_task_t *task);
int klua_lines_take(klua_lines_t *l, char **line);
void klua_lines_unwait(klua_lines_t *l);
void klua_lines_free(klua_lines_t *l);

#endif
