//! README.md's two commands are the ones `.ci/run` runs, verbatim.

mod common;

fn fenced_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        if line.trim() == "```sh" {
            in_sh = true;
        } else if line.trim() == "```" {
            in_sh = false;
        } else if in_sh && !line.trim().is_empty() {
            out.push(line.trim().to_string());
        }
    }
    out
}

#[test]
fn ci_runs_the_readme_setup_and_test_commands() {
    let root = common::workspace();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    let cmds = fenced_commands(&readme);
    assert_eq!(cmds.len(), 2, "README.md gives two commands: {cmds:?}");
    let setup = cmds[0]
        .split("&&")
        .next()
        .map(str::trim)
        .expect("setup part");
    let test = cmds[1].as_str();
    let ci_lines: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let setup_at = ci_lines.iter().position(|l| *l == setup);
    let test_at = ci_lines.iter().position(|l| *l == test);
    assert!(setup_at.is_some(), ".ci/run does not run {setup:?}");
    assert!(test_at.is_some(), ".ci/run does not run {test:?}");
    assert!(setup_at < test_at, ".ci/run must set up before testing");
    // The run half of the first command starts the host on the root manifest.
    assert!(cmds[0].contains("up --build"), "{}", cmds[0]);
}
