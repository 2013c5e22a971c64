// Atomic writes: the target holds the old or the new content, never a partial
// one, and no temporary file is left behind on success or failure.
#include "models/atomic_file.h"

#include <dirent.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace ftx {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

int CountEntries(const std::string& directory) {
  int count = 0;
  DIR* dir = opendir(directory.c_str());
  if (dir == nullptr) return -1;
  while (dirent* entry = readdir(dir)) {
    if (std::string(entry->d_name) != "." && std::string(entry->d_name) != "..")
      ++count;
  }
  closedir(dir);
  return count;
}

TEST(AtomicFileTest, WritesReplacesAndCleansUp) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string directory =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/atomic";
  ASSERT_EQ(system(("mkdir -p " + directory).c_str()), 0);
  const std::string path = directory + "/file.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  EXPECT_EQ(ReadAll(path), "first");
  ASSERT_TRUE(WriteFileAtomically(path, "second, longer").ok());
  EXPECT_EQ(ReadAll(path), "second, longer");
  EXPECT_EQ(CountEntries(directory), 1);  // no temporary file left
  {
    AtomicFileWriter abandoned(path);
    ASSERT_TRUE(abandoned.Open().ok());
    ASSERT_TRUE(abandoned.Write("never committed").ok());
  }
  EXPECT_EQ(ReadAll(path), "second, longer");
  EXPECT_EQ(CountEntries(directory), 1);
  const absl::Status missing =
      WriteFileAtomically(directory + "/no/such/dir/f", "x");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("temporary file"), std::string::npos)
      << missing;
}

}  // namespace
}  // namespace ftx
