// The relay (state relaying): both directions with bounded buffers, the PIPECONNECT guard on the way, half-closes, idle limits, failures of
// either side.

#include "engine.h"

#include "common.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace etd {

void Engine::StartRelay(Conn* c, double now) {
  std::string bytes;
  bytes.swap(c->greeting);  // the greeting and whatever the server sent after it
  c->greeting_line = 0;
  std::string().swap(c->kept);  // an earlier server's refused greeting is of no use any more
  c->st = St::Relaying;
  Unschedule(&c->state_timer);       // the relay is bounded by its idle limits
  c->c2s.eof = c->c2s.shut = false;  // c2s.pending may still hold the end of the preamble
  c->s2c.eof = c->s2c.shut = false;  // s2c.pending may still hold the end of a teaser
  const Profile& p = *c->profile;
  if (p.strip) {
    c->stripper = std::make_unique<Stripper>();
    c->watcher = std::make_unique<CommandWatcher>();
  }
  // The protocol tests: only when one is on (otherwise the relay never looks at a byte).
  if (p.protocol.any()) c->inspector = std::make_unique<Inspector>(p.protocol, p.evidence_bytes);
  c->client_active = c->server_active = now;
  if (p.client_idle_ms > 0) Schedule(&c->cidle, Kind::ClientIdle, c->id, now + p.client_idle_ms);
  if (p.server_idle_ms > 0) Schedule(&c->sidle, Kind::ServerIdle, c->id, now + p.server_idle_ms);
  Ev ev{EV_GREETING, c->id};
  ev.s1 = "220";
  ev.n1 = c->connect_ms;
  ev.i1 = 1;
  Push(std::move(ev));
  ToClient(c, bytes.data(), bytes.size(), now);
  if (c->dead || c->early.empty()) return;
  // action log: the client's early bytes go first, as if relayed now (through the command watcher).
  std::string early;
  early.swap(c->early);
  FromClient(c, early.data(), early.size(), now);
}

void Engine::OnRelayClient(Conn* c, uint32_t events, double now) {
  if ((events & (EPOLLOUT | EPOLLERR)) && !c->s2c.pending.empty()) {
    FlushToClient(c, now);
    if (c->dead) return;
  }
  bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP);
  if (readable && !c->c2s.eof && c->c2s.pending.empty()) ReadClient(c, now);
}

void Engine::OnRelayServer(Conn* c, uint32_t events, double now) {
  if ((events & (EPOLLOUT | EPOLLERR)) && !c->c2s.pending.empty()) {
    FlushToServer(c, now);
    if (c->dead || c->st != St::Relaying) return;
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->s2c.eof && c->s2c.pending.empty()) ReadServer(c, now);
}

void Engine::IdleExpired(Conn* c, Timer* t, double now) {
  if (c->st != St::Relaying) return;
  bool client = t->kind == Kind::ClientIdle;
  uint32_t idle = client ? c->profile->client_idle_ms : c->profile->server_idle_ms;
  double last = client ? c->client_active : c->server_active;
  if (now - last >= idle) {
    Note(c, client ? "client_timeout" : "server_timeout");
    EndRelay(c, Cause(c));
    return;
  }
  // There was activity since: look again when the idle time after it has passed (lazy: no
  // heap work per read).
  Schedule(t, t->kind, c->id, last + idle);
}

void Engine::EndRelay(Conn* c, const std::string& cause) {
  Ev ev{EV_END, c->id};
  ev.s1 = cause;
  ev.n1 = c->bytes_from_client;
  ev.n2 = c->bytes_to_client;
  Push(std::move(ev));
  Kill(c, false);
}

void Engine::ClientFailed(Conn* c, int err) {
  // The client is gone: close both at once, so the backend cannot take a half-sent message as complete.
  Note(c, err == ECONNRESET || err == EPIPE ? "client_reset" : "client_error");
  EndRelay(c, Cause(c));
}

