// apps/charlm.cpp: the `charlm` program: train, evaluate and sample a character-level language model.
//
// The commands live in models/charlm_cli.cpp (so tests can run them in-process); main only
// starts MPI when mpirun launched it (dist/dist.h), connects the commands to the real
// stdout/stderr (rank 0's stdout only) and installs the SIGINT/SIGTERM handlers.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "dist/dist.h"
#include "models/charlm_cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  const lg::dist::World* world = nullptr;
  try {
    world = &lg::dist::init();
  } catch (const std::exception& e) {
    std::cerr << "charlm: error: " << e.what() << std::endl;
    return lg::charlm::kExitError;
  }
  lg::charlm::install_stop_handlers();
  std::ostream silent(nullptr);  // ranks other than 0 print no results
  lg::charlm::Console console{world->rank == 0 ? std::cout : silent, std::cerr, ::isatty(STDOUT_FILENO) == 1,
                              ::isatty(STDERR_FILENO) == 1};
  std::vector<std::string> args(argv + 1, argv + argc);
  const int code = lg::charlm::charlm_main(args, console);
  lg::dist::finalize();
  return code;
}
