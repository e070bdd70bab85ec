// Fault injection for tests (compiled in, off unless ETD_ENGINE_FAULTS is set when the engine starts).
//
// ETD_ENGINE_FAULTS=<syscall>:<n>:<ERRNO>[,...] makes the n-th call (counted from the start of each
// engine thread, 1-based, per thread) of that syscall fail with that errno, once per rule; e.g.
//   ETD_ENGINE_FAULTS=epoll_ctl:5:ENOSPC,connect:2:ENOMEM
// Syscalls: accept4, epoll_ctl, socket, connect, recv, send, epoll_wait (a failed epoll_wait ends
// the thread: how tests kill one). engineFault(thread, rule) adds a rule to a running thread, its
// n counted from then. With no rules a check is one
// branch. TypeScript tests use it to prove that admission rolls back when a command fails or a
// connection dies of an engine error (docs/engine.md, Fault injection).

#ifndef ETD_FAULTS_H_
#define ETD_FAULTS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace etd {

enum class Sys : uint8_t { Accept4, EpollCtl, Socket, Connect, Recv, Send, EpollWait };
constexpr int kSysCount = 7;

class Faults {
 public:
  // Parses a spec (nullptr or "" = no faults). False with *error set when it is malformed.
  bool Parse(const char* spec, std::string* error);
  // Adds one rule (<syscall>:<n>:<ERRNO>) whose n counts from now. False with *error set when it is malformed.
  bool Add(const std::string& item, std::string* error);
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
  static bool ParseRule(const std::string& item, Rule* out, std::string* error);
  std::vector<Rule> rules_;
  uint64_t calls_[kSysCount] = {};
};

}  // namespace etd

#endif  // ETD_FAULTS_H_