void Engine::ServerFailed(Conn* c, int err, double now) {
  // The backend failed: give the client what it sent (its last reply may still sit unread in the
  // receive queue, e.g. "554 5.3.4 Message too big" before a reset), a clean half-close, and
  // serverGoneLingerMs to go away.
  Note(c, err == ECONNRESET || err == EPIPE ? "server_reset" : "server_error");
  c->st = St::ServerGone;
  size_t room = kReadBuffer > c->s2c.pending.size() ? kReadBuffer - c->s2c.pending.size() : 0;
  if (room > 0 && !c->s2c.eof) {
    ssize_t n = Recv(c->ufd, buf_.get(), room, MSG_DONTWAIT);
    if (n > 0) {
      c->server_active = now;
      ToClient(c, buf_.get(), static_cast<size_t>(n), now);
      if (c->dead) return;
    }
  }
  close(c->ufd);
  c->ufd = -1;
  c->umask = 0;
  c->c2s.pending.Clear();
  Unschedule(&c->cidle);
  Unschedule(&c->sidle);
  if (c->stripper) {
    std::string out;
    c->stripper->Flush(&out);
    c->stripper.reset();
    c->watcher.reset();
    if (!out.empty()) {
      ToClientRaw(c, out.data(), out.size(), now);
      if (c->dead) return;
    }
  }
  if (c->s2c.pending.empty() && !c->s2c.shut) {
    shutdown(c->cfd, SHUT_WR);
    c->s2c.shut = true;
  }
  if (c->c2s.eof && c->s2c.shut) {
    EndRelay(c, Cause(c));
    return;
  }
  SetStateTimer(c, Kind::ServerGoneLinger, c->profile->server_gone_linger_ms, now);
}

void Engine::ReadClient(Conn* c, double now) {
  ssize_t n = Recv(c->cfd, buf_.get(), kReadBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    ClientFailed(c, err);
    return;
  }
  c->client_active = now;
  if (n == 0) {
    Note(c, "client_closed");
    c->c2s.eof = true;
    ShutServerIfDone(c);
    MaybeDone(c);
    return;
  }
  c->bytes_from_client += static_cast<double>(n);
  FromClient(c, buf_.get(), static_cast<size_t>(n), now);
}

// Client bytes on their way to the server (read now, or the early bytes of action log).
void Engine::FromClient(Conn* c, const char* p, size_t n, double now) {
  Passed passed;
  if (c->inspector) {
    // Only checked whole lines go on; a test with action reject/drop ends the session here, and
    // neither the offending line nor anything else of this read reaches the server.
    std::vector<Finding> found;
    c->inspector->FromClient(p, n, &passed, &found);
    for (const Finding& f : found) {
      if (!ReportProtocol(c, f, now)) return;
    }
    if (!c->inspector->active()) c->inspector.reset();
    if (passed.joined.empty()) {
      p = passed.p;  // the usual case: whole lines, forwarded from the read buffer as they are
      n = passed.n;
    } else {
      passed.joined.append(passed.p, passed.n);
      p = passed.joined.data();
      n = passed.joined.size();
    }
    if (n == 0) return;
  }
  if (c->watcher && c->watcher->watching() && c->watcher->Scan(p, n)) {
    // DATA/BDAT/STARTTLS: from here on the bytes are message data or TLS, never touched.
    std::string out;
    c->stripper->Stop(&out);
    if (!out.empty()) {
      ToClientRaw(c, out.data(), out.size(), now);
      if (c->dead) return;
    }
  }
  ToServer(c, p, n, now);
}

bool Engine::ReportProtocol(Conn* c, const Finding& f, double now) {
  Ev ev{EV_PROTOCOL, c->id};
  ev.s1 = TestName(f.test);
  ev.s2 = f.evidence;
  if (f.action == TestAction::Log) {
    ev.n1 = c->bytes_from_client;
    ev.n2 = c->bytes_to_client;
    Push(std::move(ev));
    return true;
  }
  // reject: the reply after what the server already said (its replies to the commands before),
  // the upstream closed at once — the backend never sees the line, nor a complete mail. drop: RST.
  ev.i1 = 1;  // the engine ended the session: no further events
  c->inspector.reset();
  if (f.action == TestAction::Reject)
    StartReply(c, c->profile->protocol.reject_reply, now);
  else
    Kill(c, true);
  ev.n1 = c->bytes_from_client;
  ev.n2 = c->bytes_to_client;
  Push(std::move(ev));
  return false;
}

// The server's 354 to DATA or 2xx to STARTTLS ended the inspection: a held partial line goes on.
void Engine::EndInspection(Conn* c, double now) {
  std::string rest;
  c->inspector->Release(&rest);
  c->inspector.reset();
  if (!rest.empty()) FromClient(c, rest.data(), rest.size(), now);
}

