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

# The oldest Rust the workspace builds with (Cargo.toml, rust-version).
RUST_MIN=1.89

# need_cargo: a Rust toolchain of at least $RUST_MIN on PATH, and what the
# build links against: the system OpenSSL's headers (libssl-dev, found with
# pkg-config) for the listener's TLS. Without a toolchain, installs the C
# toolchain (apt) and stable Rust with rustup into ~/.cargo
# (the user's own, no root), as https://rustup.rs describes; Debian 12's own
# rustc (1.63) is too old. A toolchain that is too old is an error that
# says how to update it.
need_cargo() {
    apt_install build-essential curl ca-certificates pkg-config libssl-dev
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        echo "$0: no Rust toolchain: installing stable Rust with rustup into $HOME/.cargo" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y -q --profile minimal --default-toolchain stable --no-modify-path
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    local have
    have=$(rustc --version | awk '{print $2}')
    if [ "$(printf '%s\n%s\n' "$RUST_MIN" "$have" | sort -V | head -n1)" != "$RUST_MIN" ]; then
        echo "$0: rustc $have is older than $RUST_MIN: run \`rustup update stable\`" \
            "(or install Rust from https://rustup.rs), then run this again" >&2
        exit 1
    fi
}
