// The engine's N-API binding: argument and option-object readers, the event tuples handed to JS, the per-environment slot, the exports.

#include "addon.h"
#include "common.h"
#include "engine.h"
#include "hub.h"

#include <napi.h>

#include <cerrno>
#include <mutex>
#include <string>
#include <vector>

namespace etd {
namespace {

// Profile limits (docs/engine.md, Profiles).
constexpr double kMaxGreetingBytes = 1 << 20;
constexpr double kMaxEarlyBytes = 1 << 24;

EnvSlot* Slot(Napi::Env env) { return env.GetInstanceData<EnvSlot>(); }

Hub* Running(Napi::Env env) {
  EnvSlot* slot = Slot(env);
  return slot == nullptr ? nullptr : slot->hub;
}

void FinalizeSlot(Napi::Env, EnvSlot* slot) {
  if (slot->hub != nullptr) slot->hub->Unlink();  // the cleanup hook stops it
  delete slot;
}

bool ReadProfileRef(Napi::Env env, const Napi::Value& v, const char* sig, std::shared_ptr<const Profile>* out) {
  int64_t idx;
  if (!ReadInt(env, v, sig, "profile", 0, 65535, &idx)) return false;
  EnvSlot* slot = Slot(env);
  auto it = slot->profiles.find(static_cast<uint32_t>(idx));
  if (it == slot->profiles.end()) {
    Napi::RangeError::New(env, std::string(sig) + ": profile " + std::to_string(idx) + " is not defined (call engineProfile first)")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = it->second;
  return true;
}

// Runs a command on the engine thread that owns connection `id`, with its lock held, then frees
// what it killed and hands its events on; `idle` when the engine is not started or the thread is gone.
template <typename F>
Napi::Value Command(Napi::Env env, uint64_t id, Napi::Value idle, F&& fn) {
  Hub* hub = Running(env);
  Engine* e = hub == nullptr ? nullptr : hub->Route(id);
  if (e == nullptr) return idle;
  std::lock_guard<std::mutex> lock(e->mu);
  Napi::Value out = fn(e);
  e->EndCommand();
  return out;
}

// Queues a command for the engine thread that owns connection `id`: true when that thread runs
// (it applies the command at its next wakeup, or ignores it if the connection has ended or moved
// on meanwhile; the event that explains it reaches JS), false when no thread of it runs.
Napi::Value Queue(Napi::Env env, Cmd cmd) {
  Hub* hub = Running(env);
  Engine* e = hub == nullptr ? nullptr : hub->Route(cmd.id);
  return Napi::Boolean::New(env, e != nullptr && e->Enqueue(std::move(cmd)));
}

constexpr const char* kThreadSigs = "thread";

// Engine thread `thread` when it runs; otherwise throws into JS (naming `sig`) and returns null.
Engine* RunningThread(Napi::Env env, const char* sig, int thread) {
  Hub* hub = Running(env);
  if (hub == nullptr) {
    Napi::Error::New(env, std::string(sig) + ": the engine is not started (call engineStart first)").ThrowAsJavaScriptException();
    return nullptr;
  }
  Engine* e = hub->At(thread);
  if (e == nullptr || e->dead()) {
    Napi::Error::New(env, std::string(sig) + ": thread " + std::to_string(thread) + " is not running").ThrowAsJavaScriptException();
    return nullptr;
  }
  return e;
}
bool GetThread(const Napi::CallbackInfo& info, size_t i, const char* sig, int* out) {
  int64_t v;
  if (!GetInt(info, i, sig, kThreadSigs, 0, kMaxThreads - 1, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

bool GetId(const Napi::CallbackInfo& info, const char* sig, uint64_t* id) {
  int64_t v;
  if (!GetInt(info, 0, sig, "id", 0, kMaxId, &v)) return false;
  *id = static_cast<uint64_t>(v);
  return true;
}

// (id, { ... }): the arguments of the commands that take an options object.
bool GetIdOptions(const Napi::CallbackInfo& info, const char* sig, const char* name, uint64_t* id, Napi::Object* o) {
  return CheckArity(info, 2, sig) && GetId(info, sig, id) && GetOptions(info, 1, sig, name, o);
}

bool ReadMs(Napi::Env env, const Napi::Object& o, const char* sig, const char* name, double min, uint32_t* out) {
  int64_t v;
  if (!ReadInt(env, o.Get(name), sig, name, min, kMaxMs, &v)) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

bool ReadSize(Napi::Env env, const Napi::Object& o, const char* sig, const char* name, double min, double max, uint32_t* out) {
  int64_t v;
  if (!ReadInt(env, o.Get(name), sig, name, min, max, &v)) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

constexpr const char* kProfileSig = "engineProfile(idx, profile)";

// Bounds of profile.protocol (docs/engine.md, Profiles).
constexpr double kMaxInspectBytes = 65536;
constexpr size_t kMaxProtocolCommands = 64;
constexpr size_t kMaxCommandLength = 32;

bool ReadTestAction(Napi::Env env, const Napi::Object& o, const char* name, TestAction* out) {
  std::string v;
  if (!ReadString(env, o.Get(name), kProfileSig, name, &v)) return false;
  if (v == "ignore") {
    *out = TestAction::Ignore;
  } else if (v == "log") {
    *out = TestAction::Log;
  } else if (v == "reject") {
    *out = TestAction::Reject;
  } else if (v == "drop") {
    *out = TestAction::Drop;
  } else {
    Napi::RangeError::New(env,
                          std::string(kProfileSig) + ": protocol." + name + " must be 'ignore', 'log', 'reject' or 'drop', got '" + v + "'")
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// profile.protocol: the inline protocol tests (inspect.h).
bool ReadProtocol(Napi::Env env, const Napi::Value& v, ProtocolTests* t) {
  const char* sig = kProfileSig;
  if (!v.IsObject() || v.IsArray()) {
    Napi::TypeError::New(env, std::string(sig) + ": protocol must be an object, got " + TypeName(v)).ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object o = v.As<Napi::Object>();
  int64_t max_bytes, max_commands;
  if (!ReadTestAction(env, o, "pipelining", &t->pipelining) || !ReadTestAction(env, o, "nonSmtpCommand", &t->non_smtp_command) ||
      !ReadTestAction(env, o, "bareNewline", &t->bare_newline) ||
      !ReadString(env, o.Get("rejectReply"), sig, "protocol.rejectReply", &t->reject_reply) ||
      !ReadInt(env, o.Get("maxBytes"), sig, "protocol.maxBytes", 1, kMaxInspectBytes, &max_bytes) ||
      !ReadInt(env, o.Get("maxCommands"), sig, "protocol.maxCommands", 1, kMaxInspectCommands, &max_commands))
    return false;
  t->max_bytes = static_cast<uint32_t>(max_bytes);
  t->max_commands = static_cast<uint32_t>(max_commands);
  Napi::Value cv = o.Get("commands");
  if (!cv.IsArray() || cv.As<Napi::Array>().Length() > kMaxProtocolCommands) {
    Napi::TypeError::New(env, std::string(sig) + ": protocol.commands must be an array of at most " + std::to_string(kMaxProtocolCommands) +
                                  " strings, got " + TypeName(cv))
        .ThrowAsJavaScriptException();
    return false;
  }
  Napi::Array cmds = cv.As<Napi::Array>();
  for (uint32_t i = 0; i < cmds.Length(); i++) {
    std::string cmd;
    if (!ReadString(env, cmds.Get(i), sig, "protocol.commands[]", &cmd)) return false;
    if (cmd.empty() || cmd.size() > kMaxCommandLength || cmd.find_first_of(" \t\r\n") != std::string::npos) {
      Napi::RangeError::New(env, std::string(sig) + ": protocol.commands[" + std::to_string(i) + "] must be one word of 1 to " +
                                     std::to_string(kMaxCommandLength) + " characters")
          .ThrowAsJavaScriptException();
      return false;
    }
    t->commands.push_back(std::move(cmd));
  }
  return true;
}

bool ReadProfile(Napi::Env env, const Napi::Object& o, Profile* p) {
  const char* sig = kProfileSig;
  std::string action;
  if (!ReadString(env, o.Get("action"), sig, "action", &action)) return false;
  if (action == "drop") {
    p->action = Action::Drop;
  } else if (action == "reject") {
    p->action = Action::Reject;
  } else if (action == "log") {
    p->action = Action::Log;
  } else {
    Napi::RangeError::New(env, std::string(sig) + ": action must be 'drop', 'reject' or 'log', got '" + action + "'")
        .ThrowAsJavaScriptException();
    return false;
  }
  return ReadString(env, o.Get("rejectReply"), sig, "rejectReply", &p->reject_reply) &&
         ReadString(env, o.Get("teaser"), sig, "teaser", &p->teaser) && ReadMs(env, o, sig, "clientIdleMs", 0, &p->client_idle_ms) &&
         ReadMs(env, o, sig, "serverIdleMs", 0, &p->server_idle_ms) &&
         ReadMs(env, o, sig, "greetingTimeoutMs", 0, &p->greeting_timeout_ms) &&
         ReadBool(env, o.Get("stripPipeconnect"), sig, "stripPipeconnect", &p->strip) &&
         ReadSize(env, o, sig, "evidenceBytes", 0, kReadBuffer, &p->evidence_bytes) &&
         ReadSize(env, o, sig, "greetingMaxBytes", 1, kMaxGreetingBytes, &p->greeting_max_bytes) &&
         ReadSize(env, o, sig, "earlyBufferBytes", 1, kMaxEarlyBytes, &p->early_buffer_bytes) &&
         ReadMs(env, o, sig, "replyLingerMs", 0, &p->reply_linger_ms) &&
         ReadMs(env, o, sig, "serverGoneLingerMs", 0, &p->server_gone_linger_ms) &&
         ReadMs(env, o, sig, "deferredReplyMs", 0, &p->deferred_reply_ms) &&
         // Waiting must always end: a decision time of 0 would end it before JS saw the event.
         ReadMs(env, o, sig, "decisionMs", 1, &p->decision_ms) && ReadProtocol(env, o.Get("protocol"), &p->protocol);
}

// ----- functions -----------------------------------------------------------------------------

constexpr const char* kStartSig = "engineStart(onEvents, threads)";
Napi::Value EngineStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t threads;
  if (!CheckArity(info, 2, kStartSig) || !GetInt(info, 1, kStartSig, "threads", 1, kMaxThreads, &threads)) return env.Undefined();
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(env, std::string(kStartSig) + ": onEvents must be a function, got " + TypeName(info[0]))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  EnvSlot* slot = Slot(env);
  if (slot->hub != nullptr) {
    Napi::Error::New(env, std::string(kStartSig) + ": the engine is already started (call engineStop first)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Napi::Error::New(env, std::string(kStartSig) + ": no event loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* hub = new Hub(env, loop, slot);
  slot->hub = hub;
  // On failure Start has stopped the hub, which unlinked itself from the slot and frees itself.
  hub->Start(env, info[0].As<Napi::Function>(), static_cast<int>(threads));
  return env.Undefined();
}

constexpr const char* kThreadStartSig = "engineThreadStart(thread)";
Napi::Value EngineThreadStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int thread;
  if (!CheckArity(info, 1, kThreadStartSig) || !GetThread(info, 0, kThreadStartSig, &thread)) return env.Undefined();
  Hub* hub = Running(env);
  if (hub == nullptr) {
    Napi::Error::New(env, std::string(kThreadStartSig) + ": the engine is not started (call engineStart first)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  hub->StartThread(env, thread);
  return env.Undefined();
}

constexpr const char* kFaultSig = "engineFault(thread, rule)";
Napi::Value EngineFault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int thread;
  std::string rule;
  if (!CheckArity(info, 2, kFaultSig) || !GetThread(info, 0, kFaultSig, &thread) || !GetString(info, 1, kFaultSig, "rule", &rule))
    return env.Undefined();
  Engine* e = RunningThread(env, kFaultSig, thread);
  if (e == nullptr) return env.Undefined();
  std::string error;
  std::lock_guard<std::mutex> lock(e->mu);
  if (!e->InjectFault(rule, &error)) Napi::RangeError::New(env, std::string(kFaultSig) + ": " + error).ThrowAsJavaScriptException();
  return env.Undefined();
}

constexpr const char* kStopSig = "engineStop()";
Napi::Value EngineStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 0, kStopSig)) return env.Undefined();
  if (Hub* hub = Running(env)) hub->Stop();
  return env.Undefined();
}

Napi::Value EngineProfile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t idx;
  Napi::Object o;
  if (!CheckArity(info, 2, kProfileSig) || !GetInt(info, 0, kProfileSig, "idx", 0, 65535, &idx) ||
      !GetOptions(info, 1, kProfileSig, "profile", &o))
    return env.Undefined();
  auto p = std::make_shared<Profile>();
  if (!ReadProfile(env, o, p.get())) return env.Undefined();
  // Connections keep the profile they were given; a redefinition applies to new uses only.
  Slot(env)->profiles[static_cast<uint32_t>(idx)] = std::move(p);
  return env.Undefined();
}

constexpr const char* kListenSig = "engineListen(fd, listenerId, thread)";
Napi::Value EngineListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, lid;
  int thread;
  if (!CheckArity(info, 3, kListenSig) || !GetInt(info, 0, kListenSig, "fd", 0, 2147483647.0, &fd) ||
      !GetInt(info, 1, kListenSig, "listenerId", 0, kMaxId, &lid) || !GetThread(info, 2, kListenSig, &thread))
    return env.Undefined();
  Engine* e = RunningThread(env, kListenSig, thread);
  if (e == nullptr) return env.Undefined();
  std::lock_guard<std::mutex> lock(e->mu);
  e->Listen(env, static_cast<int>(fd), static_cast<double>(lid));
  e->EndCommand();
  return env.Undefined();
}

constexpr const char* kUnlistenSig = "engineUnlisten(listenerId)";
Napi::Value EngineUnlisten(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t lid;
  if (!CheckArity(info, 1, kUnlistenSig) || !GetInt(info, 0, kUnlistenSig, "listenerId", 0, kMaxId, &lid)) return env.Undefined();
  // Listener ids are unique in the environment: every thread closes its fds of it.
  if (Hub* hub = Running(env))
    for (int i = 0; i < hub->Size(); i++) {
      Engine* e = hub->At(i);
      std::lock_guard<std::mutex> lock(e->mu);
      e->Unlisten(static_cast<double>(lid));
      e->EndCommand();
    }
  return env.Undefined();
}

constexpr const char* kHoldSig = "engineHold(id, { windowMs, profile })";
Napi::Value EngineHold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  Napi::Object o;
  uint32_t window;
  std::shared_ptr<const Profile> profile;
  if (!GetIdOptions(info, kHoldSig, "hold", &id, &o) || !ReadMs(env, o, kHoldSig, "windowMs", 0, &window) ||
      !ReadProfileRef(env, o.Get("profile"), kHoldSig, &profile))
    return env.Undefined();
  Cmd cmd{Cmd::kHold, id};
  cmd.window_ms = window;
  cmd.profile = std::move(profile);
  return Queue(env, std::move(cmd));
}

constexpr const char* kConnectSig = "engineConnect(id, { profile, family, sourceAddress, synCount, address, port, timeoutMs, preamble })";
Napi::Value EngineConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig = kConnectSig;
  uint64_t id;
  Napi::Object o;
  auto spec = std::make_shared<ConnectSpec>();
  std::string source, address;
  int64_t syn_count, port;
  uint32_t timeout;
  if (!GetIdOptions(info, sig, "connect", &id, &o) || !ReadProfileRef(env, o.Get("profile"), sig, &spec->profile) ||
      !ReadFamily(env, o.Get("family"), sig, &spec->family) || !ReadString(env, o.Get("sourceAddress"), sig, "sourceAddress", &source) ||
      !ReadInt(env, o.Get("synCount"), sig, "synCount", 0, 127, &syn_count) ||
      !ReadString(env, o.Get("address"), sig, "address", &address) || !ReadInt(env, o.Get("port"), sig, "port", 1, 65535, &port) ||
      !ReadMs(env, o, sig, "timeoutMs", 0, &timeout) || !ReadBytes(env, o.Get("preamble"), sig, "preamble", &spec->preamble))
    return env.Undefined();
  // The addresses are parsed here (a bad literal throws, naming it); the syscalls run on the engine thread.
  if (!ParseAddress(env, spec->family, address, static_cast<int>(port), &spec->to, &spec->to_len)) return env.Undefined();
  spec->spoof = !source.empty();
  if (spec->spoof && !ParseAddress(env, spec->family, source, 0, &spec->from, &spec->from_len)) return env.Undefined();
  spec->syn_count = static_cast<int>(syn_count);
  spec->timeout_ms = timeout;
  Cmd cmd{Cmd::kConnect, id};
  cmd.connect = std::move(spec);
  return Queue(env, std::move(cmd));
}

constexpr const char* kReplySig = "engineReply(id, { text | greeting, first?, profile? })";
Napi::Value EngineReply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig = kReplySig;
  uint64_t id;
  Napi::Object o;
  if (!GetIdOptions(info, sig, "reply", &id, &o)) return env.Undefined();
  ReplySpec spec;
  Napi::Value text = o.Get("text"), greeting = o.Get("greeting"), first = o.Get("first"), profile = o.Get("profile");
  if (!greeting.IsUndefined() && !ReadBool(env, greeting, sig, "greeting", &spec.greeting)) return env.Undefined();
  if (spec.greeting == !text.IsUndefined()) {
    Napi::TypeError::New(env, std::string(sig) + ": give exactly one of text (a string) and greeting: true").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!spec.greeting && !ReadString(env, text, sig, "text", &spec.text)) return env.Undefined();
  spec.has_first = !first.IsUndefined();
  if (spec.has_first && !ReadString(env, first, sig, "first", &spec.first)) return env.Undefined();
  if (!profile.IsUndefined() && !ReadProfileRef(env, profile, sig, &spec.profile)) return env.Undefined();
  return Command(env, id, Napi::Number::New(env, -1), [&](Engine* e) -> Napi::Value {
    double written = e->Reply(id, spec);
    if (written != -2) return Napi::Number::New(env, written);
    Napi::TypeError::New(
        env, std::string(sig) + ": connection " + std::to_string(id) + " is new and has no profile yet: give reply(id, { ..., profile })")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  });
}

constexpr const char* kDropSig = "engineDrop(id)";
Napi::Value EngineDrop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kDropSig) || !GetId(info, kDropSig, &id)) return env.Undefined();
  return Queue(env, Cmd{Cmd::kDrop, id});
}

constexpr const char* kCloseSig = "engineClose(id, cause)";
Napi::Value EngineClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  std::string cause;
  if (!CheckArity(info, 2, kCloseSig) || !GetId(info, kCloseSig, &id) || !GetString(info, 1, kCloseSig, "cause", &cause))
    return env.Undefined();
  Cmd cmd{Cmd::kClose, id};
  cmd.cause = std::move(cause);
  return Queue(env, std::move(cmd));
}

