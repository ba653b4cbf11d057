-- knhk.ffi: the one ffi.cdef of knhk-lua and the one ffi.load, done once.
--
-- Declarations mirror core/include/knhk/*.h and lua/src/klua.h; the spec
-- spec/ffi_spec.lua checks that every name declared here exists in the
-- library. The library is knhk/core.so, found where `require "knhk.core"`
-- found it, or at $KNHK_LIB.
local ffi = require "ffi"

ffi.cdef [[
/* knhk/errors.h */
const char *knhk_strerror(int err);
const char *knhk_err_name(int err);

/* knhk/executor.h (opaque here) */
typedef struct knhk_executor_t knhk_executor_t;
typedef struct knhk_task_t knhk_task_t;
typedef struct {
  uint64_t spawned, completed, failed, cancelled, stolen, steal_attempts, parks, busy_ns;
} knhk_worker_stats_t;
typedef struct {
  int workers;
  knhk_worker_stats_t total;
  uint64_t external_spawned;
  uint64_t live;
} knhk_executor_stats_t;
int knhk_executor_stats(knhk_executor_t *ex, knhk_executor_stats_t *out,
                        knhk_worker_stats_t *per_worker, int n);
int knhk_executor_stop(knhk_executor_t *ex, int mode);

/* knhk/cancel.h */
typedef struct knhk_token_s knhk_token_t;
int knhk_token_new(knhk_token_t **out, knhk_token_t *parent);
knhk_token_t *knhk_token_retain(knhk_token_t *t);
void knhk_token_release(knhk_token_t *t);
int knhk_token_cancel(knhk_token_t *t, int reason);
int knhk_token_is_cancelled(const knhk_token_t *t);
int knhk_token_reason(const knhk_token_t *t);
typedef struct knhk_reactor_s knhk_reactor_t;
int knhk_token_set_deadline(knhk_token_t *t, knhk_reactor_t *r, uint64_t deadline_ns);
int knhk_token_clear_deadline(knhk_token_t *t);
uint64_t knhk_token_deadline(const knhk_token_t *t);

/* knhk/nursery.h */
typedef struct knhk_nursery_s knhk_nursery_t;
int knhk_nursery_new(knhk_nursery_t **out, knhk_executor_t *ex, knhk_token_t *parent,
                     uint32_t flags);
knhk_token_t *knhk_nursery_token(const knhk_nursery_t *n);
int knhk_nursery_cancel(knhk_nursery_t *n);
int knhk_nursery_fail(knhk_nursery_t *n, int status);
int knhk_nursery_close(knhk_nursery_t *n);
int knhk_nursery_close_if_idle(knhk_nursery_t *n);
uint32_t knhk_nursery_count(const knhk_nursery_t *n);
uint32_t knhk_nursery_live(const knhk_nursery_t *n);
uint64_t knhk_nursery_ends(const knhk_nursery_t *n);
int knhk_nursery_notify(knhk_nursery_t *n, knhk_task_t *task, uint64_t seen);
int knhk_nursery_free(knhk_nursery_t *n);

/* knhk/telemetry.h */
typedef struct {
  const char *path; uint64_t interval_ns; const char *service_name;
} knhk_telemetry_options_t;
int knhk_telemetry_start(const knhk_telemetry_options_t *opts);
int knhk_telemetry_stop(void);
int knhk_telemetry_enabled(void);
int knhk_telemetry_flush(void);
int knhk_telemetry_intern(const char *name);
uint64_t knhk_telemetry_span_begin(int name, uint64_t *parent);
void knhk_telemetry_span_end(uint64_t span, uint64_t parent, int status, const char *attributes,
                             size_t attributes_len, const char *message);
