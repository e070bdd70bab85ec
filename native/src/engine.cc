// The native session engine (docs/engine.md): accepts, holds, detects early talk, connects upstream, checks greetings, relays.
//
// Every decision stays in TypeScript; this file only does I/O and reports a few events per
// session, in batches, to one JS callback. It runs on the thread of the Node environment that
// started it: one epoll fd watched by a uv_poll_t on that environment's loop, one uv_timer_t for
// every deadline. No locks, no threads.
//
// Ownership: the engine owns every fd it accepted, every upstream fd it created and every
// listener fd handed to engineListen. Each Conn closes its fds exactly once, in Kill(); a killed
// Conn leaves the id map at once (so stale epoll events and deadlines find nothing) but its
// memory lives on in the graveyard until the current uv callback or command returns, so no
// handler ever touches freed memory. engineRelease is the only way an fd leaves the engine.
//
// State: per Node environment (main thread or worker), in the addon's instance data. The engine
// object itself is freed only when libuv has closed its handles.

#include "addon.h"
#include "common.h"

#include <napi.h>
#include <uv.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace etd {
namespace {

// ---------------------------------------------------------------------------------------------
// Constants

constexpr uint64_t kListenerTag = 1ull << 63;  // epoll data of listener fds; connection tags are id << 1 | side
constexpr int kClient = 0;
constexpr int kServer = 1;
constexpr size_t kEvidenceRead = 128;   // early talk costs at most this much reading per wakeup
constexpr size_t kEvidenceMax = 100;    // bytes of it reported as evidence
constexpr size_t kGreetingMax = 4096;   // a greeting without an end after this much counts as complete
constexpr size_t kRelayBuffer = 65536;  // the one read buffer
constexpr uint32_t kReplyLingerMs = 5000;
constexpr uint32_t kServerGoneLingerMs = 10000;
constexpr uint32_t kAcceptPauseMs = 100;
constexpr int kAcceptBurst = 256;
constexpr int kEpollBatch = 256;
constexpr double kMaxId = 9007199254740991.0;  // 2^53 - 1: every id is exact as a JS number
constexpr double kMaxMs = 2147483647.0;

enum EventType : uint8_t {
  EV_ACCEPT = 1,
  EV_TALK = 2,
  EV_GONE = 3,
  EV_EXPIRED = 4,
  EV_UPSTREAM_FAILED = 5,
  EV_GREETING = 6,
  EV_END = 7,
  EV_ERROR = 8,
};

double NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

std::string Lower(const char* s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

// Writes as much of [p, p+n) as the socket takes now, without blocking and without SIGPIPE.
// Returns the bytes written (fewer than n when the socket is full), or -errno on a failure.
ssize_t SendSome(int fd, const char* p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = send(fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      done += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return w < 0 ? -errno : -EIO;
  }
  return static_cast<ssize_t>(done);
}

// Frees a string's heap block: an idle session holds no buffer memory.
void FreeString(std::string* s) { std::string().swap(*s); }

// ---------------------------------------------------------------------------------------------
// PIPECONNECT guard: a line-for-line port of src/proxy/smtpFilter.ts (keep the two in step).

constexpr size_t kMaxLine = 4096;

bool IsKeywordLine(const char* p, size_t n) {
  // /^250[- ](?:PIPECONNECT|X_PIPE_CONNECT)(?:[ \t\r\n]|$)/i on the line's first 24 bytes.
  size_t h = std::min<size_t>(n, 24);
  if (h < 4 || p[0] != '2' || p[1] != '5' || p[2] != '0' || (p[3] != ' ' && p[3] != '-')) return false;
  for (const char* kw : {"PIPECONNECT", "X_PIPE_CONNECT"}) {
    size_t k = strlen(kw);
    if (4 + k > h || strncasecmp(p + 4, kw, k) != 0) continue;
    if (4 + k == h) return true;
    char c = p[4 + k];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') return true;
  }
  return false;
}

bool IsStopCommand(const std::string& s) {
  // /^(?:DATA|BDAT|STARTTLS)[ \t\r\n]/i
  for (const char* kw : {"DATA", "BDAT", "STARTTLS"}) {
    size_t k = strlen(kw);
    if (s.size() <= k || strncasecmp(s.data(), kw, k) != 0) continue;
    char c = s[k];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') return true;
  }
  return false;
}

// Server → client: drops the keyword lines while active (PipeconnectStripper).
class Stripper {
 public:
  bool active() const { return active_; }

  // Appends the filtered form of [p, p+n) to *out.
  void Transform(const char* p, size_t n, std::string* out) {
    if (!active_) {
      out->append(p, n);
      return;
    }
    std::string joined;
    const char* d = p;
    size_t len = n;
    if (!carry_.empty()) {
      joined.reserve(carry_.size() + n);
      joined.append(carry_).append(p, n);
      FreeString(&carry_);
      d = joined.data();
      len = joined.size();
    }
    size_t start = 0;
    for (;;) {
      const void* nl = memchr(d + start, '\n', len - start);
      if (nl == nullptr) break;
      size_t end = static_cast<size_t>(static_cast<const char*>(nl) - d) + 1;
      Line(d + start, end - start, out);
      start = end;
    }
    if (start < len) {
      if (len - start > kMaxLine) {
        FlushHeld(out);
        out->append(d + start, len - start);
      } else {
        carry_.assign(d + start, len - start);
      }
    }
  }

  // Stops filtering: what is held goes out as it is and the rest passes through untouched.
  void Stop(std::string* out) {
    if (!active_) return;
    active_ = false;
    out->append(held_).append(carry_);
    FreeString(&held_);
    FreeString(&carry_);
  }

  // The server's stream ended: what is held goes out.
  void Flush(std::string* out) {
    FlushHeld(out);
    out->append(carry_);
    FreeString(&carry_);
  }

 private:
  void FlushHeld(std::string* out) {
    out->append(held_);
    FreeString(&held_);
  }

  void Line(const char* p, size_t n, std::string* out) {
    if (IsKeywordLine(p, n)) {
      if (p[3] == ' ' && !held_.empty()) {
        // The keyword ended the reply: the held line becomes the last line.
        held_[3] = ' ';
        FlushHeld(out);
      } else if (p[3] == ' ') {
        // A one-line "250 PIPECONNECT" is no EHLO reply (its first line is the domain): keep it.
        out->append(p, n);
      }
      return;
    }
    FlushHeld(out);
    if (n >= 4 && memcmp(p, "250-", 4) == 0)
      held_.assign(p, n);
    else
      out->append(p, n);
  }

  bool active_ = true;
  std::string carry_;
  std::string held_;  // the previous "250-" line, until we know whether the next line ends the reply
};

// Client → server: finds the first DATA, BDAT or STARTTLS at a line start (CommandWatcher).
class CommandWatcher {
 public:
  bool watching() const { return watching_; }

  // True when [p, p+n) completes the stop command (watching ends there).
  bool Scan(const char* p, size_t n) {
    size_t i = 0;
    while (i < n && watching_) {
      const void* nlp = memchr(p + i, '\n', n - i);
      size_t end = nlp != nullptr ? static_cast<size_t>(static_cast<const char*>(nlp) - p) + 1 : n;
      if (at_line_start_ || !carry_.empty()) {
        // Only a line's first bytes matter; keep at most a few across segments.
        carry_.append(p + i, std::min(end, i + 16) - i);
        if (carry_.size() > 16) carry_.resize(16);
        if (IsStopCommand(carry_)) {
          watching_ = false;
          FreeString(&carry_);
          return true;
        }
        if (nlp != nullptr || carry_.size() >= 16) carry_.clear();
      }
      at_line_start_ = nlp != nullptr;
      i = end;
    }
    return false;
  }

 private:
  bool watching_ = true;
  bool at_line_start_ = true;
  std::string carry_;
};

// ---------------------------------------------------------------------------------------------
// Data

struct Profile {
  int action;  // 0 drop, 1 reject
  std::string reject_reply;
  uint32_t client_idle_ms;  // 0 = none
  uint32_t server_idle_ms;  // 0 = none; also the greeting timeout
  bool strip;
};

enum class St : uint8_t {
  New,         // accepted, JS decides in the ACCEPT callback; the fd is not in epoll yet
  Held,        // window running
  Waiting,     // window over (or an attempt failed); JS decides
  Connecting,  // upstream connect in progress
  Greeting,    // connected, preamble written, reading the greeting
  Relaying,
  ServerGone,  // relay whose server failed: flush to the client, half-close, wait ≤ 10 s for its EOF
  Replying,    // final reply written, discarding until the client's EOF (≤ 5 s); no more events
};

// One direction of the relay (or of a final reply): what the destination could not take yet.
struct Dir {
  std::string pending;
  bool eof = false;   // the source ended
  bool shut = false;  // the destination got shutdown(SHUT_WR)
};

struct Conn {
  uint64_t id = 0;
  int cfd = -1;
  int ufd = -1;
  St st = St::New;
  bool dead = false;
  uint32_t gen = 0;    // bumped whenever the state's deadline changes meaning
  uint32_t cmask = 0;  // epoll masks as registered; 0 = not registered
  uint32_t umask = 0;
  double accepted_at = 0;
  double hold_start = 0;
  double connect_start = 0;
  double connect_ms = 0;
  double client_active = 0;
  double server_active = 0;
  double bytes_from_client = 0;
  double bytes_to_client = 0;
  std::shared_ptr<const Profile> profile;
  std::string greeting;  // the greeting being read
  size_t greeting_line = 0;
  std::string refused;   // the last refused greeting, for engineReplyGreeting
  Dir c2s;               // client → server (before the relay: the preamble)
  Dir s2c;               // server → client (final reply: the reply)
  std::unique_ptr<Stripper> stripper;
  std::unique_ptr<CommandWatcher> watcher;
  std::string cause;  // the relay's first end cause
};

enum class Kind : uint8_t { Window, ConnectTimeout, GreetingTimeout, ClientIdle, ServerIdle, ReplyLinger, ServerGoneLinger, ListenerResume };

struct Deadline {
  double at;
  uint64_t id;  // connection id, or listener key for ListenerResume
  uint32_t gen;
  Kind kind;
};

struct Listener {
  int fd;
  double listener_id;
  bool paused;
};

struct Ev {
  EventType type;
  uint64_t id;  // connection id; listener id for EV_ERROR (stored in n1)
  double n1 = 0;
  double n2 = 0;
  int i1 = 0;
  int i2 = 0;
  std::string s1;
  std::string s2;
};

class Engine;

// The per-environment slot: profiles outlive engine restarts; the engine pointer is set while running.
struct EnvSlot {
  Engine* engine = nullptr;
  std::unordered_map<uint32_t, std::shared_ptr<const Profile>> profiles;
};

// ---------------------------------------------------------------------------------------------
// The engine

class Engine {
 public:
  Engine(napi_env env, uv_loop_t* loop, EnvSlot* slot) : env_(env), loop_(loop), slot_(slot), buf_(new char[kRelayBuffer]) {}
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Creates epoll fd, handles, async context and cleanup hook. Throws into JS and returns false on failure.
  bool Start(Napi::Env env, Napi::Function callback);
  // Closes everything; the object frees itself once libuv has closed its handles.
  void Stop();
  void Unlink() { slot_ = nullptr; }

  // Commands (docs/engine.md, Surface). Each leaves its own cleanup to EndCommand().
  bool Listen(Napi::Env env, int fd, double listener_id);
  void Unlisten(double listener_id);
  bool Hold(Napi::Env env, uint64_t id, uint32_t window_ms, std::shared_ptr<const Profile> profile, bool* done);
  bool Connect(Napi::Env env, uint64_t id, std::shared_ptr<const Profile> profile, int family, const std::string& source,
               int syn_count, const std::string& target, int port, uint32_t timeout_ms, const char* preamble,
               size_t preamble_len, bool* done);
  bool Reply(uint64_t id, const std::string* text);
  bool Drop(uint64_t id);
  int Release(uint64_t id);
  bool Close(uint64_t id, const std::string& cause);
  void Counts(double* connections, double* held, double* relaying, double* listeners, double* fds) const;
  // Bytes read from / written to the client so far (for live views); false if the id is unknown.
  bool Bytes(uint64_t id, double* from, double* to) {
    Conn* c = Find(id);
    if (c == nullptr) return false;
    *from = c->bytes_from_client;
    *to = c->bytes_to_client;
    return true;
  }
  // After a command made outside a dispatch: frees what it killed.
  void EndCommand() {
    if (!dispatching_) grave_.clear();
  }

 private:
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnTimer(uv_timer_t* handle);
  static void OnClosed(uv_handle_t* handle);
  static void OnEnvCleanup(napi_async_cleanup_hook_handle handle, void* data);

  void HandleEvent(const epoll_event& ev, double now);
  void HandleDeadline(const Deadline& d, double now);
  void EndDispatch();
  void Flush();
  void CallJs(std::vector<Ev>* batch);
  void Push(Ev ev);

  // Deadlines
  void AddDeadline(uint32_t ms, double now, uint64_t id, uint32_t gen, Kind kind) { AddDeadlineAt(ms, now + ms, id, gen, kind); }
  void AddDeadlineAt(uint32_t ms, double at, uint64_t id, uint32_t gen, Kind kind);
  void StartTimer(double at);
  void Arm();

  // Listeners
  void Accept(uint64_t key, double now);
  void PauseListener(uint64_t key, Listener* l, double now);

  // Connections
  Conn* Find(uint64_t id) {
    auto it = conns_.find(id);
    return it == conns_.end() ? nullptr : it->second.get();
  }
  uint32_t WantClient(const Conn* c) const;
  uint32_t WantServer(const Conn* c) const;
  int SetMask(Conn* c, int side);  // 0 or errno
  void Update(Conn* c);
  void Abort(Conn* c, int err);
  void Kill(Conn* c, bool rst);
  void CloseUpstream(Conn* c);
  void StartReply(Conn* c, const std::string& text, double now);

  void OnClient(Conn* c, uint32_t events, double now);
  void OnServer(Conn* c, uint32_t events, double now);
  void EarlyRead(Conn* c, double now);
  void EnterGreeting(Conn* c, double now);
  void ReadGreeting(Conn* c, double now);
  void UpstreamFailed(Conn* c, const char* stage, const std::string& code, double now);

  void Note(Conn* c, const char* cause) {
    if (c->cause.empty()) c->cause = cause;
  }
  void EndRelay(Conn* c, const std::string& cause);
  void ClientFailed(Conn* c, int err);
  void ServerFailed(Conn* c, int err, double now);
  void ReadClient(Conn* c, double now);
  void ReadServer(Conn* c, double now);
  void ToServer(Conn* c, const char* p, size_t n, double now);
  void ToClient(Conn* c, const char* p, size_t n, double now);
  void ToClientRaw(Conn* c, const char* p, size_t n, double now);
  void FlushToClient(Conn* c, double now);
  void FlushToServer(Conn* c, double now);
  void ShutClientIfDone(Conn* c);
  void ShutServerIfDone(Conn* c);
  void MaybeDone(Conn* c);

  napi_env env_;
  uv_loop_t* loop_;
  EnvSlot* slot_;
  std::unique_ptr<char[]> buf_;
  uv_poll_t poll_{};
  uv_timer_t timer_{};
  int open_handles_ = 0;
  int epfd_ = -1;
  Napi::FunctionReference callback_;
  napi_async_context async_ = nullptr;
  napi_async_cleanup_hook_handle hook_ = nullptr;
  bool stopped_ = false;
  bool dispatching_ = false;
  bool armed_ = false;
  double armed_at_ = 0;

  uint64_t next_id_ = 1;
  uint64_t next_listener_key_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> grave_;
  std::unordered_map<uint64_t, Listener> listeners_;
  std::map<uint32_t, std::deque<Deadline>> queues_;  // by duration: each FIFO is sorted by `at`
  std::vector<Ev> pending_;
  std::vector<uint64_t> accepted_;  // ids announced in the batch being built
};

// ----- lifecycle -----------------------------------------------------------------------------

bool Engine::Start(Napi::Env env, Napi::Function callback) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    int err = errno;
    ThrowSys(env, err, "epoll_create1", Hint(err, "epoll_create1", 4, "", -1, false), kNowhere);
    return false;
  }
  int rc = uv_poll_init(loop_, &poll_, epfd_);
  if (rc != 0) {
    close(epfd_);
    epfd_ = -1;
    Napi::Error::New(env, std::string("engineStart: uv_poll_init failed: ") + uv_strerror(rc)).ThrowAsJavaScriptException();
    return false;
  }
  poll_.data = this;
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  open_handles_ = 2;
  uv_poll_start(&poll_, UV_READABLE, OnPoll);