constexpr const char* kInspectSig = "engineInspect(id)";
Napi::Value EngineInspect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!CheckArity(info, 1, kInspectSig) || !GetId(info, kInspectSig, &id)) return env.Undefined();
  return Command(env, id, env.Null(), [&](Engine* e) -> Napi::Value {
    const Conn* c = e->Inspect(id);
    if (c == nullptr) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("state", StateName(c->st));
    o.Set("bytesFromClient", c->bytes_from_client);
    o.Set("bytesToClient", c->bytes_to_client);
    return o;
  });
}

constexpr const char* kCountsSig = "engineCounts()";
Napi::Value EngineCounts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 0, kCountsSig)) return env.Undefined();
  Hub* hub = Running(env);
  int n = hub == nullptr ? 0 : hub->Size();
  Napi::Array out = Napi::Array::New(env, n);
  for (int i = 0; i < n; i++) {
    Engine* e = hub->At(i);
    Counts k;
    {
      std::lock_guard<std::mutex> lock(e->mu);
      k = e->GetCounts();
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("thread", i);
    o.Set("running", k.running);
    o.Set("tid", k.tid);
    o.Set("cpuMs", e->CpuMs());
    o.Set("accepted", k.accepted);
    o.Set("connections", k.connections);
    o.Set("held", k.held);
    o.Set("relaying", k.relaying);
    o.Set("listeners", k.listeners);
    o.Set("fds", k.fds);
    o.Set("bufferedBytes", k.buffered);
    o.Set("deadlines", k.deadlines);
    out.Set(i, o);
  }
  return out;
}

constexpr const char* kCallbackErrorsSig = "engineCallbackErrors()";
Napi::Value EngineCallbackErrors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArity(info, 0, kCallbackErrorsSig)) return env.Undefined();
  Hub* hub = Running(env);
  return Napi::Number::New(env, hub == nullptr ? 0 : hub->callback_errors());
}

}  // namespace

void RegisterEngine(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<EnvSlot, FinalizeSlot>(new EnvSlot());
  Export(env, exports,
         {{"engineStart", EngineStart},
          {"engineStop", EngineStop},
          {"engineProfile", EngineProfile},
          {"engineListen", EngineListen},
          {"engineUnlisten", EngineUnlisten},
          {"engineHold", EngineHold},
          {"engineConnect", EngineConnect},
          {"engineReply", EngineReply},
          {"engineDrop", EngineDrop},
          {"engineClose", EngineClose},
          {"engineInspect", EngineInspect},
          {"engineCounts", EngineCounts},
          {"engineCallbackErrors", EngineCallbackErrors},
          {"engineThreadStart", EngineThreadStart},
          {"engineFault", EngineFault}});
}

}  // namespace etd
