// The engine's loop: lifecycle, dispatch of epoll and timer wakeups, the deadline heap, epoll interest, the end of a connection,
// fault-injectable syscalls.

#include "engine.h"

#include "common.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace etd {

double NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

Engine::Engine(napi_env env, uv_loop_t* loop, EnvSlot* slot)
    : env_(env), loop_(loop), slot_(slot), buf_(new char[kReadBuffer]), next_id_(slot->next_id) {}

// ----- lifecycle -----------------------------------------------------------------------------

bool Engine::Start(Napi::Env env, Napi::Function callback) {
  std::string fault_error;
  if (!faults_.Parse(getenv("ETD_ENGINE_FAULTS"), &fault_error)) {
    Napi::Error::New(env, "engineStart(onEvents): " + fault_error + " (unset it, or fix it)").ThrowAsJavaScriptException();
    return false;
  }
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
  for (auto& kv : listeners_) {
    Unschedule(&kv.second.resume);
    close(kv.second.fd);
  }
  listeners_.clear();
  heap_.clear();
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
  // First note which clients are already reset in this batch: a server's EOF handled before its
  // client's event then ends the relay at once instead of a shutdown (ENOTCONN) and a read
  // (ECONNRESET) on a dead socket (relay.cc, ReadServer).
  for (int i = 0; i < n; i++) {
    uint64_t tag = events[i].data.u64;
    if ((tag & kListenerTag) || (tag & 1) != kClient || !(events[i].events & (EPOLLERR | EPOLLHUP))) continue;
    if (Conn* c = e->Find(tag >> 1)) c->client_hup = true;
  }
  for (int i = 0; i < n; i++) e->HandleEvent(events[i], now);
  e->EndDispatch();
}

void Engine::OnTimer(uv_timer_t* handle) {
  auto* e = static_cast<Engine*>(handle->data);
  if (e->stopped_) return;
  e->dispatching_ = true;
  e->armed_ = false;
  double now = NowMs();
  // Handlers may schedule and unschedule; the heap's top is read afresh each time.
  while (!e->heap_.empty() && e->heap_[0]->at <= now && !e->stopped_) {
    Timer* t = e->heap_[0];
    e->Unschedule(t);
    e->HandleDeadline(t, now);
  }
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

// ----- deadlines: one min-heap of intrusive nodes; unlinking is O(log n) -------------------------

void Engine::Schedule(Timer* t, Kind kind, uint64_t owner, double at) {
  t->kind = kind;
  t->owner = owner;
  t->at = at;
  if (t->scheduled()) {
    HeapUp(t->idx);
    HeapDown(t->idx);
  } else {
    heap_.push_back(t);
    t->idx = static_cast<uint32_t>(heap_.size() - 1);
    HeapUp(t->idx);
  }
  if (!dispatching_ && (!armed_ || at < armed_at_)) StartTimer(at);
}

void Engine::Unschedule(Timer* t) {
  if (!t->scheduled()) return;
  size_t i = t->idx;
  t->idx = UINT32_MAX;
  Timer* last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;
  HeapSet(i, last);
  HeapUp(i);
  HeapDown(last->idx);
}

void Engine::HeapUp(size_t i) {
  Timer* t = heap_[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (heap_[parent]->at <= t->at) break;
    HeapSet(i, heap_[parent]);
    i = parent;
  }
  HeapSet(i, t);
}

void Engine::HeapDown(size_t i) {
  Timer* t = heap_[i];
  size_t n = heap_.size();
  for (;;) {
    size_t l = 2 * i + 1;
    if (l >= n) break;
    size_t m = l + 1 < n && heap_[l + 1]->at < heap_[l]->at ? l + 1 : l;
    if (heap_[m]->at >= t->at) break;
    HeapSet(i, heap_[m]);
    i = m;
  }
  HeapSet(i, t);
}

void Engine::SetStateTimer(Conn* c, Kind kind, uint32_t ms, double now) { Schedule(&c->state_timer, kind, c->id, now + ms); }

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
  if (!heap_.empty()) {
    StartTimer(heap_[0]->at);
  } else {
    uv_timer_stop(&timer_);
    armed_ = false;
  }
}

