// Implementations of the shared addon helpers declared in common.h (errors, hints, argument readers, socket setup).

#include "common.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace etd {

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name != nullptr ? name : "EUNKNOWN";
}

std::string Lower(const char* s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

std::string HostPort(int family, const std::string& address, int port) {
  return family == 6 ? "[" + address + "]:" + std::to_string(port) : address + ":" + std::to_string(port);
}

namespace {
constexpr const char* kCapHint = "etd needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant the capabilities)";
}  // namespace

std::string Hint(int err, const std::string& syscall, int family, const std::string& address, int port, bool listener) {
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
      return where + " is already in use: another process holds it (find it with: ss -ltnp 'sport = :" + std::to_string(port) + "')";
    if (err == EACCES || err == EPERM)
      return listener ? "binding port " + std::to_string(port) + " needs CAP_NET_BIND_SERVICE (run as root or grant the capability)"
                      : kCapHint;
    if (err == EADDRNOTAVAIL) return address + " cannot be bound on this host (for IPv6: is the address family enabled on an interface?)";
    if (err == EINVAL) return "the socket is already bound, or " + address + " is not a usable address";
  }
  if (syscall == "listen" && err == EADDRINUSE) return HostPort(family, address, port) + " is already in use: another process holds it";
  if (syscall == "close" && err == EBADF) return "the fd is not open (was it already closed or handed to Node?)";
  // Only the engine connects; transparentSocket leaves connect() to Node.
  if (syscall == "connect") {
    std::string where = HostPort(family, address, port);
    if (err == ECONNREFUSED) return "nothing listens on " + where;
    if (err == ENETUNREACH || err == EHOSTUNREACH) return "no route to " + where;
    if (err == EADDRNOTAVAIL)
      return "no local address/port is available to reach " + where + " (ephemeral ports exhausted, or the source address is not usable)";
    if (err == EACCES || err == EPERM) return "a local firewall rule or policy forbids connecting to " + where;
  }
  if (syscall == "epoll_ctl" && (err == ENOMEM || err == ENOSPC))
    return "the kernel refused another epoll watch (raise fs.epoll.max_user_watches or free memory)";
  return strerror(err);
}

const Where kNowhere{"", nullptr, -1};

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

bool CheckArity(const Napi::CallbackInfo& info, size_t n, const char* signature) {
  if (info.Length() == n) return true;
  Napi::TypeError::New(info.Env(),
                       std::string(signature) + ": expected " + std::to_string(n) + " arguments, got " + std::to_string(info.Length()))
      .ThrowAsJavaScriptException();
  return false;
}

