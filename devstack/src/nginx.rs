use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{find_program, ChildProcess};

/// nginx (Debian package `nginx`) as a child process with everything under
/// its own directory: configuration, pid file, temp dirs, logs. Nothing of
/// the system installation (/etc/nginx, /var/log/nginx, /run) is used, so it
/// runs as any user and several run side by side.
///
/// The caller supplies the HTTP-context configuration (`site`, e.g. the
/// rendered gateway template), which must listen on `127.0.0.1:{port}`;
/// this writes the process part around it. Dropping the handle stops nginx
/// (SIGTERM: fast shutdown of the master and its worker).
pub struct Nginx {
    dir: PathBuf,
    port: u16,
    process: ChildProcess,
}

impl Nginx {
    /// Starts nginx with `site` included in `http { }` and waits until it
    /// has bound its listening socket on `port`.
    pub fn start(dir: &Path, port: u16, site: &str) -> anyhow::Result<Self> {
        let program = find_program(
            "nginx",
            "install Debian's `nginx` package (scripts/install-deps.sh does)",
        )?;
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let quoted = |name: &str| quote(&dir.join(name));
        let site_path = dir.join("site.conf");
        std::fs::write(&site_path, site).context("writing site.conf")?;
        // One worker: tests run many stacks side by side on two cores. As
        // root the worker drops to nobody; it never touches the temp dirs,
        // since the site keeps bodies and answers in memory.
        let main = format!(
            "# Written by warmhouse-devstack: nginx as a child process, all under this directory.\n\
             worker_processes 1;\n\
             pid {pid};\n\
             error_log {error_log} notice;\n\
             events {{\n    worker_connections 1024;\n}}\n\
             http {{\n\
             \x20   client_body_temp_path {body};\n\
             \x20   proxy_temp_path {proxy};\n\
             \x20   fastcgi_temp_path {fastcgi};\n\
             \x20   uwsgi_temp_path {uwsgi};\n\
             \x20   scgi_temp_path {scgi};\n\
             \x20   # The site logs where it wants; nothing goes to /var/log/nginx.\n\
             \x20   access_log off;\n\
             \x20   include {site};\n\
             }}\n",
            pid = quoted("nginx.pid")?,
            error_log = quoted("error.log")?,
            body = quoted("tmp/client_body")?,
            proxy = quoted("tmp/proxy")?,
            fastcgi = quoted("tmp/fastcgi")?,
            uwsgi = quoted("tmp/uwsgi")?,
            scgi = quoted("tmp/scgi")?,
            site = quote(&site_path)?,
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).context("writing nginx.conf")?;
        let pid_file = dir.join("nginx.pid");
        // A stale pid file would look like a started server.
        let _ = std::fs::remove_file(&pid_file);

        let mut command = Command::new(program);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            // Errors before the configuration is read go here too.
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"]);
        let mut process = ChildProcess::spawn("nginx", command, &dir.join("error.log"))?;
        wait_ready(&mut process, &pid_file, port)?;
        Ok(Self { dir, port, process })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Where the configuration, pid file and error log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The last lines of the error log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// nginx writes its pid file only after it has bound every listening
/// socket, and exits when it cannot. So a pid file naming our child, with
/// the port accepting, means this nginx serves the port, not a stranger
/// that held it first.
fn wait_ready(process: &mut ChildProcess, pid_file: &Path, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let expected = process.pid().context("nginx was not started")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        process.check_alive()?;
        let pid_written = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            == Some(expected);
        if pid_written
            && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nginx did not serve {addr} within 15 s; log:\n{}",
                process.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A path as an nginx string: double-quoted, refusing what would end the
/// quotes or read as an escape.
fn quote(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if text.contains(['"', '\\']) {
        bail!("nginx cannot be given the path {text}: it contains a quote or backslash");
    }
    Ok(format!("\"{text}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::free_port;

    fn get(port: u16, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    }

    #[test]
    fn serves_its_site_and_stops_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let site = format!(
            "server {{ listen 127.0.0.1:{port}; location = /hello {{ return 200 'hi'; }} }}\n"
        );
        let nginx = Nginx::start(dir.path(), port, &site).expect("nginx starts");
        let answer = get(port, "/hello");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hi"), "{answer}");
        let pid = nginx.pid().expect("pid") as libc::pid_t;
        drop(nginx);
        // SAFETY: signal 0 only checks whether the process exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "nginx still runs");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_bad_site_fails_with_nginx_s_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let err = Nginx::start(dir.path(), port, "no_such_directive on;\n")
            .err()
            .expect("nginx refuses the site");
        assert!(format!("{err:#}").contains("unknown directive"), "{err:#}");
    }

    #[test]
    fn a_taken_port_is_an_error_not_a_false_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let site = format!("server {{ listen 127.0.0.1:{port}; }}\n");
        let err = Nginx::start(dir.path(), port, &site)
            .err()
            .expect("nginx cannot bind");
        assert!(
            format!("{err:#}").contains("Address already in use"),
            "{err:#}"
        );
    }
}
