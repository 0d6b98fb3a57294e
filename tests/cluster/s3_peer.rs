//! A real S3 endpoint for the tests: moto's server (from PyPI, installed by
//! `scripts/ensure-build-deps.sh`) on a port the OS picks, with one bucket, stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::common::eventually;

pub struct S3Peer {
    pub endpoint: String,
    child: Child,
}

impl S3Peer {
    /// Starts moto's S3 server, logging to `directory`, and creates `bucket`.
    pub async fn start(directory: &Path, bucket: &str) -> anyhow::Result<Self> {
        let log_path = directory.join("moto.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting moto's S3 server with python3")?;
        let mut peer = S3Peer {
            endpoint: String::new(),
            child,
        };
        peer.endpoint = eventually("moto's S3 server to listen", Duration::from_secs(60), || async {
            let log = std::fs::read_to_string(&log_path).ok()?;
            if log.contains("No module named moto") {
                return Some(Err(anyhow::anyhow!(
                    "moto is not installed: run `bash scripts/ensure-build-deps.sh --test`"
                )));
            }
            let address = log.split("Running on http://").nth(1)?.split_whitespace().next()?;
            Some(Ok(format!("http://{address}")))
        })
        .await??;
        let (status, _) = peer.request("PUT", &format!("/{bucket}"))?;
        anyhow::ensure!(status == 200, "creating bucket {bucket}: HTTP {status}");
        Ok(peer)
    }

    /// What an executor needs in its environment to use this peer.
    pub fn environment(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "raftstream-test"),
            ("AWS_SECRET_ACCESS_KEY", "raftstream-test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
    }

    /// The keys in `bucket` under `prefix` (first 1,000; enough for a test).
    pub fn keys(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = self.request("GET", &format!("/{bucket}?prefix={prefix}"))?;
        anyhow::ensure!(status == 200, "listing {bucket}/{prefix}: HTTP {status}: {body}");
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect())
    }

    /// One unsigned HTTP/1.1 request (moto accepts them); returns the status and body.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to moto at {host}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no HTTP status in {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for S3Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