  napi_value resource = Napi::Object::New(env);
  napi_value name = Napi::String::New(env, "etd:engine");
  if (napi_async_init(env, resource, name, &async_) != napi_ok) async_ = nullptr;
  // Tears the engine down with the environment (a worker that exits without engineStop).
  if (napi_add_async_cleanup_hook(env, OnEnvCleanup, this, &hook_) != napi_ok) hook_ = nullptr;
  callback_ = Napi::Persistent(callback);
  return true;
}

void Engine::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (slot_ != nullptr) {
    slot_->engine = nullptr;
    slot_ = nullptr;
  }
  // Plain closes: the process is going away or etd is stopping; no events.
  std::vector<Conn*> all;
  all.reserve(conns_.size());
  for (auto& kv : conns_) all.push_back(kv.second.get());
  for (Conn* c : all) Kill(c, false);
  for (auto& kv : listeners_) close(kv.second.fd);
  listeners_.clear();
  queues_.clear();
  pending_.clear();
  accepted_.clear();
  // Stop polling before the epoll fd goes (libuv must never poll a closed fd).
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), OnClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), OnClosed);
  close(epfd_);
  epfd_ = -1;
  if (async_ != nullptr) napi_async_destroy(env_, async_);
  async_ = nullptr;
  callback_.Reset();
}

