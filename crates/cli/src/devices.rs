//! `--devices` (`braid bench`, `braid serve`): which devices of the `--device` backend one engine
//! drives, and loading the model once on each.
//!
//! - `all`: every visible CUDA GPU (within `CUDA_VISIBLE_DEVICES`); on the CPU and wgpu, the one device.
//! - `0,1,…`: those GPUs (`--device cuda`); with `--device cpu`, that many separate CPU runtimes
//!   (`cpu:0`, `cpu:1`, … — each its own runtime, allocator, stream pool and copy of the weights:
//!   how the engine's multi-device placement and failover are exercised without GPUs). wgpu drives
//!   one adapter: only `0` or `all`.
//! - Unset: `braid serve` drives every visible GPU when `--device` is `auto` and a CUDA GPU is found;
//!   every other case (an explicit `--device cuda:N`, `braid bench`) is the one device `--device`
//!   names.
//!
//! Devices are named `cuda:N`, `cpu:N` or `wgpu:0` in reports, `/health` and metric labels. Every
//! bad combination is an error saying what was wrong and what is allowed; nothing here panics.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Result};
use braid_cuda::CudaDevice;
use braid_engine::EngineDevice;
use braid_model::load::{DeviceChoice, Embedder};

/// What `--devices` accepts, for messages.
pub const DEVICES_ALLOWED: &str =
    "`all` or a comma-separated list of device numbers such as `0,1` \
     (GPU ordinals with --device cuda; with --device cpu, that many CPU runtimes)";

/// The most devices one engine drives.
const MAX_DEVICES: usize = 64;

/// A parsed `--devices` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceList {
    /// Every visible device of the backend.
    All,
    /// These device numbers, in this order, each once.
    Numbers(Vec<usize>),
}

impl FromStr for DeviceList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("--devices {text:?}: {why}; expected {DEVICES_ALLOWED}");
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let mut numbers = Vec::new();
        for part in trimmed.split(',') {
            let part = part.trim();
            let number: usize = part
                .parse()
                .map_err(|_| bad(format!("{part:?} is not a device number")))?;
            if numbers.contains(&number) {
                return Err(bad(format!("device {number} is named twice")));
            }
            if number >= MAX_DEVICES {
                return Err(bad(format!("device numbers go up to {}", MAX_DEVICES - 1)));
            }
            numbers.push(number);
        }
        Ok(Self::Numbers(numbers))
    }
}

/// The devices to load: each one's name and where `braid_model::load` puts it.
pub fn plan(
    device: DeviceChoice,
    devices: Option<&DeviceList>,
    every_gpu_by_default: bool,
) -> Result<Vec<(String, DeviceChoice)>> {
    let gpus = CudaDevice::device_count;
    let backend = match device {
        DeviceChoice::Auto if gpus() > 0 => DeviceChoice::Cuda { ordinal: 0 },
        other => other,
    };
    let numbers = match (backend, devices) {
        (DeviceChoice::Cuda { .. }, None)
            if every_gpu_by_default && device == DeviceChoice::Auto =>
        {
            (0..gpus()).collect()
        }
        (DeviceChoice::Cuda { ordinal }, None) => vec![ordinal],
        (DeviceChoice::Cuda { ordinal }, Some(_)) if ordinal != 0 => bail!(
            "--device cuda:{ordinal} and --devices both name GPUs: give --device cuda with \
             --devices (e.g. --devices {ordinal})"
        ),
        (DeviceChoice::Cuda { .. }, Some(DeviceList::All)) => {
            let count = gpus();
            if count == 0 {
                bail!("--devices all: no CUDA GPU is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)");
            }
            (0..count).collect()
        }
        (DeviceChoice::Cuda { .. }, Some(DeviceList::Numbers(numbers))) => {
            let count = gpus();
            if count == 0 {
                bail!("--devices: no CUDA GPU is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)");
            }
            if let Some(missing) = numbers.iter().find(|&&n| n >= count) {
                bail!(
                    "--devices: GPU {missing} does not exist: {count} CUDA GPU(s) are visible \
                     (ordinals 0 to {})",
                    count - 1
                );
            }
            numbers.clone()
        }
        (_, None | Some(DeviceList::All)) => vec![0],
        (DeviceChoice::Cpu, Some(DeviceList::Numbers(numbers))) => numbers.clone(),
        (DeviceChoice::Wgpu, Some(DeviceList::Numbers(numbers))) if numbers[..] == [0] => vec![0],
        (DeviceChoice::Wgpu, Some(DeviceList::Numbers(_))) => {
            bail!("--devices: wgpu drives one adapter (BRAID_WGPU_ADAPTER picks it): give 0 or all")
        }
        (_, Some(DeviceList::Numbers(_))) => bail!(
            "--devices with --device auto and no CUDA GPU found: give --device cpu (several CPU \
             runtimes, for testing) or --device cuda"
        ),
    };
    Ok(numbers
        .into_iter()
        .map(|n| match backend {
            DeviceChoice::Cuda { .. } => (format!("cuda:{n}"), DeviceChoice::Cuda { ordinal: n }),
            DeviceChoice::Cpu => (format!("cpu:{n}"), DeviceChoice::Cpu),
            DeviceChoice::Wgpu => ("wgpu:0".to_string(), DeviceChoice::Wgpu),
            // Auto without a CUDA GPU: one device, named once loaded (wgpu or the CPU).
            DeviceChoice::Auto => (String::new(), DeviceChoice::Auto),
        })
        .collect())
}

