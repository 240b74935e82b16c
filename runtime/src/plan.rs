//! tract's optimized plan of an ONNX graph, built and run the one way glimpse does it
//! (the classifier, int8 calibration and transfer backbones): ops tract lacks named up
//! front, convolutions channel-last, and a panic inside tract turned into an error.

use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;
use tract_onnx::tract_core::ops::change_axes::AxisOp;

use crate::classifier::TRACT_VERSION;
use crate::error::{model_error, Error, Result};
use crate::onnx_file::OnnxFile;

/// How the callers of a plan lay out its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// As the model declares it.
    Declared,
    /// Channel-last, `[N, H, W, C]`, for a model that declares `[N, C, H, W]`: the plan
    /// takes the transpose in. tract computes convolutions channel-last, so a model fed
    /// as declared starts with a transpose of its input; fed this way, that transpose and
    /// the one put before the graph cancel out, and preprocessing writes each pixel's
    /// channels side by side (4.6 M of EfficientNet-Lite0's ARM instructions per image).
    ChannelLast,
}

/// A runnable plan for a batch-of-one input of a fixed shape.
#[derive(Clone)]
pub struct Plan {
    runnable: Arc<TypedRunnableModel>,
    /// The shape of each output, where tract knows it.
    output_shapes: Vec<Option<Vec<usize>>>,
}

impl Plan {
    /// Plans `proto` for an input of `shape`, fed as declared.
    pub fn new(proto: &pb::ModelProto, shape: [usize; 4]) -> Result<Plan> {
        guarded(|| finish(parse(proto)?, shape, Feed::Declared))
    }

    /// Plans the model of `file` for an input of the declared `shape`, fed as `feed`
    /// says, releasing the file's copy of the weights as soon as tract has its own (the
    /// optimizer makes another: without this a load's peak memory is three copies).
    pub fn for_file(file: &mut OnnxFile, shape: [usize; 4], feed: Feed) -> Result<Plan> {
        guarded(|| {
            let model = parse(&file.proto)?;
            file.release_weights();
            finish(model, shape, feed)
        })
    }

    /// The shape of each output, where it is fixed.
    pub fn output_shapes(&self) -> &[Option<Vec<usize>>] {
        &self.output_shapes
    }

    /// Runs the plan on one input; a failure (or a panic) inside tract is an
    /// `Error::Inference`.
    pub fn run(&self, input: Tensor) -> Result<TVec<TValue>> {
        guard_tract(|| self.runnable.run(tvec!(input.into())))
            .map_err(|what| {
                Error::Inference(format!(
                    "tract {TRACT_VERSION} failed while running the model ({what})"
                ))
            })?
            .map_err(|e| Error::Inference(format!("running the model: {e:#}")))
    }
}

/// What one node of the optimized plan computes with, for the nodes that carry a model's
/// arithmetic: matrix products (convolutions lowered to them included) and direct
/// convolutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The plan node's name; tract derives it from the ONNX node's.
    pub node: String,
    /// The tract op: `OptMatMul`, `QDepthWiseConv`, `DepthWiseConv`, ...
    pub op: String,
    /// tract-linalg's matrix-product kernels of an `OptMatMul`, one per size it picks
    /// between (empty for the other ops).
    pub mmm: Vec<String>,
    /// Whether it computes in integers (int8 operands, i32 accumulators).
    pub integer: bool,
}

impl Kernel {
    /// Whether this plan node came from the ONNX node `name` (tract keeps the name, or
    /// extends it after a dot for the nodes it splits one into).
    pub fn is_from(&self, name: &str) -> bool {
        self.node
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }
}

/// The convolution ops of tract that compute in place (no matrix product).
const DIRECT_CONV_OPS: &[&str] = &[
    "DepthWiseConv",
    "QDepthWiseConv",
    "BlockedConv",
    "DirectSpatialConv",
    "Conv",
];

impl Plan {
    /// The kernels of the plan, in its order.
    pub fn kernels(&self) -> Vec<Kernel> {
        let model = self.runnable.model();
        model
            .nodes()
            .iter()
            .filter_map(|node| kernel_of(model, node))
            .collect()
    }
}

