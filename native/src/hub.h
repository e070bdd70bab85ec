// The engine threads of one Node environment and the one queue to JS (docs/engine.md, Threads): start, grow, restart, stop; drains every
// thread's outbox into one JS call per batch.

#ifndef ETD_HUB_H_
#define ETD_HUB_H_

#include "engine.h"
#include "types.h"

#include <napi.h>
#include <uv.h>

#include <memory>
#include <vector>

namespace etd {

// Events handed to JS per call at most: a drain that leaves more signals itself again, so one
// call never runs for long (about 10 µs of JS per event: ≤ 5 ms) and timers and I/O run between.
constexpr size_t kDrainMax = 512;

class Hub {
 public:
  Hub(napi_env env, uv_loop_t* loop, EnvSlot* slot) : env_(env), loop_(loop), slot_(slot) {}
  Hub(const Hub&) = delete;
  Hub& operator=(const Hub&) = delete;

  // The uv_async handle, the async context, the cleanup hook and `threads` engine threads. Throws into JS and returns false on failure.
  bool Start(Napi::Env env, Napi::Function callback, int threads);
  // Starts thread `index`: the next one (index == Size()), or one that died (its old state is freed first). Throws into JS on failure.
  bool StartThread(Napi::Env env, int index);
  // Stops and joins every thread and closes everything without events; the object frees itself once libuv has closed its handle.
  void Stop();
  void Unlink() { slot_ = nullptr; }

  int Size() const { return static_cast<int>(threads_.size()); }
  Engine* At(int index) const { return index >= 0 && index < Size() ? threads_[index].get() : nullptr; }
  Engine* Route(uint64_t id) const { return At(ThreadOf(id)); }
  // Any thread: the JS thread will drain the outboxes (coalesced by libuv).
  void Signal() { uv_async_send(&async_); }
  double callback_errors() const { return callback_errors_; }

 private:
  static void OnAsync(uv_async_t* handle);
  static void OnClosed(uv_handle_t* handle);
  static void OnEnvCleanup(napi_async_cleanup_hook_handle handle, void* data);
  void Drain();
  void CallJs(std::vector<Ev>* batch);

  napi_env env_;
  uv_loop_t* loop_;
  EnvSlot* slot_;
  uv_async_t async_{};
  bool handle_open_ = false;
  bool stopped_ = false;
  Napi::FunctionReference callback_;
  napi_async_context async_ctx_ = nullptr;
  napi_async_cleanup_hook_handle hook_ = nullptr;
  double callback_errors_ = 0;
  bool draining_ = false;  // inside CallJs: engines replaced or stopped are freed after it
  std::vector<std::unique_ptr<Engine>> threads_;
  std::vector<std::unique_ptr<Engine>> retired_;
};

}  // namespace etd

#endif  // ETD_HUB_H_
