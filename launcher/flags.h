#ifndef TESSERA_LAUNCHER_FLAGS_H_
#define TESSERA_LAUNCHER_FLAGS_H_

// Command-line flags of one subcommand. Accepts "--name value", "--name=value", "-n value"
// for flags declared with a short name, and "--flag"/"--no-flag" for booleans. Unknown
// flags, missing values and malformed numbers are INVALID_ARGUMENT naming the flag.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tessera::launcher {

class FlagSet {
 public:
  // `command` is the full command for messages ("tessera comm-bench"); `summary` one line.
  FlagSet(std::string command, std::string summary);

  // Each flag writes into `target`, whose current value is the default shown by --help.
  void String(std::string name, std::string* target, std::string help, char short_name = 0);
  void Int(std::string name, int* target, std::string help, char short_name = 0);
  // A decimal number ("0.9", "1e-3"); inf and nan are refused.
  void Double(std::string name, double* target, std::string help);
  void Bool(std::string name, bool* target, std::string help);
  void Duration(std::string name, absl::Duration* target, std::string help);
  // A duration, or "off" (also "0"): zero, for a limit that may be turned off.
  void DurationOrOff(std::string name, absl::Duration* target, std::string help);
  // A byte count with an optional K, M or G suffix (powers of 1024): "8", "64K", "256M".
  void Bytes(std::string name, int64_t* target, std::string help, char short_name = 0);

  // Parses `args` (without the program and subcommand names). Sets *help_requested when
  // --help or -h is present, in which case nothing else is parsed.
  absl::Status Parse(const std::vector<std::string>& args, bool* help_requested);

  std::string Usage() const;
  const std::string& command() const { return command_; }

 private:
  struct Flag {
    std::string name;
    char short_name;
    std::string help;
    std::string default_text;
    bool is_bool;
    std::function<absl::Status(absl::string_view)> set;
  };
  void Add(Flag flag);
  const Flag* Find(absl::string_view name, bool is_long) const;

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
};

// "64K" -> 65536. INVALID_ARGUMENT naming the text when malformed.
absl::Status ParseBytes(absl::string_view text, int64_t* bytes);
// 65536 -> "64K" (exact K/M/G multiples), else the plain number.
std::string FormatBytes(int64_t bytes);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_FLAGS_H_
