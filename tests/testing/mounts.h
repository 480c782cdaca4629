#ifndef ZFARM_TESTS_TESTING_MOUNTS_H_
#define ZFARM_TESTS_TESTING_MOUNTS_H_

// Small file systems that a fault test mounts over one of its directories (needs
// root, like CI): a size-capped tmpfs (a disk that fills up), and an ext4 image on
// a loop device mounted with errors=remount-ro, which BreakToReadOnly() turns
// read-only the way a failing disk does (ext4's trigger_fs_error: open files and
// new writes then fail with EROFS). Repair() unmounts, fsck's and remounts it
// read-write; what was fsynced before the fault is still there. The destructor
// unmounts and frees the loop device, also after a failed test.
//
//   ASSERT_OK_AND_ASSIGN(auto out, ScratchMount::Tmpfs(dir + "/out", "4m"));
//   ASSERT_OK_AND_ASSIGN(auto state, ScratchMount::Ext4(dir + "/state", dir + "/state.img", 64));
//   ASSERT_OK(state->BreakToReadOnly());  ...  ASSERT_OK(state->Repair());

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"
#include "tests/testing/subprocess.h"

namespace zfarm::testing {

class ScratchMount {
 public:
  // A tmpfs of `size` ("4m") over `path` (created if missing).
  static absl::StatusOr<std::unique_ptr<ScratchMount>> Tmpfs(const std::string& path,
                                                             const std::string& size) {
    std::unique_ptr<ScratchMount> m(new ScratchMount(path));
    std::filesystem::create_directories(path);
    ZFARM_RETURN_IF_ERROR(Sh("mount -t tmpfs -o size=" + size + " zfarm-test '" + path + "'",
                                  "mounting a tmpfs needs root"));
    m->mounted_ = true;
    return m;
  }

  // An ext4 file system of `mib` MiB in the file `image`, on a loop device, over
  // `path`, mounted with errors=remount-ro.
  static absl::StatusOr<std::unique_ptr<ScratchMount>> Ext4(const std::string& path,
                                                            const std::string& image, int mib) {
    std::unique_ptr<ScratchMount> m(new ScratchMount(path));
    std::filesystem::create_directories(path);
    ZFARM_RETURN_IF_ERROR(Sh(absl::StrCat("truncate -s ", mib, "M '", image, "'"), ""));
    ZFARM_RETURN_IF_ERROR(Sh("mkfs.ext4 -q -F '" + image + "'",
                                  "mkfs.ext4 (e2fsprogs) is required"));
    CommandResult r = RunCommand("losetup --find --show '" + image + "' 2>&1");
    if (r.exit_code != 0 || r.out.rfind("/dev/loop", 0) != 0) {
      return absl::FailedPreconditionError("losetup: a loop device needs root: " + r.out);
    }
    m->image_ = image;
    m->loop_ = r.out.substr(0, r.out.find('\n'));
    ZFARM_RETURN_IF_ERROR(Sh(m->MountCommand(), ""));
    m->mounted_ = true;
    return m;
  }

  ~ScratchMount() {
    if (mounted_) RunCommand("umount -l '" + path_ + "' 2>&1");
    if (!loop_.empty()) RunCommand("losetup -d " + loop_ + " 2>&1");
  }
  ScratchMount(const ScratchMount&) = delete;
  ScratchMount& operator=(const ScratchMount&) = delete;

  // ext4 only: the kernel records an error and (errors=remount-ro) makes the
  // file system read-only under every open file.
  absl::Status BreakToReadOnly() {
    if (loop_.empty()) return absl::FailedPreconditionError("not an ext4 scratch mount");
    const std::string knob = "/sys/fs/ext4/" + loop_.substr(5) + "/trigger_fs_error";
    ZFARM_RETURN_IF_ERROR(Sh("echo zfarm-fault-test > " + knob, ""));
    if (RunCommand("touch '" + path_ + "/.probe' 2>/dev/null").exit_code == 0) {
      return absl::InternalError(path_ + " is still writable after " + knob);
    }
    return absl::OkStatus();
  }

  // ext4 only: unmount (every process using it must be gone), fsck, mount again.
  absl::Status Repair() {
    if (loop_.empty()) return absl::FailedPreconditionError("not an ext4 scratch mount");
    ZFARM_RETURN_IF_ERROR(Sh("umount '" + path_ + "'", ""));
    mounted_ = false;
    // e2fsck exits 1 when it fixed something (the recorded error): fine.
    CommandResult r = RunCommand("e2fsck -fy " + loop_ + " 2>&1");
    if (r.exit_code != 0 && r.exit_code != 1) return absl::InternalError("e2fsck: " + r.out);
    ZFARM_RETURN_IF_ERROR(Sh(MountCommand(), ""));
    mounted_ = true;
    return absl::OkStatus();
  }

 private:
  explicit ScratchMount(std::string path) : path_(std::move(path)) {}
  // Runs `cmd`; FAILED_PRECONDITION with its output (and `hint`) when it fails.
  static absl::Status Sh(const std::string& cmd, const std::string& hint) {
    CommandResult r = RunCommand(cmd + " 2>&1");
    if (r.exit_code == 0) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(cmd, ": ", r.out, hint.empty() ? "" : " (", hint, hint.empty() ? "" : ")"));
  }
  std::string MountCommand() const {
    return "mount -o errors=remount-ro " + loop_ + " '" + path_ + "'";
  }

  std::string path_, image_, loop_;
  bool mounted_ = false;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_MOUNTS_H_