void knhk_telemetry_span_instant(int name, const char *attributes, size_t attributes_len);
uint64_t knhk_telemetry_current_span(void);
void knhk_telemetry_task_error(const char *message);
uint64_t knhk_telemetry_token_id(const void *token);
uint64_t knhk_telemetry_nursery_wait_begin(const knhk_nursery_t *n);
void knhk_telemetry_nursery_wait_end(uint64_t span);
int knhk_telemetry_instrument(const char *name, int kind, const char *unit, const char *attributes,
                              const double *bounds, int nbounds);
void knhk_telemetry_record(int instrument, double value);

/* lua/src/klua.h */
typedef struct klua_rt klua_rt_t;
typedef struct klua_task klua_task_t;
uint64_t klua_task_id(const klua_task_t *t);
int klua_task_kind(const klua_task_t *t);
int klua_task_outcome(const klua_task_t *t);
const char *klua_task_result(const klua_task_t *t, size_t *len);
const char *klua_task_start(const klua_task_t *t, size_t *len);
knhk_token_t *klua_task_token(const klua_task_t *t);
void klua_task_set_joined(klua_task_t *t);
int klua_task_joined(const klua_task_t *t);
typedef struct klua_nursery { knhk_nursery_t *n; } klua_nursery_t;
klua_nursery_t *klua_nursery_new(klua_rt_t *rt, knhk_token_t *parent, int supervise, int *err);
klua_nursery_t *klua_nursery_retain(klua_nursery_t *n);
void klua_nursery_release(klua_nursery_t *n);
typedef struct {
  uint64_t id, parent, started_ns;
  int32_t worker;
  int32_t state;
  const char *where;
} klua_task_row_t;
int klua_tasks_list(klua_rt_t *rt, klua_task_row_t *rows, int max);
klua_task_t *klua_spawn(klua_rt_t *rt, knhk_nursery_t *n, int kind, int worker,
                        const char *snap, size_t len, uint64_t parent, const char *where,
                        int *err);
const char *klua_where(klua_rt_t *rt, const char *place);
int klua_watch_arm(klua_task_t *t, knhk_token_t *token);
klua_task_t *klua_nursery_next_ended(knhk_nursery_t *n);
void klua_task_retain(klua_task_t *t);
void klua_task_release(klua_task_t *t);
void klua_task_finish(klua_task_t *t, int outcome, const char *result, size_t len);
uint32_t klua_task_wake_bits(klua_task_t *t);
knhk_task_t *klua_task_etask(klua_task_t *t);
int klua_wait_begin(klua_task_t *t, knhk_token_t *token);
void klua_wait_end(klua_task_t *t);
int klua_sleep_arm(klua_task_t *t, uint64_t deadline_ns);
int klua_join_arm(klua_task_t *waiter, klua_task_t *target);
void klua_wake(klua_task_t *t, uint32_t bits);
uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len);
const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len);
uint64_t klua_now(klua_rt_t *rt);
int klua_worker_index(klua_rt_t *rt);
int klua_workers(klua_rt_t *rt);
knhk_executor_t *klua_executor(klua_rt_t *rt);
knhk_reactor_t *klua_reactor(klua_rt_t *rt);
knhk_token_t *klua_root_token(klua_rt_t *rt);

/* lua/src/klua_sync.c */
typedef struct klua_sync klua_sync_t;
typedef struct klua_waiter klua_waiter_t;
klua_sync_t *klua_chan_new(size_t capacity);
klua_sync_t *klua_sem_new(int64_t permits);
klua_sync_t *klua_event_new(void);
void klua_sync_retain(klua_sync_t *s);
void klua_sync_release(klua_sync_t *s);
void klua_free(void *p);
klua_waiter_t *klua_sync_wait(klua_sync_t *s, klua_task_t *t, int which);
void klua_sync_unwait(klua_sync_t *s, klua_waiter_t *w, int used);
int klua_chan_send(klua_sync_t *s, const char *data, size_t len, uint64_t *seq);
int klua_chan_recv(klua_sync_t *s, char **out, size_t *len);
uint64_t klua_chan_taken(klua_sync_t *s);
int klua_chan_withdraw(klua_sync_t *s, uint64_t seq);
typedef struct { klua_sync_t *ptr; } klua_chan_handle_t;
int klua_chan_closed(klua_sync_t *s);
size_t klua_chan_capacity(klua_sync_t *s);
size_t klua_chan_count(klua_sync_t *s);
int klua_chan_close(klua_sync_t *s);
int klua_sem_acquire(klua_sync_t *s);
void klua_sem_release(klua_sync_t *s);
int64_t klua_sem_permits(klua_sync_t *s);
void klua_event_set(klua_sync_t *s);
int klua_event_is_set(klua_sync_t *s);

