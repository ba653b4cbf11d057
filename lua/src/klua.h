/* klua.h: the C side of the Lua layer (built into knhk/core.so).
 *
 * One runtime (klua_rt_t) per knhk.run: an executor whose worker 0 is the
 * calling thread, a reactor, and one LuaJIT VM per worker (worker 0's is
 * the caller's own). A Lua task is a nursery child whose run function
 * enters its worker's VM through the Lua C API (lua_pcall of that VM's
 * `step` function), never through an FFI callback. Everything else here is
 * called from Lua through the FFI and returns at once: a task waits by
 * arming a wake-up here and then yielding its coroutine.
 *
 * The FFI sees a task record as an opaque pointer and reads it only
 * through the accessors below: its outcome with acquire semantics, and
 * the rest only once the outcome says it was written.
 */
#ifndef KLUA_H
#define KLUA_H

#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "knhk/cancel.h"
#include "knhk/executor.h"
#include "knhk/nursery.h"
#include "knhk/reactor.h"

#if defined(__GNUC__)
#define KLUA_API __attribute__((visibility("default")))
#else
#define KLUA_API
#endif

/* Why a task was woken; hints only: waiters re-check their condition. */
enum {
  KLUA_WAKE_CANCEL = 1,
  KLUA_WAKE_TIMER = 2,
  KLUA_WAKE_JOIN = 4,
  KLUA_WAKE_SYNC = 8,
  KLUA_WAKE_EXEC = 16
};

/* Task kinds and outcomes. */
enum { KLUA_PORTABLE = 0, KLUA_LOCAL = 1 };
enum { KLUA_RUNNING = -1, KLUA_OK = 0, KLUA_ERROR = 1, KLUA_CANCELLED = 2 };

typedef struct klua_rt klua_rt_t;
typedef struct klua_task klua_task_t;

typedef struct {
  uint64_t id;             /* unique in the process */
  int32_t kind;            /* KLUA_PORTABLE / KLUA_LOCAL */
  _Atomic int32_t home;    /* worker whose VM runs it, -1 before it starts */
  _Atomic int32_t outcome; /* KLUA_RUNNING until it ends; stored with release
                              after result and result_len */
  const char *start;       /* portable: the start snapshot */
  size_t start_len;
  const char *result;      /* once ended: encoded results or error */
  size_t result_len;
  knhk_token_t *token;     /* the token its checkpoints look at */
  uint64_t parent;         /* id of the task that spawned it, or 0 */
  const char *where;       /* its function's place, interned (klua_where) */
  uint64_t started_ns;     /* when it was spawned, on the runtime's clock */
} klua_task_pub_t;

/* A nursery as the Lua side holds it: shared by every VM its handle
 * travelled to, freed with the last reference (after it closed). */
typedef struct klua_nursery {
  knhk_nursery_t *n;
  _Atomic int32_t refs;
} klua_nursery_t;

/* One row of klua_tasks_list: a live task, for the REPL's :tasks. */
typedef struct {
  uint64_t id, parent, started_ns;
  int32_t worker;          /* its VM's worker, -1 before it started */
  int32_t state;           /* 0 queued, 1 running, 2 waiting */
  const char *where;       /* its function's place */
} klua_task_row_t;

struct klua_task {
  klua_task_pub_t pub;
  _Atomic int32_t joined;  /* someone joined it: its error is handled */
  klua_rt_t *rt;
  knhk_task_t *etask;      /* the executor task that runs it */
  _Atomic int32_t refs;
  _Atomic uint32_t wake_bits;
  pthread_mutex_t m;       /* joiners, timer */
  klua_task_t *joiners;    /* tasks waiting for this one to end */
  klua_task_t *join_next, *join_prev;     /* in a target's joiners (its lock) */
  _Atomic(klua_task_t *) joining;          /* that target, or NULL */
  knhk_cancel_cb_t ccb;      /* the wait's scope token */
  int ccb_on;
  knhk_cancel_cb_t watch;    /* another token the wait watches (token:wait) */
  int watch_on;
  knhk_timer_t *timer;     /* the pending sleep, or NULL */
  klua_task_t *live_prev, *live_next; /* rt->live, while running */
};

