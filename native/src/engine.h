// One engine thread (docs/engine.md, docs/workers.md): its commands, its loop, its per-connection I/O; split across loop.cc,
// listeners.cc, session.cc, relay.cc (hub.cc: the threads and the queue to JS; binding.cc: N-API).
//
// Every decision stays in TypeScript, on the JS thread; an engine thread only does I/O and
// reports a few events per session. Each runs its own epoll loop (its listeners' SO_REUSEPORT
// sockets, its connections, its deadlines in one heap, an eventfd to wake it) and owns its state
// under one mutex, which the thread holds while it handles a batch of commands, epoll events and
// deadlines. The per-session commands (engineHold, engineConnect, engineDrop, engineClose) go to
// the thread's inbox: JS takes only the inbox's own small lock, and the first command into an
// empty inbox writes the eventfd; the thread runs the whole inbox at its next wakeup, so their
// syscalls (socket, bind, connect, epoll_ctl, the teaser's send, close) are made off the JS
// thread. A failure comes back as an event (GONE engine_<errno>, UPSTREAM_FAILED connect).
// engineReply and engineInspect still run at once under the mutex: a reply's byte count goes
// into the session's summary line as it is written. Events go to the thread's outbox; one
// uv_async wakes the JS thread, which drains every outbox and calls JS once per batch (hub.cc).
// The thread never logs, never calls into V8 and never blocks except in epoll_wait.
//
// Ownership: the engine owns every fd it accepted, every upstream fd it created and every
// listener fd handed to engineListen. Each Conn closes its fds exactly once, in Kill(); a killed
// Conn leaves the id map and the deadline heap at once (so stale epoll events find nothing and
// no deadline outlives it) but its memory lives on in the graveyard until the current dispatch
// or command returns, so no handler ever touches freed memory.

#ifndef ETD_ENGINE_H_
#define ETD_ENGINE_H_

#include "faults.h"
#include "inspect.h"
#include "smtp_guard.h"
#include "types.h"

#include <napi.h>
#include <uv.h>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace etd {

class Engine;
class Hub;

// Engine threads per environment: a connection id carries its thread's index in its low bits.
constexpr int kThreadBits = 6;
constexpr int kMaxThreads = 1 << kThreadBits;
inline int ThreadOf(uint64_t id) { return static_cast<int>(id & (kMaxThreads - 1)); }

// The per-environment slot: profiles outlive engine restarts; the hub pointer is set while running.
struct EnvSlot {
  Hub* hub = nullptr;
  // Connection ids are never reused in an environment, across threads and engine restarts.
  std::atomic<uint64_t> next_seq{1};
  std::unordered_map<uint32_t, std::shared_ptr<const Profile>> profiles;
};

// What engineConnect asks for (binding.cc reads it from the options object and parses the addresses).
struct ConnectSpec {
  std::shared_ptr<const Profile> profile;
  int family = 4;
  bool spoof = false;  // bind to `from` (the client's address); else etd's own address
  sockaddr_storage from{};
  socklen_t from_len = 0;
  sockaddr_storage to{};
  socklen_t to_len = 0;
  int syn_count = 0;
  uint32_t timeout_ms = 0;
  std::string preamble;
};

// One command in an engine thread's inbox (Engine::Enqueue; run by Engine::RunCommands).
struct Cmd {
  enum Type : uint8_t { kHold, kConnect, kDrop, kClose, kSettle } type;
  uint64_t id = 0;
  uint32_t window_ms = 0;                      // kHold
  std::shared_ptr<const Profile> profile;      // kHold
  std::shared_ptr<const ConnectSpec> connect;  // kConnect
  std::string cause;                           // kClose
  std::vector<uint64_t> ids;                   // kSettle: the connections a batch announced
};

// What engineReply asks for.
struct ReplySpec {
  bool greeting = false;  // the last refused greeting instead of text
  std::string text;
  bool has_first = false;
  std::string first;
  std::shared_ptr<const Profile> profile;  // optional: for a connection that has none yet (state new)
};

