//! The crate's error type.

use std::io;

/// Why creating, using or removing the TUN failed.
///
/// Every message is one line that says what went wrong and, where there is
/// something to do, what to do. Variants that wrap an OS error include its
/// text in the message; [`TunError::io_error`] gives the error itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// `/dev/net/tun` does not exist.
    #[error(
        "{path} is missing: load the tun module (modprobe tun) or give the container the device"
    )]
    DeviceMissing {
        /// The path that was checked.
        path: &'static str,
    },

    /// The process lacks root or `CAP_NET_ADMIN`.
    #[error(
        "creating TUN {name} needs root or CAP_NET_ADMIN (permission denied while {step}): run umbra as root or grant it CAP_NET_ADMIN"
    )]
    PermissionDenied {
        /// Interface name.
        name: String,
        /// What was being done.
        step: &'static str,
    },

    /// The interface name is taken by a TUN that another process holds open,
    /// or by an interface that is not a TUN.
    #[error(
        "interface {name} is already in use by another process or is not a TUN: stop that process, remove it (ip link del {name}), or set another [tun] name"
    )]
    NameInUse {
        /// Interface name.
        name: String,
    },

    /// [`crate::TunSettings`] failed validation.
    #[error("invalid TUN settings for {name:?}: {reason}")]
    InvalidSettings {
        /// Interface name as given.
        name: String,
        /// What is wrong, and the accepted range.
        reason: String,
    },

    /// The kernel has no IPv6 (booted with `ipv6.disable=1`).
    #[error(
        "IPv6 is disabled in this kernel (no /proc/sys/net/ipv6): umbra's TUN needs IPv6, boot without ipv6.disable=1"
    )]
    Ipv6Unavailable,

    /// A step of creating or configuring the interface failed.
    #[error("setting up TUN {name} failed while {step}: {cause}")]
    Setup {
        /// Interface name.
        name: String,
        /// What was being done.
        step: &'static str,
        /// The OS or netlink error.
        cause: io::Error,
    },

    /// Reading packets from the TUN failed (for example the interface was
    /// deleted under us).
    #[error("reading from TUN {name} failed: {cause}")]
    Read {
        /// Interface name.
        name: String,
        /// The OS error.
        cause: io::Error,
    },

    /// Writing a packet to the TUN failed.
    #[error("writing to TUN {name} failed: {cause}")]
    Write {
        /// Interface name.
        name: String,
        /// The OS error.
        cause: io::Error,
    },

    /// The caller's batch buffers do not fit the call.
    #[error(
        "recv_batch got {bufs} buffers and {sizes} size slots: pass at least one buffer and one size slot per buffer"
    )]
    BatchShape {
        /// Number of buffers passed.
        bufs: usize,
        /// Number of size slots passed.
        sizes: usize,
    },

    /// Removing the interface failed, or it was still there afterwards.
    #[error("removing TUN {name} failed: {cause}")]
    Remove {
        /// Interface name.
        name: String,
        /// The OS or netlink error.
        cause: io::Error,
    },
}

impl TunError {
    /// The underlying OS or netlink error, if this error wraps one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Setup { cause, .. }
            | Self::Read { cause, .. }
            | Self::Write { cause, .. }
            | Self::Remove { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// Classifies an error from a setup step: a permission problem gets its
    /// own variant, so that its message says what to do.
    pub(crate) fn setup(name: &str, step: &'static str, cause: io::Error) -> Self {
        let denied = matches!(cause.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            || cause.kind() == io::ErrorKind::PermissionDenied;
        if denied {
            Self::PermissionDenied {
                name: name.to_owned(),
                step,
            }
        } else {
            Self::Setup {
                name: name.to_owned(),
                step,
                cause,
            }
        }
    }
}

/// Turns an rtnetlink error into an `io::Error`, keeping the errno where the
/// kernel sent one.
pub(crate) fn netlink_to_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_say_what_to_do() {
        for errno in [libc::EPERM, libc::EACCES] {
            let err = TunError::setup(
                "umbra0",
                "creating the device",
                io::Error::from_raw_os_error(errno),
            );
            let msg = err.to_string();
            assert!(matches!(err, TunError::PermissionDenied { .. }), "{msg}");
            assert!(msg.contains("needs root or CAP_NET_ADMIN"), "{msg}");
            assert!(msg.contains("umbra0"), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn other_setup_errors_keep_the_cause() {
        let err = TunError::setup(
            "umbra0",
            "adding the route",
            io::Error::from_raw_os_error(libc::ENETDOWN),
        );
        assert_eq!(
            err.io_error().and_then(io::Error::raw_os_error),
            Some(libc::ENETDOWN)
        );
        assert!(err.to_string().contains("adding the route"));
    }

    #[test]
    fn missing_device_message() {
        let msg = TunError::DeviceMissing {
            path: "/dev/net/tun",
        }
        .to_string();
        assert_eq!(
            msg,
            "/dev/net/tun is missing: load the tun module (modprobe tun) or give the container the device"
        );
    }

    #[test]
    fn netlink_errno_survives_conversion() {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let io = netlink_to_io(rtnetlink::Error::NetlinkError(msg));
        assert_eq!(io.raw_os_error(), Some(libc::EEXIST));
    }
}
