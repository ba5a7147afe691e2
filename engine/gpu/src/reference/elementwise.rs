//! Reference activations in f64.

use crate::ops::matmul::Activation;

/// erf by its Maclaurin series (small |x|) or continued fraction for erfc
/// (large |x|): accurate to ~1e-15, independent of the shader's formula.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = a;
        let mut n = 0.0;
        loop {
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
            n += 1.0;
            term *= -a * a / n;
        }
        (2.0 / std::f64::consts::PI.sqrt() * sum).copysign(x)
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
        (1.0 - erfc).copysign(x)
    }
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

pub fn quick_gelu(x: f64) -> f64 {
    x / (1.0 + (-1.702 * x).exp())
}

pub fn leaky_relu(x: f64, slope: f64) -> f64 {
    if x >= 0.0 { x } else { x * slope }
}

/// The activation a matmul or conv2d epilogue fuses (`ops::matmul::Activation`).
pub fn activation(a: Activation, x: f64) -> f64 {
    match a {
        Activation::None => x,
        Activation::Silu => silu(x),
        Activation::Gelu => gelu(x),
        Activation::QuickGelu => quick_gelu(x),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun table 7.1.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
        ] {
            assert!((super::erf(x) - want).abs() < 1e-14, "erf({x})");
            assert!((super::erf(-x) + want).abs() < 1e-14, "erf(-{x})");
        }
    }
}
