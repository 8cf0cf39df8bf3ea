//! Checks of the machine: the TUN device, the capabilities the daemon
//! needs, and the clock. Everything is read from `/dev`, `/proc` and
//! `/run` (the workspace has no unsafe code, so no ioctl or capget).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Check, Context};

/// The TUN clone device.
const TUN_DEVICE: &str = "/dev/net/tun";
/// Its device numbers (`Documentation/admin-guide/devices.txt`: misc 200).
const TUN_MAJOR_MINOR: (u64, u64) = (10, 200);

/// `CAP_NET_BIND_SERVICE`'s bit (`linux/capability.h`).
const CAP_NET_BIND_SERVICE: u32 = 10;
/// `CAP_NET_ADMIN`'s bit.
const CAP_NET_ADMIN: u32 = 12;

/// No clock before this is right: 2025-01-01T00:00:00Z, before this
/// release was built.
pub(super) const CLOCK_FLOOR_UNIX: u64 = 1_735_689_600;
/// Nor after this: 2100-01-01T00:00:00Z.
const CLOCK_CEILING_UNIX: u64 = 4_102_444_800;
/// systemd-timesyncd's flag file: present once the clock is synchronised.
const TIMESYNC_FLAG: &str = "/run/systemd/timesync/synchronized";

/// Where a systemd unit for umbra is looked for.
const UNIT_PATHS: &[&str] = &[
    "/etc/systemd/system/umbra.service",
    "/usr/lib/systemd/system/umbra.service",
    "/lib/systemd/system/umbra.service",
];

/// `/dev/net/tun`: exists, is the character device 10:200, opens
/// read-write. Making an interface would change the machine, so that part
/// is left to the capabilities check (it needs `CAP_NET_ADMIN`).
pub(super) fn tun(ctx: &Context) -> Check {
    const NAME: &str = "tun device";
    if let Some(c) = &ctx.config
        && !c.tun.enabled
    {
        return Check::skip(NAME, "[tun] enabled = false: this node makes no TUN");
    }
    if let Some(run) = &ctx.running
        && let Some(name) = run.status["tun"]["name"].as_str()
    {
        return Check::ok(NAME, format!("the running daemon has made {name}"));
    }
    let meta = match fs::metadata(TUN_DEVICE) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Check::fail(
                NAME,
                format!("{TUN_DEVICE} does not exist"),
                "load the TUN module with `modprobe tun` (in a container, pass the device: `--device /dev/net/tun`)",
            );
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot look at {TUN_DEVICE}: {e}"),
                "run `ls -l /dev/net/tun` as root to see what is there",
            );
        }
    };
    let numbers = dev_major_minor(meta.rdev());
    if !meta.file_type().is_char_device() || numbers != TUN_MAJOR_MINOR {
        return Check::fail(
            NAME,
            format!(
                "{TUN_DEVICE} is not the character device 10:200 (it is {}:{})",
                numbers.0, numbers.1
            ),
            "recreate it: `rm /dev/net/tun && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun`",
        );
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
    {
        Ok(_) => Check::ok(
            NAME,
            format!("{TUN_DEVICE} is the character device 10:200 and opens read-write"),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{TUN_DEVICE} does not open read-write: {e}"),
            "give umbra the device: `chmod 0666 /dev/net/tun`, or under systemd `DeviceAllow=/dev/net/tun rw` in the unit",
        ),
    }
}

/// Major and minor numbers of a Linux `dev_t` (glibc's `gnu_dev_major`
/// and `gnu_dev_minor`).
pub(super) fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// The capability sets of `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CapSets {
    /// `CapEff`: what the process may do now.
    pub(super) effective: u64,
    /// `CapBnd`: what it and its children can ever gain.
    pub(super) bounding: u64,
    /// `CapAmb`: what survives an exec of a binary without file capabilities.
    pub(super) ambient: u64,
}

/// Parses the `CapEff`, `CapBnd` and `CapAmb` lines (hex) of a
/// `/proc/<pid>/status` text; `None` if one is missing or not hex.
pub(super) fn parse_cap_sets(status: &str) -> Option<CapSets> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            u64::from_str_radix(rest.trim(), 16).ok()
        })
    };
    Some(CapSets {
        effective: field("CapEff")?,
        bounding: field("CapBnd")?,
        ambient: field("CapAmb")?,
    })
}

/// The effective uid from a `/proc/<pid>/status` text (its `Uid:` line:
/// real, effective, saved, filesystem).
pub(super) fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The uid this process runs as.
pub(super) fn effective_uid() -> Option<u32> {
    parse_effective_uid(&fs::read_to_string("/proc/self/status").ok()?)
}

