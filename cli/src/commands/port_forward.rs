//! `capsule port-forward`: forward a host TCP port to a port inside a VM's container.

use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use capsule_protocol::methods::ConnectSocket;
use capsule_protocol::{pb, Client, StreamKind};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Runs until interrupted. Each connection to the host port opens a new \
    connection inside the container's network namespace.\n\nExample: capsule port-forward web 8080:80"
)]
pub struct PortForwardArgs {
    name: String,
    /// HOST_PORT:GUEST_PORT
    #[arg(value_name = "HOST:GUEST")]
    ports: String,
    /// Host address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Address to connect to inside the container.
    #[arg(long, default_value = "127.0.0.1")]
    guest_address: String,
}

fn parse_ports(spec: &str) -> Result<(u16, u16)> {
    let (h, g) = spec
        .split_once(':')
        .with_context(|| format!("invalid ports {spec:?}: expected HOST:GUEST"))?;
    let port = |p: &str| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("invalid port {p:?} in {spec:?}: 1 to 65535"),
        }
    };
    Ok((port(h)?, port(g)?))
}

pub fn run(args: PortForwardArgs) -> ExitCode {
    match forward(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn forward(args: &PortForwardArgs) -> Result<()> {
    let (host_port, guest_port) = parse_ports(&args.ports)?;
    let (_, client) = super::common::agent(&args.name)?;
    let client = Arc::new(client);
    let listener = TcpListener::bind((args.address.as_str(), host_port))
        .with_context(|| format!("cannot listen on {}:{host_port}", args.address))?;
    eprintln!(
        "capsule: forwarding {}:{host_port} to {} port {guest_port}",
        args.address, args.name
    );
    let family = if args.guest_address.contains(':') {
        pb::SocketFamily::Inet6
    } else {
        pb::SocketFamily::Inet
    };
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("capsule: accept failed: {e}");
                continue;
            }
        };
        let request = pb::ConnectSocketRequest {
            container: args.name.clone(),
            family: family as i32,
            address: args.guest_address.clone(),
            port: u32::from(guest_port),
        };
        let client = client.clone();
        std::thread::spawn(move || {
            if let Err(e) = bridge(&client, &request, conn) {
                eprintln!("capsule: connection to port {}: {e:#}", request.port);
            }
        });
    }
    Ok(())
}

fn bridge(client: &Client, request: &pb::ConnectSocketRequest, tcp: TcpStream) -> Result<()> {
    let bridge = client.call::<ConnectSocket>(request)?;
    let guest = client.attach(StreamKind::Socket, bridge.bridge_id)?;
    let (mut guest_r, mut guest_w) = (guest.try_clone()?, guest);
    let (mut tcp_r, mut tcp_w) = (tcp.try_clone()?, tcp);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut guest_w);
        let _ = guest_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut guest_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("8080:80").unwrap(), (8080, 80));
        assert!(parse_ports("8080").is_err());
        assert!(parse_ports("0:80").is_err());
        assert!(parse_ports("8080:70000").is_err());
    }
}
