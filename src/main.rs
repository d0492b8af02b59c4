//! The `overlay-store` binary: a thin shell over the library (see `cli`).
//!
//! On glibc Linux the process starts at a C `main` rather than Rust's: most commands are
//! over in a millisecond or two, and std's start-up spends a tenth of that finding the
//! main thread's stack guard (glibc reads and parses `/proc/self/maps` for it) so that a
//! stack overflow prints a message instead of a plain SIGSEGV. What else std's start-up
//! does that matters here is done below: standard descriptors that are closed are opened
//! on `/dev/null` (so that no file we open becomes stdout), SIGPIPE ignored (a closed
//! pipe is an error the commands handle), panics caught (exit 101, as Rust's own `main`
//! exits), stdout flushed. Arguments still come through `std::env::args_os`: glibc hands
//! them to std before `main` runs (musl does not, hence glibc only).
#![cfg_attr(all(not(test), target_os = "linux", target_env = "gnu"), no_main)]

// Under the test harness nothing calls `cli::main`.
#[cfg_attr(test, allow(dead_code))]
mod cli;

#[cfg(all(not(test), target_os = "linux", target_env = "gnu"))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    open_closed_standard_descriptors();
    // SAFETY: installing SIG_IGN for SIGPIPE before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = std::panic::catch_unwind(cli::main).unwrap_or(101);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code.into()
}

#[cfg(not(all(not(test), target_os = "linux", target_env = "gnu")))]
fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main())
}

/// Opens `/dev/null` on each of descriptors 0, 1 and 2 that is closed, as std's
/// start-up does: otherwise the next file opened (a store object being written, say)
/// would take its number and receive what is printed.
#[cfg(all(not(test), target_os = "linux", target_env = "gnu"))]
fn open_closed_standard_descriptors() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: poll(2) on an array of three initialised pollfds; open(2) of a C string.
    // Descriptors are checked in order, so each open takes the lowest closed number.
    unsafe {
        if libc::poll(fds.as_mut_ptr(), 3, 0) < 0 {
            return;
        }
        for p in fds {
            if p.revents & libc::POLLNVAL != 0 && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != p.fd {
                libc::abort();
            }
        }
    }
}