/// The name of `uid` in `/etc/passwd`, if it has one.
pub(super) fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// The last value of `key=` in a unit's text (systemd keeps the last
/// one of a single-valued setting), trimmed; `None` if unset or empty.
pub(super) fn unit_setting(unit: &str, key: &str) -> Option<String> {
    unit_values(unit, key)
        .last()
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Every value of `key=` in a unit's text, in order, trimmed (systemd
/// allows spaces around the `=`).
fn unit_values<'a>(unit: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> {
    unit.lines().filter_map(move |l| {
        let rest = l.trim().strip_prefix(key)?.trim_start();
        Some(rest.strip_prefix('=')?.trim())
    })
}

/// The `User=` of the first `umbra.service` found, and the unit's path.
pub(super) fn unit_user() -> Option<(String, &'static str)> {
    UNIT_PATHS.iter().find_map(|path| {
        let text = fs::read_to_string(path).ok()?;
        Some((unit_setting(&text, "User")?, *path))
    })
}

/// The uid of a user name in `/etc/passwd`, or of a number.
pub(super) fn uid_of(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The capability names an `AmbientCapabilities=` setting of a unit
/// grants, upper case (`CAP_NET_ADMIN`); a line with `~` takes away
/// instead and an empty one resets, as systemd reads them.
pub(super) fn unit_ambient_caps(unit: &str) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    for value in unit_values(unit, "AmbientCapabilities") {
        if value.is_empty() {
            caps.clear();
        } else if let Some(removed) = value.strip_prefix('~') {
            let removed: Vec<String> = removed.split_whitespace().map(str::to_uppercase).collect();
            caps.retain(|c| !removed.contains(c));
        } else {
            caps.extend(value.split_whitespace().map(str::to_uppercase));
        }
    }
    caps
}

/// Whether `getcap`'s output for a binary grants `cap` (lower case, like
/// `cap_net_admin`) effective and permitted.
pub(super) fn file_caps_grant(getcap: &str, cap: &str) -> bool {
    getcap.split_whitespace().skip(1).any(|spec| {
        // `cap_a,cap_b=ep` or `cap_a,cap_b+ep`
        let Some(split) = spec.find(['=', '+']) else {
            return false;
        };
        let (names, flags) = spec.split_at(split);
        names.split(',').any(|n| n == cap) && flags.contains('e') && flags.contains('p')
    })
}

/// The capabilities a node with this config needs: `CAP_NET_ADMIN` for
/// the TUN and `CAP_NET_BIND_SERVICE` for a listen port below
/// `ip_unprivileged_port_start`. Without a config, both.
fn needed_caps(ctx: &Context) -> Vec<(u32, &'static str)> {
    let Some(config) = &ctx.config else {
        return vec![
            (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
        ];
    };
    let mut needed = Vec::new();
    if config.tun.enabled {
        needed.push((CAP_NET_ADMIN, "CAP_NET_ADMIN"));
    }
    let unprivileged: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if config
        .listen
        .https
        .iter()
        .any(|a| a.port() != 0 && a.port() < unprivileged)
    {
        needed.push((CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"));
    }
    needed
}

/// The capabilities: this process's effective set, else the binary's file
/// capabilities or a unit's `AmbientCapabilities`, must hold what the
/// config needs.
pub(super) fn capabilities(ctx: &Context) -> Check {
    const NAME: &str = "capabilities";
    let needed = needed_caps(ctx);
    if needed.is_empty() {
        return Check::ok(
            NAME,
            "this config needs no capability (no TUN, no listen port below the unprivileged ones)",
        );
    }
    let names = |caps: &[(u32, &str)]| {
        caps.iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let all = names(&needed);
    let Some(sets) = fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_cap_sets)
    else {
        return Check::warn(
            NAME,
            "cannot read the capability sets in /proc/self/status",
            format!(
                "make sure the service has {all}: `AmbientCapabilities={}` in its unit",
                all.replace(" and ", " ")
            ),
        );
    };
    let has = |set: u64, bit: u32| set & (1 << bit) != 0;
    let missing: Vec<(u32, &str)> = needed
        .iter()
        .copied()
        .filter(|(bit, _)| !has(sets.effective, *bit))
        .collect();
    if missing.is_empty() {
        let who = if ctx.uid == Some(0) { "root, " } else { "" };
        return Check::ok(
            NAME,
            format!(
                "this process ({who}CapEff {:016x}) has {all}",
                sets.effective
            ),
        );
    }
    let lacking = names(&missing);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/local/bin/umbra".into());
    let setcap = format!(
        "`setcap cap_net_admin,cap_net_bind_service+ep {exe}`, or run umbra from its unit with `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE`"
    );
    if let Some(out) = getcap(&exe) {
        let lower: Vec<String> = missing.iter().map(|(_, n)| n.to_lowercase()).collect();
        if lower.iter().all(|c| file_caps_grant(&out, c)) {
            return Check::ok(
                NAME,
                format!(
                    "this process lacks {lacking}, but the binary {exe} has them as file capabilities"
                ),
            );
        }
    }
    for path in UNIT_PATHS {
        if let Ok(text) = fs::read_to_string(path) {
            let granted = unit_ambient_caps(&text);
            if missing.iter().all(|(_, n)| granted.iter().any(|g| g == n)) {
                return Check::ok(
                    NAME,
                    format!(
                        "this process lacks {lacking}, but {path} grants them with AmbientCapabilities"
                    ),
                );
            }
            return Check::fail(
                NAME,
                format!("this process lacks {lacking}, and {path} does not grant them"),
                format!(
                    "set `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE` and `CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE` in {path}, then `systemctl daemon-reload`"
                ),
            );
        }
    }
    let bounding_lacks: Vec<&str> = missing
        .iter()
        .filter(|(bit, _)| !has(sets.bounding, *bit))
        .map(|(_, n)| *n)
        .collect();
    if !bounding_lacks.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "this process lacks {lacking}, and its bounding set (CapBnd {:016x}) lacks {}: nothing started from here can gain it",
                sets.bounding,
                bounding_lacks.join(" and ")
            ),
            "run umbra where it can have them: as root on the host, or in a container given `--cap-add NET_ADMIN --cap-add NET_BIND_SERVICE`",
        );
    }
    Check::fail(
        NAME,
        format!(
            "this process (uid {}) lacks {lacking}, the binary has no file capabilities for them and no umbra.service grants them; the daemon needs {all}",
            ctx.uid.map_or_else(|| "?".into(), |u| u.to_string())
        ),
        format!("give them to the service: {setcap}"),
    )
}

