/* knhk-lua: runs a workflow script (or the REPL) on the knhk runtime.
 *
 * This file only embeds LuaJIT and finds the knhk modules. An installed
 * knhk-lua looks next to itself (../share/lua/5.1, ../lib/lua/5.1, the
 * layout of `cmake --install` and of a luarocks tree) and nowhere else for
 * knhk; the binary in the build tree looks in the source and build trees it
 * was built from instead. Either way LUA_PATH / LUA_CPATH and the usual
 * places follow, for the script's own modules. knhk's own modules come
 * precompiled (knhk_modules.c) when the file found is the one compiled.
 * Everything else (options,
 * running the script as the root task, exit codes, the REPL) is knhk.cli
 * (Lua).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knhk_modules.h"

static void prepend(lua_State *L, const char *field, const char *dirs) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, field);
  lua_pushfstring(L, "%s;%s", dirs, lua_tostring(L, -1));
  lua_setfield(L, -3, field);
  lua_pop(L, 2);
}

/* 1 if `dir` (a real path) is the build tree's directory of this
 * executable. The same text is the same real path; else only a directory
 * with the same inode can have it: realpath, a readlink per component,
 * runs only then. */
static int in_build_tree(const char *dir) {
  if (strcmp(dir, KNHK_BUILD_CLI_DIR) == 0) return 1;
  struct stat a, b;
  if (stat(KNHK_BUILD_CLI_DIR, &a) != 0 || stat(dir, &b) != 0) return 0;
  if (a.st_ino != b.st_ino || a.st_dev != b.st_dev) return 0;
  char built[PATH_MAX];
  return realpath(KNHK_BUILD_CLI_DIR, built) != NULL && strcmp(built, dir) == 0;
}

static void set_paths(lua_State *L) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  char *slash = n > 0 ? (exe[n] = 0, strrchr(exe, '/')) : NULL;
  if (slash) *slash = 0; /* exe: the directory the executable is in */
  char buf[4 * PATH_MAX + 256];
  if (!slash || in_build_tree(exe)) {
    snprintf(buf, sizeof buf, "%s/?.lua;%s/?/init.lua", KNHK_SRC_LUA_DIR, KNHK_SRC_LUA_DIR);
    prepend(L, "path", buf);
    snprintf(buf, sizeof buf, "%s/?.so", KNHK_BUILD_LUA_DIR);
    prepend(L, "cpath", buf);
    return;
  }
  snprintf(buf, sizeof buf, "%s/../share/lua/5.1/?.lua;%s/../share/lua/5.1/?/init.lua", exe, exe);
  prepend(L, "path", buf);
  snprintf(buf, sizeof buf, "%s/../lib/lua/5.1/?.so", exe);
  prepend(L, "cpath", buf);
}

/* ------------------------------------------------ precompiled modules
 *
 * Parsing knhk's modules was most of knhk-lua's start-up; loading their
 * bytecode costs a tenth of it. A searcher placed before Lua's own does for
 * knhk's modules what Lua's does (the file package.path finds, loaded as
 * "@file"), but loads the bytecode compiled from that file's text by the
 * build, when the text is exactly that: an edited module, or another file
 * found under the same name, is left to Lua's searcher and parsed. */

static const knhk_module_t *find_module(const char *name) {
  int lo = 0, hi = knhk_modules_count - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    int c = strcmp(name, knhk_modules[mid].name);
    if (c == 0) return &knhk_modules[mid];
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  return NULL;
}

/* The file Lua's searcher would load for `name` (as package.searchpath:
 * the first template of `path`, '?' replaced by the name with its dots
 * made slashes, that can be opened for reading), opened, its name in
 * `file`; -1 if there is none, or if a name does not fit: Lua's searcher
 * says which. */
static int open_module_file(const char *name, const char *path, char *file, size_t size) {
  char sub[PATH_MAX];
  size_t nlen = strlen(name);
  if (nlen >= sizeof sub) return -1;
  for (size_t i = 0; i <= nlen; i++) sub[i] = name[i] == '.' ? '/' : name[i];
  for (const char *t = path; *t;) {
    if (*t == ';') {
      t++;
      continue;
    }
    const char *end = strchr(t, ';');
    if (!end) end = t + strlen(t);
    size_t at = 0;
    for (const char *c = t; c < end; c++) {
      const char *piece = *c == '?' ? sub : c;
      size_t len = *c == '?' ? nlen : 1;
      if (at + len >= size) return -1;
      memcpy(file + at, piece, len);
      at += len;
    }
    file[at] = 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) return fd;
    t = end;
  }
  return -1;
}

/* 1 if the file `fd` holds exactly the `len` bytes of `text`: its size
 * first, then its bytes, read at once. */
