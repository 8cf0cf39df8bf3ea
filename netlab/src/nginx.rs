//! [`NginxConfig`]: the `nginx.conf` of a reference nginx, which serves the
//! same files as a node's cover site so that a test can compare the two
//! (docs/threat-model.md, "What a prober sees").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Netns, Proc, Result};

/// An `nginx.conf` for one nginx process: `master_process off` and
/// `daemon off` (killing it leaves no workers behind), its pid file, error
/// log and temporary files in [`NginxConfig::dir`], no access log,
/// `server_tokens off`, the system's MIME types; and its sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    /// Where the config, the pid file, the error log and the temporary
    /// files go.
    pub dir: PathBuf,
    servers: Vec<String>,
}

impl NginxConfig {
    /// A config in `dir` with no site yet.
    pub fn new(dir: &Path) -> NginxConfig {
        NginxConfig {
            dir: dir.to_path_buf(),
            servers: Vec::new(),
        }
    }

    /// Adds a plain-HTTP site on `listen` (`ip:port`) serving `root`.
    pub fn http(mut self, listen: &str, root: &Path) -> NginxConfig {
        self.servers.push(format!(
            "server {{ listen {listen}; root {}; }}",
            root.display()
        ));
        self
    }

    /// Adds an HTTPS site on `listen` (`ip:port`) with Debian's TLS settings
    /// (its `nginx.conf` sets `ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    /// ssl_prefer_server_ciphers on;`, the rest is nginx's defaults), HTTP/2,
    /// the PEM certificate chain `cert` and its key `key`, serving `root`.
    pub fn https(mut self, listen: &str, cert: &Path, key: &Path, root: &Path) -> NginxConfig {
        self.servers.push(format!(
            "server {{ listen {listen} ssl http2;\n\
             ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers on;\n\
             ssl_certificate {}; ssl_certificate_key {}; root {}; }}",
            cert.display(),
            key.display(),
            root.display()
        ));
        self
    }

    /// Where [`NginxConfig::write`] puts the file: `dir/nginx.conf`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let d = self.dir.display();
        format!(
            "user root; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ include /etc/nginx/mime.types; default_type application/octet-stream;\n\
             access_log off; server_tokens off; client_body_temp_path {d}/cbt;\n\
             proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
             {} }}\n",
            self.servers.join("\n")
        )
    }

    /// Writes the file to [`NginxConfig::path`] and returns the arguments
    /// that run nginx with it: `-p <dir> -c <dir>/nginx.conf`.
    pub fn write(&self) -> Result<[String; 4]> {
        let path = self.path();
        std::fs::write(&path, self.text()).map_err(Error::io(&path))?;
        Ok([
            "-p".to_string(),
            self.dir.display().to_string(),
            "-c".to_string(),
            path.display().to_string(),
        ])
    }

    /// Writes the config and runs nginx in `ns` (its output in
    /// `dir/nginx.log`); returns once something listens on `port`, which
    /// one of the sites must use. Stopped when the [`Proc`] drops.
    pub fn start(&self, ns: &Netns, port: u16) -> Result<Proc> {
        let args = self.write()?;
        let mut cmd = ns.command("nginx");
        cmd.args(&args);
        let nginx = Proc::spawn(cmd, &self.dir.join("nginx.log"))?;
        let limit = Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        while !ns.listens_tcp(port) {
            if nginx.exited() || Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("nginx to listen on port {port} in {}", ns.name()),
                    limit,
                    detail: format!(": {}", nginx.log_text().trim()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sites_in_one_http_block() {
        let d = Path::new("/tmp/n");
        let text = NginxConfig::new(d)
            .http("127.0.0.1:8080", Path::new("/www"))
            .https(
                "198.18.60.3:443",
                Path::new("/c.pem"),
                Path::new("/k.pem"),
                Path::new("/www"),
            )
            .text();
        assert_eq!(
            text,
            "user root; master_process off; daemon off; pid /tmp/n/nginx.pid; error_log /tmp/n/error.log;\n\
             events { worker_connections 64; }\n\
             http { include /etc/nginx/mime.types; default_type application/octet-stream;\n\
             access_log off; server_tokens off; client_body_temp_path /tmp/n/cbt;\n\
             proxy_temp_path /tmp/n/pt; fastcgi_temp_path /tmp/n/ft; uwsgi_temp_path /tmp/n/ut; scgi_temp_path /tmp/n/st;\n\
             server { listen 127.0.0.1:8080; root /www; }\n\
             server { listen 198.18.60.3:443 ssl http2;\n\
             ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers on;\n\
             ssl_certificate /c.pem; ssl_certificate_key /k.pem; root /www; } }\n"
        );
    }
}
