//! A minimal client of Tor's control protocol (control-spec.txt) over a
//! tor's `ControlSocket`: commands, their replies, and asynchronous events.
//! A Unix socket is a file, so netbench reaches a tor inside a namespace
//! without entering it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::R;

/// One authenticated control connection.
#[derive(Debug)]
pub(crate) struct Control {
    stream: UnixStream,
    /// Bytes read but not yet split into lines.
    buf: Vec<u8>,
    /// Asynchronous events (`650 …`) read while waiting for a reply.
    events: VecDeque<String>,
    /// The socket's path, for error messages.
    path: String,
}

impl Control {
    /// Connects to the control socket at `path` and authenticates (the tor
    /// runs with `CookieAuthentication 0` and no password).
    pub(crate) fn connect(path: &Path) -> R<Control> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("tor control {}: {e}", path.display()))?;
        let mut c = Control {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            path: path.display().to_string(),
        };
        c.command("AUTHENTICATE")?;
        Ok(c)
    }

    /// Sends one command line and returns its reply lines once the final
    /// `250 ` line came; any other status is an error.
    pub(crate) fn command(&mut self, line: &str) -> R<Vec<String>> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("tor control {}: sending {line:?}: {e}", self.path))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reply = Vec::new();
        loop {
            let l = self
                .read_line(deadline)?
                .ok_or_else(|| format!("tor control {}: no reply to {line:?}", self.path))?;
            if l.starts_with("650") {
                self.events.push_back(l);
                continue;
            }
            let done = l.as_bytes().get(3) == Some(&b' ');
            let ok = l.starts_with("250");
            if l.as_bytes().get(3) == Some(&b'+') {
                // A data block follows, ended by a lone ".".
                while self.read_line(deadline)?.is_some_and(|d| d != ".") {}
            }
            reply.push(l);
            if done {
                if ok {
                    return Ok(reply);
                }
                return Err(format!(
                    "tor control {}: {line:?} answered {}",
                    self.path,
                    reply.join(" / ")
                ));
            }
        }
    }

    /// The next asynchronous event, waiting until `deadline`; `None` if
    /// none came.
    pub(crate) fn next_event(&mut self, deadline: Instant) -> R<Option<String>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.read_line(deadline)? {
                Some(l) if l.starts_with("650") => return Ok(Some(l)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// One line without its CRLF, or `None` at `deadline`.
    fn read_line(&mut self, deadline: Instant) -> R<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| format!("tor control {}: {e}", self.path))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("tor control {}: closed by tor", self.path)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("tor control {}: {e}", self.path)),
            }
        }
    }
}

/// A `CIRC` event: circuit id, status and the number of hops in its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CircEvent {
    /// The circuit's id.
    pub(crate) id: String,
    /// `LAUNCHED`, `EXTENDED`, `BUILT`, `FAILED` or `CLOSED`.
    pub(crate) status: String,
    /// Relays in its path so far.
    pub(crate) hops: usize,
}

/// Parses `650 CIRC <id> <status> [<path>] …`.
pub(crate) fn parse_circ(line: &str) -> Option<CircEvent> {
    let mut f = line.split_whitespace();
    if f.next()? != "650" || f.next()? != "CIRC" {
        return None;
    }
    let id = f.next()?.to_string();
    let status = f.next()?.to_string();
    let hops = f
        .next()
        .filter(|p| p.starts_with('$'))
        .map_or(0, |p| p.split(',').count());
    Some(CircEvent { id, status, hops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circ_events_are_parsed() {
        let e = parse_circ(
            "650 CIRC 8041 BUILT $C7D2~a0,$DE76~a1,$B499~x BUILD_FLAGS=NEED_CAPACITY PURPOSE=GENERAL",
        )
        .expect("parses");
        assert_eq!(
            e,
            CircEvent {
                id: "8041".into(),
                status: "BUILT".into(),
                hops: 3
            }
        );
        let launched = parse_circ("650 CIRC 9 LAUNCHED BUILD_FLAGS=NEED_CAPACITY").expect("parses");
        assert_eq!((launched.status.as_str(), launched.hops), ("LAUNCHED", 0));
        assert!(parse_circ("650 STREAM 57 NEW 0 198.18.60.40:8080").is_none());
    }
}
