//! `container`: lets a member act on its own container from inside, through the kernel's
//! `CONTAINER_FD_CURRENT` (the agent binary, linked as `/bin/container` in the guest):
//! `container kill [SIGNAL]`, `container freeze`, `container thaw`. A member's freeze stops the
//! member itself on its way back to user mode; the container's owner thaws it (`capsule thaw`).
//! Rebooting from inside is `reboot -f` (the kernel marks the container `rebooting` and the
//! agent gives it a fresh init).

use crate::backend::kernel::{nr, CONTAINER_FD_CURRENT};

const USAGE: &str = "usage:
  container kill [SIGNAL]   send SIGNAL (number or name, default KILL) to every member
  container freeze          freeze every member (this one too, until the owner thaws it)
  container thaw            thaw (useful only from a member the freeze did not reach)";

/// Signal numbers by name, with or without the SIG prefix.
fn signal(spec: &str) -> Option<i32> {
    if let Ok(n) = spec.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = spec.strip_prefix("SIG").unwrap_or(spec);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

fn call(nr: libc::c_long, arg: libc::c_long) -> Result<(), String> {
    // SAFETY: the container system calls take integer arguments only.
    let r = unsafe { libc::syscall(nr, CONTAINER_FD_CURRENT as libc::c_long, arg) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => format!("{e} (this process is in no container)"),
            Some(libc::EPERM) => format!("{e} (it needs CAP_SYS_ADMIN in the container)"),
            _ => e.to_string(),
        });
    }
    Ok(())
}

/// The applet's entry: `args` without the program name. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["kill"] => call(nr::CONTAINER_KILL, libc::SIGKILL.into()),
        ["kill", sig] => match signal(sig) {
            Some(s) => call(nr::CONTAINER_KILL, s.into()),
            None => Err(format!("unknown signal {sig:?}")),
        },
        ["freeze"] => call(nr::CONTAINER_FREEZE, 0),
        ["thaw"] => call(nr::CONTAINER_THAW, 0),
        ["-h"] | ["--help"] => {
            println!("{USAGE}");
            return 0;
        }
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("container: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(signal("9"), Some(libc::SIGKILL));
        assert_eq!(signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(signal("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal("0"), None);
        assert_eq!(signal("FOO"), None);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(main(&["bogus".into()]), 2);
        assert_eq!(main(&["kill".into(), "NOPE".into()]), 1);
    }
}