struct Counts {
  double connections = 0, held = 0, relaying = 0, listeners = 0, fds = 0, buffered = 0, deadlines = 0, accepted = 0;
  double tid = 0;  // the thread's kernel id (0 once it has ended)
  bool running = false;
};

double NowMs();

class Engine {
 public:
  Engine(Hub* hub, int index, std::atomic<uint64_t>* next_seq);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  // Creates the epoll fd and the eventfd, reads ETD_ENGINE_FAULTS and starts the thread. Throws into JS and returns false on failure.
  bool Start(Napi::Env env);
  // Stops and joins the thread (if it still runs), then closes every fd without events. JS thread, without the lock.
  void Shutdown();
  // Joins a thread that ended on its own (it died); JS thread, without the lock.
  void Reap();

  // Held by the thread while it dispatches, and by JS for the commands that run at once.
  std::mutex mu;

  // Any thread, without `mu`: queues a command for this thread and wakes it when the inbox was
  // empty. False when the thread is not running (it died or is stopping): the command is dropped.
  bool Enqueue(Cmd cmd);

  // Commands run at once (docs/engine.md, Surface), with `mu` held. Each leaves its own cleanup to EndCommand().
  bool Listen(Napi::Env env, int fd, double listener_id);
  void Unlisten(double listener_id);
  // Bytes written to the client at once, or -1 (unknown id, wrong state, no refused greeting).
  double Reply(uint64_t id, const ReplySpec& spec);
  const Conn* Inspect(uint64_t id) const { return Find(id); }
  Counts GetCounts() const;
  // Test hook (engineFault): adds a fault rule counted from now (faults.h) and wakes the thread. False with *error set.
  bool InjectFault(const std::string& rule, std::string* error);
  // After a command: frees what it killed, hands its events to the hub, wakes the thread for an earlier deadline.
  void EndCommand();
  // Moves up to `max` events from the front of the outbox to the hub's batch; true when more are left.
  bool TakeOutbox(std::vector<Ev>* events, size_t max);
  bool dead() const { return dead_; }
  // CPU time (user + system) of the thread since it started, in ms (its last figure once it has ended).
  double CpuMs();
  int index() const { return index_; }

 private:
  // ----- loop.cc: the thread, dispatch, deadlines, epoll interest, syscalls (listeners.cc: Accept, PauseListener)
  void Run();
  void Die(const char* syscall, int err);
  void CloseAll();
  void HandleEvent(const epoll_event& ev, double now);
  void HandleDeadline(Timer* t, double now);
  void Publish();
  void Wake();
  void Push(Ev ev) { pending_.push_back(std::move(ev)); }

  void Schedule(Timer* t, Kind kind, uint64_t owner, double at);
  void Unschedule(Timer* t);
  void SetStateTimer(Conn* c, Kind kind, uint32_t ms, double now);  // replaces the state's bound
  void HeapUp(size_t i);
  void HeapDown(size_t i);
  void HeapSet(size_t i, Timer* t) {
    heap_[i] = t;
    t->idx = static_cast<uint32_t>(i);
  }

  void LearnListener(int fd, Listener* l);
  void Accept(uint64_t key, double now);
  void PauseListener(uint64_t key, Listener* l, double now);

  Conn* Find(uint64_t id) const {
    auto it = conns_.find(id);
    return it == conns_.end() ? nullptr : it->second.get();
  }
  uint32_t WantClient(const Conn* c) const;
  uint32_t WantServer(const Conn* c) const;
  int SetMask(Conn* c, int side);  // 0 or errno
  void Update(Conn* c);
  void Abort(Conn* c, int err);
  void Kill(Conn* c, bool rst);

  // Syscalls that fault injection can fail (faults.h); same contract as the libc calls.
  int EpollCtl(int op, int fd, epoll_event* ev);
  ssize_t Recv(int fd, void* p, size_t n, int flags);
  ssize_t SendSome(int fd, const char* p, size_t n);  // bytes taken now (≤ n), or -errno

