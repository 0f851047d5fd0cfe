// core/files.h: whole-file reads, crash-safe writes (tmp + fsync + rename) and content hashes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lg::files {

// The file's bytes; throws lg::Error "cannot read PATH: reason" when it is missing, unreadable or
// not a regular file (a directory, a FIFO, a device: refused before opening, which could block).
std::string read_file(const std::string& path);

// Writes `bytes` to PATH.tmp.PID, fsyncs it, renames it over PATH and fsyncs the directory:
// a reader sees either the old file or the whole new one, never a prefix. Throws lg::Error.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Creates DIR (and parents) if needed and checks that a file can be created in it. Throws
// lg::Error "cannot write to DIR: reason".
void ensure_writable_dir(const std::string& dir);

// Replaces directory `target` by directory `staged` as one step: renameat2(RENAME_EXCHANGE)
// where the filesystem supports it, else rename target aside, rename staged in, remove the old.
// Afterwards `staged` no longer exists.
void replace_dir(const std::string& staged, const std::string& target);

void remove_tree(const std::string& path);  // rm -rf; silent when missing
bool exists(const std::string& path);
void fsync_dir(const std::string& dir);

// FNV-1a, 64-bit: a cheap fingerprint to detect a corrupted file or a different corpus.
uint64_t fnv1a64(std::string_view bytes);

}  // namespace lg::files
