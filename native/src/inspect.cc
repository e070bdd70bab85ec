// Implementation of the inline protocol tests declared in inspect.h: the client's lines checked, the server's reply lines counted.

#include "inspect.h"

#include <strings.h>

#include <algorithm>
#include <cstring>

namespace etd {
namespace {

// The first word of a line: up to the first space, tab, CR or LF.
size_t WordLength(const char* p, size_t n) {
  size_t w = 0;
  while (w < n && p[w] != ' ' && p[w] != '\t' && p[w] != '\r' && p[w] != '\n') w++;
  return w;
}

bool WordIs(const char* w, size_t n, const char* kw) { return strlen(kw) == n && strncasecmp(w, kw, n) == 0; }

bool IsPipeliningLine(const char* p, size_t n) {
  // /^250[- ]PIPELINING(?:[ \t\r\n]|$)/i on the line's first bytes.
  constexpr size_t k = 10;  // strlen("PIPELINING")
  if (n < 4 + k || memcmp(p, "250", 3) != 0 || (p[3] != ' ' && p[3] != '-')) return false;
  if (strncasecmp(p + 4, "PIPELINING", k) != 0) return false;
  if (n == 4 + k) return true;
  char c = p[4 + k];
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

bool Digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

Inspector::Inspector(const ProtocolTests& rules, size_t evidence_bytes) : rules_(rules), evidence_bytes_(evidence_bytes) {
  Push(kGreeting);  // the greeting is the first reply the client waits for
}

void Inspector::Push(Kind k) {
  if (count_ >= kMaxOutstanding) return;  // cannot happen: commands are bounded by max_commands
  queue_[(head_ + count_) % kMaxOutstanding] = k;
  count_++;
  if (!Groupable(k)) blocking_++;
}

Inspector::Kind Inspector::Pop() {
  Kind k = queue_[head_];
  head_ = (head_ + 1) % kMaxOutstanding;
  count_--;
  if (!Groupable(k)) blocking_--;
  return k;
}

void Inspector::FromServer(const char* p, size_t n, std::vector<Finding>* found) {
  size_t i = 0;
  while (i < n && active_) {
    const void* nl = memchr(p + i, '\n', n - i);
    size_t end = nl != nullptr ? static_cast<size_t>(static_cast<const char*>(nl) - p) + 1 : n;
    size_t take = std::min(end - i, sizeof shead_ - shead_len_);
    memcpy(shead_ + shead_len_, p + i, take);
    shead_len_ += static_cast<uint32_t>(take);
    if (nl != nullptr) {
      ServerLine(found);
      shead_len_ = 0;
    }
    i = end;
  }
}

void Inspector::ServerLine(std::vector<Finding>* found) {
  const char* h = shead_;
  size_t n = shead_len_;
  if (n < 3 || !Digit(h[0]) || !Digit(h[1]) || !Digit(h[2])) return;  // not a reply line
  if (count_ > 0 && queue_[head_] == kEhlo && IsPipeliningLine(h, n)) ehlo_pipelining_ = true;
  // RFC 5321 §4.2: the last line of a reply has a space (or nothing) after the code.
  if (n >= 4 && h[3] == '-') return;
  if (count_ == 0) return;  // a reply nobody asked for (a 421 before closing): nothing to count
  Kind k = Pop();
  switch (k) {
    case kEhlo:
      offered_ = h[0] == '2' && ehlo_pipelining_;
      ehlo_pipelining_ = false;
      return;
    case kData:
      if (h[0] == '3') Ended(found);  // 354: message data follows, never inspected
      return;
    case kStartTls:
      if (h[0] == '2') Ended(found);  // TLS follows
      return;
    case kAuth:
      if (h[0] == '3') sasl_ = true;  // 334: the client's next line is a SASL response
      return;
    default: return;
  }
}

void Inspector::Ended(std::vector<Finding>* found) {
  active_ = false;
  if (held_.empty() || rules_.pipelining == TestAction::Ignore || fired_[0]) return;
  // Bytes after DATA / STARTTLS before its reply: the client did not wait.
  if (!Fire(Test::Pipelining, rules_.pipelining, held_.data(), held_.size(), found)) std::string().swap(held_);
}

void Inspector::FromClient(const char* p, size_t n, Passed* out, std::vector<Finding>* found) {
  // held_ can only be non-empty at entry (within a call only the last, partial line is held).
  size_t from = 0;  // where the passed region of p begins (past a line completed from held_)
  size_t i = 0;
  while (i < n && active_) {
    const void* nl = memchr(p + i, '\n', n - i);
    size_t end = nl != nullptr ? static_cast<size_t>(static_cast<const char*>(nl) - p) + 1 : n;
    size_t len = held_.size() + (end - i);
    // Past the bound the rest is not inspected: it goes on as it is, a held line first.
    if (bytes_ + len > rules_.max_bytes || (nl != nullptr && commands_ >= rules_.max_commands)) {
      active_ = false;
      Release(&out->joined);
      break;
    }
    if (nl == nullptr) {
      held_.append(p + i, end - i);
      out->p = p + from;
      out->n = i - from;
      return;
    }
    bool joined = !held_.empty();
    const char* line = p + i;
    if (joined) {
      held_.append(p + i, end - i);
      line = held_.data();
    }
    if (!ClientLine(line, len, found)) {
      active_ = false;
      std::string().swap(held_);
      std::string().swap(out->joined);
      out->p = p;
      out->n = 0;
      return;
    }
    bytes_ += static_cast<uint32_t>(len);
    if (joined) {
      out->joined.swap(held_);
      std::string().swap(held_);
      from = end;
    }
    i = end;
  }
  // Every line passed, or the inspection ended here (bound, BDAT): the rest goes on untouched.
  out->p = p + from;
  out->n = n - from;
}

bool Inspector::ClientLine(const char* line, size_t len, std::vector<Finding>* found) {
  commands_++;
  bool sasl = sasl_;
  sasl_ = false;
  size_t w = WordLength(line, len);
  // The tests, in this order: the most specific first (an HTTP request's first line is a
  // non-SMTP command before it is a bare newline or a pipelined line).
  if (!sasl && rules_.non_smtp_command != TestAction::Ignore && !fired_[1]) {
    for (const std::string& cmd : rules_.commands) {
      if (cmd.size() == w && strncasecmp(line, cmd.data(), w) == 0) {
        if (!Fire(Test::NonSmtpCommand, rules_.non_smtp_command, line, len, found)) return false;
        break;
      }
    }
  }
  if (rules_.bare_newline != TestAction::Ignore && !fired_[2] && (len < 2 || line[len - 2] != '\r')) {
    if (!Fire(Test::BareNewline, rules_.bare_newline, line, len, found)) return false;
  }
  // RFC 2920: without PIPELINING every command waits for the reply to the one before; with it,
  // only RSET, MAIL, SEND, SOML, SAML and RCPT may be followed by more commands before their
  // reply (§3.1: EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP must be last in a group; RFC 3207
  // says the same of STARTTLS). Anything else outstanding makes the next line a violation.
  if (rules_.pipelining != TestAction::Ignore && !fired_[0] && count_ > 0 && (!offered_ || blocking_ > 0)) {
    if (!Fire(Test::Pipelining, rules_.pipelining, line, len, found)) return false;
  }
  if (sasl) {
    Push(kAuth);  // answered like AUTH: 334 (another round), 235 or an error
    return true;
  }
  Kind k = kLast;
  if (WordIs(line, w, "EHLO")) {
    k = kEhlo;
    offered_ = false;  // until this EHLO's reply says otherwise
    ehlo_pipelining_ = false;
  } else if (WordIs(line, w, "HELO")) {
    k = kHelo;
    offered_ = false;
  } else if (WordIs(line, w, "DATA")) {
    k = kData;
  } else if (WordIs(line, w, "STARTTLS")) {
    k = kStartTls;
  } else if (WordIs(line, w, "AUTH")) {
    k = kAuth;
  } else if (WordIs(line, w, "BDAT")) {
    // Chunk data follows the command at once (RFC 3030): not lines, never inspected.
    active_ = false;
    return true;
  } else {
    for (const char* g : {"MAIL", "RCPT", "RSET", "SEND", "SOML", "SAML"}) {
      if (WordIs(line, w, g)) {
        k = kGroupable;
        break;
      }
    }
  }
  Push(k);
  return true;
}

bool Inspector::Fire(Test t, TestAction action, const char* line, size_t len, std::vector<Finding>* found) {
  fired_[static_cast<int>(t)] = true;
  found->push_back(Finding{t, action, std::string(line, std::min(len, evidence_bytes_))});
  return action == TestAction::Log;
}

void Inspector::Release(std::string* out) {
  out->append(held_);
  std::string().swap(held_);
}

}  // namespace etd
