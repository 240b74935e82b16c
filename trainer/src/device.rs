//! Where training runs: the CPU (burn's flex backend) or a GPU through wgpu (`--device gpu`,
//! in a build with the `gpu` feature).

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

/// The kind of device a run trains on (`--device`), saved in the training configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Accelerator {
    /// The CPU's cores (burn's flex backend: SIMD, rayon).
    #[default]
    Cpu,
    /// A GPU through wgpu: Vulkan, Metal or DX12 (needs a build with the `gpu` feature).
    Gpu,
}

/// Why `--device gpu` cannot train: each message says how to fall back.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device gpu: this glimpse-train was built without GPU support; rebuild it with the `gpu` feature (cargo build --release -p glimpse-trainer --features gpu), or train on the CPU with --device cpu")]
    NotBuilt,
    #[error("--device gpu: no GPU adapter found (wgpu sees no Vulkan, Metal, DX12 or OpenGL device; on Linux install the GPU's Vulkan driver, for example Debian's mesa-vulkan-drivers, and libvulkan1); train on the CPU with --device cpu")]
    NoAdapter,
}

/// An opened device: what a run's tensors live on, and its name for the log and report.
#[derive(Debug, Clone)]
pub struct TrainDevice {
    device: Device,
    name: String,
}

impl TrainDevice {
    /// The CPU, or the GPU adapter wgpu finds: a real card before a software renderer,
    /// which is taken with a warning (CI tests the path on one).
    pub fn open(kind: Accelerator) -> Result<Self, DeviceError> {
        match kind {
            Accelerator::Cpu => Ok(TrainDevice {
                device: Device::flex(),
                name: "cpu".into(),
            }),
            Accelerator::Gpu => open_gpu(),
        }
    }

    /// The device for evaluation: no autodiff.
    pub fn inference(&self) -> Device {
        self.device.clone()
    }

    /// The device for training: gradients recorded.
    pub fn autodiff(&self) -> Device {
        self.device.clone().autodiff()
    }

    /// `cpu`, or `gpu: ADAPTER` as wgpu names it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(not(feature = "gpu"))]
fn open_gpu() -> Result<TrainDevice, DeviceError> {
    Err(DeviceError::NotBuilt)
}

#[cfg(feature = "gpu")]
fn open_gpu() -> Result<TrainDevice, DeviceError> {
    use burn::tensor::DeviceType;
    let adapters: Vec<(Device, Option<burn::tensor::DeviceIdentity>)> =
        Device::enumerate(DeviceType::Wgpu)
            .iter()
            .map(|d| (d.clone(), d.identity()))
            .collect();
    let is_card = |id: &Option<burn::tensor::DeviceIdentity>| {
        id.as_ref().is_some_and(|i| i.physical.is_some())
    };
    let (device, identity) = adapters
        .iter()
        .find(|(_, id)| is_card(id))
        .or_else(|| adapters.first())
        .cloned()
        .ok_or(DeviceError::NoAdapter)?;
    let card = is_card(&identity);
    let adapter = identity.map_or_else(|| "unnamed adapter".into(), |i| i.name);
    // Once a run: the command line opens the device before the training does.
    static WARNED: std::sync::Once = std::sync::Once::new();
    if !card {
        WARNED.call_once(|| log::warn!(
            "--device gpu: the only adapter is {adapter}, a software renderer on the CPU: expect it to be slower than --device cpu"
        ));
    }
    Ok(TrainDevice {
        device,
        name: format!("gpu: {adapter}"),
    })
}
