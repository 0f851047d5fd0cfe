// core/version.cpp: the library's own copy of the version, so a program can compare it with its headers'.
#include "core/version.h"

namespace lg {

const char* version() { return LATENTGRAD_VERSION; }

}  // namespace lg
