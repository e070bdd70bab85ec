// The transparent-socket half of the etd_transparent addon: transparent (IP_TRANSPARENT) TCP socket fds for Node to wrap.
//
// Surface (typed in src/native/transparent.ts, the only caller):
//   transparentSocket(family, address, mark, synCount) -> fd   spoofed-source upstream socket, bound, unconnected
//   transparentListener(family, address, port, backlog) -> fd  transparent listening socket
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
#include <string>

namespace etd {

namespace {

constexpr const char* kSocketSig = "transparentSocket(family, address, mark, synCount)";
constexpr const char* kListenerSig = "transparentListener(family, address, port, backlog)";
constexpr const char* kCloseSig = "closeFd(fd)";

// Spoofed-source upstream socket: bound to (address, port 0) with the port chosen at connect
// time (IP_BIND_ADDRESS_NO_PORT), so the client's own port is never reused (conntrack
// collision) and ephemeral ports are shared per destination. Not connected: Node connects it.
Napi::Value TransparentSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  int64_t mark, synCount;
  if (!CheckArity(info, 4, kSocketSig) || !GetFamily(info, 0, kSocketSig, &family) ||
      !GetString(info, 1, kSocketSig, "address", &address) ||
      !GetInt(info, 2, kSocketSig, "mark", 0, 4294967295.0, &mark) ||
      !GetInt(info, 3, kSocketSig, "synCount", 0, 127, &synCount))
    return env.Undefined();

  sockaddr_storage ss;
  socklen_t len;
  if (!ParseAddress(env, family, address, 0, &ss, &len)) return env.Undefined();

  int raw;
  if (!OpenSocket(env, family, address, &raw)) return env.Undefined();
  FdGuard fd(raw);
  if (!PrepareSpoofedSource(env, fd.get(), family, address, ss, len, static_cast<uint32_t>(mark),
                            static_cast<int>(synCount)))
    return env.Undefined();
  return Napi::Number::New(env, fd.release());
}

// Transparent listening socket: accepts connections addressed to non-local addresses that
// netfilter (TPROXY) steers to it, and its accepted sockets report the original destination
// via getsockname. IPv6 listeners are v6-only so they never see IPv4-mapped peers.
Napi::Value TransparentListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  int64_t port, backlog;
  if (!CheckArity(info, 4, kListenerSig) || !GetFamily(info, 0, kListenerSig, &family) ||
      !GetString(info, 1, kListenerSig, "address", &address) ||
      !GetInt(info, 2, kListenerSig, "port", 0, 65535, &port) ||
      !GetInt(info, 3, kListenerSig, "backlog", 1, 2147483647.0, &backlog))
    return env.Undefined();

  int fd = OpenListener(env, family, address, static_cast<int>(port), static_cast<int>(backlog), true, true);
  return fd < 0 ? env.Undefined() : Napi::Number::New(env, fd);
}

// close(2) for an fd this addon returned that was never handed to Node. Not retried on
// EINTR: on Linux the fd is released even then, and a retry could close someone else's fd.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!CheckArity(info, 1, kCloseSig) || !GetInt(info, 0, kCloseSig, "fd", 0, 2147483647.0, &fd))
    return env.Undefined();
  if (close(static_cast<int>(fd)) != 0 && errno != EINTR) {
    int err = errno;
    ThrowSys(env, err, "close", Hint(err, "close", 4, "", -1, false), Where{"fd " + std::to_string(fd), nullptr, -1});
  }
  return env.Undefined();
}

}  // namespace

void RegisterTransparent(Napi::Env env, Napi::Object exports) {
  exports.Set("transparentSocket", Napi::Function::New(env, TransparentSocket, "transparentSocket"));
  exports.Set("transparentListener", Napi::Function::New(env, TransparentListener, "transparentListener"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
}

}  // namespace etd
