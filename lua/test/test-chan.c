/* test-chan.c: klua_chan_try_recv_any (lua/src/klua_chan.c) between
 * threads, without a runtime: each thread plays one task, whose record is
 * a bare klua_task_t; klua_wake (stubbed here) sets the task's flag, and a
 * task that got WAIT spins until its flag is set, then tries again, as a
 * resumed task does. So senders, receivers and cancellations race on
 * real cores, under ThreadSanitizer too. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "klua.h"
#include "klua_sync.h"
#include "knhk/cancel.h"
#include "knhk/errors.h"
#include "runner.h"

/* ------------------------------------------------- what the tasks need */

typedef struct {
  klua_task_t t; /* first: klua_wake gets &t */
  klua_wait_t node; /* its wait node, as a running task has one */
  _Atomic int woken;
} fake_t;

void klua_wake(klua_task_t *t) { atomic_store_explicit(&((fake_t *)(void *)t)->woken, 1, memory_order_release); }

void klua_spin_lock(klua_spin_t *s) {
  while (atomic_exchange_explicit(&s->held, 1, memory_order_acquire)) sched_yield();
}

/* (klua_wait.c's joins and group waits, not used here) */
void klua_group_unnotify(klua_group_t *g, klua_task_t *t) {
  (void)g;
  (void)t;
}

int klua_task_outcome(const klua_task_t *t) {
  (void)t;
  return KLUA_RUNNING;
}

static fake_t *fake_new(uint64_t id) {
  fake_t *f = calloc(1, sizeof *f);
  ASSERT(f != NULL);
  f->t.id = id;
  f->node.task = &f->t;
  f->t.w = &f->node;
  return f;
}

/* Until the task is woken (a wake-up is a hint: the caller looks again). */
static void park(fake_t *f) {
  while (!atomic_exchange_explicit(&f->woken, 0, memory_order_acquire)) sched_yield();
}

static void send_u32(klua_sync_t *s, fake_t *f, uint32_t x) {
  klua_val_t v = {KLUA_VAL_INLINE, (const char *)&x, sizeof x};
  int st;
  while ((st = klua_chan_try_send(s, &f->t, &v, NULL)) == KLUA_SYNC_WAIT) park(f);
  ASSERT_EQ(KLUA_SYNC_DONE, st);
}

static uint32_t u32_of(klua_val_t *v) {
  uint32_t x = 0;
  ASSERT_EQ(sizeof x, v->len);
  memcpy(&x, v->p, sizeof x);
  klua_val_free(v);
  return x;
}

/* ------------------------------------------------------------ one task */

