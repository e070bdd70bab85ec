// The inline protocol tests (pipelining, non_smtp_command, bare_newline): a bounded scanner of the client's first commands and the server's
// replies during the relay.
//
// Why here and not in a server of our own: postscreen must answer as the SMTP server to run these
// tests, and then turns every new sender away with a 4xx so that it comes back to the real server.
// etd relays: it watches the live session between the client and the backend, forwards each
// command line only once it has been checked, and cuts the client off before an offending line
// reaches the backend. A good sender sees no delay at all.
//
// What it tracks (docs/engine.md, "Protocol tests"):
//   - the commands sent and not yet answered by a final reply line (the greeting counts as one,
//     answered by the greeting's own final line);
//   - whether the reply to the last EHLO offered PIPELINING;
//   - a 334 to AUTH: the client's next line is a SASL response, not a command.
// Pure: no I/O, no clock. The engine feeds it the server's raw bytes (before the PIPECONNECT
// guard) and the client's bytes, and applies what it found (relay.cc). Inspection ends at the
// server's 354 to DATA, its 2xx to STARTTLS, the client's BDAT (chunk data follows at once),
// or a bound (bytes or commands); after that the relay runs as if it had never been there.
// Tests: test/integration/protocolEngine.test.ts (through the engine, with every split).

#ifndef ETD_INSPECT_H_
#define ETD_INSPECT_H_

#include "types.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace etd {

enum class Test : uint8_t { Pipelining, NonSmtpCommand, BareNewline };

// protocol.ts ProtocolTest.
inline const char* TestName(Test t) {
  switch (t) {
    case Test::Pipelining: return "pipelining";
    case Test::NonSmtpCommand: return "non_smtp_command";
    case Test::BareNewline: return "bare_newline";
  }
  return "pipelining";
}

// One test that caught the client: the action it asks for and the offending line's first bytes.
struct Finding {
  Test test;
  TestAction action;
  std::string evidence;
};

// What FromClient lets through: `joined` first, then [p, p+n) of the input.
struct Passed {
  std::string joined;
  const char* p = nullptr;
  size_t n = 0;
};

// The outstanding commands a session may have while inspected: one more than the largest
// ProtocolTests::max_commands the binding accepts (the greeting takes a slot too).
constexpr size_t kMaxOutstanding = kMaxInspectCommands + 1;

class Inspector {
 public:
  // `rules` must outlive the inspector (it is the connection's profile, held by the Conn).
  Inspector(const ProtocolTests& rules, size_t evidence_bytes);

  bool active() const { return active_; }
  // Server → client bytes as the server sent them. May end the inspection (354 to DATA, 2xx to
  // STARTTLS). If the client has part of a line held then, it sent it before that reply: a
  // pipelining violation (DATA and STARTTLS must be last in a group), appended to *found; with
  // action reject or drop the held bytes are discarded, with log they go on (Release).
  void FromServer(const char* p, size_t n, std::vector<Finding>* found);
  // Client → server bytes. Says in *out what may go to the server now: whole lines that passed (a
  // partial line is held until its LF). They are `joined` (a line begun in an earlier read,
  // completed now: copied) followed by [p, p+n) of the input (not copied: the usual case is a
  // read of whole lines, forwarded as it is). Appends to *found each test that caught a line (a
  // test with action log reports once and the line goes on). When a test with action reject or
  // drop catches a line, scanning stops there and the inspection is over: *out is then empty (the
  // caller discards the whole read and ends the session).
  void FromClient(const char* p, size_t n, Passed* out, std::vector<Finding>* found);
  // Ends the inspection: a held partial line goes to *out.
  void Release(std::string* out);
  size_t Heap() const { return held_.capacity() > 15 ? held_.capacity() : 0; }

 private:
  enum Kind : uint8_t { kGreeting, kEhlo, kHelo, kData, kStartTls, kAuth, kBdat, kGroupable, kLast };

  // False when a reject/drop test caught the line.
  bool ClientLine(const char* line, size_t len, std::vector<Finding>* found);
  bool Fire(Test t, TestAction action, const char* line, size_t len, std::vector<Finding>* found);
  void ServerLine(std::vector<Finding>* found);
  void Ended(std::vector<Finding>* found);
  void Push(Kind k);
  Kind Pop();
  static bool Groupable(Kind k) { return k == kGroupable; }

  const ProtocolTests& rules_;
  size_t evidence_bytes_;
  bool active_ = true;
  bool offered_ = false;          // the last EHLO's reply offered PIPELINING
  bool ehlo_pipelining_ = false;  // the EHLO reply being read has a PIPELINING line so far
  bool sasl_ = false;             // a 334 to AUTH: the next client line is a SASL response
  bool fired_[3] = {false, false, false};
  uint32_t bytes_ = 0;     // client bytes checked (whole lines)
  uint32_t commands_ = 0;  // client lines checked
  // Outstanding commands: a ring of kinds; `blocking_` counts those that must be last in a group.
  Kind queue_[kMaxOutstanding];
  uint32_t head_ = 0;
  uint32_t count_ = 0;
  uint32_t blocking_ = 0;
  std::string held_;  // a partial client line (≤ max_bytes)
  // The first bytes of the server line being read (a reply line's code, separator and keyword).
  char shead_[16];
  uint32_t shead_len_ = 0;
};

}  // namespace etd

#endif  // ETD_INSPECT_H_
