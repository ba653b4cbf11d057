/* klua.h: the C side of the Lua layer (built into knhk/core.so).
 *
 * One runtime (klua_rt_t) per knhk.run: an executor whose worker 0 is the
 * calling thread, a reactor, and one LuaJIT VM per worker (worker 0's is the
 * caller's own). A Lua task is a record (klua_task_t) that embeds the
 * executor task that runs it; running it resumes its coroutine, in its
 * worker's VM, with lua_resume from the worker's loop. The coroutine runs
 * xpcall of the task's function and arguments (core.start puts them on
 * it); what it returned is recorded by core.finish, or settled by the VM's
 * settle function (lua/knhk/runtime.lua), resumed in the same coroutine.
 *
 * Everything the Lua code asks of a task (spawn, join, waits, scopes,
 * channels) goes through classic lua_CFunctions of knhk.core (klua_core.c):
 * task code mostly runs interpreted (a trace cannot cross a coroutine
 * resume), and there an FFI call costs ten times a lua_CFunction call.
 *
 * Records are type-stable: they come from per-worker pools and go back to
 * them, never to malloc, until the runtime is freed. So a wake-up that
 * reaches a record after its task ended (and the record was reused) lands
 * on a live record: it is a spurious wake-up, and every wait tolerates
 * those (a woken task checks its condition again). Groups (nurseries) are
 * type-stable too. This is what lets an ending task read who to wake
 * without holding a reference to it.
 */
#ifndef KLUA_H
#define KLUA_H

#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "knhk/cancel.h"
#include "knhk/clock.h"
#include "knhk/deadline.h"
#include "knhk/executor.h"
#include "knhk/reactor.h"
#include "knhk/task.h"
#include "knhk/telemetry.h"

#if defined(__GNUC__)
#define KLUA_API __attribute__((visibility("default")))
#else
#define KLUA_API
#endif

typedef struct klua_rt klua_rt_t;
typedef struct klua_task klua_task_t;
typedef struct klua_group klua_group_t;
typedef struct klua_worker klua_worker_t;
typedef struct klua_wait klua_wait_t;

/* Task kinds and outcomes (the outcome is stored once, with release). */
enum { KLUA_PORTABLE = 0, KLUA_LOCAL = 1 };
enum { KLUA_RUNNING = -1, KLUA_OK = 0, KLUA_ERROR = 1, KLUA_CANCELLED = 2 };

/* What a task's payload holds: its start (function and arguments) until it
 * starts, then nothing, then its results once it ended. */
enum {
  KLUA_PAY_NONE = 0,
  KLUA_PAY_INLINE = 1, /* values in klua_value encoding (klua_value.c) */
  KLUA_PAY_BLOB = 2,   /* a snapshot made by knhk.codec */
  KLUA_PAY_REFS = 3,   /* local start: function and arguments anchored in the home VM */
  KLUA_PAY_MESSAGE = 4, /* an error message made in C (the runtime's own failure) */
  KLUA_PAY_REASON = 5   /* cancelled: only the reason code, in nvals (no codec) */
};

enum { KLUA_INLINE = 32 }; /* payload bytes held in the record itself */
/* Times (in the runtime's nanoseconds) at or past this count as never: a
 * little short of 2^64, so that a double near it never converts out of
 * range. knhk/clock.lua's MAX_SECONDS is the same time in seconds. */
#define KLUA_NEVER_NS 1.8e19
/* The spans of a task spawned while not recording: all zero, never written
 * (knhk_telemetry_task_enter writes only a task with a span). */
extern knhk_telemetry_task_t klua_no_tel;
/* A results snapshot (KLUA_PAY_BLOB) is followed by the nvals handles it
 * holds references to, each an inline value of this size (klua_value.c). */
enum { KLUA_BLOB_HANDLE_BYTES = 10 };
/* An inline start's `proto`: the prototype id, and above it the number of
 * the globals' name-value pairs that follow the upvalues in the payload. */
#define KLUA_PROTO_ID_MASK 0xffffffu
#define KLUA_PROTO_GLOBALS_SHIFT 24
#define KLUA_PROTO_GLOBALS_MASK 0x7fu
/* ... and, in its top bit, whether its closures may be shared (codec.lua) */
#define KLUA_PROTO_SHAREABLE 0x80000000u

/* ------------------------------------------------------------ spinlocks */

