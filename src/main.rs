//! The `overlay-store` binary: a thin shell over the library (see `cli`).
//!
//! The process starts at a C `main` rather than Rust's: most commands are over in a
//! millisecond or two, and std's start-up spends a tenth of that finding the main
//! thread's stack guard (glibc reads and parses `/proc/self/maps` for it) so that a
//! stack overflow prints a message instead of a plain SIGSEGV. What else std's start-up
//! does that matters here is done below: SIGPIPE ignored (a closed pipe is an error the
//! commands handle), panics caught (exit 101, as Rust's own `main` exits), stdout
//! flushed. Arguments still come through `std::env::args_os` (glibc hands them to std
//! before `main` runs).
// (Unit tests keep the test harness's own `main`.)
#![cfg_attr(not(test), no_main)]

// Under the test harness nothing calls `cli::main`.
#[cfg_attr(test, allow(dead_code))]
mod cli;

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: installing SIG_IGN for SIGPIPE before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = std::panic::catch_unwind(cli::main).unwrap_or(101);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code.into()
}