static int file_is(int fd, const unsigned char *text, size_t len) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size != len) return 0;
  char *buf = malloc(len + 1);
  if (!buf) return 0;
  size_t at = 0;
  ssize_t n = -1;
  while (at <= len && (n = read(fd, buf + at, len + 1 - at)) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    at += (size_t)n;
  }
  int same = n == 0 && at == len && memcmp(buf, text, len) == 0;
  free(buf);
  return same;
}

/* The dump, with the chunk name the file's own load would give it: the
 * name is in the dump, so error messages, tracebacks and debug.getinfo
 * say the file's path as before. */
static int load_module(lua_State *L, const knhk_module_t *m, const char *path) {
  size_t plen = strlen(path), nlen = plen + 1; /* "@" path */
  unsigned char uleb[10]; /* the name's length, as a uleb128 */
  size_t ulen = 0, v = nlen;
  do {
    uleb[ulen++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v > 0);
  size_t len = m->head_len + ulen + nlen + m->body_len;
  char *dump = malloc(len);
  if (!dump) return -1;
  char *p = dump;
  memcpy(p, m->head, m->head_len), p += m->head_len;
  memcpy(p, uleb, ulen), p += ulen;
  *p++ = '@';
  memcpy(p, path, plen), p += plen;
  memcpy(p, m->body, m->body_len);
  int rc = luaL_loadbuffer(L, dump, len, path);
  free(dump);
  return rc;
}

/* package.loaders entry; upvalue 1 is the package table (whose `path`
 * Lua's searcher reads, whatever a script does to the globals). Returns
 * the module's chunk, or nothing: then Lua's searcher looks, and says what
 * it tried if it finds nothing either. One open of the file, where
 * package.searchpath and a load would have opened it twice. */
static int precompiled_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const knhk_module_t *m = find_module(name);
  if (!m) return 0;
  lua_getfield(L, lua_upvalueindex(1), "path");
  if (!lua_isstring(L, -1)) return 0; /* Lua's searcher raises the error */
  char file[PATH_MAX];
  int fd = open_module_file(name, lua_tostring(L, -1), file, sizeof file);
  if (fd < 0) return 0;
  int same = file_is(fd, m->src, m->src_len);
  close(fd);
  if (!same || load_module(L, m, file) != 0) return 0; /* edited, or another LuaJIT: parse it */
  return 1;
}

/* loadfile for the files knhk loads by path (the telemetry registry's
 * names, next to knhk/core.so): the bytecode compiled from a file of that
 * name, when the file at `path` holds exactly its text, loaded as
 * loadfile(path) would name it; anything else goes to loadfile (upvalue 1,
 * Lua's own), which says what it says. knhk.telemetry finds it in the
 * registry as "knhk.loadfile"; plain luajit has none. */
static int precompiled_loadfile(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *base = strrchr(path, '/');
  char name[NAME_MAX + 2];
  if (snprintf(name, sizeof name, "@%s", base ? base + 1 : path) < (int)sizeof name) {
    const knhk_module_t *m = find_module(name);
    int fd = m ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd >= 0) {
      int same = file_is(fd, m->src, m->src_len);
      close(fd);
      if (same && load_module(L, m, path) == 0) return 1;
    }
  }
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Puts the searcher second in package.loaders, after package.preload's,
 * when this LuaJIT is the one that compiled the modules (and registers
 * precompiled_loadfile then). */
static void add_searcher(lua_State *L) {
  lua_getglobal(L, "jit");
  lua_getfield(L, -1, "version");
  int same = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), knhk_modules_jit_version) == 0;
  lua_pop(L, 2);
  if (!same) return;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaders");
  int n = (int)lua_objlen(L, -1);
  for (int i = n; i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, precompiled_searcher, 1);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  lua_getglobal(L, "loadfile");
  lua_pushcclosure(L, precompiled_loadfile, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "knhk.loadfile");
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "knhk-lua: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  /* No collection while the libraries and knhk's modules load, as luajit
   * does for its libraries: what they allocate stays, and the cycles the
   * growing heap set off were ~4 % of the start. From there on the
   * collector runs as usual (-1: its next cycle when the heap has grown by
   * its pause, as after a cycle). */
  lua_gc(L, LUA_GCSTOP, 0);
  luaL_openlibs(L);
  set_paths(L);
  add_searcher(L);
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "knhk.cli");
  int rc = lua_pcall(L, 1, 1, -3);
  lua_gc(L, LUA_GCRESTART, -1);
  if (rc != 0) {
    fprintf(stderr, "knhk-lua: cannot load the knhk Lua modules: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  if (lua_pcall(L, 1, 1, 1) != 0) {
    fprintf(stderr, "knhk-lua: internal error: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  int code = (int)lua_tointeger(L, -1);
  fflush(stdout);
  /* Exit without lua_close: worker VMs and threads are gone already. */
  _exit(code);
}