  // ----- session.cc: before the relay (hold, early talk, connect, greeting, replies)
  void OnClient(Conn* c, uint32_t events, double now);
  void OnServer(Conn* c, uint32_t events, double now);
  void EarlyRead(Conn* c, double now);
  void ReportTalk(Conn* c, const char* p, size_t n, double now);
  void EnterWaiting(Conn* c, double now);
  void EnterGreeting(Conn* c, double now);
  void ReadGreeting(Conn* c, double now);
  void UpstreamFailed(Conn* c, const char* stage, const std::string& code, double now);
  void CloseUpstream(Conn* c);
  void StartReply(Conn* c, const std::string& text, double now);
  void OnClosing(Conn* c, uint32_t events, double now);
  // The inbox's commands, on the thread with `mu` held; a command whose connection has ended or
  // moved on does nothing (the event that ended it is on its way to JS).
  void RunCommands(double now);
  void Hold(uint64_t id, uint32_t window_ms, std::shared_ptr<const Profile> profile, double now);
  void Connect(uint64_t id, const ConnectSpec& spec, double now);
  void Drop(uint64_t id);
  void Close(uint64_t id, const std::string& cause);
  void SettleUndecided(const std::vector<uint64_t>& ids);
  void FinishDeferred(Conn* c, double now);
  ssize_t WriteClient(Conn* c, const char* p, size_t n);
  void FlushPreRelay(Conn* c);
  void ClientGone(Conn* c, int err);

  // ----- relay.cc: the relay and its ends
  void StartRelay(Conn* c, double now);
  void OnRelayClient(Conn* c, uint32_t events, double now);
  void OnRelayServer(Conn* c, uint32_t events, double now);
  void Note(Conn* c, const char* cause) {
    if (c->cause == nullptr) c->cause = cause;
  }
  // The noted cause; every path to a relay's end notes one first ("unknown" would be a bug to report).
  static const char* Cause(const Conn* c) { return c->cause != nullptr ? c->cause : "unknown"; }
  void EndRelay(Conn* c, const std::string& cause);
  void ClientFailed(Conn* c, int err);
  void ServerFailed(Conn* c, int err, double now);
  void ReadClient(Conn* c, double now);
  void FromClient(Conn* c, const char* p, size_t n, double now);
  bool ReportProtocol(Conn* c, const Finding& f, double now);  // false: the test ended the session
  void EndInspection(Conn* c, double now);
  void ReadServer(Conn* c, double now);
  void ToServer(Conn* c, const char* p, size_t n, double now);
  void ToClient(Conn* c, const char* p, size_t n, double now);
  void ToClientRaw(Conn* c, const char* p, size_t n, double now);
  void FlushToClient(Conn* c, double now);
  void FlushToServer(Conn* c, double now);
  void ShutClientIfDone(Conn* c);
  void ShutServerIfDone(Conn* c);
  void MaybeDone(Conn* c);
  void IdleExpired(Conn* c, Timer* t, double now);

  Hub* hub_;
  int index_;
  std::atomic<uint64_t>* next_seq_;
  std::unique_ptr<char[]> buf_;
  int epfd_ = -1;
  int wakefd_ = -1;
  std::thread thread_;
  std::atomic<double> tid_{0};
  bool stopping_ = false;          // Shutdown asked the thread to end
  std::atomic<bool> dead_{false};  // the thread ended on its own (Die)
  std::atomic<double> cpu_final_{0};
  bool dispatching_ = false;
  double sleep_until_ = 0;  // the deadline the thread sleeps towards (+inf: none)
  double accepted_total_ = 0;
  Faults faults_;

  uint64_t next_listener_key_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> grave_;
  std::unordered_map<uint64_t, Listener> listeners_;
  std::vector<Timer*> heap_;  // min-heap on `at` of every scheduled deadline
  std::vector<Ev> pending_;
  std::deque<Ev> outbox_;  // published, not yet taken by the hub
  std::mutex inbox_mu_;
  std::vector<Cmd> inbox_;     // commands from JS, under inbox_mu_
  std::vector<Cmd> running_;   // the inbox RunCommands took (the thread's own; swapped back, so both keep their capacity)
  bool inbox_closed_ = false;  // under inbox_mu_: the thread died or stops; Enqueue refuses
};

}  // namespace etd

#endif  // ETD_ENGINE_H_
