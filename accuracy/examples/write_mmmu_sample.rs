//! Regenerates the code-drawn MMMU sample set.
//!
//! ```text
//! cargo run -p phi3v-accuracy --example write_mmmu_sample -- tests/fixtures/mmmu_sample
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fixtures/mmmu_sample".into());
    let files = phi3v_accuracy::sample::write_sample_set(std::path::Path::new(&dir))?;
    let mut total = 0;
    for f in &files {
        let n = std::fs::metadata(f)?.len();
        total += n;
        println!("{:>8}  {}", n, f.display());
    }
    println!("{total:>8}  total");
    Ok(())
}