void Engine::ReadServer(Conn* c, double now) {
  ssize_t n = Recv(c->ufd, buf_.get(), kReadBuffer, 0);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
    ServerFailed(c, err, now);
    return;
  }
  c->server_active = now;
  if (n == 0) {
    Note(c, "server_closed");
    c->s2c.eof = true;
    if (c->stripper) {
      std::string out;
      c->stripper->Flush(&out);
      if (!out.empty()) {
        ToClientRaw(c, out.data(), out.size(), now);
        if (c->dead) return;
      }
    }
    // A client already reset (seen in this wakeup's events, or by the half-close failing with
    // ENOTCONN): nothing to half-close, and nothing more to relay — the server has ended and the
    // client aborted, so what it sent before its RST goes nowhere. The cause stays server_closed.
    ShutClientIfDone(c);
    if (c->client_hup) {
      EndRelay(c, Cause(c));
      return;
    }
    MaybeDone(c);
    return;
  }
  ToClient(c, buf_.get(), static_cast<size_t>(n), now);
}

void Engine::ToServer(Conn* c, const char* p, size_t n, double now) {
  if (!c->c2s.pending.empty()) {
    c->c2s.pending.Append(p, n);
    return;
  }
  ssize_t w = SendSome(c->ufd, p, n);
  if (w < 0) {
    ServerFailed(c, static_cast<int>(-w), now);
    return;
  }
  if (w > 0) c->server_active = now;
  if (static_cast<size_t>(w) < n) c->c2s.pending.Assign(p + w, n - static_cast<size_t>(w));
}

void Engine::ToClient(Conn* c, const char* p, size_t n, double now) {
  if (c->inspector && c->st == St::Relaying) {
    std::vector<Finding> found;
    c->inspector->FromServer(p, n, &found);
    for (const Finding& f : found) {
      if (!ReportProtocol(c, f, now)) return;  // reject/drop: neither this reply nor the held bytes go on
    }
    if (!c->inspector->active()) {
      EndInspection(c, now);
      if (c->dead) return;
    }
  }
  if (c->stripper && c->stripper->active()) {
    std::string out;
    c->stripper->Transform(p, n, &out);
    if (!out.empty()) ToClientRaw(c, out.data(), out.size(), now);
    return;
  }
  ToClientRaw(c, p, n, now);
}

void Engine::ToClientRaw(Conn* c, const char* p, size_t n, double now) {
  ssize_t w = WriteClient(c, p, n);
  if (w < 0) {
    ClientFailed(c, static_cast<int>(-w));
    return;
  }
  if (w > 0) c->client_active = now;
}

void Engine::FlushToClient(Conn* c, double now) {
  ssize_t w = SendSome(c->cfd, c->s2c.pending.begin(), c->s2c.pending.size());
  if (w < 0) {
    ClientFailed(c, static_cast<int>(-w));
    return;
  }
  if (w > 0) {
    c->client_active = now;
    c->bytes_to_client += static_cast<double>(w);
  }
  c->s2c.pending.Consume(static_cast<size_t>(w));
  if (!c->s2c.pending.empty()) return;
  ShutClientIfDone(c);
  MaybeDone(c);
}

void Engine::FlushToServer(Conn* c, double now) {
  ssize_t w = SendSome(c->ufd, c->c2s.pending.begin(), c->c2s.pending.size());
  if (w < 0) {
    ServerFailed(c, static_cast<int>(-w), now);
    return;
  }
  if (w > 0) c->server_active = now;
  c->c2s.pending.Consume(static_cast<size_t>(w));
  if (!c->c2s.pending.empty()) return;
  ShutServerIfDone(c);
  MaybeDone(c);
}

// The server ended and everything it sent reached the client: pass the half-close on.
void Engine::ShutClientIfDone(Conn* c) {
  if (c->s2c.eof && !c->s2c.shut && c->s2c.pending.empty()) {
    // On a client already reset it could only fail; ENOTCONN says it was reset meanwhile.
    if (!c->client_hup && shutdown(c->cfd, SHUT_WR) != 0 && errno == ENOTCONN) c->client_hup = true;
    c->s2c.shut = true;
  }
}

void Engine::ShutServerIfDone(Conn* c) {
  if (c->c2s.eof && !c->c2s.shut && c->c2s.pending.empty()) {
    shutdown(c->ufd, SHUT_WR);
    c->c2s.shut = true;
  }
}

void Engine::MaybeDone(Conn* c) {
  if (c->c2s.eof && c->c2s.shut && c->s2c.eof && c->s2c.shut) EndRelay(c, Cause(c));
}

}  // namespace etd