/* For a few pointer updates; yields if the holder was preempted. */
typedef struct {
  _Atomic uint32_t held;
} klua_spin_t;

void klua_spin_lock(klua_spin_t *s);
static inline void klua_spin_unlock(klua_spin_t *s) {
  atomic_store_explicit(&s->held, 0, memory_order_release);
}

/* ---------------------------------------------------------------- waits */

/* One wait of one task: it waits for one thing at a time. The node is
 * taken from its worker's free nodes when the task first runs and given
 * back when it ends (klua_task.c): a task queued but not started has
 * none, and its record is 184 bytes smaller, which at 200 k tasks in
 * flight is as many bytes fewer to miss on. Nodes are type-stable (carved
 * from the runtime's arena), as records are: a late waker may read one at
 * any time. An object the task waits on (a task to join, a channel, a
 * semaphore, an event) links it into its waiter list under the object's
 * lock. Whoever wakes a waiter takes it out of the list first.
 * (One thing may be several channels: knhk.recv_any's select, whose nodes
 * are made for the wait, one per channel: KLUA_WAIT_SELECT.) */
enum {
  KLUA_WAIT_NONE = 0,
  KLUA_WAIT_JOIN = 1,  /* on: the task joined */
  KLUA_WAIT_SYNC = 2,  /* on: a klua_sync_t (channel, semaphore, event) */
  KLUA_WAIT_GROUP = 3, /* on: a group, until it is idle or a child ends */
  KLUA_WAIT_OTHER = 4, /* exec, line input: they wake the task themselves */
  /* The task's own node: on is a receive from any of several channels
   * (klua_chan.c's sel_t), which queues nodes of its own, one per
   * channel. Those nodes carry this kind too: their task is not the
   * record they sit in (klua_chan.c's node_task). */
  KLUA_WAIT_SELECT = 5
};

struct klua_wait {
  klua_task_t *task;           /* whose it is (klua_wait_task): set when a task
                                  takes it, kept after (a late waker reads it) */
  klua_wait_t *free_next;      /* in a free list of nodes (klua_task.c) */
  void *on;                    /* the object, while queued on it */
  klua_wait_t *prev, *next;    /* in on's waiter list, under its lock */
  /* a channel hands a value over through these (klua_chan.c) */
  const char *val;
  uint32_t val_len;
  _Atomic int timer_busy;      /* armed or completing: use a fresh one */
  /* Small fields as bytes (a sleeping task's record is most of its cost):
   * each is a separate memory location, so writers of neighbours do not
   * race. */
  uint8_t kind;                /* KLUA_WAIT_* */
  uint8_t queued;              /* in a list now (under on's lock) */
  uint8_t list;                /* which of on's lists */
  uint8_t val_kind;            /* KLUA_VAL_* (klua_sync.h) */
  uint8_t val_owned;           /* val is malloc'd and ours to free */
  uint8_t handed;              /* a value (or a turn) was handed to us */
  uint8_t ccb_on;              /* ccb armed */
  uint8_t watch_on;            /* watch armed */
  knhk_timer_t *extra_timer;   /* the timer this wait stops at its end: timer,
                                  or a fresh one if the embedded one was busy */
  /* Above: what a node's taking resets. Below: touched only by a task
   * that waits on cancellation or sleeps. */
  knhk_cancel_cb_t ccb;        /* cancellation wake-up, while armed */
  knhk_cancel_cb_t *watch;     /* another token (token:wait): made for the wait,
                                  set exactly while watch_on is */
  knhk_timer_t timer;          /* sleep: ours when not busy */
};

/* ---------------------------------------------------------------- tasks */

/* (JOINED is the only flag: it is stored, not or-ed in, which is a plain
 * store where an or is a locked instruction) */
enum {
  KLUA_T_JOINED = 1u << 0      /* someone joined it: its error is handled */
};

/* The record is laid out by when its fields are used, 64 bytes (a cache
 * line's worth) per phase of a task's life, so that a task that is
 * spawned, runs and is joined touches few lines in each phase: with 200 k
 * tasks between a task's spawn and its run, every line a phase touches is
 * a miss (a spawn_local of a trivial function spent more time in such
 * misses than in its instructions). Part 0 is the executor's; part 1 all
 * that the join of an ended task reads; part 2 what running it reads;
 * part 3 who it is; part 4 its links. Records are not 64-aligned (they are
 * 280 bytes apart, so a part mostly spans two lines): aligned, at 512 bytes,
 * the power-of-two stride crowded every record's hot lines into a few of
 * the cache's sets and spawn_local measured slower. */
