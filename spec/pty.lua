-- spec/pty.lua: drives a program through a pseudo-terminal, for the REPL
-- specs. pty.spawn(argv) -> p; p:send(text); p:expect(pattern[, seconds])
-- waits until the output (since the last expect) matches; p:signal(sig);
-- p:wait() -> exit code; p:kill() ends it (for a spec's finally).
local ffi = require "ffi"

ffi.cdef [[
int posix_openpt(int flags);
int grantpt(int fd);
int unlockpt(int fd);
char *ptsname(int fd);
int fork(void);
int setsid(void);
int open(const char *path, int flags, ...);
int dup2(int a, int b);
int close(int fd);
int execv(const char *path, char *const argv[]);
void _exit(int code);
long read(int fd, void *buf, size_t n);
long write(int fd, const void *buf, size_t n);
struct pollfd { int fd; short events; short revents; };
int poll(struct pollfd *fds, unsigned long n, int timeout);
int waitpid(int pid, int *status, int options);
int kill(int pid, int sig);
int ioctl(int fd, unsigned long req, ...);
int setenv(const char *name, const char *value, int overwrite);
struct pty_termios { unsigned c_iflag, c_oflag, c_cflag, c_lflag; unsigned char c_line;
                     unsigned char c_cc[32]; unsigned c_ispeed, c_ospeed; };
int tcgetattr(int fd, struct pty_termios *t);
]]
local C = ffi.C
local O_RDWR, O_NOCTTY, TIOCSCTTY = 2, 256, 0x540E

local P = {}
P.__index = P

function P.spawn(argv, env)
  local master = C.posix_openpt(O_RDWR + O_NOCTTY)
  assert(master >= 0 and C.grantpt(master) == 0 and C.unlockpt(master) == 0, "no pty")
  local slave_name = ffi.string(C.ptsname(master))
  local cargv = ffi.new("char*[?]", #argv + 1)
  local keep = {}
  for i, a in ipairs(argv) do
    keep[i] = ffi.new("char[?]", #a + 1, a)
    cargv[i - 1] = keep[i]
  end
  local pid = C.fork()
  if pid == 0 then -- the child: a new session with the pty as terminal
    C.setsid()
    local s = C.open(slave_name, O_RDWR)
    C.ioctl(s, TIOCSCTTY, 0)
    C.dup2(s, 0); C.dup2(s, 1); C.dup2(s, 2)
    for k, v in pairs(env or {}) do C.setenv(k, v, 1) end
    C.execv(argv[1], cargv)
    C._exit(127)
  end
  return setmetatable({ fd = master, pid = pid, out = "", all = "" }, P)
end

function P:send(text)
  C.write(self.fd, text, #text)
end

local buf = ffi.new("char[4096]")
local pfd = ffi.new("struct pollfd[1]")

-- Reads what is there within `ms` milliseconds; false at end of output.
function P:pump(ms)
  pfd[0].fd, pfd[0].events = self.fd, 1
  if C.poll(pfd, 1, ms) <= 0 then return true end
  local n = C.read(self.fd, buf, 4096)
  if n <= 0 then return false end
  local s = ffi.string(buf, n)
  self.out = self.out .. s
  self.all = self.all .. s
  return true
end

function P:expect(pattern, seconds)
  local deadline = os.time() + (seconds or 10)
  while true do
    local a, b = self.out:find(pattern)
    if a then
      local seen = self.out:sub(1, b)
      self.out = self.out:sub(b + 1)
      return seen
    end
    if os.time() > deadline or not self:pump(100) then
      error(string.format("expected %q, got so far:\n%s", pattern, self.all), 2)
    end
  end
end

function P:signal(sig) C.kill(self.pid, sig) end

-- Waits until the program reads the terminal character by character (line
-- editing on). libedit prints its prompt before it leaves canonical mode:
-- a Ctrl-D typed in between is taken by the kernel's line discipline, so a
-- test must not send one before this returns.
local tio = ffi.new("struct pty_termios")
local ICANON = 2
function P:wait_raw(seconds)
  local deadline = os.time() + (seconds or 10)
  while true do
    if C.tcgetattr(self.fd, tio) == 0 and bit.band(tio.c_lflag, ICANON) == 0 then return end
    if os.time() > deadline then error("the terminal never left canonical mode", 2) end
    self:pump(5)
  end
end

-- Ends the program if it is still running (for a spec's finally: a spec
-- that failed half-way must not leave it behind).
function P:kill()
  if self.reaped then return end
  C.kill(self.pid, 9)
  C.waitpid(self.pid, nil, 0)
  self.reaped = true
  C.close(self.fd)
end

-- Waits for the exit; returns the exit code (or 128 + signal).
function P:wait(seconds)
  local deadline = os.time() + (seconds or 10)
  local status = ffi.new("int[1]")
  while true do
    self:pump(50)
    local r = C.waitpid(self.pid, status, 1) -- WNOHANG
    if r == self.pid then
      self.reaped = true
      -- what it wrote before exiting may still be in the terminal: read it all
      for _ = 1, 100 do
        local before = #self.all
        if not self:pump(20) or #self.all == before then break end
      end
      C.close(self.fd)
      local s = status[0]
      if bit.band(s, 0x7f) == 0 then return bit.rshift(bit.band(s, 0xff00), 8) end
      return 128 + bit.band(s, 0x7f)
    end
    if os.time() > deadline then
      C.kill(self.pid, 9)
      error("the program did not exit; output:\n" .. self.all, 2)
    end
  end
end

return P
