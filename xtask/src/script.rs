//! Stand-in programs for tests: shell scripts written so that running them at once is safe.
//!
//! A file this process opened for writing is inherited by every child another test thread
//! forks meanwhile, until that child execs; exec'ing the file in that window fails with
//! ETXTBSY ("Text file busy"). So the script is written by a short-lived `sh` of its own:
//! no descriptor of it ever exists in this process.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

/// Writes `#!/bin/sh` and `body` to `path`, mode 0755.
pub fn write_executable(path: &Path, body: &str) {
    let mut sh = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting sh to write a stand-in script");
    let mut stdin = sh.stdin.take().expect("piped");
    write!(stdin, "#!/bin/sh\n{body}\n").expect("writing the script");
    drop(stdin);
    let status = sh.wait().expect("waiting for sh");
    assert!(status.success(), "writing {}: {status}", path.display());
}
