//! `capsule helper`: upcall helper programs shipped with capsule.
//!
//! `capsule helper dns-resolver` answers the guest kernel's `dns_resolver` key requests from
//! the host's resolver: it reads the upcall request (JSON, see `capsule_host::upcall`) on stdin and
//! prints the addresses of the host name in the request's description, comma-separated and
//! NUL-terminated, which is the text payload format of the kernel's dns_resolver key type
//! (`dns_resolver_preparse` refuses a payload without the NUL). It fails (and the key is negated)
//! when the name does not resolve.

use std::io::{Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct HelperArgs {
    #[command(subcommand)]
    helper: Helper,
}

#[derive(Subcommand, Debug)]
enum Helper {
    /// Answer dns_resolver upcalls from the host's resolver (reads the request on stdin).
    DnsResolver,
}

#[derive(serde::Deserialize)]
struct Request {
    description: String,
    #[serde(default)]
    callout_info: String,
}

pub fn run(args: HelperArgs) -> ExitCode {
    match args.helper {
        Helper::DnsResolver => match dns_resolver() {
            Ok(answer) => {
                let mut out = std::io::stdout().lock();
                match out
                    .write_all(answer.as_bytes())
                    .and_then(|_| out.write_all(b"\0"))
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        super::fail(&anyhow::Error::new(e).context("cannot write the answer"))
                    }
                }
            }
            Err(e) => super::fail(&e),
        },
    }
}

fn dns_resolver() -> Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)
        .context("cannot read the upcall request")?;
    let request: Request = serde_json::from_str(&input).context("invalid upcall request")?;
    resolve(&request.description, &request.callout_info)
}

/// Resolves `name`; `callout` may restrict the family ("ipv4" / "ipv6", as the kernel's
/// dns_resolver passes them).
fn resolve(name: &str, callout: &str) -> Result<String> {
    if name.is_empty() || name.len() > 253 || name.contains(['/', ' ', ',']) {
        bail!("invalid host name {name:?}");
    }
    let want_v4 = !callout.contains("ipv6");
    let want_v6 = !callout.contains("ipv4");
    let mut addrs: Vec<IpAddr> = Vec::new();
    for addr in (name, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {name}"))?
    {
        let ip = addr.ip();
        if (ip.is_ipv4() && want_v4 || ip.is_ipv6() && want_v6) && !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        bail!("{name} has no address of the requested family");
    }
    Ok(addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_localhost_by_family() {
        assert!(resolve("localhost", "ipv4").unwrap().contains("127.0.0.1"));
        assert!(!resolve("localhost", "ipv4").unwrap().contains("::1"));
        assert!(resolve("", "").is_err());
        assert!(resolve("a,b", "").is_err());
        assert!(resolve("no-such-host.invalid", "").is_err());
    }
}
