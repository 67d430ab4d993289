//! The Prometheus harness against the real programs: `promtool` accepts the
//! generated configuration, and Prometheus scrapes a target it names.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warmhouse_devstack::{find_program, scrape_config, Prometheus, ScrapeTarget};

#[test]
fn promtool_accepts_the_generated_config() {
    let dir = tempfile::tempdir().unwrap();
    let targets = [
        ScrapeTarget::new("warmhouse-broker", SocketAddr::from(([127, 0, 0, 1], 9183))),
        ScrapeTarget::new(
            "warmhouse_registry",
            SocketAddr::from(([127, 0, 0, 1], 8082)),
        ),
    ];
    let path = dir.path().join("prometheus.yml");
    std::fs::write(
        &path,
        scrape_config(&targets, Duration::from_secs(1)).unwrap(),
    )
    .unwrap();
    let promtool = find_program("promtool", "install Debian's `prometheus` package").unwrap();
    let output = Command::new(promtool)
        .arg("check")
        .arg("config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Serves a fixed exposition on every request until the test ends.
fn serve_metrics(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            // Read the request head; Prometheus sends no body.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let target = serve_metrics("# TYPE probe_total counter\nprobe_total 42\n");
    let prometheus = Prometheus::start(
        dir.path(),
        &[ScrapeTarget::new("fake", target)],
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(prometheus.config_path().is_file());

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = http
            .get(format!("{}/api/v1/query", prometheus.url()))
            .query(&[("query", "probe_total * on(job, instance) up{job=\"fake\"}")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        if answer["data"]["result"][0]["value"][1] == "42" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape of the target after 30 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Killed on drop: nothing answers on its port any more.
    let addr = prometheus.addr();
    drop(prometheus);
    assert!(std::net::TcpStream::connect(addr).is_err());
}
