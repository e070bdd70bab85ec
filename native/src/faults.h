// Fault injection for tests (compiled in, off unless ETD_ENGINE_FAULTS is set when the engine starts).
//
// ETD_ENGINE_FAULTS=<syscall>:<n>:<ERRNO>[,...] makes the n-th call (counted from engineStart,
// 1-based) of that syscall fail with that errno, once per rule; e.g.
//   ETD_ENGINE_FAULTS=epoll_ctl:5:ENOSPC,connect:2:ENOMEM
// Syscalls: accept4, epoll_ctl, socket, connect, recv, send. With no rules a check is one
// branch. TypeScript tests use it to prove that admission rolls back when a command throws or a
// connection dies of an engine error (docs/engine.md, Fault injection).

#ifndef ETD_FAULTS_H_
#define ETD_FAULTS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace etd {

enum class Sys : uint8_t { Accept4, EpollCtl, Socket, Connect, Recv, Send };
constexpr int kSysCount = 6;

class Faults {
 public:
  // Parses a spec (nullptr or "" = no faults). False with *error set when it is malformed.
  bool Parse(const char* spec, std::string* error);
  // Counts one call of `sys`; the errno to fail it with, or 0 to make the call.
  int Hit(Sys sys) {
    if (rules_.empty()) return 0;
    return Check(sys);
  }

 private:
  int Check(Sys sys);
  struct Rule {
    Sys sys;
    uint64_t nth;
    int err;
  };
  std::vector<Rule> rules_;
  uint64_t calls_[kSysCount] = {};
};

}  // namespace etd

#endif  // ETD_FAULTS_H_