void Engine::OnClosed(uv_handle_t* handle) {
  auto* e = static_cast<Engine*>(handle->data);
  if (--e->open_handles_ > 0) return;
  if (e->hook_ != nullptr) napi_remove_async_cleanup_hook(e->hook_);
  delete e;
}

void Engine::OnEnvCleanup(napi_async_cleanup_hook_handle, void* data) {
  // The hook stays registered until OnClosed removes it, which tells Node the teardown may go on.
  static_cast<Engine*>(data)->Stop();
}

// ----- dispatch ------------------------------------------------------------------------------

void Engine::OnPoll(uv_poll_t* handle, int, int) {
  auto* e = static_cast<Engine*>(handle->data);
  if (e->stopped_) return;
  e->dispatching_ = true;
  epoll_event events[kEpollBatch];
  int n = epoll_wait(e->epfd_, events, kEpollBatch, 0);
  double now = NowMs();
  for (int i = 0; i < n; i++) e->HandleEvent(events[i], now);
  e->EndDispatch();
}

void Engine::OnTimer(uv_timer_t* handle) {
  auto* e = static_cast<Engine*>(handle->data);
  if (e->stopped_) return;
  e->dispatching_ = true;
  e->armed_ = false;
  double now = NowMs();
  std::vector<Deadline> due;
  for (auto it = e->queues_.begin(); it != e->queues_.end();) {
    auto& q = it->second;
    while (!q.empty() && q.front().at <= now) {
      due.push_back(q.front());
      q.pop_front();
    }
    it = q.empty() ? e->queues_.erase(it) : std::next(it);
  }
  std::stable_sort(due.begin(), due.end(), [](const Deadline& a, const Deadline& b) { return a.at < b.at; });
  for (const Deadline& d : due) e->HandleDeadline(d, now);
  e->EndDispatch();
}

void Engine::EndDispatch() {
  Flush();
  if (stopped_) return;  // JS stopped the engine: handles are closing, nothing else to do
  grave_.clear();
  Arm();
  dispatching_ = false;
}

void Engine::Push(Ev ev) {
  pending_.push_back(std::move(ev));
  // An event made by a command outside a dispatch (engineClose from a JS timer) goes out at the
  // next timer tick rather than waiting for unrelated I/O.
  if (!dispatching_ && !stopped_) {
    uv_timer_start(&timer_, OnTimer, 0, 0);
    armed_ = true;
    armed_at_ = 0;
  }
}

void Engine::Flush() {
  while (!pending_.empty() && !stopped_) {
    std::vector<Ev> batch;
    batch.swap(pending_);
    std::vector<uint64_t> accepted;
    accepted.swap(accepted_);
    CallJs(&batch);
    if (stopped_) return;
    // A connection JS left undecided (its handler threw, or it did not answer in the callback)
    // would be held forever: reset it and say so.
    for (uint64_t id : accepted) {
      Conn* c = Find(id);
      if (c == nullptr || c->st != St::New) continue;
      Kill(c, true);
      Ev ev{EV_GONE, id};
      ev.s1 = "undecided";
      Push(std::move(ev));
    }
  }
}

void Engine::CallJs(std::vector<Ev>* batch) {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  Napi::Array arr = Napi::Array::New(env, batch->size());
  uint32_t i = 0;
  for (Ev& ev : *batch) {
    Napi::Array a;
    auto num = [&](double d) { return Napi::Number::New(env, d); };
    auto str = [&](const std::string& s) { return Napi::String::New(env, s); };
    switch (ev.type) {
      case EV_ACCEPT:
        a = Napi::Array::New(env, 8);
        a.Set(2u, num(ev.n1));
        a.Set(3u, num(ev.i1));
        a.Set(4u, str(ev.s1));
        a.Set(5u, num(ev.i2));
        a.Set(6u, str(ev.s2));
        a.Set(7u, num(ev.n2));
        break;
      case EV_TALK:
        a = Napi::Array::New(env, 5);
        a.Set(2u, num(ev.n1));
        a.Set(3u, Napi::Buffer<char>::Copy(env, ev.s1.data(), ev.s1.size()));
        a.Set(4u, num(ev.n2));
        break;
      case EV_GONE:
        a = Napi::Array::New(env, 3);
        a.Set(2u, str(ev.s1));
        break;
      case EV_EXPIRED:
        a = Napi::Array::New(env, 3);
        a.Set(2u, num(ev.n1));
        break;
      case EV_UPSTREAM_FAILED:
        a = Napi::Array::New(env, 5);
        a.Set(2u, str(ev.s1));
        a.Set(3u, str(ev.s2));
        a.Set(4u, num(ev.n1));
        break;
      case EV_GREETING:
        a = Napi::Array::New(env, 5);
        a.Set(2u, str(ev.s1));
        a.Set(3u, num(ev.n1));
        a.Set(4u, num(ev.i1));
        break;
      case EV_END:
        a = Napi::Array::New(env, 5);
        a.Set(2u, str(ev.s1));
        a.Set(3u, num(ev.n1));
        a.Set(4u, num(ev.n2));
        break;
      case EV_ERROR:
        a = Napi::Array::New(env, 4);
        a.Set(2u, str(ev.s1));
        a.Set(3u, str(ev.s2));
        break;
    }
    a.Set(0u, num(ev.type));
    a.Set(1u, num(ev.type == EV_ERROR ? ev.n1 : static_cast<double>(ev.id)));
    arr.Set(i++, a);
  }
  batch->clear();
  napi_value argv[1] = {arr};
  napi_value result;
  // napi_make_callback wants an object as receiver (undefined would throw a TypeError).
  napi_status status = napi_make_callback(env_, async_, env.Global(), callback_.Value(), 1, argv, &result);
  if (status == napi_ok) return;
  bool pending = false;
  napi_is_exception_pending(env_, &pending);
  if (!pending) return;  // the environment cannot run JS any more (worker terminating)
  napi_value exc;
  if (napi_get_and_clear_last_exception(env_, &exc) != napi_ok) return;
  napi_valuetype type;
  // A null "exception" is how a terminating isolate shows up here: nothing to report.
  if (napi_typeof(env_, exc, &type) == napi_ok && (type == napi_null || type == napi_undefined)) return;
  // The handler threw: an uncaught exception in JS terms; the engine goes on.
  napi_fatal_exception(env_, exc);
}

// ----- deadlines -----------------------------------------------------------------------------

void Engine::AddDeadlineAt(uint32_t ms, double at, uint64_t id, uint32_t gen, Kind kind) {
  auto& q = queues_[ms];
  Deadline d{at, id, gen, kind};
  if (q.empty() || q.back().at <= at) {
    q.push_back(d);
  } else {
    // A lazily re-pushed idle deadline can be earlier than the tail: keep the queue sorted.
    auto pos = std::upper_bound(q.begin(), q.end(), at, [](double v, const Deadline& e) { return v < e.at; });
    q.insert(pos, d);
  }
  if (!dispatching_ && (!armed_ || at < armed_at_)) StartTimer(at);
}

void Engine::StartTimer(double at) {
  if (stopped_) return;  // the handle is closing
  // libuv measures timeouts from its cached loop time; refresh it so the timer is not early.
  uv_update_time(loop_);
  double wait = std::ceil(at - NowMs());
  uint64_t ms = wait <= 0 ? 0 : static_cast<uint64_t>(wait);
  uv_timer_start(&timer_, OnTimer, ms, 0);
  armed_ = true;
  armed_at_ = at;
}

void Engine::Arm() {
  if (stopped_) return;
  double earliest = 0;
  bool any = false;
  for (auto& kv : queues_) {
    if (kv.second.empty()) continue;
    double at = kv.second.front().at;
    if (!any || at < earliest) earliest = at;
    any = true;
  }
  if (any) {
    StartTimer(earliest);
  } else {
    uv_timer_stop(&timer_);
    armed_ = false;
  }
}

