//! Container networks end to end, on every backend this machine offers: a container reaches an
//! HTTP server the test runs on its network's gateway address, two containers of one network
//! reach each other by address, a published port answers on the host's 127.0.0.1, `--net none`
//! leaves only lo, `network rm` refuses while a VM uses the network, and once the VMs and the
//! network are gone nothing of capsule's is left on the host (bridge, TAP, nftables rule).
//!
//! All traffic stays on this machine: each test makes its own network (its own bridge and
//! subnet in 10.77.0.0/16), and the only other address is the host's loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use capsule_tests::cli::{CapsuleCli, Outcome};
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

/// A network made by a test, removed (with its VMs first) when the test ends.
struct TestNetwork<'a> {
    cli: &'a CapsuleCli,
    name: String,
}

impl<'a> TestNetwork<'a> {
    fn create(cli: &'a CapsuleCli, name: &str, subnet: &str) -> Result<Self, String> {
        // A network left by an earlier, interrupted run of this test.
        let _ = cli.run(&["network", "rm", name]);
        cli.run(&["network", "create", name, "--subnet", subnet])?
            .expect_code(0)?;
        Ok(TestNetwork {
            cli,
            name: name.to_string(),
        })
    }
}

impl Drop for TestNetwork<'_> {
    fn drop(&mut self) {
        for vm in vm_names(self.cli) {
            let _ = self.cli.run(&["rm", "--force", &vm]);
        }
        let _ = self.cli.run(&["network", "rm", &self.name]);
    }
}

fn vm_names(cli: &CapsuleCli) -> Vec<String> {
    cli.run(&["ls"])
        .map(|o| {
            o.stdout
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The address `capsule ls` shows for `vm`.
fn address_of(cli: &CapsuleCli, vm: &str) -> Result<Ipv4Addr, String> {
    let ls = cli.run(&["ls"])?;
    ls.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(vm))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("ls shows no address for {vm}\n{}", ls.describe()))
}

fn exec(cli: &CapsuleCli, vm: &str, cmd: &[&str]) -> Result<Outcome, String> {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(cmd);
    cli.run(&args)
}

/// Serves one fixed page on `addr` to every connection, until the process ends.
fn serve_page(addr: (Ipv4Addr, u16), page: &'static str) -> Result<u16, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr:?}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            );
        }
    });
    Ok(port)
}

/// Starts busybox httpd on port 80 of the container, serving `page` as /index.html.
fn start_httpd(cli: &CapsuleCli, vm: &str, page: &str) -> Result<(), String> {
    let script = format!(
        "mkdir -p /tmp/www && echo {page} > /tmp/www/index.html && httpd -p 80 -h /tmp/www"
    );
    exec(cli, vm, &["sh", "-c", &script])?.expect_code(0)?;
    Ok(())
}

