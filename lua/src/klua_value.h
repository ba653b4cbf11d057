/* klua_value.h: inline values (klua_value.c) and the handles among them
 * (klua_core.c knows the userdata each kind of handle is). */
#ifndef KLUA_VALUE_H
#define KLUA_VALUE_H

#include <lua.h>
#include <stdint.h>

enum {
  KLUA_V_NIL = 0, KLUA_V_FALSE = 1, KLUA_V_TRUE = 2, KLUA_V_NUMBER = 3,
  KLUA_V_STRING = 4, KLUA_V_SELF = 5, KLUA_V_HANDLE = 6, KLUA_V_NAMED = 7
};

/* Kinds of handle (0: not a handle). */
enum {
  KLUA_H_TASK = 1, KLUA_H_CHANNEL = 2, KLUA_H_SEMAPHORE = 3, KLUA_H_LOCK = 4,
  KLUA_H_EVENT = 5, KLUA_H_TOKEN = 6, KLUA_H_NURSERY = 7, KLUA_H_KINDS = 8
};

/* Total bytes values [first, first+n) need inline, or -1 if one of them
 * cannot go (a table, a function other than `self`, ...). */
int64_t klua_values_size(lua_State *L, int first, int n, const void *self);
/* Writes them (the size measured above); takes a reference on handles. */
void klua_values_encode(lua_State *L, int first, int n, char *out, const void *self);
/* The common case of both, in one pass: values [first, first+n) that are
 * only nils, booleans, numbers and strings, written at out if they fit in
 * cap bytes; the bytes written, or -1 (then out holds nothing of use, and
 * the caller measures and writes them the general way). */
int klua_values_encode_plain(lua_State *L, int first, int n, char *out, int cap);
/* Writes a handle value at p (the reference to obj it carries is the
 * caller's to give); returns past it. */
char *klua_value_put_handle(char *p, int kind, void *obj);
/* Pushes n values; `self`: stack index of the function "self" stands for. */
int klua_values_push(lua_State *L, const char *buf, int n, int self);
/* The same, leaving the buffer its references (values read more than once:
 * a task's results, which every join pushes). */
int klua_values_push_copies(lua_State *L, const char *buf, int n);
/* Drops the handles' references of n values that will never be pushed. */
void klua_values_drop(const char *buf, int n);
void klua_values_drop_len(const char *buf, uint32_t len);
/* foreign_only: only the handles whose objects outlive a run (not tasks,
 * nurseries: a run's end frees those with their slabs). */
void klua_values_drop_kinds(const char *buf, uint32_t len, int foreign_only);
/* Whether n values are only nils, booleans and numbers: pushing them
 * allocates nothing (so cannot raise). */
int klua_values_plain(const char *buf, int n);
/* Past n values. */
const char *klua_values_skip(const char *buf, int n);

/* klua_core.c */
int klua_handle_kind(lua_State *L, int idx);           /* KLUA_H_*, or 0 */
void *klua_handle_export(lua_State *L, int idx);       /* retains; the object */
int klua_handle_unfit(lua_State *L, int idx, int kind); /* a closed nursery: not inline */
void klua_handle_push(lua_State *L, int kind, void *p); /* takes the reference */
void klua_handle_drop(int kind, void *p);
void klua_handle_retain(int kind, void *p);
uint32_t klua_named_id(lua_State *L, int idx);          /* its id, or 0: not named */
void klua_named_push(lua_State *L, uint32_t id);        /* the value id names here */

#endif
