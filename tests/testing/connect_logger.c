/* connect_logger: an LD_PRELOAD library for tests that records every outgoing
 * network attempt of a process and its children, for the offline guarantee
 * ("the worker dials nothing but the scheduler") without slowing the process
 * down the way ptrace does (CUDA's start-up under strace took minutes).
 *
 *   LD_PRELOAD=libzfarm_connect_logger.so ZFARM_CONNECT_LOG=/tmp/c.log prog ...
 *
 * Wraps connect(), sendto() and sendmsg() (the last two only when they carry a
 * destination address, e.g. unconnected UDP) and appends one line per call:
 *
 *   connect pid=123 family=AF_INET addr=127.0.0.1 port=50051 result=EINPROGRESS
 *
 * family: AF_INET | AF_INET6 | AF_UNIX (addr = the path, "@name" for abstract
 * sockets) | AF_NETLINK (addr = "kernel") | AF_<number>; result: "ok" or the errno
 * name. Each line is one write() to a file opened with O_APPEND, so threads and
 * child processes never interleave within a line. errno is preserved. Calls made
 * with raw syscall(2) bypass it: tests pair it with a network namespace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void log_attempt(const char* call, const struct sockaddr* addr, socklen_t len, int result,
                        int err) {
  const char* path = getenv("ZFARM_CONNECT_LOG");
  if (path == NULL || *path == '\0' || addr == NULL || len < sizeof(sa_family_t)) return;
  char family[16], where[128] = "", port[16] = "";
  switch (addr->sa_family) {
    case AF_INET: {
      const struct sockaddr_in* in = (const struct sockaddr_in*)addr;
      snprintf(family, sizeof family, "AF_INET");
      inet_ntop(AF_INET, &in->sin_addr, where, sizeof where);
      snprintf(port, sizeof port, " port=%u", ntohs(in->sin_port));
      break;
    }
    case AF_INET6: {
      const struct sockaddr_in6* in6 = (const struct sockaddr_in6*)addr;
      snprintf(family, sizeof family, "AF_INET6");
      inet_ntop(AF_INET6, &in6->sin6_addr, where, sizeof where);
      snprintf(port, sizeof port, " port=%u", ntohs(in6->sin6_port));
      break;
    }
    case AF_UNIX: {
      const struct sockaddr_un* un = (const struct sockaddr_un*)addr;
      size_t n = len > offsetof(struct sockaddr_un, sun_path)
                     ? len - offsetof(struct sockaddr_un, sun_path)
                     : 0;
      if (n > sizeof where - 2) n = sizeof where - 2;
      snprintf(family, sizeof family, "AF_UNIX");
      if (n > 0 && un->sun_path[0] == '\0') { /* abstract socket */
        where[0] = '@';
        memcpy(where + 1, un->sun_path + 1, n - 1);
        where[n] = '\0';
      } else {
        memcpy(where, un->sun_path, n);
        where[n] = '\0';
      }
      for (char* c = where; *c; ++c) {
        if (*c == ' ' || *c == '\n' || (unsigned char)*c < 0x20) *c = '?';
      }
      break;
    }
    case AF_NETLINK:
      snprintf(family, sizeof family, "AF_NETLINK");
      snprintf(where, sizeof where, "kernel");
      break;
    default:
      snprintf(family, sizeof family, "AF_%d", addr->sa_family);
      snprintf(where, sizeof where, "?");
  }
  const char* res = result == 0 ? "ok" : strerrorname_np(err);
  char line[256];
  int n = snprintf(line, sizeof line, "%s pid=%d family=%s addr=%s%s result=%s\n", call,
                   (int)getpid(), family, where, port, res ? res : "?");
  if (n <= 0) return;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t ignored = write(fd, line, (size_t)n);
  (void)ignored;
  close(fd);
}

int connect(int fd, const struct sockaddr* addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr*, socklen_t);
  if (real == NULL) real = (int (*)(int, const struct sockaddr*, socklen_t))dlsym(RTLD_NEXT, "connect");
  int r = real(fd, addr, len);
  int err = errno;
  log_attempt("connect", addr, len, r == 0 ? 0 : -1, err);
  errno = err;
  return r;
}

ssize_t sendto(int fd, const void* buf, size_t n, int flags, const struct sockaddr* addr,
               socklen_t len) {
  static ssize_t (*real)(int, const void*, size_t, int, const struct sockaddr*, socklen_t);
  if (real == NULL) {
    real = (ssize_t(*)(int, const void*, size_t, int, const struct sockaddr*, socklen_t))dlsym(
        RTLD_NEXT, "sendto");
  }
  ssize_t r = real(fd, buf, n, flags, addr, len);
  int err = errno;
  if (addr != NULL) log_attempt("sendto", addr, len, r >= 0 ? 0 : -1, err);
  errno = err;
  return r;
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  static ssize_t (*real)(int, const struct msghdr*, int);
  if (real == NULL) real = (ssize_t(*)(int, const struct msghdr*, int))dlsym(RTLD_NEXT, "sendmsg");
  ssize_t r = real(fd, msg, flags);
  int err = errno;
  if (msg != NULL && msg->msg_name != NULL) {
    log_attempt("sendmsg", (const struct sockaddr*)msg->msg_name, msg->msg_namelen,
                r >= 0 ? 0 : -1, err);
  }
  errno = err;
  return r;
}