void Engine::HandleDeadline(const Deadline& d, double now) {
  if (d.kind == Kind::ListenerResume) {
    auto it = listeners_.find(d.id);
    if (it == listeners_.end() || !it->second.paused) return;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenerTag | d.id;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, it->second.fd, &ev) == 0) {
      it->second.paused = false;
    } else {
      int err = errno;
      Ev e{EV_ERROR, 0};
      e.n1 = it->second.listener_id;
      e.s1 = "epoll_ctl";
      e.s2 = ErrnoName(err);
      Push(std::move(e));
      AddDeadline(kAcceptPauseMs, now, d.id, 0, Kind::ListenerResume);
    }
    return;
  }
  Conn* c = Find(d.id);
  if (c == nullptr || c->gen != d.gen) return;
  switch (d.kind) {
    case Kind::Window:
      if (c->st != St::Held) return;
      c->st = St::Waiting;
      c->gen++;
      {
        Ev ev{EV_EXPIRED, c->id};
        ev.n1 = now - c->hold_start;
        Push(std::move(ev));
      }
      break;
    case Kind::ConnectTimeout:
      if (c->st == St::Connecting) UpstreamFailed(c, "connect", "ETIMEDOUT", now);
      break;
    case Kind::GreetingTimeout:
      if (c->st == St::Greeting) UpstreamFailed(c, "greeting", "ETIMEDOUT", now);
      break;
    case Kind::ClientIdle:
    case Kind::ServerIdle: {
      if (c->st != St::Relaying) return;
      bool client = d.kind == Kind::ClientIdle;
      uint32_t idle = client ? c->profile->client_idle_ms : c->profile->server_idle_ms;
      double last = client ? c->client_active : c->server_active;
      if (now - last >= idle) {
        Note(c, client ? "client_timeout" : "server_timeout");
        EndRelay(c, c->cause);
        return;
      }
      // There was activity since: look again when the idle time after it has passed.
      AddDeadlineAt(idle, last + idle, c->id, c->gen, d.kind);
      return;
    }
    case Kind::ReplyLinger:
      if (c->st == St::Replying) Kill(c, false);
      return;
    case Kind::ServerGoneLinger:
      if (c->st == St::ServerGone) EndRelay(c, c->cause);
      return;
    case Kind::ListenerResume:
      return;
  }
  if (!c->dead) Update(c);
}

// ----- listeners -----------------------------------------------------------------------------

bool Engine::Listen(Napi::Env env, int fd, double listener_id) {
  std::string shown = "fd " + std::to_string(fd);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    int err = errno;
    ThrowSys(env, err, "fcntl", err == EBADF ? "the fd is not open" : strerror(err), Where{shown, nullptr, -1});
    return false;
  }
  int accepting = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0) {
    int err = errno;
    ThrowSys(env, err, "getsockopt(SO_ACCEPTCONN)", err == ENOTSOCK ? "the fd is not a socket" : strerror(err),
             Where{shown, nullptr, -1});
    return false;
  }
  if (!accepting) {
    ThrowSys(env, EINVAL, "getsockopt(SO_ACCEPTCONN)", "the fd is not a listening socket (bind and listen first)",
             Where{shown, nullptr, -1});
    return false;
  }
  // accept4 on a blocking listener would stall the whole event loop.
  if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    int err = errno;
    ThrowSys(env, err, "fcntl", strerror(err), Where{shown, nullptr, -1});
    return false;
  }
  uint64_t key = next_listener_key_++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag | key;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    int err = errno;
    ThrowSys(env, err, "epoll_ctl",
             err == EEXIST ? "the engine already watches this fd" : Hint(err, "epoll_ctl", 4, "", -1, false),
             Where{shown, nullptr, -1});
    return false;
  }
  listeners_[key] = Listener{fd, listener_id, false};
  return true;
}

void Engine::Unlisten(double listener_id) {
  for (auto it = listeners_.begin(); it != listeners_.end();) {
    if (it->second.listener_id == listener_id) {
      close(it->second.fd);  // also leaves epoll; a pending resume finds nothing
      it = listeners_.erase(it);
    } else {
      ++it;
    }
  }
}

void Engine::PauseListener(uint64_t key, Listener* l, double now) {
  epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr);
  l->paused = true;
  AddDeadline(kAcceptPauseMs, now, key, 0, Kind::ListenerResume);
}

void Engine::Accept(uint64_t key, double now) {
  auto it = listeners_.find(key);
  if (it == listeners_.end() || it->second.paused) return;
  Listener* l = &it->second;
  for (int k = 0; k < kAcceptBurst; k++) {
    sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(l->fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      // Failures of that one connection (Linux passes pending network errors to accept): next.
      if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == ENETDOWN || err == ENOPROTOOPT ||
          err == EHOSTDOWN || err == ENONET || err == EHOSTUNREACH || err == EOPNOTSUPP || err == ENETUNREACH ||
          err == EPERM)
        continue;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: the listener stays readable; pause instead of spinning.
      Ev ev{EV_ERROR, 0};
      ev.n1 = l->listener_id;
      ev.s1 = "accept";
      ev.s2 = ErrnoName(err);
      Push(std::move(ev));
      PauseListener(key, l, now);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_storage local;
    socklen_t llen = sizeof local;
    Ev ev{EV_ACCEPT, 0};
    int lfamily;
    int lport;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) != 0 ||
        !FormatAddress(peer, &ev.i1, &ev.s1, &ev.i2) || !FormatAddress(local, &lfamily, &ev.s2, &lport)) {
      close(fd);  // not an inet peer, or already gone: nothing JS could do with it
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->cfd = fd;
    c->accepted_at = now;
    ev.id = c->id;
    ev.n1 = l->listener_id;
    ev.n2 = lport;
    accepted_.push_back(c->id);
    conns_.emplace(c->id, std::move(c));
    Push(std::move(ev));
  }
}

// ----- connections: epoll interest -----------------------------------------------------------

uint32_t Engine::WantClient(const Conn* c) const {
  if (c->cfd < 0) return 0;
  switch (c->st) {
    case St::New:
      return 0;
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting:
      return EPOLLIN;
    case St::Relaying:
      return (!c->c2s.eof && c->c2s.pending.empty() ? EPOLLIN : 0) | (!c->s2c.pending.empty() ? EPOLLOUT : 0);
    case St::ServerGone:
    case St::Replying:
      return (!c->c2s.eof ? EPOLLIN : 0) | (!c->s2c.pending.empty() ? EPOLLOUT : 0);
  }
  return 0;
}

uint32_t Engine::WantServer(const Conn* c) const {
  if (c->ufd < 0) return 0;
  switch (c->st) {
    case St::Connecting:
      return EPOLLOUT;
    case St::Greeting:
      return EPOLLIN | (!c->c2s.pending.empty() ? EPOLLOUT : 0);
    case St::Relaying:
      return (!c->s2c.eof && c->s2c.pending.empty() ? EPOLLIN : 0) | (!c->c2s.pending.empty() ? EPOLLOUT : 0);
    default:
      return 0;
  }
}

int Engine::SetMask(Conn* c, int side) {
  int fd = side == kClient ? c->cfd : c->ufd;
  uint32_t want = side == kClient ? WantClient(c) : WantServer(c);
  uint32_t& have = side == kClient ? c->cmask : c->umask;
  if (fd < 0 || want == have) return 0;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c->id << 1 | static_cast<uint64_t>(side);
  // An fd nobody wants to hear from leaves epoll: a hung-up socket reports EPOLLHUP even with
  // an empty mask, and level-triggered that would spin.
  int op = have == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  if (epoll_ctl(epfd_, op, fd, &ev) != 0) return errno;
  have = want;
  return 0;
}

void Engine::Update(Conn* c) {
  int err = SetMask(c, kClient);
  if (err == 0) err = SetMask(c, kServer);
  if (err != 0) Abort(c, err);
}

void Engine::Abort(Conn* c, int err) {
  std::string cause = "engine_" + Lower(ErrnoName(err));
  switch (c->st) {
    case St::Relaying:
    case St::ServerGone:
      EndRelay(c, cause);
      return;
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting: {
      Ev ev{EV_GONE, c->id};
      ev.s1 = cause;
      Push(std::move(ev));
      break;
    }
    case St::New:
    case St::Replying:
      break;
  }
  Kill(c, false);
}

