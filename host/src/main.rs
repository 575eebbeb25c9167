use std::process::ExitCode;

// mimalloc, asked the cheap way where that gives the alignment: see
// `gantry::allocator`.
#[global_allocator]
static ALLOCATOR: gantry::allocator::Allocator = gantry::allocator::Allocator;

fn main() -> ExitCode {
    // SAFETY: first statement of main, before any thread exists.
    unsafe { gantry::no_library_backtraces_unless_asked() };
    gantry::cli::main()
}