struct klua_task {
  /* part 0: the executor's, and the runtime's */
  knhk_task_t et;              /* the executor task that runs it */
  klua_rt_t *rt;
  /* part 1: how it ended, and its payload */
  _Atomic int32_t refs;        /* handles, the running task, an ordered group */
  _Atomic int32_t outcome;     /* KLUA_RUNNING until it ends: stored with
                                  release after the results (acquire to read) */
  _Atomic uint32_t flags;      /* KLUA_T_* */
  uint32_t len;                /* bytes at data */
  int32_t nvals;               /* inline: how many values */
  uint8_t pay;                 /* KLUA_PAY_* */
  uint8_t kind;                /* KLUA_PORTABLE / KLUA_LOCAL */
  uint16_t start_len;          /* inline start: bytes of its upvalues and globals, or 0 */
  char *data;                  /* buf, or malloc'd */
  char buf[KLUA_INLINE];
  /* part 2: what running it reads (while it runs: its worker only, but
   * for token and jlock) */
  lua_State *co;               /* its coroutine */
  knhk_token_t *scope;         /* the innermost cancel scope's token, or NULL */
  _Atomic(knhk_token_t *) token; /* its own token, made when first needed */
  knhk_token_t *cancel_parent; /* what cancels it (a reference): the scope it
                                  was spawned in, or its nursery's token */
  klua_group_t *group;         /* the nursery it belongs to */
  knhk_telemetry_task_t *tel;  /* its spans: a block of its own while recording,
                                  else klua_no_tel (zero: nothing recorded); out
                                  of the record, which a sleeping task keeps */
  _Atomic int32_t home;        /* its worker once started, else -1 */
  int co_ref;                  /* its coroutine's anchor, while it runs */
  int32_t fn_ref;              /* refs start: in the home VM's anchor table */
  klua_spin_t jlock;           /* guards joiners */
  /* part 3: who it is, and its links */
  uint64_t id;
  uint64_t parent;             /* id of the task that spawned it, or 0 */
  uint64_t started_ns;         /* when it was spawned (the runtime's clock) */
  const char *where;           /* its function's place (klua_where) */
  klua_group_t *implicit;      /* its nursery for knhk.spawn, made on first use */
  klua_wait_t *joiners;        /* who waits for it to end (under jlock) */
  klua_task_t *link;           /* in a free list, or a group's ended list */
  int32_t proto;               /* inline start: the prototype id of the function, and the
                                  number of globals the payload carries (above the id) */
  /* The task's next step, once woken, looks at its scope's token before
   * anything else (sleep, join, checkpoint): cancelled, it would only
   * raise Cancelled, and may be ended without being resumed. */
  uint8_t recheck;
  /* part 4 on */
  klua_task_t *batch_next;     /* a shared free batch's head: the next batch */
  uint32_t batch_n;            /* a shared free batch's head: its length */
  /* Odd from its spawn to its end: listed (knhk.tasks(), a stall's and a
   * signal's reports), read as a sequence lock (klua_tasks_each). Never
   * reset: a record that ends and is spawned again counts on. */
  _Atomic uint32_t live_seq;
  klua_wait_t *w;              /* its wait node while it has started and not
                                  ended, else NULL */
};

/* Whether someone joined t (its failure is then handled: not raised again). */
static inline int klua_task_joined(klua_task_t *t) {
  return (atomic_load_explicit(&t->flags, memory_order_relaxed) & KLUA_T_JOINED) != 0;
}

static inline klua_task_t *klua_task_of(knhk_task_t *et) {
  return (klua_task_t *)(void *)((char *)et - offsetof(klua_task_t, et));
}

/* The task a wait belongs to (a node's last taker: a late waker may find
 * it has moved on, which costs that task one more look). */
static inline klua_task_t *klua_wait_task(klua_wait_t *w) { return w->task; }

/* --------------------------------------------------------------- groups */

/* What a nursery keeps of a child for its waits (wait_all's spawn order,
 * join_next's end order): its record (p even, a record's address: one
 * reference), or, once the child ended well with at most one result that
 * is nil, a boolean or a number, that result as a detached task handle
 * holds it (p odd: id << 4 | what << 1 | 1, and num) and no record. So a
 * nursery that lives long and spawns without end, as a server's does,
 * keeps 16 bytes of such a child in each list rather than its record. */
