/* klua_value.c: the values a task's record carries inline, without the
 * general codec: nil, booleans, numbers (the 8 bytes of the double, so
 * -0.0 and NaN stay what they are), strings, and knhk handles (a reference
 * taken, travelling as a pointer). A task's start (its function's upvalues
 * and its arguments) and its results use this form whenever every value
 * is one of these; anything else goes through knhk.codec.
 *
 *   value := tag:u8 payload     nil 0 | false 1 | true 2 | number 3 f64 |
 *            string 4 len:u32 bytes | self 5 | handle 6 kind:u8 ptr:u64 |
 *            named 7 id:u32
 * ("self": an upvalue that is the task's function itself, as a recursive
 * local function's is. "named": a builtin or a module, or a function of
 * one, that the snapshot codec has met before and registered under an id
 * of the runtime's registry: the receiving VM resolves the name.)
 */
#include <lauxlib.h>
#include <string.h>

#include "klua.h"
#include "klua_value.h"

/* Bytes value i needs, or -1 if it cannot go inline. */
static int value_size(lua_State *L, int i, void *self) {
  switch (lua_type(L, i)) {
  case LUA_TNIL:
  case LUA_TBOOLEAN: return 1;
  case LUA_TNUMBER: return 9;
  case LUA_TSTRING: {
    size_t n;
    lua_tolstring(L, i, &n);
    return n > 0x7fffffff ? -1 : (int)(5 + n);
  }
  case LUA_TFUNCTION:
    if (self && lua_topointer(L, i) == self) return 1;
    return klua_named_id(L, i) ? 5 : -1;
  case LUA_TTABLE:
    return klua_named_id(L, i) ? 5 : -1;
  case LUA_TUSERDATA: {
    int kind = klua_handle_kind(L, i);
    return kind > 0 && !klua_handle_unfit(L, i, kind) ? 10 : -1;
  }
  default: return -1;
  }
}

int64_t klua_values_size(lua_State *L, int first, int n, const void *self) {
  int64_t total = 0;
  for (int i = first; i < first + n; i++) {
    int s = value_size(L, i, (void *)self);
    if (s < 0) return -1;
    total += s;
  }
  return total;
}

/* A number's and a string's encodings at p; past them. */
static char *put_number(char *p, double d) {
  *p++ = KLUA_V_NUMBER;
  memcpy(p, &d, 8);
  return p + 8;
}

static char *put_string(char *p, const char *s, size_t len) {
  uint32_t l32 = (uint32_t)len;
  *p++ = KLUA_V_STRING;
  memcpy(p, &l32, 4);
  memcpy(p + 4, s, len);
  return p + 4 + len;
}

int klua_values_encode_plain(lua_State *L, int first, int n, char *out, int cap) {
  char *p = out, *end = out + cap;
  for (int i = first; i < first + n; i++) {
    switch (lua_type(L, i)) {
    case LUA_TNIL:
      if (p == end) return -1;
      *p++ = KLUA_V_NIL;
      break;
    case LUA_TBOOLEAN:
      if (p == end) return -1;
      *p++ = lua_toboolean(L, i) ? KLUA_V_TRUE : KLUA_V_FALSE;
      break;
    case LUA_TNUMBER:
      if (end - p < 9) return -1;
      p = put_number(p, lua_tonumber(L, i));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      if ((size_t)(end - p) < 5 || len > (size_t)(end - p) - 5) return -1;
      p = put_string(p, s, len);
      break;
    }
    default: return -1;
    }
  }
  return (int)(p - out);
}

char *klua_value_put_handle(char *p, int kind, void *obj) {
  uint64_t u = (uint64_t)(uintptr_t)obj;
  *p++ = KLUA_V_HANDLE;
  *p++ = (char)kind;
  memcpy(p, &u, 8);
  return p + 8;
}

/* Encodes what klua_values_size measured; takes a reference on handles. */
void klua_values_encode(lua_State *L, int first, int n, char *out, const void *self) {
  char *p = out;
  for (int i = first; i < first + n; i++) {
    switch (lua_type(L, i)) {
    case LUA_TNIL: *p++ = KLUA_V_NIL; break;
    case LUA_TBOOLEAN: *p++ = lua_toboolean(L, i) ? KLUA_V_TRUE : KLUA_V_FALSE; break;
    case LUA_TNUMBER: p = put_number(p, lua_tonumber(L, i)); break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      p = put_string(p, s, len);
      break;
    }
    case LUA_TFUNCTION:
      if (self && lua_topointer(L, i) == self) {
        *p++ = KLUA_V_SELF;
        break;
      }
      /* a named function */
      __attribute__((fallthrough));
    case LUA_TTABLE: {
      uint32_t id = klua_named_id(L, i);
      *p++ = KLUA_V_NAMED;
      memcpy(p, &id, 4);
      p += 4;
      break;
    }
    default: { /* a handle (value_size said so) */
      int kind = klua_handle_kind(L, i);
      p = klua_value_put_handle(p, kind, klua_handle_export(L, i));
      break;
    }
    }
  }
}

