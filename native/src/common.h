// Helpers shared by the addon's sources: fd guard, Node-shaped system errors with hints, argument readers, socket setup.
//
// Everything here was first written for transparent.cc and keeps its exact behaviour (messages,
// error properties, syscall names); the engine's sources (loop.cc, session.cc, relay.cc, listeners.cc) use the same pieces so both surfaces
// fail alike.

#ifndef ETD_COMMON_H_
#define ETD_COMMON_H_

#include <napi.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <initializer_list>
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
#ifndef IP_FREEBIND
#define IP_FREEBIND 15
#endif
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

namespace etd {

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

// "ECONNREFUSED" for ECONNREFUSED; "EUNKNOWN" when glibc has no name.
const char* ErrnoName(int err);

// ASCII lower case ("ECONNRESET" -> "econnreset"), for causes like engine_enomem.
std::string Lower(const char* s);

// "192.0.2.1:25" or "[2001:db8::1]:25".
std::string HostPort(int family, const std::string& address, int port);

// What the operator should do about `err` from `syscall`. Falls back to strerror.
std::string Hint(int err, const std::string& syscall, int family, const std::string& address, int port, bool listener);

// Where a failure happened: `shown` follows the syscall name in the message ("10.0.0.1:25",
// "fd 7"; empty for nothing); `address` (when non-null) and `port` (when >= 0) become
// properties of the error, as on Node's own errors.
struct Where {
  std::string shown;
  const std::string* address;
  int port;
};

extern const Where kNowhere;

// Throws a Node-style system error into JS: "<syscall>[ <where>]: <CODE> — <hint>".
void ThrowSys(Napi::Env env, int err, const std::string& syscall, const std::string& hint, const Where& where);

// A number the way JS prints it (5, 1.5, NaN, Infinity), for argument errors.
std::string ShowNumber(double d);

// "undefined", "number", ... for argument errors.
const char* TypeName(const Napi::Value& v);

// Argument readers: on failure they throw (TypeError for the wrong type, RangeError for a
// value out of range) and return false; the caller returns undefined at once.
bool CheckArity(const Napi::CallbackInfo& info, size_t n, const char* signature);
bool GetInt(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, double min, double max, int64_t* out);
bool GetFamily(const Napi::CallbackInfo& info, size_t i, const char* signature, int* out);
bool GetString(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, std::string* out);
bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, bool* out);
// info[i] must be a plain object (the options of a call); its fields are read with Read*.
bool GetOptions(const Napi::CallbackInfo& info, size_t i, const char* signature, const char* name, Napi::Object* out);

// The same readers for any value (an options object's field, named `name` in the error).
bool ReadInt(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, double min, double max, int64_t* out);
bool ReadFamily(Napi::Env env, const Napi::Value& v, const char* signature, int* out);
bool ReadString(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, std::string* out);
bool ReadBool(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, bool* out);
// A Buffer / Uint8Array, copied.
bool ReadBytes(Napi::Env env, const Napi::Value& v, const char* signature, const char* name, std::string* out);

// Parses `address` as a literal of `family` (no names, no scope ids). On failure throws an
// EINVAL-shaped error naming the address; no fd exists yet at that point.
bool ParseAddress(Napi::Env env, int family, const std::string& address, int port, sockaddr_storage* ss, socklen_t* len);

// setsockopt(int) with the option's name in the error, e.g. syscall 'setsockopt(IP_TRANSPARENT)'.
bool SetIntOpt(Napi::Env env, int fd, int level, int opt, const char* optName, int value, int family, const std::string& address);

// socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC); throws on failure.
bool OpenSocket(Napi::Env env, int family, const std::string& address, int* fd);

// IP_TRANSPARENT (v4) or IPV6_TRANSPARENT (v6); throws on failure.
bool SetTransparent(Napi::Env env, int fd, int family, const std::string& address);

// bind(2) with the hint for listeners or spoofed sources; throws on failure.
bool Bind(Napi::Env env, int fd, const sockaddr_storage& ss, socklen_t len, int family, const std::string& address, int port,
          bool listener);

// The spoofed-source setup of an upstream socket, shared by transparentSocket and the engine's
// connect: IP_TRANSPARENT/IPV6_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT, SO_MARK when mark > 0,
// TCP_SYNCNT when synCount > 0, bind(source, port 0). SpoofSource returns 0 or the errno (and
// names the failed call in *syscall); PrepareSpoofedSource throws it into JS with its hint
// (`source` is the parsed `address`).
int SpoofSource(int fd, int family, const sockaddr_storage& source, socklen_t len, uint32_t mark, int synCount, const char** syscall);
bool PrepareSpoofedSource(Napi::Env env, int fd, int family, const std::string& address, const sockaddr_storage& source, socklen_t len,
                          uint32_t mark, int synCount);

// A listening socket (non-blocking, cloexec, SO_REUSEADDR, SO_REUSEPORT when asked, IP(V6)_TRANSPARENT when asked,
// IP(V6)_FREEBIND when asked, IPV6_V6ONLY = v6only for v6, bind, listen). Returns the fd (the caller owns it), or -1
// after throwing the Node-shaped error.
struct ListenerOpts {
  bool transparent = false;
  bool v6only = true;
  bool freebind = false;
  bool reuse_port = false;  // several sockets (one per engine thread) on one address and port
};
int OpenListener(Napi::Env env, int family, const std::string& address, int port, int backlog, const ListenerOpts& opts);

// An inet socket address as text and port; IPv4-mapped IPv6 (::ffff:a.b.c.d) comes back as
// family 4 and "a.b.c.d". False for other address families.
bool FormatAddress(const sockaddr_storage& ss, int* family, std::string* address, int* port);

// Sets each function on `exports` under its name (the names are listed in src/native/addon.ts).
struct NamedFunction {
  const char* name;
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};
void Export(Napi::Env env, Napi::Object exports, std::initializer_list<NamedFunction> fns);

}  // namespace etd

#endif  // ETD_COMMON_H_
