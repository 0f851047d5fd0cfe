// core/files.cpp: POSIX implementations of the whole-file and crash-safe file helpers.
#include "core/files.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28, _GNU_SOURCE)
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/tensor.h"

namespace fs = std::filesystem;

namespace lg::files {

static std::string errno_text() { return std::strerror(errno); }

std::string read_file(const std::string& path) {
  // Looked at before opening: opening a FIFO blocks until a writer comes, and a device such as
  // /dev/zero never ends. A missing file falls through to the open, which says why.
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!ec && status.type() == fs::file_type::directory)
    throw Error(fmt::format("cannot read {}: it is a directory", path));
  if (!ec && status.type() != fs::file_type::regular)
    throw Error(fmt::format("cannot read {}: not a regular file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path, errno ? errno_text() : "cannot open"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("cannot read {}: read error", path));
  return buffer.str();
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some filesystems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

static std::string parent_of(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("cannot write {}: {}", path, errno_text()));
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = errno_text();
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(fmt::format("cannot write {}: {}", path, why));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {}: {}", path, why));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {}: {}", path, why));
  }
  fsync_dir(parent_of(path));
}

void ensure_writable_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot write to {}: {}", dir, ec.message()));
  if (!fs::is_directory(dir, ec)) throw Error(fmt::format("cannot write to {}: not a directory", dir));
  std::string probe = fmt::format("{}/.write-probe.{}", dir, ::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("cannot write to {}: {}", dir, errno_text()));
  ::close(fd);
  ::unlink(probe.c_str());
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

void replace_dir(const std::string& staged, const std::string& target) {
  if (!exists(target)) {
    if (::rename(staged.c_str(), target.c_str()) != 0)
      throw Error(fmt::format("cannot move {} to {}: {}", staged, target, errno_text()));
  } else if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(staged);  // now holds the old contents
  } else {
    // No atomic exchange here: for a moment only `old` exists (checkpoint loading looks there).
    std::string old = target + ".old";
    remove_tree(old);
    if (::rename(target.c_str(), old.c_str()) != 0 || ::rename(staged.c_str(), target.c_str()) != 0)
      throw Error(fmt::format("cannot move {} to {}: {}", staged, target, errno_text()));
    remove_tree(old);
  }
  fsync_dir(parent_of(target));
}

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace lg::files
