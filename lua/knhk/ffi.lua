-- knhk.ffi: the one ffi.cdef of knhk-lua and the one ffi.load, done once.
--
-- The cdef is lua/src/klua_ffi.h (spec/ffi_spec.lua fails if they drift):
-- the cold calls only — counters, the prototype registry, os.exit's report,
-- processes, the clock, signals, the REPL's line input. The hot calls of
-- tasks are knhk.core's lua_CFunctions (lua/src/klua_core.c says why). The
-- library is knhk/core.so, found where `require "knhk.core"` found it, or
-- at $KNHK_LIB; the program itself where knhk.core is linked in (knhk-lua).
local ffi = require "ffi"

-- The cdef in parts, in the header's order. Each VM declares a part when a
-- module first needs it (need): every knhk.run declares the base part in
-- each of its VMs, and parsing all of them was ~0.04 ms of each VM's
-- start (a tenth of `knhk-lua -e ''`'s run after loading).
local PARTS = {
  { "base", [[
typedef struct klua_rt klua_rt_t;
typedef struct klua_task klua_task_t;
typedef struct knhk_token_s knhk_token_t;

const char *knhk_strerror(int err);
void klua_free(void *p);
int isatty(int fd);

typedef struct {
  uint64_t spawned, completed, failed, cancelled, stolen, steal_attempts, parks, busy_ns;
} klua_counters_t;
int klua_stats(klua_rt_t *rt, klua_counters_t *total, uint64_t *live, klua_counters_t *per,
               int n);
size_t klua_arena_in_use(void);

uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len);
const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len);
int klua_rt_set_paths(klua_rt_t *rt, const char *path, const char *cpath);
const char *klua_rt_path(klua_rt_t *rt, int c);
int klua_signals_received(void);
int klua_exit_report_set(const char *module);
const char *klua_exit_report(void);
int klua_exit_claim(void);
int klua_vm_setup_set(const char *module);
const char *klua_vm_setup(void);
]] },
  { "exec", [[
enum { KLUA_EXEC_AT_FILE = 0, KLUA_EXEC_AT_CWD = 1 };
typedef struct klua_exec klua_exec_t;
typedef struct {
  int error;
  int error_at;
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

]] },
  { "clock", [[
typedef struct klua_advance klua_advance_t;
int klua_clock_kind(klua_rt_t *rt);
klua_advance_t *klua_clock_advance(klua_task_t *t, double seconds, int *err);
int klua_clock_advanced(klua_advance_t *a);
void klua_clock_advance_free(klua_advance_t *a);

]] },
  { "telemetry", [[
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

]] },
  { "repl", [[
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
]] },
}
local CDEF, by_name = {}, {}
for i, part in ipairs(PARTS) do
  CDEF[i] = part[2]
  by_name[part[1]] = part[2]
end
CDEF = table.concat(CDEF)

local declared = {}
-- Declares the part named `name` (base, exec, clock, telemetry, repl) in
-- this VM, once.
local function need(name)
  if declared[name] then return end
  local text = by_name[name]
  if not text then error("knhk.ffi.need: no part named " .. tostring(name), 2) end
  ffi.cdef(text)
  declared[name] = true
end
need "base"

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

-- knhk-lua has knhk.core linked in: its functions are the program's
-- (core.global), and $KNHK_LIB or a core.so on package.cpath would be a
-- second copy of the runtime, with state of its own.
local linked = package.loaded["knhk.core"]
local path, C
if type(linked) == "table" and linked.global then
  path, C = linked.path(), ffi.C
else
  path = library_path()
  local ok
  ok, C = pcall(ffi.load, path)
  if not ok then
    error("knhk: cannot load " .. path .. ": " .. tostring(C), 0)
  end
end

return {
  ffi = ffi,
  C = C,
  path = path,
  need = need,
  cdef = CDEF, -- all the parts, for spec/ffi_spec.lua
  -- error codes (core/include/knhk/errors.h) and cancel reasons
  -- (knhk/cancel.h) the Lua side names
  ENOENT = -2, ETIMEDOUT = -110, EALREADY = -114,
  CANCEL_EXPLICIT = 1, CANCEL_DEADLINE = 2, CANCEL_SIBLING = 3, CANCEL_SIGNAL = 4,
  CANCEL_SHUTDOWN = 5,
}
