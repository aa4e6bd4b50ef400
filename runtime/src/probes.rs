//! Liveness, readiness and startup probes, as the kubelet runs them: `exec` (a command
//! in the container through `cairn shim exec`), `tcpSocket` and `httpGet` (from inside
//! the pod's network namespace, so a container listening on loopback answers too),
//! each bounded by `timeoutSeconds`; and the per-probe state machine of
//! `initialDelaySeconds`, `periodSeconds`, `successThreshold` and `failureThreshold`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sched::CloneFlags;

use crate::container::ShimProgram;
use crate::process::{Spawner, async_reader, terminate};

/// What a probe reaches: the container's shim directory and the pod's network
/// namespace.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The shim program (for `exec`).
    pub shim: ShimProgram,
    /// How the shim is started.
    pub spawner: std::sync::Arc<dyn Spawner>,
    /// The container instance's directory.
    pub instance: PathBuf,
    /// The pod's network namespace file.
    pub netns: PathBuf,
}

/// The timing of a probe, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Before the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// For one probe.
    pub timeout: Duration,
    /// Consecutive successes that make it pass.
    pub success_threshold: u32,
    /// Consecutive failures that make it fail.
    pub failure_threshold: u32,
}

impl Timing {
    /// The timing fields of `probe`, defaulted as the API server does.
    pub fn of(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(value.map_or(default, |v| (v.max(0) as u64).max(min)))
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// Counts consecutive results and says when a probe's verdict changes.
#[derive(Debug, Clone)]
pub struct Verdicts {
    timing: Timing,
    successes: u32,
    failures: u32,
    passing: Option<bool>,
}

impl Verdicts {
    /// A probe that has not decided yet.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            successes: 0,
            failures: 0,
            passing: None,
        }
    }

    /// Takes one result; returns the new verdict when it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.timing.success_threshold {
            Some(true)
        } else if self.failures >= self.timing.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => {
            u16::try_from(*number).map_err(|_| format!("port {number} is out of range"))
        }
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// Connects to `port` on loopback inside the network namespace `netns`: the socket is
/// made by a thread that entered the namespace, and stays in it.
fn connect_in(
    netns: &Path,
    host: Option<&str>,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let netns = netns.to_owned();
    let address: std::net::IpAddr = match host.filter(|h| !h.is_empty()) {
        Some(host) => host
            .parse()
            .map_err(|_| format!("probe host {host:?} is not an IP address"))?,
        None => Ipv4Addr::LOCALHOST.into(),
    };
    std::thread::spawn(move || -> Result<TcpStream, String> {
        let file = std::fs::File::open(&netns)
            .map_err(|err| format!("opening {}: {err}", netns.display()))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|err| format!("entering the pod's network namespace: {err}"))?;
        let stream = TcpStream::connect_timeout(&SocketAddr::new(address, port), timeout)
            .map_err(|err| format!("dial tcp {address}:{port}: {err}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|err| err.to_string())?;
        Ok(stream)
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_owned())?
}

/// One HTTP GET; 200–399 pass, as in the kubelet.
fn http_get(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("sending the request: {err}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 1024 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(err) => return Err(format!("reading the answer: {err}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `probe` once against `target`; the error says why it failed.
pub async fn run_once(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
) -> Result<(), String> {
    let timing = Timing::of(probe);
    if let Some(exec) = &probe.exec {
        let command_line = exec.command.clone().unwrap_or_default();
        if command_line.is_empty() {
            return Err("exec probe without a command".into());
        }
        let mut command =
            crate::exec::shim_command(&target.shim, &target.instance, &command_line, None);
        command.stdout(std::process::Stdio::piped());
        let spawned = target
            .spawner
            .spawn(&mut command)
            .map_err(|err| format!("starting the exec probe: {err}"))?;
        let pid = spawned.pid;
        let stdout = spawned.stdout;
        let exit = spawned.exit;
        let mut output = Vec::new();
        let finished = tokio::time::timeout(timing.timeout, async {
            if let Some(out) = stdout
                && let Ok(mut reader) = async_reader(out)
            {
                use tokio::io::AsyncReadExt;
                let _ = reader.read_to_end(&mut output).await;
            }
            exit.await
        })
        .await;
        return match finished {
            Err(_) => {
                // `cairn shim exec` kills the command in the container when told to end.
                terminate(pid);
                Err(format!("command timed out after {:?}", timing.timeout))
            }
            Ok(Err(err)) => Err(format!("waiting for the exec probe: {err}")),
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(code)) => Err(format!(
                "command {command_line:?} exited with {code}: {}",
                String::from_utf8_lossy(&output).trim()
            )),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(container, &tcp.port)?;
        let (netns, host, timeout) = (target.netns.clone(), tcp.host.clone(), timing.timeout);
        return tokio::task::spawn_blocking(move || {
            connect_in(&netns, host.as_deref(), port, timeout).map(|_| ())
        })
        .await
        .map_err(|err| err.to_string())?;
    }
    if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported on Cairn yet".into());
        }
        let port = port(container, &http.port)?;
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let (netns, host, timeout) = (target.netns.clone(), http.host.clone(), timing.timeout);
        return tokio::task::spawn_blocking(move || {
            let mut stream = connect_in(&netns, host.as_deref(), port, timeout)?;
            let host_header = format!("{}:{port}", host.as_deref().unwrap_or("localhost"));
            http_get(&mut stream, &host_header, &path, &headers)
        })
        .await
        .map_err(|err| err.to_string())?;
    }
    Err("the probe has no handler Cairn supports (exec, tcpSocket, httpGet)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_defaults_follow_kubernetes() {
        let timing = Timing::of(&Probe::default());
        assert_eq!(timing.period, Duration::from_secs(10));
        assert_eq!(timing.timeout, Duration::from_secs(1));
        assert_eq!((timing.success_threshold, timing.failure_threshold), (1, 3));
    }

    #[test]
    fn verdicts_change_only_at_the_thresholds() {
        let mut verdicts = Verdicts::new(Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        });
        assert_eq!(verdicts.record(true), None);
        assert_eq!(verdicts.record(true), Some(true));
        assert_eq!(verdicts.record(true), None, "no change, no news");
        assert_eq!(verdicts.record(false), None);
        assert_eq!(verdicts.record(false), None);
        assert_eq!(verdicts.record(false), Some(false));
        assert_eq!(verdicts.record(true), None);
        assert_eq!(verdicts.record(true), Some(true));
    }

    #[test]
    fn named_ports_are_looked_up_in_the_container() {
        let container: Container =
            serde_json::from_str(r#"{"name":"c","ports":[{"name":"http","containerPort":8080}]}"#)
                .unwrap();
        assert_eq!(
            port(&container, &IntOrString::String("http".into())).unwrap(),
            8080
        );
        assert_eq!(port(&container, &IntOrString::Int(81)).unwrap(), 81);
        assert!(port(&container, &IntOrString::String("grpc".into())).is_err());
    }

    #[test]
    fn http_answers_are_judged_by_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).unwrap();
                socket.write_all(answer.as_bytes()).unwrap();
            }
        });
        let mut first = TcpStream::connect(address).unwrap();
        http_get(&mut first, "x", "/healthz", &[]).unwrap();
        let mut second = TcpStream::connect(address).unwrap();
        let err = http_get(&mut second, "x", "/healthz", &[]).unwrap_err();
        assert!(err.contains("500"), "{err}");
        server.join().unwrap();
    }
}
