//! Brownian-motion noise for the SDE samplers over any Gaussian stream: what [`super::sample`] gives `dpmpp_sde` and
//! `dpmpp_2m_sde` when its noise source does not know the KSampler seed (a recorded stream, say; the sampling_unet
//! fixture replays one). Run by KSampler they draw ComfyUI's own noise instead, torchsde's tree
//! ([`super::BrownianTreeNoise`]).
//!
//! Like ComfyUI's `BrownianTreeNoiseSampler`: `noise(sigma, sigma_next)` is `(W(sigma_next) - W(sigma)) /
//! sqrt(|sigma_next - sigma|)` for one Brownian motion `W` indexed by sigma, so every call is N(0, 1) and calls over
//! overlapping sigma intervals are correlated exactly as in ComfyUI (`dpmpp_sde` asks for `sigma -> sigma_mid` and
//! then `sigma -> sigma_next`; its second noise contains the first). Over disjoint intervals (`dpmpp_2m_sde`) calls
//! are independent, and then each is exactly one raw draw of the underlying stream. The values are the stream's,
//! not torchsde's.
//!
//! How: `W` is kept (in f64) at every sigma queried so far. A new sigma beyond the known range extends the path with
//! an independent increment `sqrt(|dt|) z`; one between two known sigmas is drawn from the Brownian bridge; the
//! very first is `W = 0`. `z` is one latent from the wrapped [`NoiseSource`]. Memory: one f64 latent per distinct
//! sigma queried (two per step for dpmpp_sde).

use super::NoiseSource;

/// A Brownian path over sigma, sampled lazily from a Gaussian [`NoiseSource`] (see the module docs).
pub struct BrownianNoise<N> {
    inner: N,
    /// Known points, sorted by sigma.
    points: Vec<(f64, Vec<f64>)>,
    buf: Vec<f32>,
}

impl<N: NoiseSource> BrownianNoise<N> {
    pub fn new(inner: N) -> BrownianNoise<N> {
        BrownianNoise { inner, points: Vec::new(), buf: Vec::new() }
    }

    /// The wrapped source.
    pub fn into_inner(self) -> N {
        self.inner
    }

    /// Index of the point at `t`, sampling it if new.
    fn point(&mut self, t: f64, len: usize) -> usize {
        let pos = self.points.partition_point(|(pt, _)| *pt < t);
        if pos < self.points.len() && self.points[pos].0 == t {
            return pos;
        }
        if let Some((_, w)) = self.points.first() {
            assert_eq!(w.len(), len, "BrownianNoise: the latent size changed between calls");
        }
        let w = if self.points.is_empty() {
            vec![0.0; len]
        } else {
            self.buf.resize(len, 0.0);
            // The draw is for the interval the new point opens; the sigmas are only informative here.
            let (a, b) = if pos == 0 {
                (t, self.points[0].0)
            } else if pos == self.points.len() {
                (self.points[pos - 1].0, t)
            } else {
                (self.points[pos - 1].0, self.points[pos].0)
            };
            self.inner.fill_noise(b, a, &mut self.buf);
            let z = &self.buf;
            if pos == 0 {
                let (t1, w1) = (&self.points[0].0, &self.points[0].1);
                let sd = (t1 - t).sqrt();
                w1.iter().zip(z).map(|(w, &z)| w + sd * f64::from(z)).collect()
            } else if pos == self.points.len() {
                let (t0, w0) = (&self.points[pos - 1].0, &self.points[pos - 1].1);
                let sd = (t - t0).sqrt();
                w0.iter().zip(z).map(|(w, &z)| w + sd * f64::from(z)).collect()
            } else {
                let (t0, w0) = (self.points[pos - 1].0, &self.points[pos - 1].1);
                let (t1, w1) = (self.points[pos].0, &self.points[pos].1);
                let f = (t - t0) / (t1 - t0);
                let sd = ((t - t0) * (t1 - t) / (t1 - t0)).sqrt();
                w0.iter().zip(w1).zip(z).map(|((a, b), &z)| a + f * (b - a) + sd * f64::from(z)).collect()
            }
        };
        self.points.insert(pos, (t, w));
        pos
    }
}

impl<N: NoiseSource> NoiseSource for BrownianNoise<N> {
    /// `(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)`; zeros when the two are equal.
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        self.point(sigma, out.len());
        self.point(sigma_next, out.len());
        if sigma == sigma_next {
            out.fill(0.0);
            return;
        }
        let i0 = self.points.partition_point(|(pt, _)| *pt < sigma);
        let i1 = self.points.partition_point(|(pt, _)| *pt < sigma_next);
        let scale = 1.0 / (sigma_next - sigma).abs().sqrt();
        let (w0, w1) = (&self.points[i0].1, &self.points[i1].1);
        for ((o, a), b) in out.iter_mut().zip(w0).zip(w1) {
            *o = ((b - a) * scale) as f32;
        }
    }
}
