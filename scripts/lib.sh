# Shared by scripts/demo and scripts/test: run a command as root whether the
# caller is root (no sudo needed) or a user with sudo, and install Debian
# packages only when they are missing. Sourced, not run.

# as_root CMD...: runs CMD as root: directly when we are root, else via sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "$0: this step needs root: run it as root, or install sudo" >&2
        exit 1
    fi
}

# apt_install PKG...: installs the packages that are not installed yet
# (apt-get update first, once); does nothing when all are there.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "$0: installing ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_tun: makes /dev/net/tun if the kernel has TUN but the node is missing
# (minimal containers).
need_tun() {
    if [ ! -e /dev/net/tun ]; then
        as_root mkdir -p /dev/net
        as_root mknod /dev/net/tun c 10 200
        as_root chmod 0666 /dev/net/tun
    fi
}

# need_cargo: a clear error when there is no Rust toolchain.
need_cargo() {
    command -v cargo >/dev/null || {
        echo "$0: cargo is not on PATH: install Rust (https://rustup.rs), then run this again" >&2
        exit 1
    }
}
