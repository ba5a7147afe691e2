//! How Lua plugins see LATENT values: the engine cannot see [`Latent`], so
//! this crate gives it a [`ValueCodec`] that turns a latent into
//!
//! ```lua
//! { shape = { B, C, H, W }, samples = { ... },           -- B*C*H*W numbers, [B, C, H, W] order
//!   noise_mask = { shape = { B or 1, 1, h, w }, samples = { ... } } }   -- only when the latent has one
//! ```
//!
//! and back, checking every shape, length and value (a plugin is untrusted:
//! a bad table is an error naming what was wrong, never a panic).

use std::sync::Arc;

use graph::codec::{Data, ValueCodec, register_value_codec};
use graph::{PortType, Value};

use crate::payload::Latent;
use models::sampling::noise_mask::check_noise_mask;

/// Largest latent a plugin may return, in values (a 4096x4096 picture's
/// SD latent, batch 16).
const MAX_VALUES: usize = 16 * 4 * 512 * 512;

/// LATENT <-> `{ shape, samples, noise_mask }`.
pub struct LatentCodec;

/// Registers the LATENT codec with the engine's plugin API (idempotent).
pub fn register() {
    register_value_codec(Arc::new(LatentCodec));
}

fn numbers(v: &[f32]) -> Data {
    Data::Numbers(v.iter().map(|&x| x as f64).collect())
}

fn shape_data(s: &[usize]) -> Data {
    Data::List(s.iter().map(|&d| Data::Int(d as i64)).collect())
}

/// `field` of `d` as a list of positive sizes.
fn read_shape(d: &Data, field: &str) -> Result<Vec<usize>, String> {
    let v = d.get(field).ok_or_else(|| format!("missing `{field}`"))?;
    let nums = v.numbers().ok_or_else(|| format!("`{field}` must be an array of sizes, got {}", v.describe()))?;
    nums.iter()
        .map(|&x| {
            if x.fract() == 0.0 && x >= 1.0 && x <= MAX_VALUES as f64 {
                Ok(x as usize)
            } else {
                Err(format!("`{field}` must hold positive whole sizes, got {x}"))
            }
        })
        .collect()
}

/// `field` of `d` as `want` finite numbers.
fn read_samples(d: &Data, field: &str, want: usize) -> Result<Vec<f32>, String> {
    let v = d.get(field).ok_or_else(|| format!("missing `{field}`"))?;
    let nums = v.numbers().ok_or_else(|| format!("`{field}` must be an array of numbers, got {}", v.describe()))?;
    if nums.len() != want {
        return Err(format!("`{field}` has {} values, but the shape needs {want}", nums.len()));
    }
    if let Some(i) = nums.iter().position(|x| !x.is_finite()) {
        return Err(format!("`{field}`[{}] is {}, not a finite number", i + 1, nums[i]));
    }
    Ok(nums.into_iter().map(|x| x as f32).collect())
}

fn product(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| format!("shape {shape:?} is larger than {MAX_VALUES} values"))
}

impl ValueCodec for LatentCodec {
    fn port_type(&self) -> PortType {
        PortType::Latent
    }

    fn encode(&self, value: &Value) -> Result<Data, String> {
        let latent = value.downcast::<Latent>().ok_or("the value is not a latent")?;
        let mut m = std::collections::BTreeMap::new();
        m.insert("shape".to_string(), shape_data(&latent.shape));
        m.insert("samples".to_string(), numbers(&latent.samples));
        if let Some((shape, data)) = &latent.noise_mask {
            let mut nm = std::collections::BTreeMap::new();
            nm.insert("shape".to_string(), shape_data(shape));
            nm.insert("samples".to_string(), numbers(data));
            m.insert("noise_mask".to_string(), Data::Map(nm));
        }
        Ok(Data::Map(m))
    }

