//! The CONDITIONING nodes, as ComfyUI's (`nodes.py`, Comfy-Org/ComfyUI @
//! 311c01406130b2acbe8ab291043502de26cf3871): ConditioningCombine, ConditioningConcat,
//! ConditioningAverage, ConditioningSetArea, ConditioningSetAreaPercentage,
//! ConditioningSetAreaStrength, ConditioningSetTimestepRange, ConditioningZeroOut, ConditioningSetMask.
//! A conditioning is a list of entries (see [`crate::payload::Conditioning`]); these
//! nodes join lists, change every entry's options, or compute new text tensors.

use std::sync::Arc;

use gpu::ops::layout::concat;
use graph::Registry;
use graph::node::{NodeError, RunContext, err};
use graph::registry::DuplicateKind;
use graph::{Mask, PortType, Value};

use crate::image_nodes::MAX_RESOLUTION;
use crate::payload::{CondArea, CondEntry, CondMask, Conditioning};
use crate::runtime;

pub fn register(reg: &mut Registry) -> Result<(), DuplicateKind> {
    reg.register(Arc::new(ConditioningCombine::new()))?;
    reg.register(Arc::new(ConditioningConcat::new()))?;
    reg.register(Arc::new(ConditioningAverage::new()))?;
    reg.register(Arc::new(ConditioningSetArea::new()))?;
    reg.register(Arc::new(ConditioningSetAreaPercentage::new()))?;
    reg.register(Arc::new(ConditioningSetAreaStrength::new()))?;
    reg.register(Arc::new(ConditioningSetTimestepRange::new()))?;
    reg.register(Arc::new(ConditioningZeroOut::new()))?;
    reg.register(Arc::new(ConditioningSetMask::new()))?;
    Ok(())
}

