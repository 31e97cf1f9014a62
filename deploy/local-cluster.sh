#!/usr/bin/env bash
# A cluster of N "nodes" on one Linux machine, for multi-node runs and tests without a second
# machine. Each node is a network namespace with its own address on a private bridge and a UTS
# namespace with its own host name, so Open MPI launches remote daemons into it (through the
# `rsh` agent below), its TCP transport carries the traffic over the bridge, and Tessera's
# topology discovery sees real, different hosts. Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN),
# ip, nsenter and unshare.
#
#   local-cluster.sh up NAME N          nodes NAME-n0 .. NAME-n{N-1}; prints their addresses
#   local-cluster.sh exec NAME NODE CMD...   runs CMD on node NODE (index or host name)
#   local-cluster.sh rsh HOST CMD...    Open MPI's remote-launch agent (plm_rsh_agent)
#   local-cluster.sh hostfile NAME SLOTS [NODE...]  an Open MPI hostfile of the nodes
#   local-cluster.sh link NAME NODE up|down|loss PERCENT|delay MS|clear   fault a node's link
#                                       (delay: netem, else $TESSERA_LINK_DELAY, the
#                                       link_delay program, behind an NFQUEUE rule)
#   local-cluster.sh down NAME          removes the cluster: its processes, links, names
#   local-cluster.sh prune              removes clusters whose creating process is gone
#   local-cluster.sh check              exit 0 when this machine can build a cluster
#
# With mpirun, run on a node of the cluster (node 0 is the usual head):
#   local-cluster.sh exec c1 0 mpirun --mca plm_rsh_agent "$PWD/local-cluster.sh rsh" \
#       --hostfile <(local-cluster.sh hostfile c1 2 1 2) -np 4 tessera worker ...
# NAME: up to 8 characters [a-z0-9]. The nodes get 10.231.K.(i+2)/24 for the first free K;
# the bridge holds 10.231.K.1. State lives in /run/tessera-cluster/NAME; the cluster is
# removed by `down`, or by the next `up` or `prune` once the process that called `up`
# (its parent, or TESSERA_CLUSTER_OWNER) has exited.
set -euo pipefail

readonly STATE_ROOT=/run/tessera-cluster
readonly MOUNTS="$STATE_ROOT/ns"  # persistent UTS namespaces are bind mounts under here

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

check_name() {
  [[ "$1" =~ ^[a-z0-9]{1,8}$ ]] || die "cluster name \"$1\": expected 1-8 characters [a-z0-9]"
}

netns_of() { echo "tsc-$1-n$2"; }

# Node index of NODE (an index, a host name NAME-nI or an address) in cluster NAME.
node_index() {
  local name=$1 node=$2 count
  count=$(cat "$STATE_ROOT/$name/nodes")
  if [[ "$node" =~ ^[0-9]+$ ]]; then
    :
  elif [[ "$node" =~ ^$name-n([0-9]+)$ ]]; then
    node=${BASH_REMATCH[1]}
  elif [[ "$node" =~ ^10\.231\.$(cat "$STATE_ROOT/$name/subnet")\.([0-9]+)$ ]]; then
    node=$((BASH_REMATCH[1] - 2))
  else
    die "cluster $name has no node \"$2\""
  fi
  ((node >= 0 && node < count)) || die "cluster $name has nodes 0..$((count - 1)), not \"$2\""
  echo "$node"
}