void Engine::Kill(Conn* c, bool rst) {
  if (c->dead) return;
  if (c->cfd >= 0) {
    if (rst) {
      linger l{1, 0};  // close() then sends RST and discards what is queued
      setsockopt(c->cfd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(c->cfd);
    c->cfd = -1;
    c->cmask = 0;
  }
  if (c->ufd >= 0) {
    close(c->ufd);
    c->ufd = -1;
    c->umask = 0;
  }
  c->dead = true;
  auto it = conns_.find(c->id);
  if (it != conns_.end()) {
    grave_.push_back(std::move(it->second));
    conns_.erase(it);
  }
}

void Engine::CloseUpstream(Conn* c) {
  if (c->ufd >= 0) {
    close(c->ufd);
    c->ufd = -1;
    c->umask = 0;
  }
  FreeString(&c->c2s.pending);
  FreeString(&c->greeting);
  c->greeting_line = 0;
}

void Engine::StartReply(Conn* c, const std::string& text, double now) {
  CloseUpstream(c);
  c->st = St::Replying;
  c->gen++;
  c->stripper.reset();
  c->watcher.reset();
  c->c2s = Dir{};
  c->s2c = Dir{};
  FreeString(&c->refused);
  ssize_t w = SendSome(c->cfd, text.data(), text.size());
  if (w < 0) {
    Kill(c, false);
    return;
  }
  if (static_cast<size_t>(w) < text.size()) {
    c->s2c.pending.assign(text, static_cast<size_t>(w), std::string::npos);
  } else {
    shutdown(c->cfd, SHUT_WR);
    c->s2c.shut = true;
  }
  AddDeadline(kReplyLingerMs, now, c->id, c->gen, Kind::ReplyLinger);
}

// ----- connections: events -------------------------------------------------------------------

void Engine::HandleEvent(const epoll_event& ev, double now) {
  uint64_t tag = ev.data.u64;
  if (tag & kListenerTag) {
    Accept(tag & ~kListenerTag, now);
    return;
  }
  Conn* c = Find(tag >> 1);
  if (c == nullptr) return;  // freed earlier in this batch
  if ((tag & 1) == kClient)
    OnClient(c, ev.events, now);
  else
    OnServer(c, ev.events, now);
  if (!c->dead) Update(c);
}

void Engine::OnClient(Conn* c, uint32_t events, double now) {
  if (c->cfd < 0) return;
  bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP);
  switch (c->st) {
    case St::New:
      return;
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting:
      if (readable) EarlyRead(c, now);
      return;
    case St::Relaying:
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->s2c.pending.empty()) {
        FlushToClient(c, now);
        if (c->dead) return;
      }
      if (readable && !c->c2s.eof && c->c2s.pending.empty()) ReadClient(c, now);
      return;
    case St::ServerGone:
    case St::Replying: {
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->s2c.pending.empty()) {
        ssize_t w = SendSome(c->cfd, c->s2c.pending.data(), c->s2c.pending.size());
        if (w < 0) {
          if (c->st == St::ServerGone) EndRelay(c, c->cause);
          else Kill(c, false);
          return;
        }
        if (c->st == St::ServerGone && w > 0) {
          c->bytes_to_client += static_cast<double>(w);
          c->client_active = now;
        }
        c->s2c.pending.erase(0, static_cast<size_t>(w));
        if (c->s2c.pending.empty()) {
          FreeString(&c->s2c.pending);
          shutdown(c->cfd, SHUT_WR);
          c->s2c.shut = true;
        }
      }
      if (readable && !c->c2s.eof) {
        // Discard: the client gets nothing more, but its bytes must not turn our close into a RST.
        ssize_t n = recv(c->cfd, buf_.get(), kRelayBuffer, 0);
        if (n > 0 && c->st == St::ServerGone) c->bytes_from_client += static_cast<double>(n);
        if (n == 0) c->c2s.eof = true;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          if (c->st == St::ServerGone) EndRelay(c, c->cause);
          else Kill(c, false);
          return;
        }
      }
      if (c->c2s.eof && c->s2c.shut) {
        if (c->st == St::ServerGone) EndRelay(c, c->cause);
        else Kill(c, false);
      }
      return;
    }
  }
}

void Engine::EarlyRead(Conn* c, double now) {
  // Any byte is early talk; at most kEvidenceRead bytes are read, so a flood costs nothing.
  char small[kEvidenceRead];
  ssize_t n = recv(c->cfd, small, sizeof small, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n > 0) {
    Ev ev{EV_TALK, c->id};
    ev.n1 = now - c->accepted_at;
    ev.s1.assign(small, std::min(static_cast<size_t>(n), kEvidenceMax));
    ev.n2 = static_cast<double>(n);
    Push(std::move(ev));
    CloseUpstream(c);
    if (c->profile && c->profile->action == 1)
      StartReply(c, c->profile->reject_reply, now);
    else
      Kill(c, true);
    return;
  }
  int err = n == 0 ? 0 : errno;
  Ev ev{EV_GONE, c->id};
  ev.s1 = err == 0 ? "client_closed" : err == ECONNRESET ? "client_reset" : "client_" + Lower(ErrnoName(err));
  Push(std::move(ev));
  Kill(c, false);
}

void Engine::OnServer(Conn* c, uint32_t events, double now) {
  if (c->ufd < 0) return;
  switch (c->st) {
    case St::Connecting: {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0)
        UpstreamFailed(c, "connect", ErrnoName(err), now);
      else if (events & EPOLLOUT)
        EnterGreeting(c, now);
      else
        UpstreamFailed(c, "connect", "ECONNRESET", now);  // hung up without an error: never spin on it
      return;
    }
    case St::Greeting:
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->c2s.pending.empty()) {
        ssize_t w = SendSome(c->ufd, c->c2s.pending.data(), c->c2s.pending.size());
        if (w < 0) {
          UpstreamFailed(c, "greeting", ErrnoName(static_cast<int>(-w)), now);
          return;
        }
        c->c2s.pending.erase(0, static_cast<size_t>(w));
        if (c->c2s.pending.empty()) FreeString(&c->c2s.pending);
      }
      if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadGreeting(c, now);
      return;
    case St::Relaying:
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->c2s.pending.empty()) {
        FlushToServer(c, now);
        if (c->dead || c->st != St::Relaying) return;
      }
      if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->s2c.eof && c->s2c.pending.empty()) ReadServer(c, now);
      return;
    default:
      return;
  }
}

void Engine::EnterGreeting(Conn* c, double now) {
  c->st = St::Greeting;
  c->gen++;
  c->connect_ms = now - c->connect_start;
  if (c->profile->server_idle_ms > 0) AddDeadline(c->profile->server_idle_ms, now, c->id, c->gen, Kind::GreetingTimeout);
}

void Engine::UpstreamFailed(Conn* c, const char* stage, const std::string& code, double now) {
  CloseUpstream(c);
  c->st = St::Waiting;
  c->gen++;
  Ev ev{EV_UPSTREAM_FAILED, c->id};
  ev.s1 = stage;
  ev.s2 = code;
  ev.n1 = now - c->connect_start;
  Push(std::move(ev));
}

void Engine::ReadGreeting(Conn* c, double now) {
  ssize_t n = recv(c->ufd, buf_.get(), kRelayBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    UpstreamFailed(c, "greeting", ErrnoName(err), now);
    return;
  }
  if (n == 0) {
    UpstreamFailed(c, "greeting", "EOF", now);
    return;
  }
  size_t from = c->greeting.size();
  c->greeting.append(buf_.get(), static_cast<size_t>(n));
  // RFC 5321 reply end: the first line whose 4th char is not '-' (or shorter than 4 chars).
  size_t end = std::string::npos;
  const std::string& g = c->greeting;
  for (size_t i = from; i < g.size(); i++) {
    if (g[i] != '\n') continue;
    size_t line_len = i - c->greeting_line;
    if (line_len < 4 || g[c->greeting_line + 3] != '-') {
      end = i + 1;
      break;
    }
    c->greeting_line = i + 1;
  }
  if (end == std::string::npos) {
    if (g.size() <= kGreetingMax) return;
    end = g.size();  // no reply end in 4 KiB: not SMTP; judge what came
  }
  bool digits = g.size() >= 3 && std::isdigit(static_cast<unsigned char>(g[0])) &&
                std::isdigit(static_cast<unsigned char>(g[1])) && std::isdigit(static_cast<unsigned char>(g[2]));
  std::string code = digits ? g.substr(0, 3) : "garbage";
  Ev ev{EV_GREETING, c->id};
  ev.s1 = code;
  ev.n1 = c->connect_ms;
  if (code == "220") {
    std::string bytes;
    bytes.swap(c->greeting);  // the greeting and whatever the server sent after it
    c->greeting_line = 0;
    c->st = St::Relaying;
    c->gen++;
    c->c2s.eof = c->c2s.shut = false;
    c->s2c = Dir{};
    if (c->profile->strip) {
      c->stripper = std::make_unique<Stripper>();
      c->watcher = std::make_unique<CommandWatcher>();
    }
    c->client_active = c->server_active = now;
    if (c->profile->client_idle_ms > 0) AddDeadline(c->profile->client_idle_ms, now, c->id, c->gen, Kind::ClientIdle);
    if (c->profile->server_idle_ms > 0) AddDeadline(c->profile->server_idle_ms, now, c->id, c->gen, Kind::ServerIdle);
    ev.i1 = 1;
    Push(std::move(ev));
    ToClient(c, bytes.data(), bytes.size(), now);
    return;
  }
  // Refused (or not SMTP): say goodbye politely. Unread bytes would turn the close into a RST
  // that could overtake the QUIT, so drain what has arrived first.
  c->refused.assign(g, 0, end);
  for (int i = 0; i < 16; i++) {
    ssize_t r = recv(c->ufd, buf_.get(), kRelayBuffer, MSG_DONTWAIT);
    if (r <= 0) break;
  }
  if (c->c2s.pending.empty()) SendSome(c->ufd, "QUIT\r\n", 6);
  CloseUpstream(c);
  c->st = St::Waiting;
  c->gen++;
  ev.i1 = 0;
  Push(std::move(ev));
}