/// A node kind in the "conditioning" category whose one output is the CONDITIONING `$run(ctx, fields)` makes.
macro_rules! conditioning_kind {
    ($name:ident, $kind:literal, $doc:literal, $fields:ident, $out:literal, $out_doc:literal, $run:expr) => {
        node_kind!($name, $kind, "conditioning", $doc, $fields, [($out, Conditioning, $out_doc)], |ctx, f| {
            let run: fn(&mut RunContext<'_>, $fields) -> Result<Conditioning, NodeError> = $run;
            Ok(vec![Value::payload(run(ctx, f)?)])
        });
    };
}

graph::node_fields! {
    struct CombineFields {
        conditioning_1: Arc<Conditioning> = input(PortType::Conditioning, "The first conditioning."),
        conditioning_2: Arc<Conditioning> = input(PortType::Conditioning, "The second conditioning."),
    }
}

conditioning_kind!(
    ConditioningCombine,
    "ConditioningCombine",
    "Both conditionings as one list: the sampler runs each over its own area and averages them.",
    CombineFields,
    "conditioning",
    "The entries of both.",
    |_, f| {
        let mut c = (*f.conditioning_1).clone();
        c.entries.extend(f.conditioning_2.entries.iter().cloned());
        Ok(c)
    }
);

graph::node_fields! {
    struct ConcatFields {
        conditioning_to: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to extend."),
        conditioning_from: Arc<Conditioning> = input(PortType::Conditioning, "Whose first entry's tokens are appended."),
    }
}

/// The first entry of `from`, warning (as ComfyUI does) when the rest are ignored.
fn first_of<'c>(ctx: &RunContext<'_>, from: &'c Conditioning, input: &str) -> Result<&'c CondEntry, NodeError> {
    if from.entries.len() > 1 {
        ctx.progress.message(&format!(
            "warning: node {:?}, input {input:?}: {} entries; only the first is used",
            ctx.node_id,
            from.entries.len()
        ));
    }
    from.entries.first().ok_or_else(|| err(format!("input {input:?}: an empty conditioning")))
}

conditioning_kind!(
    ConditioningConcat,
    "ConditioningConcat",
    "Appends the tokens of conditioning_from to each entry of conditioning_to (one longer prompt).",
    ConcatFields,
    "conditioning",
    "conditioning_to with the tokens appended.",
    |ctx, f| {
        let from = first_of(ctx, &f.conditioning_from, "conditioning_from")?.cond.clone();
        let gpu = runtime::gpu()?;
        let mut out = (*f.conditioning_to).clone();
        for e in &mut out.entries {
            let from = gpu::ops::cast::cast(gpu, &from, e.cond.dtype()).map_err(err)?;
            e.cond = concat(gpu, &[&e.cond, &from], 1).map_err(|x| err(format!("the two texts do not join: {x}")))?;
        }
        Ok(out)
    }
);

graph::node_fields! {
    struct AverageFields {
        conditioning_to: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning weighted by the strength."),
        conditioning_from: Arc<Conditioning> = input(PortType::Conditioning, "Weighted by 1 - strength (its first entry)."),
        conditioning_to_strength: f64 = float(0.0, 1.0, 1.0, "Weight of conditioning_to: 1 keeps it, 0 gives conditioning_from."),
    }
}

conditioning_kind!(
    ConditioningAverage,
    "ConditioningAverage",
    "Blends two prompts' encodings: to * strength + from * (1 - strength), token by token.",
    AverageFields,
    "conditioning",
    "The blend, with conditioning_to's options.",
    |ctx, f| {
        let gpu = runtime::gpu()?;
        let from = first_of(ctx, &f.conditioning_from, "conditioning_from")?;
        let from_shape = from.cond.shape().to_vec();
        let from_v = gpu.download(&from.cond).map_err(err)?;
        let mut out = (*f.conditioning_to).clone();
        for e in &mut out.entries {
            let shape = e.cond.shape().to_vec();
            let t1 = gpu.download(&e.cond).map_err(err)?;
            let blended = average(&t1, &shape, &from_v, &from_shape, f.conditioning_to_strength)?;
            e.cond = gpu.upload(&blended, &shape, e.cond.dtype()).map_err(err)?;
        }
        Ok(out)
    }
);

/// ComfyUI's ConditioningAverage on `[1, L, C]` tensors in f32: `from` cut or zero-padded to `to`'s length,
/// then `to * s + from * (1 - s)`, each product rounded to f32 as PyTorch's scalar multiplications are.
pub fn average(
    to: &[f32],
    to_shape: &[usize],
    from: &[f32],
    from_shape: &[usize],
    s: f64,
) -> Result<Vec<f32>, NodeError> {
    let (&[1, lt, c], &[1, lf, cf]) = (to_shape, from_shape) else {
        return Err(err(format!(
            "conditionings of shapes {to_shape:?} and {from_shape:?}: expected [1, tokens, width]"
        )));
    };
    if c != cf {
        return Err(err(format!(
            "a text encoding {c} wide blended with one {cf} wide: they come from different models"
        )));
    }
    let (a, b) = (s as f32, (1.0 - s) as f32);
    Ok((0..lt * c)
        .map(|i| {
            let t0 = if i / c < lf { from[i] } else { 0.0 };
            to[i] * a + t0 * b
        })
        .collect())
}

/// Every entry placed in `area` with `strength` (ComfyUI's ConditioningSetArea and SetAreaPercentage).
fn with_area(c: &Conditioning, area: CondArea, strength: f64) -> Conditioning {
    c.map_entries(|e| {
        e.area = Some(area);
        e.strength = strength;
        // ComfyUI sets set_area_to_bounds False: an earlier ConditioningSetMask's "mask bounds" no longer applies.
        if let Some(m) = &mut e.mask {
            m.to_bounds = false;
        }
    })
}

graph::node_fields! {
    struct SetAreaFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to place."),
        width: usize = int(64, MAX_RESOLUTION, 64, "Area width in pixels (used in steps of 8)."),
        height: usize = int(64, MAX_RESOLUTION, 64, "Area height in pixels (used in steps of 8)."),
        x: usize = int(0, MAX_RESOLUTION, 0, "Left edge in pixels (used in steps of 8)."),
        y: usize = int(0, MAX_RESOLUTION, 0, "Top edge in pixels (used in steps of 8)."),
        strength: f64 = float(0.0, 10.0, 1.0, "Weight against the other conditionings where they overlap."),
    }
}

conditioning_kind!(
    ConditioningSetArea,
    "ConditioningSetArea",
    "Limits each entry to a rectangle of the picture (area composition), with a weight.",
    SetAreaFields,
    "conditioning",
    "The conditioning with its area.",
    |_, f| {
        let area = CondArea::Latent { h: f.height / 8, w: f.width / 8, y: f.y / 8, x: f.x / 8 };
        Ok(with_area(&f.conditioning, area, f.strength))
    }
);

