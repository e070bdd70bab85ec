// The engine's data types: event codes, states, profiles, buffers, deadlines, connections, listeners, events (no behaviour).
//
// The event codes and state names are the vocabulary shared with TypeScript
// (src/proxy/protocol.ts: EV_*, EngineState); test/unit/native.test.ts checks they match.

#ifndef ETD_TYPES_H_
#define ETD_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace etd {

// ---------------------------------------------------------------------------------------------
// Engine-internal tuning (no policy: every number the engine applies on a client is in Profile)

constexpr size_t kReadBuffer = 65536;          // the one read buffer; also the bound of each direction's pending bytes
constexpr uint32_t kAcceptPauseMs = 100;       // a listener failing with EMFILE & co. rests this long
constexpr int kAcceptBurst = 256;              // accepts per listener wakeup
constexpr int kEpollBatch = 256;               // epoll events per wakeup
constexpr double kMaxId = 9007199254740991.0;  // 2^53 - 1: every id is exact as a JS number
constexpr double kMaxMs = 2147483647.0;
constexpr uint64_t kListenerTag = 1ull << 63;  // epoll data of listener fds; connection tags are id << 1 | side
constexpr uint64_t kWakeTag = 3ull << 62;      // epoll data of the thread's eventfd
constexpr int kClient = 0;
constexpr int kServer = 1;

// ---------------------------------------------------------------------------------------------
// Events (protocol.ts EV_*)

// Numbered as protocol.ts's EV_* (test/unit/native.test.ts compares the two).
enum EventType : uint8_t {
  EV_ACCEPT = 1,
  EV_TALK = 2,
  EV_GONE = 3,
  EV_EXPIRED = 4,
  EV_UPSTREAM_FAILED = 5,
  EV_GREETING = 6,
  EV_END = 7,
  EV_ERROR = 8,
  EV_PROTOCOL = 9,
  EV_THREAD = 10  // an engine thread ended on an error
};

// One event on its way to JS; the fields each type uses are listed in binding.cc (ToJs).
struct Ev {
  EventType type;
  uint64_t id;  // connection id; unused for EV_ERROR (the listener id is n1); the thread index for EV_THREAD
  double n1 = 0;
  double n2 = 0;
  double n3 = 0;
  int i1 = 0;
  int i2 = 0;
  std::string s1;
  std::string s2;
};

// ---------------------------------------------------------------------------------------------
// Profiles (protocol.ts EngineProfile): everything the engine applies without asking

enum class Action : uint8_t { Drop, Reject, Log };

// The inline protocol tests (inspect.h): what each does when it catches a client.
enum class TestAction : uint8_t { Ignore, Log, Reject, Drop };

// The most commands an inspection may cover (the binding's range of maxCommands).
constexpr uint32_t kMaxInspectCommands = 64;

struct ProtocolTests {
  TestAction pipelining = TestAction::Ignore;
  TestAction non_smtp_command = TestAction::Ignore;
  TestAction bare_newline = TestAction::Ignore;
  std::vector<std::string> commands;  // first words that are no SMTP (matched ignoring case)
  std::string reject_reply;           // action reject; CRLF included
  uint32_t max_bytes = 0;             // inspection ends past this many client bytes...
  uint32_t max_commands = 0;          // ...or this many client lines
  bool any() const {
    return pipelining != TestAction::Ignore || non_smtp_command != TestAction::Ignore || bare_newline != TestAction::Ignore;
  }
};

struct Profile {
  Action action = Action::Drop;
  std::string reject_reply;
  std::string teaser;
  uint32_t client_idle_ms = 0;       // 0 = none
  uint32_t server_idle_ms = 0;       // 0 = none
  uint32_t greeting_timeout_ms = 0;  // 0 = none; fixed, from the established connection
  bool strip = false;
  uint32_t evidence_bytes = 0;
  uint32_t greeting_max_bytes = 0;
  uint32_t early_buffer_bytes = 0;
  uint32_t reply_linger_ms = 0;
  uint32_t server_gone_linger_ms = 0;
  uint32_t deferred_reply_ms = 0;
  uint32_t decision_ms = 0;
  ProtocolTests protocol;
};

// ---------------------------------------------------------------------------------------------
// States (protocol.ts EngineState; the three closing states all show as 'closing')

enum class St : uint8_t {
  New,         // accepted, JS decides in the ACCEPT callback; the fd is not in epoll yet
  Held,        // window running
  Waiting,     // window over (or an attempt failed); JS decides within decisionMs
  Connecting,  // upstream connect in progress
  Greeting,    // connected, preamble written, reading the greeting
  Relaying,
  ServerGone,  // relay whose server failed: flush to the client, half-close, wait for its EOF
  Deferring,   // reply({first}): `first` written, waiting for the client's first line
  Replying,    // final reply written, discarding until the client's EOF; no more events
};

// protocol.ts EngineState.
inline const char* StateName(St st) {
  switch (st) {
    case St::New: return "new";
    case St::Held: return "held";
    case St::Waiting: return "waiting";
    case St::Connecting: return "connecting";
    case St::Greeting: return "greeting";
    case St::Relaying: return "relaying";
    case St::ServerGone:
    case St::Deferring:
    case St::Replying: return "closing";
  }
  return "closing";
}