// ----- connections: relay --------------------------------------------------------------------

void Engine::EndRelay(Conn* c, const std::string& cause) {
  Ev ev{EV_END, c->id};
  ev.s1 = cause;
  ev.n1 = c->bytes_from_client;
  ev.n2 = c->bytes_to_client;
  Push(std::move(ev));
  Kill(c, false);
}

void Engine::ClientFailed(Conn* c, int err) {
  // The client is gone: close both at once, so the backend cannot take a half-sent message as complete.
  Note(c, err == ECONNRESET || err == EPIPE ? "client_reset" : "client_error");
  EndRelay(c, c->cause);
}

void Engine::ServerFailed(Conn* c, int err, double now) {
  // The backend failed: give the client what it sent, a clean half-close, and 10 s to go away.
  Note(c, err == ECONNRESET || err == EPIPE ? "server_reset" : "server_error");
  close(c->ufd);
  c->ufd = -1;
  c->umask = 0;
  FreeString(&c->c2s.pending);
  c->st = St::ServerGone;
  c->gen++;
  if (c->stripper) {
    std::string out;
    c->stripper->Flush(&out);
    c->stripper.reset();
    c->watcher.reset();
    if (!out.empty()) c->s2c.pending.append(out);
  }
  if (c->s2c.pending.empty() && !c->s2c.shut) {
    shutdown(c->cfd, SHUT_WR);
    c->s2c.shut = true;
  }
  if (c->c2s.eof && c->s2c.shut) {
    EndRelay(c, c->cause);
    return;
  }
  AddDeadline(kServerGoneLingerMs, now, c->id, c->gen, Kind::ServerGoneLinger);
}

void Engine::ReadClient(Conn* c, double now) {
  ssize_t n = recv(c->cfd, buf_.get(), kRelayBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    ClientFailed(c, err);
    return;
  }
  c->client_active = now;
  if (n == 0) {
    Note(c, "client_closed");
    c->c2s.eof = true;
    ShutServerIfDone(c);
    MaybeDone(c);
    return;
  }
  c->bytes_from_client += static_cast<double>(n);
  if (c->watcher && c->watcher->watching() && c->watcher->Scan(buf_.get(), static_cast<size_t>(n))) {
    // DATA/BDAT/STARTTLS: from here on the bytes are message data or TLS, never touched.
    std::string out;
    c->stripper->Stop(&out);
    if (!out.empty()) {
      ToClientRaw(c, out.data(), out.size(), now);
      if (c->dead) return;
    }
  }
  ToServer(c, buf_.get(), static_cast<size_t>(n), now);
}

void Engine::ReadServer(Conn* c, double now) {
  ssize_t n = recv(c->ufd, buf_.get(), kRelayBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    ServerFailed(c, err, now);
    return;
  }
  c->server_active = now;
  if (n == 0) {
    Note(c, "server_closed");
    c->s2c.eof = true;
    if (c->stripper) {
      std::string out;
      c->stripper->Flush(&out);
      if (!out.empty()) {
        ToClientRaw(c, out.data(), out.size(), now);
        if (c->dead) return;
      }
    }
    ShutClientIfDone(c);
    MaybeDone(c);
    return;
  }
  ToClient(c, buf_.get(), static_cast<size_t>(n), now);
}

void Engine::ToServer(Conn* c, const char* p, size_t n, double now) {
  if (!c->c2s.pending.empty()) {
    c->c2s.pending.append(p, n);
    return;
  }
  ssize_t w = SendSome(c->ufd, p, n);
  if (w < 0) {
    ServerFailed(c, static_cast<int>(-w), now);
    return;
  }
  if (w > 0) c->server_active = now;
  if (static_cast<size_t>(w) < n) c->c2s.pending.assign(p + w, n - static_cast<size_t>(w));
}

void Engine::ToClient(Conn* c, const char* p, size_t n, double now) {
  if (c->stripper && c->stripper->active()) {
    std::string out;
    c->stripper->Transform(p, n, &out);
    if (!out.empty()) ToClientRaw(c, out.data(), out.size(), now);
    return;
  }
  ToClientRaw(c, p, n, now);
}

void Engine::ToClientRaw(Conn* c, const char* p, size_t n, double now) {
  if (!c->s2c.pending.empty()) {
    c->s2c.pending.append(p, n);
    return;
  }
  ssize_t w = SendSome(c->cfd, p, n);
  if (w < 0) {
    ClientFailed(c, static_cast<int>(-w));
    return;
  }
  if (w > 0) {
    c->client_active = now;
    c->bytes_to_client += static_cast<double>(w);
  }
  if (static_cast<size_t>(w) < n) c->s2c.pending.assign(p + w, n - static_cast<size_t>(w));
}

void Engine::FlushToClient(Conn* c, double now) {
  ssize_t w = SendSome(c->cfd, c->s2c.pending.data(), c->s2c.pending.size());
  if (w < 0) {
    ClientFailed(c, static_cast<int>(-w));
    return;
  }
  if (w > 0) {
    c->client_active = now;
    c->bytes_to_client += static_cast<double>(w);
  }
  c->s2c.pending.erase(0, static_cast<size_t>(w));
  if (!c->s2c.pending.empty()) return;
  FreeString(&c->s2c.pending);
  ShutClientIfDone(c);
  MaybeDone(c);
}

void Engine::FlushToServer(Conn* c, double now) {
  ssize_t w = SendSome(c->ufd, c->c2s.pending.data(), c->c2s.pending.size());
  if (w < 0) {
    ServerFailed(c, static_cast<int>(-w), now);
    return;
  }
  if (w > 0) c->server_active = now;
  c->c2s.pending.erase(0, static_cast<size_t>(w));
  if (!c->c2s.pending.empty()) return;
  FreeString(&c->c2s.pending);
  ShutServerIfDone(c);
  MaybeDone(c);
}

// The server ended and everything it sent reached the client: pass the half-close on.
void Engine::ShutClientIfDone(Conn* c) {
  if (c->s2c.eof && !c->s2c.shut && c->s2c.pending.empty()) {
    shutdown(c->cfd, SHUT_WR);
    c->s2c.shut = true;
  }
}

void Engine::ShutServerIfDone(Conn* c) {
  if (c->c2s.eof && !c->c2s.shut && c->c2s.pending.empty()) {
    shutdown(c->ufd, SHUT_WR);
    c->c2s.shut = true;
  }
}

void Engine::MaybeDone(Conn* c) {
  if (c->c2s.eof && c->c2s.shut && c->s2c.eof && c->s2c.shut) EndRelay(c, c->cause);
}

// ----- commands ------------------------------------------------------------------------------

bool Engine::Hold(Napi::Env env, uint64_t id, uint32_t window_ms, std::shared_ptr<const Profile> profile, bool* done) {
  *done = false;
  Conn* c = Find(id);
  if (c == nullptr || c->st != St::New) return true;
  double now = NowMs();
  c->st = St::Held;
  int err = SetMask(c, kClient);
  if (err != 0) {
    c->st = St::New;
    ThrowSys(env, err, "epoll_ctl", Hint(err, "epoll_ctl", 4, "", -1, false), kNowhere);
    return false;
  }
  c->gen++;
  c->hold_start = now;
  c->profile = std::move(profile);
  AddDeadline(window_ms, now, c->id, c->gen, Kind::Window);
  *done = true;
  return true;
}

