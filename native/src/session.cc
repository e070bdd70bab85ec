// A connection before its relay: hold (teaser), early talk (drop / reject / log), upstream connect, greeting, final and deferred replies.

#include "engine.h"

#include "common.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace etd {
namespace {

const char* Stage(St st) {
  switch (st) {
    case St::Connecting: return "connecting";
    case St::Greeting: return "greeting";
    default: return "held";  // the window, or waiting for a decision after it
  }
}

bool PreRelay(St st) { return st == St::Held || st == St::Waiting || st == St::Connecting || st == St::Greeting; }

}  // namespace

// ----- events --------------------------------------------------------------------------------

void Engine::OnClient(Conn* c, uint32_t events, double now) {
  if (c->cfd < 0) return;
  bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP);
  switch (c->st) {
    case St::New: return;
    case St::Held:
    case St::Waiting:
    case St::Connecting:
    case St::Greeting:
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->s2c.pending.empty()) {
        FlushPreRelay(c);
        if (c->dead) return;
      }
      if (readable && WantClient(c) & EPOLLIN) EarlyRead(c, now);
      return;
    case St::Relaying: OnRelayClient(c, events, now); return;
    case St::ServerGone:
    case St::Deferring:
    case St::Replying: OnClosing(c, events, now); return;
  }
}

