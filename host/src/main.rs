use std::process::ExitCode;

// Every request allocates and frees a store, an instance and its host state
// from two or more threads; glibc's arenas grow and trim under that pattern
// (an mprotect, which takes the address-space lock, every few requests).
// mimalloc's per-thread free lists keep that off the request path. It is
// built without transparent huge pages (`no_thp`): with them its arena made
// 28 MB of an idle host resident instead of 4 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // wasmtime builds an error value for every store torn down with work
    // pending, and with RUST_BACKTRACE set each one captures a backtrace: a
    // few percent of every request. Panics keep their backtraces
    // (RUST_BACKTRACE); library error values get none unless asked for with
    // RUST_LIB_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first statement of main, before any thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    gantry::cli::main()
}
