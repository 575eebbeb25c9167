use std::process::ExitCode;

// mimalloc, built without transparent huge pages: every request allocates
// and frees a store and its host state from several threads, a pattern under
// which glibc's arenas grow and trim; mimalloc's per-thread free lists keep
// that off the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: first statement of main, before any thread exists.
    unsafe { gantry::no_library_backtraces_unless_asked() };
    gantry::cli::main()
}