typedef struct {
  uintptr_t p;
  double num;
} klua_kept_t;
enum { KLUA_KEPT_NONE = 0, KLUA_KEPT_NIL = 1, KLUA_KEPT_FALSE = 2, KLUA_KEPT_TRUE = 3,
       KLUA_KEPT_NUMBER = 4 };
static inline int klua_kept_is_record(const klua_kept_t *k) { return (k->p & 1) == 0; }
/* The form that holds a child's record (one reference to it). */
static inline klua_kept_t klua_kept_record(klua_task_t *t) {
  klua_kept_t k = {(uintptr_t)t, 0};
  return k;
}
/* The detached form's word, and its parts: written and read only here. */
static inline uintptr_t klua_kept_word(uint64_t id, int what) {
  return (uintptr_t)(id << 4 | (uint64_t)what << 1 | 1);
}
static inline uint64_t klua_kept_id(uintptr_t p) { return p >> 4; }
static inline int klua_kept_what(uintptr_t p) { return (int)(p >> 1) & 7; }

/* A nursery of Lua tasks. `live` counts children not ended; the high bit
 * says a waiter is registered (KLUA_G_WAITER) and `waiter` which task.
 * The decrement that ends the last child reads that bit in the same
 * atomic step, so a waiter that registered before it is always woken. */
enum {
  KLUA_G_SUPERVISE = 1u << 0,  /* failures do not cancel siblings */
  KLUA_G_ORDERED = 1u << 1,    /* ended children are queued (join_next, wait_any) */
  KLUA_G_IMPLICIT = 1u << 2    /* a task's own, for knhk.spawn */
};
#define KLUA_G_WAITER (1ull << 40)
#define KLUA_G_LIVE(s) ((uint32_t)((s) & 0xffffffffu))

struct klua_group {
  klua_rt_t *rt;
  _Atomic uint64_t state;      /* live children | KLUA_G_WAITER */
  _Atomic(klua_task_t *) waiter;
  _Atomic int32_t refs;        /* the owner's, and handles that travelled */
  _Atomic int32_t closed;
  _Atomic int32_t sibling_cancelled;
  uint32_t flags;              /* KLUA_G_* */
  knhk_token_t *token;         /* its children's checkpoints look here */
  _Atomic uint64_t ends;       /* children ended so far */
  /* ended children, newest first (ORDERED), until the owner takes them */
  _Atomic(klua_task_t *) ended;
  knhk_telemetry_nursery_t tel; /* its span, while recording */
  _Atomic uint32_t spawned;    /* children so far (the telemetry's index) */
  klua_spin_t flock;           /* failures, and the foreign list */
  klua_task_t **failures;       /* failed children, until joined or taken */
  uint32_t nfail, capfail;
  uint32_t any_failed;         /* a child failed (joined or not): under flock */
  /* Children spawned from other workers' VMs (a task the nursery's handle
   * travelled to), as records, until the owner moves them to `kept`: under
   * flock. rforeign counts the room spawns about to happen reserved. */
  klua_kept_t *foreign;
  _Atomic uint32_t nforeign;
  uint32_t rforeign, capforeign;
  /* The children spawned into it, in spawn order (wait_all), as
   * klua_kept_t: kept here rather than as the Lua handles the spawns
   * returned, which cost a userdata, a table slot and a finalizer each for
   * as long as the nursery lives. Only the worker whose VM opened it
   * (owner_worker) appends and reads: the others' spawns come through
   * `foreign`, and are taken in whenever the owner spawns or counts. */
  int32_t owner_worker;        /* -1: none (a task's own nursery, the root's) */
  uint32_t nkept, capkept;
  klua_kept_t *kept;
  /* Where kept[] still holds a record of a child not ended then, and the
   * count of them at which the owner looks again (klua_group.c: compact). */
  uint32_t *held;
  uint32_t nheld, capheld, compact_at;
  /* Ended children taken from `ended`, oldest first (the owner's): a ring;
   * spill, linked through `link`, only if the ring could not grow. */
  klua_kept_t *ring;
  uint32_t rhead, rlen, rcap;
  klua_task_t *spill;
  klua_group_t *next_free;
};