# The cluster that owns HOST (a host name NAME-nI or an address 10.231.K.I).
cluster_of_host() {
  local host=$1 dir
  if [[ "$host" =~ ^([a-z0-9]{1,8})-n[0-9]+$ && -d "$STATE_ROOT/${BASH_REMATCH[1]}" ]]; then
    echo "${BASH_REMATCH[1]}"
    return
  fi
  if [[ "$host" =~ ^10\.231\.([0-9]+)\.[0-9]+$ ]]; then
    for dir in "$STATE_ROOT"/*/; do
      [[ -f "$dir/subnet" && "$(cat "$dir/subnet")" == "${BASH_REMATCH[1]}" ]] &&
        basename "$dir" && return
    done
  fi
  die "no cluster has a node \"$host\""
}

run_on() {
  local name=$1 index=$2
  shift 2
  # `ip netns exec` also mounts /etc/netns/NS/hosts over /etc/hosts, so node names resolve.
  exec ip netns exec "$(netns_of "$name" "$index")" \
    nsenter --uts="$MOUNTS/$name-n$index.uts" -- "$@"
}

cmd_down() {
  local name=$1 ns pids i
  check_name "$name"
  [[ -d "$STATE_ROOT/$name" ]] || return 0
  local count subnet
  count=$(cat "$STATE_ROOT/$name/nodes" 2>/dev/null || echo 0)
  subnet=$(cat "$STATE_ROOT/$name/subnet" 2>/dev/null || echo)
  for ((i = 0; i < count; i++)); do
    ns=$(netns_of "$name" "$i")
    if ip netns list | grep -qx "$ns\( (id: [0-9]*)\)\?"; then
      # Twice: a process may fork while the first kill goes round.
      for _ in 1 2; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
      done
      ip netns del "$ns" 2>/dev/null || true
    fi
    # The host end of its link: a namespace the kernel still holds (sockets retrying a lost
    # peer) would keep the pair, and the next cluster could not reuse the name.
    [[ -n "$subnet" ]] && ip link del "tsc${subnet}v$i" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
    umount "$MOUNTS/$name-n$i.uts" 2>/dev/null || true
    rm -f "$MOUNTS/$name-n$i.uts"
  done
  [[ -n "$subnet" ]] && ip link del "tsc${subnet}br" 2>/dev/null || true
  rm -rf "${STATE_ROOT:?}/$name"
}

cmd_prune() {
  local dir owner
  for dir in "$STATE_ROOT"/*/; do
    [[ -f "$dir/owner" ]] || continue
    owner=$(cat "$dir/owner")
    if ! kill -0 "$owner" 2>/dev/null; then
      cmd_down "$(basename "$dir")"
    fi
  done
}

cmd_check() {
  local probe="tsc-check-$$"
  command -v ip >/dev/null || die "ip (iproute2) is not installed"
  command -v nsenter >/dev/null || die "nsenter (util-linux) is not installed"
  ip netns add "$probe" 2>/dev/null || die "cannot create a network namespace (needs root)"
  ip netns del "$probe"
  unshare --uts true 2>/dev/null || die "cannot create a UTS namespace"
  ip link add "tscchk$$" type bridge 2>/dev/null || die "cannot create a bridge"
  ip link del "tscchk$$"
}

cmd_up() {
  local name=$1 count=$2 subnet ns i bridge
  check_name "$name"
  [[ "$count" =~ ^[0-9]+$ ]] && ((count >= 1 && count <= 16)) ||
    die "node count \"$count\": expected 1..16"
  mkdir -p "$STATE_ROOT" "$MOUNTS"
  if ! mountpoint -q "$MOUNTS"; then
    # Namespace files can only be bind-mounted under a private mount.
    mount --bind "$MOUNTS" "$MOUNTS"
    mount --make-private "$MOUNTS"
  fi
  exec 9>"$STATE_ROOT/.lock"
  flock 9
  cmd_prune
  cmd_down "$name"  # what an interrupted run of the same name left
  for ((subnet = 0; subnet < 250; subnet++)); do
    ip link show "tsc${subnet}br" >/dev/null 2>&1 || break
  done
  bridge="tsc${subnet}br"
  mkdir -p "$STATE_ROOT/$name"
  echo "$count" >"$STATE_ROOT/$name/nodes"
  echo "$subnet" >"$STATE_ROOT/$name/subnet"
  echo "${TESSERA_CLUSTER_OWNER:-$PPID}" >"$STATE_ROOT/$name/owner"
  trap 'cmd_down "$name"' ERR
  ip link add "$bridge" type bridge
  ip addr add "10.231.$subnet.1/24" dev "$bridge"
  ip link set "$bridge" up
  local hosts="127.0.0.1 localhost"$'\n'
  for ((i = 0; i < count; i++)); do
    hosts+="10.231.$subnet.$((i + 2)) $name-n$i"$'\n'
  done
  for ((i = 0; i < count; i++)); do
    ns=$(netns_of "$name" "$i")
    ip netns add "$ns"
    ip link add "tsc${subnet}v$i" type veth peer name eth0 netns "$ns"
    ip link set "tsc${subnet}v$i" master "$bridge" up
    ip -n "$ns" addr add "10.231.$subnet.$((i + 2))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # mpirun learns that a node is gone only when TCP gives up on it: after tcp_retries2
    # retransmissions, about 15 minutes at Linux's default of 15, 12 seconds at 5. A real
    # cluster for Tessera should set the same on its nodes (deploy/README.md).
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2=5
    mkdir -p "/etc/netns/$ns"
    printf '%s' "$hosts" >"/etc/netns/$ns/hosts"
    touch "$MOUNTS/$name-n$i.uts"
    unshare --uts="$MOUNTS/$name-n$i.uts" hostname "$name-n$i"
    echo "$name-n$i 10.231.$subnet.$((i + 2))"
  done
  trap - ERR
}