fn kernel_of(model: &TypedModel, node: &TypedNode) -> Option<Kernel> {
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let (mmm, integer) = if let Some(mm) = node.op_as::<OptMatMul>() {
        let mut names: Vec<String> = mm.mmm.iter().map(|k| k.name().to_string()).collect();
        names.dedup();
        (names, mm.mmm.iter().any(|k| k.internal_type().is_integer()))
    } else if DIRECT_CONV_OPS.contains(&&*node.op.name()) {
        let input = node
            .inputs
            .first()
            .and_then(|i| model.outlet_fact(*i).ok())?;
        (vec![], input.datum_type.is_integer())
    } else {
        return None;
    };
    Some(Kernel {
        node: node.name.clone(),
        op: node.op.name().to_string(),
        mmm,
        integer,
    })
}

/// `f`, with a panic inside tract reported as an invalid graph.
///
/// tract is not written for hostile input: a malformed graph it does not expect may
/// panic inside it (`Classifier::new` checks for the cases known from fuzzing first).
fn guarded(f: impl FnOnce() -> Result<Plan>) -> Result<Plan> {
    guard_tract(f).map_err(|what| {
        model_error!("invalid ONNX graph: tract {TRACT_VERSION} failed on it ({what})")
    })?
}

/// tract's model of `proto`, every op of it implemented.
fn parse(proto: &pb::ModelProto) -> Result<InferenceModel> {
    let model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(|e| Error::model("invalid ONNX graph", e))?;
    check_implemented(&model, proto)?;
    Ok(model)
}

/// Sets the input shape, optimizes and prepares the model to run.
fn finish(model: InferenceModel, shape: [usize; 4], feed: Feed) -> Result<Plan> {
    let model = model
        .with_input_fact(0, f32::fact(shape).into())
        .map_err(|e| Error::model("setting the input shape", e))?;
    let typed = optimize(model, feed)?;
    let output_shapes = (0..typed.outputs.len())
        .map(|i| {
            let fact = typed.output_fact(i).ok()?;
            fact.shape.as_concrete().map(<[usize]>::to_vec)
        })
        .collect();
    let runnable = typed
        .into_runnable()
        .map_err(|e| Error::model("preparing the model to run", e))?;
    Ok(Plan {
        runnable,
        output_shapes,
    })
}

/// tract parses unknown ops into placeholders and only fails later with a generic
/// message; this names them up front.
fn check_implemented(model: &InferenceModel, proto: &pb::ModelProto) -> Result<()> {
    let unsupported: Vec<String> = model
        .nodes()
        .iter()
        .filter(|n| n.op.name().starts_with("Unimplemented"))
        .map(|n| {
            let op = proto
                .graph
                .iter()
                .flat_map(|g| &g.node)
                .find(|p| p.name == n.name)
                .map_or("?", |p| p.op_type.as_str());
            format!("{op} (node {:?})", n.name)
        })
        .collect();
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(model_error!(
            "unsupported ONNX op: {} is not implemented by tract {TRACT_VERSION}",
            unsupported.join(", ")
        ))
    }
}

/// Analyses and optimizes a model whose input shape is set, for running on this CPU, fed
/// as `feed` says.
///
/// Convolutions are moved channel-last first: tract's depthwise kernels vectorise over
/// channels there (NEON on aarch64), and the channel moves between layers cancel out,
/// leaving one at the input, unless the input is fed channel-last. EfficientNet-Lite0 ran
/// ~20% faster for it on x86_64.
pub fn optimize(model: InferenceModel, feed: Feed) -> Result<TypedModel> {
    let mut typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| Error::model("analysing the ONNX graph", e))?;
    if feed == Feed::ChannelLast {
        feed_channel_last(&mut typed)
            .map_err(|e| Error::model("taking the input channel-last", e))?;
    }
    let nhwc = tract_onnx::tract_core::transform::get_transform("conv_nhwc")
        .ok()
        .flatten()
        .ok_or_else(|| model_error!("tract {TRACT_VERSION} has no conv_nhwc transform"))?;
    nhwc.transform(&mut typed)
        .map_err(|e| Error::model("moving convolutions channel-last", e))?;
    fold_constants(&mut typed).map_err(|e| Error::model("computing constant weights", e))?;
    typed
        .into_optimized()
        .map_err(|e| Error::model("optimizing the ONNX graph", e))
}