/* Pushes the n values at buf (self: the stack index of the function that
 * "self" means, or 0). Handles become userdata that own the reference;
 * with `copy`, a reference of their own (the buffer keeps its own). */
static int push_values(lua_State *L, const char *buf, int n, int self, int copy) {
  const char *p = buf;
  for (int i = 0; i < n; i++) {
    switch (*p++) {
    case KLUA_V_NIL: lua_pushnil(L); break;
    case KLUA_V_FALSE: lua_pushboolean(L, 0); break;
    case KLUA_V_TRUE: lua_pushboolean(L, 1); break;
    case KLUA_V_NUMBER: {
      double d;
      memcpy(&d, p, 8);
      p += 8;
      lua_pushnumber(L, d);
      break;
    }
    case KLUA_V_STRING: {
      uint32_t len;
      memcpy(&len, p, 4);
      lua_pushlstring(L, p + 4, len);
      p += 4 + len;
      break;
    }
    case KLUA_V_SELF:
      if (self) lua_pushvalue(L, self);
      else lua_pushnil(L);
      break;
    case KLUA_V_HANDLE: {
      int kind = (unsigned char)*p++;
      uint64_t u;
      memcpy(&u, p, 8);
      p += 8;
      if (copy) klua_handle_retain(kind, (void *)(uintptr_t)u);
      klua_handle_push(L, kind, (void *)(uintptr_t)u);
      break;
    }
    case KLUA_V_NAMED: {
      uint32_t id;
      memcpy(&id, p, 4);
      p += 4;
      klua_named_push(L, id);
      break;
    }
    default: luaL_error(L, "knhk: corrupt inline values"); return i;
    }
  }
  return n;
}

int klua_values_push(lua_State *L, const char *buf, int n, int self) {
  return push_values(L, buf, n, self, 0);
}

int klua_values_push_copies(lua_State *L, const char *buf, int n) {
  return push_values(L, buf, n, 0, 1);
}

/* Past one value at p; drops its reference if it is a handle and `drop`
 * (2: only if its object outlives the run: not a task or a nursery). */
static const char *skip_value(const char *p, int drop) {
  switch (*p++) {
  case KLUA_V_NUMBER: return p + 8;
  case KLUA_V_NAMED: return p + 4;
  case KLUA_V_STRING: {
    uint32_t len;
    memcpy(&len, p, 4);
    return p + 4 + len;
  }
  case KLUA_V_HANDLE: {
    int kind = (unsigned char)*p++;
    uint64_t u;
    memcpy(&u, p, 8);
    if (drop == 1 || (drop == 2 && kind != KLUA_H_TASK && kind != KLUA_H_NURSERY))
      klua_handle_drop(kind, (void *)(uintptr_t)u);
    return p + 8;
  }
  default: return p;
  }
}

int klua_values_plain(const char *buf, int n) {
  for (int i = 0; i < n; i++) {
    switch (*buf) {
    case KLUA_V_NIL:
    case KLUA_V_FALSE:
    case KLUA_V_TRUE: buf++; break;
    case KLUA_V_NUMBER: buf += 9; break;
    default: return 0;
    }
  }
  return 1;
}

const char *klua_values_skip(const char *buf, int n) {
  for (int i = 0; i < n; i++) buf = skip_value(buf, 0);
  return buf;
}

/* Drops the references the handles in n values hold (values never pushed). */
void klua_values_drop(const char *buf, int n) {
  for (int i = 0; i < n; i++) buf = skip_value(buf, 1);
}

/* The same for every value in len bytes. */
void klua_values_drop_len(const char *buf, uint32_t len) { klua_values_drop_kinds(buf, len, 0); }

void klua_values_drop_kinds(const char *buf, uint32_t len, int foreign_only) {
  const char *end = buf + len;
  while (buf < end) buf = skip_value(buf, foreign_only ? 2 : 1);
}
