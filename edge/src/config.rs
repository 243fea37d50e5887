//! The `edge run` configuration: a TOML file (see `deploy/edge.example.toml`, which
//! documents every key), with defaults for everything, overridden by flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capture::budget::Budget;
use crate::capture::{LogConfig, PolicyConfig};
use crate::frame_source::SourceConfig;
use crate::gpio::GpioConfig;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{path}: {message}(see deploy/edge.example.toml for every key)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("config key {key}: {problem}")]
    Invalid {
        /// The key, e.g. `capture.band`.
        key: &'static str,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// Everything `edge run` can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// The model.
    pub model: ModelConfig,
    /// The frame source.
    pub source: SourceConfig,
    /// Which frames are kept.
    pub capture: PolicyConfig,
    /// Where and how captures are stored.
    pub storage: StorageConfig,
    /// Status LED and capture button.
    pub gpio: GpioConfig,
    /// Log lines.
    pub status: StatusConfig,
    /// The HTTP API and model delivery (off unless `listen` is set).
    pub api: crate::api::ApiConfig,
}

/// The `[model]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// ONNX file or its manifest (`.json`); unset: `$FDET_MODEL`, then the newest
    /// manifest in `./models`.
    pub path: Option<PathBuf>,
    /// Threads for inference (1 keeps the other cores for the camera and the API).
    pub threads: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { path: None, threads: 1 }
    }
}

/// The `[storage]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder of the capture log and images.
    pub data_dir: PathBuf,
    /// Longest wait before appended records are fsynced, ms (0 = every record).
    pub fsync_interval_ms: u64,
    /// Most bytes the captures may use.
    pub max_bytes: u64,
    /// Most captures kept.
    pub max_count: usize,
    /// Capture pauses when the file system has fewer free bytes than this.
    pub min_free_bytes: u64,
    /// JPEG quality of stored frames, 1-100.
    pub jpeg_quality: u8,
    /// Longer side of stored frames in pixels (larger frames are shrunk; 0 = keep).
    pub max_side: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("edge-data"),
            fsync_interval_ms: 1000,
            max_bytes: 2 << 30,
            max_count: 20_000,
            min_free_bytes: 200 << 20,
            jpeg_quality: 85,
            max_side: 1280,
        }
    }
}

impl StorageConfig {
    /// The capture log's settings.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            dir: self.data_dir.clone(),
            fsync_interval: std::time::Duration::from_millis(self.fsync_interval_ms),
            budget: Budget { max_bytes: self.max_bytes, max_count: self.max_count },
            min_free_bytes: self.min_free_bytes,
        }
    }
}

/// The `[status]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Seconds between periodic status lines (fps, inference, captures, disk).
    pub interval_s: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self { interval_s: 30 }
    }
}

impl EdgeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: EdgeConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that TOML types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        let [low, high] = self.capture.band;
        if !(0.0..=1.0).contains(&low) || !(0.0..=1.0).contains(&high) || low > high {
            return invalid(
                "capture.band",
                format!("[{low}, {high}] must be [low, high] in [0, 1]"),
            );
        }
        if !(0.0..=1.0).contains(&self.capture.confident_sample_rate) {
            let r = self.capture.confident_sample_rate;
            return invalid("capture.confident_sample_rate", format!("{r} is not in [0, 1]"));
        }
        if self.capture.duplicate_distance > 64 {
            let d = self.capture.duplicate_distance;
            return invalid("capture.duplicate_distance", format!("{d} bits: a hash has 64"));
        }
        if !(1..=100).contains(&self.storage.jpeg_quality) {
            let q = self.storage.jpeg_quality;
            return invalid("storage.jpeg_quality", format!("{q} is not in 1..=100"));
        }
        if self.storage.max_count == 0 || self.storage.max_bytes == 0 {
            return invalid("storage.max_count/max_bytes", "must be above zero".into());
        }
        if self.source.width == 0 || self.source.height == 0 {
            return invalid("source.width/height", "must be above zero".into());
        }
        if self.model.threads == 0 {
            return invalid("model.threads", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.example.toml");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_example_file_parses_and_names_every_key() {
        let text = example();
        let config = EdgeConfig::parse(&text, Path::new("edge.example.toml")).unwrap();
        // Every key the program knows appears (uncommented or commented) in the example.
        let full = toml::to_string(&EdgeConfig::default()).unwrap();
        for line in full.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(text.contains(&format!("{key} =")), "example lacks the key {key}");
        }
        assert_eq!(config.capture.band, [0.3, 0.7]);
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = EdgeConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, EdgeConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = EdgeConfig::parse("[capture]\nbnad = [0.1, 0.2]\n", Path::new("e.toml"));
        assert!(err.unwrap_err().to_string().contains("bnad"));
        let err = EdgeConfig::parse("[capture]\nband = [0.8, 0.2]\n", Path::new("e.toml"));
        assert!(err.unwrap_err().to_string().starts_with("config key capture.band"));
        let err = EdgeConfig::parse("[storage]\njpeg_quality = 0\n", Path::new("e.toml"));
        assert!(err.unwrap_err().to_string().contains("jpeg_quality"));
    }
}
