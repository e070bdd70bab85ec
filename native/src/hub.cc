// The engine threads of one Node environment and the one queue to JS (hub.h): lifecycle, the drain, and the event tuples handed to JS.

#include "hub.h"

#include "common.h"

#include <napi.h>

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace etd {

// ----- lifecycle -----------------------------------------------------------------------------

// glibc gives each thread that mallocs its own arena; the engine threads' connections then sit in
// arenas apart from the rest, and the held-connection bench measured 1,023 bytes of RSS per held
// connection against 640 with MALLOC_ARENA_MAX=1 from the start (833 with 2), and 876 with this
// call, which cannot merge the arenas threads made before it. One arena for the threads made from here
// on (glibc's per-thread tcache keeps the common small allocations off the arena lock), unless
// the operator chose with MALLOC_ARENA_MAX.
static void OneMallocArena() {
  static bool done = false;
  if (done) return;
  done = true;
  const char* chosen = getenv("MALLOC_ARENA_MAX");
  if (chosen == nullptr || *chosen == '\0') mallopt(M_ARENA_MAX, 1);
}

bool Hub::Start(Napi::Env env, Napi::Function callback, int threads) {
  OneMallocArena();
  int rc = uv_async_init(loop_, &async_, OnAsync);
  if (rc != 0) {
    Napi::Error::New(env, std::string("engineStart: uv_async_init failed: ") + uv_strerror(rc)).ThrowAsJavaScriptException();
    return false;
  }
  async_.data = this;
  handle_open_ = true;
  napi_value resource = Napi::Object::New(env);
  napi_value name = Napi::String::New(env, "etd:engine");
  if (napi_async_init(env, resource, name, &async_ctx_) != napi_ok) async_ctx_ = nullptr;
  // Tears the engine down with the environment (an environment that exits without engineStop).
  if (napi_add_async_cleanup_hook(env, OnEnvCleanup, this, &hook_) != napi_ok) hook_ = nullptr;
  callback_ = Napi::Persistent(callback);
  for (int i = 0; i < threads; i++) {
    if (!StartThread(env, i)) {
      Stop();  // closes the handle; the object frees itself
      return false;
    }
  }
  return true;
}

bool Hub::StartThread(Napi::Env env, int index) {
  if (index < 0 || index > Size() || index >= kMaxThreads) {
    Napi::RangeError::New(env, "engineThreadStart(thread): thread must be 0.." +
                                   std::to_string(Size() < kMaxThreads ? Size() : kMaxThreads - 1) + ", got " + std::to_string(index))
        .ThrowAsJavaScriptException();
    return false;
  }
  if (index < Size() && !threads_[index]->dead()) {
    Napi::Error::New(env, "engineThreadStart(thread): thread " + std::to_string(index) + " is running").ThrowAsJavaScriptException();
    return false;
  }
  auto e = std::make_unique<Engine>(this, index, &slot_->next_seq);
  if (!e->Start(env)) return false;
  if (index == Size()) {
    threads_.push_back(std::move(e));
  } else {
    threads_[index]->Reap();
    // Freed after the drain under way (it may still hold the old engine's undecided ids).
    retired_.push_back(std::move(threads_[index]));
    threads_[index] = std::move(e);
    if (!draining_) retired_.clear();
  }
  return true;
}

void Hub::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (slot_ != nullptr) {
    slot_->hub = nullptr;
    slot_ = nullptr;
  }
  // Plain closes: the process is going away or etd is stopping; no events.
  for (auto& e : threads_) e->Shutdown();
  for (auto& e : retired_) e->Shutdown();
  if (!draining_) {
    threads_.clear();
    retired_.clear();
  }
  if (handle_open_) uv_close(reinterpret_cast<uv_handle_t*>(&async_), OnClosed);
  if (async_ctx_ != nullptr) napi_async_destroy(env_, async_ctx_);
  async_ctx_ = nullptr;
  callback_.Reset();
  if (!handle_open_) {
    if (hook_ != nullptr) napi_remove_async_cleanup_hook(hook_);
    delete this;
  }
}

void Hub::OnClosed(uv_handle_t* handle) {
  auto* h = static_cast<Hub*>(handle->data);
  if (h->hook_ != nullptr) napi_remove_async_cleanup_hook(h->hook_);
  delete h;
}

void Hub::OnEnvCleanup(napi_async_cleanup_hook_handle, void* data) {
  // The hook stays registered until OnClosed removes it, which tells Node the teardown may go on.
  static_cast<Hub*>(data)->Stop();
}

// ----- the drain -----------------------------------------------------------------------------

void Hub::OnAsync(uv_async_t* handle) { static_cast<Hub*>(handle->data)->Drain(); }

