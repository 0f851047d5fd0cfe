// apps/charlm.cpp: the `charlm` program: train, evaluate and sample a character-level language model.
//
// The commands live in models/charlm_cli.cpp (so tests can run them in-process); main only
// connects them to the real stdout/stderr and installs the Ctrl-C handler.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "models/charlm_cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  lg::charlm::install_sigint_handler();
  lg::charlm::Console console{std::cout, std::cerr, ::isatty(STDOUT_FILENO) == 1,
                              ::isatty(STDERR_FILENO) == 1};
  std::vector<std::string> args(argv + 1, argv + argc);
  return lg::charlm::charlm_main(args, console);
}
