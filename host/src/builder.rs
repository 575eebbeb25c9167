//! `gantry up --build`: runs each component's `[component.<id>.build]`
//! command in its `workdir`, in manifest order, stopping at the first failure.

use anyhow::{Context as _, bail};
use std::process::Command;

use crate::manifest::{App, BuildCommand};

pub fn build_all(app: &App) -> anyhow::Result<()> {
    for (id, spec) in &app.components {
        let Some(build) = &spec.build else {
            continue;
        };
        let commands = match &build.command {
            BuildCommand::Shell(c) => vec![c.clone()],
            BuildCommand::Sequence(cs) => cs.clone(),
        };
        for command in commands {
            println!("Building component {id} with `{command}`");
            let status = Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(&build.workdir)
                .status()
                .with_context(|| format!("cannot run the build command of component {id}"))?;
            if !status.success() {
                bail!(
                    "build of component {id} failed ({status}): `{command}` in {}",
                    build.workdir.display()
                );
            }
        }
    }
    println!("Finished building all Spin components");
    Ok(())
}