typedef struct {
  lua_State *L;
  int step_ref;            /* LUA_NOREF until the VM's runtime registers */
  int own;                 /* created by us (closed at the end) */
} klua_vm_t;

struct klua_rt {
  knhk_executor_t ex;
  knhk_reactor_t *reactor;
  int workers;
  klua_vm_t *vms;
  knhk_token_t *root_token;
  pthread_mutex_t protos_m; /* prototype registry: id -> bytecode */
  char **protos;
  size_t *proto_lens;
  uint32_t nprotos, capprotos;
  pthread_mutex_t live_m;  /* live tasks, for :tasks; places (klua_where) */
  klua_task_t *live;
  char **wheres;           /* interned places, freed with the runtime */
  size_t nwheres, capwheres;
  char *lua_path, *lua_cpath; /* the caller's, for worker VMs made later */
};

/* ---- called through the FFI (lua/knhk/ffi.lua declares these) ---- */
KLUA_API klua_task_t *klua_spawn(klua_rt_t *rt, knhk_nursery_t *n, int kind, int worker,
                                 const char *snap, size_t len, uint64_t parent,
                                 const char *where, int *err);
KLUA_API const char *klua_where(klua_rt_t *rt, const char *place);
KLUA_API int klua_tasks_running(klua_rt_t *rt, klua_task_row_t *rows, int max);
KLUA_API uint64_t klua_task_id(const klua_task_t *t);
KLUA_API int klua_task_kind(const klua_task_t *t);
KLUA_API int klua_task_outcome(const klua_task_t *t);
KLUA_API const char *klua_task_result(const klua_task_t *t, size_t *len);
KLUA_API const char *klua_task_start(const klua_task_t *t, size_t *len);
KLUA_API knhk_token_t *klua_task_token(const klua_task_t *t);
KLUA_API void klua_task_set_joined(klua_task_t *t);
KLUA_API int klua_task_joined(const klua_task_t *t);
KLUA_API klua_nursery_t *klua_nursery_new(klua_rt_t *rt, knhk_token_t *parent, int supervise,
                                          int *err);
KLUA_API klua_nursery_t *klua_nursery_retain(klua_nursery_t *n);
KLUA_API void klua_nursery_release(klua_nursery_t *n);
KLUA_API int klua_watch_arm(klua_task_t *t, knhk_token_t *token);
KLUA_API klua_task_t *klua_nursery_next_ended(knhk_nursery_t *n);
KLUA_API void klua_task_retain(klua_task_t *t);
KLUA_API void klua_task_release(klua_task_t *t);
KLUA_API void klua_task_finish(klua_task_t *t, int outcome, const char *result, size_t len);
KLUA_API uint32_t klua_task_wake_bits(klua_task_t *t);
KLUA_API knhk_task_t *klua_task_etask(klua_task_t *t);
KLUA_API int klua_wait_begin(klua_task_t *t, knhk_token_t *token);
KLUA_API void klua_wait_end(klua_task_t *t);
KLUA_API int klua_sleep_arm(klua_task_t *t, uint64_t deadline_ns);
KLUA_API int klua_join_arm(klua_task_t *waiter, klua_task_t *target);
KLUA_API void klua_wake(klua_task_t *t, uint32_t bits);
KLUA_API uint32_t klua_proto_register(klua_rt_t *rt, const char *bc, size_t len);
KLUA_API const char *klua_proto_get(klua_rt_t *rt, uint32_t id, size_t *len);
KLUA_API uint64_t klua_now(klua_rt_t *rt);
KLUA_API int klua_tasks_list(klua_rt_t *rt, klua_task_row_t *rows, int max);
KLUA_API int klua_worker_index(klua_rt_t *rt);
KLUA_API int klua_workers(klua_rt_t *rt);
KLUA_API knhk_executor_t *klua_executor(klua_rt_t *rt);
KLUA_API knhk_reactor_t *klua_reactor(klua_rt_t *rt);
KLUA_API knhk_token_t *klua_root_token(klua_rt_t *rt);

/* ---- internal to core.so ---- */
int klua_rt_new(lua_State *caller, int workers, klua_rt_t **out, char *err, size_t errlen);
void klua_rt_free(klua_rt_t *rt);
int klua_rt_enter(klua_rt_t *rt);

#endif
