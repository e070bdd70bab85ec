// Implementation of the SMTP guard declared in smtp_guard.h: the PIPECONNECT stripper, the command watcher, the greeting's end.

#include "smtp_guard.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace etd {
namespace {

void FreeString(std::string* s) { std::string().swap(*s); }

bool IsKeywordLine(const char* p, size_t n) {
  // /^250[- ](?:PIPECONNECT|X_PIPE_CONNECT)(?:[ \t\r\n]|$)/i on the line's first 24 bytes.
  size_t h = std::min<size_t>(n, 24);
  if (h < 4 || p[0] != '2' || p[1] != '5' || p[2] != '0' || (p[3] != ' ' && p[3] != '-')) return false;
  for (const char* kw : {"PIPECONNECT", "X_PIPE_CONNECT"}) {
    size_t k = strlen(kw);
    if (4 + k > h || strncasecmp(p + 4, kw, k) != 0) continue;
    if (4 + k == h) return true;
    char c = p[4 + k];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') return true;
  }
  return false;
}

bool IsStopCommand(const std::string& s) {
  // /^(?:DATA|BDAT|STARTTLS)[ \t\r\n]/i
  for (const char* kw : {"DATA", "BDAT", "STARTTLS"}) {
    size_t k = strlen(kw);
    if (s.size() <= k || strncasecmp(s.data(), kw, k) != 0) continue;
    char c = s[k];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') return true;
  }
  return false;
}

}  // namespace

void Stripper::Transform(const char* p, size_t n, std::string* out) {
  if (!active_) {
    out->append(p, n);
    return;
  }
  std::string joined;
  const char* d = p;
  size_t len = n;
  if (!carry_.empty()) {
    joined.reserve(carry_.size() + n);
    joined.append(carry_).append(p, n);
    FreeString(&carry_);
    d = joined.data();
    len = joined.size();
  }
  size_t start = 0;
  for (;;) {
    const void* nl = memchr(d + start, '\n', len - start);
    if (nl == nullptr) break;
    size_t end = static_cast<size_t>(static_cast<const char*>(nl) - d) + 1;
    Line(d + start, end - start, out);
    start = end;
  }
  if (start < len) {
    if (len - start > kMaxLine) {
      FlushHeld(out);
      out->append(d + start, len - start);
    } else {
      carry_.assign(d + start, len - start);
    }
  }
}

void Stripper::Stop(std::string* out) {
  if (!active_) return;
  active_ = false;
  out->append(held_).append(carry_);
  FreeString(&held_);
  FreeString(&carry_);
}

void Stripper::Flush(std::string* out) {
  FlushHeld(out);
  out->append(carry_);
  FreeString(&carry_);
}

size_t Stripper::Heap() const { return (carry_.capacity() > 15 ? carry_.capacity() : 0) + (held_.capacity() > 15 ? held_.capacity() : 0); }

void Stripper::FlushHeld(std::string* out) {
  out->append(held_);
  FreeString(&held_);
}

void Stripper::Line(const char* p, size_t n, std::string* out) {
  if (IsKeywordLine(p, n)) {
    if (p[3] == ' ' && !held_.empty()) {
      // The keyword ended the reply: the held line becomes the last line.
      held_[3] = ' ';
      FlushHeld(out);
    } else if (p[3] == ' ') {
      // A one-line "250 PIPECONNECT" is no EHLO reply (its first line is the domain): keep it.
      out->append(p, n);
    }
    return;
  }
  FlushHeld(out);
  // A "250-" line longer than any reply line passes at once: the guard holds at most kMaxLine.
  if (n >= 4 && n <= kMaxLine && memcmp(p, "250-", 4) == 0)
    held_.assign(p, n);
  else
    out->append(p, n);
}

bool CommandWatcher::Scan(const char* p, size_t n) {
  size_t i = 0;
  while (i < n && watching_) {
    const void* nlp = memchr(p + i, '\n', n - i);
    size_t end = nlp != nullptr ? static_cast<size_t>(static_cast<const char*>(nlp) - p) + 1 : n;
    if (at_line_start_ || !carry_.empty()) {
      // Only a line's first bytes matter; keep at most a few across segments.
      carry_.append(p + i, std::min(end, i + kCommandHead) - i);
      if (carry_.size() > kCommandHead) carry_.resize(kCommandHead);
      if (IsStopCommand(carry_)) {
        watching_ = false;
        FreeString(&carry_);
        return true;
      }
      if (nlp != nullptr || carry_.size() >= kCommandHead) carry_.clear();
    }
    at_line_start_ = nlp != nullptr;
    i = end;
  }
  return false;
}

size_t GreetingEnd(const std::string& g, size_t from, size_t* line) {
  for (size_t i = from; i < g.size(); i++) {
    if (g[i] != '\n') continue;
    size_t line_len = i - *line;
    if (line_len < 4 || g[*line + 3] != '-') return i + 1;
    *line = i + 1;
  }
  return std::string::npos;
}

std::string GreetingCode(const std::string& g) {
  bool digits = g.size() >= 3 && std::isdigit(static_cast<unsigned char>(g[0])) && std::isdigit(static_cast<unsigned char>(g[1])) &&
                std::isdigit(static_cast<unsigned char>(g[2]));
  return digits ? g.substr(0, 3) : "garbage";
}

}  // namespace etd