/// `GET /` on the host's 127.0.0.1:port, retried while the guest's server starts.
fn get_from_host(port: u16) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(body) if !body.is_empty() => return Ok(body),
            other if Instant::now() > deadline => {
                return Err(format!("GET 127.0.0.1:{port}: {other:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Links and rules of capsule's on the host that mention `bridge` or `subnet_prefix`.
fn leftovers(bridge: &str, subnet_prefix: &str, taps: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    if std::path::Path::new("/sys/class/net").join(bridge).exists() {
        left.push(format!("bridge {bridge}"));
    }
    for tap in taps {
        if std::path::Path::new("/sys/class/net").join(tap).exists() {
            left.push(format!("TAP {tap}"));
        }
    }
    if let Ok(out) = Command::new("nft")
        .args(["list", "table", "ip", "capsule"])
        .output()
    {
        let rules = String::from_utf8_lossy(&out.stdout);
        for line in rules.lines() {
            if line.contains(bridge) || line.contains(subnet_prefix) {
                left.push(format!("nft rule: {}", line.trim()));
            }
        }
    }
    left
}

fn bridge_of(cli: &CapsuleCli, network: &str) -> Result<String, String> {
    let ls = cli.run(&["network", "ls"])?;
    ls.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(network))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(String::from)
        .ok_or_else(|| format!("network ls lacks {network}\n{}", ls.describe()))
}

fn tap_of(addr: Ipv4Addr) -> String {
    format!("capt{:08x}", u32::from(addr))
}

/// The issue's "done when": a container fetches a page from the host's gateway address; b
/// serves, a fetches from b's address; `network rm` refuses while they exist; after rm
/// nothing is left.
fn two_containers_and_the_gateway(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("net-pair")?;
    let net = TestNetwork::create(&cli, "tnet-pair", "10.77.1.0/24")?;
    cli.create(backend, "a", &["--net", &net.name])?;
    cli.create(backend, "b", &["--net", &net.name, "--ip", "10.77.1.20"])?;
    let a = address_of(&cli, "a")?;
    let b = address_of(&cli, "b")?;
    if a != Ipv4Addr::new(10, 77, 1, 2) || b != Ipv4Addr::new(10, 77, 1, 20) {
        return Err(format!(
            "addresses a={a} b={b}, expected 10.77.1.2 and 10.77.1.20"
        ));
    }
    let bridge = bridge_of(&cli, &net.name)?;

    // The container's view: its address on eth0, the route, the host's resolvers.
    let ip = exec(&cli, "a", &["ip", "-4", "addr", "show", "eth0"])?;
    ip.expect_code(0)?;
    if !ip.stdout.contains("inet 10.77.1.2/24") {
        return Err(format!("eth0 lacks 10.77.1.2/24\n{}", ip.describe()));
    }
    exec(&cli, "a", &["ip", "route"])?
        .expect_code(0)?
        .expect_stdout_has("default via 10.77.1.1 dev eth0")?;

    let port = serve_page((Ipv4Addr::new(10, 77, 1, 1), 0), "hello from the host\n")?;
    let url = format!("http://10.77.1.1:{port}/");
    exec(&cli, "a", &["wget", "-qO-", &url])?
        .expect_code(0)?
        .expect_stdout("hello from the host\n")?;

    start_httpd(&cli, "b", "hello-from-b")?;
    let url = format!("http://{b}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = exec(&cli, "a", &["wget", "-qO-", &url])?;
        if got.code == Some(0) && got.stdout == "hello-from-b\n" {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("a cannot fetch from b\n{}", got.describe()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let refused = cli.run(&["network", "rm", &net.name])?;
    refused.expect_code(1)?;
    refused.expect_stderr_has(&["network tnet-pair is used by VM(s) a, b"])?;

    for vm in ["a", "b"] {
        cli.run(&["rm", "--force", vm])?.expect_code(0)?;
    }
    cli.run(&["network", "rm", &net.name])?.expect_code(0)?;
    let left = leftovers(&bridge, "10.77.1.", &[tap_of(a), tap_of(b)]);
    if !left.is_empty() {
        return Err(format!("left on the host after rm: {left:?}"));
    }
    Ok(())
}

/// `--publish HOST:80` answers on the host's 127.0.0.1; the same host port cannot be
/// published twice, nor one a host program holds; stopping the VM takes its rule away.
fn published_port_answers_on_loopback(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("net-publish")?;
    let net = TestNetwork::create(&cli, "tnet-pub", "10.77.2.0/24")?;
    let port = {
        let l = TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let publish = format!("{port}:80");
    cli.create(backend, "web", &["--net", &net.name, "--publish", &publish])?;
    start_httpd(&cli, "web", "published-page")?;
    let body = get_from_host(port)?;
    if !body.ends_with("published-page\n") {
        return Err(format!("127.0.0.1:{port} answered {body:?}"));
    }

    let twice = cli.run(&[
        "create",
        "web2",
        "--backend",
        backend.cli_name(),
        "--net",
        &net.name,
        "--publish",
        &publish,
    ])?;
    twice.expect_code(1)?;
    twice.expect_stderr_has(&[&format!(
        "host port {port}/tcp is already published by VM web"
    )])?;

    let held = TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let held_port = held.local_addr().map_err(|e| e.to_string())?.port();
    let taken = cli.run(&[
        "create",
        "web3",
        "--backend",
        backend.cli_name(),
        "--net",
        &net.name,
        "--publish",
        &format!("{held_port}:80"),
    ])?;
    taken.expect_code(1)?;
    taken.expect_stderr_has(&[&format!("host port {held_port}/tcp is already in use")])?;

    cli.run(&["stop", "web"])?.expect_code(0)?;
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        return Err(format!("127.0.0.1:{port} still answers after stop"));
    }
    Ok(())
}

/// `--net none`: the container has lo only, and `ls` shows no address.
fn no_network_has_only_loopback(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("net-none")?;
    cli.create(backend, "alone", &["--net", "none"])?;
    exec(&cli, "alone", &["ls", "/sys/class/net"])?
        .expect_code(0)?
        .expect_stdout("lo\n")?;
    let ls = cli.run(&["ls"])?;
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("alone "))
        .ok_or_else(|| ls.describe())?;
    if line.split_whitespace().nth(5) != Some("-") {
        return Err(format!("ls shows an address for a --net none VM: {line}"));
    }
    let bad = cli.run(&["create", "x", "--net", "none", "--ip", "10.0.0.2"])?;
    bad.expect_code(1)?;
    bad.expect_stderr_has(&["--ip needs a network"])?;
    Ok(())
}

/// The default network: made on first use, its address on eth0 matches `ls`, the host's
/// resolvers are in resolv.conf, and the hostname is the VM's name.
fn default_network(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("net-default")?;
    cli.create(backend, "dflt", &[])?;
    let addr = address_of(&cli, "dflt")?;
    if !addr.to_string().starts_with("10.88.") {
        return Err(format!(
            "default network address {addr} is not in 10.88.0.0/16"
        ));
    }
    exec(&cli, "dflt", &["ip", "-4", "addr", "show", "eth0"])?
        .expect_code(0)?
        .expect_stdout_has(&format!("inet {addr}/16"))?;
    exec(&cli, "dflt", &["hostname"])?
        .expect_code(0)?
        .expect_stdout("dflt\n")?;
    let host_servers: Vec<String> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .filter(|a| a.parse::<Ipv4Addr>().is_ok_and(|a| !a.is_loopback()))
        .map(|a| format!("nameserver {}", a.trim()))
        .collect();
    let resolv = exec(&cli, "dflt", &["cat", "/etc/resolv.conf"])?;
    resolv.expect_code(0)?;
    for s in &host_servers {
        if !resolv.stdout.contains(s.as_str()) {
            return Err(format!("resolv.conf lacks {s}\n{}", resolv.describe()));
        }
    }
    Ok(())
}

/// A network namespace set up the way CNI does for a pod: a veth whose pod end (eth0, with
/// 10.77.4.2/24 and a default route) is in the namespace and whose host end has the gateway
/// address. Removed on drop.
struct PodNamespace {
    name: String,
    host_end: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl PodNamespace {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let ns = PodNamespace {
            name: format!("capsule-test-pod-{id}"),
            host_end: format!("ctv{id}"),
        };
        let pod_end = format!("ctp{id}");
        let _ = ip(&["netns", "del", &ns.name]);
        let _ = ip(&["link", "del", &ns.host_end]);
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_end,
            "type",
            "veth",
            "peer",
            "name",
            &pod_end,
        ])?;
        ip(&["link", "set", &pod_end, "netns", &ns.name])?;
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", &pod_end, "name", "eth0"])?;
        ip(&["-n", n, "addr", "add", "10.77.4.2/24", "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", "10.77.4.1"])?;
        ip(&["addr", "add", "10.77.4.1/24", "dev", &ns.host_end])?;
        ip(&["link", "set", &ns.host_end, "up"])?;
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NS args` output.
    fn ip_output(&self, args: &[&str]) -> String {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PodNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_end]);
    }
}

/// `--netns`: the container takes the pod interface's address and MAC; it reaches the host
/// end of the veth and is reached at the pod address; rm takes the TAP and redirect away.
fn pod_network_namespace(backend: Backend) -> Result<(), String> {
    let pod = PodNamespace::create()?;
    let cli = CapsuleCli::new("net-netns")?;
    let mac = pod
        .ip_output(&["-br", "link", "show", "eth0"])
        .split_whitespace()
        .nth(2)
        .map(String::from)
        .ok_or("no MAC for the pod's eth0")?;
    cli.create(backend, "pod", &["--netns", &pod.path()])?;
    if address_of(&cli, "pod")? != Ipv4Addr::new(10, 77, 4, 2) {
        return Err("ls does not show the pod address 10.77.4.2".into());
    }
    let shown = exec(&cli, "pod", &["ip", "addr", "show", "eth0"])?;
    shown.expect_code(0)?;
    if !shown.stdout.contains("inet 10.77.4.2/24") || !shown.stdout.contains(&mac) {
        return Err(format!(
            "eth0 lacks 10.77.4.2/24 or {mac}\n{}",
            shown.describe()
        ));
    }
    let port = serve_page(
        (Ipv4Addr::new(10, 77, 4, 1), 0),
        "hello from the pod's host side\n",
    )?;
    exec(
        &cli,
        "pod",
        &["wget", "-qO-", &format!("http://10.77.4.1:{port}/")],
    )?
    .expect_code(0)?
    .expect_stdout("hello from the pod's host side\n")?;
    start_httpd(&cli, "pod", "served-at-the-pod-address")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("10.77.4.2", 80))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match got {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => return Err(format!("GET 10.77.4.2:80: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    if !body.ends_with("served-at-the-pod-address\n") {
        return Err(format!("10.77.4.2:80 answered {body:?}"));
    }
    cli.run(&["rm", "--force", "pod"])?.expect_code(0)?;
    let links = pod.ip_output(&["-br", "link"]);
    if links.contains("capt") {
        return Err(format!("the VM's TAP is left in the namespace:\n{links}"));
    }
    if pod.ip_output(&["-d", "link", "show", "eth0"]).is_empty()
        || !Command::new("tc")
            .args(["-n", &pod.name, "filter", "show", "dev", "eth0", "ingress"])
            .output()
            .map(|o| o.stdout.is_empty())
            .unwrap_or(false)
    {
        return Err("the pod's eth0 is gone or still has capsule's ingress redirect".into());
    }
    Ok(())
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t(
            "two_containers_reach_each_other_and_the_gateway_then_nothing_is_left",
            two_containers_and_the_gateway,
        ),
        t(
            "published_port_answers_on_host_loopback",
            published_port_answers_on_loopback,
        ),
        t("net_none_has_only_loopback", no_network_has_only_loopback),
        t(
            "netns_pod_address_is_the_containers_and_rm_cleans_the_namespace",
            pod_network_namespace,
        ),
        t(
            "default_network_address_resolvers_and_hostname",
            default_network,
        ),
    ]);
}