/// `getcap FILE`'s output, if the tool is there.
fn getcap(file: &str) -> Option<String> {
    let out = std::process::Command::new("getcap")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why a clock reading of `now` (unix seconds) cannot be right, if it
/// cannot.
pub(super) fn implausible_clock(now: u64) -> Option<String> {
    if now < CLOCK_FLOOR_UNIX {
        Some(format!(
            "the clock says {}, before {}, when this umbra did not exist yet",
            utc_date(now),
            utc_date(CLOCK_FLOOR_UNIX)
        ))
    } else if now >= CLOCK_CEILING_UNIX {
        Some(format!(
            "the clock says {}, far in the future",
            utc_date(now)
        ))
    } else {
        None
    }
}

/// The clock: plausible (not before [`CLOCK_FLOOR_UNIX`]) and, if that can
/// be known, synchronised.
pub(super) fn clock() -> Check {
    const NAME: &str = "clock";
    const WHY: &str = "links use TLS certificates and signed records with times, and the link handshake refuses a clock more than 120 s off, so a wrong clock breaks links";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(why) = implausible_clock(now) {
        return Check::fail(
            NAME,
            why,
            format!(
                "set the clock and keep it synchronised (`timedatectl set-ntp true`, or chrony): {WHY}"
            ),
        );
    }
    let date = utc_date(now);
    if Path::new(TIMESYNC_FLAG).exists() {
        return Check::ok(
            NAME,
            format!("{date}; synchronised ({TIMESYNC_FLAG} exists)"),
        );
    }
    match timedatectl_synchronized() {
        Some(true) => Check::ok(
            NAME,
            format!("{date}; synchronised (timedatectl NTPSynchronized=yes)"),
        ),
        Some(false) => Check::warn(
            NAME,
            format!("{date}; not synchronised (timedatectl NTPSynchronized=no)"),
            format!("turn on time synchronisation with `timedatectl set-ntp true`: {WHY}"),
        ),
        None => Check::warn(
            NAME,
            format!(
                "{date}; cannot tell whether the clock is synchronised (no systemd-timesyncd flag, no timedatectl)"
            ),
            format!(
                "make sure an NTP client (systemd-timesyncd or chrony) keeps the clock right: {WHY}"
            ),
        ),
    }
}

/// `timedatectl show -p NTPSynchronized --value`: `Some(true)` for `yes`,
/// `None` if it is not there or does not answer.
fn timedatectl_synchronized() -> Option<bool> {
    let out = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// `2026-12-04 21:18 UTC` for unix seconds (the proleptic Gregorian
/// calendar, days to civil date as in Howard Hinnant's `civil_from_days`).
pub(super) fn utc_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tumbra\nUid:\t1000\t1001\t1001\t1001\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000001400\nCapEff:\t0000000000001400\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000400\n";

    #[test]
    fn cap_sets_from_proc_status() {
        let sets = parse_cap_sets(STATUS).expect("parses");
        assert_eq!(sets.effective, 0x1400);
        assert_ne!(sets.effective & (1 << CAP_NET_ADMIN), 0);
        assert_ne!(sets.effective & (1 << CAP_NET_BIND_SERVICE), 0);
        assert_eq!(sets.bounding, 0x1ff_ffff_ffff);
        assert_eq!(sets.ambient, 1 << CAP_NET_BIND_SERVICE);
        assert_eq!(parse_effective_uid(STATUS), Some(1001));
        // Missing or damaged lines are None, never a panic.
        assert_eq!(
            parse_cap_sets("CapEff:\t00\nCapBnd:\tzz\nCapAmb:\t0\n"),
            None
        );
        assert_eq!(parse_cap_sets(""), None);
        assert_eq!(parse_effective_uid("Uid:\t0\n"), None);
    }

    #[test]
    fn unit_ambient_capabilities() {
        let unit = "[Service]\nAmbientCapabilities=CAP_NET_ADMIN\nAmbientCapabilities=cap_net_bind_service CAP_SYS_TIME\n";
        assert_eq!(
            unit_ambient_caps(unit),
            ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]
        );
        let reset = format!("{unit}AmbientCapabilities=\nAmbientCapabilities=CAP_NET_ADMIN\n");
        assert_eq!(unit_ambient_caps(&reset), ["CAP_NET_ADMIN"]);
        let removed = format!("{unit}AmbientCapabilities=~CAP_SYS_TIME CAP_NET_ADMIN\n");
        assert_eq!(unit_ambient_caps(&removed), ["CAP_NET_BIND_SERVICE"]);
        let shipped = include_str!("../../contrib/umbra.service");
        let caps = unit_ambient_caps(shipped);
        assert!(caps.iter().any(|c| c == "CAP_NET_ADMIN"), "{caps:?}");
        assert!(caps.iter().any(|c| c == "CAP_NET_BIND_SERVICE"), "{caps:?}");
    }

    #[test]
    fn unit_user_setting() {
        let unit = "[Service]\nUser=nobody\nUserX=no\n User = umbra\n";
        assert_eq!(unit_setting(unit, "User").as_deref(), Some("umbra"));
        assert_eq!(
            unit_setting("User=a\nUserX=b\n", "User").as_deref(),
            Some("a")
        );
        assert_eq!(unit_setting("[Service]\nUser=\n", "User"), None);
        // The shipped unit runs as the package's umbra user.
        assert_eq!(
            unit_setting(include_str!("../../contrib/umbra.service"), "User").as_deref(),
            Some("umbra")
        );
        assert_eq!(uid_of("0"), Some(0));
        assert_eq!(uid_of("root"), Some(0));
    }

    #[test]
    fn file_capabilities_from_getcap() {
        let new_style = "/usr/bin/umbra cap_net_bind_service,cap_net_admin=ep\n";
        assert!(file_caps_grant(new_style, "cap_net_admin"));
        assert!(file_caps_grant(new_style, "cap_net_bind_service"));
        assert!(!file_caps_grant(new_style, "cap_sys_admin"));
        assert!(file_caps_grant("/x = cap_net_admin+ep", "cap_net_admin"));
        assert!(!file_caps_grant("/x cap_net_admin=p", "cap_net_admin"));
        assert!(!file_caps_grant("", "cap_net_admin"));
    }

    #[test]
    fn device_numbers() {
        // /dev/net/tun's st_rdev on Linux: makedev(10, 200).
        assert_eq!(dev_major_minor(0x0a_c8), (10, 200));
        assert_eq!(dev_major_minor(0x1_03), (1, 3));
        // Large numbers use the split encoding (glibc's makedev).
        let makedev = |ma: u64, mi: u64| {
            ((ma & 0xffff_f000) << 32)
                | ((ma & 0xfff) << 8)
                | ((mi & 0xffff_ff00) << 12)
                | (mi & 0xff)
        };
        for (ma, mi) in [(10, 200), (259, 65_536), (0x12_3456, 0x45_6789)] {
            assert_eq!(dev_major_minor(makedev(ma, mi)), (ma, mi));
        }
    }

    #[test]
    fn clock_floor_and_dates() {
        assert_eq!(utc_date(CLOCK_FLOOR_UNIX), "2025-01-01 00:00 UTC");
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(1_709_210_096), "2024-02-29 12:34 UTC");
        assert!(implausible_clock(0).is_some_and(|w| w.contains("1970-01-01")));
        assert!(implausible_clock(CLOCK_FLOOR_UNIX - 1).is_some());
        assert_eq!(implausible_clock(CLOCK_FLOOR_UNIX), None);
        assert_eq!(implausible_clock(1_800_000_000), None);
        assert!(implausible_clock(CLOCK_CEILING_UNIX).is_some());
    }
}
