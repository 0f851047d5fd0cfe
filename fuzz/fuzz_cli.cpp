// fuzz/fuzz_cli.cpp: the `charlm train` flag parser (parse_train_args) on arbitrary argument lists.
//
// The input is the argument list with a NUL byte after each argument (a trailing one optional):
// "--data\0a.txt\0--steps\0-3". lg::Error is the parser's answer to a bad command line; any
// other exception, crash or undefined behaviour is a finding. Settings it accepts must pass
// their own validation and survive the round trip through the checkpoint's JSON.
#include <cstdlib>

#include "fuzz/fuzz_files.h"
#include "models/charlm_cli.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = lg::fuzzing::as_text(data, size);
  if (!input.empty() && input.back() == '\0') input.remove_suffix(1);
  std::vector<std::string> args;
  if (!input.empty())
    for (std::string_view arg : lg::fuzzing::split(input, std::string_view("\0", 1))) args.emplace_back(arg);
  lg::charlm::TrainInvocation call;
  try {
    call = lg::charlm::parse_train_args(args);
  } catch (const lg::Error&) {
    return 0;
  }
  if (call.help) return 0;
  // Outside the try: an accepted command line that fails these is a finding too.
  call.settings.validate(false);
  const lg::json::Json saved = call.settings.to_json();
  if (lg::json::dump(lg::charlm::TrainSettings::from_json(saved).to_json()) != lg::json::dump(saved))
    std::abort();
  return 0;
}