/// Loads the model on every planned device with `load` (one copy of the weights each).
pub fn load_all(
    planned: Vec<(String, DeviceChoice)>,
    mut load: impl FnMut(DeviceChoice) -> Result<Arc<dyn Embedder>>,
) -> Result<Vec<EngineDevice>> {
    planned
        .into_iter()
        .map(|(name, choice)| {
            let model = load(choice)?;
            let name = if name.is_empty() {
                format!("{}:0", model.backend())
            } else {
                name
            };
            Ok(EngineDevice::new(name, model))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_ones_say_why() {
        assert_eq!("all".parse::<DeviceList>(), Ok(DeviceList::All));
        assert_eq!(
            " 0, 2 ".parse::<DeviceList>(),
            Ok(DeviceList::Numbers(vec![0, 2]))
        );
        for (text, why) in [
            ("0,0", "named twice"),
            ("x", "not a device number"),
            ("", "not a device number"),
            ("-1", "not a device number"),
            ("64", "go up to 63"),
        ] {
            let error = text.parse::<DeviceList>().unwrap_err();
            assert!(
                error.contains(why) && error.contains("expected"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn cpu_runtimes_and_the_one_device_cases() {
        let cpu = |list: Option<DeviceList>| plan(DeviceChoice::Cpu, list.as_ref(), true).unwrap();
        assert_eq!(
            cpu(Some(DeviceList::Numbers(vec![0, 1]))),
            vec![
                ("cpu:0".to_string(), DeviceChoice::Cpu),
                ("cpu:1".to_string(), DeviceChoice::Cpu)
            ]
        );
        assert_eq!(cpu(None).len(), 1);
        assert_eq!(cpu(Some(DeviceList::All)).len(), 1);
        let wgpu = plan(
            DeviceChoice::Wgpu,
            Some(&DeviceList::Numbers(vec![0, 1])),
            false,
        );
        assert!(wgpu.unwrap_err().to_string().contains("one adapter"));
        let conflict = plan(
            DeviceChoice::Cuda { ordinal: 3 },
            Some(&DeviceList::All),
            false,
        );
        assert!(conflict
            .unwrap_err()
            .to_string()
            .contains("--device cuda:3"));
        assert_eq!(
            plan(DeviceChoice::Cuda { ordinal: 2 }, None, true).unwrap(),
            vec![("cuda:2".to_string(), DeviceChoice::Cuda { ordinal: 2 })]
        );
    }

    #[test]
    fn gpus_that_are_not_there_are_refused() {
        if CudaDevice::device_count() > 0 {
            return;
        }
        let error = plan(
            DeviceChoice::Cuda { ordinal: 0 },
            Some(&DeviceList::Numbers(vec![0, 1])),
            false,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no CUDA GPU is visible"),
            "{error}"
        );
        let error = plan(
            DeviceChoice::Cuda { ordinal: 0 },
            Some(&DeviceList::All),
            false,
        );
        assert!(error
            .unwrap_err()
            .to_string()
            .contains("no CUDA GPU is visible"));
    }
}
