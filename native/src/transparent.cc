// etd_transparent addon: creates transparent (IP_TRANSPARENT) TCP socket fds for Node to wrap; nothing else.
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

#include <napi.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

namespace {

// Owns an fd until released; closes it otherwise. Errno-neutral, so an error can be
// reported after the guard has closed the fd.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() {
    if (fd_ >= 0) {
      int saved = errno;
      close(fd_);
      errno = saved;
    }
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name != nullptr ? name : "EUNKNOWN";
}

std::string HostPort(int family, const std::string& address, int port) {
  return family == 6 ? "[" + address + "]:" + std::to_string(port) : address + ":" + std::to_string(port);
}

constexpr const char* kCapHint = "etd needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant the capabilities)";

// What the operator should do about `err` from `syscall`. Falls back to strerror.
std::string Hint(int err, const std::string& syscall, int family, const std::string& address, int port,
                 bool listener) {
  bool sockopt = syscall.rfind("setsockopt", 0) == 0;
  if (sockopt && (err == EPERM || err == EACCES)) return kCapHint;
  if (sockopt && (err == ENOPROTOOPT || err == EINVAL))
    return std::string(strerror(err)) + ": this kernel does not support " + syscall.substr(11, syscall.size() - 12);
  if (syscall == "socket") {
    if (err == EAFNOSUPPORT) return "IPv6 is disabled on this host (ipv6.disable=1 or no IPv6 support in the kernel)";
    if (err == EMFILE || err == ENFILE)
      return "out of file descriptors: raise the open-files limit (LimitNOFILE= in the systemd unit, ulimit -n)";
    if (err == ENOBUFS || err == ENOMEM) return "the kernel is out of memory for sockets";
  }
  if (syscall == "bind") {
    std::string where = HostPort(family, address, port);
    if (err == EADDRINUSE)
      return where + " is already in use: another process holds it (find it with: ss -ltnp 'sport = :" +
             std::to_string(port) + "')";
    if (err == EACCES || err == EPERM)
      return listener ? "binding port " + std::to_string(port) +
                            " needs CAP_NET_BIND_SERVICE (run as root or grant the capability)"
                      : kCapHint;
    if (err == EADDRNOTAVAIL)
      return address + " cannot be bound on this host (for IPv6: is the address family enabled on an interface?)";
    if (err == EINVAL) return "the socket is already bound, or " + address + " is not a usable address";
  }
  if (syscall == "listen" && err == EADDRINUSE)
    return HostPort(family, address, port) + " is already in use: another process holds it";
  if (syscall == "close" && err == EBADF) return "the fd is not open (was it already closed or handed to Node?)";
  return strerror(err);
}

// Where a failure happened: `shown` follows the syscall name in the message ("10.0.0.1:25",
// "fd 7"; empty for nothing); `address` (when non-null) and `port` (when >= 0) become
// properties of the error, as on Node's own errors.
struct Where {
  std::string shown;
  const std::string* address;
  int port;
};

const Where kNowhere{"", nullptr, -1};

// Throws a Node-style system error into JS: "<syscall>[ <where>]: <CODE> — <hint>".
void ThrowSys(Napi::Env env, int err, const std::string& syscall, const std::string& hint, const Where& where) {
  std::string message = syscall + (where.shown.empty() ? "" : " " + where.shown) + ": " + ErrnoName(err) + " — " + hint;
  Napi::Error e = Napi::Error::New(env, message);
  Napi::Object o = e.Value();
  o.Set("code", Napi::String::New(env, ErrnoName(err)));
  o.Set("errno", Napi::Number::New(env, -err));
  o.Set("syscall", Napi::String::New(env, syscall));
  if (where.address != nullptr) o.Set("address", Napi::String::New(env, *where.address));
  if (where.port >= 0) o.Set("port", Napi::Number::New(env, where.port));
  e.ThrowAsJavaScriptException();
}

// A number the way JS prints it (5, 1.5, NaN, Infinity), for argument errors.
std::string ShowNumber(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[32];
  snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

const char* TypeName(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "boolean";
    case napi_number: return "number";
    case napi_string: return "string";
    case napi_symbol: return "symbol";
    case napi_object: return "object";
    case napi_function: return "function";
    case napi_external: return "external";
    case napi_bigint: return "bigint";
  }
  return "unknown";
}

// Argument readers: on failure they throw (TypeError for the wrong type, RangeError for a
// value out of range) and return false; the caller returns undefined at once.
bool CheckArity(const Napi::CallbackInfo& info, size_t n, const char* signature) {
  if (info.Length() == n) return true;
  Napi::TypeError::New(info.Env(), std::string(signature) + ": expected " + std::to_string(n) +
                                       " arguments, got " + std::to_string(info.Length()))
      .ThrowAsJavaScriptException();
  return false;
}

bool GetInt(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, double min,
            double max, int64_t* out) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(signature) + ": " + name + " must be a number, got " + TypeName(v))
        .ThrowAsJavaScriptException();
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < min || d > max) {
    char range[96];
    snprintf(range, sizeof range, "an integer from %.0f to %.0f", min, max);
    Napi::RangeError::New(info.Env(),
                          std::string(signature) + ": " + name + " must be " + range + ", got " + ShowNumber(d))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

bool GetFamily(const Napi::CallbackInfo& info, size_t i, const char* signature, int* out) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(signature) + ": family must be the number 4 or 6, got " + TypeName(v))
        .ThrowAsJavaScriptException();
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != 4 && d != 6) {
    Napi::RangeError::New(info.Env(), std::string(signature) + ": family must be 4 or 6, got " + ShowNumber(d))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int>(d);
  return true;
}

