#!/usr/bin/env bash
# FUSE mount benchmark: spiderweb-fs-mount over spiderweb-fs-node vs sshfs vs the native
# directory, all on loopback, side by side in one run (issue 5). Needs root (drop_caches,
# sshd, mounts). Installs sshfs and openssh-server for this benchmark only.
#
#   fsnode/benches/fuse_vs_sshfs.sh            # uses target/release binaries (builds them)
#   BENCH_DIR=/var/tmp/fsbench fsnode/benches/fuse_vs_sshfs.sh
#
# Workloads: sequential read of a 1 GiB file, sequential write of 256 MiB (fsync'd), find +
# stat over a 20,000-file tree, git status on a real repository checkout. Page caches are
# dropped before every measurement; each figure is the median of 3 runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (drop_caches, sshd, mounts)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=()
for p in sshfs openssh-server fuse3 git; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p spiderweb-fsnode --bins >/dev/null
NODE="$target/release/spiderweb-fs-node"
MOUNT="$target/release/spiderweb-fs-mount"

B="${BENCH_DIR:-/var/tmp/fsbench}"
DATA="$B/data" SW="$B/sw" SSH="$B/ssh"
mkdir -p "$DATA" "$SW" "$SSH" "$B/sshd"

cleanup() {
  fusermount3 -uz "$SW" 2>/dev/null || true
  fusermount3 -uz "$SSH" 2>/dev/null || true
  [ -n "${mount_pid:-}" ] && kill "$mount_pid" 2>/dev/null || true
  [ -n "${node_pid:-}" ] && kill "$node_pid" 2>/dev/null || true
  [ -f "$B/sshd/pid" ] && kill "$(cat "$B/sshd/pid")" 2>/dev/null || true
}
trap cleanup EXIT

# --- data ---------------------------------------------------------------------------------
if [ ! -f "$DATA/big" ]; then
  echo "creating 1 GiB file"
  head -c $((1 << 30)) /dev/urandom >"$DATA/big"
fi
if [ ! -d "$DATA/tree" ]; then
  echo "creating 20,000-file tree"
  for d in $(seq 1 200); do
    mkdir -p "$DATA/tree/d$d"
    (cd "$DATA/tree/d$d" && touch $(seq -f "f%g" 1 100))
  done
fi
if [ ! -d "$DATA/repo" ]; then
  echo "cloning a repository checkout"
  git clone -q "$(pwd)" "$DATA/repo"
fi

# --- sshd on loopback, key auth for root ---------------------------------------------------
[ -f "$B/sshd/host" ] || ssh-keygen -q -t ed25519 -N "" -f "$B/sshd/host"
[ -f "$B/sshd/client" ] || ssh-keygen -q -t ed25519 -N "" -f "$B/sshd/client"
cp "$B/sshd/client.pub" "$B/sshd/authorized_keys"
cat >"$B/sshd/config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $B/sshd/host
PidFile $B/sshd/pid
AuthorizedKeysFile $B/sshd/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
Subsystem sftp internal-sftp
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$B/sshd/config"
sleep 0.5
sshfs -p 2222 -o IdentityFile="$B/sshd/client",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
  root@127.0.0.1:"$DATA" "$SSH"

# --- spiderweb -----------------------------------------------------------------------------
"$NODE" --port 18893 --export "bench=$DATA" >"$B/node.out" 2>"$B/node.err" &
node_pid=$!
sleep 0.5
"$MOUNT" --endpoint "n=ws://127.0.0.1:18893/v2/fs#bench@/b" mount "$SW" >"$B/mount.out" 2>"$B/mount.err" &
mount_pid=$!
for _ in $(seq 50); do grep -q " $SW " /proc/mounts && break; sleep 0.1; done

# --- measurements --------------------------------------------------------------------------
now() { date +%s.%N; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
timed() { # timed <cmd...>: seconds, caches dropped first
  sync; echo 3 >/proc/sys/vm/drop_caches
  local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
run3() { median3 "$(timed "$@")" "$(timed "$@")" "$(timed "$@")"; }

declare -A root=([native]="$DATA" [sshfs]="$SSH" [spiderweb]="$SW/b")
printf '| workload | native | sshfs | spiderweb | spiderweb vs sshfs |\n|---|---|---|---|---|\n'
results() { # name unit value-per-target...
  local name=$1 n s w
  n=$2 s=$3 w=$4
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$n" "$s" "$w" "$5"
}
declare -A t
for k in native sshfs spiderweb; do
  t[read_$k]=$(run3 dd if="${root[$k]}/big" of=/dev/null bs=1M)
  t[write_$k]=$(run3 sh -c "dd if=/dev/zero of='${root[$k]}/w.bin' bs=1M count=256 conv=fsync && rm -f '${root[$k]}/w.bin'")
  t[find_$k]=$(run3 sh -c "find '${root[$k]}/tree' -printf '%s %T@\n' | wc -l")
  t[git_$k]=$(run3 git -C "${root[$k]}/repo" status --porcelain)
done
mbps() { echo "scale=0; $1 / ${2}" | bc -l; }
results "sequential read 1 GiB (MiB/s)" "$(mbps 1024 "${t[read_native]}")" "$(mbps 1024 "${t[read_sshfs]}")" "$(mbps 1024 "${t[read_spiderweb]}")" \
  "$(echo "scale=2; ${t[read_sshfs]} / ${t[read_spiderweb]}" | bc -l)x"
results "sequential write 256 MiB (MiB/s)" "$(mbps 256 "${t[write_native]}")" "$(mbps 256 "${t[write_sshfs]}")" "$(mbps 256 "${t[write_spiderweb]}")" \
  "$(echo "scale=2; ${t[write_sshfs]} / ${t[write_spiderweb]}" | bc -l)x"
results "find + stat, 20,000 files (s)" "${t[find_native]}" "${t[find_sshfs]}" "${t[find_spiderweb]}" \
  "$(echo "scale=2; ${t[find_sshfs]} / ${t[find_spiderweb]}" | bc -l)x"
results "git status (s)" "${t[git_native]}" "${t[git_sshfs]}" "${t[git_spiderweb]}" \
  "$(echo "scale=2; ${t[git_sshfs]} / ${t[git_spiderweb]}" | bc -l)x"
