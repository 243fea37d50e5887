//! `host average`: the mean of several checkpoints of one detector, weight by weight.
//!
//! Checkpoints taken a few epochs apart on the same run sit near each other in weight space;
//! their mean lands between them, where the boxes are often better than at either end.
//! The shipped model is such a mean (how it was chosen, and its figures: README).
//!
//! BatchNorm statistics are averaged like the weights instead of being measured again on
//! the data. That is sound only for checkpoints of one run: the mean of two unrelated
//! models' statistics describes neither, so average only checkpoints that share a start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tch::{nn, Device};

use crate::model::{Detector, HeadConfig};

/// Command-line arguments of `host average`.
#[derive(Debug, Clone, clap::Args)]
pub struct AverageArgs {
    /// Checkpoints to average (`runs/<run>/best.safetensors`, `last.safetensors`, ...).
    #[arg(required = true, num_args = 2..)]
    pub checkpoints: Vec<PathBuf>,
    /// Where to write the averaged checkpoint.
    #[arg(long)]
    pub out: PathBuf,
}

/// Entry point of `host average`.
pub fn run(args: AverageArgs) -> Result<()> {
    let vs = average(&args.checkpoints)?;
    crate::train::save_atomic(&vs, &args.out)?;
    tracing::info!(
        checkpoints = args.checkpoints.len(),
        out = %args.out.display(),
        "averaged checkpoint written"
    );
    Ok(())
}

/// The detector whose every variable (weights and BatchNorm statistics) is the mean of
/// that variable in `checkpoints`.
pub fn average(checkpoints: &[PathBuf]) -> Result<nn::VarStore> {
    if checkpoints.is_empty() {
        bail!("no checkpoint to average");
    }
    let sum = load(&checkpoints[0])?;
    for path in &checkpoints[1..] {
        let next = load(path)?;
        let theirs = next.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, mut mine) in sum.variables() {
                // Both stores were built by `Detector::new`, so every name is in both. The
                // in-place ops also return an alias of the tensor, which is not needed.
                let _ = mine.f_add_(&theirs[&name])?;
            }
            Ok(())
        })?;
    }

    let n = checkpoints.len() as f64;
    tch::no_grad(|| -> Result<()> {
        for (_, mut v) in sum.variables() {
            let _ = v.f_div_scalar_(n)?;
        }
        Ok(())
    })?;
    Ok(sum)
}

/// A detector loaded from `path`; the load fails, naming the file, when a variable is
/// missing or has another shape (a checkpoint of some other model).
fn load(path: &Path) -> Result<nn::VarStore> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = Detector::new(&vs.root(), HeadConfig { dropout: 0.0 });
    crate::model::load_checkpoint(&vs, path)?;
    Ok(vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(dir: &Path, name: &str, value: f64) -> PathBuf {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = Detector::new(&vs.root(), HeadConfig { dropout: 0.0 });
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.fill_(value);
            }
        });
        let path = dir.join(name);
        vs.save(&path).unwrap();
        path
    }

    #[test]
    fn every_variable_is_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        let a = filled(dir.path(), "a.safetensors", 1.0);
        let b = filled(dir.path(), "b.safetensors", 2.0);
        let c = filled(dir.path(), "c.safetensors", 6.0);

        let vs = average(&[a, b, c]).unwrap();

        let vars = vs.variables();
        assert!(vars.len() > 200, "only {} variables", vars.len());
        for (name, v) in vars {
            let (lo, hi) = (v.min().double_value(&[]), v.max().double_value(&[]));
            assert!((lo - 3.0).abs() < 1e-6 && (hi - 3.0).abs() < 1e-6, "{name}: {lo}..{hi}");
        }
    }

    #[test]
    fn a_checkpoint_of_another_model_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = filled(dir.path(), "a.safetensors", 1.0);
        let other = dir.path().join("other.safetensors");
        let stray = tch::Tensor::zeros([3], tch::kind::FLOAT_CPU);
        tch::Tensor::write_safetensors(&[("w", stray)], &other).unwrap();

        let err = average(&[a, other]).unwrap_err();

        assert!(format!("{err:#}").contains("other.safetensors"), "{err:#}");
    }
}
