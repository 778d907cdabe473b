//! Embeds `migrations/catalog` and `migrations/tenant` into the binary, so a deployed control
//! plane carries exactly the schema it was built with.

use std::{env, fmt::Write as _, fs, path::PathBuf};

fn embed(
    out: &mut String,
    constant: &str,
    dir: &PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "sql"));
    files.sort();
    writeln!(out, "pub(crate) const {constant}: &[(&str, &str)] = &[")?;
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or("migration file name is not UTF-8")?;
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            file.display().to_string()
        )?;
    }
    writeln!(out, "];")?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../migrations");
    let mut out = String::new();
    embed(&mut out, "CATALOG_MIGRATIONS", &root.join("catalog"))?;
    embed(&mut out, "TENANT_MIGRATIONS", &root.join("tenant"))?;
    fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("embedded_migrations.rs"),
        out,
    )?;
    Ok(())
}
