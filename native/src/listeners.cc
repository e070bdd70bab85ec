// Listeners: the fds the engine accepts on (engineListen/engineUnlisten), accept bursts, and the pause after EMFILE & co.

#include "engine.h"

#include "common.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace etd {

bool Engine::Listen(Napi::Env env, int fd, double listener_id) {
  std::string shown = "fd " + std::to_string(fd);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    int err = errno;
    ThrowSys(env, err, "fcntl", err == EBADF ? "the fd is not open" : strerror(err), Where{shown, nullptr, -1});
    return false;
  }
  int accepting = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0) {
    int err = errno;
    ThrowSys(env, err, "getsockopt(SO_ACCEPTCONN)", err == ENOTSOCK ? "the fd is not a socket" : strerror(err), Where{shown, nullptr, -1});
    return false;
  }
  if (!accepting) {
    ThrowSys(env, EINVAL, "getsockopt(SO_ACCEPTCONN)", "the fd is not a listening socket (bind and listen first)",
             Where{shown, nullptr, -1});
    return false;
  }
  // accept4 on a blocking listener would stall the whole event loop.
  if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    int err = errno;
    ThrowSys(env, err, "fcntl", strerror(err), Where{shown, nullptr, -1});
    return false;
  }
  uint64_t key = next_listener_key_++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag | key;
  if (EpollCtl(EPOLL_CTL_ADD, fd, &ev) != 0) {
    int err = errno;
    ThrowSys(env, err, "epoll_ctl", err == EEXIST ? "the engine already watches this fd" : Hint(err, "epoll_ctl", 4, "", -1, false),
             Where{shown, nullptr, -1});
    return false;
  }
  Listener l{fd, listener_id, false, Timer{}};
  LearnListener(fd, &l);
  listeners_[key] = std::move(l);
  return true;
}

// What every accepted socket of this listener will share, found out once here instead of by a
// syscall per connection. Linux copies TCP_NODELAY from the listener to the sockets it accepts.
// A listener bound to one address (no wildcard) and not IP_TRANSPARENT only ever accepts
// connections addressed to that address and port, so their local end is known; a wildcard or a
// transparent (TPROXY) listener needs getsockname per connection (the original destination).
// Anything that cannot be found out keeps the per-connection syscall.
void Engine::LearnListener(int fd, Listener* l) {
  int one = 1;
  l->nodelay_inherited = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  int transparent = 1;
  socklen_t tlen = sizeof transparent;
  bool wildcard;
  if (ss.ss_family == AF_INET) {
    wildcard = reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (getsockopt(fd, SOL_IP, IP_TRANSPARENT, &transparent, &tlen) != 0) return;
  } else if (ss.ss_family == AF_INET6) {
    wildcard = IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr);
    if (getsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &transparent, &tlen) != 0) return;
  } else {
    return;
  }
  if (wildcard || transparent != 0) return;
  l->local_known = FormatAddress(ss, &l->local_family, &l->local_address, &l->local_port);
}

void Engine::Unlisten(double listener_id) {
  for (auto it = listeners_.begin(); it != listeners_.end();) {
    if (it->second.listener_id == listener_id) {
      Unschedule(&it->second.resume);
      close(it->second.fd);  // also leaves epoll
      it = listeners_.erase(it);
    } else {
      ++it;
    }
  }
}

void Engine::PauseListener(uint64_t key, Listener* l, double now) {
  epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr);
  l->paused = true;
  Schedule(&l->resume, Kind::ListenerResume, key, now + kAcceptPauseMs);
}

void Engine::Accept(uint64_t key, double now) {
  auto it = listeners_.find(key);
  if (it == listeners_.end() || it->second.paused) return;
  Listener* l = &it->second;
  for (int k = 0; k < kAcceptBurst; k++) {
    sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fault = faults_.Hit(Sys::Accept4);
    int fd = fault != 0 ? (errno = fault, -1) : accept4(l->fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      // Failures of that one connection (Linux passes pending network errors to accept): next.
      if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == ENETDOWN || err == ENOPROTOOPT || err == EHOSTDOWN ||
          err == ENONET || err == EHOSTUNREACH || err == EOPNOTSUPP || err == ENETUNREACH || err == EPERM)
        continue;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: the listener stays readable; pause instead of spinning.
      Ev ev{EV_ERROR, 0};
      ev.n1 = l->listener_id;
      ev.s1 = "accept";
      ev.s2 = ErrnoName(err);
      Push(std::move(ev));
      PauseListener(key, l, now);
      return;
    }
    if (!l->nodelay_inherited) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    Ev ev{EV_ACCEPT, 0};
    int lfamily;
    int lport;
    bool ok = FormatAddress(peer, &ev.i1, &ev.s1, &ev.i2);
    if (ok && l->local_known) {
      ev.s2 = l->local_address;
      lport = l->local_port;
    } else if (ok) {
      sockaddr_storage local;
      socklen_t llen = sizeof local;
      ok = getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) == 0 && FormatAddress(local, &lfamily, &ev.s2, &lport);
    }
    if (!ok) {
      close(fd);  // not an inet peer, or already gone: nothing JS could do with it
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_seq_->fetch_add(1, std::memory_order_relaxed) << kThreadBits | static_cast<uint64_t>(index_);
    accepted_total_++;
    c->cfd = fd;
    c->accepted_at = now;
    ev.id = c->id;
    ev.n1 = l->listener_id;
    ev.n2 = lport;
    conns_.emplace(c->id, std::move(c));
    Push(std::move(ev));
  }
}

}  // namespace etd