void Engine::OnServer(Conn* c, uint32_t events, double now) {
  if (c->ufd < 0) return;
  switch (c->st) {
    case St::Connecting: {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      // Writable without an error or hang-up is a completed connect: a failed one always raises
      // EPOLLERR, so SO_ERROR is only asked when epoll reported one.
      int err = 0;
      if (events & (EPOLLERR | EPOLLHUP)) {
        socklen_t len = sizeof err;
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
      if (err != 0)
        UpstreamFailed(c, "connect", ErrnoName(err), now);
      else if (events & EPOLLOUT)
        EnterGreeting(c, now);
      else
        UpstreamFailed(c, "connect", "ECONNRESET", now);  // hung up without an error: never spin on it
      return;
    }
    case St::Greeting:
      if ((events & (EPOLLOUT | EPOLLERR)) && !c->c2s.pending.empty()) {
        ssize_t w = SendSome(c->ufd, c->c2s.pending.begin(), c->c2s.pending.size());
        if (w < 0) {
          UpstreamFailed(c, "greeting", ErrnoName(static_cast<int>(-w)), now);
          return;
        }
        c->c2s.pending.Consume(static_cast<size_t>(w));
      }
      if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadGreeting(c, now);
      return;
    case St::Relaying: OnRelayServer(c, events, now); return;
    default: return;
  }
}

// ----- early talk ----------------------------------------------------------------------------

void Engine::EarlyRead(Conn* c, double now) {
  const Profile& p = *c->profile;
  bool log = p.action == Action::Log;
  // drop/reject: what is there now, up to one read buffer, so the byte count is comparable with a
  // relayed session's; log: what still fits in earlyBufferBytes.
  size_t want = log ? std::min(kReadBuffer, p.early_buffer_bytes - c->early.size()) : kReadBuffer;
  ssize_t n = Recv(c->cfd, buf_.get(), want, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    ClientGone(c, n == 0 ? 0 : errno);
    return;
  }
  c->bytes_from_client += static_cast<double>(n);
  if (log) {
    // Record it, keep holding; the bytes go upstream after a 220 greeting.
    AppendBounded(&c->early, buf_.get(), static_cast<size_t>(n), p.early_buffer_bytes);
    if (!c->talked) {
      c->talked = true;
      ReportTalk(c, c->early.data(), c->early.size(), now);
    }
    return;
  }
  ReportTalk(c, buf_.get(), static_cast<size_t>(n), now);
  CloseUpstream(c);
  if (p.action == Action::Reject)
    StartReply(c, p.reject_reply, now);
  else
    Kill(c, true);
}

void Engine::ReportTalk(Conn* c, const char* p, size_t n, double now) {
  Ev ev{EV_TALK, c->id};
  ev.n1 = now - c->accepted_at;
  ev.s1.assign(p, std::min<size_t>(n, c->profile->evidence_bytes));
  ev.n2 = c->bytes_from_client;
  ev.s2 = Stage(c->st);
  // The teaser went out before: once a dropped connection is gone, only this event can count it.
  ev.n3 = c->bytes_to_client;
  Push(std::move(ev));
}

void Engine::ClientGone(Conn* c, int err) {
  Ev ev{EV_GONE, c->id};
  ev.s1 = err == 0 ? "client_closed" : err == ECONNRESET ? "client_reset" : "client_" + Lower(ErrnoName(err));
  Push(std::move(ev));
  Kill(c, false);
}

// The rest of a teaser (or of a reply) the client's socket did not take at once.
void Engine::FlushPreRelay(Conn* c) {
  ssize_t w = SendSome(c->cfd, c->s2c.pending.begin(), c->s2c.pending.size());
  if (w < 0) {
    ClientGone(c, static_cast<int>(-w));
    return;
  }
  c->bytes_to_client += static_cast<double>(w);
  c->s2c.pending.Consume(static_cast<size_t>(w));
}

// Writes to the client behind what is pending; the bytes written now, or -errno.
ssize_t Engine::WriteClient(Conn* c, const char* p, size_t n) {
  if (n == 0) return 0;
  if (!c->s2c.pending.empty()) {
    c->s2c.pending.Append(p, n);
    return 0;
  }
  ssize_t w = SendSome(c->cfd, p, n);
  if (w < 0) return w;
  c->bytes_to_client += static_cast<double>(w);
  if (static_cast<size_t>(w) < n) c->s2c.pending.Assign(p + w, n - static_cast<size_t>(w));
  return w;
}

// ----- upstream and greeting -----------------------------------------------------------------

void Engine::EnterWaiting(Conn* c, double now) {
  c->st = St::Waiting;
  SetStateTimer(c, Kind::Decision, c->profile->decision_ms, now);
}

void Engine::EnterGreeting(Conn* c, double now) {
  c->st = St::Greeting;
  c->connect_ms = now - c->connect_start;
  if (c->profile->greeting_timeout_ms > 0)
    SetStateTimer(c, Kind::GreetingTimeout, c->profile->greeting_timeout_ms, now);
  else
    Unschedule(&c->state_timer);
}

void Engine::UpstreamFailed(Conn* c, const char* stage, const std::string& code, double now) {
  CloseUpstream(c);
  EnterWaiting(c, now);
  Ev ev{EV_UPSTREAM_FAILED, c->id};
  ev.s1 = stage;
  ev.s2 = code;
  ev.n1 = now - c->connect_start;
  Push(std::move(ev));
}

void Engine::CloseUpstream(Conn* c) {
  if (c->ufd >= 0) {
    close(c->ufd);  // also leaves epoll
    c->ufd = -1;
    c->umask = 0;
  }
  c->c2s.pending.Clear();
  std::string().swap(c->greeting);
  c->greeting_line = 0;
}

void Engine::ReadGreeting(Conn* c, double now) {
  ssize_t n = Recv(c->ufd, buf_.get(), kReadBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    UpstreamFailed(c, "greeting", ErrnoName(err), now);
    return;
  }
  if (n == 0) {
    UpstreamFailed(c, "greeting", "EOF", now);
    return;
  }
  size_t from = c->greeting.size();
  AppendBounded(&c->greeting, buf_.get(), static_cast<size_t>(n), c->profile->greeting_max_bytes + kReadBuffer);
  size_t end = GreetingEnd(c->greeting, from, &c->greeting_line);
  if (end == std::string::npos) {
    if (c->greeting.size() <= c->profile->greeting_max_bytes) return;
    end = c->greeting.size();  // no reply end within greetingMaxBytes: not SMTP; judge what came
  }
  std::string code = GreetingCode(c->greeting);
  if (code == "220") {
    StartRelay(c, now);
    return;
  }
  // Refused (or not SMTP): say goodbye politely. Unread bytes would turn the close into a RST
  // that could overtake the QUIT, so drain what has arrived first.
  Ev ev{EV_GREETING, c->id};
  ev.s1 = code;
  ev.n1 = c->connect_ms;
  c->kept.assign(c->greeting, 0, end);
  for (int i = 0; i < 16; i++) {
    ssize_t r = Recv(c->ufd, buf_.get(), kReadBuffer, MSG_DONTWAIT);
    if (r <= 0) break;
  }
  if (c->c2s.pending.empty()) SendSome(c->ufd, "QUIT\r\n", 6);
  CloseUpstream(c);
  EnterWaiting(c, now);
  ev.i1 = 0;
  Push(std::move(ev));
}

// ----- replies -------------------------------------------------------------------------------

void Engine::StartReply(Conn* c, const std::string& text, double now) {
  CloseUpstream(c);
  c->st = St::Replying;
  c->stripper.reset();
  c->watcher.reset();
  std::string().swap(c->kept);
  std::string().swap(c->early);
  Unschedule(&c->cidle);
  Unschedule(&c->sidle);
  SetStateTimer(c, Kind::ReplyLinger, c->profile->reply_linger_ms, now);
  if (WriteClient(c, text.data(), text.size()) < 0) {
    Kill(c, false);
    return;
  }
  if (c->s2c.pending.empty()) {
    shutdown(c->cfd, SHUT_WR);
    c->s2c.shut = true;
  }
}

void Engine::FinishDeferred(Conn* c, double now) {
  std::string text;
  text.swap(c->kept);
  StartReply(c, text, now);
}

// ServerGone, Deferring, Replying: the client gets what is pending, then a half-close; what it
// sends is read (and counted) but goes nowhere, so the final close is no RST.
void Engine::OnClosing(Conn* c, uint32_t events, double now) {
  bool relay = c->st == St::ServerGone;
  auto finish = [&]() {
    if (relay)
      EndRelay(c, Cause(c));
    else
      Kill(c, false);
  };
  if ((events & (EPOLLOUT | EPOLLERR)) && !c->s2c.pending.empty()) {
    ssize_t w = SendSome(c->cfd, c->s2c.pending.begin(), c->s2c.pending.size());
    if (w < 0) {
      finish();
      return;
    }
    if (w > 0) {
      c->bytes_to_client += static_cast<double>(w);
      c->client_active = now;
    }
    c->s2c.pending.Consume(static_cast<size_t>(w));
    if (c->s2c.pending.empty() && c->st != St::Deferring && !c->s2c.shut) {
      shutdown(c->cfd, SHUT_WR);
      c->s2c.shut = true;
    }
  }
  bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP);
  if (readable && !c->c2s.eof) {
    ssize_t n = Recv(c->cfd, buf_.get(), kReadBuffer, 0);
    if (n > 0) {
      c->bytes_from_client += static_cast<double>(n);
      if (c->st == St::Deferring && memchr(buf_.get(), '\n', static_cast<size_t>(n)) != nullptr) {
        FinishDeferred(c, now);  // the client's first command line: now the reply
        return;
      }
    }
    if (n == 0) c->c2s.eof = true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      finish();
      return;
    }
  }
  if (c->c2s.eof && (c->s2c.shut || c->st == St::Deferring)) finish();
}

