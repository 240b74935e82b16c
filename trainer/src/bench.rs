//! Training speed of one network: timed optimizer steps (forward, loss, backward, AdamW
//! update) on one fixed batch of real images, the figure compared with PyTorch on the
//! same network and batch (`benches/torch_train.py`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::device::TrainDevice;
use crate::model::ModelConfig;
use crate::training::OptimConfig;

/// Times `steps` training steps after `warmup` untimed ones, all on the batch `x`
/// (`[N, C, H, W]`, flattened) with labels `y`, with the optimizer `glimpse-train train`
/// builds from `optim` at its base learning rate, on `on`. Returns one duration per timed
/// step.
#[allow(clippy::too_many_arguments)]
pub fn training_steps(
    model: &ModelConfig,
    optim: &OptimConfig,
    on: &TrainDevice,
    x: Vec<f32>,
    shape: [usize; 4],
    y: Vec<i64>,
    warmup: usize,
    steps: usize,
) -> Result<Vec<Duration>> {
    ensure!(
        shape[0] >= 2,
        "a batch needs at least 2 images (batch norm)"
    );
    ensure!(
        x.len() == shape.iter().product::<usize>() && y.len() == shape[0],
        "expected {} values and {} labels for a {shape:?} batch, got {} and {}",
        shape.iter().product::<usize>(),
        shape[0],
        x.len(),
        y.len()
    );
    let device = on.autodiff();
    device.seed(42);
    let mut net = model.init(&device);
    let (lr, mut optimizer) = (optim.lr, optim.optimizer());
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let x = Tensor::<4>::from_data(TensorData::new(x, shape), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [shape[0]]), &device);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = loss_fn.forward(net.forward(x.clone()), y.clone());
        // Reading the loss waits for the whole step, as a training loop that logs it does.
        let l: f32 = loss.clone().into_scalar();
        ensure!(l.is_finite(), "training diverged at step {i} (loss {l})");
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optimizer.step(lr, net, grads);
        if i >= warmup {
            times.push(t0.elapsed());
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use crate::training::{Optimizer, Schedule};

    #[test]
    fn steps_are_timed_and_mismatched_batches_refused() {
        let cfg = ModelConfig::new(Arch::SmallCnn, 2, 1, [16, 16]).with_width(0.25);
        // Two classes: dark and bright images.
        let n = 4;
        let x: Vec<f32> = (0..n * 256)
            .map(|i| if i / 256 % 2 == 0 { -1.0 } else { 1.0 })
            .collect();
        let y = vec![0, 1, 0, 1];
        let optim = OptimConfig::new(Optimizer::Adamw, Schedule::Constant);
        let cpu = TrainDevice::open(crate::device::Accelerator::Cpu).unwrap();
        let t = training_steps(
            &cfg,
            &optim,
            &cpu,
            x.clone(),
            [n, 1, 16, 16],
            y.clone(),
            1,
            3,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|d| *d > Duration::ZERO));
        let err =
            training_steps(&cfg, &optim, &cpu, x, [n, 1, 16, 16], vec![0, 1], 0, 1).unwrap_err();
        assert!(err.to_string().contains("4 labels"), "{err}");
    }
}
