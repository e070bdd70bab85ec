// The SMTP knowledge of the engine: the PIPECONNECT guard (server → client stripper, client → server command watcher) and the greeting's
// end.
//
// Why the guard: an Exim client that once saw PIPECONNECT advertised sends EHLO before the
// banner on its next visit (its "pipelined connect"), which etd would rightly take for early
// talk. If clients never see the keyword through etd, they never pipeline the connect. The
// stripper works on lines however the reply is split into TCP segments; when the stripped
// keyword was the last line of a multi-line 250 reply, the line before it becomes the last one
// ("250-SIZE" → "250 SIZE"). It stops at the client's first DATA, BDAT or STARTTLS: after that
// the bytes are message data or TLS and are never touched. Tests: test/integration/guard.test.ts.

#ifndef ETD_SMTP_GUARD_H_
#define ETD_SMTP_GUARD_H_

#include <cstddef>
#include <string>

namespace etd {

// A line longer than this is not SMTP reply text: passed on as it is rather than buffered.
constexpr size_t kMaxLine = 4096;
// A line start the command watcher carries across segments (longer than "STARTTLS ").
constexpr size_t kCommandHead = 16;

// Server → client: drops `250[- ](PIPECONNECT|X_PIPE_CONNECT)` lines (case-insensitive) while
// active. Holds at most one partial line (≤ kMaxLine) and one `250-` line (≤ kMaxLine).
class Stripper {
 public:
  bool active() const { return active_; }
  // Appends the filtered form of [p, p+n) to *out.
  void Transform(const char* p, size_t n, std::string* out);
  // Stops filtering: what is held goes out as it is and the rest passes through untouched.
  void Stop(std::string* out);
  // The server's stream ended: what is held goes out.
  void Flush(std::string* out);
  size_t Heap() const;

 private:
  void FlushHeld(std::string* out);
  void Line(const char* p, size_t n, std::string* out);

  bool active_ = true;
  std::string carry_;
  std::string held_;  // the previous "250-" line, until we know whether the next line ends the reply
};

// Client → server: finds the first DATA, BDAT or STARTTLS at a line start.
class CommandWatcher {
 public:
  bool watching() const { return watching_; }
  // True when [p, p+n) completes the stop command (watching ends there).
  bool Scan(const char* p, size_t n);

 private:
  bool watching_ = true;
  bool at_line_start_ = true;
  std::string carry_;
};

// RFC 5321 reply end in the greeting read so far: scans g from `from`, advancing *line (the
// start of the current line); returns the offset just past the last line's LF, or npos.
// A reply line is the last one when its 4th char is not '-' (or it is shorter than 4 chars).
size_t GreetingEnd(const std::string& g, size_t from, size_t* line);

// The reply code of a greeting: its first 3 chars if they are digits, else "garbage".
std::string GreetingCode(const std::string& g);

}  // namespace etd

#endif  // ETD_SMTP_GUARD_H_
