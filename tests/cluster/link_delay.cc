// link_delay QUEUE DELAY_MS: holds every packet netfilter queues to NFQUEUE number QUEUE for
// DELAY_MS milliseconds, then lets it go: netem's `delay` for kernels built without netem.
// deploy/local-cluster.sh runs it inside a node's network namespace, behind
//   iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num QUEUE --queue-bypass
// Speaks nfnetlink_queue directly (no library): binds the queue asking for packet metadata
// only, and since every packet waits the same time, releases them in arrival order with one
// batch verdict ("accept every id up to N") per wake-up. Runs until killed.

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "link_delay: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

// One nfnetlink_queue request: a netlink header, the nfnetlink header, then attributes.
class Request {
 public:
  Request(uint8_t message, uint16_t queue, uint16_t flags) : bytes_(NLMSG_SPACE(0), 0) {
    Append(nfgenmsg{.nfgen_family = AF_UNSPEC, .version = NFNETLINK_V0, .res_id = htons(queue)});
    auto* header = reinterpret_cast<nlmsghdr*>(bytes_.data());
    header->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | message;
    header->nlmsg_flags = NLM_F_REQUEST | flags;
  }

  template <typename T>
  void Attribute(uint16_t type, const T& value) {
    nlattr attribute{.nla_len = static_cast<uint16_t>(NLA_HDRLEN + sizeof(T)), .nla_type = type};
    Append(attribute);
    Append(value);
  }

  void Send(int socket) {
    auto* header = reinterpret_cast<nlmsghdr*>(bytes_.data());
    header->nlmsg_len = static_cast<uint32_t>(bytes_.size());
    sockaddr_nl kernel{.nl_family = AF_NETLINK};
    if (sendto(socket, bytes_.data(), bytes_.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof(kernel)) < 0) {
      Fail("sending to the kernel");
    }
  }

 private:
  template <typename T>
  void Append(const T& value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + NLMSG_ALIGN(sizeof(T)), 0);
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
  }

  std::vector<char> bytes_;
};

// Reads the kernel's answer to a request sent with NLM_F_ACK; fails on an error.
void ExpectAck(int socket, const char* what) {
  alignas(nlmsghdr) char buffer[4096];
  ssize_t n = recv(socket, buffer, sizeof(buffer), 0);
  if (n < 0) Fail(what);
  for (auto* header = reinterpret_cast<nlmsghdr*>(buffer); NLMSG_OK(header, n);
       header = NLMSG_NEXT(header, n)) {
    if (header->nlmsg_type != NLMSG_ERROR) continue;
    const auto* error = static_cast<const nlmsgerr*>(NLMSG_DATA(header));
    if (error->error != 0) {
      errno = -error->error;
      Fail(what);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: link_delay QUEUE DELAY_MS\n");
    return 2;
  }
  const int queue = std::atoi(argv[1]);
  const double delay_ms = std::atof(argv[2]);
  if (queue < 0 || queue > 65535 || !(delay_ms >= 0)) {
    std::fprintf(stderr, "link_delay: expected a queue 0..65535 and a delay >= 0 ms\n");
    return 2;
  }
  const auto delay = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(delay_ms));

  const int socket = ::socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
  if (socket < 0) Fail("netlink socket");
  const int buffer_bytes = 8 << 20;
  setsockopt(socket, SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof(buffer_bytes));
  const int on = 1;
  setsockopt(socket, SOL_NETLINK, NETLINK_NO_ENOBUFS, &on, sizeof(on));
  sockaddr_nl local{.nl_family = AF_NETLINK};
  if (bind(socket, reinterpret_cast<sockaddr*>(&local), sizeof(local)) < 0) Fail("bind");

  Request bind_queue(NFQNL_MSG_CONFIG, static_cast<uint16_t>(queue), NLM_F_ACK);
  bind_queue.Attribute(NFQA_CFG_CMD,
                       nfqnl_msg_config_cmd{.command = NFQNL_CFG_CMD_BIND, .pf = htons(AF_INET)});
  bind_queue.Send(socket);
  ExpectAck(socket, "binding the queue (another process holds it?)");
  Request params(NFQNL_MSG_CONFIG, static_cast<uint16_t>(queue), NLM_F_ACK);
  params.Attribute(NFQA_CFG_PARAMS,
                   nfqnl_msg_config_params{.copy_range = 0, .copy_mode = NFQNL_COPY_META});
  params.Attribute(NFQA_CFG_QUEUE_MAXLEN, htonl(100000));
  params.Send(socket);
  ExpectAck(socket, "setting the queue's parameters");
  std::fprintf(stderr, "link_delay: queue %d, %.3f ms\n", queue, delay_ms);

  struct Held {
    Clock::time_point due;
    uint32_t id;
  };
  std::deque<Held> held;
  std::vector<char> buffer(1 << 20);
  for (;;) {
    timespec wait{};
    timespec* timeout = nullptr;
    if (!held.empty()) {
      const auto left = std::max(held.front().due - Clock::now(), Clock::duration::zero());
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      wait = {.tv_sec = static_cast<time_t>(ns / 1'000'000'000), .tv_nsec = ns % 1'000'000'000};
      timeout = &wait;
    }
    pollfd readable{.fd = socket, .events = POLLIN};
    if (ppoll(&readable, 1, timeout, nullptr) < 0 && errno != EINTR) Fail("poll");
    if (readable.revents & POLLIN) {
      ssize_t n = recv(socket, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN && errno != EINTR && errno != ENOBUFS) Fail("recv");
      const Clock::time_point now = Clock::now();
      for (auto* header = reinterpret_cast<nlmsghdr*>(buffer.data()); n > 0 && NLMSG_OK(header, n);
           header = NLMSG_NEXT(header, n)) {
        if (header->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) continue;
        auto* attribute = reinterpret_cast<nlattr*>(static_cast<char*>(NLMSG_DATA(header)) +
                                                    NLMSG_ALIGN(sizeof(nfgenmsg)));
        int left = static_cast<int>(header->nlmsg_len) -
                   static_cast<int>(NLMSG_LENGTH(NLMSG_ALIGN(sizeof(nfgenmsg))));
        while (left >= NLA_HDRLEN && attribute->nla_len >= NLA_HDRLEN &&
               attribute->nla_len <= left) {
          if ((attribute->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR) {
            const auto* packet = reinterpret_cast<const nfqnl_msg_packet_hdr*>(
                reinterpret_cast<char*>(attribute) + NLA_HDRLEN);
            held.push_back({now + delay, ntohl(packet->packet_id)});
            break;
          }
          left -= NLA_ALIGN(attribute->nla_len);
          attribute = reinterpret_cast<nlattr*>(reinterpret_cast<char*>(attribute) +
                                                NLA_ALIGN(attribute->nla_len));
        }
      }
    }
    // Every packet due now, in one verdict: ids rise in arrival order.
    const Clock::time_point now = Clock::now();
    uint32_t last = 0;
    bool any = false;
    while (!held.empty() && held.front().due <= now) {
      last = held.front().id;
      any = true;
      held.pop_front();
    }
    if (any) {
      Request verdict(NFQNL_MSG_VERDICT_BATCH, static_cast<uint16_t>(queue), 0);
      verdict.Attribute(NFQA_VERDICT_HDR,
                        nfqnl_msg_verdict_hdr{.verdict = htonl(NF_ACCEPT), .id = htonl(last)});
      verdict.Send(socket);
    }
  }
}