/* --------------------------------------------------------------- workers */

struct klua_worker {
  klua_rt_t *rt;
  int index;
  lua_State *L;                /* its VM */
  int own;                     /* made by us (closed at the end) */
  int anchor;                  /* registry ref: the VM's anchor table */
  /* its anchor table's refs handed out, its first free one (klua_ref):
   * zero with each runtime's workers, as the table is once core.free
   * cleared it at the end of the last run in this VM */
  int anchor_top, anchor_free;
  /* registry refs (core.register): what task_run puts on coroutines */
  int xpcall_fn, start_fn, finish_fn, settle, capture_fn;
  int make_co;                 /* registry ref: make_coroutine (klua_task.c), or 0 */
  const void *globals;         /* its globals table (core.register): what a pooled
                                  coroutine's must be again (give_back_coroutine) */
  const void *mt_task;         /* its VM's metatable of task handles (core.register) */
  klua_task_t *cur;            /* the task being resumed now */
  /* A loop of spawn_local calls of one function anchors it once: at the
   * anchor table's slot KLUA_REF_REPEAT, with rep_n starts of it pending
   * (klua_ref_fn), instead of one slot per task that a 200 k-task loop
   * writes and reads back scattered over a 1.6 MB array. */
  const void *rep_fn;
  const char *rep_place;       /* its place (local_place_of, klua_core.c) */
  uint32_t rep_n;
  /* the places of the prototypes spawned here, by prototype id (a place
   * is its prototype's: portable_place_of, klua_core.c), or NULL */
  const char **place_by_proto;
  uint32_t nplace_by_proto;
  /* idle coroutines, in the anchor table at refs co_refs[] */
  lua_State **co_free;
  int *co_refs;
  int nco, capco;
  /* free records */
  klua_task_t *free;
  uint32_t nfree;
  /* free wait nodes (free_next) */
  klua_wait_t *free_nodes;
  uint32_t nfree_nodes;
  /* task ids: a block taken from the process's counter, handed out here
   * one by one (a shared counter is a locked add per spawn, and a cache
   * line every worker's spawns pull back and forth) */
  uint64_t id_next, id_end;
};

/* Records and groups come in slabs of these many (klua_task.c, klua_group.c);
 * klua_rt_free walks the slabs with the same counts. */
enum { KLUA_TASK_SLAB = 64, KLUA_GROUP_SLAB = 32 };

/* ---- klua_arena.c: chunks that record and group slabs are carved from ---- */
/* Under AddressSanitizer every slab is a calloc of its own (klua_arena.c). */
#if defined(__SANITIZE_ADDRESS__)
#define KLUA_ARENA_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KLUA_ARENA_MALLOC 1
#endif
#endif
typedef struct {
  void **chunks;
  size_t nchunks, capchunks;
  char *at;    /* the rest of the current chunk */
  size_t left;
  int dirty;   /* the current chunk held another run's records: zero what is carved */
  size_t used; /* bytes given out */
} klua_arena_t;
/* `size` zeroed bytes, 64-aligned, alive until klua_arena_free; NULL when
 * out of memory. Not thread-safe: the runtime's pool_m guards its arena. */
void *klua_arena_alloc(klua_arena_t *a, size_t size);
/* Everything a's allocations gave: kept for a later runtime, or unmapped. */
void klua_arena_free(klua_arena_t *a);