// ----- the inbox's commands, on the engine thread (Engine::RunCommands) ------------------------

void Engine::Hold(uint64_t id, uint32_t window_ms, std::shared_ptr<const Profile> profile, double now) {
  Conn* c = Find(id);
  if (c == nullptr || c->st != St::New) return;
  c->st = St::Held;
  c->profile = std::move(profile);
  c->hold_start = now;
  SetStateTimer(c, Kind::Window, window_ms, now);
  const std::string& teaser = c->profile->teaser;
  ssize_t w = WriteClient(c, teaser.data(), teaser.size());
  if (w < 0) {
    ClientGone(c, static_cast<int>(-w));
    return;
  }
  Update(c);  // an epoll_ctl that fails (ENOMEM, ENOSPC in a flood) ends it: GONE engine_<errno>
}

// The upstream socket: socket(2), the client's address as source (clientip) and connect(2),
// then the upstream's epoll watch. A failure at any step is UPSTREAM_FAILED connect <errno>, and
// the client waits for JS's next decision (another server, or a reply).
void Engine::Connect(uint64_t id, const ConnectSpec& spec, double now) {
  Conn* c = Find(id);
  if (c == nullptr || (c->st != St::New && c->st != St::Held && c->st != St::Waiting)) return;
  c->st = St::Connecting;
  c->profile = spec.profile;
  c->connect_start = now;
  c->c2s = Dir{};
  if (!spec.preamble.empty()) c->c2s.pending.Assign(spec.preamble.data(), spec.preamble.size());
  std::string().swap(c->greeting);
  c->greeting_line = 0;
  if (spec.timeout_ms > 0) {
    SetStateTimer(c, Kind::ConnectTimeout, spec.timeout_ms, now);
  } else {
    Unschedule(&c->state_timer);  // bounded by the kernel's SYN retries (synCount)
  }
  auto fail = [&](int err) {
    UpstreamFailed(c, "connect", ErrnoName(err), now);
    if (!c->dead) Update(c);
  };
  int fd;
  if (int fault = faults_.Hit(Sys::Socket)) return fail(fault);
  fd = socket(spec.family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) return fail(errno);
  c->ufd = fd;  // from here CloseUpstream (in UpstreamFailed, Kill) closes it
  c->umask = 0;
  const char* syscall = "";
  if (spec.spoof) {
    if (int err = SpoofSource(fd, spec.family, spec.from, spec.from_len, 0, spec.syn_count, &syscall)) return fail(err);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int fault = faults_.Hit(Sys::Connect);
  int rc = fault != 0 ? (errno = fault, -1) : connect(fd, reinterpret_cast<const sockaddr*>(&spec.to), spec.to_len);
  if (rc != 0 && errno != EINPROGRESS) return fail(errno);
  uint32_t umask = rc == 0 ? (EPOLLIN | (c->c2s.pending.empty() ? 0u : uint32_t{EPOLLOUT})) : uint32_t{EPOLLOUT};
  epoll_event ev{};
  ev.events = umask;
  ev.data.u64 = c->id << 1 | kServer;
  if (EpollCtl(EPOLL_CTL_ADD, fd, &ev) != 0) return fail(errno);
  c->umask = umask;
  if (rc == 0) EnterGreeting(c, now);  // connected at once (loopback may do that): straight to the greeting
  if (!c->dead) Update(c);
}

void Engine::Drop(uint64_t id) {
  if (Conn* c = Find(id)) Kill(c, true);
}

void Engine::Close(uint64_t id, const std::string& cause) {
  Conn* c = Find(id);
  if (c == nullptr) return;
  if (c->st == St::Relaying || c->st == St::ServerGone)
    EndRelay(c, cause);  // JS ended it: its cause is the one that counts
  else
    Kill(c, false);
}

// ----- commands run at once (binding.cc, with the lock held) ----------------------------------

double Engine::Reply(uint64_t id, const ReplySpec& spec) {
  Conn* c = Find(id);
  if (c == nullptr || (c->st != St::New && !PreRelay(c->st))) return -1;
  if (spec.greeting && c->kept.empty()) return -1;
  if (!spec.profile && !c->profile) return -2;  // state new: binding.cc throws, naming the fix
  if (spec.profile) c->profile = spec.profile;
  std::string text = spec.greeting ? c->kept : spec.text;
  double now = NowMs();
  double before = c->bytes_to_client;
  if (spec.has_first) {
    CloseUpstream(c);
    c->st = St::Deferring;
    c->stripper.reset();
    c->watcher.reset();
    std::string().swap(c->early);
    c->kept = std::move(text);
    SetStateTimer(c, Kind::DeferredReply, c->profile->deferred_reply_ms, now);
    if (WriteClient(c, spec.first.data(), spec.first.size()) < 0) Kill(c, false);
  } else {
    StartReply(c, text, now);
  }
  double written = c->bytes_to_client - before;
  if (!c->dead) Update(c);
  return written;
}

}  // namespace etd
