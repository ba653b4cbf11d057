/* klua_sync.h: channels, semaphores and events for Lua tasks on any
 * worker (klua_chan.c). Values travel in their encoded form: inline
 * values (klua_value.h) or codec snapshots.
 *
 * Every operation that may wait is a "try": it either completes, or
 * registers the calling task as a waiter (KLUA_SYNC_WAIT) so that whoever
 * makes progress possible wakes it; the task then yields and tries again
 * (runtime.lua's await). klua_sync_unwait (from klua_wait_end) takes the
 * registration back, passing on a turn it was given and did not use.
 */
#ifndef KLUA_SYNC_H
#define KLUA_SYNC_H

#include <stdint.h>

#include "klua.h"

typedef struct klua_sync klua_sync_t;

enum { KLUA_SYNC_CHAN = 1, KLUA_SYNC_SEM = 2, KLUA_SYNC_EVENT = 3 };
enum { KLUA_SYNC_DONE = 0, KLUA_SYNC_WAIT = 1, KLUA_SYNC_CLOSED = 2, KLUA_SYNC_CANCELLED = 3 };
enum { KLUA_VAL_INLINE = 1, KLUA_VAL_BLOB = 2 };

/* An encoded value: kind, bytes. */
typedef struct {
  int kind;
  const char *p;
  uint32_t len;
} klua_val_t;

/* The largest capacity a channel takes: its slots are made at once (32
 * bytes each), and a ring index must not wrap. */
#define KLUA_CHAN_MAX (1u << 24)
klua_sync_t *klua_chan_new(uint32_t capacity);
klua_sync_t *klua_sem_new(int64_t permits);
klua_sync_t *klua_event_new(void);
void klua_sync_retain(klua_sync_t *s);
void klua_sync_release(klua_sync_t *s);
int klua_sync_kind(const klua_sync_t *s);

/* Every try takes `cancel`, the token of the caller's scope: an operation
 * that completed while the task waited reports DONE; otherwise a
 * cancelled token gives CANCELLED before anything is attempted; WAIT
 * means t is registered, its cancellation armed: yield, then try again. */

/* Channels. send: DONE (the value is the channel's: copied), WAIT,
 * CLOSED, CANCELLED, or KNHK_ENOMEM. */
int klua_chan_try_send(klua_sync_t *s, klua_task_t *t, const klua_val_t *v, knhk_token_t *cancel);
/* recv: DONE (*out filled: call klua_val_free after decoding it), WAIT,
 * CLOSED (closed and drained), CANCELLED. */
int klua_chan_try_recv(klua_sync_t *s, klua_task_t *t, klua_val_t *out, knhk_token_t *cancel);
void klua_val_free(klua_val_t *v);
/* A receive from whichever of chs[0..n) has a value first (n >= 1; a
 * channel may be given twice): DONE (*out filled, *which its index in
 * chs), WAIT, CLOSED (every one closed and drained), CANCELLED, or
 * KNHK_ENOMEM. Exactly one value is taken by a DONE, and none otherwise.
 * The look starts at a random channel, so that a busy one does not starve
 * the others. A waiting task holds a reference to each channel until its
 * wait ends; the array itself is only read during the call. */
int klua_chan_try_recv_any(klua_sync_t *const *chs, uint32_t n, klua_task_t *t, klua_val_t *out,
                           uint32_t *which, knhk_token_t *cancel);
int klua_chan_close(klua_sync_t *s);
int klua_chan_closed(klua_sync_t *s);
uint32_t klua_chan_count(klua_sync_t *s);
uint32_t klua_chan_capacity(klua_sync_t *s);

/* Semaphores (a lock is one with one permit). */
int klua_sem_try_acquire(klua_sync_t *s, klua_task_t *t, knhk_token_t *cancel);
/* Gives a permit back; a lock's only from its holder t (KNHK_EINVAL
 * otherwise, and nothing changes). */
int klua_sem_release(klua_sync_t *s, const klua_task_t *t);
void klua_sem_make_lock(klua_sync_t *s);
uint64_t klua_lock_owner(klua_sync_t *s); /* the holder's task id, 0 if free */
int64_t klua_sem_permits(klua_sync_t *s);

/* Events. */
int klua_event_try_wait(klua_sync_t *s, klua_task_t *t, knhk_token_t *cancel);
void klua_event_set(klua_sync_t *s);
int klua_event_is_set(klua_sync_t *s);

#endif