TEST(recv_any_takes_from_whichever_has_a_value) {
  fake_t *f = fake_new(1), *s = fake_new(2); /* a receiver, a sender */
  klua_sync_t *chs[3] = {klua_chan_new(2), klua_chan_new(0), klua_chan_new(2)};
  klua_val_t out;
  uint32_t which = 9;
  send_u32(chs[2], s, 7);
  ASSERT_EQ(KLUA_SYNC_DONE, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  ASSERT_EQ(2, which);
  ASSERT_EQ(7, u32_of(&out));
  /* nothing anywhere: the task waits, a node on every channel */
  ASSERT_EQ(KLUA_SYNC_WAIT, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  send_u32(chs[0], s, 8);
  park(f); /* the sender woke the task through its node on chs[0] */
  ASSERT_EQ(KLUA_SYNC_DONE, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  ASSERT_EQ(0, which);
  ASSERT_EQ(8, u32_of(&out));
  /* closed and drained channels are passed over; all of them: CLOSED */
  send_u32(chs[2], s, 9);
  klua_chan_close(chs[0]);
  klua_chan_close(chs[2]);
  ASSERT_EQ(KLUA_SYNC_DONE, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  ASSERT_EQ(2, which);
  ASSERT_EQ(9, u32_of(&out));
  ASSERT_EQ(KLUA_SYNC_WAIT, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  klua_chan_close(chs[1]);
  park(f);
  ASSERT_EQ(KLUA_SYNC_CLOSED, klua_chan_try_recv_any(chs, 3, &f->t, &out, &which, NULL));
  for (int i = 0; i < 3; i++) klua_sync_release(chs[i]);
  free(f);
  free(s);
}

TEST(recv_any_cancelled_takes_nothing) {
  fake_t *f = fake_new(1), *s = fake_new(2); /* a receiver, a sender */
  knhk_token_t *tok;
  ASSERT_EQ(0, knhk_token_new(&tok, NULL));
  klua_sync_t *chs[2] = {klua_chan_new(1), klua_chan_new(0)};
  klua_val_t out;
  uint32_t which;
  ASSERT_EQ(KLUA_SYNC_WAIT, klua_chan_try_recv_any(chs, 2, &f->t, &out, &which, tok));
  knhk_token_cancel(tok, 1);
  park(f); /* the cancellation woke it */
  send_u32(chs[0], s, 5);
  ASSERT_EQ(KLUA_SYNC_CANCELLED, klua_chan_try_recv_any(chs, 2, &f->t, &out, &which, tok));
  ASSERT_EQ(1, klua_chan_count(chs[0])); /* still there */
  ASSERT_EQ(KLUA_SYNC_DONE, klua_chan_try_recv_any(chs, 2, &f->t, &out, &which, NULL));
  ASSERT_EQ(5, u32_of(&out));
  knhk_token_release(tok);
  for (int i = 0; i < 2; i++) klua_sync_release(chs[i]);
  free(f);
  free(s);
}

/* A rendezvous sender that hands its value to a waiting select completes
 * the receive even if the receiver is cancelled before it looks again. */
TEST(recv_any_keeps_a_hand_off_made_as_it_was_cancelled) {
  fake_t *r = fake_new(1), *s = fake_new(2);
  knhk_token_t *tok;
  ASSERT_EQ(0, knhk_token_new(&tok, NULL));
  klua_sync_t *chs[2] = {klua_chan_new(0), klua_chan_new(4)};
  klua_val_t out;
  uint32_t which;
  ASSERT_EQ(KLUA_SYNC_WAIT, klua_chan_try_recv_any(chs, 2, &r->t, &out, &which, tok));
  send_u32(chs[0], s, 11); /* handed over: the send is done */
  knhk_token_cancel(tok, 1);
  ASSERT_EQ(KLUA_SYNC_DONE, klua_chan_try_recv_any(chs, 2, &r->t, &out, &which, tok));
  ASSERT_EQ(0, which);
  ASSERT_EQ(11, u32_of(&out));
  knhk_token_release(tok);
  for (int i = 0; i < 2; i++) klua_sync_release(chs[i]);
  free(r);
  free(s);
}

/* ------------------------------------------------------- many threads */

enum { NCH = 4, NRECV = 3, PER = 20000 };

typedef struct {
  klua_sync_t *chs[NCH];
  _Atomic int seen[NCH * PER];
  _Atomic int wrong;
  int cancel; /* receivers cancel themselves at random while they wait */
} world_t;

/* A thread's task record outlives the thread, as a runtime's records do
 * (type-stable): a wake-up may still come after its task is done. */
typedef struct {
  world_t *w;
  int index;
  fake_t *f;
} arg_t;

static void *sender(void *p) {
  arg_t *a = p;
  fake_t *f = a->f;
  for (uint32_t i = 0; i < PER; i++) send_u32(a->w->chs[a->index], f, (uint32_t)a->index * PER + i);
  klua_chan_close(a->w->chs[a->index]);
  return NULL;
}

static void *receiver(void *p) {
  arg_t *a = p;
  world_t *w = a->w;
  fake_t *f = a->f;
  uint32_t seed = 2654435761u * (uint32_t)(a->index + 1);
  knhk_token_t *tok = NULL;
  for (;;) {
    if (w->cancel && !tok) ASSERT_EQ(0, knhk_token_new(&tok, NULL));
    klua_val_t out;
    uint32_t which;
    int st = klua_chan_try_recv_any(w->chs, NCH, &f->t, &out, &which, tok);
    if (st == KLUA_SYNC_WAIT) {
      seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
      if (tok && seed % 3 == 0) knhk_token_cancel(tok, 1); /* a deadline, say */
      park(f);
      continue;
    }
    if (st == KLUA_SYNC_CANCELLED) { /* a fresh scope: the next receive */
      knhk_token_release(tok);
      tok = NULL;
      continue;
    }
    if (st == KLUA_SYNC_CLOSED) break;
    ASSERT_EQ(KLUA_SYNC_DONE, st);
    uint32_t x = u32_of(&out);
    if (x / PER != which) atomic_fetch_add(&w->wrong, 1);
    atomic_fetch_add(&w->seen[x], 1);
  }
  if (tok) knhk_token_release(tok);
  return NULL;
}

static void many_threads(int cancel) {
  world_t *w = calloc(1, sizeof *w);
  ASSERT(w != NULL);
  w->cancel = cancel;
  for (int i = 0; i < NCH; i++) w->chs[i] = klua_chan_new(i % 2 ? (uint32_t)i : 0); /* 0, 1, 0, 3 */
  pthread_t th[NCH + NRECV];
  arg_t args[NCH + NRECV];
  for (int i = 0; i < NRECV; i++) {
    args[i] = (arg_t){w, i, fake_new(200 + (uint64_t)i)};
    ASSERT_EQ(0, pthread_create(&th[i], NULL, receiver, &args[i]));
  }
  for (int i = 0; i < NCH; i++) {
    args[NRECV + i] = (arg_t){w, i, fake_new(100 + (uint64_t)i)};
    ASSERT_EQ(0, pthread_create(&th[NRECV + i], NULL, sender, &args[NRECV + i]));
  }
  for (int i = 0; i < NCH + NRECV; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < NCH + NRECV; i++) free(args[i].f);
  ASSERT_EQ(0, atomic_load(&w->wrong));
  for (int x = 0; x < NCH * PER; x++) {
    if (atomic_load(&w->seen[x]) != 1) KNHK_FAIL("value %d received %d times", x, atomic_load(&w->seen[x]));
  }
  for (int i = 0; i < NCH; i++) klua_sync_release(w->chs[i]);
  free(w);
}

TEST(recv_any_threads_take_each_value_once) { many_threads(0); }

TEST(recv_any_threads_cancelled_lose_nothing) { many_threads(1); }
