// The socket helpers of the etd_transparent addon: transparent (IP_TRANSPARENT) and plain listening fds, spoofed-source sockets, sockName,
// closeFd.
//
// Surface (typed in src/native/addon.ts, wrapped by src/native/transparent.ts):
//   transparentSocket(family, address, mark, synCount) -> fd   spoofed-source upstream socket, bound, unconnected
//   transparentListener(family, address, port, backlog, { reusePort }?) -> fd  transparent listening socket
//   plainListener({ family, address, port, backlog, v6only, freebind?, reusePort? }) -> fd  ordinary listening socket (for the engine)
//   sockName(fd) -> [address, port]                             getsockname, v4-mapped shown as v4
//   closeFd(fd)                                                 close(2) an fd that was never handed to Node
//
// fd ownership: inside a call, a new fd is held by an FdGuard, which closes it on every error path
// (the error's errno is saved before the guard runs). On success the guard releases the fd and
// the caller owns it: it either hands it to Node (net.Socket({fd}) / server.listen({fd}), after
// which only Node closes it) or calls closeFd. No fd is ever closed twice: the addon never touches
// an fd after returning it, and closeFd is only for fds Node never saw.
//
// Errors are shaped like Node's own system errors: message, code ('EPERM'), errno (negative:
// -1 for EPERM), syscall ('setsockopt(IP_TRANSPARENT)', 'bind', ...), and address/port where
// they apply. The message says what to do. Wrong argument types throw TypeError, out-of-range
// numbers RangeError, before any syscall is made.

#include "addon.h"
#include "common.h"

#include <napi.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace etd {

namespace {

constexpr const char* kSocketSig = "transparentSocket(family, address, mark, synCount)";
constexpr const char* kListenerSig = "transparentListener(family, address, port, backlog, { reusePort }?)";
constexpr const char* kCloseSig = "closeFd(fd)";
constexpr const char* kSockNameSig = "sockName(fd)";
constexpr const char* kPlainListenerSig = "plainListener({ family, address, port, backlog, v6only, freebind?, reusePort? })";

// An optional boolean field of an options object: absent (undefined) leaves *out as it is.
bool ReadOptionalBool(Napi::Env env, const Napi::Object& o, const char* sig, const char* name, bool* out) {
  Napi::Value v = o.Get(name);
  return v.IsUndefined() || ReadBool(env, v, sig, name, out);
}

// Spoofed-source upstream socket: bound to (address, port 0) with the port chosen at connect
// time (IP_BIND_ADDRESS_NO_PORT), so the client's own port is never reused (conntrack
// collision) and ephemeral ports are shared per destination. Not connected: Node connects it.
Napi::Value TransparentSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  int64_t mark, synCount;
  if (!CheckArity(info, 4, kSocketSig) || !GetFamily(info, 0, kSocketSig, &family) ||
      !GetString(info, 1, kSocketSig, "address", &address) || !GetInt(info, 2, kSocketSig, "mark", 0, 4294967295.0, &mark) ||
      !GetInt(info, 3, kSocketSig, "synCount", 0, 127, &synCount))
    return env.Undefined();

  sockaddr_storage ss;
  socklen_t len;
  if (!ParseAddress(env, family, address, 0, &ss, &len)) return env.Undefined();

  int raw;
  if (!OpenSocket(env, family, address, &raw)) return env.Undefined();
  FdGuard fd(raw);
  if (!PrepareSpoofedSource(env, fd.get(), family, address, ss, len, static_cast<uint32_t>(mark), static_cast<int>(synCount)))
    return env.Undefined();
  return Napi::Number::New(env, fd.release());
}

// Transparent listening socket: accepts connections addressed to non-local addresses that
// netfilter (TPROXY) steers to it, and its accepted sockets report the original destination
// via getsockname. IPv6 listeners are v6-only so they never see IPv4-mapped peers. The optional
// 5th argument `{ reusePort }` sets SO_REUSEPORT (one socket per engine thread on one port).
Napi::Value TransparentListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  int64_t port, backlog;
  ListenerOpts opts;
  opts.transparent = true;
  opts.v6only = true;
  if (info.Length() != 4 && info.Length() != 5) {
    Napi::TypeError::New(env, std::string(kListenerSig) + ": expected 4 or 5 arguments, got " + std::to_string(info.Length()))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o;
  if (!GetFamily(info, 0, kListenerSig, &family) || !GetString(info, 1, kListenerSig, "address", &address) ||
      !GetInt(info, 2, kListenerSig, "port", 0, 65535, &port) || !GetInt(info, 3, kListenerSig, "backlog", 1, 2147483647.0, &backlog) ||
      (info.Length() == 5 && !info[4].IsUndefined() &&
       (!GetOptions(info, 4, kListenerSig, "options", &o) || !ReadOptionalBool(env, o, kListenerSig, "reusePort", &opts.reuse_port))))
    return env.Undefined();

  int fd = OpenListener(env, family, address, static_cast<int>(port), static_cast<int>(backlog), opts);
  return fd < 0 ? env.Undefined() : Napi::Number::New(env, fd);
}

// close(2) for an fd this addon returned that was never handed to Node. Not retried on
// EINTR: on Linux the fd is released even then, and a retry could close someone else's fd.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!CheckArity(info, 1, kCloseSig) || !GetInt(info, 0, kCloseSig, "fd", 0, 2147483647.0, &fd)) return env.Undefined();
  if (close(static_cast<int>(fd)) != 0 && errno != EINTR) {
    int err = errno;
    ThrowSys(env, err, "close", Hint(err, "close", 4, "", -1, false), Where{"fd " + std::to_string(fd), nullptr, -1});
  }
  return env.Undefined();
}

Napi::Value SockName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!CheckArity(info, 1, kSockNameSig) || !GetInt(info, 0, kSockNameSig, "fd", 0, 2147483647.0, &fd)) return env.Undefined();
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
// IP_TRANSPARENT, and v6-only as asked (false = dual-stack, IPv4 peers arrive v4-mapped);
// reusePort sets SO_REUSEPORT.
Napi::Value PlainListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* sig = kPlainListenerSig;
  Napi::Object o;
  int family;
  std::string address;
  int64_t port, backlog;
  ListenerOpts opts;
  if (!CheckArity(info, 1, sig) || !GetOptions(info, 0, sig, "listener", &o) || !ReadFamily(env, o.Get("family"), sig, &family) ||
      !ReadString(env, o.Get("address"), sig, "address", &address) || !ReadInt(env, o.Get("port"), sig, "port", 0, 65535, &port) ||
      !ReadInt(env, o.Get("backlog"), sig, "backlog", 1, 2147483647.0, &backlog) ||
      !ReadBool(env, o.Get("v6only"), sig, "v6only", &opts.v6only) || !ReadOptionalBool(env, o, sig, "freebind", &opts.freebind) ||
      !ReadOptionalBool(env, o, sig, "reusePort", &opts.reuse_port))
    return env.Undefined();
  int fd = OpenListener(env, family, address, static_cast<int>(port), static_cast<int>(backlog), opts);
  return fd < 0 ? env.Undefined() : Napi::Number::New(env, fd);
}

}  // namespace

void RegisterTransparent(Napi::Env env, Napi::Object exports) {
  Export(env, exports,
         {{"transparentSocket", TransparentSocket},
          {"transparentListener", TransparentListener},
          {"closeFd", CloseFd},
          {"sockName", SockName},
          {"plainListener", PlainListener}});
}

}  // namespace etd
