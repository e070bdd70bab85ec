// The native session engine's class (docs/engine.md): its commands, its loop, its per-connection I/O; split across loop.cc, listeners.cc,
// session.cc, relay.cc (binding.cc: N-API).
//
// Every decision stays in TypeScript; the engine only does I/O and reports a few events per
// session, in batches, to one JS callback. It runs on the thread of the Node environment that
// started it: one epoll fd watched by a uv_poll_t on that environment's loop, one uv_timer_t for
// every deadline. No locks, no threads.
//
// Ownership: the engine owns every fd it accepted, every upstream fd it created and every
// listener fd handed to engineListen. Each Conn closes its fds exactly once, in Kill(); a killed
// Conn leaves the id map and the deadline heap at once (so stale epoll events find nothing and
// no deadline outlives it) but its memory lives on in the graveyard until the current uv
// callback or command returns, so no handler ever touches freed memory.

#ifndef ETD_ENGINE_H_
#define ETD_ENGINE_H_

#include "faults.h"
#include "inspect.h"
#include "smtp_guard.h"
#include "types.h"

#include <napi.h>
#include <uv.h>

#include <sys/epoll.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace etd {

class Engine;

// The per-environment slot: profiles outlive engine restarts; the engine pointer is set while running.
struct EnvSlot {
  Engine* engine = nullptr;
  uint64_t next_id = 1;  // connection ids are never reused in an environment, across engine restarts
  std::unordered_map<uint32_t, std::shared_ptr<const Profile>> profiles;
};

// What engineConnect asks for (binding.cc reads it from the options object).
struct ConnectSpec {
  std::shared_ptr<const Profile> profile;
  int family = 4;
  std::string source;  // '' = etd's own address
  int syn_count = 0;
  std::string address;
  int port = 0;
  uint32_t timeout_ms = 0;
  std::string preamble;
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
  double connections = 0, held = 0, relaying = 0, listeners = 0, fds = 0, buffered = 0, deadlines = 0, callback_errors = 0;
};

double NowMs();

class Engine {
 public:
  Engine(napi_env env, uv_loop_t* loop, EnvSlot* slot);
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
  // False after throwing into JS; *done says whether the command applied (state and id fit).
  bool Hold(Napi::Env env, uint64_t id, uint32_t window_ms, std::shared_ptr<const Profile> profile, bool* done);
  bool Connect(Napi::Env env, uint64_t id, const ConnectSpec& spec, bool* done);
  // Bytes written to the client at once, or -1 (unknown id, wrong state, no refused greeting).
  double Reply(uint64_t id, const ReplySpec& spec);
  bool Drop(uint64_t id);
  bool Close(uint64_t id, const std::string& cause);
  const Conn* Inspect(uint64_t id) const { return Find(id); }
  Counts GetCounts() const;
  // After a command made outside a dispatch: frees what it killed.
  void EndCommand() {
    if (!dispatching_) grave_.clear();
  }

 private:
  // ----- loop.cc: lifecycle, dispatch, deadlines, epoll interest, syscalls (listeners.cc: Accept, PauseListener)
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnTimer(uv_timer_t* handle);
  static void OnClosed(uv_handle_t* handle);
  static void OnEnvCleanup(napi_async_cleanup_hook_handle handle, void* data);

  void HandleEvent(const epoll_event& ev, double now);
  void HandleDeadline(Timer* t, double now);
  void EndDispatch();
  void Flush();
  void CallJs(std::vector<Ev>* batch);  // binding.cc
  void Push(Ev ev);

  void Schedule(Timer* t, Kind kind, uint64_t owner, double at);
  void Unschedule(Timer* t);
  void SetStateTimer(Conn* c, Kind kind, uint32_t ms, double now);  // replaces the state's bound
  void HeapUp(size_t i);
  void HeapDown(size_t i);
  void HeapSet(size_t i, Timer* t) {
    heap_[i] = t;
    t->idx = static_cast<uint32_t>(i);
  }
  void StartTimer(double at);
  void Arm();

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
  double callback_errors_ = 0;
  Faults faults_;

  uint64_t next_id_ = 1;
  uint64_t next_listener_key_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> grave_;
  std::unordered_map<uint64_t, Listener> listeners_;
  std::vector<Timer*> heap_;  // min-heap on `at` of every scheduled deadline
  std::vector<Ev> pending_;
  std::vector<uint64_t> accepted_;  // ids announced in the batch being built
};

}  // namespace etd

#endif  // ETD_ENGINE_H_
