//! Named tolerances for comparing GPU results with the f64 references.
//!
//! An element passes when `|actual - expected| <= abs + rel * |expected|`.

/// A comparison bound; see the module doc for the formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub rel: f64,
    pub abs: f64,
}

impl Tolerance {
    pub const fn rel_abs(rel: f64, abs: f64) -> Self {
        Self { rel, abs }
    }

    /// f32 elementwise math: a few ulps (f32 epsilon is 1.2e-7) plus the
    /// error of exp/erf in the shader.
    pub const fn strict() -> Self {
        Self::rel_abs(1e-5, 1e-6)
    }

    /// f32 reductions (matmul, conv, norms) over up to a few thousand terms:
    /// rounding grows with sqrt(K) * eps, so 1e-5 relative holds with an
    /// absolute floor for results that cancel to near zero.
    pub const fn balanced() -> Self {
        Self::rel_abs(1e-5, 1e-5)
    }

    /// f16 storage: inputs and outputs rounded to 11 significant bits
    /// (2^-11 = 4.9e-4 relative each), arithmetic in f32.
    pub const fn f16() -> Self {
        Self::rel_abs(2e-3, 2e-3)
    }

    /// Checks every element; on failure the message names the worst element
    /// with its index, actual, expected and difference.
    pub fn check(&self, actual: &[f32], expected: &[f64]) -> Result<(), String> {
        if actual.len() != expected.len() {
            return Err(format!("length {} != expected {}", actual.len(), expected.len()));
        }
        let mut worst: Option<(usize, f64)> = None;
        let mut failures = 0usize;
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let diff = (a as f64 - e).abs();
            let bound = self.abs + self.rel * e.abs();
            // NaN never passes.
            if diff.is_nan() || diff > bound {
                failures += 1;
                let excess = if diff.is_nan() { f64::INFINITY } else { diff / bound };
                if worst.is_none_or(|(_, w)| excess > w) {
                    worst = Some((i, excess));
                }
            }
        }
        match worst {
            None => Ok(()),
            Some((i, _)) => Err(format!(
                "{failures} of {} elements out of tolerance (rel {}, abs {}); worst at index {i}: actual {}, expected {}, difference {:e}",
                actual.len(),
                self.rel,
                self.abs,
                actual[i],
                expected[i],
                (actual[i] as f64 - expected[i]).abs()
            )),
        }
    }
}
