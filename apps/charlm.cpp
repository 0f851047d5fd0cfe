// apps/charlm.cpp: the `charlm` program: train, evaluate and sample a character-level language model.
//
// The commands live in models/charlm_cli.cpp (so tests can run them in-process); main only
// connects them to the real stdout/stderr and installs the Ctrl-C handler.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "models/charlm_cli.h"

int main(int argc, char** argv) {
  // OpenMP threads that spin-wait between parallel regions take the cores OpenBLAS's own
  // threads need: on 2 cores training ran 3.5x slower (2,757 vs 9,843 tokens/s). libgomp
  // reads OMP_WAIT_POLICY once, before main, so set it and start over (once; an explicit
  // setting by the user is kept, and if exec fails we simply run as we are).
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    ::execv("/proc/self/exe", argv);
  }
  std::ios::sync_with_stdio(false);
  lg::charlm::install_sigint_handler();
  lg::charlm::Console console{std::cout, std::cerr, ::isatty(STDOUT_FILENO) == 1,
                              ::isatty(STDERR_FILENO) == 1};
  std::vector<std::string> args(argv + 1, argv + argc);
  return lg::charlm::charlm_main(args, console);
}