bool GetString(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, std::string* out) {
  Napi::Value v = info[i];
  if (!v.IsString()) {
    Napi::TypeError::New(info.Env(), std::string(signature) + ": " + name + " must be a string, got " + TypeName(v))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

// Parses `address` as a literal of `family` (no names, no scope ids). On failure throws an
// EINVAL-shaped error naming the address; no fd exists yet at that point.
bool ParseAddress(Napi::Env env, int family, const std::string& address, int port, sockaddr_storage* ss,
                  socklen_t* len) {
  std::memset(ss, 0, sizeof *ss);
  int ok;
  if (family == 4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    ok = inet_pton(AF_INET, address.c_str(), &sin->sin_addr);
    *len = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    ok = inet_pton(AF_INET6, address.c_str(), &sin6->sin6_addr);
    *len = sizeof(sockaddr_in6);
  }
  if (ok == 1 && address.find('\0') == std::string::npos) return true;
  std::string hint = "\"" + address + "\" is not a valid IPv" + std::to_string(family) +
                     " address literal (IPv" + std::to_string(family) +
                     (family == 4 ? " like 192.0.2.1; an IPv4-mapped ::ffff:a.b.c.d must be unmapped first)"
                                  : " like 2001:db8::1; no zone ids)");
  ThrowSys(env, EINVAL, "inet_pton", hint, Where{"", &address, -1});
  return false;
}

// setsockopt(int) with the option's name in the error, e.g. syscall 'setsockopt(IP_TRANSPARENT)'.
bool SetIntOpt(Napi::Env env, int fd, int level, int opt, const char* optName, int value, int family,
               const std::string& address) {
  if (setsockopt(fd, level, opt, &value, sizeof value) == 0) return true;
  int err = errno;
  std::string syscall = std::string("setsockopt(") + optName + ")";
  ThrowSys(env, err, syscall, Hint(err, syscall, family, address, -1, false), kNowhere);
  return false;
}

bool OpenSocket(Napi::Env env, int family, const std::string& address, int* fd) {
  *fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (*fd >= 0) return true;
  int err = errno;
  ThrowSys(env, err, "socket", Hint(err, "socket", family, address, -1, false), kNowhere);
  return false;
}

bool SetTransparent(Napi::Env env, int fd, int family, const std::string& address) {
  return family == 4 ? SetIntOpt(env, fd, SOL_IP, IP_TRANSPARENT, "IP_TRANSPARENT", 1, family, address)
                     : SetIntOpt(env, fd, SOL_IPV6, IPV6_TRANSPARENT, "IPV6_TRANSPARENT", 1, family, address);
}

bool Bind(Napi::Env env, int fd, const sockaddr_storage& ss, socklen_t len, int family, const std::string& address,
          int port, bool listener) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0) return true;
  int err = errno;
  ThrowSys(env, err, "bind", Hint(err, "bind", family, address, port, listener),
           Where{HostPort(family, address, port), &address, port});
  return false;
}

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
  if (!SetTransparent(env, fd.get(), family, address)) return env.Undefined();
  if (!SetIntOpt(env, fd.get(), SOL_IP, IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT", 1, family, address))
    return env.Undefined();
  // SO_MARK takes an unsigned 32-bit value; the int cast keeps the bit pattern.
  if (mark > 0 &&
      !SetIntOpt(env, fd.get(), SOL_SOCKET, SO_MARK, "SO_MARK", static_cast<int>(static_cast<uint32_t>(mark)), family,
                 address))
    return env.Undefined();
  if (synCount > 0 &&
      !SetIntOpt(env, fd.get(), IPPROTO_TCP, TCP_SYNCNT, "TCP_SYNCNT", static_cast<int>(synCount), family, address))
    return env.Undefined();
  if (!Bind(env, fd.get(), ss, len, family, address, 0, false)) return env.Undefined();
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

  sockaddr_storage ss;
  socklen_t len;
  if (!ParseAddress(env, family, address, static_cast<int>(port), &ss, &len)) return env.Undefined();

  int raw;
  if (!OpenSocket(env, family, address, &raw)) return env.Undefined();
  FdGuard fd(raw);
  if (!SetIntOpt(env, fd.get(), SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR", 1, family, address)) return env.Undefined();
  if (!SetTransparent(env, fd.get(), family, address)) return env.Undefined();
  if (family == 6 && !SetIntOpt(env, fd.get(), SOL_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY", 1, family, address))
    return env.Undefined();
  if (!Bind(env, fd.get(), ss, len, family, address, static_cast<int>(port), true)) return env.Undefined();
  if (listen(fd.get(), static_cast<int>(backlog)) != 0) {
    int err = errno;
    int p = static_cast<int>(port);
    ThrowSys(env, err, "listen", Hint(err, "listen", family, address, p, true), Where{HostPort(family, address, p), &address, p});
    return env.Undefined();
  }
  return Napi::Number::New(env, fd.release());
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("transparentSocket", Napi::Function::New(env, TransparentSocket, "transparentSocket"));
  exports.Set("transparentListener", Napi::Function::New(env, TransparentListener, "transparentListener"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  return exports;
}

}  // namespace

NODE_API_MODULE(etd_transparent, Init)
