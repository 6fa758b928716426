//! `keyctl`: the subset of keyutils' command that programs in a container need to use keys,
//! provided by the agent binary (linked as `/bin/keyctl` in the guest): `request`, `request2`
//! (which may start an upcall), `print`, `pipe` and `describe`, with keyutils' syntax.

use std::ffi::CString;
use std::io::Write;

use crate::sys;

const USAGE: &str = "usage:
  keyctl request <type> <description>             find a key; print its id
  keyctl request2 <type> <description> <info>     find or create a key (upcall); print its id
  keyctl print <id>                               print a key's payload
  keyctl pipe <id>                                write a key's raw payload to stdout
  keyctl describe <id>                            print type;uid;gid;perm;description";

fn cstring(what: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

fn request(key_type: &str, description: &str, callout: Option<&str>) -> Result<i32, String> {
    let key_type = cstring("type", key_type)?;
    let description = cstring("description", description)?;
    let callout = callout.map(|c| cstring("callout info", c)).transpose()?;
    // SAFETY: valid NUL-terminated strings (or NULL for no callout) and no destination keyring.
    let r = unsafe {
        libc::syscall(
            libc::SYS_request_key,
            key_type.as_ptr(),
            description.as_ptr(),
            callout.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(r as i32)
}

fn parse_id(s: &str) -> Result<i32, String> {
    s.parse().map_err(|_| format!("invalid key id {s:?}"))
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).map(String::as_str);
    let mut out = std::io::stdout().lock();
    let print = |out: &mut dyn Write, text: &[u8]| out.write_all(text).map_err(|e| e.to_string());
    match (arg(0), arg(1), arg(2), arg(3)) {
        (Some("request"), Some(t), Some(d), None) => {
            let id = request(t, d, None)?;
            print(&mut out, format!("{id}\n").as_bytes())
        }
        (Some("request2"), Some(t), Some(d), Some(info)) => {
            let id = request(t, d, Some(info))?;
            print(&mut out, format!("{id}\n").as_bytes())
        }
        (Some("print"), Some(id), None, None) => {
            let payload = sys::key_read(parse_id(id)?).map_err(errno_text)?;
            print(&mut out, &payload)?;
            print(&mut out, b"\n")
        }
        (Some("pipe"), Some(id), None, None) => {
            let payload = sys::key_read(parse_id(id)?).map_err(errno_text)?;
            print(&mut out, &payload)
        }
        (Some("describe"), Some(id), None, None) => {
            let text = sys::key_describe(parse_id(id)?).map_err(errno_text)?;
            print(&mut out, format!("{text}\n").as_bytes())
        }
        _ => Err(USAGE.to_string()),
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Runs the applet with the arguments after the command name; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keyctl: {e}");
            1
        }
    }
}