struct klua_rt {
  knhk_executor_t ex;
  knhk_reactor_t *reactor;
  /* A virtual clock's idle hints go through clock_m, so that none reaches
   * the reactor once klua_rt_free has started freeing it (a run that
   * failed before its workers were done). */
  pthread_mutex_t clock_m;
  int hints_on;                /* under clock_m */
  _Atomic int stalled;         /* a virtual clock found every task waiting for ever */
  _Atomic int line_stalled;    /* ... while a REPL line ran: that line was cancelled */
  char *stall_text;            /* the stalled run's waiting tasks, a line each (reactor
                                  writes it before cancelling the root) */
  int workers;
  int signals;                 /* klua_rt_opts_t's */
  klua_worker_t *w;
  knhk_token_t *root_token;
  char *lua_path, *lua_cpath;  /* the spawner's, for worker VMs (under protos_m) */
  char **old_paths;            /* replaced ones, kept until the end: readers may hold them */
  size_t nold_paths;
  /* prototype registry: id -> bytecode */
  pthread_mutex_t protos_m;
  char **protos;
  size_t *proto_lens;
  uint32_t nprotos, capprotos;
  /* interned places of task functions */
  pthread_mutex_t where_m;
  char **wheres;
  size_t nwheres, capwheres;
  /* type-stable memory: record slabs and records freed off a worker */
  pthread_mutex_t pool_m;
  klua_arena_t arena; /* where the slabs below are carved from (under pool_m) */
  void **slabs;
  size_t nslabs, capslabs;
  klua_task_t *shared_free; /* batches of free records (batch_next, batch_n) */
  klua_wait_t *shared_nodes; /* free wait nodes given back off a worker, or
                                beyond a worker's keep (free_next) */
  klua_group_t *free_groups;
  klua_group_t **group_slabs;
  size_t ngslabs, capgslabs;
  klua_group_t *root_group;
  /* The root task's id, and where its stack goes on below its coroutine:
   * the program's call of knhk.run ("file:line: ", interned; NULL when
   * knhk's own code called it, as knhk-lua does). Written by core.root
   * before any task runs. */
  uint64_t root_id;
  const char *root_place;
};

/* ---- klua_rt.c: the runtime, VMs, registries ---- */
/* How a runtime runs (knhk.run's options). seeded: one worker picking
 * among its ready tasks by a generator seeded with `seed`
 * (KNHK_EXECUTOR_SEEDED), for reproducible schedules. clock:
 * knhk_clock_kind (knhk/clock.h); a virtual clock jumps when the executor
 * says that every task waits. signals: SIGINT and SIGTERM cancel the run
 * (klua_signals.c). */
typedef struct {
  int workers;
  int seeded;
  uint64_t seed;
  int clock;
  int signals;
} klua_rt_opts_t;
int klua_rt_new(lua_State *caller, const klua_rt_opts_t *opts, klua_rt_t **out, char *err,
                size_t errlen);
void klua_rt_free(klua_rt_t *rt);
void klua_rt_watch_stalls(klua_rt_t *rt); /* the root is queued: stalls are deadlocks */
int klua_signals_cancel_line(void);       /* klua_signals.c */
int klua_signals_start(klua_rt_t *rt);    /* klua_signals.c */
void klua_signals_wait(void);             /* klua_signals.c */
void klua_signals_restore(void);          /* klua_signals.c */
int klua_rt_enter(klua_rt_t *rt);
/* The worker this thread runs, set at each task run: reading it is how a
 * lua_CFunction finds its task without an argument. initial-exec: one
 * %fs-relative load, where the default model of a dlopen'ed library calls
 * __tls_get_addr at every read (a dozen times per task); glibc serves a
 * pointer from its static TLS reserve. */
#define KLUA_TLS_MODEL __attribute__((tls_model("initial-exec")))
extern _Thread_local klua_worker_t *klua__tls_worker KLUA_TLS_MODEL;
klua_worker_t *klua_worker_slow(klua_rt_t *rt);
/* The calling thread's worker in rt while it runs a task, or NULL. */
static inline klua_worker_t *klua_worker(klua_rt_t *rt) {
  klua_worker_t *w = klua__tls_worker;
  return w && w->rt == rt ? w : klua_worker_slow(rt);
}
/* The worker whose thread this is (any runtime), or NULL. */
static inline klua_worker_t *klua_self(void) { return klua__tls_worker; }
int klua_vm_open(klua_rt_t *rt, int index, char *err, size_t errlen);
/* What klua_tasks_each read of a listed task, at one instant. */
typedef struct {
  klua_task_t *t; /* its record: read further only where it holds still
                     (a task parked on the reader's own worker; a stall) */
  uint64_t id, parent, started_ns;
  const char *where;
  int kind, home, state; /* state: knhk_task_state's */
  int outcome;
} klua_task_view_t;
/* fn(ud, v) for every task spawned and not ended (listed), in no order.
 * Nothing is locked: a task that ends or is spawned meanwhile may be left
 * out or listed, never seen half made. fn may run Lua code. */
void klua_tasks_each(klua_rt_t *rt, void (*fn)(void *ud, const klua_task_view_t *v), void *ud);