graph::node_fields! {
    struct SetAreaPercentFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to place."),
        width: f64 = float(0.0, 1.0, 1.0, "Area width as a fraction of the picture's."),
        height: f64 = float(0.0, 1.0, 1.0, "Area height as a fraction of the picture's."),
        x: f64 = float(0.0, 1.0, 0.0, "Left edge as a fraction of the picture's width."),
        y: f64 = float(0.0, 1.0, 0.0, "Top edge as a fraction of the picture's height."),
        strength: f64 = float(0.0, 10.0, 1.0, "Weight against the other conditionings where they overlap."),
    }
}

conditioning_kind!(
    ConditioningSetAreaPercentage,
    "ConditioningSetAreaPercentage",
    "Limits each entry to a rectangle given as fractions of the picture, with a weight.",
    SetAreaPercentFields,
    "conditioning",
    "The conditioning with its area.",
    |_, f| {
        let area = CondArea::Percent { h: f.height, w: f.width, y: f.y, x: f.x };
        Ok(with_area(&f.conditioning, area, f.strength))
    }
);

graph::node_fields! {
    struct SetStrengthFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to weigh."),
        strength: f64 = float(0.0, 10.0, 1.0, "Weight against the other conditionings where they overlap."),
    }
}

conditioning_kind!(
    ConditioningSetAreaStrength,
    "ConditioningSetAreaStrength",
    "Sets each entry's weight against the other conditionings where they overlap.",
    SetStrengthFields,
    "conditioning",
    "The conditioning with its strength.",
    |_, f| Ok(f.conditioning.map_entries(|e| e.strength = f.strength))
);

graph::node_fields! {
    struct TimestepRangeFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to limit."),
        start: f64 = float(0.0, 1.0, 0.0, "Where in the schedule it starts applying (0 = first step)."),
        end: f64 = float(0.0, 1.0, 1.0, "Where it stops (1 = last step)."),
    }
}

conditioning_kind!(
    ConditioningSetTimestepRange,
    "ConditioningSetTimestepRange",
    "Applies each entry only during part of the sampling schedule (e.g. a prompt for the first half).",
    TimestepRangeFields,
    "conditioning",
    "The conditioning with its range.",
    |_, f| Ok(f.conditioning.map_entries(|e| e.range = Some((f.start, f.end))))
);

graph::node_fields! {
    struct ZeroOutFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to blank."),
    }
}

conditioning_kind!(
    ConditioningZeroOut,
    "ConditioningZeroOut",
    "Each entry's text encoding replaced by zeros (an empty negative that is not the empty prompt).",
    ZeroOutFields,
    "conditioning",
    "The conditioning with zero encodings.",
    |_, f| {
        let gpu = runtime::gpu()?;
        let mut out = (*f.conditioning).clone();
        for e in &mut out.entries {
            let n: usize = e.cond.shape().iter().product();
            e.cond = gpu.upload(&vec![0.0; n], e.cond.shape(), e.cond.dtype()).map_err(err)?;
        }
        Ok(out)
    }
);

graph::node_fields! {
    struct SetMaskFields {
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to place."),
        mask: Arc<Mask> = input(PortType::Mask, "Where it applies (resized to the latent when sampling)."),
        strength: f64 = float(0.0, 10.0, 1.0, "Multiplies the mask: the weight against other conditionings."),
        set_cond_area: String = choice(&["default", "mask bounds"], "default",
            "\"mask bounds\": run the model on the mask's bounding box only (as an area)."),
    }
}

conditioning_kind!(
    ConditioningSetMask,
    "ConditioningSetMask",
    "Limits each entry to a mask: the sampler weighs its result by the mask where it overlaps others.",
    SetMaskFields,
    "conditioning",
    "The conditioning with its mask.",
    |_, f| {
        if f.mask.batch == 0 || f.mask.width == 0 || f.mask.height == 0 {
            return Err(err("input \"mask\": an empty mask"));
        }
        let mask = CondMask { mask: f.mask.clone(), strength: f.strength, to_bounds: f.set_cond_area == "mask bounds" };
        Ok(f.conditioning.map_entries(|e| e.mask = Some(mask.clone())))
    }
);