void Engine::HandleDeadline(Timer* t, double now) {
  if (t->kind == Kind::ListenerResume) {
    auto it = listeners_.find(t->owner);
    if (it == listeners_.end() || !it->second.paused) return;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenerTag | t->owner;
    if (EpollCtl(EPOLL_CTL_ADD, it->second.fd, &ev) == 0) {
      it->second.paused = false;
    } else {
      int err = errno;
      Ev e{EV_ERROR, 0};
      e.n1 = it->second.listener_id;
      e.s1 = "epoll_ctl";
      e.s2 = ErrnoName(err);
      Push(std::move(e));
      Schedule(&it->second.resume, Kind::ListenerResume, t->owner, now + kAcceptPauseMs);
    }
    return;
  }
  Conn* c = Find(t->owner);
  if (c == nullptr) return;  // cannot happen: Kill unschedules; kept as a guard
  switch (t->kind) {
    case Kind::Window:
      if (c->st != St::Held) return;
      EnterWaiting(c, now);
      {
        Ev ev{EV_EXPIRED, c->id};
        ev.n1 = now - c->hold_start;
        Push(std::move(ev));
      }
      break;
    case Kind::Decision:
      if (c->st != St::Waiting) return;
      {
        Ev ev{EV_GONE, c->id};
        ev.s1 = "undecided";
        Push(std::move(ev));
      }
      Kill(c, true);
      return;
    case Kind::ConnectTimeout:
      if (c->st == St::Connecting) UpstreamFailed(c, "connect", "ETIMEDOUT", now);
      break;
    case Kind::GreetingTimeout:
      if (c->st == St::Greeting) UpstreamFailed(c, "greeting", "ETIMEDOUT", now);
      break;
    case Kind::ClientIdle:
    case Kind::ServerIdle: IdleExpired(c, t, now); break;
    case Kind::DeferredReply:
      if (c->st == St::Deferring) FinishDeferred(c, now);
      break;
    case Kind::ReplyLinger:
      if (c->st == St::Replying) Kill(c, false);
      return;
    case Kind::ServerGoneLinger:
      if (c->st == St::ServerGone) EndRelay(c, Cause(c));
      return;
    case Kind::ListenerResume: return;
  }
  if (!c->dead) Update(c);
}

// ----- connections: epoll interest, ends -------------------------------------------------------

uint32_t Engine::WantClient(const Conn* c) const {
  if (c->cfd < 0) return 0;
  uint32_t out = !c->s2c.pending.empty() ? uint32_t{EPOLLOUT} : 0u;
  switch (c->st) {
    case St::New: return 0;
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting: {
      // action log: past earlyBufferBytes the client is not read until the relay (backpressure).
      bool full = c->profile && c->profile->action == Action::Log && c->early.size() >= c->profile->early_buffer_bytes;
      return (full ? 0u : uint32_t{EPOLLIN}) | out;
    }
    case St::Relaying: return (!c->c2s.eof && c->c2s.pending.empty() ? uint32_t{EPOLLIN} : 0u) | out;
    case St::ServerGone:
    case St::Deferring:
    case St::Replying: return (!c->c2s.eof ? uint32_t{EPOLLIN} : 0u) | out;
  }
  return 0;
}

uint32_t Engine::WantServer(const Conn* c) const {
  if (c->ufd < 0) return 0;
  switch (c->st) {
    case St::Connecting: return EPOLLOUT;
    case St::Greeting: return EPOLLIN | (!c->c2s.pending.empty() ? uint32_t{EPOLLOUT} : 0u);
    case St::Relaying:
      return (!c->s2c.eof && c->s2c.pending.empty() ? uint32_t{EPOLLIN} : 0u) | (!c->c2s.pending.empty() ? uint32_t{EPOLLOUT} : 0u);
    default: return 0;
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
  if (EpollCtl(op, fd, &ev) != 0) return errno;
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
    case St::ServerGone: EndRelay(c, cause); return;
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
    case St::Deferring:
    case St::Replying: break;
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
  // No deadline outlives its connection.
  Unschedule(&c->state_timer);
  Unschedule(&c->cidle);
  Unschedule(&c->sidle);
  c->dead = true;
  auto it = conns_.find(c->id);
  if (it != conns_.end()) {
    grave_.push_back(std::move(it->second));
    conns_.erase(it);
  }
}

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

Counts Engine::GetCounts() const {
  Counts k;
  for (const auto& kv : conns_) {
    const Conn* c = kv.second.get();
    if (c->st == St::Held) k.held++;
    if (c->st == St::Relaying || c->st == St::ServerGone) k.relaying++;
    if (c->cfd >= 0) k.fds++;
    if (c->ufd >= 0) k.fds++;
    auto heap = [](const std::string& s) { return s.capacity() > 15 ? static_cast<double>(s.capacity()) : 0.0; };
    k.buffered += static_cast<double>(c->c2s.pending.Heap() + c->s2c.pending.Heap()) + heap(c->greeting) + heap(c->kept) + heap(c->early) +
                  (c->stripper ? static_cast<double>(c->stripper->Heap()) : 0.0) +
                  (c->inspector ? static_cast<double>(c->inspector->Heap()) : 0.0);
  }
  k.connections = static_cast<double>(conns_.size());
  k.listeners = static_cast<double>(listeners_.size());
  k.fds += k.listeners;
  k.deadlines = static_cast<double>(heap_.size());
  k.callback_errors = callback_errors_;
  return k;
}

// ----- syscalls (fault injection: faults.h) ----------------------------------------------------

int Engine::EpollCtl(int op, int fd, epoll_event* ev) {
  if (int fault = faults_.Hit(Sys::EpollCtl)) {
    errno = fault;
    return -1;
  }
  return epoll_ctl(epfd_, op, fd, ev);
}

ssize_t Engine::Recv(int fd, void* p, size_t n, int flags) {
  if (int fault = faults_.Hit(Sys::Recv)) {
    errno = fault;
    return -1;
  }
  return recv(fd, p, n, flags);
}

ssize_t Engine::SendSome(int fd, const char* p, size_t n) {
  if (int fault = faults_.Hit(Sys::Send)) return -fault;
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

}  // namespace etd