cmd_hostfile() {
  local name=$1 slots=$2 i
  shift 2
  local count
  count=$(cat "$STATE_ROOT/$name/nodes" 2>/dev/null) || die "no cluster \"$name\""
  if (($# == 0)); then set -- $(seq 0 $((count - 1))); fi
  for i in "$@"; do
    echo "$name-n$(node_index "$name" "$i") slots=$slots"
  done
}

# Stops node INDEX's link_delay, if it runs, and its queueing rule.
stop_delayer() {
  local name=$1 index=$2 pidfile="$STATE_ROOT/$1/delay-n$2.pid"
  if [[ -f "$pidfile" ]]; then
    ip netns exec "$(netns_of "$name" "$index")" \
      iptables -D OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null || true
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

cmd_link() {
  local name=$1 index ns
  index=$(node_index "$name" "$2")
  ns=$(netns_of "$name" "$index")
  case "${3:-}" in
    down) ip -n "$ns" link set eth0 down ;;
    up) ip -n "$ns" link set eth0 up ;;
    loss)
      [[ "${4:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "loss: expected a percentage, got \"${4:-}\""
      # What the node sends, as a lossy egress queue drops it.
      ip netns exec "$ns" nft -f - <<EOF
table inet tessera_link
delete table inet tessera_link
table inet tessera_link {
  chain output { type filter hook output priority 0; oifname "eth0" numgen random mod 10000 < $(awk -v p="$4" 'BEGIN { printf "%d", p * 100 }') counter drop; }
}
EOF
      ;;
    delay)
      [[ "${4:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "delay: expected milliseconds, got \"${4:-}\""
      stop_delayer "$name" "$index"
      # What the node sends waits DELAY: netem on its interface, or where the kernel has no
      # netem, link_delay holding the packets that netfilter queues to it.
      if ip -n "$ns" qdisc replace dev eth0 root netem delay "${4}ms" 2>/dev/null; then
        return 0
      fi
      [[ -n "${TESSERA_LINK_DELAY:-}" && -x "${TESSERA_LINK_DELAY}" ]] ||
        die "delay: this kernel has no netem queueing discipline (CONFIG_NET_SCH_NETEM); set" \
          "TESSERA_LINK_DELAY to the link_delay program (built as tests/cluster/link_delay)"
      command -v iptables >/dev/null || die "delay: needs iptables (for NFQUEUE)"
      local log="$STATE_ROOT/$name/delay-n$index.log"
      ip netns exec "$ns" "$TESSERA_LINK_DELAY" 0 "$4" >"$log" 2>&1 &
      echo $! >"$STATE_ROOT/$name/delay-n$index.pid"
      for _ in $(seq 50); do
        grep -q "^link_delay: queue" "$log" && break
        kill -0 "$!" 2>/dev/null || die "delay: link_delay failed: $(cat "$log")"
        sleep 0.1
      done
      # --queue-bypass: should link_delay die, packets pass undelayed instead of vanishing.
      ip netns exec "$ns" iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass
      ;;
    clear)
      ip -n "$ns" link set eth0 up
      ip -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
      ip netns exec "$ns" nft delete table inet tessera_link 2>/dev/null || true
      stop_delayer "$name" "$index"
      ;;
    *) die "link: expected up, down, loss PERCENT, delay MS or clear" ;;
  esac
}

main() {
  (($# >= 1)) || die "usage: local-cluster.sh up|exec|rsh|hostfile|link|down|prune|check ..."
  local command=$1
  shift
  case "$command" in
    up) (($# == 2)) || die "usage: up NAME N" && cmd_up "$@" ;;
    down) (($# == 1)) || die "usage: down NAME" && cmd_down "$@" ;;
    prune) cmd_prune ;;
    check) cmd_check ;;
    hostfile) (($# >= 2)) || die "usage: hostfile NAME SLOTS [NODE...]" && cmd_hostfile "$@" ;;
    link) (($# >= 3)) || die "usage: link NAME NODE up|down|loss PERCENT|delay MS|clear" && cmd_link "$@" ;;
    exec)
      (($# >= 3)) || die "usage: exec NAME NODE CMD..."
      check_name "$1"
      [[ -d "$STATE_ROOT/$1" ]] || die "no cluster \"$1\""
      local index
      index=$(node_index "$1" "$2")
      local name=$1
      shift 2
      run_on "$name" "$index" "$@"
      ;;
    rsh)
      # Open MPI calls AGENT HOST COMMAND-WORDS...; the words form one shell command line.
      (($# >= 2)) || die "usage: rsh HOST CMD..."
      local host=$1 name
      shift
      name=$(cluster_of_host "$host")
      run_on "$name" "$(node_index "$name" "$host")" /bin/sh -c "$*"
      ;;
    *) die "unknown command \"$command\"" ;;
  esac
}

main "$@"
