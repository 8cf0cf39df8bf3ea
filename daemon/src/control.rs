//! The control socket: newline-delimited JSON requests and responses
//! (`docs/protocol.md, "Control protocol"`).
//!
//! A request is one line, `{"cmd": "status", ...}`. A response is one line,
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. A
//! malformed request gets an error response; the connection and the daemon
//! go on.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub(crate) use umbra_config::control::{MAX_REQUEST_BYTES, Request, Response, parse_request};

/// How long a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Binds the control socket at `path`: creates its directory, replaces a
/// stale socket file, refuses to replace anything that is not a socket, and
/// sets mode 0660.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating control socket directory {}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                bail!(
                    "control socket path {} exists and is not a socket; remove it or set control_socket",
                    path.display()
                );
            }
            // The state lock guarantees no other daemon of ours owns it, so a
            // socket here is stale (a crash, a kill -9).
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "control socket {} is in use by another process; set control_socket to another path",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("removing stale control socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "replaced a stale control socket");
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    Ok(listener)
}

/// Serves one client connection: reads request lines, answers each through
/// `handle`, until the client closes or sends an over-long line.
pub(crate) async fn serve_client<F, Fut>(stream: UnixStream, handle: F)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bound the read so a client cannot make us buffer without limit.
        let n = match (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "control client read failed");
                return;
            }
        };
        let (response, last) = if n > MAX_REQUEST_BYTES {
            // Read the rest of the line without keeping it, so the client
            // gets the answer: closing on unread bytes would reset the
            // connection and lose it.
            let _ = tokio::time::timeout(OVERLONG_DRAIN, skip_line(&mut reader)).await;
            (
                Response::error(format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes; closing"
                )),
                true,
            )
        } else {
            let resp = match std::str::from_utf8(&line) {
                Err(_) => Response::error("bad request: not UTF-8"),
                Ok(text) => match parse_request(text) {
                    Ok(req) => handle(req).await,
                    Err(msg) => {
                        tracing::debug!(error = %msg, "malformed control request");
                        Response::error(msg)
                    }
                },
            };
            (resp, false)
        };
        let mut out = match serde_json::to_vec(&response) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "encoding a control response failed");
                return;
            }
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || last {
            return;
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// How long the rest of an over-long request is read (and dropped) before
/// its answer.
const OVERLONG_DRAIN: Duration = Duration::from_secs(2);

/// Reads up to and including the next newline (or the end), keeping
/// nothing.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}

/// Sends one request to the daemon and returns its result, or its error as
/// an `Err`.
pub(crate) fn call(socket: &Path, request: &Request) -> Result<Value> {
    call_within(socket, request, CLIENT_TIMEOUT)
}

/// [`call`], waiting at most `limit` for the answer.
pub(crate) fn call_within(socket: &Path, request: &Request, limit: Duration) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(async {
        let exchange = async {
            let stream = UnixStream::connect(socket).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the daemon at {} ({e}); is `umbra run` running, and may you use its socket?",
                    socket.display()
                )
            })?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_vec(request)?;
            line.push(b'\n');
            write.write_all(&line).await?;
            let mut reader = BufReader::new(read);
            let mut answer = String::new();
            reader.read_line(&mut answer).await?;
            if answer.is_empty() {
                bail!("the daemon closed the control connection without answering");
            }
            let resp: Response = serde_json::from_str(&answer)
                .with_context(|| "the daemon's answer is not valid JSON")?;
            if resp.ok {
                Ok(resp.result.unwrap_or(Value::Null))
            } else {
                bail!("{}", resp.error.unwrap_or_else(|| "the daemon refused".into()))
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("the daemon did not answer within {limit:?}"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_survives_garbage_and_answers_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/control.sock");
        let listener = bind(&path).await.expect("bind");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.expect("accept");
                tokio::spawn(serve_client(s, |_req| async {
                    Response::ok(serde_json::json!({"alive": true}))
                }));
            }
        });
        let mut s = UnixStream::connect(&path).await.expect("connect");
        s.write_all(b"garbage\n{\"cmd\":\"status\"}\n")
            .await
            .expect("write");
        let mut r = BufReader::new(s);
        let mut l1 = String::new();
        r.read_line(&mut l1).await.expect("line 1");
        let mut l2 = String::new();
        r.read_line(&mut l2).await.expect("line 2");
        let r1: Response = serde_json::from_str(&l1).expect("json 1");
        let r2: Response = serde_json::from_str(&l2).expect("json 2");
        assert!(!r1.ok && r1.error.is_some_and(|e| e.starts_with("bad request")));
        assert!(r2.ok);
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let _l = bind(&path).await.expect("rebind over stale socket");
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        fs::write(&path, b"not a socket").expect("write");
        let err = bind(&path).await.expect_err("must refuse");
        assert!(err.to_string().contains("is not a socket"));
    }
}