// ---------------------------------------------------------------------------------------------
// Buffers

// Bytes one side could not take yet. Consumed from the front by an offset (no memmove per
// partial write); the heap block is freed as soon as it drains, so an idle session holds none.
struct Buf {
  std::string data;
  size_t off = 0;

  bool empty() const { return off >= data.size(); }
  size_t size() const { return data.size() - off; }
  const char* begin() const { return data.data() + off; }
  void Consume(size_t n) {
    off += n;
    if (off >= data.size()) Clear();
  }
  void Clear() {
    std::string().swap(data);
    off = 0;
  }
  void Assign(const char* p, size_t n) {
    data.assign(p, n);
    off = 0;
  }
  // Appends with an exact-size block (no doubling): the bound per direction stays what it says.
  void Append(const char* p, size_t n) {
    std::string next;
    next.reserve(size() + n);
    next.append(begin(), size()).append(p, n);
    data.swap(next);
    off = 0;
  }
  // Heap bytes held (for counts().bufferedBytes): the capacity past the small-string slot.
  size_t Heap() const { return data.capacity() > 15 ? data.capacity() : 0; }
};

// Appends to a buffer that may hold at most `cap` bytes, growing its block at most to `cap`
// (plain appends double the capacity, which would double the documented bound).
inline void AppendBounded(std::string* s, const char* p, size_t n, size_t cap) {
  size_t need = s->size() + n;
  if (need > s->capacity()) {
    size_t grow = s->capacity() * 2;
    s->reserve(grow > need ? (grow < cap ? grow : (need > cap ? need : cap)) : need);
  }
  s->append(p, n);
}

// One direction of the relay (or of a final reply).
struct Dir {
  Buf pending;
  bool eof = false;   // the source ended
  bool shut = false;  // the destination got shutdown(SHUT_WR)
};

// ---------------------------------------------------------------------------------------------
// Deadlines: intrusive nodes of one min-heap (loop.cc); a node is unlinked when its purpose ends

enum class Kind : uint8_t {
  Window,
  Decision,
  ConnectTimeout,
  GreetingTimeout,
  ClientIdle,
  ServerIdle,
  DeferredReply,
  ReplyLinger,
  ServerGoneLinger,
  ListenerResume,
};

struct Timer {
  double at = 0;
  uint64_t owner = 0;         // connection id, or listener key for ListenerResume
  uint32_t idx = UINT32_MAX;  // position in the heap; UINT32_MAX = not scheduled
  Kind kind = Kind::Window;
  bool scheduled() const { return idx != UINT32_MAX; }
};

// ---------------------------------------------------------------------------------------------
// Connections and listeners

class Stripper;
class CommandWatcher;
class Inspector;

struct Conn {
  uint64_t id = 0;
  int cfd = -1;
  int ufd = -1;
  St st = St::New;
  bool dead = false;
  bool talked = false;  // action log: TALK already reported
  // The client is reset: epoll reported EPOLLERR/EPOLLHUP on its fd before our own half-close
  // (loop.cc, OnPoll), or that half-close failed with ENOTCONN (relay.cc). A relay whose server
  // has ended then ends at once.
  bool client_hup = false;
  uint32_t cmask = 0;  // epoll masks as registered; 0 = not registered
  uint32_t umask = 0;
  double accepted_at = 0;
  double hold_start = 0;
  double connect_start = 0;
  double connect_ms = 0;
  double client_active = 0;
  double server_active = 0;
  double bytes_from_client = 0;
  double bytes_to_client = 0;
  std::shared_ptr<const Profile> profile;
  Timer state_timer;     // the bound of the current state (window, decision, connect, greeting, linger...)
  Timer cidle;           // relay: client idle
  Timer sidle;           // relay: server idle
  std::string greeting;  // the greeting being read
  size_t greeting_line = 0;
  // A reply kept for later: in waiting, the last refused greeting (for reply({greeting})); in
  // deferring, the reply written after the client's first line.
  std::string kept;
  std::string early;  // action log: the client's early bytes, forwarded after the greeting
  Dir c2s;            // client → server (before the relay: the preamble)
  Dir s2c;            // server → client (before the relay: teaser / final reply)
  std::unique_ptr<Stripper> stripper;
  std::unique_ptr<CommandWatcher> watcher;
  std::unique_ptr<Inspector> inspector;  // the protocol tests, from the relay's start until they end
  const char* cause = nullptr;           // the relay's first end cause (a literal)
};

struct Listener {
  int fd;
  double listener_id;
  bool paused;
  Timer resume;
  // Learnt once at listen (listeners.cc) to save a syscall per accepted connection:
  bool nodelay_inherited = false;  // TCP_NODELAY set on the listener: accepted sockets inherit it
  bool local_known = false;        // bound to one address (not a wildcard, not IP_TRANSPARENT): every
  int local_family = 0;            // accepted socket's local end is the listener's own, no getsockname
  int local_port = 0;
  std::string local_address;
};

}  // namespace etd

#endif  // ETD_TYPES_H_