/* ---- klua_task.c: a VM's anchor table ----
 * What C holds of a VM's Lua values (coroutines, local tasks' functions and
 * arguments) lives in the VM's anchor table, at small integer refs. The
 * worker counts the refs it has handed out, and the free ones chain
 * through the table as luaL_ref's do: luaL_ref finds a new one with
 * lua_objlen, a search of the table's hash part once its array part is
 * full, a few percent of every spawn with many tasks alive. t: the
 * table's index (a pseudo-index too). */
int klua_ref(klua_worker_t *w, lua_State *L, int t); /* pops the value */
void klua_unref(klua_worker_t *w, lua_State *L, int t, int ref);
/* A local start's function (the function at fnidx) anchored in anchor
 * table t: its ref, KLUA_REF_REPEAT if it is the one the last local starts
 * pending are of. Let go of with klua_unref_fn. */
enum { KLUA_REF_REPEAT = 0 };
/* Slots of the anchor table that hold what every local start pushes
 * (klua_push_local_start); refs are numbered after them. */
enum { KLUA_ANCHOR_XPCALL = 1, KLUA_ANCHOR_CAPTURE = 2 };
/* fn: lua_topointer of the function at fnidx (the caller has it already) */
int klua_ref_fn(klua_worker_t *w, lua_State *L, int t, int fnidx, const void *fn);
void klua_unref_fn(klua_worker_t *w, lua_State *L, int t, int ref);

/* ---- klua_task.c: records, spawning, running, ending, joining ---- */
klua_task_t *klua_task_alloc(klua_rt_t *rt);
void klua_task_retain(klua_task_t *t);
void klua_task_release(klua_task_t *t);
void klua_task_drop_tel(klua_task_t *t); /* its telemetry block, if it had one */
/* If t ended well with a result a detached handle holds, that result into
 * *k (klua_kept_t), and 1; else 0. */
int klua_task_keepable(klua_task_t *t, klua_kept_t *k);
/* A local start pushed from the anchor table at `anchor` (klua_task.c). */
int klua_push_local_start(klua_worker_t *w, lua_State *L, int anchor, klua_task_t *t);
/* The n values at `first` encoded as t's payload (klua_value.c): in one
 * pass when they are nils, booleans, numbers and strings that fit the
 * record, else measured, then written, in place of what t held. The
 * payload, or NULL if one of them cannot go inline or memory ran out (t's
 * payload is then empty). */
char *klua_payload_encode(klua_task_t *t, lua_State *L, int first, int n);
/* The n values at `first` kept as t's results inline, if they fit; 1 if so. */
int klua_task_keep_results(klua_task_t *t, lua_State *L, int first, int n);
/* Spawns t (filled in: kind, group, payload) as a child of its group. t is
 * as klua_task_alloc made it, seen by no other thread yet: the references
 * the spawn adds are stored, not added atomically. */
int klua_task_spawn(klua_task_t *t, int worker);
/* Any thread: queues t again if it waits (a wake-up; spurious ones are fine). */
void klua_wake(klua_task_t *t);
/* Records how t ended (its payload already holds results or error) and
 * wakes its joiners. Its worker, once. */
void klua_task_publish(klua_task_t *t, int outcome);
int klua_task_outcome(const klua_task_t *t);
/* A record of a task that ended well and was joined, made again from what
 * a task handle kept of it (klua_core.c): for a handle that travels on
 * after it let go of its record. A reference, or NULL if out of memory. */
klua_task_t *klua_task_remade(klua_rt_t *rt, uint64_t id, const char *vals, uint32_t len,
                              int nvals);
/* The token t's checkpoints look at now. Its worker only. */
knhk_token_t *klua_task_checkpoint_token(klua_task_t *t);
/* t's own token, made (a child of its group's) on first use. Any thread. */
knhk_token_t *klua_task_own_token(klua_task_t *t);
/* Cancels t alone (h:cancel()). Any thread. */
void klua_task_cancel(klua_task_t *t);
void klua_payload_reset(klua_task_t *t);
/* At the end of a run, for a record still referenced: the references its
 * payload holds to objects that outlive the run (channels, tokens, ...). */
void klua_payload_drop_foreign(klua_task_t *t);
/* Room for len payload bytes (the record's own, or malloc'd); NULL if out of memory. */
char *klua_payload_room(klua_task_t *t, uint32_t len);