// Every thread's outbox in one batch (at most kDrainMax events, shared fairly between the
// threads; a drain that leaves events signals itself again, so the loop runs timers and I/O in
// between), one JS call; then each thread is told (in its inbox, behind the commands of the
// callback) to reset the connections JS left `new` (a handler that threw, or did not answer in
// the callback, would leave them held forever).
void Hub::Drain() {
  if (stopped_) return;
  std::vector<Ev> batch;
  const int n = Size();
  std::vector<char> left(static_cast<size_t>(n), 0);
  size_t share = n > 0 ? kDrainMax / static_cast<size_t>(n) : kDrainMax;
  for (int pass = 0; pass < 2 && batch.size() < kDrainMax; pass++) {
    for (int t = 0; t < n; t++) {
      size_t room = kDrainMax - batch.size();
      Engine* e = At(t);
      std::lock_guard<std::mutex> lock(e->mu);
      left[static_cast<size_t>(t)] = e->TakeOutbox(&batch, pass == 0 ? std::min(share, room) : room);
    }
  }
  bool more = std::find(left.begin(), left.end(), 1) != left.end();
  if (batch.empty()) return;
  // The connections announced in this batch, by thread: JS must have given each a command.
  std::vector<std::vector<uint64_t>> accepted(static_cast<size_t>(n));
  for (const Ev& ev : batch)
    if (ev.type == EV_ACCEPT) accepted[static_cast<size_t>(ThreadOf(ev.id))].push_back(ev.id);
  draining_ = true;
  CallJs(&batch);
  draining_ = false;
  if (!stopped_) {
    for (int t = 0; t < n && t < Size(); t++) {
      if (accepted[static_cast<size_t>(t)].empty()) continue;
      // Behind the commands JS gave in the callback (a thread restarted in it has none of these ids: nothing to settle).
      Cmd settle{Cmd::kSettle};
      settle.ids = std::move(accepted[static_cast<size_t>(t)]);
      At(t)->Enqueue(std::move(settle));
    }
    if (more) Signal();
  }
  // What a restart or a stop inside the callback left for after it.
  retired_.clear();
  if (stopped_) threads_.clear();
}

// Event strings are nearly always ASCII (addresses, causes, codes): latin1 skips V8's UTF-8
// decoder (perf: string creation 0.6 % -> 0.2 % of etd's CPU under the sessions load).
static napi_value JsString(napi_env env, const std::string& v) {
  bool ascii = true;
  for (unsigned char ch : v) ascii &= ch < 0x80;
  napi_value out = nullptr;
  if (ascii)
    napi_create_string_latin1(env, v.data(), v.size(), &out);
  else
    napi_create_string_utf8(env, v.data(), v.size(), &out);
  return out;
}

// Each event becomes one array (protocol.ts EngineEvent); the batch one array of them.
void Hub::CallJs(std::vector<Ev>* batch) {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  Napi::Array arr = Napi::Array::New(env, batch->size());
  uint32_t i = 0;
  for (Ev& ev : *batch) {
    auto num = [&](double d) -> napi_value { return Napi::Number::New(env, d); };
    auto str = [&](const std::string& v) -> napi_value { return JsString(env_, v); };
    // The second field: the connection id; for EV_ERROR the listener id, for EV_THREAD the thread.
    napi_value t[8] = {num(ev.type), num(ev.type == EV_ERROR ? ev.n1 : static_cast<double>(ev.id))};  // ≤ 8 fields
    uint32_t n = 2;
    auto add = [&](std::initializer_list<napi_value> vs) {
      for (napi_value v : vs) t[n++] = v;
    };
    switch (ev.type) {
      case EV_ACCEPT:  // listenerId, family, peerAddress, peerPort, localAddress, localPort
        add({num(ev.n1), num(ev.i1), str(ev.s1), num(ev.i2), str(ev.s2), num(ev.n2)});
        break;
      case EV_TALK:  // afterMs, evidence, bytes, stage, bytesToClient
        add({num(ev.n1), Napi::Buffer<char>::Copy(env, ev.s1.data(), ev.s1.size()), num(ev.n2), str(ev.s2), num(ev.n3)});
        break;
      case EV_GONE:  // cause
        add({str(ev.s1)});
        break;
      case EV_EXPIRED:  // heldMs
        add({num(ev.n1)});
        break;
      case EV_UPSTREAM_FAILED:  // stage, code, elapsedMs
        add({str(ev.s1), str(ev.s2), num(ev.n1)});
        break;
      case EV_GREETING:  // code, connectMs, relaying
        add({str(ev.s1), num(ev.n1), num(ev.i1)});
        break;
      case EV_END:  // cause, bytesFromClient, bytesToClient
        add({str(ev.s1), num(ev.n1), num(ev.n2)});
        break;
      case EV_ERROR:  // syscall, code (the listener id is in place of the connection id)
        add({str(ev.s1), str(ev.s2)});
        break;
      case EV_PROTOCOL:  // test, evidence, ended, bytesFromClient, bytesToClient
        add({str(ev.s1), Napi::Buffer<char>::Copy(env, ev.s2.data(), ev.s2.size()), num(ev.i1), num(ev.n1), num(ev.n2)});
        break;
      case EV_THREAD:  // syscall, code, connections lost, of them held, of them relaying (the thread in place of the id)
        add({str(ev.s1), str(ev.s2), num(ev.n1), num(ev.n2), num(ev.n3)});
        break;
    }
    Napi::Array a = Napi::Array::New(env, n);
    for (uint32_t k = 0; k < n; k++) a.Set(k, t[k]);
    arr.Set(i++, a);
  }
  batch->clear();
  napi_value argv[1] = {arr};
  napi_value result;
  // napi_make_callback wants an object as receiver (undefined would throw a TypeError).
  napi_status status = napi_make_callback(env_, async_ctx_, env.Global(), callback_.Value(), 1, argv, &result);
  if (status == napi_ok) return;
  bool pending = false;
  napi_is_exception_pending(env_, &pending);
  if (!pending) return;  // the environment cannot run JS any more (terminating)
  napi_value exc;
  if (napi_get_and_clear_last_exception(env_, &exc) != napi_ok) return;
  napi_valuetype type;
  // A null "exception" is how a terminating isolate shows up here: nothing to report.
  if (napi_typeof(env_, exc, &type) == napi_ok && (type == napi_null || type == napi_undefined)) return;
  // The handler threw: caught and counted (counts().callbackErrors); the process and the engine
  // go on. TypeScript logs its own handler errors; this is the net under it.
  callback_errors_++;
}

}  // namespace etd