    fn decode(&self, data: &Data) -> Result<Value, String> {
        if !matches!(data, Data::Map(_)) {
            return Err(format!(
                "expected a table {{ shape = {{B, C, H, W}}, samples = {{...}} }}, got {}",
                data.describe()
            ));
        }
        if let Data::Map(m) = data
            && let Some(k) = m.keys().find(|k| !["shape", "samples", "noise_mask"].contains(&k.as_str()))
        {
            return Err(format!("unknown field `{k}`; a latent has shape, samples and noise_mask"));
        }
        let shape = read_shape(data, "shape")?;
        let &[b, c, h, w] = shape.as_slice() else {
            return Err(format!("`shape` must be {{B, C, H, W}}, got {} sizes", shape.len()));
        };
        let samples = read_samples(data, "samples", product(&shape)?)?;
        let shape = [b, c, h, w];
        let noise_mask = match data.get("noise_mask") {
            None | Some(Data::Nil) => None,
            Some(nm) => {
                let ms = read_shape(nm, "shape").map_err(|e| format!("noise_mask: {e}"))?;
                let md = read_samples(nm, "samples", product(&ms)?).map_err(|e| format!("noise_mask: {e}"))?;
                check_noise_mask(&ms, &md, shape).map_err(|e| format!("noise_mask: {e}"))?;
                Some((ms, md))
            }
        };
        Ok(Value::payload(Latent { shape, samples, noise_mask, batch_index: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latent(noise_mask: Option<(Vec<usize>, Vec<f32>)>) -> Value {
        let samples = (0..2 * 4 * 2 * 3).map(|i| i as f32 * 0.5).collect();
        Value::payload(Latent { shape: [2, 4, 2, 3], samples, noise_mask, batch_index: None })
    }

    #[test]
    fn round_trips_with_and_without_a_mask() {
        for mask in [None, Some((vec![1, 1, 2, 3], vec![0.0, 1.0, 0.5, 0.25, 1.0, 0.0]))] {
            let v = latent(mask);
            let back = LatentCodec.decode(&LatentCodec.encode(&v).unwrap()).unwrap();
            assert_eq!(*back.downcast::<Latent>().unwrap(), *v.downcast::<Latent>().unwrap());
        }
    }

    #[test]
    fn malformed_tables_are_errors() {
        let good = LatentCodec.encode(&latent(None)).unwrap();
        let with = |key: &str, val: Data| {
            let Data::Map(mut m) = good.clone() else { unreachable!() };
            m.insert(key.into(), val);
            Data::Map(m)
        };
        let cases = [
            (with("samples", Data::Numbers(vec![0.0; 5])), "has 5 values, but the shape needs 48"),
            (with("shape", Data::Numbers(vec![2.0, 4.0, 2.0])), "must be {B, C, H, W}"),
            (with("shape", Data::Numbers(vec![2.0, 4.0, 0.0, 3.0])), "positive whole sizes"),
            (with("shape", Data::Numbers(vec![2.0, 4.0, 1.5, 3.0])), "positive whole sizes"),
            (with("shape", Data::Numbers(vec![1e6, 1e6, 1e6, 1e6])), "larger than"),
            (with("samples", Data::String("x".into())), "must be an array of numbers"),
            (with("extra", Data::Nil), "unknown field `extra`"),
            (with("noise_mask", Data::Map(Default::default())), "noise_mask: missing `shape`"),
            (Data::Numbers(vec![1.0]), "expected a table"),
        ];
        for (d, want) in cases {
            let e = LatentCodec.decode(&d).err().unwrap_or_else(|| panic!("{want}: decoded"));
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let mut nan = good.clone();
        if let Data::Map(m) = &mut nan {
            let mut s = vec![0.0; 48];
            s[3] = f64::NAN;
            m.insert("samples".into(), Data::Numbers(s));
        }
        assert!(LatentCodec.decode(&nan).unwrap_err().contains("`samples`[4] is NaN"));
    }
}