/* ---- klua_group.c ---- */
klua_group_t *klua_group_new(klua_rt_t *rt, knhk_token_t *token, uint32_t flags);
void klua_group_retain(klua_group_t *g);
void klua_group_release(klua_group_t *g);
/* Counts a child in: 0, or KNHK_ECLOSED. */
int klua_group_enter(klua_group_t *g);
/* A child of g ended (its outcome is published). */
void klua_group_child_ended(klua_group_t *g, klua_task_t *t);
/* Registers t to be woken at the next child end (or when idle): 0, or
 * KNHK_EALREADY if `seen` children ended already (look again). */
int klua_group_notify(klua_group_t *g, klua_task_t *t, uint64_t seen);
void klua_group_unnotify(klua_group_t *g, klua_task_t *t);
uint32_t klua_group_live(klua_group_t *g);
/* Closes g if it has no live child: 0, or KNHK_EBUSY. */
int klua_group_close_if_idle(klua_group_t *g);
/* The owner closed g: the lists only its waits read are dropped. */
void klua_group_closed(klua_group_t *g);
/* The owner's: the next ended child (ORDERED), oldest first, into *out
 * (a record with g's reference, or its result); 0 if none. */
int klua_group_next_ended(klua_group_t *g, klua_kept_t *out);
int klua_group_has_ended(klua_group_t *g); /* the owner's: one is there to take */
/* The failures not joined, oldest first, with a reference each; count in *n. */
klua_task_t **klua_group_take_failures(klua_group_t *g, uint32_t *n);
/* Whether a child failed (joined or not). */
int klua_group_any_failed(klua_group_t *g);
/* Whether w is the worker whose VM opened g (its spawn-order list's). */
static inline int klua_group_owned_by(const klua_group_t *g, const klua_worker_t *w) {
  return w && g->owner_worker == w->index;
}
/* Whether a child spawned now by worker w is kept in g's spawn-order list
 * (an explicit nursery's): then room for it is made, and -1 returned if
 * there is none (out of memory); else KLUA_KEEP_NONE, KLUA_KEEP_OWNER, or
 * KLUA_KEEP_FOREIGN (w is not the owner's). Just before the spawn,
 * so that keeping it (klua_group_keep) cannot fail after; nothing in
 * between may run Lua code (a finalizer could spawn into g). A spawn that
 * failed gives the room back (klua_group_unkeep). */
enum { KLUA_KEEP_NONE = 0, KLUA_KEEP_OWNER = 1, KLUA_KEEP_FOREIGN = 2 };
int klua_group_keep_room(klua_group_t *g, klua_worker_t *w);
void klua_group_unkeep(klua_group_t *g, int keep);
/* The owner's: the children other workers spawned, taken into `kept`. */
void klua_group_take_foreign(klua_group_t *g);
/* The owner's: lets go of the records its lists hold of children that
 * ended well, when that is due (klua_group.c). */
void klua_group_tidy(klua_group_t *g);
void klua_group_keep(klua_group_t *g, klua_task_t *t, int keep); /* takes a reference */

/* ---- klua_wait.c: waits ---- */
/* Arms t's wake-up on the cancellation of `token` (NULL: none). Returns 1
 * if it is cancelled already (nothing armed). */
int klua_wait_arm_cancel(klua_task_t *t, knhk_token_t *token);
/* Arms t to be woken when token is cancelled (token:wait): 0, 1 if it
 * already is, -1 out of memory. */
int klua_wait_arm_watch(klua_task_t *t, knhk_token_t *token);
int klua_wait_arm_sleep(klua_task_t *t, uint64_t deadline_ns);
/* Registers t as a joiner of target: 1 if target ended already. */
int klua_wait_arm_join(klua_task_t *t, klua_task_t *target);
/* Takes back whatever the last wait of t armed. Its worker only. */
void klua_wait_end(klua_task_t *t);
/* Wakes every joiner of t (it ended). */
void klua_wake_joiners(klua_task_t *t);
/* What t waits for, in words ("to receive on a channel", "to join task
 * 12"), into buf: for a report made while t holds still (every task
 * waits: a deadlock), not for a task that may be running meanwhile. */
void klua_wait_describe(klua_task_t *t, char *buf, size_t n);
/* klua_chan.c's part of it: what a wait queued on s waits for. */
const char *klua_sync_wait_what(const klua_wait_t *w);

/* ---- klua_core.c ---- */
int luaopen_knhk_core(lua_State *L);

#endif