bool Engine::Connect(Napi::Env env, uint64_t id, std::shared_ptr<const Profile> profile, int family,
                     const std::string& source, int syn_count, const std::string& target, int port,
                     uint32_t timeout_ms, const char* preamble, size_t preamble_len, bool* done) {
  *done = false;
  Conn* c = Find(id);
  if (c == nullptr || (c->st != St::New && c->st != St::Waiting)) return true;
  sockaddr_storage to;
  socklen_t to_len;
  if (!ParseAddress(env, family, target, port, &to, &to_len)) return false;
  sockaddr_storage from;
  socklen_t from_len = 0;
  if (!source.empty() && !ParseAddress(env, family, source, 0, &from, &from_len)) return false;
  int raw;
  if (!OpenSocket(env, family, source.empty() ? target : source, &raw)) return false;
  FdGuard fd(raw);
  if (!source.empty() && !PrepareSpoofedSource(env, fd.get(), family, source, from, from_len, 0, syn_count)) return false;
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc = connect(fd.get(), reinterpret_cast<const sockaddr*>(&to), to_len);
  if (rc != 0 && errno != EINPROGRESS) {
    int err = errno;
    ThrowSys(env, err, "connect", Hint(err, "connect", family, target, port, false),
             Where{HostPort(family, target, port), &target, port});
    return false;
  }
  // Register before committing, so a refused epoll watch leaves the client as it was.
  uint32_t umask = rc == 0 ? (EPOLLIN | (preamble_len > 0 ? uint32_t{EPOLLOUT} : 0u)) : uint32_t{EPOLLOUT};
  epoll_event ev{};
  ev.events = umask;
  ev.data.u64 = c->id << 1 | kServer;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
    int err = errno;
    ThrowSys(env, err, "epoll_ctl", Hint(err, "epoll_ctl", family, target, port, false), kNowhere);
    return false;
  }
  if (c->cmask == 0) {
    epoll_event cev{};
    cev.events = EPOLLIN;
    cev.data.u64 = c->id << 1 | kClient;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c->cfd, &cev) != 0) {
      int err = errno;
      ThrowSys(env, err, "epoll_ctl", Hint(err, "epoll_ctl", family, target, port, false), kNowhere);
      return false;  // the guard closes the upstream fd, which also leaves epoll
    }
    c->cmask = EPOLLIN;
  }
  double now = NowMs();
  c->ufd = fd.release();
  c->umask = umask;
  c->profile = std::move(profile);
  c->connect_start = now;
  c->c2s = Dir{};
  c->c2s.pending.assign(preamble, preamble_len);
  FreeString(&c->greeting);
  c->greeting_line = 0;
  if (rc == 0) {
    EnterGreeting(c, now);  // connected at once (loopback may do that): straight to the greeting
  } else {
    c->st = St::Connecting;
    c->gen++;
    if (timeout_ms > 0) AddDeadline(timeout_ms, now, c->id, c->gen, Kind::ConnectTimeout);
  }
  Update(c);
  *done = true;
  return true;
}

bool Engine::Reply(uint64_t id, const std::string* text) {
  Conn* c = Find(id);
  if (c == nullptr) return false;
  switch (c->st) {
    case St::New:
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting:
      break;
    default:
      return false;
  }
  if (text == nullptr) {
    if (c->refused.empty()) return false;
    std::string refused;
    refused.swap(c->refused);
    StartReply(c, refused, NowMs());
  } else {
    StartReply(c, *text, NowMs());
  }
  if (!c->dead) Update(c);
  return true;
}

bool Engine::Drop(uint64_t id) {
  Conn* c = Find(id);
  if (c == nullptr) return false;
  Kill(c, true);
  return true;
}

int Engine::Release(uint64_t id) {
  Conn* c = Find(id);
  if (c == nullptr || c->st != St::New) return -1;
  // A `new` connection was never in epoll: the fd simply changes hands.
  int fd = c->cfd;
  c->cfd = -1;
  Kill(c, false);
  return fd;
}

bool Engine::Close(uint64_t id, const std::string& cause) {
  Conn* c = Find(id);
  if (c == nullptr) return false;
  if (c->st == St::Relaying || c->st == St::ServerGone)
    EndRelay(c, cause);  // JS ended it: its cause is the one that counts
  else
    Kill(c, false);
  return true;
}

void Engine::Counts(double* connections, double* held, double* relaying, double* listeners, double* fds) const {
  double h = 0, r = 0, f = 0;
  for (const auto& kv : conns_) {
    const Conn* c = kv.second.get();
    if (c->st == St::Held) h++;
    if (c->st == St::Relaying || c->st == St::ServerGone) r++;
    if (c->cfd >= 0) f++;
    if (c->ufd >= 0) f++;
  }
  *connections = static_cast<double>(conns_.size());
  *held = h;
  *relaying = r;
  *listeners = static_cast<double>(listeners_.size());
  *fds = f + static_cast<double>(listeners_.size());
}

// ---------------------------------------------------------------------------------------------
// JS surface

constexpr const char* kStartSig = "engineStart(onEvents)";
constexpr const char* kStopSig = "engineStop()";
constexpr const char* kProfileSig = "engineProfile(idx, action, rejectReply, clientIdleMs, serverIdleMs, stripPipeconnect)";
constexpr const char* kListenSig = "engineListen(fd, listenerId)";
constexpr const char* kUnlistenSig = "engineUnlisten(listenerId)";
constexpr const char* kHoldSig = "engineHold(id, windowMs, profile)";
constexpr const char* kConnectSig =
    "engineConnect(id, profile, family, sourceAddress, synCount, targetAddress, targetPort, timeoutMs, preamble)";
constexpr const char* kReplySig = "engineReply(id, text)";
constexpr const char* kReplyGreetingSig = "engineReplyGreeting(id)";
constexpr const char* kDropSig = "engineDrop(id)";
constexpr const char* kReleaseSig = "engineRelease(id)";
constexpr const char* kCloseSig = "engineClose(id, cause)";
constexpr const char* kCountsSig = "engineCounts()";
constexpr const char* kBytesSig = "engineBytes(id)";
constexpr const char* kSockNameSig = "sockName(fd)";
constexpr const char* kPlainListenerSig = "plainListener(family, address, port, backlog, v6only)";

EnvSlot* Slot(Napi::Env env) { return env.GetInstanceData<EnvSlot>(); }

Engine* Running(Napi::Env env) {
  EnvSlot* slot = Slot(env);
  return slot == nullptr ? nullptr : slot->engine;
}

void FinalizeSlot(Napi::Env, EnvSlot* slot) {
  if (slot->engine != nullptr) slot->engine->Unlink();  // the cleanup hook stops it
  delete slot;
}

bool GetProfile(const Napi::CallbackInfo& info, size_t i, const char* sig, std::shared_ptr<const Profile>* out) {
  int64_t idx;
  if (!GetInt(info, i, sig, "profile", 0, 65535, &idx)) return false;
  EnvSlot* slot = Slot(info.Env());
  auto it = slot->profiles.find(static_cast<uint32_t>(idx));
  if (it == slot->profiles.end()) {
    Napi::RangeError::New(info.Env(), std::string(sig) + ": profile " + std::to_string(idx) +
                                          " is not defined (call engineProfile first)")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = it->second;
  return true;
}

bool GetFlag(const Napi::CallbackInfo& info, size_t i, const char* sig, const char* name, int* out) {
  int64_t v;
  if (!GetInt(info, i, sig, name, 0, 1, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

Napi::Value EngineStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 1, kStartSig)) return env.Undefined();
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(env, std::string(kStartSig) + ": onEvents must be a function, got " + TypeName(info[0]))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  EnvSlot* slot = Slot(env);
  if (slot->engine != nullptr) {
    Napi::Error::New(env, std::string(kStartSig) + ": the engine is already started (call engineStop first)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Napi::Error::New(env, std::string(kStartSig) + ": no event loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* engine = new Engine(env, loop, slot);
  if (!engine->Start(env, info[0].As<Napi::Function>())) {
    delete engine;  // Start failed before any handle was initialised
    return env.Undefined();
  }
  slot->engine = engine;
  return env.Undefined();
}

Napi::Value EngineStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 0, kStopSig)) return env.Undefined();
  if (Engine* e = Running(env)) e->Stop();
  return env.Undefined();
}

Napi::Value EngineProfile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t idx, client_idle, server_idle;
  int action, strip;
  std::string reply;
  if (!CheckArity(info, 6, kProfileSig) || !GetInt(info, 0, kProfileSig, "idx", 0, 65535, &idx) ||
      !GetFlag(info, 1, kProfileSig, "action", &action) || !GetString(info, 2, kProfileSig, "rejectReply", &reply) ||
      !GetInt(info, 3, kProfileSig, "clientIdleMs", 0, kMaxMs, &client_idle) ||
      !GetInt(info, 4, kProfileSig, "serverIdleMs", 0, kMaxMs, &server_idle) ||
      !GetFlag(info, 5, kProfileSig, "stripPipeconnect", &strip))
    return env.Undefined();
  auto p = std::make_shared<Profile>();
  p->action = action;
  p->reject_reply = std::move(reply);
  p->client_idle_ms = static_cast<uint32_t>(client_idle);
  p->server_idle_ms = static_cast<uint32_t>(server_idle);
  p->strip = strip == 1;
  // Connections keep the profile they were given; a redefinition applies to new uses only.
  Slot(env)->profiles[static_cast<uint32_t>(idx)] = std::move(p);
  return env.Undefined();
}