bool ReadInt(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, double min, double max, int64_t* out) {
  if (!v.IsNumber()) {
    Napi::TypeError::New(env, std::string(signature) + ": " + name + " must be a number, got " + TypeName(v)).ThrowAsJavaScriptException();
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < min || d > max) {
    char range[96];
    snprintf(range, sizeof range, "an integer from %.0f to %.0f", min, max);
    Napi::RangeError::New(env, std::string(signature) + ": " + name + " must be " + range + ", got " + ShowNumber(d))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

bool ReadFamily(Napi::Env env, const Napi::Value& v, const char* signature, int* out) {
  if (!v.IsNumber()) {
    Napi::TypeError::New(env, std::string(signature) + ": family must be the number 4 or 6, got " + TypeName(v))
        .ThrowAsJavaScriptException();
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != 4 && d != 6) {
    Napi::RangeError::New(env, std::string(signature) + ": family must be 4 or 6, got " + ShowNumber(d)).ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int>(d);
  return true;
}

bool ReadString(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, std::string* out) {
  if (!v.IsString()) {
    Napi::TypeError::New(env, std::string(signature) + ": " + name + " must be a string, got " + TypeName(v)).ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool ReadBool(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, bool* out) {
  if (!v.IsBoolean()) {
    Napi::TypeError::New(env, std::string(signature) + ": " + name + " must be a boolean, got " + TypeName(v)).ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

bool ReadBytes(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, std::string* out) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, std::string(signature) + ": " + name + " must be a Buffer, got " + TypeName(v)).ThrowAsJavaScriptException();
    return false;
  }
  Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
  out->assign(reinterpret_cast<const char*>(bytes.Data()), bytes.ByteLength());
  return true;
}

bool GetInt(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, double min, double max, int64_t* out) {
  return ReadInt(info.Env(), info[i], signature, name, min, max, out);
}

bool GetFamily(const Napi::CallbackInfo& info, size_t i, const char* signature, int* out) {
  return ReadFamily(info.Env(), info[i], signature, out);
}

bool GetString(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, std::string* out) {
  return ReadString(info.Env(), info[i], signature, name, out);
}

bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, bool* out) {
  return ReadBool(info.Env(), info[i], signature, name, out);
}

bool GetOptions(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, Napi::Object* out) {
  Napi::Value v = info[i];
  if (!v.IsObject() || v.IsArray() || v.IsFunction() || v.IsTypedArray()) {
    Napi::TypeError::New(info.Env(), std::string(signature) + ": " + name + " must be an options object, got " + TypeName(v))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::Object>();
  return true;
}

bool ParseAddress(Napi::Env env, int family, const std::string& address, int port, sockaddr_storage* ss, socklen_t* len) {
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
  std::string hint =
      "\"" + address + "\" is not a valid IPv" + std::to_string(family) + " address literal (IPv" + std::to_string(family) +
      (family == 4 ? " like 192.0.2.1; an IPv4-mapped ::ffff:a.b.c.d must be unmapped first)" : " like 2001:db8::1; no zone ids)");
  ThrowSys(env, EINVAL, "inet_pton", hint, Where{"", &address, -1});
  return false;
}

bool SetIntOpt(Napi::Env env, int fd, int level, int opt, const char* optName, int value, int family, const std::string& address) {
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

bool Bind(Napi::Env env, int fd, const sockaddr_storage& ss, socklen_t len, int family, const std::string& address, int port,
          bool listener) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0) return true;
  int err = errno;
  ThrowSys(env, err, "bind", Hint(err, "bind", family, address, port, listener), Where{HostPort(family, address, port), &address, port});
  return false;
}

// Bound to (address, port 0) with the port chosen at connect time (IP_BIND_ADDRESS_NO_PORT), so
// the client's own port is never reused (conntrack collision) and ephemeral ports are shared
// per destination. 0, or the errno with *syscall naming the call that failed (no exception: the
// engine threads call it too).
int SpoofSource(int fd, int family, const sockaddr_storage& source, socklen_t len, uint32_t mark, int synCount, const char** syscall) {
  auto opt = [&](int level, int name, int value, const char* what) {
    if (setsockopt(fd, level, name, &value, sizeof value) == 0) return true;
    *syscall = what;
    return false;
  };
  bool ok = (family == 4 ? opt(SOL_IP, IP_TRANSPARENT, 1, "setsockopt(IP_TRANSPARENT)")
                         : opt(SOL_IPV6, IPV6_TRANSPARENT, 1, "setsockopt(IPV6_TRANSPARENT)")) &&
            opt(SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1, "setsockopt(IP_BIND_ADDRESS_NO_PORT)") &&
            // SO_MARK takes an unsigned 32-bit value; the int cast keeps the bit pattern.
            (mark == 0 || opt(SOL_SOCKET, SO_MARK, static_cast<int>(mark), "setsockopt(SO_MARK)")) &&
            (synCount <= 0 || opt(IPPROTO_TCP, TCP_SYNCNT, synCount, "setsockopt(TCP_SYNCNT)"));
  if (!ok) return errno;
  if (bind(fd, reinterpret_cast<const sockaddr*>(&source), len) == 0) return 0;
  *syscall = "bind";
  return errno;
}

bool PrepareSpoofedSource(Napi::Env env, int fd, int family, const std::string& address, const sockaddr_storage& source, socklen_t len,
                          uint32_t mark, int synCount) {
  const char* syscall = "";
  int err = SpoofSource(fd, family, source, len, mark, synCount, &syscall);
  if (err == 0) return true;
  std::string call(syscall);
  if (call == "bind")
    ThrowSys(env, err, call, Hint(err, call, family, address, 0, false), Where{HostPort(family, address, 0), &address, 0});
  else
    ThrowSys(env, err, call, Hint(err, call, family, address, -1, false), kNowhere);
  return false;
}

bool FormatAddress(const sockaddr_storage& ss, int* family, std::string* address, int* port) {
  char text[INET6_ADDRSTRLEN];
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    if (inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text) == nullptr) return false;
    *family = 4;
    *address = text;
    *port = ntohs(sin->sin_port);
    return true;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      // A dual-stack listener's IPv4 peer: report it as the IPv4 address it is.
      if (inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], text, sizeof text) == nullptr) return false;
      *family = 4;
    } else {
      if (inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text) == nullptr) return false;
      *family = 6;
    }
    *address = text;
    *port = ntohs(sin6->sin6_port);
    return true;
  }
  return false;
}

int OpenListener(Napi::Env env, int family, const std::string& address, int port, int backlog, const ListenerOpts& opts) {
  sockaddr_storage ss;
  socklen_t len;
  if (!ParseAddress(env, family, address, port, &ss, &len)) return -1;
  int raw;
  if (!OpenSocket(env, family, address, &raw)) return -1;
  FdGuard fd(raw);
  if (!SetIntOpt(env, fd.get(), SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR", 1, family, address)) return -1;
  // SO_REUSEPORT before bind: every socket of the group must set it (the kernel spreads new
  // connections over the group's sockets, and stops routing to one the moment it is closed).
  if (opts.reuse_port && !SetIntOpt(env, fd.get(), SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT", 1, family, address)) return -1;
  if (opts.transparent && !SetTransparent(env, fd.get(), family, address)) return -1;
  // freebind: bind an address this host does not hold yet (a keepalived VIP owned by the peer);
  // the socket starts receiving the moment the address is added. No privilege needed.
  if (opts.freebind && !(family == 4 ? SetIntOpt(env, fd.get(), SOL_IP, IP_FREEBIND, "IP_FREEBIND", 1, family, address)
                                     : SetIntOpt(env, fd.get(), SOL_IPV6, IPV6_FREEBIND, "IPV6_FREEBIND", 1, family, address)))
    return -1;
  if (family == 6 && !SetIntOpt(env, fd.get(), SOL_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY", opts.v6only ? 1 : 0, family, address)) return -1;
  if (!Bind(env, fd.get(), ss, len, family, address, port, true)) return -1;
  if (listen(fd.get(), backlog) != 0) {
    int err = errno;
    ThrowSys(env, err, "listen", Hint(err, "listen", family, address, port, true), Where{HostPort(family, address, port), &address, port});
    return -1;
  }
  return fd.release();
}

void Export(Napi::Env env, Napi::Object exports, std::initializer_list<NamedFunction> fns) {
  for (const NamedFunction& f : fns) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
}

}  // namespace etd
