// Parses ETD_ENGINE_FAULTS and decides which syscall fails (faults.h).

#include "faults.h"

#include <cstdlib>
#include <cstring>

namespace etd {
namespace {

constexpr const char* kSysNames[kSysCount] = {"accept4", "epoll_ctl", "socket", "connect", "recv", "send", "epoll_wait"};
constexpr const char* kFormat =
    "ETD_ENGINE_FAULTS must be <syscall>:<n>:<ERRNO>[,...] with syscall one of accept4, epoll_ctl, socket, connect, "
    "recv, send, epoll_wait, n >= 1 and an errno name like ENOSPC";

int ErrnoByName(const std::string& name) {
  for (int e = 1; e < 4096; e++) {
    const char* n = strerrorname_np(e);
    if (n != nullptr && name == n) return e;
  }
  return 0;
}

}  // namespace

bool Faults::ParseRule(const std::string& item, Rule* out, std::string* error) {
  size_t a = item.find(':');
  size_t b = a == std::string::npos ? a : item.find(':', a + 1);
  if (b == std::string::npos) {
    *error = std::string(kFormat) + " (got \"" + item + "\")";
    return false;
  }
  std::string name = item.substr(0, a), nth = item.substr(a + 1, b - a - 1), err = item.substr(b + 1);
  int sys = -1;
  for (int i = 0; i < kSysCount; i++)
    if (name == kSysNames[i]) sys = i;
  char* end = nullptr;
  unsigned long long n = strtoull(nth.c_str(), &end, 10);
  int e = ErrnoByName(err);
  if (sys < 0 || nth.empty() || *end != '\0' || n == 0 || e == 0) {
    *error = std::string(kFormat) + " (got \"" + item + "\")";
    return false;
  }
  *out = Rule{static_cast<Sys>(sys), n, e};
  return true;
}

bool Faults::Parse(const char* spec, std::string* error) {
  rules_.clear();
  for (uint64_t& c : calls_) c = 0;
  if (spec == nullptr || *spec == '\0') return true;
  std::string s(spec);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? s.size() + 1 : comma + 1;
    Rule r;
    if (!ParseRule(item, &r, error)) return false;
    rules_.push_back(r);
  }
  return true;
}

bool Faults::Add(const std::string& item, std::string* error) {
  Rule r;
  if (!ParseRule(item, &r, error)) return false;
  r.nth += calls_[static_cast<int>(r.sys)];
  rules_.push_back(r);
  return true;
}

int Faults::Check(Sys sys) {
  uint64_t call = ++calls_[static_cast<int>(sys)];
  for (const Rule& r : rules_)
    if (r.sys == sys && r.nth == call) return r.err;
  return 0;
}

}  // namespace etd
