// One engine thread's loop: lifecycle, the thread (wait, then dispatch epoll events and deadlines with the lock held), its death,
// the outbox, the deadline heap, epoll interest, the end of a connection, fault-injectable syscalls.

#include "engine.h"

#include "hub.h"

#include "common.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/eventfd.h>
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

Engine::Engine(Hub* hub, int index, std::atomic<uint64_t>* next_seq)
    : hub_(hub), index_(index), next_seq_(next_seq), buf_(new char[kReadBuffer]) {}

Engine::~Engine() { Shutdown(); }

// ----- lifecycle -----------------------------------------------------------------------------

bool Engine::Start(Napi::Env env) {
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
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (wakefd_ < 0 || epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) != 0) {
    int err = errno;
    CloseAll();
    ThrowSys(env, err, "eventfd", strerror(err), kNowhere);
    return false;
  }
  thread_ = std::thread([this] { Run(); });
  return true;
}

void Engine::Shutdown() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping_ = true;
    }
    Wake();
    thread_.join();
  }
  CloseAll();
}

static double OwnCpuMs() {
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

double Engine::CpuMs() {
  if (dead_ || !thread_.joinable()) return cpu_final_;
  clockid_t cid;
  timespec ts;
  if (pthread_getcpuclockid(thread_.native_handle(), &cid) != 0 || clock_gettime(cid, &ts) != 0) return cpu_final_;
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

void Engine::Reap() {
  if (thread_.joinable()) thread_.join();
}

// Every connection and listener closed without events, then the loop's own fds.
void Engine::CloseAll() {
  std::vector<Conn*> all;
  all.reserve(conns_.size());
  for (auto& kv : conns_) all.push_back(kv.second.get());
  for (Conn* c : all) Kill(c, false);
  grave_.clear();
  for (auto& kv : listeners_) {
    Unschedule(&kv.second.resume);
    close(kv.second.fd);
  }
  listeners_.clear();
  heap_.clear();
  pending_.clear();
  outbox_.clear();
  {
    std::lock_guard<std::mutex> inbox(inbox_mu_);
    inbox_closed_ = true;
    inbox_.clear();
  }
  if (epfd_ >= 0) close(epfd_);
  if (wakefd_ >= 0) close(wakefd_);
  epfd_ = wakefd_ = -1;
}

// ----- the thread: wait, then dispatch with the lock held -------------------------------------

void Engine::Run() {
  tid_ = static_cast<double>(gettid());
  epoll_event events[kEpollBatch];
  std::unique_lock<std::mutex> lock(mu);
  while (!stopping_) {
    double now = NowMs();
    int timeout = -1;
    sleep_until_ = heap_.empty() ? HUGE_VAL : heap_[0]->at;
    if (!heap_.empty()) {
      double wait = std::ceil(heap_[0]->at - now);
      timeout = wait <= 0 ? 0 : wait > 2147483647.0 ? 2147483647 : static_cast<int>(wait);
    }
    int fault = faults_.Hit(Sys::EpollWait);
    lock.unlock();
    int n = fault != 0 ? (errno = fault, -1) : epoll_wait(epfd_, events, kEpollBatch, timeout);
    int err = errno;
    lock.lock();
    if (stopping_) break;
    if (n < 0 && err != EINTR) {
      Die("epoll_wait", err);
      return;
    }
    dispatching_ = true;
    now = NowMs();
    // The eventfd is reset before the inbox is taken: a command queued after the take writes it
    // again, so its wakeup is never lost to this round.
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 != kWakeTag) continue;
      uint64_t count;
      ssize_t r = read(wakefd_, &count, sizeof count);
      (void)r;
      break;
    }
    RunCommands(now);
    // First note which clients are already reset in this batch: a server's EOF handled before its
    // client's event then ends the relay at once instead of a shutdown (ENOTCONN) and a read
    // (ECONNRESET) on a dead socket (relay.cc, ReadServer).
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64;
      if ((tag & kListenerTag) || (tag & 1) != kClient || !(events[i].events & (EPOLLERR | EPOLLHUP))) continue;
      if (Conn* c = Find(tag >> 1)) c->client_hup = true;
    }
    for (int i = 0; i < n; i++) HandleEvent(events[i], now);
    // Deadlines: handlers may schedule and unschedule; the heap's top is read afresh each time.
    while (!heap_.empty() && heap_[0]->at <= now) {
      Timer* t = heap_[0];
      Unschedule(t);
      HandleDeadline(t, now);
    }
    grave_.clear();
    Publish();
    dispatching_ = false;
  }
  cpu_final_ = OwnCpuMs();
  tid_ = 0;
}

