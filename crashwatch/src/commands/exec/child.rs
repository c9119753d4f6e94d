//! Starting the command: in the cgroup, as the user who ran sudo (unless `--as-root`), with
//! our stdin, stdout, stderr and terminal; and passing it the signals sent to us.
use std::{
    ffi::{CString, OsString},
    io::IsTerminal,
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};

/// Who the command runs as.
#[derive(Clone)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub name: String,
    pub home: Option<String>,
}

impl User {
    /// The user sudo was run by (`SUDO_UID`, `SUDO_GID`), when we run as root through it.
    pub fn invoking() -> Option<User> {
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
        let gid: u32 = std::env::var("SUDO_GID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        let (name, home) = passwd(uid).unwrap_or_else(|| {
            (
                std::env::var("SUDO_USER").unwrap_or_else(|_| uid.to_string()),
                None,
            )
        });
        let groups = groups_of(&name, gid);
        Some(User {
            uid,
            gid,
            groups,
            name,
            home,
        })
    }
}

/// The user's name and home directory from the password database.
fn passwd(uid: u32) -> Option<(String, Option<String>)> {
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: plain data filled by getpwuid_r, which writes only into `pw` and `buf`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: the fields point to NUL-terminated strings in `buf`.
    let s = |p: *const libc::c_char| {
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    Some((s(pw.pw_name), Some(s(pw.pw_dir))))
}

/// The user's groups (primary first), at most 256.
fn groups_of(name: &str, gid: u32) -> Vec<libc::gid_t> {
    let Ok(c) = CString::new(name) else {
        return vec![gid];
    };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
    let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return vec![gid];
    }
    groups.truncate(n.max(0) as usize);
    groups
}

/// The command, ready to spawn: joins the cgroup through `procs` (opened before the fork:
/// the child can open nothing safely) and becomes `user` before it runs.
pub fn command(
    argv: &[OsString],
    procs: &std::fs::File,
    user: Option<&User>,
) -> Result<tokio::process::Command> {
    let (prog, args) = argv.split_first().context("no command to run")?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args);
    let fd = procs.as_raw_fd();
    let user = user.cloned();
    if let Some(u) = &user {
        cmd.env("USER", &u.name).env("LOGNAME", &u.name);
        if let Some(h) = &u.home {
            cmd.env("HOME", h);
        }
    }
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (write, setgroups, setgid, setuid) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = &user {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) != 0
                    || libc::setgid(u.gid) != 0
                    || libc::setuid(u.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// The signals we pass on: those sent to us. Ctrl-C and Ctrl-\ from a terminal reach the
/// command by themselves (the terminal signals its whole foreground process group), so from
/// a terminal those two are not passed again.
pub fn forwarded() -> Vec<libc::c_int> {
    let mut sigs = vec![libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];
    if !std::io::stdin().is_terminal() {
        sigs.extend([libc::SIGINT, libc::SIGQUIT]);
    }
    sigs
}
