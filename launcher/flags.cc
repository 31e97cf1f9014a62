#include "launcher/flags.h"

#include <cmath>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/comm_options.h"

namespace tessera::launcher {

absl::Status ParseBytes(absl::string_view text, int64_t* bytes) {
  int64_t scale = 1;
  absl::string_view digits = text;
  if (!digits.empty()) {
    switch (digits.back()) {
      case 'K':
      case 'k':
        scale = int64_t{1} << 10;
        break;
      case 'M':
      case 'm':
        scale = int64_t{1} << 20;
        break;
      case 'G':
      case 'g':
        scale = int64_t{1} << 30;
        break;
      default:
        break;
    }
    if (scale != 1) digits.remove_suffix(1);
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(digits, &value) || value < 0 || value > (int64_t{1} << 50) / scale) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a byte count (examples: 8, 64K, 256M, 1G)"));
  }
  *bytes = value * scale;
  return absl::OkStatus();
}

std::string FormatBytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30) && bytes % (int64_t{1} << 30) == 0)
    return absl::StrCat(bytes >> 30, "G");
  if (bytes >= (int64_t{1} << 20) && bytes % (int64_t{1} << 20) == 0)
    return absl::StrCat(bytes >> 20, "M");
  if (bytes >= (int64_t{1} << 10) && bytes % (int64_t{1} << 10) == 0)
    return absl::StrCat(bytes >> 10, "K");
  return absl::StrCat(bytes);
}

FlagSet::FlagSet(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagSet::Add(Flag flag) { flags_.push_back(std::move(flag)); }

void FlagSet::String(std::string name, std::string* target, std::string help, char short_name) {
  Add({std::move(name), short_name, std::move(help), *target, false, [target](absl::string_view v) {
         *target = std::string(v);
         return absl::OkStatus();
       }});
}

void FlagSet::Int(std::string name, int* target, std::string help, char short_name) {
  std::string flag = name;
  Add({std::move(name), short_name, std::move(help), absl::StrCat(*target), false,
       [target, flag](absl::string_view v) {
         int value = 0;
         if (!absl::SimpleAtoi(v, &value)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", flag, ": '", v, "' is not an integer"));
         }
         *target = value;
         return absl::OkStatus();
       }});
}

void FlagSet::Double(std::string name, double* target, std::string help) {
  std::string flag = name;
  Add({std::move(name), 0, std::move(help), absl::StrCat(*target), false,
       [target, flag](absl::string_view v) {
         double value = 0;
         if (!absl::SimpleAtod(v, &value) || !std::isfinite(value)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", flag, ": '", v, "' is not a number"));
         }
         *target = value;
         return absl::OkStatus();
       }});
}

void FlagSet::Bool(std::string name, bool* target, std::string help) {
  std::string flag = name;
  Add({std::move(name), 0, std::move(help), *target ? "true" : "false", true,
       [target, flag](absl::string_view v) {
         if (v == "true" || v == "1") {
           *target = true;
         } else if (v == "false" || v == "0") {
           *target = false;
         } else {
           return absl::InvalidArgumentError(
               absl::StrCat("--", flag, ": '", v, "' is not true or false"));
         }
         return absl::OkStatus();
       }});
}

void FlagSet::Duration(std::string name, absl::Duration* target, std::string help) {
  std::string flag = name;
  Add({std::move(name), 0, std::move(help), absl::FormatDuration(*target), false,
       [target, flag](absl::string_view v) {
         absl::StatusOr<absl::Duration> parsed = comm::ParseTimeout(v);
         if (!parsed.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", flag, ": ", parsed.status().message()));
         }
         *target = *parsed;
         return absl::OkStatus();
       }});
}

void FlagSet::DurationOrOff(std::string name, absl::Duration* target, std::string help) {
  std::string flag = name;
  Add({std::move(name), 0, std::move(help),
       *target == absl::ZeroDuration() ? std::string("off") : absl::FormatDuration(*target), false,
       [target, flag](absl::string_view v) {
         if (v == "off" || v == "0") {
           *target = absl::ZeroDuration();
           return absl::OkStatus();
         }
         absl::StatusOr<absl::Duration> parsed = comm::ParseTimeout(v);
         if (!parsed.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", flag, ": ", parsed.status().message(), " (or off)"));
         }
         *target = *parsed;
         return absl::OkStatus();
       }});
}

void FlagSet::Bytes(std::string name, int64_t* target, std::string help, char short_name) {
  std::string flag = name;
  Add({std::move(name), short_name, std::move(help), FormatBytes(*target), false,
       [target, flag](absl::string_view v) {
         absl::Status s = ParseBytes(v, target);
         if (!s.ok())
           return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", s.message()));
         return absl::OkStatus();
       }});
}

const FlagSet::Flag* FlagSet::Find(absl::string_view name, bool is_long) const {
  for (const Flag& flag : flags_) {
    if (is_long ? flag.name == name : (name.size() == 1 && flag.short_name == name[0])) {
      return &flag;
    }
  }
  return nullptr;
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args, bool* help_requested) {
  *help_requested = false;
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      *help_requested = true;
      return absl::OkStatus();
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    bool is_long = arg.size() > 2 && arg.substr(0, 2) == "--";
    bool is_short = !is_long && arg.size() == 2 && arg[0] == '-';
    if (!is_long && !is_short) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": unexpected argument '", arg, "' (see --help)"));
    }
    absl::string_view name = arg.substr(is_long ? 2 : 1);
    std::optional<absl::string_view> value;
    if (size_t eq = name.find('='); is_long && eq != absl::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Flag* flag = Find(name, is_long);
    if (flag == nullptr && is_long && name.substr(0, 3) == "no-" && !value) {
      const Flag* negated = Find(name.substr(3), /*is_long=*/true);
      if (negated != nullptr && negated->is_bool) {
        if (absl::Status s = negated->set("false"); !s.ok()) return s;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": unknown flag '", arg, "' (see --help)"));
    }
    if (!value) {
      if (flag->is_bool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(command_, ": flag '", arg, "' needs a value"));
      }
    }
    if (absl::Status s = flag->set(*value); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(command_, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat("usage: ", command_, " [flags]\n\n", summary_, "\n\nflags:\n");
  for (const Flag& flag : flags_) {
    std::string names = flag.short_name
                            ? absl::StrCat("-", std::string(1, flag.short_name), ", --", flag.name)
                            : absl::StrCat("    --", flag.name);
    absl::StrAppendFormat(&out, "  %-24s %s (default: %s)\n", names, flag.help,
                          flag.default_text.empty() ? "\"\"" : flag.default_text);
  }
  absl::StrAppend(&out, "  -h, --help                 this message\n");
  return out;
}

}  // namespace tessera::launcher