// The loop cannot go on (epoll_wait failed): every connection ends with an event (cause
// engine_thread_died), the listeners close, and EV_THREAD tells JS, which logs it and starts the
// thread again with fresh sockets; the other threads keep serving. Called with the lock held.
void Engine::Die(const char* syscall, int err) {
  dispatching_ = true;
  Ev died{EV_THREAD, static_cast<uint64_t>(index_)};
  died.s1 = syscall;
  died.s2 = ErrnoName(err);
  {
    // Commands still queued are dropped: their connections end here, with events.
    std::lock_guard<std::mutex> inbox(inbox_mu_);
    inbox_closed_ = true;
    inbox_.clear();
  }
  std::vector<Conn*> all;
  all.reserve(conns_.size());
  for (auto& kv : conns_) all.push_back(kv.second.get());
  for (Conn* c : all) {
    // Lost: those JS still has a session for (a final reply being written was already summarised).
    if (c->st != St::Deferring && c->st != St::Replying) died.n1++;
    if (c->st == St::Held) died.n2++;
    if (c->st == St::Relaying || c->st == St::ServerGone) died.n3++;
    switch (c->st) {
      case St::Relaying:
      case St::ServerGone: EndRelay(c, "engine_thread_died"); break;
      case St::New:
      case St::Held:
      case St::Waiting:
      case St::Connecting:
      case St::Greeting: {
        Ev ev{EV_GONE, c->id};
        ev.s1 = "engine_thread_died";
        Push(std::move(ev));
        Kill(c, true);
        break;
      }
      case St::Deferring:
      case St::Replying: Kill(c, true); break;
    }
  }
  grave_.clear();
  for (auto& kv : listeners_) {
    Unschedule(&kv.second.resume);
    close(kv.second.fd);
  }
  listeners_.clear();
  Push(std::move(died));
  cpu_final_ = OwnCpuMs();
  dead_ = true;
  tid_ = 0;
  Publish();
  dispatching_ = false;
}

// Hands the events made so far to the hub (the lock is held) and wakes the JS thread.
void Engine::Publish() {
  if (pending_.empty()) return;
  for (Ev& ev : pending_) outbox_.push_back(std::move(ev));
  pending_.clear();
  hub_->Signal();
}

bool Engine::TakeOutbox(std::vector<Ev>* events, size_t max) {
  for (size_t n = 0; n < max && !outbox_.empty(); n++) {
    events->push_back(std::move(outbox_.front()));
    outbox_.pop_front();
  }
  return !outbox_.empty();
}

// ----- the inbox: commands from JS ----------------------------------------------------------------

bool Engine::Enqueue(Cmd cmd) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (inbox_closed_ || dead_) return false;
    wake = inbox_.empty();
    inbox_.push_back(std::move(cmd));
  }
  // One eventfd write per batch: the commands that follow, before the thread takes the inbox, ride along.
  if (wake) Wake();
  return true;
}

void Engine::RunCommands(double now) {
  // Two vectors swapped back and forth keep their capacity: no allocation per round, and none
  // freed on another thread than the one that made it.
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (inbox_.empty()) return;
    inbox_.swap(running_);
  }
  for (Cmd& k : running_) {
    switch (k.type) {
      case Cmd::kHold: Hold(k.id, k.window_ms, std::move(k.profile), now); break;
      case Cmd::kConnect: Connect(k.id, *k.connect, now); break;
      case Cmd::kDrop: Drop(k.id); break;
      case Cmd::kClose: Close(k.id, k.cause); break;
      case Cmd::kSettle: SettleUndecided(k.ids); break;
    }
  }
  running_.clear();
  grave_.clear();
}

// After a batch of events (queued behind the commands JS gave in it): connections JS left `new`
// are reset and reported GONE 'undecided' (a handler that threw, or did not answer in the callback).
void Engine::SettleUndecided(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    Conn* c = Find(id);
    if (c == nullptr || c->st != St::New) continue;
    Kill(c, true);
    Ev ev{EV_GONE, id};
    ev.s1 = "undecided";
    Push(std::move(ev));
  }
}

void Engine::EndCommand() {
  grave_.clear();
  Publish();
}

void Engine::Wake() {
  if (wakefd_ < 0) return;
  uint64_t one = 1;
  ssize_t w = write(wakefd_, &one, sizeof one);
  (void)w;  // EAGAIN: the counter is full, the thread wakes anyway
}

bool Engine::InjectFault(const std::string& rule, std::string* error) {
  if (!faults_.Add(rule, error)) return false;
  Wake();
  return true;
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
  // A command made while the thread sleeps towards a later deadline: wake it to sleep less.
  if (!dispatching_ && at < sleep_until_) {
    sleep_until_ = at;
    Wake();
  }
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
  if (tag == kWakeTag) return;  // read in Run, before the inbox is taken
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
  k.accepted = accepted_total_;
  k.tid = tid_;
  k.running = !dead_ && thread_.joinable();
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