Napi::Value EngineListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, lid;
  if (!CheckArity(info, 2, kListenSig) || !GetInt(info, 0, kListenSig, "fd", 0, 2147483647.0, &fd) ||
      !GetInt(info, 1, kListenSig, "listenerId", 0, kMaxId, &lid))
    return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) {
    Napi::Error::New(env, std::string(kListenSig) + ": the engine is not started (call engineStart first)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  e->Listen(env, static_cast<int>(fd), static_cast<double>(lid));
  return env.Undefined();
}

Napi::Value EngineUnlisten(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t lid;
  if (!CheckArity(info, 1, kUnlistenSig) || !GetInt(info, 0, kUnlistenSig, "listenerId", 0, kMaxId, &lid))
    return env.Undefined();
  if (Engine* e = Running(env)) e->Unlisten(static_cast<double>(lid));
  return env.Undefined();
}

bool GetId(const Napi::CallbackInfo& info, const char* sig, uint64_t* id) {
  int64_t v;
  if (!GetInt(info, 0, sig, "id", 0, kMaxId, &v)) return false;
  *id = static_cast<uint64_t>(v);
  return true;
}

Napi::Value EngineHold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  int64_t window;
  std::shared_ptr<const Profile> profile;
  if (!CheckArity(info, 3, kHoldSig) || !GetId(info, kHoldSig, &id) ||
      !GetInt(info, 1, kHoldSig, "windowMs", 0, kMaxMs, &window) || !GetProfile(info, 2, kHoldSig, &profile))
    return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool done = false;
  bool ok = e->Hold(env, id, static_cast<uint32_t>(window), std::move(profile), &done);
  e->EndCommand();
  return ok ? Napi::Boolean::New(env, done) : env.Undefined();
}

Napi::Value EngineConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  int family;
  int64_t syn_count, port, timeout;
  std::string source, target;
  std::shared_ptr<const Profile> profile;
  if (!CheckArity(info, 9, kConnectSig) || !GetId(info, kConnectSig, &id) || !GetProfile(info, 1, kConnectSig, &profile) ||
      !GetFamily(info, 2, kConnectSig, &family) || !GetString(info, 3, kConnectSig, "sourceAddress", &source) ||
      !GetInt(info, 4, kConnectSig, "synCount", 0, 127, &syn_count) ||
      !GetString(info, 5, kConnectSig, "targetAddress", &target) ||
      !GetInt(info, 6, kConnectSig, "targetPort", 1, 65535, &port) ||
      !GetInt(info, 7, kConnectSig, "timeoutMs", 0, kMaxMs, &timeout))
    return env.Undefined();
  Napi::Value pre = info[8];
  if (!pre.IsTypedArray() || pre.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, std::string(kConnectSig) + ": preamble must be a Buffer, got " + TypeName(pre))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array bytes = pre.As<Napi::Uint8Array>();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool done = false;
  bool ok = e->Connect(env, id, std::move(profile), family, source, static_cast<int>(syn_count), target,
                       static_cast<int>(port), static_cast<uint32_t>(timeout),
                       reinterpret_cast<const char*>(bytes.Data()), bytes.ByteLength(), &done);
  e->EndCommand();
  return ok ? Napi::Boolean::New(env, done) : env.Undefined();
}

Napi::Value EngineReply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  std::string text;
  if (!CheckArity(info, 2, kReplySig) || !GetId(info, kReplySig, &id) || !GetString(info, 1, kReplySig, "text", &text))
    return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool ok = e->Reply(id, &text);
  e->EndCommand();
  return Napi::Boolean::New(env, ok);
}

Napi::Value EngineReplyGreeting(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kReplyGreetingSig) || !GetId(info, kReplyGreetingSig, &id)) return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool ok = e->Reply(id, nullptr);
  e->EndCommand();
  return Napi::Boolean::New(env, ok);
}

Napi::Value EngineDrop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kDropSig) || !GetId(info, kDropSig, &id)) return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool ok = e->Drop(id);
  e->EndCommand();
  return Napi::Boolean::New(env, ok);
}

Napi::Value EngineRelease(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kReleaseSig) || !GetId(info, kReleaseSig, &id)) return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Number::New(env, -1);
  int fd = e->Release(id);
  e->EndCommand();
  return Napi::Number::New(env, fd);
}

Napi::Value EngineClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  std::string cause;
  if (!CheckArity(info, 2, kCloseSig) || !GetId(info, kCloseSig, &id) || !GetString(info, 1, kCloseSig, "cause", &cause))
    return env.Undefined();
  Engine* e = Running(env);
  if (e == nullptr) return Napi::Boolean::New(env, false);
  bool ok = e->Close(id, cause);
  e->EndCommand();
  return Napi::Boolean::New(env, ok);
}

Napi::Value EngineCounts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 0, kCountsSig)) return env.Undefined();
  double connections = 0, held = 0, relaying = 0, listeners = 0, fds = 0;
  if (Engine* e = Running(env)) e->Counts(&connections, &held, &relaying, &listeners, &fds);
  Napi::Object o = Napi::Object::New(env);
  o.Set("connections", connections);
  o.Set("held", held);
  o.Set("relaying", relaying);
  o.Set("listeners", listeners);
  o.Set("fds", fds);
  return o;
}

Napi::Value EngineBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kBytesSig) || !GetId(info, kBytesSig, &id)) return env.Undefined();
  double from = 0, to = 0;
  Engine* e = Running(env);
  if (e == nullptr || !e->Bytes(id, &from, &to)) return env.Null();
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(uint32_t{0}, Napi::Number::New(env, from));
  a.Set(uint32_t{1}, Napi::Number::New(env, to));
  return a;
}

Napi::Value SockName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!CheckArity(info, 1, kSockNameSig) || !GetInt(info, 0, kSockNameSig, "fd", 0, 2147483647.0, &fd))
    return env.Undefined();
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  std::string shown = "fd " + std::to_string(fd);
  if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    int err = errno;
    ThrowSys(env, err, "getsockname", err == EBADF ? "the fd is not open" : strerror(err), Where{shown, nullptr, -1});
    return env.Undefined();
  }
  int family, port;
  std::string address;
  if (!FormatAddress(ss, &family, &address, &port)) {
    ThrowSys(env, EAFNOSUPPORT, "getsockname", "the fd is not an IPv4 or IPv6 socket", Where{shown, nullptr, -1});
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::String::New(env, address));
  out.Set(1u, Napi::Number::New(env, port));
  return out;
}

// An ordinary listening socket for the engine (plain mode): like transparentListener without
// IP_TRANSPARENT, and v6-only as asked (false = dual-stack, IPv4 peers arrive v4-mapped).
Napi::Value PlainListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  int64_t port, backlog;
  bool v6only;
  if (!CheckArity(info, 5, kPlainListenerSig) || !GetFamily(info, 0, kPlainListenerSig, &family) ||
      !GetString(info, 1, kPlainListenerSig, "address", &address) ||
      !GetInt(info, 2, kPlainListenerSig, "port", 0, 65535, &port) ||
      !GetInt(info, 3, kPlainListenerSig, "backlog", 1, 2147483647.0, &backlog) ||
      !GetBool(info, 4, kPlainListenerSig, "v6only", &v6only))
    return env.Undefined();
  int fd = OpenListener(env, family, address, static_cast<int>(port), static_cast<int>(backlog), false, v6only);
  return fd < 0 ? env.Undefined() : Napi::Number::New(env, fd);
}

}  // namespace

void RegisterEngine(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<EnvSlot, FinalizeSlot>(new EnvSlot());
  exports.Set("engineStart", Napi::Function::New(env, EngineStart, "engineStart"));
  exports.Set("engineStop", Napi::Function::New(env, EngineStop, "engineStop"));
  exports.Set("engineProfile", Napi::Function::New(env, EngineProfile, "engineProfile"));
  exports.Set("engineListen", Napi::Function::New(env, EngineListen, "engineListen"));
  exports.Set("engineUnlisten", Napi::Function::New(env, EngineUnlisten, "engineUnlisten"));
  exports.Set("engineHold", Napi::Function::New(env, EngineHold, "engineHold"));
  exports.Set("engineConnect", Napi::Function::New(env, EngineConnect, "engineConnect"));
  exports.Set("engineReply", Napi::Function::New(env, EngineReply, "engineReply"));
  exports.Set("engineReplyGreeting", Napi::Function::New(env, EngineReplyGreeting, "engineReplyGreeting"));
  exports.Set("engineDrop", Napi::Function::New(env, EngineDrop, "engineDrop"));
  exports.Set("engineRelease", Napi::Function::New(env, EngineRelease, "engineRelease"));
  exports.Set("engineClose", Napi::Function::New(env, EngineClose, "engineClose"));
  exports.Set("engineCounts", Napi::Function::New(env, EngineCounts, "engineCounts"));
  exports.Set("engineBytes", Napi::Function::New(env, EngineBytes, "engineBytes"));
  exports.Set("sockName", Napi::Function::New(env, SockName, "sockName"));
  exports.Set("plainListener", Napi::Function::New(env, PlainListener, "plainListener"));
}

}  // namespace etd