/* lua/src/klua_exec.c; the outcome fields of knhk_process_t (reactor.h) */
typedef struct knhk_process_s {
  const char *file; char **argv; char **env; const char *cwd;
  const char *stdin_data; size_t stdin_len; knhk_token_t *token;
  uint64_t kill_grace_ns; void *on_exit; void *data;
  int error; int error_at; int64_t exit_status; int term_signal; int cancelled;
  char *out; char *err; size_t out_len; size_t err_len;
} knhk_process_t;
typedef struct klua_exec klua_exec_t;
klua_exec_t *klua_exec_start(klua_task_t *t, const char **argv, int argc, const char **env,
                             int envc, const char *cwd, const char *stdin_data,
                             size_t stdin_len, knhk_token_t *token, int *err);
int klua_exec_done(klua_exec_t *e);
knhk_process_t *klua_exec_process(klua_exec_t *e);
void klua_exec_free(klua_exec_t *e);

/* lua/src/klua_signals.c, klua_lines.c (the knhk-lua command) */
int klua_signals_start(klua_rt_t *rt);
int klua_signals_received(void);
void klua_signals_target(knhk_token_t *token);
typedef struct klua_lines klua_lines_t;
void klua_signals_repl(klua_lines_t *lines);
klua_lines_t *klua_lines_new(void);
int klua_lines_request(klua_lines_t *l, const char *prompt, klua_task_t *task);
int klua_lines_take(klua_lines_t *l, char **line);
void klua_lines_unwait(klua_lines_t *l);
void klua_lines_free(klua_lines_t *l);
]]

local function library_path()
  local env = os.getenv "KNHK_LIB"
  if env and env ~= "" then return env end
  local ok, core = pcall(require, "knhk.core")
  if ok and type(core) == "table" and core.path then return core.path() end
  local found = package.searchpath("knhk.core", package.cpath)
  if found then return found end
  error("knhk: cannot find the knhk.core library (knhk/core.so) in package.cpath;\n"
    .. "  set KNHK_LIB to its path, or install knhk with luarocks", 0)
end

local path = library_path()
local ok, C = pcall(ffi.load, path)
if not ok then
  error("knhk: cannot load " .. path .. ": " .. tostring(C), 0)
end

return {
  ffi = ffi,
  C = C,
  path = path,
  -- constants shared with C (see the headers named above)
  ECANCELED = -125, ETIMEDOUT = -110, EALREADY = -114, ECLOSED = -32, EBUSY = -16,
  EFAILED = -1000, ENOENT = -2, ESHUTDOWN = -108, EAGAIN = -11,
  TASK_PENDING = 1,
  CANCEL_EXPLICIT = 1, CANCEL_DEADLINE = 2, CANCEL_SIBLING = 3, CANCEL_SIGNAL = 4,
  CANCEL_SHUTDOWN = 5,
  PORTABLE = 0, LOCAL = 1,
  PROCESS_AT_FILE = 0, PROCESS_AT_CWD = 1,
  LINES_NONE = 0, LINES_LINE = 1, LINES_INTERRUPTED = 2,
  RUNNING = -1, OK = 0, ERROR = 1, CANCELLED = 2,
  WAKE_CANCEL = 1, WAKE_TIMER = 2, WAKE_JOIN = 4, WAKE_SYNC = 8, WAKE_EXEC = 16,
}
