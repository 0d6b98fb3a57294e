//! `--net netns`: every process in a Linux network namespace of its own, the namespaces joined by
//! one bridge, partitions as iptables DROP rules and link delays as netem queues. The faults then
//! act on the kernel's network stack instead of on the harness's proxies: a cut drops packets, so
//! connections hang and time out as they do between machines.
//!
//! Needs root (CAP_NET_ADMIN), the `ip` and `iptables` commands, and for delays the kernel's
//! `sch_netem`. Names carry the harness's process id (`rsj<pid>...`), so runs side by side do not
//! collide and what a killed run left behind can be told apart and removed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::endpoint::Endpoint;

/// Every process listens on this port of its own address.
const PORT: u16 = 7000;
/// The first two octets of the namespaces' subnets; the third is chosen per run.
const SUBNET_BASE: &str = "10.213";
const TAG_PREFIX: &str = "rsj";

struct Member {
    namespace: String,
    address: String,
}

/// The namespaces, bridge and links of one run; removed on drop.
pub struct Namespaces {
    bridge: String,
    members: BTreeMap<Endpoint, Member>,
    /// Whether the kernel has netem, so links can be slowed.
    pub supports_delay: bool,
}

impl Namespaces {
    /// A namespace per endpoint, each with one veth link into a new bridge that the harness's
    /// own namespace (where the clients run) also sits on.
    pub fn create(endpoints: &[Endpoint]) -> anyhow::Result<Namespaces> {
        if endpoints.len() > 200 {
            bail!("{} processes do not fit the namespaces' /24 subnet", endpoints.len());
        }
        remove_abandoned();
        let tag = format!("{TAG_PREFIX}{}", std::process::id());
        let subnet = free_subnet()?;
        let mut namespaces = Namespaces {
            bridge: tag.clone(),
            members: BTreeMap::new(),
            supports_delay: false,
        };
        ip(&["link", "add", &namespaces.bridge, "type", "bridge"])
            .context("--net netns needs root (CAP_NET_ADMIN) and the `ip` command (iproute2)")?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &namespaces.bridge])?;
        ip(&["link", "set", &namespaces.bridge, "up"])?;
        for (index, endpoint) in endpoints.iter().enumerate() {
            let namespace = format!("{tag}-{endpoint}");
            let host_link = format!("{tag}h{index}");
            let address = format!("{subnet}.{}", 10 + index);
            ip(&["netns", "add", &namespace])?;
            // Registered before the links exist, so a failure half-way still cleans up.
            namespaces.members.insert(
                endpoint.clone(),
                Member {
                    namespace: namespace.clone(),
                    address: address.clone(),
                },
            );
            ip(&[
                "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            ip(&["link", "set", &host_link, "master", &namespaces.bridge, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            // A process reaches its own address through loopback.
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        let first = namespaces
            .members
            .values()
            .next()
            .map(|member| member.namespace.clone())
            .context("no processes to place in namespaces")?;
        in_namespace(&first, "iptables", &["-w", "-L", "INPUT", "-n"])
            .context("--net netns cuts links with iptables: install it (apt-get install -y iptables)")?;
        namespaces.supports_delay = in_namespace(&first, "tc", &["qdisc", "add", "dev", "eth0", "root", "netem"])
            .and_then(|()| in_namespace(&first, "tc", &["qdisc", "del", "dev", "eth0", "root"]))
            .is_ok();
        Ok(namespaces)
    }

    /// The address `endpoint` listens on, reachable from every namespace and from the harness.
    pub fn address(&self, endpoint: &str) -> anyhow::Result<String> {
        self.members
            .get(endpoint)
            .map(|member| format!("{}:{PORT}", member.address))
            .with_context(|| format!("no namespace for {endpoint}"))
    }

    /// The namespace `endpoint` runs in.
    pub fn namespace(&self, endpoint: &str) -> anyhow::Result<String> {
        self.members
            .get(endpoint)
            .map(|member| member.namespace.clone())
            .with_context(|| format!("no namespace for {endpoint}"))
    }

    /// Drops every packet between `one` and `other`, both ways. Rules in `one`'s namespace are
    /// enough: its INPUT sees what `other` sends, its OUTPUT what it sends to `other`.
    pub fn cut(&self, one: &str, other: &str) -> anyhow::Result<()> {
        let namespace = self.namespace(one)?;
        let peer = &self
            .members
            .get(other)
            .with_context(|| format!("no namespace for {other}"))?
            .address;
        in_namespace(&namespace, "iptables", &["-w", "-A", "INPUT", "-s", peer, "-j", "DROP"])?;
        in_namespace(
            &namespace,
            "iptables",
            &["-w", "-A", "OUTPUT", "-d", peer, "-j", "DROP"],
        )
    }

    /// Delays every packet a process sends by `delay`, so every link is `delay` slower each way.
    pub fn delay_all(&self, delay: Duration) -> anyhow::Result<()> {
        if !self.supports_delay {
            bail!("this kernel has no netem queueing discipline (sch_netem), so --net netns cannot delay links");
        }
        let delay = format!("{}ms", delay.as_millis());
        for member in self.members.values() {
            in_namespace(
                &member.namespace,
                "tc",
                &["qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay],
            )?;
        }
        Ok(())
    }

    /// Removes every DROP rule and every delay.
    pub fn heal(&self) -> anyhow::Result<()> {
        for member in self.members.values() {
            in_namespace(&member.namespace, "iptables", &["-w", "-F"])?;
            if self.supports_delay {
                // Fails when no delay was set, which is fine.
                let _ = in_namespace(&member.namespace, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
            }
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // The veth links go with their namespaces once the processes in them have exited.
        for member in self.members.values() {
            let _ = ip(&["netns", "del", &member.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_command("ip", args)
}

fn in_namespace(namespace: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["netns", "exec", namespace, program];
    full.extend_from_slice(args);
    run_command("ip", &full)
}

fn run_command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = command_output(program, args)?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running `{program}`"))
}

/// What `program` printed (whatever its exit status: listings are read best-effort).
fn command_stdout(program: &str, args: &[&str]) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&command_output(program, args)?.stdout).into_owned())
}

/// A `10.213.X` subnet no interface of this machine uses, starting from one derived from the
/// process id so that concurrent runs try different ones.
fn free_subnet() -> anyhow::Result<String> {
    let in_use = command_stdout("ip", &["-o", "-4", "addr", "show"])?;
    let start = std::process::id() % 240;
    (0..240)
        .map(|step| format!("{SUBNET_BASE}.{}", 10 + (start + step) % 240))
        .find(|subnet| !in_use.contains(&format!(" {subnet}.")))
        .context("every 10.213.X.0/24 subnet is in use")
}

/// Namespaces and bridges of runs whose harness process is gone (killed before its drop ran).
fn remove_abandoned() {
    let abandoned = |name: &str| {
        name.strip_prefix(TAG_PREFIX)
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
            .filter(|pid| !pid.is_empty())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(listing) = command_stdout("ip", &["netns", "list"]) {
        for name in listing.lines().filter_map(|line| line.split_whitespace().next()) {
            if abandoned(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(listing) = command_stdout("ip", &["-o", "link", "show", "type", "bridge"]) {
        for name in listing.lines().filter_map(|line| line.split(':').nth(1)).map(str::trim) {
            if abandoned(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs only where namespaces can be made (root with CAP_NET_ADMIN, `ip`, `iptables`);
    /// elsewhere it says why it checked nothing.
    #[test]
    fn a_cut_drops_traffic_between_two_namespaces_and_heal_restores_it() {
        let endpoints = vec!["node-1".to_owned(), "node-2".to_owned()];
        let namespaces = match Namespaces::create(&endpoints) {
            Ok(namespaces) => namespaces,
            Err(error) => {
                eprintln!("skipped: cannot create network namespaces here: {error:#}");
                return;
            }
        };
        let listener_namespace = namespaces.namespace("node-2").unwrap();
        let listen = namespaces.address("node-2").unwrap();
        // A listener in node-2's namespace, a connect attempt from node-1's.
        let mut server = Command::new("ip")
            .args(["netns", "exec", &listener_namespace, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{}', {PORT}))\ns.listen(16)\nimport time\ntime.sleep(60)",
                listen.split(':').next().unwrap()
            ))
            .spawn()
            .unwrap();
        let connects = |timeout_s: u32| {
            let client_namespace = namespaces.namespace("node-1").unwrap();
            let (host, port) = listen.split_once(':').unwrap();
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &client_namespace,
                    "timeout",
                    &timeout_s.to_string(),
                    "bash",
                    "-c",
                ])
                .arg(format!("echo > /dev/tcp/{host}/{port}"))
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !connects(1) {
            assert!(std::time::Instant::now() < deadline, "the listener never came up");
        }
        namespaces.cut("node-1", "node-2").unwrap();
        assert!(!connects(2), "a cut link still connected");
        namespaces.heal().unwrap();
        assert!(connects(2), "a healed link did not connect");
        let _ = server.kill();
        let _ = server.wait();
    }
}