/// Replaces the `[N, C, H, W]` input of `model` by an `[N, H, W, C]` one, transposed back
/// to channel-first before the graph: tract's channel-last transform then cancels it
/// against the move it puts before the first convolution.
fn feed_channel_last(model: &mut TypedModel) -> TractResult<()> {
    let declared = model.input_outlets()?[0];
    let fact = model.outlet_fact(declared)?.clone();
    let Some(&[n, c, h, w]) = fact.shape.as_concrete() else {
        bail!("expected a [N, C, H, W] input, got {:?}", fact.shape);
    };
    let name = std::mem::take(&mut model.node_mut(declared.node).name);
    let successors = model.outlet_successors(declared).to_vec();
    let fed = model.add_source(&name, fact.datum_type.fact([n, h, w, c]))?;
    let moved = model.wire_node(format!("{name}.channel_first"), AxisOp::Move(3, 1), &[fed])?[0];
    for inlet in successors {
        model.add_edge(moved, inlet)?;
    }
    model.inputs = vec![fed];
    model.compact()
}

/// Computes, once at load, every value that depends on constants only.
///
/// tract leaves such a computation to every run when its result outgrows its inputs past
/// 4 MB (it keeps int8 weights small in memory): EfficientNet-Lite0's int8 classifier
/// weights (1000x1280) were cast to float, scaled and packed at every inference, ~3.8 M
/// ARM instructions per image. A classifier's weights are worth their float size once.
fn fold_constants(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        if let Some(patch) = folded(model, id)? {
            patch.apply(model)?;
        }
    }
    model.compact()
}

/// A patch replacing node `id` by the constants it computes, if all its inputs are known.
fn folded(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let node = model.node(id);
    let facts = model.node_input_facts(id)?;
    if node.inputs.is_empty() || facts.iter().any(|f| f.konst.is_none()) {
        return Ok(None);
    }
    let inputs = facts
        .iter()
        .map(|f| f.konst.clone().unwrap().into_tvalue())
        .collect();
    let Some(outputs) = node.op.eval_out_of_plan(inputs)? else {
        return Ok(None);
    };
    let mut patch = TypedModelPatch::default();
    for (slot, value) in outputs.into_iter().enumerate() {
        let wire = patch.add_const(
            format!("{}.folded.{slot}", node.name),
            value.into_arc_tensor(),
        )?;
        patch.shunt_outside(model, OutletId::new(id, slot), wire)?;
    }
    Ok(Some(patch))
}

thread_local! {
    static IN_TRACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a call into tract), turning a panic inside it into `Err(message)`: tract
/// panics on some malformed graphs instead of returning an error, and a bad model file
/// must be reported as such, not crash the program or print a panic report. The panic
/// hook installed on first use stays silent for these panics only and hands every other
/// panic to the hook that was there before.
fn guard_tract<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TRACT.with(|g| g.get()) {
                previous(info)
            }
        }));
    });
    let was = IN_TRACT.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_TRACT.with(|g| g.set(was));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::internal::Approximation;
    use tract_onnx::tract_core::ops::{cast::cast, einsum::EinSum, math::mul};

    /// int8 weights dequantized by a `Cast` and a `Mul` (what an ONNX `DequantizeLinear` of
    /// a constant becomes): computed once by `fold_constants`, with the same product.
    #[test]
    fn constant_weights_are_computed_once_at_load() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3]))?;
        let w = model.add_const(
            "w.int8",
            tensor2(&[[1i8, -2, 3, 4], [-5, 6, 7, -8], [9, 10, -11, 12]]),
        )?;
        let w = model.wire_node("w.cast", cast(f32::datum_type()), &[w])?[0];
        let scale = model.add_const("w.scale", tensor2(&[[0.5f32]]))?;
        let w = model.wire_node("w.dequantized", mul(), &[w, scale])?[0];
        let einsum = EinSum::new("ik,kj->ij".parse()?, f32::datum_type());
        let y = model.wire_node("y", einsum, &[x, w])?;
        model.select_output_outlets(&y)?;
        let input = tensor2(&[[1f32, 2., 3.], [-1., 0.5, 2.]]);
        let run = |m: &TypedModel| -> TractResult<Tensor> {
            let out = m
                .clone()
                .into_runnable()?
                .run(tvec!(input.clone().into_tvalue()))?;
            Ok(out[0].clone().into_tensor())
        };
        let before = run(&model)?;
        fold_constants(&mut model)?;
        let ops: Vec<String> = model
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        assert_eq!(ops.iter().filter(|op| *op == "Const").count(), 1, "{ops:?}");
        assert!(
            !ops.iter()
                .any(|op| op.contains("Cast") || op.contains("Mul")),
            "{ops:?}"
        );
        run(&model)?.close_enough(&before, Approximation::Exact)
    }
}
